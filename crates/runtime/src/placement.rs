//! Where each decoder layer's weights live while a model runs, and the planner that decides
//! it from memory budgets: a pure function of sizes ([`Placement::plan`]), so that it can be
//! tested without a GPU and printed before any allocation.
//!
//! A layer is either **resident** (loaded into GPU memory once) or **streamed**: copied into
//! one of `slots` GPU buffers shortly before each step uses it. A streamed layer's bytes come
//! from one of two tiers: **pinned** host memory (filled once at load; the copies run at PCIe
//! speed with no host work) or the **file** (read each step into pinned staging, then copied).
//! The embedding, the output projection and every norm and bias stay resident: they are small
//! next to a layer's matrices, or (the embedding) read a row at a time.

use std::fmt;

/// Where one layer's weights live, as a caller asks for it (per layer, or for all layers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Residency {
    /// Loaded into GPU memory once, at load, and kept there.
    Resident,
    /// Copied into one of `slots` GPU buffers (shared by every streamed layer) shortly before
    /// its step uses it, from pinned host memory or the file (the host budget decides).
    Streamed {
        /// GPU buffers, each the size of the largest streamed layer; at least 1.
        slots: usize,
    },
}

impl fmt::Display for Residency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Residency::Resident => f.write_str("resident"),
            Residency::Streamed { slots } => write!(f, "streamed through {slots} GPU slots"),
        }
    }
}

/// Where a streamed layer's bytes come from at each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Pinned host memory, filled at load.
    Pinned,
    /// The checkpoint file (the page cache when it holds the bytes), read each step.
    File,
}

/// One layer's place in a [`LayerPlan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placed {
    /// In GPU memory for the model's life.
    Resident,
    /// Copied into a slot each step, from this tier.
    Streamed(Tier),
}

/// Memory budgets for [`Placement::auto`]; `None` means the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// GPU bytes for weights: the resident ones and the streaming slots (a session's KV cache
    /// and work buffers come on top). Default: free GPU memory at load, less one session's
    /// KV cache and work buffers and a margin for the driver and cuBLAS.
    pub gpu_bytes: Option<u64>,
    /// Host bytes of pinned memory for streamed layers (and the staging of the file tier).
    /// Default: [`default_host_budget`] of the host's available memory.
    pub host_bytes: Option<u64>,
}

/// Streaming slots when the caller does not say: one layer computes while the next is copied
/// (the copy engine never idles when compute is faster than the copy; see
/// `crates/runtime/src/gpu/llama/stream.rs`).
pub const DEFAULT_SLOTS: usize = 2;

/// A placement: a plan given by the caller (every layer resident, or one residency per
/// layer), or budgets for the planner to fit. [`Default`] is [`Placement::auto`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    plan: Plan,
    budget: Budget,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    /// As many layers resident as the GPU budget allows, the rest streamed through `slots`.
    Fit { slots: usize },
    /// The same residency for every layer, whatever the model's layer count.
    Uniform(Residency),
    /// Layer `l`'s residency at index `l`; must have as many entries as the model has layers.
    PerLayer(Vec<Residency>),
}

impl Default for Placement {
    fn default() -> Placement {
        Placement::auto(Budget::default())
    }
}

/// A placement that does not fit the model or its budgets.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum PlacementError {
    /// A per-layer plan for another model.
    #[error("the placement plan names {planned} layers but the model has {model}; give one residency per decoder layer")]
    LayerCount {
        /// Layers in the plan.
        planned: usize,
        /// Layers in the model.
        model: usize,
    },
    /// A streamed layer with no slot to stream through.
    #[error("layer {layer} is streamed through 0 GPU slots; stream through at least 1")]
    NoSlots {
        /// The layer.
        layer: usize,
    },
    /// The GPU budget holds less than the least the plan needs.
    #[error("the model needs at least {needed_gib:.2} GiB of GPU memory {what}, but the GPU budget is {budget_gib:.2} GiB ({budget_bytes} bytes); {hint}")]
    GpuBudget {
        /// What the least consists of, in words.
        what: String,
        /// Bytes needed.
        needed_bytes: u64,
        /// The same in GiB, for the message.
        needed_gib: f64,
        /// The budget.
        budget_bytes: u64,
        /// The same in GiB, for the message.
        budget_gib: f64,
        /// What to do.
        hint: &'static str,
    },
    /// Streamed layers must come from the file, but the host budget does not even hold the
    /// pinned staging they are read into.
    #[error("the host budget of {budget_bytes} bytes is below the {staging_bytes} bytes of pinned staging that streaming from the file needs (one slot per streaming slot); give a larger --host-memory")]
    HostBudget {
        /// Staging bytes needed.
        staging_bytes: u64,
        /// The budget.
        budget_bytes: u64,
    },
}

/// The sizes the planner places, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelBytes {
    /// Weights that are always resident: embedding, output projection, norms, biases.
    pub fixed_bytes: u64,
    /// Each decoder layer's streamable weights (its matrices), as they sit in GPU memory.
    pub layer_bytes: Vec<u64>,
}

/// Where every layer goes, and what that costs in each memory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LayerPlan {
    /// Layer `l`'s place.
    pub layers: Vec<Placed>,
    /// Streaming slots in GPU memory (0 when every layer is resident).
    pub slots: usize,
    /// Bytes of one slot: the largest streamed layer.
    pub slot_bytes: u64,
    /// GPU bytes of weights the plan uses: fixed weights, resident layers and slots.
    pub gpu_bytes: u64,
    /// The GPU budget it was made for.
    pub gpu_budget_bytes: u64,
    /// Pinned host bytes: the pinned tier, plus one slot of staging per slot when some layer
    /// comes from the file.
    pub host_bytes: u64,
    /// The host budget it was made for.
    pub host_budget_bytes: u64,
    /// Bytes streamed per forward step (every streamed layer once).
    pub streamed_bytes_per_step: u64,
    /// Of those, bytes read from the file each step.
    pub file_bytes_per_step: u64,
    /// Bytes of the always-resident weights (embedding, output, norms, biases).
    pub fixed_bytes: u64,
    /// Each layer's streamable bytes (its matrices), as planned.
    pub layer_bytes: Vec<u64>,
}

impl LayerPlan {
    /// Layers in GPU memory for the model's life.
    pub fn resident_layers(&self) -> usize {
        self.count(Placed::Resident)
    }

    /// Layers copied from pinned host memory each step.
    pub fn pinned_layers(&self) -> usize {
        self.count(Placed::Streamed(Tier::Pinned))
    }

    /// Layers read from the file each step.
    pub fn file_layers(&self) -> usize {
        self.count(Placed::Streamed(Tier::File))
    }

    /// Whether any layer is streamed.
    pub fn streams(&self) -> bool {
        self.slots > 0
    }

    fn count(&self, p: Placed) -> usize {
        self.layers.iter().filter(|&&l| l == p).count()
    }

    /// One line for `--verbose`: how many layers sit where, and the memory each tier takes.
    pub fn summary(&self) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let mut s = format!(
            "{} of {} layers resident; GPU {:.2} of {:.2} GiB budget",
            self.resident_layers(),
            self.layers.len(),
            gib(self.gpu_bytes),
            gib(self.gpu_budget_bytes)
        );
        if self.streams() {
            s += &format!(
                "; {} streamed through {} slots of {:.0} MiB ({} from pinned host memory, {} from the file); host {:.2} of {:.2} GiB budget; {:.2} GiB copied per step",
                self.layers.len() - self.resident_layers(),
                self.slots,
                self.slot_bytes as f64 / (1u64 << 20) as f64,
                self.pinned_layers(),
                self.file_layers(),
                gib(self.host_bytes),
                gib(self.host_budget_bytes),
                gib(self.streamed_bytes_per_step),
            );
        }
        s
    }
}

/// The default host budget for pinned memory out of `available_bytes` (the host's
/// MemAvailable): all but a tenth of it, and at least 2 GiB left to everything else.
pub fn default_host_budget(available_bytes: u64) -> u64 {
    let headroom = (available_bytes / 10).max(2 << 30);
    available_bytes.saturating_sub(headroom)
}

/// Parses a byte count as a user writes it: `123` (bytes), `24GiB`, `24G` (the same: binary
/// units, as GPU memory is quoted), `512MiB`, `1.5TiB`, or decimal `24GB` / `500MB`; case and a
/// space before the unit do not matter. The error says what is accepted.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bytes_help(text)),
    };
    let value: f64 = number.parse().map_err(|_| bytes_help(text))?;
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(bytes_help(text));
    }
    Ok(bytes.round() as u64)
}

fn bytes_help(text: &str) -> String {
    format!("{text:?} is not a size: give bytes, or a number with a unit (e.g. 24GiB, 24G, 512MiB, 20GB)")
}

impl Placement {
    /// Every layer resident; a model that does not fit the GPU budget is refused.
    pub fn resident() -> Placement {
        Placement::uniform(Residency::Resident)
    }

    /// As many layers resident as `budget` allows, the rest streamed through
    /// [`DEFAULT_SLOTS`] slots (every layer resident when all fit).
    pub fn auto(budget: Budget) -> Placement {
        Placement {
            plan: Plan::Fit {
                slots: DEFAULT_SLOTS,
            },
            budget,
        }
    }

    /// Every layer with the same residency.
    pub fn uniform(residency: Residency) -> Placement {
        Placement {
            plan: Plan::Uniform(residency),
            budget: Budget::default(),
        }
    }

    /// Layer `l` placed as `layers[l]`.
    pub fn per_layer(layers: Vec<Residency>) -> Placement {
        Placement {
            plan: Plan::PerLayer(layers),
            budget: Budget::default(),
        }
    }

    /// The same plan with these budgets.
    pub fn with_budget(mut self, budget: Budget) -> Placement {
        self.budget = budget;
        self
    }

    /// The budgets given (`None` fields take their defaults at load).
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Whether every layer is resident whatever the budgets: the plan names no streamed layer
    /// (an automatic plan may still stream when the model does not fit).
    pub fn is_all_resident(&self) -> bool {
        match &self.plan {
            Plan::Fit { .. } => false,
            Plan::Uniform(r) => *r == Residency::Resident,
            Plan::PerLayer(v) => v.iter().all(|r| *r == Residency::Resident),
        }
    }

    /// Whether the plan names a streamed layer (an automatic plan names none: it streams only
    /// what does not fit).
    pub fn names_streamed(&self) -> bool {
        match &self.plan {
            Plan::Fit { .. } => false,
            _ => !self.is_all_resident(),
        }
    }

    /// Checks the plan's shape against a model of `num_layers` layers, before any sizes are
    /// known (a plan for another model, a streamed layer without slots).
    pub fn check(&self, num_layers: usize) -> Result<(), PlacementError> {
        self.residencies(num_layers).map(drop)
    }

    /// Each layer's residency as asked (`None` for an automatic plan: the planner decides).
    fn residencies(&self, num_layers: usize) -> Result<Option<Vec<Residency>>, PlacementError> {
        let layers = match &self.plan {
            Plan::Fit { slots: 0 } => {
                return Err(PlacementError::NoSlots {
                    layer: num_layers.saturating_sub(1),
                })
            }
            Plan::Fit { .. } => return Ok(None),
            Plan::Uniform(r) => vec![*r; num_layers],
            Plan::PerLayer(v) if v.len() == num_layers => v.clone(),
            Plan::PerLayer(v) => {
                return Err(PlacementError::LayerCount {
                    planned: v.len(),
                    model: num_layers,
                })
            }
        };
        if let Some(layer) = layers
            .iter()
            .position(|r| matches!(r, Residency::Streamed { slots: 0 }))
        {
            return Err(PlacementError::NoSlots { layer });
        }
        Ok(Some(layers))
    }

    /// The plan for a model of these sizes within `gpu_budget_bytes` and `host_budget_bytes`
    /// (the budgets resolved: the caller's, else the defaults): a pure function.
    ///
    /// An automatic plan keeps the first layers resident, as many as fit beside the slots, and
    /// streams the rest (they form one run at the end, so a step's resident layers compute
    /// while the first streamed ones are copied). Streamed layers take the pinned tier in
    /// order while the host budget lasts, then the file. Errors before anything is allocated
    /// when even the fixed weights and the slots do not fit.
    pub fn plan(
        &self,
        bytes: &ModelBytes,
        gpu_budget_bytes: u64,
        host_budget_bytes: u64,
    ) -> Result<LayerPlan, PlacementError> {
        let n = bytes.layer_bytes.len();
        let base = bytes.fixed_bytes;
        let residency = match self.residencies(n)? {
            Some(r) => r,
            None => {
                let slots = match self.plan {
                    Plan::Fit { slots } => slots,
                    _ => unreachable!("residencies returned None for a fitted plan"),
                };
                fit(bytes, gpu_budget_bytes, slots)?
            }
        };
        let streamed: Vec<usize> = (0..n)
            .filter(|&l| residency[l] != Residency::Resident)
            .collect();
        let slots = streamed
            .iter()
            .map(|&l| match residency[l] {
                Residency::Streamed { slots } => slots,
                Residency::Resident => 0,
            })
            .max()
            .unwrap_or(0);
        let slot_bytes = streamed
            .iter()
            .map(|&l| bytes.layer_bytes[l])
            .max()
            .unwrap_or(0);
        let resident_bytes: u64 = (0..n)
            .filter(|&l| residency[l] == Residency::Resident)
            .map(|l| bytes.layer_bytes[l])
            .sum();
        let gpu_bytes = base + resident_bytes + slot_bytes * slots as u64;
        if gpu_bytes > gpu_budget_bytes {
            let what = if streamed.is_empty() {
                "to hold every layer resident".to_string()
            } else {
                format!(
                    "for its fixed weights, {} resident layers and {slots} streaming slots",
                    n - streamed.len()
                )
            };
            return Err(budget_error(what, gpu_bytes, gpu_budget_bytes, PLAN_HINT));
        }
        // The pinned tier, in layer order, while the host budget lasts; staging for the file
        // tier (one slot's bytes per slot) is taken from the same budget first.
        let total_streamed: u64 = streamed.iter().map(|&l| bytes.layer_bytes[l]).sum();
        let staging = slot_bytes * slots as u64;
        let mut layers: Vec<Placed> = residency
            .iter()
            .map(|r| match r {
                Residency::Resident => Placed::Resident,
                Residency::Streamed { .. } => Placed::Streamed(Tier::Pinned),
            })
            .collect();
        let mut host_bytes = total_streamed;
        if total_streamed > host_budget_bytes {
            if staging > host_budget_bytes {
                return Err(PlacementError::HostBudget {
                    staging_bytes: staging,
                    budget_bytes: host_budget_bytes,
                });
            }
            let mut left = host_budget_bytes.saturating_sub(staging);
            host_bytes = staging;
            for &l in &streamed {
                if bytes.layer_bytes[l] <= left {
                    left -= bytes.layer_bytes[l];
                    host_bytes += bytes.layer_bytes[l];
                } else {
                    // Once one layer misses, the rest come from the file too: the pinned
                    // layers stay one run, which keeps the plan easy to read.
                    left = 0;
                    layers[l] = Placed::Streamed(Tier::File);
                }
            }
        }
        let file_bytes_per_step = (0..n)
            .filter(|&l| layers[l] == Placed::Streamed(Tier::File))
            .map(|l| bytes.layer_bytes[l])
            .sum();
        debug_assert!(
            host_bytes <= host_budget_bytes,
            "the tiers fit the host budget"
        );
        Ok(LayerPlan {
            layers,
            slots,
            slot_bytes,
            gpu_bytes,
            gpu_budget_bytes,
            host_bytes,
            host_budget_bytes,
            streamed_bytes_per_step: total_streamed,
            file_bytes_per_step,
            fixed_bytes: bytes.fixed_bytes,
            layer_bytes: bytes.layer_bytes.clone(),
        })
    }
}

/// How many streamed layers decode should compute the feed-forward of on the host (the
/// hybrid placement): the host reads those layers' FFN weights from pinned memory while PCIe
/// brings only their attention weights and the other streamed layers whole, so a token costs
/// about `max(host time, copy time)` (both read host memory, which slows each somewhat when
/// they overlap: measured on an H200 host, the hybrid reached 0.8–0.9 of this estimate, above a
/// shared-bandwidth model's). Of equal minima the fewest host layers are taken.
/// `layers[i]` are the `(attention, feed-forward)` bytes of the layers that
/// may run so, in the order they would be taken; `other_bytes` what the rest of the streamed
/// layers copy; `overhead_seconds` the host's fixed cost per layer (a device round trip).
/// Returns 0 unless the hybrid beats streaming alone by at least 5% (the model then runs
/// exactly as streamed).
pub fn host_ffn_layers(
    layers: &[(u64, u64)],
    other_bytes: u64,
    h2d_gbps: f64,
    host_gbps: f64,
    overhead_seconds: f64,
) -> usize {
    if !(h2d_gbps > 0.0 && host_gbps > 0.0) {
        return 0;
    }
    let all: u64 = layers.iter().map(|(a, f)| a + f).sum::<u64>() + other_bytes;
    let seconds = |c: usize| -> f64 {
        let ffn: u64 = layers[..c].iter().map(|l| l.1).sum();
        let host = ffn as f64 / (host_gbps * 1e9) + c as f64 * overhead_seconds;
        let copy = (all - ffn) as f64 / (h2d_gbps * 1e9);
        host.max(copy)
    };
    let streaming = seconds(0);
    // The first of equal minima: the fewest host layers.
    let (best, t) = (0..=layers.len())
        .map(|c| (c, seconds(c)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, streaming));
    if t <= 0.95 * streaming {
        best
    } else {
        0
    }
}

const PLAN_HINT: &str = "give a larger --gpu-memory or stream more layers";

fn budget_error(what: String, needed: u64, budget: u64, hint: &'static str) -> PlacementError {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    PlacementError::GpuBudget {
        what,
        needed_bytes: needed,
        needed_gib: gib(needed),
        budget_bytes: budget,
        budget_gib: gib(budget),
        hint,
    }
}

/// The automatic plan's residencies: every layer resident when all fit; else the most
/// leading layers that fit beside `slots` slots of the largest of the others.
fn fit(
    bytes: &ModelBytes,
    gpu_budget_bytes: u64,
    slots: usize,
) -> Result<Vec<Residency>, PlacementError> {
    let n = bytes.layer_bytes.len();
    let base = bytes.fixed_bytes;
    if base + bytes.layer_bytes.iter().sum::<u64>() <= gpu_budget_bytes {
        return Ok(vec![Residency::Resident; n]);
    }
    // Largest streamed layer for each split point: suffix maxima, so the search is linear.
    let mut suffix_max = vec![0u64; n + 1];
    for l in (0..n).rev() {
        suffix_max[l] = suffix_max[l + 1].max(bytes.layer_bytes[l]);
    }
    let mut prefix = 0u64;
    let mut best = None;
    for (resident, (&layer, &largest_streamed)) in
        bytes.layer_bytes.iter().zip(&suffix_max).enumerate()
    {
        let needed = base + prefix + largest_streamed * slots as u64;
        if needed <= gpu_budget_bytes {
            best = Some(resident);
        }
        prefix += layer;
    }
    let Some(resident) = best else {
        return Err(budget_error(
            format!("for its fixed weights and {slots} streaming slots of its largest layer"),
            base + suffix_max[0] * slots as u64,
            gpu_budget_bytes,
            "give a larger --gpu-memory",
        ));
    };
    let mut layers = vec![Residency::Resident; resident];
    layers.resize(n, Residency::Streamed { slots });
    Ok(layers)
}

pub mod experts;

#[cfg(test)]
mod tests;
