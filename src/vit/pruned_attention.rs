//! A Top-K or EViT reduction block on the packed CPU path (SPEC §4.2): attention for only
//! the queries whose output survives.
//!
//! The authors' order computes every query's attention, adds proj(attention) into every
//! token, then keeps [cls, kept] and (EViT) fuses the rest into Σ s_t·x_t. A dropped token's
//! output matters only through that sum, and the residual branch is affine in the attention
//! output a_t:
//!
//!   Σ s_t·(x_t + ls⊙(W a_t + b)) = Σ s_t·x_t + ls⊙(W (Σ s_t·a_t) + S·b),   S = Σ s_t,
//!
//! and per head Σ s_t·a_t = (Σ s_t·P_t)·V. So the dropped queries need their probability
//! rows (q·Kᵀ and the softmax) but not P·V: one row u·V per head stands for all of them,
//! and proj runs on k + 2 rows instead of n. Top-K drops them outright. At 448 px,
//! kr 0.1, this skips 699 of 786 queries' P·V and proj rows in block 3.
//!
//! Steps:
//! 1. each (image, head)'s cls-query probabilities, with the same operations in the same
//!    order as the full attention's (so the scores and the selection are the same bits);
//! 2. scores and top-k ([`super::cpu::select_tokens`]);
//! 3. the attention of [cls, kept] into compact rows of ws.attn, and for EViT the dropped
//!    queries' weighted row after them;
//! 4. [cls, kept, Σ s·x] of the block input, then proj added into it, with the fused row's
//!    bias scaled by S.
//!
//! cls and the kept tokens come out bit for bit as in the full order (each output is the
//! same FMA chain); the fused token differs by rounding (its sum is reassociated).
use super::cpu::{
    dense, for_each_pair, pack_kv, pv_panel, scores_panel, select_tokens, softmax_columns,
    AttnDims, AttnScratch, CpuWorkspace, Packed,
};
use super::profile::mark;
use super::{Trace, Vit};
use crate::cpu::packed::{Epi, Isa, SendPtr, NR};
use crate::plan::Reduction;
use crate::{Error, Result};

/// Runs block `i`'s attention, proj + residual and Top-K / EViT reduction to `k` kept
/// tokens on the `n` tokens of ws.x (the block input), whose qkv is in ws.qkv; leaves
/// [cls, kept (, fused)] in ws.x and returns their count. The packed path only (the caller
/// checks `ws.isa()`); not with ToMe's sizes or ATS's mask.
pub(super) fn attend_project_prune(
    m: &Vit,
    ws: &mut CpuWorkspace,
    i: usize,
    n: usize,
    k: usize,
    proj: Packed<'_>,
    trace: Option<&mut Trace>,
) -> Result<usize> {
    let c = &m.cfg;
    let dims = AttnDims::new(c, n);
    let (b, hh, d, hd) = (ws.batch, dims.hh, dims.d, dims.hd);
    let evit = c.reduction == Reduction::EVit;
    let out_n = if evit { k + 2 } else { k + 1 };
    let isa = ws.isa().ok_or_else(|| {
        Error::Plan(format!(
            "block {i}: the pruned attention runs on the packed path only"
        ))
    })?;
    // The bounds the raw-pointer work below relies on.
    let mul = crate::error::mul;
    let fits = |len: usize, dims: &[usize]| mul("attention", dims).is_ok_and(|need| len >= need);
    if hh == 0
        || hd * hh != d
        || k >= n
        || !fits(ws.qkv.len(), &[b, n, 3, d])
        || !fits(ws.attn.len(), &[b, out_n, d])
        || !fits(ws.x.len(), &[b, n, d])
        || !fits(ws.x2.len(), &[b, out_n, d])
        || !fits(ws.cls_probs.len(), &[b, hh, n])
        || ws.slots.iter().any(|s| {
            !s.packed_fits(n, hd) || !fits(s.qg.len(), &[NR, hd]) || !fits(s.u.len(), &[n, NR])
        })
    {
        return Err(Error::Shape {
            arg: "workspace",
            expected: format!("pruned-attention buffers for {b}×{n} tokens of width {d}"),
            got: "smaller buffers".into(),
        });
    }

    // 1. The cls rows.
    let probs = SendPtr(ws.cls_probs.as_mut_ptr());
    let qkv = &ws.qkv;
    for_each_pair(&mut ws.slots, b * hh, |s, pair| {
        // SAFETY: the CPU has `isa`; bounds checked above; pair (bi, h) alone writes
        // cls_probs[bi, h, ..n].
        unsafe { cls_row_packed(isa, &dims, pair, qkv, s, probs) }
    });
    mark(&mut ws.profile, Some(i), "attention");

    // 2. The selection.
    let (idx, compl) = select_tokens(ws, hh, n, k)?;
    mark(&mut ws.profile, Some(i), "reduction");

    // 3. The surviving queries' attention.
    let dropped = n - 1 - k;
    let attn = SendPtr(ws.attn.as_mut_ptr());
    let (qkv, scores) = (&ws.qkv, &ws.scores);
    for_each_pair(&mut ws.slots, b * hh, |s, pair| {
        let bi = pair / hh;
        let sel = Selection {
            kept: &idx[bi * k..(bi + 1) * k],
            fuse: evit.then(|| {
                (
                    &compl[bi * dropped..(bi + 1) * dropped],
                    &scores[bi * (n - 1)..(bi + 1) * (n - 1)],
                )
            }),
            out_n,
        };
        // SAFETY: as above; pair (bi, h) alone writes head h's columns of the compact rows
        // bi·out_n .. (bi + 1)·out_n of attn, inside it (checked).
        unsafe { selected_pair_packed(isa, (&dims, pair, qkv, s, sel, attn)) }
    });
    mark(&mut ws.profile, Some(i), "attention");

    // 4. [cls, kept, Σ s·x] of the block input, then proj added into it.
    let scores = &ws.scores[..b * (n - 1)];
    crate::cpu::prune::prune_into(
        &ws.x[..b * n * d],
        b,
        n,
        d,
        &idx,
        k,
        evit.then_some((&compl[..], scores)),
        &mut ws.x2[..b * out_n * d],
    );
    if let Some(t) = trace {
        t.push_selection(i, b, n, k, scores, &idx, evit.then_some(&compl[..]));
    }
    std::mem::swap(&mut ws.x, &mut ws.x2);
    mark(&mut ws.profile, Some(i), "reduction");
    let bw = &m.weights.blocks[i];
    dense(
        proj,
        &bw.proj_w,
        &ws.attn,
        b * out_n,
        d,
        d,
        Some(&bw.proj_b),
        &mut ws.x,
        &mut ws.h,
        &mut ws.apack,
        Epi::AddTo(bw.ls1.as_deref()),
    );
    if evit {
        // The fused row got ls⊙(W·Σ s·a + b); its terms carry S·b (S summed as the device
        // path's `evit_bias_scale` sums it).
        for bi in 0..b {
            let s = crate::cpu::prune::weight_sum(
                &compl[bi * dropped..(bi + 1) * dropped],
                &ws.scores[bi * (n - 1)..bi * (n - 1) + n - 1],
            );
            let row = &mut ws.x[(bi * out_n + k + 1) * d..][..d];
            for (j, (o, &bv)) in row.iter_mut().zip(&bw.proj_b).enumerate() {
                let g = bw.ls1.as_deref().map_or(1.0, |g| g[j]);
                *o += g * ((s - 1.0) * bv);
            }
        }
    }
    mark(&mut ws.profile, Some(i), "proj+residual");
    Ok(out_n)
}

/// [`cls_row`] for `isa`.
///
/// # Safety
/// As [`cls_row`].
unsafe fn cls_row_packed(
    isa: Isa,
    g: &AttnDims,
    pair: usize,
    qkv: &[f32],
    s: &mut AttnScratch,
    probs: SendPtr,
) {
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    unsafe fn avx512(g: &AttnDims, pair: usize, qkv: &[f32], s: &mut AttnScratch, p: SendPtr) {
        cls_row(g, pair, qkv, s, p)
    }
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn avx2(g: &AttnDims, pair: usize, qkv: &[f32], s: &mut AttnScratch, p: SendPtr) {
        cls_row(g, pair, qkv, s, p)
    }
    match isa {
        Isa::Avx512 => avx512(g, pair, qkv, s, probs),
        Isa::Avx2 => avx2(g, pair, qkv, s, probs),
    }
}

/// Pair (bi, h)'s cls-query probabilities over its n keys into probs[bi, h, ..n]: the
/// logits as the packed attention's microkernel makes them (one FMA chain from 0 over the
/// head dims in order, key value × scaled query), then its column softmax
/// ([`softmax_columns`]: max, exponentials, the sum over keys in order, then the division).
///
/// # Safety
/// The CPU has the caller's ISA; qkv holds image bi's n rows; s.qg holds hd values; probs
/// points at ws.cls_probs, of which this pair writes only its own row.
#[inline(always)]
unsafe fn cls_row(g: &AttnDims, pair: usize, qkv: &[f32], s: &mut AttnScratch, probs: SendPtr) {
    let AttnDims {
        n,
        d,
        hh,
        hd,
        scale,
    } = *g;
    let (bi, h) = (pair / hh, pair % hh);
    let q = &mut s.qg[..hd];
    for (qj, &v) in q.iter_mut().zip(&qkv[bi * n * 3 * d + h * hd..][..hd]) {
        *qj = v * scale;
    }
    let out = std::slice::from_raw_parts_mut(probs.0.add((bi * hh + h) * n), n);
    // 16 keys at a time, 16 independent chains (the last block repeats key n − 1).
    const L: usize = 16;
    let key = |t: usize| &qkv[(bi * n + t) * 3 * d + d + h * hd..][..hd];
    for t0 in (0..n).step_by(L) {
        let mut acc = [0f32; L];
        let rows: [&[f32]; L] = std::array::from_fn(|l| key((t0 + l).min(n - 1)));
        for (j, &qj) in q.iter().enumerate() {
            for (a, r) in acc.iter_mut().zip(&rows) {
                *a = r[j].mul_add(qj, *a);
            }
        }
        let c = L.min(n - t0);
        out[t0..t0 + c].copy_from_slice(&acc[..c]);
    }
    let mx = out.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in out.iter_mut() {
        *v = if mx.is_finite() {
            crate::cpu::dense::exp_neg_fma(mx - *v)
        } else {
            (*v - mx).exp()
        };
        sum += *v;
    }
    for v in out.iter_mut() {
        *v /= sum;
    }
}

/// One image's selection, as pair tasks read it.
#[derive(Clone, Copy)]
struct Selection<'a> {
    /// The kept tokens' indices among the non-cls ones (descending score).
    kept: &'a [u32],
    /// EViT: the dropped ones (ascending) and the image's scores [n − 1].
    fuse: Option<(&'a [u32], &'a [f32])>,
    /// Rows per image in the compact output.
    out_n: usize,
}

/// The arguments of [`selected_pair_packed`] after the ISA: dims, pair, qkv, scratch, the
/// pair's image's selection, attn.
type SelArgs<'a> = (
    &'a AttnDims,
    usize,
    &'a [f32],
    &'a mut AttnScratch,
    Selection<'a>,
    SendPtr,
);

/// [`selected_pair`] for `isa`.
///
/// # Safety
/// As [`selected_pair`].
unsafe fn selected_pair_packed(isa: Isa, a: SelArgs<'_>) {
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    unsafe fn avx512(a: SelArgs<'_>) {
        selected_pair(Isa::Avx512, a)
    }
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn avx2(a: SelArgs<'_>) {
        selected_pair(Isa::Avx2, a)
    }
    match isa {
        Isa::Avx512 => avx512(a),
        Isa::Avx2 => avx2(a),
    }
}

/// Pair (bi, h): the attention of [cls, kept] (panels of 32 gathered queries, the packed
/// attention's steps) into head h's columns of compact rows 0 .. k + 1 of image bi, and for
/// EViT, Σ over dropped t of s_t·P_t (per lane of the panels, the lanes then summed in
/// order) times V into row k + 1.
///
/// # Safety
/// The CPU has `isa`; the buffers hold what [`attend_project_prune`] checks; attn points at
/// ws.attn, of which this pair writes only its own columns of its image's compact rows.
#[inline(always)]
unsafe fn selected_pair(isa: Isa, a: SelArgs<'_>) {
    let (g, pair, qkv, s, sel, attn) = a;
    let AttnDims { n, d, hh, hd, .. } = *g;
    let (bi, h) = (pair / hh, pair % hh);
    pack_kv(isa, g, bi, h, qkv, s);
    let kq = sel.kept.len() + 1;
    for p0 in (0..kq).step_by(NR) {
        let tokens = (p0..kq.min(p0 + NR)).map(|j| match j {
            0 => 0,
            j => 1 + sel.kept[j - 1] as usize,
        });
        let (qc, sums) = gathered_panel(isa, g, bi, h, qkv, s, tokens);
        let y = attn.0.add((bi * sel.out_n + p0) * d + h * hd);
        pv_panel(isa, g, s, qc, &sums, y, d);
    }
    let Some((dropped, scores)) = sel.fuse else {
        return;
    };
    s.u[..n * NR].iter_mut().for_each(|v| *v = 0.0);
    for p0 in (0..dropped.len()).step_by(NR) {
        let chunk = &dropped[p0..dropped.len().min(p0 + NR)];
        let tokens = chunk.iter().map(|&t| 1 + t as usize);
        let (qc, sums) = gathered_panel(isa, g, bi, h, qkv, s, tokens);
        // Lane qi's weight: s_t / Σ (its probabilities are exp / Σ); lanes qc.. weigh 0.
        let mut w = [0f32; NR];
        for (qi, &t) in chunk.iter().enumerate().take(qc) {
            w[qi] = scores[t as usize] / sums[qi];
        }
        weigh_rows(isa, &mut s.u[..n * NR], &s.a[..n * NR], &w);
    }
    // Σ_t u_t·v_t, over keys in order, into s.qg's first hd values.
    let o = &mut s.qg[..hd];
    o.iter_mut().for_each(|v| *v = 0.0);
    for (t, urow) in s.u[..n * NR].chunks_exact(NR).enumerate() {
        let ut: f32 = urow.iter().sum();
        let v = &qkv[(bi * n + t) * 3 * d + 2 * d + h * hd..][..hd];
        for (ov, &vv) in o.iter_mut().zip(v) {
            *ov = ut.mul_add(vv, *ov);
        }
    }
    let y = std::slice::from_raw_parts_mut(
        attn.0.add((bi * sel.out_n + sel.out_n - 1) * d + h * hd),
        hd,
    );
    y.copy_from_slice(o);
}

/// Gathers the query rows of `tokens` (≤ 32) of pair (bi, h) into s.qg, then makes their
/// logits and exponentials in the head of s.a ([`scores_panel`], [`softmax_columns`]);
/// returns the panel's query count and column sums.
///
/// # Safety
/// As [`selected_pair`]; `pack_kv` has run for this pair.
#[inline(always)]
unsafe fn gathered_panel(
    isa: Isa,
    g: &AttnDims,
    bi: usize,
    h: usize,
    qkv: &[f32],
    s: &mut AttnScratch,
    tokens: impl Iterator<Item = usize>,
) -> (usize, [f32; NR]) {
    let AttnDims { n, d, hd, .. } = *g;
    let mut qc = 0;
    for (qi, t) in tokens.enumerate() {
        s.qg[qi * hd..(qi + 1) * hd].copy_from_slice(&qkv[(bi * n + t) * 3 * d + h * hd..][..hd]);
        qc = qi + 1;
    }
    let qg = s.qg.as_ptr();
    scores_panel(isa, g, s, qg, hd, qc);
    (qc, softmax_columns(&mut s.a[..n * NR]))
}

/// u[t][l] += p[t][l]·w[l] for every row t of 32 lanes: 32 independent FMA chains (one per
/// lane, over the panels in order). In intrinsics: over slices or fixed-size rows alike the
/// compiler vectorized across rows, with a gather and a scatter per 8 values.
///
/// # Safety
/// The CPU has `isa`; u and p hold the same whole number of rows.
#[inline(always)]
unsafe fn weigh_rows(isa: Isa, u: &mut [f32], p: &[f32], w: &[f32; NR]) {
    debug_assert!(u.len() == p.len() && u.len().is_multiple_of(NR));
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let (up, pp) = (u.as_mut_ptr(), p.as_ptr());
        match isa {
            Isa::Avx512 => {
                let w0 = _mm512_loadu_ps(w.as_ptr());
                let w1 = _mm512_loadu_ps(w.as_ptr().add(16));
                for r in (0..u.len()).step_by(NR) {
                    let (a, b) = (up.add(r), pp.add(r));
                    _mm512_storeu_ps(
                        a,
                        _mm512_fmadd_ps(_mm512_loadu_ps(b), w0, _mm512_loadu_ps(a)),
                    );
                    let (a, b) = (a.add(16), b.add(16));
                    _mm512_storeu_ps(
                        a,
                        _mm512_fmadd_ps(_mm512_loadu_ps(b), w1, _mm512_loadu_ps(a)),
                    );
                }
            }
            Isa::Avx2 => {
                let ws: [__m256; 4] =
                    std::array::from_fn(|j| _mm256_loadu_ps(w.as_ptr().add(8 * j)));
                for r in (0..u.len()).step_by(NR) {
                    for (j, &wj) in ws.iter().enumerate() {
                        let (a, b) = (up.add(r + 8 * j), pp.add(r + 8 * j));
                        _mm256_storeu_ps(
                            a,
                            _mm256_fmadd_ps(_mm256_loadu_ps(b), wj, _mm256_loadu_ps(a)),
                        );
                    }
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        for (i, (uv, &pv)) in u.iter_mut().zip(p).enumerate() {
            *uv = pv.mul_add(w[i % NR], *uv);
        }
    }
}
