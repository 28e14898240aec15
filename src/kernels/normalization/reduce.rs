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

/// Sums over a dim other than the last, without a transposed copy.
pub const COLUMN_SUM: ShaderSource =
    ShaderSource { name: "column_sum", source: include_str!("column_sum.wgsl"), shared: "" };

/// The column sums' two entries for `dtype` (x's, and the output's).
fn column_kernel(entry: &'static str, dtype: DType) -> Kernel {
    let store = match dtype {
        DType::F32 => "out[p] = bitcast<u32>(lo);",
        DType::F16 => "out[p] = pack_f16x2(vec2<f32>(lo, hi));",
        DType::BF16 => "out[p] = f32_to_bf16_bits(lo) | (f32_to_bf16_bits(hi) << 16u);",
    };
    Kernel::new(&COLUMN_SUM, entry)
        .sub("LOAD_X", wgsl_load("x", dtype))
        .sub("STORE", store)
        .sub("PAIRS", (dtype != DType::F32).to_string())
        .sub("FINISH_COLUMNS", FINISH_COLUMNS.to_string())
        .trusted()
}

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
    DType::ALL
        .into_iter()
        .flat_map(|d| {
            [kernel(d, false), kernel(d, true), column_kernel("column_partials", d), column_kernel("column_finish", d)]
        })
        .collect()
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
        if d != last && self.is_contiguous() {
            if let Some(out) = sum_columns(self, d)? {
                return Ok(out);
            }
        }
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

/// Workgroups the column sums aim for (pass 1): enough to fill a large GPU when the output
/// is a few hundred columns wide.
const COLUMN_WORKGROUPS: usize = 1024;

/// Output elements a workgroup of column_finish adds up, each in 256 / FINISH_COLUMNS
/// phases (substituted into column_sum.wgsl; even, so that a 16-bit word's pair stays in one
/// workgroup, and a divisor of 256).
const FINISH_COLUMNS: usize = 32;

/// The sum of contiguous `x` over dim `d` (not the last) in two passes over its layout
/// (column_sum.wgsl), stored in x's dtype; None where the grid would exceed the adapter's
/// limits (the caller then sums a transposed copy).
fn sum_columns(x: &Tensor, d: usize) -> Result<Option<Tensor>> {
    let shape = x.shape();
    let outer: usize = shape[..d].iter().product();
    let k = shape[d];
    let inner: usize = shape[d + 1..].iter().product();
    let gpu = x.gpu();
    let max = gpu.info().limits.max_compute_workgroups_per_dimension as usize;
    let tiles = outer * inner.div_ceil(256);
    // Chunks of at least 32 rows, as many as bring the grid to about COLUMN_WORKGROUPS.
    let chunks = (COLUMN_WORKGROUPS / tiles.max(1)).clamp(1, k.div_ceil(32).max(1));
    let chunk_rows = k.div_ceil(chunks);
    let chunks = k.div_ceil(chunk_rows);
    if inner.div_ceil(256) > max || chunks > max || outer > max {
        return Ok(None);
    }
    let mut out_shape = shape.to_vec();
    out_shape.remove(d);
    let partials = Tensor::empty(gpu, "sum", &[outer * chunks * inner], DType::F32)?;
    let out = Tensor::empty(gpu, "sum", &out_shape, x.dtype())?;
    let params = gpu.params_buffer(&ColumnSumParams {
        outer: outer as u32,
        k: k as u32,
        inner: inner as u32,
        x_off: x.offset() as u32,
        chunks: chunks as u32,
        chunk_rows: chunk_rows as u32,
    });
    // Unchecked is safe: pass 1's invocation (i < inner, chunk c < chunks, o < outer) reads
    // x_off + (o·K + r)·inner + i with r < K — inside the contiguous view — and writes
    // partials[(o·chunks + c)·inner + i] < outer·chunks·inner, their size. Pass 2's
    // workgroup w reads those partials for elements t = 32w + j < outer·inner (chunks c <
    // chunks), its workgroup array at lane indices < 256, and writes word p of out: element
    // p = t (f32) or the pair 2p, 2p + 1 with 2p < outer·inner (16-bit), inside out's words.
    let x_buf = x.storage()?.buffer();
    let (p_buf, out_buf) = (partials.storage()?.buffer(), out.storage()?.buffer());
    gpu.dispatch_3d(
        &column_kernel("column_partials", x.dtype()),
        &[(0, x_buf), (1, p_buf), (2, &params)],
        [inner.div_ceil(256) as u32, chunks as u32, outer as u32],
    )?;
    gpu.dispatch(
        &column_kernel("column_finish", x.dtype()),
        &[(1, p_buf), (2, &params), (3, out_buf)],
        (outer * inner).div_ceil(FINISH_COLUMNS) as u32,
    )?;
    Ok(Some(out))
}

/// The column sums' params, mirrored by `struct ColumnSumParams` in column_sum.wgsl: x as
/// [outer, K, inner] from x_off, K cut into `chunks` of `chunk_rows` rows (the last shorter).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ColumnSumParams {
    outer: u32,
    k: u32,
    inner: u32,
    x_off: u32,
    chunks: u32,
    chunk_rows: u32,
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
    vec![
        crate::device::params_layout!(ReduceParams { rows, cols, x_off }),
        crate::device::params_layout!(ColumnSumParams { outer, k, inner, x_off, chunks, chunk_rows }),
    ]
}
