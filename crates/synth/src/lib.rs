//! Synthetic checkpoints with the tensor layouts of real models and random contents.
//!
//! No machine of this project can download weights, so tests and benchmarks load checkpoints
//! made here: the same names, shapes, dtypes, shard split and header layout as a Hugging Face
//! `save_pretrained` checkpoint, filled with pseudo-random bytes (every bit pattern, never
//! zeros, so an unwritten or misplaced byte shows).
//!
//! A directory hoist writes a checkpoint into is marked ([`MARKER_FILE_NAME`], listing the files
//! written): hoist writes only into a missing or empty directory or one it marked, and removes
//! only the files its marker lists, so it can never write over or delete anyone's data.

mod error;
pub mod gguf;
mod marker;
mod presets;
mod rng;
mod writer;

pub use error::SynthError;
pub use marker::{
    inspect_dir, remove_checkpoint, DirState, MarkedFile, Marker, Removal, MARKER_FILE_NAME,
};
pub use presets::{preset, presets, ModelSpec, Preset, TensorSpec};
pub use rng::fill_random;
pub use writer::{
    prepare_checkpoint, write_checkpoint, write_random_safetensors, write_safetensors, Prepared,
};
