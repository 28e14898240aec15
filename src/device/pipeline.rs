//! The shader registry: one WGSL file per kernel family, embedded at build time,
//! specialised, compiled on first use and cached.
//!
//! # Specialising a shader
//! Two mechanisms, in this order of preference:
//! - **Pipeline-overridable constants** (`override NAME: u32 = ...;` in WGSL), passed as
//!   [`Kernel::constant`]: the module text stays the same and the driver folds the value.
//!   Use them for numbers (tile sizes, workgroup sizes, unroll factors).
//! - **Text substitution** of `{{NAME}}` placeholders, passed as [`Kernel::sub`]: for what
//!   overrides cannot express in WGSL, such as types, loader bodies and expressions.
//!   Every placeholder must be substituted; a leftover one is a bug caught by the tests.
//! - **Conditional blocks** between lines `//#if FLAG`, `//#else` and `//#endif` (not
//!   nested), kept or dropped by [`Kernel::flag`]: for code that must not reach a device
//!   lacking a feature at all, such as subgroup built-ins, which invalidate the whole module
//!   there even in an entry point that is never used.
//!
//! Pipelines are cached by (shader, entry point, substitutions, constants, checked), so the
//! dtype is part of the key through the substitutions it causes.
//!
//! # Bounds checks
//! A kernel is built *trusted* (wgpu's runtime bounds checks off) only when the code that
//! launches it has proven on the host that every index it computes is in range (see each
//! op's `launch` function for the argument). `WGK_CHECKED=1` builds every module checked.

use rustc_hash::FxHashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{lock, Gpu};
use crate::error::{Error, Result};

/// Conversions for the packed 16-bit dtypes and the shared activations, prepended to every
/// module.
const DTYPE_PRELUDE: &str = concat!(include_str!("dtype.wgsl"), "\n", include_str!("math.wgsl"));

/// One WGSL file of a kernel family, with the WGSL it shares with related families. Each
/// family declares its own beside its launcher (e.g. `kernels::contraction::matmul::MATMUL`);
/// the device layer compiles whatever it is handed and names none of them.
///
/// Equality and hashing go by `name`, which is unique across the crate (the portability
/// test checks it), so a pipeline-cache lookup never hashes a whole source text.
pub struct ShaderSource {
    /// Short name, also the label prefix of its kernels: `matmul` in `matmul:tiled`.
    pub name: &'static str,
    /// The unspecialised WGSL source.
    pub source: &'static str,
    /// WGSL shared with related families, placed after the dtype prelude ("" if none).
    pub shared: &'static str,
}

impl ShaderSource {
    /// The file name of the family's WGSL, beside its launcher.
    pub fn file_name(&self) -> String {
        format!("{}.wgsl", self.name)
    }
}

impl PartialEq for ShaderSource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for ShaderSource {}

impl std::hash::Hash for ShaderSource {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl std::fmt::Debug for ShaderSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShaderSource({})", self.name)
    }
}

/// One specialisation of one entry point: what gets compiled into a pipeline.
///
/// ```
/// use wgkernels::shaders::Kernel;
/// use wgkernels::ops::reduce::REDUCE;
/// let k = Kernel::new(&REDUCE, "sum_rows").sub("LOAD_X", "return bitcast<f32>(x[e]);");
/// assert!(k.wgsl().contains("fn sum_rows"));
/// assert_eq!(k.label(), "reduce:sum_rows");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    /// The family's WGSL.
    pub shader: &'static ShaderSource,
    /// The entry point.
    pub entry: &'static str,
    /// `{{NAME}}` → text, applied in order.
    pub subs: Vec<(&'static str, String)>,
    /// Overridable constants, as (name, value bits of an f64) so the key is hashable.
    constants: Vec<(&'static str, u64)>,
    /// Built without runtime bounds checks unless the device runs checked.
    pub trusted: bool,
    /// Flags of the `//#if` blocks to keep.
    pub flags: Vec<&'static str>,
    /// What this specialisation computes, for profiles (a generated kernel's ops); empty
    /// for the static families.
    pub note: String,
}

impl Kernel {
    /// A kernel with no specialisation yet.
    pub fn new(shader: &'static ShaderSource, entry: &'static str) -> Self {
        Self {
            shader,
            entry,
            subs: Vec::new(),
            constants: Vec::new(),
            trusted: false,
            flags: Vec::new(),
            note: String::new(),
        }
    }

    /// Replaces `{{name}}` by `text`.
    pub fn sub(mut self, name: &'static str, text: impl Into<String>) -> Self {
        self.subs.push((name, text.into()));
        self
    }

    /// Sets the pipeline-overridable constant `name`.
    pub fn constant(mut self, name: &'static str, value: f64) -> Self {
        self.constants.push((name, value.to_bits()));
        self
    }

    /// Keeps the `//#if name` blocks (and drops their `//#else` parts).
    pub fn flag(mut self, name: &'static str) -> Self {
        self.flags.push(name);
        self
    }

    /// Sets the note its label carries (see [`Kernel::label`]).
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// Marks the kernel as safe to build without bounds checks: the caller has proven
    /// every index in range.
    pub fn trusted(mut self) -> Self {
        self.trusted = true;
        self
    }

    /// The overridable constants as wgpu and naga take them.
    pub fn constants(&self) -> Vec<(&'static str, f64)> {
        self.constants.iter().map(|&(n, b)| (n, f64::from_bits(b))).collect()
    }

    /// The specialised WGSL text: the family's `enable` and `diagnostic` directives (which
    /// WGSL wants first), the dtype prelude, the source it shares with related families, then the
    /// rest of its own.
    pub fn wgsl(&self) -> String {
        let source = preprocess(self.shader.source, &self.flags);
        let (enables, body): (Vec<&str>, Vec<&str>) =
            source.lines().partition(|l| l.starts_with("enable ") || l.starts_with("diagnostic("));
        // The shared source takes the same `//#if` flags as the family's own.
        let shared = preprocess(self.shader.shared, &self.flags);
        let mut text = format!("{}\n{}\n{}\n{}", enables.join("\n"), DTYPE_PRELUDE, shared, body.join("\n"));
        for (name, value) in &self.subs {
            text = text.replace(&format!("{{{{{name}}}}}"), value);
        }
        text
    }

    /// A short label for profiles and errors: `family:entry`, then the note in brackets
    /// where there is one (a fused kernel's ops: `fused:main[add,gelu_tanh]`), so that a
    /// profile tells generated kernels apart.
    pub fn label(&self) -> String {
        if self.note.is_empty() {
            format!("{}:{}", self.shader.name, self.entry)
        } else {
            format!("{}:{}[{}]", self.shader.name, self.entry, self.note)
        }
    }
}

/// Keeps or drops `//#if FLAG` / `//#else` / `//#endif` blocks (one level, no nesting).
fn preprocess(source: &str, flags: &[&str]) -> String {
    let mut out = String::with_capacity(source.len());
    // None outside a block; Some(keep) inside one.
    let mut keep: Option<bool> = None;
    for line in source.lines() {
        let t = line.trim();
        if let Some(flag) = t.strip_prefix("//#if ") {
            keep = Some(flags.contains(&flag.trim()));
        } else if t == "//#else" {
            keep = keep.map(|k| !k);
        } else if t == "//#endif" {
            keep = None;
        } else if keep.unwrap_or(true) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The layout of a kernel's `#[repr(C)]` params struct: its name (the same as its WGSL
/// mirror's), size and each field's byte offset, for the test that checks the mirror field
/// for field (see `tests/portability.rs`).
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct ParamsLayout {
    /// The struct's name in Rust and in WGSL.
    pub name: &'static str,
    /// `size_of` the Rust struct.
    pub size: usize,
    /// (field, byte offset), in declaration order.
    pub fields: Vec<(&'static str, usize)>,
}

/// The [`ParamsLayout`] of a params struct, from its field list (each field named once).
macro_rules! params_layout {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        $crate::device::ParamsLayout {
            name: stringify!($ty),
            size: std::mem::size_of::<$ty>(),
            fields: vec![$((stringify!($field), std::mem::offset_of!($ty, $field))),*],
        }
    };
}
pub(crate) use params_layout;

/// A kernel that a family caches under its own key (a structure it would otherwise format
/// as WGSL on every launch) and, once compiled, its pipeline: a hit then builds no WGSL and
/// looks nothing up in the device's pipeline cache, and keeps its pipeline when that cache
/// drops it.
pub(crate) struct CachedKernel {
    pub(crate) kernel: Kernel,
    pipeline: std::sync::OnceLock<Arc<wgpu::ComputePipeline>>,
}

impl CachedKernel {
    pub(crate) fn new(kernel: Kernel) -> Self {
        Self { kernel, pipeline: std::sync::OnceLock::new() }
    }

    /// The pipeline if this entry holds it already (counted as a cache hit).
    pub(crate) fn ready(&self, gpu: &Gpu) -> Option<Arc<wgpu::ComputePipeline>> {
        let p = self.pipeline.get()?;
        gpu.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(p.clone())
    }

    /// Keeps `pipeline` (this kernel's) for the next launch.
    pub(crate) fn keep(&self, pipeline: &Arc<wgpu::ComputePipeline>) {
        let _ = self.pipeline.set(pipeline.clone());
    }

    /// The pipeline, compiled (or found in the device's cache) on first use.
    pub(crate) fn pipeline(&self, gpu: &Gpu) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.ready(gpu) {
            return Ok(p);
        }
        let p = gpu.pipeline(&self.kernel)?;
        self.keep(&p);
        Ok(p)
    }
}

/// Compiled pipelines, least recently used dropped past `capacity` (a process that builds
/// ever new fused structures would otherwise keep every pipeline: 1000 structures took a
/// process from 74 to 590 MB). Keyed by kernel, one map for unchecked builds and one for
/// checked: a lookup hashes the caller's kernel as it is, with no key to build (a clone of
/// the kernel per dispatch, its substitutions included, was 5% of a decode step's host
/// time on wgpu's noop backend).
pub(crate) struct PipelineCache {
    /// [unchecked, checked]: pipeline and the clock of its last use.
    entries: [FxHashMap<Kernel, (Arc<wgpu::ComputePipeline>, u64)>; 2],
    /// Uses so far: each hit and insert stamps its entry with the next value.
    clock: u64,
    capacity: usize,
}

impl PipelineCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { entries: Default::default(), clock: 0, capacity: capacity.max(1) }
    }

    fn get(&mut self, kernel: &Kernel, checked: bool) -> Option<Arc<wgpu::ComputePipeline>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries[usize::from(checked)].get_mut(kernel).map(|(p, used)| {
            *used = clock;
            p.clone()
        })
    }

    fn insert(&mut self, kernel: Kernel, checked: bool, pipeline: Arc<wgpu::ComputePipeline>) {
        self.clock += 1;
        if self.len() >= self.capacity && !self.entries[usize::from(checked)].contains_key(&kernel) {
            // A scan per eviction: evictions come with a compile, which costs far more.
            let oldest = (0..2)
                .flat_map(|c| self.entries[c].iter().map(move |(k, (_, used))| (*used, c, k)))
                .min_by_key(|&(used, _, _)| used)
                .map(|(_, c, k)| (c, k.clone()));
            if let Some((c, oldest)) = oldest {
                self.entries[c].remove(&oldest);
            }
        }
        self.entries[usize::from(checked)].insert(kernel, (pipeline, self.clock));
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.iter().map(|m| m.len()).sum()
    }
}

impl Gpu {
    /// How many pipelines this device keeps compiled (`GpuOptions::pipeline_cache`).
    pub(crate) fn pipeline_cache_capacity(&self) -> usize {
        lock(&self.inner.pipelines).capacity
    }

    /// The compute pipeline for `kernel`, compiled on first use.
    pub(crate) fn pipeline(&self, kernel: &Kernel) -> Result<Arc<wgpu::ComputePipeline>> {
        let _serial = self.serial();
        let checked = self.checked() || !kernel.trusted;
        if let Some(p) = lock(&self.inner.pipelines).get(kernel, checked) {
            self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(p);
        }
        let device = &self.inner.device;
        let source = kernel.wgsl();
        let (pipeline, err) = super::scoped(device, wgpu::ErrorFilter::Validation, || {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(kernel.entry),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            };
            let module = if checked {
                device.create_shader_module(desc)
            } else {
                // SAFETY: `trusted` kernels are launched only after the host has checked that
                // every buffer index the shader computes is in range (see the op's launcher).
                // (A browser checks every access whatever is asked.)
                unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
            };
            let constants = kernel.constants();
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Our kernels write workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        });
        if let Some(err) = err {
            return Err(Error::Backend { op: "compile", msg: format!("{}: {err}", kernel.label()) });
        }
        let pipeline = Arc::new(pipeline);
        self.inner.compiled.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.pipelines).insert(kernel.clone(), checked, pipeline.clone());
        Ok(pipeline)
    }

    /// The pipeline of `kernel` if it is compiled already (a cache hit), else None — never
    /// compiling. With [`Gpu::dispatch_compiled`], one lookup per dispatch on the tiered
    /// JIT's hit path (a check and then `dispatch`, two lookups, ran 40 µs per cache-hit
    /// realisation in a loop on the H200 against 29 µs untiered, same call).
    pub(crate) fn compiled(&self, kernel: &Kernel) -> Option<Arc<wgpu::ComputePipeline>> {
        let checked = self.checked() || !kernel.trusted;
        let hit = lock(&self.inner.pipelines).get(kernel, checked);
        if hit.is_some() {
            self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Records one dispatch of `pipeline`, compiled from `kernel` (see [`Gpu::compiled`]),
    /// over `workgroups` workgroups as [`Gpu::dispatch`] spreads them.
    pub(crate) fn dispatch_compiled(
        &self,
        pipeline: &Arc<wgpu::ComputePipeline>,
        kernel: &Kernel,
        buffers: &[(u32, &wgpu::Buffer)],
        workgroups: u32,
    ) -> Result<()> {
        let _serial = self.serial();
        self.record_dispatch(pipeline, kernel, buffers, self.grid_of(workgroups))
    }

    /// A 1-D count of workgroups on the grid: 2-D past the per-dimension limit.
    fn grid_of(&self, workgroups: u32) -> [u32; 3] {
        let max = self.inner.info.limits.max_compute_workgroups_per_dimension.max(1);
        if workgroups <= max {
            [workgroups, 1, 1]
        } else {
            [max, workgroups.div_ceil(max), 1]
        }
    }

    /// Records one dispatch of `kernel` over `workgroups` workgroups (spread over a 2-D grid
    /// when above the 65535 per-dimension limit; shaders flatten `wid.x + wid.y * nwg.x`
    /// and ignore the excess). `buffers` are (binding, buffer) pairs of group 0.
    pub(crate) fn dispatch(&self, kernel: &Kernel, buffers: &[(u32, &wgpu::Buffer)], workgroups: u32) -> Result<()> {
        self.dispatch_3d(kernel, buffers, self.grid_of(workgroups))
    }

    /// Records one dispatch of `kernel` over a `[x, y, z]` grid of workgroups.
    pub(crate) fn dispatch_3d(&self, kernel: &Kernel, buffers: &[(u32, &wgpu::Buffer)], grid: [u32; 3]) -> Result<()> {
        let _serial = self.serial();
        if grid.contains(&0) {
            return Ok(());
        }
        let pipeline = self.pipeline(kernel)?;
        self.record_dispatch(&pipeline, kernel, buffers, grid)
    }

    fn record_dispatch(
        &self,
        pipeline: &Arc<wgpu::ComputePipeline>,
        kernel: &Kernel,
        buffers: &[(u32, &wgpu::Buffer)],
        grid: [u32; 3],
    ) -> Result<()> {
        if grid.contains(&0) {
            return Ok(());
        }
        let bind_group = self.bind_group(pipeline, kernel.entry, buffers);
        // The pass is named by its entry point (a static name: formatting the full label
        // for every dispatch showed in a decode step's host profile); profiles get the label.
        let timestamps = self.profiler_slot(kernel, grid)?;
        self.record(|enc| {
            let timestamp_writes = timestamps.as_ref().map(|(qs, i)| wgpu::ComputePassTimestampWrites {
                query_set: qs,
                beginning_of_pass_write_index: Some(*i),
                end_of_pass_write_index: Some(*i + 1),
            });
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kernel.entry), timestamp_writes });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        })?;
        self.profiler_after_dispatch(kernel, grid)
    }

    /// Every kernel this device has compiled so far (the fusion tests translate the
    /// generated ones with naga).
    #[doc(hidden)]
    pub fn compiled_kernels(&self) -> Vec<Kernel> {
        lock(&self.inner.pipelines).entries.iter().flat_map(|m| m.keys().cloned()).collect()
    }

    /// The bind group of `buffers` for `pipeline`, from the cache when these buffers were
    /// bound to it before (a realisation that hits the kernel cache then creates no wgpu
    /// object at all; with the metadata cache this took a cache-hit realisation from 167 to
    /// 93 µs of host time on the H200's machine).
    fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        label: &str,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let key: super::BindKey =
            (pipeline.clone(), buffers.iter().map(|&(binding, b)| (binding, b.clone())).collect());
        if let Some(group) = lock(&self.inner.bind_groups).get(&key) {
            return group.clone();
        }
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
            .collect();
        self.inner.bind_groups_created.fetch_add(1, Ordering::Relaxed);
        let group = self.inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut cache = lock(&self.inner.bind_groups);
        if cache.len() >= BIND_GROUP_CACHE {
            cache.clear();
        }
        cache.insert(key, group.clone());
        group
    }

    /// The read-only storage buffer of a kernel's params: a `#[repr(C)]` struct of u32 and
    /// f32 fields that the kernel's WGSL mirrors field for field (shared like
    /// [`Gpu::meta_buffer`]'s).
    pub(crate) fn params_buffer<P: bytemuck::Pod>(&self, params: &P) -> wgpu::Buffer {
        self.meta_buffer(bytemuck::cast_slice(std::slice::from_ref(params)))
    }

    /// A small read-only storage buffer holding `words` (kernel metadata: shapes, strides),
    /// shared by every launch with the same words (it is never written after creation).
    pub(crate) fn meta_buffer(&self, words: &[u32]) -> wgpu::Buffer {
        let _serial = self.serial();
        if let Some(b) = lock(&self.inner.meta).get(words) {
            return b.clone();
        }
        use wgpu::util::DeviceExt;
        let buffer = self.inner.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("meta"),
            contents: bytemuck::cast_slice(words),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let mut cache = lock(&self.inner.meta);
        if cache.len() >= META_CACHE {
            cache.clear();
        }
        cache.insert(words.to_vec(), buffer.clone());
        buffer
    }
}

/// Cached metadata buffers (a few words each) and bind groups kept at most; a full cache is
/// emptied and refilled by the loop that is running now.
const META_CACHE: usize = 4096;
const BIND_GROUP_CACHE: usize = 4096;
