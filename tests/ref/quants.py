"""quants.py — independent numpy dequantisers for the ggml tensor types iteralign supports
(F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K, plus the plain I8 I16 I32 I64 F64), written from
docs/REFERENCE.md §1.3 only (never from the C code), for the float64 reference forward pass.

The float32 operations are done in the order the format's reference decoder uses (e.g. Q4_K:
(d*sc)*q - dmin*m, Q6_K: (d*sc)*q), so the result equals a correct decoder bit for bit;
tests/t_quants_py.sh checks that against the C dequantisers.

    dequantize_row(ggml_type, raw, n=None) -> 1-D array (float32; float64 for F64/I32/I64)
    dequantize(tensor)                     -> array shaped reversed(tensor.ne) (gguf.py's Tensor)
"""
import numpy as np

F32, F16, Q4_0, Q8_0, Q4_K, Q6_K = 0, 1, 2, 8, 12, 14
I8, I16, I32, I64, F64, BF16 = 24, 25, 26, 27, 28, 30

# type id -> (name, elements per block, bytes per block)
TYPES = {
    F32: ("F32", 1, 4), F16: ("F16", 1, 2), BF16: ("BF16", 1, 2),
    Q4_0: ("Q4_0", 32, 18), Q8_0: ("Q8_0", 32, 34),
    Q4_K: ("Q4_K", 256, 144), Q6_K: ("Q6_K", 256, 210),
    I8: ("I8", 1, 1), I16: ("I16", 1, 2), I32: ("I32", 1, 4), I64: ("I64", 1, 8), F64: ("F64", 1, 8),
}

_f32 = np.float32


def _bytes(raw):
    if isinstance(raw, np.ndarray):
        return np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    return np.frombuffer(raw, dtype=np.uint8)


def _half(u8_pairs):
    """(..., 2) little-endian bytes -> float32 (IEEE binary16 -> binary32 is exact)."""
    return np.ascontiguousarray(u8_pairs).view("<f2")[..., 0].astype(_f32)


def _q4_0(b):  # f16 d; u8 qs[16]: y[j] = (lo(qs[j]) - 8) d, y[j+16] = (hi(qs[j]) - 8) d
    d = _half(b[:, 0:2])[:, None]
    qs = b[:, 2:18]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int16) - 8
    return q.astype(_f32) * d


def _q8_0(b):  # f16 d; i8 qs[32]: y = q d
    d = _half(b[:, 0:2])[:, None]
    return np.ascontiguousarray(b[:, 2:34]).view(np.int8).astype(_f32) * d


def _q4_k(b):  # f16 d; f16 dmin; u8 scales[12]; u8 qs[128]
    d = _half(b[:, 0:2])[:, None]
    dmin = _half(b[:, 2:4])[:, None]
    s = b[:, 4:16].astype(np.int32)
    sc = np.empty((b.shape[0], 8), np.int32)
    mn = np.empty((b.shape[0], 8), np.int32)
    for j in range(8):  # get_scale_min_k4
        if j < 4:
            sc[:, j] = s[:, j] & 63
            mn[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            mn[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    d1 = d * sc.astype(_f32)      # (nb, 8) float32
    m1 = dmin * mn.astype(_f32)
    qs = b[:, 16:144].reshape(-1, 4, 32)  # 4 chunks of 64 values share 32 bytes
    # chunk c: low nibbles -> sub-block 2c, high nibbles -> sub-block 2c+1
    q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32).astype(_f32)
    y = d1[:, :, None] * q - m1[:, :, None]
    return y.reshape(-1, 256)


def _q6_k(b):  # u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d (last)
    nb = b.shape[0]
    ql, qh = b[:, 0:128], b[:, 128:192]
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(_f32)
    d = _half(b[:, 208:210])[:, None]
    y = np.empty((nb, 256), _f32)
    l = np.arange(32)
    is_ = l // 16
    for h in range(2):  # two halves of 128 values: ql += 64, qh += 32, scales += 8
        L, H, S = ql[:, 64 * h:64 * h + 64], qh[:, 32 * h:32 * h + 32], scales[:, 8 * h:8 * h + 8]
        q1 = ((L[:, 0:32] & 0xF) | (((H >> 0) & 3) << 4)).astype(np.int16) - 32
        q2 = ((L[:, 32:64] & 0xF) | (((H >> 2) & 3) << 4)).astype(np.int16) - 32
        q3 = ((L[:, 0:32] >> 4) | (((H >> 4) & 3) << 4)).astype(np.int16) - 32
        q4 = ((L[:, 32:64] >> 4) | (((H >> 6) & 3) << 4)).astype(np.int16) - 32
        for k, q in enumerate((q1, q2, q3, q4)):  # outputs at l, l+32, l+64, l+96
            y[:, 128 * h + 32 * k:128 * h + 32 * k + 32] = (d * S[:, is_ + 2 * k]) * q.astype(_f32)
    return y


_BLOCKED = {Q4_0: _q4_0, Q8_0: _q8_0, Q4_K: _q4_k, Q6_K: _q6_k}
_PLAIN = {F32: "<f4", I8: "i1", I16: "<i2", I32: "<i4", I64: "<i8", F64: "<f8"}


def dequantize_row(ggml_type, raw, n=None):
    """Decodes raw bytes of type ggml_type; n (elements) defaults to all of raw."""
    if ggml_type not in TYPES:
        raise ValueError("unsupported ggml type %d" % ggml_type)
    _, bs, ts = TYPES[ggml_type]
    u8 = _bytes(raw)
    if n is None:
        if len(u8) % ts:
            raise ValueError("%d bytes is not a whole number of %s blocks" % (len(u8), TYPES[ggml_type][0]))
        n = len(u8) // ts * bs
    if n % bs:
        raise ValueError("%d elements is not a multiple of the block size %d" % (n, bs))
    u8 = u8[:n // bs * ts]
    if len(u8) < n // bs * ts:
        raise ValueError("not enough data for %d elements" % n)
    if ggml_type == F16:
        return np.ascontiguousarray(u8).view("<f2").astype(_f32)
    if ggml_type == BF16:  # f32 bits = bf16 << 16
        return (np.ascontiguousarray(u8).view("<u2").astype(np.uint32) << 16).view(_f32)
    if ggml_type in _PLAIN:
        x = np.ascontiguousarray(u8).view(_PLAIN[ggml_type])
        return x.astype(_f32) if ggml_type in (F32, I8, I16) else x.astype(np.float64)
    return _BLOCKED[ggml_type](u8.reshape(-1, ts)).reshape(-1)


def dequantize(t, raw=None, n=None):
    """dequantize(tensor) -> array shaped reversed(tensor.ne); dequantize(type, raw, n) = dequantize_row."""
    if raw is not None:
        return dequantize_row(t, raw, n)
    count = 1
    for v in t.ne:
        count *= int(v)
    return dequantize_row(t.type, t.data, count).reshape(tuple(int(v) for v in reversed(t.ne)))
