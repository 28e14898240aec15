//! Trains a small MLP on three interleaved spirals with hand-written backward passes built
//! from the library's kernels (matmul with fused bias/ReLU epilogues, fused cross-entropy,
//! transposed views for the weight gradients) and the fused AdamW step (all six tensors in
//! one dispatch; `--unfused` composes the same update from element-wise ops instead).
//! Prints the loss every 50 steps; the loss must fall below `TARGET_LOSS`.
//!
//!     cargo run --release --example train_mlp [-- --steps 600] [--unfused]

#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

use wgkernels::ops::matmul::{Activation, MatmulOptions};
use wgkernels::optim::{adamw_unfused, AdamW, AdamWConfig, Optimizer};
use wgkernels::{DType, Gpu, Result, Tensor};

/// Cross-entropy the training must reach (ln 3 ≈ 1.10 is chance level).
pub const TARGET_LOSS: f32 = 0.35;
const CLASSES: usize = 3;
const POINTS_PER_CLASS: usize = 100;
const HIDDEN: usize = 64;

/// Three spirals in the plane: (points [N, 2], labels [N]).
pub fn spirals() -> (Vec<f32>, Vec<u32>) {
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for c in 0..CLASSES {
        for i in 0..POINTS_PER_CLASS {
            let r = i as f32 / POINTS_PER_CLASS as f32;
            // A deterministic jitter instead of a random one: reproducible everywhere.
            let jitter = ((i * 7919 + c * 104729) % 1000) as f32 / 1000.0 * 0.4 - 0.2;
            let t = c as f32 * 4.0 + r * 4.0 + jitter;
            xs.extend([r * t.sin(), r * t.cos()]);
            ys.push(c as u32);
        }
    }
    (xs, ys)
}

fn init(gpu: &Gpu, shape: &[usize], scale: f32, seed: u64) -> Result<Tensor> {
    Tensor::randn(gpu, shape, DType::F32, seed)?.mul(&Tensor::full(gpu, &[1], scale, DType::F32)?)?.contiguous()
}

fn relu(bias: &Tensor) -> MatmulOptions<'_> {
    MatmulOptions { bias: Some(bias), activation: Activation::Relu, ..Default::default() }
}

/// Trains for `steps` full-batch steps with the fused AdamW step (or, `fused = false`, the
/// same update from element-wise ops); returns the loss every `every` steps (and the last).
pub fn train(gpu: &Gpu, steps: usize, every: usize, verbose: bool, fused: bool) -> Result<Vec<(usize, f32)>> {
    let (xs, ys) = spirals();
    let n = ys.len();
    let x = Tensor::from_slice(gpu, &xs, &[n, 2])?; // [N, 2]
                                                    // w1 [2, H], b1 [H], w2 [H, H], b2 [H], w3 [H, 3], b3 [3]
    let mut params = vec![
        init(gpu, &[2, HIDDEN], 1.0, 1)?,
        init(gpu, &[HIDDEN], 0.0, 2)?,
        init(gpu, &[HIDDEN, HIDDEN], (2.0 / HIDDEN as f32).sqrt(), 3)?,
        init(gpu, &[HIDDEN], 0.0, 4)?,
        init(gpu, &[HIDDEN, CLASSES], (1.0 / HIDDEN as f32).sqrt(), 5)?,
        init(gpu, &[CLASSES], 0.0, 6)?,
    ];
    // Adam without weight decay (a tiny model on a fixed dataset), lr 0.02.
    let config = AdamWConfig { lr: 0.02, weight_decay: 0.0, ..Default::default() };
    let mut opt = AdamW::new(gpu, config.clone())?;
    // The unfused path's moments.
    let mut moments: Vec<(Tensor, Tensor)> = params
        .iter()
        .map(|p| Ok((Tensor::zeros(gpu, p.shape(), DType::F32)?, Tensor::zeros(gpu, p.shape(), DType::F32)?)))
        .collect::<Result<_>>()?;
    let zero = Tensor::zeros(gpu, &[1], DType::F32)?;
    let mut losses = Vec::new();
    for step in 1..=steps {
        let [w1, b1, w2, b2, w3, b3] = &params[..] else { unreachable!("six parameters") };
        // Forward: ReLU fused into the matmuls' epilogues. h1, h2: [N, H]; logits: [N, 3].
        let h1 = x.matmul_with(w1, &relu(b1))?;
        let h2 = h1.matmul_with(w2, &relu(b2))?;
        let logits = h2.matmul_with(w3, &MatmulOptions { bias: Some(b3), ..Default::default() })?;
        let (loss, dlogits) = logits.cross_entropy(&ys)?; // dlogits already divided by N
                                                          // Backward: weight gradients through transposed views (no copies); ReLU' = [h > 0].
        let dw3 = h2.transpose(0, 1)?.matmul(&dlogits)?;
        let db3 = dlogits.sum(0)?;
        let dz2 = dlogits.matmul(&w3.transpose(0, 1)?)?.mul(&h2.gt(&zero)?)?;
        let dw2 = h1.transpose(0, 1)?.matmul(&dz2)?;
        let db2 = dz2.sum(0)?;
        let dz1 = dz2.matmul(&w2.transpose(0, 1)?)?.mul(&h1.gt(&zero)?)?;
        let dw1 = x.transpose(0, 1)?.matmul(&dz1)?;
        let db1 = dz1.sum(0)?;
        let grads = [dw1, db1, dw2, db2, dw3, db3];
        if fused {
            opt.step(&mut params, &grads)?;
        } else {
            for ((p, (m, v)), g) in params.iter_mut().zip(moments.iter_mut()).zip(&grads) {
                (*p, *m, *v) = adamw_unfused(p, g, m, v, step as u64, &config)?;
            }
        }
        if step % every == 0 || step == steps {
            let l = loss.to_vec_f32()?[0];
            if verbose {
                println!("step {step:>5}  loss {l:.4}");
            }
            losses.push((step, l));
        }
    }
    Ok(losses)
}

#[allow(dead_code)] // the test includes this file for `train` only
fn main() -> Result<()> {
    let args = args::Args::parse("train_mlp [--steps N] [--unfused]", &["--unfused"], &["--steps"], false);
    let steps: usize = args.parsed("--steps", 600);
    let fused = !args.has("--unfused");
    let gpu = Gpu::new()?;
    println!(
        "training a 2-{HIDDEN}-{HIDDEN}-3 MLP on {} spiral points, full batch, {} Adam, on {}",
        CLASSES * POINTS_PER_CLASS,
        if fused { "fused" } else { "unfused (element-wise ops)" },
        gpu.info().name
    );
    let t0 = std::time::Instant::now();
    let losses = train(&gpu, steps, 50, true, fused)?;
    let last = losses.last().map(|l| l.1).unwrap_or(f32::NAN);
    println!(
        "final loss {last:.4} after {steps} steps in {:.1} s (target < {TARGET_LOSS})",
        t0.elapsed().as_secs_f64()
    );
    if last.is_nan() || last >= TARGET_LOSS {
        eprintln!("the loss did not fall below {TARGET_LOSS}");
        std::process::exit(1);
    }
    Ok(())
}
