/* error.c — result-code names and the error struct that carries a one-line message. */
#include "util.h"

#include <stdlib.h>

const char *ia_result_name(int code) {
    switch (code) {
    case IA_OK: return "IA_OK";
    case IA_ERR_IO: return "IA_ERR_IO";
    case IA_ERR_FORMAT: return "IA_ERR_FORMAT";
    case IA_ERR_UNSUPPORTED: return "IA_ERR_UNSUPPORTED";
    case IA_ERR_NOMEM: return "IA_ERR_NOMEM";
    case IA_ERR_ARG: return "IA_ERR_ARG";
    case IA_ERR_RANGE: return "IA_ERR_RANGE";
    case IA_ERR_NET: return "IA_ERR_NET";
    case IA_ERR_TIMEOUT: return "IA_ERR_TIMEOUT";
    case IA_ERR_DB: return "IA_ERR_DB";
    case IA_ERR_INTERNAL: return "IA_ERR_INTERNAL";
    default: return "IA_ERR_UNKNOWN";
    }
}

/* Messages are one line: newlines from nested sources are replaced by spaces. */
static void error_flatten(char *s) {
    for (; *s; s++)
        if (*s == '\n' || *s == '\r') *s = ' ';
}

int ia_error_set(ia_error *err, int code, const char *fmt, ...) {
    if (!err) return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    error_flatten(err->msg);
    return code;
}

void ia_error_prefix(ia_error *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[IA_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[IA_ERROR_MSG_MAX];
    memcpy(old, err->msg, sizeof old);
    size_t pl = strlen(prefix);
    if (pl > sizeof err->msg - 3) pl = sizeof err->msg - 3;
    memcpy(err->msg, prefix, pl);
    memcpy(err->msg + pl, ": ", 2);
    size_t room = sizeof err->msg - pl - 3, ol = strlen(old);
    if (ol > room) ol = room;
    memcpy(err->msg + pl + 2, old, ol);
    err->msg[pl + 2 + ol] = 0;
    error_flatten(err->msg);
}

void ia_error_clear(ia_error *err) {
    if (!err) return;
    err->code = IA_OK;
    err->msg[0] = 0;
}

void ia_abort(const char *file, int line, const char *what) {
    fprintf(stderr, "iteralign: internal error at %s:%d: assertion failed: %s\n", file, line, what);
    abort();
}
