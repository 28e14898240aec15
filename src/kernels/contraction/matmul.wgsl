// Matmul C[b] = A[b] · B[b] (+ bias, activation), f32 accumulation, for every dtype.
//
// `tiled` — register-blocked tiles. A workgroup of (BN/TN)·(BM/TM) invocations computes a
// BM×BN tile of C. Per K-step of BK it stages A[BM×BK] and B[BK×BN] in workgroup memory
// (converted to f32, zero-filled past the edges), then each invocation accumulates a TM×TN
// block of outputs in registers: rows ty + i·(BM/TM), columns tx + j·(BN/TN), so a
// subgroup reads workgroup memory without bank conflicts and stores C coalesced.
//   FLOPs per workgroup K-step: 2·BM·BN·BK. Global bytes: (BM + BN)·BK·size(dtype).
//   Arithmetic intensity: 2·BM·BN / ((BM + BN)·size) FLOP/byte — 16 for 64×64 f32.
//   Workgroup memory: (BM + BN)·BK·4 bytes (8 KiB for 64×64×16).
//
// `tiled_v4` — the same with contiguous per-invocation blocks and vec4 workgroup loads
// (see the entry point).
//
// `thin` — M ≤ THIN_M rows (matrix–vector, decode-time shapes): one workgroup covers 16
// columns of C for all rows, 16 slices of K per column (k ≡ slice mod 16) reduced in
// workgroup memory. Reads B once (the dominant traffic, K·N·size bytes) and A from cache.
// At these sizes the kernel is bound by load latency more than bandwidth (1×768×3072 f16
// is 4.7 MB of B): each invocation issues 4 loads of B before their products, and 16
// slices × N/16 workgroups put 16·N invocations in flight. On the H200 (BENCHMARKS.md,
// tenth round) 1×768×3072 took 0.088 → 0.026 ms in f16 and 0.102 → 0.016 in f32 against
// 64 columns × 4 slices with one load at a time; 8 loads in flight were faster in f32
// and slower in f16 (call 6), so 4 it is.
//
// Operands are strided views: element (m, k) of A is a_off + batch_a + m·a_sm + k·a_sk,
// so transposed operands need no copy. The loader mapping puts consecutive invocations on
// the operand's unit-stride dim (A_K_FAST / B_N_FAST) so global loads coalesce.
//
// Placeholders, each in double braces: LOAD_A/LOAD_B (loader bodies), BM BN BK TM TN
// (tile constants), A_COORD/B_COORD (load mapping), THIN_COLS; matmul_common.wgsl has the
// rest. Flag OUT16: C is f16 or bf16, stored two columns at a time by whoever computed
// both (a 16-bit C used to be stored as f32 and cast by a kernel of its own).

@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;

fn load_a(e: u32) -> f32 {
    {{LOAD_A}}
}

fn load_b(e: u32) -> f32 {
    {{LOAD_B}}
}

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const WG_X: u32 = BN / TN;
const WG_Y: u32 = BM / TM;
const THREADS: u32 = WG_X * WG_Y;

// Column (within the tile) of an invocation's j-th output in `tiled`: tx + j·WG_X, so a
// subgroup reads tile_b without bank conflicts; with a 16-bit C, adjacent pairs
// 2·tx + j%2 + (j/2)·2·WG_X, so that each invocation owns whole words of C.
fn tiled_col(tx: u32, j: u32) -> u32 {
//#if OUT16
    return 2u * tx + (j & 1u) + (j >> 1u) * 2u * WG_X;
//#else
    return tx + j * WG_X;
//#endif
}

var<workgroup> tile_a: array<f32, BK * BM>; // [k][m]
var<workgroup> tile_b: array<f32, BK * BN>; // [k][n]

@compute @workgroup_size(THREADS)
fn tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let M = params.m;
    let N = params.n;
    let K = params.k;
    let a_sm = params.a_sm;
    let a_sk = params.a_sk;
    let b_sk = params.b_sk;
    let b_sn = params.b_sn;
    let tx = lid % WG_X;
    let ty = lid / WG_X;
    let tile = tile_of(wid, nwg);
    let m0 = tile.x * BM;
    let n0 = tile.y * BN;
    let z = wid.z;
    let base = batch_offsets(z);

    var acc: array<f32, TM * TN>;
    for (var i = 0u; i < TM * TN; i++) {
        acc[i] = 0.0;
    }
    var a_reg: array<f32, TM>;
    var b_reg: array<f32, TN>;

    for (var k0 = 0u; k0 < K; k0 += BK) {
        for (var s = 0u; s < BM * BK / THREADS; s++) {
            let l = lid + s * THREADS;
            {{A_COORD}}
            let m = m0 + mm;
            let k = k0 + kk;
            var v = 0.0;
            if (m < M && k < K) {
                v = load_a(base.x + m * a_sm + k * a_sk);
            }
            tile_a[kk * BM + mm] = v;
        }
        for (var s = 0u; s < BK * BN / THREADS; s++) {
            let l = lid + s * THREADS;
            {{B_COORD}}
            let k = k0 + kk;
            let n = n0 + nn;
            var v = 0.0;
            if (k < K && n < N) {
                v = load_b(base.y + k * b_sk + n * b_sn);
            }
            tile_b[kk * BN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            for (var i = 0u; i < TM; i++) {
                a_reg[i] = tile_a[kk * BM + ty + i * WG_Y];
            }
            for (var j = 0u; j < TN; j++) {
                b_reg[j] = tile_b[kk * BN + tiled_col(tx, j)];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(a_reg[i], b_reg[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }

    let c_base = z * M * N;
//#if OUT16
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty + i * WG_Y;
        for (var j = 0u; j < TN; j += 2u) {
            let n = n0 + tiled_col(tx, j);
            if (m < M && n < N) {
                let o = c_base + m * N + n;
                store_pair(o, epilogue(acc[i * TN + j], n, o), epilogue(acc[i * TN + j + 1u], n + 1u, o + 1u));
            }
        }
    }
//#else
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty + i * WG_Y;
        for (var j = 0u; j < TN; j++) {
            let n = n0 + tiled_col(tx, j);
            if (m < M && n < N) {
                let o = c_base + m * N + n;
                c[o] = epilogue(acc[i * TN + j], n, o);
            }
        }
    }
//#endif
//#if FUSED
    // A fused element-wise chain runs over this invocation's own stores, not inside the loop
    // above: there it kept the compiler from unrolling it, and the accumulators, indexed
    // dynamically, left registers (10x slower on the H200).
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty + i * WG_Y;
        for (var j = 0u; j < TN; j++) {
            let n = n0 + tiled_col(tx, j);
            if (m < M && n < N) {
                let o = c_base + m * N + n;
                c[o] = fused_chain(c[o], o);
            }
        }
    }
//#endif
}

// `tiled_v4` — the same tiling with each invocation owning a contiguous TM×TN block, so
// its operands come out of workgroup memory as vec4 loads: (TM + TN)/4 loads per TM·TN
// FMAs instead of TM + TN (TM, TN multiples of 4).
var<workgroup> tile_a4: array<vec4<f32>, BK * BM / 4u>; // [k][m/4]
var<workgroup> tile_b4: array<vec4<f32>, BK * BN / 4u>; // [k][n/4]

@compute @workgroup_size(THREADS)
fn tiled_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let M = params.m;
    let N = params.n;
    let K = params.k;
    let a_sm = params.a_sm;
    let a_sk = params.a_sk;
    let b_sk = params.b_sk;
    let b_sn = params.b_sn;
    let tx = lid % WG_X;
    let ty = lid / WG_X;
    let tile = tile_of(wid, nwg);
    let m0 = tile.x * BM;
    let n0 = tile.y * BN;
    let z = wid.z;
    let base = batch_offsets(z);

    var acc: array<vec4<f32>, max(TM * TN / 4u, 1u)>; // row i, columns 4q..4q+3 at [i * TN/4 + q]
    for (var i = 0u; i < TM * TN / 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    // max(.., 1): the module also builds for the scalar entry's TM, TN of 2.
    var a_reg: array<vec4<f32>, max(TM / 4u, 1u)>;
    var b_reg: array<vec4<f32>, max(TN / 4u, 1u)>;

    for (var k0 = 0u; k0 < K; k0 += BK) {
        for (var s = 0u; s < BM * BK / THREADS; s++) {
            let l = lid + s * THREADS;
            {{A_COORD}}
            let m = m0 + mm;
            let k = k0 + kk;
            var v = 0.0;
            if (m < M && k < K) {
                v = load_a(base.x + m * a_sm + k * a_sk);
            }
            let t = kk * BM + mm;
            tile_a4[t / 4u][t % 4u] = v;
        }
        for (var s = 0u; s < BK * BN / THREADS; s++) {
            let l = lid + s * THREADS;
            {{B_COORD}}
            let k = k0 + kk;
            let n = n0 + nn;
            var v = 0.0;
            if (k < K && n < N) {
                v = load_b(base.y + k * b_sk + n * b_sn);
            }
            let t = kk * BN + nn;
            tile_b4[t / 4u][t % 4u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            for (var q = 0u; q < TM / 4u; q++) {
                a_reg[q] = tile_a4[(kk * BM + ty * TM) / 4u + q];
            }
            for (var q = 0u; q < TN / 4u; q++) {
                b_reg[q] = tile_b4[(kk * BN + tx * TN) / 4u + q];
            }
            for (var i = 0u; i < TM; i++) {
                let av = a_reg[i / 4u][i % 4u];
                for (var q = 0u; q < TN / 4u; q++) {
                    acc[i * (TN / 4u) + q] = fma(vec4<f32>(av), b_reg[q], acc[i * (TN / 4u) + q]);
                }
            }
        }
        workgroupBarrier();
    }

    let c_base = z * M * N;
//#if OUT16
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty * TM + i;
        for (var j = 0u; j < TN; j += 2u) {
            let n = n0 + tx * TN + j;
            if (m < M && n < N) {
                let o = c_base + m * N + n;
                let q = acc[i * (TN / 4u) + j / 4u];
                store_pair(o, epilogue(q[j % 4u], n, o), epilogue(q[j % 4u + 1u], n + 1u, o + 1u));
            }
        }
    }
//#else
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty * TM + i;
        for (var j = 0u; j < TN; j++) {
            let n = n0 + tx * TN + j;
            if (m < M && n < N) {
                let o = c_base + m * N + n;
                c[o] = epilogue(acc[i * (TN / 4u) + j / 4u][j % 4u], n, o);
            }
        }
    }
//#endif
//#if FUSED
    // The fused chain over this invocation's own stores (see the tiled entry).
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty * TM + i;
        for (var j = 0u; j < TN; j++) {
            let n = n0 + tx * TN + j;
            if (m < M && n < N) {
                let o = c_base + m * N + n;
                c[o] = fused_chain(c[o], o);
            }
        }
    }
//#endif
}

const THIN_M: u32 = 8u;
// Columns per workgroup: the host's THIN_COLS (src/ops/matmul.rs), which sizes the grid.
const THIN_COLS: u32 = {{THIN_COLS}}u;
const THIN_SLICES: u32 = 16u;

// Per slice, row and column: the slice's partial sum (8 KiB).
var<workgroup> thin_partial: array<f32, THIN_SLICES * THIN_M * THIN_COLS>;

@compute @workgroup_size(THIN_COLS, THIN_SLICES)
fn thin(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let M = params.m;
    let N = params.n;
    let K = params.k;
    let a_sm = params.a_sm;
    let a_sk = params.a_sk;
    let b_sk = params.b_sk;
    let b_sn = params.b_sn;
    let col = lid3.x;
    let slice = lid3.y;
    let n = wid.x * THIN_COLS + col;
    let z = wid.z;
    let base = batch_offsets(z);
    var acc: array<f32, THIN_M>;
    for (var r = 0u; r < THIN_M; r++) {
        acc[r] = 0.0;
    }
    if (n < N) {
        let b_at = base.y + n * b_sn;
        const S = THIN_SLICES;
        var k = slice;
        // Four steps at a time, their loads of B first (independent, so in flight together).
        for (; k + 3u * S < K; k += 4u * S) {
            let b0 = load_b(b_at + k * b_sk);
            let b1 = load_b(b_at + (k + S) * b_sk);
            let b2 = load_b(b_at + (k + 2u * S) * b_sk);
            let b3 = load_b(b_at + (k + 3u * S) * b_sk);
            for (var r = 0u; r < THIN_M; r++) {
                if (r < M) {
                    let a_at = base.x + r * a_sm;
                    var t = fma(load_a(a_at + k * a_sk), b0, acc[r]);
                    t = fma(load_a(a_at + (k + S) * a_sk), b1, t);
                    t = fma(load_a(a_at + (k + 2u * S) * a_sk), b2, t);
                    acc[r] = fma(load_a(a_at + (k + 3u * S) * a_sk), b3, t);
                }
            }
        }
        for (; k < K; k += S) {
            let bv = load_b(b_at + k * b_sk);
            for (var r = 0u; r < THIN_M; r++) {
                if (r < M) {
                    acc[r] = fma(load_a(base.x + r * a_sm + k * a_sk), bv, acc[r]);
                }
            }
        }
    }
    for (var r = 0u; r < THIN_M; r++) {
        thin_partial[(slice * THIN_M + r) * THIN_COLS + col] = acc[r];
    }
    workgroupBarrier();
    let t = slice * THIN_COLS + col;
//#if OUT16
    // One invocation per (row, column pair) of the tile sums the 16 slices of both columns.
    let r = t / (THIN_COLS / 2u);
    let c_col = (t % (THIN_COLS / 2u)) * 2u;
    let n_out = wid.x * THIN_COLS + c_col;
    if (r < min(M, THIN_M) && n_out < N) {
        var t0 = 0.0;
        var t1 = 0.0;
        for (var s = 0u; s < THIN_SLICES; s++) {
            let at = (s * THIN_M + r) * THIN_COLS + c_col;
            t0 += thin_partial[at];
            t1 += thin_partial[at + 1u];
        }
        let o = z * M * N + r * N + n_out;
        store_pair(o, epilogue(t0, n_out, o), epilogue(t1, n_out + 1u, o + 1u));
    }
//#else
    // One invocation per (row, column) of the tile sums the 16 slices.
    let r = t / THIN_COLS;
    let c_col = t % THIN_COLS;
    let n_out = wid.x * THIN_COLS + c_col;
    if (r < min(M, THIN_M) && n_out < N) {
        var total = 0.0;
        for (var s = 0u; s < THIN_SLICES; s++) {
            total += thin_partial[(s * THIN_M + r) * THIN_COLS + c_col];
        }
        let o = z * M * N + r * N + n_out;
        c[o] = fused_chain(epilogue(total, n_out, o), o);
    }
//#endif
}
