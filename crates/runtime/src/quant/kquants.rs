//! ggml's k-quants: super-blocks of 256 elements in sub-blocks of 16 or 32, each sub-block
//! with its own small integer scale (and min) multiplied by the super-block's f16 `d` (`dmin`).
//!
//! Layouts, in byte order (little-endian):
//!
//! | type | bytes | fields | element of sub-block `j` |
//! | --- | --- | --- | --- |
//! | Q2_K | 84 | `scales[16]` (4-bit scale, 4-bit min), `qs[64]` (2 bits), `d`, `dmin` | `(d·sc)·q − dmin·m` |
//! | Q3_K | 110 | `hmask[32]` (bit 2, inverted), `qs[64]` (2 bits), `scales[12]` (6-bit), `d` | `(d·(sc − 32))·q` |
//! | Q4_K | 144 | `d`, `dmin`, `scales[12]` (6-bit scales and mins), `qs[128]` (4 bits) | `(d·sc)·q − dmin·m` |
//! | Q5_K | 176 | `d`, `dmin`, `scales[12]`, `qh[32]` (bit 4), `qs[128]` | `(d·sc)·q − dmin·m` |
//! | Q6_K | 210 | `ql[128]` (4 bits), `qh[64]` (2 bits), `scales[16]` (`i8`), `d` | `(d·sc)·(q − 32)` |
//!
//! Where the bits of an element sit is spelled out in each function.

use super::{f16_at, per_block};

/// Elements in a k-quant super-block.
pub const QK_K: usize = 256;
/// Bytes in a Q2_K block.
pub const Q2_K_BYTES: usize = QK_K / 16 + QK_K / 4 + 2 + 2;
/// Bytes in a Q3_K block.
pub const Q3_K_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
/// Bytes in a Q4_K block.
pub const Q4_K_BYTES: usize = 2 + 2 + K_SCALE_BYTES + QK_K / 2;
/// Bytes in a Q5_K block.
pub const Q5_K_BYTES: usize = 2 + 2 + K_SCALE_BYTES + QK_K / 8 + QK_K / 2;
/// Bytes in a Q6_K block.
pub const Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
/// Bytes of Q4_K's and Q5_K's packed 6-bit scales and mins.
const K_SCALE_BYTES: usize = 12;

/// Element `e` of a super-block whose 2-bit values are packed as ggml's Q2_K and Q3_K `qs`:
/// each half of 128 elements reads 32 bytes, element `32·s + l` of the half from bits `2s`
/// of byte `l`.
fn two_bits(qs: &[u8], e: usize) -> u8 {
    let (half, s, l) = (e / 128, (e % 128) / 32, e % 32);
    (qs[half * 32 + l] >> (2 * s)) & 3
}

/// Q2_K blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q2_k(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q2_K_BYTES, QK_K>(bytes, |b, out| {
        let (scales, qs) = (&b[..16], &b[16..80]);
        let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
        for (e, o) in out.iter_mut().enumerate() {
            let sc = scales[e / 16];
            let dl = d * f32::from(sc & 0x0f);
            let ml = dmin * f32::from(sc >> 4);
            *o = dl * f32::from(two_bits(qs, e)) - ml;
        }
    })
}

/// The 16 signed 6-bit scales of a Q3_K block: the low 4 bits of scale `i` are nibble `i / 8`
/// of byte `i % 8`, the high 2 bits are bits `2·(i / 4)` of byte `8 + i % 4`.
fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    std::array::from_fn(|i| {
        let low = (s[i % 8] >> (4 * (i / 8))) & 0x0f;
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

/// Q3_K blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q3_k(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q3_K_BYTES, QK_K>(bytes, |b, out| {
        let (hmask, qs) = (&b[..32], &b[32..96]);
        let scales = q3_k_scales(&b[96..108]);
        let d = f16_at(b, 108);
        for (e, o) in out.iter_mut().enumerate() {
            // Bit 2 of element 32·k + l is bit k of hmask[l]; a clear bit subtracts 4.
            let high = (hmask[e % 32] >> (e / 32)) & 1;
            let q = two_bits(qs, e) as i8 - if high == 0 { 4 } else { 0 };
            *o = d * f32::from(scales[e / 16]) * f32::from(q);
        }
    })
}

/// The 8 unsigned 6-bit scales and mins of a Q4_K or Q5_K block: for `k < 4`, scale `k` and
/// min `k` are the low 6 bits of bytes `k` and `4 + k`; scale and min `4 + k` take their low 4
/// bits from the nibbles of byte `8 + k` and their top 2 bits from the top bits of bytes `k`
/// and `4 + k`.
fn k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let scale = |j: usize| {
        if j < 4 {
            s[j] & 63
        } else {
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 2) & 0x30)
        }
    };
    let min = |j: usize| {
        if j < 4 {
            s[j + 4] & 63
        } else {
            (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30)
        }
    };
    (std::array::from_fn(scale), std::array::from_fn(min))
}

/// Element `e`'s 4 bits in a Q4_K/Q5_K `qs`: sub-blocks `2c` and `2c + 1` share bytes
/// `32c..32c + 32`, the first in the low nibbles.
fn k_nibble(qs: &[u8], e: usize) -> u8 {
    let (j, l) = (e / 32, e % 32);
    (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f
}

/// Q4_K blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q4_k(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q4_K_BYTES, QK_K>(bytes, |b, out| {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, m) = k_scales_mins(&b[4..16]);
        let qs = &b[16..];
        for (e, o) in out.iter_mut().enumerate() {
            let j = e / 32;
            let dl = d * f32::from(sc[j]);
            let ml = dmin * f32::from(m[j]);
            *o = dl * f32::from(k_nibble(qs, e)) - ml;
        }
    })
}

/// Q5_K blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q5_k(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q5_K_BYTES, QK_K>(bytes, |b, out| {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, m) = k_scales_mins(&b[4..16]);
        let (qh, qs) = (&b[16..48], &b[48..]);
        for (e, o) in out.iter_mut().enumerate() {
            let j = e / 32;
            // Bit 4 of element l of sub-block j is bit j of qh[l].
            let q = k_nibble(qs, e) | (((qh[e % 32] >> j) & 1) << 4);
            let dl = d * f32::from(sc[j]);
            let ml = dmin * f32::from(m[j]);
            *o = dl * f32::from(q) - ml;
        }
    })
}

/// Q6_K blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q6_k(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q6_K_BYTES, QK_K>(bytes, |b, out| {
        let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
        let d = f16_at(b, 208);
        for (e, o) in out.iter_mut().enumerate() {
            // Each half of 128 elements reads 64 ql bytes (elements 64·n + m from nibble n of
            // byte m) and 32 qh bytes (elements 32·s + l from bits 2s of byte l).
            let (half, r) = (e / 128, e % 128);
            let low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
            let high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
            let q = (low | (high << 4)) as i8 - 32;
            *o = d * f32::from(scales[e / 16] as i8) * f32::from(q);
        }
    })
}
