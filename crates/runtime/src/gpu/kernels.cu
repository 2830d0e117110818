// hoist's GPU kernels, compiled at run time by NVRTC for the device's own architecture.
//
// No CUDA headers: NVRTC is used without the toolkit's include directory, so half and bfloat16
// are handled as raw 16-bit words with PTX conversions. Every pointer argument is passed by
// the host as a 64-bit device address; every count is an `int` (the host checks ranges).
//
// Conventions (see gpu/mod.rs): activations are f32, row-major [tokens, features]; weights are
// [out, in] row-major in their file type (wtype: 0 f32, 1 f16, 2 bf16, 3 Q8_0, 4 Q4_0; 5 is Q4_0
// repacked into tiles at load, read by q4_tiles.cu alone);
// "act" is the float type GEMM inputs are rounded to (0 f32, 1 f16, 2 bf16).

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

#define W_F32 0
#define W_F16 1
#define W_BF16 2
#define W_Q8_0 3
#define W_Q4_0 4

#define QK 32            // values per quantized block
#define Q8_BLOCK_BYTES 34 // f16 scale + 32 int8
#define Q4_BLOCK_BYTES 18 // f16 scale + 16 bytes of nibbles

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

// Element i of a weight tensor of type wtype, as f32 (quantized types: i indexes values).
__device__ __forceinline__ float load_w(const u8* w, usize i, int wtype) {
    switch (wtype) {
    case W_F32: return ((const float*)w)[i];
    case W_F16: return f16_to_f(((const u16*)w)[i]);
    case W_BF16: return bf16_to_f(((const u16*)w)[i]);
    case W_Q8_0: {
        const u8* b = w + (i / QK) * Q8_BLOCK_BYTES;
        float d = f16_to_f(*(const u16*)b);
        return d * (float)(signed char)b[2 + i % QK];
    }
    default: {
        const u8* b = w + (i / QK) * Q4_BLOCK_BYTES;
        float d = f16_to_f(*(const u16*)b);
        int j = i % QK;
        int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
        return d * (float)(q - 8);
    }
    }
}

// ---- KV cache elements ----------------------------------------------------------------------
// The KV cache holds the activation type ("kv": 0 f32, 1 f16, 2 bf16): 16-bit models read half
// the bytes per key in decode attention, whose time beyond its fixed cost is memory-bound.

// Value i of the cache `c` of type kv, as f32.
__device__ __forceinline__ float kv_load(const void* c, usize i, int kv) {
    if (kv == 0) return ((const float*)c)[i];
    u16 h = ((const u16*)c)[i];
    return kv == 1 ? f16_to_f(h) : bf16_to_f(h);
}

// Two 16-bit values of one word (lo first) of type kv, as f32: one instruction each (the
// halves are taken as registers, not masked out first).
__device__ __forceinline__ float2 kv_pair(u32 w, int kv) {
    if (kv == 2) return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
    float lo, hi;
    asm("{ .reg .f16 l, h; mov.b32 {l, h}, %2; cvt.f32.f16 %0, l; cvt.f32.f16 %1, h; }"
        : "=f"(lo), "=f"(hi)
        : "r"(w));
    return make_float2(lo, hi);
}

// Values i..i+3 of the cache `c` (i a multiple of 4), as f32.
__device__ __forceinline__ float4 kv_load4(const void* c, usize i, int kv) {
    if (kv == 0) return *(const float4*)((const float*)c + i);
    uint2 w = *(const uint2*)((const u16*)c + i);
    float2 a = kv_pair(w.x, kv), b = kv_pair(w.y, kv);
    return make_float4(a.x, a.y, b.x, b.y);
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

// ---- conversions ---------------------------------------------------------------------------

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

// ---- embedding, norms, bias ------------------------------------------------------------------

// x[t, :] = table[ids[t], :] for t < n (grid: n blocks).
extern "C" __global__ void embed(u64 table, int wtype, u64 ids, int hidden, u64 x) {
    PDL_BEGIN();
    int t = blockIdx.x;
    usize row = ((const int*)ids)[t];
    float* out = (float*)x + (usize)t * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x)
        out[c] = load_w((const u8*)table, row * hidden + c, wtype);
}

// Four normalized values round_act(v * inv * g) into o[0..4], and as `act` at element i of
// out_a if out_a != 0.
__device__ __forceinline__ void norm_store4(float4 v, float4 g, float inv, int act, float* o,
                                            u64 out_a, usize i) {
    float4 y;
    y.x = round_act(v.x * inv * g.x, act);
    y.y = round_act(v.y * inv * g.y, act);
    y.z = round_act(v.z * inv * g.z, act);
    y.w = round_act(v.w * inv * g.w, act);
    *(float4*)o = y;
    if (out_a) {
        store_act(out_a, i, y.x, act);
        store_act(out_a, i + 1, y.y, act);
        store_act(out_a, i + 2, y.z, act);
        store_act(out_a, i + 3, y.w, act);
    }
}

// out[r, :] = round_act(x[r, :] / rms(x[r, :]) * w) for each of `rows` rows of `cols` (grid:
// rows blocks; the host sizes blocks to the row, up to 1024 threads, so that a single row, as
// in decode, is read in one round trip rather than a chain of dependent loads). out may be x.
// If out_a != 0 the rounded values are also stored as `act` there.
extern "C" __global__ void rms_norm(u64 x, u64 w, u64 out, u64 out_a, int cols, float eps,
                                    int act) {
    PDL_BEGIN();
    usize r = blockIdx.x;
    const float* xr = (const float*)x + r * cols;
    const float* wr = (const float*)w;
    float* o = (float*)out + r * cols;
    float ss = 0.f;
    bool vec = (cols & 3) == 0;
    if (vec && cols <= (int)blockDim.x * 4) {
        // A row of one float4 per thread (decode): x and w in one round trip.
        int c = threadIdx.x * 4;
        bool mine = c < cols;
        float4 v = mine ? *(const float4*)(xr + c) : make_float4(0.f, 0.f, 0.f, 0.f);
        float4 g = mine ? *(const float4*)(wr + c) : make_float4(0.f, 0.f, 0.f, 0.f);
        ss = block_sum(v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w);
        float inv = rsqrtf(ss / (float)cols + eps);
        if (mine) norm_store4(v, g, inv, act, o + c, out_a, r * cols + c);
        return;
    }
    if (vec) {
        for (int c = threadIdx.x * 4; c < cols; c += blockDim.x * 4) {
            float4 v = *(const float4*)(xr + c);
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += xr[c] * xr[c];
    }
    ss = block_sum(ss);
    float inv = rsqrtf(ss / (float)cols + eps);
    if (vec) {
        for (int c = threadIdx.x * 4; c < cols; c += blockDim.x * 4)
            norm_store4(*(const float4*)(xr + c), *(const float4*)(wr + c), inv, act, o + c,
                        out_a, r * cols + c);
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = round_act(xr[c] * inv * wr[c], act);
            o[c] = v;
            if (out_a) store_act(out_a, r * cols + c, v, act);
        }
    }
}

// y[r, c] += bias[c] for r < rows (grid-stride over rows*cols).
extern "C" __global__ void add_bias(u64 y, u64 bias, int rows, int cols) {
    PDL_BEGIN();
    long long n = (long long)rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        ((float*)y)[i] += ((const float*)bias)[i % cols];
}

// h[i] = round_act(silu(g[i]) * u[i]), also stored as `act` in h_a if h_a != 0.
extern "C" __global__ void swiglu(u64 g, u64 u, u64 h, u64 h_a, int act, long long n) {
    PDL_BEGIN();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float a = ((const float*)g)[i];
        float v = round_act(a / (1.f + expf(-a)) * ((const float*)u)[i], act);
        ((float*)h)[i] = v;
        if (h_a) store_act(h_a, (usize)i, v, act);
    }
}

// ---- rotary embedding + KV cache -----------------------------------------------------------

// For token t (grid: n x any blocks) at position start + t (start: an int in device memory, so that
// a captured decode step serves every position): rotates q's heads in place and k's heads
// into the key cache, copies v into the value cache. inv_freq: hd/2 f32. style 0: neox
// (i, i + hd/2), 1: interleaved (2i, 2i + 1). Caches: [kv_heads][cap][hd] of type kv. With
// q_a != 0, the rotated q is also stored there as type kv (cuBLAS prefill attention reads it).
extern "C" __global__ void rope_store(u64 q, u64 k, u64 v, u64 kcache, u64 vcache, u64 inv_freq,
                                      u64 start_at, int heads, int kv_heads, int hd, int cap,
                                      int style, int kv, u64 q_a) {
    PDL_BEGIN();
    int start = *(const int*)start_at;
    int t = blockIdx.x;
    int pos = start + t;
    int half = hd / 2;
    float* qt = (float*)q + (usize)t * heads * hd;
    const float* kt = (const float*)k + (usize)t * kv_heads * hd;
    const float* vt = (const float*)v + (usize)t * kv_heads * hd;
    int pairs = (heads + kv_heads) * half;
    // Work item i < pairs rotates one pair; the rest copy one value each (grid.y spreads the
    // items of one token over blocks: a single token is one round trip).
    int i0 = blockIdx.y * blockDim.x + threadIdx.x, stride = gridDim.y * blockDim.x;
    for (int p = i0; p < pairs; p += stride) {
        int head = p / half, i = p % half;
        float ang = (float)pos * ((const float*)inv_freq)[i];
        float s, c;
        sincosf(ang, &s, &c);
        int a = style == 0 ? i : 2 * i;
        int b = style == 0 ? i + half : 2 * i + 1;
        if (head < heads) {
            float* h = qt + head * hd;
            float x0 = h[a], x1 = h[b];
            float ra = x0 * c - x1 * s, rb = x1 * c + x0 * s;
            h[a] = ra;
            h[b] = rb;
            if (q_a) {
                usize o = ((usize)t * heads + head) * hd;
                store_act(q_a, o + a, ra, kv);
                store_act(q_a, o + b, rb, kv);
            }
        } else {
            int kh = head - heads;
            const float* h = kt + kh * hd;
            float x0 = h[a], x1 = h[b];
            usize dst = ((usize)kh * cap + pos) * hd;
            store_act(kcache, dst + a, x0 * c - x1 * s, kv);
            store_act(kcache, dst + b, x1 * c + x0 * s, kv);
        }
    }
    for (int i = i0; i < kv_heads * hd; i += stride) {
        int kh = i / hd, d = i % hd;
        store_act(vcache, ((usize)kh * cap + pos) * hd + d, vt[i], kv);
    }
}

// ---- attention ------------------------------------------------------------------------------

// A load that skips L1: data another block of the same kernel wrote (after its fence).
__device__ __forceinline__ float ld_cg(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}

#define ATTN_SPLITS 32    // most key slices per query; attention_merge gives each a lane
#define ATTN_SLICE_KEYS 32 // fewest keys per slice: short contexts use fewer slices

// Slices of a query that sees `len` keys: enough that each holds at least ATTN_SLICE_KEYS.
__device__ __forceinline__ int attention_slices(int len) {
    return min(ATTN_SPLITS, max(1, (len + ATTN_SLICE_KEYS - 1) / ATTN_SLICE_KEYS));
}

// Merges the `used` slices of query (h, t) that attention_split left in `part`: out[t,
// h*hd + d] rounded to `act`, also stored as `act` in out_a if out_a != 0. The whole block.
__device__ void attention_merge(const float* part, u64 out, u64 out_a, int heads, int hd,
                                int act, int h, int t, int used) {
    const float* p = part + ((usize)t * heads + h) * ATTN_SPLITS * (hd + 2);
    // The merge is the kernel's tail: every thread first loads its value of every slice (its
    // first d), in flight together with warp 0's loads of the slices' maxima and sums.
    __shared__ float weight[ATTN_SPLITS];
    int d0 = threadIdx.x;
    float vals[ATTN_SPLITS];
#pragma unroll
    for (int sp = 0; sp < ATTN_SPLITS; ++sp)
        vals[sp] = sp < used && d0 < hd ? ld_cg(p + sp * (hd + 2) + 2 + d0) : 0.f;
    // Warp 0, a lane per slice, turns the slices' maxima and sums into merge weights.
    if (threadIdx.x < 32) {
        int sp = threadIdx.x;
        bool live = sp < used;
        float ms = live ? ld_cg(p + sp * (hd + 2)) : NEG_INF;
        float ls = live ? ld_cg(p + sp * (hd + 2) + 1) : 0.f;
        float m = warp_max(ms);
        float e = ms == NEG_INF ? 0.f : expf(ms - m);
        float l = warp_sum(ls * e);
        weight[sp] = e / l;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.f;
        if (d == d0) {
#pragma unroll
            for (int sp = 0; sp < ATTN_SPLITS; ++sp) acc += vals[sp] * weight[sp];
        } else {
#pragma unroll 8
            for (int sp = 0; sp < used; ++sp)
                acc += ld_cg(p + sp * (hd + 2) + 2 + d) * weight[sp];
        }
        usize o = ((usize)t * heads + h) * hd + d;
        float v = round_act(acc, act);
        ((float*)out)[o] = v;
        if (out_a) store_act(out_a, o, v, act);
    }
}

// Attention of n queries at positions start..start+n-1 over the cached keys, split over the
// keys (flash-decoding): block (h, t, sp) of grid (heads, n, ATTN_SPLITS) handles the sp-th
// of the query's attention_slices(len) slices (the other blocks return at once). With one
// slice it writes the output itself; else it writes its running max, sum of exponentials and
// weighted value sum to part[((t * heads + h) * ATTN_SPLITS + sp) * (hd + 2) ...], and the
// last of the query's blocks to finish (counted in counters[t * heads + h], which it resets to
// 0) merges the slices into out (see attention_merge). Causal with an optional sliding window
// (0: none): the query at p sees keys max(0, p - window + 1)..=p. start: an int in device
// memory. Dynamic shared memory: attention_groups(blockDim.x, hd) * hd partial sums, then one
// slice's scores, max(ATTN_SLICE_KEYS, ceil(cap / ATTN_SPLITS)) floats; at least
// (blockDim.x / 32) * (hd + 2) floats for heads the online path takes.
__device__ __forceinline__ int attention_groups(int threads, int hd) {
    return (hd & 3) == 0 ? max(1, threads / (hd / 4)) : max(1, threads / hd);
}

// Whether heads of hd values take attention_grouped: 16 values a lane, hd / 16 lanes a key, a
// whole number of keys a warp.
__device__ __forceinline__ bool attention_grouped_fits(int hd) {
    return hd % 16 == 0 && hd <= 512 && 32 % (hd / 16) == 0;
}

// VPL values (4 of an f32 cache, 8 of a 16-bit one: 16 bytes) at element i of cache c, as f32.
template <int KV>
__device__ __forceinline__ void kv_vec(const void* c, usize i, float* out) {
    if (KV == 0) {
        float4 f = *(const float4*)((const float*)c + i);
        out[0] = f.x;
        out[1] = f.y;
        out[2] = f.z;
        out[3] = f.w;
    } else {
        uint4 w = *(const uint4*)((const u16*)c + i);
        u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            float2 p = kv_pair(words[k], KV);
            out[2 * k] = p.x;
            out[2 * k + 1] = p.y;
        }
    }
}

// One warp's keys of a slice (n keys from element `base` of the caches kc, vc, of type KV),
// for heads attention_grouped_fits: G = 32 / (hd / 16) keys at a time, each taken by hd / 16
// lanes holding 16 of its values, so a score sums over hd / 16 lanes, not 32 (measured on an
// H100, the float4 path issues ~60 instructions a key, stalled on each: the kernel was bound
// by the chain, not by memory), and G keys' loads are in flight at once. Online softmax per
// key group, the groups then merged by shuffles; the warp's max and sum go to wms[2 warp],
// wms[2 warp + 1], its weighted values to wacc[warp hd ...].
template <int KV>
__device__ void attention_grouped(const float* qrow, const void* kc, const void* vc, usize base,
                                  int n, int hd, float scale, float* wacc, float* wms) {
    constexpr int VPL = KV == 0 ? 4 : 8, LOADS = 16 / VPL;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    // Lane (sub, l) holds values VPL (l + i per) .. + VPL - 1 of its key, i < LOADS: each load
    // of a key's lanes reads whole sectors.
    int per = hd / 16, g = 32 / per, sub = lane / per, l = lane % per;
    int dim[LOADS];
#pragma unroll
    for (int i = 0; i < LOADS; ++i) dim[i] = VPL * (l + i * per);
    float q[16], acc[16];
#pragma unroll
    for (int i = 0; i < LOADS; ++i)
#pragma unroll
        for (int e = 0; e < VPL; e += 4) {
            float4 f = *(const float4*)(qrow + dim[i] + e);
            q[i * VPL + e] = f.x;
            q[i * VPL + e + 1] = f.y;
            q[i * VPL + e + 2] = f.z;
            q[i * VPL + e + 3] = f.w;
        }
    float m = NEG_INF, s = 0.f;
#pragma unroll
    for (int e = 0; e < 16; ++e) acc[e] = 0.f;
    for (int b = warp * g; b < n; b += warps * g) {
        int j = b + sub;
        bool live = j < n;
        float k[16], v[16];
#pragma unroll
        for (int e = 0; e < 16; ++e) k[e] = v[e] = 0.f;
        if (live) {
#pragma unroll
            for (int i = 0; i < LOADS; ++i) {
                kv_vec<KV>(kc, base + (usize)j * hd + dim[i], k + i * VPL);
                kv_vec<KV>(vc, base + (usize)j * hd + dim[i], v + i * VPL);
            }
        }
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < 16; ++e) dot += q[e] * k[e];
        for (int o = per / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (live) {
            float sc = dot * scale, mn = fmaxf(m, sc);
            float c = expf(m - mn), w = expf(sc - mn);  // m = -inf at first: c = 0
            s = s * c + w;
#pragma unroll
            for (int e = 0; e < 16; ++e) acc[e] = acc[e] * c + w * v[e];
            m = mn;
        }
    }
    // The warp's key groups merged pairwise: a group without keys has max -inf, weight 0.
    for (int o = per; o < 32; o <<= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        float mn = fmaxf(m, m2);
        float c1 = m == NEG_INF ? 0.f : expf(m - mn), c2 = m2 == NEG_INF ? 0.f : expf(m2 - mn);
        s = s * c1 + s2 * c2;
#pragma unroll
        for (int e = 0; e < 16; ++e) {
            float a2 = __shfl_xor_sync(0xffffffffu, acc[e], o);
            acc[e] = acc[e] * c1 + a2 * c2;
        }
        m = mn;
    }
    if (sub == 0) {
#pragma unroll
        for (int i = 0; i < LOADS; ++i)
#pragma unroll
            for (int e = 0; e < VPL; e += 4)
                *(float4*)(wacc + warp * hd + dim[i] + e) =
                    make_float4(acc[i * VPL + e], acc[i * VPL + e + 1], acc[i * VPL + e + 2],
                                acc[i * VPL + e + 3]);
        if (lane == 0) {
            wms[2 * warp] = m;
            wms[2 * warp + 1] = s;
        }
    }
}

extern "C" __global__ void attention_split(u64 q, u64 kcache, u64 vcache, u64 part, u64 start_at,
                                           int heads, int kv_heads, int hd, int cap, int window,
                                           float scale, u64 counters, u64 out, u64 out_a,
                                           int act, int kv) {
    PDL_BEGIN();
    extern __shared__ float smem[];
    __shared__ int last;
    int h = blockIdx.x, t = blockIdx.y, sp = blockIdx.z;
    int pos = *(const int*)start_at + t;
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    int len = pos + 1 - first;
    int used = attention_slices(len);
    if (sp >= used) return;  // the whole block: this query needs fewer slices
    int chunk = (len + used - 1) / used;
    int j0 = min(len, sp * chunk), j1 = min(len, j0 + chunk);
    int kvh = h / (heads / kv_heads);
    int groups = attention_groups(blockDim.x, hd);
    float* acc_part = smem;           // groups * hd partial sums
    float* s = smem + groups * hd;    // the slice's scores
    float* o = (float*)part + (((usize)t * heads + h) * ATTN_SPLITS + sp) * (hd + 2);
    float m = NEG_INF, sum = 0.f;
    int n = j1 - j0;
    int warps = blockDim.x >> 5;
    // Heads of up to 256 values in float4s: each warp keeps its keys' running max, sum and
    // weighted values (online softmax), loading a key's k and v together; one barrier merges
    // the warps. (Fewer dependent memory round trips than scores, then softmax, then values.)
    // Head sizes attention_grouped takes spread a key over fewer lanes.
    bool online = (hd & 3) == 0 && hd <= 256;
    float* wacc = smem;                   // online: warps x hd weighted values
    float* wms = smem + warps * hd;       // online: warps x (max, sum)
    const float* qrow = (const float*)q + ((usize)t * heads + h) * hd;
    const void* kc = (const void*)kcache;
    const void* vc = (const void*)vcache;
    usize kb = ((usize)kvh * cap + first + j0) * hd;  // the slice's first key, in elements
    if (n > 0 && online && attention_grouped_fits(hd)) {
        if (kv == 0) attention_grouped<0>(qrow, kc, vc, kb, n, hd, scale, wacc, wms);
        else if (kv == 1) attention_grouped<1>(qrow, kc, vc, kb, n, hd, scale, wacc, wms);
        else attention_grouped<2>(qrow, kc, vc, kb, n, hd, scale, wacc, wms);
    } else if (n > 0 && online) {
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        int d0 = lane * 4, d1 = 128 + lane * 4;
        bool has0 = d0 < hd, has1 = d1 < hd;
        const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
        float4 q0 = has0 ? *(const float4*)(qrow + d0) : zero;
        float4 q1 = has1 ? *(const float4*)(qrow + d1) : zero;
        float mw = NEG_INF, sw = 0.f;
        float4 a0 = zero, a1 = zero;
#pragma unroll 2
        for (int j = warp; j < n; j += warps) {
            usize r = kb + (usize)j * hd;
            float4 k0 = has0 ? kv_load4(kc, r + d0, kv) : zero;
            float4 k1 = has1 ? kv_load4(kc, r + d1, kv) : zero;
            float4 v0 = has0 ? kv_load4(vc, r + d0, kv) : zero;
            float4 v1 = has1 ? kv_load4(vc, r + d1, kv) : zero;
            float dot = q0.x * k0.x + q0.y * k0.y + q0.z * k0.z + q0.w * k0.w + q1.x * k1.x +
                        q1.y * k1.y + q1.z * k1.z + q1.w * k1.w;
            float sc = warp_sum(dot) * scale;
            float mn = fmaxf(mw, sc);
            float c = expf(mw - mn), e = expf(sc - mn);  // mw = -inf at first: c = 0
            sw = sw * c + e;
            a0 = make_float4(a0.x * c + e * v0.x, a0.y * c + e * v0.y, a0.z * c + e * v0.z,
                             a0.w * c + e * v0.w);
            a1 = make_float4(a1.x * c + e * v1.x, a1.y * c + e * v1.y, a1.z * c + e * v1.z,
                             a1.w * c + e * v1.w);
            mw = mn;
        }
        if (has0) *(float4*)(wacc + warp * hd + d0) = a0;
        if (has1) *(float4*)(wacc + warp * hd + d1) = a1;
        if (lane == 0) {
            wms[2 * warp] = mw;
            wms[2 * warp + 1] = sw;
        }
    }
    if (n > 0 && online) {
        __syncthreads();
        for (int w = 0; w < warps; ++w) m = fmaxf(m, wms[2 * w]);
        // A warp without keys has max -inf and sum 0: its weight exp(-inf) is 0.
        for (int w = 0; w < warps; ++w) sum += wms[2 * w + 1] * expf(wms[2 * w] - m);
    } else if (n > 0) {
        // Scores: a warp per key, its lanes across the head (a row read whole by one
        // instruction), several keys' loads in flight per warp.
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll 4
        for (int j = warp; j < n; j += warps) {
            usize r = kb + (usize)j * hd;
            float dot = 0.f;
            if ((hd & 3) == 0) {
                for (int d = lane * 4; d < hd; d += 128) {
                    float4 k4 = kv_load4(kc, r + d, kv), q4 = *(const float4*)(qrow + d);
                    dot += q4.x * k4.x + q4.y * k4.y + q4.z * k4.z + q4.w * k4.w;
                }
            } else {
                for (int d = lane; d < hd; d += 32) dot += qrow[d] * kv_load(kc, r + d, kv);
            }
            dot = warp_sum(dot);
            if (lane == 0) s[j] = dot * scale;
        }
        __syncthreads();
        for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, s[j]);
        m = block_max(m);
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            float e = expf(s[j] - m);
            s[j] = e;
            sum += e;
        }
        sum = block_sum(sum);  // ends with a barrier: s is complete
        // Weighted values: groups of threads split the keys, each thread 4 (or 1) of the head's
        // values, then the groups' sums are added.
        if ((hd & 3) == 0) {
            int per = hd / 4, g = threadIdx.x / per, d = (threadIdx.x % per) * 4;
            if (g < groups) {
                float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
                for (int j = g; j < n; j += groups) {
                    float w = s[j];
                    float4 v = kv_load4(vc, kb + (usize)j * hd + d, kv);
                    a.x += w * v.x;
                    a.y += w * v.y;
                    a.z += w * v.z;
                    a.w += w * v.w;
                }
                *(float4*)(acc_part + g * hd + d) = a;
            }
        } else {
            int g = threadIdx.x / hd, d = threadIdx.x % hd;
            if (g < groups) {
                float a = 0.f;
#pragma unroll 8
                for (int j = g; j < n; j += groups)
                    a += s[j] * kv_load(vc, kb + (usize)j * hd + d, kv);
                acc_part[g * hd + d] = a;
            }
        }
        __syncthreads();
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
        if (online) {
            for (int w = 0; w < warps && n > 0; ++w) a += wacc[w * hd + d] * expf(wms[2 * w] - m);
        } else {
            for (int k = 0; k < groups && n > 0; ++k) a += acc_part[k * hd + d];
        }
        if (used == 1) {  // the only slice: the output itself
            usize i = ((usize)t * heads + h) * hd + d;
            float v = round_act(a / sum, act);
            ((float*)out)[i] = v;
            if (out_a) store_act(out_a, i, v, act);
        } else {
            o[2 + d] = a;
        }
    }
    if (used == 1) return;
    if (threadIdx.x == 0) {
        o[0] = m;
        o[1] = sum;
    }
    // This slice is visible to every block before it is counted; the last one merges.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* c = (int*)counters + (usize)t * heads + h;
        last = atomicAdd(c, 1) == used - 1;
        if (last) *c = 0;
    }
    __syncthreads();
    if (last) {
        __threadfence();
        attention_merge((const float*)part, out, out_a, heads, hd, act, h, t, used);
    }
}

// Softmax of score rows made by cuBLAS (grid: heads x rows): row (h, i) of `scores`
// ([heads][rows][len] f32, already scaled) belongs to the query at position start + q0 + i
// and sees keys max(0, p - window + 1)..=p of 0..len; the rest become 0. With p_a != 0 the
// probabilities go there instead, in the same layout, as type kv (the KV cache's: cuBLAS
// multiplies them by the values in that type); `scores` then keeps the exponentials.
extern "C" __global__ void causal_softmax(u64 scores, int rows, int len, int start, int q0,
                                          int window, u64 p_a, int kv) {
    PDL_BEGIN();
    int h = blockIdx.x, i = blockIdx.y;
    float* s = (float*)scores + ((usize)h * rows + i) * len;
    int pos = start + q0 + i;
    int first = window > 0 ? max(0, pos + 1 - window) : 0;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < len; j += blockDim.x)
        if (j >= first && j <= pos) m = fmaxf(m, s[j]);
    m = block_max(m);
    float sum = 0.f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float e = (j >= first && j <= pos) ? expf(s[j] - m) : 0.f;
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum);
    float inv = 1.f / sum;
    usize row = ((usize)h * rows + i) * len;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float p = s[j] * inv;
        if (p_a) store_act(p_a, row + j, p, kv);
        else s[j] = p;
    }
}

// ---- greedy decoding on the device -------------------------------------------------------------

// Candidate (av, ai) beats (bv, bi): a larger value, or the same value at a smaller index.
// (Candidates are never NaN: `v > best` is false for NaN, so NaN logits are skipped.)
__device__ __forceinline__ bool beats(float av, int ai, float bv, int bi) {
    return av > bv || (av == bv && ai < bi);
}

// ids[0] = arg-max of logits[0..vocab) (the first index of the largest value; NaN ignored; 0 if
// no value exceeds -inf, as sampler::argmax), ids[1] += 1: the next step's token and position,
// so that decode steps chain on the device without the host (grid: 1 block of ARGMAX_THREADS).
#define ARGMAX_THREADS 1024
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

// ---- matrix-vector products (decode) ---------------------------------------------------------

// Warps per GEMV block and loop unrolling of the 16-bit/f32 GEMV: the host passes both (-D) and
// sizes its grids with the same GEMV_WARPS.
#ifndef GEMV_WARPS
#define GEMV_WARPS 4
#endif
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 4
#endif

// Where value v of the input vector sits in the padded shared-memory copy the quantized GEMVs
// read: 4 floats of padding per 32 keep the float4 reads of lanes that read "their" blocks on
// distinct banks (a block's 32 inputs start 36 floats after the previous block's).
#define XS_PAD 4
__device__ __forceinline__ int xs_index(int v) { return v + (v / QK) * XS_PAD; }

// Copies x (cols floats) into shared memory `xs`, padded (xs_index); the whole block calls it.
__device__ void stage_input(const float* x, float* xs, int cols) {
    if (cols % 4 == 0) {  // four values stay together (32 is a multiple of 4)
        for (int v = threadIdx.x * 4; v < cols; v += blockDim.x * 4)
            *(float4*)(xs + xs_index(v)) = *(const float4*)(x + v);
    } else {
        for (int v = threadIdx.x; v < cols; v += blockDim.x) xs[xs_index(v)] = x[v];
    }
    __syncthreads();
}

// 2^23 + byte k (0..3) of w, as a float, exactly: the byte placed in the mantissa of 2^23 by one
// byte permute. Subtracting 2^23 (plus the quantization offset) gives the value without an
// int-to-float conversion, which runs at a fraction of the FMA rate.
__device__ __forceinline__ float byte_f(u32 w, u32 k) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(w), "r"(0x4b000000u), "r"(k | 0x7440u));
    return __uint_as_float(r);
}

// (lo, hi) >> shift, the low word (shift < 32).
__device__ __forceinline__ u32 shr64(u32 lo, u32 hi, u32 shift) {
    u32 r;
    asm("shf.r.wrap.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(lo), "r"(hi), "r"(shift));
    return r;
}

// An 8-byte weight load that bypasses L1 (see ld_stream).
__device__ __forceinline__ uint2 ld_stream2(const uint2* p) {
    uint2 v;
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

// The dot product of one Q4_0 block at `blk` with its 32 inputs x (8 float4s). The 18-byte
// block is read as the three aligned 8-byte words that hold it (never past the row's end when
// rows are 16-byte aligned: a row's last block ends a word) and realigned with funnel shifts.
__device__ __forceinline__ float q4_block(const u8* blk, const float4* x) {
    usize a = (usize)blk;
    const uint2* base = (const uint2*)(a & ~(usize)7);
    uint2 p0 = ld_stream2(base), p1 = ld_stream2(base + 1), p2 = ld_stream2(base + 2);
    u32 w[6] = {p0.x, p0.y, p1.x, p1.y, p2.x, p2.y};
    u32 o = (u32)a & 7u;  // 0, 2, 4 or 6
    u32 sh = (o & 2u) * 8u;
    float d = f16_to_f((u16)(((o >> 2) ? w[1] : w[0]) >> sh));
    // The 16 bytes of nibbles start at byte o + 2 of the window: words s2.. shifted by sh2.
    u32 s2 = (o + 2u) >> 2, sh2 = sh ^ 16u;
    u32 v[5];
#pragma unroll
    for (int k = 0; k < 5; ++k) {
        u32 w2 = k + 2 < 6 ? w[k + 2] : 0u;
        v[k] = s2 == 0 ? w[k] : (s2 == 1 ? w[k + 1] : w2);
    }
    const float c = 8388616.f;  // 2^23 + 8
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        u32 q = shr64(v[j], v[j + 1], sh2);  // nibble bytes 4j..4j+3
        u32 lo = q & 0x0f0f0f0fu, hi = (q >> 4) & 0x0f0f0f0fu;
        float4 xl = x[j], xh = x[4 + j];
        s += (byte_f(lo, 0) - c) * xl.x + (byte_f(lo, 1) - c) * xl.y +
             (byte_f(lo, 2) - c) * xl.z + (byte_f(lo, 3) - c) * xl.w;
        s += (byte_f(hi, 0) - c) * xh.x + (byte_f(hi, 1) - c) * xh.y +
             (byte_f(hi, 2) - c) * xh.z + (byte_f(hi, 3) - c) * xh.w;
    }
    return d * s;
}

// Whether Q4_0 rows of `cols` values take q4_dot2: whole 16-byte-aligned rows.
__device__ __forceinline__ bool q4_aligned(int wtype, int cols) {
    return wtype == W_Q4_0 && cols % 256 == 0;
}

// Dot products of two Q4_0 rows (q4_aligned) with the staged input `xs`, by one warp: lane l
// takes blocks l, l + 32, ... of both rows, reading each block's inputs once for the two.
// Results in every lane.
__device__ void q4_dot2(const u8* row0, const u8* row1, int cols, const float* xs, float* out0,
                        float* out1) {
    int lane = threadIdx.x & 31, nblocks = cols / QK;
    float a0 = 0.f, a1 = 0.f;
#pragma unroll 2
    for (int b = lane; b < nblocks; b += 32) {
        const float4* x4 = (const float4*)(xs + b * (QK + XS_PAD));
        float4 x[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) x[k] = x4[k];
        a0 += q4_block(row0 + (usize)b * Q4_BLOCK_BYTES, x);
        a1 += q4_block(row1 + (usize)b * Q4_BLOCK_BYTES, x);
    }
    *out0 = warp_sum(a0);
    *out1 = warp_sum(a1);
}

// Dot product of quantized row `r` of w with the staged input `xs`, by one warp; the result is
// in every lane. Lane l decodes whole
// blocks l, l + 32, ...: its 18 (Q4_0) or 34 (Q8_0) bytes with 16-bit loads (block sizes are
// even, not multiples of 4; a warp's loads cover contiguous bytes), its 32 inputs from shared
// memory as float4s without bank conflicts. (Aligned Q4_0 rows take q4_dot2.)
__device__ float qrow_dot(const u8* w, int wtype, usize r, int cols, const float* xs) {
    int lane = threadIdx.x & 31;
    float acc = 0.f;
    int bb = wtype == W_Q8_0 ? Q8_BLOCK_BYTES : Q4_BLOCK_BYTES;
    int nblocks = cols / QK;
    const u8* row = w + r * (usize)nblocks * bb;
    for (int b = lane; b < nblocks; b += 32) {
        const u16* blk = (const u16*)(row + (usize)b * bb);
        float d = f16_to_f(blk[0]);
        const float4* xb = (const float4*)(xs + b * (QK + XS_PAD));
        float s = 0.f;
        if (wtype == W_Q8_0) {
#pragma unroll
            for (int j = 0; j < QK; j += 4) {
                u16 p0 = blk[1 + j / 2], p1 = blk[2 + j / 2];
                float4 xv = xb[j / 4];
                s += (float)(signed char)(p0 & 0xff) * xv.x + (float)(signed char)(p0 >> 8) * xv.y +
                     (float)(signed char)(p1 & 0xff) * xv.z + (float)(signed char)(p1 >> 8) * xv.w;
            }
        } else {
#pragma unroll
            for (int j = 0; j < 16; j += 4) {
                u32 q = (u32)blk[1 + j / 2] | ((u32)blk[2 + j / 2] << 16);  // bytes j..j+3
                float4 xl = xb[j / 4], xh = xb[4 + j / 4];
                s += (float)((int)(q & 15) - 8) * xl.x + (float)((int)((q >> 8) & 15) - 8) * xl.y +
                     (float)((int)((q >> 16) & 15) - 8) * xl.z + (float)((int)((q >> 24) & 15) - 8) * xl.w;
                s += (float)((int)((q >> 4) & 15) - 8) * xh.x +
                     (float)((int)((q >> 12) & 15) - 8) * xh.y +
                     (float)((int)((q >> 20) & 15) - 8) * xh.z + (float)((int)(q >> 28) - 8) * xh.w;
            }
        }
        acc += d * s;
    }
    return warp_sum(acc);
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

// Dot products of rows r0 and r1 of w (any type) with the input, by one warp: 16-bit/f32 rows
// read x, quantized rows its staged copy xs.
__device__ void rows2(const u8* w, int wtype, int r0, int r1, int cols, const float* x,
                      const float* xs, float* d0, float* d1) {
    if (wtype <= W_BF16) {
        usize row_bytes = (usize)cols * (wtype == W_F32 ? 4 : 2);
        dot2_part(w + r0 * row_bytes, w + r1 * row_bytes, wtype, cols, x, 0, 1, d0, d1);
    } else if (q4_aligned(wtype, cols)) {
        usize row_bytes = (usize)(cols / QK) * Q4_BLOCK_BYTES;
        q4_dot2(w + r0 * row_bytes, w + r1 * row_bytes, cols, xs, d0, d1);
    } else {
        *d0 = qrow_dot(w, wtype, (usize)r0, cols, xs);
        *d1 = qrow_dot(w, wtype, (usize)r1, cols, xs);
    }
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
                         const float* xs) {
    return wtype <= W_BF16 ? frow_part(w, wtype, r, cols, x, 0, 1)
                           : qrow_dot(w, wtype, (usize)r, cols, xs);
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

// Up to three matrix-vector products in one launch (q, k and v share their input):
// y_m[r] = (accumulate ? y_m[r] : 0) + dot(w_m[r, :], x) + (bias_m ? bias_m[r] : 0).
// With rope_hd != 0 (one token; the matrices are q, k, v) the rotary embedding and the KV cache
// store of rope_store are fused in: a warp's row pair is a rotation pair of one head, rotated
// at position *start_at into y_0 (q) and into the key cache; v's rows go to the value cache.
struct GemvBatch {
    u64 w[3];
    u64 y[3];
    u64 bias[3];
    int wtype[3];
    int rows[3];
    int count;
    int rope_hd;
    int rope_style;  // as rope_store's
    int cap;         // positions of the caches ([kv_heads][cap][hd] of type kv)
    int kv;          // the caches' element type (as rope_store's)
    u64 inv_freq;
    u64 start_at;
    u64 kcache;
    u64 vcache;
};

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

// Writes a GEMV row pair's results v0, v1 (rows r0, r1 of matrix m) where the fused rotary
// embedding sends them (see GemvBatch).
__device__ void store_rope_pair(const GemvBatch& b, int m, int r0, int r1, float v0, float v1) {
    int hd = b.rope_hd, pos = *(const int*)b.start_at;
    int kvh = r0 / hd;
    usize at = ((usize)kvh * b.cap + pos) * hd;
    if (m == 2) {
        store_act(b.vcache, at + r0 % hd, v0, b.kv);
        store_act(b.vcache, at + r1 % hd, v1, b.kv);
        return;
    }
    int i = b.rope_style == 0 ? r0 % hd : (r0 % hd) / 2;
    float s, c;
    sincosf((float)pos * ((const float*)b.inv_freq)[i], &s, &c);
    float a = v0 * c - v1 * s, d = v1 * c + v0 * s;
    if (m == 0) {
        ((float*)b.y[0])[r0] = a;
        ((float*)b.y[0])[r1] = d;
    } else {
        store_act(b.kcache, at + r0 % hd, a, b.kv);
        store_act(b.kcache, at + r1 % hd, d, b.kv);
    }
}

// Grid: ceil(total row pairs / warps) blocks of `warps` warps (GEMV_WARPS; more when a matrix is
// quantized, so that the input staged in shared memory, a read as large as a Q4_0 row pair per
// warp, serves more rows: see GemvShape in module.rs); each warp takes a pair
// of rows of one matrix (pairs never straddle matrices), reading the input once for both and
// keeping twice the weight loads in flight. (Measured on an H200: better than one row per warp,
// and than splitting a row pair's columns over a block's warps.)
extern "C" __global__ void gemv(GemvBatch b, u64 x, int cols, int accumulate, int stage_x) {
    PDL_BEGIN();
    // Quantized matrices read the input from shared memory (dynamic: xs_index(cols) floats).
    extern __shared__ float xs[];
    if (stage_x) stage_input((const float*)x, xs, cols);
    int warp = threadIdx.x >> 5;
    int pair = blockIdx.x * (blockDim.x >> 5) + warp;
    int m = 0;
    while (m < b.count && pair >= (b.rows[m] + 1) / 2) pair -= (b.rows[m++] + 1) / 2;
    if (m >= b.count) return;
    int r0, r1;
    pair_rows(pair, m < 2 ? b.rope_hd : 0, b.rope_style, &r0, &r1);
    r1 = min(r1, b.rows[m] - 1);
    float d0, d1;
    rows2((const u8*)b.w[m], b.wtype[m], r0, r1, cols, (const float*)x, xs, &d0, &d1);
    if ((threadIdx.x & 31) == 0) {
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
}

// h[r] = round_act(silu(dot(gate[r], x)) * dot(up[r], x)) (the feed-forward's first half).
// Float weights: one block of GEMV_WARPS warps per row, the warps splitting the columns.
// Quantized (stage_x = 1): one row per warp, as many warps per block as the host chooses, the
// block sharing the input staged in shared memory (dynamic: xs_index(cols) floats).
extern "C" __global__ void gemv_swiglu(u64 gate, u64 up, int wtype_gate, int wtype_up, u64 x,
                                       u64 h, int rows, int cols, int act, int stage_x) {
    PDL_BEGIN();
    extern __shared__ float xs[];
    const float* xf = (const float*)x;
    float g, u;
    int r;
    if (stage_x) {
        stage_input(xf, xs, cols);
        r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        if (r >= rows) return;
        if (q4_aligned(wtype_gate, cols) && wtype_up == wtype_gate) {
            usize row_bytes = (usize)(cols / QK) * Q4_BLOCK_BYTES;
            q4_dot2((const u8*)gate + r * row_bytes, (const u8*)up + r * row_bytes, cols, xs, &g,
                    &u);
        } else {
            g = row_dot((const u8*)gate, wtype_gate, r, cols, xf, xs);
            u = row_dot((const u8*)up, wtype_up, r, cols, xf, xs);
        }
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
