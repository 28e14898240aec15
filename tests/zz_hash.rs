#[test]
fn hash() {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for k in wgkernels::shaders::all_kernels() {
        k.wgsl().hash(&mut h);
    }
    println!("HASH {:x}", h.finish());
}
