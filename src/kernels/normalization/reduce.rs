//! Reductions: sum over one dim, accumulated in f32.
//!
//! ```
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = wgkernels::Gpu::new()?;
//! let x = wgkernels::Tensor::from_slice(&gpu, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
//! assert_eq!(x.sum(-1)?.to_vec::<f32>()?, [6.0, 15.0]);
//! assert_eq!(x.sum(0)?.to_vec::<f32>()?, [5.0, 7.0, 9.0]);
//! # Ok(()) }
//! ```

use crate::device::{Kernel, ShaderSource};
use crate::error::Result;
use crate::kernels::wgsl_load;
use crate::tensor::{resolve_dim, Tensor};
use crate::DType;

/// Row reductions.
pub const REDUCE: ShaderSource = ShaderSource { name: "reduce", source: include_str!("reduce.wgsl"), shared: "" };

/// `sum_rows` for `dtype`, reducing by subgroup operations where the device has them.
fn kernel(dtype: DType, subgroup: bool) -> Kernel {
    let k = Kernel::new(&REDUCE, "sum_rows").sub("LOAD_X", wgsl_load("x", dtype)).trusted();
    if subgroup {
        k.flag("SUBGROUP")
            .sub(
                "SG_ARGS",
                "@builtin(subgroup_id) sg_id: u32,\n    @builtin(subgroup_invocation_id) sg_lane: u32,\n    \
                 @builtin(num_subgroups) sg_count: u32,",
            )
            .sub("SG_VALUES", "sg_id, sg_lane, sg_count")
    } else {
        k.sub("SG_ARGS", "").sub("SG_VALUES", "0u, 0u, 0u")
    }
}

/// Every specialisation `sum` can launch.
pub fn all_kernels() -> Vec<Kernel> {
    DType::ALL.into_iter().flat_map(|d| [kernel(d, false), kernel(d, true)]).collect()
}

impl Tensor {
    /// Sum over `dim` (negative counts from the end), which is removed from the shape.
    /// Accumulates in f32; the result has the input's dtype. The last dim is reduced in
    /// place; another dim is first moved last with a copy.
    ///
    /// Errors: `AxisOutOfRange` for a bad `dim`, `Empty` when the tensor has no elements.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert_eq!(x.sum(0)?.shape(), &[8]);
    /// # Ok(()) }
    /// ```
    pub fn sum(&self, dim: isize) -> Result<Tensor> {
        let d = resolve_dim("sum", dim, self.shape())?;
        if self.numel() == 0 {
            // The sum of nothing is 0: zeros where the summed dim is empty, an empty result
            // where another dim is; nothing dispatched beyond the clear.
            let mut out_shape = self.shape().to_vec();
            out_shape.remove(d);
            return Tensor::zeros(self.gpu(), &out_shape, DType::F32);
        }
        let last = self.rank() - 1;
        let x = if d == last && self.is_contiguous() {
            self.clone()
        } else {
            // Move `d` last, keeping the other dims in order: they are the output's dims.
            let order: Vec<usize> = (0..self.rank()).filter(|&k| k != d).chain([d]).collect();
            self.permute(&order)?.contiguous()?
        };
        let cols = x.shape()[last];
        let rows = x.numel() / cols;
        let mut out_shape = self.shape().to_vec();
        out_shape.remove(d);
        let out = Tensor::empty(self.gpu(), "sum", &out_shape, DType::F32)?;
        // Unchecked is safe: workgroup `row < rows` reads elements offset + row·cols + j
        // with j < cols, all inside the contiguous view, and writes out[row] < rows words.
        let meta =
            self.gpu().params_buffer(&ReduceParams { rows: rows as u32, cols: cols as u32, x_off: x.offset() as u32 });
        self.gpu().dispatch(
            &kernel(x.dtype(), self.gpu().has(wgpu::Features::SUBGROUP)),
            &[(0, x.storage()?.buffer()), (1, out.storage()?.buffer()), (2, &meta)],
            rows as u32,
        )?;
        out.to_dtype(self.dtype())
    }
}

/// The row-sum kernel's params, mirrored by `struct ReduceParams` in reduce.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ReduceParams {
    rows: u32,
    cols: u32,
    /// x's first element.
    x_off: u32,
}

/// The layouts of this family's params structs, for the test of their WGSL mirrors.
pub(crate) fn params_layouts() -> Vec<crate::device::ParamsLayout> {
    vec![crate::device::params_layout!(ReduceParams { rows, cols, x_off })]
}
