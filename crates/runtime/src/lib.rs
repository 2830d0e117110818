//! The inference runtime's foundations: model configurations, weight naming, CPU reference
//! kernels and forward pass, tokenizers, chat templates and sampling.
//!
//! What is here runs on any machine. The GPU runtime (cudarc, NVRTC kernels, cuBLAS) is checked
//! against [`cpu`]: every kernel there is the plain f32 reference its GPU twin must match, and
//! [`cpu::CpuModel`] is the reference forward pass, itself checked against logits made by
//! Hugging Face `transformers` (fixtures under `tests/fixtures/`).
//!
//! - [`config`]: [`ModelConfig`] from a Hugging Face `config.json` or from GGUF metadata.
//! - [`weights`]: one naming of a model's tensors ([`WeightId`]) for both sources, and the check
//!   that a checkpoint holds every tensor with the shape the configuration implies.
//! - [`cpu`]: reference kernels (f32) and the reference forward pass.
//! - [`quant`]: GGUF tensors (plain, legacy, k-quant and IQ4 block types) dequantized to f32.
//! - [`tokenizer`]: `tokenizer.json`, or a tokenizer rebuilt from GGUF metadata.
//! - [`chat`]: chat templates rendered with minijinja.
//! - [`sampler`]: greedy and stochastic sampling, repetition penalty, stop strings.
//! - [`gpu`]: the GPU runtime (NVRTC kernels, cuBLAS, KV cache) for models resident on a GPU.
//! - [`placement`]: where each layer's weights live (resident, streamed, cached): the plan the
//!   GPU runtime checks at load and consults each step.
//! - [`generate`]: the prefill + decode loop over any [`generate::LogitsModel`], streaming text.

#![warn(missing_docs)]

pub mod chat;
pub mod config;
pub mod constrain;
pub mod cpu;
mod device;
mod error;
pub mod generate;
pub mod gpu;
pub mod placement;
pub mod quant;
pub mod sampler;
pub mod tokenizer;
pub mod weights;

pub use config::{ArchFamily, ModelConfig, RopeScaling, RopeStyle};
pub use device::cuda_available;
pub use error::RuntimeError;
pub use placement::{Placement, PlacementError, Residency};
pub use weights::{LayerTensor, WeightId, WeightMap, WeightSource};
