//! Reference of DPC-KNN clustering and merging (SPEC §4.4, the authors' `cluster_dpc_knn` and
//! `merge_tokens`), one sample at a time.
//!
//! Rules (the kernels follow the same ones):
//! - Distances `d_uv = ‖x_u − x_v‖ / √D`. For m > 25 tokens torch's cdist uses the matmul form
//!   `√max(|u|² + |v|² − 2u·v, 0)` in f32, so the self-distance can be slightly above 0; we
//!   use that form too, the dot products by an f32 GEMM (summation order differs from
//!   torch's, so distances agree to f32 rounding, not bit for bit). For m ≤ 25 the direct
//!   form.
//! - Density `ρ_u = exp(−mean of the squared k smallest distances of row u)` (itself included),
//!   plus the optional noise.
//! - `δ_u = min {d_uv : ρ_v > ρ_u}`, or the largest distance of the sample when no token is
//!   denser.
//! - Centres: the K largest `δ·ρ`, in descending order, ties by lower index; cluster j is the
//!   j-th centre.
//! - Every token joins its nearest centre (first centre on ties); each centre its own cluster.
//! - Merge: `c = Σ x_u·w_u / (Σ w_u + 1e-6)` over the cluster, tokens in ascending order,
//!   written as torch does (`w_u / (Σw + 1e-6)` first, then the weighted sum).
//!
//! NaN policy: NaN inputs make NaN distances; comparisons with NaN are false, so NaN tokens
//! are never denser and never nearest; the result is then unspecified but never out of range.
use crate::Result;

/// The clustering of one sample: `(idx_cluster [m], centres [k])`.
pub struct Clusters {
    pub idx_cluster: Vec<u32>,
    pub centers: Vec<u32>,
}

/// The distance matrix [m, m] of `x` [m, d] (see the module rules).
pub fn distances(x: &[f32], m: usize, d: usize) -> Vec<f32> {
    let inv = (d as f64).sqrt() as f32;
    let mut out = vec![0f32; m * m];
    let row = |u: usize| &x[u * d..(u + 1) * d];
    if m > 25 {
        // torch: one f32 matmul of [−2x, |x|², 1]·[x, 1, |x|²]ᵀ. Here the Gram matrix by an f32
        // GEMM, then |u|² + |v|² − 2u·v.
        let norms: Vec<f32> = (0..m)
            .map(|u| row(u).iter().map(|&v| v * v).sum())
            .collect();
        crate::cpu::dense::linear(x, m, d, x, m, None, &mut out, m);
        for u in 0..m {
            for v in 0..m {
                let g = out[u * m + v];
                let sq = (norms[u] + norms[v] - 2.0 * g).max(0.0);
                out[u * m + v] = sq.sqrt() / inv;
            }
        }
    } else {
        for u in 0..m {
            for v in 0..m {
                let sq: f64 = row(u)
                    .iter()
                    .zip(row(v))
                    .map(|(&a, &b)| {
                        let t = a as f64 - b as f64;
                        t * t
                    })
                    .sum();
                out[u * m + v] = (sq as f32).sqrt() / inv;
            }
        }
    }
    out
}

/// Clusters `x` [m, d] into `k` clusters with `knn` neighbours for the density; `noise` [m]
/// is added to the densities when given.
pub fn cluster(
    x: &[f32],
    m: usize,
    d: usize,
    k: usize,
    knn: usize,
    noise: Option<&[f32]>,
) -> Result<Clusters> {
    crate::error::check_len("x", x.len(), crate::error::mul("x", &[m, d])?)?;
    if k == 0 || k > m || knn == 0 || knn > m {
        return Err(crate::error::invalid(
            "clusters",
            format!("k {k}, neighbours {knn}, tokens {m}"),
            "need 1 <= k <= m and 1 <= neighbours <= m",
        ));
    }
    if let Some(z) = noise {
        crate::error::check_len("noise", z.len(), m)?;
    }
    let dist = distances(x, m, d);
    let mut density = vec![0f32; m];
    let mut buf: Vec<f32> = Vec::with_capacity(m);
    for u in 0..m {
        buf.clear();
        buf.extend_from_slice(&dist[u * m..(u + 1) * m]);
        // The knn smallest, ascending (torch.topk(largest=False) order, which sets the sum's).
        buf.select_nth_unstable_by(knn - 1, |a, b| a.total_cmp(b));
        buf[..knn].sort_unstable_by(|a, b| a.total_cmp(b));
        let mean = buf[..knn].iter().map(|v| v * v).sum::<f32>() / knn as f32;
        density[u] = (-mean).exp() + noise.map_or(0.0, |z| z[u]);
    }
    cluster_from_density(&dist, &density, m, k)
}

/// The selection half of [`cluster`]: δ·ρ scores, the `k` centres and the assignment, from
/// the distances [m, m] and densities [m]. Public so that a GPU test can check the selection
/// given the GPU's densities (its `expf` may differ from the CPU's by an ulp, which can swap
/// tokens whose scores tie exactly on the CPU).
pub fn cluster_from_density(dist: &[f32], density: &[f32], m: usize, k: usize) -> Result<Clusters> {
    crate::error::check_len("dist", dist.len(), crate::error::mul("dist", &[m, m])?)?;
    crate::error::check_len("density", density.len(), m)?;
    if k == 0 || k > m {
        return Err(crate::error::invalid(
            "clusters",
            format!("k {k}, tokens {m}"),
            "need 1 <= k <= m",
        ));
    }
    let dmax = dist.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let score: Vec<f32> = (0..m)
        .map(|u| {
            let mut best = dmax;
            for v in 0..m {
                if density[v] > density[u] && dist[u * m + v] < best {
                    best = dist[u * m + v];
                }
            }
            best * density[u]
        })
        .collect();
    let (centers, _) = crate::cpu::topk::topk_row(&score, k);
    let mut idx_cluster = vec![0u32; m];
    for (t, c) in idx_cluster.iter_mut().enumerate() {
        let mut best = 0usize;
        for j in 1..k {
            if dist[centers[j] as usize * m + t] < dist[centers[best] as usize * m + t] {
                best = j;
            }
        }
        *c = best as u32;
    }
    for (j, &c) in centers.iter().enumerate() {
        idx_cluster[c as usize] = j as u32;
    }
    Ok(Clusters {
        idx_cluster,
        centers,
    })
}

/// Weighted merge of `x` [m, d] into `k` clusters; `weight` [m] (None = all 1). Returns the
/// normalized weight of every token (`w_u / (Σ_cluster w + 1e-6)`).
pub fn merge(
    x: &[f32],
    m: usize,
    d: usize,
    idx_cluster: &[u32],
    k: usize,
    weight: Option<&[f32]>,
    out: &mut [f32],
) -> Vec<f32> {
    let w = |u: usize| weight.map_or(1.0, |w| w[u]);
    let mut all = vec![0f32; k];
    for u in 0..m {
        all[idx_cluster[u] as usize] += w(u);
    }
    all.iter_mut().for_each(|a| *a += 1e-6);
    let norm: Vec<f32> = (0..m)
        .map(|u| w(u) / all[idx_cluster[u] as usize])
        .collect();
    out[..k * d].iter_mut().for_each(|v| *v = 0.0);
    for u in 0..m {
        let c = idx_cluster[u] as usize;
        for j in 0..d {
            out[c * d + j] += x[u * d + j] * norm[u];
        }
    }
    norm
}
