//! The CUDA C sources of hoist's kernels, one file per op family (after llama.cpp's ggml-cuda
//! layout) with shared headers, and the constants the host and the kernels share.
//!
//! NVRTC sees every file as a header, by include name, and compiles one program whose source
//! includes each op family ([`main_source`]): one module, one function lookup. Each constant
//! shared with the kernels has its one definition here and reaches them as a `-DNAME=value`
//! option ([`defines`]); the headers `#error` when one is missing.

use super::layers::WType;

/// Every source file, by the name the others include it by: the shared headers (`.cuh`), then
/// the op families (`.cu`), in the order the program includes them.
pub(super) const FILES: [(&str, &str); 14] = [
    ("common.cuh", include_str!("common.cuh")),
    ("gemv.cuh", include_str!("gemv.cuh")),
    ("quant.cuh", include_str!("quant.cuh")),
    ("rows.cuh", include_str!("rows.cuh")),
    ("convert.cu", include_str!("convert.cu")),
    ("embed.cu", include_str!("embed.cu")),
    ("norm.cu", include_str!("norm.cu")),
    ("elementwise.cu", include_str!("elementwise.cu")),
    ("rope.cu", include_str!("rope.cu")),
    ("attention.cu", include_str!("attention.cu")),
    ("argmax.cu", include_str!("argmax.cu")),
    ("gemv.cu", include_str!("gemv.cu")),
    ("moe.cu", include_str!("moe.cu")),
    ("q4_tiles.cu", include_str!("q4_tiles.cu")),
];

/// The program NVRTC compiles: an `#include` of each op family.
pub(super) fn main_source() -> String {
    FILES
        .iter()
        .filter(|(name, _)| name.ends_with(".cu"))
        .map(|(name, _)| format!("#include \"{name}\"\n"))
        .collect()
}

/// Values per quantized (Q8_0, Q4_0) block.
pub(crate) const QK: usize = 32;
/// Bytes of a Q8_0 block: an f16 scale and 32 int8.
pub(crate) const Q8_BLOCK_BYTES: usize = 34;
/// Bytes of a Q4_0 block: an f16 scale and 16 bytes of nibbles.
pub(crate) const Q4_BLOCK_BYTES: usize = 18;
/// Threads of a block of `convert` on block-quantized types: each decodes one 32-value slice
/// into shared memory (`DEQUANT_THREADS * 32 * 4` bytes) before the block's coalesced stores.
pub(crate) const DEQUANT_THREADS: u32 = 256;
/// Most key slices per query of `attention_split` (`attention_merge` gives each a lane).
pub(crate) const ATTN_SPLITS: usize = 32;
/// Fewest keys per slice of `attention_split`: short contexts use fewer slices.
pub(crate) const ATTN_SLICE_KEYS: usize = 32;
/// Threads of `argmax_next`'s one block.
pub(crate) const ARGMAX_THREADS: u32 = 1024;
/// Most experts a token goes through (`moe_route` keeps them in registers): Mixtral's 2 and
/// the Qwen MoE models' 4 to 8 with room to spare.
pub(crate) const MOE_MAX_TOP_K: usize = 16;
/// Inputs one batched tiled GEMV (`gemv_q4t_cols`) multiplies: the 8 columns of an m16n8k16
/// product's B.
pub(crate) const Q4T_COLS: usize = 8;

/// Every constant the kernels take from the host, as (macro name, value). The weight-type codes
/// are [`WType`]'s discriminants (`Q4_0Tiled` is read by the tiled kernels alone, which take no
/// type code).
pub(super) fn shared_constants() -> [(&'static str, usize); 24] {
    [
        ("W_F32", WType::F32 as usize),
        ("W_F16", WType::F16 as usize),
        ("W_BF16", WType::BF16 as usize),
        ("W_Q8_0", WType::Q8_0 as usize),
        ("W_Q4_0", WType::Q4_0 as usize),
        ("W_Q4_1", WType::Q4_1 as usize),
        ("W_Q5_0", WType::Q5_0 as usize),
        ("W_Q5_1", WType::Q5_1 as usize),
        ("W_Q2_K", WType::Q2_K as usize),
        ("W_Q3_K", WType::Q3_K as usize),
        ("W_Q4_K", WType::Q4_K as usize),
        ("W_Q5_K", WType::Q5_K as usize),
        ("W_Q6_K", WType::Q6_K as usize),
        ("W_IQ4_NL", WType::IQ4_NL as usize),
        ("W_IQ4_XS", WType::IQ4_XS as usize),
        ("QK", QK),
        ("Q8_BLOCK_BYTES", Q8_BLOCK_BYTES),
        ("Q4_BLOCK_BYTES", Q4_BLOCK_BYTES),
        ("DEQUANT_THREADS", DEQUANT_THREADS as usize),
        ("ATTN_SPLITS", ATTN_SPLITS),
        ("ATTN_SLICE_KEYS", ATTN_SLICE_KEYS),
        ("ARGMAX_THREADS", ARGMAX_THREADS as usize),
        ("MOE_MAX_TOP_K", MOE_MAX_TOP_K),
        ("Q4T_COLS", Q4T_COLS),
    ]
}

/// [`shared_constants`] as NVRTC options.
pub(super) fn defines() -> Vec<String> {
    shared_constants()
        .iter()
        .map(|(name, value)| format!("-D{name}={value}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::module::{options, GemvShape};
    use super::WType;

    /// The macro names the host passes (shared constants and the GEMV shape).
    fn passed_names() -> Vec<String> {
        options("sm_90", GemvShape::DEFAULT)
            .iter()
            .filter_map(|o| o.strip_prefix("-D"))
            .map(|d| d.split('=').next().unwrap_or(d).to_string())
            .collect()
    }

    /// Whether `line` is a preprocessor `directive` (`#define`, `# ifndef`…) naming `name`.
    fn directive_names(line: &str, directive: &str, name: &str) -> bool {
        let Some(rest) = line.trim_start().strip_prefix('#') else {
            return false;
        };
        let Some(rest) = rest.trim_start().strip_prefix(directive) else {
            return false;
        };
        let word: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        word == name
    }

    /// quant.cuh's block layouts (`Layout<W_X> { enum { VALUES = v, BYTES = b }; }`) are the
    /// host's: one line per type the kernels read, with GgmlType's values and bytes.
    #[test]
    fn kernel_block_layouts_match_the_host() {
        let src = super::FILES
            .iter()
            .find(|(n, _)| *n == "quant.cuh")
            .map(|(_, s)| *s)
            .unwrap_or_default();
        for (w, g) in crate::gpu::layers::BLOCK_TYPES {
            let (values, bytes) = g.block().unwrap_or_else(|| panic!("{g:?} has a block"));
            // Q8_0's and Q4_0's sizes are the host's constants, passed as options.
            let (v, b) = match w {
                WType::Q8_0 => ("QK".to_string(), "Q8_BLOCK_BYTES".to_string()),
                WType::Q4_0 => ("QK".to_string(), "Q4_BLOCK_BYTES".to_string()),
                _ => (values.to_string(), bytes.to_string()),
            };
            let line = format!(
                "template <> struct Layout<W_{}> {{ enum {{ VALUES = {v}, BYTES = {b} }}; }};",
                g.name()
            );
            assert!(src.contains(&line), "quant.cuh lacks `{line}` ({w:?})");
            assert_eq!(w.bytes(values as usize), bytes as usize, "{w:?}");
            assert_eq!(w.block_values(), values as usize, "{w:?}");
        }
        assert_eq!(
            (super::QK, super::Q8_BLOCK_BYTES, super::Q4_BLOCK_BYTES),
            (32, 34, 18)
        );
    }

    /// One definition per constant: each is passed as an option with its Rust value, no source
    /// file defines it again, and some file refuses to compile without it (`#ifndef` + `#error`).
    #[test]
    fn shared_constants_are_options_and_defined_only_in_rust() {
        let options = options("sm_90", GemvShape::DEFAULT);
        for (name, value) in super::shared_constants() {
            let flag = format!("-D{name}={value}");
            assert!(options.contains(&flag), "{flag} missing from {options:?}");
        }
        let names = passed_names();
        assert!(
            names.len() >= super::shared_constants().len() + 5,
            "{names:?}"
        );
        for name in &names {
            let mut guarded = false;
            for (file, src) in super::FILES {
                let lines: Vec<&str> = src.lines().collect();
                for (i, line) in lines.iter().enumerate() {
                    assert!(
                        !directive_names(line, "define", name),
                        "{file}:{}: #defines {name}, which the host passes",
                        i + 1
                    );
                    if directive_names(line, "ifndef", name)
                        && lines.get(i + 1).is_some_and(|l| l.contains("#error"))
                    {
                        guarded = true;
                    }
                }
            }
            assert!(guarded, "no file #errors when {name} is not passed");
        }
    }
}
