//! The CUDA backend: the only module that touches cudarc (pinned exactly in Cargo.toml, loaded
//! dynamically, so the crate builds without a toolkit and a missing driver is an error value).
//!
//! One context, one stream; modules are loaded lazily from the embedded PTX and cached, and
//! kernels are launched through the same argument marshalling as the host shim.
//!
//! For engines that own the memory and the stream: [`CudaDevice::with_stream`] queues every
//! launch, copy and cuBLAS call of a closure on a caller's `CUstream`, [`CudaDevice::with_arena`]
//! carves every buffer made in a closure out of one caller allocation (nothing is allocated or
//! freed), and [`CudaDevice::view`] wraps a caller pointer as a buffer without owning it. No
//! cudarc type appears in these signatures: streams are `*mut c_void`, addresses `u64`.
use crate::device::{Buffer, Device};
use crate::kernels::{Launch, MODULES};
use crate::{Error, Result};
use bytemuck::Pod;
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::{result, sys, CudaContext, CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::ffi::CString;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// A device buffer of `T` (bytes underneath, so any `Pod` element works): owned (freed on
/// drop), or a view of memory the caller owns ([`CudaDevice::view`], [`CudaDevice::with_arena`]).
pub struct CudaBuf<T> {
    bytes: Option<CudaSlice<u8>>,
    len: usize,
    ptr: u64,
    _t: PhantomData<T>,
}

impl<T> CudaBuf<T> {
    /// Whether the buffer views caller-owned memory (nothing is freed when it drops).
    pub fn is_view(&self) -> bool {
        self.bytes.is_none()
    }
}

pub use crate::device::{workspace_granule, WORKSPACE_ALIGN as ARENA_ALIGN};

/// A caller workspace address must be non-null and [`ARENA_ALIGN`]-aligned. Checked before its
/// size, so that a misaligned pointer is reported as such whatever length comes with it.
pub fn check_arena_ptr(ptr: u64) -> Result<()> {
    if ptr == 0 || !ptr.is_multiple_of(ARENA_ALIGN as u64) {
        return Err(Error::InvalidArgument {
            arg: "workspace",
            value: format!("{ptr:#x}"),
            why: format!("must be a non-null device address aligned to {ARENA_ALIGN} bytes"),
        });
    }
    Ok(())
}

/// The caller memory [`CudaDevice::with_arena`] hands out, front to back.
struct Arena {
    next: u64,
    end: u64,
}

impl Arena {
    fn carve(&mut self, bytes: usize) -> Result<u64> {
        let need = workspace_granule(bytes)? as u64;
        if self.end - self.next < need {
            return Err(Error::InvalidArgument {
                arg: "workspace",
                value: format!("{} bytes left", self.end - self.next),
                why: format!("too small: a buffer of {need} more bytes does not fit"),
            });
        }
        let p = self.next;
        self.next += need;
        Ok(p)
    }
}

impl<T> Buffer<T> for CudaBuf<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn addr(&self) -> u64 {
        self.ptr
    }
    fn addr_mut(&mut self) -> u64 {
        self.ptr
    }
}

#[derive(Clone, Copy)]
struct Func(sys::CUfunction);
// SAFETY: CUfunction handles belong to the context, not to a thread; every use binds the
// context to the calling thread first.
unsafe impl Send for Func {}
#[derive(Clone, Copy)]
struct Module(sys::CUmodule);
// SAFETY: as for Func.
unsafe impl Send for Module {}

/// A GPU with one stream.
pub struct CudaDevice {
    /// cuBLASLt, when it loads as well: the GEMMs with a bias ([`Device::gemm_nt_bias`]).
    /// First, so that it is dropped (its handle destroyed) while the context is still alive:
    /// unlike cuBLAS's handle it holds no reference to the context.
    lt: Option<Lt>,
    /// Whether [`Device::gemm_nt_bias`] may use cuBLASLt ([`CudaDevice::set_bias_epilogue`]).
    lt_on: std::sync::atomic::AtomicBool,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Module>>,
    funcs: Mutex<HashMap<String, Func>>,
    name: String,
    /// cuBLAS, when libcublas loads; otherwise GEMMs use our `linear_*` kernel.
    blas: Option<CudaBlas>,
    /// A caller's stream (as an address; 0 is the legacy default stream) inside
    /// [`CudaDevice::with_stream`].
    stream_override: Mutex<Option<usize>>,
    /// Caller memory that `zeros`/`upload` carve from inside [`CudaDevice::with_arena`].
    arena: Mutex<Option<Arena>>,
}

/// Whether libcuda can be loaded at all (no panic when it cannot).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    unsafe { sys::is_culib_present() }
}

impl CudaDevice {
    /// Opens GPU `ordinal`. A missing driver library or GPU is an error, never a panic.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::LibraryMissing {
                lib: "libcuda.so (NVIDIA driver)",
                detail: "not found by the dynamic loader".into(),
            });
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream: ordering is implicit, so cudarc's per-buffer event tracking is not needed.
        // SAFETY: called before any buffer of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let (major, minor) = ctx.compute_capability()?;
        if major < 8 {
            return Err(Error::Cuda(format!(
                "compute capability {major}.{minor}: the PTX targets sm_80 and newer"
            )));
        }
        // SAFETY: only tries to dlopen libcublas.
        let blas = if unsafe { blas_sys::is_culib_present() } {
            CudaBlas::new(stream.clone()).ok()
        } else {
            None
        };
        // SAFETY: only tries to dlopen libcublasLt.
        let lt = if blas.is_some() && unsafe { lt_sys::is_culib_present() } {
            Lt::new().ok()
        } else {
            None
        };
        let name = format!(
            "{} (sm_{major}{minor}{})",
            ctx.name()?,
            match (&blas, &lt) {
                (Some(_), Some(_)) => ", cuBLAS + cuBLASLt",
                (Some(_), None) => ", cuBLAS (no cuBLASLt: bias passes)",
                _ => ", no cuBLAS: tiled GEMM kernel",
            }
        );
        Ok(CudaDevice {
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            funcs: Mutex::new(HashMap::new()),
            name,
            blas,
            lt,
            lt_on: std::sync::atomic::AtomicBool::new(true),
            stream_override: Mutex::new(None),
            arena: Mutex::new(None),
        })
    }

    /// Whether the GEMMs with a bias add it in cuBLASLt's epilogue (`true`, the default, where
    /// cuBLASLt loads) or run cuBLAS and a bias pass (`false`: the path without cuBLASLt, for
    /// side-by-side timing on one machine).
    pub fn set_bias_epilogue(&self, on: bool) {
        self.lt_on.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The stream work is queued on: the caller's inside [`CudaDevice::with_stream`], else ours.
    fn cur_stream(&self) -> Result<sys::CUstream> {
        let o = *self
            .stream_override
            .lock()
            .map_err(|_| Error::Cuda("stream state poisoned".into()))?;
        Ok(match o {
            Some(s) => s as sys::CUstream,
            None => self.stream.cu_stream(),
        })
    }

    /// Runs `f` with every launch, copy, memset, synchronize and cuBLAS call of this device
    /// queued on `stream` (a `CUstream`/`cudaStream_t`; null is the legacy default stream),
    /// then restores the device's own stream. Work queued by `f` is not waited for, except
    /// where an op reads a value back (ATS's sample count), which synchronizes `stream`.
    /// The override is the device's, not the thread's: keep other threads off this device
    /// while `f` runs (the C ABI gives each handle its own device behind a lock).
    ///
    /// # Safety
    /// `stream` must be null or a live stream of this device's primary context (the context
    /// the CUDA runtime uses), and stay live until the work `f` queues has finished.
    pub unsafe fn with_stream<R>(
        &self,
        stream: *mut std::ffi::c_void,
        f: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        let raw = stream as sys::CUstream;
        {
            let mut o = self
                .stream_override
                .lock()
                .map_err(|_| Error::Cuda("stream state poisoned".into()))?;
            if o.is_some() {
                return Err(Error::InvalidArgument {
                    arg: "stream",
                    value: format!("{stream:p}"),
                    why: "with_stream calls do not nest".into(),
                });
            }
            *o = Some(raw as usize);
        }
        let set = self.set_blas_stream(raw);
        let r = set.and_then(|_| f());
        let restore = self.set_blas_stream(self.stream.cu_stream());
        if let Ok(mut o) = self.stream_override.lock() {
            *o = None;
        }
        let r = r?;
        restore?;
        Ok(r)
    }

    fn set_blas_stream(&self, s: sys::CUstream) -> Result<()> {
        if let Some(b) = &self.blas {
            self.ctx.bind_to_thread()?;
            // SAFETY: the handle is live; `s` is ours or the caller's live stream (see
            // `with_stream`). The two stream types are the same C type.
            unsafe { blas::set_stream(*b.handle(), s as blas_sys::cudaStream_t) }
                .map_err(|e| Error::Cuda(format!("cublasSetStream: {e:?}")))?;
        }
        Ok(())
    }

    /// Runs `f` with every buffer it makes through `zeros`/`upload` carved out of the caller's
    /// `bytes` bytes at `ptr`, in order, each at an [`ARENA_ALIGN`] boundary and zero-filled
    /// (`cuMemsetD8Async` on the current stream): nothing is allocated. The buffers made are
    /// views: nothing is freed when they drop. A buffer that does not fit is an error. Outside
    /// [`CudaDevice::with_stream`] the zero fills are waited for before this returns; inside it
    /// they are ordered before later work on the caller's stream. Like
    /// [`CudaDevice::with_stream`], the arena is the device's while `f` runs.
    ///
    /// # Safety
    /// `[ptr, ptr + bytes)` must be device memory of this context, and stay allocated and
    /// untouched by anyone else for as long as any buffer made in `f` is used.
    pub unsafe fn with_arena<R>(
        &self,
        ptr: u64,
        bytes: usize,
        f: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        check_arena_ptr(ptr)?;
        let end = ptr.checked_add(bytes as u64).ok_or(Error::Overflow {
            what: "workspace end",
        })?;
        {
            let mut a = self
                .arena
                .lock()
                .map_err(|_| Error::Cuda("arena state poisoned".into()))?;
            if a.is_some() {
                return Err(Error::InvalidArgument {
                    arg: "workspace",
                    value: format!("{ptr:#x}"),
                    why: "with_arena calls do not nest".into(),
                });
            }
            *a = Some(Arena { next: ptr, end });
        }
        let r = f();
        if let Ok(mut a) = self.arena.lock() {
            *a = None;
        }
        let r = r?;
        if !self.overridden()? {
            // The zero fills went to our own stream: finish them before anyone else's work.
            self.stream.synchronize()?;
        }
        Ok(r)
    }

    /// A buffer of `len` elements at the caller's device address `ptr` (not owned: nothing is
    /// freed when it drops).
    ///
    /// # Safety
    /// `ptr` must hold `len` elements of `T` in this context's memory for as long as the view
    /// is used (and not be written by others while a kernel reads it).
    pub unsafe fn view<T: Pod>(&self, ptr: u64, len: usize) -> CudaBuf<T> {
        CudaBuf {
            bytes: None,
            len,
            ptr,
            _t: PhantomData,
        }
    }

    /// Queues a copy of `bytes` bytes from device address `src` to `dst` on the current stream.
    ///
    /// # Safety
    /// Both ranges must be device memory of this context, live until the copy has run.
    pub unsafe fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        let s = self.cur_stream()?;
        // SAFETY: the caller guarantees both ranges.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, s) }?;
        Ok(())
    }

    /// Loads every PTX module now, so that no later launch loads one (module loading allocates
    /// device memory for the code).
    pub fn preload(&self) -> Result<()> {
        for (m, _) in MODULES {
            self.load_module(m)?;
        }
        Ok(())
    }

    fn load_module(&self, module: &'static str) -> Result<Module> {
        let mut mods = self
            .modules
            .lock()
            .map_err(|_| Error::Cuda("module cache poisoned".into()))?;
        if let Some(m) = mods.get(module) {
            return Ok(*m);
        }
        let ptx = MODULES
            .iter()
            .find(|(n, _)| *n == module)
            .ok_or_else(|| Error::UnknownKernel(module.to_string()))?
            .1;
        let c = CString::new(ptx)
            .map_err(|_| Error::Cuda(format!("PTX of {module} holds a NUL byte")))?;
        self.ctx.bind_to_thread()?;
        // SAFETY: `c` is a NUL-terminated PTX image that outlives the call.
        let m = Module(unsafe { result::module::load_data(c.as_ptr() as *const _) }?);
        mods.insert(module, m);
        Ok(m)
    }

    fn function(&self, module: &'static str, kernel: &str) -> Result<sys::CUfunction> {
        let mut funcs = self
            .funcs
            .lock()
            .map_err(|_| Error::Cuda("function cache poisoned".into()))?;
        if let Some(f) = funcs.get(kernel) {
            return Ok(f.0);
        }
        let m = self.load_module(module)?;
        let name = CString::new(kernel).map_err(|_| Error::UnknownKernel(kernel.to_string()))?;
        // SAFETY: `m` is a loaded module of this context.
        let f = Func(unsafe { result::module::get_function(m.0, name) }?);
        funcs.insert(kernel.to_string(), f);
        Ok(f.0)
    }

    fn overridden(&self) -> Result<bool> {
        Ok(self
            .stream_override
            .lock()
            .map_err(|_| Error::Cuda("stream state poisoned".into()))?
            .is_some())
    }

    fn alloc_bytes(&self, n: usize) -> Result<CudaSlice<u8>> {
        // cuMemAlloc rejects 0 bytes; an empty buffer still gets a valid address.
        Ok(self.stream.alloc_zeros::<u8>(n.max(1))?)
    }
}

impl Device for CudaDevice {
    type Buf<T: Pod> = CudaBuf<T>;
    fn name(&self) -> String {
        self.name.clone()
    }
    fn zeros<T: Pod>(&self, len: usize) -> Result<CudaBuf<T>> {
        let nbytes = crate::error::mul("buffer bytes", &[len, std::mem::size_of::<T>()])?;
        {
            let mut arena = self
                .arena
                .lock()
                .map_err(|_| Error::Cuda("arena state poisoned".into()))?;
            if let Some(a) = arena.as_mut() {
                let ptr = a.carve(nbytes)?;
                if nbytes > 0 {
                    self.ctx.bind_to_thread()?;
                    // SAFETY: [ptr, ptr + nbytes) lies inside the caller's workspace
                    // (`with_arena`'s contract), carved for this buffer alone.
                    unsafe { result::memset_d8_async(ptr, 0, nbytes, self.cur_stream()?) }?;
                }
                return Ok(CudaBuf {
                    bytes: None,
                    len,
                    ptr,
                    _t: PhantomData,
                });
            }
        }
        let bytes = self.alloc_bytes(nbytes)?;
        if self.overridden()? {
            // Allocated and zeroed on our stream: finish before the caller's stream uses it.
            self.stream.synchronize()?;
        }
        let ptr = {
            let (ptr, _sync) = bytes.device_ptr(&self.stream);
            ptr
        };
        Ok(CudaBuf {
            ptr,
            bytes: Some(bytes),
            len,
            _t: PhantomData,
        })
    }
    fn upload<T: Pod>(&self, data: &[T]) -> Result<CudaBuf<T>> {
        let mut b = self.zeros::<T>(data.len())?;
        self.write(&mut b, data)?;
        Ok(b)
    }
    fn write<T: Pod>(&self, buf: &mut CudaBuf<T>, data: &[T]) -> Result<()> {
        crate::error::check_len("data", data.len(), buf.len)?;
        if data.is_empty() {
            return Ok(());
        }
        let src: &[u8] = bytemuck::cast_slice(data);
        let over = self.overridden()?;
        match &mut buf.bytes {
            Some(owned) if !over => {
                let mut dst = owned.slice_mut(0..src.len());
                self.stream.memcpy_htod(src, &mut dst)?;
            }
            _ => {
                self.ctx.bind_to_thread()?;
                let s = self.cur_stream()?;
                // SAFETY: the buffer holds `len` elements (a view's caller guaranteed it); a
                // copy from pageable memory has read `src` when the call returns.
                unsafe { result::memcpy_htod_async(buf.ptr, src, s) }?;
            }
        }
        Ok(())
    }
    fn download<T: Pod>(&self, buf: &CudaBuf<T>) -> Result<Vec<T>> {
        let nbytes = buf.len * std::mem::size_of::<T>();
        if nbytes == 0 {
            return Ok(Vec::new());
        }
        let over = self.overridden()?;
        match &buf.bytes {
            Some(owned) if !over => {
                let bytes = self.stream.clone_dtoh(&owned.slice(0..nbytes))?;
                Ok(bytemuck::pod_collect_to_vec(&bytes))
            }
            _ => {
                self.ctx.bind_to_thread()?;
                let s = self.cur_stream()?;
                let mut out = vec![T::zeroed(); buf.len];
                // SAFETY: the buffer holds `len` elements; `out` is exactly that large and is
                // not touched until the stream has been synchronized below.
                unsafe {
                    result::memcpy_dtoh_async(
                        bytemuck::cast_slice_mut::<T, u8>(&mut out),
                        buf.ptr,
                        s,
                    )?;
                    result::stream::synchronize(s)?;
                }
                Ok(out)
            }
        }
    }
    unsafe fn launch(&self, l: &Launch) -> Result<()> {
        let f = self.function(l.module, &l.kernel)?;
        let mut slots: Vec<[u8; 8]> = l.args.iter().map(|a| a.bytes()).collect();
        let mut ptrs: Vec<*mut std::ffi::c_void> =
            slots.iter_mut().map(|s| s.as_mut_ptr() as *mut _).collect();
        self.ctx.bind_to_thread()?;
        let c = l.cfg;
        // SAFETY: the caller guarantees the pointer arguments; `ptrs` points at one 8-byte slot
        // per kernel parameter, alive until cuLaunchKernel has copied them.
        unsafe {
            result::launch_kernel(
                f,
                (c.grid[0], c.grid[1], c.grid[2]),
                (c.block[0], c.block[1], c.block[2]),
                c.smem,
                self.cur_stream()?,
                &mut ptrs,
            )?
        };
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        if self.overridden()? {
            self.ctx.bind_to_thread()?;
            // SAFETY: the caller's stream is live inside `with_stream`.
            unsafe { result::stream::synchronize(self.cur_stream()?) }?;
            return Ok(());
        }
        Ok(self.stream.synchronize()?)
    }

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
        let Some(b) = &self.blas else {
            // SAFETY: forwarded from the caller's contract.
            return unsafe { crate::device::gemm_nt_kernel(self, dtype, x, m, k, w, n, y) };
        };
        if m == 0 || n == 0 {
            return Ok(());
        }
        // cuBLAS works on the calling thread's current context.
        self.ctx.bind_to_thread()?;
        let ty = blas_type(dtype);
        let i = |what: &'static str, v: usize| -> Result<i32> {
            i32::try_from(v).map_err(|_| Error::LaunchLimit {
                what,
                value: v as u64,
                limit: i32::MAX as u64,
            })
        };
        let (mi, ki, ni) = (i("m", m)?, i("k", k)?, i("n", n)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major y = x·wᵀ is column-major yᵀ[n, m] = w[n, k]·xᵀ[k, m]: A = w (transposed
        // view of the k×n column-major w), B = x (k×m column-major), both with ld = k.
        // SAFETY: the handle is bound to our stream; the caller guarantees the extents; alpha and
        // beta are f32 because the compute type is 32F.
        unsafe {
            blas::gemm_ex(
                *b.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                &alpha as *const f32 as *const _,
                w as *const _,
                ty,
                ki,
                x as *const _,
                ty,
                ki,
                &beta as *const f32 as *const _,
                y as *mut _,
                ty,
                ni,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::Cuda(format!("cuBLAS GemmEx: {e:?}")))
    }

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
        if self.blas.is_none() {
            // SAFETY: forwarded from the caller's contract.
            return unsafe {
                crate::device::gemm_nt_bias_kernel(self, dtype, x, m, k, w, n, bias, y)
            }
            .map(|()| true);
        }
        let Some(l) = self
            .lt
            .as_ref()
            .filter(|_| self.lt_on.load(std::sync::atomic::Ordering::Relaxed))
        else {
            return Ok(false);
        };
        if m == 0 || n == 0 {
            return Ok(true);
        }
        // The plans promise cuBLASLt 16-byte aligned operands (what every buffer here is: the
        // allocations and the workspace's carve-outs are 256-byte aligned); decline others.
        if [x, w, bias, y].iter().any(|p| p % 16 != 0) {
            return Ok(false);
        }
        self.ctx.bind_to_thread()?;
        let stream = self.cur_stream()?;
        // SAFETY: forwarded from the caller's contract: x [m, k], w [n, k], y [m, n] and bias
        // [n] of `dtype`, 16-byte aligned (checked); the stream is ours or the caller's live one.
        unsafe { l.matmul_bias(dtype, x, m, k, w, n, bias, y, stream) }
    }

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
        let Some(b) = &self.blas else {
            // SAFETY: forwarded from the caller's contract.
            return unsafe {
                crate::device::gemm_nt_batched_kernel(
                    self, dtype, f32_out, x, m, k, sx, w, n, sw, y, sy, batch,
                )
            };
        };
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        let ty = blas_type(dtype);
        let yt = if f32_out {
            blas_sys::cudaDataType::CUDA_R_32F
        } else {
            ty
        };
        let i = |what: &'static str, v: usize| -> Result<i32> {
            i32::try_from(v).map_err(|_| Error::LaunchLimit {
                what,
                value: v as u64,
                limit: i32::MAX as u64,
            })
        };
        let l = |v: usize| -> Result<i64> {
            i64::try_from(v).map_err(|_| Error::Overflow {
                what: "gemm stride",
            })
        };
        let (mi, ki, ni, bi) = (i("m", m)?, i("k", k)?, i("n", n)?, i("batch", batch)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // As gemm_nt, per matrix: column-major yᵀ = w·xᵀ.
        // SAFETY: the handle is bound to our stream; the caller guarantees the extents.
        unsafe {
            blas::gemm_strided_batched_ex(
                *b.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                &alpha as *const f32 as *const _,
                w as *const _,
                ty,
                ki,
                l(sw)?,
                x as *const _,
                ty,
                ki,
                l(sx)?,
                &beta as *const f32 as *const _,
                y as *mut _,
                yt,
                ni,
                l(sy)?,
                bi,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::Cuda(format!("cuBLAS GemmStridedBatchedEx: {e:?}")))
    }
}

fn blas_type(dtype: crate::DType) -> blas_sys::cudaDataType {
    match dtype {
        crate::DType::F32 => blas_sys::cudaDataType::CUDA_R_32F,
        crate::DType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        crate::DType::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
    }
}

/// cuBLASLt for [`Device::gemm_nt_bias`]: one handle and, per (dtype, m, k, n), the
/// descriptors and the algorithm its heuristic picked (or `None` where it has none: the caller
/// then runs the GEMM and a bias pass). The handle and descriptors are host objects; the lock
/// covers the one attribute set per call (the bias pointer) and the call itself.
///
/// No workspace: cuBLASLt then only picks algorithms that need none (no split-K), which the
/// forward's GEMMs (m ≥ 12 rows times n ≥ 768 columns, k ≥ 768) do not need; and a captured
/// graph holds no pointer to memory it does not own.
struct Lt {
    handle: lt_sys::cublasLtHandle_t,
    plans: Mutex<HashMap<LtShape, Option<LtPlan>>>,
}

/// (dtype, m, k, n) of a [`Lt`] plan.
type LtShape = (crate::DType, usize, usize, usize);

// SAFETY: the cuBLASLt handle is thread-safe (it holds no stream; each call names one) and the
// plans are only touched under their lock.
unsafe impl Send for Lt {}
// SAFETY: as for Send.
unsafe impl Sync for Lt {}

/// The descriptors of one GEMM shape: row-major y [m, n] = x [m, k]·w [n, k]ᵀ + bias is the
/// column-major D [n, m] = op(A)·B + bias with A = w stored k × n (ld k, transposed), B = x
/// stored k × m (ld k), D (and C, unread at β = 0) n × m (ld n); the bias epilogue adds a
/// vector of D's n rows, broadcast along m.
struct LtPlan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    a: lt_sys::cublasLtMatrixLayout_t,
    b: lt_sys::cublasLtMatrixLayout_t,
    d: lt_sys::cublasLtMatrixLayout_t,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl Lt {
    fn new() -> Result<Self> {
        Ok(Lt {
            handle: lt::create_handle().map_err(|e| Error::Cuda(format!("cublasLtCreate: {e}")))?,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// See [`Device::gemm_nt_bias`]; `Ok(false)` where cuBLASLt has no algorithm for the shape.
    ///
    /// # Safety
    /// x [m, k], w [n, k], y [m, n] and bias [n] of `dtype` on the current context, 16-byte
    /// aligned; `stream` live.
    #[allow(clippy::too_many_arguments)]
    unsafe fn matmul_bias(
        &self,
        dtype: crate::DType,
        x: u64,
        m: usize,
        k: usize,
        w: u64,
        n: usize,
        bias: u64,
        y: u64,
        stream: sys::CUstream,
    ) -> Result<bool> {
        let err = |what: &str, e: lt::CublasError| Error::Cuda(format!("cuBLASLt {what}: {e}"));
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| Error::Cuda("cuBLASLt plans poisoned".into()))?;
        let plan = match plans.entry((dtype, m, k, n)) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(LtPlan::new(self.handle, dtype, m, k, n)?)
            }
        };
        let Some(p) = plan else {
            return Ok(false);
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the descriptors are live (owned by the plan, under the lock); the bias
        // attribute is a device pointer passed by address, as cuBLASLt reads it; the operands
        // are the caller's (see the contract); alpha and beta are f32 (scale type 32F).
        unsafe {
            lt::set_matmul_desc_attribute(
                p.desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias as *const u64 as *const _,
                std::mem::size_of::<u64>(),
            )
            .map_err(|e| err("bias pointer", e))?;
            lt::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const _,
                &beta as *const f32 as *const _,
                w as *const _,
                p.a,
                x as *const _,
                p.b,
                y as *const _,
                p.d,
                y as *mut _,
                p.d,
                &p.algo,
                std::ptr::null_mut(),
                0,
                stream as lt_sys::cudaStream_t,
            )
            .map_err(|e| err("matmul", e))?;
        }
        Ok(true)
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        if let Ok(mut plans) = self.plans.lock() {
            plans.clear();
        }
        // SAFETY: every plan (the only users of the handle) is gone.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl LtPlan {
    /// The plan of one shape, or `None` where the heuristic finds no algorithm.
    fn new(
        handle: lt_sys::cublasLtHandle_t,
        dtype: crate::DType,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Option<Self>> {
        use lt_sys::cublasLtMatmulDescAttributes_t as A;
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as P;
        let err = |what: &str, e: lt::CublasError| Error::Cuda(format!("cuBLASLt {what}: {e}"));
        let ty = match dtype {
            crate::DType::F32 => lt_sys::cudaDataType::CUDA_R_32F,
            crate::DType::F16 => lt_sys::cudaDataType::CUDA_R_16F,
            crate::DType::BF16 => lt_sys::cudaDataType::CUDA_R_16BF,
        };
        let i = |v: usize| v as i64;
        let desc = lt::create_matmul_desc(
            lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lt_sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| err("matmul desc", e))?;
        // Owned from here: dropped (destroyed) on every early return.
        let mut plan = LtPlan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            // SAFETY: a plain C struct of integers; overwritten by the heuristic's choice.
            algo: unsafe { std::mem::zeroed() },
        };
        let (trans_a, trans_b) = (1i32, 0i32); // CUBLAS_OP_T, CUBLAS_OP_N
        let epilogue = lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
        // SAFETY: the descriptor is live; each value is passed by address with its size.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                A::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans_a as *const i32 as *const _,
                4,
            )
            .map_err(|e| err("transa", e))?;
            lt::set_matmul_desc_attribute(
                desc,
                A::CUBLASLT_MATMUL_DESC_TRANSB,
                &trans_b as *const i32 as *const _,
                4,
            )
            .map_err(|e| err("transb", e))?;
            lt::set_matmul_desc_attribute(
                desc,
                A::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epilogue as *const _ as *const _,
                std::mem::size_of_val(&epilogue),
            )
            .map_err(|e| err("epilogue", e))?;
        }
        plan.a = lt::create_matrix_layout(ty, k as u64, n as u64, i(k))
            .map_err(|e| err("layout A", e))?;
        plan.b = lt::create_matrix_layout(ty, k as u64, m as u64, i(k))
            .map_err(|e| err("layout B", e))?;
        plan.d = lt::create_matrix_layout(ty, n as u64, m as u64, i(n))
            .map_err(|e| err("layout D", e))?;
        let pref = lt::create_matmul_pref().map_err(|e| err("preference", e))?;
        let (ws, align) = (0usize, 16u32);
        // SAFETY: the preference and the layouts are live; values passed by address with
        // their sizes; the preference is destroyed once the heuristic has answered.
        let found = unsafe {
            let mut r = lt::set_matmul_pref_attribute(
                pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const usize as *const _,
                std::mem::size_of::<usize>(),
            );
            for at in [
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                r = r.and_then(|()| {
                    lt::set_matmul_pref_attribute(pref, at, &align as *const u32 as *const _, 4)
                });
            }
            let found = r.and_then(|()| {
                lt::get_matmul_algo_heuristic(handle, desc, plan.a, plan.b, plan.d, plan.d, pref)
            });
            let _ = lt::destroy_matmul_pref(pref);
            found
        };
        match found {
            Ok(h) => {
                plan.algo = h.algo;
                Ok(Some(plan))
            }
            Err(lt::CublasError(lt_sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)) => Ok(None),
            Err(e) => Err(err("heuristic", e)),
        }
    }
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by this plan (null: never made) and is
        // destroyed once.
        unsafe {
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// cuBLAS's workspace inside a captured graph: the graph's GEMM nodes hold its address, so
/// the [`Graph`] owns it (32 MiB: what cuBLAS documents for Hopper; 4 MiB suffices before it).
const GRAPH_BLAS_WORKSPACE: usize = 32 << 20;

/// Work captured once from a stream and replayed with [`CudaDevice::launch_graph`]: one launch
/// for the whole sequence instead of one per kernel, copy and GEMM (the gaps between short
/// kernels are what bounds a token-reduced forward at small batches). Made by
/// [`CudaDevice::capture`].
pub struct Graph {
    exec: cudarc::driver::CudaGraph,
    nodes: usize,
    /// cuBLAS's workspace during the capture, referenced by the captured GEMMs.
    _blas_ws: Option<CudaSlice<u8>>,
}

impl Graph {
    /// Nodes in the graph (kernels, copies, memsets).
    pub fn nodes(&self) -> usize {
        self.nodes
    }
}

impl CudaDevice {
    /// Captures the work `f` queues into a [`Graph`]. `f` runs twice on a stream of its own
    /// (every launch, copy, memset and cuBLAS call of this device goes there, as in
    /// [`CudaDevice::with_stream`]): once uncaptured, so that lazily loaded kernels (ours
    /// and cuBLAS's) are loaded and cuBLAS has chosen its kernels before the capture, then
    /// under capture (relaxed mode). cuBLAS works in a workspace the graph owns.
    ///
    /// `f` must queue only: a host read-back or synchronize inside it fails the capture (an
    /// error, and nothing is left capturing). Buffers `f` makes with `zeros`/`upload` must
    /// come from [`CudaDevice::with_arena`] memory that outlives the graph, since the graph
    /// holds their addresses.
    pub fn capture(&self, f: impl Fn() -> Result<()>) -> Result<Graph> {
        if self.overridden()? {
            return Err(Error::InvalidArgument {
                arg: "stream",
                value: "a with_stream override".into(),
                why: "capture queues on a stream of its own; call it outside with_stream".into(),
            });
        }
        let stream = self.ctx.new_stream()?;
        let blas_ws = match self.blas {
            Some(_) => Some(self.alloc_bytes(GRAPH_BLAS_WORKSPACE)?),
            None => None,
        };
        // The zero fill above ran on our stream; the capture stream does not wait for it.
        self.stream.synchronize()?;
        let raw = stream.cu_stream() as *mut std::ffi::c_void;
        let queue = || {
            self.set_blas_workspace(blas_ws.as_ref())?;
            f()
        };
        // SAFETY: `stream` is a live stream of our context and outlives both calls (the graph
        // keeps it); everything `f` queues is waited for or captured before it drops.
        unsafe { self.with_stream(raw, queue) }?;
        stream.synchronize()?;
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)?;
        // SAFETY: as above.
        let queued = unsafe { self.with_stream(raw, queue) };
        // Always end the capture, so that an error in `f` leaves no stream capturing.
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        let exec = ended?.ok_or_else(|| Error::Cuda("the capture recorded no work".into()))?;
        let mut nodes = 0usize;
        // SAFETY: the graph is live (owned by `exec`); a null node array asks for the count.
        unsafe { sys::cuGraphGetNodes(exec.cu_graph(), std::ptr::null_mut(), &mut nodes) }
            .result()?;
        exec.upload()?;
        stream.synchronize()?;
        Ok(Graph {
            exec,
            nodes,
            _blas_ws: blas_ws,
        })
    }

    /// Queues one replay of `g` on the current stream (ours, or the caller's inside
    /// [`CudaDevice::with_stream`]), ordered after the work queued there before it, such as
    /// the upload of new inputs into the captured input buffer.
    ///
    /// # Safety
    /// Every buffer the captured work touched is still allocated (and not in use elsewhere).
    pub unsafe fn launch_graph(&self, g: &Graph) -> Result<()> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the exec is live (owned by `g`); the stream is ours or the caller's live one.
        unsafe { result::graph::launch(g.exec.cu_graph_exec(), self.cur_stream()?) }?;
        Ok(())
    }

    /// Points cuBLAS at `ws` (nothing without cuBLAS or `ws`). `cublasSetStream` puts cuBLAS
    /// back on its default pool, so this follows every stream change that should keep `ws`.
    fn set_blas_workspace(&self, ws: Option<&CudaSlice<u8>>) -> Result<()> {
        let (Some(b), Some(ws)) = (&self.blas, ws) else {
            return Ok(());
        };
        self.ctx.bind_to_thread()?;
        let (ptr, _sync) = ws.device_ptr(&self.stream);
        // SAFETY: the handle is live; `ws` is device memory of this context that the caller
        // keeps allocated while cuBLAS may use it.
        unsafe {
            blas_sys::cublasSetWorkspace_v2(*b.handle(), ptr as *mut std::ffi::c_void, ws.len())
        }
        .result()
        .map_err(|e| Error::Cuda(format!("cublasSetWorkspace: {e:?}")))
    }
}

impl CudaDevice {
    /// Whether GEMMs go to cuBLAS (else to the crate's tiled `linear` kernel).
    pub fn has_cublas(&self) -> bool {
        self.blas.is_some()
    }

    /// Copies `src` into `dst` on the device (same length): the copy-bandwidth ceiling that
    /// the benches compare the memory-bound kernels with.
    pub fn copy<T: Pod>(&self, src: &CudaBuf<T>, dst: &mut CudaBuf<T>) -> Result<()> {
        crate::error::check_len("dst", dst.len, src.len)?;
        // SAFETY: both buffers hold `len` elements of `T`.
        unsafe { self.copy_dtod(dst.ptr, src.ptr, src.len * std::mem::size_of::<T>()) }
    }

    /// Writes `data` into `buf` from element `offset` on (host to device).
    pub fn write_at<T: Pod>(&self, buf: &mut CudaBuf<T>, offset: usize, data: &[T]) -> Result<()> {
        let end = offset.checked_add(data.len()).ok_or(Error::Overflow {
            what: "write_at end",
        })?;
        if end > buf.len {
            return Err(Error::Shape {
                arg: "write_at",
                expected: format!("offset + data ≤ {} elements", buf.len),
                got: format!("{offset} + {}", data.len()),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        let s = self.cur_stream()?;
        let dst = buf.ptr + (offset * std::mem::size_of::<T>()) as u64;
        // SAFETY: [offset, end) lies inside the buffer (checked above); a copy from pageable
        // memory has read `data` when the call returns.
        unsafe { result::memcpy_htod_async(dst, bytemuck::cast_slice::<T, u8>(data), s) }?;
        Ok(())
    }
}

/// Opens GPU 0, or says why not (for tests and benches that skip without a GPU).
pub fn try_default() -> std::result::Result<CudaDevice, String> {
    CudaDevice::new(0).map_err(|e| e.to_string())
}
