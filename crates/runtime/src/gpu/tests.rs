//! Each kernel against its CPU reference (`crate::cpu`), on fresh random data. Skipped, with a
//! message, where no CUDA GPU exists.

use std::sync::Arc;

use hoist_cuda::{DeviceBuf, Gpu, Stream};

use super::blas::Blas;
use super::layers::{Act, AttnDims, FusedRope, GemvOut, Mat, Ops, WType};
use super::module::Kernels;
use crate::cpu;
use crate::sampler::Rng;

struct Rig {
    gpu: Arc<Gpu>,
    kernels: Kernels,
    blas: Blas,
    stream: Stream,
    rng: Rng,
}

fn rig(test: &str) -> Option<Rig> {
    if let Err(why) = crate::cuda_available() {
        eprintln!("skipped {test}: no CUDA GPU ({why})");
        return None;
    }
    let gpu = hoist_cuda::open_device(0).expect("open cuda:0");
    let dir = std::env::temp_dir().join("hoist-kernel-test-cache");
    let kernels = Kernels::load(&gpu, Some(&dir)).expect("kernels compile and load");
    let stream = Stream::new(&gpu).expect("stream");
    let blas = Blas::new(&gpu, &stream).expect("cuBLAS");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("{test}: seed {seed}");
    Some(Rig {
        gpu,
        kernels,
        blas,
        stream,
        rng: Rng::new(seed),
    })
}

impl Rig {
    fn ops(&self) -> Ops<'_> {
        Ops {
            k: &self.kernels,
            blas: &self.blas,
            stream: &self.stream,
        }
    }

    fn randn(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.rng.next_f64() * 2.0 - 1.0) as f32) * scale)
            .collect()
    }

    fn upload_bytes(&self, bytes: &[u8]) -> DeviceBuf {
        let b = DeviceBuf::new(&self.gpu, bytes.len().max(4)).expect("alloc");
        b.write_async(&self.stream, bytes).expect("copy");
        self.stream.synchronize().expect("sync");
        b
    }

    fn upload(&self, v: &[f32]) -> DeviceBuf {
        self.upload_bytes(super::llama::bytes_of(v))
    }

    fn zeros(&self, n: usize) -> DeviceBuf {
        self.upload(&vec![0f32; n])
    }

    /// `n` values of a buffer of type `t`, as f32.
    fn download_as(&self, b: &DeviceBuf, n: usize, t: Act) -> Vec<f32> {
        let mut raw = vec![0u8; n * t.elem().bytes()];
        b.read(&self.stream, &mut raw).expect("copy back");
        match t {
            Act::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Act::F16 => cpu::f16_to_f32(&raw),
            Act::BF16 => cpu::bf16_to_f32(&raw),
        }
    }

    fn download(&self, b: &DeviceBuf, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        // SAFETY: f32 has no invalid bit patterns; the view covers exactly `out`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, n * 4) };
        b.read(&self.stream, bytes).expect("copy back");
        out
    }
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // f32::max passes NaN over: a non-finite value must fail on its own.
    assert!(a.iter().all(|v| v.is_finite()), "non-finite values");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `values` encoded as `t`, and the f32 values that encoding holds.
fn encode(t: WType, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let bytes = match t {
        WType::F32 => f32_bytes(values),
        WType::F16 => f16_bytes(values),
        WType::BF16 => bf16_bytes(values),
        WType::Q8_0 => cpu::quantize_q8_0(values),
        WType::Q4_0 => cpu::quantize_q4_0(values),
        WType::Q4_0Tiled => unreachable!("tiled on the device: see tile_q4_0"),
    };
    let exact = match t {
        WType::F32 => values.to_vec(),
        WType::F16 => cpu::f16_to_f32(&bytes),
        WType::BF16 => cpu::bf16_to_f32(&bytes),
        WType::Q8_0 => cpu::dequantize_q8_0(&bytes),
        WType::Q4_0 => cpu::dequantize_q4_0(&bytes),
        WType::Q4_0Tiled => unreachable!(),
    };
    (bytes, exact)
}

/// `values` in the float type `t` (bytes, and the values they hold).
fn encode_act(t: Act, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    encode(
        match t {
            Act::F32 => WType::F32,
            Act::F16 => WType::F16,
            Act::BF16 => WType::BF16,
        },
        values,
    )
}

/// Attention geometry of a test cache.
fn dims(
    heads: usize,
    kv_heads: usize,
    hd: usize,
    cap: usize,
    window: usize,
    cache: Act,
) -> AttnDims {
    AttnDims {
        heads,
        kv_heads,
        head_dim: hd,
        capacity: cap,
        window,
        cache,
    }
}

/// The KV cache types, with the relative error of one rounding to each (f32: none).
const CACHE_TYPES: [(Act, f32); 3] = [(Act::F32, 0.0), (Act::F16, 1e-3), (Act::BF16, 8e-3)];

const ALL_TYPES: [WType; 5] = [
    WType::F32,
    WType::F16,
    WType::BF16,
    WType::Q8_0,
    WType::Q4_0,
];

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
            r.upload_bytes(super::llama::bytes_of(&ids)),
        );
        let x = r.zeros(ids.len() * hidden);
        let m = Mat {
            ptr: dt.ptr(),
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
            .rms_norm(dx.ptr(), dw.ptr(), out.ptr(), 0, rows, cols, 1e-6, Act::F32)
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
                dw.ptr(),
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
    let stored = cpu::bf16_to_f32(super::llama::bytes_of(&raw));
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
    unsafe { r.ops().add_bias(h.ptr(), db.ptr(), 30, 100).unwrap() };
    let mut want_b = want.clone();
    cpu::ops::add_bias(&mut want_b, &bias);
    assert!(rel_err(&r.download(&h, n), &want_b) < 1e-6);
}

/// GPU cache layout `[kv_heads][cap][hd]` from the CPU's `[positions, kv_heads, hd]`.
fn to_gpu_cache(keys: &[f32], kv_heads: usize, hd: usize, cap: usize) -> Vec<f32> {
    let mut out = vec![0f32; kv_heads * cap * hd];
    for (p, pos) in keys.chunks(kv_heads * hd).enumerate() {
        for (h, head) in pos.chunks(hd).enumerate() {
            out[(h * cap + p) * hd..][..hd].copy_from_slice(head);
        }
    }
    out
}

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

/// Checks y = y0 + m·x + bias (the residual form) against the reference, on fresh y0 and bias.
fn added_with_bias(r: &mut Rig, m: &Mat, exact: &[f32], x: &[f32], tol: f32) {
    let (rows, cols) = (m.rows, m.cols);
    let (bias, y0) = (r.randn(rows, 1.0), r.randn(rows, 1.0));
    let (dx, db, dy) = (r.upload(x), r.upload(&bias), r.upload(&y0));
    let out = GemvOut {
        w: m,
        y: dy.ptr(),
        bias: db.ptr(),
    };
    // SAFETY: sized above.
    unsafe { r.ops().gemv(&[out], dx.ptr(), true, None).unwrap() };
    let prod = cpu::matmul_t(x, exact, cols, rows);
    let want: Vec<f32> = (0..rows).map(|i| y0[i] + prod[i] + bias[i]).collect();
    let e = rel_err(&r.download(&dy, rows), &want);
    assert!(e < tol, "{:?} {rows}x{cols}: {e}", m.wtype);
}

/// Checks three GEMVs in one launch against their references: m, m2 (values `exact`), then m
/// again with the bias `third_bias` (device address, values; 0 for none), all on input x (also
/// at `dx`), within `tol`.
fn three_at_once(
    r: &Rig,
    [m, m2]: [&Mat; 2],
    [exact, e2]: [&[f32]; 2],
    x: &[f32],
    dx: u64,
    third_bias: (u64, &[f32]),
    tol: f32,
) {
    let (rows, rows2, cols) = (m.rows, m2.rows, m.cols);
    let (ya, yb, yc) = (r.zeros(rows), r.zeros(rows2), r.zeros(rows));
    let outs = [
        GemvOut {
            w: m,
            y: ya.ptr(),
            bias: 0,
        },
        GemvOut {
            w: m2,
            y: yb.ptr(),
            bias: 0,
        },
        GemvOut {
            w: m,
            y: yc.ptr(),
            bias: third_bias.0,
        },
    ];
    // SAFETY: sized above; the caller's x and bias hold cols and rows values.
    unsafe { r.ops().gemv(&outs, dx, false, None).unwrap() };
    let want = cpu::matmul_t(x, exact, cols, rows);
    assert!(rel_err(&r.download(&ya, rows), &want) < tol);
    assert!(rel_err(&r.download(&yb, rows2), &cpu::matmul_t(x, e2, cols, rows2)) < tol);
    let with_bias: Vec<f32> = want.iter().zip(third_bias.1).map(|(a, b)| a + b).collect();
    assert!(rel_err(&r.download(&yc, rows), &with_bias) < tol);
}

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
                ptr: dw.ptr(),
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
                ptr: d2.ptr(),
                wtype: t,
                rows: 7,
                cols,
            };
            let third_bias = (db.ptr(), bias.as_slice());
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
                let y: Vec<f32> = cpu::matmul_t(&x, &exact, cols, rows)
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
                    ptr: w.ptr(),
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
                    bias: bias.ptr(),
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
                ptr: dg.ptr(),
                wtype: t,
                rows,
                cols,
            },
            Mat {
                ptr: du.ptr(),
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
        let mut want = cpu::matmul_t(&x, &ge, cols, rows);
        cpu::swiglu(&mut want, &cpu::matmul_t(&x, &ue, cols, rows));
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
            ptr: dw.ptr(),
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

/// A Q4_0 matrix of `rows` x `cols` random values, tiled on the device, and the values it holds.
fn tiled_q4_0(r: &mut Rig, rows: usize, cols: usize) -> (DeviceBuf, Mat, Vec<f32>) {
    let (bytes, exact) = encode(WType::Q4_0, &r.randn(rows * cols, 0.05));
    let dw = r.upload_bytes(&bytes);
    let mut m = Mat {
        ptr: dw.ptr(),
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
                            bias: 0,
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
            (0, &zeros),
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
                r.upload_bytes(super::llama::bytes_of(&[-1i32, 41])),
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
