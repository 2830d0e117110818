//! Speed of a resident model against the limits of the same GPU, measured in the same run:
//! decode against the memory bound (weight bytes per token over device-to-device copy
//! bandwidth), prefill against cuBLAS running the prefill's matrix products alone.

use std::time::Instant;

use hoist_cuda::DeviceBuf;

use super::{GpuError, GpuModel};
use crate::sampler::argmax;
use crate::RuntimeError;

/// Decode and prefill speed of a model against the limits measured in the same run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SpeedReport {
    /// Device-to-device copy bandwidth, GB/s (bytes read plus bytes written, per second).
    pub d2d_gbps: f64,
    /// Weight bytes one decoded token reads.
    pub weight_bytes_per_token: u64,
    /// Decode rate the bandwidth allows: `d2d_gbps / weight bytes per token`.
    pub decode_bound_tokens_per_s: f64,
    /// Decode tokens timed.
    pub decode_tokens: usize,
    /// Greedy decode tokens per second as `hoist run --temperature 0` decodes: the arg-max
    /// taken on the GPU, steps queued ahead of the host, which reads each token as it comes
    /// ([`super::GpuSession::decode_greedy`]).
    pub decode_tokens_per_s: f64,
    /// `decode_tokens_per_s / decode_bound_tokens_per_s`.
    pub decode_fraction_of_bound: f64,
    /// Decode tokens per second with each step's logits copied to the host and the arg-max
    /// chosen there before the next step starts: the path of sampling at temperature > 0.
    pub decode_host_tokens_per_s: f64,
    /// `decode_host_tokens_per_s / decode_bound_tokens_per_s`.
    pub decode_host_fraction_of_bound: f64,
    /// Whether both decode paths chose the same tokens (they run the same kernels).
    pub decode_paths_agree: bool,
    /// Prompt tokens of the timed prefill.
    pub prefill_tokens: usize,
    /// Seconds of the prefill (median of the timed runs; last position's logits on the host).
    pub prefill_seconds: f64,
    /// Prefill tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Seconds cuBLAS takes for the prefill's matrix products alone (same shapes, same types;
    /// median of the timed runs).
    pub cublas_gemm_seconds: f64,
    /// FLOPs of those products.
    pub gemm_flops: f64,
    /// `cublas_gemm_seconds / prefill_seconds`: the prefill's FLOP rate over cuBLAS's.
    pub prefill_fraction_of_cublas: f64,
    /// Streamed layers against their own bound (`None` when every layer is resident).
    pub streaming: Option<StreamingReport>,
}

/// A streamed model's speed against the streaming bound, all measured in the same run: a step
/// cannot be faster than its compute (timed with the copies left out) nor than its streamed
/// bytes over the bandwidth of the tier they come from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamingReport {
    /// Layers resident in GPU memory.
    pub resident_layers: usize,
    /// Layers copied from pinned host memory each step.
    pub pinned_layers: usize,
    /// Layers read from the file each step (then copied).
    pub file_layers: usize,
    /// GPU slots streamed layers are copied into.
    pub slots: usize,
    /// Bytes copied to the GPU per decoded token (every streamed layer once).
    pub streamed_bytes_per_token: u64,
    /// Of those, bytes read from the file per token.
    pub file_bytes_per_token: u64,
    /// Layers whose decode FFN the host computes (their FFN weights are not copied).
    pub host_ffn_layers: usize,
    /// The host's matrix-vector bandwidth measured at load, GB/s.
    pub host_gbps: Option<f64>,
    /// Bytes copied to the GPU per decoded token: `streamed_bytes_per_token` less the hybrid
    /// layers' FFN weights.
    pub decode_copied_bytes_per_token: u64,
    /// Pinned host to GPU copy bandwidth, GB/s, measured on a layer of the pinned tier (the
    /// file tier's copies go the same way): `None` without a pinned layer.
    pub h2d_gbps: Option<f64>,
    /// File read bandwidth into pinned staging, GB/s (`None` without a file tier).
    pub file_gbps: Option<f64>,
    /// Seconds of one decode step with the copies left out (the host's FFN included).
    pub decode_compute_seconds: f64,
    /// `1 / max(compute, copied bytes / h2d, file bytes / file)` per token.
    pub decode_bound_tokens_per_s: f64,
    /// The greedy decode rate over that bound.
    pub decode_fraction_of_bound: f64,
    /// Seconds of the prefill with the copies left out.
    pub prefill_compute_seconds: f64,
    /// The prefill's bound: its tokens over max(compute, its chunks' streamed bytes over the
    /// bandwidths).
    pub prefill_bound_tokens_per_s: f64,
    /// The prefill rate over that bound.
    pub prefill_fraction_of_bound: f64,
}

/// Timed repetitions of the prefill and of the GEMM yardstick (the median is reported).
const REPEATS: usize = 5;
/// Bytes of each buffer of the copy-bandwidth measurement (smaller if memory is short).
const D2D_BYTES: usize = 1 << 30;
/// Copies timed for the bandwidth.
const D2D_COPIES: usize = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Device-to-device copy bandwidth, counting bytes read and written.
fn d2d_gbps(model: &GpuModel) -> Result<f64, GpuError> {
    let gpu = model.gpu();
    let (free, _) = gpu.mem_info()?;
    let bytes = D2D_BYTES.min(free as usize / 4) & !0xfff;
    if bytes == 0 {
        return Err(GpuError::Unsupported(
            "no free GPU memory to measure bandwidth".into(),
        ));
    }
    let (a, b) = (DeviceBuf::new(gpu, bytes)?, DeviceBuf::new(gpu, bytes)?);
    let copy = || -> Result<(), GpuError> {
        // SAFETY: `a` holds `bytes` bytes, is another allocation than `b` and is never written;
        // both live across the synchronization below.
        Ok(unsafe { b.copy_from_device_async(model.stream(), a.ptr(), bytes) }?)
    };
    copy()?;
    model.synchronize()?;
    let t = Instant::now();
    for _ in 0..D2D_COPIES {
        copy()?;
    }
    model.synchronize()?;
    Ok((2 * bytes * D2D_COPIES) as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// Measures `model`: a prefill of `prompt_tokens` (pseudo-random ids) and `decode_tokens`
/// greedy decode steps after it.
pub fn measure(
    model: &GpuModel,
    prompt_tokens: usize,
    decode_tokens: usize,
) -> Result<SpeedReport, RuntimeError> {
    if prompt_tokens == 0 || decode_tokens == 0 {
        return Err(GpuError::Unsupported(
            "the benchmark needs at least one prompt and one decode token".into(),
        )
        .into());
    }
    let vocab = model.config().vocab_size as u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let prompt: Vec<u32> = (0..prompt_tokens)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab) as u32
        })
        .collect();
    let d2d = d2d_gbps(model)?;
    let mut session = model.session(prompt_tokens + decode_tokens + 1)?;

    // Warm-up (cuBLAS picks and loads its kernels on first use), then timed prefills.
    session.forward(&prompt, false)?;
    let mut prefill = Vec::with_capacity(REPEATS);
    let mut logits = Vec::new();
    for _ in 0..REPEATS {
        session.clear();
        let t = Instant::now();
        logits = session.forward(&prompt, false)?;
        prefill.push(t.elapsed().as_secs_f64());
    }
    let prefill_seconds = median(prefill);

    // Both decode paths start from the same prefill: one untimed step first (it captures the
    // path's graph; the capacity has room for it), then `decode_tokens` timed ones.
    let first = argmax(&logits);
    let mut host_tokens = Vec::with_capacity(decode_tokens + 1);
    logits = session.forward(&[first], false)?;
    host_tokens.push(argmax(&logits));
    let t = Instant::now();
    for _ in 0..decode_tokens {
        logits = session.forward(&[host_tokens[host_tokens.len() - 1]], false)?;
        host_tokens.push(argmax(&logits));
    }
    let host_seconds = t.elapsed().as_secs_f64();

    session.truncate(prompt_tokens);
    session.decode_greedy(first, 1, &mut |_| true)?;
    session.truncate(prompt_tokens);
    let mut device_tokens = Vec::with_capacity(decode_tokens);
    let t = Instant::now();
    session.decode_greedy(first, decode_tokens, &mut |token| {
        device_tokens.push(token);
        true
    })?;
    let decode_seconds = t.elapsed().as_secs_f64();

    // The same products as the prefill: its chunks of at most MAX_CHUNK_TOKENS tokens.
    let chunk = prompt_tokens.min(super::llama::MAX_CHUNK_TOKENS);
    let gemms = |session: &super::GpuSession<'_>| -> Result<(), GpuError> {
        for _ in 0..prompt_tokens / chunk {
            session.gemms_only(chunk)?;
        }
        if !prompt_tokens.is_multiple_of(chunk) {
            session.gemms_only(prompt_tokens % chunk)?;
        }
        Ok(())
    };
    gemms(&session)?;
    let mut gemm = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let t = Instant::now();
        gemms(&session)?;
        gemm.push(t.elapsed().as_secs_f64());
    }
    let cublas_gemm_seconds = median(gemm);
    let gemm_flops = 2.0
        * prompt_tokens as f64
        * session
            .model()
            .layer_shapes()
            .iter()
            .map(|&(r, c)| (r * c) as f64)
            .sum::<f64>();

    drop(session);
    let streaming = match model.stats().placement.streams() {
        true => Some(streaming(
            model,
            &prompt,
            decode_tokens,
            (
                prompt_tokens as f64 / prefill_seconds,
                decode_tokens as f64 / decode_seconds,
            ),
        )?),
        false => None,
    };

    let bytes = model.weight_bytes_per_token();
    let bound = d2d * 1e9 / bytes as f64;
    let decode_rate = decode_tokens as f64 / decode_seconds;
    let host_rate = decode_tokens as f64 / host_seconds;
    Ok(SpeedReport {
        d2d_gbps: d2d,
        weight_bytes_per_token: bytes,
        decode_bound_tokens_per_s: bound,
        decode_tokens,
        decode_tokens_per_s: decode_rate,
        decode_fraction_of_bound: decode_rate / bound,
        decode_host_tokens_per_s: host_rate,
        decode_host_fraction_of_bound: host_rate / bound,
        decode_paths_agree: host_tokens[..decode_tokens] == device_tokens[..],
        prefill_tokens: prompt_tokens,
        prefill_seconds,
        prefill_tokens_per_s: prompt_tokens as f64 / prefill_seconds,
        cublas_gemm_seconds,
        gemm_flops,
        prefill_fraction_of_cublas: cublas_gemm_seconds / prefill_seconds,
        streaming,
    })
}

/// Turns the streamer's copies back on when dropped (the compute-only timing must not leave
/// the model computing on stale slots, whatever fails).
struct CopiesOff<'a>(&'a GpuModel);

impl Drop for CopiesOff<'_> {
    fn drop(&mut self) {
        self.0.set_stream_copies(true);
    }
}

/// The streaming bound of a streamed model: the tiers' bandwidths, and the prefill and decode
/// timed again with the copies left out (a fresh session, whose decode graph holds no copies);
/// `rates` are the measured prefill and decode tokens per second.
fn streaming(
    model: &GpuModel,
    prompt: &[u32],
    decode_tokens: usize,
    (prefill_rate, decode_rate): (f64, f64),
) -> Result<StreamingReport, RuntimeError> {
    let plan = &model.stats().placement;
    let (h2d, file) = model.measure_stream_tiers()?;
    let (prefill_compute, decode_compute) = {
        let _restore = CopiesOff(model);
        model.set_stream_copies(false);
        let mut session = model.session(prompt.len() + decode_tokens + 1)?;
        session.forward(prompt, false)?;
        let mut prefill = Vec::with_capacity(REPEATS);
        for _ in 0..REPEATS {
            session.clear();
            let t = Instant::now();
            session.forward(prompt, false)?;
            prefill.push(t.elapsed().as_secs_f64());
        }
        session.decode_greedy(0, 1, &mut |_| true)?;
        session.truncate(prompt.len());
        let t = Instant::now();
        session.decode_greedy(0, decode_tokens, &mut |_| true)?;
        (
            median(prefill),
            t.elapsed().as_secs_f64() / decode_tokens as f64,
        )
    };
    let stats = model.stats();
    // Seconds the tiers need for `steps` steps copying `copied` bytes each (the file tier's
    // bytes are read and then copied: both bounds apply).
    let tiers = |steps: f64, copied: u64| -> f64 {
        let copy = h2d.map_or(0.0, |g| steps * copied as f64 / (g * 1e9));
        let read = file.map_or(0.0, |g| steps * plan.file_bytes_per_step as f64 / (g * 1e9));
        copy.max(read)
    };
    let chunks = prompt.len().div_ceil(super::llama::MAX_CHUNK_TOKENS) as f64;
    let decode_bound = 1.0 / decode_compute.max(tiers(1.0, stats.decode_streamed_bytes_per_token));
    let prefill_bound =
        prompt.len() as f64 / prefill_compute.max(tiers(chunks, plan.streamed_bytes_per_step));
    Ok(StreamingReport {
        resident_layers: plan.resident_layers(),
        pinned_layers: plan.pinned_layers(),
        file_layers: plan.file_layers(),
        slots: plan.slots,
        streamed_bytes_per_token: plan.streamed_bytes_per_step,
        file_bytes_per_token: plan.file_bytes_per_step,
        host_ffn_layers: stats.host_ffn_layers,
        host_gbps: stats.host_gbps,
        decode_copied_bytes_per_token: stats.decode_streamed_bytes_per_token,
        h2d_gbps: h2d,
        file_gbps: file,
        decode_compute_seconds: decode_compute,
        decode_bound_tokens_per_s: decode_bound,
        decode_fraction_of_bound: decode_rate / decode_bound,
        prefill_compute_seconds: prefill_compute,
        prefill_bound_tokens_per_s: prefill_bound,
        prefill_fraction_of_bound: prefill_rate / prefill_bound,
    })
}
