//! Autotuning: the first matmul of a shape class times every candidate, keeps the fastest
//! and persists it per adapter; a new device (a new process, in real use) reuses the file.

mod common;
use common::*;
use wgkernels::{DType, Gpu, GpuOptions};

#[test]
fn tunes_once_persists_and_reuses() {
    let dir = std::env::temp_dir().join(format!("wgk-autotune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = GpuOptions { autotune: true, cache_dir: Some(dir.clone()), ..GpuOptions::from_env().unwrap() };

    let (m, k, n) = (520, 256, 500); // 133 MFLOP: above the tuning threshold
    let gpu = Gpu::with_options(opts.clone()).unwrap();
    let (a, av) = random_tensor(&gpu, &[m, k], DType::F32, 1);
    let (b, bv) = random_tensor(&gpu, &[k, n], DType::F32, 2);
    let before = gpu.stats().dispatches;
    // With fusion on a matmul waits for its consumer: realise it to run (and tune) it now.
    let c = a.matmul(&b).unwrap();
    c.realize().unwrap();
    let tuned_dispatches = gpu.stats().dispatches - before;
    assert!(tuned_dispatches > 8, "tuning should have run several candidates, ran {tuned_dispatches} dispatches");
    // Spot-check the result of the tuned choice.
    let got = c.to_vec_f32().unwrap();
    for &(i, j) in &[(0usize, 0usize), (m - 1, n - 1), (257, 131)] {
        let want: f64 = (0..k).map(|p| av[i * k + p] * bv[p * n + j]).sum();
        assert_close(&format!("c[{i},{j}]"), &[got[i * n + j]], &[want], 1e-4, 1e-5);
    }
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1, "one cache file per adapter");
    // Each entry carries the checksum of the kernels it was timed with.
    let path = files[0].as_ref().unwrap().path();
    let text = std::fs::read_to_string(&path).unwrap();
    let checksum = format!("{:016x}", wgkernels::ops::matmul::kernels_checksum());
    let entry = text.lines().find(|l| l.starts_with("matmul f32")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(entry.split('\t').nth(2), Some(checksum.as_str()), "{text}");

    // Same process, same device: cached in memory, one dispatch.
    let before = gpu.stats().dispatches;
    a.matmul(&b).unwrap().realize().unwrap();
    assert_eq!(gpu.stats().dispatches - before, 1);

    // A fresh device reads the file instead of tuning again.
    let gpu2 = Gpu::with_options(opts).unwrap();
    let (a2, _) = random_tensor(&gpu2, &[m, k], DType::F32, 3);
    let (b2, _) = random_tensor(&gpu2, &[k, n], DType::F32, 4);
    let before = gpu2.stats().dispatches;
    a2.matmul(&b2).unwrap().realize().unwrap();
    assert_eq!(gpu2.stats().dispatches - before, 1, "the persisted winner must be reused");

    // An entry timed against other kernels (another checksum) is tuned again.
    let stale: String = text.lines().map(|l| l.replace(&checksum, "0123456789abcdef")).map(|l| l + "\n").collect();
    std::fs::write(&path, stale).unwrap();
    let gpu3 = Gpu::with_options(GpuOptions {
        autotune: true,
        cache_dir: Some(dir.clone()),
        ..GpuOptions::from_env().unwrap()
    })
    .unwrap();
    let (a3, _) = random_tensor(&gpu3, &[m, k], DType::F32, 5);
    let (b3, _) = random_tensor(&gpu3, &[k, n], DType::F32, 6);
    let before = gpu3.stats().dispatches;
    a3.matmul(&b3).unwrap().realize().unwrap();
    assert!(gpu3.stats().dispatches - before > 8, "a winner of other kernels must be timed again");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Callers that ask for a class another thread is tuning wait for that tune and take its
/// winner: four threads, one device, one shape class, tuned once (one entry persisted,
/// every result right).
#[test]
fn concurrent_callers_wait_for_one_tune() {
    let dir = std::env::temp_dir().join(format!("wgk-autotune-concurrent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = GpuOptions { autotune: true, cache_dir: Some(dir.clone()), ..GpuOptions::from_env().unwrap() };
    let gpu = Gpu::with_options(opts).unwrap();
    let (m, k, n) = (520, 256, 500); // 133 MFLOP: above the tuning threshold
    let (a, av) = random_tensor(&gpu, &[m, k], DType::F32, 11);
    let (b, bv) = random_tensor(&gpu, &[k, n], DType::F32, 12);
    let start = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                start.wait();
                let got = a.matmul(&b).unwrap().to_vec_f32().unwrap();
                let want: f64 = (0..k).map(|p| av[7 * k + p] * bv[p * n + 3]).sum();
                assert_close("c[7,3]", &[got[7 * n + 3]], &[want], 1e-4, 1e-5);
            });
        }
    });
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    let entries = text.lines().filter(|l| l.starts_with("matmul f32")).count();
    assert_eq!(entries, 1, "one tune for four concurrent callers, got:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
