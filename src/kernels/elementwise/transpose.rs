//! Transposed copies through workgroup-memory tiles (shaders/transpose.wgsl): what
//! [`Tensor::contiguous`] runs for a view whose last two dims are swapped.
//!
//! ```
//! # use wgkernels::{DType, Gpu, Tensor};
//! # fn main() -> wgkernels::Result<()> {
//! # let gpu = Gpu::new()?;
//! let x = Tensor::randn(&gpu, &[3, 64, 48], DType::F32, 0)?;
//! let xt = x.transpose(1, 2)?.contiguous()?; // [3, 48, 64], one tiled kernel
//! # Ok(()) }
//! ```

use crate::device::{Kernel, ShaderSource};
use crate::error::Result;
use crate::kernels::wgsl_load;
use crate::tensor::Tensor;
use crate::DType;

/// Transposed copies through workgroup-memory tiles.
pub const TRANSPOSE: ShaderSource =
    ShaderSource { name: "transpose", source: include_str!("transpose.wgsl"), shared: "" };

fn kernel(dtype: DType) -> Kernel {
    let store = match dtype {
        DType::F32 => "out[e] = bitcast<u32>(lo);",
        DType::F16 => "out[e >> 1u] = pack_f16x2(vec2<f32>(lo, hi));",
        DType::BF16 => "out[e >> 1u] = f32_to_bf16_bits(lo) | (f32_to_bf16_bits(hi) << 16u);",
    };
    Kernel::new(&TRANSPOSE, "transpose")
        .sub("LOAD_X", wgsl_load("x", dtype))
        .sub("STORE", store)
        .sub("PAIRS", (dtype != DType::F32).to_string())
        .trusted()
}

/// Every specialisation, for the portability test.
pub(crate) fn all_kernels() -> Vec<Kernel> {
    DType::ALL.into_iter().map(kernel).collect()
}

/// The tiled copy of `x` when it is a (batched) transpose: shape [B, R, C] (B may be absent,
/// any stride) with strides [·, 1, L], L ≥ R — a row-major [C, L] matrix with its dims
/// swapped, perhaps narrowed to R of its L columns (a tied embedding's rows of an output
/// projection's gradient) — and, for 16-bit data, C even (whole words per output pair).
/// None otherwise.
pub(crate) fn try_copy(x: &Tensor) -> Result<Option<Tensor>> {
    let (shape, strides) = (x.shape(), x.strides());
    let rank = shape.len();
    if rank < 2 || x.is_pending() || x.numel() == 0 {
        return Ok(None);
    }
    let (r, c) = (shape[rank - 2], shape[rank - 1]);
    let lead_stride = strides[rank - 1];
    if r < 2 || c < 2 || strides[rank - 2] != 1 || lead_stride < r {
        return Ok(None);
    }
    // At most one leading dim of size > 1 (the batch), at any stride.
    let lead: Vec<(usize, usize)> = (0..rank - 2).filter(|&d| shape[d] > 1).map(|d| (shape[d], strides[d])).collect();
    let (batches, batch_stride) = match lead.as_slice() {
        [] => (1, 0),
        [(n, s)] => (*n, *s),
        _ => return Ok(None),
    };
    if x.dtype() != DType::F32 && c % 2 == 1 {
        return Ok(None);
    }
    let gpu = x.gpu();
    let limit = gpu.info().limits.max_compute_workgroups_per_dimension as usize;
    let grid = [c.div_ceil(32), r.div_ceil(32), batches];
    if grid.iter().any(|&g| g > limit) {
        return Ok(None);
    }
    let out = Tensor::empty(gpu, "contiguous", shape, x.dtype())?;
    let params = gpu.params_buffer(&TransposeParams {
        rows: r as u32,
        cols: c as u32,
        x_off: x.offset() as u32,
        x_batch_stride: batch_stride as u32,
        x_col_stride: lead_stride as u32,
    });
    // Unchecked is safe: reads of (b, r, c) with r < R, c < C are elements
    // offset + b·batch_stride + c·L + r of the view; writes b·R·C + r·C + c (and c + 1 < C,
    // C even, for 16-bit pairs) are below B·R·C, the fresh output's size.
    gpu.dispatch_3d(
        &kernel(x.dtype()),
        &[(0, x.storage()?.buffer()), (1, out.storage()?.buffer()), (2, &params)],
        [grid[0] as u32, grid[1] as u32, grid[2] as u32],
    )?;
    Ok(Some(out))
}

/// The transposed copy's params, mirrored by `struct TransposeParams` in transpose.wgsl: the
/// copied view is [batches, R, C] read column by column.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct TransposeParams {
    rows: u32,
    cols: u32,
    x_off: u32,
    x_batch_stride: u32,
    /// L: elements from one column of the view to the next (its rows' stride in x).
    x_col_stride: u32,
}

/// The layouts of this family's params structs, for the test of their WGSL mirrors.
pub(crate) fn params_layouts() -> Vec<crate::device::ParamsLayout> {
    vec![crate::device::params_layout!(TransposeParams { rows, cols, x_off, x_batch_stride, x_col_stride })]
}
