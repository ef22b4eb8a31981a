/* eval_store.c — evaluation results into an alignment run: headline numbers into the run store's
 * metrics table and the full results beside it, for `iteralign align --eval` and the report. */
#include "eval/eval.h"
#include "store/store.h"
#include "util/util.h"

#include <errno.h>
#include <sys/stat.h>

int ia_eval_store_metrics(struct ia_store *s, const char *phase, int round, const json_t *results, ia_error *err) {
    ia_eval_metric *ms = NULL;
    int n = ia_eval_metrics(results, &ms), rc = IA_OK;
    for (int i = 0; i < n && rc == IA_OK; i++)
        rc = ia_store_exec(s, err, "INSERT OR REPLACE INTO metrics(name, phase, batch, value, n) VALUES(?, ?, ?, ?, ?)",
                           "ssidi", ms[i].name, phase, round, ms[i].value, ms[i].n);
    ia_eval_metrics_free(ms, n);
    return rc;
}

int ia_eval_for_run(ia_model *m, const ia_eval_config *cfg, const char *task_list, struct ia_store *s,
                    const char *run_dir, const char *phase, int round, char **summary, ia_error *err) {
    bool sel[IA_EVAL_TASK_COUNT];
    if (summary) *summary = NULL;
    int rc = ia_eval_tasks_parse(task_list, sel, err);
    if (rc != IA_OK) return rc;
    json_t *res = NULL;
    if ((rc = ia_eval_run(m, cfg, sel, &res, err)) != IA_OK) return rc;
    json_object_set_new(res, "phase", json_string(phase));
    json_object_set_new(res, "round", json_integer(round));
    if (s) rc = ia_eval_store_metrics(s, phase, round, res, err);
    if (rc == IA_OK && run_dir) {
        /* The full results beside the store: every item's scores, for auditing. */
        char dir[4096], path[4200];
        snprintf(dir, sizeof dir, "%s/eval", run_dir);
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) rc = ia_error_set(err, IA_ERR_IO, "%s: %s", dir, strerror(errno));
        snprintf(path, sizeof path, "%s/%s-round-%03d.json", dir, phase, round);
        char *text = rc == IA_OK ? ia_eval_json_dump(res, 1) : NULL;
        if (rc == IA_OK && !text) rc = ia_error_set(err, IA_ERR_NOMEM, "out of memory");
        if (rc == IA_OK) {
            char tmp[4300];
            snprintf(tmp, sizeof tmp, "%s.tmp", path);
            FILE *f = fopen(tmp, "w");
            bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
            if (f && fclose(f) != 0) ok = false;
            if (!ok || rename(tmp, path) != 0) {
                remove(tmp);
                rc = ia_error_set(err, IA_ERR_IO, "%s: cannot write the evaluation results", path);
            }
        }
        ia_free(text);
    }
    if (rc == IA_OK && summary) {
        ia_eval_metric *ms = NULL;
        int n = ia_eval_metrics(res, &ms);
        ia_buf b = {0};
        for (int i = 0; i < n; i++) ia_buf_printf(&b, "%s%s %.4f", i ? ", " : "", ms[i].name, ms[i].value);
        ia_eval_metrics_free(ms, n);
        *summary = ia_buf_take(&b);
    }
    json_decref(res);
    return rc;
}
