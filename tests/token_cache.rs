#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! Token cache kernels vs the CPU reference, on random shapes and ranges.
mod common;
use clca::ops::token_cache::{cache_take, recover, tokens_copy, tokens_gather, TakeArgs};
use clca::{bf16, cpu, f16, Device, Element};
use common::*;
use proptest::prelude::*;

fn run<D: Device, T: Element>(
    dev: &D,
    b: usize,
    x_cap: usize,
    n: usize,
    d: usize,
    lo: usize,
    hi: usize,
    gap: bool,
    num_clr: usize,
    seed: u64,
) {
    let mut rng = TRng(seed);
    let x: Vec<T> = rng.normals(b * x_cap * d);
    let cache_cap = 3 + gap as usize + num_clr;
    let slot = 2;
    let a = TakeArgs {
        batch: b,
        x_cap,
        n,
        d,
        pool: lo..hi,
        gap,
        num_clr,
        cache_cap,
        slot,
    };
    let init: Vec<T> = rng.normals(b * cache_cap * d);
    let mut want = init.clone();
    cpu::token_cache::cache_take(&x, &mut want, &a).expect("ref");
    // f64 oracle of the GAP slot
    if gap {
        for bi in 0..b {
            for ch in 0..d {
                let m: f64 = (lo..hi)
                    .map(|t| x[(bi * x_cap + t) * d + ch].to_f32() as f64)
                    .sum::<f64>()
                    / (hi - lo) as f64;
                let g = want[(bi * cache_cap + slot) * d + ch].to_f32() as f64;
                let (atol, rtol) = tol::<T>();
                assert!(close(g, m, atol * 10.0, rtol), "cpu GAP {g} vs {m}");
            }
        }
    }
    let xb = up(dev, &x);
    let mut cb = up(dev, &init);
    cache_take(dev, &xb, &mut cb, &a).expect("kernel");
    let got = down(dev, &cb);
    let want64: Vec<f64> = want.iter().map(|v| v.to_f32() as f64).collect();
    let (atol, rtol) = tol::<T>();
    assert_close("cache_take", &got, &want64, atol, rtol);
    // Slots outside [slot, slot + carriers) are untouched.
    for bi in 0..b {
        for s in (0..cache_cap).filter(|&s| s < slot || s >= slot + a.carriers()) {
            assert_eq!(
                &got[(bi * cache_cap + s) * d..][..d],
                &init[(bi * cache_cap + s) * d..][..d],
                "slot {s} was written"
            );
        }
    }
    // Recover the cache into the tail.
    let count = cache_cap.min(x_cap - n);
    let mut xw = x.clone();
    cpu::token_cache::tokens_copy(&got, cache_cap, 0, &mut xw, x_cap, n, b, count, d).expect("ref");
    let mut xg = up(dev, &x);
    let n2 = recover(dev, &cb, cache_cap, count, &mut xg, x_cap, n, b, d).expect("kernel");
    assert_eq!(n2, n + count);
    assert_eq!(down(dev, &xg), xw, "recover is an exact copy");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn shim_matches_reference(b in 1usize..4, n in 2usize..40, extra in 0usize..8, d in prop_oneof![1usize..40, Just(255usize), Just(257), Just(768)], gap in any::<bool>(), num_clr in 0usize..3, lo_f in 0.0f64..1.0, seed in any::<u64>(), dt in 0u8..3) {
        let num_clr = num_clr.min(n);
        let gap = gap || num_clr == 0;
        let lo = ((n - 1) as f64 * lo_f) as usize;
        let hi = lo + 1 + ((n - lo - 1) as f64 * (1.0 - lo_f)) as usize;
        let x_cap = n + extra;
        match dt {
            0 => run::<_, f32>(&clca::HostShim, b, x_cap, n, d, lo, hi, gap, num_clr, seed),
            1 => run::<_, f16>(&clca::HostShim, b, x_cap, n, d, lo, hi, gap, num_clr, seed),
            _ => run::<_, bf16>(&clca::HostShim, b, x_cap, n, d, lo, hi, gap, num_clr, seed),
        }
    }
}

fn paper<D: Device>(dev: &D) {
    // 448 px: GAP over the 784 patches plus the clr carrier, then recover 6 tokens.
    run::<_, f32>(dev, 2, 792, 786, 768, 1, 785, true, 1, 5);
    run::<_, bf16>(dev, 1, 20, 11, 768, 1, 11, true, 1, 6);
}

#[test]
fn paper_shapes_all_devices() {
    on_devices!(paper);
}

#[test]
fn bad_arguments_are_errors() {
    let dev = clca::HostShim;
    let x = up(&dev, &[0f32; 10 * 4]);
    let mut c = dev.zeros::<f32>(3 * 4).expect("zeros");
    let a = TakeArgs {
        batch: 1,
        x_cap: 10,
        n: 5,
        d: 4,
        pool: 1..1,
        gap: true,
        num_clr: 1,
        cache_cap: 3,
        slot: 0,
    };
    let e = cache_take(&dev, &x, &mut c, &a).expect_err("empty GAP");
    assert!(matches!(e, clca::Error::Plan(_)), "{e}");
    let a = TakeArgs {
        pool: 1..5,
        slot: 2,
        ..a
    };
    let e = cache_take(&dev, &x, &mut c, &a).expect_err("slot overflow");
    assert!(e.to_string().contains("cache_cap"), "{e}");
    let a = TakeArgs {
        n: 11,
        slot: 0,
        ..a
    };
    assert!(cache_take(&dev, &x, &mut c, &a).is_err(), "n > x_cap");
    let mut y = dev.zeros::<f32>(10 * 4).expect("zeros");
    let e = tokens_copy(&dev, &x, 10, 8, &mut y, 10, 0, 1, 3, 4).expect_err("src overflow");
    assert!(e.to_string().contains("src"), "{e}");
}

fn run_gather<D: Device, T: Element>(
    dev: &D,
    b: usize,
    src_cap: usize,
    count: usize,
    dst_off: usize,
    d: usize,
    seed: u64,
) {
    let mut rng = TRng(seed);
    let src: Vec<T> = rng.normals(b * src_cap * d);
    let dst_cap = dst_off + count + 1;
    let init: Vec<T> = rng.normals(b * dst_cap * d);
    // Indices in range, repeated, and some out of range (skipped).
    let stride = count + 2;
    let idx: Vec<u32> = (0..b * stride)
        .map(|_| (rng.next_u64() % (src_cap as u64 + 2)) as u32)
        .collect();
    let mut want = init.clone();
    cpu::token_cache::tokens_gather(
        &src, src_cap, &idx, stride, &mut want, dst_cap, dst_off, b, count, d,
    )
    .expect("ref");
    let (sb, ib) = (up(dev, &src), up(dev, &idx));
    let mut db = up(dev, &init);
    tokens_gather(
        dev, &sb, src_cap, &ib, stride, &mut db, dst_cap, dst_off, b, count, d,
    )
    .expect("kernel");
    let got: Vec<T> = down(dev, &db);
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, w)| a.to_f32().to_bits() == w.to_f32().to_bits()),
        "tokens_gather b {b} src_cap {src_cap} count {count} off {dst_off} d {d} on {}",
        dev.name()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn gather_matches_reference(
        b in 1usize..4,
        src_cap in 1usize..40,
        count in 0usize..30,
        dst_off in 0usize..3,
        d in prop_oneof![Just(1usize), Just(7), Just(96), Just(1025)],
        seed in any::<u64>(),
    ) {
        let dev = clca::HostShim;
        run_gather::<_, f32>(&dev, b, src_cap, count, dst_off, d, seed);
        run_gather::<_, f16>(&dev, b, src_cap, count, dst_off, d, seed);
        run_gather::<_, bf16>(&dev, b, src_cap, count, dst_off, d, seed);
    }
}

#[test]
fn gather_bad_arguments_are_errors() {
    let dev = clca::HostShim;
    let src = dev.upload(&[0f32; 8]).expect("up");
    let idx = dev.upload(&[0u32; 2]).expect("up");
    let mut dst = dev.upload(&[0f32; 8]).expect("up");
    // Three indices read from a buffer of two.
    assert!(tokens_gather(&dev, &src, 4, &idx, 0, &mut dst, 4, 1, 1, 3, 2).is_err());
    // The destination range past its capacity.
    assert!(tokens_gather(&dev, &src, 4, &idx, 0, &mut dst, 4, 3, 1, 2, 2).is_err());
    assert!(tokens_gather(&dev, &src, 4, &idx, 0, &mut dst, 4, 2, 1, 2, 2).is_ok());
}
