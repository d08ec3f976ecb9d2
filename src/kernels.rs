//! The kernel table (generated from kernels/kernels.txt), the embedded PTX, and the launch
//! description that both executors (host shim, CUDA) consume.

/// The PTX of every module, from NVRTC at build time or the committed `ptx/`.
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

include!(concat!(env!("OUT_DIR"), "/kernel_table.rs"));

/// Mirror of `clca_launch_cfg` in kernels/host_shim.h.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LaunchCfg {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
}

/// One kernel argument, marshalled the way cuLaunchKernel expects (`void**` to each value).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device (or, for the shim, host) address; 0 means a null pointer.
    Ptr(u64),
    U32(u32),
    I64(i64),
    F32(f32),
}

impl Arg {
    /// The value's bytes, at the start of an 8-byte slot (little endian, like the device).
    pub(crate) fn bytes(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        match self {
            Arg::Ptr(v) => out.copy_from_slice(&v.to_le_bytes()),
            Arg::I64(v) => out.copy_from_slice(&v.to_le_bytes()),
            Arg::U32(v) => out[..4].copy_from_slice(&v.to_le_bytes()),
            Arg::F32(v) => out[..4].copy_from_slice(&v.to_le_bytes()),
        }
        out
    }
}

/// A fully validated launch: which kernel, the geometry, and the arguments in order.
#[derive(Clone, Debug)]
pub struct Launch {
    pub module: &'static str,
    pub kernel: String,
    pub cfg: LaunchCfg,
    pub args: Vec<Arg>,
}

/// Grid limits of every CUDA device since compute capability 3.0.
pub const MAX_GRID_X: u32 = i32::MAX as u32;
pub const MAX_GRID_YZ: u32 = 65_535;
/// Blocks over rows are capped here and the kernels loop (grid-stride) over the rest.
pub const ROW_GRID_CAP: u32 = 1 << 16;

impl Launch {
    /// A launch of `{op}_{dtype}` from `module`, checked against the kernel table and the
    /// grid/block limits. Running it is `unsafe` ([`crate::Device::launch`]).
    pub fn new(
        module: &'static str,
        op: &str,
        dtype: crate::DType,
        grid: [u32; 3],
        block: [u32; 3],
        args: Vec<Arg>,
    ) -> crate::Result<Self> {
        let kernel = format!("{op}_{}", dtype.suffix());
        if !KERNELS.iter().any(|(m, k)| *m == module && *k == kernel) {
            return Err(crate::Error::UnknownKernel(kernel));
        }
        if grid[0] == 0 || grid[0] > MAX_GRID_X {
            return Err(crate::Error::LaunchLimit {
                what: "grid.x",
                value: grid[0] as u64,
                limit: MAX_GRID_X as u64,
            });
        }
        for (what, g) in [("grid.y", grid[1]), ("grid.z", grid[2])] {
            if g == 0 || g > MAX_GRID_YZ {
                return Err(crate::Error::LaunchLimit {
                    what,
                    value: g as u64,
                    limit: MAX_GRID_YZ as u64,
                });
            }
        }
        let threads = block.iter().map(|&b| b as u64).product::<u64>();
        if threads == 0 || threads > 1024 {
            return Err(crate::Error::LaunchLimit {
                what: "threads per block",
                value: threads,
                limit: 1024,
            });
        }
        Ok(Launch {
            module,
            kernel,
            cfg: LaunchCfg {
                grid,
                block,
                smem: 0,
            },
            args,
        })
    }

    /// Sets the dynamic shared memory, within the default 48 KiB per block.
    pub fn with_smem(mut self, bytes: usize) -> crate::Result<Self> {
        if bytes > MAX_DYN_SMEM as usize {
            return Err(crate::Error::LaunchLimit {
                what: "dynamic shared memory bytes",
                value: bytes as u64,
                limit: MAX_DYN_SMEM as u64,
            });
        }
        self.cfg.smem = bytes as u32;
        Ok(self)
    }
}

/// Dynamic shared memory every CUDA device grants without an opt-in.
pub const MAX_DYN_SMEM: u32 = 48 * 1024;
