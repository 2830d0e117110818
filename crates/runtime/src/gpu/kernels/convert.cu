// Conversions: weights of any type to the activation type (prefill's dequantization for
// cuBLAS), and rounding activations to it.

#include "quant.cuh"

// Threads of `convert` on block-quantized types (its host sizes the grid in these blocks).
#ifndef DEQUANT_THREADS
#error "DEQUANT_THREADS must be passed by hoist (-DDEQUANT_THREADS=...): threads of a dequantizing convert"
#endif

// The n slices of a block-quantized tensor (quant.cuh) to dst as `out_type`: each block of
// DEQUANT_THREADS threads decodes as many consecutive slices into shared memory, then writes
// them out in 16-byte stores of consecutive addresses (a thread's own 32 values are 64 or 128
// bytes apart from its neighbours': stored directly, every store would touch 32 segments).
// One tile for every type's instantiation (a __shared__ array inside the template would be one
// per type, all allocated to the kernel).
__shared__ __align__(16) u8 dequant_tile[DEQUANT_THREADS * 32 * 4];

template <int T> __device__ void dequant_slices(const u8* src, u64 dst, int out_type, usize n) {
    u8* tile = dequant_tile;
    const usize per = DEQUANT_THREADS, esize = out_type == 0 ? 4 : 2;
    for (usize first = blockIdx.x * per; first < n; first += (usize)gridDim.x * per) {
        usize s = first + threadIdx.x, count = min(per, n - first);
        if (s < n) dequant_slice<T>(src, s, (u64)tile, first * 32, out_type);
        __syncthreads();
        const uint4* from = (const uint4*)tile;
        uint4* to = (uint4*)((u8*)dst + first * 32 * esize);
        for (usize i = threadIdx.x; i < count * 32 * esize / 16; i += per) to[i] = from[i];
        __syncthreads();
    }
}

// dst[i] = src[i] for i < n: any weight type to the activation type `out_type` (0 f32, 1 f16,
// 2 bf16); block-quantized types a thread per 32-value slice (n a multiple of 32; blocks of
// DEQUANT_THREADS), as the CPU reference computes each value. Grid-stride.
extern "C" __global__ void convert(u64 src, int wtype, u64 dst, int out_type, long long n) {
    PDL_BEGIN();
    if (is_quant(wtype)) {
#define DEQUANT(T) dequant_slices<T>((const u8*)src, dst, out_type, (usize)n / 32);
        QUANT_DISPATCH(wtype, DEQUANT)
#undef DEQUANT
        return;
    }
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
