//! Captures what a closure logs through `tracing`, as text.
#![allow(dead_code)] // test binaries that do not log leave it unused

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
