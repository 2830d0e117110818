//! CPU reference kernels (f32) and the reference forward pass.
//!
//! Plain and readable on purpose: these are what the GPU kernels are checked against, and what
//! the forward pass is checked with against `transformers`. Nothing here is tuned for speed.
//!
//! Layout conventions: activations are row-major `[tokens, features]`; a linear layer's weight
//! is `[out_features, in_features]` as checkpoints store it, so `y = x · Wᵀ`.

pub mod attention;
pub mod convert;
pub mod deltanet;
pub mod gemv;
pub mod model;
pub mod moe;
pub mod ops;
pub mod rope;

pub use attention::{attention, KvCache};
pub use convert::{
    bf16_to_f32, dequantize_q4_0, dequantize_q8_0, f16_to_f32, quantize_q4_0, quantize_q8_0,
    tensor_to_f32,
};
pub use deltanet::{DeltaNet, DeltaState};
pub use model::{CpuModel, ForwardError, Sequence};
pub use moe::{route, MoeBlock};
pub use ops::{embedding, matmul_t, rms_norm, silu, softmax, swiglu};
pub use rope::{inv_freqs, llama3_freq_factors, Rope};
