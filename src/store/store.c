/* store.c — the SQLite run store: schema (STRICT tables, WAL), statement helpers, meta, stage
 * marks, teacher-call records and the client cache hook backed by them. */
#include "store/store.h"
#include "util/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>

struct ia_store {
    sqlite3 *db;
    char *path;
    pthread_mutex_t mu; /* recursive: helpers lock too, and may run inside a transaction */
    int tx_depth;
};

/* Every table is STRICT so a type slip in the loop fails loudly instead of storing text in an
 * integer column. Every row of a stage has a natural key, so stages replay with INSERT OR IGNORE.
 * Columns holding wall-clock times (done_at, sent_at, finished_at, latency_s, seconds) are the only
 * ones that differ between an interrupted-and-resumed run and an uninterrupted one, together with
 * teacher_calls.resends/attempts. */
static const char *SCHEMA =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;"
    "CREATE TABLE progress(batch INTEGER NOT NULL, stage TEXT NOT NULL, detail TEXT, done_at REAL NOT NULL,"
    "  PRIMARY KEY(batch, stage)) STRICT;"
    /* split: 'train' (red-team pool) or 'heldout' (measured before/after, never trained on) */
    "CREATE TABLE prompts(split TEXT NOT NULL, idx INTEGER NOT NULL, source TEXT NOT NULL, line INTEGER NOT NULL,"
    "  text TEXT NOT NULL, messages TEXT, presented TEXT NOT NULL, PRIMARY KEY(split, idx)) STRICT;"
    "CREATE TABLE batches(batch INTEGER PRIMARY KEY, first_idx INTEGER NOT NULL, n_prompts INTEGER NOT NULL,"
    "  adapter_round INTEGER NOT NULL, n_flagged INTEGER, n_unusable INTEGER, n_revised INTEGER,"
    "  n_passed INTEGER, n_trained INTEGER, trained_round INTEGER, skipped INTEGER) STRICT;"
    "CREATE TABLE answers(batch INTEGER NOT NULL, prompt_idx INTEGER NOT NULL, text TEXT NOT NULL,"
    "  n_tokens INTEGER NOT NULL, finish TEXT NOT NULL, PRIMARY KEY(batch, prompt_idx)) STRICT;"
    /* subject: 'answer', 'revision', 'eval_before', 'eval_after'; judge: 'rules', 'llm' or
       'combined' (the verdict the loop acts on) */
    "CREATE TABLE verdicts(subject TEXT NOT NULL, batch INTEGER NOT NULL, idx INTEGER NOT NULL, cand INTEGER NOT NULL,"
    "  judge TEXT NOT NULL, flagged INTEGER NOT NULL, usable INTEGER NOT NULL, principle TEXT, reason TEXT,"
    "  call_key TEXT, PRIMARY KEY(subject, batch, idx, cand, judge)) STRICT;"
    "CREATE TABLE teacher_calls(call_key TEXT PRIMARY KEY, cache_key TEXT, role TEXT NOT NULL, endpoint TEXT NOT NULL,"
    "  model TEXT, request TEXT NOT NULL, reply TEXT, content TEXT, status TEXT NOT NULL, error TEXT,"
    "  http_status INTEGER, attempts INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER,"
    "  usage_missing INTEGER, latency_s REAL, resends INTEGER NOT NULL DEFAULT 0, sent_at REAL, finished_at REAL) STRICT;"
    "CREATE INDEX teacher_calls_cache ON teacher_calls(cache_key);"
    /* the registry: merged_into points at the entry a near-duplicate was folded into */
    "CREATE TABLE constitutions(id INTEGER PRIMARY KEY, text TEXT NOT NULL, source TEXT NOT NULL,"
    "  first_batch INTEGER NOT NULL, merged_into INTEGER, call_key TEXT, n_merged INTEGER NOT NULL DEFAULT 0) STRICT;"
    /* provenance: which flagged answers (batch, prompt_idx) produced or re-proposed a constitution,
       and the wording proposed that time */
    "CREATE TABLE constitution_sources(constitution_id INTEGER NOT NULL, batch INTEGER NOT NULL,"
    "  prompt_idx INTEGER NOT NULL, proposed TEXT NOT NULL, PRIMARY KEY(constitution_id, batch, prompt_idx)) STRICT;"
    /* which constitutions (in order) a flagged prompt is revised with */
    "CREATE TABLE revise_with(batch INTEGER NOT NULL, prompt_idx INTEGER NOT NULL, ord INTEGER NOT NULL,"
    "  constitution_id INTEGER NOT NULL, PRIMARY KEY(batch, prompt_idx, ord)) STRICT;"
    "CREATE TABLE revisions(batch INTEGER NOT NULL, prompt_idx INTEGER NOT NULL, cand INTEGER NOT NULL,"
    "  prompt TEXT NOT NULL, text TEXT NOT NULL, n_tokens INTEGER NOT NULL, finish TEXT NOT NULL,"
    "  chosen INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(batch, prompt_idx, cand)) STRICT;"
    "CREATE TABLE train_examples(batch INTEGER NOT NULL, prompt_idx INTEGER NOT NULL, cand INTEGER NOT NULL,"
    "  round INTEGER NOT NULL, prompt TEXT NOT NULL, completion TEXT NOT NULL, messages TEXT,"
    "  PRIMARY KEY(batch, prompt_idx)) STRICT;"
    "CREATE TABLE checkpoints(round INTEGER PRIMARY KEY, batch INTEGER NOT NULL, kind TEXT NOT NULL,"
    "  path TEXT NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL, init TEXT, n_examples INTEGER NOT NULL,"
    "  steps INTEGER, first_loss REAL, final_loss REAL, seconds REAL) STRICT;"
    "CREATE TABLE eval_answers(phase TEXT NOT NULL, idx INTEGER NOT NULL, sample INTEGER NOT NULL, text TEXT NOT NULL,"
    "  n_tokens INTEGER NOT NULL, finish TEXT NOT NULL, PRIMARY KEY(phase, idx, sample)) STRICT;"
    "CREATE TABLE metrics(name TEXT NOT NULL, phase TEXT NOT NULL, batch INTEGER NOT NULL, value REAL NOT NULL,"
    "  n INTEGER, PRIMARY KEY(name, phase, batch)) STRICT;";

static int db_fail(ia_store *s, ia_error *err, const char *what) {
    return ia_error_set(err, IA_ERR_DB, "%s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

const char *ia_store_path(const ia_store *s) { return s ? s->path : NULL; }
sqlite3 *ia_store_db(ia_store *s) { return s->db; }
void ia_store_lock(ia_store *s) { pthread_mutex_lock(&s->mu); }
void ia_store_unlock(ia_store *s) { pthread_mutex_unlock(&s->mu); }

static int exec_plain(ia_store *s, const char *sql, ia_error *err) {
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        ia_error_set(err, IA_ERR_DB, "%s: %s", s->path, msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return IA_ERR_DB;
    }
    return IA_OK;
}

ia_store *ia_store_open(const char *path, bool create, ia_error *err) {
    struct stat st;
    bool exists = stat(path, &st) == 0;
    if (!exists && !create) {
        ia_error_set(err, IA_ERR_IO, "%s: no run store here", path);
        return NULL;
    }
    ia_store *s = ia_calloc(1, sizeof *s);
    if (!s) {
        ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        return NULL;
    }
    s->path = ia_strdup(path);
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&s->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
        ia_error_set(err, IA_ERR_DB, "%s: cannot open: %s", path, s->db ? sqlite3_errmsg(s->db) : "out of memory");
        ia_store_close(s);
        return NULL;
    }
    sqlite3_busy_timeout(s->db, 10000);
    /* WAL: readers (iteralign status) never block the loop. synchronous=NORMAL keeps every
       committed transaction across a process kill (the WAL is in the OS cache); only a power loss
       can lose the last transactions, which a resume then redoes. */
    if (exec_plain(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;", err) != IA_OK) {
        ia_error_prefix(err, "not a run store (or not writable)");
        ia_store_close(s);
        return NULL;
    }
    int64_t n_tables = 0;
    bool found;
    if (ia_store_get_i64(s, err, &n_tables, &found, "SELECT count(*) FROM sqlite_master WHERE type='table'", "") != IA_OK) {
        ia_error_prefix(err, "not a run store");
        ia_store_close(s);
        return NULL;
    }
    if (n_tables == 0) {
        if (!create) {
            ia_error_set(err, IA_ERR_FORMAT, "%s: empty database, not a run store", path);
            ia_store_close(s);
            return NULL;
        }
        char ver[16];
        snprintf(ver, sizeof ver, "%d", IA_STORE_SCHEMA_VERSION);
        if (ia_store_begin(s, err) != IA_OK || exec_plain(s, SCHEMA, err) != IA_OK ||
            ia_store_meta_set(s, "schema_version", ver, err) != IA_OK || ia_store_commit(s, err) != IA_OK) {
            ia_store_rollback(s);
            ia_store_close(s);
            return NULL;
        }
        return s;
    }
    char *ver = ia_store_meta_get(s, "schema_version", err);
    if (!ver || atoi(ver) != IA_STORE_SCHEMA_VERSION) {
        ia_error_set(err, IA_ERR_FORMAT, "%s: not an iteralign run store of schema version %d (found %s)", path,
                     IA_STORE_SCHEMA_VERSION, ver ? ver : "no schema_version");
        ia_free(ver);
        ia_store_close(s);
        return NULL;
    }
    ia_free(ver);
    return s;
}

void ia_store_close(ia_store *s) {
    if (!s) return;
    if (s->db) sqlite3_close_v2(s->db);
    pthread_mutex_destroy(&s->mu);
    ia_free(s->path);
    ia_free(s);
}

int ia_store_begin(ia_store *s, ia_error *err) {
    pthread_mutex_lock(&s->mu);
    IA_ASSERT(s->tx_depth == 0);
    if (exec_plain(s, "BEGIN IMMEDIATE", err) != IA_OK) {
        pthread_mutex_unlock(&s->mu);
        return IA_ERR_DB;
    }
    s->tx_depth = 1;
    return IA_OK;
}

int ia_store_commit(ia_store *s, ia_error *err) {
    IA_ASSERT(s->tx_depth == 1);
    int rc = exec_plain(s, "COMMIT", err);
    if (rc != IA_OK) exec_plain(s, "ROLLBACK", NULL);
    s->tx_depth = 0;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void ia_store_rollback(ia_store *s) {
    if (!s || s->tx_depth == 0) return;
    exec_plain(s, "ROLLBACK", NULL);
    s->tx_depth = 0;
    pthread_mutex_unlock(&s->mu);
}

static int bind_all(ia_store *s, sqlite3_stmt *st, const char *fmt, va_list ap, ia_error *err) {
    for (int i = 0; fmt && fmt[i]; i++) {
        int k = i + 1, rc;
        switch (fmt[i]) {
        case 'i': rc = sqlite3_bind_int(st, k, va_arg(ap, int)); break;
        case 'I': rc = sqlite3_bind_int64(st, k, va_arg(ap, int64_t)); break;
        case 'd': rc = sqlite3_bind_double(st, k, va_arg(ap, double)); break;
        case 'b': rc = sqlite3_bind_int(st, k, va_arg(ap, int) ? 1 : 0); break;
        case 's': {
            const char *v = va_arg(ap, const char *);
            rc = v ? sqlite3_bind_text(st, k, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, k);
            break;
        }
        default: IA_ASSERT(!"bad bind format letter");
        }
        if (rc != SQLITE_OK) return db_fail(s, err, "bind");
    }
    return IA_OK;
}

sqlite3_stmt *ia_store_vprepare(ia_store *s, ia_error *err, const char *sql, const char *fmt, va_list ap) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        ia_error_set(err, IA_ERR_DB, "%s: %s (in: %.80s)", s->path, sqlite3_errmsg(s->db), sql);
        return NULL;
    }
    if (bind_all(s, st, fmt, ap, err) != IA_OK) {
        sqlite3_finalize(st);
        return NULL;
    }
    return st;
}

sqlite3_stmt *ia_store_prepare(ia_store *s, ia_error *err, const char *sql, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    sqlite3_stmt *st = ia_store_vprepare(s, err, sql, fmt, ap);
    va_end(ap);
    return st;
}

static int vexec(ia_store *s, ia_error *err, const char *sql, const char *fmt, va_list ap) {
    sqlite3_stmt *st = ia_store_vprepare(s, err, sql, fmt, ap);
    if (!st) return IA_ERR_DB;
    int rc = sqlite3_step(st);
    while (rc == SQLITE_ROW) rc = sqlite3_step(st);
    int out = IA_OK;
    if (rc != SQLITE_DONE) out = ia_error_set(err, IA_ERR_DB, "%s: %s (in: %.80s)", s->path, sqlite3_errmsg(s->db), sql);
    sqlite3_finalize(st);
    return out;
}

int ia_store_exec(ia_store *s, ia_error *err, const char *sql, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&s->mu);
    int rc = vexec(s, err, sql, fmt, ap);
    pthread_mutex_unlock(&s->mu);
    va_end(ap);
    return rc;
}

int ia_store_get_i64(ia_store *s, ia_error *err, int64_t *out, bool *found, const char *sql, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = ia_store_vprepare(s, err, sql, fmt, ap);
    va_end(ap);
    int rc = IA_OK;
    if (found) *found = false;
    if (!st) {
        rc = IA_ERR_DB;
    } else {
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            *out = sqlite3_column_int64(st, 0);
            if (found) *found = sqlite3_column_type(st, 0) != SQLITE_NULL;
        } else if (r != SQLITE_DONE) {
            rc = db_fail(s, err, "query");
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int ia_store_get_text(ia_store *s, ia_error *err, char **out, const char *sql, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = ia_store_vprepare(s, err, sql, fmt, ap);
    va_end(ap);
    int rc = IA_OK;
    *out = NULL;
    if (!st) {
        rc = IA_ERR_DB;
    } else {
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) *out = ia_store_col_text(st, 0);
        else if (r != SQLITE_ROW && r != SQLITE_DONE) rc = db_fail(s, err, "query");
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

char *ia_store_col_text(sqlite3_stmt *st, int col) {
    const unsigned char *t = sqlite3_column_text(st, col);
    int n = sqlite3_column_bytes(st, col);
    return t ? ia_strndup((const char *)t, (size_t)n) : ia_strdup("");
}

/* ---- meta ---- */
int ia_store_meta_set(ia_store *s, const char *key, const char *value, ia_error *err) {
    return ia_store_exec(s, err, "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         "ss", key, value);
}

char *ia_store_meta_get(ia_store *s, const char *key, ia_error *err) {
    char *v = NULL;
    ia_error_clear(err);
    ia_store_get_text(s, err, &v, "SELECT value FROM meta WHERE key=?", "s", key);
    return v;
}

/* ---- stage progress ---- */
static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

bool ia_store_stage_done(ia_store *s, int batch, const char *stage) {
    int64_t v = 0;
    bool found = false;
    if (ia_store_get_i64(s, NULL, &v, &found, "SELECT 1 FROM progress WHERE batch=? AND stage=?", "is", batch, stage) != IA_OK)
        return false;
    return found;
}

int ia_store_stage_mark(ia_store *s, int batch, const char *stage, const char *detail, ia_error *err) {
    return ia_store_exec(s, err, "INSERT OR IGNORE INTO progress(batch, stage, detail, done_at) VALUES(?, ?, ?, ?)", "issd",
                         batch, stage, detail, wall_now());
}

/* ---- teacher calls ---- */
const char *ia_call_status_name(ia_call_status st) {
    switch (st) {
    case IA_CALL_SENT: return "sent";
    case IA_CALL_OK: return "ok";
    case IA_CALL_UNUSABLE: return "unusable";
    case IA_CALL_FAILED: return "failed";
    default: return "none";
    }
}

static ia_call_status status_from_name(const char *s) {
    if (!s) return IA_CALL_NONE;
    if (!strcmp(s, "sent")) return IA_CALL_SENT;
    if (!strcmp(s, "ok")) return IA_CALL_OK;
    if (!strcmp(s, "unusable")) return IA_CALL_UNUSABLE;
    if (!strcmp(s, "failed")) return IA_CALL_FAILED;
    return IA_CALL_NONE;
}

ia_call_status ia_store_call_lookup(ia_store *s, const char *call_key, char **content_out, char **error_out,
                                    ia_error *err) {
    if (content_out) *content_out = NULL;
    if (error_out) *error_out = NULL;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = ia_store_prepare(s, err, "SELECT status, content, error FROM teacher_calls WHERE call_key=?", "s", call_key);
    ia_call_status out = IA_CALL_NONE;
    if (st && sqlite3_step(st) == SQLITE_ROW) {
        out = status_from_name((const char *)sqlite3_column_text(st, 0));
        if (content_out && sqlite3_column_type(st, 1) != SQLITE_NULL) *content_out = ia_store_col_text(st, 1);
        if (error_out && sqlite3_column_type(st, 2) != SQLITE_NULL) *error_out = ia_store_col_text(st, 2);
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    return out;
}

int ia_store_call_mark_sent(ia_store *s, const char *call_key, const char *role, const char *endpoint,
                            const char *model, const char *request_json, ia_error *err) {
    return ia_store_exec(s, err,
                         "INSERT INTO teacher_calls(call_key, role, endpoint, model, request, status, sent_at)"
                         " VALUES(?, ?, ?, ?, ?, 'sent', ?)"
                         " ON CONFLICT(call_key) DO UPDATE SET resends = resends + (status = 'sent'),"
                         " status = 'sent', sent_at = excluded.sent_at",
                         "sssssd", call_key, role, endpoint, model, request_json, wall_now());
}

int ia_store_call_unsend(ia_store *s, const char *call_key, ia_error *err) {
    return ia_store_exec(s, err, "DELETE FROM teacher_calls WHERE call_key=? AND status='sent' AND resends=0", "s",
                         call_key);
}

int ia_store_call_finish(ia_store *s, const ia_store_call *c, ia_error *err) {
    return ia_store_exec(
        s, err,
        "UPDATE teacher_calls SET cache_key=?, request=coalesce(?, request), reply=?, content=?, status=?, error=?,"
        " http_status=?, attempts=?, prompt_tokens=?, completion_tokens=?, total_tokens=?, usage_missing=?,"
        " latency_s=?, finished_at=? WHERE call_key=?",
        "ssssssiiIIIbdds", c->cache_key[0] ? c->cache_key : NULL, c->request_json, c->reply, c->content,
        ia_call_status_name(c->status), c->error, c->http_status, c->attempts, c->prompt_tokens, c->completion_tokens,
        c->total_tokens, c->usage_missing, c->latency_s, wall_now(), c->call_key);
}

/* ---- the client cache hook ---- */
static char *cache_get(void *ud, const char *key) {
    ia_store *s = ud;
    char *v = NULL;
    ia_store_get_text(s, NULL, &v, "SELECT reply FROM teacher_calls WHERE cache_key=? AND status='ok' AND reply IS NOT NULL LIMIT 1",
                      "s", key);
    return v;
}

/* The call the current thread is making (set by the loop's teacher workers around a client request),
 * so that the hook writes the reply into that call's row rather than a row of its own. */
static _Thread_local const char *tls_call_key;

void ia_store_call_bind_thread(const char *call_key) { tls_call_key = call_key; }

/* Makes a usable reply durable the moment the client has it; the loop completes the row (usage,
 * latency, status) once the request returns. A reply for a request the loop did not mark gets a
 * row of its own keyed by the cache key. */
static int cache_put(void *ud, const char *key, const char *request_json, const char *reply_body) {
    ia_store *s = ud;
    if (tls_call_key)
        return ia_store_exec(s, NULL, "UPDATE teacher_calls SET cache_key=?, request=?, reply=? WHERE call_key=?", "ssss",
                             key, request_json, reply_body, tls_call_key);
    return ia_store_exec(s, NULL,
                         "INSERT OR IGNORE INTO teacher_calls(call_key, cache_key, role, endpoint, request, reply, status,"
                         " finished_at) VALUES(?, ?, 'cache', '', ?, ?, 'ok', ?)",
                         "ssssd", key, key, request_json, reply_body, wall_now());
}

ia_client_cache *ia_store_client_cache(ia_store *s, ia_error *err) {
    ia_client_cache *c = ia_calloc(1, sizeof *c);
    if (!c) {
        ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->get = cache_get;
    c->put = cache_put;
    c->destroy = NULL;
    c->ud = s;
    return c;
}
