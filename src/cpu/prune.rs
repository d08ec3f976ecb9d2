//! Reference Top-K and EViT pruning (contract in `crate::ops::prune`).
use crate::ops::prune::{check_evit, check_topk_prune};
use crate::{Element, Result};

/// Runs of the fused sum (`CLCA_PRUNE_SEGS` in kernels/prune.cu): each dropped token's term
/// goes into the run sum of its run, and the run sums are added in order.
pub const PRUNE_SEGS: usize = 8;

/// The [`PRUNE_SEGS`] runs of m dropped tokens, as positions in their list: ⌈m / runs⌉ each,
/// the last ones shorter or empty.
fn runs(m: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let seg = m.div_ceil(PRUNE_SEGS);
    (0..PRUNE_SEGS).map(move |s| (s * seg).min(m)..((s + 1) * seg).min(m))
}

/// [cls, x[1 + idx[0]], ..., x[1 + idx[k-1]]] per sample → [batch, 1 + k, c].
pub fn topk_prune<T: Element>(
    x: &[T],
    batch: usize,
    n: usize,
    c: usize,
    idx: &[u32],
    k: usize,
) -> Result<Vec<T>> {
    check_topk_prune(x.len(), idx.len(), batch, n, c, k)?;
    crate::ops::prune::check_indices("idx", idx, n - 1)?;
    let mut out = vec![T::from_f32(0.0); batch * (1 + k) * c];
    prune_into(x, batch, n, c, idx, k, None, &mut out);
    Ok(out)
}

/// Top-K prune plus the fused token sum over dropped t of scores[t] * x[1 + t], appended
/// last → [batch, 2 + k, c]. Weights are the raw scores (not renormalized); the sum runs in
/// [`PRUNE_SEGS`] runs of the dropped tokens (the kernel's order, see `prune_into`).
#[allow(clippy::too_many_arguments)]
pub fn evit_prune<T: Element>(
    x: &[T],
    batch: usize,
    n: usize,
    c: usize,
    idx: &[u32],
    k: usize,
    compl: &[u32],
    scores: &[f32],
) -> Result<Vec<T>> {
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
    crate::ops::prune::check_indices("idx", idx, n - 1)?;
    crate::ops::prune::check_indices("compl", compl, n - 1)?;
    let mut out = vec![T::from_f32(0.0); batch * (2 + k) * c];
    prune_into(x, batch, n, c, idx, k, Some((compl, scores)), &mut out);
    Ok(out)
}

/// The projection's bias factor per output row of an EViT layer that projects after pruning
/// (contract in [`crate::ops::prune::evit_bias_scale`]): [batch, 2 + k], 1 for [cls, kept] and
/// S = Σ_{t ∈ compl} scores[t] for the fused row, in the fused token's order.
pub fn evit_bias_scale(
    compl: &[u32],
    scores: &[f32],
    batch: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    crate::ops::prune::check_bias_scale(compl.len(), scores.len(), batch, n, k)?;
    crate::ops::prune::check_indices("compl", compl, n - 1)?;
    let mut out = vec![1f32; batch * (2 + k)];
    for (bi, row) in out.chunks_exact_mut(2 + k).enumerate() {
        row[k + 1] = weight_sum(
            &compl[bi * (n - 1 - k)..(bi + 1) * (n - 1 - k)],
            &scores[bi * (n - 1)..(bi + 1) * (n - 1)],
        );
    }
    Ok(out)
}

/// Σ scores[t] over the dropped tokens `compl` of one sample, in the fused token's order
/// ([`PRUNE_SEGS`] runs of ⌈m / runs⌉, each summed from 0, the run sums in run order): the
/// fused token of a channel of ones.
pub(crate) fn weight_sum(compl: &[u32], scores: &[f32]) -> f32 {
    let mut acc = 0f32;
    for run in runs(compl.len()) {
        acc += compl[run].iter().fold(0f32, |a, &t| a + scores[t as usize]);
    }
    acc
}

/// [cls, kept (, fused)] per sample from compact x [b, n, c] into compact `out`; `fuse` =
/// (compl, scores) for EViT. Shapes and indices are the caller's to check.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prune_into<T: Element>(
    x: &[T],
    b: usize,
    n: usize,
    c: usize,
    idx: &[u32],
    k: usize,
    fuse: Option<(&[u32], &[f32])>,
    out: &mut [T],
) {
    let on = if fuse.is_some() { k + 2 } else { k + 1 };
    let mut acc = vec![0f32; if fuse.is_some() { c } else { 0 }];
    let mut part = acc.clone();
    for bi in 0..b {
        let xs = &x[bi * n * c..(bi + 1) * n * c];
        let os = &mut out[bi * on * c..(bi + 1) * on * c];
        os[..c].copy_from_slice(&xs[..c]);
        for j in 0..k {
            let t = 1 + idx[bi * k + j] as usize;
            os[(1 + j) * c..(2 + j) * c].copy_from_slice(&xs[t * c..(t + 1) * c]);
        }
        if let Some((compl, scores)) = fuse {
            // The kernel's order (kernels/prune.cu): PRUNE_SEGS runs of ceil(m / PRUNE_SEGS)
            // dropped tokens, each an f32 sum in ascending t from 0, the run sums added in run
            // order from 0. Token-outer, so the rows are read contiguously.
            let m = n - 1 - k;
            acc.iter_mut().for_each(|v| *v = 0.0);
            for run in runs(m) {
                part.iter_mut().for_each(|v| *v = 0.0);
                for j in run {
                    let t = compl[bi * m + j] as usize;
                    let w = scores[bi * (n - 1) + t];
                    for (a, xv) in part.iter_mut().zip(&xs[(t + 1) * c..(t + 2) * c]) {
                        *a += w * xv.to_f32();
                    }
                }
                for (a, p) in acc.iter_mut().zip(&part) {
                    *a += *p;
                }
            }
            for (o, a) in os[(1 + k) * c..].iter_mut().zip(&acc) {
                *o = T::from_f32(*a);
            }
        }
    }
}
