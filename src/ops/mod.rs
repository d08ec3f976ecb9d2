//! The op contracts: shapes, dtypes, ordering and tie rules, validation, and the safe wrappers
//! that launch the kernels on any [`Device`](crate::Device). One module per op family.
pub mod ats;
pub mod attention;
pub mod attn_score;
pub mod cla_head;
pub mod dpcknn;
pub mod dyvit;
pub mod merge;
pub mod prune;
pub mod token_cache;
pub mod tome;
pub mod topk;

use crate::{Buffer, Error, Result};

/// Checks that a device buffer holds exactly `expected` elements.
pub(crate) fn check_buf<T, B: Buffer<T>>(
    arg: &'static str,
    buf: &B,
    expected: usize,
) -> Result<()> {
    crate::error::check_len(arg, buf.len(), expected)
}

/// Keep count of Top-K / EViT (SPEC §4.2): ⌈kr·(n−1)⌉ of the current non-cls tokens, where n
/// counts every token (cls, patches, clr, recovered cache tokens).
pub fn keep_count(keep_rate: f64, n: usize) -> Result<usize> {
    check_keep_rate(keep_rate)?;
    if n < 2 {
        return Err(Error::InvalidArgument {
            arg: "n",
            value: n.to_string(),
            why: "a sequence to prune needs cls and at least one other token".into(),
        });
    }
    // Python: math.ceil(keep_rate * (N - 1)) in double precision.
    let k = (keep_rate * (n - 1) as f64).ceil() as usize;
    Ok(k.clamp(1, n - 1))
}

/// A keep rate must be in (0, 1].
pub fn check_keep_rate(keep_rate: f64) -> Result<()> {
    if keep_rate.is_finite() && keep_rate > 0.0 && keep_rate <= 1.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            arg: "keep_rate",
            value: keep_rate.to_string(),
            why: "must be in (0, 1]".into(),
        })
    }
}
