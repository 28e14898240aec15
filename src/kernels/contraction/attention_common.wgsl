// Shared by the tensor-core attention kernels (attention_coop.wgsl, attention_coop_bwd.wgsl),
// placed after the dtype prelude: constants, row addressing through params and the staging
// of f16 rows into the workgroup array `tiles` each of them declares.

const SUBGROUP: u32 = 32u;
// Column stride of the f32 buffers S (and dP) accumulators are stored to: 20, not 16, so
// that a coopStore's 32 lanes hit 32 different banks (src/ops/attention.rs, S_STRIDE).
const SST: u32 = {{SST}}u;
// Finite stand-in for −∞ (WGSL has no infinity literal).
const NEG_BIG: f32 = -0x1.fffffep+127f; // -f32::MAX (browsers reject the decimal -3.4028235e38)
const LOG2E: f32 = 1.4426950408889634;

// Eight halves from a 16-byte word into workgroup memory at `at` (through f32, exactly:
// naga 30 does not take bitcast<vec2<f16>>(u32)).
fn put8(at: u32, w: vec4<u32>) {
    let a = vec2<f16>(unpack2x16float(w.x));
    let b = vec2<f16>(unpack2x16float(w.y));
    let c = vec2<f16>(unpack2x16float(w.z));
    let d = vec2<f16>(unpack2x16float(w.w));
    tiles[at] = a.x;
    tiles[at + 1u] = a.y;
    tiles[at + 2u] = b.x;
    tiles[at + 3u] = b.y;
    tiles[at + 4u] = c.x;
    tiles[at + 5u] = c.y;
    tiles[at + 6u] = d.x;
    tiles[at + 7u] = d.y;
}

// Scaled inputs (f32 and bf16 on tensor cores): each of q, k, v (and dO) is multiplied by a
// power of two from its largest |x| (attention_range.wgsl) before it goes to f16.

// 2^e (e in [−126, 127]) exactly, from its bits.
fn pow2(e: i32) -> f32 {
    return bitcast<f32>(u32(e + 127) << 23u);
}

// The power of two that brings the largest |x| (f32 bits) into [2^13, 2^14); clamped so that
// every factor derived from it, and their products by two, are normal f32.
fn range_exp(max_bits: u32) -> i32 {
    let e = i32((max_bits >> 23u) & 0xffu) - 127;
    return clamp(13 - e, -60, 60);
}

// Four halves into workgroup memory at `at`.
fn put4(at: u32, x: vec4<f16>) {
    tiles[at] = x.x;
    tiles[at + 1u] = x.y;
    tiles[at + 2u] = x.z;
    tiles[at + 3u] = x.w;
}

// Eight bf16 (a 16-byte word: element 2i in the low half of word i), times f, as f16 at `at`
// (exact: bf16's 8 significant bits fit f16's 11 wherever the scaled value is normal).
fn put8_bf16(at: u32, w: vec4<u32>, f: f32) {
    let even = bitcast<vec4<f32>>(w << vec4<u32>(16u)) * f;
    let odd = bitcast<vec4<f32>>(w & vec4<u32>(0xffff0000u)) * f;
    put4(at, vec4<f16>(vec4<f32>(even.x, odd.x, even.y, odd.y)));
    put4(at + 4u, vec4<f16>(vec4<f32>(even.z, odd.z, even.w, odd.w)));
}

// The hi part of an f32 is its sign, exponent and top 10 mantissa bits (f16's, exact in f16
// for the scaled range), cut by a mask: the lo part x − hi is then exact in f32 and below
// 2^−10·|x|, rounded to f16's 11 bits. (With hi rounded by f32 → f16 → f32 instead, the
// H200's results had f16's error, as if every lo part were 0: its compiler seems to fold the
// round trip. BENCHMARKS.md, ninth round, call 1.)
const HI_BITS: u32 = 0xffffe000u;

// The hi and lo parts of four f32 elements (a 16-byte word) times f.
fn hi_f32(w: vec4<u32>, f: f32) -> vec4<f32> {
    return bitcast<vec4<f32>>(bitcast<vec4<u32>>(bitcast<vec4<f32>>(w) * f) & vec4<u32>(HI_BITS));
}
fn hi4(w: vec4<u32>, f: f32) -> vec4<f16> {
    return vec4<f16>(hi_f32(w, f));
}
fn lo4(w: vec4<u32>, f: f32) -> vec4<f16> {
    return vec4<f16>(bitcast<vec4<f32>>(w) * f - hi_f32(w, f));
}
