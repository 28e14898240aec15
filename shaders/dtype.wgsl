// Prelude prepended to every kernel module (src/shaders.rs): conversions for the packed
// 16-bit storage dtypes. Buffers are declared array<u32>; element e of a 16-bit tensor is
// the low (e even) or high (e odd) half of word e >> 1. f16 uses the core builtins
// unpack2x16float / pack2x16float, so it needs no SHADER_F16; bf16 is the top half of an
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
