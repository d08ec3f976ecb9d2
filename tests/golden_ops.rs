#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
//! The ops against the authors' own numbers (../shared/golden): the selections from their
//! CLS-attention scores, the cache carriers and recovery from their per-block tensors, the CLA
//! head from their CLS taps, and the planned lengths from their traces.
mod common;
use clca::ops::cla_head::{BatchNorm, ClaBody, ClaConv, ClaHead, DeviceClaHead};
use clca::ops::token_cache::{cache_take, recover, TakeArgs};
use clca::plan::{plan, ClcOptions, PlanSpec, Reduction};
use clca::{cpu, ops, Device};
use common::golden::{cases, Case};
use common::*;

fn reduction_of(c: &Case) -> Option<Reduction> {
    match c.model_class() {
        "models.evit.EViT" => Some(Reduction::EVit),
        "models.topk.TopK" => Some(Reduction::TopK),
        "models.vit.ViT" => Some(Reduction::None),
        "models.tome.ToMeViT" => Some(Reduction::ToMe),
        _ => None,
    }
}

fn args_bool(c: &Case, k: &str) -> bool {
    c.config["args"][k].as_bool().unwrap_or(false)
}

fn spec_plan(c: &Case) -> Option<clca::plan::SeqPlan> {
    let red = reduction_of(c)?;
    let m = &c.config["model"];
    let patches = m["num_patches"].as_u64()? as usize;
    let depth = c.config["create_model_kwargs"]["depth"].as_u64()? as usize;
    let num_clr = c.config["args"]["num_clr"].as_u64().unwrap_or(0) as usize;
    let locs = if red == Reduction::None {
        vec![]
    } else {
        c.usizes(&["args", "reduction_loc"])
    };
    let krs: Vec<f64> = c.config["args"]["keep_rate"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    let clc = args_bool(c, "clc").then(|| ClcOptions {
        include_gap: args_bool(c, "clc_include_gap"),
        recover_at_last: args_bool(c, "clc_recover_at_last"),
        pool_cls: args_bool(c, "clc_pool_cls"),
        pool_clr: args_bool(c, "clc_pool_clr"),
    });
    Some(
        plan(&PlanSpec {
            k_neighbors: 5,
            patches,
            num_clr,
            depth,
            reduction: red,
            locs: &locs,
            keep_rates: &krs,
            clc,
        })
        .expect("plan"),
    )
}

#[test]
fn planned_lengths_match_the_authors_traces() {
    let mut checked = 0;
    for p in cases() {
        let c = Case::load(&p);
        let Some(pl) = spec_plan(&c) else { continue };
        let ins: Vec<usize> = pl.blocks.iter().map(|b| b.len_in).collect();
        let outs: Vec<usize> = pl.blocks.iter().map(|b| b.len_out).collect();
        let added: Vec<usize> = pl.blocks.iter().map(|b| b.recovered).collect();
        assert_eq!(
            ins,
            c.usizes(&["seq_len", "block_in"]),
            "{}: block_in",
            c.name
        );
        assert_eq!(
            outs,
            c.usizes(&["seq_len", "block_out"]),
            "{}: block_out",
            c.name
        );
        assert_eq!(
            added,
            c.usizes(&["seq_len", "clc_added"]),
            "{}: clc_added",
            c.name
        );
        if let (true, Some(r)) = (
            args_bool(&c, "clc"),
            c.config["model"]["recovery_layers"].as_array(),
        ) {
            let r: Vec<usize> = r
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as usize)
                .collect();
            assert_eq!(pl.recovery, r, "{}: recovery layers", c.name);
        }
        checked += 1;
    }
    eprintln!("planned lengths checked on {checked} golden cases");
}

/// Their cls_attn.i → our top-k == their keep_idx.i (order included) and compl_idx.i.
fn selections<D: Device>(dev: &D) {
    let mut checked = 0;
    for p in cases() {
        let c = Case::load(&p);
        let evit = c.model_class() == "models.evit.EViT";
        for i in 0..64 {
            let Some((shape, scores)) = c.output(&format!("cls_attn.{i}")) else {
                continue;
            };
            let (b, m) = (shape[0], shape[1]);
            let (_, keep) = c.output(&format!("keep_idx.{i}")).expect("keep_idx");
            let kr = c.config["model"]["block_keep_rate"][i]
                .as_f64()
                .expect("block keep rate");
            let k = ops::keep_count(kr, m + 1).expect("keep count");
            let want: Vec<u32> = keep
                .iter()
                .filter(|&&v| v >= 0.0)
                .map(|&v| v as u32)
                .collect();
            assert_eq!(want.len(), b * k, "{}: keep count at block {i}", c.name);
            let s: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
            let (idx, compl) = cpu::topk::topk_select(&s, b, m, k).expect("ref");
            assert_eq!(idx, want, "{}: cpu keep_idx.{i}", c.name);
            let sb = up(dev, &s);
            let mut ib = dev.zeros::<u32>(b * k).expect("zeros");
            let mut cb = dev.zeros::<u32>(b * (m - k)).expect("zeros");
            ops::topk::topk_select(dev, &sb, b, m, k, &mut ib, &mut cb).expect("kernel");
            assert_eq!(
                down(dev, &ib),
                want,
                "{}: kernel keep_idx.{i} on {}",
                c.name,
                dev.name()
            );
            if evit {
                let (_, cw) = c.output(&format!("compl_idx.{i}")).expect("compl_idx");
                let cw: Vec<u32> = cw.iter().map(|&v| v as u32).collect();
                assert_eq!(compl, cw, "{}: cpu compl_idx.{i}", c.name);
                assert_eq!(down(dev, &cb), cw, "{}: kernel compl_idx.{i}", c.name);
            }
            checked += 1;
        }
    }
    eprintln!("{} golden selections reproduced on {}", checked, dev.name());
}

#[test]
fn selections_match_the_authors() {
    on_devices!(selections);
}

/// Replays the cache loop over their per-block tensors: the tokens they recovered after block r
/// (block_in.{r+1} past block_out.r) are our carriers taken from their earlier states.
fn cache<D: Device>(dev: &D) {
    for p in cases() {
        let c = Case::load(&p);
        let Some(pl) = spec_plan(&c) else { continue };
        if !args_bool(&c, "clc") {
            continue;
        }
        let num_clr = c.config["args"]["num_clr"].as_u64().unwrap_or(0) as usize;
        let gap = args_bool(&c, "clc_include_gap");
        let (shape0, _) = c.output("block_in.0").expect("block_in.0");
        let (b, d) = (shape0[0], shape0[2]);
        let x_cap = pl.max_len;
        let cache_cap = pl.cache_cap.max(1);
        let mut cache_buf = dev.zeros::<f32>(b * cache_cap * d).expect("zeros");
        let depth = pl.blocks.len();
        for (i, bp) in pl.blocks.iter().enumerate().take(depth - 1) {
            // Their state after block i (and its recovery) is block_in.{i+1}.
            let (sh, after) = c.output(&format!("block_in.{}", i + 1)).expect("block_in");
            assert_eq!(sh[1], bp.len_after, "{}: length after block {i}", c.name);
            if bp.recovered > 0 {
                // Recover our cache into their pre-recovery state and compare the whole sequence.
                let (_, out_i) = c.output(&format!("block_out.{i}")).expect("block_out");
                let mut x = vec![0f32; b * x_cap * d];
                for bi in 0..b {
                    for t in 0..bp.len_out {
                        for ch in 0..d {
                            x[(bi * x_cap + t) * d + ch] =
                                out_i[(bi * bp.len_out + t) * d + ch] as f32;
                        }
                    }
                }
                let mut xb = up(dev, &x);
                let n = recover(
                    dev,
                    &cache_buf,
                    cache_cap,
                    bp.recovered,
                    &mut xb,
                    x_cap,
                    bp.len_out,
                    b,
                    d,
                )
                .expect("recover");
                assert_eq!(n, bp.len_after);
                let got = down(dev, &xb);
                for bi in 0..b {
                    for t in bp.len_out..n {
                        for ch in 0..d {
                            let (g, w) = (
                                got[(bi * x_cap + t) * d + ch] as f64,
                                after[(bi * n + t) * d + ch],
                            );
                            assert!(
                                close(g, w, 1e-6, 1e-5),
                                "{}: recovered token {t} after block {i}: {g} vs {w}",
                                c.name
                            );
                        }
                    }
                }
            }
            if let Some((pool, slot)) = &bp.carriers {
                let mut x = vec![0f32; b * x_cap * d];
                for bi in 0..b {
                    for t in 0..bp.len_after {
                        for ch in 0..d {
                            x[(bi * x_cap + t) * d + ch] =
                                after[(bi * bp.len_after + t) * d + ch] as f32;
                        }
                    }
                }
                let xb = up(dev, &x);
                let a = TakeArgs {
                    batch: b,
                    x_cap,
                    n: bp.len_after,
                    d,
                    pool: pool.clone(),
                    gap,
                    num_clr,
                    cache_cap,
                    slot: *slot,
                };
                cache_take(dev, &xb, &mut cache_buf, &a).expect("take");
            }
        }
        eprintln!("{}: cache replay ok on {}", c.name, dev.name());
    }
}

#[test]
fn cache_matches_the_authors() {
    on_devices!(cache);
}

fn bn<'a>(c: &'a [Vec<f32>; 4]) -> BatchNorm<'a> {
    BatchNorm {
        weight: &c[0],
        bias: &c[1],
        running_mean: &c[2],
        running_var: &c[3],
        eps: 1e-5,
    }
}

/// Their inter_cls → our CLA head → their logits (≤ 1e-4·max|ref|).
fn cla<D: Device>(dev: &D) {
    for p in cases() {
        let c = Case::load(&p);
        let Some((zs, z)) = c.output("inter_cls") else {
            continue;
        };
        let (b, d, f) = (zs[0], zs[1], zs[2]);
        let g = c.config["args"]["ifa_dws_conv_groups"]
            .as_u64()
            .unwrap_or(2) as usize;
        let (_, logits) = c.output("logits").expect("logits");
        let w = |n: &str| c.weight_f32(&format!("ifa_head.0.{n}"));
        let head = if g > 0 {
            let bn1 = [
                w("0.weight"),
                w("0.bias"),
                w("0.running_mean"),
                w("0.running_var"),
            ];
            let bn2 = [
                w("2.weight"),
                w("2.bias"),
                w("2.running_mean"),
                w("2.running_var"),
            ];
            let conv = ClaConv::fold(&bn(&bn1), &w("1.weight"), &w("1.bias"), &bn(&bn2), d, f, g)
                .expect("fold");
            let fc_w = w("4.weight");
            ClaHead {
                classes: fc_w.len() / (g * d),
                fc_w,
                fc_b: w("4.bias"),
                body: ClaBody::Conv(conv),
            }
        } else {
            continue;
        };
        let zf: Vec<f32> = z.iter().map(|&v| v as f32).collect();
        let max_ref = logits.iter().fold(0f64, |m, v| m.max(v.abs()));
        let cpu_logits = head.forward_cpu(&zf, b).expect("cpu head");
        assert_close("cpu CLA logits", &cpu_logits, &logits, 1e-4 * max_ref, 0.0);
        let dh = DeviceClaHead::<D, f32>::new(dev, &head).expect("upload");
        let zb = up(dev, &zf);
        let mut hidden = dev.zeros::<f32>(b * dh.hidden()).expect("zeros");
        let mut out = dev.zeros::<f32>(b * head.classes).expect("zeros");
        dh.forward(dev, &zb, b, &mut hidden, &mut out)
            .expect("head");
        let got = down(dev, &out);
        let err = got
            .iter()
            .zip(&logits)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0f64, f64::max);
        assert!(
            err <= 1e-4 * max_ref,
            "{}: CLA logits max|Δ| {err:e} > 1e-4·{max_ref}",
            c.name
        );
        eprintln!(
            "{}: CLA head max|Δ| = {err:.2e} (max|ref| {max_ref:.3}) on {}",
            c.name,
            dev.name()
        );
    }
}

#[test]
fn cla_head_matches_the_authors() {
    on_devices!(cla);
}
