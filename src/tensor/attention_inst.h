/* attention_inst.h — the AVX-512 attention kernels (attention_kern.h) for head dims 64 and 128 and for
 * any other multiple of 16, for one KV cache type: included by attention.c with ATT_KV (the element
 * type), ATT_LD16(p) (16 of them as f32) and ATT_SFX(x, n) (the instance name: x##_##n, or x##_##n##h
 * for the f16 cache). */
#define ATT_UNROLL _Pragma("GCC unroll 16")
#define ATT_NAME(f) ATT_SFX(f, 4)
#define ATT_NDMAX 4
#define ATT_ND 4
#include "attention_kern.h"
#undef ATT_NAME
#undef ATT_NDMAX
#undef ATT_ND
#define ATT_NAME(f) ATT_SFX(f, 8)
#define ATT_NDMAX 8
#define ATT_ND 8
#include "attention_kern.h"
#undef ATT_NAME
#undef ATT_NDMAX
#undef ATT_ND
#undef ATT_UNROLL
#define ATT_UNROLL
#define ATT_NAME(f) ATT_SFX(f, x)
#define ATT_NDMAX 16
#define ATT_ND nd_
#include "attention_kern.h"
#undef ATT_NAME
#undef ATT_NDMAX
#undef ATT_ND
#undef ATT_UNROLL
