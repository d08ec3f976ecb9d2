#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! DPC-KNN kernels vs the CPU reference (`cpu::dpcknn`), on the host shim (and the GPU when
//! present).
//!
//! The kernels accumulate dot products in f32, the reference in f64, so selections are
//! compared on **integer data** (entries in −2..2, exact in f32/f16/bf16, every norm, dot and
//! squared distance an exact small integer): there both compute the same distances bit for
//! bit, and the selections must agree exactly, ties included (duplicate tokens, tied
//! densities and scores are frequent there). Distances of **Gaussian data** are compared with
//! a tolerance on the squared distance, `|d_k² − d_r²| ≤ 1e-5·(|u|² + |v|²)/d`, the f32
//! rounding of the matmul form (which cancels near 0, so plain distances would need a
//! tolerance of its square root).
mod common;
use clca::{bf16, cpu, f16, ops, Device, Element};
use common::*;
use proptest::prelude::*;

const SENTINEL: u32 = 0xDEAD_BEEF;

fn to_t<T: Element>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// Integer tokens; `dup` draws them from a small pool so that duplicates are common.
fn int_tokens(rng: &mut TRng, b: usize, m: usize, d: usize, dup: bool) -> Vec<f32> {
    let pool: Vec<f32> = (0..4 * d).map(|_| rng.below(5) as f32 - 2.0).collect();
    let mut out = Vec::with_capacity(b * m * d);
    for _ in 0..b * m {
        if dup {
            let r = rng.below(4);
            out.extend_from_slice(&pool[r * d..(r + 1) * d]);
        } else {
            out.extend((0..d).map(|_| rng.below(5) as f32 - 2.0));
        }
    }
    out
}

struct Got {
    dist: Vec<f32>,
    density: Vec<f32>,
    idx: Vec<u32>,
    centers: Vec<u32>,
}

fn run_cluster<D: Device, T: Element>(
    dev: &D,
    x: &[T],
    noise: Option<&[f32]>,
    b: usize,
    m: usize,
    d: usize,
    k: usize,
    knn: usize,
) -> Got {
    let xb = up(dev, x);
    let nb = noise.map(|z| up(dev, z));
    let mut ws = ops::dpcknn::DpcWorkspace::new(dev, b, m, k).expect("workspace");
    let mut idx = sentinel(dev, b * m, SENTINEL);
    let mut centers = sentinel(dev, b * k, SENTINEL);
    ops::dpcknn::cluster(
        dev,
        &xb,
        b,
        m,
        d,
        k,
        knn,
        nb.as_ref(),
        &mut ws,
        &mut idx,
        &mut centers,
    )
    .expect("kernel");
    Got {
        dist: down(dev, &ws.dist),
        density: down(dev, &ws.density),
        idx: down(dev, &idx),
        centers: down(dev, &centers),
    }
}

/// Integer data: distances, selections and assignment exactly as the reference.
fn exact_case<D: Device, T: Element>(
    dev: &D,
    xf: &[f32],
    noise: Option<&[f32]>,
    b: usize,
    m: usize,
    d: usize,
    k: usize,
    knn: usize,
) {
    let x: Vec<T> = to_t(xf);
    let got = run_cluster(dev, &x, noise, b, m, d, k, knn);
    for bi in 0..b {
        let xs = &xf[bi * m * d..(bi + 1) * m * d];
        let zs = noise.map(|z| &z[bi * m..(bi + 1) * m]);
        let what = format!(
            "sample {bi} (b {b}, m {m}, d {d}, k {k}, knn {knn}, {}, {})",
            T::DTYPE.suffix(),
            dev.name()
        );
        let dr = cpu::dpcknn::distances(xs, m, d);
        assert_eq!(
            &got.dist[bi * m * m..(bi + 1) * m * m],
            &dr[..],
            "dist {what}"
        );
        let want = cpu::dpcknn::cluster(xs, m, d, k, knn, zs).expect("reference");
        // The density is exact on the shim (same expf); the GPU's expf is within 2 ulp.
        for u in 0..m {
            let g = got.density[bi * m + u] as f64;
            let w = {
                let mut row = dr[u * m..(u + 1) * m].to_vec();
                row.sort_by(|a, b| a.total_cmp(b));
                let mean = row[..knn].iter().map(|v| v * v).sum::<f32>() / knn as f32;
                (-mean).exp() + zs.map_or(0.0, |z| z[u])
            } as f64;
            assert!(close(g, w, 0.0, 3e-7), "density[{u}] {g} vs {w} {what}");
        }
        // On the shim the densities are the reference's bit for bit. On a GPU they may differ
        // by an ulp, which reorders exact ties of δ·ρ: there the selection is checked against
        // the reference's selection from the GPU's own densities.
        let dens = &got.density[bi * m..(bi + 1) * m];
        let want = if dev.name().starts_with("host shim") {
            want
        } else {
            cpu::dpcknn::cluster_from_density(&dr, dens, m, k).expect("reference")
        };
        assert_eq!(
            &got.centers[bi * k..(bi + 1) * k],
            &want.centers[..],
            "centres {what}"
        );
        assert_eq!(
            &got.idx[bi * m..(bi + 1) * m],
            &want.idx_cluster[..],
            "idx_cluster {what}"
        );
    }
}

/// Gaussian data: distances within the f32 rounding of the matmul form.
fn gaussian_distances<D: Device, T: Element>(dev: &D, b: usize, m: usize, d: usize, seed: u64) {
    let mut rng = TRng(seed);
    let x: Vec<T> = rng.normals(b * m * d);
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let got = run_cluster(dev, &x, None, b, m, d, 1.min(m), 1);
    for bi in 0..b {
        let xs = &xf[bi * m * d..(bi + 1) * m * d];
        let dr = cpu::dpcknn::distances(xs, m, d);
        let norm = |u: usize| {
            xs[u * d..(u + 1) * d]
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
        };
        for u in 0..m {
            for v in 0..m {
                let (g, w) = (
                    got.dist[bi * m * m + u * m + v] as f64,
                    dr[u * m + v] as f64,
                );
                let tol = 1e-5 * (norm(u) + norm(v)) / d as f64 + 1e-12;
                assert!(
                    (g * g - w * w).abs() <= tol,
                    "dist[{bi}, {u}, {v}] {g} vs {w} (m {m}, d {d}, {})",
                    dev.name()
                );
            }
        }
    }
}

fn merge_case<D: Device, T: Element>(
    dev: &D,
    b: usize,
    m: usize,
    d: usize,
    k: usize,
    weighted: bool,
    seed: u64,
) {
    let mut rng = TRng(seed);
    let x: Vec<T> = rng.normals(b * m * d);
    let xf: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let idx: Vec<u32> = (0..b * m).map(|_| rng.below(k) as u32).collect();
    let w: Vec<f32> = (0..b * m).map(|_| rng.normal().exp() as f32).collect();
    let (xb, ib, wb) = (up(dev, &x), up(dev, &idx), up(dev, &w));
    let mut out = sentinel(dev, b * k * d, T::from_f32(f32::NAN));
    ops::dpcknn::merge(dev, &xb, b, m, d, &ib, k, weighted.then_some(&wb), &mut out)
        .expect("kernel");
    let got = down(dev, &out);
    let (atol, rtol) = tol::<T>();
    for bi in 0..b {
        let mut want = vec![0f32; k * d];
        cpu::dpcknn::merge(
            &xf[bi * m * d..(bi + 1) * m * d],
            m,
            d,
            &idx[bi * m..(bi + 1) * m],
            k,
            weighted.then(|| &w[bi * m..(bi + 1) * m]),
            &mut want,
        );
        let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        assert_close(
            &format!("merge sample {bi} (m {m}, d {d}, k {k}, {})", dev.name()),
            &got[bi * k * d..(bi + 1) * k * d],
            &want,
            atol,
            rtol,
        );
    }
}

fn case() -> impl Strategy<Value = (usize, usize, usize, usize, usize, bool, bool, u64)> {
    let ms = prop_oneof![1usize..30, Just(25usize), Just(26), 30usize..70];
    (
        1usize..3,
        ms,
        1usize..24,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_flat_map(|(b, m, d, dup, noisy, seed)| {
            let ks = prop_oneof![Just(1usize), Just(m), 1..=m];
            let knns = prop_oneof![Just(1usize), Just(5.min(m)), Just(m.min(16)), 1..=m.min(16)];
            (
                Just(b),
                Just(m),
                Just(d),
                ks,
                knns,
                Just(dup),
                Just(noisy),
                Just(seed),
            )
        })
}

fn run_exact<D: Device>(
    dev: &D,
    (b, m, d, k, knn, dup, noisy, seed): (usize, usize, usize, usize, usize, bool, bool, u64),
    dt: u8,
) {
    let mut rng = TRng(seed);
    let xf = int_tokens(&mut rng, b, m, d, dup);
    let noise: Option<Vec<f32>> =
        noisy.then(|| (0..b * m).map(|_| rng.uniform() as f32 * 1e-6).collect());
    let z = noise.as_deref();
    match dt {
        0 => exact_case::<D, f32>(dev, &xf, z, b, m, d, k, knn),
        1 => exact_case::<D, f16>(dev, &xf, z, b, m, d, k, knn),
        _ => exact_case::<D, bf16>(dev, &xf, z, b, m, d, k, knn),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn cluster_matches_reference_on_integer_data(c in case(), dt in 0u8..3) {
        run_exact(&clca::HostShim, c, dt);
    }

    #[test]
    fn merge_matches_reference(b in 1usize..3, m in 1usize..60, d in 1usize..40, kf in 0.0f64..1.0,
                               weighted in any::<bool>(), dt in 0u8..3, seed in any::<u64>()) {
        let k = 1 + ((m - 1) as f64 * kf) as usize;
        match dt {
            0 => merge_case::<_, f32>(&clca::HostShim, b, m, d, k, weighted, seed),
            1 => merge_case::<_, f16>(&clca::HostShim, b, m, d, k, weighted, seed),
            _ => merge_case::<_, bf16>(&clca::HostShim, b, m, d, k, weighted, seed),
        }
    }
}

#[cfg(feature = "cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn gpu_cluster_matches_reference_on_integer_data(c in case(), dt in 0u8..3) {
        if let Some(dev) = gpu() {
            run_exact(dev, c, dt);
        }
    }
}

fn fixed_cases<D: Device>(dev: &D) {
    // Gaussian distances, direct (m ≤ 25) and matmul form, several tiles.
    gaussian_distances::<D, f32>(dev, 2, 20, 33, 1);
    gaussian_distances::<D, f32>(dev, 1, 70, 40, 2);
    gaussian_distances::<D, bf16>(dev, 1, 37, 17, 3);
    // All tokens equal: every density ties, centres are the first k, all join centre 0
    // except the other centres themselves.
    exact_case::<D, f32>(dev, &[1.0; 30 * 4], None, 1, 30, 4, 3, 5);
    exact_case::<D, f32>(dev, &[1.0; 8 * 3], None, 1, 8, 3, 8, 8);
    // A larger sample (tiles past one block of rows).
    let mut rng = TRng(4);
    let xf = int_tokens(&mut rng, 1, 150, 20, false);
    exact_case::<D, f32>(dev, &xf, None, 1, 150, 20, 15, 5);
    merge_case::<D, f32>(dev, 1, 300, 70, 30, true, 9);
}

#[test]
fn fixed_shapes_and_ties() {
    on_devices!(fixed_cases);
}

#[test]
fn bad_arguments_are_errors() {
    let dev = clca::HostShim;
    let x = up(&dev, &[1.0f32; 40]);
    let mut ws = ops::dpcknn::DpcWorkspace::new(&dev, 1, 20, 3).expect("ws");
    let mut idx = dev.zeros::<u32>(20).expect("zeros");
    let mut c = dev.zeros::<u32>(3).expect("zeros");
    let e = ops::dpcknn::cluster(&dev, &x, 1, 20, 2, 3, 17, None, &mut ws, &mut idx, &mut c)
        .expect_err("knn > 16");
    assert!(matches!(e, clca::Error::LaunchLimit { .. }), "{e}");
    let e = ops::dpcknn::cluster(&dev, &x, 1, 20, 2, 21, 5, None, &mut ws, &mut idx, &mut c)
        .expect_err("k > m");
    assert!(e.to_string().contains("clusters"), "{e}");
    let mut ws2 = ops::dpcknn::DpcWorkspace::new(&dev, 1, 20, 4).expect("ws");
    let e = ops::dpcknn::cluster(&dev, &x, 1, 20, 2, 3, 5, None, &mut ws2, &mut idx, &mut c)
        .expect_err("workspace for another k");
    assert!(matches!(e, clca::Error::Shape { arg: "ws", .. }), "{e}");
    assert!(ops::dpcknn::DpcWorkspace::new(&dev, 1, 3, 4).is_err());
}
