//! Data-parallel training of a GPT: one replica per device (and per process under MPI),
//! each on its part of every batch, gradients averaged through host memory after each
//! backward (`wgkernels::parallel`). Prints tokens/s, the time the gradient
//! synchronisation took, and with `--check` trains the same model on one device on the
//! whole batches and compares the parameters at the end (exit status 1 when they differ).
//!
//!     cargo run --release --example data_parallel -- --check              # 2 devices here
//!     cargo run --release --example data_parallel -- --devices 1          # the baseline
//!     cargo build --release --features mpi --example data_parallel
//!     mpirun -n 2 target/release/examples/data_parallel --mpi --check     # 2 processes
//!
//! Flags: `--devices N` replicas per process (default: one per adapter of the best kind,
//! or 2 on the one adapter of a machine that has one), `--steps N` (default 5), `--model
//! tiny|gpt2` (gpt2: GPT-2 small at 8 × 1024 tokens a step across all replicas; tiny: 4
//! layers of width 64 at 8 × 64), `--mpi` (feature `mpi`: the processes of `mpirun`).
//! SGD with momentum keeps the check exact to rounding: Adam divides by the root of the
//! squared gradient, which magnifies differences in near-zero gradients.

#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

use std::time::Instant;

use wgkernels::autograd::Var;
use wgkernels::nn::{Gpt, GptConfig, Module};
use wgkernels::optim::{Optimizer, Sgd, SgdConfig};
use wgkernels::parallel::{DataParallel, DataParallelOptions, ProcessGroup};
use wgkernels::{DType, Gpu, GpuOptions, Result};

const USAGE: &str = "data_parallel [--devices N] [--steps N] [--model tiny|gpt2] [--mpi] [--check]";

fn main() -> Result<()> {
    let args = args::Args::parse(USAGE, &["--mpi", "--check"], &["--devices", "--steps", "--model"], false);
    let steps: usize = args.parsed("--steps", 5);
    let (config, batch, seq) = match args.value("--model").unwrap_or("tiny") {
        "gpt2" => (GptConfig::gpt2_small(), 8, 1024),
        _ => (GptConfig { vocab: 512, context: 64, layers: 4, heads: 4, d_model: 64 }, 8, 64),
    };
    let group: Option<Box<dyn ProcessGroup>> = if args.has("--mpi") { Some(mpi_group()?) } else { None };
    let (rank, processes) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.size()));
    let gpus = match args.value("--devices") {
        Some(n) => {
            let n: usize = n.parse().unwrap_or_else(|_| panic!("--devices {n}: a whole number"));
            (0..n).map(|_| Gpu::new()).collect::<Result<Vec<_>>>()?
        }
        None => {
            let all = Gpu::per_adapter(GpuOptions::from_env()?)?;
            if all.len() > 1 || group.is_some() {
                all
            } else {
                vec![all[0].clone(), Gpu::new()?]
            }
        }
    };
    let replicas = gpus.len() * processes;
    assert!(batch % replicas == 0, "batch {batch} does not split across {replicas} replicas");
    let rows = batch / replicas;
    let say = |line: String| {
        if rank == 0 {
            println!("{line}");
        }
    };
    say(format!(
        "{} processes × {} devices ({}), batch {batch} × {seq}: {rows} rows per replica",
        processes,
        gpus.len(),
        gpus.iter().map(|g| g.info().name.clone()).collect::<Vec<_>>().join(", ")
    ));
    let sgd = SgdConfig { lr: 0.05, momentum: 0.9, ..Default::default() };
    let build = |gpu: &Gpu| Gpt::new(gpu, &config, DType::F32, 1);
    let opts = DataParallelOptions::default();
    let mut dp = match group {
        Some(g) => DataParallel::with_group(&gpus, build, &opts, g)?,
        None => DataParallel::new(&gpus, build, &opts)?,
    };
    let mut optimizers = gpus.iter().map(|g| Sgd::new(g, sgd.clone())).collect::<Result<Vec<_>>>()?;
    // The whole batch of step s, the same in every process: tokens of a seeded walk.
    let tokens = |s: usize| -> Vec<u32> {
        let mut state = (s as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..batch * seq + 1)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % config.vocab as u64) as u32
            })
            .collect()
    };
    let (mut sync_ms, mut group_ms) = (0.0, 0.0);
    let mut timed = None;
    for s in 0..steps {
        if s == 1 {
            // Step 0 compiled the kernels and tuned the matmuls: time the rest.
            timed = Some(Instant::now());
        }
        let all = tokens(s);
        let losses = dp.map(|r, model| {
            let first = (rank * gpus.len() + r) * rows * seq;
            model.loss(&all[first..first + rows * seq], &all[first + 1..first + rows * seq + 1], rows, seq)
        })?;
        let loss0 = losses[0].tensor().to_vec_f32()?[0];
        dp.backward(&losses)?;
        for (r, opt) in optimizers.iter_mut().enumerate() {
            opt.step_params(dp.params(r))?;
        }
        dp.zero_grad();
        if s > 0 {
            sync_ms += dp.last_sync().ms;
            group_ms += dp.last_sync().group_ms;
        }
        say(format!("step {s}: loss of replica 0's rows {loss0:.4}, gradient sync {:.1} ms", dp.last_sync().ms));
    }
    for gpu in &gpus {
        gpu.synchronize()?;
    }
    if let Some(t) = timed {
        let timed_steps = (steps - 1) as f64;
        let secs = t.elapsed().as_secs_f64();
        say(format!(
            "{:.0} tokens/s over {} steps; gradient sync {:.1} ms a step ({:.1} ms of it in the process group), {:.2} MB of f32 gradients in {} buckets, {} of {} bucket reads started inside the backward",
            timed_steps * (batch * seq) as f64 / secs,
            steps - 1,
            sync_ms / timed_steps,
            group_ms / timed_steps,
            dp.last_sync().bytes as f64 / 1e6,
            dp.last_sync().buckets,
            dp.last_sync().reads_during_backward,
            dp.last_sync().buckets * dp.replicas().len(),
        ));
    }
    if args.has("--check") && rank == 0 {
        // The same steps on one device, on the whole batches.
        let model = build(&gpus[0])?;
        let params: Vec<Var> = model.parameters().into_iter().map(|(_, p)| p).collect();
        let mut opt = Sgd::new(&gpus[0], sgd)?;
        for s in 0..steps {
            let all = tokens(s);
            model.loss(&all[..batch * seq], &all[1..], batch, seq)?.backward()?;
            opt.step_params(&params)?;
            params.iter().for_each(Var::zero_grad);
        }
        let mut worst = 0.0f64;
        for (k, (p, q)) in params.iter().zip(dp.params(0)).enumerate() {
            let (a, b) = (p.tensor().to_vec_f32()?, q.tensor().to_vec_f32()?);
            for (x, y) in a.iter().zip(&b) {
                let excess = ((x - y).abs() as f64) / (1e-6 + 1e-4 * x.abs() as f64);
                if excess > worst {
                    worst = excess;
                }
                if excess > 1.0 {
                    eprintln!("check FAILED: parameter {k}: {y} on the replicas, {x} on one device");
                    std::process::exit(1);
                }
            }
        }
        println!(
            "check: after {steps} steps every parameter equals one device's on the whole batches (worst |diff| at {:.2} of 1e-6 + 1e-4·|want|)",
            worst
        );
    }
    Ok(())
}

#[cfg(feature = "mpi")]
fn mpi_group() -> Result<Box<dyn ProcessGroup>> {
    Ok(Box::new(wgkernels::parallel::MpiGroup::init()?))
}

#[cfg(not(feature = "mpi"))]
fn mpi_group() -> Result<Box<dyn ProcessGroup>> {
    eprintln!("--mpi needs the `mpi` feature: cargo build --release --features mpi --example data_parallel");
    std::process::exit(2)
}
