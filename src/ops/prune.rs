//! Top-K and EViT token pruning (SPEC §4.2) and the fused score → top-k → gather path.
//!
//! # Contract
//! `x` [batch, n, c]; token 0 is cls. `idx` [batch, k] and `compl` [batch, n−1−k] index the
//! non-cls tokens (token `1 + i`), as produced by [`crate::ops::topk`] over the scores.
//! - Top-K: `out` [batch, 1 + k, c] = [cls, x[1+idx[0]], …, x[1+idx[k−1]]] (descending score);
//! - EViT: `out` [batch, 2 + k, c] = Top-K plus the fused token
//!   `Σ_{t ∈ compl} scores[t]·x[1+t]` last, weights not renormalized, `scores` [batch, n−1]
//!   f32. Summed in f32 in a fixed order: the dropped tokens (ascending) cut into
//!   [`crate::cpu::prune::PRUNE_SEGS`] runs of ⌈m / runs⌉, each run summed in ascending t,
//!   then the run sums in run order (the runs are the warps that stream the rows in parallel).
//!
//! [`prune`] runs the headline path: scores and selection in one launch (one block per sample,
//! the radix select needs the whole row), then the gather (+ fuse) over the whole GPU in a
//! second (one warp per kept row, eight warps per 128-channel slice of the fused row, four
//! channels a lane): two launches, whatever the batch.
use super::attn_score::{select, ScoreSource, Selection};
use super::check_buf;
use crate::kernels::{Arg, Launch};
use crate::{error, Buffer, Device, Element, Error, Result};

/// Which pruning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMode {
    /// [cls, kept].
    TopK,
    /// [cls, kept, fused].
    EVit,
}

impl PruneMode {
    /// Output tokens for k kept.
    pub fn out_tokens(self, k: usize) -> usize {
        match self {
            PruneMode::TopK => 1 + k,
            PruneMode::EVit => 2 + k,
        }
    }
}

/// k of the n − 1 non-cls tokens (n ≥ 1), with n and batch within the kernels' u32 range.
fn check_keep(batch: usize, n: usize, k: usize) -> Result<()> {
    if n < 1 || k > n.saturating_sub(1) {
        return Err(Error::InvalidArgument {
            arg: "k",
            value: k.to_string(),
            why: format!("k must be <= n-1 = {}", n.saturating_sub(1)),
        });
    }
    error::to_u32("n", n)?;
    error::to_u32("batch", batch)?;
    Ok(())
}

/// The dropped tokens `compl` [batch, n−1−k] and the scores [batch, n−1] (after
/// [`check_keep`]).
fn check_dropped(
    compl_len: usize,
    scores_len: usize,
    batch: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    error::check_len(
        "compl",
        compl_len,
        error::mul("batch*(n-1-k)", &[batch, n - 1 - k])?,
    )?;
    error::check_len(
        "scores",
        scores_len,
        error::mul("batch*(n-1)", &[batch, n - 1])?,
    )
}

pub(crate) fn check_topk_prune(
    x_len: usize,
    idx_len: usize,
    batch: usize,
    n: usize,
    c: usize,
    k: usize,
) -> Result<()> {
    check_keep(batch, n, k)?;
    error::to_u32("c", c)?;
    error::check_len("x", x_len, error::mul("batch*n*c", &[batch, n, c])?)?;
    error::check_len("idx", idx_len, error::mul("batch*k", &[batch, k])?)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check_evit(
    x_len: usize,
    idx_len: usize,
    compl_len: usize,
    scores_len: usize,
    batch: usize,
    n: usize,
    c: usize,
    k: usize,
) -> Result<()> {
    check_topk_prune(x_len, idx_len, batch, n, c, k)?;
    check_dropped(compl_len, scores_len, batch, n, k)
}

/// Every index must be < `bound` (host-side data only; device indices come from the kernels).
pub(crate) fn check_indices(arg: &'static str, idx: &[u32], bound: usize) -> Result<()> {
    match idx.iter().find(|&&i| i as usize >= bound) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidArgument {
            arg,
            value: i.to_string(),
            why: format!("index out of range 0..{bound}"),
        }),
    }
}

/// `CLCA_PRUNE_THREADS`: eight warps, one output row each in a gather block, one run of the
/// fused sum each in a fuse block.
const GATHER_THREADS: u32 = 256;
const GATHER_WARPS: usize = GATHER_THREADS as usize / 32;

/// Blocks per sample of the prune kernels: ceil((1 + k) / warps) gather blocks, and for EViT
/// ceil(c / 128) fuse blocks (four channels a lane).
fn prune_blocks(mode: PruneMode, k: usize, c: usize) -> usize {
    let gather = (k + 1).div_ceil(GATHER_WARPS);
    match mode {
        PruneMode::TopK => gather,
        PruneMode::EVit => gather + c.div_ceil(32 * 4),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn gather_launch(
    dtype: crate::DType,
    mode: PruneMode,
    x: u64,
    batch: usize,
    n: usize,
    c: usize,
    idx: u64,
    k: usize,
    compl: u64,
    scores: u64,
    out: u64,
) -> Result<Launch> {
    let by = error::to_u32("batch", batch)?;
    match mode {
        PruneMode::TopK => Launch::new(
            "prune",
            "topk_prune",
            dtype,
            [error::to_u32("k", prune_blocks(mode, k, c))?, by, 1],
            [GATHER_THREADS, 1, 1],
            vec![
                Arg::Ptr(x),
                Arg::U32(by),
                Arg::U32(n as u32),
                Arg::U32(c as u32),
                Arg::Ptr(idx),
                Arg::U32(k as u32),
                Arg::Ptr(out),
            ],
        ),
        PruneMode::EVit => Launch::new(
            "prune",
            "evit_prune",
            dtype,
            [error::to_u32("k", prune_blocks(mode, k, c))?, by, 1],
            [GATHER_THREADS, 1, 1],
            vec![
                Arg::Ptr(x),
                Arg::U32(by),
                Arg::U32(n as u32),
                Arg::U32(c as u32),
                Arg::Ptr(idx),
                Arg::U32(k as u32),
                Arg::Ptr(compl),
                Arg::Ptr(scores),
                Arg::Ptr(out),
            ],
        ),
    }
}

/// Top-K prune: `out` [batch, 1 + k, c].
#[allow(clippy::too_many_arguments)]
pub fn topk_prune<D: Device, T: Element>(
    dev: &D,
    x: &D::Buf<T>,
    batch: usize,
    n: usize,
    c: usize,
    idx: &D::Buf<u32>,
    k: usize,
    out: &mut D::Buf<T>,
) -> Result<()> {
    check_topk_prune(x.len(), idx.len(), batch, n, c, k)?;
    check_buf("out", out, error::mul("batch*(1+k)*c", &[batch, 1 + k, c])?)?;
    if batch == 0 || c == 0 {
        return Ok(());
    }
    let l = gather_launch(
        T::DTYPE,
        PruneMode::TopK,
        x.addr(),
        batch,
        n,
        c,
        idx.addr(),
        k,
        0,
        0,
        out.addr_mut(),
    )?;
    // SAFETY: x [batch,n,c], idx [batch,k], out [batch,1+k,c] checked; indices >= n-1 are
    // skipped by the kernel, so no access leaves x.
    unsafe { dev.launch(&l) }
}

/// EViT prune: `out` [batch, 2 + k, c].
#[allow(clippy::too_many_arguments)]
pub fn evit_prune<D: Device, T: Element>(
    dev: &D,
    x: &D::Buf<T>,
    batch: usize,
    n: usize,
    c: usize,
    idx: &D::Buf<u32>,
    k: usize,
    compl: &D::Buf<u32>,
    scores: &D::Buf<f32>,
    out: &mut D::Buf<T>,
) -> Result<()> {
    check_evit(
        x.len(),
        idx.len(),
        compl.len(),
        scores.len(),
        batch,
        n,
        c,
        k,
    )?;
    check_buf("out", out, error::mul("batch*(2+k)*c", &[batch, 2 + k, c])?)?;
    if batch == 0 || c == 0 {
        return Ok(());
    }
    let l = gather_launch(
        T::DTYPE,
        PruneMode::EVit,
        x.addr(),
        batch,
        n,
        c,
        idx.addr(),
        k,
        compl.addr(),
        scores.addr(),
        out.addr_mut(),
    )?;
    // SAFETY: all extents checked above; out-of-range indices are skipped by the kernel.
    unsafe { dev.launch(&l) }
}

/// The launch of `evit_bias_scale_f32` (kernels/prune.cu): `out` [batch, 2 + k] = 1 for cls
/// and the kept rows, S = Σ_{t ∈ compl} scores[t] for the fused row, summed in the fused
/// token's order. Shapes are the caller's to check.
pub(crate) fn bias_scale_launch(
    compl: u64,
    scores: u64,
    batch: usize,
    n: usize,
    k: usize,
    out: u64,
) -> Result<Launch> {
    let by = error::to_u32("batch", batch)?;
    Launch::new(
        "prune",
        "evit_bias_scale",
        crate::DType::F32,
        [by.clamp(1, crate::kernels::ROW_GRID_CAP), 1, 1],
        [32, 1, 1],
        vec![
            Arg::Ptr(compl),
            Arg::Ptr(scores),
            Arg::U32(by),
            Arg::U32(error::to_u32("n", n)?),
            Arg::U32(error::to_u32("k", k)?),
            Arg::Ptr(out),
        ],
    )
}

/// The projection's bias factor per output row of an EViT layer that projects after pruning:
/// `out` [batch, 2 + k] = 1 for [cls, kept], and S = Σ_{t ∈ compl} scores[t] for the fused
/// row (Σ s_t·(W a_t + b) = W (Σ s_t a_t) + S·b), summed exactly as the fused token of a
/// channel of ones ([`crate::cpu::prune::PRUNE_SEGS`] runs), so NaN and ±inf scores carry into
/// S as they carry into the fused token; no dropped tokens (k = n − 1) give S = 0. Reference:
/// [`crate::cpu::prune::evit_bias_scale`].
pub fn evit_bias_scale<D: Device>(
    dev: &D,
    compl: &D::Buf<u32>,
    scores: &D::Buf<f32>,
    batch: usize,
    n: usize,
    k: usize,
    out: &mut D::Buf<f32>,
) -> Result<()> {
    check_bias_scale(compl.len(), scores.len(), batch, n, k)?;
    check_buf("out", out, error::mul("batch*(2+k)", &[batch, 2 + k])?)?;
    if batch == 0 {
        return Ok(());
    }
    let l = bias_scale_launch(compl.addr(), scores.addr(), batch, n, k, out.addr_mut())?;
    // SAFETY: compl [batch, n−1−k], scores [batch, n−1], out [batch, 2+k] checked; an index
    // ≥ n−1 is left out of the sum by the kernel, so no access leaves scores.
    unsafe { dev.launch(&l) }
}

/// The shapes of [`evit_bias_scale`]: k ≤ n − 1, compl [batch, n−1−k], scores [batch, n−1].
pub(crate) fn check_bias_scale(
    compl_len: usize,
    scores_len: usize,
    batch: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    check_keep(batch, n, k)?;
    check_dropped(compl_len, scores_len, batch, n, k)
}

/// The fused pruning layer: scores → top-k (one launch) → gather (+ fuse) (one launch).
/// `sel` is the preallocated selection workspace ([`Selection::new`]); `out` is
/// [batch, mode.out_tokens(k), c].
pub fn prune<D: Device, T: Element>(
    dev: &D,
    src: &ScoreSource<'_, D, T>,
    x: &D::Buf<T>,
    c: usize,
    mode: PruneMode,
    sel: &mut Selection<D>,
    out: &mut D::Buf<T>,
) -> Result<()> {
    select(dev, src, sel)?;
    let (batch, n, k) = (sel.batch, sel.n, sel.k);
    match mode {
        PruneMode::TopK => topk_prune(dev, x, batch, n, c, &sel.idx, k, out),
        PruneMode::EVit => evit_prune(
            dev,
            x,
            batch,
            n,
            c,
            &sel.idx,
            k,
            &sel.compl,
            &sel.scores,
            out,
        ),
    }
}
