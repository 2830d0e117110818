//! Writes a synthetic checkpoint: `make_checkpoint PRESET DIR [SEED]` (presets: tiny, small,
//! qwen3-0.6b, mixtral-mini, llama-7b), or the awkward-layout fixtures: `make_checkpoint
//! fixtures DIR`. Prints the path to open. Reuses a finished checkpoint of the same layout.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(preset), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!("usage: make_checkpoint PRESET|fixtures DIR [SEED]");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(dir);
    if preset == "fixtures" {
        match hoist_testkit::fixtures::write_fixtures(dir) {
            Ok(f) => f
                .iter()
                .for_each(|f| println!("{} {}", f.name, f.path.display())),
            Err(e) => {
                eprintln!("make_checkpoint: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let Some(p) = hoist_synth::preset(preset) else {
        let names: Vec<_> = hoist_synth::presets().iter().map(|p| p.name).collect();
        eprintln!(
            "make_checkpoint: unknown preset {preset}; presets: {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    let t = std::time::Instant::now();
    match hoist_synth::write_checkpoint(&p.spec, dir, seed) {
        Ok(root) => {
            eprintln!(
                "{preset}: {} bytes in {:.1} s",
                p.spec.total_bytes(),
                t.elapsed().as_secs_f64()
            );
            println!("{}", root.display());
        }
        Err(e) => {
            eprintln!("make_checkpoint: {e}");
            std::process::exit(1);
        }
    }
}
