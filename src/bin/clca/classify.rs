//! `clca classify`: images through a checkpoint built with the authors' `train.py` flags, top-k
//! classes with softmax scores.
use crate::backend::{init_threads, softmax, top_k, with_engine};
use crate::error::{CliError, CliResult, Context};
use crate::table::{fmt_secs, gmacs, Table};
use crate::ClassifyArgs;
use clca::vit::flags::infer_input_size;
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

/// The model of `flags` (the authors' `train.py` names) over the checkpoint `weights`: classes
/// from its head, the input size from its `pos_embed` unless `--input-size` is given.
pub fn model_from_flags(weights: &std::path::Path, f: &crate::ModelFlags) -> CliResult<Vit> {
    let map = TensorMap::load(weights).ctx("reading the weights")?;
    let mut flags = f.train_flags(infer_num_classes(&map, f.ifa_head)?);
    if flags.input_size.is_none() {
        let probe = VitConfig::from_model_name(&f.model, &flags).ctx("--model")?;
        flags.input_size = Some(infer_input_size(&map, &probe).unwrap_or(448));
    }
    let mut cfg = VitConfig::from_model_name(&f.model, &flags).ctx("building the model")?;
    f.apply_ours(&mut cfg);
    cfg.plan().ctx("building the model")?;
    let hint = flags_hint(&map, &flags, &cfg);
    Vit::new(cfg, map)
        .ctx(format!("loading {}", weights.display()))
        .map_err(|e| match e.code {
            crate::error::BAD_INPUT => e.hint(hint),
            _ => e,
        })
}

pub fn main(a: &ClassifyArgs) -> CliResult<()> {
    init_threads(a.threads)?;
    let model = model_from_flags(&a.weights, &a.flags)?;
    let c = &model.cfg;
    let labels = match &a.labels {
        Some(p) => Some(read_labels(p, c.num_classes)?),
        None => None,
    };
    if let Some(out) = &a.output {
        output_is_json(out)?;
    }
    let paths = collect_images(&a.image)?;
    let per = c.in_chans * c.img_size * c.img_size;
    let n = paths.len();
    let batch = a.batch.min(n);
    let k = c.num_classes;
    let t = Instant::now();
    // Drawn on stderr, and only when it is a terminal.
    let bar = if n > batch {
        indicatif::ProgressBar::new(n as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut t_pre = 0.0;
    let mut t_fwd = 0.0;
    let mut logits: Vec<f32> = Vec::with_capacity(n * k);
    let describe = with_engine(a.device, a.dtype, &model, batch, |e| {
        let mut images = Vec::with_capacity(batch * per);
        for chunk in paths.chunks(batch) {
            images.clear();
            let tp = Instant::now();
            for p in chunk {
                let v = clca::vit::preprocess::load_image(p, c.img_size)
                    .ctx(format!("loading {}", p.display()))
                    .hint("--image takes PNG or JPEG files, or folders of them")?;
                if v.len() != per {
                    return Err(CliError::failed(format!(
                        "{}: preprocessing gave {} values, expected {per}",
                        p.display(),
                        v.len()
                    )));
                }
                images.extend_from_slice(&v);
            }
            // The last batch: pad with its last image (each image's logits do not depend on
            // the others in its batch), and drop the padded rows.
            while images.len() < batch * per {
                images.extend_from_within(images.len() - per..);
            }
            t_pre += tp.elapsed().as_secs_f64();
            e.stage(&images).ctx("staging the images")?;
            let tf = Instant::now();
            e.run(None).ctx("forward")?;
            t_fwd += tf.elapsed().as_secs_f64();
            let l = e.logits().ctx("reading the logits")?;
            logits.extend_from_slice(&l[..chunk.len() * k]);
            bar.inc(chunk.len() as u64);
        }
        Ok(e.describe())
    })?;
    bar.finish_and_clear();
    let wall = t.elapsed().as_secs_f64();

    let macs = model.macs();
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
        "  time: {n} image{} in batches of {batch}: preprocessing {}, forward {} ({:.2} images/s overall)",
        if n == 1 { "" } else { "s" },
        fmt_secs(t_pre),
        fmt_secs(t_fwd),
        n as f64 / wall.max(1e-9)
    );
    let ranked: Vec<Vec<(usize, f64, f32)>> = (0..n)
        .map(|i| {
            let row = &logits[i * k..(i + 1) * k];
            let probs = softmax(row);
            top_k(row, a.topk)
                .into_iter()
                .map(|ci| (ci, probs[ci], row[ci]))
                .collect()
        })
        .collect();
    let name = |ci: usize| labels.as_ref().and_then(|l| l.get(ci).cloned());
    if n <= TABLES_UP_TO {
        for (p, top) in paths.iter().zip(&ranked) {
            println!();
            println!("{}", p.display());
            let mut cols = vec![("rank", true), ("class", true)];
            if labels.is_some() {
                cols.push(("name", false));
            }
            cols.extend([("p", true), ("logit", true)]);
            let mut t = Table::new(&cols);
            for (r, &(ci, pr, lg)) in top.iter().enumerate() {
                let mut cells = vec![(r + 1).to_string(), ci.to_string()];
                if labels.is_some() {
                    cells.push(name(ci).unwrap_or_default());
                }
                cells.push(format!("{pr:.4}"));
                cells.push(format!("{lg:.3}"));
                t.row(cells);
            }
            t.print();
        }
    } else {
        println!();
        let mut t = Table::new(&[
            ("image", false),
            ("top-1", true),
            ("name", false),
            ("p", true),
        ]);
        for (p, top) in paths.iter().zip(&ranked) {
            let (ci, pr, _) = top[0];
            t.row(vec![
                p.display().to_string(),
                ci.to_string(),
                name(ci).unwrap_or_default(),
                format!("{pr:.4}"),
            ]);
        }
        t.print();
    }
    if let Some(out) = &a.output {
        write_output(out, &model, &a.weights, &paths, &ranked, &name)?;
        println!("  wrote {}", out.display());
    }
    Ok(())
}

/// Images listed one per line up to here; above, one line per image.
const TABLES_UP_TO: usize = 16;

/// The files behind `--image`: files as given, folders expanded to their PNG/JPEG files
/// sorted by name (not recursive).
fn collect_images(args: &[std::path::PathBuf]) -> CliResult<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for p in args {
        if p.is_dir() {
            let rd = std::fs::read_dir(p)
                .map_err(|e| CliError::input(format!("cannot read folder {}: {e}", p.display())))?;
            let mut found: Vec<std::path::PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && f.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                            matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                        })
                })
                .collect();
            if found.is_empty() {
                return Err(CliError::input(format!(
                    "folder {} holds no .png, .jpg or .jpeg file",
                    p.display()
                ))
                .hint("--image takes PNG or JPEG files, or folders of them"));
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// `--output`: JSON or CSV by the extension.
fn write_output(
    out: &std::path::Path,
    model: &Vit,
    weights: &std::path::Path,
    paths: &[std::path::PathBuf],
    ranked: &[Vec<(usize, f64, f32)>],
    name: &dyn Fn(usize) -> Option<String>,
) -> CliResult<()> {
    let text = match output_is_json(out)? {
        true => {
            let images: Vec<serde_json::Value> = paths
                .iter()
                .zip(ranked)
                .map(|(p, top)| {
                    serde_json::json!({
                        "image": p.display().to_string(),
                        "top": top.iter().map(|&(ci, pr, lg)| serde_json::json!({
                            "class": ci, "name": name(ci), "p": pr, "logit": lg,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let j = serde_json::json!({
                "model": model.cfg.name,
                "weights": weights.display().to_string(),
                "img_size": model.cfg.img_size,
                "macs_per_image": model.macs().total(),
                "images": images,
            });
            format!("{j:#}\n")
        }
        false => {
            let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            let mut t = String::from("image,rank,class,name,p,logit\n");
            for (p, top) in paths.iter().zip(ranked) {
                for (r, &(ci, pr, lg)) in top.iter().enumerate() {
                    t += &format!(
                        "{},{},{ci},{},{pr},{lg}\n",
                        q(&p.display().to_string()),
                        r + 1,
                        q(&name(ci).unwrap_or_default())
                    );
                }
            }
            t
        }
    };
    std::fs::write(out, text)
        .map_err(|e| CliError::input(format!("cannot write {}: {e}", out.display())))
        .hint("check that the output's directory exists and is writable")
}

/// Whether `--output` names JSON (else CSV); any other extension is refused before any work.
fn output_is_json(out: &std::path::Path) -> CliResult<bool> {
    match out
        .extension()
        .and_then(|x| x.to_str())
        .map(|x| x.to_ascii_lowercase())
        .as_deref()
    {
        Some("json") => Ok(true),
        Some("csv") => Ok(false),
        _ => Err(
            CliError::input(format!("--output {}: unknown format", out.display()))
                .hint("--output takes a .json or .csv file name"),
        ),
    }
}
