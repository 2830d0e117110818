//! Loaded models: one [`Engine`] per model, loaded on first use, kept for its keep-alive, with a
//! bounded admission queue.
//!
//! A request takes a [`Lease`] on its model's [`Slot`]: a permit of the slot's semaphore
//! (`queue_depth + parallel` permits: `parallel` running, the rest waiting in the engine's
//! queue), so that a
//! request beyond the bound is refused at once (503) instead of waiting without end. When the
//! last lease of a slot ends, its keep-alive deadline starts; [`Registry::reap`] unloads slots
//! whose deadline passed (the reaper task calls it, and a lease with keep-alive 0 at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hoist_engine::{Device, Engine, EngineOptions};
use hoist_runtime::placement::Placement;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::models::{ModelRecord, Models};

/// Ollama's default keep-alive.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5 * 60);

/// How long a model stays loaded after its last request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// This long (zero: unload right after the request).
    For(Duration),
    /// Until the server stops.
    Forever,
}

impl KeepAlive {
    /// Parses Ollama's `keep_alive`: a number of seconds, or a Go duration string (`5m`,
    /// `1h30m`, `250ms`, `-1`); negative means forever.
    pub fn parse(value: &serde_json::Value) -> Result<KeepAlive, String> {
        let seconds = match value {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => parse_go_duration(s.trim()),
            _ => None,
        };
        match seconds {
            Some(s) if s < 0.0 => Ok(KeepAlive::Forever),
            Some(s) if s.is_finite() && s < 1e12 => Ok(KeepAlive::For(Duration::from_secs_f64(s))),
            _ => Err(format!(
                "keep_alive {value} is not a duration: use seconds (300), a duration (\"5m\", \
                 \"1h\"), 0 to unload after the request, or a negative value to keep it loaded"
            )),
        }
    }
}

/// Seconds of a Go duration (`1h30m`, `90s`, `-1m`, `300`: a bare number is seconds).
fn parse_go_duration(s: &str) -> Option<f64> {
    let (sign, mut rest) = match s.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, s),
    };
    if let Ok(n) = rest.parse::<f64>() {
        return Some(sign * n);
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Some(sign * total)
}

/// How the registry loads models.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Where models run.
    pub device: Device,
    /// Requests that may wait per model besides those running; more get 503.
    pub queue_depth: usize,
    /// Requests each model runs at once, decoded together (1 to
    /// [`hoist_engine::MAX_PARALLEL`]).
    pub parallel: usize,
    /// KV-cache sessions per model.
    pub pool_size: usize,
    /// Context positions of each model (`None`: the model's trained length, capped).
    pub context: Option<usize>,
    /// Keep-alive of a request that names none.
    pub keep_alive: KeepAlive,
    /// Where each model's layers go on the GPU (the memory budgets of `--gpu-memory` and
    /// `--host-memory`); the default fits the budgets' defaults.
    pub placement: Placement,
    /// Whether a model's weights stay in the page cache after its load (`--cache`).
    pub cache: hoist_runtime::gpu::CachePolicy,
}

/// A loaded (or loading) model.
pub struct Slot {
    /// What it is.
    pub record: ModelRecord,
    /// The context asked for when it was loaded (`None`: the default).
    context: Option<usize>,
    engine: OnceCell<Loaded>,
    admission: Arc<Semaphore>,
    state: Mutex<SlotState>,
}

/// A model on its device.
struct Loaded {
    engine: Engine,
}

struct SlotState {
    /// Leases held (running and queued requests).
    active: usize,
    /// Keep-alive of the latest request.
    keep_alive: KeepAlive,
    /// When an idle slot may be unloaded (`None`: never, or busy).
    expires: Option<Instant>,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        // Every change is a few field stores: the state is valid after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, now: Instant) -> bool {
        let s = self.state();
        s.active == 0 && s.expires.is_some_and(|t| t <= now)
    }
}

/// A loaded model, as `/api/ps` reports it.
#[derive(Clone, Debug)]
pub struct Running {
    /// Its record.
    pub record: ModelRecord,
    /// Where it runs.
    pub device: Device,
    /// Context positions.
    pub context: usize,
    /// Weight bytes on the GPU (0 on the CPU; the KV cache is not counted).
    pub vram_bytes: u64,
    /// When it will be unloaded (`None`: never); a busy model's counts from now.
    pub expires_at: Option<SystemTime>,
}

/// Loaded models by name.
pub struct Registry {
    models: Arc<dyn Models>,
    options: RegistryOptions,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// A request's hold on a loaded model: while it lives, the model stays loaded and counts the
/// request against its queue.
pub struct Lease {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
    keep_alive: KeepAlive,
    /// Time this request waited for the model to load (zero when it was loaded already).
    load_duration: Duration,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// The model's engine.
    pub fn engine(&self) -> &Engine {
        // `acquire` hands out leases only after the load succeeded.
        &self.loaded().engine
    }

    /// The name of the model.
    pub fn name(&self) -> &str {
        &self.slot.record.name
    }

    /// Time this request waited for the model to load (zero when it was loaded already).
    pub fn load_duration(&self) -> Duration {
        self.load_duration
    }

    fn loaded(&self) -> &Loaded {
        match self.slot.engine.get() {
            Some(loaded) => loaded,
            None => unreachable!("a lease exists only on a loaded slot"),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let unload_now = {
            let mut s = self.slot.state();
            assert!(s.active > 0, "every lease was counted in");
            s.active -= 1;
            s.keep_alive = self.keep_alive;
            if s.active == 0 {
                s.expires = match self.keep_alive {
                    KeepAlive::For(d) => Some(Instant::now() + d),
                    KeepAlive::Forever => None,
                };
            }
            self.keep_alive == KeepAlive::For(Duration::ZERO)
        };
        if unload_now {
            self.registry.reap();
        }
    }
}

impl Registry {
    /// A registry loading the models `models` names, with `options`.
    pub fn new(models: Arc<dyn Models>, options: RegistryOptions) -> Arc<Registry> {
        Arc::new(Registry {
            models,
            options,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The model names.
    pub fn models(&self) -> &Arc<dyn Models> {
        &self.models
    }

    /// The settings in force.
    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves `name` off the async threads.
    pub async fn resolve(&self, name: &str) -> Result<ModelRecord, ApiError> {
        let models = self.models.clone();
        let name = name.to_string();
        Ok(tokio::task::spawn_blocking(move || models.resolve(&name))
            .await
            .map_err(|e| ApiError::internal(format!("model lookup failed: {e}")))??)
    }

    /// A lease on model `name`, loading it first if needed (with `context` positions when
    /// given); 404 for an unknown model, 503 when its queue is full.
    pub async fn acquire(
        self: &Arc<Self>,
        name: &str,
        keep_alive: Option<KeepAlive>,
        context: Option<usize>,
    ) -> Result<Lease, ApiError> {
        let record = self.resolve(name).await?;
        let keep_alive = keep_alive.unwrap_or(self.options.keep_alive);
        let (slot, permit) = self.admit(record, context)?;
        let mut lease = Lease {
            registry: self.clone(),
            slot: slot.clone(),
            keep_alive,
            load_duration: Duration::ZERO,
            _permit: permit,
        };
        // Dropped on failure: the lease's drop counts the request out.
        let t0 = Instant::now();
        let was_loaded = slot.engine.get().is_some();
        let loaded = slot.engine.get_or_try_init(|| self.load(&slot)).await;
        if !was_loaded {
            // This request loaded the model, or waited for another's load.
            lease.load_duration = t0.elapsed();
        }
        if let Err(e) = loaded {
            // A failed load leaves nothing to keep.
            drop(lease);
            self.remove_if_idle(&slot);
            return Err(e);
        }
        Ok(lease)
    }

    /// Finds or makes the slot of `record` and takes a permit, all under the map's lock, so
    /// that the reaper never removes a slot a request is entering.
    fn admit(
        &self,
        record: ModelRecord,
        context: Option<usize>,
    ) -> Result<(Arc<Slot>, OwnedSemaphorePermit), ApiError> {
        let mut slots = self.slots();
        let wanted = context.or(self.options.context);
        if let Some(slot) = slots.get(&record.name) {
            let loaded_context = slot.engine.get().map(|l| l.engine.info().context);
            let differs = context.is_some()
                && match loaded_context {
                    Some(c) => Some(c) != context,
                    None => slot.context != context,
                };
            if differs {
                if slot.state().active > 0 {
                    return Err(ApiError::bad_request(format!(
                        "model '{}' is loaded with a context of {} positions and is busy; \
                         retry later to reload it with num_ctx {}, or leave num_ctx out",
                        record.name,
                        loaded_context.or(slot.context).unwrap_or(0),
                        context.unwrap_or(0)
                    )));
                }
                // Idle with another context: reload (the old engine is freed off this thread).
                if let Some(old) = slots.remove(&record.name) {
                    drop_off_thread(vec![old]);
                }
            }
        }
        let slot = slots
            .entry(record.name.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    record: record.clone(),
                    context: wanted,
                    engine: OnceCell::new(),
                    admission: Arc::new(Semaphore::new(
                        self.options.queue_depth + self.options.parallel,
                    )),
                    state: Mutex::new(SlotState {
                        active: 0,
                        keep_alive: self.options.keep_alive,
                        expires: None,
                    }),
                })
            })
            .clone();
        let permit = slot.admission.clone().try_acquire_owned().map_err(|_| {
            ApiError::busy(
                &record.name,
                self.options.parallel,
                self.options.queue_depth,
            )
        })?;
        let mut s = slot.state();
        s.active += 1;
        s.expires = None;
        drop(s);
        Ok((slot, permit))
    }

    /// Loads the slot's model on a blocking thread.
    async fn load(&self, slot: &Slot) -> Result<Loaded, ApiError> {
        let path = slot.record.path.clone();
        let options = EngineOptions {
            device: self.options.device,
            context: slot.context,
            pool_size: self.options.pool_size,
            parallel: self.options.parallel,
            cache: self.options.cache,
            ..EngineOptions::default()
        };
        let name = slot.record.name.clone();
        let placement = self.options.placement.clone();
        tracing::info!(model = %name, path = %path.display(), device = %options.device, "loading");
        let t0 = Instant::now();
        let engine = tokio::task::spawn_blocking(move || Engine::load(&path, placement, options))
            .await
            .map_err(|e| ApiError::internal(format!("loading '{name}' failed: {e}")))??;
        for w in &engine.info().warnings {
            tracing::warn!(model = %name, "{w}");
        }
        tracing::info!(model = %name, seconds = t0.elapsed().as_secs_f64(), "loaded");
        Ok(Loaded { engine })
    }

    /// Unloads `name` now if idle, else right after its running requests.
    pub fn unload(&self, name: &str) {
        if let Some(slot) = self.slots().get(name) {
            let mut s = slot.state();
            s.keep_alive = KeepAlive::For(Duration::ZERO);
            s.expires = Some(Instant::now());
        }
        self.reap();
    }

    fn remove_if_idle(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots();
        let same = slots
            .get(&slot.record.name)
            .is_some_and(|s| Arc::ptr_eq(s, slot));
        if same && slot.state().active == 0 && slot.engine.get().is_none() {
            slots.remove(&slot.record.name);
        }
    }

    /// Unloads the idle models whose keep-alive has passed; returns how many.
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let gone: Vec<Arc<Slot>> = {
            let mut slots = self.slots();
            let names: Vec<String> = slots
                .iter()
                .filter(|(_, s)| s.expired(now))
                .map(|(n, _)| n.clone())
                .collect();
            names.iter().filter_map(|n| slots.remove(n)).collect()
        };
        for s in &gone {
            tracing::info!(model = %s.record.name, "unloading");
        }
        let count = gone.len();
        drop_off_thread(gone);
        count
    }

    /// The loaded models.
    pub fn running(&self) -> Vec<Running> {
        let now_sys = SystemTime::now();
        let now = Instant::now();
        let slots = self.slots();
        let mut out: Vec<Running> = slots
            .values()
            .filter_map(|slot| {
                let loaded = slot.engine.get()?;
                let s = slot.state();
                let remaining = match (s.active, s.expires, s.keep_alive) {
                    (0, Some(t), _) => Some(t.saturating_duration_since(now)),
                    (0, None, _) | (_, _, KeepAlive::Forever) => None,
                    (_, _, KeepAlive::For(d)) => Some(d),
                };
                Some(Running {
                    record: slot.record.clone(),
                    device: loaded.engine.info().device,
                    context: loaded.engine.info().context,
                    vram_bytes: loaded
                        .engine
                        .info()
                        .gpu
                        .as_ref()
                        .map_or(0, |g| g.weight_bytes),
                    expires_at: remaining.map(|d| now_sys + d),
                })
            })
            .collect();
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        out
    }
}

/// Drops slots on a thread of their own: dropping the last handle of an engine joins its owner
/// thread, which must not block an async worker.
fn drop_off_thread(slots: Vec<Arc<Slot>>) {
    if slots.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("hoist-unload".into())
        .spawn(move || drop(slots));
    if let Err(e) = spawned {
        // The slots went down with the closure: dropped here, blocking, which is still correct.
        tracing::warn!("cannot start an unload thread ({e}); unloaded in place");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keep_alive_parses_ollamas_forms() {
        let secs = |s| KeepAlive::For(Duration::from_secs(s));
        assert_eq!(KeepAlive::parse(&json!(300)).unwrap(), secs(300));
        assert_eq!(KeepAlive::parse(&json!("5m")).unwrap(), secs(300));
        assert_eq!(KeepAlive::parse(&json!("1h30m")).unwrap(), secs(5400));
        assert_eq!(KeepAlive::parse(&json!("0")).unwrap(), secs(0));
        assert_eq!(
            KeepAlive::parse(&json!("250ms")).unwrap(),
            KeepAlive::For(Duration::from_millis(250))
        );
        assert_eq!(KeepAlive::parse(&json!(-1)).unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse(&json!("-1m")).unwrap(), KeepAlive::Forever);
        assert!(KeepAlive::parse(&json!("5 minutes")).is_err());
        assert!(KeepAlive::parse(&json!(true)).is_err());
    }
}
