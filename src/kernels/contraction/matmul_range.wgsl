// The largest |x| of each operand of an f32 matmul run split on tensor cores
// (MatmulPrecision::High, flag SPLIT of matmul_coop.wgsl), which scales each operand by a
// power of two from it so that its f16 parts neither overflow nor lose their low bits.
//
// Workgroup row y = 0 reads A, y = 1 reads B: every element of the storage span the view
// covers (offset to its last element; a strided view's gaps are read too, which can only
// raise the maximum), grid-stride, one f32 per invocation and step; each subgroup's max goes
// to ranges[y] by atomicMax on the f32 bits (non-negative floats order as their bits).
// Traffic: the two spans once, memory bound; the matmul reads each operand N/BN or M/BM times.

const WORKGROUP: u32 = 256u;

struct RangeParams {
    a_off: u32,
    a_len: u32,
    b_off: u32,
    b_len: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
// [A, B]: zero before the dispatch.
@group(0) @binding(2) var<storage, read_write> ranges: array<atomic<u32>, 2>;
@group(0) @binding(3) var<storage, read> params: RangeParams;

@compute @workgroup_size(WORKGROUP)
fn matmul_range(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let which = wid.y;
    let len = select(params.a_len, params.b_len, which == 1u);
    let off = select(params.a_off, params.b_off, which == 1u);
    var m = 0.0;
    for (var i = wid.x * WORKGROUP + lid; i < len; i += groups.x * WORKGROUP) {
        if (which == 0u) {
            m = max(m, abs(a[off + i]));
        } else {
            m = max(m, abs(b[off + i]));
        }
    }
    let sg_max = subgroupMax(m);
    if (lane == 0u) {
        atomicMax(&ranges[which], bitcast<u32>(sg_max));
    }
}
