// Matrix-vector products of decode on CUDA cores: 16-bit/f32 weights, and Q8_0/Q4_0 read
// directly (tiled Q4_0: q4_tiles.cu).

#include "gemv.cuh"

// Warps per GEMV block and loop unrolling of the 16-bit/f32 GEMV: the host passes both (-D) and
// sizes its grids with the same GEMV_WARPS.
#ifndef GEMV_WARPS
#error "GEMV_WARPS must be passed by hoist (-DGEMV_WARPS=...): warps per GEMV block (GemvShape)"
#endif
#ifndef GEMV_UNROLL
#error "GEMV_UNROLL must be passed by hoist (-DGEMV_UNROLL=...): unrolling of the 16-bit/f32 GEMV (GemvShape)"
#endif

// Where value v of the input vector sits in the padded shared-memory copy the quantized GEMVs
// read: 4 floats of padding per 32 keep the float4 reads of lanes that read "their" blocks on
// distinct banks (a block's 32 inputs start 36 floats after the previous block's).
#ifndef XS_PAD
#error "XS_PAD must be passed by hoist (-DXS_PAD=...): padding floats per 32 staged inputs"
#endif
__device__ __forceinline__ int xs_index(int v) { return v + (v / QK) * XS_PAD; }

// Copies x (cols floats) into shared memory `xs`, padded (xs_index); the whole block calls it.
__device__ void stage_input(const float* x, float* xs, int cols) {
    if (cols % 4 == 0) {  // four values stay together (32 is a multiple of 4)
        for (int v = threadIdx.x * 4; v < cols; v += blockDim.x * 4)
            *(float4*)(xs + xs_index(v)) = *(const float4*)(x + v);
    } else {
        for (int v = threadIdx.x; v < cols; v += blockDim.x) xs[xs_index(v)] = x[v];
    }
    __syncthreads();
}

// 2^23 + byte k (0..3) of w, as a float, exactly: the byte placed in the mantissa of 2^23 by one
// byte permute. Subtracting 2^23 (plus the quantization offset) gives the value without an
// int-to-float conversion, which runs at a fraction of the FMA rate.
__device__ __forceinline__ float byte_f(u32 w, u32 k) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(w), "r"(0x4b000000u), "r"(k | 0x7440u));
    return __uint_as_float(r);
}

// (lo, hi) >> shift, the low word (shift < 32).
__device__ __forceinline__ u32 shr64(u32 lo, u32 hi, u32 shift) {
    u32 r;
    asm("shf.r.wrap.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(lo), "r"(hi), "r"(shift));
    return r;
}

// The dot product of one Q4_0 block at `blk` with its 32 inputs x (8 float4s). The 18-byte
// block is read as the three aligned 8-byte words that hold it (never past the row's end when
// rows are 16-byte aligned: a row's last block ends a word) and realigned with funnel shifts.
__device__ __forceinline__ float q4_block(const u8* blk, const float4* x) {
    usize a = (usize)blk;
    const uint2* base = (const uint2*)(a & ~(usize)7);
    uint2 p0 = ld_stream2(base), p1 = ld_stream2(base + 1), p2 = ld_stream2(base + 2);
    u32 w[6] = {p0.x, p0.y, p1.x, p1.y, p2.x, p2.y};
    u32 o = (u32)a & 7u;  // 0, 2, 4 or 6
    u32 sh = (o & 2u) * 8u;
    float d = f16_to_f((u16)(((o >> 2) ? w[1] : w[0]) >> sh));
    // The 16 bytes of nibbles start at byte o + 2 of the window: words s2.. shifted by sh2.
    u32 s2 = (o + 2u) >> 2, sh2 = sh ^ 16u;
    u32 v[5];
#pragma unroll
    for (int k = 0; k < 5; ++k) {
        u32 w2 = k + 2 < 6 ? w[k + 2] : 0u;
        v[k] = s2 == 0 ? w[k] : (s2 == 1 ? w[k + 1] : w2);
    }
    const float c = 8388616.f;  // 2^23 + 8
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        u32 q = shr64(v[j], v[j + 1], sh2);  // nibble bytes 4j..4j+3
        u32 lo = q & 0x0f0f0f0fu, hi = (q >> 4) & 0x0f0f0f0fu;
        float4 xl = x[j], xh = x[4 + j];
        s += (byte_f(lo, 0) - c) * xl.x + (byte_f(lo, 1) - c) * xl.y +
             (byte_f(lo, 2) - c) * xl.z + (byte_f(lo, 3) - c) * xl.w;
        s += (byte_f(hi, 0) - c) * xh.x + (byte_f(hi, 1) - c) * xh.y +
             (byte_f(hi, 2) - c) * xh.z + (byte_f(hi, 3) - c) * xh.w;
    }
    return d * s;
}

// Whether Q4_0 rows of `cols` values take q4_dot2: whole 16-byte-aligned rows.
__device__ __forceinline__ bool q4_aligned(int wtype, int cols) {
    return wtype == W_Q4_0 && cols % 256 == 0;
}

// Dot products of two Q4_0 rows (q4_aligned) with the staged input `xs`, by one warp: lane l
// takes blocks l, l + 32, ... of both rows, reading each block's inputs once for the two.
// Results in every lane.
__device__ void q4_dot2(const u8* row0, const u8* row1, int cols, const float* xs, float* out0,
                        float* out1) {
    int lane = threadIdx.x & 31, nblocks = cols / QK;
    float a0 = 0.f, a1 = 0.f;
#pragma unroll 2
    for (int b = lane; b < nblocks; b += 32) {
        const float4* x4 = (const float4*)(xs + b * (QK + XS_PAD));
        float4 x[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) x[k] = x4[k];
        a0 += q4_block(row0 + (usize)b * Q4_BLOCK_BYTES, x);
        a1 += q4_block(row1 + (usize)b * Q4_BLOCK_BYTES, x);
    }
    *out0 = warp_sum(a0);
    *out1 = warp_sum(a1);
}

// Dot product of quantized row `r` of w with the staged input `xs`, by one warp; the result is
// in every lane. Lane l decodes whole
// blocks l, l + 32, ...: its 18 (Q4_0) or 34 (Q8_0) bytes with 16-bit loads (block sizes are
// even, not multiples of 4; a warp's loads cover contiguous bytes), its 32 inputs from shared
// memory as float4s without bank conflicts. (Aligned Q4_0 rows take q4_dot2.)
__device__ float qrow_dot(const u8* w, int wtype, usize r, int cols, const float* xs) {
    int lane = threadIdx.x & 31;
    float acc = 0.f;
    int bb = wtype == W_Q8_0 ? Q8_BLOCK_BYTES : Q4_BLOCK_BYTES;
    int nblocks = cols / QK;
    const u8* row = w + r * (usize)nblocks * bb;
    for (int b = lane; b < nblocks; b += 32) {
        const u16* blk = (const u16*)(row + (usize)b * bb);
        float d = f16_to_f(blk[0]);
        const float4* xb = (const float4*)(xs + b * (QK + XS_PAD));
        float s = 0.f;
        if (wtype == W_Q8_0) {
#pragma unroll
            for (int j = 0; j < QK; j += 4) {
                u16 p0 = blk[1 + j / 2], p1 = blk[2 + j / 2];
                float4 xv = xb[j / 4];
                s += (float)(signed char)(p0 & 0xff) * xv.x + (float)(signed char)(p0 >> 8) * xv.y +
                     (float)(signed char)(p1 & 0xff) * xv.z + (float)(signed char)(p1 >> 8) * xv.w;
            }
        } else {
#pragma unroll
            for (int j = 0; j < 16; j += 4) {
                u32 q = (u32)blk[1 + j / 2] | ((u32)blk[2 + j / 2] << 16);  // bytes j..j+3
                float4 xl = xb[j / 4], xh = xb[4 + j / 4];
                s += (float)((int)(q & 15) - 8) * xl.x + (float)((int)((q >> 8) & 15) - 8) * xl.y +
                     (float)((int)((q >> 16) & 15) - 8) * xl.z + (float)((int)((q >> 24) & 15) - 8) * xl.w;
                s += (float)((int)((q >> 4) & 15) - 8) * xh.x +
                     (float)((int)((q >> 12) & 15) - 8) * xh.y +
                     (float)((int)((q >> 20) & 15) - 8) * xh.z + (float)((int)(q >> 28) - 8) * xh.w;
            }
        }
        acc += d * s;
    }
    return warp_sum(acc);
}

// Eight 16-bit weights (one 16-byte load) times eight f32 inputs.
__device__ __forceinline__ float dot8(uint4 p, float4 x0, float4 x1, int wtype) {
    u32 words[4] = {p.x, p.y, p.z, p.w};
    float xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        u16 lo = (u16)(words[k] & 0xffffu), hi = (u16)(words[k] >> 16);
        float a = wtype == W_BF16 ? bf16_to_f(lo) : f16_to_f(lo);
        float b = wtype == W_BF16 ? bf16_to_f(hi) : f16_to_f(hi);
        acc += a * xs[2 * k] + b * xs[2 * k + 1];
    }
    return acc;
}

// Partial dot products of two 16-bit or f32 rows of one type with x over the part-th of
// `parts` column slices, by one warp: loads of both rows interleaved (twice the bytes in
// flight), the input read once. Results in every lane.
__device__ void dot2_part(const u8* row0, const u8* row1, int wtype, int cols, const float* xf,
                          int part, int parts, float* out0, float* out1) {
    int lane = threadIdx.x & 31;
    float d0 = 0.f, d1 = 0.f;
    if (cols % 8 == 0) {
        int per = wtype == W_F32 ? 4 : 8;  // values per 16-byte load
        int vec = cols / per;
        int lo = vec * part / parts, hi = vec * (part + 1) / parts;
        const uint4* a0 = (const uint4*)row0;
        const uint4* a1 = (const uint4*)row1;
#pragma unroll GEMV_UNROLL
        for (int i = lo + lane; i < hi; i += 32) {
            uint4 p0 = ld_stream(a0 + i), p1 = ld_stream(a1 + i);
            if (per == 8) {
                const float4* xv = (const float4*)(xf + i * 8);
                float4 x0 = xv[0], x1 = xv[1];
                d0 += dot8(p0, x0, x1, wtype);
                d1 += dot8(p1, x0, x1, wtype);
            } else {
                float4 xv = ((const float4*)xf)[i];
                d0 += __uint_as_float(p0.x) * xv.x + __uint_as_float(p0.y) * xv.y +
                      __uint_as_float(p0.z) * xv.z + __uint_as_float(p0.w) * xv.w;
                d1 += __uint_as_float(p1.x) * xv.x + __uint_as_float(p1.y) * xv.y +
                      __uint_as_float(p1.z) * xv.z + __uint_as_float(p1.w) * xv.w;
            }
        }
    } else {
        int lo = cols * part / parts, hi = cols * (part + 1) / parts;
        for (int c = lo + lane; c < hi; c += 32) {
            d0 += load_w(row0, c, wtype) * xf[c];
            d1 += load_w(row1, c, wtype) * xf[c];
        }
    }
    *out0 = warp_sum(d0);
    *out1 = warp_sum(d1);
}

// Dot products of rows r0 and r1 of w (any type) with the input, by one warp: 16-bit/f32 rows
// read x, quantized rows its staged copy xs.
__device__ void rows2(const u8* w, int wtype, int r0, int r1, int cols, const float* x,
                      const float* xs, float* d0, float* d1) {
    if (wtype <= W_BF16) {
        usize row_bytes = (usize)cols * (wtype == W_F32 ? 4 : 2);
        dot2_part(w + r0 * row_bytes, w + r1 * row_bytes, wtype, cols, x, 0, 1, d0, d1);
    } else if (q4_aligned(wtype, cols)) {
        usize row_bytes = (usize)(cols / QK) * Q4_BLOCK_BYTES;
        q4_dot2(w + r0 * row_bytes, w + r1 * row_bytes, cols, xs, d0, d1);
    } else {
        *d0 = qrow_dot(w, wtype, (usize)r0, cols, xs);
        *d1 = qrow_dot(w, wtype, (usize)r1, cols, xs);
    }
}

// Partial dot product of 16-bit/f32 row r of w with x over the part-th of `parts` column
// slices, by one warp.
__device__ float frow_part(const u8* w, int wtype, int r, int cols, const float* x, int part,
                           int parts) {
    float d, same;
    usize row_bytes = (usize)cols * (wtype == W_F32 ? 4 : 2);
    dot2_part(w + r * row_bytes, w + r * row_bytes, wtype, cols, x, part, parts, &d, &same);
    return d;
}

// Dot product of row r of w (any type) with the input, by one warp (as rows2, one row).
__device__ float row_dot(const u8* w, int wtype, int r, int cols, const float* x,
                         const float* xs) {
    return wtype <= W_BF16 ? frow_part(w, wtype, r, cols, x, 0, 1)
                           : qrow_dot(w, wtype, (usize)r, cols, xs);
}

// Sums the warps' partial pairs of a block (GEMV_WARPS warps): thread 0 gets both sums.
__device__ void block_pair_sum(float* d0, float* d1) {
    __shared__ float red[GEMV_WARPS][2];
    int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) {
        red[warp][0] = *d0;
        red[warp][1] = *d1;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float a = 0.f, b = 0.f;
#pragma unroll
        for (int k = 0; k < GEMV_WARPS; ++k) {
            a += red[k][0];
            b += red[k][1];
        }
        *d0 = a;
        *d1 = b;
    }
}

// The two rows of pair p of a matrix: (2p, 2p + 1), or with the rotary embedding fused in, the
// p-th rotation pair of a head of hd values (style 0: (i, i + hd/2), 1: (2i, 2i + 1)).
__device__ __forceinline__ void pair_rows(int p, int rope_hd, int style, int* r0, int* r1) {
    if (rope_hd == 0 || style == 1) {
        *r0 = 2 * p;
        *r1 = 2 * p + 1;
    } else {
        int half = rope_hd / 2, head = p / half, i = p % half;
        *r0 = head * rope_hd + i;
        *r1 = *r0 + half;
    }
}

// Grid: ceil(total row pairs / warps) blocks of `warps` warps (GEMV_WARPS; more when a matrix is
// quantized, so that the input staged in shared memory, a read as large as a Q4_0 row pair per
// warp, serves more rows: see GemvShape in module.rs); each warp takes a pair
// of rows of one matrix (pairs never straddle matrices), reading the input once for both and
// keeping twice the weight loads in flight. (Measured on an H200: better than one row per warp,
// and than splitting a row pair's columns over a block's warps.)
extern "C" __global__ void gemv(GemvBatch b, u64 x, int cols, int accumulate, int stage_x) {
    PDL_BEGIN();
    // Quantized matrices read the input from shared memory (dynamic: xs_index(cols) floats).
    extern __shared__ float xs[];
    if (stage_x) stage_input((const float*)x, xs, cols);
    int warp = threadIdx.x >> 5;
    int pair = blockIdx.x * (blockDim.x >> 5) + warp;
    int m = 0;
    while (m < b.count && pair >= (b.rows[m] + 1) / 2) pair -= (b.rows[m++] + 1) / 2;
    if (m >= b.count) return;
    int r0, r1;
    pair_rows(pair, m < 2 ? b.rope_hd : 0, b.rope_style, &r0, &r1);
    r1 = min(r1, b.rows[m] - 1);
    float d0, d1;
    rows2((const u8*)b.w[m], b.wtype[m], r0, r1, cols, (const float*)x, xs, &d0, &d1);
    if ((threadIdx.x & 31) == 0) {
        float* y = (float*)b.y[m];
        const float* bias = (const float*)b.bias[m];
        float v0 = d0 + (bias ? bias[r0] : 0.f) + (accumulate ? y[r0] : 0.f);
        float v1 = d1 + (bias ? bias[r1] : 0.f) + (accumulate ? y[r1] : 0.f);
        if (b.rope_hd) {
            store_rope_pair(b, m, r0, r1, v0, v1);
        } else {
            y[r0] = v0;
            if (r1 != r0) y[r1] = v1;
        }
    }
}

// h[r] = round_act(silu(dot(gate[r], x)) * dot(up[r], x)) (the feed-forward's first half).
// Float weights: one block of GEMV_WARPS warps per row, the warps splitting the columns.
// Quantized (stage_x = 1): one row per warp, as many warps per block as the host chooses, the
// block sharing the input staged in shared memory (dynamic: xs_index(cols) floats).
extern "C" __global__ void gemv_swiglu(u64 gate, u64 up, int wtype_gate, int wtype_up, u64 x,
                                       u64 h, int rows, int cols, int act, int stage_x) {
    PDL_BEGIN();
    extern __shared__ float xs[];
    const float* xf = (const float*)x;
    float g, u;
    int r;
    if (stage_x) {
        stage_input(xf, xs, cols);
        r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        if (r >= rows) return;
        if (q4_aligned(wtype_gate, cols) && wtype_up == wtype_gate) {
            usize row_bytes = (usize)(cols / QK) * Q4_BLOCK_BYTES;
            q4_dot2((const u8*)gate + r * row_bytes, (const u8*)up + r * row_bytes, cols, xs, &g,
                    &u);
        } else {
            g = row_dot((const u8*)gate, wtype_gate, r, cols, xf, xs);
            u = row_dot((const u8*)up, wtype_up, r, cols, xf, xs);
        }
        if ((threadIdx.x & 31) == 0) ((float*)h)[r] = round_act(g / (1.f + expf(-g)) * u, act);
        return;
    }
    r = blockIdx.x;
    int part = threadIdx.x >> 5;
    if (wtype_gate == wtype_up) {
        usize row_bytes = (usize)cols * (wtype_gate == W_F32 ? 4 : 2);
        dot2_part((const u8*)gate + r * row_bytes, (const u8*)up + r * row_bytes, wtype_gate,
                  cols, xf, part, GEMV_WARPS, &g, &u);
    } else {
        g = frow_part((const u8*)gate, wtype_gate, r, cols, xf, part, GEMV_WARPS);
        u = frow_part((const u8*)up, wtype_up, r, cols, xf, part, GEMV_WARPS);
    }
    block_pair_sum(&g, &u);
    if (threadIdx.x == 0) ((float*)h)[r] = round_act(g / (1.f + expf(-g)) * u, act);
}
