//! A probe, not a benchmark: does the same copy kernel (16-byte loads, four per invocation)
//! run slower on the library's pooled buffers than on buffers made here, or on
//! kernel-written data than on uploaded data? Six source/destination pairings, each with
//! 100 ms of warm-up, measured in three interleaved rounds so that the machine's drift
//! shows as a difference between rounds, not between buffers.
//!
//!     cargo run --release --example alloc_probe [-- MiB ...]      (default: 64 256 1024)
//!
//! On the H200 (2026-11-28): no buffer effect; the first two measurements (~0.3 s) after
//! allocating new 256 MiB buffers ran at 1.5–1.7 TB/s, every later one at 3.2–3.7 TB/s
//! (BENCHMARKS.md).
#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

use std::time::Instant;
use wgkernels::{wgpu, DType, Gpu, Tensor};

const SHADER: &str = r#"
@group(0) @binding(0) var<storage, read> src_v: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst_v: array<vec4<u32>>;
override N: u32 = 0u;
@compute @workgroup_size(256)
fn vec4_x4(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>, @builtin(local_invocation_index) l: u32) {
    let g = w.x + w.y * n.x;
    for (var j = 0u; j < 4u; j++) {
        let i = (g * 4u + j) * 256u + l;
        if (i < N) { dst_v[i] = src_v[i]; }
    }
}
"#;

fn main() -> wgkernels::Result<()> {
    let gpu = Gpu::new()?;
    let device = gpu.device().clone();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let args = args::Args::parse("alloc_probe [MiB ...]", &[], &[], true);
    let sizes: Vec<u64> =
        args.positional.iter().map(|a| a.parse().unwrap_or_else(|_| panic!("{a:?} is not a size in MiB"))).collect();
    for mib in if sizes.is_empty() { vec![64, 256, 1024] } else { sizes } {
        let bytes = mib << 20;
        let n = (bytes / 4) as usize;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let mk = |l| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(l),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let (raw_src, raw_dst) = (mk("raw src"), mk("raw dst"));
        let pattern: Vec<u32> = (0..(bytes / 4) as u32).map(|i| i.wrapping_mul(2654435761)).collect();
        gpu.queue().write_buffer(&raw_src, 0, bytemuck::cast_slice(&pattern));
        let lib_src = Tensor::randn(&gpu, &[n], DType::F32, 1)?;
        let lib_dst = Tensor::randn(&gpu, &[n], DType::F32, 2)?;
        let floats: Vec<f32> = pattern.iter().map(|&u| (u >> 8) as f32).collect();
        let lib_up = Tensor::from_slice(&gpu, &floats, &[n])?;
        let (ls, ld, lu) = (lib_src.buffer()?.clone(), lib_dst.buffer()?.clone(), lib_up.buffer()?.clone());
        gpu.flush()?;
        // A raw buffer holding the library's kernel-written random data.
        let raw_rand = mk("raw rand");
        let mut enc = device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&ls, 0, &raw_rand, 0, bytes);
        gpu.queue().submit([enc.finish()]);
        let _ = device.poll(wgpu::PollType::wait_indefinitely());
        let vecs = (bytes / 16) as u32;
        let constants = [("N", vecs as f64)];
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("vec4_x4"),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
            cache: None,
        });
        let groups = vecs.div_ceil(1024);
        let max = gpu.info().limits.max_compute_workgroups_per_dimension;
        let (gx, gy) = if groups <= max { (groups, 1) } else { (max, groups.div_ceil(max)) };
        let cases: Vec<(&str, &wgpu::Buffer, &wgpu::Buffer)> = vec![
            ("raw -> raw", &raw_src, &raw_dst),
            ("pool(randn) -> pool", &ls, &ld),
            ("pool(uploaded) -> pool", &lu, &ld),
            ("raw(randn copy) -> raw", &raw_rand, &raw_dst),
            ("raw -> pool", &raw_src, &ld),
            ("pool(randn) -> raw", &ls, &raw_dst),
        ];
        for round in 0..3 {
            for (name, s, d) in &cases {
                let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: s.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 1, resource: d.as_entire_binding() },
                    ],
                });
                let run = |count: usize| -> f64 {
                    let mut enc = device.create_command_encoder(&Default::default());
                    for _ in 0..count {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        pass.set_pipeline(&pipeline);
                        pass.set_bind_group(0, &bind, &[]);
                        pass.dispatch_workgroups(gx, gy, 1);
                    }
                    let start = Instant::now();
                    gpu.queue().submit([enc.finish()]);
                    let _ = device.poll(wgpu::PollType::wait_indefinitely());
                    start.elapsed().as_secs_f64() * 1e3
                };
                let warm = Instant::now();
                while warm.elapsed().as_secs_f64() < 0.1 {
                    run(10);
                }
                let ms = run(20) / 20.0;
                println!(
                    "{mib} MiB round {round} | {name} | {ms:.4} ms | {:.0} GB/s",
                    2.0 * bytes as f64 / (ms * 1e-3) / 1e9
                );
            }
        }
    }
    Ok(())
}
