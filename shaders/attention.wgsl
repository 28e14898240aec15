// Flash attention, forward (FlashAttention-2's schedule on plain FMA units): for one
// (batch, head) and a tile of BQ = 64 query rows, stream the keys and values in tiles of
// BK = 32 through workgroup memory, keeping per row a running maximum m and sum l of the
// softmax and an output accumulator rescaled by exp(m_old − m_new) whenever m grows. The
// S_q × S_k score matrix never exists in memory: extra memory is the log-sum-exp per row.
//
// Work per key tile, 256 invocations as a 16 × 16 grid (ty, tx):
//   S = Q·Kᵀ   (64 × 32, over the head dim in chunks of DC = 16 staged in workgroup memory;
//               invocation (ty, tx) owns rows 4ty..4ty+3 × keys 2tx, 2tx+1)
//   row max / alpha by 64 invocations, P = exp(S − m) by all, row sums by 64
//   O = alpha·O + P·V (V tile 32 × DP in workgroup memory; invocation owns its 4 rows ×
//               column pairs 2tx + 32j, j < DP / 32, so 16-bit outputs store whole words)
// FLOPs: 4·S_q·S_k·D per (batch, head) (2 for QKᵀ, 2 for PV), halved with the causal mask,
// whose tiles past the diagonal are skipped, not masked. Bytes: Q, O once; K, V once per
// query tile (L2-resident at these sizes). Workgroup memory: 4 + 2 + 8 + 0.5 KiB + 32·DP·4
// (16 KiB at D = 128): 31 KiB, inside the 32 KiB of software devices.
//
// Causal with S_q ≠ S_k is bottom-right aligned (a KV cache's newest queries last): query i
// sees keys j ≤ i + S_k − S_q. A query that sees no key (causal with S_q > S_k, or a mask of
// −inf everywhere) gets output 0 and log-sum-exp −inf.
//
// Placeholders: DP (head dim padded to a multiple of 32), LOAD_Q/K/V/BIAS (loader bodies
// per dtype), STORE_O (stores the pair (x, y) at element e, e even). Flag: BIAS.

const BQ: u32 = 64u;
const BK: u32 = 32u;
const DC: u32 = 16u;
const DP: u32 = {{DP}}u;
const PAIRS: u32 = DP / 32u;
// Finite stand-in for −∞ (WGSL has no infinity literal); scores are clamped to ≥ it.
const NEG_BIG: f32 = -3.4028235e38;

// params (u32 words): [0] B [1] H [2] H_kv [3] S_q [4] S_k [5] D [6] causal [7] scale (f32)
//   q at 8, k at 12, v at 16, o at 20: offset, batch stride, head stride, row stride
//   [24] bias offset [25..29) bias strides (batch, head, query, key; 0 where broadcast)
//   [29] the bits of −∞ (log-sum-exp of a row that saw no key)
@group(0) @binding(0) var<storage, read> q: array<u32>;
@group(0) @binding(1) var<storage, read> k: array<u32>;
@group(0) @binding(2) var<storage, read> v: array<u32>;
@group(0) @binding(3) var<storage, read_write> o: array<u32>;
// [B, H, S_q]
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read> params: array<u32>;
//#if BIAS
@group(0) @binding(6) var<storage, read> bias: array<u32>;
//#endif

var<workgroup> q_chunk: array<f32, 1024>;     // [BQ][DC]
var<workgroup> k_chunk: array<f32, 512>;      // [BK][DC]
var<workgroup> p_tile: array<f32, 2048>;      // [BQ][BK]
var<workgroup> v_tile: array<f32, BK * DP>;   // [BK][DP]
var<workgroup> row_max: array<f32, 64>;
var<workgroup> row_sum: array<f32, 64>;
var<workgroup> row_alpha: array<f32, 64>;

fn load_q(e: u32) -> f32 {
    {{LOAD_Q}}
}
fn load_k(e: u32) -> f32 {
    {{LOAD_K}}
}
fn load_v(e: u32) -> f32 {
    {{LOAD_V}}
}
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

// Element index of row `s`, column 0 of (b, h) in the tensor whose params start at `at`.
fn row_base(at: u32, b: u32, h: u32, s: u32) -> u32 {
    return params[at] + b * params[at + 1u] + h * params[at + 2u] + s * params[at + 3u];
}

@compute @workgroup_size(256)
fn attention_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let H = params[1];
    let H_kv = params[2];
    let S_q = params[3];
    let S_k = params[4];
    let D = params[5];
    let causal = params[6] != 0u;
    let scale = bitcast<f32>(params[7]);
    let q0 = wid.x * BQ;
    let h = wid.y;
    let b = wid.z;
    let kv_h = h / (H / H_kv);
    let ty = lid / 16u;
    let tx = lid % 16u;
    // Keys a query row may see: i + offset (causal, bottom-right aligned).
    let offset = i32(S_k) - i32(S_q);

    if (lid < BQ) {
        row_max[lid] = NEG_BIG;
        row_sum[lid] = 0.0;
    }
    var acc: array<f32, 8u * PAIRS>; // [row i < 4][pair j < PAIRS][2]

    var key_tiles = (S_k + BK - 1u) / BK;
    if (causal) {
        // The last key the tile's last row sees; tiles after it are skipped.
        let last = i32(min(q0 + BQ, S_q)) - 1 + offset;
        key_tiles = select(0u, min(key_tiles, u32(last) / BK + 1u), last >= 0);
    }

    for (var kt = 0u; kt < key_tiles; kt++) {
        let k0 = kt * BK;
        var s: array<f32, 8>; // [row i < 4][key j < 2]
        for (var dc = 0u; dc < DP; dc += DC) {
            workgroupBarrier();
            for (var t = 0u; t < 4u; t++) {
                let idx = lid + 256u * t;
                let r = q0 + idx / DC;
                let d = dc + idx % DC;
                var x = 0.0;
                if (r < S_q && d < D) {
                    x = load_q(row_base(8u, b, h, r) + d);
                }
                q_chunk[idx] = x;
            }
            for (var t = 0u; t < 2u; t++) {
                let idx = lid + 256u * t;
                let r = k0 + idx / DC;
                let d = dc + idx % DC;
                var x = 0.0;
                if (r < S_k && d < D) {
                    x = load_k(row_base(12u, b, kv_h, r) + d);
                }
                k_chunk[idx] = x;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < DC; kk++) {
                let b0 = k_chunk[(tx * 2u) * DC + kk];
                let b1 = k_chunk[(tx * 2u + 1u) * DC + kk];
                for (var i = 0u; i < 4u; i++) {
                    let a = q_chunk[(ty * 4u + i) * DC + kk];
                    s[i * 2u] += a * b0;
                    s[i * 2u + 1u] += a * b1;
                }
            }
        }
        // Every invocation is past the last chunk barrier: the previous tile's V is free.
        for (var idx = lid; idx < BK * DP; idx += 256u) {
            let r = k0 + idx / DP;
            let d = idx % DP;
            var x = 0.0;
            if (r < S_k && d < D) {
                x = load_v(row_base(16u, b, kv_h, r) + d);
            }
            v_tile[idx] = x;
        }
        // Scale, bias, mask.
        for (var i = 0u; i < 4u; i++) {
            let r = q0 + ty * 4u + i;
            for (var j = 0u; j < 2u; j++) {
                let c = k0 + tx * 2u + j;
                var x = NEG_BIG;
                let visible = r < S_q && c < S_k && (!causal || i32(c) <= i32(r) + offset);
                if (visible) {
                    let e = params[24] + b * params[25] + h * params[26] + r * params[27] + c * params[28];
                    x = max(s[i * 2u + j] * scale + load_bias(e), NEG_BIG);
                }
                s[i * 2u + j] = x;
                p_tile[(ty * 4u + i) * BK + tx * 2u + j] = x;
            }
        }
        workgroupBarrier();
        if (lid < BQ) {
            var m = row_max[lid];
            let m_old = m;
            for (var j = 0u; j < BK; j++) {
                m = max(m, p_tile[lid * BK + j]);
            }
            row_max[lid] = m;
            row_alpha[lid] = exp(m_old - m);
        }
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            let m = row_max[ty * 4u + i];
            for (var j = 0u; j < 2u; j++) {
                let x = s[i * 2u + j];
                // Masked scores contribute exactly 0, also while the row's max is NEG_BIG.
                p_tile[(ty * 4u + i) * BK + tx * 2u + j] = select(exp(x - m), 0.0, x <= NEG_BIG);
            }
        }
        workgroupBarrier();
        if (lid < BQ) {
            var l = 0.0;
            for (var j = 0u; j < BK; j++) {
                l += p_tile[lid * BK + j];
            }
            row_sum[lid] = row_sum[lid] * row_alpha[lid] + l;
        }
        for (var i = 0u; i < 4u; i++) {
            let alpha = row_alpha[ty * 4u + i];
            for (var j = 0u; j < 2u * PAIRS; j++) {
                acc[i * 2u * PAIRS + j] *= alpha;
            }
        }
        for (var kk = 0u; kk < BK; kk++) {
            for (var i = 0u; i < 4u; i++) {
                let p = p_tile[(ty * 4u + i) * BK + kk];
                for (var j = 0u; j < PAIRS; j++) {
                    let c = kk * DP + 2u * tx + 32u * j;
                    acc[i * 2u * PAIRS + 2u * j] += p * v_tile[c];
                    acc[i * 2u * PAIRS + 2u * j + 1u] += p * v_tile[c + 1u];
                }
            }
        }
    }
    workgroupBarrier();
    for (var i = 0u; i < 4u; i++) {
        let row = ty * 4u + i;
        let r = q0 + row;
        if (r < S_q) {
            let l = row_sum[row];
            let inv = select(1.0 / l, 0.0, l == 0.0);
            let base = row_base(20u, b, h, r);
            for (var j = 0u; j < PAIRS; j++) {
                let c = 2u * tx + 32u * j;
                if (c < D) {
                    store_o(base + c, acc[i * 2u * PAIRS + 2u * j] * inv, acc[i * 2u * PAIRS + 2u * j + 1u] * inv);
                }
            }
        }
    }
    if (lid < BQ && q0 + lid < S_q) {
        let l = row_sum[lid];
        // −∞ for a row that saw no key.
        lse[(b * H + h) * S_q + q0 + lid] = select(row_max[lid] + log(l), bitcast<f32>(params[29]), l == 0.0);
    }
}
