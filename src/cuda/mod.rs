//! The CUDA backend: the only module that touches cudarc (pinned exactly in Cargo.toml, loaded
//! dynamically, so the crate builds without a toolkit and a missing driver is an error value).
//!
//! One context, one stream; modules are loaded lazily from the embedded PTX and cached, and
//! kernels are launched through the same argument marshalling as the host shim.
use crate::device::{Buffer, Device};
use crate::kernels::{Launch, MODULES};
use crate::{Error, Result};
use bytemuck::Pod;
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{result, sys, CudaContext, CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::ffi::CString;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// A device buffer of `T` (bytes underneath, so any `Pod` element works).
pub struct CudaBuf<T> {
    bytes: CudaSlice<u8>,
    len: usize,
    ptr: u64,
    _t: PhantomData<T>,
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
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Module>>,
    funcs: Mutex<HashMap<String, Func>>,
    name: String,
    /// cuBLAS, when libcublas loads; otherwise GEMMs use our `linear_*` kernel.
    blas: Option<CudaBlas>,
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
        let name = format!(
            "{} (sm_{major}{minor}{})",
            ctx.name()?,
            if blas.is_some() {
                ", cuBLAS"
            } else {
                ", no cuBLAS: tiled GEMM kernel"
            }
        );
        Ok(CudaDevice {
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            funcs: Mutex::new(HashMap::new()),
            name,
            blas,
        })
    }

    fn function(&self, module: &'static str, kernel: &str) -> Result<sys::CUfunction> {
        let mut funcs = self
            .funcs
            .lock()
            .map_err(|_| Error::Cuda("function cache poisoned".into()))?;
        if let Some(f) = funcs.get(kernel) {
            return Ok(f.0);
        }
        let mut mods = self
            .modules
            .lock()
            .map_err(|_| Error::Cuda("module cache poisoned".into()))?;
        let m = match mods.get(module) {
            Some(m) => *m,
            None => {
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
                m
            }
        };
        let name = CString::new(kernel).map_err(|_| Error::UnknownKernel(kernel.to_string()))?;
        // SAFETY: `m` is a loaded module of this context.
        let f = Func(unsafe { result::module::get_function(m.0, name) }?);
        funcs.insert(kernel.to_string(), f);
        Ok(f.0)
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
        let bytes = self.alloc_bytes(crate::error::mul(
            "buffer bytes",
            &[len, std::mem::size_of::<T>()],
        )?)?;
        let ptr = {
            let (ptr, _sync) = bytes.device_ptr(&self.stream);
            ptr
        };
        Ok(CudaBuf {
            ptr,
            bytes,
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
        let mut dst = buf.bytes.slice_mut(0..src.len());
        self.stream.memcpy_htod(src, &mut dst)?;
        Ok(())
    }
    fn download<T: Pod>(&self, buf: &CudaBuf<T>) -> Result<Vec<T>> {
        let nbytes = buf.len * std::mem::size_of::<T>();
        if nbytes == 0 {
            return Ok(Vec::new());
        }
        let bytes = self.stream.clone_dtoh(&buf.bytes.slice(0..nbytes))?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
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
                self.stream.cu_stream(),
                &mut ptrs,
            )?
        };
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
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

impl CudaDevice {
    /// Whether GEMMs go to cuBLAS (else to the crate's tiled `linear` kernel).
    pub fn has_cublas(&self) -> bool {
        self.blas.is_some()
    }

    /// Copies `src` into `dst` on the device (same length): the copy-bandwidth ceiling that
    /// the benches compare the memory-bound kernels with.
    pub fn copy<T: Pod>(&self, src: &CudaBuf<T>, dst: &mut CudaBuf<T>) -> Result<()> {
        crate::error::check_len("dst", dst.len, src.len)?;
        let n = src.len * std::mem::size_of::<T>();
        if n == 0 {
            return Ok(());
        }
        let mut d = dst.bytes.slice_mut(0..n);
        self.stream.memcpy_dtod(&src.bytes.slice(0..n), &mut d)?;
        Ok(())
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
        let sz = std::mem::size_of::<T>();
        let src: &[u8] = bytemuck::cast_slice(data);
        let mut d = buf.bytes.slice_mut(offset * sz..end * sz);
        self.stream.memcpy_htod(src, &mut d)?;
        Ok(())
    }
}

/// Opens GPU 0, or says why not (for tests and benches that skip without a GPU).
pub fn try_default() -> std::result::Result<CudaDevice, String> {
    CudaDevice::new(0).map_err(|e| e.to_string())
}
