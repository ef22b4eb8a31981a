/* optim.c — AdamW over the flat parameter block, learning-rate schedules with warm-up, global
 * gradient-norm clipping. */
#include "train/train_internal.h"

#include "train/kern.h"

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

typedef struct {
    float *p, *g, *m, *v;
    float b1, b2, a1, a2, c1, c2, decay, lr, eps, clip;
} adamw_job;

#define ADAMW_CHUNK 16384

static void adamw_body(void *arg, int c0, int c1) {
    const adamw_job *j = arg;
    float *p = j->p, *g = j->g, *m = j->m, *v = j->v;
    for (size_t i = (size_t)c0 * ADAMW_CHUNK; i < (size_t)c1 * ADAMW_CHUNK; i++) {
        float gi = g[i] * j->clip;
        m[i] = j->b1 * m[i] + j->a1 * gi;
        v[i] = j->b2 * v[i] + j->a2 * gi * gi;
        float mh = m[i] / j->c1, vh = v[i] / j->c2;
        p[i] -= j->decay * p[i];
        p[i] -= j->lr * mh / (sqrtf(vh) + j->eps);
    }
}

void tr_adamw_update(tr_params *P, const ia_train_opts *o, float lr, int step, float clip_scale) {
    const double b1 = o->beta1, b2 = o->beta2;
    const float c1 = (float)(1.0 - pow(b1, step)), c2 = (float)(1.0 - pow(b2, step));
    for (int ti = 0; ti < P->n_tensors; ti++) {
        const tr_tensor *t = &P->t[ti];
        /* no decay for vectors (norm weights, biases), as HF Trainer */
        float decay = t->ne[1] == 1 ? 0.0f : lr * o->weight_decay;
        size_t n = (size_t)(t->ne[0] * t->ne[1]);
        adamw_job j = {P->p + t->off, P->g + t->off, P->m + t->off, P->v + t->off, (float)b1, (float)b2,
                       (float)(1.0 - b1), (float)(1.0 - b2), c1, c2, decay, lr, o->eps, clip_scale};
        /* whole chunks, then the tail on this thread (element-wise: any split gives the same bits) */
        size_t nc = n / ADAMW_CHUNK;
        if (nc) tr_par_for((int)nc, n > 262144, adamw_body, &j);
        adamw_job tail = j;
        size_t off = nc * ADAMW_CHUNK;
        tail.p += off; tail.g += off; tail.m += off; tail.v += off;
        for (size_t i = 0; i < n - off; i++) {
            float gi = tail.g[i] * clip_scale;
            tail.m[i] = tail.b1 * tail.m[i] + tail.a1 * gi;
            tail.v[i] = tail.b2 * tail.v[i] + tail.a2 * gi * gi;
            float mh = tail.m[i] / c1, vh = tail.v[i] / c2;
            tail.p[i] -= decay * tail.p[i];
            tail.p[i] -= lr * mh / (sqrtf(vh) + o->eps);
        }
    }
}
