//! The differentiable ops on [`Var`]: each runs the tensor op forward and records the
//! backward, in the tensor API's names.

use super::Var;
use crate::error::{Error, Result};
use crate::kernels::contraction::attention::{
    attention_backward, attention_backward_qkv, attention_forward, AttentionLayout, AttentionOptions, AttentionSaved,
};
use crate::kernels::contraction::matmul::{coop_available_for, Activation, MatmulOptions};
use crate::tensor::Tensor;
use crate::DType;

/// `g` summed down to `shape`, the shape of an operand that NumPy broadcasting expanded to
/// `g`'s shape: over the leading dims `shape` lacks and over every dim where `shape` has 1.
/// This is how a broadcast operand (a bias row, a scalar) gets its gradient.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let g = Tensor::full(&gpu, &[4, 3, 2], 1.0, DType::F32)?;
/// let s = wgkernels::autograd::sum_to(&g, &[3, 1])?;
/// assert_eq!(s.to_vec::<f32>()?, vec![8.0, 8.0, 8.0]);
/// # Ok(()) }
/// ```
pub fn sum_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let lead = g.rank().checked_sub(shape.len()).ok_or_else(|| Error::ShapeMismatch {
        op: "sum_to",
        lhs: g.shape().to_vec(),
        rhs: shape.to_vec(),
    })?;
    let reduce: Vec<usize> =
        (0..g.rank()).filter(|&d| d < lead || (shape[d - lead] == 1 && g.shape()[d] != 1)).collect();
    // Highest dim first, so the lower ones keep their index.
    let mut t = g.clone();
    for &d in reduce.iter().rev() {
        t = t.sum(d as isize)?;
    }
    t.reshape(shape)
}

/// The derivative of the tanh-approximated GELU at `x`:
/// 0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²), t = tanh(√(2/π)·(x + 0.044715·x³)).
fn gelu_tanh_grad(x: &Tensor) -> Result<Tensor> {
    let k = (2.0 / std::f64::consts::PI).sqrt() as f32;
    let x2 = x.square()?;
    let t = x.mul(&x2.mul_scalar(0.044715)?.add_scalar(1.0)?)?.mul_scalar(k)?.tanh()?;
    let left = t.add_scalar(1.0)?.mul_scalar(0.5)?;
    let du = x2.mul_scalar(3.0 * 0.044715)?.add_scalar(1.0)?.mul_scalar(k)?;
    let right = x.mul(&t.square()?.rsub_scalar(1.0)?)?.mul(&du)?.mul_scalar(0.5)?;
    left.add(&right)
}

trait Rows {
    /// `self` as a matrix of rows of length `k` (every leading dim flattened).
    fn tensor_rows(&self, k: usize) -> Result<Tensor>;
}

impl Rows for Tensor {
    fn tensor_rows(&self, k: usize) -> Result<Tensor> {
        self.reshape(&[self.numel() / k, k])
    }
}

/// A shared weight's gradient Xᵀ·dY, `x` `[rows, k]` and `g` `[rows, n]` → `[k, n]`: over
/// many rows (tokens) and few output tiles, with K = rows split into chunks
/// ([`Tensor::matmul_split_k`]) so that about 512 tiles of 128×128 run side by side, each
/// chunk at least 1024 rows, at most 8 chunks. GPT-2 small's [768, 3072] gradient over 8192
/// tokens: 4 chunks.
fn weight_grad(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (rows, k, n) = (x.shape()[0], x.shape()[1], g.shape()[1]);
    let tiles = k.div_ceil(128) * n.div_ceil(128);
    let mut splits = 1;
    while splits < 8 && tiles * splits < 512 && rows % (2 * splits) == 0 && rows / (2 * splits) >= 1024 {
        splits *= 2;
    }
    // Tensor-core tiles follow their operand's layout, so a 16-bit Xᵀ view is read as it
    // lies: on the H100 (2026-12-05), copying X first made GPT-2 small's f16 step 3.1 ms
    // slower (59.9 against 56.8 ms GPU: the 49 copies took 1.8 ms, the tensor-core matmuls
    // 1.3 ms more). f32 at `High` (split into f16 parts) keeps the copy: its views ran on the FMA kernel at 25–33
    // TFLOP/s, slower than the copy's tensor-core tiles (H200). The FMA kernel reads the view
    // well: f32 at `Highest` was slower with the copy (24 against 30), so it keeps the view.
    let copy = x.dtype() == DType::F32 && coop_available_for(x.gpu(), DType::F32, x.gpu().f32_matmul_precision());
    let xt = if copy { x.transpose(0, 1)?.contiguous()? } else { x.transpose(0, 1)? };
    xt.matmul_split_k(g, splits)
}

/// A 0-dim constant of `like`'s dtype on its device.
fn scalar(like: &Tensor, value: f32) -> Result<Tensor> {
    Tensor::full(like.gpu(), &[], value, like.dtype())
}

/// The permutation that undoes `order`.
fn inverse(order: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; order.len()];
    for (i, &d) in order.iter().enumerate() {
        inv[d] = i;
    }
    inv
}

macro_rules! unary {
    ($($(#[$doc:meta])* $name:ident($x:ident, $y:ident, $g:ident) => $grad:expr;)*) => {
        impl Var {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> Result<Var> {
                    let y = self.tensor().$name()?;
                    // The closure keeps (saves) only what its gradient reads.
                    #[allow(unused_variables)]
                    let ($x, $y) = (self.tensor().clone(), y.clone());
                    Ok(Var::from_op(y, stringify!($name), &[self], move |$g: &Tensor| {
                        Ok(vec![Some($grad)])
                    }))
                }
            )*
        }
    };
}

unary! {
    /// −x.
    neg(x, y, g) => g.neg()?;
    /// eˣ; the gradient reuses the output: g·y.
    exp(x, y, g) => g.mul(&y)?;
    /// ln x; g / x.
    log(x, y, g) => g.div(&x)?;
    /// √x; g / (2·y).
    sqrt(x, y, g) => g.div(&y.mul_scalar(2.0)?)?;
    /// 1/√x; −g·y³/2.
    rsqrt(x, y, g) => g.mul(&y.mul(&y.square()?)?)?.mul_scalar(-0.5)?;
    /// 1/x; −g·y².
    recip(x, y, g) => g.mul(&y.square()?)?.neg()?;
    /// x²; 2·g·x.
    square(x, y, g) => g.mul(&x)?.mul_scalar(2.0)?;
    /// tanh x; g·(1 − y²).
    tanh(x, y, g) => g.mul(&y.square()?.rsub_scalar(1.0)?)?;
    /// σ(x); g·y·(1 − y).
    sigmoid(x, y, g) => g.mul(&y.mul(&y.rsub_scalar(1.0)?)?)?;
    /// max(x, 0); g where x > 0.
    relu(x, y, g) => g.mul(&x.gt(&scalar(&x, 0.0)?)?)?;
    /// GELU, tanh approximation (GPT-2's).
    gelu_tanh(x, y, g) => g.mul(&gelu_tanh_grad(&x)?)?;
    /// x·σ(x); g·(σ + x·σ·(1 − σ)).
    silu(x, y, g) => {
        let s = x.sigmoid()?;
        g.mul(&s.add(&x.mul(&s)?.mul(&s.rsub_scalar(1.0)?)?)?)?
    };
    /// sin x; g·cos x.
    sin(x, y, g) => g.mul(&x.cos()?)?;
    /// cos x; −g·sin x.
    cos(x, y, g) => g.mul(&x.sin()?)?.neg()?;
    /// |x|; g·sign(x) (0 at 0, as PyTorch).
    abs(x, y, g) => {
        let zero = scalar(&x, 0.0)?;
        g.mul(&x.gt(&zero)?.sub(&x.lt(&zero)?)?)?
    };
}

macro_rules! with_scalar {
    ($($(#[$doc:meta])* $name:ident($x:ident, $y:ident, $c:ident, $g:ident) => $grad:expr;)*) => {
        impl Var {
            $(
                $(#[$doc])*
                pub fn $name(&self, $c: f32) -> Result<Var> {
                    let y = self.tensor().$name($c)?;
                    #[allow(unused_variables)]
                    let ($x, $y) = (self.tensor().clone(), y.clone());
                    Ok(Var::from_op(y, stringify!($name), &[self], move |$g: &Tensor| {
                        Ok(vec![Some($grad)])
                    }))
                }
            )*
        }
    };
}

with_scalar! {
    /// x + c.
    add_scalar(x, y, c, g) => g.clone();
    /// x − c.
    sub_scalar(x, y, c, g) => g.clone();
    /// c − x.
    rsub_scalar(x, y, c, g) => g.neg()?;
    /// x·c.
    mul_scalar(x, y, c, g) => g.mul_scalar(c)?;
    /// x / c.
    div_scalar(x, y, c, g) => g.div_scalar(c)?;
    /// c / x; −g·y / x.
    rdiv_scalar(x, y, c, g) => g.mul(&y)?.div(&x)?.neg()?;
    /// xᶜ; g·c·xᶜ⁻¹.
    pow_scalar(x, y, c, g) => g.mul(&x.pow_scalar(c - 1.0)?)?.mul_scalar(c)?;
}

/// The broadcast binary ops: the forward's result, and each operand's gradient from the
/// upstream one (before it is summed down to the operand's shape).
#[derive(Clone, Copy)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

impl Var {
    fn binary(&self, other: &Var, op: Binary) -> Result<Var> {
        let (a, b) = (self.tensor().clone(), other.tensor().clone());
        let (name, y) = match op {
            Binary::Add => ("add", a.add(&b)?),
            Binary::Sub => ("sub", a.sub(&b)?),
            Binary::Mul => ("mul", a.mul(&b)?),
            Binary::Div => ("div", a.div(&b)?),
        };
        let (need_a, need_b) = (self.requires_grad(), other.requires_grad());
        let (shape_a, shape_b) = (a.shape().to_vec(), b.shape().to_vec());
        // Only the values the derivatives read are kept for the backward (none for + and −):
        // a residual stream's sums must not hold their operands until then.
        let keep_a = matches!(op, Binary::Mul | Binary::Div) && need_b;
        let keep_b = matches!(op, Binary::Mul) && need_a || matches!(op, Binary::Div);
        let (a, b) = (keep_a.then_some(a), keep_b.then_some(b));
        Ok(Var::from_op(y, name, &[self, other], move |g: &Tensor| {
            let kept = |t: &Option<Tensor>| {
                t.clone().ok_or(Error::Backend { op: name, msg: "an operand its backward needs was not kept".into() })
            };
            let ga = match (need_a, op) {
                (false, _) => None,
                (true, Binary::Add | Binary::Sub) => Some(g.clone()),
                (true, Binary::Mul) => Some(g.mul(&kept(&b)?)?),
                (true, Binary::Div) => Some(g.div(&kept(&b)?)?),
            };
            let gb = match (need_b, op) {
                (false, _) => None,
                (true, Binary::Add) => Some(g.clone()),
                (true, Binary::Sub) => Some(g.neg()?),
                (true, Binary::Mul) => Some(g.mul(&kept(&a)?)?),
                // −g·a / b².
                (true, Binary::Div) => Some(g.mul(&kept(&a)?)?.div(&kept(&b)?.square()?)?.neg()?),
            };
            Ok(vec![ga.map(|t| sum_to(&t, &shape_a)).transpose()?, gb.map(|t| sum_to(&t, &shape_b)).transpose()?])
        }))
    }

    /// self + other, NumPy broadcasting; a broadcast operand's gradient is summed back to
    /// its shape.
    pub fn add(&self, other: &Var) -> Result<Var> {
        self.binary(other, Binary::Add)
    }

    /// self − other, broadcasting.
    pub fn sub(&self, other: &Var) -> Result<Var> {
        self.binary(other, Binary::Sub)
    }

    /// self · other element-wise, broadcasting.
    pub fn mul(&self, other: &Var) -> Result<Var> {
        self.binary(other, Binary::Mul)
    }

    /// self / other element-wise, broadcasting.
    pub fn div(&self, other: &Var) -> Result<Var> {
        self.binary(other, Binary::Div)
    }

    /// Matrix product over the last two dims, batch dims broadcast (see [`Tensor::matmul`]):
    /// dA = dC·Bᵀ and dB = Aᵀ·dC, each a matmul over transposed views (no copy), summed
    /// over the batch dims the operand was broadcast along.
    pub fn matmul(&self, other: &Var) -> Result<Var> {
        let (a, b) = (self.tensor().clone(), other.tensor().clone());
        if a.rank() < 2 || b.rank() < 2 {
            return Err(Error::InvalidArgument {
                op: "matmul",
                msg: format!("autograd matmul takes operands of rank ≥ 2, got {:?} and {:?}", a.shape(), b.shape()),
            });
        }
        let y = a.matmul(&b)?;
        let (need_a, need_b) = (self.requires_grad(), other.requires_grad());
        Ok(Var::from_op(y, "matmul", &[self, other], move |g: &Tensor| {
            let ga = if need_a { Some(sum_to(&g.matmul(&b.transpose(-1, -2)?)?, a.shape())?) } else { None };
            let gb = match (need_b, b.rank(), a.rank()) {
                (false, ..) => None,
                // A weight [K, N] shared by every row of a [..., M, K] input (a Linear
                // layer): one matmul over the rows flattened, [K, rows]·[rows, N].
                // A rank-2 A ([tokens, d]·W, e.g. the tied LM head) is the same case.
                (true, 2, 2) => Some(weight_grad(&a, g)?),
                (true, 2, r) => {
                    let k = a.shape()[r - 1];
                    let rows = a.tensor_rows(k)?;
                    let g2 = g.reshape(&[g.numel() / b.shape()[1], b.shape()[1]])?;
                    Some(weight_grad(&rows, &g2)?)
                }
                (true, ..) => Some(sum_to(&a.transpose(-1, -2)?.matmul(g)?, b.shape())?),
            };
            Ok(vec![ga, gb])
        }))
    }

    /// A linear layer: activation(self·weight + bias), the bias (and a ReLU) applied in the
    /// matmul's epilogue, one kernel. GELU (tanh) and SiLU follow as element-wise ops on the
    /// saved pre-activation (their derivatives need it), which the fusion JIT joins to what
    /// reads them. The backward: the activation's, then db = Σ g over the rows, dx = g·Wᵀ,
    /// dW = xᵀ·g.
    ///
    /// Errors: `Unsupported` for the erf GELU (no derivative op yet: use `GeluTanh`), and
    /// the matmul's errors.
    pub fn linear(&self, weight: &Var, bias: Option<&Var>, activation: Activation) -> Result<Var> {
        let fused_act = match activation {
            Activation::None | Activation::Relu => activation,
            Activation::GeluTanh | Activation::Silu => Activation::None,
            Activation::Gelu => {
                return Err(Error::Unsupported {
                    op: "linear",
                    msg: "the erf GELU has no autograd derivative yet; use Activation::GeluTanh".into(),
                })
            }
        };
        let (x, w) = (self.tensor().clone(), weight.tensor().clone());
        if x.rank() < 2 || w.rank() != 2 {
            return Err(Error::InvalidArgument {
                op: "linear",
                msg: format!(
                    "x must be [..., in] with rank ≥ 2 and weight [in, out], got {:?} and {:?}",
                    x.shape(),
                    w.shape()
                ),
            });
        }
        let b = bias.map(|b| b.tensor().clone());
        let y = x.matmul_with(&w, &MatmulOptions { bias: b.as_ref(), activation: fused_act, ..Default::default() })?;
        let relu_out = (fused_act == Activation::Relu).then(|| y.clone());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let (need_x, need_w) = (self.requires_grad(), weight.requires_grad());
        let z = Var::from_op(y, "linear", &inputs, move |g: &Tensor| {
            let g = match &relu_out {
                Some(y) => g.mul(&y.gt(&scalar(y, 0.0)?)?)?,
                None => g.clone(),
            };
            let (k, n) = (w.shape()[0], w.shape()[1]);
            let g2 = g.reshape(&[g.numel() / n, n])?;
            let gx = if need_x { Some(g.matmul(&w.transpose(0, 1)?)?) } else { None };
            let gw = if need_w { Some(weight_grad(&x.tensor_rows(k)?, &g2)?) } else { None };
            let mut out = vec![gx, gw];
            if let Some(b) = &b {
                out.push(Some(sum_to(&g2, b.shape())?));
            }
            Ok(out)
        });
        match activation {
            Activation::GeluTanh => z.gelu_tanh(),
            Activation::Silu => z.silu(),
            _ => Ok(z),
        }
    }

    /// Sum over `dim`, which is removed; the gradient is the upstream one broadcast back.
    pub fn sum(&self, dim: isize) -> Result<Var> {
        let shape = self.shape().to_vec();
        let d = crate::tensor::resolve_dim("sum", dim, &shape)?;
        let y = self.tensor().sum(dim)?;
        Ok(Var::from_op(y, "sum", &[self], move |g: &Tensor| Ok(vec![Some(g.unsqueeze(d)?.expand(&shape)?)])))
    }

    /// Mean over `dim`, which is removed.
    pub fn mean(&self, dim: isize) -> Result<Var> {
        let d = crate::tensor::resolve_dim("mean", dim, self.shape())?;
        let n = self.shape()[d];
        self.sum(dim)?.div_scalar(n as f32)
    }

    /// Sum of every element: a 0-dim var.
    pub fn sum_all(&self) -> Result<Var> {
        self.reshape(&[self.tensor().numel()])?.sum(0)
    }

    /// Mean of every element: a 0-dim var (a loss).
    pub fn mean_all(&self) -> Result<Var> {
        let n = self.tensor().numel();
        self.sum_all()?.div_scalar(n as f32)
    }

    /// Softmax over `dim`; the backward is the fused softmax-backward kernel over the
    /// saved output.
    pub fn softmax(&self, dim: isize) -> Result<Var> {
        let d = crate::tensor::resolve_dim("softmax", dim, self.shape())? as isize;
        let y = self.tensor().softmax(dim)?;
        let saved = y.clone();
        Ok(Var::from_op(y, "softmax", &[self], move |g: &Tensor| {
            let last = saved.rank() as isize - 1;
            if d == last {
                return Ok(vec![Some(saved.softmax_backward(g)?)]);
            }
            let dx = saved.transpose(d, last)?.softmax_backward(&g.transpose(d, last)?)?;
            Ok(vec![Some(dx.transpose(d, last)?)])
        }))
    }

    /// log-softmax over `dim`: dx = g − softmax(x)·Σ g over the dim.
    pub fn log_softmax(&self, dim: isize) -> Result<Var> {
        let d = crate::tensor::resolve_dim("log_softmax", dim, self.shape())?;
        let y = self.tensor().log_softmax(dim)?;
        let saved = y.clone();
        Ok(Var::from_op(y, "log_softmax", &[self], move |g: &Tensor| {
            let total = g.sum(d as isize)?.unsqueeze(d)?;
            Ok(vec![Some(g.sub(&saved.exp()?.mul(&total)?)?)])
        }))
    }

    /// LayerNorm over the last dim with optional weight and bias `[N]`; the backward is
    /// the fused LayerNorm-backward kernel (dx, and dweight, dbias in the same pass).
    pub fn layer_norm(&self, weight: Option<&Var>, bias: Option<&Var>, eps: f32) -> Result<Var> {
        self.norm(weight, bias, eps, false)
    }

    /// RMSNorm over the last dim with an optional weight `[N]`; the backward is the fused
    /// RMSNorm-backward kernel.
    pub fn rms_norm(&self, weight: Option<&Var>, eps: f32) -> Result<Var> {
        self.norm(weight, None, eps, true)
    }

    fn norm(&self, weight: Option<&Var>, bias: Option<&Var>, eps: f32, rms: bool) -> Result<Var> {
        let x = self.tensor().clone();
        if self.requires_grad() && super::is_grad_enabled() {
            // The backward keeps x: as a pending expression (a residual stream's sum) it would
            // keep every term's buffer alive until then, one per block branch. Stored once, it
            // is one buffer; the forward then reads it instead of fusing the sum as a prologue.
            x.realize()?;
        }
        let (w, b) = (weight.map(|w| w.tensor().clone()), bias.map(|b| b.tensor().clone()));
        let y = if rms { x.rms_norm(w.as_ref(), eps)? } else { x.layer_norm(w.as_ref(), b.as_ref(), eps)? };
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        let name = if rms { "rms_norm" } else { "layer_norm" };
        Ok(Var::from_op(y, name, &inputs, move |g: &Tensor| {
            let grads =
                if rms { x.rms_norm_backward(w.as_ref(), g, eps)? } else { x.layer_norm_backward(w.as_ref(), g, eps)? };
            let mut out = vec![Some(grads.dx)];
            if w.is_some() {
                out.push(grads.dweight);
            }
            if let Some(b) = &b {
                // Without a weight the kernel computes no dbias: Σ g over the rows.
                out.push(Some(match grads.dbias {
                    Some(db) => db,
                    None => sum_to(g, b.shape())?,
                }));
            }
            Ok(out)
        }))
    }

    /// Mean cross-entropy of these logits `[rows, classes]` (leading dims flattened)
    /// against `targets`, a 0-dim f32 var, computed in f32 from logits of any dtype (16-bit
    /// logits need no f32 copy). The forward keeps the logits and each row's log-sum-exp;
    /// the backward writes the gradient in the logits' dtype, the upstream gradient (a loss
    /// scale, say) applied before it is rounded, in one pass (see
    /// [`Tensor::cross_entropy_backward`]).
    pub fn cross_entropy(&self, targets: &[u32]) -> Result<Var> {
        let classes = self.shape().last().copied().unwrap_or(0);
        self.cross_entropy_padded(targets, classes)
    }

    /// [`Var::cross_entropy`] over logits whose rows hold `classes` classes and then
    /// padding (a vocabulary padded for the matmuls' sake, as [`crate::nn::Gpt`]'s): the
    /// padding takes no probability and gets a zero gradient (see
    /// [`Tensor::cross_entropy_forward_padded`]).
    pub fn cross_entropy_padded(&self, targets: &[u32], classes: usize) -> Result<Var> {
        let logits = self.tensor().clone();
        let (loss, lse) = logits.cross_entropy_forward_padded(targets, classes)?;
        let targets = targets.to_vec();
        Ok(Var::from_op(loss, "cross_entropy", &[self], move |g: &Tensor| {
            Ok(vec![Some(logits.cross_entropy_backward_padded(&lse, &targets, g, classes)?)])
        }))
    }

    /// Inverted dropout with probability `p` and `seed` (see [`Tensor::dropout`]); the
    /// backward applies the same mask to the gradient (it is never stored).
    pub fn dropout(&self, p: f32, seed: u64) -> Result<Var> {
        let y = self.tensor().dropout(p, seed)?;
        Ok(Var::from_op(y, "dropout", &[self], move |g: &Tensor| Ok(vec![Some(g.dropout(p, seed)?)])))
    }

    /// Scaled dot-product attention over `[B, H, S, D]` q, k, v (causal or not, scale 1/√D
    /// unless given) through the flash kernels: the forward keeps the log-sum-exp per row,
    /// the backward is the flash backward (dq, dk, dv), recomputing the probabilities.
    pub fn attention(q: &Var, k: &Var, v: &Var, causal: bool, scale: Option<f32>) -> Result<Var> {
        let opts = AttentionOptions { causal, scale, ..Default::default() };
        let (qt, kt, vt) = (q.tensor().clone(), k.tensor().clone(), v.tensor().clone());
        let (out, lse) = attention_forward(&qt, &kt, &vt, &opts)?;
        let saved_out = out.clone();
        Ok(Var::from_op(out, "attention", &[q, k, v], move |g: &Tensor| {
            let opts = AttentionOptions { causal, scale, ..Default::default() };
            let saved = AttentionSaved { q: &qt, k: &kt, v: &vt, out: &saved_out, lse: &lse };
            let (dq, dk, dv) = attention_backward(&saved, g, &opts)?;
            Ok(vec![Some(dq), Some(dk), Some(dv)])
        }))
    }

    /// Self-attention over a fused projection: `qkv` `[B, S, 3·H·D]` holds q, k and v side
    /// by side per token (GPT-2's `c_attn` output) → `[B, S, H·D]`, heads concatenated per
    /// token (the output projection's input). The flash kernels read q, k, v through
    /// strided views of `qkv` and write the output in that order ([`AttentionLayout::Bshd`]),
    /// so neither direction copies: the backward writes `qkv`'s gradient in one pass from
    /// dq, dk, dv ([`attention_backward_qkv`]). What [`Var::attention`] on narrowed,
    /// re-laid copies computes, without the copies (per layer of GPT-2 small in 16-bit at
    /// 8 × 1024 tokens, ~0.1 GB less moved forward and ~0.5 GB less backward, counted from
    /// the shapes in BENCHMARKS.md).
    ///
    /// Errors: `InvalidArgument` unless `qkv` is rank 3 with its last dim 3·heads·D, D ≥ 1;
    /// then the attention kernels' errors.
    pub fn attention_qkv(qkv: &Var, heads: usize, causal: bool, scale: Option<f32>) -> Result<Var> {
        let (b, s, width) = match *qkv.shape() {
            [b, s, w] if heads > 0 && w > 0 && w % (3 * heads) == 0 => (b, s, w),
            _ => {
                return Err(Error::InvalidArgument {
                    op: "attention_qkv",
                    msg: format!("qkv must be [batch, seq, 3·{heads}·head_dim], got {:?}", qkv.shape()),
                })
            }
        };
        let d = width / (3 * heads);
        let packed = qkv.tensor().reshape(&[b, s, 3, heads, d])?;
        let part = |i: usize| packed.narrow(2, i, 1)?.squeeze(2);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let opts = AttentionOptions { causal, scale, layout: AttentionLayout::Bshd, ..Default::default() };
        let (out, lse) = attention_forward(&q, &k, &v, &opts)?;
        let saved_out = out.clone();
        let y = out.reshape(&[b, s, heads * d])?;
        Ok(Var::from_op(y, "attention_qkv", &[qkv], move |g: &Tensor| {
            let saved = AttentionSaved { q: &q, k: &k, v: &v, out: &saved_out, lse: &lse };
            let dqkv = attention_backward_qkv(&saved, &g.reshape(&[b, s, heads, d])?, &opts)?;
            Ok(vec![Some(dqkv.reshape(&[b, s, width])?)])
        }))
    }

    /// Rows `ids` of `table` `[V, ...]` (an embedding lookup): `[ids.len(), ...]`. The
    /// backward adds each gradient row into its id's row (a deterministic scatter-add, no
    /// atomics), into the table's other gradient where it has one — a tied output
    /// projection's — in the same kernel ([`Tensor::index_add`]), else into zeros
    /// ([`Tensor::index_add_rows`]).
    pub fn embedding(table: &Var, ids: &[u32]) -> Result<Var> {
        let y = table.tensor().index_select(ids)?;
        let (ids, rows): (std::sync::Arc<[u32]>, usize) = (ids.into(), table.shape()[0]);
        Ok(Var::from_op_grads(y, "embedding", &[table], move |g: &Tensor| {
            Ok(vec![Some(super::Grad::Rows { dy: g.clone(), ids, rows })])
        }))
    }

    // ---- views -------------------------------------------------------------------------

    /// The same elements in `shape`.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let from = self.shape().to_vec();
        let y = self.tensor().reshape(shape)?;
        Ok(Var::from_op(y, "reshape", &[self], move |g: &Tensor| Ok(vec![Some(g.reshape(&from)?)])))
    }

    /// Dims reordered: dim i of the result is dim `order[i]` of `self`.
    pub fn permute(&self, order: &[usize]) -> Result<Var> {
        let y = self.tensor().permute(order)?;
        let back = inverse(order);
        Ok(Var::from_op(y, "permute", &[self], move |g: &Tensor| Ok(vec![Some(g.permute(&back)?)])))
    }

    /// Two dims swapped.
    pub fn transpose(&self, dim0: isize, dim1: isize) -> Result<Var> {
        let y = self.tensor().transpose(dim0, dim1)?;
        Ok(Var::from_op(y, "transpose", &[self], move |g: &Tensor| Ok(vec![Some(g.transpose(dim0, dim1)?)])))
    }

    /// A size-1 dim inserted at `dim`.
    pub fn unsqueeze(&self, dim: usize) -> Result<Var> {
        let from = self.shape().to_vec();
        let y = self.tensor().unsqueeze(dim)?;
        Ok(Var::from_op(y, "unsqueeze", &[self], move |g: &Tensor| Ok(vec![Some(g.reshape(&from)?)])))
    }

    /// Broadcast to `shape` (a view); the gradient is summed back.
    pub fn expand(&self, shape: &[usize]) -> Result<Var> {
        let from = self.shape().to_vec();
        let y = self.tensor().expand(shape)?;
        Ok(Var::from_op(y, "expand", &[self], move |g: &Tensor| Ok(vec![Some(sum_to(g, &from)?)])))
    }

    /// `len` indices of `dim` from `start` (a view); the gradient is the upstream one
    /// placed there, zeros around it.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Var> {
        let from = self.shape().to_vec();
        let d = crate::tensor::resolve_dim("narrow", dim, &from)?;
        let y = self.tensor().narrow(dim, start, len)?;
        Ok(Var::from_op(y, "narrow", &[self], move |g: &Tensor| {
            let zeros = |n: usize| {
                let mut s = from.clone();
                s[d] = n;
                Tensor::zeros(g.gpu(), &s, g.dtype())
            };
            let (before, after) = (zeros(start)?, zeros(from[d] - start - len)?);
            Ok(vec![Some(Tensor::cat(&[&before, g, &after], d as isize)?)])
        }))
    }

    /// Concatenation along `dim` (see [`Tensor::cat`]); each input's gradient is its slice.
    pub fn cat(vars: &[&Var], dim: isize) -> Result<Var> {
        let tensors: Vec<&Tensor> = vars.iter().map(|v| v.tensor()).collect();
        let y = Tensor::cat(&tensors, dim)?;
        let d = crate::tensor::resolve_dim("cat", dim, y.shape())? as isize;
        let sizes: Vec<usize> = vars.iter().map(|v| v.shape()[d as usize]).collect();
        Ok(Var::from_op(y, "cat", vars, move |g: &Tensor| {
            let mut start = 0;
            let mut out = Vec::new();
            for &n in &sizes {
                out.push(Some(g.narrow(d, start, n)?));
                start += n;
            }
            Ok(out)
        }))
    }

    /// A contiguous copy (the gradient passes through).
    pub fn contiguous(&self) -> Result<Var> {
        let y = self.tensor().contiguous()?;
        Ok(Var::from_op(y, "contiguous", &[self], move |g: &Tensor| Ok(vec![Some(g.clone())])))
    }

    /// The values in `dtype`; the gradient is cast back to this var's dtype.
    pub fn to_dtype(&self, dtype: crate::DType) -> Result<Var> {
        let from = self.dtype();
        let y = self.tensor().to_dtype(dtype)?;
        Ok(Var::from_op(y, "to_dtype", &[self], move |g: &Tensor| Ok(vec![Some(g.to_dtype(from)?)])))
    }
}
