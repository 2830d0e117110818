//! The CPU dequantizers against gguf-py's `gguf.quants.dequantize`, bit for bit, on random and
//! extreme blocks (tests/quant_ref.py writes them), and their behaviour on arbitrary bytes.

// The format crate's tests hold the one copy of the reference-Python helpers.
#[path = "../../format/tests/common/python.rs"]
mod python;

use std::path::Path;

use hoist_format::GgmlType;
use hoist_runtime::quant::{dequantize, QuantError, QUANTIZED};
use proptest::prelude::*;
use python::{python_with, run_script};
use serde_json::Value;

fn ty(name: &str) -> GgmlType {
    GgmlType::from_name(name).unwrap_or_else(|| panic!("no ggml type {name}"))
}

fn block(ty: GgmlType) -> (usize, usize) {
    let (elems, bytes) = ty.block().unwrap();
    (elems as usize, bytes as usize)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn dequantizers_equal_gguf_py_bitwise() {
    let Some(py) = python_with(&["numpy", "gguf"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/quant_ref.py");
    let report: Value = serde_json::from_slice(&run_script(py, &script, &[dir.path()])).unwrap();
    let mut covered = Vec::new();
    for entry in report.as_array().unwrap() {
        let name = entry["type"].as_str().unwrap();
        let t = ty(name);
        let (block_elems, block_bytes) = block(t);
        let blocks = std::fs::read(entry["blocks"].as_str().unwrap()).unwrap();
        let want: Vec<u32> = std::fs::read(entry["values"].as_str().unwrap())
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let count = entry["count"].as_u64().unwrap() as usize;
        assert_eq!(blocks.len(), count * block_bytes, "{name}: block bytes");
        assert_eq!(want.len(), count * block_elems, "{name}: values");
        let got = dequantize(t, &blocks, want.len()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.len(), want.len(), "{name}: values returned");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let b = i / block_elems;
            assert_eq!(
                g.to_bits(),
                *w,
                "{name}: block {b} element {}: hoist {g:e} ({:#010x}), gguf-py {:e} ({w:#010x}); block {}",
                i % block_elems,
                g.to_bits(),
                f32::from_bits(*w),
                hex(&blocks[b * block_bytes..][..block_bytes])
            );
        }
        covered.push(t);
        println!("{name}: {count} blocks agree bitwise");
    }
    let mut missing: Vec<&str> = QUANTIZED
        .iter()
        .filter(|t| !covered.contains(t))
        .map(|t| t.name())
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "no gguf-py comparison for {missing:?}: add them to quant_ref.py"
    );
}

#[test]
fn nan_and_inf_scales_do_not_panic() {
    // Every f16 field of every layout sits at an even offset, so repeating a 16-bit pattern
    // sets all of them (and the quant bytes to its two halves).
    for &t in QUANTIZED {
        let (block_elems, block_bytes) = block(t);
        for pattern in [0x7c00u16, 0xfc00, 0x7e00, 0xffff, 0x7c01] {
            let bytes: Vec<u8> = pattern
                .to_le_bytes()
                .into_iter()
                .cycle()
                .take(3 * block_bytes)
                .collect();
            let v = dequantize(t, &bytes, 3 * block_elems).unwrap();
            assert_eq!(v.len(), 3 * block_elems, "{}", t.name());
        }
    }
}

#[test]
fn wrong_lengths_are_clear_errors() {
    let q4k = ty("Q4_K");
    let e = dequantize(q4k, &[0u8; 144], 200).unwrap_err();
    assert!(matches!(e, QuantError::PartialBlock { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("Q4_K") && msg.contains("256"), "{msg}");

    let e = dequantize(q4k, &[0u8; 143], 256).unwrap_err();
    assert!(matches!(e, QuantError::Length { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("143") && msg.contains("144"), "{msg}");

    let e = dequantize(ty("IQ2_XXS"), &[0u8; 66], 256).unwrap_err();
    assert!(matches!(e, QuantError::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("IQ2_XXS"), "{e}");
    let e = dequantize(GgmlType(9999), &[], 0).unwrap_err();
    assert!(matches!(e, QuantError::Unsupported { .. }), "{e:?}");
}

fn any_type_and_blocks() -> impl Strategy<Value = (GgmlType, Vec<u8>)> {
    (0..QUANTIZED.len(), 0usize..4).prop_flat_map(|(i, n)| {
        let t = QUANTIZED[i];
        let (_, block_bytes) = block(t);
        (Just(t), prop::collection::vec(any::<u8>(), n * block_bytes))
    })
}

proptest! {
    #[test]
    fn whole_blocks_give_exactly_elems_values((t, bytes) in any_type_and_blocks()) {
        let (block_elems, block_bytes) = block(t);
        let elems = bytes.len() / block_bytes * block_elems;
        let v = dequantize(t, &bytes, elems);
        prop_assert!(v.is_ok(), "{}: {:?}", t.name(), v.err());
        prop_assert_eq!(v.map(|v| v.len()).unwrap_or(usize::MAX), elems);
    }

    #[test]
    fn other_lengths_are_errors(
        (t, mut bytes) in any_type_and_blocks(),
        extra in 1usize..300,
        elem_delta in 1usize..255,
    ) {
        let (block_elems, block_bytes) = block(t);
        let elems = bytes.len() / block_bytes * block_elems;
        // Bytes that are not the elements' size: too many, or (where there are blocks to cut
        // into) too few.
        let short = bytes.len() >= extra;
        bytes.extend(std::iter::repeat_n(0xa5, extra));
        prop_assert!(dequantize(t, &bytes, elems).is_err());
        if short {
            prop_assert!(dequantize(t, &bytes[..bytes.len() - 2 * extra], elems).is_err());
        }
        // An element count that is not whole blocks.
        if elem_delta % block_elems != 0 {
            let e = dequantize(t, &bytes, elems + elem_delta);
            prop_assert!(matches!(e, Err(QuantError::PartialBlock { .. })), "{:?}", e);
        }
    }
}
