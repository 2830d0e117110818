// Token embedding lookup.

#include "common.cuh"

// x[t, :] = table[ids[t], :] for t < n (grid: n blocks).
extern "C" __global__ void embed(u64 table, int wtype, u64 ids, int hidden, u64 x) {
    PDL_BEGIN();
    int t = blockIdx.x;
    usize row = ((const int*)ids)[t];
    float* out = (float*)x + (usize)t * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x)
        out[c] = load_w((const u8*)table, row * hidden + c, wtype);
}
