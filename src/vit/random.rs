//! Seeded random weights under the authors' parameter names, for any [`VitConfig`], drawn with
//! the rules of the golden files' `randomize_` (../shared/golden/README.md): Linear and Conv
//! weights N(0,1)/√fan_in, biases 0.1·N, LayerNorm weight 1+0.2·N and bias 0.1·N, BatchNorm
//! weight 1+0.2·N, bias 0.1·N, running_mean 0.5·N, running_var 0.5+1.5·U, cls/clr N(0,1),
//! pos_embed 0.5·N, LayerScale 0.5+0.5·U. Not the authors' bits (their generator is torch's):
//! the same distributions, so attention is non-uniform and selections have real margins.
//! For demos, benchmarks and tests without a checkpoint.
use super::config::{HeadKind, VitConfig};
use super::weights::TensorMap;
use crate::plan::Reduction;
use rayon::prelude::*;

/// How one tensor is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0,1)/√fan_in (Linear and Conv weights).
    Fan(usize),
    /// 0.1·N (biases; LayerNorm and BatchNorm biases).
    Bias,
    /// 1 + 0.2·N (LayerNorm and BatchNorm weights).
    NormWeight,
    /// 0.5·N (BatchNorm running_mean, pos_embed).
    HalfNormal,
    /// 0.5 + 1.5·U (BatchNorm running_var).
    RunningVar,
    /// N(0,1) (cls_token, clr).
    Normal,
    /// 0.5 + 0.5·U (LayerScale gamma).
    LayerScale,
}

/// One expected tensor.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// Every tensor [`super::VitWeights::from_map`] expects for `cfg` with `taps` CLS taps, in
/// `state_dict` order.
pub fn specs(cfg: &VitConfig, taps: usize) -> Vec<Spec> {
    let mut v = Vec::new();
    let mut add = |name: String, shape: &[usize], init: Init| {
        v.push(Spec {
            name,
            shape: shape.to_vec(),
            init,
        })
    };
    let (d, hm, k) = (cfg.embed_dim, cfg.mlp_hidden, cfg.num_classes);
    let (p, c, ps, ch) = (cfg.num_patches(), cfg.num_clr, cfg.patch_size, cfg.in_chans);
    let ln = |add: &mut dyn FnMut(String, &[usize], Init), pre: &str, n: usize| {
        add(format!("{pre}.weight"), &[n], Init::NormWeight);
        add(format!("{pre}.bias"), &[n], Init::Bias);
    };
    let bn = |add: &mut dyn FnMut(String, &[usize], Init), pre: &str, n: usize| {
        add(format!("{pre}.weight"), &[n], Init::NormWeight);
        add(format!("{pre}.bias"), &[n], Init::Bias);
        add(format!("{pre}.running_mean"), &[n], Init::HalfNormal);
        add(format!("{pre}.running_var"), &[n], Init::RunningVar);
    };
    add("cls_token".into(), &[1, 1, d], Init::Normal);
    let pos_rows = if cfg.no_embed_class { p } else { 1 + p + c };
    add("pos_embed".into(), &[1, pos_rows, d], Init::HalfNormal);
    if c > 0 {
        add("clr".into(), &[1, c, d], Init::Normal);
    }
    add(
        "patch_embed.proj.weight".into(),
        &[d, ch, ps, ps],
        Init::Fan(ch * ps * ps),
    );
    if cfg.patch_bias {
        add("patch_embed.proj.bias".into(), &[d], Init::Bias);
    }
    if cfg.norm_pre {
        ln(&mut add, "norm_pre", d);
    }
    for i in 0..cfg.depth {
        let n = |s: &str| format!("blocks.{i}.{s}");
        ln(&mut add, &n("norm1"), d);
        add(n("attn.qkv.weight"), &[3 * d, d], Init::Fan(d));
        if cfg.qkv_bias {
            add(n("attn.qkv.bias"), &[3 * d], Init::Bias);
        }
        add(n("attn.proj.weight"), &[d, d], Init::Fan(d));
        add(n("attn.proj.bias"), &[d], Init::Bias);
        if cfg.layerscale {
            add(n("ls1.gamma"), &[d], Init::LayerScale);
        }
        ln(&mut add, &n("norm2"), d);
        add(n("mlp.fc1.weight"), &[hm, d], Init::Fan(d));
        add(n("mlp.fc1.bias"), &[hm], Init::Bias);
        add(n("mlp.fc2.weight"), &[d, hm], Init::Fan(hm));
        add(n("mlp.fc2.bias"), &[d], Init::Bias);
        if cfg.layerscale {
            add(n("ls2.gamma"), &[d], Init::LayerScale);
        }
    }
    let widths = cfg.method_widths().unwrap_or_default();
    for (j, &w) in widths.iter().enumerate() {
        let pre = |s: &str| format!("cluster_layers.{j}.{s}");
        let sp = |s: &str| format!("score_predictor.{j}.{s}");
        match cfg.reduction {
            Reduction::DpcKnn if !cfg.method.equal_weight => {
                add(pre("score.weight"), &[1, d], Init::Fan(d));
                add(pre("score.bias"), &[1], Init::Bias);
            }
            Reduction::Sit => {
                let h = super::weights::sit_hidden(d);
                ln(&mut add, &pre("weight.0"), d);
                add(pre("weight.1.weight"), &[h, d], Init::Fan(d));
                add(pre("weight.1.bias"), &[h], Init::Bias);
                add(pre("weight.3.weight"), &[w, h], Init::Fan(h));
                add(pre("weight.3.bias"), &[w], Init::Bias);
                add(pre("scale"), &[1, 1, 1], Init::NormWeight);
            }
            Reduction::PatchMerger => {
                ln(&mut add, &pre("norm"), d);
                add(pre("queries"), &[w, d], Init::Fan(d));
            }
            Reduction::DynamicVit => {
                ln(&mut add, &sp("in_conv.0"), d);
                for (name, o, i) in [
                    ("in_conv.1", d, d),
                    ("out_conv.0", d / 2, d),
                    ("out_conv.2", d / 4, d / 2),
                    ("out_conv.4", 2, d / 4),
                ] {
                    add(sp(&format!("{name}.weight")), &[o, i], Init::Fan(i));
                    add(sp(&format!("{name}.bias")), &[o], Init::Bias);
                }
            }
            _ => {}
        }
    }
    match cfg.head {
        HeadKind::Linear => {
            ln(&mut add, "norm", d);
            add("head.weight".into(), &[k, d], Init::Fan(d));
            add("head.bias".into(), &[k], Init::Bias);
        }
        HeadKind::Cla { groups: 0 } => {
            add("ifa_head.0.0.weight".into(), &[1, taps], Init::Fan(taps));
            add("ifa_head.0.0.bias".into(), &[1], Init::Bias);
            ln(&mut add, "ifa_head.0.3", d);
            add("ifa_head.0.4.weight".into(), &[k, d], Init::Fan(d));
            add("ifa_head.0.4.bias".into(), &[k], Init::Bias);
        }
        HeadKind::Cla { groups: g } => {
            bn(&mut add, "ifa_head.0.0", d);
            // Grouped Conv1d(D → g·D, kernel taps, groups D): fan_in = 1·taps.
            add(
                "ifa_head.0.1.weight".into(),
                &[g * d, 1, taps],
                Init::Fan(taps),
            );
            add("ifa_head.0.1.bias".into(), &[g * d], Init::Bias);
            bn(&mut add, "ifa_head.0.2", g * d);
            add(
                "ifa_head.0.4.weight".into(),
                &[k, g * d, 1],
                Init::Fan(g * d),
            );
            add("ifa_head.0.4.bias".into(), &[k], Init::Bias);
        }
    }
    v
}

/// SplitMix64 with Box–Muller normals: tiny, seeded, deterministic.
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    /// Stream `stream` of `seed` (independent streams for independent tensors).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng {
            state: seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03),
            spare: None,
        };
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Marsaglia's polar method in f32: no trigonometry, one 64-bit draw
    /// per pair of candidates).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let r = self.next_u64();
            // Two 24-bit uniforms in [-1, 1).
            let u = (r >> 40) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0;
            let v = ((r >> 16) & 0xff_ffff) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let m = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some((v * m) as f64);
                return (u * m) as f64;
            }
        }
    }

    /// One value drawn by `init`.
    pub fn draw(&mut self, init: Init) -> f32 {
        (match init {
            Init::Fan(f) => self.normal() / (f.max(1) as f64).sqrt(),
            Init::Bias => 0.1 * self.normal(),
            Init::NormWeight => 1.0 + 0.2 * self.normal(),
            Init::HalfNormal => 0.5 * self.normal(),
            Init::RunningVar => 0.5 + 1.5 * self.uniform(),
            Init::Normal => self.normal(),
            Init::LayerScale => 0.5 + 0.5 * self.uniform(),
        }) as f32
    }
}

/// Values per independent stream (so big tensors fill in parallel, deterministically).
const CHUNK: usize = 1 << 16;

/// Every tensor of `cfg` drawn from `seed` (each chunk of each tensor from its own stream, in
/// parallel; the result depends only on `cfg`, `taps` and `seed`).
pub fn random_weights(cfg: &VitConfig, taps: usize, seed: u64) -> TensorMap {
    let tensors = specs(cfg, taps)
        .into_par_iter()
        .enumerate()
        .map(|(i, s)| {
            let len = s.shape.iter().product::<usize>();
            let mut vals = vec![0f32; len];
            vals.par_chunks_mut(CHUNK).enumerate().for_each(|(j, ch)| {
                let mut rng = Rng::new(seed, ((1 + i as u64) << 32) | j as u64);
                ch.iter_mut().for_each(|v| *v = rng.draw(s.init));
            });
            (s.name, (s.shape, vals))
        })
        .collect();
    TensorMap { tensors }
}

/// `batch` images [batch, 3, size, size] of N(0,1) values (like the golden inputs: already
/// "normalized", no pixels behind them).
/// A demo and test helper: like [`random_weights`], it allocates what it is asked for without
/// a fallible path (the loaders, workspaces and forwards are the fallible API).
pub fn random_images(batch: usize, chans: usize, size: usize, seed: u64) -> Vec<f32> {
    let per = chans * size * size;
    let mut v = vec![0f32; batch * per];
    v.par_chunks_mut(per.max(1))
        .enumerate()
        .for_each(|(i, img)| {
            let mut rng = Rng::new(seed, u64::MAX - i as u64);
            img.iter_mut().for_each(|x| *x = rng.normal() as f32);
        });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vit::{TrainFlags, Vit};

    fn small(name: &str, f: TrainFlags) -> VitConfig {
        let mut cfg = match VitConfig::from_model_name(name, &f) {
            Ok(c) => c,
            Err(e) => panic!("{name}: {e}"),
        };
        // Shrink to the golden cases' size: 64 px, patch 8, dim 96, depth 6, heads 3.
        cfg.img_size = 64;
        cfg.patch_size = 8;
        cfg.embed_dim = 96;
        cfg.depth = 6;
        cfg.num_heads = 3;
        cfg.mlp_hidden = 384;
        cfg
    }

    /// The generated map is exactly what `VitWeights::from_map` takes, for every backbone
    /// flavour and head, and the forward gives finite logits.
    #[test]
    fn weights_fit_every_flavour() {
        let clca = |groups| TrainFlags {
            reduction_loc: vec![1, 3],
            keep_rate: vec![0.25],
            clc: true,
            num_clr: 1,
            ifa_head: true,
            ifa_dws_conv_groups: groups,
            num_classes: 7,
            ..TrainFlags::default()
        };
        let cases = [
            small("evit_vit_base_patch16_clip_224.laion2b", clca(2)),
            small("topk_deit3_base_patch16_224.fb_in1k", clca(0)),
            small("evit_vit_base_patch16_224_miil.in21k", clca(2)),
            small(
                "vit_base_patch16_224.orig_in21k",
                TrainFlags {
                    num_classes: 5,
                    ..TrainFlags::default()
                },
            ),
        ];
        for cfg in cases {
            let plan = match cfg.plan() {
                Ok(p) => p,
                Err(e) => panic!("{}: {e}", cfg.name),
            };
            let map = random_weights(&cfg, plan.taps, 7);
            let k = cfg.num_classes;
            let m = match Vit::new(cfg.clone(), map) {
                Ok(m) => m,
                Err(e) => panic!("{}: {e}", cfg.name),
            };
            let img = random_images(2, 3, 64, 1);
            let logits = match m.forward_cpu(&img, 2, None) {
                Ok(l) => l,
                Err(e) => panic!("{}: {e}", cfg.name),
            };
            assert_eq!(logits.len(), 2 * k);
            assert!(logits.iter().all(|v| v.is_finite()), "{}", cfg.name);
        }
    }

    #[test]
    fn draws_have_the_right_moments() {
        let mut r = Rng::new(3, 4);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        let a = random_weights(
            &small(
                "evit_vit_base_patch16_clip_224.laion2b",
                TrainFlags::default(),
            ),
            4,
            9,
        );
        let b = random_weights(
            &small(
                "evit_vit_base_patch16_clip_224.laion2b",
                TrainFlags::default(),
            ),
            4,
            9,
        );
        assert_eq!(a.tensors.len(), b.tensors.len());
        assert!(a.tensors.iter().zip(&b.tensors).all(|(x, y)| x == y));
    }
}
