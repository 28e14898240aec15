//! Data parallel and the column-split Linear, on two devices of this machine's adapter
//! (two lavapipe devices in CI), against one device doing the same work whole.

mod common;

use common::assert_close;
use wgkernels::autograd::Var;
use wgkernels::nn::{Gpt, GptConfig, Linear, Module};
use wgkernels::optim::{Optimizer, Sgd, SgdConfig};
use wgkernels::parallel::{ColumnParallelLinear, DataParallel, DataParallelOptions};
use wgkernels::{DType, Gpu, GpuOptions, Tensor};

fn two_gpus() -> [Gpu; 2] {
    [Gpu::new().unwrap(), Gpu::new().unwrap()]
}

const CONFIG: GptConfig = GptConfig { vocab: 37, context: 16, layers: 2, heads: 2, d_model: 16 };

/// Seeded token ids below the vocabulary.
fn ids(n: usize, seed: u64) -> Vec<u32> {
    common::random_vec(n, seed).iter().map(|&v| ((v + 2.0) / 4.0 * CONFIG.vocab as f32) as u32 % 37).collect()
}

fn values(v: &Var) -> Vec<f32> {
    v.tensor().to_vec_f32().unwrap()
}

fn as_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Batch 4 × 8 tokens, split 2 + 2 across two replicas, four SGD steps with momentum: every
/// averaged gradient matches the full batch's on one device, and so do the parameters after
/// the steps; the two replicas stay bit-for-bit equal. Small buckets, so that the gradients
/// cross several.
#[test]
fn two_way_data_parallel_equals_one_device_on_the_full_batch() {
    let gpus = two_gpus();
    let (batch, seq) = (4, 8);
    let sgd = SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() };
    let reference = Gpt::new(&gpus[0], &CONFIG, DType::F32, 5).unwrap();
    let ref_params: Vec<Var> = reference.parameters().into_iter().map(|(_, p)| p).collect();
    let mut ref_opt = Sgd::new(&gpus[0], sgd.clone()).unwrap();
    // Replica 1 is built from another seed: DataParallel gives it replica 0's values.
    let opts = DataParallelOptions { bucket_bytes: 4096 };
    let mut dp = DataParallel::new(
        &gpus,
        |gpu| {
            let seed = if std::ptr::eq(gpu, &gpus[0]) { 5 } else { 6 };
            Gpt::new(gpu, &CONFIG, DType::F32, seed)
        },
        &opts,
    )
    .unwrap();
    let mut opts: Vec<Sgd> = gpus.iter().map(|g| Sgd::new(g, sgd.clone()).unwrap()).collect();
    for (p0, p1) in dp.params(0).iter().zip(dp.params(1)) {
        assert_eq!(values(p0), values(p1), "replicas start equal");
    }
    for step in 0..4u64 {
        let tokens = ids(batch * seq + 1, 100 + step);
        let (x, y) = (&tokens[..batch * seq], &tokens[1..]);
        reference.loss(x, y, batch, seq).unwrap().backward().unwrap();
        let half = batch / 2 * seq;
        let losses = dp.map(|r, m| m.loss(&x[r * half..(r + 1) * half], &y[r * half..(r + 1) * half], 2, seq)).unwrap();
        if step % 2 == 0 {
            // Each bucket's read starts inside the backward; the embeddings' (used first
            // and, tied, last) completes only at its end.
            dp.backward(&losses).unwrap();
            let sync = dp.last_sync();
            assert!(sync.reads_during_backward > 2 && sync.reads_during_backward <= 2 * sync.buckets, "{sync:?}");
        } else {
            // The caller's own backward, then the reduction.
            losses.iter().for_each(|l| l.backward().unwrap());
            dp.all_reduce_gradients().unwrap();
            assert_eq!(dp.last_sync().reads_during_backward, 0);
        }
        assert!(dp.last_sync().buckets > 1, "{:?}", dp.last_sync());
        for (k, p) in ref_params.iter().enumerate() {
            let want = as_f64(&p.grad().unwrap().to_vec_f32().unwrap());
            for r in 0..2 {
                let got = dp.params(r)[k].grad().unwrap().to_vec_f32().unwrap();
                assert_close(&format!("step {step} grad of parameter {k}, replica {r}"), &got, &want, 1e-6, 1e-4);
            }
        }
        ref_opt.step_params(&ref_params).unwrap();
        for (r, opt) in opts.iter_mut().enumerate() {
            opt.step_params(dp.params(r)).unwrap();
        }
        ref_params.iter().for_each(Var::zero_grad);
        dp.zero_grad();
    }
    for (k, p) in ref_params.iter().enumerate() {
        let (a, b) = (values(&dp.params(0)[k]), values(&dp.params(1)[k]));
        assert_eq!(a, b, "parameter {k}: the replicas differ");
        assert_close(&format!("parameter {k} after 4 steps"), &a, &as_f64(&values(p)), 1e-6, 1e-4);
    }
}

#[test]
fn data_parallel_refuses_bad_input() {
    let gpus = two_gpus();
    let build = |gpu: &Gpu| Gpt::new(gpu, &CONFIG, DType::F32, 0);
    let err = DataParallel::new(&[], build, &DataParallelOptions::default()).err().unwrap().to_string();
    assert!(err.contains("DataParallel::new") && err.contains("0 devices"), "{err}");
    let zero = DataParallelOptions { bucket_bytes: 0 };
    assert!(DataParallel::new(&gpus, build, &zero).is_err());
    // Replicas of different models.
    let err = DataParallel::new(
        &gpus,
        |gpu| {
            let layers = if std::ptr::eq(gpu, &gpus[0]) { 1 } else { 2 };
            Gpt::new(gpu, &GptConfig { layers, ..CONFIG }, DType::F32, 0)
        },
        &DataParallelOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("replica 1"), "{err}");
    let mut dp = DataParallel::new(&gpus, build, &DataParallelOptions::default()).unwrap();
    let tokens = ids(9, 1);
    let loss = dp.replicas()[0].loss(&tokens[..8], &tokens[1..], 1, 8).unwrap();
    let err = dp.backward(&[loss]).unwrap_err().to_string();
    assert!(err.contains("1 losses for 2 replicas"), "{err}");
}

/// A Linear of 16 → 37 (odd: the blocks are 19 and 18 columns), with and without bias, on a
/// batched input, split over one and two devices: equal to the single-device Linear.
#[test]
fn column_split_linear_equals_the_single_device_linear() {
    let gpus = two_gpus();
    for bias in [true, false] {
        let linear = Linear::new(&gpus[0], 16, 37, bias, 0.3, DType::F32, 11).unwrap();
        if let Some(b) = &linear.bias {
            // A bias that is not zero, so that adding it is checked.
            let v = common::random_vec(37, 12);
            b.tensor().write_bytes(bytemuck::cast_slice(&v)).unwrap();
        }
        let x = Tensor::from_slice(&gpus[1], &common::random_vec(3 * 5 * 16, 13), &[3, 5, 16]).unwrap();
        let want = linear.forward(&Var::constant(x.to_device(&gpus[0]).unwrap())).unwrap();
        let want = as_f64(&want.tensor().to_vec_f32().unwrap());
        for devices in [&gpus[..1], &gpus[..]] {
            let split = ColumnParallelLinear::from_linear(&linear, devices).unwrap();
            if devices.len() == 2 {
                assert_eq!(split.columns(), &[0..19, 19..37]);
            }
            let y = split.forward(&x).unwrap();
            assert_eq!(y.shape(), &[3, 5, 37]);
            assert_close(
                &format!("{}-way split, bias {bias}", devices.len()),
                &y.to_vec_f32().unwrap(),
                &want,
                1e-6,
                1e-5,
            );
        }
    }
    let narrow = Linear::new(&gpus[0], 4, 1, false, 0.3, DType::F32, 1).unwrap();
    let err = ColumnParallelLinear::from_linear(&narrow, &gpus).err().unwrap().to_string();
    assert!(err.contains("2 devices for 1 output columns"), "{err}");
    let linear = Linear::new(&gpus[0], 16, 8, false, 0.3, DType::F32, 1).unwrap();
    let split = ColumnParallelLinear::from_linear(&linear, &gpus).unwrap();
    let bad = Tensor::randn(&gpus[0], &[2, 15], DType::F32, 3).unwrap();
    assert!(split.forward(&bad).unwrap_err().to_string().contains("ColumnParallelLinear"));
}

/// One device per adapter of the best kind: on this machine the one software adapter, the
/// one `Gpu::new` picks.
#[test]
fn per_adapter_gives_a_device_on_each_adapter_of_the_best_kind() {
    let one = Gpu::new().unwrap();
    let all = Gpu::per_adapter(GpuOptions::from_env().unwrap()).unwrap();
    assert!(!all.is_empty());
    assert_eq!(all[0].info().name, one.info().name);
    for g in &all {
        assert_eq!((g.info().device_type, g.info().backend), (one.info().device_type, one.info().backend));
    }
}
