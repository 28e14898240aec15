//! Matmul: `[..., M, K] × [..., K, N] → [..., M, N]`, batch dims broadcast, operands may be
//! strided views (transposes cost no copy), f32 accumulation, an epilogue (bias,
//! activation) applied before the store, and three kernel paths:
//!
//! - **tiled** (`shaders/matmul.wgsl:tiled`): register-blocked, any dtype, every adapter;
//! - **thin** (`shaders/matmul.wgsl:thin`): M ≤ 8, the matrix–vector shapes of decoding;
//! - **coop** (`shaders/matmul_coop.wgsl`): tensor cores through 16×16×16 f16→f32
//!   cooperative matrices, for F16 inputs, or F32 inputs when the caller allows reduced
//!   precision (`MatmulOptions::allow_reduced_precision`, like PyTorch's TF32 switch).
//!
//! Configurations are autotuned per shape class on first use (see [`crate::tune`]).
//!
//! ```no_run
//! use wgkernels::ops::matmul::{Activation, MatmulOptions};
//! use wgkernels::{DType, Gpu, Tensor};
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = Gpu::new()?;
//! let x = Tensor::randn(&gpu, &[8, 128, 768], DType::F16, 0)?; // [batch, tokens, d]
//! let w = Tensor::randn(&gpu, &[768, 3072], DType::F16, 1)?;
//! let b = Tensor::zeros(&gpu, &[3072], DType::F16)?;
//! // x·w + b, then GELU, in one kernel (tensor cores where the adapter has them).
//! let h = x.matmul_with(&w, &MatmulOptions { bias: Some(&b), activation: Activation::GeluTanh, ..Default::default() })?;
//! let g = h.matmul(&w.transpose(0, 1)?)?; // a transposed view: no copy
//! assert_eq!(g.shape(), &[8, 128, 768]);
//! # Ok(()) }
//! ```

use crate::device::{Kernel, ShaderSource};
use crate::error::{Error, Result};
use crate::kernels::elementwise::broadcast_shapes;
use crate::kernels::elementwise::fusion::{EpilogueHost, FusedEpilogue};
use crate::kernels::elementwise::UnaryOp;
use crate::kernels::wgsl_load;
use crate::tensor::Tensor;
use crate::tune;
use crate::{DType, Gpu, MatmulPrecision};

/// Register-tiled and thin matmul.
pub const MATMUL: ShaderSource =
    ShaderSource { name: "matmul", source: include_str!("matmul.wgsl"), shared: include_str!("matmul_common.wgsl") };

/// Matmul on cooperative matrices (tensor cores); the template the tensor-core generator fills.
pub const MATMUL_COOP: ShaderSource = ShaderSource {
    name: "matmul_coop",
    source: include_str!("matmul_coop.wgsl"),
    shared: include_str!("matmul_common.wgsl"),
};

/// The operands' largest |x| before a scaled matmul (bf16, or f32 at MatmulPrecision::High).
pub const MATMUL_RANGE: ShaderSource =
    ShaderSource { name: "matmul_range", source: include_str!("matmul_range.wgsl"), shared: "" };

/// The range pass for operands of `dtype` (f32 or bf16).
fn range_kernel(dtype: DType) -> Kernel {
    let k = Kernel::new(&MATMUL_RANGE, "matmul_range");
    if dtype == DType::BF16 {
        k.flag("BF16")
    } else {
        k
    }
}

/// `RangeParams` of matmul_range.wgsl: each operand's storage span, in elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RangeParams {
    a_off: u32,
    a_len: u32,
    b_off: u32,
    b_len: u32,
}

/// Activation applied in the matmul's epilogue, after the bias.
///
/// ```
/// use wgkernels::ops::matmul::Activation;
/// assert_eq!(Activation::Relu.apply_f64(-2.0), 0.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activation {
    /// No activation.
    #[default]
    None,
    /// max(x, 0).
    Relu,
    /// x·Φ(x) with the erf form of Φ (PyTorch's default `gelu`).
    Gelu,
    /// The tanh approximation (`gelu(approximate="tanh")`, GPT-2's).
    GeluTanh,
    /// x·sigmoid(x).
    Silu,
}

impl Activation {
    /// Every activation, for tests.
    pub const ALL: [Activation; 5] =
        [Activation::None, Activation::Relu, Activation::Gelu, Activation::GeluTanh, Activation::Silu];

    fn wgsl(self) -> &'static str {
        match self {
            Activation::None => "",
            Activation::Relu => "v = max(v, 0.0);",
            Activation::Gelu => "v = gelu_erf(v);",
            Activation::GeluTanh => "v = gelu_tanh(v);",
            Activation::Silu => "v = v * sigmoid(v);",
        }
    }

    /// The element-wise op the activation is (None for `None`).
    pub(crate) fn as_unary(self) -> Option<UnaryOp> {
        match self {
            Activation::None => None,
            Activation::Relu => Some(UnaryOp::Relu),
            Activation::Gelu => Some(UnaryOp::Gelu),
            Activation::GeluTanh => Some(UnaryOp::GeluTanh),
            Activation::Silu => Some(UnaryOp::Silu),
        }
    }

    /// The activation in f64, for CPU references.
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            Activation::None => x,
            Activation::Relu => UnaryOp::Relu.apply_f64(x),
            Activation::Gelu => UnaryOp::Gelu.apply_f64(x),
            Activation::GeluTanh => UnaryOp::GeluTanh.apply_f64(x),
            Activation::Silu => UnaryOp::Silu.apply_f64(x),
        }
    }
}

/// Register-tiled configuration: a BM×BN workgroup tile, K-steps of BK, TM×TN outputs
/// per invocation ((BM/TM)·(BN/TN) invocations); `vec4` selects the `tiled_v4` entry
/// (contiguous per-invocation blocks, vec4 workgroup loads).
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::matmul::{MatmulOptions, MatmulPath, TILED_CANDIDATES};
/// let x = Tensor::randn(&gpu, &[256, 256], DType::F32, 0)?;
/// let t = TILED_CANDIDATES[1];
/// println!("{}x{}x{} tile, {}x{} per invocation", t.bm, t.bn, t.bk, t.tm, t.tn);
/// let y = x.matmul_with(&x, &MatmulOptions { path: Some(MatmulPath::Tiled(t)), ..Default::default() })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the fields are the tile sizes the struct's doc names
pub struct TileConfig {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
    pub vec4: bool,
}

/// Cooperative-matrix configuration: SG_M×SG_N subgroups, each FM×FN 16×16 fragments,
/// K-steps of BK (a multiple of 16); `prefetch` loads the next K-step into registers
/// during this one's MMAs (taken only where both operands stage 8 halves at a time).
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::matmul::{coop_available, MatmulOptions, MatmulPath, COOP_CANDIDATES};
/// if coop_available(&gpu, DType::F16, false) {
///     let x = Tensor::randn(&gpu, &[512, 512], DType::F16, 0)?;
///     let path = MatmulPath::Coop(COOP_CANDIDATES[0]);
///     let y = x.matmul_with(&x, &MatmulOptions { path: Some(path), ..Default::default() })?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the fields are the sizes the struct's doc names
pub struct CoopConfig {
    pub sg_m: u32,
    pub sg_n: u32,
    pub fm: u32,
    pub fn_: u32,
    pub bk: u32,
    pub prefetch: bool,
}

impl CoopConfig {
    fn bm(&self) -> u32 {
        self.sg_m * self.fm * 16
    }
    fn bn(&self) -> u32 {
        self.sg_n * self.fn_ * 16
    }
}

/// Which kernel runs a matmul.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::matmul::{candidates, MatmulOptions};
/// let x = Tensor::randn(&gpu, &[256, 256], DType::F16, 0)?;
/// for path in candidates(&gpu, DType::F16, 256, false) {
///     let y = x.matmul_with(&x, &MatmulOptions { path: Some(path), ..Default::default() })?;
///     println!("{}", path.name());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulPath {
    /// Register-blocked tiles (`shaders/matmul.wgsl`: `tiled`, `tiled_v4`).
    Tiled(TileConfig),
    /// Few rows (M ≤ 8): `shaders/matmul.wgsl`: `thin`.
    Thin,
    /// Tensor cores through cooperative matrices (`shaders/matmul_coop.wgsl`).
    Coop(CoopConfig),
}

impl MatmulPath {
    /// A short name for reports: `tiled 64x64x16/4x4`, `thin`, `coop 128x128x32`.
    pub fn name(&self) -> String {
        match self {
            MatmulPath::Tiled(t) => {
                format!("tiled{} {}x{}x{}/{}x{}", if t.vec4 { "_v4" } else { "" }, t.bm, t.bn, t.bk, t.tm, t.tn)
            }
            MatmulPath::Thin => "thin".into(),
            MatmulPath::Coop(c) => format!(
                "coop {}x{}x{} ({}x{} sg of {}x{}){}",
                c.bm(),
                c.bn(),
                c.bk,
                c.sg_m,
                c.sg_n,
                c.fm,
                c.fn_,
                if c.prefetch { " prefetch" } else { "" }
            ),
        }
    }
}

/// Register-tiled candidates; the first is the portable default.
pub const TILED_CANDIDATES: [TileConfig; 7] = [
    TileConfig { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4, vec4: false },
    TileConfig { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, vec4: false },
    TileConfig { bm: 128, bn: 64, bk: 16, tm: 8, tn: 4, vec4: false },
    TileConfig { bm: 32, bn: 32, bk: 16, tm: 2, tn: 2, vec4: false },
    TileConfig { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4, vec4: true },
    TileConfig { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, vec4: true },
    TileConfig { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8, vec4: true },
];

const fn coop(sg_m: u32, sg_n: u32, fm: u32, fn_: u32, bk: u32, prefetch: bool) -> CoopConfig {
    CoopConfig { sg_m, sg_n, fm, fn_, bk, prefetch }
}

/// Cooperative-matrix candidates; the first is the default.
pub const COOP_CANDIDATES: [CoopConfig; 8] = [
    coop(4, 2, 2, 4, 16, true),
    coop(4, 2, 2, 4, 16, false),
    coop(2, 2, 2, 2, 32, false),
    coop(2, 2, 4, 2, 32, false),
    coop(4, 2, 2, 4, 32, true),
    coop(2, 2, 4, 4, 16, true),
    coop(4, 2, 4, 4, 16, true),
    coop(2, 4, 4, 4, 16, true),
];

/// The largest M the thin path takes.
pub const THIN_M: usize = 8;

/// Columns of C per workgroup of the thin kernel (set in shaders/matmul.wgsl as `THIN_COLS`).
const THIN_COLS: usize = 16;

/// Options for [`Tensor::matmul_with`].
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::ops::matmul::MatmulOptions;
/// let x = Tensor::randn(&gpu, &[64, 64], DType::F16, 0)?;
/// let y = x.matmul_with(&x, &MatmulOptions { out_dtype: Some(DType::F32), ..Default::default() })?;
/// assert_eq!(y.dtype(), DType::F32);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MatmulOptions<'a> {
    /// Output dtype; the inputs' dtype when `None`.
    pub out_dtype: Option<DType>,
    /// Lets F32 inputs run on f16 tensor cores (inputs rounded to f16, f32 accumulation).
    /// Off by default: never silently.
    pub allow_reduced_precision: bool,
    /// Added to every row before the activation: shape `[N]`, any dtype.
    pub bias: Option<&'a Tensor>,
    /// Applied after the bias, before the store.
    pub activation: Activation,
    /// Forces a kernel path (tests, benchmarks); `None` lets the library choose.
    pub path: Option<MatmulPath>,
    /// How F32 inputs compute ([`MatmulPrecision`]); `None`: the device's setting
    /// ([`Gpu::f32_matmul_precision`], `Highest` unless changed). `allow_reduced_precision`
    /// means `Medium` whatever this says. Other dtypes ignore it.
    pub precision: Option<MatmulPrecision>,
}

/// The subgroup size the coop kernel is generated for, when the adapter's is fixed.
fn fixed_subgroup(gpu: &Gpu) -> Option<u32> {
    let (lo, hi) = gpu.info().subgroup_sizes;
    (lo == hi && lo >= 8 && gpu.has(wgpu::Features::SUBGROUP)).then_some(lo)
}

/// True when the coop path can run `dtype` inputs on this device.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let tc = wgkernels::ops::matmul::coop_available(&gpu, DType::F16, false);
/// # Ok(()) }
/// ```
pub fn coop_available(gpu: &Gpu, dtype: DType, allow_reduced_precision: bool) -> bool {
    coop_available_for(gpu, dtype, reduced_or_highest(allow_reduced_precision))
}

/// The precision the older `allow_reduced_precision` switch names.
fn reduced_or_highest(allow_reduced_precision: bool) -> MatmulPrecision {
    if allow_reduced_precision {
        MatmulPrecision::Medium
    } else {
        MatmulPrecision::Highest
    }
}

/// The precision `opts` gives `dtype` inputs on `gpu`: `allow_reduced_precision` is Medium,
/// else `opts.precision`, else the device's setting; not F32: Highest (nothing to choose).
fn resolved_precision(gpu: &Gpu, dtype: DType, opts: &MatmulOptions) -> MatmulPrecision {
    match (dtype, opts.allow_reduced_precision) {
        (DType::F32, true) => MatmulPrecision::Medium,
        (DType::F32, false) => opts.precision.unwrap_or_else(|| gpu.f32_matmul_precision()),
        _ => MatmulPrecision::Highest,
    }
}

/// True when the coop path can run `dtype` inputs at `precision` on this device (F32: at
/// `High`, split into f16 parts; at `Medium`, rounded to f16).
pub fn coop_available_for(gpu: &Gpu, dtype: DType, precision: MatmulPrecision) -> bool {
    let dtype_ok = match dtype {
        DType::F16 | DType::BF16 => true,
        DType::F32 => precision != MatmulPrecision::Highest,
    };
    dtype_ok
        && gpu.info().has_coop_f16_16x16x16()
        && gpu.has(wgpu::Features::SHADER_F16)
        && fixed_subgroup(gpu).is_some()
}

/// Every path the library may choose for these inputs on this device, default first.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let paths = wgkernels::ops::matmul::candidates(&gpu, DType::F32, 1024, false);
/// assert!(!paths.is_empty());
/// # Ok(()) }
/// ```
pub fn candidates(gpu: &Gpu, dtype: DType, m: usize, allow_reduced_precision: bool) -> Vec<MatmulPath> {
    candidates_for(gpu, dtype, m, reduced_or_highest(allow_reduced_precision))
}

/// [`candidates`] at an explicit [`MatmulPrecision`] (for F32 inputs: `High` adds the
/// split tensor-core kernels, `Medium` the rounded ones).
pub fn candidates_for(gpu: &Gpu, dtype: DType, m: usize, precision: MatmulPrecision) -> Vec<MatmulPath> {
    let staging = Staging::of(dtype, precision);
    let max_threads = gpu.info().limits.max_compute_invocations_per_workgroup;
    let wg_bytes = gpu.info().limits.max_compute_workgroup_storage_size;
    let mut out = Vec::new();
    // Few rows: the thin kernel reads B once and wastes no tile rows; it goes first.
    if m <= THIN_M {
        out.push(MatmulPath::Thin);
    }
    if coop_available_for(gpu, dtype, precision) {
        let sub = fixed_subgroup(gpu).unwrap_or(32);
        out.extend(
            COOP_CANDIDATES
                .iter()
                .filter(|c| {
                    let threads = c.sg_m * c.sg_n * sub;
                    // Staging loops must split evenly, 8 halves per invocation and step.
                    let even = (c.bm() * c.bk) % (threads * 8) == 0 && (c.bk * c.bn()) % (threads * 8) == 0;
                    threads <= max_threads && even && coop_workgroup_bytes(c, staging) <= wg_bytes
                })
                .map(|&c| MatmulPath::Coop(c)),
        );
    }
    let first_tiled = out.len();
    out.extend(
        TILED_CANDIDATES
            .iter()
            .filter(|t| (t.bm / t.tm) * (t.bn / t.tn) <= max_threads && (t.bm + t.bn) * t.bk * 4 <= wg_bytes)
            // The register-blocked kernels suit the software rasterisers less than tiles do
            // GPUs, but every configuration stays available: autotuning decides.
            .map(|&t| MatmulPath::Tiled(t)),
    );
    // Shapes too small to tune (MIN_TUNED_FLOPS) run the first candidate. On a CPU device
    // (lavapipe, 2 cores of the build machine) the 16-byte-load 128×128×16 tiles ran 3-4×
    // faster than the first GPU candidate at 128³, 100×300×77 and 256³ (1.18 vs 3.70 ms,
    // 2.19 vs 8.72, 4.39 vs 18.75 in f32) and are what tuning picks at 512³: they go first.
    if gpu.info().device_type == wgpu::DeviceType::Cpu {
        let cpu_default = TileConfig { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8, vec4: true };
        if let Some(i) = out.iter().position(|p| *p == MatmulPath::Tiled(cpu_default)) {
            let p = out.remove(i);
            out.insert(first_tiled, p);
        }
    }
    out
}

/// Workgroup memory of a coop kernel: the A and B tiles (twice, hi and lo parts, when
/// split staging) and the epilogue's scratch. Each tile takes the larger of its two
/// layouts (rows padded by 8 halves: a k-fast B as [n][k] outgrows [k][n]).
fn coop_workgroup_bytes(c: &CoopConfig, staging: Staging) -> u32 {
    let padded = |rows: u32, cols: u32| (rows * (cols + 8)).max(cols * (rows + 8)) * 2;
    let tiles = padded(c.bm(), c.bk) + padded(c.bk, c.bn());
    tiles * if staging == Staging::Split { 2 } else { 1 } + c.sg_m * c.sg_n * 256 * 4
}

fn epilogue_wgsl(bias: bool, act: Activation) -> String {
    let mut s = String::new();
    if bias {
        s.push_str("v += load_bias(params.bias_off + n * params.bias_stride);\n    ");
    }
    s.push_str(act.wgsl());
    s
}

/// Layout facts the kernels specialise on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Layout {
    /// A's unit-stride dim is K (row-major A), else M.
    a_k_fast: bool,
    /// B's unit-stride dim is N (row-major B), else K.
    b_n_fast: bool,
    /// A can be staged one 16-byte word at a time (8 halves or 4 f32: contiguous along its
    /// fast dim, whose extent, the offset and the other strides are multiples of the word).
    a_vec: bool,
    b_vec: bool,
}

/// How the coop kernel turns operand values into its f16 tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Staging {
    /// As they are: f16 inputs; f32 rounded to f16 (`MatmulPrecision::Medium`).
    Plain,
    /// bf16 inputs: scaled by a power of two from the operand's max |x| (matmul_range.wgsl)
    /// into f16's range, where every bf16 value at most 2^28 below the max is exact (f16's
    /// 11 significant bits hold bf16's 8); smaller ones lose bits, below 2^38 they are 0.
    Scaled,
    /// f32 inputs at `MatmulPrecision::High`: scaled, then split into hi and lo f16 parts.
    Split,
}

impl Staging {
    /// The staging a coop kernel gives `dtype` inputs at `precision`.
    fn of(dtype: DType, precision: MatmulPrecision) -> Staging {
        match (dtype, precision) {
            (DType::BF16, _) => Staging::Scaled,
            (DType::F32, MatmulPrecision::High) => Staging::Split,
            _ => Staging::Plain,
        }
    }

    /// WGSL writing the operand value `v` (f32) into `tile[index]` (and `tile_lo`), with the
    /// operand's scale `scale`. Split, hi is xs with its low 13 mantissa bits cleared (exact
    /// in f16), not f16(xs): the driver may fold f32(f16(xs)) into xs, which made lo zero and
    /// the product f16-accurate (H200, call E).
    fn store(self, tile: &str, index: &str, scale: &str) -> String {
        match self {
            Staging::Plain => format!("{tile}[{index}] = f16(v);"),
            Staging::Scaled => format!("{tile}[{index}] = f16(v * {scale});"),
            Staging::Split => format!(
                "let xs = v * {scale};\n            let hi = bitcast<f32>(bitcast<u32>(xs) & 0xffffe000u);\n            {tile}[{index}] = f16(hi);\n            {tile}_lo[{index}] = f16(xs - hi);"
            ),
        }
    }
}

fn tiled_kernel(t: TileConfig, dtype: DType, bias: Option<DType>, act: Activation, lay: Layout, thin: bool) -> Kernel {
    let a_coord = if lay.a_k_fast {
        "let mm = l / BK;\n            let kk = l % BK;"
    } else {
        "let mm = l % BM;\n            let kk = l / BM;"
    };
    let b_coord = if lay.b_n_fast {
        "let kk = l / BN;\n            let nn = l % BN;"
    } else {
        "let kk = l % BK;\n            let nn = l / BK;"
    };
    let entry = if thin {
        "thin"
    } else if t.vec4 {
        "tiled_v4"
    } else {
        "tiled"
    };
    let k = Kernel::new(&MATMUL, entry)
        .sub("LOAD_A", wgsl_load("a", dtype))
        .sub("LOAD_B", wgsl_load("b", dtype))
        .sub("LOAD_BIAS", bias.map(|d| wgsl_load("bias", d)).unwrap_or_else(|| "return 0.0;".into()))
        .sub("EPILOGUE", epilogue_wgsl(bias.is_some(), act))
        .sub("THIN_COLS", THIN_COLS.to_string());
    let k = if thin {
        // The tiled entry's constants must still be well-formed; the thin entry ignores them.
        let d = TILED_CANDIDATES[0];
        k.sub("BM", d.bm.to_string())
            .sub("BN", d.bn.to_string())
            .sub("BK", d.bk.to_string())
            .sub("TM", d.tm.to_string())
            .sub("TN", d.tn.to_string())
            .sub("A_COORD", "let mm = l / BK;\n            let kk = l % BK;")
            .sub("B_COORD", "let kk = l / BN;\n            let nn = l % BN;")
    } else {
        k.sub("BM", t.bm.to_string())
            .sub("BN", t.bn.to_string())
            .sub("BK", t.bk.to_string())
            .sub("TM", t.tm.to_string())
            .sub("TN", t.tn.to_string())
            .sub("A_COORD", a_coord)
            .sub("B_COORD", b_coord)
    };
    k.trusted()
}

/// Staging of one operand one 16-byte word (a vec4<u32>) at a time — 8 elements of an f16
/// or bf16 operand, 4 of an f32 one: which tile coordinates an invocation's step `s`
/// covers, the guarded global load, and the converted stores.
struct VecStage {
    /// Code defining the tile coordinates from `l`.
    coords: String,
    /// Bounds condition and global element address (a multiple of the word), given `kload`.
    guard: &'static str,
    addr: &'static str,
    tile: &'static str,
    /// Workgroup-memory index of element `e` of the word.
    index: fn(u32) -> String,
    dtype: DType,
    staging: Staging,
}

/// Elements of `dtype` in one 16-byte word.
fn per_word(dtype: DType) -> u32 {
    16 / dtype.size_in_bytes() as u32
}

impl VecStage {
    fn for_a(k_fast: bool, dtype: DType, staging: Staging) -> Self {
        let w = per_word(dtype);
        if k_fast {
            VecStage {
                coords: format!("let mm = l / (BK / {w}u);\n            let kk = (l % (BK / {w}u)) * {w}u;\n            let m = m0 + mm;\n            let k = kload + kk;"),
                guard: "m < M && k < K",
                addr: "base.x + m * a_sm + k",
                tile: "tile_a",
                index: |e| format!("mm * A_STRIDE + kk + {e}u"),
                dtype,
                staging,
            }
        } else {
            VecStage {
                coords: format!("let kk = l / (BM / {w}u);\n            let mm = (l % (BM / {w}u)) * {w}u;\n            let m = m0 + mm;\n            let k = kload + kk;"),
                guard: "m < M && k < K",
                addr: "base.x + m + k * a_sk",
                tile: "tile_a",
                // The tile follows the operand: [k][m], the word's elements side by side.
                index: |e| format!("kk * A_STRIDE + mm + {e}u"),
                dtype,
                staging,
            }
        }
    }

    fn for_b(n_fast: bool, dtype: DType, staging: Staging) -> Self {
        let w = per_word(dtype);
        if n_fast {
            VecStage {
                coords: format!("let kk = l / (BN / {w}u);\n            let nn = (l % (BN / {w}u)) * {w}u;\n            let k = kload + kk;\n            let n = n0 + nn;"),
                guard: "k < K && n < N",
                addr: "base.y + k * b_sk + n",
                tile: "tile_b",
                index: |e| format!("kk * B_STRIDE + nn + {e}u"),
                dtype,
                staging,
            }
        } else {
            VecStage {
                coords: format!("let nn = l / (BK / {w}u);\n            let kk = (l % (BK / {w}u)) * {w}u;\n            let k = kload + kk;\n            let n = n0 + nn;"),
                guard: "k < K && n < N",
                addr: "base.y + k + n * b_sn",
                tile: "tile_b",
                // The tile follows the operand: [n][k], the word's elements side by side.
                index: |e| format!("nn * B_STRIDE + kk + {e}u"),
                dtype,
                staging,
            }
        }
    }

    fn buf(&self) -> &'static str {
        if self.tile == "tile_a" {
            "a"
        } else {
            "b"
        }
    }

    fn scale(&self) -> &'static str {
        if self.tile == "tile_a" {
            "scale_a"
        } else {
            "scale_b"
        }
    }

    /// Body of a staging loop iteration `step` (an expression) loading into `var word`.
    fn load_body(&self, step: &str, word: &str) -> String {
        format!(
            "            let l = lid + {step} * THREADS;\n            {}\n            var {word} = vec4<u32>(0u);\n            if ({}) {{\n                {word} = {}[({}) / {}u];\n            }}\n",
            self.coords, self.guard, self.buf(), self.addr, per_word(self.dtype)
        )
    }

    /// Writes the elements of `word` for step `step` into the tile(s).
    fn store_body(&self, step: &str, word: &str) -> String {
        let mut s = String::new();
        // The coordinates again (cheap integer math) so loads and stores can sit in
        // different places of the loop, as the prefetching variant needs.
        s.push_str(&format!(
            "            {{\n            let l = lid + {step} * THREADS;\n            {}\n",
            self.coords
                .replace("let k = kload + kk;", "")
                .replace("let m = m0 + mm;", "")
                .replace("let n = n0 + nn;", "")
        ));
        for (w, comp) in ["x", "y", "z", "w"].iter().enumerate() {
            // Element e of the word as an f32 (f16 pairs exactly, bf16 is the top half of an f32).
            let values: Vec<String> = match self.dtype {
                DType::F16 => {
                    s.push_str(&format!("            let h{w} = unpack2x16float({word}.{comp});\n"));
                    vec![format!("h{w}.x"), format!("h{w}.y")]
                }
                DType::BF16 => vec![
                    format!("bitcast<f32>({word}.{comp} << 16u)"),
                    format!("bitcast<f32>({word}.{comp} & 0xffff0000u)"),
                ],
                DType::F32 => vec![format!("bitcast<f32>({word}.{comp})")],
            };
            for (i, value) in values.iter().enumerate() {
                let e = values.len() as u32 * w as u32 + i as u32;
                s.push_str(&format!(
                    "            {{\n            let v = {value};\n            {}\n            }}\n",
                    self.staging.store(self.tile, &(self.index)(e), self.scale())
                ));
            }
        }
        s.push_str("            }\n");
        s
    }

    /// Prefetch of unrolled step `s` into the register `reg` (declared in the prologue).
    fn load(&self, s: u32, reg: &str) -> String {
        format!(
            "        {{\n            let l = lid + {s}u * THREADS;\n            {}\n            {reg} = vec4<u32>(0u);\n            if ({}) {{\n                {reg} = {}[({}) / {}u];\n            }}\n        }}\n",
            self.coords, self.guard, self.buf(), self.addr, per_word(self.dtype)
        )
    }

    /// Store of unrolled step `s` from the register `reg`.
    fn store(&self, s: u32, reg: &str) -> String {
        format!("{}        ", self.store_body(&format!("{s}u"), reg))
    }
}

/// Generates the coop kernel: staging loops for the layout, then the fragment code
/// (named accumulators, unrolled), then the guarded epilogue stores.
///
/// `staging` says how values become f16 ([`Staging`]); scaled kernels read the max-|x|
/// ranges at binding `ranges_binding` (after the fused epilogue's leaves), and split ones
/// take three products per fragment pair.
#[allow(clippy::too_many_arguments)]
fn coop_kernel(
    c: CoopConfig,
    sub: u32,
    dtype: DType,
    bias: Option<DType>,
    act: Activation,
    lay: Layout,
    staging: Staging,
    ranges_binding: u32,
) -> Kernel {
    let split = staging == Staging::Split;
    let threads = c.sg_m * c.sg_n * sub;
    let prefetch = c.prefetch && lay.a_vec && lay.b_vec;
    let a_vec = VecStage::for_a(lay.a_k_fast, dtype, staging);
    let b_vec = VecStage::for_b(lay.b_n_fast, dtype, staging);
    let w = per_word(dtype);
    let (mut prologue, mut refill) = (String::new(), String::new());
    // Each tile is laid out as its operand is in memory, so that a staged word's elements
    // land side by side (a transposing store scattered them A_STRIDE apart, and the 16-bit
    // weight gradients' Xᵀ went through a copy to avoid it): A k-fast as [m][k] and m-fast
    // as [k][m], B n-fast as [k][n] and k-fast as [n][k]. Fragments of a tile stored
    // against the fragment's rows load column-major (coopLoad; coopLoadT is row-major).
    let a_tile_index = if lay.a_k_fast { "mm * A_STRIDE + kk" } else { "kk * A_STRIDE + mm" };
    let b_tile_index = if lay.b_n_fast { "kk * B_STRIDE + nn" } else { "nn * B_STRIDE + kk" };
    let (stage_a, stage_b) = if prefetch {
        // Named registers, unrolled: one vec4<u32> per invocation and staging step.
        let na = c.bm() * c.bk / w / threads;
        let nb = c.bk * c.bn() / w / threads;
        let (mut sa, mut sb) = (String::new(), String::new());
        for s in 0..na {
            prologue.push_str(&format!("var pa{s} = vec4<u32>(0u);\n    "));
            refill.push_str(&a_vec.load(s, &format!("pa{s}")));
            sa.push_str(&a_vec.store(s, &format!("pa{s}")));
        }
        for s in 0..nb {
            prologue.push_str(&format!("var pb{s} = vec4<u32>(0u);\n    "));
            refill.push_str(&b_vec.load(s, &format!("pb{s}")));
            sb.push_str(&b_vec.store(s, &format!("pb{s}")));
        }
        // The first K-step's words come in before the loop; each step then fetches the next.
        prologue.push_str(&format!("{{\n        let kload = 0u;\n{}    }}", refill.replace("\n", "\n    ")));
        refill = format!("{{\n            let kload = k0 + BK;\n{}        }}", refill);
        (sa, sb)
    } else {
        let sa = if lay.a_vec {
            format!(
                "for (var s = 0u; s < BM * BK / {w}u / THREADS; s++) {{\n            let kload = k0;\n{}{}        }}",
                a_vec.load_body("s", "word"),
                a_vec.store_body("s", "word")
            )
        } else {
            let coords = if lay.a_k_fast {
                "let mm = l / BK;\n            let kk = l % BK;"
            } else {
                "let mm = l % BM;\n            let kk = l / BM;"
            };
            let store = staging.store("tile_a", a_tile_index, "scale_a");
            format!("for (var s = 0u; s < BM * BK / THREADS; s++) {{\n            let l = lid + s * THREADS;\n            {coords}\n            let m = m0 + mm;\n            let k = k0 + kk;\n            var v = 0.0;\n            if (m < M && k < K) {{\n                v = load_a(base.x + m * a_sm + k * a_sk);\n            }}\n            {store}\n        }}")
        };
        let sb = if lay.b_vec {
            format!(
                "for (var s = 0u; s < BK * BN / {w}u / THREADS; s++) {{\n            let kload = k0;\n{}{}        }}",
                b_vec.load_body("s", "word"),
                b_vec.store_body("s", "word")
            )
        } else {
            let coords = if lay.b_n_fast {
                "let kk = l / BN;\n            let nn = l % BN;"
            } else {
                "let kk = l % BK;\n            let nn = l / BK;"
            };
            let store = staging.store("tile_b", b_tile_index, "scale_b");
            format!("for (var s = 0u; s < BK * BN / THREADS; s++) {{\n            let l = lid + s * THREADS;\n            {coords}\n            let k = k0 + kk;\n            let n = n0 + nn;\n            var v = 0.0;\n            if (k < K && n < N) {{\n                v = load_b(base.y + k * b_sk + n * b_sn);\n            }}\n            {store}\n        }}")
        };
        (sa, sb)
    };
    let mut acc = String::new();
    let mut mma = String::new();
    let mut store = String::new();
    for i in 0..c.fm {
        for j in 0..c.fn_ {
            acc.push_str(&format!("var acc_{i}_{j} = coop_mat16x16<f32, C>();\n    "));
        }
    }
    for ks in 0..c.bk / 16 {
        mma.push_str("{\n");
        // Pointer operands take a bound index: naga 30 cannot cache inline index expressions there.
        for i in 0..c.fm {
            let (m, k) = (format!("(sg_m + {}u)", i * 16), format!("{}u", ks * 16));
            let (oa, load) = if lay.a_k_fast {
                (format!("{m} * A_STRIDE + {k}"), "coopLoadT")
            } else {
                (format!("{k} * A_STRIDE + {m}"), "coopLoad")
            };
            mma.push_str(&format!(
                "            let oa{i} = {oa};\n            let a{i} = {load}<coop_mat16x16<f16, A>>(&tile_a[oa{i}], A_STRIDE);\n"
            ));
            if split {
                mma.push_str(&format!(
                    "            let al{i} = {load}<coop_mat16x16<f16, A>>(&tile_a_lo[oa{i}], A_STRIDE);\n"
                ));
            }
        }
        for j in 0..c.fn_ {
            let (k, n) = (format!("{}u", ks * 16), format!("(sg_n + {}u)", j * 16));
            let (ob, load) = if lay.b_n_fast {
                (format!("{k} * B_STRIDE + {n}"), "coopLoadT")
            } else {
                (format!("{n} * B_STRIDE + {k}"), "coopLoad")
            };
            mma.push_str(&format!(
                "            let ob{j} = {ob};\n            let b{j} = {load}<coop_mat16x16<f16, B>>(&tile_b[ob{j}], B_STRIDE);\n"
            ));
            if split {
                mma.push_str(&format!(
                    "            let bl{j} = {load}<coop_mat16x16<f16, B>>(&tile_b_lo[ob{j}], B_STRIDE);\n"
                ));
            }
        }
        for i in 0..c.fm {
            for j in 0..c.fn_ {
                mma.push_str(&format!("            acc_{i}_{j} = coopMultiplyAdd(a{i}, b{j}, acc_{i}_{j});\n"));
                if split {
                    // The small products after the large one: f32 accumulation keeps them.
                    mma.push_str(&format!("            acc_{i}_{j} = coopMultiplyAdd(a{i}, bl{j}, acc_{i}_{j});\n            acc_{i}_{j} = coopMultiplyAdd(al{i}, b{j}, acc_{i}_{j});\n"));
                }
            }
        }
        mma.push_str("        }\n        ");
    }
    for i in 0..c.fm {
        for j in 0..c.fn_ {
            store.push_str(&format!(
                "coopStoreT(acc_{i}_{j}, &scratch[own], 16u);\n    workgroupBarrier();\n    store_fragment(own, lane, m0 + sg_m + {}u, n0 + sg_n + {}u, c_base, M, N);\n    workgroupBarrier();\n    ",
                i * 16,
                j * 16
            ));
        }
    }
    let kernel = Kernel::new(&MATMUL_COOP, "coop");
    let kernel = match staging {
        Staging::Plain => kernel,
        Staging::Scaled => kernel.flag("SCALED"),
        Staging::Split => kernel.flag("SCALED").flag("SPLIT"),
    };
    kernel
        .sub("RANGES_BINDING", ranges_binding.to_string())
        .sub("A_ELEM", if lay.a_vec { "vec4<u32>" } else { "u32" })
        .sub("B_ELEM", if lay.b_vec { "vec4<u32>" } else { "u32" })
        .sub("LOAD_A", if lay.a_vec { "return 0.0;".to_string() } else { wgsl_load("a", dtype) })
        .sub("LOAD_B", if lay.b_vec { "return 0.0;".to_string() } else { wgsl_load("b", dtype) })
        .sub("LOAD_BIAS", bias.map(|d| wgsl_load("bias", d)).unwrap_or_else(|| "return 0.0;".into()))
        .sub("EPILOGUE", epilogue_wgsl(bias.is_some(), act))
        .sub("SG_M", c.sg_m.to_string())
        .sub("SG_N", c.sg_n.to_string())
        .sub("FM", c.fm.to_string())
        .sub("FN", c.fn_.to_string())
        .sub("BK", c.bk.to_string())
        .sub("SUBGROUP", sub.to_string())
        .sub("A_ROWS", if lay.a_k_fast { "BM" } else { "BK" })
        .sub("A_COLS", if lay.a_k_fast { "BK" } else { "BM" })
        .sub("B_ROWS", if lay.b_n_fast { "BK" } else { "BN" })
        .sub("B_COLS", if lay.b_n_fast { "BN" } else { "BK" })
        .sub("A_TILE", if lay.a_k_fast { "m][k" } else { "k][m" })
        .sub("B_TILE", if lay.b_n_fast { "k][n" } else { "n][k" })
        .sub("STAGE_A", stage_a)
        .sub("STAGE_B", stage_b)
        .sub("PROLOGUE", prologue)
        .sub("PREFETCH", refill)
        .sub("ACC_DECL", acc)
        .sub("MMA", mma)
        .sub("STORE", store)
        .trusted()
}

/// Every specialisation the matmul launchers can build, for the portability test
/// (coop kernels only where SPIR-V and MSL can express cooperative matrices).
pub fn all_kernels() -> Vec<Kernel> {
    let mut all = Vec::new();
    let layouts = |vec: bool| {
        let mut v = Vec::new();
        for a_k_fast in [true, false] {
            for b_n_fast in [true, false] {
                for (a_vec, b_vec) in
                    if vec { vec![(false, false), (true, true), (true, false)] } else { vec![(false, false)] }
                {
                    v.push(Layout { a_k_fast, b_n_fast, a_vec, b_vec });
                }
            }
        }
        v
    };
    for dtype in DType::ALL {
        for lay in layouts(false) {
            for t in TILED_CANDIDATES {
                all.push(tiled_kernel(t, dtype, None, Activation::None, lay, false));
            }
            all.push(tiled_kernel(TILED_CANDIDATES[0], dtype, None, Activation::None, lay, true));
        }
        for act in Activation::ALL {
            all.push(tiled_kernel(TILED_CANDIDATES[0], dtype, Some(dtype), act, layouts(false)[0], false));
        }
    }
    // Every coop staging: f16 as is, f32 rounded (Medium), bf16 scaled, f32 split (High);
    // every layout, word staging included.
    let stagings = [
        (DType::F16, Staging::Plain),
        (DType::F32, Staging::Plain),
        (DType::BF16, Staging::Scaled),
        (DType::F32, Staging::Split),
    ];
    for (dtype, staging) in stagings {
        let tilings: &[CoopConfig] = if dtype == DType::F16 { &COOP_CANDIDATES } else { &COOP_CANDIDATES[..3] };
        for lay in layouts(true) {
            for &c in tilings {
                all.push(coop_kernel(c, 32, dtype, None, Activation::None, lay, staging, 6));
            }
        }
        for act in Activation::ALL {
            let lay = layouts(false)[0];
            all.push(coop_kernel(COOP_CANDIDATES[0], 32, dtype, Some(DType::F32), act, lay, staging, 6));
        }
    }
    let mut all: Vec<Kernel> = all.into_iter().map(|k| with_epilogue(k, None)).collect();
    all.extend([range_kernel(DType::F32), range_kernel(DType::BF16)]);
    all.extend(sample_with_epilogue(&crate::kernels::elementwise::fusion::sample_epilogue()));
    // Every entry storing a 16-bit C directly, with a bias and an activation.
    let lay = layouts(false)[0];
    for out in [DType::F16, DType::BF16] {
        let mut direct = vec![
            tiled_kernel(TILED_CANDIDATES[0], out, Some(out), Activation::Gelu, lay, false),
            tiled_kernel(TILED_CANDIDATES[4], out, None, Activation::None, lay, false),
            tiled_kernel(TILED_CANDIDATES[0], out, None, Activation::Silu, lay, true),
        ];
        let staging = if out == DType::F16 { Staging::Plain } else { Staging::Scaled };
        direct.push(coop_kernel(COOP_CANDIDATES[0], 32, out, Some(out), Activation::Relu, lay, staging, 6));
        all.extend(direct.into_iter().map(|k| with_output(with_epilogue(k, None), out)));
    }
    all
}

/// The checksum the autotuner keeps with each matmul winner: the matmul shaders and the
/// crate version (a winner timed against other kernels is timed again).
pub fn kernels_checksum() -> u64 {
    // Hashed once: byte by byte over ~25 kB of WGSL it cost tens of µs of host time on every
    // matmul launch (the largest host cost of a decode step, seen with perf).
    static CHECKSUM: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CHECKSUM.get_or_init(|| {
        crate::tune::checksum(&[env!("CARGO_PKG_VERSION"), MATMUL.source, MATMUL_COOP.source, MATMUL.shared])
    })
}

/// The layouts of this family's params structs, for the test of their WGSL mirrors.
pub(crate) fn params_layouts() -> Vec<crate::device::ParamsLayout> {
    vec![
        crate::device::params_layout!(MatmulParams {
            m,
            n,
            k,
            batches,
            a_off,
            a_sm,
            a_sk,
            b_off,
            b_sk,
            b_sn,
            batch_rank,
            batch_shape,
            a_batch_strides,
            b_batch_strides,
            bias_off,
            bias_stride,
        }),
        crate::device::params_layout!(RangeParams { a_off, a_len, b_off, b_len }),
    ]
}

/// A validated matmul whose launch waits for its result to be needed: with fusion on,
/// `matmul` returns a pending tensor holding this, so that an element-wise chain consuming
/// it can run in its epilogue (src/fusion.rs).
pub(crate) struct MatmulNode {
    a: Tensor,
    b: Tensor,
    m: usize,
    n: usize,
    k: usize,
    nbatch: usize,
    bshape: Vec<usize>,
    sa: Vec<usize>,
    sb: Vec<usize>,
    out_shape: Vec<usize>,
    bias: Option<Tensor>,
    activation: Activation,
    /// Resolved for F32 inputs (Highest for others).
    precision: MatmulPrecision,
    path: Option<MatmulPath>,
}

impl MatmulNode {
    /// Runs the matmul into a new tensor of `out_dtype`: stored by the kernel itself where
    /// it can ([`stores_directly`]), else as f32 and cast.
    fn run_into(&self, out_dtype: DType) -> Result<Tensor> {
        if stores_directly(out_dtype, self.n) {
            return self.launch(None, out_dtype);
        }
        self.launch(None, DType::F32)?.to_dtype(out_dtype)
    }

    /// Runs the matmul, with `epilogue` fused before the store (f32 only), into a new tensor
    /// of the output shape stored as `store`. The path is chosen (autotuned) for the plain
    /// matmul.
    fn launch(&self, epilogue: Option<&FusedEpilogue>, store: DType) -> Result<Tensor> {
        let gpu = self.a.gpu();
        let opts = MatmulOptions {
            out_dtype: None,
            allow_reduced_precision: self.precision == MatmulPrecision::Medium,
            bias: self.bias.as_ref(),
            activation: self.activation,
            path: self.path,
            precision: Some(self.precision),
        };
        let out = Tensor::empty(gpu, "matmul", &self.out_shape, store)?;
        let mut launch = Launch {
            a: &self.a,
            b: &self.b,
            m: self.m,
            n: self.n,
            k: self.k,
            nbatch: self.nbatch,
            bshape: &self.bshape,
            sa: &self.sa,
            sb: &self.sb,
            out: &out,
            opts: &opts,
            epilogue: None,
        };
        let path = match self.path {
            Some(p) => p,
            None => {
                let problem = tune::Problem {
                    op: "matmul",
                    key: launch.class_key(),
                    flops: launch.flops(),
                    kernels: kernels_checksum(),
                };
                let paths = candidates_for(gpu, self.a.dtype(), self.m, self.precision);
                tune::choose(gpu, &problem, &paths, |p| p.name(), |p| launch.run(p))?
            }
        };
        launch.epilogue = epilogue;
        launch.run(path)?;
        Ok(out)
    }
}

impl EpilogueHost for MatmulNode {
    /// Runs the matmul, with `epilogue` fused before the store, into a new f32 tensor of the
    /// output shape.
    fn run(&self, epilogue: Option<&FusedEpilogue>) -> Result<Tensor> {
        self.launch(epilogue, DType::F32)
    }

    fn shape(&self) -> &[usize] {
        &self.out_shape
    }

    fn gpu(&self) -> &Gpu {
        self.a.gpu()
    }
}

/// `k` storing C in `out`: f32 as is; f16 and bf16 two columns to a word (flag OUT16), for
/// outputs with an even N (see matmul_common.wgsl).
fn with_output(k: Kernel, out: DType) -> Kernel {
    match out {
        DType::F32 => k,
        DType::F16 => k.flag("OUT16").sub("PACK_PAIR", "pack_f16x2(vec2<f32>(v0, v1))"),
        DType::BF16 => k.flag("OUT16").sub("PACK_PAIR", "f32_to_bf16_bits(v0) | (f32_to_bf16_bits(v1) << 16u)"),
    }
}

/// Whether a C of `out_dtype` with `n` columns is stored directly by the matmul kernel (a
/// 16-bit C needs whole words per invocation: even N); else f32 and a cast after.
fn stores_directly(out_dtype: DType, n: usize) -> bool {
    out_dtype == DType::F32 || n.is_multiple_of(2)
}

/// `k` with its epilogue placeholders filled: the plain store, or a fused chain.
pub(crate) fn with_epilogue(k: Kernel, ep: Option<&FusedEpilogue>) -> Kernel {
    match ep {
        None => k.sub("EPILOGUE_DECLS", "").sub("FUSED_BODY", "").sub("FUSED_RESULT", "mm"),
        Some(e) => k
            .flag("FUSED")
            .sub("EPILOGUE_DECLS", e.decls.clone())
            .sub("FUSED_BODY", e.body.clone())
            .sub("FUSED_RESULT", e.result.clone()),
    }
}

/// The binding after every one a matmul kernel declares: 6 (a, b, c, params, bias and
/// ew_params below it), or past the fused epilogue's leaves.
fn first_free_binding(ep: Option<&FusedEpilogue>) -> u32 {
    let declared = ep.map_or(0, |e| {
        e.decls
            .split("@binding(")
            .skip(1)
            .filter_map(|rest| rest.split(')').next()?.trim().parse::<u32>().ok())
            .map(|b| b + 1)
            .max()
            .unwrap_or(0)
    });
    declared.max(6)
}

/// A tiled and a coop kernel with `ep` in their epilogue, for the portability test.
fn sample_with_epilogue(ep: &FusedEpilogue) -> Vec<Kernel> {
    let lay = Layout { a_k_fast: true, b_n_fast: true, a_vec: false, b_vec: false };
    vec![
        with_epilogue(
            tiled_kernel(TILED_CANDIDATES[0], DType::F32, Some(DType::F32), Activation::GeluTanh, lay, false),
            Some(ep),
        ),
        with_epilogue(tiled_kernel(TILED_CANDIDATES[0], DType::F32, None, Activation::None, lay, true), Some(ep)),
        with_epilogue(
            coop_kernel(COOP_CANDIDATES[0], 32, DType::F16, None, Activation::None, lay, Staging::Plain, 6),
            Some(ep),
        ),
        with_epilogue(
            coop_kernel(
                COOP_CANDIDATES[0],
                32,
                DType::F32,
                None,
                Activation::None,
                lay,
                Staging::Split,
                first_free_binding(Some(ep)),
            ),
            Some(ep),
        ),
    ]
}

/// Batch strides of `t` (rank ≥ 2) expanded to `batch` (0 where broadcast).
fn batch_strides(t: &Tensor, batch: &[usize]) -> Vec<usize> {
    let own = &t.shape()[..t.rank() - 2];
    let st = &t.strides()[..t.rank() - 2];
    let lead = batch.len() - own.len();
    (0..batch.len()).map(|d| if d < lead || own[d - lead] == 1 { 0 } else { st[d - lead] }).collect()
}

const MAX_BATCH_DIMS: usize = 4;

/// The matmul kernels' params, mirrored field for field by `struct MatmulParams` in
/// matmul_common.wgsl. Offsets and strides in elements; the batch shape front-padded with 1s
/// to MAX_BATCH_DIMS, each operand's batch strides 0 where it broadcasts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    batches: u32,
    a_off: u32,
    a_sm: u32,
    a_sk: u32,
    b_off: u32,
    b_sk: u32,
    b_sn: u32,
    batch_rank: u32,
    batch_shape: [u32; MAX_BATCH_DIMS],
    a_batch_strides: [u32; MAX_BATCH_DIMS],
    b_batch_strides: [u32; MAX_BATCH_DIMS],
    bias_off: u32,
    bias_stride: u32,
}

impl Tensor {
    /// `self`·`other` for 2-D operands, with K cut into `splits` equal chunks: one batched
    /// matmul computes the chunks' partial products side by side, in f32, with `splits`
    /// times the workgroups; one element-wise kernel then adds them (and rounds to the
    /// inputs' dtype). For a long K with few output tiles — a weight gradient Xᵀ·dY over
    /// thousands of tokens, [768, 8192]·[8192, 3072] is 144 tiles of 128×128 — where one
    /// workgroup per tile leaves most of the GPU idle. Any strides (the chunks are views);
    /// `splits` 1 is [`Tensor::matmul`].
    ///
    /// Errors: `InvalidArgument` unless both operands are 2-D with K divisible by `splits`
    /// (≥ 1); then matmul's errors.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[64, 6], DType::F32, 0)?; // [tokens, in]
    /// let dy = Tensor::randn(&gpu, &[64, 5], DType::F32, 1)?; // [tokens, out]
    /// let dw = x.transpose(0, 1)?.matmul_split_k(&dy, 4)?; // [in, out], 4 chunks of 16 tokens
    /// assert_eq!(dw.shape(), &[6, 5]);
    /// # Ok(()) }
    /// ```
    pub fn matmul_split_k(&self, other: &Tensor, splits: usize) -> Result<Tensor> {
        let (&[m, k], &[k2, n]) = (self.shape(), other.shape()) else {
            return Err(Error::InvalidArgument {
                op: "matmul_split_k",
                msg: format!("takes 2-D operands, got {:?} and {:?}", self.shape(), other.shape()),
            });
        };
        if k != k2 || splits == 0 || k % splits != 0 {
            return Err(Error::InvalidArgument {
                op: "matmul_split_k",
                msg: format!(
                    "lhs {:?} and rhs {:?}: the inner dims must agree and divide into {splits} chunks",
                    self.shape(),
                    other.shape()
                ),
            });
        }
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch { op: "matmul_split_k", lhs: self.dtype(), rhs: other.dtype() });
        }
        if splits == 1 {
            return self.matmul(other);
        }
        let chunk = k / splits;
        let (a, b) = (self.realize()?, other.realize()?);
        let (a_sm, a_sk, b_sk, b_sn) = (a.strides()[0], a.strides()[1], b.strides()[0], b.strides()[1]);
        // [splits, m, chunk] and [splits, chunk, n]: chunk s starts s·chunk along K.
        let a3 = a.view(vec![splits, m, chunk], vec![chunk * a_sk, a_sm, a_sk], a.offset())?;
        let b3 = b.view(vec![splits, chunk, n], vec![chunk * b_sk, b_sk, b_sn], b.offset())?;
        let parts = a3.matmul_with(&b3, &MatmulOptions { out_dtype: Some(DType::F32), ..Default::default() })?;
        let part = |s: usize| parts.narrow(0, s, 1)?.reshape(&[m, n]);
        let mut sum = part(0)?;
        for s in 1..splits {
            sum = sum.add(&part(s)?)?;
        }
        if self.dtype() == DType::F32 {
            Ok(sum)
        } else {
            sum.to_dtype(self.dtype())
        }
    }
}

impl Tensor {
    /// Matrix product with batch broadcasting: `[..., M, K] × [..., K, N] → [..., M, N]`;
    /// 1-D operands are treated as a row (left) or column (right) vector and the added dim is
    /// removed, as in `torch.matmul`. Same dtype on both sides; the result has that dtype.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let a = Tensor::randn(&gpu, &[2, 64, 32], DType::F32, 0)?; // batched
    /// let b = Tensor::randn(&gpu, &[32, 16], DType::F32, 1)?;       // broadcast over the batch
    /// assert_eq!(a.matmul(&b)?.shape(), &[2, 64, 16]);
    /// # Ok(()) }
    /// ```
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_with(other, &MatmulOptions::default())
    }

    /// [`Tensor::matmul`] with options: output dtype, reduced precision, bias, activation.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::ops::matmul::{Activation, MatmulOptions};
    /// let x = Tensor::randn(&gpu, &[64, 32], DType::F32, 0)?;
    /// let w = Tensor::randn(&gpu, &[32, 16], DType::F32, 1)?;
    /// let b = Tensor::zeros(&gpu, &[16], DType::F32)?;
    /// let opts = MatmulOptions { bias: Some(&b), activation: Activation::Relu, allow_reduced_precision: true, ..Default::default() };
    /// let h = x.matmul_with(&w, &opts)?; // relu(x·w + b), tensor cores where available
    /// # Ok(()) }
    /// ```
    pub fn matmul_with(&self, other: &Tensor, opts: &MatmulOptions) -> Result<Tensor> {
        const OP: &str = "matmul";
        if self.rank() == 0 || other.rank() == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("operands must have at least one dim, got {:?} and {:?}", self.shape(), other.shape()),
            });
        }
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: self.dtype(), rhs: other.dtype() });
        }
        let a = if self.rank() == 1 { self.unsqueeze(0)? } else { self.clone() };
        let b = if other.rank() == 1 { other.unsqueeze(1)? } else { other.clone() };
        let (m, k) = (a.shape()[a.rank() - 2], a.shape()[a.rank() - 1]);
        let (k2, n) = (b.shape()[b.rank() - 2], b.shape()[b.rank() - 1]);
        if k != k2 {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "inner dims differ: lhs {:?} has {k} columns (its last dim), rhs {:?} has {k2} rows (its dim {})",
                    self.shape(),
                    other.shape(),
                    b.rank() - 2
                ),
            });
        }
        let batch = broadcast_shapes(OP, &a.shape()[..a.rank() - 2], &b.shape()[..b.rank() - 2]).map_err(|_| {
            Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "batch dims {:?} of lhs {:?} and {:?} of rhs {:?} do not broadcast",
                    &a.shape()[..a.rank() - 2],
                    self.shape(),
                    &b.shape()[..b.rank() - 2],
                    other.shape()
                ),
            }
        })?;
        if let Some(bias) = opts.bias {
            if bias.shape() != [n] {
                return Err(Error::ShapeMismatch { op: "matmul bias", lhs: bias.shape().to_vec(), rhs: vec![n] });
            }
        }
        let out_dtype = opts.out_dtype.unwrap_or(self.dtype());
        let mut out_shape = batch.clone();
        out_shape.extend([m, n]);
        // torch.matmul's result shape: a rank-1 operand's unit dim is dropped.
        let mut result_shape = out_shape.clone();
        if other.rank() == 1 {
            result_shape.pop();
        }
        if self.rank() == 1 {
            let at = result_shape.len() - if other.rank() == 1 { 1 } else { 2 };
            result_shape.remove(at);
        }
        if k == 0 || out_shape.contains(&0) {
            return zero_size_matmul(self.gpu(), &out_shape, opts, out_dtype)?.reshape(&result_shape);
        }
        let nbatch: usize = batch.iter().product();
        let gpu = self.gpu().clone();
        let precision = resolved_precision(&gpu, self.dtype(), opts);
        if let Some(p) = opts.path {
            let allowed = candidates_for(&gpu, self.dtype(), m, precision);
            if !allowed.contains(&p) {
                let names: Vec<String> = allowed.iter().map(|p| p.name()).collect();
                let msg = format!(
                    "path {} cannot run {:?} inputs with M = {m} on this adapter (allowed: {})",
                    p.name(),
                    self.dtype(),
                    names.join(", ")
                );
                return Err(Error::InvalidArgument { op: OP, msg });
            }
        }
        // Collapse the batch dims where both operands walk them contiguously.
        let (bshape, sa, sb) = collapse_batch(&batch, &batch_strides(&a, &batch), &batch_strides(&b, &batch));
        if bshape.len() > MAX_BATCH_DIMS {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "batch shape {batch:?} needs more than {MAX_BATCH_DIMS} dims after merging; reshape it first"
                ),
            });
        }
        let max_groups = gpu.info().limits.max_compute_workgroups_per_dimension as usize;
        if nbatch > max_groups {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("{nbatch} batches exceed the {max_groups} workgroups per dispatch dimension"),
            });
        }
        let node = MatmulNode {
            a,
            b,
            m,
            n,
            k,
            nbatch,
            bshape,
            sa,
            sb,
            out_shape: out_shape.clone(),
            bias: opts.bias.cloned(),
            activation: opts.activation,
            precision,
            path: opts.path,
        };
        // With fusion and matmul-epilogue fusion on, an f32 result waits: the element-wise
        // chain that consumes it (bias, activation, residual, dropout, ...) then runs in this
        // matmul's epilogue.
        if gpu.fusion()
            && gpu.matmul_epilogue_fusion()
            && self.rank() >= 2
            && other.rank() >= 2
            && out_dtype == DType::F32
        {
            return Ok(crate::kernels::elementwise::fusion::lazy_matmul(std::sync::Arc::new(node)));
        }
        node.run_into(out_dtype)?.reshape(&result_shape)
    }
}

/// A matmul with nothing to multiply (the crate's rule for zero-size tensors, see the crate
/// docs): an empty result where M, N or a batch dim is 0; where K is 0, every dot product
/// is a sum over nothing, 0, so the result is the bias (or 0) through the activation, as
/// torch.matmul and addmm give. Only element-wise kernels run.
fn zero_size_matmul(gpu: &Gpu, out_shape: &[usize], opts: &MatmulOptions, out_dtype: DType) -> Result<Tensor> {
    let mut y = Tensor::zeros(gpu, out_shape, DType::F32)?;
    if !out_shape.contains(&0) {
        if let Some(bias) = opts.bias {
            y = y.add(&bias.to_dtype(DType::F32)?)?;
        }
        if let Some(op) = opts.activation.as_unary() {
            y = crate::kernels::elementwise::map(&y, op, DType::F32)?;
        }
    }
    y.to_dtype(out_dtype)
}

/// Merges adjacent batch dims that both operands (and the contiguous output) walk with
/// one stride; drops size-1 dims.
fn collapse_batch(shape: &[usize], sa: &[usize], sb: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut s, mut a, mut b): (Vec<usize>, Vec<usize>, Vec<usize>) = (vec![], vec![], vec![]);
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        if let (Some(ls), Some(la), Some(lb)) = (s.last_mut(), a.last_mut(), b.last_mut()) {
            if *la == sa[d] * shape[d] && *lb == sb[d] * shape[d] {
                *ls *= shape[d];
                *la = sa[d];
                *lb = sb[d];
                continue;
            }
        }
        s.push(shape[d]);
        a.push(sa[d]);
        b.push(sb[d]);
    }
    (s, a, b)
}

/// One validated matmul, ready to run on any candidate path (autotuning runs it several times).
pub(crate) struct Launch<'a> {
    a: &'a Tensor,
    b: &'a Tensor,
    m: usize,
    n: usize,
    k: usize,
    nbatch: usize,
    bshape: &'a [usize],
    sa: &'a [usize],
    sb: &'a [usize],
    out: &'a Tensor,
    opts: &'a MatmulOptions<'a>,
    /// A fused element-wise chain to apply before the store (None while autotuning).
    epilogue: Option<&'a FusedEpilogue>,
}

impl Launch<'_> {
    /// The autotuning key: dtype, layout and the shape class (log2 buckets of M, N, K).
    pub(crate) fn class_key(&self) -> String {
        let lg = |x: usize| usize::BITS - (x.max(1) - 1).leading_zeros();
        let lay = self.layout();
        format!(
            "matmul {} out {} m{} n{} k{} b{} a{} b{}{}{} {}",
            self.a.dtype().name(),
            self.out.dtype().name(),
            lg(self.m),
            lg(self.n),
            lg(self.k),
            lg(self.nbatch).min(4),
            if lay.a_k_fast { "k" } else { "m" },
            if lay.b_n_fast { "n" } else { "k" },
            if lay.a_vec { "8" } else { "" },
            if lay.b_vec { "8" } else { "" },
            self.precision().name(),
        )
    }

    pub(crate) fn gpu(&self) -> &Gpu {
        self.a.gpu()
    }

    /// The precision the launching node resolved (F32 inputs split on tensor cores at High).
    fn precision(&self) -> MatmulPrecision {
        resolved_precision(self.gpu(), self.a.dtype(), self.opts)
    }

    pub(crate) fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.nbatch) as f64
    }

    fn layout(&self) -> Layout {
        let (a, b) = (self.a, self.b);
        let (ra, rb) = (a.rank(), b.rank());
        let (a_sm, a_sk) = (a.strides()[ra - 2], a.strides()[ra - 1]);
        let (b_sk, b_sn) = (b.strides()[rb - 2], b.strides()[rb - 1]);
        let a_k_fast = a_sk == 1 || (a_sm != 1 && a_sk <= a_sm);
        let b_n_fast = b_sn == 1 || (b_sk != 1 && b_sn <= b_sk);
        // Word staging is the coop kernel's: 16-bit inputs, and f32 where it may run there.
        let vec_dtype = a.dtype() != DType::F32 || self.precision() != MatmulPrecision::Highest;
        let w = per_word(a.dtype()) as usize;
        let aligned = |off: usize, strides: &[usize]| off.is_multiple_of(w) && strides.iter().all(|&s| s % w == 0);
        let a_vec = vec_dtype
            && if a_k_fast {
                a_sk == 1 && self.k.is_multiple_of(w) && aligned(a.offset(), &[&[a_sm][..], self.sa].concat())
            } else {
                a_sm == 1 && self.m.is_multiple_of(w) && aligned(a.offset(), &[&[a_sk][..], self.sa].concat())
            };
        let b_vec = vec_dtype
            && if b_n_fast {
                b_sn == 1 && self.n.is_multiple_of(w) && aligned(b.offset(), &[&[b_sk][..], self.sb].concat())
            } else {
                b_sk == 1 && self.k.is_multiple_of(w) && aligned(b.offset(), &[&[b_sn][..], self.sb].concat())
            };
        Layout { a_k_fast, b_n_fast, a_vec, b_vec }
    }

    /// max |A| and max |B| as f32 (a `[2]` tensor), for a scaled kernel's scales: one
    /// dispatch of matmul_range.wgsl over the storage span of each operand's view.
    ///
    /// Why it may run unchecked: workgroup row y reads element off + i with i < len, and
    /// off + len is one past the view's last element, inside its storage (every view is).
    fn ranges(&self) -> Result<Tensor> {
        let gpu = self.gpu();
        let span = |t: &Tensor| 1 + t.shape().iter().zip(t.strides()).map(|(&d, &s)| (d.max(1) - 1) * s).sum::<usize>();
        let (a_len, b_len) = (span(self.a), span(self.b));
        let ranges = Tensor::zeros(gpu, &[2], DType::F32)?;
        let params = gpu.params_buffer(&RangeParams {
            a_off: self.a.offset() as u32,
            a_len: a_len as u32,
            b_off: self.b.offset() as u32,
            b_len: b_len as u32,
        });
        let groups = a_len.max(b_len).div_ceil(256).clamp(1, 1024) as u32;
        let kernel = range_kernel(self.a.dtype()).trusted();
        gpu.dispatch_3d(
            &kernel,
            &[
                (0, self.a.storage()?.buffer()),
                (1, self.b.storage()?.buffer()),
                (2, ranges.storage()?.buffer()),
                (3, &params),
            ],
            [groups, 2, 1],
        )?;
        Ok(ranges)
    }

    /// Records the matmul on `path` into `self.out`.
    ///
    /// Why the kernels may run unchecked: every load is guarded by m < M, k < K, n < N and
    /// its element index is then an element of the operand's view (batch offsets come from
    /// batch coordinates < the broadcast batch shape, with stride 0 where broadcast), which
    /// lies inside its storage. A vec8 load reads elements e..e+8 with e 8-aligned and
    /// e + 7 also in the view, because the fast dim's extent is a multiple of 8. Stores are
    /// guarded by m < M, n < N into the contiguous [batches, M, N] output. Workgroup
    /// indices are bounded by the tile constants.
    pub(crate) fn run(&self, path: MatmulPath) -> Result<()> {
        let gpu = self.gpu();
        let (a, b) = (self.a, self.b);
        let (ra, rb) = (a.rank(), b.rank());
        let pad = MAX_BATCH_DIMS - self.bshape.len();
        let batch_dim = |d: usize, of: &[usize], pad_value: usize| if d < pad { pad_value } else { of[d - pad] } as u32;
        let bias = self.opts.bias;
        let p = MatmulParams {
            m: self.m as u32,
            n: self.n as u32,
            k: self.k as u32,
            batches: self.nbatch as u32,
            a_off: a.offset() as u32,
            a_sm: a.strides()[ra - 2] as u32,
            a_sk: a.strides()[ra - 1] as u32,
            b_off: b.offset() as u32,
            b_sk: b.strides()[rb - 2] as u32,
            b_sn: b.strides()[rb - 1] as u32,
            batch_rank: self.bshape.len() as u32,
            batch_shape: std::array::from_fn(|d| batch_dim(d, self.bshape, 1)),
            a_batch_strides: std::array::from_fn(|d| batch_dim(d, self.sa, 0)),
            b_batch_strides: std::array::from_fn(|d| batch_dim(d, self.sb, 0)),
            bias_off: bias.map_or(0, |t| t.offset() as u32),
            bias_stride: bias.map_or(0, |t| t.strides()[0] as u32),
        };
        let bias_dtype = bias.map(|t| t.dtype());
        let lay = self.layout();
        let act = self.opts.activation;
        let staging = Staging::of(a.dtype(), self.precision());
        let scaled = matches!(path, MatmulPath::Coop(_)) && staging != Staging::Plain;
        // A scaled kernel reads the operands' ranges after the fused epilogue's bindings.
        let ranges_binding = first_free_binding(self.epilogue);
        let ranges = if scaled { Some(self.ranges()?) } else { None };
        let (kernel, groups) = match path {
            MatmulPath::Tiled(t) => (
                tiled_kernel(t, a.dtype(), bias_dtype, act, lay, false),
                (self.n.div_ceil(t.bn as usize), self.m.div_ceil(t.bm as usize)),
            ),
            MatmulPath::Thin => (
                tiled_kernel(TILED_CANDIDATES[0], a.dtype(), bias_dtype, act, lay, true),
                (self.n.div_ceil(THIN_COLS), 1),
            ),
            MatmulPath::Coop(c) => {
                let sub = fixed_subgroup(gpu).ok_or(Error::MissingFeature {
                    op: "matmul",
                    feature: "SUBGROUP (fixed size)",
                    hint: "the coop path needs a fixed subgroup size",
                })?;
                (
                    coop_kernel(c, sub, a.dtype(), bias_dtype, act, lay, staging, ranges_binding),
                    (self.n.div_ceil(c.bn() as usize), self.m.div_ceil(c.bm() as usize)),
                )
            }
        };
        let kernel = with_output(with_epilogue(kernel, self.epilogue), self.out.dtype());
        let max = gpu.info().limits.max_compute_workgroups_per_dimension as usize;
        if groups.0 > max || groups.1 > max {
            return Err(Error::InvalidArgument {
                op: "matmul",
                msg: format!("{}x{} output tiles exceed {max} workgroups per dimension", groups.0, groups.1),
            });
        }
        let params = gpu.params_buffer(&p);
        let mut bindings = vec![
            (0, a.storage()?.buffer()),
            (1, b.storage()?.buffer()),
            (2, self.out.storage()?.buffer()),
            (3, &params),
        ];
        if let Some(bias) = self.opts.bias {
            bindings.push((4, bias.storage()?.buffer()));
        }
        // A fused chain's leaves are views expanded to the output shape, indexed at the
        // linear output index (< M·N·batches) as in the element-wise kernels: in range.
        let ew_params = self.epilogue.map(|e| gpu.meta_buffer(&e.ew_params));
        let leaf_storages = match self.epilogue {
            Some(e) => e.leaves.iter().map(|t| t.storage()).collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        if let Some(buf) = &ew_params {
            bindings.push((5, buf));
        }
        for (k, s) in leaf_storages.iter().enumerate() {
            bindings.push((6 + k as u32, s.buffer()));
        }
        let ranges_storage = ranges.as_ref().map(|r| r.storage()).transpose()?;
        if let Some(r) = &ranges_storage {
            bindings.push((ranges_binding, r.buffer()));
        }
        gpu.dispatch_3d(&kernel, &bindings, [groups.0 as u32, groups.1 as u32, self.nbatch as u32])
    }
}
