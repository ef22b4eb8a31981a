/* tmodel.c — the training model: the trainable-parameter block (LoRA A/B or every weight in f32),
 * views of the frozen base, activations, and the forward/backward over one micro-batch. */
#include "train/train_internal.h"

#include <math.h>

const char *const tr_lin_short[TR_NLIN] = {"q", "k", "v", "o", "gate", "up", "down"};
const char *const tr_lin_gguf[TR_NLIN] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
const char *const tr_lin_hf[TR_NLIN] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};

uint64_t tr_hash(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    if (!h) h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

unsigned tr_parse_targets(const char *list, ia_error *err) {
    if (!list || !*list || !strcmp(list, "all")) return (1u << TR_NLIN) - 1;
    unsigned mask = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && *p == ' ') { p++; n--; }
        while (n && p[n - 1] == ' ') n--;
        int found = -1;
        for (int i = 0; i < TR_NLIN && found < 0; i++) {
            const char *hf = strchr(tr_lin_hf[i], '.') + 1; /* "q_proj" */
            if ((strlen(tr_lin_short[i]) == n && !strncmp(p, tr_lin_short[i], n)) ||
                (strlen(tr_lin_gguf[i]) == n && !strncmp(p, tr_lin_gguf[i], n)) ||
                (strlen(hf) == n && !strncmp(p, hf, n)))
                found = i;
        }
        if (n == 3 && !strncmp(p, "all", 3)) mask |= (1u << TR_NLIN) - 1;
        else if (found < 0) {
            ia_error_set(err, IA_ERR_ARG, "LoRA target '%.*s' is not one of q, k, v, o, gate, up, down", (int)n, p);
            return 0;
        } else mask |= 1u << found;
        p += n;
        while (*p == ' ') p++;
        if (*p == ',') p++;
    }
    if (!mask) ia_error_set(err, IA_ERR_ARG, "no LoRA target given");
    return mask;
}

void tr_params_zero_grad(tr_params *P) { memset(P->g, 0, P->n * sizeof(float)); }

int tr_params_find(const tr_params *P, const char *name) {
    for (int i = 0; i < P->n_tensors; i++)
        if (!strcmp(P->t[i].name, name)) return i;
    return -1;
}

/* ---- the size table ---------------------------------------------------------------------------- */

/* Appends one trainable tensor to the table (pass 1 counts, pass 2 fills). */
static void add_tensor(tr_params *P, int *n, size_t *off, const char *name, int64_t ne0, int64_t ne1,
                       uint32_t base_type) {
    if (P->t) {
        tr_tensor *t = &P->t[*n];
        snprintf(t->name, sizeof t->name, "%s", name);
        t->ne[0] = ne0;
        t->ne[1] = ne1;
        t->off = *off;
        t->base_type = base_type;
    }
    (*n)++;
    /* keep every tensor 16-float aligned within the block (64 bytes) */
    *off += ((size_t)(ne0 * ne1) + 15) & ~(size_t)15;
}

/* One line per tensor, with its shape formula: LoRA A [r][in] and B [out][r] per adapted matrix;
 * full: every tensor of the base. */
static void fill_in_sizes(tr_model *tm, tr_params *P, int *n, size_t *off) {
    const ia_model *m = tm->base;
    const ia_hparams *hp = &tm->hp;
    char name[GGUF_MAX_NAME + 16];
    *n = 0;
    *off = 0;
    if (tm->o.method == IA_TRAIN_LORA) {
        int r = tm->o.rank;
        for (int l = 0; l < hp->n_layer; l++)
            for (int j = 0; j < TR_NLIN; j++) {
                if (!(tm->o.targets & (1u << j))) continue;
                int in, out;
                const ia_layer *ly = &m->layers[l];
                const ia_weight *ws[TR_NLIN] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
                in = ws[j]->n_in;
                out = ws[j]->n_out;
                snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", l, tr_lin_gguf[j]);
                add_tensor(P, n, off, name, in, r, IA_TYPE_F32);   /* A: ne {in, r} = [r][in] */
                snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", l, tr_lin_gguf[j]);
                add_tensor(P, n, off, name, r, out, IA_TYPE_F32);  /* B: ne {r, out} = [out][r] */
            }
        return;
    }
    const int64_t E = hp->n_embd, V = hp->n_vocab;
    add_tensor(P, n, off, "token_embd.weight", E, V, m->tok_embd.type);       /* [V][E] */
    add_tensor(P, n, off, "output_norm.weight", E, 1, IA_TYPE_F32);           /* [E] */
    if (!m->tied_output) add_tensor(P, n, off, "output.weight", E, V, m->output.type); /* [V][E] */
    for (int l = 0; l < hp->n_layer; l++) {
        const ia_layer *ly = &m->layers[l];
        const ia_weight *ws[TR_NLIN] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        add_tensor(P, n, off, name, E, 1, IA_TYPE_F32);                        /* [E] */
        for (int j = 0; j < TR_NLIN; j++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, tr_lin_gguf[j]);
            add_tensor(P, n, off, name, ws[j]->n_in, ws[j]->n_out, ws[j]->type); /* [out][in] */
        }
        const float *bs[3] = {ly->bq, ly->bk, ly->bv};
        for (int j = 0; j < 3; j++)
            if (bs[j]) {
                snprintf(name, sizeof name, "blk.%d.%s.bias", l, tr_lin_gguf[j]);
                add_tensor(P, n, off, name, ws[j]->n_out, 1, IA_TYPE_F32);    /* [out] */
            }
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        add_tensor(P, n, off, name, E, 1, IA_TYPE_F32);                        /* [E] */
    }
}

static float *pt(tr_model *tm, const char *name, float *base) {
    int i = tr_params_find(&tm->P, name);
    return i < 0 ? NULL : base + tm->P.t[i].off;
}

/* Points the layer views at the base weights and, for what is trained, into the block. */
static void point_views(tr_model *tm) {
    const ia_model *m = tm->base;
    const ia_hparams *hp = &tm->hp;
    tr_params *P = &tm->P;
    char name[GGUF_MAX_NAME + 16];
    bool full = tm->o.method == IA_TRAIN_FULL;
    tm->tok_embd = m->tok_embd;
    tm->output = m->output;
    tm->output_norm = m->output_norm;
    if (full) {
        tm->tok_embd.data = pt(tm, "token_embd.weight", P->p);
        tm->tok_embd.type = IA_TYPE_F32;
        tm->d_tok_embd = pt(tm, "token_embd.weight", P->g);
        tm->output_norm = pt(tm, "output_norm.weight", P->p);
        tm->d_output_norm = pt(tm, "output_norm.weight", P->g);
        if (m->tied_output) {
            tm->output = tm->tok_embd;
            tm->d_output = tm->d_tok_embd;
        } else {
            tm->output.data = pt(tm, "output.weight", P->p);
            tm->output.type = IA_TYPE_F32;
            tm->d_output = pt(tm, "output.weight", P->g);
        }
    }
    for (int l = 0; l < hp->n_layer; l++) {
        const ia_layer *ly = &m->layers[l];
        tr_layer *tl = &tm->layers[l];
        const ia_weight *ws[TR_NLIN] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
        const float *bs[TR_NLIN] = {ly->bq, ly->bk, ly->bv, NULL, NULL, NULL, NULL};
        memset(tl, 0, sizeof *tl);
        tl->attn_norm = ly->attn_norm;
        tl->ffn_norm = ly->ffn_norm;
        if (full) {
            snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
            tl->attn_norm = pt(tm, name, P->p);
            tl->d_attn_norm = pt(tm, name, P->g);
            snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
            tl->ffn_norm = pt(tm, name, P->p);
            tl->d_ffn_norm = pt(tm, name, P->g);
        }
        for (int j = 0; j < TR_NLIN; j++) {
            tr_linear *ln = &tl->lin[j];
            ln->w = *ws[j];
            ln->b = bs[j];
            if (full) {
                snprintf(name, sizeof name, "blk.%d.%s.weight", l, tr_lin_gguf[j]);
                ln->w.data = pt(tm, name, P->p);
                ln->w.type = IA_TYPE_F32;
                ln->dw = pt(tm, name, P->g);
                if (bs[j]) {
                    snprintf(name, sizeof name, "blk.%d.%s.bias", l, tr_lin_gguf[j]);
                    ln->b = pt(tm, name, P->p);
                    ln->db = pt(tm, name, P->g);
                }
            } else if (tm->o.targets & (1u << j)) {
                snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", l, tr_lin_gguf[j]);
                ln->A = pt(tm, name, P->p);
                ln->dA = pt(tm, name, P->g);
                snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", l, tr_lin_gguf[j]);
                ln->B = pt(tm, name, P->p);
                ln->dB = pt(tm, name, P->g);
            }
        }
    }
}

int tr_head_chunk(int n_vocab, int max_tokens) {
    size_t rows = (size_t)TR_HEAD_LOGITS_MIB * 1048576 / sizeof(float) / (size_t)(n_vocab > 0 ? n_vocab : 1);
    int c = rows < 32 ? 32 : rows > 256 ? 256 : (int)rows;
    return c < max_tokens ? c : max_tokens;
}

/* ---- init / free ------------------------------------------------------------------------------- */

static size_t mul_sz(size_t a, size_t b) { return (a && b > SIZE_MAX / a) ? SIZE_MAX : a * b; }

int tr_model_init(tr_model *tm, const ia_model *base, const tr_model_opts *o, ia_error *err) {
    memset(tm, 0, sizeof *tm);
    tm->base = base;
    tm->hp = base->hp;
    tm->o = *o;
    const ia_hparams *hp = &tm->hp;
    if (o->method == IA_TRAIN_LORA) {
        if (o->rank < 1 || o->rank > 4096)
            return ia_error_set(err, IA_ERR_ARG, "LoRA rank %d is out of range (1..4096)", o->rank);
        if (!o->targets) return ia_error_set(err, IA_ERR_ARG, "no LoRA target matrices");
        tm->scale = o->alpha / (float)o->rank;
    } else {
        /* full fine-tuning keeps f32 master weights: it needs a float base (a quantised base has no
         * gradient-friendly representation; train LoRA on it instead, as QLoRA does) */
        const ia_model *m = base;
        for (int l = 0; l < hp->n_layer; l++) {
            const ia_layer *ly = &m->layers[l];
            const ia_weight *ws[TR_NLIN + 1] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up,
                                                &ly->w_down, &m->tok_embd};
            for (int j = 0; j <= TR_NLIN; j++)
                if (ws[j]->type != IA_TYPE_F32 && ws[j]->type != IA_TYPE_F16 && ws[j]->type != IA_TYPE_BF16)
                    return ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: full fine-tuning needs an F32, F16 or BF16 "
                                        "base, but tensor '%s' is %s (use LoRA on a quantised base)",
                                        base->path, ws[j]->name, ia_type_name(ws[j]->type));
        }
        if (!m->tied_output && m->output.type != IA_TYPE_F32 && m->output.type != IA_TYPE_F16 &&
            m->output.type != IA_TYPE_BF16)
            return ia_error_set(err, IA_ERR_UNSUPPORTED, "%s: full fine-tuning needs an F32, F16 or BF16 base, but "
                                "tensor 'output.weight' is %s", base->path, ia_type_name(m->output.type));
    }
    if (o->max_tokens < 1 || o->max_pos < 1)
        return ia_error_set(err, IA_ERR_ARG, "max_tokens %d and max_pos %d must be >= 1", o->max_tokens, o->max_pos);

    /* the size table, then one block for params | grads | m | v */
    int n;
    size_t off;
    fill_in_sizes(tm, &tm->P, &n, &off);
    tm->P.t = ia_calloc((size_t)n, sizeof *tm->P.t);
    if (!tm->P.t) goto nomem;
    fill_in_sizes(tm, &tm->P, &tm->P.n_tensors, &tm->P.n);
    tm->P.mem = ia_calloc(mul_sz(tm->P.n, 4), sizeof(float));
    if (!tm->P.mem) goto nomem;
    tm->P.p = tm->P.mem;
    tm->P.g = tm->P.mem + tm->P.n;
    tm->P.m = tm->P.mem + 2 * tm->P.n;
    tm->P.v = tm->P.mem + 3 * tm->P.n;
    tm->layers = ia_calloc((size_t)hp->n_layer, sizeof *tm->layers);
    if (!tm->layers) goto nomem;
    point_views(tm);

    /* RoPE tables */
    size_t half = (size_t)hp->n_rot / 2;
    tm->rope_cos = ia_malloc(mul_sz(mul_sz((size_t)o->max_pos, half ? half : 1), sizeof(float)));
    tm->rope_sin = ia_malloc(mul_sz(mul_sz((size_t)o->max_pos, half ? half : 1), sizeof(float)));
    if (!tm->rope_cos || !tm->rope_sin) goto nomem;
    tr_rope_tables(tm->rope_cos, tm->rope_sin, o->max_pos, hp, base->rope_freqs);

    /* activations and scratch: one block, carved in the order below */
    const size_t N = (size_t)o->max_tokens, E = (size_t)hp->n_embd, H = (size_t)hp->n_head;
    const size_t Dq = (size_t)hp->n_head * hp->head_dim, KV = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t F = (size_t)hp->n_ff, V = (size_t)hp->n_vocab, L = (size_t)hp->n_layer;
    const size_t r = o->method == IA_TRAIN_LORA ? (size_t)o->rank : 0;
    size_t wmax = E > F ? E : F;
    if (Dq > wmax) wmax = Dq;
    int n_lora = 0;
    for (int j = 0; j < TR_NLIN; j++) if (o->method == IA_TRAIN_LORA && (o->targets & (1u << j))) n_lora++;
    size_t per_layer = N * (E * 3 + Dq * 2 + KV * 2 + H + F * 2 + 2 + (size_t)n_lora * r) + 16 * 20;
    size_t n_acts = o->recompute ? 1 : L;
    tm->head_chunk = tr_head_chunk(hp->n_vocab, o->max_tokens);
    size_t CH = (size_t)tm->head_chunk;
    const size_t att_ws = tr_attention_ws_floats((int)N, (int)H, hp->n_head_kv, hp->head_dim);
    const size_t lora_ws = r ? tr_lora_ws_floats((int)N, (int)wmax, (int)wmax, (int)r) : 0;
    /* bf16 products: the matmul's input (or output gradient) rounded to bf16, the widest of them */
    size_t a16_n = tr_matmul_a16_count((int)N, (int)wmax);
    if (tr_matmul_a16_count((int)CH, (int)V) > a16_n) a16_n = tr_matmul_a16_count((int)CH, (int)V);
    const size_t a16_floats = o->bf16 ? (a16_n + 1) / 2 : 0;
    size_t total = (L + 1) * N * E + n_acts * per_layer + N * E + N + N * (E > F ? E : F) /* fo */
                   + N * E * 2 + N * Dq * 2 + N * KV * 2 + N * F * 3 + N * (r ? r : 1) + N * wmax + N * H
                   + tr_matmul_ws_floats((int)wmax) + att_ws + lora_ws + CH * E * 2 + CH * V + CH * 2
                   + a16_floats + 64 * 32;
    tm->acts = ia_calloc(n_acts, sizeof *tm->acts);
    tm->act_mem = ia_malloc(mul_sz(total, sizeof(float)));
    tm->head_tgt = ia_malloc(CH * sizeof(int32_t));
    tm->head_idx = ia_malloc(CH * sizeof(int32_t));
    if (!tm->acts || !tm->act_mem || !tm->head_tgt || !tm->head_idx) {
        ia_error_set(err, IA_ERR_NOMEM, "out of memory for the activations of %zu tokens (%.1f MiB)", N,
                     (double)total * 4 / 1048576.0);
        tr_model_free(tm);
        return IA_ERR_NOMEM;
    }
    tm->act_bytes = total * sizeof(float);
    float *cur = tm->act_mem;
#define CARVE(ptr, count) do { (ptr) = cur; cur += (((count) + 15) & ~(size_t)15); } while (0)
    CARVE(tm->x, (L + 1) * N * E);
    for (size_t a = 0; a < n_acts; a++) {
        tr_acts *ac = &tm->acts[a];
        CARVE(ac->xn1, N * E);
        CARVE(ac->rstd1, N);
        CARVE(ac->q, N * Dq);
        CARVE(ac->k, N * KV);
        CARVE(ac->v, N * KV);
        CARVE(ac->lse, N * H);
        CARVE(ac->y, N * Dq);
        CARVE(ac->xmid, N * E);
        CARVE(ac->xn2, N * E);
        CARVE(ac->rstd2, N);
        CARVE(ac->g, N * F);
        CARVE(ac->u, N * F);
        for (int j = 0; j < TR_NLIN; j++)
            if (r && (o->targets & (1u << j))) CARVE(ac->lu[j], N * r);
    }
    CARVE(tm->xnf, N * E);
    CARVE(tm->rstdf, N);
    CARVE(tm->fo, N * (E > F ? E : F));
    CARVE(tm->dx, N * E);
    CARVE(tm->dxn, N * E);
    CARVE(tm->dy, N * Dq);
    CARVE(tm->dq, N * Dq);
    CARVE(tm->dk, N * KV);
    CARVE(tm->dv, N * KV);
    CARVE(tm->dg, N * F);
    CARVE(tm->du, N * F);
    CARVE(tm->dh, N * F);
    CARVE(tm->dU, N * (r ? r : 1));
    CARVE(tm->xd, N * wmax);
    CARVE(tm->delta, N * H);
    CARVE(tm->mm_ws, tr_matmul_ws_floats((int)wmax));
    float *a16 = NULL;
    CARVE(a16, a16_floats);
    tm->a16 = o->bf16 ? (uint16_t *)a16 : NULL;
    CARVE(tm->att_ws, att_ws);
    CARVE(tm->lora_ws, lora_ws);
    CARVE(tm->head_x, CH * E);
    CARVE(tm->head_dx, CH * E);
    CARVE(tm->logits, CH * V);
    CARVE(tm->loss, CH);
    CARVE(tm->dloss, CH);
#undef CARVE
    IA_ASSERT((size_t)(cur - tm->act_mem) <= total);
    return IA_OK;
nomem:
    ia_error_set(err, IA_ERR_NOMEM, "out of memory for %zu trainable parameters", tm->P.n);
    tr_model_free(tm);
    return IA_ERR_NOMEM;
}

void tr_model_free(tr_model *tm) {
    if (!tm) return;
    ia_free(tm->P.t);
    ia_free(tm->P.mem);
    ia_free(tm->layers);
    ia_free(tm->rope_cos);
    ia_free(tm->rope_sin);
    ia_free(tm->acts);
    ia_free(tm->act_mem);
    ia_free(tm->head_tgt);
    ia_free(tm->head_idx);
    memset(tm, 0, sizeof *tm);
}

/* Converts a whole base tensor (any float type) to f32. */
static void base_to_f32(const ia_weight *w, float *dst) {
    size_t rs = ia_type_row_size(w->type, w->n_in);
    for (int o = 0; o < w->n_out; o++)
        ia_dequantize_row(w->type, (const uint8_t *)w->data + (size_t)o * rs, dst + (size_t)o * w->n_in, w->n_in);
}

int tr_model_init_params(tr_model *tm, uint64_t seed, ia_error *err) {
    tr_params *P = &tm->P;
    memset(P->mem, 0, P->n * 4 * sizeof(float));
    if (tm->o.method == IA_TRAIN_LORA) {
        ia_rng rng;
        ia_rng_seed(&rng, seed);
        for (int i = 0; i < P->n_tensors; i++) {
            tr_tensor *t = &P->t[i];
            size_t len = strlen(t->name);
            if (len < 7 || strcmp(t->name + len - 7, ".lora_a")) continue; /* B stays 0 */
            double bound = 1.0 / sqrt((double)t->ne[0]);
            float *a = P->p + t->off;
            for (int64_t k = 0; k < t->ne[0] * t->ne[1]; k++) a[k] = (float)((2.0 * ia_rng_uniform(&rng) - 1.0) * bound);
        }
        return IA_OK;
    }
    const ia_model *m = tm->base;
    base_to_f32(&m->tok_embd, P->p + P->t[tr_params_find(P, "token_embd.weight")].off);
    memcpy(P->p + P->t[tr_params_find(P, "output_norm.weight")].off, m->output_norm, (size_t)tm->hp.n_embd * sizeof(float));
    if (!m->tied_output) base_to_f32(&m->output, P->p + P->t[tr_params_find(P, "output.weight")].off);
    char name[GGUF_MAX_NAME + 16];
    for (int l = 0; l < tm->hp.n_layer; l++) {
        const ia_layer *ly = &m->layers[l];
        const ia_weight *ws[TR_NLIN] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
        const float *bs[3] = {ly->bq, ly->bk, ly->bv};
        for (int j = 0; j < TR_NLIN; j++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, tr_lin_gguf[j]);
            base_to_f32(ws[j], P->p + P->t[tr_params_find(P, name)].off);
            if (j < 3 && bs[j]) {
                snprintf(name, sizeof name, "blk.%d.%s.bias", l, tr_lin_gguf[j]);
                memcpy(P->p + P->t[tr_params_find(P, name)].off, bs[j], (size_t)ws[j]->n_out * sizeof(float));
            }
        }
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        memcpy(P->p + P->t[tr_params_find(P, name)].off, ly->attn_norm, (size_t)tm->hp.n_embd * sizeof(float));
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        memcpy(P->p + P->t[tr_params_find(P, name)].off, ly->ffn_norm, (size_t)tm->hp.n_embd * sizeof(float));
    }
    (void)err;
    return IA_OK;
}

/* ---- linear = matmul (+ bias) (+ LoRA) ------------------------------------------------------ */

static uint64_t dropout_key(const tr_model *tm, int l, int j) {
    uint64_t k = tm->seed * 0x9E3779B97F4A7C15ull ^ (tm->micro + 1) * 0xC2B2AE3D27D4EB4Full;
    return tr_hash(k, (int[2]){l, j}, sizeof(int[2]));
}

static void linear_forward(tr_model *tm, float *Y, float *U, const float *X, const tr_linear *ln, int N, int l, int j) {
    tr_matmul_forward(Y, X, &ln->w, ln->b, N, tm->mm_ws, tm->a16);
    if (ln->A) {
        tr_dropout dr = {tm->o.dropout, dropout_key(tm, l, j)};
        tr_lora_forward(Y, U, X, ln->A, ln->B, tm->scale, &dr, N, ln->w.n_in, ln->w.n_out, tm->o.rank, tm->xd,
                        tm->lora_ws);
    }
}

static void linear_backward(tr_model *tm, float *dX, const tr_linear *ln, const float *dY, const float *X,
                            const float *U, int N, int l, int j) {
    tr_matmul_backward(dX, ln->dw, ln->db, dY, X, &ln->w, N, tm->mm_ws, tm->a16);
    if (ln->A) {
        tr_dropout dr = {tm->o.dropout, dropout_key(tm, l, j)};
        tr_lora_backward(dX, ln->dA, ln->dB, dY, X, ln->A, ln->B, U, tm->scale, &dr, N, ln->w.n_in, ln->w.n_out,
                         tm->o.rank, tm->dU, tm->xd, tm->lora_ws);
    }
}

/* ---- one block ------------------------------------------------------------------------------ */

static tr_acts *acts_of(tr_model *tm, int l) { return &tm->acts[tm->o.recompute ? 0 : l]; }

static void layer_forward(tr_model *tm, int l, const tr_batch *b) {
    const ia_hparams *hp = &tm->hp;
    const int N = b->N, E = hp->n_embd, H = hp->n_head, Hkv = hp->n_head_kv, D = hp->head_dim, F = hp->n_ff;
    const tr_layer *ly = &tm->layers[l];
    tr_acts *a = acts_of(tm, l);
    const float *x = tm->x + (size_t)l * N * E;
    float *xo = tm->x + (size_t)(l + 1) * N * E;
    tr_rmsnorm_forward(a->xn1, a->rstd1, x, ly->attn_norm, N, E, hp->rms_eps);
    linear_forward(tm, a->q, a->lu[TR_Q], a->xn1, &ly->lin[TR_Q], N, l, TR_Q);
    linear_forward(tm, a->k, a->lu[TR_K], a->xn1, &ly->lin[TR_K], N, l, TR_K);
    linear_forward(tm, a->v, a->lu[TR_V], a->xn1, &ly->lin[TR_V], N, l, TR_V);
    tr_rope_forward(a->q, b->pos, tm->rope_cos, tm->rope_sin, N, H, D, hp->n_rot, hp->rope_type);
    tr_rope_forward(a->k, b->pos, tm->rope_cos, tm->rope_sin, N, Hkv, D, hp->n_rot, hp->rope_type);
    tr_attention_forward(a->y, a->lse, a->q, a->k, a->v, b->start, N, H, Hkv, D, tm->att_ws);
    linear_forward(tm, tm->fo, a->lu[TR_O], a->y, &ly->lin[TR_O], N, l, TR_O);
    tr_residual_forward(a->xmid, x, tm->fo, (size_t)N * E);
    tr_rmsnorm_forward(a->xn2, a->rstd2, a->xmid, ly->ffn_norm, N, E, hp->rms_eps);
    linear_forward(tm, a->g, a->lu[TR_GATE], a->xn2, &ly->lin[TR_GATE], N, l, TR_GATE);
    linear_forward(tm, a->u, a->lu[TR_UP], a->xn2, &ly->lin[TR_UP], N, l, TR_UP);
    float *h = tm->dh; /* silu(g) * u: scratch (the backward makes it again) */
    tr_swiglu_forward(h, a->g, a->u, (size_t)N * F);
    linear_forward(tm, tm->fo, a->lu[TR_DOWN], h, &ly->lin[TR_DOWN], N, l, TR_DOWN);
    tr_residual_forward(xo, a->xmid, tm->fo, (size_t)N * E);
}

/* On entry tm->dx holds d(layer output); on return d(layer input). */
static void layer_backward(tr_model *tm, int l, const tr_batch *b) {
    const ia_hparams *hp = &tm->hp;
    const int N = b->N, E = hp->n_embd, H = hp->n_head, Hkv = hp->n_head_kv, D = hp->head_dim, F = hp->n_ff;
    const int Dq = H * D, KV = Hkv * D;
    const tr_layer *ly = &tm->layers[l];
    tr_acts *a = acts_of(tm, l);
    const float *x = tm->x + (size_t)l * N * E;
    /* x_out = xmid + down(h): the residual passes dx through unchanged */
    /* h = silu(g) * u again, in dg (free until the SwiGLU backward): the same bits as the forward's */
    tr_swiglu_forward(tm->dg, a->g, a->u, (size_t)N * F);
    memset(tm->dh, 0, (size_t)N * F * sizeof(float));
    linear_backward(tm, tm->dh, &ly->lin[TR_DOWN], tm->dx, tm->dg, a->lu[TR_DOWN], N, l, TR_DOWN);
    memset(tm->dg, 0, (size_t)N * F * sizeof(float));
    memset(tm->du, 0, (size_t)N * F * sizeof(float));
    tr_swiglu_backward(tm->dg, tm->du, tm->dh, a->g, a->u, (size_t)N * F);
    memset(tm->dxn, 0, (size_t)N * E * sizeof(float));
    linear_backward(tm, tm->dxn, &ly->lin[TR_GATE], tm->dg, a->xn2, a->lu[TR_GATE], N, l, TR_GATE);
    linear_backward(tm, tm->dxn, &ly->lin[TR_UP], tm->du, a->xn2, a->lu[TR_UP], N, l, TR_UP);
    tr_rmsnorm_backward(tm->dx, ly->d_ffn_norm, tm->dxn, a->xmid, ly->ffn_norm, a->rstd2, N, E);
    /* xmid = x + o(y) */
    memset(tm->dy, 0, (size_t)N * Dq * sizeof(float));
    linear_backward(tm, tm->dy, &ly->lin[TR_O], tm->dx, a->y, a->lu[TR_O], N, l, TR_O);
    memset(tm->dq, 0, (size_t)N * Dq * sizeof(float));
    memset(tm->dk, 0, (size_t)N * KV * sizeof(float));
    memset(tm->dv, 0, (size_t)N * KV * sizeof(float));
    tr_attention_backward(tm->dq, tm->dk, tm->dv, tm->dy, a->q, a->k, a->v, a->y, a->lse, b->start, N, H, Hkv, D,
                          tm->delta, tm->att_ws);
    tr_rope_backward(tm->dq, b->pos, tm->rope_cos, tm->rope_sin, N, H, D, hp->n_rot, hp->rope_type);
    tr_rope_backward(tm->dk, b->pos, tm->rope_cos, tm->rope_sin, N, Hkv, D, hp->n_rot, hp->rope_type);
    /* the first layer's input gradient feeds only a trained embedding: without one, skip it */
    const bool need_dx = l > 0 || tm->d_tok_embd || ly->d_attn_norm;
    float *dxn = need_dx ? tm->dxn : NULL;
    if (need_dx) memset(tm->dxn, 0, (size_t)N * E * sizeof(float));
    linear_backward(tm, dxn, &ly->lin[TR_Q], tm->dq, a->xn1, a->lu[TR_Q], N, l, TR_Q);
    linear_backward(tm, dxn, &ly->lin[TR_K], tm->dk, a->xn1, a->lu[TR_K], N, l, TR_K);
    linear_backward(tm, dxn, &ly->lin[TR_V], tm->dv, a->xn1, a->lu[TR_V], N, l, TR_V);
    if (need_dx) tr_rmsnorm_backward(tm->dx, ly->d_attn_norm, tm->dxn, x, ly->attn_norm, a->rstd1, N, E);
}

/* ---- the whole model -------------------------------------------------------------------------- */

static void check_batch(const tr_model *tm, const tr_batch *b) {
    IA_ASSERT(b->N >= 1 && b->N <= tm->o.max_tokens);
    for (int t = 0; t < b->N; t++) {
        IA_ASSERT(b->tok[t] >= 0 && b->tok[t] < tm->hp.n_vocab);
        IA_ASSERT(b->pos[t] >= 0 && b->pos[t] < tm->o.max_pos);
        IA_ASSERT(b->start[t] >= 0 && b->start[t] <= t);
        IA_ASSERT(b->target[t] < tm->hp.n_vocab);
    }
}

static void forward_layers(tr_model *tm, const tr_batch *b) {
    const int N = b->N, E = tm->hp.n_embd;
    tr_embedding_forward(tm->x, b->tok, &tm->tok_embd, N, E);
    for (int l = 0; l < tm->hp.n_layer; l++) layer_forward(tm, l, b);
    tr_rmsnorm_forward(tm->xnf, tm->rstdf, tm->x + (size_t)tm->hp.n_layer * N * E, tm->output_norm, N, E,
                       tm->hp.rms_eps);
}

double tr_model_step(tr_model *tm, const tr_batch *b, float dloss_scale, bool backward) {
    check_batch(tm, b);
    const int N = b->N, E = tm->hp.n_embd, V = tm->hp.n_vocab, L = tm->hp.n_layer;
    forward_layers(tm, b);
    /* the head, a chunk of loss tokens at a time: logits exist only for tokens that carry loss,
     * and only head_chunk rows of them at once (V can be 150k) */
    double loss_sum = 0;
    if (backward) memset(tm->dxn, 0, (size_t)N * E * sizeof(float)); /* d xnf */
    int t = 0;
    while (t < N) {
        int c = 0;
        for (; t < N && c < tm->head_chunk; t++) {
            if (b->target[t] < 0) continue;
            tm->head_idx[c] = t;
            tm->head_tgt[c] = b->target[t];
            memcpy(tm->head_x + (size_t)c * E, tm->xnf + (size_t)t * E, (size_t)E * sizeof(float));
            c++;
        }
        if (!c) break;
        tr_matmul_forward(tm->logits, tm->head_x, &tm->output, NULL, c, tm->mm_ws, tm->a16);
        tr_crossentropy_forward(tm->loss, tm->logits, tm->head_tgt, c, V);
        for (int i = 0; i < c; i++) loss_sum += tm->loss[i];
        if (!backward) continue;
        for (int i = 0; i < c; i++) tm->dloss[i] = dloss_scale;
        tr_crossentropy_softmax_backward(tm->logits, tm->dloss, tm->head_tgt, c, V);
        memset(tm->head_dx, 0, (size_t)c * E * sizeof(float));
        tr_matmul_backward(tm->head_dx, tm->d_output, NULL, tm->logits, tm->head_x, &tm->output, c, tm->mm_ws,
                           tm->a16);
        for (int i = 0; i < c; i++)
            memcpy(tm->dxn + (size_t)tm->head_idx[i] * E, tm->head_dx + (size_t)i * E, (size_t)E * sizeof(float));
    }
    if (!backward) return loss_sum;
    memset(tm->dx, 0, (size_t)N * E * sizeof(float));
    tr_rmsnorm_backward(tm->dx, tm->d_output_norm, tm->dxn, tm->x + (size_t)L * N * E, tm->output_norm, tm->rstdf, N, E);
    for (int l = L - 1; l >= 0; l--) {
        /* refill the shared activations from x[l] (the last layer's are still there) */
        if (tm->o.recompute && l != L - 1) layer_forward(tm, l, b);
        layer_backward(tm, l, b);
    }
    if (tm->d_tok_embd) tr_embedding_backward(tm->d_tok_embd, tm->dx, b->tok, N, E);
    return loss_sum;
}

void tr_model_logits(tr_model *tm, const tr_batch *b, float *logits) {
    check_batch(tm, b);
    forward_layers(tm, b);
    tr_matmul_forward(logits, tm->xnf, &tm->output, NULL, b->N, tm->mm_ws, tm->a16);
}
