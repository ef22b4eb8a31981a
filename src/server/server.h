/* server.h — the OpenAI-compatible HTTP server (`iteralign serve`): libmicrohttpd front end, one
 * engine worker thread that batches every in-flight request into one forward per step.
 *
 * Endpoints (the /v1 prefix is optional, as in llama-server):
 *   GET  /health                 {"status":"ok"} (no key needed; 503 while shutting down)
 *   GET  /v1/models, /v1/models/ID
 *   POST /v1/chat/completions    messages -> chat template -> generation; SSE when "stream": true
 *   POST /v1/completions         prompt (string, [strings], [ids], [[ids]]); logprobs + echo give
 *                                prompt log-likelihoods (lm-eval's local-completions protocol)
 * Request fields: model, messages / prompt, max_tokens / max_completion_tokens, temperature (default
 * 1, as OpenAI), top_p, top_k, min_p, frequency_penalty, presence_penalty, repeat_penalty /
 * repetition_penalty, seed (choice i samples with seed + i), stop (string or up to 8), n, stream,
 * stream_options.include_usage, logprobs (+ top_logprobs on chat), echo, ignore_eos. response_format
 * {"type":"json_object"} is accepted but not enforced (no grammar: the prompt must ask for JSON);
 * json_schema, tools, logit_bias and suffix are refused with 400 rather than silently ignored.
 * Log-probabilities are the raw model's (before temperature and penalties), from a teacher-forced
 * pass over prompt + output once generation is done.
 * Errors use OpenAI's shape {"error":{"message","type","param","code"}} with 400 (bad request,
 * context_length_exceeded), 401 (missing or wrong key), 404 (unknown path or model), 405, 413 (body
 * too large), 500 and 503 (queue full, shutting down; with Retry-After).
 *
 * Threads: one connection thread per client (libmicrohttpd's thread-per-connection mode), so a
 * handler may block until its sequences are done; the engine worker loops ia_engine_step while any
 * sequence is pending and sleeps on a condition variable otherwise. Log-probability passes run on
 * the same worker between steps, so only one thread ever runs forward passes.
 */
#ifndef IA_SERVER_H
#define IA_SERVER_H

#include "iteralign.h"

typedef struct ia_server ia_server;

typedef struct ia_server_opts {
    const char *host;          /* address to bind (numeric or a name); NULL: "127.0.0.1" */
    int port;                  /* 0: an ephemeral port (read it back with ia_server_port) */
    const char *model_id;      /* the id /v1/models reports; NULL: the file name without ".gguf" */
    const char *model_path;    /* also accepted as a model name in requests (may be NULL) */
    const char *api_key;       /* bearer token required on every endpoint but /health; NULL: none.
                                  Copied; never logged */
    ia_chat_template_id chat_template; /* UNKNOWN: the model's own, else chatml */
    int n_parallel;            /* sequences decoded together (engine slots); <= 0: 8 */
    int n_ctx;                 /* context per sequence; <= 0: min(model's, 4096) */
    size_t max_body;           /* request body limit in bytes; 0: 1 MiB */
    int max_tokens_cap;        /* largest max_tokens accepted; <= 0: n_ctx */
    int max_queue;             /* sequences waiting or running before 503; <= 0: 16 * n_parallel */
    int max_n;                 /* largest "n" (choices per prompt); <= 0: 16 */
    double shutdown_grace_s;   /* ia_server_stop lets in-flight requests finish this long, then
                                  cancels them (503 / an SSE error event); < 0: 0, 0: default 5 */
    /* One line per request (method, path, status, tokens, ms) and for server events; never the key
     * or a body. Called from connection threads. NULL: silent. */
    void (*log)(void *ud, const char *line);
    void *log_ud;
} ia_server_opts;

ia_server_opts ia_server_opts_default(void);

/* Starts serving `m` (not owned; it must outlive the server). Returns NULL (err set) when the
 * address cannot be bound, the chat template is not usable or memory runs out. */
ia_server *ia_server_start(ia_model *m, const ia_server_opts *opts, ia_error *err);
int ia_server_port(const ia_server *s);
const char *ia_server_model_id(const ia_server *s);
/* Stops accepting connections, lets in-flight requests finish within the grace period, cancels the
 * rest, closes every connection, stops the worker and frees everything. NULL is a no-op. */
void ia_server_stop(ia_server *s);

#endif /* IA_SERVER_H */
