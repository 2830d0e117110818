//! Synthetic checkpoints with the tensor layouts of real models and random contents.
//!
//! No machine of this project can download weights, so tests and benchmarks load checkpoints
//! made here: the same names, shapes, dtypes, shard split and header layout as a Hugging Face
//! `save_pretrained` checkpoint, filled with pseudo-random bytes (every bit pattern, never
//! zeros, so an unwritten or misplaced byte shows).

pub mod gguf;
mod presets;
mod rng;
mod writer;

pub use presets::{preset, presets, ModelSpec, Preset, TensorSpec};
pub use rng::fill_random;
pub use writer::{write_checkpoint, write_safetensors, SynthError, MARKER_FILE_NAME};
