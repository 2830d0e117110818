//! Rust errors as Python exceptions.
//!
//! The exception classes live in `hoist/_errors.py` (so that they can also derive from the
//! matching builtin: `OSError`, `ValueError`, ...); they are looked up once and raised with the
//! Rust message, which names the file and, where known, the tensor.

use hoist_format::FormatError;
use hoist_io::{IoError, LoadError, ShardError};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// An error on its way to Python; the variant picks the exception class.
#[derive(Debug)]
pub enum Error {
    /// The checkpoint is malformed or inconsistent (`CheckpointError`).
    Checkpoint(String),
    /// Reading failed, a file is missing, memory could not be had (`HoistIOError`).
    Io(String),
    /// The device cannot be used (`DeviceError`).
    Device(String),
    /// A filter or name matched nothing (`SelectionError`).
    Selection(String),
    /// A bad argument (`ValueError`).
    Usage(String),
    /// A bug in hoist (`HoistError`).
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Checkpoint(m)
            | Error::Io(m)
            | Error::Device(m)
            | Error::Selection(m)
            | Error::Usage(m)
            | Error::Internal(m) => f.write_str(m),
        }
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Error {
        let msg = e.to_string();
        match e {
            FormatError::Io { .. } => Error::Io(msg),
            FormatError::Selection { .. } => Error::Selection(msg),
            _ => Error::Checkpoint(msg),
        }
    }
}

impl From<IoError> for Error {
    fn from(e: IoError) -> Error {
        let msg = e.to_string();
        match e {
            // The file is shorter than its header says: a bad checkpoint.
            IoError::Truncated { .. } => Error::Checkpoint(msg),
            _ => Error::Io(msg),
        }
    }
}

impl From<LoadError> for Error {
    fn from(e: LoadError) -> Error {
        match e {
            LoadError::Io(e) => e.into(),
            LoadError::Alloc(e) => Error::Io(e.to_string()),
            LoadError::Plan(e) => Error::Internal(e.to_string()),
            LoadError::Shard(e) => (*e).into(),
        }
    }
}

impl From<ShardError> for Error {
    fn from(e: ShardError) -> Error {
        match e {
            ShardError::Filter(e) => e.into(),
            // A tensor whose bytes do not match its shape: the checkpoint is at fault.
            ShardError::Layout { .. } => Error::Checkpoint(e.to_string()),
            // A bad spec, or a split the tensors do not allow: the caller's choice.
            e => Error::Usage(e.to_string()),
        }
    }
}

impl From<hoist_runtime::RuntimeError> for Error {
    fn from(e: hoist_runtime::RuntimeError) -> Error {
        use hoist_runtime::RuntimeError as R;
        match e {
            R::Format(e) => e.into(),
            R::Load(e) => e.into(),
            R::Gpu(e) => Error::Device(e.to_string()),
            e => Error::Checkpoint(e.to_string()),
        }
    }
}

impl From<hoist_engine::EngineError> for Error {
    fn from(e: hoist_engine::EngineError) -> Error {
        use hoist_engine::EngineError as E;
        // The whole chain in one message: the engine's errors say what failed, their sources
        // why.
        let mut msg = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg = format!("{msg}: {c}");
            cause = c.source();
        }
        match e {
            E::Load { source, .. } => match Error::from(*source) {
                Error::Io(_) => Error::Io(msg),
                Error::Device(_) => Error::Device(msg),
                _ => Error::Checkpoint(msg),
            },
            E::NoTokenizerJson { .. }
            | E::NoGgufTokenizer { .. }
            | E::Tokenizer { .. }
            | E::Template { .. } => Error::Checkpoint(msg),
            // Memory for the KV cache could not be had.
            E::KvCache { .. } => Error::Io(msg),
            E::EmptyPrompt
            | E::Prompt { .. }
            | E::PromptTooLong { .. }
            | E::Sampling(_)
            | E::NoTokensAsked
            | E::Parallel { .. }
            | E::PrefixOnTokens => Error::Usage(msg),
            E::Generate { source, .. } | E::Benchmark { source, .. } => match *source {
                hoist_runtime::RuntimeError::Gpu(_) => Error::Device(msg),
                _ => Error::Internal(msg),
            },
            E::Spawn(_) | E::Stopped { .. } | E::SharedStep { .. } => Error::Internal(msg),
        }
    }
}

impl Error {
    /// A caught panic, as an internal error with the panic's message.
    pub fn internal_panic(p: Box<dyn std::any::Any + Send>) -> Error {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Error::Internal(format!(
            "internal error in hoist (please report it): {what}"
        ))
    }

    fn class_name(&self) -> &'static str {
        match self {
            Error::Checkpoint(_) => "CheckpointError",
            Error::Io(_) => "HoistIOError",
            Error::Device(_) => "DeviceError",
            Error::Selection(_) => "SelectionError",
            Error::Usage(_) => "ValueError",
            Error::Internal(_) => "HoistError",
        }
    }

    /// The Python exception for this error.
    pub fn into_py(self, py: Python<'_>) -> PyErr {
        let msg = self.to_string();
        match class(py, self.class_name()) {
            Ok(ty) => PyErr::from_type(ty, msg),
            // hoist._errors could not be imported (a broken install): still raise, with the
            // message.
            Err(_) => PyRuntimeError::new_err(msg),
        }
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        Python::attach(|py| e.into_py(py))
    }
}

fn class<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    if name == "ValueError" {
        return Ok(py.get_type::<pyo3::exceptions::PyValueError>());
    }
    let m = MODULE.get_or_try_init(py, || py.import("hoist._errors").map(|m| m.unbind()))?;
    Ok(m.bind(py).getattr(name)?.cast_into::<PyType>()?)
}
