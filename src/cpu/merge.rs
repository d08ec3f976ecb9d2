//! Reference of the soft merges of SiT and PatchMerger (SPEC §4.5–§4.6): every output slot is
//! a softmax-weighted sum over the token axis.
//!
//! `out[b, k, :] = Σ_t softmax_t(scale · s[b, t, k]) · v[b, t, :]`, with the softmax taken over
//! the n tokens of each (sample, slot) column in f32 as torch does (max subtracted, exp, sum,
//! divide), and the weighted sum accumulated in token order. The normalized weights are
//! returned too (`w[b, k, t]`, the authors' `sit_assign` / `patchmerger_attn`).
use crate::error::{check_len, mul};
use crate::Result;

/// Soft merge of `v` [b, n, d] by scores `s` [b, n, k] into `out` [b, k, d]; returns the
/// weights [b, k, n]. `n` must be ≥ 1 (an empty softmax has no weights).
#[allow(clippy::too_many_arguments)]
pub fn softmax_merge(
    s: &[f32],
    v: &[f32],
    b: usize,
    n: usize,
    k: usize,
    d: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<Vec<f32>> {
    if n == 0 {
        return Err(crate::error::invalid(
            "n",
            0,
            "a soft merge needs at least one token",
        ));
    }
    check_len("scores", s.len(), mul("scores", &[b, n, k])?)?;
    check_len("values", v.len(), mul("values", &[b, n, d])?)?;
    check_len("out", out.len(), mul("out", &[b, k, d])?)?;
    let mut w = vec![0f32; mul("weights", &[b, k, n])?];
    for bi in 0..b {
        for kk in 0..k {
            let row = &mut w[(bi * k + kk) * n..][..n];
            for t in 0..n {
                row[t] = s[(bi * n + t) * k + kk] * scale;
            }
            crate::cpu::dense::softmax(row);
            let o = &mut out[(bi * k + kk) * d..][..d];
            o.iter_mut().for_each(|x| *x = 0.0);
            for (t, &p) in row.iter().enumerate() {
                let vr = &v[(bi * n + t) * d..][..d];
                for (x, &y) in o.iter_mut().zip(vr) {
                    *x += p * y;
                }
            }
        }
    }
    Ok(w)
}
