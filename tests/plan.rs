#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! Planned lengths against SPEC §2.4–§2.5 (the authors' traces at 448 px) and bad plans.
use clca::plan::{plan, ClcOptions, PlanSpec, Reduction};

fn spec(reduction: Reduction, clc: bool, kr: f64) -> clca::plan::SeqPlan {
    plan(&PlanSpec {
        k_neighbors: 5,
        patches: 784,
        num_clr: if clc { 1 } else { 0 },
        depth: 12,
        reduction,
        locs: &[3, 6, 9],
        keep_rates: &[kr],
        clc: clc.then(ClcOptions::default),
    })
    .expect("plan")
}

fn outs(p: &clca::plan::SeqPlan) -> Vec<usize> {
    p.blocks.iter().map(|b| b.len_out).collect()
}

#[test]
fn spec_2_5_lengths_at_448() {
    assert_eq!(
        outs(&spec(Reduction::EVit, true, 0.1)),
        [786, 786, 786, 81, 87, 87, 11, 17, 17, 4, 10, 12]
    );
    assert_eq!(
        outs(&spec(Reduction::TopK, true, 0.1)),
        [786, 786, 786, 80, 86, 86, 10, 16, 16, 3, 9, 11]
    );
    assert_eq!(
        outs(&spec(Reduction::EVit, false, 0.1)),
        [785, 785, 785, 81, 81, 81, 10, 10, 10, 3, 3, 3]
    );
    assert_eq!(
        outs(&spec(Reduction::TopK, false, 0.1)),
        [785, 785, 785, 80, 80, 80, 9, 9, 9, 2, 2, 2]
    );
    assert_eq!(
        outs(&spec(Reduction::None, true, 1.0)),
        [786, 786, 786, 786, 792, 792, 792, 798, 798, 798, 804, 806]
    );
    assert_eq!(outs(&spec(Reduction::None, false, 1.0)), [785; 12]);
    // ToMe: targets 78, 7, 0 → r = 706, 71, 7, capped at ⌊(n−1)/2⌋ (392 at block 3).
    assert_eq!(
        outs(&spec(Reduction::ToMe, true, 0.1)),
        [786, 786, 786, 394, 400, 400, 329, 335, 335, 328, 334, 336]
    );
    assert_eq!(
        outs(&spec(Reduction::ToMe, false, 0.1)),
        [785, 785, 785, 393, 393, 393, 322, 322, 322, 315, 315, 315]
    );
}

#[test]
fn spec_2_5_lengths_of_the_other_methods() {
    // Before-block methods: "out" = the block's length before recovery.
    assert_eq!(
        outs(&spec(Reduction::DpcKnn, true, 0.1)),
        [786, 786, 786, 80, 86, 86, 15, 21, 21, 15, 21, 23]
    );
    assert_eq!(
        outs(&spec(Reduction::DpcKnn, false, 0.1)),
        [785, 785, 785, 79, 79, 79, 8, 8, 8, 2, 2, 2]
    );
    assert_eq!(
        outs(&spec(Reduction::DynamicVit, true, 0.1)),
        [786, 786, 786, 79, 85, 85, 9, 15, 15, 2, 8, 10]
    );
    for r in [
        Reduction::Sit,
        Reduction::PatchMerger,
        Reduction::Ats,
        Reduction::DynamicVit,
    ] {
        assert_eq!(
            outs(&spec(r, false, 0.1)),
            [785, 785, 785, 79, 79, 79, 8, 8, 8, 1, 1, 1],
            "{r:?}"
        );
    }
    // ATS's lengths are upper bounds (unique samples), flagged as data-dependent.
    assert!(spec(Reduction::Ats, false, 0.1).data_dependent);
    assert!(!spec(Reduction::Sit, false, 0.1).data_dependent);
    // DPC-KNN's protected suffix: clr, then every recovered token.
    let p = spec(Reduction::DpcKnn, true, 0.1);
    let pre: Vec<(usize, usize, usize)> = p
        .blocks
        .iter()
        .filter_map(|b| b.pre.as_ref().map(|q| (q.len_before, q.out, q.suffix)))
        .collect();
    assert_eq!(pre, [(786, 78, 1), (86, 7, 7), (21, 1, 13)]);
}

#[test]
fn nan_configurations_are_refused_with_method_and_layer() {
    // SPEC §7 item 4: SiT, PatchMerger and ATS at kr 0.1 with CLC and the GAP carrier reach a
    // cls-only sequence at block 9 (448 px), and DynamicViT does at 224 px.
    for r in [Reduction::Sit, Reduction::PatchMerger, Reduction::Ats] {
        let e = plan(&PlanSpec {
            k_neighbors: 5,
            patches: 784,
            num_clr: 1,
            depth: 12,
            reduction: r,
            locs: &[3, 6, 9],
            keep_rates: &[0.1],
            clc: Some(ClcOptions::default()),
        })
        .expect_err("NaN configuration");
        let msg = e.to_string();
        assert!(
            msg.contains(r.name()) && msg.contains("block 9") && msg.contains("0.1"),
            "{msg}"
        );
    }
    let dyvit = |patches| {
        plan(&PlanSpec {
            k_neighbors: 5,
            patches,
            num_clr: 1,
            depth: 12,
            reduction: Reduction::DynamicVit,
            locs: &[3, 6, 9],
            keep_rates: &[0.1],
            clc: Some(ClcOptions::default()),
        })
    };
    assert!(dyvit(784).is_ok());
    let msg = dyvit(196).expect_err("224 px").to_string();
    assert!(
        msg.contains("DynamicViT") && msg.contains("block 9"),
        "{msg}"
    );
    // Without the GAP carrier the same configurations plan (the clr carrier is the tail).
    let no_gap = ClcOptions {
        include_gap: false,
        ..ClcOptions::default()
    };
    let p = plan(&PlanSpec {
        k_neighbors: 5,
        patches: 784,
        num_clr: 1,
        depth: 12,
        reduction: Reduction::Sit,
        locs: &[3, 6, 9],
        keep_rates: &[0.1],
        clc: Some(no_gap),
    })
    .expect("SiT without GAP");
    assert_eq!(outs(&p), [786, 786, 786, 79, 82, 82, 8, 11, 11, 1, 4, 5]);
}

#[test]
fn ats_sample_points_follow_torch_arange() {
    use clca::plan::{ats_points, ats_steps};
    // ⌈((2k−1)/(2k) − 1/(2k)) / (1/k)⌉ in double precision: k − 1 points, except where the
    // quotient rounds above k − 1 (k = 3, 7, 12, ...).
    assert_eq!(ats_points(1), 0);
    assert_eq!(ats_points(2), 1);
    assert_eq!(ats_points(3), 3);
    assert_eq!(ats_points(79), 78);
    assert_eq!(ats_points(17), 16);
    let s: Vec<f32> = ats_steps(4).collect();
    assert_eq!(s, [0.125, 0.375, 0.625]);
}

#[test]
fn spec_2_4_worked_example() {
    let p = spec(Reduction::EVit, true, 0.1);
    let keep: Vec<Option<usize>> = p.blocks.iter().map(|b| b.keep).collect();
    assert_eq!(keep[3], Some(79));
    assert_eq!(keep[6], Some(9));
    assert_eq!(keep[9], Some(2));
    let rec: Vec<usize> = p.blocks.iter().map(|b| b.recovered).collect();
    assert_eq!(rec, [0, 0, 0, 6, 0, 0, 6, 0, 0, 6, 2, 0]);
    assert_eq!(p.recovery, [3, 6, 9, 10]);
    let pools: Vec<Option<std::ops::Range<usize>>> = p
        .blocks
        .iter()
        .map(|b| b.carriers.as_ref().map(|c| c.0.clone()))
        .collect();
    assert_eq!(pools[0], Some(1..785), "GAP over the 784 patches");
    assert_eq!(pools[3], Some(1..81), "79 kept + fused");
    assert_eq!(pools[5], Some(1..81));
    assert_eq!(pools[6], Some(1..11));
    assert_eq!(pools[9], Some(1..4));
    assert_eq!(pools[10], None, "carriers of block 10 are never taken");
    let slots: Vec<Option<usize>> = p
        .blocks
        .iter()
        .map(|b| b.carriers.as_ref().map(|c| c.1))
        .collect();
    assert_eq!(&slots[..3], &[Some(0), Some(2), Some(4)]);
    assert_eq!(p.cache_cap, 6);
    assert_eq!(p.max_len, 786);
    assert_eq!(p.taps, 4);
    let taps: Vec<usize> = p
        .blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.cls_tap)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(taps, [3, 6, 9, 11]);
}

#[test]
fn keep_rate_one_and_per_layer_rates() {
    let p = spec(Reduction::EVit, true, 1.0);
    assert!(
        p.blocks.iter().all(|b| b.keep.is_none()),
        "kr 1 keeps everything, no fused token"
    );
    let p = plan(&PlanSpec {
        k_neighbors: 5,
        patches: 784,
        num_clr: 0,
        depth: 12,
        reduction: Reduction::TopK,
        locs: &[3, 6, 9],
        keep_rates: &[0.5, 0.5, 0.25],
        clc: None,
    })
    .expect("plan");
    assert_eq!(
        outs(&p)[11],
        1 + (0.25f64 * (1 + ((0.5f64 * 392.0).ceil() as usize) - 1) as f64).ceil() as usize
    );
}

#[test]
fn bad_plans_are_errors() {
    let base = PlanSpec {
        k_neighbors: 5,
        patches: 784,
        num_clr: 1,
        depth: 12,
        reduction: Reduction::EVit,
        locs: &[3, 6, 9],
        keep_rates: &[0.1],
        clc: Some(ClcOptions::default()),
    };
    let cases: Vec<(PlanSpec, &str)> = vec![
        (
            PlanSpec {
                keep_rates: &[0.0],
                ..base.clone()
            },
            "keep_rate",
        ),
        (
            PlanSpec {
                keep_rates: &[1.5],
                ..base.clone()
            },
            "keep_rate",
        ),
        (
            PlanSpec {
                keep_rates: &[f64::NAN],
                ..base.clone()
            },
            "keep_rate",
        ),
        (
            PlanSpec {
                keep_rates: &[0.1, 0.2],
                ..base.clone()
            },
            "keep_rate",
        ),
        (
            PlanSpec {
                locs: &[3, 3, 9],
                ..base.clone()
            },
            "reduction_loc",
        ),
        (
            PlanSpec {
                locs: &[3, 12],
                ..base.clone()
            },
            "reduction_loc",
        ),
        (
            PlanSpec {
                locs: &[0, 6],
                ..base.clone()
            },
            "reduction_loc",
        ),
        (
            PlanSpec {
                k_neighbors: 5,
                num_clr: 0,
                clc: Some(ClcOptions {
                    include_gap: false,
                    ..ClcOptions::default()
                }),
                ..base.clone()
            },
            "clc",
        ),
        (
            PlanSpec {
                depth: 0,
                ..base.clone()
            },
            "depth",
        ),
    ];
    for (s, arg) in cases {
        let e = plan(&s).expect_err(arg);
        assert!(e.to_string().contains(arg), "{arg}: {e}");
    }
}

#[test]
fn macs_reproduce_the_paper() {
    use clca::vit::{macs::macs, TrainFlags, VitConfig};
    let flags = |kr: f64, clca: bool| TrainFlags {
        input_size: Some(448),
        keep_rate: vec![kr],
        clc: clca,
        num_clr: clca as usize,
        ifa_head: clca,
        ..TrainFlags::default()
    };
    let g = |name: &str, f: TrainFlags| {
        let cfg = VitConfig::from_model_name(name, &f).expect("config");
        let plan = cfg.plan().expect("plan");
        macs(&cfg, &plan).backbone() as f64 / 1e9
    };
    let vit = g("vit_base_patch16_224.orig_in21k", flags(1.0, false));
    assert!(
        (vit - 78.49).abs() < 0.005,
        "unreduced ViT-B/16 at 448: {vit}"
    );
    let evit = g("evit_vit_base_patch16_clip_224.laion2b", flags(0.1, true));
    assert!((evit - 25.17).abs() < 0.005, "EViT+CLCA kr 0.1: {evit}");
    let evit7 = g("evit_deit3_base_patch16_224.fb_in1k", flags(0.7, true));
    assert!((evit7 - 50.85).abs() < 0.005, "EViT+CLCA kr 0.7: {evit7}");
    let tome = g("tome_vit_base_patch16_224.orig_in21k", flags(0.1, true));
    assert!(
        (tome - 46.0).abs() < 0.5,
        "ToMe+CLCA kr 0.1 (SPEC §5: about 46 G): {tome}"
    );
}

#[test]
fn macs_per_method_follow_the_authors_counters() {
    use clca::vit::{macs::macs, TrainFlags, VitConfig};
    let f = TrainFlags {
        input_size: Some(448),
        keep_rate: vec![0.1],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        clc_include_gap: false,
        ..TrainFlags::default()
    };
    let report = |prefix: &str| {
        let cfg = VitConfig::from_model_name(&format!("{prefix}vit_base_patch16_224"), &f)
            .expect("config");
        let plan = cfg.plan().expect("plan");
        (cfg.clone(), plan.clone(), macs(&cfg, &plan))
    };
    let (d, hm) = (768u64, 3072u64);
    let closed = |plan: &clca::plan::SeqPlan| -> Vec<u64> {
        plan.blocks
            .iter()
            .map(|b| {
                let (n, nm) = (b.len_in as u64, b.len_out as u64);
                n * 3 * d * d + 2 * n * n * d + n * d * d + nm * 2 * d * hm
            })
            .collect()
    };
    // DynamicViT: the predictor's matmuls on the tokens it ranks, in the block it precedes.
    let (_, plan, r) = report("dyvit_");
    let base = closed(&plan);
    for (i, b) in plan.blocks.iter().enumerate() {
        let extra = r.blocks[i] - base[i];
        match &b.pre {
            Some(q) => {
                let nt = (q.len_before - 1) as u64;
                assert_eq!(
                    extra,
                    nt * (d * d + d * 384 + 384 * 192 + 192 * 2),
                    "block {i}"
                );
            }
            None => assert_eq!(extra, 0, "block {i}"),
        }
    }
    // ATS: thop leaves out q·kᵀ and A·v, and the proj runs on the sampled length.
    let (_, plan, r) = report("ats_");
    for (i, b) in plan.blocks.iter().enumerate() {
        let (n, nm) = (b.len_in as u64, b.len_out as u64);
        assert_eq!(
            r.blocks[i],
            n * 3 * d * d + nm * d * d + nm * 2 * d * hm,
            "block {i}"
        );
    }
    for p in ["dpcknn_", "sit_", "patchmerger_", "ats_", "dyvit_"] {
        let (_, _, r) = report(p);
        eprintln!(
            "{p} CLC (no GAP) + CLA kr 0.1 at 448: {:.2} GMACs",
            r.backbone() as f64 / 1e9
        );
    }
}
