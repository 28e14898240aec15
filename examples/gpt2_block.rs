//! One GPT-2-small transformer block forward — layernorm, QKV matmul, causal attention,
//! output projection, residual, layernorm, MLP with GELU, residual — on random weights,
//! timed per kernel with the profiler, fused against unfused, and checked against each other.
//!
//! Fused: bias and GELU in the matmul epilogues, flash attention reading q, k, v straight
//! out of the QKV projection (BSHD views, no copies; no S×S matrix), remaining element-wise
//! chains through the fusion JIT. Unfused: the same function from separate kernels (bias
//! add, GELU, q·kᵀ matmul, scale, additive causal mask, softmax, matmul with v), fusion off.
//!
//!     cargo run --release --example gpt2_block [-- --batch 8 --seq 1024]

#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

use wgkernels::ops::attention::{attention, AttentionLayout, AttentionOptions, AttentionPath};
use wgkernels::ops::matmul::{Activation, MatmulOptions};
use wgkernels::{DType, Gpu, Profiler, Result, Tensor};

const D: usize = 768;
const HEADS: usize = 12;

struct Block {
    ln1: (Tensor, Tensor),
    w_qkv: Tensor, // [D, 3D]
    b_qkv: Tensor,
    w_o: Tensor, // [D, D]
    b_o: Tensor,
    ln2: (Tensor, Tensor),
    w_fc: Tensor, // [D, 4D]
    b_fc: Tensor,
    w_proj: Tensor, // [4D, D]
    b_proj: Tensor,
}

impl Block {
    fn random(gpu: &Gpu) -> Result<Self> {
        let mut seed = 100;
        let mut w = |shape: &[usize], scale: f32| -> Result<Tensor> {
            seed += 1;
            Tensor::randn(gpu, shape, DType::F32, seed)?.mul(&Tensor::full(gpu, &[1], scale, DType::F32)?)
        };
        let s = 0.02;
        Ok(Self {
            ln1: (w(&[D], 0.1)?.add(&Tensor::full(gpu, &[1], 1.0, DType::F32)?)?, w(&[D], s)?),
            w_qkv: w(&[D, 3 * D], s)?,
            b_qkv: w(&[3 * D], s)?,
            w_o: w(&[D, D], s)?,
            b_o: w(&[D], s)?,
            ln2: (w(&[D], 0.1)?.add(&Tensor::full(gpu, &[1], 1.0, DType::F32)?)?, w(&[D], s)?),
            w_fc: w(&[D, 4 * D], s)?,
            b_fc: w(&[4 * D], s)?,
            w_proj: w(&[4 * D, D], s)?,
            b_proj: w(&[D], s)?,
        })
    }

    /// The block on x [B·S, D].
    fn forward(&self, x: &Tensor, batch: usize, seq: usize, fused: bool, causal_mask: &Tensor) -> Result<Tensor> {
        let gpu = x.gpu();
        let hd = D / HEADS;
        let linear = |x: &Tensor, w: &Tensor, b: &Tensor, act: Activation| -> Result<Tensor> {
            if fused {
                x.matmul_with(w, &MatmulOptions { bias: Some(b), activation: act, ..Default::default() })
            } else {
                let y = x.matmul(w)?.add(b)?;
                match act {
                    Activation::GeluTanh => y.gelu_tanh(),
                    _ => Ok(y),
                }
            }
        };
        let h = x.layer_norm(Some(&self.ln1.0), Some(&self.ln1.1), 1e-5)?;
        let qkv = linear(&h, &self.w_qkv, &self.b_qkv, Activation::None)?; // [B·S, 3·D]
        let scale = 1.0 / (hd as f32).sqrt();
        let att = if fused {
            // q, k, v as [B, S, H, hd] views of the projection (row stride 3·D): no copies.
            let heads = qkv.reshape(&[batch, seq, 3 * HEADS, hd])?;
            let part = |i: usize| heads.narrow(2, i * HEADS, HEADS);
            let opts = AttentionOptions {
                causal: true,
                layout: AttentionLayout::Bshd,
                path: AttentionPath::Flash,
                ..Default::default()
            };
            attention(&part(0)?, &part(1)?, &part(2)?, &opts)?.reshape(&[batch * seq, D])?
        } else {
            let qkv = qkv.reshape(&[batch, seq, 3, HEADS, hd])?;
            let head = |i: usize| qkv.narrow(2, i, 1)?.permute(&[0, 2, 3, 1, 4]); // [B, 1, H, S, hd]
            let (q, k, v) = (head(0)?, head(1)?, head(2)?);
            let scores = q.matmul(&k.transpose(3, 4)?)?;
            let probs = scores.mul(&Tensor::full(gpu, &[1], scale, DType::F32)?)?.add(causal_mask)?.softmax(-1)?;
            probs.matmul(&v)?.permute(&[0, 3, 1, 2, 4])?.reshape(&[batch * seq, D])?
        };
        let x1 = x.add(&linear(&att, &self.w_o, &self.b_o, Activation::None)?)?;
        let h2 = x1.layer_norm(Some(&self.ln2.0), Some(&self.ln2.1), 1e-5)?;
        let fc = linear(&h2, &self.w_fc, &self.b_fc, Activation::GeluTanh)?;
        x1.add(&linear(&fc, &self.w_proj, &self.b_proj, Activation::None)?)
    }
}

fn main() -> Result<()> {
    let args = args::Args::parse("gpt2_block [--batch B] [--seq S]", &[], &["--batch", "--seq"], false);
    let arg = |name: &str, default: usize| args.parsed(name, default);
    let gpu = Gpu::new()?;
    let software = gpu.info().device_type == wgpu::DeviceType::Cpu;
    let batch = arg("--batch", if software { 1 } else { 8 });
    let seq = arg("--seq", if software { 128 } else { 1024 });
    println!("GPT-2-small block (d {D}, {HEADS} heads), batch {batch} × {seq} tokens, f32, on {}", gpu.info().name);
    let block = Block::random(&gpu)?;
    let x = Tensor::randn(&gpu, &[batch * seq, D], DType::F32, 1)?;
    // -inf above the diagonal: the additive mask of the unfused path.
    let mask: Vec<f32> = (0..seq * seq).map(|e| if e % seq > e / seq { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Tensor::from_slice(&gpu, &mask, &[seq, seq])?;

    let xv = x.to_vec_f32()?;
    let mut outputs = Vec::new();
    for fused in [true, false] {
        // Unfused means one kernel per op: the element-wise fusion JIT is off too.
        gpu.set_fusion(fused);
        block.forward(&x, batch, seq, fused, &mask)?.realize()?; // warm-up: pipelines, autotuning, pool
        gpu.synchronize()?;
        let before = gpu.stats().dispatches;
        let profile = Profiler::start(&gpu)?;
        let y = block.forward(&x, batch, seq, fused, &mask)?;
        y.realize()?;
        let report = profile.finish()?;
        let dispatches = gpu.stats().dispatches - before;
        println!("\n{} ({dispatches} commands):\n{report}", if fused { "fused" } else { "unfused" });
        // The block's contribution y − x: the residual would hide differences in it.
        let delta: Vec<f32> = y.to_vec_f32()?.iter().zip(&xv).map(|(y, x)| y - x).collect();
        outputs.push((report.total_ms(), delta));
    }
    let (fused_ms, fused) = &outputs[0];
    let (unfused_ms, unfused) = &outputs[1];
    let worst = fused.iter().zip(unfused).map(|(a, b)| (a - b).abs() / (1e-5 + 1e-3 * b.abs())).fold(0.0f32, f32::max);
    println!(
        "\nfused {fused_ms:.3} ms, unfused {unfused_ms:.3} ms: {:.2}× (GPU time summed over kernels)",
        unfused_ms / fused_ms
    );
    println!("fused vs unfused, on y − x: worst |diff| / (1e-5 + 1e-3·|want|) = {worst:.3} (≤ 1 passes)");
    if worst > 1.0 {
        eprintln!("fused and unfused blocks disagree");
        std::process::exit(1);
    }
    Ok(())
}
