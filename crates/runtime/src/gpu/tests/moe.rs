//! The mixture-of-experts kernels (kernels/moe.cu) against the CPU reference
//! ([`crate::cpu::moe`]) on fresh random experts of every weight kind: the router's top-k and
//! weights, decode's chosen-experts products with and without a shared expert, and prefill's
//! gather and scatter.

use super::*;
use crate::gpu::layers::{MoeFfn, Routes, SharedFfn};

/// Random experts of one layer on the device (the buffers behind the views stay here).
struct Experts {
    _bufs: Vec<DeviceBuf>,
    ffn: MoeFfn,
    /// The values each expert's gate, up, down hold; the shared expert's last.
    exact: Vec<[Vec<f32>; 3]>,
}

/// `experts` experts of width `width` on rows of `hidden`, of types `types` (gate, up, down),
/// each token to `k`; with a shared expert of width `shared` (0: none) of the same types.
fn experts(
    r: &mut Rig,
    types: [WType; 3],
    (experts, k, hidden, width, shared): (usize, usize, usize, usize, usize),
    norm: bool,
) -> Experts {
    let mut bufs = Vec::new();
    let mut exact = Vec::new();
    let mut list: Vec<[Mat; 3]> = Vec::new();
    for _ in 0..experts {
        let (mats, values) = expert(r, types, hidden, width, &mut bufs);
        list.push(mats);
        exact.push(values);
    }
    let shared = (shared > 0).then(|| {
        let ([gate, up, down], values) = expert(r, types, hidden, shared, &mut bufs);
        exact.push(values);
        let g = r.randn(hidden, 0.1);
        let b = r.upload(&g);
        let gate_inp = mat_of(&b, WType::F32, 1, hidden);
        bufs.push(b);
        SharedFfn {
            gate,
            up,
            down,
            gate_inp,
        }
    });
    let addresses: Vec<u64> = (0..3)
        .flat_map(|p| list.iter().map(move |x| x[p].ptr()))
        .collect();
    let tables = r.upload_bytes(crate::gpu::llama::bytes_of(&addresses));
    let router_buf = r.zeros(experts * hidden);
    let router = mat_of(&router_buf, WType::F32, experts, hidden);
    bufs.push(router_buf);
    Experts {
        _bufs: bufs,
        ffn: MoeFfn {
            router,
            experts: list,
            tables,
            shared,
            top_k: k,
            norm_topk_prob: norm,
        },
        exact,
    }
}

/// One random expert's gate, up and down on the device (buffers pushed to `bufs`), with the
/// values they hold.
fn expert(
    r: &mut Rig,
    types: [WType; 3],
    hidden: usize,
    width: usize,
    bufs: &mut Vec<DeviceBuf>,
) -> ([Mat; 3], [Vec<f32>; 3]) {
    let mut mats = Vec::new();
    let mut values = Vec::new();
    for (t, (rows, cols)) in
        types
            .into_iter()
            .zip([(width, hidden), (width, hidden), (hidden, width)])
    {
        let (bytes, v) = random_weights(r, t, rows * cols, 0.1);
        let b = r.upload_bytes(&bytes);
        mats.push(mat_of(&b, t, rows, cols));
        bufs.push(b);
        values.push(v);
    }
    let [g, u, d]: [Vec<f32>; 3] = values.try_into().expect("three projections");
    ([mats[0], mats[1], mats[2]], [g, u, d])
}

/// One SwiGLU expert on the CPU as the GEMVs compute it (the inputs of block-quantized weights
/// quantized as `stage_xq` does).
fn expert_ref(types: [WType; 3], w: &[Vec<f32>; 3], x: &[f32], width: usize) -> Vec<f32> {
    let hidden = x.len();
    let mut g = cpu::matmul_t(&gemv_input(types[0], x), &w[0], hidden, width);
    let u = cpu::matmul_t(&gemv_input(types[1], x), &w[1], hidden, width);
    cpu::swiglu(&mut g, &u);
    cpu::matmul_t(&gemv_input(types[2], &g), &w[2], width, hidden)
}

#[test]
fn moe_decode_matches_the_cpu_reference() {
    let Some(mut r) = rig("moe_decode_matches_the_cpu_reference") else {
        return;
    };
    let q = |t| [t, t, t];
    let kinds = [
        q(WType::F32),
        q(WType::BF16),
        q(WType::F16),
        q(WType::Q8_0),
        q(WType::Q4_0),
        q(WType::Q4_K),
        q(WType::Q6_K),
        // Q4_K_M's experts: Q4_K gate/up, Q6_K down; and one float matrix among quantized.
        [WType::Q4_K, WType::Q4_K, WType::Q6_K],
        [WType::Q8_0, WType::BF16, WType::Q5_K],
    ];
    let (hidden, width) = (512, 256);
    for types in kinds {
        for (n_experts, k, shared, norm) in [(8, 2, 0, true), (16, 5, 512, false)] {
            let e = experts(&mut r, types, (n_experts, k, hidden, width, shared), norm);
            let logits = r.randn(n_experts, 3.0);
            let shared_logit = r.randn(1, 2.0);
            let x = r.randn(hidden, 1.0);
            let y0 = r.randn(hidden, 1.0);
            let slots = e.ffn.slots();
            let (dl, ds, dx, dy) = (
                r.upload(&logits),
                r.upload(&shared_logit),
                r.upload(&x),
                r.upload(&y0),
            );
            let (ids, weights) = (r.zeros(k), r.zeros(k + 1));
            let h = r.zeros(slots * e.ffn.slot_stride());
            let routes = Routes {
                ids: ids.ptr(),
                weights: weights.ptr(),
            };
            // SAFETY: every buffer sized above for one token.
            unsafe {
                let ops = r.ops();
                ops.moe_route(&e.ffn, dl.ptr(), ds.ptr(), 1, routes)
                    .unwrap();
                ops.moe_decode(&e.ffn, routes, dx.ptr(), h.ptr(), dy.ptr(), Act::F32)
                    .unwrap();
            }
            // The route: ascending experts, the reference's weights.
            let mut want_route = cpu::route(&logits, k, norm);
            want_route.sort_by_key(|c| c.0);
            let got_ids: Vec<usize> = r
                .download(&ids, k)
                .iter()
                .map(|v| v.to_bits() as usize)
                .collect();
            let got_w = r.download(&weights, k + 1);
            for (j, &(id, w)) in want_route.iter().enumerate() {
                assert_eq!(got_ids[j], id, "{types:?}: slot {j}");
                assert!((got_w[j] - w).abs() <= 1e-6, "{types:?}: weight {j}");
            }
            // The output: y0 plus the weighted experts (and the gated shared one).
            let mut want = y0.clone();
            let mut add = |wt: f32, d: Vec<f32>| {
                want.iter_mut().zip(d).for_each(|(a, b)| *a += wt * b);
            };
            for &(id, w) in &want_route {
                add(w, expert_ref(types, &e.exact[id], &x, width));
            }
            if shared > 0 {
                let g = 1.0 / (1.0 + (-shared_logit[0]).exp());
                assert!((got_w[k] - g).abs() <= 1e-6, "{types:?}: shared gate");
                add(g, expert_ref(types, &e.exact[n_experts], &x, shared));
            }
            let err = rel_err(&r.download(&dy, hidden), &want);
            assert!(err < 1e-4, "{types:?}, {n_experts} experts, top {k}: {err}");
        }
    }
}

#[test]
fn routing_ties_go_to_the_lower_expert() {
    let Some(mut r) = rig("routing_ties_go_to_the_lower_expert") else {
        return;
    };
    let (experts, k, hidden) = (40, 3, 32);
    let e = experts_for_route(&mut r, experts, k, hidden);
    // Equal best logits at 33, 7, 20, 5 and 1 (1 and 33 in one lane), 39 a little lower.
    let mut logits = vec![0f32; experts];
    for i in [33, 7, 20, 5, 1] {
        logits[i] = 4.0;
    }
    logits[39] = 3.5;
    let (dl, ids, w) = (r.upload(&logits), r.zeros(k), r.zeros(k + 1));
    let routes = Routes {
        ids: ids.ptr(),
        weights: w.ptr(),
    };
    // SAFETY: sized above.
    unsafe { r.ops().moe_route(&e.ffn, dl.ptr(), 0, 1, routes).unwrap() };
    let got: Vec<u32> = r.download(&ids, k).iter().map(|v| v.to_bits()).collect();
    assert_eq!(got, [1, 5, 7]);
    let sum: f32 = r.download(&w, k).iter().sum();
    assert!((sum - 1.0).abs() < 1e-6);
}

fn experts_for_route(r: &mut Rig, n: usize, k: usize, hidden: usize) -> Experts {
    experts(r, [WType::F32; 3], (n, k, hidden, 32, 0), true)
}

#[test]
fn gather_and_scatter_move_the_listed_rows() {
    let Some(mut r) = rig("gather_and_scatter_move_the_listed_rows") else {
        return;
    };
    let (tokens, cols, k) = (9, 96, 2);
    // Tokens 7, 2, 4 in slots 1, 0, 1.
    let list: Vec<i32> = vec![7, 1, 2, 0, 4, 1];
    let dlist = r.upload_bytes(crate::gpu::llama::bytes_of(&list));
    for act in [Act::F32, Act::BF16] {
        let x = r.randn(tokens * cols, 1.0);
        let (x_bytes, x_held) = encode_act(act, &x);
        let (dx, dst) = (r.upload_bytes(&x_bytes), r.zeros(3 * cols));
        // SAFETY: three rows of cols values of act in dst (f32-sized), tokens < 9.
        unsafe {
            r.ops()
                .moe_gather(dx.ptr(), dlist.ptr(), 3, cols, act, dst.ptr())
                .unwrap()
        };
        let got = r.download_as(&dst, 3 * cols, act);
        for (i, t) in [7usize, 2, 4].into_iter().enumerate() {
            assert_eq!(
                got[i * cols..][..cols],
                x_held[t * cols..][..cols],
                "{act:?} row {i}"
            );
        }
    }
    let out = r.randn(3 * cols, 1.0);
    let weights = r.randn(tokens * (k + 1), 1.0);
    let y0 = r.randn(tokens * cols, 1.0);
    let (dout, dw, dy) = (r.upload(&out), r.upload(&weights), r.upload(&y0));
    // SAFETY: as above; the weights are [tokens, k + 1].
    unsafe {
        r.ops()
            .moe_scatter(dout.ptr(), dlist.ptr(), 3, dw.ptr(), k + 1, cols, dy.ptr())
            .unwrap()
    };
    let mut want = y0.clone();
    for (i, pair) in list.chunks(2).enumerate() {
        let (t, j) = (pair[0] as usize, pair[1] as usize);
        let wt = weights[t * (k + 1) + j];
        for c in 0..cols {
            // One rounding, as the kernel's fused multiply-add.
            want[t * cols + c] = wt.mul_add(out[i * cols + c], want[t * cols + c]);
        }
    }
    assert_eq!(r.download(&dy, tokens * cols), want);
}
