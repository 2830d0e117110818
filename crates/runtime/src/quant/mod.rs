//! CPU dequantization of GGUF tensors to f32: the plain types, ggml's legacy block types
//! ([`legacy`]: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), the k-quants ([`kquants`]: Q2_K to Q6_K) and the
//! non-linear 4-bit types ([`iquants`]: IQ4_NL, IQ4_XS). MLX's affine-quantized safetensors
//! ([`affine`]) are dequantized at load too, from their packed weights, scales and biases.
//!
//! Each dequantizer computes in the order of f32 operations gguf-py's `gguf.quants.dequantize`
//! uses (f16 scales widened to f32, `d · scale` before `· q`, `dmin · m` subtracted last), so
//! results equal it bit for bit (tests/quant.rs checks this on random and extreme blocks). In
//! these layouts a scale times a quant always fits f32's 24-bit mantissa, so the products are
//! exact and the only rounding is the final `+ m` / `− dmin·m`.
//! Block sizes come from [`GgmlType::block`]; the family files know only each block's layout.

pub mod affine;
pub mod iquants;
pub mod kquants;
pub mod legacy;

use half::f16;
use hoist_format::GgmlType;

use crate::cpu::convert::{bf16_to_f32, f16_to_f32, f32_from_le};

/// Every block-quantized type the CPU dequantizes.
pub const QUANTIZED: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// The plain types read besides [`QUANTIZED`].
const PLAIN: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// Bytes could not be dequantized.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The type has no dequantizer here.
    #[error("ggml type {} (id {}) has no CPU dequantizer; hoist reads {}", .ty.name(), .ty.0, supported_names())]
    Unsupported {
        /// The type.
        ty: GgmlType,
    },
    /// The element count is not a whole number of blocks.
    #[error("{elems} {} values are not a whole number of {block_elems}-value blocks", .ty.name())]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// Elements asked for.
        elems: usize,
        /// Elements per block of the type.
        block_elems: usize,
    },
    /// The bytes are not the size of the elements.
    #[error("{len_bytes} bytes do not hold {elems} {} values ({expected_bytes} bytes)", .ty.name())]
    Length {
        /// The type.
        ty: GgmlType,
        /// Bytes given.
        len_bytes: usize,
        /// Elements asked for.
        elems: usize,
        /// Bytes those elements take.
        expected_bytes: u128,
    },
}

/// One block type's dequantizer over whole blocks.
type Decoder = fn(&[u8]) -> Vec<f32>;

fn decoder(ty: GgmlType) -> Option<Decoder> {
    Some(match ty {
        GgmlType::F32 => f32_from_le,
        GgmlType::F16 => f16_to_f32,
        GgmlType::BF16 => bf16_to_f32,
        GgmlType::Q4_0 => legacy::dequantize_q4_0,
        GgmlType::Q4_1 => legacy::dequantize_q4_1,
        GgmlType::Q5_0 => legacy::dequantize_q5_0,
        GgmlType::Q5_1 => legacy::dequantize_q5_1,
        GgmlType::Q8_0 => legacy::dequantize_q8_0,
        GgmlType::Q2_K => kquants::dequantize_q2_k,
        GgmlType::Q3_K => kquants::dequantize_q3_k,
        GgmlType::Q4_K => kquants::dequantize_q4_k,
        GgmlType::Q5_K => kquants::dequantize_q5_k,
        GgmlType::Q6_K => kquants::dequantize_q6_k,
        GgmlType::IQ4_NL => iquants::dequantize_iq4_nl,
        GgmlType::IQ4_XS => iquants::dequantize_iq4_xs,
        _ => return None,
    })
}

/// Whether [`dequantize`] reads `ty`.
pub fn supports(ty: GgmlType) -> bool {
    decoder(ty).is_some()
}

/// The names of every type [`dequantize`] reads, for messages: `"F32, F16, BF16, Q4_0, …"`.
pub fn supported_names() -> String {
    PLAIN
        .iter()
        .chain(QUANTIZED)
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `elems` values of type `ty` stored in `bytes`, as f32.
///
/// # Errors
/// [`QuantError::Unsupported`] for a type without a dequantizer, [`QuantError::PartialBlock`]
/// when `elems` is not whole blocks, [`QuantError::Length`] when `bytes` is not their size.
pub fn dequantize(ty: GgmlType, bytes: &[u8], elems: usize) -> Result<Vec<f32>, QuantError> {
    let (Some(decode), Some((block_elems, block_bytes))) = (decoder(ty), ty.block()) else {
        return Err(QuantError::Unsupported { ty });
    };
    let (block_elems, block_bytes) = (block_elems as usize, block_bytes as u128);
    if !elems.is_multiple_of(block_elems) {
        return Err(QuantError::PartialBlock {
            ty,
            elems,
            block_elems,
        });
    }
    let expected_bytes = (elems / block_elems) as u128 * block_bytes;
    if bytes.len() as u128 != expected_bytes {
        return Err(QuantError::Length {
            ty,
            len_bytes: bytes.len(),
            elems,
            expected_bytes,
        });
    }
    Ok(decode(bytes))
}

/// Decodes each whole `BLOCK_BYTES`-byte block of `bytes` into `BLOCK_ELEMS` values with
/// `decode` (a trailing partial block is ignored: [`dequantize`] checks lengths first).
fn per_block<const BLOCK_BYTES: usize, const BLOCK_ELEMS: usize>(
    bytes: &[u8],
    decode: impl Fn(&[u8; BLOCK_BYTES], &mut [f32; BLOCK_ELEMS]),
) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / BLOCK_BYTES * BLOCK_ELEMS];
    for (src, dst) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK_ELEMS))
    {
        // Always arrays: the chunks have exactly these lengths.
        if let (Ok(src), Ok(dst)) = (src.try_into(), dst.try_into()) {
            decode(src, dst);
        }
    }
    out
}

/// The little-endian f16 at `bytes[at..at + 2]`, widened to f32 (exactly, as numpy does).
fn f16_at<const N: usize>(bytes: &[u8; N], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each family's block layout adds up to the format crate's block size.
    #[test]
    fn layouts_match_the_format_table() {
        let layouts: [(GgmlType, &str, usize, usize); 12] = [
            (GgmlType::Q4_0, "Q4_0", legacy::Q4_0_BYTES, legacy::QK),
            (GgmlType::Q4_1, "Q4_1", legacy::Q4_1_BYTES, legacy::QK),
            (GgmlType::Q5_0, "Q5_0", legacy::Q5_0_BYTES, legacy::QK),
            (GgmlType::Q5_1, "Q5_1", legacy::Q5_1_BYTES, legacy::QK),
            (GgmlType::Q8_0, "Q8_0", legacy::Q8_0_BYTES, legacy::QK),
            (GgmlType::Q2_K, "Q2_K", kquants::Q2_K_BYTES, kquants::QK_K),
            (GgmlType::Q3_K, "Q3_K", kquants::Q3_K_BYTES, kquants::QK_K),
            (GgmlType::Q4_K, "Q4_K", kquants::Q4_K_BYTES, kquants::QK_K),
            (GgmlType::Q5_K, "Q5_K", kquants::Q5_K_BYTES, kquants::QK_K),
            (GgmlType::Q6_K, "Q6_K", kquants::Q6_K_BYTES, kquants::QK_K),
            (
                GgmlType::IQ4_NL,
                "IQ4_NL",
                iquants::IQ4_NL_BYTES,
                legacy::QK,
            ),
            (
                GgmlType::IQ4_XS,
                "IQ4_XS",
                iquants::IQ4_XS_BYTES,
                kquants::QK_K,
            ),
        ];
        for (ty, name, bytes, elems) in layouts {
            assert_eq!(ty.name(), name);
            assert_eq!(ty.block(), Some((elems as u64, bytes as u64)), "{name}");
            assert!(QUANTIZED.contains(&ty) && supports(ty), "{name}");
        }
        assert_eq!(QUANTIZED.len(), layouts.len());
    }

    #[test]
    fn plain_types_and_names() {
        let v = dequantize(GgmlType::F16, &[0x00, 0x3c, 0x00, 0xb8], 2).unwrap();
        assert_eq!(v, [1.0, -0.5]);
        let names = supported_names();
        assert!(names.starts_with("F32, F16, BF16, Q4_0"), "{names}");
        assert!(names.ends_with("IQ4_NL, IQ4_XS"), "{names}");
        assert!(!supports(GgmlType(16)), "IQ2_XXS");
    }

    /// Hand-made k-quant blocks whose values are known, to pin the element order.
    #[test]
    fn known_q4_k_and_q6_k_blocks() {
        // Q4_K: d = 1, dmin = 0.5; sub-block j has scale j + 1 and min j; element l of
        // sub-block j is nibble (l % 16).
        let mut b = vec![0x00, 0x3c, 0x00, 0x38];
        let (sc, m): ([u8; 8], [u8; 8]) = ([1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7]);
        b.extend(&sc[..4]);
        b.extend(&m[..4]);
        b.extend((4..8).map(|k| sc[k] | (m[k] << 4)));
        for _ in 0..4 {
            b.extend((0..32u8).map(|l| (l % 16) | ((l % 16) << 4)));
        }
        let v = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
        for (e, x) in v.iter().enumerate() {
            let (j, l) = (e / 32, e % 32);
            let want = (j as f32 + 1.0) * (l % 16) as f32 - 0.5 * j as f32;
            assert_eq!(*x, want, "element {e}");
        }

        // Q6_K: d = 2, group g scale g - 8; every 6-bit q = 33 (ql 1, qh 2), so q - 32 = 1.
        let mut b = vec![0x11u8; 128];
        b.extend([0xaau8; 64]);
        b.extend((0..16).map(|g| (g as i8 - 8) as u8));
        b.extend([0x00, 0x40]);
        let v = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
        for (e, x) in v.iter().enumerate() {
            assert_eq!(*x, 2.0 * ((e / 16) as f32 - 8.0), "element {e}");
        }
    }
}
