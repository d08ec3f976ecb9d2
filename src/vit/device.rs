//! The forward on a [`Device`] (CUDA, or the host shim in tests): the same steps as
//! [`super::cpu`], one kernel launch each, no host round trip (the selections stay on the
//! device; every length comes from the plan). Precision follows the authors' autocast: the
//! residual stream, scores, cache and selections are f32; GEMMs, attention and the head run in
//! `T` with f32 accumulation. ToMe's metric is taken from the qkv buffer (`T`) in f32, its merge
//! runs on the f32 stream, and its token sizes are f32.
use super::weights::HeadWeights;
use super::{Trace, Vit};
use crate::error::{mul, to_u32};
use crate::kernels::{Arg, Launch};
use crate::ops::cla_head::DeviceClaHead;
use crate::plan::Reduction;
use crate::{Buffer, DType, Device, Element, Error, Result};

const EW_THREADS: u32 = 256;
/// The attention's f32 score buffer holds at most this many bytes (images go in chunks).
const ATTN_SCORE_BYTES: usize = 256 << 20;
const EW_GRID_CAP: usize = 1 << 16;
use crate::ops::attention::{FlashQueries, FlashTile};

/// How the device forward computes attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    /// One fused kernel (kernels/flash.cu: tensor cores, online softmax, nothing n×n in memory):
    /// the default for f16/bf16 storage at head dimension 32, 64 or 128.
    Fused,
    /// The fused kernel with 128 queries a block (two 16-row tiles a warp; head dimensions 32
    /// and 64): an alternative for A/B timing on a GPU (`CLCA_ATTENTION=fused-wide`).
    FusedWide,
    /// Batched GEMMs (cuBLAS) around split/softmax/merge kernels, with the n×n scores in f32:
    /// every dtype and head dimension; the only path for f32, so f32 stays exact to the CPU.
    Gemm,
}

impl AttentionPath {
    /// The fused kernel's tile, for the fused paths.
    pub fn flash_tile(self) -> Option<FlashTile> {
        match self {
            AttentionPath::Fused => Some(FlashTile::Q64),
            AttentionPath::FusedWide => Some(FlashTile::Q128),
            AttentionPath::Gemm => None,
        }
    }

    /// What a model gets by default in storage `dtype`.
    pub fn default_for(cfg: &super::VitConfig, dtype: DType) -> Self {
        if FlashTile::Q64.check(dtype, cfg.head_dim()).is_ok() {
            AttentionPath::Fused
        } else {
            AttentionPath::Gemm
        }
    }
}

/// A bias the GEMM adds in its epilogue where the device can ([`Device::gemm_nt_bias`], in
/// `T`, as PyTorch's autocast casts it), else a pass after it (in f32).
struct Bias<D: Device, T: Element> {
    f32: D::Buf<f32>,
    t: D::Buf<T>,
}

struct DevBlock<D: Device, T: Element> {
    n1: (D::Buf<f32>, D::Buf<f32>),
    qkv_w: D::Buf<T>,
    qkv_b: Option<Bias<D, T>>,
    proj_w: D::Buf<T>,
    proj_b: D::Buf<f32>,
    n2: (D::Buf<f32>, D::Buf<f32>),
    fc1_w: D::Buf<T>,
    fc1_b: D::Buf<f32>,
    fc2_w: D::Buf<T>,
    fc2_b: D::Buf<f32>,
    ls1: Option<D::Buf<f32>>,
    ls2: Option<D::Buf<f32>>,
}

enum DevHead<D: Device, T: Element> {
    Linear {
        norm: (D::Buf<f32>, D::Buf<f32>),
        w: D::Buf<T>,
        b: D::Buf<f32>,
    },
    Cla(DeviceClaHead<D, T>),
}

/// A [`Vit`] with its weights on a device, in storage type `T`.
pub struct DeviceVit<D: Device, T: Element> {
    model: Vit,
    attention: AttentionPath,
    /// Top-K / EViT blocks select before the projection (`prune_then_project`); see
    /// [`Self::set_prune_first`].
    prune_first: bool,
    patch_w: D::Buf<T>,
    patch_b: Option<Bias<D, T>>,
    cls: D::Buf<f32>,
    clr: D::Buf<f32>,
    pos: D::Buf<f32>,
    norm_pre: Option<(D::Buf<f32>, D::Buf<f32>)>,
    blocks: Vec<DevBlock<D, T>>,
    method: DevMethod<D>,
    head: DevHead<D, T>,
}

#[path = "device_methods.rs"]
mod methods;
use methods::{DevMethod, PreBufs};

/// The activations of one forward at a given batch, sized from the plan.
pub struct DeviceWorkspace<D: Device, T: Element> {
    batch: usize,
    attention: AttentionPath,
    x: D::Buf<f32>,
    x2: D::Buf<f32>,
    h: D::Buf<T>,
    qkv: D::Buf<T>,
    attn: D::Buf<T>,
    mlp: D::Buf<T>,
    patches: D::Buf<T>,
    patch_out: D::Buf<T>,
    cls_probs: D::Buf<f32>,
    /// The GEMM path's attention operands q, k [B, H, n, hd] and vᵀ [B, H, hd, n], one after
    /// the other (one element each on the fused path, like `att_s` and `att_p`).
    heads3: D::Buf<T>,
    /// Scores S (f32) and probabilities P (T) [chunk, H, n, n] for `att_chunk` images at a time.
    att_s: D::Buf<f32>,
    att_p: D::Buf<T>,
    att_chunk: usize,
    scores: D::Buf<f32>,
    idx: D::Buf<u32>,
    compl: D::Buf<u32>,
    /// EViT only (one element otherwise): the projection's bias factor per pruned row
    /// [batch, k + 2] ([`crate::ops::prune::evit_bias_scale`]).
    bias_scale: D::Buf<f32>,
    cache: D::Buf<f32>,
    taps: D::Buf<T>,
    hidden: D::Buf<T>,
    cls_h: D::Buf<T>,
    /// ToMe only (one element otherwise): token sizes [batch, L] and the merge's output.
    sizes: D::Buf<f32>,
    sizes2: D::Buf<f32>,
    tome: TomeBufs<D>,
    /// Logits [batch, classes] in `T` after [`DeviceVit::forward`].
    pub logits: D::Buf<T>,
    /// Per block, the buffers of a reduction before it.
    pre: Vec<Option<PreBufs<D>>>,
    /// DynamicViT only (one element otherwise): keep decisions δ [batch, L] per token (cls at
    /// 0), the next δ, all-ones to reset it, zeros for recovered tokens.
    delta: D::Buf<f32>,
    delta2: D::Buf<f32>,
    ones: D::Buf<f32>,
    zeros: D::Buf<f32>,
    /// ATS: its sampling buffers (batch 1), and at batch > 1 the batch-1 workspace each image
    /// runs in, with its image.
    ats: Option<methods::AtsBufs<D>>,
    single: Option<Box<DeviceWorkspace<D, T>>>,
    img1: Option<D::Buf<f32>>,
    /// The configuration and plan the buffers were sized for; [`DeviceVit::forward`] refuses
    /// another (the kernels index the buffers by the plan's lengths).
    model: (super::VitConfig, crate::plan::SeqPlan),
    /// Per-phase times while set ([`DeviceWorkspace::set_profile`]); each mark synchronizes.
    profile: Option<super::profile::Profile>,
}

/// ToMe's matching and merge plan at the longest sequence (contract in [`crate::ops::tome`]);
/// each merge uses the compact prefix of its (n, r).
struct TomeBufs<D: Device> {
    metric: D::Buf<f32>,
    node_max: D::Buf<f32>,
    node_idx: D::Buf<u32>,
    src: D::Buf<u32>,
    unm: D::Buf<u32>,
    grouped: D::Buf<u32>,
    offsets: D::Buf<u32>,
}

use crate::dtype::from_f32_slice as cvt;

/// The device memory a [`DeviceWorkspace`] of `model` at `batch` in storage `dtype` takes when
/// carved out of one caller allocation (every buffer rounded up to
/// [`crate::device::WORKSPACE_ALIGN`]; the allocation itself must be aligned to it, as
/// cudaMalloc's are). Pure arithmetic: the calls that build a workspace, counted, with no
/// device and no memory behind them.
/// Sized for the model's default [`AttentionPath`] (what the C ABI always uses).
pub fn workspace_bytes(model: &Vit, dtype: DType, batch: usize) -> Result<usize> {
    workspace_bytes_for(
        model,
        dtype,
        batch,
        AttentionPath::default_for(&model.cfg, dtype),
    )
}

fn workspace_bytes_for(
    model: &Vit,
    dtype: DType,
    batch: usize,
    path: AttentionPath,
) -> Result<usize> {
    let s = Sizer::default();
    match dtype {
        DType::F32 => drop(DeviceWorkspace::<Sizer, f32>::new(&s, model, batch, path)?),
        DType::F16 => drop(DeviceWorkspace::<Sizer, crate::f16>::new(
            &s, model, batch, path,
        )?),
        DType::BF16 => drop(DeviceWorkspace::<Sizer, crate::bf16>::new(
            &s, model, batch, path,
        )?),
    }
    Ok(s.bytes.get())
}

/// A [`Device`] whose buffers are lengths: counts what would be allocated (see
/// [`workspace_bytes`]); it runs nothing.
#[derive(Default)]
struct Sizer {
    bytes: std::cell::Cell<usize>,
}

struct SizedBuf<T> {
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T> Buffer<T> for SizedBuf<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn addr(&self) -> u64 {
        0
    }
    fn addr_mut(&mut self) -> u64 {
        0
    }
}

impl Device for Sizer {
    type Buf<T: bytemuck::Pod> = SizedBuf<T>;
    fn name(&self) -> String {
        "workspace sizer".into()
    }
    fn zeros<T: bytemuck::Pod>(&self, len: usize) -> Result<SizedBuf<T>> {
        let n = crate::device::workspace_granule(mul(
            "buffer bytes",
            &[len, std::mem::size_of::<T>()],
        )?)?;
        let total = self.bytes.get().checked_add(n).ok_or(Error::Overflow {
            what: "workspace bytes",
        })?;
        self.bytes.set(total);
        Ok(SizedBuf {
            len,
            _t: std::marker::PhantomData,
        })
    }
    fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> Result<SizedBuf<T>> {
        self.zeros(data.len())
    }
    fn write<T: bytemuck::Pod>(&self, _: &mut SizedBuf<T>, _: &[T]) -> Result<()> {
        Ok(())
    }
    fn download<T: bytemuck::Pod>(&self, _: &SizedBuf<T>) -> Result<Vec<T>> {
        Err(self.runs_nothing())
    }
    unsafe fn launch(&self, _: &Launch) -> Result<()> {
        Err(self.runs_nothing())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

impl Sizer {
    fn runs_nothing(&self) -> Error {
        Error::Unsupported {
            what: "running work on the workspace sizer".into(),
            supported: "sizing only".into(),
        }
    }
}

#[cfg(feature = "cuda")]
impl<T: Element> DeviceVit<crate::cuda::CudaDevice, T> {
    /// A workspace for `batch` images carved out of the caller's `bytes` bytes of device memory
    /// at `ptr` (at least [`workspace_bytes`]): nothing is allocated, every buffer is zeroed.
    ///
    /// # Safety
    /// As [`crate::cuda::CudaDevice::with_arena`]: `[ptr, ptr + bytes)` is device memory of
    /// `dev`'s context, aligned to [`crate::device::WORKSPACE_ALIGN`], and stays allocated and
    /// unused by others while the workspace is used.
    pub unsafe fn workspace_in(
        &self,
        dev: &crate::cuda::CudaDevice,
        batch: usize,
        ptr: u64,
        bytes: usize,
    ) -> Result<DeviceWorkspace<crate::cuda::CudaDevice, T>> {
        // The address first: a misaligned pointer is the caller's real error whatever its
        // length (the first GPU run's `cuda_engine_entry` failure was this order).
        crate::cuda::check_arena_ptr(ptr)?;
        let need = workspace_bytes_for(&self.model, T::DTYPE, batch, self.attention)?;
        if bytes < need {
            return Err(Error::InvalidArgument {
                arg: "workspace_bytes",
                value: bytes.to_string(),
                why: format!("batch {batch} in {} needs {need} bytes", T::DTYPE),
            });
        }
        // SAFETY: forwarded from the caller.
        unsafe { dev.with_arena(ptr, bytes, || self.workspace(dev, batch)) }
    }

    /// The engine entry: one forward of `batch` images at the device address `images`
    /// (f32 [batch, 3, S, S], normalized) into `logits` (`T` [batch, classes]), queued on the
    /// caller's `stream`, every activation in the caller's workspace (rebuilt and zeroed on the
    /// stream at each call, so the engine may use that memory for other work in between).
    /// Allocates no device memory once the modules are loaded
    /// ([`crate::cuda::CudaDevice::preload`]); cuBLAS may still take its own workspace on a
    /// stream it has not seen. Returns once the work is queued, except ATS, which reads one
    /// sample count per reduction layer back and so synchronizes `stream` there.
    ///
    /// # Safety
    /// `images` holds batch·3·S·S f32 and `logits` batch·classes `T` of `dev`'s context; the
    /// workspace as in [`Self::workspace_in`]; `stream` as in
    /// [`crate::cuda::CudaDevice::with_stream`]. All stay live until the queued work finishes.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn forward_raw(
        &self,
        dev: &crate::cuda::CudaDevice,
        batch: usize,
        images: u64,
        logits: u64,
        workspace: u64,
        workspace_bytes: usize,
        stream: *mut std::ffi::c_void,
    ) -> Result<()> {
        let (n_img, n_logits) = self.io_sizes(batch, images, logits)?;
        // SAFETY: the caller guarantees the stream, the workspace and both tensors.
        unsafe {
            dev.with_stream(stream, || {
                let mut ws = self.workspace_in(dev, batch, workspace, workspace_bytes)?;
                let img = dev.view::<f32>(images, n_img);
                self.forward(dev, &mut ws, &img, None)?;
                dev.copy_dtod(logits, ws.logits.addr(), n_logits)
            })
        }
    }

    /// The images' elements and the logits' bytes at `batch`, both addresses non-null.
    fn io_sizes(&self, batch: usize, images: u64, logits: u64) -> Result<(usize, usize)> {
        let c = &self.model.cfg;
        for (arg, p) in [("images", images), ("logits", logits)] {
            if p == 0 {
                return Err(Error::InvalidArgument {
                    arg,
                    value: "null".into(),
                    why: "must be a device address".into(),
                });
            }
        }
        Ok((
            mul("images", &[batch, c.in_chans, c.img_size, c.img_size])?,
            mul(
                "logits bytes",
                &[batch, c.num_classes, std::mem::size_of::<T>()],
            )?,
        ))
    }

    /// [`Self::forward_raw`] captured once as a CUDA graph ([`crate::cuda::CudaDevice::capture`],
    /// which runs it once uncaptured first). Replay it with
    /// [`crate::cuda::CudaDevice::launch_graph`] after writing new images to `images`; the
    /// logits land in `logits`. The workspace is built and zeroed once, here, not at each
    /// replay: it belongs to the graph. One graph per (model, batch, addresses). ATS reads a
    /// sample count back to the host at each reduction layer, so it cannot be captured.
    ///
    /// # Safety
    /// As [`Self::forward_raw`] (without the stream), and the three regions stay allocated,
    /// and the workspace unused by others, while the graph is used.
    pub unsafe fn capture_forward(
        &self,
        dev: &crate::cuda::CudaDevice,
        batch: usize,
        images: u64,
        logits: u64,
        workspace: u64,
        workspace_bytes: usize,
    ) -> Result<crate::cuda::Graph> {
        graph_supported(&self.model.cfg)?;
        let (n_img, n_logits) = self.io_sizes(batch, images, logits)?;
        // SAFETY: the caller guarantees the workspace and both tensors.
        let ws = unsafe { self.workspace_in(dev, batch, workspace, workspace_bytes)? };
        // SAFETY: as above.
        let img = unsafe { dev.view::<f32>(images, n_img) };
        let ws = std::cell::RefCell::new(ws);
        dev.capture(|| {
            let mut ws = ws.borrow_mut();
            self.forward(dev, &mut ws, &img, None)?;
            // SAFETY: `logits` holds n_logits bytes (the caller); ws.logits at least as many.
            unsafe { dev.copy_dtod(logits, ws.logits.addr(), n_logits) }
        })
    }
}

/// Whether a forward of `cfg` can be captured as a CUDA graph: every reduction but ATS (whose
/// per-layer sample count is read back to the host to size the next layer).
pub fn graph_supported(cfg: &super::VitConfig) -> Result<()> {
    if cfg.reduction == Reduction::Ats {
        return Err(Error::Unsupported {
            what: "capturing an ATS forward as a CUDA graph (it reads each layer's sample count back to the host)".into(),
            supported: "every other reduction method; run ATS without a graph".into(),
        });
    }
    Ok(())
}

impl<D: Device, T: Element> DeviceWorkspace<D, T> {
    /// The batch this workspace was sized for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Profiles the following forwards into `p` (`None`: stop). Every phase then ends with a
    /// device synchronize, so the work is charged to the phase that queued it; the gaps this
    /// puts between launches make the total a little longer than an unprofiled forward.
    pub fn set_profile(&mut self, p: Option<super::profile::Profile>) {
        self.profile = p;
    }

    /// The profile so far, leaving profiling off.
    pub fn take_profile(&mut self) -> Option<super::profile::Profile> {
        self.profile.take()
    }

    /// With a profile: waits for the queued work, then charges it to `(block, phase)`.
    fn mark(&mut self, dev: &D, block: Option<usize>, phase: &'static str) -> Result<()> {
        if let Some(p) = self.profile.as_mut() {
            dev.synchronize()?;
            p.mark(block, phase);
        }
        Ok(())
    }

    /// Every buffer of a forward of `model` at `batch`, sized from the plan.
    fn new(dev: &D, model: &Vit, batch: usize, attention: AttentionPath) -> Result<Self> {
        if batch == 0 {
            return Err(crate::error::invalid("batch", 0, "must be positive"));
        }
        let c = &model.cfg;
        let l = model.plan.max_len;
        let d = c.embed_dim;
        let p = c.num_patches();
        let kp = mul("patches", &[c.in_chans, c.patch_size, c.patch_size])?;
        let hidden = match &model.weights.head {
            HeadWeights::Cla(h) => h.hidden(),
            HeadWeights::Linear { .. } => 1,
        };
        let dyvit = c.reduction == Reduction::DynamicVit;
        let dy_len = |dims: &[usize]| {
            if dyvit {
                mul("delta", dims)
            } else {
                Ok(1)
            }
        };
        let tome = c.reduction == Reduction::ToMe;
        let tome_len = |dims: &[usize]| {
            if tome {
                mul("tome", dims)
            } else {
                Ok(1)
            }
        };
        // The n×n scores of all heads of `chunk` images at a time, at most ATTN_SCORE_BYTES.
        let per_image = mul("attention scores", &[c.num_heads, l, l, 4])?;
        let chunk = (ATTN_SCORE_BYTES / per_image.max(1)).clamp(1, batch.max(1));
        let gemm = attention == AttentionPath::Gemm;
        let gemm_len = |what, dims: &[usize]| if gemm { mul(what, dims) } else { Ok(1) };
        Ok(DeviceWorkspace {
            batch,
            attention,
            x: dev.zeros(mul("x", &[batch, l, d])?)?,
            x2: dev.zeros(mul("x", &[batch, l, d])?)?,
            h: dev.zeros(mul("h", &[batch, l, d])?)?,
            qkv: dev.zeros(mul("qkv", &[batch, l, 3, d])?)?,
            attn: dev.zeros(mul("attn", &[batch, l, d])?)?,
            mlp: dev.zeros(mul("mlp", &[batch, l, c.mlp_hidden])?)?,
            patches: dev.zeros(mul("patches", &[batch, p, kp])?)?,
            patch_out: dev.zeros(mul("patch_out", &[batch, p, d])?)?,
            cls_probs: dev.zeros(mul("probs", &[batch, c.num_heads, l])?)?,
            heads3: dev.zeros(gemm_len("heads", &[3, batch, l, d])?)?,
            att_s: dev.zeros(gemm_len("attention scores", &[chunk, c.num_heads, l, l])?)?,
            att_p: dev.zeros(gemm_len("attention probs", &[chunk, c.num_heads, l, l])?)?,
            att_chunk: chunk,
            scores: dev.zeros(mul("scores", &[batch, l])?)?,
            idx: dev.zeros(mul("idx", &[batch, l])?)?,
            compl: dev.zeros(mul("compl", &[batch, l])?)?,
            bias_scale: dev.zeros(if c.reduction == Reduction::EVit {
                mul("bias scale", &[batch, l])?
            } else {
                1
            })?,
            cache: dev.zeros(mul("cache", &[batch, model.plan.cache_cap.max(1), d])?)?,
            taps: dev.zeros(mul("taps", &[batch, d, model.plan.taps.max(1)])?)?,
            hidden: dev.zeros(mul("hidden", &[batch, hidden])?)?,
            cls_h: dev.zeros(mul("cls", &[batch, d])?)?,
            sizes: dev.zeros(tome_len(&[batch, l])?)?,
            sizes2: dev.zeros(tome_len(&[batch, l])?)?,
            tome: TomeBufs {
                metric: dev.zeros(tome_len(&[batch, l, c.head_dim()])?)?,
                node_max: dev.zeros(tome_len(&[batch, l.div_ceil(2)])?)?,
                node_idx: dev.zeros(tome_len(&[batch, l.div_ceil(2)])?)?,
                src: dev.zeros(tome_len(&[batch, l / 2])?)?,
                unm: dev.zeros(tome_len(&[batch, l.div_ceil(2)])?)?,
                grouped: dev.zeros(tome_len(&[batch, l / 2])?)?,
                offsets: dev.zeros(tome_len(&[batch, l / 2 + 1])?)?,
            },
            logits: dev.zeros(mul("logits", &[batch, c.num_classes])?)?,
            pre: methods::pre_buffers(dev, model, batch)?,
            delta: dev.zeros(dy_len(&[batch, l])?)?,
            delta2: dev.zeros(dy_len(&[batch, l])?)?,
            ones: dev.upload(&crate::error::try_filled(
                "ones",
                dy_len(&[batch, l])?,
                1f32,
            )?)?,
            zeros: dev.zeros(dy_len(&[batch, model.plan.cache_cap.max(1)])?)?,
            ats: methods::ats_buffers(dev, model)?,
            single: if c.reduction == Reduction::Ats && batch > 1 {
                Some(Box::new(Self::new(dev, model, 1, attention)?))
            } else {
                None
            },
            img1: if c.reduction == Reduction::Ats && batch > 1 {
                Some(dev.zeros(mul("image", &[c.in_chans, c.img_size, c.img_size])?)?)
            } else {
                None
            },
            model: (c.clone(), model.plan.clone()),
            profile: None,
        })
    }
}

/// y = act(y + bias) on `rows`×`n` elements of `dtype`; act 0 none, 1 GELU, 2 exp.
///
/// # Safety
/// `y` holds rows·n elements of `dtype` and `bias` (or 0) n f32.
unsafe fn bias_act_dt<D: Device>(
    dev: &D,
    dtype: DType,
    y: u64,
    rows: usize,
    n: usize,
    bias: u64,
    act: u32,
) -> Result<()> {
    let args = vec![
        Arg::Ptr(y),
        Arg::I64(rows as i64),
        Arg::U32(to_u32("n", n)?),
        Arg::Ptr(bias),
        Arg::U32(act),
    ];
    // SAFETY: forwarded from the caller.
    unsafe {
        go(
            dev,
            "vit",
            "bias_act",
            dtype,
            ew_grid(rows * n)?,
            [EW_THREADS, 1, 1],
            0,
            args,
        )
    }
}

/// Launches `module::op_{dtype}`.
///
/// # Safety
/// Every pointer in `args` must cover what the kernel touches for the given geometry.
unsafe fn go<D: Device>(
    dev: &D,
    module: &'static str,
    op: &str,
    dt: DType,
    grid: [u32; 3],
    block: [u32; 3],
    smem: usize,
    args: Vec<Arg>,
) -> Result<()> {
    let l = Launch::new(module, op, dt, grid, block, args)?.with_smem(smem)?;
    // SAFETY: forwarded from the caller.
    unsafe { dev.launch(&l) }
}

fn ew_grid(total: usize) -> Result<[u32; 3]> {
    Ok([
        to_u32(
            "grid",
            total.div_ceil(EW_THREADS as usize).clamp(1, EW_GRID_CAP),
        )?,
        1,
        1,
    ])
}

/// The grid of a kernel that takes `per_block` rows a block and grid-strides past the row-grid
/// cap: `layernorm` 8 (one warp a row, 256 threads), `residual_ln` and `patch_im2col` 1.
fn row_grid(rows: usize, per_block: usize) -> Result<[u32; 3]> {
    Ok([
        to_u32(
            "rows",
            rows.div_ceil(per_block)
                .clamp(1, crate::kernels::ROW_GRID_CAP as usize),
        )?,
        1,
        1,
    ])
}

impl<D: Device, T: Element> DeviceVit<D, T> {
    /// Uploads the weights (GEMM weights in `T`, the rest in f32).
    pub fn new(dev: &D, model: &Vit) -> Result<Self> {
        if !matches!(
            model.cfg.reduction,
            Reduction::None
                | Reduction::TopK
                | Reduction::EVit
                | Reduction::ToMe
                | Reduction::DpcKnn
                | Reduction::Sit
                | Reduction::PatchMerger
                | Reduction::DynamicVit
                | Reduction::Ats
        ) || (model.cfg.reduction == Reduction::Ats && model.cfg.method.ats_batch_padding)
        {
            return Err(Error::Unsupported {
                what: format!(
                    "{}{} on the device forward",
                    model.cfg.reduction.name(),
                    if model.cfg.method.ats_batch_padding {
                        " with the authors' batch padding"
                    } else {
                        ""
                    }
                ),
                supported: "every method on both forwards; ATS's batch padding on the CPU only"
                    .into(),
            });
        }
        let w = &model.weights;
        let up32 = |v: &[f32]| dev.upload(v);
        let upt = |v: &[f32]| dev.upload(&cvt::<T>(v));
        let bias = |v: &[f32]| -> Result<Bias<D, T>> {
            Ok(Bias {
                f32: up32(v)?,
                t: upt(v)?,
            })
        };
        let mut blocks = Vec::with_capacity(w.blocks.len());
        for b in &w.blocks {
            blocks.push(DevBlock {
                n1: (up32(&b.norm1.0)?, up32(&b.norm1.1)?),
                qkv_w: upt(&b.qkv_w)?,
                qkv_b: b.qkv_b.as_deref().map(bias).transpose()?,
                proj_w: upt(&b.proj_w)?,
                proj_b: up32(&b.proj_b)?,
                n2: (up32(&b.norm2.0)?, up32(&b.norm2.1)?),
                fc1_w: upt(&b.fc1_w)?,
                fc1_b: up32(&b.fc1_b)?,
                fc2_w: upt(&b.fc2_w)?,
                fc2_b: up32(&b.fc2_b)?,
                ls1: b.ls1.as_deref().map(up32).transpose()?,
                ls2: b.ls2.as_deref().map(up32).transpose()?,
            });
        }
        let head = match &w.head {
            HeadWeights::Linear { norm, w, b } => DevHead::Linear {
                norm: (up32(&norm.0)?, up32(&norm.1)?),
                w: upt(w)?,
                b: up32(b)?,
            },
            HeadWeights::Cla(h) => DevHead::Cla(DeviceClaHead::new(dev, h)?),
        };
        let hd = model.cfg.head_dim();
        if model.cfg.reduction == Reduction::ToMe && hd > crate::ops::tome::MAX_HEAD_DIM {
            return Err(Error::Plan(format!(
                "head dimension {hd} is beyond ToMe's metric kernels (at most {})",
                crate::ops::tome::MAX_HEAD_DIM
            )));
        }
        Ok(DeviceVit {
            patch_w: upt(&w.patch_w)?,
            patch_b: w.patch_b.as_deref().map(bias).transpose()?,
            cls: up32(&w.cls_token)?,
            clr: up32(if w.clr.is_empty() { &[0.0] } else { &w.clr })?,
            pos: up32(&w.pos_embed)?,
            norm_pre: w
                .norm_pre
                .as_ref()
                .map(|(g, b)| Ok::<_, Error>((up32(g)?, up32(b)?)))
                .transpose()?,
            blocks,
            head,
            method: DevMethod::new(dev, &w.method)?,
            attention: AttentionPath::default_for(&model.cfg, T::DTYPE),
            prune_first: true,
            model: model.clone(),
        })
    }

    /// The attention path of the workspaces made from now on ([`AttentionPath::Fused`] where
    /// this dtype and head dimension have the fused kernel, else an error).
    pub fn set_attention(&mut self, path: AttentionPath) -> Result<()> {
        if let Some(tile) = path.flash_tile() {
            tile.check(T::DTYPE, self.model.cfg.head_dim())?;
        }
        self.attention = path;
        Ok(())
    }

    /// The attention path new workspaces get.
    pub fn attention_path(&self) -> AttentionPath {
        self.attention
    }

    /// The bytes [`DeviceVit::workspace_in`] needs at `batch` on this model's attention path
    /// (as [`workspace_bytes`], which assumes the default path).
    pub fn workspace_bytes(&self, batch: usize) -> Result<usize> {
        workspace_bytes_for(&self.model, T::DTYPE, batch, self.attention)
    }

    /// The model.
    pub fn model(&self) -> &Vit {
        &self.model
    }

    /// Allocates every activation buffer for `batch` images (once; the forward allocates none).
    pub fn workspace(&self, dev: &D, batch: usize) -> Result<DeviceWorkspace<D, T>> {
        DeviceWorkspace::new(dev, &self.model, batch, self.attention)
    }

    /// Whether Top-K and EViT blocks select before the attention's projection and project
    /// only [cls, kept (, fused)] (on by default: the same cls and kept rows, the fused row
    /// within rounding; see `prune_then_project`), or project every token and select after
    /// the residual, in the authors' order (`false`, for side-by-side timing). Forwards read
    /// it as they run (captured graphs: when captured); the workspace does not depend on it.
    pub fn set_prune_first(&mut self, on: bool) {
        self.prune_first = on;
    }

    /// One forward of `images` [batch, 3, S, S] (f32, normalized) into `ws.logits`. With `trace`,
    /// the per-block tensors are downloaded as they are produced (the only host round trips).
    pub fn forward(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        images: &D::Buf<f32>,
        mut trace: Option<&mut Trace>,
    ) -> Result<()> {
        let m = &self.model;
        let c = &m.cfg;
        let b = ws.batch;
        let (d, s, ps, ch) = (c.embed_dim, c.img_size, c.patch_size, c.in_chans);
        if ws.model.0 != *c || ws.model.1 != m.plan {
            return Err(Error::Shape {
                arg: "workspace",
                expected: format!(
                    "a workspace made by this model's `workspace` ({}, {} px, depth {})",
                    c.reduction.name(),
                    c.img_size,
                    c.depth
                ),
                got: "a workspace made for another configuration".into(),
            });
        }
        crate::error::check_len("images", images.len(), mul("images", &[b, ch, s, s])?)?;
        if b == 0 {
            return Ok(());
        }
        if ws.single.is_some() {
            // SAFETY: ws was made by `workspace` for this model.
            return unsafe { self.per_image(dev, ws, images, trace) };
        }
        if let Some(p) = ws.profile.as_mut() {
            dev.synchronize()?;
            p.begin();
        }
        let dt = T::DTYPE;
        let p = c.num_patches();
        let kp = ch * ps * ps;
        let hm = c.mlp_hidden;
        let u = |what, v| to_u32(what, v);
        let bu = u("batch", b)?;
        let cap = m.plan.cache_cap.max(1);
        let f = m.plan.taps.max(1);

        // SAFETY (every launch below): each buffer was sized in `workspace` from the plan for
        // max_len tokens (x, x2, h, qkv, attn, mlp, probs, scores, idx, compl), the cache
        // capacity, the taps and the batch; each launch touches at most the current n ≤ max_len
        // tokens of `b` samples, and the weight buffers hold the checked parameter shapes.
        unsafe {
            go(
                dev,
                "vit",
                "patch_im2col",
                dt,
                row_grid(b * p, 1)?,
                [EW_THREADS, 1, 1],
                0,
                vec![
                    Arg::Ptr(images.addr()),
                    Arg::U32(bu),
                    Arg::U32(u("chans", ch)?),
                    Arg::U32(u("img", s)?),
                    Arg::U32(u("patch", ps)?),
                    Arg::Ptr(ws.patches.addr_mut()),
                ],
            )?;
            self.linear(
                dev,
                ws.patches.addr(),
                b * p,
                kp,
                &self.patch_w,
                d,
                self.patch_b.as_ref(),
                ws.patch_out.addr_mut(),
            )?;
            let n0 = 1 + p + c.num_clr;
            go(
                dev,
                "vit",
                "embed",
                dt,
                ew_grid(b * n0 * d)?,
                [EW_THREADS, 1, 1],
                0,
                vec![
                    Arg::Ptr(ws.patch_out.addr()),
                    Arg::Ptr(self.cls.addr()),
                    Arg::Ptr(self.clr.addr()),
                    Arg::Ptr(self.pos.addr()),
                    Arg::U32(c.no_embed_class as u32),
                    Arg::U32(bu),
                    Arg::U32(u("patches", p)?),
                    Arg::U32(u("num_clr", c.num_clr)?),
                    Arg::U32(u("d", d)?),
                    Arg::Ptr(ws.x.addr_mut()),
                ],
            )?;
            let mut n = n0;
            if let Some((g, be)) = &self.norm_pre {
                self.layernorm::<f32>(dev, ws.x.addr(), b * n, d, d, g, be, ws.x2.addr_mut())?;
                std::mem::swap(&mut ws.x, &mut ws.x2);
            }
            ws.mark(dev, None, "patch embed")?;
            let mut tap = 0;
            // ToMe: sizes exist from the first merge on (all ones, i.e. no bias, before it).
            let mut have_sizes = false;
            let dyvit = c.reduction == Reduction::DynamicVit;
            if dyvit {
                let l = m.plan.max_len;
                dev.launch(&crate::ops::token_cache::copy_launch(
                    DType::F32,
                    ws.ones.addr(),
                    l,
                    0,
                    ws.delta.addr_mut(),
                    n,
                    0,
                    b,
                    n,
                    1,
                )?)?;
            }
            let locs = c.locs();
            let mut pool_end = n0
                - if c.clc.is_some_and(|o| o.pool_clr) {
                    0
                } else {
                    c.num_clr
                };
            for (i, bp) in m.plan.blocks.iter().enumerate() {
                if let Some(pre) = &bp.pre {
                    let j = locs.iter().position(|&l| l == i).unwrap_or(0);
                    n = self.pre_reduce(dev, ws, i, j, pre, trace.as_deref_mut())?;
                    ws.mark(dev, Some(i), "reduction")?;
                }
                let w = &self.blocks[i];
                if let Some(t) = trace.as_deref_mut() {
                    t.push_f32(
                        &format!("block_in.{i}"),
                        &[b, n, d],
                        &dev.download(&ws.x)?[..b * n * d],
                    );
                }
                let rows = b * n;
                self.layernorm::<T>(
                    dev,
                    ws.x.addr(),
                    rows,
                    d,
                    d,
                    &w.n1.0,
                    &w.n1.1,
                    ws.h.addr_mut(),
                )?;
                ws.mark(dev, Some(i), "ln1")?;
                self.linear(
                    dev,
                    ws.h.addr(),
                    rows,
                    d,
                    &w.qkv_w,
                    3 * d,
                    w.qkv_b.as_ref(),
                    ws.qkv.addr_mut(),
                )?;
                ws.mark(dev, Some(i), "qkv")?;
                let need_cls = bp.keep.is_some() || bp.sample.is_some();
                // Top-K and EViT: select first and project only the surviving rows
                // (`prune_then_project`), which also leaves ln2's output in ws.h. Top-K on the
                // fused path also attends only [cls, kept]: here the first query tile (for
                // the cls row), there the selected queries. `ln2_ready`: where ln2's output
                // already is, if a fused pass wrote it.
                let early = bp.keep.filter(|_| self.prune_first);
                let selected = ws
                    .attention
                    .flash_tile()
                    .filter(|_| early.is_some() && c.reduction == Reduction::TopK);
                if let Some(tile) = selected {
                    // The cls row (the same bits as the whole attention's) costs one query
                    // tile; its outputs land in ws.attn's first rows, unused.
                    let scratch = ws.attn.addr_mut();
                    self.flash(
                        dev,
                        ws,
                        tile,
                        n,
                        FlashQueries::FirstTile,
                        scratch,
                        (true, false),
                    )?;
                } else {
                    self.attention(dev, ws, n, have_sizes, need_cls)?;
                }
                ws.mark(dev, Some(i), "attention")?;
                if let Some(k) = bp.sample {
                    n = self.ats_sample(dev, ws, i, n, k, trace.as_deref_mut())?;
                    ws.mark(dev, Some(i), "reduction")?;
                }
                let ln2_ready = if let Some(k) = early {
                    n =
                        self.prune_then_project(dev, ws, i, n, k, selected, trace.as_deref_mut())?;
                    Some(ws.h.addr())
                } else {
                    let rows = b * n;
                    dev.gemm_nt(
                        dt,
                        ws.attn.addr(),
                        rows,
                        d,
                        w.proj_w.addr(),
                        d,
                        ws.h.addr_mut(),
                    )?;
                    ws.mark(dev, Some(i), "proj")?;
                    // With no reduction between them, the residual add (with the projection's
                    // bias) and the second LayerNorm are one pass, its output in `ws.attn` (free
                    // once the projection has read it).
                    let fuse_ln2 = bp.merge.is_none() && bp.keep.is_none();
                    if fuse_ln2 {
                        self.residual_ln(
                            dev,
                            ws.x.addr_mut(),
                            ws.h.addr(),
                            rows,
                            d,
                            w.ls1.as_ref(),
                            &w.proj_b,
                            0,
                            &w.n2,
                            ws.attn.addr_mut(),
                        )?;
                    } else {
                        self.residual(
                            dev,
                            ws.x.addr_mut(),
                            ws.h.addr(),
                            rows,
                            d,
                            w.ls1.as_ref(),
                            Some(&w.proj_b),
                        )?;
                    }
                    ws.mark(dev, Some(i), "residual")?;

                    if let Some(r) = bp.merge {
                        self.merge(dev, ws, n, r, have_sizes)?;
                        if let Some(t) = trace.as_deref_mut() {
                            let na = crate::ops::tome::split(n).0;
                            let unm = dev.download(&ws.tome.unm)?;
                            let ni = dev.download(&ws.tome.node_idx)?;
                            t.push_merge(i, b, n, r, &unm[..b * (na - r)], &ni[..b * na]);
                        }
                        std::mem::swap(&mut ws.x, &mut ws.x2);
                        std::mem::swap(&mut ws.sizes, &mut ws.sizes2);
                        have_sizes = true;
                        n -= r;
                        ws.mark(dev, Some(i), "reduction")?;
                    }
                    if let Some(k) = bp.keep {
                        n = self.select_and_prune(dev, ws, i, n, k, trace.as_deref_mut())?;
                        ws.mark(dev, Some(i), "reduction")?;
                    }
                    fuse_ln2.then(|| ws.attn.addr())
                };
                let rows = b * n;
                let ln2_out = if let Some(a) = ln2_ready {
                    a
                } else {
                    self.layernorm::<T>(
                        dev,
                        ws.x.addr(),
                        rows,
                        d,
                        d,
                        &w.n2.0,
                        &w.n2.1,
                        ws.h.addr_mut(),
                    )?;
                    ws.mark(dev, Some(i), "ln2")?;
                    ws.h.addr()
                };
                dev.gemm_nt(dt, ln2_out, rows, d, w.fc1_w.addr(), hm, ws.mlp.addr_mut())?;
                ws.mark(dev, Some(i), "fc1")?;
                self.bias_act(dev, ws.mlp.addr_mut(), rows, hm, w.fc1_b.addr(), true)?;
                ws.mark(dev, Some(i), "gelu")?;
                dev.gemm_nt(
                    dt,
                    ws.mlp.addr(),
                    rows,
                    hm,
                    w.fc2_w.addr(),
                    d,
                    ws.h.addr_mut(),
                )?;
                ws.mark(dev, Some(i), "fc2")?;
                self.residual(
                    dev,
                    ws.x.addr_mut(),
                    ws.h.addr(),
                    rows,
                    d,
                    w.ls2.as_ref(),
                    Some(&w.fc2_b),
                )?;
                ws.mark(dev, Some(i), "residual")?;
                if let Some(t) = trace.as_deref_mut() {
                    t.push_f32(
                        &format!("block_out.{i}"),
                        &[b, n, d],
                        &dev.download(&ws.x)?[..rows * d],
                    );
                    if have_sizes {
                        t.push_f32(
                            &format!("token_size.{i}"),
                            &[b, n, 1],
                            &dev.download(&ws.sizes)?[..rows],
                        );
                    }
                }
                if bp.recovered > 0 {
                    let r = bp.recovered;
                    let nn = n + r;
                    dev.launch(&crate::ops::token_cache::copy_launch(
                        DType::F32,
                        ws.x.addr(),
                        n,
                        0,
                        ws.x2.addr_mut(),
                        nn,
                        0,
                        b,
                        n,
                        d,
                    )?)?;
                    dev.launch(&crate::ops::token_cache::copy_launch(
                        DType::F32,
                        ws.cache.addr(),
                        cap,
                        0,
                        ws.x2.addr_mut(),
                        nn,
                        n,
                        b,
                        r,
                        d,
                    )?)?;
                    std::mem::swap(&mut ws.x, &mut ws.x2);
                    pool_end = n;
                    if have_sizes {
                        // Recovered tokens get size 1 (SPEC §2.3 step 3).
                        dev.launch(&crate::ops::tome::sizes_launch(
                            ws.sizes.addr(),
                            b,
                            n,
                            r,
                            ws.sizes2.addr_mut(),
                        )?)?;
                        std::mem::swap(&mut ws.sizes, &mut ws.sizes2);
                    }
                    if dyvit {
                        // Recovered tokens get δ = 0 in eval (SPEC §4.8).
                        let cp = crate::ops::token_cache::copy_launch;
                        dev.launch(&cp(
                            DType::F32,
                            ws.delta.addr(),
                            n,
                            0,
                            ws.delta2.addr_mut(),
                            nn,
                            0,
                            b,
                            n,
                            1,
                        )?)?;
                        dev.launch(&cp(
                            DType::F32,
                            ws.zeros.addr(),
                            cap,
                            0,
                            ws.delta2.addr_mut(),
                            nn,
                            n,
                            b,
                            r,
                            1,
                        )?)?;
                        std::mem::swap(&mut ws.delta, &mut ws.delta2);
                    }
                    n = nn;
                }
                if let Some(mut a) = m.carrier_args(bp, b, n) {
                    // The GAP range ends where the last recovery began (ATS: at run time).
                    a.pool = a.pool.start..pool_end;
                    dev.launch(&crate::ops::token_cache::take_launch(
                        DType::F32,
                        ws.x.addr(),
                        ws.cache.addr_mut(),
                        &a,
                    )?)?;
                }
                if bp.cls_tap {
                    go(
                        dev,
                        "vit",
                        "tap_cls",
                        dt,
                        [u("d", d.div_ceil(256))?, bu, 1],
                        [256, 1, 1],
                        0,
                        vec![
                            Arg::Ptr(ws.x.addr()),
                            Arg::U32(bu),
                            Arg::U32(u("n", n)?),
                            Arg::U32(u("d", d)?),
                            Arg::U32(tap),
                            Arg::U32(u("taps", f)?),
                            Arg::Ptr(ws.taps.addr_mut()),
                        ],
                    )?;
                    tap += 1;
                }
                ws.mark(dev, Some(i), "cache")?;
            }
            match &self.head {
                DevHead::Linear { norm, w, b: hb } => {
                    self.layernorm::<T>(
                        dev,
                        ws.x.addr(),
                        b,
                        d,
                        n * d,
                        &norm.0,
                        &norm.1,
                        ws.cls_h.addr_mut(),
                    )?;
                    if let Some(t) = trace.as_deref_mut() {
                        let v: Vec<f32> = dev
                            .download(&ws.cls_h)?
                            .iter()
                            .map(|x| x.to_f32())
                            .collect();
                        t.push_f32("head_in", &[b, d], &v);
                    }
                    dev.gemm_nt(
                        dt,
                        ws.cls_h.addr(),
                        b,
                        d,
                        w.addr(),
                        c.num_classes,
                        ws.logits.addr_mut(),
                    )?;
                    self.bias_act(
                        dev,
                        ws.logits.addr_mut(),
                        b,
                        c.num_classes,
                        hb.addr(),
                        false,
                    )?;
                }
                DevHead::Cla(h) => {
                    if let Some(t) = trace.as_deref_mut() {
                        let v: Vec<f32> =
                            dev.download(&ws.taps)?.iter().map(|x| x.to_f32()).collect();
                        t.push_f32("inter_cls", &[b, d, f], &v);
                    }
                    h.forward(dev, &ws.taps, b, &mut ws.hidden, &mut ws.logits)?;
                }
            }
            ws.mark(dev, None, "head")?;
        }
        if let Some(t) = trace {
            let v: Vec<f32> = dev
                .download(&ws.logits)?
                .iter()
                .map(|x| x.to_f32())
                .collect();
            t.push_f32("logits", &[b, c.num_classes], &v);
        }
        Ok(())
    }

    /// Logits as f32 on the host.
    pub fn logits(&self, dev: &D, ws: &DeviceWorkspace<D, T>) -> Result<Vec<f32>> {
        Ok(dev
            .download(&ws.logits)?
            .iter()
            .map(|x| x.to_f32())
            .collect())
    }

    /// The fused attention (`tile`) of `queries` over the n tokens of ws.qkv into `out` (see
    /// [`FlashQueries`] for its layout), with the cls row's probabilities into ws.cls_probs
    /// when `cls` (one more pass over K in one warp per (image, head): only for the layers
    /// whose selection reads it), and ToMe's log-size bias from ws.sizes when `sizes`.
    ///
    /// # Safety
    /// As `forward`; qkv [B, n, 3D], out sized for `queries`, cls_probs [B, H, n], sizes
    /// [B, n]: sized for max_len ≥ n; the buffers are 256-byte aligned and hd % 16 == 0, so
    /// every 16-byte row load is aligned.
    #[allow(clippy::too_many_arguments)]
    unsafe fn flash(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        tile: FlashTile,
        n: usize,
        queries: FlashQueries,
        out: u64,
        (cls, sizes): (bool, bool),
    ) -> Result<()> {
        let c = &self.model.cfg;
        let l = crate::ops::attention::flash_launch_queries(
            T::DTYPE,
            tile,
            ws.qkv.addr(),
            ws.batch,
            n,
            c.num_heads,
            c.head_dim(),
            if sizes { ws.sizes.addr() } else { 0 },
            queries,
            out,
            if cls { ws.cls_probs.addr_mut() } else { 0 },
        )?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { dev.launch(&l) }
    }

    /// Top-K / EViT selection of block `i` (k of the n − 1 non-cls tokens) from the cls rows the
    /// attention left in `ws.cls_probs`: scores, idx and compl (traced when asked). Returns the
    /// layer's mode.
    ///
    /// # Safety
    /// As `forward`: every workspace buffer holds the plan's longest sequence; k < n.
    unsafe fn select(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        i: usize,
        n: usize,
        k: usize,
        trace: Option<&mut Trace>,
    ) -> Result<crate::ops::prune::PruneMode> {
        let c = &self.model.cfg;
        let b = ws.batch;
        let bu = to_u32("batch", b)?;
        // SAFETY: cls_probs [b, H, n], scores [b, n − 1], idx [b, k], compl [b, n − 1 − k], all
        // inside their max_len-sized buffers.
        unsafe {
            go(
                dev,
                "attn_score",
                "select_from_cls_rows",
                DType::F32,
                [bu.min(crate::kernels::ROW_GRID_CAP), 1, 1],
                [crate::ops::topk::TOPK_THREADS, 1, 1],
                0,
                vec![
                    Arg::Ptr(ws.cls_probs.addr()),
                    Arg::U32(bu),
                    Arg::U32(to_u32("heads", c.num_heads)?),
                    Arg::U32(to_u32("n", n)?),
                    Arg::U32(to_u32("k", k)?),
                    Arg::Ptr(ws.scores.addr_mut()),
                    Arg::Ptr(ws.idx.addr_mut()),
                    Arg::Ptr(ws.compl.addr_mut()),
                ],
            )?;
        }
        let evit = c.reduction == Reduction::EVit;
        if let Some(t) = trace {
            let sc = dev.download(&ws.scores)?;
            let idx = dev.download(&ws.idx)?;
            let cp = if evit {
                Some(dev.download(&ws.compl)?)
            } else {
                None
            };
            let m = b * (n - 1 - k);
            t.push_selection(
                i,
                b,
                n,
                k,
                &sc[..b * (n - 1)],
                &idx[..b * k],
                cp.as_ref().map(|c| &c[..m]),
            );
        }
        Ok(if evit {
            crate::ops::prune::PruneMode::EVit
        } else {
            crate::ops::prune::PruneMode::TopK
        })
    }

    /// [cls, kept (, fused)] of `src` [b, n, d] (`dtype`) into `dst`, with the selection in
    /// ws.idx, ws.compl, ws.scores.
    ///
    /// # Safety
    /// As `forward`; src holds b·n·d and dst b·out·d elements of `dtype`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gather(
        &self,
        dev: &D,
        ws: &DeviceWorkspace<D, T>,
        mode: crate::ops::prune::PruneMode,
        dtype: DType,
        src: u64,
        n: usize,
        k: usize,
        dst: u64,
    ) -> Result<()> {
        let l = crate::ops::prune::gather_launch(
            dtype,
            mode,
            src,
            ws.batch,
            n,
            self.model.cfg.embed_dim,
            ws.idx.addr(),
            k,
            ws.compl.addr(),
            ws.scores.addr(),
            dst,
        )?;
        // SAFETY: forwarded; the indices come from the selection kernel (< n − 1).
        unsafe { dev.launch(&l) }
    }

    /// The authors' order (after proj and the residual): select, then [cls, kept (, fused)] of
    /// the stream ws.x. Returns the tokens left.
    ///
    /// # Safety
    /// As `forward`; k < n.
    unsafe fn select_and_prune(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        i: usize,
        n: usize,
        k: usize,
        trace: Option<&mut Trace>,
    ) -> Result<usize> {
        // SAFETY: forwarded.
        unsafe {
            let mode = self.select(dev, ws, i, n, k, trace)?;
            self.prune_stream(dev, ws, mode, n, k)?;
            Ok(mode.out_tokens(k))
        }
    }

    /// [cls, kept (, fused)] of the stream ws.x [b, n, d] (f32), left in ws.x (through ws.x2),
    /// with the selection in ws.idx, ws.compl, ws.scores.
    ///
    /// # Safety
    /// As `forward`; x and x2 hold [b, max_len, d] f32; k < n.
    unsafe fn prune_stream(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        mode: crate::ops::prune::PruneMode,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let x2 = ws.x2.addr_mut();
        // SAFETY: forwarded.
        unsafe { self.gather(dev, ws, mode, DType::F32, ws.x.addr(), n, k, x2)? };
        std::mem::swap(&mut ws.x, &mut ws.x2);
        Ok(())
    }

    /// A Top-K or EViT block's attention output ws.attn [b, n, d] → proj → residual in the
    /// order that projects only the surviving rows (as the CPU's `pruned_attention`): select,
    /// gather [cls, kept (, fused)] of the attention output and of the stream, project those
    /// k + 1 (+ 1) rows, then the residual with the second LayerNorm in one pass, its output in
    /// ws.h. A dropped token enters EViT's fused token only through Σ s_t·x_t, and the residual
    /// branch is affine in the attention output:
    ///
    ///   Σ s_t·(x_t + ls⊙(W a_t + b)) = Σ s_t·x_t + ls⊙(W (Σ s_t·a_t) + S·b),   S = Σ s_t,
    ///
    /// so the fused row's bias is scaled by S (`evit_bias_scale`). cls and the kept rows get
    /// the same operations as in the authors' order; the fused row differs by rounding (in the
    /// 16-bit types Σ s_t·a_t is rounded to T before the projection). At 448 px, kr 0.1 this
    /// projects 81 rows instead of 786 and runs one residual + LayerNorm pass over them
    /// instead of a residual over 786 and a LayerNorm over 81. Returns the tokens left.
    ///
    /// `selected` (Top-K on the fused path, after the cls row's first tile): the attention of
    /// [cls, kept] runs here with that tile, straight into compact rows, instead of gathering
    /// them from every query's; a dropped token's output is never used.
    ///
    /// # Safety
    /// As `forward`; k < n.
    #[allow(clippy::too_many_arguments)]
    unsafe fn prune_then_project(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        i: usize,
        n: usize,
        k: usize,
        selected: Option<FlashTile>,
        trace: Option<&mut Trace>,
    ) -> Result<usize> {
        let (b, d) = (ws.batch, self.model.cfg.embed_dim);
        let w = &self.blocks[i];
        // SAFETY (all launches): attn, h [b, max_len, d] of T; x, x2 [b, max_len, d] f32;
        // bias_scale [b, max_len] f32 on EViT models; out = k + 1 or k + 2 ≤ n ≤ max_len rows.
        unsafe {
            let mode = self.select(dev, ws, i, n, k, trace)?;
            let out = mode.out_tokens(k);
            if let Some(tile) = selected {
                ws.mark(dev, Some(i), "reduction")?;
                let kept = FlashQueries::Selected {
                    idx: ws.idx.addr(),
                    k,
                };
                let h = ws.h.addr_mut();
                self.flash(dev, ws, tile, n, kept, h, (false, false))?;
                ws.mark(dev, Some(i), "attention")?;
            } else {
                let h = ws.h.addr_mut();
                self.gather(dev, ws, mode, T::DTYPE, ws.attn.addr(), n, k, h)?;
            }
            self.prune_stream(dev, ws, mode, n, k)?;
            let bscale = if mode == crate::ops::prune::PruneMode::EVit {
                if ws.bias_scale.len() < mul("bias scale", &[b, out])? {
                    return Err(Error::Shape {
                        arg: "workspace",
                        expected: format!("an EViT bias-scale buffer of {b}×{out}"),
                        got: format!("{} elements", ws.bias_scale.len()),
                    });
                }
                dev.launch(&crate::ops::prune::bias_scale_launch(
                    ws.compl.addr(),
                    ws.scores.addr(),
                    b,
                    n,
                    k,
                    ws.bias_scale.addr_mut(),
                )?)?;
                ws.bias_scale.addr()
            } else {
                0
            };
            ws.mark(dev, Some(i), "reduction")?;
            let rows = b * out;
            dev.gemm_nt(
                T::DTYPE,
                ws.h.addr(),
                rows,
                d,
                w.proj_w.addr(),
                d,
                ws.attn.addr_mut(),
            )?;
            ws.mark(dev, Some(i), "proj")?;
            self.residual_ln(
                dev,
                ws.x.addr_mut(),
                ws.attn.addr(),
                rows,
                d,
                w.ls1.as_ref(),
                &w.proj_b,
                bscale,
                &w.n2,
                ws.h.addr_mut(),
            )?;
            ws.mark(dev, Some(i), "residual")?;
            Ok(out)
        }
    }

    /// ToMe's merge of the f32 stream `ws.x` [b, n, d] into `ws.x2` [b, n − r, d] and the sizes
    /// into `ws.sizes2` (from `ws.sizes`, or all ones before the first merge): metric from the
    /// qkv buffer, match, order, merge (four launches, the ops of [`crate::ops::tome`]).
    ///
    /// # Safety
    /// As `forward`: every workspace buffer holds the plan's longest sequence.
    unsafe fn merge(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        n: usize,
        r: usize,
        have_sizes: bool,
    ) -> Result<()> {
        use crate::ops::tome::{match_launch, merge_launch, metric_launch, order_launch};
        let c = &self.model.cfg;
        let (b, d, hd) = (ws.batch, c.embed_dim, c.head_dim());
        let tb = &mut ws.tome;
        let launches = [
            metric_launch(
                T::DTYPE,
                ws.qkv.addr(),
                b * n,
                c.num_heads,
                hd,
                tb.metric.addr_mut(),
            )?,
            match_launch(
                tb.metric.addr(),
                b,
                n,
                hd,
                tb.node_max.addr_mut(),
                tb.node_idx.addr_mut(),
            )?,
            order_launch(
                tb.node_max.addr(),
                tb.node_idx.addr(),
                b,
                n,
                r,
                tb.src.addr_mut(),
                tb.unm.addr_mut(),
                tb.grouped.addr_mut(),
                tb.offsets.addr_mut(),
            )?,
            merge_launch(
                DType::F32,
                ws.x.addr(),
                if have_sizes { ws.sizes.addr() } else { 0 },
                b,
                n,
                d,
                r,
                tb.unm.addr(),
                tb.grouped.addr(),
                tb.offsets.addr(),
                ws.x2.addr_mut(),
                ws.sizes2.addr_mut(),
            )?,
        ];
        for l in &launches {
            // SAFETY: forwarded from `forward`; the ToMe buffers were sized in `workspace` for
            // the longest sequence (metric [b, L, hd], matching [b, ⌈L/2⌉], plan [b, ⌊L/2⌋ + 1]),
            // and n ≤ L, r ≤ ⌊(n−1)/2⌋ by the plan.
            unsafe { dev.launch(l)? };
        }
        Ok(())
    }

    /// Multi-head attention of `ws.qkv` [B, n, 3, H, hd] into `ws.attn` [B, n, D], the cls
    /// rows of the probabilities into `ws.cls_probs` (on the fused path only when `need_cls`),
    /// with ToMe's log-size bias when `have_sizes`. The workspace's [`AttentionPath`] picks
    /// the way: one fused kernel, or split the heads, S = (q·scale)·kᵀ and O = P·v as batched
    /// GEMMs (cuBLAS on a GPU) around a row softmax, `att_chunk` images at a time, O staged in
    /// `ws.h`.
    ///
    /// # Safety
    /// The workspace was sized for this model and batch; n ≤ max_len.
    unsafe fn attention(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        n: usize,
        have_sizes: bool,
        need_cls: bool,
    ) -> Result<()> {
        let c = &self.model.cfg;
        let (b, hh, hd, d) = (ws.batch, c.num_heads, c.head_dim(), c.embed_dim);
        let dt = T::DTYPE;
        let u = |what, v| to_u32(what, v);
        if let Some(tile) = ws.attention.flash_tile() {
            let out = ws.attn.addr_mut();
            // SAFETY: attn [B, n, D]; the rest as `flash` asks.
            return unsafe {
                self.flash(
                    dev,
                    ws,
                    tile,
                    n,
                    FlashQueries::All,
                    out,
                    (need_cls, have_sizes),
                )
            };
        }
        let es = dt.size() as u64;
        let part = (b * n * d) as u64 * es;
        let (q, k, vt) = (
            ws.heads3.addr_mut(),
            ws.heads3.addr_mut() + part,
            ws.heads3.addr_mut() + 2 * part,
        );
        let total = b * n * 3 * d;
        // SAFETY (all launches): sizes as in the doc comment.
        unsafe {
            go(
                dev,
                "vit",
                "attn_split",
                dt,
                ew_grid(total)?,
                [EW_THREADS, 1, 1],
                0,
                vec![
                    Arg::Ptr(ws.qkv.addr()),
                    Arg::U32(u("batch", b)?),
                    Arg::U32(u("n", n)?),
                    Arg::U32(u("heads", hh)?),
                    Arg::U32(u("hd", hd)?),
                    Arg::F32((hd as f64).powf(-0.5) as f32),
                    Arg::Ptr(q),
                    Arg::Ptr(k),
                    Arg::Ptr(vt),
                ],
            )?;
            let o = ws.h.addr_mut();
            let mut b0 = 0;
            while b0 < b {
                let bc = (b - b0).min(ws.att_chunk);
                let z = bc * hh;
                let off = (b0 * hh * n * hd) as u64 * es;
                dev.gemm_nt_batched(
                    dt,
                    true,
                    q + off,
                    n,
                    hd,
                    n * hd,
                    k + off,
                    n,
                    n * hd,
                    ws.att_s.addr_mut(),
                    n * n,
                    z,
                )?;
                let rows = z * n;
                go(
                    dev,
                    "vit",
                    "attn_softmax",
                    dt,
                    [
                        u("rows", rows.min(crate::kernels::ROW_GRID_CAP as usize))?,
                        1,
                        1,
                    ],
                    [128, 1, 1],
                    0,
                    vec![
                        Arg::Ptr(ws.att_s.addr()),
                        Arg::U32(u("rows", rows)?),
                        Arg::U32(u("n", n)?),
                        Arg::U32(u("heads", hh)?),
                        Arg::Ptr(ws.att_p.addr_mut()),
                        Arg::Ptr(ws.cls_probs.addr_mut() + (b0 * hh * n * 4) as u64),
                        Arg::Ptr(if have_sizes {
                            ws.sizes.addr() + (b0 * n * 4) as u64
                        } else {
                            0
                        }),
                    ],
                )?;
                dev.gemm_nt_batched(
                    dt,
                    false,
                    ws.att_p.addr(),
                    n,
                    n,
                    n * n,
                    vt + off,
                    hd,
                    hd * n,
                    o + off,
                    n * hd,
                    z,
                )?;
                b0 += bc;
            }
            go(
                dev,
                "vit",
                "attn_merge",
                dt,
                ew_grid(b * n * d)?,
                [EW_THREADS, 1, 1],
                0,
                vec![
                    Arg::Ptr(o),
                    Arg::U32(u("batch", b)?),
                    Arg::U32(u("n", n)?),
                    Arg::U32(u("heads", hh)?),
                    Arg::U32(u("hd", hd)?),
                    Arg::Ptr(ws.attn.addr_mut()),
                ],
            )
        }
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn layernorm<O: Element>(
        &self,
        dev: &D,
        x: u64,
        rows: usize,
        d: usize,
        xs: usize,
        g: &D::Buf<f32>,
        be: &D::Buf<f32>,
        y: u64,
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { self.layernorm_eps::<O>(dev, x, rows, d, xs, g, be, None, y) }
    }

    /// [`Self::layernorm`] with its own eps (the methods' modules use nn.LayerNorm's 1e-5).
    #[allow(clippy::too_many_arguments)]
    unsafe fn layernorm_eps<O: Element>(
        &self,
        dev: &D,
        x: u64,
        rows: usize,
        d: usize,
        xs: usize,
        g: &D::Buf<f32>,
        be: &D::Buf<f32>,
        eps: Option<f64>,
        y: u64,
    ) -> Result<()> {
        // One warp a row: 256 / 32 rows a block.
        let grid = row_grid(rows, 256 / 32)?;
        let args = vec![
            Arg::Ptr(x),
            Arg::U32(to_u32("rows", rows)?),
            Arg::U32(to_u32("d", d)?),
            Arg::I64(xs as i64),
            Arg::Ptr(g.addr()),
            Arg::Ptr(be.addr()),
            Arg::F32(eps.unwrap_or(self.model.cfg.ln_eps) as f32),
            Arg::Ptr(y),
        ];
        // SAFETY: forwarded from `forward`.
        unsafe {
            go(
                dev,
                "vit",
                "layernorm",
                O::DTYPE,
                grid,
                [256, 1, 1],
                0,
                args,
            )
        }
    }

    /// y [rows, n] = x [rows, k]·wᵀ (+ bias): the bias in the GEMM's epilogue where the device
    /// has one ([`Device::gemm_nt_bias`]: added to the f32 sums, then one rounding), else a
    /// bias pass after it (rounded twice in the 16-bit types; the same bits in f32).
    ///
    /// # Safety
    /// x holds rows·k and y rows·n elements of `T`; w is [n, k], the bias n.
    #[allow(clippy::too_many_arguments)]
    unsafe fn linear(
        &self,
        dev: &D,
        x: u64,
        rows: usize,
        k: usize,
        w: &D::Buf<T>,
        n: usize,
        bias: Option<&Bias<D, T>>,
        y: u64,
    ) -> Result<()> {
        let dt = T::DTYPE;
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            if let Some(b) = bias {
                if dev.gemm_nt_bias(dt, x, rows, k, w.addr(), n, b.t.addr(), y)? {
                    return Ok(());
                }
            }
            dev.gemm_nt(dt, x, rows, k, w.addr(), n, y)?;
            if let Some(b) = bias {
                self.bias_act(dev, y, rows, n, b.f32.addr(), false)?;
            }
        }
        Ok(())
    }

    unsafe fn bias_act(
        &self,
        dev: &D,
        y: u64,
        rows: usize,
        n: usize,
        bias: u64,
        gelu: bool,
    ) -> Result<()> {
        // SAFETY: forwarded.
        unsafe { bias_act_dt(dev, T::DTYPE, y, rows, n, bias, gelu as u32) }
    }

    unsafe fn residual(
        &self,
        dev: &D,
        x: u64,
        y: u64,
        rows: usize,
        d: usize,
        gamma: Option<&D::Buf<f32>>,
        bias: Option<&D::Buf<f32>>,
    ) -> Result<()> {
        let args = vec![
            Arg::Ptr(x),
            Arg::Ptr(y),
            Arg::I64(rows as i64),
            Arg::U32(to_u32("d", d)?),
            Arg::Ptr(gamma.map(|g| g.addr()).unwrap_or(0)),
            Arg::Ptr(bias.map(|g| g.addr()).unwrap_or(0)),
        ];
        // SAFETY: forwarded from `forward`.
        unsafe {
            go(
                dev,
                "vit",
                "residual",
                T::DTYPE,
                ew_grid(rows * d)?,
                [EW_THREADS, 1, 1],
                0,
                args,
            )
        }
    }

    /// x += gamma·round_T(y + bias·bscale[row]), then out = LayerNorm(x) (`norm`) in T: one
    /// pass per row (kernels/vit.cu `residual_ln`). `bscale`: 0 (a factor of 1) or rows f32.
    ///
    /// # Safety
    /// x and y hold rows·d elements, out rows·d `T` and not overlapping y; the weights d;
    /// bscale (unless 0) rows.
    #[allow(clippy::too_many_arguments)]
    unsafe fn residual_ln(
        &self,
        dev: &D,
        x: u64,
        y: u64,
        rows: usize,
        d: usize,
        gamma: Option<&D::Buf<f32>>,
        bias: &D::Buf<f32>,
        bscale: u64,
        norm: &(D::Buf<f32>, D::Buf<f32>),
        out: u64,
    ) -> Result<()> {
        let grid = row_grid(rows, 1)?;
        let args = vec![
            Arg::Ptr(x),
            Arg::Ptr(y),
            Arg::U32(to_u32("rows", rows)?),
            Arg::U32(to_u32("d", d)?),
            Arg::Ptr(gamma.map(|g| g.addr()).unwrap_or(0)),
            Arg::Ptr(bias.addr()),
            Arg::Ptr(bscale),
            Arg::Ptr(norm.0.addr()),
            Arg::Ptr(norm.1.addr()),
            Arg::F32(self.model.cfg.ln_eps as f32),
            Arg::Ptr(out),
        ];
        // SAFETY: forwarded from `forward`; 256 threads, one block per row.
        unsafe {
            go(
                dev,
                "vit",
                "residual_ln",
                T::DTYPE,
                grid,
                [256, 1, 1],
                0,
                args,
            )
        }
    }
}
