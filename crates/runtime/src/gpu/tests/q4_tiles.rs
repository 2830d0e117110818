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
