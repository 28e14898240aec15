// Shared by the tensor-core attention kernels (attention_coop.wgsl, attention_coop_bwd.wgsl),
// placed after the dtype prelude: constants, row addressing through params and the staging
// of f16 rows into the workgroup array `tiles` each of them declares.

const SUBGROUP: u32 = 32u;
// Column stride of the f32 buffers S (and dP) accumulators are stored to: 20, not 16, so
// that a coopStore's 32 lanes hit 32 different banks (src/ops/attention.rs, S_STRIDE).
const SST: u32 = {{SST}}u;
// Finite stand-in for −∞ (WGSL has no infinity literal).
const NEG_BIG: f32 = -3.4028235e38;
const LOG2E: f32 = 1.4426950408889634;

// Element index of row s of a q/k/v/o/dO view (batch b, head h), its params at `at`:
// offset, batch, head and row strides.
fn row_base(at: u32, b: u32, h: u32, s: u32) -> u32 {
    return params[at] + b * params[at + 1u] + h * params[at + 2u] + s * params[at + 3u];
}

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
