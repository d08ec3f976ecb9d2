#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! CLS-attention scores (from probabilities and fused from q·K) and the fused score → top-k
//! selection, against an f64 oracle and the CPU reference.
mod common;
use clca::ops::attn_score::{cls_attn_scores, select, ScoreSource, Selection};
use clca::{bf16, cpu, f16, Device, Element};
use common::*;
use proptest::prelude::*;

/// f64 oracle of the scores from q [b,h,hd] and k [b,h,n,hd] (values as stored in T).
fn oracle_qk<T: Element>(
    q: &[T],
    k: &[T],
    b: usize,
    h: usize,
    n: usize,
    hd: usize,
    scale: f64,
) -> Vec<f64> {
    let mut out = vec![0f64; b * (n - 1)];
    for bi in 0..b {
        for hi in 0..h {
            let l: Vec<f64> = (0..n)
                .map(|t| {
                    (0..hd)
                        .map(|d| {
                            q[(bi * h + hi) * hd + d].to_f32() as f64
                                * scale
                                * k[((bi * h + hi) * n + t) * hd + d].to_f32() as f64
                        })
                        .sum()
                })
                .collect();
            let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = l.iter().map(|x| (x - m).exp()).sum();
            for t in 1..n {
                out[bi * (n - 1) + t - 1] += (l[t] - m).exp() / s / h as f64;
            }
        }
    }
    out
}

fn oracle_probs<T: Element>(p: &[T], b: usize, h: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0f64; b * (n - 1)];
    for bi in 0..b {
        for t in 1..n {
            out[bi * (n - 1) + t - 1] = (0..h)
                .map(|hi| p[((bi * h + hi) * n) * n + t].to_f32() as f64)
                .sum::<f64>()
                / h as f64;
        }
    }
    out
}

fn run<D: Device, T: Element>(
    dev: &D,
    b: usize,
    h: usize,
    n: usize,
    hd: usize,
    k: usize,
    seed: u64,
) {
    let mut rng = TRng(seed);
    let scale = (hd as f64).powf(-0.5);
    let q: Vec<T> = rng.normals(b * h * hd);
    let kk: Vec<T> = rng.normals(b * h * n * hd);
    let probs: Vec<T> = random_probs(&mut rng, b * h * n, n)
        .iter()
        .map(|&v| T::from_f32(v as f32))
        .collect();
    // Scores are f32 whatever T is: only the f32 accumulation differs from the oracle.
    let (atol, rtol) = (1e-6, 1e-4);

    let want = oracle_probs(&probs, b, h, n);
    let reference = cpu::attn_score::cls_attn_from_probs(&probs, b, h, n).expect("ref");
    assert_close("cpu probs scores", &reference, &want, atol, rtol);
    let pb = up(dev, &probs);
    let mut s = sentinel(dev, b * (n - 1), f32::NAN);
    cls_attn_scores(
        dev,
        &ScoreSource::Probs {
            probs: &pb,
            heads: h,
        },
        b,
        n,
        &mut s,
    )
    .expect("kernel");
    assert_close("probs scores", &down(dev, &s), &want, atol, rtol);

    let want = oracle_qk(&q, &kk, b, h, n, hd, scale as f32 as f64);
    let reference =
        cpu::attn_score::cls_attn_from_qk(&q, &kk, b, h, n, hd, scale as f32).expect("ref");
    assert_close("cpu qk scores", &reference, &want, atol, rtol);
    let (qb, kb) = (up(dev, &q), up(dev, &kk));
    let src = ScoreSource::Qk {
        q_cls: &qb,
        k: &kb,
        heads: h,
        head_dim: hd,
        scale: scale as f32,
    };
    let mut s = sentinel(dev, b * (n - 1), f32::NAN);
    cls_attn_scores(dev, &src, b, n, &mut s).expect("kernel");
    let got = down(dev, &s);
    assert_close("qk scores", &got, &want, atol, rtol);

    // Fused select: the scores it writes are those above, and its selection is the top-k of
    // exactly those scores (so ties and near-ties cannot make it flaky).
    let mut sel = Selection::new(dev, b, n, k).expect("selection");
    select(dev, &src, &mut sel).expect("fused select");
    let fused_scores = down(dev, &sel.scores);
    assert_close("fused qk scores", &fused_scores, &want, atol, rtol);
    let (wi, wc) = cpu::topk::topk_select(&fused_scores, b, n - 1, k).expect("ref");
    assert_eq!(down(dev, &sel.idx), wi);
    assert_eq!(down(dev, &sel.compl), wc);
    let src = ScoreSource::Probs {
        probs: &pb,
        heads: h,
    };
    select(dev, &src, &mut sel).expect("fused select");
    let fused_scores = down(dev, &sel.scores);
    let (wi, wc) = cpu::topk::topk_select(&fused_scores, b, n - 1, k).expect("ref");
    assert_close(
        "fused probs scores",
        &fused_scores,
        &oracle_probs(&probs, b, h, n),
        atol,
        rtol,
    );
    assert_eq!(down(dev, &sel.idx), wi);
    assert_eq!(down(dev, &sel.compl), wc);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn shim_matches_oracle(b in 1usize..3, h in 1usize..5, n in prop_oneof![2usize..40, Just(257usize), Just(300)], hd in prop_oneof![1usize..9, Just(64usize)], kf in 0.0f64..1.0, seed in any::<u64>(), dt in 0u8..3) {
        let k = ((n - 1) as f64 * kf) as usize;
        match dt {
            0 => run::<_, f32>(&clca::HostShim, b, h, n, hd, k, seed),
            1 => run::<_, f16>(&clca::HostShim, b, h, n, hd, k, seed),
            _ => run::<_, bf16>(&clca::HostShim, b, h, n, hd, k, seed),
        }
    }
}

fn paper_shapes<D: Device>(dev: &D) {
    run::<_, f32>(dev, 2, 12, 786, 64, 79, 1);
    run::<_, bf16>(dev, 1, 12, 87, 64, 9, 2);
    run::<_, f16>(dev, 3, 12, 17, 64, 2, 3);
}

#[test]
fn paper_shapes_all_devices() {
    on_devices!(paper_shapes);
}

#[test]
fn bad_arguments_are_errors() {
    let dev = clca::HostShim;
    let q = up(&dev, &[0f32; 2 * 300]);
    let k = up(&dev, &[0f32; 2 * 5 * 300]);
    let mut s = dev.zeros::<f32>(4).expect("zeros");
    let e = cls_attn_scores(
        &dev,
        &ScoreSource::Qk {
            q_cls: &q,
            k: &k,
            heads: 2,
            head_dim: 300,
            scale: 1.0,
        },
        1,
        5,
        &mut s,
    )
    .expect_err("hd > 256");
    assert!(e.to_string().contains("head_dim"), "{e}");
    let p = up(&dev, &[0f32; 10]);
    let e = cls_attn_scores(
        &dev,
        &ScoreSource::Probs {
            probs: &p,
            heads: 1,
        },
        1,
        1,
        &mut s,
    )
    .expect_err("n = 1");
    assert!(e.to_string().contains("`n`"), "{e}");
    assert!(Selection::new(&dev, 1, 5, 5).is_err(), "k > n-1");
}
