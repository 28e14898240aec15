//! Every shader specialisation the library can build is parsed and validated by naga and
//! translated to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL): that is how we
//! know the kernels compile on backends this machine does not have. Cooperative-matrix
//! kernels go to SPIR-V and MSL, the targets naga can write them for.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn translate(wgsl: &str, entry: &str, constants: &[(&str, f64)]) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| format!("parse: {}", e.emit_to_string(wgsl)))?;
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
    for shader in wgkernels::shaders::Shader::ALL {
        assert!(kernels.iter().any(|k| k.shader == shader), "{shader:?} has no specialisation in all_kernels()");
    }
}
