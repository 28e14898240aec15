//! The kernels, by the three op classes of a transformer. Each family is a launcher module
//! (host-side validation, then dispatches) with its WGSL files beside it, and lists the
//! kernels it can build for the portability test.
//!
//! - [`contraction`]: matmul (tiled, thin, tensor-core) and attention (flash, tensor-core);
//! - [`normalization`]: softmax and cross-entropy, LayerNorm and RMSNorm, row reductions;
//! - [`elementwise`]: the op table, eager launches, the fusion JIT (which also runs chains
//!   in norm prologues and matmul epilogues) and transposed copies.
//!
//! Families import downwards only: contraction may use normalization and elementwise (the
//! fused epilogue), normalization may use elementwise (the fused prologue), elementwise
//! uses neither.

pub mod contraction;
pub mod elementwise;
pub mod normalization;

use crate::device::{Kernel, ShaderSource};
use crate::DType;

/// WGSL body of a loader `fn load_X(e: u32) -> f32` reading element `e` of buffer `buf`
/// (declared `array<u32>`) of `dtype`. 16-bit dtypes sit two per word, low half first.
pub(crate) fn wgsl_load(buf: &str, dtype: DType) -> String {
    match dtype {
        DType::F32 => format!("return bitcast<f32>({buf}[e]);"),
        // The wanted half shifted into the low one, then one conversion: with a runtime
        // index into the unpacked pair (`[e & 1u]`) GPT-2's f16 step spent 73.5 ms in its
        // tensor-core matmuls on the H200 instead of 45.5 (operands staged element by element).
        DType::F16 => {
            format!("let w = {buf}[e >> 1u];\n    return unpack2x16float(select(w, w >> 16u, (e & 1u) == 1u)).x;")
        }
        DType::BF16 => format!("return bf16_bits_to_f32({buf}[e >> 1u], e);"),
    }
}

/// Every WGSL file of the kernel families (the crate's registry, `shaders::all_shaders`,
/// adds the device's and the optimizers').
pub(crate) fn shaders() -> Vec<&'static ShaderSource> {
    let mut all = contraction::shaders();
    all.extend(normalization::shaders());
    all.extend(elementwise::shaders());
    all
}

/// Every kernel the families can build (see `shaders::all_kernels`).
pub(crate) fn all_kernels() -> Vec<Kernel> {
    let mut all = elementwise::all_kernels();
    all.extend(normalization::all_kernels());
    all.extend(contraction::all_kernels());
    all
}

/// The families' params layouts (see `shaders::all_params`).
pub(crate) fn all_params() -> Vec<crate::device::ParamsLayout> {
    let mut all = contraction::matmul::params_layouts();
    all.extend(contraction::attention::params_layouts());
    all.extend(normalization::norm::params_layouts());
    all.extend(normalization::reduce::params_layouts());
    all.extend(elementwise::transpose::params_layouts());
    all.extend(elementwise::fusion::params_layouts());
    all.extend(elementwise::gather::params_layouts());
    all
}
