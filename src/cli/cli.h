/* cli.h — shared pieces of the command-line front end (a thin layer over the library). */
#ifndef IA_CLI_H
#define IA_CLI_H

#include "iteralign.h"
#include "util/util.h"

#include <getopt.h>
#include <jansson.h>

typedef struct cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} cli_command;

/* Prints "iteralign: <msg>" to stderr; returns the exit status 1. */
int cli_fail(const char *fmt, ...) IA_PRINTF(1, 2);
/* Prints the error's message and returns exit status 1. */
int cli_fail_err(const ia_error *err);
/* Parses an int / float option value, failing with a message naming the option. */
bool cli_parse_int(const char *opt, const char *s, long lo, long hi, int *out);
bool cli_parse_float(const char *opt, const char *s, float *out);
bool cli_parse_u64(const char *opt, const char *s, uint64_t *out);
/* Reports an unknown option / missing argument from getopt and returns 2. */
int cli_usage_error(const char *cmd);
/* Dumps a JSON value on one line to stdout followed by a newline. */
void cli_json_print(json_t *v);
/* A JSON string for bytes that may not be valid UTF-8 (invalid bytes become U+FFFD). */
json_t *cli_json_text(const char *s, size_t len);

int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_make_model(int argc, char **argv);
int cmd_align(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_constitutions(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_export_peft(int argc, char **argv);
/* Applies "FILE[:SCALE]" (a --lora option value) to a loaded model at run time (cmd_merge.c). */
int cli_lora_apply(ia_model *m, const char *spec, ia_error *err);
int cmd_serve(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
