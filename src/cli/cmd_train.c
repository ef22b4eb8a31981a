/* cmd_train.c — `iteralign train`: LoRA or full supervised fine-tuning from a JSONL file. */
#include "cli.h"
#include "tensor/tensor.h"
#include "train/train.h"

#include <stdlib.h>
#include <unistd.h>

static void train_help(FILE *f) {
    fputs("usage: iteralign train -m BASE --data FILE.jsonl --out OUT.gguf [options]\n\n"
          "Supervised fine-tuning on the CPU. The loss falls on assistant tokens only (the completion for\n"
          "prompt/completion lines). Data: one JSON object per line, any of\n"
          "  {\"messages\":[{\"role\":\"user\",\"content\":\"...\"},{\"role\":\"assistant\",\"content\":\"...\"}]}\n"
          "  {\"conversations\":[{\"from\":\"human\",\"value\":\"...\"},{\"from\":\"gpt\",\"value\":\"...\"}]}\n"
          "  {\"prompt\":\"...\",\"completion\":\"...\"}\n"
          "A malformed line is reported with its line number and nothing trains.\n\n"
          "input and output:\n"
          "  -m, --model FILE           base model GGUF (llama or qwen2; LoRA works over any tensor type)\n"
          "      --data FILE            training data (JSONL)\n"
          "  -o, --out FILE             LoRA: adapter GGUF (llama.cpp --lora); full: model GGUF\n"
          "      --method lora|full     default lora (full needs an F32/F16/BF16 base)\n"
          "      --chat-template NAME   template for the data (chatml, llama2, llama3, zephyr, ..., or plain);\n"
          "                             default: the model's own, plain (prompt + completion + EOS) if it has none\n"
          "      --init-adapter FILE    continue training this adapter (its rank and targets)\n"
          "LoRA:\n"
          "  -r, --rank N               rank (default 8)\n"
          "      --alpha X              alpha; the scale is alpha/rank (default 16)\n"
          "      --dropout X            dropout on the LoRA input (default 0)\n"
          "      --targets LIST         comma list of q,k,v,o,gate,up,down (default all)\n"
          "optimisation:\n"
          "      --epochs N             default 3\n"
          "  -b, --batch-size N         examples (padding) or rows of --max-len tokens (packing) per micro-batch (4)\n"
          "      --grad-accum N         micro-batches per optimizer step (default 1)\n"
          "      --lr X                 peak learning rate (default 1e-4; 1e-5 with --method full)\n"
          "      --schedule NAME        constant, linear or cosine (default cosine)\n"
          "      --warmup-ratio X       fraction of steps of linear warm-up (default 0.03)\n"
          "      --weight-decay X       AdamW decoupled weight decay (default 0)\n"
          "      --beta1 X, --beta2 X   AdamW betas (0.9, 0.999)\n"
          "      --adam-eps X           AdamW epsilon (1e-8)\n"
          "      --grad-clip X          clip the global gradient norm (default 1, 0 = off)\n"
          "      --max-len N            tokens per example; longer ones are truncated (default 512)\n"
          "      --pack                 pack several examples per micro-batch (each still attends only to itself)\n"
          "      --recompute            recompute activations in the backward pass (less memory, ~30% slower)\n"
          "      --compute f32|bf16     precision of the products with the base weights (forward and input\n"
          "                             gradient); bf16 rounds both sides to bf16 as AVX512_BF16 does, ~1.5x\n"
          "                             faster where the CPU has it (default f32; LoRA, gradients of trained\n"
          "                             weights, attention and the optimizer stay f32)\n"
          "      --seed N               same seed, same result (default 0)\n"
          "run:\n"
          "      --checkpoint FILE      save optimizer + weights every --checkpoint-every steps; resume from it\n"
          "      --checkpoint-every N   default 50\n"
          "      --log FILE             JSONL log: step, epoch, loss, lr, grad_norm, tokens, tokens_per_s, elapsed_s\n"
          "  -t, --threads N            threads (default: all cores)\n"
          "  -q, --quiet                no progress line\n"
          "  -h, --help                 this help\n",
          f);
}

typedef struct prog_ud {
    bool tty;
    bool quiet;
} prog_ud;

static void progress_cb(void *ud, const ia_train_progress *p) {
    const prog_ud *u = ud;
    if (u->quiet) return;
    if (u->tty) {
        fprintf(stderr, "\rtrain: step %d/%d  epoch %d  loss %.4f  lr %.3g  grad norm %.3f  %.0f tokens/s  %.0f s ",
                p->step, p->total_steps, p->epoch, p->loss, p->lr, p->grad_norm, p->tokens_per_s, p->elapsed_s);
        if (p->step == p->total_steps) fputc('\n', stderr);
    }
}

int cmd_train(int argc, char **argv) {
    enum { O_DATA = 256, O_METHOD, O_TMPL, O_INIT, O_ALPHA, O_DROP, O_TGT, O_EPOCHS, O_ACCUM, O_LR, O_SCHED, O_WARM,
           O_WD, O_B1, O_B2, O_EPS, O_CLIP, O_MAXLEN, O_PACK, O_RECOMP, O_SEED, O_CKPT, O_CKEV, O_LOG,
           O_COMPUTE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},        {"data", required_argument, 0, O_DATA},
        {"out", required_argument, 0, 'o'},          {"method", required_argument, 0, O_METHOD},
        {"chat-template", required_argument, 0, O_TMPL}, {"init-adapter", required_argument, 0, O_INIT},
        {"rank", required_argument, 0, 'r'},         {"alpha", required_argument, 0, O_ALPHA},
        {"dropout", required_argument, 0, O_DROP},   {"targets", required_argument, 0, O_TGT},
        {"epochs", required_argument, 0, O_EPOCHS},  {"batch-size", required_argument, 0, 'b'},
        {"grad-accum", required_argument, 0, O_ACCUM}, {"lr", required_argument, 0, O_LR},
        {"schedule", required_argument, 0, O_SCHED}, {"warmup-ratio", required_argument, 0, O_WARM},
        {"weight-decay", required_argument, 0, O_WD}, {"beta1", required_argument, 0, O_B1},
        {"beta2", required_argument, 0, O_B2},       {"adam-eps", required_argument, 0, O_EPS},
        {"grad-clip", required_argument, 0, O_CLIP}, {"max-len", required_argument, 0, O_MAXLEN},
        {"pack", no_argument, 0, O_PACK},            {"recompute", no_argument, 0, O_RECOMP},
        {"compute", required_argument, 0, O_COMPUTE},
        {"seed", required_argument, 0, O_SEED},      {"checkpoint", required_argument, 0, O_CKPT},
        {"checkpoint-every", required_argument, 0, O_CKEV}, {"log", required_argument, 0, O_LOG},
        {"threads", required_argument, 0, 't'},      {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},               {0, 0, 0, 0}};
    ia_train_opts o = ia_train_opts_default();
    int threads = 0, c;
    bool lr_set = false;
    prog_ud pu = {isatty(2) != 0, false};
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:o:r:b:t:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.base_path = optarg; break;
        case O_DATA: o.data_path = optarg; break;
        case 'o': o.out_path = optarg; break;
        case O_METHOD:
            if (!strcmp(optarg, "lora")) o.method = IA_TRAIN_LORA;
            else if (!strcmp(optarg, "full")) o.method = IA_TRAIN_FULL;
            else return cli_fail("--method expects lora or full, got '%s'", optarg), 2;
            break;
        case O_TMPL: o.chat_template = optarg; break;
        case O_INIT: o.init_adapter = optarg; break;
        case 'r': if (!cli_parse_int("--rank", optarg, 1, 4096, &o.lora_rank)) return 2; break;
        case O_ALPHA: if (!cli_parse_float("--alpha", optarg, &o.lora_alpha)) return 2; break;
        case O_DROP: if (!cli_parse_float("--dropout", optarg, &o.lora_dropout)) return 2; break;
        case O_TGT: o.lora_targets = optarg; break;
        case O_EPOCHS: if (!cli_parse_int("--epochs", optarg, 1, 1000000, &o.epochs)) return 2; break;
        case 'b': if (!cli_parse_int("--batch-size", optarg, 1, 1 << 20, &o.batch_size)) return 2; break;
        case O_ACCUM: if (!cli_parse_int("--grad-accum", optarg, 1, 1 << 20, &o.grad_accum)) return 2; break;
        case O_LR: if (!cli_parse_float("--lr", optarg, &o.lr)) return 2; lr_set = true; break;
        case O_SCHED:
            if (!strcmp(optarg, "constant")) o.schedule = IA_LR_CONSTANT;
            else if (!strcmp(optarg, "linear")) o.schedule = IA_LR_LINEAR;
            else if (!strcmp(optarg, "cosine")) o.schedule = IA_LR_COSINE;
            else return cli_fail("--schedule expects constant, linear or cosine, got '%s'", optarg), 2;
            break;
        case O_WARM: if (!cli_parse_float("--warmup-ratio", optarg, &o.warmup_ratio)) return 2; break;
        case O_WD: if (!cli_parse_float("--weight-decay", optarg, &o.weight_decay)) return 2; break;
        case O_B1: if (!cli_parse_float("--beta1", optarg, &o.beta1)) return 2; break;
        case O_B2: if (!cli_parse_float("--beta2", optarg, &o.beta2)) return 2; break;
        case O_EPS: if (!cli_parse_float("--adam-eps", optarg, &o.eps)) return 2; break;
        case O_CLIP: if (!cli_parse_float("--grad-clip", optarg, &o.grad_clip)) return 2; break;
        case O_MAXLEN: if (!cli_parse_int("--max-len", optarg, 2, 1 << 20, &o.max_len)) return 2; break;
        case O_PACK: o.pack = true; break;
        case O_RECOMP: o.recompute = true; break;
        case O_COMPUTE:
            if (strcmp(optarg, "f32") != 0 && strcmp(optarg, "bf16") != 0)
                return cli_fail("train: --compute: '%s' is not f32 or bf16", optarg), 2;
            o.bf16 = strcmp(optarg, "bf16") == 0;
            break;
        case O_SEED: if (!cli_parse_u64("--seed", optarg, &o.seed)) return 2; break;
        case O_CKPT: o.checkpoint_path = optarg; break;
        case O_CKEV: if (!cli_parse_int("--checkpoint-every", optarg, 1, 1 << 30, &o.checkpoint_every)) return 2; break;
        case O_LOG: o.log_path = optarg; break;
        case 't': if (!cli_parse_int("--threads", optarg, 1, 1024, &threads)) return 2; break;
        case 'q': pu.quiet = true; break;
        case 'h': train_help(stdout); return 0;
        default: return cli_usage_error("train");
        }
    }
    if (!o.base_path) return cli_fail("train: -m BASE is required"), cli_usage_error("train");
    if (!o.data_path) return cli_fail("train: --data FILE is required"), cli_usage_error("train");
    if (!o.out_path) return cli_fail("train: --out FILE is required"), cli_usage_error("train");
    if (optind < argc) return cli_fail("train: unexpected argument '%s'", argv[optind]), cli_usage_error("train");
    if (o.method == IA_TRAIN_FULL && !lr_set) o.lr = 1e-5f; /* full FT wants a smaller step */
    ia_set_threads(threads);
    if (o.bf16 && !ia_cpu_has_bf16_dot())
        fprintf(stderr, "train: note: this CPU has no AVX512_BF16: --compute bf16 is emulated %s\n",
                strcmp(ia_cpu_kernel_name(), "scalar") ? "with AVX2 FMAs (the same numbers, slower than f32)"
                                                       : "in plain C (the same numbers, many times slower than f32)");
    o.progress = progress_cb;
    o.progress_ud = &pu;
    ia_error err = {0};
    ia_train_result r;
    if (ia_train(&o, &r, &err) != IA_OK) {
        if (pu.tty && !pu.quiet) fputc('\n', stderr);
        return cli_fail_err(&err);
    }
    fprintf(stderr, "iteralign: %d steps, loss %.4f -> %.4f, %.0f tokens/s, peak memory %.1f MiB; wrote %s\n", r.steps,
            r.first_loss, r.final_loss, r.tokens_per_s, (double)r.peak_bytes / 1048576.0, o.out_path);
    return 0;
}
