//! The GPU correctness matrix: every fixture loaded by every road (ring with each pinning
//! method, backend and layout, a ring small enough to wrap many times, cuFile), destinations
//! poisoned first, every tensor compared byte for byte with the file and reported exactly once.
//! Run by `cargo test` where a GPU is present and by `bench/gpu/run.sh correctness` on the GPU
//! machine (through the `gpu_selftest` example, since that machine has no Rust toolchain).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use hoist_format::TensorTable;
use hoist_io::{Backend, EngineConfig, PlanConfig};
use serde::Serialize;

use crate::fixtures::write_fixtures;
use hoist_cuda::{load_to_gpu, DestLayout, GpuConfig, GpuPath, GpuTensor, PinnedAlloc};

/// One load of one fixture, checked.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Fixture name.
    pub fixture: String,
    /// Configuration name.
    pub case: String,
    /// Every byte matched and every tensor was reported once (or the case was skipped).
    pub ok: bool,
    /// The road is unavailable here (cuFile refusing the filesystem); nothing was checked.
    pub skipped: bool,
    /// The path that ran and the methods, or what went wrong.
    pub detail: String,
}

struct Case {
    name: &'static str,
    backend: Backend,
    chunk_bytes: u64,
    ring_bytes: usize,
    pinned: PinnedAlloc,
    fixed_buffers: bool,
    dest: DestLayout,
    streams: usize,
    path: GpuPath,
    every_other: bool,
}

fn cases(cufile: bool) -> Vec<Case> {
    let base = Case {
        name: "",
        backend: Backend::Auto,
        chunk_bytes: 64 << 10,
        ring_bytes: 256 << 10,
        pinned: PinnedAlloc::MmapRegister,
        fixed_buffers: true,
        dest: DestLayout::Regions,
        streams: 4,
        path: GpuPath::Ring,
        every_other: false,
    };
    let mut v = vec![
        Case {
            name: "ring-register-pread-wrap",
            backend: Backend::Pread,
            ..base
        },
        Case {
            name: "ring-hostalloc-uring-fixed",
            backend: Backend::Uring,
            pinned: PinnedAlloc::HostAlloc,
            ring_bytes: 1 << 20,
            ..base
        },
        Case {
            name: "ring-hostalloc-uring-plain",
            backend: Backend::Uring,
            pinned: PinnedAlloc::HostAlloc,
            fixed_buffers: false,
            ..base
        },
        Case {
            name: "ring-register-uring-fixed",
            backend: Backend::Uring,
            ring_bytes: 1 << 20,
            ..base
        },
        Case {
            name: "ring-register-auto-per-tensor",
            dest: DestLayout::PerTensor,
            chunk_bytes: 8 << 20,
            ring_bytes: 64 << 20,
            ..base
        },
        Case {
            name: "ring-register-auto-packed",
            dest: DestLayout::Packed,
            chunk_bytes: 8 << 20,
            ring_bytes: 64 << 20,
            ..base
        },
        Case {
            name: "ring-register-uring-packed-small-chunks",
            backend: Backend::Uring,
            dest: DestLayout::Packed,
            ..base
        },
        Case {
            name: "ring-register-pread-per-tensor-wrap",
            backend: Backend::Pread,
            dest: DestLayout::PerTensor,
            ..base
        },
        Case {
            name: "ring-register-mmap-1stream",
            backend: Backend::Mmap,
            chunk_bytes: 1 << 20,
            ring_bytes: 4 << 20,
            streams: 1,
            ..base
        },
        Case {
            name: "ring-register-auto-every-other",
            every_other: true,
            ..base
        },
    ];
    v.push(Case {
        name: "mapped",
        path: GpuPath::Mapped,
        ..base
    });
    v.push(Case {
        name: "mapped-per-tensor-every-other",
        path: GpuPath::Mapped,
        dest: DestLayout::PerTensor,
        every_other: true,
        chunk_bytes: 8 << 20,
        ..base
    });
    if cufile {
        v.push(Case {
            name: "cufile",
            path: GpuPath::Cufile,
            chunk_bytes: 1 << 20,
            ..base
        });
        v.push(Case {
            name: "cufile-every-other",
            path: GpuPath::Cufile,
            every_other: true,
            ..base
        });
    }
    v
}

/// Writes the fixtures under `dir` and runs the matrix on `cuda:ordinal`; cuFile cases run only
/// where libcufile loads.
pub fn run(dir: &Path, ordinal: usize) -> Result<Vec<CaseResult>, String> {
    let fixtures = write_fixtures(dir)?;
    let cufile = hoist_cuda::cufile_status().library;
    let mut out = Vec::new();
    for f in &fixtures {
        let table = TensorTable::open(&f.path).map_err(|e| format!("{}: {e}", f.name))?;
        for c in cases(cufile) {
            let selection: Vec<usize> = (0..table.tensors.len())
                .filter(|i| !c.every_other || i % 2 == 0)
                .collect();
            let plan = PlanConfig {
                chunk_bytes: c.chunk_bytes,
                ..PlanConfig::default()
            };
            let engine = EngineConfig {
                backend: c.backend,
                threads: 4,
                queue_depth: 8,
                ..EngineConfig::default()
            };
            let gpu = GpuConfig {
                ordinal,
                path: c.path,
                ring_bytes: c.ring_bytes,
                streams: c.streams,
                pinned: c.pinned,
                fixed_buffers: c.fixed_buffers,
                dest: c.dest,
                poison: Some(0xA5),
            };
            let seen: Vec<AtomicUsize> =
                table.tensors.iter().map(|_| AtomicUsize::new(0)).collect();
            let names = Mutex::new(Vec::new());
            let on_tensor = |t: &GpuTensor| match table.index_of(&t.info.name) {
                Some(i) => {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
                None => names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t.info.name.clone()),
            };
            let result = load_to_gpu(&table, &selection, plan, &engine, &gpu, Some(&on_tensor))
                .and_then(|(tensors, report)| {
                    let v = tensors.verify_against_files(&table, 4)?;
                    Ok((tensors.tensors().len(), report, v))
                });
            let (ok, skipped, detail) = match result {
                // cuFile refusing this machine's filesystem is unavailability, not a wrong byte.
                Err(e @ hoist_cuda::CudaError::Cufile { .. }) if c.path == GpuPath::Cufile => {
                    (true, true, format!("skipped: {e}"))
                }
                Err(e) => (false, false, format!("error: {e}")),
                Ok((count, report, v)) => {
                    let mut problems = v.mismatches.clone();
                    for (i, s) in seen.iter().enumerate() {
                        let want = usize::from(selection.contains(&i));
                        let got = s.load(Ordering::Relaxed);
                        if got != want {
                            problems.push(format!(
                                "{} reported {got} times, expected {want}",
                                table.tensors[i].name
                            ));
                        }
                    }
                    if count != selection.len() {
                        problems.push(format!(
                            "{count} tensors returned, {} selected",
                            selection.len()
                        ));
                    }
                    if problems.is_empty() {
                        (
                            true,
                            false,
                            format!(
                                "{} tensors, {} bytes exact; path {}, {}",
                                v.tensors,
                                v.bytes,
                                report.path,
                                report.io.methods_summary()
                            ),
                        )
                    } else {
                        (false, false, problems.join("; "))
                    }
                }
            };
            out.push(CaseResult {
                fixture: f.name.clone(),
                case: c.name.into(),
                ok,
                skipped,
                detail,
            });
        }
    }
    Ok(out)
}
