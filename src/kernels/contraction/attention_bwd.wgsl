// Flash attention, backward (FlashAttention-2's recomputation) on plain FMA units,
// register-tiled like the forward (shaders/attention.wgsl). The probabilities are rebuilt
// tile by tile from q, k and the forward's log-sum-exp, P = exp(scale·q·k + bias − lse),
// never stored whole. With δ_i = Σ_d dO_i·O_i (computed before, by the tensor ops):
//   dV_j = Σ_i P_ij dO_i,   dS_ij = P_ij (dO_i·V_j − δ_i),
//   dK_j = scale Σ_i dS_ij Q_i,   dQ_i = scale Σ_j dS_ij K_j.
// Where the adapter has f32 atomics (SHADER_FLOAT32_ATOMIC, flag ATOMIC_DQ), dkdv also adds
// each tile's dQ contribution into a zeroed f32 dQ with atomicAdd, as FA2 does: one pass
// over the key and query tiles instead of two (dq's S and dP are not recomputed), for
// S_k / 64 atomic adds per dQ element. Elsewhere (core WGSL has no float atomics) there are
// two entry points, each owning what it writes:
// - attention_bwd_dkdv: a workgroup per 64 "fixed" keys (kv head, batch); query tiles of 64
//   (every query head sharing the kv head: grouped-query attention) stream through.
// - attention_bwd_dq: a workgroup per 64 fixed queries (head, batch); key tiles stream.
//
// 256 invocations as a 16 × 16 grid (ty, tx); (ty, tx) owns fixed rows 4ty..4ty+3. Per
// streamed tile:
//   S, dP      (4 fixed × 4 streamed rows 4tx.. per invocation, in registers) over the head
//              dim in chunks of DC (16 or 32): the fixed and streamed rows' chunks staged
//              transposed [DC][64], two vec4 workgroup loads per 16 FMAs, as the forward's S.
//   P, dS      in registers, then to workgroup memory W [64 fixed][64 streamed].
//   out += W·T for the streamed rows T (dO or Q in dkdv, K in dq) in chunks of VC rows
//              [VC][DP]: the invocation owns columns 4tx + 64j of its 4 fixed rows.
// dkdv runs the last step twice per tile (dV += P·dO, then dK += dS·Q) through the same W.
// Within each step the next chunk's global words are fetched into registers while the
// current chunk is computed.
// Causal tiles wholly past the diagonal are skipped; the rest are masked per element.
// Outputs are f32, contiguous [B, heads, S, D] (the host casts them to the input dtype).
//
// FLOPs: 2.5× the forward's 4·S_q·S_k·D (S twice, dP twice, three more products: the
// dkdv kernel computes S, dP, dV, dK; dq computes S, dP, dQ). Workgroup memory: staging
// 8.5 KiB per 16 of DC (two transposed chunks, or a chunk of streamed rows), W 17 KiB:
// 25.5 KiB at DC 16, 34 KiB at DC 32, at every head dim.
//
// Placeholders: DC, DP (head dim padded to a multiple of 64), DS (padded to DC), VC
// (streamed rows per output chunk), LOAD_Q/K/V/DO/BIAS. Flags: BIAS, DKDV (which entry),
// ATOMIC_DQ (dkdv adds dQ too).

// Fixed rows per workgroup, streamed rows per tile.
const FR: u32 = 64u;
const SR: u32 = 64u;
const DC: u32 = {{DC}}u;
const DP: u32 = {{DP}}u;
const DS: u32 = {{DS}}u;
const VC: u32 = {{VC}}u;
// Column blocks of 4 per invocation in the outputs: columns 4tx + 64j.
const CB: u32 = DP / 64u;
// Row stride in vec4 of the transposed chunks and of W (68 floats, as in the forward).
const ST: u32 = 17u;

// params: AttentionParams (attention_params.wgsl), with dO's view in slot VIEW_DO. Outputs are
// contiguous [B, heads, S, D] f32.
@group(0) @binding(0) var<storage, read> q: array<u32>;
@group(0) @binding(1) var<storage, read> k: array<u32>;
@group(0) @binding(2) var<storage, read> v: array<u32>;
@group(0) @binding(3) var<storage, read> dout: array<u32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> params: AttentionParams;
//#if BIAS
@group(0) @binding(6) var<storage, read> bias: array<u32>;
//#endif
// δ = rowsum(dO ∘ O): [B, H, S_q]
@group(0) @binding(7) var<storage, read> delta: array<f32>;
// dK (dkdv) or dQ (dq)
@group(0) @binding(8) var<storage, read_write> out_a: array<f32>;
// dV (dkdv)
@group(0) @binding(9) var<storage, read_write> out_b: array<f32>;
//#if ATOMIC_DQ
// dQ, zeroed by the host, contiguous [B, H, S_q, D]: every dkdv workgroup adds into it.
@group(0) @binding(11) var<storage, read_write> dq_sum: array<atomic<f32>>;
//#endif

// Products: the fixed rows' chunk [DC][ST] then the streamed rows' [DC][ST] (vec4 of 4
// rows); outputs: a chunk of streamed rows [VC][DP / 4].
var<workgroup> staging: array<vec4<f32>, 2u * DC * ST>;
// P or dS [FR fixed][ST] (vec4 of 4 streamed rows; 16 used).
var<workgroup> w_tile: array<vec4<f32>, FR * ST>;

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

// Tensors by their view slot (VIEW_Q, VIEW_K, VIEW_V, VIEW_DO).
fn load_from(at: u32, e: u32) -> f32 {
    switch at {
        case 0u: { return load_q(e); }
        case 1u: { return load_k(e); }
        case 2u: { return load_v(e); }
        default: { return load_do(e); }
    }
}

// The four rows r0.., column d of tensor `at` (head h) as a vec4, zero past `rows` and D.
fn load4_rows(at: u32, b: u32, h: u32, r0: u32, rows: u32, d: u32) -> vec4<f32> {
    var x = vec4<f32>(0.0);
    if (d < params.d) {
        let base = row_base(at, b, h, r0);
        let rs = params.views[at].row;
        for (var j = 0u; j < 4u; j++) {
            if (r0 + j < rows) {
                x[j] = load_from(at, base + j * rs + d);
            }
        }
    }
    return x;
}

// vec4 words (4 rows × 1 column) per invocation of one side's transposed chunk, and of a
// chunk of streamed rows for the outputs (VC·DP = 128·DC floats).
const PER_SIDE: u32 = DC / 16u;
const PER_ROWS: u32 = DC / 8u;

// Σ_d F[f][d]·T[t][d] for fixed rows f0 + 4ty + i and streamed rows t0 + 4tx + c of tensors
// at_f (head h_f, `f_rows` rows) and at_t (head h_t): [i][c]. Each chunk of DC columns is
// staged transposed (word idx = lid + 256n holds column idx % DC of rows 4·(idx / DC)..+3),
// the next chunk fetched into registers while this one is computed.
fn product(at_f: u32, h_f: u32, f0: u32, f_rows: u32, at_t: u32, h_t: u32, t0: u32, t_rows: u32, b: u32, lid: u32) -> array<vec4<f32>, 4> {
    let ty = lid / 16u;
    let tx = lid % 16u;
    var next_f: array<vec4<f32>, PER_SIDE>;
    var next_t: array<vec4<f32>, PER_SIDE>;
    for (var n = 0u; n < PER_SIDE; n++) {
        let idx = lid + 256u * n;
        next_f[n] = load4_rows(at_f, b, h_f, f0 + 4u * (idx / DC), f_rows, idx % DC);
        next_t[n] = load4_rows(at_t, b, h_t, t0 + 4u * (idx / DC), t_rows, idx % DC);
    }
    var s: array<vec4<f32>, 4>;
    for (var dc = 0u; dc < DS; dc += DC) {
        // The previous chunk, or the previous step's rows, is read by now.
        workgroupBarrier();
        for (var n = 0u; n < PER_SIDE; n++) {
            let idx = lid + 256u * n;
            let at = (idx % DC) * ST + idx / DC;
            staging[at] = next_f[n];
            staging[DC * ST + at] = next_t[n];
        }
        workgroupBarrier();
        if (dc + DC < DS) {
            for (var n = 0u; n < PER_SIDE; n++) {
                let idx = lid + 256u * n;
                let d = dc + DC + idx % DC;
                next_f[n] = load4_rows(at_f, b, h_f, f0 + 4u * (idx / DC), f_rows, d);
                next_t[n] = load4_rows(at_t, b, h_t, t0 + 4u * (idx / DC), t_rows, d);
            }
        }
        for (var kk = 0u; kk < DC; kk++) {
            let tv = staging[DC * ST + kk * ST + tx];
            let fv = staging[kk * ST + ty];
            s[0] += fv.x * tv;
            s[1] += fv.y * tv;
            s[2] += fv.z * tv;
            s[3] += fv.w * tv;
        }
    }
    return s;
}

// Streamed rows t0 + vc.., all DP columns of tensor `at` (head h), zero past `rows` and D:
// word n is columns 4·(idx % (DP/4)).. of row idx / (DP/4), idx = lid + 256n.
fn load_rows(at: u32, b: u32, h: u32, t0: u32, rows: u32, lid: u32, n: u32) -> vec4<f32> {
    let idx = lid + 256u * n;
    let r = t0 + idx / (DP / 4u);
    let d = 4u * (idx % (DP / 4u));
    var x = vec4<f32>(0.0);
    if (r < rows && d < params.d) {
        // D is a multiple of 8: the four columns are all inside or all outside.
        let e = row_base(at, b, h, r) + d;
        x = vec4<f32>(load_from(at, e), load_from(at, e + 1u), load_from(at, e + 2u), load_from(at, e + 3u));
    }
    return x;
}

// acc[i][j] += Σ_t W[4ty + i][t] · T[t][4tx + 64j..] over the SR streamed rows t0.. of tensor
// `at` (head h, `rows` rows), VC rows at a time through the staging array, the next chunk
// fetched into registers while this one is computed. W is written before the call (the
// first barrier here orders it).
fn accumulate(acc: ptr<function, array<vec4<f32>, 4u * CB>>, at: u32, b: u32, h: u32, t0: u32, rows: u32, lid: u32) {
    let ty = lid / 16u;
    let tx = lid % 16u;
    var next: array<vec4<f32>, PER_ROWS>;
    for (var n = 0u; n < PER_ROWS; n++) {
        next[n] = load_rows(at, b, h, t0, rows, lid, n);
    }
    for (var vc = 0u; vc < SR; vc += VC) {
        workgroupBarrier();
        for (var n = 0u; n < PER_ROWS; n++) {
            staging[lid + 256u * n] = next[n];
        }
        workgroupBarrier();
        if (vc + VC < SR) {
            for (var n = 0u; n < PER_ROWS; n++) {
                next[n] = load_rows(at, b, h, t0 + vc + VC, rows, lid, n);
            }
        }
        for (var k4 = 0u; k4 < VC / 4u; k4++) {
            // Rows vc + 4k4 + c (c < 4), columns 4tx + 64j..+3: [c][j].
            var tt: array<vec4<f32>, 4u * CB>;
            for (var c = 0u; c < 4u; c++) {
                for (var j = 0u; j < CB; j++) {
                    tt[c * CB + j] = staging[(4u * k4 + c) * (DP / 4u) + tx + 16u * j];
                }
            }
            for (var i = 0u; i < 4u; i++) {
                let w = w_tile[(4u * ty + i) * ST + vc / 4u + k4];
                for (var j = 0u; j < CB; j++) {
                    var a = (*acc)[i * CB + j];
                    a += w.x * tt[j];
                    a += w.y * tt[CB + j];
                    a += w.z * tt[2u * CB + j];
                    a += w.w * tt[3u * CB + j];
                    (*acc)[i * CB + j] = a;
                }
            }
        }
    }
}

struct QueryStats {
    lse: vec4<f32>,
    delta: vec4<f32>,
}

// The log-sum-exp and δ of queries r0..r0 + 3 of head h (0 past S_q, where P is masked).
fn query_stats4(b: u32, h: u32, r0: u32) -> QueryStats {
    let S_q = params.s_q;
    var st = QueryStats(vec4<f32>(0.0), vec4<f32>(0.0));
    for (var j = 0u; j < 4u; j++) {
        if (r0 + j < S_q) {
            let at = (b * params.h + h) * S_q + r0 + j;
            st.lse[j] = lse[at];
            st.delta[j] = delta[at];
        }
    }
    return st;
}

// P and dS for query `qr`, key `kc` of head h, from the raw q·k, dp = dO·v, and the query's
// log-sum-exp `l` and δ. 0 where masked, and for a query that saw no key (lse −∞).
fn p_and_ds(b: u32, h: u32, qr: u32, kc: u32, qk: f32, dp: f32, l: f32, dl: f32) -> vec2<f32> {
    let S_q = params.s_q;
    let S_k = params.s_k;
    let causal = params.causal != 0u;
    let offset = i32(S_k) - i32(S_q);
    let visible = qr < S_q && kc < S_k && (!causal || i32(kc) <= i32(qr) + offset);
    if (!visible || l < -0x1.fffffep+127f) {
        return vec2<f32>(0.0);
    }
    let e = bias_index(b, h, qr, kc);
    let p = exp(qk * params.scale + load_bias(e) - l);
    return vec2<f32>(p, p * (dp - dl));
}

// The invocation's accumulator [i][j] times `factor` as rows r0 + 4ty + i (below `rows`),
// columns 4tx + 64j (below D), of the contiguous [.., D] f32 output from element `out0`.
fn store_rows(acc: ptr<function, array<vec4<f32>, 4u * CB>>, to_b: bool, out0: u32, r0: u32, rows: u32, factor: f32, lid: u32) {
    let D = params.d;
    let ty = lid / 16u;
    let tx = lid % 16u;
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + 4u * ty + i;
        for (var j = 0u; j < CB; j++) {
            let c = 4u * tx + 64u * j;
            if (r < rows && c < D) {
                let x = (*acc)[i * CB + j] * factor;
                let at = out0 + r * D + c;
//#if DKDV
                if (to_b) {
                    out_b[at] = x.x;
                    out_b[at + 1u] = x.y;
                    out_b[at + 2u] = x.z;
                    out_b[at + 3u] = x.w;
                    continue;
                }
//#endif
                out_a[at] = x.x;
                out_a[at + 1u] = x.y;
                out_a[at + 2u] = x.z;
                out_a[at + 3u] = x.w;
            }
        }
    }
}

//#if ATOMIC_DQ
// dQ_i += scale Σ_j dS_ij K_j for queries q0.. of head h over the dkdv workgroup's keys j0..
// (dS as dkdv holds it: ds[i][c] for key 4ty + i, query 4tx + c): dS into W transposed,
// [query 4tx + c][keys 4ty..4ty+3], then K's rows j0.. stream through `accumulate` with this
// tile's queries as the accumulator's rows, added into dq_sum.
fn add_dq(ds: array<vec4<f32>, 4>, b: u32, h: u32, kv_h: u32, q0: u32, j0: u32, lid: u32) {
    let ty = lid / 16u;
    let tx = lid % 16u;
    let S_q = params.s_q;
    let D = params.d;
    // Every invocation has read dS from W (dK's accumulate).
    workgroupBarrier();
    for (var c = 0u; c < 4u; c++) {
        w_tile[(4u * tx + c) * ST + ty] = vec4<f32>(ds[0][c], ds[1][c], ds[2][c], ds[3][c]);
    }
    var dq_tile: array<vec4<f32>, 4u * CB>;
    accumulate(&dq_tile, VIEW_K, b, kv_h, j0, params.s_k, lid);
    let dq0 = (b * params.h + h) * S_q * D;
    for (var i = 0u; i < 4u; i++) {
        let r = q0 + 4u * ty + i;
        for (var j = 0u; j < CB; j++) {
            let c = 4u * tx + 64u * j;
            if (r < S_q && c < D) {
                let x = dq_tile[i * CB + j] * params.scale;
                let at = dq0 + r * D + c;
                atomicAdd(&dq_sum[at], x.x);
                atomicAdd(&dq_sum[at + 1u], x.y);
                atomicAdd(&dq_sum[at + 2u], x.z);
                atomicAdd(&dq_sum[at + 3u], x.w);
            }
        }
    }
}
//#else
fn add_dq(ds: array<vec4<f32>, 4>, b: u32, h: u32, kv_h: u32, q0: u32, j0: u32, lid: u32) {}
//#endif

//#if DKDV
@compute @workgroup_size(256)
fn attention_bwd_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let H = params.h;
    let H_kv = params.h_kv;
    let S_q = params.s_q;
    let S_k = params.s_k;
    let causal = params.causal != 0u;
    let offset = i32(S_k) - i32(S_q);
    let j0 = wid.x * FR;
    let kv_h = wid.y;
    let b = wid.z;
    let group = H / H_kv;
    let ty = lid / 16u;
    let tx = lid % 16u;

    var dk: array<vec4<f32>, 4u * CB>;
    var dv: array<vec4<f32>, 4u * CB>;
    // Queries that see key j0 or later: i ≥ j0 − offset (causal); earlier tiles are skipped.
    let first_q = select(0, max(0, i32(j0) - offset), causal);
    let q_tiles = (S_q + SR - 1u) / SR;
    for (var g = 0u; g < group; g++) {
        let h = kv_h * group + g;
        for (var qt = u32(first_q) / SR; qt < q_tiles; qt++) {
            let q0 = qt * SR;
            // Sᵀ and dPᵀ: keys j0 + 4ty + i × queries q0 + 4tx + c.
            var s = product(VIEW_K, kv_h, j0, S_k, VIEW_Q, h, q0, S_q, b, lid);
            var dp = product(VIEW_V, kv_h, j0, S_k, VIEW_DO, h, q0, S_q, b, lid);
            let stats = query_stats4(b, h, q0 + 4u * tx);
            let l = stats.lse;
            let dl = stats.delta;
            var ds: array<vec4<f32>, 4>;
            for (var i = 0u; i < 4u; i++) {
                var p = vec4<f32>(0.0);
                for (var c = 0u; c < 4u; c++) {
                    let pd = p_and_ds(b, h, q0 + 4u * tx + c, j0 + 4u * ty + i, s[i][c], dp[i][c], l[c], dl[c]);
                    p[c] = pd.x;
                    ds[i][c] = pd.y;
                }
                // W was last read in the previous tile, before the products' barriers.
                w_tile[(4u * ty + i) * ST + tx] = p;
            }
            accumulate(&dv, VIEW_DO, b, h, q0, S_q, lid);
            // Every invocation has read P.
            workgroupBarrier();
            for (var i = 0u; i < 4u; i++) {
                w_tile[(4u * ty + i) * ST + tx] = ds[i];
            }
            accumulate(&dk, VIEW_Q, b, h, q0, S_q, lid);
            add_dq(ds, b, h, kv_h, q0, j0, lid);
        }
    }
    let out0 = (b * H_kv + kv_h) * S_k * params.d;
    store_rows(&dk, false, out0, j0, S_k, params.scale, lid);
    store_rows(&dv, true, out0, j0, S_k, 1.0, lid);
}
//#else
@compute @workgroup_size(256)
fn attention_bwd_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let H = params.h;
    let H_kv = params.h_kv;
    let S_q = params.s_q;
    let S_k = params.s_k;
    let causal = params.causal != 0u;
    let offset = i32(S_k) - i32(S_q);
    let q0 = wid.x * FR;
    let h = wid.y;
    let b = wid.z;
    let kv_h = h / (H / H_kv);
    let ty = lid / 16u;
    let tx = lid % 16u;

    // The fixed queries' log-sum-exp and δ.
    let stats = query_stats4(b, h, q0 + 4u * ty);
    let l = stats.lse;
    let dl = stats.delta;
    var dq: array<vec4<f32>, 4u * CB>;
    var k_tiles = (S_k + SR - 1u) / SR;
    if (causal) {
        let last = i32(min(q0 + FR, S_q)) - 1 + offset;
        k_tiles = select(0u, min(k_tiles, u32(last) / SR + 1u), last >= 0);
    }
    for (var kt = 0u; kt < k_tiles; kt++) {
        let k0 = kt * SR;
        // S and dP: queries q0 + 4ty + i × keys k0 + 4tx + c.
        var s = product(VIEW_Q, h, q0, S_q, VIEW_K, kv_h, k0, S_k, b, lid);
        var dp = product(VIEW_DO, h, q0, S_q, VIEW_V, kv_h, k0, S_k, b, lid);
        for (var i = 0u; i < 4u; i++) {
            var ds = vec4<f32>(0.0);
            for (var c = 0u; c < 4u; c++) {
                ds[c] = p_and_ds(b, h, q0 + 4u * ty + i, k0 + 4u * tx + c, s[i][c], dp[i][c], l[i], dl[i]).y;
            }
            // W was last read in the previous tile, before the products' barriers.
            w_tile[(4u * ty + i) * ST + tx] = ds;
        }
        accumulate(&dq, VIEW_K, b, kv_h, k0, S_k, lid);
    }
    store_rows(&dq, false, (b * H + h) * S_q * params.d, q0, S_q, params.scale, lid);
}
//#endif
