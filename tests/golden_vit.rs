//! The whole forward against the authors' logits and per-block tensors (../shared/golden):
//! every case whose method this release runs (plain ViT, Top-K, EViT).
mod common;
use clca::vit::{Trace, TraceData, Vit, VitConfig};
use common::golden::{cases, Case};

fn check_case(c: &Case, dir: &std::path::Path) -> Option<f64> {
    let cfg = match VitConfig::from_golden_json(&c.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{}: not run by this release: {e}", c.name);
            return None;
        }
    };
    let model = Vit::load(cfg, &dir.join("weights.safetensors")).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let input = std::fs::read(dir.join("input.safetensors")).expect("input");
    let (shape, images) = common::golden::tensor(&input, "images").expect("images");
    let images: Vec<f32> = images.iter().map(|&v| v as f32).collect();
    let mut trace = Trace::default();
    let logits = model.forward_cpu(&images, shape[0], Some(&mut trace)).unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let mut worst = 0f64;
    let mut compared = 0;
    for (name, s, data) in &trace.tensors {
        let Some((ws, want)) = c.output(name) else { continue };
        assert_eq!(&ws, s, "{}: shape of {name}", c.name);
        match data {
            TraceData::I64(v) => {
                let got: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                assert_eq!(got, want, "{}: {name} (selections must be identical)", c.name);
            }
            TraceData::F32(v) => {
                let max_ref = want.iter().fold(0f64, |m, x| m.max(x.abs()));
                let err = v.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
                assert!(err <= 1e-4 * max_ref, "{}: {name} max|Δ| {err:e} > 1e-4·{max_ref}", c.name);
                if name == "logits" {
                    worst = worst.max(err / max_ref);
                }
            }
        }
        compared += 1;
    }
    assert!(trace.get("logits").is_some() && logits.len() == shape[0] * model.cfg.num_classes);
    eprintln!("{}: {compared} tensors match; logits max|Δ|/max|ref| = {worst:.2e}", c.name);
    Some(worst)
}

#[test]
fn forward_matches_the_authors() {
    let mut ran = 0;
    for dir in cases() {
        let c = Case::load(&dir);
        if check_case(&c, &dir).is_some() {
            ran += 1;
        }
    }
    if common::golden::dir().is_some() {
        assert!(ran >= 4, "expected the ViT, Top-K and EViT golden cases to run, ran {ran}");
    }
}
