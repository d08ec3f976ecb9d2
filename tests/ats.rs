#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! ATS sampling kernels vs the CPU reference (`cpu::ats`), on the host shim (and the GPU when
//! present). The kernels round step by step as the reference does, so everything compares
//! exactly: significance, CDF, ids, counts.
mod common;
use clca::{bf16, cpu, f16, ops, Device, Element};
use common::*;
use proptest::prelude::*;

const SENTINEL: u32 = 0xDEAD_BEEF;

/// The reference's CDF (as in `cpu::ats::sample`).
fn ref_cdf(sig: &[f32], mask: &[bool]) -> Vec<f32> {
    let total: f32 = sig.iter().sum::<f32>() + 1e-6;
    let mut acc = 0f32;
    sig.iter()
        .zip(mask)
        .map(|(&s, &m)| {
            acc += s / total;
            if m {
                acc
            } else {
                acc + 0.1
            }
        })
        .collect()
}

/// `sig` [b, n−1], `mask` [b, n] (None = all real) through the kernel and the reference.
fn run_sample<D: Device>(dev: &D, sig: &[f32], mask: Option<&[f32]>, b: usize, n: usize, k: usize) {
    let n1 = n - 1;
    let points = clca::plan::ats_points(k);
    let steps: Vec<f32> = clca::plan::ats_steps(k).collect();
    let sb = up(dev, sig);
    let mb = mask.map(|m| up(dev, m));
    let mut cdf = sentinel(dev, b * n1, f32::NAN);
    let mut ids = sentinel(dev, b * points, SENTINEL);
    let mut count = sentinel(dev, b, SENTINEL);
    ops::ats::sample(
        dev,
        &sb,
        mb.as_ref(),
        b,
        n,
        k,
        &mut cdf,
        &mut ids,
        &mut count,
    )
    .expect("kernel");
    let (cdf, ids, count) = (down(dev, &cdf), down(dev, &ids), down(dev, &count));
    for bi in 0..b {
        let s = &sig[bi * n1..(bi + 1) * n1];
        let mk: Vec<bool> = match mask {
            Some(m) => m[bi * n + 1..(bi + 1) * n]
                .iter()
                .map(|&v| v != 0.0)
                .collect(),
            None => vec![true; n1],
        };
        let want = cpu::ats::sample(s, &mk, &steps);
        let what = format!("sample {bi} (b {b}, n {n}, k {k}, {})", dev.name());
        let wc = ref_cdf(s, &mk);
        let gc = &cdf[bi * n1..(bi + 1) * n1];
        assert!(
            gc.iter().zip(&wc).all(|(g, w)| g.to_bits() == w.to_bits()),
            "cdf {what}"
        );
        assert_eq!(count[bi] as usize, want.len(), "count {what}");
        let row = &ids[bi * points..(bi + 1) * points];
        assert_eq!(&row[..want.len()], &want[..], "ids {what}");
        assert!(row[want.len()..].iter().all(|&v| v == 0), "padding {what}");
    }
}

/// Significance values: smooth, heavy ties/zeros, or one dominant token.
fn sig_values(rng: &mut TRng, len: usize, mode: u8) -> Vec<f32> {
    (0..len)
        .map(|i| match mode {
            0 => rng.uniform() as f32,
            1 => rng.below(3) as f32 * 0.5,
            2 => (rng.normal().abs() * 0.1) as f32,
            _ => {
                if i == len / 3 {
                    50.0
                } else {
                    rng.uniform() as f32 * 1e-3
                }
            }
        })
        .collect()
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..40,
        Just(26usize),
        Just(27),
        Just(197),
        Just(786),
        Just(1025),
        Just(1300)
    ]
}

fn case() -> impl Strategy<Value = (usize, usize, usize, u8, u8, u64)> {
    (1usize..4, sizes(), 0u8..4, 0u8..3, any::<u64>()).prop_flat_map(
        |(b, n, mode, masking, seed)| {
            let ks = prop_oneof![
                Just(0usize),
                Just(1),
                Just(2),
                Just(27),
                Just(79),
                Just(n),
                0..=n + 5
            ];
            (Just(b), Just(n), ks, Just(mode), Just(masking), Just(seed))
        },
    )
}

fn masks(rng: &mut TRng, b: usize, n: usize, masking: u8) -> Option<Vec<f32>> {
    match masking {
        0 => None,
        1 => Some(vec![1.0; b * n]),
        _ => Some(
            (0..b * n)
                .map(|_| if rng.below(4) == 0 { 0.0 } else { 1.0 })
                .collect(),
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn sample_matches_reference((b, n, k, mode, masking, seed) in case()) {
        let mut rng = TRng(seed);
        let sig = sig_values(&mut rng, b * (n - 1), mode);
        let mask = masks(&mut rng, b, n, masking);
        run_sample(&clca::HostShim, &sig, mask.as_deref(), b, n, k);
    }
}

#[cfg(feature = "cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn gpu_sample_matches_reference((b, n, k, mode, masking, seed) in case()) {
        if let Some(dev) = gpu() {
            let mut rng = TRng(seed);
            let sig = sig_values(&mut rng, b * (n - 1), mode);
            let mask = masks(&mut rng, b, n, masking);
            run_sample(dev, &sig, mask.as_deref(), b, n, k);
        }
    }
}

fn run_significance<D: Device, T: Element>(
    dev: &D,
    b: usize,
    heads: usize,
    n: usize,
    d: usize,
    seed: u64,
) {
    let mut rng = TRng(seed);
    // The cls-row probabilities are f32 (the forwards keep them in f32); qkv is in T.
    let probs: Vec<f32> = random_probs(&mut rng, b * heads, n)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let qkv: Vec<T> = rng.normals(b * n * 3 * d);
    let (pb, qb) = (up(dev, &probs), up(dev, &qkv));
    let mut sig = sentinel(dev, b * (n - 1), f32::NAN);
    ops::ats::significance(dev, &pb, &qb, b, heads, n, d, &mut sig).expect("kernel");
    let got = down(dev, &sig);
    let pf: Vec<f32> = probs.clone();
    let qf: Vec<f32> = qkv.iter().map(|v| v.to_f32()).collect();
    for bi in 0..b {
        let want = cpu::ats::significance(
            &pf[bi * heads * n..(bi + 1) * heads * n],
            &qf[bi * n * 3 * d..(bi + 1) * n * 3 * d],
            heads,
            n,
            d,
        );
        let g = &got[bi * (n - 1)..(bi + 1) * (n - 1)];
        for (t, (x, y)) in g.iter().zip(&want).enumerate() {
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "sig[{bi}, {t}] = {x} vs {y} ({}, {})",
                T::DTYPE.suffix(),
                dev.name()
            );
        }
    }
}

fn significance_cases<D: Device>(dev: &D) {
    for &(b, heads, n, d, seed) in &[
        (1usize, 1usize, 2usize, 4usize, 1u64),
        (2, 3, 27, 12, 2),
        (1, 12, 300, 48, 3),
        (3, 2, 1, 8, 4),
        (1, 4, 5, 64, 5),
    ] {
        run_significance::<D, f32>(dev, b, heads, n, d, seed);
        run_significance::<D, f16>(dev, b, heads, n, d, seed);
        run_significance::<D, bf16>(dev, b, heads, n, d, seed);
    }
}

#[test]
fn significance_matches_reference() {
    on_devices!(significance_cases);
}

/// The paper's shape (n = 786, K = 79 → 78 points), and the end-to-end chain.
fn paper_shape<D: Device>(dev: &D) {
    let mut rng = TRng(99);
    for mode in 0..4 {
        let sig = sig_values(&mut rng, 785, mode);
        run_sample(dev, &sig, None, 1, 786, 79);
    }
    // Duplicates of one CDF value, zero sample points, a single token.
    run_sample(dev, &[0.0; 40], None, 1, 41, 12);
    run_sample(dev, &[1.0; 10], None, 2, 6, 0);
    run_sample(dev, &[1.0; 3], None, 3, 2, 5);
    run_sample(dev, &[], None, 2, 1, 5);
}

#[test]
fn paper_shape_and_edges() {
    on_devices!(paper_shape);
}

/// Many samples: the grid is capped and the kernel loops.
#[test]
fn many_samples_grid_stride() {
    let mut rng = TRng(5);
    let (b, n, k) = (70usize, 9usize, 4usize);
    let sig = sig_values(&mut rng, b * (n - 1), 0);
    run_sample(&clca::HostShim, &sig, None, b, n, k);
}

#[test]
fn bad_arguments_are_errors() {
    let dev = clca::HostShim;
    let sig = up(&dev, &[1.0f32; 9]);
    let mut cdf = dev.zeros::<f32>(9).expect("zeros");
    let mut ids = dev.zeros::<u32>(3).expect("zeros");
    let mut count = dev.zeros::<u32>(1).expect("zeros");
    // k = 4 has 3 points: ids of 3 fits; k = 5 does not.
    ops::ats::sample(&dev, &sig, None, 1, 10, 4, &mut cdf, &mut ids, &mut count).expect("ok");
    let e = ops::ats::sample(&dev, &sig, None, 1, 10, 5, &mut cdf, &mut ids, &mut count)
        .expect_err("ids too short");
    assert!(matches!(e, clca::Error::Shape { arg: "ids", .. }), "{e}");
    let mask = up(&dev, &[1.0f32; 9]);
    let e = ops::ats::sample(
        &dev,
        &sig,
        Some(&mask),
        1,
        10,
        4,
        &mut cdf,
        &mut ids,
        &mut count,
    )
    .expect_err("mask is [b, n]");
    assert!(matches!(e, clca::Error::Shape { arg: "mask", .. }), "{e}");
    let probs = up(&dev, &[0.1f32; 20]);
    let qkv = up(&dev, &[0.1f32; 10 * 3 * 6]);
    let e = ops::ats::significance(&dev, &probs, &qkv, 1, 4, 10, 6, &mut cdf)
        .expect_err("heads must divide d");
    assert!(e.to_string().contains("heads"), "{e}");
}
