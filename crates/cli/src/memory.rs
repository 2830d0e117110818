//! `--gpu-memory`, `--host-memory` and `--cache`: how a model is loaded onto the GPU (the
//! budgets layer placement fits, the page-cache policy of its reads), shared by `hoist run` and
//! `hoist serve`.

use hoist_runtime::placement::{parse_bytes, Budget, Placement};

/// Memory budgets of a GPU load.
#[derive(clap::Args, Debug, Clone)]
pub struct MemoryArgs {
    /// GPU memory for the weights: resident layers and streaming slots (e.g. 24GiB, 20GB, or
    /// bytes). Layers beyond it are streamed to the GPU each step [default: free GPU memory
    /// less one session's KV cache and work buffers and 512 MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub gpu_memory: Option<u64>,
    /// Pinned host memory for streamed layers; those beyond it are read from the file each step
    /// [default: 90% of available memory, at least 2 GiB left].
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub host_memory: Option<u64>,
    /// Whether weights read from disk stay in the page cache, so that the next load of the
    /// model is a warm one: keep, bypass (O_DIRECT), or auto (keep when they fit in available
    /// memory less a headroom).
    #[arg(long, value_enum, default_value = "auto", value_name = "POLICY")]
    pub cache: crate::CacheArg,
}

impl MemoryArgs {
    /// The page-cache policy of the load.
    pub fn cache(&self) -> hoist_runtime::gpu::CachePolicy {
        self.cache.into()
    }

    /// The placement these budgets ask for: as many layers resident as fit, the rest streamed.
    pub fn placement(&self) -> Placement {
        Placement::auto(Budget {
            gpu_bytes: self.gpu_memory,
            host_bytes: self.host_memory,
        })
    }
}
