// What every op family of hoist's GPU kernels shares (kernels/*.cu, compiled by NVRTC at run time
// for the device's own architecture as one program; see kernels/mod.rs): types, programmatic
// dependent launch, float conversions, weight loads, warp and block reductions.
//
// No CUDA headers: NVRTC is used without the toolkit's include directory, so half and bfloat16
// are handled as raw 16-bit words with PTX conversions. Every pointer argument is passed by
// the host as a 64-bit device address; every count is an `int` (the host checks ranges).
//
// Conventions (see gpu/mod.rs): activations are f32, row-major [tokens, features]; weights are
// [out, in] row-major in their file type (wtype: W_F32, W_F16, W_BF16, or one of ggml's block
// types, quant.cuh; Q4_0 repacked into tiles at load is read by q4_tiles.cu alone);
// "act" is the float type GEMM inputs are rounded to (0 f32, 1 f16, 2 bf16).

#ifndef HOIST_COMMON_CUH
#define HOIST_COMMON_CUH

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long long usize; // no headers, so no usize

#define NEG_INF __int_as_float(0xff800000)

// Programmatic dependent launch (Hopper and newer): the host launches every kernel allowed to
// start before the previous one has finished; each kernel first lets the next one be scheduled,
// then waits until the previous grid has completed and its writes are visible. Decode is a
// chain of ~300 short kernels, and this hides most of the gap between them.
// Kernels that read weights first (q4_tiles.cu) split the two: they start loading weights,
// which no kernel writes, before they wait (PDL_LAUNCH, loads, then PDL_WAIT).
#if __CUDA_ARCH__ >= 900
#define PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;")
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define PDL_LAUNCH() \
    do {             \
    } while (0)
#define PDL_WAIT() \
    do {           \
    } while (0)
#endif
#define PDL_BEGIN()   \
    do {              \
        PDL_LAUNCH(); \
        PDL_WAIT();   \
    } while (0)

// Constants shared with the host, passed by it as -D options from one Rust definition each
// (gpu/kernels/mod.rs): the weight-type codes (WType's; the other block types' are checked in
// quant.cuh), the values per quantized block and the bytes of a Q8_0 block (f16 scale + 32
// int8) and of a Q4_0 block (f16 scale + 16 bytes of nibbles).
#ifndef W_F32
#error "W_F32 must be passed by hoist (-DW_F32=...): weight-type code"
#endif
#ifndef W_F16
#error "W_F16 must be passed by hoist (-DW_F16=...): weight-type code"
#endif
#ifndef W_BF16
#error "W_BF16 must be passed by hoist (-DW_BF16=...): weight-type code"
#endif
#ifndef W_Q8_0
#error "W_Q8_0 must be passed by hoist (-DW_Q8_0=...): weight-type code"
#endif
#ifndef W_Q4_0
#error "W_Q4_0 must be passed by hoist (-DW_Q4_0=...): weight-type code"
#endif
#ifndef QK
#error "QK must be passed by hoist (-DQK=...): values per quantized block"
#endif
#ifndef Q8_BLOCK_BYTES
#error "Q8_BLOCK_BYTES must be passed by hoist (-DQ8_BLOCK_BYTES=...): bytes of a Q8_0 block"
#endif
#ifndef Q4_BLOCK_BYTES
#error "Q4_BLOCK_BYTES must be passed by hoist (-DQ4_BLOCK_BYTES=...): bytes of a Q4_0 block"
#endif

__device__ __forceinline__ float bf16_to_f(u16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ float f16_to_f(u16 h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f_to_f16(float f) {
    u16 h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}

// Round to nearest even, NaN kept quiet (what torch does).
__device__ __forceinline__ u16 f_to_bf16(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (u16)(x >> 16);
}

// `v` rounded to the activation type's precision (kept as f32).
__device__ __forceinline__ float round_act(float v, int act) {
    if (act == 1) return f16_to_f(f_to_f16(v));
    if (act == 2) return bf16_to_f(f_to_bf16(v));
    return v;
}

// Stores `v` (already rounded) as the activation type at element i of `out`.
__device__ __forceinline__ void store_act(u64 out, usize i, float v, int act) {
    if (act == 0) ((float*)out)[i] = v;
    else if (act == 1) ((u16*)out)[i] = f_to_f16(v);
    else ((u16*)out)[i] = f_to_bf16(v);
}

// Row t of a batched decode step (gpu/llama/batch.rs): its sequence's KV caches, given as three
// u64s a row in `rows` (the key and value caches' base addresses, each [layers][kv_heads][cap]
// [hd] of type kv, then cap), resolved to layer `layer`'s.
struct KvRow {
    u64 k, v;
    int cap;
};
__device__ __forceinline__ KvRow kv_row(u64 rows, int t, int layer, int kv_heads, int hd,
                                        int kv) {
    const u64* r = (const u64*)rows + 3 * (usize)t;
    int cap = (int)r[2];
    usize layer_bytes = (usize)kv_heads * cap * hd * (kv == 0 ? 4 : 2) * layer;
    KvRow out = {r[0] + layer_bytes, r[1] + layer_bytes, cap};
    return out;
}

// A 16-byte weight load that bypasses L1 (weights are read once; L1 keeps the input vector,
// which every row reads).
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// An 8-byte weight load that bypasses L1 (see ld_stream).
__device__ __forceinline__ uint2 ld_stream2(const uint2* p) {
    uint2 v;
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

// Element i of a 16-bit or f32 weight tensor of type wtype, as f32 (block-quantized types are
// read by slices: quant.cuh).
__device__ __forceinline__ float load_w(const u8* w, usize i, int wtype) {
    switch (wtype) {
    case W_F32: return ((const float*)w)[i];
    case W_F16: return f16_to_f(((const u16*)w)[i]);
    default: return bf16_to_f(((const u16*)w)[i]);
    }
}

// Sum (IS_MAX false) or maximum over a warp; every lane gets it.
template <bool IS_MAX>
__device__ __forceinline__ float warp_reduce(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = IS_MAX ? fmaxf(v, other) : v + other;
    }
    return v;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<false>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<true>(v); }

// Sum or maximum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets
// it.
template <bool IS_MAX>
__device__ float block_reduce(float v) {
    __shared__ float part[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce<IS_MAX>(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? part[lane] : (IS_MAX ? NEG_INF : 0.f);
        s = warp_reduce<IS_MAX>(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

__device__ float block_sum(float v) { return block_reduce<false>(v); }
__device__ float block_max(float v) { return block_reduce<true>(v); }

#endif  // HOIST_COMMON_CUH
