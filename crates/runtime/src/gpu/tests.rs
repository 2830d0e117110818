//! Each kernel against its CPU reference (`crate::cpu`), on fresh random data. Skipped, with a
//! message, where no CUDA GPU exists.

use std::sync::Arc;

use hoist_cuda::{DevSlice, DeviceBuf, Gpu, Stream};

use super::blas::Blas;
use super::layers::{Act, AttnDims, FusedRope, GemvOut, Mat, Ops, WType};
use super::module::Kernels;
use super::GpuTuning;
use crate::cpu;
use crate::sampler::Rng;

mod attention;
mod elementwise;
mod gemv;
mod moe;
mod q4_tiles;
mod quant;

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
    let kernels =
        Kernels::load(&gpu, Some(&dir), &GpuTuning::default()).expect("kernels compile and load");
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
        self.upload_bytes(crate::gpu::llama::bytes_of(v))
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
        other => unreachable!("{other:?} has no quantizer here: see random_blocks"),
    };
    let exact = match t {
        WType::F32 => values.to_vec(),
        WType::F16 => cpu::f16_to_f32(&bytes),
        WType::BF16 => cpu::bf16_to_f32(&bytes),
        WType::Q8_0 => cpu::dequantize_q8_0(&bytes),
        WType::Q4_0 => cpu::dequantize_q4_0(&bytes),
        _ => unreachable!(),
    };
    (bytes, exact)
}

/// `x` as the block-quantized GEMVs read it (`stage_xq` in kernels/gemv.cu): per 32 values
/// d = max|x| / 32767 and q = x / d rounded half to even, x ≈ d·q.
fn quantized_input(x: &[f32]) -> Vec<f32> {
    x.chunks(32)
        .flat_map(|c| {
            let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 32767.0;
            c.iter().map(move |&v| {
                if amax == 0.0 {
                    0.0
                } else {
                    d * (v / d).round_ties_even()
                }
            })
        })
        .collect()
}

/// The input a GEMV on weights of type `t` multiplies: `x` quantized (`quantized_input`) for the
/// block types, `x` itself for the float ones and tiled Q4_0.
fn gemv_input(t: WType, x: &[f32]) -> Vec<f32> {
    if t.elem().is_none() && t != WType::Q4_0Tiled {
        quantized_input(x)
    } else {
        x.to_vec()
    }
}

/// The f16 fields of a block of `t` (byte offset, and the magnitude that keeps its values
/// near ±0.1: the largest quant times the largest sub-block scale is about 1 / magnitude).
fn scale_fields(t: WType) -> &'static [(usize, f32)] {
    match t {
        WType::Q8_0 => &[(0, 0.05 / 127.0)],
        WType::Q4_0 => &[(0, 0.05 / 8.0)],
        WType::Q4_1 => &[(0, 0.1 / 15.0), (2, 0.05)],
        WType::Q5_0 => &[(0, 0.05 / 16.0)],
        WType::Q5_1 => &[(0, 0.1 / 31.0), (2, 0.05)],
        WType::Q2_K => &[(80, 0.1 / 45.0), (82, 0.05 / 15.0)],
        WType::Q3_K => &[(108, 0.05 / 128.0)],
        WType::Q4_K => &[(0, 0.1 / 945.0), (2, 0.05 / 63.0)],
        WType::Q5_K => &[(0, 0.1 / 1953.0), (2, 0.05 / 63.0)],
        WType::Q6_K => &[(208, 0.05 / 4096.0)],
        WType::IQ4_NL => &[(0, 0.05 / 127.0)],
        WType::IQ4_XS => &[(0, 0.05 / 4064.0)],
        other => panic!("{other:?} is not a block type"),
    }
}

/// `values` values of the block type `t` as random blocks: random quants and scale bytes, f16
/// scales of random sign and of `scale_fields`' magnitude (times 0.5..1), or with `extreme`,
/// any finite f16 (subnormals and 65504 included). Returns the bytes and the values the CPU
/// reference dequantizes them to.
fn random_blocks(r: &mut Rig, t: WType, values: usize, extreme: bool) -> (Vec<u8>, Vec<f32>) {
    let g = t.ggml().expect("a block type");
    let (block_values, block_bytes) = g.block().expect("a block size");
    assert!(values.is_multiple_of(block_values as usize));
    let blocks = values / block_values as usize;
    let mut bytes: Vec<u8> = (0..blocks * block_bytes as usize)
        .map(|_| r.rng.next_u64() as u8)
        .collect();
    for block in bytes.chunks_exact_mut(block_bytes as usize) {
        for &(at, magnitude) in scale_fields(t) {
            let bits = if extreme {
                // Any sign and mantissa; exponents 0..=30 (31 is inf/NaN).
                let b = r.rng.next_u64() as u16;
                (b & 0x83ff) | ((b % 31) << 10)
            } else {
                let v = magnitude * (0.5 + 0.5 * r.rng.next_f64() as f32);
                let signed = if r.rng.next_u64() & 1 == 0 { v } else { -v };
                half::f16::from_f32(signed).to_bits()
            };
            block[at..at + 2].copy_from_slice(&bits.to_le_bytes());
        }
    }
    let exact = crate::quant::dequantize(g, &bytes, values).expect("whole blocks");
    (bytes, exact)
}

/// Fresh weights of type `t`: quantized from random values where hoist has a quantizer (the
/// float types, Q8_0, Q4_0), else random blocks; with the values they hold.
fn random_weights(r: &mut Rig, t: WType, values: usize, scale: f32) -> (Vec<u8>, Vec<f32>) {
    match t {
        WType::F32 | WType::F16 | WType::BF16 | WType::Q8_0 | WType::Q4_0 => {
            let v = r.randn(values, scale);
            encode(t, &v)
        }
        _ => random_blocks(r, t, values, false),
    }
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

/// Checks y = y0 + m·x + bias (the residual form) against the reference, on fresh y0 and bias.
fn added_with_bias(r: &mut Rig, m: &Mat, exact: &[f32], x: &[f32], tol: f32) {
    let (rows, cols) = (m.rows, m.cols);
    let (bias, y0) = (r.randn(rows, 1.0), r.randn(rows, 1.0));
    let (dx, db, dy) = (r.upload(x), r.upload(&bias), r.upload(&y0));
    let out = GemvOut {
        w: m,
        y: dy.ptr(),
        bias: f32s(&db),
    };
    // SAFETY: sized above.
    unsafe { r.ops().gemv(&[out], dx.ptr(), true, None).unwrap() };
    let prod = cpu::matmul_t(&gemv_input(m.wtype, x), exact, cols, rows);
    let want: Vec<f32> = (0..rows).map(|i| y0[i] + prod[i] + bias[i]).collect();
    let e = rel_err(&r.download(&dy, rows), &want);
    assert!(e < tol, "{:?} {rows}x{cols}: {e}", m.wtype);
}

/// Checks three GEMVs in one launch against their references: m, m2 (values `exact`), then m
/// again with the bias `third_bias` (device values and their copy; empty for none), all on input x (also
/// at `dx`), within `tol`.
fn three_at_once(
    r: &Rig,
    [m, m2]: [&Mat; 2],
    [exact, e2]: [&[f32]; 2],
    x: &[f32],
    dx: u64,
    third_bias: (DevSlice<f32>, &[f32]),
    tol: f32,
) {
    let (rows, rows2, cols) = (m.rows, m2.rows, m.cols);
    let (ya, yb, yc) = (r.zeros(rows), r.zeros(rows2), r.zeros(rows));
    let outs = [
        GemvOut {
            w: m,
            y: ya.ptr(),
            bias: DevSlice::empty(),
        },
        GemvOut {
            w: m2,
            y: yb.ptr(),
            bias: DevSlice::empty(),
        },
        GemvOut {
            w: m,
            y: yc.ptr(),
            bias: third_bias.0,
        },
    ];
    // SAFETY: sized above; the caller's x and bias hold cols and rows values.
    unsafe { r.ops().gemv(&outs, dx, false, None).unwrap() };
    let want = cpu::matmul_t(&gemv_input(m.wtype, x), exact, cols, rows);
    assert!(rel_err(&r.download(&ya, rows), &want) < tol);
    let want2 = cpu::matmul_t(&gemv_input(m2.wtype, x), e2, cols, rows2);
    assert!(rel_err(&r.download(&yb, rows2), &want2) < tol);
    let with_bias: Vec<f32> = want.iter().zip(third_bias.1).map(|(a, b)| a + b).collect();
    assert!(rel_err(&r.download(&yc, rows), &with_bias) < tol);
}

/// The whole of `buf` as f32 values.
fn f32s(buf: &DeviceBuf) -> DevSlice<f32> {
    DevSlice::of(buf).expect("an f32 buffer")
}

/// The whole of `buf` as bytes (a matrix's data).
/// A `[rows, cols]` matrix of `wtype` over all of `buf`.
fn mat_of(buf: &DeviceBuf, wtype: WType, rows: usize, cols: usize) -> Mat {
    Mat {
        data: byte_view(buf),
        wtype,
        rows,
        cols,
    }
}

fn byte_view(buf: &DeviceBuf) -> DevSlice<u8> {
    DevSlice::of(buf).expect("a byte buffer")
}
