//! Reference top-k selection (contract in `crate::ops::topk`).
use crate::ops::topk::check_topk;
use crate::{Element, Result};
use rayon::prelude::*;

/// The selection key of a value: -0 == +0, NaN above +inf, all NaNs equal (as the kernels).
pub fn order_key(v: f32) -> u32 {
    let mut u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return u32::MAX;
    }
    if u == 0x8000_0000 {
        u = 0;
    }
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// One row: the k winners (descending key, ties by lower index) and the ascending complement.
pub(crate) fn topk_row<T: Element>(row: &[T], k: usize) -> (Vec<u32>, Vec<u32>) {
    let mut order: Vec<(u32, u32)> = row
        .iter()
        .enumerate()
        .map(|(i, v)| (order_key(v.to_f32()), i as u32))
        .collect();
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let idx: Vec<u32> = order[..k].iter().map(|p| p.1).collect();
    let mut compl: Vec<u32> = order[k..].iter().map(|p| p.1).collect();
    compl.sort_unstable();
    (idx, compl)
}

/// Top-k of every row of `x` [rows, n]: (`idx` [rows, k], `compl` [rows, n-k]).
pub fn topk_select<T: Element>(
    x: &[T],
    rows: usize,
    n: usize,
    k: usize,
) -> Result<(Vec<u32>, Vec<u32>)> {
    check_topk(x.len(), rows, n, k)?;
    let per_row: Vec<(Vec<u32>, Vec<u32>)> = (0..rows)
        .into_par_iter()
        .map(|r| topk_row(&x[r * n..(r + 1) * n], k))
        .collect();
    let mut idx = Vec::with_capacity(rows * k);
    let mut compl = Vec::with_capacity(rows * (n - k));
    for (a, b) in per_row {
        idx.extend(a);
        compl.extend(b);
    }
    Ok((idx, compl))
}
