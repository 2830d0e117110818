//! Test harness for hoist's GPU path, kept out of the library crates so that nothing shipped
//! (the `hoist` binary's libraries, the Python wheel) compiles it or links `hoist-synth`.
//!
//! - [`fixtures`]: small checkpoints with awkward layouts (odd sizes, unaligned offsets,
//!   uneven shards, GGUF alignments).
//! - [`selftest`]: the GPU correctness matrix over those fixtures.
//! - [`models`]: the runtime's tiny chat-ready model, for the engine's, server's and CLI's tests.
//!
//! Used by hoist-cuda's tests and its `gpu_selftest` and `make_checkpoint` examples, which the
//! GPU bench scripts run; only ever a dev-dependency.

pub mod fixtures;
pub mod models;
pub mod selftest;
