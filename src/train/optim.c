/* optim.c — AdamW over the flat parameter block, learning-rate schedules with warm-up, global
 * gradient-norm clipping. */
#include "train/train_internal.h"

#include <math.h>

float tr_lr_at(const ia_train_opts *o, int step, int total_steps) {
    /* ceil, as HF; the epsilon keeps 0.1f * 100 (= 10.0000001) at 10 */
    int warm = (int)ceil((double)o->warmup_ratio * total_steps - 1e-4);
    if (warm > 0 && step < warm) return o->lr * (float)(step + 1) / (float)warm; /* first step already moves */
    if (o->schedule == IA_LR_CONSTANT) return o->lr;
    int span = total_steps - warm;
    double prog = span > 1 ? (double)(step - warm) / (double)(span - 1) : 0.0; /* 0 .. 1 over the decay */
    if (prog > 1) prog = 1;
    if (o->schedule == IA_LR_LINEAR) return (float)(o->lr * (1.0 - prog));
    return (float)(o->lr * 0.5 * (1.0 + cos(M_PI * prog)));
}

double tr_grad_norm(const tr_params *P) {
    /* fixed order in double: the same on every thread count */
    double s = 0;
    for (size_t i = 0; i < P->n; i++) s += (double)P->g[i] * P->g[i];
    return sqrt(s);
}

void tr_adamw_update(tr_params *P, const ia_train_opts *o, float lr, int step, float clip_scale) {
    const double b1 = o->beta1, b2 = o->beta2;
    const float c1 = (float)(1.0 - pow(b1, step)), c2 = (float)(1.0 - pow(b2, step));
    for (int ti = 0; ti < P->n_tensors; ti++) {
        const tr_tensor *t = &P->t[ti];
        /* no decay for vectors (norm weights, biases), as HF Trainer */
        float decay = t->ne[1] == 1 ? 0.0f : lr * o->weight_decay;
        size_t n = (size_t)(t->ne[0] * t->ne[1]);
        float *p = P->p + t->off, *g = P->g + t->off, *m = P->m + t->off, *v = P->v + t->off;
#pragma omp parallel for schedule(static) if (n > 262144)
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] * clip_scale;
            m[i] = (float)b1 * m[i] + (float)(1.0 - b1) * gi;
            v[i] = (float)b2 * v[i] + (float)(1.0 - b2) * gi * gi;
            float mh = m[i] / c1, vh = v[i] / c2;
            p[i] -= decay * p[i];
            p[i] -= lr * mh / (sqrtf(vh) + o->eps);
        }
    }
}
