// Math helpers prepended to every kernel module (src/shaders.rs): the activations shared by
// the element-wise ops and the matmul epilogue.

// erf by Abramowitz–Stegun 7.1.26: |error| < 1.5e-7, odd-extended.
fn erf_approx(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(x) * (1.0 - poly * exp(-z * z));
}

// x·Φ(x), PyTorch's default gelu.
fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476));
}

// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), GPT-2's, written with exp so that large |x|
// cannot produce inf/inf: tanh(u) = 1 − 2/(exp(2u) + 1).
fn gelu_tanh(x: f32) -> f32 {
    let u = 0.7978845608 * (x + 0.044715 * x * x * x);
    return x * (1.0 - 1.0 / (exp(2.0 * u) + 1.0));
}

// exp(−x) overflows to inf for x < −88, and 1/inf = 0: the right limit.
fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// tanh through exp of a non-positive argument, so that large |x| gives ±1, not NaN.
fn tanh_stable(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}
