//! Scaled dot-product attention: `softmax(scale·Q·Kᵀ + bias) · V`, per batch and head.
//!
//! - [`attention`] / [`attention_forward`]: flash attention (`shaders/attention.wgsl`):
//!   keys and values streamed through workgroup memory with an online softmax, so extra
//!   memory is one log-sum-exp per query row whatever the sequence length. The naive path
//!   ([`attention_naive`]: matmul → softmax → matmul, an S_q × S_k matrix per head) is kept
//!   for the tests and to show what flash saves.
//! - [`attention_backward`]: dq, dk, dv recomputing the probabilities tile by tile from the
//!   saved log-sum-exp (`shaders/attention_bwd.wgsl`).
//!
//! Shapes: q `[B, H, S_q, D]`, k and v `[B, H_kv, S_k, D]` (or `[B, S, heads, D]` with
//! [`AttentionLayout::Bshd`]); H_kv divides H (grouped-query attention: query head h reads
//! kv head h / (H / H_kv)). Causal masking is bottom-right aligned, as for decoding with a
//! KV cache: query i sees keys j ≤ i + S_k − S_q. Statistics are f32 whatever the storage
//! dtype.
//!
//! ```no_run
//! use wgkernels::ops::attention::{attention, attention_backward, attention_forward, AttentionOptions};
//! use wgkernels::{DType, Gpu, Tensor};
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = Gpu::new()?;
//! let q = Tensor::randn(&gpu, &[2, 8, 1024, 64], DType::F16, 0)?; // [B, H, S, D]
//! let kv = |seed| Tensor::randn(&gpu, &[2, 2, 1024, 64], DType::F16, seed); // 2 kv heads (GQA)
//! let (k, v) = (kv(1)?, kv(2)?);
//! let opts = AttentionOptions { causal: true, ..Default::default() };
//! let out = attention(&q, &k, &v, &opts)?; // [2, 8, 1024, 64], no 1024×1024 matrix
//! // Training: keep the log-sum-exp for the backward pass.
//! let (out, lse) = attention_forward(&q, &k, &v, &opts)?;
//! let dout = Tensor::randn(&gpu, out.shape(), DType::F16, 3)?;
//! let (dq, dk, dv) = attention_backward(&q, &k, &v, &out, &lse, &dout, &opts)?;
//! # let _ = (dq, dk, dv);
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::ops::elementwise::broadcast_shapes;
use crate::ops::matmul::MatmulOptions;
use crate::ops::norm::SoftmaxOptions;
use crate::ops::wgsl_load;
use crate::shaders::{Kernel, Shader};
use crate::tensor::Tensor;
use crate::DType;

/// The most head dim the flash kernels take (their tiles live in 32 KiB of workgroup memory).
///
/// ```
/// assert_eq!(wgkernels::ops::attention::MAX_HEAD_DIM, 128);
/// ```
pub const MAX_HEAD_DIM: usize = 128;
const FWD_ROWS: usize = 64;
const BWD_ROWS: usize = 16;

/// How q, k, v (and the output) lay out their dims.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::attention::{attention, AttentionLayout, AttentionOptions};
/// let q = Tensor::randn(&gpu, &[1, 128, 8, 64], DType::F32, 0)?; // [B, S, H, D]
/// let o = attention(&q, &q, &q, &AttentionOptions { layout: AttentionLayout::Bshd, ..Default::default() })?;
/// assert_eq!(o.shape(), &[1, 128, 8, 64]);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionLayout {
    /// `[batch, heads, seq, head_dim]`.
    #[default]
    Bhsd,
    /// `[batch, seq, heads, head_dim]` (what a fused QKV projection produces).
    Bshd,
}

/// Which implementation runs.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::attention::{attention, AttentionOptions, AttentionPath};
/// let q = Tensor::randn(&gpu, &[1, 2, 64, 32], DType::F32, 0)?;
/// let naive = attention(&q, &q, &q, &AttentionOptions { path: AttentionPath::Naive, ..Default::default() })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionPath {
    /// Flash on tensor cores where it applies (f16, cooperative matrices, head dim a multiple
    /// of 16), else the FMA flash kernel where it applies (head dim ≤ 128, a multiple of 8),
    /// else naive.
    #[default]
    Auto,
    /// The FMA flash kernel (every adapter); an error where it does not apply.
    Flash,
    /// The tensor-core flash kernel (forward only; the backward runs the FMA kernels); an
    /// error where the adapter or the inputs do not allow it.
    FlashCoop,
    /// matmul → softmax → matmul through the tensor ops.
    Naive,
}

/// Options of [`attention`]. `Default`: no mask, scale 1/√D, `Bhsd`, `Auto`.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::attention::{attention, AttentionOptions};
/// let q = Tensor::randn(&gpu, &[1, 2, 16, 32], DType::F32, 0)?;
/// let pad = Tensor::zeros(&gpu, &[1, 1, 1, 16], DType::F32)?; // additive, -inf masks
/// let o = attention(&q, &q, &q, &AttentionOptions { causal: true, scale: Some(0.2), bias: Some(&pad), ..Default::default() })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionOptions<'a> {
    /// Causal mask, bottom-right aligned (query i sees keys j ≤ i + S_k − S_q).
    pub causal: bool,
    /// Multiplies q·k; default 1/√D.
    pub scale: Option<f32>,
    /// Added to the scaled scores; any shape that broadcasts to `[B, H, S_q, S_k]` (a
    /// `[S_q, S_k]` mask, a `[B, 1, 1, S_k]` padding mask, an ALiBi `[1, H, S_q, S_k]`).
    /// −∞ entries mask.
    pub bias: Option<&'a Tensor>,
    /// Dim order of q, k, v and the output.
    pub layout: AttentionLayout,
    /// Forces an implementation (tests and benchmarks).
    pub path: AttentionPath,
}

/// The sizes of one attention call, checked.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    h: usize,
    h_kv: usize,
    s_q: usize,
    s_k: usize,
    d: usize,
}

/// (offset, batch, head, row) strides of a q/k/v/o tensor in `layout`.
fn view_strides(t: &Tensor, layout: AttentionLayout) -> [u32; 4] {
    let s = t.strides();
    let (head, row) = match layout {
        AttentionLayout::Bhsd => (s[1], s[2]),
        AttentionLayout::Bshd => (s[2], s[1]),
    };
    [t.offset() as u32, s[0] as u32, head as u32, row as u32]
}

/// (batch, heads, seq, head_dim) of a tensor in `layout`.
fn split(t: &Tensor, layout: AttentionLayout) -> (usize, usize, usize, usize) {
    let s = t.shape();
    match layout {
        AttentionLayout::Bhsd => (s[0], s[1], s[2], s[3]),
        AttentionLayout::Bshd => (s[0], s[2], s[1], s[3]),
    }
}

fn shape_in(layout: AttentionLayout, b: usize, h: usize, s: usize, d: usize) -> Vec<usize> {
    match layout {
        AttentionLayout::Bhsd => vec![b, h, s, d],
        AttentionLayout::Bshd => vec![b, s, h, d],
    }
}

fn check(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Dims> {
    for t in [q, k, v] {
        if t.rank() != 4 {
            return Err(Error::InvalidArgument {
                op,
                msg: format!("q, k, v must be rank 4 ({:?} layout), got shape {:?}", opts.layout, t.shape()),
            });
        }
    }
    for t in [k, v] {
        if t.dtype() != q.dtype() {
            return Err(Error::DTypeMismatch { op, lhs: q.dtype(), rhs: t.dtype() });
        }
    }
    let (b, h, s_q, d) = split(q, opts.layout);
    let (bk, h_kv, s_k, dk) = split(k, opts.layout);
    if k.shape() != v.shape() {
        return Err(Error::ShapeMismatch { op, lhs: k.shape().to_vec(), rhs: v.shape().to_vec() });
    }
    // Same batch and head dim; kv heads dividing the query heads.
    if bk != b || dk != d || h_kv == 0 || h % h_kv != 0 {
        return Err(Error::ShapeMismatch { op, lhs: q.shape().to_vec(), rhs: k.shape().to_vec() });
    }
    if b * h * s_q * s_k * d == 0 {
        return Err(Error::Empty { op, shape: q.shape().to_vec() });
    }
    if let Some(bias) = opts.bias {
        let full = [b, h, s_q, s_k];
        let ok = bias.rank() <= 4 && broadcast_shapes(op, bias.shape(), &full).is_ok_and(|s| s == full);
        if !ok {
            return Err(Error::ShapeMismatch { op: "attention bias", lhs: bias.shape().to_vec(), rhs: full.to_vec() });
        }
    }
    if let Some(s) = opts.scale {
        if !s.is_finite() {
            return Err(Error::InvalidArgument { op, msg: format!("scale must be finite, got {s}") });
        }
    }
    Ok(Dims { b, h, h_kv, s_q, s_k, d })
}

/// The tensor-core kernel's requirements: f16 inputs, 16×16×16 f16→f32 cooperative
/// matrices and f16 in shaders, subgroups of exactly 32, a head dim that is a multiple of 16
/// up to 128, and every q/k/v offset and stride even (f16 pairs are read as whole words).
fn coop_applies(q: &Tensor, k: &Tensor, v: &Tensor, d: &Dims) -> bool {
    let gpu = q.gpu();
    let info = gpu.info();
    q.dtype() == DType::F16
        && info.has_coop_f16_16x16x16()
        && gpu.has(wgpu::Features::SHADER_F16)
        && gpu.has(wgpu::Features::SUBGROUP)
        && info.subgroup_sizes == (32, 32)
        && d.d.is_multiple_of(16)
        && d.d <= MAX_HEAD_DIM
        && [q, k, v].iter().all(|t| t.offset() % 8 == 0 && t.strides()[..3].iter().all(|s| s % 8 == 0))
        && coop_tiles(d.d, info.limits.max_compute_workgroup_storage_size).is_some()
}

fn coop_requirements(gpu: &crate::Gpu) -> String {
    format!(
        "the tensor-core flash kernel needs f16 q/k/v with offsets and strides that are multiples of 8, a head dim that is a multiple of 16 up to {MAX_HEAD_DIM}, and an adapter with 16x16x16 f16->f32 cooperative matrices, SHADER_F16 and subgroups of 32 (this one: coop {}, subgroups {:?})",
        gpu.info().has_coop_f16_16x16x16(),
        gpu.info().subgroup_sizes
    )
}

fn flash_applies(d: &Dims) -> bool {
    d.d <= MAX_HEAD_DIM && d.d.is_multiple_of(8)
}

/// Attention output; see the [module docs](self).
///
/// Errors: `ShapeMismatch` when q, k, v (or the bias) do not fit together, `DTypeMismatch`,
/// `InvalidArgument` for a rank other than 4 or a flash path forced where it does not apply.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::attention::{attention, AttentionOptions};
/// let q = Tensor::randn(&gpu, &[2, 4, 100, 64], DType::F16, 0)?;
/// let o = attention(&q, &q, &q, &AttentionOptions::default())?;
/// # Ok(()) }
/// ```
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    let dims = check("attention", q, k, v, opts)?;
    match opts.path {
        AttentionPath::Naive => attention_naive(q, k, v, opts),
        AttentionPath::Auto if !flash_applies(&dims) && !coop_applies(q, k, v, &dims) => attention_naive(q, k, v, opts),
        _ => Ok(attention_forward(q, k, v, opts)?.0),
    }
}

/// Flash attention forward: the output (q's dtype and layout) and the log-sum-exp of each
/// query row's scaled scores, `[B, H, S_q]` f32, which [`attention_backward`] needs.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::attention::{attention_forward, AttentionOptions};
/// let q = Tensor::randn(&gpu, &[1, 2, 50, 32], DType::F32, 0)?;
/// let (o, lse) = attention_forward(&q, &q, &q, &AttentionOptions::default())?;
/// assert_eq!(lse.shape(), &[1, 2, 50]);
/// # Ok(()) }
/// ```
pub fn attention_forward(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    let dims = check(OP, q, k, v, opts)?;
    let coop = match opts.path {
        AttentionPath::FlashCoop => {
            if !coop_applies(q, k, v, &dims) {
                return Err(Error::InvalidArgument { op: OP, msg: coop_requirements(q.gpu()) });
            }
            true
        }
        AttentionPath::Flash => false,
        AttentionPath::Auto | AttentionPath::Naive => coop_applies(q, k, v, &dims),
    };
    if !coop && !flash_applies(&dims) {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!(
                "the flash kernel takes head dims that are multiples of 8 up to {MAX_HEAD_DIM}, got {}",
                dims.d
            ),
        });
    }
    let gpu = q.gpu();
    let Dims { b, h, s_q, .. } = dims;
    grid_fits(OP, gpu, [s_q.div_ceil(FWD_ROWS), h, b])?;
    let (q, k, v) = (last_dim_contiguous(q)?, last_dim_contiguous(k)?, last_dim_contiguous(v)?);
    let bias = opts.bias.map(|t| bias_view(t, &dims)).transpose()?;
    let out = Tensor::empty(gpu, OP, &shape_in(opts.layout, b, h, s_q, dims.d), q.dtype())?;
    let lse = Tensor::empty(gpu, OP, &[b, h, s_q], DType::F32)?;
    let mut params = base_params(&dims, opts, &q, &k, &v, bias.as_ref().map(|x| &x.1));
    params[20..24].copy_from_slice(&view_strides(&out, opts.layout));
    let bias_dtype = bias.as_ref().map(|x| x.0.dtype());
    let tiles = coop_tiles(dims.d, gpu.info().limits.max_compute_workgroup_storage_size).filter(|_| coop);
    let (kernel, rows) = match tiles {
        Some(t) => (coop_kernel(bias_dtype, dims.d, t), t.rows()),
        None => (fwd_kernel(q.dtype(), bias_dtype, dims.d), FWD_ROWS),
    };
    // Unchecked is safe: every element index is offset + b·sb + h·sh + s·ss + d of a view
    // with b < B, h < H (or H_kv), s < S, d < D, guarded by the shader's row and column
    // tests, hence an element of that view and inside its buffer; the bias index is the
    // same with the broadcast strides; out (fresh, contiguous) is written in whole words at
    // even element indices (D is a multiple of 8); lse at (b·H + h)·S_q + s < B·H·S_q;
    // params has the 30 words read; workgroup arrays are indexed below their sizes.
    let meta = gpu.meta_buffer(&params);
    let mut bind: Vec<(u32, &wgpu::Buffer)> = vec![
        (0, q.storage()?.buffer()),
        (1, k.storage()?.buffer()),
        (2, v.storage()?.buffer()),
        (3, out.storage()?.buffer()),
        (4, lse.storage()?.buffer()),
        (5, &meta),
    ];
    if let Some((t, _)) = &bias {
        bind.push((6, t.storage()?.buffer()));
    }
    // A workgroup per `rows` query rows of one (batch, head). The tensor-core kernel reads
    // q, k, v rows as 16-byte words: coop_applies checked every offset and stride a
    // multiple of 8.
    gpu.dispatch_3d(&kernel, &bind, [s_q.div_ceil(rows) as u32, h as u32, b as u32])?;
    Ok((out, lse))
}

/// Gradients of [`attention_forward`]: (dq, dk, dv) in the inputs' dtype and layout, from
/// q, k, v, the forward's output and log-sum-exp, and the output's gradient `dout`.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::attention::{attention_backward, attention_forward, AttentionOptions};
/// let q = Tensor::randn(&gpu, &[1, 2, 50, 32], DType::F32, 0)?;
/// let opts = AttentionOptions { causal: true, ..Default::default() };
/// let (o, lse) = attention_forward(&q, &q, &q, &opts)?;
/// let (dq, dk, dv) = attention_backward(&q, &q, &q, &o, &lse, &Tensor::randn(&gpu, o.shape(), DType::F32, 1)?, &opts)?;
/// # Ok(()) }
/// ```
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let dims = check(OP, q, k, v, opts)?;
    if !flash_applies(&dims) {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!(
                "the flash kernel takes head dims that are multiples of 8 up to {MAX_HEAD_DIM}, got {}",
                dims.d
            ),
        });
    }
    if out.shape() != q.shape() || dout.shape() != q.shape() {
        let bad = if out.shape() != q.shape() { out } else { dout };
        return Err(Error::ShapeMismatch { op: OP, lhs: bad.shape().to_vec(), rhs: q.shape().to_vec() });
    }
    for t in [out, dout] {
        if t.dtype() != q.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: t.dtype(), rhs: q.dtype() });
        }
    }
    let Dims { b, h, h_kv, s_q, s_k, d } = dims;
    if lse.shape() != [b, h, s_q] || lse.dtype() != DType::F32 {
        return Err(Error::ShapeMismatch {
            op: "attention_backward lse",
            lhs: lse.shape().to_vec(),
            rhs: vec![b, h, s_q],
        });
    }
    let gpu = q.gpu();
    grid_fits(OP, gpu, [s_q.div_ceil(BWD_ROWS), h, b])?;
    grid_fits(OP, gpu, [s_k.div_ceil(BWD_ROWS), h_kv, b])?;
    // δ_i = Σ_d dO_i·O_i in f32, [B, H, S_q].
    let delta = dout.to_dtype(DType::F32)?.mul(&out.to_dtype(DType::F32)?)?.sum(-1)?;
    let delta = match opts.layout {
        AttentionLayout::Bhsd => delta,
        AttentionLayout::Bshd => delta.transpose(1, 2)?.contiguous()?,
    };
    let (q, k, v, dout) =
        (last_dim_contiguous(q)?, last_dim_contiguous(k)?, last_dim_contiguous(v)?, last_dim_contiguous(dout)?);
    let lse = lse.contiguous()?;
    let bias = opts.bias.map(|t| bias_view(t, &dims)).transpose()?;
    let mut params = base_params(&dims, opts, &q, &k, &v, bias.as_ref().map(|x| &x.1));
    params.extend_from_slice(&view_strides(&dout, opts.layout));
    let meta = gpu.meta_buffer(&params);
    let dq = Tensor::empty(gpu, OP, &[b, h, s_q, d], DType::F32)?;
    let dk = Tensor::empty(gpu, OP, &[b, h_kv, s_k, d], DType::F32)?;
    let dv = Tensor::empty(gpu, OP, &[b, h_kv, s_k, d], DType::F32)?;
    // Unchecked is safe by the forward's argument; the f32 outputs are contiguous
    // [B, heads, S, D] written at ((b·heads + h)·S + s)·D + d with s < S, d < D.
    let mut common: Vec<(u32, &wgpu::Buffer)> = vec![
        (0, q.storage()?.buffer()),
        (1, k.storage()?.buffer()),
        (2, v.storage()?.buffer()),
        (3, dout.storage()?.buffer()),
        (4, lse.storage()?.buffer()),
        (5, &meta),
        (7, delta.storage()?.buffer()),
    ];
    if let Some((t, _)) = &bias {
        common.push((6, t.storage()?.buffer()));
    }
    let bias_dtype = bias.as_ref().map(|x| x.0.dtype());
    let mut bind = common.clone();
    bind.extend([(8, dk.storage()?.buffer()), (9, dv.storage()?.buffer())]);
    let kernel = bwd_kernel("attention_bwd_dkdv", q.dtype(), bias_dtype, d);
    gpu.dispatch_3d(&kernel, &bind, [s_k.div_ceil(BWD_ROWS) as u32, h_kv as u32, b as u32])?;
    let mut bind = common;
    bind.push((8, dq.storage()?.buffer()));
    let kernel = bwd_kernel("attention_bwd_dq", q.dtype(), bias_dtype, d);
    gpu.dispatch_3d(&kernel, &bind, [s_q.div_ceil(BWD_ROWS) as u32, h as u32, b as u32])?;
    let finish = |t: Tensor| -> Result<Tensor> {
        let t = match opts.layout {
            AttentionLayout::Bhsd => t,
            AttentionLayout::Bshd => t.transpose(1, 2)?.contiguous()?,
        };
        t.to_dtype(q.dtype())
    };
    Ok((finish(dq)?, finish(dk)?, finish(dv)?))
}

/// The reference composition: scores = q·kᵀ (f32) → scale, bias, causal mask → softmax →
/// · v. Materialises `[B, H, S_q, S_k]` scores and probabilities.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// use wgkernels::ops::attention::{attention_naive, AttentionOptions};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let q = Tensor::randn(&gpu, &[1, 4, 128, 64], DType::F32, 0)?;
/// let before = gpu.memory().live_bytes;
/// let o = attention_naive(&q, &q, &q, &AttentionOptions { causal: true, ..Default::default() })?;
/// println!("the naive path held {} bytes of scores", gpu.memory().peak_live_bytes - before);
/// # Ok(()) }
/// ```
pub fn attention_naive(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    let Dims { b, h, h_kv, s_k, d, .. } = check("attention", q, k, v, opts)?;
    let to_bhsd = |t: &Tensor| match opts.layout {
        AttentionLayout::Bhsd => Ok(t.clone()),
        AttentionLayout::Bshd => t.permute(&[0, 2, 1, 3]),
    };
    let (qb, mut kb, mut vb) = (to_bhsd(q)?, to_bhsd(k)?, to_bhsd(v)?);
    if h_kv != h {
        // Each kv head serves H / H_kv query heads: repeat it.
        let repeat = |t: &Tensor| {
            t.contiguous()?.unsqueeze(2)?.expand(&[b, h_kv, h / h_kv, s_k, d])?.contiguous()?.reshape(&[b, h, s_k, d])
        };
        (kb, vb) = (repeat(&kb)?, repeat(&vb)?);
    }
    let f32_out = MatmulOptions { out_dtype: Some(DType::F32), ..Default::default() };
    let mut scores = qb.matmul_with(&kb.transpose(-1, -2)?, &f32_out)?;
    let scale = opts.scale.unwrap_or(1.0 / (d as f32).sqrt());
    let mut softmax = SoftmaxOptions { scale: Some(scale), causal: opts.causal, ..Default::default() };
    if let Some(bias) = opts.bias {
        let s = Tensor::full(q.gpu(), &[1], scale, DType::F32)?;
        scores = scores.mul(&s)?.add(&bias.to_dtype(DType::F32)?)?;
        softmax.scale = None;
    }
    let p = scores.softmax_with(&softmax)?.to_dtype(v.dtype())?;
    let out = p.matmul(&vb)?;
    match opts.layout {
        AttentionLayout::Bhsd => Ok(out),
        AttentionLayout::Bshd => out.permute(&[0, 2, 1, 3])?.contiguous(),
    }
}

fn grid_fits(op: &'static str, gpu: &crate::Gpu, grid: [usize; 3]) -> Result<()> {
    let max = gpu.info().limits.max_compute_workgroups_per_dimension as usize;
    if grid.iter().any(|&g| g > max) {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("grid {grid:?} exceeds {max} workgroups per dimension"),
        });
    }
    Ok(())
}

fn last_dim_contiguous(t: &Tensor) -> Result<Tensor> {
    if t.strides()[3] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The bias as a realised tensor and its (offset, batch, head, query, key) strides, 0 on
/// broadcast dims.
fn bias_view(bias: &Tensor, d: &Dims) -> Result<(Tensor, [u32; 5])> {
    let full = bias.expand(&[d.b, d.h, d.s_q, d.s_k])?;
    let mut w = [full.offset() as u32, 0, 0, 0, 0];
    for (i, (&n, &s)) in full.shape().iter().zip(full.strides()).enumerate() {
        w[1 + i] = if n == 1 { 0 } else { s as u32 };
    }
    Ok((full, w))
}

fn base_params(
    d: &Dims,
    opts: &AttentionOptions,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&[u32; 5]>,
) -> Vec<u32> {
    let scale = opts.scale.unwrap_or(1.0 / (d.d as f32).sqrt());
    let mut p = vec![0u32; 30];
    p[..8].copy_from_slice(&[
        d.b as u32,
        d.h as u32,
        d.h_kv as u32,
        d.s_q as u32,
        d.s_k as u32,
        d.d as u32,
        opts.causal as u32,
        scale.to_bits(),
    ]);
    p[8..12].copy_from_slice(&view_strides(q, opts.layout));
    p[12..16].copy_from_slice(&view_strides(k, opts.layout));
    p[16..20].copy_from_slice(&view_strides(v, opts.layout));
    if let Some(b) = bias {
        p[24..29].copy_from_slice(b);
    }
    p[29] = f32::NEG_INFINITY.to_bits();
    p
}

fn store_pair(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "o[e] = bitcast<u32>(x);\n    o[e + 1u] = bitcast<u32>(y);",
        DType::F16 => "o[e >> 1u] = pack_f16x2(vec2<f32>(x, y));",
        DType::BF16 => "o[e >> 1u] = f32_to_bf16_bits(x) | (f32_to_bf16_bits(y) << 16u);",
    }
}

fn fwd_kernel(dtype: DType, bias: Option<DType>, d: usize) -> Kernel {
    let mut k = Kernel::new(Shader::Attention, "attention_fwd")
        .sub("DP", d.next_multiple_of(32).to_string())
        .sub("LOAD_Q", wgsl_load("q", dtype))
        .sub("LOAD_K", wgsl_load("k", dtype))
        .sub("LOAD_V", wgsl_load("v", dtype))
        .sub("STORE_O", store_pair(dtype))
        .trusted();
    k = match bias {
        Some(bd) => k.flag("BIAS").sub("LOAD_BIAS", wgsl_load("bias", bd)),
        None => k.sub("LOAD_BIAS", ""),
    };
    k
}

fn bwd_kernel(entry: &'static str, dtype: DType, bias: Option<DType>, d: usize) -> Kernel {
    let mut k = Kernel::new(Shader::AttentionBwd, entry)
        .sub("DP", d.next_multiple_of(16).to_string())
        .sub("LOAD_Q", wgsl_load("q", dtype))
        .sub("LOAD_K", wgsl_load("k", dtype))
        .sub("LOAD_V", wgsl_load("v", dtype))
        .sub("LOAD_DO", wgsl_load("dout", dtype))
        .trusted();
    k = match bias {
        Some(bd) => k.flag("BIAS").sub("LOAD_BIAS", wgsl_load("bias", bd)),
        None => k.sub("LOAD_BIAS", ""),
    };
    k
}

/// Tiling of the tensor-core forward: subgroups of 16 query rows per workgroup, and key
/// rows per tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CoopTiles {
    subgroups: usize,
    bk: usize,
}

impl CoopTiles {
    /// Query rows per workgroup.
    fn rows(self) -> usize {
        16 * self.subgroups
    }

    /// Halves of the Q/K/V staging array (Q in column slices of up to 64, then K and V
    /// tiles).
    fn tile_halves(self, d: usize) -> usize {
        (self.rows() * (d.min(64) + 8)).max(2 * self.bk * (d + 8))
    }

    /// Workgroup memory (shaders/attention_coop.wgsl): staging (f16), S (f32), P (f16).
    fn workgroup_bytes(self, d: usize) -> usize {
        self.tile_halves(d) * 2 + self.subgroups * 16 * self.bk * (4 + 2)
    }
}

/// The tiling for head dim `d` under `limit` bytes of workgroup memory: 8 subgroups with key
/// tiles of 32, else 4 (on the H200, B4 H16 S2048 D64: 8x32 42.3 TFLOP/s, 4x32 36.7, 4x64
/// and 8x64 15.9: BENCHMARKS.md), or `WGK_ATTN_COOP=SxK` (S subgroups, K keys per tile:
/// 4x32, 4x64, 8x32, 8x64) to measure the others. None when nothing fits.
fn coop_tiles(d: usize, limit: u32) -> Option<CoopTiles> {
    let fits = |t: CoopTiles| t.workgroup_bytes(d) <= limit as usize;
    let forced = std::env::var("WGK_ATTN_COOP").ok().and_then(|v| {
        let (s, k) = v.split_once('x')?;
        let t = CoopTiles { subgroups: s.trim().parse().ok()?, bk: k.trim().parse().ok()? };
        ([4, 8].contains(&t.subgroups) && [32, 64].contains(&t.bk)).then_some(t)
    });
    let preferred = [CoopTiles { subgroups: 8, bk: 32 }, CoopTiles { subgroups: 4, bk: 32 }];
    forced.into_iter().chain(preferred).find(|&t| fits(t))
}

/// The tensor-core forward for head dim `d` (a multiple of 16) and tiling `t`: fragment
/// code unrolled here, see shaders/attention_coop.wgsl.
fn coop_kernel(bias: Option<DType>, d: usize, t: CoopTiles) -> Kernel {
    let frags = d / 16;
    let key_frags = t.bk / 16;
    // Q in column slices of up to 64 (4 fragments): stage a slice, load its fragments.
    let qc = d.min(64);
    let mut q_stage = String::new();
    for slice in 0..d.div_ceil(64) {
        let words = (d - 64 * slice).min(64) / 8;
        q_stage += &format!(
            "for (var idx = lid; idx < BQ * {words}u; idx += THREADS) {{\n        let r = idx / {words}u;\n        let w = idx % {words}u;\n        \
             var qw = vec4<u32>(0u);\n        if (q0 + r < S_q) {{\n            qw = q[row_base(8u, b, h, q0 + r) / 8u + {}u + w];\n        }}\n        \
             put8(r * QS + 8u * w, qw);\n    }}\n    workgroupBarrier();\n    ",
            8 * slice
        );
        for c in 4 * slice..(4 * slice + 4).min(frags) {
            q_stage += &format!(
                "let qo_{c} = sg * 16u * QS + {}u;\n    let q_{c} = coopLoadT<coop_mat16x16<f16, A>>(&tiles[qo_{c}], QS);\n    ",
                (c - 4 * slice) * 16
            );
        }
        q_stage += "workgroupBarrier();\n    ";
    }
    let mut o_decl = String::new();
    let mut s_mma = String::new();
    let mut pv = String::new();
    let mut o_store = String::new();
    for c in 0..frags {
        o_decl += &format!("var o_{c} = coop_mat16x16<f32, C>();\n    ");
        o_store += &format!(
            "workgroupBarrier();\n    let oo_{c} = sg * 16u * BK;\n    coopStoreT(o_{c}, &scratch[oo_{c}], 16u);\n    workgroupBarrier();\n    \
             for (var e = lane; e < 128u; e += SUBGROUP) {{\n        let rr = e / 8u;\n        let cp = 2u * (e % 8u);\n        let rg = q0 + sg * 16u + rr;\n        \
             if (rg < S_q) {{\n            store_o(row_base(20u, b, h, rg) + {}u + cp, scratch[oo_{c} + rr * 16u + cp], scratch[oo_{c} + rr * 16u + cp + 1u]);\n        }}\n    }}\n    ",
            c * 16
        );
    }
    // S block j (keys 16j..16j + 15) = Σ_c Q_c · Kᵀ_(c, j), stored column-major for the lanes.
    for j in 0..key_frags {
        s_mma += &format!("var s_{j} = coop_mat16x16<f32, C>();\n        ");
        for c in 0..frags {
            s_mma += &format!(
                "let ko_{c}_{j} = {}u * KS + {}u;\n        let kb_{c}_{j} = coopLoad<coop_mat16x16<f16, B>>(&tiles[ko_{c}_{j}], KS);\n        s_{j} = coopMultiplyAdd(q_{c}, kb_{c}_{j}, s_{j});\n        ",
                j * 16,
                c * 16
            );
        }
        s_mma +=
            &format!("let so_{j} = s_base + {}u;\n        coopStore(s_{j}, &scratch[so_{j}], 16u);\n        ", j * 256);
    }
    for kb in 0..key_frags {
        pv += &format!(
            "let po_{kb} = s_base + {}u;\n        let p_{kb} = coopLoad<coop_mat16x16<f16, A>>(&p_tile[po_{kb}], 16u);\n        ",
            kb * 256
        );
        for j in 0..frags {
            pv += &format!(
                "let vo_{kb}_{j} = V_BASE + {}u * VS + {}u;\n        let vb_{kb}_{j} = coopLoadT<coop_mat16x16<f16, B>>(&tiles[vo_{kb}_{j}], VS);\n        o_{j} = coopMultiplyAdd(p_{kb}, vb_{kb}_{j}, o_{j});\n        ",
                kb * 16,
                j * 16
            );
        }
    }
    let mut k = Kernel::new(Shader::AttentionCoop, "attention_coop")
        .sub("D", d.to_string())
        .sub("SGS", t.subgroups.to_string())
        .sub("BK", t.bk.to_string())
        .sub("TILE_HALVES", t.tile_halves(d).to_string())
        .sub("STORE_O", store_pair(DType::F16))
        .sub("QC", qc.to_string())
        .sub("Q_STAGE", q_stage)
        .sub("O_DECL", o_decl)
        .sub("S_MMA", s_mma)
        .sub("PV_MMA", pv)
        .sub("O_STORE", o_store)
        .trusted();
    k = match bias {
        Some(bd) => k.flag("BIAS").sub("LOAD_BIAS", wgsl_load("bias", bd)),
        None => k.sub("LOAD_BIAS", ""),
    };
    k
}

/// Every specialisation the attention ops can launch (all head-dim paddings, dtypes, with
/// and without a bias), for the portability test.
pub fn all_kernels() -> Vec<Kernel> {
    let mut all = Vec::new();
    for d in [16, 32, 48, 64, 80, 96, 112, 128] {
        for bias in [None, Some(DType::F16), Some(DType::F32)] {
            for subgroups in [4, 8] {
                for bk in [32, 64] {
                    all.push(coop_kernel(bias, d, CoopTiles { subgroups, bk }));
                }
            }
        }
    }
    for dtype in DType::ALL {
        for bias in [None, Some(dtype), Some(DType::F32)] {
            for d in [32, 64, 96, 128] {
                all.push(fwd_kernel(dtype, bias, d));
            }
            for d in [16, 32, 48, 64, 80, 96, 112, 128] {
                all.push(bwd_kernel("attention_bwd_dkdv", dtype, bias, d));
                all.push(bwd_kernel("attention_bwd_dq", dtype, bias, d));
            }
        }
    }
    all
}
