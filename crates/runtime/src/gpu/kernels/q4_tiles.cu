// Q4_0 weights in tiles, and their GEMVs on tensor cores (with gemv.cuh's loads and batches).
//
// Why: a Q4_0 block is 18 bytes (an f16 scale, then 16 bytes of nibbles), so rows of blocks
// are only 2-byte aligned, and turning each nibble into a float and multiplying costs about
// three instructions per weight: measured on an H100, the Q4_0 GEMVs stream at 1.0-1.8 TB/s,
// stalled on their loads with their issue slots 40-50% busy. Repacked once at load time
// (same bytes, another order), every lane reads 16 aligned bytes per step, and nibbles become
// f16 with one logic op per two weights, multiplied by the input on the tensor cores (mma
// m16n8k16, f32 accumulators): fewer instructions per byte, more bytes in flight.
//
// Layout (wtype 5; rows % 16 == 0, cols % 64 == 0): a tile is 16 rows x 2 blocks (64 values).
// Tiles run along the row group (16 rows) first, then down the groups. Nibbles come first,
// 512 bytes a tile, lane L = 4g + t (g 0..7, t 0..3) owning 16 bytes: the words t of
// (row g, block 0), (row g + 8, block 0), (row g, block 1), (row g + 8, block 1). Word t of a
// block holds its values 8t..8t+7, value 8t + p in bits 4p..4p+3 (Q4_0 keeps value e < 16 in
// the low nibble of byte e, and 16 + e in its high nibble). After all nibbles, the scales: 64
// bytes a tile, lane group g owning 8: (row g, block 0), (row g + 8, block 0), (row g, block 1),
// (row g + 8, block 1). Total bytes equal Q4_0's, so the repack happens in place.
//
// The products: for one block, lane (g, t) turns its words of rows g and g + 8 into the A
// fragments of two m16n8k16 products, nibble n as the f16 1024 + n (bits 0-3 of a half) or
// 1024 + 16n (bits 4-7). The B fragments are the input, staged per block in f16 after scaling
// the block by a power of two (its largest value into [1, 2): no overflow, full f16 precision);
// values paired with 1024 + 16n are staged divided by 16. Every B column holds the same input,
// so every lane gets the result of its rows. With S1, S16 the sums of the staged values paired
// with each form, a block's dot product is d * 2^e * (D - 1032 S1 - 72 S16), D being the
// tensor cores' sum: (1024 + n) x = 1024 x + n x, and (1024 + 16n) (x / 16) = 64 x + n x, minus
// 8 x for Q4_0's offset.

#include "gemv.cuh"

// Set by the host (GemvShape in module.rs): warps per block, splitting the columns of 16 rows;
// tiles of each row group a warp loads before it uses them; resident blocks per SM the
// registers are cut for.
#ifndef Q4T_WARPS
#error "Q4T_WARPS must be passed by hoist (-DQ4T_WARPS=...): warps per tiled GEMV block (GemvShape)"
#endif
#ifndef Q4T_BATCH
#error "Q4T_BATCH must be passed by hoist (-DQ4T_BATCH=...): tiles a warp loads at once (GemvShape)"
#endif
#ifndef Q4T_COLS
#error "Q4T_COLS must be passed by hoist (-DQ4T_COLS=...): inputs of a batched tiled GEMV (8)"
#endif
#ifndef Q4T_MIN_BLOCKS
#error "Q4T_MIN_BLOCKS must be passed by hoist (-DQ4T_MIN_BLOCKS=...): resident blocks per SM (GemvShape)"
#endif

// Byte offset of word t of block j of row r, in a tiled matrix of `cols` values a row.
__device__ __forceinline__ usize q4t_word(int r, int j, int t, int cols) {
    usize tile = (usize)(r / 16) * (cols / 64) + j / 2;
    int g = r % 8, hi = (r % 16) / 8;
    return (tile * 32 + g * 4 + t) * 16 + ((j % 2) * 2 + hi) * 4;
}

// Byte offset of the scale of block j of row r.
__device__ __forceinline__ usize q4t_scale(int r, int j, int rows, int cols) {
    usize tile = (usize)(r / 16) * (cols / 64) + j / 2;
    int g = r % 8, hi = (r % 16) / 8;
    return (usize)rows * (cols / 32) * 16 + tile * 64 + g * 8 + ((j % 2) * 2 + hi) * 2;
}

// dst = the Q4_0 matrix src (rows x cols) in tiles. Grid-stride over blocks.
extern "C" __global__ void q4_tile_repack(u64 src, u64 dst, int rows, int cols) {
    PDL_BEGIN();
    int nb = cols / QK;
    long long n = (long long)rows * nb;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        int r = (int)(i / nb), j = (int)(i % nb);
        const u8* b = (const u8*)src + (usize)i * Q4_BLOCK_BYTES;
        u8* out = (u8*)dst;
        *(u16*)(out + q4t_scale(r, j, rows, cols)) = *(const u16*)b;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            u32 w = 0;
#pragma unroll
            for (int p = 0; p < 8; ++p) {
                int e = 8 * t + p;
                u32 q = e < 16 ? (b[2 + e] & 15u) : (u32)(b[2 + e - 16] >> 4);
                w |= q << (4 * p);
            }
            *(u32*)(out + q4t_word(r, j, t, cols)) = w;
        }
    }
}

// Stores v[0..8] as `out_type` at element o of dst (o a multiple of 8: 16-byte aligned).
__device__ __forceinline__ void store8(u64 dst, usize o, const float* v, int out_type) {
    if (out_type == 0) {
        float4* d = (float4*)((float*)dst + o);
        d[0] = make_float4(v[0], v[1], v[2], v[3]);
        d[1] = make_float4(v[4], v[5], v[6], v[7]);
        return;
    }
    u32 h[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        u16 a = out_type == 1 ? f_to_f16(v[2 * k]) : f_to_bf16(v[2 * k]);
        u16 b = out_type == 1 ? f_to_f16(v[2 * k + 1]) : f_to_bf16(v[2 * k + 1]);
        h[k] = (u32)a | ((u32)b << 16);
    }
    uint4 q;
    q.x = h[0];
    q.y = h[1];
    q.z = h[2];
    q.w = h[3];
    *(uint4*)((u16*)dst + o) = q;
}

// dst = the tiled matrix src (rows x cols) dequantized, row-major, as `out_type` (rounded as
// `convert` rounds): a thread per lane slot of a tile, as the GEMVs read it (16 bytes of
// nibbles, 8 of scales: 32 values of 2 rows x 2 blocks). Grid-stride.
extern "C" __global__ void q4_tile_dequant(u64 src, u64 dst, int rows, int cols, int out_type) {
    PDL_BEGIN();
    const u8* w = (const u8*)src;
    int nt = cols / 64;
    long long n = (long long)(rows / 16) * nt * 32;
    usize scales = (usize)rows * (cols / 32) * 16;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        int lane = (int)(i & 31), tile = (int)(i >> 5);
        int rg = tile / nt, c = tile % nt, g = lane >> 2, t = lane & 3;
        uint4 q = *(const uint4*)(w + (usize)i * 16);
        uint2 sc = *(const uint2*)(w + scales + (usize)tile * 64 + g * 8);
        u32 words[4] = {q.x, q.y, q.z, q.w};
        u32 sw[2] = {sc.x, sc.y};
#pragma unroll
        for (int k = 0; k < 4; ++k) {  // (row g, block 0), (g + 8, 0), (g, 1), (g + 8, 1)
            u32 half = (k & 1) ? sw[k >> 1] >> 16 : sw[k >> 1] & 0xffffu;
            float d = f16_to_f((u16)half), v[8];
#pragma unroll
            for (int p = 0; p < 8; ++p)
                v[p] = round_act(d * (float)((int)((words[k] >> (4 * p)) & 15u) - 8), out_type);
            int row = rg * 16 + g + 8 * (k & 1), j = 2 * c + (k >> 1);
            store8(dst, (usize)row * cols + 32 * j + 8 * t, v, out_type);
        }
    }
}

// D += A B for one m16n8k16 product, f16 inputs, f32 accumulators (sm_80 and newer; the host
// never tiles weights for older GPUs).
__device__ __forceinline__ void mma16816(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                         u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// The nibbles of w under `mask` (0x000f000f or 0x00f000f0), each half of the result the f16
// 1024 + n or 1024 + 16n: (w & mask) | exponent, in one instruction.
__device__ __forceinline__ u32 nib_h2(u32 w, u32 mask) {
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(w), "r"(mask), "r"(0x64006400u));
    return r;
}

// Two f16 values (from f32, rounded) in one word, lo in the low half.
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    return (u32)f_to_f16(lo) | ((u32)f_to_f16(hi) << 16);
}

__device__ __forceinline__ float h2_sum(u32 w) {
    return f16_to_f((u16)(w & 0xffffu)) + f16_to_f((u16)(w >> 16));
}

// Stages one 32-value block xb of an input: f[t] holds lane t's B fragments, and ks
// = (2^e, 2^e (1032 S1 + 72 S16)) (see the top of this file).
__device__ __forceinline__ void q4t_stage_block(const float* xb, uint4* f4, float2* ks) {
    float v[QK];
    const float4* xv = (const float4*)xb;
#pragma unroll
    for (int q = 0; q < 8; ++q) {
        float4 f = xv[q];
        v[4 * q] = f.x;
        v[4 * q + 1] = f.y;
        v[4 * q + 2] = f.z;
        v[4 * q + 3] = f.w;
    }
    float amax = 0.f;
#pragma unroll
    for (int e = 0; e < QK; ++e) amax = fmaxf(amax, fabsf(v[e]));
    // amax in [2^(ex-127), 2^(ex-126)); clamped so both powers of two are normal floats.
    u32 ex = min(max((__float_as_uint(amax) >> 23) & 255u, 1u), 253u);
    float inv = __uint_as_float((254u - ex) << 23), scale = __uint_as_float(ex << 23);
    float s1 = 0.f, s16 = 0.f;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        const float* u = v + 8 * t;
        float i16 = inv * 0.0625f;
        uint4 f;
        f.x = pack_h2(u[0] * inv, u[4] * inv);
        f.y = pack_h2(u[1] * i16, u[5] * i16);
        f.z = pack_h2(u[2] * inv, u[6] * inv);
        f.w = pack_h2(u[3] * i16, u[7] * i16);
        s1 += h2_sum(f.x) + h2_sum(f.z);
        s16 += 16.f * (h2_sum(f.y) + h2_sum(f.w));
        f4[t] = f;
    }
    *ks = make_float2(scale, scale * (1032.f * s1 + 72.f * s16));
}

// Stages blocks j0..j1 of the input x for one warp (every lane calls it; lane l takes blocks
// j0 + l, j0 + l + 32, ...): frag[4 (j - j0) + t] holds lane t's B fragments of block j, and
// ks[j - j0] its (2^e, K).
__device__ void q4t_stage(const float* x, int j0, int j1, uint4* frag, float2* ks) {
    int lane = threadIdx.x & 31;
    for (int j = j0 + lane; j < j1; j += 32)
        q4t_stage_block(x + (usize)j * QK, frag + (j - j0) * 4, ks + (j - j0));
}

// One block's products for rows g and g + 8 (words wa, wb): acc += d * (2^e D - 2^e K).
__device__ __forceinline__ void q4t_block(u32 wa, u32 wb, uint4 xf, float2 ks, u32 scales,
                                          float* acc0, float* acc1) {
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    mma16816(d, nib_h2(wa, 0x000f000fu), nib_h2(wb, 0x000f000fu), nib_h2(wa, 0x00f000f0u),
             nib_h2(wb, 0x00f000f0u), xf.x, xf.y);
    u32 wa8 = wa >> 8, wb8 = wb >> 8;
    mma16816(d, nib_h2(wa8, 0x000f000fu), nib_h2(wb8, 0x000f000fu), nib_h2(wa8, 0x00f000f0u),
             nib_h2(wb8, 0x00f000f0u), xf.z, xf.w);
    float da = f16_to_f((u16)(scales & 0xffffu)), db = f16_to_f((u16)(scales >> 16));
    *acc0 = fmaf(da, fmaf(ks.x, d[0], -ks.y), *acc0);
    *acc1 = fmaf(db, fmaf(ks.x, d[2], -ks.y), *acc1);
}

// Tiles per warp of a row group of `cols` values (the host sizes shared memory with it:
// Q4T_WARPS * q4t_per_warp(cols / 64) * 144 bytes).
__device__ __forceinline__ int q4t_per_warp(int nt) { return (nt + Q4T_WARPS - 1) / Q4T_WARPS; }

// Row groups rg0 of w0 and (NM = 2) rg1 of w1, tiled matrices of `rows` x `cols`, times x:
// this warp's share of the columns, summed over the block into red[m][i] for row 16 rg_m + i
// (valid after the function's closing barrier). Every thread of the block calls it. A warp
// loads Q4T_BATCH tiles of each into registers, then uses them; its first loads are in
// flight while it stages its share of the input. Those first loads are issued before the
// kernel waits for the previous one (PDL_WAIT: the weights are no kernel's output; the input
// is): launched early, the blocks fill the SMs the previous kernel's last wave leaves idle
// with weight traffic. Only the caller's epilogue follows, after the closing barrier, so every
// write comes after the wait. (One row group a block, short-lived blocks:
// measured on an H200, blocks that stream several row groups with their loads alternating
// between two register sets were slower, 368 against 382 tok/s.)
template <int NM>
__device__ void q4t_rows(const u8* w0, int rg0, const u8* w1, int rg1, int rows, int cols,
                         const float* x, float (*red)[16]) {
    constexpr int B = Q4T_BATCH;
    extern __shared__ uint4 q4t_smem[];
    __shared__ float part[Q4T_WARPS][NM][16];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int nt = cols / 64, per = q4t_per_warp(nt);
    int c0 = min(warp * per, nt), c1 = min(c0 + per, nt);
    uint4* frag = q4t_smem + warp * per * 9;  // 2 blocks x 4 lanes of fragments a tile, then ks
    float2* ks = (float2*)(frag + per * 8);
    // This lane's 16 bytes of the warp's first tile, and its row group's scales; the next
    // tile is 512 and 64 bytes on.
    const u8* wp[NM];
    const u8* sp[NM];
#pragma unroll
    for (int m = 0; m < NM; ++m) {
        const u8* w = m == 0 ? w0 : w1;
        usize first = (usize)(m == 0 ? rg0 : rg1) * nt + c0;
        wp[m] = w + (first * 32 + lane) * 16;
        sp[m] = w + (usize)rows * (cols / 32) * 16 + first * 64 + g * 8;
    }
    float acc[NM][2];
#pragma unroll
    for (int m = 0; m < NM; ++m) acc[m][0] = acc[m][1] = 0.f;
    if (c0 >= c1) PDL_WAIT();  // a warp without tiles
    for (int c = c0; c < c1; c += B) {
        uint4 wq[NM][B];
        uint2 sc[NM][B];
#pragma unroll
        for (int i = 0; i < B; ++i) {
            if (c + i < c1) {
#pragma unroll
                for (int m = 0; m < NM; ++m) {
                    wq[m][i] = ld_stream((const uint4*)(wp[m] + (usize)(c + i - c0) * 512));
                    sc[m][i] = ld_stream2((const uint2*)(sp[m] + (usize)(c + i - c0) * 64));
                }
            }
        }
        if (c == c0) {
            PDL_WAIT();
            q4t_stage(x, 2 * c0, 2 * c1, frag, ks);
            __syncwarp();
        }
#pragma unroll
        for (int i = 0; i < B; ++i) {
            if (c + i < c1) {
                int jb = 2 * (c + i - c0);
                uint4 x0 = frag[jb * 4 + t], x1 = frag[(jb + 1) * 4 + t];
                float2 k0 = ks[jb], k1 = ks[jb + 1];
#pragma unroll
                for (int m = 0; m < NM; ++m) {
                    q4t_block(wq[m][i].x, wq[m][i].y, x0, k0, sc[m][i].x, &acc[m][0], &acc[m][1]);
                    q4t_block(wq[m][i].z, wq[m][i].w, x1, k1, sc[m][i].y, &acc[m][0], &acc[m][1]);
                }
            }
        }
    }
    if (t == 0) {
#pragma unroll
        for (int m = 0; m < NM; ++m) {
            part[warp][m][g] = acc[m][0];
            part[warp][m][g + 8] = acc[m][1];
        }
    }
    __syncthreads();
    if (threadIdx.x < NM * 16) {
        int m = threadIdx.x / 16, i = threadIdx.x % 16;
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < Q4T_WARPS; ++k) s += part[k][m][i];
        red[m][i] = s;
    }
    __syncthreads();
}

// As `gemv` for tiled matrices. Without the rotary embedding, a block per row group of the
// batch's matrices in order. With it (q, k, v of one token, hd % 32 == 0), a block per
// rotation pair of row groups of one head: rg and rg + hd/32 (neox style: rows i and
// i + hd/2), or 2p and 2p + 1 (interleaved: rows 2i and 2i + 1 sit in one group); results go
// where store_rope_pair sends them.
extern "C" __global__ void __launch_bounds__(32 * Q4T_WARPS, Q4T_MIN_BLOCKS)
    gemv_q4t(GemvBatch b, u64 x, int cols, int accumulate) {
    PDL_LAUNCH();  // q4t_rows waits, once its first weights are on their way
    __shared__ float red[2][16];
    int p = blockIdx.x, m = 0, per = b.rope_hd ? 32 : 16;  // rows a block
    while (m < b.count && p >= b.rows[m] / per) p -= b.rows[m++] / per;
    if (m >= b.count) return;  // the whole block
    const u8* w = (const u8*)b.w[m];
    float* y = (float*)b.y[m];
    const float* bias = (const float*)b.bias[m];
    if (!b.rope_hd) {
        q4t_rows<1>(w, p, w, p, b.rows[m], cols, (const float*)x, red);
        if (threadIdx.x < 16) {
            int r = p * 16 + threadIdx.x;
            y[r] = red[0][threadIdx.x] + (bias ? bias[r] : 0.f) + (accumulate ? y[r] : 0.f);
        }
        return;
    }
    int rg0 = 2 * p, rg1 = 2 * p + 1;
    bool neox = b.rope_style == 0;
    if (neox) {  // pair p of head p / (hd/32): groups g and g + hd/32 of that head
        int per_head = b.rope_hd / 32, head = p / per_head;
        rg0 = head * 2 * per_head + p % per_head;
        rg1 = rg0 + per_head;
    }
    q4t_rows<2>(w, rg0, w, rg1, b.rows[m], cols, (const float*)x, red);
    if (threadIdx.x >= 16) return;
    // Thread i: rotation pair (rows r0, r1) with values v0, v1.
    int i = threadIdx.x, r0, r1;
    float v0, v1;
    if (neox) {
        r0 = rg0 * 16 + i;
        r1 = rg1 * 16 + i;
        v0 = red[0][i];
        v1 = red[1][i];
    } else {  // rows 2j, 2j + 1 of group k = i / 8
        int k = i / 8, j = i % 8;
        r0 = (k == 0 ? rg0 : rg1) * 16 + 2 * j;
        r1 = r0 + 1;
        v0 = red[k][2 * j];
        v1 = red[k][2 * j + 1];
    }
    if (bias) {
        v0 += bias[r0];
        v1 += bias[r1];
    }
    store_rope_pair(b, m, r0, r1, v0, v1);
}

// As `gemv_swiglu` for tiled gate and up matrices: a block per row group of both.
extern "C" __global__ void __launch_bounds__(32 * Q4T_WARPS, Q4T_MIN_BLOCKS)
    gemv_swiglu_q4t(u64 gate, u64 up, u64 x, u64 h, int rows, int cols, int act) {
    PDL_LAUNCH();  // q4t_rows waits, once its first weights are on their way
    __shared__ float red[2][16];
    int rg = blockIdx.x;
    q4t_rows<2>((const u8*)gate, rg, (const u8*)up, rg, rows, cols, (const float*)x, red);
    if (threadIdx.x < 16) {
        float g = red[0][threadIdx.x], u = red[1][threadIdx.x];
        ((float*)h)[rg * 16 + threadIdx.x] = round_act(g / (1.f + expf(-g)) * u, act);
    }
}

// Batched decode: the tokens of up to Q4T_COLS sequences through one tiled matrix, each input
// one column of the m16n8k16 products' B (whose 8 columns the single-input GEMVs fill with
// copies of one input), so every weight tile is read once for all of them.
//
// The inputs are staged once per launch group into global memory (they are read by every row
// group's block, from L2): frag[(j * Q4T_COLS + c) * 4 + t] holds lane t's B fragments of block
// j of input c, ks[j * Q4T_COLS + c] its (2^e, K); inputs ncols.. are zero. A thread per (block,
// input).
extern "C" __global__ void q4t_stage_cols(u64 x, int cols, int ncols, u64 frag, u64 ks) {
    PDL_BEGIN();
    int nb = cols / QK;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nb * Q4T_COLS) return;
    int j = i / Q4T_COLS, c = i % Q4T_COLS;
    uint4* f4 = (uint4*)frag + (usize)i * 4;
    float2* k = (float2*)ks + i;
    if (c >= ncols) {
        uint4 z = make_uint4(0u, 0u, 0u, 0u);
        for (int t = 0; t < 4; ++t) f4[t] = z;
        *k = make_float2(0.f, 0.f);
        return;
    }
    q4t_stage_block((const float*)x + (usize)c * cols + (usize)j * QK, f4, k);
}

// y[c][r] = (accumulate ? y[c][r] : 0) + dot(w[r, :], x_c) for the ncols staged inputs c
// (y: ncols rows of `rows` f32). A block per row group; its warps split the tiles as
// `q4t_rows` does. Lane (g, t) reads the B fragments of input g and holds the results of
// rows g, g + 8 for inputs 2t, 2t + 1 (the accumulator layout of m16n8k16).
extern "C" __global__ void __launch_bounds__(32 * Q4T_WARPS, Q4T_MIN_BLOCKS)
    gemv_q4t_cols(u64 w, int rows, int cols, u64 frag, u64 ks, int ncols, u64 y,
                  int accumulate) {
    PDL_LAUNCH();  // waits below, once its first weights are on their way
    constexpr int B = Q4T_BATCH;
    __shared__ float part[Q4T_WARPS][16][Q4T_COLS];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    int rg = blockIdx.x, nt = cols / 64, per = q4t_per_warp(nt);
    int c0 = min(warp * per, nt), c1 = min(c0 + per, nt);
    const u8* wb = (const u8*)w;
    usize first = (usize)rg * nt + c0;
    const u8* wp = wb + (first * 32 + lane) * 16;
    const u8* sp = wb + (usize)rows * (cols / 32) * 16 + first * 64 + g * 8;
    const uint4* fr = (const uint4*)frag;
    const float4* kk = (const float4*)ks;  // inputs 2t, 2t + 1 of a block: one float4
    float acc[4] = {0.f, 0.f, 0.f, 0.f};   // (g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
    if (c0 >= c1) PDL_WAIT();              // a warp without tiles
    for (int c = c0; c < c1; c += B) {
        uint4 wq[B];
        uint2 sc[B];
#pragma unroll
        for (int i = 0; i < B; ++i) {
            if (c + i < c1) {
                wq[i] = ld_stream((const uint4*)(wp + (usize)(c + i - c0) * 512));
                sc[i] = ld_stream2((const uint2*)(sp + (usize)(c + i - c0) * 64));
            }
        }
        if (c == c0) PDL_WAIT();  // the staged inputs are the previous kernel's output
#pragma unroll
        for (int i = 0; i < B; ++i) {
            if (c + i < c1) {
                u32 words[4] = {wq[i].x, wq[i].y, wq[i].z, wq[i].w};
                u32 scales[2] = {sc[i].x, sc[i].y};
#pragma unroll
                for (int h = 0; h < 2; ++h) {  // the tile's two blocks
                    int j = 2 * (c + i) + h;
                    uint4 xf = fr[((usize)j * Q4T_COLS + g) * 4 + t];
                    float4 k2 = kk[(usize)j * (Q4T_COLS / 2) + t];
                    u32 wa = words[2 * h], wb2 = words[2 * h + 1];
                    float d[4] = {0.f, 0.f, 0.f, 0.f};
                    mma16816(d, nib_h2(wa, 0x000f000fu), nib_h2(wb2, 0x000f000fu),
                             nib_h2(wa, 0x00f000f0u), nib_h2(wb2, 0x00f000f0u), xf.x, xf.y);
                    u32 wa8 = wa >> 8, wb8 = wb2 >> 8;
                    mma16816(d, nib_h2(wa8, 0x000f000fu), nib_h2(wb8, 0x000f000fu),
                             nib_h2(wa8, 0x00f000f0u), nib_h2(wb8, 0x00f000f0u), xf.z, xf.w);
                    float da = f16_to_f((u16)(scales[h] & 0xffffu));
                    float db = f16_to_f((u16)(scales[h] >> 16));
                    acc[0] = fmaf(da, fmaf(k2.x, d[0], -k2.y), acc[0]);
                    acc[1] = fmaf(da, fmaf(k2.z, d[1], -k2.w), acc[1]);
                    acc[2] = fmaf(db, fmaf(k2.x, d[2], -k2.y), acc[2]);
                    acc[3] = fmaf(db, fmaf(k2.z, d[3], -k2.w), acc[3]);
                }
            }
        }
    }
    part[warp][g][2 * t] = acc[0];
    part[warp][g][2 * t + 1] = acc[1];
    part[warp][g + 8][2 * t] = acc[2];
    part[warp][g + 8][2 * t + 1] = acc[3];
    __syncthreads();
    for (int e = threadIdx.x; e < 16 * Q4T_COLS; e += blockDim.x) {
        int col = e / 16, i = e % 16;  // consecutive threads: consecutive rows of one input
        if (col >= ncols) continue;
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < Q4T_WARPS; ++k) s += part[k][i][col];
        float* out = (float*)y + (usize)col * rows + (usize)rg * 16 + i;
        *out = s + (accumulate ? *out : 0.f);
    }
}
