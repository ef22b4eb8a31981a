/* cmd_info.c — `iteralign info`: a GGUF file's metadata, tensors, tokenizer and chat template. */
#include "cli.h"
#include "model/model.h"

#include <inttypes.h>

static void info_help(FILE *f) {
    fputs("usage: iteralign info [options] MODEL.gguf\n\n"
          "Shows the file's metadata (arrays summarised), tensors (name, type, shape), the tokenizer, the\n"
          "detected chat template and whether iteralign can run it as a model.\n\n"
          "options:\n"
          "      --json        machine-readable output (arrays of up to 16 elements in full)\n"
          "      --no-tensors  omit the tensor list\n"
          "  -h, --help        this help\n",
          f);
}

/* A JSON value for KV i (arrays longer than `max_arr` become {"type":..,"n":..}). */
static json_t *info_kv_json(const gguf_file *g, int64_t i, uint64_t max_arr) {
    gguf_type t = gguf_kv_type(g, i);
    ia_error err = {0};
    if (t == GGUF_TYPE_ARRAY) {
        gguf_type et = gguf_kv_arr_type(g, i);
        uint64_t n = gguf_kv_arr_n(g, i);
        if (n > max_arr || et == GGUF_TYPE_ARRAY)
            return json_pack("{s:s,s:s,s:I}", "type", "array", "elem_type", gguf_type_name(et), "n", (json_int_t)n);
        json_t *a = json_array();
        for (uint64_t j = 0; j < n; j++) {
            if (et == GGUF_TYPE_STRING) {
                size_t len;
                const char *s = gguf_kv_get_arr_str(g, i, j, &len);
                json_array_append_new(a, json_stringn_nocheck(s, len));
            } else if (et == GGUF_TYPE_FLOAT32 || et == GGUF_TYPE_FLOAT64) {
                double d = 0;
                gguf_kv_get_arr_f64(g, i, j, &d, &err);
                json_array_append_new(a, json_real(d));
            } else {
                int64_t v = 0;
                gguf_kv_get_arr_i64(g, i, j, &v, &err);
                json_array_append_new(a, json_integer(v));
            }
        }
        return a;
    }
    if (t == GGUF_TYPE_STRING) {
        const char *s = NULL;
        gguf_kv_get_str(g, i, &s, &err);
        return json_string_nocheck(s ? s : "");
    }
    if (t == GGUF_TYPE_BOOL) {
        bool b = false;
        gguf_kv_get_bool(g, i, &b, &err);
        return json_boolean(b);
    }
    if (t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64) {
        double d = 0;
        gguf_kv_get_f64(g, i, &d, &err);
        return json_real(d);
    }
    int64_t v = 0;
    if (gguf_kv_get_i64(g, i, &v, &err) != IA_OK) {
        uint64_t u = 0;
        gguf_kv_get_u64(g, i, &u, &err);
        return json_integer((json_int_t)u);
    }
    return json_integer(v);
}

int cmd_info(int argc, char **argv) {
    static const struct option opts[] = {
        {"json", no_argument, 0, 'j'}, {"no-tensors", no_argument, 0, 'n'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    bool json = false, tensors = true;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = true; break;
        case 'n': tensors = false; break;
        case 'h': info_help(stdout); return 0;
        default: return cli_usage_error("info");
        }
    }
    if (optind >= argc) return cli_fail("info: MODEL is required"), cli_usage_error("info");
    const char *path = argv[optind];
    ia_error err = {0};
    gguf_file *g = gguf_file_open(path, &err);
    if (!g) return cli_fail_err(&err);

    json_t *root = json_object();
    json_object_set_new(root, "path", json_string_nocheck(path));
    json_object_set_new(root, "gguf_version", json_integer(gguf_file_version(g)));
    json_object_set_new(root, "file_size", json_integer((json_int_t)gguf_file_size(g)));
    json_t *meta = json_object();
    for (int64_t i = 0; i < gguf_kv_count(g); i++)
        json_object_set_new(meta, gguf_kv_key(g, i), info_kv_json(g, i, json ? 16 : 8));
    json_object_set_new(root, "metadata", meta);
    json_t *tl = json_array();
    uint64_t n_params = 0;
    for (int64_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor_info *ti = gguf_tensor_get(g, i);
        json_t *shape = json_array();
        uint64_t ne = 1;
        for (uint32_t d = 0; d < ti->n_dims; d++) {
            json_array_append_new(shape, json_integer(ti->ne[d]));
            ne *= (uint64_t)ti->ne[d];
        }
        n_params += ne;
        json_array_append_new(tl, json_pack("{s:s,s:s,s:o,s:I}", "name", ti->name, "type", ia_type_name(ti->type),
                                            "ne", shape, "bytes", (json_int_t)ti->nbytes));
    }
    json_object_set_new(root, "n_tensors", json_integer(gguf_tensor_count(g)));
    json_object_set_new(root, "n_params", json_integer((json_int_t)n_params));
    if (tensors) json_object_set_new(root, "tensors", tl);
    else json_decref(tl);

    /* Tokenizer and template work on vocabulary-only files too. */
    ia_error terr = {0};
    ia_tokenizer *tok = ia_tokenizer_load(g, &terr);
    if (tok) {
        json_object_set_new(root, "tokenizer",
                            json_pack("{s:s,s:s,s:i,s:i,s:i,s:b}", "model", ia_tokenizer_model_name(tok), "pre",
                                      ia_tokenizer_pre_name(tok), "n_vocab", ia_tokenizer_n_vocab(tok), "bos",
                                      ia_tokenizer_bos(tok), "eos", ia_tokenizer_eos(tok), "add_bos",
                                      ia_tokenizer_add_bos(tok)));
        ia_tokenizer_free(tok);
    } else {
        json_object_set_new(root, "tokenizer_error", json_string_nocheck(terr.msg));
    }
    const char *tmpl = NULL;
    if (gguf_find_str(g, "tokenizer.chat_template", &tmpl, &terr) == 1) {
        ia_chat_template_id id = ia_chat_template_detect(tmpl);
        json_object_set_new(root, "chat_template", json_string(id ? ia_chat_template_name(id) : "unknown"));
    } else {
        json_object_set_new(root, "chat_template", json_null());
    }
    gguf_file_free(g);
    ia_model *m = ia_model_load(path, &terr);
    if (m) {
        json_object_set_new(root, "model", json_pack("{s:s,s:i,s:i}", "arch", ia_model_arch(m), "n_vocab",
                                                     ia_model_n_vocab(m), "n_ctx_train", ia_model_n_ctx_train(m)));
        ia_model_free(m);
    } else {
        json_object_set_new(root, "model_error", json_string_nocheck(terr.msg));
    }

    if (json) {
        cli_json_print(root);
    } else {
        printf("%s: GGUF v%d, %" PRId64 " bytes, %" PRId64 " tensors, %.2fM parameters\n", path,
               (int)json_integer_value(json_object_get(root, "gguf_version")),
               (int64_t)json_integer_value(json_object_get(root, "file_size")),
               (int64_t)json_integer_value(json_object_get(root, "n_tensors")), (double)n_params / 1e6);
        printf("\nmetadata:\n");
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            if (s && strlen(s) > 160) strcpy(s + 150, "...");
            printf("  %-44s %s\n", k, s ? s : "?");
            free(s);
        }
        if (tensors) {
            printf("\ntensors:\n");
            json_t *t;
            size_t i;
            json_array_foreach(json_object_get(root, "tensors"), i, t) {
                char *s = json_dumps(json_object_get(t, "ne"), JSON_COMPACT);
                printf("  %-36s %-6s %s\n", json_string_value(json_object_get(t, "name")),
                       json_string_value(json_object_get(t, "type")), s ? s : "");
                free(s);
            }
        }
        json_t *tk = json_object_get(root, "tokenizer");
        if (tk) {
            char *s = json_dumps(tk, JSON_COMPACT);
            printf("\ntokenizer: %s\n", s ? s : "");
            free(s);
        } else {
            printf("\ntokenizer: %s\n", json_string_value(json_object_get(root, "tokenizer_error")));
        }
        json_t *ct = json_object_get(root, "chat_template");
        printf("chat template: %s\n", json_is_string(ct) ? json_string_value(ct) : "(none)");
        json_t *mo = json_object_get(root, "model");
        if (mo) printf("model: runs (%s)\n", json_string_value(json_object_get(mo, "arch")));
        else printf("model: cannot run: %s\n", json_string_value(json_object_get(root, "model_error")));
    }
    json_decref(root);
    return 0;
}
