//! The PIL-exact bicubic resize against Pillow itself (when Pillow is importable: the test
//! command installs the pinned wheel into .toolchain/py; otherwise the test says why and passes).
mod common;
use clca::vit::preprocess::{preprocess_rgb8, resize_bicubic_rgb8};
use common::TRng;
use std::io::Write;
use std::process::{Command, Stdio};

fn pillow_resize(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Option<Vec<u8>> {
    let py = format!(
        "import sys; from PIL import Image; d = sys.stdin.buffer.read(); im = Image.frombytes('RGB', ({w}, {h}), d); sys.stdout.buffer.write(im.resize(({ow}, {oh}), Image.BICUBIC).tobytes())"
    );
    let pp = concat!(env!("CARGO_MANIFEST_DIR"), "/.toolchain/py");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(py)
        .env("PYTHONPATH", pp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(src).ok()?;
    let out = child.wait_with_output().ok()?;
    out.status.success().then_some(out.stdout)
}

#[test]
fn resize_matches_pillow_byte_for_byte() {
    let mut rng = TRng(5);
    let mut checked = 0;
    for &(w, h, ow, oh) in &[
        (640usize, 480usize, 512usize, 512usize),
        (300, 200, 256, 256),
        (97, 131, 512, 512),
        (512, 512, 512, 512),
        (1000, 37, 73, 73),
        (64, 64, 73, 73),
    ] {
        // A smooth image with noise, so both the filter and the clipping are exercised.
        let src: Vec<u8> = (0..w * h * 3)
            .map(|i| {
                let (x, y) = ((i / 3) % w, (i / 3) / w);
                ((x * 255 / w + y * 97 / h) as f64 + 40.0 * rng.normal()).clamp(0.0, 255.0) as u8
            })
            .collect();
        let ours = resize_bicubic_rgb8(&src, w, h, ow, oh).expect("resize");
        assert_eq!(ours.len(), ow * oh * 3);
        let Some(theirs) = pillow_resize(&src, w, h, ow, oh) else {
            eprintln!("skipping the Pillow comparison: python3 with Pillow not available (bash scripts/toolchain.sh installs it)");
            return;
        };
        let diff = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(
            diff, 0,
            "{w}x{h} -> {ow}x{oh}: {diff} bytes differ from Pillow"
        );
        checked += 1;
    }
    eprintln!("{checked} resizes identical to Pillow");
}

#[test]
fn crop_and_normalize() {
    let (w, h) = (512usize, 512usize);
    let src: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
    let t = preprocess_rgb8(&src, w, h, 448).expect("preprocess");
    assert_eq!(t.len(), 3 * 448 * 448);
    // No resize (512 = int(448 / 0.875)); crop offset 32; channel 1 of pixel (0, 0).
    let v = src[((32 * w) + 32) * 3 + 1] as f32 / 255.0;
    assert!((t[448 * 448] - (v - 0.456) / 0.224).abs() < 1e-6);
    assert!(
        preprocess_rgb8(&src, w, h + 1, 448).is_err(),
        "wrong buffer size"
    );
    assert!(preprocess_rgb8(&src, w, h, 0).is_err(), "size 0");
    let e = clca::vit::preprocess::load_image(std::path::Path::new("/nonexistent.png"), 448)
        .expect_err("missing file");
    assert!(e.to_string().contains("nonexistent"), "{e}");
}
