//! Cross-layer token cache benches (EViT + CLCA at 448 px, D = 768):
//! - `cache_take`: the carriers of block 0: GAP over the 784 patch tokens x[1..785) plus the
//!   1 clr token x[785], from x [B, 786, D] into cache slots 0–1 of a [B, 6, D] cache;
//! - `recover`: the 6 cached tokens appended after the 81 tokens left by block 3's EViT prune,
//!   into x [B, 87, D] (`tokens_copy`).
//!
//! B ∈ {1, 8, 64}; throughput in bytes read + written.
mod common;

use clca::ops::token_cache::TakeArgs;
use clca::{cpu, f16, Element};
use common::{cvt, Rng, BATCHES};
use criterion::{black_box, BenchmarkId, Criterion, Throughput};

const D: usize = 768;
/// Tokens in block 0: cls + 784 patches + 1 clr.
const N0: usize = 786;
/// Cache capacity of the plan (3 blocks × (GAP + clr)).
const CACHE_CAP: usize = 6;
/// Tokens after block 3's prune, and after its recovery.
const N_PRUNED: usize = 81;
const N_RECOVERED: usize = N_PRUNED + CACHE_CAP;

fn take_args(b: usize) -> TakeArgs {
    TakeArgs {
        batch: b,
        x_cap: N0,
        n: N0,
        d: D,
        pool: 1..N0 - 1,
        gap: true,
        num_clr: 1,
        cache_cap: CACHE_CAP,
        slot: 0,
    }
}

fn take_bytes<T: Element>(b: usize) -> u64 {
    (b * (N0 - 1 + 2) * D * T::DTYPE.size()) as u64
}

fn recover_bytes<T: Element>(b: usize) -> u64 {
    (2 * b * CACHE_CAP * D * T::DTYPE.size()) as u64
}

/// f32 only: the reference GAP walks channel by channel, strided (slow in any dtype).
fn cpu_take(c: &mut Criterion) {
    let mut rng = Rng::new(21);
    let mut g = c.benchmark_group("cpu_cache_take_f32");
    for b in BATCHES {
        let x = rng.vec_sym(b * N0 * D);
        let mut cache = vec![0f32; b * CACHE_CAP * D];
        let a = take_args(b);
        cpu::token_cache::cache_take(&x, &mut cache, &a).expect("cpu cache_take");
        g.throughput(Throughput::Bytes(take_bytes::<f32>(b)));
        g.bench_function(BenchmarkId::from_parameter(format!("B{b}_N{N0}")), |bn| {
            bn.iter(|| cpu::token_cache::cache_take(black_box(&x), black_box(&mut cache), &a))
        });
    }
    g.finish();
}

fn cpu_recover<T: Element>(c: &mut Criterion) {
    let mut rng = Rng::new(22);
    let mut g = c.benchmark_group(format!("cpu_recover_{}", T::DTYPE));
    for b in BATCHES {
        let cache: Vec<T> = cvt(&rng.vec_sym(b * CACHE_CAP * D));
        let mut x: Vec<T> = cvt(&rng.vec_sym(b * N_RECOVERED * D));
        g.throughput(Throughput::Bytes(recover_bytes::<T>(b)));
        g.bench_function(
            BenchmarkId::from_parameter(format!("B{b}_N{N_PRUNED}_R{CACHE_CAP}")),
            |bn| {
                bn.iter(|| {
                    cpu::token_cache::tokens_copy(
                        black_box(&cache),
                        CACHE_CAP,
                        0,
                        black_box(&mut x),
                        N_RECOVERED,
                        N_PRUNED,
                        b,
                        CACHE_CAP,
                        D,
                    )
                })
            },
        );
    }
    g.finish();
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{cvt, time_device, Rng, BATCHES};
    use super::{recover_bytes, take_args, take_bytes, CACHE_CAP, D, N0, N_PRUNED, N_RECOVERED};
    use clca::cuda::CudaDevice;
    use clca::ops::token_cache::{cache_take, recover};
    use clca::{bf16, f16, Device, Element};
    use criterion::{BenchmarkId, Criterion, Throughput};

    pub fn benches(c: &mut Criterion, dev: &CudaDevice) {
        one::<f32>(c, dev);
        one::<f16>(c, dev);
        one::<bf16>(c, dev);
    }

    fn one<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(21);
        let mut g = c.benchmark_group(format!("cuda_cache_take_{}", T::DTYPE));
        for b in BATCHES {
            let x = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * N0 * D)))
                .expect("upload");
            let mut cache = dev.zeros::<T>(b * CACHE_CAP * D).expect("alloc");
            let a = take_args(b);
            g.throughput(Throughput::Bytes(take_bytes::<T>(b)));
            g.bench_function(BenchmarkId::from_parameter(format!("B{b}_N{N0}")), |bn| {
                bn.iter_custom(|iters| {
                    time_device(
                        iters,
                        || dev.synchronize(),
                        || cache_take(dev, &x, &mut cache, &a),
                    )
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("cuda_recover_{}", T::DTYPE));
        for b in BATCHES {
            let cache = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * CACHE_CAP * D)))
                .expect("upload");
            let mut x = dev
                .upload(&cvt::<T>(&rng.vec_sym(b * N_RECOVERED * D)))
                .expect("upload");
            g.throughput(Throughput::Bytes(recover_bytes::<T>(b)));
            g.bench_function(
                BenchmarkId::from_parameter(format!("B{b}_N{N_PRUNED}_R{CACHE_CAP}")),
                |bn| {
                    bn.iter_custom(|iters| {
                        time_device(
                            iters,
                            || dev.synchronize(),
                            || {
                                recover(
                                    dev,
                                    &cache,
                                    CACHE_CAP,
                                    CACHE_CAP,
                                    &mut x,
                                    N_RECOVERED,
                                    N_PRUNED,
                                    b,
                                    D,
                                )
                                .map(|_| ())
                            },
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
    cpu_take(&mut c);
    cpu_recover::<f32>(&mut c);
    cpu_recover::<f16>(&mut c);
    #[cfg(feature = "cuda")]
    if let Some(dev) = common::cuda() {
        gpu::benches(&mut c, &dev);
    }
    #[cfg(not(feature = "cuda"))]
    common::no_cuda();
    c.final_summary();
}
