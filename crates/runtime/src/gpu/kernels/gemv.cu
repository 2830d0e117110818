// Matrix-vector products of decode on CUDA cores: 16-bit/f32 weights, and every ggml block
// type read directly (quant.cuh; tiled Q4_0: q4_tiles.cu).

#include "gemv.cuh"
#include "quant.cuh"

// Warps per GEMV block and loop unrolling of the 16-bit/f32 GEMV: the host passes both (-D) and
// sizes its grids with the same GEMV_WARPS.
#ifndef GEMV_WARPS
#error "GEMV_WARPS must be passed by hoist (-DGEMV_WARPS=...): warps per GEMV block (GemvShape)"
#endif
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

// Row pair `pair` of a batch: its matrix m and rows r0, r1 (as the GEMV grids number them: the
// pairs of matrix 0, then of 1...; with the rotary embedding fused in, rotation pairs); false
// past the last.
__device__ __forceinline__ bool batch_pair(const GemvBatch& b, int pair, int* m, int* r0,
                                           int* r1) {
    int k = 0;
    while (k < b.count && pair >= (b.rows[k] + 1) / 2) pair -= (b.rows[k++] + 1) / 2;
    if (k >= b.count) return false;
    pair_rows(pair, k < 2 ? b.rope_hd : 0, b.rope_style, r0, r1);
    *r1 = min(*r1, b.rows[k] - 1);
    *m = k;
    return true;
}

// Adds bias and (with `accumulate`) what y holds to a row pair's results and stores them where
// the batch sends them (by lane 0).
__device__ __forceinline__ void store_pair(const GemvBatch& b, int m, int r0, int r1, float d0,
                                           float d1, int accumulate) {
    if ((threadIdx.x & 31) != 0) return;
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

// Up to three 16-bit/f32 matrices (GemvBatch) in one launch. Grid: ceil(total row pairs /
// GEMV_WARPS) blocks of GEMV_WARPS warps; each warp takes a pair of rows of one matrix (pairs
// never straddle matrices), reading the input once for both and keeping twice the weight
// loads in flight. (Measured on an H200: better than one row per warp, and than splitting a
// row pair's columns over a block's warps.)
extern "C" __global__ void gemv(GemvBatch b, u64 x, int cols, int accumulate) {
    PDL_BEGIN();
    int m, r0, r1;
    if (!batch_pair(b, blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), &m, &r0, &r1)) return;
    float d0, d1;
    const u8* w = (const u8*)b.w[m];
    usize row_bytes = (usize)cols * (b.wtype[m] == W_F32 ? 4 : 2);
    dot2_part(w + r0 * row_bytes, w + r1 * row_bytes, b.wtype[m], cols, (const float*)x, 0, 1,
              &d0, &d1);
    store_pair(b, m, r0, r1, d0, d1, accumulate);
}

// Brings row pair `pair`'s weights into L2 (nothing past the last pair).
__device__ __forceinline__ void prefetch_pair(const GemvBatch& b, int pair, int cols) {
    int m, r0, r1;
    if (!batch_pair(b, pair, &m, &r0, &r1)) return;
    usize rb = quant_row_bytes(b.wtype[m], cols);
    prefetch_l2((const u8*)b.w[m] + r0 * rb, rb);
    if (r1 != r0) prefetch_l2((const u8*)b.w[m] + r1 * rb, rb);
}

// Up to three block-quantized matrices (any mix of types) in one launch, a row pair per warp
// as `gemv`, but on a grid of at most as many blocks as are resident at once (the host sizes
// it): each block quantizes the input into shared memory once (xq_bytes(cols), stage_xq) and
// its warps go through pairs gridDim.x · warps apart, each asking L2 for its next pair's
// weights before computing the current one. The first pair's are asked for before the wait
// on the previous kernel (they do not depend on it).
extern "C" __global__ void gemv_q(GemvBatch b, u64 x, int cols, int accumulate) {
    PDL_LAUNCH();
    int step = gridDim.x * (blockDim.x >> 5);
    int first = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    prefetch_pair(b, first, cols);
    PDL_WAIT();
    stage_xq((const float*)x, xq_smem, cols);
#pragma unroll 1
    for (int pair = first;; pair += step) {
        int m, r0, r1;
        if (!batch_pair(b, pair, &m, &r0, &r1)) return;
        prefetch_pair(b, pair + step, cols);
        float d0, d1;
        const u8* w = (const u8*)b.w[m];
        quant_dot2(b.wtype[m], w, (usize)r0, w, (usize)r1, cols, xq_smem, &d0, &d1);
        store_pair(b, m, r0, r1, d0, d1, accumulate);
    }
}

// h[r] = round_act(silu(dot(gate[r], x)) * dot(up[r], x)) for block-quantized gate and up: a
// row of both per warp, on a grid sized and walked as gemv_q's (the input staged once a block,
// the next row asked of L2 before the current one is computed).
extern "C" __global__ void gemv_swiglu_q(u64 gate, u64 up, int wtype_gate, int wtype_up, u64 x,
                                         u64 h, int rows, int cols, int act) {
    PDL_LAUNCH();
    int step = gridDim.x * (blockDim.x >> 5);
    int first = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    usize gb = quant_row_bytes(wtype_gate, cols), ub = quant_row_bytes(wtype_up, cols);
    if (first < rows) {
        prefetch_l2((const u8*)gate + first * gb, gb);
        prefetch_l2((const u8*)up + first * ub, ub);
    }
    PDL_WAIT();
    stage_xq((const float*)x, xq_smem, cols);
#pragma unroll 1
    for (int r = first; r < rows; r += step) {
        if (r + step < rows) {
            prefetch_l2((const u8*)gate + (usize)(r + step) * gb, gb);
            prefetch_l2((const u8*)up + (usize)(r + step) * ub, ub);
        }
        float g, u;
        if (wtype_up == wtype_gate) {
            quant_dot2(wtype_gate, (const u8*)gate, (usize)r, (const u8*)up, (usize)r, cols,
                       xq_smem, &g, &u);
        } else {
            g = quant_dot(wtype_gate, (const u8*)gate, (usize)r, cols, xq_smem);
            u = quant_dot(wtype_up, (const u8*)up, (usize)r, cols, xq_smem);
        }
        if ((threadIdx.x & 31) == 0) ((float*)h)[r] = round_act(g / (1.f + expf(-g)) * u, act);
    }
}

// h[r] = round_act(silu(dot(gate[r], x)) * dot(up[r], x)) (the feed-forward's first half).
// Float weights: one block of GEMV_WARPS warps per row, the warps splitting the columns. One
// block-quantized and one float matrix (stage_x = 1; both quantized: gemv_swiglu_q): one row per
// warp, as many warps per block as the host chooses, the block sharing the input quantized in
// shared memory (dynamic: xq_bytes(cols)).
extern "C" __global__ void gemv_swiglu(u64 gate, u64 up, int wtype_gate, int wtype_up, u64 x,
                                       u64 h, int rows, int cols, int act, int stage_x) {
    PDL_BEGIN();
    const float* xf = (const float*)x;
    float g, u;
    int r;
    if (stage_x) {
        stage_xq(xf, xq_smem, cols);
        r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        if (r >= rows) return;
        g = row_dot((const u8*)gate, wtype_gate, r, cols, xf, xq_smem);
        u = row_dot((const u8*)up, wtype_up, r, cols, xf, xq_smem);
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
