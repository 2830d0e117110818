//! Matrix-vector products on the host at memory speed, for the GPU runtime's hybrid decode
//! (a streamed layer's feed-forward computed by the CPU from pinned memory while PCIe brings
//! other layers; see `gpu/llama/stream.rs`): row-major f32, f16 or bf16 weights times an f32
//! vector, rows split over a thread pool, each row's dot product in AVX2/FMA (with F16C for
//! f16) where the CPU has them, else portable code. Written here because the CPU reference's
//! f32 products convert whole matrices first, which would triple the bytes read.

use rayon::prelude::*;

/// The weight types the host products read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostWType {
    /// IEEE single.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl HostWType {
    /// Bytes of one value.
    pub fn bytes(self) -> usize {
        match self {
            HostWType::F32 => 4,
            HostWType::F16 | HostWType::BF16 => 2,
        }
    }
}

/// Rows one task of the pool computes: enough to amortise the task, few enough to balance.
const ROWS_PER_TASK: usize = 32;

/// `y = W·x` for `W` of `y.len()` rows and `x.len()` columns of `wtype` in `w` (row-major,
/// little-endian), on `pool`'s threads.
///
/// # Panics
/// When `w` does not hold exactly `y.len() * x.len()` values of `wtype`.
pub fn gemv(pool: &rayon::ThreadPool, w: &[u8], wtype: HostWType, x: &[f32], y: &mut [f32]) {
    let (rows, cols) = (y.len(), x.len());
    assert_eq!(
        w.len(),
        rows * cols * wtype.bytes(),
        "a [{rows}, {cols}] {wtype:?} matrix"
    );
    let row_bytes = cols * wtype.bytes();
    let simd = simd_available();
    pool.install(|| {
        y.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, ys)| {
                let first = task * ROWS_PER_TASK;
                for (i, yi) in ys.iter_mut().enumerate() {
                    let r = first + i;
                    *yi = dot(&w[r * row_bytes..(r + 1) * row_bytes], wtype, x, simd);
                }
            })
    });
}

/// Whether the AVX2/FMA/F16C dot products can run here (checked once).
fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SIMD.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One row's dot product.
fn dot(row: &[u8], wtype: HostWType, x: &[f32], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the CPU has AVX2, FMA and F16C (`simd_available`); `row` holds `x.len()`
        // values of `wtype` (the caller's assertion).
        return unsafe { avx2::dot(row, wtype, x) };
    }
    let _ = simd;
    portable_dot(row, wtype, x)
}

/// The same sum in plain code (and the reference of the tests).
fn portable_dot(row: &[u8], wtype: HostWType, x: &[f32]) -> f32 {
    let n = x.len();
    match wtype {
        HostWType::F32 => (0..n)
            .map(|i| {
                f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]])
                    * x[i]
            })
            .sum(),
        HostWType::F16 => (0..n)
            .map(|i| half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32() * x[i])
            .sum(),
        HostWType::BF16 => (0..n)
            .map(|i| half::bf16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32() * x[i])
            .sum(),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::HostWType;

    /// 32 values a step in four independent sums (FMA latency), the tail in plain code.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `row` must hold `x.len()` values of `wtype`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot(row: &[u8], wtype: HostWType, x: &[f32]) -> f32 {
        let n = x.len();
        let main = n - n % 32;
        let (w, xp) = (row.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < main {
            for (a, acc) in acc.iter_mut().enumerate() {
                let at = i + 8 * a;
                // SAFETY: at + 8 <= main <= n values lie inside `row` and `x`.
                let (wv, xv) = unsafe { (load8(w, at, wtype), _mm256_loadu_ps(xp.add(at))) };
                *acc = _mm256_fmadd_ps(wv, xv, *acc);
            }
            i += 32;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats into an 8-float array.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        let tail = super::portable_dot(&row[main * wtype.bytes()..], wtype, &x[main..]);
        lanes.iter().sum::<f32>() + tail
    }

    /// Values `at..at + 8` of the row as f32.
    ///
    /// # Safety
    /// They must lie inside the row; the CPU must have AVX2 and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(w: *const u8, at: usize, wtype: HostWType) -> __m256 {
        // SAFETY: the caller's contract (unaligned loads of in-bounds bytes).
        unsafe {
            match wtype {
                HostWType::F32 => _mm256_loadu_ps(w.add(4 * at) as *const f32),
                HostWType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * at) as *const __m128i)),
                HostWType::BF16 => {
                    let h = _mm_loadu_si128(w.add(2 * at) as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
    }

    fn encode(values: &[f32], wtype: HostWType) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| match wtype {
                HostWType::F32 => v.to_le_bytes().to_vec(),
                HostWType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                HostWType::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
            })
            .collect()
    }

    #[test]
    fn products_match_the_portable_sum_for_every_type_and_shape() {
        let pool = pool();
        for wtype in [HostWType::F32, HostWType::F16, HostWType::BF16] {
            // Columns around the 32-value step (tails), rows around the task size.
            for (rows, cols) in [(1, 1), (3, 31), (33, 32), (70, 100), (65, 4096)] {
                let w: Vec<f32> = (0..rows * cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
                    .collect();
                let x: Vec<f32> = (0..cols)
                    .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
                    .collect();
                let bytes = encode(&w, wtype);
                let mut y = vec![f32::NAN; rows];
                gemv(&pool, &bytes, wtype, &x, &mut y);
                let row_bytes = cols * wtype.bytes();
                for r in 0..rows {
                    let want = portable_dot(&bytes[r * row_bytes..(r + 1) * row_bytes], wtype, &x);
                    let scale = want.abs().max(1.0);
                    assert!(
                        (y[r] - want).abs() <= 1e-5 * scale * (cols as f32).sqrt(),
                        "{wtype:?} [{rows}, {cols}] row {r}: {} vs {want}",
                        y[r]
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "matrix")]
    fn a_matrix_of_the_wrong_size_is_refused() {
        gemv(
            &pool(),
            &[0u8; 6],
            HostWType::BF16,
            &[1.0; 2],
            &mut [0.0; 2],
        );
    }
}
