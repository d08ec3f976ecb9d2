//! Reference of DynamicViT's score predictor (SPEC §4.8, the authors' `PredictorLG`) for one
//! sample, in eval mode.
//!
//! h = GELU(Linear(LN₁e-5(x))); the first ⌊D/2⌋ channels stay per token, the rest are replaced
//! by their δ-weighted mean over the tokens (`Σ δ_u h_u / Σ δ_u`, then + 1e-6, as the authors
//! add it after the division); then Linear, GELU, Linear, GELU, Linear(→2), log-softmax.
//! All δ = 0 makes the mean 0/0 = NaN, as in the authors' code (it needs every surviving
//! token to be a recovered one).
use crate::cpu::dense::{gelu_inplace, layer_norm, linear};
use crate::vit::weights::PredictorWeights;

/// Log-probabilities [n, 2] (channel 0 = keep) of the tokens `x` [n, d] with decisions `delta`.
pub fn predict(p: &PredictorWeights, x: &[f32], n: usize, d: usize, delta: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; n * d];
    layer_norm(x, d, &p.norm.0, &p.norm.1, 1e-5, &mut y);
    let mut h = vec![0f32; n * d];
    linear(&y, n, d, &p.fc_in.w, d, Some(&p.fc_in.b), &mut h, d);
    gelu_inplace(&mut h);
    pool_global(&mut h, n, d, delta);
    let (d2, d4) = (p.fc0.out, p.fc2.out);
    let mut a = vec![0f32; n * d2];
    linear(&h, n, d, &p.fc0.w, d2, Some(&p.fc0.b), &mut a, d2);
    gelu_inplace(&mut a);
    let mut b = vec![0f32; n * d4];
    linear(&a, n, d2, &p.fc2.w, d4, Some(&p.fc2.b), &mut b, d4);
    gelu_inplace(&mut b);
    let mut o = vec![0f32; n * 2];
    linear(&b, n, d4, &p.fc4.w, 2, Some(&p.fc4.b), &mut o, 2);
    log_softmax2(&mut o);
    o
}

/// In place on `h` [n, d] with `delta` [n]: channels `[⌊d/2⌋, d)` of every token become the δ-weighted mean over
/// the tokens, `(Σ_u δ_u·h_u[c]) / (Σ_u δ_u) + 1e-6`, both sums in f32 in ascending u.
/// Σδ = 0 gives NaN (0/0), as the authors' code.
pub fn pool_global(h: &mut [f32], n: usize, d: usize, delta: &[f32]) {
    let half = d / 2;
    let mut g = vec![0f32; d - half];
    for (u, row) in h.chunks_exact(d).take(n).enumerate() {
        for (a, &v) in g.iter_mut().zip(&row[half..]) {
            *a += v * delta[u];
        }
    }
    let den: f32 = delta.iter().sum();
    g.iter_mut().for_each(|v| *v = *v / den + 1e-6);
    for row in h.chunks_exact_mut(d).take(n) {
        row[half..].copy_from_slice(&g);
    }
}

/// In place on rows of two logits: torch's `log_softmax`, `x − max − ln Σ exp(x − max)`.
pub fn log_softmax2(o: &mut [f32]) {
    for r in o.chunks_exact_mut(2) {
        let m = r[0].max(r[1]);
        let lse = ((r[0] - m).exp() + (r[1] - m).exp()).ln();
        r[0] = r[0] - m - lse;
        r[1] = r[1] - m - lse;
    }
}
