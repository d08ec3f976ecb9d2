#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! DynamicViT's predictor pieces (δ-weighted pooling, 2-class log-softmax) against the CPU
//! reference pieces of `cpu::dyvit::predict` and an f64 oracle.
mod common;
use clca::ops::dyvit::{log_softmax2, pool_global};
use clca::{bf16, cpu, f16, Device, Element};
use common::*;
use proptest::prelude::*;

/// f64 oracle of the pooling of one sample `h` [n, d] (in place).
fn pool_oracle(h: &mut [f64], n: usize, d: usize, delta: &[f32]) {
    let half = d / 2;
    let den: f64 = delta.iter().map(|&x| x as f64).sum();
    for c in half..d {
        let s: f64 = (0..n).map(|u| delta[u] as f64 * h[u * d + c]).sum();
        for u in 0..n {
            h[u * d + c] = s / den + 1e-6;
        }
    }
}

/// δ per token: 1 (kept), 0 (recovered), or a fraction; `zeros` makes them all 0.
fn deltas(rng: &mut TRng, len: usize, zeros: bool) -> Vec<f32> {
    (0..len)
        .map(|_| match (zeros, rng.below(3)) {
            (true, _) => 0.0,
            (_, 0) => 0.0,
            (_, 1) => 1.0,
            _ => rng.uniform() as f32,
        })
        .collect()
}

fn run_pool<D: Device, T: Element>(dev: &D, b: usize, n: usize, d: usize, zeros: bool, seed: u64) {
    let mut rng = TRng(seed);
    let h: Vec<T> = rng.normals(b * n * d);
    let mut delta = deltas(&mut rng, b * n, zeros);
    if !zeros {
        // Σδ > 0 in every sample (the NaN case is its own test).
        for bi in 0..b {
            delta[bi * n] = 1.0;
        }
    }
    let hf: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
    let mut want: Vec<f64> = hf.iter().map(|&x| x as f64).collect();
    let mut refr = hf.clone();
    for bi in 0..b {
        let dl = &delta[bi * n..(bi + 1) * n];
        pool_oracle(&mut want[bi * n * d..(bi + 1) * n * d], n, d, dl);
        cpu::dyvit::pool_global(&mut refr[bi * n * d..(bi + 1) * n * d], n, d, dl);
    }
    assert_close("cpu pool", &refr, &want, 1e-5, 1e-5);

    let mut hb = up(dev, &h);
    let db = up(dev, &delta);
    pool_global(dev, &mut hb, &db, b, n, d).expect("kernel");
    let got = down(dev, &hb);
    let (atol, rtol) = tol::<T>();
    assert_close("pool", &got, &want, atol, rtol);
    // The local half is untouched, bit for bit.
    for (i, (g, x)) in got.iter().zip(&h).enumerate() {
        if i % d < d / 2 {
            assert_eq!(g.to_f32().to_bits(), x.to_f32().to_bits(), "local [{i}]");
        }
    }
    if zeros {
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.to_f32().is_nan(), i % d >= d / 2, "Σδ = 0 → NaN at [{i}]");
        }
    }
}

fn run_lsm<D: Device, T: Element>(dev: &D, b: usize, n: usize, spread: f32, seed: u64) {
    let mut rng = TRng(seed);
    let x: Vec<T> = (0..b * n * 2)
        .map(|_| T::from_f32(spread * rng.normal() as f32))
        .collect();
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let want: Vec<f64> = xf
        .chunks_exact(2)
        .flat_map(|r| {
            let (a, c) = (r[0] as f64, r[1] as f64);
            let m = a.max(c);
            let lse = ((a - m).exp() + (c - m).exp()).ln();
            [a - m - lse, c - m - lse]
        })
        .collect();
    let mut refr = xf.clone();
    cpu::dyvit::log_softmax2(&mut refr);
    assert_close("cpu log_softmax", &refr, &want, 1e-5, 1e-5);

    let mut xb = up(dev, &x);
    let mut score = sentinel(dev, b * n, f32::NAN);
    log_softmax2(dev, &mut xb, b, n, &mut score).expect("kernel");
    let (atol, rtol) = tol::<T>();
    assert_close("log_softmax", &down(dev, &xb), &want, atol, rtol);
    let keep: Vec<f64> = want.iter().step_by(2).copied().collect();
    // The score is channel 0 before rounding to T: f32 accuracy in every dtype.
    assert_close("score", &down(dev, &score), &keep, 1e-5, 1e-5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn pool_matches_reference(
        b in 1usize..4,
        n in prop_oneof![1usize..60, Just(1usize), Just(1025usize)],
        d in prop_oneof![1usize..20, Just(255usize), Just(257usize), Just(768usize)],
        zeros in prop::bool::weighted(0.15),
        seed in any::<u64>(),
        dt in 0u8..3,
    ) {
        let d = if n > 1000 { d.min(40) } else { d };
        match dt {
            0 => run_pool::<_, f32>(&clca::HostShim, b, n, d, zeros, seed),
            1 => run_pool::<_, f16>(&clca::HostShim, b, n, d, zeros, seed),
            _ => run_pool::<_, bf16>(&clca::HostShim, b, n, d, zeros, seed),
        }
    }

    #[test]
    fn log_softmax_matches_reference(
        b in 1usize..4,
        n in prop_oneof![1usize..60, Just(1usize), Just(785usize), Just(70_000usize)],
        spread in prop_oneof![Just(1.0f32), Just(30.0f32), Just(1000.0f32)],
        seed in any::<u64>(),
        dt in 0u8..3,
    ) {
        match dt {
            0 => run_lsm::<_, f32>(&clca::HostShim, b, n, spread, seed),
            1 => run_lsm::<_, f16>(&clca::HostShim, b, n, spread, seed),
            _ => run_lsm::<_, bf16>(&clca::HostShim, b, n, spread, seed),
        }
    }
}

/// The paper's predictor shapes (n = 785 tokens, D = 768) and the edges on every device.
fn shapes<D: Device>(dev: &D) {
    run_pool::<_, f32>(dev, 2, 785, 768, false, 1);
    run_pool::<_, bf16>(dev, 1, 785, 768, false, 2);
    run_pool::<_, f16>(dev, 3, 87, 5, true, 3);
    run_pool::<_, f32>(dev, 1, 1, 1, false, 4);
    run_lsm::<_, f32>(dev, 64, 785, 3.0, 5);
    run_lsm::<_, f16>(dev, 1, 1, 1.0, 6);
}

#[test]
fn shapes_all_devices() {
    on_devices!(shapes);
}

/// NaN, ±inf and huge logits follow the reference row by row; the score is channel 0.
fn special_logits<D: Device>(dev: &D) {
    let inf = f32::INFINITY;
    #[rustfmt::skip]
    let x: Vec<f32> = vec![
        f32::NAN, 1.0,
        1.0, f32::NAN,
        inf, 0.0,
        -inf, 0.0,
        -inf, -inf,
        1e4, -1e4,
        -3e38, 3e38,
        0.0, 0.0,
    ];
    let rows = x.len() / 2;
    let mut want = x.clone();
    cpu::dyvit::log_softmax2(&mut want);
    let mut xb = up(dev, &x);
    let mut score = sentinel(dev, rows, 7.0f32);
    log_softmax2(dev, &mut xb, 1, rows, &mut score).expect("kernel");
    let wf: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    let got = down(dev, &xb);
    assert_close("log_softmax", &got, &wf, 1e-6, 1e-6);
    let keep: Vec<f64> = wf.iter().step_by(2).copied().collect();
    assert_close("score", &down(dev, &score), &keep, 1e-6, 1e-6);
    assert!(got[0].is_nan() && got[3].is_nan() && got[4].is_nan() && got[9].is_nan());
    assert_eq!((got[6], got[7]), (-inf, 0.0));
    assert_eq!((got[10], got[11]), (0.0, -2e4));
}

#[test]
fn special_logits_all_devices() {
    on_devices!(special_logits);
}

/// The epsilon comes after the division, exactly: mean 3 → 3 + 1e-6 (f32), mean 0 → 1e-6
/// (an epsilon in the denominator would give 0 and 3 − 3e-6·…).
fn epsilon_after_division<D: Device>(dev: &D) {
    let (n, d) = (3usize, 4usize);
    #[rustfmt::skip]
    let h: Vec<f32> = vec![
        9.0, 9.0, 2.0, 0.0,
        9.0, 9.0, 4.0, 0.0,
        9.0, 9.0, 6.0, 0.0,
    ];
    let delta = [1.0f32, 1.0, 0.0];
    let mut hb = up(dev, &h);
    pool_global(dev, &mut hb, &up(dev, &delta), 1, n, d).expect("kernel");
    let got = down(dev, &hb);
    let mut want = h.clone();
    cpu::dyvit::pool_global(&mut want, n, d, &delta);
    assert_eq!(got, want);
    for u in 0..n {
        assert_eq!(got[u * d..u * d + 2], [9.0, 9.0]);
        assert_eq!(got[u * d + 2].to_bits(), (3.0f32 + 1e-6).to_bits());
        assert_eq!(got[u * d + 3].to_bits(), 1e-6f32.to_bits());
    }
}

#[test]
fn epsilon_after_division_all_devices() {
    on_devices!(epsilon_after_division);
}

#[test]
fn empty_and_bad_arguments() {
    let dev = clca::HostShim;
    // Empty shapes launch nothing.
    let mut h = dev.zeros::<f32>(0).expect("zeros");
    let delta = dev.zeros::<f32>(0).expect("zeros");
    pool_global(&dev, &mut h, &delta, 2, 0, 8).expect("n = 0");
    let mut score = dev.zeros::<f32>(0).expect("zeros");
    log_softmax2(&dev, &mut h, 0, 5, &mut score).expect("batch = 0");
    // Wrong lengths name their argument.
    let mut h = dev.zeros::<f32>(2 * 3 * 4).expect("zeros");
    let delta = dev.zeros::<f32>(5).expect("zeros");
    let e = pool_global(&dev, &mut h, &delta, 2, 3, 4).expect_err("delta");
    assert!(matches!(e, clca::Error::Shape { arg: "delta", .. }), "{e}");
    let e = pool_global(&dev, &mut h, &delta, 2, 3, 5).expect_err("h");
    assert!(matches!(e, clca::Error::Shape { arg: "h", .. }), "{e}");
    let mut x = dev.zeros::<f32>(2 * 3 * 2).expect("zeros");
    let mut score = dev.zeros::<f32>(5).expect("zeros");
    let e = log_softmax2(&dev, &mut x, 2, 3, &mut score).expect_err("score");
    assert!(matches!(e, clca::Error::Shape { arg: "score", .. }), "{e}");
    let e = log_softmax2(&dev, &mut x, 2, 4, &mut score).expect_err("x");
    assert!(matches!(e, clca::Error::Shape { arg: "x", .. }), "{e}");
}
