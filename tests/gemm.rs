//! The device GEMMs the forward calls, against an f64 oracle: `gemm_nt` (y = x·wᵀ) and
//! `gemm_nt_bias` (y = x·wᵀ + b, the bias added before y's one rounding), in f32, f16 and bf16,
//! on the host shim (the tiled `linear_*` kernel) and on a GPU when present (cuBLAS, and
//! cuBLASLt's bias epilogue where it loads). Each output within the storage type's rounding of
//! Σ|x·w| + |b|; nothing written past y (a NaN guard after it).
mod common;
use clca::{bf16, f16, Buffer, Device, Element};
use common::*;
use proptest::prelude::*;

fn check<D: Device, T: Element>(dev: &D, m: usize, k: usize, n: usize, seed: u64) {
    let mut rng = TRng(seed);
    let x: Vec<T> = rng.normals(m * k);
    let w: Vec<T> = rng.normals(n * k);
    let b: Vec<T> = rng.normals(n);
    let f = |v: &T| v.to_f32() as f64;
    let mut want = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let (xr, wr) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
            want[i * n + j] = xr.iter().zip(wr).map(|(a, c)| f(a) * f(c)).sum::<f64>();
            mag[i * n + j] = xr
                .iter()
                .zip(wr)
                .map(|(a, c)| (f(a) * f(c)).abs())
                .sum::<f64>();
        }
    }
    let rtol = tol::<T>().1;
    let what = format!("{:?} m {m} k {k} n {n} on {}", T::DTYPE, dev.name());
    let guard = 37;
    let (xb, wb, bb) = (up(dev, &x), up(dev, &w), up(dev, &b));
    let verify = |got: &[T], bias: bool, op: &str| {
        for (e, (g, (o, mg))) in got.iter().zip(want.iter().zip(&mag)).enumerate() {
            let bj = if bias { f(&b[e % n]) } else { 0.0 };
            let (g, o) = (f(g), o + bj);
            assert!(
                (g - o).abs() <= rtol * (mg + bj.abs()) + 1e-30,
                "{op} {what}: y[{e}] = {g}, want {o}"
            );
        }
        assert!(
            got[m * n..].iter().all(|v| v.to_f32().is_nan()),
            "{op} {what}: wrote past y"
        );
    };
    let mut y = sentinel(dev, m * n + guard, T::from_f32(f32::NAN));
    // SAFETY: x [m, k], w [n, k], y [m, n] (+ guard) of T, all live buffers of `dev`.
    unsafe { dev.gemm_nt(T::DTYPE, xb.addr(), m, k, wb.addr(), n, y.addr_mut()) }.expect("gemm_nt");
    verify(&down(dev, &y), false, "gemm_nt");
    let mut y = sentinel(dev, m * n + guard, T::from_f32(f32::NAN));
    // SAFETY: as above; the bias holds n values of T.
    let fused = unsafe {
        dev.gemm_nt_bias(
            T::DTYPE,
            xb.addr(),
            m,
            k,
            wb.addr(),
            n,
            bb.addr(),
            y.addr_mut(),
        )
    }
    .expect("gemm_nt_bias");
    if fused {
        verify(&down(dev, &y), true, "gemm_nt_bias");
    } else {
        // Declined: nothing queued, y untouched (the forward then runs gemm_nt + a bias pass).
        assert!(
            down(dev, &y).iter().all(|v| v.to_f32().is_nan()),
            "{what}: a declined gemm_nt_bias wrote y"
        );
        eprintln!("{what}: gemm_nt_bias declined (no cuBLASLt)");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn shim_matches_oracle(m in prop_oneof![1usize..40, Just(70usize)], k in prop_oneof![1usize..40, Just(130usize)], n in prop_oneof![1usize..40, Just(67usize)], seed in any::<u64>(), dt in 0u8..3) {
        match dt {
            0 => check::<_, f32>(&clca::HostShim, m, k, n, seed),
            1 => check::<_, f16>(&clca::HostShim, m, k, n, seed),
            _ => check::<_, bf16>(&clca::HostShim, m, k, n, seed),
        }
    }
}

/// The forward's shapes at 448 px (the GPU only: the shim runs them too slowly): qkv, proj and
/// fc1 at 786 rows, the pruned blocks' 87 and 17 rows, batch 8's 6288, and odd ones.
fn forward_shapes<D: Device>(dev: &D) {
    let shapes = [
        (786, 768, 2304),
        (786, 768, 768),
        (786, 768, 3072),
        (87, 768, 2304),
        (17, 3072, 768),
        (6288, 768, 2304),
        (1, 768, 2304),
        (33, 100, 70),
    ];
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        let seed = 7 + i as u64;
        check::<_, f32>(dev, m, k, n, seed);
        check::<_, f16>(dev, m, k, n, seed);
        check::<_, bf16>(dev, m, k, n, seed);
    }
}

#[test]
fn forward_shapes_on_a_gpu() {
    #[cfg(feature = "cuda")]
    match common::gpu() {
        Some(d) => forward_shapes(d),
        None if std::env::var_os("CLCA_REQUIRE_GPU").is_some() => {
            panic!(
                "CLCA_REQUIRE_GPU is set but there is no GPU: {}",
                common::gpu_reason()
            )
        }
        None => eprintln!("skipping the GPU: {}", common::gpu_reason()),
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = forward_shapes::<clca::HostShim>;
        eprintln!("skipping the GPU: built without the `cuda` feature");
    }
}
