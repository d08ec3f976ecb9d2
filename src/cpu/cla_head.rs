//! Reference cross-layer aggregation head (contract in `crate::ops::cla_head`).
use crate::ops::cla_head::{ClaConv, ClaLinear};
use crate::{Element, Result};

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf in f32 via f64 (std has no erf); correctly rounded for all practical purposes.
pub fn erf(x: f32) -> f32 {
    erf64(x as f64) as f32
}

/// erf(x) in f64: Maclaurin series below 2.5 (relative error ~1e-14 after cancellation), the
/// erfc continued fraction above (Abramowitz-Stegun 7.1.26 is too coarse for an oracle).
pub fn erf64(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // Maclaurin series: erf x = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum = 0.0;
        let mut term = ax;
        let x2 = ax * ax;
        let mut n = 0.0;
        loop {
            let t = term / (2.0 * n + 1.0);
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
            n += 1.0;
            term *= -x2 / n;
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if ax < 6.0 {
        // Continued fraction for erfc (Lentz), converges fast for x >= 2.5.
        let x2 = ax * ax;
        let mut f = ax;
        let tiny = 1e-300;
        let mut c = f;
        let mut d = 0.0;
        for i in 1..200 {
            let a = i as f64 / 2.0;
            d = ax + a * d;
            if d.abs() < tiny {
                d = tiny;
            }
            d = 1.0 / d;
            c = ax + a / c;
            if c.abs() < tiny {
                c = tiny;
            }
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-x2).exp() / (f * std::f64::consts::PI.sqrt());
        1.0 - erfc
    } else {
        1.0
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}

/// u[b, o] = GELU(bias[o] + Σ_l w[o, l]·z[b, o/g, l]) → [batch, g·d].
pub fn cla_grouped_gelu<T: Element>(z: &[T], batch: usize, head: &ClaConv) -> Result<Vec<T>> {
    let (d, f, g) = (head.d, head.f, head.g);
    crate::error::check_len("z", z.len(), crate::error::mul("z", &[batch, d, f])?)?;
    crate::error::check_len(
        "conv weight",
        head.weight.len(),
        crate::error::mul("g*d*f", &[g, d, f])?,
    )?;
    crate::error::check_len(
        "conv bias",
        head.bias.len(),
        crate::error::mul("g*d", &[g, d])?,
    )?;
    let mut u = Vec::with_capacity(batch * g * d);
    for b in 0..batch {
        for o in 0..g * d {
            let zc = &z[(b * d + o / g) * f..][..f];
            let mut acc = head.bias[o];
            for l in 0..f {
                acc += head.weight[o * f + l] * zc[l].to_f32();
            }
            u.push(T::from_f32(gelu(acc)));
        }
    }
    Ok(u)
}

/// v[c] = LN(relu(Σ_l w[l]·z[b, c, l] + b0)) over d → [batch, d].
pub fn cla_linear_ln<T: Element>(z: &[T], batch: usize, head: &ClaLinear) -> Result<Vec<T>> {
    let (d, f) = (head.d, head.f);
    crate::error::check_len("z", z.len(), crate::error::mul("z", &[batch, d, f])?)?;
    crate::error::check_len("ifa linear weight", head.w.len(), f)?;
    crate::error::check_len("ifa layernorm weight", head.gamma.len(), d)?;
    crate::error::check_len("ifa layernorm bias", head.beta.len(), d)?;
    let mut out = Vec::with_capacity(batch * d);
    for b in 0..batch {
        let v: Vec<f32> = (0..d)
            .map(|c| {
                let mut a = head.b0;
                for l in 0..f {
                    a += head.w[l] * z[(b * d + c) * f + l].to_f32();
                }
                a.max(0.0)
            })
            .collect();
        let mean = v.iter().sum::<f32>() / d as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / d as f32;
        let rstd = 1.0 / (var + head.eps).sqrt();
        for c in 0..d {
            out.push(T::from_f32(
                (v[c] - mean) * rstd * head.gamma[c] + head.beta[c],
            ));
        }
    }
    Ok(out)
}

/// y[m, o] = bias[o] + Σ_i x[m, i]·w[o, i] (nn.Linear layout).
pub fn linear<T: Element>(
    x: &[T],
    m: usize,
    k: usize,
    w: &[T],
    bias: Option<&[T]>,
    n_out: usize,
) -> Result<Vec<T>> {
    crate::ops::cla_head::check_linear(x.len(), w.len(), bias.map(<[T]>::len), m, k, n_out)?;
    let mut y = Vec::with_capacity(m * n_out);
    for r in 0..m {
        for o in 0..n_out {
            let mut acc = 0f32;
            for i in 0..k {
                acc += x[r * k + i].to_f32() * w[o * k + i].to_f32();
            }
            if let Some(b) = bias {
                acc += b[o].to_f32();
            }
            y.push(T::from_f32(acc));
        }
    }
    Ok(y)
}
