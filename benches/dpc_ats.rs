//! DPC-KNN and ATS benches at the paper's shapes (ViT-B/16 at 448 px, B = 1):
//! - DPC-KNN: m = 784 tokens → K = 78 clusters, D = 768, 5 neighbours; `cluster` (distances,
//!   density, scores, centres, assignment) and `merge`. Throughput: the tokens read.
//! - ATS: n = 786, K = 79 (78 sample points), 12 heads; `significance` (from the cls-row
//!   probabilities and qkv) and `sample` (CDF, picks, sorted unique ids). Throughput: qkv's
//!   v block read.
//!
//! CPU references always; the kernels with `--features cuda` on a GPU.
mod common;

use clca::{cpu, plan};
use common::{Rng, C, H};
use criterion::{black_box, Criterion, Throughput};

const M: usize = 784;
const K_DPC: usize = 78;
const KNN: usize = 5;
const N_ATS: usize = 786;
const K_ATS: usize = 79;

fn cpu_dpcknn(c: &mut Criterion) {
    let mut rng = Rng::new(21);
    let x = rng.vec_sym(M * C);
    let w: Vec<f32> = rng.vec_unit(M);
    let mut g = c.benchmark_group("cpu_dpcknn_f32");
    g.throughput(Throughput::Bytes((M * C * 4) as u64));
    g.bench_function("cluster_784_78", |b| {
        b.iter(|| cpu::dpcknn::cluster(black_box(&x), M, C, K_DPC, KNN, None))
    });
    let cl = cpu::dpcknn::cluster(&x, M, C, K_DPC, KNN, None).expect("cpu cluster");
    let mut out = vec![0f32; K_DPC * C];
    g.bench_function("merge_784_78", |b| {
        b.iter(|| {
            cpu::dpcknn::merge(
                black_box(&x),
                M,
                C,
                &cl.idx_cluster,
                K_DPC,
                Some(&w),
                &mut out,
            )
        })
    });
    g.finish();
}

fn ats_inputs(rng: &mut Rng) -> (Vec<f32>, Vec<f32>) {
    let probs = common::softmax_rows(rng, H, N_ATS);
    let qkv = rng.vec_sym(N_ATS * 3 * C);
    (probs, qkv)
}

fn cpu_ats(c: &mut Criterion) {
    let mut rng = Rng::new(22);
    let (probs, qkv) = ats_inputs(&mut rng);
    let steps: Vec<f32> = plan::ats_steps(K_ATS).collect();
    let mask = vec![true; N_ATS - 1];
    let mut g = c.benchmark_group("cpu_ats_f32");
    g.throughput(Throughput::Bytes((N_ATS * C * 4) as u64));
    g.bench_function("significance_786", |b| {
        b.iter(|| cpu::ats::significance(black_box(&probs), black_box(&qkv), H, N_ATS, C))
    });
    let sig = cpu::ats::significance(&probs, &qkv, H, N_ATS, C);
    g.bench_function("sample_786_79", |b| {
        b.iter(|| cpu::ats::sample(black_box(&sig), &mask, &steps))
    });
    g.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{cvt, time_device, Rng, C, H};
    use super::{ats_inputs, KNN, K_ATS, K_DPC, M, N_ATS};
    use clca::cuda::CudaDevice;
    use clca::ops::{ats, dpcknn};
    use clca::{bf16, f16, Device, Element};
    use criterion::{Criterion, Throughput};

    pub fn benches(c: &mut Criterion, dev: &CudaDevice) {
        dpc::<f32>(c, dev);
        dpc::<f16>(c, dev);
        dpc::<bf16>(c, dev);
        ats_bench::<f32>(c, dev);
        ats_bench::<f16>(c, dev);
        ats_bench::<bf16>(c, dev);
    }

    fn dpc<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(21);
        let x = dev.upload(&cvt::<T>(&rng.vec_sym(M * C))).expect("upload");
        let w = dev.upload(&rng.vec_unit(M)).expect("upload");
        let mut ws = dpcknn::DpcWorkspace::new(dev, 1, M, K_DPC).expect("alloc");
        let mut idx = dev.zeros::<u32>(M).expect("alloc");
        let mut centers = dev.zeros::<u32>(K_DPC).expect("alloc");
        let mut out = dev.zeros::<T>(K_DPC * C).expect("alloc");
        let mut g = c.benchmark_group(format!("cuda_dpcknn_{}", T::DTYPE));
        g.throughput(Throughput::Bytes((M * C * T::DTYPE.size()) as u64));
        g.bench_function("cluster_784_78", |bn| {
            bn.iter_custom(|iters| {
                time_device(
                    iters,
                    || dev.synchronize(),
                    || {
                        dpcknn::cluster(
                            dev,
                            &x,
                            1,
                            M,
                            C,
                            K_DPC,
                            KNN,
                            None,
                            &mut ws,
                            &mut idx,
                            &mut centers,
                        )
                    },
                )
            })
        });
        g.bench_function("merge_784_78", |bn| {
            bn.iter_custom(|iters| {
                time_device(
                    iters,
                    || dev.synchronize(),
                    || dpcknn::merge(dev, &x, 1, M, C, &idx, K_DPC, Some(&w), &mut out),
                )
            })
        });
        g.finish();
    }

    fn ats_bench<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(22);
        let (probs, qkv) = ats_inputs(&mut rng);
        let probs = dev.upload(&probs).expect("upload");
        let qkv = dev.upload(&cvt::<T>(&qkv)).expect("upload");
        let points = clca::plan::ats_points(K_ATS);
        let mut sig = dev.zeros::<f32>(N_ATS - 1).expect("alloc");
        let mut cdf = dev.zeros::<f32>(N_ATS - 1).expect("alloc");
        let mut ids = dev.zeros::<u32>(points).expect("alloc");
        let mut count = dev.zeros::<u32>(1).expect("alloc");
        let mut g = c.benchmark_group(format!("cuda_ats_{}", T::DTYPE));
        g.throughput(Throughput::Bytes((N_ATS * C * T::DTYPE.size()) as u64));
        g.bench_function("significance_786", |bn| {
            bn.iter_custom(|iters| {
                time_device(
                    iters,
                    || dev.synchronize(),
                    || ats::significance(dev, &probs, &qkv, 1, H, N_ATS, C, &mut sig),
                )
            })
        });
        g.bench_function("sample_786_79", |bn| {
            bn.iter_custom(|iters| {
                time_device(
                    iters,
                    || dev.synchronize(),
                    || {
                        ats::sample(
                            dev, &sig, None, 1, N_ATS, K_ATS, &mut cdf, &mut ids, &mut count,
                        )
                    },
                )
            })
        });
        g.finish();
    }
}

fn main() {
    let mut c = common::criterion();
    cpu_dpcknn(&mut c);
    cpu_ats(&mut c);
    #[cfg(feature = "cuda")]
    if let Some(dev) = common::cuda() {
        gpu::benches(&mut c, &dev);
    }
    #[cfg(not(feature = "cuda"))]
    common::no_cuda();
    c.final_summary();
}
