//! Element-wise binary ops with broadcasting, unary maps, copies of strided views, and
//! casts. With fusion on (the default) they return pending tensors that the fusion JIT
//! compiles into one kernel per chain; with it off, one dispatch per op.
//!
//! ```no_run
//! use wgkernels::{DType, Gpu, Tensor};
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = Gpu::new()?;
//! let x = Tensor::randn(&gpu, &[4, 1024], DType::F32, 0)?;
//! let bias = Tensor::randn(&gpu, &[1024], DType::F32, 1)?;     // broadcast over rows
//! let y = (&x + &bias)?.gelu()?.mul(&x)?;                       // one fused kernel
//! let y16 = y.to_dtype(DType::BF16)?;                           // a cast, fused too
//! println!("{:?}", &y16.to_vec_f32()?[..4]);
//! # Ok(()) }
//! ```

pub(crate) mod fusion;
pub mod gather;
pub mod transpose;

pub use fusion::dropout_keeps;

use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::DType;

const WORKGROUP: usize = 256;
/// Output units per invocation (`UNROLL` in the shader).
const UNROLL: usize = 4;

/// Binary element-wise ops.
///
/// ```
/// use wgkernels::ops::elementwise::BinaryOp;
/// assert_eq!(BinaryOp::Pow.apply_f64(2.0, 3.0), 8.0);
/// assert_eq!(BinaryOp::Gt.name(), "gt");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// x + y
    Add,
    /// x − y
    Sub,
    /// x · y
    Mul,
    /// x / y
    Div,
    /// max(x, y)
    Maximum,
    /// min(x, y)
    Minimum,
    /// x^y (WGSL `pow`: undefined for x < 0, as in most GPU languages)
    Pow,
    /// 1 where x > y, else 0
    Gt,
    /// 1 where x < y, else 0
    Lt,
    /// 1 where x ≥ y, else 0
    Ge,
    /// 1 where x ≤ y, else 0
    Le,
    /// 1 where x = y, else 0
    Eq,
}

impl BinaryOp {
    /// Every binary op, for tests and the portability check.
    pub const ALL: [BinaryOp; 12] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Pow,
        BinaryOp::Gt,
        BinaryOp::Lt,
        BinaryOp::Ge,
        BinaryOp::Le,
        BinaryOp::Eq,
    ];

    /// The comparisons: 1 where they hold, else 0.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Gt | BinaryOp::Lt | BinaryOp::Ge | BinaryOp::Le | BinaryOp::Eq)
    }

    /// The op's name in errors.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Pow => "pow",
            BinaryOp::Gt => "gt",
            BinaryOp::Lt => "lt",
            BinaryOp::Ge => "ge",
            BinaryOp::Le => "le",
            BinaryOp::Eq => "eq",
        }
    }

    /// WGSL expression over `x` and `y`.
    pub(crate) fn wgsl(self) -> &'static str {
        match self {
            BinaryOp::Add => "x + y",
            BinaryOp::Sub => "x - y",
            BinaryOp::Mul => "x * y",
            BinaryOp::Div => "x / y",
            BinaryOp::Maximum => "max(x, y)",
            BinaryOp::Minimum => "min(x, y)",
            BinaryOp::Pow => "pow(x, y)",
            BinaryOp::Gt => "select(0.0, 1.0, x > y)",
            BinaryOp::Lt => "select(0.0, 1.0, x < y)",
            BinaryOp::Ge => "select(0.0, 1.0, x >= y)",
            BinaryOp::Le => "select(0.0, 1.0, x <= y)",
            BinaryOp::Eq => "select(0.0, 1.0, x == y)",
        }
    }

    /// The same op in f64, for CPU references.
    pub fn apply_f64(self, x: f64, y: f64) -> f64 {
        match self {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Maximum => x.max(y),
            BinaryOp::Minimum => x.min(y),
            BinaryOp::Pow => x.powf(y),
            BinaryOp::Gt => (x > y) as u8 as f64,
            BinaryOp::Lt => (x < y) as u8 as f64,
            BinaryOp::Ge => (x >= y) as u8 as f64,
            BinaryOp::Le => (x <= y) as u8 as f64,
            BinaryOp::Eq => (x == y) as u8 as f64,
        }
    }
}

/// Unary maps, computed in f32. `Copy` with another output dtype is a cast.
///
/// ```
/// use wgkernels::ops::elementwise::UnaryOp;
/// assert_eq!(UnaryOp::Relu.apply_f64(-1.0), 0.0);
/// assert!(UnaryOp::ALL.contains(&UnaryOp::Silu));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// The value itself (a copy, or a cast when the output dtype differs).
    Copy,
    /// −x
    Neg,
    /// |x|
    Abs,
    /// eˣ
    Exp,
    /// ln x
    Log,
    /// √x
    Sqrt,
    /// 1/√x
    Rsqrt,
    /// 1/x
    Recip,
    /// sin x
    Sin,
    /// cos x
    Cos,
    /// tanh x (through exp of −2|x|: ±1 for large |x|, never NaN)
    Tanh,
    /// 1/(1 + e⁻ˣ)
    Sigmoid,
    /// max(x, 0)
    Relu,
    /// x·Φ(x), erf form (PyTorch's default)
    Gelu,
    /// the tanh approximation of gelu (GPT-2's)
    GeluTanh,
    /// x·sigmoid(x)
    Silu,
    /// x²
    Square,
}

impl UnaryOp {
    /// Every unary op, for tests and the portability check.
    pub const ALL: [UnaryOp; 17] = [
        UnaryOp::Copy,
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
        UnaryOp::Square,
    ];

    /// The op's name in errors and reports.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Copy => "copy",
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Silu => "silu",
            UnaryOp::Square => "square",
        }
    }

    /// WGSL expression over `x` (helpers from shaders/math.wgsl).
    pub(crate) fn wgsl(self) -> &'static str {
        match self {
            UnaryOp::Copy => "x",
            UnaryOp::Neg => "-x",
            UnaryOp::Abs => "abs(x)",
            UnaryOp::Exp => "exp(x)",
            UnaryOp::Log => "log(x)",
            UnaryOp::Sqrt => "sqrt(x)",
            UnaryOp::Rsqrt => "inverseSqrt(x)",
            UnaryOp::Recip => "1.0 / x",
            UnaryOp::Sin => "sin(x)",
            UnaryOp::Cos => "cos(x)",
            UnaryOp::Tanh => "tanh_stable(x)",
            UnaryOp::Sigmoid => "sigmoid(x)",
            UnaryOp::Relu => "max(x, 0.0)",
            UnaryOp::Gelu => "gelu_erf(x)",
            UnaryOp::GeluTanh => "gelu_tanh(x)",
            UnaryOp::Silu => "x * sigmoid(x)",
            UnaryOp::Square => "x * x",
        }
    }

    /// The same op in f64, for CPU references.
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            UnaryOp::Copy => x,
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::Gelu => 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2)),
            UnaryOp::GeluTanh => {
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
            }
            UnaryOp::Silu => x / (1.0 + (-x).exp()),
            UnaryOp::Square => x * x,
        }
    }
}

/// erf in f64 (series for small |x|, continued fraction tail), accurate to ~1e-15.
pub(crate) fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // Maclaurin series: 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1)).
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz), converges fast for a ≥ 3.
        let mut f = a;
        let mut c = a;
        let mut d = 0.0;
        for k in 1..200 {
            let ak = k as f64 * 0.5;
            d = a + ak * d;
            d = 1.0 / d;
            c = a + ak / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    };
    r.copysign(x)
}

/// NumPy broadcasting of two shapes.
///
/// ```
/// use wgkernels::ops::elementwise::broadcast_shapes;
/// assert_eq!(broadcast_shapes("add", &[4, 1, 3], &[5, 1]).unwrap(), vec![4, 5, 3]);
/// assert!(broadcast_shapes("add", &[2], &[3]).is_err());
/// ```
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], d: usize| if d + s.len() < rank { 1 } else { s[d + s.len() - rank] };
    (0..rank)
        .map(|d| match (dim(a, d), dim(b, d)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::ShapeMismatch { op, lhs: a.to_vec(), rhs: b.to_vec() }),
        })
        .collect()
}

/// Merges adjacent dims that every operand walks contiguously, and drops size-1 dims, so
/// that most layouts fit the kernels' MAX_DIMS (see fusion::ChainParams) and the index math does fewer divisions.
pub(crate) fn collapse(shape: &[usize], strides: &mut [Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let mergeable = !out_shape.is_empty()
            && strides.iter().enumerate().all(|(k, s)| *out_strides[k].last().unwrap() == s[d] * shape[d]);
        if mergeable {
            *out_shape.last_mut().unwrap() *= shape[d];
            for (k, s) in strides.iter().enumerate() {
                *out_strides[k].last_mut().unwrap() = s[d];
            }
        } else {
            out_shape.push(shape[d]);
            for (k, s) in strides.iter().enumerate() {
                out_strides[k].push(s[d]);
            }
        }
    }
    (out_shape, out_strides)
}

/// `Err` naming `op` unless every tensor lives on the first one's device.
pub(crate) fn same_device(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    match tensors.split_first() {
        Some((first, rest))
            if rest.iter().any(|t| !std::ptr::eq(t.gpu().inner.as_ref(), first.gpu().inner.as_ref())) =>
        {
            Err(Error::InvalidArgument { op, msg: "operands live on different Gpu devices".into() })
        }
        _ => Ok(()),
    }
}

/// The kernel for given input dtypes (None for the absent second input), contiguity and
/// output dtype, on the 16-byte path with `wide` elements per unit, labelled `name` in
/// profiles (as the fusion JIT's: the op, or "copy"). Trusted: see `launch` for why every
/// index is in range.
fn kernel(a: (DType, bool), b: Option<(DType, bool)>, op: &str, name: &str, out: DType, wide: Option<usize>) -> Kernel {
    use fusion::Access;
    let layout = |(d, contiguous): (DType, bool)| (d, if contiguous { Access::Contiguous } else { Access::Strided });
    let (a, b) = (layout(a), b.map(layout));
    // One op is the shortest chain the fusion JIT generates: the same template serves both.
    let (leaves, body) = match b {
        Some(b) => (
            vec![a, b],
            format!("let x = load_0(index_0(i));\n    let y = load_1(index_1(i));\n    let r = {op};\n    "),
        ),
        None => (vec![a], format!("let x = load_0(index_0(i));\n    let r = {op};\n    ")),
    };
    let wide = wide.map(|elements| fusion::Wide { elements, units: UNROLL });
    fusion::fused_kernel(&leaves, fusion::ExtraSlots::default(), "", &body, &[("r".into(), out)], wide).note(name)
}

/// This class's WGSL files.
pub(crate) fn shaders() -> Vec<&'static crate::device::ShaderSource> {
    vec![&fusion::FUSED, &transpose::TRANSPOSE, &gather::GATHER]
}

/// Every specialisation `binary` and `map` can launch, the fusion JIT's sample chains and
/// the transposed copies.
pub fn all_kernels() -> Vec<Kernel> {
    let mut all = Vec::new();
    // Elements per 16-byte unit: 4 when every dtype is f32, else 8.
    let wide = |dtypes: &[DType]| if dtypes.iter().all(|&d| d == DType::F32) { 4 } else { 8 };
    for out in DType::ALL {
        for a in DType::ALL {
            for ac in [false, true] {
                all.push(kernel((a, ac), None, "x", "copy", out, None));
            }
            all.push(kernel((a, true), None, "x", "copy", out, Some(wide(&[a, out]))));
        }
        for op in UnaryOp::ALL {
            all.push(kernel((out, true), None, op.wgsl(), op.name(), out, None));
            all.push(kernel((out, true), None, op.wgsl(), op.name(), out, Some(wide(&[out]))));
        }
        for op in BinaryOp::ALL {
            for ac in [false, true] {
                for bc in [false, true] {
                    all.push(kernel((out, ac), Some((out, bc)), op.wgsl(), op.name(), out, None));
                }
            }
            all.push(kernel((out, true), Some((out, true)), op.wgsl(), op.name(), out, Some(wide(&[out]))));
        }
    }
    all.extend(fusion::sample_kernels());
    all.extend(transpose::all_kernels());
    all.extend(gather::all_kernels());
    all
}

/// Launches one element-wise kernel writing a new contiguous tensor of `out_shape`.
///
/// Why the kernel may run unchecked: every input is a view whose elements all lie inside
/// its storage (an invariant of `Tensor`'s view constructors), and it has been expanded to
/// `out_shape`, so for each output index `i < n` the element index the shader computes is
/// one of the view's elements; its word (`e` or `e >> 1`) is inside the buffer. The output
/// word of unit `t` is written only when `t·per < n`, and the buffer holds
/// ceil(n / per) words. The params hold every array element the shader reads (one view per
/// input).
fn launch(
    op: &'static str,
    inputs: &[&Tensor],
    out_shape: &[usize],
    out_dtype: DType,
    wgsl_op: &str,
) -> Result<Tensor> {
    let gpu = inputs[0].gpu();
    let out = Tensor::empty(gpu, op, out_shape, out_dtype)?;
    let n = out.numel();
    if n == 0 {
        return Ok(out);
    }
    let (params, layout) = fusion::ChainParams::new(op, out_shape, inputs)?;
    // The one-op kernels index a leaf contiguously or by its strides (a repeated row, which
    // the fusion JIT reads by one remainder, takes the strided path here).
    let contiguous: Vec<bool> = layout.iter().map(|l| l.1 == fusion::Access::Contiguous).collect();
    let a = (inputs[0].dtype(), contiguous[0]);
    let b = inputs.get(1).map(|t| (t.dtype(), contiguous[1]));
    // Whole 16-byte units (4 f32 elements, 8 where a dtype is 16-bit) where every operand is
    // contiguous and aligned to its words (see fusion::wide_elements).
    let layout: Vec<fusion::LeafLayout> = inputs
        .iter()
        .zip(&contiguous)
        .map(|(t, &c)| (t.dtype(), if c { fusion::Access::Contiguous } else { fusion::Access::Strided }))
        .collect();
    let offsets: Vec<usize> = inputs.iter().map(|t| t.offset()).collect();
    let wide = fusion::wide_elements(&layout, &offsets, &[out_dtype], n, 0);
    let label = if matches!(op, "contiguous" | "to_dtype") { "copy" } else { op };
    let k = kernel(a, b, wgsl_op, label, out_dtype, wide);
    let meta_buf = gpu.meta_buffer(&params.words());
    let per = match wide {
        Some(elements) => elements,
        None if out_dtype == DType::F32 => 1,
        None => 2,
    };
    let groups = n.div_ceil(per).div_ceil(WORKGROUP * UNROLL) as u32;
    let out_buf = out.storage()?.buffer();
    let a_buf = inputs[0].storage()?.buffer();
    match inputs.get(1) {
        Some(t) => gpu.dispatch(&k, &[(0, a_buf), (1, t.storage()?.buffer()), (2, out_buf), (3, &meta_buf)], groups)?,
        None => gpu.dispatch(&k, &[(0, a_buf), (1, out_buf), (2, &meta_buf)], groups)?,
    }
    Ok(out)
}

/// `op(a, b)` with broadcasting; both operands must have the same dtype.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::elementwise::{binary, BinaryOp};
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let y = binary(&x, &x, BinaryOp::Mul)?; // same as x.mul(&x)
/// # Ok(()) }
/// ```
pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let name = op.name();
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch { op: name, lhs: a.dtype(), rhs: b.dtype() });
    }
    same_device(name, &[a, b])?;
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    // Only operands of another shape become broadcast views (a pending one is realised
    // for that); same-shape pending operands stay in the fused chain.
    let expand = |t: &Tensor| if t.shape() == shape.as_slice() { Ok(t.clone()) } else { t.expand(&shape) };
    let (a, b) = (expand(a)?, expand(b)?);
    if a.gpu().fusion() {
        return fusion::lazy_zip(op, a.clone(), b, a.dtype());
    }
    launch(name, &[&a, &b], &shape, a.dtype(), op.wgsl())
}

/// `op(x)` into a new contiguous tensor of `out_dtype` (a copy, or a cast when the dtype
/// changes). With fusion on, everything but a plain copy returns a pending tensor.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::elementwise::{map, UnaryOp};
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let y = map(&x, UnaryOp::Exp, DType::BF16)?; // exp, stored as bf16
/// # Ok(()) }
/// ```
pub fn map(x: &Tensor, op: UnaryOp, out_dtype: DType) -> Result<Tensor> {
    let name = match op {
        UnaryOp::Copy if out_dtype == x.dtype() => "contiguous",
        UnaryOp::Copy => "to_dtype",
        op => op.name(),
    };
    if x.gpu().fusion() && name != "contiguous" {
        return fusion::lazy_map(op, x.clone(), out_dtype);
    }
    launch(name, &[x], x.shape(), out_dtype, op.wgsl())
}

/// `cond != 0 ? a : b` element-wise, the three broadcast together (`torch.where`). `a` and
/// `b` share a dtype, which the result has; `cond` may be any dtype (comparisons give 1/0).
/// Lazy with fusion on, like every element-wise op.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// use wgkernels::ops::elementwise::where_;
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let zero = Tensor::zeros(&gpu, &[1], DType::F32)?;
/// let leaky = where_(&x.gt(&zero)?, &x, &x.mul_scalar(0.01)?)?; // one fused kernel
/// # Ok(()) }
/// ```
pub fn where_(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "where";
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch { op: OP, lhs: a.dtype(), rhs: b.dtype() });
    }
    same_device(OP, &[a, b, cond])?;
    let shape = broadcast_shapes(OP, &broadcast_shapes(OP, cond.shape(), a.shape())?, b.shape())?;
    let expand = |t: &Tensor| if t.shape() == shape.as_slice() { Ok(t.clone()) } else { t.expand(&shape) };
    let t = fusion::lazy_where(expand(cond)?, expand(a)?, expand(b)?)?;
    if !a.gpu().fusion() {
        t.realize()?;
    }
    Ok(t)
}

macro_rules! scalar_methods {
    ($($method:ident => $op:ident, $first:expr, $what:literal;)*) => {
        impl Tensor {
            $(
                #[doc = concat!("`", $what, "` element-wise with a constant (computed in f32, stored in this dtype). ",
                    "The constant is a runtime parameter of the fused kernel: another value compiles nothing.",
                    "\n\n```no_run\n# use wgkernels::{DType, Gpu, Tensor};\n# fn main() -> wgkernels::Result<()> {\n# let gpu = Gpu::new()?;\n",
                    "let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;\nlet y = x.", stringify!($method), "(0.5)?;\n# Ok(()) }\n```")]
                pub fn $method(&self, value: f32) -> Result<Tensor> {
                    let t = fusion::lazy_scalar(BinaryOp::$op, self.clone(), value, $first)?;
                    if !self.gpu().fusion() {
                        t.realize()?;
                    }
                    Ok(t)
                }
            )*
        }
    };
}

scalar_methods! {
    add_scalar => Add, false, "x + value";
    sub_scalar => Sub, false, "x - value";
    rsub_scalar => Sub, true, "value - x";
    mul_scalar => Mul, false, "x * value";
    div_scalar => Div, false, "x / value";
    rdiv_scalar => Div, true, "value / x";
    pow_scalar => Pow, false, "x ^ value";
    maximum_scalar => Maximum, false, "max(x, value)";
    minimum_scalar => Minimum, false, "min(x, value)";
}

impl Tensor {
    /// Clamps every element to [`min`, `max`] (one fused node pair).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[64], DType::F32, 0)?;
    /// let c = x.clamp(-1.0, 1.0)?;
    /// assert!(c.to_vec_f32()?.iter().all(|v| (-1.0..=1.0).contains(v)));
    /// # Ok(()) }
    /// ```
    pub fn clamp(&self, min: f32, max: f32) -> Result<Tensor> {
        if min > max {
            return Err(Error::InvalidArgument { op: "clamp", msg: format!("min {min} > max {max}") });
        }
        self.maximum_scalar(min)?.minimum_scalar(max)
    }
}

macro_rules! binary_methods {
    ($($method:ident => $op:ident, $trait:ident :: $tmethod:ident;)*) => {
        impl Tensor {
            $(
                #[doc = concat!("Element-wise `", stringify!($method), "` with NumPy broadcasting; dtypes must match. Lazy with fusion on.",
                    "\n\n```no_run\n# use wgkernels::{DType, Gpu, Tensor};\n# fn main() -> wgkernels::Result<()> {\n# let gpu = Gpu::new()?;\nlet x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;\nlet row = Tensor::randn(&gpu, &[8], DType::F32, 1)?;\nlet y = x.", stringify!($method), "(&row)?; // row broadcast over x's 4 rows\n# Ok(()) }\n```")]
                pub fn $method(&self, other: &Tensor) -> Result<Tensor> {
                    binary(self, other, BinaryOp::$op)
                }
            )*
        }
        $(
            impl std::ops::$trait<&Tensor> for &Tensor {
                type Output = Result<Tensor>;
                fn $tmethod(self, rhs: &Tensor) -> Result<Tensor> {
                    binary(self, rhs, BinaryOp::$op)
                }
            }
        )*
    };
}

binary_methods! {
    add => Add, Add::add;
    sub => Sub, Sub::sub;
    mul => Mul, Mul::mul;
    div => Div, Div::div;
}

macro_rules! unary_methods {
    ($($method:ident => $op:ident),* $(,)?) => {
        impl Tensor {
            $(
                #[doc = concat!("Element-wise `", stringify!($method), "` (see [`UnaryOp::", stringify!($op), "`]), computed in f32, same dtype out. Lazy with fusion on.",
                    "\n\n```no_run\n# use wgkernels::{DType, Gpu, Tensor};\n# fn main() -> wgkernels::Result<()> {\n# let gpu = Gpu::new()?;\nlet x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;\nlet y = x.", stringify!($method), "()?;\n# Ok(()) }\n```")]
                pub fn $method(&self) -> Result<Tensor> {
                    map(self, UnaryOp::$op, self.dtype())
                }
            )*
        }
    };
}

unary_methods! {
    neg => Neg, abs => Abs, exp => Exp, log => Log, sqrt => Sqrt, rsqrt => Rsqrt, recip => Recip,
    sin => Sin, cos => Cos, tanh => Tanh, sigmoid => Sigmoid, relu => Relu, gelu => Gelu,
    gelu_tanh => GeluTanh, silu => Silu, square => Square,
}

macro_rules! binary_only_methods {
    ($($method:ident => $op:ident),* $(,)?) => {
        impl Tensor {
            $(
                #[doc = concat!("Element-wise `", stringify!($method), "` with broadcasting (see [`BinaryOp::", stringify!($op), "`]); comparisons give 1.0 or 0.0 in the inputs' dtype.",
                    "\n\n```no_run\n# use wgkernels::{DType, Gpu, Tensor};\n# fn main() -> wgkernels::Result<()> {\n# let gpu = Gpu::new()?;\nlet x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;\nlet y = x.", stringify!($method), "(&x.abs()?)?;\n# Ok(()) }\n```")]
                pub fn $method(&self, other: &Tensor) -> Result<Tensor> {
                    binary(self, other, BinaryOp::$op)
                }
            )*
        }
    };
}

binary_only_methods! { pow => Pow, gt => Gt, lt => Lt, ge => Ge, le => Le, eq => Eq }

impl Tensor {
    /// Inverted dropout: each element is kept with probability 1 − p and scaled by
    /// 1/(1 − p), or zeroed. The mask is a counter-based hash of (`seed`, linear index): the
    /// same on every backend, never stored, fused into the surrounding element-wise chain
    /// (`seed` and `p` are runtime parameters, so a new seed per step compiles nothing). The
    /// backward is the same call on the gradient: `dy.dropout(p, seed)`.
    ///
    /// Errors: `InvalidArgument` unless 0 ≤ p < 1.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let (p, seed) = (0.1, 1234);
    /// let y = x.dropout(p, seed)?;                 // fused with what follows
    /// let dy = Tensor::randn(&gpu, &[4, 8], DType::F32, 1)?;
    /// let dx = dy.dropout(p, seed)?;               // the backward: the same mask
    /// # Ok(()) }
    /// ```
    pub fn dropout(&self, p: f32, seed: u64) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument { op: "dropout", msg: format!("p must be in [0, 1), got {p}") });
        }
        let t = fusion::lazy_dropout(self.clone(), p, seed)?;
        if !self.gpu().fusion() {
            // Unfused: its own kernel now, as every other op with fusion off.
            t.realize()?;
        }
        Ok(t)
    }

    /// Element-wise maximum with broadcasting (NaN handling follows the backend's `max`).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let zero = Tensor::zeros(&gpu, &[1], DType::F32)?;
    /// let relu = x.maximum(&zero)?; // broadcast
    /// # Ok(()) }
    /// ```
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, BinaryOp::Maximum)
    }

    /// Element-wise minimum with broadcasting.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let one = Tensor::full(&gpu, &[1], 1.0, DType::F32)?;
    /// let clipped = x.minimum(&one)?;
    /// # Ok(()) }
    /// ```
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, BinaryOp::Minimum)
    }
}

/// Copies and casts: the tensor layer's `reshape` of a strided view and every read-back of
/// one come here.
impl Tensor {
    /// A contiguous copy when `self` is a strided view or has an offset; `self` otherwise.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let c = x.transpose(0, 1)?.contiguous()?; // materialised [8, 4]
    /// assert!(c.is_contiguous());
    /// # Ok(()) }
    /// ```
    pub fn contiguous(&self) -> Result<Self> {
        if self.is_contiguous() && self.offset() == 0 {
            return Ok(self.clone());
        }
        // A view with its last two dims swapped: tiles through workgroup memory.
        if let Some(t) = transpose::try_copy(self)? {
            return Ok(t);
        }
        map(self, UnaryOp::Copy, self.dtype())
    }

    /// This tensor where its elements are contiguous at any offset (a kernel then reads it
    /// where it lies, its offset a param), else [`Tensor::contiguous`]'s copy.
    pub(crate) fn contiguous_at_any_offset(&self) -> Result<Self> {
        if self.is_contiguous() {
            Ok(self.clone())
        } else {
            self.contiguous()
        }
    }

    /// The same values in `dtype` (round-to-nearest-even when narrowing).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let h = x.to_dtype(DType::F16)?;
    /// assert_eq!(h.dtype(), DType::F16);
    /// # Ok(()) }
    /// ```
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        map(self, UnaryOp::Copy, dtype)
    }
}

impl Tensor {
    /// Writes `src`'s values into this view, which must be dense (one block of its storage)
    /// with `src`'s shape, dtype and device: one buffer copy after `src` is made contiguous.
    ///
    /// Errors: as [`Tensor::cat`]'s, and `Unsupported` where a 16-bit block does not start
    /// and end on 4-byte boundaries (copy commands move whole words).
    ///
    /// The caller guarantees that nothing still pending reads the elements written (a lazy
    /// expression realised later would see the new values): the KV cache writes only rows
    /// past every view it has handed out.
    pub(crate) fn copy_from(&self, src: &Tensor) -> Result<()> {
        const OP: &str = "copy_from";
        same_device(OP, &[self, src])?;
        if self.dtype() != src.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: self.dtype(), rhs: src.dtype() });
        }
        if self.shape() != src.shape() {
            return Err(Error::ShapeMismatch { op: OP, lhs: self.shape().to_vec(), rhs: src.shape().to_vec() });
        }
        if !self.is_contiguous() {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("the destination {:?} with strides {:?} is not dense", self.shape(), self.strides()),
            });
        }
        let esize = self.dtype().size_in_bytes();
        let (to, bytes) = ((self.offset() * esize) as u64, (self.numel() * esize) as u64);
        if bytes == 0 {
            return Ok(());
        }
        let src = src.contiguous_at_any_offset()?;
        let from = (src.offset() * esize) as u64;
        if [to, from, bytes].iter().any(|b| b % wgpu::COPY_BUFFER_ALIGNMENT != 0) {
            return Err(Error::Unsupported {
                op: OP,
                msg: format!(
                    "{:?} {:?} at element {}: not whole 4-byte words",
                    self.dtype(),
                    self.shape(),
                    self.offset()
                ),
            });
        }
        let (dst, src) = (self.storage()?.clone(), src.storage()?.clone());
        // Both ranges lie inside their views, which lie inside their buffers.
        self.gpu().record(|enc| enc.copy_buffer_to_buffer(src.buffer(), from, dst.buffer(), to, bytes))
    }

    /// Concatenates `tensors` along `dim` (negative counts from the end): every other dim
    /// must agree, and so must the dtypes and devices. The result is contiguous. Each input
    /// is copied by buffer-to-buffer copies (one per index of the dims before `dim`), no
    /// kernel; a 16-bit block that does not start or end on a 4-byte boundary goes through
    /// f32 (copy commands move whole words).
    ///
    /// Errors: `InvalidArgument` for no tensors or different devices, `DTypeMismatch`,
    /// `ShapeMismatch` naming the first input and the one that disagrees, `AxisOutOfRange`.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let a = Tensor::from_slice(&gpu, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
    /// let b = Tensor::from_slice(&gpu, &[5.0f32, 6.0], &[2, 1])?;
    /// let c = Tensor::cat(&[&a, &b], 1)?;
    /// assert_eq!(c.to_vec::<f32>()?, vec![1.0, 2.0, 5.0, 3.0, 4.0, 6.0]);
    /// # Ok(()) }
    /// ```
    pub fn cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        const OP: &str = "cat";
        let Some(first) = tensors.first() else {
            return Err(Error::InvalidArgument { op: OP, msg: "no tensors to concatenate".into() });
        };
        let d = crate::tensor::resolve_dim(OP, dim, first.shape())?;
        same_device(OP, tensors)?;
        let mut total = 0usize;
        for t in tensors {
            if t.dtype() != first.dtype() {
                return Err(Error::DTypeMismatch { op: OP, lhs: first.dtype(), rhs: t.dtype() });
            }
            let agrees = t.rank() == first.rank() && (0..t.rank()).all(|k| k == d || t.shape()[k] == first.shape()[k]);
            if !agrees {
                return Err(Error::ShapeMismatch { op: OP, lhs: first.shape().to_vec(), rhs: t.shape().to_vec() });
            }
            total += t.shape()[d];
        }
        let mut shape = first.shape().to_vec();
        shape[d] = total;
        let out = Tensor::empty(first.gpu(), OP, &shape, first.dtype())?;
        if out.numel() == 0 {
            return Ok(out);
        }
        // Output as [outer, total·inner]; input k as [outer, d_k·inner], placed at column
        // start_k·inner of every outer row.
        let outer: usize = shape[..d].iter().product();
        let inner: usize = shape[d + 1..].iter().product();
        let esize = first.dtype().size_in_bytes();
        let aligned = tensors.iter().scan(0usize, |start, t| {
            let ok = (*start * inner * esize).is_multiple_of(4)
                && (t.shape()[d] * inner * esize).is_multiple_of(4)
                && (total * inner * esize).is_multiple_of(4);
            *start += t.shape()[d];
            Some(ok)
        });
        if esize < 4 && !aligned.collect::<Vec<_>>().iter().all(|&ok| ok) {
            let wide: Vec<Tensor> = tensors.iter().map(|t| t.to_dtype(DType::F32)).collect::<Result<_>>()?;
            let refs: Vec<&Tensor> = wide.iter().collect();
            return Tensor::cat(&refs, dim)?.to_dtype(first.dtype());
        }
        let sources: Vec<Tensor> = tensors.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
        let dst = out.storage()?.clone();
        let gpu = first.gpu();
        let mut start = 0usize;
        for (t, src) in tensors.iter().zip(&sources) {
            let block = (t.shape()[d] * inner * esize) as u64;
            if block > 0 {
                let src_storage = src.storage()?.clone();
                let src_off = (src.offset() * esize) as u64;
                // Offsets and sizes are whole words (checked above), inside both buffers:
                // row o of the source spans [src_off + o·block, + block), of the output
                // [(o·total + start)·inner·esize, + block).
                gpu.record(|enc| {
                    for o in 0..outer as u64 {
                        let to = ((o as usize * total + start) * inner * esize) as u64;
                        enc.copy_buffer_to_buffer(src_storage.buffer(), src_off + o * block, dst.buffer(), to, block);
                    }
                })?;
            }
            start += t.shape()[d];
        }
        Ok(out)
    }
}
