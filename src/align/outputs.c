/* outputs.c — what a run shows: the files derived from the store (constitutions.json/.md, the
 * training data as JSONL in messages and FastChat forms) and the status / constitutions summaries
 * behind `iteralign status` and `iteralign constitutions`. Batches are numbered from 1 here, as in
 * the log lines. */
#include "align/align_internal.h"

#include <stdlib.h>
#include <unistd.h>

static char *path_join(const char *dir, const char *name) {
    ia_buf b = {0};
    ia_buf_printf(&b, "%s/%s", dir, name);
    return ia_buf_take(&b);
}

static json_t *col_json(sqlite3_stmt *q, int i) {
    switch (sqlite3_column_type(q, i)) {
    case SQLITE_NULL: return json_null();
    case SQLITE_INTEGER: return json_integer(sqlite3_column_int64(q, i));
    case SQLITE_FLOAT: return json_real(sqlite3_column_double(q, i));
    default: return json_stringn((const char *)sqlite3_column_text(q, i), (size_t)sqlite3_column_bytes(q, i));
    }
}

/* The registry as JSON, from an open store. */
static json_t *constitutions_json(ia_store *s) {
    json_t *arr = json_array();
    ia_store_lock(s);
    sqlite3_stmt *q = ia_store_prepare(s, NULL,
                                       "SELECT id, text, source, first_batch, n_merged FROM constitutions"
                                       " WHERE merged_into IS NULL ORDER BY id",
                                       "");
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(q, 0);
        json_t *c = json_pack("{s:I,s:o,s:o,s:I}", "id", (json_int_t)id, "text", col_json(q, 1), "source", col_json(q, 2),
                              "first_batch", (json_int_t)sqlite3_column_int64(q, 3) + 1);
        json_t *srcs = json_array(), *merged = json_array();
        sqlite3_stmt *p = ia_store_prepare(s, NULL,
                                           "SELECT cs.batch, cs.prompt_idx, pr.text, a.text, v.reason FROM constitution_sources cs"
                                           " LEFT JOIN prompts pr ON pr.split='train' AND pr.idx=cs.prompt_idx"
                                           " LEFT JOIN answers a ON a.batch=cs.batch AND a.prompt_idx=cs.prompt_idx"
                                           " LEFT JOIN verdicts v ON v.subject='answer' AND v.batch=cs.batch AND v.idx=cs.prompt_idx"
                                           "   AND v.judge='combined'"
                                           " WHERE cs.constitution_id=? ORDER BY cs.batch, cs.prompt_idx",
                                           "I", id);
        while (p && sqlite3_step(p) == SQLITE_ROW)
            json_array_append_new(srcs, json_pack("{s:I,s:I,s:o,s:o,s:o}", "batch", (json_int_t)sqlite3_column_int64(p, 0) + 1,
                                                  "prompt_index", (json_int_t)sqlite3_column_int64(p, 1), "prompt", col_json(p, 2),
                                                  "answer", col_json(p, 3), "why_flagged", col_json(p, 4)));
        sqlite3_finalize(p);
        p = ia_store_prepare(s, NULL, "SELECT id, text, first_batch FROM constitutions WHERE merged_into=? ORDER BY id", "I", id);
        while (p && sqlite3_step(p) == SQLITE_ROW)
            json_array_append_new(merged, json_pack("{s:I,s:o,s:I}", "id", (json_int_t)sqlite3_column_int64(p, 0), "text",
                                                    col_json(p, 1), "batch", (json_int_t)sqlite3_column_int64(p, 2) + 1));
        sqlite3_finalize(p);
        json_object_set_new(c, "n_flagged_answers", json_integer((json_int_t)json_array_size(srcs)));
        json_object_set_new(c, "merged_near_duplicates", merged);
        json_object_set_new(c, "sources", srcs);
        json_array_append_new(arr, c);
    }
    sqlite3_finalize(q);
    ia_store_unlock(s);
    return json_pack("{s:o}", "constitutions", arr);
}

/* One line of text for Markdown: newlines folded, long text cut. */
static void md_line(ia_buf *b, const char *s, size_t max) {
    size_t n = 0;
    for (const char *p = s ? s : ""; *p && n < max; p++, n++) ia_buf_append(b, *p == '\n' || *p == '\r' ? " " : p, 1);
    if (s && strlen(s) > max) ia_buf_puts(b, "…");
}

static char *constitutions_md(json_t *cj, const char *dir) {
    ia_buf b = {0};
    json_t *arr = json_object_get(cj, "constitutions");
    ia_buf_printf(&b, "# Constitutions of the run in `%s`\n\n%zu constitution%s.\n", dir, json_array_size(arr),
                  json_array_size(arr) == 1 ? "" : "s");
    size_t i;
    json_t *c;
    json_array_foreach(arr, i, c) {
        const char *src = json_string_value(json_object_get(c, "source"));
        ia_buf_printf(&b, "\n## %zu. ", i + 1);
        md_line(&b, json_string_value(json_object_get(c, "text")), 2000);
        ia_buf_puts(&b, "\n\n");
        if (src && !strncmp(src, "rules:", 6)) ia_buf_printf(&b, "- source: the rules judge's detector `%s`\n", src + 6);
        else ia_buf_puts(&b, "- source: proposed by the teacher\n");
        ia_buf_printf(&b, "- first found in batch %lld; produced by %lld flagged answer%s\n",
                      (long long)json_integer_value(json_object_get(c, "first_batch")),
                      (long long)json_integer_value(json_object_get(c, "n_flagged_answers")),
                      json_integer_value(json_object_get(c, "n_flagged_answers")) == 1 ? "" : "s");
        json_t *merged = json_object_get(c, "merged_near_duplicates");
        size_t k;
        json_t *m;
        json_array_foreach(merged, k, m) {
            ia_buf_printf(&b, "- merged near-duplicate (batch %lld): ", (long long)json_integer_value(json_object_get(m, "batch")));
            md_line(&b, json_string_value(json_object_get(m, "text")), 300);
            ia_buf_puts(&b, "\n");
        }
        json_t *srcs = json_object_get(c, "sources");
        json_array_foreach(srcs, k, m) {
            if (k >= 3) {
                ia_buf_printf(&b, "- … and %zu more (constitutions.json lists all)\n", json_array_size(srcs) - 3);
                break;
            }
            ia_buf_printf(&b, "- example (batch %lld): prompt \"", (long long)json_integer_value(json_object_get(m, "batch")));
            md_line(&b, json_string_value(json_object_get(m, "prompt")), 160);
            ia_buf_puts(&b, "\" → answer \"");
            md_line(&b, json_string_value(json_object_get(m, "answer")), 240);
            ia_buf_puts(&b, "\"");
            const char *why = json_string_value(json_object_get(m, "why_flagged"));
            if (why) {
                ia_buf_puts(&b, " (");
                md_line(&b, why, 200);
                ia_buf_puts(&b, ")");
            }
            ia_buf_puts(&b, "\n");
        }
    }
    return ia_buf_take(&b);
}

static int write_json_file(const char *path, json_t *v, ia_error *err) {
    char *s = json_dumps(v, JSON_INDENT(2));
    if (!s) return ia_error_set(err, IA_ERR_NOMEM, "out of memory");
    size_t n = strlen(s);
    char *t = ia_malloc(n + 2);
    memcpy(t, s, n);
    t[n] = '\n';
    free(s);
    int rc = ia_write_file_atomic(path, t, n + 1, err);
    ia_free(t);
    return rc;
}

int ia_align_write_outputs(ia_store *s, const char *dir, ia_error *err) {
    json_t *cj = constitutions_json(s);
    char *p = path_join(dir, "constitutions.json");
    int rc = write_json_file(p, cj, err);
    ia_free(p);
    if (rc == IA_OK) {
        char *md = constitutions_md(cj, dir);
        p = path_join(dir, "constitutions.md");
        rc = ia_write_file_atomic(p, md, strlen(md), err);
        ia_free(p);
        ia_free(md);
    }
    json_decref(cj);
    if (rc != IA_OK) return rc;
    /* the training data of every round: messages form and FastChat's conversations form */
    ia_buf msgs = {0}, fc = {0};
    ia_store_lock(s);
    sqlite3_stmt *q = ia_store_prepare(s, err, "SELECT batch, prompt_idx, round, messages FROM train_examples ORDER BY batch, prompt_idx", "");
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        json_t *m = json_loads((const char *)sqlite3_column_text(q, 3), 0, NULL);
        if (!json_is_array(m)) {
            json_decref(m);
            continue;
        }
        char id[64];
        snprintf(id, sizeof id, "batch%d-prompt%d", sqlite3_column_int(q, 0) + 1, sqlite3_column_int(q, 1));
        json_t *o = json_pack("{s:s,s:i,s:O}", "id", id, "round", sqlite3_column_int(q, 2), "messages", m);
        char *line = json_dumps(o, JSON_COMPACT);
        ia_buf_printf(&msgs, "%s\n", line);
        free(line);
        json_decref(o);
        json_t *conv = json_array();
        size_t i;
        json_t *e;
        json_array_foreach(m, i, e) {
            const char *role = json_string_value(json_object_get(e, "role"));
            const char *from = !strcmp(role, "user") ? "human" : !strcmp(role, "assistant") ? "gpt" : "system";
            json_array_append_new(conv, json_pack("{s:s,s:O}", "from", from, "value", json_object_get(e, "content")));
        }
        o = json_pack("{s:s,s:o}", "id", id, "conversations", conv);
        line = json_dumps(o, JSON_COMPACT);
        ia_buf_printf(&fc, "%s\n", line);
        free(line);
        json_decref(o);
        json_decref(m);
    }
    sqlite3_finalize(q);
    ia_store_unlock(s);
    p = path_join(dir, "train_data.messages.jsonl");
    rc = ia_write_file_atomic(p, msgs.data ? msgs.data : "", msgs.len, err);
    ia_free(p);
    if (rc == IA_OK) {
        p = path_join(dir, "train_data.fastchat.jsonl");
        rc = ia_write_file_atomic(p, fc.data ? fc.data : "", fc.len, err);
        ia_free(p);
    }
    ia_buf_free(&msgs);
    ia_buf_free(&fc);
    return rc;
}

/* ---- status ---- */
static ia_store *open_run(const char *dir, ia_error *err) {
    char *db = path_join(dir, "run.db");
    if (access(db, F_OK) != 0) {
        ia_error_set(err, IA_ERR_IO, "%s: no run here (no run.db)", dir);
        ia_free(db);
        return NULL;
    }
    ia_store *s = ia_store_open(db, false, err);
    ia_free(db);
    return s;
}

static int64_t q_i64(ia_store *s, const char *sql) {
    int64_t v = 0;
    ia_store_get_i64(s, NULL, &v, NULL, sql, "");
    return v;
}

static json_t *q_value(ia_store *s, const char *sql) {
    ia_store_lock(s);
    sqlite3_stmt *q = ia_store_prepare(s, NULL, sql, "");
    json_t *v = q && sqlite3_step(q) == SQLITE_ROW ? col_json(q, 0) : json_null();
    sqlite3_finalize(q);
    ia_store_unlock(s);
    return v;
}

static double q_double(ia_store *s, const char *sql) {
    json_t *v = q_value(s, sql);
    double d = json_number_value(v);
    json_decref(v);
    return d;
}

/* The next stage the loop will run, as the loop would find it. */
static char *next_stage(ia_store *s, const ia_align_config *c, int n_batches, bool eval) {
    ia_buf b = {0};
    char *state = ia_store_meta_get(s, "state", NULL);
    if (state && !strcmp(state, "done")) {
        ia_free(state);
        return ia_strdup("done");
    }
    ia_free(state);
    if (eval && !ia_store_stage_done(s, -1, "eval_before")) return ia_strdup("eval_before (held-out measurement before alignment)");
    bool tasks = c->eval && c->eval[0];
    if (tasks && !ia_store_stage_done(s, -1, "tasks_before")) return ia_strdup("tasks_before (evaluations before alignment)");
    static const char *stages[] = {"redteam", "judge", "propose", "revise", "rejudge", "train", NULL};
    for (int bt = 0; bt < n_batches; bt++) {
        int64_t skipped = 0;
        ia_store_get_i64(s, NULL, &skipped, NULL, "SELECT coalesce(skipped, 0) FROM batches WHERE batch=?", "i", bt);
        for (int k = 0; stages[k]; k++) {
            if (skipped && k >= 3) break;
            if (!ia_store_stage_done(s, bt, stages[k])) {
                ia_buf_printf(&b, "batch %d/%d: %s", bt + 1, n_batches, stages[k]);
                return ia_buf_take(&b);
            }
        }
    }
    if (eval && !ia_store_stage_done(s, -1, "eval_after")) return ia_strdup("eval_after (held-out measurement after alignment)");
    if (tasks && !ia_store_stage_done(s, -1, "tasks_after")) return ia_strdup("tasks_after (evaluations after alignment)");
    return ia_strdup("finalize");
}

json_t *ia_align_status(const char *dir, ia_error *err) {
    ia_store *s = open_run(dir, err);
    if (!s) return NULL;
    char *cfgs = ia_store_meta_get(s, "config", NULL);
    json_t *cfgj = cfgs ? json_loads(cfgs, 0, NULL) : json_object();
    ia_free(cfgs);
    ia_align_config c;
    ia_align_config_defaults(&c);
    ia_align_config_from_json(&c, cfgj, NULL);
    int64_t n_train = 0, n_held = 0;
    ia_store_get_i64(s, NULL, &n_train, NULL, "SELECT count(*) FROM prompts WHERE split='train'", "");
    ia_store_get_i64(s, NULL, &n_held, NULL, "SELECT count(*) FROM prompts WHERE split='heldout'", "");
    int n_batches = (int)((n_train + c.batch_size - 1) / (c.batch_size > 0 ? c.batch_size : 1));
    if (c.max_batches > 0 && n_batches > c.max_batches) n_batches = c.max_batches;
    char *state = ia_store_meta_get(s, "state", NULL);
    char *stopped = ia_store_meta_get(s, "stopped", NULL);
    char *stage = next_stage(s, &c, n_batches, c.measure && n_held > 0);
    json_t *st = json_object();
    json_object_set_new(st, "run", json_string(dir));
    json_object_set_new(st, "state", json_string(state ? state : "unknown"));
    json_object_set_new(st, "next_stage", json_string(stage));
    if (stopped) json_object_set_new(st, "stopped_early", json_string(stopped));
    json_object_set_new(st, "preset", json_string(c.preset ? c.preset : ""));
    json_object_set_new(st, "prompts", json_pack("{s:I,s:I}", "redteam", (json_int_t)n_train, "heldout", (json_int_t)n_held));
    json_object_set_new(
        st, "batches",
        json_pack("{s:i,s:I,s:I,s:I}", "total", n_batches, "judged", (json_int_t)q_i64(s, "SELECT count(*) FROM batches WHERE n_flagged IS NOT NULL"),
                  "skipped", (json_int_t)q_i64(s, "SELECT count(*) FROM batches WHERE skipped=1"), "trained",
                  (json_int_t)q_i64(s, "SELECT count(*) FROM batches WHERE trained_round > 0")));
    json_t *counts = json_object();
    json_object_set_new(counts, "answers", json_integer(q_i64(s, "SELECT count(*) FROM answers")));
    json_object_set_new(counts, "flagged", json_integer(q_i64(s, "SELECT count(*) FROM verdicts WHERE subject='answer' AND judge='combined' AND flagged=1")));
    json_object_set_new(counts, "unusable_verdicts", json_integer(q_i64(s, "SELECT count(*) FROM verdicts WHERE judge='llm' AND usable=0")));
    json_object_set_new(counts, "constitutions", json_integer(q_i64(s, "SELECT count(*) FROM constitutions WHERE merged_into IS NULL")));
    json_object_set_new(counts, "constitutions_merged", json_integer(q_i64(s, "SELECT count(*) FROM constitutions WHERE merged_into IS NOT NULL")));
    json_object_set_new(counts, "revisions", json_integer(q_i64(s, "SELECT count(*) FROM revisions")));
    json_object_set_new(counts, "revisions_chosen", json_integer(q_i64(s, "SELECT count(*) FROM revisions WHERE chosen=1")));
    json_object_set_new(counts, "train_examples", json_integer(q_i64(s, "SELECT count(*) FROM train_examples WHERE round > 0")));
    json_object_set_new(counts, "rounds", json_integer(q_i64(s, "SELECT count(*) FROM checkpoints")));
    json_object_set_new(
        counts, "teacher_calls",
        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "total", (json_int_t)q_i64(s, "SELECT count(*) FROM teacher_calls WHERE role!='cache'"),
                  "ok", (json_int_t)q_i64(s, "SELECT count(*) FROM teacher_calls WHERE status='ok'"), "unusable",
                  (json_int_t)q_i64(s, "SELECT count(*) FROM teacher_calls WHERE status='unusable'"), "failed",
                  (json_int_t)q_i64(s, "SELECT count(*) FROM teacher_calls WHERE status='failed'"), "in_flight_at_a_crash",
                  (json_int_t)q_i64(s, "SELECT count(*) FROM teacher_calls WHERE status='sent'"), "resent_after_a_crash",
                  (json_int_t)q_i64(s, "SELECT coalesce(sum(resends), 0) FROM teacher_calls"), "prompt_tokens",
                  (json_int_t)q_i64(s, "SELECT coalesce(sum(prompt_tokens), 0) FROM teacher_calls"), "completion_tokens",
                  (json_int_t)q_i64(s, "SELECT coalesce(sum(completion_tokens), 0) FROM teacher_calls"), "latency_s",
                  q_double(s, "SELECT coalesce(sum(latency_s), 0.0) FROM teacher_calls")));
    json_object_set_new(st, "counts", counts);
    /* rates: held-out violation before/after, red-team flag rate per batch, revision pass rate */
    json_t *rates = json_object();
    json_t *vr = json_object();
    for (int ph = 0; ph < 2; ph++) {
        const char *phase = ph ? "after" : "before";
        ia_store_lock(s);
        sqlite3_stmt *q = ia_store_prepare(s, NULL,
                                           "SELECT v.value, v.n, (SELECT value FROM metrics WHERE name='violations' AND phase=v.phase)"
                                           " FROM metrics v WHERE v.name='violation_rate' AND v.phase=?",
                                           "s", phase);
        if (q && sqlite3_step(q) == SQLITE_ROW)
            json_object_set_new(vr, phase, json_pack("{s:f,s:I,s:I}", "rate", sqlite3_column_double(q, 0), "violations",
                                                     (json_int_t)sqlite3_column_double(q, 2), "answers", (json_int_t)sqlite3_column_int64(q, 1)));
        else json_object_set_new(vr, phase, json_null());
        sqlite3_finalize(q);
        ia_store_unlock(s);
    }
    json_object_set_new(vr, "heldout_prompts", json_integer(n_held));
    json_object_set_new(vr, "samples_per_prompt", json_integer(c.measure_samples));
    json_object_set_new(rates, "heldout_violation_rate", vr);
    json_t *per = json_array();
    ia_store_lock(s);
    sqlite3_stmt *q = ia_store_prepare(s, NULL,
                                       "SELECT batch, n_prompts, n_flagged, n_unusable, n_revised, n_passed, n_trained, trained_round, skipped,"
                                       " adapter_round FROM batches ORDER BY batch",
                                       "");
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        json_t *o = json_pack("{s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:b,s:o}", "batch", (json_int_t)sqlite3_column_int64(q, 0) + 1, "prompts",
                              col_json(q, 1), "flagged", col_json(q, 2), "unusable", col_json(q, 3), "revised", col_json(q, 4),
                              "passed", col_json(q, 5), "trained", col_json(q, 6), "round", col_json(q, 7), "skipped",
                              sqlite3_column_int(q, 8) == 1, "model_round", col_json(q, 9));
        if (sqlite3_column_type(q, 2) != SQLITE_NULL && sqlite3_column_int(q, 1) > 0)
            json_object_set_new(o, "flag_rate", json_real((double)sqlite3_column_int(q, 2) / sqlite3_column_int(q, 1)));
        json_array_append_new(per, o);
    }
    sqlite3_finalize(q);
    ia_store_unlock(s);
    json_object_set_new(rates, "redteam_batches", per);
    json_object_set_new(rates, "revision_pass_rate",
                        q_value(s, "SELECT CASE WHEN sum(n) > 0 THEN sum(value * n) / sum(n) END FROM metrics"
                                   " WHERE name='revision_pass_rate'"));
    json_object_set_new(rates, "teacher_unusable_rate",
                        q_value(s, "SELECT CASE WHEN count(*) > 0 THEN avg(status IN ('unusable', 'failed')) END FROM teacher_calls"
                                   " WHERE role!='cache' AND status!='sent'"));
    /* --eval tasks: "<task>/<metric>" before (round 0) and after (the last round) */
    json_t *tasks = json_object();
    ia_store_lock(s);
    q = ia_store_prepare(s, NULL,
                         "SELECT name, phase, value, n FROM metrics WHERE name LIKE '%/%' AND phase IN ('before', 'after')"
                         " ORDER BY name, phase, batch",
                         "");
    while (q && sqlite3_step(q) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(q, 0);
        json_t *e = json_object_get(tasks, name);
        if (!e) {
            e = json_object();
            json_object_set_new(tasks, name, e);
        }
        json_object_set_new(e, (const char *)sqlite3_column_text(q, 1), json_real(sqlite3_column_double(q, 2)));
        json_object_set_new(e, "n", json_integer(sqlite3_column_int(q, 3)));
    }
    sqlite3_finalize(q);
    ia_store_unlock(s);
    json_object_set_new(rates, "eval_tasks", tasks);
    json_t *fl = json_object();
    for (int ph = 0; ph < 2; ph++) {
        ia_store_lock(s);
        q = ia_store_prepare(s, NULL, "SELECT value FROM metrics WHERE name='base_nll_per_token' AND phase=?", "s", ph ? "after" : "before");
        json_object_set_new(fl, ph ? "after" : "before", q && sqlite3_step(q) == SQLITE_ROW ? json_real(sqlite3_column_double(q, 0)) : json_null());
        sqlite3_finalize(q);
        ia_store_unlock(s);
    }
    json_object_set_new(rates, "heldout_base_nll_per_token", fl);
    json_object_set_new(st, "rates", rates);
    json_t *cps = json_array();
    ia_store_lock(s);
    q = ia_store_prepare(s, NULL, "SELECT round, batch, kind, path, sha256, n_examples, steps, first_loss, final_loss, seconds FROM checkpoints ORDER BY round", "");
    while (q && sqlite3_step(q) == SQLITE_ROW)
        json_array_append_new(cps, json_pack("{s:o,s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "round", col_json(q, 0), "batch",
                                             (json_int_t)sqlite3_column_int64(q, 1) + 1, "kind", col_json(q, 2), "path", col_json(q, 3),
                                             "sha256", col_json(q, 4), "examples", col_json(q, 5), "steps", col_json(q, 6),
                                             "first_loss", col_json(q, 7), "final_loss", col_json(q, 8), "seconds", col_json(q, 9)));
    sqlite3_finalize(q);
    ia_store_unlock(s);
    json_object_set_new(st, "checkpoints", cps);
    char *final = path_join(dir, "final.gguf");
    json_object_set_new(st, "final_model", access(final, F_OK) == 0 ? json_string(final) : json_null());
    ia_free(final);
    json_object_set_new(st, "config", cfgj);
    ia_free(state);
    ia_free(stopped);
    ia_free(stage);
    ia_align_config_free(&c);
    ia_store_close(s);
    return st;
}

json_t *ia_align_constitutions(const char *dir, ia_error *err) {
    ia_store *s = open_run(dir, err);
    if (!s) return NULL;
    json_t *cj = constitutions_json(s);
    ia_store_close(s);
    return cj;
}
