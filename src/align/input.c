/* input.c — red-team prompt readers (JSONL, JSON, CSV with a named column, one prompt per line)
 * and prompt presentation (raw, the model's chat template, the hh-rlhf Human:/Assistant: form),
 * with the constitution placed in context for self-revision. */
#include "align/align.h"
#include "util/util.h"

#include <ctype.h>
#include <strings.h>

void ia_prompts_free(ia_prompt *p, int n) {
    if (!p) return;
    for (int i = 0; i < n; i++) {
        ia_free(p[i].text);
        ia_free(p[i].messages);
        ia_free(p[i].source);
    }
    ia_free(p);
}

static int push_prompt(ia_prompt **out, int *n, const char *text, size_t len, const char *messages, const char *src, int line) {
    ia_prompt *np = ia_realloc(*out, sizeof **out * (size_t)(*n + 1));
    if (!np) return IA_ERR_NOMEM;
    *out = np;
    np[*n] = (ia_prompt){ia_strndup(text, len), messages ? ia_strdup(messages) : NULL, ia_strdup(src), line};
    (*n)++;
    return IA_OK;
}

/* The first Human turn of an hh-rlhf transcript ("\n\nHuman: ...\n\nAssistant: ..."). */
static bool hh_first_human(const char *t, const char **start, size_t *len) {
    const char *h = strstr(t, "Human:");
    if (!h) return false;
    h += 6;
    while (*h == ' ') h++;
    const char *e = strstr(h, "\n\nAssistant:");
    if (!e) e = h + strlen(h);
    while (e > h && isspace((unsigned char)e[-1])) e--;
    *start = h;
    *len = (size_t)(e - h);
    return true;
}

/* One JSON value (a line of JSONL or an element of a JSON array) into a prompt. */
static int prompt_from_json(json_t *v, const char *src, int line, ia_prompt **out, int *n, ia_error *err) {
    if (json_is_string(v)) return push_prompt(out, n, json_string_value(v), json_string_length(v), NULL, src, line);
    if (!json_is_object(v))
        return ia_error_set(err, IA_ERR_FORMAT, "%s:%d: expected an object with a \"prompt\" or \"messages\" field", src, line);
    json_t *p = json_object_get(v, "prompt");
    if (json_is_string(p)) return push_prompt(out, n, json_string_value(p), json_string_length(p), NULL, src, line);
    json_t *m = json_object_get(v, "messages");
    if (m) {
        if (!json_is_array(m) || json_array_size(m) == 0)
            return ia_error_set(err, IA_ERR_FORMAT, "%s:%d: \"messages\" must be a non-empty array", src, line);
        const char *last_user = NULL;
        size_t last_len = 0, i;
        json_t *e;
        json_t *clean = json_array();
        json_array_foreach(m, i, e) {
            json_t *role = json_object_get(e, "role"), *content = json_object_get(e, "content");
            if (!json_is_string(role) || !json_is_string(content)) {
                json_decref(clean);
                return ia_error_set(err, IA_ERR_FORMAT, "%s:%d: messages[%zu] needs string \"role\" and \"content\"", src, line, i);
            }
            const char *r = json_string_value(role);
            if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
                json_decref(clean);
                return ia_error_set(err, IA_ERR_FORMAT, "%s:%d: messages[%zu]: role \"%s\" (expected system, user or assistant)",
                                    src, line, i, r);
            }
            if (!strcmp(r, "user")) {
                last_user = json_string_value(content);
                last_len = json_string_length(content);
            }
            json_array_append_new(clean, json_pack("{s:s,s:s}", "role", r, "content", json_string_value(content)));
        }
        const char *lr = json_string_value(json_object_get(json_array_get(m, json_array_size(m) - 1), "role"));
        if (!last_user || strcmp(lr, "user")) {
            json_decref(clean);
            return ia_error_set(err, IA_ERR_FORMAT, "%s:%d: \"messages\" must end with a user turn", src, line);
        }
        char *mj = json_dumps(clean, JSON_COMPACT);
        json_decref(clean);
        int rc = push_prompt(out, n, last_user, last_len, mj, src, line);
        free(mj);
        return rc;
    }
    json_t *chosen = json_object_get(v, "chosen");
    const char *hs;
    size_t hl;
    if (json_is_string(chosen) && hh_first_human(json_string_value(chosen), &hs, &hl))
        return push_prompt(out, n, hs, hl, NULL, src, line);
    static const char *alt[] = {"question", "instruction", "goal", "text", NULL};
    for (int k = 0; alt[k]; k++) {
        json_t *a = json_object_get(v, alt[k]);
        if (json_is_string(a)) return push_prompt(out, n, json_string_value(a), json_string_length(a), NULL, src, line);
    }
    return ia_error_set(err, IA_ERR_FORMAT, "%s:%d: no \"prompt\" (string) or \"messages\" field", src, line);
}

static int read_jsonl(const char *path, const char *data, size_t len, ia_prompt **out, int *n, ia_error *err) {
    const char *p = data, *end = data + len;
    int line = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        const char *q = p;
        while (q < le && isspace((unsigned char)*q)) q++;
        if (q < le) {
            json_error_t je;
            json_t *v = json_loadb(p, (size_t)(le - p), 0, &je);
            if (!v) return ia_error_set(err, IA_ERR_FORMAT, "%s:%d: malformed JSON: %s", path, line, je.text);
            int rc = prompt_from_json(v, path, line, out, n, err);
            json_decref(v);
            if (rc != IA_OK) return rc;
        }
        p = nl ? nl + 1 : end;
    }
    return IA_OK;
}

static int read_json(const char *path, const char *data, size_t len, ia_prompt **out, int *n, ia_error *err) {
    json_error_t je;
    json_t *v = json_loadb(data, len, 0, &je);
    if (!v) return ia_error_set(err, IA_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", path, je.line, je.column, je.text);
    if (!json_is_array(v)) {
        json_decref(v);
        return ia_error_set(err, IA_ERR_FORMAT, "%s: expected a JSON array of prompts (strings or objects)", path);
    }
    size_t i;
    json_t *e;
    int rc = IA_OK;
    json_array_foreach(v, i, e) {
        if ((rc = prompt_from_json(e, path, (int)i + 1, out, n, err)) != IA_OK) break;
    }
    json_decref(v);
    return rc;
}

/* One CSV record (RFC 4180: quoted fields may hold commas, quotes doubled, newlines). Advances *pp;
 * fields are appended to *fields (ia_free each). Returns the number of fields, -1 at the end, -2 on
 * an unterminated quote. *lines counts the newlines consumed. */
static int csv_record(const char **pp, const char *end, char ***fields, int *lines) {
    const char *p = *pp;
    if (p >= end) return -1;
    int nf = 0;
    *fields = NULL;
    for (;;) {
        ia_buf b = {0};
        ia_buf_append(&b, "", 0);
        if (p < end && *p == '"') {
            p++;
            for (;;) {
                if (p >= end) {
                    ia_buf_free(&b);
                    for (int i = 0; i < nf; i++) ia_free((*fields)[i]);
                    ia_free(*fields);
                    *fields = NULL;
                    return -2;
                }
                if (*p == '"') {
                    if (p + 1 < end && p[1] == '"') {
                        ia_buf_append(&b, "\"", 1);
                        p += 2;
                        continue;
                    }
                    p++;
                    break;
                }
                if (*p == '\n') (*lines)++;
                ia_buf_append(&b, p, 1);
                p++;
            }
            while (p < end && *p != ',' && *p != '\n') p++; /* junk after a closing quote is dropped */
        } else {
            const char *s = p;
            while (p < end && *p != ',' && *p != '\n') p++;
            size_t l = (size_t)(p - s);
            if (l && s[l - 1] == '\r') l--;
            ia_buf_append(&b, s, l);
        }
        *fields = ia_realloc(*fields, sizeof(char *) * (size_t)(nf + 1));
        (*fields)[nf++] = ia_buf_take(&b);
        if (p >= end) break;
        if (*p == ',') {
            p++;
            continue;
        }
        p++; /* '\n' */
        (*lines)++;
        break;
    }
    *pp = p;
    return nf;
}

static void free_fields(char **f, int n) {
    for (int i = 0; i < n; i++) ia_free(f[i]);
    ia_free(f);
}

static int read_csv(const char *path, const char *data, size_t len, const char *column, ia_prompt **out, int *n,
                    ia_error *err) {
    const char *p = data, *end = data + len;
    if (len >= 3 && !memcmp(p, "\xef\xbb\xbf", 3)) p += 3; /* a UTF-8 byte-order mark */
    int lines = 0;
    char **hdr;
    int nh = csv_record(&p, end, &hdr, &lines);
    if (nh <= 0) return ia_error_set(err, IA_ERR_FORMAT, "%s: empty CSV (expected a header row)", path);
    int col = -1;
    static const char *guess[] = {"prompt", "goal", "behavior", "question", "instruction", "text", NULL};
    if (column) {
        for (int i = 0; i < nh && col < 0; i++)
            if (!strcmp(hdr[i], column)) col = i;
    } else {
        for (int g = 0; guess[g] && col < 0; g++)
            for (int i = 0; i < nh && col < 0; i++)
                if (!strcasecmp(hdr[i], guess[g])) col = i;
    }
    if (col < 0) {
        ia_buf b = {0};
        for (int i = 0; i < nh; i++) ia_buf_printf(&b, "%s\"%s\"", i ? ", " : "", hdr[i]);
        if (column) ia_error_set(err, IA_ERR_FORMAT, "%s: no column \"%s\" (columns: %s)", path, column, b.data);
        else ia_error_set(err, IA_ERR_FORMAT, "%s: no prompt column found; name one with --column (columns: %s)", path, b.data);
        ia_buf_free(&b);
        free_fields(hdr, nh);
        return IA_ERR_FORMAT;
    }
    free_fields(hdr, nh);
    for (;;) {
        int start = lines + 1;
        char **f;
        int nf = csv_record(&p, end, &f, &lines);
        if (nf == -1) break;
        if (nf == -2) return ia_error_set(err, IA_ERR_FORMAT, "%s:%d: unterminated quoted field", path, start);
        if (nf == 1 && !f[0][0]) { /* a blank line */
            free_fields(f, nf);
            continue;
        }
        if (col >= nf) {
            free_fields(f, nf);
            return ia_error_set(err, IA_ERR_FORMAT, "%s:%d: the record has %d fields; the prompt column is field %d", path,
                                start, nf, col + 1);
        }
        int rc = f[col][0] ? push_prompt(out, n, f[col], strlen(f[col]), NULL, path, start) : IA_OK;
        free_fields(f, nf);
        if (rc != IA_OK) return rc;
    }
    return IA_OK;
}

static int read_text(const char *path, const char *data, size_t len, ia_prompt **out, int *n, ia_error *err) {
    const char *p = data, *end = data + len;
    int line = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        const char *s = p, *e = le;
        while (s < e && isspace((unsigned char)*s)) s++;
        while (e > s && isspace((unsigned char)e[-1])) e--;
        if (e > s && push_prompt(out, n, s, (size_t)(e - s), NULL, path, line) != IA_OK)
            return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        p = nl ? nl + 1 : end;
    }
    return IA_OK;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

int ia_prompts_read(const char *path, const char *format, const char *column, ia_prompt **out, int *n, ia_error *err) {
    size_t len;
    char *data = ia_file_read(path, &len, err);
    if (!data) return err ? err->code : IA_ERR_IO;
    if (memchr(data, 0, len)) {
        ia_free(data);
        return ia_error_set(err, IA_ERR_FORMAT, "%s: binary file (NUL bytes), not a prompt file", path);
    }
    const char *f = format && strcmp(format, "auto") ? format : NULL;
    if (!f) {
        if (ends_with(path, ".jsonl") || ends_with(path, ".ndjson")) f = "jsonl";
        else if (ends_with(path, ".json")) f = "json";
        else if (ends_with(path, ".csv")) f = "csv";
        else f = "text";
    }
    int before = *n, rc;
    if (!strcmp(f, "jsonl")) rc = read_jsonl(path, data, len, out, n, err);
    else if (!strcmp(f, "json")) rc = read_json(path, data, len, out, n, err);
    else if (!strcmp(f, "csv")) rc = read_csv(path, data, len, column, out, n, err);
    else rc = read_text(path, data, len, out, n, err);
    ia_free(data);
    if (rc == IA_OK && *n == before) rc = ia_error_set(err, IA_ERR_FORMAT, "%s: no prompts in the file", path);
    return rc;
}

/* ---- presentation ---- */
int ia_presenter_init(ia_presenter *p, const ia_align_config *c, const ia_model *m, ia_error *err) {
    memset(p, 0, sizeof *p);
    p->system = c->system;
    const char *mode = c->present ? c->present : "auto";
    ia_chat_template_id tid = IA_CHAT_TEMPLATE_UNKNOWN;
    if (c->chat_template) {
        tid = ia_chat_template_from_name(c->chat_template);
        if (!tid) return ia_error_set(err, IA_ERR_ARG, "--chat-template: unknown template '%s'", c->chat_template);
    } else if (m && ia_model_chat_template(m)) {
        tid = ia_chat_template_detect(ia_model_chat_template(m));
    }
    if (!strcmp(mode, "raw")) p->mode = IA_PRESENT_RAW;
    else if (!strcmp(mode, "hh")) p->mode = IA_PRESENT_HH;
    else if (!strcmp(mode, "chat")) {
        if (!tid)
            return ia_error_set(err, IA_ERR_ARG, "--present chat: %s has no recognised chat template; name one with --chat-template",
                                c->base);
        p->mode = IA_PRESENT_CHAT;
    } else {
        p->mode = tid ? IA_PRESENT_CHAT : IA_PRESENT_RAW;
    }
    p->tmpl = tid;
    return IA_OK;
}

/* The released code's insertion: split on "\n\n" and append " " + text to the paragraph before
 * the final cue (the last paragraph). With a single paragraph the text goes before the prompt. */
static char *insert_before_cue(const char *presented, const char *addition) {
    const char *last = NULL, *p = presented;
    while ((p = strstr(p, "\n\n")) != NULL) {
        last = p;
        p += 2;
    }
    ia_buf b = {0};
    if (!last || last == presented) {
        ia_buf_printf(&b, "%s %s", addition, presented);
        return ia_buf_take(&b);
    }
    ia_buf_append(&b, presented, (size_t)(last - presented));
    ia_buf_printf(&b, " %s", addition);
    ia_buf_puts(&b, last);
    return ia_buf_take(&b);
}

static const char *style_for(const ia_presenter *p, const char *style) {
    if (style && strcmp(style, "auto")) return style;
    switch (p->mode) {
    case IA_PRESENT_HH: return "insert";
    case IA_PRESENT_CHAT: return "system";
    default: return "prefix";
    }
}

char *ia_present(const ia_presenter *p, const ia_prompt *pr, const char *const *constitutions, int n_const,
                 const char *style, ia_error *err) {
    ia_buf joined = {0};
    for (int i = 0; i < n_const; i++) ia_buf_printf(&joined, "%s%s", i ? " " : "", constitutions[i]);
    const char *st = style_for(p, style);
    char *base = NULL;
    json_t *msgs = pr->messages ? json_loads(pr->messages, 0, NULL) : NULL;
    if (p->mode == IA_PRESENT_CHAT) {
        ia_chat_msg m[64];
        int k = 0;
        char *sys = NULL;
        bool sys_const = n_const > 0 && !strcmp(st, "system");
        if (p->system || sys_const) {
            ia_buf sb = {0};
            if (p->system) ia_buf_puts(&sb, p->system);
            if (sys_const) ia_buf_printf(&sb, "%s%s", p->system ? "\n\n" : "", joined.data);
            sys = ia_buf_take(&sb);
            m[k++] = (ia_chat_msg){"system", sys};
        }
        if (msgs) {
            size_t i;
            json_t *e;
            json_array_foreach(msgs, i, e) {
                if (k >= 63) break;
                const char *role = json_string_value(json_object_get(e, "role"));
                if (!strcmp(role, "system") && k > 0 && sys) continue; /* ours replaces it */
                m[k++] = (ia_chat_msg){role, json_string_value(json_object_get(e, "content"))};
            }
        } else {
            m[k++] = (ia_chat_msg){"user", pr->text};
        }
        base = ia_chat_apply(p->tmpl, m, k, true, err);
        ia_free(sys);
        if (base && n_const > 0 && strcmp(st, "system")) {
            char *t = !strcmp(st, "insert") ? insert_before_cue(base, joined.data) : NULL;
            if (!t) {
                ia_buf b = {0};
                ia_buf_printf(&b, "%s %s", joined.data, base);
                t = ia_buf_take(&b);
            }
            ia_free(base);
            base = t;
        }
    } else {
        ia_buf b = {0};
        if (p->mode == IA_PRESENT_HH) {
            if (msgs) {
                size_t i;
                json_t *e;
                json_array_foreach(msgs, i, e) {
                    const char *role = json_string_value(json_object_get(e, "role"));
                    const char *content = json_string_value(json_object_get(e, "content"));
                    if (!strcmp(role, "system")) ia_buf_printf(&b, "%s", content);
                    else ia_buf_printf(&b, "\n\n%s: %s", !strcmp(role, "user") ? "Human" : "Assistant", content);
                }
                ia_buf_puts(&b, "\n\nAssistant:");
            } else {
                ia_buf_printf(&b, "\n\nHuman: %s\n\nAssistant:", pr->text);
            }
        } else {
            ia_buf_puts(&b, pr->text);
        }
        base = ia_buf_take(&b);
        if (base && n_const > 0) {
            char *t;
            if (!strcmp(st, "insert") && p->mode == IA_PRESENT_HH) {
                t = insert_before_cue(base, joined.data);
            } else { /* prefix (system has no place outside a chat template: a prefix stands in) */
                ia_buf tb = {0};
                ia_buf_printf(&tb, "%s %s", joined.data, base);
                t = ia_buf_take(&tb);
            }
            ia_free(base);
            base = t;
        }
    }
    json_decref(msgs);
    ia_buf_free(&joined);
    if (!base && err && !err->code) ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    return base;
}
