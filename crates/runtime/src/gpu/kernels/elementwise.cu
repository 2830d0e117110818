// Element-wise kernels: bias add, SwiGLU.

#include "common.cuh"

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
