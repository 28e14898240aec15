// Flash attention forward on tensor cores: f16 Q·Kᵀ and P·V as 16×16×16 cooperative
// matrices with f32 accumulation, for f16 inputs on adapters that have them.
//
// A workgroup of SGS subgroups (of 32) takes BQ = 16·SGS query rows of one (batch, head); each
// subgroup owns 16 rows and keeps its Q fragments (D/16 of them) and output accumulators
// (D/16) as named cooperative matrices, unrolled by the generator (src/ops/attention.rs).
// Keys and values stream in tiles of BK (64 for D ≤ 64, else 32: workgroup memory) through
// workgroup memory, copied row by row as 16-byte words: K row-major [BK][KS] is Kᵀ in
// column-major order, so Kᵀ blocks load as B operands with coopLoad, no transposition. The
// next tile's words are fetched into registers while the current one is computed.
//
// Two passes instead of FlashAttention's rescaled accumulator: cooperative matrices are
// opaque, so an output fragment cannot be multiplied row by row by exp(m_old − m_new). Pass 1
// computes S = Q·Kᵀ tile by tile and keeps each row's running max and sum; pass 2 recomputes
// S and accumulates O += P·V with P = exp(S − m)/l already final. Q·Kᵀ is computed twice:
// 6·S²·D FLOPs per (batch, head) executed for the 4·S²·D counted. The S×S matrix never
// exists: extra memory is the log-sum-exp per row.
//
// The lanes' part (scale, mask, max, exp): each subgroup stores its 16×BK block of S
// column-major (stride 16), so lane l = row + 16·half reads keys 2k + half of row `row` at
// consecutive addresses across the subgroup (no bank conflicts), and writes P (f16) the
// same way for a column-major A operand. The two lanes of a row merge by one shuffle.
//
// Workgroup memory with 8 subgroups and BK 32, at D = 128: the staging array 18 KiB (Q's
// 128 rows × 64 columns first, then K and V tiles, 17 KiB), S 16 KiB, P 8 KiB: 42 KiB.
// FLOPs per (batch, head): 6·S_q·S_k·D executed (4 counted); bytes: Q and O once, K twice
// and V once per block of BQ query rows (L2-resident at these sizes). Causal tiles past the diagonal are skipped;
// masking (causal bottom-right, bias, ranges) is applied by the lanes to S, as in
// shaders/attention.wgsl, whose params layout this kernel shares. q, k, v are read as
// 16-byte words: the host checked every offset and row stride a multiple of 8 elements.
//
// Placeholders: D, SGS, BK, QC, TILE_HALVES, LOAD_BIAS (flag BIAS), STORE_O, Q_STAGE, O_DECL,
// S_MMA, PV_MMA, O_STORE.

enable f16;
enable wgpu_cooperative_matrix;

const D: u32 = {{D}}u;
// Subgroups per workgroup, each owning 16 query rows.
const SGS: u32 = {{SGS}}u;
const BQ: u32 = 16u * SGS;
const THREADS: u32 = 32u * SGS;
const BK: u32 = {{BK}}u;
const SUBGROUP: u32 = 32u;
// Row strides in halves, padded by 8 (16 bytes) against bank conflicts; Q is staged in
// column slices of QC = min(D, 64).
const QS: u32 = {{QC}}u + 8u;
const KS: u32 = D + 8u;
const VS: u32 = D + 8u;
const V_BASE: u32 = BK * KS;
// 16-byte words per row of D halves.
const WORDS: u32 = D / 8u;
const NEG_BIG: f32 = -3.4028235e38;
const LOG2E: f32 = 1.4426950408889634;

@group(0) @binding(0) var<storage, read> q: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> k: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> v: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> o: array<u32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read> params: array<u32>;
//#if BIAS
@group(0) @binding(6) var<storage, read> bias: array<u32>;
//#endif

// Q staging [BQ][QS] (one column slice at a time) at start; then K [BK][KS] and, at V_BASE,
// V [BK][VS].
var<workgroup> tiles: array<f16, {{TILE_HALVES}}>;
// Per subgroup: S [BK keys][16 rows] f32 (column-major), then output fragments [16][16].
var<workgroup> scratch: array<f32, SGS * 16u * BK>;
// Per subgroup: P [BK keys][16 rows] f16 (column-major).
var<workgroup> p_tile: array<f16, SGS * 16u * BK>;

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

// Eight halves from a 16-byte word into workgroup memory at `at` (through f32, exactly:
// naga 30 does not take bitcast<vec2<f16>>(u32)).
fn put8(at: u32, w: vec4<u32>) {
    let a = vec2<f16>(unpack2x16float(w.x));
    let b = vec2<f16>(unpack2x16float(w.y));
    let c = vec2<f16>(unpack2x16float(w.z));
    let d = vec2<f16>(unpack2x16float(w.w));
    tiles[at] = a.x;
    tiles[at + 1u] = a.y;
    tiles[at + 2u] = b.x;
    tiles[at + 3u] = b.y;
    tiles[at + 4u] = c.x;
    tiles[at + 5u] = c.y;
    tiles[at + 6u] = d.x;
    tiles[at + 7u] = d.y;
}

// The next tile's K (and V) words, fetched into registers while the current tile is
// computed (its global-memory latency hidden behind the tile's work), then written to
// workgroup memory after the barrier that frees it. PF words per invocation.
const PF: u32 = (BK * WORDS + THREADS - 1u) / THREADS;
var<private> k_next: array<vec4<u32>, PF>;
var<private> v_next: array<vec4<u32>, PF>;

// Rows k0..k0 + BK of K (and V) into k_next (v_next), zero past S_k.
fn fetch_kv(b: u32, kv_h: u32, k0: u32, lid: u32, with_v: bool) {
    let S_k = params[4];
    for (var i = 0u; i < PF; i++) {
        let idx = lid + i * THREADS;
        let key = idx / WORDS;
        let w = idx % WORDS;
        var kw = vec4<u32>(0u);
        var vw = vec4<u32>(0u);
        if (idx < BK * WORDS && k0 + key < S_k) {
            kw = k[row_base(12u, b, kv_h, k0 + key) / 8u + w];
            if (with_v) {
                vw = v[row_base(16u, b, kv_h, k0 + key) / 8u + w];
            }
        }
        k_next[i] = kw;
        v_next[i] = vw;
    }
}

fn put_kv(lid: u32, with_v: bool) {
    for (var i = 0u; i < PF; i++) {
        let idx = lid + i * THREADS;
        if (idx < BK * WORDS) {
            let key = idx / WORDS;
            let w = idx % WORDS;
            put8(key * KS + 8u * w, k_next[i]);
            if (with_v) {
                put8(V_BASE + key * VS + 8u * w, v_next[i]);
            }
        }
    }
}

@compute @workgroup_size(THREADS)
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
    // Scores in log2 units, so that exp becomes exp2 (one instruction on GPUs).
    let scale = bitcast<f32>(params[7]) * LOG2E;
    let offset = i32(S_k) - i32(S_q);
    let q0 = wid.x * BQ;
    let h = wid.y;
    let b = wid.z;
    let kv_h = h / (H / H_kv);

    // Q in slices of up to 64 columns (all BQ rows) through the staging memory, each
    // slice's fragments loaded by every subgroup before the next slice overwrites it.
    {{Q_STAGE}}

    var key_tiles = (S_k + BK - 1u) / BK;
    if (causal) {
        let last = i32(min(q0 + BQ, S_q)) - 1 + offset;
        key_tiles = select(0u, min(key_tiles, u32(last) / BK + 1u), last >= 0);
    }
    // This lane's row of the subgroup's 16 and its half of each tile's keys (2k + half).
    let row = lane % 16u;
    let half = lane / 16u;
    let r = q0 + sg * 16u + row;
    // The last key row r sees (causal: bottom-right aligned), as a signed index.
    var last_key = i32(S_k) - 1;
    if (causal) {
        last_key = min(last_key, i32(r) + offset);
    }
    if (r >= S_q) {
        last_key = -1; // a padding row sees nothing (and reads no bias)
    }
    let s_base = sg * 16u * BK;
    let bias_row = params[24] + b * params[25] + h * params[26] + r * params[27];

    // Pass 1: each row's max and sum of exp, online across tiles (base 2).
    var m = NEG_BIG;
    var l = 0.0;
    var xs: array<f32, BK / 2u>;
    fetch_kv(b, kv_h, 0u, lid, false);
    for (var kt = 0u; kt < key_tiles; kt++) {
        let k0 = kt * BK;
        workgroupBarrier();
        put_kv(lid, false);
        workgroupBarrier();
        if (kt + 1u < key_tiles) {
            fetch_kv(b, kv_h, k0 + BK, lid, false);
        }
        {{S_MMA}}
        workgroupBarrier();
        var tile_max = NEG_BIG;
        for (var c = 0u; c < BK / 2u; c++) {
            let key = k0 + 2u * c + half;
            var x = NEG_BIG;
            if (i32(key) <= last_key) {
                x = max(scratch[s_base + (2u * c + half) * 16u + row] * scale + LOG2E * load_bias(bias_row + key * params[28]), NEG_BIG);
            }
            xs[c] = x;
            tile_max = max(tile_max, x);
        }
        let m_new = max(m, tile_max);
        var sum = 0.0;
        for (var c = 0u; c < BK / 2u; c++) {
            sum += select(exp2(xs[c] - m_new), 0.0, xs[c] <= NEG_BIG);
        }
        l = l * exp2(m - m_new) + sum;
        m = m_new;
    }
    let m_other = subgroupShuffleXor(m, 16u);
    let l_other = subgroupShuffleXor(l, 16u);
    let m_row = max(m, m_other);
    let l_row = l * exp2(m - m_row) + l_other * exp2(m_other - m_row);
    let inv_l = select(1.0 / l_row, 0.0, l_row == 0.0);

    // Pass 2: O = Σ P·V with the final statistics.
    {{O_DECL}}
    fetch_kv(b, kv_h, 0u, lid, true);
    for (var kt = 0u; kt < key_tiles; kt++) {
        let k0 = kt * BK;
        workgroupBarrier();
        put_kv(lid, true);
        workgroupBarrier();
        if (kt + 1u < key_tiles) {
            fetch_kv(b, kv_h, k0 + BK, lid, true);
        }
        {{S_MMA}}
        workgroupBarrier();
        for (var c = 0u; c < BK / 2u; c++) {
            let col = 2u * c + half;
            let key = k0 + col;
            var p = 0.0;
            if (i32(key) <= last_key) {
                let x = max(scratch[s_base + col * 16u + row] * scale + LOG2E * load_bias(bias_row + key * params[28]), NEG_BIG);
                p = select(exp2(x - m_row) * inv_l, 0.0, x <= NEG_BIG);
            }
            p_tile[s_base + col * 16u + row] = f16(p);
        }
        workgroupBarrier();
        {{PV_MMA}}
    }

    {{O_STORE}}
    if (half == 0u && r < S_q) {
        // Back to natural units: ln(Σ e^x) = ln 2 · (m + log2 Σ 2^(x − m)).
        lse[(b * H + h) * S_q + r] = select(0.6931471805599453 * (m_row + log2(l_row)), bitcast<f32>(params[29]), l_row == 0.0);
    }
}
