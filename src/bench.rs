//! Measuring kernels: warm up, then time repeats with GPU timestamps (wall clock where the
//! adapter has none) and report the median. Used by the examples and `cargo bench`.
//!
//! ```no_run
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = wgkernels::Gpu::new()?;
//! let x = wgkernels::Tensor::randn(&gpu, &[1 << 24], wgkernels::DType::F32, 0)?;
//! let t = wgkernels::bench::measure(&gpu, 2, 10, || x.add(&x)?.realize().map(drop))?;
//! println!("{:.3} ms, {:.0} GB/s", t.median_ms, t.rate(3.0 * 4.0 * (1 << 24) as f64));
//! # Ok(()) }
//! ```

use crate::device::Gpu;
use crate::device::Profiler;
use crate::error::Result;

/// Minimum wall time of warm-up before timing.
///
/// ```
/// assert!(wgkernels::bench::WARMUP_MS >= 100.0);
/// ```
pub const WARMUP_MS: f64 = 1000.0;

/// The warm-up `gpu` measures with: `GpuOptions::measure_warmup_ms` (`WGK_WARMUP_MS`), else
/// [`WARMUP_MS`].
///
/// ```
/// let gpu = wgkernels::Gpu::new()?;
/// assert!(wgkernels::bench::warmup_ms(&gpu) >= 0.0);
/// # Ok::<(), wgkernels::Error>(())
/// ```
pub fn warmup_ms(gpu: &Gpu) -> f64 {
    gpu.measure_settings().0.unwrap_or(WARMUP_MS)
}

/// The median and spread of repeated runs of one piece of GPU work.
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let t: wgkernels::bench::Timing = wgkernels::bench::measure(&gpu, 1, 5, || x.exp()?.realize().map(drop))?;
/// println!("median {:.3} ms (min {:.3}), timestamps: {}", t.median_ms, t.min_ms, t.timestamps);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Median milliseconds per repeat.
    pub median_ms: f64,
    /// Fastest repeat, in milliseconds.
    pub min_ms: f64,
    /// True when measured with GPU timestamps, false when with the wall clock.
    pub timestamps: bool,
    /// Wall-clock milliseconds per repeat with all repeats submitted back to back and one
    /// wait at the end (launch overhead included): a cross-check on the GPU timestamps.
    pub wall_ms: f64,
}

impl Timing {
    /// `work / median_s / 1e9`: GB/s when `work` is bytes, GFLOP/s when it is FLOPs.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let t = wgkernels::bench::measure(&gpu, 1, 5, || x.exp()?.realize().map(drop))?;
    /// println!("{:.1} GB/s", t.rate(2.0 * 4.0 * 32.0));
    /// # Ok(()) }
    /// ```
    pub fn rate(&self, work: f64) -> f64 {
        work / (self.median_ms * 1e-3) / 1e9
    }
}

/// Bytes written between timed repeats so that no repeat finds its inputs left in the GPU's
/// last-level cache by the one before (the H200 has 50 MB of L2: a 4096² f32 softmax's
/// input and output nearly fit). PyTorch's figures (Triton's `do_bench`) are taken the same
/// way. 256 MiB on GPUs, none on CPU devices (their caches are the host's);
/// `GpuOptions::measure_flush_mb` (`WGK_FLUSH_MB`) overrides.
///
/// ```
/// let gpu = wgkernels::Gpu::new()?;
/// println!("{} bytes flushed between repeats", wgkernels::bench::flush_bytes(&gpu));
/// # Ok::<(), wgkernels::Error>(())
/// ```
pub fn flush_bytes(gpu: &Gpu) -> u64 {
    if let Some(mb) = gpu.measure_settings().1 {
        return mb << 20;
    }
    match gpu.info().device_type {
        wgpu::DeviceType::Cpu | wgpu::DeviceType::Other => 0,
        _ => 256 << 20,
    }
}

/// Runs `f` at least `warmup` times and for at least [`warmup_ms`] of wall time (compiling
/// pipelines, filling the pool, and letting the GPU leave its idle clocks: on the H200 the
/// same memory-bound kernels measured 2.3–3.6× slower after 200 ms of warm-up with a wait
/// after every run than after 1 s with a wait every 8 runs, in calls an hour apart —
/// BENCHMARKS.md), then `reps` times under
/// the profiler, each after a cache flush ([`flush_bytes`]). With timestamps, one repeat's
/// time is the sum of its dispatches' GPU times (launch gaps and flushes excluded); without,
/// each repeat is synchronised and timed on the host. The wall-clock cross-check runs the
/// repeats back to back without flushes.
///
/// Errors: `f`'s, and `InvalidArgument` when one repeat issues more dispatches than a
/// profile can time (262 144).
///
/// ```no_run
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let t = wgkernels::bench::measure(&gpu, 2, 10, || x.matmul(&x.transpose(0, 1)?)?.realize().map(drop))?;
/// # Ok(()) }
/// ```
pub fn measure(gpu: &Gpu, warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    let reps = reps.max(1);
    // The full kernels of new fused structures (tiered JIT) are what a loop runs: wait for
    // them before the warm-up, so that it and every timed repeat use them.
    f()?;
    gpu.finish_compiles();
    // Warm-up keeps the GPU busy (a wait every 8 runs, not after each: gaps let the clocks
    // drop), for at least `warmup_ms(gpu)`.
    let start = crate::device::Instant::now();
    let mut runs = 0;
    while runs < warmup || start.elapsed().as_secs_f64() * 1e3 < warmup_ms(gpu) {
        f()?;
        runs += 1;
        if runs % 8 == 0 {
            gpu.synchronize()?;
        }
    }
    gpu.synchronize()?;
    let mut per_rep = Vec::with_capacity(reps);
    // Between timed repeats the cache is flushed (see `flush_bytes`).
    let scratch = match flush_bytes(gpu) {
        0 => None,
        bytes => Some(crate::Tensor::zeros(gpu, &[(bytes / 4) as usize], crate::DType::F32)?),
    };
    let flush = || -> Result<()> {
        match &scratch {
            Some(t) => {
                let buffer = t.buffer()?;
                gpu.record(|enc| enc.clear_buffer(buffer, 0, None))
            }
            None => Ok(()),
        }
    };
    if gpu.has(wgpu::Features::TIMESTAMP_QUERY) {
        // One profile per repeat: a profile times a bounded number of dispatches, and a
        // model's training step issues hundreds (one profile over all repeats once summed
        // a fraction of each step: 189 of 288 ms for GPT-2 small's).
        for _ in 0..reps {
            flush()?;
            let profiler = Profiler::start(gpu)?;
            f()?;
            let report = profiler.finish()?;
            if report.untimed > 0 {
                return Err(crate::Error::InvalidArgument {
                    op: "measure",
                    msg: format!("one repeat issues more dispatches than a profile times ({} untimed)", report.untimed),
                });
            }
            per_rep.push(report.total_ms());
        }
    } else {
        for _ in 0..reps {
            flush()?;
            let ((), ms) = gpu.time_wall(&mut f)?;
            per_rep.push(ms);
        }
    }
    per_rep.sort_by(f64::total_cmp);
    let ((), wall) = gpu.time_wall(|| {
        for _ in 0..reps {
            f()?;
        }
        Ok(())
    })?;
    Ok(Timing {
        median_ms: per_rep[per_rep.len() / 2],
        min_ms: per_rep[0],
        timestamps: gpu.has(wgpu::Features::TIMESTAMP_QUERY),
        wall_ms: wall / reps as f64,
    })
}
