//! The GEMVs (plain, batched, with the fused rotary embedding, with SwiGLU) and cuBLAS
//! products.

use super::*;

#[test]
fn gemv_matches_reference_for_every_type() {
    let Some(mut r) = rig("gemv_matches_reference_for_every_type") else {
        return;
    };
    for t in ALL_TYPES {
        // 4096-wide rows take the vector and staged paths; 96 leaves a tail / partial stage.
        for (rows, cols) in [(67, 4096), (33, 96), (5, 2080)] {
            let w = r.randn(rows * cols, 0.05);
            let (bytes, exact) = encode(t, &w);
            let x = r.randn(cols, 1.0);
            let bias = r.randn(rows, 1.0);
            let (dw, dx, db) = (r.upload_bytes(&bytes), r.upload(&x), r.upload(&bias));
            let m = Mat {
                data: byte_view(&dw),
                wtype: t,
                rows,
                cols,
            };
            added_with_bias(&mut r, &m, &exact, &x, 1e-5);
            // Three at once (q, k, v), the second one plain.
            let w2 = r.randn(7 * cols, 0.05);
            let (b2, e2) = encode(t, &w2);
            let d2 = r.upload_bytes(&b2);
            let m2 = Mat {
                data: byte_view(&d2),
                wtype: t,
                rows: 7,
                cols,
            };
            let third_bias = (f32s(&db), bias.as_slice());
            three_at_once(&r, [&m, &m2], [&exact, &e2], &x, dx.ptr(), third_bias, 1e-5);
        }
    }
}

#[test]
fn gemv_with_fused_rope_matches_reference() {
    let Some(mut r) = rig("gemv_with_fused_rope_matches_reference") else {
        return;
    };
    let (heads, kv_heads, hd, cols, cap, start) = (4, 2, 64, 256, 40, 11);
    for t in [WType::BF16, WType::Q8_0, WType::Q4_0Tiled] {
        if t == WType::Q4_0Tiled && !r.kernels.tensor_cores {
            continue;
        }
        // Tiled Q4_0: the file's Q4_0, tiled on the device; inputs in f16 (see q4_tiles.cu).
        // Each weight type writes another cache type, as its model would (Q8_0: f32 here).
        let (file_type, tol, cache) = match t {
            WType::Q4_0Tiled => (WType::Q4_0, 1e-3, Act::F16),
            WType::BF16 => (t, 1e-5, Act::BF16),
            _ => (t, 1e-5, Act::F32),
        };
        let cache_tol = tol
            + CACHE_TYPES
                .iter()
                .find(|c| c.0 == cache)
                .map_or(0.0, |c| c.1);
        for style in [crate::RopeStyle::Neox, crate::RopeStyle::Interleaved] {
            let x = r.randn(cols, 1.0);
            let mut mats = Vec::new();
            let mut want = Vec::new();
            for rows in [heads * hd, kv_heads * hd, kv_heads * hd] {
                let (bytes, exact) = encode(file_type, &r.randn(rows * cols, 0.05));
                let bias = r.randn(rows, 1.0);
                let y: Vec<f32> = cpu::matmul_t(&gemv_input(t, &x), &exact, cols, rows)
                    .iter()
                    .zip(&bias)
                    .map(|(a, b)| a + b)
                    .collect();
                want.push(y);
                mats.push((r.upload_bytes(&bytes), r.upload(&bias), rows));
            }
            let freqs = cpu::inv_freqs(hd, 10000.0, None);
            let rope = cpu::Rope::from_inv_freqs(style, &freqs, start + 1);
            rope.apply(&mut want[0], start);
            rope.apply(&mut want[1], start);
            let mut m: Vec<Mat> = mats
                .iter()
                .map(|(w, _, rows)| Mat {
                    data: byte_view(w),
                    wtype: file_type,
                    rows: *rows,
                    cols,
                })
                .collect();
            if t == WType::Q4_0Tiled {
                let scratch = DeviceBuf::new(&r.gpu, m[0].bytes()).expect("alloc");
                for w in &mut m {
                    // SAFETY: each matrix holds w.bytes() ≤ scratch's; synchronized below.
                    unsafe { r.ops().tile_q4_0(w, &scratch).unwrap() };
                }
                r.stream.synchronize().unwrap();
            }
            let (dx, df, yq) = (r.upload(&x), r.upload(&freqs), r.zeros(heads * hd));
            let (yk, yv) = (r.zeros(kv_heads * hd), r.zeros(kv_heads * hd));
            let (kc, vc) = (r.zeros(kv_heads * cap * hd), r.zeros(kv_heads * cap * hd));
            let start_at = r.upload_bytes(&(start as i32).to_le_bytes());
            let fused = FusedRope {
                inv_freq: df.ptr(),
                start_at: start_at.ptr(),
                cache: [kc.ptr(), vc.ptr()],
                dims: dims(heads, kv_heads, hd, cap, 0, cache),
                interleaved: style == crate::RopeStyle::Interleaved,
            };
            let outs: Vec<GemvOut> = m
                .iter()
                .zip(&mats)
                .zip([yq.ptr(), yk.ptr(), yv.ptr()])
                .map(|((w, (_, bias, _)), y)| GemvOut {
                    w,
                    y,
                    bias: f32s(bias),
                })
                .collect();
            // SAFETY: sized above.
            unsafe { r.ops().gemv(&outs, dx.ptr(), false, Some(fused)).unwrap() };
            let what = format!("{t:?} {style:?}");
            let e = rel_err(&r.download(&yq, heads * hd), &want[0]);
            assert!(e < tol, "{what} q: {e}");
            // k and v sit at position `start` of the caches, nothing else is written.
            let mut full_k = vec![0f32; (start + 1) * kv_heads * hd];
            full_k[start * kv_heads * hd..].copy_from_slice(&want[1]);
            let mut full_v = vec![0f32; (start + 1) * kv_heads * hd];
            full_v[start * kv_heads * hd..].copy_from_slice(&want[2]);
            let (want_k, want_v) = (
                to_gpu_cache(&full_k, kv_heads, hd, cap),
                to_gpu_cache(&full_v, kv_heads, hd, cap),
            );
            let e = rel_err(&r.download_as(&kc, want_k.len(), cache), &want_k);
            assert!(e < cache_tol, "{what} k: {e}");
            let e = rel_err(&r.download_as(&vc, want_v.len(), cache), &want_v);
            assert!(e < cache_tol, "{what} v: {e}");
        }
    }
}

#[test]
fn gemv_swiglu_matches_reference() {
    let Some(mut r) = rig("gemv_swiglu_matches_reference") else {
        return;
    };
    for t in [WType::BF16, WType::Q4_0, WType::F32] {
        let (rows, cols) = (300, 512);
        let (gw, uw, x) = (
            r.randn(rows * cols, 0.1),
            r.randn(rows * cols, 0.1),
            r.randn(cols, 1.0),
        );
        let ((gb, ge), (ub, ue)) = (encode(t, &gw), encode(t, &uw));
        let (dg, du, dx, h) = (
            r.upload_bytes(&gb),
            r.upload_bytes(&ub),
            r.upload(&x),
            r.zeros(rows),
        );
        let (mg, mu) = (
            Mat {
                data: byte_view(&dg),
                wtype: t,
                rows,
                cols,
            },
            Mat {
                data: byte_view(&du),
                wtype: t,
                rows,
                cols,
            },
        );
        // SAFETY: sized above.
        unsafe {
            r.ops()
                .gemv_swiglu(&mg, &mu, dx.ptr(), h.ptr(), Act::F32)
                .unwrap()
        };
        let xq = gemv_input(t, &x);
        let mut want = cpu::matmul_t(&xq, &ge, cols, rows);
        cpu::swiglu(&mut want, &cpu::matmul_t(&xq, &ue, cols, rows));
        let e = rel_err(&r.download(&h, rows), &want);
        assert!(e < 1e-5, "{t:?}: {e}");
    }
}

#[test]
fn linear_matches_reference() {
    let Some(mut r) = rig("linear_matches_reference") else {
        return;
    };
    let (n, rows, cols) = (37, 200, 320);
    for (t, act, tol) in [
        (WType::F32, Act::F32, 1e-5),
        (WType::BF16, Act::BF16, 1e-5),
        (WType::Q8_0, Act::F16, 1e-3),
        (WType::F32, Act::BF16, 1e-5),
    ] {
        let w = r.randn(rows * cols, 0.1);
        let (bytes, exact) = encode(t, &w);
        let x = r.randn(n * cols, 1.0);
        // The input as the activation type holds it.
        let (x_bytes, x_exact) = match act {
            Act::F32 => (f32_bytes(&x), x.clone()),
            Act::F16 => encode(WType::F16, &x),
            Act::BF16 => encode(WType::BF16, &x),
        };
        // The weights as the GEMM sees them: converted to the activation type when needed.
        let w_seen = if t.elem() == Some(act.elem()) {
            exact.clone()
        } else {
            match act {
                Act::F32 => exact.clone(),
                Act::F16 => encode(WType::F16, &exact).1,
                Act::BF16 => encode(WType::BF16, &exact).1,
            }
        };
        let y0 = r.randn(n * rows, 1.0);
        let (dw, dx, dy) = (
            r.upload_bytes(&bytes),
            r.upload_bytes(&x_bytes),
            r.upload(&y0),
        );
        let scratch = r.zeros(rows * cols);
        let m = Mat {
            data: byte_view(&dw),
            wtype: t,
            rows,
            cols,
        };
        // SAFETY: sized above (scratch: rows·cols f32 ≥ as many 16-bit values).
        unsafe {
            r.ops()
                .linear(&m, dx.ptr(), act, n, dy.ptr(), 1.0, scratch.ptr())
                .unwrap()
        };
        let prod = cpu::matmul_t(&x_exact, &w_seen, cols, rows);
        let want: Vec<f32> = prod.iter().zip(&y0).map(|(a, b)| a + b).collect();
        let e = rel_err(&r.download(&dy, n * rows), &want);
        assert!(e < tol, "{t:?} as {act:?}: {e}");
    }
}
