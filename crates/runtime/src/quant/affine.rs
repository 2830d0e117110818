//! MLX's affine quantization (mlx-lm's quantized safetensors): the spec from `config.json`,
//! the checks on a quantized tensor's three parts, and dequantization to f32.
//!
//! A quantized linear (or embedding) `X` is stored as three tensors:
//!
//! - `X.weight`: U32, `[..., out, in·bits/32]`. Each row is a little-endian bit stream: element
//!   `j` is the `bits` bits from bit `j·bits` on (so for 2, 4 and 8 bits, word `j·bits/32`, bit
//!   `(j·bits) % 32`; 3, 5 and 6-bit elements may straddle two bytes, as MLX packs them).
//! - `X.scales`, `X.biases`: a float type, `[..., out, in/group_size]`.
//!
//! `w[o, j] = scales[o, j/g] · q[o, j] + biases[o, j/g]`. Leading dimensions (mlx-lm's stacked
//! experts, `[experts, out, …]`) are rows like any other.
//!
//! `config.json` holds `"quantization": {"group_size": g, "bits": b}` (mlx-lm also writes it
//! under `quantization_config`), with per-module overrides: a module path mapped to its own
//! `{"group_size", "bits"}`, or to `false` for a module left in floats.

use std::collections::BTreeMap;

use hoist_format::{DType, TensorInfo, TensorTable};
use serde_json::Value;

/// Bit widths MLX packs as one little-endian bit stream per row (all the widths it has).
pub const SUPPORTED_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
/// Group sizes MLX's affine quantization takes.
pub const SUPPORTED_GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// A quantization spec or tensor that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum AffineError {
    /// A key of the `quantization` entry of `config.json` is wrong or not supported.
    #[error("quantization key '{key}' {reason}")]
    Spec {
        /// The key (`bits`, `group_size`, `mode`, or a module path's).
        key: String,
        /// What is wrong and what is supported.
        reason: String,
    },
    /// A quantized tensor's parts do not fit together or the spec.
    #[error("quantized tensor '{name}': {reason}")]
    Tensor {
        /// The packed tensor (`X.weight`).
        name: String,
        /// What is wrong, and what to do.
        reason: String,
    },
}

/// One module's quantization: bits per weight and weights per (scale, bias) group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffineSpec {
    /// Bits of one quantized weight (one of [`SUPPORTED_BITS`]).
    pub bits: u32,
    /// Consecutive weights of a row sharing a scale and bias (one of
    /// [`SUPPORTED_GROUP_SIZES`]).
    pub group_size: usize,
}

impl AffineSpec {
    /// A checked spec; `key` names the entry in errors.
    pub fn new(bits: u32, group_size: usize, key: &str) -> Result<AffineSpec, AffineError> {
        let spec_err = |reason: String| AffineError::Spec {
            key: key.into(),
            reason,
        };
        if !SUPPORTED_BITS.contains(&bits) {
            return Err(spec_err(format!(
                "has bits = {bits}; MLX affine quantization has {SUPPORTED_BITS:?}"
            )));
        }
        if !SUPPORTED_GROUP_SIZES.contains(&group_size) {
            return Err(spec_err(format!(
                "has group_size = {group_size}; supported: {SUPPORTED_GROUP_SIZES:?}"
            )));
        }
        Ok(AffineSpec { bits, group_size })
    }

    /// The largest quantized value, `2^bits − 1`.
    fn max_q(self) -> u32 {
        (1 << self.bits) - 1
    }

    fn from_json(v: &Value, key: &str) -> Result<AffineSpec, AffineError> {
        let spec_err = |reason: &str| AffineError::Spec {
            key: key.into(),
            reason: reason.into(),
        };
        let num = |name: &str| {
            v.get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| spec_err(&format!("has no non-negative integer '{name}'")))
        };
        let bits = u32::try_from(num("bits")?).map_err(|_| spec_err("has bits out of range"))?;
        let group = usize::try_from(num("group_size")?)
            .map_err(|_| spec_err("has group_size too large"))?;
        if let Some(mode) = v.get("mode") {
            if mode.as_str() != Some("affine") {
                return Err(spec_err(&format!(
                    "has mode {mode}; hoist reads MLX's \"affine\" mode only (not mxfp4/nvfp4/mxfp8)"
                )));
            }
        }
        AffineSpec::new(bits, group, key)
    }
}

/// The `quantization` entry of an mlx-lm `config.json`: a default spec and per-module ones.
#[derive(Clone, Debug, PartialEq)]
pub struct AffineConfig {
    /// The spec of every quantized module without an override.
    pub default: AffineSpec,
    /// Module path (`model.layers.0.mlp.gate`) → its own spec, or `None` for a module mlx-lm
    /// left unquantized.
    pub overrides: BTreeMap<String, Option<AffineSpec>>,
}

impl AffineConfig {
    /// Reads the entry (`{"group_size", "bits", "mode"?, "<module>": {…} | false}`); `key`
    /// names it in errors (`quantization` or `quantization_config`).
    pub fn from_json(v: &Value, key: &str) -> Result<AffineConfig, AffineError> {
        let Some(obj) = v.as_object() else {
            return Err(AffineError::Spec {
                key: key.into(),
                reason: "is not an object".into(),
            });
        };
        let default = AffineSpec::from_json(v, key)?;
        let mut overrides = BTreeMap::new();
        for (module, value) in obj {
            let sub = format!("{key}.{module}");
            let spec = match value {
                Value::Object(_) => Some(AffineSpec::from_json(value, &sub)?),
                Value::Bool(false) => None,
                Value::Bool(true) => Some(default),
                // `bits`, `group_size`, `mode` and any other scalar setting.
                _ => continue,
            };
            overrides.insert(module.clone(), spec);
        }
        Ok(AffineConfig { default, overrides })
    }

    /// The spec of module `module` (a tensor name without `.weight`), if it is quantized.
    pub fn spec_for(&self, module: &str) -> Option<AffineSpec> {
        match self.overrides.get(module) {
            Some(spec) => *spec,
            None => Some(self.default),
        }
    }
}

/// Checks a quantized tensor's three parts against `spec` and returns the shape of the matrix
/// they hold (`[..., out, in]`, what the unquantized tensor would be).
pub fn logical_shape(
    spec: AffineSpec,
    weight: &TensorInfo,
    scales: &TensorInfo,
    biases: &TensorInfo,
) -> Result<Vec<u64>, AffineError> {
    let bad = |reason: String| AffineError::Tensor {
        name: weight.name.clone(),
        reason,
    };
    if weight.dtype != DType::U32 {
        return Err(bad(format!(
            "has dtype {} beside its scales; MLX packs quantized weights in U32",
            weight.dtype
        )));
    }
    for part in [scales, biases] {
        if !matches!(part.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(bad(format!(
                "'{}' has dtype {}; scales and biases must be F32, F16 or BF16",
                part.name, part.dtype
            )));
        }
    }
    if scales.shape != biases.shape {
        return Err(bad(format!(
            "scales {:?} and biases {:?} differ in shape; the checkpoint is damaged",
            scales.shape, biases.shape
        )));
    }
    let (Some((&words, outer)), Some((&groups, s_outer))) =
        (weight.shape.split_last(), scales.shape.split_last())
    else {
        return Err(bad("has no dimensions".into()));
    };
    if outer != s_outer {
        return Err(bad(format!(
            "shape {:?} and scales {:?} differ in their leading dimensions",
            weight.shape, scales.shape
        )));
    }
    let cols = words * 32 / u64::from(spec.bits);
    if cols * u64::from(spec.bits) != words * 32 || !cols.is_multiple_of(spec.group_size as u64) {
        return Err(bad(format!(
            "rows of {words} words are not whole groups of {} {}-bit weights; check the \
             config's group_size and bits for this module",
            spec.group_size, spec.bits
        )));
    }
    if groups * spec.group_size as u64 != cols {
        return Err(bad(format!(
            "{words} words hold {cols} {}-bit weights a row, {} groups of {}, but its scales \
             have {groups} a row; check the config's group_size and bits for this module",
            spec.bits,
            cols / spec.group_size as u64,
            spec.group_size
        )));
    }
    Ok([outer, &[cols]].concat())
}

/// Values of every tensor of `table` (what `hoist show` calls its parameters), an
/// affine-quantized weight counted unpacked and its scales and biases not at all (as a GGUF
/// file's block scales are not). A tensor whose parts do not fit counts as stored.
pub fn table_parameters(table: &TensorTable, config: &AffineConfig) -> u64 {
    let parts = |t: &TensorInfo| -> Option<u64> {
        let module = t.name.strip_suffix(".weight")?;
        let scales = table.get(&format!("{module}.scales"))?;
        let biases = table.get(&format!("{module}.biases"))?;
        let shape = logical_shape(config.spec_for(module)?, t, scales, biases).ok()?;
        Some(shape.iter().product())
    };
    let is_part = |name: &str| {
        [".scales", ".biases"].iter().any(|sfx| {
            name.strip_suffix(sfx).is_some_and(|m| {
                table
                    .get(&format!("{m}.weight"))
                    .is_some_and(|w| parts(w).is_some())
            })
        })
    };
    table
        .tensors
        .iter()
        .filter(|t| !is_part(&t.name))
        .map(|t| parts(t).unwrap_or_else(|| t.elements()))
        .sum()
}

/// Dequantizes rows of `cols` weights: `packed` the rows' little-endian bytes (`cols·bits/8`
/// each), `scales` and `biases` their groups (`cols / group_size` each) in f32.
pub fn dequantize(
    spec: AffineSpec,
    packed: &[u8],
    scales: &[f32],
    biases: &[f32],
    cols: usize,
    name: &str,
) -> Result<Vec<f32>, AffineError> {
    let bad = |reason: String| AffineError::Tensor {
        name: name.into(),
        reason,
    };
    let groups_per_row = cols / spec.group_size;
    let bits = spec.bits as usize;
    let row_bytes = cols * bits / 8;
    if groups_per_row == 0 || groups_per_row * spec.group_size != cols {
        return Err(bad(format!(
            "rows of {cols} weights are not whole groups of {}",
            spec.group_size
        )));
    }
    let rows = scales.len() / groups_per_row;
    if biases.len() != scales.len()
        || rows * groups_per_row != scales.len()
        || packed.len() != rows * row_bytes
    {
        return Err(bad(format!(
            "{} packed bytes, {} scales and {} biases are not {rows} rows of {cols} {}-bit \
             weights in groups of {}; the checkpoint is truncated or damaged",
            packed.len(),
            scales.len(),
            biases.len(),
            spec.bits,
            spec.group_size
        )));
    }
    let mask = spec.max_q();
    let mut out = Vec::with_capacity(rows * cols);
    for (r, row) in packed.chunks_exact(row_bytes.max(1)).enumerate() {
        for j in 0..cols {
            let bit = j * bits;
            // At most 8 bits from bit `bit % 8` on: two bytes hold them (the second may be
            // past the row's end only when the first holds them all).
            let lo = u32::from(row[bit / 8]);
            let hi = u32::from(row.get(bit / 8 + 1).copied().unwrap_or(0));
            let q = ((lo | (hi << 8)) >> (bit % 8)) & mask;
            let g = r * groups_per_row + j / spec.group_size;
            out.push(scales[g] * q as f32 + biases[g]);
        }
    }
    Ok(out)
}

/// One tensor quantized by [`quantize`].
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// The packed rows' bytes (little-endian U32 words).
    pub packed: Vec<u8>,
    /// Each group's scale.
    pub scales: Vec<f32>,
    /// Each group's bias.
    pub biases: Vec<f32>,
}

/// MLX's affine quantizer (`mx.quantize`, mode "affine") over rows of `cols` values: per
/// group, the extreme of larger magnitude (`edge`) lands exactly on a level, the bias is that
/// edge, the scale spans the group's range over `2^bits − 1` steps. Returns the packed rows'
/// bytes, the scales and the biases (f32). For tests.
pub fn quantize(spec: AffineSpec, w: &[f32], cols: usize) -> Result<Quantized, AffineError> {
    if cols == 0 || !cols.is_multiple_of(spec.group_size) || !w.len().is_multiple_of(cols) {
        return Err(AffineError::Tensor {
            name: "(quantize)".into(),
            reason: format!(
                "{} values are not rows of {cols} in groups of {}",
                w.len(),
                spec.group_size
            ),
        });
    }
    let n_bins = spec.max_q() as f32;
    let bits = spec.bits as usize;
    let (mut packed, mut scales, mut biases) = (Vec::new(), Vec::new(), Vec::new());
    for row in w.chunks_exact(cols) {
        let mut row_bytes = vec![0u8; cols * bits / 8];
        for (gi, group) in row.chunks_exact(spec.group_size).enumerate() {
            let w_max = group.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let w_min = group.iter().fold(f32::INFINITY, |m, &v| m.min(v));
            let min_heavier = w_min.abs() > w_max.abs();
            let step = ((w_max - w_min) / n_bins).max(1e-7);
            let (mut scale, edge) = if min_heavier {
                (step, w_min)
            } else {
                (-step, w_max)
            };
            let q0 = (edge / scale).round_ties_even();
            let mut bias = 0.0;
            if q0 != 0.0 {
                scale = edge / q0;
                bias = edge;
            }
            for (k, &v) in group.iter().enumerate() {
                let q = ((v - bias) / scale).round_ties_even().clamp(0.0, n_bins) as u32;
                let bit = (gi * spec.group_size + k) * bits;
                let word = q << (bit % 8);
                row_bytes[bit / 8] |= word as u8;
                if let Some(b) = row_bytes.get_mut(bit / 8 + 1) {
                    *b |= (word >> 8) as u8;
                }
            }
            scales.push(scale);
            biases.push(bias);
        }
        packed.extend(row_bytes);
    }
    Ok(Quantized {
        packed,
        scales,
        biases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn info(name: &str, dtype: DType, shape: Vec<u64>) -> TensorInfo {
        let len = dtype.byte_len(shape.iter().product()).unwrap();
        TensorInfo {
            name: name.into(),
            dtype,
            shape,
            file: 0,
            offset: 0,
            len,
        }
    }

    #[test]
    fn spec_with_overrides() {
        let v = json!({
            "group_size": 32, "bits": 4,
            "model.layers.0.mlp.gate": {"group_size": 64, "bits": 8},
            "lm_head": false,
        });
        let c = AffineConfig::from_json(&v, "quantization").unwrap();
        assert_eq!(
            c.default,
            AffineSpec {
                bits: 4,
                group_size: 32
            }
        );
        assert_eq!(
            c.spec_for("model.layers.0.mlp.gate"),
            Some(AffineSpec {
                bits: 8,
                group_size: 64
            })
        );
        assert_eq!(c.spec_for("lm_head"), None);
        assert_eq!(c.spec_for("model.embed_tokens"), Some(c.default));
    }

    #[test]
    fn bad_specs_name_the_key() {
        let e = |v| {
            AffineConfig::from_json(&v, "quantization")
                .unwrap_err()
                .to_string()
        };
        assert!(e(json!({"group_size": 32, "bits": 7})).contains("bits = 7"));
        assert!(e(json!({"group_size": 48, "bits": 4})).contains("group_size = 48"));
        assert!(e(json!({"bits": 4})).contains("'group_size'"));
        let m = e(json!({"group_size": 32, "bits": 4, "mode": "mxfp4"}));
        assert!(m.contains("mode") && m.contains("affine"), "{m}");
        let o = e(json!({"group_size": 32, "bits": 4, "model.x": {"group_size": 32, "bits": 1}}));
        assert!(
            o.contains("quantization.model.x") && o.contains("bits = 1"),
            "{o}"
        );
        assert!(e(json!(4)).contains("not an object"));
    }

    #[test]
    fn packing_by_hand() {
        // 4 bits: element j in word j/8 at bit 4·(j%8); scale 2, bias −1.
        let spec = AffineSpec::new(4, 32, "t").unwrap();
        let mut words = [0u32; 4];
        for j in 0..32u32 {
            words[(j / 8) as usize] |= (j % 16) << (4 * (j % 8));
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let v = dequantize(spec, &bytes, &[2.0], &[-1.0], 32, "t").unwrap();
        let want: Vec<f32> = (0..32).map(|j| 2.0 * (j % 16) as f32 - 1.0).collect();
        assert_eq!(v, want);
        // 3 bits: element 10 straddles bits 30..33 (words 0 and 1).
        let spec = AffineSpec::new(3, 32, "t").unwrap();
        let mut stream = 0u128;
        for j in 0..32u128 {
            stream |= (j % 8) << (3 * j);
        }
        let bytes = &stream.to_le_bytes()[..12];
        let v = dequantize(spec, bytes, &[1.0], &[0.0], 32, "t").unwrap();
        assert_eq!(v, (0..32).map(|j| (j % 8) as f32).collect::<Vec<_>>());
    }

    #[test]
    fn shapes_are_checked() {
        let spec = AffineSpec::new(4, 64, "t").unwrap();
        let w = info("m.weight", DType::U32, vec![8, 16]);
        let s = info("m.scales", DType::BF16, vec![8, 2]);
        assert_eq!(logical_shape(spec, &w, &s, &s).unwrap(), vec![8, 128]);
        let stacked = info("e.weight", DType::U32, vec![3, 8, 16]);
        let ss = info("e.scales", DType::F16, vec![3, 8, 2]);
        assert_eq!(
            logical_shape(spec, &stacked, &ss, &ss).unwrap(),
            vec![3, 8, 128]
        );
        let wrong_group = AffineSpec::new(4, 32, "t").unwrap();
        let e = logical_shape(wrong_group, &w, &s, &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'m.weight'") && e.contains("group_size"), "{e}");
        let short = info("m.biases", DType::BF16, vec![8, 1]);
        let e = logical_shape(spec, &w, &s, &short).unwrap_err().to_string();
        assert!(e.contains("differ in shape"), "{e}");
        let f = info("m.weight", DType::F16, vec![8, 16]);
        assert!(logical_shape(spec, &f, &s, &s).is_err());
        let i = info("m.scales", DType::I32, vec![8, 2]);
        assert!(logical_shape(spec, &w, &i, &s)
            .unwrap_err()
            .to_string()
            .contains("I32"));
    }

    #[test]
    fn truncated_parts_are_errors() {
        let spec = AffineSpec::new(8, 32, "t").unwrap();
        let e = dequantize(spec, &[0; 64], &[1.0], &[0.0, 0.0], 32, "x.weight").unwrap_err();
        assert!(e.to_string().contains("'x.weight'"), "{e}");
        assert!(dequantize(spec, &[0; 63], &[1.0, 1.0], &[0.0, 0.0], 32, "x").is_err());
        assert!(dequantize(spec, &[0; 32], &[1.0], &[0.0], 16, "x").is_err());
    }

    #[test]
    fn extreme_scales() {
        let spec = AffineSpec::new(4, 32, "t").unwrap();
        // A constant group: the scale's floor (1e-7) and an exact edge.
        let Quantized {
            packed: p,
            scales: s,
            biases: b,
        } = quantize(spec, &[3.5; 32], 32).unwrap();
        let v = dequantize(spec, &p, &s, &b, 32, "t").unwrap();
        assert!(v.iter().all(|&x| (x - 3.5).abs() < 1e-5), "{v:?}");
        // Huge and tiny magnitudes keep their relative error.
        for mag in [1e30f32, 1e-30] {
            let w: Vec<f32> = (0..64).map(|j| mag * (j as f32 - 20.0) / 20.0).collect();
            let Quantized {
                packed: p,
                scales: s,
                biases: b,
            } = quantize(spec, &w, 64).unwrap();
            let v = dequantize(spec, &p, &s, &b, 64, "t").unwrap();
            for (a, r) in w.iter().zip(&v) {
                assert!((a - r).abs() <= mag * 0.1 + 1e-6, "{a} {r}");
            }
        }
    }

    proptest! {
        /// Quantize then dequantize is within half a step (plus f32 rounding) of every value,
        /// for every bit width and group size.
        #[test]
        fn round_trip_is_within_half_a_step(
            bits in proptest::sample::select(SUPPORTED_BITS.to_vec()),
            group in proptest::sample::select(SUPPORTED_GROUP_SIZES.to_vec()),
            rows in 1usize..3,
            groups in 1usize..3,
            scale in prop_oneof![Just(1e-6f32), Just(1.0f32), Just(1e4f32), 0.01f32..100.0],
            seed in any::<u64>(),
        ) {
            let spec = AffineSpec::new(bits, group, "t").unwrap();
            let cols = group * groups;
            let mut state = seed | 1;
            let w: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    scale * ((state >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0)
                })
                .collect();
            let Quantized { packed: p, scales: s, biases: b } = quantize(spec, &w, cols).unwrap();
            prop_assert_eq!(p.len(), rows * cols * bits as usize / 8);
            let v = dequantize(spec, &p, &s, &b, cols, "t").unwrap();
            let n = spec.max_q() as f32;
            for (i, (a, r)) in w.iter().zip(&v).enumerate() {
                let (step, bias) = (s[i / group], b[i / group]);
                let (lo, hi) = (bias.min(bias + n * step), bias.max(bias + n * step));
                // f32 rounding of the products over up to 2^bits − 1 steps.
                let slack = 1e-5 * (a.abs() + step.abs() * n) + 1e-12;
                // Inside the levels' range: half a step. MLX puts the heavier extreme exactly on
                // a level, so the other may fall past the last level by under one step (R/(n+1)
                // of the group's range R).
                let tol = if (lo..=hi).contains(a) { 0.5 } else { 1.0 + 1.0 / n };
                prop_assert!((a - r).abs() <= tol * step.abs() + slack,
                    "x={} deq={} step={} bits={}", a, r, step, bits);
            }
        }
    }
}
