//! The benchmark report: every kernel family at the issue sizes, GFLOP/s or GB/s with the
//! work counted here, beside PyTorch's figure for the same work when given its JSON.
//!
//!     cargo bench --bench kernels -- [--quick] [--only NAME] [--reference torch.json] [--json out.json] [--md out.md]
//!
//! Experiment flags (extra rows, for tiling and grid studies; see [`USAGE`]): `--grads`,
//! `--chain-mib`, `--fused-grids`, `--attn-seqs`, `--no-attn-backward`, `--attn-paths`,
//! `--attn-tilings`, `--attn-flash-tilings`, `--attn-bwd-tilings`, `--gpt2-profile`.
//!
//! `--reference` takes the JSON lines that benches/torch_ref.py prints (one object per
//! measurement: bench, size, dtype, variant, rate). Run both in the same device call: the
//! machine is shared and absolute figures drift between calls.

use std::fmt::Write as _;

use wgkernels::bench::measure;
use wgkernels::ops::matmul::{candidates, MatmulOptions, MatmulPath};
use wgkernels::ops::norm::{norm_backward_with, NormGrads};
use wgkernels::{DType, Gpu, Tensor};

struct Row {
    bench: &'static str,
    size: String,
    dtype: &'static str,
    variant: String,
    ms: f64,
    rate: f64,
    /// The rate from back-to-back wall-clock time (launch overhead included).
    wall_rate: f64,
    unit: &'static str,
    /// PyTorch's (bench, size, dtype, variant) to compare with.
    torch_key: Option<(String, String, String, String)>,
}

/// `--log-tuning`: the library's autotuner lines (`wgkernels::tune`), to stderr.
struct TuningLog;

impl log::Log for TuningLog {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.target().starts_with("wgkernels::tune")
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("{}", record.args());
        }
    }

    fn flush(&self) {}
}

static TUNING_LOG: TuningLog = TuningLog;

const USAGE: &str = "usage: cargo bench --bench kernels -- [flags]
  --quick                  small sizes, 3 repetitions
  --only NAME[,NAME...]    jobs whose label contains one of the NAMEs (copy, matmul, gpt2, attention f16, ...)
  --reference FILE         PyTorch's JSON lines (benches/torch_ref.py) to compare with
  --json FILE, --md FILE   write the rows
  --grads LIST             norm backward dw/db variants besides the default: separate or rows per workgroup, comma-separated
  --chain-mib N            fused chain size in Mi elements (default 64)
  --fused-grids LIST       extra grids for the fused chain: unroll,workgroup,groups;...
  --attn-seqs LIST         attention sequence lengths (default 512,2048,8192)
  --no-attn-backward       attention forward rows only
  --attn-paths tc|flash    one attention path only
  --attn-tilings LIST      tensor-core forward tilings: all, or CoopTiling::parse items joined by ;
  --attn-flash-tilings L   FMA-unit flash tilings: all, or rows,cols;...
  --attn-bwd-tilings LIST  tensor-core backward tilings: all, or CoopBwdTiling::parse items joined by ;
  --gpt2-profile DIR       the model-level jobs (gpt2 block/forward/train/generate) write a profiled step's per-kernel table there
  --log-tuning             print the autotuner's classes, candidates' times and winners to stderr";

/// The bench's flags: what to run and where to write, and the experiment knobs.
#[derive(Clone, Default)]
struct Args {
    quick: bool,
    reference: Option<String>,
    json: Option<String>,
    md: Option<String>,
    only: Option<String>,
    grads: Option<String>,
    chain_mib: Option<usize>,
    fused_grids: Option<String>,
    attn_seqs: Option<Vec<usize>>,
    attn_backward: bool,
    attn_paths: Option<String>,
    attn_tilings: Option<String>,
    attn_flash_tilings: Option<String>,
    attn_bwd_tilings: Option<String>,
    gpt2_profile: Option<String>,
}

/// Parses the flags; an unknown flag or a missing or bad value exits with the usage.
fn args() -> Args {
    let mut a = Args { attn_backward: true, ..Default::default() };
    let mut it = std::env::args().skip(1);
    let fail = |msg: String| -> ! {
        eprintln!("{msg}\n{USAGE}");
        std::process::exit(2)
    };
    while let Some(x) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| fail(format!("{x} needs a value")));
        match x.as_str() {
            "--quick" => a.quick = true,
            "--reference" => a.reference = Some(value()),
            "--json" => a.json = Some(value()),
            "--md" => a.md = Some(value()),
            "--only" => a.only = Some(value()),
            "--grads" => a.grads = Some(value()),
            "--chain-mib" => {
                let v = value();
                a.chain_mib = Some(v.parse().unwrap_or_else(|_| fail(format!("--chain-mib {v}: a whole number"))));
            }
            "--fused-grids" => a.fused_grids = Some(value()),
            "--attn-seqs" => {
                let v = value();
                let seqs: Option<Vec<usize>> = v.split(',').map(|x| x.trim().parse().ok()).collect();
                a.attn_seqs = Some(seqs.unwrap_or_else(|| fail(format!("--attn-seqs {v}: comma-separated lengths"))));
            }
            "--no-attn-backward" => a.attn_backward = false,
            "--attn-paths" => {
                let v = value();
                if v != "tc" && v != "flash" {
                    fail(format!("--attn-paths {v}: tc or flash"));
                }
                a.attn_paths = Some(v);
            }
            "--attn-tilings" => a.attn_tilings = Some(value()),
            "--attn-flash-tilings" => a.attn_flash_tilings = Some(value()),
            "--attn-bwd-tilings" => a.attn_bwd_tilings = Some(value()),
            "--gpt2-profile" => a.gpt2_profile = Some(value()),
            "--log-tuning" => {
                log::set_logger(&TUNING_LOG).map(|()| log::set_max_level(log::LevelFilter::Debug)).expect("one logger")
            }
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => fail(format!("unknown flag {other}")),
        }
    }
    a
}

fn torch_rates(path: &str) -> Vec<(String, String, String, String, f64)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("--reference {path}: {e}"));
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let s = |k: &str| v.get(k).map(|x| x.as_str().map(String::from).unwrap_or_else(|| x.to_string()));
            Some((s("bench")?, s("size")?, s("dtype")?, s("variant")?, v.get("rate")?.as_f64()?))
        })
        .collect()
}

/// The norm backward's ways to dw/db to time: the default, then those `--grads` names
/// ("separate", or rows per workgroup of the one pass), each with its row label.
fn norm_grads_variants(grads: Option<&str>) -> wgkernels::Result<Vec<(NormGrads, String)>> {
    let mut v = vec![(NormGrads::Auto, "dx + dw, db (auto)".to_string())];
    for item in grads.unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
        v.push(match item.trim() {
            "separate" => (NormGrads::Separate, "dx, then dw, db re-reading x, dy".to_string()),
            rows => match rows.parse::<u32>() {
                Ok(r) => (NormGrads::InPass(r), format!("one pass, {r} rows/workgroup")),
                Err(_) => {
                    return Err(wgkernels::Error::InvalidArgument {
                        op: "bench",
                        msg: format!("--grads item {rows:?}: \"separate\" or a row count"),
                    })
                }
            },
        });
    }
    Ok(v)
}

/// Realises every tensor given (pending element-wise results are computed when timed).
fn realize_all(ts: &[Option<Tensor>]) -> wgkernels::Result<()> {
    for t in ts.iter().flatten() {
        t.realize()?;
    }
    Ok(())
}

/// Three significant digits, without exponent: 0.0123, 1.23, 123, 12300.
fn sig3(x: f64) -> String {
    let decimals = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else if x >= 1.0 {
        2
    } else {
        3
    };
    format!("{x:.decimals$}")
}

/// One benchmark job: measures and appends its rows.
type Job = Box<dyn FnMut(&mut Vec<Row>) -> wgkernels::Result<()>>;

fn main() -> wgkernels::Result<()> {
    let args = args();
    let gpu = Gpu::new()?;
    eprintln!("{}", gpu.info());
    let quick = args.quick;
    let reps = if quick { 3 } else { 10 };
    let mut rows: Vec<Row> = Vec::new();

    // Plan: (label, closure) pairs so the progress bar knows the total.
    let mut jobs: Vec<(String, Job)> = Vec::new();

    for add in [
        gpt2_model_jobs,
        copy_jobs,
        matmul_jobs,
        decode_jobs,
        normalization_jobs,
        fusion_jobs,
        optimizer_jobs,
        attention_jobs,
    ] {
        add(&mut jobs, &gpu, &args, reps);
    }

    // `--only` picks jobs by label: "copy", "matmul", "matmul 4096", "gpt2", "normalizations f16", ...
    if let Some(o) = &args.only {
        jobs.retain(|(label, _)| o.split(',').any(|part| label.contains(part)));
    }
    // One bar over the jobs, with the running job's label and the elapsed and remaining time.
    let bar = indicatif::ProgressBar::new(jobs.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for (label, job) in jobs.iter_mut() {
        bar.set_message(label.clone());
        job(&mut rows)?;
        bar.inc(1);
    }
    bar.finish_with_message("done");

    let torch = args.reference.as_deref().map(torch_rates).unwrap_or_default();
    let torch_rate = |key: &Option<(String, String, String, String)>| {
        key.as_ref().and_then(|(b, s, d, v)| {
            torch.iter().find(|t| &t.0 == b && &t.1 == s && &t.2 == d && &t.3 == v).map(|t| (t.3.clone(), t.4))
        })
    };
    let info = gpu.info();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Adapter: {} ({:?}, driver {}); f16 stores through the adapter's rounding: {}.\n",
        info.name,
        info.backend,
        info.driver,
        gpu.native_f16()
    );
    let _ = writeln!(md, "| bench | size | dtype | variant | ms | ours | ours, wall clock | PyTorch | ratio |");
    let _ = writeln!(md, "|---|---|---|---|---:|---:|---:|---:|---:|");
    let mut json = String::new();
    for r in &rows {
        let t = torch_rate(&r.torch_key);
        let (tcol, ratio) = match &t {
            Some((v, rate)) => (format!("{} {} ({v})", sig3(*rate), r.unit), format!("{:.2}", r.rate / rate)),
            None => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.4} | {} {} | {} | {} | {} |",
            r.bench,
            r.size,
            r.dtype,
            r.variant,
            r.ms,
            sig3(r.rate),
            r.unit,
            sig3(r.wall_rate),
            tcol,
            ratio
        );
        let _ = writeln!(
            json,
            "{}",
            serde_json::json!({"bench": r.bench, "size": r.size, "dtype": r.dtype, "variant": r.variant, "median_ms": r.ms, "rate": r.rate, "wall_rate": r.wall_rate, "unit": r.unit, "torch_rate": t.map(|t| t.1)})
        );
    }
    println!("{md}");
    if let Some(p) = &args.md {
        std::fs::write(p, &md).expect("write --md");
    }
    if let Some(p) = &args.json {
        std::fs::write(p, &json).expect("write --json");
    }
    Ok(())
}

/// Copy bandwidth: the roofline of every memory-bound kernel.
fn copy_jobs(jobs: &mut Vec<(String, Job)>, gpu: &Gpu, args: &Args, reps: usize) {
    let quick = args.quick;
    for n in if quick { vec![1usize << 20] } else { vec![1usize << 26, 1 << 28] } {
        let gpu = gpu.clone();
        jobs.push((
            format!("copy {n}"),
            Box::new(move |rows: &mut Vec<Row>| {
                // The roofline of memory-bound kernels. A view at offset 1 makes contiguous()
                // copy: (n - 1)·4 bytes read + as many written.
                let x = Tensor::randn(&gpu, &[n], DType::F32, 1)?;
                let view = x.narrow(0, 1, n - 1)?;
                let t = measure(&gpu, 2, reps, || view.contiguous().and_then(|t| t.realize().map(drop)))?;
                let key = (n == 1 << 28).then(|| ("copy".into(), "256M".into(), "f32".into(), "torch".into()));
                rows.push(Row {
                    bench: "copy",
                    size: format!("{}M", n >> 20),
                    dtype: "f32",
                    variant: "elementwise".into(),
                    ms: t.median_ms,
                    rate: t.rate(2.0 * (n - 1) as f64 * 4.0),
                    wall_rate: 2.0 * (n - 1) as f64 * 4.0 / (t.wall_ms * 1e-3) / 1e9,
                    unit: "GB/s",
                    torch_key: key,
                });
                let y = Tensor::randn(&gpu, &[n], DType::F32, 2)?;
                let t = measure(&gpu, 2, reps, || x.add(&y).and_then(|t| t.realize().map(drop)))?;
                rows.push(Row {
                    bench: "add",
                    size: format!("{}M", n >> 20),
                    dtype: "f32",
                    variant: "elementwise".into(),
                    ms: t.median_ms,
                    rate: t.rate(3.0 * n as f64 * 4.0),
                    wall_rate: 3.0 * n as f64 * 4.0 / (t.wall_ms * 1e-3) / 1e9,
                    unit: "GB/s",
                    torch_key: None,
                });
                Ok(())
            }),
        ));
    }
}

/// A matmul row: `flops` over the timing, PyTorch's `torch_variant` of the same size beside.
fn matmul_row(
    size: String,
    dtype: &'static str,
    variant: String,
    t: &wgkernels::bench::Timing,
    flops: f64,
    torch_variant: &str,
) -> Row {
    Row {
        bench: "matmul",
        torch_key: Some(("matmul".into(), size.clone(), dtype.into(), torch_variant.into())),
        size,
        dtype,
        variant,
        ms: t.median_ms,
        rate: t.rate(flops),
        wall_rate: flops / (t.wall_ms * 1e-3) / 1e9,
        unit: "GFLOP/s",
    }
}

/// Square matmuls in f32 and f16 (every candidate at 4096), GPT-2 small's MLP shapes.
fn matmul_jobs(jobs: &mut Vec<(String, Job)>, gpu: &Gpu, args: &Args, reps: usize) {
    let quick = args.quick;
    let sizes: Vec<usize> = if quick { vec![128, 256] } else { vec![1024, 2048, 4096, 8192] };
    for dtype in [DType::F32, DType::F16] {
        for &n in &sizes {
            let gpu = gpu.clone();
            jobs.push((
                format!("matmul {n} {}", dtype.name()),
                Box::new(move |rows: &mut Vec<Row>| {
                    let a = Tensor::randn(&gpu, &[n, n], dtype, 1)?;
                    let b = Tensor::randn(&gpu, &[n, n], dtype, 2)?;
                    let flops = 2.0 * (n * n * n) as f64;
                    // Every candidate at 4096 (the variants table); the autotuned choice elsewhere.
                    let paths: Vec<Option<MatmulPath>> = if n == 4096 || (quick && n == 256) {
                        candidates(&gpu, dtype, n, false).into_iter().map(Some).chain([None]).collect()
                    } else {
                        vec![None]
                    };
                    for p in paths {
                        let opts = MatmulOptions { path: p, ..Default::default() };
                        let t =
                            measure(&gpu, 2, reps, || a.matmul_with(&b, &opts).and_then(|t| t.realize().map(drop)))?;
                        let torch_variant = if dtype == DType::F32 { "cublas-fp32" } else { "cublas" };
                        let variant = p.map(|p| p.name()).unwrap_or_else(|| "auto".into());
                        rows.push(matmul_row(n.to_string(), dtype.name(), variant, &t, flops, torch_variant));
                    }
                    if dtype == DType::F32
                        && wgkernels::ops::matmul::coop_available_for(
                            &gpu,
                            DType::F32,
                            wgkernels::MatmulPrecision::High,
                        )
                    {
                        let opts =
                            MatmulOptions { precision: Some(wgkernels::MatmulPrecision::High), ..Default::default() };
                        let t =
                            measure(&gpu, 2, reps, || a.matmul_with(&b, &opts).and_then(|t| t.realize().map(drop)))?;
                        let variant = "auto, high (f16 parts on tensor cores)".to_string();
                        rows.push(matmul_row(n.to_string(), "f32", variant, &t, flops, "cublas-tf32"));
                    }
                    if dtype == DType::F32 && wgkernels::ops::matmul::coop_available(&gpu, DType::F32, true) {
                        let opts = MatmulOptions { allow_reduced_precision: true, ..Default::default() };
                        let t =
                            measure(&gpu, 2, reps, || a.matmul_with(&b, &opts).and_then(|t| t.realize().map(drop)))?;
                        let variant = "auto, f16 tensor cores".to_string();
                        rows.push(matmul_row(n.to_string(), "f32", variant, &t, flops, "cublas-tf32"));
                    }
                    Ok(())
                }),
            ));
        }
        // GPT-2 small at B·T = 8·1024 tokens, as its layers run them: the MLP forward
        // [B·T, 768]·[768, 3072] and back, and (not --quick) the backward's layouts — dX = dY·Wᵀ
        // (B a transposed view), dW = Xᵀ·dY (A a transposed view, K = B·T) — and the tied LM
        // head, logits = X·Eᵀ with E [50257, 768]. The model's profile compares with these.
        let tokens = if quick { 256 } else { 8 * 1024 };
        let mut shapes = vec![
            (tokens, 768, 3072, Operands::Plain),
            (tokens, 3072, 768, Operands::Plain),
            (1, 768, 3072, Operands::Plain),
        ];
        if !quick {
            shapes.extend([
                (tokens, 3072, 768, Operands::BTransposed),
                (768, tokens, 3072, Operands::ATransposed),
                (tokens, 768, 50257, Operands::BTransposed),
            ]);
        }
        for (m, k, n, operands) in shapes {
            let gpu = gpu.clone();
            jobs.push((
                format!("gpt2 {m}x{k}x{n}{} {}", operands.suffix(), dtype.name()),
                Box::new(move |rows: &mut Vec<Row>| {
                    // Stored as the model stores them; the transposed operand is a view.
                    let a = match operands {
                        Operands::ATransposed => Tensor::randn(&gpu, &[k, m], dtype, 3)?.transpose(0, 1)?,
                        _ => Tensor::randn(&gpu, &[m, k], dtype, 3)?,
                    };
                    let b = match operands {
                        Operands::BTransposed => Tensor::randn(&gpu, &[n, k], dtype, 4)?.transpose(0, 1)?,
                        _ => Tensor::randn(&gpu, &[k, n], dtype, 4)?,
                    };
                    let t = measure(&gpu, 2, reps, || a.matmul(&b).and_then(|t| t.realize().map(drop)))?;
                    let torch_variant = if dtype == DType::F32 { "cublas-fp32" } else { "cublas" };
                    let size = format!("{m}x{k}x{n}{}", operands.suffix());
                    let flops = 2.0 * (m * k * n) as f64;
                    if dtype == DType::F32 {
                        let opts =
                            MatmulOptions { precision: Some(wgkernels::MatmulPrecision::High), ..Default::default() };
                        let th =
                            measure(&gpu, 2, reps, || a.matmul_with(&b, &opts).and_then(|t| t.realize().map(drop)))?;
                        rows.push(matmul_row(size.clone(), "f32", "auto, high".into(), &th, flops, "cublas-tf32"));
                    }
                    rows.push(matmul_row(size.clone(), dtype.name(), "auto".into(), &t, flops, torch_variant));
                    // The weight gradient's layout with K cut into chunks (what autograd runs).
                    if operands == Operands::ATransposed {
                        // (split, A copied row-major first, as autograd does for 16-bit)
                        for (splits, copy) in [(2, false), (4, false), (8, false), (1, true), (4, true), (8, true)] {
                            let t = measure(&gpu, 2, reps, || {
                                let a = if copy { a.contiguous()? } else { a.clone() };
                                a.matmul_split_k(&b, splits)?.realize().map(drop)
                            })?;
                            let variant = format!("split-K {splits}{}", if copy { ", Aᵀ copied" } else { "" });
                            rows.push(matmul_row(size.clone(), dtype.name(), variant, &t, flops, torch_variant));
                        }
                        // f32 at High: which of view and copy autograd should take there.
                        if dtype == DType::F32 {
                            let before = gpu.f32_matmul_precision();
                            gpu.set_f32_matmul_precision(wgkernels::MatmulPrecision::High);
                            for (splits, copy) in [(1, false), (4, false), (1, true), (4, true)] {
                                let t = measure(&gpu, 2, reps, || {
                                    let a = if copy { a.contiguous()? } else { a.clone() };
                                    a.matmul_split_k(&b, splits)?.realize().map(drop)
                                });
                                let variant =
                                    format!("high, split-K {splits}{}", if copy { ", Aᵀ copied" } else { "" });
                                let t = t.inspect_err(|_| gpu.set_f32_matmul_precision(before))?;
                                rows.push(matmul_row(size.clone(), "f32", variant, &t, flops, "cublas-tf32"));
                            }
                            gpu.set_f32_matmul_precision(before);
                        }
                    }
                    Ok(())
                }),
            ));
        }
    }
}

/// How a matmul's operands are laid out in memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operands {
    /// A [M, K] and B [K, N], row-major.
    Plain,
    /// A read through the transpose of a row-major [K, M].
    ATransposed,
    /// B read through the transpose of a row-major [N, K].
    BTransposed,
}

impl Operands {
    fn suffix(self) -> &'static str {
        match self {
            Operands::Plain => "",
            Operands::ATransposed => " At",
            Operands::BTransposed => " Bt",
        }
    }
}

/// Decode-time matmuls (M ≤ 8: the thin kernel): GPT-2 small's projections and its LM
/// head, B stored [k, n] or as a Linear weight W [n, k] read through its transpose. Bytes
/// of A, B and C counted: reading B is the work. --quick: a 4096-token vocabulary (software
/// devices bind at most 128 MiB).
fn decode_jobs(jobs: &mut Vec<(String, Job)>, gpu: &Gpu, args: &Args, reps: usize) {
    let quick = args.quick;
    let vocab = if quick { 4096 } else { 50257 };
    for dtype in [DType::F32, DType::F16] {
        let gpu = gpu.clone();
        jobs.push((
            format!("decode {}", dtype.name()),
            Box::new(move |rows: &mut Vec<Row>| {
                for (m, k, n) in [(1, 768, 3072), (1, 3072, 768), (8, 768, 3072), (1, 768, vocab)] {
                    let a = Tensor::randn(&gpu, &[m, k], dtype, 3)?;
                    let b = Tensor::randn(&gpu, &[k, n], dtype, 4)?;
                    let w = Tensor::randn(&gpu, &[n, k], dtype, 5)?;
                    let wt = w.transpose(0, 1)?;
                    let bytes = ((m * k + k * n + m * n) * dtype.size_in_bytes()) as f64;
                    for ((variant, b), path) in [("B [k,n]", &b), ("W [n,k] (linear)", &wt)]
                        .into_iter()
                        .flat_map(|l| [(l, None), (l, Some(wgkernels::ops::matmul::MatmulPath::Thin))])
                    {
                        let opts = wgkernels::ops::matmul::MatmulOptions { path, ..Default::default() };
                        let t = measure(&gpu, 2, reps, || a.matmul_with(b, &opts).and_then(|t| t.realize().map(drop)))?;
                        let size = format!("{m}x{k}x{n}");
                        rows.push(Row {
                            bench: "decode_matmul",
                            size: size.clone(),
                            dtype: dtype.name(),
                            variant: format!("{variant}, {}", path.map_or("auto".into(), |p| p.name())),
                            ms: t.median_ms,
                            rate: t.rate(bytes),
                            wall_rate: bytes / (t.wall_ms * 1e-3) / 1e9,
                            unit: "GB/s",
                            torch_key: Some(("decode_matmul".into(), size, dtype.name().into(), variant.into())),
                        });
                    }
                }
                Ok(())
            }),
        ));
    }
}

/// Softmax, LayerNorm, RMSNorm and cross-entropy, forward and backward.
fn normalization_jobs(jobs: &mut Vec<(String, Job)>, gpu: &Gpu, args: &Args, reps: usize) {
    let quick = args.quick;
    for dtype in [DType::F32, DType::F16] {
        let esize = dtype.size_in_bytes() as f64;
        let gpu = gpu.clone();
        let grads_flag = args.grads.clone();
        jobs.push((
            format!("normalizations {}", dtype.name()),
            Box::new(move |rows: &mut Vec<Row>| {
                let scale = if quick { 16 } else { 1 };
                let mut push =
                    |bench: &'static str, size: String, t: wgkernels::bench::Timing, bytes: f64, variant: &str| {
                        let key = Some((
                            bench.to_string(),
                            size.clone(),
                            dtype.name().to_string(),
                            if bench == "cross_entropy" { "torch fwd+bwd".to_string() } else { "torch".to_string() },
                        ));
                        rows.push(Row {
                            bench,
                            size,
                            dtype: dtype.name(),
                            variant: variant.into(),
                            ms: t.median_ms,
                            rate: t.rate(bytes),
                            wall_rate: bytes / (t.wall_ms * 1e-3) / 1e9,
                            unit: "GB/s",
                            torch_key: key,
                        });
                    };
                for (r, n) in [(4096 / scale, 4096), (16384 / scale, 4096)] {
                    let x = Tensor::randn(&gpu, &[r, n], dtype, 1)?;
                    let bytes = 2.0 * (r * n) as f64 * esize;
                    let t = measure(&gpu, 2, reps, || x.softmax(-1).and_then(|t| t.realize().map(drop)))?;
                    push("softmax", format!("{r}x{n}"), t, bytes, "registers");
                    let y = x.softmax(-1)?;
                    let dy = Tensor::randn(&gpu, &[r, n], dtype, 2)?;
                    let t = measure(&gpu, 2, reps, || y.softmax_backward(&dy).and_then(|t| t.realize().map(drop)))?;
                    push("softmax_backward", format!("{r}x{n}"), t, 1.5 * bytes, "two passes");
                }
                let (r, n) = (8192 / scale, 4096);
                let x = Tensor::randn(&gpu, &[r, n], dtype, 3)?;
                let w = Tensor::randn(&gpu, &[n], dtype, 4)?;
                let b = Tensor::randn(&gpu, &[n], dtype, 5)?;
                let dy = Tensor::randn(&gpu, &[r, n], dtype, 6)?;
                let bytes = 2.0 * (r * n) as f64 * esize;
                let size = format!("{r}x{n}");
                let t = measure(&gpu, 2, reps, || {
                    x.layer_norm(Some(&w), Some(&b), 1e-5).and_then(|t| t.realize().map(drop))
                })?;
                push("layernorm", size.clone(), t, bytes, "registers, shifted sums");
                // The default, then any other ways to dw/db named in WGK_BENCH_GRADS
                // ("separate" or rows per workgroup of the one pass, comma-separated).
                let grads = norm_grads_variants(grads_flag.as_deref())?;
                for &(path, ref label) in &grads {
                    let t = measure(&gpu, 2, reps, || {
                        norm_backward_with("layer_norm_backward", &x, Some(&w), &dy, 1e-5, false, path)
                            .and_then(|g| realize_all(&[Some(g.dx), g.dweight, g.dbias]))
                    })?;
                    push("layernorm_backward", size.clone(), t, 1.5 * bytes, label);
                }
                let t = measure(&gpu, 2, reps, || x.rms_norm(Some(&w), 1e-5).and_then(|t| t.realize().map(drop)))?;
                push("rmsnorm", size.clone(), t, bytes, "registers");
                for &(path, ref label) in &grads {
                    let t = measure(&gpu, 2, reps, || {
                        norm_backward_with("rms_norm_backward", &x, Some(&w), &dy, 1e-5, true, path)
                            .and_then(|g| realize_all(&[Some(g.dx), g.dweight]))
                    })?;
                    push("rmsnorm_backward", size.clone(), t, 1.5 * bytes, label);
                }
                let (r, v) = (8192 / scale, 50257);
                let logits = Tensor::randn(&gpu, &[r, v], dtype, 7)?;
                let targets: Vec<u32> = (0..r).map(|i| ((i * 7919) % v) as u32).collect();
                let t = measure(&gpu, 2, reps, || {
                    logits.cross_entropy(&targets).and_then(|(l, d)| l.realize().and(d.realize()).map(drop))
                })?;
                push("cross_entropy", format!("{r}x{v}"), t, 2.0 * (r * v) as f64 * esize, "loss + dlogits, streaming");
                Ok(())
            }),
        ));
    }
}

/// The fusion benchmark: gelu(x·a + b)·c + x, fused (one generated kernel) and unfused (one
/// kernel per op), 5 tensors of n f32 moved in the fused count (4 read, 1 written).
fn fusion_jobs(jobs: &mut Vec<(String, Job)>, gpu: &Gpu, args: &Args, reps: usize) {
    let quick = args.quick;
    // --chain-mib: another size, in Mi elements (a fixed cost per dispatch weighs less on a
    // longer run).
    let mib: usize = args.chain_mib.unwrap_or(64);
    let fused_grids = args.fused_grids.clone().unwrap_or_default();
    let n: usize = if quick { 1 << 20 } else { mib << 20 };
    let gpu = gpu.clone();
    jobs.push((
        format!("fusion chain {n}"),
        Box::new(move |rows: &mut Vec<Row>| {
            chain_rows(rows, &gpu, n, reps)?;
            grid_rows(rows, n, reps, &fused_grids)?;
            mlp_block_rows(rows, &gpu, quick, reps)?;
            add_layernorm_rows(rows, &gpu, quick, reps)?;
            jit_host_rows(rows, &gpu)
        }),
    ));
}

/// The fused chain gelu(x·a + b)·c + x over n f32, fused and unfused; 5 tensors moved.
fn chain_rows(rows: &mut Vec<Row>, gpu: &Gpu, n: usize, reps: usize) -> wgkernels::Result<()> {
    let t = |seed| Tensor::randn(gpu, &[n], DType::F32, seed);
    let (x, a, b, c) = (t(1)?, t(2)?, t(3)?, t(4)?);
    // Built inside a function so that no intermediate is held at realisation.
    let chain = || x.mul(&a)?.add(&b)?.gelu_tanh()?.mul(&c)?.add(&x);
    let bytes = 5.0 * n as f64 * 4.0;
    let was = gpu.fusion();
    for (fused, variant, torch_variant) in
        [(true, "fused (1 kernel)", "torch.compile"), (false, "unfused (5 kernels)", "eager")]
    {
        gpu.set_fusion(fused);
        let t = measure(gpu, 2, reps, || chain().and_then(|t| t.realize().map(drop)))?;
        let key = Some((
            "elementwise_chain".to_string(),
            format!("{}M", n >> 20),
            "f32".to_string(),
            torch_variant.to_string(),
        ));
        rows.push(Row {
            bench: "elementwise_chain",
            size: format!("{}M", n >> 20),
            dtype: "f32",
            variant: variant.into(),
            ms: t.median_ms,
            rate: t.rate(bytes),
            wall_rate: bytes / (t.wall_ms * 1e-3) / 1e9,
            unit: "GB/s",
            torch_key: key,
        });
    }
    gpu.set_fusion(was);
    Ok(())
}

/// Other grids for the fused chain, each on a device of its own (--fused-grids
/// "unroll,workgroup,groups;…", see GpuOptions::fused_unroll and the rest).
fn grid_rows(rows: &mut Vec<Row>, n: usize, reps: usize, grids: &str) -> wgkernels::Result<()> {
    for grid in grids.split(';').filter(|g| !g.is_empty()) {
        let v: Vec<u32> = grid.split(',').filter_map(|x| x.trim().parse().ok()).collect();
        let [unroll, workgroup, groups] = v[..] else {
            return Err(wgkernels::Error::InvalidArgument {
                op: "bench",
                msg: format!("--fused-grids item {grid:?}: unroll,workgroup,groups"),
            });
        };
        let opts = wgkernels::GpuOptions {
            fused_unroll: unroll,
            fused_workgroup: workgroup,
            fused_groups: groups,
            ..wgkernels::GpuOptions::from_env()?
        };
        let other = Gpu::with_options(opts)?;
        // f32 runs the 16-byte path; f16 the element path (pairs packed per word).
        for (dtype, name) in [(DType::F32, "f32"), (DType::F16, "f16")] {
            let t = |seed| Tensor::randn(&other, &[n], dtype, seed);
            let (x, a, b, c) = (t(1)?, t(2)?, t(3)?, t(4)?);
            let chain = || x.mul(&a)?.add(&b)?.gelu_tanh()?.mul(&c)?.add(&x);
            let t = measure(&other, 2, reps, || chain().and_then(|t| t.realize().map(drop)))?;
            let bytes = 5.0 * n as f64 * dtype.size_in_bytes() as f64;
            rows.push(Row {
                bench: "elementwise_chain",
                size: format!("{}M", n >> 20),
                dtype: name,
                variant: format!("fused, unroll {unroll} workgroup {workgroup} groups {groups}"),
                ms: t.median_ms,
                rate: t.rate(bytes),
                wall_rate: bytes / (t.wall_ms * 1e-3) / 1e9,
                unit: "GB/s",
                torch_key: Some((
                    "elementwise_chain".to_string(),
                    format!("{}M", n >> 20),
                    name.to_string(),
                    "torch.compile".to_string(),
                )),
            });
        }
    }
    Ok(())
}

/// A transformer MLP block, y = gelu(x·W1 + b1)·W2 + b2 + x (GPT-2 small: 8192 tokens, 768 →
/// 3072 → 768), fused (bias + GELU and bias + residual in the two matmuls' epilogues, generated
/// by the fusion JIT: 2 kernels) against unfused (fusion off: 2 matmuls + 4 element-wise
/// kernels). FLOPs: the two matmuls.
fn mlp_block_rows(rows: &mut Vec<Row>, gpu: &Gpu, quick: bool, reps: usize) -> wgkernels::Result<()> {
    let was = gpu.fusion();
    let (tokens, d, hidden) = if quick { (256, 128, 512) } else { (8192, 768, 3072) };
    let r = |shape: &[usize], seed| Tensor::randn(gpu, shape, DType::F32, seed);
    let (x, w1, b1, w2, b2) =
        (r(&[tokens, d], 11)?, r(&[d, hidden], 12)?, r(&[hidden], 13)?, r(&[hidden, d], 14)?, r(&[d], 15)?);
    let block = || -> wgkernels::Result<Tensor> {
        let h = x.matmul(&w1)?.add(&b1)?.gelu_tanh()?;
        h.matmul(&w2)?.add(&b2)?.add(&x)
    };
    let flops = 4.0 * (tokens * d * hidden) as f64;
    for (fused, variant) in [(true, "fused: 2 kernels (epilogues)"), (false, "unfused: 6 kernels")] {
        gpu.set_fusion(fused);
        gpu.set_matmul_epilogue_fusion(fused);
        let t = measure(gpu, 2, reps, || block().and_then(|t| t.realize().map(drop)))?;
        rows.push(Row {
            bench: "mlp_block",
            size: format!("{tokens}x{d}x{hidden}"),
            dtype: "f32",
            variant: variant.into(),
            ms: t.median_ms,
            rate: t.rate(flops),
            wall_rate: flops / (t.wall_ms * 1e-3) / 1e9,
            unit: "GFLOP/s",
            torch_key: None,
        });
    }
    gpu.set_fusion(was);
    gpu.set_matmul_epilogue_fusion(false);
    Ok(())
}

/// The residual add before a LayerNorm, h = x + a; y = layer_norm(h) with h kept (the residual
/// stream is used again): fused (the add in the norm's prologue, which also stores h: 1 kernel)
/// against unfused (fusion off: 2 kernels). Bytes: x and a read, h and y written — 4 tensors,
/// in both rows.
fn add_layernorm_rows(rows: &mut Vec<Row>, gpu: &Gpu, quick: bool, reps: usize) -> wgkernels::Result<()> {
    let was = gpu.fusion();
    let (tokens, d) = if quick { (256, 1024) } else { (8192, 4096) };
    let r = |shape: &[usize], seed| Tensor::randn(gpu, shape, DType::F32, seed);
    let (x, a, w, b) = (r(&[tokens, d], 21)?, r(&[tokens, d], 22)?, r(&[d], 23)?, r(&[d], 24)?);
    let bytes = 4.0 * (tokens * d) as f64 * 4.0;
    for (fused, variant, torch_variant) in
        [(true, "fused: 1 kernel (prologue)", "torch.compile"), (false, "unfused: 2 kernels", "eager")]
    {
        gpu.set_fusion(fused);
        let t = measure(gpu, 2, reps, || {
            let h = x.add(&a)?;
            let y = h.layer_norm(Some(&w), Some(&b), 1e-5)?;
            y.realize()?;
            h.realize().map(drop)
        })?;
        let size = format!("{tokens}x{d}");
        rows.push(Row {
            bench: "add_layernorm",
            size: size.clone(),
            dtype: "f32",
            variant: variant.into(),
            ms: t.median_ms,
            rate: t.rate(bytes),
            wall_rate: bytes / (t.wall_ms * 1e-3) / 1e9,
            unit: "GB/s",
            torch_key: Some(("add_layernorm".into(), size, "f32".into(), torch_variant.into())),
        });
    }
    gpu.set_fusion(was);
    Ok(())
}

/// Host cost of the JIT: realising a chain of a structure not seen before (graph → WGSL →
/// pipeline) and of one already compiled (cache hit), on 4096 elements so the GPU work is
/// negligible; medians over 12 structures.
fn jit_host_rows(rows: &mut Vec<Row>, gpu: &Gpu) -> wgkernels::Result<()> {
    let was = gpu.fusion();
    gpu.set_fusion(true);
    let small = |seed| Tensor::randn(gpu, &[4096], DType::F32, seed);
    let (x, y) = (small(5)?, small(6)?);
    let ops: [fn(&Tensor) -> wgkernels::Result<Tensor>; 4] = [|t| t.exp(), |t| t.tanh(), |t| t.sigmoid(), |t| t.gelu()];
    let chain = |k: usize| -> wgkernels::Result<Tensor> {
        // 12 distinct 6-op chains: the op order encodes k in base 4.
        let mut t = x.mul(&y)?;
        for d in 0..3 {
            t = ops[(k >> (2 * d)) % 4](&t)?.add(&y)?;
        }
        Ok(t)
    };
    // With the tiered JIT the realisation runs the quick kernel; the full one is
    // ready when finish_compiles returns (measured from the same start).
    let (mut compile, mut ready, mut hit) = (Vec::new(), Vec::new(), Vec::new());
    for k in 20..32 {
        gpu.synchronize()?;
        let t0 = std::time::Instant::now();
        chain(k)?.realize()?;
        compile.push(t0.elapsed().as_secs_f64() * 1e3);
        gpu.finish_compiles();
        ready.push(t0.elapsed().as_secs_f64() * 1e3);
        gpu.synchronize()?;
        let t0 = std::time::Instant::now();
        chain(k)?.realize()?;
        hit.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    // A training loop's view: the structure has run with these buffers before
    // (bind groups cached), the GPU idle since the last step's read-back.
    let mut after_wait = Vec::new();
    for k in 20..32 {
        gpu.synchronize()?;
        let t0 = std::time::Instant::now();
        chain(k)?.realize()?;
        after_wait.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    // A loop's view: cache hits back to back (the command encoder open, one
    // submission per 64 dispatches included), mean over 128 per structure.
    let mut steady = Vec::new();
    for k in 20..32 {
        gpu.synchronize()?;
        chain(k)?.realize()?;
        let t0 = std::time::Instant::now();
        for _ in 0..128 {
            chain(k)?.realize()?;
        }
        steady.push(t0.elapsed().as_secs_f64() * 1e3 / 128.0);
    }
    gpu.set_fusion(was);
    let mut timings = vec![("new structure: graph → WGSL → pipeline", compile)];
    if gpu.tiered_jit() {
        timings = vec![
            ("new structure: graph → WGSL → quick kernel (tiered JIT)", timings.remove(0).1),
            ("new structure: until the full kernel is compiled (background)", ready),
        ];
    }
    for (variant, mut v) in timings.into_iter().chain([
        ("compiled kernel's first run (new bind group), after a wait", hit),
        ("cache hit, after a wait", after_wait),
        ("cache hit, in a loop", steady),
    ]) {
        v.sort_by(f64::total_cmp);
        let ms = v[v.len() / 2];
        rows.push(Row {
            bench: "fusion_host_ms",
            size: "6-op chain".into(),
            dtype: "f32",
            variant: variant.into(),
            ms,
            rate: ms,
            wall_rate: ms,
            unit: "ms",
            torch_key: None,
        });
    }
    Ok(())
}

/// The optimizer benchmark: one AdamW step over 64 M f32 parameters in one tensor and
/// over GPT-2 small's 148 tensors (124 M parameters), fused against the same update built
/// from element-wise ops (one kernel each, and through the fusion JIT). Bytes per
/// parameter: read p, g, m, v and write p, m, v = 7·4 = 28; with a loss scale (the norm
/// reduction reads g once more) 32; bf16 params with f32 master weights: p 2+2, g 2,
/// master, m, v 8 each = 30.
fn optimizer_jobs(jobs: &mut Vec<(String, Job)>, gpu: &Gpu, args: &Args, reps: usize) {
    let quick = args.quick;
    {
        let gpu = gpu.clone();
        // --quick (software devices bind at most 128 MiB): GPT-2 small's shapes with a 1024-token vocabulary.
        let small =
            wgkernels::plan::ModelConfig { vocab: if quick { 1024 } else { 50257 }, ..wgkernels::plan::GPT2[0] };
        jobs.push((
            "adamw".into(),
            Box::new(move |rows: &mut Vec<Row>| {
                use wgkernels::optim::{adamw_unfused, AdamW, AdamWConfig, Optimizer};
                let one = if quick { 1usize << 20 } else { 64 << 20 };
                // (size label, parameter shapes, PyTorch's size label)
                type Case<'a> = (String, Vec<Vec<usize>>, Option<&'a str>);
                let cases: Vec<Case> = vec![
                    (format!("{}M", one >> 20), vec![vec![one]], Some("64M")),
                    (format!("gpt2 {} tensors", small.param_shapes().len()), small.param_shapes(), Some("gpt2-124M")),
                ];
                let push = |rows: &mut Vec<Row>,
                            size: &str,
                            dtype,
                            variant: &str,
                            t: wgkernels::bench::Timing,
                            bytes: f64,
                            torch: Option<(&str, &str)>| {
                    rows.push(Row {
                        bench: "adamw",
                        size: size.to_string(),
                        dtype,
                        variant: variant.into(),
                        ms: t.median_ms,
                        rate: t.rate(bytes),
                        wall_rate: bytes / (t.wall_ms * 1e-3) / 1e9,
                        unit: "GB/s",
                        torch_key: torch
                            .map(|(s, v)| ("adamw".to_string(), s.to_string(), "f32".to_string(), v.to_string())),
                    });
                };
                for (size, shapes, torch_size) in cases {
                    let n: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
                    let make = |dtype, seed: u64| -> wgkernels::Result<Vec<Tensor>> {
                        shapes.iter().enumerate().map(|(k, s)| Tensor::randn(&gpu, s, dtype, seed + k as u64)).collect()
                    };
                    let grads = make(DType::F32, 1000)?;
                    let mut params = make(DType::F32, 1)?;
                    let mut opt = AdamW::new(&gpu, AdamWConfig::default())?;
                    let t = measure(&gpu, 2, reps, || opt.step(&mut params, &grads))?;
                    let fused_torch = torch_size.map(|s| (s, "fused"));
                    // PyTorch's multi-tensor (foreach) step, for the same row.
                    let foreach = torch_size.map(|s| (s, "foreach"));
                    push(rows, &size, "f32", "fused (vs PyTorch foreach)", t, 28.0 * n as f64, foreach);
                    push(
                        rows,
                        &size,
                        "f32",
                        &format!("fused ({} dispatches + 1)", opt.dispatches_per_step().unwrap_or(0)),
                        t,
                        28.0 * n as f64,
                        fused_torch,
                    );
                    let t = measure(&gpu, 2, reps, || opt.step_scaled(&mut params, &grads, 1.0))?;
                    push(rows, &size, "f32", "fused, loss scale + inf check", t, 32.0 * n as f64, None);
                    drop(opt);
                    // bf16 model weights with f32 masters.
                    let grads16 = make(DType::BF16, 2000)?;
                    let mut params16 = make(DType::BF16, 3)?;
                    let mut opt = AdamW::new(&gpu, AdamWConfig::default())?;
                    let t = measure(&gpu, 2, reps, || opt.step(&mut params16, &grads16))?;
                    push(rows, &size, "bf16", "fused, f32 masters", t, 30.0 * n as f64, None);
                    drop((opt, grads16, params16));
                    // The unfused baseline: new p, m, v per step (as eager frameworks allocate).
                    let cfg = AdamWConfig::default();
                    let mut state: Vec<(Tensor, Tensor, Tensor)> = params
                        .iter()
                        .map(|p| {
                            Ok((
                                p.clone(),
                                Tensor::zeros(&gpu, p.shape(), DType::F32)?,
                                Tensor::zeros(&gpu, p.shape(), DType::F32)?,
                            ))
                        })
                        .collect::<wgkernels::Result<_>>()?;
                    let was = gpu.fusion();
                    for (fusion, variant, torch_variant) in [
                        (false, "unfused (1 kernel per op)", Some("for-loop")),
                        (true, "unfused ops, fusion JIT", None),
                    ] {
                        gpu.set_fusion(fusion);
                        let mut step = 0;
                        let t = measure(&gpu, 2, reps, || {
                            step += 1;
                            for ((p, m, v), g) in state.iter_mut().zip(&grads) {
                                let (p1, m1, v1) = adamw_unfused(p, g, m, v, step, &cfg)?;
                                for x in [&p1, &m1, &v1] {
                                    x.realize()?;
                                }
                                (*p, *m, *v) = (p1, m1, v1);
                            }
                            Ok(())
                        })?;
                        push(rows, &size, "f32", variant, t, 28.0 * n as f64, torch_size.zip(torch_variant));
                    }
                    gpu.set_fusion(was);
                }
                Ok(())
            }),
        ));
    }
}

/// Attention (issue 5): B = 4, H = 16, S ∈ {512, 2048, 8192}, D ∈ {64, 128}, causal or not,
/// f32, f16 and bf16, each on tensor cores (f32 split into two f16 parts, bf16 scaled into
/// f16; 3x the counted products executed for f32), on FMA units and naive. FLOPs
/// 4·B·H·S²·D for the forward (halved when causal), 2.5× that for the backward (five
/// S×S×D products against two), as FlashAttention counts. The variant names
/// the extra memory one call allocated beyond its inputs (peak − before): flash keeps a
/// log-sum-exp per row, naive an S×S score and probability matrix per head; at S = 8192 the
/// naive scores (4·16·8192² f32 = 16 GiB) exceed a storage binding and it cannot run.
fn attention_jobs(jobs: &mut Vec<(String, Job)>, gpu: &Gpu, args: &Args, reps: usize) {
    let quick = args.quick;
    for dtype in [DType::F16, DType::F32, DType::BF16] {
        let gpu = gpu.clone();
        let knobs = args.clone();
        jobs.push((
            format!("attention {}", dtype.name()),
            Box::new(move |rows: &mut Vec<Row>| {
                let (b, h) = (4usize, 16usize);
                // --attn-seqs 2048,8192 picks sequence lengths; --no-attn-backward skips the
                // backward rows (both to spend less device time on a forward-only change).
                let seqs: Vec<usize> = match &knobs.attn_seqs {
                    Some(v) => v.clone(),
                    None if quick => vec![128],
                    None => vec![512, 2048, 8192],
                };
                for &s in &seqs {
                    for d in [64usize, 128] {
                        let t = |seed| Tensor::randn(&gpu, &[b, h, s, d], dtype, seed);
                        for causal in [false, true] {
                            let case = AttnCase {
                                gpu: &gpu,
                                dtype,
                                shape: [b, h, s, d],
                                causal,
                                qkv: [t(1)?, t(2)?, t(3)?],
                                dout: t(4)?,
                                reps,
                            };
                            let flash_tilings_run = attention_forward_rows(rows, &case, &knobs)?;
                            if knobs.attn_backward {
                                attention_backward_rows(rows, &case, &knobs, &flash_tilings_run)?;
                            }
                        }
                    }
                }
                Ok(())
            }),
        ));
    }
}

/// One attention bench problem: q, k, v (and the backward's dout) of `shape` [B, H, S, D].
struct AttnCase<'a> {
    gpu: &'a Gpu,
    dtype: DType,
    shape: [usize; 4],
    causal: bool,
    qkv: [Tensor; 3],
    dout: Tensor,
    reps: usize,
}

impl AttnCase<'_> {
    fn size(&self) -> String {
        let [b, h, s, d] = self.shape;
        format!("{b}x{h}x{s}x{d}")
    }

    /// 4·B·H·S²·D, halved when causal.
    fn flops(&self) -> f64 {
        let [b, h, s, d] = self.shape;
        4.0 * (b * h * s * s * d) as f64 * if self.causal { 0.5 } else { 1.0 }
    }

    fn suffix(&self) -> &'static str {
        if self.causal {
            "-causal"
        } else {
            ""
        }
    }

    /// PyTorch's row to compare with.
    fn torch_key(&self, bench: &str, variant: &str) -> Option<(String, String, String, String)> {
        Some((bench.to_string(), self.size(), self.dtype.name().to_string(), format!("{variant}{}", self.suffix())))
    }
}

/// The forward rows of one case: every path (tensor cores, FMA-unit flash, naive), or the
/// one `--attn-paths` names, at the default tiling and those `--attn-tilings` (tensor
/// cores: "all" or a list such as "4,2,32,2;8,1,32,1", CoopTiling::parse) and
/// `--attn-flash-tilings` ("all" or "8,32;4,16") name. Returns the flash tilings run, which
/// the FMA-unit backward follows.
fn attention_forward_rows(
    rows: &mut Vec<Row>,
    case: &AttnCase,
    knobs: &Args,
) -> wgkernels::Result<Vec<Option<wgkernels::ops::attention::FlashTiling>>> {
    use wgkernels::ops::attention::{
        attention, coop_tilings_for, flash_tilings, AttentionOptions, AttentionPath, CoopTiling, FlashTiling,
    };
    let (gpu, dtype, d) = (case.gpu, case.dtype, case.shape[3]);
    let [q, k, v] = &case.qkv;
    // Every dtype also on tensor cores (f32 split into f16 parts, bf16 scaled into f16;
    // "cannot run" where the adapter lacks them).
    let paths = [AttentionPath::FlashCoop, AttentionPath::Flash, AttentionPath::Naive];
    let only_path = match knobs.attn_paths.as_deref() {
        Some("tc") => Some(AttentionPath::FlashCoop),
        Some("flash") => Some(AttentionPath::Flash),
        _ => None,
    };
    let limits = gpu.info().limits.clone();
    let tilings: Vec<Option<CoopTiling>> = match knobs.attn_tilings.as_deref() {
        Some("all") => std::iter::once(None).chain(coop_tilings_for(dtype, d, &limits).into_iter().map(Some)).collect(),
        Some(list) => list.split(';').filter_map(CoopTiling::parse).map(Some).collect(),
        None => vec![None],
    };
    let flash_tilings_run: Vec<Option<FlashTiling>> = match knobs.attn_flash_tilings.as_deref() {
        Some("all") => std::iter::once(None).chain(flash_tilings(d, &limits).into_iter().map(Some)).collect(),
        Some(list) => list.split(';').filter_map(FlashTiling::parse).map(Some).collect(),
        None => vec![None],
    };
    let runs = paths
        .iter()
        .filter(|&&p| only_path.is_none_or(|only| p == only))
        .flat_map(|&p| {
            let ts: Vec<(Option<CoopTiling>, Option<FlashTiling>)> = match p {
                AttentionPath::FlashCoop => tilings.iter().map(|&t| (t, None)).collect(),
                AttentionPath::Flash => flash_tilings_run.iter().map(|&t| (None, t)).collect(),
                _ => vec![(None, None)],
            };
            ts.into_iter().map(move |(t, f)| (p, t, f))
        })
        .collect::<Vec<_>>();
    let (size, suffix, flops) = (case.size(), case.suffix(), case.flops());
    for (path, coop_tiling, flash_tiling) in runs {
        let opts = AttentionOptions { causal: case.causal, path, coop_tiling, flash_tiling, ..Default::default() };
        gpu.synchronize()?;
        let before = gpu.memory().live_bytes;
        gpu.reset_peak();
        let once = attention(q, k, v, &opts).and_then(|o| o.realize().map(drop));
        gpu.synchronize()?;
        let extra = gpu.memory().peak_live_bytes.saturating_sub(before);
        let name = match (path, coop_tiling, flash_tiling) {
            (AttentionPath::FlashCoop, Some(t), _) => format!("flash-tc[{}]", t.label()),
            (AttentionPath::FlashCoop, None, _) => "flash-tc".to_string(),
            (AttentionPath::Flash, _, Some(t)) => format!("flash[{}]", t.label()),
            (AttentionPath::Flash, _, None) => "flash".to_string(),
            _ => "naive".to_string(),
        };
        if let Err(e) = once {
            eprintln!("\n{name} {size} {dtype:?} causal={}: cannot run: {e}", case.causal);
            rows.push(Row {
                bench: "attention",
                size: size.clone(),
                dtype: dtype.name(),
                variant: format!("{name}{suffix}: cannot run ({})", e.to_string().chars().take(60).collect::<String>()),
                ms: f64::NAN,
                rate: f64::NAN,
                wall_rate: f64::NAN,
                unit: "GFLOP/s",
                torch_key: None,
            });
            continue;
        }
        let tm = measure(gpu, 1, case.reps, || attention(q, k, v, &opts).and_then(|o| o.realize().map(drop)))?;
        rows.push(Row {
            bench: "attention",
            size: size.clone(),
            dtype: dtype.name(),
            variant: format!("{name}{suffix}, +{} MiB", extra >> 20),
            ms: tm.median_ms,
            rate: tm.rate(flops),
            wall_rate: flops / (tm.wall_ms * 1e-3) / 1e9,
            unit: "GFLOP/s",
            torch_key: case.torch_key("attention", if path == AttentionPath::Naive { "naive" } else { "sdpa" }),
        });
    }
    Ok(flash_tilings_run)
}

/// The backward rows of one case: the tensor-core backward where the adapter has it (at the
/// default tiling and those `--attn-bwd-tilings` names: "all" or "4,64,16,1;…"), else the
/// FMA-unit one, which takes the flash tiling's head-dim chunk: one row per distinct chunk
/// among `flash_tilings_run`. FLOPs 2.5× the forward's.
fn attention_backward_rows(
    rows: &mut Vec<Row>,
    case: &AttnCase,
    knobs: &Args,
    flash_tilings_run: &[Option<wgkernels::ops::attention::FlashTiling>],
) -> wgkernels::Result<()> {
    use wgkernels::ops::attention::{
        attention_backward, attention_forward, coop_bwd_tilings_for, AttentionOptions, AttentionPath, AttentionSaved,
        CoopBwdTiling, FlashTiling,
    };
    let (gpu, dtype, d) = (case.gpu, case.dtype, case.shape[3]);
    let [q, k, v] = &case.qkv;
    let limits = gpu.info().limits.clone();
    let coop_opts = AttentionOptions { path: AttentionPath::FlashCoop, ..Default::default() };
    let coop = attention_forward(q, k, v, &coop_opts).is_ok();
    let path = if coop { AttentionPath::FlashCoop } else { AttentionPath::Flash };
    let bwd_tilings: Vec<(Option<CoopBwdTiling>, Option<FlashTiling>)> = match knobs.attn_bwd_tilings.as_deref() {
        Some("all") if coop => std::iter::once(None)
            .chain(coop_bwd_tilings_for(dtype, d, &limits).into_iter().map(Some))
            .map(|t| (t, None))
            .collect(),
        Some(list) if coop && list != "all" => {
            list.split(';').filter_map(CoopBwdTiling::parse).map(|t| (Some(t), None)).collect()
        }
        _ if !coop => flash_tilings_run.iter().filter(|t| t.is_none_or(|t| t.rows == 4)).map(|&t| (None, t)).collect(),
        _ => vec![(None, None)],
    };
    let (size, suffix, flops) = (case.size(), case.suffix(), 2.5 * case.flops());
    for (coop_bwd_tiling, flash_tiling) in bwd_tilings {
        let opts = AttentionOptions { causal: case.causal, path, coop_bwd_tiling, flash_tiling, ..Default::default() };
        let (o, lse) = attention_forward(q, k, v, &opts)?;
        let name = match (coop_bwd_tiling, flash_tiling) {
            (Some(t), _) => format!("flash-tc[{}]", t.label()),
            (None, _) if coop => "flash-tc".to_string(),
            (None, Some(t)) => format!("flash[{}]", t.label()),
            (None, None) => "flash".to_string(),
        };
        let saved = AttentionSaved { q, k, v, out: &o, lse: &lse };
        let tm = measure(gpu, 1, case.reps, || {
            let (dq, dk, dv) = attention_backward(&saved, &case.dout, &opts)?;
            for x in [dq, dk, dv] {
                x.realize()?;
            }
            Ok(())
        });
        let tm = match tm {
            Ok(tm) => tm,
            Err(e) => {
                eprintln!("\n{name} backward {size} causal={}: cannot run: {e}", case.causal);
                continue;
            }
        };
        rows.push(Row {
            bench: "attention_backward",
            size: size.clone(),
            dtype: dtype.name(),
            variant: format!("{name}{suffix}"),
            ms: tm.median_ms,
            rate: tm.rate(flops),
            wall_rate: flops / (tm.wall_ms * 1e-3) / 1e9,
            unit: "GFLOP/s",
            torch_key: case.torch_key("attention_backward", "sdpa"),
        });
    }
    Ok(())
}

/// What a model-level job runs: one block's forward, the whole forward (logits), the
/// training step (forward, cross-entropy, backward, AdamW), or batch-1 generation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ModelWork {
    Block,
    Forward,
    Train,
    Generate,
}

impl ModelWork {
    fn name(self) -> &'static str {
        match self {
            ModelWork::Block => "block",
            ModelWork::Forward => "forward",
            ModelWork::Train => "train",
            ModelWork::Generate => "generate",
        }
    }

    /// Timed repeats, as benches/torch_gpt2.py times the same work: `reps` (10) for the
    /// forwards, half for a training step (at least 3), 3 generations. Fewer repeats of a
    /// 3 ms block would weigh the closing wait more than PyTorch's figure does.
    fn reps(self, reps: usize) -> usize {
        match self {
            ModelWork::Block | ModelWork::Forward => reps,
            ModelWork::Train => (reps / 2).max(3),
            ModelWork::Generate => 3,
        }
    }
}

/// Tokens generated per `gpt2 generate` run after a 16-token prompt (benches/torch_gpt2.py
/// runs the same loop).
const GENERATED: usize = 64;

/// GPT-2 small (124M: 12 layers, width 768, 12 heads, vocabulary 50257, context 1024)
/// through `nn` and autograd at batch 8 × 1024 — the path a user's model takes — in f32
/// and with bf16 and f16 compute (f32 master weights in AdamW; f16 with dynamic loss
/// scaling). Rate: tokens/s from back-to-back wall-clock steps (host work included, as
/// PyTorch's perf_counter figure); the variant gives the GPU-busy share, the model FLOP/s
/// (PaLM's count: 6N + 12·L·d·S per trained token, a third of it per forward token) and,
/// for training, the measured peak beside `plan`'s. `--gpt2-profile DIR` writes one
/// profiled step's per-kernel table per job. --quick: a 2-layer width-64 model, batch 2 × 64.
fn gpt2_model_jobs(jobs: &mut Vec<(String, Job)>, gpu: &Gpu, args: &Args, reps: usize) {
    use wgkernels::nn::GptConfig;
    let (config, batch, seq) = if args.quick {
        (GptConfig { vocab: 512, context: 64, layers: 2, heads: 2, d_model: 64 }, 2, 64)
    } else {
        (GptConfig::gpt2_small(), 8, 1024)
    };
    use wgkernels::MatmulPrecision::{High, Highest};
    let cases = [
        (ModelWork::Block, DType::F32, Highest),
        (ModelWork::Forward, DType::F32, Highest),
        (ModelWork::Train, DType::F32, Highest),
        (ModelWork::Block, DType::F32, High),
        (ModelWork::Forward, DType::F32, High),
        (ModelWork::Train, DType::F32, High),
        (ModelWork::Block, DType::BF16, Highest),
        (ModelWork::Forward, DType::BF16, Highest),
        (ModelWork::Train, DType::BF16, Highest),
        (ModelWork::Train, DType::F16, Highest),
        (ModelWork::Generate, DType::F32, Highest),
        (ModelWork::Generate, DType::BF16, Highest),
    ];
    for (work, dtype, precision) in cases {
        let (gpu, config, profile) = (gpu.clone(), config.clone(), args.gpt2_profile.clone());
        jobs.push((
            format!("gpt2 {} {}{}", work.name(), dtype.name(), if precision == High { " high" } else { "" }),
            Box::new(move |rows: &mut Vec<Row>| {
                let run = ModelRun { gpu: &gpu, config: &config, batch, seq, dtype, work, precision };
                rows.push(run.row(work.reps(reps), profile.as_deref())?);
                Ok(())
            }),
        ));
    }
}

/// One model-level measurement (see [`gpt2_model_jobs`]).
struct ModelRun<'a> {
    gpu: &'a Gpu,
    config: &'a wgkernels::nn::GptConfig,
    batch: usize,
    seq: usize,
    dtype: DType,
    work: ModelWork,
    /// The device's f32 matmul precision during the run (restored after).
    precision: wgkernels::MatmulPrecision,
}

impl ModelRun<'_> {
    /// Model FLOPs per token of this work (PaLM's count, attention without causal savings).
    fn flops_per_token(&self) -> f64 {
        let c = self.config;
        let (l, d, s) = (c.layers as f64, c.d_model as f64, self.seq as f64);
        let plan = self.plan_config();
        let n = plan.params() as f64 - (c.context * c.d_model) as f64; // positions are a lookup
        match self.work {
            ModelWork::Block => 24.0 * d * d + 4.0 * s * d,
            ModelWork::Forward | ModelWork::Generate => 2.0 * n + 4.0 * l * d * s,
            ModelWork::Train => 6.0 * n + 12.0 * l * d * s,
        }
    }

    fn plan_config(&self) -> wgkernels::plan::ModelConfig {
        let c = self.config;
        wgkernels::plan::ModelConfig {
            name: "gpt2",
            layers: c.layers,
            d_model: c.d_model,
            heads: c.heads,
            vocab: c.vocab,
            context: c.context,
        }
    }

    fn row(&self, reps: usize, profile_dir: Option<&str>) -> wgkernels::Result<Row> {
        let before = self.gpu.f32_matmul_precision();
        self.gpu.set_f32_matmul_precision(self.precision);
        let row = self.row_at_precision(reps, profile_dir);
        self.gpu.set_f32_matmul_precision(before);
        row
    }

    fn row_at_precision(&self, reps: usize, profile_dir: Option<&str>) -> wgkernels::Result<Row> {
        use wgkernels::autograd::no_grad;
        use wgkernels::nn::{Gpt, Module, Sampling};
        use wgkernels::optim::{AdamW, AdamWConfig, DynamicLossScale, Optimizer as _};
        let (gpu, batch, seq, dtype) = (self.gpu, self.batch, self.seq, self.dtype);
        let model = Gpt::new(gpu, self.config, dtype, 1)?;
        let vocab = self.config.vocab as u64;
        let ids: Vec<u32> = (0..batch * seq).map(|i| ((i as u64 * 7919 + 13) % vocab) as u32).collect();
        let targets: Vec<u32> = (0..batch * seq).map(|i| ((i as u64 * 104729 + 7) % vocab) as u32).collect();
        let x = Tensor::randn(gpu, &[batch, seq, self.config.d_model], dtype, 2)?;
        let params: Vec<_> = model.parameters().into_iter().map(|(_, p)| p).collect();
        let mut opt = AdamW::new(gpu, AdamWConfig { lr: 1e-4, ..Default::default() })?;
        let mut scaler = DynamicLossScale::default();
        let prompt: Vec<u32> = ids[..16].to_vec();
        let mut step = || -> wgkernels::Result<()> {
            match self.work {
                ModelWork::Block => no_grad(|| model.h[0].forward(&x.clone().constant())?.tensor().realize().map(drop)),
                ModelWork::Forward => no_grad(|| model.forward(&ids, batch, seq)?.tensor().realize().map(drop)),
                ModelWork::Generate => no_grad(|| model.generate(&prompt, GENERATED, Sampling::default()).map(drop)),
                ModelWork::Train => {
                    let loss = model.loss(&ids, &targets, batch, seq)?;
                    if dtype == DType::F16 {
                        loss.mul_scalar(scaler.scale)?.backward()?;
                        opt.step_params_scaled(&params, scaler.scale)?;
                        scaler.update(opt.last_step_skipped()?);
                    } else {
                        loss.backward()?;
                        opt.step_params(&params)?;
                    }
                    params.iter().for_each(|p| p.zero_grad());
                    Ok(())
                }
            }
        };
        let t = measure(gpu, 1, reps, &mut step)?;
        // The peak of one more step on its own (measure's cache-flush buffer excluded).
        gpu.synchronize()?;
        gpu.reset_peak();
        // What that step asks of the host and driver (counted before the closing wait): a
        // wait inside the step idles the GPU, as does a driver-side gap per submit.
        let before = gpu.stats();
        let t0 = std::time::Instant::now();
        step()?;
        let host_ms = t0.elapsed().as_secs_f64() * 1e3;
        let after = gpu.stats();
        gpu.synchronize()?;
        let peak = gpu.memory().peak_live_bytes;
        if let Some(dir) = profile_dir {
            let p = wgkernels::Profiler::start(gpu)?;
            step()?;
            let report = p.finish()?;
            let total = report.total_ms();
            let mut text =
                format!("{} {} on {}: {:.2} ms GPU time\n", self.work.name(), dtype.name(), gpu.info().name, total);
            let mut kernels = report.by_kernel();
            kernels.sort_by(|a, b| b.2.total_cmp(&a.2));
            for (k, n, ms) in kernels {
                let _ = writeln!(text, "{ms:9.3} ms {:5.1}% {n:5} {k}", 100.0 * ms / total);
            }
            // The same time split by workgroup grid (a matmul's grid is its output tiles, so
            // this names the shapes), the 40 largest.
            let mut shapes = report.by_kernel_and_grid();
            shapes.sort_by(|a, b| b.2.total_cmp(&a.2));
            let _ = writeln!(text, "\nby kernel and workgroup grid (largest 40):");
            for ((k, [x, y, z]), n, ms) in shapes.into_iter().take(40) {
                let each = ms / n as f64;
                let _ =
                    writeln!(text, "{ms:9.3} ms {:5.1}% {n:5} × {each:7.3} ms  {x}×{y}×{z}  {k}", 100.0 * ms / total);
            }
            let path = format!("{dir}/gpt2_{}_{}_{}.txt", self.work.name(), dtype.name(), self.precision.name());
            std::fs::write(&path, text)
                .map_err(|e| wgkernels::Error::InvalidArgument { op: "bench", msg: format!("{path}: {e}") })?;
        }
        let tokens = if self.work == ModelWork::Generate { GENERATED } else { batch * seq } as f64;
        let tokens_per_s = tokens / (t.wall_ms * 1e-3);
        let tflops = tokens_per_s * self.flops_per_token() / 1e12;
        let mut variant = format!(
            "{} TFLOP/s model, GPU busy {:.0}% ({:.2} of {:.2} ms)",
            sig3(tflops),
            100.0 * t.median_ms / t.wall_ms,
            t.median_ms,
            t.wall_ms
        );
        let _ = write!(
            variant,
            ", a step records {} commands in {} submits with {} host waits, {} new buffers, {} new bind groups, \
             host {host_ms:.2} ms ({:.2} recording in wgpu, {:.2} submitting)",
            after.dispatches - before.dispatches,
            after.submits - before.submits,
            after.host_waits - before.host_waits,
            after.buffers_created - before.buffers_created,
            after.bind_groups_created - before.bind_groups_created,
            (after.record_ns - before.record_ns) as f64 * 1e-6,
            (after.submit_ns - before.submit_ns) as f64 * 1e-6,
        );
        let human = wgkernels::plan::human;
        if self.work == ModelWork::Train {
            use wgkernels::plan::{Optimizer, Precision};
            let precision = if dtype == DType::F32 { Precision::Fp32 } else { Precision::Mixed16 };
            let plan = self.plan_config().training(batch, seq, precision, Optimizer::Adam, true, false).total();
            let _ = write!(variant, ", peak {} (plan {})", human(peak), human(plan));
        } else {
            let _ = write!(variant, ", peak {}", human(peak));
        }
        // PyTorch's eager f32 beside f32 rows, its bf16 autocast beside the 16-bit ones.
        // PyTorch's eager f32 beside Highest, TF32 (its 'high') beside High.
        let (torch_dtype, torch_variant) = match (dtype, self.precision) {
            (DType::F32, wgkernels::MatmulPrecision::Highest) => ("f32", "eager-f32"),
            (DType::F32, _) => ("f32", "eager-tf32"),
            _ => ("bf16", "amp-bf16"),
        };
        if dtype == DType::F32 {
            variant = format!("{}, {variant}", self.precision.name());
        }
        Ok(Row {
            bench: "gpt2",
            size: self.work.name().into(),
            dtype: dtype.name(),
            variant,
            ms: t.wall_ms,
            // Both columns are the back-to-back wall clock (host work included), as
            // PyTorch's steps are timed; the GPU-busy time is in the variant.
            rate: tokens_per_s,
            wall_rate: tokens_per_s,
            unit: "tokens/s",
            torch_key: Some(("gpt2".into(), self.work.name().into(), torch_dtype.into(), torch_variant.into())),
        })
    }
}
