// Shared by the matmul families (placed after the dtype prelude by the device's pipeline
// module): the params layout, batch offsets, the epilogue and the tile order.
//
// params (u32 words):
//   [0] M  [1] N  [2] K  [3] batches
//   [4] a_off [5] a_sm [6] a_sk   [7] b_off [8] b_sk [9] b_sn
//   [10] batch rank  [11..15) batch shape  [15..19) A batch strides  [19..23) B batch strides
//   [23] bias offset  [24] bias stride
//
// Placeholders, each in double braces: LOAD_BIAS (loader body), EPILOGUE (bias and
// activation on `v` at column `n`), PACK_PAIR (two f32 `v0`, `v1` as one word of 16-bit C,
// flag OUT16); EPILOGUE_DECLS, FUSED_BODY, FUSED_RESULT: an
// element-wise chain fused after them by the fusion JIT (src/fusion.rs), evaluated on the
// value `mm` at linear output index `i` with its own leaves and `ew_params` (empty, empty
// and `mm` for a plain matmul).

const MAX_BATCH_DIMS: u32 = 4u;
// Output tiles are visited in groups of TILE_GROUP tile-rows, column by column, so that a
// wave of resident workgroups shares A row-panels and B column-panels in L2.
const TILE_GROUP: u32 = 8u;

//#if OUT16
// A 16-bit C, two elements per word, low half first. Written only in whole words: N is
// even and every invocation stores column pairs (n, n + 1) with n even, so no two
// invocations share a word (the host takes the f32 path and a cast for odd N).
@group(0) @binding(2) var<storage, read_write> c: array<u32>;

// Elements o (even) and o + 1 of C, rounded to nearest even.
fn store_pair(o: u32, v0: f32, v1: f32) {
    c[o >> 1u] = {{PACK_PAIR}};
}
//#else
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
//#endif
@group(0) @binding(3) var<storage, read> params: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<u32>;

fn load_bias(e: u32) -> f32 {
    {{LOAD_BIAS}}
}

{{EPILOGUE_DECLS}}

// The matmul's own epilogue (bias, activation) on the accumulator at column `n`.
fn epilogue(acc: f32, n: u32, idx: u32) -> f32 {
    var v = acc;
    {{EPILOGUE}}
    return v;
}

// The fused element-wise chain on the matmul's value `mm` at linear output index `i`
// (identity for a plain matmul). The register-tiled entries apply it in a second pass over
// their stores (flag FUSED), the thin and coop ones at the store.
fn fused_chain(mm: f32, i: u32) -> f32 {
    {{FUSED_BODY}}
    return {{FUSED_RESULT}};
}

// Element offsets of batch `z` in A and B (batch dims broadcast with stride 0).
fn batch_offsets(z: u32) -> vec2<u32> {
    var rem = z;
    var off = vec2<u32>(params[4], params[7]);
    let rank = params[10];
    for (var d = 0u; d < rank; d++) {
        let dim = MAX_BATCH_DIMS - 1u - d;
        let size = params[11u + dim];
        let i = rem % size;
        rem /= size;
        off += i * vec2<u32>(params[15u + dim], params[19u + dim]);
    }
    return off;
}

// (tile row, tile column) of this workgroup in grouped order; the grid is
// (column tiles, row tiles, batches).
fn tile_of(wid: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    let pid = wid.x + wid.y * nwg.x;
    let per_group = TILE_GROUP * nwg.x;
    let first_row = (pid / per_group) * TILE_GROUP;
    let rows = min(nwg.y - first_row, TILE_GROUP);
    let in_group = pid % per_group;
    return vec2<u32>(first_row + in_group % rows, in_group / rows);
}
