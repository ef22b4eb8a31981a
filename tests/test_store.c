/* test_store.c — the SQLite run store: schema and versioning, STRICT typing, transactions and
 * idempotent replays, stage marks, teacher-call records (sent / finished / resent / unsent), the
 * client cache hook, and concurrent writers. */
#include "test_util.h"

#include "store/store.h"

#include <pthread.h>

static ia_store *fresh(const char *name) {
    char path[512];
    test_tmpfile(path, sizeof path, name);
    remove(path);
    ia_error err = {0};
    ia_store *s = ia_store_open(path, true, &err);
    assert_non_null(s);
    return s;
}

static void test_create_reopen(void **state) {
    (void)state;
    ia_store *s = fresh("a.db");
    char path[512];
    snprintf(path, sizeof path, "%s", ia_store_path(s));
    ia_error err = {0};
    char *v = ia_store_meta_get(s, "schema_version", &err);
    assert_non_null(v);
    assert_int_equal(atoi(v), IA_STORE_SCHEMA_VERSION);
    ia_free(v);
    assert_int_equal(ia_store_meta_set(s, "k", "one", &err), IA_OK);
    assert_int_equal(ia_store_meta_set(s, "k", "two", &err), IA_OK);
    char *jm = NULL;
    assert_int_equal(ia_store_get_text(s, &err, &jm, "PRAGMA journal_mode", ""), IA_OK);
    assert_string_equal(jm, "wal");
    ia_free(jm);
    ia_store_close(s);
    s = ia_store_open(path, false, &err);
    assert_non_null(s);
    v = ia_store_meta_get(s, "k", &err);
    assert_string_equal(v, "two");
    ia_free(v);
    assert_null(ia_store_meta_get(s, "absent", &err));
    ia_store_close(s);
}

static void test_not_a_store(void **state) {
    (void)state;
    char path[512];
    test_tmpfile(path, sizeof path, "junk.db");
    FILE *f = fopen(path, "w");
    fputs("this is not sqlite at all, just text\n", f);
    fclose(f);
    ia_error err = {0};
    assert_null(ia_store_open(path, false, &err));
    assert_int_equal(err.code, IA_ERR_DB);
    assert_non_null(strstr(err.msg, "junk.db"));
    test_tmpfile(path, sizeof path, "missing.db");
    remove(path);
    assert_null(ia_store_open(path, false, &err));
    assert_non_null(strstr(err.msg, "missing.db"));
    /* an SQLite file of someone else's */
    test_tmpfile(path, sizeof path, "other.db");
    remove(path);
    sqlite3 *db;
    sqlite3_open(path, &db);
    sqlite3_exec(db, "CREATE TABLE x(a); CREATE TABLE meta(key TEXT, value TEXT);", NULL, NULL, NULL);
    sqlite3_close(db);
    assert_null(ia_store_open(path, false, &err));
    assert_non_null(strstr(err.msg, "schema version"));
}

static void test_strict_and_replay(void **state) {
    (void)state;
    ia_store *s = fresh("b.db");
    ia_error err = {0};
    /* STRICT: text in an INTEGER column is an error, not a silent conversion */
    assert_int_not_equal(ia_store_exec(s, &err, "INSERT INTO answers(batch, prompt_idx, text, n_tokens, finish) VALUES(?, ?, ?, ?, ?)",
                                       "isssss", 0, "zero", "t", "many", "stop"),
                         IA_OK);
    assert_int_equal(err.code, IA_ERR_DB);
    /* a stage replayed after a crash writes nothing twice */
    for (int rep = 0; rep < 2; rep++) {
        assert_int_equal(ia_store_begin(s, &err), IA_OK);
        for (int i = 0; i < 3; i++)
            assert_int_equal(ia_store_exec(s, &err,
                                           "INSERT OR IGNORE INTO answers(batch, prompt_idx, text, n_tokens, finish) VALUES(?, ?, ?, ?, ?)",
                                           "iisis", 0, i, "an answer", 3, "stop"),
                             IA_OK);
        assert_int_equal(ia_store_stage_mark(s, 0, "redteam", NULL, &err), IA_OK);
        assert_int_equal(ia_store_commit(s, &err), IA_OK);
    }
    int64_t n = 0;
    bool found;
    assert_int_equal(ia_store_get_i64(s, &err, &n, &found, "SELECT count(*) FROM answers", ""), IA_OK);
    assert_int_equal(n, 3);
    assert_true(ia_store_stage_done(s, 0, "redteam"));
    assert_false(ia_store_stage_done(s, 0, "judge"));
    assert_false(ia_store_stage_done(s, 1, "redteam"));
    /* a rolled-back stage leaves nothing */
    assert_int_equal(ia_store_begin(s, &err), IA_OK);
    ia_store_exec(s, &err, "INSERT INTO answers(batch, prompt_idx, text, n_tokens, finish) VALUES(1, 0, 'x', 1, 'stop')", "");
    ia_store_stage_mark(s, 1, "redteam", NULL, &err);
    ia_store_rollback(s);
    assert_false(ia_store_stage_done(s, 1, "redteam"));
    ia_store_get_i64(s, &err, &n, &found, "SELECT count(*) FROM answers WHERE batch=1", "");
    assert_int_equal(n, 0);
    ia_store_close(s);
}

static void test_teacher_calls(void **state) {
    (void)state;
    ia_store *s = fresh("c.db");
    ia_error err = {0};
    const char *key = "k1";
    char *content = NULL, *error = NULL;
    assert_int_equal(ia_store_call_lookup(s, key, &content, &error, &err), IA_CALL_NONE);
    assert_int_equal(ia_store_call_mark_sent(s, key, "judge", "http://x/v1", "m", "{\"req\":1}", &err), IA_OK);
    assert_int_equal(ia_store_call_lookup(s, key, NULL, NULL, &err), IA_CALL_SENT);
    /* in flight at a crash, sent again: counted */
    assert_int_equal(ia_store_call_mark_sent(s, key, "judge", "http://x/v1", "m", "{\"req\":1}", &err), IA_OK);
    int64_t resends = 0;
    ia_store_get_i64(s, &err, &resends, NULL, "SELECT resends FROM teacher_calls WHERE call_key='k1'", "");
    assert_int_equal(resends, 1);
    ia_store_call c = {0};
    snprintf(c.call_key, sizeof c.call_key, "%s", key);
    snprintf(c.cache_key, sizeof c.cache_key, "%s", "cachekey1");
    c.reply = "{\"choices\":[{\"message\":{\"content\":\"hi\"}}]}";
    c.content = "hi";
    c.status = IA_CALL_OK;
    c.http_status = 200;
    c.prompt_tokens = 10;
    c.latency_s = 0.5;
    assert_int_equal(ia_store_call_finish(s, &c, &err), IA_OK);
    assert_int_equal(ia_store_call_lookup(s, key, &content, &error, &err), IA_CALL_OK);
    assert_string_equal(content, "hi");
    assert_null(error);
    ia_free(content);
    /* unusable replies are kept as such and never re-sent */
    assert_int_equal(ia_store_call_mark_sent(s, "k2", "judge", "u", "m", "{}", &err), IA_OK);
    ia_store_call c2 = {0};
    snprintf(c2.call_key, sizeof c2.call_key, "k2");
    c2.status = IA_CALL_UNUSABLE;
    c2.error = "unusable reply: not JSON";
    assert_int_equal(ia_store_call_finish(s, &c2, &err), IA_OK);
    assert_int_equal(ia_store_call_lookup(s, "k2", &content, &error, &err), IA_CALL_UNUSABLE);
    assert_string_equal(error, "unusable reply: not JSON");
    ia_free(error);
    ia_free(content);
    /* a request that never reached the server is forgotten */
    ia_store_call_mark_sent(s, "k3", "judge", "u", "m", "{}", &err);
    assert_int_equal(ia_store_call_unsend(s, "k3", &err), IA_OK);
    assert_int_equal(ia_store_call_lookup(s, "k3", NULL, NULL, &err), IA_CALL_NONE);
    ia_store_close(s);
}

static void test_cache_hook(void **state) {
    (void)state;
    ia_store *s = fresh("d.db");
    ia_error err = {0};
    ia_client_cache *cache = ia_store_client_cache(s, &err);
    assert_non_null(cache);
    assert_null(cache->get(cache->ud, "abc"));
    /* a put while a call is bound goes into that call's row */
    ia_store_call_mark_sent(s, "call1", "judge", "u", "m", "{}", &err);
    ia_store_call_bind_thread("call1");
    assert_int_equal(cache->put(cache->ud, "abc", "{\"model\":\"m\"}", "{\"choices\":[]}"), IA_OK);
    ia_store_call_bind_thread(NULL);
    /* still "sent" until the loop finishes it: not served from the cache */
    assert_null(cache->get(cache->ud, "abc"));
    ia_store_call c = {0};
    snprintf(c.call_key, sizeof c.call_key, "call1");
    snprintf(c.cache_key, sizeof c.cache_key, "abc");
    c.reply = "{\"choices\":[]}";
    c.content = "";
    c.status = IA_CALL_OK;
    ia_store_call_finish(s, &c, &err);
    char *hit = cache->get(cache->ud, "abc");
    assert_non_null(hit);
    assert_string_equal(hit, "{\"choices\":[]}");
    ia_free(hit);
    /* an unbound put makes a row of its own */
    assert_int_equal(cache->put(cache->ud, "def", "{}", "{\"x\":1}"), IA_OK);
    hit = cache->get(cache->ud, "def");
    assert_non_null(hit);
    ia_free(hit);
    int64_t n = 0;
    ia_store_get_i64(s, &err, &n, NULL, "SELECT count(*) FROM teacher_calls", "");
    assert_int_equal(n, 2);
    ia_client_cache_free(cache);
    ia_store_close(s);
}

typedef struct worker_arg {
    ia_store *s;
    int id;
} worker_arg;

static void *worker(void *p) {
    worker_arg *a = p;
    for (int i = 0; i < 50; i++) {
        char key[32];
        snprintf(key, sizeof key, "w%d-%d", a->id, i);
        ia_store_call_mark_sent(a->s, key, "judge", "u", "m", "{}", NULL);
        ia_store_call c = {0};
        snprintf(c.call_key, sizeof c.call_key, "%s", key);
        c.status = IA_CALL_OK;
        c.content = key;
        ia_store_call_finish(a->s, &c, NULL);
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    ia_store *s = fresh("e.db");
    pthread_t th[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){s, i};
        pthread_create(&th[i], NULL, worker, &args[i]);
    }
    /* a stage transaction on the main thread at the same time */
    ia_error err = {0};
    assert_int_equal(ia_store_begin(s, &err), IA_OK);
    for (int i = 0; i < 20; i++)
        ia_store_exec(s, &err, "INSERT OR IGNORE INTO metrics(name, phase, batch, value) VALUES('m', 'p', ?, 1.0)", "i", i);
    assert_int_equal(ia_store_commit(s, &err), IA_OK);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    int64_t n = 0;
    ia_store_get_i64(s, &err, &n, NULL, "SELECT count(*) FROM teacher_calls WHERE status='ok'", "");
    assert_int_equal(n, 200);
    ia_store_get_i64(s, &err, &n, NULL, "SELECT count(*) FROM metrics", "");
    assert_int_equal(n, 20);
    ia_store_close(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_reopen), cmocka_unit_test(test_not_a_store), cmocka_unit_test(test_strict_and_replay),
        cmocka_unit_test(test_teacher_calls), cmocka_unit_test(test_cache_hook),  cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
