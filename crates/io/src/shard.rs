//! Rank-local loading: each tensor-parallel rank reads only its slice of every tensor.
//!
//! A [`Shard`] `{ dim, rank, world }` cuts a tensor into `world` equal parts along dimension
//! `dim` (outermost first, so 0 is the rows of a 2-D row-major tensor and 1 its columns) and
//! keeps part `rank`. In a row-major layout that part is `runs` equal runs of bytes, one per
//! index of the dimensions before `dim`, each `stride` bytes after the previous ([`Slice`]):
//!
//! - slicing along dim 0 (or any slice with a single run) is one contiguous byte range; it is
//!   planned like a whole tensor of that range, read straight into its final buffer;
//! - slicing along an inner dim is strided. [`span_reads`] groups the runs into *spans*, file
//!   ranges read whole and gathered into the slice's buffer afterwards, by this rule: the next
//!   run joins the current span when the gap between runs (`stride - run_bytes`) is at most
//!   [`ShardConfig::gap_bytes`] and the span stays within [`ShardConfig::span_bytes`]; otherwise
//!   it starts a span of its own (one read per run, when runs are far apart). Reading through a
//!   gap costs its transfer time; a separate request costs a request's overhead, and at the
//!   ~2 GB/s these machines read and ~100 µs per request the two meet near the default 256 KiB
//!   (an estimate, not yet measured for this path).
//!
//! Which tensors are sharded ([`ShardPlan::new`]): every selected tensor, unless the caller
//! names the ones to shard (`only`, e.g. the indices that `--shard-only` globs select), when
//! the others are loaded whole on every rank (replicated: norms, biases, rotary tables). A
//! sharded tensor that cannot be split as asked is an error naming it, never a silent
//! replication: too few dimensions, a size along `dim` that `world` does not divide, or (for
//! GGUF block-quantized and packed sub-byte types) a part that is not a whole number of blocks.
//! This is fastsafetensors' explicit model (the caller says which tensors it shards, along
//! which dim), with the strict default of erroring rather than guessing.

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;

use hoist_format::{FormatError, TensorInfo, TensorTable};

/// Which part of every sharded tensor this rank loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The dimension split, outermost first (0: rows of a 2-D tensor, 1: its columns).
    pub dim: usize,
    /// This rank, `< world`.
    pub rank: u64,
    /// Number of ranks, ≥ 1.
    pub world: u64,
}

impl Shard {
    /// A checked shard spec.
    pub fn new(dim: usize, rank: u64, world: u64) -> Result<Shard, ShardError> {
        if world == 0 {
            return Err(ShardError::Spec {
                spec: format!("{dim}:{rank}/{world}"),
                reason: "world must be at least 1".into(),
            });
        }
        if rank >= world {
            return Err(ShardError::Spec {
                spec: format!("{dim}:{rank}/{world}"),
                reason: format!(
                    "rank {rank} is out of range for world {world} (ranks are 0..{})",
                    world - 1
                ),
            });
        }
        Ok(Shard { dim, rank, world })
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    /// Parses `DIM:RANK/WORLD`, e.g. `0:1/4` (rank 1 of 4, split along rows).
    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let bad = |reason: &str| ShardError::Spec {
            spec: s.to_string(),
            reason: format!("{reason}; expected DIM:RANK/WORLD, e.g. 0:1/4"),
        };
        let (dim, rest) = s.trim().split_once(':').ok_or_else(|| bad("no ':'"))?;
        let (rank, world) = rest.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let num = |x: &str, what: &str| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| bad(&format!("{what} '{x}' is not a non-negative integer")))
        };
        let dim = usize::try_from(num(dim, "DIM")?).map_err(|_| bad("DIM is too large"))?;
        Shard::new(dim, num(rank, "RANK")?, num(world, "WORLD")?)
    }
}

impl std::fmt::Display for Shard {
    /// `DIM:RANK/WORLD`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.dim, self.rank, self.world)
    }
}

/// A shard that cannot be planned. Each message names the spec or the tensor and file, and
/// says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A malformed or out-of-range spec.
    #[error("bad shard spec '{spec}': {reason}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A sharded tensor has no dimension `dim`.
    #[error("{path}: tensor '{tensor}' has shape {shape:?} ({ndim}-D), so it has no dimension {dim} to shard along; shard only the tensors that have it (--shard-only / shard_filter) and load the rest whole")]
    DimOutOfRange {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its number of dimensions.
        ndim: usize,
        /// The dimension asked for.
        dim: usize,
    },
    /// `world` does not divide the tensor's size along `dim`.
    #[error("{path}: tensor '{tensor}' (shape {shape:?}) cannot be split evenly: size {size} along dimension {dim} is not a multiple of world {world}; pick a world that divides it, or leave the tensor out of --shard-only / shard_filter to load it whole")]
    Uneven {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// The dimension split.
        dim: usize,
        /// Its size.
        size: u64,
        /// The world.
        world: u64,
    },
    /// The part is not a whole number of the type's blocks (GGUF quantized types) or bytes
    /// (packed sub-byte types).
    #[error("{path}: tensor '{tensor}' ({dtype}, shape {shape:?}): a 1/{world} slice along dimension {dim} is {elements} elements per row, which does not fall on {dtype} block boundaries (or whole bytes); shard along dimension 0, or pick a world that divides the row's blocks")]
    Misaligned {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its element type.
        dtype: String,
        /// Its shape.
        shape: Vec<u64>,
        /// The dimension split.
        dim: usize,
        /// The world.
        world: u64,
        /// Elements in one run of the slice.
        elements: u64,
    },
    /// The tensor's byte length does not match its shape and type (a bad table).
    #[error("{path}: tensor '{tensor}' is {len} bytes, which does not match its shape {shape:?} and type {dtype}; the checkpoint is inconsistent")]
    Layout {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its element type.
        dtype: String,
        /// Its byte length.
        len: u64,
    },
    /// A selected tensor index is not in the table.
    #[error("tensor index {index} is out of range (table has {count} tensors)")]
    BadIndex {
        /// The index.
        index: usize,
        /// Tensors in the table.
        count: usize,
    },
    /// The filter of tensors to shard is bad or matches nothing.
    #[error(transparent)]
    Filter(#[from] FormatError),
}

/// Knobs of the strided-slice planner (see the module docs for the rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// Largest gap between two runs that is read through rather than skipped.
    pub gap_bytes: u64,
    /// Largest span that several runs merge into (a single run longer than this is one span).
    pub span_bytes: u64,
    /// Span bytes held at once: strided slices are read in batches of about this many bytes of
    /// spans, each gathered and freed before the next, which bounds the memory beyond the
    /// slices themselves.
    pub batch_bytes: u64,
}

/// Default [`ShardConfig::gap_bytes`].
pub const DEFAULT_GAP_BYTES: u64 = 256 << 10;
/// Default [`ShardConfig::batch_bytes`].
pub const DEFAULT_BATCH_BYTES: u64 = 256 << 20;

impl ShardConfig {
    /// The defaults for a plan whose reads are at most `chunk_bytes`: spans up to one read.
    pub fn for_chunk_bytes(chunk_bytes: u64) -> ShardConfig {
        ShardConfig {
            gap_bytes: DEFAULT_GAP_BYTES,
            span_bytes: chunk_bytes.max(1),
            batch_bytes: DEFAULT_BATCH_BYTES,
        }
    }
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig::for_chunk_bytes(crate::plan::DEFAULT_CHUNK_BYTES)
    }
}

/// Where one rank's slice of a tensor lies in its file: `runs` runs of `run_bytes`, run `i`
/// at `first + i * stride`.
#[derive(Clone, Debug)]
pub struct Slice {
    /// The slice as a tensor: the source's name, type and file, the sliced shape, its byte
    /// length; `offset` is the first run's (meaningful as a file range only when contiguous).
    pub info: TensorInfo,
    /// Absolute file offset of the first run.
    pub first: u64,
    /// Number of runs (the product of the dimensions before `dim`).
    pub runs: u64,
    /// Bytes of one run.
    pub run_bytes: u64,
    /// Bytes from one run's start to the next's (the source's bytes per index of `dim - 1`).
    pub stride: u64,
}

impl Slice {
    /// Whether the slice is one byte range (row slices, single runs, world 1, empty slices).
    pub fn is_contiguous(&self) -> bool {
        self.runs <= 1 || self.run_bytes == self.stride || self.info.len == 0
    }

    /// Absolute file offset of run `i`.
    pub fn run_offset(&self, i: u64) -> u64 {
        self.first + i * self.stride
    }
}

/// Computes `shard`'s slice of tensor `t` (in file `path`, for messages).
pub fn slice_of(t: &TensorInfo, path: &std::path::Path, shard: Shard) -> Result<Slice, ShardError> {
    // Checked again: the fields are public, and a world of 0 or a rank past it would divide by
    // zero or read another tensor's bytes.
    let Shard { dim, rank, world } = Shard::new(shard.dim, shard.rank, shard.world)?;
    let layout = || ShardError::Layout {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        shape: t.shape.clone(),
        dtype: t.dtype.name().into(),
        len: t.len,
    };
    let Some(&size) = t.shape.get(dim) else {
        return Err(ShardError::DimOutOfRange {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            shape: t.shape.clone(),
            ndim: t.shape.len(),
            dim,
        });
    };
    if size % world != 0 {
        return Err(ShardError::Uneven {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            shape: t.shape.clone(),
            dim,
            size,
            world,
        });
    }
    let part = size / world;
    // Checked: a shape with a zero dimension may have other dimensions whose product overflows.
    let outer = hoist_format::element_count(&t.shape[..dim]).ok_or_else(layout)?;
    let inner = hoist_format::element_count(&t.shape[dim + 1..]).ok_or_else(layout)?;
    let run_elems = part.checked_mul(inner).ok_or_else(layout)?;
    let row_elems = size.checked_mul(inner).ok_or_else(layout)?;
    // The byte length of a run exists only when the run is whole blocks (ggml quantized types
    // pack blocks along the innermost dimension) or whole bytes (packed sub-byte floats); the
    // run's start is `rank` runs in, so it then falls on a boundary too.
    let misaligned = || ShardError::Misaligned {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        dtype: t.dtype.name().into(),
        shape: t.shape.clone(),
        dim,
        world,
        elements: run_elems,
    };
    let stride = t.dtype.byte_len(row_elems).ok_or_else(misaligned)?;
    let run_bytes = t.dtype.byte_len(run_elems).ok_or_else(misaligned)?;
    if outer.checked_mul(stride) != Some(t.len) {
        return Err(layout());
    }
    // Checked: with a zero-size dimension before `dim` the length check bounds nothing.
    let first = rank
        .checked_mul(run_bytes)
        .and_then(|r| t.offset.checked_add(r))
        .ok_or_else(layout)?;
    let mut shape = t.shape.clone();
    shape[dim] = part;
    Ok(Slice {
        info: TensorInfo {
            name: t.name.clone(),
            dtype: t.dtype,
            shape,
            file: t.file,
            offset: first,
            len: outer * run_bytes,
        },
        first,
        runs: outer,
        run_bytes,
        stride,
    })
}

/// One read of a strided slice: the file range `[offset, offset + len)` holding runs `runs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanRead {
    /// Absolute file offset (the first run's start).
    pub offset: u64,
    /// Bytes, from the first run's start to the last run's end.
    pub len: u64,
    /// The runs it holds.
    pub runs: Range<u64>,
}

/// Groups a slice's runs into spans by the module's rule: runs whose gap is at most
/// `config.gap_bytes` merge while the span stays within `config.span_bytes`; each span is at
/// most `max(span_bytes, run_bytes)` long. Spans are in file order and hold every run once.
pub fn span_reads(s: &Slice, config: &ShardConfig) -> Vec<SpanRead> {
    if s.info.len == 0 {
        return Vec::new();
    }
    let gap = s.stride - s.run_bytes;
    // Runs per span: (m - 1) * stride + run_bytes ≤ span_bytes.
    let per_span = if gap <= config.gap_bytes && config.span_bytes > s.run_bytes {
        ((config.span_bytes - s.run_bytes) / s.stride.max(1) + 1).max(1)
    } else {
        1
    };
    let mut out = Vec::with_capacity(s.runs.div_ceil(per_span) as usize);
    let mut i = 0;
    while i < s.runs {
        let end = (i + per_span).min(s.runs);
        out.push(SpanRead {
            offset: s.run_offset(i),
            len: (end - i - 1) * s.stride + s.run_bytes,
            runs: i..end,
        });
        i = end;
    }
    out
}

/// How one selected tensor is loaded.
#[derive(Clone, Debug)]
pub enum Part {
    /// Whole, on every rank (not sharded).
    Whole,
    /// One byte range, read straight into its buffer.
    Contiguous(Slice),
    /// Strided: read as spans and gathered.
    Strided {
        /// The slice.
        slice: Slice,
        /// Its reads.
        spans: Vec<SpanRead>,
    },
}

/// What one rank loads of a selection: each selected tensor whole or as its slice.
#[derive(Clone, Debug)]
pub struct ShardPlan {
    /// The shard.
    pub shard: Shard,
    /// The configuration it was made with.
    pub config: ShardConfig,
    /// `(tensor index, how)` for each selected tensor, in file order.
    pub parts: Vec<(usize, Part)>,
}

impl ShardPlan {
    /// Plans `shard` over `selection` (indices into `table.tensors`, any order, duplicates
    /// ignored). `only`: the indices to shard (the rest load whole); `None` shards every
    /// selected tensor. Fails on the first tensor that cannot be split as asked.
    pub fn new(
        table: &TensorTable,
        selection: &[usize],
        shard: Shard,
        only: Option<&[usize]>,
        config: ShardConfig,
    ) -> Result<ShardPlan, ShardError> {
        let count = table.tensors.len();
        let mut sel = selection.to_vec();
        if let Some(&index) = sel.iter().find(|&&i| i >= count) {
            return Err(ShardError::BadIndex { index, count });
        }
        sel.sort_unstable();
        sel.dedup();
        let only: Option<HashSet<usize>> = only.map(|o| o.iter().copied().collect());
        let mut parts = Vec::with_capacity(sel.len());
        for i in sel {
            let t = &table.tensors[i];
            if only.as_ref().is_some_and(|o| !o.contains(&i)) {
                parts.push((i, Part::Whole));
                continue;
            }
            let s = slice_of(t, &table.files[t.file].path, shard)?;
            let part = if s.is_contiguous() {
                Part::Contiguous(s)
            } else {
                let spans = span_reads(&s, &config);
                Part::Strided { slice: s, spans }
            };
            parts.push((i, part));
        }
        Ok(ShardPlan {
            shard,
            config,
            parts,
        })
    }

    /// Bytes this rank ends up with (slices, plus whole tensors).
    pub fn loaded_bytes(&self, table: &TensorTable) -> u64 {
        self.parts
            .iter()
            .map(|(i, p)| match p {
                Part::Whole => table.tensors[*i].len,
                Part::Contiguous(s) | Part::Strided { slice: s, .. } => s.info.len,
            })
            .sum()
    }

    /// Bytes of the selected tensors whole (what an unsharded load would take).
    pub fn full_bytes(&self, table: &TensorTable) -> u64 {
        self.parts.iter().map(|(i, _)| table.tensors[*i].len).sum()
    }

    /// Number of tensors sharded (the rest load whole).
    pub fn sharded(&self) -> usize {
        self.parts
            .iter()
            .filter(|(_, p)| !matches!(p, Part::Whole))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_format::{DType, GgmlType};
    use proptest::prelude::*;
    use std::path::Path;

    fn info(dtype: DType, shape: &[u64], offset: u64) -> TensorInfo {
        let elems: u64 = shape.iter().product();
        TensorInfo {
            name: "w".into(),
            dtype,
            shape: shape.to_vec(),
            file: 0,
            offset,
            len: dtype.byte_len(elems).unwrap(),
        }
    }

    /// Absolute file offsets of the slice's bytes, element by element (plain types): the
    /// reference the planner must reproduce.
    fn reference_bytes(t: &TensorInfo, sh: Shard) -> Vec<u64> {
        let esize = t.dtype.bits().unwrap() / 8;
        let nd = t.shape.len();
        let elems: u64 = t.shape.iter().product();
        let mut out = Vec::new();
        for e in 0..elems {
            // Row-major multi-index of element e.
            let mut rem = e;
            let mut idx = vec![0u64; nd];
            for d in (0..nd).rev() {
                idx[d] = rem % t.shape[d];
                rem /= t.shape[d];
            }
            let part = t.shape[sh.dim] / sh.world;
            if idx[sh.dim] / part == sh.rank {
                for b in 0..esize {
                    out.push(t.offset + e * esize + b);
                }
            }
        }
        out
    }

    fn dtypes() -> impl Strategy<Value = DType> {
        prop::sample::select(vec![
            DType::U8,
            DType::F16,
            DType::BF16,
            DType::F32,
            DType::F64,
        ])
    }

    proptest! {
        /// Runs are exactly the slice's bytes in order; spans hold every run once, in order,
        /// within the tensor and within the size bound.
        #[test]
        fn planned_runs_are_the_slice(
            shape in prop::collection::vec(1u64..7, 1..4),
            dtype in dtypes(),
            dim_pick in any::<prop::sample::Index>(),
            world in 1u64..5,
            rank_pick in any::<prop::sample::Index>(),
            scale in 1u64..4,
            offset in 0u64..5000,
            gap_bytes in 0u64..64,
            span_bytes in 1u64..256,
        ) {
            let dim = dim_pick.index(shape.len());
            let mut shape = shape;
            shape[dim] *= world * scale; // divisible
            let rank = rank_pick.index(world as usize) as u64;
            let t = info(dtype, &shape, offset);
            let sh = Shard::new(dim, rank, world).unwrap();
            let s = slice_of(&t, Path::new("f"), sh).unwrap();
            let mut got = Vec::new();
            for i in 0..s.runs {
                let o = s.run_offset(i);
                prop_assert!(o >= t.offset && o + s.run_bytes <= t.end(), "run outside the tensor");
                got.extend(o..o + s.run_bytes);
            }
            prop_assert_eq!(&got, &reference_bytes(&t, sh));
            prop_assert_eq!(s.info.len, got.len() as u64);
            prop_assert_eq!(s.info.shape[dim] * world, shape[dim]);
            if dim == 0 {
                prop_assert!(s.is_contiguous(), "row slices are one range");
            }
            let config = ShardConfig { gap_bytes, span_bytes, batch_bytes: 1 };
            let spans = span_reads(&s, &config);
            let mut next = 0;
            let mut last_end = 0;
            for sp in &spans {
                prop_assert_eq!(sp.runs.start, next, "spans hold every run once, in order");
                prop_assert!(sp.runs.end > sp.runs.start);
                next = sp.runs.end;
                prop_assert_eq!(sp.offset, s.run_offset(sp.runs.start));
                prop_assert_eq!(sp.offset + sp.len, s.run_offset(sp.runs.end - 1) + s.run_bytes);
                prop_assert!(sp.offset >= t.offset && sp.offset + sp.len <= t.end());
                prop_assert!(sp.offset >= last_end, "spans in file order, disjoint");
                last_end = sp.offset + sp.len;
                prop_assert!(sp.len <= span_bytes.max(s.run_bytes), "span {} > bound", sp.len);
                if sp.runs.end - sp.runs.start > 1 {
                    prop_assert!(s.stride - s.run_bytes <= gap_bytes, "merged across a large gap");
                }
            }
            prop_assert_eq!(next, s.runs);
        }

        /// Quantized types: along dim 0 whole rows; along the innermost dim only on block
        /// boundaries, and then the runs are whole blocks at block offsets.
        #[test]
        fn quantized_slices_fall_on_blocks(
            rows in 1u64..9,
            blocks in 1u64..9,
            world in 1u64..5,
            rank_pick in any::<prop::sample::Index>(),
            q in prop::sample::select(vec![GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K]),
        ) {
            let (be, bb) = q.block().unwrap();
            let rank = rank_pick.index(world as usize) as u64;
            let rows = rows * world;
            let t = info(DType::Ggml(q), &[rows, blocks * be], 64);
            let s = slice_of(&t, Path::new("f"), Shard::new(0, rank, world).unwrap()).unwrap();
            prop_assert!(s.is_contiguous());
            prop_assert_eq!(s.first, 64 + rank * (rows / world) * blocks * bb);
            let col = slice_of(&t, Path::new("f"), Shard::new(1, rank, world).unwrap());
            if blocks % world == 0 {
                let s = col.unwrap();
                prop_assert_eq!(s.run_bytes, blocks / world * bb);
                prop_assert_eq!((s.first - 64) % bb, 0);
                prop_assert_eq!(s.runs, rows);
            } else if (blocks * be) % world != 0 {
                let is_uneven = matches!(col, Err(ShardError::Uneven { .. }));
                prop_assert!(is_uneven);
            } else {
                let is_misaligned = matches!(col, Err(ShardError::Misaligned { .. }));
                prop_assert!(is_misaligned);
            }
        }
    }

    #[test]
    fn specs_parse_and_refuse_clearly() {
        assert_eq!(
            "0:1/4".parse::<Shard>().unwrap(),
            Shard {
                dim: 0,
                rank: 1,
                world: 4
            }
        );
        assert_eq!(" 1:0/1 ".parse::<Shard>().unwrap().to_string(), "1:0/1");
        for (bad, says) in [
            ("0:4/4", "rank 4 is out of range for world 4"),
            ("0:0/0", "world must be at least 1"),
            ("01/4", "expected DIM:RANK/WORLD"),
            ("0:1", "expected DIM:RANK/WORLD"),
            ("a:1/2", "DIM 'a'"),
            ("0:-1/2", "RANK '-1'"),
        ] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn unshardable_tensors_are_named() {
        let p = Path::new("m.safetensors");
        let t = info(DType::F16, &[6, 4], 0);
        let e = slice_of(&t, p, Shard::new(2, 0, 2).unwrap()).unwrap_err();
        assert!(matches!(e, ShardError::DimOutOfRange { .. }));
        assert!(e.to_string().contains("'w'") && e.to_string().contains("m.safetensors"));
        let e = slice_of(&t, p, Shard::new(0, 0, 4).unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a multiple of world 4"), "{e}");
        let q = info(DType::Ggml(GgmlType::Q4_0), &[4, 64], 0);
        let e = slice_of(&q, p, Shard::new(1, 0, 4).unwrap()).unwrap_err();
        assert!(e.to_string().contains("block boundaries"), "{e}");
        assert!(slice_of(&q, p, Shard::new(1, 1, 2).unwrap()).is_ok());
        // Built by hand past `Shard::new`: refused, not a division by zero or another tensor.
        for (rank, world) in [(0, 0), (2, 2)] {
            let e = slice_of(
                &t,
                p,
                Shard {
                    dim: 0,
                    rank,
                    world,
                },
            )
            .unwrap_err();
            assert!(matches!(e, ShardError::Spec { .. }), "{e}");
        }
        // An empty tensor (a lying header) whose rank's start would pass u64: an error.
        let empty = info(DType::U8, &[0, 4], u64::MAX - 1);
        let e = slice_of(&empty, p, Shard::new(1, 1, 2).unwrap()).unwrap_err();
        assert!(matches!(e, ShardError::Layout { .. }), "{e}");
    }

    #[test]
    fn far_apart_runs_are_read_one_by_one_and_near_ones_merged() {
        // 8 rows of 1 MiB f32, 4 ranks along columns: 256 KiB runs, 768 KiB gaps.
        let t = info(DType::F32, &[8, 1 << 18], 0);
        let s = slice_of(&t, Path::new("f"), Shard::new(1, 1, 4).unwrap()).unwrap();
        assert_eq!(span_reads(&s, &ShardConfig::default()).len(), 8);
        // 4096 rows of 8 KiB, 4 ranks: 2 KiB runs, 6 KiB gaps: read through in 16 MiB spans.
        let t = info(DType::BF16, &[4096, 4096], 0);
        let s = slice_of(&t, Path::new("f"), Shard::new(1, 3, 4).unwrap()).unwrap();
        let spans = span_reads(&s, &ShardConfig::default());
        assert_eq!(spans.len(), 2);
        assert!(spans.iter().all(|sp| sp.len <= 16 << 20));
    }
}
