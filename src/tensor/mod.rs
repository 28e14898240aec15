//! `Tensor`: a strided view of GPU storage, with a dtype. Cheap to clone (shared storage),
//! `Send + Sync`. Views (reshape of contiguous data, transpose, permute, narrow, expand)
//! never copy; `contiguous()` materialises.
//!
//! Every kernel reaches the data through [`Tensor::storage`]: that is the one place where
//! the fusion JIT will realise a pending element-wise expression before a non-fusable
//! kernel reads it, without changing this public API.

use std::sync::{Arc, Mutex};

use crate::device::Gpu;
use crate::dtype::{decode_f32, encode_f32, DType, Element};
use crate::error::{Error, Result};

/// GPU memory behind one or more tensors. Returns its buffer to the pool on drop.
pub(crate) struct Storage {
    gpu: Gpu,
    buffer: Option<wgpu::Buffer>,
    class: u64,
    /// Elements of `dtype` the buffer holds.
    pub(crate) len: usize,
}

impl Storage {
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("a live storage has a buffer")
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.gpu.release(b, self.class);
        }
    }
}

/// A computation a pending tensor's values wait for: a node of a lazy expression graph that
/// a layer above builds (the fusion JIT's element-wise chains, a matmul waiting for its
/// epilogue) and knows how to run. The tensor layer stores it and asks for it when the
/// values are needed ([`Tensor::storage`]); it names no kernel.
pub(crate) trait PendingExpr: Send + Sync {
    /// Computes the values of `t`, which holds this expression, into new storage.
    fn realize(&self, t: &Tensor) -> Result<Arc<Storage>>;
    /// The concrete node, for the layer that built it.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What a tensor's elements come from: GPU storage, once realised, or a pending
/// element-wise expression (the fusion JIT's graph node) until then.
pub(crate) struct Data {
    storage: std::sync::OnceLock<Arc<Storage>>,
    /// The expression still to compute; taken when realised.
    pub(crate) pending: Mutex<Option<Arc<dyn PendingExpr>>>,
    /// Serialises realisation of this node.
    realising: Mutex<()>,
    /// Pending nodes on the longest path to realised data (0 once realised).
    pub(crate) depth: usize,
}

impl Data {
    fn realized(storage: Storage) -> Arc<Self> {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(Arc::new(storage));
        Arc::new(Self { storage: cell, pending: Mutex::new(None), realising: Mutex::new(()), depth: 0 })
    }

    pub(crate) fn is_realized(&self) -> bool {
        self.storage.get().is_some()
    }
}

/// An n-dimensional array on the GPU: a dtype, a shape and strides over shared storage.
///
/// ```
/// use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
/// let t = x.transpose(0, 1)?;                      // a view: [3, 2], no copy
/// assert_eq!(t.to_vec::<f32>()?, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
/// let h = x.to_dtype(DType::F16)?;                 // stored as 16-bit, computed in f32
/// let r = Tensor::randn(&gpu, &[2, 3], DType::BF16, 7)?; // seeded, the same on every backend
/// println!("{:?}", (&h + &r.to_dtype(DType::F16)?)?.to_vec_f32()?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tensor {
    gpu: Gpu,
    dtype: DType,
    shape: Vec<usize>,
    /// Element strides per dim; 0 where broadcast.
    strides: Vec<usize>,
    /// First element, in elements from the start of the storage.
    offset: usize,
    data: Arc<Data>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?}", self.shape, self.dtype)?;
        if !self.is_contiguous() {
            write!(f, ", strides {:?}, offset {}", self.strides, self.offset)?;
        }
        write!(f, ")")
    }
}

/// Row-major strides for `shape`.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// The element count of `shape`, or an `Err` naming `op` and the shape when the count (or
/// its bytes at 8 per element) does not fit a `usize`.
pub(crate) fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|n| n.checked_mul(8).is_some()).ok_or_else(|| {
        Error::InvalidArgument { op, msg: format!("shape {shape:?} has more elements than a usize counts") }
    })
}

/// The element count of `shape` if a tensor of it in `dtype` fits one storage binding of
/// `gpu`; checked before any host or device memory is taken for it.
pub(crate) fn bindable_numel(gpu: &Gpu, op: &'static str, shape: &[usize], dtype: DType) -> Result<usize> {
    let numel = checked_numel(op, shape)?;
    let bytes = (numel as u64).saturating_mul(dtype.size_in_bytes() as u64);
    let limit = gpu.info().limits.max_storage_buffer_binding_size;
    if bytes.next_multiple_of(4) > limit {
        return Err(Error::TooLarge { op, shape: shape.to_vec(), bytes, limit });
    }
    Ok(numel)
}

/// True when every element of the view (`shape`, `strides`, `offset`) lies inside a storage
/// of `len` elements (an empty view always does).
pub(crate) fn view_in_bounds(shape: &[usize], strides: &[usize], offset: usize, len: usize) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let last = shape.iter().zip(strides).try_fold(offset, |at, (&n, &s)| at.checked_add((n - 1).checked_mul(s)?));
    last.is_some_and(|last| last < len.max(1))
}

/// Resolves a possibly negative dim (`-1` is the last) against `rank`.
pub(crate) fn resolve_dim(op: &'static str, dim: isize, shape: &[usize]) -> Result<usize> {
    let rank = shape.len() as isize;
    let d = if dim < 0 { dim + rank } else { dim };
    if d < 0 || d >= rank {
        return Err(Error::AxisOutOfRange { op, axis: dim, rank: shape.len(), shape: shape.to_vec() });
    }
    Ok(d as usize)
}

/// Splitmix64: a counter-based generator, so element `i` of a seeded tensor does not
/// depend on how the work is split, and every backend gets the same values.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Two independent uniforms in (0, 1] from element `i` of the stream `seed`.
fn uniform_pair(seed: u64, i: u64) -> (f64, f64) {
    let h = splitmix64(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ splitmix64(i));
    let u1 = ((h >> 40) as f64 + 1.0) / (1u64 << 24) as f64;
    let u2 = (((h >> 16) & 0xFF_FFFF) as f64 + 1.0) / (1u64 << 24) as f64;
    (u1, u2)
}

impl Tensor {
    // ---- creation -------------------------------------------------------------------

    /// Allocates an uninitialised contiguous tensor (pool-backed). Every caller fills it.
    pub(crate) fn empty(gpu: &Gpu, op: &'static str, shape: &[usize], dtype: DType) -> Result<Self> {
        // Within the binding limit: bindable_numel checked it.
        let numel = bindable_numel(gpu, op, shape, dtype)?;
        let (buffer, class) = gpu.alloc(op, (numel * dtype.size_in_bytes()) as u64)?;
        Ok(Self {
            gpu: gpu.clone(),
            dtype,
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
            data: Data::realized(Storage { gpu: gpu.clone(), buffer: Some(buffer), class, len: numel }),
        })
    }

    /// A tensor holding `data` (row-major) with `shape`; the dtype follows `T`.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let t = Tensor::from_slice(&gpu, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
    /// let h = Tensor::from_slice(&gpu, &[wgkernels::f16::from_f32(0.5); 3], &[3])?; // F16
    /// assert_eq!(h.dtype(), DType::F16);
    /// # Ok(()) }
    /// ```
    pub fn from_slice<T: Element>(gpu: &Gpu, data: &[T], shape: &[usize]) -> Result<Self> {
        let numel = checked_numel("from_slice", shape)?;
        if numel != data.len() {
            return Err(Error::ShapeMismatch { op: "from_slice", lhs: vec![data.len()], rhs: shape.to_vec() });
        }
        let t = Self::empty(gpu, "from_slice", shape, T::DTYPE)?;
        gpu.write(t.storage()?.buffer(), 0, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// A tensor of `dtype` from f32 values, rounded to nearest-even for 16-bit dtypes.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let t = Tensor::from_f32(&gpu, &[0.1, 0.2, 0.3], &[3], DType::BF16)?; // rounded to bf16
    /// # Ok(()) }
    /// ```
    pub fn from_f32(gpu: &Gpu, data: &[f32], shape: &[usize], dtype: DType) -> Result<Self> {
        let numel = checked_numel("from_f32", shape)?;
        if numel != data.len() {
            return Err(Error::ShapeMismatch { op: "from_f32", lhs: vec![data.len()], rhs: shape.to_vec() });
        }
        let t = Self::empty(gpu, "from_f32", shape, dtype)?;
        gpu.write(t.storage()?.buffer(), 0, &encode_f32(data, dtype))?;
        Ok(t)
    }

    /// A copy of this tensor on `gpu` (row-major, the same dtype), through host memory:
    /// wgpu has no copies between devices. Waits for this tensor's device.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let other = Gpu::new()?;
    /// let t = Tensor::randn(&gpu, &[2, 3], DType::BF16, 0)?;
    /// let u = t.to_device(&other)?;
    /// assert_eq!(u.to_vec_f32()?, t.to_vec_f32()?);
    /// # Ok(()) }
    /// ```
    pub fn to_device(&self, gpu: &Gpu) -> Result<Self> {
        let bytes = self.raw_bytes()?;
        let t = Self::empty(gpu, "to_device", &self.shape, self.dtype)?;
        if !bytes.is_empty() {
            gpu.write(t.storage()?.buffer(), 0, &bytes)?;
        }
        Ok(t)
    }

    /// A tensor of zeros.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let z = Tensor::zeros(&gpu, &[2, 3], DType::F16)?;
    /// assert_eq!(z.to_vec_f32()?, [0.0; 6]);
    /// # Ok(()) }
    /// ```
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Self> {
        let t = Self::empty(gpu, "zeros", shape, dtype)?;
        let buffer = t.storage()?.buffer().clone();
        gpu.record(|enc| enc.clear_buffer(&buffer, 0, None))?;
        Ok(t)
    }

    /// A tensor with every element `value` (rounded to `dtype`).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let t = Tensor::full(&gpu, &[3], 0.5, DType::F32)?;
    /// assert_eq!(t.to_vec::<f32>()?, [0.5; 3]);
    /// # Ok(()) }
    /// ```
    pub fn full(gpu: &Gpu, shape: &[usize], value: f32, dtype: DType) -> Result<Self> {
        let numel = bindable_numel(gpu, "full", shape, dtype)?;
        Self::from_f32(gpu, &vec![value; numel], shape, dtype)
    }

    /// Uniform values in [0, 1), reproducible from `seed` on every backend.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let u = Tensor::rand(&gpu, &[1000], DType::F32, 1)?;
    /// assert!(u.to_vec_f32()?.iter().all(|v| (0.0..1.0).contains(v)));
    /// # Ok(()) }
    /// ```
    pub fn rand(gpu: &Gpu, shape: &[usize], dtype: DType, seed: u64) -> Result<Self> {
        let numel = bindable_numel(gpu, "rand", shape, dtype)?;
        let data: Vec<f32> = (0..numel as u64).map(|i| (uniform_pair(seed, i).0 - 2f64.powi(-24)) as f32).collect();
        Self::from_f32(gpu, &data, shape, dtype)
    }

    /// Standard normal values (Box–Muller), reproducible from `seed` on every backend.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let a = Tensor::randn(&gpu, &[64], DType::F32, 7)?;
    /// let b = Tensor::randn(&gpu, &[64], DType::F32, 7)?;
    /// assert_eq!(a.to_vec_f32()?, b.to_vec_f32()?); // same seed, same values, any backend
    /// # Ok(()) }
    /// ```
    pub fn randn(gpu: &Gpu, shape: &[usize], dtype: DType, seed: u64) -> Result<Self> {
        let numel = bindable_numel(gpu, "randn", shape, dtype)?;
        let data: Vec<f32> = (0..numel as u64)
            .map(|i| {
                let (u1, u2) = uniform_pair(seed, i);
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Self::from_f32(gpu, &data, shape, dtype)
    }

    // ---- properties -----------------------------------------------------------------

    /// The device this tensor lives on.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert!(x.gpu().fusion() || !gpu.fusion());
    /// # Ok(()) }
    /// ```
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Element type.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let h = Tensor::zeros(&gpu, &[3], DType::F16)?;
    /// assert_eq!(h.dtype(), DType::F16);
    /// # Ok(()) }
    /// ```
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Size of each dim.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert_eq!((x.shape(), x.strides(), x.rank(), x.numel()), (&[4, 8][..], &[8, 1][..], 2, 32));
    /// assert_eq!(x.dim(-1)?, 8);
    /// # Ok(()) }
    /// ```
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element stride of each dim (0 where broadcast).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert_eq!(x.transpose(0, 1)?.strides(), &[1, 8]);
    /// # Ok(()) }
    /// ```
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Offset of the first element in the storage, in elements.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert_eq!(x.narrow(0, 1, 2)?.offset(), 8);
    /// # Ok(()) }
    /// ```
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of dims.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert_eq!(x.rank(), 2);
    /// # Ok(()) }
    /// ```
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert_eq!(x.numel(), 32);
    /// # Ok(()) }
    /// ```
    pub fn numel(&self) -> usize {
        // Every shape a tensor can have was checked by `checked_numel`: no overflow here.
        self.shape.iter().product()
    }

    /// Size of dim `dim` (negative counts from the end).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert_eq!((x.dim(0)?, x.dim(-1)?), (4, 8));
    /// # Ok(()) }
    /// ```
    pub fn dim(&self, dim: isize) -> Result<usize> {
        Ok(self.shape[resolve_dim("dim", dim, &self.shape)?])
    }

    /// True when the elements are laid out row-major without gaps from `offset`.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let t = x.transpose(0, 1)?;
    /// assert!(!t.is_contiguous() && t.shares_storage(&x));
    /// # Ok(()) }
    /// ```
    pub fn is_contiguous(&self) -> bool {
        let want = contiguous_strides(&self.shape);
        self.shape.iter().zip(self.strides.iter().zip(&want)).all(|(&n, (&s, &w))| n == 1 || s == w)
    }

    /// True when `self` and `other` share storage (or the same pending expression).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert!(x.reshape(&[32])?.shares_storage(&x));
    /// # Ok(()) }
    /// ```
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// The realised storage: a pending element-wise expression is compiled and run here (the
    /// fusion JIT's realisation point), so every kernel that reads a tensor triggers it.
    pub(crate) fn storage(&self) -> Result<&Arc<Storage>> {
        if let Some(s) = self.data.storage.get() {
            return Ok(s);
        }
        let _guard = crate::device::lock(&self.data.realising);
        if self.data.storage.get().is_none() {
            let expr = self.data.pending.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let expr = expr.ok_or(Error::Backend {
                op: "realize",
                msg: "a tensor with neither storage nor a pending expression".into(),
            })?;
            let storage = expr.realize(self)?;
            let _ = self.data.storage.set(storage);
            self.data.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        Ok(self.data.storage.get().expect("set above"))
    }

    /// Computes a pending element-wise expression now (one fused kernel) and returns `self`,
    /// realised. A no-op for realised tensors.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let y = x.exp()?.add(&x)?;     // pending with fusion on (GpuOptions::fusion)
    /// assert_eq!(y.is_pending(), gpu.fusion());
    /// y.realize()?;                  // one fused kernel runs now
    /// assert!(!y.is_pending());
    /// # Ok(()) }
    /// ```
    pub fn realize(&self) -> Result<&Tensor> {
        self.storage()?;
        Ok(self)
    }

    /// The wgpu buffer that holds this tensor's elements (realising it first), for interop
    /// with code that binds buffers itself. The tensor's first element is at byte
    /// `offset() · dtype().size()` of it (16-bit dtypes pack two elements per 32-bit word);
    /// the buffer may be longer than the tensor (the pool rounds sizes up) and is reused by
    /// the pool once every tensor on it is dropped. Work the library has recorded but not yet
    /// submitted is ordered before your own submissions only after [`Gpu::flush`].
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[1024], DType::F32, 0)?;
    /// let buffer: &wgkernels::wgpu::Buffer = x.buffer()?;
    /// gpu.flush()?; // x's kernel is submitted before anything the caller submits
    /// assert!(buffer.size() >= 4096);
    /// # Ok(()) }
    /// ```
    pub fn buffer(&self) -> Result<&wgpu::Buffer> {
        Ok(self.storage()?.buffer())
    }

    /// True when the tensor is a pending expression that has not been computed yet.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let y = x.relu()?;
    /// println!("pending: {}", y.is_pending()); // true with fusion on
    /// # Ok(()) }
    /// ```
    pub fn is_pending(&self) -> bool {
        !self.data.is_realized()
    }

    /// Records storage computed for this pending tensor by another tensor's fused kernel.
    pub(crate) fn set_realized(&self, storage: Arc<Storage>) {
        let _guard = crate::device::lock(&self.data.realising);
        if self.data.storage.set(storage).is_ok() {
            self.data.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }

    /// An identity of the storage (or pending node) behind this tensor: equal for tensors
    /// that [`Tensor::shares_storage`].
    pub(crate) fn storage_id(&self) -> usize {
        Arc::as_ptr(&self.data) as usize
    }

    pub(crate) fn data(&self) -> &Arc<Data> {
        &self.data
    }

    /// A pending tensor: contiguous, `shape`, `dtype`, computed by `expr` when needed.
    pub(crate) fn pending(
        gpu: &Gpu,
        shape: &[usize],
        dtype: DType,
        expr: impl PendingExpr + 'static,
        depth: usize,
    ) -> Self {
        let data = Arc::new(Data {
            storage: std::sync::OnceLock::new(),
            pending: Mutex::new(Some(Arc::new(expr))),
            realising: Mutex::new(()),
            depth,
        });
        Self { gpu: gpu.clone(), dtype, shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0, data }
    }

    // ---- views ----------------------------------------------------------------------

    /// A view of the same data. Views of a pending expression realise it first (fusion
    /// keeps to same-shape element-wise chains; a view ends the chain).
    pub(crate) fn view(&self, shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Result<Self> {
        let len = self.storage()?.len;
        checked_numel("view", &shape)?;
        // Every view stays inside its storage: launchers rely on this to build unchecked
        // shaders, so it is checked in every build, not only with debug assertions.
        if !view_in_bounds(&shape, &strides, offset, len) {
            return Err(Error::InvalidArgument {
                op: "view",
                msg: format!(
                    "shape {shape:?} with strides {strides:?} from offset {offset} reaches past the {len} elements of its storage"
                ),
            });
        }
        Ok(Self { gpu: self.gpu.clone(), dtype: self.dtype, shape, strides, offset, data: self.data.clone() })
    }

    /// The same elements with a new shape. A view when the data is contiguous; otherwise
    /// the data is first copied (like `torch.reshape`).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let r = x.reshape(&[2, 16])?;          // a view: x is contiguous
    /// assert!(r.shares_storage(&x));
    /// # Ok(()) }
    /// ```
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let numel = checked_numel("reshape", shape)?;
        if numel != self.numel() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape.clone(), rhs: shape.to_vec() });
        }
        let src = self.contiguous_at_any_offset()?;
        src.view(shape.to_vec(), contiguous_strides(shape), src.offset)
    }

    /// Swaps two dims (negative counts from the end). A view.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let t = x.transpose(0, 1)?;            // [8, 4], no copy
    /// assert_eq!(t.shape(), &[8, 4]);
    /// # Ok(()) }
    /// ```
    pub fn transpose(&self, dim0: isize, dim1: isize) -> Result<Self> {
        let a = resolve_dim("transpose", dim0, &self.shape)?;
        let b = resolve_dim("transpose", dim1, &self.shape)?;
        let mut order: Vec<usize> = (0..self.rank()).collect();
        order.swap(a, b);
        self.permute(&order)
    }

    /// Reorders dims: dim `i` of the result is dim `order[i]` of `self`. A view.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[2, 3, 4], DType::F32, 0)?;
    /// assert_eq!(x.permute(&[2, 0, 1])?.shape(), &[4, 2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn permute(&self, order: &[usize]) -> Result<Self> {
        let mut seen = vec![false; self.rank()];
        let valid = order.len() == self.rank()
            && order.iter().all(|&d| d < self.rank() && !std::mem::replace(&mut seen[d], true));
        if !valid {
            return Err(Error::InvalidArgument {
                op: "permute",
                msg: format!("{order:?} is not a permutation of the {} dims of shape {:?}", self.rank(), self.shape),
            });
        }
        let shape = order.iter().map(|&d| self.shape[d]).collect();
        let strides = order.iter().map(|&d| self.strides[d]).collect();
        self.view(shape, strides, self.offset)
    }

    /// `len` elements of dim `dim` starting at `start`. A view.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// let cols = x.narrow(-1, 2, 3)?;         // columns 2..5, a view
    /// assert_eq!(cols.shape(), &[4, 3]);
    /// # Ok(()) }
    /// ```
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Self> {
        let d = resolve_dim("narrow", dim, &self.shape)?;
        if start.checked_add(len).is_none_or(|end| end > self.shape[d]) {
            return Err(Error::InvalidArgument {
                op: "narrow",
                msg: format!(
                    "range {start}..{} is outside dim {d} of shape {:?}",
                    start.saturating_add(len),
                    self.shape
                ),
            });
        }
        let mut shape = self.shape.clone();
        shape[d] = len;
        let offset = if len == 0 { self.offset } else { self.offset + start * self.strides[d] };
        self.view(shape, self.strides.clone(), offset)
    }

    /// Inserts a dim of size 1 at `dim` (`0..=rank`). A view.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 0)?;
    /// assert_eq!(x.unsqueeze(0)?.shape(), &[1, 4, 8]);
    /// # Ok(()) }
    /// ```
    pub fn unsqueeze(&self, dim: usize) -> Result<Self> {
        if dim > self.rank() {
            return Err(Error::AxisOutOfRange {
                op: "unsqueeze",
                axis: dim as isize,
                rank: self.rank(),
                shape: self.shape.clone(),
            });
        }
        let mut shape = self.shape.clone();
        let mut strides = self.strides.clone();
        shape.insert(dim, 1);
        strides.insert(dim, 0);
        self.view(shape, strides, self.offset)
    }

    /// Removes `dim` (negative counts from the end), which must have size 1. A view.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::randn(&gpu, &[4, 3, 8], DType::F32, 0)?;
    /// let middle = x.narrow(1, 1, 1)?.squeeze(1)?;  // x[:, 1, :], a view
    /// assert_eq!(middle.shape(), &[4, 8]);
    /// assert!(x.squeeze(0).is_err());                // size 4
    /// # Ok(()) }
    /// ```
    pub fn squeeze(&self, dim: isize) -> Result<Self> {
        let d = resolve_dim("squeeze", dim, &self.shape)?;
        if self.shape[d] != 1 {
            return Err(Error::InvalidArgument {
                op: "squeeze",
                msg: format!("dim {d} of shape {:?} has size {}, not 1", self.shape, self.shape[d]),
            });
        }
        let mut shape = self.shape.clone();
        let mut strides = self.strides.clone();
        shape.remove(d);
        strides.remove(d);
        self.view(shape, strides, self.offset)
    }

    /// Broadcasts to `shape` (NumPy rules: leading dims added, size-1 dims repeated with
    /// stride 0). A view.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let b = Tensor::randn(&gpu, &[1, 8], DType::F32, 0)?;
    /// let e = b.expand(&[4, 8])?;             // stride 0 on dim 0: no copy
    /// assert_eq!(e.strides(), &[0, 1]);
    /// # Ok(()) }
    /// ```
    pub fn expand(&self, shape: &[usize]) -> Result<Self> {
        let err = || Error::ShapeMismatch { op: "expand", lhs: self.shape.clone(), rhs: shape.to_vec() };
        if shape.len() < self.rank() {
            return Err(err());
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (d, &n) in shape.iter().enumerate() {
            if d < lead {
                continue;
            }
            let (own, s) = (self.shape[d - lead], self.strides[d - lead]);
            strides[d] = if own == n {
                s
            } else if own == 1 {
                0
            } else {
                return Err(err());
            };
        }
        self.view(shape.to_vec(), strides, self.offset)
    }

    // ---- reading back ---------------------------------------------------------------

    /// The elements, row-major, as `T`, converted on the host where `T` is not the dtype:
    /// exactly when widening (`to_vec::<f32>()` of f16 or bf16 data), with
    /// round-to-nearest-even when narrowing (`to_vec::<f16>()` of f32 data), as a cast would.
    ///
    /// ```
    /// # use wgkernels::{bf16, DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let t = Tensor::from_slice(&gpu, &[1.0f32, 2.0], &[2])?;
    /// let back: Vec<f32> = t.to_vec()?;
    /// assert_eq!(back, [1.0, 2.0]);
    /// let h = t.to_dtype(DType::BF16)?;
    /// assert_eq!(h.to_vec::<f32>()?, [1.0, 2.0]);        // widened
    /// assert_eq!(h.to_vec::<bf16>()?, [bf16::ONE, bf16::from_f32(2.0)]);
    /// # Ok(()) }
    /// ```
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let bytes = self.raw_bytes()?;
        if T::DTYPE == self.dtype {
            return Ok(bytemuck::pod_collect_to_vec(&bytes));
        }
        Ok(decode_f32(&bytes, self.dtype).into_iter().map(T::from_f32).collect())
    }

    /// The elements, row-major, converted to f32 whatever the dtype.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let h = Tensor::full(&gpu, &[2], 1.5, DType::BF16)?;
    /// assert_eq!(h.to_vec_f32()?, [1.5, 1.5]);
    /// # Ok(()) }
    /// ```
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        let bytes = self.raw_bytes()?;
        Ok(decode_f32(&bytes, self.dtype))
    }

    /// The elements of every tensor in `tensors` (all on one device), converted to f32, read
    /// back in one wait instead of one per tensor (a gradient bucket in data-parallel
    /// training).
    ///
    /// Errors: `InvalidArgument` when the tensors are on different devices.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let a = Tensor::from_slice(&gpu, &[1.0f32, 2.0], &[2])?;
    /// let b = Tensor::full(&gpu, &[3], 0.5, DType::BF16)?;
    /// let all = Tensor::to_vec_f32_all(&[&a, &b])?;
    /// assert_eq!(all, vec![vec![1.0, 2.0], vec![0.5, 0.5, 0.5]]);
    /// # Ok(()) }
    /// ```
    pub fn to_vec_f32_all(tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        Self::start_read_f32_all(tensors)?.finish()
    }

    /// [`Tensor::to_vec_f32_all`] started and not waited for: reads from several devices
    /// run at once (data-parallel gradient buckets), each finished in turn.
    pub(crate) fn start_read_f32_all(tensors: &[&Tensor]) -> Result<F32ReadInFlight> {
        let Some(first) = tensors.first() else {
            return Ok(F32ReadInFlight { read: None, dtypes: Vec::new() });
        };
        if let Some(other) = tensors.iter().find(|t| !Arc::ptr_eq(&t.gpu.inner, &first.gpu.inner)) {
            return Err(Error::InvalidArgument {
                op: "to_vec_f32_all",
                msg: format!("tensors on two devices ({} and {})", first.gpu.info().name, other.gpu.info().name),
            });
        }
        let contiguous: Vec<Tensor> = tensors.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
        let storages = contiguous.iter().map(|c| c.storage()).collect::<Result<Vec<_>>>()?;
        let parts: Vec<(&wgpu::Buffer, u64, u64)> = contiguous
            .iter()
            .zip(&storages)
            .map(|(c, s)| (s.buffer(), 0, (c.numel() * c.dtype.size_in_bytes()) as u64))
            .collect();
        // The copies are recorded before any later work that may reuse these buffers.
        let read = first.gpu.start_read_many(&parts)?;
        Ok(F32ReadInFlight { read: Some(read), dtypes: contiguous.iter().map(|c| c.dtype).collect() })
    }

    /// [`Tensor::to_vec`] as a future: the way to read results in the browser (wasm32 +
    /// WebGPU), where the blocking readers return an `Unsupported` error. Native code may
    /// use it too (it blocks inside, as `to_vec` does).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let t = Tensor::from_slice(&gpu, &[1.0f32, 2.0], &[2])?.exp()?;
    /// let back: Vec<f32> = pollster::block_on(t.to_vec_async())?; // browser: .await
    /// assert_eq!(back.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn to_vec_async<T: Element>(&self) -> Result<Vec<T>> {
        let bytes = self.raw_bytes_async().await?;
        if T::DTYPE == self.dtype {
            return Ok(bytemuck::pod_collect_to_vec(&bytes));
        }
        Ok(decode_f32(&bytes, self.dtype).into_iter().map(T::from_f32).collect())
    }

    /// [`Tensor::to_vec_f32`] as a future (see [`Tensor::to_vec_async`]).
    pub async fn to_vec_f32_async(&self) -> Result<Vec<f32>> {
        let bytes = self.raw_bytes_async().await?;
        Ok(decode_f32(&bytes, self.dtype))
    }

    /// The elements' bytes in row-major order, little-endian, in this tensor's dtype (what
    /// a safetensors file holds). Waits for the GPU.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.raw_bytes()
    }

    /// Overwrites this tensor's elements in place with `bytes` (row-major, this dtype, one
    /// value per element), after the work recorded so far: every tensor sharing the storage
    /// sees the new values (loading weights into parameters an optimizer already holds).
    ///
    /// Errors: `InvalidArgument` unless the tensor is realised, contiguous and starts its
    /// storage, and `bytes` holds exactly its elements.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<()> {
        const OP: &str = "write_bytes";
        let want = self.numel() * self.dtype.size_in_bytes();
        if bytes.len() != want {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("{} bytes for {:?} {:?} ({want} bytes)", bytes.len(), self.shape, self.dtype),
            });
        }
        if self.is_pending() || !self.is_contiguous() || self.offset != 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: "only a realised, contiguous tensor that starts its storage is written in place".into(),
            });
        }
        if want == 0 {
            return Ok(());
        }
        self.gpu.write(self.storage()?.buffer(), 0, bytes)
    }

    fn raw_bytes(&self) -> Result<Vec<u8>> {
        if self.numel() == 0 {
            return Ok(Vec::new());
        }
        let c = self.contiguous()?;
        let bytes = (c.numel() * c.dtype.size_in_bytes()) as u64;
        // An offset view of 16-bit data may start mid-word: `contiguous()` gave offset 0.
        self.gpu.read(c.storage()?.buffer(), 0, bytes)
    }

    async fn raw_bytes_async(&self) -> Result<Vec<u8>> {
        if self.numel() == 0 {
            return Ok(Vec::new());
        }
        let c = self.contiguous()?;
        let bytes = (c.numel() * c.dtype.size_in_bytes()) as u64;
        c.gpu.read_async(c.storage()?.buffer(), 0, bytes).await
    }
}

/// Tensors being read back ([`Tensor::start_read_f32_all`]).
pub(crate) struct F32ReadInFlight {
    read: Option<crate::device::ReadInFlight>,
    dtypes: Vec<DType>,
}

impl F32ReadInFlight {
    /// Waits for the read and returns each tensor's elements as f32.
    pub(crate) fn finish(self) -> Result<Vec<Vec<f32>>> {
        let Some(read) = self.read else { return Ok(Vec::new()) };
        Ok(read.finish()?.iter().zip(&self.dtypes).map(|(b, &d)| decode_f32(b, d)).collect())
    }
}
