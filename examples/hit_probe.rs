use std::time::Instant;
use wgkernels::{DType, Gpu, Tensor};
fn main() -> wgkernels::Result<()> {
    let gpu = Gpu::new()?;
    let small = |seed| Tensor::randn(&gpu, &[4096], DType::F32, seed);
    let (x, y) = (small(5)?, small(6)?);
    let ops: [fn(&Tensor) -> wgkernels::Result<Tensor>; 4] = [|t| t.exp(), |t| t.tanh(), |t| t.sigmoid(), |t| t.gelu()];
    let chain = |k: usize| -> wgkernels::Result<Tensor> {
        let mut t = x.mul(&y)?;
        for d in 0..3 {
            t = ops[(k >> (2 * d)) % 4](&t)?.add(&y)?;
        }
        Ok(t)
    };
    let mut first = vec![];
    for k in 20..32 {
        chain(k)?.realize()?;
        gpu.finish_compiles();
        gpu.synchronize()?;
        let t0 = Instant::now();
        chain(k)?.realize()?;
        first.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    first.sort_by(f64::total_cmp);
    println!("first hit {:.1} us", first[6]);
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let (mut build, mut real, mut sync) = (vec![], vec![], vec![]);
    for r in 0..reps {
        let k = 20 + r % 12;
        gpu.synchronize()?;
        let t0 = Instant::now();
        let c = chain(k)?;
        let t1 = Instant::now();
        c.realize()?;
        let t2 = Instant::now();
        drop(c);
        gpu.synchronize()?;
        sync.push(t2.elapsed().as_secs_f64() * 1e6);
        build.push((t1 - t0).as_secs_f64() * 1e6);
        real.push((t2 - t1).as_secs_f64() * 1e6);
    }
    for v in [&mut build, &mut real, &mut sync] {
        v.sort_by(f64::total_cmp);
    }
    println!("build {:.1} us, realize {:.1} us, sync {:.1} us", build[reps / 2], real[reps / 2], sync[reps / 2]);
    Ok(())
}
