// RMS normalization.

#include "common.cuh"

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
