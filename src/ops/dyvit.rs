//! The data-dependent pieces of DynamicViT's score predictor (SPEC §4.8, the authors'
//! `PredictorLG`; reference [`crate::cpu::dyvit::predict`]). The LayerNorm, the Linears and the
//! GELUs around them are the ViT kernels and GEMMs.
//!
//! # Contract
//! - [`pool_global`]: `h` [batch, n, d] (the GELU of the first Linear) in place: channels
//!   `[⌊d/2⌋, d)` of every token become the δ-weighted mean over the sample's tokens,
//!   `(Σ_u δ_u·h_u[c]) / (Σ_u δ_u) + 1e-6` (the epsilon after the division, as the authors),
//!   both sums in f32 in ascending u, rounded once to `T`. The first ⌊d/2⌋ channels (the local
//!   part) are left alone, so `h` becomes the predictor's `[local, global]` input.
//!   `Σ δ = 0` (every token a recovered one) gives 0/0 = NaN, as the reference; a NaN or inf
//!   in `h` or `δ` propagates to its channel(s).
//! - [`log_softmax2`]: rows of two logits [batch, n, 2] in place → torch's log-softmax,
//!   `x − max − ln Σ exp(x − max)` in f32; the keep score (channel 0, log p_keep) is also
//!   written unrounded to `score` [batch, n] (f32), ready for [`crate::ops::topk`]. The max
//!   ignores a NaN (as the reference), which then makes the row NaN through the sum; `+inf`
//!   makes the row NaN (`inf − inf`).
//!
//! Both are deterministic (no atomics).
use super::check_buf;
use crate::kernels::{Arg, Launch, ROW_GRID_CAP};
use crate::{error, Buffer, Device, Element, Result};

const POOL_THREADS: u32 = 128;
const ROW_THREADS: u32 = 256;

/// In place: the upper-half channels of `h` [batch, n, d] become the δ-weighted mean over the
/// tokens + 1e-6 (`delta` [batch, n], f32). See the module contract.
pub fn pool_global<D: Device, T: Element>(
    dev: &D,
    h: &mut D::Buf<T>,
    delta: &D::Buf<f32>,
    batch: usize,
    n: usize,
    d: usize,
) -> Result<()> {
    for (what, v) in [("batch", batch), ("n", n), ("d", d)] {
        error::to_u32(what, v)?;
    }
    check_buf("h", h, error::mul("batch*n*d", &[batch, n, d])?)?;
    check_buf("delta", delta, error::mul("batch*n", &[batch, n])?)?;
    let upper = d - d / 2;
    if batch == 0 || n == 0 || upper == 0 {
        return Ok(());
    }
    let l = Launch::new(
        "dyvit",
        "dyvit_pool",
        T::DTYPE,
        [
            error::to_u32("grid.x", upper.div_ceil(POOL_THREADS as usize))?,
            batch as u32,
            1,
        ],
        [POOL_THREADS, 1, 1],
        vec![
            Arg::Ptr(h.addr_mut()),
            Arg::Ptr(delta.addr()),
            Arg::U32(batch as u32),
            Arg::U32(n as u32),
            Arg::U32(d as u32),
        ],
    )?;
    // SAFETY: h [batch,n,d] and delta [batch,n] checked above; each thread reads and writes
    // only its own channel column (c < d) of its sample.
    unsafe { dev.launch(&l) }
}

/// In place: rows of two logits `x` [batch, n, 2] → log-probabilities; channel 0 also goes to
/// `score` [batch, n]. See the module contract.
pub fn log_softmax2<D: Device, T: Element>(
    dev: &D,
    x: &mut D::Buf<T>,
    batch: usize,
    n: usize,
    score: &mut D::Buf<f32>,
) -> Result<()> {
    let rows = error::mul("batch*n", &[batch, n])?;
    let rows32 = error::to_u32("batch*n", rows)?;
    check_buf("x", x, error::mul("batch*n*2", &[rows, 2])?)?;
    check_buf("score", score, rows)?;
    if rows == 0 {
        return Ok(());
    }
    let blocks = rows32.div_ceil(ROW_THREADS).min(ROW_GRID_CAP);
    let l = Launch::new(
        "dyvit",
        "log_softmax2",
        T::DTYPE,
        [blocks, 1, 1],
        [ROW_THREADS, 1, 1],
        vec![
            Arg::Ptr(x.addr_mut()),
            Arg::U32(rows32),
            Arg::Ptr(score.addr_mut()),
        ],
    )?;
    // SAFETY: x [rows,2] and score [rows] checked above; the kernel grid-strides over r < rows.
    unsafe { dev.launch(&l) }
}
