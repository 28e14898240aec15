// Prelude prepended to every kernel module (src/shaders.rs): conversions for the packed
// 16-bit storage dtypes. Buffers are declared array<u32>; element e of a 16-bit tensor is
// the low (e even) or high (e odd) half of word e >> 1. f16 uses the core builtins
// unpack2x16float (exact) and pack_f16x2 below, so it needs no SHADER_F16; bf16 is the top half of an
// f32, converted here.

fn bf16_bits_to_f32(w: u32, e: u32) -> f32 {
    // bf16 is the top half of an f32: shift the wanted half into place.
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (e & 1u) == 1u));
}

fn f32_to_bf16_bits(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    // NaN must stay NaN: rounding could carry its mantissa into the exponent (→ inf).
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return 0x7fc0u;
    }
    // Round to nearest, ties to even.
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

// f32 -> f16 bits, rounded to nearest, ties to even, without a branch. Not pack2x16float:
// WGSL leaves its rounding to the implementation, and NVIDIA's Vulkan driver does not round
// to nearest even (a cast inside a fused chain came out one ulp off there), so results
// would differ between backends. Both candidate results are computed and selected, so a
// subgroup whose values straddle the f16 subnormal range does not run two paths (softmax
// outputs of long rows are in good part f16 subnormals). It is the f16 store of every
// 16-bit kernel where the adapter's own rounding is not used (Gpu::native_f16).
fn f32_to_f16_bits(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    let sign = (u >> 16u) & 0x8000u;
    let a = u & 0x7fffffffu;
    // Normal in f16 (a >= 2^-14): rebias the exponent by 112 and drop 13 mantissa bits,
    // rounding to nearest even; a carry out of the mantissa bumps the exponent, as it
    // should, up to infinity for a >= 65520.
    let normal = (a - 0x38000000u + 0xfffu + ((a >> 13u) & 1u)) >> 13u;
    // Below 2^-14: adding 0.5 puts the value's units of 2^-24 (f16's subnormal step) in the
    // low mantissa bits of a float whose ulp is 2^-24, and the float add rounds to nearest
    // even for us (an f32 subnormal a, flushed to zero or not, rounds to 0 either way).
    let subnormal = bitcast<u32>(bitcast<f32>(a) + 0.5) - 0x3f000000u;
    var h = select(normal, subnormal, a < 0x38800000u);
    h = select(h, 0x7c00u, a >= 0x47800000u); // >= 65536 (and infinity): infinity
    h = select(h, 0x7e00u, a > 0x7f800000u); // NaN stays NaN
    return sign | h;
}

fn pack_f16x2(v: vec2<f32>) -> u32 {
    return f32_to_f16_bits(v.x) | (f32_to_f16_bits(v.y) << 16u);
}
