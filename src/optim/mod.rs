//! Fused optimizers: [`AdamW`] (Adam, AMSGrad) and [`Sgd`] (momentum, Nesterov), each step
//! one pass over every parameter, gradient and state element, for all tensors of a model in
//! a few dispatches (`shaders/optim.wgsl` explains the kernel).
//!
//! ```
//! use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
//! # fn demo(gpu: &wgkernels::Gpu, mut params: Vec<wgkernels::Tensor>, grads: Vec<wgkernels::Tensor>) -> wgkernels::Result<()> {
//! let mut opt = AdamW::new(gpu, AdamWConfig { lr: 3e-4, weight_decay: 0.1, ..Default::default() })?;
//! opt.step(&mut params, &grads)?;          // params updated in place
//! opt.config_mut().lr = 1e-4;              // lr, betas, ... may change between steps
//! # Ok(()) }
//! ```
//!
//! - Parameters are updated **in place** (their storage is written), so every view or clone
//!   of a parameter tensor sees the new values, as with PyTorch's `optimizer.step()`.
//! - F16 / BF16 parameters get f32 master weights in the optimizer state: the update runs
//!   on the master copy and the rounded value is written back to the parameter in the same
//!   pass. The master copy is the truth from the first step on; write to it, not to the
//!   parameter, if you must change weights between steps (not exposed yet).
//! - Mixed precision: [`AdamW::step_scaled`] divides the gradients by the loss scale inside
//!   the step and skips the whole step (no state changes, step count unchanged) when any
//!   gradient is non-finite, as PyTorch's `GradScaler` does; [`DynamicLossScale`] adjusts
//!   the scale. `max_grad_norm` clips by the global norm. Both decisions are made on the GPU
//!   (a norm reduction, then the step reading it): no host round trip per step.
//! - [`Optimizer::state_bytes`] is what the optimizer holds on the device, also counted in
//!   [`Gpu::memory`].

use crate::device::{Kernel, ShaderSource};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::{DType, Gpu};

/// Fused optimizer steps (AdamW, SGD), many tensors per dispatch.
pub const OPTIM: ShaderSource = ShaderSource { name: "optim", source: include_str!("optim.wgsl"), shared: "" };

const WORKGROUP_ELEMENTS: usize = 4096;
/// Tensors (segments) one dispatch binds at most (GPT-2 small's 148 tensors: one dispatch);
/// fewer where the device allows fewer storage buffers per stage or bindings per group
/// (Metal: 31 buffers, 12 slots). Every dispatch boundary costs the GPU a drain and a ramp:
/// on the H200 the 148 tensors in 5 dispatches of 32 ran at 3.79 TB/s against 4.01 for one
/// 64 M tensor.
const MAX_SLOTS: usize = 160;
/// The control buffer: an optimizer's state on the GPU besides its moments, mirrored field
/// for field by `struct OptimControl` in optim.wgsl (which says who writes each field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct OptimControl {
    steps: u32,
    skipped: u32,
    last_skipped: u32,
    clip: f32,
    grad_norm: f32,
    partials: u32,
    flags: u32,
    reserved7: u32,
    lr: f32,
    beta1_or_momentum: f32,
    beta2_or_dampening: f32,
    eps: f32,
    weight_decay: f32,
    inv_scale: f32,
    max_grad_norm: f32,
    reserved15: u32,
    bias1: f32,
    bias2: f32,
    reserved18: u32,
    reserved19: u32,
}

/// Words of the control buffer.
const CONTROL_WORDS: usize = std::mem::size_of::<OptimControl>() / 4;

/// The host writes the fields from `partials` to `max_grad_norm` before each step, as one
/// run of ten words; the others are the GPU's.
const HOST_CONTROL_WORDS: usize = 10;
const _: () = assert!(
    std::mem::offset_of!(OptimControl, max_grad_norm)
        == std::mem::offset_of!(OptimControl, partials) + 4 * (HOST_CONTROL_WORDS - 1)
);

/// The layouts of this module's params structs, for the test of their WGSL mirrors.
pub(crate) fn params_layouts() -> Vec<crate::device::ParamsLayout> {
    vec![crate::device::params_layout!(OptimControl {
        steps,
        skipped,
        last_skipped,
        clip,
        grad_norm,
        partials,
        flags,
        reserved7,
        lr,
        beta1_or_momentum,
        beta2_or_dampening,
        eps,
        weight_decay,
        inv_scale,
        max_grad_norm,
        reserved15,
        bias1,
        bias2,
        reserved18,
        reserved19,
    })]
}

/// Hyperparameters of [`AdamW`]; `Default` is PyTorch's `AdamW` default.
///
/// ```
/// use wgkernels::optim::AdamWConfig;
/// let c = AdamWConfig { lr: 6e-4, betas: (0.9, 0.95), weight_decay: 0.1, max_grad_norm: Some(1.0), ..Default::default() };
/// assert!(c.decoupled_weight_decay);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f32,
    /// Decay rates of the first and second moment estimates.
    pub betas: (f32, f32),
    /// Added to the denominator.
    pub eps: f32,
    /// Weight decay coefficient.
    pub weight_decay: f32,
    /// `true` (AdamW): `p ← p·(1 − lr·wd)` apart from the adaptive update. `false` (Adam):
    /// L2 decay, `wd·p` added to the gradient before the moments.
    pub decoupled_weight_decay: bool,
    /// Use the maximum of past second moments (one more state tensor).
    pub amsgrad: bool,
    /// Clip gradients to this global L2 norm (over all tensors of the step) first.
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            amsgrad: false,
            max_grad_norm: None,
        }
    }
}

/// Hyperparameters of [`Sgd`]; `Default` is PyTorch's `SGD` with lr 1e-2.
///
/// ```
/// use wgkernels::optim::SgdConfig;
/// let c = SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, ..Default::default() };
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor; 0 keeps no state at all (besides master weights).
    pub momentum: f32,
    /// Dampening of the gradient added to the momentum buffer.
    pub dampening: f32,
    /// L2 weight decay, added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum (needs momentum > 0 and dampening 0, as in PyTorch).
    pub nesterov: bool,
    /// Clip gradients to this global L2 norm first.
    pub max_grad_norm: Option<f32>,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { lr: 1e-2, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false, max_grad_norm: None }
    }
}

/// What the optimizers share: stepping, state, counters.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
/// let mut opts: Vec<Box<dyn Optimizer>> = vec![
///     Box::new(AdamW::new(&gpu, AdamWConfig::default())?),
///     Box::new(Sgd::new(&gpu, SgdConfig { momentum: 0.9, ..Default::default() })?),
/// ];
/// for opt in &mut opts {
///     let mut p = vec![Tensor::randn(&gpu, &[1000], DType::F32, 0)?];
///     opt.step(&mut p, &[Tensor::randn(&gpu, &[1000], DType::F32, 1)?])?;
///     println!("{} state bytes, {} steps", opt.state_bytes(), opt.step_count()?);
/// }
/// # Ok(()) }
/// ```
pub trait Optimizer {
    /// One step: updates `params` in place from `grads` (same shapes and dtypes, in the same
    /// order on every step).
    fn step(&mut self, params: &mut [Tensor], grads: &[Tensor]) -> Result<()>;
    /// One step with gradients scaled by `loss_scale`: they are divided by it inside the
    /// step, and the step is skipped if any is non-finite (see [`last_step_skipped`]).
    ///
    /// [`last_step_skipped`]: Optimizer::last_step_skipped
    fn step_scaled(&mut self, params: &mut [Tensor], grads: &[Tensor], loss_scale: f32) -> Result<()>;
    /// Bytes of optimizer state on the device (moments, master weights, bookkeeping).
    fn state_bytes(&self) -> u64;
    /// Steps taken (skipped ones not counted). Reads the device counter: waits for the GPU.
    fn step_count(&self) -> Result<u64>;
    /// Steps skipped for non-finite gradients. Waits for the GPU.
    fn skipped_steps(&self) -> Result<u64>;
    /// Whether the last call skipped its step. Waits for the GPU.
    fn last_step_skipped(&self) -> Result<bool>;
    /// The global gradient norm (unscaled, before clipping) of the last step, when it was
    /// computed (clipping or a loss scale on). Waits for the GPU.
    fn last_grad_norm(&self) -> Result<Option<f32>>;

    /// One step over autograd parameters: each var's value is updated in place from the
    /// gradient [`Var::backward`](crate::autograd::Var::backward) accumulated into it
    /// (PyTorch's `optimizer.step()`; clear the gradients with `zero_grad` after).
    ///
    /// Errors: `InvalidArgument` naming the first parameter without a gradient (a step
    /// must see the same parameters in the same order every time).
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
    /// let w = Tensor::randn(&gpu, &[8, 4], DType::F32, 0)?.requires_grad();
    /// let x = Tensor::randn(&gpu, &[16, 8], DType::F32, 1)?.constant();
    /// let mut opt = AdamW::new(&gpu, AdamWConfig { lr: 1e-2, ..Default::default() })?;
    /// for _ in 0..3 {
    ///     let loss = x.matmul(&w)?.square()?.mean_all()?;
    ///     loss.backward()?;
    ///     opt.step_params(&[w.clone()])?;
    ///     w.zero_grad();
    /// }
    /// # Ok(()) }
    /// ```
    fn step_params(&mut self, params: &[crate::autograd::Var]) -> Result<()> {
        let (mut values, grads) = params_and_grads(params)?;
        self.step(&mut values, &grads)
    }

    /// [`Optimizer::step_params`] for gradients of a loss multiplied by `loss_scale`
    /// (mixed precision: [`Optimizer::step_scaled`]): they are divided by it inside the
    /// step, and the step is skipped when any is non-finite; feed
    /// [`Optimizer::last_step_skipped`] to a [`DynamicLossScale`].
    fn step_params_scaled(&mut self, params: &[crate::autograd::Var], loss_scale: f32) -> Result<()> {
        let (mut values, grads) = params_and_grads(params)?;
        self.step_scaled(&mut values, &grads, loss_scale)
    }
}

/// Each parameter's value and accumulated gradient; an `Err` names the first without one.
fn params_and_grads(params: &[crate::autograd::Var]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let mut values = Vec::with_capacity(params.len());
    let mut grads = Vec::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        let g = p.grad().ok_or_else(|| Error::InvalidArgument {
            op: "optimizer step",
            msg: format!("parameter {i} (shape {:?}) has no gradient: run backward() first", p.shape()),
        })?;
        values.push(p.tensor().clone());
        grads.push(g);
    }
    Ok((values, grads))
}

/// AdamW (and Adam, AMSGrad) in one fused pass per step. See the [module docs](self).
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
/// let mut params = vec![Tensor::randn(&gpu, &[512, 512], DType::F32, 0)?];
/// let mut opt = AdamW::new(&gpu, AdamWConfig::default())?;
/// for step in 0..3 {
///     let grads = vec![Tensor::randn(&gpu, &[512, 512], DType::F32, 10 + step)?];
///     opt.step(&mut params, &grads)?;
/// }
/// assert_eq!(opt.step_count()?, 3);
/// # Ok(()) }
/// ```
pub struct AdamW {
    config: AdamWConfig,
    engine: Engine,
}

impl AdamW {
    /// An optimizer with no state yet: the state is allocated at the first step, for the
    /// tensors given then.
    ///
    /// Errors: `InvalidArgument` for hyperparameters outside their ranges.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// // Two tensors of a model, bf16 weights: f32 masters and moments live in the optimizer.
    /// let mut params = vec![Tensor::randn(&gpu, &[768, 3072], DType::BF16, 0)?, Tensor::zeros(&gpu, &[3072], DType::BF16)?];
    /// let grads = vec![Tensor::randn(&gpu, &[768, 3072], DType::BF16, 1)?, Tensor::randn(&gpu, &[3072], DType::BF16, 2)?];
    /// let mut opt = AdamW::new(&gpu, AdamWConfig { max_grad_norm: Some(1.0), ..Default::default() })?;
    /// opt.step(&mut params, &grads)?;          // one dispatch for both tensors (+ norm, finalize)
    /// println!("grad norm {:?}, {} state bytes", opt.last_grad_norm()?, opt.state_bytes());
    /// # Ok(()) }
    /// ```
    pub fn new(gpu: &Gpu, config: AdamWConfig) -> Result<Self> {
        check_config_adam(&config)?;
        Ok(Self { engine: Engine::new(gpu, Algo::Adam { amsgrad: config.amsgrad })?, config })
    }

    /// The hyperparameters, to change between steps (lr schedules): no recompilation.
    /// `amsgrad` is fixed at creation.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::optim::{AdamW, AdamWConfig};
    /// let mut opt = AdamW::new(&gpu, AdamWConfig::default())?;
    /// opt.config_mut().lr *= 0.5; // a schedule: nothing recompiles
    /// # Ok(()) }
    /// ```
    pub fn config_mut(&mut self) -> &mut AdamWConfig {
        &mut self.config
    }

    /// The hyperparameters.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::optim::{AdamW, AdamWConfig};
    /// let opt = AdamW::new(&gpu, AdamWConfig::default())?;
    /// assert_eq!(opt.config().betas, (0.9, 0.999));
    /// # Ok(()) }
    /// ```
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Test hook: at most `max_segment` elements per segment (rounded down to a multiple of
    /// 4) and `max_slots` segments per dispatch, to exercise tensor splitting and grouping at
    /// small sizes. Call before the first step.
    #[doc(hidden)]
    pub fn set_split_limits(&mut self, max_segment: usize, max_slots: usize) {
        self.engine.set_split_limits(max_segment, max_slots);
    }

    /// Dispatches per step: one per group of segments (+ the norm reduction and the
    /// finalize dispatch). Known after the first step.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::optim::{AdamW, AdamWConfig, Optimizer};
    /// let mut opt = AdamW::new(&gpu, AdamWConfig::default())?;
    /// let mut p: Vec<Tensor> = (0..40).map(|k| Tensor::randn(&gpu, &[100], DType::F32, k)).collect::<wgkernels::Result<_>>()?;
    /// let g: Vec<Tensor> = (0..40).map(|k| Tensor::randn(&gpu, &[100], DType::F32, 100 + k)).collect::<wgkernels::Result<_>>()?;
    /// opt.step(&mut p, &g)?;
    /// println!("{:?} dispatches for 40 tensors", opt.dispatches_per_step());
    /// # Ok(()) }
    /// ```
    pub fn dispatches_per_step(&self) -> Option<usize> {
        self.engine.layout.as_ref().map(|l| l.groups.len())
    }

    fn run(&mut self, params: &mut [Tensor], grads: &[Tensor], loss_scale: Option<f32>) -> Result<()> {
        check_config_adam(&self.config)?;
        if self.config.amsgrad != self.engine.amsgrad() {
            return Err(invalid("adamw", "amsgrad cannot change after creation".into()));
        }
        let c = &self.config;
        let hyper = Hyper {
            lr: c.lr,
            a: c.betas.0,
            b: c.betas.1,
            eps: c.eps,
            weight_decay: c.weight_decay,
            decoupled: c.decoupled_weight_decay,
            nesterov: false,
            max_grad_norm: c.max_grad_norm,
        };
        self.engine.step("adamw", params, grads, &hyper, loss_scale)
    }
}

/// The trait for an optimizer type whose fields are `config` and `engine` and whose
/// `run(params, grads, loss_scale)` does the step: the rest only reads the engine.
macro_rules! impl_optimizer {
    ($t:ty) => {
        impl Optimizer for $t {
            fn step(&mut self, params: &mut [Tensor], grads: &[Tensor]) -> Result<()> {
                self.run(params, grads, None)
            }
            fn step_scaled(&mut self, params: &mut [Tensor], grads: &[Tensor], loss_scale: f32) -> Result<()> {
                self.run(params, grads, Some(loss_scale))
            }
            fn state_bytes(&self) -> u64 {
                self.engine.state_bytes()
            }
            fn step_count(&self) -> Result<u64> {
                Ok(self.engine.read_control()?.steps as u64)
            }
            fn skipped_steps(&self) -> Result<u64> {
                Ok(self.engine.read_control()?.skipped as u64)
            }
            fn last_step_skipped(&self) -> Result<bool> {
                Ok(self.engine.read_control()?.last_skipped != 0)
            }
            fn last_grad_norm(&self) -> Result<Option<f32>> {
                self.engine.last_grad_norm()
            }
        }
    };
}

impl_optimizer!(AdamW);

/// SGD with momentum, dampening, Nesterov and L2 weight decay, fused like [`AdamW`]: one
/// state tensor (the momentum buffer) instead of two.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::optim::{Optimizer, Sgd, SgdConfig};
/// let mut params = vec![Tensor::randn(&gpu, &[512], DType::BF16, 0)?]; // f32 master kept inside
/// let mut opt = Sgd::new(&gpu, SgdConfig { momentum: 0.9, ..Default::default() })?;
/// opt.step(&mut params, &[Tensor::randn(&gpu, &[512], DType::BF16, 1)?])?;
/// # Ok(()) }
/// ```
pub struct Sgd {
    config: SgdConfig,
    engine: Engine,
}

impl Sgd {
    /// An optimizer with no state yet.
    ///
    /// Errors: `InvalidArgument` for hyperparameters outside their ranges.
    ///
    /// ```
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// use wgkernels::optim::{Optimizer, Sgd, SgdConfig};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// let mut params = vec![Tensor::randn(&gpu, &[256, 256], DType::F32, 0)?];
    /// let mut opt = Sgd::new(&gpu, SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, ..Default::default() })?;
    /// opt.step(&mut params, &[Tensor::randn(&gpu, &[256, 256], DType::F32, 1)?])?;
    /// println!("{} bytes of momentum", opt.state_bytes());
    /// # Ok(()) }
    /// ```
    pub fn new(gpu: &Gpu, config: SgdConfig) -> Result<Self> {
        check_config_sgd(&config)?;
        let momentum = config.momentum != 0.0;
        Ok(Self { engine: Engine::new(gpu, Algo::Sgd { momentum })?, config })
    }

    /// The hyperparameters, to change between steps. Momentum cannot change between zero
    /// and non-zero after creation (the state exists or not).
    pub fn config_mut(&mut self) -> &mut SgdConfig {
        &mut self.config
    }

    /// Test hook, as [`AdamW::set_split_limits`].
    #[doc(hidden)]
    pub fn set_split_limits(&mut self, max_segment: usize, max_slots: usize) {
        self.engine.set_split_limits(max_segment, max_slots);
    }

    fn run(&mut self, params: &mut [Tensor], grads: &[Tensor], loss_scale: Option<f32>) -> Result<()> {
        check_config_sgd(&self.config)?;
        let c = &self.config;
        if (c.momentum != 0.0) != matches!(self.engine.algo, Algo::Sgd { momentum: true }) {
            return Err(invalid("sgd", "momentum cannot switch between zero and non-zero after creation".into()));
        }
        let hyper = Hyper {
            lr: c.lr,
            a: c.momentum,
            b: c.dampening,
            eps: 0.0,
            weight_decay: c.weight_decay,
            decoupled: false,
            nesterov: c.nesterov,
            max_grad_norm: c.max_grad_norm,
        };
        self.engine.step("sgd", params, grads, &hyper, loss_scale)
    }
}

impl_optimizer!(Sgd);

/// Dynamic loss scaling as PyTorch's `GradScaler`: multiply the loss by [`scale`], step with
/// [`Optimizer::step_scaled`], then [`update`] with whether the step was skipped.
///
/// [`scale`]: DynamicLossScale::scale
/// [`update`]: DynamicLossScale::update
///
/// ```
/// use wgkernels::optim::DynamicLossScale;
/// let mut s = DynamicLossScale::new(1024.0);
/// assert_eq!(s.update(true), 512.0); // overflow: back off
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicLossScale {
    /// The current scale.
    pub scale: f32,
    /// Multiplies the scale after `growth_interval` steps without overflow.
    pub growth_factor: f32,
    /// Multiplies the scale after an overflow.
    pub backoff_factor: f32,
    /// Clean steps before growing.
    pub growth_interval: u32,
    clean_steps: u32,
}

impl Default for DynamicLossScale {
    fn default() -> Self {
        Self { scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000, clean_steps: 0 }
    }
}

impl DynamicLossScale {
    /// Starts at `scale`, with PyTorch's defaults otherwise (×2 every 2000 clean steps, ×0.5
    /// on overflow).
    ///
    /// ```
    /// use wgkernels::optim::DynamicLossScale;
    /// let s = DynamicLossScale::new(2048.0);
    /// assert_eq!((s.scale, s.growth_interval), (2048.0, 2000));
    /// ```
    pub fn new(scale: f32) -> Self {
        Self { scale, ..Self::default() }
    }

    /// The scale after a step that was (`skipped = true`) or was not skipped.
    ///
    /// ```no_run
    /// # use wgkernels::{DType, Gpu, Tensor};
    /// # fn main() -> wgkernels::Result<()> {
    /// # let gpu = Gpu::new()?;
    /// use wgkernels::optim::{AdamW, AdamWConfig, DynamicLossScale, Optimizer};
    /// let mut params = vec![Tensor::randn(&gpu, &[1024], DType::F16, 0)?];
    /// let mut opt = AdamW::new(&gpu, AdamWConfig::default())?; // f32 masters for the f16 weights
    /// let mut scaler = DynamicLossScale::default();
    /// // loss·scale → backward → gradients scaled by `scaler.scale`:
    /// let grads = vec![Tensor::randn(&gpu, &[1024], DType::F16, 1)?];
    /// opt.step_scaled(&mut params, &grads, scaler.scale)?;
    /// scaler.update(opt.last_step_skipped()?);
    /// # Ok(()) }
    /// ```
    pub fn update(&mut self, skipped: bool) -> f32 {
        if skipped {
            self.scale *= self.backoff_factor;
            self.clean_steps = 0;
        } else {
            self.clean_steps += 1;
            if self.clean_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.clean_steps = 0;
            }
        }
        self.scale
    }
}

fn invalid(op: &'static str, msg: String) -> Error {
    Error::InvalidArgument { op, msg }
}

/// Two parameters over the same elements would be updated by two invocations at once (a
/// race: on lavapipe 0–96 of 1M elements got one update instead of two), so a step refuses
/// them, naming both. Parameters are contiguous here: each covers `offset..offset + numel`
/// of its storage.
fn check_no_aliased_params(op: &'static str, params: &[Tensor]) -> Result<()> {
    let mut spans: Vec<(usize, usize, usize, usize)> =
        params.iter().enumerate().map(|(i, p)| (p.storage_id(), p.offset(), p.offset() + p.numel(), i)).collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((sa, _, end_a, i), (sb, start_b, _, j)) = (pair[0], pair[1]);
        if sa == sb && start_b < end_a {
            let (i, j) = (i.min(j), i.max(j));
            return Err(invalid(
                op,
                format!(
                    "parameters {i} and {j} (shapes {:?} and {:?}) share elements of one storage: each would be updated twice at once",
                    params[i].shape(),
                    params[j].shape()
                ),
            ));
        }
    }
    Ok(())
}

fn check_finite_nonneg(op: &'static str, name: &str, x: f32) -> Result<()> {
    if !(x.is_finite() && x >= 0.0) {
        return Err(invalid(op, format!("{name} must be finite and >= 0, got {x}")));
    }
    Ok(())
}

fn check_clip(op: &'static str, max_grad_norm: Option<f32>) -> Result<()> {
    match max_grad_norm {
        Some(n) if !(n.is_finite() && n > 0.0) => {
            Err(invalid(op, format!("max_grad_norm must be finite and > 0, got {n}")))
        }
        _ => Ok(()),
    }
}

fn check_config_adam(c: &AdamWConfig) -> Result<()> {
    let op = "adamw";
    check_finite_nonneg(op, "lr", c.lr)?;
    check_finite_nonneg(op, "weight_decay", c.weight_decay)?;
    for (name, b) in [("betas.0", c.betas.0), ("betas.1", c.betas.1)] {
        if !(0.0..1.0).contains(&b) {
            return Err(invalid(op, format!("{name} must be in [0, 1), got {b}")));
        }
    }
    if !(c.eps.is_finite() && c.eps > 0.0) {
        return Err(invalid(op, format!("eps must be finite and > 0, got {}", c.eps)));
    }
    check_clip(op, c.max_grad_norm)
}

fn check_config_sgd(c: &SgdConfig) -> Result<()> {
    let op = "sgd";
    check_finite_nonneg(op, "lr", c.lr)?;
    check_finite_nonneg(op, "weight_decay", c.weight_decay)?;
    check_finite_nonneg(op, "momentum", c.momentum)?;
    check_finite_nonneg(op, "dampening", c.dampening)?;
    if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
        return Err(invalid(op, "nesterov needs momentum > 0 and dampening = 0".into()));
    }
    check_clip(op, c.max_grad_norm)
}

// ---- the engine shared by both optimizers -------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Algo {
    Adam { amsgrad: bool },
    Sgd { momentum: bool },
}

/// One step's hyperparameters, as the control buffer carries them.
struct Hyper {
    lr: f32,
    /// beta1 (Adam) or momentum (SGD).
    a: f32,
    /// beta2 (Adam) or dampening (SGD).
    b: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: bool,
    nesterov: bool,
    max_grad_norm: Option<f32>,
}

/// A contiguous piece of one parameter tensor, stepped by one slot of one dispatch.
#[derive(Clone, Debug)]
struct Segment {
    tensor: usize,
    /// First element, within the tensor (a multiple of 4).
    start: usize,
    len: usize,
    /// First unit (4 elements) of its state in the group's flat state arrays.
    state_unit: usize,
    first_workgroup: usize,
}

/// Segments stepped by one dispatch, with their flat f32 state.
#[derive(Default)]
struct Group {
    segments: Vec<Segment>,
    /// Units (4 elements) of each state array.
    state_units: usize,
    workgroups: usize,
    /// Where this group's partial sums start in the shared partials array.
    partial_base: usize,
    /// [m (or the momentum buffer), v, master, vmax]: each `state_units·4` f32, or absent.
    state: [Option<Tensor>; 4],
}

struct Layout {
    /// Shapes and dtypes of the parameters the state was built for.
    signature: Vec<(Vec<usize>, DType)>,
    groups: Vec<Group>,
    partials: Tensor,
}

struct Engine {
    gpu: Gpu,
    algo: Algo,
    layout: Option<Layout>,
    /// `CONTROL_WORDS` words, see shaders/optim.wgsl.
    control: Tensor,
    /// Elements per segment at most (a multiple of 4).
    max_segment: usize,
    /// Segments per dispatch at most.
    max_slots: usize,
    /// Bytes of one state array of one group at most (one storage binding).
    max_state_bytes: usize,
    /// Whether the last step computed the gradient norm.
    norm_computed: bool,
}

impl Engine {
    fn new(gpu: &Gpu, algo: Algo) -> Result<Self> {
        let limits = &gpu.info().limits;
        if limits.max_storage_buffers_per_shader_stage < 8 {
            return Err(invalid(
                "optimizer",
                format!(
                    "the device binds {} storage buffers per shader stage; the fused optimizer needs 8",
                    limits.max_storage_buffers_per_shader_stage
                ),
            ));
        }
        // The f32 state of a segment (and the parameter it updates) must fit one binding.
        let max_bytes = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let max_state_bytes = usize::try_from((max_bytes / 16 * 16).min(1 << 32)).unwrap_or(usize::MAX);
        let max_segment = max_state_bytes / 4;
        let control = Tensor::zeros(gpu, &[CONTROL_WORDS], DType::F32)?;
        Ok(Self {
            gpu: gpu.clone(),
            algo,
            layout: None,
            control,
            max_segment,
            max_slots: MAX_SLOTS,
            max_state_bytes,
            norm_computed: false,
        })
    }

    fn set_split_limits(&mut self, max_segment: usize, max_slots: usize) {
        self.max_segment = (max_segment / 4 * 4).clamp(4, self.max_segment);
        self.max_slots = max_slots.clamp(1, MAX_SLOTS);
    }

    fn amsgrad(&self) -> bool {
        matches!(self.algo, Algo::Adam { amsgrad: true })
    }

    fn slots_per_dispatch(&self) -> usize {
        // Step: 2 per slot + table, control, m, v, master, vmax.
        let limits = &self.gpu.info().limits;
        let limit =
            (limits.max_storage_buffers_per_shader_stage as usize).min(limits.max_bindings_per_bind_group as usize);
        ((limit - 6) / 2).clamp(1, self.max_slots)
    }

    fn state_bytes(&self) -> u64 {
        let mut bytes = tensor_bytes(&self.control);
        if let Some(layout) = &self.layout {
            bytes += tensor_bytes(&layout.partials);
            for g in &layout.groups {
                bytes += g.state.iter().flatten().map(tensor_bytes).sum::<u64>();
            }
        }
        bytes
    }

    /// The control buffer (see optim.wgsl). Waits for the GPU.
    fn read_control(&self) -> Result<OptimControl> {
        let words: Vec<f32> = self.control.to_vec()?;
        Ok(bytemuck::pod_read_unaligned(bytemuck::cast_slice(&words)))
    }

    fn last_grad_norm(&self) -> Result<Option<f32>> {
        if !self.norm_computed {
            return Ok(None);
        }
        Ok(Some(self.read_control()?.grad_norm))
    }

    /// Checks the step's tensors; returns the params' dtype.
    fn validate(&self, op: &'static str, params: &[Tensor], grads: &[Tensor]) -> Result<DType> {
        if params.is_empty() {
            return Err(invalid(op, "no parameters given".into()));
        }
        if params.len() != grads.len() {
            return Err(invalid(op, format!("{} parameters but {} gradients", params.len(), grads.len())));
        }
        let dtype = params[0].dtype();
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            if !std::ptr::eq(p.gpu().inner.as_ref(), self.gpu.inner.as_ref())
                || !std::ptr::eq(g.gpu().inner.as_ref(), self.gpu.inner.as_ref())
            {
                return Err(invalid(op, format!("tensor {i} lives on another Gpu than the optimizer")));
            }
            if p.shape() != g.shape() {
                return Err(Error::ShapeMismatch { op, lhs: p.shape().to_vec(), rhs: g.shape().to_vec() });
            }
            if p.dtype() != g.dtype() {
                return Err(Error::DTypeMismatch { op, lhs: p.dtype(), rhs: g.dtype() });
            }
            if p.dtype() != dtype {
                return Err(invalid(
                    op,
                    format!("parameter {i} is {:?} but parameter 0 is {dtype:?}: one dtype per optimizer", p.dtype()),
                ));
            }
            if p.numel() == 0 {
                return Err(Error::Empty { op, shape: p.shape().to_vec() });
            }
            for (what, t) in [("parameter", p), ("gradient", g)] {
                if !t.is_contiguous() || t.offset() % 4 != 0 {
                    return Err(invalid(
                        op,
                        format!(
                            "{what} {i} (shape {:?}) must be contiguous and start at a multiple of 4 elements (offset {}); call contiguous() first",
                            t.shape(),
                            t.offset()
                        ),
                    ));
                }
            }
        }
        check_no_aliased_params(op, params)?;
        if let Some(layout) = &self.layout {
            let sig: Vec<(Vec<usize>, DType)> = params.iter().map(|p| (p.shape().to_vec(), p.dtype())).collect();
            if sig != layout.signature {
                return Err(invalid(
                    op,
                    format!(
                        "the optimizer state was built for {} tensors {:?}; this step has {} tensors {:?}",
                        layout.signature.len(),
                        shapes_of(&layout.signature),
                        sig.len(),
                        shapes_of(&sig)
                    ),
                ));
            }
        }
        Ok(dtype)
    }

    /// Cuts the parameters into segments and groups, allocates zeroed state and copies the
    /// master weights.
    fn build_layout(&self, params: &[Tensor]) -> Result<Layout> {
        let slots = self.slots_per_dispatch();
        let dtype = params[0].dtype();
        let mut groups: Vec<Group> = Vec::new();
        let mut group = Group::default();
        let max_state_units = self.max_state_bytes / 16;
        for (i, p) in params.iter().enumerate() {
            let n = p.numel();
            let mut start = 0;
            while start < n {
                let len = (n - start).min(self.max_segment);
                let units = len.div_ceil(4);
                let full = group.segments.len() == slots || group.state_units + units > max_state_units;
                if full && !group.segments.is_empty() {
                    let partial_base = group.partial_base + group.workgroups;
                    groups.push(std::mem::replace(&mut group, Group { partial_base, ..Group::default() }));
                }
                group.segments.push(Segment {
                    tensor: i,
                    start,
                    len,
                    state_unit: group.state_units,
                    first_workgroup: group.workgroups,
                });
                group.state_units += units;
                group.workgroups += len.div_ceil(WORKGROUP_ELEMENTS);
                start += len;
            }
        }
        let total_partials = group.partial_base + group.workgroups;
        groups.push(group);

        let master = dtype != DType::F32;
        let (has_v, has_m, has_vmax) = match self.algo {
            Algo::Adam { amsgrad } => (true, true, amsgrad),
            Algo::Sgd { momentum } => (false, momentum, false),
        };
        for g in groups.iter_mut() {
            let units = g.state_units;
            let zeros = |on: bool| -> Result<Option<Tensor>> {
                on.then(|| Tensor::zeros(&self.gpu, &[units * 4], DType::F32)).transpose()
            };
            g.state = [zeros(has_m)?, zeros(has_v)?, zeros(master)?, zeros(has_vmax)?];
            if let Some(master) = &g.state[2] {
                // The master weights start as the parameters, widened.
                let dst = master.storage()?.buffer().clone();
                for s in &g.segments {
                    let wide = params[s.tensor].to_dtype(DType::F32)?;
                    wide.realize()?;
                    let src = wide.storage()?.buffer().clone();
                    let (from, to, bytes) = ((s.start * 4) as u64, (s.state_unit * 16) as u64, (s.len * 4) as u64);
                    self.gpu.record(|enc| enc.copy_buffer_to_buffer(&src, from, &dst, to, bytes))?;
                }
            }
        }
        let partials = Tensor::zeros(&self.gpu, &[total_partials.max(1)], DType::F32)?;
        let signature = params.iter().map(|p| (p.shape().to_vec(), p.dtype())).collect();
        Ok(Layout { signature, groups, partials })
    }

    fn step(
        &mut self,
        op: &'static str,
        params: &mut [Tensor],
        grads: &[Tensor],
        hyper: &Hyper,
        loss_scale: Option<f32>,
    ) -> Result<()> {
        let dtype = self.validate(op, params, grads)?;
        if let Some(s) = loss_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(invalid(op, format!("loss scale must be finite and > 0, got {s}")));
            }
        }
        Self::check_buffers(op, params, grads, dtype)?;
        if self.layout.is_none() {
            self.layout = Some(self.build_layout(params)?);
        }
        let layout = self.layout.as_ref().expect("built above");

        let need_norm = self.write_control(hyper, loss_scale, layout)?;
        let control = self.control.storage()?.buffer();
        let partials = layout.partials.storage()?.buffer();

        // Why these kernels may run unchecked: `table` has 4 + 4·(slots + 1) words, read at
        // indices below that; a workgroup ≥ the group's count returns before any other
        // access; slot k's units p_unit + local with local·4 < len end at most at
        // ceil((offset + numel) / 4), checked above against each buffer's size; state units
        // stay below state_unit + ceil(len / 4) ≤ the group's state length; partial indices
        // are partial_base + group < total_partials = the partials' length; control has
        // CONTROL_WORDS words; store_word writes lanes c < 4 (f32) or < 2 (16-bit).
        let mut tables = Vec::with_capacity(layout.groups.len());
        for g in &layout.groups {
            let mut table = vec![0u32; 4 + 4 * (g.segments.len() + 1)];
            table[0] = g.segments.len() as u32;
            table[1] = g.partial_base as u32;
            for (k, s) in g.segments.iter().enumerate() {
                let p = &params[s.tensor];
                table[4 + 4 * k] = ((p.offset() + s.start) / 4) as u32;
                table[4 + 4 * k + 1] = s.len as u32;
                table[4 + 4 * k + 2] = s.state_unit as u32;
                table[4 + 4 * k + 3] = s.first_workgroup as u32;
            }
            table[4 + 4 * g.segments.len() + 3] = g.workgroups as u32;
            tables.push(self.gpu.meta_buffer(&table));
        }
        // Every slot binds the whole buffer; the table's unit offsets include the view's
        // offset, which must then be the same for the gradient: check it.
        for g in &layout.groups {
            for s in &g.segments {
                if params[s.tensor].offset() != grads[s.tensor].offset() {
                    return Err(invalid(
                        op,
                        format!(
                            "parameter {} starts at element {} of its buffer but its gradient at {}: views must line up",
                            s.tensor,
                            params[s.tensor].offset(),
                            grads[s.tensor].offset()
                        ),
                    ));
                }
            }
        }

        if need_norm {
            for (g, table) in layout.groups.iter().zip(&tables) {
                let k = kernel(self.algo, "grad_sumsq", g.segments.len(), dtype);
                let mut bind: Vec<(u32, &wgpu::Buffer)> = vec![(0, table), (1, control), (6, partials)];
                for (slot, s) in g.segments.iter().enumerate() {
                    bind.push((9 + 2 * slot as u32, grads[s.tensor].storage()?.buffer()));
                }
                self.gpu.dispatch(&k, &bind, g.workgroups as u32)?;
            }
        }
        let fin = kernel(self.algo, "finalize", 1, dtype);
        self.gpu.dispatch(&fin, &[(1, control), (6, partials)], 1)?;
        let entry = match self.algo {
            Algo::Adam { .. } => "adam_step",
            Algo::Sgd { .. } => "sgd_step",
        };
        for (g, table) in layout.groups.iter().zip(&tables) {
            let k = kernel(self.algo, entry, g.segments.len(), dtype);
            let mut bind: Vec<(u32, &wgpu::Buffer)> = vec![(0, table), (1, control)];
            for (j, state) in g.state.iter().enumerate() {
                if let Some(t) = state {
                    bind.push((2 + j as u32, t.storage()?.buffer()));
                }
            }
            for (slot, s) in g.segments.iter().enumerate() {
                bind.push((8 + 2 * slot as u32, params[s.tensor].storage()?.buffer()));
                bind.push((9 + 2 * slot as u32, grads[s.tensor].storage()?.buffer()));
            }
            self.gpu.dispatch(&k, &bind, g.workgroups as u32)?;
        }
        self.norm_computed = need_norm;
        Ok(())
    }

    /// Realises every tensor (pending gradients run their kernels now) and checks that each
    /// dispatch's bindings are legal and every index the shader forms is in range.
    fn check_buffers(op: &'static str, params: &[Tensor], grads: &[Tensor], dtype: DType) -> Result<()> {
        let word_bytes = if dtype == DType::F32 { 16 } else { 8 };
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let (ps, gs) = (p.storage()?, g.storage()?);
            for (what, t, s) in [("parameter", p, ps), ("gradient", g, gs)] {
                // The shader reads whole units: the last one must lie inside the buffer.
                let end_units = (t.offset() + t.numel()).div_ceil(4) as u64;
                if end_units * word_bytes > s.buffer().size() {
                    return Err(invalid(
                        op,
                        format!("{what} {i}: its last 4-element unit passes the end of its buffer"),
                    ));
                }
            }
            if params.iter().any(|q| q.shares_storage(g)) {
                return Err(invalid(op, format!("gradient {i} shares storage with a parameter")));
            }
        }
        Ok(())
    }

    /// Writes the host's part of the control buffer for this step (partials to reduce, flags,
    /// hyperparameters, 1 / loss scale, max grad norm); returns whether the step computes the
    /// gradient norm (to check finiteness or to clip).
    fn write_control(&self, hyper: &Hyper, loss_scale: Option<f32>, layout: &Layout) -> Result<bool> {
        let check_finite = loss_scale.is_some();
        let clip = hyper.max_grad_norm.is_some();
        let need_norm = check_finite || clip;
        let mut flags = 0u32;
        flags |= if hyper.decoupled { 1 } else { 0 };
        flags |= if check_finite { 2 } else { 0 };
        flags |= if hyper.nesterov { 4 } else { 0 };
        flags |= if clip { 8 } else { 0 };
        let total_partials = layout.groups.iter().map(|g| g.workgroups).sum::<usize>();
        // partials, flags, reserved7, lr .. max_grad_norm (see HOST_CONTROL_WORDS).
        let host_words: [u32; HOST_CONTROL_WORDS] = [
            if need_norm { total_partials as u32 } else { 0 },
            flags,
            0,
            hyper.lr.to_bits(),
            hyper.a.to_bits(),
            hyper.b.to_bits(),
            hyper.eps.to_bits(),
            hyper.weight_decay.to_bits(),
            (1.0 / loss_scale.unwrap_or(1.0)).to_bits(),
            hyper.max_grad_norm.unwrap_or(0.0).to_bits(),
        ];
        let at = std::mem::offset_of!(OptimControl, partials) as u64;
        self.gpu.write(self.control.storage()?.buffer(), at, bytemuck::cast_slice(&host_words))?;
        Ok(need_norm)
    }
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.dtype().size_in_bytes()) as u64
}

fn shapes_of(sig: &[(Vec<usize>, DType)]) -> Vec<String> {
    let mut out: Vec<String> = sig.iter().take(4).map(|(s, d)| format!("{s:?} {}", d.name())).collect();
    if sig.len() > 4 {
        out.push("...".into());
    }
    out
}

/// The kernel for `entry` with `slots` tensors per dispatch and parameters of `dtype`.
fn kernel(algo: Algo, entry: &'static str, slots: usize, dtype: DType) -> Kernel {
    let pword = if dtype == DType::F32 { "vec4<u32>" } else { "vec2<u32>" };
    let mut bindings = String::new();
    let (mut load_p, mut load_g, mut store_p, mut store_word) =
        (String::new(), String::new(), String::new(), String::new());
    for k in 0..slots {
        bindings += &format!(
            "@group(0) @binding({}) var<storage, read_write> p{k}: array<{pword}>;\n\
             @group(0) @binding({}) var<storage, read> g{k}: array<{pword}>;\n",
            8 + 2 * k,
            9 + 2 * k
        );
        // Slot 0 is also the default: WGSL wants one, and the host never passes another.
        let case = if k == 0 { "case 0u, default".to_string() } else { format!("case {k}u") };
        load_p += &format!("        {case}: {{ return p{k}[u]; }}\n");
        load_g += &format!("        {case}: {{ return g{k}[u]; }}\n");
        store_p += &format!("        {case}: {{ p{k}[u] = w; }}\n");
        store_word += &format!("        {case}: {{ p{k}[u][c] = x; }}\n");
    }
    let access = format!(
        "fn load_p(slot: u32, u: u32) -> {pword} {{\n    switch slot {{\n{load_p}    }}\n}}\n\n\
         fn load_g(slot: u32, u: u32) -> {pword} {{\n    switch slot {{\n{load_g}    }}\n}}\n\n\
         fn store_p(slot: u32, u: u32, w: {pword}) {{\n    switch slot {{\n{store_p}    }}\n}}\n\n\
         fn store_word(slot: u32, u: u32, c: u32, x: u32) {{\n    switch slot {{\n{store_word}    }}\n}}\n"
    );
    let (decode, encode) = match dtype {
        DType::F32 => ("return bitcast<vec4<f32>>(w);", "return bitcast<vec4<u32>>(x);"),
        DType::F16 => (
            "return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));",
            "return vec2<u32>(pack_f16x2(x.xy), pack_f16x2(x.zw));",
        ),
        DType::BF16 => (
            "return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u));",
            "return vec2<u32>(f32_to_bf16_bits(x.x) | (f32_to_bf16_bits(x.y) << 16u), \
             f32_to_bf16_bits(x.z) | (f32_to_bf16_bits(x.w) << 16u));",
        ),
    };
    let mut k = Kernel::new(&OPTIM, entry)
        .sub("SLOT_BINDINGS", bindings)
        .sub("SLOT_ACCESS", access)
        .sub("PWORD", pword)
        .sub("DECODE", decode)
        .sub("ENCODE", encode)
        .trusted();
    if dtype != DType::F32 {
        k = k.flag("MASTER");
    }
    match algo {
        Algo::Adam { amsgrad: true } => k = k.flag("AMSGRAD"),
        Algo::Sgd { momentum: true } => k = k.flag("MOMENTUM"),
        _ => {}
    }
    k
}

/// Every specialisation the optimizers can launch, at a few slot counts (the generated
/// part only repeats per slot), for the portability test.
pub fn all_kernels() -> Vec<Kernel> {
    let algos = [
        Algo::Adam { amsgrad: false },
        Algo::Adam { amsgrad: true },
        Algo::Sgd { momentum: false },
        Algo::Sgd { momentum: true },
    ];
    let mut all = Vec::new();
    for algo in algos {
        for dtype in DType::ALL {
            for slots in [1, 3] {
                let step = if matches!(algo, Algo::Adam { .. }) { "adam_step" } else { "sgd_step" };
                for entry in [step, "grad_sumsq", "finalize"] {
                    all.push(kernel(algo, entry, slots, dtype));
                }
            }
        }
    }
    // The widest dispatch (GPU adapters with many storage bindings per stage).
    all.push(kernel(Algo::Adam { amsgrad: false }, "adam_step", MAX_SLOTS, DType::F32));
    all
}

/// The AdamW update composed from element-wise tensor ops (the unfused baseline, for tests
/// and benchmarks): returns the new (param, m, v) after step number `step` (1-based).
/// With fusion on (the default) the fusion JIT compiles these ops into one kernel; turn it
/// off ([`Gpu::set_fusion`]) to run them one kernel each, as an eager framework would.
///
/// ```
/// # use wgkernels::{DType, Gpu, Tensor};
/// # fn main() -> wgkernels::Result<()> {
/// # let gpu = Gpu::new()?;
/// use wgkernels::optim::{adamw_unfused, AdamWConfig};
/// let p = Tensor::randn(&gpu, &[256], DType::F32, 0)?;
/// let g = Tensor::randn(&gpu, &[256], DType::F32, 1)?;
/// let (m, v) = (Tensor::zeros(&gpu, &[256], DType::F32)?, Tensor::zeros(&gpu, &[256], DType::F32)?);
/// let (p1, m1, v1) = adamw_unfused(&p, &g, &m, &v, 1, &AdamWConfig::default())?;
/// # Ok(()) }
/// ```
pub fn adamw_unfused(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    step: u64,
    config: &AdamWConfig,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_config_adam(config)?;
    if step == 0 {
        return Err(invalid("adamw_unfused", "step counts from 1".into()));
    }
    let gpu = param.gpu();
    let scalar = |x: f64| Tensor::full(gpu, &[1], x as f32, param.dtype());
    let (b1, b2) = (config.betas.0 as f64, config.betas.1 as f64);
    let lr = config.lr as f64;
    let wd = config.weight_decay as f64;
    let (mut p, mut g) = (param.clone(), grad.clone());
    if config.decoupled_weight_decay {
        p = p.mul(&scalar(1.0 - lr * wd)?)?;
    } else {
        g = g.add(&param.mul(&scalar(wd)?)?)?;
    }
    let m1 = m.mul(&scalar(b1)?)?.add(&g.mul(&scalar(1.0 - b1)?)?)?;
    let v1 = v.mul(&scalar(b2)?)?.add(&g.square()?.mul(&scalar(1.0 - b2)?)?)?;
    let bias1 = 1.0 - b1.powi(step as i32);
    let bias2 = 1.0 - b2.powi(step as i32);
    let denom = v1.sqrt()?.mul(&scalar(1.0 / bias2.sqrt())?)?.add(&scalar(config.eps as f64)?)?;
    let update = m1.div(&denom)?.mul(&scalar(lr / bias1)?)?;
    let p1 = p.sub(&update)?;
    Ok((p1, m1, v1))
}
