//! 03 — Every reduction method of the paper by its model-name prefix: lengths per reduction,
//! MACs, a forward, and the configurations the authors' code turns into NaN, refused.
//!
//! `cargo run --release --example 03_every_method`
use clca::vit::random::{random_images, random_weights};
use clca::vit::{TrainFlags, Vit, VitConfig};

fn flags(kr: f64) -> TrainFlags {
    TrainFlags {
        input_size: Some(224),
        keep_rate: vec![kr],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        num_classes: 10,
        ..TrainFlags::default()
    }
}

fn main() -> clca::Result<()> {
    let images = random_images(1, 3, 224, 3);
    for prefix in clca::vit::config::METHOD_PREFIXES
        .iter()
        .map(|r| r.prefix())
    {
        let cfg =
            VitConfig::from_model_name(&format!("{prefix}deit_tiny_patch16_224"), &flags(0.25))?;
        let plan = cfg.plan()?;
        let model = Vit::new(cfg.clone(), random_weights(&cfg, plan.taps, 7))?;
        let lens: Vec<usize> = [3, 6, 9].iter().map(|&l| plan.blocks[l].len_out).collect();
        let logits = model.forward_cpu(&images, 1, None)?;
        println!(
            "{:<12} kr 0.25: tokens after blocks 3/6/9 {:?}{}, {:.3} GMACs, logits finite: {}",
            cfg.reduction.name(),
            lens,
            if plan.data_dependent {
                " (upper bounds)"
            } else {
                ""
            },
            model.macs().backbone() as f64 / 1e9,
            logits.iter().all(|v| v.is_finite())
        );
    }
    // SiT at kr 0.1 with the GAP carrier: 0 slots at block 9, an empty GAP, NaN in the
    // authors' code; here a planning error that names the method, the block and the keep rate.
    let cfg = VitConfig::from_model_name("sit_deit_tiny_patch16_224", &flags(0.1))?;
    match cfg.plan() {
        Err(e) => println!("refused: {e}"),
        Ok(_) => return Err(clca::Error::Plan("expected a refusal".into())),
    }
    Ok(())
}
