// Flash attention forward on tensor cores, in one pass: f16 Q·Kᵀ and P·V as 16×16×16
// cooperative matrices with f32 accumulation, on adapters that have them: f16 inputs, and
// bf16 and f32 scaled (f32 also split) into f16 as described below.
//
// Tiling. A workgroup of SGS subgroups (of 32) takes BQ = 16·RB·SGS query rows of one
// (batch, head); each subgroup owns RB blocks of 16 rows and keeps their Q fragments
// (RB·D/16) and output accumulators (RB·D/16) as named cooperative matrices, unrolled by the
// generator (src/ops/attention.rs). Every K or V fragment a subgroup loads from workgroup
// memory feeds RB products, so RB = 2 halves the workgroup-memory reads per FLOP. Keys and
// values stream in tiles of BK rows through workgroup memory (STAGES = 2: double-buffered,
// one workgroup barrier per tile), copied as 16-byte words without transposition: K
// row-major [BK][KS] is Kᵀ column-major, so Kᵀ blocks load as B operands with coopLoad. The
// next tile's words are fetched into registers while the current one is computed. Each
// subgroup then works through the staged tile in chunks of KC keys without workgroup
// barriers: with BK > KC the subgroups drift apart between barriers, so one subgroup's
// softmax overlaps another's products, and a subgroup skips the chunks past its last key
// (causal, the last tile).
//
// Online softmax with a lazily rescaled accumulator. Cooperative matrices are opaque, so an
// output fragment cannot be scaled row by row in registers. Each row keeps a reference max
// m_ref (base-2 units) and P = 2^(s − m_ref) is accumulated unnormalised; m_ref moves only
// when a tile's max exceeds it by more than TAU (so P ≤ 2^TAU, well inside f16). When a row
// of the subgroup needs it, the subgroup rescales its accumulators through workgroup memory
// (store, scale each row by 2^(m_old − m_new), load back): for scores of a trained model or
// random data this happens on the first tiles only. The final O is divided by the row sums.
//
// The lanes' part (scale, mask, max, exp): each subgroup stores its 16×KC blocks of S
// column-major (column stride SST = 20 against the store's bank conflicts), so lane
// l = row + 16·half reads keys 2k + half of row `row` at consecutive addresses, and writes
// P (f16, stride 16) the same way for a column-major A operand. The two lanes of a row
// merge their max by one shuffle per chunk and their sums at the end. S and P move between a subgroup's lanes and
// its own cooperative matrices only: subgroup barriers order them (workgroup barriers
// there measured 3-7% slower).
//
// FLOPs per (batch, head): 4·S_q·S_k·D (halved when causal: tiles past the diagonal are
// skipped); bytes: Q and O once, K and V once per block of BQ query rows (L2-resident at
// these sizes). Masking (causal bottom-right, bias, ranges) is applied by the lanes to S,
// as in shaders/attention.wgsl, whose params layout this kernel shares. q, k, v are read as
// 16-byte words: the host checked every offset and row stride a multiple of 16 bytes.
// The S×S matrix never exists: extra memory is the log-sum-exp per row.
//
// f32 inputs (flag SPLIT) run on the same f16 tensor cores, each operand split in two f16
// parts: x·2^e = hi + lo with hi = f16(x·2^e), lo = f16(x·2^e − hi), 22 significant bits
// together (as PyTorch's f32 SDPA splits into TF32 parts). A product is the three terms
// hi·hi + hi·lo + lo·hi, accumulated in f32 (lo·lo, below 2^−22 relative, is dropped): three
// times the tensor-core work of f16, and twice the staging. The power of two 2^e of each of
// q, k and v comes from its largest |x| (attention_range.wgsl, run first), so that the
// scaled maximum lies in [2^13, 2^14): no f16 overflow, and lo keeps its bits for all but
// elements 2^24 below the largest. P is scaled by 2^P_SHIFT (≤ 2^14 with TAU 8) for the
// same reason; the lanes take 2^−(e_q + e_k) into the score scale and the final store
// 2^−e_v into 1/l.
//
// Placeholders: D, SGS, RB, BK, KC, STAGES, SST, HAS_BIAS, QC, TILE_HALVES, EPW, PARTS,
// P_SHIFT, LOAD_BIAS (flag BIAS), STORE_O, Q_STAGE, O_DECL, S_MMA (the S products and their
// store), PV_MMA, O_RESCALE, O_STORE; flags by input dtype: HALF (f16), SPLIT and SCALED
// (f32), BF16 and SCALED (bf16: one f16 part suffices, bf16's 8 significant bits fit f16's
// 11, but its range does not, hence the same scaling as the split).

enable f16;
enable wgpu_cooperative_matrix;
// The accumulators are rescaled under a subgroup-uniform branch (subgroupAny): uniform
// where cooperative matrices need it, which naga's analysis (workgroup scope) cannot see.
diagnostic(off, derivative_uniformity);

const D: u32 = {{D}}u;
// Subgroups per workgroup, each owning RB blocks of 16 query rows.
const SGS: u32 = {{SGS}}u;
const RB: u32 = {{RB}}u;
const BQ: u32 = 16u * RB * SGS;
const THREADS: u32 = 32u * SGS;
const BK: u32 = {{BK}}u;
// Keys per chunk: a subgroup works through a staged tile KC keys at a time (S, P and the
// bounce buffers are sized by KC), with no workgroup barrier between chunks.
const KC: u32 = {{KC}}u;
const STAGES: u32 = {{STAGES}}u;
// The BIAS flag, for expressions.
const HAS_BIAS: bool = {{HAS_BIAS}};
// Elements per 16-byte word of q, k, v: 8 (f16), 4 (f32).
const EPW: u32 = {{EPW}}u;
// f16 parts per operand in workgroup memory: 1, or 2 (hi and lo of an f32, flag SPLIT).
const PARTS: u32 = {{PARTS}}u;
// P = 2^(s − m_ref + P_SHIFT): 0 for f16, 6 for the split parts (P ≤ 2^14).
const P_SHIFT: f32 = {{P_SHIFT}};
// Row strides in halves, padded by 8 (16 bytes) against bank conflicts; Q is staged in
// column slices of QC (64, or 32 for 256 rows; at most D).
const QS: u32 = {{QC}}u + 8u;
const KS: u32 = D + 8u;
// One stage: K [PARTS][BK][KS], then V [PARTS][BK][KS] (hi before lo).
const STAGE_HALVES: u32 = 2u * PARTS * BK * KS;
// 16-byte words per row of D elements.
const WORDS: u32 = D / EPW;
// The reference max moves when a tile's max exceeds it by more than this (base 2).
const TAU: f32 = 8.0;

@group(0) @binding(0) var<storage, read> q: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> k: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> v: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> o: array<u32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read> params: AttentionParams;
//#if BIAS
@group(0) @binding(6) var<storage, read> bias: array<u32>;
//#endif
//#if SCALED
// The largest |x| of q, k and v as f32 bits (attention_range.wgsl).
@group(0) @binding(7) var<storage, read> ranges: array<u32>;
//#endif

// Q staging [BQ][QS] (one column slice at a time) at start; then STAGES × (K, V) tiles.
var<workgroup> tiles: array<f16, {{TILE_HALVES}}>;
// Per subgroup and row block: S [KC keys][SST] f32 (column-major, 16 rows used); also the
// bounce buffer of an accumulator fragment being rescaled or stored.
var<workgroup> scratch: array<f32, SGS * RB * SST * KC>;
// Per subgroup and row block: P [KC keys][16 rows] f16 (column-major); with SPLIT the lo
// parts follow the hi parts, P_LO halves on.
const P_LO: u32 = SGS * RB * 16u * KC;
var<workgroup> p_tile: array<f16, PARTS * P_LO>;

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

// P into p_tile at `at` (with SPLIT its hi part there and its lo part P_LO on).
fn put_p(at: u32, p: f32) {
//#if SPLIT
    let hi = bitcast<f32>(bitcast<u32>(p) & HI_BITS);
    p_tile[at] = f16(hi);
    p_tile[P_LO + at] = f16(p - hi);
//#else
    p_tile[at] = f16(p);
//#endif
}


// The next tile's K and V words, fetched into registers while the current tile is computed
// (its global-memory latency hidden behind the tile's work), then written to workgroup
// memory. PF words of each per invocation.
const PF: u32 = (BK * WORDS + THREADS - 1u) / THREADS;
var<private> k_next: array<vec4<u32>, PF>;
var<private> v_next: array<vec4<u32>, PF>;

// Rows k0..k0 + BK of K and V into k_next and v_next, zero past S_k.
fn fetch_kv(b: u32, kv_h: u32, k0: u32, lid: u32) {
    let S_k = params.s_k;
    for (var i = 0u; i < PF; i++) {
        let idx = lid + i * THREADS;
        let key = idx / WORDS;
        let w = idx % WORDS;
        var kw = vec4<u32>(0u);
        var vw = vec4<u32>(0u);
        if (idx < BK * WORDS && k0 + key < S_k) {
            kw = k[row_base(VIEW_K, b, kv_h, k0 + key) / EPW + w];
            vw = v[row_base(VIEW_V, b, kv_h, k0 + key) / EPW + w];
        }
        k_next[i] = kw;
        v_next[i] = vw;
    }
}

// k_next and v_next into the stage at `base` (halves); f32 and bf16 scaled by fk and fv.
fn put_kv(lid: u32, base: u32, fk: f32, fv: f32) {
    for (var i = 0u; i < PF; i++) {
        let idx = lid + i * THREADS;
        if (idx < BK * WORDS) {
            let key = idx / WORDS;
            let w = idx % WORDS;
//#if SPLIT
            let at = base + key * KS + 4u * w;
            put4(at, hi4(k_next[i], fk));
            put4(at + BK * KS, lo4(k_next[i], fk));
            put4(at + 2u * BK * KS, hi4(v_next[i], fv));
            put4(at + 3u * BK * KS, lo4(v_next[i], fv));
//#endif
//#if BF16
            put8_bf16(base + key * KS + 8u * w, k_next[i], fk);
            put8_bf16(base + BK * KS + key * KS + 8u * w, v_next[i], fv);
//#endif
//#if HALF
            put8(base + key * KS + 8u * w, k_next[i]);
            put8(base + BK * KS + key * KS + 8u * w, v_next[i]);
//#endif
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
    let H = params.h;
    let H_kv = params.h_kv;
    let S_q = params.s_q;
    let S_k = params.s_k;
    let causal = params.causal != 0u;
    // Scores in log2 units, so that exp becomes exp2 (one instruction on GPUs).
    var scale = params.scale * LOG2E;
    // Powers of two for f32 and bf16 inputs (1 for f16): q, k, v scaled on staging, the
    // scores and the output scaled back.
    var fq = 1.0;
    var fk = 1.0;
    var fv = 1.0;
    var out_unscale = 1.0;
//#if SCALED
    let e_q = range_exp(ranges[0]);
    let e_k = range_exp(ranges[1]);
    let e_v = range_exp(ranges[2]);
    fq = pow2(e_q);
    fk = pow2(e_k);
    fv = pow2(e_v);
    scale *= pow2(-e_q) * pow2(-e_k);
    out_unscale = pow2(-e_v);
//#endif
    let offset = i32(S_k) - i32(S_q);
    let q0 = wid.x * BQ;
    let h = wid.y;
    let b = wid.z;
    let kv_h = h / (H / H_kv);
    // The subgroup's first query row (within the workgroup).
    let sg_row = sg * 16u * RB;

    // Q in slices of QC columns (all BQ rows) through the staging memory, each
    // slice's fragments loaded by every subgroup before the next slice overwrites it.
    {{Q_STAGE}}

    var key_tiles = (S_k + BK - 1u) / BK;
    if (causal) {
        let last = i32(min(q0 + BQ, S_q)) - 1 + offset;
        key_tiles = select(0u, min(key_tiles, u32(last) / BK + 1u), last >= 0);
    }
    // This lane's row of each block of 16 and its half of each tile's keys (2k + half).
    let row = lane % 16u;
    let half = lane / 16u;
    // Per row block: the last key the row sees (causal: bottom-right aligned; −1 for a
    // padding row, which then reads no bias), its bias row, reference max and partial sum.
    var last_key: array<i32, RB>;
    var bias_row: array<u32, RB>;
    var m_ref: array<f32, RB>;
    var l: array<f32, RB>;
    for (var rb = 0u; rb < RB; rb++) {
        let r = q0 + sg_row + 16u * rb + row;
        var last = i32(S_k) - 1;
        if (causal) {
            last = min(last, i32(r) + offset);
        }
        last_key[rb] = select(-1, last, r < S_q);
        bias_row[rb] = params.bias_off + b * params.bias_batch + h * params.bias_head + r * params.bias_query;
        m_ref[rb] = NEG_BIG;
        l[rb] = 0.0;
    }
    // The last key any row of this subgroup sees: chunks past it are skipped (causal
    // tiles on the diagonal, the padding of the last tile). Subgroup-uniform.
    var sg_last = i32(S_k) - 1;
    if (causal) {
        sg_last = min(sg_last, i32(q0 + sg_row + 16u * RB) - 1 + offset);
    }
    // The last key every row of this subgroup sees (−1 if it has padding rows): chunks up
    // to it need no per-key test.
    var sg_open_last = i32(S_k) - 1;
    if (causal) {
        sg_open_last = min(sg_open_last, i32(q0 + sg_row) + offset);
    }
    if (q0 + sg_row + 16u * RB > S_q) {
        sg_open_last = -1;
    }
    var alpha: array<f32, RB>;
    var xs: array<f32, KC / 2u>;

    {{O_DECL}}
    fetch_kv(b, kv_h, 0u, lid);
    for (var kt = 0u; kt < key_tiles; kt++) {
        let k0 = kt * BK;
        let stage = (kt % STAGES) * STAGE_HALVES;
        // One stage: the barrier before the write lets every subgroup finish the previous
        // tile. Two stages: this stage was last read two tiles ago, before the barrier
        // below in the previous tile.
        if (STAGES == 1u) {
            workgroupBarrier();
        }
        put_kv(lid, stage, fk, fv);
        workgroupBarrier();
        if (kt + 1u < key_tiles) {
            fetch_kv(b, kv_h, k0 + BK, lid);
        }
        // The tile in chunks of KC keys: S, the lanes' softmax, then P·V for each, with
        // only subgroup barriers (the subgroups drift apart and their phases overlap).
        // (Issuing chunk ch + 1's S products before chunk ch's lane work, for the tensor
        // cores to overlap the softmax, measured no faster on the H200: seventh round.)
        for (var ch = 0u; ch < BK / KC; ch++) {
            let kc0 = k0 + ch * KC;
            if (i32(kc0) > sg_last) {
                break;
            }
            let k_at = stage + ch * KC * KS;
            let v_chunk = k_at + PARTS * BK * KS;
            // S blocks (keys 16j..16j + 15 of each row block) = Σ_c Q_c · Kᵀ_(c, j), stored
            // column-major for the lanes.
            {{S_MMA}}
            subgroupBarrier();
            var need = false;
            // Every key of the chunk is seen by every row of the subgroup and there is no
            // bias: the lanes skip the per-key tests (subgroup-uniform; 3-7% faster on the
            // H200, seventh round, call 6).
            let open = !HAS_BIAS && i32(kc0 + KC) - 1 <= sg_open_last;
            for (var rb = 0u; rb < RB; rb++) {
                let s_base = (sg * RB + rb) * SST * KC;
                let p_base = (sg * RB + rb) * 16u * KC;
                var tile_max = NEG_BIG;
                if (open) {
                    for (var c = 0u; c < KC / 2u; c++) {
                        let x = scratch[s_base + (2u * c + half) * SST + row] * scale;
                        xs[c] = x;
                        tile_max = max(tile_max, x);
                    }
                } else {
                    for (var c = 0u; c < KC / 2u; c++) {
                        let col = 2u * c + half;
                        let key = kc0 + col;
                        var x = NEG_BIG;
                        if (i32(key) <= last_key[rb]) {
                            x = max(scratch[s_base + col * SST + row] * scale + LOG2E * load_bias(bias_row[rb] + key * params.bias_key), NEG_BIG);
                        }
                        xs[c] = x;
                        tile_max = max(tile_max, x);
                    }
                }
                tile_max = max(tile_max, subgroupShuffleXor(tile_max, 16u));
                // NEG_BIG + TAU rounds to NEG_BIG: a row that has seen nothing yet takes the
                // first real max it meets (its accumulator and sum are still zero).
                alpha[rb] = 1.0;
                if (tile_max > m_ref[rb] + TAU) {
                    alpha[rb] = exp2(m_ref[rb] - tile_max);
                    l[rb] *= alpha[rb];
                    m_ref[rb] = tile_max;
                    need = true;
                }
                var sum = 0.0;
                // (exp2 on f16 pairs here measured 1-2.5% slower than f32: call 6.)
                if (open) {
                    for (var c = 0u; c < KC / 2u; c++) {
                        let p = exp2(xs[c] - m_ref[rb] + P_SHIFT);
                        sum += p;
                        put_p(p_base + (2u * c + half) * 16u + row, p);
                    }
                } else {
                    for (var c = 0u; c < KC / 2u; c++) {
                        let col = 2u * c + half;
                        let p = select(exp2(xs[c] - m_ref[rb] + P_SHIFT), 0.0, xs[c] <= NEG_BIG);
                        sum += p;
                        put_p(p_base + col * 16u + row, p);
                    }
                }
                l[rb] += sum;
            }
            // Rescale the accumulators where a row's reference moved (never on the first
            // chunk: they are still zero). subgroupAny makes the branch subgroup-uniform.
            if (subgroupAny(need) && kc0 > 0u) {
                {{O_RESCALE}}
            }
            subgroupBarrier();
            {{PV_MMA}}
        }
    }

    // Each row's sum (its two lanes' halves) and O = accumulator / sum.
    var inv_l: array<f32, RB>;
    for (var rb = 0u; rb < RB; rb++) {
        let l_row = l[rb] + subgroupShuffleXor(l[rb], 16u);
        inv_l[rb] = select(out_unscale / l_row, 0.0, l_row == 0.0);
        let r = q0 + sg_row + 16u * rb + row;
        if (half == 0u && r < S_q) {
            // Back to natural units: ln(Σ e^x) = ln 2 · (m + log2 Σ 2^(x − m)).
            lse[(b * H + h) * S_q + r] = select(0.6931471805599453 * (m_ref[rb] + log2(l_row) - P_SHIFT), params.neg_inf, l_row == 0.0);
        }
    }
    {{O_STORE}}
}

// Scales the accumulator fragment at scratch[at..at + 256] (column-major, stride 16) row
// by row: element e is in row e % 16, which for e = lane + 32i is this lane's row.
fn scale_rows(at: u32, lane: u32, f: f32) {
    for (var e = lane; e < 256u; e += SUBGROUP) {
        scratch[at + e] *= f;
    }
}

// Stores the finished fragment at scratch[at..at + 256] (column-major) as columns
// col0..col0 + 16 of the output rows r0..r0 + 16, each row divided by its sum: lane pairs
// of columns, rows e / 8 (held by lane e / 8, whose inv_l a shuffle brings).
fn store_fragment(at: u32, lane: u32, inv_l: f32, b: u32, h: u32, r0: u32, col0: u32) {
    let S_q = params.s_q;
    for (var i = 0u; i < 4u; i++) {
        let e = lane + 32u * i;
        let rr = e / 8u;
        let cp = 2u * (e % 8u);
        let f = subgroupShuffle(inv_l, rr);
        if (r0 + rr < S_q) {
            store_o(row_base(VIEW_O, b, h, r0 + rr) + col0 + cp, scratch[at + cp * 16u + rr] * f, scratch[at + (cp + 1u) * 16u + rr] * f);
        }
    }
}
