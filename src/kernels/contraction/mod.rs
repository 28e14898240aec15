//! Tensor contractions: matmul and attention, on FMA units and on tensor cores
//! (cooperative matrices).

pub mod attention;
pub mod matmul;

use crate::device::{Kernel, ShaderSource};

/// This class's WGSL files.
pub(crate) fn shaders() -> Vec<&'static ShaderSource> {
    vec![
        &matmul::MATMUL,
        &matmul::MATMUL_COOP,
        &matmul::MATMUL_RANGE,
        &attention::ATTENTION,
        &attention::ATTENTION_BWD,
        &attention::ATTENTION_COOP,
        &attention::ATTENTION_COOP_BWD,
        &attention::ATTENTION_RANGE,
        &attention::ATTENTION_PACK,
        &attention::ATTENTION_DELTA,
    ]
}

/// Every kernel this class can build.
pub(crate) fn all_kernels() -> Vec<Kernel> {
    let mut all = matmul::all_kernels();
    all.extend(attention::all_kernels());
    all
}
