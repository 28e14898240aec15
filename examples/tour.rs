//! The main job: what this machine's GPU is, and every kernel family the library has, run
//! once on real-sized data, checked against the CPU on a sample, timed, in one table.
//!
//!     cargo run --release --example tour            # sizes picked for the device
//!     cargo run --release --example tour -- --large # full sizes even on a software device

use std::time::Instant;

use wgkernels::bench::measure;
use wgkernels::{DType, Gpu, Tensor};

struct Row {
    kernel: String,
    shape: String,
    dtype: DType,
    ms: f64,
    rate: String,
    path: String,
    check: String,
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

fn main() -> wgkernels::Result<()> {
    let t0 = Instant::now();
    let gpu = Gpu::new()?;
    println!("{}\n", gpu.info());
    let software = gpu.info().device_type == wgpu::DeviceType::Cpu;
    let large = std::env::args().any(|a| a == "--large");
    // 64 M elements (256 MB in f32) outgrows any cache; a software device gets 1 M.
    let n: usize = if software && !large { 1 << 20 } else { 64 << 20 };
    let reps = if software && !large { 5 } else { 20 };
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = Vec::new();
    let mut not_used: Vec<String> = Vec::new();
    let timing_src = if gpu.has(wgpu::Features::TIMESTAMP_QUERY) { "GPU timestamps" } else { "wall clock" };

    for dtype in DType::ALL {
        let esize = dtype.size_in_bytes() as f64;
        let x = Tensor::randn(&gpu, &[n], dtype, 1)?;
        let y = Tensor::randn(&gpu, &[n], dtype, 2)?;
        let xs = x.to_vec_f32()?;
        let ys = y.to_vec_f32()?;

        // add: read 2, write 1.
        let z = x.add(&y)?;
        let (ok, msg) = check(&z.to_vec_f32()?, |i| xs[i] as f64 + ys[i] as f64, dtype, 4096);
        let t = measure(&gpu, 2, reps, || x.add(&y).and_then(|t| t.realize().map(drop)))?;
        if !ok {
            failed.push(format!("add {dtype:?}"));
        }
        rows.push(Row {
            kernel: "add".into(),
            shape: format!("[{n}]"),
            dtype,
            ms: t.median_ms,
            rate: format!("{:.1} GB/s", t.rate(3.0 * n as f64 * esize)),
            path: "element-wise".into(),
            check: msg,
        });

        // broadcast add of a row vector over a [rows, 1024] matrix, through a transposed view.
        let cols = 1024;
        let m = x.reshape(&[n / cols, cols])?;
        let bias = Tensor::randn(&gpu, &[cols], dtype, 3)?;
        let bs = bias.to_vec_f32()?;
        let z = m.add(&bias)?;
        let (ok, msg) = check(&z.to_vec_f32()?, |i| xs[i] as f64 + bs[i % cols] as f64, dtype, 4096);
        let t = measure(&gpu, 2, reps, || m.add(&bias).and_then(|t| t.realize().map(drop)))?;
        if !ok {
            failed.push(format!("bias add {dtype:?}"));
        }
        rows.push(Row {
            kernel: "bias add (broadcast)".into(),
            shape: format!("[{}, {cols}]", n / cols),
            dtype,
            ms: t.median_ms,
            rate: format!("{:.1} GB/s", t.rate(2.0 * n as f64 * esize)),
            path: "element-wise".into(),
            check: msg,
        });

        // transpose materialised: a strided read.
        let tr = m.transpose(0, 1)?;
        let c = tr.contiguous()?;
        let rows_m = n / cols;
        let (ok, msg) = check(&c.to_vec_f32()?, |i| xs[(i % rows_m) * cols + i / rows_m] as f64, dtype, 4096);
        let t = measure(&gpu, 2, reps, || tr.contiguous().and_then(|t| t.realize().map(drop)))?;
        if !ok {
            failed.push(format!("transpose {dtype:?}"));
        }
        rows.push(Row {
            kernel: "transpose copy".into(),
            shape: format!("[{rows_m}, {cols}]ᵀ"),
            dtype,
            ms: t.median_ms,
            rate: format!("{:.1} GB/s", t.rate(2.0 * n as f64 * esize)),
            path: "strided".into(),
            check: msg,
        });

        // row sum.
        let s = m.sum(-1)?;
        let sv = s.to_vec_f32()?;
        let (ok, msg) = check(&sv, |r| (0..cols).map(|j| xs[r * cols + j] as f64).sum(), dtype, 256);
        let t = measure(&gpu, 2, reps, || m.sum(-1).and_then(|t| t.realize().map(drop)))?;
        if !ok {
            failed.push(format!("sum {dtype:?}"));
        }
        let path = if dtype == DType::F32 { "workgroup tree" } else { "workgroup tree + cast" };
        rows.push(Row {
            kernel: "row sum".into(),
            shape: format!("[{rows_m}, {cols}]"),
            dtype,
            ms: t.median_ms,
            rate: format!("{:.1} GB/s", t.rate(n as f64 * esize)),
            path: path.into(),
            check: msg,
        });

        // cast to the next dtype.
        let to = match dtype {
            DType::F32 => DType::F16,
            DType::F16 => DType::BF16,
            DType::BF16 => DType::F32,
        };
        let c = x.to_dtype(to)?;
        let (ok, msg) = check(&c.to_vec_f32()?, |i| xs[i] as f64, to, 4096);
        let t = measure(&gpu, 2, reps, || x.to_dtype(to).and_then(|t| t.realize().map(drop)))?;
        if !ok {
            failed.push(format!("cast {dtype:?}->{to:?}"));
        }
        rows.push(Row {
            kernel: format!("cast to {}", to.name()),
            shape: format!("[{n}]"),
            dtype,
            ms: t.median_ms,
            rate: format!("{:.1} GB/s", t.rate(n as f64 * (esize + to.size_in_bytes() as f64))),
            path: "element-wise".into(),
            check: msg,
        });
    }

    // The fusion benchmark's chain, gelu(x·a + b)·c + x: one generated kernel vs one per op.
    {
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
            let (ok, msg) = check(&chain()?.to_vec_f32()?, want, DType::F32, 4096);
            let tm = measure(&gpu, 2, reps, || chain().and_then(|t| t.realize().map(drop)))?;
            if !ok {
                failed.push(format!("chain fused={fused}"));
            }
            let path = if fused { "fusion JIT: 1 kernel" } else { "unfused: 5 kernels" };
            rows.push(Row {
                kernel: "gelu(x·a+b)·c+x".into(),
                shape: format!("[{n}]"),
                dtype: DType::F32,
                ms: tm.median_ms,
                rate: format!("{:.1} GB/s", tm.rate(5.0 * n as f64 * 4.0)),
                path: path.into(),
                check: msg,
            });
        }
        gpu.set_fusion(fusion_was);
    }

    // Matmul: the autotuned path, checked on sampled entries.
    let mm = if software && !large { 256 } else { 4096 };
    for dtype in DType::ALL {
        let a = Tensor::randn(&gpu, &[mm, mm], dtype, 11)?;
        let b = Tensor::randn(&gpu, &[mm, mm], dtype, 12)?;
        let (av, bv) = (a.to_vec_f32()?, b.to_vec_f32()?);
        let c = a.matmul(&b)?.to_vec_f32()?;
        let want = |i: usize| (0..mm).map(|k| av[(i / mm) * mm + k] as f64 * bv[k * mm + i % mm] as f64).sum::<f64>();
        let (ok, msg) = check_scaled(&c, want, dtype, 512, mm);
        let t = measure(&gpu, 2, reps, || a.matmul(&b).and_then(|t| t.realize().map(drop)))?;
        if !ok {
            failed.push(format!("matmul {dtype:?}"));
        }
        let candidates = wgkernels::ops::matmul::candidates(&gpu, dtype, mm, false);
        let path = if candidates.iter().any(|p| matches!(p, wgkernels::ops::matmul::MatmulPath::Coop(_))) {
            "tensor cores (autotuned)"
        } else {
            "register tiles (autotuned)"
        };
        rows.push(Row {
            kernel: "matmul".into(),
            shape: format!("{mm}³"),
            dtype,
            ms: t.median_ms,
            rate: format!("{:.1} GFLOP/s", t.rate(2.0 * (mm * mm * mm) as f64)),
            path: path.into(),
            check: msg,
        });
    }

    // Normalizations over rows of 1024.
    let cols = 1024;
    let nrows = n / cols;
    for dtype in DType::ALL {
        let esize = dtype.size_in_bytes() as f64;
        let x = Tensor::randn(&gpu, &[nrows, cols], dtype, 13)?;
        let xs = x.to_vec_f32()?;
        let y = x.softmax(-1)?.to_vec_f32()?;
        let want = |i: usize| {
            let row = &xs[(i / cols) * cols..(i / cols + 1) * cols];
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            (xs[i] as f64 - m).exp() / s
        };
        let (ok, msg) = check(&y, want, dtype, 512);
        let t = measure(&gpu, 2, reps, || x.softmax(-1).and_then(|t| t.realize().map(drop)))?;
        if !ok {
            failed.push(format!("softmax {dtype:?}"));
        }
        rows.push(Row {
            kernel: "softmax".into(),
            shape: format!("[{nrows}, {cols}]"),
            dtype,
            ms: t.median_ms,
            rate: format!("{:.1} GB/s", t.rate(2.0 * n as f64 * esize)),
            path: "row in registers".into(),
            check: msg,
        });
        let y = x.layer_norm(None, None, 1e-5)?.to_vec_f32()?;
        let want = |i: usize| {
            let row = &xs[(i / cols) * cols..(i / cols + 1) * cols];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            (xs[i] as f64 - mean) / (var + 1e-5).sqrt()
        };
        let (ok, msg) = check_scaled(&y, want, dtype, 512, 16);
        let t = measure(&gpu, 2, reps, || x.layer_norm(None, None, 1e-5).and_then(|t| t.realize().map(drop)))?;
        if !ok {
            failed.push(format!("layer_norm {dtype:?}"));
        }
        rows.push(Row {
            kernel: "layer_norm".into(),
            shape: format!("[{nrows}, {cols}]"),
            dtype,
            ms: t.median_ms,
            rate: format!("{:.1} GB/s", t.rate(2.0 * n as f64 * esize)),
            path: "row in registers".into(),
            check: msg,
        });
    }

    if !gpu.info().has_coop_f16_16x16x16() {
        not_used.push("tensor cores: the adapter reports no 16x16x16 f16->f32 cooperative matrix".into());
    }
    if !gpu.has(wgpu::Features::SUBGROUP) {
        not_used.push("subgroups: the adapter lacks SUBGROUP".into());
    }
    not_used.push("flash attention, fused AdamW: not in this build yet (see the issues)".into());

    println!(
        "{:<22} {:<16} {:<5} {:>10} {:>14}  {:<22} check vs CPU",
        "kernel", "shape", "dtype", "ms", "rate", "path"
    );
    for r in &rows {
        println!(
            "{:<22} {:<16} {:<5} {:>10.4} {:>14}  {:<22} {}",
            r.kernel,
            r.shape,
            r.dtype.name(),
            r.ms,
            r.rate,
            r.path,
            r.check
        );
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
    if !failed.is_empty() {
        eprintln!("FAILED checks: {}", failed.join(", "));
        std::process::exit(1);
    }
    Ok(())
}
