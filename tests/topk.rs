#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! Top-k selection kernel vs the CPU reference, on the host shim (and the GPU when present).
mod common;
use clca::{bf16, cpu, f16, ops, Device, Element};
use common::*;
use proptest::prelude::*;

const SENTINEL: u32 = 0xDEAD_BEEF;

fn run_case<D: Device, T: Element>(dev: &D, x: &[T], rows: usize, n: usize, k: usize) {
    let (want_idx, want_compl) = cpu::topk::topk_select(x, rows, n, k).expect("reference");
    let xb = up(dev, x);
    let mut idx = sentinel(dev, rows * k, SENTINEL);
    let mut compl = sentinel(dev, rows * (n - k), SENTINEL);
    ops::topk::topk_select(dev, &xb, rows, n, k, &mut idx, &mut compl).expect("kernel");
    assert_eq!(
        down(dev, &idx),
        want_idx,
        "idx (rows {rows}, n {n}, k {k}, {})",
        dev.name()
    );
    assert_eq!(
        down(dev, &compl),
        want_compl,
        "compl (rows {rows}, n {n}, k {k})"
    );
}

/// Value generators: smooth, heavy ties, and IEEE specials.
fn values(rng: &mut TRng, len: usize, mode: u8) -> Vec<f32> {
    (0..len)
        .map(|_| match mode {
            0 => rng.normal() as f32,
            1 => rng.below(4) as f32 * 0.25,
            _ => match rng.below(9) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 => 0.0,
                4 => -0.0,
                5 => f32::MIN_POSITIVE,
                6 => -f32::MAX,
                _ => rng.normal() as f32,
            },
        })
        .collect()
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..70,
        Just(1023usize),
        Just(1024),
        Just(1025),
        Just(786),
        Just(257),
        Just(2053)
    ]
}

fn case() -> impl Strategy<Value = (usize, usize, usize, u8, u64)> {
    (1usize..4, sizes(), 0u8..3, any::<u64>()).prop_flat_map(|(rows, n, mode, seed)| {
        let ks = prop_oneof![
            Just(0usize),
            Just(1.min(n)),
            Just(n / 2),
            Just(n.saturating_sub(1)),
            Just(n),
            0..=n
        ];
        (Just(rows), Just(n), ks, Just(mode), Just(seed))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn shim_matches_reference((rows, n, k, mode, seed) in case(), dt in 0u8..3) {
        let mut rng = TRng(seed);
        let v = values(&mut rng, rows * n, mode);
        match dt {
            0 => run_case(&clca::HostShim, &v, rows, n, k),
            1 => run_case(&clca::HostShim, &v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(), rows, n, k),
            _ => run_case(&clca::HostShim, &v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(), rows, n, k),
        }
    }
}

#[cfg(feature = "cuda")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn gpu_matches_reference((rows, n, k, mode, seed) in case()) {
        if let Some(dev) = gpu() {
            let mut rng = TRng(seed);
            let v = values(&mut rng, rows * n, mode);
            run_case(dev, &v, rows, n, k);
            run_case(dev, &v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(), rows, n, k);
        }
    }
}

fn contract_examples<D: Device>(dev: &D) {
    // NaN above +inf, ±0 tie (lower index first), ties by lower index.
    let x = [
        0.5f32,
        3.0,
        -1.0,
        3.0,
        2.0,
        f32::NAN,
        -0.0,
        0.0,
        f32::INFINITY,
        f32::NAN,
    ];
    run_case(dev, &x, 1, 10, 10);
    let (idx, compl) = cpu::topk::topk_select(&x, 1, 10, 4).expect("reference");
    assert_eq!(idx, vec![5, 9, 8, 1]);
    assert_eq!(compl, vec![0, 2, 3, 4, 6, 7]);
    let (idx, _) = cpu::topk::topk_select(&x, 1, 10, 9).expect("reference");
    assert_eq!(&idx[6..], &[0, 6, 7], "-0.0 and +0.0 tie, broken by index");
    // All equal: the first k by index.
    run_case(dev, &[1.0f32; 40], 1, 40, 7);
    let (idx, compl) = cpu::topk::topk_select(&[1.0f32; 5], 1, 5, 2).expect("reference");
    assert_eq!((idx, compl), (vec![0, 1], vec![2, 3, 4]));
}

#[test]
fn contract() {
    on_devices!(contract_examples);
}

/// Rows far longer than a block, and k above the shared-memory sort capacity (rank path).
fn long_rows<D: Device>(dev: &D) {
    let mut rng = TRng(7);
    for &(n, k, mode) in &[
        (5000usize, 79usize, 0u8),
        (3136, 2500, 1),
        (3000, 2049, 0),
        (2100, 2100, 2),
        (4096, 2048, 1),
    ] {
        let v = values(&mut rng, n, mode);
        run_case(dev, &v, 1, n, k);
    }
}

#[test]
fn long_rows_and_large_k() {
    on_devices!(long_rows);
}

/// Many rows: the grid is capped and the kernel loops over rows.
#[test]
fn many_rows_grid_stride() {
    let mut rng = TRng(11);
    let (rows, n, k) = (300usize, 17usize, 2usize);
    let v = values(&mut rng, rows * n, 1);
    run_case(&clca::HostShim, &v, rows, n, k);
}

#[test]
fn bad_arguments_are_errors() {
    let dev = clca::HostShim;
    let x = up(&dev, &[1.0f32; 10]);
    let mut idx = dev.zeros::<u32>(11).expect("zeros");
    let mut compl = dev.zeros::<u32>(0).expect("zeros");
    let e = ops::topk::topk_select(&dev, &x, 1, 10, 11, &mut idx, &mut compl).expect_err("k > n");
    assert!(e.to_string().contains("`k`"), "{e}");
    let mut idx = dev.zeros::<u32>(3).expect("zeros");
    let mut compl = dev.zeros::<u32>(7).expect("zeros");
    let e =
        ops::topk::topk_select(&dev, &x, 2, 10, 3, &mut idx, &mut compl).expect_err("x too short");
    assert!(matches!(e, clca::Error::Shape { arg: "x", .. }), "{e}");
    let mut idx = dev.zeros::<u32>(2).expect("zeros");
    let e = ops::topk::topk_select(&dev, &x, 1, 10, 3, &mut idx, &mut compl)
        .expect_err("idx too short");
    assert!(matches!(e, clca::Error::Shape { arg: "idx", .. }), "{e}");
}
