//! The device forward's reductions before the block (SPEC §4.4–§4.6, §4.8): DPC-KNN, SiT,
//! PatchMerger and DynamicViT. Their learned modules are small and their outputs are
//! selections or mixtures, so they run in f32 whatever the storage type (the residual stream is
//! f32 already); each layer has its own exact-size buffers, sized from the plan.
use super::*;
use crate::ops::token_cache::copy_launch;
use crate::plan::PreReduce;
use crate::vit::weights::MethodWeights;

/// One Linear in f32: weight [out, in], bias [out].
pub(super) struct Lin32<D: Device> {
    w: D::Buf<f32>,
    b: D::Buf<f32>,
    out: usize,
    inp: usize,
}

fn lin<D: Device>(dev: &D, l: &crate::vit::weights::Lin) -> Result<Lin32<D>> {
    Ok(Lin32 {
        w: dev.upload(&l.w)?,
        b: dev.upload(&l.b)?,
        out: l.out,
        inp: l.inp,
    })
}

impl<D: Device> Lin32<D> {
    /// y [rows, out] = act(x [rows, in] · wᵀ + b) in f32; act as [`bias_act_dt`].
    ///
    /// # Safety
    /// `x` holds rows·in and `y` rows·out f32.
    unsafe fn apply(&self, dev: &D, x: u64, rows: usize, y: u64, act: u32) -> Result<()> {
        // SAFETY: forwarded; the weights hold out·in and the bias out floats.
        unsafe {
            dev.gemm_nt(DType::F32, x, rows, self.inp, self.w.addr(), self.out, y)?;
            bias_act_dt(dev, DType::F32, y, rows, self.out, self.b.addr(), act)
        }
    }
}

/// SiT's module: LN, Linear(D→D/2), Linear(D/2→K), scale.
type SitDev<D> = (Norm<D>, Lin32<D>, Lin32<D>, f32);

/// A method's modules on the device, one entry per reduction layer.
pub(super) enum DevMethod<D: Device> {
    None,
    Sit(Vec<SitDev<D>>),
    PatchMerger(Vec<(Norm<D>, D::Buf<f32>)>),
    DynamicVit(Vec<(Norm<D>, [Lin32<D>; 4])>),
    DpcKnn(Vec<Option<Lin32<D>>>),
}

type Norm<D> = (<D as Device>::Buf<f32>, <D as Device>::Buf<f32>);

impl<D: Device> DevMethod<D> {
    pub(super) fn new(dev: &D, m: &MethodWeights) -> Result<Self> {
        let norm = |n: &(Vec<f32>, Vec<f32>)| -> Result<Norm<D>> {
            Ok((dev.upload(&n.0)?, dev.upload(&n.1)?))
        };
        Ok(match m {
            MethodWeights::None => DevMethod::None,
            MethodWeights::Sit(v) => DevMethod::Sit(
                v.iter()
                    .map(|l| {
                        Ok((
                            norm(&l.norm)?,
                            lin(dev, &l.fc1)?,
                            lin(dev, &l.fc2)?,
                            l.scale,
                        ))
                    })
                    .collect::<Result<_>>()?,
            ),
            MethodWeights::PatchMerger(v) => DevMethod::PatchMerger(
                v.iter()
                    .map(|l| Ok((norm(&l.norm)?, dev.upload(&l.queries)?)))
                    .collect::<Result<_>>()?,
            ),
            MethodWeights::DynamicVit(v) => DevMethod::DynamicVit(
                v.iter()
                    .map(|p| {
                        Ok((
                            norm(&p.norm)?,
                            [
                                lin(dev, &p.fc_in)?,
                                lin(dev, &p.fc0)?,
                                lin(dev, &p.fc2)?,
                                lin(dev, &p.fc4)?,
                            ],
                        ))
                    })
                    .collect::<Result<_>>()?,
            ),
            MethodWeights::DpcKnn(v) => DevMethod::DpcKnn(
                v.iter()
                    .map(|l| l.as_ref().map(|l| lin(dev, l)).transpose())
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

/// The buffers of one reduction before a block, for `batch` samples: `nt` tokens reduced to
/// `k` (exact sizes).
pub(super) struct PreBufs<D: Device> {
    mid: D::Buf<f32>,
    y: D::Buf<f32>,
    h: D::Buf<f32>,
    s: D::Buf<f32>,
    out: D::Buf<f32>,
    w: D::Buf<f32>,
    dy: Option<DyBufs<D>>,
    dpc: Option<DpcBufs<D>>,
}

struct DyBufs<D: Device> {
    a: D::Buf<f32>,
    c: D::Buf<f32>,
    lp: D::Buf<f32>,
    score: D::Buf<f32>,
    idx: D::Buf<u32>,
    compl: D::Buf<u32>,
    dmid: D::Buf<f32>,
}

struct DpcBufs<D: Device> {
    ws: crate::ops::dpcknn::DpcWorkspace<D>,
    idx_cluster: D::Buf<u32>,
    centers: D::Buf<u32>,
    weight: D::Buf<f32>,
    noise: Option<D::Buf<f32>>,
}

/// Buffers for every block that reduces before it (None elsewhere). DPC-KNN's noise is drawn
/// here, in the CPU forward's order, so both forwards add the same noise.
pub(super) fn pre_buffers<D: Device>(
    dev: &D,
    model: &Vit,
    batch: usize,
) -> Result<Vec<Option<PreBufs<D>>>> {
    let c = &model.cfg;
    let d = c.embed_dim;
    let mut rng = c
        .method
        .dpc_noise_seed
        .map(|s| crate::vit::random::Rng::new(s, 0xd9c));
    let z = |dims: &[usize]| -> Result<D::Buf<f32>> { dev.zeros(mul("method", dims)?) };
    model
        .plan
        .blocks
        .iter()
        .map(|bp| {
            let Some(pre) = &bp.pre else { return Ok(None) };
            let nt = pre.len_before - 1 - pre.suffix;
            let k = pre.out;
            let hidden = match c.reduction {
                Reduction::Sit => crate::vit::weights::sit_hidden(d),
                _ => d,
            };
            let dy = if c.reduction == Reduction::DynamicVit {
                Some(DyBufs {
                    a: z(&[batch, nt, d / 2])?,
                    c: z(&[batch, nt, d / 4])?,
                    lp: z(&[batch, nt, 2])?,
                    score: z(&[batch, nt])?,
                    idx: dev.zeros(mul("idx", &[batch, k])?)?,
                    compl: dev.zeros(mul("compl", &[batch, nt - k])?)?,
                    dmid: z(&[batch, nt])?,
                })
            } else {
                None
            };
            let dpc = if c.reduction == Reduction::DpcKnn {
                let noise = match rng.as_mut() {
                    Some(r) => {
                        let v: Vec<f32> =
                            (0..batch * nt).map(|_| r.uniform() as f32 * 1e-6).collect();
                        Some(dev.upload(&v)?)
                    }
                    None => None,
                };
                Some(DpcBufs {
                    ws: crate::ops::dpcknn::DpcWorkspace::new(dev, batch, nt, k)?,
                    idx_cluster: dev.zeros(mul("idx_cluster", &[batch, nt])?)?,
                    centers: dev.zeros(mul("centers", &[batch, k])?)?,
                    weight: z(&[batch, nt])?,
                    noise,
                })
            } else {
                None
            };
            Ok(Some(PreBufs {
                mid: z(&[batch, nt, d])?,
                y: z(&[batch, nt, d])?,
                h: z(&[batch, nt, hidden])?,
                s: z(&[batch, nt, k])?,
                out: z(&[batch, k, d])?,
                w: z(&[batch, k, nt])?,
                dy,
                dpc,
            }))
        })
        .collect()
}

fn to_i64(v: &[u32]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

impl<D: Device, T: Element> DeviceVit<D, T> {
    /// The reduction before block `i` (the `j`-th reduction layer) of `ws.x` [b, n, D] into
    /// `ws.x` [b, 1 + k + suffix, D]; returns the new length.
    ///
    /// # Safety
    /// `ws` was made by [`DeviceVit::workspace`] for this model.
    pub(super) unsafe fn pre_reduce(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        i: usize,
        j: usize,
        pre: &PreReduce,
        trace: Option<&mut Trace>,
    ) -> Result<usize> {
        let c = &self.model.cfg;
        let (b, d) = (ws.batch, c.embed_dim);
        let n = pre.len_before;
        let k = pre.out;
        let sfx = pre.suffix;
        let nt = n - 1 - sfx;
        let out_n = 1 + k + sfx;
        let f32t = DType::F32;
        let Some(pb) = ws.pre.get_mut(i).and_then(Option::as_mut) else {
            return Err(Error::Plan(format!(
                "block {i}: no buffers for the reduction before it"
            )));
        };
        // SAFETY (every launch): the buffers of `pb` were sized in `pre_buffers` for exactly
        // (batch, nt, k, d) of this block; x and x2 hold max_len ≥ n tokens per sample.
        unsafe {
            dev.launch(&copy_launch(
                f32t,
                ws.x.addr(),
                n,
                1,
                pb.mid.addr_mut(),
                nt,
                0,
                b,
                nt,
                d,
            )?)?;
            // SiT, PatchMerger and DynamicViT start with their own LayerNorm (nn.LayerNorm,
            // eps 1e-5) of the reduced tokens, into y.
            let norm = match &self.method {
                DevMethod::Sit(l) => Some(&l[j].0),
                DevMethod::PatchMerger(l) => Some(&l[j].0),
                DevMethod::DynamicVit(l) => Some(&l[j].0),
                _ => None,
            };
            if let Some((g, be)) = norm {
                self.layernorm_eps::<f32>(
                    dev,
                    pb.mid.addr(),
                    b * nt,
                    d,
                    d,
                    g,
                    be,
                    Some(1e-5),
                    pb.y.addr_mut(),
                )?;
            }
            let rows = b * nt;
            let mut gathered = false;
            match &self.method {
                DevMethod::Sit(layers) => {
                    let (_, fc1, fc2, scale) = &layers[j];
                    fc1.apply(dev, pb.y.addr(), rows, pb.h.addr_mut(), 1)?;
                    if k > 0 {
                        fc2.apply(dev, pb.h.addr(), rows, pb.s.addr_mut(), 0)?;
                        crate::ops::merge::softmax_merge::<D, f32>(
                            dev,
                            &pb.s,
                            &pb.mid,
                            b,
                            nt,
                            k,
                            d,
                            *scale,
                            &mut pb.out,
                            Some(&mut pb.w),
                        )?;
                    }
                }
                DevMethod::PatchMerger(layers) => {
                    let (_, q) = &layers[j];
                    if k > 0 {
                        dev.gemm_nt(f32t, pb.y.addr(), rows, d, q.addr(), k, pb.s.addr_mut())?;
                        crate::ops::merge::softmax_merge::<D, f32>(
                            dev,
                            &pb.s,
                            &pb.y,
                            b,
                            nt,
                            k,
                            d,
                            1.0,
                            &mut pb.out,
                            Some(&mut pb.w),
                        )?;
                    }
                }
                DevMethod::DynamicVit(layers) => {
                    let (_, [fin, f0, f2, f4]) = &layers[j];
                    let Some(dy) = pb.dy.as_mut() else {
                        return Err(Error::Plan("DynamicViT buffers missing".into()));
                    };
                    fin.apply(dev, pb.y.addr(), rows, pb.h.addr_mut(), 1)?;
                    // δ of the non-cls tokens, contiguous per sample.
                    dev.launch(&copy_launch(
                        f32t,
                        ws.delta.addr(),
                        n,
                        1,
                        dy.dmid.addr_mut(),
                        nt,
                        0,
                        b,
                        nt,
                        1,
                    )?)?;
                    crate::ops::dyvit::pool_global::<D, f32>(dev, &mut pb.h, &dy.dmid, b, nt, d)?;
                    f0.apply(dev, pb.h.addr(), rows, dy.a.addr_mut(), 1)?;
                    f2.apply(dev, dy.a.addr(), rows, dy.c.addr_mut(), 1)?;
                    f4.apply(dev, dy.c.addr(), rows, dy.lp.addr_mut(), 0)?;
                    crate::ops::dyvit::log_softmax2::<D, f32>(
                        dev,
                        &mut dy.lp,
                        b,
                        nt,
                        &mut dy.score,
                    )?;
                    if k > 0 {
                        crate::ops::topk::topk_select::<D, f32>(
                            dev,
                            &dy.score,
                            b,
                            nt,
                            k,
                            &mut dy.idx,
                            &mut dy.compl,
                        )?;
                        let mode = crate::ops::prune::PruneMode::TopK;
                        let g = |x: u64, dd: usize, out: u64| {
                            crate::ops::prune::gather_launch(
                                f32t,
                                mode,
                                x,
                                b,
                                n,
                                dd,
                                dy.idx.addr(),
                                k,
                                0,
                                0,
                                out,
                            )
                        };
                        dev.launch(&g(ws.x.addr(), d, ws.x2.addr_mut())?)?;
                        dev.launch(&g(ws.delta.addr(), 1, ws.delta2.addr_mut())?)?;
                    } else {
                        dev.launch(&copy_launch(
                            f32t,
                            ws.x.addr(),
                            n,
                            0,
                            ws.x2.addr_mut(),
                            1,
                            0,
                            b,
                            1,
                            d,
                        )?)?;
                        dev.launch(&copy_launch(
                            f32t,
                            ws.delta.addr(),
                            n,
                            0,
                            ws.delta2.addr_mut(),
                            1,
                            0,
                            b,
                            1,
                            1,
                        )?)?;
                    }
                    std::mem::swap(&mut ws.delta, &mut ws.delta2);
                    gathered = true;
                }
                DevMethod::DpcKnn(layers) => {
                    let Some(dp) = pb.dpc.as_mut() else {
                        return Err(Error::Plan("DPC-KNN buffers missing".into()));
                    };
                    if let Some(score) = &layers[j] {
                        // w = exp(score(x)), the authors' token weights.
                        score.apply(dev, pb.mid.addr(), rows, dp.weight.addr_mut(), 2)?;
                    }
                    crate::ops::dpcknn::cluster::<D, f32>(
                        dev,
                        &pb.mid,
                        b,
                        nt,
                        d,
                        k,
                        c.method.k_neighbors,
                        dp.noise.as_ref(),
                        &mut dp.ws,
                        &mut dp.idx_cluster,
                        &mut dp.centers,
                    )?;
                    let weight = layers[j].as_ref().map(|_| &dp.weight);
                    crate::ops::dpcknn::merge::<D, f32>(
                        dev,
                        &pb.mid,
                        b,
                        nt,
                        d,
                        &dp.idx_cluster,
                        k,
                        weight,
                        &mut pb.out,
                    )?;
                }
                DevMethod::None => {
                    return Err(Error::Plan(format!(
                        "block {i}: a reduction before the block without its method's weights"
                    )))
                }
            }
            if !gathered {
                // [cls, the k merged tokens, the protected suffix].
                dev.launch(&copy_launch(
                    f32t,
                    ws.x.addr(),
                    n,
                    0,
                    ws.x2.addr_mut(),
                    out_n,
                    0,
                    b,
                    1,
                    d,
                )?)?;
                if k > 0 {
                    dev.launch(&copy_launch(
                        f32t,
                        pb.out.addr(),
                        k,
                        0,
                        ws.x2.addr_mut(),
                        out_n,
                        1,
                        b,
                        k,
                        d,
                    )?)?;
                }
                if sfx > 0 {
                    dev.launch(&copy_launch(
                        f32t,
                        ws.x.addr(),
                        n,
                        1 + nt,
                        ws.x2.addr_mut(),
                        out_n,
                        1 + k,
                        b,
                        sfx,
                        d,
                    )?)?;
                }
            }
            std::mem::swap(&mut ws.x, &mut ws.x2);
        }
        if let Some(t) = trace {
            let pb = ws.pre[i]
                .as_ref()
                .ok_or_else(|| Error::Plan("buffers".into()))?;
            match &self.method {
                DevMethod::Sit(_) => t.push_f32(
                    &format!("sit_assign.{i}"),
                    &[b, k, nt],
                    &dev.download(&pb.w)?[..b * k * nt],
                ),
                DevMethod::PatchMerger(_) => t.push_f32(
                    &format!("patchmerger_attn.{i}"),
                    &[b, k, nt],
                    &dev.download(&pb.w)?[..b * k * nt],
                ),
                DevMethod::DynamicVit(_) => {
                    if let Some(dy) = &pb.dy {
                        t.push_f32(
                            &format!("dyvit_pred_logprob.{i}"),
                            &[b, nt, 2],
                            &dev.download(&dy.lp)?,
                        );
                        t.push_i64(
                            &format!("dyvit_keep_idx.{i}"),
                            &[b, k],
                            to_i64(&dev.download(&dy.idx)?),
                        );
                    }
                }
                DevMethod::DpcKnn(_) => {
                    if let Some(dp) = &pb.dpc {
                        t.push_f32(
                            &format!("dpc_tokens_in.{i}"),
                            &[b, nt, d],
                            &dev.download(&pb.mid)?,
                        );
                        t.push_f32(
                            &format!("dpc_tokens_out.{i}"),
                            &[b, k, d],
                            &dev.download(&pb.out)?[..b * k * d],
                        );
                        t.push_i64(
                            &format!("dpc_idx_cluster.{i}"),
                            &[b, nt],
                            to_i64(&dev.download(&dp.idx_cluster)?),
                        );
                        t.push_i64(
                            &format!("dpc_idx_centers.{i}"),
                            &[b, k],
                            to_i64(&dev.download(&dp.centers)?),
                        );
                    }
                }
                DevMethod::None => {}
            }
        }
        Ok(out_n)
    }
}

/// ATS's buffers at batch 1 (the device runs ATS one image at a time).
pub(super) struct AtsBufs<D: Device> {
    sig: D::Buf<f32>,
    cdf: D::Buf<f32>,
    ids: D::Buf<u32>,
    count: D::Buf<u32>,
}

pub(super) fn ats_buffers<D: Device>(dev: &D, model: &Vit) -> Result<Option<AtsBufs<D>>> {
    if model.cfg.reduction != Reduction::Ats {
        return Ok(None);
    }
    let l = model.plan.max_len;
    let points = model
        .plan
        .blocks
        .iter()
        .filter_map(|b| b.sample)
        .map(crate::plan::ats_points)
        .max()
        .unwrap_or(0);
    Ok(Some(AtsBufs {
        sig: dev.zeros(l)?,
        cdf: dev.zeros(l)?,
        ids: dev.zeros(points.max(1))?,
        count: dev.zeros(1)?,
    }))
}

impl<D: Device, T: Element> DeviceVit<D, T> {
    /// ATS in block `i` with sample count `k` at batch 1, after the attention (SPEC §4.7):
    /// significance and sampling on the device, then the sampled query rows of `ws.attn` (into
    /// `ws.mlp`) and of the residual stream. The sample count is the one value read back: the
    /// GEMMs that follow need the length. Returns the new length.
    ///
    /// # Safety
    /// `ws` was made by [`DeviceVit::workspace`] for this model at batch 1, and `ws.attn`,
    /// `ws.cls_probs` and `ws.qkv` hold block `i`'s attention over `n` tokens.
    pub(super) unsafe fn ats_sample(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        i: usize,
        n: usize,
        k: usize,
        trace: Option<&mut Trace>,
    ) -> Result<usize> {
        let c = &self.model.cfg;
        let d = c.embed_dim;
        if ws.batch != 1 {
            return Err(Error::Plan(
                "ATS runs one image at a time on the device".into(),
            ));
        }
        let Some(ab) = ws.ats.as_mut() else {
            return Err(Error::Plan("ATS buffers missing".into()));
        };
        if n < 2 {
            return Ok(n);
        }
        // SAFETY: sig and cdf hold max_len ≥ n floats, ids the most points of any layer, count
        // one; probs [1, H, n] and qkv [1, n, 3D] are this block's; x, x2 and mlp hold
        // max_len ≥ n tokens (mlp is wider than D).
        let picked = unsafe {
            dev.launch(&crate::ops::ats::significance_launch(
                T::DTYPE,
                ws.cls_probs.addr(),
                ws.qkv.addr(),
                1,
                c.num_heads,
                n,
                d,
                ab.sig.addr_mut(),
            )?)?;
            dev.launch(&crate::ops::ats::sample_launch(
                ab.sig.addr(),
                0,
                1,
                n,
                k,
                ab.cdf.addr_mut(),
                ab.ids.addr_mut(),
                ab.count.addr_mut(),
            )?)?;
            let picked = dev.download(&ab.count)?[0] as usize;
            if picked > crate::plan::ats_points(k) || picked > n - 1 {
                return Err(Error::Plan(format!(
                    "block {i}: ATS sampled {picked} tokens of {n}"
                )));
            }
            let out_n = 1 + picked;
            let cp = crate::ops::token_cache::copy_launch;
            let ga = crate::ops::token_cache::gather_launch;
            // [cls, sampled…] of the attention output (T, into mlp) and of the residual stream
            // (f32, into x2).
            let pairs = [
                (T::DTYPE, ws.attn.addr(), ws.mlp.addr_mut()),
                (DType::F32, ws.x.addr(), ws.x2.addr_mut()),
            ];
            for (dt, src, dst) in pairs {
                dev.launch(&cp(dt, src, n, 0, dst, out_n, 0, 1, 1, d)?)?;
                if picked > 0 {
                    let ids = ab.ids.addr();
                    dev.launch(&ga(dt, src, n, ids, 0, dst, out_n, 1, 1, picked, d)?)?;
                }
            }
            dev.launch(&cp(
                T::DTYPE,
                ws.mlp.addr(),
                out_n,
                0,
                ws.attn.addr_mut(),
                out_n,
                0,
                1,
                out_n,
                d,
            )?)?;
            std::mem::swap(&mut ws.x, &mut ws.x2);
            picked
        };
        if let Some(t) = trace {
            let ids = dev.download(&ab.ids)?;
            let mut v = vec![0i64];
            v.extend(ids[..picked].iter().map(|&x| x as i64));
            t.push_i64(&format!("sample_ids.{i}"), &[1, 1 + picked], v);
        }
        Ok(1 + picked)
    }

    /// ATS at batch > 1: each image runs alone in `single` (its result does not depend on the
    /// batch, as on the CPU forward); logits are copied into `ws.logits`.
    ///
    /// # Safety
    /// `ws` was made by [`DeviceVit::workspace`] for this model.
    pub(super) unsafe fn per_image(
        &self,
        dev: &D,
        ws: &mut DeviceWorkspace<D, T>,
        images: &D::Buf<f32>,
        trace: Option<&mut Trace>,
    ) -> Result<()> {
        let c = &self.model.cfg;
        let b = ws.batch;
        let per = c.in_chans * c.img_size * c.img_size;
        let k = c.num_classes;
        let (Some(one), Some(img1)) = (ws.single.as_deref_mut(), ws.img1.as_mut()) else {
            return Err(Error::Plan("per-image buffers missing".into()));
        };
        let mut traces = Vec::new();
        // A profile follows the images: each image's forward counts as one run.
        one.profile = ws.profile.take();
        for bi in 0..b {
            // SAFETY: images hold b·per floats (checked by `forward`), img1 per, the logits
            // b·k and one's logits k.
            unsafe {
                dev.launch(&copy_launch(
                    DType::F32,
                    images.addr(),
                    b,
                    bi,
                    img1.addr_mut(),
                    1,
                    0,
                    1,
                    1,
                    per,
                )?)?;
            }
            let mut t = trace.is_some().then(Trace::default);
            self.forward(dev, one, img1, t.as_mut())?;
            // SAFETY: as above.
            unsafe {
                dev.launch(&copy_launch(
                    T::DTYPE,
                    one.logits.addr(),
                    1,
                    0,
                    ws.logits.addr_mut(),
                    b,
                    bi,
                    1,
                    1,
                    k,
                )?)?;
            }
            traces.extend(t);
        }
        ws.profile = one.profile.take();
        if let Some(out) = trace {
            crate::vit::methods::stack_traces(traces, b, out);
        }
        Ok(())
    }
}
