//! `hoist._hoist`: the native half of the `hoist` Python package.
//!
//! The Python half (`hoist/__init__.py`) turns paths, devices and frameworks into calls on
//! [`Table`], and the [`Tensor`]s that come back into torch tensors or numpy arrays through
//! DLPack ([`dlpack`]). Loads run with the GIL released; errors become the exception classes
//! of `hoist._errors` with the Rust message (file and tensor named); a panic becomes a
//! `HoistError` instead of taking the interpreter down. [`model::Model`] generates text through
//! the model host, `hoist-engine`.

mod dlpack;
mod errors;
#[cfg(feature = "cuda")]
mod gpu;
mod model;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use hoist_format::{DType, FileFormat, MetaValue, TensorInfo, TensorTable};
use hoist_io::{
    Backend, CachePolicy, EngineConfig, HostTensor, PlanConfig, Shard, ShardConfig, ShardPlan,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use dlpack::{code, DLDataType, DLDevice, Export};
use errors::Error;

/// Where loaded tensors go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    Cpu,
    Cuda(u32),
}

impl Device {
    fn from_arg(cuda: Option<u32>) -> Device {
        cuda.map_or(Device::Cpu, Device::Cuda)
    }
}

/// How a tensor is exported through DLPack: its DLPack type and shape, and whether the bytes
/// are handed over raw (`uint8`) because no DLPack type matches.
fn export_type(info: &TensorInfo, bf16_as_u16: bool) -> (DLDataType, Vec<i64>, bool) {
    let t = |c: u8, bits: u8| DLDataType {
        code: c,
        bits,
        lanes: 1,
    };
    let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
    let plain = |d: DType| -> Option<DLDataType> {
        Some(match d {
            DType::Bool => t(code::BOOL, 8),
            DType::U8 => t(code::UINT, 8),
            DType::I8 => t(code::INT, 8),
            DType::U16 => t(code::UINT, 16),
            DType::I16 => t(code::INT, 16),
            DType::U32 => t(code::UINT, 32),
            DType::I32 => t(code::INT, 32),
            DType::U64 => t(code::UINT, 64),
            DType::I64 => t(code::INT, 64),
            DType::F16 => t(code::FLOAT, 16),
            DType::F32 => t(code::FLOAT, 32),
            DType::F64 => t(code::FLOAT, 64),
            DType::BF16 if bf16_as_u16 => t(code::UINT, 16),
            DType::BF16 => t(code::BFLOAT, 16),
            DType::C64 => t(code::COMPLEX, 64),
            // 8-bit floats go out as uint8 of the same shape; the Python side views them as
            // the framework's float8 type (DLPack's float8 codes are too new for most
            // consumers).
            DType::F8E4M3 | DType::F8E5M2 | DType::F8E8M0 => t(code::UINT, 8),
            _ => return None,
        })
    };
    let ggml_plain = |g: hoist_format::GgmlType| -> Option<DType> {
        Some(match g.name() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "I8" => DType::I8,
            "I16" => DType::I16,
            "I32" => DType::I32,
            "I64" => DType::I64,
            _ => return None,
        })
    };
    let dt = match info.dtype {
        DType::Ggml(g) => ggml_plain(g).and_then(plain),
        d => plain(d),
    };
    if let Some(dt) = dt {
        return (dt, shape, false);
    }
    // Raw bytes: (outer dims..., bytes per innermost row) when rows are whole bytes, as gguf-py
    // shapes quantized tensors; else one flat run of bytes.
    let len = info.len as i64;
    let outer: i64 = shape.iter().rev().skip(1).product();
    let byte_shape = if !shape.is_empty() && outer > 0 && len % outer == 0 {
        let mut s = shape[..shape.len() - 1].to_vec();
        s.push(len / outer);
        s
    } else {
        vec![len]
    };
    (t(code::UINT, 8), byte_shape, true)
}

/// One loaded tensor, ready to be handed to torch or numpy through DLPack.
///
/// Holds the memory (shared with the other tensors of its read region) until the last
/// consumer of it is gone.
#[pyclass(frozen, module = "hoist._hoist")]
struct Tensor {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    nbytes: u64,
    ggml_type: Option<u32>,
    raw: bool,
    export: Export,
}

impl Tensor {
    fn from_host(t: &HostTensor, bf16_as_u16: bool) -> Tensor {
        let (dtype, shape, raw) = export_type(&t.info, bf16_as_u16);
        // The host buffer is a private writable mapping, so consumers may write through the
        // exported address (torch in-place ops); Rust never reads it after the hand-over.
        let (data, keepalive): (usize, Option<dlpack::Keepalive>) = match t.storage() {
            Some((buf, off)) if t.info.len > 0 => (
                buf.as_slice().as_ptr() as usize + off,
                Some(buf.clone() as dlpack::Keepalive),
            ),
            _ => (dlpack::empty_data(), None),
        };
        Tensor {
            name: t.info.name.clone(),
            dtype: t.info.dtype.name(),
            shape: t.info.shape.clone(),
            nbytes: t.info.len,
            ggml_type: match t.info.dtype {
                DType::Ggml(g) => Some(g.0),
                _ => None,
            },
            raw,
            export: Export {
                data,
                device: DLDevice {
                    device_type: dlpack::KDL_CPU,
                    device_id: 0,
                },
                dtype,
                shape,
                keepalive,
            },
        }
    }
}

#[pymethods]
impl Tensor {
    /// Tensor name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Element type as the checkpoint names it (`"BF16"`, `"F8_E4M3"`, `"Q4_K"`).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype
    }

    /// Logical shape, outermost first.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }

    /// Shape of the exported array (differs from `shape` for raw-byte tensors).
    #[getter]
    fn export_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.export.shape)
    }

    /// Byte length.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.nbytes
    }

    /// The ggml type id for tensors from GGUF files, else None.
    #[getter]
    fn ggml_type(&self) -> Option<u32> {
        self.ggml_type
    }

    /// Whether the tensor is exported as raw bytes (uint8): quantized ggml blocks, packed
    /// sub-byte floats.
    #[getter]
    fn raw(&self) -> bool {
        self.raw
    }

    /// DLPack device: `(1, 0)` for CPU, `(2, N)` for cuda:N.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (self.export.device.device_type, self.export.device.device_id)
    }

    /// A DLPack capsule of the tensor (no copy). The data is complete when this returns, so
    /// `stream` needs no synchronization and is ignored.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = stream;
        if let Some(d) = dl_device {
            if d != self.__dlpack_device__() {
                return Err(pyo3::exceptions::PyBufferError::new_err(format!(
                    "tensor '{}' is on DLPack device {:?}, asked for {:?}; hoist does not copy across devices here",
                    self.name,
                    self.__dlpack_device__(),
                    d
                )));
            }
        }
        if copy == Some(true) {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "hoist exports without copying (copy=True is not supported)",
            ));
        }
        let versioned = max_version.is_some_and(|(major, _)| major >= 1);
        dlpack::to_capsule(py, &self.export, versioned)
    }

    fn __repr__(&self) -> String {
        format!(
            "hoist._hoist.Tensor(name={:?}, dtype={}, shape={:?})",
            self.name, self.dtype, self.shape
        )
    }
}

fn backend_of(name: &str) -> PyResult<Backend> {
    Backend::ALL
        .into_iter()
        .find(|b| b.name() == name)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown backend {name:?}; use one of auto, uring, pread, mmap"
            ))
        })
}

fn cache_of(name: &str) -> PyResult<CachePolicy> {
    CachePolicy::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown cache policy {name:?}; use one of auto, keep, bypass"
        ))
    })
}

fn engine_config(backend: &str, threads: Option<usize>, cache: &str) -> PyResult<EngineConfig> {
    let mut c = EngineConfig {
        backend: backend_of(backend)?,
        cache: cache_of(cache)?,
        ..EngineConfig::default()
    };
    if let Some(n) = threads {
        if n == 0 || n > hoist_io::engine::MAX_THREADS {
            return Err(PyValueError::new_err(format!(
                "threads must be 1..={}",
                hoist_io::engine::MAX_THREADS
            )));
        }
        c.threads = n;
    }
    Ok(c)
}

/// Runs `f` catching panics, so that a bug becomes an exception, not a dead interpreter.
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::internal_panic(p)),
    }
}

fn meta_to_py<'py>(py: Python<'py>, v: &MetaValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        MetaValue::U64(x) => x.into_pyobject(py)?.into_any(),
        MetaValue::I64(x) => x.into_pyobject(py)?.into_any(),
        MetaValue::F64(x) => x.into_pyobject(py)?.into_any(),
        MetaValue::Bool(x) => pyo3::types::PyBool::new(py, *x).to_owned().into_any(),
        MetaValue::String(s) => s.into_pyobject(py)?.into_any(),
        MetaValue::Array(a) => {
            let items = a
                .iter()
                .map(|x| meta_to_py(py, x))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
    })
}

/// Messages from a streaming load's thread.
enum Msg {
    Tensor(HostTensor),
    Done(Result<(), Error>),
}

/// A streaming load: iterating yields each tensor as soon as its bytes are in place.
#[pyclass(module = "hoist._hoist")]
struct Stream {
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
    bf16_as_u16: bool,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Tensor>> {
        // try_lock: blocking here with the GIL held while another thread waits (without the
        // GIL) inside this iterator would deadlock.
        let mut guard = self.rx.try_lock().map_err(|_| {
            Error::Usage("this iterator is already being advanced by another thread".into())
                .into_py(py)
        })?;
        let Some(rx) = guard.take() else {
            return Ok(None);
        };
        // Wait without the GIL: the loader thread never needs it.
        let (msg, rx) = py.detach(move || {
            let m = rx.recv();
            (m, rx)
        });
        *guard = Some(rx);
        match msg {
            Ok(Msg::Tensor(t)) => Ok(Some(Tensor::from_host(&t, self.bf16_as_u16))),
            Ok(Msg::Done(r)) => {
                *guard = None;
                r.map(|()| None).map_err(|e| e.into_py(py))
            }
            Err(_) => {
                *guard = None;
                Err(Error::Internal("the loader thread ended without a result".into()).into_py(py))
            }
        }
    }
}

/// A parsed checkpoint: one file, a list of safetensors files, an index, or a directory.
/// Only headers have been read.
#[pyclass(frozen, module = "hoist._hoist")]
struct Table {
    table: Arc<TensorTable>,
}

#[pymethods]
impl Table {
    /// Opens `paths`: one path (file, index, or directory) or several safetensors files.
    #[new]
    fn new(py: Python<'_>, paths: Vec<PathBuf>) -> PyResult<Table> {
        let r = py.detach(|| {
            guarded(|| {
                let table = match paths.as_slice() {
                    [] => return Err(Error::Usage("no path given".into())),
                    [one] => TensorTable::open(one)?,
                    many => {
                        let root = many[0].parent().map(PathBuf::from).unwrap_or_default();
                        hoist_format::open_files(root, many)?
                    }
                };
                Ok(Table {
                    table: Arc::new(table),
                })
            })
        });
        r.map_err(|e| e.into_py(py))
    }

    /// Tensor names in file order.
    fn names(&self) -> Vec<String> {
        self.table.tensors.iter().map(|t| t.name.clone()).collect()
    }

    fn __len__(&self) -> usize {
        self.table.tensors.len()
    }

    /// Per tensor, in file order: `(name, dtype, shape, nbytes, file, offset, ggml_type)`.
    #[allow(clippy::type_complexity)]
    fn infos(
        &self,
    ) -> Vec<(
        String,
        &'static str,
        Vec<u64>,
        u64,
        PathBuf,
        u64,
        Option<u32>,
    )> {
        self.table
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.dtype.name(),
                    t.shape.clone(),
                    t.len,
                    self.table.files[t.file].path.clone(),
                    t.offset,
                    match t.dtype {
                        DType::Ggml(g) => Some(g.0),
                        _ => None,
                    },
                )
            })
            .collect()
    }

    /// Tensors listed but not loadable (unknown ggml types): `(name, reason)`.
    fn skipped(&self) -> Vec<(String, String)> {
        self.table
            .skipped
            .iter()
            .map(|s| (s.name.clone(), s.reason.clone()))
            .collect()
    }

    /// The files, in table order.
    fn files(&self) -> Vec<PathBuf> {
        self.table.files.iter().map(|f| f.path.clone()).collect()
    }

    /// `"safetensors"` or `"gguf"` (of the first file).
    fn format(&self) -> &'static str {
        match self.table.files.first().map(|f| f.format) {
            Some(FileFormat::Gguf { .. }) => "gguf",
            _ => "safetensors",
        }
    }

    /// Format metadata merged across files: strings for safetensors' `__metadata__`, typed
    /// values for GGUF key/values.
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let m: &BTreeMap<String, MetaValue> = &self.table.metadata;
        for (k, v) in m {
            d.set_item(k, meta_to_py(py, v)?)?;
        }
        Ok(d)
    }

    /// Indices (file order) of the tensors matching any of `globs`; all for an empty list.
    fn select(&self, py: Python<'_>, globs: Vec<String>) -> PyResult<Vec<usize>> {
        self.table
            .select(&globs)
            .map_err(|e| Error::from(e).into_py(py))
    }

    /// Indices of the named tensors; a name not in the checkpoint is a `KeyError`-like
    /// `SelectionError`.
    fn indices(&self, py: Python<'_>, names: Vec<String>) -> PyResult<Vec<usize>> {
        names
            .iter()
            .map(|n| {
                self.table.index_of(n).ok_or_else(|| {
                    Error::Selection(format!(
                        "{}: no tensor named '{n}'",
                        self.table.root.display()
                    ))
                    .into_py(py)
                })
            })
            .collect()
    }

    /// Loads the tensors at `indices` onto `cuda` (a GPU ordinal) or host memory (None), with
    /// the GIL released; returns them in file order.
    ///
    /// `shard` (`"DIM:RANK/WORLD"`) loads only that tensor-parallel rank's slice of each
    /// tensor (host memory only); `shard_only` (globs) names the tensors to slice, the others
    /// load whole.
    #[pyo3(signature = (indices, cuda=None, bf16_as_u16=false, backend="auto", threads=None, cache="auto", shard=None, shard_only=None))]
    // The Python keyword arguments, one parameter each.
    #[allow(clippy::too_many_arguments)]
    fn load(
        &self,
        py: Python<'_>,
        indices: Vec<usize>,
        cuda: Option<u32>,
        bf16_as_u16: bool,
        backend: &str,
        threads: Option<usize>,
        cache: &str,
        shard: Option<&str>,
        shard_only: Option<Vec<String>>,
    ) -> PyResult<Vec<Tensor>> {
        let engine = engine_config(backend, threads, cache)?;
        let device = Device::from_arg(cuda);
        let table = self.table.clone();
        if let Some(spec) = shard {
            let shard: Shard = spec.parse().map_err(|e| Error::from(e).into_py(py))?;
            if let Some(n) = cuda {
                return Err(Error::Device(format!(
                    "cuda:{n}: sharded loading onto the GPU is not supported yet; load the shard with device=\"cpu\" and move the tensors"
                ))
                .into_py(py));
            }
            let r = py.detach(move || {
                guarded(|| {
                    let only = shard_only.map(|g| table.select(&g)).transpose()?;
                    let plan = ShardPlan::new(
                        &table,
                        &indices,
                        shard,
                        only.as_deref(),
                        ShardConfig::for_chunk_bytes(PlanConfig::default().chunk_bytes),
                    )?;
                    let (mut tensors, _report) =
                        hoist_io::load_host_sharded(&table, &plan, PlanConfig::default(), &engine)?;
                    tensors.sort_by_key(|t| table.index_of(&t.info.name));
                    Ok(tensors
                        .iter()
                        .map(|t| Tensor::from_host(t, bf16_as_u16))
                        .collect())
                })
            });
            return r.map_err(|e| e.into_py(py));
        }
        let r = py.detach(move || {
            guarded(|| match device {
                Device::Cpu => {
                    let (mut tensors, _report) = hoist_io::load_host(
                        &table,
                        &indices,
                        PlanConfig::default(),
                        &engine,
                        None,
                    )?;
                    // File order (the host sink lists zero-size tensors last).
                    tensors.sort_by_key(|t| table.index_of(&t.info.name));
                    Ok(tensors
                        .iter()
                        .map(|t| Tensor::from_host(t, bf16_as_u16))
                        .collect())
                }
                Device::Cuda(n) => gpu_load(&table, &indices, &engine, n, bf16_as_u16),
            })
        });
        r.map_err(|e| e.into_py(py))
    }

    /// Starts loading the tensors at `indices` on a background thread; the returned iterator
    /// yields each as it completes.
    #[pyo3(signature = (indices, cuda=None, bf16_as_u16=false, backend="auto", threads=None, cache="auto"))]
    // The Python keyword arguments, one parameter each.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        py: Python<'_>,
        indices: Vec<usize>,
        cuda: Option<u32>,
        bf16_as_u16: bool,
        backend: &str,
        threads: Option<usize>,
        cache: &str,
    ) -> PyResult<Stream> {
        let engine = engine_config(backend, threads, cache)?;
        if let Some(n) = cuda {
            // Checked up front so that the error comes from this call, not the first item.
            gpu_check(n).map_err(|e| e.into_py(py))?;
            return Err(Error::Device(format!(
                "cuda:{n}: streaming onto the GPU is not supported yet; use load_file(device=\"cuda:{n}\") or stream to cpu"
            ))
            .into_py(py));
        }
        let table = self.table.clone();
        let (tx, rx) = mpsc::channel::<Msg>();
        let spawn = std::thread::Builder::new()
            .name("hoist-stream".into())
            .spawn(move || {
                let tx_tensors = Mutex::new(tx.clone());
                let on_tensor = |t: &HostTensor| {
                    if let Ok(tx) = tx_tensors.lock() {
                        // A closed receiver (iteration abandoned) is not an error: finish quietly.
                        let _ = tx.send(Msg::Tensor(t.clone()));
                    }
                };
                let r = guarded(|| {
                    hoist_io::load_host(
                        &table,
                        &indices,
                        PlanConfig::default(),
                        &engine,
                        Some(&on_tensor),
                    )?;
                    Ok(())
                });
                let _ = tx.send(Msg::Done(r));
            });
        if let Err(e) = spawn {
            return Err(
                Error::Internal(format!("cannot start the loader thread: {e}")).into_py(py),
            );
        }
        Ok(Stream {
            rx: Mutex::new(Some(rx)),
            bf16_as_u16,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "hoist._hoist.Table(root={:?}, files={}, tensors={})",
            self.table.root,
            self.table.files.len(),
            self.table.tensors.len()
        )
    }
}

/// Checks that cuda:`n` can be used, without touching CUDA libraries that may be absent.
fn gpu_check(n: u32) -> Result<(), Error> {
    #[cfg(feature = "cuda")]
    {
        gpu::check(n)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(Error::Device(format!(
            "cuda:{n}: this build of hoist has no GPU support (built without the `cuda` feature)"
        )))
    }
}

fn gpu_load(
    table: &TensorTable,
    indices: &[usize],
    engine: &EngineConfig,
    n: u32,
    bf16_as_u16: bool,
) -> Result<Vec<Tensor>, Error> {
    #[cfg(feature = "cuda")]
    {
        gpu::load(table, indices, engine, n, bf16_as_u16)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (table, indices, engine, bf16_as_u16);
        gpu_check(n).map(|()| Vec::new())
    }
}

/// Whether this build can load onto GPUs, and if not why: `(ok, reason)`.
#[pyfunction]
fn cuda_status(py: Python<'_>, ordinal: u32) -> (bool, String) {
    py.detach(|| match guarded(|| gpu_check(ordinal)) {
        Ok(()) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    })
}

#[pymodule]
fn _hoist(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Table>()?;
    m.add_class::<Tensor>()?;
    m.add_class::<Stream>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Generation>()?;
    m.add_function(wrap_pyfunction!(cuda_status, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("GPU_SUPPORT", cfg!(feature = "cuda"))?;
    Ok(())
}
