//! Multiply-accumulates by the closed form of SPEC §6, which reproduces the authors'
//! `torchprofile` counts (78.49 G for ViT-B/16 at 448 px; 25.17 G for EViT+CLCA at kr 0.1,
//! locs 3 6 9). The paper's "GFLOPs" are these MACs.
use super::config::{HeadKind, VitConfig};
use crate::plan::SeqPlan;

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
        self.patch + self.blocks.iter().sum::<u64>() + self.head
    }
    /// Patch + blocks (the SPEC §6 closed form).
    pub fn backbone(&self) -> u64 {
        self.patch + self.blocks.iter().sum::<u64>()
    }
}

/// The MACs of `cfg` run along `plan`.
pub fn macs(cfg: &VitConfig, plan: &SeqPlan) -> MacReport {
    let d = cfg.embed_dim as u64;
    let hm = cfg.mlp_hidden as u64;
    let p = cfg.num_patches() as u64;
    let patch = p * d * (cfg.in_chans * cfg.patch_size * cfg.patch_size) as u64;
    let blocks = plan
        .blocks
        .iter()
        .map(|b| {
            let (n, nm) = (b.len_in as u64, b.len_out as u64);
            n * 3 * d * d + 2 * n * n * d + n * d * d + nm * 2 * d * hm
        })
        .collect();
    let k = cfg.num_classes as u64;
    let head = match cfg.head {
        HeadKind::Linear => d * k,
        HeadKind::Cla { groups: 0 } => d * plan.taps as u64 + d * k,
        HeadKind::Cla { groups: g } => g as u64 * d * (plan.taps as u64 + k),
    };
    MacReport {
        patch,
        blocks,
        head,
    }
}
