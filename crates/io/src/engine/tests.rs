//! Log levels of the engine's fallbacks (the integration tests cover the events of a real load;
//! a filesystem that refuses O_DIRECT is not available everywhere, so that decision is checked
//! here directly).

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::{log_direct_refusals, Backend};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What `f` logs at `level` and above.
fn logged(level: tracing::Level, f: impl FnOnce()) -> String {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    text
}

#[test]
fn a_refused_o_direct_is_a_warning_only_when_uring_was_asked_for() {
    let refused = vec!["/m/model.safetensors (Invalid argument)".to_string()];
    let uring = logged(tracing::Level::WARN, || {
        log_direct_refusals(&refused, Backend::Uring)
    });
    assert!(
        uring.contains(" WARN ")
            && uring.contains("O_DIRECT refused")
            && uring.contains("/m/model.safetensors"),
        "{uring}"
    );
    for backend in [Backend::Auto, Backend::Pread, Backend::Mmap] {
        let quiet = logged(tracing::Level::WARN, || {
            log_direct_refusals(&refused, backend)
        });
        assert_eq!(quiet, "", "{backend:?}");
    }
    let auto = logged(tracing::Level::DEBUG, || {
        log_direct_refusals(&refused, Backend::Auto)
    });
    assert!(
        auto.contains(" DEBUG ") && auto.contains("O_DIRECT refused"),
        "{auto}"
    );
    let none = logged(tracing::Level::TRACE, || {
        log_direct_refusals(&[], Backend::Uring)
    });
    assert_eq!(none, "");
}
