//! `hoist.Model`: text generation through the model host ([`hoist_engine`]).
//!
//! The engine's owner thread runs the model; these classes only queue requests and wait for
//! their events, with the GIL released while waiting, so other Python threads run meanwhile
//! (and may generate on the same model: requests are served one at a time, in arrival order).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hoist_engine::{
    Completion, Device, Engine, EngineOptions, Event, GenerationStream, Input, Request,
};
use hoist_runtime::chat::Message;
use hoist_runtime::gpu::CachePolicy;
use hoist_runtime::placement::{parse_bytes, Budget, Placement};
use hoist_runtime::sampler::SamplingParams;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::Error;
use crate::guarded;

/// A model loaded for generation; `close()` (or the end of a `with` block) frees it.
#[pyclass(frozen, module = "hoist._hoist")]
pub struct Model {
    /// `None` once closed.
    engine: Mutex<Option<Engine>>,
}

impl Model {
    /// The engine, or the error that says the model was closed.
    fn engine(&self) -> Result<Engine, Error> {
        let guard = self
            .engine
            .lock()
            .map_err(|_| Error::Internal("the model's lock is poisoned".into()))?;
        guard
            .clone()
            .ok_or_else(|| Error::Usage("the model is closed".into()))
    }
}

#[pymethods]
impl Model {
    /// Loads the checkpoint at `path` onto the CPU reference (`cuda` None) or `cuda:N`, with a
    /// KV cache of `context` positions (None: the model's, at most 4096) per session; on a GPU
    /// within `gpu_memory` and `host_memory` (sizes as `hoist run --gpu-memory` takes them;
    /// None: the defaults), streaming the layers that do not fit; up to `parallel` requests
    /// decode together.
    #[new]
    #[pyo3(signature = (path, cuda=None, context=None, raw=false, pool_size=4, gpu_memory=None, host_memory=None, cache="auto", parallel=1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        cuda: Option<u32>,
        context: Option<usize>,
        raw: bool,
        pool_size: usize,
        gpu_memory: Option<String>,
        host_memory: Option<String>,
        cache: &str,
        parallel: usize,
    ) -> PyResult<Model> {
        let cache = CachePolicy::ALL
            .into_iter()
            .find(|p| p.name() == cache)
            .ok_or_else(|| {
                pyo3::exceptions::PyValueError::new_err(format!(
                    "cache={cache:?}: give auto, keep or bypass"
                ))
            })?;
        let size = |name: &str, v: Option<String>| -> PyResult<Option<u64>> {
            v.map(|s| {
                parse_bytes(&s).map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("{name}: {e}")))
            })
            .transpose()
        };
        let placement = Placement::auto(Budget {
            gpu_bytes: size("gpu_memory", gpu_memory)?,
            host_bytes: size("host_memory", host_memory)?,
        });
        let device = cuda.map_or(Device::Cpu, |n| Device::Cuda(n as usize));
        let options = EngineOptions {
            device,
            context,
            pool_size,
            parallel,
            raw,
            cache,
            ..EngineOptions::default()
        };
        let r = py.detach(|| {
            guarded(|| {
                if let Some(n) = cuda {
                    crate::gpu_check(n)?;
                }
                Ok(Engine::load(&path, placement, options)?)
            })
        });
        let engine = r.map_err(|e| e.into_py(py))?;
        Ok(Model {
            engine: Mutex::new(Some(engine)),
        })
    }

    /// Starts a generation: `prompt` (a user message, rendered with the chat template),
    /// `messages` (`(role, content)` pairs) or `tokens`; exactly one of them.
    #[pyo3(signature = (prompt=None, messages=None, tokens=None, max_tokens=256, temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, seed=None, stop=Vec::new(), session=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Option<String>,
        messages: Option<Vec<(String, String)>>,
        tokens: Option<Vec<u32>>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        seed: Option<u64>,
        stop: Vec<String>,
        session: Option<String>,
    ) -> PyResult<Generation> {
        let input = match (prompt, messages, tokens) {
            (Some(p), None, None) => Input::Messages(vec![Message::new("user", p)]),
            (None, Some(m), None) => Input::Messages(
                m.into_iter()
                    .map(|(role, content)| Message::new(role, content))
                    .collect(),
            ),
            (None, None, Some(t)) => Input::Tokens(t),
            _ => {
                return Err(
                    Error::Usage("give exactly one of prompt, messages and tokens".into())
                        .into_py(py),
                )
            }
        };
        let sampling = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty: repeat_penalty,
            seed: seed.unwrap_or_else(hoist_engine::clock_seed),
        };
        let request = Request {
            stop_strings: stop,
            session_key: session,
            ..Request::new(input, sampling, max_tokens)
        };
        let stream = py.detach(|| guarded(|| Ok(self.engine()?.generate(request)?)));
        let stream = stream.map_err(|e| e.into_py(py))?;
        Ok(Generation {
            cancel: stream.cancel_flag(),
            stream: Mutex::new(Some(stream)),
            completion: Mutex::new(None),
        })
    }

    /// Positions of each session's KV cache.
    #[getter]
    fn context(&self, py: Python<'_>) -> PyResult<usize> {
        let engine = self.engine().map_err(|e| e.into_py(py))?;
        Ok(engine.info().context)
    }

    /// Token ids of a user message `prompt`, as `generate(prompt)` feeds them.
    fn encode(&self, py: Python<'_>, prompt: String) -> PyResult<Vec<u32>> {
        let input = Input::Messages(vec![Message::new("user", prompt)]);
        py.detach(|| guarded(|| Ok(self.engine()?.encode(&input)?)))
            .map_err(|e| e.into_py(py))
    }

    /// Frees the model (after the requests already queued); later calls raise `ValueError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let engine = {
            let mut guard = self
                .engine
                .lock()
                .map_err(|_| Error::Internal("the model's lock is poisoned".into()).into_py(py))?;
            guard.take()
        };
        // Dropping the last handle joins the owner thread: without the GIL.
        py.detach(move || drop(engine));
        Ok(())
    }
}

/// One generation: iterating yields its text pieces; `result()` waits for the end and returns
/// the text, tokens and statistics.
#[pyclass(frozen, module = "hoist._hoist")]
pub struct Generation {
    /// `None` once finished, or while a thread waits on it.
    stream: Mutex<Option<GenerationStream>>,
    /// Stops it, whoever holds the stream.
    cancel: Arc<AtomicBool>,
    completion: Mutex<Option<Completion>>,
}

impl Generation {
    /// The next text piece, or `None` at the end (the completion then kept).
    fn next_text(&self, py: Python<'_>) -> Result<Option<String>, Error> {
        // try_lock: blocking here with the GIL held while another thread waits (without the
        // GIL) inside this generation would deadlock.
        let busy = || Error::Usage("this generation is being read by another thread".into());
        let mut guard = self.stream.try_lock().map_err(|_| busy())?;
        let Some(mut stream) = guard.take() else {
            return Ok(None);
        };
        loop {
            let (event, back) = py.detach(move || {
                let e = stream.next();
                (e, stream)
            });
            stream = back;
            match event {
                Some(Event::Started { .. }) => continue,
                Some(Event::Text(t)) => {
                    *guard = Some(stream);
                    return Ok(Some(t));
                }
                Some(Event::Done(c)) => {
                    let mut done = self.completion.lock().map_err(|_| busy())?;
                    *done = Some(c);
                    return Ok(None);
                }
                Some(Event::Failed(e)) => return Err(e.into()),
                None => return Ok(None),
            }
        }
    }
}

#[pymethods]
impl Generation {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.next_text(py).map_err(|e| e.into_py(py))
    }

    /// Stops the generation within one decode step; what it produced stays.
    fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits for the end (reading what text is left) and returns `(text, tokens, stats)`.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<(String, Vec<u32>, Bound<'py, PyDict>)> {
        while self.next_text(py).map_err(|e| e.into_py(py))?.is_some() {}
        let done = self
            .completion
            .lock()
            .map_err(|_| Error::Internal("the generation's lock is poisoned".into()).into_py(py))?;
        let Some(c) = done.as_ref() else {
            return Err(
                Error::Internal("the generation ended without a result".into()).into_py(py),
            );
        };
        let s = &c.stats;
        let stats = PyDict::new(py);
        stats.set_item("stop", s.stop.label())?;
        stats.set_item("prompt_tokens", s.prompt_tokens)?;
        stats.set_item("cached_tokens", s.cached_tokens)?;
        stats.set_item("generated_tokens", s.generated_tokens)?;
        stats.set_item("prefill_seconds", s.prefill.as_secs_f64())?;
        stats.set_item("prefill_tokens_per_s", s.prefill_tokens_per_s())?;
        stats.set_item("decode_seconds", s.decode.as_secs_f64())?;
        stats.set_item("decode_tokens_per_s", s.decode_tokens_per_s)?;
        stats.set_item(
            "time_to_first_token_seconds",
            s.time_to_first_token().as_secs_f64(),
        )?;
        Ok((c.text.clone(), c.tokens.clone(), stats))
    }
}
