//! The CPU forward (f32): patch embed → blocks (reduce inside, per the plan) → cache → CLS taps
//! → CLA head or final norm + head, in the order of SPEC §1.2 and §2.3. Every activation
//! buffer is sized from the plan once per (model, batch) in [`CpuWorkspace`].
use super::profile::{mark, Profile};
use super::weights::HeadWeights;
use super::{Trace, Vit};
use crate::cpu::dense::{gelu_inplace, layer_norm, linear, softmax};
use crate::cpu::packed::{self, Epi, Isa, PackedMat, SendPtr};
use crate::plan::Reduction;
use crate::{Error, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// Buffers of one forward at a given batch.
pub struct CpuWorkspace {
    pub(super) batch: usize,
    pub(super) x: Vec<f32>,
    pub(super) x2: Vec<f32>,
    pub(super) h: Vec<f32>,
    pub(super) qkv: Vec<f32>,
    pub(super) attn: Vec<f32>,
    pub(super) mlp: Vec<f32>,
    pub(super) patches: Vec<f32>,
    pub(super) cls_probs: Vec<f32>,
    pub(super) scores: Vec<f32>,
    pub(super) cache: Vec<f32>,
    pub(super) taps: Vec<f32>,
    pub(super) slots: Vec<AttnScratch>,
    /// The packed path's copy of a GEMM's input, tiled for its microkernel
    /// ([`packed::pack_len`]); empty on the portable path.
    pub(super) apack: Vec<f32>,
    /// ToMe: token sizes [batch, L] (and the merge's output), the unit key metric
    /// [batch, L, hd], one sample's matching [⌈L/2⌉].
    pub(super) sizes: Vec<f32>,
    pub(super) sizes2: Vec<f32>,
    pub(super) metric: Vec<f32>,
    node_max: Vec<f32>,
    node_idx: Vec<u32>,
    /// DynamicViT's keep decisions δ [batch, L] of the non-cls tokens; ATS's padding mask
    /// [batch, L] (1 = real token).
    pub(super) delta: Vec<f32>,
    pub(super) delta2: Vec<f32>,
    /// ATS without batch padding runs each image alone in this batch-1 workspace.
    pub(super) single: Option<Box<CpuWorkspace>>,
    /// The configuration and plan the buffers were sized for; [`forward`] refuses another.
    model: (super::VitConfig, crate::plan::SeqPlan),
    /// Per-phase times of every forward while set ([`CpuWorkspace::set_profile`]).
    pub(super) profile: Option<Profile>,
    /// The blocks' weights packed for [`packed::linear`] (CPUs with AVX-512 or AVX2 + FMA),
    /// with the ISA to run them on; shared with `single`.
    packed: Option<Arc<PackedVit>>,
    /// Top-K and EViT blocks on the packed path: attention for the surviving queries only
    /// ([`CpuWorkspace::set_pruned_attention`]).
    pruned_attention: bool,
}

/// One packed copy of every block's four weights, made with the workspace. A weight is used
/// packed only while the model's slice is the one it was packed from (same address and
/// length; else the forward uses the `gemm` crate on the slice): a model whose weights are
/// changed in place needs a new workspace.
struct PackedVit {
    /// qkv, proj, fc1, fc2 of each block.
    blocks: Vec<[PackedMat; 4]>,
    patch: PackedMat,
    /// The ISA the packed path runs on (the layouts are the same for each).
    isa: Isa,
}

impl PackedVit {
    fn new(m: &Vit, isa: Isa) -> Result<Self> {
        let c = &m.cfg;
        let (d, hm) = (c.embed_dim, c.mlp_hidden);
        let blocks = m
            .weights
            .blocks
            .iter()
            .map(|bw| {
                Ok([
                    PackedMat::new(&bw.qkv_w, 3 * d, d)?,
                    PackedMat::new(&bw.proj_w, d, d)?,
                    PackedMat::new(&bw.fc1_w, hm, d)?,
                    PackedMat::new(&bw.fc2_w, d, hm)?,
                ])
            })
            .collect::<Result<_>>()?;
        let kpatch = c.in_chans * c.patch_size * c.patch_size;
        Ok(PackedVit {
            blocks,
            patch: PackedMat::new(&m.weights.patch_w, d, kpatch)?,
            isa,
        })
    }
}

/// A packed weight and the ISA to run it on.
pub(super) type Packed<'a> = Option<(&'a PackedMat, Isa)>;

/// `pw` when it was packed from `w` [n, k] (else the forward takes the `gemm` crate).
fn usable<'a>(pw: Packed<'a>, w: &[f32], k: usize, n: usize) -> Packed<'a> {
    pw.filter(|(p, _)| p.is_for(w) && p.n == n && p.k == k)
}

/// out = epi(x[rows, k] · wᵀ + bias): packed when `pw` was packed from `w`, else the `gemm`
/// crate then the epilogue as a separate pass (through `tmp` for [`Epi::AddTo`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn dense(
    pw: Packed<'_>,
    w: &[f32],
    x: &[f32],
    rows: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    tmp: &mut [f32],
    ap: &mut [f32],
    epi: Epi<'_>,
) {
    if let Some((p, isa)) = usable(pw, w, k, n) {
        packed::linear(x, k, rows, p, bias, out, n, epi, ap, isa);
        return;
    }
    match epi {
        Epi::Store => linear(x, rows, k, w, n, bias, out, n),
        // GeluPacked is only asked for with both MLP weights packed (see the forward).
        Epi::Gelu | Epi::GeluPacked => {
            linear(x, rows, k, w, n, bias, out, n);
            out[..rows * n].par_chunks_mut(4096).for_each(gelu_inplace);
        }
        Epi::AddTo(ls) => {
            linear(x, rows, k, w, n, bias, tmp, n);
            residual(&mut out[..rows * n], &tmp[..rows * n], ls, n);
        }
    }
}

/// Attention scratch of one task. Portable path: q (scaled) [n, hd] and the n×n
/// probabilities in `a`. Packed path ([`attention_pair_packed`]): one panel of 32 queries
/// Qᵀ [hd][32] (`q`), K in tiles of 12 keys [⌈n/12⌉][hd][12] (`kp`), Vᵀ in tiles of 12 head
/// dims [⌈hd/12⌉][n][12] (`vp`), and Sᵀ [n][32] followed by Oᵀ [12⌈hd/12⌉][32] (`a`).
pub(super) struct AttnScratch {
    pub(super) q: Vec<f32>,
    pub(super) a: Vec<f32>,
    pub(super) kp: Vec<f32>,
    pub(super) vp: Vec<f32>,
    /// Packed path, Top-K and EViT reduction blocks ([`super::pruned_attention`]): a panel's
    /// query rows gathered [32][hd] (`qg`), and the dropped queries' weighted probabilities
    /// summed per lane [n][32] (`u`).
    pub(super) qg: Vec<f32>,
    pub(super) u: Vec<f32>,
}

impl CpuWorkspace {
    /// Top-K and EViT reduction blocks on the packed path compute the attention of the
    /// surviving queries only (on by default; see `src/vit/pruned_attention.rs`): cls and the
    /// kept tokens come out bit for bit as in the authors' order, EViT's fused token within
    /// rounding. Off runs the authors' order (every query, proj on every token, then the
    /// selection), for comparison.
    pub fn set_pruned_attention(&mut self, on: bool) {
        self.pruned_attention = on;
    }

    /// The batch this workspace was sized for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Profiles every following forward into `p` (phases per block; see [`Profile`]), or stops
    /// profiling with `None`. Off by default; off, a phase boundary costs one branch.
    pub fn set_profile(&mut self, p: Option<Profile>) {
        self.profile = p;
    }

    /// The profile so far, leaving profiling off.
    pub fn take_profile(&mut self) -> Option<Profile> {
        self.profile.take()
    }

    /// The profile so far, if profiling is on.
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    /// Sizes every buffer from the plan. Sizes are checked products and every buffer is
    /// allocated fallibly: a request the allocator refuses is [`Error::Alloc`], not an abort.
    ///
    /// The forward runs the packed path on the best ISA of this CPU ([`packed::detect`]:
    /// AVX-512, else AVX2 + FMA), else the portable one.
    pub fn new(m: &Vit, batch: usize) -> Result<Self> {
        match packed::detect() {
            Some(isa) => Self::new_packed(m, batch, isa),
            None => Self::new_portable(m, batch),
        }
    }

    /// A workspace for the packed path on `isa` (for comparisons and tests of one ISA on a
    /// CPU that has both); an error when this CPU lacks it.
    pub fn new_packed(m: &Vit, batch: usize, isa: Isa) -> Result<Self> {
        if !isa.supported() {
            return Err(crate::error::invalid(
                "isa",
                format!("{isa:?}"),
                "this CPU lacks it",
            ));
        }
        Self::with_packed(m, batch, Some(Arc::new(PackedVit::new(m, isa)?)))
    }

    /// A workspace for the portable path (the `gemm` crate and the n × n attention), which
    /// CPUs without AVX2 + FMA take: for comparisons and tests of that path on any CPU.
    pub fn new_portable(m: &Vit, batch: usize) -> Result<Self> {
        Self::with_packed(m, batch, None)
    }

    /// Whether this workspace runs the packed path.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// The ISA of the packed path, if this workspace runs it.
    pub fn isa(&self) -> Option<Isa> {
        self.packed.as_deref().map(|p| p.isa)
    }

    fn with_packed(m: &Vit, batch: usize, packed: Option<Arc<PackedVit>>) -> Result<Self> {
        if batch == 0 {
            return Err(crate::error::invalid("batch", 0, "must be positive"));
        }
        let c = &m.cfg;
        let l = m.plan.max_len;
        let d = c.embed_dim;
        let hd = c.head_dim();
        let mul = crate::error::mul;
        let zeros = |what, dims: &[usize]| -> Result<Vec<f32>> {
            crate::error::try_zeroed(what, mul(what, dims)?)
        };
        let ones = |what, dims: &[usize]| -> Result<Vec<f32>> {
            crate::error::try_filled(what, mul(what, dims)?, 1.0)
        };
        let nslots = batch
            .saturating_mul(c.num_heads)
            .clamp(1, rayon::current_num_threads().max(1));
        let kpatch = mul("patches", &[c.in_chans, c.patch_size, c.patch_size])?;
        // Rows rounded up to whole tiles of 12 (keys; head dims).
        let (lt, ht) = (
            l.div_ceil(packed::MR) * packed::MR,
            hd.div_ceil(packed::MR) * packed::MR,
        );
        let slots = (0..nslots)
            .map(|_| {
                Ok(if packed.is_some() {
                    AttnScratch {
                        q: zeros("attention scratch", &[hd, packed::NR])?,
                        a: zeros("attention scratch", &[l + ht, packed::NR])?,
                        kp: zeros("attention scratch", &[lt, hd])?,
                        vp: zeros("attention scratch", &[ht, l])?,
                        qg: zeros("attention scratch", &[packed::NR, hd])?,
                        u: zeros("attention scratch", &[l, packed::NR])?,
                    }
                } else {
                    AttnScratch {
                        q: zeros("attention scratch", &[l, hd])?,
                        a: zeros("attention scratch", &[l, l])?,
                        kp: Vec::new(),
                        vp: Vec::new(),
                        qg: Vec::new(),
                        u: Vec::new(),
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(CpuWorkspace {
            batch,
            x: zeros("x", &[batch, l, d])?,
            x2: zeros("x", &[batch, l, d])?,
            h: zeros("x", &[batch, l, d])?,
            qkv: zeros("qkv", &[batch, l, 3, d])?,
            attn: zeros("attn", &[batch, l, d])?,
            // Packed path: fc1's output tiled for fc2, whole tiles of 12 rows.
            mlp: zeros(
                "mlp",
                &[packed::pack_len(mul("mlp", &[batch, l])?, 1), c.mlp_hidden],
            )?,
            apack: if packed.is_some() {
                // Rows: the block GEMMs' b·l (≥ one image's patches, the patch embedding's).
                let k = d.max(c.mlp_hidden).max(kpatch);
                zeros(
                    "apack",
                    &[packed::pack_len(mul("apack", &[batch, l])?, 1), k],
                )?
            } else {
                Vec::new()
            },
            patches: zeros("patches", &[batch, c.num_patches(), kpatch])?,
            cls_probs: zeros("probs", &[batch, c.num_heads, l])?,
            scores: zeros("scores", &[batch, l])?,
            cache: zeros("cache", &[batch, m.plan.cache_cap.max(1), d])?,
            taps: zeros("taps", &[batch, d, m.plan.taps.max(1)])?,
            sizes: ones("sizes", &[batch, l])?,
            sizes2: ones("sizes", &[batch, l])?,
            metric: zeros("metric", &[batch, l, hd])?,
            delta: ones("delta", &[batch, l])?,
            delta2: ones("delta", &[batch, l])?,
            single: if m.cfg.reduction == Reduction::Ats
                && !m.cfg.method.ats_batch_padding
                && batch > 1
            {
                Some(Box::new(CpuWorkspace::with_packed(m, 1, packed.clone())?))
            } else {
                None
            },
            node_max: zeros("ToMe matching", &[l.div_ceil(2)])?,
            node_idx: crate::error::try_zeroed("ToMe matching", l.div_ceil(2))?,
            slots,
            model: (m.cfg.clone(), m.plan.clone()),
            profile: None,
            packed,
            pruned_attention: true,
        })
    }
}

/// "EViT, 64 px, depth 6, width 96" for messages.
fn model_summary(m: &Vit) -> String {
    let c = &m.cfg;
    format!(
        "{}, {} px, depth {}, width {}",
        c.reduction.name(),
        c.img_size,
        c.depth,
        c.embed_dim
    )
}

/// Runs the forward on `images` [batch, 3, H, W] (normalized), returning logits [batch, K] and,
/// when `trace` is set, the per-block tensors under the golden files' names.
pub fn forward(
    m: &Vit,
    ws: &mut CpuWorkspace,
    images: &[f32],
    trace: Option<&mut Trace>,
) -> Result<Vec<f32>> {
    if let Some(p) = ws.profile.as_mut() {
        p.begin();
    }
    forward_run(m, ws, images, trace)
}

/// [`forward`] without starting a profile run (ATS's per-image forwards are one run).
pub(super) fn forward_run(
    m: &Vit,
    ws: &mut CpuWorkspace,
    images: &[f32],
    trace: Option<&mut Trace>,
) -> Result<Vec<f32>> {
    let c = &m.cfg;
    let w = &m.weights;
    let b = ws.batch;
    let (d, img, ps, ch) = (c.embed_dim, c.img_size, c.patch_size, c.in_chans);
    if ws.model.0 != m.cfg || ws.model.1 != m.plan {
        return Err(Error::Shape {
            arg: "workspace",
            expected: format!("a workspace made for this model ({})", model_summary(m)),
            got: "a workspace made for another configuration".into(),
        });
    }
    crate::error::check_len(
        "images",
        images.len(),
        crate::error::mul("images", &[b, ch, img, img])?,
    )?;
    if let Some(one) = ws.single.as_deref_mut() {
        one.profile = ws.profile.take();
        let r = super::methods::per_image(m, one, images, b, trace);
        ws.profile = one.profile.take();
        return r;
    }
    let mut trace = trace;
    let p = c.num_patches();
    let gw = img / ps;
    let kpatch = ch * ps * ps;

    // 1. Patch embed: im2col in (c, ky, kx) order, then one GEMM.
    for bi in 0..b {
        for t in 0..p {
            let (row, col) = (t / gw, t % gw);
            let dst = &mut ws.patches[(bi * p + t) * kpatch..][..kpatch];
            for cc in 0..ch {
                for ky in 0..ps {
                    let src = ((bi * ch + cc) * img + row * ps + ky) * img + col * ps;
                    dst[(cc * ps + ky) * ps..][..ps].copy_from_slice(&images[src..src + ps]);
                }
            }
        }
    }
    let n0 = 1 + p + c.num_clr;
    // Patch tokens go to rows 1..1+P of each sample.
    let pk = ws.packed.clone();
    for bi in 0..b {
        let out = &mut ws.x[(bi * n0 + 1) * d..];
        dense(
            pk.as_deref().map(|pk| (&pk.patch, pk.isa)),
            &w.patch_w,
            &ws.patches[bi * p * kpatch..],
            p,
            kpatch,
            d,
            w.patch_b.as_deref(),
            out,
            &mut [],
            &mut ws.apack,
            Epi::Store,
        );
    }
    // 2. Tokens and positions.
    for bi in 0..b {
        let xs = &mut ws.x[bi * n0 * d..(bi + 1) * n0 * d];
        xs[..d].copy_from_slice(&w.cls_token);
        for j in 0..c.num_clr {
            xs[(1 + p + j) * d..][..d].copy_from_slice(&w.clr[j * d..][..d]);
        }
        if c.no_embed_class {
            for (v, pe) in xs[d..(1 + p) * d].iter_mut().zip(&w.pos_embed) {
                *v += pe;
            }
        } else {
            for (v, pe) in xs.iter_mut().zip(&w.pos_embed) {
                *v += pe;
            }
        }
    }
    let mut n = n0;
    // 3. norm_pre (CLIP).
    if let Some((g, be)) = &w.norm_pre {
        layer_norm(
            &ws.x[..b * n * d],
            d,
            g,
            be,
            c.ln_eps,
            &mut ws.h[..b * n * d],
        );
        ws.x[..b * n * d].copy_from_slice(&ws.h[..b * n * d]);
    }
    mark(&mut ws.profile, None, "patch embed");

    // 4. Blocks.
    let mut tap = 0;
    // ToMe: sizes exist from the first merge on (all ones before it).
    let mut have_sizes = false;
    let f = m.plan.taps.max(1);
    // Lengths are the plan's, except for ATS, where the plan holds upper bounds.
    let exact = !m.plan.data_dependent;
    // The GAP range's end (SPEC §2.3), tracked at run time for ATS.
    let mut pool_end = n0
        - if c.clc.is_some_and(|o| o.pool_clr) {
            0
        } else {
            c.num_clr
        };
    ws.delta[..b * n].iter_mut().for_each(|v| *v = 1.0);
    let mut masked = false;
    let mut rng = c
        .method
        .dpc_noise_seed
        .map(|s| super::random::Rng::new(s, 0xd9c));
    let locs = c.locs();
    for (i, bp) in m.plan.blocks.iter().enumerate() {
        if let Some(pre) = &bp.pre {
            let j = locs.iter().position(|&l| l == i).unwrap_or(0);
            n = super::methods::pre_reduce(m, ws, i, j, pre, rng.as_mut(), trace.as_deref_mut())?;
            mark(&mut ws.profile, Some(i), "reduction");
        }
        debug_assert!(if exact {
            n == bp.len_in
        } else {
            n <= bp.len_in
        });
        let bw = &w.blocks[i];
        // Block i's weight j (qkv, proj, fc1, fc2) packed, with the ISA.
        let pw = |j: usize| pk.as_deref().map(|pk| (&pk.blocks[i][j], pk.isa));
        if let Some(t) = trace.as_deref_mut() {
            t.push_f32(&format!("block_in.{i}"), &[b, n, d], &ws.x[..b * n * d]);
        }
        let rows = b * n;
        layer_norm(
            &ws.x[..rows * d],
            d,
            &bw.norm1.0,
            &bw.norm1.1,
            c.ln_eps,
            &mut ws.h[..rows * d],
        );
        mark(&mut ws.profile, Some(i), "ln1");
        dense(
            pw(0),
            &bw.qkv_w,
            &ws.h,
            rows,
            d,
            3 * d,
            bw.qkv_b.as_deref(),
            &mut ws.qkv,
            &mut [],
            &mut ws.apack,
            Epi::Store,
        );
        mark(&mut ws.profile, Some(i), "qkv");
        // Top-K and EViT: only the surviving queries' attention, when the packed path runs it.
        // (Top-K and EViT have no ToMe sizes, ATS mask or merge: the plan gives `keep` alone.)
        debug_assert!(
            bp.keep.is_none()
                || (bp.sample, bp.merge, have_sizes, masked) == (None, None, false, false)
        );
        let pruned = bp
            .keep
            .filter(|_| ws.pruned_attention && ws.isa().is_some());
        if let Some(k) = pruned {
            n = super::pruned_attention::attend_project_prune(
                m,
                ws,
                i,
                n,
                k,
                pw(1),
                trace.as_deref_mut(),
            )?;
        } else {
            attention(m, ws, n, have_sizes, masked)?;
            mark(&mut ws.profile, Some(i), "attention");
        }
        if let Some(k) = bp.sample {
            n = super::methods::ats_sample(m, ws, i, n, k, trace.as_deref_mut())?;
            masked = ws.delta[..b * n].contains(&0.0);
            mark(&mut ws.profile, Some(i), "reduction");
        }
        let rows = b * n;
        if pruned.is_none() {
            // proj, + bias, added into the stream (the residual), in one pass per tile.
            dense(
                pw(1),
                &bw.proj_w,
                &ws.attn,
                rows,
                d,
                d,
                Some(&bw.proj_b),
                &mut ws.x,
                &mut ws.h,
                &mut ws.apack,
                Epi::AddTo(bw.ls1.as_deref()),
            );
            mark(&mut ws.profile, Some(i), "proj+residual");
        }

        if let Some(r) = bp.merge {
            // ToMe (SPEC §4.3), with the reference ops of crate::cpu::tome; sizes are all ones
            // before the first merge.
            use crate::cpu::tome::{match_row, merge_into, metric_into, order_row};
            let hd = c.head_dim();
            let (na, _) = crate::ops::tome::split(n);
            let out_n = n - r;
            metric_into(
                &ws.qkv[..rows * 3 * d],
                rows,
                c.num_heads,
                hd,
                &mut ws.metric[..rows * hd],
            );
            // The trace's source map: every sample's unmerged tokens and matching.
            let mut traced = trace.is_some().then(|| (Vec::new(), Vec::new()));
            for bi in 0..b {
                match_row(
                    &ws.metric[bi * n * hd..(bi + 1) * n * hd],
                    n,
                    hd,
                    &mut ws.node_max[..na],
                    &mut ws.node_idx[..na],
                );
                let (_, unm, grouped, offsets) =
                    order_row(&ws.node_max[..na], &ws.node_idx[..na], n, r);
                if let Some((u, ni)) = traced.as_mut() {
                    u.extend_from_slice(&unm);
                    ni.extend_from_slice(&ws.node_idx[..na]);
                }
                merge_into(
                    &ws.x[bi * n * d..(bi + 1) * n * d],
                    have_sizes.then(|| &ws.sizes[bi * n..(bi + 1) * n]),
                    n,
                    d,
                    r,
                    &unm,
                    &grouped,
                    &offsets,
                    &mut ws.x2[bi * out_n * d..(bi + 1) * out_n * d],
                    &mut ws.sizes2[bi * out_n..(bi + 1) * out_n],
                );
            }
            if let (Some(t), Some((u, ni))) = (trace.as_deref_mut(), traced) {
                t.push_merge(i, b, n, r, &u, &ni);
            }
            std::mem::swap(&mut ws.x, &mut ws.x2);
            std::mem::swap(&mut ws.sizes, &mut ws.sizes2);
            have_sizes = true;
            n = out_n;
            mark(&mut ws.profile, Some(i), "reduction");
        }
        if let Some(k) = bp.keep.filter(|_| pruned.is_none()) {
            let (idx, compl) = select_tokens(ws, c.num_heads, n, k)?;
            let scores = &ws.scores[..b * (n - 1)];
            let evit = c.reduction == Reduction::EVit;
            let out_n = if evit { k + 2 } else { k + 1 };
            crate::cpu::prune::prune_into(
                &ws.x[..rows * d],
                b,
                n,
                d,
                &idx,
                k,
                evit.then_some((&compl[..], scores)),
                &mut ws.x2[..b * out_n * d],
            );
            if let Some(t) = trace.as_deref_mut() {
                t.push_selection(i, b, n, k, scores, &idx, evit.then_some(&compl[..]));
            }
            std::mem::swap(&mut ws.x, &mut ws.x2);
            n = out_n;
            mark(&mut ws.profile, Some(i), "reduction");
        }
        debug_assert!(if exact {
            n == bp.len_out
        } else {
            n <= bp.len_out
        });
        let rows = b * n;
        layer_norm(
            &ws.x[..rows * d],
            d,
            &bw.norm2.0,
            &bw.norm2.1,
            c.ln_eps,
            &mut ws.h[..rows * d],
        );
        mark(&mut ws.profile, Some(i), "ln2");
        let hm = c.mlp_hidden;
        let mlp_packed = (
            usable(pw(2), &bw.fc1_w, d, hm),
            usable(pw(3), &bw.fc2_w, hm, d),
        );
        if let (Some((p1, isa)), Some((p2, _))) = mlp_packed {
            // fc1 writes its output packed as fc2's input: no separate pack pass.
            packed::linear(
                &ws.h,
                d,
                rows,
                p1,
                Some(&bw.fc1_b),
                &mut ws.mlp,
                hm,
                Epi::GeluPacked,
                &mut ws.apack,
                isa,
            );
            mark(&mut ws.profile, Some(i), "fc1+gelu");
            packed::linear_prepacked(
                &ws.mlp,
                rows,
                p2,
                Some(&bw.fc2_b),
                &mut ws.x,
                d,
                Epi::AddTo(bw.ls2.as_deref()),
                isa,
            );
        } else {
            dense(
                pw(2),
                &bw.fc1_w,
                &ws.h,
                rows,
                d,
                hm,
                Some(&bw.fc1_b),
                &mut ws.mlp,
                &mut [],
                &mut ws.apack,
                Epi::Gelu,
            );
            mark(&mut ws.profile, Some(i), "fc1+gelu");
            dense(
                pw(3),
                &bw.fc2_w,
                &ws.mlp,
                rows,
                hm,
                d,
                Some(&bw.fc2_b),
                &mut ws.x,
                &mut ws.h,
                &mut ws.apack,
                Epi::AddTo(bw.ls2.as_deref()),
            );
        }
        mark(&mut ws.profile, Some(i), "fc2+residual");
        if let Some(t) = trace.as_deref_mut() {
            t.push_f32(&format!("block_out.{i}"), &[b, n, d], &ws.x[..rows * d]);
            if have_sizes {
                t.push_f32(&format!("token_size.{i}"), &[b, n, 1], &ws.sizes[..b * n]);
            }
        }

        // Cache: recover, then take carriers (SPEC §2.3 steps 3-4).
        if bp.recovered > 0 {
            let r = bp.recovered;
            let cap = m.plan.cache_cap.max(1);
            let nn = n + r;
            let copy = crate::cpu::token_cache::tokens_copy;
            copy(
                &ws.x[..b * n * d],
                n,
                0,
                &mut ws.x2[..b * nn * d],
                nn,
                0,
                b,
                n,
                d,
            )?;
            copy(&ws.cache, cap, 0, &mut ws.x2[..b * nn * d], nn, n, b, r, d)?;
            std::mem::swap(&mut ws.x, &mut ws.x2);
            pool_end = n;
            // Recovered tokens: DynamicViT decision 0 (eval), ATS mask true (SPEC §2.3).
            let fill = if c.reduction == Reduction::DynamicVit {
                0.0
            } else {
                1.0
            };
            super::methods::extend_rows(&mut ws.delta, &mut ws.delta2, b, n, nn, fill);
            if have_sizes {
                // Recovered tokens get size 1 (SPEC §2.3 step 3).
                for bi in (0..b).rev() {
                    ws.sizes2[bi * nn..bi * nn + n]
                        .copy_from_slice(&ws.sizes[bi * n..(bi + 1) * n]);
                    ws.sizes2[bi * nn + n..(bi + 1) * nn]
                        .iter_mut()
                        .for_each(|v| *v = 1.0);
                }
                std::mem::swap(&mut ws.sizes, &mut ws.sizes2);
            }
            n = nn;
        }
        debug_assert!(if exact {
            n == bp.len_after
        } else {
            n <= bp.len_after
        });
        if let Some(mut a) = m.carrier_args(bp, b, n) {
            a.pool = a.pool.start..pool_end;
            crate::cpu::token_cache::cache_take(&ws.x[..b * n * d], &mut ws.cache, &a)?;
        }
        if bp.cls_tap {
            for bi in 0..b {
                for cc in 0..d {
                    ws.taps[(bi * d + cc) * f + tap] = ws.x[bi * n * d + cc];
                }
            }
            tap += 1;
        }
        mark(&mut ws.profile, Some(i), "cache");
    }

    // 5. Head.
    let logits = match &w.head {
        HeadWeights::Linear { norm, w: hw, b: hb } => {
            let mut cls = vec![0f32; b * d];
            for bi in 0..b {
                layer_norm(
                    &ws.x[bi * n * d..][..d],
                    d,
                    &norm.0,
                    &norm.1,
                    c.ln_eps,
                    &mut cls[bi * d..(bi + 1) * d],
                );
            }
            if let Some(t) = trace.as_deref_mut() {
                t.push_f32("head_in", &[b, d], &cls);
            }
            let k = c.num_classes;
            let mut out = vec![0f32; b * k];
            linear(&cls, b, d, hw, k, Some(hb), &mut out, k);
            out
        }
        HeadWeights::Cla(head) => {
            if tap != head.input_dims().1 {
                return Err(Error::Plan(format!(
                    "the CLA head expects {} CLS taps, the plan gives {tap}",
                    head.input_dims().1
                )));
            }
            let z = &ws.taps[..b * d * f];
            if let Some(t) = trace.as_deref_mut() {
                t.push_f32("inter_cls", &[b, d, f], z);
            }
            head.forward_cpu(z, b)?
        }
    };
    mark(&mut ws.profile, None, "head");
    if let Some(t) = trace {
        t.push_f32("logits", &[b, c.num_classes], &logits);
    }
    Ok(logits)
}

/// Top-K and EViT's selection (SPEC §4.2): ws.scores [b, n−1] = the mean over the hh heads of
/// the cls-query probabilities of keys 1..n−1 (ws.cls_probs), then the top k of each row
/// (kept, descending) and the complement (ascending).
pub(super) fn select_tokens(
    ws: &mut CpuWorkspace,
    hh: usize,
    n: usize,
    k: usize,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let b = ws.batch;
    for bi in 0..b {
        for t in 1..n {
            let mut acc = 0f32;
            for h in 0..hh {
                acc += ws.cls_probs[(bi * hh + h) * n + t];
            }
            ws.scores[bi * (n - 1) + t - 1] = acc / hh as f32;
        }
    }
    crate::cpu::topk::topk_select(&ws.scores[..b * (n - 1)], b, n - 1, k)
}

/// x += ls ⊙ y (or x += y).
fn residual(x: &mut [f32], y: &[f32], ls: Option<&[f32]>, d: usize) {
    match ls {
        Some(g) => x
            .chunks_exact_mut(d)
            .zip(y.chunks_exact(d))
            .for_each(|(xr, yr)| {
                for c in 0..d {
                    xr[c] += g[c] * yr[c];
                }
            }),
        None => x.iter_mut().zip(y).for_each(|(a, v)| *a += v),
    }
}

/// Multi-head attention over ws.qkv [b·n, 3D] into ws.attn [b·n, D]; keeps every head's
/// cls-query probabilities in ws.cls_probs [b, H, n]. (q·scale)·kᵀ, softmax, ·v, per (b, h).
/// With `sizes` (ToMe's proportional attention), log(size of key t) is added to every logit
/// after the scaled product and before the softmax (SPEC §4.3).
///
/// With `masked` (ATS's batch padding), ws.delta holds the token mask [b, n]: a pair whose
/// query or key is masked gets the logit −f32::MAX before the softmax, as the authors'
/// `masked_fill(~mask, -finfo.max)`.
fn attention(m: &Vit, ws: &mut CpuWorkspace, n: usize, sizes: bool, masked: bool) -> Result<()> {
    let c = &m.cfg;
    let (b, hh, d) = (ws.batch, c.num_heads, c.embed_dim);
    let hd = c.head_dim();
    // The bounds the raw-pointer GEMMs below rely on (the workspace is this model's, checked
    // in `forward`; these keep the unsafe blocks sound whatever the caller did to `m`).
    let mul = crate::error::mul;
    let fits = |len: usize, dims: &[usize]| mul("attention", dims).is_ok_and(|need| len >= need);
    if hh == 0
        || hd * hh != d
        || !fits(ws.qkv.len(), &[b, n, 3, d])
        || !fits(ws.attn.len(), &[b, n, d])
        || !fits(ws.cls_probs.len(), &[b, hh, n])
        || (sizes && !fits(ws.sizes.len(), &[b, n]))
        || (masked && !fits(ws.delta.len(), &[b, n]))
        || ws.slots.iter().any(|s| {
            if ws.packed.is_some() {
                !s.packed_fits(n, hd)
            } else {
                !fits(s.q.len(), &[n, hd]) || !fits(s.a.len(), &[n, n])
            }
        })
    {
        return Err(Error::Shape {
            arg: "workspace",
            expected: format!("attention buffers for {b}×{n} tokens of width {d}"),
            got: "smaller buffers".into(),
        });
    }
    let dims = AttnDims::new(c, n);
    let scale = dims.scale;
    let qkv = &ws.qkv;
    let log_sizes: Option<&[f32]> = sizes.then_some(&ws.sizes[..b * n]);
    let mask: Option<&[f32]> = masked.then_some(&ws.delta[..b * n]);
    let attn = SendPtr(ws.attn.as_mut_ptr());
    let probs = SendPtr(ws.cls_probs.as_mut_ptr());
    let isa = ws.isa();
    for_each_pair(&mut ws.slots, b * hh, |scratch, pair| {
        let (attn, probs) = (attn, probs);
        if let Some(isa) = isa {
            // SAFETY: the CPU has `isa` (the workspace packs only then); the buffer bounds
            // were checked above, and pair (bi, h) alone writes probs[bi, h, ..n] and head
            // h's hd columns of rows bi·n .. (bi+1)·n of attn.
            unsafe {
                attention_pair_packed(
                    isa,
                    (&dims, pair, qkv, scratch, log_sizes, mask, attn, probs),
                )
            };
            return;
        }
        {
            let (bi, h) = (pair / hh, pair % hh);
            let base = bi * n * 3 * d;
            for t in 0..n {
                for j in 0..hd {
                    scratch.q[t * hd + j] = qkv[base + t * 3 * d + h * hd + j] * scale;
                }
            }
            let a = &mut scratch.a[..n * n];
            // SAFETY: q is n×hd (row stride hd); kᵀ reads k rows of qkv (column stride 3D);
            // a is n×n. All inside their buffers (checked at the top).
            unsafe {
                gemm::gemm(
                    n,
                    n,
                    hd,
                    a.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    scratch.q.as_ptr(),
                    1,
                    hd as isize,
                    qkv.as_ptr().add(base + d + h * hd),
                    (3 * d) as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            if let Some(sz) = log_sizes {
                let sb = &sz[bi * n..(bi + 1) * n];
                for row in a.chunks_exact_mut(n) {
                    for (v, s) in row.iter_mut().zip(sb) {
                        *v += s.ln();
                    }
                }
            }
            if let Some(mk) = mask {
                let mb = &mk[bi * n..(bi + 1) * n];
                for (q, row) in a.chunks_exact_mut(n).enumerate() {
                    for (v, &keep) in row.iter_mut().zip(mb) {
                        if mb[q] == 0.0 || keep == 0.0 {
                            *v = -f32::MAX;
                        }
                    }
                }
            }
            for row in a.chunks_exact_mut(n) {
                softmax(row);
            }
            // SAFETY: task (bi, h) alone writes probs[bi, h, 0..n] and the hd columns of head h
            // in rows bi·n .. (bi+1)·n of attn; v is read with row stride 3D.
            unsafe {
                std::ptr::copy_nonoverlapping(a.as_ptr(), probs.0.add((bi * hh + h) * n), n);
                gemm::gemm(
                    n,
                    hd,
                    n,
                    attn.0.add(bi * n * d + h * hd),
                    1,
                    d as isize,
                    false,
                    a.as_ptr(),
                    1,
                    n as isize,
                    qkv.as_ptr().add(base + 2 * d + h * hd),
                    1,
                    (3 * d) as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    });
    Ok(())
}

/// The attention's sizes: n tokens of width d, hh heads of hd, logits scaled by `scale`.
pub(super) struct AttnDims {
    pub(super) n: usize,
    pub(super) d: usize,
    pub(super) hh: usize,
    pub(super) hd: usize,
    pub(super) scale: f32,
}

impl AttnDims {
    /// The model's attention over n tokens, logits scaled by hd^−½.
    pub(super) fn new(c: &super::VitConfig, n: usize) -> Self {
        let hd = c.head_dim();
        AttnDims {
            n,
            d: c.embed_dim,
            hh: c.num_heads,
            hd,
            scale: (hd as f64).powf(-0.5) as f32,
        }
    }
}

impl AttnScratch {
    /// Whether the packed path's buffers (`q`, `a`, `kp`, `vp`) hold n tokens of head dim hd.
    pub(super) fn packed_fits(&self, n: usize, hd: usize) -> bool {
        let fits = |len: usize, dims: &[usize]| {
            crate::error::mul("attention", dims).is_ok_and(|need| len >= need)
        };
        let (nt, ht) = (
            n.div_ceil(packed::MR) * packed::MR,
            hd.div_ceil(packed::MR) * packed::MR,
        );
        fits(self.q.len(), &[hd, packed::NR])
            && fits(self.a.len(), &[n + ht, packed::NR])
            && fits(self.kp.len(), &[nt, hd])
            && fits(self.vp.len(), &[ht, n])
    }
}

/// f(scratch, pair) for the (image, head) pairs 0..pairs, one task per scratch slot. Pairs
/// are handed out one at a time from a shared counter, so a thread that the OS deschedules
/// (a shared machine) does not hold back a fixed share; each pair is computed whole by one
/// task, whichever, so results do not depend on the split.
pub(super) fn for_each_pair(
    slots: &mut [AttnScratch],
    pairs: usize,
    f: impl Fn(&mut AttnScratch, usize) + Sync + Send,
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    slots.par_iter_mut().for_each(|s| loop {
        let pair = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if pair >= pairs {
            break;
        }
        f(s, pair);
    });
}

/// One (image, head) pair of the packed path, 32 queries at a time, transposed so that the
/// softmax runs down columns (one vector per 16 queries, no horizontal reductions) and every
/// product is the GEMM microkernel on packed operands:
/// - Sᵀ [n keys][32 queries] = K · Qᵀ: K in tiles of 12 keys ([hd][12]), Qᵀ one panel
///   [hd][32] of (q·scale);
/// - the softmax down each column, Pᵀ left unnormalized (exp(s − max));
/// - Oᵀ [hd][32] = Vᵀ · Pᵀ: Vᵀ in tiles of 12 head dims ([n][12], a copy of 12 consecutive
///   values of each v row), Pᵀ read as the panel [n][32] it already is;
/// - O / Σ written into the head's columns of attn; the cls query's probabilities (query 0 of
///   panel 0) divided by its sum into probs.
///
/// Each output is one FMA chain over its k in order and each column sum runs over keys in
/// order, whatever the thread count. Rows of −inf/+inf/NaN maxima take libm's exp and are
/// normalized in place (the sum then reads 1), as [`crate::cpu::dense::softmax`].
///
/// # Safety
/// The CPU has `isa`; the buffers hold what [`attention`] checks; `attn` and `probs` point at ws.attn
/// and ws.cls_probs, of which this pair writes only its own region.
unsafe fn attention_pair_packed(isa: Isa, a: PairArgs<'_>) {
    match isa {
        Isa::Avx512 => attention_pair_avx512(a),
        Isa::Avx2 => attention_pair_avx2(a),
    }
}

/// The arguments of [`attention_pair_packed`] after the ISA: dims, pair, qkv, scratch, the
/// ToMe log sizes, the ATS mask, attn, probs.
type PairArgs<'a> = (
    &'a AttnDims,
    usize,
    &'a [f32],
    &'a mut AttnScratch,
    Option<&'a [f32]>,
    Option<&'a [f32]>,
    SendPtr,
    SendPtr,
);

/// [`attention_pair`] compiled for AVX-512 (the softmax vectorizes 16 wide).
///
/// # Safety
/// As [`attention_pair_packed`], on a CPU with AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn attention_pair_avx512(a: PairArgs<'_>) {
    attention_pair(Isa::Avx512, a)
}

/// [`attention_pair`] compiled for AVX2 + FMA.
///
/// # Safety
/// As [`attention_pair_packed`], on a CPU with AVX2 and FMA.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn attention_pair_avx2(a: PairArgs<'_>) {
    attention_pair(Isa::Avx2, a)
}

/// The body of [`attention_pair_packed`].
#[inline(always)]
unsafe fn attention_pair(isa: Isa, a: PairArgs<'_>) {
    let (g, pair, qkv, s, log_sizes, mask, attn, probs) = a;
    use packed::NR;
    let AttnDims { n, d, hh, hd, .. } = *g;
    let (bi, h) = (pair / hh, pair % hh);
    pack_kv(isa, g, bi, h, qkv, s);
    let sizes = log_sizes.map(|z| &z[bi * n..(bi + 1) * n]);
    let keep = mask.map(|z| &z[bi * n..(bi + 1) * n]);
    let qkv_p = qkv.as_ptr().add(bi * n * 3 * d);
    for q0 in (0..n).step_by(NR) {
        let qc = NR.min(n - q0);
        scores_panel(isa, g, s, qkv_p.add(q0 * 3 * d + h * hd), 3 * d, qc);
        let st = &mut s.a[..n * NR];
        if sizes.is_some() || keep.is_some() {
            for (t, srow) in st.chunks_exact_mut(NR).enumerate() {
                if let Some(z) = sizes {
                    let l = z[t].ln();
                    for v in srow.iter_mut() {
                        *v += l;
                    }
                }
                if let Some(k) = keep {
                    for (qi, v) in srow[..qc].iter_mut().enumerate() {
                        if k[t] == 0.0 || k[q0 + qi] == 0.0 {
                            *v = -f32::MAX;
                        }
                    }
                }
            }
        }
        let sums = softmax_columns(st);
        if q0 == 0 {
            let p0 = std::slice::from_raw_parts_mut(probs.0.add((bi * hh + h) * n), n);
            for (p, srow) in p0.iter_mut().zip(st.chunks_exact(NR)) {
                *p = srow[0] / sums[0];
            }
        }
        pv_panel(
            isa,
            g,
            s,
            qc,
            &sums,
            attn.0.add((bi * n + q0) * d + h * hd),
            d,
        );
    }
}

/// Packs pair (bi, h)'s keys as K tiles [⌈n/12⌉][hd][12] into `s.kp` and its values as Vᵀ
/// tiles [⌈hd/12⌉][n][12] into `s.vp`.
///
/// # Safety
/// The CPU has `isa`; qkv holds image bi's n rows of 3d; the scratch holds what
/// [`attention`] checks.
#[inline(always)]
pub(super) unsafe fn pack_kv(
    isa: Isa,
    g: &AttnDims,
    bi: usize,
    h: usize,
    qkv: &[f32],
    s: &mut AttnScratch,
) {
    use packed::MR;
    let AttnDims { n, d, hd, .. } = *g;
    let qkv_p = qkv.as_ptr().add(bi * n * 3 * d);
    for t0 in (0..n).step_by(MR) {
        // Keys t0.. as the tile [hd][12] of K.
        packed::pack_tile(
            isa,
            qkv_p.add(t0 * 3 * d + d + h * hd),
            3 * d,
            MR.min(n - t0),
            hd,
            s.kp.as_mut_ptr().add(t0 * hd),
        );
    }
    let (full, rest) = (hd / MR, hd % MR);
    for t in 0..n {
        // V row t → Vᵀ tile j/12 at [t][j%12]. Fixed-size copies: `copy_from_slice` of a
        // run of 12 was a memmove call each (n·⌈hd/12⌉ a pair), about 1 % of the forward.
        let row = &qkv[(bi * n + t) * 3 * d + 2 * d + h * hd..][..hd];
        let (chunks, tail) = row.as_chunks::<MR>();
        for (jt, ch) in chunks.iter().enumerate() {
            if let Some(dst) = s.vp[(jt * n + t) * MR..].first_chunk_mut::<MR>() {
                *dst = *ch;
            }
        }
        for (dst, &v) in s.vp[(full * n + t) * MR..][..rest].iter_mut().zip(tail) {
            *dst = v;
        }
    }
}

/// Sᵀ [n][32] = K · Qᵀ into the head of `s.a` for the panel of `qc` ≤ 32 queries whose rows
/// (hd values of this head) start at `q`, `q_rs` apart; the queries are scaled as they are
/// packed. Each logit is one FMA chain over the head dims in order, from 0.
///
/// # Safety
/// The CPU has `isa`; `pack_kv` has run for this pair; qc rows of hd values at q.
#[inline(always)]
pub(super) unsafe fn scores_panel(
    isa: Isa,
    g: &AttnDims,
    s: &mut AttnScratch,
    q: *const f32,
    q_rs: usize,
    qc: usize,
) {
    use packed::{MR, NR};
    let AttnDims { n, hd, scale, .. } = *g;
    packed::pack_panel(isa, q, q_rs, qc, hd, scale, s.q.as_mut_ptr());
    for t in 0..n.div_ceil(MR) {
        packed::micro_packed(
            isa,
            MR.min(n - t * MR),
            hd,
            s.kp.as_ptr().add(t * hd * MR),
            s.q.as_ptr(),
            s.a.as_mut_ptr().add(t * MR * NR),
        );
    }
}

/// Oᵀ = Vᵀ · Pᵀ for the panel in the head of `s.a` (after [`softmax_columns`]), then O / Σ
/// into `qc` rows of hd values at `y`, `y_rs` apart.
///
/// # Safety
/// The CPU has `isa`; `pack_kv` and `scores_panel` have run; qc rows of hd at y writable.
#[inline(always)]
pub(super) unsafe fn pv_panel(
    isa: Isa,
    g: &AttnDims,
    s: &mut AttnScratch,
    qc: usize,
    sums: &[f32; packed::NR],
    y: *mut f32,
    y_rs: usize,
) {
    use packed::{MR, NR};
    let AttnDims { n, hd, .. } = *g;
    let (st, ot) = s.a.split_at_mut(n * NR);
    for jt in 0..hd.div_ceil(MR) {
        packed::micro_packed(
            isa,
            MR.min(hd - jt * MR),
            n,
            s.vp.as_ptr().add(jt * n * MR),
            st.as_ptr(),
            ot.as_mut_ptr().add(jt * MR * NR),
        );
    }
    packed::unpack_panel(isa, ot.as_ptr(), qc, hd, sums, y, y_rs);
}

/// The softmax down each of the 32 columns of `st` [n][32], in place and unnormalized:
/// exp(s − max) with [`crate::cpu::dense::exp_neg_fma`], returning the column sums (summed over
/// rows in order). A column whose max is not finite (all −inf, or +inf/NaN) takes libm's exp
/// and is normalized here, its sum returned as 1.
#[inline(always)]
pub(super) fn softmax_columns(st: &mut [f32]) -> [f32; packed::NR] {
    const L: usize = packed::NR;
    let mut mx = [f32::NEG_INFINITY; L];
    for srow in st.chunks_exact(L) {
        for (m, &v) in mx.iter_mut().zip(srow) {
            *m = m.max(v);
        }
    }
    let mut sums = [0f32; L];
    if mx.iter().all(|m| m.is_finite()) {
        for srow in st.chunks_exact_mut(L) {
            for ((v, &m), s) in srow.iter_mut().zip(&mx).zip(sums.iter_mut()) {
                *v = crate::cpu::dense::exp_neg_fma(m - *v);
                *s += *v;
            }
        }
        return sums;
    }
    for srow in st.chunks_exact_mut(L) {
        for ((v, &m), s) in srow.iter_mut().zip(&mx).zip(sums.iter_mut()) {
            *v = if m.is_finite() {
                crate::cpu::dense::exp_neg_fma(m - *v)
            } else {
                (*v - m).exp()
            };
            *s += *v;
        }
    }
    for (l, &m) in mx.iter().enumerate() {
        if !m.is_finite() {
            for srow in st.chunks_exact_mut(L) {
                srow[l] /= sums[l];
            }
            sums[l] = 1.0;
        }
    }
    sums
}

impl Vit {
    /// Convenience: a workspace and one forward on the CPU.
    pub fn forward_cpu(
        &self,
        images: &[f32],
        batch: usize,
        trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        let mut ws = CpuWorkspace::new(self, batch)?;
        forward(self, &mut ws, images, trace)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The column softmax against the row softmax of each column: random logits, a column of
    /// all −inf (NaN, as 0/0), one holding +inf, one holding NaN, one with some −inf (finite
    /// max: those entries are exactly 0), one row (n = 1), and rows past 1024.
    #[test]
    fn softmax_columns_matches_row_softmax() {
        const L: usize = packed::NR;
        for n in [1usize, 7, 785, 1100] {
            let mut st: Vec<f32> = (0..n * L)
                .map(|i| ((i * 2_654_435_761usize % 1000) as f32 - 500.0) * 0.037)
                .collect();
            for t in 0..n {
                st[t * L + 3] = f32::NEG_INFINITY;
                if t % 3 == 0 {
                    st[t * L + 9] = f32::NEG_INFINITY;
                }
            }
            st[(n / 2) * L + 5] = f32::INFINITY;
            st[(n - 1) * L + 7] = f32::NAN;
            let cols: Vec<Vec<f32>> = (0..L)
                .map(|l| {
                    let mut c: Vec<f32> = (0..n).map(|t| st[t * L + l]).collect();
                    softmax(&mut c);
                    c
                })
                .collect();
            let sums = softmax_columns(&mut st);
            for (l, want) in cols.iter().enumerate() {
                for (t, &w) in want.iter().enumerate() {
                    let got = st[t * L + l] / sums[l];
                    assert!(
                        (got.is_nan() && w.is_nan())
                            || (got - w).abs() <= 2e-6 * w.abs().max(1e-30),
                        "n {n} column {l} row {t}: {got} vs {w}"
                    );
                }
            }
            assert!(cols[3][0].is_nan(), "all −inf is NaN");
            if n > 3 {
                assert_eq!(st[3 * L + 9], 0.0, "−inf under a finite max is exactly 0");
            }
        }
    }
}
