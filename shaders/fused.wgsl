// Generated element-wise kernels: a whole same-shape chain of element-wise ops, compiled by
// the fusion JIT (src/fusion.rs) into one kernel. Each input ("leaf") is read once per
// output element, intermediates live in registers, the result is stored once.
//
// Tiling and traffic as in elementwise.wgsl: UNROLL output units per invocation (an element,
// or a packed pair for 16-bit outputs), 256 invocations per workgroup, 2-D grid; bytes moved
// are Σ size(leaf) + size(out) per element, whatever the chain's length.
//
// Placeholders, each in double braces: BINDINGS (one read-only array<u32> per leaf, then
// `out` and `params`), LOADERS (load_k and index_k per leaf), OPS (one function per op the
// chain uses), BODY (the chain, ending in `return`), STORE, PER_INVOCATION.

const MAX_DIMS: u32 = 6u;
const WORKGROUP: u32 = 256u;
const UNROLL: u32 = 4u;

// params: [0] n  [1] rank  [2..8) output shape (front-padded with 1)
//         then per leaf k at 8 + 7k: offset, strides[6]
{{BINDINGS}}

fn strided_index(i: u32, base: u32) -> u32 {
    var rem = i;
    var e = params[base];
    let rank = params[1];
    for (var d = 0u; d < rank; d++) {
        let dim = MAX_DIMS - 1u - d;
        let size = params[2u + dim];
        e += (rem % size) * params[base + 1u + dim];
        rem /= size;
    }
    return e;
}

fn round_f16(x: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x;
}

fn round_bf16(x: f32) -> f32 {
    return bitcast<f32>(f32_to_bf16_bits(x) << 16u);
}

{{LOADERS}}

{{OPS}}

fn value(i: u32) -> f32 {
    {{BODY}}
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = params[0];
    let group = wid.x + wid.y * nwg.x;
    for (var j = 0u; j < UNROLL; j++) {
        let t = (group * UNROLL + j) * WORKGROUP + lid;
        let first = t * {{PER_INVOCATION}}u;
        if (first >= n) {
            return;
        }
        {{STORE}}
    }
}
