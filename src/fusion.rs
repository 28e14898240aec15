//! The element-wise fusion JIT. With fusion on (the default; `WGK_FUSION=0` or
//! [`Gpu::set_fusion`] turns it off), element-wise ops do not dispatch: they return a
//! pending tensor holding an expression node. When something needs the values — `to_vec`,
//! any non-element-wise kernel, a view, or [`Tensor::realize`] — the graph of pending nodes
//! behind it is compiled into one WGSL kernel (`shaders/fused.wgsl`): every input read
//! once, intermediates in registers, one store. Shared subexpressions are computed once;
//! nodes not reachable from the realised tensor are not computed.
//!
//! Kernels are cached by their generated text, which depends on the ops, the dtypes and the
//! layout class of each input (contiguous, one row repeated, or strided) but not on sizes, strides or values
//! (those are runtime parameters), so a training loop compiles each chain once
//! (`gpu.stats()` counts compilations and cache hits).
//!
//! Scope: chains of same-shape tensors (an input of another shape is a realised tensor
//! broadcast through strides; a pending tensor that needs broadcasting or a view is
//! realised first); the result plus up to three held intermediates stored by one kernel;
//! scalar constants and `where` as runtime-param / select nodes;
//! inverted dropout with a counter-based mask (runtime seed, never stored); **norm
//! prologues**: a pending chain read by `layer_norm` / `rms_norm` (the residual add before
//! a norm, or the copy of a strided input) is evaluated by the norm kernel's loader
//! ([`FusedPrologue`]) and its value stored once by the same kernel, so the residual stream
//! costs no kernel of its own; **matmul epilogues** (opt-in, `WGK_FUSE_MATMUL=1` or
//! [`Gpu::set_matmul_epilogue_fusion`]: on the H200 never faster than two kernels, see
//! BENCHMARKS.md): an f32 `matmul` result waits as a pending node, and the element-wise
//! chain that consumes it (bias, activation, residual, dropout, ...) is generated into that
//! matmul's epilogue, one kernel for both — unless the matmul's own value is held
//! elsewhere, the chain has other outputs or a 16-bit result, in which case the matmul runs
//! alone first. Not yet: chains feeding a matmul's operands, and softmax prologues.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::lock;
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::ops::wgsl_load;
use crate::shaders::{Kernel, Shader};
use crate::tensor::{contiguous_strides, Storage, Tensor};
use crate::{DType, Gpu};

const MAX_DIMS: usize = 6;
const WORKGROUP: usize = 256;

/// A pending element-wise computation; its operands are tensors of the node's shape
/// (pending or realised) or realised tensors broadcast to it.
#[derive(Clone)]
pub(crate) enum Expr {
    Map(UnaryOp, Tensor),
    Zip(BinaryOp, Tensor, Tensor),
    /// Rounds to the node's dtype (a cast inside a chain keeps its rounding).
    Cast(Tensor),
    /// Inverted dropout: x / (1 − p) where the counter-based hash of (seed, linear index)
    /// keeps the element, 0 elsewhere. The mask is a function of (seed, index) only: never
    /// stored, and the backward is the same op on the gradient.
    Dropout {
        x: Tensor,
        p: f32,
        seed: u64,
    },
    /// `op(x, value)` (or `op(value, x)`) with a constant carried as a runtime param.
    Scalar {
        op: BinaryOp,
        x: Tensor,
        value: f32,
        scalar_first: bool,
    },
    /// `cond != 0 ? a : b`, the three of the node's shape.
    Where(Tensor, Tensor, Tensor),
    /// A matmul waiting for its consumer: realised alone, or with the element-wise chain
    /// that consumes it fused into its epilogue. Not an element-wise operand itself.
    Matmul(Arc<crate::ops::matmul::MatmulNode>),
}

impl Expr {
    fn operands(&self) -> Vec<&Tensor> {
        match self {
            Expr::Map(_, a) | Expr::Cast(a) | Expr::Dropout { x: a, .. } | Expr::Scalar { x: a, .. } => vec![a],
            Expr::Where(c, a, b) => vec![c, a, b],
            Expr::Zip(_, a, b) => vec![a, b],
            Expr::Matmul(_) => vec![],
        }
    }
}

/// The most intermediates one fused kernel stores besides its result.
const MAX_EXTRA_OUTPUTS: usize = 3;

/// The most inputs one fused kernel binds (room is kept for the outputs and the params); a
/// larger graph is split by realising subgraphs.
fn max_leaves(gpu: &Gpu) -> usize {
    (gpu.info().limits.max_storage_buffers_per_shader_stage as usize).saturating_sub(2 + MAX_EXTRA_OUTPUTS).clamp(1, 8)
}

struct Builder {
    /// The pending matmul whose epilogue runs this graph (its value is `mm`), if any, with
    /// its node key.
    matmul: Option<(Arc<crate::ops::matmul::MatmulNode>, usize)>,
    /// The most leaves the kernel can bind.
    leaf_cap: usize,
    /// Runtime values of the graph after the leaves' words in `ew_params` (dropout seeds
    /// and thresholds, scalar constants), in the order the body reads them at EXTRA_BASE + k.
    extra: Vec<u32>,
    leaves: Vec<Tensor>,
    leaf_ids: HashMap<(usize, usize, Vec<usize>, DType), usize>,
    /// Leaves whose load the body already has.
    loaded: std::collections::HashSet<usize>,
    node_ids: HashMap<usize, String>,
    body: String,
    ops: Vec<OpFn>,
    next: usize,
}

/// Too many leaves for one kernel.
struct Overflow;

impl Builder {
    /// An empty graph of at most `leaf_cap` inputs, run in `matmul`'s epilogue if given.
    fn new(matmul: Option<(Arc<crate::ops::matmul::MatmulNode>, usize)>, leaf_cap: usize) -> Self {
        Self {
            matmul,
            leaf_cap,
            extra: vec![],
            leaves: vec![],
            leaf_ids: HashMap::new(),
            loaded: std::collections::HashSet::new(),
            node_ids: HashMap::new(),
            body: String::new(),
            ops: vec![],
            next: 0,
        }
    }

    /// The WGSL name of `t`'s value at output index `i`, emitting what computes it.
    fn visit(&mut self, t: &Tensor) -> std::result::Result<String, Overflow> {
        let key = Arc::as_ptr(t.data()) as usize;
        if let Some(name) = self.node_ids.get(&key) {
            return Ok(name.clone());
        }
        let expr = if t.data().is_realized() {
            None
        } else {
            t.data().pending.lock().unwrap_or_else(|e| e.into_inner()).clone()
        };
        if let Some(Expr::Matmul(node)) = &expr {
            // Only the matmul chosen by `epilogue_source` reaches here pending; its value
            // is the accumulator the epilogue starts from.
            let _ = node;
            if self.matmul.as_ref().is_some_and(|(_, k)| *k == key) {
                return Ok("mm".into());
            }
            // Any other pending matmul was realised before the visit; should one appear
            // anyway, the retry path realises the root's operands first.
            return Err(Overflow);
        }
        let Some(expr) = expr else {
            // A realised input: deduplicated by (data, offset, strides, dtype).
            let id = (key, t.offset(), t.strides().to_vec(), t.dtype());
            let k = match self.leaf_ids.get(&id) {
                Some(&k) => k,
                None => {
                    if self.leaves.len() == self.leaf_cap {
                        return Err(Overflow);
                    }
                    self.leaves.push(t.clone());
                    self.leaf_ids.insert(id, self.leaves.len() - 1);
                    self.leaves.len() - 1
                }
            };
            let name = format!("l{k}");
            if self.loaded.insert(k) {
                self.body.push_str(&format!("let {name} = load_{k}(index_{k}(i));\n    "));
            }
            return Ok(name);
        };
        let args: Vec<String> =
            expr.operands().into_iter().map(|o| self.visit(o)).collect::<std::result::Result<_, _>>()?;
        let call = match &expr {
            // Handled above; never an element-wise operand.
            Expr::Matmul(_) => return Err(Overflow),
            Expr::Map(op, _) => {
                self.op_fn(OpFn { name: op.name(), wgsl: op.wgsl(), binary: false });
                format!("op_{}({})", op.name(), args[0])
            }
            Expr::Zip(op, _, _) => {
                self.op_fn(OpFn { name: op.name(), wgsl: op.wgsl(), binary: true });
                format!("op_{}({}, {})", op.name(), args[0], args[1])
            }
            Expr::Cast(_) => match t.dtype() {
                DType::F32 => args[0].clone(),
                DType::F16 => format!("round_f16({})", args[0]),
                DType::BF16 => format!("round_bf16({})", args[0]),
            },
            Expr::Dropout { p, seed, .. } => {
                // Its seed and threshold are runtime params (4 words each, after the leaves'),
                // so a new seed every step reuses the compiled kernel.
                let at = self.extra.len();
                self.extra.extend(dropout_words(*p, *seed));
                format!("op_dropout({}, linear_index(i), EXTRA_BASE + {at}u)", args[0])
            }
            Expr::Scalar { op, value, scalar_first, .. } => {
                // The constant is a runtime param: another value compiles nothing.
                let at = self.extra.len();
                self.extra.push(value.to_bits());
                self.op_fn(OpFn { name: op.name(), wgsl: op.wgsl(), binary: true });
                let c = format!("bitcast<f32>(ew_params[EXTRA_BASE + {at}u])");
                if *scalar_first {
                    format!("op_{}({c}, {})", op.name(), args[0])
                } else {
                    format!("op_{}({}, {c})", op.name(), args[0])
                }
            }
            Expr::Where(..) => format!("select({}, {}, {} != 0.0)", args[2], args[1], args[0]),
        };
        let name = format!("n{}", self.next);
        self.next += 1;
        self.body.push_str(&format!("let {name} = {call};\n    "));
        self.node_ids.insert(key, name.clone());
        Ok(name)
    }

    /// Adds the function `op_{name}` unless the body has it already.
    fn op_fn(&mut self, f: OpFn) {
        if !self.ops.iter().any(|o| o.name == f.name) {
            self.ops.push(f);
        }
    }

    /// The WGSL of the op functions the body calls.
    fn ops_wgsl(&self) -> String {
        self.ops.iter().map(|o| o.wgsl()).collect()
    }
}

/// An op function the body calls, formatted only when a kernel is generated (a cache hit
/// builds the body and nothing more).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct OpFn {
    name: &'static str,
    wgsl: &'static str,
    binary: bool,
}

impl OpFn {
    fn wgsl(self) -> String {
        let params = if self.binary { "x: f32, y: f32" } else { "x: f32" };
        format!("fn op_{}({params}) -> f32 {{\n    return {};\n}}\n", self.name, self.wgsl)
    }
}

/// Pending nodes below `root` referenced from outside its graph, deepest first: a node's
/// `Arc` count above the number of operand slots in the graph that point to it means a
/// tensor handle elsewhere holds it.
fn held_intermediates(root: &Tensor) -> Vec<Tensor> {
    fn count(
        t: &Tensor,
        refs: &mut HashMap<usize, usize>,
        order: &mut Vec<Tensor>,
        seen: &mut std::collections::HashSet<usize>,
    ) {
        let key = Arc::as_ptr(t.data()) as usize;
        if !seen.insert(key) {
            return;
        }
        let guard = t.data().pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(expr) = guard.as_ref() {
            for o in expr.operands() {
                if !o.data().is_realized() {
                    *refs.entry(Arc::as_ptr(o.data()) as usize).or_insert(0) += 1;
                    count(o, refs, order, seen);
                }
            }
        }
        drop(guard);
        order.push(t.clone());
    }
    let mut refs = HashMap::new();
    let mut order = Vec::new();
    count(root, &mut refs, &mut order, &mut std::collections::HashSet::new());
    let root_key = Arc::as_ptr(root.data()) as usize;
    order
        .into_iter()
        .filter(|t| {
            let key = Arc::as_ptr(t.data()) as usize;
            // `order` itself holds one handle per node.
            key != root_key && Arc::strong_count(t.data()) > refs.get(&key).copied().unwrap_or(0) + 1
        })
        .collect()
}

/// Computes the pending expression of `root` in one generated kernel into new storage.
pub(crate) fn realize(root: &Tensor) -> Result<Arc<Storage>> {
    let root_node = match root.data().pending.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(Expr::Matmul(node)) => Some(node.clone()),
        _ => None,
    };
    if let Some(node) = root_node {
        // A matmul realised for itself: the plain kernel.
        return Ok(node.run(None)?.storage()?.clone());
    }
    // Pending intermediates that a tensor handle still holds are stored by this kernel too:
    // computed again later otherwise (and an optimizer's `m = β·m + g`, held across steps,
    // would grow one ever longer chain that every step recomputes). Beyond MAX_EXTRA_OUTPUTS
    // the deepest are realised first by kernels of their own.
    let mut held = held_intermediates(root);
    while held.len() > MAX_EXTRA_OUTPUTS {
        held.remove(0).realize()?;
        held.retain(|t| !t.data().is_realized());
    }
    let gpu = root.gpu();
    let limit = gpu.info().limits.max_storage_buffers_per_shader_stage as usize;
    // a, b, c, params, bias and ew_params plus at least one leaf must fit the stage's bindings.
    // Pending matmuls exist only while epilogue fusion is on (one made before it was turned
    // off is realised on its own by the retry below).
    let matmul =
        if limit >= 7 && gpu.matmul_epilogue_fusion() { epilogue_source(root, held.is_empty())? } else { None };
    let leaf_cap = match &matmul {
        // a, b, c, params, bias and ew_params are bound besides the leaves.
        Some(_) => max_leaves(gpu).min(limit.saturating_sub(6)).max(1),
        None => max_leaves(gpu),
    };
    let mut b = Builder::new(matmul, leaf_cap);
    let result = match b.visit(root) {
        Ok(r) => r,
        Err(Overflow) => {
            // Realise the root's pending operands first (each a smaller graph), then retry.
            let expr = root.data().pending.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(expr) = expr {
                for o in expr.operands() {
                    o.realize()?;
                }
            }
            return realize(root);
        }
    };
    let shape = root.shape().to_vec();
    let n: usize = shape.iter().product();
    if n == 0 {
        return Ok(Tensor::empty(gpu, "fused", &shape, root.dtype())?.storage()?.clone());
    }
    let (mut params, layout) = leaf_layout(&b, &shape)?;
    let extra_params = b.extra.clone();
    let nl = b.leaves.len();
    params.extend(extra_params);
    if let Some((node, _)) = &b.matmul {
        // The chain runs in the matmul's epilogue: one kernel, the matmul's store.
        let ep = crate::ops::matmul::FusedEpilogue {
            decls: format!(
                "{}\n@group(0) @binding(5) var<storage, read> ew_params: array<u32>;\n{}\n{}",
                include_str!("../shaders/ew_common.wgsl"),
                leaf_decls(&layout, 6),
                b.ops_wgsl()
            ),
            body: b.body.clone(),
            result: result.clone(),
            ew_params: params,
            leaves: b.leaves.clone(),
        };
        let out = node.run(Some(&ep))?;
        gpu.inner.fused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ok(out.storage()?.clone());
    }
    let out = Tensor::empty(gpu, "fused", &shape, root.dtype())?;
    let storage = out.storage()?.clone();
    // The held intermediates that this graph computes (all of them, unless a concurrent
    // realisation got there first), with storage of their own.
    let mut extra: Vec<(Tensor, String, Arc<Storage>)> = Vec::new();
    for t in held {
        if let Some(name) = b.node_ids.get(&(Arc::as_ptr(t.data()) as usize)).cloned() {
            let s = Tensor::empty(gpu, "fused", &shape, t.dtype())?.storage()?.clone();
            extra.push((t, name, s));
        }
    }
    let mut outputs = vec![(result, root.dtype())];
    outputs.extend(extra.iter().map(|(t, name, _)| (name.clone(), t.dtype())));
    // params[7]: the merged shape's last dim (front-padded to MAX_DIMS).
    let offsets: Vec<usize> = b.leaves.iter().map(|t| t.offset()).collect();
    let dtypes: Vec<DType> = outputs.iter().map(|o| o.1).collect();
    let wide = wide_elements(&layout, &offsets, &dtypes, n, params[7] as usize);
    let per = wide.unwrap_or_else(|| units_per_invocation(&outputs));
    // UNROLL units per invocation, WORKGROUP invocations per workgroup (GpuOptions::
    // fused_unroll, fused_workgroup, resolved per path): the grid shrinks with both, and
    // fused_groups caps it.
    let (unroll, workgroup) = if wide.is_some() { gpu.inner.fused_wide } else { gpu.inner.fused_element };
    let (unroll, workgroup) = (unroll as usize, workgroup as usize);
    // The generated kernel, from the per-device cache of structures when this one was
    // realised before (formatting the WGSL was most of a cache hit's host time).
    let key = FusedKey {
        layout: layout.clone(),
        ops: b.ops.clone(),
        body: b.body.clone(),
        outputs: outputs.clone(),
        wide: wide.map(|elements| Wide { elements, units: unroll }),
    };
    let cached = lock(&gpu.inner.fused_kernels).get(&key).cloned();
    let entry = match cached {
        Some(entry) => entry,
        None => {
            let kernel = fused_kernel(&key.layout, &b.ops_wgsl(), &key.body, &key.outputs, key.wide)
                .constant("UNROLL", unroll as f64)
                .constant("WORKGROUP", workgroup as f64);
            let entry = Arc::new(FusedEntry { kernel, pipeline: std::sync::OnceLock::new() });
            let mut cache = lock(&gpu.inner.fused_kernels);
            if cache.len() >= FUSED_KERNEL_CACHE {
                cache.clear();
            }
            cache.insert(key, entry.clone());
            entry
        }
    };
    let full = &entry.kernel;
    let params_buf = gpu.meta_buffer(&params);
    let leaf_storages: Vec<&Arc<Storage>> = b.leaves.iter().map(|t| t.storage()).collect::<Result<_>>()?;
    let mut bind: Vec<(u32, &wgpu::Buffer)> =
        leaf_storages.iter().enumerate().map(|(k, s)| (k as u32, s.buffer())).collect();
    bind.push((nl as u32, storage.buffer()));
    for (k, (_, _, s)) in extra.iter().enumerate() {
        bind.push(((nl + 1 + k) as u32, s.buffer()));
    }
    bind.push(((nl + outputs.len()) as u32, &params_buf));
    // Tiered JIT: while the full kernel compiles in the background, a structure not seen
    // before runs the one-element-per-invocation kernel, the chain inlined once (the full
    // kernel inlines it once per element of its UNROLL units, and the driver's compile time
    // grows with that).
    let tiered = (wide.is_some() || unroll > 1) && gpu.inner.tiered_jit;
    let mut groups = n.div_ceil(per).div_ceil(workgroup * unroll) as u32;
    if gpu.inner.fused_groups > 0 {
        groups = groups.min(gpu.inner.fused_groups);
    }
    // The full kernel's pipeline: kept in the cache entry once known (a hit then looks
    // nothing else up); else compiled, or (tiered) not ready yet.
    let pipeline = match entry.pipeline.get() {
        Some(p) => {
            gpu.inner.cache_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(p.clone())
        }
        None if tiered => gpu.compiled(full),
        None => Some(gpu.pipeline(full)?),
    };
    match pipeline {
        Some(pipeline) => {
            let _ = entry.pipeline.set(pipeline.clone());
            gpu.dispatch_compiled(&pipeline, full, &bind, groups)?
        }
        None if gpu.compile_in_background(full) => {
            let kernel = fused_kernel(&layout, &b.ops_wgsl(), &b.body, &outputs, None).constant("UNROLL", 1.0);
            let groups = n.div_ceil(units_per_invocation(&outputs)).div_ceil(WORKGROUP) as u32;
            gpu.dispatch(&kernel, &bind, groups)?;
        }
        None => gpu.dispatch(full, &bind, groups)?,
    }
    gpu.inner.fused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for (t, _, s) in extra {
        t.set_realized(s);
    }
    Ok(storage)
}

/// How a leaf's element for output index i is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Access {
    /// offset + i: the leaf has the output's shape, contiguous.
    Contiguous,
    /// offset + i mod N: one row of the output's last dim N repeated over every leading dim
    /// (a bias broadcast over rows): one remainder instead of a division per dim.
    Rows,
    /// Any other view: offset + Σ coordinate·stride (a division and a remainder per dim).
    Strided,
}

/// A leaf's storage dtype and access pattern over the output's index space.
pub(crate) type LeafLayout = (DType, Access);

/// `ew_params` of a built graph over an output of `shape` (its extra runtime words not yet
/// appended) and each leaf's (dtype, contiguous) layout: n, rank and the merged shape, then
/// per leaf its offset and strides over that shape.
fn leaf_layout(b: &Builder, shape: &[usize]) -> Result<(Vec<u32>, Vec<LeafLayout>)> {
    let mut strides: Vec<Vec<usize>> = b.leaves.iter().map(|t| t.strides().to_vec()).collect();
    let (cshape, cstrides) = crate::ops::elementwise::collapse(shape, &mut strides);
    if cshape.len() > MAX_DIMS {
        return Err(Error::InvalidArgument {
            op: "fused",
            msg: format!(
                "inputs of shape {shape:?} need more than {MAX_DIMS} dims after merging; make them contiguous first"
            ),
        });
    }
    let pad = MAX_DIMS - cshape.len();
    let mut params = vec![0u32; 8 + 7 * b.leaves.len()];
    params[0] = shape.iter().product::<usize>() as u32;
    params[1] = cshape.len() as u32;
    for d in 0..MAX_DIMS {
        params[2 + d] = if d < pad { 1 } else { cshape[d - pad] as u32 };
    }
    let mut layout = Vec::new();
    for (k, leaf) in b.leaves.iter().enumerate() {
        let base = 8 + 7 * k;
        params[base] = leaf.offset() as u32;
        for d in pad..MAX_DIMS {
            params[base + 1 + d] = cstrides[k][d - pad] as u32;
        }
        let rank = cshape.len();
        let access = if cstrides[k] == contiguous_strides(&cshape) {
            Access::Contiguous
        } else if rank >= 2 && cstrides[k][rank - 1] == 1 && cstrides[k][..rank - 1].iter().all(|&s| s == 0) {
            Access::Rows
        } else {
            Access::Strided
        };
        layout.push((leaf.dtype(), access));
    }
    Ok((params, layout))
}

/// An element-wise chain run in the prologue of a row-wise kernel (LayerNorm, RMSNorm): the
/// kernel's loader of x evaluates the chain at the element's index instead of reading x,
/// and the first read of each element also stores it into `held`, which becomes x's
/// storage. The residual stream (`h = x + attn`, normalised, then added to again) is
/// written once by the norm kernel, not written by one kernel and read back by the next.
pub(crate) struct FusedPrologue {
    /// WGSL: `held` at binding `first_binding`, `ew_params` at the next, the leaves after
    /// it, their loaders, the op functions, shaders/ew_common.wgsl, and
    /// `fn chain_value(i: u32) -> f32` (rounded to x's dtype).
    pub decls: String,
    pub ew_params: Vec<u32>,
    pub leaves: Vec<Tensor>,
    /// x's storage once the kernel has run (see [`FusedPrologue::finish`]); `None` when the
    /// kernel does not store x (see [`prologue`]).
    pub held: Option<Arc<Storage>>,
}

impl FusedPrologue {
    /// Marks x realised with the values the kernel stored.
    pub(crate) fn finish(self, x: &Tensor) {
        if let Some(held) = self.held {
            x.set_realized(held);
        }
        x.gpu().inner.fused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The prologue for a row-wise kernel reading `x`, when `x` is a pending element-wise chain
/// (fusion on) of at most `leaf_cap` inputs; `None` otherwise (the caller realises x as
/// usual). Held intermediates of the chain and pending matmuls inside it are realised first.
///
/// `keep`: store x's value (x is a tensor of the caller's, which may be used again); false
/// when x is the kernel's own temporary (a copy of a strided input), whose value no one
/// reads again (`held` is then `None`).
pub(crate) fn prologue(x: &Tensor, first_binding: usize, leaf_cap: usize, keep: bool) -> Result<Option<FusedPrologue>> {
    let gpu = x.gpu();
    if !gpu.fusion() || x.data().is_realized() || leaf_cap == 0 || x.numel() == 0 {
        return Ok(None);
    }
    if matches!(x.data().pending.lock().unwrap_or_else(|e| e.into_inner()).as_ref(), None | Some(Expr::Matmul(_))) {
        return Ok(None);
    }
    for t in held_intermediates(x) {
        t.realize()?;
    }
    let mut b = Builder::new(None, leaf_cap.min(max_leaves(gpu)));
    // Too many inputs, or a pending matmul inside: no prologue.
    let Ok(result) = b.visit(x) else { return Ok(None) };
    let (mut params, layout) = leaf_layout(&b, x.shape())?;
    params.extend(&b.extra);
    let rounded = match x.dtype() {
        DType::F32 => result,
        DType::F16 => format!("round_f16({result})"),
        DType::BF16 => format!("round_bf16({result})"),
    };
    let decls = prologue_decls(first_binding, &layout, &b.ops_wgsl(), &b.body, &rounded);
    let held = if keep { Some(Tensor::empty(gpu, "fused", x.shape(), x.dtype())?.storage()?.clone()) } else { None };
    Ok(Some(FusedPrologue { decls, ew_params: params, leaves: b.leaves, held }))
}

/// The WGSL of a [`FusedPrologue`]: bindings from `first_binding` (held, ew_params, leaves),
/// the shared element-wise helpers, the ops, and `chain_value(i)` returning `result`.
pub(crate) fn prologue_decls(
    first_binding: usize,
    leaves: &[LeafLayout],
    ops: &str,
    body: &str,
    result: &str,
) -> String {
    format!(
        "@group(0) @binding({first_binding}) var<storage, read_write> held: array<u32>;\n\
         @group(0) @binding({}) var<storage, read> ew_params: array<u32>;\n{}\n{}\n{ops}\n\
         fn chain_value(i: u32) -> f32 {{\n    {body}return {result};\n}}\n",
        first_binding + 1,
        include_str!("../shaders/ew_common.wgsl"),
        leaf_decls(leaves, first_binding + 2),
    )
}

/// A prologue's WGSL for the portability test: a residual add of a contiguous f32 leaf and
/// a strided leaf of `dtype`, with dropout, rounded to `dtype`.
pub(crate) fn sample_prologue_decls(first_binding: usize, dtype: DType) -> String {
    let ops = format!("fn op_add(x: f32, y: f32) -> f32 {{\n    return {};\n}}\n", BinaryOp::Add.wgsl());
    let body = "let l0 = load_0(index_0(i));\n    let l1 = load_1(index_1(i));\n    \
                let n0 = op_add(l0, op_dropout(l1, linear_index(i), EXTRA_BASE));\n    ";
    let result = match dtype {
        DType::F32 => "n0",
        DType::F16 => "round_f16(n0)",
        DType::BF16 => "round_bf16(n0)",
    };
    prologue_decls(first_binding, &[(DType::F32, Access::Contiguous), (dtype, Access::Strided)], &ops, body, result)
}

/// The generated kernel: leaves of (dtype, contiguous) layouts, op functions, a body that
/// computes the values named in `outputs` (each stored with its dtype).
///
/// Unchecked is safe for the reasons given at `elementwise::launch`: every leaf is a view
/// inside its storage expanded to the output shape; every output holds n elements and each
/// store is guarded by `first (+ 1) < n`. The `vec4` variant (see [`vec4_applies`]) reads
/// and writes whole 4-element units, all inside the views because n and every offset are
/// multiples of 4 and the views are contiguous.
pub(crate) fn fused_kernel(
    leaves: &[LeafLayout],
    ops: &str,
    body: &str,
    outputs: &[(String, DType)],
    wide: Option<Wide>,
) -> Kernel {
    if let Some(wide) = wide {
        return fused_kernel_wide(leaves, ops, body, outputs, wide);
    }
    let mut bindings = String::new();
    let loaders = leaf_decls(leaves, 0);
    let nl = leaves.len();
    for k in 0..outputs.len() {
        bindings.push_str(&format!("@group(0) @binding({}) var<storage, read_write> out{k}: array<u32>;\n", nl + k));
    }
    bindings
        .push_str(&format!("@group(0) @binding({}) var<storage, read> ew_params: array<u32>;\n", nl + outputs.len()));
    let fields: Vec<String> = (0..outputs.len()).map(|k| format!("o{k}: f32,")).collect();
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    let per = units_per_invocation(outputs);
    let mut store = String::new();
    if per == 1 {
        store.push_str("let v = values(first);\n        ");
        for k in 0..outputs.len() {
            store.push_str(&format!("out{k}[first] = bitcast<u32>(v.o{k});\n        "));
        }
    } else {
        store.push_str("let v = values(first);\n        let has_hi = first + 1u < n;\n        var w = v;\n        if (has_hi) { w = values(first + 1u); }\n        ");
        for (k, (_, dtype)) in outputs.iter().enumerate() {
            let hi = format!("select(0.0, w.o{k}, has_hi)");
            store.push_str(&match dtype {
                DType::F32 => format!("out{k}[first] = bitcast<u32>(v.o{k});\n        if (has_hi) {{ out{k}[first + 1u] = bitcast<u32>(w.o{k}); }}\n        "),
                DType::F16 => format!("out{k}[first >> 1u] = pack_f16x2(vec2<f32>(v.o{k}, {hi}));\n        "),
                DType::BF16 => format!("out{k}[first >> 1u] = f32_to_bf16_bits(v.o{k}) | (f32_to_bf16_bits({hi}) << 16u);\n        "),
            });
        }
    }
    Kernel::new(Shader::Fused, "main")
        .sub("BINDINGS", bindings)
        .sub("LOADERS", loaders)
        .sub("OPS", ops)
        .sub("OUT_FIELDS", fields.join("\n    "))
        .sub("BODY", format!("{body}return Outs({});", names.join(", ")))
        .sub(
            "STEP",
            format!(
                "for (var j = 0u; j < UNROLL; j++) {{\n            let t = (group * UNROLL + j) * WORKGROUP + lid;\n            \
                 let first = t * {per}u;\n            if (first >= n) {{\n                return;\n            }}\n            {}\n        }}",
                store.trim_end().replace("\n        ", "\n            ")
            ),
        )
        .trusted()
}

/// The scalar variant's leaf bindings (from `first_binding`) and loaders `load_k(e)`,
/// `index_k(i)` (see [`Access`]), with `linear_index` and the dropout params' base (they
/// follow the leaves' in `ew_params`, see Expr::Dropout).
fn leaf_decls(leaves: &[LeafLayout], first_binding: usize) -> String {
    let mut s = format!(
        "const EXTRA_BASE: u32 = {}u;\n\nfn linear_index(i: u32) -> u32 {{\n    return i;\n}}\n\n",
        8 + 7 * leaves.len()
    );
    for (k, &(dtype, access)) in leaves.iter().enumerate() {
        let base = 8 + 7 * k;
        s.push_str(&format!("@group(0) @binding({}) var<storage, read> leaf{k}: array<u32>;\n\n", first_binding + k));
        // ew_params[7] is the last dim of the merged shape (front-padded to MAX_DIMS).
        let index = match access {
            Access::Contiguous => format!("return ew_params[{base}] + i;"),
            Access::Rows => format!("return ew_params[{base}] + i % ew_params[7];"),
            Access::Strided => format!("return strided_index(i, {base}u);"),
        };
        s.push_str(&format!(
            "fn load_{k}(e: u32) -> f32 {{\n    {}\n}}\n\nfn index_{k}(i: u32) -> u32 {{\n    {index}\n}}\n\n",
            wgsl_load(&format!("leaf{k}"), dtype)
        ));
    }
    s
}

/// The pending matmul that `root`'s chain can run in the epilogue of, realising every other
/// pending matmul of the graph first. Fusing needs an f32 result of the matmul's shape and
/// no other output (`single_output`: no held intermediate to store); the matmul itself must
/// not be held elsewhere (its value would be needed on its own).
fn epilogue_source(root: &Tensor, single_output: bool) -> Result<Option<(Arc<crate::ops::matmul::MatmulNode>, usize)>> {
    let mut found: Vec<(Tensor, Arc<crate::ops::matmul::MatmulNode>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.clone()];
    // Operand slots in the graph pointing at each node: a handle beyond them is held outside.
    let mut refs: HashMap<usize, usize> = HashMap::new();
    while let Some(t) = stack.pop() {
        let expr = t.data().pending.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let key = Arc::as_ptr(t.data()) as usize;
        match expr {
            Some(Expr::Matmul(node)) if seen.insert(key) => found.push((t, node)),
            Some(e) if seen.insert(key) => {
                for o in e.operands() {
                    if !o.data().is_realized() {
                        *refs.entry(Arc::as_ptr(o.data()) as usize).or_insert(0) += 1;
                        stack.push(o.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let mut chosen = None;
    let fusable = single_output && root.dtype() == DType::F32 && !found.is_empty();
    for (t, node) in found {
        let key = Arc::as_ptr(t.data()) as usize;
        // `t` here is one handle besides the graph's operand slots; more are held outside.
        let held = Arc::strong_count(t.data()) > refs.get(&key).copied().unwrap_or(0) + 1;
        if fusable && chosen.is_none() && !held && node.shape() == root.shape() {
            chosen = Some((node, key));
        } else {
            t.realize()?;
        }
    }
    Ok(chosen)
}

/// Elements per 16-byte unit ([`Wide`]) where every leaf is contiguous (or one row
/// repeated, the row a whole number of units) and aligned to its words, and n a whole number
/// of units: 4 when every leaf and output is f32, 8 when any is 16-bit (an f32 leaf or
/// output then moves two words per unit). `None`: the element path. On the H200 one 16-byte
/// load per invocation copied at 3.6–4.2 TB/s against 2.2–2.9 TB/s for four 4-byte loads
/// (examples/bandwidth.rs); the f16 chain gelu(x·a + b)·c + x ran at 4094 GB/s in 8-element
/// units against 2452–3123 on 4-byte words (BENCHMARKS.md, sixth round).
pub(crate) fn wide_elements(
    layout: &[LeafLayout],
    offsets: &[usize],
    outputs: &[DType],
    n: usize,
    last_dim: usize,
) -> Option<usize> {
    let narrow = layout.iter().map(|l| l.0).chain(outputs.iter().copied()).any(|d| d != DType::F32);
    let elements = if narrow { 8 } else { 4 };
    let fits = n.is_multiple_of(elements)
        && layout.iter().zip(offsets).all(|(&(d, access), &offset)| {
            // Elements per 16-byte word: 4 f32, 8 halves.
            let per_word = 16 / d.size_in_bytes();
            offset.is_multiple_of(per_word.min(elements))
                && match access {
                    Access::Contiguous => true,
                    Access::Rows => last_dim.is_multiple_of(elements),
                    Access::Strided => false,
                }
        });
    fits.then_some(elements)
}

/// What a generated element-wise kernel is built from: the per-device cache's key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct FusedKey {
    layout: Vec<LeafLayout>,
    ops: Vec<OpFn>,
    body: String,
    outputs: Vec<(String, DType)>,
    wide: Option<Wide>,
}

/// A generated kernel and, once compiled, its pipeline.
pub(crate) struct FusedEntry {
    kernel: Kernel,
    pipeline: std::sync::OnceLock<Arc<wgpu::ComputePipeline>>,
}

/// Generated kernels kept per device; a full cache is emptied and refilled by the loop that
/// is running now.
const FUSED_KERNEL_CACHE: usize = 1024;

/// The 16-byte path's shape: `elements` (4 or 8, see [`wide_elements`]) per unit, `units`
/// units per invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Wide {
    pub elements: usize,
    pub units: usize,
}

/// The 16-byte variant of [`fused_kernel`], `wide.units` units of `wide.elements` elements
/// per invocation (WORKGROUP apart): every leaf's words for all the units are loaded
/// first, then each unit's lanes are evaluated by the (scalar) body and stored as whole
/// words per output. Loading first matters: the compiler cannot move a load above a store
/// to another buffer (they might alias); one unit at a time ran the f32 chain at 4207 GB/s
/// on the H200, loads first at 4261–4293 (4 units). A unit past the end loads the last
/// unit instead (in range) and is not stored. `index_k` returns the lane, `load_k` reads
/// it from the registers.
fn fused_kernel_wide(layout: &[LeafLayout], ops: &str, body: &str, outputs: &[(String, DType)], wide: Wide) -> Kernel {
    let (e, units) = (wide.elements, wide.units);
    let leaves = layout.len();
    let mut bindings = String::new();
    // `i` is the lane (0..e) of unit `unit`: the linear index is e·unit + i.
    let mut loaders = format!(
        "const EXTRA_BASE: u32 = {}u;\n\nvar<private> unit: u32;\n\nfn linear_index(i: u32) -> u32 {{\n    return {e}u * unit + i;\n}}\n\n",
        8 + 7 * leaves
    );
    let mut step = format!(
        "let units = n / {e}u;\n        let t0 = group * {units}u * WORKGROUP + lid;\n        if (t0 >= units) {{\n            return;\n        }}\n        "
    );
    for u in 1..units {
        step.push_str(&format!("let t{u} = min(t0 + {u}u * WORKGROUP, units - 1u);\n        "));
    }
    // Words of a unit per leaf or output: two for f32 in 8-element units, else one.
    let words = |d: DType| if d == DType::F32 && e == 8 { 2 } else { 1 };
    let lanes_type = if e == 4 { "vec4<f32>".to_string() } else { format!("array<f32, {e}>") };
    for (k, &(dtype, access)) in layout.iter().enumerate() {
        bindings.push_str(&format!("@group(0) @binding({k}) var<storage, read> leaf{k}: array<vec4<u32>>;\n"));
        loaders.push_str(&format!(
            "var<private> lanes_{k}: {lanes_type};\n\nfn load_{k}(lane: u32) -> f32 {{\n    return lanes_{k}[lane];\n}}\n\n\
             fn index_{k}(lane: u32) -> u32 {{\n    return lane;\n}}\n\n"
        ));
        // ew_params[8 + 7k] is the leaf's offset in elements, a whole number of words; a
        // repeated row's unit starts at (e·t mod N), also a whole number of words.
        let per_word = 16 / dtype.size_in_bytes();
        let o = 8 + 7 * k;
        for u in 0..units {
            for w in 0..words(dtype) {
                let word = match access {
                    Access::Rows => format!("(ew_params[{o}] + ({e}u * t{u}) % ew_params[7]) / {per_word}u + {w}u"),
                    _ => format!(
                        "ew_params[{o}] / {per_word}u + {}t{u} + {w}u",
                        if words(dtype) == 2 { "2u * " } else { "" }
                    ),
                };
                step.push_str(&format!("let word_{k}_{u}_{w} = leaf{k}[{word}];\n        "));
            }
        }
    }
    for k in 0..outputs.len() {
        bindings.push_str(&format!(
            "@group(0) @binding({}) var<storage, read_write> out{k}: array<vec4<u32>>;\n",
            leaves + k
        ));
    }
    bindings.push_str(&format!(
        "@group(0) @binding({}) var<storage, read> ew_params: array<u32>;\n",
        leaves + outputs.len()
    ));
    const XYZW: [&str; 4] = ["x", "y", "z", "w"];
    for u in 0..units {
        let mut unit = format!("unit = t{u};\n        ");
        for (k, &(dtype, _)) in layout.iter().enumerate() {
            let lanes: Vec<String> = match (dtype, e) {
                (DType::F32, 4) => {
                    unit.push_str(&format!("lanes_{k} = bitcast<vec4<f32>>(word_{k}_{u}_0);\n        "));
                    continue;
                }
                (DType::F32, _) => {
                    (0..8).map(|l| format!("bitcast<f32>(word_{k}_{u}_{}.{})", l / 4, XYZW[l % 4])).collect()
                }
                (DType::F16, _) => {
                    (0..8).map(|l| format!("unpack2x16float(word_{k}_{u}_0.{})[{}]", XYZW[l / 2], l % 2)).collect()
                }
                (DType::BF16, _) => (0..8)
                    .map(|l| {
                        let half = if l % 2 == 0 { "<< 16u" } else { "& 0xffff0000u" };
                        format!("bitcast<f32>(word_{k}_{u}_0.{} {half})", XYZW[l / 2])
                    })
                    .collect(),
            };
            unit.push_str(&format!("lanes_{k} = array<f32, 8>({});\n        ", lanes.join(", ")));
        }
        for l in 0..e {
            unit.push_str(&format!("let v{l} = values({l}u);\n        "));
        }
        for (k, (_, dtype)) in outputs.iter().enumerate() {
            let lane = |l: usize| format!("v{l}.o{k}");
            match (dtype, e) {
                (DType::F32, _) => {
                    for w in 0..e / 4 {
                        let index = if e == 4 { format!("t{u}") } else { format!("2u * t{u} + {w}u") };
                        let v: Vec<String> = (4 * w..4 * w + 4).map(lane).collect();
                        unit.push_str(&format!(
                            "out{k}[{index}] = bitcast<vec4<u32>>(vec4<f32>({}));\n        ",
                            v.join(", ")
                        ));
                    }
                }
                (DType::F16, _) => {
                    let v: Vec<String> = (0..4)
                        .map(|p| format!("pack_f16x2(vec2<f32>({}, {}))", lane(2 * p), lane(2 * p + 1)))
                        .collect();
                    unit.push_str(&format!("out{k}[t{u}] = vec4<u32>({});\n        ", v.join(", ")));
                }
                (DType::BF16, _) => {
                    let v: Vec<String> = (0..4)
                        .map(|p| {
                            format!(
                                "f32_to_bf16_bits({}) | (f32_to_bf16_bits({}) << 16u)",
                                lane(2 * p),
                                lane(2 * p + 1)
                            )
                        })
                        .collect();
                    unit.push_str(&format!("out{k}[t{u}] = vec4<u32>({});\n        ", v.join(", ")));
                }
            }
        }
        if u == 0 {
            step.push_str(&unit);
        } else {
            // t_u was clamped: stored only when it was in range.
            let guarded = unit.trim_end().replace("\n        ", "\n            ");
            step.push_str(&format!(
                "if (t0 + {u}u * WORKGROUP < units) {{\n            {guarded}\n        }}\n        "
            ));
        }
    }
    let fields: Vec<String> = (0..outputs.len()).map(|k| format!("o{k}: f32,")).collect();
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    Kernel::new(Shader::Fused, "main")
        .sub("BINDINGS", bindings)
        .sub("LOADERS", loaders)
        .sub("OPS", ops)
        .sub("OUT_FIELDS", fields.join("\n    "))
        .sub("BODY", format!("{body}return Outs({});", names.join(", ")))
        .sub("STEP", step.trim_end().to_string())
        .trusted()
}

/// 2 when an output is 16-bit (whole words of packed pairs), else 1.
pub(crate) fn units_per_invocation(outputs: &[(String, DType)]) -> usize {
    if outputs.iter().any(|(_, d)| *d != DType::F32) {
        2
    } else {
        1
    }
}

/// Generated kernels of a few fixed chains, for the portability test (the fusion tests
/// translate the kernels their random graphs generate as well).
pub fn sample_kernels() -> Vec<Kernel> {
    let mut all = Vec::new();
    let every_op: String = UnaryOp::ALL
        .iter()
        .map(|op| format!("fn op_{}(x: f32) -> f32 {{\n    return {};\n}}\n", op.name(), op.wgsl()))
        .chain(
            BinaryOp::ALL
                .iter()
                .map(|op| format!("fn op_{}(x: f32, y: f32) -> f32 {{\n    return {};\n}}\n", op.name(), op.wgsl())),
        )
        .collect();
    for out in DType::ALL {
        for a in DType::ALL {
            let leaves = [(a, Access::Contiguous), (out, Access::Strided), (DType::F32, Access::Rows)];
            let body = "let l0 = load_0(index_0(i));\n    let l1 = load_1(index_1(i));\n    let l2 = load_2(index_2(i));\n    \
                        let n0 = op_gelu_tanh(op_add(op_mul(l0, l1), l2));\n    let n1 = round_f16(n0);\n    let n2 = round_bf16(n1);\n    \
                        let n3 = op_add(op_mul(n2, l2), l0);\n    ";
            all.push(fused_kernel(&leaves, &every_op, body, &[("n3".into(), out)], None));
            // Two outputs: the result and a held intermediate of another dtype.
            all.push(fused_kernel(&leaves, &every_op, body, &[("n3".into(), out), ("n0".into(), a)], None));
        }
    }
    let body = "let l0 = load_0(index_0(i));\n    let l1 = load_1(index_1(i));\n    let n0 = op_gelu_tanh(op_mul(l0, l1));\n    ";
    let leaves = [(DType::F32, Access::Contiguous), (DType::F32, Access::Rows)];
    all.push(fused_kernel(
        &leaves,
        &every_op,
        body,
        &[("n0".into(), DType::F32)],
        Some(Wide { elements: 4, units: 4 }),
    ));
    all.push(fused_kernel(
        &leaves,
        &every_op,
        body,
        &[("n0".into(), DType::F32), ("l1".into(), DType::F32)],
        Some(Wide { elements: 4, units: 1 }),
    ));
    // 8-element units: every 16-bit dtype as a leaf and an output, beside an f32 leaf (two
    // words per unit) and an f32 output.
    for d in [DType::F16, DType::BF16] {
        for (units, access) in [(1, Access::Contiguous), (2, Access::Rows)] {
            let leaves = [(d, Access::Contiguous), (DType::F32, access)];
            let outputs = [("n0".into(), d), ("l1".into(), DType::F32)];
            all.push(fused_kernel(&leaves, &every_op, body, &outputs, Some(Wide { elements: 8, units })));
        }
    }
    // A chain in a matmul's epilogue: bias-like broadcast leaf, residual, dropout.
    let leaves = [(DType::F32, Access::Rows), (DType::BF16, Access::Contiguous)];
    let ep = crate::ops::matmul::FusedEpilogue {
        decls: format!(
            "{}\n@group(0) @binding(5) var<storage, read> ew_params: array<u32>;\n{}\n{}",
            include_str!("../shaders/ew_common.wgsl"),
            leaf_decls(&leaves, 6),
            every_op
        ),
        body: "let l0 = load_0(index_0(i));\n    let l1 = load_1(index_1(i));\n    \
               let n0 = op_add(op_gelu_tanh(op_add(mm, l0)), l1);\n    let n1 = op_dropout(n0, linear_index(i), EXTRA_BASE);\n    "
            .into(),
        result: "n1".into(),
        ew_params: vec![],
        leaves: vec![],
    };
    all.extend(crate::ops::matmul::sample_with_epilogue(&ep));
    all
}

/// The longest chain one kernel computes: beyond it the operand is realised first, which
/// bounds the generated kernel's size and the realisation's recursion (a loop that
/// accumulates `s = s + x` forever without reading `s` must not grow one graph forever).
const MAX_CHAIN: usize = 64;

/// Pending nodes on the longest path from `t` to a realised tensor.
fn depth(t: &Tensor) -> usize {
    if t.data().is_realized() {
        0
    } else {
        t.data().depth
    }
}

/// `operands` with any chain at the limit realised, and the new node's depth.
fn bounded(operands: &[&Tensor]) -> Result<usize> {
    for o in operands {
        if depth(o) >= MAX_CHAIN {
            o.realize()?;
        }
    }
    Ok(1 + operands.iter().map(|o| depth(o)).max().unwrap_or(0))
}

/// A pending `op(a, b)`; `a` and `b` already have the output's shape (broadcast operands are
/// realised views with stride 0).
pub(crate) fn lazy_zip(op: BinaryOp, a: Tensor, b: Tensor, dtype: DType) -> Result<Tensor> {
    let d = bounded(&[&a, &b])?;
    let gpu = a.gpu().clone();
    let shape = a.shape().to_vec();
    Ok(Tensor::pending(&gpu, &shape, dtype, Expr::Zip(op, a, b), d))
}

/// The params words of a dropout node: seed (low, high), the keep threshold on the 32-bit
/// hash (keep when hash ≥ p·2³²), and 1/(1 − p) as f32 bits.
fn dropout_words(p: f32, seed: u64) -> [u32; 4] {
    let threshold = (p as f64 * 4294967296.0).round().min(4294967295.0) as u32;
    [seed as u32, (seed >> 32) as u32, threshold, ((1.0 / (1.0 - p as f64)) as f32).to_bits()]
}

/// The mask the kernels compute, on the host (tests and references): whether element
/// `index` survives dropout with probability `p` and `seed`. Bit-exact with the shaders'
/// `dropout_hash` in shaders/fused.wgsl.
///
/// ```
/// use wgkernels::ops::elementwise::dropout_keeps;
/// let kept = (0..10_000u32).filter(|&i| dropout_keeps(0.3, 42, i)).count();
/// assert!((6_500..7_500).contains(&kept));
/// ```
pub fn dropout_keeps(p: f32, seed: u64, index: u32) -> bool {
    fn mix32(mut h: u32) -> u32 {
        h ^= h >> 16;
        h = h.wrapping_mul(0x7feb_352d);
        h ^= h >> 15;
        h = h.wrapping_mul(0x846c_a68b);
        h ^= h >> 16;
        h
    }
    let [lo, hi, threshold, _] = dropout_words(p, seed);
    mix32(mix32(index.wrapping_add(mix32(lo))) ^ hi) >= threshold
}

/// A pending matmul (its node validated, its launch deferred).
pub(crate) fn lazy_matmul(node: crate::ops::matmul::MatmulNode) -> Tensor {
    let gpu = node.gpu().clone();
    let shape = node.shape().to_vec();
    Tensor::pending(&gpu, &shape, DType::F32, Expr::Matmul(Arc::new(node)), 1)
}

/// A pending `op(x, value)` (`op(value, x)` when `scalar_first`).
pub(crate) fn lazy_scalar(op: BinaryOp, x: Tensor, value: f32, scalar_first: bool) -> Result<Tensor> {
    let d = bounded(&[&x])?;
    let gpu = x.gpu().clone();
    let (shape, dtype) = (x.shape().to_vec(), x.dtype());
    Ok(Tensor::pending(&gpu, &shape, dtype, Expr::Scalar { op, x, value, scalar_first }, d))
}

/// A pending `where(cond, a, b)`; the three already have the output's shape.
pub(crate) fn lazy_where(cond: Tensor, a: Tensor, b: Tensor) -> Result<Tensor> {
    let d = bounded(&[&cond, &a, &b])?;
    let gpu = a.gpu().clone();
    let (shape, dtype) = (a.shape().to_vec(), a.dtype());
    Ok(Tensor::pending(&gpu, &shape, dtype, Expr::Where(cond, a, b), d))
}

/// A pending dropout of `x`.
pub(crate) fn lazy_dropout(x: Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let d = bounded(&[&x])?;
    let gpu = x.gpu().clone();
    let (shape, dtype) = (x.shape().to_vec(), x.dtype());
    Ok(Tensor::pending(&gpu, &shape, dtype, Expr::Dropout { x, p, seed }, d))
}

/// A pending `op(x)` (a cast when `op` is `Copy` and `dtype` differs).
pub(crate) fn lazy_map(op: UnaryOp, x: Tensor, dtype: DType) -> Result<Tensor> {
    let d = bounded(&[&x])?;
    let gpu = x.gpu().clone();
    let shape = x.shape().to_vec();
    let expr = if op == UnaryOp::Copy { Expr::Cast(x) } else { Expr::Map(op, x) };
    Ok(Tensor::pending(&gpu, &shape, dtype, expr, d))
}
