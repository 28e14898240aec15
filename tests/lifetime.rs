//! Devices are released when their last handle is dropped, whatever ran on them: a process
//! that creates and drops `Gpu`s (a test suite, a server) must be able to do so forever.
//! Found on the H200: a test binary run with one thread passed 13 tests, then every later
//! `Gpu::new` saw no adapter. This binary holds one test, so no other test's devices count.

mod common;
use common::*;
use wgkernels::ops::attention::{attention, AttentionOptions};
use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
use wgkernels::{DType, Gpu, GpuOptions, Profiler};

type Path = fn(&Gpu);

fn chain(gpu: &Gpu) {
    let (x, _) = random_tensor(gpu, &[37, 19], DType::F32, 1);
    let (b, _) = random_tensor(gpu, &[19], DType::F16, 2);
    let y = (&x + &b.to_dtype(DType::F32).unwrap()).unwrap().gelu().unwrap();
    y.sum(-1).unwrap().to_vec_f32().unwrap();
}

fn held_intermediate_and_unrealised(gpu: &Gpu) {
    let (x, _) = random_tensor(gpu, &[64], DType::F32, 3);
    let held = x.exp().unwrap();
    let y = held.mul(&x).unwrap().neg().unwrap();
    y.realize().unwrap();
    held.to_vec_f32().unwrap();
    // A pending expression never realised.
    let _never = y.add(&x).unwrap().sin().unwrap();
}

fn matmul_epilogue_and_norm_prologue(gpu: &Gpu) {
    let (a, _) = random_tensor(gpu, &[40, 24], DType::F32, 4);
    let (w, _) = random_tensor(gpu, &[24, 16], DType::F32, 5);
    let (bias, _) = random_tensor(gpu, &[16], DType::F32, 6);
    let h = a.matmul(&w).unwrap().add(&bias).unwrap().relu().unwrap();
    h.to_vec_f32().unwrap();
    let (r, _) = random_tensor(gpu, &[40, 16], DType::F32, 7);
    let n = h.add(&r).unwrap().layer_norm(None, None, 1e-5).unwrap();
    n.to_vec_f32().unwrap();
    let (loss, _) = n.cross_entropy(&[1; 40]).unwrap();
    loss.to_vec_f32().unwrap();
}

fn dropout_softmax_attention(gpu: &Gpu) {
    let (x, _) = random_tensor(gpu, &[2, 2, 16, 32], DType::F32, 8);
    let d = x.dropout(0.1, 42).unwrap().softmax(-1).unwrap();
    attention(&d, &x, &x, &AttentionOptions { causal: true, ..Default::default() }).unwrap().to_vec_f32().unwrap();
}

fn optimizer_and_profiler(gpu: &Gpu) {
    let profile = Profiler::start(gpu).unwrap();
    let mut params = vec![random_tensor(gpu, &[300], DType::F32, 9).0];
    let grads = vec![random_tensor(gpu, &[300], DType::F32, 10).0];
    let mut opt = AdamW::new(gpu, AdamWConfig::default()).unwrap();
    opt.step(&mut params, &grads).unwrap();
    params[0].to_vec_f32().unwrap();
    profile.finish().unwrap();
}

fn background_compiles_queued(gpu: &Gpu) {
    // Tiered JIT forced on: new structures queue full kernels on the worker; the device is
    // dropped while they may still compile.
    let (x, _) = random_tensor(gpu, &[4096], DType::F32, 11);
    for k in 0..4 {
        let mut y = x.cos().unwrap();
        for _ in 0..=k {
            y = y.add(&x).unwrap();
        }
        y.realize().unwrap();
    }
}

/// Open file descriptors and threads of this process (Linux; None elsewhere): a device the
/// driver still holds shows there even when the library has let it go.
fn process_handles() -> Option<(usize, usize)> {
    let count = |dir: &str| std::fs::read_dir(dir).ok().map(|d| d.count());
    Some((count("/proc/self/fd")?, count("/proc/self/task")?))
}

#[test]
fn every_path_releases_its_device() {
    use std::io::Write;
    let paths: [(&str, Path, bool); 6] = [
        ("fused chain", chain, false),
        ("held intermediate, unrealised expression", held_intermediate_and_unrealised, false),
        ("matmul epilogue, norm prologue, cross-entropy", matmul_epilogue_and_norm_prologue, true),
        ("dropout, softmax, attention", dropout_softmax_attention, false),
        ("optimizer, profiler", optimizer_and_profiler, false),
        ("tiered JIT with compiles queued", background_compiles_queued, false),
    ];
    let before = Gpu::live_devices();
    // Handles after the first round: the driver may keep some for the process's lifetime.
    let mut settled: Option<(usize, usize)> = None;
    for round in 0..4 {
        for (name, path, epilogues) in paths {
            let opts = GpuOptions {
                fuse_matmul_epilogues: epilogues,
                // The adapter's default elsewhere (on for GPUs), forced on where queued.
                tiered_jit: if name.starts_with("tiered") { Some(true) } else { None },
                ..GpuOptions::from_env().unwrap()
            };
            let handles = process_handles();
            let gpu = Gpu::with_options(opts).unwrap();
            assert_eq!(Gpu::live_devices(), before + 1);
            path(&gpu);
            gpu.finish_compiles();
            drop(gpu);
            assert_eq!(Gpu::live_devices(), before, "round {round}: '{name}' kept its device alive");
            if let (Some((f0, t0)), Some((f1, t1))) = (handles, process_handles()) {
                let _ = writeln!(std::io::stderr(), "round {round} {name}: fds {f0} -> {f1}, threads {t0} -> {t1}");
            }
        }
        if round == 0 {
            settled = process_handles();
        }
    }
    // Three more rounds of every path leave the process with the handles it had after the
    // first: a device the driver keeps would hold its files (and threads) open.
    if let (Some((f0, t0)), Some((f1, t1))) = (settled, process_handles()) {
        assert!(f1 <= f0 + 2, "open files grew from {f0} to {f1} over 18 devices made and dropped");
        assert!(t1 <= t0 + 2, "threads grew from {t0} to {t1} over 18 devices made and dropped");
    }
}
