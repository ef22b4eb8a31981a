/* test_util.h — shared helpers for the cmocka unit tests: paths to shipped data, temp files. */
#ifndef IA_TEST_UTIL_H
#define IA_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "iteralign.h"
#include "util/util.h"

/* Repository-relative data folder (tests run from the repository root). */
#define TEST_DATA "data"
#define TEST_STORIES TEST_DATA "/models/stories260K.gguf"

/* A fresh temporary folder for this test binary (tests/tmp/<name>), created on first use. */
static inline const char *test_tmpdir(void) {
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "tests/tmp/t%ld", (long)getpid());
        char cmd[300];
        snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
        if (system(cmd) != 0) return "/tmp";
    }
    return dir;
}

static inline void test_tmpfile(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", test_tmpdir(), name);
}

#endif
