// Sums over a dim that is not the last: x viewed as [outer, K, inner] (contiguous, from
// x_off), out[o, i] = Σ_k x[o, k, i] accumulated in f32 and stored in x's dtype — a bias
// gradient, Σ over the tokens of dY [tokens, N], read as it lies instead of through a
// transposed copy.
//
// Pass 1 (column_partials): a grid of (⌈inner/256⌉, chunks, outer) workgroups; invocation i
// of chunk c sums rows c·chunk_rows .. (c+1)·chunk_rows of column i, so that neighbouring
// invocations read neighbouring elements of a row, and the chunks give the GPU enough
// workgroups when `inner` is narrow (768 columns are 3 workgroups without them). Partials
// [outer, chunks, inner] f32. Pass 2 (column_finish): a workgroup adds the chunks of 32
// consecutive output elements, 8 lanes an element, and stores them (a pair of adjacent
// elements a word for 16-bit outputs).
// Traffic: x read once (outer·K·inner·size), the partials written and read once
// (outer·chunks·inner·4, a few hundred KB for a bias); K FLOPs per output: memory bound.
//
// Placeholders: LOAD_X (element loader of x's dtype), STORE (writes the values of elements
// t and t + 1 — `lo`, `hi` — at unit index `p`), PAIRS (true for 16-bit outputs, two
// elements a word), FINISH_COLUMNS (pass 2's outputs a workgroup: even, a divisor of 256).

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

// Pass 2: a workgroup finishes FINISH_COLUMNS consecutive output elements. Lane (phase s,
// column j) adds chunks s, s + FINISH_PHASES, ... of element t0 + j, so that the 32 columns
// of one phase read 32 neighbouring partials (one 128-byte line) and each lane loads
// chunks / 8 of them: a 768-wide bias over 256 chunks is 24 workgroups of 32 loads a lane,
// where a lane an element would be 2 workgroups of 256 dependent loads each. The phases
// are then added in workgroup memory.
// FINISH_COLUMNS comes from reduce.rs, which sizes the grid by it.
const FINISH_COLUMNS: u32 = {{FINISH_COLUMNS}}u;
const FINISH_PHASES: u32 = 256u / FINISH_COLUMNS;

var<workgroup> phase_sums: array<f32, 256>; // [FINISH_PHASES][FINISH_COLUMNS]

// Column j's total over the phases.
fn column_total(j: u32) -> f32 {
    var total = 0.0;
    for (var q = 0u; q < FINISH_PHASES; q++) {
        total += phase_sums[q * FINISH_COLUMNS + j];
    }
    return total;
}

@compute @workgroup_size(256)
fn column_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = params.outer * params.inner;
    let t0 = (wid.x + wid.y * nwg.x) * FINISH_COLUMNS;
    let j = lid % FINISH_COLUMNS;
    let s = lid / FINISH_COLUMNS;
    let t = t0 + j;
    var acc = 0.0;
    if (t < n) {
        let o = t / params.inner;
        let i = t % params.inner;
        for (var c = s; c < params.chunks; c += FINISH_PHASES) {
            acc += partials[(o * params.chunks + c) * params.inner + i];
        }
    }
    phase_sums[lid] = acc;
    workgroupBarrier();
    if (s != 0u) {
        return;
    }
    // Phase 0's lanes store: one element each (f32), or lane j < 16 the word of elements
    // t0 + 2j and t0 + 2j + 1 (16-bit; t0 is even, so no word straddles two workgroups).
    if (PAIRS) {
        let e = t0 + 2u * j;
        if (j < FINISH_COLUMNS / 2u && e < n) {
            let lo = column_total(2u * j);
            let hi = select(0.0, column_total(2u * j + 1u), e + 1u < n);
            let p = e / 2u;
            {{STORE}}
        }
    } else if (t < n) {
        let lo = column_total(j);
        let hi = 0.0;
        let p = t;
        {{STORE}}
    }
}
