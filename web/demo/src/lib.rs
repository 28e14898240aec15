//! The browser demo: what element-wise fusion buys, and a tiny GPT trained in the page and
//! generating over its KV cache, on the page's WebGPU adapter. `run_demo()` (exported to JavaScript) returns one
//! JSON report that web/main.js renders (a table, an SVG plot, the adapter's name) and
//! web/test.sh checks in headless Chromium: every computed result is checked here, against
//! float64 on the host or against a second way to compute it, and `ok` says whether all held.

use serde_json::{json, Value};
use wasm_bindgen::prelude::*;
use web_time::Instant;
use wgkernels::nn::{Gpt, GptConfig, Module, Sampling};
use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
use wgkernels::{DType, Gpu, GpuOptions, Result, Tensor};

/// Runs the demo and returns its report as JSON text; an error becomes a rejected promise
/// with the library's message.
#[wasm_bindgen]
pub async fn run_demo() -> std::result::Result<String, JsValue> {
    report().await.map(|r| r.to_string()).map_err(|e| JsValue::from_str(&e.to_string()))
}

async fn report() -> Result<Value> {
    let gpu = Gpu::new_async(GpuOptions::default()).await?;
    let info = gpu.info();
    let fusion = fusion_gains(&gpu).await?;
    let check = fusion_check(&gpu).await?;
    let gpt = tiny_gpt(&gpu).await?;
    let ok = check["ok"] == true && gpt["cache_matches_full_forward"] == true && gpt["loss_fell"] == true;
    Ok(json!({
        "adapter": info.name,
        "backend": format!("{:?}", info.backend),
        "device_type": format!("{:?}", info.device_type),
        "shader_f16": info.features.contains(wgkernels::wgpu::Features::SHADER_F16),
        "fusion": fusion,
        "fusion_check": check,
        "gpt": gpt,
        "ok": ok,
    }))
}

/// The chain the demo times: gelu(x·a + b)·c + x — one generated kernel fused, five
/// kernels unfused. Bytes moved fused: 4 inputs read, 1 output written, f32.
fn chain(x: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    x.mul(a)?.add(b)?.gelu_tanh()?.mul(c)?.add(x)
}

fn gelu_tanh(z: f64) -> f64 {
    0.5 * z * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z.powi(3))).tanh())
}

/// Milliseconds per chain, fused and unfused, over sizes 4 K to 1 M elements.
async fn fusion_gains(gpu: &Gpu) -> Result<Value> {
    let mut rows = Vec::new();
    for log2 in (12..=20).step_by(2) {
        let n = 1usize << log2;
        let t = |seed| Tensor::randn(gpu, &[n], DType::F32, seed);
        let (x, a, b, c) = (t(1)?, t(2)?, t(3)?, t(4)?);
        let reps = 5;
        let mut ms = [0.0; 2];
        for (k, fused) in [true, false].into_iter().enumerate() {
            gpu.set_fusion(fused);
            // The first run compiles the kernels; time the runs after it.
            chain(&x, &a, &b, &c)?.realize()?;
            gpu.synchronize_async().await?;
            let start = Instant::now();
            for _ in 0..reps {
                chain(&x, &a, &b, &c)?.realize()?;
            }
            gpu.synchronize_async().await?;
            ms[k] = start.elapsed().as_secs_f64() * 1e3 / reps as f64;
        }
        gpu.set_fusion(true);
        // The fused kernel's traffic: 4 tensors read, 1 written.
        let bytes = 5.0 * n as f64 * 4.0;
        rows.push(json!({
            "elements": n,
            "fused_ms": ms[0],
            "unfused_ms": ms[1],
            "fused_gbps": bytes / ms[0] / 1e6,
            "unfused_gbps": bytes / ms[1] / 1e6,
            "gain": ms[1] / ms[0],
        }));
    }
    Ok(Value::Array(rows))
}

/// The chain at an odd size, fused and unfused, against float64 on the host:
/// |got − want| ≤ 1e-5 + 1e-5·|want| everywhere.
async fn fusion_check(gpu: &Gpu) -> Result<Value> {
    let n = 10_007;
    let t: Vec<Tensor> = (1..=4).map(|seed| Tensor::randn(gpu, &[n], DType::F32, 100 + seed)).collect::<Result<_>>()?;
    let mut host = Vec::new();
    for x in &t {
        host.push(x.to_vec_f32_async().await?);
    }
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let [x, a, b, c] = [0, 1, 2, 3].map(|k| host[k][i] as f64);
            gelu_tanh(x * a + b) * c + x
        })
        .collect();
    let mut out = serde_json::Map::new();
    let mut ok = true;
    for (name, fused) in [("fused", true), ("unfused", false)] {
        gpu.set_fusion(fused);
        let got = chain(&t[0], &t[1], &t[2], &t[3])?.to_vec_f32_async().await?;
        let (mut worst, mut worst_excess, mut max_err) = (0, f64::NEG_INFINITY, 0.0f64);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let err = (g as f64 - w).abs();
            let excess = err - (1e-5 + 1e-5 * w.abs());
            max_err = max_err.max(err);
            if excess > worst_excess {
                (worst, worst_excess) = (i, excess);
            }
        }
        ok &= worst_excess <= 0.0;
        out.insert(
            name.to_string(),
            json!({ "max_abs_err": max_err, "worst_element": worst, "got": got[worst], "want": want[worst] }),
        );
    }
    gpu.set_fusion(true);
    out.insert("elements".into(), json!(n));
    out.insert("ok".into(), json!(ok));
    Ok(Value::Object(out))
}

/// A two-layer GPT trained in the page (autograd, attention backward, fused AdamW) on a
/// sequence that repeats a 12-token pattern, then generating greedily over its KV cache:
/// each generated token is checked against the argmax of the full forward over the whole
/// sequence so far, and the report says how much of the pattern the model continues.
async fn tiny_gpt(gpu: &Gpu) -> Result<Value> {
    let config = GptConfig { vocab: 96, context: 64, layers: 2, heads: 4, d_model: 64 };
    let model = Gpt::new(gpu, &config, DType::F32, 7)?;
    let pattern: Vec<u32> = (0..12).map(|i| (i * 37 + 11) % config.vocab as u32).collect();
    let text: Vec<u32> = (0..4096).map(|i| pattern[i % pattern.len()]).collect();
    let (batch, seq, steps) = (2, 24, 40);
    let params: Vec<_> = model.parameters().into_iter().map(|(_, p)| p).collect();
    let mut opt = AdamW::new(gpu, AdamWConfig { lr: 1e-2, weight_decay: 0.0, ..Default::default() })?;
    let mut losses = Vec::new();
    let (mut start, mut first_ms) = (Instant::now(), 0.0);
    let mut stats_after_first = gpu.stats();
    let mut phases = [0.0; 3];
    for step in 0..steps {
        // Windows at offsets that walk through the pattern's phases.
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        for b in 0..batch {
            let at = (step * 7 + b * 5) % (text.len() - seq - 1);
            ids.extend_from_slice(&text[at..at + seq]);
            targets.extend_from_slice(&text[at + 1..at + seq + 1]);
        }
        let t0 = Instant::now();
        let loss = model.loss(&ids, &targets, batch, seq)?;
        loss.tensor().realize()?;
        gpu.synchronize_async().await?;
        let t1 = Instant::now();
        loss.backward()?;
        gpu.synchronize_async().await?;
        let t2 = Instant::now();
        opt.step_params(&params)?;
        gpu.synchronize_async().await?;
        phases = [(t1 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3, t2.elapsed().as_secs_f64() * 1e3];
        params.iter().for_each(|p| p.zero_grad());
        if step == 0 || step + 1 == steps {
            losses.push(loss.tensor().to_vec_f32_async().await?[0]);
        }
        if step == 0 {
            // The first step compiles every kernel of the forward, backward and optimizer.
            first_ms = start.elapsed().as_secs_f64() * 1e3;
            start = Instant::now();
            stats_after_first = gpu.stats();
        }
    }
    let train_ms = start.elapsed().as_secs_f64() * 1e3;
    let stats = gpu.stats();
    let per_step = |a: u64, b: u64| (a - b) as f64 / (steps - 1) as f64;
    let prompt = pattern[..5].to_vec();
    let new_tokens = 16;
    // Compile the decode kernels once, then time a second generation.
    model.generate_async(&prompt, 2, Sampling::default()).await?;
    let start = Instant::now();
    let tokens = model.generate_async(&prompt, new_tokens, Sampling::default()).await?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let mut matches = true;
    for len in prompt.len()..tokens.len() {
        let logits = wgkernels::autograd::no_grad(|| model.forward(&tokens[..len], 1, len))?;
        let last = logits.tensor().narrow(0, len - 1, 1)?.to_vec_f32_async().await?;
        let argmax = (0..last.len()).max_by(|&i, &j| last[i].total_cmp(&last[j])).unwrap_or(0) as u32;
        matches &= argmax == tokens[len];
    }
    let continued = (prompt.len()..tokens.len()).filter(|&i| tokens[i] == pattern[i % pattern.len()]).count();
    Ok(json!({
        "config": format!("{} layers, d {}, {} heads, vocab {}, context {}", config.layers, config.d_model, config.heads, config.vocab, config.context),
        "train": { "steps": steps, "batch": batch, "seq": seq, "loss_first": losses[0], "loss_last": losses[1], "first_step_ms": first_ms, "phases": phases, "ms_per_step": train_ms / (steps - 1) as f64,
            "dispatches_per_step": per_step(stats.dispatches, stats_after_first.dispatches),
            "compiles_per_step": per_step(stats.pipelines_compiled, stats_after_first.pipelines_compiled),
            "submits_per_step": per_step(stats.submits, stats_after_first.submits) },
        "pattern": pattern,
        "prompt": prompt,
        "tokens": tokens,
        "pattern_continued": format!("{continued} of {new_tokens}"),
        "generate_ms": ms,
        "tokens_per_s": new_tokens as f64 / (ms / 1e3),
        "cache_matches_full_forward": matches,
        "loss_fell": losses[1] < 0.5 * losses[0],
    }))
}
