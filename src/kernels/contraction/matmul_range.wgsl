// The largest |x| of each operand of a matmul run scaled on tensor cores (f32 at
// MatmulPrecision::High, bf16: flags SCALED and SPLIT of matmul_coop.wgsl), which scales
// each operand by a power of two from it so that its f16 parts neither overflow nor lose
// their low bits.
//
// Workgroup row y = 0 reads A, y = 1 reads B: every element of the storage span the view
// covers (offset to its last element; a strided view's gaps are read too, which can only
// raise the maximum), grid-stride over 16-byte words (4 f32, or 8 bf16 with flag BF16),
// elements of a word outside the span masked out (a pooled buffer's tail may hold anything);
// the subgroups' maxima meet in a workgroup atomic and one lane a workgroup takes it to
// ranges[y] by atomicMax on the f32 bits (non-negative floats order as their bits): one
// global atomic a workgroup, not one a subgroup (8× fewer on one address, where they
// serialise).
// Traffic: the two spans once, memory bound; the matmul reads each operand N/BN or M/BM times.

const WORKGROUP: u32 = 256u;

struct RangeParams {
    a_off: u32,
    a_len: u32,
    b_off: u32,
    b_len: u32,
}

// Whole 16-byte words: the pool sizes every buffer in them.
@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<u32>>;
// [A, B]: zero before the dispatch.
@group(0) @binding(2) var<storage, read_write> ranges: array<atomic<u32>, 2>;
@group(0) @binding(3) var<storage, read> params: RangeParams;

// The workgroup's max |x| so far, as f32 bits.
var<workgroup> workgroup_max: atomic<u32>;

//#if BF16
const PER_WORD: u32 = 8u;
//#else
const PER_WORD: u32 = 4u;
//#endif

// |element| if its index `e` lies in [lo, hi), else 0.
fn masked(x: f32, e: u32, lo: u32, hi: u32) -> f32 {
    return select(0.0, abs(x), e >= lo && e < hi);
}

// The largest |x| of the word's elements inside [lo, hi); `first` is its element 0's index.
fn word_max(w: vec4<u32>, first: u32, lo: u32, hi: u32) -> f32 {
    var m = 0.0;
    for (var c = 0u; c < 4u; c++) {
//#if BF16
        // bf16 is the top half of an f32; element 2c is the low half of component c.
        m = max(m, masked(bitcast<f32>(w[c] << 16u), first + 2u * c, lo, hi));
        m = max(m, masked(bitcast<f32>(w[c] & 0xffff0000u), first + 2u * c + 1u, lo, hi));
//#else
        m = max(m, masked(bitcast<f32>(w[c]), first + c, lo, hi));
//#endif
    }
    return m;
}

@compute @workgroup_size(WORKGROUP)
fn matmul_range(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let which = wid.y;
    let len = select(params.a_len, params.b_len, which == 1u);
    let lo = select(params.a_off, params.b_off, which == 1u);
    let hi = lo + len;
    let first_word = lo / PER_WORD;
    let words = (hi + PER_WORD - 1u) / PER_WORD - first_word;
    if (lid == 0u) {
        atomicStore(&workgroup_max, 0u);
    }
    workgroupBarrier();
    var m = 0.0;
    for (var i = wid.x * WORKGROUP + lid; i < words; i += groups.x * WORKGROUP) {
        let word = first_word + i;
        if (which == 0u) {
            m = max(m, word_max(a[word], word * PER_WORD, lo, hi));
        } else {
            m = max(m, word_max(b[word], word * PER_WORD, lo, hi));
        }
    }
    let sg_max = subgroupMax(m);
    if (lane == 0u) {
        atomicMax(&workgroup_max, bitcast<u32>(sg_max));
    }
    workgroupBarrier();
    if (lid == 0u) {
        atomicMax(&ranges[which], atomicLoad(&workgroup_max));
    }
}
