//! `clca info WEIGHTS`: what a checkpoint holds, read from its tensor names and shapes alone
//! (backbone, reduction method and its widths, cache and CLA head, parameter count), the
//! `train.py` flags that rebuild it, and whether it loads with them.
use crate::error::{CliError, CliResult, Context};
use crate::table::Table;
use crate::InfoArgs;
use clca::plan::Reduction;
use clca::vit::{TensorMap, TrainFlags, Vit, VitConfig};

fn shape(map: &TensorMap, name: &str) -> Option<Vec<usize>> {
    map.tensors.get(name).map(|(s, _)| s.clone())
}

/// What the names tell: the method with learned modules, and their widths in layer order.
fn method(map: &TensorMap) -> (Option<Reduction>, Vec<usize>) {
    let count = |pre: &str| {
        (0..)
            .take_while(|j| {
                map.tensors
                    .keys()
                    .any(|k| k.starts_with(&format!("{pre}.{j}.")))
            })
            .count()
    };
    let n = count("cluster_layers");
    let w = |suffix: &str| -> Vec<usize> {
        (0..n)
            .filter_map(|j| shape(map, &format!("cluster_layers.{j}.{suffix}")).map(|s| s[0]))
            .collect()
    };
    if n > 0 && map.tensors.contains_key("cluster_layers.0.score.weight") {
        return (Some(Reduction::DpcKnn), Vec::new());
    }
    if n > 0 && map.tensors.contains_key("cluster_layers.0.queries") {
        return (Some(Reduction::PatchMerger), w("queries"));
    }
    if n > 0 && map.tensors.contains_key("cluster_layers.0.weight.3.weight") {
        return (Some(Reduction::Sit), w("weight.3.weight"));
    }
    if count("score_predictor") > 0 {
        return (Some(Reduction::DynamicVit), Vec::new());
    }
    (None, Vec::new())
}

pub fn main(a: &InfoArgs) -> CliResult<()> {
    let map = TensorMap::load(&a.weights).ctx(format!("reading {}", a.weights.display()))?;
    let not_vit = || {
        CliError::input(format!(
            "{} does not look like a ViT checkpoint in the authors' names",
            a.weights.display()
        ))
        .hint("expected cls_token, pos_embed, patch_embed.proj.weight and blocks.N.* (SPEC §1.3); convert torch checkpoints with scripts/convert_checkpoint.py")
    };
    let d = match shape(&map, "cls_token").as_deref() {
        Some([1, 1, d]) => *d,
        _ => return Err(not_vit()),
    };
    let (ps, ch) = match shape(&map, "patch_embed.proj.weight").as_deref() {
        Some([_, c, p, q]) if p == q => (*p, *c),
        _ => return Err(not_vit()),
    };
    let depth = (0..)
        .take_while(|i| {
            map.tensors
                .contains_key(&format!("blocks.{i}.norm1.weight"))
        })
        .count();
    let c = match shape(&map, "clr").as_deref() {
        Some([1, c, _]) => *c,
        _ => 0,
    };
    let clip = map.tensors.contains_key("norm_pre.weight");
    let deit3 = map.tensors.contains_key("blocks.0.ls1.gamma");
    let miil = !map.tensors.contains_key("blocks.0.attn.qkv.bias");
    let rows = shape(&map, "pos_embed")
        .and_then(|s| s.get(1).copied())
        .unwrap_or(0);
    let p = if deit3 {
        rows
    } else {
        rows.saturating_sub(1 + c)
    };
    let grid = (p as f64).sqrt().round() as usize;
    let img = grid * ps;
    let (size, heads) = match d {
        192 => ("tiny", 3),
        384 => ("small", 6),
        768 => ("base", 12),
        1024 => ("large", 16),
        _ => ("custom", 0),
    };
    let (head, taps, classes) = if let Some(s) = shape(&map, "ifa_head.0.1.weight") {
        let cls = shape(&map, "ifa_head.0.4.weight").map_or(0, |s| s[0]);
        (format!("CLA (conv, groups {})", s[0] / d.max(1)), s[2], cls)
    } else if let Some(s) = shape(&map, "ifa_head.0.0.weight") {
        let cls = shape(&map, "ifa_head.0.4.weight").map_or(0, |s| s[0]);
        (
            "CLA (linear variant, --ifa_dws_conv_groups 0)".to_string(),
            s[1],
            cls,
        )
    } else {
        let cls = shape(&map, "head.weight").map_or(0, |s| s[0]);
        ("final LayerNorm + Linear".to_string(), 0, cls)
    };
    let (meth, widths) = method(&map);
    let params: usize = map
        .tensors
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(_, (_, v))| v.len())
        .sum();
    let family = if deit3 { "deit3" } else { "vit" };
    let flavour = if clip {
        "_clip"
    } else if miil {
        "_miil"
    } else {
        ""
    };
    // Parameter-free methods are indistinguishable; with CLS taps beyond the plain ViT's fixed
    // ones, EViT stands in for them (Top-K, ToMe and ATS load the same tensors).
    let prefix = meth.map_or(if taps > 0 { "evit_" } else { "" }, |r| r.prefix());
    // A custom width is built from the nearest named size with its dimensions overridden.
    let named = if heads > 0 { size } else { "tiny" };
    let name = format!("{prefix}{family}_{named}_patch{ps}{flavour}_224");
    let hm = shape(&map, "blocks.0.mlp.fc1.weight").map_or(4 * d, |s| s[0]);
    let nlocs = if taps > 0 {
        taps - 1
    } else {
        match meth {
            Some(Reduction::DpcKnn) => (0..)
                .take_while(|j| {
                    map.tensors
                        .contains_key(&format!("cluster_layers.{j}.score.weight"))
                })
                .count(),
            Some(Reduction::DynamicVit) => (0..)
                .take_while(|j| {
                    map.tensors
                        .contains_key(&format!("score_predictor.{j}.in_conv.1.weight"))
                })
                .count(),
            _ => widths.len(),
        }
    };
    // train.py's default layers for three reductions in twelve blocks are 3 6 9; otherwise an
    // even spacing (the file does not store them).
    let locs: Vec<usize> = (1..=nlocs).map(|j| j * depth / (nlocs + 1)).collect();
    // A keep rate that reproduces the stored widths (int(P·kr^{j+1})), if any two-decimal one does.
    let kr = if widths.is_empty() {
        None
    } else {
        (1..=100).map(|v| v as f64 / 100.0).find(|kr| {
            widths
                .iter()
                .enumerate()
                .all(|(j, &k)| (p as f64 * kr.powf(j as f64 + 1.0)) as usize == k)
        })
    };
    let mut t = Table::new(&[("", false), ("", false)]);
    let mut row = |k: &str, v: String| t.row(vec![k.to_string(), v]);
    row("file", a.weights.display().to_string());
    row(
        "backbone",
        format!(
            "{family} {size}{}: D {d}, depth {depth}, {} heads, patch {ps}, {ch} channels, {img} px ({p} patches)",
            if clip { " (CLIP: norm_pre, no patch bias)" } else if deit3 { " (DeiT-3: LayerScale, no cls position)" } else if miil { " (MIIL: no qkv bias)" } else { "" },
            if heads > 0 { heads.to_string() } else { "?".into() }
        ),
    );
    row(
        "method",
        match meth {
            Some(r) => format!("{} (learned modules at {nlocs} layers{})", r.name(), if widths.is_empty() { String::new() } else { format!(", widths {widths:?}") }),
            None => "parameter-free (plain ViT, Top-K, EViT, ToMe or ATS: the file cannot tell; pass --model)".into(),
        },
    );
    row(
        "cache",
        if c > 0 {
            format!("{c} clr token(s): --clc --num_clr {c} (GAP carrier and recover-at-last are not stored: train.py's default is on)")
        } else {
            "no clr token (CLC off, or GAP carriers only)".into()
        },
    );
    row(
        "head",
        format!(
            "{head}{}, {classes} classes",
            if taps > 0 {
                format!(", {taps} CLS taps")
            } else {
                String::new()
            }
        ),
    );
    row(
        "parameters",
        format!("{params} ({:.1} M)", params as f64 / 1e6),
    );
    let flags = TrainFlags {
        input_size: Some(img),
        reduction_loc: locs.clone(),
        keep_rate: vec![kr.unwrap_or(1.0)],
        clc: c > 0,
        num_clr: c,
        ifa_head: taps > 0,
        ifa_dws_conv_groups: if head.starts_with("CLA (linear") {
            0
        } else {
            2
        },
        num_classes: classes.max(1),
        ..TrainFlags::default()
    };
    let locs_s: Vec<String> = locs.iter().map(|l| l.to_string()).collect();
    let mut cmd = format!("--model {name} --input-size {img}");
    if heads == 0 {
        cmd = format!("(custom width {d}: no model name) --input-size {img}");
    }
    if nlocs > 0 {
        cmd += &format!(" --reduction_loc {}", locs_s.join(" "));
    }
    if let Some(kr) = kr {
        cmd += &format!(" --keep_rate {kr}");
    }
    if c > 0 {
        cmd += &format!(" --clc --num_clr {c}");
    }
    if taps > 0 {
        cmd += " --ifa_head";
        if flags.ifa_dws_conv_groups == 0 {
            cmd += " --ifa_dws_conv_groups 0";
        }
    }
    row("train.py flags", cmd);
    let loads = VitConfig::from_model_name(&name, &flags).and_then(|mut cfg| {
        cfg.embed_dim = d;
        cfg.depth = depth;
        cfg.mlp_hidden = hm;
        cfg.in_chans = ch;
        if heads == 0 {
            // Heads are not stored (qkv is [3D, D] for any count): one head per 32 channels.
            cfg.num_heads = (1..=d)
                .rev()
                .find(|h| d % h == 0 && d / h >= 32)
                .unwrap_or(1);
        }
        Vit::new(cfg, map)
    });
    row(
        "loads",
        match &loads {
            Ok(_) => "yes, with these flags".into(),
            Err(e) => format!("no: {e}"),
        },
    );
    // No header row: skip the table's (empty) header and its rule.
    println!("{}", t.render()[2..].join("\n"));
    loads.map(|_| ()).map_err(|e| {
        CliError::input(format!("{} does not load with the flags above: {e}", a.weights.display()))
            .hint("pass the flags it was trained with to `clca classify` (the layers and keep rate are not stored in the file)")
    })
}
