//! ggml's legacy block types: 32 elements a block, one f16 scale `d` (and an f16 offset `m`
//! for the `_1` types), 4, 5 or 8 bits a value.
//!
//! Layouts (little-endian); in the 4- and 5-bit types the low nibble of quant byte `j` is
//! element `j` and the high nibble element `j + 16`; the 5-bit types keep bit 4 of element `i`
//! as bit `i` of the u32 `qh`:
//!
//! | type | bytes | fields | element |
//! | --- | --- | --- | --- |
//! | Q4_0 | 18 | `d`, 16 × nibbles | `d · (q − 8)` |
//! | Q4_1 | 20 | `d`, `m`, 16 × nibbles | `d · q + m` |
//! | Q5_0 | 22 | `d`, `qh: u32`, 16 × nibbles | `d · (q − 16)` |
//! | Q5_1 | 24 | `d`, `m`, `qh: u32`, 16 × nibbles | `d · q + m` |
//! | Q8_0 | 34 | `d`, 32 × `i8` | `q · d` |

use super::{f16_at, per_block};

/// Elements in a legacy block.
pub const QK: usize = 32;
/// Bytes in a Q4_0 block.
pub const Q4_0_BYTES: usize = 2 + QK / 2;
/// Bytes in a Q4_1 block.
pub const Q4_1_BYTES: usize = 2 + 2 + QK / 2;
/// Bytes in a Q5_0 block.
pub const Q5_0_BYTES: usize = 2 + 4 + QK / 2;
/// Bytes in a Q5_1 block.
pub const Q5_1_BYTES: usize = 2 + 2 + 4 + QK / 2;
/// Bytes in a Q8_0 block.
pub const Q8_0_BYTES: usize = 2 + QK;

/// The 4-bit values of a block's 16 quant bytes, in element order.
fn nibbles(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    qs.iter().map(|b| b & 0x0f).chain(qs.iter().map(|b| b >> 4))
}

/// The 5-bit values of a block: nibbles with bit `i` of `qh` as bit 4 of element `i`.
fn fives(qh: u32, qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    nibbles(qs)
        .enumerate()
        .map(move |(i, q)| q | ((((qh >> i) & 1) as u8) << 4))
}

fn u32_at<const N: usize>(b: &[u8; N], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Q4_0 blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q4_0(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q4_0_BYTES, QK>(bytes, |b, out| {
        let d = f16_at(b, 0);
        for (o, q) in out.iter_mut().zip(nibbles(&b[2..])) {
            *o = d * f32::from(q as i8 - 8);
        }
    })
}

/// Q4_1 blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q4_1(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q4_1_BYTES, QK>(bytes, |b, out| {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (o, q) in out.iter_mut().zip(nibbles(&b[4..])) {
            *o = d * f32::from(q) + m;
        }
    })
}

/// Q5_0 blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q5_0(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q5_0_BYTES, QK>(bytes, |b, out| {
        let d = f16_at(b, 0);
        for (o, q) in out.iter_mut().zip(fives(u32_at(b, 2), &b[6..])) {
            *o = d * f32::from(q as i8 - 16);
        }
    })
}

/// Q5_1 blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q5_1(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q5_1_BYTES, QK>(bytes, |b, out| {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        for (o, q) in out.iter_mut().zip(fives(u32_at(b, 4), &b[8..])) {
            *o = d * f32::from(q) + m;
        }
    })
}

/// Q8_0 blocks to f32 (a trailing partial block is ignored; callers check lengths).
pub fn dequantize_q8_0(bytes: &[u8]) -> Vec<f32> {
    per_block::<Q8_0_BYTES, QK>(bytes, |b, out| {
        let d = f16_at(b, 0);
        for (o, &q) in out.iter_mut().zip(&b[2..]) {
            *o = f32::from(q as i8) * d;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_blocks() {
        // Q4_1: d = 0.5, m = -1; byte j holds j (low) and 15 - j (high).
        let mut b = vec![0x00, 0x38, 0x00, 0xbc];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequantize_q4_1(&b);
        assert_eq!((v[0], v[15], v[16], v[31]), (-1.0, 6.5, 6.5, -1.0));

        // Q5_0: d = 1; qh sets bit 4 of the odd elements only.
        let mut b = vec![0x00, 0x3c];
        b.extend(0xaaaa_aaaau32.to_le_bytes());
        b.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let v = dequantize_q5_0(&b);
        assert_eq!((v[0], v[1], v[16], v[17]), (-15.0, 1.0, -14.0, 2.0));

        // Q5_1: d = 2, m = 0.5; element 31 has bit 4 from qh's top bit.
        let mut b = vec![0x00, 0x40, 0x00, 0x38];
        b.extend(0x8000_0000u32.to_le_bytes());
        b.extend([0xf0u8; 16]);
        let v = dequantize_q5_1(&b);
        assert_eq!((v[0], v[16], v[31]), (0.5, 30.5, 62.5));
    }
}
