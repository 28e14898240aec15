//! Training across devices: data parallel (a replica of the model per device, the batch
//! split across them, gradients averaged) and a column-split Linear (tensor parallel).
//!
//! wgpu has no peer-to-peer copies between devices, so every exchange is staged through
//! host memory: a bucket of gradients is read back from each device in one map, every
//! device's read started before the first is waited for ([`Tensor::to_vec_f32_all`] is the
//! blocking form), summed on the host in f32 in replica order, summed across
//! processes by a [`ProcessGroup`] where there is one (MPI, feature `mpi`), divided by the
//! number of replicas in all, and written back to every replica as its gradient.
//!
//! Overlap: buckets hold the parameters in the order their gradients complete in the
//! backward (the last layers' first, as PyTorch DDP's). [`DataParallel::backward`] runs each
//! replica's backward with [`Var::backward_hooked`], and the moment a bucket's gradients
//! are all complete on a replica, its read-back is recorded and submitted: the device
//! copies it out while it computes the rest of its backward and while the host records the
//! other replicas'. The host then sums bucket by bucket in that order, so the first
//! buckets are summed while the devices still run the last layers' backward. The time
//! spent is reported by [`DataParallel::last_sync`].
//!
//! ```
//! # use wgkernels::{DType, Gpu};
//! # fn main() -> wgkernels::Result<()> {
//! use wgkernels::nn::{Gpt, GptConfig};
//! use wgkernels::optim::{Optimizer, Sgd, SgdConfig};
//! use wgkernels::parallel::{DataParallel, DataParallelOptions};
//! let gpus = [Gpu::new()?, Gpu::new()?]; // one per adapter; here two on one
//! let config = GptConfig { vocab: 32, context: 8, layers: 1, heads: 2, d_model: 16 };
//! let mut dp = DataParallel::new(&gpus, |gpu| Gpt::new(gpu, &config, DType::F32, 0), &DataParallelOptions::default())?;
//! let mut opts = gpus.iter().map(|g| Sgd::new(g, SgdConfig::default())).collect::<wgkernels::Result<Vec<_>>>()?;
//! let ids: Vec<u32> = (0..32).map(|i| i % 32).collect(); // batch 4 × 8, split 2 + 2
//! let losses = dp.map(|r, model| {
//!     let rows = &ids[r * 16..(r + 1) * 16];
//!     model.loss(rows, rows, 2, 8)
//! })?;
//! dp.backward(&losses)?; // each replica's backward, then the gradients averaged
//! for (r, opt) in opts.iter_mut().enumerate() {
//!     opt.step_params(dp.params(r))?;
//! }
//! dp.zero_grad();
//! # Ok(()) }
//! ```

use crate::autograd::{Var, VarId};
use crate::device::{Gpu, Instant};
use crate::dtype::{encode_f32, DType};
use crate::error::{Error, Result};
use crate::nn::{Linear, Module};
use crate::tensor::{F32ReadInFlight, Tensor};
use std::collections::HashMap;

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
pub use self::mpi::MpiGroup;

/// Processes that train together, each holding replicas of its own: what data parallelism
/// needs of them is a sum of equal-length f32 buffers across all of them, in place.
/// `MpiGroup` (feature `mpi`) is the one over MPI.
pub trait ProcessGroup {
    /// This process's index, 0..size.
    fn rank(&self) -> usize;
    /// Processes in the group.
    fn size(&self) -> usize;
    /// Replaces `data` with the element-wise sum of every process's `data` (the same length
    /// everywhere; every process calls this in the same order).
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()>;
}

/// Settings of [`DataParallel`].
#[derive(Clone, Debug)]
pub struct DataParallelOptions {
    /// Gradient bytes (f32) per bucket: the parameters are cut, in order, into buckets of
    /// about this size, each read back from a device in one wait and reduced in one call.
    /// Default 25 MiB, PyTorch DDP's.
    pub bucket_bytes: usize,
}

impl Default for DataParallelOptions {
    fn default() -> Self {
        Self { bucket_bytes: 25 << 20 }
    }
}

/// What the last gradient synchronisation did and how long it took (host wall clock).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncStats {
    /// Buckets reduced.
    pub buckets: usize,
    /// Gradient bytes (f32) per replica.
    pub bytes: usize,
    /// From the first read-back to the last gradient written: waiting for the backward
    /// passes to finish, the reads, the host sums, the process group's reduction and the
    /// writes.
    pub ms: f64,
    /// The part of `ms` inside [`ProcessGroup::all_reduce_sum`].
    pub group_ms: f64,
    /// Bucket reads (over all replicas) started inside the backward, before it was wholly
    /// recorded: the overlapped part of the exchange.
    pub reads_during_backward: usize,
}

/// One replica's gradients of one bucket being read back (`None`: not reached, zeros).
struct BucketRead {
    grads: Vec<Option<Tensor>>,
    read: F32ReadInFlight,
}

/// A model replicated on several devices, each replica trained on its part of the batch;
/// after each backward, every parameter's gradient is the mean over all replicas (of every
/// process of the [`ProcessGroup`], if any): what one device computing the mean loss of
/// the whole batch would get, when the parts are of equal size.
pub struct DataParallel<M: Module> {
    gpus: Vec<Gpu>,
    replicas: Vec<M>,
    /// Per replica, its parameters in `Module::parameters` order.
    params: Vec<Vec<Var>>,
    /// Parameter indices, each bucket about `bucket_bytes` of f32 gradient, the parameters
    /// taken from the last: about the order in which the backward completes them.
    buckets: Vec<Vec<usize>>,
    /// The bucket of each parameter.
    bucket_of: Vec<usize>,
    group: Option<Box<dyn ProcessGroup>>,
    last_sync: SyncStats,
}

impl<M: Module> DataParallel<M> {
    /// One replica per device in `gpus`, built by `build`, then given replica 0's values
    /// (so replicas start equal whatever `build` does), and, with a process group,
    /// process 0's ([`DataParallel::with_group`]).
    ///
    /// Errors: `InvalidArgument` for no device, a `bucket_bytes` of 0, or replicas whose
    /// parameters differ in count, shape or dtype; `build`'s errors.
    pub fn new(gpus: &[Gpu], build: impl Fn(&Gpu) -> Result<M>, opts: &DataParallelOptions) -> Result<Self> {
        Self::build(gpus, build, opts, None)
    }

    /// [`DataParallel::new`] across the processes of `group` too: each process holds the
    /// replicas of its own `gpus` (often one), the gradients are averaged over all of them,
    /// and process 0's initial values are copied to every replica everywhere.
    pub fn with_group(
        gpus: &[Gpu],
        build: impl Fn(&Gpu) -> Result<M>,
        opts: &DataParallelOptions,
        group: Box<dyn ProcessGroup>,
    ) -> Result<Self> {
        Self::build(gpus, build, opts, Some(group))
    }

    fn build(
        gpus: &[Gpu],
        build: impl Fn(&Gpu) -> Result<M>,
        opts: &DataParallelOptions,
        group: Option<Box<dyn ProcessGroup>>,
    ) -> Result<Self> {
        const OP: &str = "DataParallel::new";
        if gpus.is_empty() || opts.bucket_bytes == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "{} devices and bucket_bytes {}: need at least one of each",
                    gpus.len(),
                    opts.bucket_bytes
                ),
            });
        }
        let replicas: Vec<M> = gpus.iter().map(&build).collect::<Result<_>>()?;
        let params: Vec<Vec<Var>> =
            replicas.iter().map(|m| m.parameters().into_iter().map(|(_, p)| p).collect()).collect();
        for (r, ps) in params.iter().enumerate().skip(1) {
            let same = ps.len() == params[0].len()
                && ps.iter().zip(&params[0]).all(|(a, b)| a.shape() == b.shape() && a.dtype() == b.dtype());
            if !same {
                return Err(Error::InvalidArgument {
                    op: OP,
                    msg: format!("replica {r}'s parameters differ from replica 0's in count, shape or dtype"),
                });
            }
        }
        let (mut buckets, mut bucket, mut bytes) = (Vec::new(), Vec::new(), 0);
        let mut bucket_of = vec![0; params[0].len()];
        for (i, p) in params[0].iter().enumerate().rev() {
            bucket_of[i] = buckets.len();
            bucket.push(i);
            bytes += p.tensor().numel() * 4;
            if bytes >= opts.bucket_bytes {
                buckets.push(std::mem::take(&mut bucket));
                bytes = 0;
            }
        }
        if !bucket.is_empty() {
            buckets.push(bucket);
        }
        let dp =
            Self { gpus: gpus.to_vec(), replicas, params, buckets, bucket_of, group, last_sync: SyncStats::default() };
        dp.broadcast_values()?;
        Ok(dp)
    }

    /// Copies replica 0's parameter values (process 0's, with a group) to every replica.
    fn broadcast_values(&self) -> Result<()> {
        for bucket in &self.buckets {
            let tensors: Vec<&Tensor> = bucket.iter().map(|&i| self.params[0][i].tensor()).collect();
            let mut values = Tensor::to_vec_f32_all(&tensors)?;
            if let Some(g) = &self.group {
                // A sum in which only process 0 contributes is process 0's values.
                let mut flat: Vec<f32> = values.concat();
                if g.rank() != 0 {
                    flat.iter_mut().for_each(|v| *v = 0.0);
                }
                g.all_reduce_sum(&mut flat)?;
                values = split_like(&flat, &values);
            }
            let from_other_process = self.group.as_ref().is_some_and(|g| g.rank() != 0);
            for (r, params) in self.params.iter().enumerate() {
                if r == 0 && !from_other_process {
                    continue;
                }
                for (&i, v) in bucket.iter().zip(&values) {
                    let p = &params[i];
                    p.tensor().realize()?.write_bytes(&encode_f32(v, p.dtype()))?;
                }
            }
        }
        Ok(())
    }

    /// The devices, one per replica.
    pub fn gpus(&self) -> &[Gpu] {
        &self.gpus
    }

    /// The replicas, one per device.
    pub fn replicas(&self) -> &[M] {
        &self.replicas
    }

    /// Replica `r`'s parameters in `Module::parameters` order (what its optimizer steps).
    pub fn params(&self, r: usize) -> &[Var] {
        &self.params[r]
    }

    /// Runs `f(r, replica)` for every replica in order and collects the results (each
    /// replica's loss on its part of the batch).
    pub fn map<T>(&self, mut f: impl FnMut(usize, &M) -> Result<T>) -> Result<Vec<T>> {
        self.replicas.iter().enumerate().map(|(r, m)| f(r, m)).collect()
    }

    /// Back-propagates `losses[r]` on replica `r` (each a scalar, the mean loss of its part
    /// of the batch), then averages every gradient over all replicas, as
    /// [`DataParallel::all_reduce_gradients`] does, with each bucket's read-back started
    /// inside the backward as soon as its gradients are complete (see the module's
    /// "Overlap").
    ///
    /// Errors: `InvalidArgument` unless there is one loss per replica; the backward's.
    pub fn backward(&mut self, losses: &[Var]) -> Result<()> {
        if losses.len() != self.replicas.len() {
            return Err(Error::InvalidArgument {
                op: "DataParallel::backward",
                msg: format!("{} losses for {} replicas", losses.len(), self.replicas.len()),
            });
        }
        if self.replicas_in_all() == 1 {
            losses[0].backward()?;
            self.last_sync = SyncStats::default();
            return Ok(());
        }
        let start = Instant::now();
        let mut reads: Vec<Vec<Option<BucketRead>>> =
            self.buckets.iter().map(|_| (0..self.replicas.len()).map(|_| None).collect()).collect();
        let mut during = 0;
        for (r, loss) in losses.iter().enumerate() {
            let index: HashMap<VarId, Vec<usize>> =
                self.params[r].iter().enumerate().fold(HashMap::new(), |mut m, (i, p)| {
                    m.entry(p.id()).or_default().push(i);
                    m
                });
            let mut missing: Vec<usize> = self.buckets.iter().map(Vec::len).collect();
            loss.backward_hooked(&mut |id| {
                for &i in index.get(&id).map_or(&[][..], Vec::as_slice) {
                    let b = self.bucket_of[i];
                    missing[b] -= 1;
                    if missing[b] == 0 {
                        reads[b][r] = Some(self.start_bucket_read(r, b)?);
                        during += 1;
                    }
                }
                Ok(())
            })?;
        }
        // Buckets with a parameter no backward reached (zeros on that replica) start now.
        for (b, per_replica) in reads.iter_mut().enumerate() {
            for (r, read) in per_replica.iter_mut().enumerate() {
                if read.is_none() {
                    *read = Some(self.start_bucket_read(r, b)?);
                }
            }
        }
        for gpu in &self.gpus {
            gpu.flush()?;
        }
        let mut stats = SyncStats { reads_during_backward: during, ..Default::default() };
        for (b, per_replica) in reads.into_iter().enumerate() {
            self.reduce_bucket(b, per_replica.into_iter().flatten().collect(), &mut stats)?;
        }
        stats.ms = start.elapsed().as_secs_f64() * 1e3;
        self.last_sync = stats;
        Ok(())
    }

    /// Replaces every parameter's gradient, on every replica, with the mean over all
    /// replicas (of every process, with a group), bucket by bucket. A parameter without a
    /// gradient counts as zeros (a replica whose part of the batch did not reach it).
    pub fn all_reduce_gradients(&mut self) -> Result<()> {
        let start = Instant::now();
        if self.replicas_in_all() == 1 {
            // The mean of one: the gradients stay where they are (a one-device baseline
            // pays nothing for the wrapper).
            self.last_sync = SyncStats::default();
            return Ok(());
        }
        let mut stats = SyncStats::default();
        for b in 0..self.buckets.len() {
            // Every replica's read starts before the first is waited for: the devices copy
            // at the same time.
            let reads = (0..self.replicas.len()).map(|r| self.start_bucket_read(r, b)).collect::<Result<_>>()?;
            self.reduce_bucket(b, reads, &mut stats)?;
        }
        stats.ms = start.elapsed().as_secs_f64() * 1e3;
        self.last_sync = stats;
        Ok(())
    }

    fn replicas_in_all(&self) -> usize {
        self.replicas.len() * self.group.as_ref().map_or(1, |g| g.size())
    }

    /// Starts reading bucket `b`'s gradients back from replica `r`.
    fn start_bucket_read(&self, r: usize, b: usize) -> Result<BucketRead> {
        let grads: Vec<Option<Tensor>> = self.buckets[b].iter().map(|&i| self.params[r][i].grad()).collect();
        let present: Vec<&Tensor> = grads.iter().flatten().collect();
        let read = Tensor::start_read_f32_all(&present)?;
        Ok(BucketRead { grads, read })
    }

    /// Sums bucket `b`'s reads (one per replica, in replica order) in f32, across the
    /// process group too, and writes the mean back to every replica. The host's adds run on
    /// several threads for long buckets (GPT-2 small: 124 M values per replica a step).
    fn reduce_bucket(&self, b: usize, reads: Vec<BucketRead>, stats: &mut SyncStats) -> Result<()> {
        let bucket = &self.buckets[b];
        let sizes: Vec<usize> = bucket.iter().map(|&i| self.params[0][i].tensor().numel()).collect();
        let mut flat = vec![0.0f32; sizes.iter().sum()];
        for BucketRead { grads, read } in reads {
            let mut values = read.finish()?.into_iter();
            let mut at = 0;
            for (g, &n) in grads.iter().zip(&sizes) {
                if g.is_some() {
                    let v = values.next().unwrap_or_default();
                    on_threads(&mut flat[at..at + n], &v, |acc, x| acc.iter_mut().zip(x).for_each(|(a, &x)| *a += x));
                }
                at += n;
            }
        }
        stats.buckets += 1;
        stats.bytes += flat.len() * 4;
        if let Some(g) = &self.group {
            let t = Instant::now();
            g.all_reduce_sum(&mut flat)?;
            stats.group_ms += t.elapsed().as_secs_f64() * 1e3;
        }
        let scale = 1.0 / self.replicas_in_all() as f32;
        on_threads(&mut flat, &[], |acc, _| acc.iter_mut().for_each(|a| *a *= scale));
        for (r, params) in self.params.iter().enumerate() {
            let mut at = 0;
            for (&i, &n) in bucket.iter().zip(&sizes) {
                let p = &params[i];
                p.set_grad(Tensor::from_f32(&self.gpus[r], &flat[at..at + n], p.shape(), p.dtype())?)?;
                at += n;
            }
        }
        Ok(())
    }

    /// Clears every replica's gradients.
    pub fn zero_grad(&self) {
        self.params.iter().flatten().for_each(Var::zero_grad);
    }

    /// What the last gradient synchronisation did and how long it took.
    pub fn last_sync(&self) -> &SyncStats {
        &self.last_sync
    }
}

/// y = x·W + b with W `[in, out]` split by columns across devices (tensor parallel): device
/// k holds the columns `cols[k]` of W and of b, computes its part of y, and the parts are
/// gathered, through the host, into y on the first device in column order. Each device
/// holds and multiplies only its share of the weight (its memory and FLOPs divided by the
/// number of devices); every device reads all of x.
pub struct ColumnParallelLinear {
    gpus: Vec<Gpu>,
    /// Per device: `[in, cols[k].len()]`.
    weights: Vec<Tensor>,
    /// Per device: `[cols[k].len()]`.
    biases: Vec<Option<Tensor>>,
    cols: Vec<std::ops::Range<usize>>,
    out_features: usize,
    dtype: DType,
}

impl ColumnParallelLinear {
    /// `linear`'s weight and bias cut into `gpus.len()` column blocks as equal as they can
    /// be (the first ones one column wider), block k copied to `gpus[k]`.
    ///
    /// Errors: `InvalidArgument` for no device or more devices than columns.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// use wgkernels::nn::Linear;
    /// use wgkernels::parallel::ColumnParallelLinear;
    /// let gpus = [Gpu::new()?, Gpu::new()?];
    /// let linear = Linear::new(&gpus[0], 16, 30, true, 0.1, DType::F32, 0)?;
    /// let split = ColumnParallelLinear::from_linear(&linear, &gpus)?; // 15 columns each
    /// let x = Tensor::randn(&gpus[0], &[4, 16], DType::F32, 1)?;
    /// let y = split.forward(&x)?; // [4, 30] on gpus[0]
    /// assert_eq!(y.shape(), &[4, 30]);
    /// # Ok(()) }
    /// ```
    pub fn from_linear(linear: &Linear, gpus: &[Gpu]) -> Result<Self> {
        const OP: &str = "ColumnParallelLinear";
        let w = linear.weight.tensor();
        let outputs = w.shape()[1];
        if gpus.is_empty() || gpus.len() > outputs {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("{} devices for {outputs} output columns: need 1 to {outputs}", gpus.len()),
            });
        }
        let base = outputs / gpus.len();
        let wider = outputs % gpus.len();
        let mut cols = Vec::new();
        let mut at = 0;
        for k in 0..gpus.len() {
            let len = base + usize::from(k < wider);
            cols.push(at..at + len);
            at += len;
        }
        let dtype = w.dtype();
        let (mut weights, mut biases) = (Vec::new(), Vec::new());
        for (gpu, c) in gpus.iter().zip(&cols) {
            weights.push(w.narrow(1, c.start, c.len())?.to_device(gpu)?);
            let bias = linear.bias.as_ref().map(|b| b.tensor().narrow(0, c.start, c.len())?.to_device(gpu));
            biases.push(bias.transpose()?);
        }
        Ok(Self { gpus: gpus.to_vec(), weights, biases, cols, out_features: outputs, dtype })
    }

    /// The column range each device holds.
    pub fn columns(&self) -> &[std::ops::Range<usize>] {
        &self.cols
    }

    /// `x` `[..., in]` (on any device) → y `[..., out]` on the first device: x copied to
    /// every device, each part computed there, the parts gathered in column order.
    ///
    /// Errors: `ShapeMismatch` when x's last dim is not the weight's `in`; matmul's.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let inputs = self.weights[0].shape()[0];
        if x.shape().last() != Some(&inputs) {
            return Err(Error::ShapeMismatch {
                op: "ColumnParallelLinear",
                lhs: x.shape().to_vec(),
                rhs: vec![inputs],
            });
        }
        let rows = x.numel() / inputs;
        let host = x.to_vec_f32()?;
        // Every device's part is recorded before any is read back: they compute together.
        let parts: Vec<Tensor> = self
            .gpus
            .iter()
            .zip(&self.weights)
            .zip(&self.biases)
            .map(|((gpu, w), b)| {
                let xk = Tensor::from_f32(gpu, &host, &[rows, inputs], self.dtype)?;
                let y = xk.matmul(w)?;
                let y = match b {
                    Some(b) => y.add(b)?,
                    None => y,
                };
                y.realize().cloned()
            })
            .collect::<Result<_>>()?;
        for gpu in &self.gpus {
            gpu.flush()?;
        }
        let mut out = vec![0.0f32; rows * self.out_features];
        for (part, c) in parts.iter().zip(&self.cols) {
            let values = part.to_vec_f32()?;
            for (r, row) in values.chunks(c.len()).enumerate() {
                out[r * self.out_features + c.start..r * self.out_features + c.end].copy_from_slice(row);
            }
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = self.out_features;
        Tensor::from_f32(&self.gpus[0], &out, &shape, self.dtype)
    }
}

/// `f(acc part, x part)` over `acc` split into as many parts as the host has threads (each
/// at least 2^18 values; `x`, when not empty, split alike): the host's part of the
/// all-reduce is memory-bound, and one thread adds a few GB/s. Element-wise, so the result
/// does not depend on the split. One thread in the browser.
fn on_threads(acc: &mut [f32], x: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync) {
    const MIN_PART: usize = 1 << 18;
    let threads = if cfg!(target_arch = "wasm32") {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(acc.len() / MIN_PART).max(1)
    };
    if threads == 1 {
        return f(acc, x);
    }
    let per = acc.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (k, part) in acc.chunks_mut(per).enumerate() {
            let start = (k * per).min(x.len());
            let other = &x[start..(start + part.len()).min(x.len())];
            let f = &f;
            scope.spawn(move || f(part, other));
        }
    });
}

/// `flat` cut into pieces of the lengths of `like`'s.
fn split_like(flat: &[f32], like: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let mut at = 0;
    like.iter()
        .map(|v| {
            let piece = flat[at..at + v.len()].to_vec();
            at += v.len();
            piece
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::on_threads;

    /// The parts cover every element once, `x` split alike, whatever the thread count.
    #[test]
    fn on_threads_adds_every_element_once() {
        for n in [0, 5, (1 << 18) + 3, 3 << 19] {
            let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
            let mut acc: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
            on_threads(&mut acc, &x, |a, x| a.iter_mut().zip(x).for_each(|(a, &x)| *a += x));
            on_threads(&mut acc, &[], |a, _| a.iter_mut().for_each(|a| *a *= 0.5));
            for (i, &v) in acc.iter().enumerate() {
                assert_eq!(v, ((i % 7) as f32 + (i % 1000) as f32) * 0.5, "element {i} of {n}");
            }
        }
    }
}
