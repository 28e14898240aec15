//! Matmul against a float64 CPU reference: every path the library can choose on this
//! adapter, every dtype, odd sizes, batches with broadcasting, transposed operands,
//! epilogues, and the errors.

mod common;
use common::*;
use wgkernels::ops::matmul::{candidates, Activation, MatmulOptions, MatmulPath};
use wgkernels::{DType, Error, Gpu, Tensor};

/// C = A·B (+ bias, activation) in f64. `a` is [batch, m, k], `b` is [batch, k, n] (batch 1
/// broadcasts), both row-major.
#[allow(clippy::too_many_arguments)]
fn reference(
    a: &[f64],
    b: &[f64],
    batch: usize,
    a_batched: bool,
    b_batched: bool,
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f64]>,
    act: Activation,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for z in 0..batch {
        let ao = if a_batched { z * m * k } else { 0 };
        let bo = if b_batched { z * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    s += a[ao + i * k + p] * b[bo + p * n + j];
                }
                if let Some(bias) = bias {
                    s += bias[j];
                }
                out[(z * m + i) * n + j] = act.apply_f64(s);
            }
        }
    }
    out
}

/// Tolerance for a K-long dot product of values in [-2, 2): f32 accumulation error grows
/// with K; the result is then stored in `dtype`.
fn mm_tol(dtype: DType, k: usize) -> (f64, f64) {
    let (atol, rtol) = tol(dtype);
    (atol + 4e-7 * k as f64, rtol)
}

/// Values as the coop path sees F32 inputs with reduced precision: rounded to f16.
fn as_f16(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect()
}

fn check_paths(gpu: &Gpu, m: usize, k: usize, n: usize, dtype: DType, seed: u64) {
    let (a, av) = random_tensor(gpu, &[m, k], dtype, seed);
    let (b, bv) = random_tensor(gpu, &[k, n], dtype, seed + 1);
    let want = reference(&av, &bv, 1, true, true, m, k, n, None, Activation::None);
    let (atol, rtol) = mm_tol(dtype, k);
    let mut paths = candidates(gpu, dtype, m, false);
    assert!(!paths.is_empty());
    if m == 1 && k * n > 1 << 20 {
        // The decode shape: every register-tiled candidate would pad M = 1 to its full tile
        // (minutes on a software device); those are covered by the other shapes, so here
        // the paths a library choice can land on: thin, and tensor cores where present.
        paths.retain(|p| !matches!(p, MatmulPath::Tiled(_)));
    }
    for path in paths {
        let opts = MatmulOptions { path: Some(path), ..Default::default() };
        let got = a.matmul_with(&b, &opts).unwrap();
        assert_eq!(got.shape(), &[m, n]);
        assert_eq!(got.dtype(), dtype);
        assert_close(&format!("{m}x{k}x{n} {dtype:?} {}", path.name()), &got.to_vec_f32().unwrap(), &want, atol, rtol);
    }
    // F32 on tensor cores only when asked for; checked against f16-rounded inputs.
    if dtype == DType::F32 {
        let want16 = reference(&as_f16(&av), &as_f16(&bv), 1, true, true, m, k, n, None, Activation::None);
        for path in candidates(gpu, dtype, m, true).into_iter().filter(|p| matches!(p, MatmulPath::Coop(_))) {
            let opts = MatmulOptions { path: Some(path), allow_reduced_precision: true, ..Default::default() };
            let got = a.matmul_with(&b, &opts).unwrap();
            assert_close(
                &format!("{m}x{k}x{n} f32 reduced {}", path.name()),
                &got.to_vec_f32().unwrap(),
                &want16,
                atol,
                rtol,
            );
        }
    }
    // The default choice (autotuned or not) agrees too.
    let got = a.matmul(&b).unwrap();
    assert_close(&format!("{m}x{k}x{n} {dtype:?} default"), &got.to_vec_f32().unwrap(), &want, atol, rtol);
}

#[test]
fn every_path_every_dtype_odd_sizes() {
    let gpu = gpu();
    if !wgkernels::ops::matmul::coop_available(&gpu, DType::F16, false) {
        skipped(
            "matmul tensor-core paths",
            &format!("{} has no cooperative matrices: only the tiled and thin paths ran", gpu.info().name),
        );
    }
    // (M, K, N) from the issue; none but the last two divide a tile.
    for (i, &(m, k, n)) in [(1, 1, 1), (7, 13, 5), (33, 65, 17), (128, 256, 64), (1, 768, 3072)].iter().enumerate() {
        for dtype in DType::ALL {
            check_paths(&gpu, m, k, n, dtype, 100 + i as u64);
        }
    }
}

#[test]
fn thin_shapes_up_to_eight_rows() {
    let gpu = gpu();
    for m in [2, 5, 8] {
        check_paths(&gpu, m, 100, 77, DType::F32, 7);
    }
}

/// The thin kernel (M ≤ 8) on its own: K on both sides of its 4-step unroll over 16 slices
/// (64 k per round) and N not a multiple of its 16 columns, every dtype; B as stored by
/// nn.Linear ([N, K], a transposed view), a batch of 3, bias and GELU in the epilogue.
#[test]
fn thin_kernel_unroll_edges_linear_weights_and_epilogue() {
    let gpu = gpu();
    fn thin(bias: Option<&Tensor>, activation: Activation) -> MatmulOptions<'_> {
        MatmulOptions { bias, activation, path: Some(MatmulPath::Thin), ..Default::default() }
    }
    for dtype in DType::ALL {
        for (i, &(m, k, n)) in
            [(1, 1, 1), (1, 63, 17), (3, 64, 16), (8, 65, 33), (2, 127, 15), (5, 130, 47), (1, 768, 100)]
                .iter()
                .enumerate()
        {
            let seed = 10 * i as u64;
            let (atol, rtol) = mm_tol(dtype, k);
            let (a, av) = random_tensor(&gpu, &[m, k], dtype, seed);
            let (b, bv) = random_tensor(&gpu, &[k, n], dtype, seed + 1);
            let want = reference(&av, &bv, 1, true, true, m, k, n, None, Activation::None);
            let got = a.matmul_with(&b, &thin(None, Activation::None)).unwrap();
            assert_close(&format!("thin {m}x{k}x{n} {dtype:?}"), &got.to_vec_f32().unwrap(), &want, atol, rtol);
            // B stored [n, k] (a Linear layer's weight), read through its transpose, with a
            // bias and GELU.
            let (w, wv) = random_tensor(&gpu, &[n, k], dtype, seed + 2);
            let (bias, biasv) = random_tensor(&gpu, &[n], dtype, seed + 3);
            let w_kn: Vec<f64> = (0..k * n).map(|e| wv[(e % n) * k + e / n]).collect();
            let want = reference(&av, &w_kn, 1, true, true, m, k, n, Some(&biasv), Activation::Gelu);
            let got = a.matmul_with(&w.transpose(0, 1).unwrap(), &thin(Some(&bias), Activation::Gelu)).unwrap();
            let what = format!("thin linear {m}x{k}x{n} {dtype:?}");
            assert_close(&what, &got.to_vec_f32().unwrap(), &want, atol, rtol);
        }
        // A batch of 3 against one B (broadcast).
        let (m, k, n) = (4, 97, 40);
        let (atol, rtol) = mm_tol(dtype, k);
        let (a, av) = random_tensor(&gpu, &[3, m, k], dtype, 90);
        let (b, bv) = random_tensor(&gpu, &[k, n], dtype, 91);
        let want = reference(&av, &bv, 3, true, false, m, k, n, None, Activation::None);
        let got = a.matmul_with(&b, &thin(None, Activation::None)).unwrap();
        assert_eq!(got.shape(), &[3, m, n]);
        assert_close(&format!("thin batched {dtype:?}"), &got.to_vec_f32().unwrap(), &want, atol, rtol);
    }
}

#[test]
fn batched_with_broadcast_and_transposed_views() {
    let gpu = gpu();
    for dtype in DType::ALL {
        let (m, k, n) = (19, 37, 23);
        let (atol, rtol) = mm_tol(dtype, k);
        // A: [2, 3, m, k]; B: [3, k, n] broadcast over the leading dim.
        let (a, av) = random_tensor(&gpu, &[2, 3, m, k], dtype, 1);
        let (b, bv) = random_tensor(&gpu, &[3, k, n], dtype, 2);
        let bv6: Vec<f64> = (0..6).flat_map(|z| bv[(z % 3) * k * n..(z % 3 + 1) * k * n].to_vec()).collect();
        let want = reference(&av, &bv6, 6, true, true, m, k, n, None, Activation::None);
        for path in candidates(&gpu, dtype, m, false) {
            let got = a.matmul_with(&b, &MatmulOptions { path: Some(path), ..Default::default() }).unwrap();
            assert_eq!(got.shape(), &[2, 3, m, n]);
            assert_close(&format!("batched {dtype:?} {}", path.name()), &got.to_vec_f32().unwrap(), &want, atol, rtol);
        }
        // Transposed operands as views: Aᵀ stored [k, m], Bᵀ stored [n, k] (an m-fast A and
        // a k-fast B, which the tensor-core kernel stages transposing); sizes of 8s take the
        // word staging, the odd ones element staging, each alone and beside a row-major
        // other operand.
        for (m, k, n) in [(m, k, n), (40, 72, 56)] {
            let (atol, rtol) = mm_tol(dtype, k);
            let (at, atv) = random_tensor(&gpu, &[k, m], dtype, 3);
            let (bt, btv) = random_tensor(&gpu, &[n, k], dtype, 4);
            let (ar, arv) = random_tensor(&gpu, &[m, k], dtype, 5);
            let (br, brv) = random_tensor(&gpu, &[k, n], dtype, 6);
            let a_rows: Vec<f64> = (0..m * k).map(|i| atv[(i % k) * m + i / k]).collect();
            let b_rows: Vec<f64> = (0..k * n).map(|i| btv[(i % n) * k + i / n]).collect();
            let a_view = at.transpose(0, 1).unwrap();
            let b_view = bt.transpose(0, 1).unwrap();
            let cases = [
                ("Aᵀ·Bᵀ", &a_view, &b_view, &a_rows, &b_rows),
                ("Aᵀ·B", &a_view, &br, &a_rows, &brv),
                ("A·Bᵀ", &ar, &b_view, &arv, &b_rows),
            ];
            for (what, a, b, av, bv) in cases {
                let want = reference(av, bv, 1, true, true, m, k, n, None, Activation::None);
                let before = gpu.stats().dispatches;
                for path in candidates(&gpu, dtype, m, false) {
                    let got = a.matmul_with(b, &MatmulOptions { path: Some(path), ..Default::default() }).unwrap();
                    assert_close(
                        &format!("{what} {m}x{k}x{n} {dtype:?} {}", path.name()),
                        &got.to_vec_f32().unwrap(),
                        &want,
                        atol,
                        rtol,
                    );
                }
                assert!(gpu.stats().dispatches > before);
            }
        }
    }
}

#[test]
fn epilogue_bias_and_activations() {
    let gpu = gpu();
    for dtype in DType::ALL {
        let (m, k, n) = (21, 40, 35);
        let (atol, rtol) = mm_tol(dtype, k);
        let (a, av) = random_tensor(&gpu, &[m, k], dtype, 5);
        let (b, bv) = random_tensor(&gpu, &[k, n], dtype, 6);
        let (bias, biasv) = random_tensor(&gpu, &[n], dtype, 7);
        for act in Activation::ALL {
            let want = reference(&av, &bv, 1, true, true, m, k, n, Some(&biasv), act);
            for path in candidates(&gpu, dtype, m, false) {
                let opts = MatmulOptions { bias: Some(&bias), activation: act, path: Some(path), ..Default::default() };
                let got = a.matmul_with(&b, &opts).unwrap();
                assert_close(
                    &format!("epilogue {act:?} {dtype:?} {}", path.name()),
                    &got.to_vec_f32().unwrap(),
                    &want,
                    atol,
                    rtol,
                );
            }
            // The fused epilogue equals the same function built from separate ops.
            if act == Activation::None {
                let unfused = a.matmul(&b).unwrap().add(&bias).unwrap();
                let fused = a.matmul_with(&b, &MatmulOptions { bias: Some(&bias), ..Default::default() }).unwrap();
                assert_close(
                    &format!("fused vs unfused bias {dtype:?}"),
                    &fused.to_vec_f32().unwrap(),
                    &unfused.to_vec_f32().unwrap().iter().map(|&x| x as f64).collect::<Vec<_>>(),
                    atol,
                    rtol,
                );
            }
        }
    }
}

#[test]
fn output_dtype_and_vectors() {
    let gpu = gpu();
    let (a, av) = random_tensor(&gpu, &[9, 14], DType::BF16, 8);
    let (b, bv) = random_tensor(&gpu, &[14, 6], DType::BF16, 9);
    let got = a.matmul_with(&b, &MatmulOptions { out_dtype: Some(DType::F32), ..Default::default() }).unwrap();
    assert_eq!(got.dtype(), DType::F32);
    let want = reference(&av, &bv, 1, true, true, 9, 14, 6, None, Activation::None);
    assert_close("bf16 in, f32 out", &got.to_vec_f32().unwrap(), &want, 1e-5 * 14.0, 1e-5);
    // 1-D operands, as torch.matmul treats them.
    let (v, vv) = random_tensor(&gpu, &[14], DType::F32, 10);
    let (w, wv) = random_tensor(&gpu, &[14, 6], DType::F32, 11);
    let got = v.matmul(&w).unwrap();
    assert_eq!(got.shape(), &[6]);
    assert_close(
        "vector x matrix",
        &got.to_vec_f32().unwrap(),
        &reference(&vv, &wv, 1, true, true, 1, 14, 6, None, Activation::None),
        1e-5,
        1e-5,
    );
    let dot = v.matmul(&v).unwrap();
    assert_eq!(dot.shape(), &[] as &[usize]);
    let want: f64 = vv.iter().map(|x| x * x).sum();
    assert_close("dot", &dot.to_vec_f32().unwrap(), &[want], 1e-5, 1e-5);
}

#[test]
fn matmul_errors() {
    let gpu = gpu();
    let a = Tensor::randn(&gpu, &[4, 5], DType::F32, 1).unwrap();
    let b = Tensor::randn(&gpu, &[6, 3], DType::F32, 2).unwrap();
    let h = Tensor::randn(&gpu, &[5, 3], DType::F16, 3).unwrap();
    let e = a.matmul(&b).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "matmul", .. }), "{e}");
    // The message names the dims that disagree, not only the shapes.
    let text = e.to_string();
    assert!(text.contains("[4, 5]") && text.contains("[6, 3]"), "{e}");
    assert!(text.contains("inner dims differ") && text.contains("5 columns") && text.contains("6 rows"), "{e}");
    let square = Tensor::randn(&gpu, &[4, 8], DType::F32, 8).unwrap();
    let e = square.matmul(&square).unwrap_err().to_string();
    assert!(e.contains("8 columns") && e.contains("4 rows"), "{e}");
    let e = a.matmul(&h).unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { op: "matmul", .. }), "{e}");
    let c = Tensor::randn(&gpu, &[2, 4, 5], DType::F32, 4).unwrap();
    let d = Tensor::randn(&gpu, &[3, 5, 2], DType::F32, 5).unwrap();
    let e = c.matmul(&d).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "matmul", .. }), "batch dims 2 vs 3: {e}");
    assert!(e.to_string().contains("[2]") && e.to_string().contains("[3]"), "{e}");
    let good_b = Tensor::randn(&gpu, &[5, 3], DType::F32, 6).unwrap();
    let bad_bias = Tensor::randn(&gpu, &[4], DType::F32, 7).unwrap();
    let e = a.matmul_with(&good_b, &MatmulOptions { bias: Some(&bad_bias), ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "matmul bias", .. }), "{e}");
    // A path the adapter or the shape cannot take is refused, not run.
    assert!(
        a.matmul_with(&good_b, &MatmulOptions { path: Some(MatmulPath::Thin), ..Default::default() }).is_ok(),
        "M = 4 may take the thin path"
    );
    let big = Tensor::randn(&gpu, &[9, 5], DType::F32, 8).unwrap();
    let e =
        big.matmul_with(&good_b, &MatmulOptions { path: Some(MatmulPath::Thin), ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "matmul", .. }), "{e}");
}

/// Shapes below the autotuner's threshold run the first candidate; on a CPU device that is
/// the 16-byte-load 128×128×16 tiling (3-4× the first GPU tiling on lavapipe), after the
/// thin kernel for few rows.
#[test]
fn the_untuned_default_suits_the_device() {
    use wgkernels::ops::matmul::TileConfig;
    let gpu = gpu();
    let cpu = gpu.info().device_type == wgkernels::wgpu::DeviceType::Cpu;
    for dtype in DType::ALL {
        let c = candidates(&gpu, dtype, 256, false);
        let v4 = MatmulPath::Tiled(TileConfig { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8, vec4: true });
        if cpu {
            assert_eq!(c[0], v4, "{dtype:?}: {:?}", c[0]);
            assert_eq!(candidates(&gpu, dtype, 1, false)[0], MatmulPath::Thin);
        }
        // Every configuration stays a candidate, once.
        let tiled = c.iter().filter(|p| matches!(p, MatmulPath::Tiled(_))).count();
        let mut names: Vec<String> = c.iter().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), c.len(), "{dtype:?}: a candidate twice");
        assert!(tiled >= 1);
    }
}

/// An adapter whose limits admit no matmul tiling (128 invocations per workgroup, below
/// every tiled configuration's 256) gets an `Err` naming the op, tuned or not; the
/// autotuner indexed the empty candidate list and panicked.
#[test]
fn no_tiling_fits_is_an_error_not_a_panic() {
    for autotune in [true, false] {
        let limits = wgkernels::wgpu::Limits {
            max_compute_invocations_per_workgroup: 128,
            max_compute_workgroup_size_x: 128,
            max_compute_workgroup_size_y: 128,
            ..wgkernels::wgpu::Limits::unlimited()
        };
        let opts =
            wgkernels::GpuOptions { limits_cap: Some(limits), autotune, ..wgkernels::GpuOptions::from_env().unwrap() };
        let gpu = Gpu::with_options(opts).unwrap();
        // 2·520·256·500 = 133 MFLOP: above the tuning threshold.
        let a = Tensor::randn(&gpu, &[520, 256], DType::F32, 1).unwrap();
        let b = Tensor::randn(&gpu, &[256, 500], DType::F32, 2).unwrap();
        assert!(candidates(&gpu, DType::F32, 520, false).is_empty());
        let e = a.matmul(&b).and_then(|c| c.realize().map(drop)).unwrap_err();
        assert!(matches!(e, Error::Unsupported { op: "matmul", .. }), "{e}");
    }
}

/// A 16-bit C is stored by the matmul kernel itself (two columns to a word) when N is even,
/// on every path: the same bits as the f32 result cast afterwards, which odd N still takes,
/// and within the dtype's tolerance of f64. With a bias and an activation, batched, N not a
/// multiple of any tile, M from the thin kernel's 1 to past a tile.
#[test]
fn sixteen_bit_outputs_are_stored_directly_and_match_the_cast() {
    // A device of its own: the test counts dispatches, which other tests would add to.
    let gpu = Gpu::new().unwrap();
    for dtype in [DType::F16, DType::BF16] {
        for &(batch, m, k, n) in &[(1, 1, 40, 34), (2, 5, 33, 66), (1, 70, 47, 130), (3, 33, 65, 18), (1, 9, 20, 17)] {
            let (a, av) = random_tensor(&gpu, &[batch, m, k], dtype, 300 + n as u64);
            let (b, bv) = random_tensor(&gpu, &[k, n], dtype, 301 + n as u64);
            let (bias, biasv) = random_tensor(&gpu, &[n], dtype, 302);
            let want = reference(&av, &bv, batch, true, false, m, k, n, Some(&biasv), Activation::Gelu);
            let (atol, rtol) = mm_tol(dtype, k);
            let mut paths: Vec<Option<MatmulPath>> = vec![None];
            paths.extend(candidates(&gpu, dtype, m, false).into_iter().map(Some));
            for path in paths {
                let with = |out_dtype| MatmulOptions {
                    bias: Some(&bias),
                    activation: Activation::Gelu,
                    out_dtype,
                    path,
                    ..Default::default()
                };
                let before = gpu.stats().dispatches;
                let direct = a.matmul_with(&b, &with(None)).unwrap();
                direct.realize().unwrap();
                assert_eq!(direct.dtype(), dtype);
                let direct_dispatches = gpu.stats().dispatches - before;
                let before = gpu.stats().dispatches;
                let f32_out = a.matmul_with(&b, &with(Some(DType::F32))).unwrap();
                f32_out.realize().unwrap();
                let f32_dispatches = gpu.stats().dispatches - before;
                // As many as the f32 product (one kernel, after a range pass where bf16 is
                // scaled for tensor cores) when N is even, no cast after it; odd N adds it.
                let want_dispatches = f32_dispatches + u64::from(n % 2 != 0);
                assert_eq!(direct_dispatches, want_dispatches, "{n} columns: dispatches");
                let cast = f32_out.to_dtype(dtype).unwrap();
                let what = format!("{batch}x{m}x{k}x{n} {dtype:?} {}", path.map_or("auto".into(), |p| p.name()));
                let got = direct.to_vec_f32().unwrap();
                assert_eq!(got, cast.to_vec_f32().unwrap(), "{what}: direct 16-bit store vs f32 + cast");
                assert_close(&what, &got, &want, atol * 4.0, rtol);
            }
        }
    }
}

/// K split into chunks (`matmul_split_k`, the weight gradients' path) against f64, for A a
/// transposed view as a weight gradient reads it, every dtype, odd M and N, every split that
/// divides K; and its errors.
#[test]
fn split_k_matches_the_reference_and_refuses_bad_splits() {
    let gpu = gpu();
    let (m, k, n) = (37, 96, 29);
    for dtype in DType::ALL {
        // A = Xᵀ with X [k, m] row-major; B [k, n].
        let (x, xv) = random_tensor(&gpu, &[k, m], dtype, 71);
        let (b, bv) = random_tensor(&gpu, &[k, n], dtype, 72);
        let mut av = vec![0.0; m * k];
        for i in 0..m {
            for j in 0..k {
                av[i * k + j] = xv[j * m + i];
            }
        }
        let want = reference(&av, &bv, 1, false, false, m, k, n, None, Activation::None);
        let (atol, rtol) = mm_tol(dtype, k);
        let a = x.transpose(0, 1).unwrap();
        for splits in [1, 2, 3, 4, 8] {
            let got = a.matmul_split_k(&b, splits).unwrap();
            assert_eq!((got.shape(), got.dtype()), (&[m, n][..], dtype));
            assert_close(&format!("split-K {splits} {dtype:?}"), &got.to_vec_f32().unwrap(), &want, atol, rtol);
        }
    }
    let (a, _) = random_tensor(&gpu, &[4, 10], DType::F32, 1);
    let (b, _) = random_tensor(&gpu, &[10, 3], DType::F32, 2);
    for (splits, what) in [(3, "K 10 in 3"), (0, "no chunks")] {
        let err = a.matmul_split_k(&b, splits).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "matmul_split_k", .. }), "{what}: {err}");
    }
    let (a3, _) = random_tensor(&gpu, &[2, 4, 10], DType::F32, 3);
    assert!(a3.matmul_split_k(&b, 2).is_err(), "a 3-D operand");
    let (b16, _) = random_tensor(&gpu, &[10, 3], DType::F16, 4);
    assert!(matches!(a.matmul_split_k(&b16, 2), Err(Error::DTypeMismatch { .. })));
}

/// `MatmulPrecision::High`: f32 split into two f16 parts on tensor cores, against f64 at a
/// per-product error of about 2^-21 (22 significant bits), for every coop tiling, B plain
/// and as a transposed view, operands far from 1 (×10⁴ and ×10⁻⁶: the per-tensor scales), a bias and
/// GELU epilogue; and the device setting reaching `Tensor::matmul`. Where the adapter has no
/// f16 cooperative matrices, High runs the f32 FMA kernels: checked at f32's tolerance.
#[test]
fn high_precision_splits_f32_into_f16_parts() {
    use wgkernels::ops::matmul::{candidates_for, coop_available_for};
    use wgkernels::MatmulPrecision;
    let gpu = gpu();
    let high = MatmulPrecision::High;
    let (m, k, n) = (77, 300, 45);
    if !coop_available_for(&gpu, DType::F32, high) {
        skipped(
            "high_precision_splits_f32_into_f16_parts (tensor-core part)",
            "no f16 cooperative matrices: High runs the FMA kernels here, checked at the same bound",
        );
    }
    for (scale_a, scale_b) in [(1.0f32, 1.0f32), (1e4, 1e-6)] {
        let av: Vec<f32> = random_vec(m * k, 91).iter().map(|x| x * scale_a).collect();
        let bv: Vec<f32> = random_vec(k * n, 92).iter().map(|x| x * scale_b).collect();
        let (a64, b64): (Vec<f64>, Vec<f64>) =
            (av.iter().map(|&x| x as f64).collect(), bv.iter().map(|&x| x as f64).collect());
        let a = Tensor::from_f32(&gpu, &av, &[m, k], DType::F32).unwrap();
        // B also as the transpose of a row-major [n, k], as a Linear weight is read.
        let bt_host: Vec<f32> = (0..n * k).map(|i| bv[(i % k) * n + i / k]).collect();
        let bt = Tensor::from_f32(&gpu, &bt_host, &[n, k], DType::F32).unwrap().transpose(0, 1).unwrap();
        let b = Tensor::from_f32(&gpu, &bv, &[k, n], DType::F32).unwrap();
        let want = reference(&a64, &b64, 1, false, false, m, k, n, None, Activation::None);
        // |a|, |b| < 2·scale: each product within 2^-21 of it, k of them.
        let bound = (4.0 * scale_a as f64 * scale_b as f64) * k as f64;
        let (atol, rtol) = (bound * 2f64.powi(-21), 1e-5);
        let mut paths: Vec<Option<MatmulPath>> = candidates_for(&gpu, DType::F32, m, high)
            .into_iter()
            .filter(|p| matches!(p, MatmulPath::Coop(_)))
            .map(Some)
            .collect();
        paths.push(None); // the library's choice at High
        for path in paths {
            let name = path.map_or("auto".to_string(), |p| p.name());
            let opts = MatmulOptions { path, precision: Some(high), ..Default::default() };
            for (label, rhs) in [("B", &b), ("Wᵀ", &bt)] {
                let got = a.matmul_with(rhs, &opts).unwrap().to_vec_f32().unwrap();
                assert_close(&format!("high {name} A·{label} ×{scale_a}×{scale_b}"), &got, &want, atol, rtol);
            }
        }
    }
    // Epilogue: bias and GELU after the scales are divided out.
    let (a, av) = random_tensor(&gpu, &[m, k], DType::F32, 93);
    let (b, bv) = random_tensor(&gpu, &[k, n], DType::F32, 94);
    let (bias, biasv) = random_tensor(&gpu, &[n], DType::F32, 95);
    let want = reference(&av, &bv, 1, false, false, m, k, n, Some(&biasv), Activation::Gelu);
    let opts =
        MatmulOptions { bias: Some(&bias), activation: Activation::Gelu, precision: Some(high), ..Default::default() };
    let got = a.matmul_with(&b, &opts).unwrap().to_vec_f32().unwrap();
    assert_close("high, bias and GELU", &got, &want, 16.0 * k as f64 * 2f64.powi(-21), 1e-5);
    // The device setting is what Tensor::matmul uses.
    let gpu2 = wgkernels::Gpu::new().unwrap();
    gpu2.set_f32_matmul_precision(high);
    assert_eq!(gpu2.f32_matmul_precision(), high);
    let a2 = Tensor::from_f32(&gpu2, &a.to_vec_f32().unwrap(), &[m, k], DType::F32).unwrap();
    let b2 = Tensor::from_f32(&gpu2, &b.to_vec_f32().unwrap(), &[k, n], DType::F32).unwrap();
    let want = reference(&av, &bv, 1, false, false, m, k, n, None, Activation::None);
    let got = a2.matmul(&b2).unwrap().to_vec_f32().unwrap();
    assert_close("device setting High", &got, &want, 16.0 * k as f64 * 2f64.powi(-21), 1e-5);
}

/// The layouts a scaled coop kernel stages in: A row-major or a transposed view, B
/// row-major or a transposed view (Wᵀ), at `m, k, n`; each paired with its f64 values
/// (row-major [m, k] and [k, n]). `av`, `bv` are the host values, stored in `dtype`; A's
/// storage (A's rows, or for the view Aᵀ's rows) carries one more row of `poison` after
/// the view, so the range pass must mask what lies past the view's last element.
#[allow(clippy::type_complexity)]
fn scaled_operands(
    gpu: &Gpu,
    (m, k, n): (usize, usize, usize),
    av: &[f32],
    bv: &[f32],
    dtype: DType,
    poison: f32,
) -> Vec<(String, Tensor, Tensor)> {
    let mut a_full = av.to_vec();
    a_full.extend(std::iter::repeat_n(poison, k));
    let a = Tensor::from_f32(gpu, &a_full, &[m + 1, k], dtype).unwrap().narrow(0, 0, m).unwrap();
    // Aᵀ stored row-major as [k + 1, m], the last row poison; A is its transposed view.
    let mut at_host: Vec<f32> = (0..k * m).map(|e| av[(e % m) * k + e / m]).collect();
    at_host.extend(std::iter::repeat_n(poison, m));
    let at =
        Tensor::from_f32(gpu, &at_host, &[k + 1, m], dtype).unwrap().narrow(0, 0, k).unwrap().transpose(0, 1).unwrap();
    let b = Tensor::from_f32(gpu, bv, &[k, n], dtype).unwrap();
    let bt_host: Vec<f32> = (0..n * k).map(|i| bv[(i % k) * n + i / k]).collect();
    let bt = Tensor::from_f32(gpu, &bt_host, &[n, k], dtype).unwrap().transpose(0, 1).unwrap();
    vec![
        ("A·B".to_string(), a.clone(), b.clone()),
        ("A·Wᵀ".to_string(), a, bt.clone()),
        ("Aᵀview·B".to_string(), at.clone(), b),
        ("Aᵀview·Wᵀ".to_string(), at, bt),
    ]
}

/// `MatmulPrecision::High` in every operand layout the staging specialises on (16-byte
/// words of 4 f32 where the fast dim allows, one element otherwise; (64, 96, 80) stages
/// every operand in words, (77, 301, 45) none of A's rows in words), with a huge value
/// just past A's view in its storage, which the range pass must not count: counted, it
/// would scale A's values below f16's range and the check fails.
#[test]
fn high_precision_every_layout_and_the_range_ignores_storage_past_the_view() {
    use wgkernels::ops::matmul::{candidates_for, coop_available_for};
    use wgkernels::MatmulPrecision;
    let gpu = gpu();
    let high = MatmulPrecision::High;
    if !coop_available_for(&gpu, DType::F32, high) {
        skipped(
            "high_precision_every_layout (tensor-core part)",
            "no f16 cooperative matrices: High runs the FMA kernels here, checked at the same bound",
        );
    }
    for (i, &(m, k, n)) in [(64, 96, 80), (77, 301, 45)].iter().enumerate() {
        let av = random_vec(m * k, 200 + i as u64);
        let bv = random_vec(k * n, 210 + i as u64);
        let want = reference(
            &av.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &bv.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            1,
            false,
            false,
            m,
            k,
            n,
            None,
            Activation::None,
        );
        let (atol, rtol) = (4.0 * k as f64 * 2f64.powi(-21), 1e-5);
        let mut paths: Vec<Option<MatmulPath>> = candidates_for(&gpu, DType::F32, m, high)
            .into_iter()
            .filter(|p| matches!(p, MatmulPath::Coop(_)))
            .map(Some)
            .collect();
        paths.push(None);
        for (label, a, b) in scaled_operands(&gpu, (m, k, n), &av, &bv, DType::F32, 1e30) {
            for &path in &paths {
                let opts = MatmulOptions { path, precision: Some(high), ..Default::default() };
                let got = a.matmul_with(&b, &opts).unwrap().to_vec_f32().unwrap();
                let name = path.map_or("auto".to_string(), |p| p.name());
                assert_close(&format!("high {m}x{k}x{n} {label} {name}"), &got, &want, atol, rtol);
            }
        }
    }
}

/// bf16 on tensor cores: each operand scaled by a power of two into f16's range, where
/// bf16 values convert exactly; against f64 of the bf16 inputs at bf16's tolerance, for
/// every path (coop and FMA), every operand layout, operands of 1, of 10³⁰ and 10⁻³⁰
/// (outside f16's range, inside bf16's), and values spread over 2^20 in one operand; a
/// huge value past A's view must not count. Where the adapter has no f16 cooperative
/// matrices, the FMA paths run the same checks.
#[test]
fn bf16_matmul_on_tensor_cores_is_scaled_into_f16_range() {
    let gpu = gpu();
    if !wgkernels::ops::matmul::coop_available(&gpu, DType::BF16, false) {
        skipped(
            "bf16_matmul_on_tensor_cores (tensor-core part)",
            "no f16 cooperative matrices: only the FMA paths ran",
        );
    }
    let bf16 = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| half::bf16::from_f32(x).to_f64()).collect() };
    for (i, &(m, k, n)) in [(64, 96, 80), (77, 301, 45)].iter().enumerate() {
        for (scale_a, scale_b, spread) in [(1.0f32, 1.0f32, false), (1e30, 1e-30, false), (1.0, 1.0, true)] {
            let mut av: Vec<f32> = random_vec(m * k, 300 + i as u64).iter().map(|x| x * scale_a).collect();
            if spread {
                // Every row a different power of two, 2^-10 to 2^10: within 2^28 of the max.
                for (e, x) in av.iter_mut().enumerate() {
                    *x *= 2f32.powi((e / k % 21) as i32 - 10);
                }
            }
            let bv: Vec<f32> = random_vec(k * n, 310 + i as u64).iter().map(|x| x * scale_b).collect();
            let (a64, b64) = (bf16(&av), bf16(&bv));
            let want = reference(&a64, &b64, 1, false, false, m, k, n, None, Activation::None);
            // Per row: |a| < 2·(row scale), accumulated in f32, stored in bf16.
            let row_scale = |r: usize| scale_a as f64 * if spread { 2f64.powi((r % 21) as i32 - 10) } else { 1.0 };
            let mut paths: Vec<Option<MatmulPath>> =
                candidates(&gpu, DType::BF16, m, false).into_iter().map(Some).collect();
            paths.push(None);
            for (label, a, b) in scaled_operands(&gpu, (m, k, n), &av, &bv, DType::BF16, 1e35) {
                for &path in &paths {
                    let opts = MatmulOptions { path, out_dtype: Some(DType::F32), ..Default::default() };
                    let got = a.matmul_with(&b, &opts).unwrap().to_vec_f32().unwrap();
                    let name = path.map_or("auto".to_string(), |p| p.name());
                    for r in 0..m {
                        // f32 accumulation over k products of ≤ 4·scales each.
                        let atol = 4.0 * row_scale(r) * scale_b as f64 * k as f64 * 2f64.powi(-22);
                        assert_close(
                            &format!("bf16 {m}x{k}x{n} ×{scale_a}×{scale_b} spread {spread} {label} {name}, row {r}"),
                            &got[r * n..(r + 1) * n],
                            &want[r * n..(r + 1) * n],
                            atol,
                            1e-4, // exact products, f32 sums, an f32 result
                        );
                    }
                }
            }
        }
    }
}
