//! The CPU forward's profile (`CpuWorkspace::set_profile`): every phase of the forward is
//! named, the marks add up to about the wall time, runs accumulate, and profiling off leaves
//! the results bit for bit.
mod common;
use clca::vit::profile::Profile;
use clca::vit::random::random_images;
use clca::vit::Vit;
use std::time::Instant;

fn model(prefix: &str) -> Vit {
    common::clca_model(prefix, 64, 4, 96, 5, |_| {})
}

#[test]
fn profile_names_every_phase_and_sums_to_the_wall_time() {
    for prefix in ["evit_", "tome_", "ats_", "dpcknn_"] {
        let m = model(prefix);
        let img = random_images(2, 3, 64, 3);
        let mut ws = clca::vit::cpu::CpuWorkspace::new(&m, 2).expect("workspace");
        let plain = clca::vit::cpu::forward(&m, &mut ws, &img, None).expect("forward");
        ws.set_profile(Some(Profile::new()));
        let t = Instant::now();
        let runs = 3;
        for _ in 0..runs {
            let l = clca::vit::cpu::forward(&m, &mut ws, &img, None).expect("forward");
            assert_eq!(
                l.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{prefix}: profiling changed the logits"
            );
        }
        let wall = t.elapsed().as_secs_f64();
        let p = ws.take_profile().expect("profile");
        assert!(ws.profile().is_none());
        assert_eq!(p.runs(), runs);
        let total = p.total().as_secs_f64();
        // The marks cover the forward from its start to the head; what is left out is the
        // call itself and the loop around it.
        assert!(
            total <= wall && total >= 0.8 * wall,
            "{prefix}: marks {total} s of {wall} s"
        );
        let phases: Vec<&str> = p.by_phase().iter().map(|x| x.0).collect();
        for want in [
            "patch embed",
            "ln1",
            "qkv",
            "attention",
            "ln2",
            "reduction",
            "cache",
            "head",
        ] {
            assert!(
                phases.contains(&want),
                "{prefix}: no `{want}` in {phases:?}"
            );
        }
        // The GEMMs with their fused epilogues: proj + residual, fc1 + GELU, fc2 + residual.
        for want in ["proj+residual", "fc1+gelu", "fc2+residual"] {
            assert!(
                phases.contains(&want),
                "{prefix}: no `{want}` in {phases:?}"
            );
        }
        // Every block appears, and the phases outside the blocks are under `None`.
        let blocks: Vec<Option<usize>> = p.by_block().iter().map(|x| x.0).collect();
        assert_eq!(blocks.len(), m.cfg.depth + 1, "{prefix}: {blocks:?}");
        let t = p.table();
        assert!(t.contains("fc2+resid") && t.contains("block"), "{t}");
        let j = p.to_json();
        assert_eq!(j["runs"], runs);
        assert_eq!(j["blocks"].as_array().map(Vec::len), Some(m.cfg.depth + 1));
    }
}
