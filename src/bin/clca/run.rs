//! `clca` / `clca run`: the paper's configuration — EViT + CLCA on ViT-B/16 CLIP at 448 px —
//! built from seeded random weights (or `--weights`), with its tokens and MACs per block against
//! the unreduced model, the latency of the CPU forward, and the GPU forward when there is one.
use crate::backend::{init_threads, time_runs, top_k, CpuEngine, Engine, Timing};
use crate::classify::infer_num_classes;
use crate::error::{CliError, CliResult, Context};
use crate::table::{fmt_secs, fmt_time, gmacs, section, shape, Table};
use crate::RunArgs;
use clca::vit::macs::{macs, MacReport};
use clca::vit::random::{random_images, random_weights};
use clca::vit::{TensorMap, TrainFlags, Vit, VitConfig};
use std::time::Instant;

/// The README's model: EViT on the CLIP ViT-B/16.
pub const MODEL: &str = "evit_vit_base_patch16_clip_224.laion2b";
/// The same backbone without token reduction (the paper's "No TR" baseline).
pub const BASELINE: &str = "vit_base_patch16_clip_224.laion2b";
/// The input size of the paper's UFGIR runs.
pub const INPUT_SIZE: usize = 448;
/// Classes when the weights are random (SoyLocal has 200 cultivars).
pub const RANDOM_CLASSES: usize = 200;

/// The README's `train.py` flags: `--input-size 448 --reduction_loc 3 6 9 --keep_rate 0.1
/// --clc --num_clr 1 --ifa_head` (GAP and recover-at-last on: train.py's store_false defaults).
pub fn paper_flags(num_classes: usize) -> TrainFlags {
    TrainFlags {
        input_size: Some(INPUT_SIZE),
        reduction_loc: vec![3, 6, 9],
        keep_rate: vec![0.1],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        num_classes,
        ..TrainFlags::default()
    }
}

/// The unreduced model at the same size and classes: no reduction, no cache, no clr, linear
/// head — the 78.49 GMACs of the paper's ViT-B/16 at 448 px.
pub fn baseline_config(num_classes: usize) -> clca::Result<VitConfig> {
    VitConfig::from_model_name(
        BASELINE,
        &TrainFlags {
            input_size: Some(INPUT_SIZE),
            keep_rate: vec![1.0],
            num_classes,
            ..TrainFlags::default()
        },
    )
}

/// The model with real or random weights; returns (model, where the weights came from).
fn build_model(a: &RunArgs) -> CliResult<(Vit, String)> {
    let (map, source, classes) = match &a.weights {
        Some(p) => {
            let map = TensorMap::load(p).ctx("reading the weights").hint(
                "--weights takes a safetensors file in the authors' parameter names (SPEC §1.3)",
            )?;
            let k = infer_num_classes(&map, true)
                .or_else(|_| infer_num_classes(&map, false))
                .map_err(|e| {
                    e.hint("`clca run` is the EViT+CLCA ViT-B/16 CLIP 448 configuration; use `clca classify` for other checkpoints")
                })?;
            (map, p.display().to_string(), k)
        }
        None => {
            let cfg = VitConfig::from_model_name(MODEL, &paper_flags(RANDOM_CLASSES))?;
            let taps = cfg.plan()?.taps;
            (
                random_weights(&cfg, taps, a.seed),
                format!("random (seed {}, the golden files' init rules)", a.seed),
                RANDOM_CLASSES,
            )
        }
    };
    let cfg = VitConfig::from_model_name(MODEL, &paper_flags(classes))?;
    let model = Vit::new(cfg, map)
        .ctx("loading the weights")
        .hint(format!(
            "`clca run` needs weights of {MODEL} trained with --input-size 448 --reduction_loc 3 6 9 --clc --num_clr 1 --ifa_head; use `clca classify` with the flags of another checkpoint"
        ))?;
    Ok((model, source))
}

/// Per block: tokens in / kept / out / recovered / after, CLS tap, MACs.
fn print_blocks(model: &Vit, m: &MacReport, base: &MacReport) {
    let mut t = Table::new(&[
        ("block", true),
        ("tokens in", true),
        ("kept", true),
        ("out", true),
        ("recovered", true),
        ("after", true),
        ("CLS tap", false),
        ("GMACs", true),
        ("unreduced", true),
    ]);
    t.row(vec![
        "patch embed".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        gmacs(m.patch, 3),
        gmacs(base.patch, 3),
    ]);
    for (i, b) in model.plan.blocks.iter().enumerate() {
        t.row(vec![
            i.to_string(),
            b.len_in.to_string(),
            b.keep.map_or("-".into(), |k| k.to_string()),
            b.len_out.to_string(),
            if b.recovered > 0 {
                format!("+{}", b.recovered)
            } else {
                "-".into()
            },
            b.len_after.to_string(),
            if b.cls_tap {
                "yes".into()
            } else {
                String::new()
            },
            gmacs(m.blocks.get(i).copied().unwrap_or(0), 3),
            gmacs(base.blocks.get(i).copied().unwrap_or(0), 3),
        ]);
    }
    t.row(vec![
        "head".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        gmacs(m.head, 3),
        gmacs(base.head, 3),
    ]);
    t.rule();
    t.row(vec![
        "total".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        gmacs(m.total(), 2),
        gmacs(base.total(), 2),
    ]);
    t.print();
    println!(
        "  kept = tokens EViT keeps by CLS attention (out = cls + kept + 1 fused); recovered = cached carriers appended after the block"
    );
}

/// A latency row: backend, median, min, max, runs, images/s, note.
fn latency_row(t: &mut Table, what: String, tm: &Timing, batch: usize, note: String) {
    t.row(vec![
        what,
        fmt_secs(tm.median()),
        fmt_secs(tm.min()),
        fmt_secs(tm.max()),
        tm.samples.len().to_string(),
        format!("{:.2}", batch as f64 / tm.median()),
        note,
    ]);
}

/// max|a − b| / max|b| and whether the top-1 of every image agrees.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn agreement(got: &[f32], want: &[f32], batch: usize) -> String {
    let m = want
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let d = got
        .iter()
        .zip(want)
        .fold(0f32, |acc, (a, b)| acc.max((a - b).abs()));
    let k = want.len() / batch.max(1);
    let same = (0..batch).all(|i| {
        let r = i * k..(i + 1) * k;
        top_k(&got[r.clone()], 1) == top_k(&want[r], 1)
    });
    format!(
        "vs CPU: max|Δ|/max|logit| {:.1e}, top-1 {}",
        d / m,
        if same { "same" } else { "DIFFERS" }
    )
}

pub fn main(a: &RunArgs) -> CliResult<()> {
    let t_all = Instant::now();
    let threads = init_threads(a.threads)?;
    if a.runs == 0 {
        return Err(CliError::input("--runs 0: need at least one timed run"));
    }
    let t = Instant::now();
    let (model, source) = build_model(a)?;
    let t_weights = t.elapsed();
    let c = &model.cfg;
    let k = c.num_classes;
    let base_cfg = baseline_config(k)?;
    let base_plan = base_cfg.plan()?;
    let m = model.macs();
    let base = macs(&base_cfg, &base_plan);

    println!(
        "clca: EViT + CLCA on ViT-B/16 CLIP at {} px (the paper's configuration)",
        c.img_size
    );
    println!(
        "  model    {MODEL} with train.py flags --input-size {} --reduction_loc 3 6 9 --keep_rate 0.1 --clc --num_clr 1 --ifa_head",
        c.img_size
    );
    println!(
        "           (GAP carriers and recover-at-last on: train.py's store_false defaults; CLA head with ifa_dws_conv_groups 2)"
    );
    println!(
        "  weights  {source}; {k} classes; ready in {}",
        fmt_time(t_weights)
    );
    let batch = a.batch;
    let images = random_images(batch, c.in_chans, c.img_size, a.seed ^ 0x1a6e);
    println!(
        "  input    {batch} random N(0,1) image{} {} (seed {})",
        if batch == 1 { "" } else { "s" },
        shape(&[batch, c.in_chans, c.img_size, c.img_size]),
        a.seed
    );

    section("Tokens and MACs per block (one image)");
    print_blocks(&model, &m, &base);
    println!(
        "  {} GMACs vs {} GMACs unreduced ({:.1}%)",
        gmacs(m.total(), 2),
        gmacs(base.total(), 2),
        100.0 * m.total() as f64 / base.total() as f64
    );
    println!(
        "  unreduced = {BASELINE} at {} px: no reduction, no cache, linear head (the paper's \"No TR\")",
        c.img_size
    );

    section(&format!(
        "Latency, batch {batch}: forward only (weights loaded, buffers allocated and the images staged before timing); 1 warm-up, then {} run{}",
        a.runs,
        if a.runs == 1 { "" } else { "s" }
    ));
    let mut lat = Table::new(&[
        ("backend", false),
        ("median", true),
        ("min", true),
        ("max", true),
        ("runs", true),
        ("img/s", true),
        ("note", false),
    ]);
    let mut cpu = CpuEngine::new(&model, batch).ctx("allocating the CPU workspace")?;
    cpu.stage(&images).ctx("staging the images")?;
    let tm = time_runs(&mut cpu, 1, a.runs)?;
    let logits = cpu.logits().ctx("reading the logits")?;
    latency_row(
        &mut lat,
        cpu.describe(),
        &tm,
        batch,
        format!(
            "{:.1} GMAC/s",
            m.total() as f64 * batch as f64 / tm.median() / 1e9
        ),
    );
    drop(cpu);
    if a.baseline {
        let taps = base_plan.taps;
        let bm = Vit::new(
            base_cfg.clone(),
            random_weights(&base_cfg, taps, a.seed ^ 0xba5e),
        )
        .ctx("building the unreduced model")?;
        let mut e = CpuEngine::new(&bm, batch).ctx("allocating the CPU workspace")?;
        e.stage(&images).ctx("staging the images")?;
        let bt = time_runs(&mut e, 1, a.runs)?;
        latency_row(
            &mut lat,
            format!("unreduced ViT-B/16, {}", e.describe()),
            &bt,
            batch,
            format!("EViT+CLCA is {:.2}x faster", bt.median() / tm.median()),
        );
    }
    let cuda_note = cuda_rows(a, &model, &images, &logits, &mut lat)?;
    lat.print();
    if !a.baseline {
        println!("  (--baseline also times the unreduced model on the CPU)");
    }
    println!("  {cuda_note}");

    section("Top-5 classes per image");
    let random = a.weights.is_none();
    for i in 0..batch {
        let row = &logits[i * k..(i + 1) * k];
        let top: Vec<String> = top_k(row, 5)
            .into_iter()
            .map(|ci| format!("{ci} ({:.3})", row[ci]))
            .collect();
        println!("  image {i}: {}", top.join(", "));
    }
    if random {
        println!(
            "  class (logit) from the CPU forward; the weights are random, so the classes mean nothing: they show the whole pipeline runs"
        );
    } else {
        println!("  class (logit) from the CPU forward with {source}");
    }
    println!();
    println!(
        "done in {} ({threads} rayon threads)",
        fmt_time(t_all.elapsed())
    );
    Ok(())
}

/// The GPU rows of the latency table (one per `--dtype`), or why there are none.
#[cfg(feature = "cuda")]
fn cuda_rows(
    a: &RunArgs,
    model: &Vit,
    images: &[f32],
    cpu_logits: &[f32],
    lat: &mut Table,
) -> CliResult<String> {
    use clca::Device;
    let dev = match clca::cuda::try_default() {
        Ok(d) => d,
        Err(why) => return Ok(format!("CUDA: skipped ({why})")),
    };
    let label = format!("CUDA on {}", dev.name());
    for &dt in &a.dtype {
        let mut e = crate::backend::device_engine(&dev, &label, model, a.batch, dt)
            .ctx("uploading the model to the GPU")?;
        e.stage(images).ctx("staging the images")?;
        let tm = time_runs(e.as_mut(), 1, a.runs)?;
        let l = e.logits().ctx("reading the GPU logits")?;
        let describe = e.describe();
        latency_row(
            lat,
            describe,
            &tm,
            a.batch,
            agreement(&l, cpu_logits, a.batch),
        );
    }
    Ok("GPU times exclude the host→device copy of the images".into())
}

#[cfg(not(feature = "cuda"))]
fn cuda_rows(_: &RunArgs, _: &Vit, _: &[f32], _: &[f32], _: &mut Table) -> CliResult<String> {
    Ok("CUDA: skipped (built without the `cuda` feature; on a machine with an NVIDIA GPU run `cargo run --release --features cuda`)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SPEC §6 numbers: 25.17 G for EViT+CLCA, 78.49 G unreduced.
    #[test]
    fn paper_macs() {
        let cfg = VitConfig::from_model_name(MODEL, &paper_flags(200)).map_err(|e| e.to_string());
        let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
        let plan = cfg.plan().unwrap_or_else(|e| panic!("{e}"));
        let m = macs(&cfg, &plan);
        let b = baseline_config(200).unwrap_or_else(|e| panic!("{e}"));
        let bp = b.plan().unwrap_or_else(|e| panic!("{e}"));
        let base = macs(&b, &bp);
        assert_eq!(gmacs(m.total(), 2), "25.17");
        assert_eq!(gmacs(base.total(), 2), "78.49");
        assert!(agreement(&[1.0, 2.0], &[1.0, 2.0], 1).contains("top-1 same"));
    }
}
