#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! The fused attention kernel (kernels/flash.cu) against an f64 oracle: outputs, the cls row's
//! probabilities, ToMe's size bias, masking of the ragged last tiles, long rows, every head
//! dimension it is built for, f16 and bf16. On the host shim the tensor-core instructions run
//! through models that follow the PTX fragment layouts lane by lane, so these tests check the
//! kernel's fragment bookkeeping; on a GPU the same tests check it on the real instructions.
mod common;
use clca::ops::attention::{flash_launch, FlashTile};
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
