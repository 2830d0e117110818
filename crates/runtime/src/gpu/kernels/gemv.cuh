// Shared by the two GEMV families (gemv.cu, q4_tiles.cu): the batch of matrices one launch
// multiplies, with the fused rotary embedding's stores.

#ifndef HOIST_GEMV_CUH
#define HOIST_GEMV_CUH

#include "common.cuh"

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

#endif  // HOIST_GEMV_CUH
