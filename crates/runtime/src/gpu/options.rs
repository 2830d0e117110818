//! How to run a model on the GPU: every knob in one struct, read once at load.
//!
//! The environment is read in one place, [`GpuOptions::with_env_overrides`], and only for
//! overrides (each variable is listed in [`ENV_OVERRIDES`], which `hoist run --help` prints);
//! nothing below the options reads it. docs/run.md has the table of every knob.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::module::GemvShape;
use super::GpuError;
use crate::placement::Placement;

/// Positions of the session a load leaves GPU memory for when [`GpuOptions::context`] is not
/// given.
pub const DEFAULT_RESERVE_CONTEXT: usize = 4096;

/// How to run a model on the GPU.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Device ordinal (`cuda:N`).
    pub ordinal: usize,
    /// Where compiled kernels are cached; `None`: [`super::default_cache_dir`]
    /// (`$XDG_CACHE_HOME/hoist/kernels`, else `~/.cache/hoist/kernels`).
    pub kernel_cache: Option<PathBuf>,
    /// Counts weight bytes as they are read, for a progress display (the read engine's counter,
    /// [`hoist_io::EngineConfig::progress`]); `None`: not counted.
    pub progress: Option<Arc<AtomicU64>>,
    /// Where each layer's weights live, and the memory budgets the default plan fits
    /// ([`Placement::auto`]: every layer resident when the model fits, else the last layers
    /// streamed).
    pub placement: Placement,
    /// Whether weights read from disk stay in the page cache (`hoist run --cache`): the next
    /// load of the same file is then a warm one; `Auto` keeps when they fit in available memory.
    pub cache: hoist_io::CachePolicy,
    /// Positions of the session the default GPU budget leaves room for (its KV cache and
    /// work buffers); `None`: [`DEFAULT_RESERVE_CONTEXT`]. The engine sets its context here.
    pub context: Option<usize>,
    /// Kernel choices and shapes, for diagnosis and tuning; the defaults are the fastest
    /// measured.
    pub tuning: GpuTuning,
}

/// How decode's matrix-vector products run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeGemv {
    /// hoist's fused GEMV kernels.
    #[default]
    Kernels,
    /// cuBLAS (a yardstick); only for models whose weights are all of the activation type,
    /// the others keep the kernels.
    Cublas,
}

/// Whether decode computes some streamed layers' feed-forward on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostFfn {
    /// As many layers as the bandwidths measured at load say make decode faster (none when
    /// every layer is resident, or when streaming alone is as fast).
    #[default]
    Auto,
    /// Never: every streamed layer is copied whole and computed on the GPU.
    Off,
    /// This many streamed layers (at most those of the pinned tier with 16-bit or f32
    /// feed-forward weights).
    Layers(usize),
}

/// Kernel choices and shapes. [`Default`] is what runs unless asked otherwise; every field has
/// an environment override (see [`ENV_OVERRIDES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuTuning {
    /// Decode's products: our kernels or cuBLAS (`HOIST_DECODE_GEMV`).
    pub decode_gemv: DecodeGemv,
    /// Decode replays one captured CUDA graph per step (`HOIST_NO_GRAPHS` turns it off).
    pub graphs: bool,
    /// Decode's q/k/v GEMV applies the rotary embedding and stores k and v into the cache,
    /// where no q/k norm comes between (`HOIST_NO_FUSED_ROPE` turns it off).
    pub fused_rope: bool,
    /// Programmatic dependent launch on compute capability 9.0 and newer (`HOIST_NO_PDL`
    /// turns it off).
    pub pdl: bool,
    /// Q4_0 matrices repacked into tiles at load for the tensor-core GEMVs
    /// (`HOIST_NO_Q4_TILES` keeps the file's layout).
    pub q4_tiles: bool,
    /// Prefill multiplies every expert of a sparse layer in one strided batched product per
    /// projection where their weights allow (`HOIST_NO_MOE_BATCHED`: one expert at a time).
    pub moe_batched: bool,
    /// Sessions of several sequences (`--parallel`) decode their tokens as the rows of one
    /// step, each weight read once for all (`HOIST_NO_BATCH_DECODE`: one step per sequence).
    pub batch_decode: bool,
    /// Per-kernel times, each launch synchronized (so no graphs), printed when the model is
    /// dropped (`HOIST_PROFILE`).
    pub profile: bool,
    /// Warps per block of the 16-bit/f32 GEMVs: 1, 2, 4, 8 or 16 (`HOIST_GEMV_WARPS`).
    pub gemv_warps: u32,
    /// Unrolling of the 16-bit/f32 GEMV loop: 1 to 16 (`HOIST_GEMV_UNROLL`).
    pub gemv_unroll: u32,
    /// Warps per block of the block-quantized GEMVs (every ggml type but tiled Q4_0): 1 to 16
    /// (`HOIST_QGEMV_WARPS`; 32 warps of their registers do not fit a multiprocessor).
    pub qgemv_warps: u32,
    /// Warps per block of the tiled Q4_0 GEMVs: 4, 8 or 16 (`HOIST_Q4T_WARPS`).
    pub q4t_warps: u32,
    /// Tiles a warp of a tiled Q4_0 GEMV loads before using them: 1 to 8 (`HOIST_Q4T_BATCH`).
    pub q4t_batch: u32,
    /// Resident blocks per SM the tiled Q4_0 GEMVs' registers are cut for: 1 to 4
    /// (`HOIST_Q4T_MIN_BLOCKS`).
    pub q4t_min_blocks: u32,
    /// Streamed layers whose feed-forward decode computes on the CPU, from pinned memory,
    /// while PCIe brings the others (`HOIST_HOST_FFN`: auto, off or a count).
    pub host_ffn: HostFfn,
}

impl Default for GpuTuning {
    fn default() -> GpuTuning {
        let shape = GemvShape::DEFAULT;
        GpuTuning {
            decode_gemv: DecodeGemv::Kernels,
            graphs: true,
            fused_rope: true,
            pdl: true,
            q4_tiles: true,
            moe_batched: true,
            batch_decode: true,
            profile: false,
            gemv_warps: shape.warps,
            gemv_unroll: shape.unroll,
            qgemv_warps: shape.quantized_warps,
            q4t_warps: shape.q4t_warps,
            q4t_batch: shape.q4t_batch,
            q4t_min_blocks: shape.q4t_min_blocks,
            host_ffn: HostFfn::Auto,
        }
    }
}

/// The environment variables that override [`GpuOptions`], with what each does: for
/// `hoist run --help`'s footer.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("HOIST_KERNEL_CACHE", "directory of compiled GPU kernels"),
    (
        "HOIST_DECODE_GEMV",
        "decode products: kernels (default) or cublas",
    ),
    ("HOIST_NO_GRAPHS", "1: decode without CUDA graphs"),
    (
        "HOIST_NO_FUSED_ROPE",
        "1: rotary embedding as its own kernel",
    ),
    ("HOIST_NO_PDL", "1: no programmatic dependent launch"),
    ("HOIST_NO_Q4_TILES", "1: keep Q4_0 in the file's layout"),
    ("HOIST_NO_MOE_BATCHED", "1: prefill's experts one at a time"),
    (
        "HOIST_NO_BATCH_DECODE",
        "1: --parallel sequences decode one step each",
    ),
    ("HOIST_PROFILE", "1: per-kernel times, printed at exit"),
    ("HOIST_GEMV_WARPS", "16-bit GEMV warps: 1, 2, 4, 8, 16"),
    ("HOIST_GEMV_UNROLL", "16-bit GEMV unrolling: 1 to 16"),
    ("HOIST_QGEMV_WARPS", "quantized GEMV warps: 1 to 16"),
    ("HOIST_Q4T_WARPS", "tiled Q4_0 GEMV warps: 4, 8, 16"),
    ("HOIST_Q4T_BATCH", "tiled Q4_0 tiles per load: 1 to 8"),
    ("HOIST_Q4T_MIN_BLOCKS", "tiled Q4_0 blocks per SM: 1 to 4"),
    (
        "HOIST_HOST_FFN",
        "streamed layers' decode FFN on the CPU: auto, off, N",
    ),
];

/// What the on/off variables accept.
const FLAG_VALUES: &str = "1, true, yes or on to set it; 0, false, no or off to leave it unset";

/// A numeric knob: its field, variable, accepted values and check.
struct Shape {
    field: &'static str,
    variable: &'static str,
    accepted: &'static str,
    ok: fn(u32) -> bool,
    get: fn(&mut GpuTuning) -> &mut u32,
}

/// The numeric knobs, in [`ENV_OVERRIDES`]' order.
const SHAPES: [Shape; 6] = [
    Shape {
        field: "gemv_warps",
        variable: "HOIST_GEMV_WARPS",
        accepted: "1, 2, 4, 8 or 16",
        ok: |v| v.is_power_of_two() && v <= 16,
        get: |t| &mut t.gemv_warps,
    },
    Shape {
        field: "gemv_unroll",
        variable: "HOIST_GEMV_UNROLL",
        accepted: "1 to 16",
        ok: |v| (1..=16).contains(&v),
        get: |t| &mut t.gemv_unroll,
    },
    Shape {
        field: "qgemv_warps",
        variable: "HOIST_QGEMV_WARPS",
        accepted: "1 to 16",
        ok: |v| (1..=16).contains(&v),
        get: |t| &mut t.qgemv_warps,
    },
    Shape {
        field: "q4t_warps",
        variable: "HOIST_Q4T_WARPS",
        accepted: "4, 8 or 16",
        ok: |v| matches!(v, 4 | 8 | 16),
        get: |t| &mut t.q4t_warps,
    },
    Shape {
        field: "q4t_batch",
        variable: "HOIST_Q4T_BATCH",
        accepted: "1 to 8",
        ok: |v| (1..=8).contains(&v),
        get: |t| &mut t.q4t_batch,
    },
    Shape {
        field: "q4t_min_blocks",
        variable: "HOIST_Q4T_MIN_BLOCKS",
        accepted: "1 to 4",
        ok: |v| (1..=4).contains(&v),
        get: |t| &mut t.q4t_min_blocks,
    },
];

impl GpuTuning {
    /// Refuses shapes the kernels are not built for, naming the field and what it accepts.
    pub fn validate(&self) -> Result<(), GpuError> {
        let mut t = *self;
        for s in &SHAPES {
            let v = *(s.get)(&mut t);
            if !(s.ok)(v) {
                return Err(GpuError::InvalidOption {
                    name: format!("GpuTuning::{}", s.field),
                    value: v.to_string(),
                    accepted: s.accepted,
                });
            }
        }
        Ok(())
    }

    /// The GEMV shape the kernels are compiled with.
    pub(crate) fn gemv_shape(&self) -> GemvShape {
        GemvShape {
            warps: self.gemv_warps,
            unroll: self.gemv_unroll,
            quantized_warps: self.qgemv_warps,
            q4t_warps: self.q4t_warps,
            q4t_batch: self.q4t_batch,
            q4t_min_blocks: self.q4t_min_blocks,
        }
    }
}

impl GpuOptions {
    /// These options with the environment's overrides ([`ENV_OVERRIDES`]) applied: the one
    /// place the GPU runtime reads the environment. A value a variable does not accept is an
    /// error naming the variable and what it accepts.
    pub fn with_env_overrides(self) -> Result<GpuOptions, GpuError> {
        self.overridden_by(|name| std::env::var_os(name))
    }

    /// [`GpuOptions::with_env_overrides`] over any source of variables.
    fn overridden_by(
        mut self,
        var: impl Fn(&str) -> Option<OsString>,
    ) -> Result<GpuOptions, GpuError> {
        let text = |name: &'static str| -> Result<Option<String>, GpuError> {
            var(name)
                .map(|v| {
                    v.into_string().map_err(|v| GpuError::InvalidOption {
                        name: name.to_string(),
                        value: v.to_string_lossy().into_owned(),
                        accepted: "UTF-8 text",
                    })
                })
                .transpose()
        };
        let flag = |name: &'static str| -> Result<Option<bool>, GpuError> {
            text(name)?
                .map(|v| match v.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "0" | "false" | "no" | "off" => Ok(false),
                    _ => Err(GpuError::InvalidOption {
                        name: name.to_string(),
                        value: v,
                        accepted: FLAG_VALUES,
                    }),
                })
                .transpose()
        };
        if let Some(dir) = var("HOIST_KERNEL_CACHE") {
            if dir.is_empty() {
                return Err(GpuError::InvalidOption {
                    name: "HOIST_KERNEL_CACHE".into(),
                    value: String::new(),
                    accepted: "a directory path",
                });
            }
            self.kernel_cache = Some(PathBuf::from(dir));
        }
        let t = &mut self.tuning;
        if let Some(v) = text("HOIST_DECODE_GEMV")? {
            t.decode_gemv = match v.as_str() {
                "kernels" => DecodeGemv::Kernels,
                "cublas" => DecodeGemv::Cublas,
                _ => {
                    return Err(GpuError::InvalidOption {
                        name: "HOIST_DECODE_GEMV".into(),
                        value: v,
                        accepted: "kernels or cublas",
                    })
                }
            };
        }
        // The variables named NO_* turn a default-on feature off.
        for (name, field, negated) in [
            ("HOIST_NO_GRAPHS", &mut t.graphs, true),
            ("HOIST_NO_FUSED_ROPE", &mut t.fused_rope, true),
            ("HOIST_NO_PDL", &mut t.pdl, true),
            ("HOIST_NO_Q4_TILES", &mut t.q4_tiles, true),
            ("HOIST_NO_MOE_BATCHED", &mut t.moe_batched, true),
            ("HOIST_NO_BATCH_DECODE", &mut t.batch_decode, true),
            ("HOIST_PROFILE", &mut t.profile, false),
        ] {
            if let Some(set) = flag(name)? {
                *field = set != negated;
            }
        }
        if let Some(v) = text("HOIST_HOST_FFN")? {
            t.host_ffn = match v.trim() {
                "auto" => HostFfn::Auto,
                "off" => HostFfn::Off,
                n => HostFfn::Layers(n.parse().map_err(|_| GpuError::InvalidOption {
                    name: "HOIST_HOST_FFN".into(),
                    value: v.clone(),
                    accepted: "auto, off, or a number of layers",
                })?),
            };
        }
        for s in &SHAPES {
            if let Some(v) = text(s.variable)? {
                let invalid = || GpuError::InvalidOption {
                    name: s.variable.to_string(),
                    value: v.clone(),
                    accepted: s.accepted,
                };
                let n: u32 = v.trim().parse().map_err(|_| invalid())?;
                if !(s.ok)(n) {
                    return Err(invalid());
                }
                *(s.get)(t) = n;
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<GpuOptions, GpuError> {
        let vars: Vec<(String, OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        GpuOptions::default()
            .overridden_by(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_match_the_compiled_gemv_shape_and_validate() {
        let t = GpuTuning::default();
        assert_eq!(t.gemv_shape(), GemvShape::DEFAULT);
        t.validate().unwrap();
        assert!(t.graphs && t.fused_rope && t.pdl && t.q4_tiles && t.moe_batched);
        assert!(t.batch_decode && !t.profile);
        assert_eq!(t.decode_gemv, DecodeGemv::Kernels);
        let o = with(&[]).unwrap();
        assert_eq!(o.tuning, t);
        assert_eq!(o.kernel_cache, None);
    }

    #[test]
    fn every_variable_overrides_its_field() {
        let o = with(&[
            ("HOIST_KERNEL_CACHE", "/tmp/k"),
            ("HOIST_DECODE_GEMV", "cublas"),
            ("HOIST_NO_GRAPHS", "1"),
            ("HOIST_NO_FUSED_ROPE", "true"),
            ("HOIST_NO_PDL", "yes"),
            ("HOIST_NO_Q4_TILES", "1"),
            ("HOIST_NO_MOE_BATCHED", "on"),
            ("HOIST_NO_BATCH_DECODE", "1"),
            ("HOIST_PROFILE", "1"),
            ("HOIST_GEMV_WARPS", "8"),
            ("HOIST_GEMV_UNROLL", "2"),
            ("HOIST_QGEMV_WARPS", "8"),
            ("HOIST_Q4T_WARPS", "16"),
            ("HOIST_Q4T_BATCH", "8"),
            ("HOIST_Q4T_MIN_BLOCKS", "1"),
            ("HOIST_HOST_FFN", "6"),
        ])
        .unwrap();
        assert_eq!(o.tuning.host_ffn, HostFfn::Layers(6));
        assert_eq!(
            with(&[("HOIST_HOST_FFN", "off")]).unwrap().tuning.host_ffn,
            HostFfn::Off
        );
        let e = with(&[("HOIST_HOST_FFN", "some")]).unwrap_err().to_string();
        assert!(e.contains("auto, off, or a number"), "{e}");
        assert_eq!(o.kernel_cache, Some(PathBuf::from("/tmp/k")));
        let t = o.tuning;
        assert_eq!(t.decode_gemv, DecodeGemv::Cublas);
        assert!(!t.graphs && !t.fused_rope && !t.pdl && !t.q4_tiles && !t.moe_batched);
        assert!(!t.batch_decode && t.profile);
        assert_eq!(
            (
                t.gemv_warps,
                t.gemv_unroll,
                t.qgemv_warps,
                t.q4t_warps,
                t.q4t_batch,
                t.q4t_min_blocks
            ),
            (8, 2, 8, 16, 8, 1)
        );
        // Each variable of the table is read (the test above sets them all).
        assert_eq!(ENV_OVERRIDES.len(), 16);
    }

    #[test]
    fn a_flag_set_to_off_leaves_the_default() {
        let o = with(&[("HOIST_NO_GRAPHS", "0"), ("HOIST_PROFILE", "off")]).unwrap();
        assert!(o.tuning.graphs);
        assert!(!o.tuning.profile);
    }

    #[test]
    fn invalid_values_name_the_variable_and_what_it_accepts() {
        for (name, value, accepted) in [
            ("HOIST_GEMV_WARPS", "3", "1, 2, 4, 8 or 16"),
            ("HOIST_GEMV_UNROLL", "x", "1 to 16"),
            ("HOIST_Q4T_MIN_BLOCKS", "5", "1 to 4"),
            ("HOIST_DECODE_GEMV", "cuBLAS!", "kernels or cublas"),
            ("HOIST_NO_GRAPHS", "maybe", FLAG_VALUES),
        ] {
            let msg = with(&[(name, value)]).unwrap_err().to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(msg.contains(value), "{msg}");
            assert!(msg.contains(accepted), "{msg}");
        }
        assert!(with(&[("HOIST_KERNEL_CACHE", "")]).is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let t = GpuTuning {
            q4t_warps: 5,
            ..GpuTuning::default()
        };
        let msg = t.validate().unwrap_err().to_string();
        assert!(msg.contains("GpuTuning::q4t_warps"), "{msg}");
        assert!(msg.contains("4, 8 or 16"), "{msg}");
    }
}
