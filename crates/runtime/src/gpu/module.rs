//! The kernels of `kernels/` (one CUDA C file per op family, see [`super::kernels`]): compiled
//! by NVRTC for the device's architecture on first use as one program, cached on disk as a cubin
//! keyed by (every source file, NVRTC options: architecture, shared constants and GEMV shape),
//! and launched through the driver API.
//!
//! With a cached cubin, NVRTC is not even loaded: a warm start pays only `cuModuleLoadData`.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoist_cuda::{
    CudaError, DeviceAttribute, Function, Gpu, LaunchConfig, Module, Program, Stream,
};

use super::{GpuError, GpuTuning};

use super::kernels::{main_source, FILES};
pub(crate) use super::kernels::{ARGMAX_THREADS, ATTN_SLICE_KEYS, ATTN_SPLITS, MOE_MAX_TOP_K};

/// Threads per block of the row kernels (norms, attention, softmax).
pub(crate) const ROW_THREADS: u32 = 256;
/// Threads per block of the element-wise kernels.
pub(crate) const ELEMENTWISE_THREADS: u32 = 256;
/// GEMV shape: warps per block and unrolling of the 16-bit/f32 loop, passed to NVRTC as
/// `-DGEMV_WARPS` / `-DGEMV_UNROLL` (part of the cache key), and warps per block of the GEMVs
/// on quantized weights (the host's alone: those kernels read it from the block size).
/// The tiled Q4_0 GEMVs (kernels/q4_tiles.cu) take `-DQ4T_WARPS` (warps per block, splitting 16
/// rows' columns), `-DQ4T_BATCH` (tiles a warp loads before using them) and `-DQ4T_MIN_BLOCKS`
/// (resident blocks per SM their registers are cut for).
/// Defaults measured best on an H200 (the tiled ones on an H100); the options' tuning fields
/// ([`super::GpuTuning`]) override them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemvShape {
    pub warps: u32,
    pub unroll: u32,
    pub quantized_warps: u32,
    pub q4t_warps: u32,
    pub q4t_batch: u32,
    pub q4t_min_blocks: u32,
}

impl GemvShape {
    pub(crate) const DEFAULT: GemvShape = GemvShape {
        warps: 4,
        unroll: 4,
        quantized_warps: 16,
        q4t_warps: 8,
        q4t_batch: 4,
        q4t_min_blocks: 2,
    };

    fn defines(self) -> [String; 5] {
        [
            format!("-DGEMV_WARPS={}", self.warps),
            format!("-DGEMV_UNROLL={}", self.unroll),
            format!("-DQ4T_WARPS={}", self.q4t_warps),
            format!("-DQ4T_BATCH={}", self.q4t_batch),
            format!("-DQ4T_MIN_BLOCKS={}", self.q4t_min_blocks),
        ]
    }
}
/// Threads per block of `attention_split`.
pub(crate) const ATTN_THREADS: u32 = 128;

/// The loaded module and its functions.
pub(crate) struct Kernels {
    module: Module,
    pub(crate) convert: Function,
    pub(crate) round_cast: Function,
    pub(crate) embed: Function,
    pub(crate) rms_norm: Function,
    pub(crate) add_bias: Function,
    pub(crate) swiglu: Function,
    pub(crate) rope_store: Function,
    pub(crate) attention_split: Function,
    pub(crate) causal_softmax: Function,
    pub(crate) argmax_next: Function,
    pub(crate) gemv: Function,
    pub(crate) gemv_swiglu: Function,
    pub(crate) gemv_q: Function,
    pub(crate) gemv_swiglu_q: Function,
    pub(crate) gemv_q4t: Function,
    pub(crate) gemv_swiglu_q4t: Function,
    pub(crate) q4t_stage_cols: Function,
    pub(crate) gemv_q4t_cols: Function,
    pub(crate) q4_tile_repack: Function,
    pub(crate) q4_tile_dequant: Function,
    pub(crate) moe_route: Function,
    pub(crate) moe_swiglu: Function,
    pub(crate) moe_down: Function,
    pub(crate) moe_combine: Function,
    pub(crate) moe_gather: Function,
    pub(crate) moe_scatter: Function,
    /// Whether the GPU has the tensor-core products the tiled Q4_0 GEMVs use (sm_80 and newer).
    pub(crate) tensor_cores: bool,
    /// Streaming multiprocessors: the quantized GEMVs' grids are at most as many blocks as are
    /// resident at once ([`Kernels::resident_blocks`]).
    pub(crate) sm_count: u32,
    /// Most dynamic shared memory one block of a tiled Q4_0 GEMV may use, bytes.
    pub(crate) q4t_smem_bytes: usize,
    /// Most dynamic shared memory one block of `attention_split` or of a GEMV may use, bytes.
    pub(crate) attention_smem_bytes: usize,
    /// `sm_XY` of the device.
    pub(crate) arch: String,
    /// Whether the cubin came from the disk cache.
    pub(crate) cached: bool,
    /// Per-kernel times when [`GpuTuning::profile`] is set (each launch then waits for its
    /// kernel).
    pub(crate) profile: Option<Profile>,
    /// The GEMV shape the module was compiled with.
    pub(crate) gemv_shape: GemvShape,
    /// Launch with programmatic dependent launch (compute capability 9.0 and newer, unless
    /// [`GpuTuning::pdl`] is off): see `PDL_BEGIN` in kernels/common.cuh.
    pdl: bool,
}

/// Wall time per kernel (launch to completion, so including launch cost), for finding where
/// a step's time goes: `HOIST_PROFILE=1` prints the table when the model is dropped. Each
/// launch synchronizes, so profiled runs are slower than real ones.
#[derive(Default)]
pub(crate) struct Profile {
    entries: std::cell::RefCell<Vec<(String, f64, u64)>>,
}

impl Profile {
    /// Adds `seconds` to `name`.
    pub(crate) fn add(&self, name: &str, seconds: f64) {
        let mut e = self.entries.borrow_mut();
        match e.iter_mut().find(|(n, _, _)| n == name) {
            Some(entry) => {
                entry.1 += seconds;
                entry.2 += 1;
            }
            None => e.push((name.to_string(), seconds, 1)),
        }
    }

    /// The table, longest first.
    pub(crate) fn report(&self) -> String {
        let mut e = self.entries.borrow().clone();
        e.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = e.iter().map(|x| x.1).sum();
        let mut out = format!(
            "{:<24} {:>10} {:>8} {:>10} {:>6}\n",
            "kernel", "ms", "calls", "us/call", "%"
        );
        for (name, s, n) in e {
            out += &format!(
                "{name:<24} {:>10.2} {n:>8} {:>10.1} {:>6.1}\n",
                s * 1e3,
                s * 1e6 / n as f64,
                100.0 * s / total.max(1e-12)
            );
        }
        out
    }
}

/// Where compiled kernels are cached unless the options say
/// ([`super::GpuOptions::kernel_cache`], overridden by `HOIST_KERNEL_CACHE`): the platform's
/// cache directory, `$XDG_CACHE_HOME/hoist/kernels`, else `$HOME/.cache/hoist/kernels`, else
/// none.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("hoist/kernels"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hoist/kernels"))
}

/// NVRTC's options for `arch` and `shape` (also part of the cache key).
pub(super) fn options(arch: &str, shape: GemvShape) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        // Exact division and square roots, no flush-to-zero (NVRTC's defaults, said here
        // because the kernels rely on them): results must match the f32 reference within 1e-4.
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--ftz=false".to_string(),
    ];
    o.extend(super::kernels::defines());
    o.extend(shape.defines());
    o
}

/// Compiles the kernels for `arch` into a cubin.
fn compile(arch: &str, shape: GemvShape) -> Result<Vec<u8>, GpuError> {
    compile_source(arch, &main_source(), &options(arch, shape))
}

/// Compiles `main` (which includes files of [`FILES`] by name) with `options` into a cubin.
fn compile_source(arch: &str, main: &str, options: &[String]) -> Result<Vec<u8>, GpuError> {
    let program = Program {
        name: "hoist_kernels.cu",
        source: main,
        // Every file is an NVRTC header, found by its include name: no include path on disk.
        headers: &FILES,
    };
    hoist_cuda::compile_cubin(&program, options).map_err(|e| match e {
        CudaError::Compile { log, .. } => GpuError::Compile {
            arch: arch.to_string(),
            log,
        },
        e => e.into(),
    })
}

/// Where the cubin of (`arch`, `shape`, these sources) is cached in `dir`. The key needs no
/// NVRTC (a warm start does not load it).
fn cache_file(dir: &Path, arch: &str, shape: GemvShape) -> PathBuf {
    let key = cache_key(&options(arch, shape), &main_source(), &FILES);
    dir.join(format!("hoist-{arch}-{key:032x}.cubin"))
}

/// Hash of what the cubin depends on: the NVRTC options (architecture, shared constants, GEMV
/// shape), the main source and every file's name and contents (each length-prefixed, so that
/// no two inputs run together).
fn cache_key(options: &[String], main: &str, files: &[(&str, &str)]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut part = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    for o in options {
        part(o);
    }
    part(main);
    for (name, body) in files {
        part(name);
        part(body);
    }
    h.digest128()
}

/// The cubin for `arch`, from `cache` when present (and `read_cache`), else compiled and stored
/// there. Returns whether it came from the cache.
fn cubin_for(
    arch: &str,
    shape: GemvShape,
    cache: Option<&Path>,
    read_cache: bool,
) -> Result<(Vec<u8>, bool), GpuError> {
    let file = cache.map(|d| cache_file(d, arch, shape));
    if let (Some(f), true) = (&file, read_cache) {
        if let Ok(bytes) = std::fs::read(f) {
            if bytes.len() > 16 && bytes[..4] == *b"\x7fELF" {
                return Ok((bytes, true));
            }
        }
    }
    let (major, minor) = hoist_cuda::nvrtc_version()?;
    tracing::info!("compiling GPU kernels for {arch} with NVRTC {major}.{minor}");
    let bytes = compile(arch, shape)?;
    if let Some(f) = &file {
        // Best effort: a read-only cache costs a compile per start, not a failure.
        if let Err(e) = store(f, &bytes) {
            tracing::warn!("cannot cache compiled kernels: {e}");
        }
    }
    Ok((bytes, false))
}

/// Writes `bytes` to `path` atomically (temporary file, then rename), so that concurrent
/// starts never read half a file.
fn store(path: &Path, bytes: &[u8]) -> Result<(), GpuError> {
    let err = |source| GpuError::Cache {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Unique per process and call: threads of one process may store the same file at once.
    static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

impl Kernels {
    /// Loads the kernels for `gpu`, compiling them if `cache` has none for its architecture,
    /// with `tuning`'s GEMV shape, profiling and programmatic dependent launch.
    pub(crate) fn load(
        gpu: &Arc<Gpu>,
        cache: Option<&Path>,
        tuning: &GpuTuning,
    ) -> Result<Kernels, GpuError> {
        let (major, minor) = gpu.compute_capability()?;
        if major < 7 {
            return Err(GpuError::Unsupported(format!(
                "{} has compute capability {major}.{minor}; hoist's kernels need 7.0 (Volta) or newer",
                gpu.name()
            )));
        }
        let arch = format!("sm_{major}{minor}");
        let gemv_shape = tuning.gemv_shape();
        let (bin, mut cached) = cubin_for(&arch, gemv_shape, cache, true)?;
        let load = |bin: &[u8]| Module::load(gpu, bin).map_err(GpuError::from);
        let module = match load(&bin) {
            Ok(m) => m,
            // A damaged cache file (a crash while writing by another tool, a driver that
            // refuses an old image): compile again, which also replaces the file.
            Err(e) if cached => {
                tracing::warn!("cached GPU kernels did not load ({e}); compiling them again");
                cached = false;
                load(&cubin_for(&arch, gemv_shape, cache, false)?.0)?
            }
            Err(e) => return Err(e),
        };
        let get = |name: &str| module.function(name);
        let optin = gpu.attribute(DeviceAttribute::MaxSharedMemoryPerBlockOptin)?;
        // Leave room for the kernel's static shared memory (two 32-float reduction arrays).
        let attention_smem_bytes = (optin.max(48 << 10) as usize).saturating_sub(1024);
        let attention_split = get("attention_split")?;
        module.set_max_dynamic_shared_bytes(attention_split, attention_smem_bytes)?;
        let gemv = get("gemv")?;
        let gemv_swiglu = get("gemv_swiglu")?;
        let gemv_q = get("gemv_q")?;
        let gemv_swiglu_q = get("gemv_swiglu_q")?;
        let gemv_q4t = get("gemv_q4t")?;
        let gemv_swiglu_q4t = get("gemv_swiglu_q4t")?;
        let moe_route = get("moe_route")?;
        let moe_swiglu = get("moe_swiglu")?;
        let moe_down = get("moe_down")?;
        // The tiled GEMVs' static shared memory (their cross-warp sums) is up to 3.2 KiB (16
        // warps); the driver refuses a dynamic limit that leaves no room for it.
        let q4t_smem_bytes = attention_smem_bytes.saturating_sub(4096);
        for (f, bytes) in [
            (gemv, attention_smem_bytes),
            (gemv_swiglu, attention_smem_bytes),
            (gemv_q, attention_smem_bytes),
            (gemv_swiglu_q, attention_smem_bytes),
            (moe_route, attention_smem_bytes),
            (moe_swiglu, attention_smem_bytes),
            (moe_down, attention_smem_bytes),
            (gemv_q4t, q4t_smem_bytes),
            (gemv_swiglu_q4t, q4t_smem_bytes),
        ] {
            // Quantized GEMVs stage the input vector in dynamic shared memory, over 48 KiB for
            // rows of 35k+ values.
            module.set_max_dynamic_shared_bytes(f, bytes)?;
        }
        Ok(Kernels {
            convert: get("convert")?,
            round_cast: get("round_cast")?,
            embed: get("embed")?,
            rms_norm: get("rms_norm")?,
            add_bias: get("add_bias")?,
            swiglu: get("swiglu")?,
            rope_store: get("rope_store")?,
            attention_split,
            causal_softmax: get("causal_softmax")?,
            argmax_next: get("argmax_next")?,
            gemv,
            gemv_swiglu,
            gemv_q,
            gemv_swiglu_q,
            gemv_q4t,
            gemv_swiglu_q4t,
            q4t_stage_cols: get("q4t_stage_cols")?,
            gemv_q4t_cols: get("gemv_q4t_cols")?,
            q4_tile_repack: get("q4_tile_repack")?,
            q4_tile_dequant: get("q4_tile_dequant")?,
            moe_route,
            moe_swiglu,
            moe_down,
            moe_combine: get("moe_combine")?,
            moe_gather: get("moe_gather")?,
            moe_scatter: get("moe_scatter")?,
            module,
            tensor_cores: major >= 8,
            sm_count: gpu.attribute(DeviceAttribute::MultiprocessorCount)?.max(1) as u32,
            q4t_smem_bytes,
            attention_smem_bytes,
            arch,
            cached,
            profile: tuning.profile.then(Profile::default),
            gemv_shape,
            pdl: major >= 9 && tuning.pdl,
        })
    }

    /// How many blocks of `f` with `threads` threads and `smem_bytes` of dynamic shared memory
    /// the whole GPU holds at once (at least one per multiprocessor).
    pub(crate) fn resident_blocks(
        &self,
        f: Function,
        threads: u32,
        smem_bytes: u32,
    ) -> Result<u32, GpuError> {
        let per_sm = self.module.max_active_blocks(f, threads, smem_bytes)?;
        Ok(self.sm_count * per_sm.max(1))
    }

    /// Launches `f` on `stream`, with programmatic dependent launch unless it is off. `args`
    /// holds one pointer per kernel parameter, each to a value of exactly the parameter's C
    /// type (u64 for addresses, i32 for `int`, f32 for `float`).
    ///
    /// # Safety
    /// As for [`Module::launch`]: `args` must match the kernel's parameter list, and every
    /// device address in it must be live and large enough for what the kernel touches with
    /// the given counts.
    pub(crate) unsafe fn launch(
        &self,
        f: Function,
        grid: (u32, u32),
        block: u32,
        smem_bytes: u32,
        stream: &Stream,
        args: &mut [*mut c_void],
    ) -> Result<(), GpuError> {
        // SAFETY: forwarded contract.
        unsafe { self.launch3(f, (grid.0, grid.1, 1), block, smem_bytes, stream, args) }
    }

    /// [`Kernels::launch`] with a three-dimensional grid.
    ///
    /// # Safety
    /// As for [`Kernels::launch`].
    pub(crate) unsafe fn launch3(
        &self,
        f: Function,
        grid: (u32, u32, u32),
        block: u32,
        smem_bytes: u32,
        stream: &Stream,
        args: &mut [*mut c_void],
    ) -> Result<(), GpuError> {
        let started = self.profile.as_ref().map(|_| std::time::Instant::now());
        let config = LaunchConfig {
            grid,
            block: (block, 1, 1),
            shared_mem_bytes: smem_bytes,
            programmatic_dependent_launch: self.pdl,
        };
        // SAFETY: the caller's contract, which is `Module::launch`'s.
        let launched = unsafe { self.module.launch(f, &config, stream, args) };
        if let (Some(p), Some(t)) = (&self.profile, started) {
            stream.synchronize()?;
            p.add(self.name_of(f), t.elapsed().as_secs_f64());
        }
        Ok(launched?)
    }

    fn name_of(&self, f: Function) -> &'static str {
        let named = [
            (self.convert, "convert"),
            (self.round_cast, "round_cast"),
            (self.embed, "embed"),
            (self.rms_norm, "rms_norm"),
            (self.add_bias, "add_bias"),
            (self.swiglu, "swiglu"),
            (self.rope_store, "rope_store"),
            (self.attention_split, "attention_split"),
            (self.causal_softmax, "causal_softmax"),
            (self.argmax_next, "argmax_next"),
            (self.gemv, "gemv"),
            (self.gemv_swiglu, "gemv_swiglu"),
            (self.gemv_q, "gemv_q"),
            (self.gemv_swiglu_q, "gemv_swiglu_q"),
            (self.gemv_q4t, "gemv_q4t"),
            (self.gemv_swiglu_q4t, "gemv_swiglu_q4t"),
            (self.q4t_stage_cols, "q4t_stage_cols"),
            (self.gemv_q4t_cols, "gemv_q4t_cols"),
            (self.q4_tile_repack, "q4_tile_repack"),
            (self.q4_tile_dequant, "q4_tile_dequant"),
            (self.moe_route, "moe_route"),
            (self.moe_swiglu, "moe_swiglu"),
            (self.moe_down, "moe_down"),
            (self.moe_combine, "moe_combine"),
            (self.moe_gather, "moe_gather"),
            (self.moe_scatter, "moe_scatter"),
        ];
        named.iter().find(|(g, _)| *g == f).map_or("?", |(_, n)| n)
    }
}

impl Drop for Kernels {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            eprintln!(
                "HOIST_PROFILE: time per kernel (each launch synchronized)\n{}",
                p.report()
            );
        }
        // The module unloads itself after this; no launch is pending past the owners'
        // synchronization.
    }
}

/// Builds a kernel argument list: `args![a, b, c]` is `[&a as *const _ as *mut c_void, …]`.
/// Each value must already have the parameter's exact C type.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        [$((&$v) as *const _ as *mut std::ffi::c_void),*]
    };
}
pub(crate) use args;

#[cfg(test)]
mod tests {
    /// The kernels compile for the architectures hoist meets (no GPU needed, only NVRTC; CI
    /// installs it from the `nvidia-cuda-nvrtc` wheel and sets `HOIST_REQUIRE_NVRTC`, so that a
    /// kernel that does not compile fails there, not first on a user's GPU).
    #[test]
    fn kernels_compile_for_common_architectures() {
        if !nvrtc_present() {
            return;
        }
        for arch in ["sm_80", "sm_89", "sm_90"] {
            let cubin = super::compile(arch, super::GemvShape::DEFAULT)
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert_eq!(&cubin[..4], b"\x7fELF", "{arch}: not a cubin");
        }
    }

    /// Whether NVRTC can be loaded; when not, the caller skips (unless CI requires it).
    fn nvrtc_present() -> bool {
        if hoist_cuda::nvrtc_available().is_ok() {
            return true;
        }
        assert!(
            std::env::var_os("HOIST_REQUIRE_NVRTC").is_none(),
            "HOIST_REQUIRE_NVRTC is set but libnvrtc cannot be loaded (LD_LIBRARY_PATH?)"
        );
        eprintln!("skipped: NVRTC (libnvrtc.so) not found; `pip install nvidia-cuda-nvrtc` and put its lib/ on LD_LIBRARY_PATH to run this");
        false
    }

    /// Each op family includes what it uses: it compiles as a program of its own.
    #[test]
    fn each_op_family_compiles_alone() {
        if !nvrtc_present() {
            return;
        }
        let options = super::options("sm_90", super::GemvShape::DEFAULT);
        for (name, _) in super::FILES.iter().filter(|(n, _)| n.ends_with(".cu")) {
            super::compile_source("sm_90", &format!("#include \"{name}\"\n"), &options)
                .unwrap_or_else(|e| panic!("{name} alone: {e}"));
        }
    }

    /// A constant the host shares but does not pass stops the compile, naming it.
    #[test]
    fn a_missing_shared_constant_is_a_compile_error() {
        if !nvrtc_present() {
            return;
        }
        let options = super::options("sm_90", super::GemvShape::DEFAULT);
        let main = super::main_source();
        for dropped in options.iter().filter(|o| o.starts_with("-D")) {
            let name = dropped[2..].split('=').next().unwrap_or_default();
            let fewer: Vec<String> = options.iter().filter(|o| *o != dropped).cloned().collect();
            match super::compile_source("sm_90", &main, &fewer) {
                Ok(_) => panic!("compiled without {dropped}"),
                Err(e) => assert!(
                    e.to_string()
                        .contains(&format!("{name} must be passed by hoist")),
                    "without {dropped}: {e}"
                ),
            }
        }
    }

    /// The cache key changes with any option and with any file's name or contents.
    #[test]
    fn cache_key_covers_every_file_and_option() {
        let options = super::options("sm_90", super::GemvShape::DEFAULT);
        let main = super::main_source();
        let files = super::FILES.to_vec();
        let key = super::cache_key(&options, &main, &files);
        let mut keys = std::collections::HashSet::from([key]);
        for i in 0..files.len() {
            let mut changed = files.clone();
            let body = format!("{}\n", files[i].1);
            changed[i].1 = &body;
            assert!(
                keys.insert(super::cache_key(&options, &main, &changed)),
                "{}",
                files[i].0
            );
            let mut renamed = files.clone();
            let name = format!("x{}", files[i].0);
            renamed[i].0 = &name;
            assert!(
                keys.insert(super::cache_key(&options, &main, &renamed)),
                "{}",
                files[i].0
            );
        }
        for i in 0..options.len() {
            let mut changed = options.clone();
            changed[i].push('0');
            assert!(
                keys.insert(super::cache_key(&changed, &main, &files)),
                "{}",
                options[i]
            );
        }
        assert!(keys.insert(super::cache_key(&options, &format!("{main}\n"), &files)));
    }

    #[test]
    fn cache_store_is_atomic_and_files_are_keyed_by_arch_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let shape = super::GemvShape::DEFAULT;
        let f = super::cache_file(dir.path(), "sm_90", shape);
        super::store(&f, b"\x7fELF0123456789abcdef").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"\x7fELF0123456789abcdef");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A hit needs neither NVRTC nor a GPU.
        let (bytes, cached) = super::cubin_for("sm_90", shape, Some(dir.path()), true).unwrap();
        assert!(cached);
        assert_eq!(bytes, b"\x7fELF0123456789abcdef");
        // Another architecture or GEMV shape is another file.
        assert_ne!(super::cache_file(dir.path(), "sm_80", shape), f);
        let other = super::GemvShape { warps: 8, ..shape };
        assert_ne!(super::cache_file(dir.path(), "sm_90", other), f);
        // The quantized GEMVs' warps are the host's: the same cubin.
        let host_only = super::GemvShape {
            quantized_warps: 8,
            ..shape
        };
        assert_eq!(super::cache_file(dir.path(), "sm_90", host_only), f);
    }
}
