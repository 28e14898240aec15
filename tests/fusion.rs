//! The element-wise fusion JIT: kernel counts, agreement with the unfused path and with a
//! float64 interpreter on random graphs, structural caching, and every generated kernel
//! translated by naga.

mod common;
use common::*;
use wgkernels::ops::elementwise::{dropout_keeps, where_, BinaryOp, UnaryOp};
use wgkernels::{DType, Gpu, GpuOptions, Tensor};

fn gpu_with_fusion(on: bool) -> Gpu {
    Gpu::with_options(GpuOptions { fusion: on, ..GpuOptions::from_env().unwrap() }).unwrap()
}

#[test]
fn h_of_f_and_g_is_one_dispatch_and_a_ten_op_chain_too() {
    let gpu = gpu_with_fusion(true);
    let (x, xv) = random_tensor(&gpu, &[37, 29], DType::F32, 1);
    let (y, yv) = random_tensor(&gpu, &[37, 29], DType::F32, 2);
    let before = gpu.stats().dispatches;
    // z = h(f(x), g(y)) with f = exp, g = sigmoid, h = x·y then tanh.
    let z = x.exp().unwrap().mul(&y.sigmoid().unwrap()).unwrap().tanh().unwrap();
    assert!(z.is_pending());
    assert_eq!(gpu.stats().dispatches, before, "building the graph dispatches nothing");
    z.realize().unwrap();
    assert_eq!(gpu.stats().dispatches - before, 1, "z = h(f(x), g(y)) is one kernel");
    let want: Vec<f64> = xv.iter().zip(&yv).map(|(a, b)| (a.exp() * (1.0 / (1.0 + (-b).exp()))).tanh()).collect();
    assert_close("h(f(x), g(y))", &z.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);

    // A 10-op chain with a broadcast bias and a reused input: still one kernel.
    let (bias, bv) = random_tensor(&gpu, &[29], DType::F32, 3);
    let before = gpu.stats().dispatches;
    let mut t = x.clone();
    for _ in 0..3 {
        t = t.mul(&y).unwrap().add(&bias).unwrap().gelu_tanh().unwrap();
    }
    let t = t.add(&x).unwrap(); // 10th op: a residual
    t.realize().unwrap();
    assert_eq!(gpu.stats().dispatches - before, 1);
    let want: Vec<f64> = (0..xv.len())
        .map(|i| {
            let mut v = xv[i];
            for _ in 0..3 {
                v = UnaryOp::GeluTanh.apply_f64(v * yv[i] + bv[i % 29]);
            }
            v + xv[i]
        })
        .collect();
    assert_close("10-op chain", &t.to_vec_f32().unwrap(), &want, 1e-5, 1e-4);
}

#[test]
fn fused_agrees_with_one_kernel_per_op_and_counts_show_the_difference() {
    let chain = |gpu: &Gpu| -> (Vec<f32>, u64) {
        let (x, _) = random_tensor(gpu, &[1000], DType::F32, 4);
        let (a, _) = random_tensor(gpu, &[1000], DType::F32, 5);
        let (b, _) = random_tensor(gpu, &[1000], DType::F32, 6);
        let (c, _) = random_tensor(gpu, &[1000], DType::F32, 7);
        let before = gpu.stats().dispatches;
        // The benchmark chain: gelu(x·a + b)·c + x.
        let y = x.mul(&a).unwrap().add(&b).unwrap().gelu_tanh().unwrap().mul(&c).unwrap().add(&x).unwrap();
        y.realize().unwrap();
        let dispatched = gpu.stats().dispatches - before;
        (y.to_vec_f32().unwrap(), dispatched)
    };
    let (fused, n_fused) = chain(&gpu_with_fusion(true));
    let (unfused, n_unfused) = chain(&gpu_with_fusion(false));
    assert_eq!(n_fused, 1);
    assert_eq!(n_unfused, 5);
    let u: Vec<f64> = unfused.iter().map(|&v| v as f64).collect();
    assert_close("fused vs unfused", &fused, &u, 1e-6, 1e-6);
}

#[test]
fn kernels_are_cached_by_structure_not_size() {
    let gpu = gpu_with_fusion(true);
    let run = |n: usize| {
        let (x, _) = random_tensor(&gpu, &[n], DType::F32, 8);
        let (y, _) = random_tensor(&gpu, &[n], DType::F32, 9);
        x.add(&y).unwrap().relu().unwrap().mul(&x).unwrap().realize().unwrap();
    };
    // Both multiples of 4 (the vec4 variant) — sizes of one layout class.
    run(100);
    gpu.finish_compiles(); // with the tiered JIT, the full kernel compiles in the background
    let s0 = gpu.stats();
    run(12344);
    let s1 = gpu.stats();
    assert_eq!(s1.pipelines_compiled, s0.pipelines_compiled, "same chain, other size: no compile");
    assert!(s1.pipeline_cache_hits > s0.pipeline_cache_hits);
    assert_eq!(s1.fused_kernels, s0.fused_kernels + 1);
}

/// Tiered JIT (forced on: off by default on CPU devices): a structure not seen before runs
/// the quick kernel (one element per invocation) while the full one compiles in the
/// background; once it is ready the full kernel runs, compiling nothing more. Both agree with
/// the float64 reference and with each other, on the 16-byte path (n a multiple of 4), the
/// element path (odd n) and a 16-bit output (pairs).
#[test]
fn tiered_jit_runs_a_quick_kernel_until_the_full_one_is_compiled() {
    let gpu = Gpu::with_options(GpuOptions { fusion: true, tiered_jit: Some(true), ..GpuOptions::from_env().unwrap() })
        .unwrap();
    // A different op in each case: a structure of its own (the quick kernels of one
    // structure are the same for both layouts, so a second layout would compile one kernel).
    for (n, dtype, op) in
        [(4 * 1001, DType::F32, UnaryOp::Exp), (4001, DType::F32, UnaryOp::Sigmoid), (4001, DType::F16, UnaryOp::Tanh)]
    {
        let (x, xv) = random_tensor(&gpu, &[n], DType::F32, 30);
        let (y, yv) = random_tensor(&gpu, &[n], DType::F32, 31);
        let chain = || {
            let t = x.mul(&y).unwrap();
            let t = match op {
                UnaryOp::Exp => t.exp(),
                UnaryOp::Sigmoid => t.sigmoid(),
                _ => t.tanh(),
            };
            t.unwrap().add(&y).unwrap().gelu().unwrap().to_dtype(dtype).unwrap()
        };
        let want: Vec<f64> =
            xv.iter().zip(&yv).map(|(&a, &b)| UnaryOp::Gelu.apply_f64(op.apply_f64(a * b) + b)).collect();
        let want = if dtype == DType::F32 {
            want
        } else {
            rounded(&want.iter().map(|&v| v as f32).collect::<Vec<_>>(), dtype)
        };
        let (atol, rtol) = tol(dtype);
        let s0 = gpu.stats();
        let quick = chain().to_vec_f32().unwrap();
        gpu.finish_compiles();
        let s1 = gpu.stats();
        let what = format!("n={n} {dtype:?}");
        assert_eq!(s1.pipelines_compiled - s0.pipelines_compiled, 2, "{what}: the quick kernel and the full one");
        let full = chain().to_vec_f32().unwrap();
        let s2 = gpu.stats();
        assert_eq!(s2.pipelines_compiled, s1.pipelines_compiled, "{what}: the full kernel is compiled already");
        assert_eq!(s2.fused_kernels - s1.fused_kernels, 1, "{what}: one kernel");
        assert_close(&format!("{what} quick kernel"), &quick, &want, atol, rtol);
        assert_close(&format!("{what} full kernel"), &full, &want, atol, rtol);
        let quick64: Vec<f64> = quick.iter().map(|&v| v as f64).collect();
        assert_close(&format!("{what} full vs quick"), &full, &quick64, atol, rtol);
    }
    // Both kernels of the last structure were generated: naga translates them too.
    let fused: Vec<_> = gpu.compiled_kernels().into_iter().filter(|k| k.shader.name == "fused").collect();
    assert!(fused.len() >= 6, "{} fused kernels compiled", fused.len());
    for k in fused {
        translate(&k.wgsl(), k.entry, &k.constants()).unwrap_or_else(|e| panic!("{}: {e}", k.label()));
    }
}

#[test]
fn casts_inside_a_chain_keep_their_rounding_and_16_bit_outputs_work() {
    let gpu = gpu_with_fusion(true);
    let v: Vec<f32> = random_vec(777, 10).iter().map(|x| x * 3.0 + 1.0 / 3.0).collect();
    let x = Tensor::from_slice(&gpu, &v, &[777]).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let round_trip = x.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap().mul(&x).unwrap();
        let want: Vec<f64> = rounded(&v, dtype).iter().zip(&v).map(|(r, &x)| r * x as f64).collect();
        assert_close(&format!("cast to {dtype:?} in a chain"), &round_trip.to_vec_f32().unwrap(), &want, 1e-6, 1e-6);
        let h = x.to_dtype(dtype).unwrap().mul(&x.to_dtype(dtype).unwrap()).unwrap();
        assert_eq!(h.dtype(), dtype);
        let want: Vec<f64> = rounded(&v, dtype).iter().map(|r| r * r).collect();
        let (atol, rtol) = tol(dtype);
        assert_close(&format!("{dtype:?} output"), &h.to_vec_f32().unwrap(), &want, atol, rtol);
    }
}

/// A random graph: up to `ops` element-wise ops over a few inputs, some broadcast.
struct Graph {
    inputs: Vec<(Vec<usize>, Vec<f32>)>,
    /// (op, operand indices into the value list: inputs first, then earlier nodes)
    nodes: Vec<(Op, usize, usize)>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    U(UnaryOp),
    B(BinaryOp),
    /// A scalar op (index into SCALAR_OPS) with its constant.
    S(usize, f32),
    /// where(operand a, operand b, this third operand).
    W(usize),
    /// Dropout with p = 0.25 and this seed.
    D(u64),
}

/// The f64 meaning of the scalar methods `scalar_op` applies: add, sub, rsub, mul,
/// maximum, minimum.
const SCALAR_OPS: [fn(f64, f64) -> f64; 6] =
    [|x, c| x + c, |x, c| x - c, |x, c| c - x, |x, c| x * c, |x, c| x.max(c), |x, c| x.min(c)];

fn scalar_op(t: &Tensor, k: usize, c: f32) -> Tensor {
    match k {
        0 => t.add_scalar(c),
        1 => t.sub_scalar(c),
        2 => t.rsub_scalar(c),
        3 => t.mul_scalar(c),
        4 => t.maximum_scalar(c),
        _ => t.minimum_scalar(c),
    }
    .unwrap()
}

/// Ops that stay finite and well conditioned on values of moderate size.
const UNARY: [UnaryOp; 9] = [
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Gelu,
    UnaryOp::GeluTanh,
    UnaryOp::Silu,
    UnaryOp::Sin,
];
const BINARY: [BinaryOp; 6] =
    [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Maximum, BinaryOp::Minimum, BinaryOp::Gt];

fn random_graph(seed: u64) -> Graph {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |m: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % m as u64) as usize
    };
    let rank = 1 + next(3);
    let shape: Vec<usize> = (0..rank).map(|_| 1 + next(40)).collect();
    let n_inputs = 1 + next(4);
    let mut inputs = Vec::new();
    for k in 0..n_inputs {
        // Some inputs broadcast: size-1 dims or fewer leading dims.
        let mut sh = shape.clone();
        if k > 0 && next(2) == 0 {
            let d = next(rank);
            sh[d] = 1;
        }
        if k > 0 && rank > 1 && next(3) == 0 {
            sh.remove(0);
        }
        let numel = sh.iter().product();
        inputs.push((sh, random_vec(numel, seed * 31 + k as u64)));
    }
    let ops = 1 + next(20);
    let mut nodes = Vec::new();
    for j in 0..ops {
        let avail = n_inputs + j;
        // Lean on recent values so chains get long.
        let pick = |r: usize| avail - 1 - r % avail.min(4);
        let op = match next(8) {
            0..=2 => Op::U(UNARY[next(UNARY.len())]),
            3..=5 => Op::B(BINARY[next(BINARY.len())]),
            6 => Op::S(next(SCALAR_OPS.len()), (next(2001) as f32 - 1000.0) / 1000.0),
            _ if next(2) == 0 => Op::W(next(avail)),
            _ => Op::D(next(1 << 20) as u64),
        };
        let (a, b) = (pick(next(100)), next(avail));
        nodes.push((op, a, b));
    }
    Graph { inputs, nodes }
}

fn broadcast_to(v: &[f64], sh: &[usize], out: &[usize]) -> Vec<f64> {
    let lead = out.len() - sh.len();
    let own = strides_of(sh);
    let strides: Vec<usize> =
        (0..out.len()).map(|d| if d < lead || sh[d - lead] == 1 { 0 } else { own[d - lead] }).collect();
    gather(v, out, &strides, 0)
}

#[test]
fn random_graphs_match_a_float64_interpreter() {
    let gpu = gpu_with_fusion(true);
    // 300 graphs in f32, then 120 with every input and op in f16 or bf16 (computed in f32
    // registers by the fused kernel, rounded where stored; the 16-byte path's 8-element
    // units wherever a graph's layout allows them).
    let cases = (1..=300u64)
        .map(|s| (s, DType::F32))
        .chain((301..=420).map(|s| (s, [DType::F16, DType::BF16][s as usize % 2])));
    for (seed, dtype) in cases {
        let g = random_graph(seed);
        let round = |v: f64| round_to(v, dtype);
        let out_shape = g
            .inputs
            .iter()
            .map(|(s, _)| s.clone())
            .fold(vec![], |acc, s| wgkernels::ops::elementwise::broadcast_shapes("test", &acc, &s).unwrap());
        // GPU: the graph through the tensor API.
        let mut vals: Vec<Tensor> = g
            .inputs
            .iter()
            .map(|(s, v)| {
                let t = Tensor::from_slice(&gpu, v, s).unwrap().to_dtype(dtype).unwrap();
                t.realize().unwrap();
                t
            })
            .collect();
        // CPU: f64 over the broadcast shape, from the inputs as stored.
        let mut refs: Vec<(Vec<usize>, Vec<f64>)> =
            g.inputs.iter().map(|(s, v)| (s.clone(), v.iter().map(|&x| round(x as f64)).collect())).collect();
        for &(op, a, b) in &g.nodes {
            let (t, r) = match op {
                Op::U(u) => (wgkernels::ops::elementwise::map(&vals[a], u, dtype).unwrap(), {
                    let (sh, v) = &refs[a];
                    (sh.clone(), v.iter().map(|&x| u.apply_f64(x)).collect::<Vec<_>>())
                }),
                Op::B(bo) => {
                    let t = wgkernels::ops::elementwise::binary(&vals[a], &vals[b], bo).unwrap();
                    let sh = t.shape().to_vec();
                    let (x, y) = (broadcast_to(&refs[a].1, &refs[a].0, &sh), broadcast_to(&refs[b].1, &refs[b].0, &sh));
                    (t, (sh, x.iter().zip(&y).map(|(&x, &y)| bo.apply_f64(x, y)).collect()))
                }
                Op::S(k, c) => {
                    let (sh, v) = &refs[a];
                    (scalar_op(&vals[a], k, c), (sh.clone(), v.iter().map(|&x| SCALAR_OPS[k](x, c as f64)).collect()))
                }
                Op::W(c) => {
                    // cond = operand c, then a, else b.
                    let t = where_(&vals[c], &vals[a], &vals[b]).unwrap();
                    let sh = t.shape().to_vec();
                    let cond = broadcast_to(&refs[c].1, &refs[c].0, &sh);
                    let (x, y) = (broadcast_to(&refs[a].1, &refs[a].0, &sh), broadcast_to(&refs[b].1, &refs[b].0, &sh));
                    let v = (0..cond.len()).map(|i| if cond[i] != 0.0 { x[i] } else { y[i] }).collect();
                    (t, (sh, v))
                }
                Op::D(seed) => {
                    let (sh, v) = &refs[a];
                    let scale = (1.0 / 0.75f64) as f32 as f64;
                    let r = v
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| if dropout_keeps(0.25, seed, i as u32) { x * scale } else { 0.0 })
                        .collect();
                    (vals[a].dropout(0.25, seed).unwrap(), (sh.clone(), r))
                }
            };
            vals.push(t);
            refs.push(r);
        }
        // Keep a few intermediates held (stored as extra outputs of the same kernel), drop
        // the rest (computed in registers only).
        let n_inputs = g.inputs.len();
        let held: Vec<(usize, Tensor)> = vals
            .iter()
            .enumerate()
            .filter(|(j, _)| *j >= n_inputs && j % 4 == 1)
            .map(|(j, t)| (j, t.clone()))
            .collect();
        let last = vals.pop().unwrap();
        drop(vals);
        let (sh, want) = refs.last().unwrap();
        assert_eq!(last.shape(), sh.as_slice(), "seed {seed}");
        assert_eq!(last.dtype(), dtype, "seed {seed}");
        assert!(out_shape.iter().product::<usize>() >= last.numel(), "seed {seed}");
        // Comparisons (gt) can flip on values within rounding of each other: compare the
        // chain with a tolerance that covers ~20 ops of f32 rounding and GPU transcendentals,
        // and the one rounding of a 16-bit store.
        let (atol, rtol) = match dtype {
            DType::F32 => (1e-4, 1e-4),
            d => tol(d),
        };
        let loose = |w: f64| match dtype {
            DType::F32 => 1e-3 + 1e-3 * w.abs(),
            _ => 10.0 * (atol + rtol * w.abs()),
        };
        let got = last.to_vec_f32().unwrap();
        let flips = got.iter().zip(want).filter(|(g, w)| ((**g as f64) - **w).abs() > loose(**w)).count();
        assert!(
            flips * 100 <= got.len().max(100),
            "seed {seed}, {dtype:?}: {flips} of {} elements differ (graph {:?})",
            got.len(),
            g.nodes
        );
        if flips == 0 {
            assert_close(&format!("random graph {seed}, {dtype:?}"), &got, want, atol, rtol);
        }
        for (j, t) in held {
            let got = t.to_vec_f32().unwrap();
            let want = &refs[j].1;
            let flips = got.iter().zip(want).filter(|(g, w)| ((**g as f64) - **w).abs() > loose(**w)).count();
            assert!(flips * 100 <= got.len().max(100), "seed {seed}, held node {j}: {flips} differ");
        }
    }
    // Every kernel the fusion generated translates to every backend's language.
    let generated: Vec<_> = gpu.compiled_kernels().into_iter().filter(|k| k.shader.name == "fused").collect();
    assert!(generated.len() >= 10, "expected many distinct generated kernels, got {}", generated.len());
    let wide16 = generated.iter().filter(|k| k.wgsl().contains("array<f32, 8>")).count();
    assert!(wide16 >= 3, "expected 16-bit graphs on the 8-element 16-byte path, got {wide16} kernels");
    for k in generated {
        translate(&k.wgsl(), k.entry, &k.constants())
            .unwrap_or_else(|e| panic!("generated kernel failed: {e}\n{}", k.wgsl()));
    }
}

#[test]
fn long_accumulations_are_cut_into_bounded_kernels() {
    let gpu = gpu_with_fusion(true);
    let (x, xv) = random_tensor(&gpu, &[513], DType::F32, 11);
    let mut s = Tensor::zeros(&gpu, &[513], DType::F32).unwrap();
    let before = gpu.stats().fused_kernels;
    for _ in 0..300 {
        s = s.add(&x).unwrap();
    }
    s.realize().unwrap();
    let kernels = gpu.stats().fused_kernels - before;
    assert!((4..=6).contains(&kernels), "300 adds in chains of at most 64: {kernels} kernels");
    let want: Vec<f64> = xv.iter().map(|v| 300.0 * v).collect();
    assert_close("300 accumulated adds", &s.to_vec_f32().unwrap(), &want, 1e-4, 1e-5);
}

#[test]
fn held_intermediates_are_computed_once_and_chains_do_not_grow() {
    let gpu = gpu_with_fusion(true);
    let (x, xv) = random_tensor(&gpu, &[300], DType::F32, 12);
    // `a` is still held when `b` is realised: the same kernel stores it as a second output.
    let a = x.exp().unwrap();
    let b = a.mul(&x).unwrap();
    let before = gpu.stats().fused_kernels;
    b.realize().unwrap();
    assert_eq!(gpu.stats().fused_kernels - before, 1);
    assert!(!a.is_pending(), "the held intermediate is stored, not recomputed later");
    let before = gpu.stats().dispatches;
    let av = a.to_vec_f32().unwrap();
    assert_eq!(gpu.stats().dispatches - before, 1, "reading `a` is a copy, no recompute");
    assert_close("a", &av, &xv.iter().map(|v| v.exp()).collect::<Vec<_>>(), 1e-5, 1e-5);
    let want: Vec<f64> = xv.iter().map(|v| v.exp() * v).collect();
    assert_close("b", &b.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
    // An accumulator held across steps (like an optimizer moment) stays one step deep.
    let mut m = Tensor::zeros(&gpu, &[300], DType::F32).unwrap();
    let half = Tensor::full(&gpu, &[1], 0.5, DType::F32).unwrap();
    for _ in 0..10 {
        m = m.mul(&half).unwrap().add(&x).unwrap();
        let used = m.mul(&x).unwrap();
        let before = gpu.stats().fused_kernels;
        used.realize().unwrap();
        assert_eq!(gpu.stats().fused_kernels - before, 1, "m and its use in one kernel");
        assert!(!m.is_pending());
    }
    // 16-bit and f32 outputs from one kernel: pairs for all of them.
    let h = x.to_dtype(DType::BF16).unwrap();
    let y = h.to_dtype(DType::F32).unwrap().add(&x).unwrap();
    y.realize().unwrap();
    assert!(!h.is_pending());
    let hv = rounded(&x.to_vec_f32().unwrap(), DType::BF16);
    assert_close("bf16 side output", &h.to_vec_f32().unwrap(), &hv, 0.0, 0.0);
    let want: Vec<f64> = hv.iter().zip(&xv).map(|(a, b)| a + b).collect();
    assert_close("f32 main output", &y.to_vec_f32().unwrap(), &want, 1e-6, 1e-6);
}

#[test]
fn vec4_and_scalar_variants_agree_with_f64() {
    // n a multiple of 4 with 4-aligned contiguous f32 operands takes the 16-byte path; an odd
    // n or a view at offset 1 takes the scalar one. 16-bit operands likewise with 8 elements
    // per unit. Both, fused chain and eager single op, against f64.
    for fusion in [true, false] {
        let gpu = gpu_with_fusion(fusion);
        let (base, bv) = random_tensor(&gpu, &[4105], DType::F32, 31);
        let (other, ov) = random_tensor(&gpu, &[4105], DType::F32, 32);
        for (start, len) in [(0, 4100), (4, 4096), (0, 4099), (1, 4100), (3, 4101)] {
            let x = base.narrow(0, start, len).unwrap();
            let y = other.narrow(0, start, len).unwrap();
            let z = x.mul(&y).unwrap().add(&x).unwrap().exp().unwrap();
            let want: Vec<f64> = (start..start + len).map(|i| (bv[i] * ov[i] + bv[i]).exp()).collect();
            let what = format!("fusion {fusion}, elements {start}..{}", start + len);
            assert_close(&what, &z.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
        }
        gpu.finish_compiles(); // the tiered JIT compiles full kernels in the background
        let vec4_used = gpu.compiled_kernels().iter().any(|k| k.wgsl().contains("array<vec4<u32>>"));
        assert!(vec4_used, "fusion {fusion}: no vec4 kernel was compiled");
        // 16-bit: 8 elements per 16-byte unit where n and the offsets are multiples of 8
        // (a cast from f32 moves two words of it per unit), else the element path.
        for dtype in [DType::F16, DType::BF16] {
            let before = gpu.compiled_kernels();
            let (atol, rtol) = tol(dtype);
            let (base, bv) = random_tensor(&gpu, &[4113], dtype, 33);
            let (other, ov) = random_tensor(&gpu, &[4113], dtype, 34);
            let (wide, wv) = random_tensor(&gpu, &[4113], DType::F32, 35);
            let round = |v: f64| round_to(v, dtype);
            for (start, len) in [(0, 4104), (8, 4096), (4, 4096), (0, 4100), (3, 4101)] {
                let x = base.narrow(0, start, len).unwrap();
                let y = other.narrow(0, start, len).unwrap();
                let what = format!("fusion {fusion}, {dtype:?}, elements {start}..{}", start + len);
                let z = x.mul(&y).unwrap();
                let want: Vec<f64> = (start..start + len).map(|i| round(bv[i] * ov[i])).collect();
                assert_close(&what, &z.to_vec_f32().unwrap(), &want, atol, rtol);
                let c = wide.narrow(0, start, len).unwrap().to_dtype(dtype).unwrap();
                let want: Vec<f64> = (start..start + len).map(|i| round(wv[i])).collect();
                assert_close(&format!("{what}, cast from f32"), &c.to_vec_f32().unwrap(), &want, 0.0, 0.0);
            }
            gpu.finish_compiles();
            let eight = gpu
                .compiled_kernels()
                .iter()
                .filter(|k| !before.contains(k) && k.wgsl().contains("array<f32, 8>"))
                .count();
            assert!(
                eight >= 2,
                "fusion {fusion}, {dtype:?}: {eight} kernels on the 8-element path, expected the mul and the cast"
            );
        }
    }
}

#[test]
fn dropout_is_reproducible_fused_and_exactly_the_host_mask() {
    let (p, seed) = (0.3f32, 0x1234_5678_9abc_def0u64);
    for fusion in [true, false] {
        let gpu = gpu_with_fusion(fusion);
        // 10007 (scalar path), 10008 (the 16-byte path: 4 f32 per unit, or 8 f16) and 10004
        // in f16 (the element path, pairs): the same mask by linear index.
        for (n, dtype) in [(10007usize, DType::F32), (10008, DType::F32), (10008, DType::F16), (10004, DType::F16)] {
            let (x, xv) = random_tensor(&gpu, &[n], dtype, 1);
            let (y, yv) = random_tensor(&gpu, &[n], dtype, 2);
            let before = gpu.stats().dispatches;
            let z = x.mul(&y).unwrap().dropout(p, seed).unwrap().add(&x).unwrap();
            z.realize().unwrap();
            if fusion {
                assert_eq!(gpu.stats().dispatches - before, 1, "mul, dropout, add: one kernel");
            }
            let scale = (1.0 / (1.0 - p as f64)) as f32 as f64;
            let want: Vec<f64> = (0..n)
                .map(|i| if dropout_keeps(p, seed, i as u32) { xv[i] * yv[i] * scale } else { 0.0 } + xv[i])
                .collect();
            // f16: rounded once at the store (fused) or after each op (unfused).
            let (atol, rtol) = if dtype == DType::F32 { (1e-6, 1e-6) } else { (1e-2, 4e-3) };
            assert_close(
                &format!("dropout chain, fusion {fusion}, {dtype:?} n {n}"),
                &z.to_vec_f32().unwrap(),
                &want,
                atol,
                rtol,
            );
            // Which elements were dropped: exactly the host's mask (z = x where dropped).
            if dtype == DType::F16 {
                let got = z.to_vec_f32().unwrap();
                for i in 0..n {
                    let dropped = !dropout_keeps(p, seed, i as u32);
                    if dropped {
                        assert_eq!(got[i] as f64, xv[i], "{dtype:?} n {n}, element {i} was dropped");
                    }
                }
            }
            // The backward: the same call on the gradient zeroes the same elements.
            let g = Tensor::full(&gpu, &[n], 1.0, DType::F32).unwrap().dropout(p, seed).unwrap().to_vec_f32().unwrap();
            for (i, v) in g.iter().enumerate() {
                assert_eq!(*v != 0.0, dropout_keeps(p, seed, i as u32), "element {i}");
            }
        }
    }
}

#[test]
fn dropout_keeps_the_right_fraction_and_new_seeds_compile_nothing() {
    let gpu = gpu_with_fusion(true);
    let n = 200_000;
    let x = Tensor::full(&gpu, &[n], 1.0, DType::F32).unwrap();
    for p in [0.1f32, 0.5, 0.9] {
        let kept = x.dropout(p, 7).unwrap().to_vec_f32().unwrap().iter().filter(|v| **v != 0.0).count();
        let expect = n as f64 * (1.0 - p as f64);
        let sigma = (n as f64 * p as f64 * (1.0 - p as f64)).sqrt();
        assert!((kept as f64 - expect).abs() < 5.0 * sigma, "p {p}: kept {kept}, expected {expect:.0} ± {sigma:.0}");
    }
    let a = x.dropout(0.5, 1).unwrap().to_vec_f32().unwrap();
    gpu.finish_compiles(); // the tiered JIT compiles full kernels in the background
    let compiled = gpu.stats().pipelines_compiled;
    let b = x.dropout(0.5, 2).unwrap().to_vec_f32().unwrap();
    let a2 = x.dropout(0.5, 1).unwrap().to_vec_f32().unwrap();
    assert_eq!(gpu.stats().pipelines_compiled, compiled, "a new seed must not compile a kernel");
    assert_eq!(a, a2, "same seed, same mask");
    assert!(a.iter().zip(&b).filter(|(u, v)| u != v).count() > n / 4, "other seed, other mask");
    // 16-bit tensors: the kept values are x / (1 − p) rounded once.
    let h = Tensor::full(&gpu, &[1001], 3.0, DType::BF16).unwrap().dropout(0.25, 3).unwrap();
    for (i, v) in h.to_vec_f32().unwrap().iter().enumerate() {
        let want = if dropout_keeps(0.25, 3, i as u32) { 4.0 } else { 0.0 };
        assert_eq!(*v, want, "bf16 element {i}");
    }
    for bad in [-0.1f32, 1.0, f32::NAN] {
        let e = x.dropout(bad, 0).unwrap_err().to_string();
        assert!(e.contains("dropout") && e.contains("[0, 1)"), "{e}");
    }
}

/// f64 reference of a (batched) row-major matmul: [batch, m, k] × [k, n].
fn matmul_ref(a: &[f64], b: &[f64], batch: usize, m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                out[(z * m + i) * n + j] = (0..k).map(|p| a[(z * m + i) * k + p] * b[p * n + j]).sum();
            }
        }
    }
    out
}

fn gpu_fusion_no_autotune(on: bool) -> Gpu {
    Gpu::with_options(GpuOptions {
        fusion: on,
        autotune: false,
        fuse_matmul_epilogues: true,
        ..GpuOptions::from_env().unwrap()
    })
    .unwrap()
}

#[test]
fn a_chain_consuming_a_matmul_runs_in_its_epilogue() {
    let (batch, m, k, n) = (2, 37, 29, 23);
    let (p, seed) = (0.2f32, 9u64);
    let mut results = Vec::new();
    for fusion in [true, false] {
        let gpu = gpu_fusion_no_autotune(fusion);
        let (x, xv) = random_tensor(&gpu, &[batch, m, k], DType::F32, 1);
        let (w, wv) = random_tensor(&gpu, &[k, n], DType::F32, 2);
        let (bias, bv) = random_tensor(&gpu, &[n], DType::F32, 3);
        let (res, rv) = random_tensor(&gpu, &[batch, m, n], DType::F32, 4);
        x.realize().unwrap();
        gpu.synchronize().unwrap();
        let before = gpu.stats().dispatches;
        // bias (broadcast leaf) + gelu + residual + dropout after the matmul.
        let y =
            x.matmul(&w).unwrap().add(&bias).unwrap().gelu_tanh().unwrap().add(&res).unwrap().dropout(p, seed).unwrap();
        y.realize().unwrap();
        if fusion {
            assert!(y.shape() == [batch, m, n]);
            assert_eq!(gpu.stats().dispatches - before, 1, "matmul + bias + gelu + residual + dropout: one kernel");
        }
        let mm = matmul_ref(&xv, &wv, batch, m, k, n);
        let scale = (1.0 / (1.0 - p as f64)) as f32 as f64;
        let gelu_tanh =
            |v: f64| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
        let want: Vec<f64> = (0..mm.len())
            .map(|i| {
                let v = gelu_tanh(mm[i] + bv[i % n]) + rv[i];
                if dropout_keeps(p, seed, i as u32) {
                    v * scale
                } else {
                    0.0
                }
            })
            .collect();
        let got = y.to_vec_f32().unwrap();
        assert_close(&format!("matmul epilogue chain, fusion {fusion}"), &got, &want, 1e-4, 1e-4);
        results.push(got);
        // The generated epilogue kernels translate for every backend.
        for kern in gpu.compiled_kernels() {
            translate(&kern.wgsl(), kern.entry, &kern.constants()).unwrap_or_else(|e| panic!("{}: {e}", kern.label()));
        }
    }
    let want: Vec<f64> = results[1].iter().map(|&v| v as f64).collect();
    assert_close("epilogue-fused vs unfused", &results[0], &want, 1e-5, 1e-5);
}

#[test]
fn a_held_matmul_result_or_a_16_bit_chain_is_not_fused_but_still_right() {
    let gpu = gpu_fusion_no_autotune(true);
    let (m, k, n) = (9, 17, 13);
    let (x, xv) = random_tensor(&gpu, &[m, k], DType::F32, 1);
    let (w, wv) = random_tensor(&gpu, &[k, n], DType::F32, 2);
    let mm = matmul_ref(&xv, &wv, 1, m, k, n);
    // The matmul's own value is held by `h`: it is stored by its own kernel, then the chain.
    let h = x.matmul(&w).unwrap();
    assert!(h.is_pending(), "with fusion on a matmul waits for its consumer");
    let y = h.relu().unwrap();
    y.realize().unwrap();
    assert_close("held matmul", &h.to_vec_f32().unwrap(), &mm, 1e-5, 1e-5);
    let want: Vec<f64> = mm.iter().map(|v| v.max(0.0)).collect();
    assert_close("relu after a held matmul", &y.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
    // A 16-bit result is not the matmul's f32 store: two kernels, same values.
    let y16 = x.matmul(&w).unwrap().exp().unwrap().to_dtype(DType::F16).unwrap();
    let want: Vec<f64> = mm.iter().map(|v| half::f16::from_f64(v.exp()).to_f64()).collect();
    assert_close("f16 chain after a matmul", &y16.to_vec_f32().unwrap(), &want, 1e-3, 2e-3);
    // Two matmuls in one chain: one runs alone, the other takes the chain.
    let (w2, w2v) = random_tensor(&gpu, &[k, n], DType::F32, 3);
    let mm2 = matmul_ref(&xv, &w2v, 1, m, k, n);
    let z = x.matmul(&w).unwrap().mul(&x.matmul(&w2).unwrap()).unwrap();
    let want: Vec<f64> = mm.iter().zip(&mm2).map(|(a, b)| a * b).collect();
    assert_close("product of two matmuls", &z.to_vec_f32().unwrap(), &want, 1e-4, 1e-4);
}

#[test]
fn scalar_constants_are_runtime_params_and_where_selects() {
    for fusion in [true, false] {
        let gpu = gpu_with_fusion(fusion);
        let (x, xv) = random_tensor(&gpu, &[33, 7], DType::F32, 1);
        let (y, yv) = random_tensor(&gpu, &[7], DType::F32, 2); // broadcast over rows
        let before = gpu.stats().dispatches;
        // (x·3 − 0.5)/2, then max with 0.1, 1 − that, clamp, and where(x > y, it, y·x).
        let t = x.mul_scalar(3.0).unwrap().sub_scalar(0.5).unwrap().div_scalar(2.0).unwrap();
        let t = t.maximum_scalar(0.1).unwrap().rsub_scalar(1.0).unwrap().clamp(-0.6, 0.9).unwrap();
        let z = where_(&x.gt(&y).unwrap(), &t, &y.mul(&x).unwrap()).unwrap();
        z.realize().unwrap();
        if fusion {
            assert_eq!(gpu.stats().dispatches - before, 1, "scalars, comparison and where: one kernel");
        }
        let want: Vec<f64> = (0..xv.len())
            .map(|i| {
                let (a, b) = (xv[i], yv[i % 7]);
                let t = (1.0 - ((a * 3.0 - 0.5) / 2.0).max(0.1)).clamp(-0.6, 0.9);
                if a > b {
                    t
                } else {
                    b * a
                }
            })
            .collect();
        assert_close(&format!("scalars and where, fusion {fusion}"), &z.to_vec_f32().unwrap(), &want, 1e-6, 1e-6);
        // rdiv, pow, minimum; on bf16 storage the result is rounded once.
        let h = x.to_dtype(DType::BF16).unwrap().abs().unwrap().add_scalar(1.0).unwrap();
        let r = h.rdiv_scalar(2.0).unwrap().pow_scalar(1.5).unwrap().minimum_scalar(1.2).unwrap();
        assert_eq!(r.dtype(), DType::BF16);
        let want: Vec<f64> = xv
            .iter()
            .map(|&a| {
                let h = rounded(&[(rounded(&[a as f32], DType::BF16)[0].abs() + 1.0) as f32], DType::BF16)[0];
                (2.0 / h).powf(1.5).min(1.2)
            })
            .collect();
        let (atol, rtol) = tol(DType::BF16);
        assert_close(&format!("bf16 scalar chain, fusion {fusion}"), &r.to_vec_f32().unwrap(), &want, atol, rtol);
    }
    // Another constant reuses the compiled kernel.
    let gpu = gpu_with_fusion(true);
    let (x, _) = random_tensor(&gpu, &[100], DType::F32, 3);
    x.mul_scalar(2.0).unwrap().add_scalar(1.0).unwrap().realize().unwrap();
    gpu.finish_compiles(); // the tiered JIT compiles full kernels in the background
    let compiled = gpu.stats().pipelines_compiled;
    let v = x.mul_scalar(-7.0).unwrap().add_scalar(0.25).unwrap().to_vec_f32().unwrap();
    assert_eq!(gpu.stats().pipelines_compiled, compiled, "a new constant must not compile");
    let want: Vec<f64> = x.to_vec_f32().unwrap().iter().map(|&x| x as f64 * -7.0 + 0.25).collect();
    assert_close("new constants", &v, &want, 1e-6, 1e-6);
    // Errors.
    let (h, _) = random_tensor(&gpu, &[100], DType::F16, 4);
    assert!(where_(&x, &x, &h).unwrap_err().to_string().contains("where"));
    assert!(x.clamp(1.0, 0.0).unwrap_err().to_string().contains("clamp"));
}

#[test]
fn a_chain_producing_a_norm_input_runs_in_its_prologue() {
    use wgkernels::ops::norm::{norm_forward, RowKernel};
    let (p, seed, eps) = (0.25f32, 11u64, 1e-5f32);
    // One device per fusion setting for the ~200 cases: a device per case failed to find an
    // adapter after some dozens on the H200's driver.
    let devices = [gpu_with_fusion(true), gpu_with_fusion(false)];
    // n: odd (single elements), a subgroup-class row, even rows in and past the register class.
    for n in [7usize, 1000, 3000, 4097] {
        let rows = 5;
        let mut classes = vec![RowKernel::Auto, RowKernel::Workgroup(1), RowKernel::Workgroup(16)];
        if n <= 1024 && devices[0].has(wgkernels::wgpu::Features::SUBGROUP) {
            classes.push(RowKernel::Subgroup);
        }
        for dtype in DType::ALL {
            for rms in [false, true] {
                for &class in &classes {
                    let mut outputs = Vec::new();
                    for (gpu, fusion) in devices.iter().zip([true, false]) {
                        let (x, xv) = random_tensor(gpu, &[rows, n], dtype, 1);
                        let (a, av) = random_tensor(gpu, &[rows, n], dtype, 2);
                        let (bias, biasv) = random_tensor(gpu, &[n], dtype, 3);
                        let (w, wv) = random_tensor(gpu, &[n], dtype, 4);
                        let (b, bv) = random_tensor(gpu, &[n], dtype, 5);
                        gpu.synchronize().unwrap();
                        let before = gpu.stats().dispatches;
                        // The residual stream: h = x + dropout(a + bias), in x's dtype.
                        let h = x.add(&a.add(&bias).unwrap().dropout(p, seed).unwrap()).unwrap();
                        let y = norm_forward(
                            if rms { "rms_norm" } else { "layer_norm" },
                            &h,
                            Some(&w),
                            (!rms).then_some(&b),
                            eps,
                            rms,
                            class,
                        )
                        .unwrap();
                        y.realize().unwrap();
                        let what = format!("n {n} {dtype:?} rms {rms} {class:?} fusion {fusion}");
                        // 16-bit rows of odd length are not fused (pairs would straddle rows).
                        let fusable = dtype == DType::F32 || n % 2 == 0;
                        let limit = gpu.info().limits.max_storage_buffers_per_shader_stage;
                        if fusion && fusable && limit >= 12 {
                            assert_eq!(gpu.stats().dispatches - before, 1, "{what}: residual add + norm in one kernel");
                            assert!(!h.is_pending(), "{what}: the norm kernel stored h");
                        }
                        // h as the fused chain computes it: f32 math, rounded to the dtype once
                        // (unfused, each 16-bit intermediate is rounded too: twice the tolerance).
                        let scale = (1.0 / (1.0 - p as f64)) as f32 as f64;
                        let h32: Vec<f32> = (0..rows * n)
                            .map(|i| {
                                let d = (av[i] + biasv[i % n]) as f32 as f64;
                                let d = if dropout_keeps(p, seed, i as u32) { (d * scale) as f32 as f64 } else { 0.0 };
                                (xv[i] + d) as f32
                            })
                            .collect();
                        let hv = rounded(&h32, dtype);
                        let (atol, rtol) = tol(dtype);
                        assert_close(&format!("{what}: h"), &h.to_vec_f32().unwrap(), &hv, 2.0 * atol, 2.0 * rtol);
                        let want = norm_ref(&hv, n, Some(&wv), (!rms).then_some(&bv[..]), eps as f64, rms);
                        let got = y.to_vec_f32().unwrap();
                        assert_close(&format!("{what}: y"), &got, &want, 4.0 * atol, 4.0 * rtol);
                        outputs.push(got);
                    }
                    // Fused and unfused compute the same function (up to the 16-bit rounding
                    // of unfused intermediates, which the normalisation scales up).
                    let unfused: Vec<f64> = outputs[1].iter().map(|&v| v as f64).collect();
                    let (atol, rtol) = tol(dtype);
                    assert_close(
                        &format!("n {n} {dtype:?} rms {rms} {class:?}: fused vs unfused"),
                        &outputs[0],
                        &unfused,
                        4.0 * atol,
                        4.0 * rtol,
                    );
                }
            }
        }
    }
    // A strided input: its copy runs in the prologue and is not stored (one kernel).
    let gpu = gpu_with_fusion(true);
    let (x, xv) = random_tensor(&gpu, &[33, 6], DType::F32, 7);
    let (w, wv) = random_tensor(&gpu, &[33], DType::F32, 8);
    gpu.synchronize().unwrap();
    let before = gpu.stats().dispatches;
    let xt = x.transpose(0, 1).unwrap();
    let y = xt.rms_norm(Some(&w), eps).unwrap();
    y.realize().unwrap();
    if gpu.info().limits.max_storage_buffers_per_shader_stage >= 12 {
        assert_eq!(gpu.stats().dispatches - before, 1, "transposed input read by the norm itself");
    }
    let xtv: Vec<f64> = (0..6).flat_map(|i| (0..33).map(move |j| (i, j))).map(|(i, j)| xv[j * 6 + i]).collect();
    assert_close(
        "rms_norm of a transposed input",
        &y.to_vec_f32().unwrap(),
        &norm_ref(&xtv, 33, Some(&wv), None, eps as f64, true),
        1e-5,
        1e-5,
    );
    // Every generated prologue kernel translates for every backend.
    for kern in gpu.compiled_kernels() {
        translate(&kern.wgsl(), kern.entry, &kern.constants()).unwrap_or_else(|e| panic!("{}: {e}", kern.label()));
    }
}

/// A process that returns from `main` while the tiered JIT's worker still has compiles
/// queued exits cleanly and promptly. (Before the workers were ended at exit, the test
/// binary died with SIGSEGV after all its tests had passed, on the H200.) The child runs
/// `exit_with_background_compiles_queued` from this same binary.
#[test]
fn a_process_exits_cleanly_with_background_compiles_queued() {
    let exe = std::env::current_exe().unwrap();
    let start = std::time::Instant::now();
    let out = std::process::Command::new(exe)
        .args(["--ignored", "--exact", "exit_with_background_compiles_queued", "--test-threads=1"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child exited with {:?}:\n{text}", out.status);
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    // Generous: the exit waits for at most the compile in flight (and a software device is
    // slow), never for the whole queue.
    assert!(start.elapsed().as_secs() < 120, "the child took {:?}", start.elapsed());
}

/// Queues full kernels of several new structures (tiered JIT forced on) and returns at once.
#[test]
#[ignore = "run by a_process_exits_cleanly_with_background_compiles_queued in a child process"]
fn exit_with_background_compiles_queued() {
    let gpu = Gpu::with_options(GpuOptions { fusion: true, tiered_jit: Some(true), ..GpuOptions::from_env().unwrap() })
        .unwrap();
    let (x, _) = random_tensor(&gpu, &[4096], DType::F32, 1);
    let ops: [fn(&Tensor) -> Tensor; 4] =
        [|t| t.exp().unwrap(), |t| t.tanh().unwrap(), |t| t.sigmoid().unwrap(), |t| t.gelu().unwrap()];
    for k in 0..8usize {
        let mut t = x.mul(&x).unwrap();
        for d in 0..2 {
            t = ops[(k >> (2 * d)) % 4](&t).add(&x).unwrap();
        }
        t.realize().unwrap();
    }
    gpu.flush().unwrap();
}

/// Every shape of grid the generated kernels can be launched with (GpuOptions::fused_unroll,
/// fused_workgroup, fused_groups — the last making each workgroup stride over the grid):
/// the 16-byte path (f32, contiguous, n a multiple of 4), the strided scalar path (a
/// transposed input) and packed 16-bit outputs, at sizes that do not fill the last
/// workgroup, against f64; bad values are refused when the device is made.
#[test]
fn every_fused_grid_gives_the_same_chain() {
    // 0: auto (per path, the default).
    let mut configs: Vec<(u32, u32, u32)> = vec![(0, 0, 0), (0, 0, 5)];
    configs.extend([1, 2, 4, 8].iter().map(|&u| (u, 256, 0)));
    configs.extend([(4, 64, 0), (2, 128, 0), (4, 512, 0), (1, 1024, 0)]);
    // Capped grids: one workgroup does everything; an odd count leaves a ragged last stride.
    configs.extend([(4, 256, 1), (1, 64, 3), (2, 128, 7), (8, 512, 2)]);
    for (unroll, workgroup, groups) in configs {
        let opts = GpuOptions {
            fusion: true,
            fused_unroll: unroll,
            fused_workgroup: workgroup,
            fused_groups: groups,
            ..GpuOptions::from_env().unwrap()
        };
        let gpu = Gpu::with_options(opts).unwrap();
        let what = format!("unroll {unroll}, workgroup {workgroup}, groups {groups}");
        for n in [4100usize, 4101] {
            let (x, xv) = random_tensor(&gpu, &[n], DType::F32, 31);
            let (a, av) = random_tensor(&gpu, &[n], DType::F32, 32);
            let y = x.mul(&a).unwrap().gelu_tanh().unwrap().add(&x).unwrap();
            let want: Vec<f64> = (0..n).map(|i| UnaryOp::GeluTanh.apply_f64(xv[i] * av[i]) + xv[i]).collect();
            assert_close(&format!("{what}, n {n}"), &y.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
            let h = y.to_dtype(DType::F16).unwrap();
            let hw: Vec<f64> = want.iter().map(|&v| half::f16::from_f64(v).to_f64()).collect();
            assert_close(&format!("{what}, n {n}, f16 out"), &h.to_vec_f32().unwrap(), &hw, 1e-3, 2e-3);
        }
        let (m, mv) = random_tensor(&gpu, &[67, 61], DType::F32, 33);
        let t = m.transpose(0, 1).unwrap().exp().unwrap().mul_scalar(0.5).unwrap();
        let want: Vec<f64> = (0..61 * 67).map(|e| (mv[(e % 67) * 61 + e / 67]).exp() * 0.5).collect();
        assert_close(&format!("{what}, transposed"), &t.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
        // 16-bit dtypes: 8 elements per 16-byte unit where n is a multiple of 8 (an f32 leaf
        // or output then moves two words per unit); the element path at n = 4100.
        for (n, dtype) in [(4104usize, DType::F16), (4096, DType::BF16), (4100, DType::F16)] {
            let before = gpu.compiled_kernels();
            let (x, xv) = random_tensor(&gpu, &[n], dtype, 34);
            let (h, hv) = random_tensor(&gpu, &[n], dtype, 35);
            let (a, av) = random_tensor(&gpu, &[n], DType::F32, 36);
            let (atol, rtol) = tol(dtype);
            let round = |v: f64| round_to(v, dtype);
            let y = x.mul(&h).unwrap().gelu_tanh().unwrap().add(&x).unwrap();
            let want: Vec<f64> = (0..n).map(|i| round(UnaryOp::GeluTanh.apply_f64(xv[i] * hv[i]) + xv[i])).collect();
            assert_close(&format!("{what}, {dtype:?} n {n}"), &y.to_vec_f32().unwrap(), &want, atol, rtol);
            // A 16-bit leaf and an f32 leaf into an f32 output, and f32 leaves into a 16-bit one.
            let z = x.to_dtype(DType::F32).unwrap().mul(&a).unwrap().add(&a).unwrap();
            let want: Vec<f64> = (0..n).map(|i| xv[i] * av[i] + av[i]).collect();
            assert_close(
                &format!("{what}, {dtype:?} and f32 leaves, n {n}"),
                &z.to_vec_f32().unwrap(),
                &want,
                1e-5,
                1e-5,
            );
            let w = a.mul(&a).unwrap().sub(&a).unwrap().to_dtype(dtype).unwrap();
            let want: Vec<f64> = (0..n).map(|i| round(av[i] * av[i] - av[i])).collect();
            assert_close(
                &format!("{what}, f32 leaves to {dtype:?}, n {n}"),
                &w.to_vec_f32().unwrap(),
                &want,
                atol,
                rtol,
            );
            gpu.finish_compiles();
            let wide = gpu
                .compiled_kernels()
                .iter()
                .filter(|k| !before.contains(k))
                .filter(|k| k.wgsl().contains("array<f32, 8>"))
                .count();
            // Three structures; each kernel is built once per device, so a later case may
            // find some compiled already.
            if n % 8 == 0 && before.iter().all(|k| !k.wgsl().contains("array<f32, 8>")) {
                assert_eq!(wide, 3, "{what}, {dtype:?} n {n}: three 8-element 16-byte kernels");
            }
            if n % 8 != 0 {
                assert_eq!(wide, 0, "{what}, {dtype:?} n {n}: the element path");
            }
        }
        gpu.finish_compiles();
        for kern in gpu.compiled_kernels() {
            translate(&kern.wgsl(), kern.entry, &kern.constants()).unwrap_or_else(|e| panic!("{}: {e}", kern.label()));
        }
    }
    for (unroll, workgroup) in [(3, 256), (4, 96), (4, 2048)] {
        let opts = GpuOptions { fused_unroll: unroll, fused_workgroup: workgroup, ..GpuOptions::from_env().unwrap() };
        match Gpu::with_options(opts) {
            Err(wgkernels::Error::InvalidArgument { msg, .. }) => assert!(msg.contains("fused_"), "{msg}"),
            other => panic!("unroll {unroll}, workgroup {workgroup} must be refused, got {:?}", other.map(|_| ())),
        }
    }
}

/// A bias broadcast over rows (strides [0, 1] over the output) is read as offset + i mod N:
/// on the 16-byte path when N is a whole number of its units (4 f32 elements, 8 where a
/// dtype is 16-bit), element by element otherwise; checked against f64 in both, with the
/// kernel's WGSL showing which ran.
#[test]
fn a_row_broadcast_leaf_reads_one_row_repeated() {
    let gpu = gpu_with_fusion(true);
    for (rows, n, dtype, unit) in [
        (37, 64, DType::F32, Some(4)),
        (37, 66, DType::F32, None),
        (5, 1000, DType::F16, Some(8)),
        (5, 1004, DType::F16, None),
        (3, 8, DType::BF16, Some(8)),
    ] {
        let before = gpu.compiled_kernels();
        let (x, xv) = random_tensor(&gpu, &[rows, n], dtype, 41);
        let (b, bv) = random_tensor(&gpu, &[n], dtype, 42);
        let y = x.add(&b).unwrap().gelu_tanh().unwrap();
        let want: Vec<f64> = (0..rows * n).map(|e| UnaryOp::GeluTanh.apply_f64(xv[e] + bv[e % n])).collect();
        let (atol, rtol) = tol(dtype);
        assert_close(&format!("bias rows {rows}x{n} {dtype:?}"), &y.to_vec_f32().unwrap(), &want, atol, rtol * 2.0);
        // Kernels, not their WGSL: the tiered JIT's quick kernel and a full one of another
        // case can share the text and differ in UNROLL.
        gpu.finish_compiles();
        let new: Vec<String> =
            gpu.compiled_kernels().iter().filter(|k| !before.contains(k)).map(|k| k.wgsl()).collect();
        let rows_read = new.iter().any(|w| w.contains("% ew_params.out.dims[MAX_DIMS - 1u]"));
        assert!(rows_read, "{rows}x{n} {dtype:?}: the bias is read as a repeated row");
        let wide = [4, 8]
            .into_iter()
            .find(|e| new.iter().any(|w| w.contains(&format!("({e}u * t0) % ew_params.out.dims[MAX_DIMS - 1u]"))));
        assert_eq!(wide, unit, "{rows}x{n} {dtype:?}: elements per 16-byte unit");
    }
}

/// On a device that binds few storage buffers per stage, a chain with more inputs than one
/// kernel can bind is split (its pending operands realised first), and an op whose own
/// inputs are too many returns an `Err` naming it; the retry used to recurse without end.
#[test]
fn few_storage_buffers_split_the_chain_or_refuse_the_op() {
    let cap = |buffers: u32| {
        let limits = wgkernels::wgpu::Limits {
            max_storage_buffers_per_shader_stage: buffers,
            ..wgkernels::wgpu::Limits::unlimited()
        };
        Gpu::with_options(GpuOptions { limits_cap: Some(limits), fusion: true, ..GpuOptions::from_env().unwrap() })
            .unwrap()
    };
    // 4: a binary op's two inputs, its output and the params; a 3-input chain is split.
    let gpu = cap(4);
    assert_eq!(gpu.info().limits.max_storage_buffers_per_shader_stage, 4);
    let (a, av) = random_tensor(&gpu, &[37, 5], DType::F32, 1);
    let (b, bv) = random_tensor(&gpu, &[37, 5], DType::F32, 2);
    let (c, cv) = random_tensor(&gpu, &[37, 5], DType::F32, 3);
    let y = a.add(&b).unwrap().mul(&c).unwrap().exp().unwrap();
    let want: Vec<f64> = (0..av.len()).map(|i| ((av[i] + bv[i]) * cv[i]).exp()).collect();
    assert_close("(a + b)·c, 4 bindings", &y.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
    // where: three inputs, an output and the params cannot bind in 4.
    let cond = a.gt(&b).unwrap().realize().unwrap().clone();
    let e = where_(&cond, &b, &c).unwrap().realize().map(drop).unwrap_err();
    assert!(matches!(e, wgkernels::Error::Unsupported { op: "where", .. }), "{e}");
    assert!(e.to_string().contains("allows 4"), "{e}");
    // 3: one input and the output only; a binary op is refused, a unary one runs.
    let gpu = cap(3);
    let (a, av) = random_tensor(&gpu, &[9], DType::F32, 4);
    let (b, _) = random_tensor(&gpu, &[9], DType::F32, 5);
    let e = a.add(&b).unwrap().realize().map(drop).unwrap_err();
    assert!(matches!(e, wgkernels::Error::Unsupported { op: "add", .. }), "{e}");
    let want: Vec<f64> = av.iter().map(|x| x.exp()).collect();
    assert_close("exp, 3 bindings", &a.exp().unwrap().to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
}

/// The pipeline cache keeps at most `GpuOptions::pipeline_cache` pipelines, dropping the
/// least recently used: a process that builds ever new chains stays bounded, and a chain
/// still in use is not the one dropped.
#[test]
fn the_pipeline_cache_is_bounded_and_keeps_what_is_in_use() {
    let gpu = Gpu::with_options(GpuOptions {
        pipeline_cache: 6,
        fusion: true,
        tiered_jit: Some(false),
        ..GpuOptions::from_env().unwrap()
    })
    .unwrap();
    let (x, xv) = random_tensor(&gpu, &[33], DType::F32, 9);
    let hot = |x: &Tensor| x.exp().unwrap().mul(x).unwrap();
    hot(&x).realize().unwrap();
    // 20 chains of distinct structure (k + 1 negations), the hot one used between each.
    for k in 0..20 {
        let mut y = x.sin().unwrap();
        for _ in 0..=k {
            y = y.neg().unwrap();
        }
        let want: Vec<f64> = xv.iter().map(|v| if k % 2 == 0 { -v.sin() } else { v.sin() }).collect();
        assert_close(&format!("chain {k}"), &y.to_vec_f32().unwrap(), &want, 1e-6, 1e-6);
        let compiled = gpu.stats().pipelines_compiled;
        hot(&x).realize().unwrap();
        assert_eq!(gpu.stats().pipelines_compiled, compiled, "the chain in use was dropped (chain {k})");
        assert!(gpu.stats().pipelines_cached <= 6, "{} pipelines cached", gpu.stats().pipelines_cached);
    }
}
