//! Every ggml block type the kernels read (kernels/quant.cuh) against the CPU reference
//! (`crate::quant`, itself equal to gguf-py bit for bit): dequantization bit for bit, GEMVs,
//! SwiGLU, the embedding lookup and prefill's products, on fresh random blocks.

use super::*;
use crate::gpu::layers::BLOCK_TYPES;

/// Row shapes that exercise one type: full warps of slices, a single block per row, and rows
/// whose slices do not fill the warp's last pass.
fn shapes(t: WType) -> [(usize, usize); 3] {
    let b = t.block_values();
    [(67, 4096), (33, b), (5, 9 * b)]
}

#[test]
fn dequantization_equals_the_cpu_reference_bit_for_bit() {
    let Some(mut r) = rig("dequantization_equals_the_cpu_reference_bit_for_bit") else {
        return;
    };
    for (t, _) in BLOCK_TYPES {
        for extreme in [false, true] {
            let n = 37 * 256;
            let (bytes, exact) = random_blocks(&mut r, t, n, extreme);
            let src = r.upload_bytes(&bytes);
            for out in [Act::F32, Act::F16, Act::BF16] {
                let dst = r.zeros(n);
                // SAFETY: src holds n values of t, dst n f32 (≥ n of any out).
                unsafe { r.ops().convert(src.ptr(), t, dst.ptr(), out, n).unwrap() };
                let got = r.download_as(&dst, n, out);
                // The reference rounded once to the output type, as the GEMMs read it.
                let want = encode_act(out, &exact).1;
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "{t:?} to {out:?} (extreme scales: {extreme}): value {i}: {g} against {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn gemv_reads_every_block_type() {
    let Some(mut r) = rig("gemv_reads_every_block_type") else {
        return;
    };
    for (t, _) in BLOCK_TYPES {
        for (rows, cols) in shapes(t) {
            let (bytes, exact) = random_weights(&mut r, t, rows * cols, 0.05);
            let x = r.randn(cols, 1.0);
            let (dw, dx) = (r.upload_bytes(&bytes), r.upload(&x));
            let m = mat_of(&dw, t, rows, cols);
            added_with_bias(&mut r, &m, &exact, &x, 1e-5);
            // Three at once, the second of another type (q, k, v of a mixed file).
            let other = if t == WType::Q6_K {
                WType::Q4_K
            } else {
                WType::Q6_K
            };
            let cols2 = cols;
            if !cols2.is_multiple_of(other.block_values()) {
                continue;
            }
            let (b2, e2) = random_weights(&mut r, other, 7 * cols2, 0.05);
            let d2 = r.upload_bytes(&b2);
            let m2 = mat_of(&d2, other, 7, cols2);
            let bias = r.randn(rows, 1.0);
            let db = r.upload(&bias);
            three_at_once(
                &r,
                [&m, &m2],
                [&exact, &e2],
                &x,
                dx.ptr(),
                (f32s(&db), &bias),
                1e-5,
            );
        }
    }
}

#[test]
fn gemv_swiglu_reads_every_block_type() {
    let Some(mut r) = rig("gemv_swiglu_reads_every_block_type") else {
        return;
    };
    // Gate and up of one type (read together), and of two (Q4_K_M's Q4_K with a Q6_K).
    let mut pairs: Vec<(WType, WType)> = BLOCK_TYPES.iter().map(|(t, _)| (*t, *t)).collect();
    pairs.push((WType::Q4_K, WType::Q6_K));
    pairs.push((WType::Q6_K, WType::BF16));
    for (tg, tu) in pairs {
        let (rows, cols) = (300, 512);
        let (gb, ge) = random_weights(&mut r, tg, rows * cols, 0.1);
        let (ub, ue) = random_weights(&mut r, tu, rows * cols, 0.1);
        let x = r.randn(cols, 1.0);
        let (dg, du, dx, h) = (
            r.upload_bytes(&gb),
            r.upload_bytes(&ub),
            r.upload(&x),
            r.zeros(rows),
        );
        let (mg, mu) = (mat_of(&dg, tg, rows, cols), mat_of(&du, tu, rows, cols));
        // SAFETY: sized above.
        unsafe {
            r.ops()
                .gemv_swiglu(&mg, &mu, dx.ptr(), h.ptr(), Act::F32)
                .unwrap()
        };
        let mut want = cpu::matmul_t(&gemv_input(tg, &x), &ge, cols, rows);
        cpu::swiglu(
            &mut want,
            &cpu::matmul_t(&gemv_input(tu, &x), &ue, cols, rows),
        );
        let e = rel_err(&r.download(&h, rows), &want);
        assert!(e < 1e-5, "gate {tg:?}, up {tu:?}: {e}");
    }
}

#[test]
fn embed_reads_every_block_type() {
    let Some(mut r) = rig("embed_reads_every_block_type") else {
        return;
    };
    let (vocab, hidden) = (50, 512);
    for (t, _) in BLOCK_TYPES {
        let (bytes, exact) = random_blocks(&mut r, t, vocab * hidden, false);
        let ids: Vec<i32> = vec![3, 0, 49, 3, 17];
        let (dt, di) = (
            r.upload_bytes(&bytes),
            r.upload_bytes(crate::gpu::llama::bytes_of(&ids)),
        );
        let x = r.zeros(ids.len() * hidden);
        let m = mat_of(&dt, t, vocab, hidden);
        // SAFETY: sized above.
        unsafe { r.ops().embed(&m, di.ptr(), ids.len(), x.ptr()).unwrap() };
        let ids_u: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let want = cpu::embedding(&exact, hidden, &ids_u).unwrap();
        assert_eq!(r.download(&x, want.len()), want, "{t:?}");
    }
}

#[test]
fn prefill_products_read_every_block_type() {
    let Some(mut r) = rig("prefill_products_read_every_block_type") else {
        return;
    };
    let (n, rows, cols) = (37, 200, 512);
    for (t, _) in BLOCK_TYPES {
        let (bytes, exact) = random_blocks(&mut r, t, rows * cols, false);
        let x = r.randn(n * cols, 1.0);
        let (x_bytes, x_exact) = encode(WType::F16, &x);
        // The GEMM reads the weights rounded to f16.
        let w_seen = encode(WType::F16, &exact).1;
        let (dw, dx, dy) = (
            r.upload_bytes(&bytes),
            r.upload_bytes(&x_bytes),
            r.zeros(n * rows),
        );
        let scratch = r.zeros(rows * cols);
        let m = mat_of(&dw, t, rows, cols);
        // SAFETY: sized above (scratch: rows·cols f32 ≥ as many f16).
        unsafe {
            r.ops()
                .linear(&m, dx.ptr(), Act::F16, n, dy.ptr(), 0.0, scratch.ptr())
                .unwrap()
        };
        let want = cpu::matmul_t(&x_exact, &w_seen, cols, rows);
        let e = rel_err(&r.download(&dy, n * rows), &want);
        assert!(e < 1e-3, "{t:?}: {e}");
    }
}
