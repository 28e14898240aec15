// Probe, run once per device before any kernel uses it (Gpu::native_f16): does the
// adapter's own f32 -> f16 conversion (`vec2<f16>(v)`, one instruction on most GPUs) round to
// nearest even, like the library's exact integer/float routine f32_to_f16_bits (dtype.wgsl)?
// WGSL leaves the rounding of that conversion to the implementation. Each invocation
// converts one input both ways and writes the xor of the two results' bits (0 where they
// agree; NaNs, whose payloads may differ, count as agreeing). The host builds the inputs:
// values just below, at and just above the rounding ties of every exponent from below the
// f16 subnormal range to past its largest finite value, and random bit patterns.

enable f16;

@group(0) @binding(0) var<storage, read> values: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> mismatch: array<u32>;

@compute @workgroup_size(64)
fn f16_probe(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= arrayLength(&values)) {
        return;
    }
    let v = values[i];
    // As the kernels store it (src/ops/norm.rs, unit_store): rounded by the conversion to
    // f16, then packed exactly.
    let native = pack2x16float(vec2<f32>(vec2<f16>(v)));
    let exact = pack_f16x2(v);
    let is_nan = (bitcast<vec2<u32>>(v) & vec2<u32>(0x7fffffffu)) > vec2<u32>(0x7f800000u);
    let lanes = select(vec2<u32>(native & 0xffffu, native >> 16u) ^ vec2<u32>(exact & 0xffffu, exact >> 16u), vec2<u32>(0u), is_nan);
    mismatch[i] = lanes.x | lanes.y;
}
