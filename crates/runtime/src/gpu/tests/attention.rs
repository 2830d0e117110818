//! The rotary embedding with the cache store, and both attention paths.

use super::*;

#[test]
fn rope_store_matches_reference() {
    let Some(mut r) = rig("rope_store_matches_reference") else {
        return;
    };
    let (heads, kv_heads, hd, cap, n, start) = (4, 2, 64, 40, 5, 11);
    for (cache, round) in CACHE_TYPES {
        for style in [crate::RopeStyle::Neox, crate::RopeStyle::Interleaved] {
            let freqs = cpu::inv_freqs(hd, 10000.0, None);
            let (q, k, v) = (
                r.randn(n * heads * hd, 1.0),
                r.randn(n * kv_heads * hd, 1.0),
                r.randn(n * kv_heads * hd, 1.0),
            );
            let rope = cpu::Rope::from_inv_freqs(style, &freqs, start + n);
            let (mut wq, mut wk) = (q.clone(), k.clone());
            for t in 0..n {
                rope.apply(&mut wq[t * heads * hd..][..heads * hd], start + t);
                rope.apply(&mut wk[t * kv_heads * hd..][..kv_heads * hd], start + t);
            }
            let (dq, dk, dv, df) = (r.upload(&q), r.upload(&k), r.upload(&v), r.upload(&freqs));
            // f32-sized buffers hold any cache type; the 16-bit q copy is asked for 16-bit caches.
            let (kc, vc) = (r.zeros(kv_heads * cap * hd), r.zeros(kv_heads * cap * hd));
            let qa = r.zeros(n * heads * hd);
            let qa_ptr = if cache == Act::F32 { 0 } else { qa.ptr() };
            let dims = dims(heads, kv_heads, hd, cap, 0, cache);
            let interleaved = style == crate::RopeStyle::Interleaved;
            let start_at = r.upload_bytes(&(start as i32).to_le_bytes());
            // SAFETY: sized above.
            unsafe {
                r.ops()
                    .rope_store(
                        [dq.ptr(), dk.ptr(), dv.ptr()],
                        [kc.ptr(), vc.ptr()],
                        df.ptr(),
                        n,
                        start_at.ptr(),
                        dims,
                        interleaved,
                        qa_ptr,
                        None,
                    )
                    .unwrap()
            };
            let what = format!("{style:?}, {cache:?} cache");
            assert!(rel_err(&r.download(&dq, q.len()), &wq) < 1e-5, "{what}: q");
            if qa_ptr != 0 {
                let e = rel_err(&r.download_as(&qa, q.len(), cache), &wq);
                assert!(e < 1e-5 + round, "{what}: q copy {e}");
            }
            let mut full_k = vec![0f32; (start + n) * kv_heads * hd];
            full_k[start * kv_heads * hd..].copy_from_slice(&wk);
            let mut full_v = vec![0f32; (start + n) * kv_heads * hd];
            full_v[start * kv_heads * hd..].copy_from_slice(&v);
            let want_k = to_gpu_cache(&full_k, kv_heads, hd, cap);
            let want_v = encode_act(cache, &to_gpu_cache(&full_v, kv_heads, hd, cap)).1;
            let e = rel_err(&r.download_as(&kc, want_k.len(), cache), &want_k);
            assert!(e < 1e-5 + round, "{what}: k {e}");
            // v is copied: rounded once, exactly as the reference rounds it.
            assert_eq!(r.download_as(&vc, want_v.len(), cache), want_v, "{what}: v");
        }
    }
}

#[test]
fn attention_kernel_and_cublas_path_match_reference() {
    let Some(mut r) = rig("attention_kernel_and_cublas_path_match_reference") else {
        return;
    };
    for (heads, kv_heads, hd, n, start, window) in [
        (8, 2, 64, 9, 20, 0),
        (4, 4, 128, 1, 70, 0),
        (6, 1, 32, 33, 5, 12),
        (8, 8, 64, 64, 0, 0),
        (4, 2, 128, 1, 3000, 0),
        (2, 1, 96, 2, 700, 100),
        // One slice (32 keys), two (33), a head the float4 paths cannot take.
        (4, 2, 64, 1, 31, 0),
        (4, 2, 64, 1, 32, 0),
        (6, 3, 30, 1, 100, 0),
        // Keys over 16 lanes (256 values) and over one (16); 160 values: float4s, two for some
        // lanes only.
        (2, 1, 256, 1, 500, 0),
        (4, 2, 16, 1, 50, 0),
        (2, 1, 160, 1, 77, 0),
    ] {
        let cap = start + n + 3;
        let total = start + n;
        let q = r.randn(n * heads * hd, 1.0);
        // Every cache type, the reference on the values the cache holds.
        for (cache, round) in CACHE_TYPES {
            let keys = encode_act(cache, &r.randn(total * kv_heads * hd, 1.0)).1;
            let values = encode_act(cache, &r.randn(total * kv_heads * hd, 1.0)).1;
            let want = cpu::attention(
                &q,
                &keys,
                &values,
                start,
                heads,
                kv_heads,
                hd,
                (window > 0).then_some(window),
            );
            let dims = dims(heads, kv_heads, hd, cap, window, cache);
            let what = format!("heads {heads}/{kv_heads} hd {hd} n {n}, {cache:?} cache");
            let dq = r.upload(&q);
            let (kc, vc) = (
                r.upload_bytes(&encode_act(cache, &to_gpu_cache(&keys, kv_heads, hd, cap)).0),
                r.upload_bytes(&encode_act(cache, &to_gpu_cache(&values, kv_heads, hd, cap)).0),
            );
            let part = r.zeros(Ops::attention_part_values(n, dims));
            let counters = r.zeros(Ops::attention_counters(n, dims));
            let start_at = r.upload_bytes(&(start as i32).to_le_bytes());
            // Twice: the first call must leave its merge counters ready for the second.
            for call in 0..2 {
                let out = r.zeros(q.len());
                // SAFETY: sized above.
                unsafe {
                    r.ops()
                        .attention(
                            dq.ptr(),
                            [kc.ptr(), vc.ptr()],
                            part.ptr(),
                            counters.ptr(),
                            start_at.ptr(),
                            out.ptr(),
                            0,
                            n,
                            dims,
                            Act::F32,
                            None,
                        )
                        .unwrap()
                };
                let e = rel_err(&r.download(&out, q.len()), &want);
                assert!(e < 1e-5, "kernel, {what}, call {call}: {e}");
            }
            // cuBLAS reads q and the probabilities in the cache's type: one rounding each (the
            // probabilities' error adds up over the keys, but at random signs).
            let sixteen = cache != Act::F32;
            let qa = r.upload_bytes(&encode_act(cache, &q).0);
            for tile in [1, 4, n] {
                let scores = r.zeros(heads * tile * cap);
                let probs = r.zeros(heads * tile * cap);
                let out = r.zeros(q.len());
                let (q_in, p_in) = if sixteen {
                    ((dq.ptr(), qa.ptr()), (scores.ptr(), probs.ptr()))
                } else {
                    ((dq.ptr(), 0), (scores.ptr(), 0))
                };
                // SAFETY: scores and probs hold heads·tile·cap values.
                unsafe {
                    r.ops()
                        .attention_blas(
                            q_in,
                            [kc.ptr(), vc.ptr()],
                            out.ptr(),
                            0,
                            n,
                            start,
                            dims,
                            p_in,
                            tile,
                            Act::F32,
                        )
                        .unwrap()
                };
                let e = rel_err(&r.download(&out, q.len()), &want);
                assert!(e < 1e-5 + 3.0 * round, "cuBLAS, {what}, tile {tile}: {e}");
            }
        }
    }
}
