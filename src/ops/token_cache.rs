//! The cross-layer token cache (SPEC §2.3): carriers are taken after a block into a
//! preallocated cache and recovered into the tail of the sequence at recovery layers.
//!
//! # Contract
//! Sequences live in `x` [batch, x_cap, d] with the first `n` tokens valid; the cache is
//! [batch, cache_cap, d]. Both capacities come from [`crate::plan`], so nothing is allocated
//! per layer.
//! - [`cache_take`] writes, at cache slot `slot`: the GAP carrier `mean(x[pool])` (f32 sum in
//!   token order / count) when `gap`, then the last `num_clr` tokens `x[n−num_clr..n)`.
//!   An empty GAP range is an error (the authors' code produces NaN there, SPEC §7 item 4).
//! - [`recover`] appends cache slots `0..count` after token n (x[n..n+count)).
use crate::kernels::{Arg, Launch};
use crate::{error, Buffer, Device, Element, Error, Result};
use std::ops::Range;

/// Arguments of [`cache_take`].
#[derive(Clone, Debug)]
pub struct TakeArgs {
    pub batch: usize,
    /// Token capacity of each sample in `x`.
    pub x_cap: usize,
    /// Current sequence length.
    pub n: usize,
    /// Width.
    pub d: usize,
    /// GAP token range (half-open).
    pub pool: Range<usize>,
    /// Whether the GAP carrier is taken.
    pub gap: bool,
    /// Number of clr carriers (the last `num_clr` tokens).
    pub num_clr: usize,
    /// Token capacity of each sample in the cache.
    pub cache_cap: usize,
    /// First cache slot to write.
    pub slot: usize,
}

impl TakeArgs {
    /// Cache slots written.
    pub fn carriers(&self) -> usize {
        self.gap as usize + self.num_clr
    }
}

pub(crate) fn check_take(x_len: usize, cache_len: usize, a: &TakeArgs) -> Result<()> {
    if a.n > a.x_cap {
        return Err(Error::InvalidArgument {
            arg: "n",
            value: a.n.to_string(),
            why: format!("exceeds x_cap = {}", a.x_cap),
        });
    }
    if a.num_clr > a.n {
        return Err(Error::InvalidArgument {
            arg: "num_clr",
            value: a.num_clr.to_string(),
            why: format!("exceeds n = {}", a.n),
        });
    }
    if a.gap && (a.pool.start >= a.pool.end || a.pool.end > a.n) {
        return Err(Error::Plan(format!(
            "GAP range {:?} is empty or beyond n = {} (the authors' code yields NaN here)",
            a.pool, a.n
        )));
    }
    if a.slot + a.carriers() > a.cache_cap {
        return Err(Error::InvalidArgument {
            arg: "slot",
            value: a.slot.to_string(),
            why: format!(
                "slot + {} carriers exceeds cache_cap = {}",
                a.carriers(),
                a.cache_cap
            ),
        });
    }
    for (what, v) in [
        ("batch", a.batch),
        ("x_cap", a.x_cap),
        ("d", a.d),
        ("cache_cap", a.cache_cap),
    ] {
        error::to_u32(what, v)?;
    }
    error::check_len(
        "x",
        x_len,
        error::mul("batch*x_cap*d", &[a.batch, a.x_cap, a.d])?,
    )?;
    error::check_len(
        "cache",
        cache_len,
        error::mul("batch*cache_cap*d", &[a.batch, a.cache_cap, a.d])?,
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check_copy(
    src_len: usize,
    src_cap: usize,
    src_off: usize,
    dst_len: usize,
    dst_cap: usize,
    dst_off: usize,
    batch: usize,
    count: usize,
    d: usize,
) -> Result<()> {
    if src_off + count > src_cap {
        return Err(Error::InvalidArgument {
            arg: "count",
            value: count.to_string(),
            why: format!("src_off + count exceeds src capacity {src_cap}"),
        });
    }
    if dst_off + count > dst_cap {
        return Err(Error::InvalidArgument {
            arg: "count",
            value: count.to_string(),
            why: format!("dst_off + count exceeds dst capacity {dst_cap}"),
        });
    }
    for (what, v) in [
        ("batch", batch),
        ("src_cap", src_cap),
        ("dst_cap", dst_cap),
        ("d", d),
    ] {
        error::to_u32(what, v)?;
    }
    error::check_len(
        "src",
        src_len,
        error::mul("batch*src_cap*d", &[batch, src_cap, d])?,
    )?;
    error::check_len(
        "dst",
        dst_len,
        error::mul("batch*dst_cap*d", &[batch, dst_cap, d])?,
    )
}

const THREADS: u32 = 256;

/// Take the carriers of one block into the cache (see the module contract).
pub fn cache_take<D: Device, T: Element>(
    dev: &D,
    x: &D::Buf<T>,
    cache: &mut D::Buf<T>,
    a: &TakeArgs,
) -> Result<()> {
    check_take(x.len(), cache.len(), a)?;
    if a.batch == 0 || a.d == 0 || a.carriers() == 0 {
        return Ok(());
    }
    let l = take_launch(T::DTYPE, x.addr(), cache.addr_mut(), a)?;
    // SAFETY: x is [batch, x_cap, d] with pool ⊂ [0, n) and n ≤ x_cap; the cache is
    // [batch, cache_cap, d] with slot + carriers ≤ cache_cap (all checked above).
    unsafe { dev.launch(&l) }
}

/// Copy whole tokens: dst[b, dst_off + t] = src[b, src_off + t], t < count.
#[allow(clippy::too_many_arguments)]
pub fn tokens_copy<D: Device, T: Element>(
    dev: &D,
    src: &D::Buf<T>,
    src_cap: usize,
    src_off: usize,
    dst: &mut D::Buf<T>,
    dst_cap: usize,
    dst_off: usize,
    batch: usize,
    count: usize,
    d: usize,
) -> Result<()> {
    check_copy(
        src.len(),
        src_cap,
        src_off,
        dst.len(),
        dst_cap,
        dst_off,
        batch,
        count,
        d,
    )?;
    if batch == 0 || count == 0 || d == 0 {
        return Ok(());
    }
    let l = copy_launch(
        T::DTYPE,
        src.addr(),
        src_cap,
        src_off,
        dst.addr_mut(),
        dst_cap,
        dst_off,
        batch,
        count,
        d,
    )?;
    // SAFETY: both ranges lie inside their capacities and the buffers hold batch*cap*d.
    unsafe { dev.launch(&l) }
}

/// Recover `count` cached tokens into x after token `n`; returns the new length n + count.
#[allow(clippy::too_many_arguments)]
pub fn recover<D: Device, T: Element>(
    dev: &D,
    cache: &D::Buf<T>,
    cache_cap: usize,
    count: usize,
    x: &mut D::Buf<T>,
    x_cap: usize,
    n: usize,
    batch: usize,
    d: usize,
) -> Result<usize> {
    tokens_copy(dev, cache, cache_cap, 0, x, x_cap, n, batch, count, d)?;
    Ok(n + count)
}

/// The launch of `cache_take_{dtype}` (arguments validated except the buffer lengths).
pub(crate) fn take_launch(dtype: crate::DType, x: u64, cache: u64, a: &TakeArgs) -> Result<Launch> {
    Launch::new(
        "token_cache",
        "cache_take",
        dtype,
        [
            error::to_u32("d", a.d.div_ceil(THREADS as usize))?,
            error::to_u32("batch", a.batch)?,
            1,
        ],
        [THREADS, 1, 1],
        vec![
            Arg::Ptr(x),
            Arg::U32(error::to_u32("batch", a.batch)?),
            Arg::U32(error::to_u32("x_cap", a.x_cap)?),
            Arg::U32(error::to_u32("n", a.n)?),
            Arg::U32(error::to_u32("d", a.d)?),
            Arg::U32(error::to_u32("pool", a.pool.start)?),
            Arg::U32(error::to_u32("pool", a.pool.end)?),
            Arg::U32(a.gap as u32),
            Arg::U32(error::to_u32("num_clr", a.num_clr)?),
            Arg::Ptr(cache),
            Arg::U32(error::to_u32("cache_cap", a.cache_cap)?),
            Arg::U32(error::to_u32("slot", a.slot)?),
        ],
    )
}

/// The launch of `tokens_copy_{dtype}`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_launch(
    dtype: crate::DType,
    src: u64,
    src_cap: usize,
    src_off: usize,
    dst: u64,
    dst_cap: usize,
    dst_off: usize,
    batch: usize,
    count: usize,
    d: usize,
) -> Result<Launch> {
    Launch::new(
        "token_cache",
        "tokens_copy",
        dtype,
        [
            error::to_u32("count", count.max(1))?,
            error::to_u32("batch", batch.max(1))?,
            1,
        ],
        [THREADS, 1, 1],
        vec![
            Arg::Ptr(src),
            Arg::U32(error::to_u32("src_cap", src_cap)?),
            Arg::U32(error::to_u32("src_off", src_off)?),
            Arg::Ptr(dst),
            Arg::U32(error::to_u32("dst_cap", dst_cap)?),
            Arg::U32(error::to_u32("dst_off", dst_off)?),
            Arg::U32(error::to_u32("batch", batch)?),
            Arg::U32(error::to_u32("count", count)?),
            Arg::U32(error::to_u32("d", d)?),
        ],
    )
}

pub(crate) fn check_gather(
    src_len: usize,
    src_cap: usize,
    idx_len: usize,
    idx_stride: usize,
    dst_len: usize,
    dst_cap: usize,
    dst_off: usize,
    batch: usize,
    count: usize,
    d: usize,
) -> Result<()> {
    // The destination range as a copy's; the source only by its shape (indices may repeat).
    check_copy(src_len, src_cap, 0, dst_len, dst_cap, dst_off, batch, 0, d)?;
    if dst_off + count > dst_cap {
        return Err(Error::InvalidArgument {
            arg: "count",
            value: count.to_string(),
            why: format!("dst_off + count exceeds dst capacity {dst_cap}"),
        });
    }
    if batch > 0 && count > 0 {
        let need = error::mul("(batch-1)*idx_stride", &[batch - 1, idx_stride])? + count;
        if idx_len < need {
            return Err(Error::Shape {
                arg: "idx",
                expected: format!("at least {need} indices"),
                got: idx_len.to_string(),
            });
        }
    }
    Ok(())
}

/// Gather whole tokens: dst[b, dst_off + t] = src[b, idx[b·idx_stride + t]] for t < count;
/// an index ≥ src_cap writes nothing (the destination row keeps its value).
#[allow(clippy::too_many_arguments)]
pub fn tokens_gather<D: Device, T: Element>(
    dev: &D,
    src: &D::Buf<T>,
    src_cap: usize,
    idx: &D::Buf<u32>,
    idx_stride: usize,
    dst: &mut D::Buf<T>,
    dst_cap: usize,
    dst_off: usize,
    batch: usize,
    count: usize,
    d: usize,
) -> Result<()> {
    check_gather(
        src.len(),
        src_cap,
        idx.len(),
        idx_stride,
        dst.len(),
        dst_cap,
        dst_off,
        batch,
        count,
        d,
    )?;
    if batch == 0 || count == 0 || d == 0 {
        return Ok(());
    }
    let l = gather_launch(
        T::DTYPE,
        src.addr(),
        src_cap,
        idx.addr(),
        idx_stride,
        dst.addr_mut(),
        dst_cap,
        dst_off,
        batch,
        count,
        d,
    )?;
    // SAFETY: src and dst hold batch·cap·d elements, the destination range lies inside dst_cap,
    // idx holds the (batch−1)·stride + count indices read, and out-of-range indices are skipped.
    unsafe { dev.launch(&l) }
}

/// The launch of `tokens_gather_{dtype}`: dst[b, dst_off + t] = src[b, idx[b·idx_stride + t]]
/// for t < count (an index ≥ src_cap writes nothing).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather_launch(
    dtype: crate::DType,
    src: u64,
    src_cap: usize,
    idx: u64,
    idx_stride: usize,
    dst: u64,
    dst_cap: usize,
    dst_off: usize,
    batch: usize,
    count: usize,
    d: usize,
) -> Result<Launch> {
    if dst_off + count > dst_cap {
        return Err(Error::InvalidArgument {
            arg: "count",
            value: count.to_string(),
            why: format!("dst_off + count exceeds dst capacity {dst_cap}"),
        });
    }
    Launch::new(
        "token_cache",
        "tokens_gather",
        dtype,
        [
            error::to_u32("count", count.max(1))?,
            error::to_u32("batch", batch.max(1))?,
            1,
        ],
        [THREADS, 1, 1],
        vec![
            Arg::Ptr(src),
            Arg::U32(error::to_u32("src_cap", src_cap)?),
            Arg::Ptr(idx),
            Arg::U32(error::to_u32("idx_stride", idx_stride)?),
            Arg::Ptr(dst),
            Arg::U32(error::to_u32("dst_cap", dst_cap)?),
            Arg::U32(error::to_u32("dst_off", dst_off)?),
            Arg::U32(error::to_u32("batch", batch)?),
            Arg::U32(error::to_u32("count", count)?),
            Arg::U32(error::to_u32("d", d)?),
        ],
    )
}
