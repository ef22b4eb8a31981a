/* sample.h — per-sequence samplers: penalties, temperature, top-k, top-p, min-p, seeded RNG. */
#ifndef IA_SAMPLE_H
#define IA_SAMPLE_H

#include "util/util.h"

typedef struct ia_sampler ia_sampler;

/* A sampler for one sequence with its own RNG seeded from p->seed, so a sequence's output does not
 * depend on what else is in the batch. Sized for n_vocab up front: sampling never allocates. */
ia_sampler *ia_sampler_init(const ia_sampling *p, int n_vocab);
void ia_sampler_free(ia_sampler *s);
/* Picks the next token from logits[n_vocab] (modified in place: penalties, temperature).
 * `generated` holds the ids generated so far for this sequence (the penalties' history; the
 * prompt is not part of it, as in vLLM). Greedy (temperature <= 0) returns the first argmax
 * after penalties. */
int32_t ia_sampler_sample(ia_sampler *s, float *logits, const int32_t *generated, int n_generated);

#endif /* IA_SAMPLE_H */
