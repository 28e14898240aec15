//! The short version of `examples/train_mlp.rs`: the loss must fall from chance level to
//! below the example's target, using only the public API.

#[path = "../examples/train_mlp.rs"]
mod train_mlp;

#[test]
fn short_training_run_learns_the_spirals() {
    let gpu = wgkernels::Gpu::new().unwrap();
    let losses = train_mlp::train(&gpu, 100, 10, false, true).unwrap();
    // The unfused optimizer follows the same trajectory.
    let unfused = train_mlp::train(&gpu, 20, 10, false, false).unwrap();
    for ((s, a), (_, b)) in losses.iter().zip(&unfused) {
        assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "step {s}: fused loss {a}, unfused {b}");
    }
    let first = losses.first().unwrap().1;
    let last = losses.last().unwrap().1;
    assert!(losses.iter().all(|l| l.1.is_finite()), "{losses:?}");
    assert!(
        last < train_mlp::TARGET_LOSS,
        "loss {last} after 100 steps (target {}): {losses:?}",
        train_mlp::TARGET_LOSS
    );
    assert!(last < first, "{losses:?}");
}
