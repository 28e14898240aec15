// Flash attention forward on tensor cores: f16 Q·Kᵀ and P·V as 16×16×16 cooperative
// matrices with f32 accumulation, for f16 inputs on adapters that have them.
//
// A workgroup of 4 subgroups (of 32) takes 64 query rows of one (batch, head); each
// subgroup owns 16 rows and keeps its Q fragments (D/16 of them) and output accumulators
// (D/16) as named cooperative matrices, unrolled by the generator (src/ops/attention.rs).
// Keys and values stream in tiles of BK = 32 through workgroup memory (K stored transposed,
// so Kᵀ blocks load as B operands).
//
// Two passes instead of FlashAttention's rescaled accumulator: cooperative matrices are
// opaque, so an output fragment cannot be multiplied row by row by exp(m_old − m_new). Pass 1
// computes S = Q·Kᵀ tile by tile and keeps each row's running max and sum (two lanes per
// row, 16 columns each, merged by a subgroup shuffle at the end); pass 2 recomputes S and
// accumulates O += P·V with P = exp(S − m)/l already final. Q·Kᵀ is computed twice: 6·S²·D
// FLOPs per (batch, head) executed for the 4·S²·D counted. The S×S matrix never exists:
// extra memory is the log-sum-exp per row.
//
// Workgroup memory at D = 128: K/V tiles 18.5 KiB (Q staged there once), S scratch 8 KiB,
// P 5 KiB. Causal tiles past the diagonal are skipped; masking (causal bottom-right, bias,
// ranges) is applied by the lanes to S, as in shaders/attention.wgsl, whose params layout
// this kernel shares.
//
// Placeholders: D, TILE_HALVES, LOAD_BIAS (flag BIAS), STORE_O, Q_LOAD, O_DECL, S_MMA,
// PV_MMA, O_STORE.

enable f16;
enable wgpu_cooperative_matrix;

const D: u32 = {{D}}u;
const BQ: u32 = 64u;
const BK: u32 = 32u;
const SUBGROUP: u32 = 32u;
const Q_STRIDE: u32 = D + 8u;
const KT_STRIDE: u32 = BK + 8u;
const V_STRIDE: u32 = D + 8u;
const V_BASE: u32 = D * KT_STRIDE;
const P_STRIDE: u32 = BK + 8u;
const NEG_BIG: f32 = -3.4028235e38;

@group(0) @binding(0) var<storage, read> q: array<u32>;
@group(0) @binding(1) var<storage, read> k: array<u32>;
@group(0) @binding(2) var<storage, read> v: array<u32>;
@group(0) @binding(3) var<storage, read_write> o: array<u32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read> params: array<u32>;
//#if BIAS
@group(0) @binding(6) var<storage, read> bias: array<u32>;
//#endif

// Q staging [64][Q_STRIDE] at start; then Kᵀ [D][KT_STRIDE] and, at V_BASE, V [BK][V_STRIDE].
var<workgroup> tiles: array<f16, {{TILE_HALVES}}>;
// Per subgroup: S [16][BK] f32, then output fragments [16][16] for the store.
var<workgroup> scratch: array<f32, 4u * 16u * BK>;
// Per subgroup: P [16][P_STRIDE] f16.
var<workgroup> p_tile: array<f16, 4u * 16u * P_STRIDE>;

fn load_bias(e: u32) -> f32 {
//#if BIAS
    {{LOAD_BIAS}}
//#else
    return 0.0;
//#endif
}
fn store_o(e: u32, x: f32, y: f32) {
    {{STORE_O}}
}

fn row_base(at: u32, b: u32, h: u32, s: u32) -> u32 {
    return params[at] + b * params[at + 1u] + h * params[at + 2u] + s * params[at + 3u];
}

// The pair of f16 values at even element e of a packed buffer, as f32.
fn pair_q(e: u32) -> vec2<f32> {
    return unpack2x16float(q[e >> 1u]);
}
fn pair_k(e: u32) -> vec2<f32> {
    return unpack2x16float(k[e >> 1u]);
}
fn pair_v(e: u32) -> vec2<f32> {
    return unpack2x16float(v[e >> 1u]);
}

// Kᵀ (and V) of keys k0..k0 + BK into workgroup memory, zero past S_k.
fn stage_kv(b: u32, kv_h: u32, k0: u32, lid: u32, with_v: bool) {
    let S_k = params[4];
    for (var idx = lid; idx < BK * (D / 2u); idx += 128u) {
        let key = idx / (D / 2u);
        let d = 2u * (idx % (D / 2u));
        var kw = vec2<f32>(0.0);
        var vw = vec2<f32>(0.0);
        if (k0 + key < S_k) {
            kw = pair_k(row_base(12u, b, kv_h, k0 + key) + d);
            if (with_v) {
                vw = pair_v(row_base(16u, b, kv_h, k0 + key) + d);
            }
        }
        tiles[d * KT_STRIDE + key] = f16(kw.x);
        tiles[(d + 1u) * KT_STRIDE + key] = f16(kw.y);
        if (with_v) {
            tiles[V_BASE + key * V_STRIDE + d] = f16(vw.x);
            tiles[V_BASE + key * V_STRIDE + d + 1u] = f16(vw.y);
        }
    }
}

// The scaled, biased score of this lane's row and key column `col` of the tile, or NEG_BIG
// where masked.
fn score(sg: u32, row: u32, col: u32, b: u32, h: u32, r: u32, key: u32) -> f32 {
    let S_q = params[3];
    let S_k = params[4];
    let causal = params[6] != 0u;
    let offset = i32(S_k) - i32(S_q);
    if (r >= S_q || key >= S_k || (causal && i32(key) > i32(r) + offset)) {
        return NEG_BIG;
    }
    let e = params[24] + b * params[25] + h * params[26] + r * params[27] + key * params[28];
    let x = scratch[sg * 16u * BK + row * BK + col] * bitcast<f32>(params[7]) + load_bias(e);
    return max(x, NEG_BIG);
}

@compute @workgroup_size(128)
fn attention_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let H = params[1];
    let H_kv = params[2];
    let S_q = params[3];
    let S_k = params[4];
    let causal = params[6] != 0u;
    let offset = i32(S_k) - i32(S_q);
    let q0 = wid.x * BQ;
    let h = wid.y;
    let b = wid.z;
    let kv_h = h / (H / H_kv);

    for (var idx = lid; idx < BQ * (D / 2u); idx += 128u) {
        let r = idx / (D / 2u);
        let d = 2u * (idx % (D / 2u));
        var w = vec2<f32>(0.0);
        if (q0 + r < S_q) {
            w = pair_q(row_base(8u, b, h, q0 + r) + d);
        }
        tiles[r * Q_STRIDE + d] = f16(w.x);
        tiles[r * Q_STRIDE + d + 1u] = f16(w.y);
    }
    workgroupBarrier();
    {{Q_LOAD}}
    workgroupBarrier();

    var key_tiles = (S_k + BK - 1u) / BK;
    if (causal) {
        let last = i32(min(q0 + BQ, S_q)) - 1 + offset;
        key_tiles = select(0u, min(key_tiles, u32(last) / BK + 1u), last >= 0);
    }
    // Two lanes per row: columns 16·half .. 16·half + 15 of each tile.
    let row = lane / 2u;
    let half = lane % 2u;
    let r = q0 + sg * 16u + row;

    // Pass 1: each row's max and sum of exp.
    var m = NEG_BIG;
    var l = 0.0;
    for (var kt = 0u; kt < key_tiles; kt++) {
        let k0 = kt * BK;
        workgroupBarrier();
        stage_kv(b, kv_h, k0, lid, false);
        workgroupBarrier();
        {{S_MMA}}
        workgroupBarrier();
        var tile_max = NEG_BIG;
        for (var c = 0u; c < 16u; c++) {
            let col = half * 16u + c;
            tile_max = max(tile_max, score(sg, row, col, b, h, r, k0 + col));
        }
        let m_new = max(m, tile_max);
        var sum = 0.0;
        for (var c = 0u; c < 16u; c++) {
            let col = half * 16u + c;
            let x = score(sg, row, col, b, h, r, k0 + col);
            sum += select(exp(x - m_new), 0.0, x <= NEG_BIG);
        }
        l = l * exp(m - m_new) + sum;
        m = m_new;
    }
    let m_other = subgroupShuffleXor(m, 1u);
    let l_other = subgroupShuffleXor(l, 1u);
    let m_row = max(m, m_other);
    let l_row = l * exp(m - m_row) + l_other * exp(m_other - m_row);
    let inv_l = select(1.0 / l_row, 0.0, l_row == 0.0);

    // Pass 2: O = Σ P·V with the final statistics.
    {{O_DECL}}
    for (var kt = 0u; kt < key_tiles; kt++) {
        let k0 = kt * BK;
        workgroupBarrier();
        stage_kv(b, kv_h, k0, lid, true);
        workgroupBarrier();
        {{S_MMA}}
        workgroupBarrier();
        for (var c = 0u; c < 16u; c++) {
            let col = half * 16u + c;
            let x = score(sg, row, col, b, h, r, k0 + col);
            let p = select(exp(x - m_row) * inv_l, 0.0, x <= NEG_BIG);
            p_tile[sg * 16u * P_STRIDE + row * P_STRIDE + col] = f16(p);
        }
        workgroupBarrier();
        {{PV_MMA}}
    }

    {{O_STORE}}
    if (half == 0u && r < S_q) {
        lse[(b * H + h) * S_q + r] = select(m_row + log(l_row), bitcast<f32>(params[29]), l_row == 0.0);
    }
}
