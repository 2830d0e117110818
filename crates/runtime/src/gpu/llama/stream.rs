//! Layer streaming: the decoder layers a [`LayerPlan`] does not keep resident are copied, each
//! step, into one of `k` GPU slots shortly before their kernels run.
//!
//! Each streamed layer `j` (counting streamed layers only) always uses slot `j % k`, so its
//! weight views are made once, at load, and a captured decode graph stays valid: the slots'
//! addresses are fixed, only their contents change. The order of one step, all queued without
//! the host waiting (except to read the file tier into staging):
//! - begin: the copy stream waits for the step's start on the compute stream (the previous
//!   step is done with every slot), then copies layers `0..k` into their slots;
//! - before layer `j`'s kernels: the compute stream waits for `copied[j % k]`;
//! - after them: `freed[j % k]` is recorded on the compute stream, the copy stream waits for
//!   it and copies layer `j + k` into the same slot.
//!
//! With `k >= 2` the copy engine never idles while compute is faster than the copies: the copy
//! of `j + 1` is already queued when `j` computes. A copy from the pinned tier is one
//! `cuMemcpyHtoDAsync` of the packed layer; a layer of the file tier is first read by the host
//! into a pinned staging buffer of its slot (parallel `pread`s: the page cache serves warm
//! files, the disk cold ones), which the host reuses only after that buffer's previous copy has
//! completed (its event). Graphs are captured only without a file tier (host reads cannot be
//! replayed).
//!
//! Hybrid layers (`host_ffn`): in decode steps, a pinned layer chosen at load copies only its
//! attention matrices (a prefix of the packing) and its feed-forward runs on the host from the
//! pinned copy ([`super::host_ffn`]); its slot is released as soon as the attention's kernels
//! are queued, so the next copies run while the host computes. How many layers: as many as
//! [`host_ffn_layers`] finds worth it from bandwidths timed here at load.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hoist_cuda::{DevSlice, DeviceBuf, Event, Gpu, PinnedAlloc, PinnedBuf, Stream};
use hoist_format::TensorTable;

use super::host_ffn::{host_wtype, HostCompute, HostMat};
use super::tier::{fill, read_mat};
use crate::gpu::layers::{Ops, WType};
use crate::gpu::{GpuError, HostFfn};
use crate::placement::{host_ffn_layers, LayerPlan, Placed, Tier};

/// Alignment of each matrix inside a packed layer: what the loader gives resident tensors, so
/// kernels see the same alignment either way.
pub(super) const MAT_ALIGN_BYTES: usize = hoist_cuda::PACKED_ALIGN_BYTES as usize;
/// Most threads reading one layer.
const MAX_READ_THREADS: usize = 8;

/// Offsets of matrices of `bytes` bytes packed one after another, each aligned to
/// [`MAT_ALIGN_BYTES`]; and the packed total.
pub(super) fn pack(bytes: &[usize]) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(bytes.len());
    let mut end = 0usize;
    for &b in bytes {
        let at = end.next_multiple_of(MAT_ALIGN_BYTES);
        offsets.push(at);
        end = at + b;
    }
    (offsets, end)
}

/// One matrix of a streamed layer: where it comes from and where it sits in a slot.
#[derive(Clone, Debug)]
pub(super) struct StreamedMat {
    /// Index into the table's tensors.
    pub(super) tensor: usize,
    /// Index into the table's files.
    pub(super) file: usize,
    /// Where its bytes start in that file.
    pub(super) file_offset: u64,
    /// Offset in the packed layer (and in its slot).
    pub(super) offset: usize,
    /// Its bytes, the same in the file and in the slot (kernels read the file's layout).
    pub(super) bytes: usize,
    /// Its type, the file's.
    pub(super) wtype: WType,
    /// Rows of the matrix.
    pub(super) rows: usize,
}

/// One streamed layer.
struct StreamedLayer {
    layer: usize,
    /// q, k, v, o, gate, up, down.
    mats: Vec<StreamedMat>,
    /// Packed bytes.
    bytes: usize,
    /// Packed bytes of the attention matrices (q, k, v, o: a prefix of the packing).
    attn_bytes: usize,
    /// The pinned tier's copy (`None` for the file tier).
    pinned: Option<PinnedBuf>,
    /// Decode computes its feed-forward on the host (only its attention is copied).
    host_ffn: bool,
}

impl StreamedLayer {
    /// Its gate, up and down matrices in pinned memory, for the host (`None` unless pinned
    /// and of types the host reads).
    fn host_ffn_mats(&self) -> Option<[HostMat<'_>; 3]> {
        let pinned = self.pinned.as_ref()?.as_slice();
        let mat = |m: &StreamedMat| {
            let wtype = host_wtype(m.wtype)?;
            // Whole rows only (a header lying about a shape is refused later, by the builder;
            // the host products must not divide by its zero rows before that).
            let whole_rows = m.rows > 0 && m.bytes.is_multiple_of(m.rows * wtype.bytes());
            whole_rows.then(|| HostMat {
                bytes: &pinned[m.offset..m.offset + m.bytes],
                wtype,
            })
        };
        Some([
            mat(&self.mats[4])?,
            mat(&self.mats[5])?,
            mat(&self.mats[6])?,
        ])
    }
}

/// Bytes of distinct matrices the host's product bandwidth is timed over at load.
const HOST_TIMING_BYTES: usize = 1 << 30;

/// The host's fixed cost per hybrid layer: a device round trip and two small copies.
const HOST_FFN_OVERHEAD_SECONDS: f64 = 100e-6;

/// The streamed layers, their slots and the events that order copies against compute.
pub(super) struct Streamer {
    layers: Vec<StreamedLayer>,
    /// Layer index → streamed index.
    index: Vec<Option<usize>>,
    slots: Vec<DeviceBuf>,
    /// One per slot when some layer comes from the file: the host reads into it.
    staging: Mutex<Vec<PinnedBuf>>,
    /// Recorded after each copy out of a staging buffer.
    staged: Vec<Event>,
    /// The table's files that streamed layers come from, by index, opened at load (so a file
    /// gone missing fails there, not at a step).
    files: Vec<Option<(PathBuf, File)>>,
    copy: Stream,
    step_start: Event,
    copied: Vec<Event>,
    freed: Vec<Event>,
    /// Copies on (the default); off only to time compute alone ([`Streamer::set_copies`]).
    copies: AtomicBool,
    threads: usize,
    /// Tokens of the step being recorded (1: decode, where hybrid layers copy attention only).
    step_tokens: AtomicUsize,
    /// The host side of hybrid layers (`None` without any).
    host: Option<HostCompute>,
    /// The host's product bandwidth measured at load, GB/s (`None`: not measured).
    host_gbps: Option<f64>,
}

impl Streamer {
    /// Allocates the slots (and staging), fills the pinned tier from the files, counting bytes
    /// into `progress`.
    /// `mats[j]` are streamed layer `j`'s matrices, in the order of the plan's streamed layers.
    /// Then decides which layers decode as hybrids (`host_ffn`, for a model of `hidden` and
    /// `inter` widths).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        gpu: &Arc<Gpu>,
        table: &TensorTable,
        plan: &LayerPlan,
        mats: Vec<Vec<StreamedMat>>,
        progress: Option<&AtomicU64>,
        host_ffn: HostFfn,
        (hidden, inter): (usize, usize),
    ) -> Result<Streamer, GpuError> {
        let streamed: Vec<(usize, Tier)> = plan
            .layers
            .iter()
            .enumerate()
            .filter_map(|(l, p)| match p {
                Placed::Streamed(t) => Some((l, *t)),
                Placed::Resident => None,
            })
            .collect();
        assert_eq!(
            streamed.len(),
            mats.len(),
            "one matrix list per streamed layer"
        );
        assert!(plan.slots >= 1, "a streaming plan has slots");
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_READ_THREADS);
        let file_tier = plan.file_layers() > 0;
        let mut files: Vec<Option<(PathBuf, File)>> =
            (0..table.files.len()).map(|_| None).collect();
        for (&(layer, _), m) in streamed
            .iter()
            .zip(&mats)
            .flat_map(|(l, ms)| ms.iter().map(move |m| (l, m)))
        {
            if files[m.file].is_none() {
                let path = table.files[m.file].path.clone();
                let file = File::open(&path).map_err(|source| GpuError::StreamRead {
                    path: path.clone(),
                    layer,
                    source,
                })?;
                files[m.file] = Some((path, file));
            }
        }
        let mut index = vec![None; plan.layers.len()];
        let mut layers = Vec::with_capacity(streamed.len());
        for (j, ((layer, tier), mats)) in streamed.into_iter().zip(mats).enumerate() {
            index[layer] = Some(j);
            let bytes = mats.iter().map(|m| m.offset + m.bytes).max().unwrap_or(0);
            assert!(
                bytes as u64 <= plan.slot_bytes,
                "layer {layer} fits its slot"
            );
            let pinned = match tier {
                Tier::File => None,
                Tier::Pinned => {
                    // Ordinary pages registered with the driver, asked to be huge: the CPU
                    // reads hybrid layers from here, and 4 KiB pages cost it TLB misses.
                    let mut buf = PinnedBuf::new(
                        gpu,
                        bytes.next_multiple_of(4096).max(4096),
                        PinnedAlloc::MmapRegister,
                    )?;
                    fill(&files, layer, &mats, buf.as_mut_slice(), threads)?;
                    if let Some(p) = progress {
                        p.fetch_add(bytes as u64, Ordering::Relaxed);
                    }
                    Some(buf)
                }
            };
            assert_eq!(mats.len(), 7, "q, k, v, o, gate, up, down");
            layers.push(StreamedLayer {
                layer,
                attn_bytes: mats[4].offset,
                mats,
                bytes,
                pinned,
                host_ffn: false,
            });
        }
        let slot_bytes = usize::try_from(plan.slot_bytes).unwrap_or(usize::MAX);
        let k = plan.slots;
        let slots = (0..k)
            .map(|_| DeviceBuf::new(gpu, slot_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let staging = match file_tier {
            true => (0..k)
                .map(|_| {
                    PinnedBuf::new(
                        gpu,
                        slot_bytes.next_multiple_of(4096).max(4096),
                        PinnedAlloc::HostAlloc,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?,
            false => Vec::new(),
        };
        let events = |n: usize| {
            (0..n)
                .map(|_| Event::new(gpu))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut streamer = Streamer {
            layers,
            index,
            slots,
            staging: Mutex::new(staging),
            staged: events(if file_tier { k } else { 0 })?,
            files,
            copy: Stream::new(gpu)?,
            step_start: Event::new(gpu)?,
            copied: events(k)?,
            freed: events(k)?,
            copies: AtomicBool::new(true),
            threads,
            step_tokens: AtomicUsize::new(0),
            host: None,
            host_gbps: None,
        };
        streamer.choose_host_ffn(gpu, host_ffn, hidden, inter)?;
        Ok(streamer)
    }

    /// Marks the layers whose decode FFN runs on the host: as `mode` says, or (auto) as many
    /// as [`host_ffn_layers`] finds faster from the host's product bandwidth and the copies'
    /// bandwidth, both measured here on the first eligible layer.
    fn choose_host_ffn(
        &mut self,
        gpu: &Arc<Gpu>,
        mode: HostFfn,
        hidden: usize,
        inter: usize,
    ) -> Result<(), GpuError> {
        let eligible: Vec<usize> = (0..self.layers.len())
            .filter(|&j| self.layers[j].host_ffn_mats().is_some())
            .collect();
        if eligible.is_empty() || mode == HostFfn::Off || mode == HostFfn::Layers(0) {
            return Ok(());
        }
        let host = HostCompute::new(gpu, hidden, inter)?;
        // Timed over distinct matrices (about 1 GiB of them, more than any cache holds), as
        // decode reads them: one matrix timed again and again would partly come from the
        // last-level cache and flatter the host.
        // A first product starts the pool's threads.
        if let Some([gate, ..]) = self.layers[eligible[0]].host_ffn_mats() {
            let rows = 64.min(self.layers[eligible[0]].mats[4].rows);
            let row_bytes = gate.bytes.len() / self.layers[eligible[0]].mats[4].rows;
            let head = HostMat {
                bytes: &gate.bytes[..rows * row_bytes],
                wtype: gate.wtype,
            };
            host.time_gemv_once(&head, rows);
        }
        let mut timed = (0usize, 0f64);
        'time: for &j in &eligible {
            let l = &self.layers[j];
            for (m, s) in l.host_ffn_mats().into_iter().flatten().zip(&l.mats[4..]) {
                timed.0 += m.bytes.len();
                timed.1 += host.time_gemv_once(&m, s.rows);
                if timed.0 >= HOST_TIMING_BYTES {
                    break 'time;
                }
            }
        }
        let host_gbps = (timed.1 > 0.0).then(|| timed.0 as f64 / timed.1 / 1e9);
        self.host_gbps = host_gbps;
        let count = match mode {
            HostFfn::Layers(n) => n.min(eligible.len()),
            _ => {
                let h2d = self.measure_h2d_gbps(3)?.unwrap_or(0.0);
                let split: Vec<(u64, u64)> = eligible
                    .iter()
                    .map(|&j| {
                        let l = &self.layers[j];
                        (l.attn_bytes as u64, (l.bytes - l.attn_bytes) as u64)
                    })
                    .collect();
                let all: u64 = self.layers.iter().map(|l| l.bytes as u64).sum();
                let eligible_bytes: u64 = split.iter().map(|(a, f)| a + f).sum();
                host_ffn_layers(
                    &split,
                    all - eligible_bytes,
                    h2d,
                    host_gbps.unwrap_or(0.0),
                    HOST_FFN_OVERHEAD_SECONDS,
                )
            }
        };
        for &j in &eligible[..count] {
            self.layers[j].host_ffn = true;
        }
        if count > 0 {
            tracing::info!(
                layers = count,
                host_gbps = ?host_gbps,
                "decode computes these streamed layers' feed-forward on the host"
            );
            self.host = Some(host);
        }
        Ok(())
    }

    /// Layers whose decode FFN runs on the host.
    pub(super) fn host_ffn_layers(&self) -> usize {
        self.layers.iter().filter(|l| l.host_ffn).count()
    }

    /// The host's product bandwidth measured at load, GB/s.
    pub(super) fn host_gbps(&self) -> Option<f64> {
        self.host_gbps
    }

    /// Bytes a decode step copies: hybrid layers' attention, the other streamed layers whole.
    pub(super) fn decode_bytes_per_step(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| if l.host_ffn { l.attn_bytes } else { l.bytes } as u64)
            .sum()
    }

    /// Whether layer `l`'s FFN runs on the host in a step of `n` tokens.
    pub(super) fn ffn_on_host(&self, l: usize, n: usize) -> bool {
        n == 1 && self.index[l].is_some_and(|j| self.layers[j].host_ffn)
    }

    /// Runs layer `l`'s FFN on the host ([`HostCompute::run`]).
    ///
    /// # Safety
    /// As [`HostCompute::run`].
    pub(super) unsafe fn host_ffn(
        &self,
        l: usize,
        ops: &Ops<'_>,
        xn: &DeviceBuf,
        x: u64,
    ) -> Result<(), GpuError> {
        let (Some(j), Some(host)) = (self.index[l], &self.host) else {
            unreachable!("ffn_on_host said layer {l} runs on the host")
        };
        let Some(mats) = self.layers[j].host_ffn_mats() else {
            unreachable!("hybrid layers are pinned, of host types")
        };
        // SAFETY: the caller's contract.
        unsafe { host.run(ops, xn, x, mats) }
    }

    /// The device views of the streamed layers' matrices in their slots, by table index.
    pub(super) fn views(&self) -> Result<Vec<(usize, DevSlice<u8>)>, GpuError> {
        let mut out = Vec::new();
        for (j, l) in self.layers.iter().enumerate() {
            let slot = DevSlice::<u8>::of(&self.slots[j % self.slots.len()])?;
            for m in &l.mats {
                // In bounds: the slot holds the largest streamed layer (`new` asserted it).
                out.push((m.tensor, slot.slice(m.offset..m.offset + m.bytes)?));
            }
        }
        Ok(out)
    }

    /// Whether a step may be captured into a graph: no layer comes from the file, none
    /// computes on the host (host work cannot be replayed).
    pub(super) fn capturable(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.pinned.is_some() && !l.host_ffn)
    }

    /// Copies on (the default) or off: off, the steps run on whatever the slots hold, which
    /// times compute alone (the streaming bound's other half). Never off for real output.
    pub(super) fn set_copies(&self, on: bool) {
        self.copies.store(on, Ordering::Relaxed);
    }

    fn copies_on(&self) -> bool {
        self.copies.load(Ordering::Relaxed)
    }

    /// Starts a step of `n` tokens on `compute`: the first `k` streamed layers' copies are
    /// queued.
    pub(super) fn begin_step(&self, compute: &Stream, n: usize) -> Result<(), GpuError> {
        self.step_tokens.store(n, Ordering::Relaxed);
        if !self.copies_on() {
            return Ok(());
        }
        self.step_start.record(compute)?;
        self.copy.wait(&self.step_start)?;
        for j in 0..self.slots.len().min(self.layers.len()) {
            self.queue_copy(j)?;
        }
        Ok(())
    }

    /// Before layer `l`'s kernels: `compute` waits for its copy.
    pub(super) fn before(&self, l: usize, compute: &Stream) -> Result<(), GpuError> {
        if let (Some(j), true) = (self.index[l], self.copies_on()) {
            compute.wait(&self.copied[j % self.slots.len()])?;
        }
        Ok(())
    }

    /// After layer `l`'s kernels: its slot is released to the layer `k` further on.
    pub(super) fn after(&self, l: usize, compute: &Stream) -> Result<(), GpuError> {
        let (Some(j), true) = (self.index[l], self.copies_on()) else {
            return Ok(());
        };
        let k = self.slots.len();
        let s = j % k;
        self.freed[s].record(compute)?;
        if j + k < self.layers.len() {
            self.copy.wait(&self.freed[s])?;
            self.queue_copy(j + k)?;
        }
        Ok(())
    }

    /// Queues streamed layer `j`'s copy into slot `j % k` on the copy stream (after whatever
    /// the copy stream was told to wait for), then records `copied[j % k]`.
    fn queue_copy(&self, j: usize) -> Result<(), GpuError> {
        let s = j % self.slots.len();
        let layer = &self.layers[j];
        let slot = &self.slots[s];
        // A hybrid layer's decode step reads only its attention from the slot.
        let bytes = match layer.host_ffn && self.step_tokens.load(Ordering::Relaxed) == 1 {
            true => layer.attn_bytes,
            false => layer.bytes,
        };
        match &layer.pinned {
            // SAFETY: the pinned tier is written only in `new` and lives as long as the model
            // (and its sessions' graphs); the slot holds the largest layer.
            Some(src) => unsafe { slot.write_from_pinned_async(&self.copy, 0, src, 0, bytes)? },
            None => {
                let mut staging = self
                    .staging
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let buf = &mut staging[s];
                // The host may overwrite the staging buffer once its last copy has run.
                self.staged[s].synchronize()?;
                self.read_file_layer(layer, buf.as_mut_slice())?;
                // SAFETY: the buffer is rewritten by the host only after `staged[s]`, recorded
                // just below, reports this copy done.
                unsafe { slot.write_from_pinned_async(&self.copy, 0, buf, 0, layer.bytes)? };
                self.staged[s].record(&self.copy)?;
            }
        }
        self.copied[s].record(&self.copy)?;
        Ok(())
    }

    /// Reads a file-tier layer into `dst` at its packed offsets.
    fn read_file_layer(&self, layer: &StreamedLayer, dst: &mut [u8]) -> Result<(), GpuError> {
        for m in &layer.mats {
            read_mat(
                &self.files,
                layer.layer,
                m,
                &mut dst[m.offset..m.offset + m.bytes],
                self.threads,
            )?;
        }
        Ok(())
    }

    /// Copies one pinned layer (the first) into slot 0 and back, `repeats` times, timing only
    /// the host→device copies: the pinned tier's bandwidth, GB/s (`None` without a pinned
    /// layer).
    pub(super) fn measure_h2d_gbps(&self, repeats: usize) -> Result<Option<f64>, GpuError> {
        let Some(layer) = self.layers.iter().find(|l| l.pinned.is_some()) else {
            return Ok(None);
        };
        let Some(src) = &layer.pinned else {
            return Ok(None);
        };
        self.copy.synchronize()?;
        let t = std::time::Instant::now();
        for _ in 0..repeats {
            // SAFETY: as in `queue_copy`; the caller has no step in flight (the bench waits).
            unsafe { self.slots[0].write_from_pinned_async(&self.copy, 0, src, 0, layer.bytes)? };
        }
        self.copy.synchronize()?;
        let seconds = t.elapsed().as_secs_f64();
        Ok(Some((layer.bytes * repeats) as f64 / seconds / 1e9))
    }

    /// Reads every file-tier layer once into staging, timed: the file tier's bandwidth, GB/s
    /// (`None` without one).
    pub(super) fn measure_file_gbps(&self) -> Result<Option<f64>, GpuError> {
        let file_layers: Vec<&StreamedLayer> =
            self.layers.iter().filter(|l| l.pinned.is_none()).collect();
        if file_layers.is_empty() {
            return Ok(None);
        }
        self.copy.synchronize()?;
        let mut staging = self
            .staging
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let t = std::time::Instant::now();
        let mut bytes = 0usize;
        for l in &file_layers {
            self.read_file_layer(l, staging[0].as_mut_slice())?;
            bytes += l.bytes;
        }
        Ok(Some(bytes as f64 / t.elapsed().as_secs_f64() / 1e9))
    }

    /// The pinned layers, for the one-time Q4_0 tiling at load ([`super::load`]): each layer's
    /// index, its slot and its pinned copy.
    pub(super) fn pinned_layers(
        &mut self,
    ) -> impl Iterator<Item = (usize, &DeviceBuf, &mut PinnedBuf, usize)> {
        let k = self.slots.len();
        let slots = &self.slots;
        self.layers
            .iter_mut()
            .enumerate()
            .filter_map(move |(j, l)| {
                let bytes = l.bytes;
                let layer = l.layer;
                l.pinned.as_mut().map(|p| (layer, &slots[j % k], p, bytes))
            })
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        // Copies in flight read the pinned tier and write the slots, both freed next.
        let _ = self.copy.synchronize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_aligns_each_matrix() {
        let (offsets, total) = pack(&[10, 300, 0, 1]);
        assert_eq!(offsets, vec![0, 256, 768, 768]);
        assert_eq!(total, 769);
        assert_eq!(pack(&[]), (vec![], 0));
    }
}
