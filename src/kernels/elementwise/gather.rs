//! Row gather and its backward (gather.wgsl): [`Tensor::index_select`], the embedding
//! lookup `table[ids]`, and [`Tensor::index_add_rows`], the scatter-add its gradient needs.
//!
//! ```
//! # use wgkernels::{DType, Gpu, Tensor};
//! # fn main() -> wgkernels::Result<()> {
//! # let gpu = Gpu::new()?;
//! let table = Tensor::randn(&gpu, &[100, 16], DType::F32, 0)?; // [vocab, d]
//! let x = table.index_select(&[5, 7, 5])?;                     // [3, 16]
//! let dtable = Tensor::index_add_rows(&x, &[5, 7, 5], 100)?;   // [100, 16]: rows 5 (twice), 7
//! # Ok(()) }
//! ```

use crate::device::{Kernel, ShaderSource};
use crate::error::{Error, Result};
use crate::kernels::wgsl_load;
use crate::tensor::Tensor;
use crate::DType;

/// Row gather and the per-row-list scatter-add.
pub const GATHER: ShaderSource = ShaderSource { name: "gather", source: include_str!("gather.wgsl"), shared: "" };

const WORKGROUP: usize = 256;

/// The gather's params, mirrored by `struct GatherParams` in gather.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GatherParams {
    /// Output rows (ids).
    rows: u32,
    /// 32-bit words per row.
    row_words: u32,
    /// The table's first word.
    table_off_words: u32,
}

/// The scatter-add's params, mirrored by `struct ScatterParams` in gather.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ScatterParams {
    /// Rows of the gradient table.
    table_rows: u32,
    /// Elements per row.
    cols: u32,
    /// dy's first element.
    dy_off: u32,
    /// base's first element (flag BASE).
    base_off: u32,
}

/// The gather (words, whatever the dtype; the file's scatter placeholders filled as f32).
fn gather_kernel() -> Kernel {
    let mut k = scatter_kernel(DType::F32, false);
    k.entry = "gather";
    k
}

/// The scatter-add storing `dtype` (dy's and, with `base`, base's), a word an invocation.
fn scatter_kernel(dtype: DType, base: bool) -> Kernel {
    let store = match dtype {
        DType::F32 => "out[w] = bitcast<u32>(lo);",
        DType::F16 => "out[w] = pack_f16x2(vec2<f32>(lo, hi));",
        DType::BF16 => "out[w] = f32_to_bf16_bits(lo) | (f32_to_bf16_bits(hi) << 16u);",
    };
    let k = Kernel::new(&GATHER, "scatter_add")
        .sub("LOAD_DY", wgsl_load("src", dtype))
        .sub("LOAD_BASE", wgsl_load("base", dtype))
        .sub("STORE", store)
        .trusted();
    let k = if dtype == DType::F32 { k } else { k.flag("PAIRS") };
    if base {
        k.flag("BASE")
    } else {
        k
    }
}

/// Every specialisation, for the portability test.
pub(crate) fn all_kernels() -> Vec<Kernel> {
    let mut all = vec![gather_kernel()];
    for base in [false, true] {
        all.extend(DType::ALL.into_iter().map(|d| scatter_kernel(d, base)));
    }
    all
}

/// The layouts of the params structs, for the test of their WGSL mirrors.
pub(crate) fn params_layouts() -> Vec<crate::device::ParamsLayout> {
    use crate::device::params_layout;
    vec![
        params_layout!(GatherParams { rows, row_words, table_off_words }),
        params_layout!(ScatterParams { table_rows, cols, dy_off, base_off }),
    ]
}

/// The first id not below `rows`, as an error naming `op`.
fn check_ids(op: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().enumerate().find(|&(_, &id)| id as usize >= rows) {
        Some((i, id)) => {
            Err(Error::InvalidArgument { op, msg: format!("id {id} at position {i} is not a row index below {rows}") })
        }
        None => Ok(()),
    }
}

impl Tensor {
    /// Rows `ids` of this tensor along dim 0 (an embedding lookup): `[V, ...]` →
    /// `[ids.len(), ...]`, contiguous, any dtype.
    ///
    /// Errors: `InvalidArgument` naming the first id ≥ V, or a 0-dim tensor.
    pub fn index_select(&self, ids: &[u32]) -> Result<Tensor> {
        const OP: &str = "index_select";
        if self.rank() == 0 {
            return Err(Error::InvalidArgument { op: OP, msg: "a 0-dim tensor has no rows".into() });
        }
        let rows = self.shape()[0];
        check_ids(OP, ids, rows)?;
        let mut shape = self.shape().to_vec();
        shape[0] = ids.len();
        let row_elems: usize = self.shape()[1..].iter().product();
        let esize = self.dtype().size_in_bytes();
        let table = self.contiguous()?;
        // Whole words per row and a word-aligned start, else through f32.
        if !(row_elems * esize).is_multiple_of(4) || !(table.offset() * esize).is_multiple_of(4) {
            return self.to_dtype(DType::F32)?.index_select(ids)?.to_dtype(self.dtype());
        }
        let out = Tensor::empty(self.gpu(), OP, &shape, self.dtype())?;
        let row_words = row_elems * esize / 4;
        if out.numel() == 0 || row_words == 0 {
            return Ok(out);
        }
        let gpu = self.gpu();
        let params = gpu.params_buffer(&GatherParams {
            rows: ids.len() as u32,
            row_words: row_words as u32,
            table_off_words: (table.offset() * esize / 4) as u32,
        });
        let ids_buf = gpu.meta_buffer(ids);
        // Unchecked is safe: word w < rows·row_words of the fresh output is written once;
        // it reads word table_off + id·row_words + (w mod row_words), inside the contiguous
        // table because every id < V was checked above.
        gpu.dispatch(
            &gather_kernel(),
            &[(0, table.storage()?.buffer()), (1, &ids_buf), (2, out.storage()?.buffer()), (3, &params)],
            (ids.len() * row_words).div_ceil(WORKGROUP) as u32,
        )?;
        Ok(out)
    }

    /// The backward of [`Tensor::index_select`]: a `[rows, ...]` table of zeros with
    /// `dy`'s row i added into row `ids[i]` (f32 sums, in ascending i: deterministic), in
    /// dy's dtype. `dy` is `[ids.len(), ...]`.
    ///
    /// Errors: `ShapeMismatch` when dy's rows are not one per id, `InvalidArgument` naming
    /// the first id ≥ rows.
    pub fn index_add_rows(dy: &Tensor, ids: &[u32], rows: usize) -> Result<Tensor> {
        const OP: &str = "index_add_rows";
        if dy.rank() == 0 || dy.shape()[0] != ids.len() {
            return Err(Error::ShapeMismatch { op: OP, lhs: dy.shape().to_vec(), rhs: vec![ids.len()] });
        }
        check_ids(OP, ids, rows)?;
        let mut shape = dy.shape().to_vec();
        shape[0] = rows;
        scatter_add(OP, None, dy, ids, &shape)
    }

    /// This tensor `[rows, ...]` with `dy`'s row i added into row `ids[i]` (`torch`'s
    /// `index_add` along dim 0), as a new tensor of this dtype: each element's f32 sum of
    /// its base value and its rows in ascending i, rounded once. A tied embedding's gradient
    /// is the output projection's plus the lookup's rows, in one pass (no zeroed table).
    ///
    /// Errors: `ShapeMismatch` when dy is not `[ids.len(), ...]` with this tensor's row
    /// shape, `DTypeMismatch` when the dtypes differ, `InvalidArgument` naming the first id
    /// ≥ rows or a 0-dim tensor.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let table = Tensor::full(&gpu, &[4, 2], 1.0, DType::F32)?;
    /// let dy = Tensor::full(&gpu, &[3, 2], 0.5, DType::F32)?;
    /// let sum = table.index_add(&[2, 0, 2], &dy)?;
    /// assert_eq!(sum.to_vec::<f32>()?, [1.5, 1.5, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0]);
    /// # Ok(()) }
    /// ```
    pub fn index_add(&self, ids: &[u32], dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_add";
        if self.rank() == 0 {
            return Err(Error::InvalidArgument { op: OP, msg: "a 0-dim tensor has no rows".into() });
        }
        if dy.rank() != self.rank() || dy.shape()[0] != ids.len() || dy.shape()[1..] != self.shape()[1..] {
            let mut want = self.shape().to_vec();
            want[0] = ids.len();
            return Err(Error::ShapeMismatch { op: OP, lhs: want, rhs: dy.shape().to_vec() });
        }
        if dy.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: self.dtype(), rhs: dy.dtype() });
        }
        check_ids(OP, ids, self.shape()[0])?;
        scatter_add(OP, Some(self), dy, ids, self.shape())
    }
}

/// `base` (or zeros) `shape` `[rows, ...]` plus dy's rows scattered by `ids` (checked by the
/// caller: ids below rows, dy `[ids.len(), ...]` of the rows' shape and base's dtype), in
/// dy's dtype. See gather.wgsl's scatter_add.
fn scatter_add(op: &'static str, base: Option<&Tensor>, dy: &Tensor, ids: &[u32], shape: &[usize]) -> Result<Tensor> {
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product();
    let dtype = dy.dtype();
    let out = Tensor::empty(dy.gpu(), op, shape, dtype)?;
    if out.numel() == 0 {
        return Ok(out);
    }
    // Positions sorted by id (stable: ascending within an id), and where each id's run
    // starts: starts[v]..starts[v + 1].
    let mut starts = vec![0u32; rows + 1];
    for &id in ids {
        starts[id as usize + 1] += 1;
    }
    for v in 0..rows {
        starts[v + 1] += starts[v];
    }
    let mut next = starts.clone();
    let mut positions = vec![0u32; ids.len().max(1)];
    for (i, &id) in ids.iter().enumerate() {
        positions[next[id as usize] as usize] = i as u32;
        next[id as usize] += 1;
    }
    // Contiguous views are read where they lie (their offsets are params).
    let dyc = dy.contiguous_at_any_offset()?;
    let basec = base.map(Tensor::contiguous_at_any_offset).transpose()?;
    let gpu = dy.gpu();
    let params = gpu.params_buffer(&ScatterParams {
        table_rows: rows as u32,
        cols: cols as u32,
        dy_off: dyc.offset() as u32,
        base_off: basec.as_ref().map_or(0, |b| b.offset() as u32),
    });
    let (starts_buf, positions_buf) = (gpu.meta_buffer(&starts), gpu.meta_buffer(&positions));
    // Unchecked is safe: invocation w writes word w of the fresh output, which holds
    // rows·cols elements of `dtype` (⌈rows·cols / 2⌉ words for 16-bit; the grid is that
    // many invocations). Elements e < rows·cols read starts[v], starts[v + 1] (v < rows,
    // rows + 1 entries), positions[k] for k below starts[rows] = ids.len(), dy elements
    // dy_off + p·cols + c with p < ids.len() and c < cols, inside the contiguous dy, and
    // base element base_off + e, inside the contiguous base of rows·cols elements.
    let out_buf = out.storage()?.buffer();
    let mut bind =
        vec![(0, dyc.storage()?.buffer()), (1, &starts_buf), (2, out_buf), (4, &positions_buf), (5, &params)];
    if let Some(b) = &basec {
        bind.push((6, b.storage()?.buffer()));
    }
    let words = (rows * cols).div_ceil(4 / dtype.size_in_bytes());
    gpu.dispatch(&scatter_kernel(dtype, basec.is_some()), &bind, words.div_ceil(WORKGROUP) as u32)?;
    Ok(out)
}
