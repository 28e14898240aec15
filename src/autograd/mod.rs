//! Reverse-mode automatic differentiation over the tensor API.
//!
//! A [`Var`] is a tensor that takes part in differentiation: a parameter (a leaf that
//! requires grad, made by [`Tensor::requires_grad`]), a constant ([`Var::constant`]), or the
//! result of an op on other vars, which records on the graph what its backward needs.
//! [`Var::backward`] walks the graph from a scalar loss in reverse topological order and
//! adds each parameter's gradient into its [`Var::grad`]; gradients accumulate across
//! `backward` calls until [`Var::zero_grad`]. Inside [`no_grad`] nothing is recorded.
//!
//! The backward of each op is built from the crate's kernels: matmuls for matmul,
//! the fused backward kernels for the norms and softmax, the dlogits that cross-entropy's
//! forward already computes, and lazy element-wise ops elsewhere, which the fusion JIT
//! compiles into as few kernels as the forward's chains (e.g. GELU's derivative times the
//! upstream gradient is one kernel). A node's saved tensors are freed once its backward has
//! run (as PyTorch does without `retain_graph`); a second `backward` through the same
//! graph is an error.
//!
//! ```
//! use wgkernels::{DType, Gpu, Tensor};
//! # fn main() -> wgkernels::Result<()> {
//! let gpu = Gpu::new()?;
//! let w = Tensor::randn(&gpu, &[3, 2], DType::F32, 0)?.requires_grad(); // a parameter
//! let x = Tensor::randn(&gpu, &[4, 3], DType::F32, 1)?.constant();      // data
//! let loss = x.matmul(&w)?.tanh()?.square()?.mean_all()?;               // [] (0-dim)
//! loss.backward()?;
//! assert_eq!(w.grad().unwrap().shape(), &[3, 2]);
//! w.zero_grad();
//! # Ok(()) }
//! ```

mod ops;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::DType;

pub use ops::sum_to;

/// What a node's backward returns: one gradient per input (`None` where the input needs
/// none), each of that input's shape and dtype.
type Grads = Result<Vec<Option<Tensor>>>;

/// The backward of one recorded op: from the gradient of its output to its inputs'.
type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Grad>>> + Send>;

/// A gradient on its way through the backward: a tensor, or an embedding's rows not yet
/// added into their table ([`Var::embedding`]). Rows meet a dense gradient of the same
/// table in one kernel ([`Tensor::index_add`]: a tied output projection's gradient plus the
/// lookup's rows, where adding a scattered table to it took a zeroed table, a scatter and
/// an add), and become a table of their own only when something needs it whole.
pub(crate) enum Grad {
    Dense(Tensor),
    /// `dy` `[ids.len(), ...]`: row i belongs to row `ids[i]` of a `[rows, ...]` table.
    Rows {
        dy: Tensor,
        ids: Arc<[u32]>,
        rows: usize,
    },
}

impl Grad {
    fn shape(&self) -> Vec<usize> {
        match self {
            Grad::Dense(t) => t.shape().to_vec(),
            Grad::Rows { dy, rows, .. } => std::iter::once(*rows).chain(dy.shape()[1..].iter().copied()).collect(),
        }
    }

    fn into_tensor(self) -> Result<Tensor> {
        match self {
            Grad::Dense(t) => Ok(t),
            Grad::Rows { dy, ids, rows } => Tensor::index_add_rows(&dy, &ids, rows),
        }
    }

    /// `self + other`, `self` the sum so far (its dtype wins, as in `Tensor::add`).
    fn add(self, other: Grad) -> Result<Grad> {
        let into = |base: Tensor, rows: Grad| -> Result<Tensor> {
            match rows {
                Grad::Rows { dy, ids, .. } if dy.dtype() == base.dtype() => base.index_add(&ids, &dy),
                rows => base.add(&rows.into_tensor()?),
            }
        };
        Ok(Grad::Dense(match (self, other) {
            (Grad::Dense(a), Grad::Dense(b)) => a.add(&b)?,
            (Grad::Dense(a), rows) => into(a, rows)?,
            (rows, Grad::Dense(b)) if matches!(&rows, Grad::Rows { dy, .. } if dy.dtype() == b.dtype()) => {
                into(b, rows)?
            }
            (first, second) => into(first.into_tensor()?, second)?,
        }))
    }
}

/// An op recorded on the graph. It refers to its inputs' places in the graph, not to their
/// values: an intermediate's value lives only as long as some var or some backward's saved
/// tensors hold it (PyTorch's rule), so a layer's outputs that no backward needs (a
/// projection's result, a view's source) are freed during the forward.
struct Node {
    op: &'static str,
    inputs: Vec<Arc<GraphSlot>>,
    /// Taken when the backward runs: its saved tensors are freed then.
    backward: Mutex<Option<BackwardFn>>,
}

/// A var's place in the graph: what backward needs to know of it without its value.
struct GraphSlot {
    requires_grad: bool,
    node: Option<Node>,
    /// `[dims]` and dtype of the value, which each gradient flowing here must match.
    shape: Vec<usize>,
    dtype: DType,
    /// The accumulated gradient of a leaf that requires grad.
    grad: Mutex<Option<Tensor>>,
}

impl GraphSlot {
    fn key(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }
}

/// A var's identity (see [`Var::id`]): equal for clones of one var, different for two
/// vars alive at the same time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VarId(usize);

/// A tensor in the autograd graph: its value, whether gradients flow to it, and (for an
/// op's result) the recorded op. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    slot: Arc<GraphSlot>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Var")
            .field("shape", &self.value.shape())
            .field("dtype", &self.value.dtype())
            .field("requires_grad", &self.slot.requires_grad)
            .field("op", &self.op())
            .finish()
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` without recording: every var made inside is a constant (PyTorch's
/// `torch.no_grad()`), e.g. for evaluation or generation. Restores the previous mode after,
/// also when `f` panics.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// let w = Tensor::randn(&gpu, &[4], DType::F32, 0)?.requires_grad();
/// let y = wgkernels::autograd::no_grad(|| w.exp())?;
/// assert!(!y.requires_grad());
/// # Ok(()) }
/// ```
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    with_mode(false, f)
}

/// Runs `f` with recording set to `enabled`, restoring the previous mode after (also when
/// `f` panics).
fn with_mode<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(enabled)));
    f()
}

/// Runs `f` with recording on (the backward of a checkpoint records its recomputation even
/// when called inside [`no_grad`]).
fn with_grad<T>(f: impl FnOnce() -> T) -> T {
    with_mode(true, f)
}

/// Activation checkpointing: `f(inputs)` computed without keeping anything its backward
/// would need; the backward computes `f` again from the saved inputs, with recording on,
/// and back-propagates through that recomputation. Memory: only the inputs and the output
/// stay alive between forward and backward (per transformer block: the block's input
/// instead of its ~10 activations), for one more forward in the backward pass.
///
/// `f` must compute the same values both times (a dropout inside takes its seed from the
/// closure, not from a counter). Parameters that `f` uses (captured vars) get their
/// gradients during the recomputation's backward, as if `f` had been recorded.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::autograd::checkpoint;
/// let w = Tensor::randn(&gpu, &[8, 8], DType::F32, 0)?.requires_grad();
/// let x = Tensor::randn(&gpu, &[4, 8], DType::F32, 1)?.requires_grad();
/// let w2 = w.clone();
/// let y = checkpoint(&[&x], move |v| v[0].matmul(&w2)?.gelu_tanh()?.matmul(&w2))?;
/// y.sum_all()?.backward()?;
/// assert!(w.grad().is_some() && x.grad().is_some());
/// # Ok(()) }
/// ```
pub fn checkpoint(inputs: &[&Var], f: impl Fn(&[Var]) -> Result<Var> + Send + 'static) -> Result<Var> {
    let constants: Vec<Var> = inputs.iter().map(|v| v.detach()).collect();
    let out = no_grad(|| f(&constants))?;
    let saved: Vec<(Tensor, bool)> = inputs.iter().map(|v| (v.tensor().clone(), v.requires_grad())).collect();
    let value = out.tensor().clone();
    Ok(Var::from_op(value, "checkpoint", inputs, move |g: &Tensor| {
        with_grad(|| {
            let fresh: Vec<Var> = saved.iter().map(|(t, needs)| Var::leaf(t.clone(), *needs)).collect();
            let y = f(&fresh)?;
            if y.requires_grad() {
                y.backward_with(g.clone())?;
            }
            Ok(fresh.iter().map(|v| v.grad()).collect())
        })
    }))
}

/// Whether ops on this thread record (false inside [`no_grad`]).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

impl Tensor {
    /// This tensor as a parameter: a leaf var whose gradient [`Var::backward`] fills.
    pub fn requires_grad(self) -> Var {
        Var::leaf(self, true)
    }

    /// This tensor as a constant of the graph (data, targets): no gradient flows to it.
    pub fn constant(self) -> Var {
        Var::leaf(self, false)
    }
}

impl Var {
    fn leaf(value: Tensor, requires_grad: bool) -> Self {
        Self::with_node(value, requires_grad, None)
    }

    fn with_node(value: Tensor, requires_grad: bool, node: Option<Node>) -> Self {
        let slot = GraphSlot {
            requires_grad,
            node,
            shape: value.shape().to_vec(),
            dtype: value.dtype(),
            grad: Mutex::new(None),
        };
        Var { value, slot: Arc::new(slot) }
    }

    /// A constant (no gradient flows to it).
    pub fn constant(value: Tensor) -> Self {
        Self::leaf(value, false)
    }

    /// A parameter: a leaf that requires grad.
    pub fn parameter(value: Tensor) -> Self {
        Self::leaf(value, true)
    }

    /// The result of op `op` on `inputs`: recorded with `backward` when recording is on and
    /// some input requires grad, else a constant (and `backward` is dropped unrun).
    pub(crate) fn from_op(
        value: Tensor,
        op: &'static str,
        inputs: &[&Var],
        backward: impl FnOnce(&Tensor) -> Grads + Send + 'static,
    ) -> Self {
        Self::from_op_grads(value, op, inputs, move |g: &Tensor| {
            Ok(backward(g)?.into_iter().map(|ig| ig.map(Grad::Dense)).collect())
        })
    }

    /// [`Var::from_op`] for a backward that may return [`Grad::Rows`].
    pub(crate) fn from_op_grads(
        value: Tensor,
        op: &'static str,
        inputs: &[&Var],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Grad>>> + Send + 'static,
    ) -> Self {
        if !is_grad_enabled() || !inputs.iter().any(|v| v.requires_grad()) {
            return Self::leaf(value, false);
        }
        let node = Node {
            op,
            inputs: inputs.iter().map(|v| v.slot.clone()).collect(),
            backward: Mutex::new(Some(Box::new(backward))),
        };
        Self::with_node(value, true, Some(node))
    }

    /// The value.
    pub fn tensor(&self) -> &Tensor {
        &self.value
    }

    /// The value as a constant: the same tensor, cut from the graph.
    pub fn detach(&self) -> Var {
        Self::leaf(self.value.clone(), false)
    }

    /// The value's shape.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// The value's dtype.
    pub fn dtype(&self) -> DType {
        self.value.dtype()
    }

    /// Whether gradients flow to this var (a parameter, or computed from one).
    pub fn requires_grad(&self) -> bool {
        self.slot.requires_grad
    }

    /// True for a var no op made (a parameter or a constant).
    pub fn is_leaf(&self) -> bool {
        self.slot.node.is_none()
    }

    /// The name of the op that made this var, if any.
    pub fn op(&self) -> Option<&'static str> {
        self.slot.node.as_ref().map(|n| n.op)
    }

    /// The gradient accumulated by [`Var::backward`] calls since the last
    /// [`Var::zero_grad`] (parameters only; `None` before any).
    pub fn grad(&self) -> Option<Tensor> {
        lock(&self.slot.grad).clone()
    }

    /// Replaces the accumulated gradient (data-parallel training writes the all-reduced
    /// mean here; the optimizer then reads it as [`Var::grad`]).
    ///
    /// Errors: `InvalidArgument` unless the var requires grad; `ShapeMismatch` or
    /// `DTypeMismatch` when `grad` does not match its value.
    pub fn set_grad(&self, grad: Tensor) -> Result<()> {
        if !self.requires_grad() {
            return Err(Error::InvalidArgument { op: "set_grad", msg: "the var requires no grad".into() });
        }
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "set_grad",
                lhs: self.shape().to_vec(),
                rhs: grad.shape().to_vec(),
            });
        }
        if grad.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch { op: "set_grad", lhs: self.dtype(), rhs: grad.dtype() });
        }
        *lock(&self.slot.grad) = Some(grad);
        Ok(())
    }

    /// Clears the accumulated gradient.
    pub fn zero_grad(&self) {
        *lock(&self.slot.grad) = None;
    }

    /// Whether `self` and `other` are the same var.
    pub fn same(&self, other: &Var) -> bool {
        Arc::ptr_eq(&self.slot, &other.slot)
    }

    /// This var's identity in the graph (what [`Var::backward_hooked`] reports).
    pub fn id(&self) -> VarId {
        VarId(self.slot.key())
    }

    /// Back-propagates from this scalar (one element, e.g. a mean loss) with gradient 1,
    /// adding into every parameter's [`Var::grad`] the gradient of this value with respect
    /// to it.
    ///
    /// Errors: `InvalidArgument` when the var has more than one element or requires no
    /// grad, or when part of its graph has run its backward already; any op's backward
    /// error, naming the op.
    pub fn backward(&self) -> Result<()> {
        self.check_scalar()?;
        let one = Tensor::full(self.tensor().gpu(), self.shape(), 1.0, self.dtype())?;
        self.backward_with(one)
    }

    fn check_scalar(&self) -> Result<()> {
        if self.tensor().numel() != 1 {
            return Err(Error::InvalidArgument {
                op: "backward",
                msg: format!(
                    "backward() starts from a scalar; this var has shape {:?} (use backward_with(grad))",
                    self.shape()
                ),
            });
        }
        Ok(())
    }

    /// Back-propagates `grad` (of this var's shape and dtype) through the graph.
    pub fn backward_with(&self, grad: Tensor) -> Result<()> {
        self.backward_inner(grad, None)
    }

    /// [`Var::backward`], calling `on_grad_ready` with a parameter's [`Var::id`] as soon as
    /// its gradient from this backward is complete (every op that read it has passed its
    /// gradient back, and [`Var::grad`] holds the sum): parameters near the loss come
    /// first. Data-parallel training starts reading a bucket of gradients back while the
    /// rest of the backward is recorded and runs. An error from the hook stops the
    /// backward and is returned.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::autograd::Var;
    /// let w1 = Var::parameter(Tensor::randn(&gpu, &[4, 4], DType::F32, 1)?);
    /// let w2 = Var::parameter(Tensor::randn(&gpu, &[4, 4], DType::F32, 2)?);
    /// let x = Var::constant(Tensor::randn(&gpu, &[2, 4], DType::F32, 3)?);
    /// let loss = x.matmul(&w1)?.tanh()?.matmul(&w2)?.mean_all()?;
    /// let mut ready = Vec::new();
    /// loss.backward_hooked(&mut |id| { ready.push(id); Ok(()) })?;
    /// assert_eq!(ready, [w2.id(), w1.id()]); // the one nearer the loss first
    /// # Ok(()) }
    /// ```
    pub fn backward_hooked(&self, on_grad_ready: &mut dyn FnMut(VarId) -> Result<()>) -> Result<()> {
        self.check_scalar()?;
        let one = Tensor::full(self.tensor().gpu(), self.shape(), 1.0, self.dtype())?;
        self.backward_inner(one, Some(on_grad_ready))
    }

    fn backward_inner(
        &self,
        grad: Tensor,
        mut on_grad_ready: Option<&mut dyn FnMut(VarId) -> Result<()>>,
    ) -> Result<()> {
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "backward",
                lhs: self.shape().to_vec(),
                rhs: grad.shape().to_vec(),
            });
        }
        if !self.requires_grad() {
            return Err(Error::InvalidArgument {
                op: "backward",
                msg: "this var requires no grad: no parameter took part in computing it".into(),
            });
        }
        let order = topological_order(&self.slot);
        // Ops still to pass a gradient to each slot: a leaf's gradient is complete, and is
        // accumulated (and reported to the hook), when its count reaches 0, not at its
        // place in the order, which may come much later (the order is one of many).
        let mut consumers: HashMap<usize, usize> = HashMap::new();
        for node in order.iter().filter_map(|slot| slot.node.as_ref()) {
            for input in node.inputs.iter().filter(|i| i.requires_grad) {
                *consumers.entry(input.key()).or_default() += 1;
            }
        }
        let mut grads: HashMap<usize, Grad> = HashMap::new();
        grads.insert(self.slot.key(), Grad::Dense(grad));
        let mut complete_leaf = |slot: &GraphSlot, key: usize, g: Grad| -> Result<()> {
            accumulate(slot, g)?;
            match on_grad_ready.as_mut() {
                Some(hook) => hook(VarId(key)),
                None => Ok(()),
            }
        };
        for slot in order.iter().rev() {
            let Some(g) = grads.remove(&slot.key()) else { continue };
            let Some(node) = &slot.node else {
                // The root itself is a leaf.
                complete_leaf(slot, slot.key(), g)?;
                continue;
            };
            let backward = lock(&node.backward).take().ok_or_else(|| Error::InvalidArgument {
                op: node.op,
                msg: "backward through this part of the graph ran already (its saved tensors are freed); \
                      build the graph again"
                    .into(),
            })?;
            let input_grads = backward(&g.into_tensor()?)?;
            for (input, ig) in node.inputs.iter().zip(input_grads) {
                if !input.requires_grad {
                    continue;
                }
                if let Some(ig) = ig {
                    if ig.shape() != input.shape {
                        return Err(Error::ShapeMismatch { op: node.op, lhs: input.shape.clone(), rhs: ig.shape() });
                    }
                    let sum = match grads.remove(&input.key()) {
                        Some(prev) => prev.add(ig)?,
                        None => ig,
                    };
                    grads.insert(input.key(), sum);
                }
                let left = consumers.get_mut(&input.key()).expect("counted above");
                *left -= 1;
                if *left == 0 && input.node.is_none() {
                    if let Some(g) = grads.remove(&input.key()) {
                        complete_leaf(input, input.key(), g)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Slots that require grad reachable from `root`, each after all of its inputs.
fn topological_order(root: &Arc<GraphSlot>) -> Vec<Arc<GraphSlot>> {
    let mut order = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // Iterative DFS (a deep graph must not overflow the stack): (slot, inputs pushed).
    let mut stack = vec![(root.clone(), false)];
    while let Some((slot, expanded)) = stack.pop() {
        if expanded {
            order.push(slot);
            continue;
        }
        if !seen.insert(slot.key()) {
            continue;
        }
        stack.push((slot.clone(), true));
        if let Some(node) = &slot.node {
            for input in &node.inputs {
                if input.requires_grad && !seen.contains(&input.key()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}

/// Adds `g` into a leaf's gradient: realised (a long accumulation is no chain), contiguous
/// and starting its own storage, as the parameter does (the optimizers pair them element by
/// element).
fn accumulate(leaf: &GraphSlot, g: Grad) -> Result<()> {
    if !leaf.requires_grad {
        return Ok(());
    }
    let mut slot = lock(&leaf.grad);
    let sum = match slot.take() {
        Some(prev) => Grad::Dense(prev).add(g)?.into_tensor()?,
        None => match g.into_tensor()? {
            g if g.dtype() != leaf.dtype => g.to_dtype(leaf.dtype)?,
            g => g,
        },
    };
    let sum = sum.contiguous()?;
    sum.realize()?;
    *slot = Some(sum);
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
