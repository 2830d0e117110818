// Row products shared by the decode GEMVs (gemv.cu) and the expert products (moe.cu): the
// input quantized into shared memory for block-quantized rows (stage_xq), a warp's dot products
// of one or two rows of any weight type with it.

#ifndef HOIST_ROWS_CUH
#define HOIST_ROWS_CUH

#include "common.cuh"
#include "quant.cuh"

#ifndef GEMV_UNROLL
#error "GEMV_UNROLL must be passed by hoist (-DGEMV_UNROLL=...): unrolling of the 16-bit/f32 GEMV (GemvShape)"
#endif

// The quantized GEMVs' staged input (stage_xq), dynamic shared memory of xq_bytes(cols).
extern __shared__ __align__(16) u8 xq_smem[];

// Quantizes the input x (cols f32, a multiple of 32) into shared memory for the quantized
// GEMVs (see Xq in quant.cuh): per 32 values d = max|x| / 32767 and q = rint(x / d) (0 where
// all are 0), a warp per 32, four groups' loads at a time (their latencies overlap: the block
// waits on this before its products); the whole block calls it.
__device__ void stage_xq(const float* x, u8* smem, int cols) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    short* q = (short*)smem;
    float* d = (float*)(smem + 2 * cols);
    int* sum = (int*)(smem + 2 * cols + cols / 8);
    int groups = cols / 32;
    for (int b0 = warp; b0 < groups; b0 += 4 * warps) {
        float v[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int b = b0 + j * warps;
            v[j] = b < groups ? x[32 * b + lane] : 0.f;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int b = b0 + j * warps;  // the same for the whole warp
            if (b >= groups) break;
            float amax = warp_max(fabsf(v[j]));
            float scale = amax / 32767.f;
            int qv = amax == 0.f ? 0 : (int)rintf(v[j] / scale);
            q[32 * b + lane] = (short)qv;
            int s = qv;
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) d[b] = scale;
            if ((lane & 15) == 0) sum[2 * b + lane / 16] = s;
        }
    }
    __syncthreads();
}

// Dot products of rows w0 and w1 (R = 2; R = 1: w0 alone) of type T (quant.cuh) with the
// staged input `xs` (stage_xq), by one warp: lane l takes slices l, l + 32, … of the rows
// (consecutive lanes, consecutive bytes), reading each slice's inputs once for both rows.
// Results in every lane.
template <int T, int R>
__device__ void qdot(const u8* w0, const u8* w1, int cols, const u8* xs, float* out0,
                     float* out1) {
    const int per_block = Layout<T>::VALUES / 32;
    Xq x = xq_view(xs, cols);
    int lane = threadIdx.x & 31, slices = cols / 32;
    float acc0 = 0.f, acc1 = 0.f;
    // Not unrolled: as measured (unrolled twice it would take 100 registers, the same
    // occupancy; not measured yet).
#pragma unroll 1
    for (int sl = lane; sl < slices; sl += 32) {
        int blk = sl / per_block, k = sl % per_block;
        usize at = (usize)blk * Layout<T>::BYTES;
        Slice s0 = Quant<T>::slice(w0 + at, k), s1;
        if (R == 2) s1 = Quant<T>::slice(w1 + at, k);
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            int p = blk * Layout<T>::VALUES + s0.pos[g];
            acc0 += run_dot<T>(s0, g, x, p);
            if (R == 2) acc1 += run_dot<T>(s1, g, x, p);
        }
    }
    *out0 = warp_sum(acc0);
    if (R == 2) *out1 = warp_sum(acc1);
}

// Dot products of row r0 of w0 and row r1 of w1, both of the block type `wtype` (rows of `cols`
// values), with the staged input, by one warp (see qdot). Not inlined: the twelve types'
// loops inlined into one kernel take the registers of all (170 against 72 for the calling
// kernel with a call per row pair, whose cost is nothing beside a row's work).
__device__ __noinline__ void quant_dot2(int wtype, const u8* w0, usize r0, const u8* w1,
                                        usize r1, int cols, const u8* xs, float* d0, float* d1) {
    usize rb = quant_row_bytes(wtype, cols);
#define QDOT2(T) qdot<T, 2>(w0 + r0 * rb, w1 + r1 * rb, cols, xs, d0, d1);
    QUANT_DISPATCH(wtype, QDOT2)
#undef QDOT2
}

// Dot product of row r of w (block type `wtype`) with the staged input, by one warp (not
// inlined, as quant_dot2).
__device__ __noinline__ float quant_dot(int wtype, const u8* w, usize r, int cols,
                                        const u8* xs) {
    float d = 0.f, unused;
    usize rb = quant_row_bytes(wtype, cols);
#define QDOT1(T) qdot<T, 1>(w + r * rb, w + r * rb, cols, xs, &d, &unused);
    QUANT_DISPATCH(wtype, QDOT1)
#undef QDOT1
    return d;
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
                         const u8* xs) {
    return wtype <= W_BF16 ? frow_part(w, wtype, r, cols, x, 0, 1)
                           : quant_dot(wtype, w, (usize)r, cols, xs);
}

#endif  // HOIST_ROWS_CUH
