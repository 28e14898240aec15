// LayerNorm and RMSNorm over the last dim, forward and backward. One workgroup of 256
// invocations per row of N elements, f32 statistics whatever the storage dtype.
//
// Forward: rows of up to 256·VPT units stay in registers (read once, written once:
// 2·N·size bytes per row, ~8 FLOPs per element); longer rows are read a second time for
// the output. Mean and variance: per-invocation sums shifted by one of its own values,
// turned into (count, mean, M2) and merged with Chan's formula in a workgroup-memory tree —
// no E[x²] − E[x]² cancellation, so rows of 65536 elements with a mean of 1e4 keep their
// variance in f32. (Per-element Welford updates, tried first, ran at 658 GB/s on the H200
// against 1087 for RMSNorm: a division per element in one dependency chain. Both figures
// are from before the benchmark's warm-up fix, so only their ratio means anything.)
//
// Backward (dx): rows up to the register class keep x and dy·w in registers: one read of
// x and dy, one write of dx (longer rows read the tail again). dw and db are sums over
// rows; WGSL has no float atomics, so they are summed per chunk of rows into partial sums
// [chunks, 2, N] f32, which `param_grads_sum` adds up over chunks into the weight's dtype.
// Two ways to the partials: `backward_grads` computes dx and a chunk's partials in one pass
// (a workgroup per chunk: 3·N·size bytes per row plus 8·N per chunk), for rows whose units
// fit in 4 per invocation (or 8 single elements); `backward` + `param_grads`, which reads x
// and dy a second time (5·N·size bytes per row), for the rest and on request.
//
// Fused prologue (norm forward only): when x is a pending element-wise chain of L inputs (a
// residual add: L = 2), LOAD_X evaluates the chain instead of reading x, and the first read
// of each unit stores the value once, as x's storage (PROLOGUE_DECLS, LOAD_X_FIRST). Bytes
// per row: (L + 2)·N·size in one kernel against (L + 3)·N·size in two unfused (the chain's
// kernel writes x, the norm reads it back); rows read twice (past the register class, or
// one subgroup per row) read the stored x back on the second pass (LOAD_X_AGAIN: each
// invocation reads the units it stored itself, so program order makes them visible).
//
// Units: see shaders/row_units.wgsl (4 elements when N is a multiple of 4 and there is no
// prologue, 2 for other even N, 1 for odd N).
//
// Placeholders, each in double braces: LOAD_X LOAD_DY LOAD_W LOAD_B (unit loaders),
// STORE, VPT, UNIT (1, 2 or 4), WORD_X WORD_OUT WORD_W
// WORD_B WORD_DY (the buffers' element types: u32, or vec2/vec4<u32> for UNIT 4),
// ONE_LOADERS (element loaders for UNIT 1), RMS (true for RMSNorm), AFFINE_W, AFFINE_B.

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
const RMS: bool = {{RMS}};

// params: NormParams, mirrored by the #[repr(C)] struct of that name in norm.rs: rows, row
// length, offsets in elements, eps, and (backward) the rows per chunk of the dw/db partial sums.
@group(0) @binding(0) var<storage, read> x: array<{{WORD_X}}>;
@group(0) @binding(1) var<storage, read_write> out: array<{{WORD_OUT}}>;
struct NormParams {
    rows: u32,
    n: u32,
    x_off: u32,
    eps: f32,
    dy_off: u32,
    w_off: u32,
    b_off: u32,
    chunk_rows: u32,
}
@group(0) @binding(2) var<storage, read> params: NormParams;
@group(0) @binding(3) var<storage, read> w: array<{{WORD_W}}>;
@group(0) @binding(4) var<storage, read> b: array<{{WORD_B}}>;
@group(0) @binding(5) var<storage, read> dy: array<{{WORD_DY}}>;
// Per-row (mean, rstd) written by the forward and backward kernels, read by param_grads.
@group(0) @binding(6) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;

// A fused prologue (src/fusion.rs, FusedPrologue): `held`, `ew_params`, the chain's leaves
// and `chain_value(i)`, which LOAD_X then calls instead of reading x. Empty otherwise.
{{PROLOGUE_DECLS}}

var<workgroup> red_n: array<f32, WG>;
var<workgroup> red_mean: array<f32, WG>;
var<workgroup> red_m2: array<f32, WG>;

{{ONE_LOADERS}}
fn load_x(e: u32) -> Unit {
    {{LOAD_X}}
}

// The first read of each unit of the forward pass: with a fused prologue it also stores
// the chain's value into `held` (once per element; later reads recompute it).
fn load_x_first(e: u32) -> Unit {
    {{LOAD_X_FIRST}}
}

// A later read, in the forward pass, of a unit this invocation read first with
// load_x_first: with a fused prologue that stored x, the stored value (one buffer) rather
// than the chain again (all its inputs).
fn load_x_again(e: u32) -> Unit {
    {{LOAD_X_AGAIN}}
}

fn load_dy(e: u32) -> Unit {
    {{LOAD_DY}}
}

fn load_w(e: u32) -> Unit {
    {{LOAD_W}}
}

fn load_b(e: u32) -> Unit {
    {{LOAD_B}}
}

fn store(e: u32, v: Unit) {
    {{STORE}}
}

// Chan et al.: two partial (count, mean, M2) merged.
fn chan(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    let count = a.x + b.x;
    if (count == 0.0) {
        return a;
    }
    let delta = b.y - a.y;
    let mean = a.y + delta * (b.x / count);
    return vec3<f32>(count, mean, a.z + b.z + delta * delta * (a.x * b.x / count));
}

//#if SUBGROUP
var<private> sg_id: u32;
var<private> sg_count: u32;
var<private> sg_size: u32;
var<private> sg_lane: u32;

// Chan merges by shuffles inside the subgroup, then across subgroups through workgroup
// memory (one slot each), merged by every invocation.
fn welford_subgroup(acc: vec3<f32>) -> vec3<f32> {
    var r = acc;
    for (var off = sg_size / 2u; off > 0u; off /= 2u) {
        r = chan(r, vec3<f32>(subgroupShuffleXor(r.x, off), subgroupShuffleXor(r.y, off), subgroupShuffleXor(r.z, off)));
    }
    return r;
}

fn reduce_welford(lid: u32, acc: vec3<f32>) -> vec3<f32> {
    let r = welford_subgroup(acc);
    if (sg_lane == 0u) {
        red_n[sg_id] = r.x;
        red_mean[sg_id] = r.y;
        red_m2[sg_id] = r.z;
    }
    workgroupBarrier();
    var total = vec3<f32>(red_n[0], red_mean[0], red_m2[0]);
    for (var i = 1u; i < sg_count; i++) {
        total = chan(total, vec3<f32>(red_n[i], red_mean[i], red_m2[i]));
    }
    workgroupBarrier();
    return total;
}

fn reduce_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    let part = subgroupAdd(v);
    if (sg_lane == 0u) {
        red_n[sg_id] = part.x;
        red_mean[sg_id] = part.y;
    }
    workgroupBarrier();
    var total = vec2<f32>(0.0);
    for (var i = 0u; i < sg_count; i++) {
        total += vec2<f32>(red_n[i], red_mean[i]);
    }
    workgroupBarrier();
    return total;
}

//#else
fn reduce_welford(lid: u32, acc: vec3<f32>) -> vec3<f32> {
    red_n[lid] = acc.x;
    red_mean[lid] = acc.y;
    red_m2[lid] = acc.z;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            let r = chan(vec3<f32>(red_n[lid], red_mean[lid], red_m2[lid]), vec3<f32>(red_n[lid + stride], red_mean[lid + stride], red_m2[lid + stride]));
            red_n[lid] = r.x;
            red_mean[lid] = r.y;
            red_m2[lid] = r.z;
        }
        workgroupBarrier();
    }
    let total = vec3<f32>(red_n[0], red_mean[0], red_m2[0]);
    workgroupBarrier();
    return total;
}

fn reduce_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    red_n[lid] = v.x;
    red_mean[lid] = v.y;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            red_n[lid] += red_n[lid + stride];
            red_mean[lid] += red_mean[lid + stride];
        }
        workgroupBarrier();
    }
    let total = vec2<f32>(red_n[0], red_mean[0]);
    workgroupBarrier();
    return total;
}

//#endif

// Per-invocation sums of the unit's values shifted by `shift` (the invocation's first
// value): acc = (count, Σ(x − shift), Σ(x − shift)²). No division per element and no
// dependency chain through one, unlike Welford's update; shifting by a value of the row
// keeps the sums small, so Σd² − (Σd)²/n does not cancel catastrophically (the "shifted
// data" algorithm). RMSNorm keeps Σx² in the last slot with no shift.
fn add_unit(acc: vec3<f32>, v: Unit, shift: f32) -> vec3<f32> {
    let d = real_lanes(v - shift);
    return acc + vec3<f32>(f32(UNIT), hsum(d), dot(d, d));
}

// The invocation's (count, mean, M2) from its shifted sums.
fn to_welford(acc: vec3<f32>, shift: f32) -> vec3<f32> {
    if (acc.x == 0.0) {
        return vec3<f32>(0.0);
    }
    let mean_d = acc.y / acc.x;
    return vec3<f32>(acc.x, shift + mean_d, max(acc.z - acc.y * mean_d, 0.0));
}

// (mean, rstd) of the row, caching the first 256·VPT units when `cache` is used.
fn row_moments(row: u32, lid: u32, cache: ptr<function, array<Unit, VPT>>) -> vec2<f32> {
    let n = params.n;
    let units = (n + UNIT - 1u) / UNIT;
    let base = params.x_off + row * n;
    // RMSNorm: no shift (Σx² is what it needs); LayerNorm: this invocation's first value.
    var shift = 0.0;
    if (!RMS && lid < units) {
        shift = load_x(base + lid * UNIT).x;
    }
    // Every cached load is issued before any is used, with no branch between them: the
    // index is clamped into the row (units past it re-read the last one, masked below), so
    // all VPT loads are in flight together. On the H200 this took f32 LayerNorm over rows of
    // 4096 from 2402 to 3113 GB/s (f16 rows did not move: BENCHMARKS.md).
    for (var i = 0u; i < VPT; i++) {
        (*cache)[i] = load_x_first(base + min(lid + i * WG, units - 1u) * UNIT);
    }
    var acc = vec3<f32>(0.0);
    for (var i = 0u; i < VPT; i++) {
        if (lid + i * WG < units) {
            acc = add_unit(acc, (*cache)[i], shift);
        }
    }
    for (var u = lid + VPT * WG; u < units; u += WG) {
        acc = add_unit(acc, load_x_first(base + u * UNIT), shift);
    }
    return moments_of(lid, acc, shift);
}

// (mean, rstd) of the row from every invocation's shifted sums (see add_unit).
fn moments_of(lid: u32, acc: vec3<f32>, shift: f32) -> vec2<f32> {
    let eps = params.eps;
    if (RMS) {
        let total = reduce_sum2(lid, vec2<f32>(acc.x, acc.z));
        return vec2<f32>(0.0, inverseSqrt(total.y / total.x + eps));
    }
    let total = reduce_welford(lid, to_welford(acc, shift));
    return vec2<f32>(total.y, inverseSqrt(max(total.z / total.x, 0.0) + eps));
}

// (mean(g), mean(g·x̂)) of the row from every invocation's (Σ g, Σ g·x̂); mean(g) is 0 for
// RMSNorm, which has no mean term.
fn grad_means(lid: u32, sums: vec2<f32>) -> vec2<f32> {
    let n = f32(params.n);
    let total = reduce_sum2(lid, sums);
    return vec2<f32>(select(total.x / n, 0.0, RMS), total.y / n);
}

fn affine(v: Unit, j: u32, m: vec2<f32>) -> Unit {
    var y = (v - m.x) * m.y;
    {{AFFINE_W}}
    {{AFFINE_B}}
    return y;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = wid.x + wid.y * nwg.x;
    if (row >= params.rows) {
        return;
    }
    let n = params.n;
    let units = (n + UNIT - 1u) / UNIT;
    var cache: array<Unit, VPT>;
    let m = row_moments(row, lid, &cache);
    if (lid == 0u) {
        stats[row] = m;
    }
    for (var i = 0u; i < VPT; i++) {
        let u = lid + i * WG;
        if (u < units) {
            store(row * n + u * UNIT, affine(cache[i], u * UNIT, m));
        }
    }
    for (var u = lid + VPT * WG; u < units; u += WG) {
        store(row * n + u * UNIT, affine(load_x_again(params.x_off + row * n + u * UNIT), u * UNIT, m));
    }
}

// dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dy · w, x̂ = (x − mean) · rstd
// (RMSNorm: no mean terms, x̂ = x · rstd).
@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = wid.x + wid.y * nwg.x;
    if (row >= params.rows) {
        return;
    }
    let n = params.n;
    let units = (n + UNIT - 1u) / UNIT;
    var cache: array<Unit, VPT>;
    let m = row_moments(row, lid, &cache);
    if (lid == 0u) {
        stats[row] = m;
    }
    // g = dy·w for the cached units stays in registers too: x and dy are read once here.
    var g_cache: array<Unit, VPT>;
    var sums = vec2<f32>(0.0); // (Σ g, Σ g·x̂)
    // Loads first, clamped and branch-free (see row_moments).
    for (var i = 0u; i < VPT; i++) {
        let j = min(lid + i * WG, units - 1u) * UNIT;
        g_cache[i] = load_dy(params.dy_off + row * n + j) * load_w(params.w_off + j);
    }
    for (var i = 0u; i < VPT; i++) {
        if (lid + i * WG < units) {
            let xh = (cache[i] - m.x) * m.y;
            let g = real_lanes(g_cache[i]);
            g_cache[i] = g;
            sums += vec2<f32>(hsum(g), dot(g, xh));
        }
    }
    for (var u = lid + VPT * WG; u < units; u += WG) {
        let j = u * UNIT;
        let xh = (load_x(params.x_off + row * n + j) - m.x) * m.y;
        let g = real_lanes(load_dy(params.dy_off + row * n + j) * load_w(params.w_off + j));
        sums += vec2<f32>(hsum(g), dot(g, xh));
    }
    let means = grad_means(lid, sums);
    for (var i = 0u; i < VPT; i++) {
        let u = lid + i * WG;
        if (u < units) {
            let xh = (cache[i] - m.x) * m.y;
            store(row * n + u * UNIT, m.y * (g_cache[i] - means.x - xh * means.y));
        }
    }
    for (var u = lid + VPT * WG; u < units; u += WG) {
        let j = u * UNIT;
        let xh = (load_x(params.x_off + row * n + j) - m.x) * m.y;
        let g = load_dy(params.dy_off + row * n + j) * load_w(params.w_off + j);
        store(row * n + j, m.y * (g - means.x - xh * means.y));
    }
}

// dx, and dw/db partial sums, in one pass (rows that fit the register class, with a
// weight): a workgroup takes params.chunk_rows consecutive rows, each invocation the same units of
// every one of them, so it adds dy·x̂ and dy for its columns up in registers and writes
// them once, as partials[group · 2N + j] and partials[group · 2N + N + j] (summed over groups
// by param_grads_sum). x and dy are read once — against twice with `backward` and
// `param_grads` (5 passes over rows × N become 3, plus 8·N bytes per group of partials) —
// and w once per group. The next row's x and dy are loaded before this row's reductions
// so that their latency hides behind the barriers.
@compute @workgroup_size(WG)
fn backward_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let group = wid.x + wid.y * nwg.x;
    let rows = params.rows;
    let n = params.n;
    let first = group * params.chunk_rows;
    if (first >= rows) {
        return;
    }
    let last = min(first + params.chunk_rows, rows);
    let units = (n + UNIT - 1u) / UNIT;
    // [VPT] units of this invocation: w, the running dw and db, and the next row's x, dy.
    var w_cache: array<Unit, VPT>;
    var dw: array<Unit, VPT>;
    var db: array<Unit, VPT>;
    var x_next: array<Unit, VPT>;
    var dy_next: array<Unit, VPT>;
    // Clamped, branch-free loads (see row_moments); units past the row are masked below.
    for (var i = 0u; i < VPT; i++) {
        let j = min(lid + i * WG, units - 1u) * UNIT;
        w_cache[i] = load_w(params.w_off + j);
        x_next[i] = load_x(params.x_off + first * n + j);
        dy_next[i] = load_dy(params.dy_off + first * n + j);
        dw[i] = Unit(0.0);
        db[i] = Unit(0.0);
    }
    for (var row = first; row < last; row++) {
        let xs = x_next;
        let dys = dy_next;
        let next = min(row + 1u, last - 1u);
        for (var i = 0u; i < VPT; i++) {
            let j = min(lid + i * WG, units - 1u) * UNIT;
            x_next[i] = load_x(params.x_off + next * n + j);
            dy_next[i] = load_dy(params.dy_off + next * n + j);
        }
        // Moments, as row_moments takes them from its cache.
        let shift = select(xs[0].x, 0.0, RMS);
        var acc = vec3<f32>(0.0);
        for (var i = 0u; i < VPT; i++) {
            if (lid + i * WG < units) {
                acc = add_unit(acc, xs[i], shift);
            }
        }
        let m = moments_of(lid, acc, shift);
        var sums = vec2<f32>(0.0); // (Σ g, Σ g·x̂), g = dy·w
        for (var i = 0u; i < VPT; i++) {
            if (lid + i * WG < units) {
                let xh = (xs[i] - m.x) * m.y;
                let dyr = real_lanes(dys[i]);
                let g = dyr * w_cache[i];
                sums += vec2<f32>(hsum(g), dot(g, xh));
                dw[i] += dyr * xh;
                db[i] += dyr;
            }
        }
        let means = grad_means(lid, sums);
        for (var i = 0u; i < VPT; i++) {
            let u = lid + i * WG;
            if (u < units) {
                let xh = (xs[i] - m.x) * m.y;
                store(row * n + u * UNIT, m.y * (dys[i] * w_cache[i] - means.x - xh * means.y));
            }
        }
    }
    for (var i = 0u; i < VPT; i++) {
        let u = lid + i * WG;
        if (u < units) {
            for (var c = 0u; c < UNIT; c++) {
                partials[group * 2u * n + u * UNIT + c] = dw[i][c];
                partials[group * 2u * n + n + u * UNIT + c] = db[i][c];
            }
        }
    }
}

// Partial dw, db over a chunk of params.chunk_rows rows (longer rows than backward_grads takes): invocation (unit u of columns, chunk
// c) writes partials[c · 2N + j] = Σ dy·x̂ and partials[c · 2N + N + j] = Σ dy for the
// columns j of its unit. Consecutive invocations take consecutive units, so every row read
// is coalesced. Rows go ROW_BATCH at a time with all their loads issued first: a loop that
// waited for each row's loads in turn was as many load latencies long as the chunk has rows.
const ROW_BATCH: u32 = 8u;

@compute @workgroup_size(256)
fn param_grads(@builtin(global_invocation_id) gid: vec3<u32>) {
    let rows = params.rows;
    let n = params.n;
    let u = gid.x;
    let chunk = gid.y;
    if (u * UNIT >= n) {
        return;
    }
    let j = u * UNIT;
    var dw = Unit(0.0);
    var db = Unit(0.0);
    let first = chunk * params.chunk_rows;
    let last = min(first + params.chunk_rows, rows);
    for (var r0 = first; r0 < last; r0 += ROW_BATCH) {
        var xs: array<Unit, ROW_BATCH>;
        var gs: array<Unit, ROW_BATCH>;
        var ms: array<vec2<f32>, ROW_BATCH>;
        for (var i = 0u; i < ROW_BATCH; i++) {
            let r = min(r0 + i, last - 1u);
            ms[i] = stats[r];
            xs[i] = load_x(params.x_off + r * n + j);
            gs[i] = load_dy(params.dy_off + r * n + j);
        }
        for (var i = 0u; i < ROW_BATCH; i++) {
            if (r0 + i < last) {
                dw += gs[i] * (xs[i] - ms[i].x) * ms[i].y;
                db += gs[i];
            }
        }
    }
    for (var c = 0u; c < UNIT; c++) {
        partials[chunk * 2u * n + j + c] = dw[c];
        partials[chunk * 2u * n + n + j + c] = db[c];
    }
}

// dw and db from param_grads' partial sums: out[e] = Σ_c partials[c·2N + e] for e < 2N (dw,
// then db), stored in the weight's dtype (this kernel's `out`, UNIT 2), in one dispatch
// instead of a transposing copy, a row sum and two casts. A workgroup takes 32 element
// pairs × 8 chunk lanes: lane k sums chunks k, k + 8, ... (8 loads issued at a time, pairs
// of consecutive words across the 32 pairs), and the 8 lanes of a pair meet in workgroup
// memory.
var<workgroup> pair_sums: array<vec2<f32>, 256>;

@compute @workgroup_size(256)
fn param_grads_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = params.n;
    let chunks = (params.rows + params.chunk_rows - 1u) / params.chunk_rows;
    let p = (wid.x + wid.y * nwg.x) * 32u + lid % 32u;
    let lane = lid / 32u;
    var acc = vec2<f32>(0.0);
    if (p < n) {
        for (var c0 = lane; c0 < chunks; c0 += 64u) {
            var v: array<vec2<f32>, 8>;
            for (var i = 0u; i < 8u; i++) {
                let at = min(c0 + 8u * i, chunks - 1u) * 2u * n + 2u * p;
                v[i] = vec2<f32>(partials[at], partials[at + 1u]);
            }
            for (var i = 0u; i < 8u; i++) {
                if (c0 + 8u * i < chunks) {
                    acc += v[i];
                }
            }
        }
    }
    pair_sums[lid] = acc;
    workgroupBarrier();
    if (lane == 0u && p < n) {
        var total = acc;
        for (var k = 1u; k < 8u; k++) {
            total += pair_sums[lid + 32u * k];
        }
        store(2u * p, unit_of_pair(total)); // launched with UNIT 2: the pair itself
    }
}

//#if SUBGROUP
// Short rows: one subgroup per row (see softmax_sg_rows). Per-lane shifted sums become
// (count, mean, M2) and merge by shuffles; the row is read a second time for the output.
@compute @workgroup_size(256)
fn forward_sg_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = (wid.x + wid.y * nwg.x) * sg_count + sg_id;
    if (row >= params.rows) {
        return;
    }
    let n = params.n;
    let units = (n + UNIT - 1u) / UNIT;
    let base = params.x_off + row * n;
    var shift = 0.0;
    if (!RMS && lane < units) {
        shift = load_x(base + lane * UNIT).x;
    }
    var acc = vec3<f32>(0.0);
    for (var u = lane; u < units; u += sg_size) {
        acc = add_unit(acc, load_x_first(base + u * UNIT), shift);
    }
    let eps = params.eps;
    var m: vec2<f32>;
    if (RMS) {
        let total = subgroupAdd(vec2<f32>(acc.x, acc.z));
        m = vec2<f32>(0.0, inverseSqrt(total.y / total.x + eps));
    } else {
        let total = welford_subgroup(to_welford(acc, shift));
        m = vec2<f32>(total.y, inverseSqrt(max(total.z / total.x, 0.0) + eps));
    }
    if (lane == 0u) {
        stats[row] = m;
    }
    for (var u = lane; u < units; u += sg_size) {
        store(row * n + u * UNIT, affine(load_x_again(base + u * UNIT), u * UNIT, m));
    }
}

// Short rows, backward (dx; dw and db by param_grads): one subgroup per row, as
// forward_sg_rows, where `backward`'s 256 invocations per row would mostly idle. The
// moments and (Σ g, Σ g·x̂) by subgroup sums; x and dy are read twice (the sums, then dx):
// 5·N·size bytes per row against 3·N·size, for rows too short to fill a workgroup.
@compute @workgroup_size(256)
fn backward_sg_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32{{SG_ARGS}}) {
    {{SG_INIT}}
    let row = (wid.x + wid.y * nwg.x) * sg_count + sg_id;
    if (row >= params.rows) {
        return;
    }
    let n = params.n;
    let units = (n + UNIT - 1u) / UNIT;
    let base = params.x_off + row * n;
    var shift = 0.0;
    if (!RMS && lane < units) {
        shift = load_x(base + lane * UNIT).x;
    }
    var acc = vec3<f32>(0.0);
    for (var u = lane; u < units; u += sg_size) {
        acc = add_unit(acc, load_x(base + u * UNIT), shift);
    }
    let eps = params.eps;
    var m: vec2<f32>;
    if (RMS) {
        let total = subgroupAdd(vec2<f32>(acc.x, acc.z));
        m = vec2<f32>(0.0, inverseSqrt(total.y / total.x + eps));
    } else {
        let total = welford_subgroup(to_welford(acc, shift));
        m = vec2<f32>(total.y, inverseSqrt(max(total.z / total.x, 0.0) + eps));
    }
    if (lane == 0u) {
        stats[row] = m;
    }
    var sums = vec2<f32>(0.0); // (Σ g, Σ g·x̂)
    for (var u = lane; u < units; u += sg_size) {
        let j = u * UNIT;
        let xh = (load_x(base + j) - m.x) * m.y;
        let g = real_lanes(load_dy(params.dy_off + row * n + j) * load_w(params.w_off + j));
        sums += vec2<f32>(hsum(g), dot(g, xh));
    }
    let total = subgroupAdd(sums);
    let means = vec2<f32>(select(total.x / f32(n), 0.0, RMS), total.y / f32(n));
    for (var u = lane; u < units; u += sg_size) {
        let j = u * UNIT;
        let xh = (load_x(base + j) - m.x) * m.y;
        let g = load_dy(params.dy_off + row * n + j) * load_w(params.w_off + j);
        store(row * n + j, m.y * (g - means.x - xh * means.y));
    }
}
//#endif
