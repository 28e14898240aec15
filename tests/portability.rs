//! Every shader specialisation the library can build is parsed and validated by naga and
//! translated to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL): that is how we
//! know the kernels compile on backends this machine does not have. Cooperative-matrix
//! kernels go to SPIR-V and MSL, the targets naga can write them for.

mod common;
use common::translate;

#[test]
fn every_specialisation_translates_to_every_backend() {
    let kernels = wgkernels::shaders::all_kernels();
    assert!(kernels.len() > 50, "expected every dtype/layout/op combination, got {}", kernels.len());
    let mut failures = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let wgsl = k.wgsl();
        if let Some(pos) = wgsl.find("{{") {
            failures.push(format!(
                "{}: unsubstituted placeholder at {}",
                k.label(),
                &wgsl[pos..(pos + 30).min(wgsl.len())]
            ));
            continue;
        }
        if let Err(e) = translate(&wgsl, k.entry, &k.constants()) {
            failures.push(format!("{} (#{i} of all_kernels()): {e}", k.label()));
        }
    }
    assert!(failures.is_empty(), "{} of {} kernels failed:\n{}", failures.len(), kernels.len(), failures.join("\n"));
}

#[test]
fn every_shader_family_is_covered() {
    let kernels = wgkernels::shaders::all_kernels();
    let shaders = wgkernels::shaders::all_shaders();
    for shader in &shaders {
        assert!(kernels.iter().any(|k| k.shader == *shader), "{shader:?} has no specialisation in all_kernels()");
    }
    for k in &kernels {
        assert!(shaders.contains(&k.shader), "{} comes from a shader all_shaders() does not list", k.label());
    }
    // Names identify sources in the pipeline cache: two families must not share one.
    let mut names: Vec<&str> = shaders.iter().map(|s| s.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), shaders.len(), "shader names must be unique");
}

/// Every kernel params struct is a `#[repr(C)]` Rust struct mirrored by a WGSL struct of the
/// same name: the same fields in the same order at the same byte offsets, the same size
/// (naga's layout of the WGSL, from a kernel that declares it).
#[test]
fn params_structs_mirror_their_wgsl() {
    let kernels = wgkernels::shaders::all_kernels();
    let params = wgkernels::shaders::all_params();
    assert!(!params.is_empty());
    for layout in params {
        let decl = format!("struct {} {{", layout.name);
        let wgsl = kernels
            .iter()
            .map(|k| k.wgsl())
            .find(|w| w.contains(&decl) && !w.contains("enable wgpu_cooperative_matrix"))
            .unwrap_or_else(|| panic!("no kernel declares {}", layout.name));
        let module = naga::front::wgsl::parse_str(&wgsl).unwrap();
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match &ty.inner {
                naga::TypeInner::Struct { members, span } if ty.name.as_deref() == Some(layout.name) => {
                    Some((members.clone(), *span))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{} not found by naga", layout.name));
        let wgsl_fields: Vec<(String, usize)> =
            members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize)).collect();
        let rust_fields: Vec<(String, usize)> = layout.fields.iter().map(|(n, o)| (n.to_string(), *o)).collect();
        assert_eq!(wgsl_fields, rust_fields, "{}: WGSL fields vs Rust fields", layout.name);
        assert_eq!(span as usize, layout.size, "{}: WGSL size vs Rust size", layout.name);
    }
}
