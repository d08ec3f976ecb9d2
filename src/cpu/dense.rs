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
    let wide = crate::cpu::packed::detect();
    let row = |(xr, yr): (&[f32], &mut [f32])| norm_row_wide(wide, xr, gamma, beta, eps, yr);
    // Rows are independent: the split does not change any result.
    if x.len() >= 1 << 16 {
        use rayon::prelude::*;
        x.par_chunks_exact(d)
            .zip(y.par_chunks_exact_mut(d))
            .with_min_len(16)
            .for_each(row);
    } else {
        x.chunks_exact(d).zip(y.chunks_exact_mut(d)).for_each(row);
    }
}

/// One row of [`layer_norm`].
#[inline(always)]
fn norm_row(xr: &[f32], gamma: &[f32], beta: &[f32], eps: f64, yr: &mut [f32]) {
    let d = xr.len();
    let mean = sum8(xr, |v| v as f64) / d as f64;
    let var = sum8(xr, |v| (v as f64 - mean) * (v as f64 - mean)) / d as f64;
    let rstd = (1.0 / (var + eps).sqrt()) as f32;
    let mean = mean as f32;
    for (((y, &x), &g), &b) in yr.iter_mut().zip(xr).zip(gamma).zip(beta) {
        *y = (x - mean) * rstd * g + b;
    }
}

crate::cpu::wide::widest!(
    /// [`norm_row`] at the widest vectors: the same operations in the same order at every
    /// width (no contraction into FMAs), so the same bits; AVX-512 converts and adds 8 f64 at a
    /// time where the x86-64 baseline does 2 (EViT + CLCA at batch 1: ln1 + ln2 5.1–6.7 →
    /// 3.2–5.0 ms a forward, interleaved runs on the 2-vCPU VM).
    fn norm_row_wide(xr: &[f32], gamma: &[f32], beta: &[f32], eps: f64, yr: &mut [f32]) => norm_row
);

/// Σ in f64 with 8 interleaved partial sums (element i into sum i mod 8, added in order at
/// the end): a fixed order, and 8 independent chains instead of one 4-cycle chain per element.
/// Written over chunks of 8 (not `i % 8`) so that it compiles to vector adds.
#[inline(always)]
fn sum8(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Exact (erf) GELU, as `nn.GELU()`.
pub fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU in place over a slice, for the forward's MLPs: erf from Abramowitz & Stegun 7.1.26
/// (|erf error| ≤ 1.5e-7) and a polynomial exp, with no libm call per element, so the loop
/// vectorizes. [`gelu`] (libm's `erff`) spends about 42 ns an element here, 1.2 s of GELU in a
/// plain 448 px ViT-B/16 forward; this one about 1.2 ns. Its largest deviation from the exact
/// erf GELU, measured over ±12 in `tests`: see `gelu_fast_matches_exact` (≤ 3e-7 absolute
/// plus 2e-7 relative), below f32's rounding of the MLP's own sums.
///
/// Compiled for the widest vectors the CPU has and spread over rayon's threads when long (the
/// reduction methods' MLPs call it on whole [n, hidden] buffers): the same operations per
/// element whatever the width or split (no FMA contraction), so the same bits.
pub fn gelu_inplace(v: &mut [f32]) {
    let wide = crate::cpu::packed::detect();
    let run = |v: &mut [f32]| gelu_wide(wide, v);
    if v.len() >= 1 << 15 {
        use rayon::prelude::*;
        v.par_chunks_mut(4096).for_each(run);
    } else {
        run(v);
    }
}

#[inline(always)]
fn gelu_each(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = gelu_fast(*x);
    }
}

crate::cpu::wide::widest!(
    /// [`gelu_each`] at the widest vectors.
    fn gelu_wide(v: &mut [f32]) => gelu_each
);

#[inline(always)]
pub(crate) fn gelu_fast(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    // erfc(|z|); 1 + erf(z) is 2 − erfc(|z|) for z ≥ 0 and erfc(|z|) for z < 0, which keeps
    // the small negative tail accurate.
    let erfc = poly * exp_neg(a * a);
    0.5 * x * if z >= 0.0 { 2.0 - erfc } else { erfc }
}

/// [`gelu_fast`] in fused multiply-adds (its erf polynomial and [`exp_neg_fma`]), for the
/// packed GEMM epilogue (compiled with FMA, AVX-512 or AVX2 + FMA, which therefore agree bit
/// for bit): fewer operations per element, the same accuracy bound (`tests`).
#[inline(always)]
pub(crate) fn gelu_fast_fma(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut poly: f32 = 1.061_405_4;
    for c in [-1.453_152, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        poly = poly.mul_add(t, c);
    }
    let erfc = poly * t * exp_neg_fma(a * a);
    0.5 * x * if z >= 0.0 { 2.0 - erfc } else { erfc }
}

/// exp(−y) for y ≥ 0 (0 from y > 87 on, where the result leaves f32's normal range): n = round(−y·log₂e) by the 1.5·2²³ trick,
/// r = −y − n·ln2 in two parts (Cody–Waite), e^r by its Taylor series to r⁷ (|r| ≤ ln2/2:
/// truncation < 2e-9 relative), times 2ⁿ built from the exponent bits.
#[inline(always)]
pub(crate) fn exp_neg(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    // NaN stays NaN (`min` would drop it).
    let u = if y.is_nan() { y } else { -(y.min(87.0)) };
    let n = (u * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = (u - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2ⁿ: n + 127 lands in the low mantissa bits of n + 127 + 2²³ (n ∈ [−126, 0]); shifted
    // into the exponent field. No float→int cast, so the loop stays vectorized.
    let v = p * f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    // Beyond 87 the result would be subnormal or 0: 0 (so exp(−inf) is exactly 0).
    if y > 87.0 {
        0.0
    } else {
        v
    }
}

/// [`exp_neg`] with its polynomial and range reduction in fused multiply-adds: half the
/// operations, and ≤ 1 ulp from it (one rounding per step instead of two). For code compiled
/// with FMA (the packed path, AVX-512 or AVX2 + FMA); elsewhere `mul_add` is a libm call.
#[inline(always)]
pub(crate) fn exp_neg_fma(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let u = if y.is_nan() { y } else { -(y.min(87.0)) };
    let n = u.mul_add(std::f32::consts::LOG2_E, MAGIC) - MAGIC;
    let r = n.mul_add(-1.428_606_8e-6, n.mul_add(-0.693_145_75, u));
    let mut p: f32 = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    let v = p * f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    if y > 87.0 {
        0.0
    } else {
        v
    }
}

/// Softmax of one row in place: exp(x − max) / Σ. The exponentials use [`exp_neg`] (within
/// 2 ulp of libm's, no call per element; the portable attention runs B·H·n² of them).
pub(crate) fn softmax(row: &mut [f32]) {
    // Max and sum over 16 interleaved lanes (element i in lane i mod 16), the lanes combined
    // in a fixed order: one vector chain instead of a 4-cycle dependency per element. The max
    // is exact in any order.
    const L: usize = 16;
    let mut mx = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for (a, &v) in mx.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    for (a, &v) in mx.iter_mut().zip(chunks.remainder()) {
        *a = a.max(v);
    }
    let m = mx.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        // All −inf (0/0 → NaN, as libm's exp would give), or a NaN/+inf present: the plain path.
        let mut s = 0f32;
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            s += *v;
        }
        for v in row.iter_mut() {
            *v /= s;
        }
        return;
    }
    for v in row.iter_mut() {
        *v = exp_neg(m - *v);
    }
    let mut acc = [0f32; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    // Lanes pairwise: (0+8, 1+9, …), then (0+4, …), (0+2, 1+3), 0+1.
    let mut w = L / 2;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    for v in row.iter_mut() {
        *v /= acc[0];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widened LayerNorm gives the baseline's bits (same operations, same order), on
    /// rows of widths around the vector lengths, with outliers and a zero-variance row.
    #[test]
    fn layer_norm_widths_agree_bit_for_bit() {
        let mut r = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            ((r >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        };
        for d in [1, 7, 8, 9, 15, 16, 17, 63, 768, 1000] {
            let rows = 5;
            let mut x: Vec<f32> = (0..rows * d).map(|_| next()).collect();
            x[0] = 3e4;
            x[d..2 * d].iter_mut().for_each(|v| *v = 1.25);
            let g: Vec<f32> = (0..d).map(|_| next()).collect();
            let b: Vec<f32> = (0..d).map(|_| next()).collect();
            let mut got = vec![0f32; rows * d];
            layer_norm(&x, d, &g, &b, 1e-6, &mut got);
            for i in 0..rows {
                let mut want = vec![0f32; d];
                norm_row(&x[i * d..(i + 1) * d], &g, &b, 1e-6, &mut want);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got[i * d..(i + 1) * d]), bits(&want), "d {d} row {i}");
            }
        }
        eprintln!("layer_norm runs {:?}", crate::cpu::packed::detect());
    }

    fn exact(x: f32) -> f64 {
        let x = x as f64;
        0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }

    /// `gelu` (in place over a slice) within 3e-7 + 2e-7·|exact| of the exact erf GELU over
    /// ±12 and a few far points, +inf kept, −inf to 0 (or NaN), NaN kept.
    fn check_gelu(name: &str, gelu: impl Fn(&mut [f32])) {
        let mut xs: Vec<f32> = (-120_000..=120_000).map(|i| i as f32 * 1e-4).collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 100.0, -100.0, 1e4, -1e4,
        ]);
        let mut ys = xs.clone();
        gelu(&mut ys);
        let mut worst = 0f64;
        for (&x, &y) in xs.iter().zip(&ys) {
            let e = exact(x);
            let err = (y as f64 - e).abs();
            worst = worst.max(err / (3e-7 + 2e-7 * e.abs()));
            assert!(err <= 3e-7 + 2e-7 * e.abs(), "{name}({x}) = {y}, exact {e}");
        }
        assert!(worst > 0.0);
        let mut inf = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        gelu(&mut inf);
        assert_eq!(inf[0], f32::INFINITY);
        assert!(
            inf[1] == 0.0 || inf[1].is_nan(),
            "{name}(-inf) = {}",
            inf[1]
        );
        assert!(inf[2].is_nan());
    }

    #[test]
    fn gelu_fast_fma_matches_exact() {
        check_gelu("gelu_fma", |v| {
            for x in v.iter_mut() {
                *x = gelu_fast_fma(*x);
            }
        });
    }

    #[test]
    fn gelu_fast_matches_exact() {
        check_gelu("gelu", gelu_inplace);
    }

    /// The wide, threaded pass is the scalar one bit for bit: a long buffer (split over
    /// threads) and a short one with a tail, ±0, ±inf, NaN, the ±87 clamp and subnormals.
    #[test]
    fn gelu_inplace_is_the_scalar_pass() {
        for len in [40_000usize, 37] {
            let v: Vec<f32> = (0..len)
                .map(|i| match i % 41 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    3 => -0.0,
                    4 => 1e-40,
                    5 => -200.0,
                    r => (r as f32 - 20.0) * 0.7 + (i % 7) as f32 * 1e-3,
                })
                .collect();
            let mut got = v.clone();
            gelu_inplace(&mut got);
            for (i, (&g, &x)) in got.iter().zip(&v).enumerate() {
                let w = std::hint::black_box(gelu_fast)(x);
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "[{i}] {x}"
                );
            }
        }
    }
}

#[cfg(test)]
mod softmax_tests {
    use super::*;

    #[test]
    fn softmax_matches_libm_within_rounding() {
        let mut row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect();
        row.push(f32::NEG_INFINITY);
        row.push(-f32::MAX);
        let mut want: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let m = want.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = want.iter().map(|v| (v - m).exp()).sum();
        want.iter_mut().for_each(|v| *v = (*v - m).exp() / s);
        softmax(&mut row);
        for (g, w) in row.iter().zip(&want) {
            // exp_neg is within 1e-7 relative of exp (measured over [0, 87]); the rest is the
            // f32 rounding of x − max and of the 1002-term sum.
            assert!((*g as f64 - w).abs() <= 4e-6 * w + 1e-30, "{g} vs {w}");
        }
        assert_eq!(row[1000], 0.0);
        assert_eq!(row[1001], 0.0);
        let mut nan = vec![1.0, f32::NAN, 2.0];
        softmax(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
        let mut ninf = vec![f32::NEG_INFINITY; 3];
        softmax(&mut ninf);
        assert!(ninf.iter().all(|v| v.is_nan()));
    }
}
