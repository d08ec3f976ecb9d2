//! Reference of ATS's token sampling (SPEC §4.7, the authors' `AdaptiveTokenSampling`) for one
//! sample.
//!
//! Significance `s_t = Σ_h A[h, 0, t]·‖v[h, t]‖` for the non-cls tokens t = 1..n−1, normalized
//! by (Σ s + 1e-6), cumulated (f32, in order), + 0.1 where the token is masked. Each sample
//! point (`crate::plan::ats_steps`) picks the token whose CDF is nearest, by torch's cdist
//! (the matmul form `√max(p² + c² − 2pc, 0)` when either side has more than 25 entries, else
//! `|p − c|`), first index on ties. The result is the sorted unique token indices (1-based,
//! cls = 0 not included).

/// The significance `s[t−1] = Σ_h probs[h, t]·‖v[t, h]‖₂` for t = 1..n−1 of one sample, from
/// the cls-row probabilities `probs` [heads, n] and `qkv` [n, 3d] (v = the third d-block, head
/// h at `h·d/heads`); f32, the norm summed in channel order and the heads in order.
pub fn significance(probs: &[f32], qkv: &[f32], heads: usize, n: usize, d: usize) -> Vec<f32> {
    let hd = d / heads;
    (1..n)
        .map(|t| {
            let mut acc = 0f32;
            for h in 0..heads {
                let v = &qkv[t * 3 * d + 2 * d + h * hd..][..hd];
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                acc += probs[h * n + t] * norm;
            }
            acc
        })
        .collect()
}

/// The sampled tokens (sorted, unique, in 1..n) from the significance `sig` [n−1], the key
/// mask `mask` [n−1] (true = real token) and the sample points.
pub fn sample(sig: &[f32], mask: &[bool], steps: &[f32]) -> Vec<u32> {
    let n1 = sig.len();
    if n1 == 0 {
        return Vec::new();
    }
    let total: f32 = sig.iter().sum::<f32>() + 1e-6;
    let mut cdf = Vec::with_capacity(n1);
    let mut acc = 0f32;
    for (t, &s) in sig.iter().enumerate() {
        acc += s / total;
        cdf.push(if mask[t] { acc } else { acc + 0.1 });
    }
    let mm = steps.len() > 25 || n1 > 25;
    let mut picked: Vec<u32> = steps
        .iter()
        .map(|&p| {
            let dist = |c: f32| -> f32 {
                if mm {
                    // torch _euclidean_dist: [-2p, p², 1]·[c, 1, c²].
                    let v = (-2.0 * p) * c + p * p + c * c;
                    v.max(0.0).sqrt()
                } else {
                    (p - c).abs()
                }
            };
            let mut best = 0usize;
            let mut bd = dist(cdf[0]);
            for (t, &c) in cdf.iter().enumerate().skip(1) {
                let dt = dist(c);
                if dt < bd {
                    best = t;
                    bd = dt;
                }
            }
            best as u32 + 1
        })
        .collect();
    picked.sort_unstable();
    picked.dedup();
    picked
}
