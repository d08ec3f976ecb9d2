//! The fuzz targets on stable, on every CI run: every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` (the crashes libFuzzer found, kept after their fix) through the
//! same bodies the libFuzzer binaries run (`fuzz/src/lib.rs`), then a seeded mutation loop over
//! the corpus (bit flips, byte edits, truncation, splices): a small, deterministic fuzz run that
//! needs no nightly toolchain. `CLCA_FUZZ_MUTATIONS` sets the mutations per corpus file (default
//! 24); scripts/fuzz.sh runs the coverage-guided libFuzzer for longer.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus` rewrites the seed files.
#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use clca::vit::random::random_weights;
use clca::vit::TensorMap;
use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] = [
    ("safetensors_load", targets::safetensors_load),
    ("config_flags", targets::config_flags),
    ("plan_model", targets::plan_model),
];

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension() != Some(std::ffi::OsStr::new("md")))
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn run_one(name: &str, f: Target, path: &Path, data: &[u8]) {
    let r = std::panic::catch_unwind(|| f(data));
    if r.is_err() {
        panic!(
            "fuzz target {name} panicked on {} ({} bytes)",
            path.display(),
            data.len()
        );
    }
}

#[test]
fn corpus_and_regressions_replay() {
    for (name, f) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for p in corpus.iter().chain(&regressions) {
            let data = std::fs::read(p).expect("read corpus file");
            run_one(name, f, p, &data);
        }
        eprintln!(
            "{name}: {} corpus files, {} regressions replayed",
            corpus.len(),
            regressions.len()
        );
    }
    let stages: Vec<usize> = targets::PLAN_MODEL_STAGES
        .iter()
        .map(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    eprintln!("plan_model: planned, loaded, ran a forward: {stages:?}");
    assert!(
        stages.iter().all(|&n| n > 0),
        "the plan_model corpus no longer reaches every stage: {stages:?}"
    );
}

/// splitmix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `data` (libFuzzer's simplest ones), with `other` for splices.
fn mutate(rng: &mut Rng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    let interesting: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'[', b'"', b'9'];
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = interesting[rng.below(interesting.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                v.remove(rng.below(len));
            }
            4 => v.truncate(rng.below(len + 1)),
            5 if !other.is_empty() => {
                let (i, j) = (rng.below(len + 1), rng.below(other.len()));
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
            }
            _ if len >= 8 => {
                // An ASCII digit run made longer or a length field bumped.
                let i = rng.below(len - 7);
                let x = u64::from_le_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
                let y = x
                    .wrapping_add(rng.below(3) as u64)
                    .wrapping_mul(1 + rng.below(2) as u64);
                v[i..i + 8].copy_from_slice(&y.to_le_bytes());
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

#[test]
fn seeded_mutations_of_the_corpus() {
    let per: usize = std::env::var("CLCA_FUZZ_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut rng = Rng(0x00C1_CA00_F022);
    for (name, f) in TARGETS {
        let corpus: Vec<(PathBuf, Vec<u8>)> = files(&fuzz_dir().join("corpus").join(name))
            .into_iter()
            .map(|p| {
                let d = std::fs::read(&p).expect("read corpus file");
                (p, d)
            })
            .collect();
        let mut runs = 0;
        for (i, (p, data)) in corpus.iter().enumerate() {
            let other = &corpus[(i + 1) % corpus.len()].1;
            for _ in 0..per {
                let m = mutate(&mut rng, data, other);
                let r = std::panic::catch_unwind(|| f(&m));
                if r.is_err() {
                    let out = std::env::temp_dir().join(format!("clca-fuzz-{name}-{runs}"));
                    let _ = std::fs::write(&out, &m);
                    panic!(
                        "fuzz target {name} panicked on a mutation of {} (input saved to {}; add it to fuzz/regressions/{name}/)",
                        p.display(),
                        out.display()
                    );
                }
                runs += 1;
            }
        }
        eprintln!("{name}: {runs} mutated inputs");
    }
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

/// The seed corpus: valid inputs of each target and the hostile ones the issue names.
#[test]
#[ignore = "rewrites fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let dir = fuzz_dir().join("corpus");
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(name), data).expect("write seed");
    };
    // safetensors_load: the tiny model's weights, then damaged and hostile files.
    let cfg = targets::tiny_config();
    let taps = cfg.plan().expect("plan").taps;
    let map = random_weights(&cfg, taps, 1);
    let tmp = std::env::temp_dir().join(format!("clca-seed-{}.safetensors", std::process::id()));
    map.save(&tmp).expect("save");
    let valid = std::fs::read(&tmp).expect("read");
    let _ = std::fs::remove_file(&tmp);
    assert!(TensorMap::from_bytes(&valid).is_ok());
    put("safetensors_load", "tiny_valid", &valid);
    put("safetensors_load", "truncated", &valid[..valid.len() / 2]);
    put(
        "safetensors_load",
        "shape_1e12_elements",
        &safetensors_bytes(&[("cls_token", "F32", vec![1_000_000, 1_000_000], vec![0; 4])]),
    );
    put(
        "safetensors_load",
        "shape_overflows_u64",
        &safetensors_bytes(&[("x", "F32", vec![1 << 40, 1 << 40, 1 << 40], vec![0; 4])]),
    );
    put(
        "safetensors_load",
        "header_len_max",
        &u64::MAX.to_le_bytes(),
    );
    put(
        "safetensors_load",
        "wrong_dtypes",
        &safetensors_bytes(&[
            ("cls_token", "I64", vec![1, 1, 8], vec![0; 64]),
            ("pos_embed", "U16", vec![2], vec![0; 4]),
            ("x", "F16", vec![2], vec![0, 0x3c, 0, 0x7e]),
            ("y", "BF16", vec![1], vec![0x80, 0x7f]),
            ("z", "F64", vec![1], 1.5f64.to_le_bytes().to_vec()),
        ]),
    );
    let h = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    put(
        "safetensors_load",
        "overlapping_offsets",
        &[&(h.len() as u64).to_le_bytes()[..], h, &[0, 0, 0x80, 0x3f]].concat(),
    );
    // config_flags: odd first byte = a config.json, even = flag bytes.
    for (class, kr) in [
        ("models.vit.ViT", 1.0),
        ("models.topk.TopK", 0.25),
        ("models.evit.EViT", 0.25),
        ("models.tome.ToMeViT", 0.5),
        ("models.dpcknn.DPCKNNViT", 0.25),
        ("models.sit.SiT", 0.25),
        ("models.patchmerger.PatchMergerViT", 0.25),
        ("models.ats.ATSViT", 0.25),
        ("models.dyvit.DyViT", 0.5),
        ("models.evit.EViT", 0.1),
    ] {
        let gap = kr == 0.1;
        let j = serde_json::json!({
            "timm_entrypoint": "fuzz_seed",
            "num_classes": 10,
            "args": {"keep_rate": [kr], "reduction_loc": [1, 3], "clc": true, "num_clr": 1,
                     "clc_include_gap": gap, "clc_recover_at_last": false, "ifa_head": true,
                     "ifa_dws_conv_groups": 2},
            "model": {"model_class": class, "embed_dim": 96, "depth": 6, "num_heads": 3,
                      "mlp_hidden": 384, "qkv_bias": true, "layer_norm_eps": 1e-6,
                      "patch_size": [8, 8], "img_size": [64, 64], "patch_embed_bias": true,
                      "norm_pre": "Identity", "no_embed_class": false, "layerscale": false}
        });
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(j.to_string().as_bytes());
        let short = class.rsplit('.').next().unwrap_or(class);
        put("config_flags", &format!("json_{short}_{kr}"), &bytes);
    }
    let mut rng = Rng(7);
    for i in 0..8 {
        let mut bytes = vec![0u8];
        bytes.extend((0..48).map(|_| rng.next() as u8));
        put("config_flags", &format!("flags_{i}"), &bytes);
    }
    put(
        "config_flags",
        "flags_free_name",
        b"\x00\x02\x01\x00\x03\x01\x00evit_vit_base_patch16_clip_224.laion2b\x00",
    );
    // plan_model: for every method, configurations that load and run (the byte layout of
    // targets::plan_model), with and without the cache, with a damaged tensor, with NaN pixels.
    for m in 0..targets::METHODS.len() as u8 {
        for k in 0..4u8 {
            let clc = k != 1;
            let mut b = vec![
                1,         // patch 4
                3,         // grid 4: 16 patches
                2,         // 3 heads
                0,         // head dim 2: width 6
                3 + k % 3, // depth 4..6
                2,         // two reduction layers
                m,         // the method
                1,
                3,                        // reduction_loc [1, 3]
                2,                        // one keep rate
                0,                        // from the table
                [2, 1, 3, 2][k as usize], // 0.5, 0.25, 0.7, 0.5
                clc as u8,
            ];
            if clc {
                b.extend([1, k % 2, 0, 0]); // GAP, recover at last on/off
            }
            b.extend([
                7, // mlp_hidden 8
                1, // qkv bias
                0, // ln_eps 1e-6
                0,
                1,
                0,
                0, // norm_pre, patch_bias, no_embed_class, layerscale
                3, // 3 classes
                1, // one clr token
                1,
                k % 3, // the CLA head, groups 0..2
                5,
                0,
                0,
                0, // k_neighbors 5, equal_weight, no noise, no ATS padding
                k, // weights seed
            ]);
            match k {
                // Remove a tensor.
                2 => b.extend([0, 3]),
                // Poison a weight with NaN; batch 2 of pixels from the bytes, the first NaN.
                3 => b.extend([4, 5, 0, 1, 1, 248]),
                // Intact weights, batch 2 of random images.
                _ => b.extend([7, 1, 0, 9]),
            }
            put("plan_model", &format!("m{m}_{k}"), &b);
        }
    }
}
