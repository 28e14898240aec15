//! The main job: what this machine's GPU is, and every kernel family the library has, run
//! once on real-sized data, checked against the CPU on a sample, timed, in one table.
//!
//!     cargo run --release --example tour            # sizes picked for the device
//!     cargo run --release --example tour -- --large # full sizes even on a software device

#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

use std::time::Instant;

use wgkernels::bench::measure;
use wgkernels::{DType, Gpu, Result, Tensor};

/// What a table row names: the kernel, the shape, the dtype, the path taken.
struct What {
    kernel: String,
    shape: String,
    dtype: DType,
    path: String,
}

fn what(kernel: impl Into<String>, shape: String, dtype: DType, path: &str) -> What {
    What { kernel: kernel.into(), shape, dtype, path: path.into() }
}

struct Row {
    what: What,
    ms: f64,
    rate: String,
    check: String,
}

/// The table being built, and the checks that failed.
struct Tour {
    gpu: Gpu,
    reps: usize,
    rows: Vec<Row>,
    failed: Vec<String>,
}

impl Tour {
    /// Times `op` (realising its result), with `work` bytes or FLOPs per run in `unit`, and
    /// records the row with the outcome of its CPU check.
    fn record(
        &mut self,
        what: What,
        work: f64,
        unit: &str,
        checked: (bool, String),
        mut op: impl FnMut() -> Result<Tensor>,
    ) -> Result<()> {
        let t = measure(&self.gpu, 2, self.reps, || op().and_then(|t| t.realize().map(drop)))?;
        if !checked.0 {
            self.failed.push(format!("{} {} {}", what.kernel, what.shape, what.dtype.name()));
        }
        let row = Row { what, ms: t.median_ms, rate: format!("{:.1} {unit}", t.rate(work)), check: checked.1 };
        if self.rows.is_empty() {
            println!("{HEADER}");
        }
        println!("{}", row.line());
        self.rows.push(row);
        Ok(())
    }
}

/// The table's header, printed before its first row.
const HEADER: &str = "kernel                 shape            dtype         ms             rate  path                         check vs CPU";

impl Row {
    /// The row as the table prints it, as soon as it is measured.
    fn line(&self) -> String {
        let w = &self.what;
        format!(
            "{:<22} {:<16} {:<5} {:>10.4} {:>16}  {:<28} {}",
            w.kernel,
            w.shape,
            w.dtype.name(),
            self.ms,
            self.rate,
            w.path,
            self.check
        )
    }
}

/// Worst |got − want| / (atol + rtol·|want|) over sampled indices: ≤ 1 passes.
fn check(got: &[f32], want: impl Fn(usize) -> f64, dtype: DType, samples: usize) -> (bool, String) {
    check_scaled(got, want, dtype, samples, 1)
}

/// `check` with the absolute tolerance scaled by `k` (a K-long dot product, a normalisation).
fn check_scaled(got: &[f32], want: impl Fn(usize) -> f64, dtype: DType, samples: usize, k: usize) -> (bool, String) {
    let (atol, rtol) = match dtype {
        DType::F32 => (1e-5, 1e-5),
        DType::F16 => (1e-3, 2e-3),
        DType::BF16 => (1e-2, 1e-2),
    };
    let atol = atol * k as f64;
    let step = (got.len() / samples).max(1);
    let mut worst = 0.0f64;
    for i in (0..got.len()).step_by(step) {
        let w = want(i);
        worst = worst.max((got[i] as f64 - w).abs() / (atol + rtol * w.abs()));
    }
    (worst <= 1.0, format!("ok ({:.2} of tol)", worst))
}

/// Element-wise rows per dtype: add, a broadcast bias add, a transposed copy, a row sum and
/// a cast.
fn elementwise(tour: &mut Tour, n: usize, rows_m: usize, cols: usize) -> Result<()> {
    let gpu = tour.gpu.clone();
    for dtype in DType::ALL {
        let esize = dtype.size_in_bytes() as f64;
        let x = Tensor::randn(&gpu, &[n], dtype, 1)?;
        let y = Tensor::randn(&gpu, &[n], dtype, 2)?;
        let xs = x.to_vec_f32()?;
        let ys = y.to_vec_f32()?;

        // add: read 2, write 1.
        let checked = check(&x.add(&y)?.to_vec_f32()?, |i| xs[i] as f64 + ys[i] as f64, dtype, 4096);
        tour.record(
            what("add", format!("[{n}]"), dtype, "element-wise"),
            3.0 * n as f64 * esize,
            "GB/s",
            checked,
            || x.add(&y),
        )?;

        // broadcast add of a row vector over a [rows, 1024] matrix.
        let m = x.reshape(&[rows_m, cols])?;
        let bias = Tensor::randn(&gpu, &[cols], dtype, 3)?;
        let bs = bias.to_vec_f32()?;
        let checked = check(&m.add(&bias)?.to_vec_f32()?, |i| xs[i] as f64 + bs[i % cols] as f64, dtype, 4096);
        let w = what("bias add (broadcast)", format!("[{rows_m}, {cols}]"), dtype, "element-wise");
        tour.record(w, 2.0 * n as f64 * esize, "GB/s", checked, || m.add(&bias))?;

        // transpose materialised: a strided read.
        let tr = m.transpose(0, 1)?;
        let checked =
            check(&tr.contiguous()?.to_vec_f32()?, |i| xs[(i % rows_m) * cols + i / rows_m] as f64, dtype, 4096);
        let w = what("transpose copy", format!("[{rows_m}, {cols}]ᵀ"), dtype, "32×32 tiles");
        tour.record(w, 2.0 * n as f64 * esize, "GB/s", checked, || tr.contiguous())?;

        // row sum (16-bit results are cast from the f32 sums).
        let checked =
            check(&m.sum(-1)?.to_vec_f32()?, |r| (0..cols).map(|j| xs[r * cols + j] as f64).sum(), dtype, 256);
        let reduce = if gpu.has(wgpu::Features::SUBGROUP) { "subgroup sums" } else { "workgroup tree" };
        let path = if dtype == DType::F32 { reduce.to_string() } else { format!("{reduce} + cast") };
        tour.record(
            what("row sum", format!("[{rows_m}, {cols}]"), dtype, &path),
            n as f64 * esize,
            "GB/s",
            checked,
            || m.sum(-1),
        )?;

        // cast to the next dtype.
        let to = match dtype {
            DType::F32 => DType::F16,
            DType::F16 => DType::BF16,
            DType::BF16 => DType::F32,
        };
        let checked = check(&x.to_dtype(to)?.to_vec_f32()?, |i| xs[i] as f64, to, 4096);
        let w = what(format!("cast to {}", to.name()), format!("[{n}]"), dtype, "element-wise");
        tour.record(w, n as f64 * (esize + to.size_in_bytes() as f64), "GB/s", checked, || x.to_dtype(to))?;
    }
    Ok(())
}

/// The fusion benchmark's chain, gelu(x·a + b)·c + x: one generated kernel vs one per op.
fn fusion_chain(tour: &mut Tour, n: usize) -> Result<()> {
    let gpu = tour.gpu.clone();
    let t = |seed| Tensor::randn(&gpu, &[n], DType::F32, seed);
    let (x, a, b, c) = (t(21)?, t(22)?, t(23)?, t(24)?);
    let chain = || x.mul(&a)?.add(&b)?.gelu_tanh()?.mul(&c)?.add(&x);
    let (xs, as_, bs, cs) = (x.to_vec_f32()?, a.to_vec_f32()?, b.to_vec_f32()?, c.to_vec_f32()?);
    let want = |i: usize| {
        let v = xs[i] as f64 * as_[i] as f64 + bs[i] as f64;
        let g = 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
        g * cs[i] as f64 + xs[i] as f64
    };
    let fusion_was = gpu.fusion();
    for fused in [true, false] {
        gpu.set_fusion(fused);
        let checked = check(&chain()?.to_vec_f32()?, want, DType::F32, 4096);
        let path = if fused { "fusion JIT: 1 kernel" } else { "unfused: 5 kernels" };
        tour.record(
            what("gelu(x·a+b)·c+x", format!("[{n}]"), DType::F32, path),
            5.0 * n as f64 * 4.0,
            "GB/s",
            checked,
            chain,
        )?;
    }
    gpu.set_fusion(fusion_was);
    Ok(())
}

/// Matmul: the path the library picks (autotuned, or the default below tuning size),
/// checked on sampled entries.
fn matmul(tour: &mut Tour, mm: usize) -> Result<()> {
    let gpu = tour.gpu.clone();
    for dtype in DType::ALL {
        let a = Tensor::randn(&gpu, &[mm, mm], dtype, 11)?;
        let b = Tensor::randn(&gpu, &[mm, mm], dtype, 12)?;
        let (av, bv) = (a.to_vec_f32()?, b.to_vec_f32()?);
        let want = |i: usize| (0..mm).map(|k| av[(i / mm) * mm + k] as f64 * bv[k * mm + i % mm] as f64).sum::<f64>();
        let checked = check_scaled(&a.matmul(&b)?.to_vec_f32()?, want, dtype, 512, mm);
        let candidates = wgkernels::ops::matmul::candidates(&gpu, dtype, mm, false);
        // 256³ is below the work the autotuner times (each shape class's first candidate runs).
        let how = if mm >= 1024 { "autotuned" } else { "default" };
        let path = if candidates.iter().any(|p| matches!(p, wgkernels::ops::matmul::MatmulPath::Coop(_))) {
            format!("tensor cores ({how})")
        } else {
            format!("register tiles ({how})")
        };
        let flops = 2.0 * (mm * mm * mm) as f64;
        tour.record(what("matmul", format!("{mm}³"), dtype, &path), flops, "GFLOP/s", checked, || a.matmul(&b))?;
    }
    Ok(())
}

/// Normalizations over rows of 1024: one subgroup per row where there are subgroups.
fn normalizations(tour: &mut Tour, n: usize, rows_m: usize, cols: usize) -> Result<()> {
    let gpu = tour.gpu.clone();
    let norm_path = if gpu.has(wgpu::Features::SUBGROUP) { "subgroup per row" } else { "workgroup per row" };
    for dtype in DType::ALL {
        let esize = dtype.size_in_bytes() as f64;
        let x = Tensor::randn(&gpu, &[rows_m, cols], dtype, 13)?;
        let xs = x.to_vec_f32()?;
        let want = |i: usize| {
            let row = &xs[(i / cols) * cols..(i / cols + 1) * cols];
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            (xs[i] as f64 - m).exp() / s
        };
        let checked = check(&x.softmax(-1)?.to_vec_f32()?, want, dtype, 512);
        let w = what("softmax", format!("[{rows_m}, {cols}]"), dtype, norm_path);
        tour.record(w, 2.0 * n as f64 * esize, "GB/s", checked, || x.softmax(-1))?;
        let want = |i: usize| {
            let row = &xs[(i / cols) * cols..(i / cols + 1) * cols];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            (xs[i] as f64 - mean) / (var + 1e-5).sqrt()
        };
        let checked = check_scaled(&x.layer_norm(None, None, 1e-5)?.to_vec_f32()?, want, dtype, 512, 16);
        let w = what("layer_norm", format!("[{rows_m}, {cols}]"), dtype, norm_path);
        tour.record(w, 2.0 * n as f64 * esize, "GB/s", checked, || x.layer_norm(None, None, 1e-5))?;
    }
    Ok(())
}

/// The residual add before a LayerNorm, h = x + r; y = layer_norm(h): the add runs in the
/// norm's prologue (one kernel, h stored by it) or as its own kernel (fusion off). Bytes: x
/// and r read, h and y written.
fn residual_layer_norm(tour: &mut Tour, n: usize, rows_m: usize, cols: usize) -> Result<()> {
    let gpu = tour.gpu.clone();
    let x = Tensor::randn(&gpu, &[rows_m, cols], DType::F32, 14)?;
    let r = Tensor::randn(&gpu, &[rows_m, cols], DType::F32, 15)?;
    let (xs, rs) = (x.to_vec_f32()?, r.to_vec_f32()?);
    let hs: Vec<f64> = xs.iter().zip(&rs).map(|(a, b)| (a + b) as f64).collect();
    let want = |i: usize| {
        let row = &hs[(i / cols) * cols..(i / cols + 1) * cols];
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
        (hs[i] - mean) / (var + 1e-5).sqrt()
    };
    let block = || -> wgkernels::Result<Tensor> {
        let h = x.add(&r)?;
        let y = h.layer_norm(None, None, 1e-5)?;
        h.realize()?;
        Ok(y)
    };
    let fusion_was = gpu.fusion();
    for fused in [true, false] {
        gpu.set_fusion(fused);
        let checked = check_scaled(&block()?.to_vec_f32()?, want, DType::F32, 512, 16);
        let path = if fused { "prologue: 1 kernel" } else { "unfused: 2 kernels" };
        let w = what("x + r → layer_norm", format!("[{rows_m}, {cols}]"), DType::F32, path);
        tour.record(w, 4.0 * n as f64 * 4.0, "GB/s", checked, block)?;
    }
    gpu.set_fusion(fusion_was);
    Ok(())
}

/// Flash attention, causal: B × H × S × 64, checked on sampled output rows against an f64
/// softmax(q·kᵀ/8)·v. FLOPs 4·B·H·S²·D, halved by the mask.
fn attention(tour: &mut Tour, (b, h, s, d): (usize, usize, usize, usize)) -> Result<()> {
    let gpu = tour.gpu.clone();
    use wgkernels::ops::attention::{attention, attention_path, AttentionOptions, AttentionPath};
    for dtype in [DType::F32, DType::F16] {
        let t = |seed| Tensor::randn(&gpu, &[b, h, s, d], dtype, seed);
        let (q, k, v) = (t(21)?, t(22)?, t(23)?);
        let opts = AttentionOptions { causal: true, ..Default::default() };
        let (qv, kv, vv) = (q.to_vec_f32()?, k.to_vec_f32()?, v.to_vec_f32()?);
        // Output element i = ((bh·S) + row)·D + col.
        let want = |i: usize| {
            let (bh, row, col) = (i / (s * d), (i / d) % s, i % d);
            let qrow = &qv[(bh * s + row) * d..][..d];
            let scores: Vec<f64> = (0..=row)
                .map(|j| {
                    qrow.iter().zip(&kv[(bh * s + j) * d..][..d]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / 8.0
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
            scores.iter().enumerate().map(|(j, x)| (x - m).exp() / z * vv[(bh * s + j) * d + col] as f64).sum()
        };
        let checked = check(&attention(&q, &k, &v, &opts)?.to_vec_f32()?, want, dtype, 256);
        let flops = 2.0 * (b * h * s * s * d) as f64;
        // Every dtype runs on tensor cores where the adapter allows (f32 split, bf16 scaled
        // into f16): attention_path says which kernel runs.
        let path = match attention_path(&q, &k, &v, &opts)? {
            AttentionPath::FlashCoop => "flash, tensor cores",
            AttentionPath::Naive => "naive",
            _ => "flash, FMA tiles",
        };
        let w = what("attention (causal)", format!("{b}x{h}x{s}x{d}"), dtype, path);
        tour.record(w, flops, "GFLOP/s", checked, || attention(&q, &k, &v, &opts))?;
    }
    Ok(())
}

/// One fused AdamW step over n f32 parameters: 28 bytes per parameter (read p, g, m, v;
/// write p, m, v). Checked after the first step: p·(1 − lr·wd) − lr·g/(|g| + eps).
fn adamw(tour: &mut Tour, n: usize) -> Result<()> {
    let gpu = tour.gpu.clone();
    use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
    let p0 = Tensor::randn(&gpu, &[n], DType::F32, 31)?;
    let g = Tensor::randn(&gpu, &[n], DType::F32, 32)?;
    let config = AdamWConfig::default();
    // The step writes in place: the parameter is its own tensor (same seed, same values).
    let mut params = vec![Tensor::randn(&gpu, &[n], DType::F32, 31)?];
    let mut opt = AdamW::new(&gpu, config.clone())?;
    opt.step(&mut params, std::slice::from_ref(&g))?;
    let (pv, gv) = (p0.to_vec_f32()?, g.to_vec_f32()?);
    let (lr, wd, eps) = (config.lr as f64, config.weight_decay as f64, config.eps as f64);
    let want = |i: usize| pv[i] as f64 * (1.0 - lr * wd) - lr * gv[i] as f64 / ((gv[i] as f64).abs() + eps);
    let checked = check(&params[0].to_vec_f32()?, want, DType::F32, 4096);
    let w = what("adamw step", format!("{}M params", n >> 20), DType::F32, "fused, one pass");
    tour.record(w, 28.0 * n as f64, "GB/s", checked, || {
        opt.step(&mut params, std::slice::from_ref(&g))?;
        Ok(params[0].clone())
    })?;
    Ok(())
}

fn main() -> Result<()> {
    let args = args::Args::parse("tour [--large]", &["--large"], &[], false);
    let t0 = Instant::now();
    let gpu = Gpu::new()?;
    println!("{}", gpu.info());
    // Probed once per device: whether 16-bit stores may use the adapter's f32 -> f16 rounding.
    let f16_rounding = if gpu.native_f16() { "the adapter (probed: round to nearest even)" } else { "the library" };
    println!("f16       stores rounded by {f16_rounding}\n");
    let software = gpu.info().device_type == wgpu::DeviceType::Cpu;
    let small = software && !args.has("--large");
    // 64 M elements (256 MB in f32) outgrows any cache; a software device gets 1 M.
    let n: usize = if small { 1 << 20 } else { 64 << 20 };
    let reps = if small { 5 } else { 20 };
    let mut tour = Tour { gpu: gpu.clone(), reps, rows: Vec::new(), failed: Vec::new() };
    let timing_src = if gpu.has(wgpu::Features::TIMESTAMP_QUERY) { "GPU timestamps" } else { "wall clock" };
    let cols = 1024;
    let rows_m = n / cols;

    elementwise(&mut tour, n, rows_m, cols)?;
    fusion_chain(&mut tour, n)?;
    matmul(&mut tour, if small { 256 } else { 4096 })?;
    normalizations(&mut tour, n, rows_m, cols)?;
    residual_layer_norm(&mut tour, n, rows_m, cols)?;
    attention(&mut tour, if small { (1, 4, 256, 64) } else { (4, 16, 2048, 64) })?;
    adamw(&mut tour, n)?;

    let mut not_used: Vec<String> = Vec::new();
    if !gpu.info().has_coop_f16_16x16x16() {
        not_used.push("tensor cores: the adapter reports no 16x16x16 f16->f32 cooperative matrix".into());
    }
    if !gpu.has(wgpu::Features::SUBGROUP) {
        not_used.push("subgroups: the adapter lacks SUBGROUP".into());
    }

    println!("\ntimes: median of {reps} repeats, {timing_src}; GB/s counts bytes read + written.");
    for n in &not_used {
        println!("not used: {n}");
    }
    let m = gpu.memory();
    println!(
        "memory: {:.1} MiB live, {:.1} MiB pooled, peak {:.1} MiB",
        m.live_bytes as f64 / 1048576.0,
        m.pool_bytes as f64 / 1048576.0,
        m.peak_live_bytes as f64 / 1048576.0
    );
    println!("tour finished in {:.1} s", t0.elapsed().as_secs_f64());
    if !tour.failed.is_empty() {
        eprintln!("FAILED checks: {}", tour.failed.join(", "));
        std::process::exit(1);
    }
    Ok(())
}
