/* server.c — the HTTP side of `iteralign serve`: libmicrohttpd daemon (a thread per connection),
 * routing, bearer auth, body limits, request log, the engine worker thread, submission/waiting,
 * SSE streaming and shutdown. Request shapes are in server_api.c. */
#include "server_internal.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SRV_WAIT_SLICE_MS 200   /* how often a waiting handler looks whether its client left */
#ifndef SRV_ENGINE_RECYCLE
#define SRV_ENGINE_RECYCLE 65536 /* ids after which an idle engine is replaced (see worker_main) */
#endif
#define SRV_STOP_WAIT_S 10.0    /* cancelled requests are normally gone after one step; a client
                                   that stopped reading is cut off by MHD_stop_daemon after this */

typedef enum srv_route { R_NONE = 0, R_HEALTH, R_MODELS, R_MODEL_ONE, R_CHAT, R_COMPLETIONS } srv_route;

/* Per-request state of a connection (libmicrohttpd's con_cls). */
typedef struct srv_conn {
    double t0;
    char method[8];
    char path[64];
    srv_route route;
    ia_buf body;
    bool too_big;
    bool responded;
    bool deferred;         /* a stream: its job writes the log line when the response is freed */
    int status;
    int prompt_tokens, completion_tokens;
} srv_conn;

ia_server_opts ia_server_opts_default(void) {
    ia_server_opts o;
    memset(&o, 0, sizeof o);
    o.host = "127.0.0.1";
    return o;
}

/* ---- logging ------------------------------------------------------------------------------ */

static void srv_log(ia_server *s, const char *fmt, ...) IA_PRINTF(2, 3);
static void srv_log(ia_server *s, const char *fmt, ...) {
    if (!s->o.log) return;
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->o.log(s->o.log_ud, line);
}

/* Copies a client-supplied string for the log: printable ASCII only, so a URL cannot forge lines. */
static void log_copy(char *dst, size_t cap, const char *src) {
    size_t i = 0;
    for (; src && src[i] && i + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    dst[i] = 0;
}

static void log_request(ia_server *s, const char *method, const char *path, int status, int pt, int ct, double t0) {
    srv_log(s, "%s %s %d prompt=%d completion=%d %.0f ms", method, path, status, pt, ct, (ia_time_now() - t0) * 1000.0);
}

static void mhd_logger(void *cls, const char *fm, va_list ap) {
    ia_server *s = cls;
    if (!s->o.log) return;
    char line[512];
    vsnprintf(line, sizeof line, fm, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    srv_log(s, "microhttpd: %s", line);
}

/* ---- responses ---------------------------------------------------------------------------- */

static enum MHD_Result send_body(srv_conn *c, struct MHD_Connection *conn, int status, const char *ctype,
                                 const char *body, size_t len, const char *h1, const char *v1) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    if (h1) MHD_add_response_header(r, h1, v1);
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    c->status = status;
    c->responded = true;
    return rc;
}

static enum MHD_Result send_json(srv_conn *c, struct MHD_Connection *conn, int status, json_t *v, const char *h1,
                                 const char *v1) {
    size_t len = 0;
    char *txt = v ? srv_json_dump(v, &len) : NULL;
    json_decref(v);
    if (!txt) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
        return send_body(c, conn, 500, "application/json", oom, sizeof oom - 1, NULL, NULL);
    }
    enum MHD_Result rc = send_body(c, conn, status, "application/json", txt, len, h1, v1);
    ia_free(txt);
    return rc;
}

static enum MHD_Result send_error(srv_conn *c, struct MHD_Connection *conn, const srv_err *e) {
    const char *h = NULL, *v = NULL;
    if (e->status == 401) { h = "WWW-Authenticate"; v = "Bearer"; }
    else if (e->status == 503) { h = "Retry-After"; v = "1"; }
    else if (e->status == 405) { h = "Allow"; v = c->route == R_CHAT || c->route == R_COMPLETIONS ? "POST" : "GET"; }
    return send_json(c, conn, e->status, srv_error_json(e), h, v);
}

static enum MHD_Result fail(srv_conn *c, struct MHD_Connection *conn, int status, const char *param, const char *code,
                            const char *fmt, ...) IA_PRINTF(6, 7);
static enum MHD_Result fail(srv_conn *c, struct MHD_Connection *conn, int status, const char *param, const char *code,
                            const char *fmt, ...) {
    srv_err e;
    srv_err_set(&e, status, param, code, "%s", "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof e.msg, fmt, ap);
    va_end(ap);
    return send_error(c, conn, &e);
}

/* ---- engine callbacks (worker thread, engine lock held: they only touch the job) ----------- */

static void on_text(void *ud, const char *text, size_t len) {
    srv_seq *q = ud;
    pthread_mutex_lock(&q->job->mu);
    ia_buf_append(&q->pending, text, len);
    pthread_cond_broadcast(&q->job->cv);
    pthread_mutex_unlock(&q->job->mu);
}

static void on_done(void *ud, int request_id) {
    (void)request_id;
    srv_seq *q = ud;
    pthread_mutex_lock(&q->job->mu);
    q->done = true;
    q->job->n_done++;
    pthread_cond_broadcast(&q->job->cv);
    pthread_mutex_unlock(&q->job->mu);
}

/* ---- the worker ----------------------------------------------------------------------------- */

/* One logprobs pass over every queued job's sequences (batched like generation), then each job is
 * told. */
static void run_logprobs(ia_server *s, srv_job *list) {
    int n = 0;
    for (srv_job *j = list; j; j = j->lp_next) n += j->n_seqs;
    ia_token_lp_job *jobs = ia_calloc((size_t)(n ? n : 1), sizeof *jobs);
    ia_error err = {0};
    int rc = IA_OK;
    if (!jobs) rc = ia_error_set(&err, IA_ERR_NOMEM, "out of memory");
    else {
        int k = 0;
        for (srv_job *j = list; j; j = j->lp_next)
            for (int i = 0; i < j->n_seqs; i++) jobs[k++] = j->seqs[i].lp;
        rc = ia_token_logprobs(s->m, jobs, n, s->o.n_parallel, &err);
    }
    ia_free(jobs);
    if (rc != IA_OK) srv_log(s, "logprobs pass failed: %s", err.msg);
    for (srv_job *j = list, *next; j; j = next) {
        next = j->lp_next;
        pthread_mutex_lock(&j->mu);
        j->lp_rc = rc;
        if (rc != IA_OK) snprintf(j->lp_err, sizeof j->lp_err, "%.150s", err.msg);
        j->lp_done = true;
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);
    }
}

static void *worker_main(void *arg) {
    ia_server *s = arg;
    /* OpenMP's thread count is a per-thread setting: a new thread starts from the default (every
     * core), not from what ia_set_threads gave the thread that called it. */
    ia_set_threads(s->threads);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->quit && !s->lp_head && ia_engine_pending(s->eng) == 0) {
            /* The engine keeps a small record per request id for its whole life, so a long-running
             * server swaps in a fresh one when nothing refers to the old one's ids: every sequence
             * taken (s->untaken counts from before submission), under s->mu, which submission,
             * taking and shutdown's cancelling also hold around their use of the engine. */
            if (s->eng_ids >= SRV_ENGINE_RECYCLE && s->untaken == 0) {
                ia_error err = {0};
                ia_engine *fresh = ia_engine_init(s->m, s->o.n_parallel, s->o.n_ctx, s->n_batch, &err);
                if (fresh) {
                    ia_engine_free(s->eng);
                    s->eng = fresh;
                    srv_log(s, "engine renewed after %ld sequences", s->eng_ids);
                    s->eng_ids = 0;
                }
            }
            pthread_cond_wait(&s->wake, &s->mu);
        }
        if (s->quit && !s->lp_head && ia_engine_pending(s->eng) == 0) break;
        srv_job *lp = s->lp_head;
        s->lp_head = s->lp_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        if (lp) run_logprobs(s, lp);
        if (ia_engine_pending(s->eng) > 0) {
            ia_error err = {0};
            if (ia_engine_step(s->eng, &err) < 0) {
                /* The engine ended the active sequences with what they had; their jobs answer 500. */
                pthread_mutex_lock(&s->mu);
                s->err_gen++;
                snprintf(s->err_msg, sizeof s->err_msg, "%s", err.msg);
                pthread_mutex_unlock(&s->mu);
                srv_log(s, "engine step failed: %s", err.msg);
            }
        }
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void wake_worker(ia_server *s) {
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
}

/* ---- job lifecycle -------------------------------------------------------------------------- */

/* Cancels every submitted, unfinished sequence of j. Never called with j->mu held (the engine's
 * lock is taken inside, and the engine calls back into j under it). */
static void job_cancel(srv_job *j) {
    for (int i = 0; i < j->n_seqs; i++) {
        pthread_mutex_lock(&j->mu);
        int id = j->seqs[i].done ? -1 : j->seqs[i].engine_id;
        pthread_mutex_unlock(&j->mu);
        if (id >= 0) ia_engine_cancel(j->srv->eng, id);
    }
    wake_worker(j->srv);
}

/* True when the peer has closed its end (a pipelined next request is not a close). */
static bool peer_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static void timed_wait(srv_job *j, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&j->cv, &j->mu, &ts);
}

/* Waits until every sequence of j is done; a client that leaves meanwhile gets its sequences
 * cancelled (when watch is set). */
static void job_wait_done(srv_job *j, bool watch) {
    pthread_mutex_lock(&j->mu);
    while (j->n_done < j->n_seqs) {
        timed_wait(j, SRV_WAIT_SLICE_MS);
        if (j->n_done < j->n_seqs && watch && !j->gone) {
            pthread_mutex_unlock(&j->mu);
            bool gone = peer_gone(j->fd);
            if (gone) job_cancel(j);
            pthread_mutex_lock(&j->mu);
            if (gone) j->gone = true;
        }
    }
    pthread_mutex_unlock(&j->mu);
}

/* Moves finished sequences' completions out of the engine (which frees its copy). */
static void seq_take(srv_job *j, srv_seq *q) {
    if (q->taken) return;
    q->taken = true;
    if (q->engine_id >= 0) {
        ia_server *s = j->srv;
        ia_engine_take(s->eng, q->engine_id, &q->out);
        pthread_mutex_lock(&s->mu);
        s->untaken--;
        if (s->untaken == 0 && s->eng_ids >= SRV_ENGINE_RECYCLE) pthread_cond_signal(&s->wake); /* time to renew */
        pthread_mutex_unlock(&s->mu);
    }
    if (!q->out.text) q->out.text = ia_strdup("");
    j->completion_tokens += q->out.n_tokens;
}

static void job_unregister(srv_job *j) {
    ia_server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    if (j->live_prev) j->live_prev->live_next = j->live_next;
    else if (s->live == j) s->live = j->live_next;
    if (j->live_next) j->live_next->live_prev = j->live_prev;
    j->live_prev = j->live_next = NULL;
    s->n_live--;
    pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
}

/* Registers j as live and submits its sequences. Returns 0, or an HTTP status (503) with e set. */
static int job_submit(ia_server *s, srv_job *j, srv_err *e) {
    int need = j->sp.max_tokens > 0 ? j->n_seqs : 0;
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        srv_err_set(e, 503, NULL, "server_shutting_down", "the server is shutting down");
        return 503;
    }
    if (need > 0 && ia_engine_pending(s->eng) + need > s->o.max_queue) {
        pthread_mutex_unlock(&s->mu);
        srv_err_set(e, 503, NULL, "server_busy", "the server has %d sequences queued; retry later", s->o.max_queue);
        return 503;
    }
    j->live_next = s->live;
    if (s->live) s->live->live_prev = j;
    s->live = j;
    s->n_live++;
    s->untaken += need; /* pins the engine (no swap) until these are taken */
    s->eng_ids += need;
    j->err_gen = s->err_gen;
    uint64_t r1 = ia_rng_next(&s->rng);
    pthread_mutex_unlock(&s->mu);
    snprintf(j->id, sizeof j->id, "%s-%016llx", j->kind == SRV_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)r1);

    for (int i = 0; i < j->n_seqs; i++) {
        srv_seq *q = &j->seqs[i];
        int id = -1;
        if (need > 0) {
            ia_request r = {0};
            r.prompt = j->prompt_ids[q->prompt];
            r.n_prompt = j->n_prompt_ids[q->prompt];
            r.sampling = j->sp;
            r.sampling.seed = j->sp.seed + (uint64_t)q->index; /* choice i samples with seed + i */
            r.on_text = j->stream ? on_text : NULL;
            r.on_done = on_done;
            r.ud = q;
            ia_error err = {0};
            id = ia_engine_submit(s->eng, &r, &err);
            if (id < 0) srv_log(s, "submit failed: %s", err.msg);
        }
        if (id < 0 && need > 0) {
            pthread_mutex_lock(&s->mu);
            s->untaken--;
            pthread_mutex_unlock(&s->mu);
        }
        pthread_mutex_lock(&j->mu);
        q->engine_id = id;
        if (id < 0) { q->done = true; j->n_done++; } /* nothing to generate (max_tokens 0) or refused */
        bool cancel = id >= 0 && j->shutdown;   /* ia_server_stop passed this job before the id existed */
        pthread_mutex_unlock(&j->mu);
        if (cancel) ia_engine_cancel(s->eng, id);
    }
    if (need > 0) wake_worker(s);
    return 0;
}

/* Queues the logprobs pass of j on the worker and waits for it. */
static int job_logprobs(srv_job *j, srv_err *e) {
    ia_server *s = j->srv;
    if (srv_job_lp_prepare(j) != IA_OK) return srv_err_set(e, 500, NULL, NULL, "out of memory"), 500;
    pthread_mutex_lock(&s->mu);
    j->lp_next = NULL;
    if (s->lp_tail) s->lp_tail->lp_next = j;
    else s->lp_head = j;
    s->lp_tail = j;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&j->mu);
    while (!j->lp_done) pthread_cond_wait(&j->cv, &j->mu);
    pthread_mutex_unlock(&j->mu);
    if (j->lp_rc != IA_OK) return srv_err_set(e, 500, NULL, NULL, "logprobs: %s", j->lp_err), 500;
    return 0;
}

/* True when an engine failure happened while j ran. */
static bool job_engine_failed(srv_job *j, srv_err *e) {
    ia_server *s = j->srv;
    pthread_mutex_lock(&s->mu);
    bool failed = s->err_gen != j->err_gen;
    if (failed) srv_err_set(e, 500, NULL, NULL, "generation failed: %s", s->err_msg);
    pthread_mutex_unlock(&s->mu);
    return failed;
}

/* ---- streaming ---------------------------------------------------------------------------- */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_job *j = cls;
    for (;;) {
        if (j->out_pos < j->out.len) {
            size_t n = j->out.len - j->out_pos;
            if (n > max) n = max;
            memcpy(buf, j->out.data + j->out_pos, n);
            j->out_pos += n;
            return (ssize_t)n;
        }
        j->out.len = 0;
        j->out_pos = 0;
        if (j->out.oom) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (j->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!j->head_sent) {
            srv_sse_head(j, &j->out);
            j->head_sent = true;
            continue;
        }
        /* Wait for text or a finished choice, looking every slice whether the client left. */
        pthread_mutex_lock(&j->mu);
        for (;;) {
            bool any = false, all = true;
            for (int i = 0; i < j->n_seqs; i++) {
                srv_seq *q = &j->seqs[i];
                if (q->pending.len || (q->done && !q->reported)) any = true;
                if (!q->reported) all = false;
            }
            if (any || all) break;
            timed_wait(j, SRV_WAIT_SLICE_MS);
            pthread_mutex_unlock(&j->mu);
            bool gone = peer_gone(j->fd);
            pthread_mutex_lock(&j->mu);
            if (gone) {
                j->gone = true;
                pthread_mutex_unlock(&j->mu);
                job_cancel(j);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
        }
        pthread_mutex_unlock(&j->mu);
        bool all = true;
        for (int i = 0; i < j->n_seqs; i++) {
            srv_seq *q = &j->seqs[i];
            pthread_mutex_lock(&j->mu);
            ia_buf text = q->pending;
            memset(&q->pending, 0, sizeof q->pending);
            bool fin = q->done && !q->reported;
            if (fin) q->reported = true;
            if (!q->reported) all = false;
            pthread_mutex_unlock(&j->mu);
            if (text.len) srv_sse_text(j, q, text.data, text.len, &j->out);
            ia_buf_free(&text);
            if (fin) {
                seq_take(j, q);
                if (!j->shutdown) srv_sse_finish(j, q, &j->out);
            }
        }
        if (all) {
            srv_err e;
            if (j->shutdown) {
                srv_err_set(&e, 503, NULL, "server_shutting_down", "the server is shutting down");
                srv_sse_error(j, &e, &j->out);
            } else if (job_engine_failed(j, &e)) srv_sse_error(j, &e, &j->out);
            else srv_sse_end(j, &j->out);
            j->ended = true;
        }
    }
}

/* The stream's response is gone (sent, or the client left): finish the job and log the request. */
static void stream_free(void *cls) {
    srv_job *j = cls;
    ia_server *s = j->srv;
    pthread_mutex_lock(&j->mu);
    bool all = j->n_done == j->n_seqs;
    pthread_mutex_unlock(&j->mu);
    if (!all) {
        j->gone = true;
        job_cancel(j);
        job_wait_done(j, false);
    }
    for (int i = 0; i < j->n_seqs; i++) seq_take(j, &j->seqs[i]);
    log_request(s, j->method, j->path, j->gone ? 499 : j->shutdown ? 503 : 200, j->prompt_tokens, j->completion_tokens,
                j->t0);
    job_unregister(j);
    srv_job_free(j);
}

/* ---- request handling --------------------------------------------------------------------- */

static int conn_fd(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? (int)ci->connect_fd : -1;
}

static enum MHD_Result handle_generation(ia_server *s, srv_conn *c, struct MHD_Connection *conn) {
    json_error_t je;
    json_t *req = json_loadb(c->body.data ? c->body.data : "", c->body.len, 0, &je);
    ia_buf_free(&c->body);
    if (!req) return fail(c, conn, 400, NULL, "invalid_json", "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
    srv_err e;
    srv_job *j = srv_job_parse(s, c->route == R_CHAT ? SRV_CHAT : SRV_COMPLETION, req, &e);
    json_decref(req);
    if (!j) return send_error(c, conn, &e);
    j->fd = conn_fd(conn);
    c->prompt_tokens = j->prompt_tokens;
    if (job_submit(s, j, &e) != 0) {
        srv_job_free(j);
        return send_error(c, conn, &e);
    }

    if (j->stream) {
        memcpy(j->method, c->method, sizeof j->method);
        memcpy(j->path, c->path, sizeof j->path);
        j->t0 = c->t0;
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, j, stream_free);
        if (!r) {
            job_cancel(j);
            job_wait_done(j, false);
            for (int i = 0; i < j->n_seqs; i++) seq_take(j, &j->seqs[i]);
            job_unregister(j);
            srv_job_free(j);
            return fail(c, conn, 500, NULL, NULL, "out of memory");
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        c->deferred = true;
        c->responded = true;
        c->status = 200;
        enum MHD_Result rc = MHD_queue_response(conn, 200, r);
        MHD_destroy_response(r); /* the stream job is finished in stream_free, whichever way it ends */
        return rc;
    }

    job_wait_done(j, true);
    for (int i = 0; i < j->n_seqs; i++) seq_take(j, &j->seqs[i]);
    c->completion_tokens = j->completion_tokens;
    enum MHD_Result rc;
    if (j->gone) {
        c->status = 499; /* client closed the connection: nothing to send */
        c->responded = true;
        rc = MHD_NO;
    } else if (j->shutdown) {
        srv_err_set(&e, 503, NULL, "server_shutting_down", "the server is shutting down");
        rc = send_error(c, conn, &e);
    } else if (job_engine_failed(j, &e)) {
        rc = send_error(c, conn, &e);
    } else if (j->want_lp && job_logprobs(j, &e) != 0) {
        rc = send_error(c, conn, &e);
    } else {
        rc = send_json(c, conn, 200, srv_job_response(j), NULL, NULL);
    }
    job_unregister(j);
    srv_job_free(j);
    return rc;
}

static srv_route route_of(const char *url, const char **model_arg) {
    *model_arg = NULL;
    const char *p = url;
    if (!strcmp(p, "/health")) return R_HEALTH;
    if (!strncmp(p, "/v1/", 4)) p += 3; /* the /v1 prefix is optional, as in llama-server */
    if (!strcmp(p, "/models")) return R_MODELS;
    if (!strncmp(p, "/models/", 8) && p[8]) { *model_arg = p + 8; return R_MODEL_ONE; }
    if (!strcmp(p, "/chat/completions")) return R_CHAT;
    if (!strcmp(p, "/completions")) return R_COMPLETIONS;
    if (!strcmp(p, "/health")) return R_HEALTH;
    return R_NONE;
}

/* Constant-time comparison of the presented bearer token with the key. */
static bool auth_ok(ia_server *s, struct MHD_Connection *conn) {
    if (!s->api_key) return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    while (*h == ' ') h++;
    size_t a = strlen(h), b = strlen(s->api_key);
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < a; i++) diff |= (unsigned char)h[i] ^ (unsigned char)s->api_key[i % (b ? b : 1)];
    return diff == 0;
}

/* Decisions that need no body: route, method, health, auth, shutdown, declared size. Returns
 * MHD_YES without responding when the body is wanted. */
static enum MHD_Result handle_head(ia_server *s, srv_conn *c, struct MHD_Connection *conn, const char *method,
                                   const char *model_arg) {
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (c->route == R_NONE) return fail(c, conn, 404, NULL, "unknown_url", "Unknown request URL: %s %s", c->method, c->path);
    bool want_post = c->route == R_CHAT || c->route == R_COMPLETIONS;
    if (want_post ? !post : !get)
        return fail(c, conn, 405, NULL, "method_not_allowed", "%s is not allowed on %s (use %s)", c->method, c->path,
                    want_post ? "POST" : "GET");
    pthread_mutex_lock(&s->mu);
    bool stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (c->route == R_HEALTH) {
        json_t *o = json_pack("{s:s}", "status", stopping ? "shutting down" : "ok");
        return send_json(c, conn, stopping ? 503 : 200, o, NULL, NULL);
    }
    if (!auth_ok(s, conn))
        return fail(c, conn, 401, NULL, "invalid_api_key", "Incorrect or missing API key (send 'Authorization: Bearer <key>')");
    if (stopping) return fail(c, conn, 503, NULL, "server_shutting_down", "the server is shutting down");
    if (c->route == R_MODELS) return send_json(c, conn, 200, srv_models_json(s, NULL), NULL, NULL);
    if (c->route == R_MODEL_ONE) {
        if (!srv_model_matches(s, model_arg))
            return fail(c, conn, 404, "model", "model_not_found", "The model '%.200s' does not exist", model_arg);
        return send_json(c, conn, 200, srv_models_json(s, model_arg), NULL, NULL);
    }
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > s->o.max_body)
        return fail(c, conn, 413, NULL, "request_too_large", "the body is larger than this server's limit of %zu bytes",
                    s->o.max_body);
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    ia_server *s = cls;
    srv_conn *c = *con_cls;
    if (!c) {
        c = ia_calloc(1, sizeof *c);
        if (!c) return MHD_NO;
        *con_cls = c;
        c->t0 = ia_time_now();
        log_copy(c->method, sizeof c->method, method);
        log_copy(c->path, sizeof c->path, url);
        const char *model_arg;
        c->route = route_of(url, &model_arg);
        return handle_head(s, c, conn, method, model_arg);
    }
    if (*upload_data_size) {
        /* Past the limit the rest is read and dropped (a response can only be queued once the
         * whole request is in, unless it was refused from its headers). */
        if (!c->responded && !c->too_big) {
            if (c->body.len + *upload_data_size > s->o.max_body) {
                c->too_big = true;
                ia_buf_free(&c->body);
            } else {
                ia_buf_append(&c->body, upload_data, *upload_data_size);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (c->responded) return MHD_YES;
    if (c->too_big)
        return fail(c, conn, 413, NULL, "request_too_large", "the body is larger than this server's limit of %zu bytes",
                    s->o.max_body);
    if (c->body.oom) return fail(c, conn, 500, NULL, NULL, "out of memory");
    return handle_generation(s, c, conn);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)conn;
    ia_server *s = cls;
    srv_conn *c = *con_cls;
    if (!c) return;
    if (!c->deferred) {
        int status = c->status ? c->status : 499;
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && status < 400) status = 499;
        log_request(s, c->method, c->path, status, c->prompt_tokens, c->completion_tokens, c->t0);
    }
    ia_buf_free(&c->body);
    ia_free(c);
    *con_cls = NULL;
}

/* ---- start / stop ------------------------------------------------------------------------- */

static char *default_model_id(const char *path) {
    if (!path) return ia_strdup("model");
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    if (n > 5 && !strcmp(base + n - 5, ".gguf")) n -= 5;
    return n ? ia_strndup(base, n) : ia_strdup("model");
}

static void server_free(ia_server *s) {
    if (s->worker_started) {
        pthread_mutex_lock(&s->mu);
        s->quit = true;
        pthread_cond_broadcast(&s->wake);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->worker, NULL);
    }
    ia_engine_free(s->eng);
    srv_specials_free(s);
    ia_free(s->host);
    ia_free(s->model_id);
    ia_free(s->model_path);
    if (s->api_key) {
        volatile char *k = s->api_key; /* wipe the key before the memory is reused */
        for (size_t i = 0; k[i]; i++) k[i] = 0;
        ia_free(s->api_key);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->idle);
    ia_free(s);
}

ia_server *ia_server_start(ia_model *m, const ia_server_opts *opts, ia_error *err) {
    if (!m) return ia_error_set(err, IA_ERR_ARG, "server: no model"), NULL;
    ia_server *s = ia_calloc(1, sizeof *s);
    if (!s) return ia_error_set(err, IA_ERR_NOMEM, "out of memory"), NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->idle, NULL);
    s->listen_fd = -1;
    s->m = m;
    s->tok = ia_model_tokenizer(m);
    s->n_vocab = ia_model_n_vocab(m);
    s->o = opts ? *opts : ia_server_opts_default();
    ia_server_opts *o = &s->o;
    int n_train = ia_model_n_ctx_train(m);
    if (o->n_parallel <= 0) o->n_parallel = SRV_DEFAULT_PARALLEL;
    if (o->n_ctx <= 0) o->n_ctx = n_train > 0 && n_train < 4096 ? n_train : 4096;
    if (o->max_body == 0) o->max_body = SRV_DEFAULT_BODY;
    if (o->max_tokens_cap <= 0) o->max_tokens_cap = o->n_ctx;
    if (o->max_queue <= 0) o->max_queue = 16 * o->n_parallel;
    if (o->max_n <= 0) o->max_n = 16;
    if (o->shutdown_grace_s == 0) o->shutdown_grace_s = 5.0;
    if (o->shutdown_grace_s < 0) o->shutdown_grace_s = 0;
    s->n_ctx = o->n_ctx;
    s->started = (long long)time(NULL);
    ia_rng_seed(&s->rng, (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)s);

    s->host = ia_strdup(o->host ? o->host : "127.0.0.1");
    s->model_id = o->model_id ? ia_strdup(o->model_id) : default_model_id(o->model_path);
    s->model_path = o->model_path ? ia_strdup(o->model_path) : NULL;
    s->api_key = o->api_key && *o->api_key ? ia_strdup(o->api_key) : NULL;
    o->host = o->model_id = o->model_path = o->api_key = NULL; /* never keep the caller's pointers */
    if (!s->host || !s->model_id || (opts && opts->model_path && !s->model_path) ||
        (opts && opts->api_key && *opts->api_key && !s->api_key)) {
        ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        goto fail;
    }

    /* Chat template: the one asked for, else the model's own, else chatml (llama.cpp's fallback). */
    s->tmpl = opts ? opts->chat_template : IA_CHAT_TEMPLATE_UNKNOWN;
    if (s->tmpl == IA_CHAT_TEMPLATE_UNKNOWN) {
        const char *src = ia_model_chat_template(m);
        if (src) {
            s->tmpl = ia_chat_template_detect(src);
            if (s->tmpl == IA_CHAT_TEMPLATE_UNKNOWN) {
                ia_error_set(err, IA_ERR_UNSUPPORTED, "the model's chat template is not one of the built-in ones; name one with --chat-template");
                goto fail;
            }
        } else {
            s->tmpl = IA_CHAT_TEMPLATE_CHATML;
            srv_log(s, "the model has no chat template; chat requests use chatml");
        }
    }
    if (srv_specials_init(s, err) != IA_OK) goto fail;

    s->n_batch = o->n_parallel > 256 ? o->n_parallel : 256;
    s->eng = ia_engine_init(m, o->n_parallel, o->n_ctx, s->n_batch, err);
    if (!s->eng) goto fail;
    s->threads = ia_get_threads();
    if (pthread_create(&s->worker, NULL, worker_main, s) != 0) {
        ia_error_set(err, IA_ERR_INTERNAL, "cannot start the engine thread");
        goto fail;
    }
    s->worker_started = true;

    /* Resolve the address (numeric or a name; loopback unless told otherwise). */
    char port_str[16];
    snprintf(port_str, sizeof port_str, "%d", opts ? opts->port : 0);
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    int g = getaddrinfo(s->host, port_str, &hints, &ai);
    if (g != 0 || !ai) {
        ia_error_set(err, IA_ERR_NET, "cannot resolve host '%s': %s", s->host, gai_strerror(g));
        goto fail;
    }
    struct sockaddr_storage addr;
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    bool v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (v6) flags |= MHD_USE_IPv6;
    errno = 0;
    s->d = MHD_start_daemon(flags, (uint16_t)(opts ? opts->port : 0), NULL, NULL, on_request, s,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s, /* first, so every message uses it */
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
                            MHD_OPTION_END);
    if (!s->d) {
        ia_error_set(err, IA_ERR_NET, "cannot listen on %s port %d: %s", s->host, opts ? opts->port : 0,
                     errno ? strerror(errno) : "libmicrohttpd refused to start");
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (opts ? opts->port : 0);
    return s;
fail:
    if (s->d) MHD_stop_daemon(s->d);
    server_free(s);
    return NULL;
}

int ia_server_port(const ia_server *s) { return s ? s->port : 0; }
const char *ia_server_model_id(const ia_server *s) { return s ? s->model_id : NULL; }

/* Waits on s->idle until no job is live or the deadline passes; s->mu held. */
static void wait_idle(ia_server *s, double deadline) {
    while (s->n_live > 0) {
        double left = deadline - ia_time_now();
        if (left <= 0) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double w = left < 0.25 ? left : 0.25;
        ts.tv_nsec += (long)(w * 1e9);
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->idle, &s->mu, &ts);
    }
}

void ia_server_stop(ia_server *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_mutex_unlock(&s->mu);
    /* No new connections; requests on open ones get 503. */
    MHD_socket fd = MHD_quiesce_daemon(s->d);
    s->listen_fd = fd == MHD_INVALID_SOCKET ? -1 : (int)fd;
    pthread_mutex_lock(&s->mu);
    int n0 = s->n_live;
    if (n0 > 0) srv_log(s, "shutting down: %d request%s in flight, %.1f s to finish", n0, n0 == 1 ? "" : "s", s->o.shutdown_grace_s);
    wait_idle(s, ia_time_now() + s->o.shutdown_grace_s);
    int left = s->n_live;
    /* Cancel what is left: each finishes at the worker's next step and answers 503 (or an SSE
     * error event). Lock order: server, then job, then (after the job's lock is dropped) engine. */
    for (srv_job *j = s->live; j; j = j->live_next) {
        pthread_mutex_lock(&j->mu);
        j->shutdown = true;
        pthread_mutex_unlock(&j->mu);
        for (int i = 0; i < j->n_seqs; i++) {
            pthread_mutex_lock(&j->mu);
            int id = j->seqs[i].done ? -1 : j->seqs[i].engine_id;
            pthread_mutex_unlock(&j->mu);
            if (id >= 0) ia_engine_cancel(s->eng, id);
        }
    }
    pthread_cond_signal(&s->wake);
    if (left > 0) srv_log(s, "cancelled %d request%s", left, left == 1 ? "" : "s");
    wait_idle(s, ia_time_now() + SRV_STOP_WAIT_S);
    pthread_mutex_unlock(&s->mu);
    /* Closes every connection and joins their threads (the worker still runs, so handlers waiting
     * on it finish). */
    MHD_stop_daemon(s->d);
    s->d = NULL;
    if (s->listen_fd >= 0) close(s->listen_fd);
    server_free(s);
}
