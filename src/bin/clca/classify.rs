//! `clca classify`: images through a checkpoint built with the authors' `train.py` flags, top-k
//! classes with softmax scores.
use crate::backend::{init_threads, softmax, top_k, with_engine};
use crate::error::{CliError, CliResult, Context};
use crate::table::{fmt_secs, gmacs, Table};
use crate::ClassifyArgs;
use clca::vit::{TensorMap, TrainFlags, Vit, VitConfig};
use std::time::Instant;

/// Classes from the head weight's first dimension: `ifa_head.0.4.weight` with `--ifa_head`,
/// else `head.weight` (a CLA checkpoint also holds a dead `head.weight` [1000, D]).
pub fn infer_num_classes(map: &TensorMap, ifa_head: bool) -> CliResult<usize> {
    let name = if ifa_head {
        "ifa_head.0.4.weight"
    } else {
        "head.weight"
    };
    match map.tensors.get(name) {
        Some((s, _)) if !s.is_empty() && s[0] > 0 => Ok(s[0]),
        Some((s, _)) => Err(CliError::input(format!(
            "`{name}` has shape {s:?}; expected [classes, …]"
        ))),
        None => {
            let has_cla = map.tensors.keys().any(|k| k.starts_with("ifa_head."));
            let hint = match (ifa_head, has_cla) {
                (false, true) => "the weights hold a CLA head (`ifa_head.*`): pass --ifa_head",
                (true, false) => "the weights hold no CLA head: drop --ifa_head",
                _ => "the file must hold the authors' parameter names (SPEC §1.3)",
            };
            Err(CliError::input(format!("the weights have no `{name}`")).hint(hint))
        }
    }
}

/// `--input-size` when not given: the patch grid of the checkpoint's `pos_embed`.
fn infer_input_size(map: &TensorMap, cfg: &VitConfig) -> Option<usize> {
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

/// Hints for a weights/flags mismatch, read from what the file holds.
fn flags_hint(map: &TensorMap, f: &TrainFlags, cfg: &VitConfig) -> String {
    let mut h = Vec::new();
    if let Some(size) = infer_input_size(map, cfg) {
        if size != cfg.img_size {
            h.push(format!(
                "the checkpoint's pos_embed is a {0}×{0} grid: pass --input-size {size}",
                size / cfg.patch_size
            ));
        }
    }
    match map.tensors.get("clr") {
        Some((s, _)) if s.len() == 3 && s[1] != f.num_clr => h.push(format!(
            "the weights hold {} clr token(s): pass --num_clr {}",
            s[1], s[1]
        )),
        None if f.num_clr > 0 => h.push("the weights hold no `clr`: drop --num_clr".into()),
        _ => {}
    }
    if let Some((s, _)) = map.tensors.get("ifa_head.0.1.weight") {
        if s.len() == 3 && s[2] != f.reduction_loc.len() + 1 {
            h.push(format!(
                "the CLA head aggregates {} CLS taps: --reduction_loc needs {} layers",
                s[2],
                s[2].saturating_sub(1)
            ));
        }
    }
    if map.tensors.contains_key("ifa_head.0.0.running_mean") && f.ifa_dws_conv_groups == 0 {
        h.push("the CLA head is the conv variant: drop --ifa_dws_conv_groups 0".into());
    }
    if h.is_empty() {
        "build the model with the flags the checkpoint was trained with (train.py's names)".into()
    } else {
        h.join("; ")
    }
}

fn read_labels(p: &std::path::Path, classes: usize) -> CliResult<Vec<String>> {
    let s = std::fs::read_to_string(p)
        .map_err(|e| CliError::input(format!("cannot read {}: {e}", p.display())))?;
    let v: Vec<String> = s.lines().map(|l| l.trim().to_string()).collect();
    if v.len() < classes {
        return Err(CliError::input(format!(
            "{} has {} lines, the model has {classes} classes",
            p.display(),
            v.len()
        ))
        .hint("--labels takes one class name per line, in class-index order"));
    }
    Ok(v)
}

pub fn main(a: &ClassifyArgs) -> CliResult<()> {
    init_threads(a.threads)?;
    let map = TensorMap::load(&a.weights).ctx("reading the weights")?;
    let mut flags = a
        .flags
        .train_flags(infer_num_classes(&map, a.flags.ifa_head)?);
    if flags.input_size.is_none() {
        let probe = VitConfig::from_model_name(&a.flags.model, &flags).ctx("--model")?;
        flags.input_size = Some(infer_input_size(&map, &probe).unwrap_or(448));
    }
    let mut cfg = VitConfig::from_model_name(&a.flags.model, &flags).ctx("building the model")?;
    a.flags.apply_ours(&mut cfg);
    cfg.plan().ctx("building the model")?;
    let hint = flags_hint(&map, &flags, &cfg);
    let model = Vit::new(cfg, map)
        .ctx(format!("loading {}", a.weights.display()))
        .map_err(|e| match e.code {
            crate::error::BAD_INPUT => e.hint(hint),
            _ => e,
        })?;
    let c = &model.cfg;
    let labels = match &a.labels {
        Some(p) => Some(read_labels(p, c.num_classes)?),
        None => None,
    };
    let per = c.in_chans * c.img_size * c.img_size;
    let mut images = Vec::with_capacity(a.image.len() * per);
    let t = Instant::now();
    for p in &a.image {
        let v = clca::vit::preprocess::load_image(p, c.img_size)
            .ctx(format!("loading {}", p.display()))
            .hint("--image takes a PNG or JPEG file")?;
        if v.len() != per {
            return Err(CliError::failed(format!(
                "{}: preprocessing gave {} values, expected {per}",
                p.display(),
                v.len()
            )));
        }
        images.extend_from_slice(&v);
    }
    let t_pre = t.elapsed().as_secs_f64();
    let batch = a.image.len();
    let (logits, t_fwd, describe) = with_engine(a.device, a.dtype, &model, batch, |e| {
        e.stage(&images).ctx("staging the images")?;
        let t = Instant::now();
        e.run(None).ctx("forward")?;
        let dt = t.elapsed().as_secs_f64();
        Ok((e.logits().ctx("reading the logits")?, dt, e.describe()))
    })?;

    let macs = model.macs();
    let k = c.num_classes;
    println!(
        "clca classify: {} at {} px, {} classes (weights {})",
        c.name,
        c.img_size,
        k,
        a.weights.display()
    );
    let lens: Vec<String> = model
        .plan
        .blocks
        .iter()
        .map(|b| b.len_after.to_string())
        .collect();
    println!("  tokens after each block: {}", lens.join(" "));
    println!(
        "  MACs per image: {} G; backend {describe}",
        gmacs(macs.total(), 2)
    );
    println!(
        "  time: preprocessing {} for {batch} image{}, forward {} (batch {batch}, one cold run)",
        fmt_secs(t_pre),
        if batch == 1 { "" } else { "s" },
        fmt_secs(t_fwd)
    );
    for (i, p) in a.image.iter().enumerate() {
        let row = &logits[i * k..(i + 1) * k];
        let probs = softmax(row);
        println!();
        println!("{}", p.display());
        let mut t = Table::new(&[
            ("rank", true),
            ("class", true),
            ("p", true),
            ("logit", true),
        ]);
        let with_names = labels.is_some();
        if with_names {
            t = Table::new(&[
                ("rank", true),
                ("class", true),
                ("name", false),
                ("p", true),
                ("logit", true),
            ]);
        }
        for (r, ci) in top_k(row, a.topk).into_iter().enumerate() {
            let mut cells = vec![(r + 1).to_string(), ci.to_string()];
            if let Some(l) = &labels {
                cells.push(l.get(ci).cloned().unwrap_or_default());
            }
            cells.push(format!("{:.4}", probs[ci]));
            cells.push(format!("{:.3}", row[ci]));
            t.row(cells);
        }
        t.print();
    }
    Ok(())
}
