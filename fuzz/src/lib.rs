//! The bodies of the fuzz targets, shared by the libFuzzer binaries (`fuzz/fuzz_targets/`, run
//! by scripts/fuzz.sh on nightly) and by the stable test tests/fuzz_corpus.rs, which replays
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through them on every CI run.
//!
//! Each body feeds bytes to a public entry point and panics only when the library breaks its
//! contract: a panic inside the library, an `Ok` that is inconsistent (a tensor whose length is
//! not its shape's product, logits of the wrong length, non-finite logits from finite inputs
//! and intact weights), or an error with an empty message. Errors are the expected outcome for
//! most inputs. No body allocates more than a few MiB itself; libFuzzer's `-malloc_limit_mb`
//! catches the library asking for more.
use clca::plan::{ClcOptions, Reduction};
use clca::vit::config::MethodOptions;
use clca::vit::random::{random_images, random_weights};
use clca::vit::{HeadKind, TensorMap, TrainFlags, Vit, VitConfig};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// How far [`plan_model`] inputs got: planned, loaded (`Vit::new` accepted the weights), ran a
/// forward (tests/fuzz_corpus.rs checks the corpus reaches each stage).
pub static PLAN_MODEL_STAGES: [AtomicUsize; 3] = [
    AtomicUsize::new(0),
    AtomicUsize::new(0),
    AtomicUsize::new(0),
];

/// Reads fuzz bytes as small values; past the end every read is 0.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.u8() as usize % n
    }
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |a, _| (a << 8) | self.u8() as u64)
    }
    /// A size: mostly small, sometimes huge (to reach the limits and the overflow checks).
    pub fn size(&mut self) -> usize {
        match self.u8() {
            0..=199 => self.u8() as usize,
            200..=239 => (self.u8() as usize) << 8 | self.u8() as usize,
            240..=251 => 1usize << (self.u8() % 64),
            _ => self.u64() as usize,
        }
    }
    /// A keep rate or count: the interesting values, or any f64 bit pattern.
    pub fn rate(&mut self) -> f64 {
        const TABLE: [f64; 16] = [
            0.1,
            0.25,
            0.5,
            0.7,
            1.0,
            0.0,
            -0.5,
            1.5,
            2.0,
            5.0,
            16.0,
            f64::NAN,
            f64::INFINITY,
            1e-9,
            0.999_999,
            64.0,
        ];
        match self.u8() {
            0..=223 => TABLE[self.below(TABLE.len())],
            _ => f64::from_bits(self.u64()),
        }
    }
    /// An f32 for an image: mostly small, sometimes NaN, ±inf, huge or subnormal.
    pub fn pixel(&mut self) -> f32 {
        match self.u8() {
            0..=247 => (self.u8() as f32 - 128.0) / 32.0,
            248 => f32::NAN,
            249 => f32::INFINITY,
            250 => f32::NEG_INFINITY,
            251 => f32::MAX,
            252 => -0.0,
            253 => f32::MIN_POSITIVE / 4.0,
            _ => f32::from_bits(self.u64() as u32),
        }
    }
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}

/// Every method, in the order of the fuzz bytes.
pub const METHODS: [Reduction; 9] = [
    Reduction::None,
    Reduction::TopK,
    Reduction::EVit,
    Reduction::ToMe,
    Reduction::DpcKnn,
    Reduction::Sit,
    Reduction::PatchMerger,
    Reduction::Ats,
    Reduction::DynamicVit,
];

/// The fixed small model the loader target checks weights against: EViT + CLC + CLA head,
/// 16 patches of 4×4, width 8, depth 3.
pub fn tiny_config() -> VitConfig {
    VitConfig {
        name: "fuzz".into(),
        img_size: 16,
        patch_size: 4,
        in_chans: 3,
        embed_dim: 8,
        depth: 3,
        num_heads: 2,
        mlp_hidden: 16,
        qkv_bias: true,
        ln_eps: 1e-6,
        norm_pre: false,
        patch_bias: true,
        no_embed_class: false,
        layerscale: false,
        num_classes: 3,
        reduction: Reduction::EVit,
        reduction_loc: vec![1],
        keep_rate: vec![0.5],
        num_clr: 1,
        clc: Some(ClcOptions::default()),
        head: HeadKind::Cla { groups: 2 },
        method: MethodOptions::default(),
    }
}

fn error_names_something(e: &clca::Error) {
    assert!(
        !e.to_string().trim().is_empty(),
        "empty error message: {e:?}"
    );
}

/// Target `safetensors_load`: bytes as a safetensors file, then the shape checks of
/// [`tiny_config`].
pub fn safetensors_load(data: &[u8]) {
    match TensorMap::from_bytes(data) {
        Ok(map) => {
            for (name, (shape, vals)) in &map.tensors {
                let n = shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .unwrap_or_else(|| panic!("`{name}`: shape {shape:?} overflows"));
                // Integer tensors keep only their shape.
                assert!(
                    vals.is_empty() || vals.len() == n,
                    "`{name}`: {} values for shape {shape:?}",
                    vals.len()
                );
            }
            let cfg = tiny_config();
            if let Err(e) = Vit::new(cfg, map) {
                error_names_something(&e);
            }
        }
        Err(e) => error_names_something(&e),
    }
}

/// Target `config_flags`: the first byte picks the golden `config.json` parser (the rest is the
/// JSON text) or the authors' model name + `train.py` flags (built from the bytes); a config
/// that parses is planned, counted, and loaded with no weights (which must fail by name).
pub fn config_flags(data: &[u8]) {
    let mut b = Bytes(data);
    let cfg = if b.bool() {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(b.rest()) else {
            return;
        };
        VitConfig::from_golden_json(&v)
    } else {
        let flags = train_flags(&mut b);
        let name = model_name(&mut b);
        VitConfig::from_model_name(&name, &flags)
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => return error_names_something(&e),
    };
    check_config(&cfg);
}

/// Plans `cfg` and checks what does not need weights.
fn check_config(cfg: &VitConfig) {
    let plan = match cfg.plan() {
        Ok(p) => p,
        Err(e) => return error_names_something(&e),
    };
    assert_eq!(plan.blocks.len(), cfg.depth);
    for (i, bp) in plan.blocks.iter().enumerate() {
        assert!(
            bp.len_in >= 1 && bp.len_after <= plan.max_len,
            "block {i}: {bp:?}"
        );
    }
    let _ = clca::vit::macs::macs(cfg, &plan).total();
    if let Err(e) = cfg.method_widths() {
        error_names_something(&e);
    }
    let _ = clca::vit::random::specs(cfg, plan.taps);
    match Vit::new(cfg.clone(), TensorMap::default()) {
        Ok(_) => panic!("a model loaded with no weights"),
        Err(e) => error_names_something(&e),
    }
}

fn train_flags(b: &mut Bytes<'_>) -> TrainFlags {
    let nloc = b.below(6);
    let nkr = b.below(5);
    TrainFlags {
        input_size: match b.u8() % 4 {
            0 => None,
            1 => Some(16 * (1 + b.below(40))),
            _ => Some(b.size()),
        },
        reduction_loc: (0..nloc).map(|_| b.size()).collect(),
        keep_rate: (0..nkr).map(|_| b.rate()).collect(),
        clc: b.bool(),
        num_clr: b.size(),
        ifa_head: b.bool(),
        ifa_dws_conv_groups: b.size(),
        clc_include_gap: b.bool(),
        clc_recover_at_last: b.bool(),
        clc_pool_cls: b.bool(),
        clc_pool_clr: b.bool(),
        num_classes: b.size(),
        k_neighbors: b.size(),
        equal_weight: b.bool(),
    }
}

fn model_name(b: &mut Bytes<'_>) -> String {
    const BACKBONES: [&str; 6] = [
        "vit_base_patch16_clip_224.laion2b",
        "deit_tiny_patch16_224",
        "deit3_small_patch16_384",
        "vit_large_patch14_clip_224",
        "vit_base_patch32_miil_448",
        "vit_small_patch8_224",
    ];
    match b.u8() % 4 {
        // Free text: the rest up to a 0 byte.
        0 => {
            let text: Vec<u8> = b.rest().iter().copied().take_while(|&c| c != 0).collect();
            String::from_utf8_lossy(&text).into_owned()
        }
        _ => {
            let m = METHODS[b.below(METHODS.len())];
            format!("{}{}", m.prefix(), BACKBONES[b.below(BACKBONES.len())])
        }
    }
}

/// Target `plan_model`: a small configuration from the bytes (any method, locations, keep
/// rates, cache and head options), its seeded random weights, possibly damaged (a tensor
/// removed, reshaped, added or poisoned with NaN), then `Vit::new` and, when it loads, a CPU
/// forward of 1–2 images from the bytes (with NaN and ±inf among them).
pub fn plan_model(data: &[u8]) {
    let mut b = Bytes(data);
    let patch = [2, 4][b.below(2)];
    let grid = 1 + b.below(4);
    let heads = 1 + b.below(3);
    let embed_dim = heads * [2, 4][b.below(2)];
    let depth = 1 + b.below(6);
    let nloc = b.below(4);
    let reduction = METHODS[b.below(METHODS.len())];
    let reduction_loc: Vec<usize> = (0..nloc).map(|_| b.below(depth + 2)).collect();
    let nkr = match b.u8() % 4 {
        0 => nloc,
        1 => 0,
        _ => 1,
    };
    let keep_rate: Vec<f64> = (0..nkr).map(|_| b.rate()).collect();
    let clc = b.bool().then(|| ClcOptions {
        include_gap: b.bool(),
        recover_at_last: b.bool(),
        pool_cls: b.bool(),
        pool_clr: b.bool(),
    });
    let cfg = VitConfig {
        name: "fuzz".into(),
        img_size: patch * grid,
        patch_size: patch,
        in_chans: 3,
        embed_dim,
        depth,
        num_heads: heads,
        mlp_hidden: 1 + b.below(16),
        qkv_bias: b.bool(),
        ln_eps: [1e-6, 1e-5, 0.0, -1.0][b.below(4)],
        norm_pre: b.bool(),
        patch_bias: b.bool(),
        no_embed_class: b.bool(),
        layerscale: b.bool(),
        num_classes: b.below(5),
        reduction,
        reduction_loc,
        keep_rate,
        num_clr: b.below(3),
        clc,
        head: if b.bool() {
            HeadKind::Cla { groups: b.below(3) }
        } else {
            HeadKind::Linear
        },
        method: MethodOptions {
            k_neighbors: b.below(7),
            equal_weight: b.bool(),
            dpc_noise_seed: b.bool().then(|| b.u8() as u64),
            ats_batch_padding: b.bool(),
        },
    };
    let taps = match cfg.validate().and_then(|_| cfg.plan()) {
        Ok(p) => p.taps,
        Err(e) => {
            error_names_something(&e);
            // Still load something: the refusal must not depend on the weights.
            if let Err(e) = Vit::new(cfg.clone(), TensorMap::default()) {
                error_names_something(&e);
            } else {
                panic!("a configuration that does not plan loaded");
            }
            return;
        }
    };
    PLAN_MODEL_STAGES[0].fetch_add(1, Relaxed);
    let mut map = random_weights(&cfg, taps, b.u8() as u64);
    let damaged = damage(&mut b, &mut map);
    let model = match Vit::new(cfg, map) {
        Ok(m) => m,
        Err(e) => return error_names_something(&e),
    };
    assert!(
        damaged != Damage::Shape && damaged != Damage::Removed && damaged != Damage::Extra,
        "damaged weights ({damaged:?}) loaded"
    );
    PLAN_MODEL_STAGES[1].fetch_add(1, Relaxed);
    let batch = 1 + b.below(2);
    let c = &model.cfg;
    let per = c.in_chans * c.img_size * c.img_size;
    let images: Vec<f32> = if b.bool() {
        (0..batch * per).map(|_| b.pixel()).collect()
    } else {
        random_images(batch, c.in_chans, c.img_size, b.u8() as u64)
    };
    match model.forward_cpu(&images, batch, None) {
        Ok(logits) => {
            PLAN_MODEL_STAGES[2].fetch_add(1, Relaxed);
            assert_eq!(logits.len(), batch * c.num_classes);
            let finite_in = images.iter().all(|v| v.is_finite() && v.abs() < 1e3);
            if finite_in && damaged == Damage::None {
                assert!(
                    logits.iter().all(|v| v.is_finite()),
                    "finite images and intact weights gave non-finite logits {logits:?} for {:?}",
                    model.cfg
                );
            }
        }
        Err(e) => error_names_something(&e),
    }
}

/// What [`damage`] did to the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    None,
    Removed,
    Shape,
    Extra,
    Poisoned,
}

/// Damages one tensor of `map`, as the bytes say.
fn damage(b: &mut Bytes<'_>, map: &mut TensorMap) -> Damage {
    let op = b.u8() % 8;
    if op >= 5 || map.tensors.is_empty() {
        return Damage::None;
    }
    let i = b.below(map.tensors.len());
    let Some(name) = map.tensors.keys().nth(i).cloned() else {
        return Damage::None;
    };
    match op {
        0 | 1 => {
            map.tensors.remove(&name);
            // A BatchNorm counter or the dead head of a CLA checkpoint may go unnoticed.
            Damage::Removed
        }
        2 => {
            if let Some((s, v)) = map.tensors.get_mut(&name) {
                if s.is_empty() || b.bool() {
                    s.push(1);
                } else {
                    let k = b.below(s.len());
                    s[k] += 1;
                    let n: usize = s.iter().product();
                    v.resize(n, 0.0);
                }
            }
            Damage::Shape
        }
        3 => {
            map.tensors
                .insert(format!("{name}.extra"), (vec![1], vec![0.0]));
            Damage::Extra
        }
        _ => {
            if let Some((_, v)) = map.tensors.get_mut(&name) {
                if let Some(x) = v.first_mut() {
                    *x = [f32::NAN, f32::INFINITY, f32::MAX][b.below(3)];
                }
            }
            Damage::Poisoned
        }
    }
}
