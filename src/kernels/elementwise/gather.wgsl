// Row gather (embedding lookup, index_select on dim 0) and its backward, a scatter-add
// made deterministic by the host's per-row lists.
//
// gather: out[r][c] = table[ids[r]][c], moved as 32-bit words (a row is a whole number of
// words; the host casts a 16-bit table with odd rows to f32 first). One invocation per
// output word on a 2-D grid of 256-wide workgroups, flattened. Bytes: the gathered rows read
// once and written once, plus the ids; no FLOPs.
//
// scatter_add: dtable[v][c] = base[v][c] + Σ dy[p][c] over the positions p whose id is v, in
// ascending p (base 0 without flag BASE). The host sorts the positions by id (`positions`,
// with `starts[v]..starts[v + 1]` delimiting row v's), so each output element is one
// invocation's f32 sum: no atomics, the same result on every backend and every run. An
// invocation stores one 32-bit word of dtable in its dtype: one f32 element, or two 16-bit
// ones (flag PAIRS; the elements are numbered across rows, so odd rows need no care, and
// the last word's high half past the end stores 0). Bytes: dy read once, base read and
// dtable written once in their dtype, the lists; one add per dy element.
//
// Placeholders: LOAD_DY, LOAD_BASE (element loaders of dy's and base's dtype), STORE (stores
// word `w` of `out` from the values `lo`, `hi` of its elements).

struct GatherParams {
    rows: u32,
    row_words: u32,
    table_off_words: u32,
}

struct ScatterParams {
    table_rows: u32,
    cols: u32,
    dy_off: u32,
    base_off: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read> gather_params: GatherParams;

@compute @workgroup_size(256)
fn gather(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = (wid.x + wid.y * nwg.x) * 256u + lid;
    let p = gather_params;
    if (w >= p.rows * p.row_words) {
        return;
    }
    let r = w / p.row_words;
    out[w] = src[p.table_off_words + ids[r] * p.row_words + w % p.row_words];
}

// scatter_add's bindings: dy at 0 (`src`), starts at 1 (`ids`), dtable at 2 (`out`),
// positions at 4, params at 5, base at 6 (flag BASE).
@group(0) @binding(4) var<storage, read> positions: array<u32>;
@group(0) @binding(5) var<storage, read> scatter_params: ScatterParams;
//#if BASE
@group(0) @binding(6) var<storage, read> base: array<u32>;

fn load_base(e: u32) -> f32 {
    {{LOAD_BASE}}
}
//#else
fn load_base(e: u32) -> f32 {
    return 0.0;
}
//#endif

fn load_dy(e: u32) -> f32 {
    {{LOAD_DY}}
}

// Element e of dtable (0 past its end).
fn table_element(e: u32) -> f32 {
    let p = scatter_params;
    if (e >= p.table_rows * p.cols) {
        return 0.0;
    }
    let v = e / p.cols;
    let c = e % p.cols;
    var sum = load_base(p.base_off + e);
    for (var k = ids[v]; k < ids[v + 1u]; k++) {
        sum += load_dy(p.dy_off + positions[k] * p.cols + c);
    }
    return sum;
}

@compute @workgroup_size(256)
fn scatter_add(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = (wid.x + wid.y * nwg.x) * 256u + lid;
    let p = scatter_params;
    let total = p.table_rows * p.cols;
//#if PAIRS
    if (2u * w >= total) {
        return;
    }
    let lo = table_element(2u * w);
    let hi = table_element(2u * w + 1u);
//#else
    if (w >= total) {
        return;
    }
    let lo = table_element(w);
//#endif
    {{STORE}}
}
