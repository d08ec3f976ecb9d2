#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! The soft merge (SiT / PatchMerger) kernel against the CPU reference and an f64 oracle.
mod common;
use clca::ops::merge::softmax_merge;
use clca::{bf16, cpu, f16, Device, Element};
use common::*;
use proptest::prelude::*;

/// f64 oracle from the same f32 logits the kernel and the reference form (`s·scale` in f32):
/// (out [b,k,d], w [b,k,n]).
fn oracle(
    s: &[f32],
    v: &[f32],
    b: usize,
    n: usize,
    k: usize,
    d: usize,
    scale: f32,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0f64; b * k * d];
    let mut w = vec![0f64; b * k * n];
    for bi in 0..b {
        for kk in 0..k {
            let l: Vec<f64> = (0..n)
                .map(|t| (s[(bi * n + t) * k + kk] * scale) as f64)
                .collect();
            let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for t in 0..n {
                let p = e[t] / z;
                w[(bi * k + kk) * n + t] = p;
                for c in 0..d {
                    out[(bi * k + kk) * d + c] += p * v[(bi * n + t) * d + c] as f64;
                }
            }
        }
    }
    (out, w)
}

fn run<D: Device, T: Element>(
    dev: &D,
    b: usize,
    n: usize,
    k: usize,
    d: usize,
    spread: f32,
    scale: f32,
    seed: u64,
) {
    let mut rng = TRng(seed);
    let s: Vec<T> = (0..b * n * k)
        .map(|_| T::from_f32(spread * rng.normal() as f32))
        .collect();
    let v: Vec<T> = rng.normals(b * n * d);
    let (sf, vf): (Vec<f32>, Vec<f32>) = (
        s.iter().map(|x| x.to_f32()).collect(),
        v.iter().map(|x| x.to_f32()).collect(),
    );
    let (want_o, want_w) = oracle(&sf, &vf, b, n, k, d, scale);
    let mut ref_o = vec![0f32; b * k * d];
    let ref_w = cpu::merge::softmax_merge(&sf, &vf, b, n, k, d, scale, &mut ref_o).expect("ref");
    assert_close("cpu out", &ref_o, &want_o, 1e-5, 1e-5);
    assert_close("cpu w", &ref_w, &want_w, 1e-6, 1e-5);

    let (sb, vb) = (up(dev, &s), up(dev, &v));
    let mut out = sentinel(dev, b * k * d, T::from_f32(f32::NAN));
    let mut w = sentinel(dev, b * k * n, f32::NAN);
    softmax_merge(dev, &sb, &vb, b, n, k, d, scale, &mut out, Some(&mut w)).expect("kernel");
    let (atol, rtol) = tol::<T>();
    assert_close("out", &down(dev, &out), &want_o, atol, rtol);
    // The weights are f32 from the same inputs in every storage type.
    assert_close("w", &down(dev, &w), &want_w, 1e-6, 1e-5);

    // Without the weights buffer: the same output.
    let mut out2 = sentinel(dev, b * k * d, T::from_f32(f32::NAN));
    softmax_merge(dev, &sb, &vb, b, n, k, d, scale, &mut out2, None).expect("kernel");
    assert_eq!(
        down(dev, &out2)
            .iter()
            .map(|x| x.to_f32().to_bits())
            .collect::<Vec<_>>(),
        down(dev, &out)
            .iter()
            .map(|x| x.to_f32().to_bits())
            .collect::<Vec<_>>(),
        "w = None changes nothing else"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn shim_matches_reference(
        b in 1usize..3,
        n in prop_oneof![1usize..80, Just(1usize), Just(1025usize), Just(1100usize)],
        k in prop_oneof![0usize..40, Just(1usize), Just(32usize), Just(33usize), Just(78usize)],
        d in prop_oneof![1usize..20, Just(64usize), Just(65usize), Just(130usize)],
        spread in prop_oneof![Just(1.0f32), Just(30.0f32)],
        scale in prop_oneof![Just(1.0f32), Just(0.125f32), Just(4.0f32)],
        seed in any::<u64>(),
        dt in 0u8..3,
    ) {
        // Keep the shim's work bounded: the big n only with small k·d.
        let d = if n > 1000 { d.min(20) } else { d };
        match dt {
            0 => run::<_, f32>(&clca::HostShim, b, n, k, d, spread, scale, seed),
            1 => run::<_, f16>(&clca::HostShim, b, n, k, d, spread, scale, seed),
            _ => run::<_, bf16>(&clca::HostShim, b, n, k, d, spread, scale, seed),
        }
    }
}

/// The paper's PatchMerger/SiT shape (n = 785 tokens, K = 78 slots) on a narrow d, plus the
/// edges: n = 1, k = 1, n > 1024 with k spanning two slot tiles.
fn shapes<D: Device>(dev: &D) {
    run::<_, f32>(dev, 1, 785, 78, 96, 1.0, 1.0, 1);
    run::<_, f16>(dev, 2, 785, 78, 65, 1.0, 0.5, 2);
    run::<_, bf16>(dev, 1, 785, 78, 64, 1.0, 2.0, 3);
    run::<_, f32>(dev, 3, 1, 5, 7, 1.0, 1.0, 4);
    run::<_, f32>(dev, 2, 50, 1, 33, 1.0, 1.0, 5);
    run::<_, f32>(dev, 1, 2049, 40, 3, 1.0, 1.0, 6);
}

#[test]
fn shapes_all_devices() {
    on_devices!(shapes);
}

/// Logits of ±1e4: without the max subtraction every exp would overflow or underflow.
fn large_logits<D: Device>(dev: &D) {
    let (b, n, k, d) = (1usize, 5usize, 2usize, 3usize);
    let s: Vec<f32> = vec![
        1e4,
        -1e4, //
        1e4 - 1.0,
        -1e4 + 2.0, //
        -3e4,
        -1e4, //
        9990.0,
        -1e4 + 1.0, //
        1e4,
        -2e4,
    ];
    let v: Vec<f32> = (0..n * d).map(|i| i as f32).collect();
    let mut want = vec![0f32; b * k * d];
    let want_w = cpu::merge::softmax_merge(&s, &v, b, n, k, d, 1.0, &mut want).expect("ref");
    assert!(want_w.iter().all(|x| x.is_finite()));
    let (sb, vb) = (up(dev, &s), up(dev, &v));
    let mut out = sentinel(dev, b * k * d, f32::NAN);
    let mut w = sentinel(dev, b * k * n, f32::NAN);
    softmax_merge(dev, &sb, &vb, b, n, k, d, 1.0, &mut out, Some(&mut w)).expect("kernel");
    let (o64, w64) = oracle(&s, &v, b, n, k, d, 1.0);
    assert_close("w", &down(dev, &w), &w64, 1e-6, 1e-5);
    assert_close("out", &down(dev, &out), &o64, 1e-5, 1e-5);
    // Column 0: the two tokens at 1e4 share the weight, 1e4 − 1 gets e^-1 of theirs.
    let w = down(dev, &w);
    assert!((w[0] - w[4]).abs() < 1e-7 && (w[1] / w[0] - (-1f32).exp()).abs() < 1e-5);
}

#[test]
fn large_logits_all_devices() {
    on_devices!(large_logits);
}

/// NaN/inf policy equals the reference's: NaN → NaN column, +inf → NaN column, −inf → weight 0,
/// all −inf → NaN column; other columns are unaffected.
fn nan_inf_policy<D: Device>(dev: &D) {
    let (b, n, k, d) = (1usize, 4usize, 5usize, 2usize);
    let inf = f32::INFINITY;
    #[rustfmt::skip]
    let s: Vec<f32> = vec![
        // slot 0: NaN, 1: +inf, 2: one −inf, 3: all −inf, 4: finite
        f32::NAN, 1.0, -inf, -inf, 0.1,
        0.5,      inf, 0.0,  -inf, 0.2,
        1.0,      2.0, 1.0,  -inf, 0.3,
        2.0,      0.0, 2.0,  -inf, 0.4,
    ];
    let v: Vec<f32> = (0..n * d).map(|i| 1.0 + i as f32).collect();
    let mut want = vec![0f32; b * k * d];
    let want_w = cpu::merge::softmax_merge(&s, &v, b, n, k, d, 1.0, &mut want).expect("ref");
    let (sb, vb) = (up(dev, &s), up(dev, &v));
    let mut out = sentinel(dev, b * k * d, 7.0f32);
    let mut w = sentinel(dev, b * k * n, 7.0f32);
    softmax_merge(dev, &sb, &vb, b, n, k, d, 1.0, &mut out, Some(&mut w)).expect("kernel");
    let (got_o, got_w) = (down(dev, &out), down(dev, &w));
    let wf: Vec<f64> = want_w.iter().map(|&x| x as f64).collect();
    let of: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    assert_close("w", &got_w, &wf, 1e-6, 1e-5);
    assert_close("out", &got_o, &of, 1e-5, 1e-5);
    let col = |kk: usize| &got_w[kk * n..(kk + 1) * n];
    assert!(col(0).iter().all(|x| x.is_nan()), "NaN column");
    assert!(col(1).iter().all(|x| x.is_nan()), "+inf column");
    assert!(col(2)[0] == 0.0 && col(2)[1..].iter().all(|x| x.is_finite() && *x > 0.0));
    assert!(col(3).iter().all(|x| x.is_nan()), "all -inf column");
    assert!(col(4).iter().all(|x| x.is_finite()));
}

#[test]
fn nan_inf_policy_all_devices() {
    on_devices!(nan_inf_policy);
}

#[test]
fn empty_and_bad_arguments() {
    let dev = clca::HostShim;
    // k = 0: nothing to write, not an error.
    let s = up(&dev, &[0f32; 0]);
    let v = up(&dev, &[1f32; 2 * 3 * 4]);
    let mut out = dev.zeros::<f32>(0).expect("zeros");
    let mut w = dev.zeros::<f32>(0).expect("zeros");
    softmax_merge(&dev, &s, &v, 2, 3, 0, 4, 1.0, &mut out, Some(&mut w)).expect("k = 0");
    // n = 0 is an error, as in the reference.
    let v0 = up(&dev, &[0f32; 0]);
    let mut out = dev.zeros::<f32>(2 * 4).expect("zeros");
    let e = softmax_merge(&dev, &s, &v0, 1, 0, 2, 4, 1.0, &mut out, None).expect_err("n = 0");
    assert!(e.to_string().contains("`n`"), "{e}");
    // Wrong lengths name their argument.
    let s = up(&dev, &[0f32; 2 * 3 * 2]);
    let mut out = dev.zeros::<f32>(2 * 2 * 4 + 1).expect("zeros");
    let e = softmax_merge(&dev, &s, &v, 2, 3, 2, 4, 1.0, &mut out, None).expect_err("out");
    assert!(matches!(e, clca::Error::Shape { arg: "out", .. }), "{e}");
    let mut out = dev.zeros::<f32>(2 * 2 * 4).expect("zeros");
    let mut w = dev.zeros::<f32>(5).expect("zeros");
    let e = softmax_merge(&dev, &s, &v, 2, 3, 2, 4, 1.0, &mut out, Some(&mut w)).expect_err("w");
    assert!(matches!(e, clca::Error::Shape { arg: "w", .. }), "{e}");
    let e = softmax_merge(&dev, &s, &v, 2, 3, 3, 4, 1.0, &mut out, None).expect_err("s");
    assert!(matches!(e, clca::Error::Shape { arg: "s", .. }), "{e}");
}
