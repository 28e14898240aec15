//! The kernel families in a real browser: wasm32 + WebGPU, run by `wasm-bindgen-test` in
//! headless Chromium (web/test.sh). One test per family — matmul, softmax, layernorm,
//! attention, AdamW, a fused element-wise chain — each against a float64 reference on
//! seeded inputs at sizes that divide no tile, through the async API the browser needs
//! (`Gpu::new_async`, `Tensor::to_vec_async`).
//!
//! Chromium's software adapter (SwiftShader) has no `shader-f16`: 16-bit tensors take the
//! packed path there, and nothing uses cooperative matrices.
#![cfg(target_arch = "wasm32")]

#[path = "common/mod.rs"]
mod common;

use common::{assert_close, norm_ref, random_vec};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use wgkernels::ops::attention::{attention, AttentionOptions};
use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
use wgkernels::{DType, Gpu, GpuOptions, Tensor};

wasm_bindgen_test_configure!(run_in_browser);

/// The browser's WebGPU adapter, with the options a user gets by default.
async fn gpu() -> Gpu {
    let gpu = Gpu::new_async(GpuOptions::default()).await.expect("a WebGPU adapter (run with --enable-unsafe-webgpu)");
    web_log(&format!("adapter: {}", gpu.info()));
    gpu
}

fn web_log(line: &str) {
    wasm_bindgen_test::console_log!("{line}");
}

/// An f32 tensor of seeded values in [-2, 2) and the same values in f64.
fn input(gpu: &Gpu, shape: &[usize], seed: u64) -> (Tensor, Vec<f64>) {
    let v = random_vec(shape.iter().product(), seed);
    (Tensor::from_slice(gpu, &v, shape).unwrap(), v.iter().map(|&x| x as f64).collect())
}

async fn read(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32_async().await.unwrap()
}

#[wasm_bindgen_test]
async fn matmul_matches_f64() {
    let gpu = gpu().await;
    let (m, k, n) = (37, 53, 29);
    let (a, av) = input(&gpu, &[m, k], 1);
    let (b, bv) = input(&gpu, &[k, n], 2);
    let want: Vec<f64> =
        (0..m * n).map(|i| (0..k).map(|p| av[i / n * k + p] * bv[p * n + i % n]).sum::<f64>()).collect();
    assert_close("matmul 37x53x29", &read(&a.matmul(&b).unwrap()).await, &want, 1e-4, 1e-4);
    // Bᵀ through a transposed view: the kernels' other layout.
    let (bt, btv) = input(&gpu, &[n, k], 3);
    let want: Vec<f64> =
        (0..m * n).map(|i| (0..k).map(|p| av[i / n * k + p] * btv[i % n * k + p]).sum::<f64>()).collect();
    let got = read(&a.matmul(&bt.transpose(0, 1).unwrap()).unwrap()).await;
    assert_close("matmul A·Bᵀ", &got, &want, 1e-4, 1e-4);
}

/// 16-bit tensors on an adapter without `shader-f16` (SwiftShader): the packed path, two
/// values to a word, rounded as a cast would.
#[wasm_bindgen_test]
async fn f16_and_bf16_matmul_take_the_packed_path() {
    let gpu = gpu().await;
    let (m, k, n) = (19, 41, 22);
    let (a, av) = input(&gpu, &[m, k], 30);
    let (b, bv) = input(&gpu, &[k, n], 31);
    for dtype in [DType::F16, DType::BF16] {
        let round = |v: &[f64]| common::rounded(&v.iter().map(|&x| x as f32).collect::<Vec<_>>(), dtype);
        let (ar, br) = (round(&av), round(&bv));
        let want: Vec<f64> =
            (0..m * n).map(|i| (0..k).map(|p| ar[i / n * k + p] * br[p * n + i % n]).sum::<f64>()).collect();
        let c = a.to_dtype(dtype).unwrap().matmul(&b.to_dtype(dtype).unwrap()).unwrap();
        assert_eq!(c.dtype(), dtype);
        let (atol, rtol) = common::tol(dtype);
        // Sums of 41 products of values up to 4, rounded once to 16 bits on the way out.
        assert_close(&format!("matmul {dtype:?}"), &read(&c).await, &want, atol * 8.0, rtol);
    }
}

/// The blocking readers answer an error in the browser instead of hanging the page.
#[wasm_bindgen_test]
async fn blocking_calls_are_errors_not_hangs() {
    let gpu = gpu().await;
    let (x, _) = input(&gpu, &[5], 40);
    let err = x.exp().unwrap().to_vec_f32().unwrap_err().to_string();
    assert!(err.contains("to_vec_async"), "{err}");
    let err = gpu.synchronize().unwrap_err().to_string();
    assert!(err.contains("synchronize_async"), "{err}");
    gpu.synchronize_async().await.unwrap();
    assert!(!gpu.tiered_jit());
}

#[wasm_bindgen_test]
async fn softmax_matches_f64() {
    let gpu = gpu().await;
    let (rows, n) = (13, 301);
    let (x, xv) = input(&gpu, &[rows, n], 4);
    let want: Vec<f64> = xv
        .chunks(n)
        .flat_map(|row| {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            row.iter().map(move |v| (v - max).exp() / sum).collect::<Vec<_>>()
        })
        .collect();
    assert_close("softmax 13x301", &read(&x.softmax(-1).unwrap()).await, &want, 1e-6, 1e-5);
}

#[wasm_bindgen_test]
async fn layernorm_matches_f64() {
    let gpu = gpu().await;
    let (rows, n) = (11, 99);
    let (x, xv) = input(&gpu, &[rows, n], 5);
    let (w, wv) = input(&gpu, &[n], 6);
    let (b, bv) = input(&gpu, &[n], 7);
    let want = norm_ref(&xv, n, Some(&wv), Some(&bv), 1e-5, false);
    let got = read(&x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap()).await;
    assert_close("layernorm 11x99", &got, &want, 1e-5, 1e-5);
}

#[wasm_bindgen_test]
async fn causal_attention_matches_f64() {
    let gpu = gpu().await;
    let (b, h, s, d) = (1, 2, 19, 16);
    let shape = [b, h, s, d];
    let (q, qv) = input(&gpu, &shape, 8);
    let (k, kv) = input(&gpu, &shape, 9);
    let (v, vv) = input(&gpu, &shape, 10);
    let scale = 1.0 / (d as f64).sqrt();
    let mut want = vec![0.0; b * h * s * d];
    for head in 0..b * h {
        let at = |x: &[f64], i: usize, c: usize| x[(head * s + i) * d + c];
        for i in 0..s {
            let scores: Vec<f64> =
                (0..=i).map(|j| (0..d).map(|c| at(&qv, i, c) * at(&kv, j, c)).sum::<f64>() * scale).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = p.iter().sum();
            for c in 0..d {
                want[(head * s + i) * d + c] = (0..=i).map(|j| p[j] / sum * at(&vv, j, c)).sum();
            }
        }
    }
    let o = attention(&q, &k, &v, &AttentionOptions { causal: true, ..Default::default() }).unwrap();
    assert_close("causal attention 1x2x19x16", &read(&o).await, &want, 1e-5, 1e-4);
}

#[wasm_bindgen_test]
async fn adamw_matches_f64_over_three_steps() {
    let gpu = gpu().await;
    let n = 1003;
    let config = AdamWConfig { lr: 0.01, weight_decay: 0.1, ..Default::default() };
    let (b1, b2) = (config.betas.0 as f64, config.betas.1 as f64);
    let (lr, wd, eps) = (config.lr as f64, config.weight_decay as f64, config.eps as f64);
    let (p, mut pv) = input(&gpu, &[n], 11);
    let mut params = vec![p];
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let mut opt = AdamW::new(&gpu, config).unwrap();
    for t in 1..=3 {
        let (g, gv) = input(&gpu, &[n], 20 + t);
        opt.step(&mut params, &[g]).unwrap();
        let (bias1, bias2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for i in 0..n {
            pv[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * gv[i];
            v[i] = b2 * v[i] + (1.0 - b2) * gv[i] * gv[i];
            pv[i] -= lr / bias1 * m[i] / (v[i].sqrt() / bias2.sqrt() + eps);
        }
    }
    assert_close("adamw 3 steps", &read(&params[0]).await, &pv, 1e-6, 1e-5);
}

#[wasm_bindgen_test]
async fn fused_chain_matches_f64_and_the_unfused_ops() {
    let gpu = gpu().await;
    let n = 10_007;
    let (x, xv) = input(&gpu, &[n], 12);
    let (a, av) = input(&gpu, &[n], 13);
    let (c, cv) = input(&gpu, &[n], 14);
    // z = gelu(x·a)·c + x: one generated kernel when fused, four when not.
    let chain = || x.mul(&a).unwrap().gelu_tanh().unwrap().mul(&c).unwrap().add(&x).unwrap();
    let gelu = |z: f64| 0.5 * z * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (z + 0.044715 * z.powi(3))).tanh());
    let want: Vec<f64> = (0..n).map(|i| gelu(xv[i] * av[i]) * cv[i] + xv[i]).collect();
    let before = gpu.stats().dispatches;
    let fused = read(&chain()).await;
    let fused_dispatches = gpu.stats().dispatches - before;
    gpu.set_fusion(false);
    let before = gpu.stats().dispatches;
    let unfused = read(&chain()).await;
    let unfused_dispatches = gpu.stats().dispatches - before;
    gpu.set_fusion(true);
    assert_close("fused chain", &fused, &want, 1e-5, 1e-5);
    assert_close("unfused chain", &unfused, &want, 1e-5, 1e-5);
    let unfused64: Vec<f64> = unfused.iter().map(|&u| u as f64).collect();
    assert_close("fused vs unfused", &fused, &unfused64, 1e-6, 1e-6);
    assert!(
        fused_dispatches < unfused_dispatches,
        "fused {fused_dispatches} vs unfused {unfused_dispatches} dispatches"
    );
}
