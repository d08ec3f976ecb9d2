#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! CLA head: the BN folding against an unfolded f64 oracle, and the kernels against the CPU
//! reference (both variants, all dtypes).
mod common;
use clca::cpu::cla_head::erf64;
use clca::ops::cla_head::{linear, BatchNorm, ClaBody, ClaConv, ClaHead, ClaLinear, DeviceClaHead};
use clca::{bf16, cpu, f16, Device, Element};
use common::*;
use proptest::prelude::*;

struct Params {
    bn1: [Vec<f32>; 4],
    bn2: [Vec<f32>; 4],
    w: Vec<f32>,
    b: Vec<f32>,
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
}

fn bn_params(rng: &mut TRng, c: usize) -> [Vec<f32>; 4] {
    [
        (0..c).map(|_| (1.0 + 0.2 * rng.normal()) as f32).collect(),
        (0..c).map(|_| (0.1 * rng.normal()) as f32).collect(),
        (0..c).map(|_| (0.5 * rng.normal()) as f32).collect(),
        (0..c).map(|_| (0.5 + 1.5 * rng.uniform()) as f32).collect(),
    ]
}

fn bn(p: &[Vec<f32>; 4]) -> BatchNorm<'_> {
    BatchNorm {
        weight: &p[0],
        bias: &p[1],
        running_mean: &p[2],
        running_var: &p[3],
        eps: 1e-5,
    }
}

/// BN1 → grouped conv → BN2 → GELU → Linear, unfolded, in f64.
fn oracle(
    p: &Params,
    z: &[f64],
    batch: usize,
    d: usize,
    f: usize,
    g: usize,
    classes: usize,
) -> Vec<f64> {
    let bnf = |q: &[Vec<f32>; 4], c: usize, x: f64| {
        (x - q[2][c] as f64) / (q[3][c] as f64 + 1e-5).sqrt() * q[0][c] as f64 + q[1][c] as f64
    };
    let mut out = Vec::new();
    for b in 0..batch {
        let u: Vec<f64> = (0..g * d)
            .map(|o| {
                let ci = o / g;
                let mut a = p.b[o] as f64;
                for l in 0..f {
                    a += p.w[o * f + l] as f64 * bnf(&p.bn1, ci, z[(b * d + ci) * f + l]);
                }
                let y = bnf(&p.bn2, o, a);
                0.5 * y * (1.0 + erf64(y / std::f64::consts::SQRT_2))
            })
            .collect();
        for k in 0..classes {
            out.push(
                p.fc_b[k] as f64
                    + (0..g * d)
                        .map(|o| p.fc_w[k * g * d + o] as f64 * u[o])
                        .sum::<f64>(),
            );
        }
    }
    out
}

fn run<D: Device, T: Element>(
    dev: &D,
    batch: usize,
    d: usize,
    f: usize,
    g: usize,
    classes: usize,
    seed: u64,
) {
    let mut rng = TRng(seed);
    let gd = g * d;
    let p = Params {
        bn1: bn_params(&mut rng, d),
        bn2: bn_params(&mut rng, gd),
        w: (0..gd * f)
            .map(|_| (rng.normal() / (f as f64).sqrt()) as f32)
            .collect(),
        b: (0..gd).map(|_| (0.1 * rng.normal()) as f32).collect(),
        fc_w: (0..classes * gd)
            .map(|_| (rng.normal() / (gd as f64).sqrt()) as f32)
            .collect(),
        fc_b: (0..classes).map(|_| (0.1 * rng.normal()) as f32).collect(),
    };
    let z: Vec<T> = rng.normals(batch * d * f);
    let z64: Vec<f64> = z.iter().map(|v| v.to_f32() as f64).collect();
    let want = oracle(&p, &z64, batch, d, f, g, classes);
    let conv = ClaConv::fold(&bn(&p.bn1), &p.w, &p.b, &bn(&p.bn2), d, f, g).expect("fold");
    let head = ClaHead {
        body: ClaBody::Conv(conv),
        classes,
        fc_w: p.fc_w.clone(),
        fc_b: p.fc_b.clone(),
    };
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    // Reduced precision: the hidden layer and the weights are rounded to T.
    let (atol, _) = tol::<T>();
    let atol = atol * scale * 4.0;
    let cpu_out = head.forward_cpu(&z, batch).expect("cpu");
    assert_close("cpu CLA", &cpu_out, &want, atol.max(1e-5 * scale), 0.0);
    let dh = DeviceClaHead::<D, T>::new(dev, &head).expect("upload");
    let zb = up(dev, &z);
    let mut hidden = sentinel(dev, batch * dh.hidden(), T::from_f32(f32::NAN));
    let mut logits = sentinel(dev, batch * classes, T::from_f32(f32::NAN));
    dh.forward(dev, &zb, batch, &mut hidden, &mut logits)
        .expect("head");
    assert_close(
        "CLA",
        &down(dev, &logits),
        &want,
        atol.max(1e-5 * scale),
        0.0,
    );
}

fn run_linear_variant<D: Device, T: Element>(
    dev: &D,
    batch: usize,
    d: usize,
    f: usize,
    classes: usize,
    seed: u64,
) {
    let mut rng = TRng(seed);
    let lin = ClaLinear {
        d,
        f,
        w: (0..f).map(|_| rng.normal() as f32).collect(),
        b0: 0.1,
        gamma: (0..d).map(|_| (1.0 + 0.2 * rng.normal()) as f32).collect(),
        beta: (0..d).map(|_| (0.1 * rng.normal()) as f32).collect(),
        eps: 1e-5,
    };
    let fc_w: Vec<f32> = (0..classes * d)
        .map(|_| (rng.normal() / (d as f64).sqrt()) as f32)
        .collect();
    let fc_b: Vec<f32> = (0..classes).map(|_| (0.1 * rng.normal()) as f32).collect();
    let z: Vec<T> = rng.normals(batch * d * f);
    // f64 oracle
    let mut want = Vec::new();
    for b in 0..batch {
        let v: Vec<f64> = (0..d)
            .map(|c| {
                ((0..f)
                    .map(|l| lin.w[l] as f64 * z[(b * d + c) * f + l].to_f32() as f64)
                    .sum::<f64>()
                    + 0.1f32 as f64)
                    .max(0.0)
            })
            .collect();
        let mean = v.iter().sum::<f64>() / d as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d as f64;
        let y: Vec<f64> = (0..d)
            .map(|c| {
                (v[c] - mean) / (var + 1e-5f32 as f64).sqrt() * lin.gamma[c] as f64
                    + lin.beta[c] as f64
            })
            .collect();
        for k in 0..classes {
            want.push(fc_b[k] as f64 + (0..d).map(|c| fc_w[k * d + c] as f64 * y[c]).sum::<f64>());
        }
    }
    let head = ClaHead {
        body: ClaBody::Linear(lin),
        classes,
        fc_w,
        fc_b,
    };
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    let atol = (tol::<T>().0 * scale * 4.0).max(2e-5 * scale);
    assert_close(
        "cpu linear CLA",
        &head.forward_cpu(&z, batch).expect("cpu"),
        &want,
        atol,
        0.0,
    );
    let dh = DeviceClaHead::<D, T>::new(dev, &head).expect("upload");
    let zb = up(dev, &z);
    let mut hidden = dev.zeros::<T>(batch * d).expect("zeros");
    let mut logits = sentinel(dev, batch * classes, T::from_f32(f32::NAN));
    dh.forward(dev, &zb, batch, &mut hidden, &mut logits)
        .expect("head");
    assert_close("linear CLA", &down(dev, &logits), &want, atol, 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn shim_matches_oracle(batch in 1usize..4, d in prop_oneof![1usize..40, Just(96usize), Just(257)], f in 1usize..6, g in 1usize..4, classes in prop_oneof![1usize..20, Just(33usize)], seed in any::<u64>(), dt in 0u8..3) {
        match dt {
            0 => { run::<_, f32>(&clca::HostShim, batch, d, f, g, classes, seed); run_linear_variant::<_, f32>(&clca::HostShim, batch, d, f, classes, seed) }
            1 => { run::<_, f16>(&clca::HostShim, batch, d, f, g, classes, seed); run_linear_variant::<_, f16>(&clca::HostShim, batch, d, f, classes, seed) }
            _ => { run::<_, bf16>(&clca::HostShim, batch, d, f, g, classes, seed); run_linear_variant::<_, bf16>(&clca::HostShim, batch, d, f, classes, seed) }
        }
    }
}

fn paper<D: Device>(dev: &D) {
    run::<_, f32>(dev, 2, 768, 4, 2, 200, 1);
    run_linear_variant::<_, f32>(dev, 2, 768, 4, 200, 2);
}

#[test]
fn paper_shapes_all_devices() {
    on_devices!(paper);
}

#[test]
fn linear_kernel_matches_reference() {
    let dev = clca::HostShim;
    let mut rng = TRng(3);
    for &(m, k, n) in &[
        (1usize, 1usize, 1usize),
        (17, 33, 15),
        (3, 1536, 10),
        (40, 7, 65),
    ] {
        let x: Vec<f32> = rng.normals(m * k);
        let w: Vec<f32> = rng.normals(n * k);
        let b: Vec<f32> = rng.normals(n);
        let want: Vec<f64> = cpu::cla_head::linear(&x, m, k, &w, Some(&b), n)
            .expect("ref")
            .iter()
            .map(|&v| v as f64)
            .collect();
        let (xb, wb, bb) = (up(&dev, &x), up(&dev, &w), up(&dev, &b));
        let mut y = sentinel(&dev, m * n, f32::NAN);
        linear(&dev, &xb, m, k, &wb, Some(&bb), n, &mut y).expect("kernel");
        assert_close("linear", &down(&dev, &y), &want, 1e-5, 1e-5);
        linear(&dev, &xb, m, k, &wb, None, n, &mut y).expect("kernel without bias");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let bn1 = [vec![1f32; 4], vec![0f32; 4], vec![0f32; 4], vec![1f32; 4]];
    let bn2 = [vec![1f32; 8], vec![0f32; 8], vec![0f32; 8], vec![1f32; 7]];
    let e = ClaConv::fold(&bn(&bn1), &[0f32; 8 * 3], &[0f32; 8], &bn(&bn2), 4, 3, 2)
        .expect_err("short running_var");
    assert!(e.to_string().contains("bn2"), "{e}");
    let conv = ClaConv::fold(
        &bn(&bn1),
        &[0f32; 8 * 3],
        &[0f32; 8],
        &bn(&[vec![1f32; 8], vec![0f32; 8], vec![0f32; 8], vec![1f32; 8]]),
        4,
        3,
        2,
    )
    .expect("fold");
    let head = ClaHead {
        body: ClaBody::Conv(conv),
        classes: 3,
        fc_w: vec![0f32; 3 * 7],
        fc_b: vec![0f32; 3],
    };
    assert!(
        head.forward_cpu(&[0f32; 12], 1).is_err(),
        "fc weight of the wrong size"
    );
}
