//! The hybrid decode step of a streamed layer: its attention on the GPU (only the attention
//! weights are copied), its feed-forward on the CPU, read from the layer's pinned copy at host
//! memory speed while PCIe brings other layers. What llama.cpp does for its CPU layers, but
//! for the FFN only, so the KV cache stays on the GPU and only the normalised hidden state
//! (4 bytes × hidden) crosses each way.

use std::sync::Mutex;
use std::time::Instant;

use hoist_cuda::{DevSlice, DeviceBuf, Event, Gpu, PinnedAlloc, PinnedBuf, Stream};

use crate::cpu::gemv::{gemv, HostWType};
use crate::cpu::ops::swiglu;
use crate::gpu::layers::{Ops, WType};
use crate::gpu::GpuError;

/// A host matrix: its bytes in pinned memory and its type.
pub(super) struct HostMat<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) wtype: HostWType,
}

/// The host type of a GPU weight type, for the types the host products read.
pub(super) fn host_wtype(w: WType) -> Option<HostWType> {
    match w {
        WType::F32 => Some(HostWType::F32),
        WType::F16 => Some(HostWType::F16),
        WType::BF16 => Some(HostWType::BF16),
        _ => None,
    }
}

/// The CPU side of the hybrid step: a thread pool, the pinned vectors that cross PCIe, and
/// the feed-forward's work vectors.
pub(super) struct HostCompute {
    pool: rayon::ThreadPool,
    io: Mutex<Io>,
    /// The FFN's output on the device, added into the residual.
    out_dev: DeviceBuf,
    /// Recorded after the hidden state's copy to the host.
    ready: Event,
    hidden: usize,
}

struct Io {
    /// The normalised hidden state, from the device.
    xn: PinnedBuf,
    /// The FFN's output, to the device.
    out: PinnedBuf,
    g: Vec<f32>,
    u: Vec<f32>,
    y: Vec<f32>,
}

impl HostCompute {
    /// Buffers for a model of `hidden` width and `inter` FFN width.
    pub(super) fn new(
        gpu: &std::sync::Arc<Gpu>,
        hidden: usize,
        inter: usize,
    ) -> Result<HostCompute, GpuError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hoist-host-ffn-{i}"))
            .build()
            .map_err(|e| {
                GpuError::Unsupported(format!("cannot start the host FFN threads: {e}"))
            })?;
        let pinned =
            |n: usize| PinnedBuf::new(gpu, (n * 4).next_multiple_of(4096), PinnedAlloc::HostAlloc);
        Ok(HostCompute {
            pool,
            io: Mutex::new(Io {
                xn: pinned(hidden)?,
                out: pinned(hidden)?,
                g: vec![0.0; inter],
                u: vec![0.0; inter],
                y: vec![0.0; hidden],
            }),
            out_dev: DeviceBuf::new(gpu, hidden * 4)?,
            ready: Event::new(gpu)?,
            hidden,
        })
    }

    /// Seconds of one product over `m` (`rows` × `hidden` values), for the planner.
    pub(super) fn time_gemv_once(&self, m: &HostMat<'_>, rows: usize) -> f64 {
        let cols = m.bytes.len() / (rows * m.wtype.bytes());
        let x = vec![0.5f32; cols];
        let mut y = vec![0f32; rows];
        let t = Instant::now();
        gemv(&self.pool, m.bytes, m.wtype, &x, &mut y);
        t.elapsed().as_secs_f64()
    }

    /// `x += down · swiglu(gate · xn, up · xn)` for one token: `xn` (the session's f32
    /// normalised hidden state, first row) is copied to the host once `compute` reaches this
    /// point, the products run on the pool, the result is copied back and added on `compute`.
    /// The host waits for the device here (the step cannot be captured into a graph).
    ///
    /// # Safety
    /// `x` must be the session's f32 residual of at least `hidden` values, alive while the
    /// queued work runs.
    pub(super) unsafe fn run(
        &self,
        ops: &Ops<'_>,
        xn: &DeviceBuf,
        x: u64,
        [gate, up, down]: [HostMat<'_>; 3],
    ) -> Result<(), GpuError> {
        let compute: &Stream = ops.stream;
        let h = self.hidden;
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        let io = &mut *io;
        // SAFETY: the pinned vector is read by the host only after `ready` reports the copy
        // done (below); `xn` holds at least `h` f32 values (a session buffer of `chunk` rows).
        unsafe { xn.read_to_pinned_async(compute, &io.xn, 0, h * 4)? };
        self.ready.record(compute)?;
        self.ready.synchronize()?;
        let x_host: &[f32] = f32s(&io.xn.as_slice()[..h * 4]);
        gemv(&self.pool, gate.bytes, gate.wtype, x_host, &mut io.g);
        gemv(&self.pool, up.bytes, up.wtype, x_host, &mut io.u);
        swiglu(&mut io.g, &io.u);
        gemv(&self.pool, down.bytes, down.wtype, &io.g, &mut io.y);
        // The previous layer's upload out of `out` was queued before this layer's download,
        // whose completion was just waited for: the host may rewrite it.
        io.out.as_mut_slice()[..h * 4].copy_from_slice(super::bytes_of(&io.y));
        // SAFETY: `out` is rewritten only after the next `ready` (after this copy, same
        // stream); `out_dev` holds `h` f32 values; the caller vouches for `x`.
        unsafe {
            self.out_dev
                .write_from_pinned_async(compute, 0, &io.out, 0, h * 4)?;
            ops.add_bias(x, DevSlice::of(&self.out_dev)?, 1, h)?;
        }
        Ok(())
    }
}

/// Little-endian f32 bytes as f32s (the pinned buffer is page aligned).
fn f32s(bytes: &[u8]) -> &[f32] {
    assert!(bytes.len().is_multiple_of(4) && (bytes.as_ptr() as usize).is_multiple_of(4));
    // SAFETY: aligned (checked), whole values (checked), any bits are a valid f32.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, bytes.len() / 4) }
}
