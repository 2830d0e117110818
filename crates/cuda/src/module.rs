//! Compiled GPU code: a module loaded from a cubin image, its functions, their attributes, and
//! kernel launches (with programmatic dependent launch where asked).
//!
//! A [`Function`] is a plain handle (copied freely into the owner's tables of kernels); every
//! use of one goes through the [`Module`] it came from, which checks that it is that module's,
//! so no function is used after its module is unloaded.

use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::sys;

use crate::driver::{Gpu, Stream};
use crate::CudaError;

/// A loaded module (`cuModuleLoadData`), unloaded on drop.
#[derive(Debug)]
pub struct Module {
    gpu: Arc<Gpu>,
    raw: sys::CUmodule,
}

/// A function of a [`Module`] (`cuModuleGetFunction`); used only through that module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    raw: sys::CUfunction,
    module: sys::CUmodule,
}

/// How a kernel is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks in x, y, z (each at least 1).
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z (each at least 1, at most 1024 in all).
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block, bytes (above 48 KiB only after
    /// [`Module::set_max_dynamic_shared_bytes`]).
    pub shared_mem_bytes: u32,
    /// Launch with programmatic stream serialization allowed (programmatic dependent launch,
    /// compute capability 9.0+): the kernel may start before the previous one on the stream
    /// finishes, and must wait for it (`cudaGridDependencySynchronize`) before reading its
    /// results.
    pub programmatic_dependent_launch: bool,
}

impl Module {
    /// Loads a cubin (or fatbin) `image` into `gpu`'s context. The driver validates the image
    /// and copies what it needs; a damaged or foreign one is an error.
    pub fn load(gpu: &Arc<Gpu>, image: &[u8]) -> Result<Module, CudaError> {
        gpu.make_current()?;
        let mut raw: sys::CUmodule = std::ptr::null_mut();
        // SAFETY: `image` is live for the call; the driver parses it (rejecting what is not a
        // module image) and keeps its own copy. Out-pointer to a local; a context is current.
        gpu.check("cuModuleLoadData", unsafe {
            sys::cuModuleLoadData(&mut raw, image.as_ptr() as *const c_void)
        })?;
        Ok(Module {
            gpu: gpu.clone(),
            raw,
        })
    }

    /// The device the module is loaded on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The function called `name` (an `extern "C"` kernel).
    pub fn function(&self, name: &str) -> Result<Function, CudaError> {
        let c = CString::new(name)
            .map_err(|_| CudaError::Config(format!("kernel name {name:?} holds a NUL byte")))?;
        let mut raw: sys::CUfunction = std::ptr::null_mut();
        // SAFETY: the module is live; `c` is NUL-terminated; out-pointer to a local.
        self.gpu.check("cuModuleGetFunction", unsafe {
            sys::cuModuleGetFunction(&mut raw, self.raw, c.as_ptr())
        })?;
        Ok(Function {
            raw,
            module: self.raw,
        })
    }

    /// Lets `f` use up to `bytes` of dynamic shared memory per block
    /// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`); the driver refuses more than the
    /// device's opt-in limit less the kernel's static shared memory.
    pub fn set_max_dynamic_shared_bytes(&self, f: Function, bytes: usize) -> Result<(), CudaError> {
        self.assert_owns(f);
        let bytes = i32::try_from(bytes).map_err(|_| {
            CudaError::Config(format!("{bytes} bytes of shared memory is out of range"))
        })?;
        // SAFETY: f is a function of this live module (asserted above).
        self.gpu.check("cuFuncSetAttribute", unsafe {
            sys::cuFuncSetAttribute(
                f.raw,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes,
            )
        })
    }

    /// Blocks of `threads` threads and `dynamic_smem_bytes` of dynamic shared memory that can be
    /// resident at once on one multiprocessor running `f`
    /// (`cuOccupancyMaxActiveBlocksPerMultiprocessor`: its registers, shared memory and
    /// threads); 0 when such a block does not fit at all.
    pub fn max_active_blocks(
        &self,
        f: Function,
        threads: u32,
        dynamic_smem_bytes: u32,
    ) -> Result<u32, CudaError> {
        self.assert_owns(f);
        let mut blocks = 0i32;
        // SAFETY: f is a function of this live module (asserted above); out-pointer to a local.
        self.gpu
            .check("cuOccupancyMaxActiveBlocksPerMultiprocessor", unsafe {
                sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                    &mut blocks,
                    f.raw,
                    threads as i32,
                    dynamic_smem_bytes as usize,
                )
            })?;
        Ok(blocks.max(0) as u32)
    }

    /// Queues `f` on `stream` (`cuLaunchKernelEx`). `args` holds one pointer per kernel
    /// parameter, in order, each pointing to a value of exactly that parameter's C type (`u64`
    /// for a device address, `i32` for `int`, `f32` for `float`, a `#[repr(C)]` twin for a
    /// struct); the driver copies the values before returning.
    ///
    /// # Safety
    /// - `args` has exactly `f`'s parameters, in order, each of the parameter's size and layout.
    /// - Every device address among them points to memory of this module's context that stays
    ///   allocated until the kernel has run, and is large enough for every access the kernel
    ///   makes with the given counts and this launch's grid and block.
    /// - No other work touches the bytes the kernel writes while it runs (stream order or events
    ///   see to that).
    pub unsafe fn launch(
        &self,
        f: Function,
        config: &LaunchConfig,
        stream: &Stream,
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        self.assert_owns(f);
        let (grid, block) = (config.grid, config.block);
        assert!(
            grid.0 > 0 && grid.1 > 0 && grid.2 > 0,
            "empty grid {grid:?}"
        );
        assert!(
            block.0 > 0 && block.1 > 0 && block.2 > 0 && block.0 * block.1 * block.2 <= 1024,
            "block {block:?} outside 1..=1024 threads"
        );
        assert_eq!(
            stream.gpu().ordinal(),
            self.gpu.ordinal(),
            "a launch on another device's stream"
        );
        self.gpu.make_current()?;
        // SAFETY: an all-zero launch attribute is valid (id 0 = ignore); set below.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let raw_config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block.0,
            blockDimY: block.1,
            blockDimZ: block.2,
            sharedMemBytes: config.shared_mem_bytes,
            hStream: stream.raw(),
            attrs: &mut attr,
            numAttrs: u32::from(config.programmatic_dependent_launch),
        };
        // SAFETY: the caller's contract covers `args` and the memory the kernel touches; the
        // stream and function are live (the function is this module's); `raw_config` and the
        // attribute it points to outlive the call.
        self.gpu.check("cuLaunchKernelEx", unsafe {
            sys::cuLaunchKernelEx(&raw_config, f.raw, args.as_mut_ptr(), std::ptr::null_mut())
        })
    }

    /// Every function handed to this module must be one of its own.
    fn assert_owns(&self, f: Function) {
        assert!(
            f.module == self.raw,
            "a function used through a module it does not belong to"
        );
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.gpu.make_current().is_ok() {
            // SAFETY: loaded once and unloaded once; its functions are used only through this
            // module, so none is used after this.
            unsafe { sys::cuModuleUnload(self.raw) };
        }
    }
}
