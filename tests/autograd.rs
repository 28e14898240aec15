//! Autograd: every differentiable op's gradient against float64 central differences of a
//! float64 reference of the op, on odd shapes in f32; the forward against the same
//! reference; and the graph's rules (accumulation, shared inputs, no_grad, freed graphs).
//!
//! Each check reduces the op's output y to a scalar L = Σ r·y with seeded weights r (so
//! every output element matters, with a different weight), back-propagates, and compares
//! each input's gradient with (L(x + h) − L(x − h)) / 2h computed in f64.

mod common;

use common::{assert_close, gpu, norm_ref, random_vec};
use wgkernels::autograd::{no_grad, Var};
use wgkernels::{DType, Result, Tensor};

/// A test input: its shape, its values (f32-representable, held as f64), and whether it
/// gets a gradient.
struct Input {
    shape: Vec<usize>,
    values: Vec<f64>,
    grad: bool,
}

fn input(shape: &[usize], seed: u64) -> Input {
    let n = shape.iter().product();
    Input { shape: shape.to_vec(), values: random_vec(n, seed).into_iter().map(f64::from).collect(), grad: true }
}

/// Values in [0.5, 2.5): for log, sqrt, division.
fn positive(shape: &[usize], seed: u64) -> Input {
    let mut i = input(shape, seed);
    i.values.iter_mut().for_each(|v| *v = (v.abs() + 0.5) as f32 as f64);
    i
}

fn constant(mut i: Input) -> Input {
    i.grad = false;
    i
}

type RefFn<'a> = &'a dyn Fn(&[Vec<f64>]) -> Vec<f64>;

/// Checks the forward of `op` against `reference` and every gradient against central
/// differences of Σ r·reference, with gradient tolerances (atol, rtol).
#[track_caller]
fn check(name: &str, inputs: &[Input], op: &dyn Fn(&[Var]) -> Result<Var>, reference: RefFn, tol: (f64, f64)) {
    let gpu = gpu();
    let vars: Vec<Var> = inputs
        .iter()
        .map(|i| {
            let data: Vec<f32> = i.values.iter().map(|&v| v as f32).collect();
            let t = Tensor::from_slice(&gpu, &data, &i.shape).unwrap();
            if i.grad {
                t.requires_grad()
            } else {
                t.constant()
            }
        })
        .collect();
    let y = op(&vars).unwrap_or_else(|e| panic!("{name}: forward: {e}"));
    let values: Vec<Vec<f64>> = inputs.iter().map(|i| i.values.clone()).collect();
    let want_y = reference(&values);
    assert_close(&format!("{name}: forward"), &y.tensor().to_vec_f32().unwrap(), &want_y, 1e-4, 1e-4);
    let r: Vec<f64> = random_vec(want_y.len(), 777).into_iter().map(f64::from).collect();
    let rf: Vec<f32> = r.iter().map(|&v| v as f32).collect();
    let weights = Tensor::from_slice(&gpu, &rf, y.shape()).unwrap().constant();
    let loss = y.mul(&weights).unwrap().sum_all().unwrap();
    loss.backward().unwrap_or_else(|e| panic!("{name}: backward: {e}"));
    let objective = |vals: &[Vec<f64>]| -> f64 { reference(vals).iter().zip(&r).map(|(a, b)| a * b).sum() };
    for (k, (inp, var)) in inputs.iter().zip(&vars).enumerate() {
        if !inp.grad {
            assert!(var.grad().is_none(), "{name}: a constant got a gradient");
            continue;
        }
        let got = var.grad().unwrap_or_else(|| panic!("{name}: input {k} has no gradient"));
        assert_eq!(got.shape(), inp.shape.as_slice(), "{name}: input {k}'s gradient shape");
        let mut want = Vec::with_capacity(inp.values.len());
        let mut vals = values.clone();
        for e in 0..inp.values.len() {
            let x = vals[k][e];
            let h = 1e-6 * x.abs().max(1.0);
            vals[k][e] = x + h;
            let up = objective(&vals);
            vals[k][e] = x - h;
            let down = objective(&vals);
            vals[k][e] = x;
            want.push((up - down) / (2.0 * h));
        }
        assert_close(&format!("{name}: d/d input {k}"), &got.to_vec_f32().unwrap(), &want, tol.0, tol.1);
    }
}

const TOL: (f64, f64) = (1e-4, 1e-3);

fn map(f: impl Fn(f64) -> f64) -> impl Fn(&[Vec<f64>]) -> Vec<f64> {
    move |v: &[Vec<f64>]| v[0].iter().map(|&x| f(x)).collect()
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn unary_ops_match_finite_differences() {
    type Case = (&'static str, fn(&Var) -> Result<Var>, fn(f64) -> f64, bool);
    let cases: [Case; 15] = [
        ("neg", Var::neg, |x| -x, false),
        ("exp", Var::exp, f64::exp, false),
        ("log", Var::log, f64::ln, true),
        ("sqrt", Var::sqrt, f64::sqrt, true),
        ("rsqrt", Var::rsqrt, |x| 1.0 / x.sqrt(), true),
        ("recip", Var::recip, |x| 1.0 / x, true),
        ("square", Var::square, |x| x * x, false),
        ("tanh", Var::tanh, f64::tanh, false),
        ("sigmoid", Var::sigmoid, sigmoid, false),
        ("relu", Var::relu, |x| x.max(0.0), false),
        ("gelu_tanh", Var::gelu_tanh, gelu_tanh, false),
        ("silu", Var::silu, |x| x * sigmoid(x), false),
        ("sin", Var::sin, f64::sin, false),
        ("cos", Var::cos, f64::cos, false),
        ("abs", Var::abs, f64::abs, false),
    ];
    for (name, op, f, needs_positive) in cases {
        let x = if needs_positive { positive(&[7, 5], 1) } else { input(&[7, 5], 1) };
        check(name, &[x], &|v| op(&v[0]), &map(f), TOL);
    }
}

#[test]
fn scalar_ops_match_finite_differences() {
    type Case = (&'static str, fn(&Var, f32) -> Result<Var>, fn(f64, f64) -> f64);
    let cases: [Case; 7] = [
        ("add_scalar", Var::add_scalar, |x, c| x + c),
        ("sub_scalar", Var::sub_scalar, |x, c| x - c),
        ("rsub_scalar", Var::rsub_scalar, |x, c| c - x),
        ("mul_scalar", Var::mul_scalar, |x, c| x * c),
        ("div_scalar", Var::div_scalar, |x, c| x / c),
        ("rdiv_scalar", Var::rdiv_scalar, |x, c| c / x),
        ("pow_scalar", Var::pow_scalar, |x, c| x.powf(c)),
    ];
    for (name, op, f) in cases {
        let c = 1.75f32;
        check(name, &[positive(&[3, 11], 2)], &|v| op(&v[0], c), &map(move |x| f(x, c as f64)), TOL);
    }
}

/// `a ∘ b` with NumPy broadcasting in f64.
fn broadcast_ref(a: &[f64], sa: &[usize], b: &[f64], sb: &[usize], f: fn(f64, f64) -> f64) -> Vec<f64> {
    let rank = sa.len().max(sb.len());
    let pad = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
    let (pa, pb) = (pad(sa), pad(sb));
    let out: Vec<usize> = (0..rank).map(|d| pa[d].max(pb[d])).collect();
    let n: usize = out.iter().product();
    let index = |shape: &[usize], mut i: usize| {
        let mut e = 0;
        let mut stride = 1;
        for d in (0..rank).rev() {
            let c = i % out[d];
            i /= out[d];
            if shape[d] != 1 {
                e += c * stride;
            }
            stride *= shape[d];
        }
        e
    };
    (0..n).map(|i| f(a[index(&pa, i)], b[index(&pb, i)])).collect()
}

#[test]
fn broadcast_binary_ops_sum_gradients_back_to_each_operand() {
    type Case = (&'static str, fn(&Var, &Var) -> Result<Var>, fn(f64, f64) -> f64);
    let cases: [Case; 4] = [
        ("add", Var::add, |a, b| a + b),
        ("sub", Var::sub, |a, b| a - b),
        ("mul", Var::mul, |a, b| a * b),
        ("div", Var::div, |a, b| a / b),
    ];
    let shapes: [(&[usize], &[usize]); 4] = [(&[3, 5], &[3, 5]), (&[3, 5], &[5]), (&[2, 1, 4], &[3, 1]), (&[4], &[])];
    for (name, op, f) in cases {
        for (sa, sb) in shapes {
            let (a, b) = (input(sa, 3), positive(sb, 4));
            let reference = move |v: &[Vec<f64>]| broadcast_ref(&v[0], sa, &v[1], sb, f);
            check(&format!("{name} {sa:?} {sb:?}"), &[a, b], &|v| op(&v[0], &v[1]), &reference, TOL);
        }
    }
}

/// [.., m, k] × [.., k, n] in f64, batch dims broadcast (the rhs may be 2-D).
fn matmul_ref(a: &[f64], sa: &[usize], b: &[f64], sb: &[usize]) -> Vec<f64> {
    let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
    let batches = a.len() / (m * k);
    let b_batched = sb.len() > 2;
    let mut out = vec![0.0; batches * m * n];
    for bt in 0..batches {
        let boff = if b_batched { bt * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                out[bt * m * n + i * n + j] = (0..k).map(|p| a[bt * m * k + i * k + p] * b[boff + p * n + j]).sum();
            }
        }
    }
    out
}

#[test]
fn matmul_gradients_over_plain_batched_and_shared_weights() {
    let cases: [(&[usize], &[usize]); 3] = [(&[5, 7], &[7, 3]), (&[2, 5, 7], &[2, 7, 3]), (&[2, 3, 5, 7], &[7, 4])];
    for (sa, sb) in cases {
        let reference = move |v: &[Vec<f64>]| matmul_ref(&v[0], sa, &v[1], sb);
        check(
            &format!("matmul {sa:?} {sb:?}"),
            &[input(sa, 5), input(sb, 6)],
            &|v| v[0].matmul(&v[1]),
            &reference,
            TOL,
        );
    }
    // A transposed view as the lhs: (xᵀ)·w, x [7, 5] → [5, 7].
    let reference = |v: &[Vec<f64>]| {
        let xt: Vec<f64> = (0..35).map(|i| v[0][(i % 7) * 5 + i / 7]).collect();
        matmul_ref(&xt, &[5, 7], &v[1], &[7, 3])
    };
    check(
        "matmul xᵀ·w",
        &[input(&[7, 5], 7), input(&[7, 3], 8)],
        &|v| v[0].transpose(0, 1)?.matmul(&v[1]),
        &reference,
        TOL,
    );
    // Only the weight needs a gradient.
    let reference = move |v: &[Vec<f64>]| matmul_ref(&v[0], &[4, 6], &v[1], &[6, 5]);
    check(
        "matmul constant·w",
        &[constant(input(&[4, 6], 9)), input(&[6, 5], 10)],
        &|v| v[0].matmul(&v[1]),
        &reference,
        TOL,
    );
}

#[test]
fn reductions_spread_the_gradient_back() {
    let shape = [3usize, 4, 5];
    let sum_dim = |v: &[f64], d: usize, mean: bool| -> Vec<f64> {
        let (outer, len, inner) =
            (shape[..d].iter().product::<usize>(), shape[d], shape[d + 1..].iter().product::<usize>());
        let mut out = vec![0.0; outer * inner];
        for o in 0..outer {
            for j in 0..len {
                for i in 0..inner {
                    out[o * inner + i] += v[(o * len + j) * inner + i] / if mean { len as f64 } else { 1.0 };
                }
            }
        }
        out
    };
    for d in 0..3 {
        check(
            &format!("sum({d})"),
            &[input(&shape, 11)],
            &|v| v[0].sum(d as isize),
            &|v| sum_dim(&v[0], d, false),
            TOL,
        );
        check(
            &format!("mean({d})"),
            &[input(&shape, 12)],
            &|v| v[0].mean(d as isize),
            &|v| sum_dim(&v[0], d, true),
            TOL,
        );
    }
    check("sum_all", &[input(&shape, 13)], &|v| v[0].sum_all(), &|v| vec![v[0].iter().sum()], TOL);
    check("mean_all", &[input(&shape, 14)], &|v| v[0].mean_all(), &|v| vec![v[0].iter().sum::<f64>() / 60.0], TOL);
}

/// Softmax (or log-softmax) of each row of length n.
fn softmax_rows(x: &[f64], n: usize, log: bool) -> Vec<f64> {
    x.chunks(n)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            row.iter().map(move |v| if log { v - lse } else { (v - lse).exp() }).collect::<Vec<_>>()
        })
        .collect()
}

/// `x` [r, c] transposed.
fn transposed(x: &[f64], r: usize, c: usize) -> Vec<f64> {
    (0..r * c).map(|i| x[(i % r) * c + i / r]).collect()
}

#[test]
fn softmax_and_log_softmax_over_any_dim() {
    check("softmax(-1)", &[input(&[5, 9], 15)], &|v| v[0].softmax(-1), &|v| softmax_rows(&v[0], 9, false), TOL);
    check("log_softmax(-1)", &[input(&[5, 9], 16)], &|v| v[0].log_softmax(-1), &|v| softmax_rows(&v[0], 9, true), TOL);
    // Over dim 0 of [6, 4]: rows of the transpose.
    for log in [false, true] {
        let reference = move |v: &[Vec<f64>]| transposed(&softmax_rows(&transposed(&v[0], 6, 4), 6, log), 4, 6);
        let op = move |v: &[Var]| if log { v[0].log_softmax(0) } else { v[0].softmax(0) };
        check(&format!("softmax(0) log {log}"), &[input(&[6, 4], 17)], &op, &reference, TOL);
    }
}

#[test]
fn layer_norm_and_rms_norm_with_and_without_affine() {
    let n = 13;
    let shape = [4usize, n];
    let eps = 1e-5;
    check(
        "layer_norm(w, b)",
        &[input(&shape, 18), input(&[n], 19), input(&[n], 20)],
        &|v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), eps),
        &|v| norm_ref(&v[0], n, Some(&v[1]), Some(&v[2]), eps as f64, false),
        TOL,
    );
    check(
        "layer_norm()",
        &[input(&shape, 21)],
        &|v| v[0].layer_norm(None, None, eps),
        &|v| norm_ref(&v[0], n, None, None, eps as f64, false),
        TOL,
    );
    check(
        "layer_norm(bias only)",
        &[input(&shape, 22), input(&[n], 23)],
        &|v| v[0].layer_norm(None, Some(&v[1]), eps),
        &|v| norm_ref(&v[0], n, None, Some(&v[1]), eps as f64, false),
        TOL,
    );
    check(
        "rms_norm(w)",
        &[input(&shape, 24), input(&[n], 25)],
        &|v| v[0].rms_norm(Some(&v[1]), eps),
        &|v| norm_ref(&v[0], n, Some(&v[1]), None, eps as f64, true),
        TOL,
    );
    check(
        "rms_norm()",
        &[input(&[3, 2, 7], 26)],
        &|v| v[0].rms_norm(None, eps),
        &|v| norm_ref(&v[0], 7, None, None, eps as f64, true),
        TOL,
    );
}

#[test]
fn cross_entropy_gradient_is_its_fused_dlogits() {
    let (rows, classes) = (6usize, 11usize);
    let targets: Vec<u32> = (0..rows).map(|i| (i * 7 % classes) as u32).collect();
    let t2 = targets.clone();
    let reference = move |v: &[Vec<f64>]| {
        let lp = softmax_rows(&v[0], classes, true);
        vec![-(0..rows).map(|r| lp[r * classes + t2[r] as usize]).sum::<f64>() / rows as f64]
    };
    check("cross_entropy", &[input(&[rows, classes], 27)], &|v| v[0].cross_entropy(&targets), &reference, TOL);
}

#[test]
fn dropout_gradient_applies_the_same_mask() {
    let (p, seed) = (0.3f32, 99u64);
    let reference = move |v: &[Vec<f64>]| {
        v[0].iter()
            .enumerate()
            .map(|(i, &x)| {
                let keep = wgkernels::ops::elementwise::dropout_keeps(p, seed, i as u32);
                if keep {
                    x * (1.0 / (1.0 - p as f64)) as f32 as f64
                } else {
                    0.0
                }
            })
            .collect()
    };
    check("dropout", &[input(&[9, 7], 28)], &|v| v[0].dropout(p, seed), &reference, TOL);
}

/// softmax(q·kᵀ·scale [+ causal mask])·v per (batch, head), [B, H, S, D].
fn attention_ref(q: &[f64], k: &[f64], v: &[f64], s: usize, d: usize, causal: bool) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; q.len()];
    for bh in 0..q.len() / (s * d) {
        let base = bh * s * d;
        for i in 0..s {
            let keys = if causal { i + 1 } else { s };
            let scores: Vec<f64> = (0..keys)
                .map(|j| (0..d).map(|c| q[base + i * d + c] * k[base + j * d + c]).sum::<f64>() * scale)
                .collect();
            let p = softmax_rows(&scores, keys, false);
            for c in 0..d {
                out[base + i * d + c] = (0..keys).map(|j| p[j] * v[base + j * d + c]).sum();
            }
        }
    }
    out
}

#[test]
fn attention_gradients_through_the_flash_backward() {
    let shape = [1usize, 2, 5, 8];
    for causal in [false, true] {
        let reference = move |v: &[Vec<f64>]| attention_ref(&v[0], &v[1], &v[2], 5, 8, causal);
        check(
            &format!("attention causal {causal}"),
            &[input(&shape, 29), input(&shape, 30), input(&shape, 31)],
            &|v| Var::attention(&v[0], &v[1], &v[2], causal, None),
            &reference,
            (2e-4, 2e-3),
        );
    }
}

/// Self-attention over a fused projection `[B, S, 3·H·D]` (q, k, v read in place, the
/// gradient written in one pass), against f64 finite differences of the reference.
#[test]
fn attention_over_a_packed_qkv_projection() {
    let (b, s, h, d) = (2usize, 5usize, 2usize, 8usize);
    for causal in [false, true] {
        let reference = move |v: &[Vec<f64>]| {
            // [B, S, 3, H, D] → q, k, v as [B, H, S, D]; the output back as [B, S, H, D].
            let part = |i: usize| {
                let mut t = vec![0.0; b * h * s * d];
                for bi in 0..b {
                    for si in 0..s {
                        for hi in 0..h {
                            for e in 0..d {
                                t[((bi * h + hi) * s + si) * d + e] = v[0][(((bi * s + si) * 3 + i) * h + hi) * d + e];
                            }
                        }
                    }
                }
                t
            };
            let o = attention_ref(&part(0), &part(1), &part(2), s, d, causal);
            let mut out = vec![0.0; o.len()];
            for bi in 0..b {
                for hi in 0..h {
                    for si in 0..s {
                        for e in 0..d {
                            out[((bi * s + si) * h + hi) * d + e] = o[((bi * h + hi) * s + si) * d + e];
                        }
                    }
                }
            }
            out
        };
        check(
            &format!("attention_qkv causal {causal}"),
            &[input(&[b, s, 3 * h * d], 32)],
            &|v| Var::attention_qkv(&v[0], h, causal, None),
            &reference,
            (2e-4, 2e-3),
        );
    }
}

#[test]
fn views_route_gradients_to_the_viewed_elements() {
    let shape = [2usize, 3, 4];
    let id = |v: &[Vec<f64>]| v[0].clone();
    check("reshape", &[input(&shape, 32)], &|v| v[0].reshape(&[6, 4]), &id, TOL);
    check(
        "contiguous of a transpose",
        &[input(&[3, 4], 33)],
        &|v| v[0].transpose(0, 1)?.contiguous(),
        &|v| transposed(&v[0], 3, 4),
        TOL,
    );
    // permute [2, 3, 4] → [4, 2, 3]: out[c][a][b] = x[a][b][c].
    let permuted = |v: &[Vec<f64>]| (0..24).map(|i| v[0][(i / 3 % 2) * 12 + (i % 3) * 4 + i / 6]).collect();
    check("permute", &[input(&shape, 34)], &|v| v[0].permute(&[2, 0, 1])?.contiguous(), &permuted, TOL);
    // unsqueeze + expand: [3] → [3, 1] → [3, 5], each value used 5 times.
    let expanded = |v: &[Vec<f64>]| (0..15).map(|i| v[0][i / 5]).collect();
    check("unsqueeze, expand", &[input(&[3], 35)], &|v| v[0].unsqueeze(1)?.expand(&[3, 5]), &expanded, TOL);
    // narrow dim 1 of [2, 3, 4] to 1..3: out [2, 2, 4].
    let narrowed = |v: &[Vec<f64>]| (0..16).map(|i| v[0][(i / 8) * 12 + (1 + i / 4 % 2) * 4 + i % 4]).collect();
    check("narrow", &[input(&shape, 36)], &|v| v[0].narrow(1, 1, 2), &narrowed, TOL);
    // cat along dim 1: [2, 3] and [2, 2] → [2, 5].
    let catted = |v: &[Vec<f64>]| {
        (0..10).map(|i| if i % 5 < 3 { v[0][(i / 5) * 3 + i % 5] } else { v[1][(i / 5) * 2 + i % 5 - 3] }).collect()
    };
    check("cat", &[input(&[2, 3], 37), input(&[2, 2], 38)], &|v| Var::cat(&[&v[0], &v[1]], 1), &catted, TOL);
}

/// A two-layer MLP where x feeds two branches (the gradients of a shared input add up),
/// fused and unfused: the same gradients either way, and against finite differences.
#[test]
fn a_composed_graph_with_a_shared_input_fused_and_unfused() {
    let gpu = gpu();
    let op = |v: &[Var]| -> Result<Var> {
        let h = v[0].matmul(&v[1])?.add(&v[2])?.gelu_tanh()?;
        h.matmul(&v[3])?.add(&v[0].narrow(1, 0, 3)?)?.tanh()
    };
    let reference = |v: &[Vec<f64>]| {
        let mut h = matmul_ref(&v[0], &[4, 5], &v[1], &[5, 6]);
        for (i, x) in h.iter_mut().enumerate() {
            *x = gelu_tanh(*x + v[2][i % 6]);
        }
        let o = matmul_ref(&h, &[4, 6], &v[3], &[6, 3]);
        o.iter().enumerate().map(|(i, x)| (x + v[0][(i / 3) * 5 + i % 3]).tanh()).collect()
    };
    let inputs = || [input(&[4, 5], 40), input(&[5, 6], 41), input(&[6], 42), input(&[6, 3], 43)];
    let was = gpu.fusion();
    let mut grads = Vec::new();
    for fused in [true, false] {
        gpu.set_fusion(fused);
        check(&format!("mlp fused {fused}"), &inputs(), &op, &reference, TOL);
        // The same graph again, to keep its gradients.
        let vars: Vec<Var> = inputs()
            .iter()
            .map(|i| {
                let d: Vec<f32> = i.values.iter().map(|&v| v as f32).collect();
                Tensor::from_slice(&gpu, &d, &i.shape).unwrap().requires_grad()
            })
            .collect();
        op(&vars).unwrap().sum_all().unwrap().backward().unwrap();
        grads.push(vars.iter().map(|v| v.grad().unwrap().to_vec_f32().unwrap()).collect::<Vec<_>>());
    }
    gpu.set_fusion(was);
    for (k, (f, u)) in grads[0].iter().zip(&grads[1]).enumerate() {
        let u64: Vec<f64> = u.iter().map(|&x| x as f64).collect();
        assert_close(&format!("input {k}: fused vs unfused gradient"), f, &u64, 1e-6, 1e-5);
    }
}

#[test]
fn gradients_accumulate_until_zeroed_and_no_grad_records_nothing() {
    let gpu = gpu();
    let w = Tensor::from_slice(&gpu, &[1.0f32, -2.0, 3.0], &[3]).unwrap().requires_grad();
    let step = || w.square().unwrap().sum_all().unwrap().backward().unwrap();
    step();
    assert_eq!(w.grad().unwrap().to_vec::<f32>().unwrap(), vec![2.0, -4.0, 6.0]);
    step();
    assert_eq!(w.grad().unwrap().to_vec::<f32>().unwrap(), vec![4.0, -8.0, 12.0], "accumulated");
    w.zero_grad();
    assert!(w.grad().is_none());
    let y = no_grad(|| w.exp().unwrap());
    assert!(!y.requires_grad() && y.is_leaf(), "no_grad records nothing");
    assert!(wgkernels::autograd::is_grad_enabled(), "no_grad restores the mode");
    // A constant's result requires no grad; backward from it says so.
    let c = Tensor::from_slice(&gpu, &[1.0f32], &[1]).unwrap().constant();
    let err = c.exp().unwrap().backward().unwrap_err().to_string();
    assert!(err.contains("requires no grad"), "{err}");
}

#[test]
fn backward_errors_name_what_is_wrong() {
    let gpu = gpu();
    let w = Tensor::randn(&gpu, &[2, 3], DType::F32, 1).unwrap().requires_grad();
    let y = w.tanh().unwrap();
    let err = y.backward().unwrap_err().to_string();
    assert!(err.contains("scalar") && err.contains("[2, 3]"), "{err}");
    let loss = y.sum_all().unwrap();
    loss.backward().unwrap();
    let again = loss.backward().unwrap_err().to_string();
    assert!(again.contains("ran already"), "{again}");
    let err = loss.backward_with(Tensor::zeros(&gpu, &[2], DType::F32).unwrap()).unwrap_err().to_string();
    assert!(err.contains("backward"), "{err}");
}

/// An optimizer step over the tape's (param, grad) pairs lowers the loss, and a parameter
/// without a gradient is refused by name.
#[test]
fn optimizer_steps_from_the_tape() {
    use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
    let gpu = gpu();
    let w = Tensor::randn(&gpu, &[6, 3], DType::F32, 2).unwrap().requires_grad();
    let x = Tensor::randn(&gpu, &[10, 6], DType::F32, 3).unwrap().constant();
    let target = Tensor::randn(&gpu, &[10, 3], DType::F32, 4).unwrap().constant();
    let mut opt = AdamW::new(&gpu, AdamWConfig { lr: 0.05, weight_decay: 0.0, ..Default::default() }).unwrap();
    let loss = |w: &Var| x.matmul(w).unwrap().sub(&target).unwrap().square().unwrap().mean_all().unwrap();
    let first = loss(&w).tensor().to_vec_f32().unwrap()[0];
    for _ in 0..20 {
        loss(&w).backward().unwrap();
        opt.step_params(std::slice::from_ref(&w)).unwrap();
        w.zero_grad();
    }
    let last = loss(&w).tensor().to_vec_f32().unwrap()[0];
    assert!(last < 0.8 * first, "loss {first} → {last}");
    let err = opt.step_params(std::slice::from_ref(&w)).unwrap_err().to_string();
    assert!(err.contains("no gradient"), "{err}");
}

#[test]
fn embedding_gradient_adds_rows_of_repeated_ids() {
    let (vocab, d) = (7usize, 5usize);
    let ids: Vec<u32> = vec![3, 0, 3, 6, 3, 1];
    let ids2 = ids.clone();
    let reference = move |v: &[Vec<f64>]| ids2.iter().flat_map(|&i| v[0][i as usize * d..][..d].to_vec()).collect();
    check("embedding", &[input(&[vocab, d], 44)], &|v| Var::embedding(&v[0], &ids), &reference, TOL);
}

/// A table both looked up and multiplied by (a tied embedding): its gradient is the
/// product's plus the lookup's rows, added into it in one kernel, whichever of the two the
/// backward reaches first (emb(ids)·tableᵀ reaches the lookup first, table·emb(ids)ᵀ the
/// product); and a table looked up twice (both gradients rows).
#[test]
fn tied_embedding_gradients_add_the_rows_into_the_product_s() {
    let (vocab, d) = (7usize, 5usize);
    let ids: Vec<u32> = vec![3, 0, 3, 6, 3, 1];
    let ids2: Vec<u32> = vec![2, 2, 5, 0, 6, 6];
    let n = ids.len();
    let rows =
        |t: &[f64], ids: &[u32]| -> Vec<f64> { ids.iter().flat_map(|&i| t[i as usize * d..][..d].to_vec()).collect() };
    // emb [n, d] · tableᵀ [d, vocab] → [n, vocab].
    let (i1, i2) = (ids.clone(), ids.clone());
    let logits = move |v: &[Vec<f64>]| -> Vec<f64> {
        let e = rows(&v[0], &i1);
        (0..n)
            .flat_map(|r| (0..vocab).map(move |c| (r, c)))
            .map(|(r, c)| (0..d).map(|k| e[r * d + k] * v[0][c * d + k]).sum())
            .collect()
    };
    check(
        "tied, lookup first",
        &[input(&[vocab, d], 45)],
        &|v| Var::embedding(&v[0], &i2)?.matmul(&v[0].transpose(0, 1)?),
        &logits,
        TOL,
    );
    // table [vocab, d] · embᵀ [d, n] → [vocab, n].
    let (i3, i4) = (ids.clone(), ids.clone());
    let transposed = move |v: &[Vec<f64>]| -> Vec<f64> {
        let e = rows(&v[0], &i3);
        (0..vocab)
            .flat_map(|c| (0..n).map(move |r| (c, r)))
            .map(|(c, r)| (0..d).map(|k| v[0][c * d + k] * e[r * d + k]).sum())
            .collect()
    };
    check(
        "tied, product first",
        &[input(&[vocab, d], 46)],
        &|v| v[0].matmul(&Var::embedding(&v[0], &i4)?.transpose(0, 1)?),
        &transposed,
        TOL,
    );
    let (i5, i6, j5, j6) = (ids.clone(), ids.clone(), ids2.clone(), ids2.clone());
    let twice = move |v: &[Vec<f64>]| -> Vec<f64> {
        rows(&v[0], &i5).iter().zip(rows(&v[0], &j5)).map(|(a, b)| a * b).collect()
    };
    check(
        "looked up twice",
        &[input(&[vocab, d], 47)],
        &|v| Var::embedding(&v[0], &i6)?.mul(&Var::embedding(&v[0], &j6)?),
        &twice,
        TOL,
    );
    // Rows added into a leaf's gradient from an earlier backward (accumulation).
    let gpu = gpu();
    let table = Tensor::randn(&gpu, &[vocab, d], DType::F32, 48).unwrap().requires_grad();
    let loss = || Var::embedding(&table, &ids).unwrap().sum_all().unwrap();
    loss().backward().unwrap();
    let once = table.grad().unwrap().to_vec_f32().unwrap();
    loss().backward().unwrap();
    let twice: Vec<f64> = once.iter().map(|&g| 2.0 * g as f64).collect();
    assert_close(
        "embedding gradient accumulated twice",
        &table.grad().unwrap().to_vec_f32().unwrap(),
        &twice,
        0.0,
        1e-6,
    );
}

/// linear: activation(x·W + b) with the bias (and ReLU) in the matmul's epilogue, for every
/// activation with a derivative, with and without a bias, on a batched input.
#[test]
fn linear_with_epilogue_bias_and_activations() {
    use wgkernels::ops::matmul::Activation;
    type Derivable = (Activation, fn(f64) -> f64);
    let acts: [Derivable; 4] = [
        (Activation::None, |z| z),
        (Activation::Relu, |z| z.max(0.0)),
        (Activation::GeluTanh, gelu_tanh),
        (Activation::Silu, |z| z * sigmoid(z)),
    ];
    for (act, f) in acts {
        for with_bias in [true, false] {
            let reference = move |v: &[Vec<f64>]| {
                let mut z = matmul_ref(&v[0], &[6, 5], &v[1], &[5, 4]);
                for (i, x) in z.iter_mut().enumerate() {
                    *x = f(*x + if with_bias { v[2][i % 4] } else { 0.0 });
                }
                z
            };
            let mut inputs = vec![input(&[2, 3, 5], 45), input(&[5, 4], 46)];
            if with_bias {
                inputs.push(input(&[4], 47));
            }
            check(
                &format!("linear {act:?} bias {with_bias}"),
                &inputs,
                &|v| v[0].linear(&v[1], v.get(2), act),
                &reference,
                TOL,
            );
        }
    }
    let gpu = gpu();
    let x = Tensor::randn(&gpu, &[4, 3], DType::F32, 1).unwrap().requires_grad();
    let w = Tensor::randn(&gpu, &[3, 2], DType::F32, 2).unwrap().requires_grad();
    let err = x.linear(&w, None, Activation::Gelu).unwrap_err().to_string();
    assert!(err.contains("linear") && err.contains("GeluTanh"), "{err}");
}

/// The backward's element-wise chains are fused like the forward's: GELU's derivative
/// times the upstream gradient (about ten ops) costs one kernel with fusion on.
#[test]
fn backward_element_wise_chains_are_fused() {
    let gpu = wgkernels::Gpu::new().unwrap();
    let mut counts = Vec::new();
    for fused in [true, false] {
        gpu.set_fusion(fused);
        let x = Tensor::randn(&gpu, &[64, 32], DType::F32, 3).unwrap().requires_grad();
        let loss = x.gelu_tanh().unwrap().sum_all().unwrap();
        loss.tensor().realize().unwrap();
        gpu.synchronize().unwrap();
        let before = gpu.stats().dispatches;
        loss.backward().unwrap();
        x.grad().unwrap().realize().unwrap();
        gpu.synchronize().unwrap();
        counts.push(gpu.stats().dispatches - before);
    }
    eprintln!("GPU commands in the backward: fused {}, unfused {}", counts[0], counts[1]);
    assert!(counts[0] * 3 <= counts[1], "GPU commands in the backward: fused {}, unfused {}", counts[0], counts[1]);
}

/// A Linear over many rows takes its weight gradient Xᵀ·dY with the rows split into chunks
/// (`matmul_split_k`): against f64 for the loss Σ y·c, whose dW is Xᵀ·c, in f32 and f16.
#[test]
fn a_linear_over_many_rows_has_the_weight_gradient_of_the_reference() {
    let gpu = common::gpu();
    let (rows, k, n) = (2048, 5, 3);
    for dtype in [DType::F32, DType::F16] {
        let xv = common::random_vec(rows * k, 81);
        let cv = common::random_vec(rows * n, 82);
        let wv = common::random_vec(k * n, 83);
        let x = Tensor::from_f32(&gpu, &xv, &[rows, k], dtype).unwrap().constant();
        let c = Tensor::from_f32(&gpu, &cv, &[rows, n], dtype).unwrap().constant();
        let w = Tensor::from_f32(&gpu, &wv, &[k, n], dtype).unwrap().requires_grad();
        let y = x.linear(&w, None, wgkernels::ops::matmul::Activation::None).unwrap();
        y.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
        let (xr, cr) = (common::rounded(&xv, dtype), common::rounded(&cv, dtype));
        let mut want = vec![0.0; k * n];
        for r in 0..rows {
            for i in 0..k {
                for j in 0..n {
                    want[i * n + j] += xr[r * k + i] * cr[r * n + j];
                }
            }
        }
        // f32 accumulation over 2048 products of magnitude ≤ 1; 16-bit rounds the result.
        let (atol, rtol) = if dtype == DType::F32 { (1e-3, 1e-5) } else { (0.05, 2e-3) };
        let got = w.grad().unwrap().to_vec_f32().unwrap();
        common::assert_close(&format!("dW over {rows} rows, {dtype:?}"), &got, &want, atol, rtol);
    }
}

/// `backward_hooked` reports each parameter once, when its gradient is complete: a weight
/// used both first and last (tied) comes after one used only in the middle, and what
/// `grad()` holds at that moment is the final gradient. A hook's error stops the backward.
#[test]
fn backward_hooks_fire_once_per_parameter_when_its_gradient_is_complete() {
    let gpu = gpu();
    let tied = Var::parameter(Tensor::randn(&gpu, &[4, 4], DType::F32, 1).unwrap());
    let middle = Var::parameter(Tensor::randn(&gpu, &[4, 4], DType::F32, 2).unwrap());
    let x = Var::constant(Tensor::randn(&gpu, &[3, 4], DType::F32, 3).unwrap());
    let loss = || x.matmul(&tied)?.tanh()?.matmul(&middle)?.tanh()?.matmul(&tied)?.square()?.mean_all();
    let mut seen = Vec::new();
    loss()
        .unwrap()
        .backward_hooked(&mut |id| {
            let p = if id == tied.id() { &tied } else { &middle };
            seen.push((id, p.grad().unwrap().to_vec_f32()?));
            Ok(())
        })
        .unwrap();
    let ids: Vec<_> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [middle.id(), tied.id()]);
    for (p, (_, at_hook)) in [&middle, &tied].into_iter().zip(&seen) {
        assert_eq!(&p.grad().unwrap().to_vec_f32().unwrap(), at_hook, "the gradient changed after its hook");
    }
    // Against a plain backward's gradients.
    let hooked: Vec<Vec<f32>> = [&tied, &middle].iter().map(|p| p.grad().unwrap().to_vec_f32().unwrap()).collect();
    tied.zero_grad();
    middle.zero_grad();
    loss().unwrap().backward().unwrap();
    for (p, h) in [&tied, &middle].iter().zip(&hooked) {
        assert_eq!(&p.grad().unwrap().to_vec_f32().unwrap(), h);
    }
    let err = loss()
        .unwrap()
        .backward_hooked(&mut |_| Err(wgkernels::Error::InvalidArgument { op: "hook", msg: "stop".into() }))
        .unwrap_err();
    assert!(err.to_string().contains("stop"), "{err}");
}
