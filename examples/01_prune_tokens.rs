//! 01 — Prune tokens with one op: EViT's top-k + fused token, on the CPU reference and through
//! the CUDA kernels (run on the CPU by the host shim; on a GPU with `--features cuda`).
//!
//! `cargo run --example 01_prune_tokens`
use clca::ops::{keep_count, prune, topk};
use clca::{cpu, Device, HostShim};

fn main() -> clca::Result<()> {
    // Two images, 786 tokens (cls + 784 patches + 1 clr) of width 64, keep rate 0.1.
    let (b, n, c) = (2, 786, 64);
    let k = keep_count(0.1, n)?; // ⌈0.1·785⌉ = 79
    let mut state = 1u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let x: Vec<f32> = (0..b * n * c).map(|_| rnd()).collect();
    // The ranking scores of the non-cls tokens (the CLS-attention row, mean over heads).
    let scores: Vec<f32> = (0..b * (n - 1)).map(|_| rnd().abs()).collect();

    // CPU reference: top-k (descending, ties by lower index) and the EViT prune.
    let (idx, compl) = cpu::topk::topk_select(&scores, b, n - 1, k)?;
    let want = cpu::prune::evit_prune(&x, b, n, c, &idx, k, &compl, &scores)?;

    // The same through the kernels on a device.
    let dev = HostShim;
    let xd = dev.upload(&x)?;
    let sd = dev.upload(&scores)?;
    let mut idx_d = dev.zeros::<u32>(b * k)?;
    let mut compl_d = dev.zeros::<u32>(b * (n - 1 - k))?;
    topk::topk_select(&dev, &sd, b, n - 1, k, &mut idx_d, &mut compl_d)?;
    let mut out = dev.zeros::<f32>(b * (k + 2) * c)?;
    prune::evit_prune(&dev, &xd, b, n, c, &idx_d, k, &compl_d, &sd, &mut out)?;
    let got = dev.download(&out)?;

    let same_idx = dev.download(&idx_d)? == idx;
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, w)| (a - w).abs())
        .fold(0f32, f32::max);
    println!(
        "EViT prune of {b}×{n} tokens (width {c}) keeping {k} + 1 fused: [cls, kept…, fused] = {} tokens",
        k + 2
    );
    println!(
        "kept indices identical on {}: {same_idx}; max |Δ| = {err:e}",
        dev.name()
    );
    if !same_idx || err > 1e-5 {
        return Err(clca::Error::Plan(
            "the kernel and the reference disagree".into(),
        ));
    }
    Ok(())
}
