// Element-wise helpers shared by the generated kernels (shaders/fused.wgsl) and by matmul
// kernels that run a fused element-wise chain in their epilogue (src/ops/matmul.rs): strided
// leaf indexing, rounding to 16-bit dtypes, dropout. They read `ew_params`, the chain's own
// params array (named apart from the matmul's `params`):
//   [0] n  [1] rank  [2..8) output shape (front-padded with 1)
//   then per leaf k at 8 + 7k: offset, strides[6]; then 4 words per dropout node.

const MAX_DIMS: u32 = 6u;

fn strided_index(i: u32, base: u32) -> u32 {
    var rem = i;
    var e = ew_params[base];
    let rank = ew_params[1];
    for (var d = 0u; d < rank; d++) {
        let dim = MAX_DIMS - 1u - d;
        let size = ew_params[2u + dim];
        e += (rem % size) * ew_params[base + 1u + dim];
        rem /= size;
    }
    return e;
}

fn round_f16(x: f32) -> f32 {
    return unpack2x16float(pack_f16x2(vec2<f32>(x, 0.0))).x;
}

fn round_bf16(x: f32) -> f32 {
    return bitcast<f32>(f32_to_bf16_bits(x) << 16u);
}

// Dropout's counter-based RNG: a 32-bit hash of (seed, linear index) — two rounds of
// Wellons' lowbias32 mixer — so the mask is reproducible from the seed on every backend and
// never stored. `base` indexes its 4 params words (seed lo, seed hi, keep threshold,
// 1/(1 − p) as f32 bits). Host twin: fusion::dropout_keeps.
fn mix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn op_dropout(x: f32, index: u32, base: u32) -> f32 {
    let h = mix32(mix32(index + mix32(ew_params[base])) ^ ew_params[base + 1u]);
    return select(0.0, x * bitcast<f32>(ew_params[base + 3u]), h >= ew_params[base + 2u]);
}
