/* main.c — the `iteralign` command: dispatches to one sub-command per file in src/cli/. */
#include "cli.h"
#include "tensor/tensor.h"

#include <stdlib.h>

static const cli_command commands[] = {
    {"info", "show a GGUF model's metadata, tensors, tokenizer and chat template", cmd_info},
    {"tokenize", "turn text into token ids with a model's tokenizer", cmd_tokenize},
    {"generate", "generate completions for one prompt or a JSONL file of prompts (batched)", cmd_generate},
    {"make-model", "write a random-weight GGUF model at a given shape and tensor type", cmd_make_model},
    {"align", "align a model with IterAlign (resumable run folder); alone: an offline demonstration", cmd_align},
    {"status", "where an alignment run stands: stage, counts, rates before and after", cmd_status},
    {"constitutions", "the constitutions an alignment run found, with their provenance", cmd_constitutions},
    {"train", "LoRA or full supervised fine-tuning from a JSONL file (CPU)", cmd_train},
    {"merge", "merge LoRA adapters into a model GGUF (f32, f16, bf16 or q8_0)", cmd_merge},
    {"export-peft", "write a LoRA adapter GGUF as a Hugging Face PEFT adapter directory", cmd_export_peft},
    {"serve", "serve the model over an OpenAI-compatible HTTP API (batched, streaming, logprobs)", cmd_serve},
    {"eval", "evaluate a model: TruthfulQA MC1/MC2/true-false, HHH, harmful and refusal rates", cmd_eval},
    {"report", "write report.md/report.html (SVG charts) from an alignment run folder", cmd_report},
    {"bench", "measure prefill, decode, batched generation and scoring speed (checked) on this CPU", cmd_bench},
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
    fprintf(f,
            "iteralign %s — align language models with the IterAlign method, on the CPU.\n\n"
            "usage: iteralign <command> [options]   (iteralign <command> --help for its options)\n\ncommands:\n",
            IA_VERSION);
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nenvironment:\n"
               "  IA_PRECISION=fast|exact|bf16  fast (default): int8 activations for Q8_0/Q4_0/Q4_K weights, bf16\n"
               "                                for BF16 ones; exact: f32 activations everywhere; bf16: fast, and\n"
               "                                F32/F16 weights multiplied as their bf16 roundings (faster, less exact)\n"
               "  IA_KERNEL=scalar|avx2|avx512  force a kernel family (default: the best this CPU runs)\n"
               "  IA_SPIN_US=N                  microseconds an idle worker thread spins before sleeping (default 50)\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("iteralign %s\n", IA_VERSION);
        return 0;
    }
    /* the library reads anything else as fast: say so before a long run goes the wrong way */
    const char *prec = getenv("IA_PRECISION");
    if (prec && *prec && ia_precision_from_name(prec) < 0) {
        fprintf(stderr, "iteralign: IA_PRECISION='%s' is not one of fast, exact, bf16\n", prec);
        return 2;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "iteralign: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
