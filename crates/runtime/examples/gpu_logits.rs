//! Dumps the GPU runtime's logits for prompts, for comparison with transformers
//! (`bench/gpu/runtime/check_logits.py`).
//!
//! ```text
//! gpu_logits MODEL --prompts PROMPTS.json --steps S --out DIR
//! ```
//!
//! PROMPTS.json is a list of token-id lists. For prompt `i` of `n` tokens, `DIR/p{i}.f32` holds
//! little-endian f32 logits `[n + S - 1, vocab]`: every prompt position (one prefill), then the
//! decode steps that fed greedy tokens `0..S-1` one at a time (row `n - 1 + j` predicts greedy
//! token `j`). `DIR/result.json` lists `n`, the greedy tokens, `device_greedy` (the same decode
//! again with the arg-max taken on the GPU) and the file of each prompt.

use std::path::PathBuf;
use std::time::Instant;

use hoist_runtime::gpu::{GpuModel, GpuOptions};
use hoist_runtime::sampler::argmax;

fn main() {
    if let Err(e) = run() {
        eprintln!("gpu_logits: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Result<String, String> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
            .ok_or_else(|| {
                format!(
                    "missing {flag} (usage: gpu_logits MODEL --prompts FILE --steps S --out DIR)"
                )
            })
    };
    let model_path = PathBuf::from(args.first().ok_or("missing MODEL")?);
    let prompts: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(value("--prompts")?)?)?;
    let steps: usize = value("--steps")?.parse()?;
    let out = PathBuf::from(value("--out")?);
    if steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    std::fs::create_dir_all(&out)?;
    let t = Instant::now();
    let model = GpuModel::load(&model_path, &GpuOptions::default().with_env_overrides()?)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size;
    let mut results = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(format!("prompt {i} of --prompts is empty").into());
        }
        let mut session = model.session(prompt.len() + steps)?;
        let mut rows = session.forward(prompt, true)?;
        let mut greedy = vec![argmax(&rows[rows.len() - vocab..])];
        for _ in 1..steps {
            let next = session.forward(&[*greedy.last().unwrap_or(&0)], false)?;
            greedy.push(argmax(&next));
            rows.extend(next);
        }
        // The same decode with the arg-max on the device (`hoist run --temperature 0`).
        session.clear();
        session.forward(prompt, false)?;
        let mut device_greedy = vec![greedy[0]];
        session.decode_greedy(greedy[0], steps - 1, &mut |t| {
            device_greedy.push(t);
            true
        })?;
        let file = format!("p{i}.f32");
        let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(out.join(&file), bytes)?;
        results.push(serde_json::json!({
            "n": prompt.len(),
            "greedy": greedy,
            "device_greedy": device_greedy,
            "file": file,
        }));
    }
    let result = serde_json::json!({
        "vocab": vocab,
        "load_seconds": load_seconds,
        "load": model.stats(),
        "prompts": results,
    });
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    Ok(())
}
