//! `GpuOptions::from_env`'s parsing, through `from_vars` (no process environment touched):
//! every switch in its usual spellings, numbers, and an `Err` naming the variable for
//! anything else. Runs without a GPU.

use wgkernels::GpuOptions;

fn with(pairs: &[(&str, &str)]) -> wgkernels::Result<GpuOptions> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    GpuOptions::from_vars(move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

#[test]
fn switches_take_the_usual_spellings() {
    type Field = (&'static str, fn(&GpuOptions) -> bool);
    let fields: [Field; 5] = [
        ("WGK_CHECKED", |o| o.checked),
        ("WGK_AUTOTUNE", |o| o.autotune),
        ("WGK_FUSION", |o| o.fusion),
        ("WGK_FUSE_MATMUL", |o| o.fuse_matmul_epilogues),
        ("WGK_NATIVE_F16", |o| o.native_f16),
    ];
    for (name, field) in fields {
        for on in ["1", "true", "TRUE", "yes", "On", " on "] {
            assert!(field(&with(&[(name, on)]).unwrap()), "{name}={on:?} must turn it on");
        }
        for off in ["0", "false", "False", "no", "off", "OFF"] {
            assert!(!field(&with(&[(name, off)]).unwrap()), "{name}={off:?} must turn it off");
        }
        for bad in ["2", "of", "enable", "y"] {
            let err = with(&[(name, bad)]).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(bad), "{name}={bad:?}: {err}");
        }
        // Unset and empty keep the default.
        assert_eq!(field(&with(&[]).unwrap()), field(&GpuOptions::default()), "{name} unset");
        assert_eq!(field(&with(&[(name, "")]).unwrap()), field(&GpuOptions::default()), "{name} empty");
    }
    assert_eq!(with(&[("WGK_TIERED_JIT", "off")]).unwrap().tiered_jit, Some(false));
    assert_eq!(with(&[("WGK_TIERED_JIT", "yes")]).unwrap().tiered_jit, Some(true));
    assert_eq!(with(&[]).unwrap().tiered_jit, None);
    assert!(with(&[("WGK_TIERED_JIT", "maybe")]).is_err());
}

#[test]
fn numbers_paths_and_backends() {
    let o = with(&[
        ("WGK_FUSED_UNROLL", "4"),
        ("WGK_FUSED_WORKGROUP", "512"),
        ("WGK_WARMUP_MS", "250"),
        ("WGK_FLUSH_MB", "0"),
        ("WGK_CACHE_DIR", "/tmp/wgk-cache"),
        ("WGK_BACKEND", "GL"),
        ("WGK_ADAPTER", "llvmpipe"),
        ("WGK_FIRST_SUBMIT", "16"),
    ])
    .unwrap();
    assert_eq!((o.fused_unroll, o.fused_workgroup, o.first_submit), (4, 512, 16));
    assert_eq!((o.measure_warmup_ms, o.measure_flush_mb), (Some(250.0), Some(0)));
    assert_eq!(o.cache_dir.as_deref(), Some(std::path::Path::new("/tmp/wgk-cache")));
    assert_eq!(o.backends, Some(wgkernels::wgpu::Backends::GL));
    assert_eq!(o.adapter_name.as_deref(), Some("llvmpipe"));
    // The cache folder falls back to XDG_CACHE_HOME, then HOME.
    let o = with(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]).unwrap();
    assert_eq!(o.cache_dir.as_deref(), Some(std::path::Path::new("/x/wgkernels")));
    let o = with(&[("HOME", "/h")]).unwrap();
    assert_eq!(o.cache_dir.as_deref(), Some(std::path::Path::new("/h/.cache/wgkernels")));
    for (name, bad) in [
        ("WGK_FUSED_UNROLL", "four"),
        ("WGK_WARMUP_MS", "-1"),
        ("WGK_WARMUP_MS", "soon"),
        ("WGK_FLUSH_MB", "1.5"),
        ("WGK_BACKEND", "cuda"),
        ("WGK_FIRST_SUBMIT", "-4"),
    ] {
        let err = with(&[(name, bad)]).unwrap_err().to_string();
        assert!(err.contains(name), "{name}={bad:?}: {err}");
    }
}

#[test]
fn f32_matmul_precision_reads_its_three_settings() {
    use wgkernels::MatmulPrecision;
    assert_eq!(with(&[]).unwrap().f32_matmul_precision, MatmulPrecision::Highest);
    for (v, p) in
        [("highest", MatmulPrecision::Highest), ("High", MatmulPrecision::High), ("medium", MatmulPrecision::Medium)]
    {
        assert_eq!(with(&[("WGK_F32_MATMUL_PRECISION", v)]).unwrap().f32_matmul_precision, p);
    }
    let err = with(&[("WGK_F32_MATMUL_PRECISION", "tf32")]).unwrap_err().to_string();
    assert!(err.contains("WGK_F32_MATMUL_PRECISION"), "{err}");
}
