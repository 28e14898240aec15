// Matmul on tensor cores: 16×16×16 cooperative matrices, f16 A/B, f32 accumulation.
//
// Tiling: a workgroup of SG_M·SG_N subgroups computes a BM×BN tile of C, BM = SG_M·FM·16,
// BN = SG_N·FN·16. Each subgroup owns FM×FN fragments of 16×16 (named accumulators,
// unrolled by the generator in matmul.rs: an array of fragments indexed in a
// loop ran 2.3× slower on the H200). Per K-step of BK, A[BM×BK] and B[BK×BN] are staged in
// workgroup memory as f16 (rows padded by 8 halves against bank conflicts; each tile laid
// out as its operand is in memory), then each
// subgroup runs BK/16 × FM×FN coopMultiplyAdd.
//   FLOPs per K-step: 2·BM·BN·BK. Global bytes: (BM + BN)·BK·2 (f16).
//   Arithmetic intensity: BM·BN / (BM + BN) FLOP/byte — 64 for a 128×128 tile.
// Staging is either one 16-byte word per load (8 halves of f16/bf16, 4 f32) when the
// operand is contiguous along its inner dim and aligned to the word (word staging), or one
// element per load through the dtype loader (any strides). With PREFETCH (word staging
// only), the next K-step's global words are loaded into registers before this step's MMAs,
// so their latency hides behind the tensor cores; they are written to workgroup memory after
// the second barrier. The epilogue goes through a per-subgroup 16×16 f32 scratch tile so
// that edge tiles are stored with bounds checks and bias/activation apply before the store.
//
// How values become f16 (the generator's `Staging`): f16 as they are; f32 rounded (only
// MatmulPrecision::Medium allows it). Flag SCALED: each operand is scaled by a power of two
// from its largest |x| (matmul_range.wgsl, read from `ranges`) so that it lies in
// [2^13, 2^14), and the store divides the scales out — bf16 then converts exactly to f16
// (f16's 11 significant bits hold bf16's 8) down to 2^28 below the operand's max.
// Flag SPLIT as well (f32, MatmulPrecision::High): each scaled value is staged as two f16
// tiles, hi = x with its low 13 mantissa bits cleared (exact in f16) and lo = f16(x − hi);
// each fragment pair takes three products, hi·hi + hi·lo + lo·hi (lo·lo, ~2^-22 relative,
// dropped), about 22 significant bits. Twice the staging bytes and three times the
// tensor-core work of the f16 kernel per K-step.
// Placeholders, each in double braces: A_ELEM B_ELEM (buffer element types), LOAD_A
// LOAD_B, SG_M SG_N FM FN BK SUBGROUP A_ROWS A_COLS B_ROWS B_COLS (constants), A_TILE
// B_TILE (the tiles' layouts, for the comments), STAGE_A STAGE_B (staging
// loops), PROLOGUE PREFETCH (register prefetch), ACC_DECL MMA STORE (generated fragment
// code); matmul_common.wgsl has the rest.

enable f16;
enable wgpu_cooperative_matrix;

@group(0) @binding(0) var<storage, read> a: array<{{A_ELEM}}>;
@group(0) @binding(1) var<storage, read> b: array<{{B_ELEM}}>;

fn load_a(e: u32) -> f32 {
    {{LOAD_A}}
}

fn load_b(e: u32) -> f32 {
    {{LOAD_B}}
}

const SG_M: u32 = {{SG_M}}u;
const SG_N: u32 = {{SG_N}}u;
const FM: u32 = {{FM}}u;
const FN: u32 = {{FN}}u;
const BK: u32 = {{BK}}u;
const SUBGROUP: u32 = {{SUBGROUP}}u;
const BM: u32 = SG_M * FM * 16u;
const BN: u32 = SG_N * FN * 16u;
const THREADS: u32 = SG_M * SG_N * SUBGROUP;
// Tiles [rows][cols + 8 halves of padding], laid out as the operand is in memory (A_TILE,
// B_TILE: [m][k] or [k][m], [k][n] or [n][k]; the generator loads fragments row- or
// column-major to match).
const A_ROWS: u32 = {{A_ROWS}};
const A_STRIDE: u32 = {{A_COLS}} + 8u;
const B_ROWS: u32 = {{B_ROWS}};
const B_STRIDE: u32 = {{B_COLS}} + 8u;

var<workgroup> tile_a: array<f16, A_ROWS * A_STRIDE>; // [{{A_TILE}}]
var<workgroup> tile_b: array<f16, B_ROWS * B_STRIDE>; // [{{B_TILE}}]
var<workgroup> scratch: array<f32, SG_M * SG_N * 256u>;

//#if SPLIT
var<workgroup> tile_a_lo: array<f16, A_ROWS * A_STRIDE>;
var<workgroup> tile_b_lo: array<f16, B_ROWS * B_STRIDE>;
//#endif
//#if SCALED
// max |A|, max |B| as f32 bits (matmul_range.wgsl).
@group(0) @binding({{RANGES_BINDING}}) var<storage, read> ranges: array<u32, 2>;
// Per-invocation: the operands' scales and what the store multiplies by.
var<private> scale_a: f32 = 1.0;
var<private> scale_b: f32 = 1.0;
var<private> unscale: f32 = 1.0;

// e for max = f·2^e (f in [0.5, 1)): the scale 2^(14 − e) puts the operand's largest |x|
// into [2^13, 2^14), well inside f16's range. Clamped so that the scale is a normal f32
// (2^-113 .. 2^114): bf16 and f32 maxima reach 2^128, tiny or zero maxima just scale less.
fn exponent_of(max_abs: f32) -> i32 {
    return clamp(frexp(max_abs).exp, -100, 127);
}
//#endif

// A stored value: the accumulator, with the scaled operands' scales divided out.
fn unscaled(v: f32) -> f32 {
//#if SCALED
    return v * unscale;
//#else
    return v;
//#endif
}

// Stores one accumulator fragment, staged by its subgroup at scratch[own..own + 256]
// (16×16, row-major), to C at (m_first, n_first) after the epilogue: element by element
// (and through a fused chain), or with a 16-bit C (flag OUT16) as column pairs, 16 even.
fn store_fragment(own: u32, lane: u32, m_first: u32, n_first: u32, c_base: u32, M: u32, N: u32) {
//#if OUT16
    for (var p = lane; p < 128u; p += SUBGROUP) {
        let e = 2u * p;
        let m = m_first + e / 16u;
        let n = n_first + e % 16u;
        if (m < M && n < N) {
            let o = c_base + m * N + n;
            store_pair(o, epilogue(unscaled(scratch[own + e]), n, o), epilogue(unscaled(scratch[own + e + 1u]), n + 1u, o + 1u));
        }
    }
//#else
    for (var e = lane; e < 256u; e += SUBGROUP) {
        let m = m_first + e / 16u;
        let n = n_first + e % 16u;
        if (m < M && n < N) {
            let o = c_base + m * N + n;
            c[o] = fused_chain(epilogue(unscaled(scratch[own + e]), n, o), o);
        }
    }
//#endif
}

@compute @workgroup_size(THREADS)
fn coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let M = params.m;
    let N = params.n;
    let K = params.k;
    let a_sm = params.a_sm;
    let a_sk = params.a_sk;
    let b_sk = params.b_sk;
    let b_sn = params.b_sn;
    let tile = tile_of(wid, nwg);
    let m0 = tile.x * BM;
    let n0 = tile.y * BN;
    let z = wid.z;
    let base = batch_offsets(z);
    // This subgroup's corner inside the workgroup tile.
    let sg_m = (sg / SG_N) * FM * 16u;
    let sg_n = (sg % SG_N) * FN * 16u;
//#if SCALED
    let ea = exponent_of(bitcast<f32>(ranges[0]));
    let eb = exponent_of(bitcast<f32>(ranges[1]));
    scale_a = ldexp(1.0, 14 - ea);
    scale_b = ldexp(1.0, 14 - eb);
    unscale = ldexp(1.0, ea + eb - 28);
//#endif

    {{ACC_DECL}}
    {{PROLOGUE}}

    for (var k0 = 0u; k0 < K; k0 += BK) {
        {{STAGE_A}}
        {{STAGE_B}}
        workgroupBarrier();
        {{PREFETCH}}
        {{MMA}}
        workgroupBarrier();
    }

    let c_base = z * M * N;
    let own = sg * 256u;
    {{STORE}}
}
