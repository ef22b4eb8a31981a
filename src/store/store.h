/* store.h — the run store of an alignment run: one SQLite file (WAL) holding the run's
 * configuration and every prompt, answer, verdict, teacher call, constitution, revision, training
 * example, checkpoint and metric, so that a run killed at any moment resumes exactly.
 *
 * Durability model: each stage of the loop writes all its rows and its "done" mark in one
 * transaction (ia_store_begin/commit), and every row is keyed (UNIQUE/PRIMARY KEY) and written with
 * INSERT OR IGNORE, so replaying a stage after a crash is idempotent. Teacher calls are the one
 * exception: each is committed on its own as soon as it finishes (and marked "sent" just before it
 * leaves), because a reply paid for must never be paid for again.
 *
 * Threads: one ia_store may be used from several threads (the teacher workers); every call takes
 * the store's mutex. A transaction opened with ia_store_begin holds the mutex until commit or
 * rollback, so other threads wait rather than write into it.
 */
#ifndef IA_STORE_H
#define IA_STORE_H

#include "iteralign.h"
#include "net/client.h"

#include <sqlite3.h>
#include <stdarg.h>

#define IA_STORE_SCHEMA_VERSION 1

typedef struct ia_store ia_store;

/* Opens (create: creates if missing, with the schema) the store at path. A file that exists but
 * is not a run store of this schema version fails with a message naming the file. */
ia_store *ia_store_open(const char *path, bool create, ia_error *err);
void ia_store_close(ia_store *s);
const char *ia_store_path(const ia_store *s);

/* Transactions (BEGIN IMMEDIATE ... COMMIT). begin takes the store's mutex; commit/rollback release
 * it. Nesting is not supported. */
int  ia_store_begin(ia_store *s, ia_error *err);
int  ia_store_commit(ia_store *s, ia_error *err);
void ia_store_rollback(ia_store *s);

/* The connection, for module SQL; hold the lock (or a transaction) while using it. The lock is
 * recursive. */
sqlite3 *ia_store_db(ia_store *s);
void ia_store_lock(ia_store *s);
void ia_store_unlock(ia_store *s);

/* Runs one statement with bound parameters. fmt has one letter per parameter:
 *   i int, I int64_t, d double, s const char * (NULL binds NULL), b bool.
 * Returns IA_OK or IA_ERR_DB (err quotes the statement). Locks (the lock is recursive, so this
 * also works inside a transaction). */
int ia_store_exec(ia_store *s, ia_error *err, const char *sql, const char *fmt, ...);
/* Prepares sql and binds parameters as ia_store_exec; NULL (err set) on failure. Finalize with
 * sqlite3_finalize. The caller holds the lock (or a transaction) while stepping. */
sqlite3_stmt *ia_store_prepare(ia_store *s, ia_error *err, const char *sql, const char *fmt, ...);
sqlite3_stmt *ia_store_vprepare(ia_store *s, ia_error *err, const char *sql, const char *fmt, va_list ap);
/* First column of the first row as int64 / text (ia_malloc'd); *found says whether there was a
 * row. These lock. */
int ia_store_get_i64(ia_store *s, ia_error *err, int64_t *out, bool *found, const char *sql, const char *fmt, ...);
int ia_store_get_text(ia_store *s, ia_error *err, char **out, const char *sql, const char *fmt, ...);
/* A column's text as an ia_malloc'd copy ("" for NULL). */
char *ia_store_col_text(sqlite3_stmt *st, int col);

/* ---- meta (key/value: configuration, hashes, versions) ---- */
int   ia_store_meta_set(ia_store *s, const char *key, const char *value, ia_error *err);
char *ia_store_meta_get(ia_store *s, const char *key, ia_error *err); /* NULL if absent (err clear) */

/* ---- stage progress: (batch, stage) pairs that are complete ---- */
/* batch -1 holds run-level stages (eval_before, eval_after, finalize). */
bool ia_store_stage_done(ia_store *s, int batch, const char *stage);
int  ia_store_stage_mark(ia_store *s, int batch, const char *stage, const char *detail, ia_error *err);

/* ---- teacher calls ---- */
typedef enum ia_call_status {
    IA_CALL_NONE = 0,     /* no row */
    IA_CALL_SENT,         /* marked before sending; no outcome recorded (in flight at a crash) */
    IA_CALL_OK,           /* a usable reply */
    IA_CALL_UNUSABLE,     /* the server answered, but nothing usable came back (recorded, not retried) */
    IA_CALL_FAILED,       /* the request was refused for its content (4xx); recorded, not retried */
} ia_call_status;

const char *ia_call_status_name(ia_call_status st);

typedef struct ia_store_call {
    char call_key[65];        /* SHA-256 of the logical request (model, messages, parameters) */
    char cache_key[65];       /* the client's ia_client_request_key ("" for a local teacher) */
    const char *role;         /* "judge", "propose", ... */
    const char *endpoint;     /* base URL or "local:PATH" (never a key) */
    const char *model;
    const char *request_json; /* the request body (no key in it) */
    const char *reply;        /* raw reply body, or the generated text of a local teacher */
    const char *content;      /* the reply's message content */
    ia_call_status status;
    const char *error;
    int http_status;
    int attempts;
    int64_t prompt_tokens, completion_tokens, total_tokens;
    bool usage_missing;
    double latency_s;
} ia_store_call;

/* Looks up a call by call_key. Returns its status (IA_CALL_NONE when absent); when found and
 * content_out is non-NULL, *content_out receives the stored content (ia_free) and *error_out the
 * stored error (may be NULL). Locks. */
ia_call_status ia_store_call_lookup(ia_store *s, const char *call_key, char **content_out, char **error_out,
                                    ia_error *err);
/* Marks call_key as sent (committed at once). A row that was already "sent" (a crash while it was
 * in flight) has its resend counter incremented. Locks. */
int ia_store_call_mark_sent(ia_store *s, const char *call_key, const char *role, const char *endpoint,
                            const char *model, const char *request_json, ia_error *err);
/* Records the outcome of a call (committed at once). Locks. */
int ia_store_call_finish(ia_store *s, const ia_store_call *c, ia_error *err);
/* Forgets a "sent" mark for a call that never reached the server (connection refused): it will be
 * sent on the next run without counting as a resend. Locks. */
int ia_store_call_unsend(ia_store *s, const char *call_key, ia_error *err);

/* Tells the cache hook which call the current thread's next client request belongs to (NULL to
 * unbind); the pointer must stay valid until unbound. */
void ia_store_call_bind_thread(const char *call_key);

/* The client's cache, backed by teacher_calls (keyed by cache_key, usable replies only). Free with
 * ia_client_cache_free; the store must outlive it. */
ia_client_cache *ia_store_client_cache(ia_store *s, ia_error *err);

#endif /* IA_STORE_H */
