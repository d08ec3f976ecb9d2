//! Reference cross-layer aggregation head (contract in `crate::ops::cla_head`).
use crate::ops::cla_head::{ClaConv, ClaLinear};
use crate::{Element, Result};

use crate::cpu::dense::gelu;

/// erf(x) in f64 (libm's port of the FreeBSD erf, < 1 ulp): the oracle tests compare with.
pub fn erf64(x: f64) -> f64 {
    libm::erf(x)
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
