//! A probe, not a benchmark: the host's share of GPT-2 small's steps — recording,
//! wgpu's validation and tracking, the crate's own work — with the GPU taken out. On
//! wgpu's noop backend every call is accepted and nothing runs, so a step's wall clock is
//! the host's alone. It times a KV-cache decode (batch 1, f32: ms per token) and a training
//! step (f32, f16 with loss scaling and bf16; batch 1 × 1024 tokens: the dispatches of B 8 ×
//! 1024, a host buffer per tensor an eighth the size), with dispatches counted and the
//! host time per dispatch. Values read back are not computed (zeros), so the drawn tokens
//! and the loss scale's decisions are not a real run's; the work recorded is.
//!
//!     cargo run --release --features noop-backend --example host_overhead [decode|train] [REPS]
//!
//! With `decode` or `train` it runs that part alone (REPS repeats: a host profiler's window,
//! e.g. `perf record`, then holds little else).
//!
//! `WGK_BACKEND` is set to `noop` here; the noop adapter reports the H200's limits and
//! features (src/device/mod.rs), so the paths taken are the H200's. What the driver adds on
//! a real device (Vulkan command recording) is not in these figures.
use std::time::Instant;
use wgkernels::autograd::no_grad;
use wgkernels::nn::{Gpt, GptConfig, Module, Sampling};
use wgkernels::optim::{AdamW, AdamWConfig, DynamicLossScale, Optimizer as _};
use wgkernels::{DType, Gpu, GpuOptions, Tensor};

fn main() -> wgkernels::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args.first().map(String::as_str);
    let reps: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(0);
    let opts = GpuOptions { backends: Some(wgkernels::wgpu::Backends::NOOP), ..GpuOptions::from_env()? };
    let gpu = Gpu::with_options(opts)?;
    println!("adapter: {} (the host's time only)", gpu.info().name);
    let config = GptConfig::gpt2_small();
    // Per step: wall ms and the device's counters' growth (commands recorded, submits, host
    // waits, buffers and bind groups created, ms recording in wgpu and submitting).
    #[derive(Clone, Copy)]
    struct PerStep {
        ms: f64,
        commands: f64,
        submits: f64,
        waits: f64,
        buffers: f64,
        bind_groups: f64,
        record_ms: f64,
        submit_ms: f64,
    }
    impl PerStep {
        fn per(self, n: f64) -> PerStep {
            PerStep {
                ms: self.ms / n,
                commands: self.commands / n,
                submits: self.submits / n,
                waits: self.waits / n,
                buffers: self.buffers / n,
                bind_groups: self.bind_groups / n,
                record_ms: self.record_ms / n,
                submit_ms: self.submit_ms / n,
            }
        }
    }
    let time = |f: &mut dyn FnMut() -> wgkernels::Result<()>, reps: usize| -> wgkernels::Result<PerStep> {
        // Two untimed runs: the first compiles pipelines and tunes, the second is a training
        // step's first with AdamW's moments (a step once took 1.3 s here before settling).
        f()?;
        f()?;
        gpu.synchronize()?;
        let before = gpu.stats();
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        gpu.synchronize()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let after = gpu.stats();
        let n = |a: u64, b: u64| (a - b) as f64;
        let total = PerStep {
            ms,
            commands: n(after.dispatches, before.dispatches),
            submits: n(after.submits, before.submits),
            waits: n(after.host_waits, before.host_waits),
            buffers: n(after.buffers_created, before.buffers_created),
            bind_groups: n(after.bind_groups_created, before.bind_groups_created),
            record_ms: n(after.record_ns, before.record_ns) * 1e-6,
            submit_ms: n(after.submit_ns, before.submit_ns) * 1e-6,
        };
        Ok(total.per(reps as f64))
    };
    let report = |what: &str, p: PerStep| {
        println!(
            "{what:<24} {:8.2} ms {:6.0} commands {:4.0} submits {:4.1} waits {:5.1} new buffers {:5.1} new bind groups \
             {:5.1} µs/command ({:.2} ms recording in wgpu, {:.2} submitting)",
            p.ms,
            p.commands,
            p.submits,
            p.waits,
            p.buffers,
            p.bind_groups,
            p.ms * 1e3 / p.commands,
            p.record_ms,
            p.submit_ms
        );
    };
    if only != Some("train") {
        let model = Gpt::new(&gpu, &config, DType::F32, 1)?;
        let prompt: Vec<u32> = (0..16).collect();
        let tokens = 64;
        let generate = || model.generate(&prompt, tokens, Sampling::default()).map(drop);
        let decode = time(&mut || generate(), reps.max(3))?;
        report("decode f32, per token", decode.per(tokens as f64));
        if only == Some("decode") {
            return Ok(());
        }
        // One block's forward (the bench's `gpt2 block`): a handful of large dispatches, where
        // the host's time per block bounds the wall clock if it exceeds the GPU's.
        let x = Tensor::randn(&gpu, &[1, 1024, config.d_model], DType::F32, 2)?.constant();
        let block = || no_grad(|| model.h[0].forward(&x)?.tensor().realize().map(drop));
        report("block forward f32", time(&mut || block(), 20)?);
    }
    let (batch, seq) = (1, 1024);
    let ids: Vec<u32> = (0..batch * seq).map(|i| (i * 7919 % config.vocab) as u32).collect();
    let targets: Vec<u32> = (0..batch * seq).map(|i| (i * 104729 % config.vocab) as u32).collect();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let model = Gpt::new(&gpu, &config, dtype, 1)?;
        let params: Vec<_> = model.parameters().into_iter().map(|(_, p)| p).collect();
        let mut opt = AdamW::new(&gpu, AdamWConfig::default())?;
        let mut scaler = DynamicLossScale::default();
        let mut step = || -> wgkernels::Result<()> {
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
        };
        report(&format!("train step {}", dtype.name()), time(&mut step, reps.max(5))?);
    }
    Ok(())
}
