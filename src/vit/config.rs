//! The model configuration: the authors' model names and `train.py` flags, or the golden-case
//! `config.json`, turned into one typed [`VitConfig`] (SPEC §1.1, §2.1).
use crate::plan::{ClcOptions, PlanSpec, Reduction};
use crate::{Error, Result};

/// The head on top of the blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// Final LayerNorm, cls token, Linear (the baseline).
    Linear,
    /// The cross-layer aggregation head (`--ifa_head`), with `ifa_dws_conv_groups` = `groups`
    /// (0 = the linear variant).
    Cla { groups: usize },
}

/// Everything the forward needs to know, fixed at construction.
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    /// The authors' model name, when known (e.g. `evit_vit_base_patch16_clip_224.laion2b`).
    pub name: String,
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_hidden: usize,
    pub qkv_bias: bool,
    /// eps of every backbone LayerNorm (1e-6, CLIP 1e-5).
    pub ln_eps: f64,
    /// CLIP's LayerNorm before the blocks.
    pub norm_pre: bool,
    pub patch_bias: bool,
    /// DeiT-3: the position embedding covers the patches only.
    pub no_embed_class: bool,
    /// DeiT-3: `ls1/ls2.gamma`.
    pub layerscale: bool,
    pub num_classes: usize,
    pub reduction: Reduction,
    /// `--reduction_loc` (0-based).
    pub reduction_loc: Vec<usize>,
    /// `--keep_rate` (one value, or one per reduction layer).
    pub keep_rate: Vec<f64>,
    /// `--num_clr`.
    pub num_clr: usize,
    /// `--clc` and its options.
    pub clc: Option<ClcOptions>,
    pub head: HeadKind,
    /// Options of the reduction methods that are not lengths.
    pub method: MethodOptions,
}

/// Method options that change values but not lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodOptions {
    /// DPC-KNN: neighbours for the density (`--k_neighbors`, 5).
    pub k_neighbors: usize,
    /// DPC-KNN: merge with equal weights instead of the learned `score` layer
    /// (`--equal_weight`, off).
    pub equal_weight: bool,
    /// DPC-KNN: the authors add `torch.rand·1e-6` to every density at inference, which makes
    /// their forward nondeterministic. `None` (the default) adds no noise; `Some(seed)` adds
    /// U(0,1)·1e-6 from our seeded generator, deterministic for a given seed (not torch's
    /// stream). Ties in density are then broken by lower index.
    pub dpc_noise_seed: Option<u64>,
    /// ATS: reproduce the authors' batch padding (SPEC §4.7: shorter samples are padded with
    /// masked cls copies, which enter the GAP carrier and the clr tail). Off by default: each
    /// image is then computed alone, so its result does not depend on the rest of its batch.
    pub ats_batch_padding: bool,
}

impl Default for MethodOptions {
    fn default() -> Self {
        MethodOptions {
            k_neighbors: 5,
            equal_weight: false,
            dpc_noise_seed: None,
            ats_batch_padding: false,
        }
    }
}

/// The `train.py` flags that shape the model, with the authors' defaults (note the two
/// `store_false` flags: GAP carriers and recover-at-last are on unless passed).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainFlags {
    pub input_size: Option<usize>,
    pub reduction_loc: Vec<usize>,
    pub keep_rate: Vec<f64>,
    pub clc: bool,
    pub num_clr: usize,
    pub ifa_head: bool,
    pub ifa_dws_conv_groups: usize,
    pub clc_include_gap: bool,
    pub clc_recover_at_last: bool,
    pub clc_pool_cls: bool,
    pub clc_pool_clr: bool,
    pub num_classes: usize,
    /// `--k_neighbors` (DPC-KNN).
    pub k_neighbors: usize,
    /// `--equal_weight` (DPC-KNN).
    pub equal_weight: bool,
}

impl Default for TrainFlags {
    fn default() -> Self {
        TrainFlags {
            input_size: None,
            reduction_loc: vec![3, 6, 9],
            keep_rate: vec![1.0],
            clc: false,
            num_clr: 0,
            ifa_head: false,
            ifa_dws_conv_groups: 2,
            clc_include_gap: true,
            clc_recover_at_last: true,
            clc_pool_cls: false,
            clc_pool_clr: false,
            num_classes: 1000,
            k_neighbors: 5,
            equal_weight: false,
        }
    }
}

use crate::error::invalid as bad;

/// The method prefixes of the authors' model names.
pub const METHOD_PREFIXES: &[Reduction] = &[
    Reduction::EVit,
    Reduction::TopK,
    Reduction::ToMe,
    Reduction::DpcKnn,
    Reduction::Sit,
    Reduction::PatchMerger,
    Reduction::Ats,
    Reduction::DynamicVit,
];

impl VitConfig {
    /// From an authors' model name (`[method_]backbone[.tag]`, e.g.
    /// `evit_vit_base_patch16_clip_224.laion2b`) and the `train.py` flags.
    pub fn from_model_name(name: &str, f: &TrainFlags) -> Result<Self> {
        let mut rest = name;
        let mut reduction = Reduction::None;
        if let Some(r) = METHOD_PREFIXES
            .iter()
            .find(|r| rest.starts_with(r.prefix()))
        {
            rest = &rest[r.prefix().len()..];
            reduction = *r;
        }
        let (arch, tag) = rest.split_once('.').unwrap_or((rest, ""));
        let family = ["vit_", "deit3_", "deit_"]
            .iter()
            .find(|p| arch.starts_with(*p))
            .ok_or_else(|| bad("model", name, "expected a vit_/deit_/deit3_ backbone"))?;
        let (embed_dim, depth, num_heads) = if arch.contains("_tiny_") {
            (192, 12, 3)
        } else if arch.contains("_small_") {
            (384, 12, 6)
        } else if arch.contains("_base_") {
            (768, 12, 12)
        } else if arch.contains("_large_") {
            (1024, 24, 16)
        } else {
            return Err(bad("model", name, "expected tiny, small, base or large"));
        };
        let patch_size = arch
            .split('_')
            .find_map(|w| w.strip_prefix("patch").and_then(|n| n.parse().ok()))
            .ok_or_else(|| bad("model", name, "no patchNN in the name"))?;
        let default_img = arch
            .rsplit('_')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(224);
        let clip = arch.contains("_clip_");
        let miil = arch.contains("_miil");
        let deit3 = *family == "deit3_";
        let _ = tag;
        let img_size = f.input_size.unwrap_or(default_img);
        let cfg = VitConfig {
            name: name.to_string(),
            img_size,
            patch_size,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_hidden: 4 * embed_dim,
            qkv_bias: !miil,
            ln_eps: if clip { 1e-5 } else { 1e-6 },
            norm_pre: clip,
            patch_bias: !clip,
            no_embed_class: deit3,
            layerscale: deit3,
            num_classes: f.num_classes,
            reduction,
            reduction_loc: f.reduction_loc.clone(),
            keep_rate: f.keep_rate.clone(),
            num_clr: f.num_clr,
            clc: f.clc.then_some(ClcOptions {
                include_gap: f.clc_include_gap,
                recover_at_last: f.clc_recover_at_last,
                pool_cls: f.clc_pool_cls,
                pool_clr: f.clc_pool_clr,
            }),
            head: if f.ifa_head {
                HeadKind::Cla {
                    groups: f.ifa_dws_conv_groups,
                }
            } else {
                HeadKind::Linear
            },
            method: MethodOptions {
                k_neighbors: f.k_neighbors,
                equal_weight: f.equal_weight,
                ..MethodOptions::default()
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// From a golden case's `config.json` (../shared/golden/README.md documents the format).
    pub fn from_golden_json(v: &serde_json::Value) -> Result<Self> {
        let m = &v["model"];
        let a = &v["args"];
        let bad_json = |k: &str| Error::InvalidArgument {
            arg: "config",
            value: k.to_string(),
            why: "missing or of the wrong type in config.json".into(),
        };
        let uz = |x: &serde_json::Value, k: &str| {
            x[k].as_u64().map(|n| n as usize).ok_or_else(|| bad_json(k))
        };
        let bl = |x: &serde_json::Value, k: &str| x[k].as_bool().unwrap_or(false);
        let pair = |k: &str| -> Result<usize> {
            match &m[k] {
                serde_json::Value::Array(xs) => xs
                    .first()
                    .and_then(|x| x.as_u64())
                    .map(|n| n as usize)
                    .ok_or_else(|| bad_json(k)),
                x => x.as_u64().map(|n| n as usize).ok_or_else(|| bad_json(k)),
            }
        };
        let class = m["model_class"]
            .as_str()
            .ok_or_else(|| bad_json("model.model_class"))?;
        let reduction = match class {
            "models.evit.EViT" => Reduction::EVit,
            "models.topk.TopK" => Reduction::TopK,
            "models.vit.ViT" => Reduction::None,
            "models.tome.ToMeViT" => Reduction::ToMe,
            "models.dpcknn.DPCKNNViT" => Reduction::DpcKnn,
            "models.sit.SiT" => Reduction::Sit,
            "models.patchmerger.PatchMergerViT" => Reduction::PatchMerger,
            "models.ats.ATSViT" => Reduction::Ats,
            "models.dyvit.DyViT" => Reduction::DynamicVit,
            other => return Err(Error::Unsupported {
                what: format!("model class `{other}`"),
                supported:
                    "the classes of models/{vit,topk,evit,tome,dpcknn,sit,patchmerger,ats,dyvit}.py"
                        .into(),
            }),
        };
        let usizes = |x: &serde_json::Value| -> Vec<usize> {
            x.as_array()
                .map(|xs| {
                    xs.iter()
                        .filter_map(|y| y.as_u64())
                        .map(|y| y as usize)
                        .collect()
                })
                .unwrap_or_default()
        };
        let f64s = |x: &serde_json::Value| -> Vec<f64> {
            x.as_array()
                .map(|xs| xs.iter().filter_map(|y| y.as_f64()).collect())
                .unwrap_or_default()
        };
        let norm_pre = m["norm_pre"]
            .as_str()
            .map(|s| s != "Identity")
            .unwrap_or(false);
        let clc = bl(a, "clc");
        let cfg = VitConfig {
            name: v["timm_entrypoint"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            img_size: pair("img_size")?,
            patch_size: pair("patch_size")?,
            in_chans: 3,
            embed_dim: uz(m, "embed_dim")?,
            depth: uz(m, "depth")?,
            num_heads: uz(m, "num_heads")?,
            mlp_hidden: uz(m, "mlp_hidden")?,
            qkv_bias: m["qkv_bias"].as_bool().unwrap_or(true),
            ln_eps: m["layer_norm_eps"].as_f64().unwrap_or(1e-6),
            norm_pre,
            patch_bias: m["patch_embed_bias"].as_bool().unwrap_or(true),
            no_embed_class: bl(m, "no_embed_class"),
            layerscale: bl(m, "layerscale"),
            num_classes: uz(v, "num_classes")?,
            reduction,
            reduction_loc: usizes(&a["reduction_loc"]),
            keep_rate: f64s(&a["keep_rate"]),
            num_clr: a["num_clr"].as_u64().unwrap_or(0) as usize,
            clc: clc.then_some(ClcOptions {
                include_gap: bl(a, "clc_include_gap"),
                recover_at_last: bl(a, "clc_recover_at_last"),
                pool_cls: bl(a, "clc_pool_cls"),
                pool_clr: bl(a, "clc_pool_clr"),
            }),
            head: if bl(a, "ifa_head") {
                HeadKind::Cla {
                    groups: a["ifa_dws_conv_groups"].as_u64().unwrap_or(2) as usize,
                }
            } else {
                HeadKind::Linear
            },
            method: MethodOptions {
                k_neighbors: a["k_neighbors"].as_u64().unwrap_or(5) as usize,
                equal_weight: bl(a, "equal_weight"),
                ..MethodOptions::default()
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The same backbone without token reduction, cache, clr tokens or CLA head: the paper's
    /// "No TR" baseline, the reference of the MAC savings (78.49 GMACs for ViT-B/16 at 448 px).
    pub fn unreduced(&self) -> VitConfig {
        VitConfig {
            reduction: Reduction::None,
            keep_rate: vec![1.0],
            num_clr: 0,
            clc: None,
            head: HeadKind::Linear,
            method: MethodOptions::default(),
            ..self.clone()
        }
    }

    /// Patches per image (0 for a patch size of 0; saturating, so an unvalidated configuration
    /// cannot overflow here: [`VitConfig::validate`] bounds it).
    pub fn num_patches(&self) -> usize {
        let g = self.img_size.checked_div(self.patch_size).unwrap_or(0);
        g.saturating_mul(g)
    }

    /// Head dimension (0 when `num_heads` is 0, which [`VitConfig::validate`] refuses).
    pub fn head_dim(&self) -> usize {
        self.embed_dim.checked_div(self.num_heads).unwrap_or(0)
    }

    /// The layers that drive recovery and the CLS taps: `reduction_loc`, except for the plain
    /// ViT, whose `vit.py` hard-codes [3, 6, 9] whatever `--reduction_loc` says (SPEC §2.3).
    pub fn locs(&self) -> Vec<usize> {
        match self.reduction {
            Reduction::None => [3, 6, 9].into_iter().filter(|&l| l < self.depth).collect(),
            _ => self.reduction_loc.clone(),
        }
    }

    /// Plans the forward: lengths, cache size, CLS taps (SPEC §2.3–§2.5).
    pub fn plan(&self) -> Result<crate::plan::SeqPlan> {
        let locs = self.locs();
        crate::plan::plan(&PlanSpec {
            patches: self.num_patches(),
            num_clr: self.num_clr,
            depth: self.depth,
            reduction: self.reduction,
            locs: &locs,
            keep_rates: &self.keep_rate,
            clc: self.clc,
            k_neighbors: self.method.k_neighbors,
        })
    }

    /// The width of each reduction layer's learned module (in `locs` order): clusters for
    /// DPC-KNN, slots for SiT and PatchMerger, kept tokens for DynamicViT; empty for methods
    /// without a module per layer.
    pub fn method_widths(&self) -> Result<Vec<usize>> {
        if !self.reduction.before_block() {
            return Ok(Vec::new());
        }
        let plan = self.plan()?;
        Ok(self
            .locs()
            .iter()
            .map(|&l| plan.blocks[l].pre.as_ref().map_or(0, |p| p.out))
            .collect())
    }

    /// Checks what can be checked without weights: every size is positive and within
    /// [`LIMITS`], so that every size derived from it (weights, plan, workspaces) is a product
    /// that fits in 64 bits, and `ln_eps` is a positive finite number (0 or NaN would turn
    /// a constant row into NaN).
    pub fn validate(&self) -> Result<()> {
        let l = &LIMITS;
        if self.patch_size == 0
            || self.img_size == 0
            || !self.img_size.is_multiple_of(self.patch_size)
        {
            return Err(bad(
                "img_size",
                self.img_size,
                format!(
                    "must be a positive multiple of the patch size {}",
                    self.patch_size
                ),
            ));
        }
        if self.img_size > l.img_size {
            return Err(bad(
                "img_size",
                self.img_size,
                format!("larger than the limit {}", l.img_size),
            ));
        }
        if self.embed_dim == 0
            || self.num_heads == 0
            || !self.embed_dim.is_multiple_of(self.num_heads)
        {
            return Err(bad(
                "num_heads",
                self.num_heads,
                format!("must divide embed_dim {}", self.embed_dim),
            ));
        }
        if self.depth == 0 {
            return Err(bad("depth", 0, "must be positive"));
        }
        if self.num_classes == 0 {
            return Err(bad("num_classes", 0, "must be positive"));
        }
        if self.mlp_hidden == 0 {
            return Err(bad("mlp_hidden", 0, "must be positive"));
        }
        if self.in_chans == 0 {
            return Err(bad("in_chans", 0, "must be positive"));
        }
        for (arg, v, max) in [
            ("depth", self.depth, l.depth),
            ("embed_dim", self.embed_dim, l.width),
            ("mlp_hidden", self.mlp_hidden, l.width),
            ("num_classes", self.num_classes, l.classes),
            ("in_chans", self.in_chans, l.in_chans),
            ("num_clr", self.num_clr, l.tokens),
        ] {
            if v > max {
                return Err(bad(arg, v, format!("larger than the limit {max}")));
            }
        }
        if let HeadKind::Cla { groups } = self.head {
            if groups > l.groups {
                return Err(bad(
                    "ifa_dws_conv_groups",
                    groups,
                    format!("larger than the limit {}", l.groups),
                ));
            }
        }
        let tokens = 1 + self.num_patches() + self.num_clr;
        if tokens > l.tokens {
            return Err(bad(
                "img_size",
                self.img_size,
                format!(
                    "{tokens} tokens (1 + {} patches + {} clr) exceed the limit {}",
                    self.num_patches(),
                    self.num_clr,
                    l.tokens
                ),
            ));
        }
        if !(self.ln_eps.is_finite() && self.ln_eps > 0.0) {
            return Err(bad(
                "layer_norm_eps",
                self.ln_eps,
                "must be a positive finite number",
            ));
        }
        Ok(())
    }
}

/// Upper bounds on a [`VitConfig`], far above every backbone of the paper (ViT-L/16 at 448 px:
/// depth 24, MLP width 4096, 785 tokens), so that no configuration from a file or a flag can
/// ask for an unbounded loop, and every derived size (buffer lengths, MACs) fits in 64 bits.
/// Buffers are still sized from them: one that the allocator refuses is [`crate::Error::Alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Blocks.
    pub depth: usize,
    /// `embed_dim` and `mlp_hidden`.
    pub width: usize,
    /// `num_classes`.
    pub classes: usize,
    /// Tokens of the input sequence: 1 + patches + clr tokens (and so `num_clr`).
    pub tokens: usize,
    /// Input side in pixels.
    pub img_size: usize,
    /// Image channels.
    pub in_chans: usize,
    /// The CLA conv's depth multiplier (`ifa_dws_conv_groups`).
    pub groups: usize,
}

/// The limits [`VitConfig::validate`] enforces.
pub const LIMITS: Limits = Limits {
    depth: crate::plan::MAX_DEPTH,
    width: 1 << 16,
    classes: 1 << 20,
    tokens: crate::plan::MAX_TOKENS,
    img_size: 1 << 16,
    in_chans: 64,
    groups: 1024,
};
