//! Per-kernel GPU timing: timestamp queries around each dispatch where the adapter has
//! `TIMESTAMP_QUERY`, wall-clock time (each dispatch submitted and waited for) otherwise.
//!
//! ```no_run
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = wgkernels::Gpu::new()?;
//! let x = wgkernels::Tensor::randn(&gpu, &[1024, 1024], wgkernels::DType::F32, 0)?;
//! let profiler = wgkernels::Profiler::start(&gpu)?;
//! let y = x.add(&x)?;
//! let report = profiler.finish()?;
//! println!("{report}");
//! # Ok(()) }
//! ```

use super::Instant;

use super::{lock, Gpu, Kernel};
use crate::error::{Error, Result};

/// Timestamp pairs per query set (wgpu allows 4096 queries in one set): a profile adds
/// sets as dispatches come, so that a whole decode loop (GPT-2 small: ~7300 dispatches for
/// 64 tokens) is timed.
const DISPATCHES_PER_SET: u32 = 2048;
/// Timestamp pairs a profile can hold (128 sets, 4 MiB of timestamps); dispatches beyond
/// it are counted but not timed.
const MAX_TIMED_DISPATCHES: u32 = 128 * DISPATCHES_PER_SET;

pub(crate) struct ProfilerState {
    /// `Some` when the device has timestamp queries: the sets so far, each holding
    /// `DISPATCHES_PER_SET` pairs.
    queries: Option<Vec<wgpu::QuerySet>>,
    /// Kernel label and workgroup grid of each timed dispatch, in order.
    labels: Vec<(String, [u32; 3])>,
    /// Wall-clock fallback: milliseconds per dispatch.
    wall_ms: Vec<f64>,
    wall_start: Option<Instant>,
    untimed: usize,
}

/// One timed dispatch.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let p = wgkernels::Profiler::start(&gpu)?;
/// x.exp()?.realize()?;
/// for k in &p.finish()?.kernels { println!("{} {:.3} ms", k.name, k.ms); }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// `family:entry` of the kernel.
    pub name: String,
    /// GPU time in milliseconds (or wall time when `Report::timestamps` is false).
    pub ms: f64,
    /// The dispatch's workgroup grid `[x, y, z]`: tells apart the shapes one kernel ran
    /// at (a matmul's grid is its output tiles).
    pub grid: [u32; 3],
}

/// The result of a profile: every dispatch, in order.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let p = wgkernels::Profiler::start(&gpu)?;
/// x.matmul(&x.transpose(0, 1)?)?.realize()?;
/// let r: wgkernels::Report = p.finish()?;
/// println!("{r}\ntotal {:.3} ms", r.total_ms());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Report {
    /// Each timed dispatch.
    pub kernels: Vec<KernelTime>,
    /// True when the times come from GPU timestamps, false when from wall clock.
    pub timestamps: bool,
    /// Dispatches that were not timed because the profile was full.
    pub untimed: usize,
}

impl Report {
    /// Total milliseconds over all dispatches.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let p = wgkernels::Profiler::start(&gpu)?;
    /// x.exp()?.realize()?;
    /// println!("{:.3} ms", p.finish()?.total_ms());
    /// # Ok(()) }
    /// ```
    pub fn total_ms(&self) -> f64 {
        self.kernels.iter().map(|k| k.ms).sum()
    }

    /// (name, count, total ms) per kernel name, in order of first appearance.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let p = wgkernels::Profiler::start(&gpu)?;
    /// x.exp()?.add(&x)?.realize()?;
    /// for (label, count, ms) in p.finish()?.by_kernel() { println!("{label} ×{count}: {ms:.3} ms"); }
    /// # Ok(()) }
    /// ```
    pub fn by_kernel(&self) -> Vec<(String, usize, f64)> {
        self.grouped(|k| k.name.clone())
    }

    /// ((name, grid), count, total ms) per kernel name and workgroup grid, in order of
    /// first appearance: one kernel's time split by the shapes it ran at.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let (a, b) = (Tensor::randn(&gpu, &[64, 64], DType::F32, 0)?, Tensor::randn(&gpu, &[64, 8], DType::F32, 1)?);
    /// let p = wgkernels::Profiler::start(&gpu)?;
    /// a.matmul(&a)?.realize()?;
    /// a.matmul(&b)?.realize()?;
    /// for ((label, grid), count, ms) in p.finish()?.by_kernel_and_grid() {
    ///     println!("{label} {grid:?} ×{count}: {ms:.3} ms");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn by_kernel_and_grid(&self) -> Vec<((String, [u32; 3]), usize, f64)> {
        self.grouped(|k| (k.name.clone(), k.grid))
    }

    /// (key, count, total ms) per distinct `key` of the dispatches, in order of first
    /// appearance.
    fn grouped<K: PartialEq>(&self, key: impl Fn(&KernelTime) -> K) -> Vec<(K, usize, f64)> {
        let mut out: Vec<(K, usize, f64)> = Vec::new();
        for k in &self.kernels {
            let key = key(k);
            match out.iter_mut().find(|(n, _, _)| *n == key) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += k.ms;
                }
                None => out.push((key, 1, k.ms)),
            }
        }
        out
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = if self.timestamps { "GPU timestamps" } else { "wall clock" };
        writeln!(f, "{:<32} {:>6} {:>12}   ({source})", "kernel", "count", "ms")?;
        for (name, count, ms) in self.by_kernel() {
            writeln!(f, "{name:<32} {count:>6} {ms:>12.4}")?;
        }
        write!(f, "{:<32} {:>6} {:>12.4}", "total", self.kernels.len(), self.total_ms())
    }
}

/// An active profile on one `Gpu`. Only one can be active per device.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let p = wgkernels::Profiler::start(&gpu)?;
/// x.softmax(-1)?.realize()?;
/// println!("{}", p.finish()?);
/// # Ok(()) }
/// ```
pub struct Profiler {
    gpu: Gpu,
}

impl Profiler {
    /// Starts timing every dispatch on `gpu` until [`Profiler::finish`].
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let p = wgkernels::Profiler::start(&gpu)?; // one active profile per Gpu
    /// let report = p.finish()?;
    /// # Ok(()) }
    /// ```
    pub fn start(gpu: &Gpu) -> Result<Self> {
        // On GL, device calls serialise on this lock, taken before the profiler's (the order
        // every dispatch takes them in).
        let _serial = gpu.serial();
        gpu.synchronize()?;
        let mut slot = lock(&gpu.inner.profiler);
        if slot.is_some() {
            return Err(Error::InvalidArgument {
                op: "Profiler::start",
                msg: "a profile is already active on this Gpu".into(),
            });
        }
        let queries = gpu.has(wgpu::Features::TIMESTAMP_QUERY).then(Vec::new);
        *slot = Some(ProfilerState { queries, labels: Vec::new(), wall_ms: Vec::new(), wall_start: None, untimed: 0 });
        Ok(Self { gpu: gpu.clone() })
    }

    /// Waits for the profiled work and returns the per-dispatch times.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let p = wgkernels::Profiler::start(&gpu)?;
    /// x.exp()?.realize()?;
    /// let report = p.finish()?; // waits for the GPU
    /// # Ok(()) }
    /// ```
    pub fn finish(self) -> Result<Report> {
        let _serial = self.gpu.serial();
        self.gpu.synchronize()?;
        let state = lock(&self.gpu.inner.profiler).take().expect("profile state is present while a Profiler lives");
        let Some(queries) = state.queries else {
            let kernels = state
                .labels
                .into_iter()
                .zip(state.wall_ms)
                .map(|((name, grid), ms)| KernelTime { name, ms, grid })
                .collect();
            return Ok(Report { kernels, timestamps: false, untimed: state.untimed });
        };
        let n = state.labels.len() as u32;
        if n == 0 {
            return Ok(Report { kernels: Vec::new(), timestamps: true, untimed: state.untimed });
        }
        let bytes = 2 * n as u64 * 8;
        let resolve = self.gpu.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        // Set k's used pairs go to the buffer after the previous sets' (offsets are
        // multiples of 2·2048·8 bytes: QUERY_RESOLVE_BUFFER_ALIGNMENT, 256, divides them).
        self.gpu.record(|enc| {
            for (k, set) in queries.iter().enumerate() {
                let first = k as u32 * DISPATCHES_PER_SET;
                let used = (n - first).min(DISPATCHES_PER_SET);
                enc.resolve_query_set(set, 0..2 * used, &resolve, 2 * first as u64 * 8);
            }
        })?;
        let raw = self.gpu.read(&resolve, 0, bytes)?;
        let ticks: &[u64] = bytemuck::cast_slice(&raw);
        let period_ns = self.gpu.inner.queue.get_timestamp_period() as f64;
        let kernels = state
            .labels
            .into_iter()
            .enumerate()
            .map(|(i, (name, grid))| KernelTime {
                name,
                ms: ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period_ns * 1e-6,
                grid,
            })
            .collect();
        Ok(Report { kernels, timestamps: true, untimed: state.untimed })
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        // A profile dropped without `finish` (e.g. on an early `?`) must not block the next one.
        lock(&self.gpu.inner.profiler).take();
    }
}

impl Gpu {
    /// While profiling with timestamps: the query set and the first of the two query
    /// indices for the next dispatch. In wall-clock mode, syncs and starts the clock.
    pub(crate) fn profiler_slot(&self, kernel: &Kernel, grid: [u32; 3]) -> Result<Option<(wgpu::QuerySet, u32)>> {
        let mut slot = lock(&self.inner.profiler);
        let Some(state) = slot.as_mut() else { return Ok(None) };
        match &mut state.queries {
            Some(sets) => {
                let i = state.labels.len() as u32;
                if i >= MAX_TIMED_DISPATCHES {
                    state.untimed += 1;
                    return Ok(None);
                }
                let k = (i / DISPATCHES_PER_SET) as usize;
                if k == sets.len() {
                    sets.push(self.inner.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("profiler"),
                        ty: wgpu::QueryType::Timestamp,
                        count: 2 * DISPATCHES_PER_SET,
                    }));
                }
                state.labels.push((kernel.label(), grid));
                Ok(Some((sets[k].clone(), 2 * (i % DISPATCHES_PER_SET))))
            }
            None => {
                drop(slot);
                // Wall clock: everything before this dispatch must be finished first.
                self.synchronize()?;
                if let Some(state) = lock(&self.inner.profiler).as_mut() {
                    state.wall_start = Some(Instant::now());
                }
                Ok(None)
            }
        }
    }

    /// In wall-clock mode, waits for the dispatch just recorded and stores its time.
    pub(crate) fn profiler_after_dispatch(&self, kernel: &Kernel, grid: [u32; 3]) -> Result<()> {
        let wall = matches!(lock(&self.inner.profiler).as_ref(), Some(s) if s.queries.is_none());
        if !wall {
            return Ok(());
        }
        self.synchronize()?;
        if let Some(state) = lock(&self.inner.profiler).as_mut() {
            if let Some(t0) = state.wall_start.take() {
                state.labels.push((kernel.label(), grid));
                state.wall_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(())
    }
}
