//! 04 — The same model on a device: the whole forward through the CUDA kernels (the host shim
//! runs them on the CPU; with `--features cuda` and a GPU, CUDA in f32/f16/bf16), against the
//! CPU forward. The device forward allocates once (`workspace`) and runs without host round
//! trips.
//!
//! `cargo run --release --example 04_device_forward`
use clca::vit::device::DeviceVit;
use clca::vit::random::{random_images, random_weights};
use clca::vit::{TrainFlags, Vit, VitConfig};
use clca::{Device, HostShim};

fn main() -> clca::Result<()> {
    let flags = TrainFlags {
        input_size: Some(64),
        reduction_loc: vec![1, 3],
        keep_rate: vec![0.5],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        num_classes: 10,
        ..TrainFlags::default()
    };
    let cfg = VitConfig::from_model_name("dyvit_deit_tiny_patch16_224", &flags)?;
    let model = Vit::new(cfg.clone(), random_weights(&cfg, cfg.plan()?.taps, 5))?;
    let b = 2;
    let images = random_images(b, 3, 64, 6);
    let cpu = model.forward_cpu(&images, b, None)?;

    let dev = HostShim;
    let dv = DeviceVit::<_, f32>::new(&dev, &model)?;
    let mut ws = dv.workspace(&dev, b)?;
    let img = dev.upload(&images)?;
    dv.forward(&dev, &mut ws, &img, None)?;
    let got = dv.logits(&dev, &ws)?;
    let m = cpu.iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = cpu
        .iter()
        .zip(&got)
        .map(|(a, g)| (a - g).abs())
        .fold(0f32, f32::max);
    println!(
        "{} on {}: max|Δ| / max|logit| = {:.1e} against the CPU forward",
        model.cfg.reduction.name(),
        dev.name(),
        err / m
    );
    if err > 1e-4 * m {
        return Err(clca::Error::Plan(
            "the device and CPU forwards disagree".into(),
        ));
    }
    Ok(())
}
