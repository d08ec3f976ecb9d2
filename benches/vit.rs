//! The whole forward: ViT-B/16 at 448 px, plain and EViT + CLCA (kr 0.1, locs 3 6 9, the
//! README recipe), batch 1, on the CPU (f32) and, with a GPU, on CUDA in f32/f16/bf16.
//! Names `{device}_vit_{config}_{dtype}`, throughput in images.
mod common;
use clca::vit::cpu::{forward, CpuWorkspace};
use clca::vit::random::random_weights;
use clca::vit::{TrainFlags, Vit, VitConfig};
use criterion::{BenchmarkId, Throughput};
use std::time::Duration;

fn model(name: &str, kr: f64, clca: bool) -> Vit {
    let f = TrainFlags {
        input_size: Some(448),
        keep_rate: vec![kr],
        clc: clca,
        num_clr: clca as usize,
        ifa_head: clca,
        num_classes: 200,
        ..TrainFlags::default()
    };
    let cfg = VitConfig::from_model_name(name, &f).expect("config");
    let taps = cfg.plan().expect("plan").taps;
    let w = random_weights(&cfg, taps, 1);
    Vit::new(cfg, w).expect("model")
}

fn main() {
    let mut c = common::criterion()
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    let configs = [
        (
            "evit_clca_kr0.1_448",
            model("evit_vit_base_patch16_clip_224.laion2b", 0.1, true),
        ),
        (
            "plain_448",
            model("vit_base_patch16_clip_224.laion2b", 1.0, false),
        ),
    ];
    let batch = 1;
    let images = clca::vit::random::random_images(batch, 3, 448, 7);
    {
        let mut g = c.benchmark_group("cpu_vit_f32");
        g.throughput(Throughput::Elements(batch as u64));
        for (name, m) in &configs {
            let mut ws = CpuWorkspace::new(m, batch).expect("workspace");
            g.bench_function(BenchmarkId::new(*name, format!("B{batch}")), |b| {
                b.iter(|| forward(m, &mut ws, &images, None).expect("forward"))
            });
        }
        g.finish();
    }
    #[cfg(feature = "cuda")]
    match clca::cuda::try_default() {
        Err(e) => println!("skipping CUDA benches: {e}"),
        Ok(dev) => {
            fn run<T: clca::Element>(
                c: &mut criterion::Criterion,
                dev: &clca::cuda::CudaDevice,
                configs: &[(&str, Vit)],
                images: &[f32],
                batch: usize,
            ) {
                use clca::Device;
                let mut g = c.benchmark_group(format!("cuda_vit_{}", T::DTYPE));
                g.throughput(Throughput::Elements(batch as u64));
                let img = dev.upload(images).expect("upload");
                for (name, m) in configs {
                    let dv = clca::vit::device::DeviceVit::<_, T>::new(dev, m).expect("upload");
                    let mut ws = dv.workspace(dev, batch).expect("workspace");
                    g.bench_function(BenchmarkId::new(*name, format!("B{batch}")), |b| {
                        b.iter_custom(|iters| {
                            let t = std::time::Instant::now();
                            for _ in 0..iters {
                                dv.forward(dev, &mut ws, &img, None).expect("forward");
                            }
                            dev.synchronize().expect("sync");
                            t.elapsed()
                        })
                    });
                }
                g.finish();
            }
            run::<f32>(&mut c, &dev, &configs, &images, batch);
            run::<clca::f16>(&mut c, &dev, &configs, &images, batch);
            run::<clca::bf16>(&mut c, &dev, &configs, &images, batch);
        }
    }
    c.final_summary();
}
