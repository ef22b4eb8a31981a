/* cmd_report.c — `iteralign report`: report.md and a self-contained report.html (SVG charts) for an
 * alignment run folder, and report.json with the snapshot they were drawn from. */
#include "cli.h"
#include "report/report.h"

static void report_help(FILE *f) {
    fputs("usage: iteralign report --run DIR [--out DIR] [--json]\n\n"
          "Writes a report of an alignment run: report.md (tables; charts as report-charts/*.svg) and\n"
          "report.html (self-contained: inline SVG charts, no scripts, nothing fetched), with\n"
          "  - the flagged rate per batch (and the share of revisions that pass the judge),\n"
          "  - the constitutions in the order found, with the flagged answers that led to them,\n"
          "  - the training loss per round (every optimizer step when the round's log is there),\n"
          "  - every evaluation before and after (held-out violation rate, `align --eval` tasks),\n"
          "  - answers before and after: held-out prompts, and flagged answers with their revisions.\n"
          "The run is read from DIR/run.db, or from DIR/snapshot.json (format iteralign-run-snapshot/1,\n"
          "as report.json) when there is no store.\n\n"
          "options:\n"
          "      --run DIR     the run folder\n"
          "      --out DIR     where to write (default: the run folder)\n"
          "      --json        also write report.json (the snapshot: every number the report shows)\n"
          "  -h, --help        this help\n",
          f);
}

int cmd_report(int argc, char **argv) {
    enum { O_RUN = 256, O_OUT, O_JSON };
    static const struct option opts[] = {{"run", required_argument, 0, O_RUN}, {"out", required_argument, 0, O_OUT},
                                         {"json", no_argument, 0, O_JSON},      {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *run = NULL, *out = NULL;
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_RUN: run = optarg; break;
        case O_OUT: out = optarg; break;
        case O_JSON: json = true; break;
        case 'h': report_help(stdout); return 0;
        default: return cli_usage_error("report");
        }
    }
    if (!run) return cli_fail("report: --run DIR is required"), cli_usage_error("report");
    if (optind < argc) return cli_fail("report: unexpected argument '%s'", argv[optind]), cli_usage_error("report");
    ia_error err = {0};
    if (ia_report_write(run, out, json, &err) != IA_OK) return cli_fail_err(&err);
    const char *dir = out ? out : run;
    printf("%s/report.md\n%s/report.html\n", dir, dir);
    if (json) printf("%s/report.json\n", dir);
    return 0;
}
