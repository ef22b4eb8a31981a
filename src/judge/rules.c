/* rules.c — the rules judge: a JSON file of named detectors (PCRE2 regular expressions or keyword
 * lists), each with the constitution text it stands for. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "judge/judge.h"
#include "net/client.h"
#include "util/util.h"

#include <ctype.h>
#include <jansson.h>
#include <pcre2.h>

typedef enum rule_field { FIELD_ANSWER = 0, FIELD_PROMPT, FIELD_BOTH } rule_field;

typedef struct rule {
    char *name;
    char *constitution;
    pcre2_code *re;          /* regex rule */
    char **keywords;         /* keyword rule: lower-cased unless case_sensitive */
    int n_keywords;
    bool case_sensitive;
    bool whole_word;
    rule_field field;
    int min_matches;
} rule;

struct ia_rules {
    rule *r;
    int n;
    char hash[65];
};

int ia_rules_count(const ia_rules *r) { return r ? r->n : 0; }
const char *ia_rules_name(const ia_rules *r, int i) { return r->r[i].name; }
const char *ia_rules_constitution(const ia_rules *r, int i) { return r->r[i].constitution; }
const char *ia_rules_hash(const ia_rules *r) { return r->hash; }

void ia_rules_free(ia_rules *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        rule *x = &r->r[i];
        ia_free(x->name);
        ia_free(x->constitution);
        if (x->re) pcre2_code_free(x->re);
        for (int k = 0; k < x->n_keywords; k++) ia_free(x->keywords[k]);
        ia_free(x->keywords);
    }
    ia_free(r->r);
    ia_free(r);
}

static void lower_ascii(char *s) {
    for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

static const char *const RULE_KEYS[] = {"name", "regex", "keywords", "flags", "case_sensitive", "whole_word",
                                        "field", "min_matches", "constitution", "description", NULL};

/* Parses rule i; err names the source, the rule and the field. */
static int parse_rule(json_t *o, int i, const char *src, rule *x, ia_error *err) {
    char where[160];
    snprintf(where, sizeof where, "%s: rule %d", src, i + 1);
    if (!json_is_object(o)) return ia_error_set(err, IA_ERR_FORMAT, "%s: expected an object", where);
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val) {
        bool known = false;
        for (int k = 0; RULE_KEYS[k]; k++) known |= !strcmp(key, RULE_KEYS[k]);
        if (!known) return ia_error_set(err, IA_ERR_FORMAT, "%s: unknown field \"%s\"", where, key);
    }
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name) || !json_string_length(name))
        return ia_error_set(err, IA_ERR_FORMAT, "%s: \"name\" must be a non-empty string", where);
    x->name = ia_strdup(json_string_value(name));
    snprintf(where, sizeof where, "%s: rule %d (\"%s\")", src, i + 1, x->name);
    json_t *con = json_object_get(o, "constitution");
    if (!json_is_string(con) || !json_string_length(con))
        return ia_error_set(err, IA_ERR_FORMAT, "%s: \"constitution\" must be a non-empty string (the principle the "
                                                "detector stands for)", where);
    x->constitution = ia_strdup(json_string_value(con));
    json_t *re = json_object_get(o, "regex"), *kw = json_object_get(o, "keywords");
    if (!re == !kw) return ia_error_set(err, IA_ERR_FORMAT, "%s: give exactly one of \"regex\" or \"keywords\"", where);
    json_t *cs = json_object_get(o, "case_sensitive"), *ww = json_object_get(o, "whole_word");
    if (cs && !json_is_boolean(cs)) return ia_error_set(err, IA_ERR_FORMAT, "%s: \"case_sensitive\" must be true or false", where);
    if (ww && !json_is_boolean(ww)) return ia_error_set(err, IA_ERR_FORMAT, "%s: \"whole_word\" must be true or false", where);
    x->case_sensitive = cs && json_is_true(cs);
    x->whole_word = !ww || json_is_true(ww);
    json_t *field = json_object_get(o, "field");
    x->field = FIELD_ANSWER;
    if (field) {
        const char *f = json_string_value(field);
        if (f && !strcmp(f, "answer")) x->field = FIELD_ANSWER;
        else if (f && !strcmp(f, "prompt")) x->field = FIELD_PROMPT;
        else if (f && !strcmp(f, "both")) x->field = FIELD_BOTH;
        else return ia_error_set(err, IA_ERR_FORMAT, "%s: \"field\" must be \"answer\", \"prompt\" or \"both\"", where);
    }
    json_t *mm = json_object_get(o, "min_matches");
    x->min_matches = 1;
    if (mm) {
        if (!json_is_integer(mm) || json_integer_value(mm) < 1 || json_integer_value(mm) > 1000000)
            return ia_error_set(err, IA_ERR_FORMAT, "%s: \"min_matches\" must be a positive integer", where);
        x->min_matches = (int)json_integer_value(mm);
    }
    json_t *desc = json_object_get(o, "description");
    if (desc && !json_is_string(desc)) return ia_error_set(err, IA_ERR_FORMAT, "%s: \"description\" must be a string", where);
    if (re) {
        if (!json_is_string(re) || !json_string_length(re))
            return ia_error_set(err, IA_ERR_FORMAT, "%s: \"regex\" must be a non-empty string", where);
        uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
        json_t *fl = json_object_get(o, "flags");
        if (fl) {
            if (!json_is_string(fl)) return ia_error_set(err, IA_ERR_FORMAT, "%s: \"flags\" must be a string", where);
            for (const char *p = json_string_value(fl); *p; p++) {
                switch (*p) {
                case 'i': opts |= PCRE2_CASELESS; break;
                case 'm': opts |= PCRE2_MULTILINE; break;
                case 's': opts |= PCRE2_DOTALL; break;
                case 'x': opts |= PCRE2_EXTENDED; break;
                default: return ia_error_set(err, IA_ERR_FORMAT, "%s: \"flags\": unknown flag '%c' (use i, m, s, x)", where, *p);
                }
            }
        }
        int ecode;
        PCRE2_SIZE eoff;
        x->re = pcre2_compile((PCRE2_SPTR)json_string_value(re), json_string_length(re), opts, &ecode, &eoff, NULL);
        if (!x->re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ecode, msg, sizeof msg);
            return ia_error_set(err, IA_ERR_FORMAT, "%s: \"regex\": %s at offset %zu", where, (const char *)msg, (size_t)eoff);
        }
    } else {
        if (json_object_get(o, "flags")) return ia_error_set(err, IA_ERR_FORMAT, "%s: \"flags\" applies to \"regex\" rules only", where);
        if (!json_is_array(kw) || json_array_size(kw) == 0)
            return ia_error_set(err, IA_ERR_FORMAT, "%s: \"keywords\" must be a non-empty array of strings", where);
        x->keywords = ia_calloc(json_array_size(kw), sizeof(char *));
        size_t k;
        json_t *v;
        json_array_foreach(kw, k, v) {
            if (!json_is_string(v) || !json_string_length(v))
                return ia_error_set(err, IA_ERR_FORMAT, "%s: \"keywords\"[%zu] must be a non-empty string", where, k);
            x->keywords[x->n_keywords] = ia_strdup(json_string_value(v));
            if (!x->case_sensitive) lower_ascii(x->keywords[x->n_keywords]);
            x->n_keywords++;
        }
    }
    return IA_OK;
}

ia_rules *ia_rules_parse(const char *json, size_t len, const char *name, ia_error *err) {
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        ia_error_set(err, IA_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", name, je.line, je.column, je.text);
        return NULL;
    }
    json_t *arr = json_is_array(root) ? root : json_object_get(root, "rules");
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: expected {\"rules\": [ ... ]} with at least one rule", name);
        json_decref(root);
        return NULL;
    }
    ia_rules *r = ia_calloc(1, sizeof *r);
    r->r = ia_calloc(json_array_size(arr), sizeof(rule));
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o) {
        int rc = parse_rule(o, (int)i, name, &r->r[i], err);
        r->n = (int)i + 1;
        if (rc != IA_OK) goto fail;
        for (int k = 0; k < (int)i; k++)
            if (!strcmp(r->r[k].name, r->r[i].name)) {
                ia_error_set(err, IA_ERR_FORMAT, "%s: rule %zu: name \"%s\" is used twice", name, i + 1, r->r[i].name);
                goto fail;
            }
    }
    /* The hash covers the rules' meaning, not the file's whitespace: resuming a run after
       reformatting its rules file is fine, changing a pattern is not. */
    char *canon = json_dumps(arr, JSON_COMPACT | JSON_SORT_KEYS);
    if (canon) {
        ia_client_sha256_hex(canon, strlen(canon), r->hash);
        free(canon);
    }
    json_decref(root);
    return r;
fail:
    json_decref(root);
    ia_rules_free(r);
    return NULL;
}

ia_rules *ia_rules_load(const char *path, ia_error *err) {
    size_t len;
    char *data = ia_file_read(path, &len, err);
    if (!data) return NULL;
    ia_rules *r = ia_rules_parse(data, len, path, err);
    ia_free(data);
    return r;
}

static bool is_word_byte(unsigned char c) { return isalnum(c) || c == '_' || c >= 0x80; }

/* Counts non-overlapping matches of rule x in text (stops early at `need`); *first receives the
 * offset and length of the first match. */
static int count_matches(const rule *x, const char *text, int need, size_t *first_off, size_t *first_len) {
    int count = 0;
    size_t n = strlen(text);
    if (x->re) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(x->re, NULL);
        if (!md) return 0;
        PCRE2_SIZE off = 0;
        while (off <= n && count < need) {
            int rc = pcre2_match(x->re, (PCRE2_SPTR)text, n, off, 0, md, NULL);
            if (rc < 0) break;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            if (count == 0) {
                *first_off = ov[0];
                *first_len = ov[1] - ov[0];
            }
            count++;
            off = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
        }
        pcre2_match_data_free(md);
        return count;
    }
    char *hay = ia_strdup(text);
    if (!hay) return 0;
    if (!x->case_sensitive) lower_ascii(hay);
    for (int k = 0; k < x->n_keywords && count < need; k++) {
        const char *kw = x->keywords[k];
        size_t kl = strlen(kw);
        const char *p = hay;
        while (count < need && (p = strstr(p, kw)) != NULL) {
            size_t at = (size_t)(p - hay);
            bool ok = true;
            if (x->whole_word) {
                if (at > 0 && is_word_byte((unsigned char)hay[at - 1]) && is_word_byte((unsigned char)kw[0])) ok = false;
                if (at + kl < n && is_word_byte((unsigned char)hay[at + kl]) && is_word_byte((unsigned char)kw[kl - 1]))
                    ok = false;
            }
            if (ok) {
                if (count == 0) {
                    *first_off = at;
                    *first_len = kl;
                }
                count++;
                p += kl;
            } else {
                p++;
            }
        }
    }
    ia_free(hay);
    return count;
}

/* Appends a quoted, single-line excerpt of s[off, off+len) to b. */
static void quote_excerpt(ia_buf *b, const char *s, size_t off, size_t len) {
    if (len > 60) len = 60;
    ia_buf_puts(b, "'");
    for (size_t i = 0; i < len; i++) {
        char c = s[off + i];
        ia_buf_append(b, c == '\n' || c == '\r' || c == '\t' ? " " : &c, 1);
    }
    ia_buf_puts(b, "'");
}

int ia_rules_judge(const ia_rules *r, const char *prompt, const char *answer, ia_verdict *out, ia_error *err) {
    memset(out, 0, sizeof *out);
    out->usable = true;
    if (!r) return ia_error_set(err, IA_ERR_ARG, "rules judge: no rules");
    out->rules = ia_calloc((size_t)r->n, sizeof(int));
    ia_buf reason = {0};
    for (int i = 0; i < r->n; i++) {
        const rule *x = &r->r[i];
        int hits = 0;
        size_t off = 0, len = 0, poff = 0, plen = 0;
        const char *where = "answer", *src = answer ? answer : "";
        if (x->field != FIELD_PROMPT) hits = count_matches(x, src, x->min_matches, &off, &len);
        if (x->field != FIELD_ANSWER && prompt && hits < x->min_matches) {
            int ph = count_matches(x, prompt, x->min_matches - hits, &poff, &plen);
            if (ph > 0 && hits == 0) {
                where = "prompt";
                src = prompt;
                off = poff;
                len = plen;
            }
            hits += ph;
        }
        if (hits < x->min_matches) continue;
        out->rules[out->n_rules++] = i;
        if (!out->flagged) {
            out->flagged = true;
            out->principle = ia_strdup(x->name);
            out->constitution = ia_strdup(x->constitution);
        }
        if (reason.len) ia_buf_puts(&reason, "; ");
        ia_buf_printf(&reason, "%s: %s matched ", x->name, where);
        quote_excerpt(&reason, src, off, len);
        if (x->min_matches > 1) ia_buf_printf(&reason, " (%d+ times)", x->min_matches);
    }
    if (reason.len) out->reason = ia_buf_take(&reason);
    ia_buf_free(&reason);
    return IA_OK;
}

void ia_verdict_clear(ia_verdict *v) {
    if (!v) return;
    ia_free(v->principle);
    ia_free(v->reason);
    ia_free(v->constitution);
    ia_free(v->rules);
    memset(v, 0, sizeof *v);
}

void ia_verdict_combine(const ia_verdict *const *vs, int n, ia_judge_combine mode, ia_verdict *out) {
    memset(out, 0, sizeof *out);
    int usable = 0, flagged = 0;
    const ia_verdict *first_flag = NULL, *first_usable = NULL;
    for (int i = 0; i < n; i++) {
        const ia_verdict *v = vs[i];
        if (!v || !v->usable) continue;
        usable++;
        if (!first_usable) first_usable = v;
        if (v->flagged) {
            flagged++;
            if (!first_flag) first_flag = v;
        }
    }
    out->usable = usable > 0;
    out->flagged = usable > 0 && (mode == IA_COMBINE_ALL ? flagged == usable : flagged > 0);
    const ia_verdict *src = out->flagged ? first_flag : first_usable;
    if (!src) return;
    if (src->principle) out->principle = ia_strdup(src->principle);
    if (src->reason) out->reason = ia_strdup(src->reason);
    if (src->constitution) out->constitution = ia_strdup(src->constitution);
    if (src->n_rules) {
        out->rules = ia_calloc((size_t)src->n_rules, sizeof(int));
        memcpy(out->rules, src->rules, sizeof(int) * (size_t)src->n_rules);
        out->n_rules = src->n_rules;
    }
}
