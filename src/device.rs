//! Where kernels run: the `Device` trait, with the host execution shim here and CUDA in
//! `crate::cuda`. Ops are written once against the trait, so the same test body checks a
//! kernel under the shim on every CI run and on the GPU when one is present.
use crate::kernels::{Launch, LaunchCfg};
use crate::{Error, Result};
use bytemuck::Pod;

/// A buffer of `T` owned by a device.
pub trait Buffer<T> {
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The address kernels read from.
    fn addr(&self) -> u64;
    /// The address kernels write to.
    fn addr_mut(&mut self) -> u64;
}

/// An executor of the kernels in the kernel table.
pub trait Device {
    /// The device's buffer type.
    type Buf<T: Pod>: Buffer<T>;
    /// A human-readable name ("host shim", "NVIDIA H100 …").
    fn name(&self) -> String;
    /// A zero-filled buffer.
    fn zeros<T: Pod>(&self, len: usize) -> Result<Self::Buf<T>>;
    /// A buffer holding a copy of `data`.
    fn upload<T: Pod>(&self, data: &[T]) -> Result<Self::Buf<T>>;
    /// Overwrite a buffer with `data` (same length).
    fn write<T: Pod>(&self, buf: &mut Self::Buf<T>, data: &[T]) -> Result<()>;
    /// A host copy of a buffer (waits for queued work).
    fn download<T: Pod>(&self, buf: &Self::Buf<T>) -> Result<Vec<T>>;
    /// Queue a kernel.
    ///
    /// # Safety
    /// Every pointer argument of `launch` must be the address of a live buffer of this device
    /// holding at least as many elements as the kernel reads or writes through it; the safe
    /// wrappers in `crate::ops` check exactly that before calling.
    unsafe fn launch(&self, launch: &Launch) -> Result<()>;
    /// Wait for queued work.
    fn synchronize(&self) -> Result<()>;

    /// `y` [m, n] = `x` [m, k] · `w` [n, k]ᵀ in `dtype` with f32 accumulation (nn.Linear
    /// layout, no bias). The default launches our tiled `linear_*` kernel; the CUDA device uses
    /// cuBLAS when it is available.
    ///
    /// # Safety
    /// `x`, `w` and `y` must be addresses of this device holding m·k, n·k and m·n elements of
    /// `dtype`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_nt(
        &self,
        dtype: crate::DType,
        x: u64,
        m: usize,
        k: usize,
        w: u64,
        n: usize,
        y: u64,
    ) -> Result<()> {
        gemm_nt_kernel(self, dtype, x, m, k, w, n, y)
    }

    /// `y` [m, n] = `x` [m, k] · `w` [n, k]ᵀ + `bias` [n], all in `dtype`, the bias added to
    /// the f32 sums before y's one rounding (nn.Linear under PyTorch's autocast, which also
    /// casts the bias; cuBLASLt's bias epilogue). Returns `false`, having queued nothing, where
    /// the device has no such GEMM: the caller then runs [`Device::gemm_nt`] and a bias pass.
    /// The default launches our tiled `linear_*` kernel with its bias; the CUDA device uses
    /// cuBLASLt when it loads and declines when only cuBLAS does.
    ///
    /// # Safety
    /// As [`Device::gemm_nt`]; `bias` holds n elements of `dtype`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_nt_bias(
        &self,
        dtype: crate::DType,
        x: u64,
        m: usize,
        k: usize,
        w: u64,
        n: usize,
        bias: u64,
        y: u64,
    ) -> Result<bool> {
        gemm_nt_bias_kernel(self, dtype, x, m, k, w, n, bias, y).map(|()| true)
    }

    /// Batched [`Device::gemm_nt`]: `y_z` [m, n] = `x_z` [m, k] · `w_z` [n, k]ᵀ for z < `batch`,
    /// the matrices `sx`, `sw`, `sy` elements apart; `y` is f32 when `f32_out` (the attention
    /// scores), else `dtype`. The default launches our `bgemm_nt*` kernel; the CUDA device uses
    /// cuBLAS's strided batched GEMM when it is available.
    ///
    /// # Safety
    /// `x`, `w` and `y` must be addresses of this device holding the `batch` matrices at
    /// their strides.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_nt_batched(
        &self,
        dtype: crate::DType,
        f32_out: bool,
        x: u64,
        m: usize,
        k: usize,
        sx: usize,
        w: u64,
        n: usize,
        sw: usize,
        y: u64,
        sy: usize,
        batch: usize,
    ) -> Result<()> {
        gemm_nt_batched_kernel(self, dtype, f32_out, x, m, k, sx, w, n, sw, y, sy, batch)
    }
}

/// The `bgemm_nt*` kernels as a batched GEMM (see [`Device::gemm_nt_batched`]); batches beyond
/// the grid's z limit go in several launches.
///
/// # Safety
/// As [`Device::gemm_nt_batched`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_nt_batched_kernel<D: Device + ?Sized>(
    dev: &D,
    dtype: crate::DType,
    f32_out: bool,
    x: u64,
    m: usize,
    k: usize,
    sx: usize,
    w: u64,
    n: usize,
    sw: usize,
    y: u64,
    sy: usize,
    batch: usize,
) -> Result<()> {
    use crate::kernels::{Arg, Launch};
    const ZMAX: usize = 65535;
    let u = |what: &'static str, v: usize| {
        u32::try_from(v).map_err(|_| Error::LaunchLimit {
            what,
            value: v as u64,
            limit: u32::MAX as u64,
        })
    };
    let i = |v: usize| {
        i64::try_from(v).map_err(|_| Error::Overflow {
            what: "gemm stride",
        })
    };
    let (es, ys) = (
        dtype.size() as u64,
        if f32_out { 4 } else { dtype.size() as u64 },
    );
    let op = if f32_out {
        "bgemm_nt_f32out"
    } else {
        "bgemm_nt"
    };
    let mut z0 = 0;
    while z0 < batch {
        let nz = (batch - z0).min(ZMAX);
        let off = |s: usize, e: u64| (z0 as u64) * (s as u64) * e;
        let l = Launch::new(
            "vit",
            op,
            dtype,
            [
                u("n", n.div_ceil(16))?,
                u("m", m.div_ceil(16))?,
                u("batch", nz)?,
            ],
            [16, 16, 1],
            vec![
                Arg::Ptr(x + off(sx, es)),
                Arg::U32(u("m", m)?),
                Arg::U32(u("k", k)?),
                Arg::I64(i(sx)?),
                Arg::Ptr(w + off(sw, es)),
                Arg::U32(u("n", n)?),
                Arg::I64(i(sw)?),
                Arg::Ptr(y + off(sy, ys)),
                Arg::I64(i(sy)?),
            ],
        )?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { dev.launch(&l)? };
        z0 += nz;
    }
    Ok(())
}

/// The `linear_*` kernel as a GEMM (see [`Device::gemm_nt`]).
///
/// # Safety
/// As [`Device::gemm_nt`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_nt_kernel<D: Device + ?Sized>(
    dev: &D,
    dtype: crate::DType,
    x: u64,
    m: usize,
    k: usize,
    w: u64,
    n: usize,
    y: u64,
) -> Result<()> {
    // SAFETY: forwarded from the caller's contract (no bias).
    unsafe { gemm_nt_bias_kernel(dev, dtype, x, m, k, w, n, 0, y) }
}

/// The `linear_*` kernel as [`Device::gemm_nt_bias`] (`bias` 0: none).
///
/// # Safety
/// As [`Device::gemm_nt_bias`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_nt_bias_kernel<D: Device + ?Sized>(
    dev: &D,
    dtype: crate::DType,
    x: u64,
    m: usize,
    k: usize,
    w: u64,
    n: usize,
    bias: u64,
    y: u64,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let l = crate::ops::cla_head::linear_launch(dtype, x, m, k, w, bias, n, y)?;
    // SAFETY: forwarded from the caller's contract.
    unsafe { dev.launch(&l) }
}

/// Every buffer of a workspace carved out of one caller allocation starts at a multiple of this
/// many bytes (cudaMalloc's own alignment), so each kernel sees the alignment it would get from
/// its own allocation.
pub const WORKSPACE_ALIGN: usize = 256;

/// The bytes a buffer of `bytes` bytes takes in a caller's workspace: rounded up to
/// [`WORKSPACE_ALIGN`].
pub fn workspace_granule(bytes: usize) -> Result<usize> {
    bytes
        .checked_next_multiple_of(WORKSPACE_ALIGN)
        .ok_or(Error::Overflow {
            what: "workspace bytes",
        })
}

/// A host buffer for the shim.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBuf<T>(pub Vec<T>);

impl<T> Buffer<T> for HostBuf<T> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn addr(&self) -> u64 {
        self.0.as_ptr() as u64
    }
    fn addr_mut(&mut self) -> u64 {
        self.0.as_mut_ptr() as u64
    }
}

/// Runs the CUDA sources compiled for the CPU under kernels/host_shim.h: every CUDA thread a
/// fiber, barriers and warp collectives checked. Slow, exact, and always available.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostShim;

extern "C" {
    fn clca_host_last_error() -> *const std::ffi::c_char;
}

impl Device for HostShim {
    type Buf<T: Pod> = HostBuf<T>;
    fn name(&self) -> String {
        "host shim (CUDA sources on the CPU)".into()
    }
    fn zeros<T: Pod>(&self, len: usize) -> Result<HostBuf<T>> {
        crate::error::try_zeroed("host-shim buffer", len).map(HostBuf)
    }
    fn upload<T: Pod>(&self, data: &[T]) -> Result<HostBuf<T>> {
        Ok(HostBuf(data.to_vec()))
    }
    fn write<T: Pod>(&self, buf: &mut HostBuf<T>, data: &[T]) -> Result<()> {
        crate::error::check_len("data", data.len(), buf.0.len())?;
        buf.0.copy_from_slice(data);
        Ok(())
    }
    fn download<T: Pod>(&self, buf: &HostBuf<T>) -> Result<Vec<T>> {
        Ok(buf.0.clone())
    }
    unsafe fn launch(&self, launch: &Launch) -> Result<()> {
        let f = crate::kernels::host_launcher(&launch.kernel)
            .ok_or_else(|| Error::UnknownKernel(launch.kernel.clone()))?;
        let mut slots: Vec<[u8; 8]> = launch.args.iter().map(|a| a.bytes()).collect();
        let mut ptrs: Vec<*mut std::ffi::c_void> = slots
            .iter_mut()
            .map(|s| s.as_mut_ptr() as *mut std::ffi::c_void)
            .collect();
        let cfg: LaunchCfg = launch.cfg;
        // SAFETY: the caller guarantees the pointer arguments (see the trait); `ptrs` points at
        // `slots`, which outlive the call, one slot per parameter of the kernel in order.
        let rc = unsafe { f(&cfg, ptrs.as_mut_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            // SAFETY: the shim returns a NUL-terminated thread-local string.
            let msg = unsafe { std::ffi::CStr::from_ptr(clca_host_last_error()) };
            Err(Error::HostShim {
                kernel: launch.kernel.clone(),
                message: msg.to_string_lossy().into_owned(),
            })
        }
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
