/* report.h — the report of an alignment run: a JSON snapshot of the run folder (read from its run
 * store, DIR/run.db, or from a snapshot file), rendered as report.md (tables, with the charts as SVG
 * files beside it) and a self-contained report.html (inline SVG charts, no scripts, nothing fetched).
 *
 * Snapshot format "iteralign-run-snapshot/1" (what `iteralign report --json` writes as report.json,
 * and what the report reads from DIR/snapshot.json when a run has no run.db):
 *   {"format": "iteralign-run-snapshot/1", "run_dir": str, "meta": {key: str},
 *    "config": {...} (the run's configuration, when stored),
 *    "batches": [{"batch", "n_prompts", "n_flagged", "n_unusable", "n_revised", "n_passed", "n_trained",
 *                 "trained_round", "adapter_round", "flag_rate"}],
 *    "constitutions": [{"id", "text", "source", "first_batch", "merged_into", "n_merged", "n_sources",
 *                       "sources": [{"batch", "prompt_idx", "prompt", "answer", "reason", "proposed"}]}]
 *                      (in the order found: first batch, then id; at most 20 sources each),
 *    "rounds": [{"round", "batch", "kind", "n_examples", "steps", "first_loss", "final_loss", "seconds",
 *                "losses": [{"step", "loss"}]}]  (losses from DIR/train/round-NNN.log.jsonl when present),
 *    "evals": [{"name", "phase", "batch", "value", "n"}]  (every metric except the per-batch loop ones;
 *              phase "before" or "after", batch -1 for the whole run or the round after which it was
 *              measured),
 *    "loop_metrics": [{"name", "phase", "batch", "value", "n"}]  (flag_rate, revision_pass_rate, ...),
 *    "examples": {"heldout": [{"idx", "prompt", "before", "after", "flagged_before", "flagged_after"}],
 *                 "revisions": [{"batch", "prompt_idx", "prompt", "answer", "revision", "reason"}]},
 *    "notes": [str]  (sections that could not be read, and why)}
 */
#ifndef IA_REPORT_H
#define IA_REPORT_H

#include "iteralign.h"

#include <jansson.h>

/* The snapshot of a run folder (json_decref it). Missing tables or files leave their sections empty
 * with a note; a folder with neither run.db nor snapshot.json is an error. */
json_t *ia_report_snapshot(const char *run_dir, ia_error *err);

/* report.md (charts referenced as <charts_rel>/<name>.svg) and report.html; ia_free the results. */
char *ia_report_markdown(const json_t *snap, const char *charts_rel);
char *ia_report_html(const json_t *snap);

/* One chart's SVG by name ("flag_rate", "constitutions", "loss", "eval-<i>"), NULL if the snapshot has
 * nothing for it. names: the charts the snapshot has (count returned; ia_free each and the array). */
int ia_report_chart_names(const json_t *snap, char ***names);
char *ia_report_chart_svg(const json_t *snap, const char *name);

/* Writes report.md, report-charts/NAME.svg and report.html (and report.json when json) into out_dir
 * (NULL: the run folder). */
int ia_report_write(const char *run_dir, const char *out_dir, bool json, ia_error *err);

#endif /* IA_REPORT_H */
