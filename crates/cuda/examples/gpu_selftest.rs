//! Runs the GPU correctness matrix (see `hoist_testkit::selftest`):
//! `gpu_selftest DIR [ORDINAL]`. Prints one line per case and a JSON summary last; exits 0
//! only if every case passed, and 0 with one "skipped" line where there is no GPU.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(
        args.first()
            .cloned()
            .unwrap_or_else(|| "/tmp/hoist-gpu-fixtures".into()),
    );
    let ordinal = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    match hoist_cuda::probe(ordinal) {
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
        Ok(info) => eprintln!(
            "{} (driver {}), cuFile: {}",
            info.name, info.driver_version, info.cufile.summary
        ),
    }
    let results = match hoist_testkit::selftest::run(&dir, ordinal) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gpu_selftest: {e}");
            std::process::exit(1);
        }
    };
    for r in &results {
        let status = if r.skipped {
            "skip"
        } else if r.ok {
            "ok  "
        } else {
            "FAIL"
        };
        println!("{status} {:<18} {:<38} {}", r.fixture, r.case, r.detail);
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    let skipped = results.iter().filter(|r| r.skipped).count();
    println!(
        "{}",
        serde_json::json!({ "cases": results.len(), "failed": failed, "skipped": skipped })
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
