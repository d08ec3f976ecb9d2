//! CLS-attention scores and the fused score → top-k selection.
//!
//! # Contract
//! `scores[b, t−1] = (1/H) Σ_h softmax_t(q_h·scale · k_{h,t})` for t = 1..n−1 (SPEC §4.2 step 2):
//! the cls-query attention probabilities over **all** n keys (cls included in the softmax),
//! averaged over heads (sum in head order, then divided by H), always returned as f32.
//! - from probabilities: `probs` [batch, H, n, n] (only row 0 of each head is read);
//! - fused: `q_cls` [batch, H, hd] (unscaled; q is multiplied by `scale` before the dot
//!   product, as the authors do) and `k` [batch, H, n, hd], without forming n×n, so it works
//!   beside FlashAttention-style attention. hd ≤ 256.
//!
//! The fused selections (`select_from_*`) compute the scores and the top-k of them (contract of
//! [`crate::ops::topk`]) in **one launch**, one block per sample.
use super::check_buf;
use crate::kernels::{Arg, Launch, ROW_GRID_CAP};
use crate::ops::topk::TOPK_THREADS;
use crate::{error, Buffer, Device, Element, Error, Result};

/// Largest head dimension of the fused q·K kernels (`CLCA_MAX_HEAD_DIM`).
pub const MAX_HEAD_DIM: usize = 256;

pub(crate) fn check_probs(len: usize, batch: usize, heads: usize, n: usize) -> Result<()> {
    check_common(batch, heads, n)?;
    error::check_len(
        "probs",
        len,
        error::mul("batch*heads*n*n", &[batch, heads, n, n])?,
    )
}

fn check_common(batch: usize, heads: usize, n: usize) -> Result<()> {
    if n < 2 {
        return Err(Error::InvalidArgument {
            arg: "n",
            value: n.to_string(),
            why: "need cls and at least one key".into(),
        });
    }
    if heads == 0 {
        return Err(Error::InvalidArgument {
            arg: "heads",
            value: "0".into(),
            why: "need at least one head".into(),
        });
    }
    error::to_u32("batch", batch)?;
    error::to_u32("heads", heads)?;
    error::to_u32("n", n)?;
    Ok(())
}

pub(crate) fn check_qk(
    q_len: usize,
    k_len: usize,
    batch: usize,
    heads: usize,
    n: usize,
    hd: usize,
) -> Result<()> {
    check_common(batch, heads, n)?;
    if hd == 0 || hd > MAX_HEAD_DIM {
        return Err(Error::InvalidArgument {
            arg: "head_dim",
            value: hd.to_string(),
            why: format!("must be in 1..={MAX_HEAD_DIM}"),
        });
    }
    error::check_len(
        "q_cls",
        q_len,
        error::mul("batch*heads*hd", &[batch, heads, hd])?,
    )?;
    error::check_len(
        "k",
        k_len,
        error::mul("batch*heads*n*hd", &[batch, heads, n, hd])?,
    )
}

/// Where the scores come from.
pub enum ScoreSource<'a, D: Device, T: Element> {
    /// Materialized attention probabilities [batch, heads, n, n].
    Probs { probs: &'a D::Buf<T>, heads: usize },
    /// Fused from q_cls [batch, heads, hd] and K [batch, heads, n, hd].
    Qk {
        q_cls: &'a D::Buf<T>,
        k: &'a D::Buf<T>,
        heads: usize,
        head_dim: usize,
        scale: f32,
    },
}

impl<D: Device, T: Element> ScoreSource<'_, D, T> {
    fn check(&self, batch: usize, n: usize) -> Result<()> {
        match self {
            ScoreSource::Probs { probs, heads } => check_probs(probs.len(), batch, *heads, n),
            ScoreSource::Qk {
                q_cls,
                k,
                heads,
                head_dim,
                ..
            } => check_qk(q_cls.len(), k.len(), batch, *heads, n, *head_dim),
        }
    }
}

/// Scores [batch, n−1] (f32) from a [`ScoreSource`].
pub fn cls_attn_scores<D: Device, T: Element>(
    dev: &D,
    src: &ScoreSource<'_, D, T>,
    batch: usize,
    n: usize,
    scores: &mut D::Buf<f32>,
) -> Result<()> {
    src.check(batch, n)?;
    check_buf(
        "scores",
        scores,
        error::mul("batch*(n-1)", &[batch, n - 1])?,
    )?;
    if batch == 0 {
        return Ok(());
    }
    let l = match src {
        ScoreSource::Probs { probs, heads } => Launch::new(
            "attn_score",
            "cls_attn_probs",
            T::DTYPE,
            [
                error::to_u32("n", (n - 1).div_ceil(256))?,
                error::to_u32("batch", batch)?,
                1,
            ],
            [256, 1, 1],
            vec![
                Arg::Ptr(probs.addr()),
                Arg::U32(batch as u32),
                Arg::U32(*heads as u32),
                Arg::U32(n as u32),
                Arg::Ptr(scores.addr_mut()),
            ],
        )?,
        ScoreSource::Qk {
            q_cls,
            k,
            heads,
            head_dim,
            scale,
        } => Launch::new(
            "attn_score",
            "cls_attn_qk",
            T::DTYPE,
            [batch.min(ROW_GRID_CAP as usize) as u32, 1, 1],
            [TOPK_THREADS, 1, 1],
            vec![
                Arg::Ptr(q_cls.addr()),
                Arg::Ptr(k.addr()),
                Arg::U32(batch as u32),
                Arg::U32(*heads as u32),
                Arg::U32(n as u32),
                Arg::U32(*head_dim as u32),
                Arg::F32(*scale),
                Arg::Ptr(scores.addr_mut()),
            ],
        )?,
    };
    // SAFETY: the source buffers were checked against (batch, heads, n, hd) and `scores`
    // holds batch*(n-1) f32, exactly the extents the kernels touch.
    unsafe { dev.launch(&l) }
}

/// The selection workspace of one pruning layer: scores [B, n−1], idx [B, k], compl [B, n−1−k].
pub struct Selection<D: Device> {
    pub scores: D::Buf<f32>,
    pub idx: D::Buf<u32>,
    pub compl: D::Buf<u32>,
    pub batch: usize,
    pub n: usize,
    pub k: usize,
}

impl<D: Device> Selection<D> {
    /// Allocates the workspace for `batch` samples of `n` tokens keeping `k` of the n−1.
    pub fn new(dev: &D, batch: usize, n: usize, k: usize) -> Result<Self> {
        if n < 2 || k > n - 1 {
            return Err(Error::InvalidArgument {
                arg: "k",
                value: k.to_string(),
                why: format!("need n >= 2 and k <= n-1 (n = {n})"),
            });
        }
        Ok(Selection {
            scores: dev.zeros(error::mul("batch*(n-1)", &[batch, n - 1])?)?,
            idx: dev.zeros(error::mul("batch*k", &[batch, k])?)?,
            compl: dev.zeros(error::mul("batch*(n-1-k)", &[batch, n - 1 - k])?)?,
            batch,
            n,
            k,
        })
    }
}

/// Scores and their top-k in one launch (one block per sample): fills `sel`.
pub fn select<D: Device, T: Element>(
    dev: &D,
    src: &ScoreSource<'_, D, T>,
    sel: &mut Selection<D>,
) -> Result<()> {
    let (batch, n, k) = (sel.batch, sel.n, sel.k);
    src.check(batch, n)?;
    check_buf("scores", &sel.scores, batch * (n - 1))?;
    check_buf("idx", &sel.idx, batch * k)?;
    check_buf("compl", &sel.compl, batch * (n - 1 - k))?;
    if batch == 0 {
        return Ok(());
    }
    let grid = [batch.min(ROW_GRID_CAP as usize) as u32, 1, 1];
    let block = [TOPK_THREADS, 1, 1];
    let tail = [
        Arg::Ptr(sel.scores.addr_mut()),
        Arg::Ptr(sel.idx.addr_mut()),
        Arg::Ptr(sel.compl.addr_mut()),
    ];
    let l = match src {
        ScoreSource::Probs { probs, heads } => {
            let mut a = vec![
                Arg::Ptr(probs.addr()),
                Arg::U32(batch as u32),
                Arg::U32(*heads as u32),
                Arg::U32(n as u32),
                Arg::U32(k as u32),
            ];
            a.extend(tail);
            Launch::new("attn_score", "select_from_probs", T::DTYPE, grid, block, a)?
        }
        ScoreSource::Qk {
            q_cls,
            k: kb,
            heads,
            head_dim,
            scale,
        } => {
            let mut a = vec![
                Arg::Ptr(q_cls.addr()),
                Arg::Ptr(kb.addr()),
                Arg::U32(batch as u32),
                Arg::U32(*heads as u32),
                Arg::U32(n as u32),
                Arg::U32(*head_dim as u32),
                Arg::F32(*scale),
                Arg::U32(k as u32),
            ];
            a.extend(tail);
            Launch::new("attn_score", "select_from_qk", T::DTYPE, grid, block, a)?
        }
    };
    // SAFETY: sources checked against (batch, heads, n, hd); the workspace buffers hold
    // batch*(n-1), batch*k and batch*(n-1-k) elements, the extents the kernel writes.
    unsafe { dev.launch(&l) }
}
