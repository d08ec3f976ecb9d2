//! The fused attention kernel (kernels/flash.cu, `ops::attention::flash_launch`) on a GPU:
//! both query tiles (64 queries a block, the default, and 128) at the 448 px ViT-B/16 shapes
//! of EViT + CLCA (N = 786 before the first pruning layer, then 87 and 17; 12 heads of 64),
//! batches 1, 8 and 64, f16 and bf16, with and without the cls row (the pruning layers need
//! it), and a Top-K layer's attention of only the kept queries (`topk_kr0.1`: the first tile
//! with the cls row, then cls + the kept; elements are the full layer's FLOPs, so its rate
//! reads as the equivalent of the whole attention). Throughput is in FLOPs of the two products (4·N²·HD per head and image), so criterion's
//! elements/s reads as FLOP/s. The CPU forward's attention is timed inside the `vit` bench.
//!
//! `cargo bench --features cuda --bench attention` (without a GPU it says so and exits).
mod common;

#[cfg(feature = "cuda")]
mod gpu {
    use super::common::{cvt, time_device, Rng, BATCHES, H, HD, LAYERS};
    use clca::cuda::CudaDevice;
    use clca::ops::attention::{flash_launch, flash_launch_queries, FlashQueries, FlashTile};
    use clca::{bf16, f16, Buffer, Device, Element};
    use criterion::{BenchmarkId, Criterion, Throughput};

    pub fn benches(c: &mut Criterion, dev: &CudaDevice) {
        flash::<bf16>(c, dev);
        flash::<f16>(c, dev);
    }

    fn flash<T: Element>(c: &mut Criterion, dev: &CudaDevice) {
        let mut rng = Rng::new(21);
        let mut g = c.benchmark_group(format!("cuda_flash_{}", T::DTYPE));
        let d = H * HD;
        for l in LAYERS {
            for b in BATCHES {
                let qkv = dev
                    .upload(&cvt::<T>(&rng.vec_sym(b * l.n * 3 * d)))
                    .expect("upload");
                let mut out = dev.zeros::<T>(b * l.n * d).expect("alloc");
                let mut cls = dev.zeros::<f32>(b * H * l.n).expect("alloc");
                g.throughput(Throughput::Elements((4 * b * H * l.n * l.n * HD) as u64));
                for (tile, name) in [(FlashTile::Q64, "q64"), (FlashTile::Q128, "q128")] {
                    for with_cls in [false, true] {
                        let launch = flash_launch(
                            T::DTYPE,
                            tile,
                            qkv.addr(),
                            b,
                            l.n,
                            H,
                            HD,
                            0,
                            out.addr_mut(),
                            if with_cls { cls.addr_mut() } else { 0 },
                        )
                        .expect("launch");
                        let id = format!("{name}{}", if with_cls { "_cls" } else { "" });
                        g.bench_function(BenchmarkId::new(id, format!("B{b}_N{}", l.n)), |bn| {
                            bn.iter_custom(|iters| {
                                time_device(
                                    iters,
                                    || dev.synchronize(),
                                    // SAFETY: qkv [b, n, 3, H, HD], out [b, n, H·HD] and
                                    // cls [b, H, n] as the contract names.
                                    || unsafe { dev.launch(&launch) },
                                )
                            })
                        });
                    }
                }
                if l.n > 100 {
                    // A Top-K layer's attention at kr 0.1: the first tile with the cls row,
                    // then cls and the 78 kept queries (`FlashQueries`), against `q64_cls`.
                    let k = (l.n - 1).div_ceil(10);
                    let idx: Vec<u32> = (0..b).flat_map(|_| (0..k as u32).map(|j| 2 * j)).collect();
                    let idx = dev.upload(&idx).expect("upload");
                    let mut kept = dev.zeros::<T>(b * (k + 1) * d).expect("alloc");
                    let q = |queries, out: u64, cls: u64| {
                        let (qkv, tile) = (qkv.addr(), FlashTile::Q64);
                        flash_launch_queries(
                            T::DTYPE,
                            tile,
                            qkv,
                            b,
                            l.n,
                            H,
                            HD,
                            0,
                            queries,
                            out,
                            cls,
                        )
                        .expect("launch")
                    };
                    let first = q(FlashQueries::FirstTile, out.addr_mut(), cls.addr_mut());
                    let sel = FlashQueries::Selected { idx: idx.addr(), k };
                    let selected = q(sel, kept.addr_mut(), 0);
                    g.bench_function(
                        BenchmarkId::new("topk_kr0.1", format!("B{b}_N{}", l.n)),
                        |bn| {
                            bn.iter_custom(|iters| {
                                time_device(
                                    iters,
                                    || dev.synchronize(),
                                    // SAFETY: as above; idx [b, k] < n − 1, kept [b, k + 1, H·HD].
                                    || unsafe {
                                        dev.launch(&first)?;
                                        dev.launch(&selected)
                                    },
                                )
                            })
                        },
                    );
                }
            }
        }
        g.finish();
    }
}

fn main() {
    #[cfg(feature = "cuda")]
    {
        let mut c = common::criterion();
        if let Some(dev) = common::cuda() {
            gpu::benches(&mut c, &dev);
        }
        c.final_summary();
    }
    #[cfg(not(feature = "cuda"))]
    common::no_cuda();
}
