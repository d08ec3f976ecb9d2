//! Seeded random weights for any configuration, under the authors' parameter names, drawn
//! with the rules of the golden cases' `randomize_` (../shared/golden/README.md): for demos,
//! benchmarks and tests without a checkpoint. Deterministic for a seed.
use super::config::{HeadKind, VitConfig};
use super::weights::TensorMap;

/// splitmix64 with Box–Muller normals.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Every tensor `cfg` expects (with `taps` CLS taps for a CLA head), seeded.
pub fn random_weights(cfg: &VitConfig, taps: usize, seed: u64) -> TensorMap {
    let mut rng = Rng(seed);
    let mut m = TensorMap::default();
    let mut put =
        |name: &str, shape: &[usize], f: &mut dyn FnMut(&mut Rng) -> f64, rng: &mut Rng| {
            let n: usize = shape.iter().product();
            m.tensors.insert(
                name.to_string(),
                (shape.to_vec(), (0..n).map(|_| f(rng) as f32).collect()),
            );
        };
    let (d, hm, k) = (cfg.embed_dim, cfg.mlp_hidden, cfg.num_classes);
    let (p, c) = (cfg.num_patches(), cfg.num_clr);
    let lin = |fan: usize| move |r: &mut Rng| r.normal() / (fan as f64).sqrt();
    let bias = |r: &mut Rng| 0.1 * r.normal();
    let lnw = |r: &mut Rng| 1.0 + 0.2 * r.normal();
    put("cls_token", &[1, 1, d], &mut |r| r.normal(), &mut rng);
    put(
        "pos_embed",
        &[1, if cfg.no_embed_class { p } else { 1 + p + c }, d],
        &mut |r| 0.5 * r.normal(),
        &mut rng,
    );
    if c > 0 {
        put("clr", &[1, c, d], &mut |r| r.normal(), &mut rng);
    }
    let ps = cfg.patch_size;
    put(
        "patch_embed.proj.weight",
        &[d, 3, ps, ps],
        &mut lin(3 * ps * ps),
        &mut rng,
    );
    if cfg.patch_bias {
        put("patch_embed.proj.bias", &[d], &mut { bias }, &mut rng);
    }
    if cfg.norm_pre {
        put("norm_pre.weight", &[d], &mut { lnw }, &mut rng);
        put("norm_pre.bias", &[d], &mut { bias }, &mut rng);
    }
    for i in 0..cfg.depth {
        let n = |s: &str| format!("blocks.{i}.{s}");
        put(&n("norm1.weight"), &[d], &mut { lnw }, &mut rng);
        put(&n("norm1.bias"), &[d], &mut { bias }, &mut rng);
        put(&n("attn.qkv.weight"), &[3 * d, d], &mut lin(d), &mut rng);
        if cfg.qkv_bias {
            put(&n("attn.qkv.bias"), &[3 * d], &mut { bias }, &mut rng);
        }
        put(&n("attn.proj.weight"), &[d, d], &mut lin(d), &mut rng);
        put(&n("attn.proj.bias"), &[d], &mut { bias }, &mut rng);
        put(&n("norm2.weight"), &[d], &mut { lnw }, &mut rng);
        put(&n("norm2.bias"), &[d], &mut { bias }, &mut rng);
        put(&n("mlp.fc1.weight"), &[hm, d], &mut lin(d), &mut rng);
        put(&n("mlp.fc1.bias"), &[hm], &mut { bias }, &mut rng);
        put(&n("mlp.fc2.weight"), &[d, hm], &mut lin(hm), &mut rng);
        put(&n("mlp.fc2.bias"), &[d], &mut { bias }, &mut rng);
        if cfg.layerscale {
            put(
                &n("ls1.gamma"),
                &[d],
                &mut |r| 0.5 + 0.5 * r.uniform(),
                &mut rng,
            );
            put(
                &n("ls2.gamma"),
                &[d],
                &mut |r| 0.5 + 0.5 * r.uniform(),
                &mut rng,
            );
        }
    }
    match cfg.head {
        HeadKind::Linear => {
            put("norm.weight", &[d], &mut { lnw }, &mut rng);
            put("norm.bias", &[d], &mut { bias }, &mut rng);
            put("head.weight", &[k, d], &mut lin(d), &mut rng);
            put("head.bias", &[k], &mut { bias }, &mut rng);
        }
        HeadKind::Cla { groups: 0 } => {
            put("ifa_head.0.0.weight", &[1, taps], &mut lin(taps), &mut rng);
            put("ifa_head.0.0.bias", &[1], &mut { bias }, &mut rng);
            put("ifa_head.0.3.weight", &[d], &mut { lnw }, &mut rng);
            put("ifa_head.0.3.bias", &[d], &mut { bias }, &mut rng);
            put("ifa_head.0.4.weight", &[k, d], &mut lin(d), &mut rng);
            put("ifa_head.0.4.bias", &[k], &mut { bias }, &mut rng);
        }
        HeadKind::Cla { groups: g } => {
            for (pre, ch) in [("ifa_head.0.0", d), ("ifa_head.0.2", g * d)] {
                put(&format!("{pre}.weight"), &[ch], &mut { lnw }, &mut rng);
                put(&format!("{pre}.bias"), &[ch], &mut { bias }, &mut rng);
                put(
                    &format!("{pre}.running_mean"),
                    &[ch],
                    &mut |r| 0.5 * r.normal(),
                    &mut rng,
                );
                put(
                    &format!("{pre}.running_var"),
                    &[ch],
                    &mut |r| 0.5 + 1.5 * r.uniform(),
                    &mut rng,
                );
            }
            put(
                "ifa_head.0.1.weight",
                &[g * d, 1, taps],
                &mut lin(taps),
                &mut rng,
            );
            put("ifa_head.0.1.bias", &[g * d], &mut { bias }, &mut rng);
            put(
                "ifa_head.0.4.weight",
                &[k, g * d, 1],
                &mut lin(g * d),
                &mut rng,
            );
            put("ifa_head.0.4.bias", &[k], &mut { bias }, &mut rng);
            put("head.weight", &[1000, d], &mut lin(d), &mut rng);
            put("head.bias", &[1000], &mut { bias }, &mut rng);
        }
    }
    m
}
