//! Scaled dot-product attention: `softmax(scale·Q·Kᵀ + bias) · V`, per batch and head.
//!
//! - [`attention`] / [`attention_forward`]: flash attention (`shaders/attention.wgsl`; for
//!   every dtype on adapters with f16 cooperative matrices, `shaders/attention_coop.wgsl` on
//!   tensor cores; f32 and bf16 are scaled by a power of two from each input's largest |x|,
//!   bf16 then exact in f16, f32 split into two f16 parts, as PyTorch's f32 SDPA splits into
//!   TF32 parts: three products for one, about 22 significant bits; `AttentionPath::Flash`
//!   keeps f32's 24 on FMA units): keys and values
//!   streamed through workgroup memory with an online softmax, so
//!   extra memory is one log-sum-exp per query row whatever the sequence length. The naive path
//!   ([`attention_naive`]: matmul → softmax → matmul, an S_q × S_k matrix per head) is kept
//!   for the tests and to show what flash saves.
//! - [`attention_path`]: which of them [`attention`] runs for given inputs on their adapter.
//! - [`attention_backward`]: dq, dk, dv recomputing the probabilities tile by tile from the
//!   saved log-sum-exp (`shaders/attention_bwd.wgsl`; on tensor cores, every dtype as in the
//!   forward, `shaders/attention_coop_bwd.wgsl`).
//!
//! Shapes: q `[B, H, S_q, D]`, k and v `[B, H_kv, S_k, D]` (or `[B, S, heads, D]` with
//! [`AttentionLayout::Bshd`]); H_kv divides H (grouped-query attention: query head h reads
//! kv head h / (H / H_kv)). Causal masking is bottom-right aligned, as for decoding with a
//! KV cache: query i sees keys j ≤ i + S_k − S_q. Statistics are f32 whatever the storage
//! dtype.
//!
//! ```no_run
//! use wgkernels::ops::attention::{attention, attention_backward, attention_forward, AttentionOptions, AttentionSaved};
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
//! let (dq, dk, dv) = attention_backward(&AttentionSaved { q: &q, k: &k, v: &v, out: &out, lse: &lse }, &dout, &opts)?;
//! # let _ = (dq, dk, dv);
//! # Ok(()) }
//! ```

use crate::device::{Kernel, ShaderSource};
use crate::error::{Error, Result};
use crate::kernels::contraction::matmul::MatmulOptions;
use crate::kernels::elementwise::broadcast_shapes;
use crate::kernels::normalization::norm::SoftmaxOptions;
use crate::kernels::wgsl_load;
use crate::tensor::Tensor;
use crate::DType;

/// Flash attention forward on FMA units.
pub const ATTENTION: ShaderSource = ShaderSource {
    name: "attention",
    source: include_str!("attention.wgsl"),
    shared: include_str!("attention_params.wgsl"),
};

/// Flash attention backward on FMA units (dk/dv and dq).
pub const ATTENTION_BWD: ShaderSource = ShaderSource {
    name: "attention_bwd",
    source: include_str!("attention_bwd.wgsl"),
    shared: include_str!("attention_params.wgsl"),
};

/// Flash attention forward on cooperative matrices (tensor cores).
pub const ATTENTION_COOP: ShaderSource = ShaderSource {
    name: "attention_coop",
    source: include_str!("attention_coop.wgsl"),
    shared: concat!(include_str!("attention_params.wgsl"), "\n", include_str!("attention_common.wgsl")),
};

/// Flash attention backward on cooperative matrices (dk/dv and dq).
pub const ATTENTION_COOP_BWD: ShaderSource = ShaderSource {
    name: "attention_coop_bwd",
    source: include_str!("attention_coop_bwd.wgsl"),
    shared: concat!(include_str!("attention_params.wgsl"), "\n", include_str!("attention_common.wgsl")),
};

/// The backward's f32 dq, dk, dv packed as one `[B, S, 3, H, D]` gradient of a fused qkv
/// projection ([`attention_backward_qkv`]).
pub const ATTENTION_PACK: ShaderSource =
    ShaderSource { name: "attention_pack", source: include_str!("attention_pack.wgsl"), shared: "" };

/// δ = Σ_d dO·O per query row, the backward's first step.
pub const ATTENTION_DELTA: ShaderSource =
    ShaderSource { name: "attention_delta", source: include_str!("attention_delta.wgsl"), shared: "" };

/// The largest |x| of q, k, v (and dO), for the scaled tensor-core paths.
pub const ATTENTION_RANGE: ShaderSource = ShaderSource {
    name: "attention_range",
    source: include_str!("attention_range.wgsl"),
    shared: include_str!("attention_params.wgsl"),
};

/// The most head dim the flash kernels take: the FMA kernels keep D/16 output vec4 per
/// invocation in registers, and the tensor-core kernels' K/V tiles grow with it.
///
/// ```
/// assert_eq!(wgkernels::ops::attention::MAX_HEAD_DIM, 128);
/// ```
pub const MAX_HEAD_DIM: usize = 128;
const FWD_ROWS: usize = 64;
const BWD_ROWS: usize = 64;

/// How q, k, v (and the output) lay out their dims.
///
/// ```
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
/// ```
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
    /// Flash on tensor cores where it applies (f16 cooperative matrices, head dim a multiple
    /// of 16, any dtype), else the FMA flash kernel (head dim ≤ 128, a multiple of 8), else
    /// an error: Auto never runs the naive path, whose [S_q, S_k] scores a caller must ask
    /// for. `attention` and `attention_forward` resolve it alike.
    #[default]
    Auto,
    /// The FMA flash kernel (every adapter); an error where it does not apply.
    Flash,
    /// The tensor-core flash kernels (forward and backward); an error where the adapter or
    /// the inputs do not allow them.
    FlashCoop,
    /// matmul → softmax → matmul through the tensor ops, the [S_q, S_k] scores stored: any
    /// head dim, for comparison and for head dims no flash kernel takes. `attention` only
    /// (no log-sum-exp for a backward); `attention_forward` takes it as Auto.
    Naive,
}

/// Options of [`attention`]. `Default`: no mask, scale 1/√D, `Bhsd`, `Auto`.
///
/// ```
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
    /// Forces the tensor-core forward's tiling (tests and benchmarks; see [`coop_tilings`]);
    /// an error if it does not fit. `None`: [`CoopTiling::preferred`].
    pub coop_tiling: Option<CoopTiling>,
    /// Forces the tensor-core backward's tiling (tests and benchmarks; one of
    /// [`coop_bwd_tilings`], else an error). `None`: the first of them.
    pub coop_bwd_tiling: Option<CoopBwdTiling>,
    /// Forces the FMA-unit flash kernels' tiling (tests and benchmarks; one of
    /// [`flash_tilings`], else an error): the forward takes both fields, the backward the
    /// head-dim chunk. `None`: [`FlashTiling::preferred`].
    pub flash_tiling: Option<FlashTiling>,
    /// How the FMA-unit backward computes dQ. `None`: in the dK/dV pass, added into an f32
    /// buffer with `atomicAdd` where the adapter has `SHADER_FLOAT32_ATOMIC` (one pass over
    /// the keys and queries instead of two), else the separate dQ pass. `Some(true)` asks for
    /// the atomic pass (an error without the feature), `Some(false)` for the separate one.
    /// The tensor-core backward always runs its two passes.
    pub atomic_dq: Option<bool>,
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

/// The view of a q/k/v/o/dO tensor in `layout`: its offset and batch, head, row strides.
fn view_of(t: &Tensor, layout: AttentionLayout) -> View {
    let s = t.strides();
    let (head, row) = match layout {
        AttentionLayout::Bhsd => (s[1], s[2]),
        AttentionLayout::Bshd => (s[2], s[1]),
    };
    View { off: t.offset() as u32, batch: s[0] as u32, head: head as u32, row: row as u32 }
}

/// A strided q/k/v/o/dO view as the kernels address it (attention_params.wgsl's `View`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct View {
    off: u32,
    batch: u32,
    head: u32,
    row: u32,
}

/// The attention kernels' params, mirrored field for field by `struct AttentionParams` in
/// attention_params.wgsl: the sizes, causal (0/1), the scale, the views of q, k, v, o and
/// (backward) dO in slots VIEW_Q..VIEW_DO, the bias view (stride 0 where it broadcasts) and
/// −∞, the log-sum-exp of a row that saw no key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AttentionParams {
    b: u32,
    h: u32,
    h_kv: u32,
    s_q: u32,
    s_k: u32,
    d: u32,
    causal: u32,
    scale: f32,
    views: [View; 5],
    bias_off: u32,
    bias_batch: u32,
    bias_head: u32,
    bias_query: u32,
    bias_key: u32,
    neg_inf: f32,
}

/// View slots of [`AttentionParams::views`], as attention_params.wgsl names them.
const VIEW_O: usize = 3;
const VIEW_DO: usize = 4;

/// The layouts of this family's params structs, for the test of their WGSL mirrors.
pub(crate) fn params_layouts() -> Vec<crate::device::ParamsLayout> {
    use crate::device::params_layout;
    vec![
        params_layout!(View { off, batch, head, row }),
        params_layout!(AttentionParams {
            b,
            h,
            h_kv,
            s_q,
            s_k,
            d,
            causal,
            scale,
            views,
            bias_off,
            bias_batch,
            bias_head,
            bias_query,
            bias_key,
            neg_inf,
        }),
        params_layout!(PackParams { b, h, s, d, pairs }),
        params_layout!(DeltaParams { h, s, d, rows, do_off, do_sb, do_sh, do_ss, o_off, o_sb, o_sh, o_ss }),
    ]
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

/// The tensor-core kernels' requirements: f16, bf16 or f32 inputs (the last two scaled into
/// f16, f32 split into two parts), 16×16×16 f16→f32 cooperative matrices and f16 in shaders,
/// subgroups of exactly 32 with subgroup barriers, a head dim that is a multiple of 16 up to
/// 128, a forward tiling that fits, and every q/k/v offset and stride a multiple of a 16-byte
/// word (rows are read as whole words). The backward also checks dO's and its own tiling.
fn coop_applies(q: &Tensor, k: &Tensor, v: &Tensor, d: &Dims) -> bool {
    let gpu = q.gpu();
    let info = gpu.info();
    let word = 16 / q.dtype().size_in_bytes();
    matches!(q.dtype(), DType::F16 | DType::F32 | DType::BF16)
        && info.has_coop_f16_16x16x16()
        && gpu.has(wgpu::Features::SHADER_F16)
        && gpu.has(wgpu::Features::SUBGROUP | wgpu::Features::SUBGROUP_BARRIER)
        && info.subgroup_sizes == (32, 32)
        && d.d.is_multiple_of(16)
        && d.d <= MAX_HEAD_DIM
        && [q, k, v].iter().all(|t| t.offset() % word == 0 && t.strides()[..3].iter().all(|s| s % word == 0))
        && CoopTiling::preferred_for(q.dtype(), d.d, &info.limits).is_some()
}

fn coop_requirements(gpu: &crate::Gpu) -> String {
    format!(
        "the tensor-core flash kernels need f16, bf16 or f32 q/k/v with offsets and strides that are multiples of 16 bytes, a head dim that is a multiple of 16 up to {MAX_HEAD_DIM}, and an adapter with 16x16x16 f16->f32 cooperative matrices, SHADER_F16 and subgroups of 32 with subgroup barriers (this one: coop {}, subgroups {:?})",
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
/// ```
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
    if let Some(empty) = zero_size_forward(q, &dims, opts) {
        return empty.map(|(out, _)| out);
    }
    match attention_path(q, k, v, opts)? {
        AttentionPath::Naive => attention_naive(q, k, v, opts),
        _ => Ok(attention_forward(q, k, v, opts)?.0),
    }
}

/// The implementation [`attention`] runs for these inputs on their adapter: `FlashCoop`
/// (tensor cores), `Flash` (FMA units) or `Naive`, never `Auto`; the error `attention` would
/// return where the inputs do not fit or a forced path does not apply. Nothing is dispatched.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::attention::{attention_path, AttentionOptions, AttentionPath};
/// let q = Tensor::randn(&gpu, &[1, 4, 256, 64], DType::F32, 0)?;
/// let path = attention_path(&q, &q, &q, &AttentionOptions::default())?;
/// println!("{}", if path == AttentionPath::FlashCoop { "tensor cores" } else { "FMA units" });
/// # Ok(()) }
/// ```
pub fn attention_path(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<AttentionPath> {
    const OP: &str = "attention";
    let dims = check(OP, q, k, v, opts)?;
    forward_path(OP, q, k, v, &dims, opts.path)
}

/// The path `requested` resolves to (see [`attention_path`]).
fn forward_path(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dims: &Dims,
    requested: AttentionPath,
) -> Result<AttentionPath> {
    let coop = coop_applies(q, k, v, dims);
    let flash = flash_applies(dims);
    match requested {
        AttentionPath::Naive => Ok(AttentionPath::Naive),
        AttentionPath::FlashCoop if coop => Ok(AttentionPath::FlashCoop),
        AttentionPath::FlashCoop => Err(Error::InvalidArgument { op, msg: coop_requirements(q.gpu()) }),
        AttentionPath::Auto if coop => Ok(AttentionPath::FlashCoop),
        AttentionPath::Auto | AttentionPath::Flash if flash => Ok(AttentionPath::Flash),
        // Auto never falls back to the S×S path on its own (2.6 GiB at S = 2048 where flash
        // needs 16 MiB): a head dim no flash kernel takes is an error, for `attention` as
        // for `attention_forward`, which says how to ask for the naive path.
        AttentionPath::Auto | AttentionPath::Flash => Err(flash_head_dim_error(op, dims)),
    }
}

/// Attention on zero-size inputs (the crate's rule for zero-size tensors, see the crate
/// docs), nothing dispatched but fills: no batches, heads, query rows or head dims give an
/// empty output; no keys, an output of zeros and a log-sum-exp of −∞ for every query (a
/// query that sees no key, as under a mask that hides them all). None when nothing is empty.
fn zero_size_forward(q: &Tensor, dims: &Dims, opts: &AttentionOptions) -> Option<Result<(Tensor, Tensor)>> {
    let Dims { b, h, s_q, s_k, d, .. } = *dims;
    if b * h * s_q * s_k * d != 0 {
        return None;
    }
    let gpu = q.gpu();
    let out = Tensor::zeros(gpu, &shape_in(opts.layout, b, h, s_q, d), q.dtype());
    let lse = Tensor::full(gpu, &[b, h, s_q], f32::NEG_INFINITY, DType::F32);
    Some(out.and_then(|out| Ok((out, lse?))))
}

/// The FMA flash kernel's refusal of a head dim it does not take.
fn flash_head_dim_error(op: &'static str, dims: &Dims) -> Error {
    Error::InvalidArgument {
        op,
        msg: format!(
            "the flash kernels take head dims that are multiples of 8 up to {MAX_HEAD_DIM}, got {}; \
             pad the head dim, or ask for AttentionPath::Naive (it materialises the [S_q, S_k] scores, and has no backward)",
            dims.d
        ),
    }
}

/// Flash attention forward: the output (q's dtype and layout) and the log-sum-exp of each
/// query row's scaled scores, `[B, H, S_q]` f32, which [`attention_backward`] needs.
///
/// ```
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
    if let Some(empty) = zero_size_forward(q, &dims, opts) {
        return empty;
    }
    // The naive path keeps no log-sum-exp: a request for it here takes Auto's flash kernel,
    // and where only the naive path would apply, the flash kernel's error.
    let requested = match opts.path {
        AttentionPath::Naive => AttentionPath::Auto,
        p => p,
    };
    let coop = match forward_path(OP, q, k, v, &dims, requested)? {
        AttentionPath::FlashCoop => true,
        AttentionPath::Flash => false,
        _ => return Err(flash_head_dim_error(OP, &dims)),
    };
    let gpu = q.gpu();
    let Dims { b, h, s_q, .. } = dims;
    grid_fits(OP, gpu, [s_q.div_ceil(FWD_ROWS), h, b])?;
    let (q, k, v) = (last_dim_contiguous(q)?, last_dim_contiguous(k)?, last_dim_contiguous(v)?);
    let bias = opts.bias.map(|t| bias_view(t, &dims)).transpose()?;
    let out = Tensor::empty(gpu, OP, &shape_in(opts.layout, b, h, s_q, dims.d), q.dtype())?;
    let lse = Tensor::empty(gpu, OP, &[b, h, s_q], DType::F32)?;
    let mut params = base_params(&dims, opts, &q, &k, &v, bias.as_ref().map(|x| &x.1));
    params.views[VIEW_O] = view_of(&out, opts.layout);
    let bias_dtype = bias.as_ref().map(|x| x.0.dtype());
    let limits = &gpu.info().limits;
    let dtype = q.dtype();
    let tiling = match opts.coop_tiling {
        _ if !coop => None,
        None => CoopTiling::preferred_for(dtype, dims.d, limits),
        Some(t) if coop_tilings_for(dtype, dims.d, limits).contains(&t) => Some(t),
        Some(t) => {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "tensor-core tiling {t:?} is not one of coop_tilings_for({dtype:?}) at head dim {} on this adapter ({} bytes of workgroup memory, {} allowed)",
                    dims.d,
                    t.workgroup_bytes_for(dtype, dims.d),
                    limits.max_compute_workgroup_storage_size
                ),
            });
        }
    };
    // f32 and bf16 on tensor cores are scaled by powers of two from their ranges.
    let scaled = tiling.is_some() && dtype != DType::F16;
    let (kernel, rows) = match tiling {
        Some(t) => (coop_kernel(dtype, bias_dtype, dims.d, t), t.rows()),
        None => (fwd_kernel(q.dtype(), bias_dtype, dims.d, flash_tiling(OP, opts, dims.d, limits)?), FWD_ROWS),
    };
    // Unchecked is safe: every element index is offset + b·sb + h·sh + s·ss + d of a view
    // with b < B, h < H (or H_kv), s < S, d < D, guarded by the shader's row and column
    // tests, hence an element of that view and inside its buffer; the bias index is the
    // same with the broadcast strides; out (fresh, contiguous) is written in whole words at
    // even element indices (D is a multiple of 8); lse at (b·H + h)·S_q + s < B·H·S_q;
    // params is one AttentionParams; workgroup arrays are indexed below their sizes.
    let meta = gpu.params_buffer(&params);
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
    // f32 and bf16 on tensor cores: the largest |x| of q, k and v first, which the kernel
    // scales each by (shaders/attention_range.wgsl).
    let ranges = if scaled { Some(input_ranges(&q, &k, &v, None, &dims, &meta)?) } else { None };
    if let Some(r) = &ranges {
        bind.push((7, r.storage()?.buffer()));
    }
    // A workgroup per `rows` query rows of one (batch, head). The tensor-core kernel reads
    // q, k, v rows as 16-byte words: coop_applies checked every offset and stride.
    gpu.dispatch_3d(&kernel, &bind, [s_q.div_ceil(rows) as u32, h as u32, b as u32])?;
    Ok((out, lse))
}

/// What [`attention_backward`] needs from the forward: its inputs and what it returned.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSaved<'a> {
    /// The forward's query, key and value, as passed to it.
    pub q: &'a Tensor,
    /// See `q`.
    pub k: &'a Tensor,
    /// See `q`.
    pub v: &'a Tensor,
    /// The forward's output.
    pub out: &'a Tensor,
    /// The forward's log-sum-exp, `[B, H, S_q]` f32.
    pub lse: &'a Tensor,
}

/// Gradients of [`attention_forward`]: (dq, dk, dv) in the inputs' dtype and layout, from
/// what the forward saw and returned ([`AttentionSaved`]) and the output's gradient `dout`.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::attention::{attention_backward, attention_forward, AttentionOptions, AttentionSaved};
/// let q = Tensor::randn(&gpu, &[1, 2, 50, 32], DType::F32, 0)?;
/// let opts = AttentionOptions { causal: true, ..Default::default() };
/// let (o, lse) = attention_forward(&q, &q, &q, &opts)?;
/// let dout = Tensor::randn(&gpu, o.shape(), DType::F32, 1)?;
/// let saved = AttentionSaved { q: &q, k: &q, v: &q, out: &o, lse: &lse };
/// let (dq, dk, dv) = attention_backward(&saved, &dout, &opts)?;
/// # Ok(()) }
/// ```
pub fn attention_backward(
    saved: &AttentionSaved,
    dout: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let AttentionSaved { q, k, v, .. } = *saved;
    let dims = check(OP, q, k, v, opts)?;
    if dims.b * dims.h * dims.s_q * dims.s_k * dims.d == 0 {
        // Zero-size: every gradient is a sum over nothing, 0 (the crate's rule).
        let zeros = |t: &Tensor| Tensor::zeros(t.gpu(), t.shape(), t.dtype());
        return Ok((zeros(q)?, zeros(k)?, zeros(v)?));
    }
    let (dq, dk, dv) = backward_f32(OP, saved, dout, opts, &dims)?;
    let finish = |t: Tensor| -> Result<Tensor> {
        let t = match opts.layout {
            AttentionLayout::Bhsd => t,
            AttentionLayout::Bshd => t.transpose(1, 2)?.contiguous()?,
        };
        t.to_dtype(q.dtype())
    };
    Ok((finish(dq)?, finish(dk)?, finish(dv)?))
}

/// Gradients of a self-attention whose q, k and v came out of one projection side by side
/// (GPT-2's `c_attn`: `[B, S, 3·H·D]`, viewed as three `[B, S, H, D]` with
/// [`AttentionLayout::Bshd`]), written as that projection's output gradient: one
/// `[B, S, 3, H, D]` tensor in the inputs' dtype, dq, dk, dv in that order. One kernel
/// writes it from the backward's f32 gradients, where [`attention_backward`] and a
/// concatenation take three transposed copies, three casts and the concatenation's
/// copies. q, k, v need not share a buffer, only their shape: S_q = S_k, H_kv = H.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::attention::{attention_backward_qkv, attention_forward, AttentionLayout, AttentionOptions, AttentionSaved};
/// let qkv = Tensor::randn(&gpu, &[2, 40, 3, 4, 16], DType::F32, 0)?; // [B, S, 3, H, D]
/// let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2); // [B, S, H, D] views, no copies
/// let (q, k, v) = (part(0)?, part(1)?, part(2)?);
/// let opts = AttentionOptions { causal: true, layout: AttentionLayout::Bshd, ..Default::default() };
/// let (o, lse) = attention_forward(&q, &k, &v, &opts)?; // [B, S, H, D]
/// let dout = Tensor::randn(&gpu, o.shape(), DType::F32, 1)?;
/// let saved = AttentionSaved { q: &q, k: &k, v: &v, out: &o, lse: &lse };
/// let dqkv = attention_backward_qkv(&saved, &dout, &opts)?;
/// assert_eq!(dqkv.shape(), qkv.shape());
/// # Ok(()) }
/// ```
///
/// Errors: `InvalidArgument` unless the layout is `Bshd`, S_q = S_k, H_kv = H and D is
/// even; then [`attention_backward`]'s.
pub fn attention_backward_qkv(saved: &AttentionSaved, dout: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    const OP: &str = "attention_backward_qkv";
    let AttentionSaved { q, k, v, .. } = *saved;
    let dims = check(OP, q, k, v, opts)?;
    let Dims { b, h, h_kv, s_q, s_k, d } = dims;
    if opts.layout != AttentionLayout::Bshd || s_q != s_k || h_kv != h || d % 2 == 1 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!(
                "takes the Bshd layout with q, k, v of one shape and an even head dim, got {:?} with q {:?}, k {:?}, v {:?}",
                opts.layout,
                q.shape(),
                k.shape(),
                v.shape()
            ),
        });
    }
    let gpu = q.gpu();
    if b * h * s_q * d == 0 {
        return Tensor::zeros(gpu, &[b, s_q, 3, h, d], q.dtype());
    }
    let (dq, dk, dv) = backward_f32(OP, saved, dout, opts, &dims)?;
    let out = Tensor::empty(gpu, OP, &[b, s_q, 3, h, d], q.dtype())?;
    let pairs = b * s_q * 3 * h * d / 2;
    let params =
        gpu.params_buffer(&PackParams { b: b as u32, h: h as u32, s: s_q as u32, d: d as u32, pairs: pairs as u32 });
    // Unchecked is safe: invocation p < pairs = B·S·3·H·D/2 writes word(s) p of out (its
    // size), and reads pair ((b·H + h)·S + s)·D/2 + d/2 of dq, dk or dv with b < B, h < H,
    // s < S, d < D (p decomposed), below B·H·S·D/2, their size.
    let bind = [
        (0, dq.storage()?.buffer()),
        (1, dk.storage()?.buffer()),
        (2, dv.storage()?.buffer()),
        (3, out.storage()?.buffer()),
        (4, &params),
    ];
    gpu.dispatch(&pack_kernel(q.dtype()), &bind, pairs.div_ceil(PACK_WORKGROUP) as u32)?;
    Ok(out)
}

/// Invocations per workgroup of the packing kernel (attention_pack.wgsl).
const PACK_WORKGROUP: usize = 256;

/// δ `[B, H, S_q]` f32: Σ_d dO·O per query row (attention_delta.wgsl), dO and O in
/// `layout`, each read once in its own dtype.
fn attention_delta(
    op: &'static str,
    dout: &Tensor,
    out: &Tensor,
    dims: &Dims,
    layout: AttentionLayout,
) -> Result<Tensor> {
    let Dims { b, h, s_q, d, .. } = *dims;
    let gpu = out.gpu();
    let (dout, out) = (last_dim_contiguous(dout)?, last_dim_contiguous(out)?);
    let rows = b * h * s_q;
    let delta = Tensor::empty(gpu, op, &[b, h, s_q], DType::F32)?;
    let (vd, vo) = (view_of(&dout, layout), view_of(&out, layout));
    let params = gpu.params_buffer(&DeltaParams {
        h: h as u32,
        s: s_q as u32,
        d: d as u32,
        rows: rows as u32,
        do_off: vd.off,
        do_sb: vd.batch,
        do_sh: vd.head,
        do_ss: vd.row,
        o_off: vo.off,
        o_sb: vo.batch,
        o_sh: vo.head,
        o_ss: vo.row,
    });
    // Unchecked is safe: row < rows = B·H·S_q gives b < B, h < H, s < S_q, and d < D, so
    // every element read is one of dO's and O's views (inside their storage, as every view
    // is); delta[row] is inside [B, H, S_q].
    let k = delta_kernel(dout.dtype(), out.dtype());
    gpu.dispatch(
        &k,
        &[(0, dout.storage()?.buffer()), (1, out.storage()?.buffer()), (2, delta.storage()?.buffer()), (3, &params)],
        rows.div_ceil(DELTA_ROWS) as u32,
    )?;
    Ok(delta)
}

/// Query rows per workgroup of attention_delta.wgsl (8 lanes a row).
const DELTA_ROWS: usize = 32;

/// The δ kernel for dO of `do_dtype` and O of `o_dtype`.
fn delta_kernel(do_dtype: DType, o_dtype: DType) -> Kernel {
    Kernel::new(&ATTENTION_DELTA, "attention_delta")
        .sub("LOAD_DO", crate::kernels::wgsl_load("d_out", do_dtype))
        .sub("LOAD_O", crate::kernels::wgsl_load("o", o_dtype))
        .trusted()
}

/// The δ kernel's params, mirrored by `struct DeltaParams` in attention_delta.wgsl: heads,
/// sequence, head dim, rows, then dO's and O's views (offset, batch, head, row strides).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct DeltaParams {
    h: u32,
    s: u32,
    d: u32,
    rows: u32,
    do_off: u32,
    do_sb: u32,
    do_sh: u32,
    do_ss: u32,
    o_off: u32,
    o_sb: u32,
    o_sh: u32,
    o_ss: u32,
}

/// The packing kernel's params, mirrored by `struct PackParams` in attention_pack.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct PackParams {
    b: u32,
    h: u32,
    s: u32,
    d: u32,
    pairs: u32,
}

/// The kernel writing `[B, S, 3, H, D]` of `dtype` from three f32 `[B, H, S, D]`.
fn pack_kernel(dtype: DType) -> Kernel {
    let (word, store) = match dtype {
        DType::F32 => ("vec2<u32>", "out[p] = bitcast<vec2<u32>>(v);"),
        DType::F16 => ("u32", "out[p] = pack_f16x2(v);"),
        DType::BF16 => ("u32", "out[p] = f32_to_bf16_bits(v.x) | (f32_to_bf16_bits(v.y) << 16u);"),
    };
    Kernel::new(&ATTENTION_PACK, "pack_qkv_grads").sub("WORD", word).sub("STORE", store).trusted()
}

/// dq, dk, dv in f32 and the backward's own layout, `[B, H, S_q, D]` and `[B, H_kv, S_k, D]`
/// contiguous, for inputs `check` accepted with no zero-size dim.
fn backward_f32(
    op: &'static str,
    saved: &AttentionSaved,
    dout: &Tensor,
    opts: &AttentionOptions,
    dims: &Dims,
) -> Result<(Tensor, Tensor, Tensor)> {
    let AttentionSaved { q, k, v, out, lse } = *saved;
    let dims = *dims;
    check_backward_inputs(saved, dout, &dims)?;
    let Dims { b, h, h_kv, s_q, s_k, d } = dims;
    let gpu = q.gpu();
    grid_fits(op, gpu, [s_q.div_ceil(BWD_ROWS), h, b])?;
    grid_fits(op, gpu, [s_k.div_ceil(BWD_ROWS), h_kv, b])?;
    let dtype = q.dtype();
    let tiling = backward_tiling(saved, dout, &dims, opts)?;
    // The FMA kernels' head-dim chunk, checked before δ is dispatched.
    let flash_chunk = match tiling {
        Some(_) => 0,
        None => flash_tiling(op, opts, d, &gpu.info().limits)?.head_chunk,
    };
    // δ_i = Σ_d dO_i·O_i in f32, [B, H, S_q].
    let delta = attention_delta(op, dout, out, &dims, opts.layout)?;
    let (q, k, v, dout) =
        (last_dim_contiguous(q)?, last_dim_contiguous(k)?, last_dim_contiguous(v)?, last_dim_contiguous(dout)?);
    let lse = lse.contiguous()?;
    let bias = opts.bias.map(|t| bias_view(t, &dims)).transpose()?;
    let mut params = base_params(&dims, opts, &q, &k, &v, bias.as_ref().map(|x| &x.1));
    params.views[VIEW_DO] = view_of(&dout, opts.layout);
    let meta = gpu.params_buffer(&params);
    // The FMA kernels' dQ by atomic adds in the dK/dV pass (into zeros), or its own pass.
    let has_atomics = gpu.has(wgpu::Features::SHADER_FLOAT32_ATOMIC);
    let atomic_dq = tiling.is_none()
        && match opts.atomic_dq {
            None => has_atomics,
            Some(false) => false,
            Some(true) if has_atomics => true,
            Some(true) => {
                return Err(Error::MissingFeature {
                    op,
                    feature: "SHADER_FLOAT32_ATOMIC",
                    hint: "atomic_dq: Some(true) needs f32 atomics; None takes them where the adapter has them",
                })
            }
        };
    let dq = if atomic_dq {
        Tensor::zeros(gpu, &[b, h, s_q, d], DType::F32)?
    } else {
        Tensor::empty(gpu, op, &[b, h, s_q, d], DType::F32)?
    };
    let dk = Tensor::empty(gpu, op, &[b, h_kv, s_k, d], DType::F32)?;
    let dv = Tensor::empty(gpu, op, &[b, h_kv, s_k, d], DType::F32)?;
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
    // The tensor-core kernels read q, k, v, dO as 16-byte words: the tiling is only Some
    // where every offset and row stride is a multiple of one. Workgroups of 16 keys (dkdv) or
    // queries (dq) per subgroup; of 64 on the FMA kernels.
    let (dkdv, dq_kernel, rows) = match tiling {
        Some(t) => (
            coop_bwd_kernel(dtype, true, bias_dtype, d, t),
            coop_bwd_kernel(dtype, false, bias_dtype, d, t),
            16 * t.subgroups,
        ),
        None => (
            bwd_kernel("attention_bwd_dkdv", q.dtype(), bias_dtype, d, flash_chunk, atomic_dq),
            bwd_kernel("attention_bwd_dq", q.dtype(), bias_dtype, d, flash_chunk, false),
            BWD_ROWS,
        ),
    };
    // bf16 and f32 on tensor cores: the largest |x| of q, k, v and dO first (see the forward).
    let ranges = match tiling {
        Some(_) if dtype != DType::F16 => Some(input_ranges(&q, &k, &v, Some(&dout), &dims, &meta)?),
        _ => None,
    };
    if let Some(r) = &ranges {
        common.push((10, r.storage()?.buffer()));
    }
    let mut bind = common.clone();
    bind.extend([(8, dk.storage()?.buffer()), (9, dv.storage()?.buffer())]);
    if atomic_dq {
        // Adds into dq at ((b·H + h)·S_q + s)·D + d with s < S_q, d < D: in range.
        bind.push((11, dq.storage()?.buffer()));
    }
    gpu.dispatch_3d(&dkdv, &bind, [s_k.div_ceil(rows) as u32, h_kv as u32, b as u32])?;
    if !atomic_dq {
        let mut bind = common;
        bind.push((8, dq.storage()?.buffer()));
        gpu.dispatch_3d(&dq_kernel, &bind, [s_q.div_ceil(rows) as u32, h as u32, b as u32])?;
    }
    Ok((dq, dk, dv))
}

/// The backward's inputs beyond `check`: a head dim the flash kernels take, out and dout
/// of q's shape and dtype, the log-sum-exp `[B, H, S_q]` f32.
fn check_backward_inputs(saved: &AttentionSaved, dout: &Tensor, dims: &Dims) -> Result<()> {
    const OP: &str = "attention_backward";
    let AttentionSaved { q, out, lse, .. } = *saved;
    let Dims { b, h, s_q, .. } = *dims;
    if !flash_applies(dims) {
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
    if lse.shape() != [b, h, s_q] || lse.dtype() != DType::F32 {
        return Err(Error::ShapeMismatch {
            op: "attention_backward lse",
            lhs: lse.shape().to_vec(),
            rhs: vec![b, h, s_q],
        });
    }
    Ok(())
}

/// The tensor-core backward's tiling for these inputs, or None for the FMA kernels: the
/// forced one (an error if it does not fit) or the first that fits, where the adapter and
/// every operand's 16-byte alignment allow the tensor cores and the path asks for them.
fn backward_tiling(
    saved: &AttentionSaved,
    dout: &Tensor,
    dims: &Dims,
    opts: &AttentionOptions,
) -> Result<Option<CoopBwdTiling>> {
    const OP: &str = "attention_backward";
    let AttentionSaved { q, k, v, .. } = *saved;
    let gpu = q.gpu();
    let d = dims.d;
    let dtype = q.dtype();
    let tilings = coop_bwd_tilings_for(dtype, d, &gpu.info().limits);
    let tiling = match opts.coop_bwd_tiling {
        None => tilings.first().copied(),
        Some(t) if tilings.contains(&t) => Some(t),
        Some(t) => {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "tensor-core backward tiling {t:?} is not one of coop_bwd_tilings_for({dtype:?}) at head dim {d} on this adapter ({} bytes of workgroup memory, {} allowed)",
                    t.workgroup_bytes_for(dtype, d),
                    gpu.info().limits.max_compute_workgroup_storage_size
                ),
            });
        }
    };
    let word = 16 / dtype.size_in_bytes();
    let tiling = tiling.filter(|_| {
        coop_applies(q, k, v, dims)
            && dout.offset().is_multiple_of(word)
            && dout.strides()[..3].iter().all(|s| s.is_multiple_of(word))
    });
    let tiling = match opts.path {
        AttentionPath::FlashCoop if tiling.is_none() => {
            return Err(Error::InvalidArgument { op: OP, msg: coop_requirements(gpu) });
        }
        AttentionPath::Flash => None,
        _ => tiling,
    };
    Ok(tiling)
}

/// The reference composition: scores = q·kᵀ (f32) → scale, bias, causal mask → softmax →
/// · v. Materialises `[B, H, S_q, S_k]` scores and probabilities.
///
/// ```
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
) -> AttentionParams {
    let [bias_off, bias_batch, bias_head, bias_query, bias_key] = bias.copied().unwrap_or_default();
    let mut views = [View::default(); 5];
    views[..3].copy_from_slice(&[view_of(q, opts.layout), view_of(k, opts.layout), view_of(v, opts.layout)]);
    AttentionParams {
        b: d.b as u32,
        h: d.h as u32,
        h_kv: d.h_kv as u32,
        s_q: d.s_q as u32,
        s_k: d.s_k as u32,
        d: d.d as u32,
        causal: opts.causal as u32,
        scale: opts.scale.unwrap_or(1.0 / (d.d as f32).sqrt()),
        views,
        bias_off,
        bias_batch,
        bias_head,
        bias_query,
        bias_key,
        neg_inf: f32::NEG_INFINITY,
    }
}

/// Loader body for the FMA-unit flash kernels: [`wgsl_load`], except that an f16 element is
/// picked from its unpacked pair by a select rather than a dynamic vector index.
fn flash_load(buf: &str, dtype: DType) -> String {
    match dtype {
        DType::F16 => {
            format!("let pair = unpack2x16float({buf}[e >> 1u]);\n    return select(pair.x, pair.y, (e & 1u) == 1u);")
        }
        _ => wgsl_load(buf, dtype),
    }
}

fn store_pair(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "o[e] = bitcast<u32>(x);\n    o[e + 1u] = bitcast<u32>(y);",
        DType::F16 => "o[e >> 1u] = pack_f16x2(vec2<f32>(x, y));",
        DType::BF16 => "o[e >> 1u] = f32_to_bf16_bits(x) | (f32_to_bf16_bits(y) << 16u);",
    }
}

/// Tiling of the FMA-unit flash kernels (shaders/attention.wgsl, attention_bwd.wgsl), for
/// every dtype on every adapter: 64 query rows × 64 keys per step, `rows` query rows per
/// invocation in the forward (4: 256 invocations, or 8: 128, each reading half as much
/// workgroup memory per FMA; the backward always takes 4) and the score products in head-dim
/// chunks of `head_chunk` (16, or 32: half the workgroup barriers, 38 KiB of workgroup
/// memory in the forward, 34 KiB in the backward). The ones the library runs are those
/// [`flash_tilings`] lists.
///
/// ```
/// use wgkernels::ops::attention::{flash_tilings, FlashTiling};
/// use wgkernels::wgpu::Limits;
/// let software = Limits { max_compute_workgroup_storage_size: 32 << 10, ..Limits::default() };
/// assert!(flash_tilings(64, &software).iter().all(|t| t.workgroup_bytes() <= 32 << 10));
/// assert_eq!(FlashTiling::parse("8,16"), Some(FlashTiling { rows: 8, head_chunk: 16 }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlashTiling {
    /// Query rows per invocation: 4 or 8.
    pub rows: usize,
    /// Head-dim columns of Q and K staged per step of the S product: 16 or 32.
    pub head_chunk: usize,
}

impl FlashTiling {
    const fn new(rows: usize, head_chunk: usize) -> Self {
        FlashTiling { rows, head_chunk }
    }

    /// Invocations per workgroup: 16 per `rows` query rows of 64.
    pub fn invocations(self) -> usize {
        16 * (64 / self.rows)
    }

    /// Workgroup memory: the staging array (Qᵀ and Kᵀ chunks `[C][68]` f32, reused for V),
    /// P `[64][68]` f32 and the row partials `[64][16]` f32; the same at every head dim.
    pub fn workgroup_bytes(self) -> usize {
        (2 * self.head_chunk * 68 + 64 * 68 + 64 * 16) * 4
    }

    /// The default tiling under the adapter's `limits`: the first of [`flash_tilings`]
    /// (`AttentionOptions::flash_tiling` forces another). None when nothing fits.
    pub fn preferred(d: usize, limits: &wgpu::Limits) -> Option<FlashTiling> {
        flash_tilings(d, limits).first().copied()
    }

    /// `R,C` (rows per invocation, head-dim chunk), as the bench's flags name it.
    pub fn parse(text: &str) -> Option<FlashTiling> {
        let (r, c) = text.split_once(',')?;
        Some(FlashTiling::new(r.trim().parse().ok()?, c.trim().parse().ok()?))
    }

    /// `R,C`, as `parse` reads it.
    pub fn label(self) -> String {
        format!("{},{}", self.rows, self.head_chunk)
    }
}

/// The tilings of the FMA-unit flash kernels that fit the workgroup memory and invocations
/// `limits` allow, fastest first as measured on the H200 (BENCHMARKS.md, eighth round, call
/// 2: f32, B4 H16 S2048, TFLOP/s at D 64 / D 128). Every one takes every head dim the kernel
/// takes. 8 rows per invocation reads half the workgroup memory per FMA but ran slower
/// everywhere there (registers); they stay for adapters where that trade goes the other way.
pub fn flash_tilings(_d: usize, limits: &wgpu::Limits) -> Vec<FlashTiling> {
    const ORDER: [FlashTiling; 4] = [
        FlashTiling::new(4, 32), // 20.7 / 23.2
        FlashTiling::new(4, 16), // 20.3 / 22.4 (the one that fits 32 KiB)
        FlashTiling::new(8, 16), // 18.1 / 20.0
        FlashTiling::new(8, 32), // 18.2 / 18.0
    ];
    ORDER
        .into_iter()
        .filter(|t| {
            t.workgroup_bytes() <= limits.max_compute_workgroup_storage_size as usize
                && t.invocations() <= limits.max_compute_invocations_per_workgroup as usize
        })
        .collect()
}

/// The FMA-unit flash tiling of a call: the one `opts` forces (an error if the adapter's
/// limits do not allow it), else [`FlashTiling::preferred`] (an error if none fits).
fn flash_tiling(op: &'static str, opts: &AttentionOptions, d: usize, limits: &wgpu::Limits) -> Result<FlashTiling> {
    match opts.flash_tiling {
        Some(t) if flash_tilings(d, limits).contains(&t) => Ok(t),
        Some(t) => Err(Error::InvalidArgument {
            op,
            msg: format!(
                "flash tiling {t:?} is not one of flash_tilings on this adapter ({} bytes of workgroup memory and {} invocations, {} and {} allowed)",
                t.workgroup_bytes(),
                t.invocations(),
                limits.max_compute_workgroup_storage_size,
                limits.max_compute_invocations_per_workgroup
            ),
        }),
        None => FlashTiling::preferred(d, limits).ok_or_else(|| Error::InvalidArgument {
            op,
            msg: format!(
                "the flash kernels need {} bytes of workgroup memory, the adapter allows {}",
                FlashTiling::new(4, 16).workgroup_bytes(),
                limits.max_compute_workgroup_storage_size
            ),
        }),
    }
}

fn fwd_kernel(dtype: DType, bias: Option<DType>, d: usize, t: FlashTiling) -> Kernel {
    // O columns in blocks of 64 (4 per invocation); the S product in head-dim chunks of C;
    // V in chunks that fill the staging array (2·64·C floats): 128·C / DP keys.
    let dp = d.next_multiple_of(64);
    let mut k = Kernel::new(&ATTENTION, "attention_fwd")
        .sub("TR", t.rows.to_string())
        .sub("DC", t.head_chunk.to_string())
        .sub("DP", dp.to_string())
        .sub("DS", d.next_multiple_of(t.head_chunk).to_string())
        .sub("VC", (128 * t.head_chunk / dp).to_string())
        .sub("LOAD_Q", flash_load("q", dtype))
        .sub("LOAD_K", flash_load("k", dtype))
        .sub("LOAD_V", flash_load("v", dtype))
        .sub("STORE_O", store_pair(dtype))
        .trusted();
    k = match bias {
        Some(bd) => k.flag("BIAS").sub("LOAD_BIAS", wgsl_load("bias", bd)),
        None => k.sub("LOAD_BIAS", ""),
    };
    k
}

fn bwd_kernel(
    entry: &'static str,
    dtype: DType,
    bias: Option<DType>,
    d: usize,
    head_chunk: usize,
    atomic_dq: bool,
) -> Kernel {
    // As the forward: output columns in blocks of 64, the products in head-dim chunks of C,
    // streamed rows for the outputs in chunks that fill the staging array (2·64·C floats).
    let dp = d.next_multiple_of(64);
    let mut k = Kernel::new(&ATTENTION_BWD, entry)
        .sub("DC", head_chunk.to_string())
        .sub("DP", dp.to_string())
        .sub("DS", d.next_multiple_of(head_chunk).to_string())
        .sub("VC", (128 * head_chunk / dp).to_string())
        .sub("LOAD_Q", flash_load("q", dtype))
        .sub("LOAD_K", flash_load("k", dtype))
        .sub("LOAD_V", flash_load("v", dtype))
        .sub("LOAD_DO", flash_load("dout", dtype))
        .trusted();
    if entry == "attention_bwd_dkdv" {
        k = k.flag("DKDV");
        if atomic_dq {
            k = k.flag("ATOMIC_DQ");
        }
    }
    k = match bias {
        Some(bd) => k.flag("BIAS").sub("LOAD_BIAS", wgsl_load("bias", bd)),
        None => k.sub("LOAD_BIAS", ""),
    };
    k
}

/// Tiling of the tensor-core forward (shaders/attention_coop.wgsl). Every tiling computes the
/// same thing; they differ in speed and in the workgroup memory they take. The ones the
/// library runs are those [`coop_tilings`] lists.
///
/// ```
/// use wgkernels::ops::attention::{coop_tilings, CoopTiling};
/// use wgkernels::wgpu::Limits;
/// let h200 = Limits { max_compute_workgroup_storage_size: 48 << 10, max_compute_invocations_per_workgroup: 1024, ..Limits::default() };
/// let all = coop_tilings(64, &h200);
/// assert!(all.iter().all(|t| t.workgroup_bytes(64) <= 48 << 10));
/// assert_eq!(Some(all[0]), CoopTiling::preferred(64, &h200));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopTiling {
    /// Subgroups (of 32) per workgroup.
    pub subgroups: usize,
    /// Blocks of 16 query rows per subgroup: 1, or 2 (each K/V fragment loaded feeds two
    /// products, at the cost of registers).
    pub row_blocks: usize,
    /// Key (and value) rows per tile staged in workgroup memory.
    pub key_tile: usize,
    /// Keys per chunk a subgroup computes at a time (16 or 32, dividing `key_tile`): the
    /// S and P buffers are sized by it, and chunks need no workgroup barrier between them.
    pub key_chunk: usize,
    /// K/V tile buffers in workgroup memory: 1, or 2 (double-buffered: one workgroup
    /// barrier per tile instead of two).
    pub stages: usize,
}

impl CoopTiling {
    const fn new(subgroups: usize, row_blocks: usize, key_tile: usize, stages: usize, key_chunk: usize) -> Self {
        CoopTiling { subgroups, row_blocks, key_tile, key_chunk, stages }
    }

    /// Query rows per workgroup.
    pub fn rows(self) -> usize {
        16 * self.row_blocks * self.subgroups
    }

    /// Columns of Q staged at a time (all rows of the workgroup): 64, or 32 for 256 rows.
    fn q_cols(self, d: usize) -> usize {
        d.min(if self.rows() > 128 { 32 } else { 64 })
    }

    /// Halves of the staging array: a column slice of Q, then the K/V stages (hi and lo
    /// parts when `split`, f32 inputs).
    fn tile_halves(self, d: usize, split: bool) -> usize {
        let parts = if split { 2 } else { 1 };
        (self.rows() * (self.q_cols(d) + 8)).max(self.stages * 2 * parts * self.key_tile * (d + 8))
    }

    /// Workgroup memory of this tiling at head dim `d` for f16 inputs: staging (f16), S
    /// (f32, columns 20 apart against bank conflicts), P (f16).
    pub fn workgroup_bytes(self, d: usize) -> usize {
        self.workgroup_bytes_for(DType::F16, d)
    }

    /// Workgroup memory at head dim `d` for inputs of `dtype`: f32 inputs are staged as two
    /// f16 parts each (K, V and P twice the f16 figure).
    pub fn workgroup_bytes_for(self, dtype: DType, d: usize) -> usize {
        let split = dtype == DType::F32;
        let p_halves = if split { 2 * 16 } else { 16 };
        self.tile_halves(d, split) * 2
            + self.subgroups * self.row_blocks * self.key_chunk * (S_STRIDE * 4 + p_halves * 2)
    }

    /// The default f16 tiling for head dim `d` under the adapter's `limits`: see
    /// [`CoopTiling::preferred_for`].
    pub fn preferred(d: usize, limits: &wgpu::Limits) -> Option<CoopTiling> {
        Self::preferred_for(DType::F16, d, limits)
    }

    /// The default tiling for inputs of `dtype` at head dim `d` under the adapter's `limits`
    /// (the first of [`coop_tilings_for`]; `AttentionOptions::coop_tiling` forces another).
    /// None when nothing fits.
    pub fn preferred_for(dtype: DType, d: usize, limits: &wgpu::Limits) -> Option<CoopTiling> {
        coop_tilings_for(dtype, d, limits).first().copied()
    }

    /// `S,R,K,T[,C]` (subgroups, row blocks, key tile, stages, key chunk; the chunk C
    /// defaults to the key tile K).
    pub fn parse(text: &str) -> Option<CoopTiling> {
        let n: Vec<usize> = text.split(',').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
        match n[..] {
            [s, r, k, t] => Some(CoopTiling::new(s, r, k, t, k)),
            [s, r, k, t, c] => Some(CoopTiling::new(s, r, k, t, c)),
            _ => None,
        }
    }

    /// `S,R,K,T,C`, as `parse` reads it.
    pub fn label(self) -> String {
        format!("{},{},{},{},{}", self.subgroups, self.row_blocks, self.key_tile, self.stages, self.key_chunk)
    }
}

/// The tilings of the tensor-core forward that fit head dim `d` (row blocks of 2 only up to
/// 64, for registers) in the workgroup memory and invocations `limits` allow, fastest first
/// as measured on the H200 at B4 H16 S2048 (BENCHMARKS.md, seventh round, call 1; TFLOP/s at
/// D 64 / D 128 where it fits; with the S stride of 20 of call 4 the order of the first six
/// held, each 4–16% faster: 137.7 for the first at D 64, 159.9 for the second at D 128).
pub fn coop_tilings(d: usize, limits: &wgpu::Limits) -> Vec<CoopTiling> {
    coop_tilings_for(DType::F16, d, limits)
}

/// The tensor-core forward's tilings for inputs of `dtype` (F16; BF16, scaled into f16, the
/// same; F32 split into two f16 parts: its own list), fastest first, those that fit.
pub fn coop_tilings_for(dtype: DType, d: usize, limits: &wgpu::Limits) -> Vec<CoopTiling> {
    // 16 subgroups first: each K/V tile staged serves 256 query rows (the staging, not the
    // tensor cores, is what more rows per workgroup amortise), and 64-key tiles in 16-key
    // chunks: one workgroup barrier per 64 keys. The small ones are for adapters with less
    // workgroup memory or fewer invocations.
    const ORDER: [CoopTiling; 17] = [
        CoopTiling::new(16, 1, 64, 1, 16), // 120.6 / —
        CoopTiling::new(16, 1, 32, 1, 16), // 112.6 / 148.7
        CoopTiling::new(16, 1, 32, 2, 16), // 112.0 / —
        CoopTiling::new(16, 1, 16, 2, 16), // 102.1 / 137.0
        CoopTiling::new(16, 1, 16, 1, 16), // 99.5 / 135.3
        CoopTiling::new(8, 1, 16, 2, 16),  // 80.9 / 119.2
        CoopTiling::new(8, 1, 32, 2, 16),  // 85.9 / 113.6
        CoopTiling::new(8, 1, 32, 2, 32),  // 87.0 / —
        CoopTiling::new(8, 1, 32, 1, 32),  // 86.4 / 110.7
        CoopTiling::new(8, 1, 64, 1, 16),  // 86.1 / 100.0
        CoopTiling::new(8, 1, 16, 1, 16),  // 80.1 / 117.6
        CoopTiling::new(8, 1, 128, 1, 16), // 77.7 / —
        CoopTiling::new(4, 1, 32, 1, 32),  // 73.8 / 46.5
        CoopTiling::new(8, 2, 32, 1, 16),  // 70.9 / —
        CoopTiling::new(4, 2, 32, 2, 32),  // 61.0 / —
        CoopTiling::new(2, 1, 32, 1, 16),  // 43.3 / 30.0
        CoopTiling::new(2, 1, 32, 1, 32),  // 35.7 / 30.2
    ];
    // f32, split into f16 hi and lo parts, stages twice the K/V and P bytes: 16 subgroups do
    // not fit 48 KiB. H200, ninth round, call 2: TFLOP/s at S 2048 D 64 / D 128 where it
    // fits, S 8192 D 64 in brackets. The first is 1% behind the second at S 2048 and 6% ahead
    // at S 8192.
    const SPLIT_ORDER: [CoopTiling; 11] = [
        CoopTiling::new(8, 1, 32, 1, 16), // 49.6 / — (58.2)
        CoopTiling::new(8, 1, 16, 1, 16), // 50.1 / 66.8 (54.7)
        CoopTiling::new(8, 1, 16, 2, 16), // 50.1 / — (54.6)
        CoopTiling::new(4, 2, 16, 2, 16), // 33.4 / — (41.4)
        CoopTiling::new(4, 2, 32, 1, 16), // 29.6 / — (38.2)
        CoopTiling::new(4, 1, 16, 2, 16), // 25.4 / 23.0 (29.0)
        CoopTiling::new(4, 1, 32, 1, 32), // 23.4 / — (29.8)
        CoopTiling::new(4, 1, 32, 2, 16), // 21.4 / — (26.3)
        CoopTiling::new(4, 1, 64, 1, 16), // 21.1 / — (24.2)
        CoopTiling::new(2, 1, 32, 1, 16), // 14.2 / 11.0 (17.7)
        CoopTiling::new(2, 1, 32, 1, 32), // 8.7 / 12.1 (10.3)
    ];
    let order: &[CoopTiling] = if dtype == DType::F32 { &SPLIT_ORDER } else { &ORDER };
    order
        .iter()
        .copied()
        .filter(|t| {
            (t.row_blocks == 1 || d <= 64)
                && t.workgroup_bytes_for(dtype, d) <= limits.max_compute_workgroup_storage_size as usize
                && 32 * t.subgroups <= limits.max_compute_invocations_per_workgroup as usize
        })
        .collect()
}

/// Column stride (elements) of the f32 buffers that S (and in the backward dP) accumulators
/// are stored to, column-major, for the lanes. An accumulator lane holds two neighbouring
/// columns of a row; with a stride of 20 words the 32 lanes of a store hit 32 different
/// banks (with 16, four lanes shared each bank). H200, seventh round, call 4: forward 13%
/// faster, backward 8%. (A padded P stride of 24 halves measured 0–3.5% faster alone and
/// up to 30% slower in the backward with this one; the default tilings have no room for it.)
const S_STRIDE: usize = 20;

/// WGSL for an f16 fragment `name` (use A or B) loaded by `load` (coopLoad, coopLoadT) from
/// `array` at `at`, row stride `stride`, the statement then indented by `indent`; the offset is
/// bound to a name first (naga 30 fails on a coop pointer indexed by an inline expression).
fn frag_load(name: &str, at: &str, usage: &str, load: &str, array: &str, stride: &str, indent: &str) -> String {
    format!("let {name}_at = {at};{indent}let {name} = {load}<coop_mat16x16<f16, {usage}>>(&{array}[{name}_at], {stride});{indent}")
}

/// How a tensor-core kernel holds its inputs' elements in f16: elements per 16-byte word, the
/// parts of each operand (f32: hi and lo; f16 and bf16: one), and the products of a pair of
/// operands' parts (f32: the two small terms first, then hi·hi; lo·lo, below 2^−22 relative,
/// is dropped).
struct Parts {
    epw: usize,
    names: &'static [&'static str],
    terms: &'static [(&'static str, &'static str)],
}

impl Parts {
    fn of(dtype: DType) -> Parts {
        match dtype {
            DType::F32 => Parts { epw: 4, names: &["hi", "lo"], terms: &[("lo", "hi"), ("hi", "lo"), ("hi", "hi")] },
            DType::F16 | DType::BF16 => Parts { epw: 8, names: &["hi"], terms: &[("hi", "hi")] },
        }
    }

    /// ` + step` for a lo part: where it lies past its hi part (`step` halves on).
    fn lo_at(part: &str, step: &str) -> String {
        if part == "lo" {
            format!(" + {step}")
        } else {
            String::new()
        }
    }

    /// The shader flags of inputs of `dtype` (see shaders/attention_coop.wgsl).
    fn flags(k: Kernel, dtype: DType) -> Kernel {
        match dtype {
            DType::F16 => k.flag("HALF"),
            DType::F32 => k.flag("SPLIT").flag("SCALED"),
            DType::BF16 => k.flag("BF16").flag("SCALED"),
        }
    }
}

/// The tensor-core forward for head dim `d` (a multiple of 16) and tiling `t`: the template
/// attention_coop.wgsl, its fragment code unrolled here (`coop_q_stage`, `coop_s_mma`,
/// `coop_pv`, `coop_o_code`).
fn coop_kernel(dtype: DType, bias: Option<DType>, d: usize, t: CoopTiling) -> Kernel {
    let split = dtype == DType::F32;
    let blocks = t.row_blocks;
    let Parts { epw, names: parts, .. } = Parts::of(dtype);
    let qc = t.q_cols(d);
    let (o_decl, rescale, o_store) = coop_o_code(blocks, d / 16);
    let mut k = Kernel::new(&ATTENTION_COOP, "attention_coop")
        .sub("D", d.to_string())
        .sub("SGS", t.subgroups.to_string())
        .sub("RB", blocks.to_string())
        .sub("BK", t.key_tile.to_string())
        .sub("KC", t.key_chunk.to_string())
        .sub("SST", S_STRIDE.to_string())
        .sub("HAS_BIAS", bias.is_some().to_string())
        .sub("STAGES", t.stages.to_string())
        .sub("TILE_HALVES", t.tile_halves(d, split).to_string())
        .sub("EPW", epw.to_string())
        .sub("PARTS", parts.len().to_string())
        .sub("P_SHIFT", if split { "6.0" } else { "0.0" })
        .sub("STORE_O", store_pair(dtype))
        .sub("QC", qc.to_string())
        .sub("Q_STAGE", coop_q_stage(dtype, d, t))
        .sub("O_DECL", o_decl)
        .sub("S_MMA", coop_s_mma(dtype, d, t))
        .sub("PV_MMA", coop_pv(dtype, d, t))
        .sub("O_RESCALE", rescale)
        .sub("O_STORE", o_store)
        .trusted();
    k = Parts::flags(k, dtype);
    k = match bias {
        Some(bd) => k.flag("BIAS").sub("LOAD_BIAS", wgsl_load("bias", bd)),
        None => k.sub("LOAD_BIAS", ""),
    };
    k
}

/// The forward's Q staging: Q in column slices of QC (64, or 32 for 256 rows), each slice
/// staged (all BQ rows), then every subgroup loads its fragments of it; split, the hi parts
/// first, then the lo parts (Q read twice, to keep the staging area the size of one part).
fn coop_q_stage(dtype: DType, d: usize, t: CoopTiling) -> String {
    let frags = d / 16;
    let blocks = t.row_blocks;
    let Parts { epw, names: parts, .. } = Parts::of(dtype);
    let qc = t.q_cols(d);
    let per_slice = qc / 16;
    let mut q_stage = String::new();
    for slice in 0..d.div_ceil(qc) {
        let words = (d - qc * slice).min(qc) / epw;
        for part in parts {
            let put = match dtype {
                DType::F32 => format!("put4(r * QS + 4u * w, {part}4(qw, fq))"),
                DType::BF16 => "put8_bf16(r * QS + 8u * w, qw, fq)".to_string(),
                DType::F16 => "put8(r * QS + 8u * w, qw)".to_string(),
            };
            q_stage += &format!(
                "for (var idx = lid; idx < BQ * {words}u; idx += THREADS) {{\n        let r = idx / {words}u;\n        let w = idx % {words}u;\n        \
                 var qw = vec4<u32>(0u);\n        if (q0 + r < S_q) {{\n            qw = q[row_base(VIEW_Q, b, h, q0 + r) / EPW + {}u + w];\n        }}\n        \
                 {put};\n    }}\n    workgroupBarrier();\n    ",
                qc / epw * slice
            );
            for c in per_slice * slice..(per_slice * (slice + 1)).min(frags) {
                for rb in 0..blocks {
                    q_stage += &format!(
                        "let qo_{part}_{rb}_{c} = (sg_row + {}u) * QS + {}u;\n    let q_{part}_{rb}_{c} = coopLoadT<coop_mat16x16<f16, A>>(&tiles[qo_{part}_{rb}_{c}], QS);\n    ",
                        16 * rb,
                        (c - per_slice * slice) * 16
                    );
                }
            }
            q_stage += "workgroupBarrier();\n    ";
        }
    }
    q_stage
}

/// The forward's output fragments: their declarations (after the S and P buffer bases of
/// each row block), the rescale by each row's alpha when the running max moves, and the
/// final store through the subgroup's scratch. Returns (declarations, rescale, store).
fn coop_o_code(blocks: usize, frags: usize) -> (String, String, String) {
    let mut o_decl = String::new();
    // S (and bounce) buffer of row block rb at (sg·RB + rb)·SST·KC, its P buffer at
    // (sg·RB + rb)·16·KC, bound to names first
    // (naga 30 fails on a coop pointer indexed by an inline expression).
    let mut rescale = String::from("subgroupBarrier();\n            ");
    let mut o_store = String::from("subgroupBarrier();\n    ");
    let mut bases = String::new();
    for rb in 0..blocks {
        bases += &format!(
            "let block_{rb} = (sg * RB + {rb}u) * SST * KC;\n    let pblock_{rb} = (sg * RB + {rb}u) * 16u * KC;\n    "
        );
    }
    let block_base = |rb: usize| format!("block_{rb}");
    for rb in 0..blocks {
        for c in 0..frags {
            o_decl += &format!("var o_{rb}_{c} = coop_mat16x16<f32, C>();\n    ");
            rescale += &format!(
                "coopStore(o_{rb}_{c}, &scratch[{at}], 16u);\n            subgroupBarrier();\n            \
                 scale_rows({at}, lane, alpha[{rb}u]);\n            subgroupBarrier();\n            \
                 o_{rb}_{c} = coopLoad<coop_mat16x16<f32, C>>(&scratch[{at}], 16u);\n            subgroupBarrier();\n            ",
                at = block_base(rb)
            );
            o_store += &format!(
                "coopStore(o_{rb}_{c}, &scratch[{at}], 16u);\n    subgroupBarrier();\n    \
                 store_fragment({at}, lane, inv_l[{rb}u], b, h, q0 + sg_row + {}u, {}u);\n    subgroupBarrier();\n    ",
                16 * rb,
                16 * c,
                at = block_base(rb)
            );
        }
    }
    (bases + &o_decl, rescale, o_store)
}

/// The forward's S products for the chunk at k_at: block (rb, j) = Σ_c Q_(rb, c) · Kᵀ_(c, j),
/// each K fragment loaded once for all blocks, then every block into the subgroup's S buffer.
fn coop_s_mma(dtype: DType, d: usize, t: CoopTiling) -> String {
    let frags = d / 16;
    let key_frags = t.key_chunk / 16;
    let blocks = t.row_blocks;
    let Parts { names: parts, terms, .. } = Parts::of(dtype);
    let lo_at = Parts::lo_at;
    let block_base = |rb: usize| format!("block_{rb}");
    let mut s_mma = String::new();
    // A lo part lies past its hi part: K and V one tile on, P P_LO halves on.
    let mut s_store = String::new();
    for j in 0..key_frags {
        for rb in 0..blocks {
            s_mma += &format!("var s_{rb}_{j} = coop_mat16x16<f32, C>();\n            ");
        }
        for c in 0..frags {
            for part in parts {
                let at = format!("k_at + {}u * KS + {}u{}", j * 16, c * 16, lo_at(part, "BK * KS"));
                s_mma +=
                    &frag_load(&format!("k_{part}_{c}_{j}"), &at, "B", "coopLoad", "tiles", "KS", "\n            ");
            }
            for rb in 0..blocks {
                for (a, bp) in terms {
                    s_mma += &format!(
                        "s_{rb}_{j} = coopMultiplyAdd(q_{a}_{rb}_{c}, k_{bp}_{c}_{j}, s_{rb}_{j});\n            "
                    );
                }
            }
        }
        for rb in 0..blocks {
            s_store += &format!(
                "let so_{rb}_{j} = {} + {}u;\n            coopStore(s_{rb}_{j}, &scratch[so_{rb}_{j}], SST);\n            ",
                block_base(rb),
                j * 16 * S_STRIDE
            );
        }
    }
    s_mma + &s_store
}

/// The forward's P·V products: O_(rb, j) += P_(rb, kb) · V_(kb, j), each V fragment loaded
/// once for all blocks.
fn coop_pv(dtype: DType, d: usize, t: CoopTiling) -> String {
    let frags = d / 16;
    let key_frags = t.key_chunk / 16;
    let blocks = t.row_blocks;
    let Parts { names: parts, terms, .. } = Parts::of(dtype);
    let lo_at = Parts::lo_at;
    let mut pv = String::new();
    for kb in 0..key_frags {
        for rb in 0..blocks {
            for part in parts {
                let at = format!("pblock_{rb} + {}u{}", kb * 256, lo_at(part, "P_LO"));
                pv += &frag_load(&format!("p_{part}_{rb}_{kb}"), &at, "A", "coopLoad", "p_tile", "16u", "\n        ");
            }
        }
        for j in 0..frags {
            for part in parts {
                let at = format!("v_chunk + {}u * KS + {}u{}", kb * 16, j * 16, lo_at(part, "BK * KS"));
                pv += &frag_load(&format!("v_{part}_{kb}_{j}"), &at, "B", "coopLoadT", "tiles", "KS", "\n        ");
            }
            for rb in 0..blocks {
                for (a, bp) in terms {
                    pv += &format!(
                        "o_{rb}_{j} = coopMultiplyAdd(p_{a}_{rb}_{kb}, v_{bp}_{kb}_{j}, o_{rb}_{j});\n        "
                    );
                }
            }
        }
    }
    pv
}

/// The range pass before the tensor-core kernels on f32 (split) and bf16 inputs: of q, k, v,
/// and dO too for the backward (`dout`).
fn range_kernel(dtype: DType, dout: bool) -> Kernel {
    let mut k =
        Kernel::new(&ATTENTION_RANGE, "attention_range").sub("EPW", (16 / dtype.size_in_bytes()).to_string()).trusted();
    if dtype == DType::BF16 {
        k = k.flag("BF16");
    }
    if dout {
        k = k.flag("DOUT");
    }
    k
}

/// The largest |x| of q, k, v (and `dout`'s) as f32 bits in a 4-word tensor, for the scaled
/// tensor-core kernels. `meta` holds the attention params (dO's view at 30 when `dout`).
fn input_ranges(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dout: Option<&Tensor>,
    d: &Dims,
    meta: &wgpu::Buffer,
) -> Result<Tensor> {
    let gpu = q.gpu();
    let dtype = q.dtype();
    let ranges = Tensor::zeros(gpu, &[4], DType::F32)?;
    let most_words = (d.b * d.h * d.s_q.max(d.s_k) * d.d * dtype.size_in_bytes() / 16).div_ceil(256);
    // Unchecked is safe by the attention kernels' argument (every word of a view, rows below
    // S and columns below D); ranges has the 4 words written.
    let mut bind: Vec<(u32, &wgpu::Buffer)> = vec![
        (0, q.storage()?.buffer()),
        (1, k.storage()?.buffer()),
        (2, v.storage()?.buffer()),
        (3, ranges.storage()?.buffer()),
        (4, meta),
    ];
    if let Some(t) = dout {
        bind.push((5, t.storage()?.buffer()));
    }
    let tensors = if dout.is_some() { 4 } else { 3 };
    gpu.dispatch_3d(&range_kernel(dtype, dout.is_some()), &bind, [most_words.clamp(1, 1024) as u32, tensors, 1])?;
    Ok(ranges)
}

/// Tiling of the tensor-core backward (shaders/attention_coop_bwd.wgsl): subgroups per
/// workgroup (each owning 16 fixed rows: keys in dkdv, queries in dq), streamed rows per
/// tile, rows per chunk a subgroup computes at a time, and tile buffers (1 or 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopBwdTiling {
    /// Subgroups (of 32) per workgroup, each owning 16 rows.
    pub subgroups: usize,
    /// Streamed rows per tile staged in workgroup memory.
    pub tile: usize,
    /// Rows per chunk a subgroup computes at a time (16 or 32, dividing `tile`).
    pub chunk: usize,
    /// Tile buffers: 1, or 2 (double-buffered).
    pub stages: usize,
}

impl CoopBwdTiling {
    /// Fixed rows are staged in column slices of up to 64.
    fn fixed_cols(d: usize) -> usize {
        d.min(64)
    }

    /// Halves of the staging array: the streamed tiles (hi and lo parts when `split`, f32
    /// inputs), or at the start a column slice of the fixed rows.
    fn tile_halves(self, d: usize, split: bool) -> usize {
        let parts = if split { 2 } else { 1 };
        (self.stages * 2 * parts * self.tile * (d + 8)).max(16 * self.subgroups * (Self::fixed_cols(d) + 8))
    }

    /// Workgroup memory at head dim `d` for f16 inputs: staging (f16), S and dP (f32, columns
    /// 20 apart against bank conflicts), P and dS (f16), the dkdv kernel's per-query statistics.
    pub fn workgroup_bytes(self, d: usize) -> usize {
        self.workgroup_bytes_for(DType::F16, d)
    }

    /// Workgroup memory at head dim `d` for inputs of `dtype` (bf16 as f16; f32 stages two
    /// f16 parts of the streamed tiles and of P and dS).
    pub fn workgroup_bytes_for(self, dtype: DType, d: usize) -> usize {
        let split = dtype == DType::F32;
        let parts = if split { 2 } else { 1 };
        self.tile_halves(d, split) * 2
            + self.subgroups * self.chunk * (S_STRIDE * 8 + 16 * 4 * parts)
            + self.stages * 2 * self.tile * 4
    }

    /// `S,T[,C,N]` (chunk and stages default to the tile and 1), as `label` writes it.
    pub fn parse(text: &str) -> Option<CoopBwdTiling> {
        let n: Vec<usize> = text.split(',').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
        match n[..] {
            [subgroups, tile] => Some(CoopBwdTiling { subgroups, tile, chunk: tile, stages: 1 }),
            [subgroups, tile, chunk, stages] => Some(CoopBwdTiling { subgroups, tile, chunk, stages }),
            _ => None,
        }
    }

    /// `S,T,C,N` (subgroups, tile rows, chunk rows, stages).
    pub fn label(self) -> String {
        format!("{},{},{},{}", self.subgroups, self.tile, self.chunk, self.stages)
    }
}

/// The tilings of the tensor-core backward that fit head dim `d` under `limits`, the
/// default first, in the measured order below (`AttentionOptions::coop_bwd_tiling` forces
/// another).
///
/// H200, B4 H16 S2048 f16, TFLOP/s counted as 2.5× the forward's FLOPs (BENCHMARKS.md,
/// seventh round, call 1; call 4's S stride of 20 kept the order of the first five, 2–12%
/// faster: 62.7 for the first at D 64, 87.2 for 8,32,16,1 at D 128), D 64 / D 128: 8,64,16,1 58.0 / —;
/// 8,32,16,2 55.9 / —; 8,32,16,1 55.3 / 84.4; 4,32,16,1 53.4 / 40.2; 4,16,16,1 49.8 / 71.7;
/// 8,16,16,1 48.1 / 74.7; 4,32,16,2 33.6 / 40.8; 4,32,32,1 32.1 / 36.6; 4,64,16,1 31.4 / 45.8.
pub fn coop_bwd_tilings(d: usize, limits: &wgpu::Limits) -> Vec<CoopBwdTiling> {
    coop_bwd_tilings_for(DType::F16, d, limits)
}

/// The tensor-core backward's tilings for inputs of `dtype`: bf16 takes f16's; f32, split
/// into two f16 parts, its own (its tiles take twice the memory: at D 64 and 128 only 4 and
/// 2 subgroups fit 48 KiB). H200, ninth round, call 6, f32 B4 H16 S2048, D 64 / D 128:
/// 4,16,16,1 28.6 / 24.2; 4,32,16,1 20.5 / —; 2,16,16,1 15.7 / 11.1; 2,32,16,1 8.4 / 8.8.
pub fn coop_bwd_tilings_for(dtype: DType, d: usize, limits: &wgpu::Limits) -> Vec<CoopBwdTiling> {
    let t = |subgroups, tile, chunk, stages| CoopBwdTiling { subgroups, tile, chunk, stages };
    // f32: the measured four first, then f16's order for adapters with more memory.
    let split_first = if dtype == DType::F32 {
        vec![t(4, 16, 16, 1), t(4, 32, 16, 1), t(2, 16, 16, 1), t(2, 32, 16, 1)]
    } else {
        Vec::new()
    };
    // Each head-dim class in its measured order (the last two of the D 128 list do not
    // fit 48 KiB there; they stay for adapters with more).
    let order = if d <= 64 {
        [t(8, 64, 16, 1), t(8, 32, 16, 2), t(8, 32, 16, 1), t(4, 32, 16, 1), t(4, 16, 16, 1)].into_iter().chain([
            t(8, 16, 16, 1),
            t(4, 32, 16, 2),
            t(4, 32, 32, 1),
            t(4, 64, 16, 1),
        ])
    } else {
        [t(8, 32, 16, 1), t(8, 16, 16, 1), t(4, 16, 16, 1), t(4, 64, 16, 1), t(4, 32, 16, 2)].into_iter().chain([
            t(4, 32, 16, 1),
            t(4, 32, 32, 1),
            t(8, 64, 16, 1),
            t(8, 32, 16, 2),
        ])
    };
    split_first
        .iter()
        .copied()
        .chain(order.filter(|t| !split_first.contains(t)))
        .filter(|t| {
            t.workgroup_bytes_for(dtype, d) <= limits.max_compute_workgroup_storage_size as usize
                && 32 * t.subgroups <= limits.max_compute_invocations_per_workgroup as usize
        })
        .collect()
}

/// A tensor-core backward kernel (`dkdv`: dK and dV; else dQ) for head dim `d`, a multiple
/// of 16: the template attention_coop_bwd.wgsl, its fragment code unrolled here (the fixed
/// rows' fragments, then `coop_bwd_products`, `coop_bwd_accumulate`, the guarded stores).
fn coop_bwd_kernel(dtype: DType, dkdv: bool, bias: Option<DType>, d: usize, t: CoopBwdTiling) -> Kernel {
    let frags = d / 16;
    let fc = CoopBwdTiling::fixed_cols(d);
    let split = dtype == DType::F32;
    let Parts { epw, names: parts, .. } = Parts::of(dtype);
    // The fixed rows: (view slot, head, first row, limit, fragment name) per tensor.
    let fixed: [(&str, &str, &str, &str, &str); 2] = if dkdv {
        [("VIEW_K", "kv_h", "j0", "S_k", "ka"), ("VIEW_V", "kv_h", "j0", "S_k", "va")]
    } else {
        [("VIEW_Q", "h", "q0", "S_q", "qa"), ("VIEW_DO", "h", "q0", "S_q", "da")]
    };
    // Each tensor in column slices of fc: stage the slice (all 16·SGS rows), barrier, every
    // subgroup loads its fragments of it, barrier.
    let mut fixed_frags = String::new();
    for (at, head, first, limit, name) in fixed {
        for slice in 0..d.div_ceil(fc) {
            let words = (d - fc * slice).min(fc) / epw;
            for (pi, part) in parts.iter().enumerate() {
                fixed_frags += &format!(
                    "stage_block({at}, b, {head}, {first}, 16u * SGS, {limit}, {}u, {words}u, FS, 0u, lid, {pi}u);\n    workgroupBarrier();\n    ",
                    fc / epw * slice
                );
                for c in (fc / 16 * slice)..(fc / 16 * (slice + 1)).min(frags) {
                    fixed_frags += &format!(
                        "let {name}o_{part}_{c} = sg * 16u * FS + {}u;\n    let {name}_{part}_{c} = coopLoadT<coop_mat16x16<f16, A>>(&tiles[{name}o_{part}_{c}], FS);\n    ",
                        16 * c - fc * slice
                    );
                }
                fixed_frags += "workgroupBarrier();\n    ";
            }
        }
    }
    // Accumulators: a (dK or dQ) and, for dkdv, b (dV).
    let mut acc_decl = String::new();
    for c in 0..frags {
        acc_decl += &format!("var acc_a_{c} = coop_mat16x16<f32, C>();\n    ");
        if dkdv {
            acc_decl += &format!("var acc_b_{c} = coop_mat16x16<f32, C>();\n    ");
        }
    }
    // Finished accumulators bounce through the subgroup's S block (row-major) to guarded
    // f32 stores: dK and dQ times the scale, each with the factors of a bf16 kernel's inputs
    // taken out (1 for f16).
    let (r0, limit) = if dkdv { ("j0 + sg * 16u", "S_k") } else { ("q0 + sg * 16u", "S_q") };
    let mut acc_store = String::from("subgroupBarrier();\n    ");
    for c in 0..frags {
        let mut outs = vec![("acc_a", "false", "scale * unscale_a")];
        if dkdv {
            outs.push(("acc_b", "true", "unscale_b"));
        }
        for (acc, to_b, factor) in outs {
            acc_store += &format!(
                "coopStoreT({acc}_{c}, &s_tile[s_base], 16u);\n    subgroupBarrier();\n    \
                 store_rows(s_base, lane, {to_b}, out0, {r0}, {limit}, {}u, {factor});\n    subgroupBarrier();\n    ",
                16 * c
            );
        }
    }
    let entry = if dkdv { "coop_bwd_dkdv" } else { "coop_bwd_dq" };
    let mut k = Kernel::new(&ATTENTION_COOP_BWD, entry)
        .sub("D", d.to_string())
        .sub("SGS", t.subgroups.to_string())
        .sub("BT", t.tile.to_string())
        .sub("CH", t.chunk.to_string())
        .sub("SST", S_STRIDE.to_string())
        .sub("STAGES", t.stages.to_string())
        .sub("FS", (fc + 8).to_string())
        .sub("TILE_HALVES", t.tile_halves(d, split).to_string())
        .sub("EPW", epw.to_string())
        .sub("PARTS", parts.len().to_string())
        .sub("FIXED_FRAGS", fixed_frags)
        .sub("ACC_DECL", acc_decl)
        .sub("PRODUCTS", coop_bwd_products(dtype, dkdv, d, t))
        .sub("ACCUMULATE", coop_bwd_accumulate(dtype, dkdv, d, t))
        .sub("ACC_STORE", acc_store)
        .trusted();
    if dkdv {
        k = k.flag("DKDV");
    }
    k = Parts::flags(k, dtype);
    k = match bias {
        Some(bd) => k.flag("BIAS").sub("LOAD_BIAS", wgsl_load("bias", bd)),
        None => k.sub("LOAD_BIAS", ""),
    };
    k
}

/// The backward's S (Sᵀ) and dP (dPᵀ) blocks: the fixed fragments times the streamed tiles
/// read column-major (the transposes), stored column-major for the lanes.
fn coop_bwd_products(dtype: DType, dkdv: bool, d: usize, t: CoopBwdTiling) -> String {
    let (frags, blocks) = (d / 16, t.chunk / 16);
    let Parts { names: parts, terms, .. } = Parts::of(dtype);
    let lo_at = Parts::lo_at;
    let (s_a, dp_a) = if dkdv { ("ka", "va") } else { ("qa", "da") };
    let ind = "\n            ";
    let mut products = String::new();
    let mut products_store = String::new();
    for t in 0..blocks {
        products += &format!("var st_{t} = coop_mat16x16<f32, C>();{ind}var dpt_{t} = coop_mat16x16<f32, C>();{ind}");
        for c in 0..frags {
            for (tile, frag, fixed_frag, acc) in [("a_at", "tb", s_a, "st"), ("b_at", "ub", dp_a, "dpt")] {
                for part in parts {
                    let at = format!("{tile} + {}u * RS + {}u{}", 16 * t, 16 * c, lo_at(part, "LO"));
                    products += &frag_load(&format!("{frag}_{part}_{t}_{c}"), &at, "B", "coopLoad", "tiles", "RS", ind);
                }
                for (a, b) in terms {
                    products += &format!(
                        "{acc}_{t} = coopMultiplyAdd({fixed_frag}_{a}_{c}, {frag}_{b}_{t}_{c}, {acc}_{t});{ind}"
                    );
                }
            }
        }
        products_store += &format!(
            "let so_{t} = s_base + {}u;{ind}coopStore(st_{t}, &s_tile[so_{t}], SST);{ind}coopStore(dpt_{t}, &dp_tile[so_{t}], SST);{ind}",
            16 * S_STRIDE * t
        );
    }
    products + &products_store
}

/// The backward's accumulation: for dkdv, dV += Pᵀ·dO (dO rows of the B tile) and
/// dK += dSᵀ·Q (Q rows of the A tile); for dq, dQ += dS·K (K rows of the A tile). Streamed
/// rows read row-major.
fn coop_bwd_accumulate(dtype: DType, dkdv: bool, d: usize, t: CoopBwdTiling) -> String {
    let (frags, blocks) = (d / 16, t.chunk / 16);
    let Parts { names: parts, terms, .. } = Parts::of(dtype);
    let lo_at = Parts::lo_at;
    let ind = "\n            ";
    let mut accumulate = String::new();
    // (A operand from its tile, B tile, fragment names, accumulator) per product.
    let mut pairs = vec![("ds_tile", "a_at", "dsa", "rb", "acc_a")];
    if dkdv {
        pairs.push(("p_tile", "b_at", "pa", "wb", "acc_b"));
    }
    for t in 0..blocks {
        for (a_tile, _, a_name, _, _) in &pairs {
            for part in parts {
                let at = format!("p_base + {}u{}", 256 * t, lo_at(part, "P_LO"));
                accumulate += &frag_load(&format!("{a_name}_{part}_{t}"), &at, "A", "coopLoad", a_tile, "16u", ind);
            }
        }
        for c in 0..frags {
            for (_, b_tile, a_name, b_name, acc) in &pairs {
                for part in parts {
                    let at = format!("{b_tile} + {}u * RS + {}u{}", 16 * t, 16 * c, lo_at(part, "LO"));
                    accumulate +=
                        &frag_load(&format!("{b_name}_{part}_{t}_{c}"), &at, "B", "coopLoadT", "tiles", "RS", ind);
                }
                for (a, b) in terms {
                    accumulate += &format!(
                        "{acc}_{c} = coopMultiplyAdd({a_name}_{a}_{t}, {b_name}_{b}_{t}_{c}, {acc}_{c});{ind}"
                    );
                }
            }
        }
    }
    accumulate
}

/// Every specialisation the attention ops can launch (all head-dim paddings, dtypes, with
/// and without a bias), for the portability test.
pub fn all_kernels() -> Vec<Kernel> {
    let mut all: Vec<Kernel> = DType::ALL.into_iter().map(pack_kernel).collect();
    all.extend(DType::ALL.into_iter().flat_map(|d| DType::ALL.map(|o| delta_kernel(d, o))));
    all.extend([
        range_kernel(DType::F32, false),
        range_kernel(DType::BF16, false),
        range_kernel(DType::F32, true),
        range_kernel(DType::BF16, true),
    ]);
    let h200 = wgpu::Limits {
        max_compute_workgroup_storage_size: 48 << 10,
        max_compute_invocations_per_workgroup: 1024,
        ..wgpu::Limits::default()
    };
    for d in [16, 32, 48, 64, 80, 96, 112, 128] {
        for bias in [None, Some(DType::F16), Some(DType::F32)] {
            for dtype in DType::ALL {
                for t in coop_tilings_for(dtype, d, &h200) {
                    all.push(coop_kernel(dtype, bias, d, t));
                }
            }
            for dtype in DType::ALL {
                for t in coop_bwd_tilings_for(dtype, d, &h200) {
                    for dkdv in [true, false] {
                        all.push(coop_bwd_kernel(dtype, dkdv, bias, d, t));
                    }
                }
            }
        }
    }
    for dtype in DType::ALL {
        for bias in [None, Some(dtype), Some(DType::F32)] {
            for d in [8, 32, 40, 64, 80, 96, 128] {
                for t in flash_tilings(d, &h200) {
                    all.push(fwd_kernel(dtype, bias, d, t));
                }
            }
            for d in [16, 32, 48, 64, 80, 96, 112, 128] {
                for chunk in [16, 32] {
                    for atomic_dq in [false, true] {
                        all.push(bwd_kernel("attention_bwd_dkdv", dtype, bias, d, chunk, atomic_dq));
                    }
                    all.push(bwd_kernel("attention_bwd_dq", dtype, bias, d, chunk, false));
                }
            }
        }
    }
    all
}
