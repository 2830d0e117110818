// Mixture-of-experts feed-forward blocks (Mixtral, Qwen2-MoE, Qwen3-MoE): the router's top-k,
// decode's products over only the chosen experts (gate and up in one launch, down in one, their
// weighted sum in a third), and prefill's gather and scatter around per-expert cuBLAS products.
//
// Decode needs no host round trip: the chosen experts' ids stay on the device and each block
// finds its expert's matrices in a table of addresses, so the step is still one captured graph.

#include "common.cuh"
#include "rows.cuh"

#ifndef MOE_MAX_TOP_K
#error "MOE_MAX_TOP_K must be passed by hoist (-DMOE_MAX_TOP_K=...): most experts per token"
#endif

// The expert matrices of one sparse layer (twin of the host's MoeMats): tables of each
// expert's gate, up and down addresses (u64[experts] each) and their types; the shared expert's
// three matrices (Qwen2-MoE; srows = 0 when there is none).
struct MoeMats {
    u64 gate;
    u64 up;
    u64 down;
    int wtype[3];
    int rows;  // expert width: gate/up rows, down columns
    u64 sgate;
    u64 sup;
    u64 sdown;
    int swtype[3];
    int srows;  // shared expert width (0: none)
};

// Routing of token t (one warp per token, grid = tokens; dynamic shared memory: `experts`
// floats a block): the softmax over the `experts` f32 logits of row t, its k largest
// probabilities (ties to the lower index, as a stable sort), divided by their sum when `norm`;
// written in ascending expert order (the order the experts' outputs are added in, as
// transformers does): ids[t·k + j] and w[t·(k+1) + j]. With `shared` non-zero,
// w[t·(k+1) + k] = sigmoid(shared[t]), the shared expert's gate. Lane l owns the probabilities of
// experts l, l + 32, … in shared memory (no other lane touches them: no barrier), and marks the
// chosen ones taken (-2, below any probability).
extern "C" __global__ void moe_route(u64 logits, int experts, int k, int norm, u64 shared,
                                     u64 ids, u64 w) {
    PDL_BEGIN();
    int t = blockIdx.x, lane = threadIdx.x & 31;
    const float* l = (const float*)logits + (usize)t * experts;
    float* p = (float*)xq_smem;
    float mx = NEG_INF;
    for (int e = lane; e < experts; e += 32) mx = fmaxf(mx, l[e]);
    mx = warp_max(mx);
    float sum = 0.f;
    for (int e = lane; e < experts; e += 32) sum += expf(l[e] - mx);
    sum = warp_sum(sum);
    for (int e = lane; e < experts; e += 32) p[e] = expf(l[e] - mx) / sum;
    const float taken = -2.f;
    int chosen[MOE_MAX_TOP_K];
    float pk[MOE_MAX_TOP_K];
    float picked = 0.f;
    for (int j = 0; j < k; ++j) {
        // Each lane's best (its experts walked upwards: a strict comparison keeps the lower
        // index of a tie), then the warp's.
        float best = -1.f;
        int at = 0x7fffffff;
        for (int e = lane; e < experts; e += 32) {
            if (p[e] > best) {
                best = p[e];
                at = e;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ob = __shfl_xor_sync(0xffffffffu, best, o);
            int oa = __shfl_xor_sync(0xffffffffu, at, o);
            if (ob > best || (ob == best && oa < at)) {
                best = ob;
                at = oa;
            }
        }
        if (at >= experts) {
            // Non-finite logits: the lowest expert not taken yet, so that every id stays in
            // range and distinct (the results are meaningless, the memory accesses are not).
            at = 0x7fffffff;
            for (int e = lane; e < experts; e += 32) {
                if (p[e] != taken) {
                    at = e;
                    break;
                }
            }
            for (int o = 16; o > 0; o >>= 1) at = min(at, __shfl_xor_sync(0xffffffffu, at, o));
            best = 0.f;
        }
        if ((at & 31) == lane) p[at] = taken;
        chosen[j] = at;
        pk[j] = best;
        picked += best;
    }
    if (lane != 0) return;
    // Ascending expert order (insertion sort: k is small).
    for (int i = 1; i < k; ++i) {
        for (int j = i; j > 0 && chosen[j - 1] > chosen[j]; --j) {
            int e = chosen[j];
            chosen[j] = chosen[j - 1];
            chosen[j - 1] = e;
            float v = pk[j];
            pk[j] = pk[j - 1];
            pk[j - 1] = v;
        }
    }
    float* wt = (float*)w + (usize)t * (k + 1);
    for (int j = 0; j < k; ++j) {
        ((int*)ids)[(usize)t * k + j] = chosen[j];
        wt[j] = norm ? pk[j] / picked : pk[j];
    }
    if (shared) wt[k] = 1.f / (1.f + expf(-((const float*)shared)[t]));
}

// Slot s of a decode step: expert ids[s] for s < k, the shared expert for s == k.
__device__ __forceinline__ void moe_slot(const MoeMats& m, u64 ids, int k, int s, u64* gate,
                                         u64* up, u64* down, int* wt, int* rows) {
    if (s < k) {
        int e = ((const int*)ids)[s];
        *gate = ((const u64*)m.gate)[e];
        *up = ((const u64*)m.up)[e];
        *down = ((const u64*)m.down)[e];
        wt[0] = m.wtype[0];
        wt[1] = m.wtype[1];
        wt[2] = m.wtype[2];
        *rows = m.rows;
    } else {
        *gate = m.sgate;
        *up = m.sup;
        *down = m.sdown;
        wt[0] = m.swtype[0];
        wt[1] = m.swtype[1];
        wt[2] = m.swtype[2];
        *rows = m.srows;
    }
}

// Decode's first half of every chosen expert of one token (and of the shared expert): slot
// s = blockIdx.y (moe_slot), h[s·stride + r] = round_act(silu(gate_r·x) · (up_r·x)) for the
// slot's rows. A row per warp, rows gridDim.x · warps apart; block-quantized weights read the
// input quantized into shared memory (xq_bytes(cols), as gemv_q).
extern "C" __global__ void moe_swiglu(MoeMats m, u64 ids, int k, u64 x, int cols, u64 h,
                                      int stride, int act) {
    PDL_BEGIN();
    int s = blockIdx.y;
    u64 gate, up, down;
    int wt[3], rows;
    moe_slot(m, ids, k, s, &gate, &up, &down, wt, &rows);
    const float* xf = (const float*)x;
    // Row bytes of gate and up (the float types' included), for the L2 prefetches below.
    usize gb = wt[0] > W_BF16 ? quant_row_bytes(wt[0], cols) : (usize)cols * (wt[0] == W_F32 ? 4 : 2);
    usize ub = wt[1] > W_BF16 ? quant_row_bytes(wt[1], cols) : (usize)cols * (wt[1] == W_F32 ? 4 : 2);
    int step = gridDim.x * (blockDim.x >> 5);
    int first = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (first < rows) {
        // The first rows' weights are on their way while the input is staged.
        prefetch_l2((const u8*)gate + first * gb, gb);
        prefetch_l2((const u8*)up + first * ub, ub);
    }
    if (wt[0] > W_BF16 || wt[1] > W_BF16) stage_xq(xf, xq_smem, cols);
    for (int r = first; r < rows; r += step) {
        if (r + step < rows) {
            prefetch_l2((const u8*)gate + (usize)(r + step) * gb, gb);
            prefetch_l2((const u8*)up + (usize)(r + step) * ub, ub);
        }
        float g, u;
        if (wt[0] == wt[1] && wt[0] > W_BF16) {
            quant_dot2(wt[0], (const u8*)gate, (usize)r, (const u8*)up, (usize)r, cols, xq_smem,
                       &g, &u);
        } else if (wt[0] == wt[1]) {
            usize rb = (usize)cols * (wt[0] == W_F32 ? 4 : 2);
            dot2_part((const u8*)gate + r * rb, (const u8*)up + r * rb, wt[0], cols, xf, 0, 1,
                      &g, &u);
        } else {
            g = row_dot((const u8*)gate, wt[0], r, cols, xf, xq_smem);
            u = row_dot((const u8*)up, wt[1], r, cols, xf, xq_smem);
        }
        if ((threadIdx.x & 31) == 0)
            ((float*)h)[(usize)s * stride + r] = round_act(g / (1.f + expf(-g)) * u, act);
    }
}

// Bytes of slot s's staged input in moe_down's shared memory (16-byte aligned regions: the
// products read it with vector loads): slots before the shared one take xq_bytes(rows) each.
__device__ __forceinline__ int moe_staged_at(const MoeMats& m, int s) {
    return s * ((xq_bytes(m.rows) + 15) & ~15);
}

// Decode's second half and the weighted sum: y[r] += Σ_s w[s] · (down_s,r · h[s·stride ..]) over
// the slots in order (the chosen experts ascending, then the shared one, its gate in w[k]).
// A row of every slot per warp, rows gridDim.x · warps apart; each block first stages every
// block-quantized slot's input (moe_staged_at; the host sizes the shared memory).
extern "C" __global__ void moe_down(MoeMats m, u64 ids, int k, int slots, u64 h, int stride,
                                    int hidden, u64 w, u64 y) {
    PDL_BEGIN();
    int step = gridDim.x * (blockDim.x >> 5);
    int first = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    for (int s = 0; s < slots; ++s) {
        u64 gate, up, down;
        int wt[3], cols;
        moe_slot(m, ids, k, s, &gate, &up, &down, wt, &cols);
        // The warp's first row of every slot on its way to L2 while the inputs are staged.
        usize rb = wt[2] > W_BF16 ? quant_row_bytes(wt[2], cols)
                                  : (usize)cols * (wt[2] == W_F32 ? 4 : 2);
        if (first < hidden) prefetch_l2((const u8*)down + first * rb, rb);
        if (wt[2] > W_BF16)
            stage_xq((const float*)h + (usize)s * stride, xq_smem + moe_staged_at(m, s), cols);
    }
    for (int r = first; r < hidden; r += step) {
        float acc = 0.f;
        for (int s = 0; s < slots; ++s) {
            u64 gate, up, down;
            int wt[3], cols;
            moe_slot(m, ids, k, s, &gate, &up, &down, wt, &cols);
            const float* xf = (const float*)h + (usize)s * stride;
            float d = row_dot((const u8*)down, wt[2], r, cols, xf, xq_smem + moe_staged_at(m, s));
            acc += ((const float*)w)[s] * d;
        }
        if ((threadIdx.x & 31) == 0) ((float*)y)[r] += acc;
    }
}

// Prefill: dst[i] = src[list[2i]] for i < n, rows of `row_words` 16-bit words (the tokens that
// go to experts, gathered into consecutive rows for their GEMMs); a token of -1 is padding, a
// row of zeros. A block per row.
extern "C" __global__ void moe_gather(u64 src, u64 list, int n, int row_words, u64 dst) {
    PDL_BEGIN();
    int i = blockIdx.x;
    if (i >= n) return;
    int t = ((const int*)list)[2 * i];
    u16* to = (u16*)dst + (usize)i * row_words;
    if (t < 0) {
        for (int c = threadIdx.x; c < row_words; c += blockDim.x) to[c] = 0;
        return;
    }
    const u16* from = (const u16*)src + (usize)t * row_words;
    for (int c = threadIdx.x; c < row_words; c += blockDim.x) to[c] = from[c];
}

// Prefill, the experts batched: y[t] += Σ_{j < k} w[t·(k+1) + j] · out[rows[t·k + j]] (rows of
// `cols` f32; j ascending is the experts ascending, as moe_route orders them). A block per
// token.
extern "C" __global__ void moe_combine(u64 out, u64 rows, u64 w, int k, int cols, u64 y) {
    PDL_BEGIN();
    int t = blockIdx.x;
    const int* r = (const int*)rows + (usize)t * k;
    const float* wt = (const float*)w + (usize)t * (k + 1);
    float* to = (float*)y + (usize)t * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < k; ++j) acc += wt[j] * ((const float*)out)[(usize)r[j] * cols + c];
        to[c] += acc;
    }
}

// Prefill: y[t] += w[t·wstride + j] · out[i] for i < n, (t, j) = (list[2i], list[2i + 1]) (a
// token and its slot), rows of `cols` f32. A block per row; a token appears once per list, so
// no two blocks write one row.
extern "C" __global__ void moe_scatter(u64 out, u64 list, int n, u64 w, int wstride, int cols,
                                       u64 y) {
    PDL_BEGIN();
    int i = blockIdx.x;
    if (i >= n) return;
    int t = ((const int*)list)[2 * i], j = ((const int*)list)[2 * i + 1];
    float wt = ((const float*)w)[(usize)t * wstride + j];
    const float* o = (const float*)out + (usize)i * cols;
    float* to = (float*)y + (usize)t * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) to[c] += wt * o[c];
}
