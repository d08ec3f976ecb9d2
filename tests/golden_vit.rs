#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! The whole forward against the authors' logits and per-block tensors (../shared/golden):
//! every case, on the CPU forward and on the device forward (host shim always, GPU when
//! present).
mod common;
use clca::vit::{Trace, TraceData, Vit, VitConfig};
use common::golden::{cases, Case};

fn check_case(c: &Case, dir: &std::path::Path) -> Option<f64> {
    check_case_with(c, dir, |_| {})
}

fn check_case_with(c: &Case, dir: &std::path::Path, tweak: impl Fn(&mut VitConfig)) -> Option<f64> {
    let mut cfg = match VitConfig::from_golden_json(&c.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{}: not run by this release: {e}", c.name);
            return None;
        }
    };
    tweak(&mut cfg);
    let model = Vit::load(cfg, &dir.join("weights.safetensors"))
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let input = std::fs::read(dir.join("input.safetensors")).expect("input");
    let (shape, images) = common::golden::tensor(&input, "images").expect("images");
    let images: Vec<f32> = images.iter().map(|&v| v as f32).collect();
    let mut trace = Trace::default();
    let logits = model
        .forward_cpu(&images, shape[0], Some(&mut trace))
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let mut worst = 0f64;
    let mut compared = 0;
    for (name, s, data) in &trace.tensors {
        let Some((ws, want)) = c.output(name) else {
            continue;
        };
        assert_eq!(&ws, s, "{}: shape of {name}", c.name);
        match data {
            TraceData::I64(v) => {
                let got: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                assert_eq!(
                    got, want,
                    "{}: {name} (selections must be identical)",
                    c.name
                );
            }
            TraceData::F32(v) => {
                let max_ref = want.iter().fold(0f64, |m, x| m.max(x.abs()));
                let err = v
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (*a as f64 - b).abs())
                    .fold(0f64, f64::max);
                assert!(
                    err <= 1e-4 * max_ref,
                    "{}: {name} max|Δ| {err:e} > 1e-4·{max_ref}",
                    c.name
                );
                if name == "logits" {
                    worst = worst.max(err / max_ref);
                }
            }
        }
        compared += 1;
    }
    assert!(trace.get("logits").is_some() && logits.len() == shape[0] * model.cfg.num_classes);
    // Every golden tensor must have been compared, except the authors' bookkeeping for
    // visualization (ToMe's source map, DPC-KNN's token map and weights) and ATS's padding
    // mask (all ones in these cases; the padded lengths are checked through sample_ids).
    let skipped = ["cluster_idx.", "dpc_idx_token.", "dpc_agg_weight.", "mask."];
    for name in c.config["outputs"].as_object().expect("outputs").keys() {
        if skipped.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        assert!(
            trace.get(name).is_some(),
            "{}: the forward did not produce {name}",
            c.name
        );
    }
    eprintln!(
        "{}: {compared} tensors match; logits max|Δ|/max|ref| = {worst:.2e}",
        c.name
    );
    Some(worst)
}

#[test]
fn forward_matches_the_authors() {
    let mut ran = 0;
    let all = cases();
    for dir in &all {
        let c = Case::load(dir);
        if check_case(&c, dir).is_some() {
            ran += 1;
        }
        // ATS with the authors' batch padding gives the same numbers when no sample needs
        // padding (the golden cases' masks are all ones).
        if c.model_class() == "models.ats.ATSViT" {
            check_case_with(&c, dir, |cfg| cfg.method.ats_batch_padding = true);
        }
    }
    // Every case of the format runs on the CPU: all nine methods are implemented.
    assert_eq!(
        ran,
        all.len(),
        "every golden case must run on the CPU forward"
    );
}

/// A golden case this release runs: the case, its model, batch and images (f32).
fn load_case(dir: &std::path::Path) -> Option<(Case, Vit, usize, Vec<f32>)> {
    let c = Case::load(dir);
    let cfg = VitConfig::from_golden_json(&c.config).ok()?;
    let model = Vit::load(cfg, &dir.join("weights.safetensors")).expect("model");
    let input = std::fs::read(dir.join("input.safetensors")).expect("input");
    let (shape, images) = common::golden::tensor(&input, "images").expect("images");
    Some((
        c,
        model,
        shape[0],
        images.iter().map(|&v| v as f32).collect(),
    ))
}

/// The device forward (host shim always, GPU when present): f32 within the same bound; f16 and
/// bf16 with the same top-1 and selections as f32 (bf16: most of them) and a relative logit
/// error ≤ 2e-2 (bf16 ToMe: 5e-2, see below).
fn device_case<D: clca::Device>(dev: &D) {
    use clca::vit::device::DeviceVit;
    let mut ran = 0;
    for dir in cases() {
        let Some((c, model, b, images)) = load_case(&dir) else {
            continue;
        };
        let img = dev.upload(&images).expect("upload");
        let (_, want) = c.output("logits").expect("logits");
        let max_ref = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        // f32, with the per-block tensors.
        let dv = DeviceVit::<D, f32>::new(dev, &model).expect("upload model");
        let mut ws = dv.workspace(dev, b).expect("workspace");
        let mut trace = Trace::default();
        dv.forward(dev, &mut ws, &img, Some(&mut trace))
            .expect("forward");
        for (name, _, data) in &trace.tensors {
            let Some((_, w)) = c.output(name) else {
                continue;
            };
            match data {
                TraceData::I64(v) => assert_eq!(
                    v.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                    w,
                    "{}: {name} on {}",
                    c.name,
                    dev.name()
                ),
                TraceData::F32(v) => {
                    let m = w.iter().fold(0f64, |m, x| m.max(x.abs()));
                    let err = v
                        .iter()
                        .zip(&w)
                        .map(|(a, b)| (*a as f64 - b).abs())
                        .fold(0f64, f64::max);
                    assert!(
                        err <= 1e-4 * m,
                        "{}: {name} max|Δ| {err:e} > 1e-4·{m} on {}",
                        c.name,
                        dev.name()
                    );
                }
            }
        }
        let f32_logits = dv.logits(dev, &ws).expect("logits");
        let f32_err = f32_logits
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0f64, f64::max)
            / max_ref;
        eprintln!(
            "{}: f32 relative logit error {f32_err:.2e} on {}",
            c.name,
            dev.name()
        );
        let top1 = |l: &[f32]| -> Vec<usize> {
            l.chunks(l.len() / b)
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .fold(0, |bi, (i, v)| if *v > r[bi] { i } else { bi })
                })
                .collect()
        };
        fn reduced<D: clca::Device, T: clca::Element>(
            dev: &D,
            model: &Vit,
            img: &D::Buf<f32>,
            b: usize,
        ) -> (Vec<f32>, Trace) {
            let dv = DeviceVit::<D, T>::new(dev, model).expect("upload model");
            let mut ws = dv.workspace(dev, b).expect("workspace");
            let mut t = Trace::default();
            dv.forward(dev, &mut ws, img, Some(&mut t))
                .expect("forward");
            (dv.logits(dev, &ws).expect("logits"), t)
        }
        for (name, (l, t)) in [
            ("f16", reduced::<D, clca::f16>(dev, &model, &img, b)),
            ("bf16", reduced::<D, clca::bf16>(dev, &model, &img, b)),
        ] {
            assert_eq!(top1(&l), top1(&f32_logits), "{}: {name} top-1", c.name);
            // Selections: identical to f32, or (at a near-tie the storage type cannot resolve)
            // agreeing on most tokens. bf16 keeps 8 mantissa bits: scores ~1/n differ by ~4e-3
            // relative, more than the k-boundary gaps of these cases (down to 3e-5); f16 keeps
            // 11 and flips only at tighter ties (case O: DynamicViT's 16th and 17th tokens at
            // block 1 differ by 7.6e-5 in log-probability, 1e-4 relative).
            let mut identical = true;
            for (tn, _, data) in &t.tensors {
                if let (TraceData::I64(v), Some((_, TraceData::I64(v32)))) = (data, trace.get(tn)) {
                    if v == v32 {
                        continue;
                    }
                    identical = false;
                    let same = if tn.starts_with("cluster_idx") || tn.starts_with("dpc_idx_cluster")
                    {
                        // A merge map, position by position.
                        v.iter().zip(v32).filter(|(a, b)| a == b).count() as f64 / v32.len() as f64
                    } else {
                        let a: std::collections::BTreeSet<_> = v.iter().collect();
                        v32.iter().filter(|x| a.contains(x)).count() as f64 / v32.len() as f64
                    };
                    assert!(
                        same >= 0.8,
                        "{}: {name} selection {tn} agrees on {same:.2}",
                        c.name
                    );
                    eprintln!(
                        "{}: {name} {tn} agrees with f32 on {:.0}% of the tokens",
                        c.name,
                        same * 100.0
                    );
                }
            }
            let err = l
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0f64, f64::max)
                / max_ref;
            // bf16 ToMe: a near-tie similarity sends a token to another destination (case D: 1 of
            // 130 tokens at block 1, 3 of 68 at block 3), and unlike a pruned token it stays in the
            // sequence to the end: 2.6e-2 measured, while the error before the first merge is
            // EViT's (4.9e-3 at block_out.0). Every other case and dtype: 2e-2.
            // With identical selections the storage type's rounding bounds the logits (2e-2);
            // bf16 ToMe: a near-tie similarity sends a token to another destination (case D: 1
            // of 130 tokens at block 1, 3 of 68 at block 3), and unlike a pruned token it stays
            // in the sequence to the end: 2.6e-2 measured. A flipped pruning selection changes
            // which tokens exist, so only the top-1 and the agreement above are required then.
            let bound = if name == "bf16" && model.cfg.reduction == clca::plan::Reduction::ToMe {
                5e-2
            } else if identical {
                2e-2
            } else {
                f64::INFINITY
            };
            assert!(
                err <= bound,
                "{}: {name} relative logit error {err:e} > {bound:e}",
                c.name
            );
            eprintln!(
                "{}: {name} relative logit error {err:.2e} on {}",
                c.name,
                dev.name()
            );
        }
        eprintln!("{}: device forward matches on {}", c.name, dev.name());
        ran += 1;
    }
    // Every case runs on the device forward.
    let expected = cases()
        .iter()
        .filter(|d| VitConfig::from_golden_json(&Case::load(d).config).is_ok())
        .count();
    assert_eq!(ran, expected, "golden cases run on {}", dev.name());
}

#[test]
fn device_forward_matches_the_authors() {
    on_devices!(device_case);
}

/// With the `cuda` feature and a GPU: the forward captured as a CUDA graph and replayed gives
/// the eager forward's logits for every golden case (f32 and bf16), reads the image buffer
/// afresh at each replay, carries no state from one replay to the next, and leaves the device
/// as it found it. ATS (host read-backs) is refused; a capture that fails leaves no stream
/// capturing.
#[cfg(feature = "cuda")]
#[test]
fn cuda_graph_replays_the_forward() {
    let Some(g) = common::gpu() else {
        assert!(
            std::env::var_os("CLCA_REQUIRE_GPU").is_none(),
            "CLCA_REQUIRE_GPU is set but there is no GPU: {}",
            common::gpu_reason()
        );
        eprintln!("skipping the CUDA graph test: {}", common::gpu_reason());
        return;
    };
    graph_errors(g);
    let mut ran = 0;
    for dir in cases() {
        let Some((c, model, b, images)) = load_case(&dir) else {
            continue;
        };
        graph_case::<f32>(g, &c.name, &model, b, &images);
        graph_case::<clca::bf16>(g, &c.name, &model, b, &images);
        ran += 1;
    }
    assert!(
        ran > 0 || common::golden::dir().is_none(),
        "no golden case ran"
    );
}

#[cfg(feature = "cuda")]
fn graph_errors(g: &clca::cuda::CudaDevice) {
    use clca::Device;
    // Inside with_stream: refused.
    // SAFETY: the null stream is the legacy default stream, always live.
    let r = unsafe { g.with_stream(std::ptr::null_mut(), || g.capture(|| Ok(()))) };
    assert!(
        matches!(r, Err(clca::Error::InvalidArgument { arg: "stream", .. })),
        "capture inside with_stream"
    );
    // The closure's error comes back, and the device still runs work afterwards.
    let r = g.capture(|| Err(clca::Error::Plan("on purpose".into())));
    assert!(
        matches!(&r, Err(clca::Error::Plan(m)) if m == "on purpose"),
        "the closure's error"
    );
    // A host read-back inside the capture fails it (an error, not a hang or a crash).
    let buf = g.upload(&[1f32, 2.0, 3.0]).expect("upload");
    let r = g.capture(|| g.download(&buf).map(|_| ()));
    assert!(r.is_err(), "a read-back inside a capture");
    eprintln!(
        "read-back inside a capture: {}",
        r.err().map(|e| e.to_string()).unwrap_or_default()
    );
    let mut out = g.zeros::<f32>(3).expect("zeros");
    g.copy(&buf, &mut out)
        .expect("copy after the failed captures");
    assert_eq!(g.download(&out).expect("download"), vec![1.0, 2.0, 3.0]);
}

#[cfg(feature = "cuda")]
fn graph_case<T: clca::Element>(
    g: &clca::cuda::CudaDevice,
    name: &str,
    model: &Vit,
    b: usize,
    images: &[f32],
) {
    use clca::vit::device::DeviceVit;
    use clca::{Buffer, Device};
    let dv = DeviceVit::<clca::cuda::CudaDevice, T>::new(g, model).expect("upload model");
    let eager = |img: &[f32]| -> Vec<f32> {
        let mut ws = dv.workspace(g, b).expect("workspace");
        let d = g.upload(img).expect("upload");
        dv.forward(g, &mut ws, &d, None).expect("forward");
        dv.logits(g, &ws).expect("logits")
    };
    // A second input: the same images mirrored left to right.
    let s = model.cfg.img_size;
    let mirrored: Vec<f32> = (0..images.len())
        .map(|i| {
            let (row, col) = (i / s, i % s);
            images[row * s + (s - 1 - col)]
        })
        .collect();
    let want = eager(images);
    let want2 = eager(&mirrored);
    let classes = model.cfg.num_classes;
    let mut img = g.upload(images).expect("upload");
    let mut logits = g.zeros::<T>(b * classes).expect("zeros");
    let bytes = dv.workspace_bytes(b).expect("bytes");
    let mut ws = g.zeros::<u8>(bytes).expect("zeros");
    if model.cfg.reduction == clca::plan::Reduction::Ats {
        // SAFETY: buffers of this device, sized above.
        let r = unsafe {
            dv.capture_forward(g, b, img.addr(), logits.addr_mut(), ws.addr_mut(), bytes)
        };
        assert!(
            matches!(r, Err(clca::Error::Unsupported { .. })),
            "{name}: ATS must be refused"
        );
        return;
    }
    // SAFETY: as above; the buffers outlive the graph (dropped at the end of this function,
    // after a synchronize).
    let graph = unsafe {
        dv.capture_forward(g, b, img.addr(), logits.addr_mut(), ws.addr_mut(), bytes)
            .unwrap_or_else(|e| panic!("{name} {}: capture: {e}", T::DTYPE))
    };
    let replay = |img_buf: &mut clca::cuda::CudaBuf<f32>, data: &[f32]| -> Vec<f32> {
        g.write(img_buf, data).expect("write");
        // SAFETY: every buffer the graph touches is alive.
        unsafe { g.launch_graph(&graph) }.expect("launch");
        g.synchronize().expect("sync");
        g.download(&logits)
            .expect("download")
            .iter()
            .map(|v| v.to_f32())
            .collect()
    };
    let got = replay(&mut img, images);
    let got2 = replay(&mut img, &mirrored);
    let again = replay(&mut img, images);
    assert_eq!(
        got,
        again,
        "{name} {}: replays of one input differ",
        T::DTYPE
    );
    for (what, g_, w) in [("input", &got, &want), ("mirrored input", &got2, &want2)] {
        let max = w.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = g_
            .iter()
            .zip(w.iter())
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        eprintln!(
            "{name} {} {what}: graph vs eager max|Δ| {err:e} (max {max}){}",
            T::DTYPE,
            if g_ == w { ", bit for bit" } else { "" }
        );
        // The same kernels in the same order; cuBLAS may pick another algorithm for the
        // graph's own workspace. f32: rounding only. 16-bit: a different rounding can flip
        // a near-tie selection (see `device_case`), which changes the logits beyond any
        // rounding bound, so the bound is the top-1 there.
        if T::DTYPE == clca::DType::F32 {
            assert!(
                err <= 1e-5 * max,
                "{name} {} {what}: {err:e} > 1e-5·{max}",
                T::DTYPE
            );
        } else {
            let top1 = |l: &[f32]| -> Vec<usize> {
                l.chunks(l.len() / b)
                    .map(|r| (0..r.len()).fold(0, |bi, i| if r[i] > r[bi] { i } else { bi }))
                    .collect()
            };
            assert_eq!(top1(g_), top1(w), "{name} {} {what}: top-1", T::DTYPE);
        }
    }
    assert_ne!(got, got2, "{name}: the replay must read the new images");
    // The device is as before: an eager forward still gives the same logits.
    assert_eq!(
        eager(images),
        want,
        "{name} {}: eager after the graph",
        T::DTYPE
    );
    g.synchronize().expect("sync");
    drop(graph);
}
