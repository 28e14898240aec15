//! `GpuOptions`: every setting of a device, as typed fields. [`GpuOptions::from_env`] is
//! the one place in the library that reads the environment.

use crate::error::{Error, Result};

/// Every setting of a device: which adapter, how shaders are built, fusion, autotuning,
/// the fusion JIT's grid, measurement. `GpuOptions::from_env()` reads them from `WGK_*`
/// variables; `GpuOptions::default()` is the same without the environment.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::GpuOptions;
/// let gpu2 = Gpu::with_options(GpuOptions { checked: true, fusion: false, ..GpuOptions::default() })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to try; `None` means all compiled in.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring the adapter name must contain.
    pub adapter_name: Option<String>,
    /// Build every shader with runtime bounds checks.
    pub checked: bool,
    /// Time candidate kernel configurations on first use of a shape class (`WGK_AUTOTUNE=0`
    /// turns it off and uses portable defaults).
    pub autotune: bool,
    /// Fuse chains of element-wise ops into one kernel (`WGK_FUSION=0` turns it off: one
    /// dispatch per op).
    pub fusion: bool,
    /// Also fuse the element-wise chain that consumes an f32 matmul into the matmul's
    /// epilogue (`WGK_FUSE_MATMUL=1`). Off by default: on the H200 the GPT-2 MLP block ran
    /// 3.62 / 4.81 / 6.49 ms fused against 3.57 / 3.54 / 3.53 ms unfused in three calls (the
    /// second-pass epilogue re-reads each tile's stores); its first version, with the chain
    /// inside the store loop, was 10× slower. See BENCHMARKS.md.
    pub fuse_matmul_epilogues: bool,
    /// Let 16-bit stores use the adapter's own f32 → f16 conversion (one instruction instead
    /// of ~18 integer operations per element) where the device has `SHADER_F16` and a probe
    /// shows that conversion rounding to nearest even, as the library's own routine does
    /// (`WGK_NATIVE_F16=0` keeps the library's routine everywhere). See [`Gpu::native_f16`](crate::Gpu::native_f16).
    pub native_f16: bool,
    /// Units per invocation of the kernels the fusion JIT generates: 1, 2, 4 or 8
    /// (`WGK_FUSED_UNROLL`), for both paths; 0 (auto) picks per path from the H200's
    /// measurements (BENCHMARKS.md, sixth round): 1 on the 16-byte path (16 bytes of each
    /// input per invocation, at 512 invocations per workgroup) and 4 on the element path.
    /// The chain is inlined once per element of the units, and the driver's compile time
    /// grows with that.
    pub fused_unroll: u32,
    /// Invocations per workgroup of the kernels the fusion JIT generates: 64, 128, 256,
    /// 512 or 1024 within the adapter's limit (`WGK_FUSED_WORKGROUP`), for both paths; 0
    /// (auto) picks 512 on the 16-byte path where the adapter allows it (else 256) and 256
    /// on the element path.
    pub fused_workgroup: u32,
    /// The most workgroups one generated kernel launches; past it each workgroup strides
    /// over the grid (`WGK_FUSED_GROUPS`). 0: as many as the elements need.
    pub fused_groups: u32,
    /// Dispatches in the first submit after the host waited for the GPU (a read-back, a
    /// synchronize), doubling with each submit up to 64 (`WGK_FIRST_SUBMIT`, 1 to 64): the
    /// idle GPU starts on them while the host records the rest. 64 submits every 64
    /// dispatches throughout.
    pub first_submit: u32,
    /// Tiered JIT for fused chains: a structure not seen before first runs a small kernel
    /// (one element per invocation, the chain inlined once), which the driver compiles
    /// sooner, while the full kernel (16-byte units, `fused_unroll`) compiles on a
    /// background thread and takes over from the first realisation after it is ready.
    /// `None` (`WGK_TIERED_JIT` unset): on for GPUs, off for CPU devices, whose driver
    /// compiles on the same few cores that run the kernels, and for GL. See BENCHMARKS.md.
    pub tiered_jit: Option<bool>,
    /// Where autotuning winners are kept between processes (one file per adapter, driver
    /// and crate version); `None`: nothing is persisted. `from_env` takes `WGK_CACHE_DIR`,
    /// else `$XDG_CACHE_HOME/wgkernels`, else `~/.cache/wgkernels`.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Caps the limits requested from the adapter (each the worse of the adapter's and this
    /// one's: `wgpu::Limits { max_storage_buffers_per_shader_stage: 4, ..wgpu::Limits::unlimited() }`),
    /// to see how the library behaves on a smaller device. `None`: the adapter's own limits.
    pub limits_cap: Option<wgpu::Limits>,
    /// Compiled pipelines kept per device, the least recently used dropped past it (and
    /// compiled again if needed). Default 1024: more than a GPT training step uses.
    pub pipeline_cache: usize,
    /// `bench::measure`'s warm-up before timed repeats, in milliseconds (`WGK_WARMUP_MS`);
    /// `None`: [`crate::bench::WARMUP_MS`].
    pub measure_warmup_ms: Option<f64>,
    /// MiB `bench::measure` writes between timed repeats to flush the GPU's cache
    /// (`WGK_FLUSH_MB`); `None`: 256 on GPUs, 0 on CPU devices.
    pub measure_flush_mb: Option<u64>,
    /// How f32 matmuls may run (`WGK_F32_MATMUL_PRECISION=highest|high|medium`), like
    /// PyTorch's `torch.set_float32_matmul_precision`; [`crate::Gpu::set_f32_matmul_precision`]
    /// changes it later. Default: `Highest`.
    pub f32_matmul_precision: MatmulPrecision,
}

/// How an f32 matmul may compute its products, like PyTorch's
/// `torch.set_float32_matmul_precision`. A hint: where the adapter has no f16 cooperative
/// matrices every setting runs the f32 FMA kernels (`Highest`).
///
/// ```
/// use wgkernels::MatmulPrecision;
/// assert_eq!(MatmulPrecision::parse("high"), Some(MatmulPrecision::High));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulPrecision {
    /// f32 products and sums on FMA units (24 significant bits).
    #[default]
    Highest,
    /// Each f32 operand split into two f16 parts (scaled per tensor by a power of two so
    /// that neither overflows), three tensor-core products per fragment (hi·hi, hi·lo,
    /// lo·hi), f32 accumulation: about 22 significant bits. (Measured on the H200 at 48.9
    /// TFLOP/s against 27.4 for `Highest` at 8192×768×3072; the run of its accuracy test
    /// after the hi/lo split's last fix is pending: see BENCHMARKS.md, call E.)
    High,
    /// Operands rounded to f16 on tensor cores, f32 accumulation: 11 significant bits (the
    /// older `MatmulOptions::allow_reduced_precision`).
    Medium,
}

impl MatmulPrecision {
    /// `highest`, `high` or `medium` (any case); None otherwise.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "highest" => Some(Self::Highest),
            "high" => Some(Self::High),
            "medium" => Some(Self::Medium),
            _ => None,
        }
    }

    /// The setting's name, as [`MatmulPrecision::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Highest => "highest",
            Self::High => "high",
            Self::Medium => "medium",
        }
    }
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            backends: None,
            adapter_name: None,
            checked: false,
            autotune: true,
            fusion: true,
            fuse_matmul_epilogues: false,
            native_f16: true,
            fused_unroll: 0,
            fused_workgroup: 0,
            fused_groups: 0,
            first_submit: 4,
            tiered_jit: None,
            cache_dir: None,
            limits_cap: None,
            pipeline_cache: 1024,
            measure_warmup_ms: None,
            measure_flush_mb: None,
            f32_matmul_precision: MatmulPrecision::Highest,
        }
    }
}

impl GpuOptions {
    /// Options from the environment, the one place the library reads it. [`Gpu::new`]
    /// applies it once, when the device is created; [`Gpu::with_options`] never reads it.
    /// Each `WGK_*` variable sets the field named beside it in the README's table
    /// (`WGK_BACKEND=vulkan|metal|dx12|gl`, `WGK_ADAPTER=<substring>`, `WGK_CHECKED=1`,
    /// `WGK_FUSION=off`, ...); a value it cannot read is an `Err` naming the variable.
    ///
    /// [`Gpu::new`]: crate::Gpu::new
    /// [`Gpu::with_options`]: crate::Gpu::with_options
    ///
    /// ```no_run
    /// # fn main() -> wgkernels::Result<()> {
    /// let opts = wgkernels::GpuOptions::from_env()?; // WGK_BACKEND, WGK_CHECKED, ...
    /// let gpu = wgkernels::Gpu::with_options(opts)?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Options from `var`, which answers a variable's value (what [`GpuOptions::from_env`]
    /// does with the environment): how the parsing is tested without touching the process's
    /// environment. Unset or empty variables keep the default; a value that is not one of a
    /// variable's spellings is an `Err` naming the variable.
    ///
    /// ```
    /// use wgkernels::GpuOptions;
    /// let opts = GpuOptions::from_vars(|name| (name == "WGK_FUSION").then(|| "off".to_string())).unwrap();
    /// assert!(!opts.fusion);
    /// assert!(GpuOptions::from_vars(|name| (name == "WGK_FUSION").then(|| "of".to_string())).is_err());
    /// ```
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let switch = |name: &str, default: bool| var(name).map_or(Ok(default), |v| parse_switch(name, &v));
        let number = |name: &str, default: u32, what: &str| -> Result<u32> {
            var(name)
                .map_or(Ok(default), |v| v.trim().parse().map_err(|_| invalid(format!("{name}={v:?} is not {what}"))))
        };
        let defaults = Self::default();
        let home_cache = || var("HOME").map(|d| std::path::PathBuf::from(d).join(".cache").join("wgkernels"));
        Ok(Self {
            backends: var("WGK_BACKEND").map(|s| parse_backend(&s)).transpose()?,
            adapter_name: var("WGK_ADAPTER"),
            checked: switch("WGK_CHECKED", defaults.checked)?,
            autotune: switch("WGK_AUTOTUNE", defaults.autotune)?,
            fusion: switch("WGK_FUSION", defaults.fusion)?,
            fuse_matmul_epilogues: switch("WGK_FUSE_MATMUL", defaults.fuse_matmul_epilogues)?,
            native_f16: switch("WGK_NATIVE_F16", defaults.native_f16)?,
            fused_unroll: number("WGK_FUSED_UNROLL", 0, "one of 1, 2, 4, 8 (0: auto)")?,
            fused_workgroup: number("WGK_FUSED_WORKGROUP", 0, "one of 64, 128, 256, 512, 1024 (0: auto)")?,
            fused_groups: number("WGK_FUSED_GROUPS", 0, "a count of workgroups")?,
            first_submit: number("WGK_FIRST_SUBMIT", defaults.first_submit, "a count of dispatches")?,
            tiered_jit: var("WGK_TIERED_JIT").map(|v| parse_switch("WGK_TIERED_JIT", &v)).transpose()?,
            cache_dir: var("WGK_CACHE_DIR")
                .map(std::path::PathBuf::from)
                .or_else(|| var("XDG_CACHE_HOME").map(|d| std::path::PathBuf::from(d).join("wgkernels")))
                .or_else(home_cache),
            limits_cap: None,
            pipeline_cache: defaults.pipeline_cache,
            measure_warmup_ms: var("WGK_WARMUP_MS")
                .map(|v| match v.trim().parse::<f64>() {
                    Ok(ms) if ms >= 0.0 && ms.is_finite() => Ok(ms),
                    _ => Err(invalid(format!("WGK_WARMUP_MS={v:?} is not a number of milliseconds ≥ 0"))),
                })
                .transpose()?,
            measure_flush_mb: var("WGK_FLUSH_MB")
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| invalid(format!("WGK_FLUSH_MB={v:?} is not a count of MiB")))
                })
                .transpose()?,
            f32_matmul_precision: match var("WGK_F32_MATMUL_PRECISION") {
                None => MatmulPrecision::Highest,
                Some(v) => MatmulPrecision::parse(&v).ok_or_else(|| {
                    invalid(format!("WGK_F32_MATMUL_PRECISION={v:?} is not one of highest, high, medium"))
                })?,
            },
        })
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument { op: "GpuOptions::from_env", msg }
}

/// An on/off switch in the usual spellings: 1/0, true/false, yes/no, on/off (any case).
fn parse_switch(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(format!("{name}={value:?} is not one of 1/0, true/false, yes/no, on/off"))),
    }
}

fn parse_backend(s: &str) -> Result<wgpu::Backends> {
    match s.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        "noop" if cfg!(feature = "noop-backend") => Ok(wgpu::Backends::NOOP),
        other => Err(invalid(format!(
            "WGK_BACKEND={other:?} is not one of vulkan, metal, dx12, gl{}",
            if cfg!(feature = "noop-backend") { ", noop" } else { "" }
        ))),
    }
}
