//! Pruning benches: Top-K prune (gather), EViT prune (gather + fused token), EViT's projection
//! bias factor (`evit_bias_scale`) and the whole
//! pruning layer: `ops::prune::prune` on the GPU (fused score → top-k launch, then the EViT
//! gather), scores → top-k → EViT prune in sequence on the CPU.
//!
//! x [B, N, C = 768]; shapes: the 448 px ViT-B/16 EViT pruning layers (N, k) = (786, 79),
//! (87, 9), (17, 2) with B ∈ {1, 8, 64}. Throughput is in bytes: tokens read + tokens written
//! (EViT reads every non-cls token: the kept ones and, for the fused token, the dropped ones).
mod common;

use clca::{cpu, f16, Element};
use common::{cls_probs, cvt, shapes, softmax_rows, Layer, Rng, C, H};
use criterion::{black_box, BenchmarkId, Criterion, Throughput};

/// Scores [b, n−1] (softmax rows) and their top-k (idx, compl), as the selection produces them.
fn selection(rng: &mut Rng, b: usize, l: Layer) -> (Vec<f32>, Vec<u32>, Vec<u32>) {
    let scores = softmax_rows(rng, b, l.n - 1);
    let (idx, compl) = cpu::topk::topk_select(&scores, b, l.n - 1, l.k).expect("cpu topk_select");
    (scores, idx, compl)
}

fn topk_bytes<T: Element>(b: usize, l: Layer) -> u64 {
    (2 * b * (1 + l.k) * C * T::DTYPE.size()) as u64
}

fn evit_bytes<T: Element>(b: usize, l: Layer) -> u64 {
    (b * (l.n + 2 + l.k) * C * T::DTYPE.size()) as u64
}

fn cpu_topk_prune<T: Element>(c: &mut Criterion) {
    let mut rng = Rng::new(11);
    let mut g = c.benchmark_group(format!("cpu_topk_prune_{}", T::DTYPE));
    for (b, l, id) in shapes() {
        let x: Vec<T> = cvt(&rng.vec_sym(b * l.n * C));
        let (_, idx, _) = selection(&mut rng, b, l);
        cpu::prune::topk_prune(&x, b, l.n, C, &idx, l.k).expect("cpu topk_prune");
        g.throughput(Throughput::Bytes(topk_bytes::<T>(b, l)));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| cpu::prune::topk_prune(black_box(&x), b, l.n, C, black_box(&idx), l.k))
        });
    }
    g.finish();
}

/// f32 only: the reference sums the fused token channel by channel, strided (slow in any dtype).
fn cpu_evit(c: &mut Criterion) {
    let mut rng = Rng::new(13);
    let mut g = c.benchmark_group("cpu_evit_prune_f32");
    for (b, l, id) in shapes() {
        let x = rng.vec_sym(b * l.n * C);
        let (scores, idx, compl) = selection(&mut rng, b, l);
        cpu::prune::evit_prune(&x, b, l.n, C, &idx, l.k, &compl, &scores).expect("cpu evit_prune");
        g.throughput(Throughput::Bytes(evit_bytes::<f32>(b, l)));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| cpu::prune::evit_prune(black_box(&x), b, l.n, C, &idx, l.k, &compl, &scores))
        });
    }
    g.finish();
}

/// EViT's projection bias factor (1 per kept row, S = Σ dropped scores for the fused row):
/// what the device forward adds when it projects after pruning. Throughput: the scores read.
fn cpu_bias_scale(c: &mut Criterion) {
    let mut rng = Rng::new(14);
    let mut g = c.benchmark_group("cpu_evit_bias_scale_f32");
    for (b, l, id) in shapes() {
        let (scores, _, compl) = selection(&mut rng, b, l);
        g.throughput(Throughput::Bytes((b * (l.n - 1 - l.k) * 8) as u64));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| cpu::prune::evit_bias_scale(black_box(&compl), &scores, b, l.n, l.k))
        });
    }
    g.finish();
}

/// The whole EViT pruning layer on the CPU: scores from probs → top-k → EViT prune.
fn cpu_layer(c: &mut Criterion) {
    let mut rng = Rng::new(12);
    let mut g = c.benchmark_group("cpu_prune_f32");
    for (b, l, id) in shapes() {
        let x = rng.vec_sym(b * l.n * C);
        let probs = cls_probs(&mut rng, b, H, l.n);
        g.throughput(Throughput::Bytes(evit_bytes::<f32>(b, l)));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| -> clca::Result<Vec<f32>> {
                let s = cpu::attn_score::cls_attn_from_probs(black_box(&probs), b, H, l.n)?;
                let (idx, compl) = cpu::topk::topk_select(&s, b, l.n - 1, l.k)?;
                cpu::prune::evit_prune(black_box(&x), b, l.n, C, &idx, l.k, &compl, &s)
            })
        });
    }
    g.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{cls_probs, cvt, shapes, time_device, Rng, C, H};
    use super::{evit_bytes, selection, topk_bytes};
    use clca::cuda::CudaDevice;
    use clca::ops::attn_score::{select, ScoreSource, Selection};
    use clca::ops::prune::{evit_bias_scale, evit_prune, prune, topk_prune, PruneMode};
    use clca::{bf16, f16, Device, Element};
    use criterion::{BenchmarkId, Criterion, Throughput};

    pub fn benches(c: &mut Criterion, dev: &CudaDevice) {
        bias_scale(c, dev);
        gathers::<f32>(c, dev);
        gathers::<f16>(c, dev);
        gathers::<bf16>(c, dev);
        layer::<f32>(c, dev);
        layer::<f16>(c, dev);
        layer::<bf16>(c, dev);
        b256::<f32>(c, dev);
        b256::<bf16>(c, dev);
    }

    /// The issue-6 point: the fused pruning layer at batch 256 (N = 786, k = 79, C = 768), next
    /// to a device-to-device copy of the same bytes (the bandwidth ceiling). The probabilities
    /// [B, H, N, N] are zeros except the cls row of each head (all the op reads), written row
    /// by row so that the 256-image tensor never exists on the host.
    fn b256<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let (b, l) = (256, super::common::LAYERS[0]);
        let mut rng = Rng::new(13);
        let mut g = c.benchmark_group(format!("cuda_prune_b256_{}", T::DTYPE));
        let x = dev
            .upload(&cvt::<T>(&rng.vec_sym(b * l.n * C)))
            .expect("upload");
        let mut probs = dev.zeros::<T>(b * H * l.n * l.n).expect("alloc");
        for bh in 0..b * H {
            let row = cvt::<T>(&super::common::softmax_rows(&mut rng, 1, l.n));
            dev.write_at(&mut probs, bh * l.n * l.n, &row)
                .expect("write");
        }
        let src: ScoreSource<'_, CudaDevice, T> = ScoreSource::Probs {
            probs: &probs,
            heads: H,
        };
        let mut sel = Selection::new(dev, b, l.n, l.k).expect("alloc");
        let mut out = dev
            .zeros::<T>(b * PruneMode::EVit.out_tokens(l.k) * C)
            .expect("alloc");
        let bytes = evit_bytes::<T>(b, l);
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(BenchmarkId::new("evit_prune_layer", "B256_N786"), |bn| {
            bn.iter_custom(|iters| {
                time_device(
                    iters,
                    || dev.synchronize(),
                    || prune(dev, &src, &x, C, PruneMode::EVit, &mut sel, &mut out),
                )
            })
        });
        // The two launches apart: the selection (scores → top-k, one block per image) and
        // the gather + fuse on the selection it left in `sel`.
        g.bench_function(BenchmarkId::new("select_only", "B256_N786"), |bn| {
            bn.iter_custom(|iters| {
                time_device(iters, || dev.synchronize(), || select(dev, &src, &mut sel))
            })
        });
        g.bench_function(BenchmarkId::new("gather_fuse_only", "B256_N786"), |bn| {
            bn.iter_custom(|iters| {
                time_device(
                    iters,
                    || dev.synchronize(),
                    || {
                        evit_prune(
                            dev,
                            &x,
                            b,
                            l.n,
                            C,
                            &sel.idx,
                            l.k,
                            &sel.compl,
                            &sel.scores,
                            &mut out,
                        )
                    },
                )
            })
        });
        // Half the counted bytes in, half out: a copy moving the same total.
        let half = (bytes as usize / 2) / T::DTYPE.size();
        let cs = dev.zeros::<T>(half).expect("alloc");
        let mut cd = dev.zeros::<T>(half).expect("alloc");
        g.bench_function(BenchmarkId::new("copy_d2d_same_bytes", "B256_N786"), |bn| {
            bn.iter_custom(|iters| {
                time_device(iters, || dev.synchronize(), || dev.copy(&cs, &mut cd))
            })
        });
        g.finish();
    }

    fn gathers<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(11);
        let mut g = c.benchmark_group(format!("cuda_topk_prune_{}", T::DTYPE));
        for (b, l, id) in shapes() {
            let x = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * l.n * C)))
                .expect("upload");
            let (_, idx, _) = selection(&mut rng, b, l);
            let idx = dev.upload(&idx).expect("upload");
            let mut out = dev.zeros::<T>(b * (1 + l.k) * C).expect("alloc");
            g.throughput(Throughput::Bytes(topk_bytes::<T>(b, l)));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || topk_prune(dev, &x, b, l.n, C, &idx, l.k, &mut out),
                    )
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("cuda_evit_prune_{}", T::DTYPE));
        for (b, l, id) in shapes() {
            let x = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * l.n * C)))
                .expect("upload");
            let (scores, idx, compl) = selection(&mut rng, b, l);
            let (scores, idx, compl) = (
                dev.upload(&scores).expect("upload"),
                dev.upload(&idx).expect("upload"),
                dev.upload(&compl).expect("upload"),
            );
            let mut out = dev.zeros::<T>(b * (2 + l.k) * C).expect("alloc");
            g.throughput(Throughput::Bytes(evit_bytes::<T>(b, l)));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || evit_prune(dev, &x, b, l.n, C, &idx, l.k, &compl, &scores, &mut out),
                    )
                })
            });
        }
        g.finish();
    }

    /// `ops::prune::evit_bias_scale` (one warp per image; a launch's worth at these sizes).
    fn bias_scale(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(14);
        let mut g = c.benchmark_group("cuda_evit_bias_scale_f32");
        for (b, l, id) in shapes() {
            let (scores, _, compl) = selection(&mut rng, b, l);
            let (scores, compl) = (
                dev.upload(&scores).expect("upload"),
                dev.upload(&compl).expect("upload"),
            );
            let mut out = dev.zeros::<f32>(b * (2 + l.k)).expect("alloc");
            g.throughput(Throughput::Bytes((b * (l.n - 1 - l.k) * 8) as u64));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || evit_bias_scale(dev, &compl, &scores, b, l.n, l.k, &mut out),
                    )
                })
            });
        }
        g.finish();
    }

    /// The fused pruning layer: `ops::prune::prune` (EViT, scores from probs).
    fn layer<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(12);
        let mut g = c.benchmark_group(format!("cuda_prune_{}", T::DTYPE));
        for (b, l, id) in shapes() {
            let x = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * l.n * C)))
                .expect("upload");
            let probs = dev
                .upload(&cvt::<T>(&cls_probs(&mut rng, b, H, l.n)))
                .expect("upload");
            let src: ScoreSource<'_, CudaDevice, T> = ScoreSource::Probs {
                probs: &probs,
                heads: H,
            };
            let mut sel = Selection::new(dev, b, l.n, l.k).expect("alloc");
            let mut out = dev
                .zeros::<T>(b * PruneMode::EVit.out_tokens(l.k) * C)
                .expect("alloc");
            g.throughput(Throughput::Bytes(evit_bytes::<T>(b, l)));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || prune(dev, &src, &x, C, PruneMode::EVit, &mut sel, &mut out),
                    )
                })
            });
        }
        g.finish();
    }
}

fn main() {
    let mut c = common::criterion();
    cpu_topk_prune::<f32>(&mut c);
    cpu_topk_prune::<f16>(&mut c);
    cpu_evit(&mut c);
    cpu_bias_scale(&mut c);
    cpu_layer(&mut c);
    #[cfg(feature = "cuda")]
    if let Some(dev) = common::cuda() {
        gpu::benches(&mut c, &dev);
    }
    #[cfg(not(feature = "cuda"))]
    common::no_cuda();
    c.final_summary();
}
