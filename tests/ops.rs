//! Element-wise ops, casts, copies of views and reductions against float64 references.

mod common;
use common::*;
use wgkernels::ops::elementwise::{BinaryOp, UnaryOp};
use wgkernels::{DType, Tensor};

/// Broadcast pairs with odd sizes that do not divide the 256-wide workgroup.
const SHAPES: &[(&[usize], &[usize])] = &[
    (&[1], &[1]),
    (&[7], &[7]),
    (&[1000], &[1]),
    (&[3, 257], &[257]),
    (&[5, 1, 13], &[1, 7, 13]),
    (&[2, 3, 4, 5, 6, 7], &[3, 1, 5, 1, 7]),
    (&[33, 65], &[33, 1]),
];

fn broadcast_ref(op: BinaryOp, a: &[f64], ash: &[usize], b: &[f64], bsh: &[usize], out: &[usize]) -> Vec<f64> {
    let expand = |sh: &[usize]| -> Vec<usize> {
        let lead = out.len() - sh.len();
        let own = strides_of(sh);
        (0..out.len()).map(|d| if d < lead || sh[d - lead] == 1 { 0 } else { own[d - lead] }).collect()
    };
    let ga = gather(a, out, &expand(ash), 0);
    let gb = gather(b, out, &expand(bsh), 0);
    ga.iter().zip(&gb).map(|(&x, &y)| op.apply_f64(x, y)).collect()
}

#[test]
fn binary_ops_broadcast_every_dtype() {
    let gpu = gpu();
    for dtype in DType::ALL {
        let (atol, rtol) = tol(dtype);
        for (k, (ash, bsh)) in SHAPES.iter().enumerate() {
            let (a, av) = random_tensor(&gpu, ash, dtype, 10 + k as u64);
            // b in [1, 5): divisors away from zero keep `div` well conditioned.
            let shifted: Vec<f32> = random_vec(bsh.iter().product(), 100 + k as u64).iter().map(|&x| x + 3.0).collect();
            let bv = rounded(&shifted, dtype);
            let b = Tensor::from_f32(&gpu, &shifted, bsh, dtype).unwrap();
            let out_shape = wgkernels::ops::elementwise::broadcast_shapes("test", ash, bsh).unwrap();
            // pow is undefined for negative bases on GPUs: give it |a|.
            let a_abs = a.abs().unwrap();
            let av_abs: Vec<f64> = av.iter().map(|x| x.abs()).collect();
            // Comparisons see both outcomes and ties: both sides on a grid of halves in [-2, 2).
            let halves = |v: Vec<f32>| -> Vec<f32> { v.iter().map(|x| (x * 2.0).floor() / 2.0).collect() };
            let ah = halves(random_vec(ash.iter().product(), 10 + k as u64));
            let bh = halves(random_vec(bsh.iter().product(), 200 + k as u64));
            let (ac, bc) =
                (Tensor::from_f32(&gpu, &ah, ash, dtype).unwrap(), Tensor::from_f32(&gpu, &bh, bsh, dtype).unwrap());
            let (acv, bcv) = (rounded(&ah, dtype), rounded(&bh, dtype));
            assert_eq!(BinaryOp::ALL.len(), 12, "every op is tested");
            for op in BinaryOp::ALL {
                let (a, av, b, bv) = match op {
                    BinaryOp::Pow => (&a_abs, &av_abs, &b, &bv),
                    _ if op.is_comparison() => (&ac, &acv, &bc, &bcv),
                    _ => (&a, &av, &b, &bv),
                };
                let got = wgkernels::ops::elementwise::binary(a, b, op).unwrap();
                assert_eq!(got.shape(), &out_shape[..]);
                assert_eq!(got.dtype(), dtype);
                let want = broadcast_ref(op, av, ash, bv, bsh, &out_shape);
                if op.is_comparison() && ash.iter().product::<usize>() > 8 {
                    // Both outcomes occur (and ties, for the grid), or the test shows nothing.
                    assert!(want.contains(&0.0) && want.contains(&1.0), "{op:?} {ash:?}: one outcome only");
                }
                assert_close(
                    &format!("{op:?} {ash:?}x{bsh:?} {dtype:?}"),
                    &got.to_vec_f32().unwrap(),
                    &want,
                    atol,
                    rtol,
                );
            }
        }
    }
}

#[test]
fn operators_on_references() {
    let gpu = gpu();
    let (a, av) = random_tensor(&gpu, &[4, 9], DType::F32, 1);
    let (b, bv) = random_tensor(&gpu, &[9], DType::F32, 2);
    let sum = (&a + &b).unwrap().to_vec_f32().unwrap();
    let prod = (&a * &b).unwrap().to_vec_f32().unwrap();
    let want_sum: Vec<f64> = (0..36).map(|i| av[i] + bv[i % 9]).collect();
    let want_prod: Vec<f64> = (0..36).map(|i| av[i] * bv[i % 9]).collect();
    assert_close("a + b", &sum, &want_sum, 1e-6, 1e-6);
    assert_close("a * b", &prod, &want_prod, 1e-6, 1e-6);
    let diff = (&a - &a).unwrap().to_vec_f32().unwrap();
    assert!(diff.iter().all(|&x| x == 0.0), "a - a must be exactly 0");
}

#[test]
fn strided_inputs_transposed_and_narrowed() {
    let gpu = gpu();
    for dtype in DType::ALL {
        let (atol, rtol) = tol(dtype);
        let shape = [6, 35, 17];
        let (x, xv) = random_tensor(&gpu, &shape, dtype, 7);
        // transpose(0, 2) then narrow the middle dim: strides (1, 17, 595), offset 3·17.
        let v = x.transpose(0, 2).unwrap().narrow(1, 3, 29).unwrap();
        assert_eq!(v.shape(), &[17, 29, 6]);
        assert!(!v.is_contiguous());
        let want = gather(&xv, &[17, 29, 6], &[1, 17, 595], 3 * 17);
        assert_close(&format!("view to_vec {dtype:?}"), &v.to_vec_f32().unwrap(), &want, 0.0, 0.0);
        let (y, yv) = random_tensor(&gpu, &[17, 29, 6], dtype, 8);
        let got = v.add(&y).unwrap();
        let want: Vec<f64> = want.iter().zip(&yv).map(|(a, b)| a + b).collect();
        assert_close(&format!("strided add {dtype:?}"), &got.to_vec_f32().unwrap(), &want, atol, rtol);
        // An odd offset into 16-bit data starts mid-word.
        let odd = x.reshape(&[6 * 35 * 17]).unwrap().narrow(0, 1, 101).unwrap();
        assert_close(
            &format!("odd offset {dtype:?}"),
            &odd.contiguous().unwrap().to_vec_f32().unwrap(),
            &xv[1..102],
            0.0,
            0.0,
        );
    }
}

#[test]
fn casts_round_to_nearest_even() {
    let gpu = gpu();
    // Include values that need rounding, ties, subnormals of f16, large and negative values.
    let mut v = random_vec(1001, 3);
    v.extend_from_slice(&[0.0, -0.0, 1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 65504.0, -3.0e-6, 1.0e30, -7.5]);
    let n = v.len();
    for from in DType::ALL {
        for to in DType::ALL {
            if from == DType::F16 || to == DType::F16 {
                // 1e30 is out of f16's range: the WGSL pack is undefined there.
                if v.iter().any(|x| x.abs() > 65504.0) {
                    let w: Vec<f32> = v.iter().map(|&x| x.clamp(-65504.0, 65504.0)).collect();
                    check_cast(&gpu, &w, from, to);
                    continue;
                }
            }
            check_cast(&gpu, &v, from, to);
        }
    }
    assert_eq!(n, 1009);
}

fn check_cast(gpu: &wgkernels::Gpu, v: &[f32], from: DType, to: DType) {
    let x = Tensor::from_f32(gpu, v, &[v.len()], from).unwrap();
    let y = x.to_dtype(to).unwrap();
    assert_eq!(y.dtype(), to);
    let stored: Vec<f32> = rounded(v, from).iter().map(|&x| x as f32).collect();
    let want = rounded(&stored, to);
    // Both 16-bit roundings are done in the shader's integer/float code (exact RNE on every
    // backend; f32_to_f16_is_bit_exact checks f16 bit by bit).
    assert_close(&format!("cast {from:?}->{to:?}"), &y.to_vec_f32().unwrap(), &want, 0.0, 0.0);
}

/// A sum over a leading dim of a view that starts inside its buffer (a narrowed, still
/// contiguous tensor): the column sums read from its offset.
#[test]
fn sum_over_a_leading_dim_of_an_offset_view() {
    let gpu = gpu();
    for dtype in DType::ALL {
        let (x, xv) = random_tensor(&gpu, &[50, 33], dtype, 12);
        let view = x.narrow(0, 7, 40).unwrap();
        let got = view.sum(0).unwrap();
        let want: Vec<f64> = (0..33).map(|i| (7..47).map(|r| xv[r * 33 + i]).sum()).collect();
        let (atol, rtol) = tol(dtype);
        assert_close(&format!("sum of rows 7..47 {dtype:?}"), &got.to_vec_f32().unwrap(), &want, atol + 4e-5, rtol);
    }
}

#[test]
fn sum_over_each_dim() {
    let gpu = gpu();
    for dtype in DType::ALL {
        let (atol, rtol) = tol(dtype);
        // Dims other than the last are summed in place (column sums in chunks of rows):
        // long K in many chunks with an odd output width, several outer rows, K < 32.
        for shape in [
            vec![1usize],
            vec![3],
            vec![1000],
            vec![4097],
            vec![7, 300],
            vec![3, 5, 257],
            vec![70000, 2],
            vec![3000, 769],
            vec![2, 3001, 5],
            vec![1, 9, 1, 4],
        ] {
            let (x, xv) = random_tensor(&gpu, &shape, dtype, 11);
            for dim in 0..shape.len() {
                let got = x.sum(dim as isize).unwrap();
                let mut out_shape = shape.clone();
                let len = out_shape.remove(dim);
                assert_eq!(got.shape(), &out_shape[..]);
                let strides = strides_of(&shape);
                let n_out: usize = out_shape.iter().product();
                let want: Vec<f64> = (0..n_out)
                    .map(|o| {
                        // Row-major index over out_shape -> base offset in x.
                        let mut rem = o;
                        let mut base = 0;
                        for d in (0..shape.len()).rev() {
                            if d == dim {
                                continue;
                            }
                            base += (rem % shape[d]) * strides[d];
                            rem /= shape[d];
                        }
                        (0..len).map(|j| xv[base + j * strides[dim]]).sum()
                    })
                    .collect();
                // Summation error grows with the row length; the result is then stored in `dtype`.
                let sum_atol = atol + 1e-6 * len as f64;
                assert_close(
                    &format!("sum {shape:?} dim {dim} {dtype:?}"),
                    &got.to_vec_f32().unwrap(),
                    &want,
                    sum_atol,
                    rtol,
                );
            }
        }
    }
}

#[test]
fn unary_ops_every_dtype() {
    let gpu = gpu();
    for dtype in DType::ALL {
        let (atol, rtol) = tol(dtype);
        // Odd length, values in [-2, 2) plus extremes that must not give NaN.
        let mut v = random_vec(1001, 21);
        v.extend_from_slice(&[0.0, 30.0, -30.0, 95.0, -95.0]);
        for op in UnaryOp::ALL {
            // Keep the inputs inside each op's domain, and exp's output inside f16's range.
            let vals: Vec<f32> = v
                .iter()
                .map(|&x| match op {
                    UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip => x.abs().min(8.0) + 0.5,
                    UnaryOp::Exp | UnaryOp::Square | UnaryOp::Sin | UnaryOp::Cos => x.clamp(-8.0, 8.0),
                    _ => x,
                })
                .collect();
            let x = Tensor::from_f32(&gpu, &vals, &[vals.len()], dtype).unwrap();
            let xv = rounded(&vals, dtype);
            let got = wgkernels::ops::elementwise::map(&x, op, dtype).unwrap();
            let want: Vec<f64> = xv.iter().map(|&x| op.apply_f64(x)).collect();
            // GPU transcendentals are allowed a few ulp; the activations use a 1.5e-7 erf.
            let (atol, rtol) = if dtype == DType::F32 { (atol * 2.0, rtol * 4.0) } else { (atol, rtol) };
            assert_close(&format!("{op:?} {dtype:?}"), &got.to_vec_f32().unwrap(), &want, atol, rtol);
        }
    }
    // The method spelling is the same op.
    let (x, xv) = random_tensor(&gpu, &[7, 3], DType::F32, 5);
    let want: Vec<f64> = xv.iter().map(|&v| UnaryOp::GeluTanh.apply_f64(v)).collect();
    assert_close("gelu_tanh()", &x.gelu_tanh().unwrap().to_vec_f32().unwrap(), &want, 2e-5, 4e-5);
    let gt = x.gt(&Tensor::zeros(&gpu, &[1], DType::F32).unwrap()).unwrap().to_vec_f32().unwrap();
    assert!(gt.iter().zip(&xv).all(|(&g, &v)| g == if v > 0.0 { 1.0 } else { 0.0 }));
}

/// f32 → f16 in the shaders (`f32_to_f16_bits`, every 16-bit store) is bit-exact
/// round-to-nearest-even, checked against the `half` crate: ties at every exponent of the
/// normal and subnormal ranges, the overflow edge, infinities, NaN, f32 subnormals, signed
/// zeros and random bit patterns.
#[test]
fn f32_to_f16_is_bit_exact() {
    let gpu = gpu();
    let mut bits: Vec<u32> = vec![0, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 1, 0x8000_0001, 0x007f_ffff];
    // 65504 (max), the tie to infinity at 65520 and its neighbours.
    bits.extend([0x477f_e000, 0x477f_efff, 0x477f_f000, 0x477f_f001, 0x4780_0000]);
    for e in 100u32..144 {
        for m in [0u32, 0x0fff, 0x1000, 0x1001, 0x2000, 0x3000, 0x7f_e000, 0x7f_f000, 0x7f_ffff, 0x55_5555] {
            bits.push((e << 23) | m);
            bits.push(0x8000_0000 | (e << 23) | m);
        }
    }
    let mut state = 0x2545_f491u32;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bits.push(state);
    }
    let v: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
    let x = Tensor::from_slice(&gpu, &v, &[v.len()]).unwrap();
    let got: Vec<half::f16> = x.to_dtype(DType::F16).unwrap().to_vec().unwrap();
    for (i, (&b, g)) in bits.iter().zip(&got).enumerate() {
        let want = half::f16::from_f32(f32::from_bits(b));
        if want.is_nan() {
            assert!(g.is_nan(), "element {i}: {b:#010x} is NaN, got {:#06x}", g.to_bits());
        } else {
            assert_eq!(g.to_bits(), want.to_bits(), "element {i}: f32 bits {b:#010x}");
        }
    }
}

/// 16-bit stores through the adapter's rounding (where the probe allowed it) and through the
/// library's routine give the same bits: softmax, LayerNorm and RMSNorm rows in units of 4
/// and of 2, on two devices that differ only in `native_f16`.
#[test]
fn native_and_library_f16_rounding_store_the_same_bits() {
    let opts = wgkernels::GpuOptions::from_env().unwrap();
    let native = wgkernels::Gpu::with_options(wgkernels::GpuOptions { native_f16: true, ..opts.clone() }).unwrap();
    let library = wgkernels::Gpu::with_options(wgkernels::GpuOptions { native_f16: false, ..opts }).unwrap();
    assert!(!library.native_f16());
    eprintln!("{}: native f16 rounding {}", native.info().name, native.native_f16());
    for n in [1000usize, 130] {
        let values = random_vec(7 * n, 81);
        let run = |gpu: &wgkernels::Gpu| -> Vec<Vec<half::f16>> {
            let x = Tensor::from_f32(gpu, &values, &[7, n], DType::F16).unwrap();
            // Small outputs too: softmax of spread-out logits is mostly f16 subnormals.
            let outs = [
                x.softmax(-1).unwrap(),
                x.layer_norm(None, None, 1e-5).unwrap(),
                x.rms_norm(None, 1e-6).unwrap(),
                x.mul_scalar(8.0).unwrap().softmax(-1).unwrap(),
            ];
            outs.iter().map(|t| t.to_vec().unwrap()).collect()
        };
        let (a, b) = (run(&native), run(&library));
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_eq!(p.to_bits(), q.to_bits(), "output {k}, n {n}, element {i}: {p} vs {q}");
            }
        }
    }
}

/// `contiguous()` of a view with its last two dims swapped runs the tiled transpose (sizes
/// that do not divide the 32×32 tile, a batch, every dtype; 16-bit with an odd row length
/// takes the element-wise copy), bit-exact against the host's transpose.
#[test]
fn transposed_views_copy_through_tiles() {
    for dtype in DType::ALL {
        for (batch, r, c) in
            [(1usize, 33usize, 65usize), (1, 64, 64), (1, 100, 6), (3, 7, 40), (2, 45, 33), (1, 2, 1000)]
        {
            let gpu = wgkernels::Gpu::new().unwrap();
            let (x, xv) = random_tensor(&gpu, &[batch, c, r], dtype, 90);
            let y = x.transpose(1, 2).unwrap().contiguous().unwrap();
            assert_eq!(y.shape(), &[batch, r, c]);
            let want: Vec<f64> =
                (0..batch * r * c).map(|e| xv[(e / (r * c)) * r * c + (e % c) * r + (e / c) % r]).collect();
            assert_close(&format!("transpose {batch}x{r}x{c} {dtype:?}"), &y.to_vec_f32().unwrap(), &want, 0.0, 0.0);
            let tiled = gpu.compiled_kernels().iter().any(|k| k.shader.name == "transpose");
            assert_eq!(tiled, dtype == DType::F32 || c % 2 == 0, "{batch}x{r}x{c} {dtype:?}: tiled kernel");
        }
        // Narrowed to rows first..first + r of l: strides [·, 1, l] (a tied embedding's rows
        // of its output projection's transposed gradient), tiled too.
        for (batch, l, first, r, c) in
            [(1usize, 70usize, 0usize, 67usize, 34usize), (2, 41, 5, 33, 8), (1, 9, 3, 2, 40)]
        {
            let gpu = wgkernels::Gpu::new().unwrap();
            let (x, xv) = random_tensor(&gpu, &[batch, c, l], dtype, 91);
            let y = x.transpose(1, 2).unwrap().narrow(1, first, r).unwrap().contiguous().unwrap();
            assert_eq!(y.shape(), &[batch, r, c]);
            let want: Vec<f64> =
                (0..batch * r * c).map(|e| xv[(e / (r * c)) * l * c + (e % c) * l + first + (e / c) % r]).collect();
            let what = format!("narrowed transpose {batch}x{l}[{first}..+{r}]x{c} {dtype:?}");
            assert_close(&what, &y.to_vec_f32().unwrap(), &want, 0.0, 0.0);
            let tiled = gpu.compiled_kernels().iter().any(|k| k.shader.name == "transpose");
            assert!(tiled, "{what}: tiled kernel");
        }
    }
}
