//! Reference ToMe (contract in [`crate::ops::tome`]). The CPU forward ([`crate::vit::cpu`])
//! merges with these same functions. Every sum runs in the kernels' order with one rounding per
//! product and per sum, so the kernels reproduce it bit for bit.
use crate::ops::tome::{check_match, check_merge, check_metric, check_n_r, plan_lens, split};
use crate::{error, Element, Error, Result};

/// The merge plan of a batch (shapes in [`crate::ops::tome`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Sources in merge order [batch, r] (a indices).
    pub src: Vec<u32>,
    /// Unmerged a tokens, ascending [batch, na − r].
    pub unm: Vec<u32>,
    /// Sources grouped by destination b token, merge order within one [batch, r].
    pub grouped: Vec<u32>,
    /// b token j's sources are grouped[offsets[j]..offsets[j+1]] [batch, nb + 1].
    pub offsets: Vec<u32>,
}

/// The unit metric [batch, n, hd] of `qkv` [batch, n, 3, heads, hd].
pub fn tome_metric<T: Element>(
    qkv: &[T],
    batch: usize,
    n: usize,
    heads: usize,
    hd: usize,
) -> Result<Vec<f32>> {
    let len = error::mul("batch*n*hd", &[batch, n, hd])?;
    check_metric(qkv.len(), len, batch, n, heads, hd)?;
    let mut out = vec![0f32; len];
    metric_into(qkv, batch * n, heads, hd, &mut out);
    Ok(out)
}

/// The unit metric of `rows` rows of qkv [rows, 3·heads·hd] into `out` [rows, hd]: the keys
/// summed over heads in order and ÷heads, then ÷ sqrt(Σ_j m_j²) (in channel order).
pub(crate) fn metric_into<T: Element>(
    qkv: &[T],
    rows: usize,
    heads: usize,
    hd: usize,
    out: &mut [f32],
) {
    let d = heads * hd;
    for t in 0..rows {
        let k = &qkv[t * 3 * d + d..t * 3 * d + 2 * d];
        let m = &mut out[t * hd..(t + 1) * hd];
        // Every channel's sum from 0 over the heads in order, the channels side by side (one
        // vector add per head instead of a 12-long chain per channel).
        m.fill(0.0);
        for kh in k.chunks_exact(hd) {
            for (acc, v) in m.iter_mut().zip(kh) {
                *acc += v.to_f32();
            }
        }
        for v in m.iter_mut() {
            *v /= heads as f32;
        }
        let mut q = 0f32;
        for v in m.iter() {
            q += v * v;
        }
        let norm = q.sqrt();
        m.iter_mut().for_each(|v| *v /= norm);
    }
}

/// The best b token of every a token: (`node_max` [batch, na], `node_idx` [batch, na]).
pub fn tome_match(
    metric: &[f32],
    batch: usize,
    n: usize,
    hd: usize,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let na = split(n).0;
    let len = error::mul("batch*na", &[batch, na])?;
    check_match(metric.len(), len, len, batch, n, hd)?;
    let mut node_max = vec![0f32; len];
    let mut node_idx = vec![0u32; len];
    for b in 0..batch {
        match_row(
            &metric[b * n * hd..(b + 1) * n * hd],
            n,
            hd,
            &mut node_max[b * na..(b + 1) * na],
            &mut node_idx[b * na..(b + 1) * na],
        );
    }
    Ok((node_max, node_idx))
}

/// One sample: for a token i ≥ 1 the largest dot product (channel order) with a b token, the
/// first b index on ties, NaN never taken; (−inf, 0) when nothing beats −inf and for cls.
///
/// Each dot product is one chain from 0 over the channels in order, a rounding per product and
/// per sum (the kernel's `__fmul_rn` / `__fadd_rn`). The b tokens go channel-major so that the
/// chains of [`MATCH_LANES`] b tokens run side by side in vector lanes, each lane the same
/// operations as the scalar chain (the scalar loop took 3–4 ms of a 448 px ToMe forward at the
/// 786-token merge); the a tokens are split over rayon's threads.
pub(crate) fn match_row(
    metric: &[f32],
    n: usize,
    hd: usize,
    node_max: &mut [f32],
    node_idx: &mut [u32],
) {
    use rayon::prelude::*;
    let (na, nb) = split(n);
    node_max[0] = f32::NEG_INFINITY;
    node_idx[0] = 0;
    if na <= 1 {
        return;
    }
    // bt [hd][nbp]: b token j's channel p at p·nbp + j, zeros past nb (never compared).
    let nbp = nb.div_ceil(MATCH_LANES) * MATCH_LANES;
    let mut bt = vec![0f32; hd * nbp];
    for j in 0..nb {
        for (p, &v) in metric[(2 * j + 1) * hd..(2 * j + 2) * hd]
            .iter()
            .enumerate()
        {
            bt[p * nbp + j] = v;
        }
    }
    let g = MatchRows {
        metric,
        hd,
        bt: &bt,
        nb,
        nbp,
    };
    // About 16 a tokens a task: the tasks' b-token scores stay in L1 and a 786-token merge
    // still splits into 25 tasks.
    const ROWS: usize = 16;
    let wide = crate::cpu::packed::detect();
    node_max[1..na]
        .par_chunks_mut(ROWS)
        .zip(node_idx[1..na].par_chunks_mut(ROWS))
        .enumerate()
        .for_each(|(c, (mx, ix))| match_rows(wide, &g, 1 + c * ROWS, mx, ix));
}

crate::cpu::wide::widest!(
    /// [`MatchRows::rows`] at the widest vectors (the lanes are independent, so every width
    /// gives the same bits).
    fn match_rows(g: &MatchRows<'_>, first: usize, maxs: &mut [f32], idxs: &mut [u32]) => MatchRows::rows
);

/// b tokens scored side by side in [`match_row`].
const MATCH_LANES: usize = 32;

/// What [`match_row`]'s tasks share: the metric, the b tokens channel-major.
struct MatchRows<'a> {
    metric: &'a [f32],
    hd: usize,
    bt: &'a [f32],
    nb: usize,
    nbp: usize,
}

impl MatchRows<'_> {
    /// a tokens first .. first + maxs.len(): their best b token into maxs / idxs.
    #[inline(always)]
    fn rows(&self, first: usize, maxs: &mut [f32], idxs: &mut [u32]) {
        let Self {
            metric,
            hd,
            bt,
            nb,
            nbp,
        } = *self;
        let mut scores = vec![0f32; nbp];
        for (r, (mx, ix)) in maxs.iter_mut().zip(idxs.iter_mut()).enumerate() {
            let i = first + r;
            let a = &metric[2 * i * hd..(2 * i + 1) * hd];
            for (c, sc) in scores.chunks_exact_mut(MATCH_LANES).enumerate() {
                let mut acc = [0f32; MATCH_LANES];
                for (p, &ap) in a.iter().enumerate() {
                    if let Some(b) = bt[p * nbp + c * MATCH_LANES..].first_chunk::<MATCH_LANES>() {
                        for (s, &bv) in acc.iter_mut().zip(b) {
                            *s += ap * bv;
                        }
                    }
                }
                if let Some(dst) = sc.first_chunk_mut::<MATCH_LANES>() {
                    *dst = acc;
                }
            }
            let (mut best, mut arg) = (f32::NEG_INFINITY, 0u32);
            for (j, &s) in scores[..nb].iter().enumerate() {
                if s > best {
                    best = s;
                    arg = j as u32;
                }
            }
            *mx = best;
            *ix = arg;
        }
    }
}

/// The merge plan of a batch from its matching.
pub fn tome_order(
    node_max: &[f32],
    node_idx: &[u32],
    batch: usize,
    n: usize,
    r: usize,
) -> Result<Plan> {
    check_n_r(batch, n, r)?;
    let (na, nb) = split(n);
    let len = error::mul("batch*na", &[batch, na])?;
    error::check_len("node_max", node_max.len(), len)?;
    error::check_len("node_idx", node_idx.len(), len)?;
    crate::ops::prune::check_indices("node_idx", node_idx, nb.max(1))?;
    let (g, u, o) = plan_lens(batch, n, r)?;
    let mut p = Plan {
        src: Vec::with_capacity(g),
        unm: Vec::with_capacity(u),
        grouped: Vec::with_capacity(g),
        offsets: Vec::with_capacity(o),
    };
    for b in 0..batch {
        let (src, unm, grouped, offsets) = order_row(
            &node_max[b * na..(b + 1) * na],
            &node_idx[b * na..(b + 1) * na],
            n,
            r,
        );
        p.src.extend(src);
        p.unm.extend(unm);
        p.grouped.extend(grouped);
        p.offsets.extend(offsets);
    }
    Ok(p)
}

/// One sample: (src, unm, grouped, offsets). The sources are the top r of node_max[1..na] by the
/// top-k contract (descending, ties by lower index, −0 == +0), so cls is never one.
pub(crate) fn order_row(
    node_max: &[f32],
    node_idx: &[u32],
    n: usize,
    r: usize,
) -> (Vec<u32>, Vec<u32>, Vec<u32>, Vec<u32>) {
    let (na, nb) = split(n);
    let (mut src, rest) = crate::cpu::topk::topk_row(&node_max[1..na], r);
    src.iter_mut().for_each(|s| *s += 1);
    let mut unm = Vec::with_capacity(na - r);
    unm.push(0);
    unm.extend(rest.iter().map(|u| u + 1));
    // A stable sort by destination keeps the merge order within each destination.
    let mut grouped = src.clone();
    grouped.sort_by_key(|&s| node_idx[s as usize]);
    let mut offsets = vec![0u32; nb + 1];
    for &s in &src {
        offsets[node_idx[s as usize] as usize + 1] += 1;
    }
    for j in 0..nb {
        offsets[j + 1] += offsets[j];
    }
    (src, unm, grouped, offsets)
}

/// The size-weighted merge of `x` [batch, n, c] with `plan`: (`out` [batch, n − r, c],
/// `out_sizes` [batch, n − r]). `sizes` [batch, n], or `None` for all ones.
pub fn tome_merge<T: Element>(
    x: &[T],
    sizes: Option<&[f32]>,
    batch: usize,
    n: usize,
    c: usize,
    r: usize,
    plan: &Plan,
) -> Result<(Vec<T>, Vec<f32>)> {
    check_merge(
        x.len(),
        sizes.map(|s| s.len()),
        plan.unm.len(),
        plan.grouped.len(),
        plan.offsets.len(),
        batch,
        n,
        c,
        r,
    )?;
    let (na, nb) = split(n);
    crate::ops::prune::check_indices("unm", &plan.unm, na)?;
    crate::ops::prune::check_indices("grouped", &plan.grouped, na)?;
    for off in plan.offsets.chunks_exact(nb + 1) {
        if off[0] != 0 || off[nb] as usize != r || off.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::InvalidArgument {
                arg: "offsets",
                value: format!("{:?}", &off[..off.len().min(8)]),
                why: format!("must rise from 0 to r = {r}"),
            });
        }
    }
    let on = n - r;
    let mut out = vec![T::from_f32(0.0); batch * on * c];
    let mut out_sizes = vec![0f32; batch * on];
    for b in 0..batch {
        merge_into(
            &x[b * n * c..(b + 1) * n * c],
            sizes.map(|s| &s[b * n..(b + 1) * n]),
            n,
            c,
            r,
            &plan.unm[b * (na - r)..(b + 1) * (na - r)],
            &plan.grouped[b * r..(b + 1) * r],
            &plan.offsets[b * (nb + 1)..(b + 1) * (nb + 1)],
            &mut out[b * on * c..(b + 1) * on * c],
            &mut out_sizes[b * on..(b + 1) * on],
        );
    }
    Ok((out, out_sizes))
}

/// One sample of the merge (indices are the caller's to check). Per output token and channel:
/// x_t·s_t, plus x_i·s_i of each source in merge order, ÷ the size summed in the same order.
pub(crate) fn merge_into<T: Element>(
    x: &[T],
    sizes: Option<&[f32]>,
    n: usize,
    c: usize,
    r: usize,
    unm: &[u32],
    grouped: &[u32],
    offsets: &[u32],
    out: &mut [T],
    out_sizes: &mut [f32],
) {
    use rayon::prelude::*;
    let size = |t: usize| sizes.map_or(1.0, |s| s[t]);
    let nu = split(n).0 - r;
    // Output tokens are independent (each its own sums, in the same order whatever the
    // split): spread over rayon's threads when there is enough to spread.
    let token = |acc: &mut Vec<f32>, (o, (out, out_size)): (usize, (&mut [T], &mut f32))| {
        let (t, srcs) = if o < nu {
            (2 * unm[o] as usize, &grouped[..0])
        } else {
            let j = o - nu;
            (
                2 * j + 1,
                &grouped[offsets[j] as usize..offsets[j + 1] as usize],
            )
        };
        let st = size(t);
        for (a, v) in acc.iter_mut().zip(&x[t * c..(t + 1) * c]) {
            *a = v.to_f32() * st;
        }
        let mut sz = st;
        for &i in srcs {
            let i = 2 * i as usize;
            let si = size(i);
            for (a, v) in acc.iter_mut().zip(&x[i * c..(i + 1) * c]) {
                *a += v.to_f32() * si;
            }
            sz += si;
        }
        for (dst, a) in out.iter_mut().zip(acc.iter()) {
            *dst = T::from_f32(a / sz);
        }
        *out_size = sz;
    };
    let on = n - r;
    let (out, out_sizes) = (&mut out[..on * c], &mut out_sizes[..on]);
    if c > 0 && on * c >= 1 << 15 {
        out.par_chunks_exact_mut(c)
            .zip(out_sizes.par_iter_mut())
            .enumerate()
            .for_each_init(|| vec![0f32; c], token);
    } else {
        // (Indexing, not chunks: c may be 0, and the sizes are still wanted.)
        let mut acc = vec![0f32; c];
        for (o, sz) in out_sizes.iter_mut().enumerate() {
            token(&mut acc, (o, (&mut out[o * c..(o + 1) * c], sz)));
        }
    }
}

/// One whole merge layer: metric → match → order → merge.
pub fn tome<T: Element>(
    qkv: &[T],
    heads: usize,
    hd: usize,
    x: &[T],
    sizes: Option<&[f32]>,
    batch: usize,
    n: usize,
    c: usize,
    r: usize,
) -> Result<(Vec<T>, Vec<f32>)> {
    let metric = tome_metric(qkv, batch, n, heads, hd)?;
    let (node_max, node_idx) = tome_match(&metric, batch, n, hd)?;
    let plan = tome_order(&node_max, &node_idx, batch, n, r)?;
    tome_merge(x, sizes, batch, n, c, r, &plan)
}

/// [batch, n + r]: the sizes (all ones for `None`) followed by r ones per sample.
pub fn tome_sizes(sizes: Option<&[f32]>, batch: usize, n: usize, r: usize) -> Result<Vec<f32>> {
    if let Some(s) = sizes {
        error::check_len("sizes", s.len(), error::mul("batch*n", &[batch, n])?)?;
    }
    let m = n.checked_add(r).ok_or(Error::Overflow { what: "n+r" })?;
    let mut out = vec![1f32; error::mul("batch*(n+r)", &[batch, m])?];
    if let Some(s) = sizes {
        for b in 0..batch {
            out[b * m..b * m + n].copy_from_slice(&s[b * n..(b + 1) * n]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small LCG: values from a few levels (so that ties are common), with ±0, ±inf and NaN
    /// mixed in when `specials`.
    fn values(len: usize, seed: u64, specials: bool) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 33) as u32;
                match (specials, u % 97) {
                    (true, 0) => f32::NAN,
                    (true, 1) => f32::INFINITY,
                    (true, 2) => f32::NEG_INFINITY,
                    (true, 3) => -0.0,
                    (true, 4) => 0.0,
                    _ => ((u % 9) as f32 - 4.0) * 0.25 + ((u >> 8) % 3) as f32 * 1e-3,
                }
            })
            .collect()
    }

    /// The matching written as the contract says it, one scalar chain per (a, b) pair.
    fn match_oracle(metric: &[f32], n: usize, hd: usize) -> (Vec<f32>, Vec<u32>) {
        let (na, nb) = split(n);
        let mut mx = vec![f32::NEG_INFINITY; na];
        let mut ix = vec![0u32; na];
        for i in 1..na {
            for j in 0..nb {
                let mut s = 0f32;
                for p in 0..hd {
                    s += metric[2 * i * hd + p] * metric[(2 * j + 1) * hd + p];
                }
                if s > mx[i] {
                    mx[i] = s;
                    ix[i] = j as u32;
                }
            }
        }
        (mx, ix)
    }

    /// The lane-wise matching gives the scalar chains' bits and indices: n odd and even, b
    /// counts below, at and past whole lane passes, ties, ±0, ±inf and NaN.
    #[test]
    fn match_row_is_the_scalar_chain() {
        for &n in &[1usize, 2, 3, 4, 5, 63, 64, 65, 66, 67, 130, 786] {
            for &hd in &[1usize, 3, 64] {
                for specials in [false, true] {
                    let metric = values(n * hd, (n * 131 + hd) as u64, specials);
                    let na = split(n).0;
                    let (mut mx, mut ix) = (vec![1f32; na], vec![7u32; na]);
                    match_row(&metric, n, hd, &mut mx, &mut ix);
                    let (wm, wi) = match_oracle(&metric, n, hd);
                    assert_eq!(ix, wi, "n {n} hd {hd} specials {specials}");
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&mx), bits(&wm), "n {n} hd {hd} specials {specials}");
                }
            }
        }
    }

    /// The merge, on both sides of its parallel threshold (c = 16: serial; c = 256: spread
    /// over threads), against each output token computed on its own; sizes given and not.
    #[test]
    fn merge_matches_each_token_alone() {
        let (n, hd) = (301usize, 8usize);
        let metric = values(n * hd, 11, false);
        let (na, nb) = split(n);
        let (mut mx, mut ix) = (vec![0f32; na], vec![0u32; na]);
        match_row(&metric, n, hd, &mut mx, &mut ix);
        let r = 100;
        let (_, unm, grouped, offsets) = order_row(&mx, &ix, n, r);
        for c in [16usize, 256] {
            let x = values(n * c, c as u64, false);
            let sz: Vec<f32> = (0..n).map(|t| 1.0 + (t % 3) as f32).collect();
            for sizes in [None, Some(&sz[..])] {
                let on = n - r;
                let (mut out, mut out_sizes) = (vec![f32::NAN; on * c], vec![f32::NAN; on]);
                merge_into(
                    &x,
                    sizes,
                    n,
                    c,
                    r,
                    &unm,
                    &grouped,
                    &offsets,
                    &mut out,
                    &mut out_sizes,
                );
                let size = |t: usize| sizes.map_or(1.0, |s| s[t]);
                for o in 0..on {
                    let (t, srcs): (usize, Vec<usize>) = if o < na - r {
                        (2 * unm[o] as usize, vec![])
                    } else {
                        let j = o - (na - r);
                        let g = &grouped[offsets[j] as usize..offsets[j + 1] as usize];
                        (2 * j + 1, g.iter().map(|&i| 2 * i as usize).collect())
                    };
                    assert!(t < n && (o < na - r || o - (na - r) < nb));
                    let mut s = size(t);
                    for &i in &srcs {
                        s += size(i);
                    }
                    assert_eq!(out_sizes[o].to_bits(), s.to_bits(), "c {c} token {o} size");
                    for ch in 0..c {
                        let mut a = x[t * c + ch] * size(t);
                        for &i in &srcs {
                            a += x[i * c + ch] * size(i);
                        }
                        assert_eq!(
                            out[o * c + ch].to_bits(),
                            (a / s).to_bits(),
                            "c {c} [{o}][{ch}]"
                        );
                    }
                }
            }
        }
    }

    /// The channel-wise metric is each channel's chain over the heads from 0, ÷ heads, then
    /// the norm, bit for bit (−0 keys included: 0 + −0 is +0, as in the chain).
    #[test]
    fn metric_is_the_head_chain() {
        let (rows, heads, hd) = (5, 12, 64);
        let d = heads * hd;
        let qkv = values(rows * 3 * d, 3, false);
        let mut got = vec![0f32; rows * hd];
        metric_into(&qkv, rows, heads, hd, &mut got);
        for t in 0..rows {
            let mut m = vec![0f32; hd];
            for (j, mj) in m.iter_mut().enumerate() {
                let mut acc = 0f32;
                for h in 0..heads {
                    acc += qkv[t * 3 * d + d + h * hd + j];
                }
                *mj = acc / heads as f32;
            }
            let norm = m.iter().fold(0f32, |q, v| q + v * v).sqrt();
            for (j, v) in m.iter().enumerate() {
                assert_eq!(
                    got[t * hd + j].to_bits(),
                    (v / norm).to_bits(),
                    "row {t} ch {j}"
                );
            }
        }
    }
}
