//! The page-cache policy on a real disk: a `keep` load of an evicted checkpoint leaves it
//! cached, a `bypass` load leaves it as it was (not cached), and `auto` follows its headroom.
//! Files live under the target directory (a disk filesystem where tmpfs would make eviction a
//! no-op); where eviction cannot be verified, the tests say so and skip.

use std::path::{Path, PathBuf};

mod common;

use hoist_format::TensorTable;
use hoist_io::residency::{evict, FileResidency};
use hoist_io::{load_host, Backend, CachePolicy, EngineConfig, LoadReport, PlanConfig};

/// A 24 MiB checkpoint (several 1 MiB chunks each way) in a fresh directory on disk.
fn checkpoint() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sizes = [(8 << 20) + 3, 4097, 1, (16 << 20) - 4100];
    let path = common::u8_checkpoint(dir.path(), "cache.safetensors", &sizes, 11);
    (dir, path)
}

/// Share of `path`'s bytes in the page cache, 0 to 1.
fn resident_share(path: &Path) -> f64 {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let cached = FileResidency::new(&f)
        .unwrap()
        .resident_bytes(0, len)
        .unwrap();
    cached as f64 / len as f64
}

/// Evicts `path`; false (with a line saying why) where the pages stay, e.g. on tmpfs.
fn evicted(path: &Path) -> bool {
    let e = evict(path).unwrap();
    let share = resident_share(path);
    if share > 0.01 {
        eprintln!(
            "skipping: {} keeps {:.0}% of its pages in the page cache after eviction ({e:?}); residency cannot be tested here",
            path.display(),
            share * 100.0
        );
        return false;
    }
    true
}

/// Loads every tensor of `path` with `backend` and `cache`, checking the bytes against the file;
/// returns the report and the share of the file cached right after the load (before the check
/// reads the file).
fn load(
    path: &Path,
    backend: Backend,
    cache: CachePolicy,
    headroom: Option<u64>,
) -> (LoadReport, f64) {
    let table = TensorTable::open(path).unwrap();
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    let config = EngineConfig {
        backend,
        threads: 2,
        cache,
        cache_headroom_bytes: headroom,
        ..EngineConfig::default()
    };
    let plan = PlanConfig {
        chunk_bytes: 1 << 20,
        ..PlanConfig::default()
    };
    let (tensors, report) = load_host(&table, &all, plan, &config, None).unwrap();
    let share = resident_share(path);
    let file = std::fs::read(path).unwrap();
    for t in &tensors {
        assert!(
            t.bytes() == &file[t.info.offset as usize..t.info.end() as usize],
            "{}",
            t.info.name
        );
    }
    (report, share)
}

/// Whether some chunk was read with O_DIRECT (false where the filesystem refuses it).
fn read_direct(report: &LoadReport) -> bool {
    report
        .bytes_by_method
        .iter()
        .any(|(m, _)| m.ends_with("-direct"))
}

#[test]
fn keep_leaves_an_evicted_checkpoint_cached() {
    let (_dir, path) = checkpoint();
    for backend in [Backend::Auto, Backend::Uring] {
        if !evicted(&path) {
            return;
        }
        let (report, share) = load(&path, backend, CachePolicy::Keep, None);
        assert!(
            share >= 0.9,
            "{backend:?}: only {:.0}% cached after a keep load: {:?}",
            share * 100.0,
            report.bytes_by_method
        );
        assert_eq!(report.cache.policy, CachePolicy::Keep);
        assert_eq!(report.cache.reason, "asked");
        assert!(!read_direct(&report), "{:?}", report.bytes_by_method);
        if backend == Backend::Uring {
            // `--backend uring --cache keep`: io_uring through the page cache.
            assert_eq!(report.bytes_by_method[0].0, "uring-buffered");
        }
    }
}

#[test]
fn bypass_leaves_an_evicted_checkpoint_uncached() {
    let (_dir, path) = checkpoint();
    for backend in [Backend::Auto, Backend::Uring] {
        if !evicted(&path) {
            return;
        }
        let (report, share) = load(&path, backend, CachePolicy::Bypass, None);
        assert_eq!(report.cache.policy, CachePolicy::Bypass);
        if !read_direct(&report) {
            eprintln!(
                "skipping: this filesystem refuses O_DIRECT, so nothing bypasses the page cache ({:?})",
                report.notes
            );
            return;
        }
        // The header was read through the cache to parse it; the data was not.
        assert!(
            share <= 0.05,
            "{backend:?}: {:.0}% cached after a bypass load",
            share * 100.0
        );
    }
}

#[test]
fn auto_keeps_or_bypasses_by_the_headroom() {
    let (_dir, path) = checkpoint();
    if !evicted(&path) {
        return;
    }
    // No memory is ever this free: bypass, as before this policy existed.
    let (report, share) = load(&path, Backend::Auto, CachePolicy::Auto, Some(u64::MAX));
    assert_eq!(report.cache.asked, CachePolicy::Auto);
    assert_eq!(report.cache.policy, CachePolicy::Bypass);
    assert!(
        report.cache.reason.starts_with("auto: ") && report.cache.reason.contains("does not fit"),
        "{}",
        report.cache.reason
    );
    if read_direct(&report) {
        assert!(share <= 0.05, "{:.0}% cached", share * 100.0);
    }
    // 24 MiB with no headroom fits in any machine that runs the tests.
    if !evicted(&path) {
        return;
    }
    let (report, share) = load(&path, Backend::Auto, CachePolicy::Auto, Some(0));
    assert_eq!(report.cache.policy, CachePolicy::Keep);
    assert!(
        report.cache.reason.contains(" fits in "),
        "{}",
        report.cache.reason
    );
    assert!(share >= 0.9, "{:.0}% cached", share * 100.0);
}

#[test]
fn pread_reads_through_the_cache_whatever_was_asked() {
    let (_dir, path) = checkpoint();
    if !evicted(&path) {
        return;
    }
    let (report, share) = load(&path, Backend::Pread, CachePolicy::Bypass, None);
    assert_eq!(report.cache.policy, CachePolicy::Keep);
    assert!(
        report
            .cache
            .reason
            .contains("bypass asked, but backend pread"),
        "{}",
        report.cache.reason
    );
    assert!(share >= 0.9, "{:.0}% cached", share * 100.0);
}

#[test]
fn the_policy_and_the_cold_route_are_logged_at_debug() {
    let (_dir, path) = checkpoint();
    if !evicted(&path) {
        return;
    }
    let ((), log) = common::capture_logs(tracing::Level::DEBUG, || {
        load(&path, Backend::Auto, CachePolicy::Keep, None);
    });
    assert!(
        log.lines().any(|l| l.contains(" DEBUG ")
            && l.contains("cache policy")
            && l.contains("asked=keep")
            && l.contains("policy=keep")
            && l.contains("reason=asked")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("route") && l.contains("cache policy keep")),
        "a route line says cold chunks were read to stay cached: {log}"
    );
}
