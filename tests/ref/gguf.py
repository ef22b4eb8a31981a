#!/usr/bin/env python3
"""gguf.py — an independent GGUF v2/v3 reader for tests and float64 reference computations.

Written from the format description (docs/REFERENCE.md §1.1-1.3), sharing nothing with the C reader,
so the two can check each other. Standard library plus numpy only.

    import gguf
    g = gguf.read("model.gguf")
    g.version, g.alignment
    g.metadata["llama.embedding_length"]      # python value (int, float, bool, str, list)
    g.kv_types["llama.embedding_length"]      # (type id, element type id or None)
    t = g.tensors["token_embd.weight"]        # Tensor(type, ne, data): ggml type id, ne list, raw bytes
    gguf.dequantize(t)                        # numpy float64 array, shape reversed(ne) (numpy order)

Command line:  gguf.py --dump FILE   prints a canonical text dump (the C tests compare it with theirs):
    version V
    alignment A
    kv KEY TYPE VALUE          VALUE: integers in decimal, floats as raw-bits hex (f32:xxxxxxxx,
                               f64:xxxxxxxxxxxxxxxx), bools 0/1, strings as s:HEX of their bytes,
                               arrays as [elem,elem,...] in the same notation (TYPE "array:ELEMTYPE")
    tensor NAME TYPEID NE0,NE1,.. OFFSET NBYTES CRC32  (CRC32 of the data bytes, zlib's, in hex)
"""
import struct
import sys
import zlib
from collections import namedtuple

import numpy as np

GGUF_MAGIC = b"GGUF"
# metadata value type id -> (name, struct format or None for variable-size)
VALUE_TYPES = {
    0: ("u8", "<B"), 1: ("i8", "<b"), 2: ("u16", "<H"), 3: ("i16", "<h"),
    4: ("u32", "<I"), 5: ("i32", "<i"), 6: ("f32", "<f"), 7: ("bool", "<B"),
    8: ("string", None), 9: ("array", None),
    10: ("u64", "<Q"), 11: ("i64", "<q"), 12: ("f64", "<d"),
}
T_STRING, T_ARRAY, T_BOOL = 8, 9, 7

# ggml type id -> (name, elements per block, bytes per block); removed ids are absent
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

Tensor = namedtuple("Tensor", "type ne data offset")


class GGUFError(Exception):
    pass


class GGUFFile:
    def __init__(self):
        self.version = 0
        self.alignment = 32
        self.metadata = {}    # key -> python value
        self.kv_types = {}    # key -> (type id, element type id or None)
        self.kv_raw = {}      # key -> raw value for canonical dumps: ("scalar", type, bytes) etc.
        self.tensors = {}     # name -> Tensor, in file order


class _Cursor:
    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError("unexpected end of file at offset %d reading %s" % (self.pos, what))
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u32(self, what):
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what):
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what):
        return self.take(self.u64(what), what)


def _read_value(c, t, key, depth=0):
    """Returns (python value, canonical dump text)."""
    if t not in VALUE_TYPES:
        raise GGUFError("key %r has invalid value type %d" % (key, t))
    name, fmt = VALUE_TYPES[t]
    if t == T_STRING:
        b = c.string("string value of %r" % key)
        return b.decode("utf-8", errors="surrogateescape"), "s:" + b.hex()
    if t == T_ARRAY:
        if depth > 8:
            raise GGUFError("arrays of key %r nested too deep" % key)
        et = c.u32("array type of %r" % key)
        n = c.u64("array length of %r" % key)
        if et not in VALUE_TYPES:
            raise GGUFError("array of key %r has invalid element type %d" % (key, et))
        vals, texts = [], []
        efmt = VALUE_TYPES[et][1]
        if efmt is not None:  # fixed size: decode in one go
            size = struct.calcsize(efmt)
            raw = c.take(n * size, "array data of %r" % key)
            arr = np.frombuffer(raw, dtype=np.dtype(efmt))
            if et == T_BOOL and np.any(arr > 1):
                raise GGUFError("key %r has an invalid bool element" % key)
            for j in range(n):
                v, tx = _scalar(et, raw[j * size:(j + 1) * size])
                vals.append(v)
                texts.append(tx)
        else:
            for _ in range(n):
                v, tx = _read_value(c, et, key, depth + 1)
                vals.append(v)
                texts.append(tx)
        return vals, "[" + ",".join(texts) + "]"
    size = struct.calcsize(fmt)
    return _scalar(t, c.take(size, "value of %r" % key), key)


def _scalar(t, raw, key="?"):
    name, fmt = VALUE_TYPES[t]
    v = struct.unpack(fmt, raw)[0]
    if t == T_BOOL:
        if v > 1:
            raise GGUFError("key %r has invalid bool value %d" % (key, v))
        return bool(v), str(v)
    if name[0] == "f":
        return float(v), "%s:%s" % (name, raw[::-1].hex())
    return int(v), str(v)


def parse(buf):
    """Parses and validates a GGUF image (bytes). Raises GGUFError on any problem."""
    c = _Cursor(memoryview(buf).tobytes() if not isinstance(buf, bytes) else buf)
    if c.take(4, "magic") != GGUF_MAGIC:
        raise GGUFError("bad magic")
    g = GGUFFile()
    g.version = c.u32("version")
    if g.version not in (2, 3):
        raise GGUFError("unsupported version %d" % g.version)
    n_tensors = c.u64("tensor count")
    n_kv = c.u64("kv count")
    left = len(c.buf) - c.pos
    if n_tensors * 32 > left or n_kv * 13 > left:
        raise GGUFError("implausible counts")
    texts = {}
    for _ in range(n_kv):
        key = c.string("key").decode("utf-8", errors="surrogateescape")
        if key in g.metadata:
            raise GGUFError("duplicate key %r" % key)
        t = c.u32("type of %r" % key)
        if t not in VALUE_TYPES:
            raise GGUFError("key %r has invalid value type %d" % (key, t))
        before = c.pos
        v, tx = _read_value(c, t, key)
        g.metadata[key] = v
        g.kv_types[key] = (t, struct.unpack("<I", c.buf[before:before + 4])[0] if t == T_ARRAY else None)
        texts[key] = tx
    g.kv_raw = texts
    if "general.alignment" in g.metadata:
        t, _ = g.kv_types["general.alignment"]
        a = g.metadata["general.alignment"]
        if t != 4 or a == 0 or (a & (a - 1)):
            raise GGUFError("bad general.alignment")
        g.alignment = a
    infos = []
    for _ in range(n_tensors):
        name = c.string("tensor name").decode("utf-8", errors="surrogateescape")
        if len(name.encode("utf-8", errors="surrogateescape")) >= 64:
            raise GGUFError("tensor name too long")
        nd = c.u32("n_dims of %r" % name)
        if not 1 <= nd <= 4:
            raise GGUFError("tensor %r has %d dims" % (name, nd))
        ne = [c.u64("ne of %r" % name) for _ in range(nd)]
        tt = c.u32("type of %r" % name)
        off = c.u64("offset of %r" % name)
        if tt not in GGML_TYPES:
            raise GGUFError("tensor %r has unknown type id %d" % (name, tt))
        _, bs, ts = GGML_TYPES[tt]
        if any(x >= 2 ** 63 for x in ne) or ne[0] % bs:
            raise GGUFError("tensor %r has bad dims" % name)
        nel = 1
        for x in ne:
            nel *= x
        if nel >= 2 ** 63:
            raise GGUFError("tensor %r element count overflows" % name)
        nbytes = ne[0] // bs * ts
        for x in ne[1:]:
            nbytes *= x
        if any(n == name for n, *_ in infos):
            raise GGUFError("duplicate tensor name %r" % name)
        infos.append((name, tt, ne, off, nbytes))
    a = g.alignment
    data_start = (c.pos + a - 1) // a * a
    expect = 0
    for name, tt, ne, off, nbytes in infos:
        if off != expect:
            raise GGUFError("tensor %r has offset %d, expected %d" % (name, off, expect))
        if data_start + off + nbytes > len(c.buf):
            raise GGUFError("tensor %r data runs past the end of the file" % name)
        g.tensors[name] = Tensor(tt, ne, c.buf[data_start + off:data_start + off + nbytes], off)
        expect += (nbytes + a - 1) // a * a
    return g


def read(path):
    with open(path, "rb") as f:
        return parse(f.read())


# ---- dequantisation to float64 (numpy order: shape = reversed(ne)) ----

def _f16(raw):
    return np.frombuffer(raw, dtype="<f2").astype(np.float64)


def dequantize(t):
    """Tensor -> float64 numpy array of shape reversed(ne). Types: F32 F16 BF16 F64 I8 I16 I32 I64 Q8_0 Q4_0 Q4_K Q6_K."""
    shape = tuple(reversed(t.ne))
    d = t.data
    if t.type == 0:
        x = np.frombuffer(d, dtype="<f4").astype(np.float64)
    elif t.type == 1:
        x = _f16(d)
    elif t.type == 30:
        x = (np.frombuffer(d, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    elif t.type in (24, 25, 26, 27, 28):
        x = np.frombuffer(d, dtype={24: "i1", 25: "<i2", 26: "<i4", 27: "<i8", 28: "<f8"}[t.type]).astype(np.float64)
    elif t.type == 8:  # Q8_0: f16 d, i8 qs[32]
        b = np.frombuffer(d, dtype=np.uint8).reshape(-1, 34)
        scale = b[:, :2].copy().view("<f2").astype(np.float64)
        x = (b[:, 2:].view(np.int8).astype(np.float64) * scale).reshape(-1)
    elif t.type == 2:  # Q4_0: f16 d, u8 qs[16]; low nibbles first half, high nibbles second half
        b = np.frombuffer(d, dtype=np.uint8).reshape(-1, 18)
        scale = b[:, :2].copy().view("<f2").astype(np.float64)
        qs = b[:, 2:]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float64) - 8.0
        x = (q * scale).reshape(-1)
    elif t.type == 12:  # Q4_K
        b = np.frombuffer(d, dtype=np.uint8).reshape(-1, 144)
        dd = b[:, 0:2].copy().view("<f2").astype(np.float64)[:, 0]
        dmin = b[:, 2:4].copy().view("<f2").astype(np.float64)[:, 0]
        sc_raw = b[:, 4:16].astype(np.int64)
        qs = b[:, 16:144]
        out = np.empty((b.shape[0], 256))
        for j in range(8):
            if j < 4:
                sc = sc_raw[:, j] & 63
                m = sc_raw[:, j + 4] & 63
            else:
                sc = (sc_raw[:, j + 4] & 0xF) | ((sc_raw[:, j - 4] >> 6) << 4)
                m = (sc_raw[:, j + 4] >> 4) | ((sc_raw[:, j] >> 6) << 4)
            chunk = qs[:, (j // 2) * 32:(j // 2) * 32 + 32]
            q = (chunk & 0xF) if j % 2 == 0 else (chunk >> 4)
            out[:, j * 32:(j + 1) * 32] = (dd * sc)[:, None] * q - (dmin * m)[:, None]
        x = out.reshape(-1)
    elif t.type == 14:  # Q6_K: ql[128], qh[64], i8 scales[16], f16 d (last)
        b = np.frombuffer(d, dtype=np.uint8).reshape(-1, 210)
        ql_all = b[:, 0:128].astype(np.int64)
        qh_all = b[:, 128:192].astype(np.int64)
        scales = b[:, 192:208].view(np.int8).astype(np.float64)
        dd = b[:, 208:210].copy().view("<f2").astype(np.float64)[:, 0]
        out = np.empty((b.shape[0], 256))
        for half in range(2):
            ql = ql_all[:, half * 64:(half + 1) * 64]
            qh = qh_all[:, half * 32:(half + 1) * 32]
            sc = scales[:, half * 8:(half + 1) * 8]
            base = half * 128
            for l in range(32):
                isc = l // 16
                q1 = ((ql[:, l] & 0xF) | (((qh[:, l] >> 0) & 3) << 4)) - 32
                q2 = ((ql[:, l + 32] & 0xF) | (((qh[:, l] >> 2) & 3) << 4)) - 32
                q3 = ((ql[:, l] >> 4) | (((qh[:, l] >> 4) & 3) << 4)) - 32
                q4 = ((ql[:, l + 32] >> 4) | (((qh[:, l] >> 6) & 3) << 4)) - 32
                out[:, base + l] = dd * sc[:, isc + 0] * q1
                out[:, base + l + 32] = dd * sc[:, isc + 2] * q2
                out[:, base + l + 64] = dd * sc[:, isc + 4] * q3
                out[:, base + l + 96] = dd * sc[:, isc + 6] * q4
        x = out.reshape(-1)
    else:
        raise GGUFError("dequantize: type %d not supported" % t.type)
    return x.reshape(shape)


def dump(g, out):
    out.write("version %d\n" % g.version)
    out.write("alignment %d\n" % g.alignment)
    for key, tx in g.kv_raw.items():
        t, et = g.kv_types[key]
        tname = VALUE_TYPES[t][0] if t != T_ARRAY else "array:" + VALUE_TYPES[et][0]
        out.write("kv %s %s %s\n" % (key, tname, tx))
    for name, t in g.tensors.items():
        out.write("tensor %s %d %s %d %d %08x\n" % (name, t.type, ",".join(str(x) for x in t.ne), t.offset, len(t.data),
                                                    zlib.crc32(t.data) & 0xffffffff))


def main(argv):
    if len(argv) != 3 or argv[1] != "--dump":
        sys.stderr.write("usage: gguf.py --dump FILE\n")
        return 2
    try:
        g = read(argv[2])
    except (GGUFError, OSError) as e:
        sys.stderr.write("%s: %s\n" % (argv[2], e))
        return 1
    dump(g, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
