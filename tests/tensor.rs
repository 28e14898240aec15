//! Tensor creation, views, dtypes, memory accounting, errors, profiler.

mod common;
use common::*;
use wgkernels::{bf16, f16, DType, Error, Gpu, Profiler, Tensor};

#[test]
fn from_slice_roundtrips_every_element_type() {
    let gpu = gpu();
    let v = random_vec(37, 1);
    let t = Tensor::from_slice(&gpu, &v, &[37]).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), v);
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    assert_eq!(Tensor::from_slice(&gpu, &h, &[37]).unwrap().to_vec::<f16>().unwrap(), h);
    let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    let tb = Tensor::from_slice(&gpu, &b, &[37]).unwrap();
    assert_eq!(tb.dtype(), DType::BF16);
    assert_eq!(tb.to_vec::<bf16>().unwrap(), b);
}

#[test]
fn zeros_full_and_seeded_random() {
    let gpu = gpu();
    for dtype in DType::ALL {
        assert!(Tensor::zeros(&gpu, &[5, 3], dtype).unwrap().to_vec_f32().unwrap().iter().all(|&x| x == 0.0));
        assert!(Tensor::full(&gpu, &[7], 2.5, dtype).unwrap().to_vec_f32().unwrap().iter().all(|&x| x == 2.5));
    }
    let a = Tensor::randn(&gpu, &[10000], DType::F32, 5).unwrap().to_vec_f32().unwrap();
    let b = Tensor::randn(&gpu, &[10000], DType::F32, 5).unwrap().to_vec_f32().unwrap();
    let c = Tensor::randn(&gpu, &[10000], DType::F32, 6).unwrap().to_vec_f32().unwrap();
    assert_eq!(a, b, "same seed, same values");
    assert_ne!(a, c, "another seed, other values");
    let mean = a.iter().map(|&x| x as f64).sum::<f64>() / 1e4;
    let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / 1e4;
    assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "randn mean {mean} var {var}");
    let u = Tensor::rand(&gpu, &[10000], DType::F32, 5).unwrap().to_vec_f32().unwrap();
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = u.iter().map(|&x| x as f64).sum::<f64>() / 1e4;
    assert!((mean - 0.5).abs() < 0.02, "rand mean {mean}");
}

#[test]
fn views_share_storage_and_contiguous_materialises() {
    let gpu = gpu();
    let (x, xv) = random_tensor(&gpu, &[4, 6, 5], DType::F32, 2);
    let p = x.permute(&[2, 0, 1]).unwrap();
    assert!(p.shares_storage(&x));
    assert_eq!(p.shape(), &[5, 4, 6]);
    assert_eq!(p.strides(), &[1, 30, 5]);
    let c = p.contiguous().unwrap();
    assert!(!c.shares_storage(&x) && c.is_contiguous());
    assert_close("permute", &c.to_vec_f32().unwrap(), &gather(&xv, &[5, 4, 6], &[1, 30, 5], 0), 0.0, 0.0);
    // reshape of a contiguous tensor is a view; of a permuted one, a copy.
    let r = x.reshape(&[24, 5]).unwrap();
    assert!(r.shares_storage(&x));
    let r2 = p.reshape(&[20, 6]).unwrap();
    assert!(!r2.shares_storage(&x));
    assert_close("reshape copy", &r2.to_vec_f32().unwrap(), &gather(&xv, &[5, 4, 6], &[1, 30, 5], 0), 0.0, 0.0);
    // expand: stride 0, values repeated.
    let (row, rv) = random_tensor(&gpu, &[1, 5], DType::F32, 3);
    let e = row.expand(&[3, 4, 5]).unwrap();
    assert_eq!(e.strides(), &[0, 0, 1]);
    let want: Vec<f64> = (0..60).map(|i| rv[i % 5]).collect();
    assert_close("expand", &e.to_vec_f32().unwrap(), &want, 0.0, 0.0);
    // unsqueeze + narrow.
    let n = x.narrow(-1, 1, 3).unwrap().unsqueeze(0).unwrap();
    assert_eq!(n.shape(), &[1, 4, 6, 3]);
    assert_close("narrow", &n.to_vec_f32().unwrap(), &gather(&xv, &[4, 6, 3], &[30, 5, 1], 1), 0.0, 0.0);
}

#[test]
fn tensors_are_send_sync_and_usable_from_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tensor>();
    assert_send_sync::<Gpu>();
    let gpu = gpu();
    let handles: Vec<_> = (0..4)
        .map(|k| {
            let gpu = gpu.clone();
            std::thread::spawn(move || {
                let (a, av) = random_tensor(&gpu, &[100 + k], DType::F32, k as u64);
                let got = a.add(&a).unwrap().to_vec_f32().unwrap();
                let want: Vec<f64> = av.iter().map(|x| 2.0 * x).collect();
                assert_close("thread add", &got, &want, 0.0, 0.0);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn memory_is_accounted_and_does_not_grow() {
    // A device of its own: the accounting must not see other tests' tensors.
    let gpu = Gpu::new().unwrap();
    assert_eq!(gpu.memory().live_bytes, 0);
    let a = Tensor::rand(&gpu, &[1000], DType::F32, 1).unwrap();
    let live = gpu.memory().live_bytes;
    assert!(live >= 4000, "live {live}");
    drop(a);
    assert_eq!(gpu.memory().live_bytes, 0);
    let (x, xv) = random_tensor(&gpu, &[3, 333], DType::F32, 2);
    let before = {
        let y = x.add(&x).unwrap().sum(-1).unwrap();
        drop(y);
        gpu.memory()
    };
    let created = gpu.stats().buffers_created;
    for _ in 0..1000 {
        let y = x.add(&x).unwrap();
        let s = y.sum(-1).unwrap();
        drop((y, s));
    }
    assert_eq!(gpu.stats().buffers_created, created, "a loop of the same ops reuses pooled buffers");
    let after = gpu.memory();
    assert_eq!(after.live_bytes, before.live_bytes, "live bytes grew: {before:?} -> {after:?}");
    assert_eq!(after.pool_bytes, before.pool_bytes, "pool grew: {before:?} -> {after:?}");
    gpu.reset_peak();
    assert_eq!(gpu.memory().peak_live_bytes, gpu.memory().live_bytes);
    gpu.empty_cache();
    assert_eq!(gpu.memory().pool_bytes, 0);
    let created = gpu.stats().buffers_created;
    // The same kernels right after the pool's buffers (and the bind groups cached on them)
    // were freed: new buffers, new bind groups, right values.
    for _ in 0..3 {
        let want: Vec<f64> = xv.iter().map(|v| 2.0 * v).collect();
        assert_close("x + x after empty_cache", &x.add(&x).unwrap().to_vec_f32().unwrap(), &want, 0.0, 0.0);
        gpu.empty_cache();
    }
    assert!(gpu.stats().buffers_created > created, "an emptied pool creates buffers again");
}

#[test]
fn bad_inputs_return_errors_naming_the_op() {
    // A device of its own, so that the command counter sees only this test.
    let gpu = Gpu::new().unwrap();
    let a = Tensor::zeros(&gpu, &[2, 3], DType::F32).unwrap();
    let b = Tensor::zeros(&gpu, &[4, 3], DType::F32).unwrap();
    let h = Tensor::zeros(&gpu, &[2, 3], DType::F16).unwrap();
    let dispatched = gpu.stats().dispatches;

    let e = a.add(&b).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "add", .. }), "{e}");
    assert!(e.to_string().contains("[2, 3]") && e.to_string().contains("[4, 3]"), "{e}");
    let e = a.mul(&h).unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { op: "mul", lhs: DType::F32, rhs: DType::F16 }), "{e}");
    let e = a.sum(2).unwrap_err();
    assert!(matches!(e, Error::AxisOutOfRange { op: "sum", axis: 2, rank: 2, .. }), "{e}");
    let e = a.transpose(0, -3).unwrap_err();
    assert!(matches!(e, Error::AxisOutOfRange { op: "transpose", .. }), "{e}");
    let e = Tensor::from_slice(&gpu, &[1.0f32; 5], &[2, 3]).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "from_slice", .. }), "{e}");
    let e = a.reshape(&[7]).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "reshape", .. }), "{e}");
    let e = a.narrow(1, 2, 2).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "narrow", .. }), "{e}");
    let e = a.permute(&[0, 0]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "permute", .. }), "{e}");
    let e = a.expand(&[2, 4]).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "expand", .. }), "{e}");
    let limit = gpu.info().limits.max_storage_buffer_binding_size as usize;
    let e = Tensor::zeros(&gpu, &[limit / 4 + 1, 2], DType::F32).unwrap_err();
    assert!(matches!(e, Error::TooLarge { op: "zeros", .. }), "{e}");
    assert_eq!(gpu.stats().dispatches, dispatched, "a refused op must not dispatch");
    // A feature the adapter lacks: the subgroup-per-row kernel where there are no subgroups
    // (GL in CI); where there are, the forced kernel must simply work.
    let forced = wgkernels::ops::norm::SoftmaxOptions {
        kernel: wgkernels::ops::norm::RowKernel::Subgroup,
        ..Default::default()
    };
    if gpu.has(wgkernels::wgpu::Features::SUBGROUP) {
        assert!(a.softmax_with(&forced).is_ok());
    } else {
        let e = a.softmax_with(&forced).unwrap_err();
        assert!(matches!(e, Error::MissingFeature { op: "softmax", feature: "SUBGROUP", .. }), "{e}");
        assert_eq!(gpu.stats().dispatches, dispatched, "a refused op must not dispatch");
    }
}

#[test]
fn empty_tensors_are_allowed_where_well_defined() {
    let gpu = gpu();
    let e = Tensor::zeros(&gpu, &[0, 3], DType::F32).unwrap();
    assert_eq!(e.add(&e).unwrap().shape(), &[0, 3]);
    assert!(e.to_vec::<f32>().unwrap().is_empty());
}

#[test]
fn pipelines_are_cached() {
    // A device of its own: the shared one's counters also count other tests' compiles.
    let gpu = Gpu::new().unwrap();
    let (a, _) = random_tensor(&gpu, &[17], DType::F32, 1);
    a.maximum(&a).unwrap().realize().unwrap();
    gpu.finish_compiles(); // the tiered JIT compiles full kernels in the background
    let s0 = gpu.stats();
    a.maximum(&a).unwrap().realize().unwrap();
    let s1 = gpu.stats();
    assert_eq!(s1.pipelines_compiled, s0.pipelines_compiled, "second launch must not compile");
    assert!(s1.pipeline_cache_hits > s0.pipeline_cache_hits);
}

#[test]
fn profiler_names_every_dispatch() {
    let gpu = Gpu::new().unwrap();
    let (a, _) = random_tensor(&gpu, &[256, 100], DType::F32, 1);
    let profile = Profiler::start(&gpu).unwrap();
    assert!(Profiler::start(&gpu).is_err(), "one profile at a time");
    let y = a.add(&a).unwrap();
    let _s = y.sum(-1).unwrap();
    let report = profile.finish().unwrap();
    let names: Vec<&str> = report.kernels.iter().map(|k| k.name.as_str()).collect();
    // Element-wise work, fused or not, runs in the `fused` family's kernels, labelled with
    // their ops.
    assert_eq!(names, ["fused:main[add]", "reduce:sum_rows"]);
    assert!(report.kernels.iter().all(|k| k.ms >= 0.0 && k.ms.is_finite()));
    assert_eq!(report.timestamps, gpu.has(wgkernels::wgpu::Features::TIMESTAMP_QUERY));
    assert!(report.to_string().contains("reduce:sum_rows"));
    // Each dispatch keeps its grid; grouping by kernel and grid accounts for every dispatch.
    assert!(report.kernels.iter().all(|k| k.grid.iter().all(|&g| g >= 1)), "{:?}", report.kernels);
    let groups = report.by_kernel_and_grid();
    assert_eq!(groups.iter().map(|g| g.1).sum::<usize>(), report.kernels.len());
    let grouped_ms: f64 = groups.iter().map(|g| g.2).sum();
    assert!((grouped_ms - report.total_ms()).abs() <= 1e-9 * report.total_ms().max(1.0));
}

/// A profile longer than one query set (2048 timed dispatches) times every dispatch: a
/// decode loop issues thousands.
#[test]
fn profiler_times_more_dispatches_than_one_query_set() {
    let gpu = Gpu::new().unwrap();
    let (a, _) = random_tensor(&gpu, &[64], DType::F32, 2);
    let profile = Profiler::start(&gpu).unwrap();
    let n = 4100;
    for i in 0..n {
        a.sum(-1).unwrap().realize().unwrap();
        if i % 512 == 0 {
            gpu.synchronize().unwrap();
        }
    }
    let report = profile.finish().unwrap();
    assert_eq!((report.kernels.len(), report.untimed), (n, 0));
    assert!(report.kernels.iter().all(|k| k.name == "reduce:sum_rows" && k.ms >= 0.0 && k.ms.is_finite()));
    if report.timestamps {
        // Sets 2 and 3 resolved after set 1: a misplaced resolve reads zeros.
        let timed = report.kernels[2048..].iter().filter(|k| k.ms > 0.0).count();
        assert!(timed > 0, "the dispatches past the first set all read 0 ms");
    }
}

/// After the host waits for the GPU (which is then idle) work is submitted in batches
/// growing from `first_submit` dispatches (4, 8, 16, ... up to 64), so that the GPU starts
/// while the host records the rest; 64 batches by 64 throughout; out-of-range values are
/// refused. Each wait is counted.
#[test]
fn submits_start_small_after_a_wait_and_grow() {
    let opts = |first_submit| wgkernels::GpuOptions { first_submit, ..wgkernels::GpuOptions::from_env().unwrap() };
    for (first, submits) in [(4, 2), (1, 3), (64, 0)] {
        let gpu = Gpu::with_options(opts(first)).unwrap();
        let (a, _) = random_tensor(&gpu, &[64], DType::F32, 3);
        a.sum(-1).unwrap().realize().unwrap();
        gpu.synchronize().unwrap();
        let s0 = gpu.stats();
        // 12 dispatches: submitted after 4 and 4 + 8 (first 4); after 1, 1 + 2, 1 + 2 + 4 (first 1).
        for _ in 0..12 {
            a.sum(-1).unwrap().realize().unwrap();
        }
        let s1 = gpu.stats();
        assert_eq!(s1.dispatches - s0.dispatches, 12);
        assert_eq!(s1.submits - s0.submits, submits, "first_submit {first}: submits during 12 dispatches");
        assert_eq!(s1.host_waits, s0.host_waits);
        a.sum(-1).unwrap().to_vec_f32().unwrap();
        assert_eq!(gpu.stats().host_waits, s0.host_waits + 1, "a read-back waits once");
    }
    for bad in [0, 65] {
        let Err(e) = Gpu::with_options(opts(bad)) else { panic!("first_submit {bad} accepted") };
        assert!(matches!(e, Error::InvalidArgument { op: "Gpu::new", .. }), "{bad}: {e}");
    }
}

#[test]
fn info_describes_the_adapter() {
    let gpu = gpu();
    let info = gpu.info();
    assert!(!info.name.is_empty());
    assert!(!info.candidates.is_empty());
    let text = info.to_string();
    assert!(text.contains(&info.name) && text.contains("coop-mat"), "{text}");
    // CI runs the suite per backend: make sure the one asked for is the one tested.
    if let Ok(want) = std::env::var("WGK_BACKEND") {
        assert!(
            format!("{:?}", info.backend).to_lowercase().starts_with(&want.to_lowercase()),
            "asked for {want}, got {:?}",
            info.backend
        );
    }
}

#[test]
fn casts_to_16_bit_round_to_nearest_even_bit_exactly() {
    // Ties, subnormals, the overflow boundary, signed zeros, infinities, NaN, and a sweep of
    // random bit patterns: the GPU's cast must agree with `half`'s (IEEE round to nearest
    // even) on every one, whatever the driver's own conversion does.
    let gpu = common::gpu();
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        1e9,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        6.1035156e-5,
        6.1e-5,
        5.9604645e-8,
        2.9802322e-8,
        2.9802326e-8,
        8.940697e-8,
        1e-10,
        -3.0e-6,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        1.0 + 1.0 / 4096.0,
        2049.0,
        2051.0,
        4097.0,
        0.1,
        1.0 / 3.0,
    ];
    let mut s = 0x1234_5678u32;
    for _ in 0..4096 {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        // Exponents around the f16 range, so that most patterns land in it.
        let x = f32::from_bits((s & 0x807f_ffff) | ((100 + (s >> 8) % 50) << 23));
        v.push(x);
    }
    let x = Tensor::from_slice(&gpu, &v, &[v.len()]).unwrap();
    let got: Vec<half::f16> = x.to_dtype(DType::F16).unwrap().to_vec().unwrap();
    for (i, (&g, &x)) in got.iter().zip(&v).enumerate() {
        let want = half::f16::from_f32(x);
        let same = g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan());
        assert!(same, "element {i}: f16({x:e}) is {:#06x}, should be {:#06x}", g.to_bits(), want.to_bits());
    }
    let got: Vec<half::bf16> = x.to_dtype(DType::BF16).unwrap().to_vec().unwrap();
    for (i, (&g, &x)) in got.iter().zip(&v).enumerate() {
        let want = half::bf16::from_f32(x);
        let same = g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan());
        assert!(same, "element {i}: bf16({x:e}) is {:#06x}, should be {:#06x}", g.to_bits(), want.to_bits());
    }
}

#[test]
fn buffer_gives_the_realised_storage_for_interop() {
    let gpu = gpu();
    let (x, xv) = random_tensor(&gpu, &[7, 9], DType::F32, 3);
    // A pending expression is realised by buffer().
    let y = x.mul_scalar(3.0).unwrap();
    let buffer = y.buffer().unwrap().clone();
    assert!(!y.is_pending());
    assert!(buffer.size() >= 7 * 9 * 4);
    // Read it back through wgpu directly: the values are y's.
    gpu.flush().unwrap();
    let device = gpu.device();
    let staging = device.create_buffer(&wgkernels::wgpu::BufferDescriptor {
        label: None,
        size: 7 * 9 * 4,
        usage: wgkernels::wgpu::BufferUsages::MAP_READ | wgkernels::wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&buffer, 0, &staging, 0, 7 * 9 * 4);
    gpu.queue().submit([enc.finish()]);
    staging.slice(..).map_async(wgkernels::wgpu::MapMode::Read, |r| r.unwrap());
    device.poll(wgkernels::wgpu::PollType::wait_indefinitely()).unwrap();
    let got: Vec<f32> = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    let want: Vec<f64> = xv.iter().map(|v| (3.0 * *v as f32) as f64).collect();
    assert_close("y read through its wgpu buffer", &got, &want, 0.0, 0.0);
}

/// Shapes whose element count overflows are refused, naming the op and the shape (the
/// product used to wrap: [2^32, 2^32] made a tensor of 0 elements that ops then ran on).
#[test]
fn overflowing_shapes_are_refused() {
    let gpu = gpu();
    let huge = [1usize << 32, 1usize << 32];
    for dtype in DType::ALL {
        let e = Tensor::zeros(&gpu, &huge, dtype).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { op: "zeros", .. }), "{e}");
        assert!(e.to_string().contains(&format!("{huge:?}")), "{e}");
    }
    // Host data is never allocated for a shape past the binding limit.
    let e = Tensor::randn(&gpu, &[1 << 20, 1 << 20], DType::F32, 1).unwrap_err();
    assert!(matches!(e, Error::TooLarge { op: "randn", .. }), "{e}");
    let e = Tensor::full(&gpu, &[1 << 40], 1.0, DType::F32).unwrap_err();
    assert!(matches!(e, Error::TooLarge { op: "full", .. }), "{e}");
    let e = Tensor::from_slice(&gpu, &[1.0f32], &huge).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "from_slice", .. }), "{e}");
    // A broadcast view whose element count overflows.
    let x = Tensor::randn(&gpu, &[1, 1], DType::F32, 2).unwrap();
    let e = x.expand(&huge).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "view", .. }), "{e}");
    let e = x.reshape(&[usize::MAX, 2]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "reshape", .. }), "{e}");
}

/// A lazy op whose result cannot be bound is refused when it is recorded, under its own
/// name (it used to surface at a later realisation as "fused").
#[test]
fn a_lazy_op_past_the_binding_limit_is_refused_by_name() {
    for fusion in [true, false] {
        let gpu =
            Gpu::with_options(wgkernels::GpuOptions { fusion, ..wgkernels::GpuOptions::from_env().unwrap() }).unwrap();
        let limit = gpu.info().limits.max_storage_buffer_binding_size;
        // Rows × columns of f32 just past the limit, from two small operands.
        let side = ((limit / 4) as f64).sqrt() as usize + 2;
        let a = Tensor::randn(&gpu, &[side, 1], DType::F32, 3).unwrap();
        let b = Tensor::randn(&gpu, &[1, side], DType::F32, 4).unwrap();
        let e = (&a + &b).unwrap_err();
        assert!(matches!(e, Error::TooLarge { op: "add", .. }), "fusion {fusion}: {e}");
        let e = a.expand(&[side, side]).unwrap().exp().unwrap_err();
        assert!(matches!(e, Error::TooLarge { op: "exp", .. }), "fusion {fusion}: {e}");
    }
}

/// `to_vec::<T>()` converts to the host type asked for: exactly when widening, rounded to
/// nearest even when narrowing, as `to_dtype` would.
#[test]
fn to_vec_converts_to_the_host_type() {
    let gpu = gpu();
    let (a, _) = random_tensor(&gpu, &[3, 11], DType::F32, 5);
    let av = a.to_vec::<f32>().unwrap();
    let narrowed: Vec<f16> = a.to_vec::<f16>().unwrap();
    assert_eq!(narrowed, av.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>());
    assert_eq!(narrowed, a.to_dtype(DType::F16).unwrap().to_vec::<f16>().unwrap());
    let widened = a.to_dtype(DType::BF16).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(widened, av.iter().map(|&x| bf16::from_f32(x).to_f32()).collect::<Vec<_>>());
    let h = a.to_dtype(DType::F16).unwrap();
    assert_eq!(h.to_vec::<bf16>().unwrap(), narrowed.iter().map(|x| bf16::from_f32(x.to_f32())).collect::<Vec<_>>());
}

/// Zero-size tensors follow one rule (the crate docs, "Zero-size tensors"): every op whose
/// result PyTorch defines returns it (an empty result; sums over nothing are 0), and only a
/// mean over nothing (cross-entropy of no rows) or an optimizer step over a 0-element
/// parameter is an `Err(Empty)`.
#[test]
fn zero_size_tensors_follow_one_rule() {
    use wgkernels::ops::attention::{
        attention, attention_backward, attention_forward, AttentionOptions, AttentionSaved,
    };
    use wgkernels::ops::matmul::{Activation, MatmulOptions};
    let gpu = gpu();
    let z = |shape: &[usize]| Tensor::zeros(&gpu, shape, DType::F32).unwrap();
    let (no_rows, no_cols) = (z(&[0, 5]), z(&[3, 0]));
    // Element-wise, views, copies: empty results of the right shape.
    assert_eq!(no_rows.exp().unwrap().add(&no_rows).unwrap().shape(), &[0, 5]);
    assert_eq!(no_cols.transpose(0, 1).unwrap().contiguous().unwrap().shape(), &[0, 3]);
    // Sums over nothing are 0.
    assert_eq!(no_cols.sum(-1).unwrap().to_vec_f32().unwrap(), [0.0; 3]);
    assert_eq!(no_rows.sum(0).unwrap().to_vec_f32().unwrap(), [0.0; 5]);
    assert_eq!(no_rows.sum(1).unwrap().shape(), &[0]);
    // Row-wise ops keep the shape; a norm's weight and bias gradients are sums over no rows.
    for x in [&no_rows, &no_cols] {
        let n = x.shape()[1];
        assert_eq!(x.softmax(-1).unwrap().shape(), x.shape());
        assert_eq!(x.log_softmax(-1).unwrap().shape(), x.shape());
        assert_eq!(x.softmax_backward(x).unwrap().shape(), x.shape());
        let w = Tensor::full(&gpu, &[n], 1.0, DType::F32).unwrap();
        assert_eq!(x.layer_norm(Some(&w), Some(&w), 1e-5).unwrap().shape(), x.shape());
        assert_eq!(x.rms_norm(Some(&w), 1e-5).unwrap().shape(), x.shape());
        let g = x.layer_norm_backward(Some(&w), x, 1e-5).unwrap();
        assert_eq!(g.dx.shape(), x.shape());
        assert_eq!(g.dweight.unwrap().to_vec_f32().unwrap(), vec![0.0; n]);
        assert_eq!(g.dbias.unwrap().to_vec_f32().unwrap(), vec![0.0; n]);
        assert!(x.rms_norm_backward(Some(&w), x, 1e-5).unwrap().dbias.is_none());
        // A weight of the wrong length is still refused.
        let bad = Tensor::full(&gpu, &[n + 1], 1.0, DType::F32).unwrap();
        assert!(x.layer_norm(Some(&bad), None, 1e-5).is_err());
    }
    // Matmul: K = 0 gives zeros (each dot product sums nothing), through bias and activation.
    let (a, b) = (z(&[3, 0]), z(&[0, 4]));
    assert_eq!(a.matmul(&b).unwrap().to_vec_f32().unwrap(), [0.0; 12]);
    let bias = Tensor::from_slice(&gpu, &[-1.0f32, 0.5, 2.0, -3.0], &[4]).unwrap();
    let y = a.matmul_with(&b, &MatmulOptions { bias: Some(&bias), activation: Activation::Relu, ..Default::default() });
    assert_eq!(y.unwrap().to_vec_f32().unwrap(), [0.0, 0.5, 2.0, 0.0].repeat(3));
    let h = a.to_dtype(DType::F16).unwrap().matmul(&b.to_dtype(DType::F16).unwrap()).unwrap();
    assert_eq!((h.shape(), h.dtype()), (&[3usize, 4][..], DType::F16));
    assert_eq!(z(&[0, 5]).matmul(&z(&[5, 4])).unwrap().shape(), &[0, 4]);
    assert_eq!(z(&[2, 3, 0]).matmul(&z(&[0, 4])).unwrap().shape(), &[2, 3, 4]);
    assert_eq!(z(&[0]).matmul(&z(&[0])).unwrap().to_vec_f32().unwrap(), [0.0]); // a dot product of nothing
    assert_eq!(z(&[0]).matmul(&z(&[0, 4])).unwrap().shape(), &[4]);
    // Attention: no query rows give an empty output; no keys, zeros and a log-sum-exp of −∞.
    let opts = AttentionOptions::default();
    let (q, kv) = (z(&[1, 2, 0, 8]), z(&[1, 2, 6, 8]));
    assert_eq!(attention(&q, &kv, &kv, &opts).unwrap().shape(), &[1, 2, 0, 8]);
    let (q, kv) = (Tensor::randn(&gpu, &[1, 2, 4, 8], DType::F32, 1).unwrap(), z(&[1, 2, 0, 8]));
    let (out, lse) = attention_forward(&q, &kv, &kv, &opts).unwrap();
    assert_eq!(out.to_vec_f32().unwrap(), vec![0.0; 64]);
    assert!(lse.to_vec_f32().unwrap().iter().all(|&l| l == f32::NEG_INFINITY));
    let saved = AttentionSaved { q: &q, k: &kv, v: &kv, out: &out, lse: &lse };
    let (dq, dk, dv) = attention_backward(&saved, &out, &opts).unwrap();
    assert_eq!(dq.to_vec_f32().unwrap(), vec![0.0; 64]);
    assert_eq!((dk.shape(), dv.shape()), (&[1usize, 2, 0, 8][..], &[1usize, 2, 0, 8][..]));
    // The exceptions: a mean over no rows, and an optimizer step over no elements.
    let e = no_rows.cross_entropy(&[]).unwrap_err();
    assert!(matches!(e, Error::Empty { op: "cross_entropy", .. }), "{e}");
    let mut opt = wgkernels::optim::Sgd::new(&gpu, Default::default()).unwrap();
    use wgkernels::optim::Optimizer;
    let e = opt.step(&mut [z(&[0])], &[z(&[0])]).unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
}

/// `cat` along every dim of odd shapes, in every dtype (16-bit blocks that are not whole
/// words go through f32), against the same concatenation on the host; bad inputs name the
/// op and the shapes or dtypes.
#[test]
fn cat_joins_along_any_dim_in_every_dtype() {
    let gpu = common::gpu();
    for dtype in DType::ALL {
        for dim in 0..3usize {
            let base = [3usize, 5, 7];
            let sizes = [2usize, 1, 4];
            let mut parts = Vec::new();
            for (k, &n) in sizes.iter().enumerate() {
                let mut shape = base;
                shape[dim] = n;
                parts.push(common::random_tensor(&gpu, &shape, dtype, 50 + k as u64));
            }
            let refs: Vec<&Tensor> = parts.iter().map(|p| &p.0).collect();
            let got = Tensor::cat(&refs, dim as isize).unwrap();
            let mut out_shape = base;
            out_shape[dim] = sizes.iter().sum();
            assert_eq!(got.shape(), &out_shape);
            // Host: for each outer index, each part's block in turn.
            let outer: usize = base[..dim].iter().product();
            let inner: usize = base[dim + 1..].iter().product();
            let mut want = Vec::new();
            for o in 0..outer {
                for (p, &n) in parts.iter().zip(&sizes) {
                    want.extend_from_slice(&p.1[o * n * inner..(o + 1) * n * inner]);
                }
            }
            common::assert_close(&format!("cat {dtype:?} dim {dim}"), &got.to_vec_f32().unwrap(), &want, 0.0, 0.0);
        }
    }
    let a = Tensor::zeros(&gpu, &[2, 3], DType::F32).unwrap();
    let b = Tensor::zeros(&gpu, &[3, 3], DType::F32).unwrap();
    let err = Tensor::cat(&[&a, &b], 1).unwrap_err().to_string();
    assert!(err.contains("cat") && err.contains("[2, 3]") && err.contains("[3, 3]"), "{err}");
    let h = Tensor::zeros(&gpu, &[2, 3], DType::F16).unwrap();
    let err = Tensor::cat(&[&a, &h], 0).unwrap_err().to_string();
    assert!(err.contains("cat"), "{err}");
    assert!(Tensor::cat(&[], 0).is_err());
}

/// index_select (the embedding lookup) and index_add_rows (its backward) in every dtype,
/// with rows of whole words and odd 16-bit rows (through f32), against the host; ids out of
/// range name the op and the id.
#[test]
fn index_select_and_index_add_rows_match_the_host() {
    let gpu = common::gpu();
    let ids: Vec<u32> = vec![4, 0, 4, 2, 9, 4, 0];
    for dtype in DType::ALL {
        for d in [6usize, 7] {
            let (table, tv) = common::random_tensor(&gpu, &[10, d], dtype, 60);
            let got = table.index_select(&ids).unwrap();
            assert_eq!(got.shape(), &[ids.len(), d]);
            let want: Vec<f64> = ids.iter().flat_map(|&i| tv[i as usize * d..][..d].to_vec()).collect();
            common::assert_close(&format!("index_select {dtype:?} d {d}"), &got.to_vec_f32().unwrap(), &want, 0.0, 0.0);
            let (dy, dyv) = common::random_tensor(&gpu, &[ids.len(), d], dtype, 61);
            let sums = Tensor::index_add_rows(&dy, &ids, 10).unwrap();
            assert_eq!(sums.shape(), &[10, d]);
            let mut want = vec![0.0f64; 10 * d];
            for (p, &i) in ids.iter().enumerate() {
                for c in 0..d {
                    want[i as usize * d + c] += dyv[p * d + c];
                }
            }
            let want: Vec<f64> = want.into_iter().map(|v| common::round_to(v, dtype)).collect();
            let (atol, rtol) = common::tol(dtype);
            common::assert_close(
                &format!("index_add_rows {dtype:?} d {d}"),
                &sums.to_vec_f32().unwrap(),
                &want,
                atol,
                rtol,
            );
        }
    }
    let table = Tensor::zeros(&gpu, &[10, 4], DType::F32).unwrap();
    let err = table.index_select(&[1, 10]).unwrap_err().to_string();
    assert!(err.contains("index_select") && err.contains("id 10"), "{err}");
    let dy = Tensor::zeros(&gpu, &[2, 4], DType::F32).unwrap();
    assert!(Tensor::index_add_rows(&dy, &[1], 10).unwrap_err().to_string().contains("index_add_rows"));
    assert!(Tensor::index_add_rows(&dy, &[1, 12], 10).unwrap_err().to_string().contains("id 12"));
}

/// index_add (a base plus rows scattered by id, the tied embedding's gradient) in every
/// dtype against f64 (one rounding of base + Σ rows), on odd row lengths and odd totals
/// (16-bit words across rows), a base and rows that are views at odd offsets, repeated and
/// absent ids; index_add_rows on the same odd shapes; and against the unfused composition
/// (index_add_rows, then add). Bad shapes, dtypes and ids name the op.
#[test]
fn index_add_adds_rows_into_a_base() {
    let gpu = common::gpu();
    let ids: Vec<u32> = vec![4, 0, 4, 2, 10, 4, 0, 9];
    let rows = 11;
    for dtype in DType::ALL {
        for d in [1usize, 6, 7] {
            let (big, bigv) = common::random_tensor(&gpu, &[rows + 3, d], dtype, 70);
            let base = big.narrow(0, 3, rows).unwrap(); // offset 3·d: odd for odd d
            let basev = &bigv[3 * d..];
            let (dy_big, dy_bigv) = common::random_tensor(&gpu, &[ids.len() + 1, d], dtype, 71);
            let (dy, dyv) = (dy_big.narrow(0, 1, ids.len()).unwrap(), &dy_bigv[d..]); // offset d
            let mut sums = vec![0.0f64; rows * d];
            for (p, &i) in ids.iter().enumerate() {
                for c in 0..d {
                    sums[i as usize * d + c] += dyv[p * d + c];
                }
            }
            let (atol, rtol) = common::tol(dtype);
            let got = base.index_add(&ids, &dy).unwrap();
            assert_eq!((got.shape(), got.dtype()), (&[rows, d][..], dtype));
            let want: Vec<f64> = sums.iter().zip(basev).map(|(s, b)| common::round_to(s + b, dtype)).collect();
            let got = got.to_vec_f32().unwrap();
            common::assert_close(&format!("index_add {dtype:?} d {d}"), &got, &want, atol, rtol);
            let alone = Tensor::index_add_rows(&dy, &ids, rows).unwrap();
            let want_alone: Vec<f64> = sums.iter().map(|&s| common::round_to(s, dtype)).collect();
            let alone_v = alone.to_vec_f32().unwrap();
            common::assert_close(&format!("index_add_rows {dtype:?} d {d}"), &alone_v, &want_alone, atol, rtol);
            // The unfused composition rounds twice (the sums, then the add).
            let unfused: Vec<f64> = base.add(&alone).unwrap().to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
            common::assert_close(
                &format!("index_add {dtype:?} d {d} vs unfused"),
                &got,
                &unfused,
                2.0 * atol,
                2.0 * rtol,
            );
        }
    }
    let base = Tensor::zeros(&gpu, &[10, 4], DType::F32).unwrap();
    let dy = Tensor::zeros(&gpu, &[2, 4], DType::F32).unwrap();
    let err = |r: wgkernels::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(base.index_add(&[1], &dy));
    assert!(e.contains("index_add") && e.contains("[1, 4]") && e.contains("[2, 4]"), "{e}");
    assert!(err(base.index_add(&[1, 2], &Tensor::zeros(&gpu, &[2, 5], DType::F32).unwrap())).contains("index_add"));
    let e = err(base.index_add(&[1, 2], &Tensor::zeros(&gpu, &[2, 4], DType::F16).unwrap()));
    assert!(e.contains("index_add") && e.contains("F16"), "{e}");
    assert!(err(base.index_add(&[1, 10], &dy)).contains("id 10"));
    assert!(err(Tensor::full(&gpu, &[], 1.0, DType::F32).unwrap().index_add(&[], &dy)).contains("index_add"));
}
