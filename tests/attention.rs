//! Flash attention forward and backward against float64 references: sequence lengths 1, 7,
//! 64, 129, 1000; head dims 32, 64, 128 (and 80, 96 for the padded tiles); causal or not;
//! S_q ≠ S_k (decoding against a KV cache); grouped-query attention; broadcast biases with
//! −∞ entries; both layouts; f16 and bf16 storage; each path (flash, naive). The backward
//! against the reference gradients and, on a tiny case, against finite differences.

mod common;
use common::*;
use wgkernels::ops::attention::{
    attention, attention_backward, attention_backward_qkv, attention_forward, attention_path, coop_bwd_tilings,
    coop_bwd_tilings_for, coop_tilings, coop_tilings_for, flash_tilings, AttentionLayout, AttentionOptions,
    AttentionPath, AttentionSaved, CoopBwdTiling, CoopTiling, FlashTiling,
};
use wgkernels::{DType, Error, Tensor};

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    h: usize,
    h_kv: usize,
    s_q: usize,
    s_k: usize,
    d: usize,
    causal: bool,
}

impl Case {
    fn new(s_q: usize, s_k: usize, d: usize, causal: bool) -> Self {
        Self { b: 1, h: 2, h_kv: 2, s_q, s_k, d, causal }
    }
    fn gqa(self, h: usize, h_kv: usize) -> Self {
        Self { h, h_kv, ..self }
    }
    fn batch(self, b: usize) -> Self {
        Self { b, ..self }
    }
}

/// Inputs in BHSD order (f64, as stored) and as tensors in `layout`.
struct Inputs {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    tq: Tensor,
    tk: Tensor,
    tv: Tensor,
}

/// BHSD values → a tensor in `layout`.
fn tensor_in(values: &[f32], b: usize, h: usize, s: usize, d: usize, layout: AttentionLayout, dtype: DType) -> Tensor {
    let gpu = gpu();
    let t = Tensor::from_f32(&gpu, values, &[b, h, s, d], dtype).unwrap();
    match layout {
        AttentionLayout::Bhsd => t,
        // A real BSHD tensor (contiguous in that order), not a view of the BHSD one.
        AttentionLayout::Bshd => t.transpose(1, 2).unwrap().contiguous().unwrap(),
    }
}

/// A BHSD-ordered f32 copy of a tensor given in `layout`.
fn values_bhsd(t: &Tensor, layout: AttentionLayout) -> Vec<f32> {
    match layout {
        AttentionLayout::Bhsd => t.to_vec_f32().unwrap(),
        AttentionLayout::Bshd => t.transpose(1, 2).unwrap().contiguous().unwrap().to_vec_f32().unwrap(),
    }
}

fn inputs(c: &Case, layout: AttentionLayout, dtype: DType, seed: u64) -> Inputs {
    inputs_at(c, layout, dtype, seed, [0.75; 3])
}

/// Random q, k, v of the magnitudes `mag` (each times a standard normal-ish sample).
fn inputs_at(c: &Case, layout: AttentionLayout, dtype: DType, seed: u64, mag: [f32; 3]) -> Inputs {
    let mk = |heads: usize, s: usize, seed: u64, m: f32| {
        let v: Vec<f32> = random_vec(c.b * heads * s * c.d, seed).iter().map(|x| x * m).collect();
        let t = tensor_in(&v, c.b, heads, s, c.d, layout, dtype);
        (rounded(&v, dtype), t)
    };
    let (q, tq) = mk(c.h, c.s_q, seed, mag[0]);
    let (k, tk) = mk(c.h_kv, c.s_k, seed + 1, mag[1]);
    let (v, tv) = mk(c.h_kv, c.s_k, seed + 2, mag[2]);
    Inputs { q, k, v, tq, tk, tv }
}

/// f64 reference forward: (out BHSD, lse, probabilities [B, H, S_q, S_k]).
fn reference(
    c: &Case,
    x: &Inputs,
    scale: f64,
    bias: Option<&dyn Fn(usize, usize, usize, usize) -> f64>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let Case { b, h, h_kv, s_q, s_k, d, causal } = *c;
    let mut out = vec![0.0; b * h * s_q * d];
    let mut lse = vec![0.0; b * h * s_q];
    let mut probs = vec![0.0; b * h * s_q * s_k];
    let offset = s_k as i64 - s_q as i64;
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / (h / h_kv);
            for i in 0..s_q {
                let qrow = &x.q[((bi * h + hi) * s_q + i) * d..][..d];
                let mut scores = vec![f64::NEG_INFINITY; s_k];
                for (j, sc) in scores.iter_mut().enumerate() {
                    if causal && j as i64 > i as i64 + offset {
                        continue;
                    }
                    let krow = &x.k[((bi * h_kv + kh) * s_k + j) * d..][..d];
                    let dot: f64 = qrow.iter().zip(krow).map(|(a, b)| a * b).sum();
                    *sc = dot * scale + bias.map_or(0.0, |f| f(bi, hi, i, j));
                }
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let row = (bi * h + hi) * s_q + i;
                if m == f64::NEG_INFINITY {
                    lse[row] = f64::NEG_INFINITY;
                    continue;
                }
                let sum: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                lse[row] = m + sum.ln();
                for j in 0..s_k {
                    let p = (scores[j] - m).exp() / sum;
                    probs[row * s_k + j] = p;
                    let vrow = &x.v[((bi * h_kv + kh) * s_k + j) * d..][..d];
                    for (o, vv) in out[row * d..][..d].iter_mut().zip(vrow) {
                        *o += p * vv;
                    }
                }
            }
        }
    }
    (out, lse, probs)
}

/// f64 reference gradients (dq, dk, dv), BHSD, from the reference probabilities.
fn reference_grads(
    c: &Case,
    x: &Inputs,
    scale: f64,
    probs: &[f64],
    out: &[f64],
    dout: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let Case { b, h, h_kv, s_q, s_k, d, .. } = *c;
    let mut dq = vec![0.0; b * h * s_q * d];
    let mut dk = vec![0.0; b * h_kv * s_k * d];
    let mut dv = vec![0.0; b * h_kv * s_k * d];
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / (h / h_kv);
            for i in 0..s_q {
                let row = (bi * h + hi) * s_q + i;
                let do_row = &dout[row * d..][..d];
                let delta: f64 = do_row.iter().zip(&out[row * d..][..d]).map(|(a, b)| a * b).sum();
                for j in 0..s_k {
                    let p = probs[row * s_k + j];
                    if p == 0.0 {
                        continue;
                    }
                    let kv = ((bi * h_kv + kh) * s_k + j) * d;
                    let dp: f64 = do_row.iter().zip(&x.v[kv..][..d]).map(|(a, b)| a * b).sum();
                    let ds = p * (dp - delta);
                    for e in 0..d {
                        dq[row * d + e] += scale * ds * x.k[kv + e];
                        dk[kv + e] += scale * ds * x.q[row * d + e];
                        dv[kv + e] += p * do_row[e];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Tolerances for outputs of magnitude ~1 computed in f32 and stored in `dtype`.
fn att_tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (2e-5, 1e-4),
        d => tol(d),
    }
}

fn check_forward(c: Case, layout: AttentionLayout, dtype: DType, path: AttentionPath) {
    let x = inputs(&c, layout, dtype, 3 + c.s_q as u64);
    let opts = AttentionOptions { causal: c.causal, layout, path, ..Default::default() };
    let scale = 1.0 / (c.d as f64).sqrt();
    let (want, want_lse, _) = reference(&c, &x, scale, None);
    let what = format!("{c:?} {layout:?} {dtype:?} {path:?}");
    let out = attention(&x.tq, &x.tk, &x.tv, &opts).unwrap();
    assert_eq!(out.shape(), x.tq.shape(), "{what}");
    let (atol, rtol) = att_tol(dtype);
    assert_close(&format!("attention {what}"), &values_bhsd(&out, layout), &want, atol, rtol);
    if path != AttentionPath::Naive {
        let (_, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &opts).unwrap();
        assert_close(&format!("lse {what}"), &lse.to_vec_f32().unwrap(), &want_lse, 1e-5, 1e-5);
    }
}

#[test]
fn forward_matches_f64_over_lengths_dims_and_masks() {
    for s in [1, 7, 64, 129] {
        for d in [32, 64, 128] {
            for causal in [false, true] {
                check_forward(Case::new(s, s, d, causal), AttentionLayout::Bhsd, DType::F32, AttentionPath::Flash);
            }
        }
    }
    // Padded head dims: the forward pads O columns to 64 or 128 and the S product's head
    // dim to its chunk of 16 or 32 (8 → 16 or 32, 40 → 48 or 64; 80 and 96 → 128 columns).
    for d in [8, 40, 80, 96] {
        check_forward(Case::new(33, 33, d, true), AttentionLayout::Bhsd, DType::F32, AttentionPath::Flash);
    }
}

#[test]
fn forward_long_sequence() {
    check_forward(Case::new(1000, 1000, 64, true).gqa(1, 1), AttentionLayout::Bhsd, DType::F32, AttentionPath::Flash);
    check_forward(Case::new(1000, 1000, 32, false).gqa(1, 1), AttentionLayout::Bhsd, DType::F32, AttentionPath::Flash);
}

#[test]
fn kv_cache_shapes_gqa_layouts_and_16_bit_storage() {
    // Decoding: one or a few new queries against a longer cache, causal bottom-right.
    for (s_q, s_k) in [(1, 129), (7, 64), (64, 7)] {
        for causal in [false, true] {
            check_forward(Case::new(s_q, s_k, 64, causal), AttentionLayout::Bhsd, DType::F32, AttentionPath::Flash);
        }
    }
    check_forward(
        Case::new(65, 65, 32, true).gqa(4, 2).batch(2),
        AttentionLayout::Bhsd,
        DType::F32,
        AttentionPath::Flash,
    );
    check_forward(Case::new(17, 40, 64, false).gqa(6, 1), AttentionLayout::Bhsd, DType::F32, AttentionPath::Flash);
    check_forward(
        Case::new(33, 33, 64, true).gqa(4, 2).batch(2),
        AttentionLayout::Bshd,
        DType::F32,
        AttentionPath::Flash,
    );
    for dtype in [DType::F16, DType::BF16] {
        check_forward(Case::new(70, 70, 64, true).gqa(4, 2), AttentionLayout::Bhsd, dtype, AttentionPath::Flash);
        check_forward(Case::new(9, 70, 32, false), AttentionLayout::Bshd, dtype, AttentionPath::Flash);
    }
}

#[test]
fn naive_path_matches_f64_and_the_flash_path() {
    for (c, layout) in [
        (Case::new(7, 7, 32, true), AttentionLayout::Bhsd),
        (Case::new(5, 40, 64, true).gqa(4, 2), AttentionLayout::Bshd),
        (Case::new(64, 64, 64, false), AttentionLayout::Bhsd),
    ] {
        check_forward(c, layout, DType::F32, AttentionPath::Naive);
        // Fused against unfused on the same inputs.
        let x = inputs(&c, layout, DType::F32, 40);
        let opts = AttentionOptions { causal: c.causal, layout, ..Default::default() };
        let flash = attention(&x.tq, &x.tk, &x.tv, &AttentionOptions { path: AttentionPath::Flash, ..opts }).unwrap();
        let naive = attention(&x.tq, &x.tk, &x.tv, &AttentionOptions { path: AttentionPath::Naive, ..opts }).unwrap();
        let want: Vec<f64> = naive.to_vec_f32().unwrap().iter().map(|&x| x as f64).collect();
        assert_close(&format!("flash vs naive {c:?}"), &flash.to_vec_f32().unwrap(), &want, 1e-5, 1e-4);
    }
}

/// Every tiling of the FMA-unit flash kernels this adapter allows (`flash_tilings`; on the
/// 32 KiB software devices the two with 16-column head chunks, on the H200 all four), at
/// lengths that do not divide the 64-row tiles, head dims that pad (8, 40, 80), S_q ≠ S_k,
/// GQA, a batch, both layouts, f16 storage, and a bias with masked entries; the backward
/// under each too.
#[test]
fn every_flash_tiling_matches_f64() {
    let gpu = gpu();
    let limits = gpu.info().limits.clone();
    let tilings = flash_tilings(64, &limits);
    assert!(!tilings.is_empty(), "no flash tiling fits {} bytes", limits.max_compute_workgroup_storage_size);
    let cases = [
        (Case::new(129, 129, 64, true), AttentionLayout::Bhsd, DType::F32),
        (Case::new(7, 150, 128, true).gqa(4, 2), AttentionLayout::Bhsd, DType::F32),
        (Case::new(77, 65, 80, false).batch(2), AttentionLayout::Bshd, DType::F32),
        (Case::new(33, 33, 8, false), AttentionLayout::Bhsd, DType::F32),
        (Case::new(70, 70, 40, true), AttentionLayout::Bhsd, DType::F16),
    ];
    for t in &tilings {
        for (c, layout, dtype) in cases {
            let x = inputs(&c, layout, dtype, 11 + c.s_k as u64);
            let opts = AttentionOptions { causal: c.causal, layout, flash_tiling: Some(*t), ..Default::default() };
            let opts = AttentionOptions { path: AttentionPath::Flash, ..opts };
            let (want, want_lse, _) = reference(&c, &x, 1.0 / (c.d as f64).sqrt(), None);
            let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &opts).unwrap();
            let what = format!("flash tiling {} {c:?} {layout:?} {dtype:?}", t.label());
            let (atol, rtol) = att_tol(dtype);
            assert_close(&what, &values_bhsd(&out, layout), &want, atol, rtol);
            assert_close(&format!("lse {what}"), &lse.to_vec_f32().unwrap(), &want_lse, 1e-5, 1e-5);
        }
        // A bias with −∞ entries (one whole row masked: its output 0) under every tiling.
        let c = Case::new(37, 45, 32, false);
        let x = inputs(&c, AttentionLayout::Bhsd, DType::F32, 2);
        let mask: Vec<f32> = (0..c.s_q * c.s_k)
            .map(|i| if i / c.s_k == 5 || (i % c.s_k) % 7 == 3 { f32::NEG_INFINITY } else { 0.01 * (i % 13) as f32 })
            .collect();
        let mask_t = Tensor::from_slice(&gpu, &mask, &[c.s_q, c.s_k]).unwrap();
        let f = |_b: usize, _h: usize, i: usize, j: usize| mask[i * c.s_k + j] as f64;
        let (want, _, _) = reference(&c, &x, 0.3, Some(&f));
        let opts = AttentionOptions {
            scale: Some(0.3),
            bias: Some(&mask_t),
            path: AttentionPath::Flash,
            flash_tiling: Some(*t),
            ..Default::default()
        };
        let got = attention(&x.tq, &x.tk, &x.tv, &opts).unwrap().to_vec_f32().unwrap();
        assert_close(&format!("masked bias, flash tiling {}", t.label()), &got, &want, 2e-5, 1e-4);
        // The backward takes the tiling's head-dim chunk: tiles on both sides, padded head
        // dims, GQA, S_q ≠ S_k.
        for (c, layout, dtype) in [
            (Case::new(129, 70, 40, true), AttentionLayout::Bhsd, DType::F32),
            (Case::new(65, 130, 80, false).gqa(4, 2), AttentionLayout::Bshd, DType::F32),
            (Case::new(33, 33, 128, true), AttentionLayout::Bhsd, DType::F16),
        ] {
            check_backward_path(c, layout, dtype, AttentionPath::Flash, None, Some(*t), 4.0);
        }
    }
    // A tiling that is not in the list is refused, naming the list.
    let huge = FlashTiling { rows: 4, head_chunk: 64 };
    let x = inputs(&Case::new(7, 7, 32, false), AttentionLayout::Bhsd, DType::F32, 1);
    let opts = AttentionOptions { flash_tiling: Some(huge), path: AttentionPath::Flash, ..Default::default() };
    let e = attention(&x.tq, &x.tk, &x.tv, &opts).unwrap_err().to_string();
    assert!(e.contains("flash_tilings"), "{e}");
    // The backward refuses it too (before dispatching anything).
    let (o, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &AttentionOptions::default()).unwrap();
    let e = attention_backward(&AttentionSaved { q: &x.tq, k: &x.tk, v: &x.tv, out: &o, lse: &lse }, &o, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("attention_backward") && e.contains("flash_tilings"), "{e}");
}

#[test]
fn broadcast_bias_with_masked_entries() {
    let gpu = gpu();
    let c = Case::new(37, 45, 32, false).batch(2).gqa(4, 2);
    let x = inputs(&c, AttentionLayout::Bhsd, DType::F32, 9);
    // A [B, 1, 1, S_k] padding mask (the last 5 keys of batch 1 masked) plus an ALiBi-like
    // [1, H, S_q, S_k] slope, summed by broadcasting on the host side of the reference.
    let pad: Vec<f32> =
        (0..c.b * c.s_k).map(|i| if i / c.s_k == 1 && i % c.s_k >= 40 { f32::NEG_INFINITY } else { 0.0 }).collect();
    let pad_t = Tensor::from_slice(&gpu, &pad, &[c.b, 1, 1, c.s_k]).unwrap();
    let alibi: Vec<f32> = (0..c.h * c.s_q * c.s_k)
        .map(|i| {
            let (hh, qi, kj) = (i / (c.s_q * c.s_k), (i / c.s_k) % c.s_q, i % c.s_k);
            -0.05 * (hh + 1) as f32 * (qi as f32 - kj as f32).abs()
        })
        .collect();
    let alibi_t = Tensor::from_slice(&gpu, &alibi, &[1, c.h, c.s_q, c.s_k]).unwrap();
    let scale = 0.3;
    for (name, bias, f) in [
        (
            "padding",
            &pad_t,
            Box::new(|b: usize, _h: usize, _i: usize, j: usize| pad[b * c.s_k + j] as f64)
                as Box<dyn Fn(usize, usize, usize, usize) -> f64>,
        ),
        ("alibi", &alibi_t, Box::new(|_b, h, i, j| alibi[(h * c.s_q + i) * c.s_k + j] as f64)),
    ] {
        let (want, _, _) = reference(&c, &x, scale, Some(&*f));
        for path in [AttentionPath::Flash, AttentionPath::Naive] {
            let opts = AttentionOptions { scale: Some(scale as f32), bias: Some(bias), path, ..Default::default() };
            let got = attention(&x.tq, &x.tk, &x.tv, &opts).unwrap().to_vec_f32().unwrap();
            assert_close(&format!("{name} bias, {path:?}"), &got, &want, 2e-5, 1e-4);
        }
    }
}

#[test]
fn a_query_that_sees_no_key_gets_zero_and_minus_infinity() {
    // Causal with S_q > S_k: the first S_q − S_k queries see nothing.
    let c = Case::new(10, 4, 32, true);
    let x = inputs(&c, AttentionLayout::Bhsd, DType::F32, 5);
    let (out, lse) =
        attention_forward(&x.tq, &x.tk, &x.tv, &AttentionOptions { causal: true, ..Default::default() }).unwrap();
    let (want, want_lse, _) = reference(&c, &x, 1.0 / (32f64).sqrt(), None);
    assert_close("output", &out.to_vec_f32().unwrap(), &want, 2e-5, 1e-4);
    assert_close("lse", &lse.to_vec_f32().unwrap(), &want_lse, 1e-5, 1e-5);
    assert!(lse.to_vec_f32().unwrap()[0] == f32::NEG_INFINITY);
}

fn check_backward(c: Case, layout: AttentionLayout, dtype: DType) {
    check_backward_path(c, layout, dtype, AttentionPath::Auto, None, None, 4.0)
}

/// The backward through `path` (and tensor-core `tiling`, or FMA-unit `flash` tiling)
/// against the f64 reference gradients, at `loosen` times the dtype's tolerance.
fn check_backward_path(
    c: Case,
    layout: AttentionLayout,
    dtype: DType,
    path: AttentionPath,
    tiling: Option<CoopBwdTiling>,
    flash: Option<FlashTiling>,
    loosen: f64,
) {
    let gpu = gpu();
    let x = inputs(&c, layout, dtype, 100 + c.s_q as u64);
    let opts = AttentionOptions {
        causal: c.causal,
        layout,
        path,
        coop_bwd_tiling: tiling,
        flash_tiling: flash,
        ..Default::default()
    };
    let scale = 1.0 / (c.d as f64).sqrt();
    let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &opts).unwrap();
    let dout_v: Vec<f32> = random_vec(c.b * c.h * c.s_q * c.d, 77);
    let dout = tensor_in(&dout_v, c.b, c.h, c.s_q, c.d, layout, dtype);
    let (dq, dk, dv) =
        attention_backward(&AttentionSaved { q: &x.tq, k: &x.tk, v: &x.tv, out: &out, lse: &lse }, &dout, &opts)
            .unwrap();
    let (ref_out, _, probs) = reference(&c, &x, scale, None);
    // The kernel's δ uses the stored output; use the same in the reference.
    let out_used: Vec<f64> = values_bhsd(&out, layout).iter().map(|&v| v as f64).collect();
    let _ = ref_out;
    let (wq, wk, wv) = reference_grads(&c, &x, scale, &probs, &out_used, &rounded(&dout_v, dtype));
    let what = format!(
        "{c:?} {layout:?} {dtype:?} {path:?} tiling {:?} flash tiling {:?}",
        tiling.map(|t| t.label()),
        flash.map(|t| t.label())
    );
    let (atol, rtol) = match dtype {
        DType::F32 => (5e-5, 2e-4),
        d => (tol(d).0 * loosen, tol(d).1 * loosen),
    };
    for (name, got, want) in [("dq", &dq, &wq), ("dk", &dk, &wk), ("dv", &dv, &wv)] {
        assert_eq!(got.dtype(), dtype);
        assert_close(&format!("{name} {what}"), &values_bhsd(got, layout), want, atol, rtol);
    }
    let _ = gpu;
}

/// The backward reads dO through its own view: an upstream gradient with a row stride and
/// an offset of its own (a narrowed view, D contiguous) gives the gradients of the same
/// values stored contiguously, in both layouts and every dtype (δ = Σ dO·O pairs each
/// tensor's strides with its own buffer).
#[test]
fn backward_reads_the_upstream_gradient_through_its_own_strides() {
    let gpu = gpu();
    let c = Case::new(9, 9, 24, true);
    for layout in [AttentionLayout::Bhsd, AttentionLayout::Bshd] {
        for dtype in DType::ALL {
            let x = inputs(&c, layout, dtype, 31);
            let opts = AttentionOptions { causal: c.causal, layout, ..Default::default() };
            let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &opts).unwrap();
            let dout_v: Vec<f32> = random_vec(c.b * c.h * c.s_q * c.d, 78);
            let dout = tensor_in(&dout_v, c.b, c.h, c.s_q, c.d, layout, dtype);
            // The same values at element 1 of rows of D + 3.
            let shape = dout.shape().to_vec();
            let wide_shape = [shape[0], shape[1], shape[2], shape[3] + 3];
            let mut wide = vec![0.5f32; wide_shape.iter().product()];
            let vals = dout.to_vec_f32().unwrap();
            for (r, row) in vals.chunks(c.d).enumerate() {
                wide[r * (c.d + 3) + 1..r * (c.d + 3) + 1 + c.d].copy_from_slice(row);
            }
            let wide = Tensor::from_f32(&gpu, &wide, &wide_shape, dtype).unwrap();
            let strided = wide.narrow(3, 1, c.d).unwrap();
            let saved = AttentionSaved { q: &x.tq, k: &x.tk, v: &x.tv, out: &out, lse: &lse };
            let want = attention_backward(&saved, &dout, &opts).unwrap();
            let got = attention_backward(&saved, &strided, &opts).unwrap();
            for (name, g, w) in [("dq", &got.0, &want.0), ("dk", &got.1, &want.1), ("dv", &got.2, &want.2)] {
                let w: Vec<f64> = w.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
                assert_close(
                    &format!("{name} {layout:?} {dtype:?}, strided dO"),
                    &g.to_vec_f32().unwrap(),
                    &w,
                    1e-6,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn backward_matches_f64_gradients() {
    for s in [1, 7, 64, 129] {
        for (d, causal) in [(32, false), (64, true), (128, true)] {
            check_backward(Case::new(s, s, d, causal), AttentionLayout::Bhsd, DType::F32);
        }
    }
    check_backward(Case::new(7, 50, 64, true).gqa(4, 2).batch(2), AttentionLayout::Bhsd, DType::F32);
    check_backward(Case::new(33, 20, 32, false).gqa(6, 2), AttentionLayout::Bshd, DType::F32);
    check_backward(Case::new(40, 40, 80, true), AttentionLayout::Bhsd, DType::F32);
    // Several 64-row tiles on both sides, S_q > S_k causal (the first queries see no key),
    // a head dim that pads to 48 in the products.
    check_backward(Case::new(150, 70, 40, true), AttentionLayout::Bhsd, DType::F32);
    check_backward(Case::new(40, 40, 64, true).gqa(2, 1), AttentionLayout::Bhsd, DType::F16);
}

/// The packed backward of a fused qkv projection: q, k, v read as strided views of one
/// `[B, S, 3, H, D]` tensor, their gradients written as one. Checked against the f64
/// gradients and against `attention_backward`'s three gradients stacked (the unfused
/// composition), every dtype, lengths that do not divide the 64-row tiles, causal or not.
#[test]
fn backward_qkv_packs_the_three_gradients_of_one_projection() {
    let gpu = gpu();
    for dtype in DType::ALL {
        for (b, s, h, d, causal) in
            [(1, 7, 2, 32, true), (2, 65, 3, 64, true), (1, 129, 2, 16, false), (2, 5, 1, 8, false)]
        {
            let c = Case { b, h, h_kv: h, s_q: s, s_k: s, d, causal };
            let x = inputs(&c, AttentionLayout::Bhsd, dtype, 300 + s as u64);
            // [B, S, 3, H, D] from the BHSD values of q, k, v.
            let mut packed = vec![0.0f32; b * s * 3 * h * d];
            for (part, values) in [&x.q, &x.k, &x.v].into_iter().enumerate() {
                for bi in 0..b {
                    for hi in 0..h {
                        for si in 0..s {
                            for e in 0..d {
                                packed[(((bi * s + si) * 3 + part) * h + hi) * d + e] =
                                    values[((bi * h + hi) * s + si) * d + e] as f32;
                            }
                        }
                    }
                }
            }
            let qkv = Tensor::from_f32(&gpu, &packed, &[b, s, 3, h, d], dtype).unwrap();
            let view = |i: usize| qkv.narrow(2, i, 1).unwrap().squeeze(2).unwrap();
            let (q, k, v) = (view(0), view(1), view(2));
            let opts = AttentionOptions { causal, layout: AttentionLayout::Bshd, ..Default::default() };
            let (out, lse) = attention_forward(&q, &k, &v, &opts).unwrap();
            let dout_v: Vec<f32> = random_vec(b * h * s * d, 78);
            let dout = tensor_in(&dout_v, b, h, s, d, AttentionLayout::Bshd, dtype);
            let saved = AttentionSaved { q: &q, k: &k, v: &v, out: &out, lse: &lse };
            let dqkv = attention_backward_qkv(&saved, &dout, &opts).unwrap();
            assert_eq!((dqkv.shape(), dqkv.dtype()), (&[b, s, 3, h, d][..], dtype));
            let what = format!("{c:?} {dtype:?}");
            // The f64 gradients (the kernel's δ uses its stored output; so does the reference).
            let scale = 1.0 / (d as f64).sqrt();
            let (_, _, probs) = reference(&c, &x, scale, None);
            let out_used: Vec<f64> = values_bhsd(&out, AttentionLayout::Bshd).iter().map(|&v| v as f64).collect();
            let (wq, wk, wv) = reference_grads(&c, &x, scale, &probs, &out_used, &rounded(&dout_v, dtype));
            let (atol, rtol) = match dtype {
                DType::F32 => (5e-5, 2e-4),
                d => (tol(d).0 * 4.0, tol(d).1 * 4.0),
            };
            let part = |i: usize| dqkv.narrow(2, i, 1).unwrap().squeeze(2).unwrap();
            for (i, (name, want)) in [("dq", &wq), ("dk", &wk), ("dv", &wv)].into_iter().enumerate() {
                let got = values_bhsd(&part(i), AttentionLayout::Bshd);
                assert_close(&format!("packed {name} {what}"), &got, want, atol, rtol);
            }
            // The unfused composition: attention_backward's gradients stacked on a new dim 2.
            let (dq, dk, dv) = attention_backward(&saved, &dout, &opts).unwrap();
            let stacked =
                Tensor::cat(&[&dq.unsqueeze(2).unwrap(), &dk.unsqueeze(2).unwrap(), &dv.unsqueeze(2).unwrap()], 2)
                    .unwrap();
            let want: Vec<f64> = stacked.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
            assert_close(&format!("packed vs stacked {what}"), &dqkv.to_vec_f32().unwrap(), &want, 0.0, 0.0);
        }
    }
    // Refused: another layout, grouped-query heads, S_q ≠ S_k.
    let t = |shape: &[usize]| Tensor::randn(&gpu, shape, DType::F32, 1).unwrap();
    let (q, o) = (t(&[1, 4, 2, 8]), AttentionOptions { layout: AttentionLayout::Bshd, ..Default::default() });
    let (out, lse) = attention_forward(&q, &q, &q, &o).unwrap();
    let bhsd = AttentionOptions::default();
    let e = attention_backward_qkv(&AttentionSaved { q: &q, k: &q, v: &q, out: &out, lse: &lse }, &out, &bhsd);
    assert!(matches!(e, Err(Error::InvalidArgument { op: "attention_backward_qkv", .. })), "{e:?}");
    let kv = t(&[1, 4, 1, 8]);
    let (out, lse) = attention_forward(&q, &kv, &kv, &o).unwrap();
    let e = attention_backward_qkv(&AttentionSaved { q: &q, k: &kv, v: &kv, out: &out, lse: &lse }, &out, &o);
    assert!(matches!(e, Err(Error::InvalidArgument { op: "attention_backward_qkv", .. })), "GQA: {e:?}");
    let kv = t(&[1, 6, 2, 8]);
    let (out, lse) = attention_forward(&q, &kv, &kv, &o).unwrap();
    let e = attention_backward_qkv(&AttentionSaved { q: &q, k: &kv, v: &kv, out: &out, lse: &lse }, &out, &o);
    assert!(matches!(e, Err(Error::InvalidArgument { op: "attention_backward_qkv", .. })), "S_k 6: {e:?}");
}

#[test]
fn backward_matches_finite_differences() {
    // L = Σ dO ∘ attention(q, k, v) on a tiny case; central differences of the f32 forward.
    let gpu = gpu();
    let c = Case::new(3, 5, 8, true).gqa(2, 1);
    let x = inputs(&c, AttentionLayout::Bhsd, DType::F32, 1);
    let opts = AttentionOptions { causal: true, ..Default::default() };
    let dout_v = random_vec(c.b * c.h * c.s_q * c.d, 2);
    let dout = Tensor::from_slice(&gpu, &dout_v, &[c.b, c.h, c.s_q, c.d]).unwrap();
    let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &opts).unwrap();
    let grads =
        attention_backward(&AttentionSaved { q: &x.tq, k: &x.tk, v: &x.tv, out: &out, lse: &lse }, &dout, &opts)
            .unwrap();
    let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
        let t = |d: &[f32], heads, s| Tensor::from_slice(&gpu, d, &[c.b, heads, s, c.d]).unwrap();
        let o = attention(&t(q, c.h, c.s_q), &t(k, c.h_kv, c.s_k), &t(v, c.h_kv, c.s_k), &opts).unwrap();
        o.to_vec_f32().unwrap().iter().zip(&dout_v).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
    };
    let base: [Vec<f32>; 3] = [&x.q, &x.k, &x.v].map(|v| v.iter().map(|&x| x as f32).collect());
    let eps = 1e-2f32;
    for (which, name, analytic) in [(0, "dq", &grads.0), (1, "dk", &grads.1), (2, "dv", &grads.2)] {
        let analytic = analytic.to_vec_f32().unwrap();
        for i in (0..base[which].len()).step_by(5) {
            let mut plus = base.clone();
            let mut minus = base.clone();
            plus[which][i] += eps;
            minus[which][i] -= eps;
            let fd = (loss(&plus[0], &plus[1], &plus[2]) - loss(&minus[0], &minus[1], &minus[2])) / (2.0 * eps as f64);
            let g = analytic[i] as f64;
            assert!((fd - g).abs() <= 2e-3 + 1e-2 * g.abs(), "{name}[{i}]: backward {g}, finite difference {fd}");
        }
    }
}

#[test]
fn bad_shapes_are_refused() {
    let gpu = gpu();
    let t = |s: &[usize]| Tensor::randn(&gpu, s, DType::F32, 1).unwrap();
    let o = AttentionOptions::default();
    let err = |r: wgkernels::Result<Tensor>| r.expect_err("must be refused").to_string();
    let e = err(attention(&t(&[1, 2, 4, 8]), &t(&[1, 2, 4, 16]), &t(&[1, 2, 4, 16]), &o));
    assert!(e.contains("attention") && e.contains("[1, 2, 4, 8]") && e.contains("[1, 2, 4, 16]"), "{e}");
    let e = err(attention(&t(&[1, 3, 4, 8]), &t(&[1, 2, 4, 8]), &t(&[1, 2, 4, 8]), &o));
    assert!(e.contains("[1, 3, 4, 8]"), "GQA needs H_kv | H: {e}");
    let e = err(attention(&t(&[1, 2, 4, 8]), &t(&[1, 2, 5, 8]), &t(&[1, 2, 6, 8]), &o));
    assert!(e.contains("[1, 2, 5, 8]") && e.contains("[1, 2, 6, 8]"), "{e}");
    let e = err(attention(&t(&[2, 4, 8]), &t(&[2, 4, 8]), &t(&[2, 4, 8]), &o));
    assert!(e.contains("rank 4"), "{e}");
    let bias = t(&[3, 5]);
    let e = err(attention(
        &t(&[1, 2, 4, 8]),
        &t(&[1, 2, 5, 8]),
        &t(&[1, 2, 5, 8]),
        &AttentionOptions { bias: Some(&bias), ..o },
    ));
    assert!(e.contains("attention bias") && e.contains("[3, 5]"), "{e}");
    let h = Tensor::randn(&gpu, &[1, 2, 4, 8], DType::F16, 2).unwrap();
    assert!(matches!(attention(&t(&[1, 2, 4, 8]), &h, &h, &o), Err(Error::DTypeMismatch { .. })));
    let e = err(attention(
        &t(&[1, 1, 4, 12]),
        &t(&[1, 1, 4, 12]),
        &t(&[1, 1, 4, 12]),
        &AttentionOptions { path: AttentionPath::Flash, ..o },
    ));
    assert!(e.contains("multiples of 8"), "{e}");
    // Auto never falls back to the naive S×S path on its own: attention, attention_path and
    // attention_forward refuse such a head dim alike, and say how to ask for the naive path.
    let x12 = t(&[1, 1, 4, 12]);
    for e in [
        err(attention(&x12, &x12, &x12, &o)),
        err(attention_path(&x12, &x12, &x12, &o).map(|_| x12.clone())),
        err(attention_forward(&x12, &x12, &x12, &o).map(|r| r.0)),
    ] {
        assert!(e.contains("multiples of 8") && e.contains("AttentionPath::Naive"), "{e}");
    }
    let naive = AttentionOptions { path: AttentionPath::Naive, ..o };
    assert_eq!(attention_path(&x12, &x12, &x12, &naive).unwrap(), AttentionPath::Naive);
    assert!(attention(&x12, &x12, &x12, &naive).is_ok());
}

/// attention_path names what attention runs, for every dtype and requested path, and refuses
/// what attention refuses; nothing is dispatched for it.
#[test]
fn attention_path_names_the_kernel_that_runs() {
    let gpu = gpu();
    for dtype in DType::ALL {
        let x = Tensor::randn(&gpu, &[1, 2, 40, 64], dtype, 1).unwrap();
        let with = |path| AttentionOptions { path, ..Default::default() };
        let tensor_cores = attention_path(&x, &x, &x, &with(AttentionPath::FlashCoop));
        let auto = attention_path(&x, &x, &x, &with(AttentionPath::Auto)).unwrap();
        match tensor_cores {
            Ok(p) => assert_eq!((p, auto), (AttentionPath::FlashCoop, AttentionPath::FlashCoop), "{dtype:?}"),
            Err(e) => {
                assert!(e.to_string().contains("cooperative matrices"), "{e}");
                assert_eq!(auto, AttentionPath::Flash, "{dtype:?}");
            }
        }
        assert_eq!(attention_path(&x, &x, &x, &with(AttentionPath::Flash)).unwrap(), AttentionPath::Flash);
        assert_eq!(attention_path(&x, &x, &x, &with(AttentionPath::Naive)).unwrap(), AttentionPath::Naive);
        // What runs agrees: Auto's output is the named path's, bit for bit.
        let run = |path| attention(&x, &x, &x, &with(path)).unwrap().to_vec_f32().unwrap();
        assert_eq!(run(AttentionPath::Auto), run(auto), "{dtype:?}");
        // Bad shapes are refused by the query as by attention.
        let k = Tensor::randn(&gpu, &[1, 2, 40, 32], dtype, 2).unwrap();
        assert!(attention_path(&x, &k, &k, &with(AttentionPath::Auto)).is_err());
    }
}

/// The cases both tensor-core tests run: odd lengths, S_q ≠ S_k (both ways), GQA, a batch,
/// both layouts, head dims 16 to 128, causal or not.
fn tensor_core_cases() -> Vec<(Case, AttentionLayout)> {
    vec![
        (Case::new(7, 7, 64, false), AttentionLayout::Bhsd),
        (Case::new(129, 129, 64, true), AttentionLayout::Bhsd),
        (Case::new(64, 200, 128, true).gqa(4, 2), AttentionLayout::Bhsd),
        (Case::new(1, 129, 32, true), AttentionLayout::Bshd),
        (Case::new(70, 33, 16, false).batch(2), AttentionLayout::Bshd),
        (Case::new(150, 77, 96, true), AttentionLayout::Bhsd),
    ]
}

/// A key ramp in the bias (0.3 per key: 9.6 per 32 keys, natural units), so that a row's max
/// grows by more than 2^8 over every tile and the tensor-core forward rescales its
/// accumulators each time; inputs of `dtype` and the f64 reference (output, lse).
struct BiasRamp {
    case: Case,
    x: Inputs,
    bias: Tensor,
    want: Vec<f64>,
    want_lse: Vec<f64>,
}

impl BiasRamp {
    fn new(dtype: DType) -> Self {
        let case = Case::new(77, 300, 64, false).gqa(2, 1);
        let x = inputs(&case, AttentionLayout::Bhsd, dtype, 5);
        let ramp: Vec<f32> = (0..case.s_q * case.s_k).map(|e| 0.3 * (e % case.s_k) as f32).collect();
        let bias = Tensor::from_slice(&gpu(), &ramp, &[case.s_q, case.s_k]).unwrap();
        let ramp_at = |_: usize, _: usize, _: usize, j: usize| 0.3 * j as f32 as f64;
        let (want, want_lse, _) = reference(&case, &x, 1.0 / 8.0, Some(&ramp_at));
        BiasRamp { case, x, bias, want, want_lse }
    }
}

#[test]
fn tensor_core_path_matches_f64_where_the_adapter_has_it() {
    let gpu = gpu();
    let probe = Tensor::zeros(&gpu, &[1, 1, 16, 64], DType::F16).unwrap();
    let forced = AttentionOptions { path: AttentionPath::FlashCoop, ..Default::default() };
    if attention(&probe, &probe, &probe, &forced).is_err() {
        let e = attention(&probe, &probe, &probe, &forced).unwrap_err().to_string();
        assert!(e.contains("cooperative matrices"), "{e}");
        skipped("tensor-core attention forward", &format!("no tensor-core attention on {} ({e})", gpu.info().name));
        return;
    }
    // P is rounded to f16 before P·V (tensor-core inputs): twice the f16 storage tolerance.
    let (atol, rtol) = (2.0 * tol(DType::F16).0, 2.0 * tol(DType::F16).1);
    let limits = gpu.info().limits.clone();
    // Every tiling the code can choose, at every case (the default is the first of each list).
    // Failures are gathered over all tilings and cases, then reported together.
    let failures = std::cell::RefCell::new(Vec::<String>::new());
    let run_all = |name: &str, c: &Case, x: &Inputs, opts: AttentionOptions, want: &[f64], want_lse: &[f64]| {
        let tilings = coop_tilings(c.d, &limits);
        assert!(!tilings.is_empty(), "no tiling fits D {}", c.d);
        for t in tilings {
            let opts = AttentionOptions { coop_tiling: Some(t), ..opts };
            let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &opts).unwrap();
            let (out, lse) = (values_bhsd(&out, opts.layout), lse.to_vec_f32().unwrap());
            let checked = std::panic::catch_unwind(|| {
                assert_close(&format!("coop {name} {c:?} tiling {}", t.label()), &out, want, atol, rtol);
                assert_close(&format!("coop lse {name} {c:?} tiling {}", t.label()), &lse, want_lse, 1e-3, 1e-3);
            });
            if let Err(e) = checked {
                let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                failures.borrow_mut().push(msg);
            }
        }
    };
    for (c, layout) in
        tensor_core_cases().into_iter().chain([(Case::new(1000, 1000, 64, true).gqa(1, 1), AttentionLayout::Bhsd)])
    {
        let x = inputs(&c, layout, DType::F16, 50 + c.s_q as u64);
        let opts = AttentionOptions { causal: c.causal, layout, path: AttentionPath::FlashCoop, ..Default::default() };
        let (want, want_lse, _) = reference(&c, &x, 1.0 / (c.d as f64).sqrt(), None);
        run_all("random", &c, &x, opts, &want, &want_lse);
    }
    // The accumulators are rescaled only when a row's max grows by more than 2^8 over a
    // tile: a key ramp in the bias (9.6 per 32 keys, natural units) makes that happen every
    // tile, and a large scale at random points.
    let ramp = BiasRamp::new(DType::F16);
    let opts = AttentionOptions { bias: Some(&ramp.bias), path: AttentionPath::FlashCoop, ..Default::default() };
    run_all("bias ramp", &ramp.case, &ramp.x, opts, &ramp.want, &ramp.want_lse);
    let c = Case::new(100, 257, 64, true);
    let x = inputs(&c, AttentionLayout::Bhsd, DType::F16, 6);
    let opts =
        AttentionOptions { causal: true, scale: Some(3.0), path: AttentionPath::FlashCoop, ..Default::default() };
    let (want, want_lse, _) = reference(&c, &x, 3.0, None);
    run_all("scale 3", &c, &x, opts, &want, &want_lse);
    // A negative scale: the row max is taken over the scaled scores, not the raw ones.
    let c = Case::new(70, 133, 64, false);
    let x = inputs(&c, AttentionLayout::Bhsd, DType::F16, 8);
    let opts = AttentionOptions { scale: Some(-0.2), path: AttentionPath::FlashCoop, ..Default::default() };
    let (want, want_lse, _) = reference(&c, &x, -0.2, None);
    run_all("scale -0.2", &c, &x, opts, &want, &want_lse);
    let failures = failures.into_inner();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    // With a bias, against the FMA flash kernel on the same inputs.
    let c = Case::new(37, 45, 64, false).gqa(2, 1);
    let x = inputs(&c, AttentionLayout::Bhsd, DType::F16, 3);
    let bias = Tensor::randn(&gpu, &[c.s_q, c.s_k], DType::F32, 4).unwrap();
    let run = |path| {
        let o = AttentionOptions { bias: Some(&bias), path, ..Default::default() };
        attention(&x.tq, &x.tk, &x.tv, &o).unwrap().to_vec_f32().unwrap()
    };
    let want: Vec<f64> = run(AttentionPath::Flash).iter().map(|&v| v as f64).collect();
    assert_close("coop vs FMA flash, with bias", &run(AttentionPath::FlashCoop), &want, atol, rtol);
    // A tiling that is not one of the list is refused, naming itself.
    let huge = CoopTiling { subgroups: 8, row_blocks: 2, key_tile: 64, key_chunk: 64, stages: 2 };
    let x = inputs(&Case::new(16, 16, 64, false), AttentionLayout::Bhsd, DType::F16, 7);
    let o = AttentionOptions { coop_tiling: Some(huge), path: AttentionPath::FlashCoop, ..Default::default() };
    let e = attention(&x.tq, &x.tk, &x.tv, &o).unwrap_err().to_string();
    assert!(e.contains("tiling") && e.contains("coop_tilings"), "{e}");
}

/// f32 and bf16 on tensor cores, scaled by a power of two from each input's largest |x| (f32
/// split into f16 hi and lo parts, bf16 into one f16 part): every tiling the code can choose,
/// at the dtype's tolerance, on the tensor-core cases, with inputs far outside f16's range
/// (10^5) and far below it (10^−6), and with a bias ramp that moves the reference max every
/// tile (the rescale path; f32 with P shifted by 2^6).
fn scaled_tensor_core_path_matches_f64(dtype: DType) {
    let gpu = gpu();
    let probe = Tensor::zeros(&gpu, &[1, 1, 16, 64], dtype).unwrap();
    let forced = AttentionOptions { path: AttentionPath::FlashCoop, ..Default::default() };
    if let Err(e) = attention(&probe, &probe, &probe, &forced) {
        let e = e.to_string();
        assert!(e.contains("cooperative matrices"), "{e}");
        skipped("tensor-core attention forward", &format!("no tensor-core attention on {} ({e})", gpu.info().name));
        return;
    }
    let (atol, rtol) = att_tol(dtype);
    let lse_tol = if dtype == DType::F32 { 1e-5 } else { 1e-3 };
    let limits = gpu.info().limits.clone();
    let mut failures = Vec::<String>::new();
    let mut run_all = |name: &str, c: &Case, x: &Inputs, opts: AttentionOptions, want: &[f64], want_lse: &[f64]| {
        let tilings = coop_tilings_for(dtype, c.d, &limits);
        assert!(!tilings.is_empty(), "no {dtype:?} tiling fits D {}", c.d);
        for t in tilings {
            let opts = AttentionOptions { coop_tiling: Some(t), ..opts };
            let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &opts).unwrap();
            assert_eq!(out.dtype(), dtype);
            let (out, lse) = (values_bhsd(&out, opts.layout), lse.to_vec_f32().unwrap());
            let checked = std::panic::catch_unwind(|| {
                assert_close(&format!("{dtype:?} {name} {c:?} tiling {}", t.label()), &out, want, atol, rtol);
                assert_close(
                    &format!("{dtype:?} lse {name} {c:?} tiling {}", t.label()),
                    &lse,
                    want_lse,
                    lse_tol,
                    lse_tol,
                );
            });
            if let Err(e) = checked {
                failures.push(e.downcast_ref::<String>().cloned().unwrap_or_default());
            }
        }
    };
    for (c, layout) in tensor_core_cases() {
        let x = inputs(&c, layout, dtype, 80 + c.s_q as u64);
        let opts = AttentionOptions { causal: c.causal, layout, path: AttentionPath::FlashCoop, ..Default::default() };
        let (want, want_lse, _) = reference(&c, &x, 1.0 / (c.d as f64).sqrt(), None);
        run_all("random", &c, &x, opts, &want, &want_lse);
    }
    // Magnitudes f16 cannot hold, large and small; the scale keeps the scores near 1. The
    // output's tolerance scales with v's magnitude.
    for (mag, scale) in [([1e3f32, 2e3, 1e5], 1.0 / (8.0 * 2e6)), ([1e-3, 3e-3, 1e-6], 1.0e6 / (8.0 * 3.0))] {
        let c = Case::new(90, 130, 64, true);
        let x = inputs_at(&c, AttentionLayout::Bhsd, dtype, 9, mag);
        let opts = AttentionOptions {
            causal: true,
            scale: Some(scale as f32),
            path: AttentionPath::FlashCoop,
            ..Default::default()
        };
        let (want, want_lse, _) = reference(&c, &x, scale as f32 as f64, None);
        let v_mag = mag[2] as f64;
        for t in coop_tilings_for(dtype, c.d, &limits) {
            let opts = AttentionOptions { coop_tiling: Some(t), ..opts };
            let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &opts).unwrap();
            let what = format!("{dtype:?}, magnitudes {mag:?}, tiling {}", t.label());
            assert_close(&what, &out.to_vec_f32().unwrap(), &want, atol * v_mag, rtol);
            assert_close(&format!("lse {what}"), &lse.to_vec_f32().unwrap(), &want_lse, lse_tol, lse_tol);
        }
    }
    // The reference max moves every tile (the accumulators rescaled through memory).
    let ramp = BiasRamp::new(dtype);
    let opts = AttentionOptions { bias: Some(&ramp.bias), path: AttentionPath::FlashCoop, ..Default::default() };
    run_all("bias ramp", &ramp.case, &ramp.x, opts, &ramp.want, &ramp.want_lse);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    // Auto takes the tensor-core forward where it applies: the same bits as FlashCoop.
    let c = Case::new(33, 47, 32, true);
    let x = inputs(&c, AttentionLayout::Bhsd, dtype, 11);
    let run = |path| {
        let o = AttentionOptions { causal: true, path, ..Default::default() };
        attention(&x.tq, &x.tk, &x.tv, &o).unwrap().to_vec_f32().unwrap()
    };
    assert_eq!(run(AttentionPath::Auto), run(AttentionPath::FlashCoop));
    // A tiling that fits f16 only is refused for f32, naming the list.
    let f16_only = coop_tilings(64, &limits).into_iter().find(|t| !coop_tilings_for(dtype, 64, &limits).contains(t));
    if let Some(t) = f16_only {
        let x = inputs(&Case::new(16, 16, 64, false), AttentionLayout::Bhsd, dtype, 7);
        let o = AttentionOptions { coop_tiling: Some(t), path: AttentionPath::FlashCoop, ..Default::default() };
        let e = attention(&x.tq, &x.tk, &x.tv, &o).unwrap_err().to_string();
        assert!(e.contains("attention") && e.contains(&format!("coop_tilings_for({dtype:?})")), "{e}");
    }
}

#[test]
fn tensor_core_f32_split_matches_f64_where_the_adapter_has_it() {
    scaled_tensor_core_path_matches_f64(DType::F32);
}

#[test]
fn tensor_core_bf16_matches_f64_where_the_adapter_has_it() {
    scaled_tensor_core_path_matches_f64(DType::BF16);
}

/// The FMA-unit flash tilings under a 48 KiB / 1024-invocation adapter (the H200's), a 32 KiB /
/// 256-invocation one (software devices) and WebGPU's 16 KiB default: every listed tiling
/// fits, the measured default comes first, labels parse back. Runs without a GPU.
#[test]
fn flash_tilings_fit_and_round_trip_their_labels() {
    let limits = |kib: u32, invocations: u32| wgkernels::wgpu::Limits {
        max_compute_workgroup_storage_size: kib << 10,
        max_compute_invocations_per_workgroup: invocations,
        ..wgkernels::wgpu::Limits::default()
    };
    for (l, first, count) in [(limits(48, 1024), "4,32", 4), (limits(32, 256), "4,16", 2), (limits(16, 256), "", 0)] {
        for d in [8, 32, 64, 80, 128] {
            let all = flash_tilings(d, &l);
            assert_eq!(all.len(), count, "{all:?} under {} bytes", l.max_compute_workgroup_storage_size);
            assert_eq!(all.first().map(|t| t.label()).unwrap_or_default(), first);
            for t in all {
                assert!(t.workgroup_bytes() <= l.max_compute_workgroup_storage_size as usize, "{t:?}");
                assert!(t.invocations() <= l.max_compute_invocations_per_workgroup as usize, "{t:?}");
                assert_eq!(FlashTiling::parse(&t.label()), Some(t));
            }
        }
    }
}

/// The tiling lists the tensor-core kernels choose from, under a 48 KiB / 1024-invocation
/// adapter (the H200's) and under a 32 KiB / 256-invocation one: every tiling fits, its
/// chunk is a multiple of 16 that divides its tile, and its label parses back to it. Runs
/// without a GPU (the kernels themselves are checked by the portability test and, on
/// adapters with cooperative matrices, by the two tests around this one).
#[test]
fn tensor_core_tilings_fit_and_round_trip_their_labels() {
    let limits = |bytes: u32, invocations: u32| wgkernels::wgpu::Limits {
        max_compute_workgroup_storage_size: bytes,
        max_compute_invocations_per_workgroup: invocations,
        ..wgkernels::wgpu::Limits::default()
    };
    for l in [limits(48 << 10, 1024), limits(32 << 10, 256)] {
        for d in [16, 32, 64, 80, 96, 128] {
            let fwd = coop_tilings(d, &l);
            assert!(!fwd.is_empty() || l.max_compute_invocations_per_workgroup < 1024, "no forward tiling at D {d}");
            for t in fwd {
                assert!(t.workgroup_bytes(d) <= l.max_compute_workgroup_storage_size as usize, "{t:?} at D {d}");
                assert!(32 * t.subgroups <= l.max_compute_invocations_per_workgroup as usize, "{t:?}");
                assert!(t.key_chunk % 16 == 0 && t.key_tile % t.key_chunk == 0, "{t:?}");
                assert_eq!(CoopTiling::parse(&t.label()), Some(t));
            }
            // f32 (split into f16 parts): every tiling fits its own, larger, byte count.
            let split = coop_tilings_for(DType::F32, d, &l);
            assert!(!split.is_empty() || l.max_compute_invocations_per_workgroup < 1024, "no f32 tiling at D {d}");
            for t in split {
                assert!(t.workgroup_bytes_for(DType::F32, d) > t.workgroup_bytes(d), "{t:?}");
                assert!(
                    t.workgroup_bytes_for(DType::F32, d) <= l.max_compute_workgroup_storage_size as usize,
                    "{t:?} at D {d}"
                );
                assert!(32 * t.subgroups <= l.max_compute_invocations_per_workgroup as usize, "{t:?}");
                assert!(t.key_chunk % 16 == 0 && t.key_tile % t.key_chunk == 0, "{t:?}");
            }
            assert_eq!(coop_tilings_for(DType::BF16, d, &l), coop_tilings(d, &l));
            for t in coop_bwd_tilings_for(DType::F32, d, &l) {
                assert!(t.workgroup_bytes_for(DType::F32, d) > t.workgroup_bytes(d), "{t:?}");
                assert!(
                    t.workgroup_bytes_for(DType::F32, d) <= l.max_compute_workgroup_storage_size as usize,
                    "{t:?} at D {d}"
                );
                assert!(32 * t.subgroups <= l.max_compute_invocations_per_workgroup as usize, "{t:?}");
            }
            assert!(
                !coop_bwd_tilings_for(DType::F32, d, &l).is_empty() || l.max_compute_invocations_per_workgroup < 1024
            );
            assert_eq!(coop_bwd_tilings_for(DType::BF16, d, &l), coop_bwd_tilings(d, &l));
            for t in coop_bwd_tilings(d, &l) {
                assert!(t.workgroup_bytes(d) <= l.max_compute_workgroup_storage_size as usize, "{t:?} at D {d}");
                assert!(32 * t.subgroups <= l.max_compute_invocations_per_workgroup as usize, "{t:?}");
                assert!(t.chunk % 16 == 0 && t.tile % t.chunk == 0 && (1..=2).contains(&t.stages), "{t:?}");
                assert_eq!(CoopBwdTiling::parse(&t.label()), Some(t));
            }
        }
    }
    // The defaults at the H200's limits, as BENCHMARKS.md's seventh round measured them.
    let h200 = limits(48 << 10, 1024);
    assert_eq!(coop_tilings(64, &h200)[0].label(), "16,1,64,1,16");
    assert_eq!(coop_tilings(128, &h200)[0].label(), "16,1,32,1,16");
    assert_eq!(coop_tilings_for(DType::F32, 64, &h200)[0].label(), "8,1,32,1,16");
    assert_eq!(coop_bwd_tilings_for(DType::F32, 64, &h200)[0].label(), "4,16,16,1");
    assert_eq!(coop_bwd_tilings_for(DType::F32, 128, &h200)[0].label(), "4,16,16,1");
    assert_eq!(coop_tilings_for(DType::F32, 128, &h200)[0].label(), "8,1,16,1,16");
    assert_eq!(coop_bwd_tilings(64, &h200)[0].label(), "8,64,16,1");
    assert_eq!(coop_bwd_tilings(128, &h200)[0].label(), "8,32,16,1");
    assert_eq!(CoopTiling::parse("16,1,16,2"), CoopTiling::parse("16,1,16,2,16"));
    assert_eq!(CoopBwdTiling::parse("4,16"), CoopBwdTiling::parse("4,16,16,1"));
}

#[test]
fn tensor_core_backward_matches_f64_where_the_adapter_has_it() {
    let gpu = gpu();
    let probe = Tensor::randn(&gpu, &[1, 1, 16, 64], DType::F16, 1).unwrap();
    let forced = AttentionOptions { path: AttentionPath::FlashCoop, ..Default::default() };
    if attention_forward(&probe, &probe, &probe, &forced).is_err() {
        // Without cooperative matrices FlashCoop is refused by the backward too.
        let (o, lse) = attention_forward(&probe, &probe, &probe, &AttentionOptions::default()).unwrap();
        let e =
            attention_backward(&AttentionSaved { q: &probe, k: &probe, v: &probe, out: &o, lse: &lse }, &o, &forced)
                .unwrap_err()
                .to_string();
        assert!(e.contains("cooperative matrices"), "{e}");
        skipped("tensor-core attention backward", &format!("no tensor-core attention on {}", gpu.info().name));
        return;
    }
    // P and dS are rounded to f16 before their products (tensor-core inputs): twice the f16
    // backward's tolerance. Every tiling the code can choose (the default first), at every
    // case; S 300 spans several tiles and chunks, causal chunks skipped.
    let limits = gpu.info().limits.clone();
    for (c, layout) in
        tensor_core_cases().into_iter().chain([(Case::new(300, 300, 64, true).gqa(2, 1), AttentionLayout::Bhsd)])
    {
        let tilings = coop_bwd_tilings(c.d, &limits);
        assert!(!tilings.is_empty(), "no backward tiling fits D {}", c.d);
        for t in tilings {
            check_backward_path(c, layout, DType::F16, AttentionPath::FlashCoop, Some(t), None, 8.0);
            // bf16: scaled into f16 (its rounding of the gradients dominates).
            check_backward_path(c, layout, DType::BF16, AttentionPath::FlashCoop, Some(t), None, 4.0);
        }
        // f32: split into f16 parts, at the f32 backward's tolerance; its own tilings.
        let tilings = coop_bwd_tilings_for(DType::F32, c.d, &limits);
        assert!(!tilings.is_empty(), "no f32 backward tiling fits D {}", c.d);
        for t in tilings {
            check_backward_path(c, layout, DType::F32, AttentionPath::FlashCoop, Some(t), None, 1.0);
        }
    }
    // bf16 and f32 far outside f16's range (q, k ~10^3, v ~10^5, dO ~10^4) and far below it:
    // against the FMA backward on the same inputs (f32 arithmetic), relative to each
    // gradient's size.
    let magnitudes = [([1e3f32, 2e3, 1e5], 1e4f32, 1.0 / (8.0 * 2e6)), ([1e-3, 3e-3, 1e-5], 1e-6, 1.0e6 / 24.0)];
    for (dtype, (mag, dout_mag, scale)) in
        [DType::BF16, DType::F32].into_iter().flat_map(|dt| magnitudes.map(|m| (dt, m)))
    {
        let c = Case::new(70, 90, 64, true).gqa(2, 1);
        let x = inputs_at(&c, AttentionLayout::Bhsd, dtype, 21, mag);
        let dout_v: Vec<f32> = random_vec(c.b * c.h * c.s_q * c.d, 22).iter().map(|v| v * dout_mag).collect();
        let dout = Tensor::from_f32(&gpu, &dout_v, &[c.b, c.h, c.s_q, c.d], dtype).unwrap();
        let grads = |path| {
            let o = AttentionOptions { causal: true, scale: Some(scale as f32), path, ..Default::default() };
            let (out, lse) =
                attention_forward(&x.tq, &x.tk, &x.tv, &AttentionOptions { path: AttentionPath::Flash, ..o }).unwrap();
            let (dq, dk, dv) =
                attention_backward(&AttentionSaved { q: &x.tq, k: &x.tk, v: &x.tv, out: &out, lse: &lse }, &dout, &o)
                    .unwrap();
            [dq, dk, dv].map(|t| t.to_vec_f32().unwrap())
        };
        let (want, got) = (grads(AttentionPath::Flash), grads(AttentionPath::FlashCoop));
        for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            let size = w.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
            assert!(size > 0.0 && size.is_finite(), "{name}: {size}");
            let w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            let what = format!("{dtype:?} coop vs FMA backward {name}, magnitudes {mag:?}, dO {dout_mag}");
            let (atol, rtol) =
                if dtype == DType::F32 { (5e-5, 2e-4) } else { (4.0 * tol(dtype).0, 4.0 * tol(dtype).1) };
            assert_close(&what, g, &w, atol * size, rtol);
        }
    }
    let bad = CoopBwdTiling { subgroups: 16, tile: 128, chunk: 16, stages: 2 };
    let o = AttentionOptions { coop_bwd_tiling: Some(bad), path: AttentionPath::FlashCoop, ..Default::default() };
    let (out, lse) = attention_forward(&probe, &probe, &probe, &o).unwrap();
    let e = attention_backward(&AttentionSaved { q: &probe, k: &probe, v: &probe, out: &out, lse: &lse }, &out, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("coop_bwd_tilings"), "{e}");
    // With a bias, against the FMA backward on the same inputs.
    let c = Case::new(37, 45, 64, false).gqa(2, 1);
    let x = inputs(&c, AttentionLayout::Bhsd, DType::F16, 3);
    let bias = Tensor::randn(&gpu, &[c.s_q, c.s_k], DType::F32, 4).unwrap();
    let dout = Tensor::randn(&gpu, x.tq.shape(), DType::F16, 5).unwrap();
    let grads = |path| {
        let o = AttentionOptions { bias: Some(&bias), path, ..Default::default() };
        let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &o).unwrap();
        let (dq, dk, dv) =
            attention_backward(&AttentionSaved { q: &x.tq, k: &x.tk, v: &x.tv, out: &out, lse: &lse }, &dout, &o)
                .unwrap();
        [dq, dk, dv].map(|t| t.to_vec_f32().unwrap())
    };
    let (want, got) = (grads(AttentionPath::Flash), grads(AttentionPath::FlashCoop));
    for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
        let w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        assert_close(
            &format!("coop vs FMA backward {name}, with bias"),
            g,
            &w,
            8.0 * tol(DType::F16).0,
            8.0 * tol(DType::F16).1,
        );
    }
}

#[test]
fn backward_with_a_bias_and_bf16_storage() {
    // The bias enters P; the gradients follow from P as without it. bf16 inputs too.
    let gpu = gpu();
    for dtype in [DType::F32, DType::BF16] {
        let c = Case::new(21, 30, 32, true).gqa(2, 1);
        let x = inputs(&c, AttentionLayout::Bhsd, dtype, 61);
        let bias_v: Vec<f32> = random_vec(c.s_q * c.s_k, 62).iter().map(|v| v * 0.5).collect();
        let bias = Tensor::from_slice(&gpu, &bias_v, &[c.s_q, c.s_k]).unwrap();
        let opts = AttentionOptions { causal: true, bias: Some(&bias), ..Default::default() };
        let scale = 1.0 / (c.d as f64).sqrt();
        let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &opts).unwrap();
        let dout_v = random_vec(c.b * c.h * c.s_q * c.d, 63);
        let dout = Tensor::from_f32(&gpu, &dout_v, &[c.b, c.h, c.s_q, c.d], dtype).unwrap();
        let (dq, dk, dv) =
            attention_backward(&AttentionSaved { q: &x.tq, k: &x.tk, v: &x.tv, out: &out, lse: &lse }, &dout, &opts)
                .unwrap();
        let f = |_b: usize, _h: usize, i: usize, j: usize| bias_v[i * c.s_k + j] as f64;
        let (want_out, _, probs) = reference(&c, &x, scale, Some(&f));
        let (atol, rtol) = if dtype == DType::F32 { (5e-5, 2e-4) } else { (4.0 * tol(dtype).0, 4.0 * tol(dtype).1) };
        let out_f = out.to_vec_f32().unwrap();
        assert_close(&format!("forward with bias {dtype:?}"), &out_f, &want_out, atol, rtol);
        let out_used: Vec<f64> = out_f.iter().map(|&v| v as f64).collect();
        let (wq, wk, wv) = reference_grads(&c, &x, scale, &probs, &out_used, &rounded(&dout_v, dtype));
        for (name, got, want) in [("dq", &dq, &wq), ("dk", &dk, &wk), ("dv", &dv, &wv)] {
            assert_close(&format!("{name} with bias {dtype:?}"), &got.to_vec_f32().unwrap(), want, atol, rtol);
        }
    }
}

/// The FMA backward's dQ added by f32 atomics in the dK/dV pass (where the adapter has
/// SHADER_FLOAT32_ATOMIC; the default there) against its separate dQ pass: the same
/// gradients to f32 rounding of the sums' order, one dispatch fewer. Both are checked
/// against f64 by `backward_matches_f64_gradients` on the adapter's default.
#[test]
fn backward_dq_by_atomics_matches_the_separate_pass() {
    let gpu = gpu();
    let has = gpu.has(wgpu::Features::SHADER_FLOAT32_ATOMIC);
    for (c, layout) in [
        (Case::new(150, 70, 40, true), AttentionLayout::Bhsd),
        (Case::new(7, 50, 64, true).gqa(4, 2).batch(2), AttentionLayout::Bhsd),
        (Case::new(33, 20, 32, false).gqa(6, 2), AttentionLayout::Bshd),
        (Case::new(129, 129, 128, false), AttentionLayout::Bhsd),
    ] {
        let x = inputs(&c, layout, DType::F32, 300 + c.s_q as u64);
        let dout_v: Vec<f32> = random_vec(c.b * c.h * c.s_q * c.d, 78);
        let dout = tensor_in(&dout_v, c.b, c.h, c.s_q, c.d, layout, DType::F32);
        let base = AttentionOptions { causal: c.causal, layout, path: AttentionPath::Flash, ..Default::default() };
        let (out, lse) = attention_forward(&x.tq, &x.tk, &x.tv, &base).unwrap();
        let saved = AttentionSaved { q: &x.tq, k: &x.tk, v: &x.tv, out: &out, lse: &lse };
        // The kernels each way ran, by name (the profiler's timestamps).
        let run = |atomic: Option<bool>| {
            let opts = AttentionOptions { atomic_dq: atomic, ..base };
            let profiler = wgkernels::Profiler::start(&gpu).unwrap();
            let g = attention_backward(&saved, &dout, &opts).and_then(|g| {
                g.0.realize()?;
                Ok(g)
            });
            let names: Vec<String> = profiler.finish().unwrap().by_kernel().into_iter().map(|(k, _, _)| k).collect();
            (g, names)
        };
        let (separate, separate_kernels) = run(Some(false));
        let (dq, dk, dv) = separate.unwrap();
        let (atomic, atomic_kernels) = run(Some(true));
        if !has {
            let err = atomic.unwrap_err().to_string();
            assert!(err.contains("SHADER_FLOAT32_ATOMIC"), "{err}");
            skipped(
                "backward_dq_by_atomics",
                &format!("{} has no f32 atomics: the separate pass ran", gpu.info().name),
            );
            return;
        }
        let (adq, adk, adv) = atomic.unwrap();
        let ran = |names: &[String], entry: &str| names.iter().any(|n| n.contains(entry));
        assert!(ran(&separate_kernels, "attention_bwd_dq"), "{separate_kernels:?}");
        assert!(!ran(&atomic_kernels, "attention_bwd_dq"), "{c:?}: the dq pass ran: {atomic_kernels:?}");
        assert!(ran(&atomic_kernels, "attention_bwd_dkdv"), "{atomic_kernels:?}");
        for (name, a, s) in [("dq", &adq, &dq), ("dk", &adk, &dk), ("dv", &adv, &dv)] {
            let want: Vec<f64> = values_bhsd(s, layout).iter().map(|&v| v as f64).collect();
            assert_close(
                &format!("{name} {c:?} {layout:?}, atomic vs separate"),
                &values_bhsd(a, layout),
                &want,
                1e-6,
                1e-5,
            );
        }
    }
}
