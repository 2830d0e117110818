//! Typed views of device memory: an address with an element count, so that a kernel launch's
//! safety argument can name the length it relies on instead of trusting a bare `u64`.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use crate::{DeviceBuf, GpuTensor};

/// A view the memory cannot back: the wrong size or alignment, or a range past its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SliceError {
    /// The buffer is not a whole number of elements, or not aligned for them.
    #[error("a device buffer of {bytes} bytes at {ptr:#x} is not a whole, aligned run of {elem_bytes}-byte elements")]
    Layout {
        /// The buffer's address.
        ptr: u64,
        /// Its size.
        bytes: usize,
        /// The element's size.
        elem_bytes: usize,
    },
    /// A sub-range past the view's end (or reversed).
    #[error("elements {start}..{end} of a device view of {len} elements")]
    OutOfBounds {
        /// First element asked for.
        start: usize,
        /// One past the last.
        end: usize,
        /// The view's length.
        len: usize,
    },
}

/// `len` values of `T` in device memory at `ptr`: a `Copy` view with no lifetime (device
/// memory is not borrowed like host memory), so whoever passes it to a kernel still vouches
/// that its allocation is alive. What the type does guarantee: a view made by the safe
/// constructors lies inside one allocation, aligned for `T`, so `len` is the bound a launch's
/// `// SAFETY:` comment can check its counts against.
pub struct DevSlice<T> {
    ptr: u64,
    len: usize,
    _elem: PhantomData<fn() -> T>,
}

// Manual impls: derives would demand `T: Clone` etc., which a view of `T`s does not need.
impl<T> Clone for DevSlice<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for DevSlice<T> {}

impl<T> PartialEq for DevSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr && self.len == other.len
    }
}

impl<T> Eq for DevSlice<T> {}

impl<T> fmt::Debug for DevSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DevSlice<{}>({:#x}, {} elements)",
            std::any::type_name::<T>(),
            self.ptr,
            self.len
        )
    }
}

impl<T> Default for DevSlice<T> {
    fn default() -> Self {
        DevSlice::empty()
    }
}

impl<T> DevSlice<T> {
    /// The empty view at address 0, which kernels read as "absent" (a model without biases).
    pub const fn empty() -> DevSlice<T> {
        DevSlice {
            ptr: 0,
            len: 0,
            _elem: PhantomData,
        }
    }

    /// The whole of `buf` as `T`s: its size must be a multiple of `T`'s and its address
    /// aligned for `T` (allocations are 256-byte aligned, so only the size can fail).
    pub fn of(buf: &DeviceBuf) -> Result<DevSlice<T>, SliceError> {
        // SAFETY: the range is exactly `buf`'s allocation.
        unsafe { Self::checked(buf.ptr(), buf.len()) }
    }

    /// The bytes of a loaded tensor as `T`s (same checks as [`DevSlice::of`]); the view is
    /// valid while the [`crate::GpuTensors`] the tensor came from lives.
    pub fn of_tensor(tensor: &GpuTensor) -> Result<DevSlice<T>, SliceError> {
        let bytes = usize::try_from(tensor.info.len).map_err(|_| SliceError::Layout {
            ptr: tensor.device_ptr,
            bytes: usize::MAX,
            elem_bytes: size_of::<T>(),
        })?;
        // SAFETY: a loaded tensor's bytes lie inside the loader's allocation (its address and
        // length come from the load that placed them).
        unsafe { Self::checked(tensor.device_ptr, bytes) }
    }

    /// A view of `bytes` bytes at `ptr`, checked for whole, aligned elements.
    ///
    /// # Safety
    /// `ptr..ptr + bytes` must lie inside one device allocation.
    unsafe fn checked(ptr: u64, bytes: usize) -> Result<DevSlice<T>, SliceError> {
        let elem_bytes = size_of::<T>();
        let layout = || SliceError::Layout {
            ptr,
            bytes,
            elem_bytes,
        };
        if elem_bytes == 0
            || !bytes.is_multiple_of(elem_bytes)
            || !ptr.is_multiple_of(align_of::<T>() as u64)
        {
            return Err(layout());
        }
        Ok(DevSlice {
            ptr,
            len: bytes / elem_bytes,
            _elem: PhantomData,
        })
    }

    /// A view of `len` `T`s at `ptr`, for memory the safe constructors cannot see (another
    /// library's allocation).
    ///
    /// # Safety
    /// `ptr..ptr + len * size_of::<T>()` must lie inside one device allocation, and `ptr` be
    /// aligned for `T`.
    pub unsafe fn from_raw_parts(ptr: u64, len: usize) -> DevSlice<T> {
        debug_assert_eq!(ptr % align_of::<T>() as u64, 0, "misaligned device view");
        DevSlice {
            ptr,
            len,
            _elem: PhantomData,
        }
    }

    /// Elements `range` of this view (bounds-checked).
    pub fn slice(&self, range: Range<usize>) -> Result<DevSlice<T>, SliceError> {
        if range.start > range.end || range.end > self.len {
            return Err(SliceError::OutOfBounds {
                start: range.start,
                end: range.end,
                len: self.len,
            });
        }
        Ok(DevSlice {
            ptr: self.ptr + (range.start * size_of::<T>()) as u64,
            len: range.end - range.start,
            _elem: PhantomData,
        })
    }

    /// The device address of the first element, for a kernel argument.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Elements in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes in the view.
    pub fn bytes(&self) -> usize {
        self.len * size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<T>(ptr: u64, bytes: usize) -> Result<DevSlice<T>, SliceError> {
        // SAFETY: never dereferenced; these tests check the arithmetic only.
        unsafe { DevSlice::checked(ptr, bytes) }
    }

    #[test]
    fn whole_aligned_elements_only() {
        let v = view::<f32>(0x1000, 64).unwrap();
        assert_eq!((v.ptr(), v.len(), v.bytes()), (0x1000, 16, 64));
        assert!(matches!(
            view::<f32>(0x1000, 62),
            Err(SliceError::Layout { bytes: 62, .. })
        ));
        assert!(view::<f32>(0x1002, 64).is_err());
        assert_eq!(view::<u8>(0x1001, 3).unwrap().len(), 3);
    }

    #[test]
    fn sub_slices_are_bounds_checked() {
        let v = view::<u16>(0x2000, 20).unwrap();
        let s = v.slice(2..6).unwrap();
        assert_eq!((s.ptr(), s.len(), s.bytes()), (0x2004, 4, 8));
        assert_eq!(v.slice(10..10).unwrap().len(), 0);
        assert_eq!(
            v.slice(4..11),
            Err(SliceError::OutOfBounds {
                start: 4,
                end: 11,
                len: 10
            })
        );
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = v.slice(5..4);
        assert!(reversed.is_err());
    }

    #[test]
    fn empty_is_address_zero() {
        let e = DevSlice::<f32>::empty();
        assert_eq!((e.ptr(), e.len()), (0, 0));
        assert!(e.is_empty());
        assert_eq!(DevSlice::<f32>::default(), e);
        assert!(format!("{e:?}").contains("f32"));
    }
}
