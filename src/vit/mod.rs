//! The ViT forward with token reduction, the cross-layer cache and the CLA head (SPEC §1–§3).
//!
//! [`Vit`] = a [`VitConfig`] + its [`SeqPlan`] (every length fixed before data moves) + its
//! checked [`VitWeights`]. [`cpu`] runs it in f32 on the CPU.
pub mod config;
pub mod cpu;
pub mod device;
pub mod flags;
pub mod macs;
mod methods;
pub mod preprocess;
pub mod profile;
mod pruned_attention;
pub mod random;
pub mod weights;

pub use config::{HeadKind, TrainFlags, VitConfig};
pub use flags::ModelFlags;
pub use weights::{TensorMap, VitWeights};

use crate::plan::SeqPlan;
use crate::{Error, Result};
use std::path::Path;

/// A planned model with its weights.
#[derive(Clone, Debug)]
pub struct Vit {
    pub cfg: VitConfig,
    pub plan: SeqPlan,
    pub weights: VitWeights,
}

impl Vit {
    /// Plans `cfg` and checks `weights` against it.
    pub fn new(cfg: VitConfig, weights: TensorMap) -> Result<Self> {
        cfg.validate()?;
        let plan = cfg.plan()?;
        if matches!(cfg.head, HeadKind::Cla { .. }) && plan.taps == 0 {
            return Err(Error::Plan(
                "the CLA head needs at least one CLS tap".into(),
            ));
        }
        let weights = VitWeights::from_map(&cfg, plan.taps, weights)?;
        Ok(Vit { cfg, plan, weights })
    }

    /// The cache-take arguments of the carriers taken after block `bp`, when it takes any
    /// (the GAP range and slot from the plan; x compact at length `n`).
    pub(crate) fn carrier_args(
        &self,
        bp: &crate::plan::BlockPlan,
        batch: usize,
        n: usize,
    ) -> Option<crate::ops::token_cache::TakeArgs> {
        let ((pool, slot), o) = (bp.carriers.as_ref()?, self.cfg.clc.as_ref()?);
        Some(crate::ops::token_cache::TakeArgs {
            batch,
            x_cap: n,
            n,
            d: self.cfg.embed_dim,
            pool: pool.clone(),
            gap: o.include_gap,
            num_clr: self.cfg.num_clr,
            cache_cap: self.plan.cache_cap.max(1),
            slot: *slot,
        })
    }

    /// MACs of one image (SPEC §6).
    pub fn macs(&self) -> macs::MacReport {
        macs::macs(&self.cfg, &self.plan)
    }

    /// Loads a safetensors checkpoint in the authors' names.
    pub fn load(cfg: VitConfig, path: &Path) -> Result<Self> {
        Self::new(cfg, TensorMap::load(path)?)
    }
}

/// A recorded tensor of a forward.
#[derive(Clone, Debug)]
pub enum TraceData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// Per-block tensors of a forward, under the names of the golden files (`block_in.i`,
/// `block_out.i`, `cls_attn.i`, `keep_idx.i`, `compl_idx.i`, `token_size.i`, `cluster_idx.i`,
/// `inter_cls`, `head_in`, `logits`).
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub tensors: Vec<(String, Vec<usize>, TraceData)>,
}

impl Trace {
    /// Records an f32 tensor.
    pub fn push_f32(&mut self, name: &str, shape: &[usize], v: &[f32]) {
        self.tensors
            .push((name.to_string(), shape.to_vec(), TraceData::F32(v.to_vec())));
    }
    /// Records an i64 tensor.
    pub fn push_i64(&mut self, name: &str, shape: &[usize], v: Vec<i64>) {
        self.tensors
            .push((name.to_string(), shape.to_vec(), TraceData::I64(v)));
    }
    /// The selection of reduction block `i`: `cls_attn.i` (scores [b, n−1]), `keep_idx.i`
    /// ([b, k+1]: the kept indices then −1, the fused token's slot, which the authors' trace
    /// appends for Top-K too) and, for EViT, `compl_idx.i` ([b, n−1−k]).
    pub(crate) fn push_selection(
        &mut self,
        i: usize,
        b: usize,
        n: usize,
        k: usize,
        scores: &[f32],
        idx: &[u32],
        compl: Option<&[u32]>,
    ) {
        self.push_f32(&format!("cls_attn.{i}"), &[b, n - 1], scores);
        let mut keep: Vec<i64> = Vec::with_capacity(b * (k + 1));
        for bi in 0..b {
            keep.extend(idx[bi * k..(bi + 1) * k].iter().map(|&v| v as i64));
            keep.push(-1);
        }
        self.push_i64(&format!("keep_idx.{i}"), &[b, k + 1], keep);
        if let Some(c) = compl {
            self.push_i64(
                &format!("compl_idx.{i}"),
                &[b, n - 1 - k],
                c.iter().map(|&v| v as i64).collect(),
            );
        }
    }

    /// The merge of ToMe block `i` as the authors' source map `cluster_idx.i` [b, n−1]: for each
    /// input token t ≥ 1, the index − 1 of the output token it went into (an unmerged a token's
    /// place among the unmerged, a b token's place after them, a source's destination's place).
    /// `unm` [b, na − r] and `node_idx` [b, na] as in [`crate::ops::tome`].
    pub(crate) fn push_merge(
        &mut self,
        i: usize,
        b: usize,
        n: usize,
        r: usize,
        unm: &[u32],
        node_idx: &[u32],
    ) {
        let (na, _) = crate::ops::tome::split(n);
        let nu = na - r;
        let mut map = vec![0i64; b * (n - 1)];
        for bi in 0..b {
            let row = &mut map[bi * (n - 1)..(bi + 1) * (n - 1)];
            let ni = &node_idx[bi * na..(bi + 1) * na];
            for t in (2..n).step_by(2) {
                row[t - 1] = (nu + ni[t / 2] as usize) as i64 - 1;
            }
            for t in (1..n).step_by(2) {
                row[t - 1] = (nu + t / 2) as i64 - 1;
            }
            for (p, &a) in unm[bi * nu..(bi + 1) * nu].iter().enumerate().skip(1) {
                row[2 * a as usize - 1] = p as i64 - 1;
            }
        }
        self.push_i64(&format!("cluster_idx.{i}"), &[b, n - 1], map);
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<(&[usize], &TraceData)> {
        self.tensors
            .iter()
            .find(|t| t.0 == name)
            .map(|t| (&t.1[..], &t.2))
    }
    /// Writes every tensor to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_safetensors(
            path,
            self.tensors.iter().map(|(n, s, d)| match d {
                TraceData::F32(v) => (
                    n.as_str(),
                    s.as_slice(),
                    safetensors::Dtype::F32,
                    bytemuck::cast_slice(v),
                ),
                TraceData::I64(v) => (
                    n.as_str(),
                    s.as_slice(),
                    safetensors::Dtype::I64,
                    bytemuck::cast_slice(v),
                ),
            }),
        )
    }
}

/// Writes named tensors (little-endian bytes, borrowed, not copied) to a safetensors file.
pub(crate) fn write_safetensors<'a>(
    path: &Path,
    tensors: impl Iterator<Item = (&'a str, &'a [usize], safetensors::Dtype, &'a [u8])>,
) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'a>)> = tensors
        .map(|(n, s, dt, b)| {
            safetensors::tensor::TensorView::new(dt, s.to_vec(), b).map(|v| (n.to_string(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Weights(format!("trace: {e}")))?;
    safetensors::serialize_to_file(views, &None, path)
        .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))
}
