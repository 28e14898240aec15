//! Trains a tiny GPT, character by character, on a corpus this example generates (a small
//! grammar of sentences and sums, so nothing is downloaded and everything may be shipped),
//! through the crate's autograd, `nn` and fused AdamW. A progress bar shows the loss and
//! tokens/s; the loss curve is written as SVG; text is sampled at the end. The last line,
//! `final loss X (baseline Y)`, compares the held-out loss X with Y, the entropy of the
//! corpus's characters (what a model that ignores context can reach), both in nats.
//!
//!     cargo run --release --example train_gpt -- --quick      # lavapipe: a few minutes
//!     cargo run --release --example train_gpt                 # a GPU: a larger model
//!
//! Flags: `--steps N`, `--checkpointing` (recompute each block in the backward),
//! `--accumulate K` (K micro-batches of batch/K rows per step), `--dtype f16|bf16` (16-bit
//! weights and activations, f32 master weights in AdamW; f16 with a dynamic loss scale), `--svg PATH` (default
//! train_gpt_loss.svg), `--save PATH.safetensors`, `--profile` (the kernels of step 3).

#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

use std::fmt::Write as _;
use std::time::Instant;

use wgkernels::autograd::no_grad;
use wgkernels::nn::{Gpt, GptConfig, Module, Sampling};
use wgkernels::optim::{AdamW, AdamWConfig, DynamicLossScale, Optimizer};
use wgkernels::plan::{human, ModelConfig, Optimizer as PlanOptimizer, Precision};
use wgkernels::{DType, Gpu, Result};

const USAGE: &str =
    "train_gpt [--quick] [--steps N] [--checkpointing] [--accumulate K] [--dtype f32|f16|bf16] [--profile] [--svg PATH] [--save PATH]";

/// A deterministic text of about `lines` lines: sentences of a small grammar and sums in
/// words and digits.
fn corpus(lines: usize) -> String {
    const SUBJECTS: [&str; 8] =
        ["the cat", "a dog", "the old man", "my sister", "the bird", "a child", "the queen", "our teacher"];
    const VERBS: [&str; 8] = ["sees", "likes", "finds", "follows", "draws", "feeds", "meets", "hears"];
    const OBJECTS: [&str; 8] = [
        "the ball",
        "a red apple",
        "the river",
        "a small house",
        "the moon",
        "an old book",
        "the garden",
        "a green hat",
    ];
    const WHEN: [&str; 6] =
        ["in the morning", "at night", "by the sea", "near the hill", "after dinner", "in the rain"];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut pick = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 33) as usize % n
    };
    let mut text = String::new();
    for i in 0..lines {
        if i % 4 == 3 {
            let (a, b) = (pick(50), pick(50));
            let _ = writeln!(text, "{a} plus {b} is {}.", a + b);
        } else {
            let s = SUBJECTS[pick(8)];
            let _ = writeln!(text, "{s} {} {} {}.", VERBS[pick(8)], OBJECTS[pick(8)], WHEN[pick(6)]);
        }
    }
    text
}

/// Entropy in nats of the distribution of `tokens`.
fn unigram_entropy(tokens: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![0usize; vocab];
    tokens.iter().for_each(|&t| counts[t as usize] += 1);
    let n = tokens.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).ln()).sum()
}

/// `batch` windows of `seq + 1` tokens from `data` at pseudo-random starts: (ids, targets).
fn batch_of(data: &[u32], batch: usize, seq: usize, state: &mut u64) -> (Vec<u32>, Vec<u32>) {
    let (mut ids, mut targets) = (Vec::new(), Vec::new());
    for _ in 0..batch {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let start = (*state >> 11) as usize % (data.len() - seq - 1);
        ids.extend_from_slice(&data[start..start + seq]);
        targets.extend_from_slice(&data[start + 1..start + seq + 1]);
    }
    (ids, targets)
}

/// The loss curve (training, and held-out points) as an SVG line chart.
fn loss_svg(train: &[f32], held_out: &[(usize, f32)], baseline: f64) -> String {
    let (w, h, pad) = (640.0, 360.0, 40.0);
    let max = train.iter().cloned().fold(baseline as f32, f32::max) as f64 * 1.05;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (train.len().max(2) - 1) as f64;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / max;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\">train_gpt: loss (nats) per step; dots: held-out; dashed: unigram entropy {baseline:.3}</text>\n"
    );
    let points: Vec<String> =
        train.iter().enumerate().map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v as f64))).collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"steelblue\" stroke-width=\"1.5\" points=\"{}\"/>",
        points.join(" ")
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" x2=\"{0}\" y1=\"{1:.1}\" y2=\"{1:.1}\" stroke=\"gray\" stroke-dasharray=\"4 3\"/>",
        w - pad,
        y(baseline)
    );
    for &(i, v) in held_out {
        let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"darkorange\"/>", x(i), y(v as f64));
    }
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = writeln!(s, "<text x=\"4\" y=\"{:.1}\">{v:.2}</text>", y(v) + 4.0);
    }
    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\">step {}</text>\n</svg>", w / 2.0, h - 8.0, train.len());
    s
}

fn main() -> Result<()> {
    let args = args::Args::parse(
        USAGE,
        &["--quick", "--profile", "--checkpointing"],
        &["--steps", "--svg", "--save", "--accumulate", "--dtype"],
        false,
    );
    let quick = args.has("--quick");
    let gpu = Gpu::new()?;
    println!("{}", gpu.info());

    let text = corpus(if quick { 6000 } else { 60000 });
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let encode = |c: char| chars.binary_search(&c).unwrap_or(0) as u32;
    let tokens: Vec<u32> = text.chars().map(encode).collect();
    let split = tokens.len() * 9 / 10;
    let (train, held) = (&tokens[..split], &tokens[split..]);
    let baseline = unigram_entropy(&tokens, chars.len());

    let (config, batch, seq, steps, lr) = if quick {
        (GptConfig { vocab: chars.len(), context: 64, layers: 2, heads: 4, d_model: 64 }, 8, 64, 150, 3e-3)
    } else {
        (GptConfig { vocab: chars.len(), context: 256, layers: 6, heads: 6, d_model: 384 }, 32, 256, 1500, 1e-3)
    };
    let steps = args.parsed("--steps", steps);
    let dtype = match args.value("--dtype").unwrap_or("f32") {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => {
            eprintln!("--dtype {other}: f32, f16 or bf16\nusage: {USAGE}");
            std::process::exit(2);
        }
    };
    // f16 needs the loss scaled so that small gradients survive; bf16 has f32's range.
    let mut scaler = DynamicLossScale::new(if dtype == DType::F16 { 65536.0 } else { 1.0 });
    let mut model = Gpt::new(&gpu, &config, dtype, 1)?;
    model.checkpointing = args.has("--checkpointing");
    let accumulate: usize = args.parsed("--accumulate", 1);
    if accumulate == 0 || batch % accumulate != 0 {
        eprintln!("--accumulate {accumulate}: a divisor of the batch ({batch})");
        std::process::exit(2);
    }
    let params: Vec<_> = model.parameters().into_iter().map(|(_, p)| p).collect();
    println!(
        "corpus: {} characters, vocabulary {}; model: {} layers, d {}, {} heads, {} parameters, {dtype:?}; batch {batch} × {seq}, {steps} steps",
        tokens.len(),
        chars.len(),
        config.layers,
        config.d_model,
        config.heads,
        model.parameter_count()
    );
    let mut opt = AdamW::new(&gpu, AdamWConfig { lr, weight_decay: 0.01, ..Default::default() })?;
    let bar = indicatif::ProgressBar::new(steps as u64).with_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut state = 7u64;
    let mut held_state = 11u64;
    let held_loss = |state: &mut u64| -> Result<f32> {
        no_grad(|| {
            let mut total = 0.0;
            for _ in 0..4 {
                let (ids, targets) = batch_of(held, batch, seq, state);
                total += model.loss(&ids, &targets, batch, seq)?.tensor().to_vec_f32()?[0];
            }
            Ok(total / 4.0)
        })
    };
    let (mut losses, mut held_out) = (Vec::new(), Vec::new());
    gpu.reset_peak();
    let t0 = Instant::now();
    for step in 0..steps {
        // Linear warm-up over 10 steps, then cosine decay to a tenth.
        let progress = step as f32 / steps as f32;
        let scale = if step < 10 {
            (step + 1) as f32 / 10.0
        } else {
            0.1 + 0.45 * (1.0 + (std::f32::consts::PI * progress).cos())
        };
        opt.config_mut().lr = lr * scale;
        let (ids, targets) = batch_of(train, batch, seq, &mut state);
        let profile = if args.has("--profile") && step == 3 { Some(wgkernels::Profiler::start(&gpu)?) } else { None };
        // K micro-batches, each loss scaled by 1/K: the gradients add up to the whole batch's.
        let rows = batch / accumulate * seq;
        let mut value = 0.0;
        for m in 0..accumulate {
            let (i, t) = (&ids[m * rows..(m + 1) * rows], &targets[m * rows..(m + 1) * rows]);
            let loss = model.loss(i, t, batch / accumulate, seq)?.mul_scalar(1.0 / accumulate as f32)?;
            loss.mul_scalar(scaler.scale)?.backward()?;
            value += loss.tensor().to_vec_f32()?[0];
        }
        if dtype == DType::F32 {
            opt.step_params(&params)?;
        } else {
            opt.step_params_scaled(&params, scaler.scale)?;
            scaler.update(opt.last_step_skipped()?);
        }
        if let Some(p) = profile {
            let report = p.finish()?;
            for (k, n, ms) in report.by_kernel().iter().take(25) {
                eprintln!("{ms:9.2} ms {n:4} {k}");
            }
        }
        params.iter().for_each(|p| p.zero_grad());
        losses.push(value);
        if step % 25 == 24 || step + 1 == steps {
            held_out.push((step, held_loss(&mut held_state)?));
        }
        let tok_s = ((step + 1) * batch * seq) as f64 / t0.elapsed().as_secs_f64();
        bar.set_message(format!("loss {value:.3}, {:.1}k tok/s", tok_s / 1e3));
        bar.inc(1);
    }
    bar.finish();
    let elapsed = t0.elapsed().as_secs_f64();
    let peak = gpu.memory().peak_live_bytes;
    let plan = ModelConfig {
        name: "train_gpt",
        layers: config.layers,
        d_model: config.d_model,
        heads: config.heads,
        vocab: config.vocab,
        context: config.context,
    }
    .training(
        batch / accumulate,
        seq,
        if dtype == DType::F32 { Precision::Fp32 } else { Precision::Mixed16 },
        PlanOptimizer::Adam,
        true,
        model.checkpointing,
    );
    println!(
        "{steps} steps in {elapsed:.1} s: {:.0} tokens/s; peak device memory {} (plan's estimate for this model, micro-batch and checkpointing: {})",
        (steps * batch * seq) as f64 / elapsed,
        human(peak),
        human(plan.total())
    );

    let svg_path = args.value("--svg").unwrap_or("train_gpt_loss.svg");
    std::fs::write(svg_path, loss_svg(&losses, &held_out, baseline))
        .map_err(|e| wgkernels::Error::InvalidArgument { op: "train_gpt", msg: format!("{svg_path}: {e}") })?;
    println!("loss curve: {svg_path}");
    if let Some(path) = args.value("--save") {
        wgkernels::nn::save_safetensors(&model, std::path::Path::new(path))?;
        println!("weights: {path}");
    }

    let prompt: Vec<u32> = "the cat ".chars().map(encode).collect();
    let sampling = Sampling { temperature: 0.8, top_k: 8, seed: 3 };
    let t = Instant::now();
    let sample = model.generate(&prompt, 120, sampling)?;
    let cached_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    model.generate_uncached(&prompt, 120, sampling)?;
    let uncached_s = t.elapsed().as_secs_f64();
    println!(
        "generation, batch 1: {:.1} tokens/s with the KV cache, {:.1} recomputing the window",
        120.0 / cached_s,
        120.0 / uncached_s
    );
    let sample: String = sample.iter().map(|&t| chars[t as usize]).collect();
    println!("sample:\n{sample}\n");
    let final_loss = held_loss(&mut held_state)?;
    println!("final loss {final_loss:.3} (baseline {baseline:.3})");
    if final_loss as f64 >= baseline {
        eprintln!("the held-out loss did not fall below the unigram baseline");
        std::process::exit(1);
    }
    Ok(())
}
