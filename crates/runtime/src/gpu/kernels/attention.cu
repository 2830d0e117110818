// Attention: decode's split-key attention (flash-decoding) with the merge of its slices, and
// prefill's causal softmax between two cuBLAS products.

#include "common.cuh"

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

// A load that skips L1: data another block of the same kernel wrote (after its fence).
__device__ __forceinline__ float ld_cg(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}

// Shared with the host (gpu/kernels/mod.rs): most key slices per query (attention_merge gives
// each a lane), and fewest keys per slice (short contexts use fewer slices).
#ifndef ATTN_SPLITS
#error "ATTN_SPLITS must be passed by hoist (-DATTN_SPLITS=...): most key slices per query"
#endif
#ifndef ATTN_SLICE_KEYS
#error "ATTN_SLICE_KEYS must be passed by hoist (-DATTN_SLICE_KEYS=...): fewest keys per slice"
#endif

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
                                           int act, int kv, u64 rows, int layer) {
    PDL_BEGIN();
    extern __shared__ float smem[];
    __shared__ int last;
    int h = blockIdx.x, t = blockIdx.y, sp = blockIdx.z;
    int pos = *(const int*)start_at + t;
    if (rows) {  // a batched decode step: query t is its own sequence's (as in rope_store)
        KvRow r = kv_row(rows, t, layer, kv_heads, hd, kv);
        kcache = r.k;
        vcache = r.v;
        cap = r.cap;
        pos = ((const int*)start_at)[t];
    }
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
