// Shared by the matmul families (placed after the dtype prelude by the device's pipeline
// module): the params layout, batch offsets, the epilogue and the tile order.
//
// The params are `MatmulParams`, mirrored field for field by the #[repr(C)] struct of the
// same name in matmul.rs: sizes, operand offsets and strides in elements, the batch shape
// (front-padded with 1s to MAX_BATCH_DIMS) and each operand's batch strides (0 where
// broadcast), the bias view.
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
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    batches: u32,
    a_off: u32,
    a_sm: u32,
    a_sk: u32,
    b_off: u32,
    b_sk: u32,
    b_sn: u32,
    batch_rank: u32,
    batch_shape: array<u32, 4>,
    a_batch_strides: array<u32, 4>,
    b_batch_strides: array<u32, 4>,
    bias_off: u32,
    bias_stride: u32,
}

@group(0) @binding(3) var<storage, read> params: MatmulParams;
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
    var off = vec2<u32>(params.a_off, params.b_off);
    let rank = params.batch_rank;
    for (var d = 0u; d < rank; d++) {
        let dim = MAX_BATCH_DIMS - 1u - d;
        let size = params.batch_shape[dim];
        let i = rem % size;
        rem /= size;
        off += i * vec2<u32>(params.a_batch_strides[dim], params.b_batch_strides[dim]);
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
