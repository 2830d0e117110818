//! The pseudo-random fill.
//!
//! A SplitMix64 stream keyed by (seed, tensor index) written eight bytes at a time: a
//! checkpoint of 13.5 GB must be made in seconds, statistical quality does not matter, and a
//! dependency's API churn is not worth this much code.

/// Fills `buf` with bytes determined by `(seed, stream, offset_bytes)`: the same arguments give
/// the same bytes, so a checkpoint can be written in pieces and re-derived by tests.
pub fn fill_random(buf: &mut [u8], seed: u64, stream: u64, offset_bytes: u64) {
    assert_eq!(offset_bytes % 8, 0, "fills start on 8-byte boundaries");
    let key = mix(seed ^ mix(stream.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    let mut word = offset_bytes / 8;
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&mix(key ^ word).to_le_bytes());
        word += 1;
    }
    let rest = chunks.into_remainder();
    let last = mix(key ^ word).to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_match_whole() {
        let mut whole = vec![0u8; 100];
        fill_random(&mut whole, 7, 3, 0);
        let mut a = vec![0u8; 40];
        let mut b = vec![0u8; 60];
        fill_random(&mut a, 7, 3, 0);
        fill_random(&mut b, 7, 3, 40);
        assert_eq!(&whole[..40], &a[..]);
        assert_eq!(&whole[40..], &b[..]);
        let mut other = vec![0u8; 100];
        fill_random(&mut other, 7, 4, 0);
        assert_ne!(whole, other);
        assert!(whole.iter().filter(|&&b| b == 0).count() < 5);
    }
}
