/* align_internal.h — what the files of src/align/ share: the teacher (an HTTP endpoint through the
 * client, or a local GGUF run in-process) with every call recorded in the run store, the
 * constitution registry and output writers. Not part of the module's API. */
#ifndef IA_ALIGN_INTERNAL_H
#define IA_ALIGN_INTERNAL_H

#include "align/align.h"
#include "net/client.h"
#include "util/util.h"

/* ---- teacher ---- */
typedef struct ia_teacher ia_teacher;

typedef struct ia_teacher_req {
    const ia_msgs *msgs;
    int max_tokens;
    ia_client_format format;  /* NONE, JSON_OBJECT or JSON_SCHEMA */
    const char *json_schema;
} ia_teacher_req;

typedef struct ia_teacher_res {
    ia_call_status status;    /* OK, UNUSABLE or FAILED (never SENT/NONE after a successful run) */
    char *content;            /* reply text (OK), else NULL */
    char *error;              /* why it was unusable / failed */
    char call_key[65];
    bool from_store;          /* answered by the store: no request was sent */
} ia_teacher_res;

void ia_teacher_res_clear(ia_teacher_res *r);

/* spec: "http(s)://HOST[:PORT]/v1" or "local:PATH.gguf". model: the model name to request (may be
 * NULL for a local teacher). The store records every call. */
ia_teacher *ia_teacher_open(const char *spec, const char *model, const ia_align_config *cfg, ia_store *store,
                            ia_error *err);
void ia_teacher_free(ia_teacher *t);
const char *ia_teacher_describe(const ia_teacher *t); /* "http://... (model)" for messages */

/* Runs n requests (role: "judge", "propose"). Answers already in the store are reused without
 * sending; the rest are sent (up to the concurrency limit) and each outcome is committed as soon
 * as it arrives. Unusable replies and refused requests (400/413/422) are recorded as such in out[i]
 * and do not fail the call; an unreachable teacher, a rejected key, an unknown model or a server
 * that keeps failing does (the returned error names the endpoint and status). progress may be
 * NULL. */
int ia_teacher_run(ia_teacher *t, const char *role, const ia_teacher_req *reqs, int n, ia_teacher_res *out,
                   void (*progress)(void *ud, int done, int total), void *ud, ia_error *err);

/* ---- files ---- */
/* Writes data to path through a temporary file and a rename (a crash never leaves half a file). */
int ia_write_file_atomic(const char *path, const char *data, size_t len, ia_error *err);
/* Lowercase hex SHA-256 of a file (out: 65 bytes); *size receives its size. */
int ia_file_sha256(const char *path, char out[65], int64_t *size, ia_error *err);

/* Outputs derived from the store (idempotent; rewritten whenever they may have changed). */
int ia_align_write_outputs(ia_store *s, const char *dir, ia_error *err);

#endif /* IA_ALIGN_INTERNAL_H */
