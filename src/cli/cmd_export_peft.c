/* cmd_export_peft.c — `iteralign export-peft`: an adapter GGUF as a Hugging Face PEFT directory. */
#include "cli.h"
#include "train/train.h"

static void export_peft_help(FILE *f) {
    fputs("usage: iteralign export-peft --lora ADAPTER.gguf -m BASE.gguf --out DIR [--base-name NAME]\n\n"
          "Writes DIR/adapter_config.json and DIR/adapter_model.safetensors (f32) with Hugging Face names\n"
          "(base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight, ...), loadable with\n"
          "peft.PeftModel.from_pretrained. For llama models the q/k rows are un-permuted to HF order.\n\n"
          "      --lora FILE        adapter GGUF (llama.cpp format)\n"
          "  -m, --model FILE       the base model it was trained on\n"
          "  -o, --out DIR          output directory (created if needed)\n"
          "      --base-name NAME   base_model_name_or_path (default: the base's general.name)\n"
          "  -h, --help             this help\n",
          f);
}

int cmd_export_peft(int argc, char **argv) {
    enum { O_LORA = 256, O_NAME };
    static const struct option opts[] = {{"lora", required_argument, 0, O_LORA}, {"model", required_argument, 0, 'm'},
                                         {"out", required_argument, 0, 'o'},     {"base-name", required_argument, 0, O_NAME},
                                         {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    const char *lora = NULL, *model = NULL, *out = NULL, *name = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:o:h", opts, NULL)) != -1) {
        switch (c) {
        case O_LORA: lora = optarg; break;
        case 'm': model = optarg; break;
        case 'o': out = optarg; break;
        case O_NAME: name = optarg; break;
        case 'h': export_peft_help(stdout); return 0;
        default: return cli_usage_error("export-peft");
        }
    }
    if (!lora || !model || !out)
        return cli_fail("export-peft: --lora ADAPTER, -m BASE and --out DIR are required"), cli_usage_error("export-peft");
    if (optind < argc) return cli_fail("export-peft: unexpected argument '%s'", argv[optind]), cli_usage_error("export-peft");
    ia_error err = {0};
    if (ia_export_peft(lora, model, out, name, &err) != IA_OK) return cli_fail_err(&err);
    fprintf(stderr, "iteralign: wrote %s/adapter_config.json and %s/adapter_model.safetensors\n", out, out);
    return 0;
}
