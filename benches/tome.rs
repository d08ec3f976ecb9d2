//! ToMe benches (ViT-B/16: C = 768, H = 12, head dim 64), the three merges of ToMe + CLCA at
//! 448 px with kr 0.1 (SPEC §2.5): (N, r) = (786, 392), (400, 71), (335, 7), B ∈ {1, 64}.
//! - `tome`: the whole merge layer from qkv [B, N, 3, H, hd] and x [B, N, C]: metric → match →
//!   order → merge (`cpu::tome::tome` on the CPU, `ops::tome::tome` on the GPU, four launches);
//! - `tome_merge`: the size-weighted merge alone, from a computed plan and token sizes.
//!
//! Throughput in bytes: the keys read for the metric (tome only) + x read + out written.
mod common;

use clca::{cpu, Element};
use common::{cvt, Rng, C, H, HD};
use criterion::{black_box, BenchmarkId, Criterion, Throughput};

/// (tokens in, tokens merged) of the three ToMe blocks.
const LAYERS: [(usize, usize); 3] = [(786, 392), (400, 71), (335, 7)];
const BATCHES: [usize; 2] = [1, 64];

fn shapes() -> Vec<(usize, usize, usize, String)> {
    let mut v = Vec::new();
    for (n, r) in LAYERS {
        for b in BATCHES {
            v.push((b, n, r, format!("B{b}_N{n}_R{r}")));
        }
    }
    v
}

fn merge_bytes<T: Element>(b: usize, n: usize, r: usize) -> u64 {
    (b * (2 * n - r) * C * T::DTYPE.size()) as u64
}

fn layer_bytes<T: Element>(b: usize, n: usize, r: usize) -> u64 {
    merge_bytes::<T>(b, n, r) + (b * n * C * T::DTYPE.size()) as u64
}

/// qkv, x, sizes (small integers, as after earlier merges) for one shape.
fn inputs<T: Element>(rng: &mut Rng, b: usize, n: usize) -> (Vec<T>, Vec<T>, Vec<f32>) {
    let qkv = cvt::<T>(&rng.vec_sym(b * n * 3 * C));
    let x = cvt::<T>(&rng.vec_sym(b * n * C));
    let sizes = (0..b * n)
        .map(|_| 1.0 + (rng.next_u64() % 4) as f32)
        .collect();
    (qkv, x, sizes)
}

fn plan(qkv: &[f32], b: usize, n: usize, r: usize) -> cpu::tome::Plan {
    let metric = cpu::tome::tome_metric(qkv, b, n, H, HD).expect("metric");
    let (nm, ni) = cpu::tome::tome_match(&metric, b, n, HD).expect("match");
    cpu::tome::tome_order(&nm, &ni, b, n, r).expect("order")
}

fn cpu_layer(c: &mut Criterion) {
    let mut rng = Rng::new(21);
    let mut g = c.benchmark_group("cpu_tome_f32");
    for (b, n, r, id) in shapes() {
        let (qkv, x, sizes) = inputs::<f32>(&mut rng, b, n);
        g.throughput(Throughput::Bytes(layer_bytes::<f32>(b, n, r)));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| {
                cpu::tome::tome(
                    black_box(&qkv),
                    H,
                    HD,
                    black_box(&x),
                    Some(&sizes),
                    b,
                    n,
                    C,
                    r,
                )
            })
        });
    }
    g.finish();
}

fn cpu_merge(c: &mut Criterion) {
    let mut rng = Rng::new(22);
    let mut g = c.benchmark_group("cpu_tome_merge_f32");
    for (b, n, r, id) in shapes() {
        let (qkv, x, sizes) = inputs::<f32>(&mut rng, b, n);
        let p = plan(&qkv, b, n, r);
        g.throughput(Throughput::Bytes(merge_bytes::<f32>(b, n, r)));
        g.bench_function(BenchmarkId::from_parameter(id), |bn| {
            bn.iter(|| cpu::tome::tome_merge(black_box(&x), Some(&sizes), b, n, C, r, &p))
        });
    }
    g.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{time_device, Rng, C, H, HD};
    use super::{inputs, layer_bytes, merge_bytes, shapes};
    use clca::cuda::CudaDevice;
    use clca::ops::tome::{tome, tome_match, tome_merge, tome_metric, tome_order, Merge};
    use clca::{bf16, f16, Device, Element};
    use criterion::{BenchmarkId, Criterion, Throughput};

    pub fn benches(c: &mut Criterion, dev: &CudaDevice) {
        run::<f32>(c, dev);
        run::<f16>(c, dev);
        run::<bf16>(c, dev);
    }

    fn run<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(23);
        let mut layer = c.benchmark_group(format!("cuda_tome_{}", T::DTYPE));
        for (b, n, r, id) in shapes() {
            let (qkv, x, sizes) = inputs::<T>(&mut rng, b, n);
            let qkv = dev.upload(&qkv).expect("upload");
            let x = dev.upload(&x).expect("upload");
            let sizes = dev.upload(&sizes).expect("upload");
            let mut m = Merge::new(dev, b, n, HD, r).expect("alloc");
            let mut out = dev.zeros::<T>(b * (n - r) * C).expect("alloc");
            let mut out_sizes = dev.zeros::<f32>(b * (n - r)).expect("alloc");
            layer.throughput(Throughput::Bytes(layer_bytes::<T>(b, n, r)));
            layer.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || {
                            tome(
                                dev,
                                &qkv,
                                H,
                                &x,
                                Some(&sizes),
                                C,
                                &mut m,
                                &mut out,
                                &mut out_sizes,
                            )
                        },
                    )
                })
            });
        }
        layer.finish();

        let mut g = c.benchmark_group(format!("cuda_tome_merge_{}", T::DTYPE));
        for (b, n, r, id) in shapes() {
            let (qkv, x, sizes) = inputs::<T>(&mut rng, b, n);
            let qkv = dev.upload(&qkv).expect("upload");
            let x = dev.upload(&x).expect("upload");
            let sizes = dev.upload(&sizes).expect("upload");
            let mut m = Merge::new(dev, b, n, HD, r).expect("alloc");
            tome_metric(dev, &qkv, H, &mut m).expect("metric");
            tome_match(dev, &mut m).expect("match");
            tome_order(dev, &mut m).expect("order");
            let mut out = dev.zeros::<T>(b * (n - r) * C).expect("alloc");
            let mut out_sizes = dev.zeros::<f32>(b * (n - r)).expect("alloc");
            g.throughput(Throughput::Bytes(merge_bytes::<T>(b, n, r)));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || tome_merge(dev, &x, Some(&sizes), C, &m, &mut out, &mut out_sizes),
                    )
                })
            });
        }
        g.finish();
    }
}

fn main() {
    let mut c = common::criterion();
    cpu_layer(&mut c);
    cpu_merge(&mut c);
    #[cfg(feature = "cuda")]
    if let Some(dev) = common::cuda() {
        gpu::benches(&mut c, &dev);
    }
    #[cfg(not(feature = "cuda"))]
    common::no_cuda();
    c.final_summary();
}
