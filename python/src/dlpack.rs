//! The producer side of DLPack: a loaded tensor handed to torch or numpy without a copy.
//!
//! `__dlpack__` returns a PyCapsule holding a `DLManagedTensor` (named `"dltensor"`) or, when
//! the consumer asks for DLPack 1.x through `max_version`, a `DLManagedTensorVersioned`
//! (`"dltensor_versioned"`). The managed tensor owns a clone of the `Arc` that keeps the memory
//! alive (the host buffer, or the device allocation); its `deleter` drops that clone. A
//! consumer that takes the capsule renames it to `"used_dltensor"` (or
//! `"used_dltensor_versioned"`) and calls the deleter when its tensor dies; a capsule nobody
//! took still carries its original name when it is collected, and its destructor calls the
//! deleter then. Each managed tensor is freed exactly once, by whichever of the two owns it.
//!
//! Structures follow `dlpack.h` (v1.1); only the fields and codes used here are declared.

use std::any::Any;
use std::ffi::{c_void, CStr};
use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// `DLDeviceType::kDLCPU`.
pub const KDL_CPU: i32 = 1;
/// `DLDeviceType::kDLCUDA`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub const KDL_CUDA: i32 = 2;

/// `DLDataTypeCode` values.
pub mod code {
    /// Signed integer.
    pub const INT: u8 = 0;
    /// Unsigned integer.
    pub const UINT: u8 = 1;
    /// IEEE float.
    pub const FLOAT: u8 = 2;
    /// bfloat16.
    pub const BFLOAT: u8 = 4;
    /// Complex.
    pub const COMPLEX: u8 = 5;
    /// Boolean.
    pub const BOOL: u8 = 6;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDevice {
    pub device_type: i32,
    pub device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DLDataType {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

const NAME: &CStr = c"dltensor";
const NAME_VERSIONED: &CStr = c"dltensor_versioned";
/// The DLPack version this producer speaks when asked for 1.x (nothing of 1.1 is used: 8-bit
/// floats travel as uint8).
const VERSION: (u32, u32) = (1, 0);

/// Memory a tensor points into; kept alive by the consumer's managed tensor.
pub type Keepalive = Arc<dyn Any + Send + Sync>;

/// What one export needs: where the bytes are and how to read them.
#[derive(Clone)]
pub struct Export {
    /// Address of the first element (host or device); never null.
    pub data: usize,
    /// Device of `data`.
    pub device: DLDevice,
    /// Element type as exported.
    pub dtype: DLDataType,
    /// Shape as exported (row-major, compact).
    pub shape: Vec<i64>,
    /// Owner of the memory at `data`; `None` for zero-size tensors, whose `data` is a static
    /// dummy address that is never read.
    pub keepalive: Option<Keepalive>,
}

/// Everything a managed tensor owns besides itself: shape and strides arrays and the memory
/// owner. Lives behind `manager_ctx`.
struct Ctx {
    shape: Vec<i64>,
    strides: Vec<i64>,
    _keepalive: Option<Keepalive>,
}

fn compact_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    let mut acc = 1i64;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc = acc.saturating_mul(shape[i].max(1));
    }
    strides
}

/// A dummy, aligned, non-null address for zero-size tensors (some consumers refuse null).
static EMPTY: [u64; 8] = [0; 8];

/// The address zero-size tensors point at.
pub fn empty_data() -> usize {
    EMPTY.as_ptr() as usize
}

impl Export {
    fn into_ctx(self) -> (Box<Ctx>, DLTensor) {
        let strides = compact_strides(&self.shape);
        let mut ctx = Box::new(Ctx {
            shape: self.shape,
            strides,
            _keepalive: self.keepalive,
        });
        let t = DLTensor {
            data: self.data as *mut c_void,
            device: self.device,
            ndim: ctx.shape.len() as i32,
            dtype: self.dtype,
            shape: ctx.shape.as_mut_ptr(),
            strides: ctx.strides.as_mut_ptr(),
            byte_offset: 0,
        };
        (ctx, t)
    }
}

unsafe extern "C" fn delete_managed(p: *mut DLManagedTensor) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` was made by `Box::into_raw` in `to_capsule` and its deleter is called once
    // (by the consumer after it renamed the capsule, or by the capsule destructor otherwise).
    let m = unsafe { Box::from_raw(p) };
    if !m.manager_ctx.is_null() {
        // SAFETY: manager_ctx was made by `Box::into_raw(Box<Ctx>)` alongside `p`.
        drop(unsafe { Box::from_raw(m.manager_ctx as *mut Ctx) });
    }
}

unsafe extern "C" fn delete_versioned(p: *mut DLManagedTensorVersioned) {
    if p.is_null() {
        return;
    }
    // SAFETY: as in `delete_managed`, for the versioned structure.
    let m = unsafe { Box::from_raw(p) };
    if !m.manager_ctx.is_null() {
        // SAFETY: manager_ctx was made by `Box::into_raw(Box<Ctx>)` alongside `p`.
        drop(unsafe { Box::from_raw(m.manager_ctx as *mut Ctx) });
    }
}

/// Capsule destructor: frees the managed tensor unless a consumer took it (and renamed the
/// capsule). Runs with the GIL held (capsule deallocation).
unsafe extern "C" fn capsule_destructor(cap: *mut ffi::PyObject) {
    // SAFETY: `cap` is the capsule being deallocated; PyCapsule_IsValid never raises, and
    // PyCapsule_GetPointer with the name just validated returns the stored pointer.
    unsafe {
        if ffi::PyCapsule_IsValid(cap, NAME.as_ptr()) == 1 {
            let p = ffi::PyCapsule_GetPointer(cap, NAME.as_ptr()) as *mut DLManagedTensor;
            if !p.is_null() {
                if let Some(d) = (*p).deleter {
                    d(p);
                }
            }
        } else if ffi::PyCapsule_IsValid(cap, NAME_VERSIONED.as_ptr()) == 1 {
            let p = ffi::PyCapsule_GetPointer(cap, NAME_VERSIONED.as_ptr())
                as *mut DLManagedTensorVersioned;
            if !p.is_null() {
                if let Some(d) = (*p).deleter {
                    d(p);
                }
            }
        }
    }
}

/// Makes a DLPack capsule for `export`: a versioned one when `versioned` (DLPack 1.x), else
/// the legacy `"dltensor"` one.
pub fn to_capsule<'py>(
    py: Python<'py>,
    export: &Export,
    versioned: bool,
) -> PyResult<Bound<'py, PyAny>> {
    if export.data == 0 {
        return Err(PyBufferError::new_err("tensor has no data address"));
    }
    let (ctx, dl_tensor) = export.clone().into_ctx();
    let ctx = Box::into_raw(ctx) as *mut c_void;
    let (ptr, name): (*mut c_void, &CStr) = if versioned {
        let m = Box::new(DLManagedTensorVersioned {
            version: DLPackVersion {
                major: VERSION.0,
                minor: VERSION.1,
            },
            manager_ctx: ctx,
            deleter: Some(delete_versioned),
            flags: 0,
            dl_tensor,
        });
        (Box::into_raw(m) as *mut c_void, NAME_VERSIONED)
    } else {
        let m = Box::new(DLManagedTensor {
            dl_tensor,
            manager_ctx: ctx,
            deleter: Some(delete_managed),
        });
        (Box::into_raw(m) as *mut c_void, NAME)
    };
    // SAFETY: `ptr` is a valid, uniquely owned managed tensor; `name` is 'static; the
    // destructor frees `ptr` only while the capsule keeps its original name.
    let cap = unsafe { ffi::PyCapsule_New(ptr, name.as_ptr(), Some(capsule_destructor)) };
    if cap.is_null() {
        // The capsule was not made, so nobody else owns `ptr`: free it here.
        // SAFETY: `ptr` came from Box::into_raw above and was not handed out.
        unsafe {
            if versioned {
                delete_versioned(ptr as *mut DLManagedTensorVersioned);
            } else {
                delete_managed(ptr as *mut DLManagedTensor);
            }
        }
    }
    // SAFETY: `cap` is a new reference or null with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, cap) }
}

// Sizes on 64-bit targets, from dlpack.h: a mismatch would corrupt every consumer's reads.
const _: () = assert!(std::mem::size_of::<DLTensor>() == 48);
const _: () = assert!(std::mem::size_of::<DLManagedTensor>() == 64);
const _: () = assert!(std::mem::size_of::<DLManagedTensorVersioned>() == 80);
