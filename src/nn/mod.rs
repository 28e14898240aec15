//! A small `nn` over [`autograd`](crate::autograd): Linear, Embedding, LayerNorm, an MLP,
//! causal self-attention, and a GPT-2-architecture model configurable in vocabulary,
//! context, layers, heads and width. Every module lists its parameters by name (GPT-2's
//! checkpoint names: `h.0.attn.c_attn.weight`, ...) for the optimizer and for
//! safetensors files.
//!
//! Weights are stored `[in, out]`, as the matmul takes them (GPT-2's Conv1D layout), and
//! initialised as GPT-2 does: normal(0, 0.02), residual projections scaled by
//! 1/√(2·layers), biases 0, LayerNorm weight 1.
//!
//! ```
//! use wgkernels::nn::{Gpt, GptConfig, Module};
//! use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
//! use wgkernels::{DType, Gpu};
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = Gpu::new()?;
//! let config = GptConfig { vocab: 32, context: 16, layers: 1, heads: 2, d_model: 16 };
//! let model = Gpt::new(&gpu, &config, DType::F32, 0)?;
//! let params = model.parameters();
//! let mut opt = AdamW::new(&gpu, AdamWConfig::default())?;
//! let ids: Vec<u32> = (0..16).map(|i| i % 32).collect();
//! let targets: Vec<u32> = (1..17).map(|i| i % 32).collect();
//! let loss = model.loss(&ids, &targets, 2, 8)?; // batch 2 × 8 tokens
//! loss.backward()?;
//! opt.step_params(&params.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>())?;
//! # Ok(()) }
//! ```

use crate::autograd::Var;
use crate::error::{Error, Result};
use crate::kernels::contraction::matmul::Activation;
use crate::tensor::Tensor;
use crate::{DType, Gpu};

/// A module: something with named parameters.
pub trait Module {
    /// Every parameter with its name, in a fixed order (the optimizer's and the files').
    fn parameters(&self) -> Vec<(String, Var)>;

    /// The parameters' element count.
    fn parameter_count(&self) -> usize {
        self.parameters().iter().map(|(_, p)| p.tensor().numel()).sum()
    }
}

/// Parameters of `module` under `prefix.` (how modules nest names).
fn prefixed(prefix: &str, module: &dyn Module) -> Vec<(String, Var)> {
    module.parameters().into_iter().map(|(n, p)| (format!("{prefix}.{n}"), p)).collect()
}

/// A normal(0, `std`) parameter of `shape`.
fn normal(gpu: &Gpu, shape: &[usize], std: f32, dtype: DType, seed: u64) -> Result<Var> {
    let t = Tensor::randn(gpu, shape, DType::F32, seed)?.mul_scalar(std)?.to_dtype(dtype)?;
    t.realize()?;
    Ok(t.requires_grad())
}

fn filled(gpu: &Gpu, shape: &[usize], value: f32, dtype: DType) -> Result<Var> {
    Ok(Tensor::full(gpu, shape, value, dtype)?.requires_grad())
}

/// y = x·W + b, W `[in, out]`.
#[derive(Clone)]
pub struct Linear {
    /// `[in, out]`.
    pub weight: Var,
    /// `[out]`.
    pub bias: Option<Var>,
}

impl Linear {
    /// A layer of normal(0, `std`) weights and zero bias (if `bias`).
    pub fn new(
        gpu: &Gpu,
        inputs: usize,
        outputs: usize,
        bias: bool,
        std: f32,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        Ok(Self {
            weight: normal(gpu, &[inputs, outputs], std, dtype, seed)?,
            bias: if bias { Some(filled(gpu, &[outputs], 0.0, dtype)?) } else { None },
        })
    }

    /// `x` `[..., in]` → `[..., out]` (the bias added in the matmul's epilogue).
    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.linear(&self.weight, self.bias.as_ref(), Activation::None)
    }

    /// activation(x·W + b) (see [`Var::linear`]).
    pub fn forward_act(&self, x: &Var, activation: Activation) -> Result<Var> {
        x.linear(&self.weight, self.bias.as_ref(), activation)
    }
}

impl Module for Linear {
    fn parameters(&self) -> Vec<(String, Var)> {
        let mut p = vec![("weight".to_string(), self.weight.clone())];
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        p
    }
}

/// A lookup table `[rows, dim]`.
#[derive(Clone)]
pub struct Embedding {
    /// `[rows, dim]`.
    pub weight: Var,
}

impl Embedding {
    /// A table of normal(0, `std`) values.
    pub fn new(gpu: &Gpu, rows: usize, dim: usize, std: f32, dtype: DType, seed: u64) -> Result<Self> {
        Ok(Self { weight: normal(gpu, &[rows, dim], std, dtype, seed)? })
    }

    /// Rows `ids`: `[ids.len(), dim]`.
    pub fn forward(&self, ids: &[u32]) -> Result<Var> {
        Var::embedding(&self.weight, ids)
    }
}

impl Module for Embedding {
    fn parameters(&self) -> Vec<(String, Var)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}

/// LayerNorm over the last dim with weight and bias.
#[derive(Clone)]
pub struct LayerNorm {
    /// `[dim]`, 1 at first.
    pub weight: Var,
    /// `[dim]`, 0 at first.
    pub bias: Var,
    /// Added to the variance (1e-5, as GPT-2).
    pub eps: f32,
}

impl LayerNorm {
    /// weight 1, bias 0, eps 1e-5.
    pub fn new(gpu: &Gpu, dim: usize, dtype: DType) -> Result<Self> {
        Ok(Self { weight: filled(gpu, &[dim], 1.0, dtype)?, bias: filled(gpu, &[dim], 0.0, dtype)?, eps: 1e-5 })
    }

    /// Normalises `x` `[..., dim]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.layer_norm(Some(&self.weight), Some(&self.bias), self.eps)
    }
}

impl Module for LayerNorm {
    fn parameters(&self) -> Vec<(String, Var)> {
        vec![("weight".to_string(), self.weight.clone()), ("bias".to_string(), self.bias.clone())]
    }
}

/// GPT-2's MLP: Linear(d, 4d) → GELU (tanh) → Linear(4d, d).
#[derive(Clone)]
pub struct Mlp {
    /// `[d, 4d]`.
    pub c_fc: Linear,
    /// `[4d, d]`.
    pub c_proj: Linear,
}

impl Mlp {
    /// `x` `[..., d]` → `[..., d]`.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        self.c_proj.forward(&self.c_fc.forward_act(x, Activation::GeluTanh)?)
    }
}

impl Module for Mlp {
    fn parameters(&self) -> Vec<(String, Var)> {
        [prefixed("c_fc", &self.c_fc), prefixed("c_proj", &self.c_proj)].concat()
    }
}

/// Multi-head causal self-attention: one Linear(d, 3d) for q, k, v, flash attention per
/// head, Linear(d, d) out.
#[derive(Clone)]
pub struct CausalSelfAttention {
    /// `[d, 3d]`: q, k, v side by side.
    pub c_attn: Linear,
    /// `[d, d]`.
    pub c_proj: Linear,
    /// Heads (d divisible by it).
    pub heads: usize,
}

impl CausalSelfAttention {
    /// `x` `[batch, seq, d]` → `[batch, seq, d]`, each position attending to itself and the
    /// positions before it.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        if x.shape().len() != 3 {
            return Err(Error::InvalidArgument {
                op: "attention",
                msg: format!("x must be [batch, seq, d], got {:?}", x.shape()),
            });
        }
        // [b, s, 3d] → [b, s, d]: q, k, v read in place, heads written per token.
        let out = Var::attention_qkv(&self.c_attn.forward(x)?, self.heads, true, None)?;
        self.c_proj.forward(&out)
    }
}

/// One layer's keys and values of the tokens seen so far (see [`Gpt::generate`]), stored
/// token-major, `[1, capacity, heads, head_dim]`, so that a decode step appends one
/// contiguous row (a single buffer copy) instead of re-concatenating the cache per head;
/// the capacity doubles when it runs out. [`LayerCache::keys`] and
/// [`LayerCache::values`] give the filled part as `[1, heads, tokens, head_dim]` views.
#[derive(Clone, Default)]
pub struct LayerCache {
    /// `[1, capacity, heads, head_dim]`; None before the first token.
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl LayerCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens the storage holds before it grows.
    pub fn capacity(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.shape()[1])
    }

    /// The cached keys, `[1, heads, tokens, head_dim]` (a view), or None when empty.
    pub fn keys(&self) -> Result<Option<Tensor>> {
        self.k.as_ref().map(|k| Self::filled(k, self.len)).transpose()
    }

    /// The cached values, as [`LayerCache::keys`].
    pub fn values(&self) -> Result<Option<Tensor>> {
        self.v.as_ref().map(|v| Self::filled(v, self.len)).transpose()
    }

    fn filled(store: &Tensor, len: usize) -> Result<Tensor> {
        store.narrow(1, 0, len)?.permute(&[0, 2, 1, 3])
    }

    /// Appends `k` and `v`, `[1, s, heads, head_dim]` views each.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let s = k.shape()[1];
        let needed = self.len + s;
        if needed > self.capacity() {
            let capacity = needed.max(2 * self.capacity());
            self.k = Some(Self::grown(self.k.as_ref(), self.len, capacity, k)?);
            self.v = Some(Self::grown(self.v.as_ref(), self.len, capacity, v)?);
        }
        // Rows of whole 16-byte words: attention takes head dims that are multiples of 8.
        for (store, new) in [(&self.k, k), (&self.v, v)] {
            store.as_ref().expect("allocated above").narrow(1, self.len, s)?.copy_from(new)?;
        }
        self.len = needed;
        Ok(())
    }

    /// A store of `capacity` tokens shaped like `like` holding `old`'s first `len` tokens.
    fn grown(old: Option<&Tensor>, len: usize, capacity: usize, like: &Tensor) -> Result<Tensor> {
        let shape = [1, capacity, like.shape()[2], like.shape()[3]];
        let store = Tensor::zeros(like.gpu(), &shape, like.dtype())?;
        if let Some(old) = old.filter(|_| len > 0) {
            store.narrow(1, 0, len)?.copy_from(&old.narrow(1, 0, len)?)?;
        }
        Ok(store)
    }
}

impl CausalSelfAttention {
    /// [`CausalSelfAttention::forward`] for `x` `[1, s, d]`, the new tokens after those in
    /// `cache`, whose keys and values are appended to it: each new query attends to every
    /// cached key and the new ones up to itself (the causal mask aligned bottom-right).
    pub fn forward_cached(&self, x: &Var, cache: &mut LayerCache) -> Result<Var> {
        let &[1, s, d] = x.shape() else {
            return Err(Error::InvalidArgument {
                op: "attention",
                msg: format!("a cached forward takes x [1, seq, d], got {:?}", x.shape()),
            });
        };
        let (h, hd) = (self.heads, d / self.heads);
        // [1, s, 3d] → [1, s, 3, h, hd]: q, k, v as [1, s, h, hd] views.
        let qkv = self.c_attn.forward(x)?.tensor().reshape(&[1, s, 3, h, hd])?;
        let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2);
        cache.append(&part(1)?, &part(2)?)?;
        let q = part(0)?.permute(&[0, 2, 1, 3])?.constant();
        let (k, v) = (cache.keys()?, cache.values()?);
        let (k, v) = (k.expect("appended above").constant(), v.expect("appended above").constant());
        let out = Var::attention(&q, &k, &v, true, None)?;
        self.c_proj.forward(&out.permute(&[0, 2, 1, 3])?.reshape(&[1, s, d])?)
    }
}

impl Module for CausalSelfAttention {
    fn parameters(&self) -> Vec<(String, Var)> {
        [prefixed("c_attn", &self.c_attn), prefixed("c_proj", &self.c_proj)].concat()
    }
}

/// A pre-norm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(·)).
#[derive(Clone)]
pub struct Block {
    /// Before attention.
    pub ln_1: LayerNorm,
    /// Causal self-attention.
    pub attn: CausalSelfAttention,
    /// Before the MLP.
    pub ln_2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
}

impl Block {
    /// `x` `[batch, seq, d]` → the same shape.
    pub fn forward(&self, x: &Var) -> Result<Var> {
        let x = x.add(&self.attn.forward(&self.ln_1.forward(x)?)?)?;
        x.add(&self.mlp.forward(&self.ln_2.forward(&x)?)?)
    }
}

impl Block {
    /// [`Block::forward`] of new tokens `[1, s, d]` after those in `cache`.
    pub fn forward_cached(&self, x: &Var, cache: &mut LayerCache) -> Result<Var> {
        let x = x.add(&self.attn.forward_cached(&self.ln_1.forward(x)?, cache)?)?;
        x.add(&self.mlp.forward(&self.ln_2.forward(&x)?)?)
    }
}

impl Module for Block {
    fn parameters(&self) -> Vec<(String, Var)> {
        [
            prefixed("ln_1", &self.ln_1),
            prefixed("attn", &self.attn),
            prefixed("ln_2", &self.ln_2),
            prefixed("mlp", &self.mlp),
        ]
        .concat()
    }
}

/// The size of a GPT-2-architecture model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptConfig {
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Longest sequence (learned positions).
    pub context: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads; `d_model` is a multiple of it.
    pub heads: usize,
    /// Width of the residual stream.
    pub d_model: usize,
}

impl GptConfig {
    /// GPT-2 small (124M): vocabulary 50257, context 1024, 12 layers, 12 heads, width 768.
    pub fn gpt2_small() -> Self {
        Self { vocab: 50257, context: 1024, layers: 12, heads: 12, d_model: 768 }
    }

    /// The vocabulary rounded up to a multiple of [`VOCAB_PADDING`]: the logits' row length
    /// inside [`Gpt`] (50304 for GPT-2).
    pub fn padded_vocab(&self) -> usize {
        self.vocab.next_multiple_of(VOCAB_PADDING)
    }
}

/// A GPT-2-architecture language model: token and position embeddings, `layers` blocks, a
/// final LayerNorm, and logits through the token embedding (tied, as GPT-2).
pub struct Gpt {
    /// The size.
    pub config: GptConfig,
    /// Token embeddings `[vocab, d]`, also the output projection.
    pub wte: Embedding,
    /// Position embeddings `[context, d]`.
    pub wpe: Embedding,
    /// The blocks.
    pub h: Vec<Block>,
    /// The final LayerNorm.
    pub ln_f: LayerNorm,
    /// Activation checkpointing per block (see [`crate::autograd::checkpoint`]): the
    /// forward keeps each block's input only, the backward recomputes the block. Off at
    /// first.
    pub checkpointing: bool,
    /// `[padded_vocab, d]`: the storage `wte.weight` is the first `vocab` rows of, the rows
    /// after them zero. The output projection multiplies by it, so the logits' rows are
    /// `padded_vocab` long, a multiple of [`VOCAB_PADDING`]: with GPT-2's 50257 the 16-bit
    /// logits could not be stored two to a word (they went through f32 and a cast) and the
    /// backward's matmuls staged rows of odd stride element by element. The loss masks the
    /// padding (see [`Var::cross_entropy_padded`]), so the function is GPT-2's; the padding
    /// rows get zero gradients and stay zero.
    lm_head: Tensor,
}

/// The output projection's rows are padded to a multiple of this (as llm.c and nanoGPT do
/// for GPT-2's vocabulary of 50257: 50304).
pub const VOCAB_PADDING: usize = 64;

impl Gpt {
    /// A model of `config` with GPT-2's initialisation from `seed`, parameters in `dtype`.
    ///
    /// Errors: `InvalidArgument` when `d_model` is not a multiple of `heads` or a size is 0.
    pub fn new(gpu: &Gpu, config: &GptConfig, dtype: DType, seed: u64) -> Result<Self> {
        let c = config;
        if c.heads == 0 || !c.d_model.is_multiple_of(c.heads) || c.vocab == 0 || c.context == 0 || c.layers == 0 {
            return Err(Error::InvalidArgument {
                op: "Gpt::new",
                msg: format!("{c:?}: every size must be positive and d_model a multiple of heads"),
            });
        }
        let d = c.d_model;
        let std = 0.02;
        let proj_std = std / ((2 * c.layers) as f32).sqrt();
        let mut seed = seed.wrapping_mul(1000);
        let mut next = || {
            seed += 1;
            seed
        };
        let mut h = Vec::new();
        for _ in 0..c.layers {
            h.push(Block {
                ln_1: LayerNorm::new(gpu, d, dtype)?,
                attn: CausalSelfAttention {
                    c_attn: Linear::new(gpu, d, 3 * d, true, std, dtype, next())?,
                    c_proj: Linear::new(gpu, d, d, true, proj_std, dtype, next())?,
                    heads: c.heads,
                },
                ln_2: LayerNorm::new(gpu, d, dtype)?,
                mlp: Mlp {
                    c_fc: Linear::new(gpu, d, 4 * d, true, std, dtype, next())?,
                    c_proj: Linear::new(gpu, 4 * d, d, true, proj_std, dtype, next())?,
                },
            });
        }
        // The token table, drawn as before, inside a zero-padded [padded_vocab, d] storage.
        let table = normal(gpu, &[c.vocab, d], std, dtype, next())?;
        let padding = Tensor::zeros(gpu, &[c.padded_vocab() - c.vocab, d], dtype)?;
        let lm_head = Tensor::cat(&[table.tensor(), &padding], 0)?;
        let wte = Embedding { weight: lm_head.narrow(0, 0, c.vocab)?.requires_grad() };
        Ok(Self {
            config: c.clone(),
            wte,
            wpe: Embedding::new(gpu, c.context, d, std / 2.0, dtype, next())?,
            h,
            ln_f: LayerNorm::new(gpu, d, dtype)?,
            checkpointing: false,
            lm_head,
        })
    }

    /// The output projection's weight `[padded_vocab, d]` as a var: the token table's
    /// padded storage, whose gradient is the table's (its first `vocab` rows, a view). A
    /// `wte.weight` that is no longer that storage's first rows (replaced by the caller)
    /// is padded by a copy instead.
    fn output_weight(&self) -> Result<Var> {
        let (w, c) = (&self.wte.weight, &self.config);
        let t = w.tensor();
        let in_place = t.shares_storage(&self.lm_head)
            && t.offset() == 0
            && t.is_contiguous()
            && t.shape() == [c.vocab, c.d_model]
            && t.dtype() == self.lm_head.dtype();
        if !in_place {
            if c.padded_vocab() == c.vocab {
                return Ok(w.clone());
            }
            let padding = Tensor::zeros(t.gpu(), &[c.padded_vocab() - c.vocab, c.d_model], t.dtype())?.constant();
            return Var::cat(&[w, &padding], 0);
        }
        let vocab = c.vocab;
        Ok(Var::from_op(self.lm_head.clone(), "pad_rows", &[w], move |g: &Tensor| {
            Ok(vec![Some(g.narrow(0, 0, vocab)?)])
        }))
    }

    /// Logits over the padded vocabulary `[rows, padded_vocab]` of the final hidden states
    /// `x` `[rows, d]`.
    fn padded_logits(&self, x: &Var) -> Result<Var> {
        x.matmul(&self.output_weight()?.transpose(0, 1)?)
    }

    /// Logits `[batch·seq, vocab]` for `ids` (`batch` rows of `seq` tokens, row-major): a
    /// view of the first `vocab` columns of rows `padded_vocab` long.
    ///
    /// Errors: `InvalidArgument` when `ids` is not batch·seq long or seq exceeds the
    /// context; any id ≥ vocab is refused by the embedding.
    pub fn forward(&self, ids: &[u32], batch: usize, seq: usize) -> Result<Var> {
        let logits = self.forward_padded(ids, batch, seq)?;
        if self.config.padded_vocab() == self.config.vocab {
            return Ok(logits);
        }
        logits.narrow(1, 0, self.config.vocab)
    }

    /// [`Gpt::forward`]'s logits with their padding: `[batch·seq, padded_vocab]`.
    fn forward_padded(&self, ids: &[u32], batch: usize, seq: usize) -> Result<Var> {
        let d = self.config.d_model;
        if ids.len() != batch * seq || seq == 0 || seq > self.config.context {
            return Err(Error::InvalidArgument {
                op: "Gpt::forward",
                msg: format!("{} ids for batch {batch} × seq {seq} (context {})", ids.len(), self.config.context),
            });
        }
        let positions: Vec<u32> = (0..batch * seq).map(|i| (i % seq) as u32).collect();
        let tok = self.wte.forward(ids)?;
        let pos = self.wpe.forward(&positions)?;
        let mut x = tok.add(&pos)?.reshape(&[batch, seq, d])?;
        for block in &self.h {
            x = if self.checkpointing {
                let block = block.clone();
                crate::autograd::checkpoint(&[&x], move |v| block.forward(&v[0]))?
            } else {
                block.forward(&x)?
            };
        }
        let x = self.ln_f.forward(&x)?.reshape(&[batch * seq, d])?;
        self.padded_logits(&x)
    }

    /// Mean cross-entropy of the next-token predictions: `targets[i]` follows `ids[i]`.
    pub fn loss(&self, ids: &[u32], targets: &[u32], batch: usize, seq: usize) -> Result<Var> {
        // The padded logits as they are (the padding masked, no narrowed copy), 16-bit ones
        // too: the loss computes in f32 and writes their gradient in 16-bit once scaled. Per
        // logit, 6 bytes move (read, read, write) where an f32 copy, an f32 gradient and its
        // scaling moved 20: 2.5 GB against 8.2 GB at GPT-2 small's 8192 tokens × 50304.
        self.forward_padded(ids, batch, seq)?.cross_entropy_padded(targets, self.config.vocab)
    }
}

/// How [`Gpt::generate`] draws each next token from the predicted distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the logits; 0 takes the most likely token (greedy).
    pub temperature: f32,
    /// Draws among the `top_k` most likely tokens only; 0 means all.
    pub top_k: usize,
    /// Seed of the host's random draws (the same seed, the same text).
    pub seed: u64,
}

impl Default for Sampling {
    /// Greedy.
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, seed: 0 }
    }
}

/// The next value in [0, 1) of a xorshift64 generator (the host's draws for sampling).
fn uniform(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// The index of the token drawn from `logits` (`u` uniform in [0, 1)). Greedy is one pass
/// (the first largest); top-k selects the k largest before sorting them. A full sort of
/// GPT-2's 50257 logits took about 2 ms per token on the build machine's CPU.
fn draw(logits: &[f32], sampling: &Sampling, u: f64) -> u32 {
    // Descending, ties by index: the order a stable sort of the logits gives.
    let before = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    if sampling.temperature <= 0.0 {
        // The first largest by total order, in one plain pass: over GPT-2's 50257 logits 47 µs
        // on the build machine, where a `min_by` over the indices with `before` took 71 µs
        // (6–9% of a decode step's host time on wgpu's noop backend, in a perf profile).
        let mut best = 0;
        for (i, v) in logits.iter().enumerate().skip(1) {
            if v.total_cmp(&logits[best]).is_gt() {
                best = i;
            }
        }
        return best as u32;
    }
    let k = if sampling.top_k == 0 { logits.len() } else { sampling.top_k.min(logits.len()) };
    let mut top: Vec<usize> = (0..logits.len()).collect();
    if k < top.len() {
        top.select_nth_unstable_by(k - 1, before);
        top.truncate(k);
        top.sort_unstable_by(before);
    }
    let m = top.iter().map(|&i| logits[i]).max_by(f32::total_cmp).unwrap_or(0.0) as f64;
    let weights: Vec<f64> = top.iter().map(|&i| ((logits[i] as f64 - m) / sampling.temperature as f64).exp()).collect();
    let mut target = u * weights.iter().sum::<f64>();
    for (&i, w) in top.iter().zip(&weights) {
        target -= w;
        if target < 0.0 {
            return i as u32;
        }
    }
    top.last().map_or(0, |&i| i as u32)
}

impl Gpt {
    /// Logits `[s, vocab]` of `ids`, the tokens after those in `caches` (one per layer),
    /// whose keys and values are appended: a decode step is `ids` of one token, each
    /// projection a thin `[1, d]` matmul and attention over the cache. Records nothing.
    ///
    /// Errors: `InvalidArgument` when the cache and `ids` together exceed the context or
    /// `caches` is not one per layer.
    pub fn forward_cached(&self, ids: &[u32], caches: &mut [LayerCache]) -> Result<Tensor> {
        let start = caches.first().map_or(0, LayerCache::len);
        if caches.len() != self.h.len() || ids.is_empty() || start + ids.len() > self.config.context {
            return Err(Error::InvalidArgument {
                op: "Gpt::forward_cached",
                msg: format!(
                    "{} new tokens after {start} cached, {} caches for {} layers (context {})",
                    ids.len(),
                    caches.len(),
                    self.h.len(),
                    self.config.context
                ),
            });
        }
        crate::autograd::no_grad(|| {
            let d = self.config.d_model;
            let positions: Vec<u32> = (start..start + ids.len()).map(|p| p as u32).collect();
            let mut x = self.wte.forward(ids)?.add(&self.wpe.forward(&positions)?)?.reshape(&[1, ids.len(), d])?;
            for (block, cache) in self.h.iter().zip(caches.iter_mut()) {
                x = block.forward_cached(&x, cache)?;
            }
            let x = self.ln_f.forward(&x)?.reshape(&[ids.len(), d])?;
            self.padded_logits(&x)?.tensor().narrow(1, 0, self.config.vocab)
        })
    }

    /// `prompt` followed by `new_tokens` tokens, each drawn ([`Sampling`]) from the model's
    /// prediction, without recording gradients. The prompt runs once (prefill), then one
    /// decode step per token over the KV cache; when the cache reaches the context, it is
    /// rebuilt from the last half-context of tokens (their positions restart at 0).
    ///
    /// Errors: `InvalidArgument` for an empty prompt; any id ≥ vocab is refused.
    ///
    /// Native only: the browser awaits [`Gpt::generate_async`](Self::generate_async).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(&self, prompt: &[u32], new_tokens: usize, sampling: Sampling) -> Result<Vec<u32>> {
        pollster::block_on(self.generate_async(prompt, new_tokens, sampling))
    }

    /// [`Gpt::generate`] as a future: each step's logits are read back with
    /// [`Tensor::to_vec_f32_async`], so the browser's event loop runs while the GPU works.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::nn::{Gpt, GptConfig, Sampling};
    /// let config = GptConfig { vocab: 50, context: 16, layers: 1, heads: 2, d_model: 16 };
    /// let model = Gpt::new(&gpu, &config, DType::F32, 0)?;
    /// let tokens = pollster::block_on(model.generate_async(&[1, 2, 3], 4, Sampling::default()))?; // browser: .await
    /// assert_eq!(tokens.len(), 7);
    /// # Ok(()) }
    /// ```
    pub async fn generate_async(&self, prompt: &[u32], new_tokens: usize, sampling: Sampling) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument { op: "generate", msg: "the prompt is empty".into() });
        }
        let mut tokens = prompt.to_vec();
        let mut state = sampling.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let context = self.config.context;
        let mut caches = vec![LayerCache::default(); self.h.len()];
        let mut pending: Vec<u32> = tokens[tokens.len().saturating_sub(context)..].to_vec();
        for _ in 0..new_tokens {
            if caches[0].len() + pending.len() > context {
                // Rebuild from the last half-context (at least the pending tokens).
                caches = vec![LayerCache::default(); self.h.len()];
                pending = tokens[tokens.len().saturating_sub((context / 2).max(1))..].to_vec();
            }
            let logits = self.forward_cached(&pending, &mut caches)?;
            let last = logits.narrow(0, pending.len() - 1, 1)?.to_vec_f32_async().await?;
            let u = uniform(&mut state);
            let next = draw(&last, &sampling, u);
            tokens.push(next);
            pending = vec![next];
        }
        Ok(tokens)
    }

    /// [`Gpt::generate`] without a cache: every token recomputes the forward over the last
    /// `context` tokens (the reference the cached path is tested against).
    pub fn generate_uncached(&self, prompt: &[u32], new_tokens: usize, sampling: Sampling) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument { op: "generate", msg: "the prompt is empty".into() });
        }
        let mut tokens = prompt.to_vec();
        let mut state = sampling.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        crate::autograd::no_grad(|| {
            for _ in 0..new_tokens {
                let window = &tokens[tokens.len().saturating_sub(self.config.context)..];
                let logits = self.forward(window, 1, window.len())?;
                let last = logits.tensor().narrow(0, window.len() - 1, 1)?.to_vec_f32()?;
                let u = uniform(&mut state);
                tokens.push(draw(&last, &sampling, u));
            }
            Ok(tokens)
        })
    }
}

impl Module for Gpt {
    fn parameters(&self) -> Vec<(String, Var)> {
        let mut p = prefixed("wte", &self.wte);
        p.extend(prefixed("wpe", &self.wpe));
        for (i, block) in self.h.iter().enumerate() {
            p.extend(prefixed(&format!("h.{i}"), block));
        }
        p.extend(prefixed("ln_f", &self.ln_f));
        p
    }
}

/// Writes `module`'s parameters to a safetensors file, under their names.
#[cfg(feature = "safetensors")]
pub fn save_safetensors(module: &dyn Module, path: &std::path::Path) -> Result<()> {
    use safetensors::tensor::TensorView;
    let params = module.parameters();
    let data: Vec<(String, Vec<u8>, Vec<usize>, DType)> = params
        .iter()
        .map(|(n, p)| Ok((n.clone(), p.tensor().to_bytes()?, p.shape().to_vec(), p.dtype())))
        .collect::<Result<_>>()?;
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, bytes, shape, dtype)| {
            let dt = match dtype {
                DType::F32 => safetensors::Dtype::F32,
                DType::F16 => safetensors::Dtype::F16,
                DType::BF16 => safetensors::Dtype::BF16,
            };
            TensorView::new(dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::InvalidArgument { op: "save_safetensors", msg: format!("{n}: {e}") })
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| Error::InvalidArgument { op: "save_safetensors", msg: format!("{}: {e}", path.display()) })
}

/// Loads a safetensors file into `module`'s parameters in place (every parameter must be
/// in the file with its shape and dtype; extra tensors in the file are ignored).
#[cfg(feature = "safetensors")]
pub fn load_safetensors(module: &dyn Module, path: &std::path::Path) -> Result<()> {
    const OP: &str = "load_safetensors";
    let bytes =
        std::fs::read(path).map_err(|e| Error::InvalidArgument { op: OP, msg: format!("{}: {e}", path.display()) })?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::InvalidArgument { op: OP, msg: format!("{}: {e}", path.display()) })?;
    for (name, p) in module.parameters() {
        let view = file
            .tensor(&name)
            .map_err(|e| Error::InvalidArgument { op: OP, msg: format!("{}: {name}: {e}", path.display()) })?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            other => {
                return Err(Error::InvalidArgument { op: OP, msg: format!("{name}: dtype {other:?} is not supported") })
            }
        };
        if view.shape() != p.shape() || dtype != p.dtype() {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "{name}: the file has {:?} {dtype:?}, the model {:?} {:?}",
                    view.shape(),
                    p.shape(),
                    p.dtype()
                ),
            });
        }
        p.tensor().write_bytes(view.data())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{draw, uniform, Sampling};

    #[test]
    fn greedy_takes_the_first_largest_logit() {
        let logits = [0.5, 3.0, -1.0, 3.0, f32::NEG_INFINITY];
        assert_eq!(draw(&logits, &Sampling::default(), 0.99), 1);
        assert_eq!(draw(&[-2.0], &Sampling::default(), 0.0), 0);
        // The largest last, first, and every logit equal.
        assert_eq!(draw(&[-1.0, 0.0, 2.5], &Sampling::default(), 0.5), 2);
        assert_eq!(draw(&[9.0, 0.0, 2.5], &Sampling::default(), 0.5), 0);
        assert_eq!(draw(&[1.0; 4], &Sampling::default(), 0.5), 0);
        assert_eq!(draw(&[], &Sampling::default(), 0.5), 0);
    }

    /// Top-k draws only among the k largest, with frequencies exp(logit / T) / Σ over them.
    #[test]
    fn top_k_draws_follow_the_softmax_of_the_k_largest() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 250.0).collect();
        let sampling = Sampling { temperature: 0.7, top_k: 4, seed: 0 };
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top = &order[..4];
        let w: Vec<f64> = top.iter().map(|&i| ((logits[i] - logits[top[0]]) as f64 / 0.7).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut counts = [0usize; 4];
        let mut state = 12345u64;
        let draws = 20000;
        for _ in 0..draws {
            let t = draw(&logits, &sampling, uniform(&mut state)) as usize;
            let slot =
                top.iter().position(|&i| i == t).unwrap_or_else(|| panic!("drew {t}, outside the top 4 {top:?}"));
            counts[slot] += 1;
        }
        for (slot, (&c, wi)) in counts.iter().zip(&w).enumerate() {
            let (p, got) = (wi / total, c as f64 / draws as f64);
            let sd = (p * (1.0 - p) / draws as f64).sqrt();
            assert!(
                (got - p).abs() < 5.0 * sd,
                "top {slot} (logit {}): drawn {got:.4}, softmax {p:.4}",
                logits[top[slot]]
            );
        }
        // Without top-k every token can be drawn; at a high temperature the draws spread.
        let all = Sampling { temperature: 100.0, top_k: 0, seed: 0 };
        let distinct: std::collections::HashSet<u32> =
            (0..200).map(|_| draw(&logits, &all, uniform(&mut state))).collect();
        assert!(distinct.len() > 150, "{} distinct tokens in 200 draws at T = 100", distinct.len());
    }
}
