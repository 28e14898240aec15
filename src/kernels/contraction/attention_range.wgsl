// The largest |x| of each of q, k and v (and dO), for the tensor-core kernels on f32 and bf16
// inputs (flag SCALED of attention_coop.wgsl, BF16 of attention_coop_bwd.wgsl), which scale
// each input by a power of two from it so that its f16 parts neither overflow nor lose their
// low bits.
//
// Workgroup row y = 0, 1, 2 (and 3, flag DOUT, for the backward) reads q, k, v (and dO): f32
// or, flag BF16, bf16 views, addressed through the attention params (offset and batch,
// head, row strides at 8, 12, 16, 30) in 16-byte words, grid-stride;
// each subgroup's max goes to ranges[y] by atomicMax on the f32 bits (non-negative floats
// order as their bits). Traffic: (S_q·H + 2·S_k·H_kv)·B·D elements read (and dO's S_q·H·B·D),
// one pass, memory bound; the attention that follows reads K and V once per query block.

const WORKGROUP: u32 = 256u;
// Elements per 16-byte word: 4 (f32), 8 (bf16).
const EPW: u32 = {{EPW}}u;

@group(0) @binding(0) var<storage, read> q: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> k: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> v: array<vec4<u32>>;
// [q, k, v, dO]: zero before the dispatch.
@group(0) @binding(3) var<storage, read_write> ranges: array<atomic<u32>, 4>;
@group(0) @binding(4) var<storage, read> params: AttentionParams;
//#if DOUT
@group(0) @binding(5) var<storage, read> dout: array<vec4<u32>>;
//#endif

// The largest |x| of a word's elements.
fn word_max(x: vec4<u32>) -> f32 {
//#if BF16
    let a = max(abs(bitcast<vec4<f32>>(x << vec4<u32>(16u))), abs(bitcast<vec4<f32>>(x & vec4<u32>(0xffff0000u))));
//#else
    let a = abs(bitcast<vec4<f32>>(x));
//#endif
    return max(max(a.x, a.y), max(a.z, a.w));
}

@compute @workgroup_size(WORKGROUP)
fn attention_range(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let which = wid.y;
    // q and dO have H heads of S_q rows; k and v H_kv heads of S_k rows.
    let query_like = which == 0u || which == 3u;
    let heads = select(params.h_kv, params.h, query_like);
    let rows = select(params.s_k, params.s_q, query_like);
    let words = params.d / EPW;
    let total = params.b * heads * rows * words;
    // q, k, v are views 0, 1, 2; dO (which 3) is view 4.
    let view = params.views[select(which, VIEW_DO, which == 3u)];
    var m = 0.0;
    for (var i = wid.x * WORKGROUP + lid; i < total; i += groups.x * WORKGROUP) {
        let w = i % words;
        let r = i / words;
        let bh = r / rows;
        let e = (view.off + (bh / heads) * view.batch + (bh % heads) * view.head + (r % rows) * view.row) / EPW + w;
        var x: vec4<u32>;
        if (which == 0u) {
            x = q[e];
        } else if (which == 1u) {
            x = k[e];
        } else if (which == 2u) {
            x = v[e];
        }
//#if DOUT
        if (which == 3u) {
            x = dout[e];
        }
//#endif
        m = max(m, word_max(x));
    }
    let sg_max = subgroupMax(m);
    if (lane == 0u) {
        atomicMax(&ranges[which], bitcast<u32>(sg_max));
    }
}
