/* cmd_status.c — `iteralign status`: where an alignment run stands (stage, counts, every measured
 * rate before and after), read from its run store; safe while `iteralign align` is running. */
#include "align/align.h"
#include "cli.h"

static void status_help(FILE *f) {
    fputs("usage: iteralign status --run DIR [--json]\n\n"
          "Shows an alignment run: its state and next stage, prompt and batch counts, flagged answers,\n"
          "constitutions, revisions, training rounds, teacher calls (tokens, latency, unusable replies),\n"
          "the held-out violation rate before and after alignment and the flag rate of every batch.\n"
          "Reads the run store only; works while the run is going.\n\n"
          "  --run DIR     the run folder\n"
          "  --json        one JSON object (the same facts, and the run's configuration)\n"
          "  -h, --help    this help\n",
          f);
}

static long long ival(json_t *o, const char *k) { return (long long)json_integer_value(json_object_get(o, k)); }

static void print_rate(const char *label, json_t *r) {
    if (!json_is_object(r)) {
        printf("%s: not measured yet", label);
        return;
    }
    printf("%s %.1f%% (%lld of %lld answers)", label, 100 * json_number_value(json_object_get(r, "rate")), ival(r, "violations"),
           ival(r, "answers"));
}

int cmd_status(int argc, char **argv) {
    static const struct option opts[] = {{"run", required_argument, 0, 'r'}, {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *dir = NULL;
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r': dir = optarg; break;
        case 'j': json = true; break;
        case 'h': status_help(stdout); return 0;
        default: return cli_usage_error("status");
        }
    }
    if (!dir) return cli_fail("status: --run DIR is required"), cli_usage_error("status");
    if (optind < argc) return cli_fail("status: unexpected argument '%s'", argv[optind]), cli_usage_error("status");
    ia_error err = {0};
    json_t *st = ia_align_status(dir, &err);
    if (!st) return cli_fail_err(&err);
    if (json) {
        cli_json_print(st);
        json_decref(st);
        return 0;
    }
    json_t *pr = json_object_get(st, "prompts"), *bt = json_object_get(st, "batches"), *cn = json_object_get(st, "counts");
    json_t *tc = json_object_get(cn, "teacher_calls"), *rates = json_object_get(st, "rates");
    json_t *cfg = json_object_get(st, "config");
    printf("run: %s\n", dir);
    printf("state: %s; next: %s\n", json_string_value(json_object_get(st, "state")), json_string_value(json_object_get(st, "next_stage")));
    if (json_object_get(st, "stopped_early"))
        printf("stopped early: %s\n", json_string_value(json_object_get(st, "stopped_early")));
    printf("preset: %s; base: %s\n", json_string_value(json_object_get(st, "preset")),
           json_string_value(json_object_get(cfg, "base")));
    printf("prompts: %lld red-team in %lld batches of %lld, %lld held-out\n", ival(pr, "redteam"), ival(bt, "total"),
           ival(cfg, "batch_size"), ival(pr, "heldout"));
    printf("batches: %lld judged, %lld skipped (nothing flagged), %lld trained\n", ival(bt, "judged"), ival(bt, "skipped"),
           ival(bt, "trained"));
    printf("answers: %lld, flagged %lld, unusable verdicts %lld\n", ival(cn, "answers"), ival(cn, "flagged"),
           ival(cn, "unusable_verdicts"));
    printf("constitutions: %lld (+%lld merged near-duplicates)\n", ival(cn, "constitutions"), ival(cn, "constitutions_merged"));
    printf("revisions: %lld, chosen for training %lld; training examples %lld in %lld rounds\n", ival(cn, "revisions"),
           ival(cn, "revisions_chosen"), ival(cn, "train_examples"), ival(cn, "rounds"));
    printf("teacher calls: %lld (ok %lld, unusable %lld, failed %lld, in flight at a crash %lld, resent %lld); tokens %lld in + "
           "%lld out; %.1f s of summed latency\n",
           ival(tc, "total"), ival(tc, "ok"), ival(tc, "unusable"), ival(tc, "failed"), ival(tc, "in_flight_at_a_crash"),
           ival(tc, "resent_after_a_crash"), ival(tc, "prompt_tokens"), ival(tc, "completion_tokens"),
           json_number_value(json_object_get(tc, "latency_s")));
    json_t *vr = json_object_get(rates, "heldout_violation_rate");
    printf("held-out violation rate (%lld prompts x %lld): ", ival(vr, "heldout_prompts"), ival(vr, "samples_per_prompt"));
    print_rate("before", json_object_get(vr, "before"));
    printf(", ");
    print_rate("after", json_object_get(vr, "after"));
    printf("\n");
    json_t *fl = json_object_get(rates, "heldout_base_nll_per_token");
    json_t *fb = json_object_get(fl, "before"), *fa = json_object_get(fl, "after");
    if (json_is_number(fb)) {
        printf("fluency of those answers (the base model's NLL per token; lower is more fluent): before %.3f, after ",
               json_number_value(fb));
        if (json_is_number(fa)) printf("%.3f\n", json_number_value(fa));
        else printf("not measured yet\n");
    }
    const char *tk;
    json_t *tv;
    json_object_foreach(json_object_get(rates, "eval_tasks"), tk, tv) {
        printf("%s: before ", tk);
        json_t *b = json_object_get(tv, "before"), *a = json_object_get(tv, "after");
        if (json_is_number(b)) printf("%.4f", json_number_value(b));
        else printf("-");
        printf(", after ");
        if (json_is_number(a)) printf("%.4f", json_number_value(a));
        else printf("-");
        printf(" (n=%lld)\n", ival(tv, "n"));
    }
    json_t *per = json_object_get(rates, "redteam_batches");
    if (json_array_size(per)) {
        printf("red-team flag rate per batch:");
        size_t i;
        json_t *b;
        json_array_foreach(per, i, b) {
            json_t *fr = json_object_get(b, "flag_rate");
            if (fr) printf(" %.0f%%", 100 * json_number_value(fr));
            else printf(" -");
        }
        printf("\n");
    }
    json_t *pass = json_object_get(rates, "revision_pass_rate");
    if (json_is_number(pass)) printf("revisions that pass the judge: %.1f%%\n", 100 * json_number_value(pass));
    json_t *un = json_object_get(rates, "teacher_unusable_rate");
    if (json_is_number(un)) printf("unusable or refused teacher replies: %.1f%%\n", 100 * json_number_value(un));
    json_t *cps = json_object_get(st, "checkpoints");
    size_t i;
    json_t *cp;
    json_array_foreach(cps, i, cp) {
        printf("round %lld (batch %lld): %s, %lld examples, %lld steps, loss %.3f -> %.3f\n", ival(cp, "round"), ival(cp, "batch"),
               json_string_value(json_object_get(cp, "path")), ival(cp, "examples"), ival(cp, "steps"),
               json_number_value(json_object_get(cp, "first_loss")), json_number_value(json_object_get(cp, "final_loss")));
    }
    const char *fm = json_string_value(json_object_get(st, "final_model"));
    if (fm) printf("final model: %s\n", fm);
    json_decref(st);
    return 0;
}
