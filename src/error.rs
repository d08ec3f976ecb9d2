//! The one error type of the crate. Every public function returns it instead of panicking.
use thiserror::Error;

/// Everything that can go wrong at a public boundary, with the argument or resource it names.
#[derive(Debug, Error)]
pub enum Error {
    /// A tensor or buffer has the wrong size or shape.
    #[error("shape mismatch for `{arg}`: expected {expected}, got {got}")]
    Shape {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A scalar argument is outside its valid range.
    #[error("invalid `{arg}` = {value}: {why}")]
    InvalidArgument {
        arg: &'static str,
        value: String,
        why: String,
    },
    /// A tensor has the wrong element type.
    #[error("dtype mismatch for `{arg}`: expected {expected}, got {got}")]
    DType {
        arg: String,
        expected: String,
        got: String,
    },
    /// A launch would exceed a device or kernel limit.
    #[error("{what} = {value} exceeds the limit {limit}")]
    LaunchLimit {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// A size computation overflowed.
    #[error("size overflow computing {what}")]
    Overflow { what: &'static str },
    /// The allocator refused a buffer (the request is larger than this machine can give).
    #[error("cannot allocate {bytes} bytes for {what}")]
    Alloc { what: &'static str, bytes: u64 },
    /// A CUDA library (driver, cuBLAS) could not be loaded.
    #[error("CUDA library `{lib}` not available: {detail}")]
    LibraryMissing { lib: &'static str, detail: String },
    /// A kernel failed under the host execution shim (e.g. a barrier reached by part of a block).
    #[error("kernel `{kernel}` on the host shim: {message}")]
    HostShim { kernel: String, message: String },
    /// A kernel name that is not in the kernel table.
    #[error("unknown kernel `{0}`")]
    UnknownKernel(String),
    /// An error from the CUDA driver or cuBLAS.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// Something this release does not implement yet (a reduction method, a model class).
    #[error("{what} is not supported by this release (supported: {supported})")]
    Unsupported { what: String, supported: String },
    /// A model configuration that cannot be planned (for example an empty GAP range).
    #[error("plan: {0}")]
    Plan(String),
    /// A weight or tensor file that is missing, corrupt, or holds the wrong tensors.
    #[error("weights: {0}")]
    Weights(String),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Shorthand for `Result<T, clca::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(feature = "cuda")]
impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(e.to_string())
    }
}

/// `Error::Shape` for a buffer length.
pub(crate) fn check_len(arg: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::Shape {
            arg,
            expected: format!("{expected} elements"),
            got: format!("{got} elements"),
        })
    }
}

/// `Error::InvalidArgument`.
pub(crate) fn invalid(arg: &'static str, value: impl ToString, why: impl Into<String>) -> Error {
    Error::InvalidArgument {
        arg,
        value: value.to_string(),
        why: why.into(),
    }
}

/// Checked product of sizes.
pub(crate) fn mul(what: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or(Error::Overflow { what })
}

/// A zero-filled `Vec` of `n` elements, or [`Error::Alloc`] when the allocator refuses it (no
/// abort: sizes that come from a configuration or a file are not trusted).
pub(crate) fn try_zeroed<T: bytemuck::Zeroable>(what: &'static str, n: usize) -> Result<Vec<T>> {
    let bytes = (n as u64).saturating_mul(std::mem::size_of::<T>() as u64);
    let refused = || Error::Alloc { what, bytes };
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Ok((0..n).map(|_| T::zeroed()).collect());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| refused())?;
    // SAFETY: `layout` has a non-zero size (n > 0, T not zero-sized). A non-null result is a
    // zeroed allocation of n·size_of::<T>() bytes with T's alignment, made by the global
    // allocator with exactly the layout Vec uses for capacity n, and all-zero bytes are a valid
    // T (Zeroable); so the Vec owns it, and frees it with the same layout.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout);
        if p.is_null() {
            return Err(refused());
        }
        Ok(Vec::from_raw_parts(p.cast::<T>(), n, n))
    }
}

/// A `Vec` of `n` copies of `v`, or [`Error::Alloc`] when the allocator refuses it.
pub(crate) fn try_filled<T: Clone>(what: &'static str, n: usize, v: T) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| Error::Alloc {
        what,
        bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
    })?;
    out.resize(n, v);
    Ok(out)
}

/// A size as u32 for a kernel argument, or a typed error.
pub(crate) fn to_u32(what: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::LaunchLimit {
        what,
        value: v as u64,
        limit: u32::MAX as u64,
    })
}
