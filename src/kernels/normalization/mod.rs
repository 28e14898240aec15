//! Statistical normalizations and reductions: softmax / log-softmax and cross-entropy,
//! LayerNorm and RMSNorm (forward and backward), row sums.

pub mod norm;
pub mod reduce;

use crate::device::{Kernel, ShaderSource};

/// This class's WGSL files.
pub(crate) fn shaders() -> Vec<&'static ShaderSource> {
    vec![&norm::SOFTMAX, &norm::NORM, &reduce::REDUCE, &reduce::COLUMN_SUM]
}

/// Every kernel this class can build.
pub(crate) fn all_kernels() -> Vec<Kernel> {
    let mut all = norm::all_kernels();
    all.extend(reduce::all_kernels());
    all
}
