//! What the engine logs: the plan, each routing decision with its reason, fallbacks (a warning
//! only where the method was asked for explicitly) and per-method timings.

use std::path::Path;

mod common;

use hoist_format::TensorTable;
use hoist_io::{load_host, Backend, CachePolicy, EngineConfig, LoadReport, PlanConfig};
use tracing::Level;

/// Loads every tensor of `path` with `backend` while a subscriber at `level` records events;
/// returns the report and the log text.
fn logged_load(path: &Path, backend: Backend, level: Level) -> (LoadReport, String) {
    let table = TensorTable::open(path).unwrap();
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    let cfg = EngineConfig {
        backend,
        // O_DIRECT is only opened (and refused) when cold ranges bypass the page cache.
        cache: CachePolicy::Bypass,
        ..EngineConfig::default()
    };
    let plan = PlanConfig {
        chunk_bytes: 1 << 20,
        ..PlanConfig::default()
    };
    let ((_, report), log) =
        common::capture_logs(level, || load_host(&table, &all, plan, &cfg, None).unwrap());
    (report, log)
}

fn checkpoint(dir: &Path) -> std::path::PathBuf {
    let sizes = [1u64, 4097, 300_001, 0, (3 << 20) + 5, 17];
    common::u8_checkpoint(dir, "log.safetensors", &sizes, 7)
}

/// The lines of `log` holding `message`.
fn lines<'a>(log: &'a str, message: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(message)).collect()
}

#[test]
fn a_debug_subscriber_sees_the_plan_the_routes_and_the_timings() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path());
    std::fs::read(&path).unwrap(); // in the page cache: auto routes every chunk the cached way
    let table = TensorTable::open(&path).unwrap();
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    let plan = hoist_io::Plan::new(
        &table,
        &all,
        PlanConfig {
            chunk_bytes: 1 << 20,
            ..PlanConfig::default()
        },
    )
    .unwrap();
    let (report, log) = logged_load(&path, Backend::Auto, Level::DEBUG);

    let planned = lines(&log, "read plan");
    assert_eq!(planned.len(), 1, "{log}");
    let want_chunks = format!("chunks={}", plan.chunks.len());
    let want_regions = format!("regions={}", plan.regions.len());
    assert!(
        planned[0].contains(&want_chunks) && planned[0].contains(&want_regions),
        "{log}"
    );
    assert!(planned[0].contains(" DEBUG "), "{log}");

    let (method, bytes) = report.bytes_by_method[0];
    let routes = lines(&log, "route");
    assert!(
        routes.iter().any(|l| l.contains("backend=auto")
            && l.contains(&format!("method={method}"))
            && l.contains(&format!("chunks={}", plan.chunks.len()))
            && l.contains("reason=")),
        "a route line names the method, the chunks and why: {log}"
    );

    let per_method = lines(&log, "method finished");
    assert!(
        per_method
            .iter()
            .any(|l| l.contains(&format!("method={method}"))
                && l.contains(&format!("bytes={bytes}"))
                && l.contains("seconds=")
                && l.contains("gbps=")),
        "{log}"
    );
    let finished = lines(&log, "load finished");
    assert_eq!(finished.len(), 1, "{log}");
    assert!(
        finished[0].contains(&format!("read_bytes={}", report.read_bytes))
            && finished[0].contains("gbps="),
        "{log}"
    );
}

#[test]
fn a_refused_o_direct_warns_only_when_uring_was_asked_for() {
    // tmpfs refuses O_DIRECT; without one here there is nothing to refuse.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipping: no /dev/shm (tmpfs) to refuse O_DIRECT");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let path = checkpoint(dir.path());
    let (report, warned) = logged_load(&path, Backend::Uring, Level::WARN);
    if !report.notes.iter().any(|n| n.contains("O_DIRECT refused")) {
        eprintln!("skipping: this tmpfs accepts O_DIRECT");
        return;
    }
    let warnings = lines(&warned, "O_DIRECT refused");
    assert_eq!(warnings.len(), 1, "{warned}");
    assert!(
        warnings[0].contains(" WARN ") && warnings[0].contains("log.safetensors"),
        "{warned}"
    );

    // Under auto the same fallback is the plan working as designed: debug, not a warning.
    let (_, quiet) = logged_load(&path, Backend::Auto, Level::WARN);
    assert_eq!(quiet, "", "auto warns about nothing here");
    let (_, debug) = logged_load(&path, Backend::Auto, Level::DEBUG);
    assert!(
        lines(&debug, "O_DIRECT refused")
            .iter()
            .any(|l| l.contains(" DEBUG ")),
        "{debug}"
    );
}
