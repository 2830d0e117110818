//! The host sink: reads land directly in the final tensors' buffers.
//!
//! One anonymous mapping per plan region (page-aligned, so O_DIRECT can read into it); each
//! tensor is a view into its region at its offset. The only memory beyond the tensors is the
//! alignment slack at each region's ends.

use std::ptr::NonNull;
use std::sync::Arc;

use hoist_format::{TensorInfo, TensorTable};

use crate::plan::{Chunk, Plan};
use crate::sink::{CompletionTracker, Sink, SinkError, Staging};

/// A page-aligned host buffer that owns its memory.
#[derive(Debug)]
pub struct HostBuf {
    map: memmap2::MmapMut,
}

impl HostBuf {
    /// Reserves `len` bytes (untouched: pages are backed when first written). Transparent huge
    /// pages are requested, which cuts page faults by 512× where the kernel grants them.
    pub fn new(len: usize) -> std::io::Result<HostBuf> {
        let map = memmap2::MmapOptions::new().len(len.max(1)).map_anon()?;
        #[cfg(target_os = "linux")]
        // SAFETY: advising a mapping we own over its exact extent; a refusal is harmless.
        unsafe {
            libc::madvise(
                map.as_ptr() as *mut libc::c_void,
                map.len(),
                libc::MADV_HUGEPAGE,
            );
        }
        Ok(HostBuf { map })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// The start of the buffer, for writers that hold it uniquely (a sink filling it).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The bytes, for writers that hold the buffer uniquely (gathering a strided slice).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One loaded tensor: its table entry and its bytes in host memory.
#[derive(Clone, Debug)]
pub struct HostTensor {
    /// The tensor's table entry.
    pub info: TensorInfo,
    buf: Option<Arc<HostBuf>>,
    offset: usize,
}

impl HostTensor {
    /// A tensor whose bytes are `info.len` bytes of `buf` from `offset` (`None`: no bytes).
    pub(crate) fn new(info: TensorInfo, buf: Option<Arc<HostBuf>>, offset: usize) -> HostTensor {
        debug_assert!(buf
            .as_ref()
            .is_none_or(|b| offset + info.len as usize <= b.len()));
        HostTensor { info, buf, offset }
    }

    /// The tensor's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b.as_slice()[self.offset..self.offset + self.info.len as usize],
            None => &[],
        }
    }

    /// The buffer holding the bytes and the offset in it (for zero-copy hand-over to other
    /// runtimes, which keep the `Arc` alive as long as they use the memory).
    pub fn storage(&self) -> Option<(&Arc<HostBuf>, usize)> {
        self.buf.as_ref().map(|b| (b, self.offset))
    }
}

/// Error allocating a host sink's buffers.
#[derive(Debug, thiserror::Error)]
#[error("cannot allocate {bytes} bytes of host memory for the tensors: {source}; load fewer tensors (--filter) or free memory")]
pub struct AllocError {
    /// Bytes asked for.
    pub bytes: u64,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// Receives each tensor as soon as its bytes are in place (called on engine threads).
pub type OnTensor<'a> = dyn Fn(&HostTensor) + Sync + 'a;

/// A sink whose destinations are final host buffers.
pub struct HostSink<'a> {
    /// Each region's base address, taken while the buffer was still uniquely owned.
    bases: Vec<(NonNull<u8>, usize)>,
    tensors: Vec<HostTensor>,
    tracker: CompletionTracker,
    on_tensor: Option<&'a OnTensor<'a>>,
}

impl<'a> HostSink<'a> {
    /// Allocates one buffer per region of `plan`; `on_tensor`, if given, is called with each
    /// tensor when it completes.
    pub fn new(
        table: &TensorTable,
        plan: &'a Plan,
        on_tensor: Option<&'a OnTensor<'a>>,
    ) -> Result<Self, AllocError> {
        let mut regions = Vec::with_capacity(plan.regions.len());
        let mut bases = Vec::with_capacity(plan.regions.len());
        for r in &plan.regions {
            let mut buf = HostBuf::new(r.len() as usize).map_err(|source| AllocError {
                bytes: r.len(),
                source,
            })?;
            let base = NonNull::new(buf.as_mut_ptr()).ok_or_else(|| AllocError {
                bytes: r.len(),
                source: std::io::Error::other("null mapping"),
            })?;
            bases.push((base, buf.len()));
            regions.push(Arc::new(buf));
        }
        let mut tensors: Vec<HostTensor> = plan
            .placements
            .iter()
            .map(|p| HostTensor {
                info: table.tensors[p.tensor].clone(),
                buf: Some(regions[p.region].clone()),
                offset: p.offset as usize,
            })
            .collect();
        tensors.extend(plan.empty.iter().map(|&i| HostTensor {
            info: table.tensors[i].clone(),
            buf: None,
            offset: 0,
        }));
        if let Some(f) = on_tensor {
            for t in &tensors[plan.placements.len()..] {
                f(t);
            }
        }
        Ok(HostSink {
            bases,
            tensors,
            tracker: CompletionTracker::new(plan),
            on_tensor,
        })
    }

    /// The loaded tensors in file order; valid once the engine has run the whole plan.
    pub fn into_tensors(self) -> Vec<HostTensor> {
        debug_assert!(
            self.tracker.all_done(),
            "tensors taken before the load completed"
        );
        self.tensors
    }
}

// SAFETY: the raw bases point into buffers the sink keeps alive (through `tensors`' Arcs);
// the engine writes through them only via disjoint chunk loans.
unsafe impl Send for HostSink<'_> {}
// SAFETY: as above; all shared state besides the loans is atomic (the tracker).
unsafe impl Sync for HostSink<'_> {}

impl Sink for HostSink<'_> {
    fn acquire(&self, index: usize, chunk: &Chunk) -> Result<Staging, SinkError> {
        let (base, len) = self.bases[chunk.region];
        assert!(
            chunk.region_offset + chunk.len <= len as u64,
            "chunk {index} overruns its region"
        );
        // SAFETY: in bounds of the region's buffer (asserted above); chunks of one region are
        // disjoint, so no two loans alias.
        let ptr = unsafe { base.add(chunk.region_offset as usize) };
        Ok(Staging {
            ptr,
            len: chunk.len as usize,
            slot: index as u32,
            fixed: None,
        })
    }

    fn commit(&self, _index: usize, chunk: &Chunk, _staging: Staging) -> Result<(), SinkError> {
        self.tracker.chunk_done(chunk, |p| {
            if let Some(f) = self.on_tensor {
                f(&self.tensors[p]);
            }
        });
        Ok(())
    }
}
