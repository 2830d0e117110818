//! Log levels of the engine's fallbacks (the integration tests cover the events of a real load;
//! a filesystem that refuses O_DIRECT is not available everywhere, so that decision is checked
//! here directly).

use super::{log_direct_refusals, Backend};

#[path = "../../tests/common/capture.rs"]
mod capture;

/// What `f` logs at `level` and above.
fn logged(level: tracing::Level, f: impl FnOnce()) -> String {
    capture::capture_logs(level, f).1
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
