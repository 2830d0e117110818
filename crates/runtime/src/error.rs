//! The crate's error type: every module's typed error, for callers that handle them together.

use crate::chat::ChatError;
use crate::config::ConfigError;
use crate::cpu::ForwardError;
use crate::gpu::GpuError;
use crate::sampler::SamplerError;
use crate::tokenizer::TokenizerError;
use crate::weights::WeightError;

/// Any error of this crate; each variant's message names the file, key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The checkpoint could not be parsed.
    #[error(transparent)]
    Format(#[from] hoist_format::FormatError),
    /// The configuration could not be read or is not supported.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A tensor is missing, misshapen or of an unsupported type.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// Loading the tensors failed.
    #[error(transparent)]
    Load(#[from] hoist_io::LoadError),
    /// A forward pass failed.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The tokenizer could not be built or failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Sampling settings are out of range.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// A chat template failed.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The GPU runtime failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}
