//! The cuFile (GPUDirect Storage) path: reads straight into the final device buffers.
//!
//! With the `nvidia-fs` kernel module, cuFile DMAs from the storage device into GPU memory and
//! host memory is never touched. Without it cuFile runs in *compatibility mode*: it reads into
//! its own pinned bounce buffers and copies them up, which is what the ring does anyway but with
//! fewer reads in flight and no use of the page cache. So `auto` takes this path only where it
//! is really direct; `--gpu-path cufile` forces it (and reports `cufile-compat` where it is not).

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use cudarc::cufile::{result as cf, sys as cfsys};
use serde::Serialize;

use crate::chunk_pool::{ChunkLoad, ChunkWorker};
use crate::tensors::DestLayout;
use crate::CudaError;

/// What this machine offers of cuFile.
#[derive(Clone, Debug, Serialize)]
pub struct CufileStatus {
    /// `libcufile.so` can be loaded.
    pub library: bool,
    /// The `nvidia-fs` kernel module is loaded, so reads can be really direct.
    pub nvidia_fs: bool,
    /// One line for reports.
    pub summary: String,
}

/// Looks for libcufile and nvidia-fs without initializing anything.
pub fn cufile_status() -> CufileStatus {
    // SAFETY: only tries to dlopen the candidate names; never panics.
    let library = crate::driver::driver_library().is_ok() && unsafe { cfsys::is_culib_present() };
    let nvidia_fs = Path::new("/proc/driver/nvidia-fs/version").exists()
        || Path::new("/sys/module/nvidia_fs").exists();
    let summary = match (library, nvidia_fs) {
        (false, _) => "libcufile.so not found on the library path (the CUDA toolkit has it under targets/x86_64-linux/lib; add that to LD_LIBRARY_PATH)".to_string(),
        (true, false) => "libcufile found; nvidia-fs not loaded, so cuFile runs only in compatibility mode (not direct)".to_string(),
        (true, true) => "libcufile found and nvidia-fs loaded: GPUDirect Storage reads are direct".to_string(),
    };
    CufileStatus {
        library,
        nvidia_fs,
        summary,
    }
}

fn cf_err(what: impl Into<String>) -> impl FnOnce(cf::CufileError) -> CudaError {
    let what = what.into();
    move |e| CudaError::Cufile {
        what,
        reason: format!("{e:?}"),
    }
}

/// An open cuFile driver; closed on drop.
struct Driver;

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = cf::driver_close();
    }
}

/// A file registered with cuFile; deregistered on drop (before its descriptor closes).
struct Handle {
    raw: cfsys::CUfileHandle_t,
    _file: File,
}

// SAFETY: cuFile handles may be used from several threads at once (cuFileRead is thread safe).
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: raw was registered once and is deregistered once, before _file closes.
        let _ = unsafe { cf::handle_deregister(self.raw) };
    }
}

/// Reads every chunk of the load into its region buffers with cuFile. Returns bytes read.
pub(crate) fn load(load: &ChunkLoad<'_>) -> Result<u64, CudaError> {
    let plan = load.plan;
    if load.dest.layout() != DestLayout::Regions {
        return Err(CudaError::Config(
            "the cuFile path reads whole chunks into region buffers; use the regions layout (hoist: --gpu-layout regions)".into(),
        ));
    }
    let status = cufile_status();
    if !status.library {
        return Err(CudaError::Cufile {
            what: "is unavailable".into(),
            reason: status.summary,
        });
    }
    load.gpu.make_current()?;
    cf::driver_open().map_err(cf_err("driver open"))?;
    let _driver = Driver;
    let mut handles = Vec::with_capacity(plan.files.len());
    for f in &plan.files {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&f.path)
            .map_err(|source| CudaError::File {
                path: f.path.clone(),
                source,
            })?;
        let descr = cfsys::CUfileDescr_t {
            type_: cfsys::CUfileFileHandleType::CU_FILE_HANDLE_TYPE_OPAQUE_FD,
            handle: cfsys::CUfileDescr_t__bindgen_ty_1 {
                fd: file.as_raw_fd(),
            },
            fs_ops: std::ptr::null(),
        };
        let raw = cf::handle_register(&descr).map_err(|e| CudaError::Cufile {
            what: format!("register {}", f.path.display()),
            reason: format!(
                "{e:?}; cuFile refused the file (its reason is in cufile.log in the working directory; where it cannot read the volume's udev attributes, as on virtio disks, it refuses every file, compatibility mode included); use --gpu-path ring"
            ),
        })?;
        handles.push(Handle { raw, _file: file });
    }
    let bytes = load.run(|| {
        Ok(CufileWorker {
            load,
            handles: &handles,
        })
    })?;
    drop(handles);
    Ok(bytes)
}

/// One thread of the cuFile load: reads each chunk it takes whole, synchronously.
struct CufileWorker<'a> {
    load: &'a ChunkLoad<'a>,
    handles: &'a [Handle],
}

impl ChunkWorker for CufileWorker<'_> {
    fn start(&mut self, index: usize, done: &dyn Fn(usize)) -> Result<(), CudaError> {
        let plan = self.load.plan;
        let c = &plan.chunks[index];
        let base = self.load.dest.region_ptr(c.region);
        let path = &plan.files[c.file].path;
        let mut read = 0u64;
        while read < c.need {
            // SAFETY: the destination [region_offset + read, region_offset + len) lies inside
            // the region's allocation (chunks are inside regions); the handle is registered
            // for this load.
            let n = unsafe {
                cfsys::cuFileRead(
                    self.handles[c.file].raw,
                    base as *mut c_void,
                    (c.len - read) as usize,
                    (c.file_offset + read) as cfsys::off_t,
                    (c.region_offset + read) as cfsys::off_t,
                )
            };
            let failed = |reason: String| CudaError::CufileRead {
                path: path.clone(),
                offset: c.file_offset + read,
                len: c.len - read,
                reason,
            };
            if n < 0 {
                return Err(failed(if n == -1 {
                    std::io::Error::last_os_error().to_string()
                } else {
                    format!("cuFile error {}", -n)
                }));
            }
            if n == 0 {
                return Err(failed(format!(
                    "file ended; the header places data up to {}",
                    c.file_offset + c.need
                )));
            }
            read += n as u64;
        }
        done(index);
        Ok(())
    }

    fn complete(&mut self, _done: &dyn Fn(usize)) -> Result<(), CudaError> {
        // Every read finished inside `start`.
        Ok(())
    }
}
