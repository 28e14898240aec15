// Sums over a dim that is not the last: x viewed as [outer, K, inner] (contiguous, from
// x_off), out[o, i] = Σ_k x[o, k, i] accumulated in f32 and stored in x's dtype — a bias
// gradient, Σ over the tokens of dY [tokens, N], read as it lies instead of through a
// transposed copy.
//
// Pass 1 (column_partials): a grid of (⌈inner/256⌉, chunks, outer) workgroups; invocation i
// of chunk c sums rows c·chunk_rows .. (c+1)·chunk_rows of column i, so that neighbouring
// invocations read neighbouring elements of a row, and the chunks give the GPU enough
// workgroups when `inner` is narrow (768 columns are 3 workgroups without them). Partials
// [outer, chunks, inner] f32. Pass 2 (column_finish): each invocation adds its element's
// chunks (a pair of adjacent elements for 16-bit outputs, one word) and stores them.
// Traffic: x read once (outer·K·inner·size), the partials written and read once
// (outer·chunks·inner·4, a few hundred KB for a bias); K FLOPs per output: memory bound.
//
// Placeholders: LOAD_X (element loader of x's dtype), WORD (out's element: u32), STORE
// (writes the values of elements t and t + 1 — `lo`, `hi` — at unit index `p`), PAIRS (true
// for 16-bit outputs, two elements per invocation).

const PAIRS: bool = {{PAIRS}};

// params: ColumnSumParams, mirrored by the #[repr(C)] struct of that name in reduce.rs.
struct ColumnSumParams {
    outer: u32,
    k: u32,
    inner: u32,
    x_off: u32,
    chunks: u32,
    chunk_rows: u32,
}

@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read> params: ColumnSumParams;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

fn load_x(e: u32) -> f32 {
    {{LOAD_X}}
}

@compute @workgroup_size(256)
fn column_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = wid.x * 256u + lid;
    let c = wid.y;
    let o = wid.z;
    let inner = params.inner;
    if (i >= inner) {
        return;
    }
    let k0 = c * params.chunk_rows;
    let k1 = min(k0 + params.chunk_rows, params.k);
    var acc = 0.0;
    var e = params.x_off + (o * params.k + k0) * inner + i;
    for (var r = k0; r < k1; r++) {
        acc += load_x(e);
        e += inner;
    }
    partials[(o * params.chunks + c) * inner + i] = acc;
}

// The sum of output element t's chunks.
fn total(t: u32) -> f32 {
    let inner = params.inner;
    let o = t / inner;
    let i = t % inner;
    var acc = 0.0;
    for (var c = 0u; c < params.chunks; c++) {
        acc += partials[(o * params.chunks + c) * inner + i];
    }
    return acc;
}

@compute @workgroup_size(256)
fn column_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = (wid.x + wid.y * nwg.x) * 256u + lid;
    let n = params.outer * params.inner;
    let t = select(p, 2u * p, PAIRS);
    if (t >= n) {
        return;
    }
    let lo = total(t);
    var hi = 0.0;
    if (PAIRS && t + 1u < n) {
        hi = total(t + 1u);
    }
    {{STORE}}
}
