//! Helpers shared by this crate's integration tests.

use std::path::{Path, PathBuf};

use hoist_format::DType;
use hoist_synth::{fill_random, write_safetensors, TensorSpec};

/// Writes `dir/name`: one U8 tensor per entry of `sizes` (named `t00`, `t01`, …), filled with
/// random bytes keyed by `seed`.
pub fn u8_checkpoint(dir: &Path, name: &str, sizes: &[u64], seed: u64) -> PathBuf {
    let specs: Vec<TensorSpec> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec {
            name: format!("t{i:02}"),
            dtype: DType::U8,
            shape: vec![n],
        })
        .collect();
    let path = dir.join(name);
    write_safetensors(&path, &specs, &[], |i, off, buf| {
        fill_random(buf, seed, i as u64, off)
    })
    .unwrap();
    path
}

/// A `MakeWriter` that appends every formatted event to one shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` under a subscriber recording events up to `level`; returns `f`'s result and the
/// formatted log.
#[allow(dead_code)] // not every test binary logs
pub fn capture_logs<T>(level: tracing::Level, f: impl FnOnce() -> T) -> (T, String) {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let log = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    (result, log)
}
