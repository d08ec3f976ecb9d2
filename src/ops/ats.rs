//! ATS token sampling (SPEC §4.7) on any [`Device`]: significance, CDF, nearest-CDF picks and
//! the sorted unique ids, with the count left on the device (no host round trip).
//!
//! # Contract
//! The rules of [`crate::cpu::ats`] (the oracle), reproduced **bit for bit** (every step
//! rounds as the reference does: no FMA contraction, sums in the reference's order):
//! - [`significance`]: `sig[b, t−1] = Σ_h probs[b, h, t]·‖v[b, t, h]‖₂` for t = 1..n−1, from
//!   the cls-row probabilities `probs` [batch, heads, n] and `qkv` [batch, n, 3d] (v is the
//!   third d-block, head h at `h·d/heads`); the norm summed in channel order, the heads in order;
//! - [`sample`]: `cdf = cumsum(sig / (Σ sig + 1e-6))` in token order, `+ 0.1` where the
//!   token is masked; each of the `plan::ats_points(k)` points of `plan::ats_steps(k)` picks
//!   the token of the nearest CDF by torch's cdist (matmul form when points or tokens > 25),
//!   the **first token on ties** (a linear scan, as the reference); the picks are written
//!   **sorted ascending, unique**, as 1-based token ids to `ids[b, 0..count[b])`, and
//!   `ids[b, count[b]..]` = 0 (cls, the forward's padding index).
//! - The CDF is cumulated by one thread per sample, in order (a parallel scan associates
//!   differently, and with the matmul form's cancellation one ulp of CDF moves picks).
//!
//! **NaN policy.** A NaN significance makes the CDF NaN from there on; NaN distances never
//! compare below the running best, so such tokens are not picked (a NaN first distance keeps
//! token 1, as in the reference). Ids stay in range. A NaN mask entry counts as real (`!= 0`).
use super::check_buf;
use crate::kernels::{Arg, Launch, ROW_GRID_CAP};
use crate::{error, Buffer, Device, Element, Result};

const THREADS: u32 = 256;

/// `sig` [batch, n−1] from the cls-row probabilities `probs` [batch, heads, n] (f32) and
/// `qkv` [batch, n, 3d] (in `T`).
#[allow(clippy::too_many_arguments)]
pub fn significance<D: Device, T: Element>(
    dev: &D,
    probs: &D::Buf<f32>,
    qkv: &D::Buf<T>,
    batch: usize,
    heads: usize,
    n: usize,
    d: usize,
    sig: &mut D::Buf<f32>,
) -> Result<()> {
    if heads == 0 || !d.is_multiple_of(heads) {
        return Err(error::invalid(
            "heads",
            heads,
            format!("must divide d = {d}"),
        ));
    }
    if n == 0 {
        return Err(error::invalid("n", n, "the sequence needs its cls token"));
    }
    check_buf(
        "probs",
        probs,
        error::mul("batch*heads*n", &[batch, heads, n])?,
    )?;
    check_buf("qkv", qkv, error::mul("batch*n*3d", &[batch, n, 3, d])?)?;
    check_buf("sig", sig, error::mul("batch*(n-1)", &[batch, n - 1])?)?;
    if batch == 0 || n == 1 {
        return Ok(());
    }
    let l = significance_launch(
        T::DTYPE,
        probs.addr(),
        qkv.addr(),
        batch,
        heads,
        n,
        d,
        sig.addr_mut(),
    )?;
    // SAFETY: probs holds batch*heads*n, qkv batch*n*3d and sig batch*(n-1) elements (checked
    // above), which is what ats_significance_* reads and writes.
    unsafe { dev.launch(&l) }
}

/// The sampled token ids of every sample: `sig` [batch, n−1] (from [`significance`]),
/// `mask` [batch, n] aligned with the tokens (nonzero = real; entry 0, cls, is ignored;
/// None = all real), `k` the ATS sample count. Writes `cdf` [batch, n−1], `ids`
/// [batch, plan::ats_points(k)] and `count` [batch] (see the module contract).
#[allow(clippy::too_many_arguments)]
pub fn sample<D: Device>(
    dev: &D,
    sig: &D::Buf<f32>,
    mask: Option<&D::Buf<f32>>,
    batch: usize,
    n: usize,
    k: usize,
    cdf: &mut D::Buf<f32>,
    ids: &mut D::Buf<u32>,
    count: &mut D::Buf<u32>,
) -> Result<()> {
    if n == 0 {
        return Err(error::invalid("n", n, "the sequence needs its cls token"));
    }
    let points = crate::plan::ats_points(k);
    let n1 = n - 1;
    check_buf("sig", sig, error::mul("batch*(n-1)", &[batch, n1])?)?;
    if let Some(mk) = mask {
        check_buf("mask", mk, error::mul("batch*n", &[batch, n])?)?;
    }
    check_buf("cdf", cdf, error::mul("batch*(n-1)", &[batch, n1])?)?;
    check_buf("ids", ids, error::mul("batch*points", &[batch, points])?)?;
    check_buf("count", count, batch)?;
    if batch == 0 {
        return Ok(());
    }
    let l = sample_launch(
        sig.addr(),
        mask.map_or(0, |mk| mk.addr()),
        batch,
        n,
        k,
        cdf.addr_mut(),
        ids.addr_mut(),
        count.addr_mut(),
    )?;
    // SAFETY: sig and cdf hold batch*(n-1), mask (when given) batch*n, ids batch*points and
    // count batch elements (checked above); ats_sample_f32 reads and writes exactly those and
    // one shared byte per token (n-1 bytes, within the dynamic shared memory limit).
    unsafe { dev.launch(&l) }
}

/// The launch of `ats_significance_{dtype}` (dimensions validated, not the buffers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn significance_launch(
    dtype: crate::DType,
    probs: u64,
    qkv: u64,
    batch: usize,
    heads: usize,
    n: usize,
    d: usize,
    sig: u64,
) -> Result<Launch> {
    if heads == 0 || !d.is_multiple_of(heads) || n < 2 {
        return Err(error::invalid(
            "heads, n",
            format!("{heads}, {n}"),
            format!("heads must divide d = {d}, and n >= 2"),
        ));
    }
    Launch::new(
        "ats",
        "ats_significance",
        dtype,
        [
            error::to_u32("n", (n - 1).div_ceil(THREADS as usize))?,
            error::to_u32("batch", batch)?,
            1,
        ],
        [THREADS, 1, 1],
        vec![
            Arg::Ptr(probs),
            Arg::Ptr(qkv),
            Arg::U32(error::to_u32("batch", batch)?),
            Arg::U32(error::to_u32("heads", heads)?),
            Arg::U32(error::to_u32("n", n)?),
            Arg::U32(error::to_u32("d", d)?),
            Arg::Ptr(sig),
        ],
    )
}

/// The launch of `ats_sample_f32` (dimensions validated, not the buffers); `mask` may be 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample_launch(
    sig: u64,
    mask: u64,
    batch: usize,
    n: usize,
    k: usize,
    cdf: u64,
    ids: u64,
    count: u64,
) -> Result<Launch> {
    if n == 0 {
        return Err(error::invalid("n", n, "the sequence needs its cls token"));
    }
    let n1 = n - 1;
    Launch::new(
        "ats",
        "ats_sample",
        crate::DType::F32,
        [
            error::to_u32("batch", batch.clamp(1, ROW_GRID_CAP as usize))?,
            1,
            1,
        ],
        [THREADS, 1, 1],
        vec![
            Arg::Ptr(sig),
            Arg::Ptr(mask),
            Arg::U32(error::to_u32("batch", batch)?),
            Arg::U32(error::to_u32("n", n1)?),
            Arg::U32(error::to_u32("k", k)?),
            Arg::U32(error::to_u32("points", crate::plan::ats_points(k))?),
            Arg::Ptr(cdf),
            Arg::Ptr(ids),
            Arg::Ptr(count),
        ],
    )?
    .with_smem(n1)
}
