#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! ToMe (metric, match, order, merge, sizes) against the CPU reference, bit for bit, and the
//! merge against an f64 oracle; plus the plan's own contract (tie-break and output order).
mod common;
use clca::ops::tome::{
    max_r, split, tome, tome_match, tome_merge, tome_metric, tome_order, tome_sizes, Merge,
};
use clca::{bf16, cpu, f16, Device, Element};
use common::*;
use proptest::prelude::*;

/// How the keys are drawn.
#[derive(Clone, Copy, Debug)]
enum Keys {
    /// Independent normals.
    Random,
    /// Only `m` distinct key rows, repeated: equal similarities everywhere (ties in the argmax
    /// and in the ordering).
    Repeated(usize),
    /// Random, with some all-zero keys (a NaN metric, so NaN similarities that never win).
    SomeZero,
}

fn qkv_for<T: Element>(
    rng: &mut TRng,
    b: usize,
    n: usize,
    heads: usize,
    hd: usize,
    keys: Keys,
) -> Vec<T> {
    let d = heads * hd;
    let mut qkv: Vec<T> = rng.normals(b * n * 3 * d);
    for bi in 0..b {
        for t in 0..n {
            let row = (bi * n + t) * 3 * d + d;
            match keys {
                Keys::Random => {}
                Keys::Repeated(m) => {
                    let from = (bi * n + t % m) * 3 * d + d;
                    for e in 0..d {
                        qkv[row + e] = qkv[from + e];
                    }
                }
                Keys::SomeZero => {
                    if rng.below(5) == 0 {
                        qkv[row..row + d].fill(T::from_f32(0.0));
                    }
                }
            }
        }
    }
    qkv
}

/// Equal bits, or both NaN (the GPU's NaN payload differs from the host's).
fn same_f32(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}[{i}]: got {g:e}, want {w:e}"
        );
    }
}

fn same_t<T: Element>(what: &str, got: &[T], want: &[T]) {
    let g: Vec<f32> = got.iter().map(|v| v.to_f32()).collect();
    let w: Vec<f32> = want.iter().map(|v| v.to_f32()).collect();
    same_f32(what, &g, &w);
}

/// The plan's contract, checked on the reference itself.
fn check_plan(
    p: &cpu::tome::Plan,
    node_max: &[f32],
    node_idx: &[u32],
    b: usize,
    n: usize,
    r: usize,
) {
    let (na, nb) = split(n);
    for bi in 0..b {
        let nm = &node_max[bi * na..(bi + 1) * na];
        let ni = &node_idx[bi * na..(bi + 1) * na];
        let src = &p.src[bi * r..(bi + 1) * r];
        let unm = &p.unm[bi * (na - r)..(bi + 1) * (na - r)];
        assert_eq!(nm[0], f32::NEG_INFINITY, "cls row is -inf");
        assert_eq!(unm.first(), Some(&0), "cls is unmerged and first");
        assert!(unm.windows(2).all(|w| w[0] < w[1]), "unm ascending");
        // Merge order: node_max descending (−0 == +0), ties by lower index.
        for w in src.windows(2) {
            let (a, c) = (nm[w[0] as usize], nm[w[1] as usize]);
            assert!(a > c || (a == c && w[0] < w[1]), "src order {w:?}: {a} {c}");
        }
        // Every unmerged token ranks after every source.
        if let Some(&last) = src.last() {
            let l = nm[last as usize];
            for &u in &unm[1..] {
                let v = nm[u as usize];
                assert!(
                    v < l || (v == l && u > last),
                    "unmerged {u} ({v}) before source {last} ({l})"
                );
            }
        }
        let mut all: Vec<u32> = src.iter().chain(unm).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..na as u32).collect::<Vec<_>>(), "src ∪ unm = a");
        let off = &p.offsets[bi * (nb + 1)..(bi + 1) * (nb + 1)];
        let grp = &p.grouped[bi * r..(bi + 1) * r];
        for j in 0..nb {
            let g = &grp[off[j] as usize..off[j + 1] as usize];
            assert!(g.iter().all(|&s| ni[s as usize] == j as u32), "group {j}");
            let order: Vec<usize> = g
                .iter()
                .map(|s| src.iter().position(|x| x == s).expect("a source"))
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "merge order within group {j}"
            );
        }
    }
}

fn run<D: Device, T: Element>(
    dev: &D,
    b: usize,
    n: usize,
    c: usize,
    heads: usize,
    hd: usize,
    r: usize,
    keys: Keys,
    with_sizes: bool,
    seed: u64,
) {
    let ctx = format!(
        "b {b} n {n} c {c} heads {heads} hd {hd} r {r} {keys:?} sizes {with_sizes} {} on {}",
        T::DTYPE,
        dev.name()
    );
    let mut rng = TRng(seed);
    let (na, nb) = split(n);
    let qkv: Vec<T> = qkv_for(&mut rng, b, n, heads, hd, keys);
    let x: Vec<T> = rng.normals(b * n * c);
    let sizes: Option<Vec<f32>> = with_sizes.then(|| {
        (0..b * n)
            .map(|_| (1 + rng.below(4)) as f32 * 0.75)
            .collect()
    });

    // The reference, stage by stage.
    let metric = cpu::tome::tome_metric(&qkv, b, n, heads, hd).expect("metric");
    let (nm, ni) = cpu::tome::tome_match(&metric, b, n, hd).expect("match");
    let plan = cpu::tome::tome_order(&nm, &ni, b, n, r).expect("order");
    check_plan(&plan, &nm, &ni, b, n, r);
    let (out, out_sizes) =
        cpu::tome::tome_merge(&x, sizes.as_deref(), b, n, c, r, &plan).expect("merge");

    // f64 oracle of the merge, from the reference plan.
    let mut oracle = vec![0f64; b * (n - r) * c];
    let nu = na - r;
    for bi in 0..b {
        let size = |t: usize| sizes.as_ref().map_or(1.0, |s| s[bi * n + t] as f64);
        for o in 0..n - r {
            let toks: Vec<usize> = if o < nu {
                vec![2 * plan.unm[bi * nu + o] as usize]
            } else {
                let j = o - nu;
                let off = &plan.offsets[bi * (nb + 1)..];
                std::iter::once(2 * j + 1)
                    .chain(
                        plan.grouped[bi * r + off[j] as usize..bi * r + off[j + 1] as usize]
                            .iter()
                            .map(|&s| 2 * s as usize),
                    )
                    .collect()
            };
            let sz: f64 = toks.iter().map(|&t| size(t)).sum();
            assert_eq!(sz as f32, out_sizes[bi * (n - r) + o], "{ctx}: size of {o}");
            for ch in 0..c {
                let s: f64 = toks
                    .iter()
                    .map(|&t| x[(bi * n + t) * c + ch].to_f32() as f64 * size(t))
                    .sum();
                oracle[(bi * (n - r) + o) * c + ch] = s / sz;
            }
        }
    }
    let (atol, rtol) = tol::<T>();
    assert_close(
        &format!("{ctx}: cpu merge vs f64"),
        &out,
        &oracle,
        atol,
        rtol,
    );

    // The kernels, stage by stage, each from the reference's input, into sentinel buffers.
    let mut m = Merge::new(dev, b, n, hd, r).expect("merge buffers");
    m.metric = sentinel(dev, b * n * hd, f32::NAN);
    m.node_max = sentinel(dev, b * na, f32::NAN);
    m.node_idx = sentinel(dev, b * na, u32::MAX);
    m.src = sentinel(dev, b * r, u32::MAX);
    m.unm = sentinel(dev, b * (na - r), u32::MAX);
    m.grouped = sentinel(dev, b * r, u32::MAX);
    m.offsets = sentinel(dev, b * (nb + 1), u32::MAX);
    let qkv_d = up(dev, &qkv);
    tome_metric(dev, &qkv_d, heads, &mut m).expect("metric kernel");
    same_f32(&format!("{ctx}: metric"), &down(dev, &m.metric), &metric);
    tome_match(dev, &mut m).expect("match kernel");
    same_f32(&format!("{ctx}: node_max"), &down(dev, &m.node_max), &nm);
    assert_eq!(down(dev, &m.node_idx), ni, "{ctx}: node_idx");
    tome_order(dev, &mut m).expect("order kernel");
    assert_eq!(down(dev, &m.src), plan.src, "{ctx}: src");
    assert_eq!(down(dev, &m.unm), plan.unm, "{ctx}: unm");
    assert_eq!(down(dev, &m.grouped), plan.grouped, "{ctx}: grouped");
    assert_eq!(down(dev, &m.offsets), plan.offsets, "{ctx}: offsets");
    let xd = up(dev, &x);
    let sd = sizes.as_ref().map(|s| up(dev, s));
    let mut od = sentinel(dev, b * (n - r) * c, T::from_f32(f32::NAN));
    let mut osd = sentinel(dev, b * (n - r), f32::NAN);
    tome_merge(dev, &xd, sd.as_ref(), c, &m, &mut od, &mut osd).expect("merge kernel");
    same_t(&format!("{ctx}: out"), &down(dev, &od), &out);
    same_f32(&format!("{ctx}: out_sizes"), &down(dev, &osd), &out_sizes);

    // The whole layer in one call equals the composition.
    let mut od = sentinel(dev, b * (n - r) * c, T::from_f32(f32::NAN));
    let mut osd = sentinel(dev, b * (n - r), f32::NAN);
    tome(
        dev,
        &qkv_d,
        heads,
        &xd,
        sd.as_ref(),
        c,
        &mut m,
        &mut od,
        &mut osd,
    )
    .expect("tome");
    same_t(&format!("{ctx}: tome out"), &down(dev, &od), &out);
    let (out2, sizes2) =
        cpu::tome::tome(&qkv, heads, hd, &x, sizes.as_deref(), b, n, c, r).expect("cpu tome");
    same_t(&format!("{ctx}: cpu tome"), &out2, &out);
    same_f32(&format!("{ctx}: cpu tome sizes"), &sizes2, &out_sizes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn shim_matches_reference(
        b in 1usize..4,
        n in prop_oneof![1usize..12, 12usize..80, Just(1025usize), Just(1026), 1027usize..1100],
        c in prop_oneof![1usize..20, Just(257usize), Just(768)],
        heads in 1usize..4,
        hd in prop_oneof![1usize..9, Just(32usize), Just(64)],
        rf in prop_oneof![Just(0.0f64), Just(1.0), 0.0f64..=1.0],
        keys in prop_oneof![Just(Keys::Random), (1usize..4).prop_map(Keys::Repeated), Just(Keys::SomeZero)],
        with_sizes in any::<bool>(),
        seed in any::<u64>(),
        dt in 0u8..3,
    ) {
        // Long rows with a small payload, so the shim stays quick.
        let (c, hd) = if n > 1000 { (c.min(8), hd.min(8)) } else { (c, hd) };
        let r = (max_r(n) as f64 * rf).round() as usize;
        match dt {
            0 => run::<_, f32>(&clca::HostShim, b, n, c, heads, hd, r, keys, with_sizes, seed),
            1 => run::<_, f16>(&clca::HostShim, b, n, c, heads, hd, r, keys, with_sizes, seed),
            _ => run::<_, bf16>(&clca::HostShim, b, n, c, heads, hd, r, keys, with_sizes, seed),
        }
    }
}

/// Fixed edge cases on every device: n = 1, 2, 3, even and odd n, r = 0 and r = ⌊(n−1)/2⌋,
/// full ties, zero keys, a row of 1025+ tokens, and the 448 px ViT-B/16 shape.
fn edges<D: Device>(dev: &D) {
    let mut seed = 1;
    for n in [1usize, 2, 3, 4, 5, 6, 7, 16, 17] {
        for r in [0, max_r(n) / 2, max_r(n)] {
            for keys in [
                Keys::Random,
                Keys::Repeated(1),
                Keys::Repeated(2),
                Keys::SomeZero,
            ] {
                seed += 1;
                run::<_, f32>(dev, 2, n, 5, 2, 4, r, keys, seed % 2 == 0, seed);
            }
        }
    }
    run::<_, f32>(dev, 1, 1031, 16, 3, 8, max_r(1031), Keys::Random, true, 7);
    run::<_, f16>(dev, 2, 1026, 8, 2, 8, 300, Keys::Repeated(3), true, 8);
    run::<_, bf16>(dev, 1, 786, 768, 12, 64, 392, Keys::Random, false, 9);
}

#[test]
fn edge_cases_all_devices() {
    on_devices!(edges);
}

/// Full ties: every key equal, so every similarity is the same value; the argmax takes b token 0
/// and the sources are a tokens 1..=r (lower index first).
#[test]
fn ties_take_the_lowest_index() {
    let (b, n, heads, hd, r) = (1, 11, 2, 4, 5);
    let mut rng = TRng(3);
    let qkv: Vec<f32> = qkv_for(&mut rng, b, n, heads, hd, Keys::Repeated(1));
    let metric = cpu::tome::tome_metric(&qkv, b, n, heads, hd).expect("metric");
    let (nm, ni) = cpu::tome::tome_match(&metric, b, n, hd).expect("match");
    assert!(ni.iter().all(|&j| j == 0), "{ni:?}");
    assert!(nm[1..].iter().all(|&v| v == nm[1]), "{nm:?}");
    let plan = cpu::tome::tome_order(&nm, &ni, b, n, r).expect("order");
    assert_eq!(plan.src, vec![1, 2, 3, 4, 5]);
    assert_eq!(plan.unm, vec![0]);
    assert_eq!(plan.grouped, vec![1, 2, 3, 4, 5]);
    assert_eq!(plan.offsets, vec![0, 5, 5, 5, 5, 5]);
}

fn sizes_case<D: Device>(dev: &D) {
    for (b, n, r) in [(1usize, 0usize, 3usize), (2, 5, 0), (3, 7, 4), (2, 1030, 6)] {
        let s: Vec<f32> = (0..b * n).map(|i| (i % 7) as f32 + 0.5).collect();
        for with in [false, true] {
            let want = cpu::tome::tome_sizes(with.then_some(&s[..]), b, n, r).expect("ref");
            let sd = up(dev, &s);
            let mut out = sentinel(dev, b * (n + r), f32::NAN);
            tome_sizes(dev, with.then_some(&sd), b, n, r, &mut out).expect("kernel");
            assert_eq!(down(dev, &out), want, "sizes b {b} n {n} r {r} {with}");
            for bi in 0..b {
                assert!(want[bi * (n + r) + n..(bi + 1) * (n + r)]
                    .iter()
                    .all(|&v| v == 1.0));
            }
        }
    }
}

#[test]
fn recovered_sizes_all_devices() {
    on_devices!(sizes_case);
}

#[test]
fn bad_arguments_are_errors() {
    let dev = clca::HostShim;
    let e = Merge::new(&dev, 1, 5, 4, 3).err().expect("r > ⌊(n−1)/2⌋");
    assert!(e.to_string().contains("`r`"), "{e}");
    let e = Merge::new(&dev, 1, 0, 4, 0).err().expect("n = 0");
    assert!(e.to_string().contains("`n`"), "{e}");
    let e = Merge::new(&dev, 1, 5, 257, 1).err().expect("hd too large");
    assert!(e.to_string().contains("head_dim"), "{e}");
    let mut m = Merge::new(&dev, 1, 5, 4, 2).expect("merge");
    let qkv = up(&dev, &[0f32; 5 * 3 * 2 * 4 - 1]);
    let e = tome_metric(&dev, &qkv, 2, &mut m).expect_err("short qkv");
    assert!(matches!(e, clca::Error::Shape { arg: "qkv", .. }), "{e}");
    let x = up(&dev, &[0f32; 5 * 3]);
    let mut out = dev.zeros::<f32>(2 * 3).expect("zeros");
    let mut os = dev.zeros::<f32>(3).expect("zeros");
    let e = tome_merge(&dev, &x, None, 3, &m, &mut out, &mut os).expect_err("short out");
    assert!(matches!(e, clca::Error::Shape { arg: "out", .. }), "{e}");
    let e = cpu::tome::tome_order(&[0.0; 3], &[0, 9, 0], 1, 5, 1).expect_err("node_idx range");
    assert!(e.to_string().contains("out of range"), "{e}");
    let plan = cpu::tome::Plan {
        src: vec![1],
        unm: vec![0, 2],
        grouped: vec![1],
        offsets: vec![0, 0, 0],
    };
    let e = cpu::tome::tome_merge(&[0f32; 5], None, 1, 5, 1, 1, &plan).expect_err("offsets");
    assert!(e.to_string().contains("offsets"), "{e}");
}
