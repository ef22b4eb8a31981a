/* server_internal.h — what the server's files share: the server, per-request jobs and their
 * sequences, request parsing/response building (server_api.c) and the HTTP side (server.c). */
#ifndef IA_SERVER_INTERNAL_H
#define IA_SERVER_INTERNAL_H

#include "server.h"
#include "engine/engine.h"
#include "engine/logprobs.h"
#include "util/util.h"

#include <jansson.h>
#include <pthread.h>

#define SRV_DEFAULT_PARALLEL 8
#define SRV_DEFAULT_BODY (1u << 20)
#define SRV_COMPLETIONS_DEFAULT_MAX 16 /* OpenAI's default max_tokens for /v1/completions */

typedef enum srv_kind { SRV_CHAT = 0, SRV_COMPLETION } srv_kind;

/* One sequence of a job: one choice of one prompt. */
typedef struct srv_seq {
    struct srv_job *job;
    int index;             /* choice index in the response: prompt * n + j */
    int prompt;            /* index into the job's prompts */
    int engine_id;         /* -1: not submitted (max_tokens 0) */
    bool done;             /* on_done came, or never submitted */
    bool reported;         /* streaming: its finish chunk is out */
    bool taken;            /* its completion was moved out of the engine */
    ia_buf pending;        /* streaming: text from on_text not sent yet */
    ia_completion out;     /* after ia_engine_take */
    int n_keep;            /* generated tokens that reach the returned text (for logprobs) */
    ia_token_lp_job lp;    /* logprobs pass (ids/outputs owned here) */
    int32_t *lp_ids;
} srv_seq;

typedef struct srv_job {
    struct ia_server *srv;
    srv_kind kind;
    /* request */
    ia_sampling sp;
    char *stop[IA_MAX_STOP];   /* owned copies; sp.stop points at them */
    int n;                     /* choices per prompt */
    bool stream, include_usage, echo;
    bool want_lp;              /* logprobs requested (completions: logprobs >= 0; chat: logprobs true) */
    int top_k;                 /* alternatives per position */
    bool max_tokens_given;
    int n_prompts;
    int32_t **prompt_ids;      /* [n_prompts] */
    int *n_prompt_ids;
    char **prompt_text;        /* [n_prompts] echo text (completions) */
    size_t *prompt_text_len;
    int n_seqs;
    srv_seq *seqs;
    int prompt_tokens;         /* usage: every prompt once */
    int completion_tokens;
    char id[40];
    long long created;
    unsigned long err_gen;     /* server's engine-error counter at submit time */
    /* synchronisation with the worker (callbacks run on it) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_done;
    bool shutdown;             /* cancelled by ia_server_stop */
    bool gone;                 /* the client went away */
    bool lp_done;
    int lp_rc;
    char lp_err[160];
    struct srv_job *live_prev, *live_next; /* the server's list of live jobs */
    struct srv_job *lp_next;   /* the worker's logprobs queue */
    /* streaming state (touched only by the connection thread) */
    int fd;                    /* client socket, for noticing a disconnect */
    ia_buf out;
    size_t out_pos;
    bool head_sent, ended;
    /* request log for streams (written when the response is freed) */
    char method[8];
    char path[64];
    double t0;
} srv_job;

struct ia_server {
    ia_model *m;
    const ia_tokenizer *tok;
    ia_server_opts o;
    char *host, *model_id, *model_path, *api_key;
    ia_chat_template_id tmpl;
    int n_ctx, n_vocab;
    struct MHD_Daemon *d;
    int port;
    int listen_fd;             /* from MHD_quiesce_daemon, closed after MHD_stop_daemon */
    ia_engine *eng;
    int n_batch;               /* engine batch (tokens per forward) */
    int threads;               /* forward-pass threads (the starting thread's ia_get_threads) */
    pthread_t worker;
    bool worker_started;
    pthread_mutex_t mu;        /* guards everything below */
    pthread_cond_t wake;       /* worker: work arrived / quit */
    pthread_cond_t idle;       /* stop: a live job went away */
    bool quit, stopping;
    srv_job *live;
    int n_live;
    srv_job *lp_head, *lp_tail;
    unsigned long err_gen;     /* engine step failures so far */
    long eng_ids;              /* request ids the current engine has handed out */
    int untaken;               /* sequences submitted (or about to be) whose completion is not taken */
    char err_msg[IA_ERROR_MSG_MAX];
    ia_rng rng;                /* request ids and seeds of unseeded sampling */
    long long started;
    /* texts of control tokens (parsed as specials only when parse_special): user content holding one
     * is tokenized so that the text stays text */
    char **special_text;
    int n_special;
    bool spm_strip;            /* the decoder drops the space SPM puts before the first word */
};

/* An error to send: status, OpenAI type, message, param, code. */
typedef struct srv_err {
    int status;
    const char *type;
    const char *param;
    const char *code;
    char msg[400];
} srv_err;

void srv_err_set(srv_err *e, int status, const char *param, const char *code, const char *fmt, ...) IA_PRINTF(5, 6);

/* ---- server_api.c ---- */
/* Parses and validates a request body into a job (prompts tokenized, sampling set). NULL + e on a
 * bad request. */
srv_job *srv_job_parse(struct ia_server *s, srv_kind kind, json_t *req, srv_err *e);
void srv_job_free(srv_job *j);
/* Prepares the logprobs pass of each sequence (after generation). IA_OK or IA_ERR_NOMEM. */
int srv_job_lp_prepare(srv_job *j);
/* The non-streaming response body. */
json_t *srv_job_response(srv_job *j);
/* SSE events into b: the opening chunk(s), text, a choice's end, the usage chunk and [DONE]. */
void srv_sse_head(srv_job *j, ia_buf *b);
void srv_sse_text(srv_job *j, const srv_seq *q, const char *text, size_t len, ia_buf *b);
void srv_sse_finish(srv_job *j, const srv_seq *q, ia_buf *b);
void srv_sse_end(srv_job *j, ia_buf *b);
void srv_sse_error(srv_job *j, const srv_err *e, ia_buf *b);
json_t *srv_error_json(const srv_err *e);
json_t *srv_models_json(struct ia_server *s, const char *only_id);
/* JSON text with ia_malloc (jansson's own buffer is never handed out). NULL when out of memory. */
char *srv_json_dump(const json_t *v, size_t *len);
/* A JSON string for bytes that may not be valid UTF-8 (bad bytes become U+FFFD). */
json_t *srv_json_text(const char *s, size_t len);
const char *srv_finish_reason(ia_finish f);
/* Collects the control-token texts of the vocabulary (for chat content handling). */
int srv_specials_init(struct ia_server *s, ia_error *err);
void srv_specials_free(struct ia_server *s);
/* True when name names this server's model (id, path, or the path's file name). */
bool srv_model_matches(const struct ia_server *s, const char *name);

#endif /* IA_SERVER_INTERNAL_H */
