//! `clca random-weights`: a seeded checkpoint for any `train.py` flags
//! (`clca::vit::random::random_weights`), written as safetensors.
use crate::error::{CliError, CliResult, Context};
use crate::RandomWeightsArgs;
use clca::vit::random::random_weights;
use clca::vit::{HeadKind, VitConfig};

/// `clca random-weights`: writes [`random_weights`] of the flags' model to safetensors.
pub fn main(a: &RandomWeightsArgs) -> CliResult<()> {
    let mut f = a.flags.train_flags(a.num_classes);
    f.input_size = Some(f.input_size.unwrap_or(448));
    let cfg = VitConfig::from_model_name(&a.flags.model, &f).ctx("building the model")?;
    let taps = cfg.plan().ctx("planning the model")?.taps;
    if matches!(cfg.head, HeadKind::Cla { .. }) && taps == 0 {
        return Err(CliError::input("the CLA head needs at least one CLS tap"));
    }
    let map = random_weights(&cfg, taps, a.seed);
    let n: usize = map.tensors.values().map(|(_, v)| v.len()).sum();
    let count = map.tensors.len();
    map.save(&a.output)
        .ctx(format!("writing {}", a.output.display()))
        .hint("check that the output's directory exists and is writable")?;
    println!(
        "wrote {}: {} tensors, {n} parameters of {} at {} px ({} classes, seed {})",
        a.output.display(),
        count,
        cfg.name,
        cfg.img_size,
        cfg.num_classes,
        a.seed
    );
    Ok(())
}
