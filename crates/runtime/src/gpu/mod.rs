//! The GPU runtime: Llama-family models with their weights in GPU memory.
//!
//! - Weights reach the device through hoist's GPU path ([`hoist_cuda::load_to_gpu`], packed
//!   layout): the load's allocations *are* the runtime's weight buffers, nothing is copied twice
//!   and no host copy of the model is made.
//! - Kernels are CUDA C, one file per op family under `kernels/` with shared headers, compiled
//!   at run time by NVRTC for the device's own architecture (constants shared with the host
//!   passed as `-D` options) and cached on disk as a cubin keyed by the sources, options and
//!   architecture; a warm start does not load NVRTC at all.
//! - Prefill (several tokens) runs its matrix products on cuBLAS (`cublasGemmEx`, f32
//!   accumulation; quantized weights are dequantized to f16 first) and attention as two batched
//!   cuBLAS products around a causal softmax.
//! - Decode (one token) runs our GEMV kernels, fused with SwiGLU, biases, the residual add and
//!   the rotary embedding with the KV-cache store, reading quantized blocks directly (every
//!   GGUF block type: `kernels/quant.cuh`; their input quantized to int16 per 32 values, so
//!   that the products are integer dot products, within 2^-16 of each block's largest input),
//!   and a split-key attention kernel whose last block per head merges the slices. Kernels read
//!   the position from device memory, so one captured CUDA graph replays a whole decode step at
//!   any position.
//! - Activations are f32; GEMM inputs are rounded to the weights' float type (as transformers
//!   does for bf16/f16 models), and the KV cache holds that type too (f16 for quantized
//!   weights): decode attention's time beyond its fixed cost is memory-bound, and the cuBLAS
//!   prefill attention multiplies q and the probabilities in it.
//!
//! Every kernel has a plain f32 twin in [`crate::cpu`]: the unit tests of this module check each
//! against it where a GPU exists, `tests/gpu.rs` checks whole models against transformers'
//! logits, and `bench/gpu/runtime/` does so on fresh random models of every family.
//!
//! How it runs is set by [`GpuOptions`], read once at load: the device, the kernel cache, the
//! layers' [`crate::Placement`] (all resident so far; the forward pass asks the model's layer
//! store for each layer's weights every step, the seam layer streaming will use), and
//! [`GpuTuning`]'s kernel choices and shapes, for diagnosis and tuning. The environment is read
//! only by [`GpuOptions::with_env_overrides`], for the `HOIST_*` overrides listed in
//! [`ENV_OVERRIDES`]; docs/run.md has the table of every knob, and
//! `bench/gpu/run.sh decode-switches` measures the switches. Q4_0 matrices are repacked into
//! tiles at load time for tensor-core GEMVs (`q4_tiles`; [`GpuTuning::q4_tiles`]); the other
//! block types are read as the file holds them (`kernels/quant.cuh`).
//!
//! Weights are reached through typed device views ([`hoist_cuda::DevSlice`]: an address and a
//! length), so a launch's safety argument checks the lengths it relies on.

// A shipped feature (`hoist run --benchmark`), not test harness, so it stays in the library.
pub mod bench;
mod blas;
mod error;
mod kernels;
mod layers;
mod llama;
mod module;
mod options;
mod q4_tiles;
#[cfg(test)]
mod tests;

pub use error::GpuError;
pub use hoist_io::CachePolicy;
pub use llama::{GpuModel, GpuSession, LoadStats, MAX_CHUNK_TOKENS, MAX_CONTEXT};
pub use module::default_cache_dir;
pub use options::{DecodeGemv, GpuOptions, GpuTuning, HostFfn, ENV_OVERRIDES};
