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

#![warn(missing_docs)]

pub mod bench;
mod dtype;
mod error;
mod fusion;
mod gpu;
pub mod ops;
pub mod optim;
pub mod plan;
mod profiler;
pub mod shaders;
mod tensor;

pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use gpu::{Gpu, GpuInfo, GpuOptions, MemoryStats, Stats};
pub use profiler::{KernelTime, Profiler, Report};
pub use tensor::Tensor;

// Re-exported so users can name the element types without depending on `half` themselves.
pub use half::{bf16, f16};
// The wgpu version the crate is built on, for `gpu.has(wgpu::Features::...)` and interop.
pub use wgpu;
