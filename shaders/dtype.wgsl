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

// f32 -> f16 bits, rounded to nearest, ties to even, in integer arithmetic. Not
// pack2x16float: WGSL leaves its rounding to the implementation, and NVIDIA's Vulkan driver
// does not round to nearest even (a cast inside a fused chain came out one ulp off there),
// so results would differ between backends.
fn f32_to_f16_bits(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    let sign = (u >> 16u) & 0x8000u;
    let a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return sign | 0x7e00u; // NaN stays NaN
    }
    if (a >= 0x477ff000u) {
        return sign | 0x7c00u; // >= 65520 rounds to infinity
    }
    if (a >= 0x38800000u) {
        // Normal in f16 (>= 2^-14): rebias the exponent by 112, drop 13 mantissa bits with
        // round to nearest even; a carry out of the mantissa bumps the exponent, as it should.
        let r = a - 0x38000000u;
        return sign | ((r + 0xfffu + ((r >> 13u) & 1u)) >> 13u);
    }
    if (a < 0x33000000u) {
        return sign; // below 2^-25: rounds to zero (2^-25 itself ties to even, 0)
    }
    // Subnormal in f16: the value in units of 2^-24 is m >> (126 - e), rounded.
    let e = a >> 23u;
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    let rem = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    var q = m >> shift;
    if (rem > half || (rem == half && (q & 1u) == 1u)) {
        q += 1u;
    }
    return sign | q;
}

fn pack_f16x2(v: vec2<f32>) -> u32 {
    return f32_to_f16_bits(v.x) | (f32_to_f16_bits(v.y) << 16u);
}
