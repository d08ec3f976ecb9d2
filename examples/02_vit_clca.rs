//! 02 — A whole ViT with EViT pruning, the cross-layer cache and the CLA head (the paper's
//! recipe) on the CPU: the plan (tokens per block), MACs against the unreduced model, and a
//! forward. Random weights; load a checkpoint with `Vit::load(cfg, path)` instead.
//!
//! `cargo run --release --example 02_vit_clca`
use clca::vit::random::{random_images, random_weights};
use clca::vit::{TrainFlags, Vit, VitConfig};

fn main() -> clca::Result<()> {
    // train.py's flags: --keep_rate 0.1 --reduction_loc 3 6 9 --clc --num_clr 1 --ifa_head
    // (GAP carrier and recover-at-last are on: train.py's store_false defaults).
    let flags = TrainFlags {
        input_size: Some(224),
        keep_rate: vec![0.1],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        num_classes: 200,
        ..TrainFlags::default()
    };
    let cfg = VitConfig::from_model_name("evit_deit_tiny_patch16_224", &flags)?;
    let plan = cfg.plan()?;
    let model = Vit::new(cfg.clone(), random_weights(&cfg, plan.taps, 0))?;
    println!("block  in → out (+recovered)");
    for (i, b) in model.plan.blocks.iter().enumerate() {
        println!(
            "{i:>5}  {:>3} → {:>3} (+{})",
            b.len_in, b.len_out, b.recovered
        );
    }
    let base = VitConfig::from_model_name(
        "deit_tiny_patch16_224",
        &TrainFlags {
            input_size: Some(224),
            num_classes: 200,
            ..TrainFlags::default()
        },
    )?;
    let base_macs = clca::vit::macs::macs(&base, &base.plan()?).backbone();
    let macs = model.macs().backbone();
    println!(
        "MACs: {:.3} G vs {:.3} G unreduced ({:.0}%)",
        macs as f64 / 1e9,
        base_macs as f64 / 1e9,
        100.0 * macs as f64 / base_macs as f64
    );
    let images = random_images(2, 3, 224, 1);
    let t = std::time::Instant::now();
    let logits = model.forward_cpu(&images, 2, None)?;
    println!(
        "forward of 2 images on the CPU: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for (i, row) in logits.chunks(model.cfg.num_classes).enumerate() {
        let best = row
            .iter()
            .enumerate()
            .fold(0, |bi, (j, v)| if *v > row[bi] { j } else { bi });
        println!("image {i}: class {best} (logit {:.3})", row[best]);
    }
    Ok(())
}
