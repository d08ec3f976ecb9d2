//! `clca bench`: the accuracy-free cost curve of the paper's figure on this machine — MACs and
//! forward time against keep rate, for any methods and batch sizes, with seeded random
//! weights; a table on stdout and optionally CSV.
use crate::backend::{init_threads, time_runs, with_engine_or_graph};
use crate::error::{CliError, CliResult, Context};
use crate::table::{fmt_secs, Table};
use crate::BenchArgs;
use clca::plan::Reduction;
use clca::vit::random::{random_images, random_weights};
use clca::vit::{TrainFlags, Vit, VitConfig};
use std::fmt::Write as _;

/// The model of one point: `{prefix}vit_base_patch16_224` (or `--model`'s backbone) with the
/// paper's CLCA flags at `kr`; where that plan is refused (the authors' NaN), without the GAP
/// carrier, flagged.
fn point(a: &BenchArgs, r: Reduction, kr: f64) -> CliResult<(Vit, bool)> {
    let flags = |gap: bool| TrainFlags {
        input_size: Some(a.input_size),
        reduction_loc: a.reduction_loc.clone(),
        keep_rate: vec![kr],
        clc: !a.no_clca,
        num_clr: (!a.no_clca) as usize,
        ifa_head: !a.no_clca,
        clc_include_gap: gap,
        num_classes: 200,
        ..TrainFlags::default()
    };
    let name = format!("{}{}", r.prefix(), a.backbone);
    let build = |gap: bool| -> clca::Result<Vit> {
        let cfg = VitConfig::from_model_name(&name, &flags(gap))?;
        let taps = cfg.plan()?.taps;
        let w = random_weights(&cfg, taps, a.seed);
        Vit::new(cfg, w)
    };
    match build(true) {
        Ok(m) => Ok((m, false)),
        Err(e @ clca::Error::Plan(_)) if !a.no_clca => match build(false) {
            Ok(m) => Ok((m, true)),
            Err(_) => Err(CliError::input(format!("{name} at kr {kr}: {e}"))),
        },
        Err(e) => Err(CliError::input(format!("{name} at kr {kr}: {e}"))
            .hint("keep rates must be in (0, 1]; see `clca bench --help`")),
    }
}

fn method(s: &str) -> CliResult<Reduction> {
    let all = [
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
    let key = s.trim().trim_end_matches('_').to_ascii_lowercase();
    all.into_iter()
        .find(|r| {
            let p = r.prefix().trim_end_matches('_');
            (p.is_empty() && (key == "vit" || key == "none")) || (!p.is_empty() && p == key)
        })
        .ok_or_else(|| {
            CliError::input(format!("unknown method `{s}`"))
                .hint("methods: vit, topk, evit, tome, dpcknn, sit, patchmerger, ats, dyvit")
        })
}

pub fn main(a: &BenchArgs) -> CliResult<()> {
    init_threads(a.threads)?;
    let methods: Vec<Reduction> = a
        .methods
        .iter()
        .map(|m| method(m))
        .collect::<CliResult<_>>()?;
    if a.runs == 0 {
        return Err(CliError::input("--runs must be at least 1"));
    }
    let mut t = Table::new(&[
        ("method", false),
        ("kr", true),
        ("batch", true),
        ("GMACs/img", true),
        ("vs unreduced", true),
        ("tokens after 1st/2nd/3rd reduction", false),
        ("median", true),
        ("min", true),
        ("img/s", true),
        ("backend", false),
    ]);
    let mut csv = String::from(
        "method,keep_rate,batch,gmacs_per_image,gap_carrier,median_s,min_s,max_s,images_per_s,backend\n",
    );
    // The unreduced reference of the MAC ratio: the same backbone, no reduction, no cache.
    let base = {
        let f = TrainFlags {
            input_size: Some(a.input_size),
            num_classes: 200,
            ..TrainFlags::default()
        };
        let cfg = VitConfig::from_model_name(&a.backbone, &f).ctx("--backbone")?;
        let plan = cfg.plan().ctx("planning the unreduced model")?;
        clca::vit::macs::macs(&cfg, &plan).backbone() as f64
    };
    for &r in &methods {
        let krs: Vec<f64> = if r == Reduction::None {
            vec![1.0]
        } else {
            a.keep_rates.clone()
        };
        for &kr in &krs {
            let (model, nogap) = point(a, r, kr)?;
            let macs = model.macs().backbone() as f64;
            let locs = model.cfg.locs();
            let lens: Vec<String> = locs
                .iter()
                .map(|&l| model.plan.blocks[l].len_out.to_string())
                .collect();
            let approx = if model.plan.data_dependent {
                " (≤)"
            } else {
                ""
            };
            for &batch in &a.batch {
                // ATS reads sample counts back to the host: it runs without a graph.
                let graph = a.cuda_graph && r != Reduction::Ats;
                let (tm, backend) =
                    with_engine_or_graph(graph, a.device, a.dtype, &model, batch, |e| {
                        // Drawn once the workspace (larger than the images) is allocated, so an
                        // impossible --batch is an error, not an abort.
                        let images = random_images(batch, 3, a.input_size, a.seed + 1);
                        e.stage(&images).ctx("staging the images")?;
                        let tm = time_runs(e, a.warmup, a.runs)?;
                        Ok((tm, e.describe()))
                    })?;
                let name = format!("{}{}", r.name(), if nogap { " (no GAP*)" } else { "" });
                t.row(vec![
                    name.clone(),
                    format!("{kr}"),
                    batch.to_string(),
                    format!("{:.2}", macs / 1e9),
                    format!("{:.0}%", 100.0 * macs / base),
                    format!("{}{approx}", lens.join("/")),
                    fmt_secs(tm.median()),
                    fmt_secs(tm.min()),
                    format!("{:.2}", batch as f64 / tm.median()),
                    backend.clone(),
                ]);
                let _ = writeln!(
                    csv,
                    "{},{kr},{batch},{:.4},{},{:.6},{:.6},{:.6},{:.4},\"{}\"",
                    r.name(),
                    macs / 1e9,
                    !nogap && !a.no_clca,
                    tm.median(),
                    tm.min(),
                    tm.max(),
                    batch as f64 / tm.median(),
                    backend
                );
            }
        }
    }
    println!(
        "clca bench: {} at {} px, {} (random weights, seed {}), {} timed run(s) after {} warm-up(s)",
        a.backbone,
        a.input_size,
        if a.no_clca { "no cache, linear head".to_string() } else { format!("CLCA (CLC + 1 clr + GAP + CLA), reduction at {:?}", a.reduction_loc) },
        a.seed,
        a.runs,
        a.warmup
    );
    println!("{}", t.render().join("\n"));
    println!(
        "  * the authors' code yields NaN here (a cls-only sequence meets the GAP carrier), so this point runs without it.\n  Unreduced {}: {:.2} GMACs/img. ATS lengths are upper bounds (≤): they depend on the data.",
        a.backbone,
        base / 1e9
    );
    if let Some(p) = &a.csv {
        std::fs::write(p, csv)
            .map_err(|e| CliError::input(format!("cannot write {}: {e}", p.display())))?;
        println!("  wrote {}", p.display());
    }
    Ok(())
}
