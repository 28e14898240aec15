// Transposed copies: the contiguous copy of a view whose last two dims are swapped
// (`x.transpose(-2, -1).contiguous()`, batched over one leading dim, perhaps narrowed to R
// of the L rows of the untransposed matrix), as out[b][r][c] = x[offset + b·batch_stride +
// c·L + r]. Read element by element, the strided path's
// neighbouring invocations read elements R apart (one word per access) and divide per dim.
//
// Tiling: a workgroup of 32×8 invocations moves a 32×32 tile through workgroup memory
// (33 columns: the padding keeps the column reads of the write phase off one bank). The
// read phase walks r (contiguous in x), the write phase walks c (contiguous in out), so
// both sides move whole runs of consecutive words. 16-bit outputs (C even) are written as
// pairs of adjacent columns, one 32-bit word per invocation and step. Bytes: the tensor
// read once and written once; no FLOPs.
//
// Placeholders: LOAD_X (element loader of x's dtype), STORE (`fn store(e, lo, hi)`:
// element e, and e + 1 for 16-bit pairs), PAIRS (true for 16-bit outputs).

const T: u32 = 32u;
const PAIRS: bool = {{PAIRS}};

// params: TransposeParams (transpose.rs): R, C, x offset, batch stride and L in elements.
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
struct TransposeParams {
    rows: u32,
    cols: u32,
    x_off: u32,
    x_batch_stride: u32,
    x_col_stride: u32,
}
@group(0) @binding(2) var<storage, read> params: TransposeParams;

var<workgroup> tile: array<f32, T * (T + 1u)>;

fn load_x(e: u32) -> f32 {
    {{LOAD_X}}
}

fn store(e: u32, lo: f32, hi: f32) {
    {{STORE}}
}

@compute @workgroup_size(32, 8)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    let R = params.rows;
    let C = params.cols;
    let c0 = wid.x * T;
    let r0 = wid.y * T;
    let b = wid.z;
    let x_base = params.x_off + b * params.x_batch_stride;
    // Read: tile[i][j] = element (r0 + j, c0 + i), consecutive j across the invocations.
    for (var i = l.y; i < T; i += 8u) {
        let c = c0 + i;
        let r = r0 + l.x;
        var v = 0.0;
        if (c < C && r < R) {
            v = load_x(x_base + c * params.x_col_stride + r);
        }
        tile[i * (T + 1u) + l.x] = v;
    }
    workgroupBarrier();
    let out_base = b * R * C;
    let lid = l.y * 32u + l.x;
    if (PAIRS) {
        // 32 rows × 16 column pairs, two per invocation.
        for (var idx = lid; idx < T * 16u; idx += 256u) {
            let j = idx / 16u;
            let c = c0 + 2u * (idx % 16u);
            let r = r0 + j;
            if (r < R && c < C) {
                let i = c - c0;
                store(out_base + r * C + c, tile[i * (T + 1u) + j], tile[(i + 1u) * (T + 1u) + j]);
            }
        }
    } else {
        for (var j = l.y; j < T; j += 8u) {
            let r = r0 + j;
            let c = c0 + l.x;
            if (r < R && c < C) {
                store(out_base + r * C + c, tile[l.x * (T + 1u) + j], 0.0);
            }
        }
    }
}
