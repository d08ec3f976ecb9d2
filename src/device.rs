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
    if m == 0 || n == 0 {
        return Ok(());
    }
    let l = crate::ops::cla_head::linear_launch(dtype, x, m, k, w, 0, n, y)?;
    // SAFETY: forwarded from the caller's contract.
    unsafe { dev.launch(&l) }
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
