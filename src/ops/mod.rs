//! Kernel launchers: host-side validation, then one dispatch each.

pub mod attention;
pub mod autotune;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod transpose;

use crate::DType;

/// WGSL body of a loader `fn load_X(e: u32) -> f32` reading element `e` of buffer `buf`
/// (declared `array<u32>`) of `dtype`. 16-bit dtypes sit two per word, low half first.
pub(crate) fn wgsl_load(buf: &str, dtype: DType) -> String {
    match dtype {
        DType::F32 => format!("return bitcast<f32>({buf}[e]);"),
        DType::F16 => format!("return unpack2x16float({buf}[e >> 1u])[e & 1u];"),
        DType::BF16 => format!("return bf16_bits_to_f32({buf}[e >> 1u], e);"),
    }
}
