//! Selection benches: per-row top-k over the N−1 non-cls scores, CLS-attention scores from
//! probabilities [B, H, N, N] and fused from q_cls·K (hd = 64), and the fused score → top-k
//! selection (`ops::attn_score::select`; on the CPU: scores then top-k in sequence).
//!
//! Shapes: the 448 px ViT-B/16 EViT pruning layers (N, k) = (786, 79), (87, 9), (17, 2) with
//! B ∈ {1, 8, 64}. Names `{device}_{op}_{dtype}/B{B}_N{N}`.
mod common;

use clca::{cpu, f16, Element};
use common::{cls_probs, cvt, scale, shapes, softmax_rows, Rng, H, HD};
use criterion::{black_box, BenchmarkId, Criterion, Throughput};

fn cpu_topk<T: Element>(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("cpu_topk_select_{}", T::DTYPE));
    let mut rng = Rng::new(1);
    for (b, l, id) in shapes() {
        let m = l.n - 1;
        let x: Vec<T> = cvt(&softmax_rows(&mut rng, b, m));
        cpu::topk::topk_select(&x, b, m, l.k).expect("cpu topk_select");
        g.throughput(Throughput::Elements((b * m) as u64));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| cpu::topk::topk_select(black_box(&x), b, m, l.k))
        });
    }
    g.finish();
}

fn cpu_scores(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let mut g = c.benchmark_group("cpu_cls_attn_probs_f32");
    for (b, l, id) in shapes() {
        let probs = cls_probs(&mut rng, b, H, l.n);
        cpu::attn_score::cls_attn_from_probs(&probs, b, H, l.n).expect("cpu cls_attn_from_probs");
        g.throughput(Throughput::Elements((b * H * (l.n - 1)) as u64));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| cpu::attn_score::cls_attn_from_probs(black_box(&probs), b, H, l.n))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cpu_cls_attn_qk_f32");
    for (b, l, id) in shapes() {
        let q = rng.vec_sym(b * H * HD);
        let k = rng.vec_sym(b * H * l.n * HD);
        cpu::attn_score::cls_attn_from_qk(&q, &k, b, H, l.n, HD, scale())
            .expect("cpu cls_attn_from_qk");
        g.throughput(Throughput::Elements((b * H * l.n * HD) as u64));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| {
                cpu::attn_score::cls_attn_from_qk(
                    black_box(&q),
                    black_box(&k),
                    b,
                    H,
                    l.n,
                    HD,
                    scale(),
                )
            })
        });
    }
    g.finish();
}

/// The CPU counterpart of the fused selection: scores, then top-k of them.
fn cpu_select(c: &mut Criterion) {
    let mut rng = Rng::new(3);
    let mut g = c.benchmark_group("cpu_select_from_probs_f32");
    for (b, l, id) in shapes() {
        let probs = cls_probs(&mut rng, b, H, l.n);
        g.throughput(Throughput::Elements((b * H * (l.n - 1)) as u64));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| -> clca::Result<_> {
                let s = cpu::attn_score::cls_attn_from_probs(black_box(&probs), b, H, l.n)?;
                cpu::topk::topk_select(&s, b, l.n - 1, l.k)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cpu_select_from_qk_f32");
    for (b, l, id) in shapes() {
        let q = rng.vec_sym(b * H * HD);
        let k = rng.vec_sym(b * H * l.n * HD);
        g.throughput(Throughput::Elements((b * H * l.n * HD) as u64));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| -> clca::Result<_> {
                let s = cpu::attn_score::cls_attn_from_qk(
                    black_box(&q),
                    black_box(&k),
                    b,
                    H,
                    l.n,
                    HD,
                    scale(),
                )?;
                cpu::topk::topk_select(&s, b, l.n - 1, l.k)
            })
        });
    }
    g.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{cls_probs, cvt, scale, shapes, softmax_rows, time_device, Rng, H, HD};
    use clca::cuda::CudaDevice;
    use clca::ops::attn_score::{cls_attn_scores, select, ScoreSource, Selection};
    use clca::{bf16, f16, ops, Device, Element};
    use criterion::{BenchmarkId, Criterion, Throughput};

    pub fn benches(c: &mut Criterion, dev: &CudaDevice) {
        topk::<f32>(c, dev);
        topk::<f16>(c, dev);
        topk::<bf16>(c, dev);
        scores::<f32>(c, dev);
        scores::<f16>(c, dev);
        scores::<bf16>(c, dev);
        fused::<f32>(c, dev);
        fused::<f16>(c, dev);
        fused::<bf16>(c, dev);
    }

    fn topk<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut g = c.benchmark_group(format!("cuda_topk_select_{}", T::DTYPE));
        let mut rng = Rng::new(1);
        for (b, l, id) in shapes() {
            let m = l.n - 1;
            let x = dev
                .upload(&cvt::<T>(&softmax_rows(&mut rng, b, m)))
                .expect("upload");
            let mut idx = dev.zeros::<u32>(b * l.k).expect("alloc");
            let mut compl = dev.zeros::<u32>(b * (m - l.k)).expect("alloc");
            g.throughput(Throughput::Elements((b * m) as u64));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || ops::topk::topk_select(dev, &x, b, m, l.k, &mut idx, &mut compl),
                    )
                })
            });
        }
        g.finish();
    }

    fn scores<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(2);
        let mut g = c.benchmark_group(format!("cuda_cls_attn_probs_{}", T::DTYPE));
        for (b, l, id) in shapes() {
            let probs = dev
                .upload(&cvt::<T>(&cls_probs(&mut rng, b, H, l.n)))
                .expect("upload");
            let mut s = dev.zeros::<f32>(b * (l.n - 1)).expect("alloc");
            let src: ScoreSource<'_, CudaDevice, T> = ScoreSource::Probs {
                probs: &probs,
                heads: H,
            };
            g.throughput(Throughput::Elements((b * H * (l.n - 1)) as u64));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || cls_attn_scores(dev, &src, b, l.n, &mut s),
                    )
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("cuda_cls_attn_qk_{}", T::DTYPE));
        for (b, l, id) in shapes() {
            let q = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * H * HD)))
                .expect("upload");
            let k = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * H * l.n * HD)))
                .expect("upload");
            let mut s = dev.zeros::<f32>(b * (l.n - 1)).expect("alloc");
            let src: ScoreSource<'_, CudaDevice, T> = ScoreSource::Qk {
                q_cls: &q,
                k: &k,
                heads: H,
                head_dim: HD,
                scale: scale(),
            };
            g.throughput(Throughput::Elements((b * H * l.n * HD) as u64));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || cls_attn_scores(dev, &src, b, l.n, &mut s),
                    )
                })
            });
        }
        g.finish();
    }

    fn fused<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(3);
        let mut g = c.benchmark_group(format!("cuda_select_from_probs_{}", T::DTYPE));
        for (b, l, id) in shapes() {
            let probs = dev
                .upload(&cvt::<T>(&cls_probs(&mut rng, b, H, l.n)))
                .expect("upload");
            let mut sel = Selection::new(dev, b, l.n, l.k).expect("alloc");
            let src: ScoreSource<'_, CudaDevice, T> = ScoreSource::Probs {
                probs: &probs,
                heads: H,
            };
            g.throughput(Throughput::Elements((b * H * (l.n - 1)) as u64));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(iters, || dev.synchronize(), || select(dev, &src, &mut sel))
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("cuda_select_from_qk_{}", T::DTYPE));
        for (b, l, id) in shapes() {
            let q = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * H * HD)))
                .expect("upload");
            let k = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * H * l.n * HD)))
                .expect("upload");
            let mut sel = Selection::new(dev, b, l.n, l.k).expect("alloc");
            let src: ScoreSource<'_, CudaDevice, T> = ScoreSource::Qk {
                q_cls: &q,
                k: &k,
                heads: H,
                head_dim: HD,
                scale: scale(),
            };
            g.throughput(Throughput::Elements((b * H * l.n * HD) as u64));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(iters, || dev.synchronize(), || select(dev, &src, &mut sel))
                })
            });
        }
        g.finish();
    }
}

fn main() {
    let mut c = common::criterion();
    cpu_topk::<f32>(&mut c);
    cpu_topk::<f16>(&mut c);
    cpu_scores(&mut c);
    cpu_select(&mut c);
    #[cfg(feature = "cuda")]
    if let Some(dev) = common::cuda() {
        gpu::benches(&mut c, &dev);
    }
    #[cfg(not(feature = "cuda"))]
    common::no_cuda();
    c.final_summary();
}
