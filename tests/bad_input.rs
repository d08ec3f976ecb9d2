//! The bad-input matrix at the public Rust API (docs/reliability.md lists every row): each bad
//! input returns a typed `clca::Error` whose message names the problem; nothing panics,
//! nothing allocates from a hostile size, and NaN/inf inputs behave as documented.
mod common;
use clca::plan::Reduction;
use clca::vit::device::DeviceVit;
use clca::vit::random::{random_images, random_weights};
use clca::vit::{HeadKind, TensorMap, TrainFlags, Vit, VitConfig};
use clca::{Device, Error, HostShim};
use std::path::PathBuf;

fn flags(kr: f64) -> TrainFlags {
    TrainFlags {
        reduction_loc: vec![1, 3],
        keep_rate: vec![kr],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        ..TrainFlags::default()
    }
}

fn small(prefix: &str, f: &TrainFlags) -> VitConfig {
    let mut cfg =
        VitConfig::from_model_name(&format!("{prefix}deit_tiny_patch16_224"), f).expect("config");
    cfg.img_size = 32;
    cfg.patch_size = 4;
    cfg.embed_dim = 24;
    cfg.mlp_hidden = 48;
    cfg.depth = 6;
    cfg.num_heads = 3;
    cfg.num_classes = 5;
    cfg
}

fn weights(cfg: &VitConfig) -> TensorMap {
    let taps = cfg.plan().expect("plan").taps;
    random_weights(cfg, taps, 1)
}

fn model(cfg: VitConfig) -> Vit {
    let w = weights(&cfg);
    Vit::new(cfg, w).expect("model")
}

/// The error of `r`, checked to be of the variant `is` and to mention every needle.
#[track_caller]
fn err<T: std::fmt::Debug>(r: clca::Result<T>, is: fn(&Error) -> bool, needles: &[&str]) -> Error {
    let e = match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e,
    };
    assert!(is(&e), "wrong variant: {e:?}");
    let msg = e.to_string();
    // `--nocapture` lists every message (docs/reliability.md quotes them).
    eprintln!("error: {msg}");
    for n in needles {
        assert!(msg.contains(n), "`{n}` not in: {msg}");
    }
    e
}

fn invalid(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument { .. })
}
fn plan(e: &Error) -> bool {
    matches!(e, Error::Plan(_))
}
fn weights_err(e: &Error) -> bool {
    matches!(e, Error::Weights(_))
}
fn shape(e: &Error) -> bool {
    matches!(e, Error::Shape { .. })
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("clca-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d.join(name)
}

// ---- configurations ---------------------------------------------------------------------

#[test]
fn keep_rates_outside_zero_one() {
    for kr in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        let cfg = small("evit_", &flags(kr));
        err(cfg.plan(), invalid, &["keep_rate", "(0, 1]"]);
        let w = weights(&small("evit_", &flags(0.5)));
        err(Vit::new(cfg, w), invalid, &["keep_rate"]);
    }
    // A keep-rate list of the wrong length.
    let mut f = flags(0.5);
    f.keep_rate = vec![0.5, 0.5, 0.5];
    err(
        small("evit_", &f).plan(),
        invalid,
        &["keep_rate", "one per reduction layer"],
    );
    // ToMe/DPC-KNN/SiT/PatchMerger/ATS lists are absolute counts: whole and ≤ the patches.
    f.keep_rate = vec![10.5, 3.0];
    err(
        small("tome_", &f).plan(),
        invalid,
        &["absolute token counts"],
    );
    f.keep_rate = vec![1e6, 3.0];
    err(
        small("sit_", &f).plan(),
        invalid,
        &["absolute token counts"],
    );
}

#[test]
fn reduction_layers_out_of_range_duplicate_or_zero_with_the_cache() {
    let mut f = flags(0.5);
    f.reduction_loc = vec![1, 6];
    err(
        small("evit_", &f).plan(),
        invalid,
        &["reduction_loc", ">= depth 6"],
    );
    f.reduction_loc = vec![3, 3];
    err(small("evit_", &f).plan(), invalid, &["strictly increasing"]);
    f.reduction_loc = vec![3, 1];
    err(small("evit_", &f).plan(), invalid, &["strictly increasing"]);
    // Layer 0 with the cache: the authors' code fails on an empty cache.
    f.reduction_loc = vec![0, 3];
    err(
        small("evit_", &f).plan(),
        invalid,
        &["first recovery layer must be >= 1"],
    );
    // No reduction layer and no recovery at depth-2: the cache has nowhere to go.
    f.reduction_loc = vec![];
    f.clc_recover_at_last = false;
    err(
        small("evit_", &f).plan(),
        invalid,
        &["at least one recovery layer"],
    );
    // The cache with neither GAP nor clr carriers.
    let mut f = flags(0.5);
    f.num_clr = 0;
    f.clc_include_gap = false;
    err(
        small("evit_", &f).plan(),
        invalid,
        &["GAP carrier or at least one clr"],
    );
}

#[test]
fn more_clusters_or_neighbours_than_tokens() {
    // k > n: DPC-KNN asked for more neighbours than clusterable tokens.
    let mut f = flags(0.5);
    f.k_neighbors = 1000;
    err(
        small("dpcknn_", &f).plan(),
        plan,
        &["DPC-KNN", "1000 neighbours", "torch.topk fails"],
    );
    f.k_neighbors = 0;
    err(small("dpcknn_", &f).plan(), plan, &["0 neighbours"]);
    // DynamicViT keep rates that grow (a list): keeps more than there are.
    let mut f = flags(0.5);
    f.clc = false;
    f.keep_rate = vec![0.5, 0.9];
    err(
        small("dyvit_", &f).plan(),
        plan,
        &["DynamicViT", "keep rates must decrease"],
    );
    // The op level: top-k with k > n.
    err(
        clca::cpu::topk::topk_select(&[1f32, 2.0, 3.0], 1, 3, 4),
        invalid,
        &["`k`", "k > n = 3"],
    );
}

#[test]
fn configurations_the_authors_code_turns_into_nan() {
    // SiT at keep rate 0.1 on 64 patches with the GAP carrier: int(64·0.1²) = 0 slots at block
    // 3 leave [cls] alone, so the GAP averages an empty range (NaN logits in the authors' code).
    let e = err(
        small("sit_", &flags(0.1)).plan(),
        plan,
        &["SiT", "block 3", "keep_rate [0.1]", "empty range", "NaN"],
    );
    assert!(e.to_string().contains("--clc_include_gap"), "{e}");
    let cfg = small("sit_", &flags(0.1));
    err(Vit::new(cfg, TensorMap::default()), plan, &["NaN"]);
    // A LayerNorm eps of 0, negative or NaN: a constant row would give 0/0.
    for eps in [0.0, -1e-6, f64::NAN] {
        let mut cfg = small("evit_", &flags(0.5));
        cfg.ln_eps = eps;
        err(cfg.validate(), invalid, &["layer_norm_eps"]);
    }
}

#[test]
fn sizes_beyond_the_limits_are_refused_before_anything_is_allocated() {
    let base = small("evit_", &flags(0.5));
    let l = clca::vit::config::LIMITS;
    type Edit = Box<dyn Fn(&mut VitConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("depth", Box::new(|c| c.depth = 1_000_000_000_000)),
        ("depth", Box::new(|c| c.depth = 0)),
        ("embed_dim", Box::new(|c| c.embed_dim = 3 << 40)),
        ("num_heads", Box::new(|c| c.num_heads = 0)),
        ("num_heads", Box::new(|c| c.num_heads = 5)),
        ("num_classes", Box::new(|c| c.num_classes = usize::MAX)),
        ("mlp_hidden", Box::new(|c| c.mlp_hidden = 0)),
        ("num_clr", Box::new(|c| c.num_clr = 1 << 40)),
        ("img_size", Box::new(|c| c.img_size = 33)),
        ("img_size", Box::new(|c| c.patch_size = 0)),
        ("img_size", Box::new(|c| c.img_size = 1 << 40)),
        // 2^32 patches: the token limit, not an overflow.
        (
            "img_size",
            Box::new(|c| {
                c.img_size = 1 << 16;
                c.patch_size = 1
            }),
        ),
        ("in_chans", Box::new(|c| c.in_chans = 1000)),
        (
            "ifa_dws_conv_groups",
            Box::new(|c| c.head = HeadKind::Cla { groups: 1 << 30 }),
        ),
    ];
    for (arg, f) in cases {
        let mut c = base.clone();
        f(&mut c);
        let e = err(c.validate(), invalid, &[arg]);
        // Vit::new refuses it the same way, with no weights at all.
        let e2 = err(Vit::new(c.clone(), TensorMap::default()), invalid, &[arg]);
        assert_eq!(e.to_string(), e2.to_string());
    }
    assert!(l.depth >= 24 && l.tokens > 785 && l.width >= 4096);
    // The planner on its own (a PlanSpec built by hand).
    let spec = |depth: usize, patches: usize| clca::plan::PlanSpec {
        patches,
        num_clr: 0,
        depth,
        reduction: Reduction::None,
        locs: &[],
        keep_rates: &[1.0],
        clc: None,
        k_neighbors: 5,
    };
    err(clca::plan::plan(&spec(usize::MAX, 4)), invalid, &["depth"]);
    err(
        clca::plan::plan(&spec(4, usize::MAX)),
        invalid,
        &["patches"],
    );
}

#[test]
fn golden_json_configs_with_missing_wrong_or_hostile_fields() {
    let good = serde_json::json!({
        "num_classes": 10,
        "args": {"keep_rate": [0.25], "reduction_loc": [1, 3], "clc": true, "num_clr": 1,
                 "ifa_head": true, "ifa_dws_conv_groups": 2},
        "model": {"model_class": "models.evit.EViT", "embed_dim": 96, "depth": 6,
                  "num_heads": 3, "mlp_hidden": 384, "patch_size": [8, 8], "img_size": [64, 64]}
    });
    VitConfig::from_golden_json(&good).expect("the good config");
    let with = |path: &[&str], v: serde_json::Value| {
        let mut j = good.clone();
        let mut x = &mut j;
        for k in &path[..path.len() - 1] {
            x = &mut x[*k];
        }
        x[path[path.len() - 1]] = v;
        j
    };
    for (path, v, needle) in [
        (&["model", "depth"][..], serde_json::json!("six"), "depth"),
        (&["model", "depth"][..], serde_json::json!(1e12), "depth"),
        (
            &["model", "depth"][..],
            serde_json::json!(1_000_000_000_000u64),
            "depth",
        ),
        (
            &["model", "embed_dim"][..],
            serde_json::json!(-96),
            "embed_dim",
        ),
        (
            &["model", "img_size"][..],
            serde_json::json!([]),
            "img_size",
        ),
        (
            &["model", "model_class"][..],
            serde_json::json!(null),
            "model_class",
        ),
        (&["num_classes"][..], serde_json::json!(0), "num_classes"),
    ] {
        let e = VitConfig::from_golden_json(&with(path, v)).expect_err("refused");
        assert!(e.to_string().contains(needle), "{path:?}: {e}");
    }
    let e = VitConfig::from_golden_json(&with(&["model", "model_class"], "models.x.Y".into()))
        .expect_err("unknown class");
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("models.x.Y"));
    // The authors' model names.
    for (name, needle) in [
        ("resnet50", "vit_/deit_/deit3_ backbone"),
        ("vit_huge_patch14_224", "tiny, small, base or large"),
        ("vit_base_224", "no patchNN"),
        ("vit_base_patch0_224", "patch size 0"),
    ] {
        let e = VitConfig::from_model_name(name, &TrainFlags::default()).expect_err(name);
        assert!(e.to_string().contains(needle), "{name}: {e}");
    }
    let e = VitConfig::from_model_name(
        "vit_base_patch16_224",
        &TrainFlags {
            input_size: Some(1 << 20),
            ..TrainFlags::default()
        },
    )
    .expect_err("huge input size");
    assert!(e.to_string().contains("img_size"), "{e}");
}

// ---- weights ----------------------------------------------------------------------------

#[test]
fn missing_extra_and_misshapen_tensors() {
    let cfg = small("evit_", &flags(0.5));
    let good = weights(&cfg);
    let mut w = good.clone();
    w.tensors.remove("blocks.2.attn.qkv.weight");
    err(
        Vit::new(cfg.clone(), w),
        weights_err,
        &["missing tensor `blocks.2.attn.qkv.weight`", "[72, 24]"],
    );
    let mut w = good.clone();
    w.tensors
        .insert("blocks.9.mlp.fc1.weight".into(), (vec![1], vec![0.0]));
    w.tensors.insert("extra".into(), (vec![2], vec![0.0, 0.0]));
    err(
        Vit::new(cfg.clone(), w),
        weights_err,
        &["unexpected tensors", "blocks.9.mlp.fc1.weight", "extra"],
    );
    // Wrong rank: cls_token [D] instead of [1, 1, D].
    let mut w = good.clone();
    w.tensors
        .insert("cls_token".into(), (vec![24], vec![0.0; 24]));
    err(
        Vit::new(cfg.clone(), w),
        weights_err,
        &["`cls_token` has shape [24], expected [1, 1, 24]"],
    );
    // Wrong size: pos_embed of another input size.
    let mut w = good.clone();
    w.tensors
        .insert("pos_embed".into(), (vec![1, 10, 24], vec![0.0; 240]));
    err(
        Vit::new(cfg.clone(), w),
        weights_err,
        &["`pos_embed`", "[1, 66, 24]"],
    );
    // An integer tensor where a float one belongs.
    let mut w = good.clone();
    w.tensors
        .insert("cls_token".into(), (vec![1, 1, 24], Vec::new()));
    err(
        Vit::new(cfg.clone(), w),
        weights_err,
        &["`cls_token` is not a float tensor"],
    );
    // Weights of another method: EViT weights for SiT lack the slimming modules.
    let sit = small("sit_", &flags(0.5));
    err(
        Vit::new(sit, good),
        weights_err,
        &["missing tensor `cluster_layers.0"],
    );
}

/// A safetensors file from (name, dtype, shape, data bytes) entries, laid out in order.
fn safetensors_bytes(entries: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + bytes.len()]}),
        );
        off += bytes.len();
        data.extend_from_slice(bytes);
    }
    let h = serde_json::Value::Object(header).to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

#[test]
fn truncated_corrupt_and_hostile_weight_files() {
    let cfg = small("evit_", &flags(0.5));
    let path = tmp("good.safetensors");
    weights(&cfg).save(&path).expect("save");
    let good = std::fs::read(&path).expect("read");
    assert!(Vit::load(cfg.clone(), &path).is_ok());
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty", vec![], &["shorter than the 8-byte header length"]),
        (
            "short",
            good[..5].to_vec(),
            &["shorter than the 8-byte header length"],
        ),
        (
            "header cut",
            good[..100].to_vec(),
            &["header claims", "truncated"],
        ),
        (
            "data cut",
            good[..good.len() - 7].to_vec(),
            &["do not end at the end of the file", "truncated"],
        ),
        (
            "trailing bytes",
            [&good[..], b"junk"].concat(),
            &["truncated or extra bytes"],
        ),
        (
            "header length 2^64-1",
            u64::MAX.to_le_bytes().to_vec(),
            &["the header claims"],
        ),
        (
            "not JSON",
            [&8u64.to_le_bytes()[..], b"{\"a\":1,,"].concat(),
            &["the header is not JSON"],
        ),
        (
            "not UTF-8",
            [&4u64.to_le_bytes()[..], &[0xff, 0xfe, 0xfd, 0xfc][..]].concat(),
            &["not UTF-8"],
        ),
        (
            "JSON but not a table",
            [&7u64.to_le_bytes()[..], b"{\"a\":1}"].concat(),
            &["not a safetensors table"],
        ),
        (
            "10^12-element shape claim",
            safetensors_bytes(&[("cls_token", "F32", vec![1_000_000, 1_000_000], vec![0; 4])]),
            &["does not hold shape × dtype size bytes"],
        ),
        (
            "shape overflows",
            safetensors_bytes(&[("x", "F32", vec![1 << 40, 1 << 40, 1 << 40], vec![0; 4])]),
            &["more elements than fit in memory"],
        ),
        (
            "overlapping offsets",
            {
                let h = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
                [&(h.len() as u64).to_le_bytes()[..], h, &[0, 0, 0x80, 0x3f]].concat()
            },
            &["has data offsets that do not follow the previous tensor's"],
        ),
        (
            "unsupported dtype",
            safetensors_bytes(&[("cls_token", "U16", vec![2], vec![0; 4])]),
            &["`cls_token` has unsupported dtype U16"],
        ),
    ];
    for (what, bytes, needles) in cases {
        let e = err(TensorMap::from_bytes(&bytes), weights_err, needles);
        let p = tmp("bad.safetensors");
        std::fs::write(&p, &bytes).expect("write");
        // From a file: the same problem, prefixed with the path.
        let e2 = err(Vit::load(cfg.clone(), &p), weights_err, needles);
        assert!(e2.to_string().contains("bad.safetensors"), "{what}: {e2}");
        let _ = e;
    }
    // A directory and a missing file.
    err(TensorMap::load(&std::env::temp_dir()), weights_err, &[]);
    err(
        TensorMap::load(&tmp("does-not-exist.safetensors")),
        weights_err,
        &["does-not-exist.safetensors"],
    );
    // Integer and f16/bf16/f64 tensors parse (integers keep only their shape).
    let mixed = safetensors_bytes(&[
        ("a", "I64", vec![1], vec![0; 8]),
        ("b", "F16", vec![2], vec![0, 0x3c, 0, 0x7e]),
        ("c", "BF16", vec![1], vec![0x80, 0x3f]),
        ("d", "F64", vec![1], 1.5f64.to_le_bytes().to_vec()),
    ]);
    let m = TensorMap::from_bytes(&mixed).expect("mixed dtypes");
    assert!(m.tensors["a"].1.is_empty());
    assert_eq!(m.tensors["b"].1[0], 1.0);
    assert!(m.tensors["b"].1[1].is_nan());
    assert_eq!(m.tensors["c"].1, vec![1.0]);
    assert_eq!(m.tensors["d"].1, vec![1.5]);
}

// ---- inputs -----------------------------------------------------------------------------

#[test]
fn images_of_the_wrong_size_and_batch() {
    let m = model(small("evit_", &flags(0.5)));
    let per = 3 * 32 * 32;
    err(
        m.forward_cpu(&vec![0.0; per - 1], 1, None),
        shape,
        &["`images`"],
    );
    err(
        m.forward_cpu(&vec![0.0; 2 * per], 1, None),
        shape,
        &["`images`"],
    );
    err(
        m.forward_cpu(&[], 0, None),
        invalid,
        &["batch", "must be positive"],
    );
    // A workspace of another model.
    let other = model(small("tome_", &flags(0.5)));
    let mut ws = clca::vit::cpu::CpuWorkspace::new(&other, 1).expect("ws");
    err(
        clca::vit::cpu::forward(&m, &mut ws, &vec![0.0; per], None),
        shape,
        &["workspace", "another configuration"],
    );
    // The same on the device forward (host shim).
    let dv = DeviceVit::<HostShim, f32>::new(&HostShim, &m).expect("upload");
    let dvo = DeviceVit::<HostShim, f32>::new(&HostShim, &other).expect("upload");
    let mut wso = dvo.workspace(&HostShim, 1).expect("ws");
    let img = HostShim.upload(&vec![0f32; per]).expect("upload");
    err(
        dv.forward(&HostShim, &mut wso, &img, None),
        shape,
        &["workspace"],
    );
    let mut ws = dv.workspace(&HostShim, 1).expect("ws");
    let short = HostShim.upload(&vec![0f32; per - 3]).expect("upload");
    err(
        dv.forward(&HostShim, &mut ws, &short, None),
        shape,
        &["`images`"],
    );
    err(dv.workspace(&HostShim, 0).map(|_| ()), invalid, &["batch"]);
    // Preprocessing: an RGB buffer that does not match its size, an empty image, size 0.
    use clca::vit::preprocess::{load_image, preprocess_rgb8};
    err(
        preprocess_rgb8(&[0; 10], 2, 2, 32),
        invalid,
        &["image", "2x2"],
    );
    err(preprocess_rgb8(&[], 0, 5, 32), invalid, &["image"]);
    err(preprocess_rgb8(&[0; 12], 2, 2, 0), invalid, &["input_size"]);
    err(
        preprocess_rgb8(&[0; 12], usize::MAX, 2, 32),
        invalid,
        &["image"],
    );
    // An image at any size is resized (datasets.py); a file that is not one is an error.
    let png = tmp("tiny.png");
    image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8, y as u8, 9]))
        .save(&png)
        .expect("png");
    assert_eq!(load_image(&png, 32).expect("resized").len(), per);
    let junk = tmp("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot really").expect("write");
    err(load_image(&junk, 32), invalid, &["cannot decode"]);
    err(
        load_image(&tmp("missing.png"), 32),
        invalid,
        &["no such file"],
    );
    // A PNG header claiming 100000×100000 pixels: the decoder's memory limit refuses it.
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    bomb.extend_from_slice(&13u32.to_be_bytes());
    bomb.extend_from_slice(&ihdr);
    bomb.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // An IDAT chunk (the start of a zlib stream) so the decoder gets as far as sizing its
    // output, then IEND.
    for (kind, data) in [
        (&b"IDAT"[..], &[0x78u8, 0x9c, 0x62, 0x00][..]),
        (b"IEND", &[]),
    ] {
        let chunk = [kind, data].concat();
        bomb.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bomb.extend_from_slice(&chunk);
        bomb.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    let bomb_path = tmp("bomb.png");
    std::fs::write(&bomb_path, &bomb).expect("write");
    err(
        load_image(&bomb_path, 32),
        invalid,
        &["cannot decode", "limit"],
    );
}

/// CRC-32 (PNG chunks).
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn an_allocation_the_machine_cannot_give_is_an_error() {
    // A batch whose workspace needs ~2^50 bytes: refused by the allocator, reported as
    // Error::Alloc (not an abort); and a batch whose sizes overflow: Error::Overflow.
    let m = model(small("evit_", &flags(0.5)));
    err(
        clca::vit::cpu::CpuWorkspace::new(&m, 1 << 40).map(|_| ()),
        |e| matches!(e, Error::Alloc { .. }),
        &["cannot allocate"],
    );
    err(
        clca::vit::cpu::CpuWorkspace::new(&m, usize::MAX / 4).map(|_| ()),
        |e| matches!(e, Error::Overflow { .. }),
        &["overflow"],
    );
    let dv = DeviceVit::<HostShim, f32>::new(&HostShim, &m).expect("upload");
    err(
        dv.workspace(&HostShim, 1 << 40).map(|_| ()),
        |e| matches!(e, Error::Alloc { .. } | Error::Overflow { .. }),
        &[],
    );
}

/// NaN and ±inf in an image: the forward returns Ok (no panic, no error), that image's logits
/// are NaN or ±inf (never silently finite), the other images of the batch are bit-identical to
/// a batch without it, and selections follow the NaN rule of `ops::topk` (NaN ranks first).
#[test]
fn nan_and_inf_in_images_stay_in_their_image() {
    for prefix in common::method_prefixes() {
        let m = model(small(prefix, &flags(0.5)));
        let per = 3 * 32 * 32;
        let clean = random_images(2, 3, 32, 4);
        let base = m.forward_cpu(&clean, 2, None).expect(prefix);
        assert!(base.iter().all(|v| v.is_finite()), "{prefix}");
        for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 77, per - 1] {
                let mut img = clean.clone();
                img[at] = poison;
                let out = m.forward_cpu(&img, 2, None).expect(prefix);
                assert!(
                    out[..5].iter().any(|v| !v.is_finite()),
                    "{prefix}: {poison} at {at} gave finite logits {:?}",
                    &out[..5]
                );
                assert_eq!(
                    out[5..].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    base[5..].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{prefix}: {poison} in image 0 changed image 1"
                );
            }
        }
    }
}

#[test]
fn nan_in_selection_scores_follows_the_contract() {
    // NaN ranks above +inf; NaNs tie and go lowest index first.
    let x = [1.0f32, f32::NAN, f32::INFINITY, f32::NAN, -0.0, 0.0];
    let (idx, compl) = clca::cpu::topk::topk_select(&x, 1, 6, 4).expect("topk");
    assert_eq!(idx, vec![1, 3, 2, 0]);
    assert_eq!(compl, vec![4, 5]);
}

// ---- the CUDA library ---------------------------------------------------------------------

/// Without a driver, opening a GPU is a typed error naming the library, never a panic; with a
/// GPU this prints why it skips.
#[cfg(feature = "cuda")]
#[test]
fn a_missing_cuda_driver_is_a_typed_error() {
    if clca::cuda::driver_present() {
        match clca::cuda::CudaDevice::new(0) {
            Ok(_) => eprintln!("skipping: a GPU opened, so the missing-driver path cannot run"),
            Err(e) => eprintln!("skipping: the driver loads, but no GPU opened: {e}"),
        }
        return;
    }
    let e = match clca::cuda::CudaDevice::new(0) {
        Ok(_) => panic!("a GPU opened without a driver"),
        Err(e) => e,
    };
    assert!(matches!(e, Error::LibraryMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("libcuda"), "{e}");
    let why = clca::cuda::try_default().err().expect("no GPU");
    assert!(why.contains("libcuda"), "{why}");
}
