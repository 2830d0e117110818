//! Thin, owned wrappers over the CUDA driver API calls hoist needs (device, primary context,
//! device and pinned host memory, streams, events).
//!
//! Why not cudarc's safe layer: the sink needs events per ring slot, copies on several streams
//! from many engine threads, and pinned memory made either by `cuMemHostAlloc` or by
//! `cuMemHostRegister` over our own mapping (O_DIRECT and io_uring fixed buffers need ordinary
//! pages). The raw calls are few; each wrapper owns one handle and releases it on drop.
//!
//! Nothing here touches cudarc before [`driver_library`] has checked that `libcuda.so.1` can be
//! loaded: cudarc's dynamic loader panics when the library is absent.

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};

use cudarc::driver::sys;

use crate::CudaError;

/// Checks that the CUDA driver library can be loaded, without touching cudarc; the result is
/// remembered.
pub fn driver_library() -> Result<(), CudaError> {
    static FOUND: OnceLock<Result<(), String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let mut first_error = None;
            for name in [c"libcuda.so.1", c"libcuda.so"] {
                // SAFETY: dlopen with a valid C string; the handle is closed right away (the
                // library stays loadable for cudarc, which opens it by these names).
                let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                if h.is_null() {
                    // SAFETY: dlerror returns a thread-local NUL-terminated string or null.
                    let why = unsafe { libc::dlerror() };
                    if first_error.is_none() && !why.is_null() {
                        // SAFETY: non-null dlerror results are NUL-terminated strings.
                        first_error = Some(
                            unsafe { std::ffi::CStr::from_ptr(why) }
                                .to_string_lossy()
                                .into_owned(),
                        );
                    }
                    continue;
                }
                // SAFETY: h is a handle dlopen returned.
                unsafe { libc::dlclose(h) };
                // cudarc searches its own list of names; make sure it finds one too.
                // SAFETY: only tries to dlopen candidate names; never panics.
                if unsafe { sys::is_culib_present() } {
                    return Ok(());
                }
                return Err("libcuda.so.1 loads but not under the names cudarc searches".into());
            }
            Err(first_error.unwrap_or_else(|| "libcuda.so.1 not found".into()))
        })
        .clone()
        .map_err(CudaError::NoDriver)
}

/// Turns a driver result code into a typed error.
pub(crate) fn check(call: &'static str, ordinal: usize, r: sys::CUresult) -> Result<(), CudaError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::driver(call, ordinal, r))
    }
}

fn init() -> Result<(), CudaError> {
    static INIT: OnceLock<sys::CUresult> = OnceLock::new();
    driver_library()?;
    // SAFETY: the library is present (checked above); cuInit has no other precondition.
    let r = *INIT.get_or_init(|| unsafe { sys::cuInit(0) });
    match r {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        sys::CUresult::CUDA_ERROR_NO_DEVICE => Err(CudaError::NoDevice {
            ordinal: 0,
            reason: "the driver sees no CUDA device".into(),
        }),
        code => Err(CudaError::driver("cuInit", 0, code)),
    }
}

thread_local! {
    /// The context this thread made current last (as an address), to skip redundant calls.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// One device and its primary context (shared with every other user of the device in this
/// process, e.g. PyTorch).
#[derive(Debug)]
pub struct Gpu {
    ordinal: usize,
    device: sys::CUdevice,
    ctx: sys::CUcontext,
    name: String,
}

// SAFETY: a primary context may be made current on any thread; the handle is only a token.
unsafe impl Send for Gpu {}
// SAFETY: as above; the driver serializes what needs serializing.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Turns the result code of driver call `call` on this GPU into a typed error.
    pub(crate) fn check(&self, call: &'static str, r: sys::CUresult) -> Result<(), CudaError> {
        check(call, self.ordinal, r)
    }

    /// Opens device `ordinal` and retains its primary context.
    pub(crate) fn open(ordinal: usize) -> Result<Arc<Gpu>, CudaError> {
        init()?;
        let mut count = 0i32;
        // SAFETY: out-pointer to a local.
        check("cuDeviceGetCount", ordinal, unsafe {
            sys::cuDeviceGetCount(&mut count)
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice {
                ordinal,
                reason: format!(
                    "this machine has {count} CUDA device(s) (cuda:0..cuda:{})",
                    count.max(1) - 1
                ),
            });
        }
        let mut device: sys::CUdevice = 0;
        // SAFETY: out-pointer to a local; ordinal checked against the count.
        check("cuDeviceGet", ordinal, unsafe {
            sys::cuDeviceGet(&mut device, ordinal as i32)
        })?;
        let mut name_buf = [0 as std::ffi::c_char; 256];
        // SAFETY: the buffer holds 256 chars and the driver writes a NUL-terminated name within.
        check("cuDeviceGetName", ordinal, unsafe {
            sys::cuDeviceGetName(name_buf.as_mut_ptr(), 256, device)
        })?;
        // SAFETY: NUL-terminated by the driver (and the buffer was zeroed).
        let name = unsafe { std::ffi::CStr::from_ptr(name_buf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; released in Drop.
        check("cuDevicePrimaryCtxRetain", ordinal, unsafe {
            sys::cuDevicePrimaryCtxRetain(&mut ctx, device)
        })?;
        let gpu = Arc::new(Gpu {
            ordinal,
            device,
            ctx,
            name,
        });
        gpu.make_current()?;
        Ok(gpu)
    }

    /// Device ordinal (`cuda:N`).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Reads a device attribute.
    pub fn attribute(&self, attribute: DeviceAttribute) -> Result<i32, CudaError> {
        let mut v = 0i32;
        // SAFETY: out-pointer to a local; the device handle is valid for the process.
        self.check("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(&mut v, attribute.raw(), self.device)
        })?;
        Ok(v)
    }

    /// Compute capability `(major, minor)`, e.g. `(9, 0)` for Hopper.
    pub fn compute_capability(&self) -> Result<(i32, i32), CudaError> {
        Ok((
            self.attribute(DeviceAttribute::ComputeCapabilityMajor)?,
            self.attribute(DeviceAttribute::ComputeCapabilityMinor)?,
        ))
    }

    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the context current on the calling thread (once per thread).
    pub fn make_current(&self) -> Result<(), CudaError> {
        let key = self.ctx as usize;
        if CURRENT.with(|c| c.get()) == key {
            return Ok(());
        }
        // SAFETY: ctx is a retained primary context, valid until Drop.
        check("cuCtxSetCurrent", self.ordinal, unsafe {
            sys::cuCtxSetCurrent(self.ctx)
        })?;
        CURRENT.with(|c| c.set(key));
        Ok(())
    }

    /// `(free, total)` device memory in bytes.
    pub fn mem_info(&self) -> Result<(u64, u64), CudaError> {
        self.make_current()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-pointers to locals; a context is current.
        check("cuMemGetInfo", self.ordinal, unsafe {
            sys::cuMemGetInfo_v2(&mut free, &mut total)
        })?;
        Ok((free as u64, total as u64))
    }

    /// Waits for all work on the device's context.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.make_current()?;
        // SAFETY: a context is current.
        check("cuCtxSynchronize", self.ordinal, unsafe {
            sys::cuCtxSynchronize()
        })
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: releases the retain taken in open; every buffer, stream and event holds an
        // Arc<Gpu>, so none outlives this.
        unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) };
        CURRENT.with(|c| {
            if c.get() == self.ctx as usize {
                c.set(0)
            }
        });
    }
}

/// The device attributes hoist reads ([`Gpu::attribute`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceAttribute {
    /// Major compute capability.
    ComputeCapabilityMajor,
    /// Minor compute capability.
    ComputeCapabilityMinor,
    /// Most shared memory one block may opt in to, bytes (above the 48 KiB default; see
    /// [`crate::Module::set_max_dynamic_shared_bytes`]).
    MaxSharedMemoryPerBlockOptin,
    /// Whether the device can DMA from host memory registered read-only (1) or not (0).
    ReadOnlyHostRegisterSupported,
    /// Streaming multiprocessors on the device.
    MultiprocessorCount,
}

impl DeviceAttribute {
    fn raw(self) -> sys::CUdevice_attribute {
        use sys::CUdevice_attribute::*;
        match self {
            DeviceAttribute::ComputeCapabilityMajor => CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            DeviceAttribute::ComputeCapabilityMinor => CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            DeviceAttribute::MaxSharedMemoryPerBlockOptin => {
                CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
            }
            DeviceAttribute::ReadOnlyHostRegisterSupported => {
                CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED
            }
            DeviceAttribute::MultiprocessorCount => CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        }
    }
}

/// The CUDA driver's version, e.g. 13000 for 13.0.
pub fn driver_version() -> Result<i32, CudaError> {
    init()?;
    let mut v = 0i32;
    // SAFETY: out-pointer to a local.
    check("cuDriverGetVersion", 0, unsafe {
        sys::cuDriverGetVersion(&mut v)
    })?;
    Ok(v)
}

/// Number of CUDA devices (checks the driver library first: never panics without one).
pub fn device_count() -> Result<usize, CudaError> {
    init()?;
    let mut count = 0i32;
    // SAFETY: out-pointer to a local.
    check("cuDeviceGetCount", 0, unsafe {
        sys::cuDeviceGetCount(&mut count)
    })?;
    Ok(count.max(0) as usize)
}

/// One device allocation (`cuMemAlloc`), freed on drop.
#[derive(Debug)]
#[allow(clippy::len_without_is_empty)]
pub struct DeviceBuf {
    gpu: Arc<Gpu>,
    ptr: sys::CUdeviceptr,
    len: usize,
}

impl DeviceBuf {
    /// Allocates `len` bytes (at least 1) on `gpu`.
    pub fn new(gpu: &Arc<Gpu>, len: usize) -> Result<DeviceBuf, CudaError> {
        gpu.make_current()?;
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: out-pointer to a local; a context is current.
        let r = unsafe { sys::cuMemAlloc_v2(&mut ptr, len.max(1)) };
        if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let free = gpu.mem_info().map(|m| m.0).unwrap_or(0);
            return Err(CudaError::OutOfMemory {
                ordinal: gpu.ordinal,
                needed_bytes: len as u64,
                needed_gib: len as f64 / (1u64 << 30) as f64,
                free_bytes: free,
            });
        }
        check("cuMemAlloc", gpu.ordinal, r)?;
        Ok(DeviceBuf {
            gpu: gpu.clone(),
            ptr,
            len,
        })
    }

    /// Device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Bytes allocated.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Queues a copy of `src` to the start of this buffer on `stream`. `src` must be pageable
    /// (not page-locked) memory: the driver stages it before returning, so it may be reused
    /// then.
    pub fn write_async(&self, stream: &Stream, src: &[u8]) -> Result<(), CudaError> {
        assert!(
            src.len() <= self.len,
            "{} bytes into a {}-byte buffer",
            src.len(),
            self.len
        );
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: the destination lies inside this live allocation (checked above); src is a
        // live slice of that length, pageable (this method's contract), so staged on return.
        unsafe { copy_htod_async(&self.gpu, self.ptr, src.as_ptr(), src.len(), stream) }
    }

    /// Copies the first `dst.len()` bytes of this buffer into `dst` once the work queued on
    /// `stream` is done, and waits for it.
    pub fn read(&self, stream: &Stream, dst: &mut [u8]) -> Result<(), CudaError> {
        assert!(
            dst.len() <= self.len,
            "{} bytes out of a {}-byte buffer",
            dst.len(),
            self.len
        );
        if !dst.is_empty() {
            self.gpu.make_current()?;
            // SAFETY: the source lies inside this live allocation (checked above); dst is a live,
            // writable slice of that length, and the wait below ends the copy before it returns.
            check("cuMemcpyDtoHAsync", self.gpu.ordinal, unsafe {
                sys::cuMemcpyDtoHAsync_v2(
                    dst.as_mut_ptr() as *mut c_void,
                    self.ptr,
                    dst.len(),
                    stream.raw,
                )
            })?;
        }
        stream.synchronize()
    }

    /// Queues a copy of the first `len` bytes of this buffer to `dst` at `dst_offset` on
    /// `stream`, without waiting.
    ///
    /// # Safety
    /// `dst` must outlive the copy and its bytes `dst_offset..dst_offset + len` must be neither
    /// read nor written by the host until the copy has run (wait on an event recorded after it).
    pub unsafe fn read_to_pinned_async(
        &self,
        stream: &Stream,
        dst: &PinnedBuf,
        dst_offset: usize,
        len: usize,
    ) -> Result<(), CudaError> {
        assert!(
            len <= self.len
                && dst_offset
                    .checked_add(len)
                    .is_some_and(|end| end <= dst.len),
            "{len} bytes of a {}-byte buffer to {dst_offset} of {} pinned bytes",
            self.len,
            dst.len
        );
        if len == 0 {
            return Ok(());
        }
        self.gpu.make_current()?;
        // SAFETY: both ranges lie inside live allocations (checked above); the destination is
        // pinned (so the copy is truly asynchronous) and left alone by the host until the copy
        // has run (the caller's contract).
        check("cuMemcpyDtoHAsync", self.gpu.ordinal, unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                dst.ptr.as_ptr().add(dst_offset) as *mut c_void,
                self.ptr,
                len,
                stream.raw,
            )
        })
    }

    /// Queues a copy of `len` bytes from device address `src` to the start of this buffer on
    /// `stream`.
    ///
    /// # Safety
    /// `src..src + len` must be live device memory of this buffer's context that stays
    /// unwritten until the copy has run, and must not overlap this buffer.
    pub unsafe fn copy_from_device_async(
        &self,
        stream: &Stream,
        src: u64,
        len: usize,
    ) -> Result<(), CudaError> {
        assert!(
            len <= self.len,
            "{len} bytes into a {}-byte buffer",
            self.len
        );
        if len == 0 {
            return Ok(());
        }
        self.gpu.make_current()?;
        // SAFETY: the destination lies inside this live allocation (checked above); the source
        // is the caller's contract.
        check("cuMemcpyDtoDAsync", self.gpu.ordinal, unsafe {
            sys::cuMemcpyDtoDAsync_v2(self.ptr, src, len, stream.raw)
        })
    }

    /// Queues a copy of `len` bytes of pinned `src` from `src_offset` into this buffer at
    /// `dst_offset` on `stream`, without waiting (a truly asynchronous copy: the source is
    /// pinned). Capturable into a graph.
    ///
    /// # Safety
    /// `src`'s bytes `src_offset..src_offset + len` must not be written by the host until the
    /// copy has run, and `src` must outlive it (and every replay of a graph that captured it).
    pub unsafe fn write_from_pinned_async(
        &self,
        stream: &Stream,
        dst_offset: usize,
        src: &PinnedBuf,
        src_offset: usize,
        len: usize,
    ) -> Result<(), CudaError> {
        let fits = |off: usize, total: usize| off.checked_add(len).is_some_and(|end| end <= total);
        assert!(
            fits(dst_offset, self.len) && fits(src_offset, src.len),
            "{len} bytes from {src_offset} of {} pinned bytes to {dst_offset} of a {}-byte buffer",
            src.len,
            self.len
        );
        if len == 0 {
            return Ok(());
        }
        // SAFETY: both ranges lie inside live allocations (checked above); the source is
        // pinned and left alone by the host until the copy has run (the caller's contract).
        unsafe {
            copy_htod_async(
                &self.gpu,
                self.ptr + dst_offset as u64,
                src.ptr.as_ptr().add(src_offset),
                len,
                stream,
            )
        }
    }

    /// Queues zeroing the whole buffer on `stream`.
    pub fn zero_async(&self, stream: &Stream) -> Result<(), CudaError> {
        self.gpu.make_current()?;
        // SAFETY: exactly this live allocation.
        check("cuMemsetD8Async", self.gpu.ordinal, unsafe {
            sys::cuMemsetD8Async(self.ptr, 0, self.len, stream.raw)
        })
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        if self.gpu.make_current().is_ok() {
            // SAFETY: ptr came from cuMemAlloc in this context and is freed once.
            unsafe { sys::cuMemFree_v2(self.ptr) };
        }
    }
}

/// How pinned host memory is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinnedAlloc {
    /// An anonymous mapping of ordinary pages, then `cuMemHostRegister`: O_DIRECT and io_uring
    /// fixed buffers work on it as on any user memory.
    MmapRegister,
    /// `cuMemHostAlloc` (cached, not write-combined): the driver's own pinned pages.
    HostAlloc,
}

impl PinnedAlloc {
    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PinnedAlloc::MmapRegister => "mmap-register",
            PinnedAlloc::HostAlloc => "host-alloc",
        }
    }
}

/// Page-locked host memory, page aligned, released on drop.
#[derive(Debug)]
#[allow(clippy::len_without_is_empty)]
pub struct PinnedBuf {
    gpu: Arc<Gpu>,
    ptr: NonNull<u8>,
    len: usize,
    how: PinnedAlloc,
}

// SAFETY: the buffer is plain memory owned by this value; access is coordinated by its users.
unsafe impl Send for PinnedBuf {}
// SAFETY: as above.
unsafe impl Sync for PinnedBuf {}

impl PinnedBuf {
    /// Allocates and pins `len` bytes (a multiple of the page size) by `how`.
    pub fn new(gpu: &Arc<Gpu>, len: usize, how: PinnedAlloc) -> Result<PinnedBuf, CudaError> {
        gpu.make_current()?;
        let err = |reason: String| CudaError::Pinned {
            ordinal: gpu.ordinal,
            bytes: len,
            how: how.name(),
            reason,
        };
        let ptr = match how {
            PinnedAlloc::HostAlloc => {
                let mut p: *mut c_void = std::ptr::null_mut();
                // SAFETY: out-pointer to a local; flags 0 = cached, not mapped, not
                // write-combined (write-combined memory is slow for the CPU to write into).
                let r = unsafe { sys::cuMemHostAlloc(&mut p, len, 0) };
                if r != sys::CUresult::CUDA_SUCCESS {
                    return Err(err(format!("cuMemHostAlloc returned {r:?}")));
                }
                p
            }
            PinnedAlloc::MmapRegister => {
                // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    return Err(err(format!("mmap: {}", std::io::Error::last_os_error())));
                }
                // SAFETY: advising our own fresh mapping; refusal is harmless.
                unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
                // SAFETY: p..p+len is our mapping; the driver pins (and faults in) its pages.
                let r = unsafe { sys::cuMemHostRegister_v2(p, len, 0) };
                if r != sys::CUresult::CUDA_SUCCESS {
                    // SAFETY: unmapping the mapping made above.
                    unsafe { libc::munmap(p, len) };
                    return Err(err(format!("cuMemHostRegister returned {r:?}")));
                }
                p
            }
        };
        let ptr = NonNull::new(ptr as *mut u8).ok_or_else(|| err("null pointer".into()))?;
        let buf = PinnedBuf {
            gpu: gpu.clone(),
            ptr,
            len,
            how,
        };
        if !(ptr.as_ptr() as usize).is_multiple_of(4096) {
            return Err(err(format!("{:p} is not 4 KiB aligned", ptr)));
        }
        Ok(buf)
    }

    /// First byte.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The bytes, for the host to fill. Whoever queued asynchronous copies from (or to) this
    /// buffer must have waited for them first: the borrow cannot see the device.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr..ptr+len is this value's own live mapping, borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, for the host to read (same caveat as [`PinnedBuf::as_mut_slice`]).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is this value's own live mapping.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        let _ = self.gpu.make_current();
        let p = self.ptr.as_ptr() as *mut c_void;
        match self.how {
            // SAFETY: p came from cuMemHostAlloc and is freed once.
            PinnedAlloc::HostAlloc => unsafe {
                sys::cuMemFreeHost(p);
            },
            // SAFETY: p..p+len was registered and mapped in new; undone once, in reverse order.
            PinnedAlloc::MmapRegister => unsafe {
                sys::cuMemHostUnregister(p);
                libc::munmap(p, self.len);
            },
        }
    }
}

/// A non-blocking stream.
#[derive(Debug)]
pub struct Stream {
    gpu: Arc<Gpu>,
    pub(crate) raw: sys::CUstream,
}

// SAFETY: stream handles may be used from any thread with the context current.
unsafe impl Send for Stream {}
// SAFETY: as above; the driver serializes submissions to one stream.
unsafe impl Sync for Stream {}

impl Stream {
    /// Creates a stream that does not synchronize with the legacy default stream.
    pub fn new(gpu: &Arc<Gpu>) -> Result<Stream, CudaError> {
        gpu.make_current()?;
        let mut raw: sys::CUstream = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        check("cuStreamCreate", gpu.ordinal, unsafe {
            sys::cuStreamCreate(&mut raw, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
        })?;
        Ok(Stream {
            gpu: gpu.clone(),
            raw,
        })
    }

    /// The driver's handle (for the launches, captures and cuBLAS calls of this crate). Valid
    /// while the stream lives.
    pub(crate) fn raw(&self) -> sys::CUstream {
        self.raw
    }

    /// The device the stream belongs to.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Waits for everything queued on the stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.gpu.make_current()?;
        // SAFETY: raw is a live stream of this context.
        check("cuStreamSynchronize", self.gpu.ordinal, unsafe {
            sys::cuStreamSynchronize(self.raw)
        })
    }
}

impl Stream {
    /// Makes work queued on this stream after now wait until `event` (as last recorded)
    /// completes, without blocking the host.
    pub fn wait(&self, event: &Event) -> Result<(), CudaError> {
        self.gpu.make_current()?;
        // SAFETY: both handles are live in this context.
        check("cuStreamWaitEvent", self.gpu.ordinal, unsafe {
            sys::cuStreamWaitEvent(self.raw, event.raw, 0)
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.gpu.make_current();
        // SAFETY: destroyed once; pending work completes first (driver semantics).
        unsafe { sys::cuStreamDestroy_v2(self.raw) };
    }
}

/// An event without timing whose waiters sleep instead of spinning (many engine threads may
/// wait at once).
#[derive(Debug)]
pub struct Event {
    gpu: Arc<Gpu>,
    raw: sys::CUevent,
}

// SAFETY: event handles may be used from any thread with the context current.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Event {
    /// Creates an event.
    pub fn new(gpu: &Arc<Gpu>) -> Result<Event, CudaError> {
        gpu.make_current()?;
        let mut raw: sys::CUevent = std::ptr::null_mut();
        let flags = sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC as u32
            | sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        // SAFETY: out-pointer to a local.
        check("cuEventCreate", gpu.ordinal, unsafe {
            sys::cuEventCreate(&mut raw, flags)
        })?;
        Ok(Event {
            gpu: gpu.clone(),
            raw,
        })
    }

    /// Records the event at the current end of `stream`.
    pub fn record(&self, stream: &Stream) -> Result<(), CudaError> {
        self.gpu.make_current()?;
        // SAFETY: both handles are live in this context.
        check("cuEventRecord", self.gpu.ordinal, unsafe {
            sys::cuEventRecord(self.raw, stream.raw)
        })
    }

    /// Whether the work before the last record has completed (without waiting).
    pub fn query(&self) -> Result<bool, CudaError> {
        self.gpu.make_current()?;
        // SAFETY: raw is a live event.
        match unsafe { sys::cuEventQuery(self.raw) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            code => Err(CudaError::driver("cuEventQuery", self.gpu.ordinal, code)),
        }
    }

    /// Waits (sleeping) until the work before the last record has completed.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.gpu.make_current()?;
        // SAFETY: raw is a live event.
        check("cuEventSynchronize", self.gpu.ordinal, unsafe {
            sys::cuEventSynchronize(self.raw)
        })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let _ = self.gpu.make_current();
        // SAFETY: destroyed once.
        unsafe { sys::cuEventDestroy_v2(self.raw) };
    }
}

/// Queues a host→device copy of `len` bytes on `stream`.
///
/// # Safety
/// `src..src+len` must be either pinned host memory that stays untouched until the copy
/// completes, or pageable memory (the driver copies that to staging before returning), and
/// `dst..dst+len` must lie inside a live device allocation.
pub(crate) unsafe fn copy_htod_async(
    gpu: &Gpu,
    dst: u64,
    src: *const u8,
    len: usize,
    stream: &Stream,
) -> Result<(), CudaError> {
    gpu.make_current()?;
    // SAFETY: the caller's contract.
    check("cuMemcpyHtoDAsync", gpu.ordinal, unsafe {
        sys::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, len, stream.raw)
    })
}

/// Copies `dst.len()` bytes from device address `src` into host memory (synchronously).
///
/// # Safety
/// `src..src+dst.len()` must lie inside a live device allocation.
pub(crate) unsafe fn copy_dtoh(gpu: &Gpu, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
    if dst.is_empty() {
        return Ok(());
    }
    gpu.make_current()?;
    // SAFETY: dst is a writable host slice of that length; the caller's contract covers src.
    check("cuMemcpyDtoH", gpu.ordinal, unsafe {
        sys::cuMemcpyDtoH_v2(dst.as_mut_ptr() as *mut c_void, src, dst.len())
    })
}

/// Fills `len` bytes at device address `dst` with `value` (used to poison destinations in tests).
///
/// # Safety
/// `dst..dst+len` must lie inside a live device allocation.
pub(crate) unsafe fn memset(gpu: &Gpu, dst: u64, value: u8, len: usize) -> Result<(), CudaError> {
    gpu.make_current()?;
    // SAFETY: the caller's contract.
    check("cuMemsetD8", gpu.ordinal, unsafe {
        sys::cuMemsetD8_v2(dst, value, len)
    })
}
