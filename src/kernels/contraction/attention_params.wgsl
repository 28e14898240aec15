// Shared by every attention kernel (placed after the dtype prelude): the params,
// AttentionParams, mirrored field for field by the #[repr(C)] struct of that name in
// attention.rs, and the row addressing through them.
//
// Each of q, k, v, the output o and (backward) dO is a strided view: element (b, h, s, d)
// at off + b·batch + h·head + s·row + d, in its own dtype's elements. The view slots:
// q 0, k 1, v 2, o 3, dO 4. The bias (flag BIAS) broadcasts with stride 0 per dim.
struct View {
    off: u32,
    batch: u32,
    head: u32,
    row: u32,
}

struct AttentionParams {
    b: u32,
    h: u32,
    h_kv: u32,
    s_q: u32,
    s_k: u32,
    d: u32,
    causal: u32,
    scale: f32,
    views: array<View, 5>,
    bias_off: u32,
    bias_batch: u32,
    bias_head: u32,
    bias_query: u32,
    bias_key: u32,
    // The log-sum-exp of a row that saw no key (−∞, passed as data: WGSL has no infinity).
    neg_inf: f32,
}

const VIEW_Q: u32 = 0u;
const VIEW_K: u32 = 1u;
const VIEW_V: u32 = 2u;
const VIEW_O: u32 = 3u;
const VIEW_DO: u32 = 4u;

// Element index of row s of view `slot` (batch b, head h).
fn row_base(slot: u32, b: u32, h: u32, s: u32) -> u32 {
    let v = params.views[slot];
    return v.off + b * v.batch + h * v.head + s * v.row;
}

// Element index of the bias for (batch b, head h, query row r, key column c).
fn bias_index(b: u32, h: u32, r: u32, c: u32) -> u32 {
    return params.bias_off + b * params.bias_batch + h * params.bias_head + r * params.bias_query + c * params.bias_key;
}
