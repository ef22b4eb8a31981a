/* snapshot.c — reads an alignment run folder (its run store and training logs) into the report's
 * JSON snapshot; every section is read on its own, so a store from an older or newer schema still
 * gives a report, with a note for each section it could not read. */
#include "report/report.h"
#include "store/store.h"
#include "util/util.h"

#include <math.h>
#include <sys/stat.h>

#define MAX_SOURCES 20
#define MAX_EXAMPLES 6

static void note(json_t *snap, const char *fmt, ...) IA_PRINTF(2, 3);
static void note(json_t *snap, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    json_array_append_new(json_object_get(snap, "notes"), json_string(buf));
}

/* A column as JSON: integers, reals, text (invalid UTF-8 replaced) or null. */
static json_t *col_json(sqlite3_stmt *st, int i) {
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER: return json_integer(sqlite3_column_int64(st, i));
    case SQLITE_FLOAT: return json_real(sqlite3_column_double(st, i));
    case SQLITE_NULL: return json_null();
    default: {
        const char *t = (const char *)sqlite3_column_text(st, i);
        json_t *j = json_string(t ? t : "");
        return j ? j : json_string("(not UTF-8)");
    }
    }
}

/* Runs a query and returns its rows as objects keyed by column name (NULL and a note on failure). */
static json_t *rows(ia_store *s, json_t *snap, const char *what, const char *sql) {
    ia_error err = {0};
    ia_store_lock(s);
    sqlite3_stmt *st = ia_store_prepare(s, &err, sql, "");
    if (!st) {
        ia_store_unlock(s);
        note(snap, "%s: not read (%s)", what, err.msg);
        return NULL;
    }
    json_t *arr = json_array();
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_object();
        for (int i = 0; i < sqlite3_column_count(st); i++) json_object_set_new(o, sqlite3_column_name(st, i), col_json(st, i));
        json_array_append_new(arr, o);
    }
    if (rc != SQLITE_DONE) note(snap, "%s: read stopped: %s", what, sqlite3_errmsg(ia_store_db(s)));
    sqlite3_finalize(st);
    ia_store_unlock(s);
    return arr;
}

static void read_meta(ia_store *s, json_t *snap) {
    json_t *r = rows(s, snap, "meta", "SELECT key, value FROM meta ORDER BY key");
    json_t *meta = json_object();
    size_t i;
    json_t *o;
    json_array_foreach(r, i, o) {
        const char *k = json_string_value(json_object_get(o, "key"));
        const char *v = json_string_value(json_object_get(o, "value"));
        if (!k || !v) continue;
        if (!strcmp(k, "config")) {
            json_t *c = json_loads(v, 0, NULL);
            if (c) { json_object_set_new(snap, "config", c); continue; }
        }
        if (strlen(v) > 400) continue; /* long blobs (rules files) stay in the store */
        json_object_set_new(meta, k, json_string(v));
    }
    json_decref(r);
    json_object_set_new(snap, "meta", meta);
}

static void read_batches(ia_store *s, json_t *snap) {
    json_t *r = rows(s, snap, "batches",
                     "SELECT batch, n_prompts, n_flagged, n_unusable, n_revised, n_passed, n_trained, trained_round, "
                     "adapter_round FROM batches ORDER BY batch");
    if (!r) r = json_array();
    size_t i;
    json_t *o;
    json_array_foreach(r, i, o) {
        json_t *np = json_object_get(o, "n_prompts"), *nf = json_object_get(o, "n_flagged");
        if (json_is_integer(nf) && json_integer_value(np) > 0)
            json_object_set_new(o, "flag_rate", json_real((double)json_integer_value(nf) / (double)json_integer_value(np)));
        else
            json_object_set_new(o, "flag_rate", json_null());
    }
    json_object_set_new(snap, "batches", r);
}

static void read_constitutions(ia_store *s, json_t *snap) {
    json_t *r = rows(s, snap, "constitutions",
                     "SELECT id, text, source, first_batch, merged_into, n_merged FROM constitutions ORDER BY first_batch, id");
    if (!r) r = json_array();
    size_t i;
    json_t *o;
    json_array_foreach(r, i, o) {
        char sql[640];
        json_int_t id = json_integer_value(json_object_get(o, "id"));
        /* The answers that led to it: the flagged answer, its prompt and the judge's reason. */
        snprintf(sql, sizeof sql,
                 "SELECT cs.batch AS batch, cs.prompt_idx AS prompt_idx, p.text AS prompt, a.text AS answer, "
                 "v.reason AS reason, cs.proposed AS proposed FROM constitution_sources cs "
                 "LEFT JOIN prompts p ON p.split = 'train' AND p.idx = cs.prompt_idx "
                 "LEFT JOIN answers a ON a.batch = cs.batch AND a.prompt_idx = cs.prompt_idx "
                 "LEFT JOIN verdicts v ON v.subject = 'answer' AND v.batch = cs.batch AND v.idx = cs.prompt_idx "
                 "AND v.cand = 0 AND v.judge = 'combined' "
                 "WHERE cs.constitution_id = %lld ORDER BY cs.batch, cs.prompt_idx", (long long)id);
        json_t *src = rows(s, snap, "constitution sources", sql);
        if (!src) src = json_array();
        json_object_set_new(o, "n_sources", json_integer((json_int_t)json_array_size(src)));
        while (json_array_size(src) > MAX_SOURCES) json_array_remove(src, json_array_size(src) - 1);
        json_object_set_new(o, "sources", src);
    }
    json_object_set_new(snap, "constitutions", r);
}

/* DIR/train/round-NNN.log.jsonl: one {"step", "loss", ...} per optimizer step. */
static json_t *read_losses(const char *dir, int round) {
    char path[4096];
    snprintf(path, sizeof path, "%s/train/round-%03d.log.jsonl", dir, round);
    size_t len;
    char *data = ia_file_read(path, &len, NULL);
    json_t *arr = json_array();
    if (!data) return arr;
    char *p = data, *end = data + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        json_t *o = json_loadb(p, (size_t)(le - p), 0, NULL);
        json_t *st = json_object_get(o, "step"), *lo = json_object_get(o, "loss");
        if (json_is_number(st) && json_is_number(lo))
            json_array_append_new(arr, json_pack("{s:O, s:O}", "step", st, "loss", lo));
        json_decref(o);
        p = nl ? nl + 1 : end;
    }
    ia_free(data);
    return arr;
}

static void read_rounds(ia_store *s, const char *dir, json_t *snap) {
    json_t *r = rows(s, snap, "checkpoints",
                     "SELECT round, batch, kind, n_examples, steps, first_loss, final_loss, seconds FROM checkpoints ORDER BY round");
    if (!r) r = json_array();
    size_t i;
    json_t *o;
    json_array_foreach(r, i, o)
        json_object_set_new(o, "losses", read_losses(dir, (int)json_integer_value(json_object_get(o, "round"))));
    json_object_set_new(snap, "rounds", r);
}

static bool is_loop_metric(const char *phase) { return !strcmp(phase, "redteam") || !strcmp(phase, "revise"); }

static void read_metrics(ia_store *s, json_t *snap) {
    json_t *r = rows(s, snap, "metrics", "SELECT name, phase, batch, value, n FROM metrics ORDER BY rowid");
    json_t *evals = json_array(), *loop = json_array();
    size_t i;
    json_t *o;
    json_array_foreach(r, i, o) {
        const char *ph = json_string_value(json_object_get(o, "phase"));
        json_array_append(ph && is_loop_metric(ph) ? loop : evals, o);
    }
    json_decref(r);
    json_object_set_new(snap, "evals", evals);
    json_object_set_new(snap, "loop_metrics", loop);
}

static void read_examples(ia_store *s, json_t *snap) {
    json_t *ex = json_object();
    char sql[1024];
    /* Held-out prompts before and after, the ones the alignment changed from flagged to passing first. */
    snprintf(sql, sizeof sql,
             "SELECT b.idx AS idx, p.text AS prompt, b.text AS before, a.text AS after, "
             "vb.flagged AS flagged_before, va.flagged AS flagged_after FROM eval_answers b "
             "JOIN eval_answers a ON a.phase = 'after' AND a.idx = b.idx AND a.sample = b.sample "
             "LEFT JOIN prompts p ON p.split = 'heldout' AND p.idx = b.idx "
             "LEFT JOIN verdicts vb ON vb.subject = 'eval_before' AND vb.idx = b.idx AND vb.cand = b.sample AND vb.judge = 'combined' "
             "LEFT JOIN verdicts va ON va.subject = 'eval_after' AND va.idx = b.idx AND va.cand = b.sample AND va.judge = 'combined' "
             "WHERE b.phase = 'before' AND b.sample = 0 "
             "ORDER BY (coalesce(vb.flagged, 0) = 1 AND coalesce(va.flagged, 0) = 0) DESC, b.idx LIMIT %d",
             MAX_EXAMPLES);
    json_t *h = rows(s, snap, "held-out examples", sql);
    json_object_set_new(ex, "heldout", h ? h : json_array());
    snprintf(sql, sizeof sql,
             "SELECT r.batch AS batch, r.prompt_idx AS prompt_idx, p.text AS prompt, a.text AS answer, r.text AS revision, "
             "v.reason AS reason FROM revisions r "
             "LEFT JOIN prompts p ON p.split = 'train' AND p.idx = r.prompt_idx "
             "LEFT JOIN answers a ON a.batch = r.batch AND a.prompt_idx = r.prompt_idx "
             "LEFT JOIN verdicts v ON v.subject = 'answer' AND v.batch = r.batch AND v.idx = r.prompt_idx AND v.cand = 0 "
             "AND v.judge = 'combined' WHERE r.chosen = 1 ORDER BY r.batch, r.prompt_idx LIMIT %d",
             MAX_EXAMPLES);
    json_t *rv = rows(s, snap, "revision examples", sql);
    json_object_set_new(ex, "revisions", rv ? rv : json_array());
    json_object_set_new(snap, "examples", ex);
}

json_t *ia_report_snapshot(const char *run_dir, ia_error *err) {
    char path[4096];
    struct stat stt;
    snprintf(path, sizeof path, "%s/run.db", run_dir);
    if (stat(path, &stt) != 0) {
        /* No store: a snapshot exported earlier (or written by another tool) will do. */
        snprintf(path, sizeof path, "%s/snapshot.json", run_dir);
        if (stat(path, &stt) != 0) {
            ia_error_set(err, IA_ERR_IO, "%s: no run here (neither run.db nor snapshot.json)", run_dir);
            return NULL;
        }
        json_error_t je;
        json_t *snap = json_load_file(path, 0, &je);
        if (!snap) { ia_error_set(err, IA_ERR_FORMAT, "%s:%d:%d: malformed JSON: %s", path, je.line, je.column, je.text); return NULL; }
        const char *fmt = json_string_value(json_object_get(snap, "format"));
        if (!fmt || strcmp(fmt, "iteralign-run-snapshot/1")) {
            json_decref(snap);
            ia_error_set(err, IA_ERR_FORMAT, "%s: \"format\" is not \"iteralign-run-snapshot/1\"", path);
            return NULL;
        }
        if (!json_is_array(json_object_get(snap, "notes"))) json_object_set_new(snap, "notes", json_array());
        if (!json_is_string(json_object_get(snap, "run_dir"))) json_object_set_new(snap, "run_dir", json_string(run_dir));
        return snap;
    }
    ia_store *s = ia_store_open(path, false, err);
    if (!s) return NULL;
    json_t *snap = json_object();
    json_object_set_new(snap, "format", json_string("iteralign-run-snapshot/1"));
    json_object_set_new(snap, "run_dir", json_string(run_dir));
    json_object_set_new(snap, "notes", json_array());
    read_meta(s, snap);
    read_batches(s, snap);
    read_constitutions(s, snap);
    read_rounds(s, run_dir, snap);
    read_metrics(s, snap);
    read_examples(s, snap);
    ia_store_close(s);
    return snap;
}
