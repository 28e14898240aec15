// Element-wise kernels over strided, broadcast views: binary ops, unary maps, copy, cast.
//
// Tiling: each invocation writes UNROLL output units, a unit being one element (32-bit
// outputs) or one pair (16-bit outputs, packed two per u32 word so that no two invocations
// write one word). Workgroups of 256 invocations on a 2-D grid (x up to 65535), flattened.
//
// Traffic: n·(size(a) + size(b) + size(out)) bytes, ~1 FLOP per element: memory bound.
// Index math per element: `rank` divisions for each strided input (none on the contiguous
// path), which is free beside the memory traffic on every GPU we have measured.
//
// Specialised by text substitution (see src/shaders.rs), because WGSL overrides cannot
// change types or expressions. Placeholders, each written in double braces below:
//   LOAD_A, LOAD_B    body of a loader: element index `e` -> f32, per input dtype
//   INDEX_A, INDEX_B  output linear index `i` -> input element index (strided or contiguous)
//   OP                the scalar op on `x` (and `y`)
//   STORE             body of the store, per output dtype
//   PER_INVOCATION    1 for f32 outputs, 2 for packed 16-bit outputs

const MAX_DIMS: u32 = 6u;
const WORKGROUP: u32 = 256u;
// Output units (an element, or a packed pair for 16-bit outputs) per invocation: one
// per invocation ran at 650-890 GB/s on the H200 against 4245 for a copy.
const UNROLL: u32 = 4u;

// params (u32 words):
//   [0] n (output elements)   [1] rank
//   [2..8)   out shape (row-major, padded at the front with 1s to MAX_DIMS)
//   [8]      a offset   [9..15)  a strides (elements, 0 where broadcast)
//   [15]     b offset   [16..22) b strides
@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read> params: array<u32>;

// Output linear index -> element index of a strided input whose offset is at params[base]
// and strides at params[base + 1 ..].
fn strided_index(i: u32, base: u32) -> u32 {
    var rem = i;
    var e = params[base];
    // Only the innermost `rank` dims vary; the host pads the rest with size 1.
    let rank = params[1];
    for (var d = 0u; d < rank; d++) {
        let dim = MAX_DIMS - 1u - d;
        let size = params[2u + dim];
        e += (rem % size) * params[base + 1u + dim];
        rem /= size;
    }
    return e;
}

fn load_a(e: u32) -> f32 {
    {{LOAD_A}}
}

fn load_b(e: u32) -> f32 {
    {{LOAD_B}}
}

fn index_a(i: u32) -> u32 {
    {{INDEX_A}}
}

fn index_b(i: u32) -> u32 {
    {{INDEX_B}}
}

fn op(x: f32, y: f32) -> f32 {
    return {{OP}};
}

fn value(i: u32) -> f32 {
    return op(load_a(index_a(i)), load_b(index_b(i)));
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = params[0];
    let group = wid.x + wid.y * nwg.x;
    // UNROLL units per invocation, WORKGROUP apart so that each step of the loop reads
    // and writes consecutive words across the workgroup.
    for (var j = 0u; j < UNROLL; j++) {
        let t = (group * UNROLL + j) * WORKGROUP + lid;
        let first = t * {{PER_INVOCATION}}u;
        if (first >= n) {
            return;
        }
        {{STORE}}
    }
}
