//! Conversion, embedding, norms, SwiGLU, biases and the device arg-max.

use super::*;

#[test]
fn convert_dequantizes_exactly() {
    let Some(mut r) = rig("convert_dequantizes_exactly") else {
        return;
    };
    for t in ALL_TYPES {
        let x = r.randn(32 * 37, 3.0);
        let (bytes, exact) = encode(t, &x);
        let src = r.upload_bytes(&bytes);
        let dst = r.zeros(x.len());
        // SAFETY: src holds x.len() values of t, dst as many f32.
        unsafe {
            r.ops()
                .convert(src.ptr(), t, dst.ptr(), Act::F32, x.len())
                .unwrap()
        };
        assert_eq!(r.download(&dst, x.len()), exact, "{t:?}");
    }
}

#[test]
fn embed_gathers_rows() {
    let Some(mut r) = rig("embed_gathers_rows") else {
        return;
    };
    let (vocab, hidden) = (50, 64);
    for t in ALL_TYPES {
        let table = r.randn(vocab * hidden, 1.0);
        let (bytes, exact) = encode(t, &table);
        let ids: Vec<i32> = vec![3, 0, 49, 3, 17];
        let (dt, di) = (
            r.upload_bytes(&bytes),
            r.upload_bytes(crate::gpu::llama::bytes_of(&ids)),
        );
        let x = r.zeros(ids.len() * hidden);
        let m = Mat {
            data: byte_view(&dt),
            wtype: t,
            rows: vocab,
            cols: hidden,
        };
        // SAFETY: sized above.
        unsafe { r.ops().embed(&m, di.ptr(), ids.len(), x.ptr()).unwrap() };
        let ids_u: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let want = cpu::embedding(&exact, hidden, &ids_u).unwrap();
        assert_eq!(r.download(&x, want.len()), want, "{t:?}");
    }
}

#[test]
fn rms_norm_matches_reference() {
    let Some(mut r) = rig("rms_norm_matches_reference") else {
        return;
    };
    let (rows, cols) = (7, 1000);
    let x = r.randn(rows * cols, 4.0);
    let w = r.randn(cols, 1.5);
    let mut want = x.clone();
    for row in want.chunks_mut(cols) {
        cpu::rms_norm(row, &w, 1e-6);
    }
    let (dx, dw, out) = (r.upload(&x), r.upload(&w), r.zeros(x.len()));
    // SAFETY: sized above.
    unsafe {
        r.ops()
            .rms_norm(
                dx.ptr(),
                f32s(&dw),
                out.ptr(),
                0,
                rows,
                cols,
                1e-6,
                Act::F32,
            )
            .unwrap()
    };
    let got = r.download(&out, x.len());
    assert!(rel_err(&got, &want) < 1e-5, "f32: {}", rel_err(&got, &want));
    // Rounded to bf16, and stored as bf16 too: within one bf16 step of the reference.
    let out_a = r.zeros(x.len() / 2 + 1);
    // SAFETY: out_a holds x.len() bf16 values.
    unsafe {
        r.ops()
            .rms_norm(
                dx.ptr(),
                f32s(&dw),
                out.ptr(),
                out_a.ptr(),
                rows,
                cols,
                1e-6,
                Act::BF16,
            )
            .unwrap()
    };
    let got = r.download(&out, x.len());
    let raw = r.download(&out_a, x.len() / 2);
    let stored = cpu::bf16_to_f32(crate::gpu::llama::bytes_of(&raw));
    assert_eq!(
        &got[..stored.len()],
        &stored[..],
        "stored bf16 equals the rounded f32"
    );
    assert!(
        rel_err(&got, &want) < 1e-2,
        "bf16: {}",
        rel_err(&got, &want)
    );
}

#[test]
fn swiglu_and_bias_match_reference() {
    let Some(mut r) = rig("swiglu_and_bias_match_reference") else {
        return;
    };
    let n = 3000;
    let (g, u) = (r.randn(n, 6.0), r.randn(n, 2.0));
    let mut want = g.clone();
    cpu::swiglu(&mut want, &u);
    let (dg, du, h) = (r.upload(&g), r.upload(&u), r.zeros(n));
    // SAFETY: sized above.
    unsafe {
        r.ops()
            .swiglu(dg.ptr(), du.ptr(), h.ptr(), 0, Act::F32, n)
            .unwrap()
    };
    assert!(rel_err(&r.download(&h, n), &want) < 1e-6);
    let bias = r.randn(100, 1.0);
    let db = r.upload(&bias);
    // SAFETY: h holds 30 rows of 100.
    unsafe { r.ops().add_bias(h.ptr(), f32s(&db), 30, 100).unwrap() };
    let mut want_b = want.clone();
    cpu::ops::add_bias(&mut want_b, &bias);
    assert!(rel_err(&r.download(&h, n), &want_b) < 1e-6);
}

#[test]
fn argmax_next_matches_the_host_argmax() {
    let Some(mut r) = rig("argmax_next_matches_the_host_argmax") else {
        return;
    };
    // Vocabularies off and on the float4 grid, up to Llama 3's; ties, NaN and -inf planted.
    for vocab in [1, 3, 4, 5, 1000, 32_000, 32_003, 128_256] {
        for case in 0..4 {
            let mut logits = r.randn(vocab, 8.0);
            let pick = |r: &mut Rig| (r.rng.next_u64() % vocab as u64) as usize;
            match case {
                // The maximum twice: the first index wins.
                1 => {
                    let (a, b) = (pick(&mut r), pick(&mut r));
                    logits[a] = 100.0;
                    logits[b] = 100.0;
                }
                // NaN never wins, wherever it sits.
                2 => {
                    for _ in 0..4 {
                        let i = pick(&mut r);
                        logits[i] = f32::NAN;
                    }
                }
                // Nothing above -inf: token 0.
                3 => logits.iter_mut().for_each(|l| *l = f32::NEG_INFINITY),
                _ => {}
            }
            let want = crate::sampler::argmax(&logits);
            let (l, ids) = (
                r.upload(&logits),
                r.upload_bytes(crate::gpu::llama::bytes_of(&[-1i32, 41])),
            );
            // SAFETY: `vocab` logits and two i32s, uploaded above.
            unsafe { r.ops().argmax_next(l.ptr(), vocab, ids.ptr()).unwrap() };
            let mut got = [0u8; 8];
            ids.read(&r.stream, &mut got).unwrap();
            let token = i32::from_le_bytes([got[0], got[1], got[2], got[3]]);
            let position = i32::from_le_bytes([got[4], got[5], got[6], got[7]]);
            assert_eq!(
                (token, position),
                (want as i32, 42),
                "vocab {vocab}, case {case}"
            );
        }
    }
}
