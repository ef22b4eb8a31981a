/* cmd_constitutions.c — `iteralign constitutions`: the constitution registry of an alignment run,
 * each with where it came from (a rule or the teacher), the flagged answers that produced it and
 * the near-duplicates merged into it. */
#include "align/align.h"
#include "cli.h"

static void constitutions_help(FILE *f) {
    fputs("usage: iteralign constitutions --run DIR [--json]\n\n"
          "Lists the constitutions a run found, in the order they were found, with their source (a rules\n"
          "detector or the teacher), the batch that first produced them, how many flagged answers led to\n"
          "them, merged near-duplicates and an example. --json prints what DIR/constitutions.json holds.\n\n"
          "  --run DIR     the run folder\n"
          "  --json        the registry as JSON, every source answer included\n"
          "  -h, --help    this help\n",
          f);
}

static void one_line(const char *s, size_t max) {
    size_t n = 0;
    for (const char *p = s ? s : ""; *p && n < max; p++, n++) putchar(*p == '\n' || *p == '\r' ? ' ' : *p);
    if (s && strlen(s) > max) fputs("...", stdout);
}

int cmd_constitutions(int argc, char **argv) {
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
        case 'h': constitutions_help(stdout); return 0;
        default: return cli_usage_error("constitutions");
        }
    }
    if (!dir) return cli_fail("constitutions: --run DIR is required"), cli_usage_error("constitutions");
    if (optind < argc) return cli_fail("constitutions: unexpected argument '%s'", argv[optind]), cli_usage_error("constitutions");
    ia_error err = {0};
    json_t *cj = ia_align_constitutions(dir, &err);
    if (!cj) return cli_fail_err(&err);
    if (json) {
        cli_json_print(cj);
        json_decref(cj);
        return 0;
    }
    json_t *arr = json_object_get(cj, "constitutions");
    if (json_array_size(arr) == 0) printf("no constitutions yet\n");
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o) {
        const char *src = json_string_value(json_object_get(o, "source"));
        printf("%zu. %s\n", i + 1, json_string_value(json_object_get(o, "text")));
        printf("   source: %s%s; first in batch %lld; from %lld flagged answer%s", src && !strncmp(src, "rules:", 6) ? "rule " : "",
               src && !strncmp(src, "rules:", 6) ? src + 6 : "teacher", (long long)json_integer_value(json_object_get(o, "first_batch")),
               (long long)json_integer_value(json_object_get(o, "n_flagged_answers")),
               json_integer_value(json_object_get(o, "n_flagged_answers")) == 1 ? "" : "s");
        size_t nm = json_array_size(json_object_get(o, "merged_near_duplicates"));
        if (nm) printf("; %zu near-duplicate%s merged", nm, nm == 1 ? "" : "s");
        printf("\n");
        json_t *ex = json_array_get(json_object_get(o, "sources"), 0);
        if (ex) {
            printf("   e.g. \"");
            one_line(json_string_value(json_object_get(ex, "prompt")), 80);
            printf("\" -> \"");
            one_line(json_string_value(json_object_get(ex, "answer")), 120);
            printf("\"\n");
        }
    }
    json_decref(cj);
    return 0;
}
