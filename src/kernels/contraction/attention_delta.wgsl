// δ for attention's backward: delta[b, h, s] = Σ_d dO[b, h, s, d] · O[b, h, s, d] in f32,
// written [B, H, S] (the backward kernels' order) from dO and O in either layout ([B, S, H, D]
// or [B, H, S, D], any batch/sequence/head strides, D contiguous), each read once: one
// kernel where a product, a row sum and (Bshd) a transposed copy ran before. A workgroup
// takes 32 rows, 8 lanes a row (lane l sums d = l, l + 8, ...; the 8 partial sums meet in
// workgroup memory). Bytes per row: 2·D·size read, 4 written; 2·D FLOPs.
//
// Placeholders: LOAD_DO, LOAD_O (loader bodies for element e of dO and O).

// delta_params: DeltaParams, mirrored by the #[repr(C)] struct of that name in attention.rs:
// heads, sequence, head dim, rows (B·H·S), then per tensor its offset and its batch, head and
// sequence strides in elements.
struct DeltaParams {
    h: u32,
    s: u32,
    d: u32,
    rows: u32,
    do_off: u32,
    do_sb: u32,
    do_sh: u32,
    do_ss: u32,
    o_off: u32,
    o_sb: u32,
    o_sh: u32,
    o_ss: u32,
}

@group(0) @binding(0) var<storage, read> d_out: array<u32>;
@group(0) @binding(1) var<storage, read> o: array<u32>;
@group(0) @binding(2) var<storage, read_write> delta: array<f32>;
@group(0) @binding(3) var<storage, read> delta_params: DeltaParams;

fn load_do(e: u32) -> f32 {
    {{LOAD_DO}}
}

fn load_o(e: u32) -> f32 {
    {{LOAD_O}}
}

var<workgroup> lane_sums: array<f32, 256>;

@compute @workgroup_size(256)
fn attention_delta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = delta_params;
    let row = (wid.x + wid.y * nwg.x) * 32u + lid / 8u;
    let lane = lid % 8u;
    var acc = 0.0;
    if (row < p.rows) {
        let s = row % p.s;
        let h = (row / p.s) % p.h;
        let b = row / (p.s * p.h);
        let at_do = p.do_off + b * p.do_sb + h * p.do_sh + s * p.do_ss;
        let at_o = p.o_off + b * p.o_sb + h * p.o_sh + s * p.o_ss;
        for (var d = lane; d < p.d; d += 8u) {
            acc += load_do(at_do + d) * load_o(at_o + d);
        }
    }
    lane_sums[lid] = acc;
    workgroupBarrier();
    if (lane == 0u && row < p.rows) {
        var total = 0.0;
        for (var l = 0u; l < 8u; l++) {
            total += lane_sums[lid + l];
        }
        delta[row] = total;
    }
}
