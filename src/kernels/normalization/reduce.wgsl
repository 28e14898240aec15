// Row reductions: out[r] = sum_j x[r, j] over contiguous rows, accumulated in f32.
//
// Tiling: one workgroup of 256 invocations per row. Each invocation sums a strided slice of
// the row (j = lid, lid + 256, ...), so neighbouring invocations read neighbouring words;
// then, with subgroups (flag SUBGROUP), subgroupAdd and one slot per subgroup in workgroup
// memory (one barrier); without, a tree in workgroup memory (8 steps, a barrier each).
// Rows beyond 65535 use the grid's y dimension.
//
// Traffic: rows·cols·size(x) bytes read, rows·4 written; cols FLOPs per row: memory bound.
//
// Specialised by text substitution: the LOAD_X placeholder is the loader body for x's dtype.

const WORKGROUP: u32 = 256u;

// params: ReduceParams (reduce.rs): rows, columns, x offset in elements.
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct ReduceParams {
    rows: u32,
    cols: u32,
    x_off: u32,
}
@group(0) @binding(2) var<storage, read> params: ReduceParams;

var<workgroup> partial: array<f32, WORKGROUP>;

fn load_x(e: u32) -> f32 {
    {{LOAD_X}}
}

// The sum of every invocation's `acc`, for invocation 0.
//#if SUBGROUP
fn workgroup_sum(lid: u32, acc: f32, sg_id: u32, sg_lane: u32, sg_count: u32) -> f32 {
    let part = subgroupAdd(acc);
    if (sg_lane == 0u) {
        partial[sg_id] = part;
    }
    workgroupBarrier();
    var total = 0.0;
    if (lid == 0u) {
        for (var i = 0u; i < sg_count; i++) {
            total += partial[i];
        }
    }
    return total;
}
//#else
fn workgroup_sum(lid: u32, acc: f32, sg_id: u32, sg_lane: u32, sg_count: u32) -> f32 {
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = WORKGROUP / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    return partial[0];
}
//#endif

@compute @workgroup_size(256)
fn sum_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    {{SG_ARGS}}
) {
    let rows = params.rows;
    let cols = params.cols;
    let row = wid.x + wid.y * nwg.x;
    // Uniform per workgroup, so the early return keeps the barriers below uniform.
    if (row >= rows) {
        return;
    }
    let base = params.x_off + row * cols;
    var acc = 0.0;
    for (var j = lid; j < cols; j += WORKGROUP) {
        acc += load_x(base + j);
    }
    let total = workgroup_sum(lid, acc, {{SG_VALUES}});
    if (lid == 0u) {
        out[row] = total;
    }
}
