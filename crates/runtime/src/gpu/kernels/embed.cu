// Token embedding lookup.

#include "quant.cuh"

// x[t, :] = table[ids[t], :] for t < n (grid: n blocks); block-quantized tables a thread per
// 32-value slice of the row (hidden a multiple of the type's block).
extern "C" __global__ void embed(u64 table, int wtype, u64 ids, int hidden, u64 x) {
    PDL_BEGIN();
    int t = blockIdx.x;
    usize row = ((const int*)ids)[t];
    float* out = (float*)x + (usize)t * hidden;
    if (is_quant(wtype)) {
        const u8* src = (const u8*)table + row * quant_row_bytes(wtype, hidden);
#define EMBED(T)                                                \
    for (int s = threadIdx.x; s < hidden / 32; s += blockDim.x) \
        dequant_slice<T>(src, s, (u64)out, 0, 0);
        QUANT_DISPATCH(wtype, EMBED)
#undef EMBED
        return;
    }
    for (int c = threadIdx.x; c < hidden; c += blockDim.x)
        out[c] = load_w((const u8*)table, row * hidden + c, wtype);
}
