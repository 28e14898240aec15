// Fused optimizer steps over many tensors in one dispatch: AdamW / Adam (with AMSGrad) and
// SGD with momentum / Nesterov, with f32 master weights for 16-bit models.
//
// An optimizer step is pure memory traffic. Per parameter, AdamW on f32 reads p, g, m, v
// and writes p, m, v: 28 bytes, ~15 FLOPs, so this kernel is written for bandwidth: every
// invocation moves 4 consecutive elements per load (vec4<u32> for f32 data, vec2<u32> for
// 16-bit data packed two per word, vec4<f32> for the f32 state), and each buffer is touched
// once. Done op by op the same step moves ~10× the bytes.
//
// Multi-tensor layout. The host cuts the parameter list into *segments* (a tensor, or a
// piece of one when its f32 state would exceed a storage binding) and groups up to SLOTS
// segments per dispatch. Segment k's parameter and gradient arrays are bound as p_k / g_k
// (generated bindings 8 + 2k, 9 + 2k); its optimizer state is a range of the group's flat
// f32 state arrays. `table` says, per slot, where its units are and which workgroups own
// it; a workgroup finds its slot by a binary search of the table (uniform per workgroup,
// so the `switch` on it never diverges inside a subgroup).
//
// Tiling: one *unit* = 4 consecutive elements; one workgroup = 256 invocations × 4 units
// strided by 256 (each step reads consecutive 16- or 8-byte words across the workgroup) =
// 4096 elements. Tail units (segment length not a multiple of 4) store only their valid
// components; their invalid lanes are read (inside the buffer: the host checks it) but
// replaced by 0 before use.
//
// Skipping and clipping without a host round trip: `grad_sumsq` writes one partial sum of
// (g · inv_scale)² per workgroup, `finalize` (one workgroup) reduces them, decides whether
// the step is skipped (non-finite gradients), computes the clipping factor and advances the
// step counter t on the device; the step kernels read that decision from `control`.
//
// Placeholders: SLOT_BINDINGS, SLOT_ACCESS (load_p / store_p / load_g by slot), PWORD (the
// parameter word vector type), DECODE / ENCODE (PWORD <-> vec4<f32>).
// Flags (blocks do not nest, so both step entries are always present): MASTER (16-bit
// params with f32 master weights), AMSGRAD, MOMENTUM (SGD state).

// The largest finite f32, as a hex literal: browsers' WGSL compilers reject the decimal
// 3.4028235e38, which rounds just past it.
const F32_MAX: f32 = 0x1.fffffep+127f;
const WORKGROUP: u32 = 256u;
const UNITS_PER_INVOCATION: u32 = 4u;
const UNITS_PER_WORKGROUP: u32 = 1024u;

// table: [0] slots  then per slot k at 4 + 4k:
//   unit offset of the segment in p_k / g_k, elements in the segment,
//   unit offset of its state in m / v / master / vmax, first workgroup
// (one extra entry at 4 + 4·slots holds the group's workgroup count in its last word),
// [1] first partial index of this group (grad_sumsq).
@group(0) @binding(0) var<storage, read> table: array<u32>;

// control: OptimControl, mirrored by the #[repr(C)] struct of that name in optim/mod.rs.
// Written by finalize: steps taken, skipped steps, whether the last was skipped (0/1), the
// clip factor and the gradient norm; by the host before each step: partials to reduce,
// flags (1 decoupled weight decay, 2 check finite, 4 nesterov, 8 clip), the hyperparameters,
// 1 / loss scale, the max grad norm; by finalize (Adam): bias1 = 1 - beta1^t and
// bias2 = 1 - beta2^t by the recurrence c_t = (1 - beta) + beta · c_(t-1): 1 - pow(beta2, t)
// in f32 loses 3 digits to cancellation at t = 1 (and lavapipe's pow is approximate), the
// recurrence adds only positive terms (1 - beta is exact in f32 for beta in [0.5, 1)).
struct OptimControl {
    steps: u32,
    skipped: u32,
    last_skipped: u32,
    clip: f32,
    grad_norm: f32,
    partials: u32,
    flags: u32,
    reserved7: u32,
    lr: f32,
    beta1_or_momentum: f32,
    beta2_or_dampening: f32,
    eps: f32,
    weight_decay: f32,
    inv_scale: f32,
    max_grad_norm: f32,
    reserved15: u32,
    bias1: f32,
    bias2: f32,
    reserved18: u32,
    reserved19: u32,
}
@group(0) @binding(1) var<storage, read_write> control: OptimControl;

// Flat f32 state of this group, in units (vec4 = 4 elements).
@group(0) @binding(2) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> v: array<vec4<f32>>;
//#if MASTER
@group(0) @binding(4) var<storage, read_write> master: array<vec4<f32>>;
//#endif
//#if AMSGRAD
@group(0) @binding(5) var<storage, read_write> vmax: array<vec4<f32>>;
//#endif
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;

{{SLOT_BINDINGS}}

{{SLOT_ACCESS}}

fn decode(w: {{PWORD}}) -> vec4<f32> {
    {{DECODE}}
}

fn encode(x: vec4<f32>) -> {{PWORD}} {
    {{ENCODE}}
}

struct Segment {
    slot: u32,
    p_unit: u32,
    len: u32,
    state_unit: u32,
    // Units of the segment this workgroup starts at.
    local_unit: u32,
}

// The segment of workgroup `group`: the last slot whose first workgroup is <= group. First
// workgroups strictly increase with the slot (every segment has one at least), so a binary
// search: log2(slots) table reads per workgroup, not one per slot (up to 160 slots).
fn find_segment(group: u32) -> Segment {
    var lo = 0u;
    var hi = table[0];
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (group >= table[4u + 4u * mid + 3u]) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let slot = lo;
    let b = 4u + 4u * slot;
    return Segment(slot, table[b], table[b + 1u], table[b + 2u], (group - table[b + 3u]) * UNITS_PER_WORKGROUP);
}

// Which lanes of unit u lie inside a segment of len elements.
fn lanes_inside(u: u32, len: u32) -> vec4<bool> {
    let first = u * 4u;
    return vec4<u32>(first, first + 1u, first + 2u, first + 3u) < vec4<u32>(len);
}

// Stores `w` at unit `u` of slot `slot`, only the lanes inside the segment.
fn store_p_masked(slot: u32, u: u32, local: u32, len: u32, w: {{PWORD}}) {
    if (local * 4u + 4u <= len) {
        store_p(slot, u, w);
        return;
    }
    // The segment's last unit, with 1 to 3 valid elements.
    let valid = len - local * 4u;
//#if MASTER
    // Two 16-bit elements per word: whole words first, then the low half of a last word
    // (its high half is padding before the next 4-aligned element, kept as it was).
    let old = load_p(slot, u);
    for (var c = 0u; c < 2u; c++) {
        if (2u * c + 2u <= valid) {
            store_word(slot, u, c, w[c]);
        } else if (2u * c < valid) {
            store_word(slot, u, c, (old[c] & 0xffff0000u) | (w[c] & 0xffffu));
        }
    }
//#else
    for (var c = 0u; c < valid; c++) {
        store_word(slot, u, c, w[c]);
    }
//#endif
}

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// ---- gradient norm / finiteness ---------------------------------------------------------

var<workgroup> scratch: array<f32, WORKGROUP>;

fn workgroup_sum(lid: u32, x: f32) -> f32 {
    scratch[lid] = x;
    workgroupBarrier();
    for (var s = WORKGROUP / 2u; s > 0u; s /= 2u) {
        if (lid < s) {
            scratch[lid] += scratch[lid + s];
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

// partials[table[1] + group] = Σ (g · inv_scale)² over this workgroup's units. A non-finite
// gradient makes the sum non-finite, which is how `finalize` detects it.
@compute @workgroup_size(256)
fn grad_sumsq(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = group_index(wid, nwg);
    let groups = table[4u + 4u * table[0] + 3u];
    if (group >= groups) {
        return;
    }
    let seg = find_segment(group);
    let inv_scale = control.inv_scale;
    var acc = 0.0;
    for (var j = 0u; j < UNITS_PER_INVOCATION; j++) {
        let local = seg.local_unit + j * WORKGROUP + lid;
        if (local * 4u < seg.len) {
            let g = decode(load_g(seg.slot, seg.p_unit + local)) * inv_scale;
            // Masking by multiplication would turn an invalid lane's inf into NaN·0: select.
            let gm = select(vec4<f32>(0.0), g, lanes_inside(local, seg.len));
            acc += dot(gm, gm);
        }
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) {
        partials[table[1] + group] = total;
    }
}

// One workgroup: reduces the partials, decides skip / clip, advances the step counter.
@compute @workgroup_size(256)
fn finalize(@builtin(local_invocation_index) lid: u32) {
    let count = control.partials;
    var acc = 0.0;
    for (var i = lid; i < count; i += WORKGROUP) {
        acc += partials[i];
    }
    let sumsq = workgroup_sum(lid, acc);
    if (lid == 0u) {
        let flags = control.flags;
        let norm = sqrt(sumsq);
        // isinf/isnan are not WGSL: a finite norm is one that equals itself and stays below
        // the largest f32 (NaN fails both comparisons).
        let finite = norm <= F32_MAX;
        let skip = (flags & 2u) != 0u && !finite;
        var clip = 1.0;
        if ((flags & 8u) != 0u && finite) {
            clip = min(1.0, control.max_grad_norm / (norm + 1e-6));
        }
        control.last_skipped = select(0u, 1u, skip);
        control.clip = clip;
        control.grad_norm = norm;
        if (skip) {
            control.skipped += 1u;
        } else {
            control.steps += 1u;
            let b1 = control.beta1_or_momentum;
            let b2 = control.beta2_or_dampening;
            control.bias1 = (1.0 - b1) + b1 * control.bias1;
            control.bias2 = (1.0 - b2) + b2 * control.bias2;
        }
    }
}

// ---- the steps ---------------------------------------------------------------------------

// The current parameter value: the f32 master copy for 16-bit params, else the param.
fn load_weight(slot: u32, pu: u32, su: u32) -> vec4<f32> {
//#if MASTER
    return master[su];
//#else
    return decode(load_p(slot, pu));
//#endif
}

fn store_weight(slot: u32, pu: u32, su: u32, local: u32, len: u32, w: vec4<f32>) {
//#if MASTER
    master[su] = w;
//#endif
    store_p_masked(slot, pu, local, len, encode(w));
}

@compute @workgroup_size(256)
fn adam_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = group_index(wid, nwg);
    let groups = table[4u + 4u * table[0] + 3u];
    // control.last_skipped is the same for every invocation: the whole dispatch returns together.
    if (group >= groups || control.last_skipped != 0u) {
        return;
    }
    let seg = find_segment(group);
    let flags = control.flags;
    let lr = control.lr;
    let beta1 = control.beta1_or_momentum;
    let beta2 = control.beta2_or_dampening;
    let eps = control.eps;
    let wd = control.weight_decay;
    let grad_factor = control.inv_scale * control.clip;
    let step_size = lr / control.bias1;
    // Not inverseSqrt: lavapipe implements it with a 12-bit estimate.
    let inv_sqrt_bias2 = 1.0 / sqrt(control.bias2);
    let decoupled = (flags & 1u) != 0u;
    for (var j = 0u; j < UNITS_PER_INVOCATION; j++) {
        let local = seg.local_unit + j * WORKGROUP + lid;
        if (local * 4u >= seg.len) {
            break;
        }
        let pu = seg.p_unit + local;
        let su = seg.state_unit + local;
        var w = load_weight(seg.slot, pu, su);
        var g = decode(load_g(seg.slot, pu)) * grad_factor;
        g = select(vec4<f32>(0.0), g, lanes_inside(local, seg.len));
        if (decoupled) {
            w *= 1.0 - lr * wd;
        } else {
            g += wd * w;
        }
        let m1 = beta1 * m[su] + (1.0 - beta1) * g;
        let v1 = beta2 * v[su] + (1.0 - beta2) * g * g;
        m[su] = m1;
        v[su] = v1;
//#if AMSGRAD
        let vm = max(vmax[su], v1);
        vmax[su] = vm;
        let denom = sqrt(vm) * inv_sqrt_bias2 + eps;
//#else
        let denom = sqrt(v1) * inv_sqrt_bias2 + eps;
//#endif
        w -= step_size * m1 / denom;
        store_weight(seg.slot, pu, su, local, seg.len, w);
    }
}

@compute @workgroup_size(256)
fn sgd_step(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = group_index(wid, nwg);
    let groups = table[4u + 4u * table[0] + 3u];
    if (group >= groups || control.last_skipped != 0u) {
        return;
    }
    let seg = find_segment(group);
    let flags = control.flags;
    let lr = control.lr;
    let momentum = control.beta1_or_momentum;
    let dampening = control.beta2_or_dampening;
    let wd = control.weight_decay;
    let grad_factor = control.inv_scale * control.clip;
    let first_step = control.steps == 1u;
    let nesterov = (flags & 4u) != 0u;
    for (var j = 0u; j < UNITS_PER_INVOCATION; j++) {
        let local = seg.local_unit + j * WORKGROUP + lid;
        if (local * 4u >= seg.len) {
            break;
        }
        let pu = seg.p_unit + local;
        let su = seg.state_unit + local;
        var w = load_weight(seg.slot, pu, su);
        var g = decode(load_g(seg.slot, pu)) * grad_factor;
        g = select(vec4<f32>(0.0), g, lanes_inside(local, seg.len)) + wd * w;
//#if MOMENTUM
        // PyTorch: the buffer starts as the first gradient, undamped.
        let buf = select(momentum * m[su] + (1.0 - dampening) * g, g, first_step);
        m[su] = buf;
        g = select(buf, g + momentum * buf, nesterov);
//#endif
        w -= lr * g;
        store_weight(seg.slot, pu, su, local, seg.len, w);
    }
}
