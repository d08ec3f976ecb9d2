//! ToMe bipartite soft matching (SPEC §4.3): the key metric, the matching, the merge plan, the
//! size-weighted merge, and the token sizes of the proportional attention.
//!
//! # Contract
//! A sample has n ≥ 1 tokens; token 0 is cls. The **a** set is the even positions (a token `i`
//! is token `2i`, `na = ⌈n/2⌉`, a[0] = cls), the **b** set the odd positions (b token `j` is
//! token `2j+1`, `nb = ⌊n/2⌋`). `r` tokens merge away, 0 ≤ r ≤ ⌊(n−1)/2⌋ = na − 1.
//! - **metric** ([`tome_metric`]): from `qkv` [batch, n, 3, H, hd] (`T`), the keys averaged over
//!   heads (sum in head order, then ÷H), divided by their L2 norm (Σ over channels in order,
//!   `sqrt`): `metric` [batch, n, hd] f32. A zero key gives NaN (0/0), as the authors' code.
//! - **match** ([`tome_match`]): for every a token i ≥ 1, the cosine similarity to every b token
//!   (the dot product of the unit metrics, summed in channel order) and its best b token:
//!   `node_max[i]` = the largest similarity, `node_idx[i]` = its b index, the **first (lowest)
//!   index on ties** (−0 == +0). A NaN similarity never wins; a row with no similarity above
//!   −inf, and a[0] = cls, get (−inf, 0).
//! - **order** ([`tome_order`]): the r sources are the a tokens 1..na with the largest
//!   `node_max`, in **descending `node_max`, ties by lower index** (the [`crate::ops::topk`]
//!   contract: −0 == +0); `src` [batch, r] holds them in that merge order. cls is never a source.
//!   `unm` [batch, na − r]: the other a tokens, **ascending** (cls first). `grouped` [batch, r]:
//!   the sources sorted by destination `node_idx` (ascending), merge order kept within a
//!   destination; `offsets` [batch, nb + 1]: b token j's sources are
//!   `grouped[offsets[j]..offsets[j+1]]`.
//! - **merge** ([`tome_merge`]): with sizes s (all ones when `sizes` is `None`), `out`
//!   [batch, n − r, c] = [the unmerged a tokens (ascending), then every b token in order], each
//!   `(x_t·s_t + Σ_{sources i of t, merge order} x_i·s_i) / s'_t` with
//!   `s'_t = s_t + Σ s_i` (same order), computed in f32 one rounding per product and per sum
//!   (no FMA); `out_sizes` [batch, n − r] = s'. An unmerged token is `(x·s)/s`.
//! - **sizes** ([`tome_sizes`]): [batch, n + r] = the n sizes (or ones) followed by r ones: the
//!   cache's recovered tokens get size 1 (SPEC §2.3 step 3).
//! - The proportional attention (log sᵢ added to the logit of key i after scaling, before the
//!   softmax) is the `attention` kernel's optional `sizes` argument (`kernels/vit.cu`).
//!
//! Everything is deterministic: no float atomics; each output element is written by one thread
//! in a fixed order, and the kernels round exactly as the CPU reference ([`crate::cpu::tome`]),
//! so the selections and merged tokens agree bit for bit. Unlike the authors' code, `r = 0`
//! still reorders the tokens ([a, b]); the forward skips a merge with r = 0, as they do.
//!
//! Kernels: `tome_metric` (one block per token), `tome_match` (one block per 8 a tokens, every
//! b token read once per tile), `tome_order` (one block per sample: the radix top-k of
//! `kernels/topk.cuh`, then a stable grouping by rank counting, O(r²)), `tome_merge` (one block
//! per output token: a gather of its sources, no scatter).
use super::check_buf;
use crate::kernels::{Arg, Launch, ROW_GRID_CAP};
use crate::ops::topk::TOPK_THREADS;
use crate::{error, Buffer, Device, Element, Result};

/// Largest head dimension of the metric and match kernels (`CLCA_MAX_HEAD_DIM`).
pub const MAX_HEAD_DIM: usize = crate::ops::attn_score::MAX_HEAD_DIM;
/// a tokens per block of `tome_match` (`CLCA_TOME_TILE`).
const MATCH_TILE: usize = 8;
/// Threads per block of `tome_match` (`CLCA_TOME_THREADS`).
const MATCH_THREADS: u32 = 256;
const ROW_THREADS: u32 = 256;
const METRIC_THREADS: u32 = 64;

/// a and b set sizes of n tokens: (⌈n/2⌉, ⌊n/2⌋).
pub fn split(n: usize) -> (usize, usize) {
    (n.div_ceil(2), n / 2)
}

/// The most tokens one merge can remove from n: ⌊(n−1)/2⌋ (every a token but cls).
pub fn max_r(n: usize) -> usize {
    n.saturating_sub(1) / 2
}

pub(crate) fn check_n_r(batch: usize, n: usize, r: usize) -> Result<()> {
    if n == 0 {
        return Err(error::invalid("n", n, "need at least the cls token"));
    }
    if r > max_r(n) {
        return Err(error::invalid(
            "r",
            r,
            format!("at most ⌊(n−1)/2⌋ = {} tokens merge (n = {n})", max_r(n)),
        ));
    }
    error::to_u32("batch", batch)?;
    error::to_u32("n", n)?;
    Ok(())
}

fn check_hd(hd: usize) -> Result<()> {
    if hd == 0 || hd > MAX_HEAD_DIM {
        return Err(error::invalid(
            "head_dim",
            hd,
            format!("must be in 1..={MAX_HEAD_DIM}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_metric(
    qkv_len: usize,
    metric_len: usize,
    batch: usize,
    n: usize,
    heads: usize,
    hd: usize,
) -> Result<()> {
    check_n_r(batch, n, 0)?;
    check_hd(hd)?;
    if heads == 0 {
        return Err(error::invalid("heads", heads, "need at least one head"));
    }
    error::to_u32("heads", heads)?;
    error::to_u32("batch*n", error::mul("batch*n", &[batch, n])?)?;
    error::check_len(
        "qkv",
        qkv_len,
        error::mul("batch*n*3*heads*hd", &[batch, n, 3, heads, hd])?,
    )?;
    error::check_len(
        "metric",
        metric_len,
        error::mul("batch*n*hd", &[batch, n, hd])?,
    )
}

pub(crate) fn check_match(
    metric_len: usize,
    max_len: usize,
    idx_len: usize,
    batch: usize,
    n: usize,
    hd: usize,
) -> Result<()> {
    check_n_r(batch, n, 0)?;
    check_hd(hd)?;
    error::check_len(
        "metric",
        metric_len,
        error::mul("batch*n*hd", &[batch, n, hd])?,
    )?;
    let na = error::mul("batch*na", &[batch, split(n).0])?;
    error::check_len("node_max", max_len, na)?;
    error::check_len("node_idx", idx_len, na)
}

/// Lengths of the merge plan of `batch` samples: (src/grouped, unm, offsets).
pub(crate) fn plan_lens(batch: usize, n: usize, r: usize) -> Result<(usize, usize, usize)> {
    let (na, nb) = split(n);
    Ok((
        error::mul("batch*r", &[batch, r])?,
        error::mul("batch*(na-r)", &[batch, na - r])?,
        error::mul("batch*(nb+1)", &[batch, nb + 1])?,
    ))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn check_merge(
    x_len: usize,
    sizes_len: Option<usize>,
    unm_len: usize,
    grouped_len: usize,
    offsets_len: usize,
    batch: usize,
    n: usize,
    c: usize,
    r: usize,
) -> Result<()> {
    check_n_r(batch, n, r)?;
    error::to_u32("c", c)?;
    error::check_len("x", x_len, error::mul("batch*n*c", &[batch, n, c])?)?;
    if let Some(l) = sizes_len {
        error::check_len("sizes", l, error::mul("batch*n", &[batch, n])?)?;
    }
    let (g, u, o) = plan_lens(batch, n, r)?;
    error::check_len("unm", unm_len, u)?;
    error::check_len("grouped", grouped_len, g)?;
    error::check_len("offsets", offsets_len, o)
}

/// The launch of `tome_metric_{dtype}` over raw addresses (validated shapes only).
pub(crate) fn metric_launch(
    dtype: crate::DType,
    qkv: u64,
    rows: usize,
    heads: usize,
    hd: usize,
    metric: u64,
) -> Result<Launch> {
    Launch::new(
        "tome",
        "tome_metric",
        dtype,
        [
            error::to_u32("rows", rows.clamp(1, ROW_GRID_CAP as usize))?,
            1,
            1,
        ],
        [METRIC_THREADS, 1, 1],
        vec![
            Arg::Ptr(qkv),
            Arg::U32(error::to_u32("rows", rows)?),
            Arg::U32(error::to_u32("heads", heads)?),
            Arg::U32(error::to_u32("hd", hd)?),
            Arg::Ptr(metric),
        ],
    )
}

/// The launch of `tome_match_f32`.
pub(crate) fn match_launch(
    metric: u64,
    batch: usize,
    n: usize,
    hd: usize,
    node_max: u64,
    node_idx: u64,
) -> Result<Launch> {
    let na = split(n).0;
    Launch::new(
        "tome",
        "tome_match",
        crate::DType::F32,
        [
            error::to_u32("na", na.div_ceil(MATCH_TILE).max(1))?,
            error::to_u32("batch", batch)?,
            1,
        ],
        [MATCH_THREADS, 1, 1],
        vec![
            Arg::Ptr(metric),
            Arg::U32(error::to_u32("batch", batch)?),
            Arg::U32(error::to_u32("n", n)?),
            Arg::U32(error::to_u32("hd", hd)?),
            Arg::Ptr(node_max),
            Arg::Ptr(node_idx),
        ],
    )
}

/// The launch of `tome_order_f32`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn order_launch(
    node_max: u64,
    node_idx: u64,
    batch: usize,
    n: usize,
    r: usize,
    src: u64,
    unm: u64,
    grouped: u64,
    offsets: u64,
) -> Result<Launch> {
    Launch::new(
        "tome",
        "tome_order",
        crate::DType::F32,
        [
            error::to_u32("batch", batch.clamp(1, ROW_GRID_CAP as usize))?,
            1,
            1,
        ],
        [TOPK_THREADS, 1, 1],
        vec![
            Arg::Ptr(node_max),
            Arg::Ptr(node_idx),
            Arg::U32(error::to_u32("batch", batch)?),
            Arg::U32(error::to_u32("n", n)?),
            Arg::U32(error::to_u32("r", r)?),
            Arg::Ptr(src),
            Arg::Ptr(unm),
            Arg::Ptr(grouped),
            Arg::Ptr(offsets),
        ],
    )
}

/// The launch of `tome_merge_{dtype}`; `sizes` 0 means all ones.
#[allow(clippy::too_many_arguments)]
pub(crate) fn merge_launch(
    dtype: crate::DType,
    x: u64,
    sizes: u64,
    batch: usize,
    n: usize,
    c: usize,
    r: usize,
    unm: u64,
    grouped: u64,
    offsets: u64,
    out: u64,
    out_sizes: u64,
) -> Result<Launch> {
    Launch::new(
        "tome",
        "tome_merge",
        dtype,
        [
            error::to_u32("n-r", (n - r).clamp(1, ROW_GRID_CAP as usize))?,
            error::to_u32("batch", batch)?,
            1,
        ],
        [ROW_THREADS, 1, 1],
        vec![
            Arg::Ptr(x),
            Arg::Ptr(sizes),
            Arg::U32(error::to_u32("batch", batch)?),
            Arg::U32(error::to_u32("n", n)?),
            Arg::U32(error::to_u32("c", c)?),
            Arg::U32(error::to_u32("r", r)?),
            Arg::Ptr(unm),
            Arg::Ptr(grouped),
            Arg::Ptr(offsets),
            Arg::Ptr(out),
            Arg::Ptr(out_sizes),
        ],
    )
}

/// The launch of `tome_sizes_f32`; `sizes` 0 means all ones.
pub(crate) fn sizes_launch(
    sizes: u64,
    batch: usize,
    n: usize,
    r: usize,
    out: u64,
) -> Result<Launch> {
    let m = n
        .checked_add(r)
        .ok_or(crate::Error::Overflow { what: "n+r" })?;
    let total = error::mul("batch*(n+r)", &[batch, m])?;
    Launch::new(
        "tome",
        "tome_sizes",
        crate::DType::F32,
        [
            error::to_u32(
                "grid",
                total
                    .div_ceil(ROW_THREADS as usize)
                    .clamp(1, ROW_GRID_CAP as usize),
            )?,
            1,
            1,
        ],
        [ROW_THREADS, 1, 1],
        vec![
            Arg::Ptr(sizes),
            Arg::U32(error::to_u32("batch", batch)?),
            Arg::U32(error::to_u32("n", n)?),
            Arg::U32(error::to_u32("r", r)?),
            Arg::Ptr(out),
        ],
    )
}

/// The buffers of one merge layer: the metric, the matching and the merge plan of `batch`
/// samples of `n` tokens merging `r` (shapes in the module contract).
pub struct Merge<D: Device> {
    /// Unit metric [batch, n, hd].
    pub metric: D::Buf<f32>,
    /// Best similarity of every a token [batch, na].
    pub node_max: D::Buf<f32>,
    /// Its b index [batch, na].
    pub node_idx: D::Buf<u32>,
    /// Sources in merge order [batch, r] (a indices).
    pub src: D::Buf<u32>,
    /// Unmerged a tokens, ascending [batch, na − r].
    pub unm: D::Buf<u32>,
    /// Sources grouped by destination [batch, r].
    pub grouped: D::Buf<u32>,
    /// Group offsets [batch, nb + 1].
    pub offsets: D::Buf<u32>,
    pub batch: usize,
    pub n: usize,
    pub hd: usize,
    pub r: usize,
}

impl<D: Device> Merge<D> {
    /// Allocates the buffers for `batch` samples of `n` tokens, head dimension `hd`, merging `r`.
    pub fn new(dev: &D, batch: usize, n: usize, hd: usize, r: usize) -> Result<Self> {
        check_n_r(batch, n, r)?;
        check_hd(hd)?;
        let na = error::mul("batch*na", &[batch, split(n).0])?;
        let (g, u, o) = plan_lens(batch, n, r)?;
        Ok(Merge {
            metric: dev.zeros(error::mul("batch*n*hd", &[batch, n, hd])?)?,
            node_max: dev.zeros(na)?,
            node_idx: dev.zeros(na)?,
            src: dev.zeros(g)?,
            unm: dev.zeros(u)?,
            grouped: dev.zeros(g)?,
            offsets: dev.zeros(o)?,
            batch,
            n,
            hd,
            r,
        })
    }
}

/// The unit metric of `qkv` [batch, n, 3, heads, hd] into `m.metric`.
pub fn tome_metric<D: Device, T: Element>(
    dev: &D,
    qkv: &D::Buf<T>,
    heads: usize,
    m: &mut Merge<D>,
) -> Result<()> {
    let (batch, n, hd) = (m.batch, m.n, m.hd);
    check_metric(qkv.len(), m.metric.len(), batch, n, heads, hd)?;
    if batch == 0 {
        return Ok(());
    }
    let l = metric_launch(
        T::DTYPE,
        qkv.addr(),
        batch * n,
        heads,
        hd,
        m.metric.addr_mut(),
    )?;
    // SAFETY: qkv holds batch·n rows of 3·heads·hd and metric batch·n rows of hd (checked); the
    // kernel reads the key third of each row and writes one metric row per token.
    unsafe { dev.launch(&l) }
}

/// The best b token of every a token, from `m.metric` into `m.node_max` / `m.node_idx`.
pub fn tome_match<D: Device>(dev: &D, m: &mut Merge<D>) -> Result<()> {
    let (batch, n, hd) = (m.batch, m.n, m.hd);
    check_match(
        m.metric.len(),
        m.node_max.len(),
        m.node_idx.len(),
        batch,
        n,
        hd,
    )?;
    if batch == 0 {
        return Ok(());
    }
    let l = match_launch(
        m.metric.addr(),
        batch,
        n,
        hd,
        m.node_max.addr_mut(),
        m.node_idx.addr_mut(),
    )?;
    // SAFETY: metric [batch, n, hd] and node_max/node_idx [batch, na] (checked); the kernel reads
    // tokens < n and writes a indices < na.
    unsafe { dev.launch(&l) }
}

/// The merge plan (`m.src`, `m.unm`, `m.grouped`, `m.offsets`) from the matching.
pub fn tome_order<D: Device>(dev: &D, m: &mut Merge<D>) -> Result<()> {
    let (batch, n, r) = (m.batch, m.n, m.r);
    check_n_r(batch, n, r)?;
    let na = error::mul("batch*na", &[batch, split(n).0])?;
    check_buf("node_max", &m.node_max, na)?;
    check_buf("node_idx", &m.node_idx, na)?;
    let (g, u, o) = plan_lens(batch, n, r)?;
    check_buf("src", &m.src, g)?;
    check_buf("unm", &m.unm, u)?;
    check_buf("grouped", &m.grouped, g)?;
    check_buf("offsets", &m.offsets, o)?;
    if batch == 0 {
        return Ok(());
    }
    let l = order_launch(
        m.node_max.addr(),
        m.node_idx.addr(),
        batch,
        n,
        r,
        m.src.addr_mut(),
        m.unm.addr_mut(),
        m.grouped.addr_mut(),
        m.offsets.addr_mut(),
    )?;
    // SAFETY: every buffer holds the plan lengths of (batch, n, r) (checked). The kernel reads
    // node_idx[s] for sources s < na and writes src/grouped < r, unm < na − r and offsets
    // ≤ nb + 1 entries per sample; node_idx values are only compared, never dereferenced.
    unsafe { dev.launch(&l) }
}

/// The size-weighted merge of `x` [batch, n, c] with the plan in `m`: `out` [batch, n − r, c],
/// `out_sizes` [batch, n − r]. `sizes` [batch, n], or `None` for all ones.
pub fn tome_merge<D: Device, T: Element>(
    dev: &D,
    x: &D::Buf<T>,
    sizes: Option<&D::Buf<f32>>,
    c: usize,
    m: &Merge<D>,
    out: &mut D::Buf<T>,
    out_sizes: &mut D::Buf<f32>,
) -> Result<()> {
    let (batch, n, r) = (m.batch, m.n, m.r);
    check_merge(
        x.len(),
        sizes.map(|s| s.len()),
        m.unm.len(),
        m.grouped.len(),
        m.offsets.len(),
        batch,
        n,
        c,
        r,
    )?;
    check_buf("out", out, error::mul("batch*(n-r)*c", &[batch, n - r, c])?)?;
    check_buf(
        "out_sizes",
        out_sizes,
        error::mul("batch*(n-r)", &[batch, n - r])?,
    )?;
    if batch == 0 {
        return Ok(());
    }
    let l = merge_launch(
        T::DTYPE,
        x.addr(),
        sizes.map_or(0, |s| s.addr()),
        batch,
        n,
        c,
        r,
        m.unm.addr(),
        m.grouped.addr(),
        m.offsets.addr(),
        out.addr_mut(),
        out_sizes.addr_mut(),
    )?;
    // SAFETY: x [batch, n, c], sizes [batch, n], the plan and the outputs hold the checked
    // lengths; the kernel skips any token index ≥ n or offset > r instead of reading past x.
    unsafe { dev.launch(&l) }
}

/// One whole merge layer: metric → match → order → merge (four launches).
#[allow(clippy::too_many_arguments)]
pub fn tome<D: Device, T: Element>(
    dev: &D,
    qkv: &D::Buf<T>,
    heads: usize,
    x: &D::Buf<T>,
    sizes: Option<&D::Buf<f32>>,
    c: usize,
    m: &mut Merge<D>,
    out: &mut D::Buf<T>,
    out_sizes: &mut D::Buf<f32>,
) -> Result<()> {
    tome_metric(dev, qkv, heads, m)?;
    tome_match(dev, m)?;
    tome_order(dev, m)?;
    tome_merge(dev, x, sizes, c, m, out, out_sizes)
}

/// `out` [batch, n + r] = the sizes [batch, n] (all ones for `None`) followed by r ones.
pub fn tome_sizes<D: Device>(
    dev: &D,
    sizes: Option<&D::Buf<f32>>,
    batch: usize,
    n: usize,
    r: usize,
    out: &mut D::Buf<f32>,
) -> Result<()> {
    if let Some(s) = sizes {
        check_buf("sizes", s, error::mul("batch*n", &[batch, n])?)?;
    }
    let m = n
        .checked_add(r)
        .ok_or(crate::Error::Overflow { what: "n+r" })?;
    check_buf("out", out, error::mul("batch*(n+r)", &[batch, m])?)?;
    error::to_u32("n+r", m)?;
    error::to_u32("batch", batch)?;
    if batch == 0 || m == 0 {
        return Ok(());
    }
    let l = sizes_launch(sizes.map_or(0, |s| s.addr()), batch, n, r, out.addr_mut())?;
    // SAFETY: sizes [batch, n] and out [batch, n + r] (checked), the extents the kernel touches.
    unsafe { dev.launch(&l) }
}
