// Rotary embedding, with the KV-cache store.

#include "common.cuh"

// For token t (grid: n x any blocks) at position start + t (start: an int in device memory, so that
// a captured decode step serves every position): rotates q's heads in place and k's heads
// into the key cache, copies v into the value cache. inv_freq: hd/2 f32. style 0: neox
// (i, i + hd/2), 1: interleaved (2i, 2i + 1). Caches: [kv_heads][cap][hd] of type kv. With
// q_a != 0, the rotated q is also stored there as type kv (cuBLAS prefill attention reads it).
// With rows != 0 (a batched decode step) token t is its own sequence's: at position start_at[t],
// into the caches of layer `layer` that row t of `rows` names (kv_row); kcache, vcache and cap
// are unused.
extern "C" __global__ void rope_store(u64 q, u64 k, u64 v, u64 kcache, u64 vcache, u64 inv_freq,
                                      u64 start_at, int heads, int kv_heads, int hd, int cap,
                                      int style, int kv, u64 q_a, u64 rows, int layer) {
    PDL_BEGIN();
    int t = blockIdx.x;
    int pos = *(const int*)start_at + t;
    if (rows) {
        KvRow r = kv_row(rows, t, layer, kv_heads, hd, kv);
        kcache = r.k;
        vcache = r.v;
        cap = r.cap;
        pos = ((const int*)start_at)[t];
    }
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
