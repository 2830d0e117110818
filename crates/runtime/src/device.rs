//! Whether this machine can run the GPU runtime, in words fit for a user.
//!
//! The probe itself is hoist-cuda's ([`hoist_cuda::device_count`]): it checks that the driver
//! library loads before calling into it, so machines without a GPU get a reason, never a panic.

use std::sync::OnceLock;

/// `Ok(devices)` when the CUDA driver loads, initializes and reports at least one device;
/// otherwise why not, in words fit for a user. The answer is computed once per process.
pub fn cuda_available() -> Result<usize, String> {
    static ANSWER: OnceLock<Result<usize, String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| match hoist_cuda::device_count() {
            Ok(0) => Err("the CUDA driver reports no device".into()),
            Ok(n) => Ok(n),
            Err(e) => Err(e.to_string()),
        })
        .clone()
}

#[cfg(test)]
mod tests {
    #[test]
    fn answers_without_panicking() {
        match super::cuda_available() {
            Ok(n) => assert!(n > 0),
            Err(why) => assert!(!why.is_empty()),
        }
        // Remembered: the same answer twice.
        assert_eq!(super::cuda_available(), super::cuda_available());
    }
}
