// The gradient of a fused qkv projection from attention's backward: out [B, S, 3, H, D]
// (dq, dk, dv side by side per token, as the projection wrote q, k, v) from dq, dk, dv
// [B, H, S, D] f32 (the backward kernels' layout), rounded to out's dtype.
//
// One invocation per pair of adjacent output elements (D is even, so a pair never crosses
// a head): neighbouring invocations read neighbouring pairs of one source row and write
// neighbouring words. Bytes per pair: 8 read, 4 (16-bit) or 8 (f32) written; no FLOPs.
//
// Placeholders: WORD (out's element type: u32 for a 16-bit pair, vec2<u32> for f32),
// STORE (writes the pair `v` at pair index `p`).

// params: PackParams, mirrored by the #[repr(C)] struct of that name in attention.rs:
// batch, heads, sequence, head dim, and the pairs of out (B·S·3·H·D / 2).
struct PackParams {
    b: u32,
    h: u32,
    s: u32,
    d: u32,
    pairs: u32,
}

@group(0) @binding(0) var<storage, read> dq: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read> dk: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> dv: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<{{WORD}}>;
@group(0) @binding(4) var<storage, read> params: PackParams;

@compute @workgroup_size(256)
fn pack_qkv_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (p >= params.pairs) {
        return;
    }
    // p = (((b·S + s)·3 + part)·H + h)·D/2 + d/2.
    let half_d = params.d / 2u;
    let dp = p % half_d;
    var t = p / half_d;
    let h = t % params.h;
    t /= params.h;
    let part = t % 3u;
    t /= 3u;
    let s = t % params.s;
    let b = t / params.s;
    let src = ((b * params.h + h) * params.s + s) * half_d + dp;
    var v: vec2<f32>;
    if (part == 0u) {
        v = dq[src];
    } else if (part == 1u) {
        v = dk[src];
    } else {
        v = dv[src];
    }
    {{STORE}}
}
