// Flash attention backward on tensor cores (FlashAttention-2's recomputation, f16 products
// as 16×16×16 cooperative matrices with f32 accumulation), on adapters that have them: f16
// inputs, and bf16 and f32 scaled (and f32 split) into f16 as described below. With P = exp(scale·q·k + bias − lse) rebuilt tile by tile and
// δ_i = Σ_d dO_i·O_i (computed before, by the tensor ops):
//   dV_j = Σ_i P_ij dO_i,   dS_ij = P_ij (dO_i·V_j − δ_i),
//   dK_j = scale Σ_i dS_ij Q_i,   dQ_i = scale Σ_j dS_ij K_j.
// Two entry points (flag DKDV picks one), each owning what it writes. (The FMA kernels of
// shaders/attention_bwd.wgsl add dQ by f32 atomics in their dK/dV pass where the adapter has
// SHADER_FLOAT32_ATOMIC; these have not been given that pass yet.)
// - coop_bwd_dkdv: a workgroup per 16·SGS keys of one (kv head, batch). Each subgroup keeps
//   its 16 keys' K and V as A fragments and their dK, dV accumulators; query tiles of BT
//   rows (Q and dO, every query head sharing the kv head) stream through workgroup memory.
//   Per tile: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (Qᵀ, dOᵀ read column-major from the row-major
//   tiles, no transposition), the lanes build Pᵀ and dSᵀ (f16), then dV += Pᵀ·dO and
//   dK += dSᵀ·Q.
// - coop_bwd_dq: a workgroup per 16·SGS queries of one (head, batch). Each subgroup keeps
//   its 16 queries' Q and dO as A fragments and a dQ accumulator; K and V tiles of BT rows
//   stream through. Per tile: S = Q·Kᵀ, dP = dO·Vᵀ, the lanes build dS, dQ += dS·K.
// The lanes' part: a subgroup stores its 16×CH blocks of S and dP column-major (stride SST),
// lane l = row + 16·half takes columns 2c + half of row `row` (consecutive addresses
// across the subgroup). Subgroup barriers order S, dP, P, dS between a subgroup's lanes
// and its own cooperative matrices. Causal tiles wholly past the diagonal are skipped; the
// rest are masked by the lanes.
//
// FLOPs: 2.5× the forward's 4·S_q·S_k·D (Q·Kᵀ twice, dO·Vᵀ twice, three more products):
// 10·S_q·S_k·D executed (three times that on the tensor cores for f32), counted the same way
// as PyTorch's. Workgroup memory at SGS 4, BT 64, CH 16, one stage, D 128 (f16): the two
// tiles 34 KiB, S and dP 10 KiB, P and dS 4 KiB; f32 doubles the tiles and P, dS.
// Tiles of BT > CH rows let the subgroups drift apart between workgroup barriers (one
// subgroup's lane work overlapping another's products). Outputs are f32,
// contiguous [B, heads, S, D] (the host casts them to the input dtype). q, k, v, dO are
// read as 16-byte words: the host checked every offset and row stride a multiple of 16 bytes.
//
// bf16 inputs (flags BF16 and SCALED; HALF for f16) go to f16 times a power of two from each
// tensor's largest |x| (as in the forward): 2^e_q, 2^e_k, 2^e_v, 2^e_do. f32 inputs (flags
// SPLIT and SCALED) likewise, each split into hi and lo f16 parts as in the forward, every
// product the three terms hi·hi + hi·lo + lo·hi; P and dS are split too. Streamed tiles and
// P, dS then take twice the workgroup memory (PARTS = 2). The lanes scale S and dP
// back; dS is stored as dS·2^g, g = e_do + e_v − 22, which keeps it below 2^14 whatever the
// inputs (|dS| ≤ |dP| + |δ| ≤ 2·D·max|dO|·max|V| < 2^(8 + 28 − e_do − e_v) for D ≤ 128) and
// leaves it unscaled for inputs of magnitude ~1 to 4, as on the f16 path; the stores take
// out 2^e_do (dV), 2^(g + e_q) (dK) and 2^(g + e_k) (dQ).
//
// Placeholders: D, SGS, BT, CH, STAGES, SST, FS, TILE_HALVES, EPW, PARTS, LOAD_BIAS (flag
// BIAS), FIXED_FRAGS, ACC_DECL, PRODUCTS (S and dP, and their stores), ACCUMULATE,
// ACC_STORE; flags DKDV (else dq), and by input dtype HALF (f16), BF16 and SCALED (bf16),
// SPLIT and SCALED (f32).

enable f16;
enable wgpu_cooperative_matrix;
// Chunks are skipped under subgroup-uniform conditions (they depend on the subgroup id),
// which naga's analysis (workgroup scope) cannot see.
diagnostic(off, derivative_uniformity);

const D: u32 = {{D}}u;
const SGS: u32 = {{SGS}}u;
const THREADS: u32 = 32u * SGS;
// Rows of each streamed tile (queries in dkdv, keys in dq), staged STAGES at a time
// (2: double-buffered, one workgroup barrier per tile), and computed by each subgroup in
// chunks of CH rows with no workgroup barrier between chunks.
const BT: u32 = {{BT}}u;
const CH: u32 = {{CH}}u;
const STAGES: u32 = {{STAGES}}u;
// Row stride of streamed rows in halves, padded by 8 (16 bytes) against bank conflicts;
// fixed rows are staged in column slices of up to 64, at stride FS.
const RS: u32 = D + 8u;
const FS: u32 = {{FS}}u;
// Elements per 16-byte word (8 f16 or bf16, 4 f32) and f16 parts per operand (2 for f32).
const EPW: u32 = {{EPW}}u;
const PARTS: u32 = {{PARTS}}u;
// A streamed tile's lo part (f32), after its hi part.
const LO: u32 = BT * RS;
// The second streamed tile (dO in dkdv, V in dq), after the first's parts in each stage.
const B_BASE: u32 = PARTS * BT * RS;
const STAGE_HALVES: u32 = 2u * PARTS * BT * RS;
const WORDS: u32 = D / EPW;
// lse (base 2) of a row that takes no part: P = 2^(x − this) underflows to 0.
const NO_ROW: f32 = 3.0e38;

// params: AttentionParams (attention_params.wgsl), with dO's view in slot VIEW_DO.
@group(0) @binding(0) var<storage, read> q: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> k: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> v: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> dout: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> params: AttentionParams;
//#if BIAS
@group(0) @binding(6) var<storage, read> bias: array<u32>;
//#endif
// δ = rowsum(dO ∘ O): [B, H, S_q]
@group(0) @binding(7) var<storage, read> delta: array<f32>;
// dK (dkdv) or dQ (dq)
@group(0) @binding(8) var<storage, read_write> out_a: array<f32>;
//#if DKDV
// dV (dkdv only: a binding the dq kernel does not use would not be in its layout)
@group(0) @binding(9) var<storage, read_write> out_b: array<f32>;
//#endif
//#if SCALED
// The largest |x| of q, k, v and dO as f32 bits (attention_range.wgsl).
@group(0) @binding(10) var<storage, read> ranges: array<u32>;
//#endif

// Factors of q, k, v, dO on staging (powers of two for bf16, 1 for f16) and those the lanes
// and the stores apply (see the top), set at the start of each entry point.
var<private> in_factor: vec4<f32>;
var<private> s_unscale: f32;
var<private> dp_unscale: f32;
var<private> ds_factor: f32;
var<private> unscale_a: f32;
var<private> unscale_b: f32;

// Sets the factors; `partner` is the view slot of the tensor that dS multiplies into the
// first accumulator: VIEW_Q for dK, VIEW_K for dQ.
fn set_factors(partner: u32) {
    in_factor = vec4<f32>(1.0);
    s_unscale = 1.0;
    dp_unscale = 1.0;
    ds_factor = 1.0;
    unscale_a = 1.0;
    unscale_b = 1.0;
//#if SCALED
    let e = vec4<i32>(range_exp(ranges[0]), range_exp(ranges[1]), range_exp(ranges[2]), range_exp(ranges[3]));
    // (Clamped only for inputs beyond 2^100, where f32 overflows anyway.)
    let g = clamp(e.w + e.z - 22, -100, 100);
    in_factor = vec4<f32>(pow2(e.x), pow2(e.y), pow2(e.z), pow2(e.w));
    s_unscale = pow2(-e.x) * pow2(-e.y);
    dp_unscale = pow2(-e.z) * pow2(-e.w);
    ds_factor = pow2(g);
    unscale_a = pow2(-g) * pow2(select(-e.y, -e.x, partner == VIEW_Q));
    unscale_b = pow2(-e.w);
//#endif
}

// The staging factor of the tensor in view slot `at` (VIEW_Q, VIEW_K, VIEW_V, VIEW_DO).
fn factor_of(at: u32) -> f32 {
    switch at {
        case 0u: { return in_factor.x; }
        case 1u: { return in_factor.y; }
        case 2u: { return in_factor.z; }
        default: { return in_factor.w; }
    }
}

// A 16-byte word of tensor `at` into workgroup memory at `base`: eight halves (f16), eight
// bf16 times the tensor's factor, or four f32 times it as their hi (`part` 0) or lo (1) parts.
fn put_word(at: u32, base: u32, x: vec4<u32>, part: u32) {
//#if SPLIT
    if (part == 0u) {
        put4(base, hi4(x, factor_of(at)));
    } else {
        put4(base, lo4(x, factor_of(at)));
    }
//#endif
//#if BF16
    put8_bf16(base, x, factor_of(at));
//#endif
//#if HALF
    put8(base, x);
//#endif
}

// P and dS into their tiles at `at`: f16, or (f32) hi parts cut by a mask and lo parts
// P_LO on, as the forward's P.
fn put_p_ds(at: u32, p: f32, ds: f32) {
//#if SPLIT
    let p_hi = bitcast<f32>(bitcast<u32>(p) & HI_BITS);
    let ds_hi = bitcast<f32>(bitcast<u32>(ds) & HI_BITS);
    p_tile[at] = f16(p_hi);
    p_tile[P_LO + at] = f16(p - p_hi);
    ds_tile[at] = f16(ds_hi);
    ds_tile[P_LO + at] = f16(ds - ds_hi);
//#else
    p_tile[at] = f16(p);
    ds_tile[at] = f16(ds);
//#endif
}

// dS alone (the dq kernel).
fn put_ds(at: u32, ds: f32) {
//#if SPLIT
    let ds_hi = bitcast<f32>(bitcast<u32>(ds) & HI_BITS);
    ds_tile[at] = f16(ds_hi);
    ds_tile[P_LO + at] = f16(ds - ds_hi);
//#else
    ds_tile[at] = f16(ds);
//#endif
}

// STAGES × two streamed tiles [BT][RS] (or, at the start, the fixed rows [16·SGS][FS], one
// tensor and one column slice of FS − 8 at a time).
var<workgroup> tiles: array<f16, {{TILE_HALVES}}>;
// Per subgroup: S and dP [CH][16] f32, column-major; also the bounce buffer of a finished
// accumulator fragment.
var<workgroup> s_tile: array<f32, SGS * SST * CH>;
var<workgroup> dp_tile: array<f32, SGS * SST * CH>;
// Per subgroup: P and dS [CH][16] f16, column-major (A operands); f32: the lo parts P_LO on.
const P_LO: u32 = SGS * 16u * CH;
var<workgroup> p_tile: array<f16, PARTS * P_LO>;
var<workgroup> ds_tile: array<f16, PARTS * P_LO>;
// dkdv: per stage and query of the tile, lse (base 2), then δ.
var<workgroup> row_stats: array<f32, STAGES * 2u * BT>;

fn load_bias(e: u32) -> f32 {
//#if BIAS
    {{LOAD_BIAS}}
//#else
    return 0.0;
//#endif
}

// Word `i` of a tensor by its view slot (VIEW_Q, VIEW_K, VIEW_V, VIEW_DO).
fn word(at: u32, i: u32) -> vec4<u32> {
    switch at {
        case 0u: { return q[i]; }
        case 1u: { return k[i]; }
        case 2u: { return v[i]; }
        default: { return dout[i]; }
    }
}

// Rows s0..s0 + rows of tensor `at` (batch b, head h), their 16-byte words w0..w0 + words,
// into tiles[base..] at row stride `stride` (halves), zero from row `limit` on; f32: the
// `part` (0 hi, 1 lo).
fn stage_block(at: u32, b: u32, h: u32, s0: u32, rows: u32, limit: u32, w0: u32, words: u32, stride: u32, base: u32, lid: u32, part: u32) {
    for (var idx = lid; idx < rows * words; idx += THREADS) {
        let r = idx / words;
        let w = idx % words;
        var x = vec4<u32>(0u);
        if (s0 + r < limit) {
            x = word(at, row_base(at, b, h, s0 + r) / EPW + w0 + w);
        }
        put_word(at, base + r * stride + EPW * w, x, part);
    }
}

// The next streamed tiles' words (A: Q or K, B: dO or V), fetched into registers while the
// current tiles are computed (their global-memory latency hidden behind the tile's work),
// then written to workgroup memory after the barrier that frees it. PF words per
// invocation of each.
const PF: u32 = (BT * WORDS + THREADS - 1u) / THREADS;
var<private> a_next: array<vec4<u32>, PF>;
var<private> b_next: array<vec4<u32>, PF>;

// Rows s0..s0 + BT of tensors `at_a` and `at_b` (batch b, head h), zero from `limit` on.
fn fetch_tiles(at_a: u32, at_b: u32, b: u32, h: u32, s0: u32, limit: u32, lid: u32) {
    for (var i = 0u; i < PF; i++) {
        let idx = lid + i * THREADS;
        let r = idx / WORDS;
        let w = idx % WORDS;
        var x = vec4<u32>(0u);
        var y = vec4<u32>(0u);
        if (idx < BT * WORDS && s0 + r < limit) {
            x = word(at_a, row_base(at_a, b, h, s0 + r) / EPW + w);
            y = word(at_b, row_base(at_b, b, h, s0 + r) / EPW + w);
        }
        a_next[i] = x;
        b_next[i] = y;
    }
}

// a_next and b_next (of tensors `at_a`, `at_b`) into the stage at `base` (halves).
fn put_tiles(lid: u32, base: u32, at_a: u32, at_b: u32) {
    for (var i = 0u; i < PF; i++) {
        let idx = lid + i * THREADS;
        if (idx < BT * WORDS) {
            let r = idx / WORDS;
            let w = idx % WORDS;
            let at = base + r * RS + EPW * w;
            put_word(at_a, at, a_next[i], 0u);
            put_word(at_b, at + B_BASE, b_next[i], 0u);
//#if SPLIT
            put_word(at_a, at + LO, a_next[i], 1u);
            put_word(at_b, at + B_BASE + LO, b_next[i], 1u);
//#endif
        }
    }
}

// Query i's log-sum-exp in base 2 and its δ; (NO_ROW, 0) for a padding row (i ≥ S_q) or
// one that saw no key (lse −∞), whose probabilities are then all 0.
fn query_stats(b: u32, h: u32, i: u32) -> vec2<f32> {
    let S_q = params.s_q;
    if (i >= S_q) {
        return vec2<f32>(NO_ROW, 0.0);
    }
    let at = (b * params.h + h) * S_q + i;
    let l = lse[at];
    return vec2<f32>(select(l * LOG2E, NO_ROW, l <= NEG_BIG), delta[at]);
}

// Stores the fragment bounced at s_tile[at..at + 256] (row-major, stride 16), times
// `factor`, as rows r0..r0 + 16 (those below `limit`) and columns col0..col0 + 16 of a
// contiguous [.., D] f32 output starting at element `out0`: out_b if `to_b`, else out_a.
fn store_rows(at: u32, lane: u32, to_b: bool, out0: u32, r0: u32, limit: u32, col0: u32, factor: f32) {
    for (var e = lane; e < 256u; e += SUBGROUP) {
        let r = e / 16u;
        let c = e % 16u;
        if (r0 + r < limit) {
            let x = s_tile[at + e] * factor;
            let i = out0 + (r0 + r) * D + col0 + c;
//#if DKDV
            if (to_b) {
                out_b[i] = x;
            } else {
                out_a[i] = x;
            }
//#else
            out_a[i] = x;
//#endif
        }
    }
}

//#if DKDV
@compute @workgroup_size(THREADS)
fn coop_bwd_dkdv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let H = params.h;
    let H_kv = params.h_kv;
    let S_q = params.s_q;
    let S_k = params.s_k;
    let causal = params.causal != 0u;
    let scale = params.scale;
    let offset = i32(S_k) - i32(S_q);
    let j0 = wid.x * 16u * SGS;
    let kv_h = wid.y;
    let b = wid.z;
    let group = H / H_kv;
    let s_base = sg * SST * CH;
    let p_base = sg * 16u * CH;
    // This lane's key (row of the subgroup's 16) and its half of each tile's queries.
    let row = lane % 16u;
    let half = lane / 16u;
    let key = j0 + sg * 16u + row;
    set_factors(VIEW_Q);
    let s_mul = scale * LOG2E * s_unscale;

    // K, then V, of the workgroup's keys through the staging memory, as A fragments.
    {{FIXED_FRAGS}}
    {{ACC_DECL}}

    // Causal: query i sees key j when j ≤ i + offset, so queries before j0 − offset see
    // none of the workgroup's keys.
    var i_first = 0u;
    if (causal) {
        i_first = u32(max(i32(j0) - offset, 0)) / BT * BT;
    }
    // One loop over (query head sharing the kv head, query tile) pairs, so that the next
    // pair's tiles can be fetched during this one's work.
    let head_tiles = select(0u, (S_q - i_first + BT - 1u) / BT, i_first < S_q);
    let pairs = group * head_tiles;
    if (pairs > 0u) {
        fetch_tiles(VIEW_Q, VIEW_DO, b, kv_h * group, i_first, S_q, lid);
    }
    // The first query that sees any of this subgroup's keys (causal); chunks wholly
    // before it are skipped.
    var sg_first = 0;
    if (causal) {
        sg_first = i32(j0 + sg * 16u) - offset;
    }
    for (var t = 0u; t < pairs; t++) {
        let hq = kv_h * group + t / head_tiles;
        let i0 = i_first + (t % head_tiles) * BT;
        let stage = (t % STAGES) * STAGE_HALVES;
        let rs = (t % STAGES) * 2u * BT;
        // One stage: the barrier lets every subgroup finish the previous tile. Two: this
        // stage was last read two tiles ago, before the barrier below in the previous tile.
        if (STAGES == 1u) {
            workgroupBarrier();
        }
        put_tiles(lid, stage, VIEW_Q, VIEW_DO);
        if (lid < BT) {
            let i = i0 + lid;
            let stats = query_stats(b, hq, i);
            row_stats[rs + lid] = stats.x;
            row_stats[rs + BT + lid] = stats.y;
        }
        workgroupBarrier();
        if (t + 1u < pairs) {
            let next = t + 1u;
            fetch_tiles(VIEW_Q, VIEW_DO, b, kv_h * group + next / head_tiles, i_first + (next % head_tiles) * BT, S_q, lid);
        }
        for (var ch = 0u; ch < BT / CH; ch++) {
            let ic0 = i0 + ch * CH;
            if (ic0 >= S_q) {
                break;
            }
            if (i32(ic0 + CH) <= sg_first) {
                continue;
            }
            let a_at = stage + ch * CH * RS;
            let b_at = a_at + B_BASE;
            let rc = rs + ch * CH;
            // Sᵀ block t (the subgroup's keys × queries 16t..16t + 15 of the chunk) =
            // Σ_c K_c · Qᵀ_(c, t), dPᵀ likewise from V and dO.
            {{PRODUCTS}}
            subgroupBarrier();
            for (var c = 0u; c < CH / 2u; c++) {
                let col = 2u * c + half;
                let i = ic0 + col;
                let at = s_base + col * SST + row;
                let pt = p_base + col * 16u + row;
                var p = 0.0;
                if (key < S_k && i < S_q && (!causal || i32(key) <= i32(i) + offset)) {
                    let bias_at = bias_index(b, hq, i, key);
                    p = exp2(s_tile[at] * s_mul + LOG2E * load_bias(bias_at) - row_stats[rc + col]);
                }
                put_p_ds(pt, p, p * (dp_tile[at] * dp_unscale - row_stats[rc + BT + col]) * ds_factor);
            }
            subgroupBarrier();
            // dV += Pᵀ · dO, dK += dSᵀ · Q.
            {{ACCUMULATE}}
        }
    }
    // dK (times the scale) and dV, rows below S_k.
    let out0 = (b * H_kv + kv_h) * S_k * D;
    {{ACC_STORE}}
}
//#else
@compute @workgroup_size(THREADS)
fn coop_bwd_dq(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let H = params.h;
    let H_kv = params.h_kv;
    let S_q = params.s_q;
    let S_k = params.s_k;
    let causal = params.causal != 0u;
    let scale = params.scale;
    let offset = i32(S_k) - i32(S_q);
    let q0 = wid.x * 16u * SGS;
    let h = wid.y;
    let b = wid.z;
    let kv_h = h / (H / H_kv);
    let s_base = sg * SST * CH;
    let p_base = sg * 16u * CH;
    // This lane's query (row of the subgroup's 16) and its half of each tile's keys.
    let row = lane % 16u;
    let half = lane / 16u;
    let r = q0 + sg * 16u + row;
    set_factors(VIEW_K);
    let s_mul = scale * LOG2E * s_unscale;

    // Q, then dO, of the workgroup's queries through the staging memory, as A fragments.
    {{FIXED_FRAGS}}
    {{ACC_DECL}}

    let stats = query_stats(b, h, r);
    let l2 = stats.x;
    let dl = stats.y;
    var last_key = i32(S_k) - 1;
    if (causal) {
        last_key = min(last_key, i32(r) + offset);
    }
    if (r >= S_q) {
        last_key = -1;
    }
    var key_tiles = (S_k + BT - 1u) / BT;
    if (causal) {
        let last = i32(min(q0 + 16u * SGS, S_q)) - 1 + offset;
        key_tiles = select(0u, min(key_tiles, u32(last) / BT + 1u), last >= 0);
    }
    let bias_row = params.bias_off + b * params.bias_batch + h * params.bias_head + r * params.bias_query;
    if (key_tiles > 0u) {
        fetch_tiles(VIEW_K, VIEW_V, b, kv_h, 0u, S_k, lid);
    }
    // The last key any query of this subgroup sees: chunks past it are skipped.
    var sg_last = i32(S_k) - 1;
    if (causal) {
        sg_last = min(sg_last, i32(q0 + sg * 16u + 15u) + offset);
    }
    for (var kt = 0u; kt < key_tiles; kt++) {
        let k0 = kt * BT;
        let stage = (kt % STAGES) * STAGE_HALVES;
        if (STAGES == 1u) {
            workgroupBarrier();
        }
        put_tiles(lid, stage, VIEW_K, VIEW_V);
        workgroupBarrier();
        if (kt + 1u < key_tiles) {
            fetch_tiles(VIEW_K, VIEW_V, b, kv_h, k0 + BT, S_k, lid);
        }
        for (var ch = 0u; ch < BT / CH; ch++) {
            let kc0 = k0 + ch * CH;
            if (i32(kc0) > sg_last) {
                break;
            }
            let a_at = stage + ch * CH * RS;
            let b_at = a_at + B_BASE;
            // S block t (the subgroup's queries × keys 16t..16t + 15 of the chunk) =
            // Σ_c Q_c · Kᵀ_(c, t), dP likewise from dO and V.
            {{PRODUCTS}}
            subgroupBarrier();
            for (var c = 0u; c < CH / 2u; c++) {
                let col = 2u * c + half;
                let key = kc0 + col;
                let at = s_base + col * SST + row;
                let pt = p_base + col * 16u + row;
                var p = 0.0;
                if (i32(key) <= last_key) {
                    p = exp2(s_tile[at] * s_mul + LOG2E * load_bias(bias_row + key * params.bias_key) - l2);
                }
                put_ds(pt, p * (dp_tile[at] * dp_unscale - dl) * ds_factor);
            }
            subgroupBarrier();
            // dQ += dS · K.
            {{ACCUMULATE}}
        }
    }
    // dQ (times the scale), rows below S_q.
    let out0 = (b * H + h) * S_q * D;
    {{ACC_STORE}}
}
//#endif
