//! `GpuOptions`: every setting of a device, as typed fields. [`GpuOptions::from_env`] is
//! the one place in the library that reads the environment.

use crate::error::{Error, Result};

/// How to pick an adapter; `GpuOptions::from_env()` reads `WGK_BACKEND`, `WGK_ADAPTER`, `WGK_CHECKED`.
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
    /// (`WGK_NATIVE_F16=0` keeps the library's routine everywhere). See [`Gpu::native_f16`].
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
            tiered_jit: None,
            cache_dir: None,
        }
    }
}

impl GpuOptions {
    /// Options from the environment: `WGK_BACKEND=vulkan|metal|dx12|gl`,
    /// `WGK_ADAPTER=<substring>`, `WGK_CHECKED=1`.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let opts = wgkernels::GpuOptions::from_env()?; // WGK_BACKEND, WGK_CHECKED, ...
    /// let gpu2 = Gpu::with_options(opts)?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self> {
        let backends = match std::env::var("WGK_BACKEND") {
            Ok(s) if !s.is_empty() => Some(parse_backend(&s)?),
            _ => None,
        };
        let adapter_name = std::env::var("WGK_ADAPTER").ok().filter(|s| !s.is_empty());
        let checked = matches!(std::env::var("WGK_CHECKED").as_deref(), Ok("1") | Ok("true"));
        let autotune = !matches!(std::env::var("WGK_AUTOTUNE").as_deref(), Ok("0") | Ok("false"));
        let fusion = !matches!(std::env::var("WGK_FUSION").as_deref(), Ok("0") | Ok("false"));
        let fuse_matmul_epilogues = matches!(std::env::var("WGK_FUSE_MATMUL").as_deref(), Ok("1") | Ok("true"));
        let native_f16 = !matches!(std::env::var("WGK_NATIVE_F16").as_deref(), Ok("0") | Ok("false"));
        let number = |name: &str, default: u32, what: &str| -> Result<u32> {
            match std::env::var(name) {
                Ok(v) if !v.is_empty() => v
                    .parse()
                    .map_err(|_| Error::InvalidArgument { op: "Gpu::new", msg: format!("{name}={v:?} is not {what}") }),
                _ => Ok(default),
            }
        };
        let fused_unroll = number("WGK_FUSED_UNROLL", 0, "one of 1, 2, 4, 8 (0: auto)")?;
        let fused_workgroup = number("WGK_FUSED_WORKGROUP", 0, "one of 64, 128, 256, 512, 1024 (0: auto)")?;
        let fused_groups = number("WGK_FUSED_GROUPS", 0, "a count of workgroups")?;
        let tiered_jit = match std::env::var("WGK_TIERED_JIT").as_deref() {
            Ok("1") | Ok("true") => Some(true),
            Ok("0") | Ok("false") => Some(false),
            _ => None,
        };
        let cache_dir = std::env::var_os("WGK_CACHE_DIR")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| std::path::PathBuf::from(d).join("wgkernels")))
            .or_else(|| std::env::var_os("HOME").map(|d| std::path::PathBuf::from(d).join(".cache").join("wgkernels")));
        Ok(Self {
            cache_dir,
            backends,
            adapter_name,
            checked,
            autotune,
            fusion,
            fuse_matmul_epilogues,
            native_f16,
            fused_unroll,
            fused_workgroup,
            fused_groups,
            tiered_jit,
        })
    }
}

fn parse_backend(s: &str) -> Result<wgpu::Backends> {
    match s.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        other => Err(Error::InvalidArgument {
            op: "Gpu::new",
            msg: format!("WGK_BACKEND={other:?} is not one of vulkan, metal, dx12, gl"),
        }),
    }
}
