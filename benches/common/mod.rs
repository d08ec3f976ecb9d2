//! Shared by the bench targets (each `benches/*.rs` includes it with `mod common;`): the
//! criterion configuration, the paper's shapes, a seeded PRNG and the CUDA device probe.
//! Not a bench target itself (cargo only auto-discovers `benches/*.rs` and `benches/*/main.rs`).
#![allow(dead_code)]

use criterion::Criterion;
use std::time::Duration;

/// Small enough that `cargo bench` finishes in a few minutes on a 2-core VM:
/// 10 samples, 1 s warm-up, 0.5 s measurement per benchmark (criterion switches the slow ones to
/// flat sampling by itself).
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_millis(500))
        .nresamples(10_000)
        .without_plots()
        .configure_from_args()
}

/// Embedding width of ViT-B/16.
pub const C: usize = 768;
/// Heads of ViT-B/16.
pub const H: usize = 12;
/// Head dimension of ViT-B/16.
pub const HD: usize = 64;
/// Batch sizes.
pub const BATCHES: [usize; 3] = [1, 8, 64];

/// The three pruning layers of EViT + CLCA at 448 px (blocks 3, 6, 9; kr = 0.1):
/// tokens in (cls included) and tokens kept.
#[derive(Clone, Copy, Debug)]
pub struct Layer {
    pub n: usize,
    pub k: usize,
}

pub const LAYERS: [Layer; 3] = [
    Layer { n: 786, k: 79 },
    Layer { n: 87, k: 9 },
    Layer { n: 17, k: 2 },
];

/// Every (batch, layer) pair with its parameter id, e.g. `B8_N786`.
pub fn shapes() -> Vec<(usize, Layer, String)> {
    let mut v = Vec::new();
    for l in LAYERS {
        for b in BATCHES {
            v.push((b, l, format!("B{b}_N{}", l.n)));
        }
    }
    v
}

/// The library's seeded generator, with the benches' helpers on top.
pub struct Rng(clca::vit::random::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(clca::vit::random::Rng::new(seed, 0))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f32 {
        2.0 * self.unit() - 1.0
    }
    pub fn vec_sym(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.sym()).collect()
    }
    pub fn vec_unit(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.unit()).collect()
    }
}

/// `rows` random softmax rows of length `n` (peaked like real CLS attention).
pub fn softmax_rows(rng: &mut Rng, rows: usize, n: usize) -> Vec<f32> {
    let mut p = vec![0f32; rows * n];
    for row in p.chunks_mut(n.max(1)) {
        softmax_fill(rng, row);
    }
    p
}

fn softmax_fill(rng: &mut Rng, row: &mut [f32]) {
    let mut s = 0f32;
    for v in row.iter_mut() {
        *v = (3.0 * rng.sym()).exp();
        s += *v;
    }
    for v in row.iter_mut() {
        *v /= s;
    }
}

/// Attention probabilities [batch, heads, n, n] where only row 0 of each head (the cls query,
/// the only row the score ops read) holds a random softmax row; the other rows stay zero, which
/// keeps the 64×12×786×786 tensor cheap to build (the zeroed pages are never touched on the CPU).
pub fn cls_probs(rng: &mut Rng, batch: usize, heads: usize, n: usize) -> Vec<f32> {
    let mut p = vec![0f32; batch * heads * n * n];
    for bh in 0..batch * heads {
        softmax_fill(rng, &mut p[bh * n * n..][..n]);
    }
    p
}

#[allow(unused_imports)] // not every bench target converts
pub use clca::dtype::from_f32_slice as cvt;

/// 1/sqrt(head_dim), the attention scale.
pub fn scale() -> f32 {
    1.0 / (HD as f32).sqrt()
}

/// The GPU, or `None` after printing once why the CUDA benches are skipped.
#[cfg(feature = "cuda")]
pub fn cuda() -> Option<clca::cuda::CudaDevice> {
    match clca::cuda::try_default() {
        Ok(d) => Some(d),
        Err(why) => {
            println!("skipping CUDA benches: {why}");
            None
        }
    }
}

/// Says once why there are no CUDA benches in this build.
#[cfg(not(feature = "cuda"))]
pub fn no_cuda() {
    println!("skipping CUDA benches: built without the `cuda` feature (use `cargo bench --features cuda`)");
}

/// Times `iters` calls of `f` on a device with one synchronize at the end of the sample
/// (for `Bencher::iter_custom`). Errors abort the bench with a message.
pub fn time_device<F: FnMut() -> clca::Result<()>>(
    iters: u64,
    sync: impl Fn() -> clca::Result<()>,
    mut f: F,
) -> Duration {
    if let Err(e) = sync() {
        panic!("synchronize before the sample: {e}");
    }
    let t0 = std::time::Instant::now();
    for _ in 0..iters {
        if let Err(e) = f() {
            panic!("launch failed: {e}");
        }
    }
    if let Err(e) = sync() {
        panic!("synchronize after the sample: {e}");
    }
    t0.elapsed()
}
