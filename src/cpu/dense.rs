//! Dense f32 primitives of the CPU forward: GEMM (the `gemm` crate), LayerNorm, GELU, softmax.
//! Rows are independent, so results do not depend on the thread count.

/// y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n]), nn.Linear layout. `y` may have a row stride
/// (`y_rs` ≥ n) so callers can write into a wider buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    y_rs: usize,
) {
    assert!(
        x.len() >= m * k
            && w.len() >= n * k
            && y_rs >= n
            && (m == 0 || y.len() >= (m - 1) * y_rs + n),
        "linear: buffer sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    let par = if m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the strides describe x as m×k row-major, wᵀ as k×n (w is n×k row-major) and y as
    // m×n with row stride y_rs; the assert above keeps every access inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            y_rs as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    if let Some(b) = bias {
        for r in 0..m {
            for (o, bv) in y[r * y_rs..r * y_rs + n].iter_mut().zip(b) {
                *o += bv;
            }
        }
    }
}

/// LayerNorm over the last dim (`d`) of every row, in place-free form: y = LN(x).
/// Mean and variance accumulate in f64 (the biased variance, as torch).
pub(crate) fn layer_norm(
    x: &[f32],
    d: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    y: &mut [f32],
) {
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = xr
            .iter()
            .map(|&v| (v as f64 - mean) * (v as f64 - mean))
            .sum::<f64>()
            / d as f64;
        let rstd = (1.0 / (var + eps).sqrt()) as f32;
        let mean = mean as f32;
        for c in 0..d {
            yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
        }
    }
}

/// Exact (erf) GELU, as `nn.GELU()`.
pub fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// Softmax of one row in place: exp(x − max) / Σ.
pub(crate) fn softmax(row: &mut [f32]) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0f32;
    for v in row.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in row.iter_mut() {
        *v /= s;
    }
}
