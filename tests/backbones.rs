//! Backbone flavours the golden cases do not cover (CLIP: norm_pre, eps 1e-5, no patch bias;
//! DeiT-3: no_embed_class + LayerScale; MIIL: no qkv bias; the linear CLA head): the CPU
//! forward and the device forward (host shim) must agree, and the weights must be checked.
mod common;
use clca::vit::device::DeviceVit;
use clca::vit::{HeadKind, TrainFlags, Vit, VitConfig};
use clca::Device;
use common::*;

fn small(name: &str, f: &TrainFlags) -> VitConfig {
    let mut cfg = VitConfig::from_model_name(name, f).expect("config");
    // The golden cases' small dimensions: 64 px, patch 8, width 48, depth 6, 3 heads.
    cfg.img_size = 64;
    cfg.patch_size = 8;
    cfg.embed_dim = 48;
    cfg.mlp_hidden = 192;
    cfg.depth = 6;
    cfg.num_heads = 3;
    cfg
}

fn agree(cfg: VitConfig, seed: u64) {
    let plan = cfg.plan().expect("plan");
    let model = Vit::new(cfg.clone(), random_weights(&cfg, plan.taps, seed)).expect("weights");
    let b = 2;
    let mut rng = TRng(seed + 1);
    let images: Vec<f32> = rng.normals(b * 3 * 64 * 64);
    let cpu = model.forward_cpu(&images, b, None).expect("cpu forward");
    let dev = clca::HostShim;
    let dv = DeviceVit::<_, f32>::new(&dev, &model).expect("upload");
    let mut ws = dv.workspace(&dev, b).expect("workspace");
    let img = dev.upload(&images).expect("upload");
    dv.forward(&dev, &mut ws, &img, None)
        .expect("device forward");
    let got = dv.logits(&dev, &ws).expect("logits");
    let m = cpu.iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = cpu
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        err <= 1e-4 * m,
        "{}: CPU vs shim max|Δ| {err:e} (max {m})",
        cfg.name
    );
    assert!(cpu.iter().all(|v| v.is_finite()));
}

#[test]
fn clip_deit3_miil_and_heads_agree_across_backends() {
    let clca = TrainFlags {
        reduction_loc: vec![1, 3],
        keep_rate: vec![0.25],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        num_classes: 10,
        ..TrainFlags::default()
    };
    agree(small("evit_vit_base_patch16_clip_224.laion2b", &clca), 1);
    agree(small("topk_deit3_base_patch16_224.fb_in1k", &clca), 2);
    agree(
        small(
            "evit_vit_base_patch16_224_miil.in21k",
            &TrainFlags {
                ifa_dws_conv_groups: 0,
                ..clca.clone()
            },
        ),
        3,
    );
    agree(
        small(
            "vit_base_patch16_224.orig_in21k",
            &TrainFlags {
                num_classes: 10,
                ..TrainFlags::default()
            },
        ),
        4,
    );
    let cfg = small(
        "evit_deit3_base_patch16_224.fb_in22k_ft_in1k",
        &TrainFlags {
            clc_pool_cls: true,
            clc_pool_clr: true,
            num_clr: 2,
            ..clca
        },
    );
    assert!(
        cfg.no_embed_class && cfg.layerscale && matches!(cfg.head, HeadKind::Cla { groups: 2 })
    );
    agree(cfg, 5);
}

#[test]
fn model_names_map_to_the_spec_table() {
    let f = TrainFlags::default();
    let clip =
        VitConfig::from_model_name("evit_vit_base_patch16_clip_224.laion2b", &f).expect("clip");
    assert!(
        clip.norm_pre
            && !clip.patch_bias
            && clip.ln_eps == 1e-5
            && clip.qkv_bias
            && !clip.no_embed_class
    );
    let deit3 =
        VitConfig::from_model_name("deit3_base_patch16_224.fb_in22k_ft_in1k", &f).expect("deit3");
    assert!(deit3.no_embed_class && deit3.layerscale && deit3.ln_eps == 1e-6 && deit3.patch_bias);
    let miil =
        VitConfig::from_model_name("topk_vit_base_patch16_224_miil.in21k", &f).expect("miil");
    assert!(!miil.qkv_bias);
    for name in [
        "vit_base_patch16_224.orig_in21k",
        "deit_base_patch16_224.fb_in1k",
        "vit_base_patch16_224.in1k_mocov3",
        "vit_base_patch16_224.dino",
        "vit_base_patch16_224.mae",
    ] {
        let c = VitConfig::from_model_name(name, &f).expect(name);
        assert!(
            c.qkv_bias
                && !c.norm_pre
                && c.patch_bias
                && !c.layerscale
                && (c.embed_dim, c.depth, c.num_heads) == (768, 12, 12),
            "{name}"
        );
    }
    let tome =
        VitConfig::from_model_name("tome_vit_base_patch16_224.orig_in21k", &f).expect("tome");
    assert_eq!(tome.reduction, clca::plan::Reduction::ToMe);
    use clca::plan::Reduction;
    for (prefix, r) in [
        ("dpcknn_", Reduction::DpcKnn),
        ("sit_", Reduction::Sit),
        ("patchmerger_", Reduction::PatchMerger),
        ("ats_", Reduction::Ats),
        ("dyvit_", Reduction::DynamicVit),
        ("evit_", Reduction::EVit),
        ("topk_", Reduction::TopK),
    ] {
        let c = VitConfig::from_model_name(&format!("{prefix}vit_base_patch16_224.orig_in21k"), &f)
            .expect(prefix);
        assert_eq!(c.reduction, r, "{prefix}");
        assert_eq!(r.prefix(), prefix);
    }
    assert!(VitConfig::from_model_name("resnet50", &f).is_err());
}

#[test]
fn bad_weights_are_named_errors() {
    let f = TrainFlags {
        reduction_loc: vec![1, 3],
        keep_rate: vec![0.25],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        num_classes: 10,
        ..TrainFlags::default()
    };
    let cfg = small("evit_vit_base_patch16_clip_224.laion2b", &f);
    let taps = cfg.plan().expect("plan").taps;
    let good = random_weights(&cfg, taps, 9);
    assert!(Vit::new(cfg.clone(), good.clone()).is_ok());
    let mut missing = good.clone();
    missing.tensors.remove("blocks.2.attn.proj.bias");
    let e = Vit::new(cfg.clone(), missing).expect_err("missing");
    assert!(e.to_string().contains("blocks.2.attn.proj.bias"), "{e}");
    let mut extra = good.clone();
    extra
        .tensors
        .insert("blocks.9.norm1.weight".into(), (vec![48], vec![0.0; 48]));
    let e = Vit::new(cfg.clone(), extra).expect_err("extra");
    assert!(e.to_string().contains("blocks.9.norm1.weight"), "{e}");
    let mut shape = good.clone();
    shape
        .tensors
        .insert("pos_embed".into(), (vec![1, 65, 48], vec![0.0; 65 * 48]));
    let e = Vit::new(cfg.clone(), shape).expect_err("shape");
    assert!(
        e.to_string().contains("pos_embed") && e.to_string().contains("[1, 66, 48]"),
        "{e}"
    );
    // Corrupt and truncated files.
    let e = clca::vit::TensorMap::from_bytes(b"not a safetensors file").expect_err("corrupt");
    assert!(e.to_string().contains("safetensors"), "{e}");
    if let Some(dir) = common::golden::dir() {
        let bytes = std::fs::read(dir.join("A_evit_clc_ifa/weights.safetensors")).expect("read");
        assert!(
            clca::vit::TensorMap::from_bytes(&bytes[..bytes.len() / 2]).is_err(),
            "truncated"
        );
    }
    let e = Vit::load(cfg, std::path::Path::new("/nonexistent/w.safetensors"))
        .expect_err("missing file");
    assert!(e.to_string().contains("/nonexistent/w.safetensors"), "{e}");
}

#[test]
fn unplannable_configurations_are_refused() {
    // A first recovery at layer 0 makes the authors' code concatenate an empty cache.
    let f = TrainFlags {
        reduction_loc: vec![0, 3],
        keep_rate: vec![0.25],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        num_classes: 10,
        ..TrainFlags::default()
    };
    let e = VitConfig::from_model_name("evit_vit_base_patch16_224.orig_in21k", &f)
        .and_then(|c| c.plan())
        .expect_err("layer 0");
    assert!(e.to_string().contains("reduction_loc"), "{e}");
    // Neither GAP nor clr carriers.
    let f = TrainFlags {
        reduction_loc: vec![3],
        clc_include_gap: false,
        num_clr: 0,
        ..f
    };
    assert!(
        VitConfig::from_model_name("evit_vit_base_patch16_224.orig_in21k", &f)
            .and_then(|c| c.plan())
            .is_err()
    );
}

#[test]
fn cpu_forward_is_bit_identical_across_runs_and_thread_counts() {
    let f = TrainFlags {
        reduction_loc: vec![1, 3],
        keep_rate: vec![0.25],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        num_classes: 10,
        ..TrainFlags::default()
    };
    let cfg = small("evit_vit_base_patch16_clip_224.laion2b", &f);
    let taps = cfg.plan().expect("plan").taps;
    let model = Vit::new(cfg.clone(), random_weights(&cfg, taps, 3)).expect("model");
    let mut rng = TRng(4);
    let images: Vec<f32> = rng.normals(3 * 3 * 64 * 64);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| model.forward_cpu(&images, 3, None).expect("forward"))
    };
    let one = run(1);
    for t in [1, 2, 3, 4] {
        let other = run(t);
        assert!(
            one.iter()
                .zip(&other)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{t} threads differ from 1"
        );
    }
}
