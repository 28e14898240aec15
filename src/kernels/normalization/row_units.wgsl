// Units of the row kernels (shaders/softmax.wgsl, shaders/norm.wgsl), shared by both: each
// invocation moves a row `UNIT` elements at a time, held as `Unit` (LANES f32 lanes).
//   UNIT 1: odd rows, one element (the second lane is padding);
//   UNIT 2: an element pair, one 32-bit word of 16-bit data;
//   UNIT 4: rows of a multiple of 4 elements: one 8-byte (16-bit data) or 16-byte (f32)
//           load or store per unit, the buffers declared as arrays of vec2<u32>/vec4<u32>.
// Wider loads halve the load and store instructions per byte and the index arithmetic.

const LANES: u32 = {{LANES}}u;
alias Unit = vec{{LANES}}<f32>;
alias UnitIdx = vec{{LANES}}<u32>;
// Lane c of a unit is element u·UNIT + c of the row.
const LANE = UnitIdx({{LANE_LIST}});

// The unit with its padding lanes (past UNIT) zeroed.
fn real_lanes(v: Unit) -> Unit {
    return select(Unit(0.0), v, LANE < UnitIdx(UNIT));
}

fn hsum(v: Unit) -> f32 {
    return dot(v, Unit(1.0));
}

fn hmax(v: Unit) -> f32 {
    var r = v[0];
    for (var c = 1u; c < LANES; c++) {
        r = max(r, v[c]);
    }
    return r;
}

// A pair as a unit (padded with zeros in units of 4), for kernels that move element pairs.
fn unit_of_pair(v: vec2<f32>) -> Unit {
    {{PAIR_TO_UNIT}}
}
