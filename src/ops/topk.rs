//! Per-row top-k selection.
//!
//! # Contract
//! For each row of `x` [rows, n] (any float dtype, compared as f32):
//! - `idx` [rows, k]: the indices of the k largest values, in **descending** value order;
//!   equal values are ordered by **lower index first**;
//! - `compl` [rows, n−k]: the remaining indices in **ascending** order;
//! - `-0.0 == +0.0` (a tie, broken by index); `+inf` and `-inf` order as usual;
//! - **NaN policy**: NaN ranks above `+inf` (as `torch.topk` does), all NaNs tie with each
//!   other (so several NaNs are taken lowest index first);
//! - 0 ≤ k ≤ n; rows of any length (the kernel loops; no thread-per-element limit);
//! - deterministic: the output depends only on the row.
//!
//! Kernel: radix select over 8-bit digits (CUB block top-k style, 256-bucket histogram), an
//! index-ordered compaction, and a bitonic sort of the winners in shared memory (up to 2048;
//! above that each winner's rank is counted against the row).
use super::check_buf;
use crate::kernels::{Arg, Launch, ROW_GRID_CAP};
use crate::{error, Buffer, Device, Element, Error, Result};

/// Threads per block of the selection kernels (kernels/topk.cuh `CLCA_TOPK_THREADS`).
pub const TOPK_THREADS: u32 = 256;

pub(crate) fn check_topk(x_len: usize, rows: usize, n: usize, k: usize) -> Result<()> {
    if k > n {
        return Err(Error::InvalidArgument {
            arg: "k",
            value: k.to_string(),
            why: format!("k > n = {n}"),
        });
    }
    error::to_u32("n", n)?;
    error::check_len("x", x_len, error::mul("rows*n", &[rows, n])?)
}

/// The launch of `topk_select_{dtype}` over raw device addresses (validated shapes only).
pub(crate) fn launch_topk(
    dtype: crate::DType,
    x: u64,
    rows: usize,
    n: usize,
    k: usize,
    idx: u64,
    compl: u64,
) -> Result<Launch> {
    let grid = error::to_u32("rows", rows.min(ROW_GRID_CAP as usize))?;
    Launch::new(
        "topk",
        "topk_select",
        dtype,
        [grid, 1, 1],
        [TOPK_THREADS, 1, 1],
        vec![
            Arg::Ptr(x),
            Arg::I64(rows as i64),
            Arg::U32(error::to_u32("n", n)?),
            Arg::U32(error::to_u32("k", k)?),
            Arg::Ptr(idx),
            Arg::Ptr(compl),
        ],
    )
}

/// Top-k of every row of `x` [rows, n] into `idx` [rows, k] and `compl` [rows, n−k].
pub fn topk_select<D: Device, T: Element>(
    dev: &D,
    x: &D::Buf<T>,
    rows: usize,
    n: usize,
    k: usize,
    idx: &mut D::Buf<u32>,
    compl: &mut D::Buf<u32>,
) -> Result<()> {
    check_topk(x.len(), rows, n, k)?;
    check_buf("idx", idx, error::mul("rows*k", &[rows, k])?)?;
    check_buf("compl", compl, error::mul("rows*(n-k)", &[rows, n - k])?)?;
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let l = launch_topk(
        T::DTYPE,
        x.addr(),
        rows,
        n,
        k,
        idx.addr_mut(),
        compl.addr_mut(),
    )?;
    // SAFETY: x holds rows*n, idx rows*k and compl rows*(n-k) elements (checked above), which
    // is exactly what topk_select_* reads and writes.
    unsafe { dev.launch(&l) }
}
