/* cmd_make_model.c — `iteralign make-model`: random-weight GGUF models at real shapes for tests and benchmarks. */
#include "cli.h"
#include "model/model.h"

static void make_model_help(FILE *f) {
    fputs("usage: iteralign make-model --vocab VOCAB.gguf --out FILE [options]\n\n"
          "Writes a random-weight GGUF model (weights ~ N(0, 0.02)) whose tokenizer is copied from VOCAB.gguf,\n"
          "through iteralign's own GGUF writer. Useful to test and benchmark at real model shapes.\n\n"
          "options:\n"
          "      --preset NAME      smollm2-135m | qwen2.5-0.5b | tinyllama-1.1b | tiny-llama | tiny-qwen2\n"
          "      --vocab FILE       GGUF whose tokenizer.* metadata is copied (required)\n"
          "      --out FILE         output path (required)\n"
          "      --type TYPE        matrix type: f32 f16 bf16 q8_0 q4_0 q4_k q6_k (default f32)\n"
          "      --arch NAME        llama | qwen2 (overrides the preset)\n"
          "      --n-vocab N        pad the vocabulary to N tokens (default: the vocabulary's size)\n"
          "      --n-embd N  --n-layer N  --n-head N  --n-head-kv N  --n-ff N  --n-ctx N\n"
          "      --rope-base X      rope frequency base\n"
          "      --tied / --untied  share the output matrix with the embeddings, or not\n"
          "      --seed N           random seed (default 42)\n"
          "  -h, --help             this help\n",
          f);
}

int cmd_make_model(int argc, char **argv) {
    enum { O_PRESET = 256, O_VOCAB, O_OUT, O_TYPE, O_ARCH, O_NVOCAB, O_EMBD, O_LAYER, O_HEAD, O_HEADKV, O_FF,
           O_CTX, O_ROPE, O_TIED, O_UNTIED, O_SEED };
    static const struct option opts[] = {
        {"preset", required_argument, 0, O_PRESET}, {"vocab", required_argument, 0, O_VOCAB},
        {"out", required_argument, 0, O_OUT},       {"type", required_argument, 0, O_TYPE},
        {"arch", required_argument, 0, O_ARCH},     {"n-vocab", required_argument, 0, O_NVOCAB},
        {"n-embd", required_argument, 0, O_EMBD},   {"n-layer", required_argument, 0, O_LAYER},
        {"n-head", required_argument, 0, O_HEAD},   {"n-head-kv", required_argument, 0, O_HEADKV},
        {"n-ff", required_argument, 0, O_FF},       {"n-ctx", required_argument, 0, O_CTX},
        {"rope-base", required_argument, 0, O_ROPE}, {"tied", no_argument, 0, O_TIED},
        {"untied", no_argument, 0, O_UNTIED},       {"seed", required_argument, 0, O_SEED},
        {"help", no_argument, 0, 'h'},              {0, 0, 0, 0}};
    ia_mkmodel_opts o;
    memset(&o, 0, sizeof o);
    ia_error err = {0};
    if (ia_mkmodel_preset("tiny-llama", &o, &err) != IA_OK) return cli_fail_err(&err);
    o.type = IA_TYPE_F32;
    o.seed = 42;
    const char *out = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_PRESET: {
            ia_mkmodel_opts p = o;
            if (ia_mkmodel_preset(optarg, &p, &err) != IA_OK) return cli_fail_err(&err);
            p.vocab_path = o.vocab_path;
            p.type = o.type;
            p.seed = o.seed;
            o = p;
            break;
        }
        case O_VOCAB: o.vocab_path = optarg; break;
        case O_OUT: out = optarg; break;
        case O_TYPE: {
            int t = ia_type_from_name(optarg);
            const ia_type_traits *tr = t >= 0 ? ia_type_traits_get((uint32_t)t) : NULL;
            if (!tr || !tr->supported) return cli_fail("--type: '%s' is not one of f32 f16 bf16 q8_0 q4_0 q4_k q6_k", optarg);
            o.type = (uint32_t)t;
            break;
        }
        case O_ARCH: o.arch = optarg; break;
        case O_NVOCAB: if (!cli_parse_int("--n-vocab", optarg, 1, 1 << 24, &o.n_vocab)) return 2; break;
        case O_EMBD: if (!cli_parse_int("--n-embd", optarg, 1, 1 << 16, &o.n_embd)) return 2; break;
        case O_LAYER: if (!cli_parse_int("--n-layer", optarg, 1, 1024, &o.n_layer)) return 2; break;
        case O_HEAD: if (!cli_parse_int("--n-head", optarg, 1, 1024, &o.n_head)) return 2; break;
        case O_HEADKV: if (!cli_parse_int("--n-head-kv", optarg, 1, 1024, &o.n_head_kv)) return 2; break;
        case O_FF: if (!cli_parse_int("--n-ff", optarg, 1, 1 << 20, &o.n_ff)) return 2; break;
        case O_CTX: if (!cli_parse_int("--n-ctx", optarg, 1, 1 << 24, &o.n_ctx)) return 2; break;
        case O_ROPE: if (!cli_parse_float("--rope-base", optarg, &o.rope_base)) return 2; break;
        case O_TIED: o.tied = true; break;
        case O_UNTIED: o.tied = false; break;
        case O_SEED: if (!cli_parse_u64("--seed", optarg, &o.seed)) return 2; break;
        case 'h': make_model_help(stdout); return 0;
        default: return cli_usage_error("make-model");
        }
    }
    if (!o.vocab_path || !out) return cli_fail("make-model: --vocab and --out are required"), cli_usage_error("make-model");
    double t0 = ia_time_now();
    if (ia_mkmodel_write(&o, out, &err) != IA_OK) return cli_fail_err(&err);
    fprintf(stderr, "iteralign: wrote %s (%s, %s, E %d, L %d, H %d/%d, F %d) in %.1f s\n", out, o.arch,
            ia_type_name(o.type), o.n_embd, o.n_layer, o.n_head, o.n_head_kv, o.n_ff, ia_time_now() - t0);
    return 0;
}
