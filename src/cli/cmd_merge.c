/* cmd_merge.c — `iteralign merge`: LoRA adapters folded into a model GGUF; and the shared parser of
 * --lora FILE[:SCALE] values for commands that apply adapters at run time. */
#include "cli.h"
#include "train/train.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

/* Splits "FILE[:SCALE]": the scale is what follows the last ':' when it parses as a number and the
 * whole string is not an existing file (so paths with ':' still work). */
static void split_spec(const char *spec, char *path, size_t cap, float *scale) {
    *scale = 1.0f;
    snprintf(path, cap, "%s", spec);
    const char *c = strrchr(spec, ':');
    if (!c || access(spec, F_OK) == 0) return;
    char *end;
    errno = 0;
    float v = strtof(c + 1, &end);
    if (errno || end == c + 1 || *end || !isfinite(v)) return;
    *scale = v;
    snprintf(path, cap, "%.*s", (int)(c - spec), spec);
}

int cli_lora_apply(ia_model *m, const char *spec, ia_error *err) {
    char path[4096];
    float scale;
    split_spec(spec, path, sizeof path, &scale);
    return ia_model_lora_add(m, path, scale, err);
}

static void merge_help(FILE *f) {
    fputs("usage: iteralign merge -m BASE --lora ADAPTER[:SCALE] [--lora ...] --out MODEL.gguf [--type f16]\n\n"
          "Folds LoRA adapters (llama.cpp GGUF format) into the base weights: W + scale*(alpha/r)*B*A, then\n"
          "writes every matrix in the chosen type. The base's metadata (tokenizer, pre-tokenizer, chat\n"
          "template) is carried over unchanged; norms and biases stay F32. Works on quantised bases too.\n\n"
          "  -m, --model FILE       base model GGUF\n"
          "      --lora FILE[:S]    adapter, optionally scaled (repeatable; they add up)\n"
          "  -o, --out FILE         merged model GGUF\n"
          "      --type T           f32, f16 (default), bf16 or q8_0 (matrices whose rows do not split into\n"
          "                         q8_0 blocks are written f16)\n"
          "  -t, --threads N        threads\n"
          "  -h, --help             this help\n",
          f);
}

int cmd_merge(int argc, char **argv) {
    enum { O_LORA = 256, O_TYPE };
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"lora", required_argument, 0, O_LORA},
                                         {"out", required_argument, 0, 'o'},   {"type", required_argument, 0, O_TYPE},
                                         {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *out = NULL;
    const char *specs[64];
    int n = 0, threads = 0, c;
    uint32_t type = IA_TYPE_F16;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:o:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'o': out = optarg; break;
        case O_LORA:
            if (n >= 64) return cli_fail("merge: at most 64 --lora adapters"), 2;
            specs[n++] = optarg;
            break;
        case O_TYPE: {
            int t = ia_type_from_name(optarg);
            if (t != IA_TYPE_F32 && t != IA_TYPE_F16 && t != IA_TYPE_BF16 && t != IA_TYPE_Q8_0)
                return cli_fail("--type expects f32, f16, bf16 or q8_0, got '%s'", optarg), 2;
            type = (uint32_t)t;
            break;
        }
        case 't': if (!cli_parse_int("--threads", optarg, 1, 1024, &threads)) return 2; break;
        case 'h': merge_help(stdout); return 0;
        default: return cli_usage_error("merge");
        }
    }
    if (!model || !out || !n) return cli_fail("merge: -m BASE, --lora ADAPTER and --out FILE are required"), cli_usage_error("merge");
    if (optind < argc) return cli_fail("merge: unexpected argument '%s'", argv[optind]), cli_usage_error("merge");
    ia_set_threads(threads);
    char paths[64][4096];
    const char *pp[64];
    float scales[64];
    for (int i = 0; i < n; i++) {
        split_spec(specs[i], paths[i], sizeof paths[i], &scales[i]);
        pp[i] = paths[i];
    }
    ia_merge_opts mo = {model, pp, scales, n, out, type};
    ia_error err = {0};
    if (ia_merge_lora(&mo, &err) != IA_OK) return cli_fail_err(&err);
    fprintf(stderr, "iteralign: merged %d adapter%s into %s (%s)\n", n, n == 1 ? "" : "s", out, ia_type_name(type));
    return 0;
}
