//! What element-wise fusion buys: gelu(x·a + b)·c + x over sizes from 4 K to 64 M elements
//! (1 M on a software device), fused (one generated kernel) against unfused (five kernels),
//! as a table and as an SVG plot of GB/s and the gain.
//!
//!     cargo run --release --example fusion_gains [-- --svg fusion_gains.svg]

#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

use std::fmt::Write as _;

use wgkernels::bench::measure;
use wgkernels::{DType, Gpu, Result, Tensor};

fn main() -> Result<()> {
    let args = args::Args::parse("fusion_gains [--svg OUT.svg]", &[], &["--svg"], false);
    let svg_path = args.value("--svg").unwrap_or("fusion_gains.svg").to_string();
    let gpu = Gpu::new()?;
    let software = gpu.info().device_type == wgpu::DeviceType::Cpu;
    let max_log2 = if software { 20 } else { 26 };
    let reps = if software { 3 } else { 10 };
    println!("gelu(x·a + b)·c + x, f32, on {} — GB/s count 5 tensors (4 read, 1 written)\n", gpu.info().name);
    println!("{:>10} {:>14} {:>14} {:>8}", "elements", "fused GB/s", "unfused GB/s", "gain");
    let mut points = Vec::new();
    for log2 in (12..=max_log2).step_by(2) {
        let n = 1usize << log2;
        let t = |seed| Tensor::randn(&gpu, &[n], DType::F32, seed);
        let (x, a, b, c) = (t(1)?, t(2)?, t(3)?, t(4)?);
        let chain = || x.mul(&a)?.add(&b)?.gelu_tanh()?.mul(&c)?.add(&x);
        let bytes = 5.0 * n as f64 * 4.0;
        let mut rates = [0.0; 2];
        for (k, fused) in [true, false].into_iter().enumerate() {
            gpu.set_fusion(fused);
            rates[k] = measure(&gpu, 2, reps, || chain().and_then(|t| t.realize().map(drop)))?.rate(bytes);
        }
        gpu.set_fusion(true);
        println!("{n:>10} {:>14.1} {:>14.1} {:>7.2}×", rates[0], rates[1], rates[0] / rates[1]);
        points.push((n, rates[0], rates[1]));
    }
    std::fs::write(&svg_path, plot(&points, &gpu.info().name)).map_err(|e| wgkernels::Error::InvalidArgument {
        op: "fusion_gains",
        msg: format!("writing {svg_path}: {e}"),
    })?;
    println!("\nplot written to {svg_path}");
    Ok(())
}

/// (elements, fused GB/s, unfused GB/s)
type Point = (usize, f64, f64);

/// A log-x line plot of fused and unfused GB/s (left axis) and the gain (right axis).
fn plot(points: &[Point], adapter: &str) -> String {
    let (w, h, l, r, t, b) = (720.0, 420.0, 70.0, 70.0, 40.0, 50.0);
    let (x0, x1) = ((points[0].0 as f64).log2(), (points[points.len() - 1].0 as f64).log2());
    let ymax = points.iter().map(|p| p.1.max(p.2)).fold(1e-9, f64::max) * 1.1;
    let gmax = points.iter().map(|p| p.1 / p.2).fold(1.0, f64::max).ceil() + 1.0;
    let px = |n: usize| l + ((n as f64).log2() - x0) / (x1 - x0).max(1e-9) * (w - l - r);
    let py = |v: f64| h - b - v / ymax * (h - t - b);
    let pg = |g: f64| h - b - g / gmax * (h - t - b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{l}" y="20" font-size="14">gelu(x·a+b)·c+x on {adapter}: fused vs unfused</text>"#);
    let _ = writeln!(s, r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#, h - b, w - r, h - b);
    let _ = writeln!(s, r#"<line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="black"/>"#, h - b);
    for &(n, _, _) in points {
        let label = if n >= 1 << 20 { format!("{}M", n >> 20) } else { format!("{}K", n >> 10) };
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#, px(n), h - b + 18.0);
    }
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{v:.0}</text>"#, l - 6.0, py(v) + 4.0);
        let g = gmax * k as f64 / 4.0;
        let _ = writeln!(s, r#"<text x="{}" y="{}">{g:.1}×</text>"#, w - r + 6.0, pg(g) + 4.0);
    }
    let _ = writeln!(s, r#"<text x="14" y="{}" transform="rotate(-90 14 {})">GB/s</text>"#, h / 2.0, h / 2.0);
    let line = |sel: &dyn Fn(&Point) -> (f64, f64), color: &str, dash: &str| {
        let pts: Vec<String> = points
            .iter()
            .map(|p| {
                let (x, y) = sel(p);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        format!(r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" {dash}/>"#, pts.join(" "))
    };
    let _ = writeln!(s, "{}", line(&|p| (px(p.0), py(p.1)), "#1f77b4", ""));
    let _ = writeln!(s, "{}", line(&|p| (px(p.0), py(p.2)), "#d62728", ""));
    let _ = writeln!(s, "{}", line(&|p| (px(p.0), pg(p.1 / p.2)), "#2ca02c", r#"stroke-dasharray="6 4""#));
    for (i, (name, color)) in
        [("fused GB/s", "#1f77b4"), ("unfused GB/s", "#d62728"), ("gain (right axis)", "#2ca02c")].iter().enumerate()
    {
        let y = t + 16.0 * i as f64 + 10.0;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}">{name}</text>"#,
            l + 10.0,
            y - 4.0,
            l + 30.0,
            y
        );
    }
    s.push_str("</svg>\n");
    s
}
