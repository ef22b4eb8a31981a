/* engine.h — the continuous-batching scheduler: requests are admitted into free KV-cache slots and
 * every step runs ONE forward for all active sequences (prompt chunks and single decode tokens),
 * then samples each sequence and checks its stopping rules. ia_generate, the server and the
 * alignment loop all run on it. */
#ifndef IA_ENGINE_H
#define IA_ENGINE_H

#include "model/model.h"
#include "sample/sample.h"

#include <pthread.h>

typedef struct ia_engine ia_engine;

typedef struct ia_request {
    const int32_t *prompt;  /* [n_prompt] prompt ids (copied at submit), n_prompt >= 1 */
    int n_prompt;
    ia_sampling sampling;
    /* Streaming: called from the stepping thread with text that is final (held back while it could
     * still be the start of a stop string). May be NULL. */
    void (*on_text)(void *ud, const char *text, size_t len);
    /* Called once when the sequence finishes, from the stepping thread. May be NULL. */
    void (*on_done)(void *ud, int request_id);
    void *ud;               /* callbacks run with the engine's lock held: they must not call the engine */
} ia_request;

/* n_slots sequences decode together; each has n_ctx positions; a step carries at most n_batch
 * tokens (decode tokens first, then prompt chunks). */
ia_engine *ia_engine_init(ia_model *m, int n_slots, int n_ctx, int n_batch, ia_error *err);
void ia_engine_free(ia_engine *e);

/* Queues a request (thread-safe). Returns its id (>= 0) or -1 (err set: empty prompt, prompt
 * longer than the context, out of memory). */
int ia_engine_submit(ia_engine *e, const ia_request *r, ia_error *err);
/* Runs one step: admit waiting requests, one forward over every active sequence, sample, stop.
 * Returns the number of sequences still active or waiting (0 = idle), or -1 on error (err set; the
 * active sequences are then finished with what they have). Call from one thread at a time. */
int ia_engine_step(ia_engine *e, ia_error *err);
/* Moves a finished request's completion into *out (1), or returns 0 if it is not finished yet.
 * After a take the id is free and may be given to a later submission. */
int ia_engine_take(ia_engine *e, int id, ia_completion *out);
/* Cancels a request (thread-safe): it finishes at the next step with what it has. */
void ia_engine_cancel(ia_engine *e, int id);
int ia_engine_pending(ia_engine *e);

#endif /* IA_ENGINE_H */
