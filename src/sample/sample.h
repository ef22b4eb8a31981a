/* sample.h — per-sequence samplers: penalties, temperature, top-k, top-p, min-p, seeded RNG. */
#ifndef IA_SAMPLE_H
#define IA_SAMPLE_H

#include "util/util.h"

typedef struct ia_sampler ia_sampler;

/* A sampler for one sequence with its own RNG seeded from p->seed, so a sequence's output does not
 * depend on what else is in the batch. Sized for n_vocab up front: sampling never allocates.
 * p NULL means ia_sampling_default(). NULL if n_vocab <= 0 or memory runs out. */
ia_sampler *ia_sampler_init(const ia_sampling *p, int n_vocab);
void ia_sampler_free(ia_sampler *s);
/* Picks the next token from logits[n_vocab] (modified in place: the penalties are applied to it).
 * `generated` holds the ids generated so far for this sequence (the penalties' history; the
 * prompt is not part of it, as in vLLM). Greedy (temperature <= 0) returns the first argmax
 * after penalties. */
int32_t ia_sampler_sample(ia_sampler *s, float *logits, const int32_t *generated, int n_generated);
/* Details of ia_sampler_sample:
 *  - Order: repetition penalty, frequency/presence penalties (both written into logits[]), then
 *    greedy, or top-k -> temperature -> softmax -> top-p -> min-p (relative to the most likely
 *    token) -> one draw from the sampler's RNG. Temperature is applied to an internal copy, so
 *    after the call logits[] holds the penalised logits, not divided by T.
 *  - -INFINITY bans a token; NaN logits are treated as -INFINITY. Returns -1 only when every logit
 *    is banned. Ids in `generated` outside [0, n_vocab) are ignored.
 *  - Settings: top_k <= 0, top_p >= 1, min_p <= 0, repeat_penalty 1 (or <= 0), repeat_last_n 0
 *    switch a stage off; NaN in a setting means its neutral value. repeat_last_n -1 covers all
 *    of `generated`. top_p <= 0 keeps only the most likely token.
 *  - Ties: greedy and top-k prefer the lower id among equal logits.
 *  - Never allocates; one sampler per sequence, not shared between threads. */

/* The penalty stage of ia_sampler_sample alone (for tests, and for reporting penalised logits). */
void ia_sampler_penalize(ia_sampler *s, float *logits, const int32_t *generated, int n_generated);

#endif /* IA_SAMPLE_H */
