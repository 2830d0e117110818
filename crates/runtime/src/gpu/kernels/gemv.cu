// Matrix-vector products of decode on CUDA cores: 16-bit/f32 weights, and every ggml block
// type read directly (quant.cuh; tiled Q4_0: q4_tiles.cu).

#include "gemv.cuh"
#include "quant.cuh"
#include "rows.cuh"

// Warps per GEMV block (the loop unrolling of the 16-bit/f32 rows: rows.cuh): the host passes it
// (-D) and sizes its grids with the same GEMV_WARPS.
#ifndef GEMV_WARPS
#error "GEMV_WARPS must be passed by hoist (-DGEMV_WARPS=...): warps per GEMV block (GemvShape)"
#endif

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
