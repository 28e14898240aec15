//! Memory planning for GPT-2-style decoder models: parameter counts and the bytes for
//! weights, gradients, optimizer state, activations and the KV cache, under a precision
//! policy. The first question of anyone sizing a model: "how much memory does it need?".
//!
//! ```
//! use wgkernels::plan::{human, Optimizer, Precision, GPT2};
//! let small = GPT2[0];
//! assert_eq!(small.params(), 124_439_808);
//! let e = small.training(8, 1024, Precision::Mixed16, Optimizer::Adam, true, false);
//! println!("{}: {} to train at batch 8 × 1024", small.name, human(e.total()));
//! ```
//!
//! Conventions (stated so that each figure can be checked by hand):
//! - Parameters (tied input/output embeddings, biases everywhere, as in GPT-2):
//!   `V·d + C·d + L·(12·d² + 13·d) + 2·d`.
//! - Mixed precision keeps a 16-bit copy of the weights and 16-bit gradients, plus f32
//!   master weights and f32 optimizer state (16 bytes per parameter with Adam, as in the
//!   ZeRO paper); fp32 keeps everything in f32.
//! - Activations saved for the backward pass, per layer and token, counted as this crate's
//!   autograd keeps them for a pre-norm GPT-2 block without dropout: `16·d` values — the
//!   block's input and ln_1's output (2), q, k and v (3, the c_attn output they are views
//!   of), the attention output (1: written in the order c_proj reads, so no re-laid copy),
//!   the residual sum and ln_2's output (2), the MLP's pre-activation and GELU output (8).
//!   Korthikanti et al. (2022) count the same tensors: their `34·d` bytes in 16-bit are
//!   these 32 and two 1-byte dropout masks. Without flash attention the
//!   softmax probabilities add `a·s` values. In fp32 each value takes twice the bytes of
//!   16-bit. With full activation checkpointing only each layer's input (`d` values per
//!   token) is kept, and one layer's activations are rebuilt at a time.
//! - The loss's working set, counted apart: the logits, which the crate's cross-entropy
//!   keeps for its backward, and their gradient, which that backward writes while they
//!   live (`2·Vp` values per token, in the activations' dtype, `Vp` the vocabulary padded
//!   to a multiple of 64 as [`crate::nn::Gpt`]'s output projection has it). For GPT-2
//!   small at 8 × 1024 tokens that is 3.3 GB in f32 (more than its weights and Adam state
//!   together) and 1.6 GB under mixed precision. (The padded token table's extra rows,
//!   47 × 768 values for GPT-2, are left out of the weights.)
//! - KV cache for inference: `2·L·d` values per token.

/// A GPT-2-style model shape.
///
/// ```
/// use wgkernels::plan::ModelConfig;
/// let tiny = ModelConfig { name: "tiny", layers: 2, d_model: 128, heads: 4, vocab: 1000, context: 256 };
/// println!("{} parameters", tiny.params());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// Name for reports.
    pub name: &'static str,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length.
    pub context: usize,
}

/// The GPT-2 family as Radford et al. (2019) list it (117M, 345M, 762M, 1542M; the counts
/// with tied embeddings are 124M, 355M, 774M and 1558M).
///
/// ```
/// for m in wgkernels::plan::GPT2 { println!("{}: {}", m.name, m.params()); }
/// ```
pub const GPT2: [ModelConfig; 4] = [
    ModelConfig { name: "gpt2 (117M)", layers: 12, d_model: 768, heads: 12, vocab: 50257, context: 1024 },
    ModelConfig { name: "gpt2-medium (345M)", layers: 24, d_model: 1024, heads: 16, vocab: 50257, context: 1024 },
    ModelConfig { name: "gpt2-large (762M)", layers: 36, d_model: 1280, heads: 20, vocab: 50257, context: 1024 },
    ModelConfig { name: "gpt2-xl (1542M)", layers: 48, d_model: 1600, heads: 25, vocab: 50257, context: 1024 },
];

/// How values are stored.
///
/// ```
/// use wgkernels::plan::{Optimizer, Precision, GPT2};
/// let a = GPT2[0].training(1, 1024, Precision::Fp32, Optimizer::Adam, true, false);
/// let b = GPT2[0].training(1, 1024, Precision::Mixed16, Optimizer::Adam, true, false);
/// assert!(b.activations < a.activations);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32.
    Fp32,
    /// 16-bit weights, gradients and activations (f16 or bf16), f32 masters and optimizer state.
    Mixed16,
}

impl Precision {
    fn act_bytes(self) -> u64 {
        match self {
            Precision::Fp32 => 4,
            Precision::Mixed16 => 2,
        }
    }
}

/// Which optimizer state is kept.
///
/// ```
/// use wgkernels::plan::{Optimizer, Precision, GPT2};
/// let adam = GPT2[0].training(1, 1024, Precision::Fp32, Optimizer::Adam, true, false);
/// let sgd = GPT2[0].training(1, 1024, Precision::Fp32, Optimizer::SgdMomentum, true, false);
/// assert_eq!(adam.optimizer, 2 * sgd.optimizer);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Optimizer {
    /// Two f32 moments per parameter.
    Adam,
    /// One f32 momentum buffer per parameter.
    SgdMomentum,
}

/// Bytes by category for one training or inference setup.
///
/// ```
/// use wgkernels::plan::{human, Optimizer, Precision, GPT2};
/// let e = GPT2[0].training(8, 1024, Precision::Mixed16, Optimizer::Adam, true, false);
/// println!("weights {}, activations {}, total {}", human(e.weights), human(e.activations), human(e.total()));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Weights (with f32 masters under mixed precision).
    pub weights: u64,
    /// Gradients.
    pub gradients: u64,
    /// Optimizer state.
    pub optimizer: u64,
    /// Activations saved for backward, for the whole batch.
    pub activations: u64,
    /// The loss's working set: the batch's logits and their gradient (in the activations'
    /// dtype, over the padded vocabulary; see the module docs), the largest
    /// activations of a language model.
    pub logits: u64,
    /// The largest transient buffer beyond the saved activations: the S×S attention scores
    /// of one layer without flash attention, else one layer's recomputed activations when
    /// checkpointing.
    pub working: u64,
}

impl Estimate {
    /// Everything added up.
    ///
    /// ```
    /// use wgkernels::plan::{Optimizer, Precision, GPT2};
    /// let e = GPT2[0].training(1, 1024, Precision::Fp32, Optimizer::Adam, false, false);
    /// assert!(e.total() > 16 * GPT2[0].params());
    /// ```
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.working
    }
}

impl ModelConfig {
    /// Parameters, with the output projection tied to the token embedding.
    ///
    /// ```
    /// assert_eq!(wgkernels::plan::GPT2[3].params(), 1_557_611_200);
    /// ```
    pub fn params(&self) -> u64 {
        let (v, c, l, d) = (self.vocab as u64, self.context as u64, self.layers as u64, self.d_model as u64);
        v * d + c * d + l * (12 * d * d + 13 * d) + 2 * d
    }

    /// The parameter tensors' shapes in GPT-2's (Hugging Face) order: token and position
    /// embeddings, per block ln_1 (w, b), attn.c_attn (w, b), attn.c_proj (w, b), ln_2 (w, b),
    /// mlp.c_fc (w, b), mlp.c_proj (w, b), then ln_f (w, b): 148 tensors for GPT-2 small.
    /// Their sizes add up to [`params`](Self::params).
    ///
    /// ```
    /// let shapes = wgkernels::plan::GPT2[0].param_shapes();
    /// assert_eq!((shapes.len(), shapes[0].clone()), (148, vec![50257, 768]));
    /// ```
    pub fn param_shapes(&self) -> Vec<Vec<usize>> {
        let (d, v, c) = (self.d_model, self.vocab, self.context);
        let mut shapes = vec![vec![v, d], vec![c, d]];
        for _ in 0..self.layers {
            shapes.extend([
                vec![d],
                vec![d],
                vec![d, 3 * d],
                vec![3 * d],
                vec![d, d],
                vec![d],
                vec![d],
                vec![d],
                vec![d, 4 * d],
                vec![4 * d],
                vec![4 * d, d],
                vec![d],
            ]);
        }
        shapes.extend([vec![d], vec![d]]);
        shapes
    }

    /// Activation values saved per token per layer (see the module docs).
    ///
    /// ```
    /// let m = wgkernels::plan::GPT2[0];
    /// assert!(m.activation_values_per_token_per_layer(1024, false) > m.activation_values_per_token_per_layer(1024, true));
    /// ```
    pub fn activation_values_per_token_per_layer(&self, seq: usize, flash: bool) -> u64 {
        let d = self.d_model as u64;
        16 * d + if flash { 0 } else { (self.heads * seq) as u64 }
    }

    /// Activation bytes per token (all layers), with or without full checkpointing.
    ///
    /// ```
    /// use wgkernels::plan::{Precision, GPT2};
    /// let b = GPT2[0].activation_bytes_per_token(1024, Precision::Mixed16, true, true);
    /// ```
    pub fn activation_bytes_per_token(&self, seq: usize, p: Precision, flash: bool, checkpointing: bool) -> u64 {
        let l = self.layers as u64;
        if checkpointing {
            l * self.d_model as u64 * p.act_bytes()
        } else {
            l * self.activation_values_per_token_per_layer(seq, flash) * p.act_bytes()
        }
    }

    /// KV-cache bytes per token of context (all layers, K and V).
    ///
    /// ```
    /// use wgkernels::plan::{Precision, GPT2};
    /// assert_eq!(GPT2[0].kv_bytes_per_token(Precision::Mixed16), 2 * 12 * 768 * 2);
    /// ```
    pub fn kv_bytes_per_token(&self, p: Precision) -> u64 {
        2 * (self.layers * self.d_model) as u64 * p.act_bytes()
    }

    /// Training memory for `batch` sequences of `seq` tokens.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::plan::{human, Optimizer, Precision, GPT2};
    /// let e = GPT2[1].training(4, 1024, Precision::Fp32, Optimizer::Adam, true, true);
    /// println!("{}", human(e.total()));
    /// # Ok(()) }
    /// ```
    pub fn training(
        &self,
        batch: usize,
        seq: usize,
        p: Precision,
        opt: Optimizer,
        flash: bool,
        checkpointing: bool,
    ) -> Estimate {
        let n = self.params();
        let (weights, gradients) = match p {
            Precision::Fp32 => (4 * n, 4 * n),
            // 16-bit copy + f32 master; 16-bit gradients.
            Precision::Mixed16 => (2 * n + 4 * n, 2 * n),
        };
        let optimizer = match opt {
            Optimizer::Adam => 8 * n,
            Optimizer::SgdMomentum => 4 * n,
        };
        let tokens = (batch * seq) as u64;
        let activations = tokens * self.activation_bytes_per_token(seq, p, flash, checkpointing);
        let padded_vocab = self.vocab.next_multiple_of(crate::nn::VOCAB_PADDING) as u64;
        let logits = tokens * padded_vocab * 2 * p.act_bytes();
        let scores = (batch * self.heads * seq * seq) as u64 * p.act_bytes();
        let one_layer = tokens * self.activation_values_per_token_per_layer(seq, flash) * p.act_bytes();
        let working = if checkpointing {
            one_layer
        } else if flash {
            0
        } else {
            scores
        };
        Estimate { weights, gradients, optimizer, activations, logits, working }
    }

    /// The largest batch of `seq`-token sequences whose training fits in `memory` bytes.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::plan::{parse_bytes, Optimizer, Precision, GPT2};
    /// let b = GPT2[0].max_batch(parse_bytes("24GB").unwrap(), 1024, Precision::Mixed16, Optimizer::Adam, true, false);
    /// # Ok(()) }
    /// ```
    pub fn max_batch(
        &self,
        memory: u64,
        seq: usize,
        p: Precision,
        opt: Optimizer,
        flash: bool,
        checkpointing: bool,
    ) -> usize {
        let mut lo = 0;
        let mut hi = 1usize;
        while self.training(hi, seq, p, opt, flash, checkpointing).total() <= memory && hi < 1 << 30 {
            lo = hi;
            hi *= 2;
        }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if self.training(mid, seq, p, opt, flash, checkpointing).total() <= memory {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// Parses sizes like `16GB`, `24GiB`, `512MB`, `1e9` into bytes (GB = 10⁹, GiB = 2³⁰).
///
/// ```
/// assert_eq!(wgkernels::plan::parse_bytes("16GB"), Some(16_000_000_000));
/// ```
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.trim().parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    (value >= 0.0).then_some((value * scale) as u64)
}

/// Bytes as a short human string (GB = 10⁹).
///
/// ```
/// assert_eq!(wgkernels::plan::human(3_220_000_000), "3.22 GB");
/// ```
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_parameter_counts_match_the_known_totals() {
        let counts: Vec<u64> = GPT2.iter().map(|c| c.params()).collect();
        assert_eq!(counts, [124_439_808, 354_823_168, 774_030_080, 1_557_611_200]);
    }

    #[test]
    fn gpt2_small_has_148_parameter_tensors_adding_up_to_its_count() {
        for m in GPT2 {
            let shapes = m.param_shapes();
            assert_eq!(shapes.len(), 2 + 12 * m.layers + 2);
            assert_eq!(shapes.iter().map(|s| s.iter().product::<usize>() as u64).sum::<u64>(), m.params());
        }
        assert_eq!(GPT2[0].param_shapes().len(), 148);
    }

    #[test]
    fn mixed_precision_adam_is_16_bytes_per_parameter() {
        let m = GPT2[0];
        let e = m.training(1, 1024, Precision::Mixed16, Optimizer::Adam, true, false);
        assert_eq!(e.weights + e.gradients + e.optimizer, 16 * m.params());
        let s = m.training(1, 1024, Precision::Mixed16, Optimizer::SgdMomentum, true, false);
        assert_eq!(e.optimizer - s.optimizer, 4 * m.params());
    }

    #[test]
    fn flash_and_checkpointing_shrink_activations_and_max_batch_fits() {
        let m = GPT2[0];
        let full = m.training(8, 1024, Precision::Fp32, Optimizer::Adam, false, false);
        let flash = m.training(8, 1024, Precision::Fp32, Optimizer::Adam, true, false);
        let ckpt = m.training(8, 1024, Precision::Fp32, Optimizer::Adam, true, true);
        assert!(full.activations > flash.activations && flash.activations > ckpt.activations);
        // 16·d vs 16·d + a·s per token per layer.
        assert_eq!(full.activations - flash.activations, 8 * 1024 * 12 * 12 * 1024 * 4);
        let mem = parse_bytes("16GB").unwrap();
        let b = m.max_batch(mem, 1024, Precision::Mixed16, Optimizer::Adam, true, false);
        assert!(b > 0);
        assert!(m.training(b, 1024, Precision::Mixed16, Optimizer::Adam, true, false).total() <= mem);
        assert!(m.training(b + 1, 1024, Precision::Mixed16, Optimizer::Adam, true, false).total() > mem);
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("16GB"), Some(16_000_000_000));
        assert_eq!(parse_bytes("2 GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("512MB"), Some(512_000_000));
        assert_eq!(parse_bytes("7"), Some(7));
        assert_eq!(parse_bytes("lots"), None);
    }
}
