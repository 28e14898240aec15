//! Autotuning: on the first use of a shape class, time each candidate configuration on the
//! caller's own operands and keep the fastest, in memory and in a per-adapter file in the
//! user's cache directory (`$WGK_CACHE_DIR`, else `$XDG_CACHE_HOME/wgkernels`, else
//! `~/.cache/wgkernels`), so later processes skip the tuning. The file is named by the
//! adapter, its driver and [`kernels_fingerprint`]: a new driver or changed kernels tune
//! again. `WGK_AUTOTUNE=0` (or `GpuOptions::autotune = false`) always takes the first
//! candidate, a portable default. The cache file is best-effort: if it cannot be read or
//! written, tuning is redone.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use crate::error::Result;
use crate::gpu::lock;
use crate::ops::matmul::{Launch, MatmulPath};
use crate::Gpu;

/// Timed repeats per candidate (after one warm-up that compiles it).
const REPEATS: usize = 3;

/// Below this much work a run is dominated by launch overhead, so timings cannot tell
/// candidates apart: the default is kept.
const MIN_TUNED_FLOPS: f64 = 1e8;

/// A fingerprint of the matmul kernels' sources and the crate's version: winners are kept
/// per fingerprint, so that a changed kernel is timed again instead of losing to a winner
/// measured against its predecessor (FNV-1a, stable across Rust releases).
pub fn kernels_fingerprint() -> u64 {
    use crate::shaders::Shader;
    let texts = [
        env!("CARGO_PKG_VERSION"),
        Shader::Matmul.source(),
        Shader::MatmulCoop.source(),
        Shader::Matmul.shared_source(),
    ];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for text in texts {
        for &byte in text.as_bytes().iter().chain(&[0u8]) {
            h ^= byte as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn cache_file(gpu: &Gpu) -> Option<PathBuf> {
    let dir = std::env::var_os("WGK_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("wgkernels")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache").join("wgkernels")))?;
    let info = gpu.info();
    let id: String = format!("{}-{:?}-{}", info.name, info.backend, info.driver)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    Some(dir.join(format!("autotune-{id}-k{:016x}.tsv", kernels_fingerprint())))
}

/// Loads the persisted winners once per device.
fn load(gpu: &Gpu) {
    let mut tuned = lock(&gpu.inner.tuned);
    if tuned.contains_key("#loaded") {
        return;
    }
    tuned.insert("#loaded".into(), String::new());
    if let Some(text) = cache_file(gpu).and_then(|p| std::fs::read_to_string(p).ok()) {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('\t') {
                tuned.insert(k.to_string(), v.to_string());
            }
        }
    }
}

fn save(gpu: &Gpu, key: &str, winner: &str) {
    let Some(path) = cache_file(gpu) else { return };
    let _ = std::fs::create_dir_all(path.parent().unwrap_or(&path));
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = writeln!(f, "{key}\t{winner}");
    }
}

/// Milliseconds for one run of `path`: the minimum over `REPEATS`, wall clock around a sync.
fn time(gpu: &Gpu, launch: &Launch, path: MatmulPath) -> Result<f64> {
    launch.run(path)?;
    gpu.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..REPEATS {
        let t0 = Instant::now();
        launch.run(path)?;
        gpu.synchronize()?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// The candidate to run `launch` with: the cached winner for its shape class, or the
/// fastest after timing them all (printing a progress line), or the default.
pub(crate) fn choose(gpu: &Gpu, launch: &Launch, candidates: Vec<MatmulPath>) -> Result<MatmulPath> {
    let default = candidates[0];
    if !gpu.inner.autotune || candidates.len() == 1 || launch.flops() < MIN_TUNED_FLOPS {
        return Ok(default);
    }
    load(gpu);
    let key = launch.class_key();
    if let Some(name) = lock(&gpu.inner.tuned).get(&key) {
        if let Some(p) = candidates.iter().find(|p| p.name() == *name) {
            return Ok(*p);
        }
    }
    eprint!("wgkernels: tuning {key} over {} candidates:", candidates.len());
    // Bring the GPU out of its idle clocks first, or the first candidate times slow.
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 0.1 {
        launch.run(default)?;
        gpu.synchronize()?;
    }
    let mut best = (f64::INFINITY, default);
    for &p in &candidates {
        let ms = time(gpu, launch, p)?;
        eprint!(" {}={ms:.3}ms", p.name());
        if ms < best.0 {
            best = (ms, p);
        }
    }
    eprintln!(" -> {} ({:.1} GFLOP/s)", best.1.name(), launch.flops() / (best.0 * 1e-3) / 1e9);
    lock(&gpu.inner.tuned).insert(key.clone(), best.1.name());
    save(gpu, &key, &best.1.name());
    Ok(best.1)
}
