//! The cross-layer aggregation (CLA) head (SPEC §3).
//!
//! # Contract
//! Input `z` [batch, d, f]: the CLS taps in layer order (the authors' `inter_cls` layout).
//! - Default head (`ifa_dws_conv_groups` = g > 0): BN1(d) → grouped Conv1d(d → g·d, kernel f,
//!   groups d; output channel o reads input channel ⌊o/g⌋) → BN2(g·d) → GELU(erf) → Linear
//!   (g·d → K). Both BatchNorms are folded into the conv on the host, in f64
//!   ([`ClaConv::fold`]), so the device runs one grouped "linear over f" + GELU, then a GEMM.
//! - Linear head (g = 0): Linear(f → 1) over the layer axis → ReLU → LayerNorm(d, eps) →
//!   Linear(d → K).
//!
//! Logits [batch, K]. Folded parameters are f32; the final Linear is stored in the model dtype.
use super::check_buf;
use crate::kernels::{Arg, Launch};
use crate::{error, Buffer, Device, Element, Error, Result};

/// Eval-mode BatchNorm1d parameters.
#[derive(Clone, Debug)]
pub struct BatchNorm<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub running_mean: &'a [f32],
    pub running_var: &'a [f32],
    pub eps: f64,
}

impl BatchNorm<'_> {
    fn check(&self, name: &'static str, c: usize) -> Result<()> {
        for (arg, len) in [
            (name, self.weight.len()),
            (name, self.bias.len()),
            (name, self.running_mean.len()),
            (name, self.running_var.len()),
        ] {
            error::check_len(arg, len, c)?;
        }
        Ok(())
    }
    /// (scale, shift) with y = x·scale + shift.
    fn affine(&self, c: usize) -> (f64, f64) {
        let s = self.weight[c] as f64 / (self.running_var[c] as f64 + self.eps).sqrt();
        (s, self.bias[c] as f64 - self.running_mean[c] as f64 * s)
    }
}

/// The default head's grouped conv with both BatchNorms folded in: `weight` [g·d, f],
/// `bias` [g·d].
#[derive(Clone, Debug)]
pub struct ClaConv {
    pub d: usize,
    pub f: usize,
    pub g: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl ClaConv {
    /// Folds BN1 (d channels), the grouped conv (`conv_w` [g·d, 1, f], `conv_b` [g·d]) and BN2
    /// (g·d channels): W''[o,l] = W[o,l]·s1[o/g]·s2[o],
    /// b''[o] = (b[o] + Σ_l W[o,l]·t1[o/g])·s2[o] + t2[o].
    pub fn fold(
        bn1: &BatchNorm<'_>,
        conv_w: &[f32],
        conv_b: &[f32],
        bn2: &BatchNorm<'_>,
        d: usize,
        f: usize,
        g: usize,
    ) -> Result<Self> {
        if d == 0 || f == 0 || g == 0 {
            return Err(Error::InvalidArgument {
                arg: "d/f/g",
                value: format!("{d}/{f}/{g}"),
                why: "must be positive".into(),
            });
        }
        let gd = error::mul("g*d", &[g, d])?;
        bn1.check("bn1", d)?;
        bn2.check("bn2", gd)?;
        error::check_len("conv weight", conv_w.len(), error::mul("g*d*f", &[gd, f])?)?;
        error::check_len("conv bias", conv_b.len(), gd)?;
        let mut weight = Vec::with_capacity(gd * f);
        let mut bias = Vec::with_capacity(gd);
        for o in 0..gd {
            let (s1, t1) = bn1.affine(o / g);
            let (s2, t2) = bn2.affine(o);
            let mut b = conv_b[o] as f64;
            for l in 0..f {
                let w = conv_w[o * f + l] as f64;
                weight.push((w * s1 * s2) as f32);
                b += w * t1;
            }
            bias.push((b * s2 + t2) as f32);
        }
        Ok(ClaConv {
            d,
            f,
            g,
            weight,
            bias,
        })
    }
}

/// The linear head's parameters before the final Linear.
#[derive(Clone, Debug)]
pub struct ClaLinear {
    pub d: usize,
    pub f: usize,
    /// Linear(f → 1) weight [f] and bias.
    pub w: Vec<f32>,
    pub b0: f32,
    /// LayerNorm(d).
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

/// Either head variant plus the final Linear (`fc_w` [classes, in], `fc_b` [classes]).
#[derive(Clone, Debug)]
pub struct ClaHead {
    pub body: ClaBody,
    pub classes: usize,
    pub fc_w: Vec<f32>,
    pub fc_b: Vec<f32>,
}

/// The part before the final Linear.
#[derive(Clone, Debug)]
pub enum ClaBody {
    Conv(ClaConv),
    Linear(ClaLinear),
}

impl ClaHead {
    /// Width of the final Linear's input.
    pub fn hidden(&self) -> usize {
        match &self.body {
            ClaBody::Conv(c) => c.g * c.d,
            ClaBody::Linear(l) => l.d,
        }
    }
    /// (d, f) of the input z.
    pub fn input_dims(&self) -> (usize, usize) {
        match &self.body {
            ClaBody::Conv(c) => (c.d, c.f),
            ClaBody::Linear(l) => (l.d, l.f),
        }
    }
    /// Validates the parameter sizes.
    pub fn check(&self) -> Result<()> {
        if let ClaBody::Conv(c) = &self.body {
            error::check_len(
                "conv weight",
                c.weight.len(),
                error::mul("g*d*f", &[c.g, c.d, c.f])?,
            )?;
            error::check_len("conv bias", c.bias.len(), error::mul("g*d", &[c.g, c.d])?)?;
        }
        if let ClaBody::Linear(l) = &self.body {
            error::check_len("ifa linear weight", l.w.len(), l.f)?;
            error::check_len("ifa layernorm weight", l.gamma.len(), l.d)?;
            error::check_len("ifa layernorm bias", l.beta.len(), l.d)?;
        }
        error::check_len(
            "fc weight",
            self.fc_w.len(),
            error::mul("classes*hidden", &[self.classes, self.hidden()])?,
        )?;
        error::check_len("fc bias", self.fc_b.len(), self.classes)
    }

    /// Reference forward on the CPU: logits [batch, classes].
    pub fn forward_cpu<T: Element>(&self, z: &[T], batch: usize) -> Result<Vec<T>> {
        self.check()?;
        let h = match &self.body {
            ClaBody::Conv(c) => crate::cpu::cla_head::cla_grouped_gelu(z, batch, c)?,
            ClaBody::Linear(l) => crate::cpu::cla_head::cla_linear_ln(z, batch, l)?,
        };
        let w: Vec<T> = self.fc_w.iter().map(|&v| T::from_f32(v)).collect();
        let b: Vec<T> = self.fc_b.iter().map(|&v| T::from_f32(v)).collect();
        crate::cpu::cla_head::linear(&h, batch, self.hidden(), &w, Some(&b), self.classes)
    }
}

pub(crate) fn check_linear(
    x_len: usize,
    w_len: usize,
    b_len: Option<usize>,
    m: usize,
    k: usize,
    n_out: usize,
) -> Result<()> {
    for (what, v) in [("m", m), ("k", k), ("n_out", n_out)] {
        error::to_u32(what, v)?;
    }
    error::check_len("x", x_len, error::mul("m*k", &[m, k])?)?;
    error::check_len("w", w_len, error::mul("n_out*k", &[n_out, k])?)?;
    if let Some(b) = b_len {
        error::check_len("bias", b, n_out)?;
    }
    Ok(())
}

/// `y` [m, n_out] = x [m, k] · wᵀ (+ bias), w [n_out, k] (nn.Linear layout), f32 accumulation.
#[allow(clippy::too_many_arguments)]
pub fn linear<D: Device, T: Element>(
    dev: &D,
    x: &D::Buf<T>,
    m: usize,
    k: usize,
    w: &D::Buf<T>,
    bias: Option<&D::Buf<T>>,
    n_out: usize,
    y: &mut D::Buf<T>,
) -> Result<()> {
    check_linear(x.len(), w.len(), bias.map(|b| b.len()), m, k, n_out)?;
    check_buf("y", y, m * n_out)?;
    if m == 0 || n_out == 0 {
        return Ok(());
    }
    let l = linear_launch(
        T::DTYPE,
        x.addr(),
        m,
        k,
        w.addr(),
        bias.map(|b| b.addr()).unwrap_or(0),
        n_out,
        y.addr_mut(),
    )?;
    // SAFETY: x [m,k], w [n_out,k], bias [n_out] (or null), y [m,n_out] checked above.
    unsafe { dev.launch(&l) }
}

/// The launch of `linear_{dtype}` (bias 0 = none): 16×16 tiles over (n_out, m).
pub(crate) fn linear_launch(
    dtype: crate::DType,
    x: u64,
    m: usize,
    k: usize,
    w: u64,
    bias: u64,
    n_out: usize,
    y: u64,
) -> Result<Launch> {
    Launch::new(
        "cla_head",
        "linear",
        dtype,
        [
            error::to_u32("n_out", n_out.div_ceil(16))?,
            error::to_u32("m", m.div_ceil(16))?,
            1,
        ],
        [16, 16, 1],
        vec![
            Arg::Ptr(x),
            Arg::U32(error::to_u32("m", m)?),
            Arg::U32(error::to_u32("k", k)?),
            Arg::Ptr(w),
            Arg::Ptr(bias),
            Arg::U32(error::to_u32("n_out", n_out)?),
            Arg::Ptr(y),
        ],
    )
}

/// A [`ClaHead`] uploaded to a device.
pub struct DeviceClaHead<D: Device, T: Element> {
    head: ClaHead,
    w1: D::Buf<f32>,
    b1: D::Buf<f32>,
    gamma: D::Buf<f32>,
    beta: D::Buf<f32>,
    fc_w: D::Buf<T>,
    fc_b: D::Buf<T>,
}

impl<D: Device, T: Element> DeviceClaHead<D, T> {
    /// Uploads the (folded) parameters.
    pub fn new(dev: &D, head: &ClaHead) -> Result<Self> {
        head.check()?;
        let (w1, b1, gamma, beta) = match &head.body {
            ClaBody::Conv(c) => (
                dev.upload(&c.weight)?,
                dev.upload(&c.bias)?,
                dev.zeros(0)?,
                dev.zeros(0)?,
            ),
            ClaBody::Linear(l) => (
                dev.upload(&l.w)?,
                dev.zeros(0)?,
                dev.upload(&l.gamma)?,
                dev.upload(&l.beta)?,
            ),
        };
        let cvt = crate::dtype::from_f32_slice::<T>;
        Ok(DeviceClaHead {
            w1,
            b1,
            gamma,
            beta,
            fc_w: dev.upload(&cvt(&head.fc_w))?,
            fc_b: dev.upload(&cvt(&head.fc_b))?,
            head: head.clone(),
        })
    }

    /// Width of the hidden workspace per sample.
    pub fn hidden(&self) -> usize {
        self.head.hidden()
    }

    /// logits [batch, classes] from z [batch, d, f]; `hidden` is a workspace [batch, hidden()].
    pub fn forward(
        &self,
        dev: &D,
        z: &D::Buf<T>,
        batch: usize,
        hidden: &mut D::Buf<T>,
        logits: &mut D::Buf<T>,
    ) -> Result<()> {
        let (d, f) = self.head.input_dims();
        check_buf("z", z, error::mul("batch*d*f", &[batch, d, f])?)?;
        check_buf(
            "hidden",
            hidden,
            error::mul("batch*hidden", &[batch, self.hidden()])?,
        )?;
        check_buf(
            "logits",
            logits,
            error::mul("batch*classes", &[batch, self.head.classes])?,
        )?;
        if batch == 0 {
            return Ok(());
        }
        let by = error::to_u32("batch", batch)?;
        let l = match &self.head.body {
            ClaBody::Conv(c) => Launch::new(
                "cla_head",
                "cla_grouped_gelu",
                T::DTYPE,
                [error::to_u32("g*d", (c.g * c.d).div_ceil(256))?, by, 1],
                [256, 1, 1],
                vec![
                    Arg::Ptr(z.addr()),
                    Arg::U32(by),
                    Arg::U32(error::to_u32("d", c.d)?),
                    Arg::U32(error::to_u32("f", c.f)?),
                    Arg::U32(error::to_u32("g", c.g)?),
                    Arg::Ptr(self.w1.addr()),
                    Arg::Ptr(self.b1.addr()),
                    Arg::Ptr(hidden.addr_mut()),
                ],
            )?,
            ClaBody::Linear(lp) => Launch::new(
                "cla_head",
                "cla_linear_ln",
                T::DTYPE,
                [by.min(crate::kernels::ROW_GRID_CAP), 1, 1],
                [256, 1, 1],
                vec![
                    Arg::Ptr(z.addr()),
                    Arg::U32(by),
                    Arg::U32(error::to_u32("d", lp.d)?),
                    Arg::U32(error::to_u32("f", lp.f)?),
                    Arg::Ptr(self.w1.addr()),
                    Arg::F32(lp.b0),
                    Arg::Ptr(self.gamma.addr()),
                    Arg::Ptr(self.beta.addr()),
                    Arg::F32(lp.eps),
                    Arg::Ptr(hidden.addr_mut()),
                ],
            )?,
        };
        // SAFETY: z [batch,d,f] and hidden [batch,hidden] checked; the parameter buffers were
        // sized by ClaHead::check when uploaded.
        unsafe { dev.launch(&l)? };
        linear(
            dev,
            hidden,
            batch,
            self.hidden(),
            &self.fc_w,
            Some(&self.fc_b),
            self.head.classes,
            logits,
        )
    }
}
