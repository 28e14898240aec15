// Row-wise softmax / log-softmax (with scale, additive mask, causal mask), its backward,
// and fused cross-entropy. One workgroup of 256 invocations per row of N elements.
//
// Units (shaders/row_units.wgsl): four adjacent elements (16-bit data with N a multiple
// of 4: one 8-byte load; f32 rows measured faster in pairs), two (N even: 16-bit data moves
// as whole words), one (f32, N odd), or for 16-bit data with N odd word-aligned pairs
// shifted by the row's parity plus one leftover element (ODD_ROWS, below).
//
// Forward, rows of up to 256·VPT units: each invocation keeps its VPT units in registers,
// so the row is read once and written once: 2·N·size bytes per row, ~5 FLOPs per element.
// Longer rows stream: an online max/sum pass (read 1), then the normalising pass (read 2,
// write). The per-invocation (max, sum) pairs merge in a workgroup-memory tree:
//   (m, s) ⊕ (m', s') = (M, s·e^(m−M) + s'·e^(m'−M)),  M = max(m, m').
// A row whose elements are all −inf gives zeros (softmax) and −inf (log-softmax), not NaN.
//
// Placeholders, each in double braces: LOAD_X LOAD_DY LOAD_MASK (loaders returning the
// unit as a Unit), STORE (store of a unit `v` at element `e`), VPT, UNIT (1, 2 or 4),
// WORD_X WORD_OUT WORD_MASK WORD_DY (the buffers' element types: u32, or vec2/vec4<u32>
// for UNIT 4), ONE_LOADERS (element loaders the UNIT-1 loaders call),
// LOG (true for log-softmax), CE_SCALE (1/rows for a mean cross-entropy).

//#if NATIVE_F16
enable f16;
//#endif

// Invocations per row: 256, or 64 on CPU adapters without subgroups (flag WG64), where
// the workgroup reduction's barriers cost more than its width buys (llvmpipe: a LayerNorm
// of 128 × 64 took 12.6 ms at 256, 2.4 ms at 64).
//#if WG64
const WG: u32 = 64u;
//#else
const WG: u32 = 256u;
//#endif
const VPT: u32 = {{VPT}}u;
const UNIT: u32 = {{UNIT}}u;
const LOG: bool = {{LOG}};

// params: SoftmaxParams, mirrored by the #[repr(C)] struct of that name in norm.rs: rows,
// row length, offsets in elements, mask rows (0: no mask), causal (0/1) with S_q rows per
// causal block, the scale, dy's offset, and the classes: elements from `classes` on are a
// row's padding (a vocabulary padded for the matmuls), masked as −inf like the causal mask,
// so they take no probability and get a zero gradient; `classes` = n for no padding.
@group(0) @binding(0) var<storage, read> x: array<{{WORD_X}}>;
@group(0) @binding(1) var<storage, read_write> out: array<{{WORD_OUT}}>;
struct SoftmaxParams {
    rows: u32,
    n: u32,
    x_off: u32,
    mask_rows: u32,
    mask_off: u32,
    causal: u32,
    s_q: u32,
    scale: f32,
    dy_off: u32,
    classes: u32,
}
@group(0) @binding(2) var<storage, read> params: SoftmaxParams;
@group(0) @binding(3) var<storage, read> mask: array<{{WORD_MASK}}>;
@group(0) @binding(4) var<storage, read> dy: array<{{WORD_DY}}>;
@group(0) @binding(5) var<storage, read> targets: array<u32>;
@group(0) @binding(6) var<storage, read_write> losses: array<f32>;
//#if ODD_ROWS
// [rows] The output of each row's leftover element (see unit_start), joined by join_edges.
@group(0) @binding(7) var<storage, read_write> edges: array<f32>;
//#endif
// [rows] Each row's log-sum-exp (cross_entropy_loss writes it, cross_entropy_backward reads it).
@group(0) @binding(8) var<storage, read_write> row_lse: array<f32>;
// [1] The gradient of the loss from upstream (cross_entropy_backward).
@group(0) @binding(9) var<storage, read> upstream: array<f32>;

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;

// -inf, made at run time: a constant expression that evaluates to an infinity is a
// shader-creation error in browsers' WGSL compilers (Tint), though naga accepts it.
fn neg_inf() -> f32 {
    let bits = 0xff800000u;
    return bitcast<f32>(bits);
}

{{ONE_LOADERS}}
fn load_x(e: u32) -> Unit {
    {{LOAD_X}}
}

fn load_dy(e: u32) -> Unit {
    {{LOAD_DY}}
}

fn load_mask(e: u32) -> Unit {
    {{LOAD_MASK}}
}

fn store(e: u32, v: Unit) {
    {{STORE}}
}

// Odd rows of 16-bit data (flag ODD_ROWS, UNIT 2): a row of odd n starts at an odd element
// of the buffer every other row, so its pairs cannot all be whole 32-bit words. Unit u < n/2
// is then the word-aligned pair at elements first + 2u (first = (row·n) mod 2) and unit n/2
// the one element left over, the row's last (first = 0) or first (first = 1): one lane, read
// alone, its output written to edges[row]. join_edges then writes each word shared by rows
// 2k and 2k + 1, which hold their leftovers (one is last, one is first). Without ODD_ROWS a
// unit is UNIT elements from u·UNIT.

// Units per row of n elements.
fn unit_count(n: u32) -> u32 {
//#if ODD_ROWS
    return n / 2u + 1u;
//#else
    return (n + UNIT - 1u) / UNIT;
//#endif
}

// True for the leftover element of an odd row (always false without ODD_ROWS).
fn is_leftover(u: u32) -> bool {
//#if ODD_ROWS
    return u == params.n / 2u;
//#else
    return false;
//#endif
}

// The row's element where unit u starts.
fn unit_start(row: u32, u: u32) -> u32 {
//#if ODD_ROWS
    let n = params.n;
    let first = (row * n) & 1u;
    if (u == n / 2u) {
        return select(n - 1u, 0u, first == 1u);
    }
    return first + 2u * u;
//#else
    return u * UNIT;
//#endif
}

// Lanes of unit u that hold elements of the row.
fn unit_lanes(u: u32) -> u32 {
    return select(UNIT, 1u, is_leftover(u));
}

// The unit with its padding lanes replaced by `pad`.
fn pad_lanes(v: Unit, u: u32, pad: f32) -> Unit {
    return select(Unit(pad), v, LANE < UnitIdx(unit_lanes(u)));
}

fn x_unit(row: u32, u: u32) -> Unit {
    let e = params.x_off + row * params.n + unit_start(row, u);
//#if ODD_ROWS
    if (is_leftover(u)) {
        return Unit(load_one_x(e), 0.0);
    }
//#endif
    return load_x(e);
}

fn dy_unit(row: u32, u: u32) -> Unit {
    let e = params.dy_off + row * params.n + unit_start(row, u);
//#if ODD_ROWS
    if (is_leftover(u)) {
        return Unit(load_one_dy(e), 0.0);
    }
//#endif
    return load_dy(e);
}

fn store_unit(row: u32, u: u32, v: Unit) {
//#if ODD_ROWS
    if (is_leftover(u)) {
        edges[row] = v.x;
        return;
    }
//#endif
    store(row * params.n + unit_start(row, u), v);
}

// The scaled, masked logits of unit `u` of `row`; −inf where masked or past the row.
fn logits(row: u32, u: u32) -> Unit {
    let n = params.n;
    let j = unit_start(row, u);
    var v = x_unit(row, u) * params.scale;
    let mask_rows = params.mask_rows;
    if (mask_rows > 0u) {
        // A mask row's parity differs from x's: with ODD_ROWS its loader reads elements.
        let e = params.mask_off + (row % mask_rows) * n + j;
//#if ODD_ROWS
        if (is_leftover(u)) {
            v += Unit(load_one_mask(e), 0.0);
        } else {
            v += load_mask(e);
        }
//#else
        v += load_mask(e);
//#endif
    }
    if (params.causal == 1u) {
        // Bottom-right aligned, as with a KV cache: query i of S_q sees keys ≤ i + n − S_q.
        let s_q = params.s_q;
        let limit = row % s_q + n - s_q;
        v = select(v, Unit(neg_inf()), UnitIdx(j) + LANE > UnitIdx(limit));
    }
    if (params.classes < n) {
        v = select(v, Unit(neg_inf()), UnitIdx(j) + LANE >= UnitIdx(params.classes));
    }
    // A single-element unit's padding lane.
    return pad_lanes(v, u, neg_inf());
}

fn merge(m1: f32, s1: f32, m2: f32, s2: f32) -> vec2<f32> {
    let m = max(m1, m2);
    if (m == neg_inf()) {
        return vec2<f32>(m, 0.0);
    }
    return vec2<f32>(m, s1 * exp(m1 - m) + s2 * exp(m2 - m));
}

// Workgroup-wide merge of every invocation's (max, sum); all invocations get the result.
//#if SUBGROUP
// With subgroups: a butterfly of shuffles inside each subgroup (no barrier), then one
// slot per subgroup in workgroup memory, merged by every invocation.
var<private> sg_id: u32;
var<private> sg_count: u32;
var<private> sg_size: u32;
var<private> sg_lane: u32;

fn merge_subgroup(m: f32, s: f32) -> vec2<f32> {
    var r = vec2<f32>(m, s);
    for (var off = sg_size / 2u; off > 0u; off /= 2u) {
        r = merge(r.x, r.y, subgroupShuffleXor(r.x, off), subgroupShuffleXor(r.y, off));
    }
    return r;
}

fn reduce_max_sum(lid: u32, m: f32, s: f32) -> vec2<f32> {
    let r = merge_subgroup(m, s);
    if (sg_lane == 0u) {
        red_m[sg_id] = r.x;
        red_s[sg_id] = r.y;
    }
    workgroupBarrier();
    var total = vec2<f32>(red_m[0], red_s[0]);
    for (var i = 1u; i < sg_count; i++) {
        total = merge(total.x, total.y, red_m[i], red_s[i]);
    }
    workgroupBarrier();
    return total;
}

fn reduce_sum(lid: u32, s: f32) -> f32 {
    let part = subgroupAdd(s);
    if (sg_lane == 0u) {
        red_s[sg_id] = part;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < sg_count; i++) {
        total += red_s[i];
    }
    workgroupBarrier();
    return total;
}
//#else
fn reduce_max_sum(lid: u32, m: f32, s: f32) -> vec2<f32> {
    red_m[lid] = m;
    red_s[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            let r = merge(red_m[lid], red_s[lid], red_m[lid + stride], red_s[lid + stride]);
            red_m[lid] = r.x;
            red_s[lid] = r.y;
        }
        workgroupBarrier();
    }
    let total = vec2<f32>(red_m[0], red_s[0]);
    workgroupBarrier();
    return total;
}

fn reduce_sum(lid: u32, s: f32) -> f32 {
    red_s[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            red_s[lid] += red_s[lid + stride];
        }
        workgroupBarrier();
    }
    let total = red_s[0];
    workgroupBarrier();
    return total;
}

//#endif

// (max, sum of exp) of the row, caching the first 256·VPT units in `cache`.
fn row_stats(row: u32, lid: u32, cache: ptr<function, array<Unit, VPT>>) -> vec2<f32> {
    let units = unit_count(params.n);
    var m = neg_inf();
    // Every cached load issued before any is used, with no branch between them: the index
    // is clamped into the row and units past it are masked to −inf. On the H200 this took
    // f32 softmax 16384×4096 from 2955 to 3742 GB/s (f16 forward did not move: BENCHMARKS.md).
    for (var i = 0u; i < VPT; i++) {
        (*cache)[i] = logits(row, min(lid + i * WG, units - 1u));
    }
    for (var i = 0u; i < VPT; i++) {
        let v = select(Unit(neg_inf()), (*cache)[i], lid + i * WG < units);
        (*cache)[i] = v;
        m = max(m, hmax(v));
    }
    var s = 0.0;
    if (m != neg_inf()) {
        for (var i = 0u; i < VPT; i++) {
            s += hsum(exp((*cache)[i] - m));
        }
    }
    // Past the cache: online max and sum, one read.
    for (var u = lid + VPT * WG; u < units; u += WG) {
        let v = logits(row, u);
        let vm = hmax(v);
        let r = merge(m, s, vm, select(hsum(exp(v - vm)), 0.0, vm == neg_inf()));
        m = r.x;
        s = r.y;
    }
    return reduce_max_sum(lid, m, s);
}

fn normalise(v: Unit, stats: vec2<f32>) -> Unit {
    if (stats.x == neg_inf()) {
        // Every element masked: zeros, or −inf for log-softmax.
        return select(Unit(0.0), Unit(neg_inf()), LOG);
    }
    if (LOG) {
        return v - stats.x - log(stats.y);
    }
    return exp(v - stats.x) / stats.y;
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = wid.x + wid.y * nwg.x;
    if (row >= params.rows) {
        return; // uniform across the workgroup
    }
    let n = params.n;
    let units = unit_count(n);
    var cache: array<Unit, VPT>;
    let stats = row_stats(row, lid, &cache);
    for (var i = 0u; i < VPT; i++) {
        let u = lid + i * WG;
        if (u < units) {
            store_unit(row, u, normalise(cache[i], stats));
        }
    }
    for (var u = lid + VPT * WG; u < units; u += WG) {
        store_unit(row, u, normalise(logits(row, u), stats));
    }
}

// dx = y ⊙ (dy − Σ y·dy): y is `x` here (the forward output). Units within the register
// class keep y and dy in registers (one read each); the tail is read again.
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = wid.x + wid.y * nwg.x;
    if (row >= params.rows) {
        return;
    }
    let n = params.n;
    let units = unit_count(n);
    var y_cache: array<Unit, VPT>;
    var dy_cache: array<Unit, VPT>;
    var y_dy = 0.0; // Σ y·dy
    // Loads first, clamped and branch-free (see row_stats).
    for (var i = 0u; i < VPT; i++) {
        let u = min(lid + i * WG, units - 1u);
        y_cache[i] = x_unit(row, u);
        dy_cache[i] = dy_unit(row, u);
    }
    for (var i = 0u; i < VPT; i++) {
        let u = lid + i * WG;
        if (u < units) {
            let d = pad_lanes(dy_cache[i], u, 0.0);
            dy_cache[i] = d;
            y_dy += dot(y_cache[i], d);
        }
    }
    for (var u = lid + VPT * WG; u < units; u += WG) {
        y_dy += hsum(pad_lanes(x_unit(row, u) * dy_unit(row, u), u, 0.0));
    }
    let total = reduce_sum(lid, y_dy);
    for (var i = 0u; i < VPT; i++) {
        let u = lid + i * WG;
        if (u < units) {
            store_unit(row, u, y_cache[i] * (dy_cache[i] - total));
        }
    }
    for (var u = lid + VPT * WG; u < units; u += WG) {
        store_unit(row, u, x_unit(row, u) * (dy_unit(row, u) - total));
    }
}

// Cross-entropy of each row against its target class, and the gradient of the mean loss:
//   loss_r = log Σ e^(x_j) − x_t,   dlogits_rj = (softmax_rj − [j = t]) · CE_SCALE.
@compute @workgroup_size(WG)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = wid.x + wid.y * nwg.x;
    if (row >= params.rows) {
        return;
    }
    let n = params.n;
    let units = unit_count(n);
    var cache: array<Unit, VPT>;
    let stats = row_stats(row, lid, &cache);
    let t = targets[row];
    let ce_scale: f32 = {{CE_SCALE}};
    for (var i = 0u; i < VPT; i++) {
        let u = lid + i * WG;
        if (u < units) {
            let j = unit_start(row, u);
            let p = exp(cache[i] - stats.x) / stats.y - select(Unit(0.0), Unit(1.0), UnitIdx(j) + LANE == UnitIdx(t));
            store_unit(row, u, p * ce_scale);
        }
    }
    for (var u = lid + VPT * WG; u < units; u += WG) {
        let j = unit_start(row, u);
        let p = exp(logits(row, u) - stats.x) / stats.y - select(Unit(0.0), Unit(1.0), UnitIdx(j) + LANE == UnitIdx(t));
        store_unit(row, u, p * ce_scale);
    }
    if (lid == 0u) {
        losses[row] = row_loss(row, t, stats);
    }
}

// The target's logit x_t of `row`, read alone.
fn target_logit(row: u32, t: u32) -> f32 {
    // The target's unit and lane: units start at unit_start(row, 0) (0 or 1) in steps of
    // UNIT, except the leftover element of an odd row.
    let units = unit_count(params.n);
    let first = unit_start(row, 0u);
    var tu = (t - first) / UNIT;
    var lane = (t - first) % UNIT;
    if (t < first || tu >= units || is_leftover(tu)) {
        tu = units - 1u;
        lane = 0u;
    }
    return logits(row, tu)[lane];
}

// loss_r = log Σ e^(x_j) − x_t from the row's (max, sum of exp). (max − x_t) first: two
// values of the same large magnitude cancel exactly, where max + log(sum) would round
// log(sum) away at max's magnitude (1e-4 at 1e4).
fn row_loss(row: u32, t: u32, stats: vec2<f32>) -> f32 {
    return (stats.x - target_logit(row, t)) + log(stats.y);
}

// Cross-entropy in two passes, for autograd: the forward reads the logits once and keeps
// each row's log-sum-exp (4 bytes a row, not the [rows, n] gradient), the backward reads
// them again and writes dlogits = (e^(x_j − lse_r) − [j = t]) · upstream[0] / rows in
// the logits' dtype. Traffic: forward N·size per row, backward 2·N·size (one-pass
// cross_entropy: N·size read, N·size written, and the scaling by the upstream gradient
// another pass over the f32 gradient). 16-bit logits are read as they are: no f32 copy.
@compute @workgroup_size(WG)
fn cross_entropy_loss(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = wid.x + wid.y * nwg.x;
    if (row >= params.rows) {
        return;
    }
    var cache: array<Unit, VPT>;
    let stats = row_stats(row, lid, &cache);
    if (lid == 0u) {
        losses[row] = row_loss(row, targets[row], stats);
        row_lse[row] = stats.x + log(stats.y);
    }
}

// One workgroup per row, no reduction: each invocation writes units lid, lid + WG, ...
@compute @workgroup_size(WG)
fn cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = wid.x + wid.y * nwg.x;
    if (row >= params.rows) {
        return;
    }
    let units = unit_count(params.n);
    let lse = row_lse[row];
    let t = targets[row];
    let g = upstream[0] / f32(params.rows);
    for (var u = lid; u < units; u += WG) {
        let j = unit_start(row, u);
        let p = exp(logits(row, u) - lse) - select(Unit(0.0), Unit(1.0), UnitIdx(j) + LANE == UnitIdx(t));
        store_unit(row, u, p * g);
    }
}

//#if SUBGROUP
// Short rows (≤ SG_ROWS units): one subgroup per row, no workgroup memory, no barrier. Pass
// one merges (max, sum) online per lane and across lanes by shuffles; pass two writes (the
// row is re-read from cache). Rows per workgroup = its number of subgroups.
@compute @workgroup_size(256)
fn softmax_sg_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = (wid.x + wid.y * nwg.x) * sg_count + sg_id;
    if (row >= params.rows) {
        return; // uniform within the subgroup, and no barrier follows
    }
    let n = params.n;
    let units = unit_count(n);
    var m = neg_inf();
    var sum = 0.0;
    for (var u = lane; u < units; u += sg_size) {
        let v = logits(row, u);
        let vm = hmax(v);
        let r = merge(m, sum, vm, select(hsum(exp(v - vm)), 0.0, vm == neg_inf()));
        m = r.x;
        sum = r.y;
    }
    let stats = merge_subgroup(m, sum);
    for (var u = lane; u < units; u += sg_size) {
        store_unit(row, u, normalise(logits(row, u), stats));
    }
}
//#endif

//#if ODD_ROWS
// Writes the 32-bit word shared by rows 2k and 2k + 1 of odd length n from their leftover
// outputs (edges): the last element of row 2k (an even element of the buffer: the word's
// low half) and the first of row 2k + 1 (its high half; zero past the last row).
@compute @workgroup_size(256)
fn join_edges(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = (wid.x + wid.y * nwg.x) * 256u + lid;
    let rows = params.rows;
    let n = params.n;
    if (2u * k >= rows) {
        return;
    }
    var hi = 0.0;
    if (2u * k + 1u < rows) {
        hi = edges[2u * k + 1u];
    }
    store((2u * k + 1u) * n - 1u, Unit(edges[2u * k], hi));
}
//#endif
