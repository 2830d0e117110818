//! Prints the GPU runtime's speed report for a model as JSON (the measurement of
//! `hoist run --benchmark`, without the CLI).
//!
//! ```text
//! gpu_speed MODEL [PROMPT_TOKENS=512] [DECODE_TOKENS=128]
//! ```
//!
//! The `HOIST_*` overrides of the GPU options apply ([`hoist_runtime::gpu::ENV_OVERRIDES`]).

use std::path::PathBuf;

use hoist_runtime::gpu::{bench, GpuModel, GpuOptions};

fn main() {
    if let Err(e) = run() {
        eprintln!("gpu_speed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = PathBuf::from(
        args.first()
            .ok_or("usage: gpu_speed MODEL [PROMPT] [DECODE]")?,
    );
    let prompt: usize = args.get(1).map_or(Ok(512), |s| s.parse())?;
    let decode: usize = args.get(2).map_or(Ok(128), |s| s.parse())?;
    let model = GpuModel::load(&path, &GpuOptions::default().with_env_overrides()?)?;
    let report = bench::measure(&model, prompt, decode)?;
    let json = serde_json::json!({"load": model.stats(), "speed": report});
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
