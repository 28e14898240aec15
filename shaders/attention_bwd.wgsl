// Flash attention, backward (FlashAttention-2's recomputation): the probabilities are
// rebuilt tile by tile from q, k and the forward's log-sum-exp, P = exp(scale·q·k + bias −
// lse), never stored whole. With δ_i = Σ_d dO_i·O_i (computed before, by the tensor ops):
//   dV_j = Σ_i P_ij dO_i,   dS_ij = P_ij (dO_i·V_j − δ_i),
//   dK_j = scale Σ_i dS_ij Q_i,   dQ_i = scale Σ_j dS_ij K_j.
// WGSL has no float atomics, so instead of FA2's atomic dQ there are two entry points,
// each owning what it writes:
// - attention_bwd_dkdv: one workgroup per (16-key tile, kv head, batch); loops over the query
//   heads sharing that kv head (grouped-query attention) and their query tiles.
// - attention_bwd_dq: one workgroup per (16-query tile, head, batch); loops over key tiles.
// Both hold their 16 "fixed" rows (K and V, or Q and dO) whole in workgroup memory and stream
// the other side in tiles of 32 rows, the head dim in chunks of 16: pass 1 builds S and dP
// (32 × 16, two per invocation), P and dS go to workgroup memory, pass 2 streams the chunks
// again to accumulate the outputs (invocation = fixed row lid / 16 × column lid % 16 of each
// chunk; the accumulators are per chunk, DP / 16 of them). Causal tiles past the diagonal are
// skipped. Outputs are f32 (the host casts them to the input dtype).
// FLOPs: 2.5× the forward's (S recomputed twice, dP twice, three products). Workgroup memory:
// 2 · 16 · DP · 4 + 4 · 2 KiB = 24 KiB at D = 128.
//
// Placeholders: DP (head dim padded to a multiple of 16), LOAD_Q/K/V/DO/BIAS. Flag: BIAS.

const FR: u32 = 16u;
const SR: u32 = 32u;
const DC: u32 = 16u;
const DP: u32 = {{DP}}u;
const CHUNKS: u32 = DP / DC;

// params: as the forward's (shaders/attention.wgsl) for [0..30); dO at 30 (offset, batch,
// head, row strides). Outputs are contiguous [B, heads, S, D] f32.
@group(0) @binding(0) var<storage, read> q: array<u32>;
@group(0) @binding(1) var<storage, read> k: array<u32>;
@group(0) @binding(2) var<storage, read> v: array<u32>;
@group(0) @binding(3) var<storage, read> dout: array<u32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> params: array<u32>;
//#if BIAS
@group(0) @binding(6) var<storage, read> bias: array<u32>;
//#endif
// δ = rowsum(dO ∘ O): [B, H, S_q]
@group(0) @binding(7) var<storage, read> delta: array<f32>;
// dK (dkdv) or dQ (dq)
@group(0) @binding(8) var<storage, read_write> out_a: array<f32>;
// dV (dkdv)
@group(0) @binding(9) var<storage, read_write> out_b: array<f32>;

var<workgroup> fixed_a: array<f32, FR * DP>;   // K or Q rows
var<workgroup> fixed_b: array<f32, FR * DP>;   // V or dO rows
var<workgroup> st_a: array<f32, SR * DC>;      // a chunk of Q or K rows
var<workgroup> st_b: array<f32, SR * DC>;      // a chunk of dO or V rows
var<workgroup> p_tile: array<f32, SR * FR>;    // [streamed][fixed]
var<workgroup> ds_tile: array<f32, SR * FR>;

fn load_q(e: u32) -> f32 {
    {{LOAD_Q}}
}
fn load_k(e: u32) -> f32 {
    {{LOAD_K}}
}
fn load_v(e: u32) -> f32 {
    {{LOAD_V}}
}
fn load_do(e: u32) -> f32 {
    {{LOAD_DO}}
}
fn load_bias(e: u32) -> f32 {
//#if BIAS
    {{LOAD_BIAS}}
//#else
    return 0.0;
//#endif
}

// Tensors by the index of their params: 8 q, 12 k, 16 v, 30 dO.
fn load_from(at: u32, e: u32) -> f32 {
    switch at {
        case 8u: { return load_q(e); }
        case 12u: { return load_k(e); }
        case 16u: { return load_v(e); }
        default: { return load_do(e); }
    }
}

fn row_base(at: u32, b: u32, h: u32, s: u32) -> u32 {
    return params[at] + b * params[at + 1u] + h * params[at + 2u] + s * params[at + 3u];
}

// Rows r0.. r0 + FR of tensor `at` (head h), all DP columns (zero past `rows` and D), into
// fixed_a (to_b false) or fixed_b.
fn stage_fixed(at: u32, b: u32, h: u32, r0: u32, rows: u32, lid: u32, to_b: bool) {
    let D = params[5];
    for (var idx = lid; idx < FR * DP; idx += 256u) {
        let r = r0 + idx / DP;
        let d = idx % DP;
        var x = 0.0;
        if (r < rows && d < D) {
            x = load_from(at, row_base(at, b, h, r) + d);
        }
        if (to_b) {
            fixed_b[idx] = x;
        } else {
            fixed_a[idx] = x;
        }
    }
}

// Columns dc..dc + DC of rows r0..r0 + SR of tensor `at` into st_a / st_b.
fn stage_chunk(at: u32, b: u32, h: u32, r0: u32, rows: u32, dc: u32, lid: u32, to_b: bool) {
    let D = params[5];
    for (var t = 0u; t < 2u; t++) {
        let idx = lid + 256u * t;
        let r = r0 + idx / DC;
        let d = dc + idx % DC;
        var x = 0.0;
        if (r < rows && d < D) {
            x = load_from(at, row_base(at, b, h, r) + d);
        }
        if (to_b) {
            st_b[idx] = x;
        } else {
            st_a[idx] = x;
        }
    }
}

// P and dS of query `qr`, key `kc` (head h) from the raw dot product q·k and dp = dO·v.
fn p_and_ds(b: u32, h: u32, qr: u32, kc: u32, qk: f32, dp: f32) -> vec2<f32> {
    let H = params[1];
    let S_q = params[3];
    let S_k = params[4];
    let causal = params[6] != 0u;
    let offset = i32(S_k) - i32(S_q);
    let visible = qr < S_q && kc < S_k && (!causal || i32(kc) <= i32(qr) + offset);
    if (!visible) {
        return vec2<f32>(0.0);
    }
    let row = (b * H + h) * S_q + qr;
    let l = lse[row];
    // A row that saw no key has lse −∞ and no gradient.
    if (l < -3.4028235e38) {
        return vec2<f32>(0.0);
    }
    let e = params[24] + b * params[25] + h * params[26] + qr * params[27] + kc * params[28];
    let p = exp(qk * bitcast<f32>(params[7]) + load_bias(e) - l);
    return vec2<f32>(p, p * (dp - delta[row]));
}

// Pass 1 of one streamed tile: S (= st_a·fixed_a) and dP (= st_b·fixed_b) for streamed rows
// lid / 16 and lid / 16 + 16 against fixed row lid % 16. Streams tensors at_a / at_b.
fn scores(at_a: u32, at_b: u32, b: u32, h_st: u32, r0: u32, rows: u32, lid: u32) -> array<vec2<f32>, 2> {
    let f = lid % FR;
    var out: array<vec2<f32>, 2>; // (S, dP) per streamed row
    for (var dc = 0u; dc < DP; dc += DC) {
        workgroupBarrier();
        stage_chunk(at_a, b, h_st, r0, rows, dc, lid, false);
        stage_chunk(at_b, b, h_st, r0, rows, dc, lid, true);
        workgroupBarrier();
        for (var kk = 0u; kk < DC; kk++) {
            let fa = fixed_a[f * DP + dc + kk];
            let fb = fixed_b[f * DP + dc + kk];
            for (var t = 0u; t < 2u; t++) {
                let s = lid / FR + 16u * t;
                out[t] += vec2<f32>(st_a[s * DC + kk] * fa, st_b[s * DC + kk] * fb);
            }
        }
    }
    return out;
}

@compute @workgroup_size(256)
fn attention_bwd_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let H = params[1];
    let H_kv = params[2];
    let S_q = params[3];
    let S_k = params[4];
    let D = params[5];
    let causal = params[6] != 0u;
    let offset = i32(S_k) - i32(S_q);
    let k0 = wid.x * FR;
    let kv_h = wid.y;
    let b = wid.z;
    let group = H / H_kv;
    let f = lid % FR;
    let fr = lid / FR;
    let cc = lid % FR;

    stage_fixed(12u, b, kv_h, k0, S_k, lid, false);
    stage_fixed(16u, b, kv_h, k0, S_k, lid, true);
    var dk: array<f32, CHUNKS>;
    var dv: array<f32, CHUNKS>;
    // Queries that see key k0 or later: i ≥ k0 − offset (causal); earlier tiles are skipped.
    let first_q = select(0, max(0, i32(k0) - offset), causal);
    let q_tiles = (S_q + SR - 1u) / SR;
    for (var g = 0u; g < group; g++) {
        let h = kv_h * group + g;
        for (var qt = u32(first_q) / SR; qt < q_tiles; qt++) {
            let q0 = qt * SR;
            let sd = scores(8u, 30u, b, h, q0, S_q, lid);
            for (var t = 0u; t < 2u; t++) {
                let s = lid / FR + 16u * t;
                let pd = p_and_ds(b, h, q0 + s, k0 + f, sd[t].x, sd[t].y);
                p_tile[s * FR + f] = pd.x;
                ds_tile[s * FR + f] = pd.y;
            }
            for (var c = 0u; c < CHUNKS; c++) {
                workgroupBarrier();
                stage_chunk(8u, b, h, q0, S_q, c * DC, lid, false);
                stage_chunk(30u, b, h, q0, S_q, c * DC, lid, true);
                workgroupBarrier();
                for (var s = 0u; s < SR; s++) {
                    dk[c] += ds_tile[s * FR + fr] * st_a[s * DC + cc];
                    dv[c] += p_tile[s * FR + fr] * st_b[s * DC + cc];
                }
            }
        }
    }
    let r = k0 + fr;
    if (r < S_k) {
        let scale = bitcast<f32>(params[7]);
        let base = ((b * H_kv + kv_h) * S_k + r) * D;
        for (var c = 0u; c < CHUNKS; c++) {
            let col = c * DC + cc;
            if (col < D) {
                out_a[base + col] = dk[c] * scale;
                out_b[base + col] = dv[c];
            }
        }
    }
}

@compute @workgroup_size(256)
fn attention_bwd_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let H = params[1];
    let H_kv = params[2];
    let S_q = params[3];
    let S_k = params[4];
    let D = params[5];
    let causal = params[6] != 0u;
    let offset = i32(S_k) - i32(S_q);
    let q0 = wid.x * FR;
    let h = wid.y;
    let b = wid.z;
    let kv_h = h / (H / H_kv);
    let f = lid % FR;
    let fr = lid / FR;
    let cc = lid % FR;

    stage_fixed(8u, b, h, q0, S_q, lid, false);
    stage_fixed(30u, b, h, q0, S_q, lid, true);
    var dq: array<f32, CHUNKS>;
    var k_tiles = (S_k + SR - 1u) / SR;
    if (causal) {
        let last = i32(min(q0 + FR, S_q)) - 1 + offset;
        k_tiles = select(0u, min(k_tiles, u32(last) / SR + 1u), last >= 0);
    }
    for (var kt = 0u; kt < k_tiles; kt++) {
        let k0 = kt * SR;
        let sd = scores(12u, 16u, b, kv_h, k0, S_k, lid);
        for (var t = 0u; t < 2u; t++) {
            let s = lid / FR + 16u * t;
            let pd = p_and_ds(b, h, q0 + f, k0 + s, sd[t].x, sd[t].y);
            ds_tile[s * FR + f] = pd.y;
        }
        for (var c = 0u; c < CHUNKS; c++) {
            workgroupBarrier();
            stage_chunk(12u, b, kv_h, k0, S_k, c * DC, lid, false);
            workgroupBarrier();
            for (var s = 0u; s < SR; s++) {
                dq[c] += ds_tile[s * FR + fr] * st_a[s * DC + cc];
            }
        }
    }
    let r = q0 + fr;
    if (r < S_q) {
        let scale = bitcast<f32>(params[7]);
        let base = ((b * H + h) * S_q + r) * D;
        for (var c = 0u; c < CHUNKS; c++) {
            let col = c * DC + cc;
            if (col < D) {
                out_a[base + col] = dq[c] * scale;
            }
        }
    }
}
