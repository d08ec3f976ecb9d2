//! Top-K and EViT blocks on the packed CPU path attend only the surviving queries
//! (src/vit/pruned_attention.rs). Against the authors' order (every query's attention, proj
//! on every token, then the selection; `set_pruned_attention(false)`):
//! - the same selections, and the first reduction block's scores bit for bit;
//! - Top-K: every traced tensor and the logits bit for bit;
//! - EViT: the first reduction block's output bit for bit except the fused token (within
//!   rounding of its reassociated sum), and the logits within 1e-5 of the largest.
//!
//! Shapes cover one and several panels of 32 kept and dropped queries, head dims 32 and 64
//! (not multiples of the 12-row tiles), keep rates from one token to all but one, LayerScale
//! (which scales the fused row's bias correction), batch 1 and 3, and both packed ISAs where
//! the CPU has them.
mod common;
use clca::cpu::packed::Isa;
use clca::vit::random::random_images;
use clca::vit::{Trace, TraceData, Vit};

fn model(prefix: &str, img: usize, d: usize, heads: usize, kr: f64, ls: bool) -> Vit {
    common::clca_model(prefix, img, 4, d, 4, |cfg| {
        cfg.num_heads = heads;
        cfg.keep_rate = vec![kr];
        cfg.layerscale = ls;
    })
}

fn run(m: &Vit, batch: usize, isa: Isa, pruned: bool) -> (Vec<f32>, Trace) {
    let img = random_images(batch, 3, m.cfg.img_size, 11);
    let mut ws = clca::vit::cpu::CpuWorkspace::new_packed(m, batch, isa).expect("workspace");
    ws.set_pruned_attention(pruned);
    let mut t = Trace::default();
    let logits = clca::vit::cpu::forward(m, &mut ws, &img, Some(&mut t)).expect("forward");
    (logits, t)
}

fn f32s<'a>(t: &'a Trace, name: &str) -> &'a [f32] {
    match t.get(name) {
        Some((_, TraceData::F32(v))) => v,
        other => panic!("{name}: {:?}", other.is_some()),
    }
}

#[test]
fn pruned_attention_matches_the_authors_order() {
    let isas = common::packed_isas();
    // (image size, width, heads, keep rate, LayerScale): 64 px = 256 patches.
    let shapes = [
        (64, 96, 3, 0.5, false), // 128 kept, 127 dropped: several panels of each; hd 32
        (64, 128, 2, 0.1, false), // 26 kept (one panel), hd 64
        (32, 96, 3, 0.01, false), // one token kept
        (32, 96, 3, 0.97, false), // 64 of 65 kept: one dropped query
        (48, 128, 2, 0.25, true), // 144 patches; LayerScale scales the fused row's bias too
    ];
    for isa in isas {
        for prefix in ["topk_", "evit_"] {
            for &(img, d, heads, kr, ls) in &shapes {
                for batch in [1, 3] {
                    let m = model(prefix, img, d, heads, kr, ls);
                    assert_eq!(m.weights.blocks[0].ls1.is_some(), ls);
                    let what = format!("{prefix} {isa:?} {img} px d {d} kr {kr} ls {ls} B{batch}");
                    let (want, tw) = run(&m, batch, isa, false);
                    let (got, tg) = run(&m, batch, isa, true);
                    let names: Vec<&String> = tw.tensors.iter().map(|x| &x.0).collect();
                    assert_eq!(
                        names,
                        tg.tensors.iter().map(|x| &x.0).collect::<Vec<_>>(),
                        "{what}"
                    );
                    let first = m.cfg.reduction_loc[0];
                    for ((name, _, a), (_, _, b)) in tw.tensors.iter().zip(&tg.tensors) {
                        match (a, b) {
                            (TraceData::I64(a), TraceData::I64(b)) => {
                                assert_eq!(a, b, "{what}: {name}")
                            }
                            (TraceData::F32(a), TraceData::F32(b)) => {
                                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                                if prefix == "topk_"
                                    || *name == format!("cls_attn.{first}")
                                    || *name == format!("block_in.{first}")
                                {
                                    assert!(same, "{what}: {name} not bit for bit");
                                }
                            }
                            _ => panic!("{what}: {name}: types differ"),
                        }
                    }
                    if prefix == "evit_" {
                        // The first reduction block's output: [cls, kept, fused] (then the
                        // recovered cache tokens, which it did not touch).
                        let name = format!("block_out.{first}");
                        let (a, b) = (f32s(&tw, &name), f32s(&tg, &name));
                        let kept = match tw.get(&format!("keep_idx.{first}")) {
                            Some((_, TraceData::I64(v))) => v.len() / batch - 1, // k + 1 a row, the last −1
                            _ => panic!("{what}: keep_idx"),
                        };
                        let (n, d) = (a.len() / batch / d, d);
                        let scale = a.iter().fold(1f32, |s, v| s.max(v.abs()));
                        for bi in 0..batch {
                            for t in 0..n {
                                let (x, y) =
                                    (&a[(bi * n + t) * d..][..d], &b[(bi * n + t) * d..][..d]);
                                if t == kept + 1 {
                                    for (u, v) in x.iter().zip(y) {
                                        assert!(
                                            (u - v).abs() <= 1e-5 * scale,
                                            "{what}: fused token {u} vs {v}"
                                        );
                                    }
                                } else {
                                    assert!(
                                        x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits()),
                                        "{what}: {name} token {t} of image {bi} not bit for bit"
                                    );
                                }
                            }
                        }
                    }
                    let scale = want.iter().fold(1f32, |s, v| s.max(v.abs()));
                    for (x, y) in want.iter().zip(&got) {
                        if prefix == "topk_" {
                            assert_eq!(x.to_bits(), y.to_bits(), "{what}: logits");
                        } else {
                            assert!((x - y).abs() <= 1e-5 * scale, "{what}: logits {x} vs {y}");
                        }
                    }
                }
            }
        }
    }
}

/// The device forward (host shim always, GPU when present) selects before the projection in
/// Top-K and EViT blocks (`DeviceVit::set_prune_first`, on by default) and projects only
/// [cls, kept (, fused)]. Against the authors' order on the same device (`false`):
/// - the same selections, every block;
/// - the first reduction block's input and scores bit for bit (nothing before it changed);
/// - every traced tensor and the logits within rounding (the fused pass rounds ln2's sums in
///   another order; EViT's fused token is reassociated): 1e-5 of the largest value in f32,
///   2e-2 in bf16, where the selections are compared only where f32's and bf16's agree.
fn device_prune_first_case<D: clca::Device>(dev: &D) {
    use clca::vit::device::DeviceVit;
    fn run<D: clca::Device, T: clca::Element>(
        dev: &D,
        m: &Vit,
        batch: usize,
        first: bool,
    ) -> (Vec<f32>, Trace) {
        let img = random_images(batch, 3, m.cfg.img_size, 11);
        let img = dev.upload(&img).expect("upload");
        let mut dv = DeviceVit::<D, T>::new(dev, m).expect("upload model");
        dv.set_prune_first(first);
        let mut ws = dv.workspace(dev, batch).expect("workspace");
        let mut t = Trace::default();
        dv.forward(dev, &mut ws, &img, Some(&mut t))
            .expect("forward");
        (dv.logits(dev, &ws).expect("logits"), t)
    }
    let close = |a: &[f32], b: &[f32], rel: f32| {
        let scale = a.iter().fold(1f32, |s, v| s.max(v.abs()));
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
            <= rel * scale
    };
    let shapes = [
        (64, 96, 3, 0.5, false),
        (32, 96, 3, 0.01, false),
        (32, 96, 3, 0.97, false),
        (48, 128, 2, 0.25, true),
    ];
    for prefix in ["topk_", "evit_"] {
        for &(img, d, heads, kr, ls) in &shapes {
            for batch in [1, 3] {
                let m = model(prefix, img, d, heads, kr, ls);
                let what = format!(
                    "{prefix} {img} px d {d} kr {kr} ls {ls} B{batch} on {}",
                    dev.name()
                );
                let first = m.cfg.reduction_loc[0];
                let (want, tw) = run::<D, f32>(dev, &m, batch, false);
                let (got, tg) = run::<D, f32>(dev, &m, batch, true);
                assert_eq!(tw.tensors.len(), tg.tensors.len(), "{what}");
                for ((name, sa, a), (nb, sb, b)) in tw.tensors.iter().zip(&tg.tensors) {
                    assert_eq!((name, sa), (nb, sb), "{what}");
                    match (a, b) {
                        (TraceData::I64(a), TraceData::I64(b)) => {
                            assert_eq!(a, b, "{what}: {name}")
                        }
                        (TraceData::F32(a), TraceData::F32(b)) => {
                            if *name == format!("cls_attn.{first}")
                                || *name == format!("block_in.{first}")
                            {
                                assert!(
                                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                                    "{what}: {name} not bit for bit"
                                );
                            }
                            assert!(close(a, b, 1e-5), "{what}: {name}");
                        }
                        _ => panic!("{what}: {name}: types differ"),
                    }
                }
                assert!(
                    close(&want, &got, 1e-5),
                    "{what}: logits {want:?} vs {got:?}"
                );
                // bf16 takes the fused attention (Top-K: the cls tile, then the kept queries only).
                if prefix == "topk_" || (batch == 3 && kr == 0.25) {
                    let (want16, t16w) = run::<D, clca::bf16>(dev, &m, batch, false);
                    let (got16, t16g) = run::<D, clca::bf16>(dev, &m, batch, true);
                    let sel = format!("keep_idx.{first}");
                    let ids = |t: &Trace| match t.get(&sel) {
                        Some((_, TraceData::I64(v))) => v.clone(),
                        _ => panic!("{what}: bf16 {sel} missing"),
                    };
                    assert_eq!(ids(&t16w), ids(&t16g), "{what}: bf16 {sel}");
                    assert!(close(&want16, &got16, 2e-2), "{what}: bf16 logits");
                }
            }
        }
    }
}

#[test]
fn device_prune_first_matches_the_authors_order() {
    on_devices!(device_prune_first_case);
}
