//! `clca forward`: one forward of a golden-format case (config.json + weights + `images`),
//! logits (and with `--trace` every per-block tensor) written to a safetensors file, with
//! optional timing and a one-line JSON report.
use crate::backend::{init_threads, logits_trace, time_runs, with_engine_or_graph, Timing};
use crate::error::{CliError, CliResult, Context};
use crate::table::{fmt_secs, gmacs, shape};
use crate::ForwardArgs;
use clca::vit::{Trace, TraceData, Vit, VitConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `--config` may name config.json or the case directory holding it.
fn config_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("config.json")
    } else {
        p.to_path_buf()
    }
}

/// Reads a golden-case config.json.
pub fn read_config(p: &Path) -> CliResult<VitConfig> {
    let p = config_path(p);
    let bytes = std::fs::read(&p).map_err(|e| {
        CliError::input(format!("cannot read {}: {e}", p.display()))
            .hint("--config takes a golden case's config.json (or its directory)")
    })?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        CliError::input(format!("{} is not valid JSON: {e}", p.display()))
            .hint("--config takes a golden case's config.json (format: ../shared/golden/README.md)")
    })?;
    VitConfig::from_golden_json(&v).map_err(|e| {
        let class = v["model"]["model_class"].as_str().unwrap_or("?");
        match &e {
            clca::Error::Unsupported { .. } => CliError::input(
                format!(
                    "{}: `{class}` is a token-reduction method this release does not run",
                    p.display()
                ),
            )
            .hint("supported: the model classes of the authors' models/{vit,topk,evit,tome,dpcknn,sit,patchmerger,ats,dyvit}.py"),
            _ => {
                let mut e = CliError::from(e);
                e.msg = format!("{}: {}", p.display(), e.msg);
                e
            }
        }
    })
}

/// Reads the `images` tensor [B, C, S, S] and checks it against the model.
pub fn read_images(p: &Path, cfg: &VitConfig) -> CliResult<(usize, Vec<f32>)> {
    let mut map = clca::vit::TensorMap::load(p)
        .ctx("reading the input")
        .hint("--input takes a safetensors file with an `images` tensor [B, 3, S, S] f32")?;
    let mut names: Vec<String> = map.tensors.keys().take(6).cloned().collect();
    if map.tensors.len() > names.len() {
        names.push(format!("… {} in all", map.tensors.len()));
    }
    let (s, v) = map.tensors.remove("images").ok_or_else(|| {
        CliError::input(format!(
            "{} has no `images` tensor (it holds: {})",
            p.display(),
            names.join(", ")
        ))
        .hint("--input takes a safetensors file with an `images` tensor [B, 3, S, S] f32")
    })?;
    let (c, sz) = (cfg.in_chans, cfg.img_size);
    if s.len() != 4 || s[1] != c || s[2] != sz || s[3] != sz || s[0] == 0 {
        return Err(CliError::input(format!(
            "{}: `images` is {}, the model expects [B, {c}, {sz}, {sz}] with B ≥ 1",
            p.display(),
            shape(&s)
        ))
        .hint("the input size is fixed when the model is built (config.json model.img_size)"));
    }
    if v.len() != s.iter().product::<usize>() {
        return Err(CliError::input(format!(
            "{}: `images` is not a float tensor (an integer or bool dtype)",
            p.display()
        ))
        .hint("--input takes a safetensors file with an `images` tensor [B, 3, S, S] f32 (f16, bf16 and f64 are widened)"));
    }
    Ok((s[0], v))
}

pub fn main(a: &ForwardArgs) -> CliResult<()> {
    let threads = init_threads(a.threads)?;
    let model = match &a.config {
        Some(p) => {
            let mut cfg = read_config(p)?;
            a.flags.apply_ours(&mut cfg);
            // A configuration that cannot be planned is the config's fault, not the weights'.
            cfg.plan().ctx(config_path(p).display())?;
            Vit::load(cfg, &a.weights).ctx(format!("loading {}", a.weights.display()))?
        }
        None => crate::classify::model_from_flags(&a.weights, &a.flags)?,
    };
    let (batch, images) = read_images(&a.input, &model.cfg)?;
    let macs = model.macs();
    let classes = model.cfg.num_classes;

    let (trace, first, timing, describe, profile) =
        with_engine_or_graph(a.cuda_graph, a.device, a.dtype, &model, batch, |e| {
            e.stage(&images).ctx("staging the images")?;
            let mut trace = Trace::default();
            let t = Instant::now();
            e.run(a.trace.then_some(&mut trace)).ctx("forward")?;
            let first = t.elapsed().as_secs_f64();
            if !a.trace {
                trace = logits_trace(e.logits().ctx("reading the logits")?, batch, classes);
            }
            if a.profile && a.runs == 0 {
                // No timed runs: profile one extra forward.
                profile_on(e)?;
                e.run(None).ctx("forward (profiled)")?;
            }
            let timing = if a.runs > 0 {
                for _ in 0..a.warmup {
                    e.run(None).ctx("forward (warm-up)")?;
                }
                if a.profile {
                    profile_on(e)?;
                }
                Some(time_runs(e, 0, a.runs)?)
            } else {
                None
            };
            Ok((trace, first, timing, e.describe(), e.take_profile()))
        })?;
    if let Some(p) = &profile {
        eprint!("{}", p.table());
    }
    trace
        .save(&a.output)
        .ctx(format!("writing {}", a.output.display()))
        .hint("check that the output's directory exists and is writable")?;

    let logits = match trace.get("logits") {
        Some((_, TraceData::F32(v))) => v.clone(),
        _ => return Err(CliError::failed("the forward produced no logits")),
    };
    let nonfinite = logits.iter().filter(|v| !v.is_finite()).count();
    let (samples, warmup) = match &timing {
        Some(t) => (t.clone(), a.warmup),
        None => (
            Timing {
                samples: vec![first],
            },
            0,
        ),
    };
    if a.json {
        let j = serde_json::json!({
            "forward_median_s": samples.median(),
            "forward_min_s": samples.min(),
            "forward_max_s": samples.max(),
            "batch": batch,
            "macs": macs.total(),
            "device": match a.device {
                // The device it ran on.
                crate::backend::DeviceArg::Auto if describe.starts_with("CPU") => "cpu",
                crate::backend::DeviceArg::Auto => "cuda",
                d => d.as_str(),
            },
            "dtype": a.dtype.as_str(),
            "threads": threads,
            "runs": samples.samples.len(),
            "warmup": warmup,
            "backend": describe,
            "cuda_graph": a.cuda_graph,
        });
        let mut j = j;
        if let Some(p) = &profile {
            j["profile"] = p.to_json();
        }
        println!("{j}");
    } else {
        let c = &model.cfg;
        let lens: Vec<String> = model
            .plan
            .blocks
            .iter()
            .map(|b| b.len_after.to_string())
            .collect();
        println!(
            "clca forward: {} ({}, {} px, depth {}, {} classes), batch {batch}",
            if c.name.is_empty() { "?" } else { &c.name },
            c.reduction.name(),
            c.img_size,
            c.depth,
            classes
        );
        println!("  backend:  {describe}");
        println!("  tokens after each block: {}", lens.join(" "));
        println!(
            "  MACs per image: {} G ({} total)",
            gmacs(macs.total(), 4),
            macs.total()
        );
        match &timing {
            Some(t) => println!(
                "  forward: median {} of {} runs after {} warm-up{} (min {}, max {})",
                fmt_secs(t.median()),
                t.samples.len(),
                a.warmup,
                if a.warmup == 1 { "" } else { "s" },
                fmt_secs(t.min()),
                fmt_secs(t.max())
            ),
            None => println!(
                "  forward: {} (one cold run{}; use --runs R for a measurement)",
                fmt_secs(first),
                if a.trace { ", with the trace" } else { "" }
            ),
        }
        println!(
            "  wrote {}: logits {}{}",
            a.output.display(),
            shape(&[batch, classes]),
            if a.trace {
                format!(" + {} per-block tensors", trace.tensors.len() - 1)
            } else {
                String::new()
            }
        );
    }
    if nonfinite > 0 {
        eprintln!("warning: {nonfinite} logits are not finite");
    }
    Ok(())
}

/// Turns profiling on, or says that this backend has none.
fn profile_on(e: &mut dyn crate::backend::Engine) -> CliResult<()> {
    if e.set_profile(Some(clca::vit::profile::Profile::new())) {
        Ok(())
    } else {
        Err(CliError::input(format!(
            "--profile: the {} forward has no profile",
            e.describe()
        )))
    }
}
