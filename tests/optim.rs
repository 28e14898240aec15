//! Fused AdamW / Adam / AMSGrad / SGD against float64 CPU optimizers over 10 steps with a
//! changing learning rate, several tensors of odd sizes per step, 16-bit parameters with f32
//! master weights, loss scaling with a non-finite gradient that must skip the step, global
//! norm clipping, tensors split across dispatches; the fused step against the same update
//! built from element-wise ops; errors for bad input.

#![allow(clippy::cloned_ref_to_slice_refs)] // literal lists read better in the error cases

mod common;
use common::*;
use wgkernels::optim::{adamw_unfused, AdamW, AdamWConfig, DynamicLossScale, Optimizer, Sgd, SgdConfig};
use wgkernels::{DType, Error, Tensor};

/// Tensor sizes of one "model": the 1, 1023, 65537 and a small odd one.
const SIZES: [usize; 4] = [1, 1023, 65537, 37];
const STEPS: u64 = 10;

/// The learning rate of step `t` (1-based): changes every step, as a schedule would.
fn lr_at(base: f32, t: u64) -> f32 {
    base * (1.0 + 0.25 * (t as f32 * 0.7).sin())
}

/// Float64 state of one tensor.
#[derive(Clone)]
struct RefState {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    vmax: Vec<f64>,
}

impl RefState {
    fn new(p: Vec<f64>) -> Self {
        let n = p.len();
        Self { p, m: vec![0.0; n], v: vec![0.0; n], vmax: vec![0.0; n] }
    }
}

/// The factor gradients are multiplied by: 1/scale, times the clipping coefficient.
fn grad_factor(grads: &[Vec<f64>], scale: f64, max_norm: Option<f32>) -> (f64, f64) {
    let sumsq: f64 = grads.iter().flatten().map(|g| (g / scale) * (g / scale)).sum();
    let norm = sumsq.sqrt();
    let clip = max_norm.map_or(1.0, |m| (m as f64 / (norm + 1e-6)).min(1.0));
    (clip / scale, norm)
}

/// PyTorch's AdamW / Adam / AMSGrad update in f64.
fn ref_adam(states: &mut [RefState], grads: &[Vec<f64>], c: &AdamWConfig, t: u64, factor: f64) {
    let (b1, b2) = (c.betas.0 as f64, c.betas.1 as f64);
    let (lr, wd, eps) = (c.lr as f64, c.weight_decay as f64, c.eps as f64);
    let bias1 = 1.0 - b1.powi(t as i32);
    let bias2 = 1.0 - b2.powi(t as i32);
    for (s, g) in states.iter_mut().zip(grads) {
        for i in 0..s.p.len() {
            let mut g = g[i] * factor;
            if c.decoupled_weight_decay {
                s.p[i] *= 1.0 - lr * wd;
            } else {
                g += wd * s.p[i];
            }
            s.m[i] = b1 * s.m[i] + (1.0 - b1) * g;
            s.v[i] = b2 * s.v[i] + (1.0 - b2) * g * g;
            s.vmax[i] = s.vmax[i].max(s.v[i]);
            let v = if c.amsgrad { s.vmax[i] } else { s.v[i] };
            s.p[i] -= lr / bias1 * s.m[i] / (v.sqrt() / bias2.sqrt() + eps);
        }
    }
}

/// PyTorch's SGD update in f64 (`m` is the momentum buffer).
fn ref_sgd(states: &mut [RefState], grads: &[Vec<f64>], c: &SgdConfig, t: u64, factor: f64) {
    let (lr, mu, damp, wd) = (c.lr as f64, c.momentum as f64, c.dampening as f64, c.weight_decay as f64);
    for (s, g) in states.iter_mut().zip(grads) {
        for i in 0..s.p.len() {
            let mut g = g[i] * factor + wd * s.p[i];
            if mu != 0.0 {
                s.m[i] = if t == 1 { g } else { mu * s.m[i] + (1.0 - damp) * g };
                g = if c.nesterov { g + mu * s.m[i] } else { s.m[i] };
            }
            s.p[i] -= lr * g;
        }
    }
}

fn params(dtype: DType, seed: u64) -> (Vec<Tensor>, Vec<RefState>) {
    let gpu = gpu();
    SIZES
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let (t, v) = random_tensor(&gpu, &[n], dtype, seed + k as u64);
            (t, RefState::new(v))
        })
        .unzip()
}

/// Gradients for step `t` (values as stored, in f64), multiplied by `scale`; `poison`
/// puts an inf into the largest tensor.
fn grads(dtype: DType, t: u64, scale: f32, poison: bool) -> (Vec<Tensor>, Vec<Vec<f64>>) {
    let gpu = gpu();
    SIZES
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let mut v: Vec<f32> = random_vec(n, 1000 * t + k as u64).iter().map(|x| x * scale).collect();
            if poison && n == 65537 {
                v[40000] = f32::INFINITY;
            }
            (Tensor::from_f32(&gpu, &v, &[n], dtype).unwrap(), rounded(&v, dtype))
        })
        .unzip()
}

fn check_params(what: &str, got: &[Tensor], want: &[RefState], dtype: DType, tol: (f64, f64)) {
    for (k, (t, s)) in got.iter().zip(want).enumerate() {
        assert_eq!(t.dtype(), dtype);
        let want: Vec<f64> = s.p.iter().map(|&x| rounded(&[x as f32], dtype)[0]).collect();
        assert_close(
            &format!("{what}, tensor {k} ({} elements)", s.p.len()),
            &t.to_vec_f32().unwrap(),
            &want,
            tol.0,
            tol.1,
        );
    }
}

/// f32 master weights and moments after 10 steps: a few f32 roundings per step.
const F32_TOL: (f64, f64) = (2e-6, 2e-5);

fn tol_for(dtype: DType) -> (f64, f64) {
    if dtype == DType::F32 {
        F32_TOL
    } else {
        tol(dtype)
    }
}

/// Runs `STEPS` AdamW steps on the GPU and in f64 and compares the parameters.
fn run_adam(what: &str, config: AdamWConfig, dtype: DType, split: Option<(usize, usize)>) {
    let gpu = gpu();
    let (mut p, mut want) = params(dtype, 7);
    let mut opt = AdamW::new(&gpu, config.clone()).unwrap();
    if let Some((seg, slots)) = split {
        opt.set_split_limits(seg, slots);
    }
    let mut c = config;
    for t in 1..=STEPS {
        c.lr = lr_at(0.01, t);
        opt.config_mut().lr = c.lr;
        let (g, gv) = grads(dtype, t, 1.0, false);
        let (factor, _) = grad_factor(&gv, 1.0, c.max_grad_norm);
        opt.step(&mut p, &g).unwrap();
        ref_adam(&mut want, &gv, &c, t, factor);
    }
    assert_eq!(opt.step_count().unwrap(), STEPS);
    check_params(what, &p, &want, dtype, tol_for(dtype));
}

#[test]
fn adamw_matches_f64_over_ten_steps() {
    run_adam("adamw f32", AdamWConfig { weight_decay: 0.1, ..Default::default() }, DType::F32, None);
}

#[test]
fn adam_with_l2_decay_and_amsgrad_match_f64() {
    let adam = AdamWConfig { weight_decay: 0.05, decoupled_weight_decay: false, ..Default::default() };
    run_adam("adam (L2) f32", adam.clone(), DType::F32, None);
    run_adam(
        "adamw amsgrad f32",
        AdamWConfig { amsgrad: true, betas: (0.8, 0.9), ..Default::default() },
        DType::F32,
        None,
    );
    run_adam("adam amsgrad f32", AdamWConfig { amsgrad: true, ..adam }, DType::F32, None);
}

#[test]
fn adamw_16bit_params_with_f32_master_weights() {
    // The parameter after 10 steps is the f32 master weight rounded once: within half an
    // ulp of the f64 trajectory, which is what a 16-bit copy of the master can promise.
    for dtype in [DType::F16, DType::BF16] {
        run_adam(&format!("adamw {dtype:?}"), AdamWConfig::default(), dtype, None);
    }
}

#[test]
fn tensors_split_across_segments_and_dispatches() {
    // 1000-element segments (the 65537-element tensor becomes 66 pieces, the last with a
    // tail of 537) and 3 slots per dispatch: every grouping path of the real limits, at
    // small sizes.
    let mut opt = AdamW::new(&gpu(), AdamWConfig::default()).unwrap();
    opt.set_split_limits(1000, 3);
    let (mut p, _) = params(DType::F32, 1);
    let (g, _) = grads(DType::F32, 1, 1.0, false);
    opt.step(&mut p, &g).unwrap();
    let segments: usize = 1 + 2 + 66 + 1;
    assert_eq!(opt.dispatches_per_step(), Some(segments.div_ceil(3)));
    run_adam("adamw f32 split", AdamWConfig::default(), DType::F32, Some((1000, 3)));
    run_adam("adamw bf16 split", AdamWConfig::default(), DType::BF16, Some((1002, 2)));
    run_adam(
        "adamw clipped, split",
        AdamWConfig { max_grad_norm: Some(3.0), ..Default::default() },
        DType::F32,
        Some((4096, 2)),
    );
}

#[test]
fn a_model_of_150_tensors_steps_in_few_dispatches() {
    // GPT-2-like: many small tensors (biases, norms) and a few larger ones, odd sizes.
    let gpu = gpu();
    let sizes: Vec<usize> = (0..150).map(|k| if k % 12 == 0 { 4099 + k } else { 1 + (k * 37) % 300 }).collect();
    let mut opt = AdamW::new(&gpu, AdamWConfig { weight_decay: 0.1, ..Default::default() }).unwrap();
    let (mut p, mut want): (Vec<Tensor>, Vec<RefState>) = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let (t, v) = random_tensor(&gpu, &[n], DType::F32, 500 + k as u64);
            (t, RefState::new(v))
        })
        .unzip();
    let c = opt.config_mut().clone();
    for t in 1..=3u64 {
        let (g, gv): (Vec<Tensor>, Vec<Vec<f64>>) = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let v = random_vec(n, 7000 * t + k as u64);
                (Tensor::from_f32(&gpu, &v, &[n], DType::F32).unwrap(), rounded(&v, DType::F32))
            })
            .unzip();
        opt.step(&mut p, &g).unwrap();
        ref_adam(&mut want, &gv, &c, t, 1.0);
    }
    // As many tensors per dispatch as the device binds (160 at most).
    let limits = &gpu.info().limits;
    let bindable =
        (limits.max_storage_buffers_per_shader_stage as usize).min(limits.max_bindings_per_bind_group as usize);
    let slots = ((bindable - 6) / 2).clamp(1, 160);
    assert_eq!(opt.dispatches_per_step(), Some(150usize.div_ceil(slots)));
    check_params("150 tensors", &p, &want, DType::F32, F32_TOL);
}

#[test]
fn clipping_by_global_norm_matches_f64() {
    // Gradients of ~150 norm clipped to 1: the clip factor applies to every tensor.
    run_adam("adamw clip", AdamWConfig { max_grad_norm: Some(1.0), ..Default::default() }, DType::F32, None);
    let gpu = gpu();
    let mut opt = AdamW::new(&gpu, AdamWConfig { max_grad_norm: Some(1.0), ..Default::default() }).unwrap();
    assert_eq!(opt.last_grad_norm().unwrap(), None);
    let (mut p, _) = params(DType::F32, 3);
    let (g, gv) = grads(DType::F32, 1, 1.0, false);
    opt.step(&mut p, &g).unwrap();
    let (_, norm) = grad_factor(&gv, 1.0, None);
    let got = opt.last_grad_norm().unwrap().unwrap() as f64;
    assert!((got - norm).abs() <= 1e-5 * norm, "grad norm {got} vs {norm}");
}

#[test]
fn loss_scaled_step_skips_on_non_finite_gradients() {
    let gpu = gpu();
    for dtype in [DType::F32, DType::F16] {
        let config = AdamWConfig::default();
        let mut opt = AdamW::new(&gpu, config.clone()).unwrap();
        let (mut p, mut want) = params(dtype, 11);
        let mut scaler = DynamicLossScale::new(1024.0);
        scaler.growth_interval = 2;
        let mut t_ref = 0;
        // Steps 1, 2, 4, 5 are clean; step 3 has an inf and must change nothing.
        for step in 1..=5u64 {
            let poison = step == 3;
            let scale = scaler.scale;
            let (g, gv) = grads(dtype, step, scale, poison);
            let before: Vec<Vec<f32>> = p.iter().map(|t| t.to_vec_f32().unwrap()).collect();
            opt.step_scaled(&mut p, &g, scale).unwrap();
            let skipped = opt.last_step_skipped().unwrap();
            assert_eq!(skipped, poison, "{dtype:?} step {step}: skipped = {skipped}");
            scaler.update(skipped);
            if poison {
                let after: Vec<Vec<f32>> = p.iter().map(|t| t.to_vec_f32().unwrap()).collect();
                assert_eq!(before, after, "{dtype:?}: a skipped step changed the parameters");
                let norm = opt.last_grad_norm().unwrap().unwrap();
                assert!(!norm.is_finite(), "reported norm {norm} for a gradient holding inf");
            } else {
                t_ref += 1;
                let (factor, _) = grad_factor(&gv, scale as f64, None);
                ref_adam(&mut want, &gv, &config, t_ref, factor);
            }
        }
        assert_eq!(opt.step_count().unwrap(), 4);
        assert_eq!(opt.skipped_steps().unwrap(), 1);
        // 1024 → 2048 (2 clean) → 1024 (overflow) → 2048 (2 clean).
        assert_eq!(scaler.scale, 2048.0);
        check_params(&format!("adamw loss-scaled {dtype:?}"), &p, &want, dtype, tol_for(dtype));
    }
}

fn run_sgd(what: &str, config: SgdConfig, dtype: DType) {
    let gpu = gpu();
    let (mut p, mut want) = params(dtype, 5);
    let mut opt = Sgd::new(&gpu, config.clone()).unwrap();
    let mut c = config;
    for t in 1..=STEPS {
        c.lr = lr_at(0.05, t);
        opt.config_mut().lr = c.lr;
        let (g, gv) = grads(dtype, t, 1.0, false);
        let (factor, _) = grad_factor(&gv, 1.0, c.max_grad_norm);
        opt.step(&mut p, &g).unwrap();
        ref_sgd(&mut want, &gv, &c, t, factor);
    }
    check_params(what, &p, &want, dtype, tol_for(dtype));
}

#[test]
fn sgd_variants_match_f64() {
    run_sgd("sgd plain", SgdConfig { weight_decay: 0.01, ..Default::default() }, DType::F32);
    run_sgd("sgd momentum", SgdConfig { momentum: 0.9, weight_decay: 0.01, ..Default::default() }, DType::F32);
    run_sgd("sgd nesterov", SgdConfig { momentum: 0.9, nesterov: true, ..Default::default() }, DType::F32);
    run_sgd(
        "sgd dampening, clip",
        SgdConfig { momentum: 0.5, dampening: 0.3, max_grad_norm: Some(2.0), ..Default::default() },
        DType::F32,
    );
    run_sgd("sgd momentum bf16", SgdConfig { momentum: 0.9, ..Default::default() }, DType::BF16);
}

#[test]
fn fused_step_matches_the_unfused_composition() {
    // The same AdamW update from element-wise ops, with the fusion JIT off (one kernel per
    // op) and on (the JIT's own fused kernel), against the dedicated kernel.
    let gpu = gpu();
    let n = 4099;
    let config = AdamWConfig { weight_decay: 0.1, ..Default::default() };
    let mut opt = AdamW::new(&gpu, config.clone()).unwrap();
    let values = random_vec(n, 21);
    let p0 = Tensor::from_f32(&gpu, &values, &[n], DType::F32).unwrap();
    // A tensor of its own: the fused step writes its parameters in place.
    let mut fused = vec![Tensor::from_f32(&gpu, &values, &[n], DType::F32).unwrap()];
    let was = gpu.fusion();
    for fusion in [false, true] {
        gpu.set_fusion(fusion);
        let (mut p, mut m, mut v) = (
            p0.clone(),
            Tensor::zeros(&gpu, &[n], DType::F32).unwrap(),
            Tensor::zeros(&gpu, &[n], DType::F32).unwrap(),
        );
        for t in 1..=3 {
            let (g, _) = random_tensor(&gpu, &[n], DType::F32, 100 + t);
            (p, m, v) = adamw_unfused(&p, &g, &m, &v, t, &config).unwrap();
            if !fusion {
                opt.step(&mut fused, &[g]).unwrap();
            }
        }
        let want: Vec<f64> = fused[0].to_vec_f32().unwrap().iter().map(|&x| x as f64).collect();
        assert_close(&format!("unfused (fusion {fusion}) vs fused"), &p.to_vec_f32().unwrap(), &want, 1e-6, 1e-5);
    }
    gpu.set_fusion(was);
}

#[test]
fn state_bytes_show_what_each_optimizer_costs() {
    let gpu = gpu();
    let n: usize = SIZES.iter().map(|&s| s.next_multiple_of(4)).sum();
    let cases: [(&str, Box<dyn Optimizer>, DType, usize); 4] = [
        ("adamw f32", Box::new(AdamW::new(&gpu, AdamWConfig::default()).unwrap()), DType::F32, 8),
        ("adamw f16", Box::new(AdamW::new(&gpu, AdamWConfig::default()).unwrap()), DType::F16, 12),
        (
            "sgd momentum",
            Box::new(Sgd::new(&gpu, SgdConfig { momentum: 0.9, ..Default::default() }).unwrap()),
            DType::F32,
            4,
        ),
        ("sgd", Box::new(Sgd::new(&gpu, SgdConfig::default()).unwrap()), DType::F32, 0),
    ];
    for (what, mut opt, dtype, per_param) in cases {
        let (mut p, _) = params(dtype, 2);
        let (g, _) = grads(dtype, 1, 1.0, false);
        opt.step(&mut p, &g).unwrap();
        let state = opt.state_bytes() as usize;
        // The state is pool-allocated tensors, so Gpu::memory() counts it too (not asserted
        // here: the other tests of this binary allocate concurrently).
        // Per-parameter state plus the bookkeeping (control words, one partial sum per 4096).
        let bookkeeping = 64 + 4 * n.div_ceil(4096) + 64;
        assert!(
            state >= per_param * n && state <= per_param * n + bookkeeping,
            "{what}: {state} state bytes for {n} params, expected {per_param}/param + <= {bookkeeping}"
        );
    }
}

#[test]
fn bad_input_is_refused_without_dispatching() {
    let gpu = gpu();
    let mut opt = AdamW::new(&gpu, AdamWConfig::default()).unwrap();
    let (a, _) = random_tensor(&gpu, &[10], DType::F32, 1);
    let (b, _) = random_tensor(&gpu, &[12], DType::F32, 2);
    let (h, _) = random_tensor(&gpu, &[10], DType::F16, 3);
    let err = |r: wgkernels::Result<()>| r.expect_err("must be refused").to_string();
    let e = err(opt.step(&mut [a.clone()], &[b.clone()]));
    assert!(e.contains("adamw") && e.contains("[10]") && e.contains("[12]"), "{e}");
    let e = err(opt.step(&mut [a.clone()], &[h.clone()]));
    assert!(e.contains("F32") && e.contains("F16"), "{e}");
    let e = err(opt.step(&mut [a.clone(), b.clone()], &[a.clone()]));
    assert!(e.contains("2 parameters but 1 gradients"), "{e}");
    let e = err(opt.step(&mut [a.clone(), h.clone()], &[a.clone(), h.clone()]));
    assert!(e.contains("one dtype"), "{e}");
    let e = err(opt.step(&mut [a.clone()], &[a.clone()]));
    assert!(e.contains("shares storage"), "{e}");
    let wide = Tensor::randn(&gpu, &[3, 5], DType::F32, 4).unwrap();
    let e =
        err(opt.step(&mut [wide.transpose(0, 1).unwrap()], &[Tensor::randn(&gpu, &[5, 3], DType::F32, 5).unwrap()]));
    assert!(e.contains("contiguous"), "{e}");
    assert_eq!(opt.dispatches_per_step(), None, "a refused step built state");
    // The state is built for the first step's tensors; another list is refused.
    let (g, _) = random_tensor(&gpu, &[10], DType::F32, 6);
    let mut p = [a.contiguous().unwrap()];
    opt.step(&mut p, &[g.clone()]).unwrap();
    let e = err(opt.step(&mut [b.clone()], &[b.contiguous().unwrap()]));
    assert!(e.contains("built for 1 tensors"), "{e}");
    assert!(matches!(
        AdamW::new(&gpu, AdamWConfig { betas: (1.0, 0.9), ..Default::default() }),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        AdamW::new(&gpu, AdamWConfig { lr: f32::NAN, ..Default::default() }),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Sgd::new(&gpu, SgdConfig { nesterov: true, ..Default::default() }),
        Err(Error::InvalidArgument { .. })
    ));
    let e = err(opt.step_scaled(&mut p, &[g], 0.0));
    assert!(e.contains("loss scale"), "{e}");
    assert_eq!(opt.step_count().unwrap(), 1);
}

/// The same tensor (or two views over the same elements) passed twice to one step would be
/// updated by two invocations at once: refused, naming both; disjoint views of one buffer
/// are fine.
#[test]
fn aliased_parameters_are_refused() {
    let gpu = gpu();
    let p = Tensor::randn(&gpu, &[64, 16], DType::F32, 1).unwrap();
    let g = Tensor::randn(&gpu, &[64, 16], DType::F32, 2).unwrap();
    let mut adam = AdamW::new(&gpu, AdamWConfig::default()).unwrap();
    let e = adam.step(&mut [p.clone(), p.clone()], &[g.clone(), g.clone()]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "adamw", .. }), "{e}");
    assert!(e.to_string().contains("parameters 0 and 1"), "{e}");
    let flat = p.reshape(&[1024]).unwrap();
    let (lo, mid) = (flat.narrow(0, 0, 512).unwrap(), flat.narrow(0, 256, 512).unwrap());
    let gh = Tensor::randn(&gpu, &[512], DType::F32, 3).unwrap();
    let mut sgd = Sgd::new(&gpu, SgdConfig::default()).unwrap();
    let e = sgd.step(&mut [lo.clone(), mid], &[gh.clone(), gh.clone()]).unwrap_err();
    assert!(e.to_string().contains("share elements"), "{e}");
    // Disjoint halves of one buffer: one update each, as if they were separate tensors.
    let hi = flat.narrow(0, 512, 512).unwrap();
    let gflat = Tensor::randn(&gpu, &[1024], DType::F32, 4).unwrap();
    let (glo, ghi) = (gflat.narrow(0, 0, 512).unwrap(), gflat.narrow(0, 512, 512).unwrap());
    let before = flat.to_vec_f32().unwrap();
    let lr = SgdConfig::default().lr;
    let mut sgd = Sgd::new(&gpu, SgdConfig::default()).unwrap();
    sgd.step(&mut [lo, hi], &[glo, ghi]).unwrap();
    let after = flat.to_vec_f32().unwrap();
    let gv = gflat.to_vec_f32().unwrap();
    let want: Vec<f64> = (0..1024).map(|i| before[i] as f64 - lr as f64 * gv[i] as f64).collect();
    assert_close("disjoint halves", &after, &want, 1e-6, 1e-6);
}
