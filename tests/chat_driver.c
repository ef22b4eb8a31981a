/* chat_driver.c — command-line shim over the chat-template calls, for tests/t_chat_templates.sh:
 *   chat_driver detect FILE                 prints the name ia_chat_template_detect gives FILE's text
 *   chat_driver apply NAME ADD_ASS CONV [EOS] writes ia_chat_apply_eos's bytes to stdout (ADD_ASS 0|1)
 *   chat_driver strip-bos BOS FILE          writes FILE's text without its leading BOS text
 * CONV holds the messages as role NUL content NUL role NUL content NUL ..., so any bytes but NUL
 * survive the trip from the Python oracle unchanged. */
#include "chat/chat.h"

#include <stdlib.h>

static int fail(const char *what) {
    fprintf(stderr, "chat_driver: %s\n", what);
    return 2;
}

static int cmd_apply(const char *name, const char *add_ass, const char *path, const char *eos) {
    ia_error err = {0};
    size_t len = 0;
    char *data = ia_file_read(path, &len, &err);
    if (!data) return fail(err.msg);
    /* split into NUL-terminated fields; ia_file_read adds one more NUL after the data */
    int n_fields = 0;
    for (size_t i = 0; i < len; i++) n_fields += data[i] == 0;
    if (n_fields % 2) { ia_free(data); return fail("CONV must hold role/content pairs"); }
    int n = n_fields / 2;
    ia_chat_msg *msgs = ia_calloc((size_t)(n ? n : 1), sizeof *msgs);
    if (!msgs) { ia_free(data); return fail("out of memory"); }
    const char *p = data;
    for (int i = 0; i < n; i++) {
        msgs[i].role = p;
        p += strlen(p) + 1;
        msgs[i].content = p;
        p += strlen(p) + 1;
    }
    ia_chat_template_id id = ia_chat_template_from_name(name);
    char *out = ia_chat_apply_eos(id, msgs, n, strcmp(add_ass, "1") == 0, eos, &err);
    int rc = 0;
    if (out) fwrite(out, 1, strlen(out), stdout);
    else rc = fail(err.msg);
    ia_free(out);
    ia_free(msgs);
    ia_free(data);
    return rc;
}

int main(int argc, char **argv) {
    ia_error err = {0};
    if (argc == 3 && strcmp(argv[1], "detect") == 0) {
        char *src = ia_file_read(argv[2], NULL, &err);
        if (!src) return fail(err.msg);
        printf("%s\n", ia_chat_template_name(ia_chat_template_detect(src)));
        ia_free(src);
        return 0;
    }
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "apply") == 0)
        return cmd_apply(argv[2], argv[3], argv[4], argc == 6 ? argv[5] : NULL);
    if (argc == 4 && strcmp(argv[1], "strip-bos") == 0) {
        char *src = ia_file_read(argv[3], NULL, &err);
        if (!src) return fail(err.msg);
        char *out = ia_chat_strip_bos(src, argv[2]);
        ia_free(src);
        if (!out) return fail("out of memory");
        fwrite(out, 1, strlen(out), stdout);
        ia_free(out);
        return 0;
    }
    return fail("usage: chat_driver detect FILE | apply NAME 0|1 CONV | strip-bos BOS FILE");
}
