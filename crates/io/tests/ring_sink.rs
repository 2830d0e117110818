//! The engine with a bounded staging ring, as a GPU sink uses it: fewer buffers than reads in
//! flight, buffers registered with io_uring, each buffer copied out on commit and only then
//! reused. Checks every byte and the bound.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

mod common;

use hoist_format::TensorTable;
use hoist_io::plan::Chunk;
use hoist_io::{execute, Backend, EngineConfig, Plan, PlanConfig, Sink, SinkError, Staging};

struct RingSink {
    slots: Vec<NonNull<u8>>,
    _backing: hoist_io::HostBuf,
    slot_bytes: usize,
    free: Mutex<Vec<usize>>,
    freed: Condvar,
    in_use: AtomicUsize,
    max_in_use: AtomicUsize,
    /// The "device": one buffer per region.
    dest: Vec<Mutex<Vec<u8>>>,
}

// SAFETY: slot pointers are loaned to one thread at a time through the free list.
unsafe impl Sync for RingSink {}

impl RingSink {
    fn new(plan: &Plan, slot_count: usize) -> RingSink {
        let slot_bytes = plan.config.chunk_bytes as usize;
        let mut backing = hoist_io::HostBuf::new(slot_bytes * slot_count).unwrap();
        let base = backing.as_mut_ptr();
        // SAFETY: each slot starts inside the backing buffer of slot_count * slot_bytes bytes.
        let slots = (0..slot_count)
            .map(|i| NonNull::new(unsafe { base.add(i * slot_bytes) }).unwrap())
            .collect();
        RingSink {
            slots,
            _backing: backing,
            slot_bytes,
            free: Mutex::new((0..slot_count).collect()),
            freed: Condvar::new(),
            in_use: AtomicUsize::new(0),
            max_in_use: AtomicUsize::new(0),
            dest: plan
                .regions
                .iter()
                .map(|r| Mutex::new(vec![0xAB; r.len() as usize]))
                .collect(),
        }
    }

    fn loan(&self, slot: usize) -> Staging {
        let n = self.in_use.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_use.fetch_max(n, Ordering::SeqCst);
        Staging {
            ptr: self.slots[slot],
            len: self.slot_bytes,
            slot: slot as u32,
            fixed: Some(slot as u16),
        }
    }
}

impl Sink for RingSink {
    fn acquire(&self, _index: usize, _chunk: &Chunk) -> Result<Staging, SinkError> {
        let mut free = self.free.lock().unwrap();
        loop {
            if let Some(s) = free.pop() {
                return Ok(self.loan(s));
            }
            free = self.freed.wait(free).unwrap();
        }
    }

    fn try_acquire(&self, _index: usize, _chunk: &Chunk) -> Result<Option<Staging>, SinkError> {
        Ok(self.free.lock().unwrap().pop().map(|s| self.loan(s)))
    }

    fn commit(&self, _index: usize, chunk: &Chunk, staging: Staging) -> Result<(), SinkError> {
        // SAFETY: the engine read chunk.need ≤ slot_bytes bytes into this loaned slot.
        let src = unsafe { std::slice::from_raw_parts(staging.ptr.as_ptr(), chunk.need as usize) };
        let mut d = self.dest[chunk.region].lock().unwrap();
        let at = chunk.region_offset as usize;
        d[at..at + src.len()].copy_from_slice(src);
        drop(d);
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        self.free.lock().unwrap().push(staging.slot as usize);
        self.freed.notify_one();
        Ok(())
    }

    fn release(&self, _index: usize, staging: Staging) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        self.free.lock().unwrap().push(staging.slot as usize);
        self.freed.notify_one();
    }

    fn reuses_buffers(&self) -> bool {
        true
    }

    fn registered_buffers(&self) -> Vec<(NonNull<u8>, usize)> {
        self.slots.iter().map(|&p| (p, self.slot_bytes)).collect()
    }
}

fn ring_checkpoint(dir: &std::path::Path) -> std::path::PathBuf {
    let sizes = [1u64, 700_000, 3, 1 << 20, 123_457, 5, 2_000_000, 64];
    common::u8_checkpoint(dir, "ring.safetensors", &sizes, 11)
}

/// Every tensor of `table` in chunks of 128 KiB: many more chunks than ring slots.
fn ring_plan(table: &TensorTable) -> Plan {
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    let config = PlanConfig {
        chunk_bytes: 128 << 10,
        ..PlanConfig::default()
    };
    Plan::new(table, &all, config).unwrap()
}

#[test]
fn a_bounded_ring_delivers_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_checkpoint(dir.path());
    let table = TensorTable::open(&path).unwrap();
    let file = std::fs::read(&path).unwrap();
    let plan = ring_plan(&table);
    assert!(plan.chunks.len() > 20);
    for backend in Backend::ALL {
        let slot_count = 3;
        let sink = RingSink::new(&plan, slot_count);
        let cfg = EngineConfig {
            backend,
            threads: 4,
            queue_depth: 16,
            uring_threads: 2,
            progress: None,
            ..EngineConfig::default()
        };
        execute(&plan, &sink, &cfg).unwrap();
        assert!(sink.max_in_use.load(Ordering::SeqCst) <= slot_count);
        assert_eq!(
            sink.in_use.load(Ordering::SeqCst),
            0,
            "every buffer came back"
        );
        for p in &plan.placements {
            let t = &table.tensors[p.tensor];
            let d = sink.dest[p.region].lock().unwrap();
            let got = &d[p.offset as usize..(p.offset + p.len) as usize];
            assert!(
                got == &file[t.offset as usize..t.end() as usize],
                "{backend:?}: tensor {} differs",
                t.name
            );
        }
    }
}

/// A read failing while other threads wait for ring buffers must end the load with the error,
/// every buffer returned, not hang.
#[test]
fn a_failing_read_under_a_full_ring_errors_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_checkpoint(dir.path());
    let table = TensorTable::open(&path).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let plan = ring_plan(&table);
        for backend in Backend::ALL {
            let sink = RingSink::new(&plan, 2);
            let cfg = EngineConfig {
                backend,
                threads: 4,
                queue_depth: 8,
                uring_threads: 2,
                progress: None,
                ..EngineConfig::default()
            };
            let err = execute(&plan, &sink, &cfg).unwrap_err();
            tx.send((backend, err.to_string(), sink.in_use.load(Ordering::SeqCst)))
                .unwrap();
        }
    });
    for _ in Backend::ALL {
        let (backend, msg, in_use) = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the load hung");
        assert!(msg.contains("ring.safetensors"), "{backend:?}: {msg}");
        assert_eq!(in_use, 0, "{backend:?}: every buffer came back");
    }
}

/// Cached chunks go to a reusing ring by buffered pread (the host sink gets mmap copies: see
/// engine.rs).
#[test]
fn auto_reads_cached_chunks_into_a_ring_with_pread() {
    let dir = tempfile::tempdir().unwrap();
    let path = ring_checkpoint(dir.path());
    let table = TensorTable::open(&path).unwrap();
    let plan = ring_plan(&table);
    std::fs::read(&path).unwrap(); // in the page cache
    let sink = RingSink::new(&plan, 3);
    let report = execute(&plan, &sink, &EngineConfig::default()).unwrap();
    assert_eq!(
        report.bytes_by_method,
        vec![("pread-buffered", plan.read_bytes())]
    );
}
