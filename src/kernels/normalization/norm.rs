//! Row-wise normalisations over the last dim: softmax / log-softmax (scale, additive mask,
//! causal mask), LayerNorm, RMSNorm, their backward passes, and fused cross-entropy.
//! Kernels: `shaders/softmax.wgsl`, `shaders/norm.wgsl` (tiling and traffic described there).
//!
//! Units (shaders/row_units.wgsl): an invocation moves 4 adjacent elements (one 8- or
//! 16-byte load) when the row length is a multiple of 4 — except f32 softmax rows, which
//! measured faster in pairs — 2 when it is even, and 1 when it is odd; odd rows of 16-bit
//! data in the softmax family go as word-aligned pairs shifted by the row's parity plus one
//! leftover element per row, joined with its neighbour's by a second small kernel, so the
//! output is stored in 16 bits directly (the norms store odd 16-bit rows through f32 and a
//! cast). 16-bit stores use the adapter's f32 → f16 conversion where
//! [`crate::Gpu::native_f16`] found it rounding to nearest even.
//!
//! Row-length classes: rows of up to 256·VPT units stay in registers, VPT ∈ {1, 2, 4, 8, 16}
//! (units of 4: up to 8), so the row is read once; longer rows stream (online max/sum for
//! softmax, shifted sums merged by Chan's formula for the norms) and are read twice.
//!
//! ```no_run
//! use wgkernels::ops::norm::SoftmaxOptions;
//! use wgkernels::{DType, Gpu, Tensor};
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = Gpu::new()?;
//! let x = Tensor::randn(&gpu, &[16, 768], DType::F32, 0)?;
//! let (w, b) = (Tensor::full(&gpu, &[768], 1.0, DType::F32)?, Tensor::zeros(&gpu, &[768], DType::F32)?);
//! let h = x.layer_norm(Some(&w), Some(&b), 1e-5)?;
//! let r = x.rms_norm(Some(&w), 1e-6)?;
//! let scores = Tensor::randn(&gpu, &[4, 12, 64, 64], DType::F32, 1)?;
//! let p = scores.softmax_with(&SoftmaxOptions { scale: Some(0.125), causal: true, ..Default::default() })?;
//! let (loss, dlogits) = Tensor::randn(&gpu, &[16, 50257], DType::F32, 2)?.cross_entropy(&[7; 16])?;
//! # let _ = (h, r, p, loss, dlogits);
//! # Ok(()) }
//! ```

use crate::device::{CachedKernel, Kernel, ShaderSource};
use crate::error::{Error, Result};
use crate::kernels::wgsl_load;
use crate::tensor::{resolve_dim, Tensor};
use crate::DType;

/// Softmax, log-softmax, their backward, cross-entropy.
pub const SOFTMAX: ShaderSource =
    ShaderSource { name: "softmax", source: include_str!("softmax.wgsl"), shared: include_str!("row_units.wgsl") };

/// LayerNorm and RMSNorm, forward and backward.
pub const NORM: ShaderSource =
    ShaderSource { name: "norm", source: include_str!("norm.wgsl"), shared: include_str!("row_units.wgsl") };

const WG: usize = 256;
/// The register-cache classes; the largest covers rows of 8192 elements in pairs.
pub const VPT_CLASSES: [u32; 5] = [1, 2, 4, 8, 16];
const ROWS_PER_CHUNK: usize = 64;
/// First binding of a fused prologue's buffers (held x, ew_params, the chain's leaves),
/// after the eight of shaders/norm.wgsl.
const PROLOGUE_BINDING: usize = 8;

/// Body of `fn load_*(e) -> Unit` reading one unit at element `e` of `buf`
/// (shaders/row_units.wgsl).
fn unit_load(buf: &str, dtype: DType, unit: u32) -> String {
    if unit == 1 {
        return format!("return vec2<f32>(load_one_{buf}(e), 0.0);");
    }
    if unit == 4 {
        // e is a multiple of 4: word e / 4 of an array<vec4<u32>> (f32) or array<vec2<u32>>.
        return match dtype {
            DType::F32 => format!("return bitcast<vec4<f32>>({buf}[e >> 2u]);"),
            DType::F16 => {
                format!("let w = {buf}[e >> 2u];\n    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));")
            }
            DType::BF16 => format!(
                "let w = {buf}[e >> 2u];\n    return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u));"
            ),
        };
    }
    match dtype {
        DType::F32 => format!("return vec2<f32>(bitcast<f32>({buf}[e]), bitcast<f32>({buf}[e + 1u]));"),
        DType::F16 => format!("return unpack2x16float({buf}[e >> 1u]);"),
        DType::BF16 => format!(
            "let w = {buf}[e >> 1u];\n    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));"
        ),
    }
}

/// Single-element loaders `load_one_<buf>` that the unit-1 loaders call.
fn one_loaders(bufs: &[(&str, DType)]) -> String {
    bufs.iter().map(|(b, d)| format!("fn load_one_{b}(e: u32) -> f32 {{\n    {}\n}}\n", wgsl_load(b, *d))).collect()
}

/// Body of `fn store(e, v: Unit)`; `native`: f16 through the adapter's conversion.
fn unit_store(dtype: DType, unit: u32, native: bool) -> String {
    match (unit, dtype) {
        // Rounded by the conversion to f16; the f32 round trip is exact, so pack2x16float has
        // nothing left to round (naga 30 rejects bitcast<u32>(vec2<f16>)).
        (4, DType::F16) if native => "out[e >> 2u] = vec2<u32>(pack2x16float(vec2<f32>(vec2<f16>(v.xy))), \
                                      pack2x16float(vec2<f32>(vec2<f16>(v.zw))));"
            .into(),
        (2, DType::F16) if native => "out[e >> 1u] = pack2x16float(vec2<f32>(vec2<f16>(v)));".into(),
        (1, _) => "out[e] = bitcast<u32>(v.x);".into(),
        (4, DType::F32) => "out[e >> 2u] = bitcast<vec4<u32>>(v);".into(),
        (4, DType::F16) => "out[e >> 2u] = vec2<u32>(pack_f16x2(v.xy), pack_f16x2(v.zw));".into(),
        (4, DType::BF16) => "out[e >> 2u] = vec2<u32>(f32_to_bf16_bits(v.x) | (f32_to_bf16_bits(v.y) << 16u), \
                             f32_to_bf16_bits(v.z) | (f32_to_bf16_bits(v.w) << 16u));"
            .into(),
        (_, DType::F32) => "out[e] = bitcast<u32>(v.x);\n    out[e + 1u] = bitcast<u32>(v.y);".into(),
        (_, DType::F16) => "out[e >> 1u] = pack_f16x2(v);".into(),
        (_, DType::BF16) => "out[e >> 1u] = f32_to_bf16_bits(v.x) | (f32_to_bf16_bits(v.y) << 16u);".into(),
    }
}

/// The element type a buffer of `dtype` is declared with for units of `unit` elements: one
/// unit per array element when units are 4 wide, 32-bit words otherwise.
fn word_type(dtype: DType, unit: u32) -> &'static str {
    match (unit, dtype) {
        (4, DType::F32) => "vec4<u32>",
        (4, _) => "vec2<u32>",
        _ => "u32",
    }
}

/// The substitutions of shaders/row_units.wgsl and of the buffers' element types for
/// `unit`: (placeholder of a buffer's type, its dtype) in `words`.
fn with_units(mut k: Kernel, unit: u32, words: &[(&'static str, Option<DType>)]) -> Kernel {
    let lanes = if unit == 4 { 4 } else { 2 };
    k = k
        .sub("LANES", lanes.to_string())
        .sub("PAIR_TO_UNIT", if lanes == 4 { "return vec4<f32>(v, 0.0, 0.0);" } else { "return v;" })
        .sub("LANE_LIST", (0..lanes).map(|c| format!("{c}u")).collect::<Vec<_>>().join(", "))
        .sub("UNIT", unit.to_string());
    for &(name, d) in words {
        // An unbound buffer keeps a valid declaration: its dtype does not matter.
        k = k.sub(name, word_type(d.unwrap_or(DType::F32), unit));
    }
    k
}

/// Which row kernel runs a row-wise op.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::norm::{RowKernel, SoftmaxOptions};
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let p = x.softmax_with(&SoftmaxOptions { kernel: RowKernel::Workgroup(2), ..Default::default() })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RowKernel {
    /// Chosen from the row length and the adapter.
    #[default]
    Auto,
    /// One subgroup per row (short rows; needs `SUBGROUP`).
    Subgroup,
    /// One workgroup per row keeping `vpt` units per invocation in registers (one of
    /// [`VPT_CLASSES`]); the rest of a longer row streams.
    Workgroup(u32),
}

/// Rows up to this many elements take the subgroup-per-row kernel where there are subgroups.
pub const SG_ROWS_MAX: usize = 1024;

/// The longest rows the norms' backward gives one subgroup each (`backward_sg_rows`):
/// below a quarter of a 256-invocation workgroup's units, most of `backward`'s invocations
/// would idle (on lavapipe a [1024, 64] LayerNorm backward took 223 ms that way).
pub const SG_BACKWARD_ROWS_MAX: usize = 256;

const SG_ARGS: &str = ", @builtin(subgroup_id) sgid: u32, @builtin(num_subgroups) nsg: u32, @builtin(subgroup_size) sgsize: u32, @builtin(subgroup_invocation_id) lane: u32";
const SG_INIT: &str = "sg_id = sgid;\n    sg_count = nsg;\n    sg_size = sgsize;\n    sg_lane = lane;";

/// What the row kernels use of the device: subgroup operations, and the adapter's own f16
/// rounding for 16-bit stores ([`crate::Gpu::native_f16`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Caps {
    subgroup: bool,
    native_f16: bool,
    /// 64 invocations per row instead of 256 (flag WG64): CPU adapters without subgroups.
    wg64: bool,
}

/// Neither: param_grads stores f32 partial sums and reduces nothing across invocations.
const PLAIN: Caps = Caps { subgroup: false, native_f16: false, wg64: false };

impl Caps {
    fn of(gpu: &crate::Gpu) -> Self {
        let subgroup = gpu.has(wgpu::Features::SUBGROUP);
        let cpu = gpu.info().device_type == wgpu::DeviceType::Cpu;
        Caps { subgroup, native_f16: gpu.native_f16(), wg64: cpu && !subgroup }
    }

    /// Invocations per row of the workgroup-row entries built with these caps.
    fn row_wg(self) -> usize {
        if self.wg64 {
            64
        } else {
            WG
        }
    }
}

/// Adds the subgroup specialisation (reductions by subgroup operations, the per-row entry)
/// or the workgroup-memory one, and the f16 rounding of the stores.
fn with_caps(k: Kernel, caps: Caps) -> Kernel {
    let k = if caps.native_f16 { k.flag("NATIVE_F16") } else { k };
    let k = if caps.wg64 { k.flag("WG64") } else { k };
    if caps.subgroup {
        k.flag("SUBGROUP").sub("SG_ARGS", SG_ARGS).sub("SG_INIT", SG_INIT)
    } else {
        k.sub("SG_ARGS", "").sub("SG_INIT", "")
    }
}

/// The kernel class for a row of `n` elements, after checking a forced one.
fn choose(op: &'static str, gpu: &crate::Gpu, forced: RowKernel, n: usize, unit: u32) -> Result<RowKernel> {
    let has_sg = gpu.has(wgpu::Features::SUBGROUP);
    let wg = Caps::of(gpu).row_wg();
    match forced {
        RowKernel::Auto if has_sg && n <= SG_ROWS_MAX => Ok(RowKernel::Subgroup),
        RowKernel::Auto => Ok(RowKernel::Workgroup(auto_vpt(n, unit, wg))),
        RowKernel::Subgroup if !has_sg => {
            Err(Error::MissingFeature { op, feature: "SUBGROUP", hint: "use RowKernel::Workgroup or Auto" })
        }
        RowKernel::Workgroup(v) if !VPT_CLASSES.contains(&v) => {
            Err(Error::InvalidArgument { op, msg: format!("vpt {v} is not one of {VPT_CLASSES:?}") })
        }
        k => Ok(k),
    }
}

/// Validates a forced register class for the kernels that have only the workgroup form.
fn workgroup_vpt(op: &'static str, vpt: Option<u32>, n: usize, unit: u32, wg: usize) -> Result<u32> {
    match vpt {
        Some(v) if !VPT_CLASSES.contains(&v) => {
            Err(Error::InvalidArgument { op, msg: format!("vpt {v} is not one of {VPT_CLASSES:?}") })
        }
        Some(v) => Ok(v),
        None => Ok(auto_vpt(n, unit, wg)),
    }
}

/// Workgroups for `rows` rows: one per row, or one per (256 / largest subgroup) rows.
fn row_groups(gpu: &crate::Gpu, k: RowKernel, rows: usize) -> u32 {
    match k {
        RowKernel::Subgroup => rows.div_ceil((WG / gpu.info().subgroup_sizes.1.max(1) as usize).max(1)) as u32,
        _ => rows as u32,
    }
}

/// Geometry of a row-wise launch: x made contiguous at offset 0, rows × n.
struct Rows {
    x: Tensor,
    rows: usize,
    n: usize,
    unit: u32,
    /// Storage dtype of the kernel's output: the input's, or f32 when 16-bit data has odd
    /// rows (pairs would straddle rows; the host casts afterwards).
    out_dtype: DType,
}

/// The result of a row-wise op (softmax, norms, their backward) on a zero-size `x` of rank
/// ≥ 1: an empty tensor of x's shape and dtype, nothing dispatched (the crate's rule for
/// zero-size tensors; see the crate docs). None when x has elements or no dim.
fn zero_size_rows(x: &Tensor) -> Option<Result<Tensor>> {
    (x.rank() >= 1 && x.numel() == 0).then(|| Tensor::zeros(x.gpu(), x.shape(), x.dtype()))
}

fn rows_of(op: &'static str, x: &Tensor) -> Result<Rows> {
    if x.rank() == 0 {
        return Err(Error::InvalidArgument { op, msg: "needs at least one dim".into() });
    }
    if x.numel() == 0 {
        // Only cross-entropy gets here with no elements: a mean over no rows (or a target
        // among no classes) is not defined.
        return Err(Error::Empty { op, shape: x.shape().to_vec() });
    }
    // A strided x is copied; with fusion on the copy stays pending, so that a norm runs it
    // in its prologue (reading the strided input directly) instead of a kernel of its own.
    let x = if x.is_contiguous() && x.offset() == 0 {
        x.clone()
    } else if x.gpu().fusion() {
        crate::kernels::elementwise::fusion::lazy_map(crate::kernels::elementwise::UnaryOp::Copy, x.clone(), x.dtype())?
    } else {
        x.contiguous()?
    };
    let n = x.shape()[x.rank() - 1];
    let rows = x.numel() / n;
    // Every buffer a row kernel reads is contiguous at offset 0 (made so here and by
    // `param`/`contiguous` at the launch), so units of 4 are 4-aligned wherever n is.
    let unit = if n % 4 == 0 {
        4
    } else if n % 2 == 0 {
        2
    } else {
        1
    };
    let out_dtype = if unit == 1 { DType::F32 } else { x.dtype() };
    Ok(Rows { x, rows, n, unit, out_dtype })
}

/// Rows for the softmax family. Odd rows of 16-bit data move as word-aligned pairs shifted
/// by the row's parity, plus one leftover element per row that a second small kernel joins
/// with its neighbour row's (shaders/softmax.wgsl, ODD_ROWS): the output is stored in the
/// input's dtype by the kernel itself, not as f32 and then cast. Returns (rows, odd).
fn softmax_rows(op: &'static str, x: &Tensor) -> Result<(Rows, bool)> {
    let mut r = rows_of(op, x)?;
    // f32 softmax rows stay in pairs: on the H200, 16384×4096 ran 3299 and 3312 GB/s in
    // units of 4 (two calls) and 3731 in pairs (the next call; 3742 in the round before)
    // — across calls, so a trend, not a same-call ratio. LayerNorm gained from units of 4
    // (3113 -> 3625 GB/s) and so did 16-bit softmax (8-byte loads). BENCHMARKS.md.
    if r.unit == 4 && r.x.dtype() == DType::F32 {
        r.unit = 2;
    }
    let odd = r.unit == 1 && r.x.dtype() != DType::F32;
    if odd {
        r.unit = 2;
        r.out_dtype = r.x.dtype();
    }
    Ok((r, odd))
}

/// Dispatches a softmax-family kernel over `groups` workgroups with the buffers `bind`. Odd
/// rows also bind the leftovers' buffer ([rows] f32, binding 7), and `join_edges` then
/// writes the words that rows 2k and 2k + 1 share.
#[allow(clippy::too_many_arguments)]
fn dispatch_rows(
    op: &'static str,
    gpu: &crate::Gpu,
    k: &Kernel,
    bind: &[(u32, &wgpu::Buffer)],
    groups: u32,
    r: &Rows,
    odd: bool,
    out: &Tensor,
    params: &wgpu::Buffer,
) -> Result<()> {
    if !odd {
        return gpu.dispatch(k, bind, groups);
    }
    let edges = Tensor::empty(gpu, op, &[r.rows], DType::F32)?;
    let mut with_edges = bind.to_vec();
    with_edges.push((7, edges.storage()?.buffer()));
    gpu.dispatch(k, &with_edges, groups)?;
    let join =
        softmax_kernel("join_edges", r.x.dtype(), None, None, r.out_dtype, 2, 1, false, 1.0, Caps::of(gpu), true);
    // Unchecked is safe: k < ceil(rows / 2) reads edges below rows and writes the word of
    // element (2k + 1)·n − 1 < rows·n, inside the output.
    let b = [(1, out.storage()?.buffer()), (2, params), (7, edges.storage()?.buffer())];
    gpu.dispatch(&join, &b, r.rows.div_ceil(2).div_ceil(WG) as u32)
}

/// The smallest register class that holds the row, or the largest (then the row streams).
/// Units of 4 stop at 8 per invocation (32 floats, as 16 pairs): the backward keeps two
/// such caches, and more would cost occupancy.
fn auto_vpt(n: usize, unit: u32, wg: usize) -> u32 {
    let units = n.div_ceil(unit as usize);
    let max = if unit == 4 { 8 } else { 16 };
    VPT_CLASSES.into_iter().filter(|&v| v <= max).find(|&v| units <= wg * v as usize).unwrap_or(max)
}

/// Options of [`Tensor::softmax_with`].
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::norm::SoftmaxOptions;
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let lp = x.softmax_with(&SoftmaxOptions { log: true, scale: Some(0.5), ..Default::default() })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct SoftmaxOptions<'a> {
    /// Multiplies the input before the softmax (attention's 1/√d). Default 1.
    pub scale: Option<f32>,
    /// Added after scaling. Shape `[M, N]` (or `[N]`) where the input is `[..., M, N]`:
    /// input row r uses mask row r mod M.
    pub mask: Option<&'a Tensor>,
    /// Causal masking of the last two dims `[..., S_q, N]`, bottom-right aligned as with a
    /// KV cache: query i sees keys j ≤ i + N − S_q. Needs N ≥ S_q.
    pub causal: bool,
    /// log-softmax instead of softmax.
    pub log: bool,
    /// Forces a row kernel (tests and benchmarks).
    pub kernel: RowKernel,
}

#[allow(clippy::too_many_arguments)]
fn softmax_kernel(
    entry: &'static str,
    x: DType,
    mask: Option<DType>,
    dy: Option<DType>,
    out: DType,
    unit: u32,
    vpt: u32,
    log: bool,
    ce_scale: f32,
    caps: Caps,
    odd: bool,
) -> Kernel {
    let mut ones: Vec<(&str, DType)> = vec![("x", x)];
    if let Some(d) = mask {
        ones.push(("mask", d));
    }
    if let Some(d) = dy {
        ones.push(("dy", d));
    }
    let mut prelude = if unit == 1 || odd { one_loaders(&ones) } else { String::new() };
    // Odd rows refer to every element loader (x_unit, dy_unit, logits); an unbound buffer's
    // is a stub, so that the pipeline's layout does not ask for the buffer.
    for (buf, d) in [("mask", mask), ("dy", dy)] {
        if odd && d.is_none() {
            prelude += &format!("fn load_one_{buf}(e: u32) -> f32 {{\n    return 0.0;\n}}\n");
        }
    }
    // Odd rows: a mask row's pairs need not be word-aligned where x's are; read elements.
    let load_mask = match mask {
        None => "return Unit(0.0);".into(),
        Some(_) if odd => "return Unit(load_one_mask(e), load_one_mask(e + 1u));".into(),
        Some(d) => unit_load("mask", d, unit),
    };
    let k = Kernel::new(&SOFTMAX, entry)
        .sub("LOAD_X", unit_load("x", x, unit))
        .sub("LOAD_MASK", load_mask)
        .sub("LOAD_DY", dy.map(|d| unit_load("dy", d, unit)).unwrap_or_else(|| "return Unit(0.0);".into()))
        .sub("STORE", unit_store(out, unit, caps.native_f16))
        .sub("VPT", vpt.to_string())
        .sub("LOG", log.to_string())
        .sub("CE_SCALE", format!("{ce_scale:?}"))
        .sub("ONE_LOADERS", prelude)
        .trusted();
    let words = [("WORD_X", Some(x)), ("WORD_OUT", Some(out)), ("WORD_MASK", mask), ("WORD_DY", dy)];
    let k = if odd { k.flag("ODD_ROWS") } else { k };
    with_caps(with_units(k, unit, &words), caps)
}

#[allow(clippy::too_many_arguments)]
fn norm_kernel(
    entry: &'static str,
    x: DType,
    w: Option<DType>,
    b: Option<DType>,
    dy: Option<DType>,
    out: DType,
    unit: u32,
    vpt: u32,
    rms: bool,
    caps: Caps,
    prologue: Option<(&str, bool)>,
) -> Kernel {
    let mut ones: Vec<(&str, DType)> = vec![("x", x)];
    for (name, d) in [("w", w), ("b", b), ("dy", dy)] {
        if let Some(d) = d {
            ones.push((name, d));
        }
    }
    let prelude = if unit == 1 { one_loaders(&ones) } else { String::new() };
    // With a fused prologue x is the chain's value (src/fusion.rs, FusedPrologue), stored
    // into `held` on its first read.
    let load_x_again = match prologue {
        // x as stored by load_x_first (f32 alone has odd rows: single elements).
        Some((_, true)) if unit == 1 => "return Unit(bitcast<f32>(held[e]), 0.0);".to_string(),
        Some((_, true)) => unit_load("held", x, unit),
        _ => "return load_x(e);".to_string(),
    };
    let (load_x, load_x_first) = match prologue {
        None => (unit_load("x", x, unit), "return load_x(e);".to_string()),
        Some((_, keep)) => (
            if unit == 2 {
                "return Unit(chain_value(e), chain_value(e + 1u));".to_string()
            } else {
                "return Unit(chain_value(e), 0.0);".to_string()
            },
            if keep {
                format!(
                    "let v = load_x(e);\n    {}\n    return v;",
                    unit_store(x, unit, caps.native_f16).replace("out[", "held[")
                )
            } else {
                "return load_x(e);".to_string()
            },
        ),
    };
    let k = Kernel::new(&NORM, entry)
        .sub("PROLOGUE_DECLS", prologue.map(|(d, _)| d).unwrap_or_default().to_string())
        .sub("LOAD_X", load_x)
        .sub("LOAD_X_FIRST", load_x_first)
        .sub("LOAD_X_AGAIN", load_x_again)
        .sub("LOAD_W", w.map(|d| unit_load("w", d, unit)).unwrap_or_else(|| "return Unit(1.0);".into()))
        .sub("LOAD_B", b.map(|d| unit_load("b", d, unit)).unwrap_or_else(|| "return Unit(0.0);".into()))
        .sub("LOAD_DY", dy.map(|d| unit_load("dy", d, unit)).unwrap_or_else(|| "return Unit(0.0);".into()))
        .sub("STORE", unit_store(out, unit, caps.native_f16))
        .sub("VPT", vpt.to_string())
        .sub("RMS", rms.to_string())
        .sub("AFFINE_W", if w.is_some() { "y *= load_w(params.w_off + j);" } else { "" })
        .sub("AFFINE_B", if b.is_some() && !rms { "y += load_b(params.b_off + j);" } else { "" })
        .sub("ONE_LOADERS", prelude)
        .trusted();
    let words = [("WORD_X", Some(x)), ("WORD_OUT", Some(out)), ("WORD_W", w), ("WORD_B", b), ("WORD_DY", dy)];
    with_caps(with_units(k, unit, &words), caps)
}

/// Every specialisation the launchers here can build, for the portability test: with
/// subgroup reductions (and the subgroup-per-row entries) and with workgroup-memory ones.
pub fn all_kernels() -> Vec<Kernel> {
    let mut all = Vec::new();
    // Without subgroups: 256 invocations per row (GPUs) and 64 (CPU adapters, WG64).
    for (sg, wg64) in [(false, false), (false, true), (true, false)] {
        for d in DType::ALL {
            // f16 stores through the adapter's rounding with subgroups, the library's without:
            // both store paths, without doubling the list.
            let caps = Caps { subgroup: sg, native_f16: sg && d == DType::F16, wg64 };
            for unit in [1u32, 2, 4] {
                let out = if unit == 1 { DType::F32 } else { d };
                all.extend(row_kernels(d, caps, unit, out));
                all.extend(prologue_kernels(d, caps, unit, out, sg));
                all.extend(odd_row_kernels(d, caps, unit, sg));
                all.extend(subgroup_row_kernels(d, caps, unit, out, sg));
            }
        }
    }
    all
}

/// The workgroup-row entries of every kind at every register class: softmax (forward,
/// backward, masked, log), cross-entropy (one pass, and forward and backward apart),
/// LayerNorm/RMSNorm forward and backward, the param-gradient passes.
fn row_kernels(d: DType, caps: Caps, unit: u32, out: DType) -> Vec<Kernel> {
    let mut all = Vec::new();
    for vpt in VPT_CLASSES {
        all.push(softmax_kernel("softmax", d, None, None, out, unit, vpt, false, 1.0, caps, false));
        all.push(softmax_kernel("softmax_backward", d, None, Some(d), out, unit, vpt, false, 1.0, caps, false));
        all.push(norm_kernel("forward", d, Some(d), Some(d), None, out, unit, vpt, false, caps, None));
        all.push(norm_kernel("forward", d, Some(d), None, None, out, unit, vpt, true, caps, None));
        for rms in [false, true] {
            all.push(norm_kernel("backward", d, Some(d), None, Some(d), out, unit, vpt, rms, caps, None));
            if vpt <= 8 {
                let k = norm_kernel("backward_grads", d, Some(d), None, Some(d), out, unit, vpt, rms, caps, None);
                all.push(k);
            }
        }
    }
    all.push(softmax_kernel("softmax", d, Some(d), None, out, unit, 4, true, 1.0, caps, false));
    all.push(softmax_kernel("cross_entropy", d, None, None, out, unit, 16, false, 0.5, caps, false));
    all.push(softmax_kernel("cross_entropy_loss", d, None, None, out, unit, 16, false, 1.0, caps, false));
    all.push(softmax_kernel("cross_entropy_backward", d, None, None, out, unit, 1, false, 0.5, caps, false));
    all.push(norm_kernel("forward", d, None, None, None, out, unit, 2, false, caps, None));
    for rms in [false, true] {
        all.push(norm_kernel("param_grads", d, None, None, Some(d), out, unit, 1, rms, caps, None));
    }
    if unit == 2 {
        all.push(norm_kernel("param_grads_sum", d, None, None, None, d, 2, 1, false, caps, None));
    }
    all
}

/// The norm forward with a fused prologue (a residual add with dropout), both row classes;
/// units of at most 2 (norm_forward).
fn prologue_kernels(d: DType, caps: Caps, unit: u32, out: DType, sg: bool) -> Vec<Kernel> {
    let mut all = Vec::new();
    if unit == 2 || (unit == 1 && d == DType::F32) {
        let pro = crate::kernels::elementwise::fusion::sample_prologue_decls(PROLOGUE_BINDING, d);
        all.push(norm_kernel("forward", d, Some(d), Some(d), None, out, unit, 4, false, caps, Some((&pro, true))));
        all.push(norm_kernel("forward", d, None, None, None, out, unit, 16, true, caps, Some((&pro, false))));
        if sg {
            let k =
                norm_kernel("forward_sg_rows", d, Some(d), None, None, out, unit, 1, true, caps, Some((&pro, true)));
            all.push(k);
        }
    }
    all
}

/// Odd rows of 16-bit data: pairs shifted to word boundaries, leftovers joined.
fn odd_row_kernels(d: DType, caps: Caps, unit: u32, sg: bool) -> Vec<Kernel> {
    let mut all = Vec::new();
    if unit == 2 && d != DType::F32 {
        for (entry, mask, dy, vpt, log) in [
            ("softmax", Some(d), None, 4, false),
            ("softmax", None, None, 16, true),
            ("softmax_backward", None, Some(d), 2, false),
            ("cross_entropy", None, None, 16, false),
            ("cross_entropy_loss", None, None, 16, false),
            ("cross_entropy_backward", None, None, 1, false),
            ("join_edges", None, None, 1, false),
        ] {
            all.push(softmax_kernel(entry, d, mask, dy, d, 2, vpt, log, 0.5, caps, true));
        }
        if sg {
            all.push(softmax_kernel("softmax_sg_rows", d, Some(d), None, d, 2, 1, false, 1.0, caps, true));
        }
    }
    all
}

/// The subgroup-per-row entries (softmax, log-softmax, the norms' forward).
fn subgroup_row_kernels(d: DType, caps: Caps, unit: u32, out: DType, sg: bool) -> Vec<Kernel> {
    let mut all = Vec::new();
    if sg {
        all.push(softmax_kernel("softmax_sg_rows", d, Some(d), None, out, unit, 1, false, 1.0, caps, false));
        all.push(softmax_kernel("softmax_sg_rows", d, None, None, out, unit, 1, true, 1.0, caps, false));
        for rms in [false, true] {
            all.push(norm_kernel("forward_sg_rows", d, Some(d), Some(d), None, out, unit, 1, rms, caps, None));
            all.push(norm_kernel("backward_sg_rows", d, Some(d), None, Some(d), out, unit, 1, rms, caps, None));
        }
    }
    all
}

/// Validates a per-column parameter (`weight`, `bias`) of shape `[n]` and makes it
/// contiguous at offset 0 (so pairs are word-aligned).
fn param(op: &'static str, p: Option<&Tensor>, n: usize) -> Result<Option<Tensor>> {
    match p {
        None => Ok(None),
        Some(t) if t.shape() != [n] => Err(Error::ShapeMismatch { op, lhs: t.shape().to_vec(), rhs: vec![n] }),
        Some(t) => Ok(Some(t.contiguous()?)),
    }
}

/// The rows of a cross-entropy over `x` (`[rows, n]`, leading dims flattened, the first
/// `classes` elements of a row its classes, n when None) after checking one target per row,
/// each a class index: (rows, odd, register class, classes).
fn cross_entropy_rows(
    op: &'static str,
    x: &Tensor,
    targets: &[u32],
    vpt: Option<u32>,
    classes: Option<usize>,
) -> Result<(Rows, bool, u32, usize)> {
    let (r, odd) = softmax_rows(op, x)?;
    let vpt = workgroup_vpt(op, vpt, r.n, r.unit, Caps::of(x.gpu()).row_wg())?;
    let classes = classes.unwrap_or(r.n);
    if classes == 0 || classes > r.n {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("{classes} classes in rows of {} (logits {:?}): wants 1 to {}", r.n, x.shape(), r.n),
        });
    }
    if targets.len() != r.rows {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: vec![targets.len()] });
    }
    if let Some((i, &t)) = targets.iter().enumerate().find(|&(_, &t)| t as usize >= classes) {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("target {t} of row {i} is not a class index below {classes}"),
        });
    }
    Ok((r, odd, vpt, classes))
}

/// A cross-entropy kernel of `entry` for the rows `r`. The one-pass kernel's gradient of the
/// mean loss is scaled by CE_SCALE = 1/rows, written into its WGSL; the two-pass kernels
/// take the row count from their params (one pipeline whatever the batch).
fn ce_kernel(entry: &'static str, r: &Rows, vpt: u32, odd: bool) -> Kernel {
    let ce_scale = if entry == "cross_entropy" { 1.0 / r.rows as f32 } else { 1.0 };
    softmax_kernel(entry, r.x.dtype(), None, None, r.out_dtype, r.unit, vpt, false, ce_scale, Caps::of(r.x.gpu()), odd)
}

/// The two-pass cross-entropy's forward (see [`Tensor::cross_entropy_forward_padded`]).
fn ce_forward(x: &Tensor, targets: &[u32], vpt: Option<u32>, classes: Option<usize>) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cross_entropy_forward";
    let (r, odd, vpt, classes) = cross_entropy_rows(OP, x, targets, vpt, classes)?;
    let gpu = x.gpu();
    let losses = Tensor::empty(gpu, OP, &[r.rows], DType::F32)?;
    let lse = Tensor::empty(gpu, OP, &[r.rows], DType::F32)?;
    let tbuf = gpu.meta_buffer(targets);
    let params = gpu.params_buffer(&SoftmaxParams::rows(r.rows, r.n, 0).with_classes(classes));
    let k = ce_kernel("cross_entropy_loss", &r, vpt, odd);
    // Unchecked is safe as for softmax (reads only); targets were checked < classes ≤ n,
    // and row r < rows writes losses[r] and row_lse[r], both [rows].
    let b = [
        (0, r.x.storage()?.buffer()),
        (2, &params),
        (5, &tbuf),
        (6, losses.storage()?.buffer()),
        (8, lse.storage()?.buffer()),
    ];
    gpu.dispatch(&k, &b, r.rows as u32)?;
    let loss = mean_loss(&losses)?;
    Ok((loss, lse))
}

/// The two-pass cross-entropy's backward (see [`Tensor::cross_entropy_backward_padded`]).
fn ce_backward(x: &Tensor, lse: &Tensor, targets: &[u32], grad: &Tensor, classes: Option<usize>) -> Result<Tensor> {
    const OP: &str = "cross_entropy_backward";
    let (r, odd, _, classes) = cross_entropy_rows(OP, x, targets, None, classes)?;
    if lse.shape() != [r.rows] || lse.dtype() != DType::F32 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("lse is {:?} {:?}, wants [{}] F32 (the forward's)", lse.shape(), lse.dtype(), r.rows),
        });
    }
    if grad.numel() != 1 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("grad has shape {:?}, wants one element", grad.shape()),
        });
    }
    crate::kernels::elementwise::same_device(OP, &[x, lse, grad])?;
    let gpu = x.gpu();
    // Both read from element 0: made contiguous at offset 0 (one element for grad).
    let lse = lse.contiguous()?;
    let grad = grad.reshape(&[1])?.to_dtype(DType::F32)?.contiguous()?;
    let dlogits = Tensor::empty(gpu, OP, &[r.rows, r.n], r.out_dtype)?;
    let tbuf = gpu.meta_buffer(targets);
    let params = gpu.params_buffer(&SoftmaxParams::rows(r.rows, r.n, 0).with_classes(classes));
    let k = ce_kernel("cross_entropy_backward", &r, 1, odd);
    // Unchecked is safe as for softmax: units below unit_count(n) of rows below rows;
    // targets were checked < classes ≤ n; row_lse [rows] and upstream [1] are read at r and 0.
    let b = [
        (0, r.x.storage()?.buffer()),
        (1, dlogits.storage()?.buffer()),
        (2, &params),
        (5, &tbuf),
        (8, lse.storage()?.buffer()),
        (9, grad.storage()?.buffer()),
    ];
    dispatch_rows(OP, gpu, &k, &b, r.rows as u32, &r, odd, &dlogits, &params)?;
    finish(dlogits, x.dtype(), x.shape())
}

/// The mean of the per-row `losses` `[rows]`, a 0-dim f32 tensor.
fn mean_loss(losses: &Tensor) -> Result<Tensor> {
    losses.sum(0)?.div(&Tensor::full(losses.gpu(), &[], losses.numel() as f32, DType::F32)?)
}

fn finish(out: Tensor, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    out.reshape(shape)?.to_dtype(dtype)
}

impl Tensor {
    /// Softmax over `dim` (negative counts from the end), max-subtracted. A row of all −inf
    /// gives zeros, not NaN. Dims other than the last go through a transposed copy.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let p = x.softmax(-1)?;
    /// let rows: Vec<f32> = p.sum(-1)?.to_vec()?;
    /// assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5));
    /// # Ok(()) }
    /// ```
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_dim(dim, false)
    }

    /// log-softmax over `dim`. A row of all −inf gives −inf.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let lp = x.log_softmax(-1)?;
    /// # Ok(()) }
    /// ```
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_dim(dim, true)
    }

    fn softmax_dim(&self, dim: isize, log: bool) -> Result<Tensor> {
        let d = resolve_dim(if log { "log_softmax" } else { "softmax" }, dim, self.shape())?;
        let last = self.rank() - 1;
        let opts = SoftmaxOptions { log, ..Default::default() };
        if d == last {
            return self.softmax_with(&opts);
        }
        self.transpose(d as isize, last as isize)?.softmax_with(&opts)?.transpose(d as isize, last as isize)
    }

    /// Softmax over the last dim with a scale, an additive mask and/or causal masking, all
    /// applied inside the one kernel.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::ops::norm::SoftmaxOptions;
    /// let scores = Tensor::randn(&gpu, &[2, 4, 16, 16], DType::F32, 0)?; // [B, H, S, S]
    /// let p = scores.softmax_with(&SoftmaxOptions { scale: Some(0.25), causal: true, ..Default::default() })?;
    /// # Ok(()) }
    /// ```
    pub fn softmax_with(&self, opts: &SoftmaxOptions) -> Result<Tensor> {
        let op = if opts.log { "log_softmax" } else { "softmax" };
        if let Some(empty) = zero_size_rows(self) {
            return empty;
        }
        let (r, odd) = softmax_rows(op, self)?;
        let class = choose(op, self.gpu(), opts.kernel, r.n, r.unit)?;
        let (mask, mask_rows) = match opts.mask {
            None => (None, 0),
            Some(m) => {
                let ok = m.rank() >= 1 && m.shape()[m.rank() - 1] == r.n && m.rank() <= 2 && {
                    let mrows = if m.rank() == 2 { m.shape()[0] } else { 1 };
                    self.rank() >= 2 && (mrows == 1 || mrows == self.shape()[self.rank() - 2])
                };
                if !ok {
                    return Err(Error::ShapeMismatch {
                        op: "softmax mask",
                        lhs: m.shape().to_vec(),
                        rhs: self.shape().to_vec(),
                    });
                }
                let mrows = if m.rank() == 2 { m.shape()[0] } else { 1 };
                (Some(m.contiguous()?), mrows)
            }
        };
        let s_q = if self.rank() >= 2 { self.shape()[self.rank() - 2] } else { 1 };
        if opts.causal && (self.rank() < 2 || s_q > r.n) {
            return Err(Error::InvalidArgument {
                op,
                msg: format!("causal masking needs [..., S_q, N] with S_q ≤ N, got {:?}", self.shape()),
            });
        }
        let (entry, vpt) = match class {
            RowKernel::Subgroup => ("softmax_sg_rows", 1),
            RowKernel::Workgroup(v) => ("softmax", v),
            RowKernel::Auto => ("softmax", auto_vpt(r.n, r.unit, Caps::of(self.gpu()).row_wg())),
        };
        let gpu = self.gpu();
        let out = Tensor::empty(gpu, op, &[r.rows, r.n], r.out_dtype)?;
        let params = gpu.params_buffer(&SoftmaxParams {
            rows: r.rows as u32,
            n: r.n as u32,
            x_off: r.x.offset() as u32,
            mask_rows: mask_rows as u32,
            mask_off: mask.as_ref().map_or(0, |m| m.offset() as u32),
            causal: opts.causal as u32,
            s_q: s_q as u32,
            scale: opts.scale.unwrap_or(1.0),
            dy_off: 0,
            classes: r.n as u32,
        });
        let k = softmax_kernel(
            entry,
            r.x.dtype(),
            mask.as_ref().map(|m| m.dtype()),
            None,
            r.out_dtype,
            r.unit,
            vpt,
            opts.log,
            1.0,
            Caps::of(gpu),
            odd,
        );
        // Unchecked is safe: row < rows, unit u < ceil(n / unit) so every element index is
        // inside row `row` of the contiguous input and output (pairs only when n is even, or
        // with odd rows the pairs first + 2u, u < n/2, and the leftover 0 or n − 1), and the
        // mask row r mod M < M of a contiguous [M, n] mask.
        let mut b = vec![(0, r.x.storage()?.buffer()), (1, out.storage()?.buffer()), (2, &params)];
        if let Some(m) = &mask {
            b.push((3, m.storage()?.buffer()));
        }
        dispatch_rows(op, gpu, &k, &b, row_groups(gpu, class, r.rows), &r, odd, &out, &params)?;
        finish(out, self.dtype(), self.shape())
    }

    /// Gradient of softmax over the last dim: `dx = y ⊙ (dy − Σ y·dy)`, from the forward
    /// output `self` (= y) and the upstream gradient `dy`.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let y = x.softmax(-1)?;
    /// let dy = Tensor::randn(&gpu, &[4, 8], DType::F32, 1)?;
    /// let dx = y.softmax_backward(&dy)?;
    /// # Ok(()) }
    /// ```
    pub fn softmax_backward(&self, dy: &Tensor) -> Result<Tensor> {
        const OP: &str = "softmax_backward";
        if self.shape() != dy.shape() {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: dy.shape().to_vec() });
        }
        if self.dtype() != dy.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: self.dtype(), rhs: dy.dtype() });
        }
        if let Some(empty) = zero_size_rows(self) {
            return empty;
        }
        let (r, odd) = softmax_rows(OP, self)?;
        let dyc = dy.contiguous()?;
        let gpu = self.gpu();
        let out = Tensor::empty(gpu, OP, &[r.rows, r.n], r.out_dtype)?;
        let params = gpu.params_buffer(&SoftmaxParams::rows(r.rows, r.n, dyc.offset()));
        let caps = Caps::of(gpu);
        let vpt = auto_vpt(r.n, r.unit, caps.row_wg());
        let k = softmax_kernel(
            "softmax_backward",
            r.x.dtype(),
            None,
            Some(dy.dtype()),
            r.out_dtype,
            r.unit,
            vpt,
            false,
            1.0,
            caps,
            odd,
        );
        let b =
            [(0, r.x.storage()?.buffer()), (1, out.storage()?.buffer()), (2, &params), (4, dyc.storage()?.buffer())];
        dispatch_rows(OP, gpu, &k, &b, r.rows as u32, &r, odd, &out, &params)?;
        finish(out, self.dtype(), self.shape())
    }

    /// Mean cross-entropy of `self` (logits `[rows, classes]`, any leading dims flattened)
    /// against integer `targets` (one per row), and its gradient with respect to the logits,
    /// in one pass over the logits: `(loss, dlogits)`, loss a 0-dim f32 tensor.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let logits = Tensor::randn(&gpu, &[3, 10], DType::F32, 0)?;
    /// let (loss, dlogits) = logits.cross_entropy(&[1, 0, 9])?; // mean loss [1], gradient [3, 10]
    /// assert_eq!(dlogits.shape(), &[3, 10]);
    /// # Ok(()) }
    /// ```
    pub fn cross_entropy(&self, targets: &[u32]) -> Result<(Tensor, Tensor)> {
        self.cross_entropy_with(targets, None)
    }

    /// [`Tensor::cross_entropy`] with a forced register class (tests, benchmarks).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let logits = Tensor::randn(&gpu, &[3, 10], DType::F32, 0)?;
    /// let (loss, _) = logits.cross_entropy_with(&[1, 0, 9], Some(4))?;
    /// # Ok(()) }
    /// ```
    pub fn cross_entropy_with(&self, targets: &[u32], vpt: Option<u32>) -> Result<(Tensor, Tensor)> {
        const OP: &str = "cross_entropy";
        let (r, odd, vpt, _) = cross_entropy_rows(OP, self, targets, vpt, None)?;
        let gpu = self.gpu();
        let dlogits = Tensor::empty(gpu, OP, &[r.rows, r.n], r.out_dtype)?;
        let losses = Tensor::empty(gpu, OP, &[r.rows], DType::F32)?;
        let tbuf = gpu.meta_buffer(targets);
        let params = gpu.params_buffer(&SoftmaxParams::rows(r.rows, r.n, 0));
        let k = ce_kernel("cross_entropy", &r, vpt, odd);
        // Unchecked is safe as for softmax; targets were checked < n above.
        let b = [
            (0, r.x.storage()?.buffer()),
            (1, dlogits.storage()?.buffer()),
            (2, &params),
            (5, &tbuf),
            (6, losses.storage()?.buffer()),
        ];
        dispatch_rows(OP, gpu, &k, &b, r.rows as u32, &r, odd, &dlogits, &params)?;
        let loss = mean_loss(&losses)?;
        Ok((loss, finish(dlogits, self.dtype(), self.shape())?))
    }

    /// The forward half of [`Tensor::cross_entropy`], for a backward that comes later (as in
    /// autograd): the mean loss (0-dim f32) and each row's log-sum-exp (`[rows]` f32), the
    /// logits read once in their own dtype. [`Tensor::cross_entropy_backward`] then writes
    /// the gradient from the logits and these, so that what waits for the backward is the
    /// logits themselves (2 bytes an element in 16-bit) rather than an f32 gradient.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let logits = Tensor::randn(&gpu, &[3, 10], DType::F16, 0)?;
    /// let (loss, lse) = logits.cross_entropy_forward(&[1, 0, 9])?; // loss [], lse [3]
    /// let g = Tensor::full(&gpu, &[], 1.0, DType::F32)?; // d(objective)/d(loss)
    /// let dlogits = logits.cross_entropy_backward(&lse, &[1, 0, 9], &g)?; // [3, 10] in f16
    /// assert_eq!((lse.shape(), dlogits.dtype()), (&[3][..], DType::F16));
    /// # Ok(()) }
    /// ```
    pub fn cross_entropy_forward(&self, targets: &[u32]) -> Result<(Tensor, Tensor)> {
        self.cross_entropy_forward_with(targets, None)
    }

    /// [`Tensor::cross_entropy_forward`] with a forced register class (tests, benchmarks).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let logits = Tensor::randn(&gpu, &[3, 10], DType::F32, 0)?;
    /// let (loss, lse) = logits.cross_entropy_forward_with(&[1, 0, 9], Some(1))?;
    /// # Ok(()) }
    /// ```
    pub fn cross_entropy_forward_with(&self, targets: &[u32], vpt: Option<u32>) -> Result<(Tensor, Tensor)> {
        ce_forward(self, targets, vpt, None)
    }

    /// [`Tensor::cross_entropy_forward`] over rows whose first `classes` elements are the
    /// classes and the rest padding (a vocabulary padded to a multiple of 64 so that the
    /// matmuls around it load and store whole words): the padding takes no probability.
    /// Targets are below `classes`.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let logits = Tensor::randn(&gpu, &[3, 16], DType::F16, 0)?; // 11 classes, 5 padding
    /// let (loss, lse) = logits.cross_entropy_forward_padded(&[1, 0, 10], 11)?;
    /// let g = Tensor::full(&gpu, &[], 1.0, DType::F32)?;
    /// let dlogits = logits.cross_entropy_backward_padded(&lse, &[1, 0, 10], &g, 11)?; // 0 in the padding
    /// # Ok(()) }
    /// ```
    pub fn cross_entropy_forward_padded(&self, targets: &[u32], classes: usize) -> Result<(Tensor, Tensor)> {
        ce_forward(self, targets, None, Some(classes))
    }

    /// The gradient of [`Tensor::cross_entropy_forward`]'s mean loss with respect to these
    /// logits, times `grad` (the upstream gradient of the loss: one element, e.g. a loss
    /// scale), in the logits' dtype and shape: `(softmax − one-hot) · grad / rows`, computed
    /// in f32 and rounded once. `lse` is the forward's `[rows]` log-sum-exp.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let logits = Tensor::randn(&gpu, &[3, 10], DType::F32, 0)?;
    /// let (_, lse) = logits.cross_entropy_forward(&[1, 0, 9])?;
    /// let scale = Tensor::full(&gpu, &[], 1024.0, DType::F32)?; // a loss scale
    /// let dlogits = logits.cross_entropy_backward(&lse, &[1, 0, 9], &scale)?;
    /// # Ok(()) }
    /// ```
    pub fn cross_entropy_backward(&self, lse: &Tensor, targets: &[u32], grad: &Tensor) -> Result<Tensor> {
        ce_backward(self, lse, targets, grad, None)
    }

    /// The gradient of [`Tensor::cross_entropy_forward_padded`]'s mean loss (see
    /// [`Tensor::cross_entropy_backward`]): zero in each row's padding, from `classes` on.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let logits = Tensor::randn(&gpu, &[2, 8], DType::F32, 0)?; // 5 classes, 3 padding
    /// let (_, lse) = logits.cross_entropy_forward_padded(&[4, 0], 5)?;
    /// let g = Tensor::full(&gpu, &[], 1.0, DType::F32)?;
    /// let d = logits.cross_entropy_backward_padded(&lse, &[4, 0], &g, 5)?.to_vec::<f32>()?;
    /// assert!(d[5..8].iter().chain(&d[13..16]).all(|&v| v == 0.0));
    /// # Ok(()) }
    /// ```
    pub fn cross_entropy_backward_padded(
        &self,
        lse: &Tensor,
        targets: &[u32],
        grad: &Tensor,
        classes: usize,
    ) -> Result<Tensor> {
        ce_backward(self, lse, targets, grad, Some(classes))
    }

    /// LayerNorm over the last dim: `(x − mean) / √(var + eps) · weight + bias`, biased
    /// variance as in PyTorch; `weight` and `bias` (shape `[N]`) are optional.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let (w, b) = (Tensor::full(&gpu, &[8], 1.0, DType::F32)?, Tensor::zeros(&gpu, &[8], DType::F32)?);
    /// let y = x.layer_norm(Some(&w), Some(&b), 1e-5)?;
    /// # Ok(()) }
    /// ```
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        norm_forward("layer_norm", self, weight, bias, eps, false, RowKernel::Auto)
    }

    /// RMSNorm over the last dim: `x / √(mean(x²) + eps) · weight`.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let y = x.rms_norm(None, 1e-6)?;
    /// # Ok(()) }
    /// ```
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        norm_forward("rms_norm", self, weight, None, eps, true, RowKernel::Auto)
    }

    /// Gradients of [`Tensor::layer_norm`] from the input `self`, the weight and the
    /// upstream gradient (`dweight`, `dbias` when a weight is given).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let w = Tensor::full(&gpu, &[8], 1.0, DType::F32)?;
    /// let dy = Tensor::randn(&gpu, &[4, 8], DType::F32, 1)?;
    /// let g = x.layer_norm_backward(Some(&w), &dy, 1e-5)?;
    /// assert!(g.dweight.is_some() && g.dbias.is_some()); // with a weight
    /// assert_eq!(g.dx.shape(), x.shape());
    /// # Ok(()) }
    /// ```
    pub fn layer_norm_backward(&self, weight: Option<&Tensor>, dy: &Tensor, eps: f32) -> Result<NormGradients> {
        norm_backward_with("layer_norm_backward", self, weight, dy, eps, false, NormGrads::Auto)
    }

    /// Gradients of [`Tensor::rms_norm`], the same struct as LayerNorm's (`dbias` is None).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let w = Tensor::full(&gpu, &[8], 1.0, DType::F32)?;
    /// let dy = Tensor::randn(&gpu, &[4, 8], DType::F32, 1)?;
    /// let g = x.rms_norm_backward(Some(&w), &dy, 1e-6)?;
    /// assert!(g.dweight.is_some() && g.dbias.is_none());
    /// # Ok(()) }
    /// ```
    pub fn rms_norm_backward(&self, weight: Option<&Tensor>, dy: &Tensor, eps: f32) -> Result<NormGradients> {
        norm_backward_with("rms_norm_backward", self, weight, dy, eps, true, NormGrads::Auto)
    }
}

/// LayerNorm (`rms = false`) or RMSNorm forward with a forced register class.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::norm::{norm_forward, RowKernel};
/// let x = Tensor::randn(&gpu, &[8, 4096], DType::F32, 0)?;
/// let y = norm_forward("rms_norm", &x, None, None, 1e-6, true, RowKernel::Workgroup(16))?; // a forced register class
/// # Ok(()) }
/// ```
pub fn norm_forward(
    op: &'static str,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    rms: bool,
    kernel: RowKernel,
) -> Result<Tensor> {
    check_eps(op, eps)?;
    if let Some(empty) = zero_size_rows(x) {
        let n = x.shape()[x.rank() - 1];
        param(op, weight, n)?;
        param(op, bias, n)?;
        return empty;
    }
    let r = rows_of(op, x)?;
    // A bad forced class is refused here, before `prologue` below may realise pending
    // inputs (`choose` checks it again once the unit is known).
    if let RowKernel::Workgroup(v) = kernel {
        workgroup_vpt(op, Some(v), r.n, r.unit, WG)?;
    }
    let w = param(op, weight, r.n)?;
    let b = param(op, bias, r.n)?;
    let gpu = x.gpu();
    // A pending element-wise x (the residual add before a norm) runs in this kernel's
    // prologue. 16-bit x needs whole pairs per row to store it (even n).
    let bound = 5 + usize::from(w.is_some()) + usize::from(b.is_some() && !rms);
    let leaf_cap = (gpu.info().limits.max_storage_buffers_per_shader_stage as usize).saturating_sub(bound + 2);
    let prologue = if r.unit >= 2 || r.x.dtype() == DType::F32 {
        // r.x is x itself, or a copy of a strided x made here that no one reads again.
        crate::kernels::elementwise::fusion::prologue(&r.x, PROLOGUE_BINDING, leaf_cap, r.x.shares_storage(x))?
    } else {
        None
    };
    // The prologue evaluates and stores x an element pair at a time.
    let unit = if prologue.is_some() { r.unit.min(2) } else { r.unit };
    let class = choose(op, gpu, kernel, r.n, unit)?;
    let out = Tensor::empty(gpu, op, &[r.rows, r.n], r.out_dtype)?;
    let stats = Tensor::empty(gpu, op, &[r.rows, 2], DType::F32)?;
    let params = gpu.params_buffer(&NormParams { rows: r.rows as u32, n: r.n as u32, eps, ..Default::default() });
    let (entry, vpt) = match class {
        RowKernel::Subgroup => ("forward_sg_rows", 1),
        RowKernel::Workgroup(v) => ("forward", v),
        RowKernel::Auto => ("forward", auto_vpt(r.n, unit, Caps::of(gpu).row_wg())),
    };
    let key = ForwardKey {
        entry,
        x: r.x.dtype(),
        w: w.as_ref().map(|t| t.dtype()),
        b: b.as_ref().map(|t| t.dtype()),
        out: r.out_dtype,
        unit,
        vpt,
        rms,
        caps: Caps::of(gpu),
        prologue: prologue.as_ref().map(|p| (p.shape.clone(), p.held.is_some())),
    };
    let kernel = forward_kernel(gpu, key);
    // Unchecked is safe: row < rows, units < ceil(n / unit) inside contiguous rows; w and b
    // are contiguous [n] at offset 0; stats has one (mean, rstd) per row. A prologue's
    // leaves are views inside their storage expanded to x's shape, indexed below rows·n,
    // and `held` holds rows·n elements.
    let mut bind = vec![(1, out.storage()?.buffer()), (2, &params), (6, stats.storage()?.buffer())];
    if let Some(w) = &w {
        bind.push((3, w.storage()?.buffer()));
    }
    if let Some(b) = &b {
        if !rms {
            bind.push((4, b.storage()?.buffer()));
        }
    }
    let ew_params;
    let leaves: Vec<&std::sync::Arc<crate::tensor::Storage>>;
    match &prologue {
        None => bind.push((0, r.x.storage()?.buffer())),
        Some(p) => {
            ew_params = gpu.meta_buffer(&p.ew_params);
            leaves = p.leaves.iter().map(|t| t.storage()).collect::<Result<_>>()?;
            if let Some(held) = &p.held {
                bind.push((PROLOGUE_BINDING as u32, held.buffer()));
            }
            bind.push((PROLOGUE_BINDING as u32 + 1, &ew_params));
            for (k, s) in leaves.iter().enumerate() {
                bind.push(((PROLOGUE_BINDING + 2 + k) as u32, s.buffer()));
            }
        }
    }
    gpu.dispatch_compiled(&kernel.pipeline(gpu)?, &kernel.kernel, &bind, row_groups(gpu, class, r.rows))?;
    if let Some(p) = prologue {
        p.finish(&r.x);
    }
    finish(out, x.dtype(), x.shape())
}

/// What a norm forward's kernel is built from: the per-device cache's key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ForwardKey {
    entry: &'static str,
    x: DType,
    w: Option<DType>,
    b: Option<DType>,
    out: DType,
    unit: u32,
    vpt: u32,
    rms: bool,
    caps: Caps,
    /// A fused prologue's structure, and whether the kernel stores x.
    prologue: Option<(crate::kernels::elementwise::fusion::PrologueShape, bool)>,
}

/// The norm forwards' kernels by [`ForwardKey`], per device (`Gpu::family_state`). A hit
/// builds no WGSL and looks no pipeline up: generating a fused prologue's WGSL, the
/// kernel's substitutions and the pipeline lookup they keyed were 22% of a GPT-2 decode
/// step's host time on wgpu's noop backend (25 norms a token, each after a residual add).
#[derive(Default)]
struct ForwardKernels(std::sync::Mutex<std::collections::HashMap<ForwardKey, std::sync::Arc<CachedKernel>>>);

/// Entries [`ForwardKernels`] keeps; past it the map starts again (the loop running now
/// refills it).
const FORWARD_KERNELS: usize = 256;

fn forward_kernel(gpu: &crate::Gpu, key: ForwardKey) -> std::sync::Arc<CachedKernel> {
    let cache = gpu.family_state::<ForwardKernels>();
    let mut map = crate::device::lock(&cache.0);
    if let Some(entry) = map.get(&key) {
        return entry.clone();
    }
    let decls = key.prologue.as_ref().map(|(shape, keep)| (shape.decls(), *keep));
    let kernel = norm_kernel(
        key.entry,
        key.x,
        key.w,
        key.b,
        None,
        key.out,
        key.unit,
        key.vpt,
        key.rms,
        key.caps,
        decls.as_ref().map(|(d, keep)| (d.as_str(), *keep)),
    );
    let entry = std::sync::Arc::new(CachedKernel::new(kernel));
    if map.len() >= FORWARD_KERNELS {
        map.clear();
    }
    map.insert(key, entry.clone());
    entry
}

/// The softmax kernels' params, mirrored field for field by `struct SoftmaxParams` in
/// softmax.wgsl: rows and row length, offsets in elements, the mask's rows (0: none) and
/// offset, causal (0/1) with `s_q` rows per causal block, the scale, dy's offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SoftmaxParams {
    rows: u32,
    n: u32,
    x_off: u32,
    mask_rows: u32,
    mask_off: u32,
    causal: u32,
    s_q: u32,
    scale: f32,
    dy_off: u32,
    classes: u32,
}

impl SoftmaxParams {
    /// Plain rows (no mask, scale 1, no padding), dy at `dy_off`: the backward and
    /// cross-entropy.
    fn rows(rows: usize, n: usize, dy_off: usize) -> Self {
        Self {
            rows: rows as u32,
            n: n as u32,
            s_q: 1,
            scale: 1.0,
            dy_off: dy_off as u32,
            classes: n as u32,
            ..Default::default()
        }
    }

    /// These params with elements from `classes` on masked as padding.
    fn with_classes(self, classes: usize) -> Self {
        Self { classes: classes as u32, ..self }
    }
}

/// The LayerNorm / RMSNorm kernels' params, mirrored field for field by `struct NormParams`
/// in norm.wgsl: rows and row length, offsets in elements, eps, and (backward) the rows per
/// chunk of the dw/db partial sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NormParams {
    rows: u32,
    n: u32,
    x_off: u32,
    eps: f32,
    dy_off: u32,
    w_off: u32,
    b_off: u32,
    chunk_rows: u32,
}

/// The layouts of this family's params structs, for the test of their WGSL mirrors.
pub(crate) fn params_layouts() -> Vec<crate::device::ParamsLayout> {
    use crate::device::params_layout;
    vec![
        params_layout!(SoftmaxParams { rows, n, x_off, mask_rows, mask_off, causal, s_q, scale, dy_off, classes }),
        params_layout!(NormParams { rows, n, x_off, eps, dy_off, w_off, b_off, chunk_rows }),
    ]
}

/// The gradients of a LayerNorm or RMSNorm: `dx` (x's shape and dtype), and, when a weight
/// was given, `dweight` and (LayerNorm only) `dbias`, f32 `[n]`.
#[derive(Clone, Debug)]
pub struct NormGradients {
    /// Gradient of the input.
    pub dx: Tensor,
    /// Gradient of the weight (None without one).
    pub dweight: Option<Tensor>,
    /// Gradient of the bias (None without a weight, and for RMSNorm).
    pub dbias: Option<Tensor>,
}

/// How a norm backward sums dw and db over rows ([`norm_backward_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NormGrads {
    /// `InPass` where the row fits (units of at most 16 f32 lanes per invocation: rows of
    /// up to 4096 elements in units of 4 or 2, 2047 odd), `Separate` otherwise.
    #[default]
    Auto,
    /// dx first, then a second kernel reads x and dy again for the partial sums (chunks of
    /// 64 rows).
    Separate,
    /// dx and the partial sums in one pass, this many consecutive rows per workgroup
    /// (1..=4096); rows must fit the largest register class.
    InPass(u32),
}

/// Rows per workgroup of the one-pass backward when not forced: about 256 workgroups, at
/// most 32 rows each. Measured on the H200 at 8192 × 4096 (4, 8, 16, 32, 64 rows: 2048 down
/// to 128 workgroups), f16 LayerNorm 1178, 1519, 1804, 1982, 1515 GB/s and f32 1944, 2359,
/// 2700, 2913, 2091: fewer rows per workgroup write more partial sums (8·N bytes each) and
/// hide less latency behind the next row's loads; 128 workgroups leave some of its 132 SMs
/// idle. BENCHMARKS.md.
fn in_pass_rows(rows: usize) -> u32 {
    rows.div_ceil(256).clamp(1, 32) as u32
}

/// LayerNorm (`rms = false`) or RMSNorm backward ([`NormGradients`]), with a forced way to dw
/// and db (the tests and benchmarks compare them; [`Tensor::layer_norm_backward`] is `Auto`).
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::norm::{norm_backward_with, NormGrads};
/// let x = Tensor::randn(&gpu, &[64, 512], DType::F32, 0)?;
/// let w = Tensor::full(&gpu, &[512], 1.0, DType::F32)?;
/// let dy = Tensor::randn(&gpu, &[64, 512], DType::F32, 1)?;
/// let g = norm_backward_with("layer_norm_backward", &x, Some(&w), &dy, 1e-5, false, NormGrads::InPass(8))?;
/// assert!(g.dweight.is_some() && g.dbias.is_some());
/// # Ok(()) }
/// ```
pub fn norm_backward_with(
    op: &'static str,
    x: &Tensor,
    weight: Option<&Tensor>,
    dy: &Tensor,
    eps: f32,
    rms: bool,
    grads: NormGrads,
) -> Result<NormGradients> {
    check_eps(op, eps)?;
    if x.shape() != dy.shape() {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: dy.shape().to_vec() });
    }
    if x.dtype() != dy.dtype() {
        return Err(Error::DTypeMismatch { op, lhs: x.dtype(), rhs: dy.dtype() });
    }
    if let Some(empty) = zero_size_rows(x) {
        // No rows: dw and db are sums over nothing (zeros); rows of no elements: empty.
        let n = x.shape()[x.rank() - 1];
        param(op, weight, n)?;
        let zeros = || Tensor::zeros(x.gpu(), &[n], DType::F32);
        return Ok(NormGradients {
            dx: empty?,
            dweight: weight.map(|_| zeros()).transpose()?,
            dbias: if weight.is_some() && !rms { Some(zeros()?) } else { None },
        });
    }
    if let NormGrads::InPass(per) = grads {
        if !(1..=4096).contains(&per) {
            return Err(Error::InvalidArgument { op, msg: format!("{per} rows per workgroup: not in 1..=4096") });
        }
    }
    let r = rows_of(op, x)?;
    let w = param(op, weight, r.n)?;
    // Rows up to SG_BACKWARD_ROWS_MAX take one subgroup each (dw, db by the separate pass),
    // unless the one pass is forced.
    let sg_rows =
        x.gpu().has(wgpu::Features::SUBGROUP) && r.n <= SG_BACKWARD_ROWS_MAX && !matches!(grads, NormGrads::InPass(_));
    let wg = Caps::of(x.gpu()).row_wg();
    let vpt = if sg_rows { 1 } else { auto_vpt(r.n, r.unit, wg) };
    let grads = if sg_rows { NormGrads::Separate } else { grads };
    let per_group = in_pass_rows_for(op, &r, vpt, w.is_some(), grads, wg)?;
    let chunk_rows = per_group.map_or(ROWS_PER_CHUNK, |p| p as usize);
    let chunks = r.rows.div_ceil(chunk_rows);
    // param_grads puts the chunks on the grid's second dimension.
    let max = x.gpu().info().limits.max_compute_workgroups_per_dimension as usize;
    if w.is_some() && per_group.is_none() && chunks > max {
        return Err(Error::InvalidArgument { op, msg: format!("{} rows exceed {max} chunks of {chunk_rows}", r.rows) });
    }
    let dyc = dy.contiguous()?;
    let gpu = x.gpu();
    let dx = Tensor::empty(gpu, op, &[r.rows, r.n], r.out_dtype)?;
    let params = gpu.params_buffer(&NormParams {
        rows: r.rows as u32,
        n: r.n as u32,
        eps,
        dy_off: dyc.offset() as u32,
        chunk_rows: chunk_rows as u32,
        ..Default::default()
    });
    let entry = match (per_group, sg_rows) {
        (Some(_), _) => "backward_grads",
        (None, true) => "backward_sg_rows",
        (None, false) => "backward",
    };
    let k = norm_kernel(
        entry,
        r.x.dtype(),
        w.as_ref().map(|t| t.dtype()),
        None,
        Some(dy.dtype()),
        r.out_dtype,
        r.unit,
        vpt,
        rms,
        Caps::of(gpu),
        None,
    );
    let partials = match &w {
        Some(_) => Some(Tensor::empty(gpu, op, &[chunks, 2, r.n], DType::F32)?),
        None => None,
    };
    // Per-row (mean, rstd) for param_grads (`backward` writes them; the one pass needs none).
    let stats = Tensor::empty(gpu, op, &[r.rows, 2], DType::F32)?;
    let mut bind =
        vec![(0, r.x.storage()?.buffer()), (1, dx.storage()?.buffer()), (2, &params), (5, dyc.storage()?.buffer())];
    if let Some(w) = &w {
        bind.push((3, w.storage()?.buffer()));
    }
    match (&partials, per_group) {
        // Unchecked is safe: every load index is clamped into the row (unit ≤ units − 1,
        // row < rows) and group g < chunks writes partials[g·2n + j], j < 2n; the subgroup
        // kernel reads and writes units u < units of rows row < rows only.
        (Some(p), Some(_)) => bind.push((7, p.storage()?.buffer())),
        _ => bind.push((6, stats.storage()?.buffer())),
    }
    let groups = match per_group {
        Some(_) => chunks as u32,
        None if sg_rows => row_groups(gpu, RowKernel::Subgroup, r.rows),
        None => r.rows as u32,
    };
    gpu.dispatch(&k, &bind, groups)?;
    let dx = finish(dx, x.dtype(), x.shape())?;
    let (Some(w), Some(partials)) = (w, partials) else { return Ok(NormGradients { dx, dweight: None, dbias: None }) };
    let (dw, db) = param_grads(
        op,
        &r,
        &w,
        &partials,
        &ParamGradBuffers { params: &params, dy: &dyc, stats: &stats },
        chunks,
        per_group.is_some(),
        rms,
    )?;
    Ok(NormGradients { dx, dweight: Some(dw), dbias: db })
}

/// Rows per workgroup of the one-pass backward (dx, dw and db together), or None for the
/// separate param_grads pass: none without a weight; Auto takes the one pass where a row
/// fits one workgroup's registers; InPass is refused where it does not.
fn in_pass_rows_for(
    op: &'static str,
    r: &Rows,
    vpt: u32,
    has_weight: bool,
    grads: NormGrads,
    wg: usize,
) -> Result<Option<u32>> {
    let lanes = if r.unit == 4 { 4 } else { 2 };
    let fits = r.n.div_ceil(r.unit as usize) <= wg * vpt as usize;
    Ok(match grads {
        _ if !has_weight => None,
        NormGrads::Auto if fits && vpt * lanes <= 16 => Some(in_pass_rows(r.rows)),
        NormGrads::Auto | NormGrads::Separate => None,
        NormGrads::InPass(_) if !fits => {
            return Err(Error::InvalidArgument {
                op,
                msg: format!(
                    "rows of {} elements do not fit one pass (at most {})",
                    r.n,
                    wg * vpt as usize * r.unit as usize
                ),
            })
        }
        NormGrads::InPass(per) => Some(per),
    })
}

/// The buffers the backward's param-gradient passes read besides x and the partials.
struct ParamGradBuffers<'a> {
    params: &'a wgpu::Buffer,
    dy: &'a Tensor,
    stats: &'a Tensor,
}

/// dw (and db for LayerNorm) from the backward's per-chunk partial sums: the separate
/// param_grads pass first unless the one pass wrote them (`in_pass`), then one kernel sums
/// the chunks and stores both in the weight's dtype.
#[allow(clippy::too_many_arguments)]
fn param_grads(
    op: &'static str,
    r: &Rows,
    w: &Tensor,
    partials: &Tensor,
    bufs: &ParamGradBuffers,
    chunks: usize,
    in_pass: bool,
    rms: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let gpu = w.gpu();
    let (params, dyc, stats) = (bufs.params, bufs.dy, bufs.stats);
    let dy_dtype = dyc.dtype();
    if !in_pass {
        let k = norm_kernel(
            "param_grads",
            r.x.dtype(),
            None,
            None,
            Some(dy_dtype),
            r.out_dtype,
            r.unit,
            1,
            rms,
            PLAIN,
            None,
        );
        gpu.dispatch_3d(
            &k,
            &[
                (0, r.x.storage()?.buffer()),
                (2, params),
                (5, dyc.storage()?.buffer()),
                (6, stats.storage()?.buffer()),
                (7, partials.storage()?.buffer()),
            ],
            [r.n.div_ceil(r.unit as usize).div_ceil(WG) as u32, chunks as u32, 1],
        )?;
    }
    // [2n] = dw then db, summed over chunks and stored in the weight's dtype by one kernel.
    let grads = Tensor::empty(gpu, op, &[2 * r.n], w.dtype())?;
    let k = norm_kernel("param_grads_sum", r.x.dtype(), None, None, None, w.dtype(), 2, 1, rms, Caps::of(gpu), None);
    // Unchecked is safe: pair p < n reads partials[c·2n + 2p + {0, 1}] with c < chunks and
    // writes elements 2p, 2p + 1 < 2n of `grads` (pairs: 2n is even).
    gpu.dispatch(
        &k,
        &[(1, grads.storage()?.buffer()), (2, params), (7, partials.storage()?.buffer())],
        r.n.div_ceil(32) as u32,
    )?;
    let dw = grads.narrow(0, 0, r.n)?;
    let db = if rms { None } else { Some(grads.narrow(0, r.n, r.n)?) };
    Ok((dw, db))
}

/// `eps` must be finite and ≥ 0 (a negative one turns rows of equal values into NaNs), as
/// the optimizers require of theirs.
fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        return Ok(());
    }
    Err(Error::InvalidArgument { op, msg: format!("eps must be finite and ≥ 0, got {eps}") })
}
