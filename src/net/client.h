/* client.h — the teacher client: an OpenAI-compatible HTTP client (chat completions and
 * completions) with bounded concurrency, retries with back-off, a response cache and usage totals.
 *
 * One ia_client talks to one server (base_url). Requests run on the calling thread with
 * curl_multi; several threads may share one client (the concurrency limit, the jitter RNG and the
 * usage totals are shared and locked). A request is attempted up to 1 + max_retries times:
 *
 *   retried      429 (not "insufficient_quota"), 408, 409, 5xx other than 501/505, a timeout, a
 *                refused/broken/reset connection, a truncated body, and a 2xx body that is not
 *                JSON (a proxy's HTML page, a cut-off reply); the server's `x-should-retry:
 *                true|false` header overrides the status rule.
 *   not retried  other 4xx (400 bad request, 401 bad key, 403, 404 unknown model, 422), a JSON
 *                2xx whose choices list is missing or empty (or that holds an "error"), a reply
 *                over max_response_bytes, a malformed URL or a TLS certificate failure: those fail
 *                at once with a message naming the status and the server's own error message.
 *   wait         Retry-After (seconds, fractional seconds or an HTTP date; `retry-after-ms` first)
 *                when 0 < value <= retry_after_max_s; otherwise exponential back-off with full
 *                jitter: uniform [0, min(backoff_max_s, backoff_base_s * 2^k)) for the k-th retry,
 *                drawn from an RNG seeded by opts.seed (reproducible schedules).
 *   attempts     counted per HTTP request this client starts. One exception, libcurl's: a request
 *                sent on a kept-alive connection that the server had already closed (nothing came
 *                back) is re-sent once on a fresh connection inside the same attempt.
 *   deadlines    each attempt is cut at timeout_s; all attempts and waits of one request together
 *                stay within budget_s (counted from its first attempt): a wait that would end past
 *                the budget is not started and the request fails with IA_ERR_TIMEOUT.
 *
 * Errors: IA_ERR_NET (HTTP error status, connection failure), IA_ERR_TIMEOUT (attempt timeout on
 * the last attempt, or the budget), IA_ERR_FORMAT ("unusable reply": not JSON, no choices),
 * IA_ERR_ARG (a request that cannot be sent), IA_ERR_NOMEM. Callers that must keep going (the
 * alignment loop) record a failed request and move on; the response still carries the status,
 * attempts and the last raw body.
 *
 * Secrets: the API key is read once from the environment variable named by api_key_env, kept only
 * in client memory (wiped on free) and sent only in the Authorization header. It never appears in
 * request_json, raw_body, error messages or log lines: any text coming back from the server is
 * scrubbed of the key (replaced by "[redacted]") before it is handed out.
 *
 * Cache: requests that are deterministic (temperature 0 or a seed) are looked up in opts.cache by
 * ia_client_request_key(endpoint, canonical request JSON) before any HTTP request and stored after
 * a usable reply, so a re-run never pays twice. The base URL is not part of the key (the model name
 * is): restarting a local server on another port keeps the cache valid.
 */
#ifndef IA_NET_CLIENT_H
#define IA_NET_CLIENT_H

#include "iteralign.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ia_client ia_client;

/* ---- cache interface ------------------------------------------------------------------------ */
/* A reply cache keyed by a 64-hex-digit SHA-256 (ia_client_request_key). Implementations must be
 * safe to call from several threads at once. The run store plugs in here. */
typedef struct ia_client_cache {
    /* The stored reply body for key (allocated with ia_malloc; the client ia_frees it), or NULL on
     * a miss. A stored body that no longer parses is treated as a miss and overwritten. */
    char *(*get)(void *ud, const char *key);
    /* Stores a usable reply body (already scrubbed of the key) under key; request_json is the
     * canonical request that produced it. Returns IA_OK or an error code; a failed put does not
     * fail the request. */
    int (*put)(void *ud, const char *key, const char *request_json, const char *reply_body);
    void (*destroy)(void *ud); /* called by ia_client_cache_free; may be NULL */
    void *ud;
} ia_client_cache;

/* An in-memory cache (a locked hash table). Free with ia_client_cache_free. */
ia_client_cache *ia_client_cache_mem_new(ia_error *err);
/* A directory of files <dir>/<key>.json (created if missing; files written to a temporary name
 * and renamed, so concurrent writers and crashes never leave half a reply). */
ia_client_cache *ia_client_cache_dir_new(const char *dir, ia_error *err);
void ia_client_cache_free(ia_client_cache *cache);
/* Entries in an in-memory cache (for tests); -1 for other caches. */
long ia_client_cache_mem_count(const ia_client_cache *cache);

/* ---- client --------------------------------------------------------------------------------- */
typedef struct ia_client_opts {
    const char *base_url;        /* required, e.g. "http://127.0.0.1:8080/v1" (http or https) */
    const char *api_key_env;     /* name of the environment variable holding the key; NULL: none */
    bool api_key_optional;       /* variable unset or empty: send no key instead of failing */
    const char *model;           /* default model for requests that name none (may be NULL) */
    const char *user_agent;      /* NULL: "iteralign/<version>" */
    bool use_max_completion_tokens; /* send max_completion_tokens (OpenAI) instead of max_tokens
                                       (local servers; Ollama only reads max_tokens) */
    int max_concurrency;         /* requests in flight at once per client; <= 0: 8 */
    int max_retries;             /* attempts = 1 + max_retries; < 0: 4 */
    double backoff_base_s;       /* first back-off cap (default 0.5) */
    double backoff_max_s;        /* largest back-off cap (default 8) */
    double retry_after_max_s;    /* Retry-After above this is ignored (back-off used); <= 0: 120 */
    double timeout_s;            /* per attempt; <= 0: 120 */
    double connect_timeout_s;    /* <= 0: 10 */
    double budget_s;             /* all attempts and waits of one request; 0: unlimited (default 600) */
    size_t max_response_bytes;   /* a larger reply fails (not retried); 0: 32 MiB */
    uint64_t seed;               /* seeds the jitter RNG */
    const ia_client_cache *cache; /* not owned; NULL: no cache */
    /* Optional: one line per retry and per final failure (already scrubbed of the key). Called on
     * the thread running the request. */
    void (*log)(void *ud, const char *line);
    void *log_ud;
    /* Optional: called after each request of a batch finishes (done of total). */
    void (*progress)(void *ud, int done, int total);
    void *progress_ud;
} ia_client_opts;

ia_client_opts ia_client_opts_default(void);

/* Creates a client. Fails with IA_ERR_ARG when base_url is missing or not http(s), or when
 * api_key_env names a variable that is unset or empty (unless api_key_optional); the message names
 * the variable, never a value. */
ia_client *ia_client_init(const ia_client_opts *opts, ia_error *err);
void ia_client_free(ia_client *c);
bool ia_client_has_key(const ia_client *c);

/* ---- requests ------------------------------------------------------------------------------- */
typedef enum ia_client_format {
    IA_CLIENT_FORMAT_NONE = 0,    /* free text (no response_format sent) */
    IA_CLIENT_FORMAT_JSON_OBJECT, /* {"type":"json_object"} */
    IA_CLIENT_FORMAT_JSON_SCHEMA, /* {"type":"json_schema","json_schema":{name, schema, strict}} */
} ia_client_format;

typedef struct ia_client_chat_req {
    const char *model;            /* NULL: the client's default model */
    const ia_chat_msg *messages;  /* role + content, both non-NULL */
    int n_messages;
    double temperature;           /* < 0: omitted (server default); 0: greedy */
    double top_p;                 /* < 0: omitted */
    int max_tokens;               /* <= 0: omitted */
    bool has_seed;
    int64_t seed;
    const char *const *stop;      /* stop strings (OpenAI accepts at most 4) */
    int n_stop;
    int n;                        /* choices; <= 1: omitted (one) */
    ia_client_format format;
    const char *json_schema;      /* JSON_SCHEMA: the schema as JSON text (an object) */
    const char *json_schema_name; /* NULL: "response" */
    bool json_schema_strict;
    const char *extra_json;       /* optional JSON object merged into the body (e.g. {"top_k":40}
                                     for llama-server); the fields above win; "stream" is dropped */
    bool no_cache;                /* skip the cache even when deterministic */
} ia_client_chat_req;

ia_client_chat_req ia_client_chat_req_default(void); /* everything omitted, one choice */

typedef struct ia_client_completion_req {
    const char *model;            /* NULL: the client's default model */
    const char *prompt;           /* text prompt, or NULL when prompt_ids is given */
    const int32_t *prompt_ids;    /* token-id prompt (vLLM, llama-server) */
    int n_prompt_ids;
    int max_tokens;               /* < 0: omitted; 0 is sent (vLLM scores echo without generating) */
    double temperature;           /* < 0: omitted */
    int logprobs;                 /* < 0: omitted; else top-k alternatives per position (<= 5) */
    bool echo;                    /* return the prompt with its logprobs */
    bool has_seed;
    int64_t seed;
    const char *const *stop;
    int n_stop;
    const char *extra_json;       /* as for chat */
    bool no_cache;
} ia_client_completion_req;

ia_client_completion_req ia_client_completion_req_default(void);

/* ---- responses ------------------------------------------------------------------------------ */
/* Per-position log-probabilities (legacy completions shape {tokens, token_logprobs, top_logprobs,
 * text_offset}, or the chat/llama-server shape {content:[{token, logprob, top_logprobs}]}). */
typedef struct ia_client_logprobs {
    int n;                  /* positions */
    char **tokens;          /* [n] */
    double *token_logprobs; /* [n]; NAN where the server sent null (the first prompt token) */
    int32_t *text_offset;   /* [n]; -1 where absent */
    int *top_start;         /* [n + 1]: the alternatives of position i are entries
                               top_start[i] .. top_start[i + 1] - 1 of top_tokens/top_logprobs */
    char **top_tokens;
    double *top_logprobs;
} ia_client_logprobs;

typedef struct ia_client_choice {
    char *content;                /* message content (chat) or text (completions); never NULL in a
                                     successful response ("" when the server sent null/nothing) */
    char *finish_reason;          /* NULL when the server sent none */
    ia_client_logprobs *logprobs; /* NULL unless the reply carried logprobs */
} ia_client_choice;

typedef struct ia_client_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens;
} ia_client_usage;

/* Filled by every request, successful or not (release with ia_client_resp_clear). */
typedef struct ia_client_resp {
    int n_choices;
    ia_client_choice *choices;
    ia_client_usage usage;  /* zeros when the server sent no usage (usage_missing) */
    bool usage_missing;
    char *model;            /* the model the server says answered; NULL if absent */
    long http_status;       /* of the last attempt; 0 when none was answered or on a cache hit */
    double latency_s;       /* from the first attempt to the end, waits included (0: cache hit) */
    int attempts;           /* HTTP attempts made (0 on a cache hit) */
    bool cache_hit;
    char *request_json;     /* the body sent (canonical: sorted keys, compact); no key in it */
    char *raw_body;         /* the last reply body received (scrubbed); NULL if none */
    char cache_key[65];     /* ia_client_request_key of the request ("" if it was never built) */
} ia_client_resp;

void ia_client_resp_clear(ia_client_resp *r);

/* One chat completion. Returns IA_OK or an error code (err says why); resp is always filled as far
 * as the request got and must be cleared with ia_client_resp_clear. */
int ia_client_chat(ia_client *c, const ia_client_chat_req *req, ia_client_resp *resp, ia_error *err);

/* n chat completions, up to max_concurrency in flight, each with its own retries, timeout and
 * budget; attempts start in input order. resps[i] and errs[i] (errs may be NULL) belong to
 * reqs[i]; resps are overwritten without being freed (clear earlier contents first). Returns
 * IA_OK when all succeeded, else the code of the first failed request in input order. */
int ia_client_chat_many(ia_client *c, const ia_client_chat_req *reqs, int n, ia_client_resp *resps,
                        ia_error *errs);

/* POST /completions, same policy. */
int ia_client_complete(ia_client *c, const ia_client_completion_req *req, ia_client_resp *resp,
                       ia_error *err);
int ia_client_complete_many(ia_client *c, const ia_client_completion_req *reqs, int n,
                            ia_client_resp *resps, ia_error *errs);

/* ---- usage totals --------------------------------------------------------------------------- */
typedef struct ia_client_totals {
    int64_t prompt_tokens;      /* summed over replies fetched over HTTP (cache hits cost nothing) */
    int64_t completion_tokens;
    int64_t total_tokens;
    int64_t requests;           /* requests finished, cache hits included */
    int64_t succeeded;
    int64_t failed;
    int64_t http_attempts;      /* HTTP attempts, retries included */
    int64_t cache_hits;
    int64_t usage_missing;      /* successful HTTP replies that carried no usage */
} ia_client_totals;

void ia_client_totals_get(ia_client *c, ia_client_totals *out);
void ia_client_totals_reset(ia_client *c);

/* ---- helpers (also used by the run store and the tests) ------------------------------------- */
/* The first JSON object in text, leniently: ```json fences are looked into first, then the prose;
 * braces inside strings are respected; a candidate that does not parse is repaired (trailing
 * commas, raw newlines/tabs inside strings, typographic quotes) and retried, then the next '{' is
 * tried. Returns the object's text (valid JSON, allocated with ia_malloc) or NULL. At most 256
 * candidate '{' are tried. */
char *ia_json_extract_object(const char *text);

/* Lowercase hex SHA-256 of data (out: 65 bytes with the NUL). */
void ia_client_sha256_hex(const void *data, size_t len, char out[65]);
/* The cache key of a request: SHA-256 of endpoint ("chat/completions"), "\n", request_json. */
void ia_client_request_key(const char *endpoint, const char *request_json, char out[65]);

/* Seconds to wait for a Retry-After header value (delta-seconds, possibly fractional, or an HTTP
 * date compared with now_epoch, Unix seconds). Returns -1 when the value is not understood. */
double ia_client_retry_after_parse(const char *value, double now_epoch);

#ifdef __cplusplus
}
#endif
#endif /* IA_NET_CLIENT_H */
