// Conversions: weights of any type to the activation type (prefill's dequantization for
// cuBLAS), and rounding activations to it.

#include "common.cuh"

// dst[i] = src[i] for i < n: any weight type to the activation type `out_type` (0 f32, 1 f16,
// 2 bf16). Grid-stride.
extern "C" __global__ void convert(u64 src, int wtype, u64 dst, int out_type, long long n) {
    PDL_BEGIN();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float v = load_w((const u8*)src, (usize)i, wtype);
        store_act(dst, (usize)i, round_act(v, out_type), out_type);
    }
}

// Rounds x (f32, n values) to `act` in place and, if out_a != 0, stores it as `act` there.
extern "C" __global__ void round_cast(u64 x, u64 out_a, int act, long long n) {
    PDL_BEGIN();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float v = round_act(((float*)x)[i], act);
        ((float*)x)[i] = v;
        if (out_a) store_act(out_a, (usize)i, v, act);
    }
}
