/* cmd_tokenize.c — `iteralign tokenize`: text to token ids with a GGUF file's tokenizer. */
#include "cli.h"
#include "tokenizer/tokenizer.h"

#include <stdlib.h>

static void tokenize_help(FILE *f) {
    fputs("usage: iteralign tokenize -m MODEL [options] TEXT\n"
          "       iteralign tokenize -m MODEL [options] -f FILE\n\n"
          "Prints the token ids of TEXT (space-separated, as llama.cpp's test vectors list them).\n"
          "By default no BOS/EOS is added and special-token text is left as plain text.\n\n"
          "options:\n"
          "  -m, --model FILE   GGUF model or vocabulary-only GGUF\n"
          "  -f, --file FILE    read the text from FILE (exact bytes) instead of the argument\n"
          "      --bos          add BOS/EOS as the model's metadata says\n"
          "      --special      parse special-token text (e.g. <|im_start|>) into special tokens\n"
          "      --pieces       print each id with the text it stands for\n"
          "      --json         print a JSON array of ids\n"
          "  -h, --help         this help\n",
          f);
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"file", required_argument, 0, 'f'},
        {"bos", no_argument, 0, 'b'},         {"special", no_argument, 0, 's'},
        {"pieces", no_argument, 0, 'p'},      {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *model = NULL, *file = NULL;
    bool bos = false, special = false, pieces = false, json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'f': file = optarg; break;
        case 'b': bos = true; break;
        case 's': special = true; break;
        case 'p': pieces = true; break;
        case 'j': json = true; break;
        case 'h': tokenize_help(stdout); return 0;
        default: return cli_usage_error("tokenize");
        }
    }
    if (!model) return cli_fail("tokenize: -m MODEL is required"), cli_usage_error("tokenize");
    if (!file && optind >= argc) return cli_fail("tokenize: give TEXT or -f FILE"), cli_usage_error("tokenize");
    ia_error err = {0};
    char *text = NULL;
    size_t len = 0;
    if (file) {
        text = ia_file_read(file, &len, &err);
        if (!text) return cli_fail_err(&err);
    } else {
        text = ia_strdup(argv[optind]);
        len = strlen(text);
    }
    int rc = 1;
    gguf_file *g = gguf_file_open(model, &err);
    ia_tokenizer *t = g ? ia_tokenizer_load(g, &err) : NULL;
    if (!t) {
        if (g && err.msg[0]) ia_error_prefix(&err, "%s", model);
        cli_fail_err(&err);
        goto out;
    }
    int32_t *ids = NULL;
    int n = ia_tokenizer_encode(t, text, len, bos, special, &ids, &err);
    if (n < 0) { cli_fail_err(&err); goto out; }
    if (json) {
        json_t *arr = json_array();
        for (int i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
        cli_json_print(arr);
        json_decref(arr);
    } else if (pieces) {
        char buf[256];
        for (int i = 0; i < n; i++) {
            int k = ia_tokenizer_token_to_piece(t, ids[i], buf, (int)sizeof buf - 1, true);
            if (k > (int)sizeof buf - 1) k = (int)sizeof buf - 1;
            buf[k < 0 ? 0 : k] = 0;
            printf("%6d -> '%s'\n", ids[i], buf);
        }
    } else {
        for (int i = 0; i < n; i++) printf(" %d", ids[i]);
        printf("\n");
    }
    ia_free(ids);
    rc = 0;
out:
    ia_tokenizer_free(t);
    gguf_file_free(g);
    ia_free(text);
    return rc;
}
