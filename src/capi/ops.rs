//! The core ops on raw pointers, for engines that run their own ViT and want our kernels: per-row
//! top-k ([`crate::ops::topk`]) and the fused pruning layer (CLS-attention scores → top-k →
//! gather, + EViT's fused token; [`crate::ops::prune`]). Contracts (ordering, ties, NaN) are
//! those of the Rust ops.
//!
//! A [`ClcaDevice`] is a GPU (CUDA backend: the pointers are device memory of its primary
//! context, work is queued on the given stream and not waited for) or the host shim (host
//! pointers, copied in and out, synchronous; the stream is ignored). Extents come from the
//! shape arguments, so they cannot be checked against the allocations: the caller guarantees
//! them. A pointer may be null only where its extent is 0.
use super::{backend_of, dtype_of, guard, null_arg, ClcaBackend};
use crate::ops::attn_score::{ScoreSource, Selection};
use crate::ops::prune::PruneMode;
use crate::{bf16, f16, DType, Device, Element, Error, HostShim, Result};
use bytemuck::Pod;
use std::ffi::{c_int, c_void};
use std::sync::Mutex;

/// An opaque executor of the core ops: a GPU or the host shim.
pub struct ClcaDevice {
    inner: Mutex<Dev>,
}

enum Dev {
    Shim(HostShim),
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::cuda::CudaDevice>),
}

/// Which pruning `clca_prune_fused` does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClcaPruneMode {
    /// [cls, kept tokens in descending score]: 1 + k tokens.
    TopK = 0,
    /// Top-K plus EViT's fused token (score-weighted sum of the dropped tokens): 2 + k tokens.
    Evit = 1,
}

/// How raw pointers become buffers of a device: views on a GPU, copies on the host shim.
trait RawIo: Device {
    /// A buffer holding the `len` elements at `p` (read by the op).
    ///
    /// # Safety
    /// `p` holds `len` elements (device memory on a GPU, host memory on the shim).
    unsafe fn input<T: Pod>(&self, p: *const c_void, len: usize) -> Result<Self::Buf<T>>;
    /// A buffer the op writes its `len` elements at `p` through.
    ///
    /// # Safety
    /// As `RawIo::input`, writable.
    unsafe fn output<T: Pod>(&self, p: *mut c_void, len: usize) -> Result<Self::Buf<T>>;
    /// Makes an output visible at `p` (a copy back on the shim; nothing on a GPU).
    ///
    /// # Safety
    /// As `RawIo::output`.
    unsafe fn finish<T: Pod>(&self, b: &Self::Buf<T>, p: *mut c_void) -> Result<()>;
    /// Runs `f` with the work queued on `stream`.
    ///
    /// # Safety
    /// `stream` is null or a live stream of this device.
    unsafe fn on_stream(&self, stream: *mut c_void, f: impl FnOnce() -> Result<()>) -> Result<()>;
}

impl RawIo for HostShim {
    unsafe fn input<T: Pod>(&self, p: *const c_void, len: usize) -> Result<Self::Buf<T>> {
        if len == 0 {
            return self.zeros(0);
        }
        // SAFETY: non-null (checked by the callers) and holding `len` elements per the contract.
        self.upload(unsafe { std::slice::from_raw_parts(p as *const T, len) })
    }
    unsafe fn output<T: Pod>(&self, _p: *mut c_void, len: usize) -> Result<Self::Buf<T>> {
        self.zeros(len)
    }
    unsafe fn finish<T: Pod>(&self, b: &Self::Buf<T>, p: *mut c_void) -> Result<()> {
        if !b.0.is_empty() {
            // SAFETY: `p` holds b.len() writable elements per the contract; the regions are
            // distinct (ours is a fresh Vec).
            unsafe { std::ptr::copy_nonoverlapping(b.0.as_ptr(), p as *mut T, b.0.len()) };
        }
        Ok(())
    }
    unsafe fn on_stream(&self, _stream: *mut c_void, f: impl FnOnce() -> Result<()>) -> Result<()> {
        f()
    }
}

#[cfg(feature = "cuda")]
impl RawIo for crate::cuda::CudaDevice {
    unsafe fn input<T: Pod>(&self, p: *const c_void, len: usize) -> Result<Self::Buf<T>> {
        // SAFETY: per the contract.
        Ok(unsafe { self.view(p as u64, len) })
    }
    unsafe fn output<T: Pod>(&self, p: *mut c_void, len: usize) -> Result<Self::Buf<T>> {
        // SAFETY: per the contract.
        Ok(unsafe { self.view(p as u64, len) })
    }
    unsafe fn finish<T: Pod>(&self, _b: &Self::Buf<T>, _p: *mut c_void) -> Result<()> {
        Ok(())
    }
    unsafe fn on_stream(&self, stream: *mut c_void, f: impl FnOnce() -> Result<()>) -> Result<()> {
        // SAFETY: per the contract.
        unsafe { self.with_stream(stream, f) }
    }
}

/// Checks that `p` is non-null unless `len` is 0.
fn need(arg: &'static str, p: *const c_void, len: usize) -> Result<()> {
    if p.is_null() && len > 0 {
        Err(null_arg(arg))
    } else {
        Ok(())
    }
}

/// Creates an op executor: `backend` `ClcaBackend` `CLCA_BACKEND_HOST_SHIM` or
/// `CLCA_BACKEND_CUDA` (GPU `device_ordinal`). Free it with `clca_device_destroy`.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn clca_device_create(
    backend: c_int,
    device_ordinal: c_int,
    out: *mut *mut ClcaDevice,
) -> c_int {
    if !out.is_null() {
        // SAFETY: non-null and writable per the contract.
        unsafe { *out = std::ptr::null_mut() };
    }
    guard(|| {
        if out.is_null() {
            return Err(null_arg("out"));
        }
        let dev = match backend_of(backend)? {
            ClcaBackend::HostShim => Dev::Shim(HostShim),
            ClcaBackend::Cuda => {
                let ord = super::ordinal(device_ordinal)?;
                #[cfg(feature = "cuda")]
                {
                    let d = crate::cuda::CudaDevice::new(ord)?;
                    d.preload()?;
                    Dev::Cuda(Box::new(d))
                }
                #[cfg(not(feature = "cuda"))]
                {
                    let _ = ord;
                    return Err(super::no_cuda());
                }
            }
            ClcaBackend::Cpu => {
                return Err(Error::Unsupported {
                    what: "op executors on CLCA_BACKEND_CPU".into(),
                    supported: "CLCA_BACKEND_HOST_SHIM (host pointers) and CLCA_BACKEND_CUDA"
                        .into(),
                })
            }
        };
        let h = Box::new(ClcaDevice {
            inner: Mutex::new(dev),
        });
        // SAFETY: checked non-null above.
        unsafe { *out = Box::into_raw(h) };
        Ok(())
    })
}

/// Frees an op executor (null is a no-op).
///
/// # Safety
/// `device` is null or a handle from `clca_device_create` not yet destroyed.
#[no_mangle]
pub unsafe extern "C" fn clca_device_destroy(device: *mut ClcaDevice) {
    if device.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: made by Box::into_raw in clca_device_create, destroyed once per the contract.
        drop(unsafe { Box::from_raw(device) });
    }));
}

/// Runs `f` on the device of `device` with the storage type `dtype`.
macro_rules! dispatch {
    ($device:expr, $dtype:expr, |$dev:ident, $t:ident| $body:expr) => {{
        // SAFETY: the handle is live per the contract of the calling function.
        let h = unsafe { $device.as_ref() }.ok_or_else(|| null_arg("device"))?;
        let g = h
            .inner
            .lock()
            .map_err(|_| Error::Plan("the device is unusable: an earlier call panicked".into()))?;
        let dt = dtype_of($dtype)?;
        match &*g {
            Dev::Shim(d) => {
                let $dev = d;
                match dt {
                    DType::F32 => {
                        type $t = f32;
                        $body
                    }
                    DType::F16 => {
                        type $t = f16;
                        $body
                    }
                    DType::BF16 => {
                        type $t = bf16;
                        $body
                    }
                }
            }
            #[cfg(feature = "cuda")]
            Dev::Cuda(d) => {
                let $dev = &**d;
                match dt {
                    DType::F32 => {
                        type $t = f32;
                        $body
                    }
                    DType::F16 => {
                        type $t = f16;
                        $body
                    }
                    DType::BF16 => {
                        type $t = bf16;
                        $body
                    }
                }
            }
        }
    }};
}

/// Top-k of every row of `x` [rows, n] (storage `dtype`, a `ClcaDtype`): `idx` [rows, k] the
/// indices of the k largest in descending order (ties: lower index first; NaN above +inf),
/// `complement` [rows, n - k] the rest ascending. 0 <= k <= n.
///
/// # Safety
/// `device` is a live handle; the pointers hold the extents above (device memory on CUDA,
/// host memory on the host shim) and stay live until the work finishes; `stream` is null or a
/// live stream of the device (CUDA).
#[no_mangle]
pub unsafe extern "C" fn clca_topk_select(
    device: *const ClcaDevice,
    dtype: c_int,
    x: *const c_void,
    rows: usize,
    n: usize,
    k: usize,
    idx: *mut u32,
    complement: *mut u32,
    stream: *mut c_void,
) -> c_int {
    guard(|| {
        dispatch!(device, dtype, |dev, T| {
            // SAFETY: forwarded from this function's contract.
            unsafe { topk::<_, T>(dev, x, rows, n, k, idx as _, complement as _, stream) }
        })
    })
}

/// # Safety
/// As `clca_topk_select`.
#[allow(clippy::too_many_arguments)]
unsafe fn topk<D: RawIo, T: Element>(
    dev: &D,
    x: *const c_void,
    rows: usize,
    n: usize,
    k: usize,
    idx: *mut c_void,
    compl: *mut c_void,
    stream: *mut c_void,
) -> Result<()> {
    if k > n {
        return Err(crate::error::invalid("k", k, format!("k > n = {n}")));
    }
    let nx = crate::error::mul("rows*n", &[rows, n])?;
    let ni = crate::error::mul("rows*k", &[rows, k])?;
    let nc = crate::error::mul("rows*(n-k)", &[rows, n - k])?;
    need("x", x, nx)?;
    need("idx", idx, ni)?;
    need("complement", compl, nc)?;
    // SAFETY: extents per the contract; non-null where non-empty (checked).
    unsafe {
        dev.on_stream(stream, || {
            let xb = dev.input::<T>(x, nx)?;
            let mut ib = dev.output::<u32>(idx, ni)?;
            let mut cb = dev.output::<u32>(compl, nc)?;
            crate::ops::topk::topk_select(dev, &xb, rows, n, k, &mut ib, &mut cb)?;
            dev.finish(&ib, idx)?;
            dev.finish(&cb, compl)
        })
    }
}

/// The fused pruning layer of Top-K / EViT on `batch` samples of `n` tokens (token 0 is cls):
/// CLS-attention scores from `probs` [batch, heads, n, n] (the attention probabilities, storage
/// `dtype`) averaged over heads into `scores` [batch, n - 1] (f32), their top-k into `idx`
/// [batch, k] (descending) and `complement` [batch, n - 1 - k] (ascending), and the gather of
/// `x` [batch, n, c] into `out`: [batch, 1 + k, c] for `CLCA_PRUNE_MODE_TOP_K`,
/// [batch, 2 + k, c] with EViT's fused token last for `CLCA_PRUNE_MODE_EVIT`. Two launches.
/// n >= 2, k <= n - 1.
///
/// # Safety
/// As `clca_topk_select`, for every pointer here.
#[no_mangle]
pub unsafe extern "C" fn clca_prune_fused(
    device: *const ClcaDevice,
    dtype: c_int,
    mode: c_int,
    probs: *const c_void,
    x: *const c_void,
    batch: usize,
    heads: usize,
    n: usize,
    c: usize,
    k: usize,
    out: *mut c_void,
    scores: *mut f32,
    idx: *mut u32,
    complement: *mut u32,
    stream: *mut c_void,
) -> c_int {
    guard(|| {
        let mode = match mode {
            0 => PruneMode::TopK,
            1 => PruneMode::EVit,
            _ => {
                return Err(crate::error::invalid(
                    "mode",
                    mode,
                    "expected CLCA_PRUNE_MODE_TOP_K (0) or CLCA_PRUNE_MODE_EVIT (1)",
                ))
            }
        };
        let a = PruneArgs {
            mode,
            probs,
            x,
            batch,
            heads,
            n,
            c,
            k,
            out,
            scores: scores as _,
            idx: idx as _,
            compl: complement as _,
        };
        dispatch!(device, dtype, |dev, T| {
            // SAFETY: forwarded from this function's contract.
            unsafe { prune::<_, T>(dev, &a, stream) }
        })
    })
}

struct PruneArgs {
    mode: PruneMode,
    probs: *const c_void,
    x: *const c_void,
    batch: usize,
    heads: usize,
    n: usize,
    c: usize,
    k: usize,
    out: *mut c_void,
    scores: *mut c_void,
    idx: *mut c_void,
    compl: *mut c_void,
}

/// # Safety
/// As `clca_prune_fused`.
unsafe fn prune<D: RawIo, T: Element>(dev: &D, a: &PruneArgs, stream: *mut c_void) -> Result<()> {
    let (batch, n, k, c) = (a.batch, a.n, a.k, a.c);
    if n < 2 || k > n - 1 {
        return Err(crate::error::invalid(
            "k",
            k,
            format!("need n >= 2 and k <= n - 1 (n = {n})"),
        ));
    }
    if a.heads == 0 {
        return Err(crate::error::invalid("heads", 0, "must be positive"));
    }
    let mul = crate::error::mul;
    let np = mul("batch*heads*n*n", &[batch, a.heads, n, n])?;
    let nx = mul("batch*n*c", &[batch, n, c])?;
    let no = mul("batch*out_tokens*c", &[batch, a.mode.out_tokens(k), c])?;
    let ns = mul("batch*(n-1)", &[batch, n - 1])?;
    let ni = mul("batch*k", &[batch, k])?;
    let nc = mul("batch*(n-1-k)", &[batch, n - 1 - k])?;
    need("probs", a.probs, np)?;
    need("x", a.x, nx)?;
    need("out", a.out, no)?;
    need("scores", a.scores, ns)?;
    need("idx", a.idx, ni)?;
    need("complement", a.compl, nc)?;
    // SAFETY: extents per the contract; non-null where non-empty (checked).
    unsafe {
        dev.on_stream(stream, || {
            let pb = dev.input::<T>(a.probs, np)?;
            let xb = dev.input::<T>(a.x, nx)?;
            let mut ob = dev.output::<T>(a.out, no)?;
            let mut sel = Selection::<D> {
                scores: dev.output::<f32>(a.scores, ns)?,
                idx: dev.output::<u32>(a.idx, ni)?,
                compl: dev.output::<u32>(a.compl, nc)?,
                batch,
                n,
                k,
            };
            let src = ScoreSource::Probs {
                probs: &pb,
                heads: a.heads,
            };
            crate::ops::prune::prune(dev, &src, &xb, c, a.mode, &mut sel, &mut ob)?;
            dev.finish(&ob, a.out)?;
            dev.finish(&sel.scores, a.scores)?;
            dev.finish(&sel.idx, a.idx)?;
            dev.finish(&sel.compl, a.compl)
        })
    }
}
