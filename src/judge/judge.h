/* judge.h — deciding whether an answer is flawed: the rules judge (named regex / keyword detectors
 * from a JSON file, each standing for a constitution), the LLM judge's prompts and reply parsing for
 * both presets (the released code's "Negative" substring test, and a structured JSON verdict), the
 * constitution-proposal prompts and parsing, and the combination of several judges' verdicts.
 *
 * This module builds messages and reads replies; sending them is the alignment loop's business
 * (src/align/teacher.c), so everything here is pure and testable offline. */
#ifndef IA_JUDGE_H
#define IA_JUDGE_H

#include "iteralign.h"

/* ---- verdicts ----------------------------------------------------------------------------- */
typedef struct ia_verdict {
    bool flagged;        /* the answer breaks a principle */
    bool usable;         /* false: the judge could not decide (an unusable teacher reply) */
    char *principle;     /* rule name, or the principle the LLM named (may be NULL) */
    char *reason;        /* one line: what matched / why (may be NULL) */
    char *constitution;  /* rules judge: the constitution text of the first rule that matched */
    int n_rules;         /* rules judge: how many rules matched */
    int *rules;          /* rules judge: indices of the rules that matched [n_rules] */
} ia_verdict;

void ia_verdict_clear(ia_verdict *v);

typedef enum ia_judge_combine {
    IA_COMBINE_ANY = 0,  /* flagged when any usable judge flags (the default: rules catch what a
                            pattern captures exactly, the LLM the rest) */
    IA_COMBINE_ALL,      /* flagged only when every usable judge flags */
} ia_judge_combine;

/* Combines verdicts (NULL entries are skipped). Unusable verdicts do not vote; the result is
 * unusable only when no verdict was usable. principle/reason/constitution come from the first
 * flagging verdict (or the first usable one). */
void ia_verdict_combine(const ia_verdict *const *vs, int n, ia_judge_combine mode, ia_verdict *out);

/* ---- the rules judge ---------------------------------------------------------------------- */
/* Rules file (JSON):
 *   {"rules": [
 *     {"name": "sadness",                       unique, required
 *      "regex": "\\b(sad|cried)\\b",            PCRE2 pattern, or:
 *      "keywords": ["sad", "cried"],            literal phrases (one of regex / keywords)
 *      "flags": "i",                            regex: i caseless, m multiline, s dotall, x extended
 *      "case_sensitive": false,                 keywords (default false)
 *      "whole_word": true,                      keywords: only at word boundaries (default true)
 *      "field": "answer",                       answer (default), prompt, or both
 *      "min_matches": 1,                        matches needed to flag (default 1)
 *      "constitution": "Characters ...",        the principle this detector stands for, required
 *      "description": "..."}                    optional
 *   ]}
 * A bare array of rule objects is accepted too. */
typedef struct ia_rules ia_rules;

ia_rules *ia_rules_load(const char *path, ia_error *err);
/* name is used in error messages (a file name). */
ia_rules *ia_rules_parse(const char *json, size_t len, const char *name, ia_error *err);
void ia_rules_free(ia_rules *r);
int ia_rules_count(const ia_rules *r);
const char *ia_rules_name(const ia_rules *r, int i);
const char *ia_rules_constitution(const ia_rules *r, int i);
/* SHA-256 (hex) of the rules' canonical JSON: two files with the same rules hash the same. */
const char *ia_rules_hash(const ia_rules *r);

/* Judges one answer (prompt may be NULL for rules that look at the answer only). Always usable.
 * Thread-safe. */
int ia_rules_judge(const ia_rules *r, const char *prompt, const char *answer, ia_verdict *out, ia_error *err);

/* ---- LLM judge and proposer prompts ------------------------------------------------------- */
typedef enum ia_judge_style {
    IA_STYLE_PAPER = 0,  /* the released code: answer only, free text, "Negative" substring */
    IA_STYLE_IMPROVED,   /* prompt and answer, a JSON verdict {flawed, principle, reason} */
} ia_judge_style;

/* A list of chat messages whose strings the list owns. */
#define IA_MSGS_MAX 16
typedef struct ia_msgs {
    int n;
    ia_chat_msg m[IA_MSGS_MAX];
    char *own[IA_MSGS_MAX];  /* content owned by the list (parallel to m) */
} ia_msgs;

void ia_msgs_clear(ia_msgs *ms);
/* Appends a message (content copied). */
int ia_msgs_add(ia_msgs *ms, const char *role, const char *content);

/* The judge request for one answer. principles: constitutions adopted so far (the improved judge
 * lists them so it can name one; may be NULL/0). */
int ia_judge_messages(ia_judge_style style, const char *prompt, const char *answer, const char *const *principles,
                      int n_principles, ia_msgs *out);
/* Reads a judge reply. Paper: flagged iff the reply contains "Negative" (usable unless empty).
 * Improved: the first JSON object (leniently extracted) with a boolean-ish "flawed" (also
 * "flagged", "violation", "harmful", or "verdict": "flawed"/"ok"); unusable when none is found. */
void ia_judge_parse(ia_judge_style style, const char *reply, ia_verdict *out);
/* JSON schema of the improved verdict (for response_format json_schema). */
const char *ia_judge_verdict_schema(void);

/* One flagged answer shown to the proposer. */
typedef struct ia_flagged {
    const char *prompt;
    const char *answer;
    const char *reason;  /* the judge's reason (may be NULL) */
} ia_flagged;

/* The proposal request. Paper: the flagged answers joined by a space, the released system message
 * and one few-shot example. Improved: numbered prompt/answer/reason triples and the registry so
 * far, asking for {"constitutions": [{"text", "answers": [numbers]}]}. */
int ia_propose_messages(ia_judge_style style, const ia_flagged *flagged, int n_flagged, const char *const *existing,
                        int n_existing, ia_msgs *out);

/* A proposed constitution and the (0-based) flagged answers it addresses. */
typedef struct ia_proposal {
    char *text;
    int n_answers;
    int *answers;        /* indices into the flagged list; n_answers == 0: all of them */
} ia_proposal;

/* Reads a proposal reply into *out (n entries; free with ia_proposals_free). Paper: the last
 * "\n\n"-separated paragraph, as the released code keeps it. Improved: the JSON list, or, when the
 * reply has no usable JSON, its bullet/numbered lines. Returns the count (0: nothing usable). */
int ia_propose_parse(ia_judge_style style, const char *reply, int n_flagged, ia_proposal **out);
void ia_proposals_free(ia_proposal *p, int n);

/* ---- near-duplicate detection (constitution registry) -------------------------------------- */
/* Jaccard similarity of the two texts' sets of lower-cased word tokens (stop words dropped). */
double ia_text_jaccard(const char *a, const char *b);

#endif /* IA_JUDGE_H */
