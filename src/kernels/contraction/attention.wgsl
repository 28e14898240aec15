// Flash attention, forward (FlashAttention-2's schedule on plain FMA units), register-tiled:
// for one (batch, head) and a tile of BQ = 64 query rows, stream the keys and values in
// tiles of BK = 64 through workgroup memory, keeping per row a running maximum m and an
// output accumulator rescaled by exp(m_old − m_new) whenever m grows. The S_q × S_k score
// matrix never exists in memory: extra memory is the log-sum-exp per row.
//
// 16·(64 / TR) invocations as a (64 / TR) × 16 grid (ty, tx); invocation (ty, tx) owns TR
// (4 or 8) query rows TR·ty.. and, per key tile, keys 4tx..4tx+3: 4·TR scores in
// registers. Per key tile:
//   S = Q·Kᵀ    over the head dim in chunks of DC (16 or 32): Qᵀ and Kᵀ chunks [DC][64]
//               staged transposed, so that one step kk reads TR rows of Q and 4 keys as
//               TR/4 + 1 vec4 (2 workgroup-memory loads per 16 FMAs at TR 4, 3 per 32 at 8).
//   softmax     scale, bias, mask in registers; each row's max over the tile from 16
//               partial maxima through workgroup memory (one barrier); P = exp(S − m) into
//               workgroup memory [64 rows][64 keys]; each invocation keeps partial row sums
//               of its keys, reduced once at the end.
//   O += P·V    V in chunks of VC keys [VC][DP]; the invocation owns columns 4tx + 64j
//               (j < DP / 64) of its TR rows: per 4 keys, TR vec4 of P and DP/64 vec4 of
//               V per key for 4·TR·DP/16 FMAs.
// The next chunk's global words (Q and K, or V) are fetched into registers while the
// current chunk is computed, so global-memory latency hides behind the FMAs.
//
// FLOPs: 4·S_q·S_k·D per (batch, head) (2 for QKᵀ, 2 for PV), halved with the causal mask,
// whose tiles past the diagonal are skipped, not masked. Bytes: O once; Q, K and V once per
// (query tile, key tile) pair, from L2 at these sizes (Q is re-staged per key tile: keeping
// it would take 16–32 KiB more than the 32 KiB of software devices). Workgroup memory:
// staging 8.5 KiB per 16 of DC, P 17 KiB, row partials 4 KiB: 29.5 KiB at DC 16, 38 KiB
// at DC 32, at every head dim (src/ops/attention.rs, FlashTiling).
//
// Causal with S_q ≠ S_k is bottom-right aligned (a KV cache's newest queries last): query i
// sees keys j ≤ i + S_k − S_q. A query that sees no key (causal with S_q > S_k, or a mask of
// −inf everywhere) gets output 0 and log-sum-exp −inf.
//
// Placeholders: TR, DC, DP (head dim padded to a multiple of 64), DS (padded to DC), VC
// (keys per V chunk), LOAD_Q/K/V/BIAS (loader bodies per dtype), STORE_O (stores the pair
// (x, y) at element e, e even). Flag: BIAS.

const BQ: u32 = 64u;
const BK: u32 = 64u;
// Query rows per invocation (4 or 8) and invocations: 16 per TR rows.
const TR: u32 = {{TR}}u;
const THREADS: u32 = 16u * (BQ / TR);
const DC: u32 = {{DC}}u;
const DP: u32 = {{DP}}u;
const DS: u32 = {{DS}}u;
const VC: u32 = {{VC}}u;
// Column blocks of 4 per invocation in O: columns 4tx + 64j.
const CB: u32 = DP / 64u;
// Row stride in vec4 of the transposed chunks, P and the row partials: 17 (68 floats), so
// that the staging stores of 16 neighbouring invocations (one per head-dim column) spread
// over the banks; reads stay 16-byte aligned.
const ST: u32 = 17u;
// Finite stand-in for −∞ (WGSL has no infinity literal); scores are clamped to ≥ it.
const NEG_BIG: f32 = -0x1.fffffep+127f; // -f32::MAX (browsers reject the decimal -3.4028235e38)
// vec4 words of a Q (and of a K) chunk each invocation fetches; a V chunk takes as many as
// both (VC·DP = 2·64·DC floats), so one register array holds either.
const QK_PER: u32 = 16u * DC / THREADS;
const NEXT: u32 = 2u * QK_PER;

// params: AttentionParams (attention_params.wgsl): sizes, causal, scale, the views of q, k,
// v and o, the bias view, −∞.
@group(0) @binding(0) var<storage, read> q: array<u32>;
@group(0) @binding(1) var<storage, read> k: array<u32>;
@group(0) @binding(2) var<storage, read> v: array<u32>;
@group(0) @binding(3) var<storage, read_write> o: array<u32>;
// [B, H, S_q]
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read> params: AttentionParams;
//#if BIAS
@group(0) @binding(6) var<storage, read> bias: array<u32>;
//#endif

// S phase: Qᵀ chunk [DC][ST] then Kᵀ chunk [DC][ST] (vec4 of 4 rows or 4 keys);
// P·V phase: a V chunk [VC][DP / 4].
var<workgroup> staging: array<vec4<f32>, 2u * DC * ST>;
// P [BQ rows][ST] (vec4 of 4 keys; 16 used).
var<workgroup> p_tile: array<vec4<f32>, BQ * ST>;
// Per row, the 16 invocations' partial maxima (then, at the end, partial sums): [BQ][4].
var<workgroup> row_part: array<vec4<f32>, BQ * 4u>;

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

// Row 0 of this workgroup's (batch, head) in q, k, v, and their row strides.
var<private> q_row0: u32;
var<private> k_row0: u32;
var<private> v_row0: u32;
var<private> q_rs: u32;
var<private> k_rs: u32;
var<private> v_rs: u32;
// The next chunk's words, fetched while the current one is computed: Q then K, or V.
var<private> next: array<vec4<f32>, NEXT>;

// Head-dim columns dc..dc + DC of query rows q0.. and key rows k0.. (64 each): part i takes
// column dc + idx % DC of rows 4·(idx / DC)..+3 (idx = lid + THREADS·i), zero outside S_q,
// S_k and D.
fn fetch_qk(q0: u32, k0: u32, dc: u32, lid: u32) {
    let S_q = params.s_q;
    let S_k = params.s_k;
    let D = params.d;
    for (var i = 0u; i < QK_PER; i++) {
        let idx = lid + THREADS * i;
        let d = dc + idx % DC;
        let r4 = 4u * (idx / DC);
        var qx = vec4<f32>(0.0);
        var kx = vec4<f32>(0.0);
        if (d < D) {
            for (var j = 0u; j < 4u; j++) {
                if (q0 + r4 + j < S_q) {
                    qx[j] = load_q(q_row0 + (q0 + r4 + j) * q_rs + d);
                }
                if (k0 + r4 + j < S_k) {
                    kx[j] = load_k(k_row0 + (k0 + r4 + j) * k_rs + d);
                }
            }
        }
        next[i] = qx;
        next[QK_PER + i] = kx;
    }
}

fn put_qk(lid: u32) {
    for (var i = 0u; i < QK_PER; i++) {
        let idx = lid + THREADS * i;
        let at = (idx % DC) * ST + idx / DC;
        staging[at] = next[i];
        staging[DC * ST + at] = next[QK_PER + i];
    }
}

// Keys k0 + vc.. + VC, all DP columns (zero outside S_k and D): part i is the vec4 of
// columns 4·(idx % (DP/4)).. of key idx / (DP/4).
fn fetch_v(k0: u32, vc: u32, lid: u32) {
    let S_k = params.s_k;
    let D = params.d;
    for (var i = 0u; i < NEXT; i++) {
        let idx = lid + THREADS * i;
        let key = k0 + vc + idx / (DP / 4u);
        let d = 4u * (idx % (DP / 4u));
        var x = vec4<f32>(0.0);
        if (key < S_k && d < D) {
            // D is a multiple of 8: the four columns are all inside or all outside.
            let e = v_row0 + key * v_rs + d;
            x = vec4<f32>(load_v(e), load_v(e + 1u), load_v(e + 2u), load_v(e + 3u));
        }
        next[i] = x;
    }
}

fn put_v(lid: u32) {
    for (var i = 0u; i < NEXT; i++) {
        staging[lid + THREADS * i] = next[i];
    }
}

@compute @workgroup_size(THREADS)
fn attention_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let H = params.h;
    let H_kv = params.h_kv;
    let S_q = params.s_q;
    let S_k = params.s_k;
    let D = params.d;
    let causal = params.causal != 0u;
    let scale = params.scale;
    let q0 = wid.x * BQ;
    let h = wid.y;
    let b = wid.z;
    let kv_h = h / (H / H_kv);
    q_row0 = row_base(VIEW_Q, b, h, 0u);
    k_row0 = row_base(VIEW_K, b, kv_h, 0u);
    v_row0 = row_base(VIEW_V, b, kv_h, 0u);
    q_rs = params.views[VIEW_Q].row;
    k_rs = params.views[VIEW_K].row;
    v_rs = params.views[VIEW_V].row;
    let ty = lid / 16u;
    let tx = lid % 16u;
    // Keys a query row may see: i + offset (causal, bottom-right aligned).
    let offset = i32(S_k) - i32(S_q);

    var m: array<f32, TR>;      // [row i] running max
    var l_part: array<f32, TR>; // [row i] this invocation's share of the row sum
    var acc: array<vec4<f32>, TR * CB>; // [row i][column block j]: columns 4tx + 64j..+3
    for (var i = 0u; i < TR; i++) {
        m[i] = NEG_BIG;
        l_part[i] = 0.0;
    }

    var key_tiles = (S_k + BK - 1u) / BK;
    if (causal) {
        // The last key the tile's last row sees; tiles after it are skipped.
        let last = i32(min(q0 + BQ, S_q)) - 1 + offset;
        key_tiles = select(0u, min(key_tiles, u32(last) / BK + 1u), last >= 0);
    }

    if (key_tiles > 0u) {
        fetch_qk(q0, 0u, 0u, lid);
    }
    for (var kt = 0u; kt < key_tiles; kt++) {
        let k0 = kt * BK;
        var s: array<vec4<f32>, TR>; // [row i][key c]: rows TR·ty + i, keys k0 + 4tx + c
        for (var dc = 0u; dc < DS; dc += DC) {
            // The previous chunk (or the previous tile's last V chunk) is read by now.
            workgroupBarrier();
            put_qk(lid);
            workgroupBarrier();
            if (dc + DC < DS) {
                fetch_qk(q0, k0, dc + DC, lid);
            } else {
                fetch_v(k0, 0u, lid);
            }
            for (var kk = 0u; kk < DC; kk++) {
                let kv = staging[DC * ST + kk * ST + tx];
                for (var i4 = 0u; i4 < TR / 4u; i4++) {
                    let qv = staging[kk * ST + (TR / 4u) * ty + i4];
                    s[4u * i4] += qv.x * kv;
                    s[4u * i4 + 1u] += qv.y * kv;
                    s[4u * i4 + 2u] += qv.z * kv;
                    s[4u * i4 + 3u] += qv.w * kv;
                }
            }
        }
        // Scale, bias, mask; each row's max over this invocation's 4 keys.
        for (var i = 0u; i < TR; i++) {
            let r = q0 + TR * ty + i;
            var part = NEG_BIG;
            for (var c = 0u; c < 4u; c++) {
                let key = k0 + 4u * tx + c;
                var x = NEG_BIG;
                let visible = r < S_q && key < S_k && (!causal || i32(key) <= i32(r) + offset);
                if (visible) {
                    let e = bias_index(b, h, r, key);
                    x = max(s[i][c] * scale + load_bias(e), NEG_BIG);
                }
                s[i][c] = x;
                part = max(part, x);
            }
            row_part[(TR * ty + i) * 4u + tx / 4u][tx % 4u] = part;
        }
        workgroupBarrier();
        // The new max of each row from its 16 partials (every invocation of the row reads
        // them: no further barrier), then P and the rescale of what came before.
        for (var i = 0u; i < TR; i++) {
            let at = (TR * ty + i) * 4u;
            let p4 = max(max(row_part[at], row_part[at + 1u]), max(row_part[at + 2u], row_part[at + 3u]));
            let m_new = max(m[i], max(max(p4.x, p4.y), max(p4.z, p4.w)));
            let alpha = exp(m[i] - m_new);
            m[i] = m_new;
            // Masked scores contribute exactly 0, also while the row's max is NEG_BIG.
            let p = select(exp(s[i] - m_new), vec4<f32>(0.0), s[i] <= vec4<f32>(NEG_BIG));
            l_part[i] = l_part[i] * alpha + (p.x + p.y) + (p.z + p.w);
            p_tile[(TR * ty + i) * ST + tx] = p;
            for (var j = 0u; j < CB; j++) {
                acc[i * CB + j] *= alpha;
            }
        }
        // O += P·V, VC keys at a time.
        for (var vc = 0u; vc < BK; vc += VC) {
            // P is written; the previous V chunk (or the Kᵀ chunk) is read.
            workgroupBarrier();
            put_v(lid);
            workgroupBarrier();
            if (vc + VC < BK) {
                fetch_v(k0, vc + VC, lid);
            } else if (kt + 1u < key_tiles) {
                fetch_qk(q0, k0 + BK, 0u, lid);
            }
            for (var k4 = 0u; k4 < VC / 4u; k4++) {
                // V of keys vc + 4k4 + c (c < 4), columns 4tx + 64j..+3: [c][j].
                var vv: array<vec4<f32>, 4u * CB>;
                for (var c = 0u; c < 4u; c++) {
                    for (var j = 0u; j < CB; j++) {
                        vv[c * CB + j] = staging[(4u * k4 + c) * (DP / 4u) + tx + 16u * j];
                    }
                }
                for (var i = 0u; i < TR; i++) {
                    let p = p_tile[(TR * ty + i) * ST + vc / 4u + k4];
                    for (var j = 0u; j < CB; j++) {
                        // One FMA chain per column block.
                        var a = acc[i * CB + j];
                        a += p.x * vv[j];
                        a += p.y * vv[CB + j];
                        a += p.z * vv[2u * CB + j];
                        a += p.w * vv[3u * CB + j];
                        acc[i * CB + j] = a;
                    }
                }
            }
        }
    }
    // Each row's sum from its 16 invocations' shares.
    workgroupBarrier();
    for (var i = 0u; i < TR; i++) {
        row_part[(TR * ty + i) * 4u + tx / 4u][tx % 4u] = l_part[i];
    }
    workgroupBarrier();
    for (var i = 0u; i < TR; i++) {
        let row = TR * ty + i;
        let r = q0 + row;
        let at = row * 4u;
        let l4 = row_part[at] + row_part[at + 1u] + row_part[at + 2u] + row_part[at + 3u];
        let l = (l4.x + l4.y) + (l4.z + l4.w);
        if (r < S_q) {
            let inv = select(1.0 / l, 0.0, l == 0.0);
            let base = row_base(VIEW_O, b, h, r);
            for (var j = 0u; j < CB; j++) {
                let c = 4u * tx + 64u * j;
                if (c < D) {
                    let x = acc[i * CB + j] * inv;
                    store_o(base + c, x.x, x.y);
                    store_o(base + c + 2u, x.z, x.w);
                }
            }
            if (tx == 0u) {
                // −∞ for a row that saw no key.
                lse[(b * H + h) * S_q + r] = select(m[i] + log(l), params.neg_inf, l == 0.0);
            }
        }
    }
}
