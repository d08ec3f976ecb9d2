#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! The fused attention kernel (kernels/flash.cu) against an f64 oracle: outputs, the cls row's
//! probabilities, ToMe's size bias, masking of the ragged last tiles, long rows, every head
//! dimension it is built for, f16 and bf16. On the host shim the tensor-core instructions run
//! through models that follow the PTX fragment layouts lane by lane, so these tests check the
//! kernel's fragment bookkeeping; on a GPU the same tests check it on the real instructions.
mod common;
use clca::ops::attention::{flash_launch, flash_launch_queries, FlashQueries, FlashTile};
use clca::{bf16, f16, Buffer, Device, Element};
use common::*;
use proptest::prelude::*;

/// f64 oracle: o [b, n, h*hd] and the cls row's probabilities [b, h, n] from qkv [b, n, 3, h, hd]
/// as stored in T, with q·scale rounded to T (as the kernel and timm under autocast do).
fn oracle<T: Element>(
    qkv: &[T],
    sizes: Option<&[f32]>,
    b: usize,
    n: usize,
    h: usize,
    hd: usize,
) -> (Vec<f64>, Vec<f64>) {
    let d = h * hd;
    let scale = (hd as f64).powf(-0.5) as f32;
    let at = |bi: usize, t: usize, which: usize, hi: usize, j: usize| {
        qkv[((bi * n + t) * 3 + which) * d + hi * hd + j].to_f32()
    };
    let mut o = vec![0f64; b * n * d];
    let mut cls = vec![0f64; b * h * n];
    for bi in 0..b {
        for hi in 0..h {
            for q in 0..n {
                let qs: Vec<f64> = (0..hd)
                    .map(|j| T::from_f32(at(bi, q, 0, hi, j) * scale).to_f32() as f64)
                    .collect();
                let l: Vec<f64> = (0..n)
                    .map(|t| {
                        let dot: f64 = (0..hd).map(|j| qs[j] * at(bi, t, 1, hi, j) as f64).sum();
                        dot + sizes.map_or(0.0, |s| (s[bi * n + t] as f64).ln())
                    })
                    .collect();
                let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
                let s: f64 = e.iter().sum();
                for j in 0..hd {
                    o[(bi * n + q) * d + hi * hd + j] =
                        (0..n).map(|t| e[t] / s * at(bi, t, 2, hi, j) as f64).sum();
                }
                if q == 0 {
                    for t in 0..n {
                        cls[(bi * h + hi) * n + t] = e[t] / s;
                    }
                }
            }
        }
    }
    (o, cls)
}

fn run<D: Device, T: Element>(
    dev: &D,
    b: usize,
    n: usize,
    h: usize,
    hd: usize,
    with_sizes: bool,
    amp: f32,
    seed: u64,
) {
    let d = h * hd;
    let mut rng = TRng(seed);
    let qkv: Vec<T> = (0..b * n * 3 * d)
        .map(|_| T::from_f32(amp * rng.normal() as f32))
        .collect();
    let sizes: Vec<f32> = (0..b * n).map(|_| (1 + rng.below(5)) as f32).collect();
    let sizes = with_sizes.then_some(sizes);
    let (want_o, want_cls) = oracle(&qkv, sizes.as_deref(), b, n, h, hd);

    let dq = up(dev, &qkv);
    let ds = sizes.as_ref().map(|s| up(dev, s));
    let mut dout = sentinel(dev, b * n * d, T::from_f32(f32::NAN));
    let mut dcls = sentinel(dev, b * h * n, f32::NAN);
    let launch = |tile: FlashTile, dout: &mut D::Buf<T>, dcls: &mut D::Buf<f32>| {
        let l = flash_launch(
            T::DTYPE,
            tile,
            dq.addr(),
            b,
            n,
            h,
            hd,
            ds.as_ref().map_or(0, |s| s.addr()),
            dout.addr_mut(),
            dcls.addr_mut(),
        )
        .expect("launch");
        // SAFETY: every buffer holds the extents the kernel's contract names.
        unsafe { dev.launch(&l) }.expect("flash attention");
        dev.synchronize().expect("sync");
    };
    launch(FlashTile::Q64, &mut dout, &mut dcls);
    let what = format!(
        "{} b{b} n{n} h{h} hd{hd} sizes {with_sizes} amp {amp}",
        T::DTYPE
    );
    // One rounding of P to T inside, one of O on the way out: twice the storage tolerance.
    let (atol, rtol) = tol::<T>();
    let vmax = want_o.iter().fold(0f64, |a, v| a.max(v.abs())).max(1e-3);
    assert_close(
        &format!("out {what}"),
        &down(dev, &dout),
        &want_o,
        2.0 * atol * vmax,
        2.0 * rtol,
    );
    // The cls row is f32 from exact 16-bit products: only the summation order differs.
    assert_close(
        &format!("cls {what}"),
        &down(dev, &dcls),
        &want_cls,
        1e-6,
        1e-4,
    );
    // Subsets of the queries: each computed query gives the same bits as in the whole launch.
    query_subsets(
        dev,
        &dq,
        ds.as_ref().map_or(0, |s| s.addr()),
        (b, n, h, hd),
        &down(dev, &dout),
        &down(dev, &dcls),
        seed,
        &what,
    );
    // The 128-query tile computes each query the same way: the same bits.
    if FlashTile::Q128.head_dims().contains(&hd) {
        let mut wout = sentinel(dev, b * n * d, T::from_f32(f32::NAN));
        let mut wcls = sentinel(dev, b * h * n, f32::NAN);
        launch(FlashTile::Q128, &mut wout, &mut wcls);
        let bits = |v: Vec<T>| -> Vec<u8> { bytemuck::cast_slice(&v).to_vec() };
        assert!(
            bits(down(dev, &wout)) == bits(down(dev, &dout)),
            "Q128 out {what}"
        );
        let fb = |v: Vec<f32>| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
        assert_eq!(
            fb(down(dev, &wcls)),
            fb(down(dev, &dcls)),
            "Q128 cls {what}"
        );
    }
    // Head dimension 128 has no 128-query tile: an error, not a launch.
    if hd == 128 {
        let r = flash_launch(T::DTYPE, FlashTile::Q128, dq.addr(), b, n, h, hd, 0, 0, 0);
        assert!(matches!(r, Err(clca::Error::Unsupported { .. })), "{what}");
    }
}

/// `FlashQueries::FirstTile` (as a Top-K layer's cls pass runs it) and
/// `FlashQueries::Selected` (cls and k random distinct tokens into compact rows)
/// against the whole launch's `full` output and cls rows, bit for bit, on both tiles; rows not
/// asked for stay unwritten.
#[allow(clippy::too_many_arguments)]
fn query_subsets<D: Device, T: Element>(
    dev: &D,
    dq: &D::Buf<T>,
    sizes: u64,
    (b, n, h, hd): (usize, usize, usize, usize),
    full: &[T],
    full_cls: &[f32],
    seed: u64,
    what: &str,
) {
    let d = h * hd;
    let bits = |v: &[T]| -> Vec<u8> { bytemuck::cast_slice(v).to_vec() };
    let tiles = [FlashTile::Q64, FlashTile::Q128];
    for tile in tiles.into_iter().filter(|t| t.head_dims().contains(&hd)) {
        {
            let rows = n.min(tile.queries());
            let mut out = sentinel(dev, b * n * d, T::from_f32(f32::NAN));
            let mut cls = sentinel(dev, b * h * n, f32::NAN);
            let l = flash_launch_queries(
                T::DTYPE,
                tile,
                dq.addr(),
                b,
                n,
                h,
                hd,
                sizes,
                FlashQueries::FirstTile,
                out.addr_mut(),
                cls.addr_mut(),
            )
            .expect("launch");
            // SAFETY: qkv [b, n, 3d], out [b, n, d], cls [b, h, n].
            unsafe { dev.launch(&l) }.expect("first tile");
            let (got, got_cls) = (down(dev, &out), down(dev, &cls));
            let cb = |v: &[f32]| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
            assert_eq!(cb(&got_cls), cb(full_cls), "{tile:?} first tile cls {what}");
            for bi in 0..b {
                for t in 0..n {
                    let (g, f) = (
                        &got[(bi * n + t) * d..][..d],
                        &full[(bi * n + t) * d..][..d],
                    );
                    if t < rows {
                        assert!(bits(g) == bits(f), "{tile:?} first tile row {t} {what}");
                    } else {
                        assert!(
                            g.iter().all(|v| v.to_f32().is_nan()),
                            "{tile:?} first tile wrote row {t} {what}"
                        );
                    }
                }
            }
        }
        let mut rng = TRng(seed ^ 0x5e1ec7);
        for k in [0, (n - 1) / 3, n - 1] {
            // k distinct non-cls tokens in a random order (as the selection's, by score).
            let mut idx: Vec<u32> = Vec::with_capacity(b * k);
            for _ in 0..b {
                let mut all: Vec<u32> = (0..(n - 1) as u32).collect();
                for j in (1..all.len()).rev() {
                    all.swap(j, rng.below(j + 1));
                }
                idx.extend_from_slice(&all[..k]);
            }
            let di = up(dev, &if idx.is_empty() { vec![0] } else { idx.clone() });
            let mut out = sentinel(dev, b * (k + 1) * d + d, T::from_f32(f32::NAN));
            let l = flash_launch_queries(
                T::DTYPE,
                tile,
                dq.addr(),
                b,
                n,
                h,
                hd,
                sizes,
                FlashQueries::Selected { idx: di.addr(), k },
                out.addr_mut(),
                0,
            )
            .expect("launch");
            // SAFETY: qkv [b, n, 3d], idx [b, k] (< n − 1), out [b, k + 1, d] (+ a guard row).
            unsafe { dev.launch(&l) }.expect("selected rows");
            let got = down(dev, &out);
            for bi in 0..b {
                for j in 0..=k {
                    let t = if j == 0 {
                        0
                    } else {
                        1 + idx[bi * k + j - 1] as usize
                    };
                    assert!(
                        bits(&got[(bi * (k + 1) + j) * d..][..d])
                            == bits(&full[(bi * n + t) * d..][..d]),
                        "{tile:?} Selected k {k}: row {j} (token {t}) {what}"
                    );
                }
            }
            assert!(
                got[b * (k + 1) * d..].iter().all(|v| v.to_f32().is_nan()),
                "{tile:?} Selected k {k} wrote past its rows {what}"
            );
        }
    }
    // An out-of-range request is an error, not a launch: k = n selects more tokens than there
    // are non-cls ones.
    let q = FlashQueries::Selected { idx: 0, k: n };
    let r = flash_launch_queries(T::DTYPE, FlashTile::Q64, dq.addr(), b, n, h, hd, 0, q, 0, 0);
    assert!(
        matches!(r, Err(clca::Error::InvalidArgument { .. })),
        "{q:?} {what}"
    );
}

fn cases<D: Device>(dev: &D) {
    // Ragged tiles (n around 64), one token, every head dimension, both dtypes.
    for (i, &(b, n, h, hd)) in [
        (1, 1, 1, 32),
        (2, 2, 3, 32),
        (1, 17, 2, 64),
        (2, 64, 1, 64),
        (1, 65, 2, 32),
        (1, 130, 1, 128),
        (2, 66, 3, 32),
    ]
    .iter()
    .enumerate()
    {
        let seed = 11 + i as u64;
        run::<D, bf16>(dev, b, n, h, hd, false, 1.0, seed);
        run::<D, f16>(dev, b, n, h, hd, i % 2 == 1, 1.0, seed);
        run::<D, bf16>(dev, b, n, h, hd, true, 1.0, seed + 100);
    }
}

#[test]
fn fused_attention_matches_the_oracle() {
    on_devices!(cases);
}

fn long_and_peaked<D: Device>(dev: &D) {
    // A row longer than 1024 keys (18 key tiles), and large logits (amp 4: |logit| up to ~60),
    // where a softmax without the running max would overflow.
    run::<D, bf16>(dev, 1, 1100, 1, 32, true, 1.0, 7);
    run::<D, f16>(dev, 1, 200, 2, 64, false, 4.0, 8);
    run::<D, bf16>(dev, 1, 200, 2, 64, true, 4.0, 9);
}

#[test]
fn fused_attention_long_rows_and_large_logits() {
    on_devices!(long_and_peaked);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn fused_attention_random_shapes(
        b in 1usize..3, n in 1usize..150, h in 1usize..3, hdi in 0usize..2,
        sizes in any::<bool>(), half in any::<bool>(), seed in any::<u64>(),
    ) {
        let hd = [32, 64][hdi];
        if half {
            run::<_, f16>(&clca::HostShim, b, n, h, hd, sizes, 1.0, seed);
        } else {
            run::<_, bf16>(&clca::HostShim, b, n, h, hd, sizes, 1.0, seed);
        }
    }
}
