//! Determinism (docs/reliability.md): the CPU forward is bit-identical run to run, with a fresh
//! or a reused workspace, and across rayon thread counts (1, 2, 3, 4, 7); the device forward's
//! selections and logits are identical run to run, in f32 and f16 (host shim always, the GPU
//! when present).
//! Every method, with the cross-layer cache and the CLA head.
mod common;
use clca::vit::device::DeviceVit;
use clca::vit::random::random_images;
use clca::vit::{Trace, TraceData, Vit};
use clca::Device;

/// A model of the given size with the paper's CLCA options; DPC-KNN with the authors' noise
/// switched on, seeded: still deterministic.
fn model(prefix: &str, img: usize, patch: usize, d: usize, depth: usize) -> Vit {
    common::clca_model(prefix, img, patch, d, depth, |cfg| {
        if prefix == "dpcknn_" {
            cfg.method.dpc_noise_seed = Some(3);
        }
    })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every f32 and i64 tensor of a trace, as bits.
fn trace_bits(t: &Trace) -> Vec<(String, Vec<u64>)> {
    t.tensors
        .iter()
        .map(|(n, _, d)| {
            let v = match d {
                TraceData::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
                TraceData::I64(v) => v.iter().map(|&x| x as u64).collect(),
            };
            (n.clone(), v)
        })
        .collect()
}

#[test]
fn cpu_forward_is_bit_identical_run_to_run() {
    for prefix in common::method_prefixes() {
        let m = model(prefix, 32, 4, 48, 6);
        let img = random_images(2, 3, 32, 9);
        let mut ws = clca::vit::cpu::CpuWorkspace::new(&m, 2).expect("workspace");
        let mut t1 = Trace::default();
        let a = clca::vit::cpu::forward(&m, &mut ws, &img, Some(&mut t1)).expect("forward");
        // The same workspace again (buffers hold the last run's values) and a fresh one.
        let mut t2 = Trace::default();
        let b = clca::vit::cpu::forward(&m, &mut ws, &img, Some(&mut t2)).expect("forward");
        let c = m.forward_cpu(&img, 2, None).expect("forward");
        assert_eq!(bits(&a), bits(&b), "{prefix}: reused workspace");
        assert_eq!(bits(&a), bits(&c), "{prefix}: fresh workspace");
        assert_eq!(trace_bits(&t1), trace_bits(&t2), "{prefix}: trace");
    }
}

#[test]
fn cpu_forward_is_bit_identical_across_thread_counts() {
    // Large enough that the GEMMs run multi-threaded (m·n·k well above gemm's threshold) and
    // attention has more (image, head) pairs than threads.
    for prefix in common::method_prefixes() {
        let m = model(prefix, 64, 4, 96, 4);
        let img = random_images(3, 3, 64, 5);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let mut t = Trace::default();
                let l = m.forward_cpu(&img, 3, Some(&mut t)).expect("forward");
                (bits(&l), trace_bits(&t))
            })
        };
        let one = run(1);
        for threads in [2, 3, 4, 7] {
            let other = run(threads);
            assert!(
                one.0 == other.0,
                "{prefix}: logits differ between 1 and {threads} threads"
            );
            for ((n, a), (_, b)) in one.1.iter().zip(&other.1) {
                assert!(
                    a == b,
                    "{prefix}: `{n}` differs between 1 and {threads} threads"
                );
            }
        }
    }
}

/// The device forward twice on one workspace, in f32 and f16: selections and logits identical.
fn device_runs_repeat<D: Device>(dev: &D) {
    device_runs_repeat_in::<D, f32>(dev);
    device_runs_repeat_in::<D, clca::f16>(dev);
}

fn device_runs_repeat_in<D: Device, T: clca::Element>(dev: &D) {
    // Smaller than the CPU tests: the host shim runs every CUDA thread as a fiber.
    for prefix in common::method_prefixes() {
        let m = model(prefix, 24, 4, 24, 5);
        let img = random_images(2, 3, 24, 9);
        let dv = DeviceVit::<D, T>::new(dev, &m).expect("upload");
        let mut ws = dv.workspace(dev, 2).expect("workspace");
        let buf = dev.upload(&img).expect("upload");
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut t = Trace::default();
            dv.forward(dev, &mut ws, &buf, Some(&mut t))
                .expect("forward");
            let logits = dv.logits(dev, &ws).expect("logits");
            runs.push((bits(&logits), trace_bits(&t)));
        }
        let what = format!("{prefix} in {} on {}", T::DTYPE, dev.name());
        assert_eq!(runs[0].0, runs[1].0, "{what}: logits");
        let sel = |t: &[(String, Vec<u64>)]| -> Vec<(String, Vec<u64>)> {
            t.iter()
                .filter(|(n, _)| {
                    ["keep_idx", "compl_idx", "cluster_idx", "token_size"]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
                .cloned()
                .collect()
        };
        assert_eq!(sel(&runs[0].1), sel(&runs[1].1), "{what}: selections");
    }
}

#[test]
fn device_forward_repeats_exactly() {
    on_devices!(device_runs_repeat);
}

/// Not part of the guarantee: an image's logits may change in the last bits with the batch it
/// runs in (the GEMMs' blocking depends on their row count, batch × tokens), within 1e-5
/// relative. ATS (by default each image alone) is batch-independent bit for bit.
#[test]
fn batch_composition_changes_at_most_the_last_bits() {
    for prefix in common::method_prefixes() {
        let m = model(prefix, 64, 4, 96, 4);
        let img = random_images(3, 3, 64, 5);
        let per = 3 * 64 * 64;
        let batch = m.forward_cpu(&img, 3, None).expect("batch");
        let mut same = true;
        for i in 0..3 {
            let one = m
                .forward_cpu(&img[i * per..(i + 1) * per], 1, None)
                .expect("one");
            let b = &batch[i * 10..(i + 1) * 10];
            same &= bits(&one) == bits(b);
            let scale = one.iter().fold(1f32, |a, v| a.max(v.abs()));
            for (x, y) in one.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * scale,
                    "{prefix}: image {i}: {x} vs {y}"
                );
            }
        }
        eprintln!("{prefix:>13} alone vs in a batch of 3: bit-identical = {same}");
        if prefix == "ats_" {
            assert!(same, "ATS runs each image alone");
        }
    }
}

/// The portable path (the `gemm` crate, taken by CPUs without AVX-512F) and the packed one
/// agree to rounding, and the portable path is also bit-identical across thread counts.
#[test]
fn portable_and_packed_paths_agree() {
    for prefix in common::method_prefixes() {
        let m = model(prefix, 64, 4, 96, 4);
        let img = random_images(3, 3, 64, 5);
        let run = |threads: usize, portable: bool| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let mut ws = if portable {
                    clca::vit::cpu::CpuWorkspace::new_portable(&m, 3)
                } else {
                    clca::vit::cpu::CpuWorkspace::new(&m, 3)
                }
                .expect("workspace");
                assert!(!portable || !ws.is_packed());
                clca::vit::cpu::forward(&m, &mut ws, &img, None).expect("forward")
            })
        };
        let p1 = run(1, true);
        assert_eq!(
            bits(&p1),
            bits(&run(3, true)),
            "{prefix}: portable, 1 vs 3 threads"
        );
        let packed = run(2, false);
        let scale = p1.iter().fold(1f32, |a, v| a.max(v.abs()));
        for (x, y) in p1.iter().zip(&packed) {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{prefix}: portable {x} vs packed {y}"
            );
        }
    }
}

/// The packed path on AVX2 + FMA (the CPUs without AVX-512) and on AVX-512 runs the same FMA
/// chains in the same order: the same logits, bit for bit, for every method. Each ISA this
/// CPU lacks is skipped with a note.
#[test]
fn packed_isas_agree_bit_for_bit() {
    let isas = common::packed_isas();
    for prefix in common::method_prefixes() {
        let m = model(prefix, 64, 4, 96, 4);
        let img = random_images(3, 3, 64, 5);
        let outs: Vec<Vec<f32>> = isas
            .iter()
            .map(|&isa| {
                let mut ws =
                    clca::vit::cpu::CpuWorkspace::new_packed(&m, 3, isa).expect("workspace");
                assert_eq!(ws.isa(), Some(isa));
                clca::vit::cpu::forward(&m, &mut ws, &img, None).expect("forward")
            })
            .collect();
        for (o, isa) in outs.iter().zip(&isas).skip(1) {
            assert_eq!(
                bits(o),
                bits(&outs[0]),
                "{prefix}: {isa:?} vs {:?}",
                isas[0]
            );
        }
    }
}
