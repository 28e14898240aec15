//! A generic autotuner: on the first use of a problem class, time each candidate
//! configuration on the caller's own operands and keep the fastest, in memory and in a
//! per-adapter file in the cache folder ([`GpuOptions::cache_dir`](crate::GpuOptions)), so
//! later processes skip the tuning.
//!
//! - **Keyed per problem**: the caller names the class (e.g. `matmul f32 m10 n9 k8 …`).
//! - **Checked against the kernels**: each persisted entry carries a checksum of the
//!   kernel sources it was timed with ([`Problem::kernels`]); an entry whose checksum
//!   differs from the running kernels' is ignored and tuned again, so a changed kernel
//!   never loses to a winner measured against its predecessor.
//! - **Tuned once**: a caller that asks for a class another thread is tuning waits for that
//!   tune to finish and takes its winner.
//! - **Quiet**: progress goes through the `log` crate (`info` per tune, `debug` per
//!   candidate); the library never prints.
//!
//! With autotuning off (`GpuOptions::autotune = false`, `WGK_AUTOTUNE=0`) the first
//! candidate, a portable default, is always taken. The cache file is best-effort: if it
//! cannot be read or written, tuning is redone.

use crate::device::Instant;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

use crate::device::{lock, Gpu};
use crate::error::{Error, Result};

/// Timed repeats per candidate (after one warm-up that compiles it).
const REPEATS: usize = 3;

/// Below this much work a run is dominated by launch overhead, so timings cannot tell
/// candidates apart: the default is kept.
pub const MIN_TUNED_FLOPS: f64 = 1e8;

/// One problem to tune: which op asks, its class key, how much work one run is, and a
/// checksum of the kernel sources the candidates come from.
#[derive(Clone, Debug)]
pub struct Problem {
    /// The op, for errors: `"matmul"`.
    pub op: &'static str,
    /// The problem class: runs with the same key share a winner.
    pub key: String,
    /// Floating-point operations of one run; below [`MIN_TUNED_FLOPS`] nothing is timed.
    pub flops: f64,
    /// Checksum of the candidates' kernel sources ([`checksum`]).
    pub kernels: u64,
}

/// FNV-1a over `texts` (each followed by a zero byte): stable across Rust releases and
/// platforms, for the checksum of kernel sources kept with each tuned entry.
///
/// ```
/// assert_ne!(wgkernels::tune::checksum(&["a", "b"]), wgkernels::tune::checksum(&["ab"]));
/// ```
pub fn checksum(texts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for text in texts {
        for &byte in text.as_bytes().iter().chain(&[0u8]) {
            h ^= byte as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// What a device has tuned: winners by class key (with the checksum they were timed with),
/// whether the file was read, and the keys being tuned now.
#[derive(Default)]
struct TuneState {
    table: Mutex<TuneTable>,
    tuned: Condvar,
}

#[derive(Default)]
struct TuneTable {
    loaded: bool,
    /// Class key → (winner's name, kernel checksum).
    winners: HashMap<String, (String, u64)>,
    in_progress: HashSet<String>,
}

/// The per-adapter file: one per adapter, driver and crate version.
fn cache_file(gpu: &Gpu) -> Option<PathBuf> {
    let dir = gpu.cache_dir()?;
    let info = gpu.info();
    let id: String = format!("{}-{:?}-{}-v{}", info.name, info.backend, info.driver, env!("CARGO_PKG_VERSION"))
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    Some(dir.join(format!("autotune-{id}.tsv")))
}

/// Reads the file's entries into `table` (lines `key \t winner \t checksum`; later lines win).
fn load(gpu: &Gpu, table: &mut TuneTable) {
    if table.loaded {
        return;
    }
    table.loaded = true;
    let Some(text) = cache_file(gpu).and_then(|p| std::fs::read_to_string(p).ok()) else { return };
    for line in text.lines() {
        let mut fields = line.split('\t');
        if let (Some(key), Some(winner), Some(sum)) = (fields.next(), fields.next(), fields.next()) {
            if let Ok(sum) = u64::from_str_radix(sum, 16) {
                table.winners.insert(key.to_string(), (winner.to_string(), sum));
            }
        }
    }
}

fn save(gpu: &Gpu, key: &str, winner: &str, kernels: u64) {
    let Some(path) = cache_file(gpu) else { return };
    let _ = std::fs::create_dir_all(path.parent().unwrap_or(&path));
    match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(mut f) => {
            if let Err(e) = writeln!(f, "{key}\t{winner}\t{kernels:016x}") {
                log::warn!("autotune: could not write {}: {e}", path.display());
            }
        }
        Err(e) => log::warn!("autotune: could not open {}: {e}", path.display()),
    }
}

/// The path named `name` among `candidates`.
fn find<C: Copy>(candidates: &[C], name: &str, name_of: &impl Fn(&C) -> String) -> Option<C> {
    candidates.iter().find(|c| name_of(c) == name).copied()
}

/// The candidate to run `problem` with: the cached winner for its class (tuned with the
/// same kernels), or the fastest after timing them all with `run`, or the first (the
/// portable default) when tuning is off or cannot tell them apart. `Err` when there is no
/// candidate at all (an adapter whose limits admit none of the op's configurations).
pub(crate) fn choose<C: Copy>(
    gpu: &Gpu,
    problem: &Problem,
    candidates: &[C],
    name_of: impl Fn(&C) -> String,
    mut run: impl FnMut(C) -> Result<()>,
) -> Result<C> {
    let Some(&default) = candidates.first() else {
        return Err(Error::Unsupported {
            op: problem.op,
            msg: format!(
                "no kernel configuration fits {}'s limits for {} (max {} invocations per workgroup, {} bytes of workgroup memory)",
                gpu.info().name,
                problem.key,
                gpu.info().limits.max_compute_invocations_per_workgroup,
                gpu.info().limits.max_compute_workgroup_storage_size
            ),
        });
    };
    if !gpu.autotune() || candidates.len() == 1 || problem.flops < MIN_TUNED_FLOPS {
        return Ok(default);
    }
    let state = gpu.family_state::<TuneState>();
    {
        let mut table = lock(&state.table);
        load(gpu, &mut table);
        loop {
            if let Some((name, sum)) = table.winners.get(&problem.key) {
                if *sum == problem.kernels {
                    if let Some(c) = find(candidates, name, &name_of) {
                        return Ok(c);
                    }
                }
            }
            if !table.in_progress.contains(&problem.key) {
                break;
            }
            // Another caller is tuning this class: its winner serves us too.
            table = state.tuned.wait(table).unwrap_or_else(|e| e.into_inner());
        }
        table.in_progress.insert(problem.key.clone());
    }
    let result = time_all(gpu, problem, candidates, &name_of, &mut run);
    let mut table = lock(&state.table);
    table.in_progress.remove(&problem.key);
    if let Ok(best) = &result {
        let name = name_of(best);
        save(gpu, &problem.key, &name, problem.kernels);
        table.winners.insert(problem.key.clone(), (name, problem.kernels));
    }
    drop(table);
    state.tuned.notify_all();
    result
}

/// Times every candidate, the minimum of `REPEATS` wall-clock runs around a sync each.
fn time_all<C: Copy>(
    gpu: &Gpu,
    problem: &Problem,
    candidates: &[C],
    name_of: &impl Fn(&C) -> String,
    run: &mut impl FnMut(C) -> Result<()>,
) -> Result<C> {
    log::info!("autotune: tuning {} over {} candidates", problem.key, candidates.len());
    // Bring the GPU out of its idle clocks first, or the first candidate times slow.
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 0.1 {
        run(candidates[0])?;
        gpu.synchronize()?;
    }
    let mut best = (f64::INFINITY, candidates[0]);
    for &c in candidates {
        run(c)?;
        gpu.synchronize()?;
        let mut ms = f64::INFINITY;
        for _ in 0..REPEATS {
            let t0 = Instant::now();
            run(c)?;
            gpu.synchronize()?;
            ms = ms.min(t0.elapsed().as_secs_f64() * 1e3);
        }
        log::debug!("autotune: {} {} = {ms:.3} ms", problem.key, name_of(&c));
        if ms < best.0 {
            best = (ms, c);
        }
    }
    log::info!(
        "autotune: {} -> {} ({:.1} GFLOP/s)",
        problem.key,
        name_of(&best.1),
        problem.flops / (best.0 * 1e-3) / 1e9
    );
    Ok(best.1)
}
