//! ggml's non-linear 4-bit types: each 4-bit index picks one of 16 fixed levels
//! ([`KVALUES`]), scaled by the block's f16 `d` (IQ4_NL), or by `d` times a 6-bit sub-block
//! scale (IQ4_XS).
//!
//! | type | bytes | fields | element |
//! | --- | --- | --- | --- |
//! | IQ4_NL | 18 (32 elements) | `d`, 16 × nibbles (as Q4_0) | `d · kvalues[q]` |
//! | IQ4_XS | 136 (256 elements) | `d`, `scales_h: u16`, `scales_l[4]`, `qs[128]` | `(d·(sc − 32)) · kvalues[q]` |

use super::kquants::QK_K;
use super::legacy::QK;
use super::{f16_at, per_block};

/// The 16 levels of IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`).
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];
/// Bytes in an IQ4_NL block.
pub const IQ4_NL_BYTES: usize = 2 + QK / 2;
/// Bytes in an IQ4_XS block.
pub const IQ4_XS_BYTES: usize = 2 + 2 + QK_K / 64 + QK_K / 2;

fn level(q: u8) -> f32 {
    f32::from(KVALUES[usize::from(q & 0x0f)])
}

/// IQ4_NL blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_iq4_nl(bytes: &[u8]) -> Vec<f32> {
    per_block::<IQ4_NL_BYTES, QK>(bytes, |b, out| {
        let d = f16_at(b, 0);
        let qs = &b[2..];
        let (low, high) = out.split_at_mut(QK / 2);
        for ((lo, hi), &q) in low.iter_mut().zip(high).zip(qs) {
            *lo = d * level(q);
            *hi = d * level(q >> 4);
        }
    })
}

/// IQ4_XS blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_iq4_xs(bytes: &[u8]) -> Vec<f32> {
    per_block::<IQ4_XS_BYTES, QK_K>(bytes, |b, out| {
        let d = f16_at(b, 0);
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        let (scales_l, qs) = (&b[4..8], &b[8..]);
        // Sub-block i of 32: its 6-bit scale is nibble i % 2 of scales_l[i / 2] with bits
        // 2i..2i + 2 of scales_h on top; its elements l and l + 16 are the nibbles of
        // qs[16i + l].
        for (i, (sub, q)) in out
            .chunks_exact_mut(32)
            .zip(qs.chunks_exact(16))
            .enumerate()
        {
            let low = (scales_l[i / 2] >> (4 * (i % 2))) & 0x0f;
            let high = ((scales_h >> (2 * i)) & 3) as u8;
            let dl = d * f32::from((low | (high << 4)) as i8 - 32);
            let (first, second) = sub.split_at_mut(16);
            for ((lo, hi), &byte) in first.iter_mut().zip(second).zip(q) {
                *lo = dl * level(byte);
                *hi = dl * level(byte >> 4);
            }
        }
    })
}
