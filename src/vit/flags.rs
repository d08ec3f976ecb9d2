//! A model written the way the authors launch `train.py`: one string of flags, e.g.
//! `--model evit_vit_base_patch16_clip_224.laion2b --input-size 448 --reduction_loc 3 6 9
//! --keep_rate 0.1 --clc --num_clr 1 --ifa_head`. This is how the C ABI takes a configuration
//! (`clca_model_create`), and what `clca classify` takes on its command line.
//!
//! Rules (those of `argparse`): a flag is `--name` or `--name=value`; `-` and `_` are the same in
//! names (`--input-size` = `--input_size`); a repeated flag keeps its last value; the two
//! `store_false` flags `--clc_include_gap` and `--clc_recover_at_last` turn the GAP carrier and
//! the last recovery **off**. Besides `train.py`'s model flags: `--num_classes N`, and ours,
//! `--dpc-noise-seed S` and `--ats-batch-padding` (see [`super::config::MethodOptions`]).
//! Anything else is an error naming the flag.
use super::config::{TrainFlags, VitConfig};
use super::weights::TensorMap;
use crate::error::invalid;
use crate::Result;

/// The model name when `--model` is not given (the paper's README checkpoint).
pub const DEFAULT_MODEL: &str = "evit_vit_base_patch16_clip_224.laion2b";
/// The input size when `--input-size` is not given and no weights say otherwise (the paper's).
pub const DEFAULT_INPUT_SIZE: usize = 448;
/// The classes when `--num_classes` is not given and no weights say otherwise.
pub const DEFAULT_NUM_CLASSES: usize = 1000;

/// A parsed flags string.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFlags {
    /// `--model` ([`DEFAULT_MODEL`] when absent).
    pub model: String,
    /// The `train.py` flags (`input_size` and `num_classes` as given; see [`Self::config`]).
    pub flags: TrainFlags,
    /// Whether `--num_classes` was given.
    pub num_classes_given: bool,
    /// `--dpc-noise-seed`.
    pub dpc_noise_seed: Option<u64>,
    /// `--ats-batch-padding`.
    pub ats_batch_padding: bool,
}

/// Every flag [`ModelFlags::parse`] knows, in `_` spelling.
pub const KNOWN_FLAGS: &[&str] = &[
    "model",
    "input_size",
    "reduction_loc",
    "keep_rate",
    "clc",
    "num_clr",
    "ifa_head",
    "clc_include_gap",
    "clc_recover_at_last",
    "clc_pool_cls",
    "clc_pool_clr",
    "ifa_dws_conv_groups",
    "k_neighbors",
    "equal_weight",
    "num_classes",
    "dpc_noise_seed",
    "ats_batch_padding",
];

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T> {
    v.parse().map_err(|_| {
        invalid(
            "config",
            format!("--{flag} {v}"),
            "not a number of the right kind",
        )
    })
}

impl ModelFlags {
    /// Parses a flags string (rules in the module docs).
    pub fn parse(s: &str) -> Result<Self> {
        let mut out = ModelFlags {
            model: DEFAULT_MODEL.to_string(),
            flags: TrainFlags {
                num_classes: DEFAULT_NUM_CLASSES,
                ..TrainFlags::default()
            },
            num_classes_given: false,
            dpc_noise_seed: None,
            ats_batch_padding: false,
        };
        let mut words = s.split_whitespace().peekable();
        while let Some(w) = words.next() {
            let Some(body) = w.strip_prefix("--") else {
                return Err(invalid(
                    "config",
                    w,
                    "expected a --flag (values follow their flag)",
                ));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let flag = name.replace('-', "_");
            let mut values: Vec<&str> = inline.into_iter().collect();
            if inline.is_none() {
                while let Some(v) = words.next_if(|v| !v.starts_with("--")) {
                    values.push(v);
                }
            }
            let one = |values: &[&str]| -> Result<String> {
                match values {
                    [v] => Ok(v.to_string()),
                    _ => Err(invalid(
                        "config",
                        format!("--{name} {}", values.join(" ")),
                        "takes exactly one value",
                    )),
                }
            };
            let none = |values: &[&str]| -> Result<()> {
                if values.is_empty() {
                    Ok(())
                } else {
                    Err(invalid(
                        "config",
                        format!("--{name} {}", values.join(" ")),
                        "is a switch and takes no value",
                    ))
                }
            };
            let many = |values: &[&str]| -> Result<()> {
                if values.is_empty() {
                    Err(invalid("config", format!("--{name}"), "needs values"))
                } else {
                    Ok(())
                }
            };
            let f = &mut out.flags;
            match flag.as_str() {
                "model" => out.model = one(&values)?,
                "input_size" => f.input_size = Some(num(name, &one(&values)?)?),
                "reduction_loc" => {
                    many(&values)?;
                    f.reduction_loc = values.iter().map(|v| num(name, v)).collect::<Result<_>>()?;
                }
                "keep_rate" => {
                    many(&values)?;
                    f.keep_rate = values.iter().map(|v| num(name, v)).collect::<Result<_>>()?;
                }
                "clc" => f.clc = none(&values).map(|_| true)?,
                "num_clr" => f.num_clr = num(name, &one(&values)?)?,
                "ifa_head" => f.ifa_head = none(&values).map(|_| true)?,
                "clc_include_gap" => f.clc_include_gap = none(&values).map(|_| false)?,
                "clc_recover_at_last" => f.clc_recover_at_last = none(&values).map(|_| false)?,
                "clc_pool_cls" => f.clc_pool_cls = none(&values).map(|_| true)?,
                "clc_pool_clr" => f.clc_pool_clr = none(&values).map(|_| true)?,
                "ifa_dws_conv_groups" => f.ifa_dws_conv_groups = num(name, &one(&values)?)?,
                "k_neighbors" => f.k_neighbors = num(name, &one(&values)?)?,
                "equal_weight" => f.equal_weight = none(&values).map(|_| true)?,
                "num_classes" => {
                    f.num_classes = num(name, &one(&values)?)?;
                    out.num_classes_given = true;
                }
                "dpc_noise_seed" => out.dpc_noise_seed = Some(num(name, &one(&values)?)?),
                "ats_batch_padding" => out.ats_batch_padding = none(&values).map(|_| true)?,
                _ => {
                    return Err(invalid(
                        "config",
                        w,
                        format!("unknown flag (known: --{})", KNOWN_FLAGS.join(", --")),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The configuration. With `weights`, what the flags leave open is read from them as
    /// `clca classify` does: the classes from the head's first dimension, the input size from
    /// the `pos_embed` grid; otherwise [`DEFAULT_NUM_CLASSES`] and [`DEFAULT_INPUT_SIZE`].
    pub fn config(&self, weights: Option<&TensorMap>) -> Result<VitConfig> {
        let mut f = self.flags.clone();
        if !self.num_classes_given {
            if let Some(k) = weights.and_then(|m| infer_num_classes(m, f.ifa_head)) {
                f.num_classes = k;
            }
        }
        if f.input_size.is_none() {
            let probe = VitConfig::from_model_name(&self.model, &f)?;
            f.input_size = Some(
                weights
                    .and_then(|m| infer_input_size(m, &probe))
                    .unwrap_or(DEFAULT_INPUT_SIZE),
            );
        }
        let mut cfg = VitConfig::from_model_name(&self.model, &f)?;
        cfg.method.dpc_noise_seed = self.dpc_noise_seed;
        cfg.method.ats_batch_padding = self.ats_batch_padding;
        Ok(cfg)
    }
}

/// A configuration from either form the C ABI accepts: a golden-case `config.json` (text that
/// starts with `{`) or a `train.py` flags string ([`ModelFlags`]).
pub fn config_from_text(text: &str, weights: Option<&TensorMap>) -> Result<VitConfig> {
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| invalid("config", "JSON", format!("not valid JSON: {e}")))?;
        VitConfig::from_golden_json(&v)
    } else {
        ModelFlags::parse(text)?.config(weights)
    }
}

/// Classes from the head weight's first dimension: `ifa_head.0.4.weight` with the CLA head,
/// else `head.weight`.
pub fn infer_num_classes(map: &TensorMap, ifa_head: bool) -> Option<usize> {
    let name = if ifa_head {
        "ifa_head.0.4.weight"
    } else {
        "head.weight"
    };
    map.tensors
        .get(name)
        .and_then(|(s, _)| s.first().copied())
        .filter(|&k| k > 0)
}

/// The input size of the checkpoint's `pos_embed` patch grid, for the model family of `cfg`.
pub fn infer_input_size(map: &TensorMap, cfg: &VitConfig) -> Option<usize> {
    let (s, _) = map.tensors.get("pos_embed")?;
    let rows = *s.get(1)?;
    let prefix = if cfg.no_embed_class {
        0
    } else {
        1 + cfg.num_clr
    };
    let p = rows.checked_sub(prefix)?;
    let g = (p as f64).sqrt().round() as usize;
    (g * g == p && g > 0).then_some(g * cfg.patch_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_recipe() -> Result<()> {
        let m = ModelFlags::parse(
            "--reduction_loc 3 6 9 --keep_rate 0.1 --clc --num_clr 1 --ifa_head --input-size=448",
        )?;
        assert_eq!(m.model, DEFAULT_MODEL);
        assert_eq!(m.flags.reduction_loc, vec![3, 6, 9]);
        assert_eq!(m.flags.keep_rate, vec![0.1]);
        assert!(m.flags.clc && m.flags.ifa_head && m.flags.clc_include_gap);
        let cfg = m.config(None)?;
        assert_eq!((cfg.img_size, cfg.num_classes, cfg.num_clr), (448, 1000, 1));
        Ok(())
    }

    #[test]
    fn store_false_and_errors() -> Result<()> {
        let m = ModelFlags::parse("--clc --clc_include_gap --clc-recover-at-last")?;
        assert!(!m.flags.clc_include_gap && !m.flags.clc_recover_at_last);
        for bad in [
            "--keep_rate",
            "--num_clr 1 2",
            "--clc yes",
            "--bogus 3",
            "stray",
            "--input-size big",
        ] {
            assert!(ModelFlags::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
