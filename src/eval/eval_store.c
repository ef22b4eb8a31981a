/* eval_store.c — evaluation results into the run store's metrics table, for `iteralign align --eval`
 * and the report. */
#include "eval/eval.h"
#include "store/store.h"
#include "util/util.h"

int ia_eval_store_metrics(struct ia_store *s, const char *phase, int round, const json_t *results, ia_error *err) {
    ia_eval_metric *ms = NULL;
    int n = ia_eval_metrics(results, &ms), rc = IA_OK;
    for (int i = 0; i < n && rc == IA_OK; i++)
        rc = ia_store_exec(s, err, "INSERT OR REPLACE INTO metrics(name, phase, batch, value, n) VALUES(?, ?, ?, ?, ?)",
                           "ssidi", ms[i].name, phase, round, ms[i].value, ms[i].n);
    ia_eval_metrics_free(ms, n);
    return rc;
}
