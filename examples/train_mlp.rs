//! Trains a small MLP on three interleaved spirals with hand-written backward passes built
//! from the library's kernels (matmul with fused bias/ReLU epilogues, fused cross-entropy,
//! transposed views for the weight gradients) and Adam composed from element-wise ops.
//! Prints the loss every 50 steps; the loss must fall below `TARGET_LOSS`.
//!
//!     cargo run --release --example train_mlp [-- --steps 600]

use wgkernels::ops::matmul::{Activation, MatmulOptions};
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

struct Param {
    value: Tensor,
    m: Tensor,
    v: Tensor,
}

impl Param {
    fn new(gpu: &Gpu, shape: &[usize], scale: f32, seed: u64) -> Result<Self> {
        let value = Tensor::randn(gpu, shape, DType::F32, seed)?.mul(&Tensor::full(gpu, &[1], scale, DType::F32)?)?;
        Ok(Self { value, m: Tensor::zeros(gpu, shape, DType::F32)?, v: Tensor::zeros(gpu, shape, DType::F32)? })
    }

    /// Adam (β = 0.9, 0.999), composed from element-wise kernels: the unfused baseline that
    /// a fused optimizer step replaces.
    fn adam(&mut self, grad: &Tensor, lr: f32, step: i32) -> Result<()> {
        let gpu = grad.gpu();
        let s = |x: f32| Tensor::full(gpu, &[1], x, DType::F32);
        let (b1, b2) = (0.9f32, 0.999f32);
        self.m = self.m.mul(&s(b1)?)?.add(&grad.mul(&s(1.0 - b1)?)?)?;
        self.v = self.v.mul(&s(b2)?)?.add(&grad.square()?.mul(&s(1.0 - b2)?)?)?;
        let m_hat = self.m.mul(&s(1.0 / (1.0 - b1.powi(step)))?)?;
        let v_hat = self.v.mul(&s(1.0 / (1.0 - b2.powi(step)))?)?;
        let update = m_hat.div(&v_hat.sqrt()?.add(&s(1e-8)?)?)?.mul(&s(lr)?)?;
        self.value = self.value.sub(&update)?;
        Ok(())
    }
}

fn relu(bias: &Tensor) -> MatmulOptions<'_> {
    MatmulOptions { bias: Some(bias), activation: Activation::Relu, ..Default::default() }
}

/// Trains for `steps` full-batch steps; returns the loss every `every` steps (and the last).
pub fn train(gpu: &Gpu, steps: usize, every: usize, verbose: bool) -> Result<Vec<(usize, f32)>> {
    let (xs, ys) = spirals();
    let n = ys.len();
    let x = Tensor::from_slice(gpu, &xs, &[n, 2])?; // [N, 2]
    let mut w1 = Param::new(gpu, &[2, HIDDEN], 1.0, 1)?;
    let mut b1 = Param::new(gpu, &[HIDDEN], 0.0, 2)?;
    let mut w2 = Param::new(gpu, &[HIDDEN, HIDDEN], (2.0 / HIDDEN as f32).sqrt(), 3)?;
    let mut b2 = Param::new(gpu, &[HIDDEN], 0.0, 4)?;
    let mut w3 = Param::new(gpu, &[HIDDEN, CLASSES], (1.0 / HIDDEN as f32).sqrt(), 5)?;
    let mut b3 = Param::new(gpu, &[CLASSES], 0.0, 6)?;
    let zero = Tensor::zeros(gpu, &[1], DType::F32)?;
    let mut losses = Vec::new();
    for step in 1..=steps {
        // Forward: ReLU fused into the matmuls' epilogues. h1, h2: [N, H]; logits: [N, 3].
        let h1 = x.matmul_with(&w1.value, &relu(&b1.value))?;
        let h2 = h1.matmul_with(&w2.value, &relu(&b2.value))?;
        let logits = h2.matmul_with(&w3.value, &MatmulOptions { bias: Some(&b3.value), ..Default::default() })?;
        let (loss, dlogits) = logits.cross_entropy(&ys)?; // dlogits already divided by N
                                                          // Backward: weight gradients through transposed views (no copies); ReLU' = [h > 0].
        let dw3 = h2.transpose(0, 1)?.matmul(&dlogits)?;
        let db3 = dlogits.sum(0)?;
        let dz2 = dlogits.matmul(&w3.value.transpose(0, 1)?)?.mul(&h2.gt(&zero)?)?;
        let dw2 = h1.transpose(0, 1)?.matmul(&dz2)?;
        let db2 = dz2.sum(0)?;
        let dz1 = dz2.matmul(&w2.value.transpose(0, 1)?)?.mul(&h1.gt(&zero)?)?;
        let dw1 = x.transpose(0, 1)?.matmul(&dz1)?;
        let db1 = dz1.sum(0)?;
        let lr = 0.02;
        let t = step as i32;
        for (p, g) in
            [(&mut w1, &dw1), (&mut b1, &db1), (&mut w2, &dw2), (&mut b2, &db2), (&mut w3, &dw3), (&mut b3, &db3)]
        {
            p.adam(g, lr, t)?;
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
    let steps: usize = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--steps")
        .map(|w| w[1].parse().expect("--steps N"))
        .unwrap_or(600);
    let gpu = Gpu::new()?;
    println!(
        "training a 2-{HIDDEN}-{HIDDEN}-3 MLP on {} spiral points, full batch, Adam, on {}",
        CLASSES * POINTS_PER_CLASS,
        gpu.info().name
    );
    let t0 = std::time::Instant::now();
    let losses = train(&gpu, steps, 50, true)?;
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
