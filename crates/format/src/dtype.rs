//! Element types of both formats and the byte length they give a shape.

use serde::{Serialize, Serializer};

/// A tensor's element type: a safetensors dtype, or a ggml type from a GGUF file.
///
/// Serializes as its [`DType::name`] (`"BF16"`, `"F8_E4M3"`, `"Q4_0"`), the name a user sees in
/// the table and in the file formats' own tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// Boolean, one byte per element.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits.
    F8E4M3,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits.
    F8E5M2,
    /// 8-bit exponent-only scale (microscaling formats).
    F8E8M0,
    /// 6-bit float (2 exponent, 3 mantissa), packed.
    F6E2M3,
    /// 6-bit float (3 exponent, 2 mantissa), packed.
    F6E3M2,
    /// 4-bit float, packed two to a byte.
    F4,
    /// Complex of two f32.
    C64,
    /// A ggml type from a GGUF file (plain or block-quantized).
    Ggml(GgmlType),
}

impl DType {
    /// Parses a safetensors dtype string (`"BF16"`, `"F8_E4M3"`, …).
    pub fn from_safetensors(s: &str) -> Option<DType> {
        Some(match s {
            "BOOL" => DType::Bool,
            "U8" => DType::U8,
            "I8" => DType::I8,
            "U16" => DType::U16,
            "I16" => DType::I16,
            "U32" => DType::U32,
            "I32" => DType::I32,
            "U64" => DType::U64,
            "I64" => DType::I64,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F32" => DType::F32,
            "F64" => DType::F64,
            "F8_E4M3" => DType::F8E4M3,
            "F8_E5M2" => DType::F8E5M2,
            "F8_E8M0" => DType::F8E8M0,
            "F6_E2M3" => DType::F6E2M3,
            "F6_E3M2" => DType::F6E3M2,
            "F4" => DType::F4,
            "C64" => DType::C64,
            _ => return None,
        })
    }

    /// The name a user sees: the safetensors spelling, or the ggml type name.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E8M0 => "F8_E8M0",
            DType::F6E2M3 => "F6_E2M3",
            DType::F6E3M2 => "F6_E3M2",
            DType::F4 => "F4",
            DType::C64 => "C64",
            DType::Ggml(g) => g.name(),
        }
    }

    /// Bits per element for the plain (non-block) types; `None` for block-quantized ggml types.
    pub fn bits(self) -> Option<u64> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 8,
            DType::F8E4M3 | DType::F8E5M2 | DType::F8E8M0 => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::U32 | DType::I32 | DType::F32 => 32,
            DType::U64 | DType::I64 | DType::F64 | DType::C64 => 64,
            DType::F6E2M3 | DType::F6E3M2 => 6,
            DType::F4 => 4,
            DType::Ggml(g) => {
                let (block_elems, block_bytes) = g.block()?;
                if block_elems != 1 {
                    return None;
                }
                block_bytes * 8
            }
        })
    }

    /// Bytes that `elems` elements take, or `None` when the count overflows, is not a whole
    /// number of blocks (quantized types) or of bytes (sub-byte types), or the ggml type is
    /// unknown.
    pub fn byte_len(self, elems: u64) -> Option<u64> {
        if let DType::Ggml(g) = self {
            let (block_elems, block_bytes) = g.block()?;
            if !elems.is_multiple_of(block_elems) {
                return None;
            }
            return (elems / block_elems).checked_mul(block_bytes);
        }
        let bits = elems.checked_mul(self.bits()?)?;
        (bits % 8 == 0).then_some(bits / 8)
    }
}

/// Number of elements of a tensor with dimensions `dims` (1 for a scalar), or `None` when the
/// product overflows 64 bits: a lying header must not wrap into a small, plausible size.
pub fn element_count(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

impl Serialize for DType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A ggml tensor type by its numeric id, as stored in GGUF tensor infos.
///
/// Kept as the raw id so that a file with a type newer than this table still parses; only
/// tensors of that type are refused (their size cannot be computed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct GgmlType(pub u32);

/// (id, name, elements per block, bytes per block) for every ggml type whose size is known,
/// including types ggml has since removed (their files still exist).
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (31, "Q4_0_4_4", 32, 18),
    (32, "Q4_0_4_8", 32, 18),
    (33, "Q4_0_8_8", 32, 18),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (36, "IQ4_NL_4_4", 32, 18),
    (37, "IQ4_NL_4_8", 32, 18),
    (38, "IQ4_NL_8_8", 32, 18),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// ggml's `GGML_TYPE_F32`.
    pub const F32: GgmlType = GgmlType(0);
    /// ggml's `GGML_TYPE_F16`.
    pub const F16: GgmlType = GgmlType(1);
    /// ggml's `GGML_TYPE_Q4_0`.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// ggml's `GGML_TYPE_Q4_1`.
    pub const Q4_1: GgmlType = GgmlType(3);
    /// ggml's `GGML_TYPE_Q5_0`.
    pub const Q5_0: GgmlType = GgmlType(6);
    /// ggml's `GGML_TYPE_Q5_1`.
    pub const Q5_1: GgmlType = GgmlType(7);
    /// ggml's `GGML_TYPE_Q8_0`.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// ggml's `GGML_TYPE_Q2_K`.
    pub const Q2_K: GgmlType = GgmlType(10);
    /// ggml's `GGML_TYPE_Q3_K`.
    pub const Q3_K: GgmlType = GgmlType(11);
    /// ggml's `GGML_TYPE_Q4_K`.
    pub const Q4_K: GgmlType = GgmlType(12);
    /// ggml's `GGML_TYPE_Q5_K`.
    pub const Q5_K: GgmlType = GgmlType(13);
    /// ggml's `GGML_TYPE_Q6_K`.
    pub const Q6_K: GgmlType = GgmlType(14);
    /// ggml's `GGML_TYPE_IQ4_NL`.
    pub const IQ4_NL: GgmlType = GgmlType(20);
    /// ggml's `GGML_TYPE_IQ4_XS`.
    pub const IQ4_XS: GgmlType = GgmlType(23);
    /// ggml's `GGML_TYPE_BF16`.
    pub const BF16: GgmlType = GgmlType(30);

    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        GGML_TYPES.iter().find(|e| e.0 == self.0)
    }

    /// `(elements per block, bytes per block)`, or `None` for an unknown id.
    pub fn block(self) -> Option<(u64, u64)> {
        self.entry().map(|e| (e.2, e.3))
    }

    /// ggml's name for the type (`"Q4_K"`), or `"unknown"`.
    pub fn name(self) -> &'static str {
        self.entry().map_or("unknown", |e| e.1)
    }

    /// Looks a type up by ggml's name (`"Q8_0"`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GGML_TYPES
            .iter()
            .find(|e| e.1 == name)
            .map(|e| GgmlType(e.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_names_round_trip() {
        for s in [
            "BOOL", "U8", "BF16", "F8_E4M3", "F6_E2M3", "F4", "C64", "F64",
        ] {
            let d = DType::from_safetensors(s).unwrap();
            assert_eq!(d.name(), s);
        }
        assert_eq!(DType::from_safetensors("F17"), None);
    }

    #[test]
    fn byte_lengths() {
        assert_eq!(DType::BF16.byte_len(10), Some(20));
        assert_eq!(DType::F4.byte_len(3), None, "half a byte is not a length");
        assert_eq!(DType::F4.byte_len(4), Some(2));
        assert_eq!(DType::F6E3M2.byte_len(4), Some(3));
        assert_eq!(DType::F64.byte_len(u64::MAX), None);
        assert_eq!(DType::Ggml(GgmlType::Q4_0).byte_len(64), Some(36));
        assert_eq!(DType::Ggml(GgmlType::Q4_0).byte_len(33), None);
        assert_eq!(
            DType::Ggml(GgmlType::from_name("Q6_K").unwrap()).byte_len(512),
            Some(420)
        );
        assert_eq!(DType::Ggml(GgmlType(9999)).byte_len(32), None);
        assert_eq!(DType::Ggml(GgmlType::BF16).bits(), Some(16));
    }

    #[test]
    fn serializes_as_the_name_users_see() {
        let json = |d: DType| serde_json::to_value(d).unwrap();
        assert_eq!(json(DType::Ggml(GgmlType::Q4_0)), "Q4_0");
        assert_eq!(json(DType::Ggml(GgmlType::F32)), "F32");
        assert_eq!(json(DType::F8E4M3), "F8_E4M3");
        assert_eq!(json(DType::BF16), "BF16");
    }

    #[test]
    fn ggml_ids_are_unique() {
        for (i, a) in GGML_TYPES.iter().enumerate() {
            for b in &GGML_TYPES[i + 1..] {
                assert_ne!(a.0, b.0);
                assert_ne!(a.1, b.1);
            }
        }
    }

    #[test]
    fn named_constants_are_the_tables_types() {
        let named = [
            (GgmlType::F32, "F32"),
            (GgmlType::F16, "F16"),
            (GgmlType::Q4_0, "Q4_0"),
            (GgmlType::Q4_1, "Q4_1"),
            (GgmlType::Q5_0, "Q5_0"),
            (GgmlType::Q5_1, "Q5_1"),
            (GgmlType::Q8_0, "Q8_0"),
            (GgmlType::Q2_K, "Q2_K"),
            (GgmlType::Q3_K, "Q3_K"),
            (GgmlType::Q4_K, "Q4_K"),
            (GgmlType::Q5_K, "Q5_K"),
            (GgmlType::Q6_K, "Q6_K"),
            (GgmlType::IQ4_NL, "IQ4_NL"),
            (GgmlType::IQ4_XS, "IQ4_XS"),
            (GgmlType::BF16, "BF16"),
        ];
        for (ty, name) in named {
            assert_eq!(GgmlType::from_name(name), Some(ty), "{name}");
        }
    }
}
