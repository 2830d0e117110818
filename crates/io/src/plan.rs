//! The read planner: from a tensor selection to few, large, aligned reads.
//!
//! Selected tensors that touch (their aligned ranges meet or overlap) coalesce into a
//! *region*: one aligned file range `[start, end)` that is read into one destination buffer of
//! the same size, so each tensor lands at `tensor.offset - region.start` inside it and no second
//! copy is ever made. Regions are split into *chunks*, the unit of one read (and of one staging
//! buffer for sinks that stage). Every offset and length is a multiple of `align_bytes`, which
//! is what O_DIRECT asks for; the only bytes read that were not selected are the alignment
//! slack at a region's two ends.

use std::ops::Range;
use std::path::PathBuf;

use hoist_format::TensorTable;

/// Knobs of the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// Largest read (and staging buffer); a multiple of `align_bytes`.
    pub chunk_bytes: u64,
    /// Alignment of offsets, lengths and buffer addresses (O_DIRECT needs the logical block
    /// size; 4 KiB covers every common device).
    pub align_bytes: u64,
}

/// Default largest read: large enough to amortize a syscall and reach a device's
/// sequential rate, small enough to keep tens of reads in flight in a bounded buffer budget.
pub const DEFAULT_CHUNK_BYTES: u64 = 16 << 20;
/// Default alignment.
pub const DEFAULT_ALIGN_BYTES: u64 = 4096;
/// Smallest and largest accepted chunk (a smaller one makes syscalls dominate; a larger one
/// makes staging rings coarse).
pub const CHUNK_BYTES_RANGE: Range<u64> = (64 << 10)..(1 << 30) + 1;

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            align_bytes: DEFAULT_ALIGN_BYTES,
        }
    }
}

/// A file the plan reads.
#[derive(Clone, Debug)]
pub struct PlanFile {
    /// Path.
    pub path: PathBuf,
    /// Size when the table was parsed.
    pub size_bytes: u64,
}

/// One aligned file range read into one destination buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Index into [`Plan::files`].
    pub file: usize,
    /// First byte read (aligned down).
    pub start: u64,
    /// One past the last byte of the buffer (aligned up; may pass the end of the file, whose
    /// tail then stays unread).
    pub end: u64,
    /// The placements inside this region (indices into [`Plan::placements`]).
    pub placements: Range<usize>,
}

impl Region {
    /// Size of the region's destination buffer.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the region is empty (never true in a plan).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Where one tensor's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Index into the table's tensors.
    pub tensor: usize,
    /// Index into [`Plan::regions`].
    pub region: usize,
    /// Byte offset of the tensor inside its region's buffer.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
}

/// One read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Index into [`Plan::regions`].
    pub region: usize,
    /// Index into [`Plan::files`].
    pub file: usize,
    /// Aligned absolute file offset.
    pub file_offset: u64,
    /// Aligned length of the read and of its buffer.
    pub len: u64,
    /// Bytes that must arrive: `len`, or less where the read runs past the end of the file.
    pub need: u64,
    /// Byte offset of the chunk inside its region's buffer.
    pub region_offset: u64,
    /// Placements whose bytes this chunk carries, at least in part.
    pub placements: Range<usize>,
}

/// The reads that bring a selection of tensors into memory.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The configuration it was made with.
    pub config: PlanConfig,
    /// Files, indexed like the table's.
    pub files: Vec<PlanFile>,
    /// Destination regions, sorted by (file, start).
    pub regions: Vec<Region>,
    /// Non-empty selected tensors, sorted by (region, offset).
    pub placements: Vec<Placement>,
    /// Reads, sorted by (file, offset).
    pub chunks: Vec<Chunk>,
    /// Selected tensors of zero bytes (nothing to read).
    pub empty: Vec<usize>,
}

/// A planner input that cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `chunk_bytes` or `align_bytes` are out of range.
    #[error("invalid plan configuration: {0}")]
    Config(String),
    /// A selected index is not a tensor of the table.
    #[error("tensor index {index} is out of range (table has {count} tensors)")]
    BadIndex {
        /// The index.
        index: usize,
        /// Tensors in the table.
        count: usize,
    },
}

fn align_down(x: u64, a: u64) -> u64 {
    x / a * a
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Plan {
    /// Plans the reads of `selection` (indices into `table.tensors`, any order, duplicates
    /// ignored).
    pub fn new(
        table: &TensorTable,
        selection: &[usize],
        config: PlanConfig,
    ) -> Result<Plan, PlanError> {
        let PlanConfig {
            chunk_bytes,
            align_bytes,
        } = config;
        if !align_bytes.is_power_of_two() || align_bytes < 512 {
            return Err(PlanError::Config(format!(
                "align_bytes {align_bytes} must be a power of two ≥ 512"
            )));
        }
        if !CHUNK_BYTES_RANGE.contains(&chunk_bytes) || chunk_bytes % align_bytes != 0 {
            return Err(PlanError::Config(format!(
                "chunk_bytes {chunk_bytes} must be a multiple of {align_bytes} between 64 KiB and 1 GiB"
            )));
        }
        let count = table.tensors.len();
        let mut sel: Vec<usize> = selection.to_vec();
        if let Some(&index) = sel.iter().find(|&&i| i >= count) {
            return Err(PlanError::BadIndex { index, count });
        }
        // The table is sorted by (file, offset), so index order is file order.
        sel.sort_unstable();
        sel.dedup();

        let files = table
            .files
            .iter()
            .map(|f| PlanFile {
                path: f.path.clone(),
                size_bytes: f.size_bytes,
            })
            .collect();
        let mut plan = Plan {
            config,
            files,
            regions: Vec::new(),
            placements: Vec::new(),
            chunks: Vec::new(),
            empty: Vec::new(),
        };
        for &i in &sel {
            let t = &table.tensors[i];
            if t.len == 0 {
                plan.empty.push(i);
                continue;
            }
            let (start, end) = (
                align_down(t.offset, align_bytes),
                align_up(t.end(), align_bytes),
            );
            let extend = plan
                .regions
                .last()
                .is_some_and(|r| r.file == t.file && start <= r.end);
            if !extend {
                let n = plan.placements.len();
                plan.regions.push(Region {
                    file: t.file,
                    start,
                    end,
                    placements: n..n,
                });
            }
            let ri = plan.regions.len() - 1;
            let r = &mut plan.regions[ri];
            r.end = r.end.max(end);
            r.placements.end += 1;
            plan.placements.push(Placement {
                tensor: i,
                region: ri,
                offset: t.offset - r.start,
                len: t.len,
            });
        }
        plan.split_chunks(table);
        plan.log();
        Ok(plan)
    }

    /// The plan at `debug` (counts and bytes), each region at `trace`.
    fn log(&self) {
        tracing::debug!(
            files = self.files.len(),
            regions = self.regions.len(),
            chunks = self.chunks.len(),
            tensors = self.placements.len(),
            empty_tensors = self.empty.len(),
            tensor_bytes = self.tensor_bytes(),
            read_bytes = self.read_bytes(),
            chunk_bytes = self.config.chunk_bytes,
            align_bytes = self.config.align_bytes,
            "read plan"
        );
        for (i, r) in self.regions.iter().enumerate() {
            tracing::trace!(
                region = i,
                file = %self.files[r.file].path.display(),
                start = r.start,
                end = r.end,
                tensors = r.placements.len(),
                "plan region"
            );
        }
    }

    fn split_chunks(&mut self, table: &TensorTable) {
        for (ri, r) in self.regions.iter().enumerate() {
            let file_size = self.files[r.file].size_bytes;
            let mut p = r.placements.start;
            let mut off = r.start;
            while off < r.end {
                let len = self.config.chunk_bytes.min(r.end - off);
                let need = len.min(file_size.saturating_sub(off));
                // First placement ending after this chunk's start (placements are sorted and
                // contiguous in the region, so the chunk's placements are a range).
                while p < r.placements.end && table.tensors[self.placements[p].tensor].end() <= off
                {
                    p += 1;
                }
                let mut q = p;
                while q < r.placements.end
                    && table.tensors[self.placements[q].tensor].offset < off + len
                {
                    q += 1;
                }
                self.chunks.push(Chunk {
                    region: ri,
                    file: r.file,
                    file_offset: off,
                    len,
                    need,
                    region_offset: off - r.start,
                    placements: p..q,
                });
                off += len;
            }
        }
    }

    /// Bytes the plan reads (buffer bytes, alignment slack included).
    pub fn read_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.need).sum()
    }

    /// Bytes of the selected tensors.
    pub fn tensor_bytes(&self) -> u64 {
        self.placements.iter().map(|p| p.len).sum()
    }

    /// Bytes of destination buffers.
    pub fn buffer_bytes(&self) -> u64 {
        self.regions.iter().map(Region::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_format::{DType, FileFormat, SourceFile, TensorInfo};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A table of `sizes` tensors laid out back to back (with `gaps` before each) in files.
    fn table(files: &[Vec<(u64, u64)>]) -> TensorTable {
        let mut sources = Vec::new();
        let mut tensors = Vec::new();
        for (fi, spec) in files.iter().enumerate() {
            let mut off = 100; // an unaligned data section start, like safetensors'
            for (ti, &(gap, len)) in spec.iter().enumerate() {
                off += gap;
                tensors.push(TensorInfo {
                    name: format!("f{fi}.t{ti}"),
                    dtype: DType::U8,
                    shape: vec![len],
                    file: fi,
                    offset: off,
                    len,
                });
                off += len;
            }
            sources.push(SourceFile {
                path: format!("f{fi}").into(),
                size_bytes: off,
                data_offset: 100,
                format: FileFormat::Safetensors,
            });
        }
        TensorTable::from_parts("t".into(), sources, tensors, BTreeMap::new(), Vec::new()).unwrap()
    }

    fn check(t: &TensorTable, selection: &[usize], plan: &Plan) {
        let a = plan.config.align_bytes;
        let selected: Vec<&TensorInfo> = {
            let mut s: Vec<usize> = selection.to_vec();
            s.sort_unstable();
            s.dedup();
            s.iter().map(|&i| &t.tensors[i]).collect()
        };
        // Chunks: aligned, within their region, disjoint and in order per file.
        for c in &plan.chunks {
            let r = &plan.regions[c.region];
            assert_eq!(c.file_offset % a, 0);
            assert_eq!(c.len % a, 0);
            assert!(c.len <= plan.config.chunk_bytes);
            assert!(c.file_offset >= r.start && c.file_offset + c.len <= r.end);
            assert_eq!(c.region_offset, c.file_offset - r.start);
            assert!(c.need <= c.len && c.need > 0);
            assert_eq!(
                c.need,
                c.len.min(plan.files[c.file].size_bytes - c.file_offset)
            );
        }
        for w in plan.chunks.windows(2) {
            if w[0].file == w[1].file {
                assert!(
                    w[0].file_offset + w[0].len <= w[1].file_offset,
                    "chunks overlap"
                );
            }
        }
        // Every selected byte is read exactly once, into the right place.
        for tensor in &selected {
            if tensor.len == 0 {
                assert!(plan.empty.contains(&t.index_of(&tensor.name).unwrap()));
                continue;
            }
            let p = plan
                .placements
                .iter()
                .find(|p| t.tensors[p.tensor].name == tensor.name)
                .unwrap();
            let r = &plan.regions[p.region];
            assert_eq!(
                r.start + p.offset,
                tensor.offset,
                "placed where the bytes land"
            );
            let covering: u64 = plan
                .chunks
                .iter()
                .filter(|c| c.file == tensor.file)
                .map(|c| {
                    let lo = c.file_offset.max(tensor.offset);
                    let hi = (c.file_offset + c.need).min(tensor.end());
                    hi.saturating_sub(lo)
                })
                .sum();
            assert_eq!(covering, tensor.len, "{} read exactly once", tensor.name);
            // The chunks that carry it list it.
            for (ci, c) in plan.chunks.iter().enumerate() {
                let overlaps = c.file == tensor.file
                    && c.file_offset < tensor.end()
                    && tensor.offset < c.file_offset + c.len;
                let pi = plan.placements.iter().position(|q| q == p).unwrap();
                assert_eq!(
                    overlaps,
                    c.placements.contains(&pi),
                    "chunk {ci} lists {}",
                    tensor.name
                );
            }
        }
        // Nothing unselected is read beyond alignment slack.
        for c in &plan.chunks {
            let mut x = c.file_offset;
            while x < c.file_offset + c.need {
                let near = selected.iter().any(|s| {
                    s.file == c.file
                        && s.len > 0
                        && x >= s.offset / a * a
                        && x < s.end().div_ceil(a) * a
                });
                assert!(
                    near,
                    "byte {x} of file {} read but not within alignment of a selected tensor",
                    c.file
                );
                x += 512;
            }
        }
    }

    proptest! {
        #[test]
        fn plans_read_each_selected_byte_once(
            files in prop::collection::vec(prop::collection::vec((0u64..20_000, 0u64..300_000), 1..30), 1..4),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
            chunk_pages in 16u64..200,
            all in any::<bool>(),
        ) {
            let t = table(&files);
            let selection: Vec<usize> = if all { (0..t.tensors.len()).collect() } else { picks.iter().map(|i| i.index(t.tensors.len())).collect() };
            let config = PlanConfig { chunk_bytes: chunk_pages * 4096, align_bytes: 4096 };
            let plan = Plan::new(&t, &selection, config).unwrap();
            check(&t, &selection, &plan);
        }
    }

    #[test]
    fn adjacent_tensors_coalesce_into_one_region() {
        let t = table(&[vec![(0, 10), (0, 1), (0, 5000), (0, 3)]]);
        let plan = Plan::new(&t, &[0, 1, 2, 3], PlanConfig::default()).unwrap();
        assert_eq!(plan.regions.len(), 1);
        assert_eq!(plan.chunks.len(), 1, "5 KiB fits one chunk");
        check(&t, &[0, 1, 2, 3], &plan);
    }

    #[test]
    fn distant_tensors_make_separate_regions() {
        let t = table(&[vec![(0, 10), (1 << 20, 10)]]);
        let plan = Plan::new(&t, &[0, 1], PlanConfig::default()).unwrap();
        assert_eq!(plan.regions.len(), 2);
        assert!(plan.read_bytes() <= 2 * 4096 * 2);
    }

    #[test]
    fn bad_configs_are_refused() {
        let t = table(&[vec![(0, 10)]]);
        for (chunk_bytes, align_bytes) in [
            (4096, 4096),
            (1 << 20, 3000),
            ((1 << 20) + 512, 4096),
            (2 << 30, 4096),
        ] {
            assert!(Plan::new(
                &t,
                &[0],
                PlanConfig {
                    chunk_bytes,
                    align_bytes
                }
            )
            .is_err());
        }
        assert!(matches!(
            Plan::new(&t, &[5], PlanConfig::default()),
            Err(PlanError::BadIndex { index: 5, .. })
        ));
    }
}
