//! Reference Top-K and EViT pruning (contract in `crate::ops::prune`).
use crate::ops::prune::{check_evit, check_topk_prune};
use crate::{Element, Result};

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
    let mut out = Vec::with_capacity(batch * (1 + k) * c);
    for b in 0..batch {
        out.extend_from_slice(&x[b * n * c..][..c]);
        for j in 0..k {
            let t = 1 + idx[b * k + j] as usize;
            out.extend_from_slice(&x[(b * n + t) * c..][..c]);
        }
    }
    Ok(out)
}

/// Top-K prune plus the fused token sum over dropped t (ascending) of scores[t] * x[1 + t],
/// appended last → [batch, 2 + k, c]. Weights are the raw scores (not renormalized).
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
    let m = n - 1 - k;
    let mut out = Vec::with_capacity(batch * (2 + k) * c);
    for b in 0..batch {
        out.extend_from_slice(&x[b * n * c..][..c]);
        for j in 0..k {
            let t = 1 + idx[b * k + j] as usize;
            out.extend_from_slice(&x[(b * n + t) * c..][..c]);
        }
        // Token-outer, so every channel still sums in ascending t (the kernel's order) while the
        // rows are read contiguously.
        let mut acc = vec![0f32; c];
        for j in 0..m {
            let t = compl[b * m + j] as usize;
            let s = scores[b * (n - 1) + t];
            for (a, xv) in acc.iter_mut().zip(&x[(b * n + 1 + t) * c..][..c]) {
                *a += s * xv.to_f32();
            }
        }
        out.extend(acc.iter().map(|&v| T::from_f32(v)));
    }
    Ok(out)
}
