//! Multiply-accumulates by the closed form of SPEC §6, which reproduces the authors'
//! `torchprofile` counts (78.49 G for ViT-B/16 at 448 px; 25.17 G for EViT+CLCA at kr 0.1,
//! locs 3 6 9). The paper's "GFLOPs" are these MACs.
//!
//! Per method (the authors count every model with `torchprofile`, except ATS):
//! - reductions before the block add their module's matmuls to that block: SiT n·D·D/2 +
//!   n·D/2·K + K·n·D (the bmm), PatchMerger 2·K·n·D, DynamicViT's predictor
//!   n·(D² + D·D/2 + D/2·D/4 + D/4·2), DPC-KNN's score layer n·D (torchprofile has no
//!   handler for cdist, so the distances are not counted); n = tokens entering the module;
//! - ATS is counted by `thop`, which sees only nn.Module layers: the q·kᵀ and A·v matmuls
//!   are left out in every block, and the proj runs on the sampled length. ATS's lengths
//!   depend on the data; the report uses the plan's upper bounds.
use super::config::{HeadKind, VitConfig};
use crate::plan::{Reduction, SeqPlan};

/// MACs of one forward of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacReport {
    /// Patch embedding: P·D·(C·p²).
    pub patch: u64,
    /// Per block: N_in·3D² + 2·N_in²·D + N_in·D² + N_mlp·2·D·H_mlp (N_mlp = tokens after an
    /// in-block reduction).
    pub blocks: Vec<u64>,
    /// The head (Linear D·K, or the CLA head's grouped conv and final Linear).
    pub head: u64,
}

impl MacReport {
    /// Patch + blocks + head.
    pub fn total(&self) -> u64 {
        self.backbone().saturating_add(self.head)
    }
    /// Patch + blocks (the SPEC §6 closed form).
    pub fn backbone(&self) -> u64 {
        self.blocks
            .iter()
            .fold(self.patch, |a, &b| a.saturating_add(b))
    }
}

/// The MACs of `cfg` run along `plan`. Counted in 128 bits and saturated to `u64::MAX`, which
/// no configuration within [`super::config::LIMITS`] reaches.
pub fn macs(cfg: &VitConfig, plan: &SeqPlan) -> MacReport {
    let sat = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
    let d = cfg.embed_dim as u128;
    let hm = cfg.mlp_hidden as u128;
    let p = cfg.num_patches() as u128;
    let ps = cfg.patch_size as u128;
    let patch = sat(p * d * cfg.in_chans as u128 * ps * ps);
    let ats = cfg.reduction == Reduction::Ats;
    let blocks = plan
        .blocks
        .iter()
        .map(|b| {
            let (n, nm) = (b.len_in as u128, b.len_out as u128);
            let module = b.pre.as_ref().map_or(0, |q| {
                let nt = q.len_before.saturating_sub(1 + q.suffix) as u128;
                let k = q.out as u128;
                match cfg.reduction {
                    Reduction::Sit => nt * d * (d / 2) + nt * (d / 2) * k + k * nt * d,
                    Reduction::PatchMerger => 2 * k * nt * d,
                    Reduction::DynamicVit => {
                        nt * (d * d + d * (d / 2) + (d / 2) * (d / 4) + (d / 4) * 2)
                    }
                    Reduction::DpcKnn if !cfg.method.equal_weight => nt * d,
                    _ => 0,
                }
            });
            sat(if ats {
                n * 3 * d * d + nm * d * d + nm * 2 * d * hm
            } else {
                module + n * 3 * d * d + 2 * n * n * d + n * d * d + nm * 2 * d * hm
            })
        })
        .collect();
    let k = cfg.num_classes as u128;
    let head = sat(match cfg.head {
        HeadKind::Linear => d * k,
        HeadKind::Cla { groups: 0 } => d * plan.taps as u128 + d * k,
        HeadKind::Cla { groups: g } => g as u128 * d * (plan.taps as u128 + k),
    });
    MacReport {
        patch,
        blocks,
        head,
    }
}
