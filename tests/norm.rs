//! Softmax, log-softmax, LayerNorm, RMSNorm (forward and backward) and cross-entropy
//! against float64 references, for every register class and dtype, odd and long rows,
//! masks, extremes; fused kernels against the same function from separate ops.

mod common;
use common::*;
use wgkernels::ops::norm::{norm_backward_with, norm_forward, NormGrads, RowKernel, SoftmaxOptions, VPT_CLASSES};
use wgkernels::{DType, Error, Tensor};

const NEG_INF: f64 = f64::NEG_INFINITY;

/// Row lengths from the issue: 1, 3, 127, 1000, 4097, 65537 (the last streams), and the
/// units each picks (1 element for odd n, 4 for n a multiple of 4) joined by 130 (pairs) and
/// 12000 (units of 4 streaming past the largest register class they use).
const LENGTHS: [usize; 8] = [1, 3, 127, 130, 1000, 4097, 12000, 65537];

fn rows_for(n: usize) -> usize {
    if n > 10000 {
        2
    } else {
        5
    }
}

/// Every row kernel the library can choose for rows of `n` on this adapter: auto, each
/// register class (long rows: only the largest, the others just stream more), and one
/// subgroup per row where the adapter has subgroups and the row is short.
fn kernels(gpu: &wgkernels::Gpu, n: usize) -> Vec<RowKernel> {
    let mut k = vec![RowKernel::Auto];
    k.extend(VPT_CLASSES.iter().filter(|&&v| n <= 5000 || v == 16).map(|&v| RowKernel::Workgroup(v)));
    if gpu.has(wgkernels::wgpu::Features::SUBGROUP) && n <= 5000 {
        k.push(RowKernel::Subgroup);
    }
    k
}

fn softmax_ref(x: &[f64], n: usize, log: bool) -> Vec<f64> {
    x.chunks(n)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(NEG_INF, f64::max);
            if m == NEG_INF {
                return vec![if log { NEG_INF } else { 0.0 }; n];
            }
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            row.iter().map(|v| if log { v - m - s.ln() } else { (v - m).exp() / s }).collect::<Vec<_>>()
        })
        .collect()
}

fn softmax_tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-6, 1e-4),
        d => tol(d),
    }
}

#[test]
fn softmax_and_log_softmax_every_length_dtype_and_class() {
    let gpu = gpu();
    for dtype in DType::ALL {
        let (atol, rtol) = softmax_tol(dtype);
        for (i, &n) in LENGTHS.iter().enumerate() {
            let rows = rows_for(n);
            let (x, xv) = random_tensor(&gpu, &[rows, n], dtype, 10 + i as u64);
            for log in [false, true] {
                let want = softmax_ref(&xv, n, log);
                for kernel in kernels(&gpu, n) {
                    let got = x.softmax_with(&SoftmaxOptions { log, kernel, ..Default::default() }).unwrap();
                    assert_eq!(got.shape(), &[rows, n]);
                    assert_eq!(got.dtype(), dtype);
                    let (atol, rtol) = if log { (atol * 10.0, rtol) } else { (atol, rtol) };
                    assert_close(
                        &format!("{} n={n} {dtype:?} {kernel:?}", if log { "log_softmax" } else { "softmax" }),
                        &got.to_vec_f32().unwrap(),
                        &want,
                        atol,
                        rtol,
                    );
                }
            }
        }
    }
}

#[test]
fn softmax_scale_mask_causal_match_unfused_and_reference() {
    let gpu = gpu();
    // Key lengths for each unit: 9 (odd: shifted pairs for 16-bit data, whose mask rows —
    // 5 of them — start at other parities than x's), 10 (pairs), 12 (units of 4).
    for dtype in DType::ALL {
        for sk in [9, 10, 12] {
            let (b, h, sq) = (2, 3, 5);
            let (x, xv) = random_tensor(&gpu, &[b, h, sq, sk], dtype, 1);
            let (mask, mv) = random_tensor(&gpu, &[sq, sk], dtype, 2);
            let scale = 0.37f32;
            let (atol, rtol) = if dtype == DType::F32 { (1e-6, 1e-4) } else { softmax_tol(dtype) };
            for (causal, kernel) in
                [false, true].into_iter().flat_map(|c| kernels(&gpu, sk).into_iter().map(move |k| (c, k)))
            {
                let opts =
                    SoftmaxOptions { scale: Some(scale), mask: Some(&mask), causal, kernel, ..Default::default() };
                let got = x.softmax_with(&opts).unwrap().to_vec_f32().unwrap();
                let z: Vec<f64> = (0..xv.len())
                    .map(|e| {
                        let (row, j) = (e / sk, e % sk);
                        let i = row % sq;
                        if causal && j > i + sk - sq {
                            NEG_INF
                        } else {
                            xv[e] * scale as f64 + mv[i * sk + j]
                        }
                    })
                    .collect();
                assert_close(
                    &format!("masked softmax {dtype:?} sk {sk} causal={causal} {kernel:?}"),
                    &got,
                    &softmax_ref(&z, sk, false),
                    atol,
                    rtol,
                );
                if !causal && dtype == DType::F32 {
                    // The same function from separate ops: scale and mask as element-wise kernels.
                    let s = Tensor::full(&gpu, &[1], scale, DType::F32).unwrap();
                    let unfused = x.mul(&s).unwrap().add(&mask).unwrap().softmax(-1).unwrap().to_vec_f32().unwrap();
                    let unfused: Vec<f64> = unfused.iter().map(|&v| v as f64).collect();
                    assert_close("fused vs unfused", &got, &unfused, 1e-6, 1e-5);
                }
            }
        }
    }
}

#[test]
fn softmax_extremes_and_other_dims() {
    let gpu = gpu();
    let n = 301;
    let mut v = random_vec(3 * n, 5);
    for x in &mut v[..n] {
        *x += 1e4; // a large offset: max subtraction keeps it exact
    }
    for x in &mut v[n..2 * n] {
        *x = f32::NEG_INFINITY; // an all −inf row: zeros, not NaN
    }
    v[2 * n + 7] = f32::NEG_INFINITY;
    let x = Tensor::from_slice(&gpu, &v, &[3, n]).unwrap();
    let xv: Vec<f64> = v.iter().map(|&f| f as f64).collect();
    assert_close("extremes", &x.softmax(-1).unwrap().to_vec_f32().unwrap(), &softmax_ref(&xv, n, false), 1e-6, 1e-4);
    let ls = x.log_softmax(-1).unwrap().to_vec_f32().unwrap();
    assert!(ls[n..2 * n].iter().all(|&v| v == f32::NEG_INFINITY));
    // Softmax over dim 0 through a transposed view.
    let (y, yv) = random_tensor(&gpu, &[7, 4], DType::F32, 6);
    let got = y.softmax(0).unwrap();
    assert_eq!(got.shape(), &[7, 4]);
    let cols: Vec<f64> = (0..28).map(|i| yv[(i % 7) * 4 + i / 7]).collect();
    let want_t = softmax_ref(&cols, 7, false);
    let want: Vec<f64> = (0..28).map(|i| want_t[(i % 4) * 7 + i / 4]).collect();
    assert_close("softmax dim 0", &got.to_vec_f32().unwrap(), &want, 1e-6, 1e-4);
}

#[test]
fn softmax_backward_matches_reference() {
    let gpu = gpu();
    for dtype in DType::ALL {
        for n in [1, 3, 1000, 2002, 3000, 4097, 12000] {
            let (x, _) = random_tensor(&gpu, &[4, n], dtype, 7);
            let y = x.softmax(-1).unwrap();
            let yv: Vec<f64> = y.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
            let (dy, dyv) = random_tensor(&gpu, &[4, n], dtype, 8);
            let got = y.softmax_backward(&dy).unwrap();
            let want: Vec<f64> = yv
                .chunks(n)
                .zip(dyv.chunks(n))
                .flat_map(|(yr, dr)| {
                    let dot: f64 = yr.iter().zip(dr).map(|(a, b)| a * b).sum();
                    yr.iter().zip(dr).map(move |(a, b)| a * (b - dot)).collect::<Vec<_>>()
                })
                .collect();
            let (atol, rtol) = softmax_tol(dtype);
            assert_close(
                &format!("softmax_backward n={n} {dtype:?}"),
                &got.to_vec_f32().unwrap(),
                &want,
                atol * 4.0,
                rtol,
            );
        }
    }
}

#[test]
fn layer_norm_and_rms_norm_every_length_dtype_and_class() {
    let gpu = gpu();
    let eps = 1e-5;
    for dtype in DType::ALL {
        let (atol, rtol) = tol(dtype);
        for (i, &n) in LENGTHS.iter().enumerate() {
            if n == 1 {
                continue; // variance of one element is 0: covered by the affine-free case below
            }
            let rows = rows_for(n);
            let (x, xv) = random_tensor(&gpu, &[rows, n], dtype, 20 + i as u64);
            let (w, wv) = random_tensor(&gpu, &[n], dtype, 30 + i as u64);
            let (b, bv) = random_tensor(&gpu, &[n], dtype, 40 + i as u64);
            for kernel in kernels(&gpu, n) {
                let got = norm_forward("layer_norm", &x, Some(&w), Some(&b), eps, false, kernel).unwrap();
                let want = norm_ref(&xv, n, Some(&wv), Some(&bv), eps as f64, false);
                assert_close(
                    &format!("layer_norm n={n} {dtype:?} {kernel:?}"),
                    &got.to_vec_f32().unwrap(),
                    &want,
                    atol * 20.0,
                    rtol * 4.0,
                );
                let got = norm_forward("rms_norm", &x, Some(&w), None, eps, true, kernel).unwrap();
                let want = norm_ref(&xv, n, Some(&wv), None, eps as f64, true);
                assert_close(
                    &format!("rms_norm n={n} {dtype:?} {kernel:?}"),
                    &got.to_vec_f32().unwrap(),
                    &want,
                    atol * 20.0,
                    rtol * 4.0,
                );
            }
        }
    }
    // One element per row: x − mean = 0 exactly.
    let x = Tensor::randn(&gpu, &[3, 1], DType::F32, 1).unwrap();
    assert!(x.layer_norm(None, None, eps).unwrap().to_vec_f32().unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn layer_norm_is_accurate_for_long_rows_with_a_large_mean() {
    let gpu = gpu();
    let n = 65536;
    let v: Vec<f32> = random_vec(n, 9).iter().map(|x| 1e4 + x).collect();
    let x = Tensor::from_slice(&gpu, &v, &[1, n]).unwrap();
    let xv: Vec<f64> = v.iter().map(|&f| f as f64).collect();
    let got = x.layer_norm(None, None, 1e-5).unwrap().to_vec_f32().unwrap();
    // The inputs sit 1e4 from zero with unit spread: E[x²] − E[x]² in f32 would lose every
    // digit of the variance (1e8 · 6e-8 ≈ 6 > 1); Welford/Chan keeps the output within 1e-3.
    assert_close("layer_norm mean 1e4", &got, &norm_ref(&xv, n, None, None, 1e-5, false), 1e-3, 1e-3);
}

#[test]
fn affine_norm_matches_unfused_ops() {
    let gpu = gpu();
    let (x, _) = random_tensor(&gpu, &[6, 130], DType::F32, 1);
    let (w, _) = random_tensor(&gpu, &[130], DType::F32, 2);
    let (b, _) = random_tensor(&gpu, &[130], DType::F32, 3);
    let fused = x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap().to_vec_f32().unwrap();
    let unfused = x.layer_norm(None, None, 1e-5).unwrap().mul(&w).unwrap().add(&b).unwrap().to_vec_f32().unwrap();
    assert_close("layer_norm fused affine", &fused, &unfused.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1e-5, 1e-5);
    let fused = x.rms_norm(Some(&w), 1e-5).unwrap().to_vec_f32().unwrap();
    let unfused = x.rms_norm(None, 1e-5).unwrap().mul(&w).unwrap().to_vec_f32().unwrap();
    assert_close("rms_norm fused weight", &fused, &unfused.iter().map(|&v| v as f64).collect::<Vec<_>>(), 1e-5, 1e-5);
}

/// (dx, dw, db) of LayerNorm/RMSNorm in f64.
fn norm_backward_ref(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    n: usize,
    eps: f64,
    rms: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = Vec::new();
    let (mut dw, mut db) = (vec![0.0; n], vec![0.0; n]);
    for (row, drow) in x.chunks(n).zip(dy.chunks(n)) {
        let mean = if rms { 0.0 } else { row.iter().sum::<f64>() / n as f64 };
        let rstd = 1.0 / (row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64 + eps).sqrt();
        let xh: Vec<f64> = row.iter().map(|v| (v - mean) * rstd).collect();
        let g: Vec<f64> = (0..n).map(|j| drow[j] * w[j]).collect();
        let mg = if rms { 0.0 } else { g.iter().sum::<f64>() / n as f64 };
        let mgx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / n as f64;
        for j in 0..n {
            dx.push(rstd * (g[j] - mg - xh[j] * mgx));
            dw[j] += drow[j] * xh[j];
            db[j] += drow[j];
        }
    }
    (dx, dw, db)
}

/// The ways to dw/db the library can take for rows of `n`: auto, the separate kernel, and
/// the one-pass kernel with 1 and 7 rows per workgroup (7 divides none of the row counts
/// below) where the row fits it.
fn grads_paths(n: usize) -> Vec<NormGrads> {
    let mut paths = vec![NormGrads::Auto, NormGrads::Separate];
    if n <= 4096 && (n.is_multiple_of(2) || n <= 2047) {
        paths.extend([NormGrads::InPass(1), NormGrads::InPass(7)]);
    }
    paths
}

#[test]
fn norm_backward_matches_reference() {
    let gpu = gpu();
    let eps = 1e-5;
    for dtype in DType::ALL {
        let (atol, rtol) = tol(dtype);
        // Units of 1, 2 and 4; register classes 1, 1, 1, 4, 4, 8 with a streamed tail (9000
        // in units of 4) and 16 with a streamed tail (odd 4097); many rows: dw and db summed
        // over 79 and 71 chunks of 64 rows (param_grads_sum's lanes take several each), or
        // over 5000 and 643 chunks of the one pass. Where the adapter has subgroups, rows up to
        // SG_BACKWARD_ROWS_MAX (2, 6, 8, 127 here) take backward_sg_rows under Auto and
        // Separate, and the one pass only when forced (InPass).
        for (rows, n) in
            [(3, 2), (5, 127), (130, 1000), (3, 2002), (2, 3000), (2, 9000), (2, 4097), (5000, 6), (4500, 8)]
        {
            let (x, xv) = random_tensor(&gpu, &[rows, n], dtype, 50);
            let (w, wv) = random_tensor(&gpu, &[n], dtype, 51);
            let (dy, dyv) = random_tensor(&gpu, &[rows, n], dtype, 52);
            for rms in [false, true] {
                let (dx_want, dw_want, db_want) = norm_backward_ref(&xv, &wv, &dyv, n, eps as f64, rms);
                let op = if rms { "rms_norm_backward" } else { "layer_norm_backward" };
                for path in grads_paths(n) {
                    let what = format!("{op} {rows}x{n} {dtype:?} {path:?}");
                    let g = if path == NormGrads::Auto && rms {
                        x.rms_norm_backward(Some(&w), &dy, eps).unwrap()
                    } else if path == NormGrads::Auto {
                        x.layer_norm_backward(Some(&w), &dy, eps).unwrap()
                    } else {
                        match norm_backward_with(op, &x, Some(&w), &dy, eps, rms, path) {
                            Ok(g) => g,
                            // The one pass holds a row in one workgroup's registers: 256
                            // invocations' worth, or 64's on a CPU adapter without subgroups.
                            Err(e) if matches!(path, NormGrads::InPass(_)) => {
                                let msg = e.to_string();
                                let at_most: usize = msg
                                    .split("at most ")
                                    .nth(1)
                                    .and_then(|t| t.trim_end_matches(')').parse().ok())
                                    .unwrap_or_else(|| panic!("{what}: {msg}"));
                                assert!(at_most < n && at_most >= 1024, "{what}: {msg}");
                                continue;
                            }
                            Err(e) => panic!("{what}: {e}"),
                        }
                    };
                    assert_eq!(g.dbias.is_some(), !rms, "{what}: dbias for LayerNorm only");
                    let (dx, dw, db) = (g.dx, g.dweight, g.dbias);
                    assert_close(&format!("{what} dx"), &dx.to_vec_f32().unwrap(), &dx_want, atol * 50.0, rtol * 4.0);
                    let sum_tol = atol * 50.0 * (rows as f64).sqrt();
                    let dw = dw.unwrap().to_vec_f32().unwrap();
                    assert_close(&format!("{what} dw"), &dw, &dw_want, sum_tol, rtol * 4.0);
                    if let (Some(db), false) = (db, rms) {
                        assert_close(&format!("{what} db"), &db.to_vec_f32().unwrap(), &db_want, sum_tol, rtol * 4.0);
                    }
                }
            }
            // Without a weight there is no dw or db: dx alone, whatever the path asked for.
            let g = norm_backward_with("layer_norm_backward", &x, None, &dy, eps, false, NormGrads::InPass(7))
                .unwrap_or_else(|e| panic!("{rows}x{n}: {e}"));
            let (dx, dw, db) = (g.dx, g.dweight, g.dbias);
            assert!(dw.is_none() && db.is_none());
            let ones = vec![1.0; n];
            let (dx_want, _, _) = norm_backward_ref(&xv, &ones, &dyv, n, eps as f64, false);
            assert_close(
                &format!("layer_norm_backward {rows}x{n} {dtype:?} no weight dx"),
                &dx.to_vec_f32().unwrap(),
                &dx_want,
                atol * 50.0,
                rtol * 4.0,
            );
        }
    }
}

#[test]
fn cross_entropy_loss_and_gradient() {
    let gpu = gpu();
    for dtype in DType::ALL {
        for (rows, v) in [(1, 1), (4, 3), (6, 1000), (3, 1002), (3, 50257), (2, 50260)] {
            let (x, xv) = random_tensor(&gpu, &[rows, v], dtype, 60);
            let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919 + 3) % v) as u32).collect();
            let lsm = softmax_ref(&xv, v, true);
            let loss_want: f64 = (0..rows).map(|r| -lsm[r * v + targets[r] as usize]).sum::<f64>() / rows as f64;
            let mut dl_want: Vec<f64> = lsm.iter().map(|l| l.exp() / rows as f64).collect();
            for r in 0..rows {
                dl_want[r * v + targets[r] as usize] -= 1.0 / rows as f64;
            }
            for vpt in [None, Some(1)] {
                let (loss, dlogits) = x.cross_entropy_with(&targets, vpt).unwrap();
                assert_eq!(loss.shape(), &[] as &[usize]);
                assert_close(
                    &format!("ce loss {rows}x{v} {dtype:?}"),
                    &loss.to_vec_f32().unwrap(),
                    &[loss_want],
                    1e-5,
                    1e-5,
                );
                let (atol, rtol) = softmax_tol(dtype);
                assert_close(
                    &format!("ce dlogits {rows}x{v} {dtype:?} vpt {vpt:?}"),
                    &dlogits.to_vec_f32().unwrap(),
                    &dl_want,
                    atol,
                    rtol,
                );
            }
            // Unfused: the gradient is softmax − one-hot, over rows.
            if dtype == DType::F32 {
                let mut onehot = vec![0.0f32; rows * v];
                for r in 0..rows {
                    onehot[r * v + targets[r] as usize] = 1.0;
                }
                let oh = Tensor::from_slice(&gpu, &onehot, &[rows, v]).unwrap();
                let inv = Tensor::full(&gpu, &[1], 1.0 / rows as f32, DType::F32).unwrap();
                let unfused = x.softmax(-1).unwrap().sub(&oh).unwrap().mul(&inv).unwrap();
                let (_, fused) = x.cross_entropy(&targets).unwrap();
                let u: Vec<f64> = unfused.to_vec_f32().unwrap().iter().map(|&f| f as f64).collect();
                assert_close("ce fused vs unfused", &fused.to_vec_f32().unwrap(), &u, 1e-7, 1e-5);
            }
        }
    }
}

/// Cross-entropy's forward and backward apart (autograd's path): the loss and each row's
/// log-sum-exp against f64, and the gradient times an upstream gradient (1, and loss
/// scales) in the logits' dtype; every dtype, even and odd rows (16-bit odd rows take the
/// shifted pairs and the edge join), both register classes of the forward. The backward
/// is also checked against the one-pass kernel's gradient multiplied by the same factor.
#[test]
fn cross_entropy_forward_and_backward_apart() {
    let gpu = gpu();
    for dtype in DType::ALL {
        for (rows, v) in [(1, 1), (4, 3), (5, 7), (6, 1000), (3, 1002), (3, 50257), (2, 50260)] {
            let (x, xv) = random_tensor(&gpu, &[rows, v], dtype, 62);
            let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919 + 5) % v) as u32).collect();
            let lsm = softmax_ref(&xv, v, true);
            let loss_want: f64 = (0..rows).map(|r| -lsm[r * v + targets[r] as usize]).sum::<f64>() / rows as f64;
            let lse_want: Vec<f64> = (0..rows).map(|r| xv[r * v] - lsm[r * v]).collect();
            for vpt in [None, Some(1)] {
                let (loss, lse) = x.cross_entropy_forward_with(&targets, vpt).unwrap();
                let what = format!("{rows}x{v} {dtype:?} vpt {vpt:?}");
                assert_close(&format!("ce forward loss {what}"), &loss.to_vec_f32().unwrap(), &[loss_want], 1e-5, 1e-5);
                assert_close(&format!("ce forward lse {what}"), &lse.to_vec_f32().unwrap(), &lse_want, 1e-5, 1e-5);
            }
            let (_, lse) = x.cross_entropy_forward(&targets).unwrap();
            let (atol, rtol) = softmax_tol(dtype);
            for scale in [1.0f32, -0.37, 1024.0, 65536.0] {
                let g = Tensor::full(&gpu, &[], scale, DType::F32).unwrap();
                let dl = x.cross_entropy_backward(&lse, &targets, &g).unwrap();
                assert_eq!((dl.shape(), dl.dtype()), (&[rows, v][..], dtype));
                let mut want: Vec<f64> = lsm.iter().map(|l| l.exp()).collect();
                for r in 0..rows {
                    want[r * v + targets[r] as usize] -= 1.0;
                }
                let k = scale as f64 / rows as f64;
                want.iter_mut().for_each(|w| *w *= k);
                let what = format!("ce backward {rows}x{v} {dtype:?} × {scale}");
                assert_close(&what, &dl.to_vec_f32().unwrap(), &want, atol * k.abs(), rtol);
                // Against the one-pass kernel's gradient times the same factor (f32: the
                // 16-bit one-pass gradient is rounded before it is scaled).
                if dtype == DType::F32 {
                    let (_, one_pass) = x.cross_entropy(&targets).unwrap();
                    let composed = one_pass.mul(&g).unwrap().to_vec_f32().unwrap();
                    let composed: Vec<f64> = composed.iter().map(|&f| f as f64).collect();
                    assert_close(
                        &format!("{what} vs one pass"),
                        &dl.to_vec_f32().unwrap(),
                        &composed,
                        1e-7 * k.abs(),
                        1e-5,
                    );
                }
            }
        }
    }
}

/// Cross-entropy over rows padded past their classes (the GPT's vocabulary rounded up to a
/// multiple of 64): the loss, log-sum-exp and gradient against f64 over the first `classes`
/// elements of each row, with NaN in the padding (masked before anything reads it), the
/// gradient exactly 0 there; and against the unpadded cross-entropy of the narrowed,
/// contiguous logits. Every dtype, rows of units of 4, 2 and (16-bit) odd shifted pairs.
#[test]
fn cross_entropy_over_padded_rows_ignores_the_padding() {
    let gpu = gpu();
    for dtype in DType::ALL {
        for (rows, classes, n) in [(4, 3, 64), (5, 1000, 1024), (3, 50257, 50304), (3, 5, 7), (2, 7, 8), (3, 9, 9)] {
            let xs = random_vec(rows * n, 63);
            let padded: Vec<f32> =
                xs.iter().enumerate().map(|(i, &v)| if i % n >= classes { f32::NAN } else { v }).collect();
            let x = Tensor::from_f32(&gpu, &padded, &[rows, n], dtype).unwrap();
            let xv: Vec<f64> = (0..rows).flat_map(|r| rounded(&xs[r * n..r * n + classes], dtype)).collect();
            let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919 + 5) % classes) as u32).collect();
            let lsm = softmax_ref(&xv, classes, true);
            let loss_want: f64 = (0..rows).map(|r| -lsm[r * classes + targets[r] as usize]).sum::<f64>() / rows as f64;
            let lse_want: Vec<f64> = (0..rows).map(|r| xv[r * classes] - lsm[r * classes]).collect();
            let what = format!("{rows}x{classes} of {n} {dtype:?}");
            let (loss, lse) = x.cross_entropy_forward_padded(&targets, classes).unwrap();
            assert_close(&format!("padded ce loss {what}"), &loss.to_vec_f32().unwrap(), &[loss_want], 1e-5, 1e-5);
            assert_close(&format!("padded ce lse {what}"), &lse.to_vec_f32().unwrap(), &lse_want, 1e-5, 1e-5);
            let scale = 1024.0f32;
            let g = Tensor::full(&gpu, &[], scale, DType::F32).unwrap();
            let dl = x.cross_entropy_backward_padded(&lse, &targets, &g, classes).unwrap();
            assert_eq!((dl.shape(), dl.dtype()), (&[rows, n][..], dtype));
            let k = scale as f64 / rows as f64;
            let mut want = vec![0.0f64; rows * n];
            for r in 0..rows {
                for j in 0..classes {
                    let onehot = if j == targets[r] as usize { 1.0 } else { 0.0 };
                    want[r * n + j] = (lsm[r * classes + j].exp() - onehot) * k;
                }
            }
            let (atol, rtol) = softmax_tol(dtype);
            let got = dl.to_vec_f32().unwrap();
            // The padding exactly 0 (the tolerance would pass small values there).
            for r in 0..rows {
                for j in classes..n {
                    assert_eq!(got[r * n + j], 0.0, "padded ce gradient {what}: row {r} element {j}");
                }
            }
            assert_close(&format!("padded ce backward {what}"), &got, &want, atol * k, rtol);
            // The same as the unpadded cross-entropy of the first `classes` elements.
            let narrow = x.narrow(1, 0, classes).unwrap().contiguous().unwrap();
            let (loss_u, lse_u) = narrow.cross_entropy_forward(&targets).unwrap();
            let lse_u: Vec<f64> = lse_u.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
            // Another unit width sums in another order: the last bits may differ.
            assert_close(&format!("padded vs unpadded lse {what}"), &lse.to_vec_f32().unwrap(), &lse_u, 1e-7, 1e-6);
            let loss_u = loss_u.to_vec_f32().unwrap()[0] as f64;
            assert_close(
                &format!("padded vs unpadded loss {what}"),
                &loss.to_vec_f32().unwrap(),
                &[loss_u],
                1e-7,
                1e-6,
            );
            let dl_u = narrow.cross_entropy_backward(&lse, &targets, &g).unwrap().to_vec_f32().unwrap();
            let dl_n: Vec<f64> =
                (0..rows).flat_map(|r| got[r * n..r * n + classes].iter().map(|&v| v as f64)).collect();
            assert_close(&format!("padded vs unpadded gradient {what}"), &dl_u, &dl_n, 0.0, 0.0);
        }
    }
    // Bad class counts and targets in the padding are refused.
    let x = Tensor::randn(&gpu, &[2, 8], DType::F32, 1).unwrap();
    for classes in [0, 9] {
        let e = x.cross_entropy_forward_padded(&[0, 1], classes).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { op: "cross_entropy_forward", .. }), "{classes} classes: {e}");
    }
    let e = x.cross_entropy_forward_padded(&[0, 5], 5).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "cross_entropy_forward", .. }), "target 5 of 5 classes: {e}");
    let (_, lse) = x.cross_entropy_forward_padded(&[0, 4], 5).unwrap();
    let one = Tensor::full(&gpu, &[], 1.0, DType::F32).unwrap();
    let e = x.cross_entropy_backward_padded(&lse, &[0, 6], &one, 5).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "cross_entropy_backward", .. }), "target 6 of 5 classes: {e}");
}

/// Logits far from 0 (offset by 1e4): the loss is (max − x_t) + log(sum), the two large
/// values taken off each other first; max + log(sum) − x_t lost log(sum)'s low bits at
/// 1e4's magnitude (1.4e-4 off, where f32 allows about 1e-6).
#[test]
fn cross_entropy_keeps_precision_at_large_logits() {
    let gpu = gpu();
    for (rows, v) in [(4, 1000), (3, 50257), (5, 7)] {
        let xs: Vec<f32> = random_vec(rows * v, 61).iter().map(|&x| x + 1e4).collect();
        let x = Tensor::from_slice(&gpu, &xs, &[rows, v]).unwrap();
        let xv: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919 + 3) % v) as u32).collect();
        let lsm = softmax_ref(&xv, v, true);
        let want: f64 = (0..rows).map(|r| -lsm[r * v + targets[r] as usize]).sum::<f64>() / rows as f64;
        for vpt in [None, Some(1)] {
            let (loss, _) = x.cross_entropy_with(&targets, vpt).unwrap();
            assert_close(
                &format!("ce loss at 1e4, {rows}x{v} vpt {vpt:?}"),
                &loss.to_vec_f32().unwrap(),
                &[want],
                2e-6,
                2e-6,
            );
        }
    }
}

#[test]
fn norm_errors() {
    let gpu = gpu();
    let x = Tensor::randn(&gpu, &[4, 6], DType::F32, 1).unwrap();
    let w5 = Tensor::randn(&gpu, &[5], DType::F32, 2).unwrap();
    let e = x.layer_norm(Some(&w5), None, 1e-5).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "layer_norm", .. }), "{e}");
    let e = x.rms_norm(Some(&w5), 1e-5).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "rms_norm", .. }), "{e}");
    let e = x.softmax(2).unwrap_err();
    assert!(matches!(e, Error::AxisOutOfRange { op: "softmax", .. }), "{e}");
    let bad_mask = Tensor::randn(&gpu, &[3, 6], DType::F32, 3).unwrap();
    let e = x.softmax_with(&SoftmaxOptions { mask: Some(&bad_mask), ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "softmax mask", .. }), "{e}");
    let tall = Tensor::randn(&gpu, &[7, 6], DType::F32, 4).unwrap();
    let e = tall.softmax_with(&SoftmaxOptions { causal: true, ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "softmax", .. }), "S_q 7 > N 6: {e}");
    let e = x.cross_entropy(&[0, 1, 2]).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "cross_entropy", .. }), "{e}");
    let e = x.cross_entropy(&[0, 1, 2, 6]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "cross_entropy", .. }), "{e}");
    let e = x.cross_entropy_forward(&[0, 1, 2]).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "cross_entropy_forward", .. }), "{e}");
    let (_, lse) = x.cross_entropy_forward(&[0, 1, 2, 5]).unwrap();
    let one = Tensor::full(&gpu, &[], 1.0, DType::F32).unwrap();
    let e = x.cross_entropy_backward(&lse, &[0, 1, 2, 6], &one).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "cross_entropy_backward", .. }), "target 6: {e}");
    let e = x.cross_entropy_backward(&lse.to_dtype(DType::F16).unwrap(), &[0, 1, 2, 5], &one).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "cross_entropy_backward", .. }), "f16 lse: {e}");
    let e = x.cross_entropy_backward(&one, &[0, 1, 2, 5], &one).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "cross_entropy_backward", .. }), "lse []: {e}");
    let e = x.cross_entropy_backward(&lse, &[0, 1, 2, 5], &lse).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "cross_entropy_backward", .. }), "grad of 4: {e}");
    let dy = Tensor::randn(&gpu, &[4, 5], DType::F32, 5).unwrap();
    let e = x.layer_norm_backward(None, &dy, 1e-5).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "layer_norm_backward", .. }), "{e}");
    let dy6 = Tensor::randn(&gpu, &[4, 6], DType::F32, 5).unwrap();
    let w6 = Tensor::randn(&gpu, &[6], DType::F32, 2).unwrap();
    let e =
        norm_backward_with("layer_norm_backward", &x, Some(&w6), &dy6, 1e-5, false, NormGrads::InPass(0)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "layer_norm_backward", .. }), "{e}");
    let long = Tensor::randn(&gpu, &[2, 9000], DType::F32, 7).unwrap();
    let w_long = Tensor::randn(&gpu, &[9000], DType::F32, 8).unwrap();
    let e = norm_backward_with("rms_norm_backward", &long, Some(&w_long), &long, 1e-5, true, NormGrads::InPass(4))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "rms_norm_backward", .. }), "rows of 9000 in one pass: {e}");
    let dyh = Tensor::randn(&gpu, &[4, 6], DType::F16, 6).unwrap();
    let e = x.softmax_backward(&dyh).unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { op: "softmax_backward", .. }), "{e}");
    // Zero-size rows are not an error (tests/tensor.rs, zero_size_tensors_follow_one_rule).
    let empty = Tensor::zeros(&gpu, &[0, 6], DType::F32).unwrap();
    assert_eq!(empty.softmax(-1).unwrap().shape(), &[0, 6]);
    let e = x.softmax_with(&SoftmaxOptions { kernel: RowKernel::Workgroup(3), ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "softmax", .. }), "{e}");
}

/// The unit each row length gets (what LENGTHS relies on to cover every unit class): the
/// kernels compiled for a softmax and a LayerNorm of rows of n declare their buffers as
/// arrays of wide words exactly when n is a multiple of 4 (f32 softmax: pairs); odd rows of
/// 16-bit data go to the softmax kernels as shifted pairs, with their leftovers joined by a
/// second kernel.
#[test]
fn each_row_length_gets_its_unit() {
    use wgkernels::ops::norm::{NORM, SOFTMAX};
    for dtype in DType::ALL {
        for n in [1000usize, 130, 127] {
            let gpu = wgkernels::Gpu::new().unwrap();
            let (x, _) = random_tensor(&gpu, &[3, n], dtype, 70);
            x.softmax_with(&SoftmaxOptions { kernel: RowKernel::Workgroup(1), ..Default::default() }).unwrap();
            norm_forward("layer_norm", &x, None, None, 1e-5, false, RowKernel::Workgroup(1)).unwrap();
            let wide = n % 4 == 0;
            let odd_pairs = n % 2 == 1 && dtype != DType::F32;
            let word = if dtype == DType::F32 { "array<vec4<u32>>" } else { "array<vec2<u32>>" };
            let kernels = gpu.compiled_kernels();
            for k in &kernels {
                let unit = match k.shader {
                    s if s == &SOFTMAX && wide && dtype == DType::F32 => 2,
                    _ if wide => 4,
                    s if s == &SOFTMAX && odd_pairs => 2,
                    _ if n % 2 == 0 => 2,
                    _ => 1,
                };
                if k.shader == &SOFTMAX || k.shader == &NORM {
                    let src = k.wgsl();
                    assert_eq!(src.contains(word), unit == 4, "{} for n {n} {dtype:?}", k.label());
                    assert!(
                        src.contains(&format!("const UNIT: u32 = {unit}u;")),
                        "{} for n {n}: unit {unit}",
                        k.label()
                    );
                }
            }
            let joined = kernels.iter().any(|k| k.entry == "join_edges");
            assert_eq!(joined, odd_pairs, "n {n} {dtype:?}: join_edges compiled");
        }
    }
}

/// A negative, infinite or NaN eps is refused by every norm (LayerNorm with eps −1 turned
/// rows of near-equal values into NaNs), as the optimizers refuse theirs.
#[test]
fn bad_eps_is_refused() {
    let gpu = gpu();
    let x = Tensor::from_slice(&gpu, &[1.0f32, 1.1, 0.9, 1.0], &[1, 4]).unwrap();
    let dy = Tensor::randn(&gpu, &[1, 4], DType::F32, 1).unwrap();
    for eps in [-1.0f32, f32::NAN, f32::INFINITY, -1e-12] {
        let e = x.layer_norm(None, None, eps).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { op: "layer_norm", .. }), "{eps}: {e}");
        let e = x.rms_norm(None, eps).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { op: "rms_norm", .. }), "{eps}: {e}");
        let e = x.layer_norm_backward(None, &dy, eps).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { op: "layer_norm_backward", .. }), "{eps}: {e}");
        let e = x.rms_norm_backward(None, &dy, eps).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { op: "rms_norm_backward", .. }), "{eps}: {e}");
    }
    // eps 0 is allowed (rows that are not constant stay finite).
    assert!(x.layer_norm(None, None, 0.0).unwrap().to_vec_f32().unwrap().iter().all(|v| v.is_finite()));
}
