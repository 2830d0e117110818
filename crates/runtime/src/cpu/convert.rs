//! Element conversions to f32: bf16, f16, (through [`crate::quant`]) every GGUF type the CPU
//! reads, and MLX's affine-quantized tensors ([`affine_to_f32`]); and ggml's Q8_0 and Q4_0
//! quantizers.
//!
//! The quantizers mirror ggml's reference ones (`quantize_row_q8_0_ref`, `…_q4_0_ref`); they
//! are here so tests can make quantized weights, and for the GPU kernels' checks. Block
//! layouts: [`crate::quant::legacy`].

use half::{bf16, f16};
use hoist_format::{DType, TensorInfo};

use crate::quant::affine::{self, AffineSpec};
pub use crate::quant::legacy::{dequantize_q4_0, dequantize_q8_0};
use crate::quant::{self, QuantError};
use crate::weights::WeightError;

/// Elements in a Q8_0 or Q4_0 block.
pub const QK: usize = quant::legacy::QK;
/// Bytes in a Q8_0 block.
pub const Q8_0_BLOCK_BYTES: usize = quant::legacy::Q8_0_BYTES;
/// Bytes in a Q4_0 block.
pub const Q4_0_BLOCK_BYTES: usize = quant::legacy::Q4_0_BYTES;

fn halves(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

/// Little-endian f16 values to f32.
pub fn f16_to_f32(bytes: &[u8]) -> Vec<f32> {
    halves(bytes).map(|h| f16::from_bits(h).to_f32()).collect()
}

/// Little-endian bf16 values to f32.
pub fn bf16_to_f32(bytes: &[u8]) -> Vec<f32> {
    halves(bytes).map(|h| bf16::from_bits(h).to_f32()).collect()
}

/// Little-endian f32 values.
pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// ggml's reference Q8_0 quantizer: `d = max|x| / 127`, `q = round(x / d)`. `x.len()` must be
/// a multiple of 32 (a trailing partial block is dropped).
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK * Q8_0_BLOCK_BYTES);
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// ggml's reference Q4_0 quantizer: `d = m / −8` where `m` is the element of largest
/// magnitude, `q = min(15, trunc(x / d + 8.5))`. `x.len()` must be a multiple of 32.
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK * Q4_0_BLOCK_BYTES);
    for block in x.chunks_exact(QK) {
        let max = block
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_bits().to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as u8).min(15);
        for j in 0..QK / 2 {
            out.push(q(block[j]) | (q(block[j + QK / 2]) << 4));
        }
    }
    out
}

/// A loaded tensor's bytes as f32, whatever its (supported) element type: safetensors' float
/// types here, every GGUF type through [`quant::dequantize`].
pub fn tensor_to_f32(info: &TensorInfo, bytes: &[u8]) -> Result<Vec<f32>, WeightError> {
    let elements = info.elements();
    let bad = || WeightError::Bytes {
        name: info.name.clone(),
        len: bytes.len(),
        elements,
        dtype: info.dtype,
    };
    if info.dtype.byte_len(elements) != Some(bytes.len() as u64) {
        return Err(bad());
    }
    let out = match info.dtype {
        DType::F32 => f32_from_le(bytes),
        DType::F16 => f16_to_f32(bytes),
        DType::BF16 => bf16_to_f32(bytes),
        DType::Ggml(ty) => {
            let elems = usize::try_from(elements).map_err(|_| bad())?;
            quant::dequantize(ty, bytes, elems).map_err(|e| match e {
                QuantError::Unsupported { .. } => WeightError::Convert {
                    name: info.name.clone(),
                    dtype: info.dtype,
                },
                QuantError::PartialBlock { .. } | QuantError::Length { .. } => bad(),
            })?
        }
        dtype => {
            return Err(WeightError::Convert {
                name: info.name.clone(),
                dtype,
            })
        }
    };
    if out.len() as u64 != elements {
        return Err(bad());
    }
    Ok(out)
}

/// An MLX affine-quantized tensor as f32, `[..., out, in]` row-major: its packed U32 weight,
/// scales and biases (each an info and its bytes), dequantized with `spec`.
pub fn affine_to_f32(
    spec: AffineSpec,
    weight: (&TensorInfo, &[u8]),
    scales: (&TensorInfo, &[u8]),
    biases: (&TensorInfo, &[u8]),
) -> Result<Vec<f32>, WeightError> {
    let shape = affine::logical_shape(spec, weight.0, scales.0, biases.0)?;
    let name = &weight.0.name;
    let cols = shape.last().and_then(|&c| usize::try_from(c).ok());
    let cols = cols.ok_or_else(|| WeightError::Convert {
        name: name.clone(),
        dtype: weight.0.dtype,
    })?;
    let s = tensor_to_f32(scales.0, scales.1)?;
    let b = tensor_to_f32(biases.0, biases.1)?;
    Ok(affine::dequantize(spec, weight.1, &s, &b, cols, name)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_format::GgmlType;
    use proptest::prelude::*;

    #[test]
    fn known_blocks() {
        // Q8_0: d = 0.5 (f16 0x3800), q = 0, 1, -1, 2, …
        let mut b = vec![0x00, 0x38];
        b.extend((0..32).map(|j: i32| (if j % 2 == 0 { j / 2 } else { -(j / 2 + 1) }) as i8 as u8));
        let v = dequantize_q8_0(&b);
        assert_eq!(&v[..4], &[0.0, -0.5, 0.5, -1.0]);
        assert_eq!(v[31], -8.0);

        // Q4_0: d = 2 (f16 0x4000); byte j = low nibble j, high nibble 15 - j.
        let mut b = vec![0x00, 0x40];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequantize_q4_0(&b);
        assert_eq!(v[0], -16.0, "low nibble 0 of byte 0 is element 0");
        assert_eq!(v[15], 14.0, "low nibble 15 of byte 15 is element 15");
        assert_eq!(v[16], 14.0, "high nibble of byte 0 is element 16");
        assert_eq!(v[31], -16.0);
    }

    #[test]
    fn half_conversions() {
        assert_eq!(bf16_to_f32(&[0x80, 0x3f, 0x00, 0xc0]), vec![1.0, -2.0]);
        assert_eq!(f16_to_f32(&[0x00, 0x3c, 0x00, 0xb8]), vec![1.0, -0.5]);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let info = TensorInfo {
            name: "w".into(),
            dtype: DType::Ggml(GgmlType::Q8_0),
            shape: vec![2, 32],
            file: 0,
            offset: 0,
            len: 68,
        };
        assert!(tensor_to_f32(&info, &[0u8; 68]).is_ok());
        let e = tensor_to_f32(&info, &[0u8; 67]).unwrap_err().to_string();
        assert!(e.contains("'w'") && e.contains("67 bytes"), "{e}");
    }

    fn blocks() -> impl Strategy<Value = Vec<f32>> {
        (1usize..4, 0.01f32..100.0).prop_flat_map(|(n, scale)| {
            prop::collection::vec(-1f32..1.0, n * QK)
                .prop_map(move |v| v.into_iter().map(|x| x * scale).collect())
        })
    }

    proptest! {
        #[test]
        fn q8_0_round_trip_error_is_half_a_step(x in blocks()) {
            let q = quantize_q8_0(&x);
            prop_assert_eq!(q.len(), x.len() / QK * Q8_0_BLOCK_BYTES);
            let y = dequantize_q8_0(&q);
            for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
                let d = f16_to_f32(&q[b * Q8_0_BLOCK_BYTES..][..2])[0];
                for (a, r) in xb.iter().zip(yb) {
                    // Half a step, plus the f16 rounding of d over up to 127 steps.
                    prop_assert!((a - r).abs() <= 0.5 * d + 127.0 * d / 1024.0 + 1e-6,
                        "x={a} deq={r} d={d}");
                }
            }
        }

        #[test]
        fn q4_0_round_trip_error_is_one_step(x in blocks()) {
            let q = quantize_q4_0(&x);
            prop_assert_eq!(q.len(), x.len() / QK * Q4_0_BLOCK_BYTES);
            let y = dequantize_q4_0(&q);
            for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
                let d = f16_to_f32(&q[b * Q4_0_BLOCK_BYTES..][..2])[0].abs();
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                // The largest element is exact up to d's rounding; one on the other side at the
                // same magnitude clips from 8 steps to 7: one step; the rest half a step.
                for (a, r) in xb.iter().zip(yb) {
                    prop_assert!((a - r).abs() <= d + 8.0 * d / 1024.0 + 1e-6,
                        "x={a} deq={r} d={d} amax={amax}");
                }
            }
        }
    }
}
