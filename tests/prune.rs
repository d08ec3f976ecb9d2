#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! Top-K / EViT pruning and the fused prune path against the CPU reference and an f64 oracle.
mod common;
use clca::ops::attn_score::{ScoreSource, Selection};
use clca::ops::prune::{evit_bias_scale, evit_prune, prune, topk_prune, PruneMode};
use clca::{bf16, cpu, f16, Device, Element};
use common::*;
use proptest::prelude::*;

fn run<D: Device, T: Element>(dev: &D, b: usize, n: usize, c: usize, k: usize, seed: u64) {
    let mut rng = TRng(seed);
    let x: Vec<T> = rng.normals(b * n * c);
    let scores: Vec<f32> = random_probs(&mut rng, b, n - 1)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let (idx, compl) = cpu::topk::topk_select(&scores, b, n - 1, k).expect("ref");

    let want_t = cpu::prune::topk_prune(&x, b, n, c, &idx, k).expect("ref");
    let (xb, ib, cb, sb) = (
        up(dev, &x),
        up(dev, &idx),
        up(dev, &compl),
        up(dev, &scores),
    );
    let mut out = sentinel(dev, b * (1 + k) * c, T::from_f32(f32::NAN));
    topk_prune(dev, &xb, b, n, c, &ib, k, &mut out).expect("kernel");
    assert_eq!(down(dev, &out), want_t, "topk prune is an exact gather");

    // f64 oracle of the fused token.
    let m = n - 1 - k;
    let want_e = cpu::prune::evit_prune(&x, b, n, c, &idx, k, &compl, &scores).expect("ref");
    let mut oracle: Vec<f64> = want_e.iter().map(|v| v.to_f32() as f64).collect();
    for bi in 0..b {
        for ch in 0..c {
            let s: f64 = (0..m)
                .map(|j| {
                    let t = compl[bi * m + j] as usize;
                    scores[bi * (n - 1) + t] as f64 * x[(bi * n + 1 + t) * c + ch].to_f32() as f64
                })
                .sum();
            oracle[(bi * (2 + k) + 1 + k) * c + ch] = s;
        }
    }
    let (atol, rtol) = tol::<T>();
    assert_close("cpu evit", &want_e, &oracle, atol, rtol);
    let mut out = sentinel(dev, b * (2 + k) * c, T::from_f32(f32::NAN));
    evit_prune(dev, &xb, b, n, c, &ib, k, &cb, &sb, &mut out).expect("kernel");
    assert_close("evit", &down(dev, &out), &oracle, atol, rtol);

    // The projection's bias factor of the fused row: S = Σ scores over the dropped tokens,
    // summed exactly as the fused token of a channel of ones; 1 for cls and the kept rows.
    let want_s = cpu::prune::evit_bias_scale(&compl, &scores, b, n, k).expect("ref");
    let ones =
        cpu::prune::evit_prune(&vec![1f32; b * n], b, n, 1, &idx, k, &compl, &scores).expect("ref");
    for bi in 0..b {
        let row = &want_s[bi * (2 + k)..(bi + 1) * (2 + k)];
        assert!(
            row[..=k].iter().all(|&v| v == 1.0),
            "bias scale of [cls, kept]"
        );
        assert_eq!(
            row[k + 1].to_bits(),
            ones[bi * (2 + k) + 1 + k].to_bits(),
            "S"
        );
        let s64: f64 = (0..m)
            .map(|j| scores[bi * (n - 1) + compl[bi * m + j] as usize] as f64)
            .sum();
        assert!(
            (row[k + 1] as f64 - s64).abs() <= 1e-6 * s64.max(1e-30),
            "S vs f64"
        );
    }
    let mut out = sentinel(dev, b * (2 + k), f32::NAN);
    evit_bias_scale(dev, &cb, &sb, b, n, k, &mut out).expect("kernel");
    let got = down(dev, &out);
    assert!(
        got.iter()
            .zip(&want_s)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "bias scale: kernel {got:?} vs reference {want_s:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn shim_matches_reference(b in 1usize..4, n in prop_oneof![2usize..50, Just(257usize)], c in prop_oneof![1usize..20, Just(255usize), Just(257), Just(768)], kf in 0.0f64..=1.0, seed in any::<u64>(), dt in 0u8..3) {
        let k = (((n - 1) as f64) * kf) as usize;
        match dt {
            0 => run::<_, f32>(&clca::HostShim, b, n, c, k, seed),
            1 => run::<_, f16>(&clca::HostShim, b, n, c, k, seed),
            _ => run::<_, bf16>(&clca::HostShim, b, n, c, k, seed),
        }
    }
}

/// The fused path (scores → top-k → gather) equals the composition of the reference ops.
fn fused<D: Device>(dev: &D) {
    for &(b, n, c, h, k) in &[
        (2usize, 786usize, 64usize, 3usize, 79usize),
        (1, 87, 768, 12, 9),
        (3, 17, 33, 2, 2),
        (1, 2, 8, 1, 1),
    ] {
        let mut rng = TRng(n as u64);
        let x: Vec<f32> = rng.normals(b * n * c);
        let probs: Vec<f32> = random_probs(&mut rng, b * h * n, n)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let scores = cpu::attn_score::cls_attn_from_probs(&probs, b, h, n).expect("ref");
        let (idx, compl) = cpu::topk::topk_select(&scores, b, n - 1, k).expect("ref");
        let pb = up(dev, &probs);
        let xb = up(dev, &x);
        let mut sel = Selection::new(dev, b, n, k).expect("sel");
        for mode in [PruneMode::TopK, PruneMode::EVit] {
            let mut out = sentinel(dev, b * mode.out_tokens(k) * c, f32::NAN);
            prune(
                dev,
                &ScoreSource::Probs {
                    probs: &pb,
                    heads: h,
                },
                &xb,
                c,
                mode,
                &mut sel,
                &mut out,
            )
            .expect("fused prune");
            assert_eq!(down(dev, &sel.idx), idx);
            let want = match mode {
                PruneMode::TopK => cpu::prune::topk_prune(&x, b, n, c, &idx, k).expect("ref"),
                PruneMode::EVit => {
                    cpu::prune::evit_prune(&x, b, n, c, &idx, k, &compl, &scores).expect("ref")
                }
            };
            let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
            assert_close("fused prune", &down(dev, &out), &want, 1e-6, 1e-5);
        }
    }
}

#[test]
fn fused_prune_all_devices() {
    on_devices!(fused);
}

#[test]
fn bad_arguments_are_errors() {
    let dev = clca::HostShim;
    let x = up(&dev, &[0f32; 2 * 5 * 4]);
    let idx = up(&dev, &[0u32; 2 * 5]);
    let mut out = dev.zeros::<f32>(2 * 6 * 4).expect("zeros");
    let e = topk_prune(&dev, &x, 2, 5, 4, &idx, 5, &mut out).expect_err("k = n");
    assert!(e.to_string().contains("`k`"), "{e}");
    let e = cpu::prune::topk_prune(&[0f32; 5 * 4], 1, 5, 4, &[9, 0], 2)
        .expect_err("index out of range");
    assert!(e.to_string().contains("out of range"), "{e}");
    let mut out = dev.zeros::<f32>(3).expect("zeros");
    let idx = up(&dev, &[0u32; 2]);
    let e = topk_prune(&dev, &x, 2, 5, 4, &idx, 1, &mut out).expect_err("out too short");
    assert!(matches!(e, clca::Error::Shape { arg: "out", .. }), "{e}");
    // The EViT bias factor: k = n, a short compl, a short out.
    let (cb, sb) = (up(&dev, &[0u32; 2 * 2]), up(&dev, &[0.5f32; 2 * 4]));
    let mut out = dev.zeros::<f32>(2 * 4).expect("zeros");
    let e = evit_bias_scale(&dev, &cb, &sb, 2, 5, 5, &mut out).expect_err("k = n");
    assert!(e.to_string().contains("`k`"), "{e}");
    let e = evit_bias_scale(&dev, &cb, &sb, 2, 5, 1, &mut out).expect_err("compl short");
    assert!(matches!(e, clca::Error::Shape { arg: "compl", .. }), "{e}");
    let mut short = dev.zeros::<f32>(2 * 4 - 1).expect("zeros");
    evit_bias_scale(&dev, &cb, &sb, 2, 5, 2, &mut out).expect("the right sizes");
    let e = evit_bias_scale(&dev, &cb, &sb, 2, 5, 2, &mut short).expect_err("out short");
    assert!(matches!(e, clca::Error::Shape { arg: "out", .. }), "{e}");
    let e = cpu::prune::evit_bias_scale(&[7, 0], &[0.5; 4], 1, 5, 2).expect_err("index");
    assert!(e.to_string().contains("out of range"), "{e}");
}

/// EViT's projection bias factor at its edges, kernel against reference: no dropped tokens
/// (k = n − 1: S = 0), one dropped token, and scores holding NaN, +inf and −0 (NaN and inf
/// carry into S, as into the fused token).
fn bias_scale_edges<D: Device>(dev: &D) {
    let n = 6;
    let rows: [(usize, Vec<f32>); 4] = [
        (n - 1, vec![0.1, 0.2, 0.3, 0.2, 0.2]),
        (n - 2, vec![0.5, 0.25, 0.125, 0.0625, 0.0625]),
        (1, vec![f32::NAN, 0.2, 0.3, 0.2, 0.2]),
        (2, vec![-0.0, f32::INFINITY, 0.3, 0.2, 0.2]),
    ];
    for (k, scores) in rows {
        let (_, compl) = cpu::topk::topk_select(&scores, 1, n - 1, k).expect("ref topk");
        let want = cpu::prune::evit_bias_scale(&compl, &scores, 1, n, k).expect("ref");
        let (cb, sb) = (up(dev, &compl), up(dev, &scores));
        let mut out = sentinel(dev, 2 + k, f32::NAN);
        evit_bias_scale(dev, &cb, &sb, 1, n, k, &mut out).expect("kernel");
        let got = down(dev, &out);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "k {k} scores {scores:?}: kernel {got:?} vs reference {want:?} on {}",
                dev.name()
            );
        }
        let dropped: f32 = compl.iter().map(|&t| scores[t as usize]).sum();
        let s = want[k + 1];
        assert!(
            (s.is_nan() && dropped.is_nan()) || s == dropped,
            "k {k}: S {s} vs {dropped}"
        );
    }
}

/// A row past 1024 tokens (1500: runs of 175 dropped tokens), batch 3.
fn bias_scale_long<D: Device>(dev: &D) {
    let (b, n, k) = (3, 1500, 120);
    let mut rng = TRng(5);
    let scores: Vec<f32> = random_probs(&mut rng, b, n - 1)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let (_, compl) = cpu::topk::topk_select(&scores, b, n - 1, k).expect("ref topk");
    let want = cpu::prune::evit_bias_scale(&compl, &scores, b, n, k).expect("ref");
    let mut out = sentinel(dev, b * (2 + k), f32::NAN);
    evit_bias_scale(dev, &up(dev, &compl), &up(dev, &scores), b, n, k, &mut out).expect("kernel");
    let got = down(dev, &out);
    assert!(
        got.iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits()),
        "long rows on {}",
        dev.name()
    );
}

#[test]
fn bias_scale_edges_all_devices() {
    on_devices!(bias_scale_long);
    on_devices!(bias_scale_edges);
}
