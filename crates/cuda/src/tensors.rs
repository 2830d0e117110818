//! Tensors on the GPU: where their bytes live (few large allocations with tensors as views, or
//! one allocation per tensor), and reading them back to check them against the files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hoist_format::{TensorInfo, TensorTable};
use hoist_io::plan::{Chunk, Plan};
use serde::Serialize;

use crate::driver::{copy_dtoh, DeviceBuf, Gpu};
use crate::first_error::FirstError;
use crate::CudaError;

/// How the final tensors are laid out in device memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DestLayout {
    /// One allocation per plan region (adjacent tensors of a file share one), tensors are views
    /// at their file offsets inside it: each chunk is one copy, and allocations are few.
    Regions,
    /// One allocation per tensor (each freeable on its own); a chunk becomes one copy per
    /// tensor it carries.
    PerTensor,
    /// One allocation per plan region with each tensor at a [`PACKED_ALIGN_BYTES`]-aligned
    /// offset: few allocations like `Regions`, the alignment of `PerTensor`. A chunk becomes one
    /// copy per tensor it carries. The default: file offsets are often only 8-byte aligned, and
    /// GPU kernels (cuBLAS GEMMs, vectorized loads) pick other, slower or differently rounding
    /// code paths for such tensors than for the 256-byte-aligned ones other loaders produce.
    Packed,
}

/// Alignment of each tensor in the [`DestLayout::Packed`] layout (what cudaMalloc guarantees).
pub const PACKED_ALIGN_BYTES: u64 = 256;

impl DestLayout {
    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DestLayout::Regions => "regions",
            DestLayout::PerTensor => "per-tensor",
            DestLayout::Packed => "packed",
        }
    }
}

/// The device allocations of one load.
#[derive(Debug)]
pub(crate) struct Destinations {
    layout: DestLayout,
    /// One per region or one per placement, by layout.
    bufs: Vec<DeviceBuf>,
    /// Packed layout: each placement's offset inside its region's buffer.
    packed_offsets: Vec<u64>,
}

/// Packed offsets of every placement inside its region, and each region's packed size.
fn packed(plan: &Plan) -> (Vec<u64>, Vec<u64>) {
    let mut offsets = Vec::with_capacity(plan.placements.len());
    let mut sizes = vec![0u64; plan.regions.len()];
    for pl in &plan.placements {
        let at = sizes[pl.region].next_multiple_of(PACKED_ALIGN_BYTES);
        offsets.push(at);
        sizes[pl.region] = at + pl.len;
    }
    (offsets, sizes)
}

impl Destinations {
    /// Bytes `layout` allocates for `plan`.
    pub(crate) fn needed_bytes(plan: &Plan, layout: DestLayout) -> u64 {
        match layout {
            DestLayout::Regions => plan.buffer_bytes(),
            // cuMemAlloc rounds each allocation up to at least 512 bytes (2 MiB pages in
            // practice); count the alignment so the free-memory check is honest.
            DestLayout::PerTensor => plan
                .placements
                .iter()
                .map(|p| p.len.next_multiple_of(512))
                .sum(),
            DestLayout::Packed => packed(plan).1.iter().sum(),
        }
    }

    pub(crate) fn alloc(
        gpu: &Arc<Gpu>,
        plan: &Plan,
        layout: DestLayout,
    ) -> Result<Destinations, CudaError> {
        let mut packed_offsets = Vec::new();
        let sizes: Vec<u64> = match layout {
            DestLayout::Regions => plan.regions.iter().map(|r| r.len()).collect(),
            DestLayout::PerTensor => plan.placements.iter().map(|p| p.len).collect(),
            DestLayout::Packed => {
                let (offsets, sizes) = packed(plan);
                packed_offsets = offsets;
                sizes
            }
        };
        let bufs = sizes
            .iter()
            .map(|&n| DeviceBuf::new(gpu, n as usize))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Destinations {
            layout,
            bufs,
            packed_offsets,
        })
    }

    pub(crate) fn layout(&self) -> DestLayout {
        self.layout
    }

    /// Bytes allocated.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.bufs.iter().map(|b| b.len() as u64).sum()
    }

    /// Base address of region `r` (Regions layout).
    pub(crate) fn region_ptr(&self, r: usize) -> u64 {
        self.bufs[r].ptr()
    }

    /// Device address of placement `p`.
    pub(crate) fn placement_ptr(&self, plan: &Plan, p: usize) -> u64 {
        let pl = &plan.placements[p];
        match self.layout {
            DestLayout::Regions => self.bufs[pl.region].ptr() + pl.offset,
            DestLayout::PerTensor => self.bufs[p].ptr(),
            DestLayout::Packed => self.bufs[pl.region].ptr() + self.packed_offsets[p],
        }
    }

    /// The copies that put `chunk`'s bytes in place: `(device address, offset in the chunk's
    /// buffer, bytes)`, each inside the chunk's `need` bytes and inside one allocation.
    pub(crate) fn copies(&self, plan: &Plan, chunk: &Chunk) -> Vec<(u64, usize, usize)> {
        match self.layout {
            DestLayout::Regions => vec![(
                self.bufs[chunk.region].ptr() + chunk.region_offset,
                0,
                chunk.need as usize,
            )],
            DestLayout::PerTensor | DestLayout::Packed => {
                let region_start = plan.regions[chunk.region].start;
                let (lo_chunk, hi_chunk) = (chunk.file_offset, chunk.file_offset + chunk.need);
                chunk
                    .placements
                    .clone()
                    .filter_map(|p| {
                        let pl = &plan.placements[p];
                        let (t_lo, t_hi) =
                            (region_start + pl.offset, region_start + pl.offset + pl.len);
                        let (lo, hi) = (t_lo.max(lo_chunk), t_hi.min(hi_chunk));
                        (lo < hi).then(|| {
                            (
                                self.placement_ptr(plan, p) + (lo - t_lo),
                                (lo - lo_chunk) as usize,
                                (hi - lo) as usize,
                            )
                        })
                    })
                    .collect()
            }
        }
    }
}

/// One tensor on the GPU.
#[derive(Clone, Debug, Serialize)]
pub struct GpuTensor {
    /// The tensor's table entry (name, dtype, shape, file, byte range).
    pub info: TensorInfo,
    /// Device address of the first byte (0 for an empty tensor). Valid while the
    /// [`GpuTensors`] it came from lives.
    pub device_ptr: u64,
    /// Device ordinal (`cuda:N`).
    pub ordinal: usize,
}

impl GpuTensor {
    /// Byte length.
    pub fn len_bytes(&self) -> u64 {
        self.info.len
    }
}

/// The loaded tensors and the device memory that holds them (freed on drop).
#[derive(Debug)]
pub struct GpuTensors {
    gpu: Arc<Gpu>,
    dest: Destinations,
    tensors: Vec<GpuTensor>,
}

/// What [`GpuTensors::verify_against_files`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    /// Tensors compared.
    pub tensors: usize,
    /// Bytes compared.
    pub bytes: u64,
    /// One line per tensor whose device bytes differ from the file: name and first differing
    /// offset. Empty when every byte matches.
    pub mismatches: Vec<String>,
}

/// Bytes copied back at a time when verifying.
const VERIFY_PIECE_BYTES: usize = 16 << 20;

impl GpuTensors {
    pub(crate) fn new(gpu: Arc<Gpu>, dest: Destinations, tensors: Vec<GpuTensor>) -> GpuTensors {
        GpuTensors { gpu, dest, tensors }
    }

    /// The tensors: the selection's non-empty tensors in file order, then its empty ones.
    pub fn tensors(&self) -> &[GpuTensor] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&GpuTensor> {
        self.tensors.iter().find(|t| t.info.name == name)
    }

    /// Device bytes allocated for the tensors (alignment slack included).
    pub fn allocated_bytes(&self) -> u64 {
        self.dest.allocated_bytes()
    }

    /// How the tensors are laid out in device memory.
    pub fn layout(&self) -> DestLayout {
        self.dest.layout()
    }

    /// Copies tensor `i` (index into [`GpuTensors::tensors`]) back into host memory.
    pub fn copy_to_host(&self, i: usize) -> Result<Vec<u8>, CudaError> {
        let t = &self.tensors[i];
        let mut out = vec![0u8; t.info.len as usize];
        // SAFETY: the tensor's bytes lie inside an allocation this value owns.
        unsafe { copy_dtoh(&self.gpu, &mut out, t.device_ptr)? };
        Ok(out)
    }

    /// xxh3-64 of every tensor's device bytes (copied back piecewise, on `threads` threads), in
    /// the order of [`GpuTensors::tensors`].
    pub fn xxh3(&self, threads: usize) -> Result<Vec<u64>, CudaError> {
        let out = Mutex::new(vec![0u64; self.tensors.len()]);
        self.for_each_parallel(threads, |i, buf| {
            let t = &self.tensors[i];
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            let mut done = 0u64;
            while done < t.info.len {
                let n = (t.info.len - done).min(VERIFY_PIECE_BYTES as u64) as usize;
                // SAFETY: [done, done + n) lies inside the tensor's allocation.
                unsafe { copy_dtoh(&self.gpu, &mut buf[..n], t.device_ptr + done)? };
                h.update(&buf[..n]);
                done += n as u64;
            }
            out.lock().unwrap_or_else(|p| p.into_inner())[i] = h.digest();
            Ok(())
        })?;
        Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// Compares every tensor's device bytes with its bytes in the checkpoint files of `table`
    /// (the table the tensors were loaded from), on `threads` threads.
    pub fn verify_against_files(
        &self,
        table: &TensorTable,
        threads: usize,
    ) -> Result<Verification, CudaError> {
        let files: Vec<File> = table
            .files
            .iter()
            .map(|f| {
                File::open(&f.path).map_err(|source| CudaError::File {
                    path: f.path.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let mismatches = Mutex::new(Vec::new());
        let bytes = std::sync::atomic::AtomicU64::new(0);
        self.for_each_parallel(threads, |i, buf| {
            let t = &self.tensors[i].info;
            let mut want = vec![0u8; VERIFY_PIECE_BYTES.min(t.len as usize)];
            let mut done = 0u64;
            while done < t.len {
                let n = (t.len - done).min(VERIFY_PIECE_BYTES as u64) as usize;
                // SAFETY: [done, done + n) lies inside the tensor's allocation.
                unsafe { copy_dtoh(&self.gpu, &mut buf[..n], self.tensors[i].device_ptr + done)? };
                files[t.file]
                    .read_exact_at(&mut want[..n], t.offset + done)
                    .map_err(|source| CudaError::File {
                        path: table.files[t.file].path.clone(),
                        source,
                    })?;
                if let Some(at) = buf[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
                    mismatches
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!(
                            "{}: device byte {} is {:#04x}, file has {:#04x}",
                            t.name,
                            done + at as u64,
                            buf[at],
                            want[at]
                        ));
                    break;
                }
                done += n as u64;
            }
            bytes.fetch_add(done, Ordering::Relaxed);
            Ok(())
        })?;
        let mut mismatches = mismatches.into_inner().unwrap_or_else(|p| p.into_inner());
        mismatches.sort();
        Ok(Verification {
            tensors: self.tensors.len(),
            bytes: bytes.into_inner(),
            mismatches,
        })
    }

    /// Runs `f(tensor index, scratch buffer)` over every tensor on `threads` threads.
    fn for_each_parallel(
        &self,
        threads: usize,
        f: impl Fn(usize, &mut Vec<u8>) -> Result<(), CudaError> + Sync,
    ) -> Result<(), CudaError> {
        let next = AtomicUsize::new(0);
        let failed = FirstError::default();
        std::thread::scope(|s| {
            for _ in 0..threads.clamp(1, 64) {
                s.spawn(|| {
                    let mut buf = vec![0u8; VERIFY_PIECE_BYTES];
                    while !failed.aborted() {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= self.tensors.len() {
                            return;
                        }
                        if let Err(e) = f(i, &mut buf) {
                            failed.record(e);
                            return;
                        }
                    }
                });
            }
        });
        failed.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_io::PlanConfig;

    #[test]
    fn packed_offsets_are_aligned_disjoint_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spec = hoist_synth::preset("tiny").unwrap().spec;
        let root = hoist_synth::write_checkpoint(&spec, dir.path(), 2).unwrap();
        let table = hoist_format::TensorTable::open(&root).unwrap();
        let all: Vec<usize> = (0..table.tensors.len()).collect();
        let plan = Plan::new(
            &table,
            &all,
            PlanConfig {
                chunk_bytes: 64 << 10,
                ..PlanConfig::default()
            },
        )
        .unwrap();
        let (offsets, sizes) = packed(&plan);
        assert_eq!(offsets.len(), plan.placements.len());
        let mut end_in_region = vec![0u64; plan.regions.len()];
        for (p, pl) in plan.placements.iter().enumerate() {
            assert_eq!(offsets[p] % PACKED_ALIGN_BYTES, 0);
            assert!(
                offsets[p] >= end_in_region[pl.region],
                "placement {p} overlaps the one before"
            );
            end_in_region[pl.region] = offsets[p] + pl.len;
            assert!(end_in_region[pl.region] <= sizes[pl.region]);
        }
        assert_eq!(end_in_region, sizes);
        let slack: u64 = sizes.iter().sum::<u64>() - plan.tensor_bytes();
        assert!(slack < PACKED_ALIGN_BYTES * plan.placements.len() as u64);
    }
}
