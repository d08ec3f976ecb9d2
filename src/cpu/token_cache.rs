//! Reference cross-layer token cache (contract in `crate::ops::token_cache`).
use crate::ops::token_cache::{check_copy, check_take, TakeArgs};
use crate::{Element, Result};

/// Writes [GAP (if `a.gap`), x[n - num_clr .. n)] into `cache` at `a.slot` for every sample.
pub fn cache_take<T: Element>(x: &[T], cache: &mut [T], a: &TakeArgs) -> Result<()> {
    check_take(x.len(), cache.len(), a)?;
    let d = a.d;
    for b in 0..a.batch {
        let xb = &x[b * a.x_cap * d..];
        let cb = &mut cache[b * a.cache_cap * d..];
        let mut s = a.slot;
        if a.gap {
            let cnt = (a.pool.end - a.pool.start) as f32;
            // Token-outer: each channel still sums in token order, rows read contiguously.
            let mut acc = vec![0f32; d];
            for t in a.pool.clone() {
                for (av, xv) in acc.iter_mut().zip(&xb[t * d..(t + 1) * d]) {
                    *av += xv.to_f32();
                }
            }
            for ch in 0..d {
                cb[s * d + ch] = T::from_f32(acc[ch] / cnt);
            }
            s += 1;
        }
        for j in 0..a.num_clr {
            let src = (a.n - a.num_clr + j) * d;
            cb[(s + j) * d..][..d].copy_from_slice(&xb[src..][..d]);
        }
    }
    Ok(())
}

/// dst[b, dst_off + t] = src[b, src_off + t] for t < count (whole tokens of width d).
#[allow(clippy::too_many_arguments)]
pub fn tokens_copy<T: Element>(
    src: &[T],
    src_cap: usize,
    src_off: usize,
    dst: &mut [T],
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
    for b in 0..batch {
        let s = &src[(b * src_cap + src_off) * d..][..count * d];
        dst[(b * dst_cap + dst_off) * d..][..count * d].copy_from_slice(s);
    }
    Ok(())
}

/// Reference of [`crate::ops::token_cache::tokens_gather`].
#[allow(clippy::too_many_arguments)]
pub fn tokens_gather<T: Element>(
    src: &[T],
    src_cap: usize,
    idx: &[u32],
    idx_stride: usize,
    dst: &mut [T],
    dst_cap: usize,
    dst_off: usize,
    batch: usize,
    count: usize,
    d: usize,
) -> Result<()> {
    crate::ops::token_cache::check_gather(
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
    for b in 0..batch {
        for t in 0..count {
            let from = idx[b * idx_stride + t] as usize;
            if from < src_cap {
                let s = &src[(b * src_cap + from) * d..][..d];
                dst[(b * dst_cap + dst_off + t) * d..][..d].copy_from_slice(s);
            }
        }
    }
    Ok(())
}
