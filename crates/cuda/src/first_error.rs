//! The first error of a pool of worker threads, and the flag that tells the others to stop
//! (the chunk pool of the cuFile and page-cache-mapped loads, and the verification).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::CudaError;

/// Keeps the first error any worker reports; later ones are consequences and dropped.
#[derive(Debug, Default)]
pub(crate) struct FirstError {
    abort: AtomicBool,
    error: Mutex<Option<CudaError>>,
}

impl FirstError {
    /// Whether a worker failed (the others should stop taking work).
    pub(crate) fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Records `e` unless an error was recorded before, and tells the workers to stop.
    pub(crate) fn record(&self, e: CudaError) {
        self.abort.store(true, Ordering::Relaxed);
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }

    /// The recorded error, if any.
    pub(crate) fn into_result(self) -> Result<(), CudaError> {
        match self.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_wins_and_stops_the_others() {
        let f = FirstError::default();
        assert!(!f.aborted());
        std::thread::scope(|s| {
            s.spawn(|| f.record(CudaError::Config("first".into())));
        });
        assert!(f.aborted());
        f.record(CudaError::Config("second".into()));
        let e = f.into_result().unwrap_err();
        assert!(e.to_string().contains("first"), "{e}");
        assert!(FirstError::default().into_result().is_ok());
    }
}
