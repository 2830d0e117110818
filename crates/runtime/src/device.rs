//! Whether this machine can run the GPU runtime, asked of the CUDA driver directly.
//!
//! No CUDA crate is needed: `libcuda.so.1` is opened with `dlopen`, and `cuInit` and
//! `cuDeviceGetCount` are called through `dlsym`. Machines without a GPU get a reason, never a
//! panic.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

type CuInit = unsafe extern "C" fn(flags: c_uint) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call
    // on this thread; it is copied at once.
    let why = unsafe { libc::dlerror() };
    if why.is_null() {
        "unknown dynamic loader error".into()
    } else {
        // SAFETY: non-null dlerror results are NUL-terminated strings (see above).
        unsafe { CStr::from_ptr(why) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Looks `name` up in `lib`.
fn symbol(lib: *mut c_void, name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: `lib` is a live handle from dlopen and `name` a valid C string.
    let p = unsafe { libc::dlsym(lib, name.as_ptr() as *const c_char) };
    if p.is_null() {
        Err(format!(
            "the CUDA driver has no {}: {}",
            name.to_string_lossy(),
            dl_error()
        ))
    } else {
        Ok(p)
    }
}

fn probe() -> Result<usize, String> {
    let mut lib = std::ptr::null_mut();
    for name in [c"libcuda.so.1", c"libcuda.so"] {
        // SAFETY: dlopen with a valid C string. The handle is never closed: the driver stays
        // loaded for the life of the process, as it would for any CUDA user.
        lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !lib.is_null() {
            break;
        }
    }
    if lib.is_null() {
        return Err(format!(
            "the NVIDIA driver library (libcuda.so.1) is not installed or not on the loader path ({})",
            dl_error()
        ));
    }
    let init = symbol(lib, c"cuInit")?;
    let count = symbol(lib, c"cuDeviceGetCount")?;
    // SAFETY: the symbols come from the CUDA driver, whose ABI declares exactly these
    // signatures (`CUresult cuInit(unsigned)`, `CUresult cuDeviceGetCount(int*)`).
    let (init, count) = unsafe {
        (
            std::mem::transmute::<*mut c_void, CuInit>(init),
            std::mem::transmute::<*mut c_void, CuDeviceGetCount>(count),
        )
    };
    // SAFETY: cuInit takes flags 0 and may be called more than once.
    let r = unsafe { init(0) };
    if r != 0 {
        return Err(format!(
            "cuInit failed with CUresult {r} (100 = no device, 35 = driver older than the runtime needs)"
        ));
    }
    let mut n: c_int = 0;
    // SAFETY: out-pointer to a local, after a successful cuInit.
    let r = unsafe { count(&mut n) };
    if r != 0 {
        return Err(format!("cuDeviceGetCount failed with CUresult {r}"));
    }
    if n <= 0 {
        return Err("the CUDA driver reports no device".into());
    }
    Ok(n as usize)
}

/// `Ok(devices)` when the CUDA driver loads, initializes and reports at least one device;
/// otherwise why not, in words fit for a user. The answer is computed once per process.
pub fn cuda_available() -> Result<usize, String> {
    static ANSWER: OnceLock<Result<usize, String>> = OnceLock::new();
    ANSWER.get_or_init(probe).clone()
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
