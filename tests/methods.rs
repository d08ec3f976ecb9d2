//! Behaviour of the reduction methods beyond the golden cases: ATS's batch independence and
//! its padding option, DPC-KNN's seeded noise, zero-slot merges, and that every method runs on
//! random weights at the small golden dimensions with and without the cache.
mod common;
use clca::plan::Reduction;
use clca::vit::random::{random_images, random_weights};
use clca::vit::{TrainFlags, Vit, VitConfig};

fn small(prefix: &str, f: &TrainFlags) -> VitConfig {
    let mut cfg =
        VitConfig::from_model_name(&format!("{prefix}deit_tiny_patch16_224"), f).expect("config");
    cfg.img_size = 64;
    cfg.patch_size = 8;
    cfg.embed_dim = 48;
    cfg.mlp_hidden = 192;
    cfg.depth = 6;
    cfg.num_heads = 3;
    cfg.num_classes = 10;
    cfg
}

fn model(cfg: VitConfig, seed: u64) -> Vit {
    let taps = cfg.plan().expect("plan").taps;
    Vit::new(cfg.clone(), random_weights(&cfg, taps, seed)).expect("weights")
}

fn clca_flags(kr: f64) -> TrainFlags {
    TrainFlags {
        reduction_loc: vec![1, 3],
        keep_rate: vec![kr],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        ..TrainFlags::default()
    }
}

#[test]
fn every_method_runs_with_and_without_the_cache() {
    for prefix in common::method_prefixes() {
        for f in [
            clca_flags(0.5),
            TrainFlags {
                reduction_loc: vec![1, 3],
                keep_rate: vec![0.5],
                ..TrainFlags::default()
            },
        ] {
            let m = model(small(prefix, &f), 3);
            let img = random_images(2, 3, 64, 4);
            let logits = m.forward_cpu(&img, 2, None).expect(prefix);
            assert_eq!(logits.len(), 20);
            assert!(logits.iter().all(|v| v.is_finite()), "{prefix}: {logits:?}");
        }
    }
}

#[test]
fn ats_images_do_not_depend_on_their_batch_by_default() {
    let cfg = small("ats_", &clca_flags(0.25));
    assert_eq!(cfg.reduction, Reduction::Ats);
    let m = model(cfg.clone(), 11);
    let b = 4;
    let img = random_images(b, 3, 64, 12);
    let per = 3 * 64 * 64;
    let batch = m.forward_cpu(&img, b, None).expect("batch");
    for i in 0..b {
        let one = m
            .forward_cpu(&img[i * per..(i + 1) * per], 1, None)
            .expect("one");
        assert_eq!(&batch[i * 10..(i + 1) * 10], &one[..], "image {i}");
    }
    // The authors' padding: a batch of one image repeated needs no padding, so it equals the
    // image alone; a mixed batch runs and stays finite (its results may differ from the image
    // alone, as the authors' do: padded cls copies enter the GAP carrier).
    let mut padded = cfg;
    padded.method.ats_batch_padding = true;
    let mp = model(padded, 11);
    let one = mp.forward_cpu(&img[..per], 1, None).expect("one");
    let twice: Vec<f32> = img[..per].iter().chain(&img[..per]).copied().collect();
    let two = mp.forward_cpu(&twice, 2, None).expect("two");
    // (Equal up to GEMM blocking: the batch changes the matrices' row counts.)
    let close = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
    };
    assert!(
        close(&two[..10], &one) && close(&two[10..], &one),
        "{two:?} vs {one:?}"
    );
    let mixed = mp.forward_cpu(&img, b, None).expect("mixed");
    assert!(mixed.iter().all(|v| v.is_finite()));
}

#[test]
fn dpc_noise_is_off_by_default_and_seeded_when_on() {
    let cfg = small("dpcknn_", &clca_flags(0.25));
    let img = random_images(2, 3, 64, 21);
    let plain = model(cfg.clone(), 20)
        .forward_cpu(&img, 2, None)
        .expect("plain");
    let again = model(cfg.clone(), 20)
        .forward_cpu(&img, 2, None)
        .expect("again");
    assert_eq!(plain, again, "no noise: deterministic");
    let mut noisy = cfg;
    noisy.method.dpc_noise_seed = Some(7);
    let a = model(noisy.clone(), 20)
        .forward_cpu(&img, 2, None)
        .expect("a");
    let b = model(noisy, 20).forward_cpu(&img, 2, None).expect("b");
    assert_eq!(a, b, "the same seed gives the same result");
    assert!(a.iter().all(|v| v.is_finite()));
}

#[test]
fn zero_slot_merges_leave_cls_only_without_the_cache() {
    // SiT / PatchMerger with K = int(64·0.01) = 0 slots: the sequence becomes [cls] (no cache,
    // so no empty GAP), as the authors' Linear(·, 0) / [0, D] queries do.
    for prefix in ["sit_", "patchmerger_"] {
        let f = TrainFlags {
            reduction_loc: vec![1],
            keep_rate: vec![0.01],
            ..TrainFlags::default()
        };
        let cfg = small(prefix, &f);
        let plan = cfg.plan().expect("plan");
        assert_eq!(plan.blocks[1].len_in, 1, "{prefix}");
        let m = model(cfg, 5);
        let logits = m
            .forward_cpu(&random_images(1, 3, 64, 6), 1, None)
            .expect(prefix);
        assert!(logits.iter().all(|v| v.is_finite()), "{prefix}");
    }
}
