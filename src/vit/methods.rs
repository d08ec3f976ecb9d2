//! The CPU forward's steps for the reduction methods that act on the block input (DPC-KNN,
//! SiT, PatchMerger, DynamicViT) or sample inside the attention (ATS), SPEC §4.4–§4.8. Each
//! step reads the activations of `ws.x` [b, n, D] and leaves the reduced ones there.
use super::cpu::CpuWorkspace;
use super::weights::MethodWeights;
use super::{Trace, TraceData, Vit};
use crate::cpu::dense::{gelu_inplace, layer_norm, linear};
use crate::plan::PreReduce;
use crate::{Error, Result};

/// Runs a reduction before block `i` (the `j`-th reduction layer); returns the new length.
pub(crate) fn pre_reduce(
    m: &Vit,
    ws: &mut CpuWorkspace,
    i: usize,
    j: usize,
    pre: &PreReduce,
    mut rng: Option<&mut super::random::Rng>,
    trace: Option<&mut Trace>,
) -> Result<usize> {
    let (b, d) = (ws.batch, m.cfg.embed_dim);
    let n = pre.len_before;
    let k = pre.out;
    let out_n = 1 + k + pre.suffix;
    let nt = n - 1 - pre.suffix;
    let mut rec_f32: Vec<f32> = Vec::new();
    let mut rec_i64: Vec<i64> = Vec::new();
    let mut rec2_f32: Vec<f32> = Vec::new();
    let mut rec2_i64: Vec<i64> = Vec::new();
    for bi in 0..b {
        let xs = &ws.x[bi * n * d..(bi + 1) * n * d];
        let mid = &xs[d..(1 + nt) * d];
        let out = &mut ws.x2[bi * out_n * d..(bi + 1) * out_n * d];
        out[..d].copy_from_slice(&xs[..d]);
        out[(1 + k) * d..].copy_from_slice(&xs[(1 + nt) * d..]);
        let merged = &mut out[d..(1 + k) * d];
        match &m.weights.method {
            MethodWeights::Sit(layers) => {
                let lw = &layers[j];
                let hdim = lw.fc1.out;
                let mut y = vec![0f32; nt * d];
                layer_norm(mid, d, &lw.norm.0, &lw.norm.1, 1e-5, &mut y);
                let mut h = vec![0f32; nt * hdim];
                linear(&y, nt, d, &lw.fc1.w, hdim, Some(&lw.fc1.b), &mut h, hdim);
                gelu_inplace(&mut h);
                let mut logits = vec![0f32; nt * k];
                if k > 0 {
                    linear(&h, nt, hdim, &lw.fc2.w, k, Some(&lw.fc2.b), &mut logits, k);
                }
                let w =
                    crate::cpu::merge::softmax_merge(&logits, mid, 1, nt, k, d, lw.scale, merged)?;
                rec_f32.extend_from_slice(&w);
            }
            MethodWeights::PatchMerger(layers) => {
                let lw = &layers[j];
                let mut y = vec![0f32; nt * d];
                layer_norm(mid, d, &lw.norm.0, &lw.norm.1, 1e-5, &mut y);
                let mut sim = vec![0f32; nt * k];
                if k > 0 {
                    linear(&y, nt, d, &lw.queries, k, None, &mut sim, k);
                }
                let w = crate::cpu::merge::softmax_merge(&sim, &y, 1, nt, k, d, 1.0, merged)?;
                rec_f32.extend_from_slice(&w);
            }
            MethodWeights::DpcKnn(layers) => {
                let weight: Option<Vec<f32>> = layers[j].as_ref().map(|lw| {
                    let mut s = vec![0f32; nt];
                    linear(mid, nt, d, &lw.w, 1, Some(&lw.b), &mut s, 1);
                    s.iter().map(|v| v.exp()).collect()
                });
                let noise: Option<Vec<f32>> = rng
                    .as_deref_mut()
                    .map(|r| (0..nt).map(|_| r.uniform() as f32 * 1e-6).collect());
                let cl = crate::cpu::dpcknn::cluster(
                    mid,
                    nt,
                    d,
                    k,
                    m.cfg.method.k_neighbors,
                    noise.as_deref(),
                )?;
                crate::cpu::dpcknn::merge(
                    mid,
                    nt,
                    d,
                    &cl.idx_cluster,
                    k,
                    weight.as_deref(),
                    merged,
                );
                rec_f32.extend_from_slice(mid);
                rec2_f32.extend_from_slice(merged);
                rec_i64.extend(cl.idx_cluster.iter().map(|&v| v as i64));
                rec2_i64.extend(cl.centers.iter().map(|&v| v as i64));
            }
            MethodWeights::DynamicVit(layers) => {
                let delta = &ws.delta[bi * n + 1..(bi + 1) * n];
                let logp = crate::cpu::dyvit::predict(&layers[j], mid, nt, d, delta);
                let score: Vec<f32> = logp.chunks_exact(2).map(|r| r[0]).collect();
                let (keep, _) = crate::cpu::topk::topk_row(&score, k);
                rec_i64.extend(keep.iter().map(|&u| u as i64));
                for (o, &u) in keep.iter().enumerate() {
                    let u = u as usize;
                    merged[o * d..(o + 1) * d].copy_from_slice(&mid[u * d..(u + 1) * d]);
                    ws.delta2[bi * out_n + 1 + o] = delta[u];
                }
                ws.delta2[bi * out_n] = 1.0;
                rec_f32.extend_from_slice(&logp);
            }
            _ => {
                return Err(Error::Plan(format!(
                    "block {i}: a reduction before the block without its method's weights"
                )))
            }
        }
    }
    std::mem::swap(&mut ws.x, &mut ws.x2);
    if let MethodWeights::DynamicVit(_) = m.weights.method {
        std::mem::swap(&mut ws.delta, &mut ws.delta2);
    }
    if let Some(t) = trace {
        match &m.weights.method {
            MethodWeights::Sit(_) => t.push_f32(&format!("sit_assign.{i}"), &[b, k, nt], &rec_f32),
            MethodWeights::PatchMerger(_) => {
                t.push_f32(&format!("patchmerger_attn.{i}"), &[b, k, nt], &rec_f32)
            }
            MethodWeights::DynamicVit(_) => {
                t.push_f32(&format!("dyvit_pred_logprob.{i}"), &[b, nt, 2], &rec_f32);
                // Ours (not in the authors' trace): the kept tokens, in score order.
                t.push_i64(&format!("dyvit_keep_idx.{i}"), &[b, k], rec_i64);
            }
            _ => {
                t.push_f32(&format!("dpc_tokens_in.{i}"), &[b, nt, d], &rec_f32);
                t.push_f32(&format!("dpc_tokens_out.{i}"), &[b, k, d], &rec2_f32);
                t.push_i64(&format!("dpc_idx_cluster.{i}"), &[b, nt], rec_i64);
                t.push_i64(&format!("dpc_idx_centers.{i}"), &[b, k], rec2_i64);
            }
        }
    }
    Ok(out_n)
}

/// ATS in block `i` with sample count `k` (SPEC §4.7), after the attention: picks the
/// sampled query rows of `ws.attn` and the residual stream, pads the batch to its longest
/// sample with masked cls copies (the mask goes to `ws.delta`); returns the new length.
pub(crate) fn ats_sample(
    m: &Vit,
    ws: &mut CpuWorkspace,
    i: usize,
    n: usize,
    k: usize,
    trace: Option<&mut Trace>,
) -> Result<usize> {
    let c = &m.cfg;
    let (b, d, hh) = (ws.batch, c.embed_dim, c.num_heads);
    let steps: Vec<f32> = crate::plan::ats_steps(k).collect();
    let mut picks: Vec<Vec<u32>> = Vec::with_capacity(b);
    for bi in 0..b {
        let sig = crate::cpu::ats::significance(
            &ws.cls_probs[bi * hh * n..(bi + 1) * hh * n],
            &ws.qkv[bi * n * 3 * d..(bi + 1) * n * 3 * d],
            hh,
            n,
            d,
        );
        let mask: Vec<bool> = ws.delta[bi * n + 1..(bi + 1) * n]
            .iter()
            .map(|&v| v != 0.0)
            .collect();
        picks.push(crate::cpu::ats::sample(&sig, &mask, &steps));
    }
    let out_n = 1 + picks.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids: Vec<i64> = Vec::with_capacity(b * out_n);
    for (bi, pk) in picks.iter().enumerate() {
        for o in 0..out_n {
            // Slot 0 is cls; short samples are padded with cls copies, masked.
            let src = if o == 0 {
                0
            } else {
                pk.get(o - 1).map_or(0, |&t| t as usize)
            };
            ids.push(src as i64);
            let (from, to) = ((bi * n + src) * d, (bi * out_n + o) * d);
            ws.h[to..to + d].copy_from_slice(&ws.attn[from..from + d]);
            ws.x2[to..to + d].copy_from_slice(&ws.x[from..from + d]);
            ws.delta2[bi * out_n + o] = if o == 0 || o <= pk.len() { 1.0 } else { 0.0 };
        }
    }
    ws.attn[..b * out_n * d].copy_from_slice(&ws.h[..b * out_n * d]);
    std::mem::swap(&mut ws.x, &mut ws.x2);
    std::mem::swap(&mut ws.delta, &mut ws.delta2);
    if let Some(t) = trace {
        t.push_i64(&format!("sample_ids.{i}"), &[b, out_n], ids);
    }
    Ok(out_n)
}

/// Re-strides per-token rows [b, n] to [b, nn], filling the new tail with `fill`.
pub(crate) fn extend_rows(
    a: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
    b: usize,
    n: usize,
    nn: usize,
    fill: f32,
) {
    for bi in 0..b {
        tmp[bi * nn..bi * nn + n].copy_from_slice(&a[bi * n..(bi + 1) * n]);
        tmp[bi * nn + n..(bi + 1) * nn]
            .iter_mut()
            .for_each(|v| *v = fill);
    }
    std::mem::swap(a, tmp);
}

/// ATS without batch padding: each image runs alone, so its result does not depend on the
/// rest of its batch. Trace tensors are stacked along the batch when every image gives the
/// same shape, and kept per image (`name@img{b}`) otherwise.
pub(crate) fn per_image(
    m: &Vit,
    one: &mut CpuWorkspace,
    images: &[f32],
    b: usize,
    trace: Option<&mut Trace>,
) -> Result<Vec<f32>> {
    let c = &m.cfg;
    let per = c.in_chans * c.img_size * c.img_size;
    crate::error::check_len(
        "images",
        images.len(),
        crate::error::mul("images", &[b, per])?,
    )?;
    let mut logits = Vec::with_capacity(b * c.num_classes);
    let mut traces: Vec<Trace> = Vec::new();
    for bi in 0..b {
        let mut t = trace.is_some().then(Trace::default);
        logits.extend(super::cpu::forward_run(
            m,
            one,
            &images[bi * per..(bi + 1) * per],
            t.as_mut(),
        )?);
        traces.extend(t);
    }
    if let Some(out) = trace {
        stack_traces(traces, b, out);
    }
    Ok(logits)
}

/// Stacks per-image traces along the batch: tensors whose shapes agree across images become
/// one [b, …] tensor; the others are kept per image as `name@img{i}`.
pub(crate) fn stack_traces(mut traces: Vec<Trace>, b: usize, out: &mut Trace) {
    if traces.is_empty() {
        return;
    }
    let first = std::mem::take(&mut traces[0].tensors);
    for (idx, (name, shape, data)) in first.into_iter().enumerate() {
        let same = traces[1..].iter().all(|t| {
            t.tensors
                .get(idx)
                .is_some_and(|x| x.0 == name && x.1 == shape)
        });
        if same {
            let mut s = shape.clone();
            s[0] = b;
            let joined = match data {
                TraceData::F32(mut v) => {
                    for t in &traces[1..] {
                        if let TraceData::F32(w) = &t.tensors[idx].2 {
                            v.extend_from_slice(w);
                        }
                    }
                    TraceData::F32(v)
                }
                TraceData::I64(mut v) => {
                    for t in &traces[1..] {
                        if let TraceData::I64(w) = &t.tensors[idx].2 {
                            v.extend_from_slice(w);
                        }
                    }
                    TraceData::I64(v)
                }
            };
            out.tensors.push((name, s, joined));
        } else {
            out.tensors.push((format!("{name}@img0"), shape, data));
            for (bi, t) in traces[1..].iter().enumerate() {
                if let Some(x) = t.tensors.iter().find(|x| x.0 == name) {
                    out.tensors
                        .push((format!("{name}@img{}", bi + 1), x.1.clone(), x.2.clone()));
                }
            }
        }
    }
}
