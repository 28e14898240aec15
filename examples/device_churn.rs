//! Makes and drops devices in a loop, as a test suite or a server does, and reports how
//! many it could make: a process must be able to go on indefinitely. Each round runs a
//! fused chain, a matmul and a softmax, then drops everything.
//!
//!     cargo run --release --example device_churn [-- --rounds 64]

use wgkernels::{DType, Gpu, Tensor};

#[path = "common/args.rs"]
#[allow(dead_code)]
mod args;

fn main() {
    let args = args::Args::parse("device_churn [--rounds N]", &[], &["--rounds"], false);
    let rounds: usize = args.parsed("--rounds", 64);
    let t0 = std::time::Instant::now();
    for round in 0..rounds {
        let result = (|| -> wgkernels::Result<f32> {
            let gpu = Gpu::new()?;
            let x = Tensor::randn(&gpu, &[256, 256], DType::F32, round as u64)?;
            let y = x.exp()?.mul(&x)?.add_scalar(1.0)?;
            let z = y.matmul(&x)?.softmax(-1)?;
            Ok(z.sum(-1)?.to_vec_f32()?[0])
        })();
        if let Err(e) = result {
            println!("round {round}: {e}");
            println!("made {round} devices, then failed ({:.1} s)", t0.elapsed().as_secs_f64());
            std::process::exit(1);
        }
    }
    println!("made and dropped {rounds} devices ({:.1} s)", t0.elapsed().as_secs_f64());
}
