//! The engine against an independent reader: every backend, odd layouts, streaming, errors.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

mod common;

use hoist_format::TensorTable;
use hoist_io::{load_host, Backend, CachePolicy, EngineConfig, IoError, LoadError, PlanConfig};

/// Checks that every loaded tensor equals the file's bytes at the table's offsets.
fn assert_matches_file(table: &TensorTable, loaded: &[hoist_io::HostTensor]) {
    let files: Vec<Vec<u8>> = table
        .files
        .iter()
        .map(|f| std::fs::read(&f.path).unwrap())
        .collect();
    for t in loaded {
        let want = &files[t.info.file][t.info.offset as usize..t.info.end() as usize];
        assert!(
            t.bytes() == want,
            "tensor {} differs from the file",
            t.info.name
        );
    }
}

fn configs() -> Vec<EngineConfig> {
    let mut out = Vec::new();
    for backend in Backend::ALL {
        for (threads, queue_depth) in [(1, 1), (3, 8)] {
            out.push(EngineConfig {
                backend,
                threads,
                queue_depth,
                uring_threads: 1,
                progress: None,
                // Both cold routes of auto and uring: past the cache and through it.
                cache: if threads == 1 {
                    CachePolicy::Bypass
                } else {
                    CachePolicy::Keep
                },
                cache_headroom_bytes: None,
            });
        }
    }
    out
}

/// Odd sizes: 1-byte tensors, sizes that straddle pages, chunks and mmap windows, an empty
/// tensor.
fn odd_checkpoint(dir: &Path) -> std::path::PathBuf {
    let sizes = [
        1u64,
        3,
        4095,
        4097,
        65_536,
        1,
        300_001,
        0,
        17,
        1 << 20,
        5,
        (9 << 20) + 123,
        7,
    ];
    common::u8_checkpoint(dir, "odd.safetensors", &sizes, 99)
}

#[test]
fn every_backend_loads_odd_layouts_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let table = TensorTable::open(odd_checkpoint(dir.path())).unwrap();
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    for chunk_bytes in [64 << 10, 16 << 20] {
        for cfg in configs() {
            let plan = PlanConfig {
                chunk_bytes,
                ..PlanConfig::default()
            };
            let (loaded, report) = load_host(&table, &all, plan, &cfg, None).unwrap();
            assert_eq!(loaded.len(), table.tensors.len());
            assert_matches_file(&table, &loaded);
            assert!(
                report.read_bytes >= table.total_bytes(),
                "{:?}",
                cfg.backend
            );
        }
    }
}

#[test]
fn selections_load_only_what_was_asked() {
    let dir = tempfile::tempdir().unwrap();
    let table = TensorTable::open(odd_checkpoint(dir.path())).unwrap();
    let sel = table
        .select(&["t0[13]".to_string(), "t09".to_string()])
        .unwrap();
    assert_eq!(sel.len(), 3);
    let (loaded, report) = load_host(
        &table,
        &sel,
        PlanConfig::default(),
        &EngineConfig::default(),
        None,
    )
    .unwrap();
    let names: Vec<&str> = loaded.iter().map(|t| t.info.name.as_str()).collect();
    assert_eq!(names, ["t01", "t03", "t09"]);
    assert_matches_file(&table, &loaded);
    let selected: u64 = sel.iter().map(|&i| table.tensors[i].len).sum();
    assert!(
        report.read_bytes <= selected + 3 * 2 * 4096,
        "only alignment slack beyond the selection"
    );
}

#[test]
fn tensors_stream_to_the_consumer_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = hoist_synth::preset("tiny").unwrap().spec;
    let root = hoist_synth::write_checkpoint(&spec, dir.path(), 5).unwrap();
    let shard = root.join("model-00001-of-00002.safetensors");
    let table = TensorTable::open(&shard).unwrap();
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    for backend in Backend::ALL {
        let seen = Mutex::new(Vec::new());
        let on = |t: &hoist_io::HostTensor| {
            seen.lock()
                .unwrap()
                .push((t.info.name.clone(), t.bytes().to_vec()))
        };
        let cfg = EngineConfig {
            backend,
            ..EngineConfig::default()
        };
        let plan = PlanConfig {
            chunk_bytes: 64 << 10,
            ..PlanConfig::default()
        };
        let (loaded, _) = load_host(&table, &all, plan, &cfg, Some(&on)).unwrap();
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), table.tensors.len());
        let unique: HashSet<&String> = seen.iter().map(|s| &s.0).collect();
        assert_eq!(unique.len(), seen.len());
        for (name, bytes) in &seen {
            let t = loaded.iter().find(|t| &t.info.name == name).unwrap();
            assert!(
                t.bytes() == &bytes[..],
                "streamed bytes of {name} are final"
            );
        }
    }
}

#[test]
fn a_file_truncated_after_parsing_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = odd_checkpoint(dir.path());
    let table = TensorTable::open(&path).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 100_000)
        .unwrap();
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    for backend in [Backend::Auto, Backend::Uring, Backend::Pread, Backend::Mmap] {
        let cfg = EngineConfig {
            backend,
            ..EngineConfig::default()
        };
        let err = load_host(&table, &all, PlanConfig::default(), &cfg, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("odd.safetensors"), "{backend:?}: {msg}");
        assert!(
            matches!(err, LoadError::Io(IoError::Truncated { .. })),
            "{backend:?}: {msg}"
        );
    }
}

#[test]
fn progress_counts_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let table = TensorTable::open(odd_checkpoint(dir.path())).unwrap();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cfg = EngineConfig {
        progress: Some(progress.clone()),
        ..EngineConfig::default()
    };
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    let (_, report) = load_host(&table, &all, PlanConfig::default(), &cfg, None).unwrap();
    assert_eq!(
        progress.load(std::sync::atomic::Ordering::Relaxed),
        report.read_bytes
    );
}

/// A warm host load with `threads` readers under `auto`: the methods that moved its bytes.
fn auto_host_methods(threads: usize) -> (Vec<(&'static str, u64)>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = odd_checkpoint(dir.path());
    let table = TensorTable::open(&path).unwrap();
    std::fs::read(&path).unwrap(); // in the page cache
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    let config = EngineConfig {
        threads,
        ..EngineConfig::default()
    };
    let (_, report) = load_host(&table, &all, PlanConfig::default(), &config, None).unwrap();
    (report.bytes_by_method, report.read_bytes)
}

/// Cached chunks go to fresh host memory by buffered `pread` with few readers and out of mmap
/// windows with many, as paired runs on both machines measured (docs/BENCHMARKS.md, "auto's
/// host route").
#[test]
fn auto_reads_cached_chunks_into_host_memory_by_reader_count() {
    use hoist_io::engine::AUTO_MMAP_MIN_THREADS;
    // Few readers (the 2-core box's default): buffered pread, which measured faster there.
    let (methods, bytes) = auto_host_methods(2);
    assert_eq!(methods, vec![("pread-buffered", bytes)]);
    let (methods, bytes) = auto_host_methods(AUTO_MMAP_MIN_THREADS - 1);
    assert_eq!(methods, vec![("pread-buffered", bytes)]);
    // Many readers: mmap windows, which measured faster on the 16-core GPU host.
    let (methods, bytes) = auto_host_methods(AUTO_MMAP_MIN_THREADS);
    assert_eq!(methods, vec![("mmap", bytes)]);
}
