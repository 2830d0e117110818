//! Run-time compilation of CUDA C into a cubin with NVRTC.
//!
//! NVRTC is loaded only when something is compiled (a warm start with cached cubins never
//! loads it), and its presence is checked before the first call: cudarc panics when a library
//! it calls into is missing.

use std::ffi::{c_char, CString};
use std::sync::OnceLock;

use cudarc::nvrtc::sys;

use crate::CudaError;

/// The library, as named in errors.
const LIBRARY: &str = "NVRTC (libnvrtc.so)";

/// Checks that NVRTC can be loaded, without calling into it; the answer is remembered.
pub fn nvrtc_available() -> Result<(), CudaError> {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen NVRTC's candidate names; never panics.
    if *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() }) {
        Ok(())
    } else {
        Err(CudaError::Library {
            library: LIBRARY,
            reason: "not found on the loader path; it compiles GPU kernels (once per GPU architecture, when no cached cubin fits)".into(),
        })
    }
}

/// NVRTC's version as `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    nvrtc_available()?;
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: out-pointers to locals; the library is present (checked above).
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Library {
            library: LIBRARY,
            reason: format!("nvrtcVersion failed: {r:?}"),
        });
    }
    Ok((major, minor))
}

/// A CUDA C program: a main source and the headers it includes, found by their include names
/// (no include path on disk is searched).
#[derive(Clone, Copy, Debug)]
pub struct Program<'a> {
    /// Name of the main source in NVRTC's messages, e.g. `kernels.cu`.
    pub name: &'a str,
    /// The main source.
    pub source: &'a str,
    /// `(include name, contents)` of every header the program may include.
    pub headers: &'a [(&'a str, &'a str)],
}

/// An NVRTC program handle, destroyed on drop.
struct Handle(sys::nvrtcProgram);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from nvrtcCreateProgram and is destroyed once, here.
        unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

/// Compiles `program` with NVRTC `options` (which name the target, e.g.
/// `--gpu-architecture=sm_90`) into a cubin. A refused program is [`CudaError::Compile`] with
/// NVRTC's log.
pub fn compile_cubin(program: &Program<'_>, options: &[String]) -> Result<Vec<u8>, CudaError> {
    nvrtc_available()?;
    let fail = |log: String| CudaError::Compile {
        program: program.name.to_string(),
        log,
    };
    let c_string = |s: &str| CString::new(s).map_err(|e| fail(format!("{s:.40?}…: {e}")));
    let source = c_string(program.source)?;
    let name = c_string(program.name)?;
    let header_names = program
        .headers
        .iter()
        .map(|(n, _)| c_string(n))
        .collect::<Result<Vec<_>, _>>()?;
    let header_bodies = program
        .headers
        .iter()
        .map(|(_, b)| c_string(b))
        .collect::<Result<Vec<_>, _>>()?;
    let option_strings = options
        .iter()
        .map(|o| c_string(o))
        .collect::<Result<Vec<_>, _>>()?;
    let name_ptrs: Vec<*const c_char> = header_names.iter().map(|n| n.as_ptr()).collect();
    let body_ptrs: Vec<*const c_char> = header_bodies.iter().map(|b| b.as_ptr()).collect();
    let option_ptrs: Vec<*const c_char> = option_strings.iter().map(|o| o.as_ptr()).collect();
    let headers = i32::try_from(program.headers.len()).map_err(|e| fail(e.to_string()))?;
    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: out-pointer to a local; every string is NUL-terminated and outlives the call
    // (NVRTC copies them); both header arrays hold `headers` pointers.
    let created = unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            source.as_ptr(),
            name.as_ptr(),
            headers,
            body_ptrs.as_ptr(),
            name_ptrs.as_ptr(),
        )
    };
    if created != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(fail(format!("nvrtcCreateProgram: {created:?}")));
    }
    let handle = Handle(raw);
    // SAFETY: a live program; `option_ptrs` holds that many NUL-terminated strings that outlive
    // the call.
    let compiled = unsafe {
        sys::nvrtcCompileProgram(handle.0, option_ptrs.len() as i32, option_ptrs.as_ptr())
    };
    if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(fail(format!("{compiled:?}: {}", log(&handle))));
    }
    cubin(&handle).map_err(fail)
}

/// The program's log (empty when NVRTC cannot give it).
fn log(handle: &Handle) -> String {
    let mut size = 0usize;
    // SAFETY: a live program; out-pointer to a local.
    let r = unsafe { sys::nvrtcGetProgramLogSize(handle.0, &mut size) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return String::new();
    }
    let mut bytes = vec![0u8; size];
    // SAFETY: `bytes` holds exactly the `size` bytes NVRTC asked for.
    let r = unsafe { sys::nvrtcGetProgramLog(handle.0, bytes.as_mut_ptr() as *mut c_char) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return String::new();
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The cubin of a compiled program.
fn cubin(handle: &Handle) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: the program compiled successfully; out-pointer to a local.
    let r = unsafe { sys::nvrtcGetCUBINSize(handle.0, &mut size) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err(format!(
            "nvrtcGetCUBINSize: {r:?} (is --gpu-architecture a real sm_XY, not compute_XY?)"
        ));
    }
    let mut out = vec![0u8; size];
    // SAFETY: `out` holds exactly the `size` bytes NVRTC asked for.
    let r = unsafe { sys::nvrtcGetCUBIN(handle.0, out.as_mut_ptr() as *mut c_char) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcGetCUBIN: {r:?}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether NVRTC can be loaded; when not, the caller skips.
    fn present() -> bool {
        let ok = nvrtc_available().is_ok();
        if !ok {
            eprintln!("skipped: NVRTC (libnvrtc.so) not found");
        }
        ok
    }

    #[test]
    fn absence_is_an_error_that_names_the_library() {
        match nvrtc_available() {
            Ok(()) => assert!(nvrtc_version().is_ok_and(|(major, _)| major >= 11)),
            Err(e) => {
                assert!(e.to_string().contains("libnvrtc.so"), "{e}");
                assert!(matches!(
                    compile_cubin(
                        &Program {
                            name: "x.cu",
                            source: "",
                            headers: &[]
                        },
                        &[]
                    ),
                    Err(CudaError::Library { .. })
                ));
            }
        }
    }

    #[test]
    fn headers_are_found_by_name_and_errors_carry_the_log() {
        if !present() {
            return;
        }
        let headers = [("twice.cuh", "#define TWICE(x) (2 * (x))\n")];
        let program = Program {
            name: "t.cu",
            source: "#include \"twice.cuh\"\nextern \"C\" __global__ void k(int *p) { *p = TWICE(*p); }\n",
            headers: &headers,
        };
        let options = vec!["--gpu-architecture=sm_80".to_string()];
        let cubin = compile_cubin(&program, &options).unwrap();
        assert_eq!(&cubin[..4], b"\x7fELF");
        let broken = Program {
            source: "extern \"C\" __global__ void k() { undeclared_name(); }\n",
            ..program
        };
        let e = compile_cubin(&broken, &options).unwrap_err().to_string();
        assert!(e.contains("t.cu") && e.contains("undeclared_name"), "{e}");
    }

    #[test]
    fn a_nul_byte_is_an_error_not_a_panic() {
        if !present() {
            return;
        }
        let program = Program {
            name: "t.cu",
            source: "int x;\0",
            headers: &[],
        };
        assert!(matches!(
            compile_cubin(&program, &[]),
            Err(CudaError::Compile { .. })
        ));
    }
}
