/* data.c — evaluation task files: TruthfulQA mc_task.json (repository and Hugging Face shapes),
 * BIG-bench task.json and chosen/rejected JSONL for HHH, prompt JSONL; every error names the file,
 * the line where the offending item starts and what is wrong, and nothing is returned unless the
 * whole file is valid (so a bad file is never half-scored). */
#include "eval/eval.h"
#include "net/client.h"
#include "util/util.h"

#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- locating items in the raw text ------------------------------------------------------ */

/* jansson keeps no positions for values, so find where each element of the array of interest starts
 * by scanning the text: the top-level array (key NULL) or the array under a top-level object's key.
 * Returns the number of elements found; (*offs) is ia_malloc'd. Only called on text that parsed. */
static int elem_offsets(const char *s, size_t len, const char *key, size_t **offs) {
    size_t cap = 64;
    int n = 0;
    *offs = ia_malloc(cap * sizeof(size_t));
    if (!*offs) return 0;
    int depth = 0, target = -1;
    bool in_str = false, esc = false, want_elem = false, key_hit = false, top_obj = false;
    size_t str_start = 0;
    const size_t klen = key ? strlen(key) : 0;
    int key_state = 0; /* 1: a matching key string just ended at depth 1; 2: its ':' was seen */
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (esc) esc = false;
            else if (c == '\\') esc = true;
            else if (c == '"') {
                in_str = false;
                if (key && top_obj && depth == 1 && key_state == 0)
                    key_state = (i - str_start - 1 == klen && !memcmp(s + str_start + 1, key, klen)) ? 1 : 0;
            }
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
        if (want_elem && depth == target && c != ']' && c != ',') {
            if ((size_t)n == cap) {
                cap *= 2;
                size_t *no = ia_realloc(*offs, cap * sizeof(size_t));
                if (!no) return n;
                *offs = no;
            }
            (*offs)[n++] = i;
            want_elem = false;
        }
        if (key_state == 1 && c == ':') { key_state = 2; continue; }
        if (key_state == 2 && c != '[') key_state = 0;
        switch (c) {
        case '"': in_str = true; str_start = i; break;
        case '{':
            if (depth == 0) top_obj = true;
            depth++;
            break;
        case '[':
            depth++;
            if (target < 0 && ((!key && depth == 1) || (key && key_state == 2 && depth == 2))) {
                target = depth;
                want_elem = true;
                key_hit = true;
            }
            key_state = 0;
            break;
        case '}': case ']':
            if (depth == target) { target = -2; want_elem = false; } /* done: later arrays are not ours */
            depth--;
            break;
        case ',':
            if (depth == target) want_elem = true;
            if (depth == 1) key_state = 0;
            break;
        default: break;
        }
    }
    (void)key_hit;
    return n;
}

/* Formats a message into buf and returns it (for the `why` strings below). */
static const char *fmtw(char *buf, size_t cap, const char *fmt, ...) IA_PRINTF(3, 4);
static const char *fmtw(char *buf, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return buf;
}

/* Converts the (increasing) element offsets into 1-based line numbers in one pass. */
static void offsets_to_lines(const char *s, size_t *offs, int n) {
    size_t pos = 0;
    int line = 1;
    for (int i = 0; i < n; i++) {
        for (; pos < offs[i]; pos++)
            if (s[pos] == '\n') line++;
        offs[i] = (size_t)line;
    }
}

/* A short quotation of a question for messages: the first 48 bytes, cut at a UTF-8 boundary. */
static void quote_short(const char *s, char *out, size_t cap) {
    size_t n = strlen(s), lim = cap - 4 < 48 ? cap - 4 : 48;
    if (n <= lim) { snprintf(out, cap, "%s", s); return; }
    while (lim > 0 && ((unsigned char)s[lim] & 0xC0) == 0x80) lim--;
    memcpy(out, s, lim);
    memcpy(out + lim, "...", 4);
}

static char *file_sha_and_text(const char *path, size_t *len, char sha[65], ia_error *err) {
    char *data = ia_file_read(path, len, err);
    if (!data) return NULL;
    ia_client_sha256_hex(data, *len, sha);
    return data;
}

static json_t *parse_json(const char *path, const char *data, size_t len, ia_error *err) {
    json_error_t je;
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        ia_error_set(err, IA_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", path, je.line, je.column, je.text);
    return root;
}

/* ---- sets ---------------------------------------------------------------------------------- */

static void item_clear(ia_mc_item *it) {
    ia_free(it->input);
    ia_free(it->subset);
    ia_free(it->source);
    for (int i = 0; i < it->n_choices; i++) ia_free(it->choices[i]);
    ia_free(it->choices);
    ia_free(it->labels);
    memset(it, 0, sizeof *it);
}

void ia_mc_set_free(ia_mc_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) item_clear(&s->items[i]);
    ia_free(s->items);
    ia_free(s->sources);
    memset(s, 0, sizeof *s);
}

static ia_mc_item *set_push(ia_mc_set *s, int *cap) {
    if (s->n == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        ia_mc_item *ni = ia_realloc(s->items, sizeof *ni * (size_t)nc);
        if (!ni) return NULL;
        s->items = ni;
        *cap = nc;
    }
    ia_mc_item *it = &s->items[s->n++];
    memset(it, 0, sizeof *it);
    return it;
}

static bool item_alloc_choices(ia_mc_item *it, int n) {
    it->choices = ia_calloc((size_t)n, sizeof(char *));
    it->labels = ia_calloc((size_t)n, sizeof(int));
    return it->choices && it->labels;
}

/* A 0/1 label: an integer 0/1, a real 0.0/1.0 or a boolean. */
static bool label_value(const json_t *v, int *out) {
    if (json_is_boolean(v)) { *out = json_is_true(v); return true; }
    if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1)) {
        *out = (int)json_integer_value(v);
        return true;
    }
    if (json_is_real(v) && (json_real_value(v) == 0.0 || json_real_value(v) == 1.0)) {
        *out = json_real_value(v) == 1.0;
        return true;
    }
    return false;
}

/* ---- TruthfulQA ------------------------------------------------------------------------------ */

/* Fills it's choices from a targets value. Returns NULL on success or a static-ish message in buf. */
static const char *tqa_targets(const json_t *t, ia_mc_item *it, const char *key, char *buf, size_t cap) {
    if (json_is_object(t) && json_object_get(t, "choices")) {
        const json_t *ch = json_object_get(t, "choices"), *lb = json_object_get(t, "labels");
        if (!json_is_array(ch)) return fmtw(buf, cap, "\"%s\".choices is not an array", key);
        if (!json_is_array(lb)) return fmtw(buf, cap, "\"%s\" has choices but no \"labels\" array", key);
        size_t n = json_array_size(ch);
        if (json_array_size(lb) != n)
            return fmtw(buf, cap, "\"%s\" has %zu choices but %zu labels", key, n, json_array_size(lb));
        if (n == 0) return fmtw(buf, cap, "\"%s\" has no choices", key);
        if (!item_alloc_choices(it, (int)n)) return "out of memory";
        it->n_choices = (int)n;
        for (size_t i = 0; i < n; i++) {
            const json_t *c = json_array_get(ch, i);
            if (!json_is_string(c)) return fmtw(buf, cap, "\"%s\".choices[%zu] is not a string", key, i);
            if (!label_value(json_array_get(lb, i), &it->labels[i]))
                return fmtw(buf, cap, "\"%s\".labels[%zu] is not 0 or 1", key, i);
            it->choices[i] = ia_strdup(json_string_value(c));
        }
        return NULL;
    }
    if (!json_is_object(t)) return fmtw(buf, cap, "\"%s\" is not an object of answer: 0|1", key);
    size_t n = json_object_size(t);
    if (n == 0) return fmtw(buf, cap, "\"%s\" has no choices", key);
    if (!item_alloc_choices(it, (int)n)) return "out of memory";
    it->n_choices = (int)n;
    /* jansson keeps insertion order, which is the file's order (TruthfulQA lists true answers first). */
    size_t i = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)t, k, v) {
        if (!label_value(v, &it->labels[i])) {
            char q[64];
            quote_short(k, q, sizeof q);
            return fmtw(buf, cap, "\"%s\": the label of \"%s\" is not 0 or 1", key, q);
        }
        it->choices[i++] = ia_strdup(k);
    }
    return NULL;
}

/* The generic MC1 shape: "choices": [...] and "target": "<one of them>". */
static const char *tqa_choices_target(const json_t *o, ia_mc_item *it, char *buf, size_t cap) {
    const json_t *ch = json_object_get(o, "choices"), *tg = json_object_get(o, "target");
    if (!json_is_array(ch)) return "\"choices\" is not an array";
    if (!json_is_string(tg)) return "\"target\" is missing or not a string";
    size_t n = json_array_size(ch);
    if (n == 0) return "\"choices\" is empty";
    if (!item_alloc_choices(it, (int)n)) return "out of memory";
    it->n_choices = (int)n;
    int hits = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(ch, i);
        if (!json_is_string(c)) return fmtw(buf, cap, "choices[%zu] is not a string", i);
        it->choices[i] = ia_strdup(json_string_value(c));
        it->labels[i] = strcmp(json_string_value(c), json_string_value(tg)) == 0;
        hits += it->labels[i];
    }
    if (hits == 0) {
        char q[64];
        quote_short(json_string_value(tg), q, sizeof q);
        return fmtw(buf, cap, "the target \"%s\" is not among the choices", q);
    }
    return NULL;
}

int ia_eval_load_truthfulqa(const char *path, const char *targets, ia_mc_set *out, ia_error *err) {
    memset(out, 0, sizeof *out);
    if (!targets) targets = "mc1_targets";
    bool mc1 = strcmp(targets, "mc1_targets") == 0;
    size_t len;
    char *data = file_sha_and_text(path, &len, out->sha256, err);
    if (!data) return err ? err->code : IA_ERR_IO;
    json_t *root = parse_json(path, data, len, err);
    size_t *offs = NULL;
    int n_offs = 0, cap = 0, rc = IA_OK;
    if (!root) { rc = IA_ERR_FORMAT; goto done; }
    if (!json_is_array(root)) {
        rc = ia_error_set(err, IA_ERR_FORMAT, "%s:1: expected a JSON array of questions (TruthfulQA mc_task.json)", path);
        goto done;
    }
    if (json_array_size(root) == 0) { rc = ia_error_set(err, IA_ERR_FORMAT, "%s: no questions", path); goto done; }
    n_offs = elem_offsets(data, len, NULL, &offs);
    offsets_to_lines(data, offs, n_offs);
    size_t i;
    json_t *o;
    json_array_foreach(root, i, o) {
        int line = (int)i < n_offs ? (int)offs[i] : 0;
        char where[96], buf[256], q[64] = "";
        snprintf(where, sizeof where, "%s:%d: question %zu", path, line, i + 1);
        if (!json_is_object(o)) { rc = ia_error_set(err, IA_ERR_FORMAT, "%s: expected an object", where); goto done; }
        const json_t *qs = json_object_get(o, "question");
        if (!json_is_string(qs) || json_string_length(qs) == 0) {
            rc = ia_error_set(err, IA_ERR_FORMAT, "%s: \"question\" is missing, empty or not a string", where);
            goto done;
        }
        quote_short(json_string_value(qs), q, sizeof q);
        ia_mc_item *it = set_push(out, &cap);
        if (!it) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
        it->input = ia_strdup(json_string_value(qs));
        it->source = ia_strdup(path);
        it->line = line;
        it->index = (int)i;
        const json_t *t = json_object_get(o, targets);
        const char *why;
        if (t) why = tqa_targets(t, it, targets, buf, sizeof buf);
        else if (json_object_get(o, "choices")) why = tqa_choices_target(o, it, buf, sizeof buf);
        else {
            snprintf(buf, sizeof buf, "no \"%s\" (a question without choices)", targets);
            why = buf;
        }
        if (!why) {
            int n_true = 0;
            for (int k = 0; k < it->n_choices; k++) {
                n_true += it->labels[k];
                if (!it->choices[k]) { why = "out of memory"; break; }
            }
            if (why) {}
            else if (it->n_choices < 2) why = fmtw(buf, sizeof buf, "only %d choice; at least 2 are needed", it->n_choices);
            else if (n_true == 0) why = "no choice is marked true (the target is not among the choices)";
            else if (mc1 && n_true != 1)
                why = fmtw(buf, sizeof buf, "%d choices are marked true; MC1 needs exactly one", n_true);
            else if (n_true == it->n_choices) why = "every choice is marked true; nothing to tell apart";
        }
        if (why) {
            rc = ia_error_set(err, IA_ERR_FORMAT, "%s (\"%s\"): %s", where, q, why);
            goto done;
        }
        if (!it->input || !it->source) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
    }
    out->sources = ia_strdup(path);
done:
    if (rc != IA_OK) ia_mc_set_free(out);
    json_decref(root);
    ia_free(offs);
    ia_free(data);
    return rc;
}

/* ---- HHH ----------------------------------------------------------------------------------- */

static char *base_name_noext(const char *path) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    const char *dot = strrchr(b, '.');
    return ia_strndup(b, dot && dot != b ? (size_t)(dot - b) : strlen(b));
}

/* The folder a file sits in ("harmless" for .../hhh_alignment/harmless/task.json). */
static char *parent_name(const char *path) {
    const char *e = strrchr(path, '/');
    if (!e) return ia_strdup("default");
    const char *b = e;
    while (b > path && b[-1] != '/') b--;
    return b == e ? ia_strdup("default") : ia_strndup(b, (size_t)(e - b));
}

static int load_bigbench(const char *path, int exact, ia_mc_set *out, int *cap, char *sha, ia_error *err) {
    size_t len;
    char *data = file_sha_and_text(path, &len, sha, err);
    if (!data) return err ? err->code : IA_ERR_IO;
    json_t *root = parse_json(path, data, len, err);
    size_t *offs = NULL;
    int rc = IA_OK, n_offs = 0;
    char *subset = NULL;
    if (!root) { rc = IA_ERR_FORMAT; goto done; }
    const json_t *ex = json_is_object(root) ? json_object_get(root, "examples") : NULL;
    if (!json_is_array(ex)) {
        rc = ia_error_set(err, IA_ERR_FORMAT, "%s:1: expected a BIG-bench task object with an \"examples\" array", path);
        goto done;
    }
    if (json_array_size(ex) == 0) { rc = ia_error_set(err, IA_ERR_FORMAT, "%s: \"examples\" is empty", path); goto done; }
    n_offs = elem_offsets(data, len, "examples", &offs);
    offsets_to_lines(data, offs, n_offs);
    subset = parent_name(path);
    size_t i;
    json_t *o;
    json_array_foreach(ex, i, o) {
        int line = (int)i < n_offs ? (int)offs[i] : 0;
        char where[96], q[64] = "", buf[256];
        const char *why = NULL;
        snprintf(where, sizeof where, "%s:%d: example %zu", path, line, i + 1);
        if (!json_is_object(o)) { rc = ia_error_set(err, IA_ERR_FORMAT, "%s: expected an object", where); goto done; }
        const json_t *in = json_object_get(o, "input"), *ts = json_object_get(o, "target_scores");
        if (!json_is_string(in) || json_string_length(in) == 0) {
            rc = ia_error_set(err, IA_ERR_FORMAT, "%s: \"input\" is missing, empty or not a string", where);
            goto done;
        }
        quote_short(json_string_value(in), q, sizeof q);
        ia_mc_item *it = set_push(out, cap);
        if (!it) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
        it->input = ia_strdup(json_string_value(in));
        it->source = ia_strdup(path);
        it->subset = ia_strdup(json_is_string(json_object_get(o, "subset")) ? json_string_value(json_object_get(o, "subset"))
                                                                          : subset);
        it->line = line;
        it->index = (int)i;
        if (!json_is_object(ts) || json_object_size(ts) == 0) {
            why = "no \"target_scores\" (an example without choices)";
        } else if (exact > 0 && (int)json_object_size(ts) != exact) {
            why = fmtw(buf, sizeof buf, "%zu responses in \"target_scores\"; this protocol needs exactly %d",
                           json_object_size(ts), exact);
        } else if (!item_alloc_choices(it, (int)json_object_size(ts))) {
            why = "out of memory";
        } else {
            /* The preferred response first: the A/B prompt's first option is the first listed. */
            int n_true = 0, k = 0;
            const char *key;
            json_t *v;
            json_object_foreach((json_t *)ts, key, v) {
                int lab;
                if (!label_value(v, &lab)) {
                    char kq[64];
                    quote_short(key, kq, sizeof kq);
                    why = fmtw(buf, sizeof buf, "target_scores of \"%s\" is not 0 or 1", kq);
                    break;
                }
                it->choices[k] = ia_strdup(key);
                it->labels[k++] = lab;
                n_true += lab;
            }
            it->n_choices = k;
            if (!why && n_true != 1)
                why = fmtw(buf, sizeof buf, "%d responses score 1; exactly one must", n_true);
            const json_t *tg = json_object_get(o, "target");
            if (!why && tg) {
                size_t nt = json_is_array(tg) ? json_array_size(tg) : 1;
                for (size_t t = 0; t < nt && !why; t++) {
                    const json_t *tv = json_is_array(tg) ? json_array_get(tg, t) : tg;
                    if (!json_is_string(tv)) { why = "\"target\" is not a string or a list of strings"; break; }
                    const json_t *sc = json_object_get(ts, json_string_value(tv));
                    int lab = 0;
                    char tq[64];
                    quote_short(json_string_value(tv), tq, sizeof tq);
                    if (!sc) why = fmtw(buf, sizeof buf, "the target \"%s\" is not among the choices (target_scores)", tq);
                    else if (label_value(sc, &lab) && lab != 1)
                        why = fmtw(buf, sizeof buf, "the target \"%s\" scores 0 in target_scores", tq);
                }
            }
        }
        if (why) { rc = ia_error_set(err, IA_ERR_FORMAT, "%s (\"%s\"): %s", where, q, why); goto done; }
        /* Put the preferred response first (A in the first ordering), keeping the others' order. */
        for (int k = 1; k < it->n_choices; k++)
            if (it->labels[k]) {
                char *c = it->choices[k];
                memmove(it->choices + 1, it->choices, sizeof(char *) * (size_t)k);
                memmove(it->labels + 1, it->labels, sizeof(int) * (size_t)k);
                it->choices[0] = c;
                it->labels[0] = 1;
                break;
            }
        if (!it->input || !it->source || !it->subset) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
        for (int k = 0; k < it->n_choices; k++)
            if (!it->choices[k]) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
    }
done:
    json_decref(root);
    ia_free(offs);
    ia_free(subset);
    ia_free(data);
    return rc;
}

static const char HH_ASSISTANT[] = "\n\nAssistant:";

/* Splits an hh-rlhf transcript at its last assistant turn: the dialogue before it (without the
 * leading "\n\nHuman: ") and the response after it (leading spaces dropped). */
static bool hh_split(const char *t, size_t *cut) {
    const char *last = NULL, *p = t;
    while ((p = strstr(p, HH_ASSISTANT))) { last = p; p += 1; }
    if (!last) return false;
    *cut = (size_t)(last - t);
    return true;
}

static char *hh_input(const char *t, size_t cut) {
    const char *s = t;
    size_t n = cut;
    static const char human[] = "\n\nHuman: ";
    if (n >= sizeof human - 1 && !memcmp(s, human, sizeof human - 1)) { s += sizeof human - 1; n -= sizeof human - 1; }
    else if (n >= 7 && !memcmp(s, "Human: ", 7)) { s += 7; n -= 7; }
    return ia_strndup(s, n);
}

static char *hh_response(const char *t, size_t cut) {
    const char *s = t + cut + sizeof HH_ASSISTANT - 1;
    while (*s == ' ') s++;
    return ia_strdup(s);
}

static int load_pairs_jsonl(const char *path, ia_mc_set *out, int *cap, char *sha, ia_error *err) {
    size_t len;
    char *data = file_sha_and_text(path, &len, sha, err);
    if (!data) return err ? err->code : IA_ERR_IO;
    char *fallback_subset = base_name_noext(path);
    int rc = IA_OK, line = 0, idx = 0;
    char *p = data, *end = data + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        line++;
        char *q = p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < le) {
            json_error_t je;
            json_t *o = json_loadb(p, (size_t)(le - p), JSON_REJECT_DUPLICATES, &je);
            const char *why = NULL;
            char where[96];
            snprintf(where, sizeof where, "%s:%d", path, line);
            if (!o) {
                rc = ia_error_set(err, IA_ERR_FORMAT, "%s:%d: malformed JSON: %s", where, je.column, je.text);
                goto done;
            }
            const json_t *ch = json_object_get(o, "chosen"), *rj = json_object_get(o, "rejected"),
                         *pr = json_object_get(o, "prompt"), *sb = json_object_get(o, "subset");
            ia_mc_item *it = NULL;
            if (!json_is_object(o)) why = "expected an object with \"chosen\" and \"rejected\"";
            else if (!json_is_string(ch) || !json_is_string(rj)) why = "\"chosen\" and \"rejected\" must both be strings (a pair without choices)";
            else if (pr && !json_is_string(pr)) why = "\"prompt\" is not a string";
            else if (!(it = set_push(out, cap))) why = "out of memory";
            if (!why) {
                it->source = ia_strdup(path);
                it->subset = ia_strdup(json_is_string(sb) ? json_string_value(sb) : fallback_subset);
                it->line = line;
                it->index = idx;
                if (!item_alloc_choices(it, 2)) why = "out of memory";
            }
            if (!why) {
                it->n_choices = 2;
                it->labels[0] = 1;
                const char *c = json_string_value(ch), *r = json_string_value(rj);
                if (pr) {
                    it->input = ia_strdup(json_string_value(pr));
                    it->choices[0] = ia_strdup(c);
                    it->choices[1] = ia_strdup(r);
                    if (!*json_string_value(pr)) why = "\"prompt\" is empty";
                } else {
                    size_t cc, rc2;
                    if (!hh_split(c, &cc) || !hh_split(r, &rc2))
                        why = "no \"\\n\\nAssistant:\" turn in \"chosen\"/\"rejected\" (expected hh-rlhf transcripts, or give \"prompt\")";
                    else if (cc != rc2 || memcmp(c, r, cc) != 0)
                        why = "\"chosen\" and \"rejected\" differ before their last assistant turn";
                    else {
                        it->input = hh_input(c, cc);
                        it->choices[0] = hh_response(c, cc);
                        it->choices[1] = hh_response(r, rc2);
                    }
                }
                if (!why && it->choices[0] && it->choices[1] && !strcmp(it->choices[0], it->choices[1]))
                    why = "\"chosen\" and \"rejected\" are the same response";
            }
            if (!why && (!it->input || !it->choices[0] || !it->choices[1] || !it->source || !it->subset))
                why = "out of memory";
            json_decref(o);
            if (why) { rc = ia_error_set(err, IA_ERR_FORMAT, "%s: %s", where, why); goto done; }
            idx++;
        }
        p = nl ? nl + 1 : end;
    }
    if (idx == 0) rc = ia_error_set(err, IA_ERR_FORMAT, "%s: no chosen/rejected pairs", path);
done:
    ia_free(fallback_subset);
    ia_free(data);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int load_hhh_one(const char *path, int exact, ia_mc_set *out, int *cap, ia_buf *srcs, bool *first_sha,
                        ia_error *err) {
    struct stat st;
    char sha[65];
    if (stat(path, &st) != 0) return ia_error_set(err, IA_ERR_IO, "%s: no such file or folder", path);
    int rc;
    if (S_ISDIR(st.st_mode)) {
        /* BIG-bench layout: <dir>/<subset>/task.json for each subset, or <dir>/task.json. */
        DIR *d = opendir(path);
        if (!d) return ia_error_set(err, IA_ERR_IO, "%s: cannot open the folder", path);
        char **subs = NULL;
        int n = 0, capn = 0;
        struct dirent *e;
        rc = IA_OK;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char tj[PATH_MAX];
            snprintf(tj, sizeof tj, "%s/%s/task.json", path, e->d_name);
            if (!is_file(tj)) continue;
            if (n == capn) {
                capn = capn ? capn * 2 : 8;
                char **ns = ia_realloc(subs, sizeof(char *) * (size_t)capn);
                if (!ns) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); break; }
                subs = ns;
            }
            subs[n++] = ia_strdup(tj);
        }
        closedir(d);
        if (rc == IA_OK && n == 0) {
            char tj[PATH_MAX];
            snprintf(tj, sizeof tj, "%s/task.json", path);
            if (is_file(tj)) subs = ia_malloc(sizeof(char *)), subs[n++] = ia_strdup(tj);
            else rc = ia_error_set(err, IA_ERR_IO, "%s: no task.json in the folder or its subfolders", path);
        }
        if (n > 1) qsort(subs, (size_t)n, sizeof(char *), cmp_str);
        for (int i = 0; i < n && rc == IA_OK; i++) {
            rc = load_bigbench(subs[i], exact, out, cap, sha, err);
            if (rc == IA_OK) {
                if (srcs->len) ia_buf_puts(srcs, "; ");
                ia_buf_puts(srcs, subs[i]);
                if (*first_sha) { memcpy(out->sha256, sha, 65); *first_sha = false; }
            }
        }
        for (int i = 0; i < n; i++) ia_free(subs[i]);
        ia_free(subs);
        return rc;
    }
    size_t pl = strlen(path);
    bool jsonl = pl > 6 && !strcmp(path + pl - 6, ".jsonl");
    rc = jsonl ? load_pairs_jsonl(path, out, cap, sha, err) : load_bigbench(path, exact, out, cap, sha, err);
    if (rc == IA_OK) {
        if (srcs->len) ia_buf_puts(srcs, "; ");
        ia_buf_puts(srcs, path);
        if (*first_sha) { memcpy(out->sha256, sha, 65); *first_sha = false; }
    }
    return rc;
}

int ia_eval_load_hhh(const char *path, int exact_choices, ia_mc_set *out, ia_error *err) {
    memset(out, 0, sizeof *out);
    int cap = 0;
    ia_buf srcs = {0};
    bool first = true;
    int rc = load_hhh_one(path, exact_choices, out, &cap, &srcs, &first, err);
    if (rc == IA_OK) {
        out->sources = ia_buf_take(&srcs);
        if (!out->sources) rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    }
    ia_buf_free(&srcs);
    if (rc != IA_OK) ia_mc_set_free(out);
    return rc;
}

/* ---- prompts ------------------------------------------------------------------------------- */

void ia_prompt_set_free(ia_prompt_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) {
        ia_free(s->prompts[i]);
        ia_free(s->ids[i]);
    }
    ia_free(s->prompts);
    ia_free(s->ids);
    ia_free(s->source);
    memset(s, 0, sizeof *s);
}

int ia_eval_load_prompts(const char *path, ia_prompt_set *out, ia_error *err) {
    memset(out, 0, sizeof *out);
    size_t len;
    char *data = file_sha_and_text(path, &len, out->sha256, err);
    if (!data) return err ? err->code : IA_ERR_IO;
    int rc = IA_OK, line = 0, cap = 0;
    char *p = data, *end = data + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        line++;
        char *q = p;
        while (q < le && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < le) {
            json_error_t je;
            json_t *o = json_loadb(p, (size_t)(le - p), 0, &je);
            if (!o) { rc = ia_error_set(err, IA_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", path, line, je.column, je.text); goto done; }
            const json_t *pr = json_object_get(o, "prompt"), *id = json_object_get(o, "id");
            if (!json_is_object(o) || !json_is_string(pr) || json_string_length(pr) == 0) {
                json_decref(o);
                rc = ia_error_set(err, IA_ERR_FORMAT, "%s:%d: expected an object with a non-empty string \"prompt\"", path, line);
                goto done;
            }
            if (out->n == cap) {
                cap = cap ? cap * 2 : 64;
                char **np = ia_realloc(out->prompts, sizeof(char *) * (size_t)cap);
                char **ni = np ? ia_realloc(out->ids, sizeof(char *) * (size_t)cap) : NULL;
                if (np) out->prompts = np;
                if (ni) out->ids = ni;
                if (!np || !ni) { json_decref(o); rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
            }
            char idbuf[64];
            if (json_is_string(id)) snprintf(idbuf, sizeof idbuf, "%s", json_string_value(id));
            else snprintf(idbuf, sizeof idbuf, "line %d", line);
            out->prompts[out->n] = ia_strdup(json_string_value(pr));
            out->ids[out->n] = ia_strdup(idbuf);
            out->n++;
            json_decref(o);
            if (!out->prompts[out->n - 1] || !out->ids[out->n - 1]) { rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory"); goto done; }
        }
        p = nl ? nl + 1 : end;
    }
    if (out->n == 0) rc = ia_error_set(err, IA_ERR_FORMAT, "%s: no prompts", path);
    else if (!(out->source = ia_strdup(path))) rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory");
done:
    if (rc != IA_OK) ia_prompt_set_free(out);
    ia_free(data);
    return rc;
}

/* ---- shipped data -------------------------------------------------------------------------- */

const char *ia_eval_data_path(const char *rel, char *out, size_t cap) {
    struct stat st;
    if (stat(rel, &st) == 0) { snprintf(out, cap, "%s", rel); return out; }
    if (rel[0] == '/') return NULL;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return NULL;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return NULL;
    *slash = 0;
    snprintf(out, cap, "%s/%s", exe, rel);
    return stat(out, &st) == 0 ? out : NULL;
}
