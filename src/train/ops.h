/* ops.h — the training forward/backward pairs (llm.c style): each op's forward next to its
 * backward, same argument order, gradients accumulated with +=, f32 throughout.
 *
 * Dimension legend: N tokens of a micro-batch (all sequences flattened), E n_embd, H n_head,
 * Hkv n_head_kv, D head_dim, Dq = H*D, KV = Hkv*D, F n_ff, V n_vocab, r LoRA rank, in/out the
 * input/output width of a linear layer. Weights are GGUF-shaped: a matrix with ne = {in, out} is
 * `out` rows of `in` elements, y[o] = sum_i W[o][i] x[i].
 *
 * Backward argument order: gradients written (d-inputs, then d-parameters), the upstream gradient,
 * then exactly what the forward read or saved, then dimensions. Every backward ADDS into its
 * gradient outputs, so callers zero them (tr_params_zero_grad) once per optimizer step.
 *
 * Determinism: every output element is computed whole by one thread in a fixed order, so results
 * do not depend on the thread count (resume-after-kill reproduces an uninterrupted run).
 *
 * Threads: the parallel loops run on the tensor thread pool (src/tensor/pool.h) through kern.h's
 * tr_par_for / tr_par_run, never OpenMP, so the trainer and ia_matmul share one set of threads.
 * Products go through tr_gemm (kern.h: AVX-512 with fused multiply-adds where the CPU has it, a
 * plain C reference otherwise): results agree across kernel families to rounding, and are
 * bit-identical across thread counts within one.
 */
#ifndef IA_TRAIN_OPS_H
#define IA_TRAIN_OPS_H

#include "model/model.h"

/* ---- embedding: x[t] = E[tok[t]] ---- */
void tr_embedding_forward(float *x, const int32_t *tok, const ia_weight *emb, int N, int E);
/* demb (f32 [V][E]) += rows of dx at tok; parallel over columns so each element has one writer. */
void tr_embedding_backward(float *demb, const float *dx, const int32_t *tok, int N, int E);

/* ---- RMSNorm: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps) (sum in double, as context.c) ---- */
void tr_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int N, int E, float eps);
/* dx += ..., dw += ... (dw may be NULL: frozen weight) */
void tr_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                         const float *rstd, int N, int E);

/* ---- matmul with a frozen or trainable weight of any supported type ---- */
/* Y[t][o] = sum_i X[t][i] W[o][i] (+ b[o]). With ws (tr_matmul_ws_floats(W->n_in) floats): panels
 * of weight rows transposed, then tr_gemm (each element one chain over i, whatever the thread
 * split); ws NULL: ia_matmul, bit-identical to the inference pass. a16 (with ws; NULL: f32
 * products): a scratch of tr_matmul_a16_count(N, W->n_in) bf16 values; X and W are rounded to bf16
 * and the panels multiplied by tr_gemm_bf16 instead. */
void tr_matmul_forward(float *Y, const float *X, const ia_weight *W, const float *b, int N, float *ws, uint16_t *a16);
/* dX += dY·W (any type, dequantised on the fly, W never copied whole), dW += dYᵀ·X (dW f32 [out][in],
 * NULL for a frozen weight), db += column sums of dY (NULL if none). `ws` is a scratch of
 * tr_matmul_ws_floats(W) floats; allocation-free. dX: tr_gemm over the weight rows (a quantised
 * weight dequantised a panel of rows at a time), each element one chain over o in row order; a16
 * (tr_matmul_a16_count(N, W->n_out)): dY and blocks of weight rows rounded to bf16, tr_gemm_bf16 (dW
 * and db stay f32). */
void tr_matmul_backward(float *dX, float *dW, float *db, const float *dY, const float *X, const ia_weight *W,
                        int N, float *ws, uint16_t *a16);
/* bf16 values of the a16 scratch for `rows` rows of K (rows padded to an even length). */
size_t tr_matmul_a16_count(int rows, int K);
size_t tr_matmul_ws_floats(int n_in);

/* ---- LoRA branch: Y += s * (drop(X)·Aᵀ)·Bᵀ, saving U = drop(X)·Aᵀ ---- */
/* Dropout mask: element (t, i) is kept iff tr_dropout_keep(key, t, i, p); a pure function, so
 * the backward (and a recomputed forward) regenerate it. key identifies micro-batch/layer/matrix. */
typedef struct tr_dropout {
    float p;               /* drop probability (0: off) */
    uint64_t key;          /* hash key of this (micro-batch, layer, matrix) */
} tr_dropout;
bool tr_dropout_keep(uint64_t key, int t, int i, float p);
/* A [r][in], B [out][r]; U [N][r]; xd: scratch [N][in] (used only when dropout is on); ws: scratch
 * of tr_lora_ws_floats(N, in, out, r) floats. */
void tr_lora_forward(float *Y, float *U, const float *X, const float *A, const float *B, float s,
                     const tr_dropout *dr, int N, int in, int out, int r, float *xd, float *ws);
/* dX += (s·dY·B ⊙ ... )·A, dA += dUᵀ·drop(X), dB += s·dYᵀ·U. dU: scratch [N][r]; xd: scratch [N][in];
 * ws as for the forward. dX may be NULL (nothing upstream needs it). */
void tr_lora_backward(float *dX, float *dA, float *dB, const float *dY, const float *X, const float *A,
                      const float *B, const float *U, float s, const tr_dropout *dr, int N, int in,
                      int out, int r, float *dU, float *xd, float *ws);
size_t tr_lora_ws_floats(int N, int in, int out, int r);

/* ---- RoPE, in place on [N][n_heads][D] rows; cs/sn tables [n_pos][n_rot/2] ---- */
void tr_rope_forward(float *x, const int32_t *pos, const float *cs, const float *sn, int N, int n_heads,
                     int D, int n_rot, ia_rope_type type);
/* The rotation's transpose, in place on the gradient. */
void tr_rope_backward(float *dx, const int32_t *pos, const float *cs, const float *sn, int N, int n_heads,
                      int D, int n_rot, ia_rope_type type);

/* ---- causal attention with GQA over segments: token t attends to tokens start[t]..t ---- */
/* q [N][H*D], k, v [N][Hkv*D]; out [N][H*D]; lse [N][H] (saved for backward). Blocks of query
 * tokens times the query heads of one KV head: S = Q·Kᵀ, softmax (expf, 1/sqrt(D)), O = P·V through
 * tr_gemm. Segments are runs of tokens sharing a start (other start[] go to the reference). */
void tr_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *start, int N, int H, int Hkv, int D, float *ws);
/* scratch of the forward and the backward (per thread: Kᵀ, Vᵀ, score blocks) */
size_t tr_attention_ws_floats(int N, int H, int Hkv, int D);
/* dq, dk, dv += ...; delta: scratch [N][H]; ws as for the forward. One (segment, KV head) per task,
 * its query blocks in order: P and dS computed once per block, each gradient element has one
 * writer and one order of summation. */
void tr_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, const int32_t *start, int N,
                           int H, int Hkv, int D, float *delta, float *ws);
/* The plain references, one (t, h) at a time as context.c (dot8, expf softmax); any start[]
 * (token t attends to start[t]..t). ws: N floats. Single-threaded. */
void tr_attention_forward_ref(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *start, int N, int H, int Hkv, int D, float *ws);
void tr_attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *start, int N,
                               int H, int Hkv, int D, float *delta);

/* ---- SwiGLU: h = silu(g) * u ---- */
void tr_swiglu_forward(float *h, const float *g, const float *u, size_t n);
void tr_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);

/* ---- cross-entropy over logits rows: loss[t] = logsumexp(logits[t]) - logits[t][target[t]] ---- */
/* target < 0: no loss (loss[t] = 0). */
void tr_crossentropy_forward(float *loss, const float *logits, const int32_t *target, int N, int V);
/* In place: dlogits (= the logits on input) becomes dloss[t] * (softmax - onehot); rows with no
 * target become 0. */
void tr_crossentropy_softmax_backward(float *dlogits, const float *dloss, const int32_t *target, int N, int V);

/* ---- residual: y = a + b (the backward is dA += dY, dB += dY) ---- */
void tr_residual_forward(float *y, const float *a, const float *b, size_t n);
void tr_residual_backward(float *da, float *db, const float *dy, size_t n);

/* RoPE tables as context.c builds them (double, then f32): cs/sn [n_pos][n_rot/2]. */
void tr_rope_tables(float *cs, float *sn, int n_pos, const ia_hparams *hp, const float *rope_freqs);

#endif /* IA_TRAIN_OPS_H */
