//! The tiled Q4_0 layout and its kernels.

use super::*;

/// A Q4_0 matrix of `rows` x `cols` random values, tiled on the device, and the values it holds.
fn tiled_q4_0(r: &mut Rig, rows: usize, cols: usize) -> (DeviceBuf, Mat, Vec<f32>) {
    let (bytes, exact) = encode(WType::Q4_0, &r.randn(rows * cols, 0.05));
    let dw = r.upload_bytes(&bytes);
    let mut m = Mat {
        data: byte_view(&dw),
        wtype: WType::Q4_0,
        rows,
        cols,
    };
    let scratch = DeviceBuf::new(&r.gpu, m.bytes()).expect("alloc");
    // SAFETY: dw holds m.bytes(), as does scratch; synchronized before scratch is dropped.
    unsafe { r.ops().tile_q4_0(&mut m, &scratch).unwrap() };
    r.stream.synchronize().unwrap();
    assert_eq!(m.wtype, WType::Q4_0Tiled);
    (dw, m, exact)
}

#[test]
fn tiled_q4_0_matches_reference() {
    let Some(mut r) = rig("tiled_q4_0_matches_reference") else {
        return;
    };
    if !r.kernels.tensor_cores {
        eprintln!("skipped tiled_q4_0_matches_reference: the GPU predates sm_80");
        return;
    }
    // One tile; a warp's share uneven (23 tiles over 8 warps), an odd number of row groups;
    // 7B's widths.
    for (rows, cols) in [(16, 64), (48, 1472), (32, 4096), (64, 11008)] {
        let (_dw, m, exact) = tiled_q4_0(&mut r, rows, cols);
        // The repack loses nothing: dequantized, the values are the file's.
        let out = r.zeros(rows * cols);
        // SAFETY: out holds rows·cols f32.
        unsafe { r.ops().dequant_q4t(&m, out.ptr(), Act::F32).unwrap() };
        assert_eq!(
            r.download(&out, rows * cols),
            exact,
            "{rows}x{cols} dequantized"
        );
        // Inputs of every size: each 32-value block is staged in f16 under its own power of
        // two, so huge values do not overflow and tiny ones keep their precision; zero blocks
        // stay finite. Tolerance: f16 inputs (2^-11) with f32 accumulation.
        let x = r.randn(cols, 1.0);
        let sizes: [&dyn Fn(usize) -> f32; 3] =
            [&|_| 1e5, &|_| 1e-6, &|b| [1.0, 3e4, 0.0, 2e-3][b % 4]];
        for size in sizes {
            let x: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, v)| v * size(i / 32))
                .collect();
            let (dx, dy) = (r.upload(&x), r.zeros(rows));
            // SAFETY: sized above.
            unsafe {
                r.ops()
                    .gemv(
                        &[GemvOut {
                            w: &m,
                            y: dy.ptr(),
                            bias: DevSlice::empty(),
                        }],
                        dx.ptr(),
                        false,
                        None,
                    )
                    .unwrap()
            };
            let e = rel_err(
                &r.download(&dy, rows),
                &cpu::matmul_t(&x, &exact, cols, rows),
            );
            assert!(
                e < 1e-3,
                "{rows}x{cols} gemv, input scaled like {}: {e}",
                size(1)
            );
        }
        added_with_bias(&mut r, &m, &exact, &x, 1e-3);
        let dx = r.upload(&x);
        // Three matrices in one launch (the grid spans them), and gate/up with SwiGLU.
        let (_d2, m2, e2) = tiled_q4_0(&mut r, 16, cols);
        let zeros = vec![0f32; rows];
        three_at_once(
            &r,
            [&m, &m2],
            [&exact, &e2],
            &x,
            dx.ptr(),
            (DevSlice::empty(), &zeros),
            1e-3,
        );
        let (_du, up, ue) = tiled_q4_0(&mut r, rows, cols);
        let h = r.zeros(rows);
        // SAFETY: sized above.
        unsafe {
            r.ops()
                .gemv_swiglu(&m, &up, dx.ptr(), h.ptr(), Act::F32)
                .unwrap()
        };
        let mut want = cpu::matmul_t(&x, &exact, cols, rows);
        cpu::swiglu(&mut want, &cpu::matmul_t(&x, &ue, cols, rows));
        let e = rel_err(&r.download(&h, rows), &want);
        assert!(e < 1e-3, "{rows}x{cols} swiglu: {e}");
    }
}

/// A batched decode step's products (`linear_rows`): `n` input rows through tiled Q4_0 (the
/// batched tensor-core GEMV, in groups of 8 inputs staged once for the matrices sharing
/// them), Q8_0 (a GEMV per row) and f16 (cuBLAS on the f16 copy of the rows), each row as its
/// reference product; `accumulate` adds to what the outputs held.
#[test]
fn batched_rows_match_reference() {
    let Some(mut r) = rig("batched_rows_match_reference") else {
        return;
    };
    if !r.kernels.tensor_cores {
        eprintln!("skipped batched_rows_match_reference: the GPU predates sm_80");
        return;
    }
    for (rows, cols) in [(16, 64), (48, 1472), (32, 4096)] {
        let (_dw, m, exact) = tiled_q4_0(&mut r, rows, cols);
        let (_d2, m2, e2) = tiled_q4_0(&mut r, 64, cols);
        let stage = DeviceBuf::new(&r.gpu, crate::gpu::q4_tiles::q4t_stage_bytes(cols)).unwrap();
        for n in [1, 2, 5, 8, 9, 17] {
            // Rows of different magnitudes: each block is staged under its own power of two.
            let mut x = r.randn(n * cols, 1.0);
            for (i, v) in x.iter_mut().enumerate() {
                *v *= [1.0, 3e4, 1e-3][(i / cols) % 3];
            }
            let dx = r.upload(&x);
            for accumulate in [false, true] {
                let before = [r.randn(n * rows, 1.0), r.randn(n * 64, 1.0)];
                let ys = [r.upload(&before[0]), r.upload(&before[1])];
                let outs = [(&m, ys[0].ptr()), (&m2, ys[1].ptr())];
                // SAFETY: x holds n rows of cols, each y n rows of its matrix's rows.
                unsafe {
                    r.ops()
                        .linear_rows(
                            &outs,
                            dx.ptr(),
                            dx.ptr(),
                            Act::F32,
                            n,
                            accumulate,
                            Some(&stage),
                        )
                        .unwrap()
                };
                for (k, (w, width)) in [(&exact, rows), (&e2, 64)].into_iter().enumerate() {
                    let mut want = cpu::matmul_t(&x, w, cols, width);
                    if accumulate {
                        want.iter_mut().zip(&before[k]).for_each(|(a, b)| *a += b);
                    }
                    let got = r.download(&ys[k], n * width);
                    for row in 0..n {
                        let span = row * width..(row + 1) * width;
                        let e = rel_err(&got[span.clone()], &want[span]);
                        assert!(
                            e < 1e-3,
                            "{width}x{cols}, {n} rows (accumulate {accumulate}), row {row}: {e}"
                        );
                    }
                }
            }
        }
    }
    // The other kinds: a GEMV per row (Q8_0) and cuBLAS (f16 weights, f16 copy of the input).
    let (rows, cols, n) = (48, 256, 5);
    let x = r.randn(n * cols, 1.0);
    for t in [WType::Q8_0, WType::F16] {
        let (bytes, exact) = encode(t, &r.randn(rows * cols, 0.05));
        let dw = r.upload_bytes(&bytes);
        let w = Mat {
            data: byte_view(&dw),
            wtype: t,
            rows,
            cols,
        };
        let (xr, act) = if t == WType::F16 {
            (cpu::f16_to_f32(&f16_bytes(&x)), Act::F16)
        } else {
            (x.clone(), Act::F32)
        };
        let dx = r.upload(&xr);
        let dxa = r.upload_bytes(&if t == WType::F16 {
            f16_bytes(&xr)
        } else {
            f32_bytes(&xr)
        });
        let y = r.zeros(n * rows);
        // SAFETY: sized above.
        unsafe {
            r.ops()
                .linear_rows(&[(&w, y.ptr())], dx.ptr(), dxa.ptr(), act, n, false, None)
                .unwrap()
        };
        let got = r.download(&y, n * rows);
        for row in 0..n {
            let xi = gemv_input(t, &xr[row * cols..(row + 1) * cols]);
            let want = cpu::matmul_t(&xi, &exact, cols, rows);
            let e = rel_err(&got[row * rows..(row + 1) * rows], &want);
            assert!(e < 2e-3, "{t:?}, row {row}: {e}");
        }
    }
}
