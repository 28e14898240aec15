//! How much memory does a GPT-2 need? Parameter counts and bytes for weights, gradients,
//! optimizer state, activations and the KV cache, for the GPT-2 family, in fp32 and mixed
//! precision, whether each fits a memory size and the largest batch that does; then a small
//! configuration built for real on the GPU, estimate beside measurement.
//!
//!     cargo run --release --example memory_plan -- --memory 16GB [--seq 1024]

#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

use wgkernels::ops::matmul::{Activation, MatmulOptions};
use wgkernels::ops::norm::SoftmaxOptions;
use wgkernels::plan::{human, parse_bytes, ModelConfig, Optimizer, Precision, GPT2};
use wgkernels::{DType, Gpu, Tensor};

fn main() -> wgkernels::Result<()> {
    let args = args::Args::parse("memory_plan [--memory 16GB] [--seq 1024]", &[], &["--memory", "--seq"], false);
    let arg = |name: &str| args.value(name).map(String::from);
    let memory_arg = arg("--memory").unwrap_or_else(|| "16GB".into());
    let memory =
        parse_bytes(&memory_arg).unwrap_or_else(|| panic!("--memory {memory_arg:?}: expected e.g. 16GB or 24GiB"));
    let seq: usize = arg("--seq").map(|s| s.parse().expect("--seq N")).unwrap_or(1024);

    println!("GPT-2 family, sequences of {seq} tokens, memory budget {} ({memory_arg})\n", human(memory));
    println!(
        "{:<20} {:>14} {:>12} {:>12} {:>12} {:>12} {:>16} {:>16}",
        "model", "parameters", "weights", "grads", "Adam", "SGD-mom", "act/token", "act/token ckpt"
    );
    for (p, label) in [(Precision::Fp32, "fp32"), (Precision::Mixed16, "mixed 16-bit + f32 masters")] {
        println!("-- {label}");
        for m in GPT2 {
            let e = m.training(1, seq, p, Optimizer::Adam, true, false);
            let s = m.training(1, seq, p, Optimizer::SgdMomentum, true, false);
            println!(
                "{:<20} {:>14} {:>12} {:>12} {:>12} {:>12} {:>16} {:>16}",
                m.name,
                m.params(),
                human(e.weights),
                human(e.gradients),
                human(e.optimizer),
                human(s.optimizer),
                human(m.activation_bytes_per_token(seq, p, false, false)),
                human(m.activation_bytes_per_token(seq, p, true, true)),
            );
        }
    }
    println!("\n(act/token: saved activations per token over all layers without flash attention; ckpt: with flash attention and full checkpointing)");

    println!("\nTraining with Adam, batch of 8 × {seq}, and the largest batch that fits {}:", human(memory));
    println!(
        "{:<20} {:<8} {:<10} {:>12} {:>12} {:>8} {:>10}",
        "model", "prec", "attention", "batch 8", "fits?", "max b", "max b ckpt"
    );
    for m in GPT2 {
        for (p, pl) in [(Precision::Fp32, "fp32"), (Precision::Mixed16, "mixed")] {
            for (flash, al) in [(false, "naive"), (true, "flash")] {
                let e = m.training(8, seq, p, Optimizer::Adam, flash, false);
                let fits = if e.total() <= memory { "yes" } else { "no" };
                let b = m.max_batch(memory, seq, p, Optimizer::Adam, flash, false);
                let bc = m.max_batch(memory, seq, p, Optimizer::Adam, flash, true);
                println!(
                    "{:<20} {:<8} {:<10} {:>12} {:>12} {:>8} {:>10}",
                    m.name,
                    pl,
                    al,
                    human(e.total()),
                    fits,
                    b,
                    bc
                );
            }
        }
    }

    println!("\nInference KV cache (mixed precision):");
    for m in GPT2 {
        let per = m.kv_bytes_per_token(Precision::Mixed16);
        println!(
            "{:<20} {:>10} per token, {:>10} at the full context of {}",
            m.name,
            human(per),
            human(per * m.context as u64),
            m.context
        );
    }

    measured()?;
    levers()?;
    Ok(())
}

/// Builds a small GPT-2 on the GPU, runs a forward pass that keeps what a backward pass
/// would need, and an SGD-momentum step, measuring the bytes at each point.
/// Bytes of the momentum state one SGD step with momentum on random gradients allocates
/// (one state tensor per parameter), taken from the tensors it keeps.
fn sgd_momentum_state(gpu: &Gpu, params: &[&Tensor]) -> wgkernels::Result<u64> {
    let mut momentum = Vec::new();
    let beta = Tensor::full(gpu, &[1], 0.9, DType::F32)?;
    let lr = Tensor::full(gpu, &[1], 1e-3, DType::F32)?;
    for p in params {
        let g = Tensor::randn(gpu, p.shape(), DType::F32, 99)?;
        let m = Tensor::zeros(gpu, p.shape(), DType::F32)?.mul(&beta)?.add(&g)?;
        m.realize()?;
        p.sub(&m.mul(&lr)?)?.realize()?;
        momentum.push(m);
    }
    gpu.synchronize()?;
    Ok(momentum.iter().map(|m| (m.numel() * 4) as u64).sum())
}

fn measured() -> wgkernels::Result<()> {
    let gpu = Gpu::new()?;
    let software = gpu.info().device_type == wgpu::DeviceType::Cpu;
    let cfg = ModelConfig { name: "tiny", layers: 2, d_model: 256, heads: 4, vocab: 4096, context: 256 };
    let (batch, seq) = if software { (2, 64) } else { (8, 256) };
    let (d, a, hd) = (cfg.d_model, cfg.heads, cfg.d_model / cfg.heads);
    println!(
        "\nMeasured on {} ({:?}): {} layers, d {d}, {a} heads, vocabulary {}, batch {batch} × {seq}, fp32",
        gpu.info().name,
        gpu.info().backend,
        cfg.layers,
        cfg.vocab
    );
    gpu.reset_peak();
    let base = gpu.memory().live_bytes;

    // Weights [in, out] as the matmuls take them; biases and norms [n].
    let mut seed = 0u64;
    let mut randn = |shape: &[usize]| {
        seed += 1;
        Tensor::randn(&gpu, shape, DType::F32, seed)
    };
    let wte = randn(&[cfg.vocab, d])?;
    let wpe = randn(&[cfg.context, d])?;
    let mut layers = Vec::new();
    for _ in 0..cfg.layers {
        layers.push([
            randn(&[d])?,
            randn(&[d])?,
            randn(&[d, 3 * d])?,
            randn(&[3 * d])?,
            randn(&[d, d])?,
            randn(&[d])?,
            randn(&[d])?,
            randn(&[d])?,
            randn(&[d, 4 * d])?,
            randn(&[4 * d])?,
            randn(&[4 * d, d])?,
            randn(&[d])?,
        ]);
    }
    let ln_f = (randn(&[d])?, randn(&[d])?);
    let weights_measured = gpu.memory().live_bytes - base;

    // Forward, keeping every activation a backward pass would read.
    let mut saved: Vec<Tensor> = Vec::new();
    let mut x = randn(&[batch * seq, d])?
        .add(&wpe.narrow(0, 0, seq)?.unsqueeze(0)?.expand(&[batch, seq, d])?.reshape(&[batch * seq, d])?)?;
    let after_weights = gpu.memory().live_bytes;
    let scale = 1.0 / (hd as f32).sqrt();
    for [ln1_w, ln1_b, w_qkv, b_qkv, w_o, b_o, ln2_w, ln2_b, w_fc, b_fc, w_proj, b_proj] in &layers {
        let h = x.layer_norm(Some(ln1_w), Some(ln1_b), 1e-5)?;
        let qkv = h.matmul_with(w_qkv, &MatmulOptions { bias: Some(b_qkv), ..Default::default() })?;
        // [b·s, 3d] → [b, s, 3, a, hd]; q, k, v as views permuted to [b, 1, a, s, hd].
        let qkv5 = qkv.reshape(&[batch, seq, 3, a, hd])?;
        let head = |i: usize| qkv5.narrow(2, i, 1)?.permute(&[0, 2, 3, 1, 4]);
        let (q, k, v) = (head(0)?, head(1)?, head(2)?);
        let scores = q.matmul(&k.transpose(3, 4)?)?;
        let probs = scores.softmax_with(&SoftmaxOptions { scale: Some(scale), causal: true, ..Default::default() })?;
        let att = probs.matmul(&v)?.permute(&[0, 3, 1, 2, 4])?.reshape(&[batch * seq, d])?;
        let proj = att.matmul_with(w_o, &MatmulOptions { bias: Some(b_o), ..Default::default() })?;
        let x1 = x.add(&proj)?;
        let h2 = x1.layer_norm(Some(ln2_w), Some(ln2_b), 1e-5)?;
        let fc = h2.matmul_with(
            w_fc,
            &MatmulOptions { bias: Some(b_fc), activation: Activation::GeluTanh, ..Default::default() },
        )?;
        let out = fc.matmul_with(w_proj, &MatmulOptions { bias: Some(b_proj), ..Default::default() })?;
        let x2 = x1.add(&out)?;
        saved.extend([h, qkv, scores, probs, att, proj, x1.clone(), h2, fc, out]);
        x = x2;
    }
    let hf = x.layer_norm(Some(&ln_f.0), Some(&ln_f.1), 1e-5)?;
    let logits = hf.matmul(&wte.transpose(0, 1)?)?;
    let targets: Vec<u32> = (0..batch * seq).map(|i| (i * 7919 % cfg.vocab) as u32).collect();
    let (loss, dlogits) = logits.cross_entropy(&targets)?;
    gpu.synchronize()?;
    let activations_measured = gpu.memory().live_bytes - after_weights - (logits.numel() * 8) as u64;
    let peak = gpu.memory().peak_live_bytes - base;
    println!("loss {:.3} (random weights; ln({}) = {:.3})", loss.to_vec_f32()?[0], cfg.vocab, (cfg.vocab as f32).ln());

    // SGD with momentum on random gradients: one state tensor per parameter.
    let params: Vec<&Tensor> = layers.iter().flatten().chain([&wte, &wpe, &ln_f.0, &ln_f.1]).collect();
    let opt_measured = sgd_momentum_state(&gpu, &params)?;

    let est = cfg.training(batch, seq, Precision::Fp32, Optimizer::SgdMomentum, false, false);
    println!("{:<34} {:>12} {:>12}", "", "estimate", "measured");
    println!("{:<34} {:>12} {:>12}", "weights (f32)", human(cfg.params() * 4), human(weights_measured));
    println!(
        "{:<34} {:>12} {:>12}",
        "saved activations (no flash)",
        human(est.activations),
        human(activations_measured)
    );
    println!(
        "{:<34} {:>12} {:>12}",
        "logits + dlogits",
        human(2 * (batch * seq * cfg.vocab) as u64 * 4),
        human((logits.numel() + dlogits.numel()) as u64 * 4)
    );
    println!("{:<34} {:>12} {:>12}", "SGD momentum state", human(est.optimizer), human(opt_measured));
    println!("{:<34} {:>12} {:>12}", "peak during the forward", "", human(peak));
    println!(
        "\nThe measured activations are what this forward keeps (10 tensors per layer: no dropout masks, GELU fused into\n\
         its matmul, attention scores and probabilities in f32); the estimate uses the 34·d + 5·a·s values per token and\n\
         layer of Korthikanti et al., which count those too. Measured bytes include the pool's rounding to size classes\n\
         (at most 25 %); the weights' count is exact here because the parameter tensors are counted one by one."
    );
    drop(saved);
    Ok(())
}

/// The memory levers side by side: a training step (forward, backward, AdamW) of a small
/// GPT through autograd, its measured peak beside `plan`'s estimate, plain, with per-block
/// activation checkpointing, as 2 accumulated micro-batches, and in bf16 with f32 masters.
fn levers() -> wgkernels::Result<()> {
    use wgkernels::nn::{Gpt, GptConfig, Module};
    use wgkernels::optim::{AdamW, AdamWConfig, Optimizer as _};
    let gpu = Gpu::new()?;
    let software = gpu.info().device_type == wgpu::DeviceType::Cpu;
    let config = if software {
        GptConfig { vocab: 256, context: 64, layers: 4, heads: 4, d_model: 64 }
    } else {
        GptConfig { vocab: 4096, context: 256, layers: 8, heads: 8, d_model: 512 }
    };
    let (batch, seq) = if software { (4, 64) } else { (16, 256) };
    println!(
        "\nMemory levers, measured: a training step (forward, backward, AdamW; the second, with the moments allocated) of a {}-layer GPT, d {}, vocabulary {}, batch {batch} × {seq}",
        config.layers, config.d_model, config.vocab
    );
    println!("{:<34} {:>12} {:>12} {:>8}", "", "estimate", "measured", "ratio");
    let plan = ModelConfig {
        name: "levers",
        layers: config.layers,
        d_model: config.d_model,
        heads: config.heads,
        vocab: config.vocab,
        context: config.context,
    };
    let ids: Vec<u32> = (0..batch * seq).map(|i| (i * 7919 % config.vocab) as u32).collect();
    let targets: Vec<u32> = (0..batch * seq).map(|i| (i * 104729 % config.vocab) as u32).collect();
    for (label, dtype, checkpointing, micro) in [
        ("plain, f32", DType::F32, false, 1),
        ("checkpointing per block", DType::F32, true, 1),
        ("2 accumulated micro-batches", DType::F32, false, 2),
        ("both", DType::F32, true, 2),
        ("bf16 weights, f32 masters", DType::BF16, false, 1),
    ] {
        // A device per row: each peak starts from nothing.
        let gpu = Gpu::new()?;
        let mut model = Gpt::new(&gpu, &config, dtype, 1)?;
        model.checkpointing = checkpointing;
        let params: Vec<_> = model.parameters().into_iter().map(|(_, p)| p).collect();
        let mut opt = AdamW::new(&gpu, AdamWConfig::default())?;
        let rows = batch / micro * seq;
        // The second step is measured: from then on AdamW's moments are alive through the
        // whole step, as in a training loop (the first step allocates them after backward).
        for step in 0..2 {
            if step == 1 {
                gpu.reset_peak();
            }
            for m in 0..micro {
                let (i, t) = (&ids[m * rows..(m + 1) * rows], &targets[m * rows..(m + 1) * rows]);
                model.loss(i, t, batch / micro, seq)?.mul_scalar(1.0 / micro as f32)?.backward()?;
            }
            opt.step_params(&params)?;
            params.iter().for_each(|p| p.zero_grad());
            gpu.synchronize()?;
        }
        let measured = gpu.memory().peak_live_bytes;
        let precision = if dtype == DType::F32 { Precision::Fp32 } else { Precision::Mixed16 };
        let estimate = plan.training(batch / micro, seq, precision, Optimizer::Adam, true, checkpointing).total();
        println!(
            "{label:<34} {:>12} {:>12} {:>8.2}",
            human(estimate),
            human(measured),
            measured as f64 / estimate as f64
        );
    }
    println!(
        "(estimate: plan's weights, gradients, Adam state and activations for the micro-batch with flash attention;\n\
         measured: the crate's accounting of live device bytes at the step's peak, pool rounding included)"
    );
    Ok(())
}
