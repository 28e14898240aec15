//! # wgkernels
//!
//! Portable GPU kernels for the work that dominates transformers, on WebGPU (wgpu):
//! tensor contractions, statistical normalizations and element-wise ops, running on
//! Vulkan, Metal, DX12 and GL.
//!
//! ```no_run
//! use wgkernels::{DType, Gpu, Tensor};
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = Gpu::new()?;                       // best adapter; WGK_BACKEND / WGK_ADAPTER override
//! println!("{}", gpu.info());
//! let x = Tensor::randn(&gpu, &[4, 3], DType::F32, 42)?;
//! let b = Tensor::from_slice(&gpu, &[1.0f32, 2.0, 3.0], &[3])?;
//! let y = (&x + &b)?.relu()?;                  // pending: no dispatch yet
//! println!("{}", y.is_pending());              // true
//! let s = y.sum(-1)?;                          // add + relu run as one fused kernel, then the sum
//! println!("{:?}", s.to_vec::<f32>()?);
//! # Ok(()) }
//! ```

//!
//! # Zero-size tensors
//!
//! One rule, PyTorch's: a shape may have zero-length dims, and every op whose result is
//! defined returns it without dispatching a kernel (beyond a fill). Element-wise ops, views,
//! copies and row-wise ops (softmax, norms and their backward) give empty results of the
//! right shape; sums over nothing are 0 (`sum` over an empty dim, a matmul with K = 0 —
//! then the bias through the activation —, a norm's weight and bias gradients over no
//! rows); attention over no keys gives 0 with a log-sum-exp of −∞. Two things are an
//! `Err(Empty)` naming the op: cross-entropy over no rows (a mean over nothing) and an
//! optimizer step over a parameter with no elements.

#![warn(missing_docs)]

// The layers, each importing only those listed before it (README, "Layout"):
pub mod autograd;
pub mod bench;
mod device;
mod dtype;
mod error;
pub mod kernels;
pub mod nn;
pub mod optim;
pub mod parallel;
pub mod plan;
mod tensor;
pub mod tune;

pub use device::{Gpu, GpuInfo, GpuOptions, KernelTime, MatmulPrecision, MemoryStats, Profiler, Report, Stats};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use tensor::Tensor;

/// The kernel families under the names a PyTorch user looks for: `ops::matmul`,
/// `ops::attention`, `ops::norm` (softmax, layer/RMS norm, cross-entropy), `ops::reduce`,
/// `ops::elementwise`, `ops::transpose`.
pub mod ops {
    pub use crate::kernels::contraction::{attention, matmul};
    pub use crate::kernels::elementwise::{self, transpose};
    pub use crate::kernels::normalization::{norm, reduce};
}

/// What the device compiles: [`Kernel`](shaders::Kernel)s (one entry point of one
/// [`ShaderSource`](shaders::ShaderSource), specialised), and every kernel the library can
/// build, for the portability test.
pub mod shaders {
    pub use crate::device::{Kernel, ParamsLayout, ShaderSource, F16_PROBE};

    /// Every WGSL file the library compiles, each once.
    ///
    /// ```
    /// for s in wgkernels::shaders::all_shaders() { assert!(s.source.len() > 100, "{}", s.name); }
    /// ```
    pub fn all_shaders() -> Vec<&'static ShaderSource> {
        let mut all = vec![&crate::device::F16_PROBE, &crate::optim::OPTIM];
        all.extend(crate::kernels::shaders());
        all
    }

    /// Every specialisation the library can build, for the portability test: each layer
    /// and family contributes the kernels it can launch.
    pub fn all_kernels() -> Vec<Kernel> {
        let mut all = crate::kernels::all_kernels();
        all.extend(crate::optim::all_kernels());
        all.push(crate::device::f16_probe_kernel());
        all
    }

    /// The layout of every kernel params struct, each mirrored by a WGSL struct of the same
    /// name and fields (checked by the portability test).
    #[doc(hidden)]
    pub fn all_params() -> Vec<ParamsLayout> {
        let mut all = crate::kernels::all_params();
        all.extend(crate::optim::params_layouts());
        all
    }
}

// Re-exported so users can name the element types without depending on `half` themselves.
pub use half::{bf16, f16};
// The wgpu version the crate is built on, for `gpu.has(wgpu::Features::...)` and interop.
pub use wgpu;
