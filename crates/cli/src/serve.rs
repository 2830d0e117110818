//! `hoist serve`: the Ollama- and OpenAI-compatible HTTP server (crates/server) on a port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hoist_server::{KeepAlive, Models, RegistryOptions, ServerConfig, StaticModels};

use crate::Device;

/// Ollama's port, so that clients find hoist where they look for Ollama.
pub const DEFAULT_PORT: u16 = 11434;

/// Arguments of `hoist serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on [default: 127.0.0.1, or HOST from HOIST_HOST=HOST[:PORT]].
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// Port to listen on [default: 11434, or PORT from HOIST_HOST]; 0 picks a free one.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Where models run: cuda:N, or cpu (the f32 CPU reference: tiny models only).
    #[arg(long, default_value = "cuda:0", value_name = "DEVICE")]
    pub device: Device,
    /// Serve this checkpoint under NAME (repeatable): NAME=PATH, PATH a .gguf file or a Hugging
    /// Face directory. Without it: every model of hoist's store (`hoist list`), and pulls.
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = parse_model)]
    pub models: Vec<(String, PathBuf)>,
    /// Requests that may wait per model besides those running; more are refused with 503.
    #[arg(long, default_value_t = hoist_server::DEFAULT_QUEUE_DEPTH, value_name = "N")]
    pub queue: usize,
    /// Requests each model runs at once, decoded together: each decode step reads the weights
    /// once for all of them (continuous batching; each holds a KV cache of the whole context;
    /// in mixture-of-experts models each runs its own experts).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = parse_parallel)]
    pub parallel: usize,
    /// Context positions per model [default: the model's trained length, at most 4096];
    /// a request's num_ctx (Ollama) overrides it when it loads the model.
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// How long a model stays loaded after its last request when the request names no
    /// keep_alive: seconds or a duration (5m, 1h); 0 unloads at once; negative keeps it.
    #[arg(
        long,
        default_value = "5m",
        value_name = "DURATION",
        allow_negative_numbers = true
    )]
    pub keep_alive: String,
    /// Require `Authorization: Bearer KEY` on every route but `/` [default: HOIST_API_KEY].
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub max_body_mib: usize,
    #[command(flatten)]
    pub memory: crate::memory::MemoryArgs,
}

/// `NAME=PATH`.
/// `--parallel`: 1 to [`hoist_engine::MAX_PARALLEL`].
fn parse_parallel(s: &str) -> Result<usize, String> {
    let max = hoist_engine::MAX_PARALLEL;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of requests from 1 to {max}")),
    }
}

fn parse_model(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.trim().is_empty() && !path.is_empty() => {
            Ok((name.trim().to_string(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "'{s}' is not NAME=PATH (e.g. --model llama3=/models/llama3.gguf)"
        )),
    }
}

/// The address to bind: flags first, then HOIST_HOST (`HOST`, `HOST:PORT` or `:PORT`), then
/// 127.0.0.1:11434.
fn bind_address(args: &Args, hoist_host: Option<&str>) -> anyhow::Result<SocketAddr> {
    let (env_host, env_port) = match hoist_host.map(str::trim).filter(|h| !h.is_empty()) {
        None => (None, None),
        Some(h) => {
            let h = h.trim_start_matches("http://");
            match h
                .rsplit_once(':')
                .filter(|(host, _)| !host.contains(':') || host.ends_with(']'))
            {
                Some((host, port)) => {
                    let port: u16 = port
                        .parse()
                        .with_context(|| format!("HOIST_HOST={h}: '{port}' is not a port"))?;
                    ((!host.is_empty()).then_some(host.to_string()), Some(port))
                }
                None => (Some(h.to_string()), None),
            }
        }
    };
    let host = args
        .host
        .clone()
        .or(env_host)
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = args.port.or(env_port).unwrap_or(DEFAULT_PORT);
    let ip: std::net::IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| {
            format!("'{host}' is not an IP address to listen on (e.g. 127.0.0.1, 0.0.0.0, ::1)")
        })?;
    Ok(SocketAddr::new(ip, port))
}

/// Runs the server until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let addr = bind_address(&args, std::env::var("HOIST_HOST").ok().as_deref())?;
    let keep_alive = KeepAlive::parse(&serde_json::Value::String(args.keep_alive.clone()))
        .map_err(|e| anyhow::anyhow!("--keep-alive: {e}"))?;
    anyhow::ensure!(
        (1..=1024).contains(&args.max_body_mib),
        "--max-body-mib must be between 1 and 1024"
    );
    for (name, path) in &args.models {
        anyhow::ensure!(
            path.exists(),
            "--model {name}={}: no such file or directory",
            path.display()
        );
    }
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("HOIST_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let config = ServerConfig {
        registry: RegistryOptions {
            device: match args.device {
                Device::Cpu => hoist_engine::Device::Cpu,
                Device::Cuda(n) => hoist_engine::Device::Cuda(n),
            },
            queue_depth: args.queue,
            parallel: args.parallel,
            pool_size: hoist_engine::DEFAULT_POOL_SIZE.max(args.parallel),
            context: args.context,
            keep_alive,
            placement: args.memory.placement(),
            cache: args.memory.cache(),
        },
        api_key,
        body_limit_bytes: args.max_body_mib << 20,
    };
    let models: Arc<dyn Models> = if args.models.is_empty() {
        let store =
            hoist_store::Store::open_default().context("cannot open hoist's model store")?;
        eprintln!(
            "hoist serve: models from the store at {}",
            store.root().display()
        );
        Arc::new(store)
    } else {
        Arc::new(StaticModels::new(args.models))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hoist-serve")
        .build()
        .context("cannot start the server's async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (in use? pick another --port)"))?;
        let local = listener
            .local_addr()
            .context("cannot read the bound address")?;
        // The one line scripts and tests wait for.
        eprintln!("hoist serve: listening on http://{local}");
        let shutdown = async {
            tokio::select! {
                () = signal(tokio::signal::unix::SignalKind::interrupt()) => {}
                () = signal(tokio::signal::unix::SignalKind::terminate()) => {}
            }
            eprintln!("hoist serve: shutting down");
        };
        hoist_server::serve(listener, models, config, shutdown)
            .await
            .context("the server failed")
    })?;
    // Engines finishing their requests must not hold the exit for long.
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// Resolves when the process receives `kind` (Ctrl-C, or a service manager's SIGTERM); never,
/// when no handler can be installed (the server then runs until killed, which is still correct).
async fn signal(kind: tokio::signal::unix::SignalKind) {
    match tokio::signal::unix::signal(kind) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::warn!("cannot handle signal {kind:?}: {e}");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["serve", "--model", "m=/x.gguf"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn binds_loopback_on_ollamas_port_by_default() {
        let a = args(&[]);
        assert_eq!(
            bind_address(&a, None).unwrap().to_string(),
            "127.0.0.1:11434"
        );
        assert_eq!(
            bind_address(&a, Some("0.0.0.0")).unwrap().to_string(),
            "0.0.0.0:11434"
        );
        assert_eq!(
            bind_address(&a, Some("0.0.0.0:8080")).unwrap().to_string(),
            "0.0.0.0:8080"
        );
        assert_eq!(
            bind_address(&a, Some(":9000")).unwrap().to_string(),
            "127.0.0.1:9000"
        );
        let a = args(&["--port", "1234", "--host", "::1"]);
        assert_eq!(
            bind_address(&a, Some("0.0.0.0:8080")).unwrap().to_string(),
            "[::1]:1234"
        );
        assert!(bind_address(&args(&["--host", "localhost"]), None).is_err());
    }

    #[test]
    fn models_are_name_equals_path() {
        assert_eq!(
            parse_model("a=/b").unwrap(),
            ("a".into(), PathBuf::from("/b"))
        );
        assert!(parse_model("/b").is_err());
        assert!(parse_model("=/b").is_err());
    }
}
