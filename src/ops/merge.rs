//! The soft merge of SiT and PatchMerger (SPEC §4.5–§4.6): every output slot is a
//! softmax-weighted sum over the token axis, in one launch.
//!
//! # Contract
//! `s` [batch, n, k] (slot scores, e.g. SiT's logits or PatchMerger's `Q·Yᵀ` transposed),
//! `v` [batch, n, d] (the values: SiT's raw tokens, PatchMerger's normalized ones):
//! - `w[b, kk, t] = softmax_t(scale · s[b, t, kk])` over the n tokens of each (sample, slot)
//!   column, as torch computes it in f32: max subtracted, `exp`, sum, divide;
//! - `out[b, kk, :] = Σ_t w[b, kk, t] · v[b, t, :]`, accumulated in f32 in ascending t and
//!   rounded once to `T`. The kernel sums `exp(·) · v` and divides by the column sum once per
//!   output (the reference divides each weight first): equal up to f32 rounding.
//!
//! The weights are written to `w` [batch, k, n] (f32) when it is given (the authors'
//! `sit_assign` / `patchmerger_attn`); they are identical for every channel of a slot.
//! Deterministic: fixed reduction trees, no atomics.
//!
//! NaN policy, as [`crate::cpu::merge::softmax_merge`] and torch: the column max ignores NaN,
//! so a NaN score makes its whole column (weights and output row) NaN; a `+inf` score gives
//! `inf − inf = NaN` for the column; `−inf` scores get weight 0, and an all-`−inf` column is
//! NaN. `n ≥ 1` (an empty softmax has no weights); `k = 0` and `batch = 0` launch nothing.
use super::check_buf;
use crate::kernels::{Arg, Launch};
use crate::{error, Buffer, Device, Element, Result};

/// Threads per block, slots and channels per block (kernels/merge.cu `MERGE_*`).
const THREADS: u32 = 256;
const SLOTS: usize = 32;
const CHANNELS: usize = 64;

pub(crate) fn check_softmax_merge(
    s_len: usize,
    v_len: usize,
    out_len: usize,
    batch: usize,
    n: usize,
    k: usize,
    d: usize,
) -> Result<()> {
    if n == 0 {
        return Err(error::invalid(
            "n",
            0,
            "a soft merge needs at least one token",
        ));
    }
    for (what, v) in [("batch", batch), ("n", n), ("k", k), ("d", d)] {
        error::to_u32(what, v)?;
    }
    error::check_len("s", s_len, error::mul("batch*n*k", &[batch, n, k])?)?;
    error::check_len("v", v_len, error::mul("batch*n*d", &[batch, n, d])?)?;
    error::check_len("out", out_len, error::mul("batch*k*d", &[batch, k, d])?)
}

/// Soft merge of `v` [batch, n, d] by the scores `s` [batch, n, k] into `out` [batch, k, d];
/// the weights go to `w` [batch, k, n] when it is `Some`. See the module contract.
#[allow(clippy::too_many_arguments)]
pub fn softmax_merge<D: Device, T: Element>(
    dev: &D,
    s: &D::Buf<T>,
    v: &D::Buf<T>,
    batch: usize,
    n: usize,
    k: usize,
    d: usize,
    scale: f32,
    out: &mut D::Buf<T>,
    w: Option<&mut D::Buf<f32>>,
) -> Result<()> {
    check_softmax_merge(s.len(), v.len(), out.len(), batch, n, k, d)?;
    let w_addr = match w {
        Some(w) => {
            check_buf("w", w, error::mul("batch*k*n", &[batch, k, n])?)?;
            w.addr_mut()
        }
        None => 0,
    };
    if batch == 0 || k == 0 {
        return Ok(());
    }
    // d = 0 still needs one channel tile to write the weights.
    let gx = error::to_u32("ceil(d/64)", d.div_ceil(CHANNELS).max(1))?;
    let gy = error::to_u32("ceil(k/32)", k.div_ceil(SLOTS))?;
    let l = Launch::new(
        "merge",
        "softmax_merge",
        T::DTYPE,
        [gx, gy, batch as u32],
        [THREADS, 1, 1],
        vec![
            Arg::Ptr(s.addr()),
            Arg::Ptr(v.addr()),
            Arg::U32(batch as u32),
            Arg::U32(n as u32),
            Arg::U32(k as u32),
            Arg::U32(d as u32),
            Arg::F32(scale),
            Arg::Ptr(out.addr_mut()),
            Arg::Ptr(w_addr),
        ],
    )?;
    // SAFETY: s [batch,n,k], v [batch,n,d], out [batch,k,d] and w [batch,k,n] (or null) are
    // checked above; the kernel reads slots < k, channels < d and tokens < n only, and the
    // batch sits on grid.z (Launch::new bounds it).
    unsafe { dev.launch(&l) }
}
