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
    if k == 0 {
        return Ok(w);
    }
    let wide = crate::cpu::packed::detect();
    // One (sample, slot) row: its weights, then out's row. Rows are independent, so the split
    // over threads changes no result.
    let row = |(ri, (wr, o)): (usize, (&mut [f32], &mut [f32]))| {
        let (bi, kk) = (ri / k, ri % k);
        for (t, x) in wr.iter_mut().enumerate() {
            *x = s[(bi * n + t) * k + kk] * scale;
        }
        crate::cpu::dense::softmax(wr);
        let vb = &v[bi * n * d..(bi + 1) * n * d];
        weighted_sum_wide(wide, wr, vb, o);
    };
    if d == 0 {
        w.chunks_exact_mut(n)
            .enumerate()
            .for_each(|(ri, wr)| row((ri, (wr, &mut []))));
    } else {
        use rayon::prelude::*;
        w.par_chunks_exact_mut(n)
            .zip(out[..b * k * d].par_chunks_exact_mut(d))
            .enumerate()
            .for_each(row);
    }
    Ok(w)
}

/// o = Σ_t p[t]·v[t] over v's rows in token order from 0, a rounding per product and per sum
/// (no FMA), the channels side by side: the same bits at every vector width.
#[inline(always)]
fn weighted_sum(p: &[f32], v: &[f32], o: &mut [f32]) {
    let d = o.len();
    if d == 0 {
        return;
    }
    o.fill(0.0);
    for (&pt, vr) in p.iter().zip(v.chunks_exact(d)) {
        for (x, &y) in o.iter_mut().zip(vr) {
            *x += pt * y;
        }
    }
}

crate::cpu::wide::widest!(
    /// [`weighted_sum`] at the widest vectors.
    fn weighted_sum_wide(p: &[f32], v: &[f32], o: &mut [f32]) => weighted_sum
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows over threads and the wide weighted sum give the bits of the one-row-at-a-time
    /// scalar loop: several samples and slots, n = 1, d = 0 (weights still returned), d not a
    /// multiple of any vector width, ties and −inf scores.
    #[test]
    fn rows_in_parallel_are_the_serial_loop() {
        for &(b, n, k, d) in &[
            (1usize, 1usize, 1usize, 5usize),
            (2, 7, 3, 0),
            (3, 50, 9, 37),
            (2, 300, 17, 64),
        ] {
            let s: Vec<f32> = (0..b * n * k)
                .map(|i| match i % 23 {
                    0 => f32::NEG_INFINITY,
                    r => (r % 5) as f32 * 0.5 - 1.0,
                })
                .collect();
            let v: Vec<f32> = (0..b * n * d)
                .map(|i| ((i * 7919) % 101) as f32 * 0.01 - 0.5)
                .collect();
            let mut out = vec![f32::NAN; b * k * d];
            let Ok(w) = softmax_merge(&s, &v, b, n, k, d, 0.7, &mut out) else {
                panic!("merge {b} {n} {k} {d}")
            };
            for bi in 0..b {
                for kk in 0..k {
                    let mut row: Vec<f32> =
                        (0..n).map(|t| s[(bi * n + t) * k + kk] * 0.7).collect();
                    crate::cpu::dense::softmax(&mut row);
                    let got = &w[(bi * k + kk) * n..][..n];
                    assert!(got
                        .iter()
                        .zip(&row)
                        .all(|(a, b)| a.to_bits() == b.to_bits()));
                    for j in 0..d {
                        let mut x = 0f32;
                        for (t, &p) in row.iter().enumerate() {
                            x += p * v[(bi * n + t) * d + j];
                        }
                        let o = out[(bi * k + kk) * d + j];
                        assert_eq!(o.to_bits(), x.to_bits(), "b {bi} k {kk} ch {j}");
                    }
                }
            }
        }
    }
}
