//! The benchmark report as a picture: ours ÷ PyTorch per kernel, one bar per bench row that
//! has a PyTorch figure, on a log scale with the 1× line marked, from the JSON lines that
//! `cargo bench --bench kernels -- --reference torch.json --json out.json` writes.
//!
//!     cargo run --release --example report_plot -- OUT.svg IN.json [IN.json ...]
//!
//! Files oldest first: a later file's row replaces an earlier row of the same label.
//!
//! BENCHMARKS.svg is made this way from the H200 runs kept in benchmarks/.

use std::fmt::Write as _;

struct Bar {
    label: String,
    ratio: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, inputs)) = args.split_first() else {
        eprintln!("usage: report_plot OUT.svg IN.json [IN.json ...]");
        std::process::exit(2);
    };
    let mut bars = Vec::new();
    for path in inputs {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let (Some(ours), Some(torch)) = (v["rate"].as_f64(), v["torch_rate"].as_f64()) else { continue };
            if !(ours.is_finite() && torch > 0.0) {
                continue;
            }
            let label = format!("{} {} {} {}", s("bench"), s("size"), s("dtype"), s("variant"));
            // A later file's row replaces an earlier one of the same label: list files oldest first.
            match bars.iter_mut().find(|b: &&mut Bar| b.label == label) {
                Some(bar) => bar.ratio = ours / torch,
                None => bars.push(Bar { label, ratio: ours / torch }),
            }
        }
    }
    if bars.is_empty() {
        eprintln!("no rows with a PyTorch figure in {inputs:?}");
        std::process::exit(1);
    }
    std::fs::write(out, svg(&bars)).unwrap_or_else(|e| panic!("{out}: {e}"));
    println!("{} bars written to {out}", bars.len());
}

/// Horizontal bars, log2 scale from 1/128× to 4×.
fn svg(bars: &[Bar]) -> String {
    let (lo, hi) = (-7.0f64, 2.0f64);
    let (label_w, plot_w, row_h, top) = (430.0, 420.0, 18.0, 50.0);
    let w = label_w + plot_w + 60.0;
    let h = top + row_h * bars.len() as f64 + 40.0;
    let x = |r: f64| label_w + (r.log2().clamp(lo, hi) - lo) / (hi - lo) * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14">wgkernels ÷ PyTorch (CUDA) on the same H200, same work counted; log scale</text>"#
    );
    for k in lo as i32..=hi as i32 {
        let r = 2f64.powi(k);
        let xx = x(r);
        let (stroke, width) = if k == 0 { ("black", 1.5) } else { ("#ccc", 0.5) };
        let _ = writeln!(
            s,
            r#"<line x1="{xx:.1}" y1="{}" x2="{xx:.1}" y2="{}" stroke="{stroke}" stroke-width="{width}"/>"#,
            top - 8.0,
            h - 30.0
        );
        let tick = if k >= 0 { format!("{}×", 1 << k) } else { format!("1/{}", 1 << -k) };
        let _ = writeln!(s, r#"<text x="{xx:.1}" y="{}" text-anchor="middle">{tick}</text>"#, h - 14.0);
    }
    for (i, b) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let color = if b.ratio >= 1.0 {
            "#2ca02c"
        } else if b.ratio >= 0.5 {
            "#1f77b4"
        } else {
            "#d62728"
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 6.0,
            y + 12.0,
            escape(&b.label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{label_w}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
            y + 3.0,
            x(b.ratio) - label_w,
            row_h - 6.0
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{:.2}</text>"#, x(b.ratio) + 4.0, y + 12.0, b.ratio);
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
