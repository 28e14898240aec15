//! Element types. 16-bit types are stored packed, two per 32-bit word, and computed in f32.

use half::{bf16, f16};

/// The element type of a tensor.
///
/// ```
/// use wgkernels::DType;
/// assert_eq!(DType::BF16.size_in_bytes(), 2);
/// assert_eq!(DType::F32.name(), "f32");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16; stored as 16 bits, computed in f32 by the element-wise kernels.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa); stored as 16 bits, computed in f32.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Short lowercase name, as used in shader keys and reports.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// All dtypes, for tests and benches that sweep them.
    ///
    /// ```
    /// for d in wgkernels::DType::ALL { println!("{}", d.name()); }
    /// ```
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
}

/// A host element type that maps to a [`DType`]: `f32`, `half::f16`, `half::bf16`.
///
/// ```
/// use wgkernels::{DType, Element};
/// assert_eq!(<wgkernels::bf16 as Element>::DTYPE, DType::BF16);
/// ```
pub trait Element: bytemuck::Pod + Copy + Send + Sync + 'static {
    /// The tensor dtype this host type stores as.
    const DTYPE: DType;
    /// Converts to f32 (exact for every supported type).
    fn to_f32(self) -> f32;
    /// Converts from f32 with round-to-nearest-even.
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Encodes f32 values as the bytes of `dtype` (round-to-nearest-even for 16-bit types).
pub(crate) fn encode_f32(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        DType::BF16 => values.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
    }
}

/// Decodes bytes of `dtype` into f32 values.
pub(crate) fn decode_f32(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    }
}
