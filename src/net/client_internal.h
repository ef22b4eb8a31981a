/* client_internal.h — what client.c and client_parse.c share: reply parsing and error-body
 * summaries. Not part of the module's API. */
#ifndef IA_NET_CLIENT_INTERNAL_H
#define IA_NET_CLIENT_INTERNAL_H

#include "net/client.h"
#include "util/util.h"

/* Parses a 2xx reply body into out->choices / usage / usage_missing / model (out's other fields
 * are left alone). On failure returns IA_ERR_FORMAT (or IA_ERR_NOMEM) with "unusable reply: ..."
 * in err and leaves out's parsed fields empty; *retryable says whether another attempt could
 * help (the body was not JSON at all: a proxy page, a cut-off reply). */
int ia_client_parse_reply(const char *body, size_t len, ia_client_resp *out, bool *retryable,
                          ia_error *err);

/* Frees the parsed fields (choices, model) and zeroes them. */
void ia_client_parsed_clear(ia_client_resp *r);

/* A one-line summary of an error body: "type: message" from {"error":{...}}, vLLM's flat
 * {"object":"error","message",...}, {"error":"text"}, FastAPI's {"detail":...}, or else the start
 * of the body with control characters removed. Written into out (always NUL-terminated).
 * *insufficient_quota is set when the error code or type says the account has no quota (a 429
 * that waiting does not fix). */
void ia_client_error_summary(const char *body, size_t len, char *out, size_t cap,
                             bool *insufficient_quota);

#endif /* IA_NET_CLIENT_INTERNAL_H */
