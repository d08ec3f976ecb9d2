//! Where a forward runs: the CPU reference ([`clca::vit::cpu`]) or a [`DeviceVit`] on the host
//! shim or a GPU, behind one [`Engine`] so the commands time and read them the same way.
use crate::error::{CliError, CliResult, Context};
use clca::vit::cpu::CpuWorkspace;
use clca::vit::device::{AttentionPath, DeviceVit, DeviceWorkspace};
use clca::vit::profile::Profile;
use clca::vit::{Trace, TraceData, Vit};
use clca::{bf16, f16, Buffer, Device, Element, HostShim};
use std::time::Instant;

/// `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU reference (f32, rayon).
    Cpu,
    /// The CUDA kernels on a GPU (needs `--features cuda` and an NVIDIA driver).
    Cuda,
    /// The CUDA kernels compiled for the CPU under the host shim (slow, exact; for checking).
    Shim,
    /// The GPU when this build has CUDA and a driver and GPU open; otherwise the CPU reference
    /// (f32), with a note on stderr saying why.
    Auto,
}

impl DeviceArg {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceArg::Cpu => "cpu",
            DeviceArg::Cuda => "cuda",
            DeviceArg::Shim => "shim",
            DeviceArg::Auto => "auto",
        }
    }
}

/// `--dtype`: the storage type of the device forward's GEMMs, attention and head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl DtypeArg {
    pub fn as_str(self) -> &'static str {
        match self {
            DtypeArg::F32 => "f32",
            DtypeArg::F16 => "f16",
            DtypeArg::Bf16 => "bf16",
        }
    }
}

/// A model ready to run on one backend at a fixed batch: weights uploaded, buffers allocated.
pub trait Engine {
    /// "CPU f32, 2 rayon threads", "host shim f32", "CUDA f16 on NVIDIA H100 …".
    fn describe(&self) -> String;
    /// Copies `images` [batch, 3, S, S] to where the forward reads them.
    fn stage(&mut self, images: &[f32]) -> clca::Result<()>;
    /// One forward of the staged images, finished when it returns (the device is synchronized).
    fn run(&mut self, trace: Option<&mut Trace>) -> clca::Result<()>;
    /// The logits of the last [`Engine::run`], [batch, classes] as f32.
    fn logits(&self) -> clca::Result<Vec<f32>>;
    /// Profiles the following runs into `p` (`None`: stop). False when this engine cannot.
    fn set_profile(&mut self, p: Option<Profile>) -> bool {
        let _ = p;
        false
    }
    /// The profile so far, leaving profiling off.
    fn take_profile(&mut self) -> Option<Profile> {
        None
    }
}

/// The CPU reference.
pub struct CpuEngine<'a> {
    model: &'a Vit,
    ws: CpuWorkspace,
    images: Vec<f32>,
    logits: Vec<f32>,
}

impl<'a> CpuEngine<'a> {
    pub fn new(model: &'a Vit, batch: usize) -> clca::Result<Self> {
        // CLCA_CPU_ISA=avx512|avx2|portable overrides the CPU path (for side-by-side timing,
        // e.g. the AVX2 path on a CPU that also has AVX-512).
        let mut ws = match std::env::var("CLCA_CPU_ISA").as_deref() {
            Ok("portable") => CpuWorkspace::new_portable(model, batch)?,
            Ok(s) if !s.is_empty() => match clca::cpu::packed::Isa::parse(s) {
                Some(isa) => CpuWorkspace::new_packed(model, batch, isa)?,
                None => {
                    return Err(clca::Error::InvalidArgument {
                        arg: "CLCA_CPU_ISA",
                        value: s.into(),
                        why: "must be `avx512`, `avx2` or `portable` (or unset: the best)".into(),
                    })
                }
            },
            _ => CpuWorkspace::new(model, batch)?,
        };
        // CLCA_PRUNE_FIRST=0: Top-K / EViT blocks in the authors' order (every query attended
        // and projected, then the selection), as on the device forward.
        if let Some(on) = env_switch("CLCA_PRUNE_FIRST")? {
            ws.set_pruned_attention(on);
        }
        Ok(CpuEngine {
            model,
            ws,
            images: Vec::new(),
            logits: Vec::new(),
        })
    }
}

impl Engine for CpuEngine<'_> {
    fn describe(&self) -> String {
        let n = rayon::current_num_threads();
        let path = match self.ws.isa() {
            Some(clca::cpu::packed::Isa::Avx512) => "packed AVX-512",
            Some(clca::cpu::packed::Isa::Avx2) => "packed AVX2+FMA",
            None => "portable",
        };
        format!(
            "CPU f32 ({path}), {n} rayon thread{}",
            if n == 1 { "" } else { "s" }
        )
    }
    fn stage(&mut self, images: &[f32]) -> clca::Result<()> {
        self.images.clear();
        self.images.extend_from_slice(images);
        Ok(())
    }
    fn run(&mut self, trace: Option<&mut Trace>) -> clca::Result<()> {
        self.logits = clca::vit::cpu::forward(self.model, &mut self.ws, &self.images, trace)?;
        Ok(())
    }
    fn logits(&self) -> clca::Result<Vec<f32>> {
        Ok(self.logits.clone())
    }
    fn set_profile(&mut self, p: Option<Profile>) -> bool {
        self.ws.set_profile(p);
        true
    }
    fn take_profile(&mut self) -> Option<Profile> {
        self.ws.take_profile()
    }
}

/// A [`DeviceVit`] in storage type `T` on device `D`.
pub struct DevEngine<'a, D: Device, T: Element> {
    dev: &'a D,
    label: String,
    vit: DeviceVit<D, T>,
    ws: DeviceWorkspace<D, T>,
    images: D::Buf<f32>,
}

impl<'a, D: Device, T: Element> DevEngine<'a, D, T> {
    pub fn new(dev: &'a D, label: &str, model: &Vit, batch: usize) -> clca::Result<Self> {
        let vit = device_vit(dev, model)?;
        let ws = vit.workspace(dev, batch)?;
        let c = &model.cfg;
        let len = batch
            .checked_mul(c.in_chans * c.img_size * c.img_size)
            .ok_or(clca::Error::Overflow { what: "images" })?;
        let images = dev.zeros::<f32>(len)?;
        Ok(DevEngine {
            dev,
            label: label.to_string(),
            vit,
            ws,
            images,
        })
    }
}

/// `model` on `dev`, with the attention path CLCA_ATTENTION=gemm|fused|fused-wide asks for and
/// the Top-K / EViT order CLCA_PRUNE_FIRST=1|0 asks for (for side-by-side timing; unset: the
/// defaults, the fused path where it exists and selecting before the projection).
fn device_vit<D: Device, T: Element>(dev: &D, model: &Vit) -> clca::Result<DeviceVit<D, T>> {
    let mut vit = DeviceVit::<D, T>::new(dev, model)?;
    if let Some(on) = env_switch("CLCA_PRUNE_FIRST")? {
        vit.set_prune_first(on);
    }
    match std::env::var("CLCA_ATTENTION").as_deref() {
        Ok("gemm") => vit.set_attention(AttentionPath::Gemm)?,
        Ok("fused") => vit.set_attention(AttentionPath::Fused)?,
        Ok("fused-wide") => vit.set_attention(AttentionPath::FusedWide)?,
        Ok(other) if !other.is_empty() => {
            return Err(clca::Error::InvalidArgument {
                arg: "CLCA_ATTENTION",
                value: other.into(),
                why: "must be `gemm`, `fused` or `fused-wide` (or unset: the default path)".into(),
            })
        }
        _ => {}
    }
    Ok(vit)
}

/// An on/off environment switch: `1` / `0`, or unset (`None`); anything else is an error.
fn env_switch(name: &'static str) -> clca::Result<Option<bool>> {
    match std::env::var(name).as_deref() {
        Ok("1") => Ok(Some(true)),
        Ok("0") => Ok(Some(false)),
        Ok("") | Err(_) => Ok(None),
        Ok(other) => Err(clca::Error::InvalidArgument {
            arg: name,
            value: other.into(),
            why: "must be `1` or `0` (or unset: the default)".into(),
        }),
    }
}

/// "fused attention" or "GEMM attention".
fn attention_name(p: AttentionPath) -> &'static str {
    match p {
        AttentionPath::Fused => "fused attention",
        AttentionPath::FusedWide => "fused attention (128-query tiles)",
        AttentionPath::Gemm => "GEMM attention",
    }
}

impl<D: Device, T: Element> Engine for DevEngine<'_, D, T> {
    fn describe(&self) -> String {
        let att = attention_name(self.vit.attention_path());
        format!("{} {}, {att}", self.label, T::DTYPE)
    }
    fn stage(&mut self, images: &[f32]) -> clca::Result<()> {
        if images.len() != self.images.len() {
            return Err(clca::Error::Shape {
                arg: "images",
                expected: format!("{} elements", self.images.len()),
                got: format!("{} elements", images.len()),
            });
        }
        self.dev.write(&mut self.images, images)
    }
    fn run(&mut self, trace: Option<&mut Trace>) -> clca::Result<()> {
        self.vit
            .forward(self.dev, &mut self.ws, &self.images, trace)?;
        self.dev.synchronize()
    }
    fn logits(&self) -> clca::Result<Vec<f32>> {
        self.vit.logits(self.dev, &self.ws)
    }
    fn set_profile(&mut self, p: Option<Profile>) -> bool {
        self.ws.set_profile(p);
        true
    }
    fn take_profile(&mut self) -> Option<Profile> {
        self.ws.take_profile()
    }
}

/// A [`DevEngine`] for `dtype`.
pub fn device_engine<'a, D: Device>(
    dev: &'a D,
    label: &str,
    model: &Vit,
    batch: usize,
    dtype: DtypeArg,
) -> clca::Result<Box<dyn Engine + 'a>> {
    Ok(match dtype {
        DtypeArg::F32 => Box::new(DevEngine::<D, f32>::new(dev, label, model, batch)?),
        DtypeArg::F16 => Box::new(DevEngine::<D, f16>::new(dev, label, model, batch)?),
        DtypeArg::Bf16 => Box::new(DevEngine::<D, bf16>::new(dev, label, model, batch)?),
    })
}

/// The GPU forward captured once as a CUDA graph and replayed at each run
/// (`clca forward --cuda-graph`): images, logits and every activation live in buffers made
/// here, whose addresses the graph holds.
#[cfg(feature = "cuda")]
pub struct GraphEngine<'a, T: Element> {
    // First, so that it is destroyed before the buffers it refers to are freed.
    graph: clca::cuda::Graph,
    dev: &'a clca::cuda::CudaDevice,
    label: String,
    attention: AttentionPath,
    images: clca::cuda::CudaBuf<f32>,
    logits: clca::cuda::CudaBuf<T>,
    _workspace: clca::cuda::CudaBuf<u8>,
}

#[cfg(feature = "cuda")]
impl<'a, T: Element> GraphEngine<'a, T> {
    pub fn new(
        dev: &'a clca::cuda::CudaDevice,
        label: &str,
        model: &Vit,
        batch: usize,
    ) -> clca::Result<Self> {
        let vit = device_vit::<_, T>(dev, model)?;
        let c = &model.cfg;
        let len = |what, per: usize| batch.checked_mul(per).ok_or(clca::Error::Overflow { what });
        let images = dev.zeros::<f32>(len("images", c.in_chans * c.img_size * c.img_size)?)?;
        let logits = dev.zeros::<T>(len("logits", c.num_classes)?)?;
        let bytes = vit.workspace_bytes(batch)?;
        // cudaMalloc memory: aligned beyond WORKSPACE_ALIGN.
        let workspace = dev.zeros::<u8>(bytes)?;
        // SAFETY: the three buffers are this device's, sized above, and owned by the engine,
        // which drops the graph first.
        let graph = unsafe {
            vit.capture_forward(
                dev,
                batch,
                images.addr(),
                logits.addr(),
                workspace.addr(),
                bytes,
            )?
        };
        Ok(GraphEngine {
            graph,
            dev,
            label: label.to_string(),
            attention: vit.attention_path(),
            images,
            logits,
            _workspace: workspace,
        })
    }
}

#[cfg(feature = "cuda")]
impl<T: Element> Engine for GraphEngine<'_, T> {
    fn describe(&self) -> String {
        format!(
            "{} {}, {}, CUDA graph of {} nodes",
            self.label,
            T::DTYPE,
            attention_name(self.attention),
            self.graph.nodes()
        )
    }
    fn stage(&mut self, images: &[f32]) -> clca::Result<()> {
        self.dev.write(&mut self.images, images)
    }
    fn run(&mut self, trace: Option<&mut Trace>) -> clca::Result<()> {
        if trace.is_some() {
            return Err(clca::Error::Unsupported {
                what: "a trace of a CUDA-graph forward".into(),
                supported: "--trace without --cuda-graph".into(),
            });
        }
        // SAFETY: the engine owns every buffer the graph touches; the images were written on
        // the same stream before this launch.
        unsafe { self.dev.launch_graph(&self.graph)? };
        self.dev.synchronize()
    }
    fn logits(&self) -> clca::Result<Vec<f32>> {
        Ok(self
            .dev
            .download(&self.logits)?
            .iter()
            .map(|x| x.to_f32())
            .collect())
    }
}

/// [`with_graph_engine`] when `graph` (`--cuda-graph`), else [`with_engine`].
pub fn with_engine_or_graph<R>(
    graph: bool,
    device: DeviceArg,
    dtype: DtypeArg,
    model: &Vit,
    batch: usize,
    f: impl FnOnce(&mut dyn Engine) -> CliResult<R>,
) -> CliResult<R> {
    if graph {
        with_graph_engine(device, dtype, model, batch, f)
    } else {
        with_engine(device, dtype, model, batch, f)
    }
}

/// A [`GraphEngine`] for `dtype`, handed to `f` (`--cuda-graph`): CUDA only.
fn with_graph_engine<R>(
    device: DeviceArg,
    dtype: DtypeArg,
    model: &Vit,
    batch: usize,
    f: impl FnOnce(&mut dyn Engine) -> CliResult<R>,
) -> CliResult<R> {
    if !matches!(device, DeviceArg::Cuda | DeviceArg::Auto) {
        return Err(CliError::input(format!(
            "--cuda-graph runs on a GPU only (got --device {})",
            device.as_str()
        ))
        .hint("use --device cuda, or drop --cuda-graph"));
    }
    clca::vit::device::graph_supported(&model.cfg).ctx("--cuda-graph")?;
    #[cfg(feature = "cuda")]
    {
        let dev = open_cuda()?;
        let label = format!("CUDA on {}", dev.name());
        fn boxed<'a, E: Engine + 'a>(e: E) -> Box<dyn Engine + 'a> {
            Box::new(e)
        }
        let mut e = match dtype {
            DtypeArg::F32 => GraphEngine::<f32>::new(&dev, &label, model, batch).map(boxed),
            DtypeArg::F16 => GraphEngine::<f16>::new(&dev, &label, model, batch).map(boxed),
            DtypeArg::Bf16 => GraphEngine::<bf16>::new(&dev, &label, model, batch).map(boxed),
        }
        .ctx("capturing the forward as a CUDA graph")?;
        f(e.as_mut())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (dtype, batch, f);
        Err(no_cuda_build())
    }
}

/// Opens GPU 0, or says why not. CLCA_BIAS_EPILOGUE=0 turns cuBLASLt's bias epilogue off
/// (side-by-side timing).
#[cfg(feature = "cuda")]
pub fn open_cuda() -> CliResult<clca::cuda::CudaDevice> {
    let dev = clca::cuda::try_default().map_err(|why| {
        CliError::input(format!("cannot use CUDA: {why}"))
            .hint("use --device cpu, or --device shim to run the CUDA sources on the CPU")
    })?;
    if let Some(on) = env_switch("CLCA_BIAS_EPILOGUE")? {
        dev.set_bias_epilogue(on);
    }
    Ok(dev)
}

/// Why CUDA cannot run in this build.
#[cfg(not(feature = "cuda"))]
pub fn no_cuda_build() -> CliError {
    CliError::input("this build of clca has no CUDA backend").hint(
        "rebuild with `cargo build --release --features cuda`, or use --device cpu / --device shim",
    )
}

/// The CPU engine (f32 only) for `model` at `batch`, handed to `f`.
fn with_cpu<R>(
    dtype: DtypeArg,
    model: &Vit,
    batch: usize,
    f: impl FnOnce(&mut dyn Engine) -> CliResult<R>,
) -> CliResult<R> {
    if dtype != DtypeArg::F32 {
        return Err(CliError::input(format!(
            "the CPU forward runs in f32 only (got --dtype {})",
            dtype.as_str()
        ))
        .hint("drop --dtype, or use --device cuda (or --device shim) for f16/bf16"));
    }
    let mut e = CpuEngine::new(model, batch).ctx("allocating the CPU workspace")?;
    f(&mut e)
}

/// Builds the engine `device`/`dtype` for `model` at `batch` and hands it to `f`.
pub fn with_engine<R>(
    device: DeviceArg,
    dtype: DtypeArg,
    model: &Vit,
    batch: usize,
    f: impl FnOnce(&mut dyn Engine) -> CliResult<R>,
) -> CliResult<R> {
    match device {
        DeviceArg::Cpu => with_cpu(dtype, model, batch, f),
        DeviceArg::Shim => {
            let mut e = device_engine(&HostShim, "host shim", model, batch, dtype)
                .ctx("preparing the host-shim forward")?;
            f(e.as_mut())
        }
        DeviceArg::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let dev = open_cuda()?;
                let label = format!("CUDA on {}", dev.name());
                let mut e = device_engine(&dev, &label, model, batch, dtype)
                    .ctx("uploading the model to the GPU")?;
                f(e.as_mut())
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = f;
                Err(no_cuda_build())
            }
        }
        DeviceArg::Auto => {
            #[cfg(feature = "cuda")]
            let why = match clca::cuda::try_default() {
                Ok(dev) => {
                    let label = format!("CUDA on {}", dev.name());
                    let mut e = device_engine(&dev, &label, model, batch, dtype)
                        .ctx("uploading the model to the GPU")?;
                    return f(e.as_mut());
                }
                Err(why) => why,
            };
            #[cfg(not(feature = "cuda"))]
            let why = "this build has no CUDA backend".to_string();
            if dtype != DtypeArg::F32 {
                return Err(CliError::input(format!(
                    "--device auto found no GPU ({why}), and the CPU forward runs in f32 only (got --dtype {})",
                    dtype.as_str()
                ))
                .hint("drop --dtype to fall back to the CPU, or use --device shim for f16/bf16 on the CPU"));
            }
            eprintln!("note: --device auto: no GPU ({why}); running on the CPU");
            with_cpu(dtype, model, batch, f)
        }
    }
}

/// Seconds of each timed forward.
#[derive(Clone, Debug)]
pub struct Timing {
    pub samples: Vec<f64>,
}

impl Timing {
    pub fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
        }
    }
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }
    pub fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// `warmup` untimed forwards of the staged images, then `runs` timed ones.
pub fn time_runs(e: &mut dyn Engine, warmup: usize, runs: usize) -> CliResult<Timing> {
    for _ in 0..warmup {
        e.run(None).ctx("forward (warm-up)")?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        e.run(None).ctx("forward")?;
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok(Timing { samples })
}

/// A trace holding only `logits`.
pub fn logits_trace(logits: Vec<f32>, batch: usize, classes: usize) -> Trace {
    Trace {
        tensors: vec![(
            "logits".to_string(),
            vec![batch, classes],
            TraceData::F32(logits),
        )],
    }
}

/// The most `--threads` accepted (each is an OS thread with its own stack).
pub const MAX_THREADS: usize = 1024;

/// Sets the rayon global pool to `n` threads (when given); returns the pool's thread count.
pub fn init_threads(n: Option<usize>) -> CliResult<usize> {
    if let Some(n) = n {
        if n == 0 {
            return Err(CliError::input("--threads 0: need at least one thread")
                .hint("leave --threads out to use every core"));
        }
        if n > MAX_THREADS {
            return Err(
                CliError::input(format!("--threads {n}: at most {MAX_THREADS}"))
                    .hint("leave --threads out to use every core"),
            );
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| CliError::failed(format!("cannot start {n} rayon threads: {e}")))?;
    }
    Ok(rayon::current_num_threads())
}

/// Indices of the `k` largest values of `row`, largest first (ties: lower index first; NaN
/// last).
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (row[a], row[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => y.total_cmp(&x).then(a.cmp(&b)),
        }
    });
    idx.truncate(k);
    idx
}

/// Softmax of one row (f64 accumulation).
pub fn softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, f32::NAN, -1.0], 3), vec![1, 2, 0]);
        assert_eq!(top_k(&[0.5], 5), vec![0]);
    }

    #[test]
    fn timing_stats() {
        let t = Timing {
            samples: vec![3.0, 1.0, 2.0, 10.0],
        };
        assert_eq!(t.median(), 2.5);
        assert_eq!(t.min(), 1.0);
        assert_eq!(t.max(), 10.0);
        let s = softmax(&[0.0, 0.0]);
        assert!((s[0] - 0.5).abs() < 1e-12);
    }
}
