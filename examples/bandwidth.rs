//! How much memory bandwidth a copy kernel gets through wgpu on this adapter, by access
//! pattern and buffer size: the roofline every memory-bound kernel (element-wise, norms,
//! optimizer steps) is measured against.
//!
//!     cargo run --release --example bandwidth [-- MiB ...]      (default: 64 256 1024)
//!
//! Variants (each reads and writes the buffer once; bytes counted = 2 × buffer size):
//! - `u32 x1`: one 4-byte word per invocation;
//! - `u32 x4 strided`: four words per invocation, 256 apart (the element-wise kernels' pattern);
//! - `vec4 x1`: one 16-byte load per invocation;
//! - `vec4 x4 strided`: four 16-byte loads per invocation, 256 apart;
//! - `vec4 grid-stride`: a fixed grid (2048 invocations per SM of the H200) looping over the buffer;
//! - `copy_buffer_to_buffer`: the driver's own copy;
//! - then the same through the library (see `through_the_library`).
//!
//! Timing: 20 repeats recorded into one submission, wall clock around submit + wait.

#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

use std::time::Instant;

use wgkernels::{wgpu, DType, Gpu, Tensor};

const SHADER: &str = r#"
@group(0) @binding(0) var<storage, read> src_u: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst_u: array<u32>;
@group(0) @binding(2) var<storage, read> src_v: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> dst_v: array<vec4<u32>>;
override N: u32 = 0u;   // words (u32) or vec4s, as the entry uses
override GRID: u32 = 0u; // invocations in the grid-stride grid

fn gid(w: vec3<u32>, n: vec3<u32>, l: u32) -> u32 { return (w.x + w.y * n.x) * 256u + l; }

@compute @workgroup_size(256)
fn u32_x1(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = gid(w, n, l);
    if (i < N) { dst_u[i] = src_u[i]; }
}

@compute @workgroup_size(256)
fn u32_x4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = w.x + w.y * n.x;
    for (var j = 0u; j < 4u; j++) {
        let i = (g * 4u + j) * 256u + l;
        if (i < N) { dst_u[i] = src_u[i]; }
    }
}

@compute @workgroup_size(256)
fn vec4_x1(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let i = gid(w, n, l);
    if (i < N) { dst_v[i] = src_v[i]; }
}

@compute @workgroup_size(256)
fn vec4_x4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = w.x + w.y * n.x;
    for (var j = 0u; j < 4u; j++) {
        let i = (g * 4u + j) * 256u + l;
        if (i < N) { dst_v[i] = src_v[i]; }
    }
}

@compute @workgroup_size(256)
fn vec4_grid(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    for (var i = gid(w, n, l); i < N; i += GRID) {
        dst_v[i] = src_v[i];
    }
}
"#;

/// Milliseconds per run of `entry` copying between the two bound buffers over `groups`
/// workgroups (2-D grid past the per-dimension limit): `reps` runs recorded into one
/// submission and timed on the wall clock, after one such batch of warm-up.
fn copy_ms(
    gpu: &Gpu,
    module: &wgpu::ShaderModule,
    entry: &str,
    constants: &[(&str, f64)],
    buffers: [(u32, &wgpu::Buffer); 2],
    groups: u32,
    reps: usize,
) -> f64 {
    let device = gpu.device();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: None,
        module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
        cache: None,
    });
    let entries = buffers.map(|(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let max = gpu.info().limits.max_compute_workgroups_per_dimension;
    let (x, y) = if groups <= max { (groups, 1) } else { (max, groups.div_ceil(max)) };
    let run = |count: usize| -> f64 {
        let mut enc = device.create_command_encoder(&Default::default());
        for _ in 0..count {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
        let start = Instant::now();
        gpu.queue().submit([enc.finish()]);
        let _ = device.poll(wgpu::PollType::wait_indefinitely());
        start.elapsed().as_secs_f64() * 1e3
    };
    run(reps); // warm-up (compile, clocks)
    run(reps) / reps as f64
}

fn main() -> wgkernels::Result<()> {
    let gpu = Gpu::new()?;
    println!("{}", gpu.info());
    let args = args::Args::parse("bandwidth [MiB ...]", &[], &[], true);
    let sizes: Vec<u64> =
        args.positional.iter().map(|a| a.parse().unwrap_or_else(|_| panic!("{a:?} is not a size in MiB"))).collect();
    let sizes = if sizes.is_empty() { vec![64, 256, 1024] } else { sizes };
    let device = gpu.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("bandwidth"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let max_binding = gpu.info().limits.max_storage_buffer_binding_size;
    println!("| buffer | variant | ms | GB/s |\n|---|---|---:|---:|");
    for asked in sizes {
        let bytes = (asked << 20).min(max_binding / 16 * 16);
        // The label says what ran: a size past the binding limit is clamped to it.
        let mib = format!("{:.0}", bytes as f64 / (1 << 20) as f64);
        if bytes < asked << 20 {
            println!("| {asked} MiB asked | clamped to {mib} MiB, the adapter's storage binding limit | | |");
        }
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let make = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let (src, dst) = (make("src"), make("dst"));
        // Not zeros: fill the source with a pattern.
        let pattern: Vec<u32> = (0..(bytes / 4) as u32).map(|i| i.wrapping_mul(2654435761)).collect();
        gpu.queue().write_buffer(&src, 0, bytemuck::cast_slice(&pattern));
        let words = (bytes / 4) as u32;
        let vecs = words / 4;
        let grid_invocations = 132 * 2048; // 132 SMs × 2048 resident invocations on the H200
        let variants: [(&str, &str, u32, u32); 5] = [
            ("u32 x1", "u32_x1", words, words.div_ceil(256)),
            ("u32 x4 strided", "u32_x4", words, words.div_ceil(1024)),
            ("vec4 x1", "vec4_x1", vecs, vecs.div_ceil(256)),
            ("vec4 x4 strided", "vec4_x4", vecs, vecs.div_ceil(1024)),
            ("vec4 grid-stride", "vec4_grid", vecs, grid_invocations / 256),
        ];
        let reps = 20;
        for (name, entry, n, groups) in variants {
            let constants = [("N", n as f64), ("GRID", grid_invocations as f64)];
            let (a, b) = if entry.starts_with("u32") { (0, 1) } else { (2, 3) };
            let ms = copy_ms(&gpu, &module, entry, &constants, [(a, &src), (b, &dst)], groups, reps);
            println!("| {mib} MiB | {name} | {ms:.4} | {:.0} |", 2.0 * bytes as f64 / (ms * 1e-3) / 1e9);
        }
        let run_copy = |count: usize| -> f64 {
            let mut enc = device.create_command_encoder(&Default::default());
            for _ in 0..count {
                enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
            }
            let start = Instant::now();
            gpu.queue().submit([enc.finish()]);
            let _ = device.poll(wgpu::PollType::wait_indefinitely());
            start.elapsed().as_secs_f64() * 1e3
        };
        run_copy(reps);
        let ms = run_copy(reps) / reps as f64;
        println!("| {mib} MiB | copy_buffer_to_buffer | {ms:.4} | {:.0} |", 2.0 * bytes as f64 / (ms * 1e-3) / 1e9);
        drop((src, dst));
        through_the_library(&gpu, &module, &mib, bytes, reps)?;
    }
    Ok(())
}

/// The same bytes moved through the library, in the same process and the same way (20
/// repeats back to back, one wait, wall clock), to tell apart what the kernel, the pool's
/// buffers and the library's recording cost:
/// - `vec4 x4 strided, library buffers`: the raw kernel above on two tensors' buffers;
/// - `library neg (fused kernel)`: `x.neg()` realised, the JIT's 16-byte path, the same
///   access pattern, one pooled output per repeat;
/// - the same, timed by `bench::measure` (GPU timestamps, median), as the benchmarks report;
/// - `library add`: `x + y`, 3 × buffer moved.
fn through_the_library(
    gpu: &Gpu,
    module: &wgpu::ShaderModule,
    mib: &str,
    bytes: u64,
    reps: usize,
) -> wgkernels::Result<()> {
    let n = (bytes / 4) as usize;
    let x = Tensor::randn(gpu, &[n], DType::F32, 1)?;
    let y = Tensor::randn(gpu, &[n], DType::F32, 2)?;
    let out = Tensor::randn(gpu, &[n], DType::F32, 3)?;
    gpu.synchronize()?;
    let vecs = (n / 4) as u32;
    let constants = [("N", vecs as f64), ("GRID", 0.0)];
    let ms =
        copy_ms(gpu, module, "vec4_x4", &constants, [(2, x.buffer()?), (3, out.buffer()?)], vecs.div_ceil(1024), reps);
    println!(
        "| {mib} MiB | vec4 x4 strided, library buffers | {ms:.4} | {:.0} |",
        2.0 * bytes as f64 / (ms * 1e-3) / 1e9
    );

    let library = |count: usize, f: &dyn Fn() -> wgkernels::Result<Tensor>| -> wgkernels::Result<f64> {
        gpu.synchronize()?;
        let start = Instant::now();
        for _ in 0..count {
            f()?.realize()?;
        }
        gpu.synchronize()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    let neg = || x.neg();
    let add = || x.add(&y);
    library(reps, &neg)?;
    let ms = library(reps, &neg)? / reps as f64;
    println!(
        "| {mib} MiB | library neg (fused kernel), wall clock | {ms:.4} | {:.0} |",
        2.0 * bytes as f64 / (ms * 1e-3) / 1e9
    );
    let t = wgkernels::bench::measure(gpu, 2, reps, || x.neg()?.realize().map(drop))?;
    println!(
        "| {mib} MiB | library neg, bench::measure ({}) | {:.4} | {:.0} |",
        if t.timestamps { "timestamps" } else { "wall clock" },
        t.median_ms,
        t.rate(2.0 * bytes as f64)
    );
    library(reps, &add)?;
    let ms = library(reps, &add)? / reps as f64;
    println!("| {mib} MiB | library add, wall clock | {ms:.4} | {:.0} |", 3.0 * bytes as f64 / (ms * 1e-3) / 1e9);
    Ok(())
}
