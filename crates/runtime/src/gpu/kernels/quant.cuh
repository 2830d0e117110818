// ggml's block-quantized weight types, read directly by the GEMVs (gemv.cu), the dequantization
// before cuBLAS (convert.cu) and the embedding lookup (embed.cu): Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
// the k-quants Q2_K..Q6_K and the non-linear IQ4_NL, IQ4_XS. Layouts as in the CPU reference
// (src/quant/*.rs), which the kernels are tested against.
//
// Every type is read in *slices*: 32 values of a block as two runs of 16 consecutive values,
// each run with one affine map value = a·q + b from small integers q. Slice k of a block is
// chosen per type so that the lanes taking consecutive slices read consecutive bytes (lane k
// of a Q4_K block reads bytes 16k..16k+15 of its nibbles: a warp reads four whole blocks), and
// every run starts at a multiple of 16 values, so that its 16 inputs are contiguous in the
// GEMVs' padded staged copy. The q of a run are kept as bytes q + OFF (unsigned) in four words,
// turned into floats without int-to-float conversions (byte_f).

#ifndef HOIST_QUANT_CUH
#define HOIST_QUANT_CUH

#include "common.cuh"

#ifndef W_Q4_1
#error "W_Q4_1 must be passed by hoist (-DW_Q4_1=...): weight-type code"
#endif
#ifndef W_Q5_0
#error "W_Q5_0 must be passed by hoist (-DW_Q5_0=...): weight-type code"
#endif
#ifndef W_Q5_1
#error "W_Q5_1 must be passed by hoist (-DW_Q5_1=...): weight-type code"
#endif
#ifndef W_Q2_K
#error "W_Q2_K must be passed by hoist (-DW_Q2_K=...): weight-type code"
#endif
#ifndef W_Q3_K
#error "W_Q3_K must be passed by hoist (-DW_Q3_K=...): weight-type code"
#endif
#ifndef W_Q4_K
#error "W_Q4_K must be passed by hoist (-DW_Q4_K=...): weight-type code"
#endif
#ifndef W_Q5_K
#error "W_Q5_K must be passed by hoist (-DW_Q5_K=...): weight-type code"
#endif
#ifndef W_Q6_K
#error "W_Q6_K must be passed by hoist (-DW_Q6_K=...): weight-type code"
#endif
#ifndef W_IQ4_NL
#error "W_IQ4_NL must be passed by hoist (-DW_IQ4_NL=...): weight-type code"
#endif
#ifndef W_IQ4_XS
#error "W_IQ4_XS must be passed by hoist (-DW_IQ4_XS=...): weight-type code"
#endif

// Values and bytes of a block of each type (ggml's layouts; Q8_0's and Q4_0's passed by the
// host, the others' the same as the host's GgmlType::block, checked by a test in
// kernels/mod.rs).
template <int T> struct Layout;
template <> struct Layout<W_Q8_0> { enum { VALUES = QK, BYTES = Q8_BLOCK_BYTES }; };
template <> struct Layout<W_Q4_0> { enum { VALUES = QK, BYTES = Q4_BLOCK_BYTES }; };
template <> struct Layout<W_Q4_1> { enum { VALUES = 32, BYTES = 20 }; };
template <> struct Layout<W_Q5_0> { enum { VALUES = 32, BYTES = 22 }; };
template <> struct Layout<W_Q5_1> { enum { VALUES = 32, BYTES = 24 }; };
template <> struct Layout<W_Q2_K> { enum { VALUES = 256, BYTES = 84 }; };
template <> struct Layout<W_Q3_K> { enum { VALUES = 256, BYTES = 110 }; };
template <> struct Layout<W_Q4_K> { enum { VALUES = 256, BYTES = 144 }; };
template <> struct Layout<W_Q5_K> { enum { VALUES = 256, BYTES = 176 }; };
template <> struct Layout<W_Q6_K> { enum { VALUES = 256, BYTES = 210 }; };
template <> struct Layout<W_IQ4_NL> { enum { VALUES = 32, BYTES = 18 }; };
template <> struct Layout<W_IQ4_XS> { enum { VALUES = 256, BYTES = 136 }; };

// Runs CALL(T) with T the compile-time type code equal to `wtype` (a block-quantized type);
// nothing for any other code.
#define QUANT_DISPATCH(wtype, CALL)           \
    switch (wtype) {                          \
    case W_Q8_0: { CALL(W_Q8_0); } break;     \
    case W_Q4_0: { CALL(W_Q4_0); } break;     \
    case W_Q4_1: { CALL(W_Q4_1); } break;     \
    case W_Q5_0: { CALL(W_Q5_0); } break;     \
    case W_Q5_1: { CALL(W_Q5_1); } break;     \
    case W_Q2_K: { CALL(W_Q2_K); } break;     \
    case W_Q3_K: { CALL(W_Q3_K); } break;     \
    case W_Q4_K: { CALL(W_Q4_K); } break;     \
    case W_Q5_K: { CALL(W_Q5_K); } break;     \
    case W_Q6_K: { CALL(W_Q6_K); } break;     \
    case W_IQ4_NL: { CALL(W_IQ4_NL); } break; \
    case W_IQ4_XS: { CALL(W_IQ4_XS); } break; \
    default: break;                           \
    }

// Whether `wtype` is one of the block-quantized types above (not Q4_0 tiles: q4_tiles.cu).
__device__ __forceinline__ bool is_quant(int wtype) {
    bool quant = false;
#define IS_QUANT(T) quant = true;
    QUANT_DISPATCH(wtype, IS_QUANT)
#undef IS_QUANT
    return quant;
}

// Bytes of a row of `cols` values of the block type `wtype` (0 for other codes).
__device__ __forceinline__ usize quant_row_bytes(int wtype, int cols) {
    usize bytes = 0;
#define ROW_BYTES(T) bytes = (usize)(cols / Layout<T>::VALUES) * Layout<T>::BYTES;
    QUANT_DISPATCH(wtype, ROW_BYTES)
#undef ROW_BYTES
    return bytes;
}

// (lo, hi) >> shift, the low word (shift < 32).
__device__ __forceinline__ u32 shr64(u32 lo, u32 hi, u32 shift) {
    u32 r;
    asm("shf.r.wrap.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(lo), "r"(hi), "r"(shift));
    return r;
}

// The 16 bytes at p (2-byte aligned, as every field of every block is) as four little-endian
// words: one load where 16-byte aligned, else the aligned words that hold them, realigned by
// funnel shifts (every other alignment takes the same instructions, so lanes of one warp at
// different alignments do not diverge further). Every 4-byte word read holds some of the 16
// bytes, so reads stay inside an allocation whose size is a multiple of 4 (the last block of a
// matrix may end one).
__device__ __forceinline__ uint4 ld16(const u8* p) {
    usize a = (usize)p;
    if ((a & 15) == 0) return ld_stream((const uint4*)p);
    const u32* w = (const u32*)(a & ~(usize)3);
    u32 sh = (u32)(a & 2) * 8;  // 0 or 16
    u32 w0 = __ldg(w), w1 = __ldg(w + 1), w2 = __ldg(w + 2), w3 = __ldg(w + 3);
    u32 w4 = sh ? __ldg(w + 4) : 0u;  // a fifth word only when the bytes straddle one
    uint4 r;
    r.x = shr64(w0, w1, sh), r.y = shr64(w1, w2, sh), r.z = shr64(w2, w3, sh);
    r.w = shr64(w3, w4, sh);
    return r;
}

__device__ __forceinline__ float f16_at(const u8* p) { return f16_to_f(__ldg((const u16*)p)); }
__device__ __forceinline__ u32 u16_at(const u8* p) { return __ldg((const u16*)p); }

// A little-endian u32 at a 2-byte-aligned address.
__device__ __forceinline__ u32 u32_at2(const u8* p) { return u16_at(p) | (u16_at(p + 2) << 16); }

// A slice: run g (0, 1) holds values pos[g]..pos[g] + 15 of the block; value i of the run is
// a[g] · (byte i of q[g] − OFF) + b[g] (b only where the type has a min).
struct Slice {
    u32 q[2][4];
    float a[2], b[2];
    int pos[2];
};

// The low and the high nibbles of four words, as bytes.
__device__ __forceinline__ void nibbles(uint4 w, u32* lo, u32* hi) {
    u32 v[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        lo[k] = v[k] & 0x0f0f0f0fu;
        hi[k] = (v[k] >> 4) & 0x0f0f0f0fu;
    }
}

// Bits i..i+3 of `bits` moved to bit 4 of bytes 0..3 (the 5th bit of Q5_0/Q5_1 values).
__device__ __forceinline__ u32 bit4_bytes(u32 bits, int i) {
    u32 t = bits >> i;
    return ((t & 1u) << 4) | ((t & 2u) << 11) | ((t & 4u) << 18) | ((t & 8u) << 25);
}

// Each byte (a 4-bit index) replaced by its IQ4 level + 128 (ggml's kvalues_iq4nl: -127, -104,
// -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113), by byte permutes of the table.
__device__ __forceinline__ u32 iq4_levels(u32 idx) {
    // The table + 128, eight bytes a pair of words.
    const u32 t0 = 0x3f2d1801u, t1 = 0x766a5d4fu, t2 = 0xa6998d81u, t3 = 0xf1d9c5b5u;
    u32 sel = (idx & 7u) | ((idx >> 4) & 0x70u) | ((idx >> 8) & 0x700u) | ((idx >> 12) & 0x7000u);
    u32 lo, hi;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(lo) : "r"(t0), "r"(t1), "r"(sel));
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(hi) : "r"(t2), "r"(t3), "r"(sel));
    u32 upper = ((idx >> 3) & 0x01010101u) * 0xffu;  // bytes whose index is 8..15
    return (lo & ~upper) | (hi & upper);
}

// Q4_K/Q5_K's 6-bit scale and min of sub-block j from the 12 scale bytes s[0..12] in the words
// w0, w1, w2 (see k_scales_mins in src/quant/kquants.rs): for j < 4 the low 6 bits of s[j] and
// s[j + 4]; else the nibbles of s[j + 4] with the top 2 bits of s[j − 4] and s[j].
__device__ __forceinline__ void k_scale_min(u32 w0, u32 w1, u32 w2, int j, float* sc, float* m) {
    u32 scale, min;
    if (j < 4) {
        scale = (w0 >> (8 * j)) & 63u;
        min = (w1 >> (8 * j)) & 63u;
    } else {
        int i = 8 * (j - 4);
        u32 q = (w2 >> i) & 0xffu;
        scale = (q & 0x0fu) | ((w0 >> (i + 2)) & 0x30u);
        min = (q >> 4) | ((w1 >> (i + 2)) & 0x30u);
    }
    *sc = (float)scale;
    *m = (float)min;
}

// Q3_K's signed 6-bit scale i from the 12 scale bytes at s (see q3_k_scales).
__device__ __forceinline__ float q3_scale(const u8* s, int i) {
    u32 low = (s[i % 8] >> (4 * (i / 8))) & 0x0fu;
    u32 high = (s[8 + i % 4] >> (2 * (i / 4))) & 3u;
    return (float)((int)(low | (high << 4)) - 32);
}

template <int T> struct Quant;

template <> struct Quant<W_Q8_0> {
    enum { OFF = 128, MIN = 0 };
    __device__ static Slice slice(const u8* b, int) {
        Slice s;
        uint4 w0 = ld16(b + 2), w1 = ld16(b + 18);
        u32 v0[4] = {w0.x, w0.y, w0.z, w0.w}, v1[4] = {w1.x, w1.y, w1.z, w1.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {  // int8 q + 128: the sign bit flipped
            s.q[0][k] = v0[k] ^ 0x80808080u;
            s.q[1][k] = v1[k] ^ 0x80808080u;
        }
        s.a[0] = s.a[1] = f16_at(b);
        s.pos[0] = 0, s.pos[1] = 16;
        return s;
    }
};

// The legacy 4/5-bit types: nibble j is value j (low) and j + 16 (high); d at byte 0.
__device__ __forceinline__ Slice legacy_slice(const u8* b, int qs_at, u32 qh, bool has_qh) {
    Slice s;
    nibbles(ld16(b + qs_at), s.q[0], s.q[1]);
    if (has_qh) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            s.q[0][k] |= bit4_bytes(qh, 4 * k);
            s.q[1][k] |= bit4_bytes(qh, 16 + 4 * k);
        }
    }
    s.a[0] = s.a[1] = f16_at(b);
    s.pos[0] = 0, s.pos[1] = 16;
    return s;
}

template <> struct Quant<W_Q4_0> {
    enum { OFF = 8, MIN = 0 };
    __device__ static Slice slice(const u8* b, int) { return legacy_slice(b, 2, 0, false); }
};

template <> struct Quant<W_Q4_1> {
    enum { OFF = 0, MIN = 1 };
    __device__ static Slice slice(const u8* b, int) {
        Slice s = legacy_slice(b, 4, 0, false);
        s.b[0] = s.b[1] = f16_at(b + 2);
        return s;
    }
};

template <> struct Quant<W_Q5_0> {
    enum { OFF = 16, MIN = 0 };
    __device__ static Slice slice(const u8* b, int) {
        return legacy_slice(b, 6, u32_at2(b + 2), true);
    }
};

template <> struct Quant<W_Q5_1> {
    enum { OFF = 0, MIN = 1 };
    __device__ static Slice slice(const u8* b, int) {
        Slice s = legacy_slice(b, 8, u32_at2(b + 4), true);
        s.b[0] = s.b[1] = f16_at(b + 2);
        return s;
    }
};

template <> struct Quant<W_IQ4_NL> {
    enum { OFF = 128, MIN = 0 };
    __device__ static Slice slice(const u8* b, int) {
        Slice s = legacy_slice(b, 2, 0, false);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            s.q[0][k] = iq4_levels(s.q[0][k]);
            s.q[1][k] = iq4_levels(s.q[1][k]);
        }
        return s;
    }
};

// Q2_K and Q3_K: slice k reads 16 of the 32 bytes of half n = k / 4 (bytes 16·(k % 2)..) at
// two of the four 2-bit positions (2·(k % 4 / 2) + g): run g is values 128n + 32·sg + 16·(k % 2)
// with sg = 2·(k % 4 / 2) + g, scale 8n + 2·sg + k % 2.
__device__ __forceinline__ void two_bit_runs(uint4 w, int k, Slice* s, int* sg) {
    u32 v[4] = {w.x, w.y, w.z, w.w};
    int n = k / 4, h = k % 2;
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        sg[g] = 2 * ((k % 4) / 2) + g;
#pragma unroll
        for (int j = 0; j < 4; ++j) s->q[g][j] = (v[j] >> (2 * sg[g])) & 0x03030303u;
        s->pos[g] = 128 * n + 32 * sg[g] + 16 * h;
    }
}

template <> struct Quant<W_Q2_K> {
    enum { OFF = 0, MIN = 1 };
    __device__ static Slice slice(const u8* b, int k) {
        Slice s;
        int sg[2], n = k / 4, h = k % 2;
        two_bit_runs(ld16(b + 16 + 32 * n + 16 * h), k, &s, sg);
        float d = f16_at(b + 80), dmin = f16_at(b + 82);
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            u32 sc = b[8 * n + 2 * sg[g] + h];
            s.a[g] = d * (float)(sc & 15u);
            s.b[g] = -(dmin * (float)(sc >> 4));
        }
        return s;
    }
};

template <> struct Quant<W_Q3_K> {
    enum { OFF = 4, MIN = 0 };
    __device__ static Slice slice(const u8* b, int k) {
        Slice s;
        int sg[2], n = k / 4, h = k % 2;
        two_bit_runs(ld16(b + 32 + 32 * n + 16 * h), k, &s, sg);
        // Bit 4n + sg of hmask[16h + i] is run g's value i's third bit (clear: 4 below).
        uint4 m = ld16(b + 16 * h);
        u32 mv[4] = {m.x, m.y, m.z, m.w};
        float d = f16_at(b + 108);
#pragma unroll
        for (int g = 0; g < 2; ++g) {
#pragma unroll
            for (int j = 0; j < 4; ++j)
                s.q[g][j] |= ((mv[j] >> (4 * n + sg[g])) & 0x01010101u) << 2;
            s.a[g] = d * q3_scale(b + 96, 8 * n + 2 * sg[g] + h);
        }
        return s;
    }
};

// Q4_K and Q5_K: slice k reads bytes 32c + 16h.. (c = k / 2, h = k % 2) of the nibbles: run 0
// (low nibbles) is sub-block 2c, run 1 (high) sub-block 2c + 1, values 16h.. of each.
// The first 16 bytes of both blocks (d, dmin, the 12 scale bytes) are read as one load.
__device__ __forceinline__ void k_nibble_runs(const u8* b, const u8* qs, int k, Slice* s) {
    int c = k / 2, h = k % 2;
    nibbles(ld16(qs + 32 * c + 16 * h), s->q[0], s->q[1]);
    uint4 head = ld16(b);
    float d = f16_to_f((u16)(head.x & 0xffffu)), dmin = f16_to_f((u16)(head.x >> 16));
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        float sc, m;
        k_scale_min(head.y, head.z, head.w, 2 * c + g, &sc, &m);
        s->a[g] = d * sc;
        s->b[g] = -(dmin * m);
        s->pos[g] = 32 * (2 * c + g) + 16 * h;
    }
}

template <> struct Quant<W_Q4_K> {
    enum { OFF = 0, MIN = 1 };
    __device__ static Slice slice(const u8* b, int k) {
        Slice s;
        k_nibble_runs(b, b + 16, k, &s);
        return s;
    }
};

template <> struct Quant<W_Q5_K> {
    enum { OFF = 0, MIN = 1 };
    __device__ static Slice slice(const u8* b, int k) {
        Slice s;
        k_nibble_runs(b, b + 48, k, &s);
        uint4 qh = ld16(b + 16 + 16 * (k % 2));  // bit j of qh[l]: bit 4 of sub-block j's value l
        u32 v[4] = {qh.x, qh.y, qh.z, qh.w};
#pragma unroll
        for (int g = 0; g < 2; ++g)
#pragma unroll
            for (int j = 0; j < 4; ++j) s.q[g][j] |= ((v[j] >> (k / 2 * 2 + g)) & 0x01010101u) << 4;
        return s;
    }
};

// Q6_K: slice k reads ql bytes 64n + 16r.. (n = k / 4, r = k % 4): low nibbles are values
// 128n + 16r.. (run 0), high nibbles 128n + 64 + 16r.. (run 1); their top 2 bits are bits
// 2·sg of qh bytes 32n + 16·(r % 2).. with sg = r / 2 and 2 + r / 2; scales 8n + r, 8n + 4 + r.
template <> struct Quant<W_Q6_K> {
    enum { OFF = 32, MIN = 0 };
    __device__ static Slice slice(const u8* b, int k) {
        Slice s;
        int n = k / 4, r = k % 4;
        nibbles(ld16(b + 64 * n + 16 * r), s.q[0], s.q[1]);
        uint4 qh = ld16(b + 128 + 32 * n + 16 * (r % 2));
        u32 v[4] = {qh.x, qh.y, qh.z, qh.w};
        float d = f16_at(b + 208);
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            int sg = 2 * g + r / 2;
#pragma unroll
            for (int j = 0; j < 4; ++j) s.q[g][j] |= ((v[j] >> (2 * sg)) & 0x03030303u) << 4;
            s.a[g] = d * (float)(signed char)b[192 + 8 * n + 4 * g + r];
            s.pos[g] = 128 * n + 64 * g + 16 * r;
        }
        return s;
    }
};

// IQ4_XS: slice k is sub-block k: nibbles of qs[16k..16k + 16] (low: values 32k.., high:
// 32k + 16..), scale (d · (ls − 32)) with ls 4 bits of scales_l[k / 2] and 2 of scales_h.
template <> struct Quant<W_IQ4_XS> {
    enum { OFF = 128, MIN = 0 };
    __device__ static Slice slice(const u8* b, int k) {
        Slice s;
        nibbles(ld16(b + 8 + 16 * k), s.q[0], s.q[1]);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            s.q[0][j] = iq4_levels(s.q[0][j]);
            s.q[1][j] = iq4_levels(s.q[1][j]);
        }
        u32 low = (b[4 + k / 2] >> (4 * (k % 2))) & 0x0fu;
        u32 high = (u16_at(b + 2) >> (2 * k)) & 3u;
        s.a[0] = s.a[1] = f16_at(b) * (float)((int)(low | (high << 4)) - 32);
        s.pos[0] = 32 * k, s.pos[1] = 32 * k + 16;
        return s;
    }
};

// Byte k (0..3) of w plus 2^23, as a float, exactly: one byte permute into 2^23's mantissa,
// where an int-to-float conversion runs at a fraction of the rate.
__device__ __forceinline__ float byte_f(u32 w, u32 k) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(w), "r"(0x4b000000u), "r"(k | 0x7440u));
    return __uint_as_float(r);
}

// Value i (0..15) of run g of a slice of type T, as the CPU reference computes it:
// (a · q) + b, both products exact (a scale times a quant fits f32's mantissa).
template <int T> __device__ __forceinline__ float slice_value(const Slice& s, int g, int i) {
    const float c = 8388608.f + (float)Quant<T>::OFF;
    float q = byte_f(s.q[g][i / 4], i % 4) - c;
    float v = s.a[g] * q;
    return Quant<T>::MIN ? v + s.b[g] : v;
}

// Two signed 16-bit values of x times bytes 0, 1 (lo) or 2, 3 (hi) of w (unsigned), plus c.
__device__ __forceinline__ int dp2a_lo(u32 x, u32 w, int c) {
    int r;
    asm("dp2a.lo.s32.u32 %0, %1, %2, %3;" : "=r"(r) : "r"(x), "r"(w), "r"(c));
    return r;
}
__device__ __forceinline__ int dp2a_hi(u32 x, u32 w, int c) {
    int r;
    asm("dp2a.hi.s32.u32 %0, %1, %2, %3;" : "=r"(r) : "r"(x), "r"(w), "r"(c));
    return r;
}

// The decode GEMVs' input, quantized into shared memory by each block (stage_xq in gemv.cu):
// per 32 values an f32 scale d and int16 q (x ≈ d·q, within 2^-16 of the block's largest
// |x|: finer than the f16 activations prefill rounds to), and the sum of q over each 16. A
// run's products are then 8 dp2a with the quant bytes as they are, where converting each
// weight to a float costs 3 instructions a value and leaves the GEMVs instruction-bound.
// (llama.cpp quantizes the input to 8 bits for dp4a; measured here, 8 bits doubled the GGUF
// fixtures' error against transformers, 16 bits kept it.)
struct Xq {
    const u8* q;      // [cols] int16
    const float* d;   // [cols / 32]
    const int* sum;   // [cols / 16]
};

// Bytes of the staged input of `cols` values (a multiple of 32): q, d, sums.
__device__ __forceinline__ int xq_bytes(int cols) { return 2 * cols + cols / 8 + cols / 4; }

__device__ __forceinline__ Xq xq_view(const u8* smem, int cols) {
    Xq x;
    x.q = smem;
    x.d = (const float*)(smem + 2 * cols);
    x.sum = (const int*)(smem + 2 * cols + cols / 8);
    return x;
}

// The dot product of run g with the staged input at value p (its 16 values):
// a · d · (Σ q·xq − OFF · Σ xq) (+ b · d · Σ xq where the type has a min). The integer sums
// cannot overflow: |Σ q·xq| ≤ 16 · 255 · 32767 < 2^28.
template <int T>
__device__ __forceinline__ float run_dot(const Slice& s, int g, const Xq& x, int p) {
    const uint4* xp = (const uint4*)(x.q + 2 * p);
    uint4 x0 = xp[0], x1 = xp[1];
    u32 xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    int acc = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        acc = dp2a_lo(xw[2 * j], s.q[g][j], acc);
        acc = dp2a_hi(xw[2 * j + 1], s.q[g][j], acc);
    }
    int xsum = x.sum[p >> 4];
    float dx = x.d[p >> 5];
    float r = s.a[g] * (dx * (float)(acc - Quant<T>::OFF * xsum));
    return Quant<T>::MIN ? r + s.b[g] * (dx * (float)xsum) : r;
}

// Asks for `bytes` at p to be brought into L2, by the warp (a line of 128 bytes a lane at a
// time): the decode GEMVs fetch their next rows while they compute (or, before their first
// rows, while they wait for the previous kernel and stage the input).
__device__ __forceinline__ void prefetch_l2(const u8* p, usize bytes) {
    for (usize at = (usize)(threadIdx.x & 31) * 128; at < bytes; at += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p + at));
}

// Writes slice `slice` (of the whole tensor, in value order: slices of block 0 first) of a
// tensor of type T at src into `out`, values as `out_type` (store_act) from value `first`.
template <int T>
__device__ void dequant_slice(const u8* src, usize slice, u64 out, usize first, int out_type) {
    const int per_block = Layout<T>::VALUES / 32;
    usize blk = slice / per_block;
    Slice s = Quant<T>::slice(src + blk * Layout<T>::BYTES, (int)(slice % per_block));
    usize base = blk * Layout<T>::VALUES - first;
#pragma unroll
    for (int g = 0; g < 2; ++g)
#pragma unroll
        for (int i = 0; i < 16; ++i)
            store_act(out, base + s.pos[g] + i, round_act(slice_value<T>(s, g, i), out_type),
                      out_type);
}

#endif  // HOIST_QUANT_CUH
