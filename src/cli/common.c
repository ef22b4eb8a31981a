/* common.c — option parsing and error printing shared by the sub-commands. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

int cli_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("iteralign: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_fail_err(const ia_error *err) { return cli_fail("%s", err->msg[0] ? err->msg : ia_result_name(err->code)); }

bool cli_parse_int(const char *opt, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        cli_fail("%s expects an integer in [%ld, %ld], got '%s'", opt, lo, hi, s);
        return false;
    }
    *out = (int)v;
    return true;
}

bool cli_parse_u64(const char *opt, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-') {
        cli_fail("%s expects a non-negative integer, got '%s'", opt, s);
        return false;
    }
    *out = v;
    return true;
}

bool cli_parse_float(const char *opt, const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        cli_fail("%s expects a number, got '%s'", opt, s);
        return false;
    }
    *out = v;
    return true;
}

int cli_usage_error(const char *cmd) {
    fprintf(stderr, "iteralign: see 'iteralign %s --help'\n", cmd);
    return 2;
}

void cli_json_print(json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENSURE_ASCII * 0);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        free(s);
    }
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if the bytes there are not one. */
static size_t utf8_seq_len(const unsigned char *s, size_t left) {
    unsigned char c = s[0];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || n > left) return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (n == 2 && c < 0xC2) return 0;                       /* overlong */
    if (n == 3 && c == 0xE0 && s[1] < 0xA0) return 0;       /* overlong */
    if (n == 3 && c == 0xED && s[1] >= 0xA0) return 0;      /* surrogate */
    if (n == 4 && ((c == 0xF0 && s[1] < 0x90) || c > 0xF4 || (c == 0xF4 && s[1] >= 0x90))) return 0;
    return n;
}

json_t *cli_json_text(const char *s, size_t len) {
    json_t *j = json_stringn(s, len);
    if (j) return j;
    /* Not valid UTF-8 (e.g. generation stopped inside a multi-byte character): replace bad bytes by U+FFFD. */
    ia_buf b = {0};
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq_len(u + i, len - i);
        if (n == 0) { ia_buf_append(&b, "\xEF\xBF\xBD", 3); i++; }
        else { ia_buf_append(&b, s + i, n); i += n; }
    }
    j = json_stringn(b.data ? b.data : "", b.len);
    ia_buf_free(&b);
    return j ? j : json_string("");
}
