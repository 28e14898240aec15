//! One error type for the whole crate. Every refused input names the op and the
//! shapes or dtypes involved; nothing is dispatched when an `Err` is returned.

use crate::DType;

/// Everything that can go wrong in wgkernels. In the variants that have them, `op` names the
/// operation that refused its input (`"matmul"`, `"softmax mask"`, ...), `lhs`/`rhs` or
/// `shape` the offending shapes or dtypes, and `msg` what was expected.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// match x.matmul(&x) {
///     Err(wgkernels::Error::ShapeMismatch { op, lhs, rhs }) => println!("{op}: {lhs:?} vs {rhs:?}"),
///     other => println!("{:?}", other.map(|t| t.shape().to_vec())),
/// }
/// # Ok(()) }
/// ```
#[allow(missing_docs)] // the fields are described above
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter could be found on any backend that was tried.
    #[error("no GPU adapter found (tried: {tried}). {hint}")]
    NoAdapter { tried: String, hint: String },

    /// The adapter refused to create a device.
    #[error("could not create a device on adapter '{adapter}': {reason}")]
    RequestDevice { adapter: String, reason: String },

    /// Two operands' shapes cannot be combined by the op.
    #[error("{op}: shape mismatch, lhs {lhs:?} vs rhs {rhs:?}")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },

    /// The operands' dtypes differ where the op needs them equal.
    #[error("{op}: dtype mismatch, lhs {lhs:?} vs rhs {rhs:?}")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },

    /// The op does not handle this dtype.
    #[error("{op}: dtype {dtype:?} is not supported here")]
    UnsupportedDType { op: &'static str, dtype: DType },

    /// The adapter lacks a feature the op needs.
    #[error("{op}: the adapter lacks the feature {feature} ({hint})")]
    MissingFeature { op: &'static str, feature: &'static str, hint: &'static str },

    /// The adapter's limits admit no configuration of the op's kernels.
    #[error("{op}: not supported on this adapter: {msg}")]
    Unsupported { op: &'static str, msg: String },

    /// A buffer would exceed what the device can bind in one storage binding.
    #[error("{op}: {bytes} bytes for shape {shape:?} exceed the device's storage binding limit of {limit} bytes")]
    TooLarge { op: &'static str, shape: Vec<usize>, bytes: u64, limit: u64 },

    /// A zero-sized or empty input where the op needs at least one element.
    #[error("{op}: empty input of shape {shape:?} is not allowed here")]
    Empty { op: &'static str, shape: Vec<usize> },

    /// A dimension index outside `0..rank`.
    #[error("{op}: axis {axis} is out of range for a tensor of rank {rank} (shape {shape:?})")]
    AxisOutOfRange { op: &'static str, axis: isize, rank: usize, shape: Vec<usize> },

    /// Any other refused argument: the message says which and why.
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    /// The device ran out of memory while allocating.
    #[error("{op}: out of GPU memory while allocating {bytes} bytes")]
    OutOfMemory { op: &'static str, bytes: u64 },

    /// The device was lost (driver reset, removal, destroy). Create a new `Gpu`.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    /// wgpu reported an error (validation, shader compilation) that the host checks missed.
    #[error("wgpu error in {op}: {msg}")]
    Backend { op: &'static str, msg: String },
}

/// `Result` with the crate's [`Error`].
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// fn double(x: &Tensor) -> wgkernels::Result<Tensor> { x.add(x) }
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
/// let y = double(&x)?;
/// # Ok(()) }
/// ```
pub type Result<T> = std::result::Result<T, Error>;
