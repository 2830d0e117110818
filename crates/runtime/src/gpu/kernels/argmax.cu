// Greedy decoding on the device.

#include "common.cuh"

// Candidate (av, ai) beats (bv, bi): a larger value, or the same value at a smaller index.
// (Candidates are never NaN: `v > best` is false for NaN, so NaN logits are skipped.)
__device__ __forceinline__ bool beats(float av, int ai, float bv, int bi) {
    return av > bv || (av == bv && ai < bi);
}

// ids[0] = arg-max of logits[0..vocab) (the first index of the largest value; NaN ignored; 0 if
// no value exceeds -inf, as sampler::argmax), ids[1] += 1: the next step's token and position,
// so that decode steps chain on the device without the host (grid: 1 block of ARGMAX_THREADS).
#ifndef ARGMAX_THREADS
#error "ARGMAX_THREADS must be passed by hoist (-DARGMAX_THREADS=...): threads of argmax_next's block"
#endif
extern "C" __global__ void argmax_next(u64 logits, int vocab, u64 ids) {
    PDL_BEGIN();
    const float* l = (const float*)logits;
    const int none = 0x7fffffff;
    float bv = NEG_INF;
    int bi = none;
    // Each thread sees its indices in increasing order, so a strict > keeps the first maximum.
    int quads = vocab / 4;
    for (int q = threadIdx.x; q < quads; q += blockDim.x) {
        float4 v = ((const float4*)l)[q];
        if (v.x > bv) { bv = v.x; bi = 4 * q; }
        if (v.y > bv) { bv = v.y; bi = 4 * q + 1; }
        if (v.z > bv) { bv = v.z; bi = 4 * q + 2; }
        if (v.w > bv) { bv = v.w; bi = 4 * q + 3; }
    }
    for (int i = 4 * quads + threadIdx.x; i < vocab; i += blockDim.x)
        if (l[i] > bv) { bv = l[i]; bi = i; }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (beats(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    __shared__ float sv[32];
    __shared__ int si[32];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x / 32;
        bv = lane < warps ? sv[lane] : NEG_INF;
        bi = lane < warps ? si[lane] : none;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (beats(ov, oi, bv, bi)) { bv = ov; bi = oi; }
        }
        if (lane == 0) {
            ((int*)ids)[0] = bi == none ? 0 : bi;
            ((int*)ids)[1] += 1;
        }
    }
}
