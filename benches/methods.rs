//! The reduction methods on the CPU (f32): one reduction step at the shapes of ViT-B/16 at
//! 448 px (block 3 of the paper's recipe: 785 non-cls tokens, D = 768, K = 78 slots/clusters,
//! 79 ATS samples), and the whole forward per method at kr 0.1, 0.25, 0.5, 0.7 with CLCA
//! (train.py defaults, locs 3 6 9), batch 1. Where the authors' code yields NaN (SiT,
//! PatchMerger, ATS at kr 0.1 with the GAP carrier) the model is refused, so that point runs
//! without the GAP carrier (`_nogap`). Filter with `cargo bench --bench methods -- <name>`.
mod common;
use clca::vit::cpu::{forward, CpuWorkspace};
use clca::vit::random::{random_images, random_weights};
use clca::vit::{TrainFlags, Vit, VitConfig};
use criterion::BenchmarkId;
use std::time::Duration;

fn model(prefix: &str, kr: f64, gap: bool) -> clca::Result<Vit> {
    let f = TrainFlags {
        input_size: Some(448),
        keep_rate: vec![kr],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        clc_include_gap: gap,
        num_classes: 200,
        ..TrainFlags::default()
    };
    let cfg = VitConfig::from_model_name(&format!("{prefix}vit_base_patch16_224"), &f)?;
    let taps = cfg.plan()?.taps;
    let w = random_weights(&cfg, taps, 1);
    Vit::new(cfg, w)
}

fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut r = clca::vit::random::Rng::new(seed, 0);
    (0..n).map(|_| r.normal() as f32).collect()
}

fn main() {
    let mut c = common::criterion()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let (n, d, k) = (785usize, 768usize, 78usize);
    {
        let mut g = c.benchmark_group("cpu_method_step_f32");
        let x = normals(n * d, 1);
        let s = normals(n * k, 2);
        let mut out = vec![0f32; k * d];
        g.bench_function(BenchmarkId::new("softmax_merge", "n785_K78"), |b| {
            b.iter(|| clca::cpu::merge::softmax_merge(&s, &x, 1, n, k, d, 1.0, &mut out))
        });
        let m = 784;
        g.bench_function(BenchmarkId::new("dpcknn_cluster_merge", "m784_K78"), |b| {
            b.iter(|| {
                let cl =
                    clca::cpu::dpcknn::cluster(&x[..m * d], m, d, k, 5, None).expect("cluster");
                clca::cpu::dpcknn::merge(&x[..m * d], m, d, &cl.idx_cluster, k, None, &mut out)
            })
        });
        let sig: Vec<f32> = normals(n, 3).iter().map(|v| v.abs()).collect();
        let mask = vec![true; n];
        let steps: Vec<f32> = clca::plan::ats_steps(79).collect();
        g.bench_function(BenchmarkId::new("ats_sample", "n785_K79"), |b| {
            b.iter(|| clca::cpu::ats::sample(&sig, &mask, &steps))
        });
        if let Ok(m) = model("dyvit_", 0.1, true) {
            if let clca::vit::weights::MethodWeights::DynamicVit(p) = &m.weights.method {
                let delta = vec![1f32; n];
                g.bench_function(BenchmarkId::new("dyvit_predict", "n785"), |b| {
                    b.iter(|| clca::cpu::dyvit::predict(&p[0], &x, n, d, &delta))
                });
            }
        }
        g.finish();
    }
    let images = random_images(1, 3, 448, 7);
    let mut g = c.benchmark_group("cpu_method_forward_f32");
    for prefix in [
        "evit_",
        "tome_",
        "dpcknn_",
        "sit_",
        "patchmerger_",
        "ats_",
        "dyvit_",
    ] {
        for kr in [0.1, 0.25, 0.5, 0.7] {
            let (m, tag) = match model(prefix, kr, true) {
                Ok(m) => (m, ""),
                Err(_) => (
                    model(prefix, kr, false).expect("model without GAP"),
                    "_nogap",
                ),
            };
            let name = format!("{}clca{tag}", prefix);
            let mut ws = CpuWorkspace::new(&m, 1).expect("workspace");
            g.bench_function(BenchmarkId::new(name, format!("kr{kr}_B1")), |b| {
                b.iter(|| forward(&m, &mut ws, &images, None).expect("forward"))
            });
        }
    }
    g.finish();
}
