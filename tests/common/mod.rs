//! Shared test harness: one device per test binary, float64 references, seeded inputs,
//! and `assert_close` with per-dtype tolerances that names the worst element.
#![allow(dead_code)]

use wgkernels::{DType, Gpu, Tensor};

/// The device for this test binary, chosen as users get it (`WGK_BACKEND`, `WGK_CHECKED`).
/// (The browser tests, tests/web.rs, await `Gpu::new_async` instead.)
#[cfg(not(target_arch = "wasm32"))]
pub fn gpu() -> Gpu {
    static GPU: std::sync::OnceLock<Gpu> = std::sync::OnceLock::new();
    GPU.get_or_init(|| Gpu::new().expect("a GPU or software adapter (apt-get install mesa-vulkan-drivers)")).clone()
}

/// Says, where CI's log shows it, that a test checked nothing on this adapter and why:
/// written straight to the process's stderr, past the harness's capture of `eprintln!`
/// (which shows a passing test's output only with `--nocapture`).
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why} (run it on an adapter that has it, e.g. the H200)");
}

/// (atol, rtol) for results stored in `dtype` after f32 math. 16-bit storage rounds each
/// stored value to half an ulp: 2^-11 relative for f16, 2^-8 for bf16.
pub fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-5, 1e-5),
        DType::F16 => (1e-3, 2e-3),
        DType::BF16 => (1e-2, 1e-2),
    }
}

/// Checks |got − want| ≤ atol + rtol·|want| everywhere; on failure names the worst element.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        let excess = if g.is_nan() || w.is_nan() {
            if g.is_nan() && w.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else if g == w {
            0.0 // equal infinities included
        } else {
            (g - w).abs() - (atol + rtol * w.abs())
        };
        if excess > 0.0 && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i} is {} but should be {} (|diff| {:e} > atol {atol:e} + rtol {rtol:e}·|want|)",
            got[i],
            want[i],
            (got[i] as f64 - want[i]).abs()
        );
    }
}

/// Deterministic values in [-2, 2) that are never all zero (xorshift).
pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// LayerNorm (`rms` false) or RMSNorm of each row of `x` (rows of `n`), with optional
/// weight and bias, in f64.
pub fn norm_ref(x: &[f64], n: usize, w: Option<&[f64]>, b: Option<&[f64]>, eps: f64, rms: bool) -> Vec<f64> {
    x.chunks(n)
        .flat_map(|row| {
            let mean = if rms { 0.0 } else { row.iter().sum::<f64>() / n as f64 };
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            (0..n)
                .map(move |j| (row[j] - mean) * rstd * w.map_or(1.0, |w| w[j]) + b.map_or(0.0, |b| b[j]))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Values as a tensor of `dtype` holds them (rounded), widened to f64 for references.
pub fn rounded(values: &[f32], dtype: DType) -> Vec<f64> {
    values
        .iter()
        .map(|&x| match dtype {
            DType::F32 => x as f64,
            DType::F16 => half::f16::from_f32(x).to_f64(),
            DType::BF16 => half::bf16::from_f32(x).to_f64(),
        })
        .collect()
}

/// `v` rounded to nearest even in `dtype` (as a store of an f32 computation would round it
/// where the value is exact in f32), widened back to f64.
pub fn round_to(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
    }
}

/// A random tensor and its values (as stored) in f64.
pub fn random_tensor(gpu: &Gpu, shape: &[usize], dtype: DType, seed: u64) -> (Tensor, Vec<f64>) {
    let n: usize = shape.iter().product();
    let v = random_vec(n, seed);
    (Tensor::from_f32(gpu, &v, shape, dtype).unwrap(), rounded(&v, dtype))
}

/// Row-major strides of `shape`.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// CPU reference of a strided view: element at each row-major index of `shape`.
pub fn gather(data: &[f64], shape: &[usize], strides: &[usize], offset: usize) -> Vec<f64> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut i| {
            let mut e = offset;
            for d in (0..shape.len()).rev() {
                e += (i % shape[d]) * strides[d];
                i /= shape[d];
            }
            data[e]
        })
        .collect()
}

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Validates `wgsl` with naga and writes SPIR-V, MSL, HLSL and GLSL for `entry` (SPIR-V and
/// MSL only for cooperative-matrix kernels, which naga 30 cannot write for HLSL/GLSL; no
/// GLSL for modules that enable f16).
pub fn translate(wgsl: &str, entry: &str, constants: &[(&str, f64)]) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| format!("parse: {}", e.emit_to_string(wgsl)))?;
    browser_lint(wgsl)?;
    let mut validator = Validator::new(ValidationFlags::all(), Capabilities::all());
    let info = validator.validate(&module).map_err(|e| format!("validate: {}", e.emit_to_string(wgsl)))?;
    let constants: naga::back::PipelineConstants = constants.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, entry)),
        &constants,
    )
    .map_err(|e| format!("overrides: {e}"))?;
    let (module, info) = (module.as_ref(), info.as_ref());

    let spv_opts = spv::Options::default();
    let spv_pipe = spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: entry.to_string() };
    spv::write_vec(module, info, &spv_opts, Some(&spv_pipe)).map_err(|e| format!("spir-v: {e}"))?;

    let msl_opts = msl::Options { lang_version: (2, 4), ..Default::default() };
    let msl_pipe = msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, entry.to_string())),
        ..Default::default()
    };
    msl::write_string(module, info, &msl_opts, &msl_pipe).map_err(|e| format!("msl: {e}"))?;

    // naga 30 writes cooperative matrices only for SPIR-V and MSL; on DX12 and GL the
    // library never selects the coop path (the adapter reports no configuration).
    if wgsl.contains("enable wgpu_cooperative_matrix") {
        return Ok(());
    }

    let hlsl_opts = hlsl::Options { shader_model: hlsl::ShaderModel::V6_2, ..Default::default() };
    let hlsl_pipe = hlsl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, entry.to_string())) };
    let mut hlsl_out = String::new();
    hlsl::Writer::new(&mut hlsl_out, &hlsl_opts, &hlsl_pipe)
        .write(module, info, None)
        .map_err(|e| format!("hlsl: {e}"))?;

    // naga 30's GLSL writer has no 16-bit floats, and wgpu's GL backend offers no
    // SHADER_F16: modules that enable f16 (native f16 rounding, tensor cores) never reach GL.
    if wgsl.lines().any(|l| l.trim() == "enable f16;") {
        return Ok(());
    }

    let glsl_opts =
        glsl::Options { version: glsl::Version::Embedded { version: 310, is_webgl: false }, ..Default::default() };
    let glsl_pipe = glsl::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.to_string(),
        multiview: None,
    };
    let mut glsl_out = String::new();
    glsl::Writer::new(&mut glsl_out, module, info, &glsl_opts, &glsl_pipe, naga::proc::BoundsCheckPolicies::default())
        .map_err(|e| format!("glsl: {e}"))?
        .write()
        .map_err(|e| format!("glsl: {e}"))?;
    Ok(())
}

/// What browsers' WGSL compiler (Tint) rejects and naga accepts, seen in headless Chromium
/// (tests/web.rs): a decimal f32 literal past f32::MAX (`3.4028235e38` rounds just above it;
/// write `0x1.fffffep+127f`), and a constant expression that evaluates to an infinity or NaN
/// (`bitcast<f32>(0xff800000u)`; bitcast a `let` instead), which naga leaves unfolded in a
/// function body: both are found in the text.
pub fn browser_lint(wgsl: &str) -> Result<(), String> {
    let code: String = wgsl.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let wgsl = code.as_str();
    let bytes = wgsl.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_number =
            bytes[i].is_ascii_digit() && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts_number {
            i += 1;
            continue;
        }
        let start = i;
        let hex = bytes[i] == b'0' && bytes.get(i + 1).is_some_and(|&c| c == b'x' || c == b'X');
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric()
                || bytes[i] == b'.'
                || ((bytes[i] == b'+' || bytes[i] == b'-') && matches!(bytes[i - 1], b'e' | b'E' | b'p' | b'P')))
        {
            i += 1;
        }
        let token = &wgsl[start..i];
        let decimal_float = !hex && (token.contains('.') || token.contains(['e', 'E'])) && !token.ends_with('h');
        if decimal_float {
            let value: f64 = token.trim_end_matches('f').parse().unwrap_or(0.0);
            if value.abs() > f32::MAX as f64 {
                return Err(format!("browser: the f32 literal {token} is past f32::MAX (write 0x1.fffffep+127f)"));
            }
        }
    }
    // bitcast<f32>(<hex literal>) with all exponent bits set: an infinity or NaN constant.
    for (at, _) in wgsl.match_indices("bitcast<f32>(") {
        let arg: String = wgsl[at + 13..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        let Some(hex) = arg.strip_prefix("0x").map(|h| h.trim_end_matches(['u', 'i'])) else { continue };
        let bits = u32::from_str_radix(hex, 16).map_err(|e| format!("bitcast literal {arg}: {e}"))?;
        if !f32::from_bits(bits).is_finite() {
            return Err(format!(
                "browser: bitcast<f32>({arg}) is the constant {} (make it at run time from a let)",
                f32::from_bits(bits)
            ));
        }
    }
    Ok(())
}
