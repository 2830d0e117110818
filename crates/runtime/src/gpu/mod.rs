//! The GPU runtime: Llama-family models with every weight resident in GPU memory.
//!
//! - Weights reach the device through hoist's GPU path ([`hoist_cuda::load_to_gpu`], packed
//!   layout): the load's allocations *are* the runtime's weight buffers, nothing is copied twice
//!   and no host copy of the model is made.
//! - Kernels are CUDA C (`kernels.cu`), compiled at run time by NVRTC for the device's own
//!   architecture and cached on disk keyed by source hash and architecture ([`module`]).
//! - GEMMs with more than one token go to cuBLAS (`cublasGemmEx`, f32 accumulation); one-token
//!   matrix-vector products (decode) use our own bandwidth-bound GEMV kernels, fused with
//!   SwiGLU, biases and the residual add, and with Q8_0 / Q4_0 dequantization.
//! - Activations and the KV cache are f32; GEMM inputs are rounded to the weights' float type
//!   (as transformers does for bf16/f16 models).
//!
//! Every kernel has a plain f32 twin in [`crate::cpu`]; `tests/gpu.rs` checks each against it
//! where a GPU exists, and `bench/gpu/runtime/` checks whole models against transformers.

pub mod bench;
mod blas;
mod error;
mod layers;
mod llama;
mod module;
#[cfg(test)]
mod tests;

pub use error::GpuError;
pub use llama::{GpuModel, GpuOptions, GpuSession, LoadStats, MAX_CHUNK_TOKENS};
pub use module::default_cache_dir;
