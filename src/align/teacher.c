/* teacher.c — the judge/proposer teacher: an OpenAI-compatible endpoint reached through the
 * client, or a local GGUF model run in-process with ia_generate. Every call is keyed by a hash of
 * its content and recorded in the run store (marked before it leaves, completed when it returns),
 * so a resumed run reuses every answer it already has and never sends a request twice. */
#include "align/align_internal.h"

#include <pthread.h>
#include <stdlib.h>

struct ia_teacher {
    char *spec;             /* URL or local:PATH */
    char *model;            /* requested model name (local: the file name) */
    char *describe;
    ia_store *store;
    const ia_align_config *cfg;
    /* http */
    ia_client *client;
    ia_client_cache *cache;
    /* local */
    ia_model *local;
    ia_chat_template_id local_tmpl;
};

void ia_teacher_res_clear(ia_teacher_res *r) {
    if (!r) return;
    ia_free(r->content);
    ia_free(r->error);
    memset(r, 0, sizeof *r);
}

const char *ia_teacher_describe(const ia_teacher *t) { return t->describe; }

ia_teacher *ia_teacher_open(const char *spec, const char *model, const ia_align_config *cfg, ia_store *store,
                            ia_error *err) {
    ia_teacher *t = ia_calloc(1, sizeof *t);
    if (!t) {
        ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        return NULL;
    }
    t->spec = ia_strdup(spec);
    t->store = store;
    t->cfg = cfg;
    ia_buf d = {0};
    if (!strncmp(spec, "local:", 6)) {
        const char *path = spec + 6;
        t->local = ia_model_load(path, err);
        if (!t->local) {
            ia_error_prefix(err, "teacher %s", spec);
            ia_teacher_free(t);
            return NULL;
        }
        const char *src = ia_model_chat_template(t->local);
        t->local_tmpl = src ? ia_chat_template_detect(src) : IA_CHAT_TEMPLATE_UNKNOWN;
        const char *base = strrchr(path, '/');
        t->model = ia_strdup(model ? model : base ? base + 1 : path);
        ia_buf_printf(&d, "%s", spec);
    } else {
        if (strncmp(spec, "http://", 7) && strncmp(spec, "https://", 8)) {
            ia_error_set(err, IA_ERR_ARG, "teacher '%s': expected http(s)://HOST[:PORT]/v1 or local:MODEL.gguf", spec);
            ia_teacher_free(t);
            return NULL;
        }
        if (!model) {
            ia_error_set(err, IA_ERR_ARG, "teacher %s: name the model with --teacher-model (or --judge-model / --proposer-model)",
                         spec);
            ia_teacher_free(t);
            return NULL;
        }
        t->model = ia_strdup(model);
        t->cache = store ? ia_store_client_cache(store, err) : NULL;
        ia_client_opts o = ia_client_opts_default();
        o.base_url = spec;
        o.api_key_env = cfg->api_key_env;
        o.api_key_optional = true; /* local servers take no key; a remote one answers 401, which stops the run */
        o.model = model;
        o.max_concurrency = cfg->teacher_concurrency;
        o.max_retries = cfg->teacher_retries;
        if (cfg->teacher_timeout > 0) o.timeout_s = cfg->teacher_timeout;
        o.seed = cfg->seed;
        o.cache = t->cache;
        t->client = ia_client_init(&o, err);
        if (!t->client) {
            ia_teacher_free(t);
            return NULL;
        }
        ia_buf_printf(&d, "%s (model %s)", spec, model);
    }
    t->describe = ia_buf_take(&d);
    return t;
}

void ia_teacher_free(ia_teacher *t) {
    if (!t) return;
    ia_client_free(t->client);
    ia_client_cache_free(t->cache);
    ia_model_free(t->local);
    ia_free(t->spec);
    ia_free(t->model);
    ia_free(t->describe);
    ia_free(t);
}

/* The logical request as canonical JSON: what the call key hashes and what the store records for a
 * local teacher. The endpoint's address is left out (a server restarted on another port is the
 * same teacher); the model name is in. */
static char *request_json(const ia_teacher *t, const ia_teacher_req *r) {
    json_t *msgs = json_array();
    for (int i = 0; i < r->msgs->n; i++)
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", r->msgs->m[i].role, "content", r->msgs->m[i].content));
    json_t *o = json_pack("{s:s,s:s,s:o,s:i,s:i}", "kind", t->local ? "local" : "chat", "model", t->model, "messages", msgs,
                          "max_tokens", r->max_tokens, "temperature", 0);
    if (r->format == IA_CLIENT_FORMAT_JSON_OBJECT) json_object_set_new(o, "response_format", json_string("json_object"));
    if (r->format == IA_CLIENT_FORMAT_JSON_SCHEMA && r->json_schema)
        json_object_set_new(o, "response_format", json_loads(r->json_schema, 0, NULL));
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    char *out = ia_strdup(s ? s : "");
    free(s);
    return out;
}

/* ---- HTTP workers ---- */
typedef struct http_job {
    ia_teacher *t;
    const char *role;
    const ia_teacher_req *reqs;
    ia_teacher_res *out;
    char **req_json;
    int *todo;              /* indices still to send */
    int n_todo, next;
    int done, total;
    bool fatal;
    ia_error fatal_err;
    pthread_mutex_t mu;
    void (*progress)(void *, int, int);
    void *ud;
} http_job;

/* Whether a failed request means the teacher cannot be used (stop the run) rather than that this
 * one request was refused (record it and go on). */
static bool is_fatal(long status, int code) {
    if (status == 0) return true; /* never answered: unreachable, timed out */
    if (status == 400 || status == 413 || status == 422) return false;
    if (status >= 200 && status < 300) return code != IA_ERR_FORMAT;
    return true; /* 401/403 key, 404 model, 429 quota, 5xx after retries */
}

static void http_one(http_job *J, int i) {
    ia_teacher *t = J->t;
    const ia_teacher_req *r = &J->reqs[i];
    ia_teacher_res *res = &J->out[i];
    ia_client_chat_req q = ia_client_chat_req_default();
    q.model = t->model;
    q.messages = r->msgs->m;
    q.n_messages = r->msgs->n;
    q.temperature = 0;
    q.max_tokens = r->max_tokens;
    q.format = r->format;
    q.json_schema = r->json_schema;
    q.json_schema_name = "verdict";
    ia_client_resp resp = {0};
    ia_error e = {0};
    ia_store_call_bind_thread(res->call_key);
    int rc = ia_client_chat(t->client, &q, &resp, &e);
    ia_store_call_bind_thread(NULL);
    ia_store_call c = {0};
    memcpy(c.call_key, res->call_key, 65);
    memcpy(c.cache_key, resp.cache_key, 65);
    c.request_json = resp.request_json;
    c.reply = resp.raw_body;
    c.http_status = (int)resp.http_status;
    c.attempts = resp.attempts;
    c.prompt_tokens = resp.usage.prompt_tokens;
    c.completion_tokens = resp.usage.completion_tokens;
    c.total_tokens = resp.usage.total_tokens;
    c.usage_missing = resp.usage_missing;
    c.latency_s = resp.latency_s;
    bool fatal = false;
    if (rc == IA_OK) {
        c.status = IA_CALL_OK;
        c.content = resp.n_choices > 0 ? resp.choices[0].content : "";
        res->content = ia_strdup(c.content);
    } else if (!is_fatal(resp.http_status, rc)) {
        c.status = rc == IA_ERR_FORMAT ? IA_CALL_UNUSABLE : IA_CALL_FAILED;
        c.error = e.msg;
        res->error = ia_strdup(e.msg);
    } else {
        fatal = true;
    }
    res->status = c.status;
    ia_error serr = {0};
    if (fatal) {
        /* never answered: forget the mark, so the retry after fixing the teacher is not counted
           as a second send; answered with an error: the mark stays (it was sent) */
        if (resp.http_status == 0) ia_store_call_unsend(t->store, res->call_key, NULL);
    } else if (ia_store_call_finish(t->store, &c, &serr) != IA_OK) {
        fatal = true;
        e = serr;
    }
    pthread_mutex_lock(&J->mu);
    if (fatal && !J->fatal) {
        J->fatal = true;
        if (resp.http_status == 401 || resp.http_status == 403)
            ia_error_set(&J->fatal_err, rc ? rc : IA_ERR_NET, "teacher %s: HTTP %ld (is the API key in $%s?): %s", t->describe,
                         resp.http_status, t->cfg->api_key_env ? t->cfg->api_key_env : "OPENAI_API_KEY", e.msg);
        else if (resp.http_status)
            ia_error_set(&J->fatal_err, rc ? rc : IA_ERR_NET, "teacher %s: HTTP %ld: %s", t->describe, resp.http_status, e.msg);
        else ia_error_set(&J->fatal_err, rc ? rc : IA_ERR_NET, "teacher %s unreachable: %s", t->describe, e.msg);
    }
    J->done++;
    if (J->progress) J->progress(J->ud, J->done, J->total);
    pthread_mutex_unlock(&J->mu);
    ia_client_resp_clear(&resp);
}

static void *http_worker(void *arg) {
    http_job *J = arg;
    for (;;) {
        pthread_mutex_lock(&J->mu);
        int k = J->fatal || J->next >= J->n_todo ? -1 : J->todo[J->next++];
        int idx = k;
        if (k >= 0) {
            /* mark before it leaves: a crash from here on makes the next run count a resend */
            ia_teacher_res *res = &J->out[idx];
            ia_error e = {0};
            if (ia_store_call_mark_sent(J->t->store, res->call_key, J->role, J->t->spec, J->t->model, J->req_json[idx], &e) !=
                IA_OK) {
                J->fatal = true;
                J->fatal_err = e;
                idx = -1;
            }
        }
        pthread_mutex_unlock(&J->mu);
        if (idx < 0) break;
        http_one(J, idx);
    }
    return NULL;
}

/* ---- local teacher ---- */
static char *local_prompt(const ia_teacher *t, const ia_msgs *ms, ia_error *err) {
    if (t->local_tmpl) return ia_chat_apply(t->local_tmpl, ms->m, ms->n, true, err);
    /* a model without a chat template gets the conversation as plain labelled paragraphs */
    ia_buf b = {0};
    for (int i = 0; i < ms->n; i++) {
        const char *r = ms->m[i].role;
        ia_buf_printf(&b, "%s: %s\n\n", !strcmp(r, "system") ? "System" : !strcmp(r, "user") ? "User" : "Assistant",
                      ms->m[i].content);
    }
    ia_buf_puts(&b, "Assistant:");
    return ia_buf_take(&b);
}

static int run_local(ia_teacher *t, const char *role, const ia_teacher_req *reqs, int *todo, int n_todo, char **req_json,
                     ia_teacher_res *out, void (*progress)(void *, int, int), void *ud, int done0, int total, ia_error *err) {
    if (n_todo == 0) return IA_OK;
    char **prompts = ia_calloc((size_t)n_todo, sizeof(char *));
    ia_completion *comp = ia_calloc((size_t)n_todo, sizeof *comp);
    int rc = IA_OK;
    for (int k = 0; k < n_todo && rc == IA_OK; k++) {
        prompts[k] = local_prompt(t, reqs[todo[k]].msgs, err);
        if (!prompts[k]) rc = err && err->code ? err->code : IA_ERR_NOMEM;
    }
    int max_tokens = 1;
    for (int k = 0; k < n_todo; k++)
        if (reqs[todo[k]].max_tokens > max_tokens) max_tokens = reqs[todo[k]].max_tokens;
    for (int k = 0; k < n_todo && rc == IA_OK; k++)
        rc = ia_store_call_mark_sent(t->store, out[todo[k]].call_key, role, t->spec, t->model, req_json[todo[k]], err);
    if (rc == IA_OK) {
        ia_generate_opts go = ia_generate_opts_default();
        go.sampling.temperature = 0;
        go.sampling.max_tokens = max_tokens;
        go.parse_special = t->local_tmpl != IA_CHAT_TEMPLATE_UNKNOWN;
        go.n_parallel = t->cfg->parallel > 0 ? t->cfg->parallel : 32;
        double t0 = ia_time_now();
        rc = ia_generate(t->local, (const char *const *)prompts, n_todo, &go, comp, err);
        double el = ia_time_now() - t0;
        for (int k = 0; k < n_todo && rc == IA_OK; k++) {
            int i = todo[k];
            ia_store_call c = {0};
            memcpy(c.call_key, out[i].call_key, 65);
            c.request_json = req_json[i];
            c.reply = comp[k].text;
            c.content = comp[k].text;
            c.status = IA_CALL_OK;
            c.prompt_tokens = comp[k].n_prompt_tokens;
            c.completion_tokens = comp[k].n_tokens;
            c.total_tokens = c.prompt_tokens + c.completion_tokens;
            c.latency_s = el;
            out[i].status = IA_CALL_OK;
            out[i].content = ia_strdup(comp[k].text);
            rc = ia_store_call_finish(t->store, &c, err);
            if (progress) progress(ud, done0 + k + 1, total);
        }
    }
    for (int k = 0; k < n_todo; k++) {
        ia_free(prompts[k]);
        ia_completion_clear(&comp[k]);
    }
    ia_free(prompts);
    ia_free(comp);
    if (rc != IA_OK) ia_error_prefix(err, "teacher %s", t->describe);
    return rc;
}

int ia_teacher_run(ia_teacher *t, const char *role, const ia_teacher_req *reqs, int n, ia_teacher_res *out,
                   void (*progress)(void *ud, int done, int total), void *ud, ia_error *err) {
    char **req_json = ia_calloc((size_t)(n ? n : 1), sizeof(char *));
    int *todo = ia_calloc((size_t)(n ? n : 1), sizeof(int));
    int n_todo = 0, done = 0, rc = IA_OK;
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        req_json[i] = request_json(t, &reqs[i]);
        ia_client_sha256_hex(req_json[i], strlen(req_json[i]), out[i].call_key);
        char *content = NULL, *error = NULL;
        ia_call_status st = ia_store_call_lookup(t->store, out[i].call_key, &content, &error, err);
        if (st == IA_CALL_OK || st == IA_CALL_UNUSABLE || st == IA_CALL_FAILED) {
            out[i].status = st;
            out[i].content = content;
            out[i].error = error;
            out[i].from_store = true;
            done++;
            continue;
        }
        ia_free(content);
        ia_free(error);
        /* the same request twice in one stage (two identical answers): send it once */
        bool dup = false;
        for (int k = 0; k < n_todo && !dup; k++) dup = !strcmp(out[todo[k]].call_key, out[i].call_key);
        if (!dup) todo[n_todo++] = i;
    }
    if (progress && done) progress(ud, done, n);
    if (t->local) {
        rc = run_local(t, role, reqs, todo, n_todo, req_json, out, progress, ud, done, n, err);
    } else if (n_todo > 0) {
        http_job J = {0};
        J.t = t;
        J.role = role;
        J.reqs = reqs;
        J.out = out;
        J.req_json = req_json;
        J.todo = todo;
        J.n_todo = n_todo;
        J.done = done;
        J.total = n;
        J.progress = progress;
        J.ud = ud;
        pthread_mutex_init(&J.mu, NULL);
        int nt = t->cfg->teacher_concurrency < n_todo ? t->cfg->teacher_concurrency : n_todo;
        if (nt < 1) nt = 1;
        pthread_t *th = ia_calloc((size_t)nt, sizeof *th);
        int started = 0;
        for (int k = 0; k < nt; k++)
            if (pthread_create(&th[k], NULL, http_worker, &J) == 0) started++;
        if (started == 0) http_worker(&J);
        for (int k = 0; k < started; k++) pthread_join(th[k], NULL);
        ia_free(th);
        pthread_mutex_destroy(&J.mu);
        if (J.fatal) {
            rc = J.fatal_err.code ? J.fatal_err.code : IA_ERR_NET;
            if (err) *err = J.fatal_err;
        }
    }
    /* duplicates take the answer of their first occurrence */
    for (int i = 0; i < n && rc == IA_OK; i++) {
        if (out[i].status != IA_CALL_NONE) continue;
        for (int k = 0; k < i; k++)
            if (!strcmp(out[k].call_key, out[i].call_key) && out[k].status != IA_CALL_NONE) {
                out[i].status = out[k].status;
                out[i].content = out[k].content ? ia_strdup(out[k].content) : NULL;
                out[i].error = out[k].error ? ia_strdup(out[k].error) : NULL;
                out[i].from_store = true;
                break;
            }
    }
    for (int i = 0; i < n; i++) ia_free(req_json[i]);
    ia_free(req_json);
    ia_free(todo);
    return rc;
}
