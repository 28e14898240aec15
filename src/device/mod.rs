//! The GPU context: adapter choice, device, memory pool, pipeline cache, command batching.
//!
//! `Gpu` is a cheap-to-clone handle (`Arc` inside) that is `Send + Sync`. Kernels record
//! their dispatches into one pending command encoder; it is submitted when a result is
//! read back, before any upload (so queue writes stay ordered after earlier dispatches),
//! and every `MAX_PENDING_DISPATCHES` dispatches (fewer right after the host waited for
//! the GPU: see `GpuOptions::first_submit`).

use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A monotonic clock on every target: std's, which wasm32-unknown-unknown lacks (its
/// `Instant::now` panics there), or the browser's `performance.now()` through web-time.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use std::time::Instant;
#[cfg(target_arch = "wasm32")]
pub(crate) use web_time::Instant;

use std::any::{Any, TypeId};

use crate::error::{Error, Result};

mod options;
mod pipeline;
mod profiler;

pub use options::{GpuOptions, MatmulPrecision};
use pipeline::PipelineCache;
pub(crate) use pipeline::{params_layout, CachedKernel};
pub use pipeline::{Kernel, ParamsLayout, ShaderSource};
use profiler::ProfilerState;
pub use profiler::{KernelTime, Profiler, Report};

/// The tiered JIT's worker threads alive in this process, and whether it is exiting.
struct JitWorkers {
    alive: usize,
    exiting: bool,
}
static JIT_WORKERS: Mutex<JitWorkers> = Mutex::new(JitWorkers { alive: 0, exiting: false });
static JIT_WORKER_ENDED: std::sync::Condvar = std::sync::Condvar::new();

/// How often an idle worker looks whether the process is exiting.
const JIT_WORKER_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Registered with `atexit` when the first background compiler starts. Test processes that
/// ran the tiered JIT crashed (SIGSEGV) on the H200 after every test had passed, while
/// exiting with worker threads that had used the driver still alive. This tells the
/// workers to end (an idle one sees it within `JIT_WORKER_POLL`, a compiling one after its
/// compile) and waits for them, up to 30 s, before the driver's own exit handlers run.
#[cfg(not(target_arch = "wasm32"))]
extern "C" fn end_jit_workers_at_exit() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut workers = lock(&JIT_WORKERS);
    workers.exiting = true;
    while workers.alive > 0 {
        let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { return };
        workers = JIT_WORKER_ENDED.wait_timeout(workers, left).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// Devices of this process not yet torn down: every `Gpu::new` adds one, the drop of its
/// last handle (and of everything holding one: tensors, optimizers, caches) takes it off.
static LIVE_DEVICES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `f` inside an error scope of `filter` and returns what the scope caught. Native code
/// waits for the scope here. The browser cannot block on a promise, so there `f` runs
/// unscoped: an error reaches the device's uncaptured-error handler instead, and the next
/// operation's health check returns it (`Gpu::check_health`).
pub(crate) fn scoped<T>(
    device: &wgpu::Device,
    filter: wgpu::ErrorFilter,
    f: impl FnOnce() -> T,
) -> (T, Option<wgpu::Error>) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let scope = device.push_error_scope(filter);
        let out = f();
        (out, pollster::block_on(scope.pop()))
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (device, filter);
        (f(), None)
    }
}

/// The error a blocking call returns in the browser, which cannot wait for the GPU.
#[cfg(target_arch = "wasm32")]
fn cannot_block(op: &'static str, instead: &str) -> Error {
    Error::Unsupported { op, msg: format!("the browser cannot block on the GPU: await {instead} instead") }
}

/// The wgpu instance for `backends`, one per process and backend set, shared by every
/// device made from it. On the H200, a process that made a fresh instance for each of its
/// devices found no adapter at all after about 30 of them (the fusion test binary run with
/// one thread), though every device had been torn down; reusing the instance keeps the
/// driver's instance count at one.
///
/// GL is the exception: a GL instance holds one EGL context that every device made from it
/// would share, each device serialising only its own calls (`Gpu::serial`), so two devices
/// on two threads made the context current at once (EGL `BadAccess` on llvmpipe). A set of
/// backends that includes GL gets an instance of its own per device, as before.
fn shared_instance(backends: wgpu::Backends) -> wgpu::Instance {
    static INSTANCES: Mutex<Vec<(wgpu::Backends, wgpu::Instance)>> = Mutex::new(Vec::new());
    let fresh = || {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        // Asked for by name only (WGK_BACKEND=noop, feature noop-backend). It reports the
        // H200's limits and features (../shared/gpu/README.md), so that the host takes the
        // paths it takes there: its own defaults (every limit at its maximum) overflow
        // wgpu-core's fixed-size tables.
        if backends.contains(wgpu::Backends::NOOP) {
            desc.backend_options.noop = wgpu::NoopBackendOptions {
                enable: true,
                limits: Some(wgpu::Limits {
                    max_compute_workgroup_storage_size: 48 << 10,
                    max_compute_invocations_per_workgroup: 1024,
                    max_compute_workgroup_size_x: 1024,
                    max_compute_workgroup_size_y: 1024,
                    max_storage_buffer_binding_size: (2u64 << 30) - 4,
                    max_buffer_size: 4 << 30,
                    max_storage_buffers_per_shader_stage: 16,
                    ..wgpu::Limits::default()
                }),
                features: Some(
                    wgpu::Features::SHADER_F16
                        | wgpu::Features::SUBGROUP
                        | wgpu::Features::TIMESTAMP_QUERY
                        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
                        | wgpu::Features::SHADER_FLOAT32_ATOMIC,
                ),
                device_type: Some(wgpu::DeviceType::DiscreteGpu),
                subgroup_min_size: Some(32),
                subgroup_max_size: Some(32),
            };
        }
        wgpu::Instance::new(desc)
    };
    if backends.contains(wgpu::Backends::GL) {
        return fresh();
    }
    let mut instances = lock(&INSTANCES);
    if let Some((_, instance)) = instances.iter().find(|(b, _)| *b == backends) {
        return instance.clone();
    }
    let instance = fresh();
    instances.push((backends, instance.clone()));
    instance
}

/// Dispatches recorded before the pending encoder is submitted without being asked.
const MAX_PENDING_DISPATCHES: usize = 64;

/// What the library got from the adapter: the answer to "what can this machine do?".
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let info = gpu.info();
/// println!("{} on {:?}: storage binding {} bytes, subgroups {:?}", info.name, info.backend, info.limits.max_storage_buffer_binding_size, info.subgroup_sizes);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct GpuInfo {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Vulkan, Metal, Dx12 or Gl.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU (software).
    pub device_type: wgpu::DeviceType,
    /// Driver name and version.
    pub driver: String,
    /// Features requested and granted (a subset of what the library can use).
    pub features: wgpu::Features,
    /// The device limits (the adapter's own, requested in full).
    pub limits: wgpu::Limits,
    /// Cooperative-matrix (tensor core) configurations, empty where there are none.
    pub cooperative_matrix: Vec<wgpu::CooperativeMatrixProperties>,
    /// Every adapter that was found, as "name (backend, type)", best first.
    pub candidates: Vec<String>,
    /// Smallest and largest subgroup (warp, wave) size the adapter may use.
    pub subgroup_sizes: (u32, u32),
}

impl GpuInfo {
    /// True when the device has 16×16×16 f16×f16→f32 cooperative matrices (tensor cores).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// if gpu.info().has_coop_f16_16x16x16() { println!("tensor cores through cooperative matrices"); }
    /// # Ok(()) }
    /// ```
    pub fn has_coop_f16_16x16x16(&self) -> bool {
        self.cooperative_matrix.iter().any(|p| {
            p.m_size == 16
                && p.n_size == 16
                && p.k_size == 16
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
    }
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "adapter   {} ({:?}, {:?})", self.name, self.backend, self.device_type)?;
        writeln!(f, "driver    {}", self.driver)?;
        let names: Vec<&str> = self.features.iter_names().map(|(n, _)| n).collect();
        writeln!(f, "features  {}", if names.is_empty() { "(none optional)".into() } else { names.join(", ") })?;
        let l = &self.limits;
        writeln!(
            f,
            "limits    storage binding {} MiB, buffer {} MiB, workgroup storage {} KiB, invocations/workgroup {}, subgroup {}..{}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            self.subgroup_sizes.0,
            self.subgroup_sizes.1,
        )?;
        if self.cooperative_matrix.is_empty() {
            write!(f, "coop-mat  none (no tensor-core path on this adapter)")
        } else {
            let cfgs: Vec<String> = self
                .cooperative_matrix
                .iter()
                .map(|p| format!("{}x{}x{} {:?}->{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
                .collect();
            write!(f, "coop-mat  {}", cfgs.join(", "))
        }
    }
}

/// Bytes in use, as `gpu.memory()` reports them.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let m: wgkernels::MemoryStats = gpu.memory();
/// println!("{} live, {} pooled, peak {}", m.live_bytes, m.pool_bytes, m.peak_live_bytes);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by live tensors (their buffers, rounded up to the pool's size class).
    pub live_bytes: u64,
    /// Bytes of idle buffers kept by the pool for reuse.
    pub pool_bytes: u64,
    /// Highest `live_bytes` since the device was created or `reset_peak()` was called.
    pub peak_live_bytes: u64,
}

/// Counters for the pipeline cache (and, later, the fusion JIT).
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let s: wgkernels::Stats = gpu.stats();
/// println!("{} compiled, {} cache hits, {} fused kernels", s.pipelines_compiled, s.pipeline_cache_hits, s.fused_kernels);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pipelines compiled (cache misses).
    pub pipelines_compiled: u64,
    /// Pipeline cache hits.
    pub pipeline_cache_hits: u64,
    /// GPU commands recorded: dispatches, buffer copies and clears.
    pub dispatches: u64,
    /// Command buffers submitted.
    pub submits: u64,
    /// Times the host waited for the GPU to finish (synchronize, read-backs): each one
    /// leaves the GPU idle while the host records what follows.
    pub host_waits: u64,
    /// Storage buffers created (the memory pool had none of the size class free).
    pub buffers_created: u64,
    /// Bind groups created (the cache had none for a pipeline and these buffers).
    pub bind_groups_created: u64,
    /// Host time inside wgpu's command recording (compute passes, copies, clears), in
    /// nanoseconds: with `submit_ns`, what the backend and driver take of a step's host
    /// time, the rest being the crate's own work.
    pub record_ns: u64,
    /// Host time finishing and submitting command buffers, in nanoseconds.
    pub submit_ns: u64,
    /// Fused element-wise kernels run (realisations of pending expressions).
    pub fused_kernels: u64,
    /// Pipelines held in the cache now (at most `GpuOptions::pipeline_cache`).
    pub pipelines_cached: u64,
}

struct Pool {
    /// Idle buffers by size class, ordered: `alloc` hands out the first, so which buffer a
    /// tensor gets depends on the set of idle buffers, not on the order they were freed in
    /// (which a backward pass's drops do not keep from one step to the next). A loop that
    /// repeats its allocations then binds the same buffers each time, and its bind groups
    /// come from the cache: GPT-2's training step created 300–380 bind groups a step with
    /// last-freed-first reuse (wgpu's noop backend, 1024 tokens).
    free: HashMap<u64, std::collections::BTreeSet<wgpu::Buffer>>,
    stats: MemoryStats,
}

struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
    /// Dispatches at which the encoder is submitted unasked: `GpuOptions::first_submit`
    /// after the host has waited for the GPU, which is then idle (a training step that read
    /// its loss scale's verdict, a decode step its logits: the GPU starts on the next
    /// kernels instead of waiting until the host has recorded 64), doubling with each
    /// submit up to MAX_PENDING_DISPATCHES (4, 8, 16, 32, 64: four more submits per wait).
    submit_at: usize,
}

/// A bind group's identity: the pipeline and the (binding, buffer) pairs, by handle.
pub(crate) type BindKey = (wgpu::ComputePipeline, Vec<(u32, wgpu::Buffer)>);

pub(crate) struct GpuInner {
    /// Dropped explicitly, last, under DEVICE_LIFECYCLE (see `Drop for GpuInner`).
    pub(crate) device: std::mem::ManuallyDrop<wgpu::Device>,
    pub(crate) queue: std::mem::ManuallyDrop<wgpu::Queue>,
    pub(crate) info: GpuInfo,
    /// Build every module with runtime bounds checks (`WGK_CHECKED=1`).
    pub(crate) checked: bool,
    pub(crate) autotune: bool,
    /// GpuOptions::cache_dir, measure_warmup_ms, measure_flush_mb.
    cache_dir: Option<std::path::PathBuf>,
    measure_warmup_ms: Option<f64>,
    measure_flush_mb: Option<u64>,
    pub(crate) pipelines: Mutex<PipelineCache>,
    /// Kernel metadata buffers by content: read-only once made, so a loop that launches the
    /// same kernels on the same shapes makes none after its first step (see `meta_buffer`).
    pub(crate) meta: Mutex<FxHashMap<Vec<u32>, wgpu::Buffer>>,
    /// Bind groups by (pipeline, bound buffers): the pool hands a loop the same buffers step
    /// after step, so its bind groups are made once. Cleared with the pool (`empty_cache`),
    /// whose buffers the keys would otherwise keep alive.
    pub(crate) bind_groups: Mutex<FxHashMap<BindKey, wgpu::BindGroup>>,
    /// State that layers above keep per device (the fusion JIT's kernel cache, the
    /// autotuner's winners), one value per type: the device layer holds it without naming it.
    family_state: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    pool: Mutex<Pool>,
    pending: Mutex<Pending>,
    pub(crate) profiler: Mutex<Option<ProfilerState>>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<String>>>,
    pub(crate) compiled: AtomicU64,
    pub(crate) fused: AtomicU64,
    fusion: std::sync::atomic::AtomicBool,
    matmul_epilogues: std::sync::atomic::AtomicBool,
    /// [`MatmulPrecision`] as its index (Highest 0, High 1, Medium 2).
    f32_matmul_precision: std::sync::atomic::AtomicU8,
    pub(crate) cache_hits: AtomicU64,
    dispatches: AtomicU64,
    submits: AtomicU64,
    host_waits: AtomicU64,
    buffers_created: AtomicU64,
    pub(crate) bind_groups_created: AtomicU64,
    record_ns: AtomicU64,
    submit_ns: AtomicU64,
    /// GpuOptions::first_submit, checked.
    first_submit: usize,
    /// Whether 16-bit stores may use the adapter's f32 → f16 conversion: off by option or
    /// without SHADER_F16, else the probe's verdict, made on first use.
    native_f16_allowed: bool,
    native_f16: std::sync::OnceLock<bool>,
    /// (units per invocation, invocations per workgroup) of the fusion JIT's 16-byte path
    /// and of its element path: GpuOptions::fused_unroll and fused_workgroup, checked and
    /// resolved; and fused_groups.
    pub(crate) fused_wide: (u32, u32),
    pub(crate) fused_element: (u32, u32),
    pub(crate) fused_groups: u32,
    /// GpuOptions::tiered_jit, resolved for this adapter.
    pub(crate) tiered_jit: bool,
    /// The tiered JIT's background compiler: one worker thread, started on first use, fed
    /// through this channel; the kernels queued or compiling (`finish_compiles` waits on
    /// the condvar until none is left), and those whose compile failed (compiled in the
    /// foreground next time, which reports why).
    jit_queue: Mutex<Option<std::sync::mpsc::Sender<Kernel>>>,
    jit_pending: Mutex<std::collections::HashSet<Kernel>>,
    jit_done: std::sync::Condvar,
    jit_failed: Mutex<std::collections::HashSet<Kernel>>,
    /// Shared with the worker, which reaches the device only through a weak reference.
    jit_hold: Arc<JitHold>,
    /// GL only: held around every device call of this library (see [`Gpu::serial`]).
    gl_serial: Option<parking_lot::ReentrantMutex<()>>,
}

/// Held while a device is made (adapter enumeration and the device request) and while one
/// is torn down: the devices of a process share one wgpu instance (`shared_instance`), and
/// these steps on it are not run concurrently (on the H200, test threads making and
/// dropping devices of one instance at once stopped making progress).
static DEVICE_LIFECYCLE: Mutex<()> = Mutex::new(());

impl Drop for GpuInner {
    fn drop(&mut self) {
        let _lifecycle = lock(&DEVICE_LIFECYCLE);
        // Everything that holds the device goes first (pipelines, buffers, bind groups, the
        // open encoder, the state layers above keep), then the queue (which waits for the
        // GPU to be idle) and the device itself, all under the lock.
        lock(&self.pending).encoder.take();
        lock(&self.bind_groups).clear();
        lock(&self.meta).clear();
        *lock(&self.pipelines) = PipelineCache::new(1);
        lock(&self.pool).free.clear();
        lock(&self.family_state).clear();
        lock(&self.profiler).take();
        // SAFETY: neither field is used after this; GpuInner is being dropped.
        unsafe {
            std::mem::ManuallyDrop::drop(&mut self.queue);
            std::mem::ManuallyDrop::drop(&mut self.device);
        }
        LIVE_DEVICES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A handle to one GPU device. Clone it freely; clones share the device, the pool and the caches.
///
/// ```no_run
/// use wgkernels::{Gpu, GpuOptions};
/// # fn main() -> wgkernels::Result<()> {
/// let gpu = Gpu::new()?;                 // the best adapter (WGK_BACKEND / WGK_ADAPTER override)
/// println!("{}", gpu.info());            // name, backend, features, limits, tensor-core shapes
/// let checked = Gpu::with_options(GpuOptions { checked: true, ..GpuOptions::from_env()? })?;
/// println!("{:?} {:?}", gpu.memory(), checked.stats());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<GpuInner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} on {:?})", self.inner.info.name, self.inner.info.backend)
    }
}

/// The last handle a user drops tears the device down on the user's thread: it stops the
/// tiered JIT's worker from taking this device up again and waits for a compile in progress
/// to let go of it. Otherwise the worker, finishing a compile, could hold the last handle
/// and destroy the device on its own thread, even while the process exits (lavapipe
/// crashed that way, in the test `a_process_exits_cleanly_with_background_compiles_queued`).
impl Drop for Gpu {
    fn drop(&mut self) {
        // Every tensor holds a handle: most drops see others and skip the lock. (Two last
        // handles dropped at once on two threads may both skip; the worker's then ends it.)
        if Arc::strong_count(&self.inner) > 2 {
            return;
        }
        let hold = &self.inner.jit_hold;
        let mut state = lock(&hold.state);
        // The worker's handle, while it compiles, is not a user's.
        if Arc::strong_count(&self.inner) - usize::from(state.held) == 1 {
            state.closing = true;
            while state.held {
                state = hold.released.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

/// Whether the tiered JIT's worker holds a device (compiling for it), and whether the
/// device's last user handle is being dropped (see `Drop for Gpu`).
#[derive(Default)]
pub(crate) struct JitHold {
    state: Mutex<JitHoldState>,
    released: std::sync::Condvar,
}

#[derive(Default)]
struct JitHoldState {
    held: bool,
    closing: bool,
}

/// The adapter `opts` asks for (the best by device type and backend among those its
/// backends and name allow) at `index` 0, or the `index`-th of the adapters of the same
/// device type and backend as the best, best first (one device per adapter:
/// [`Gpu::per_adapter`]); its info, the names of every adapter seen, and how many adapters
/// share the best's type and backend.
async fn pick_adapter(
    opts: &GpuOptions,
    index: usize,
) -> Result<(wgpu::Adapter, wgpu::AdapterInfo, Vec<String>, usize)> {
    // Without an explicit choice, GL is probed only when no primary backend has an
    // adapter: it is the slowest path, and probing it wakes EGL (and its warnings).
    let mut backends = opts.backends.unwrap_or(wgpu::Backends::PRIMARY);
    let mut adapters = shared_instance(backends).enumerate_adapters(backends).await;
    if adapters.is_empty() && opts.backends.is_none() {
        backends = wgpu::Backends::all();
        adapters = shared_instance(backends).enumerate_adapters(backends).await;
    }
    let mut candidates: Vec<(wgpu::Adapter, wgpu::AdapterInfo)> = adapters
        .drain(..)
        .map(|a| {
            let i = a.get_info();
            (a, i)
        })
        .collect();
    candidates.sort_by_key(|(_, i)| (device_type_rank(i.device_type), backend_rank(i.backend)));
    let names: Vec<String> =
        candidates.iter().map(|(_, i)| format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)).collect();
    if let Some(want) = &opts.adapter_name {
        let want = want.to_lowercase();
        candidates.retain(|(_, i)| i.name.to_lowercase().contains(&want));
    }
    if let Some((_, best)) = candidates.first() {
        let (device_type, backend) = (best.device_type, best.backend);
        candidates.retain(|(_, i)| i.device_type == device_type && i.backend == backend);
    }
    let peers = candidates.len();
    if index > 0 && index >= peers {
        return Err(Error::InvalidArgument {
            op: "Gpu::per_adapter",
            msg: format!("adapter {index} asked for; {peers} of the best kind: [{}]", names.join(", ")),
        });
    }
    let Some((adapter, ainfo)) = candidates.into_iter().nth(index) else {
        let tried = format!(
            "backends {:?}{}; adapters seen: [{}]",
            backends,
            opts.adapter_name.as_ref().map(|n| format!(", name containing {n:?}")).unwrap_or_default(),
            names.join(", ")
        );
        return Err(Error::NoAdapter {
            tried,
            hint: "Without a GPU, install a software Vulkan device (Debian/Ubuntu: \
                       `apt-get install mesa-vulkan-drivers`), or try WGK_BACKEND=gl with Mesa's llvmpipe."
                .into(),
        });
    };

    Ok((adapter, ainfo, names, peers))
}

/// A device with `features` and `limits` from `adapter` (its own limits, not wgpu's
/// defaults, or large buffers and workgroups are refused).
async fn request_device(
    adapter: &wgpu::Adapter,
    ainfo: &wgpu::AdapterInfo,
    features: wgpu::Features,
    limits: &wgpu::Limits,
) -> Result<(wgpu::Device, wgpu::Queue)> {
    let device_desc = wgpu::DeviceDescriptor {
        label: Some("wgkernels"),
        required_features: features,
        required_limits: limits.clone(),
        // SAFETY: the only experimental feature requested is cooperative matrices, used
        // by kernels that the tests check against CPU references on the devices that have it.
        experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    };
    adapter
        .request_device(&device_desc)
        .await
        .map_err(|e| Error::RequestDevice { adapter: ainfo.name.clone(), reason: e.to_string() })
}

/// Slots that device loss and errors escaping the host checks are written to: they become
/// `Err`s on the next call instead of wgpu's default handler, which panics.
type ErrorSlot = Arc<Mutex<Option<String>>>;

fn catch_device_errors(device: &wgpu::Device) -> (ErrorSlot, ErrorSlot) {
    let lost: ErrorSlot = Arc::new(Mutex::new(None));
    let lost_cb = lost.clone();
    device.set_device_lost_callback(move |reason, msg| {
        *lost_cb.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{reason:?}: {msg}"));
    });
    let uncaptured: ErrorSlot = Arc::new(Mutex::new(None));
    let uncaptured_cb = uncaptured.clone();
    device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| {
        let mut slot = uncaptured_cb.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(err.to_string());
        }
    }));
    (lost, uncaptured)
}

fn device_type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u8 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    }
}

/// The optional features the library uses when the adapter has them.
fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::SUBGROUP_BARRIER
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
        | wgpu::Features::SHADER_FLOAT32_ATOMIC
}

impl Gpu {
    /// Picks the best adapter (discrete > integrated > software), honouring `WGK_BACKEND`,
    /// `WGK_ADAPTER` and `WGK_CHECKED`, and creates a device with the adapter's own limits and
    /// every optional feature the library can use.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let gpu2 = Gpu::new()?;
    /// println!("{}", gpu2.info()); // adapter, backend, features, limits
    /// # Ok(()) }
    /// ```
    ///
    /// Native only: the browser cannot block; it awaits [`Gpu::new_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        Self::with_options(GpuOptions::from_env()?)
    }

    /// Like [`Gpu::new`] with explicit options instead of the environment.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::GpuOptions;
    /// let sw = Gpu::with_options(GpuOptions { backends: Some(wgkernels::wgpu::Backends::GL), ..GpuOptions::from_env()? })?;
    /// # Ok(()) }
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(opts: GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(opts))
    }

    /// One device on each adapter of the best kind for `opts` (the device type and backend
    /// `Gpu::with_options` would pick: on a machine with two GPUs, one device on each), best
    /// first: the devices of data-parallel training ([`crate::parallel`]).
    ///
    /// ```no_run
    /// # use wgkernels::{Gpu, GpuOptions};
    /// # fn main() -> wgkernels::Result<()> {
    /// let gpus = Gpu::per_adapter(GpuOptions::from_env()?)?;
    /// println!("{} adapters: {:?}", gpus.len(), gpus.iter().map(|g| &g.info().name).collect::<Vec<_>>());
    /// # Ok(()) }
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn per_adapter(opts: GpuOptions) -> Result<Vec<Self>> {
        let peers = {
            let _lifecycle = lock(&DEVICE_LIFECYCLE);
            pollster::block_on(pick_adapter(&opts, 0))?.3
        };
        (0..peers).map(|i| pollster::block_on(Self::create(opts.clone(), i))).collect()
    }

    /// [`Gpu::with_options`] as a future: the way to a device in the browser
    /// (wasm32 + WebGPU), where nothing may block. There the adapter is the browser's
    /// WebGPU adapter; autotuning and the tiered JIT's background compiles are off (both
    /// wait for the GPU or a thread), and reading results back is async
    /// ([`Tensor::to_vec_async`](crate::Tensor::to_vec_async)).
    ///
    /// ```
    /// # use wgkernels::{Gpu, GpuOptions};
    /// # fn main() -> wgkernels::Result<()> {
    /// let gpu = pollster::block_on(Gpu::new_async(GpuOptions::from_env()?))?; // browser: .await
    /// # Ok(()) }
    /// ```
    pub async fn new_async(opts: GpuOptions) -> Result<Self> {
        let gpu = Self::create(opts, 0).await?;
        // The browser cannot run the f16 rounding probe when `native_f16()` is first asked.
        #[cfg(target_arch = "wasm32")]
        if gpu.inner.native_f16_allowed {
            let agree = gpu.probe_f16_rounding().await.unwrap_or(false);
            let _ = gpu.inner.native_f16.set(agree);
        }
        Ok(gpu)
    }

    // The lifecycle lock is held across the adapter and device requests: natively,
    // `with_options` runs this future to completion on the caller's thread (pollster), and
    // the lock is what keeps device creation one at a time process-wide
    // (DEVICE_LIFECYCLE). The browser runs one thread: there is nothing to exclude, and a
    // second request while the first awaits would find the lock taken, so it is not taken.
    #[allow(clippy::await_holding_lock)]
    async fn create(opts: GpuOptions, index: usize) -> Result<Self> {
        if ![0, 1, 2, 4, 8].contains(&opts.fused_unroll) {
            return Err(Error::InvalidArgument {
                op: "Gpu::new",
                msg: format!("fused_unroll {} is not 0 (auto) or one of 1, 2, 4, 8", opts.fused_unroll),
            });
        }
        if !(1..=MAX_PENDING_DISPATCHES as u32).contains(&opts.first_submit) {
            return Err(Error::InvalidArgument {
                op: "Gpu::new",
                msg: format!("first_submit {} is not 1 to {MAX_PENDING_DISPATCHES}", opts.first_submit),
            });
        }
        let first_submit = opts.first_submit as usize;
        #[cfg(not(target_arch = "wasm32"))]
        let lifecycle = lock(&DEVICE_LIFECYCLE);
        let (adapter, ainfo, names, _) = pick_adapter(&opts, index).await?;
        let features = adapter.features() & wanted_features();
        let limits = match &opts.limits_cap {
            Some(cap) => adapter.limits().or_worse_values_from(cap),
            None => adapter.limits(),
        };
        let fits =
            |wg: u32| wg <= limits.max_compute_invocations_per_workgroup && wg <= limits.max_compute_workgroup_size_x;
        let wide_workgroup = if fits(512) { 512 } else { 256 };
        let pick = |option: u32, auto: u32| if option == 0 { auto } else { option };
        let wg = opts.fused_workgroup;
        if ![0, 64, 128, 256, 512, 1024].contains(&wg) || !fits(wg) {
            return Err(Error::InvalidArgument {
                op: "Gpu::new",
                msg: format!(
                    "fused_workgroup {wg} is not 0 (auto) or one of 64, 128, 256, 512, 1024 within {}'s limit of {} invocations",
                    ainfo.name, limits.max_compute_invocations_per_workgroup
                ),
            });
        }
        let (device, queue) = request_device(&adapter, &ainfo, features, &limits).await?;
        #[cfg(not(target_arch = "wasm32"))]
        drop(lifecycle);
        let cooperative_matrix = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            adapter.cooperative_matrix_properties()
        } else {
            Vec::new()
        };

        let (lost, uncaptured) = catch_device_errors(&device);

        let info = GpuInfo {
            name: ainfo.name.clone(),
            backend: ainfo.backend,
            device_type: ainfo.device_type,
            driver: format!("{} {}", ainfo.driver, ainfo.driver_info).trim().to_string(),
            features,
            limits,
            cooperative_matrix,
            candidates: names,
            subgroup_sizes: (ainfo.subgroup_min_size, ainfo.subgroup_max_size),
        };
        LIVE_DEVICES.fetch_add(1, Ordering::Relaxed);
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                device: std::mem::ManuallyDrop::new(device),
                queue: std::mem::ManuallyDrop::new(queue),
                info,
                checked: opts.checked,
                // Tuning times candidates, waiting for the GPU: not in the browser.
                autotune: opts.autotune && !cfg!(target_arch = "wasm32"),
                cache_dir: opts.cache_dir.clone(),
                measure_warmup_ms: opts.measure_warmup_ms,
                measure_flush_mb: opts.measure_flush_mb,
                pipelines: Mutex::new(PipelineCache::new(opts.pipeline_cache)),
                meta: Mutex::new(FxHashMap::default()),
                bind_groups: Mutex::new(FxHashMap::default()),
                family_state: Mutex::new(HashMap::new()),
                pool: Mutex::new(Pool { free: HashMap::new(), stats: MemoryStats::default() }),
                pending: Mutex::new(Pending { encoder: None, dispatches: 0, submit_at: first_submit }),
                profiler: Mutex::new(None),
                lost,
                uncaptured,
                compiled: AtomicU64::new(0),
                fused: AtomicU64::new(0),
                fusion: std::sync::atomic::AtomicBool::new(opts.fusion),
                matmul_epilogues: std::sync::atomic::AtomicBool::new(opts.fuse_matmul_epilogues),
                f32_matmul_precision: std::sync::atomic::AtomicU8::new(opts.f32_matmul_precision as u8),
                cache_hits: AtomicU64::new(0),
                dispatches: AtomicU64::new(0),
                submits: AtomicU64::new(0),
                host_waits: AtomicU64::new(0),
                buffers_created: AtomicU64::new(0),
                bind_groups_created: AtomicU64::new(0),
                record_ns: AtomicU64::new(0),
                submit_ns: AtomicU64::new(0),
                first_submit,
                native_f16_allowed: opts.native_f16 && features.contains(wgpu::Features::SHADER_F16),
                native_f16: std::sync::OnceLock::new(),
                fused_wide: (pick(opts.fused_unroll, 1), pick(opts.fused_workgroup, wide_workgroup)),
                fused_element: (pick(opts.fused_unroll, 4), pick(opts.fused_workgroup, 256)),
                fused_groups: opts.fused_groups,
                // The background compiler is a thread: none in the browser.
                tiered_jit: !cfg!(target_arch = "wasm32")
                    && opts
                        .tiered_jit
                        .unwrap_or(ainfo.device_type != wgpu::DeviceType::Cpu && ainfo.backend != wgpu::Backend::Gl),
                jit_queue: Mutex::new(None),
                jit_pending: Mutex::new(std::collections::HashSet::new()),
                jit_done: std::sync::Condvar::new(),
                jit_failed: Mutex::new(std::collections::HashSet::new()),
                jit_hold: Arc::new(JitHold::default()),
                gl_serial: (ainfo.backend == wgpu::Backend::Gl).then(|| parking_lot::ReentrantMutex::new(())),
            }),
        })
    }

    /// How many devices this process holds now: each [`Gpu::new`] adds one until its last
    /// handle is gone, with every tensor, optimizer and cache entry that holds one. A process
    /// that creates and drops devices (a test suite, a server) sees this return to where it
    /// was; drivers list no adapter once too many devices stay alive.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// let before = Gpu::live_devices();
    /// {
    ///     let gpu = Gpu::new()?;
    ///     let x = Tensor::randn(&gpu, &[8], DType::F32, 0)?;
    ///     x.exp()?.realize()?;
    /// }
    /// assert_eq!(Gpu::live_devices(), before);
    /// # Ok::<(), wgkernels::Error>(())
    /// ```
    pub fn live_devices() -> usize {
        LIVE_DEVICES.load(Ordering::Relaxed)
    }

    /// What the adapter is and what the library got from it.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// println!("{}", gpu.info());
    /// # Ok(()) }
    /// ```
    pub fn info(&self) -> &GpuInfo {
        &self.inner.info
    }

    /// The per-device state of type `T` that a layer above keeps (made on first use).
    pub(crate) fn family_state<T: Any + Default + Send + Sync>(&self) -> Arc<T> {
        let mut states = lock(&self.inner.family_state);
        let entry = states.entry(TypeId::of::<T>()).or_insert_with(|| Arc::new(T::default()));
        entry.clone().downcast::<T>().unwrap_or_else(|_| unreachable!("keyed by the TypeId of T"))
    }

    /// Where autotuning results persist (`GpuOptions::cache_dir`).
    pub(crate) fn cache_dir(&self) -> Option<&std::path::Path> {
        self.inner.cache_dir.as_deref()
    }

    /// `GpuOptions::measure_warmup_ms` and `measure_flush_mb`, for `bench::measure`.
    pub(crate) fn measure_settings(&self) -> (Option<f64>, Option<u64>) {
        (self.inner.measure_warmup_ms, self.inner.measure_flush_mb)
    }

    /// Whether autotuning is on for this device (`GpuOptions::autotune`).
    pub(crate) fn autotune(&self) -> bool {
        self.inner.autotune
    }

    /// True when element-wise ops are fused (the default).
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// println!("fusion: {}", gpu.fusion()); // on unless GpuOptions::fusion (WGK_FUSION) says off
    /// # Ok(()) }
    /// ```
    pub fn fusion(&self) -> bool {
        self.inner.fusion.load(Ordering::Relaxed)
    }

    /// Turns element-wise fusion on or off, to measure what it buys. Tensors already pending
    /// stay pending and are still computed fused when realised.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// gpu.set_fusion(false);               // one kernel per op from here on
    /// let y = x.exp()?.add(&x)?;          // two dispatches
    /// gpu.set_fusion(true);
    /// # Ok(()) }
    /// ```
    pub fn set_fusion(&self, on: bool) {
        self.inner.fusion.store(on, Ordering::Relaxed);
    }

    /// How f32 matmuls that do not say otherwise (`MatmulOptions::precision` None) compute,
    /// like `torch.get_float32_matmul_precision()`; see [`MatmulPrecision`].
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, MatmulPrecision, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// gpu.set_f32_matmul_precision(MatmulPrecision::High); // f32 split into f16 parts
    /// assert_eq!(gpu.f32_matmul_precision(), MatmulPrecision::High);
    /// # Ok(()) }
    /// ```
    pub fn f32_matmul_precision(&self) -> MatmulPrecision {
        match self.inner.f32_matmul_precision.load(Ordering::Relaxed) {
            1 => MatmulPrecision::High,
            2 => MatmulPrecision::Medium,
            _ => MatmulPrecision::Highest,
        }
    }

    /// Sets how f32 matmuls compute from now on (`torch.set_float32_matmul_precision`).
    pub fn set_f32_matmul_precision(&self, precision: MatmulPrecision) {
        self.inner.f32_matmul_precision.store(precision as u8, Ordering::Relaxed);
    }

    /// Whether chains consuming an f32 matmul run in its epilogue (with fusion on); see
    /// [`GpuOptions::fuse_matmul_epilogues`].
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// gpu.set_matmul_epilogue_fusion(true);
    /// assert!(gpu.matmul_epilogue_fusion());
    /// # Ok(()) }
    /// ```
    pub fn matmul_epilogue_fusion(&self) -> bool {
        self.inner.matmul_epilogues.load(Ordering::Relaxed)
    }

    /// Turns matmul-epilogue fusion on or off for work recorded from now on.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// gpu.set_matmul_epilogue_fusion(true);
    /// let x = Tensor::randn(&gpu, &[64, 64], DType::F32, 0)?;
    /// let y = x.matmul(&x)?.add_scalar(1.0)?.relu()?; // one kernel when realised
    /// # Ok(()) }
    /// ```
    pub fn set_matmul_epilogue_fusion(&self, on: bool) {
        self.inner.matmul_epilogues.store(on, Ordering::Relaxed);
    }

    /// True when shaders are built with runtime bounds checks (`WGK_CHECKED=1`).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// println!("bounds-checked shaders: {}", gpu.checked());
    /// # Ok(()) }
    /// ```
    pub fn checked(&self) -> bool {
        self.inner.checked
    }

    /// True when kernels store 16-bit results through the adapter's own f32 → f16
    /// conversion: the device has `SHADER_F16`, [`GpuOptions::native_f16`] is on, and a
    /// probe run on the first call found that conversion rounding to nearest even on ~15 000
    /// inputs chosen around every rounding tie (shaders/f16_probe.wgsl). Otherwise kernels
    /// round with the library's own routine; results are the same bits either way.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// println!("native f16 rounding: {}", gpu.native_f16());
    /// # Ok(()) }
    /// ```
    pub fn native_f16(&self) -> bool {
        if !self.inner.native_f16_allowed {
            return false;
        }
        // A probe that cannot run counts as a "no": the exact routine is always correct. (In
        // the browser `new_async` has run it; it cannot run here.)
        *self.inner.native_f16.get_or_init(|| {
            #[cfg(not(target_arch = "wasm32"))]
            {
                let _serial = self.serial();
                pollster::block_on(self.probe_f16_rounding()).unwrap_or(false)
            }
            #[cfg(target_arch = "wasm32")]
            false
        })
    }

    /// Runs shaders/f16_probe.wgsl with wgpu objects of its own (no pooled buffer, pending
    /// encoder, pipeline cache or counter of the library is touched, so `stats()` and the
    /// kernel counts that tests check are the same with and without it). Native code runs it
    /// on the first `native_f16()` call; the browser, which cannot wait there, in
    /// [`Gpu::new_async`].
    async fn probe_f16_rounding(&self) -> Result<bool> {
        use wgpu::util::DeviceExt;
        let device = &self.inner.device;
        let values = f16_probe_inputs();
        let pairs = values.len() / 2;
        let bytes = (pairs * 4) as u64;
        let input = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("f16_probe"),
            contents: bytemuck::cast_slice(&values),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("f16_probe"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let flags = buffer(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
        let staging = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let (enc, err) = scoped(device, wgpu::ErrorFilter::Validation, || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("f16_probe"),
                source: wgpu::ShaderSource::Wgsl(f16_probe_kernel().wgsl().into()),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("f16_probe"),
                layout: None,
                module: &module,
                entry_point: Some("f16_probe"),
                compilation_options: Default::default(),
                cache: None,
            });
            let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("f16_probe"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: input.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: flags.as_entire_binding() },
                ],
            });
            let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("f16_probe") });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(pairs.div_ceil(64) as u32, 1, 1);
            }
            enc.copy_buffer_to_buffer(&flags, 0, &staging, 0, bytes);
            enc
        });
        if let Some(err) = err {
            return Err(Error::Backend { op: "f16_probe", msg: err.to_string() });
        }
        self.inner.queue.submit([enc.finish()]);
        let flags = self.map_staging(staging, vec![(0, bytes)]).bytes().await?;
        // Each word is the xor of the two roundings' bits: all zero when they agree.
        Ok(flags.iter().flatten().all(|&b| b == 0))
    }

    /// The underlying wgpu device, for interop.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let limits = gpu.device().limits(); // the wgpu device, for interop
    /// # Ok(()) }
    /// ```
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The underlying wgpu queue, for interop.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let period = gpu.queue().get_timestamp_period();
    /// # Ok(()) }
    /// ```
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// True when the device has `feature`.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let f16 = gpu.has(wgkernels::wgpu::Features::SHADER_F16);
    /// # Ok(()) }
    /// ```
    pub fn has(&self, feature: wgpu::Features) -> bool {
        self.inner.info.features.contains(feature)
    }

    /// Bytes in tensors, in the pool, and the peak since `reset_peak()`.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let m = gpu.memory();
    /// println!("{} live, {} pooled, peak {}", m.live_bytes, m.pool_bytes, m.peak_live_bytes);
    /// # Ok(()) }
    /// ```
    pub fn memory(&self) -> MemoryStats {
        lock(&self.inner.pool).stats
    }

    /// Starts a new peak measurement at the current live bytes.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// gpu.reset_peak();
    /// let x = Tensor::randn(&gpu, &[1 << 20], DType::F32, 0)?;
    /// println!("peak {} bytes", gpu.memory().peak_live_bytes);
    /// # Ok(()) }
    /// ```
    pub fn reset_peak(&self) {
        let mut pool = lock(&self.inner.pool);
        pool.stats.peak_live_bytes = pool.stats.live_bytes;
    }

    /// Frees every idle buffer the pool holds.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// gpu.empty_cache(); // the pool's idle buffers go back to the driver
    /// assert_eq!(gpu.memory().pool_bytes, 0);
    /// # Ok(()) }
    /// ```
    pub fn empty_cache(&self) {
        let _serial = self.serial();
        // Cached bind groups hold their buffers: drop them first.
        lock(&self.inner.bind_groups).clear();
        let mut pool = lock(&self.inner.pool);
        pool.free.clear();
        pool.stats.pool_bytes = 0;
    }

    /// Pipeline cache and dispatch counters.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let before = gpu.stats();
    /// x.exp()?.add(&x)?.realize()?;
    /// let after = gpu.stats();
    /// println!("{} kernel(s) compiled, {} dispatches", after.pipelines_compiled - before.pipelines_compiled, after.dispatches - before.dispatches);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        Stats {
            pipelines_compiled: i.compiled.load(Ordering::Relaxed),
            pipeline_cache_hits: i.cache_hits.load(Ordering::Relaxed),
            dispatches: i.dispatches.load(Ordering::Relaxed),
            submits: i.submits.load(Ordering::Relaxed),
            host_waits: i.host_waits.load(Ordering::Relaxed),
            buffers_created: i.buffers_created.load(Ordering::Relaxed),
            bind_groups_created: i.bind_groups_created.load(Ordering::Relaxed),
            record_ns: i.record_ns.load(Ordering::Relaxed),
            submit_ns: i.submit_ns.load(Ordering::Relaxed),
            fused_kernels: i.fused.load(Ordering::Relaxed),
            pipelines_cached: lock(&i.pipelines).len() as u64,
        }
    }

    /// `Err(DeviceLost)` once the device is gone; `Err(Backend)` if wgpu reported an
    /// error that escaped the host-side checks (a bug in the library: please report it).
    pub(crate) fn check_health(&self) -> Result<()> {
        if let Some(msg) = lock(&self.inner.lost).clone() {
            return Err(Error::DeviceLost(msg));
        }
        if let Some(msg) = lock(&self.inner.uncaptured).take() {
            return Err(Error::Backend { op: "device", msg });
        }
        Ok(())
    }

    /// On the GL backend, wgpu-hal panics ("Could not lock adapter context") when a thread
    /// waits more than 6 s for the GL context while another holds it — a long dispatch being
    /// waited for, or a big shader compiling, on a software rasteriser. Every device call of
    /// this library takes this reentrant lock first on GL, so other threads wait here, with
    /// no timeout, instead of inside wgpu. Elsewhere it is `None` and costs nothing.
    pub(crate) fn serial(&self) -> Option<parking_lot::ReentrantMutexGuard<'_, ()>> {
        self.inner.gl_serial.as_ref().map(|m| m.lock())
    }

    /// A storage buffer of at least `bytes` bytes from the pool (size-classed).
    pub(crate) fn alloc(&self, op: &'static str, bytes: u64) -> Result<(wgpu::Buffer, u64)> {
        let _serial = self.serial();
        self.check_health()?;
        let class = buffer_class(bytes, self.inner.info.limits.max_storage_buffer_binding_size);
        let limit = self.inner.info.limits.max_buffer_size;
        if class > limit {
            return Err(Error::TooLarge { op, shape: vec![], bytes, limit });
        }
        let reused = {
            let mut pool = lock(&self.inner.pool);
            let buf = pool.free.get_mut(&class).and_then(|set| set.pop_first());
            if buf.is_some() {
                pool.stats.pool_bytes -= class;
            }
            buf
        };
        let buffer = match reused {
            Some(b) => b,
            None => {
                self.inner.buffers_created.fetch_add(1, Ordering::Relaxed);
                let (b, err) = scoped(&self.inner.device, wgpu::ErrorFilter::OutOfMemory, || {
                    self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some(op),
                        size: class,
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_SRC
                            | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                });
                if err.is_some() {
                    return Err(Error::OutOfMemory { op, bytes: class });
                }
                b
            }
        };
        let mut pool = lock(&self.inner.pool);
        pool.stats.live_bytes += class;
        pool.stats.peak_live_bytes = pool.stats.peak_live_bytes.max(pool.stats.live_bytes);
        Ok((buffer, class))
    }

    /// Returns a tensor's buffer to the pool.
    pub(crate) fn release(&self, buffer: wgpu::Buffer, class: u64) {
        let mut pool = lock(&self.inner.pool);
        pool.stats.live_bytes -= class;
        pool.stats.pool_bytes += class;
        pool.free.entry(class).or_default().insert(buffer);
    }

    /// Uploads bytes into `buffer` at `offset`, after the dispatches recorded so far.
    pub(crate) fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) -> Result<()> {
        let _serial = self.serial();
        self.check_health()?;
        let mut padded;
        let data = if bytes.len().is_multiple_of(4) {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            &padded
        };
        // queue.write_buffer lands before the next submission's commands, and the pending
        // encoder may still read this pooled buffer as an older tensor: submit it first.
        // Both under the lock, so no other thread's submission slips in between.
        let mut pending = lock(&self.inner.pending);
        self.submit_locked(&mut pending);
        self.inner.queue.write_buffer(buffer, offset, data);
        Ok(())
    }

    /// Records work into the pending encoder; submits when enough has accumulated.
    pub(crate) fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        let _serial = self.serial();
        self.check_health()?;
        {
            let mut pending = lock(&self.inner.pending);
            let t0 = Instant::now();
            let encoder = pending.encoder.get_or_insert_with(|| {
                self.inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgkernels") })
            });
            f(encoder);
            self.inner.record_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            pending.dispatches += 1;
            if pending.dispatches >= pending.submit_at {
                self.submit_locked(&mut pending);
                pending.submit_at = (2 * pending.submit_at).min(MAX_PENDING_DISPATCHES);
            }
        };
        self.inner.dispatches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Queues `kernel` for the background compiler (tiered JIT) unless it is queued or
    /// compiling already. False when an earlier background compile of it failed, or the
    /// worker could not be started: the caller then compiles it in the foreground, which
    /// reports the error.
    pub(crate) fn compile_in_background(&self, kernel: &Kernel) -> bool {
        if lock(&self.inner.jit_failed).contains(kernel) {
            return false;
        }
        let mut pending = lock(&self.inner.jit_pending);
        if pending.contains(kernel) {
            return true;
        }
        let mut queue = lock(&self.inner.jit_queue);
        if queue.is_none() {
            *queue = self.start_jit_worker();
        }
        // A send fails only when the worker has gone; the kernel then stays quick-only.
        let sent = queue.as_ref().is_some_and(|q| q.send(kernel.clone()).is_ok());
        if sent {
            pending.insert(kernel.clone());
        }
        sent
    }

    /// The background compiler: one thread, so that a burst of new structures (a training
    /// loop's first step) queues its full kernels instead of starting a thread each. It
    /// holds the device only while compiling (a weak reference otherwise), and ends when
    /// the last handle is dropped (the channel closes) or the process exits (see
    /// [`end_jit_workers_at_exit`]).
    fn start_jit_worker(&self) -> Option<std::sync::mpsc::Sender<Kernel>> {
        let (send, receive) = std::sync::mpsc::channel::<Kernel>();
        let weak = Arc::downgrade(&self.inner);
        let hold = self.inner.jit_hold.clone();
        #[cfg(not(target_arch = "wasm32"))]
        {
            static AT_EXIT: std::sync::Once = std::sync::Once::new();
            // SAFETY: registers a plain `extern "C" fn` that only locks and waits.
            AT_EXIT.call_once(|| unsafe {
                libc::atexit(end_jit_workers_at_exit);
            });
        }
        let worker = move || {
            use std::sync::mpsc::RecvTimeoutError;
            loop {
                let kernel = match receive.recv_timeout(JIT_WORKER_POLL) {
                    Ok(kernel) => kernel,
                    Err(RecvTimeoutError::Timeout) if !lock(&JIT_WORKERS).exiting => continue,
                    Err(_) => break,
                };
                // Take the device up only while no user is dropping its last handle and the
                // process is not exiting (see `Drop for Gpu`).
                let inner = {
                    let mut state = lock(&hold.state);
                    let inner = if state.closing || lock(&JIT_WORKERS).exiting { None } else { weak.upgrade() };
                    state.held = inner.is_some();
                    inner
                };
                let Some(inner) = inner else { break };
                // A handle that is not dropped as a user's (`Drop for Gpu` would wait on
                // this very thread): the Arc is released below, under the lock.
                let gpu = std::mem::ManuallyDrop::new(Gpu { inner });
                if gpu.pipeline(&kernel).is_err() {
                    lock(&gpu.inner.jit_failed).insert(kernel.clone());
                }
                lock(&gpu.inner.jit_pending).remove(&kernel);
                gpu.inner.jit_done.notify_all();
                let mut state = lock(&hold.state);
                // SAFETY: `gpu` is never used or dropped after this read of its only field.
                drop(unsafe { std::ptr::read(&gpu.inner) });
                state.held = false;
                hold.released.notify_all();
            }
            lock(&JIT_WORKERS).alive -= 1;
            JIT_WORKER_ENDED.notify_all();
        };
        lock(&JIT_WORKERS).alive += 1;
        let spawned = std::thread::Builder::new().name("wgkernels-jit".into()).spawn(worker);
        if spawned.is_err() {
            lock(&JIT_WORKERS).alive -= 1;
        }
        spawned.ok().map(|_| send)
    }

    /// Whether new fused structures start with a quick kernel while the full one compiles
    /// in the background ([`GpuOptions::tiered_jit`], resolved for this adapter).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// println!("tiered JIT: {}", gpu.tiered_jit());
    /// # Ok(()) }
    /// ```
    pub fn tiered_jit(&self) -> bool {
        self.inner.tiered_jit
    }

    /// Waits for the fused kernels that the tiered JIT is compiling in the background
    /// ([`GpuOptions::tiered_jit`]), so that the next realisation of their chains runs the
    /// full kernels (benchmarks call this before timing).
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[1 << 20], DType::F32, 0)?;
    /// x.exp()?.add(&x)?.realize()?; // a new structure: the quick kernel, the full one compiling
    /// gpu.finish_compiles();
    /// x.exp()?.add(&x)?.realize()?; // the full kernel
    /// # Ok(()) }
    /// ```
    pub fn finish_compiles(&self) {
        let mut pending = lock(&self.inner.jit_pending);
        while !pending.is_empty() {
            pending = self.inner.jit_done.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Submits all recorded work (does not wait for it).
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let y = x.exp()?.realize()?.clone();
    /// gpu.flush()?; // submitted, not waited for
    /// # Ok(()) }
    /// ```
    pub fn flush(&self) -> Result<()> {
        let _serial = self.serial();
        self.submit_locked(&mut lock(&self.inner.pending));
        self.check_health()
    }

    /// Counts a wait of the host for the GPU, after which the GPU is idle: the next work is
    /// submitted in a small first batch (`GpuOptions::first_submit`).
    fn host_waits(&self) {
        self.inner.host_waits.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.pending).submit_at = self.inner.first_submit;
    }

    /// Submits the pending encoder. The caller holds the lock through the submit, so that
    /// submissions (and uploads ordered against them) happen in the order work was recorded.
    fn submit_locked(&self, pending: &mut Pending) {
        pending.dispatches = 0;
        if let Some(encoder) = pending.encoder.take() {
            let t0 = Instant::now();
            self.inner.queue.submit(Some(encoder.finish()));
            self.inner.submit_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.inner.submits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Submits all recorded work and blocks until the GPU has finished it.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let y = x.exp()?.realize()?.clone();
    /// gpu.synchronize()?;                 // the GPU has finished
    /// # Ok(()) }
    /// ```
    ///
    /// In the browser, which cannot wait, an `Unsupported` error: await
    /// [`Gpu::synchronize_async`] there.
    pub fn synchronize(&self) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        return Err(cannot_block("synchronize", "Gpu::synchronize_async"));
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _serial = self.serial();
            self.flush()?;
            self.host_waits();
            self.inner
                .device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Backend { op: "synchronize", msg: e.to_string() })?;
            self.check_health()
        }
    }

    /// Submits all recorded work and resolves when the GPU has finished it: the browser's
    /// [`Gpu::synchronize`] (native code blocks inside, as `synchronize` does).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// x.exp()?.realize()?;
    /// pollster::block_on(gpu.synchronize_async())?; // in the browser: .await
    /// # Ok(()) }
    /// ```
    pub async fn synchronize_async(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        return self.synchronize();
        #[cfg(target_arch = "wasm32")]
        {
            self.flush()?;
            let (tx, rx) = futures_channel::oneshot::channel();
            self.inner.queue.on_submitted_work_done(move || {
                let _ = tx.send(());
            });
            rx.await.map_err(|_| Error::DeviceLost("the queue's done callback never ran".into()))?;
            self.check_health()
        }
    }

    /// Copies `bytes` bytes at `offset` of `buffer` back to the host, waiting for the GPU.
    /// In the browser, which cannot wait, an `Unsupported` error: see [`Gpu::read_async`].
    pub(crate) fn read(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _serial = self.serial();
            pollster::block_on(self.read_mapped(buffer, offset, bytes))
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = (buffer, offset, bytes);
            Err(cannot_block("read", "Tensor::to_vec_async"))
        }
    }

    /// Starts copying several byte ranges `(buffer, offset, bytes)` back to the host after
    /// the work recorded so far: one submit and one map for all (a gradient bucket's
    /// tensors), requested without waiting, so that reads from several devices run at once;
    /// [`ReadInFlight::finish`] waits for this one. Offsets are 4-byte aligned, as every
    /// tensor's storage starts. The browser cannot wait for it: `Unsupported` there.
    pub(crate) fn start_read_many(&self, parts: &[(&wgpu::Buffer, u64, u64)]) -> Result<ReadInFlight> {
        #[cfg(target_arch = "wasm32")]
        {
            let _ = parts;
            Err(cannot_block("read", "Tensor::to_vec_async"))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _serial = self.serial();
            self.begin_read(parts)
        }
    }

    /// Records the copies of `parts` into one staging buffer, submits, and requests its map.
    fn begin_read(&self, parts: &[(&wgpu::Buffer, u64, u64)]) -> Result<ReadInFlight> {
        let mut ranges = Vec::with_capacity(parts.len());
        let mut total = 0u64;
        for &(_, _, bytes) in parts {
            ranges.push((total, bytes));
            total += bytes.next_multiple_of(4);
        }
        let staging = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.record(|enc| {
            for (&(buffer, offset, bytes), &(to, _)) in parts.iter().zip(&ranges) {
                if bytes > 0 {
                    enc.copy_buffer_to_buffer(buffer, offset, &staging, to, bytes.next_multiple_of(4));
                }
            }
        })?;
        self.flush()?;
        Ok(self.map_staging(staging, ranges))
    }

    /// Requests the map of `staging` (MAP_READ, its copies submitted), whose parts lie at
    /// `ranges` (offset, bytes).
    fn map_staging(&self, staging: wgpu::Buffer, ranges: Vec<(u64, u64)>) -> ReadInFlight {
        let (tx, mapped) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        ReadInFlight { gpu: self.clone(), staging, ranges, mapped }
    }

    /// [`Gpu::read`] as a future, for the browser (native code gets the blocking read).
    pub(crate) async fn read_async(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        #[cfg(not(target_arch = "wasm32"))]
        return self.read(buffer, offset, bytes);
        #[cfg(target_arch = "wasm32")]
        self.read_mapped(buffer, offset, bytes).await
    }

    /// Copies the bytes into a staging buffer after the work recorded so far, submits, and
    /// waits for its map.
    async fn read_mapped(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let mut parts = self.begin_read(&[(buffer, offset, bytes)])?.bytes().await?;
        Ok(parts.pop().unwrap_or_default())
    }

    /// Times `f` (which records GPU work) in wall-clock milliseconds, including a final sync.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[512, 512], DType::F32, 0)?;
    /// let (_, ms) = gpu.time_wall(|| x.matmul(&x)?.realize().map(drop))?;
    /// # Ok(()) }
    /// ```
    pub fn time_wall<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        self.synchronize()?;
        let t0 = Instant::now();
        let out = f()?;
        self.synchronize()?;
        Ok((out, t0.elapsed().as_secs_f64() * 1e3))
    }
}

/// A read-back in flight: its copies submitted, its staging buffer's map requested.
pub(crate) struct ReadInFlight {
    gpu: Gpu,
    staging: wgpu::Buffer,
    /// (offset in `staging`, bytes) of each part.
    ranges: Vec<(u64, u64)>,
    mapped: futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

impl ReadInFlight {
    /// Waits for the copies and returns each part's bytes (native code blocks; see
    /// [`ReadInFlight::bytes`]).
    pub(crate) fn finish(self) -> Result<Vec<Vec<u8>>> {
        #[cfg(target_arch = "wasm32")]
        {
            Err(cannot_block("read", "Tensor::to_vec_async"))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let gpu = self.gpu.clone();
            let _serial = gpu.serial();
            pollster::block_on(self.bytes())
        }
    }

    /// Each part's bytes once the map is done. Native code blocks in `poll` until it is; in
    /// the browser the future yields to the event loop until the map's promise resolves.
    async fn bytes(self) -> Result<Vec<Vec<u8>>> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.gpu.host_waits();
            self.gpu
                .inner
                .device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Backend { op: "read", msg: e.to_string() })?;
        }
        match self.mapped.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Backend { op: "read", msg: e.to_string() }),
            Err(_) => return Err(Error::DeviceLost("map callback never ran".into())),
        }
        self.gpu.check_health()?;
        let out = {
            let view =
                self.staging.get_mapped_range(..).map_err(|e| Error::Backend { op: "read", msg: e.to_string() })?;
            self.ranges.iter().map(|&(at, bytes)| view[at as usize..(at + bytes) as usize].to_vec()).collect()
        };
        self.staging.unmap();
        Ok(out)
    }
}

/// The pool's buffer size for a tensor of `bytes`: its size class, at least 16 bytes
/// (kernels that read vec4 units bind every buffer as whole vec4s). Kernels bind whole
/// buffers, so a class rounded past the storage-binding limit (a 1.8 GiB tensor in a 2 GiB
/// buffer, against 2 GiB − 4 bytes on the H200) would be refused at bind time: such a
/// tensor gets a buffer of its own size instead.
pub(crate) fn buffer_class(bytes: u64, binding_limit: u64) -> u64 {
    let class = size_class(bytes.max(16));
    if class > binding_limit && bytes <= binding_limit {
        bytes.max(16).next_multiple_of(16).min(binding_limit / 4 * 4)
    } else {
        class
    }
}

/// Size classes: powers of two below 64 KiB, then four classes per power of two
/// (at most 25 % over-allocation), so that buffers of similar tensors are reused.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.next_multiple_of(4);
    if bytes <= 65536 {
        return bytes.next_power_of_two();
    }
    let pow = 63 - (bytes - 1).leading_zeros(); // 2^pow < bytes <= 2^(pow+1)
    let step = 1u64 << (pow - 2);
    bytes.next_multiple_of(step)
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The probe of the adapter's f32 → f16 rounding (see [`Gpu::native_f16`]).
pub const F16_PROBE: ShaderSource =
    ShaderSource { name: "f16_probe", source: include_str!("f16_probe.wgsl"), shared: "" };

/// The rounding probe's kernel.
pub(crate) fn f16_probe_kernel() -> Kernel {
    Kernel::new(&F16_PROBE, "f16_probe")
}

/// Inputs of the f16 rounding probe, an even number of f32 values: for each exponent from
/// 2^-27 (below f16's subnormals) to 2^17 (past its largest finite value), both signs, the
/// mantissas whose dropped bits are just below, at and just above a tie, with an even and
/// an odd kept part, for the 13 bits dropped by normals and the more dropped by subnormals;
/// then the overflow edge, infinities, a NaN and random bit patterns.
fn f16_probe_inputs() -> Vec<f32> {
    let mut bits: Vec<u32> = vec![0x477f_e000, 0x477f_efff, 0x477f_f000, 0x477f_f001, 0x7f80_0000, 0x7fc0_0000, 0, 1];
    for e in 100u32..145 {
        for kept in [0u32, 1, 2, 3, 0x155, 0x3ff] {
            for shift in [13u32, 14, 16, 19, 23] {
                let tie = 1u32 << (shift - 1);
                for low in [tie - 1, tie, tie + 1, 1, (tie << 1) - 1] {
                    let m = ((kept << shift) | low) & 0x7f_ffff;
                    bits.push((e << 23) | m);
                    bits.push(0x8000_0000 | (e << 23) | m);
                }
            }
        }
    }
    let mut state = 0x9e37_79b9u32;
    for _ in 0..2048 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bits.push(state);
    }
    if bits.len() % 2 == 1 {
        bits.push(0);
    }
    bits.into_iter().map(f32::from_bits).collect()
}

#[cfg(test)]
mod tests {
    use super::{buffer_class, size_class};

    #[test]
    fn buffers_near_the_binding_limit_are_not_rounded_past_it() {
        let limit = (2u64 << 30) - 4; // the H200's max_storage_buffer_binding_size
        for bytes in [1u64, 17, 1 << 20, (1800u64 << 20), limit - 12, limit] {
            let c = buffer_class(bytes, limit);
            assert!(c >= bytes && c >= 16 && c <= limit.max(16), "{bytes} -> {c}");
        }
        // Past the limit the class is kept (the op reports TooLarge before binding).
        assert_eq!(buffer_class(3 << 30, limit), size_class(3 << 30));
        assert_eq!(buffer_class(100, limit), 128);
    }

    #[test]
    fn size_classes_cover_and_waste_little() {
        for bytes in [1u64, 4, 5, 100, 65536, 65537, 100_000, 1 << 20, (1 << 20) + 1, 3 << 30] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(c.is_multiple_of(4));
            if bytes > 65536 {
                assert!((c as f64) <= bytes as f64 * 1.25 + 4.0, "{bytes} -> {c}");
            }
        }
    }
}
