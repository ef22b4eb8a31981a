/* logprobs.h — per-token log-probabilities of given token sequences (teacher forcing), batched:
 * prompt logprobs for the server's /v1/completions echo, and the logprobs of generated tokens. */
#ifndef IA_ENGINE_LOGPROBS_H
#define IA_ENGINE_LOGPROBS_H

#include "model/model.h"

#define IA_LOGPROBS_TOP_MAX 20 /* alternatives per position at most (OpenAI's top_logprobs limit) */

typedef struct ia_token_lp_job {
    const int32_t *ids;     /* [n] the sequence (BOS included if it has one); not copied */
    int n;                  /* tokens, >= 1 */
    int first;              /* first position whose logprob is wanted (>= 1; positions before it only
                               condition); first >= n asks for nothing */
    int top_k;              /* alternatives per position, 0..IA_LOGPROBS_TOP_MAX */
    /* Outputs, allocated by the caller; only entries [first, n) are written. */
    float *logprob;         /* [n]: log P(ids[i] | ids[0..i-1]) under the raw model (no sampling
                               transforms: temperature, penalties and truncation do not apply) */
    int32_t *top_ids;       /* [n * top_k] the top_k most likely ids at position i, most likely first
                               (ties: lower id first); NULL when top_k == 0 */
    float *top_logprobs;    /* [n * top_k] their logprobs */
} ia_token_lp_job;

/* Runs the jobs together: up to n_slots sequences share each forward pass (prompt chunks of several
 * sequences in one batch, as ia_score does). Positions must fit the model's context; sequences are
 * not truncated. Allocates its own context sized to the longest job, so the caller's KV caches are
 * untouched. Returns IA_OK or an error code (err set); on error the outputs are unspecified. */
int ia_token_logprobs(ia_model *m, ia_token_lp_job *jobs, int n_jobs, int n_slots, ia_error *err);

/* log P(target) of one row of V logits (log-softmax through ia_logsumexp) and whether target is the
 * row's first maximum. ia_score and the evaluation scorer both call this, so they agree bit for bit. */
double ia_logits_token_logprob(const float *l, int V, int32_t target, bool *is_argmax);

#endif /* IA_ENGINE_LOGPROBS_H */
