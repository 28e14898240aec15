// Element-wise helpers shared by the generated kernels (fused.wgsl) and by the kernels
// that run a fused element-wise chain in their epilogue (matmul) or prologue (norms):
// the chain's params, strided leaf indexing, rounding to 16-bit dtypes, dropout. They read
// `ew_params`, the chain's own params (named apart from the host kernel's `params`). The
// generator declares LEAF_SLOTS, DROPOUT_SLOTS and SCALAR_SLOTS (each at least 1).
// Host mirrors: FusedShape, LeafView, DropoutParams and ChainParams in fusion.rs.

const MAX_DIMS: u32 = 6u;

// The merged output shape: n elements, rank dims, front-padded with 1 to MAX_DIMS.
struct FusedShape {
    n: u32,
    rank: u32,
    dims: array<u32, MAX_DIMS>,
}

// A leaf's view over the merged shape: offset in elements, stride per dim (0: broadcast).
struct LeafView {
    offset: u32,
    strides: array<u32, MAX_DIMS>,
}

// A dropout node: seed halves, keep when hash >= keep_threshold, kept values times scale.
struct DropoutParams {
    seed_lo: u32,
    seed_hi: u32,
    keep_threshold: u32,
    scale: f32,
}

struct FusedParams {
    out: FusedShape,
    leaves: array<LeafView, LEAF_SLOTS>,
    dropouts: array<DropoutParams, DROPOUT_SLOTS>,
    scalars: array<f32, SCALAR_SLOTS>,
}

// Leaf `leaf`'s element for output index i: offset + Σ coordinate·stride.
fn strided_index(i: u32, leaf: u32) -> u32 {
    var rem = i;
    var e = ew_params.leaves[leaf].offset;
    for (var d = 0u; d < ew_params.out.rank; d++) {
        let dim = MAX_DIMS - 1u - d;
        let size = ew_params.out.dims[dim];
        e += (rem % size) * ew_params.leaves[leaf].strides[dim];
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
// never stored. `node` indexes the node's params in `ew_params.dropouts`. Host twin:
// fusion::dropout_keeps.
fn mix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn op_dropout(x: f32, index: u32, node: u32) -> f32 {
    let d = ew_params.dropouts[node];
    let h = mix32(mix32(index + mix32(d.seed_lo)) ^ d.seed_hi);
    return select(0.0, x * d.scale, h >= d.keep_threshold);
}
