//! Reference CLS-attention scores (contract in `crate::ops::attn_score`).
use crate::ops::attn_score::{check_probs, check_qk};
use crate::{Element, Result};

/// Mean over heads of probs[b, h, 0, t], t = 1..n-1 → [batch, n-1] (sum in head order / H).
pub fn cls_attn_from_probs<T: Element>(
    probs: &[T],
    batch: usize,
    heads: usize,
    n: usize,
) -> Result<Vec<f32>> {
    check_probs(probs.len(), batch, heads, n)?;
    let mut out = vec![0f32; batch * (n - 1)];
    for b in 0..batch {
        for t in 1..n {
            let mut acc = 0f32;
            for h in 0..heads {
                acc += probs[((b * heads + h) * n) * n + t].to_f32();
            }
            out[b * (n - 1) + t - 1] = acc / heads as f32;
        }
    }
    Ok(out)
}

/// The same scores from q_cls [batch, heads, hd] and K [batch, heads, n, hd]:
/// softmax over all n keys of (q * scale) . k, per head, then the mean over heads.
pub fn cls_attn_from_qk<T: Element>(
    q: &[T],
    k: &[T],
    batch: usize,
    heads: usize,
    n: usize,
    hd: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    check_qk(q.len(), k.len(), batch, heads, n, hd)?;
    let mut out = vec![0f32; batch * (n - 1)];
    let mut logits = vec![0f32; n];
    for b in 0..batch {
        for h in 0..heads {
            let qs: Vec<f32> = (0..hd)
                .map(|d| q[(b * heads + h) * hd + d].to_f32() * scale)
                .collect();
            let kh = &k[(b * heads + h) * n * hd..][..n * hd];
            for t in 0..n {
                let mut l = 0f32;
                for d in 0..hd {
                    l += qs[d] * kh[t * hd + d].to_f32();
                }
                logits[t] = l;
            }
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = logits.iter().map(|&l| (l - m).exp()).sum();
            for t in 1..n {
                out[b * (n - 1) + t - 1] += (logits[t] - m).exp() / s;
            }
        }
        for t in 1..n {
            out[b * (n - 1) + t - 1] /= heads as f32;
        }
    }
    Ok(out)
}
