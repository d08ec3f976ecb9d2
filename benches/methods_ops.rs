//! Soft-merge benches (SiT / PatchMerger, SPEC §4.5–§4.6) at the paper's shapes: the first
//! reduction layer at 448 px merges n = 785 tokens (784 patches + 1 clr) into K = 78 slots of
//! D = 768 channels, B ∈ {1, 64}.
//!
//! `cpu_softmax_merge_f32` is the CPU reference; `cuda_softmax_merge_{dtype}` the kernel (with
//! `--features cuda` on a GPU; the host shim is a correctness tool, not a backend worth timing).
//! Throughput is in bytes: scores + values read, output + weights written.
mod common;

use clca::{cpu, Element};
use common::Rng;
use criterion::{black_box, BenchmarkId, Criterion, Throughput};

const N: usize = 785;
const K: usize = 78;
const D: usize = 768;
const BATCHES: [usize; 2] = [1, 64];

fn bytes<T: Element>(b: usize) -> u64 {
    (b * ((N * K + N * D + K * D) * T::DTYPE.size() + K * N * 4)) as u64
}

/// Scores [b, N, K] and values [b, N, D], as SiT's logits and tokens.
fn inputs(rng: &mut Rng, b: usize) -> (Vec<f32>, Vec<f32>) {
    let s = (0..b * N * K).map(|_| 4.0 * rng.sym()).collect();
    (s, rng.vec_sym(b * N * D))
}

fn cpu_merge(c: &mut Criterion) {
    let mut rng = Rng::new(21);
    let mut g = c.benchmark_group("cpu_softmax_merge_f32");
    for b in BATCHES {
        let (s, v) = inputs(&mut rng, b);
        let mut out = vec![0f32; b * K * D];
        g.throughput(Throughput::Bytes(bytes::<f32>(b)));
        g.bench_function(
            BenchmarkId::from_parameter(format!("B{b}_N{N}_K{K}")),
            |bn| {
                bn.iter(|| {
                    cpu::merge::softmax_merge(
                        black_box(&s),
                        black_box(&v),
                        b,
                        N,
                        K,
                        D,
                        1.0,
                        &mut out,
                    )
                })
            },
        );
    }
    g.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{cvt, time_device, Rng};
    use super::{bytes, inputs, BATCHES, D, K, N};
    use clca::cuda::CudaDevice;
    use clca::ops::merge::softmax_merge;
    use clca::{bf16, f16, Device, Element};
    use criterion::{BenchmarkId, Criterion, Throughput};

    pub fn benches(c: &mut Criterion, dev: &CudaDevice) {
        merge::<f32>(c, dev);
        merge::<f16>(c, dev);
        merge::<bf16>(c, dev);
    }

    fn merge<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(21);
        let mut g = c.benchmark_group(format!("cuda_softmax_merge_{}", T::DTYPE));
        for b in BATCHES {
            let (s, v) = inputs(&mut rng, b);
            let s = dev.upload(&cvt::<T>(&s)).expect("upload");
            let v = dev.upload(&cvt::<T>(&v)).expect("upload");
            let mut out = dev.zeros::<T>(b * K * D).expect("alloc");
            let mut w = dev.zeros::<f32>(b * K * N).expect("alloc");
            g.throughput(Throughput::Bytes(bytes::<T>(b)));
            g.bench_function(
                BenchmarkId::from_parameter(format!("B{b}_N{N}_K{K}")),
                |bn| {
                    bn.iter_custom(|iters| {
                        time_device(
                            iters,
                            || dev.synchronize(),
                            || softmax_merge(dev, &s, &v, b, N, K, D, 1.0, &mut out, Some(&mut w)),
                        )
                    })
                },
            );
        }
        g.finish();
    }
}

fn main() {
    let mut c = common::criterion();
    cpu_merge(&mut c);
    #[cfg(feature = "cuda")]
    if let Some(dev) = common::cuda() {
        gpu::benches(&mut c, &dev);
    }
    #[cfg(not(feature = "cuda"))]
    common::no_cuda();
    c.final_summary();
}
