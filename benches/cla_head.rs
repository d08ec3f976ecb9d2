//! CLA head benches: z [B, d = 768, f = 4] (the CLS taps after blocks 3, 6, 9 and 11) →
//! logits [B, K] for K ∈ {10, 200}, B ∈ {1, 8, 64}.
//! - `cla_head_conv`: the default head, BN1 + grouped Conv1d (g = 2) + BN2 folded
//!   ([`ClaConv::fold`]), GELU, then Linear(g·d → K);
//! - `cla_head_linear`: the linear variant, Linear(f → 1) + ReLU + LayerNorm(d) + Linear(d → K).
//!
//! Throughput in samples (elements = B).
mod common;

use clca::ops::cla_head::{BatchNorm, ClaBody, ClaConv, ClaHead, ClaLinear};
use common::{Rng, BATCHES};
use criterion::{black_box, BenchmarkId, Criterion, Throughput};

const D: usize = 768;
const F: usize = 4;
const G: usize = 2;
const CLASSES: [usize; 2] = [10, 200];

fn bn_params(rng: &mut Rng, c: usize) -> [Vec<f32>; 4] {
    [
        (0..c).map(|_| 1.0 + 0.1 * rng.sym()).collect(),
        (0..c).map(|_| 0.1 * rng.sym()).collect(),
        (0..c).map(|_| 0.1 * rng.sym()).collect(),
        (0..c).map(|_| 1.0 + 0.5 * rng.unit()).collect(),
    ]
}

fn conv_head(rng: &mut Rng, classes: usize) -> ClaHead {
    let [w1, b1, m1, v1] = bn_params(rng, D);
    let [w2, b2, m2, v2] = bn_params(rng, G * D);
    let bn1 = BatchNorm {
        weight: &w1,
        bias: &b1,
        running_mean: &m1,
        running_var: &v1,
        eps: 1e-5,
    };
    let bn2 = BatchNorm {
        weight: &w2,
        bias: &b2,
        running_mean: &m2,
        running_var: &v2,
        eps: 1e-5,
    };
    let conv_w: Vec<f32> = (0..G * D * F).map(|_| 0.5 * rng.sym()).collect();
    let conv_b: Vec<f32> = (0..G * D).map(|_| 0.1 * rng.sym()).collect();
    let conv = ClaConv::fold(&bn1, &conv_w, &conv_b, &bn2, D, F, G).expect("fold");
    ClaHead {
        body: ClaBody::Conv(conv),
        classes,
        fc_w: (0..classes * G * D).map(|_| 0.05 * rng.sym()).collect(),
        fc_b: (0..classes).map(|_| 0.1 * rng.sym()).collect(),
    }
}

fn linear_head(rng: &mut Rng, classes: usize) -> ClaHead {
    let body = ClaLinear {
        d: D,
        f: F,
        w: (0..F).map(|_| 0.5 * rng.sym()).collect(),
        b0: 0.1,
        gamma: (0..D).map(|_| 1.0 + 0.1 * rng.sym()).collect(),
        beta: (0..D).map(|_| 0.1 * rng.sym()).collect(),
        eps: 1e-6,
    };
    ClaHead {
        body: ClaBody::Linear(body),
        classes,
        fc_w: (0..classes * D).map(|_| 0.05 * rng.sym()).collect(),
        fc_b: (0..classes).map(|_| 0.1 * rng.sym()).collect(),
    }
}

/// (variant name, head builder).
type Variant = (&'static str, fn(&mut Rng, usize) -> ClaHead);
const VARIANTS: [Variant; 2] = [("conv", conv_head), ("linear", linear_head)];

fn cpu_benches(c: &mut Criterion) {
    let mut rng = Rng::new(31);
    for (name, build) in VARIANTS {
        let mut g = c.benchmark_group(format!("cpu_cla_head_{name}_f32"));
        for classes in CLASSES {
            let head = build(&mut rng, classes);
            for b in BATCHES {
                let z = rng.vec_sym(b * D * F);
                head.forward_cpu(&z, b).expect("cpu cla head");
                g.throughput(Throughput::Elements(b as u64));
                g.bench_function(
                    BenchmarkId::from_parameter(format!("B{b}_K{classes}")),
                    |bn| bn.iter(|| head.forward_cpu(black_box(&z), b)),
                );
            }
        }
        g.finish();
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{cvt, time_device, Rng, BATCHES};
    use super::{CLASSES, D, F, VARIANTS};
    use clca::cuda::CudaDevice;
    use clca::ops::cla_head::DeviceClaHead;
    use clca::{bf16, f16, Device, Element};
    use criterion::{BenchmarkId, Criterion, Throughput};

    pub fn benches(c: &mut Criterion, dev: &CudaDevice) {
        one::<f32>(c, dev);
        one::<f16>(c, dev);
        one::<bf16>(c, dev);
    }

    fn one<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(31);
        for (name, build) in VARIANTS {
            let mut g = c.benchmark_group(format!("cuda_cla_head_{name}_{}", T::DTYPE));
            for classes in CLASSES {
                let host = build(&mut rng, classes);
                let head = DeviceClaHead::<CudaDevice, T>::new(dev, &host).expect("upload head");
                for b in BATCHES {
                    let z = dev
                        .upload(&cvt::<T>(&rng.vec_sym(b * D * F)))
                        .expect("upload");
                    let mut hidden = dev.zeros::<T>(b * head.hidden()).expect("alloc");
                    let mut logits = dev.zeros::<T>(b * classes).expect("alloc");
                    g.throughput(Throughput::Elements(b as u64));
                    g.bench_function(
                        BenchmarkId::from_parameter(format!("B{b}_K{classes}")),
                        |bn| {
                            bn.iter_custom(|iters| {
                                time_device(
                                    iters,
                                    || dev.synchronize(),
                                    || head.forward(dev, &z, b, &mut hidden, &mut logits),
                                )
                            })
                        },
                    );
                }
            }
            g.finish();
        }
    }
}

fn main() {
    let mut c = common::criterion();
    cpu_benches(&mut c);
    #[cfg(feature = "cuda")]
    if let Some(dev) = common::cuda() {
        gpu::benches(&mut c, &dev);
    }
    #[cfg(not(feature = "cuda"))]
    common::no_cuda();
    c.final_summary();
}
