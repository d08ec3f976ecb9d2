//! The CPU forward's GEMM (`clca::cpu::packed::linear`) at ViT-B/16's shapes, on every ISA of
//! this CPU: qkv, fc1 (+ GELU) and fc2 (+ residual) at 785 rows (448 px, batch 1) and at 17
//! rows (EViT kr 0.1 after the second pruning; here the same weights every iteration stay in
//! L3, where in the forward each block's stream from memory). Names
//! `packed_{isa}/{op}/M{rows}`, throughput in FLOPs (2·M·N·K).
mod common;
use clca::cpu::packed::{self, Epi, Isa, PackedMat};
use criterion::{BenchmarkId, Throughput};

fn main() {
    let mut c = common::criterion();
    let d = common::C;
    // (name, n, k); the epilogue follows the name.
    let ops: [(&str, usize, usize); 3] = [
        ("qkv", 3 * d, d),
        ("fc1_gelu", 4 * d, d),
        ("fc2_residual", d, 4 * d),
    ];
    for isa in [Isa::Avx512, Isa::Avx2] {
        if !isa.supported() {
            println!("skipping packed_{isa:?}: this CPU lacks it");
            continue;
        }
        let mut g = c.benchmark_group(format!("packed_{isa:?}").to_lowercase());
        for &(op, n, k) in &ops {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 19) as f32 - 9.0) * 0.01)
                .collect();
            let bias = vec![0.01f32; n];
            let pw = PackedMat::new(&w, n, k).expect("pack");
            for m in [785usize, 17] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.01)
                    .collect();
                let mut y = vec![0f32; m * n];
                let mut ap = vec![0f32; packed::pack_len(m, k)];
                let epi = match op {
                    "fc1_gelu" => Epi::Gelu,
                    "fc2_residual" => Epi::AddTo(None),
                    _ => Epi::Store,
                };
                g.throughput(Throughput::Elements((2 * m * n * k) as u64));
                g.bench_function(BenchmarkId::new(op, format!("M{m}")), |b| {
                    b.iter(|| {
                        packed::linear(&x, k, m, &pw, Some(&bias), &mut y, n, epi, &mut ap, isa)
                    })
                });
            }
        }
        g.finish();
    }
    c.final_summary();
}
