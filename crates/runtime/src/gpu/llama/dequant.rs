//! GGUF weight types the GPU kernels do not read yet (the k-quants, Q4_1/Q5_0/Q5_1, IQ4),
//! dequantized at load on the host into the 16-bit type the model computes in, and run as
//! 16-bit matrices.
//!
//! This is what lets the files people download run at all: llama.cpp's `llama-quantize` keeps
//! `output.weight` of a Q4_0 file in Q6_K, and Q4_K_M mixes Q4_K and Q6_K. Matrices of such
//! types cost their 16-bit size in GPU memory and decode time (2 bytes a weight instead of
//! ~0.6) until the GPU has kernels for them; the rest of a mixed file keeps its own type. The
//! dequantizers are the CPU reference's ([`crate::quant`]: bit-equal to gguf-py), rounded once
//! to f16 or bf16, as the GEMMs round their inputs.

use half::{bf16, f16};
use hoist_format::{DType, GgmlType};

use crate::gpu::layers::WType;
use crate::gpu::GpuError;

/// Most values one host thread dequantizes at a time: the unit of the parallel loop (about
/// 8 MiB of f32).
const CHUNK_VALUES: usize = 2 << 20;

/// The GGUF quantized type of `dtype` when the kernels cannot read it but the host can
/// dequantize it; `None` for types the kernels read (and types nobody reads).
pub(crate) fn host_dequantized(dtype: DType) -> Option<GgmlType> {
    match dtype {
        DType::Ggml(t) if WType::of(dtype).is_none() && crate::quant::supports(t) => Some(t),
        _ => None,
    }
}

/// `values` values of `ty` in `bytes`, dequantized and rounded to `to` (F16 or BF16), as the
/// little-endian bytes of a row-major matrix; on up to `threads` threads.
pub(crate) fn dequantize_to_16bit(
    name: &str,
    ty: GgmlType,
    bytes: &[u8],
    values: usize,
    to: WType,
    threads: usize,
) -> Result<Vec<u8>, GpuError> {
    assert!(
        matches!(to, WType::F16 | WType::BF16),
        "16-bit targets only"
    );
    let bad = |why: String| GpuError::Unsupported(format!("tensor {name}: {why}"));
    let (block_values, block_bytes) = ty
        .block()
        .map(|(e, b)| (e as usize, b as usize))
        .ok_or_else(|| bad(format!("{} has no block size", ty.name())))?;
    if !values.is_multiple_of(block_values) || bytes.len() != values / block_values * block_bytes {
        return Err(bad(format!(
            "{} bytes do not hold {values} values of {}",
            bytes.len(),
            ty.name()
        )));
    }
    // Chunks of whole blocks, so that each decodes on its own.
    let chunk_values = CHUNK_VALUES / block_values * block_values;
    let chunk_bytes = chunk_values / block_values * block_bytes;
    let mut out = vec![0u8; values * 2];
    let mut jobs: Vec<(&[u8], &mut [u8])> = bytes
        .chunks(chunk_bytes)
        .zip(out.chunks_mut(chunk_values * 2))
        .collect();
    let per_thread = jobs.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks_mut(per_thread)
            .map(|group| {
                s.spawn(move || -> Result<(), String> {
                    for (src, dst) in group.iter_mut() {
                        let f = crate::quant::dequantize(ty, src, dst.len() / 2)
                            .map_err(|e| e.to_string())?;
                        round_into(&f, to, dst);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => r.map_err(&bad)?,
                Err(_) => return Err(bad("a dequantizing thread panicked".into())),
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// `values` rounded to `to` (F16 or BF16), into `dst` (2 bytes each, little-endian).
fn round_into(values: &[f32], to: WType, dst: &mut [u8]) {
    debug_assert_eq!(values.len() * 2, dst.len());
    for (v, d) in values.iter().zip(dst.chunks_exact_mut(2)) {
        let bits = match to {
            WType::BF16 => bf16::from_f32(*v).to_bits(),
            _ => f16::from_f32(*v).to_bits(),
        };
        d.copy_from_slice(&bits.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random Q6_K blocks (210 bytes, 256 values): scales kept finite by a small f16 `d`.
    fn q6_k_blocks(n: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        let mut out = Vec::with_capacity(n * 210);
        for _ in 0..n {
            for _ in 0..208 {
                out.push(next());
            }
            out.extend_from_slice(&f16::from_f32(0.01).to_bits().to_le_bytes());
        }
        out
    }

    #[test]
    fn parallel_chunks_equal_one_pass_of_the_reference() {
        // More than one chunk, and a last partial one.
        let blocks = CHUNK_VALUES / 256 * 2 + 7;
        let bytes = q6_k_blocks(blocks, 7);
        let values = blocks * 256;
        let reference = crate::quant::dequantize(GgmlType::Q6_K, &bytes, values).unwrap();
        for (to, round) in [
            (
                WType::F16,
                (|v: f32| f16::from_f32(v).to_bits()) as fn(f32) -> u16,
            ),
            (WType::BF16, |v: f32| bf16::from_f32(v).to_bits()),
        ] {
            let got = dequantize_to_16bit("t", GgmlType::Q6_K, &bytes, values, to, 3).unwrap();
            assert_eq!(got.len(), values * 2);
            for (i, (r, g)) in reference.iter().zip(got.chunks_exact(2)).enumerate() {
                assert_eq!(
                    round(*r),
                    u16::from_le_bytes([g[0], g[1]]),
                    "value {i} ({to:?})"
                );
            }
        }
    }

    #[test]
    fn lying_lengths_are_errors_naming_the_tensor() {
        let bytes = q6_k_blocks(2, 1);
        let e = dequantize_to_16bit("blk.0.x", GgmlType::Q6_K, &bytes, 3 * 256, WType::F16, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("blk.0.x") && e.contains("Q6_K"), "{e}");
        let e = dequantize_to_16bit("y", GgmlType::Q6_K, &bytes, 300, WType::F16, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("y"), "{e}");
    }

    #[test]
    fn only_types_without_kernels_are_dequantized_on_the_host() {
        assert_eq!(
            host_dequantized(DType::Ggml(GgmlType::Q6_K)),
            Some(GgmlType::Q6_K)
        );
        assert_eq!(
            host_dequantized(DType::Ggml(GgmlType::Q4_K)),
            Some(GgmlType::Q4_K)
        );
        assert_eq!(host_dequantized(DType::Ggml(GgmlType::Q4_0)), None);
        assert_eq!(host_dequantized(DType::Ggml(GgmlType::Q8_0)), None);
        assert_eq!(host_dequantized(DType::F16), None);
        assert_eq!(host_dequantized(DType::F64), None);
    }
}
