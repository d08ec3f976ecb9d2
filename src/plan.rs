//! Sequence lengths, cache sizes and CLS taps of a whole forward, computed before any data
//! moves (SPEC §2.3–§2.5), so every buffer is allocated once.
//!
//! Covers no reduction, Top-K and EViT; the other methods of the paper plug in their own
//! count rules later.
use crate::ops::keep_count;
use crate::{Error, Result};
use std::ops::Range;

/// How tokens are reduced at the reduction layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// No reduction (the authors' `vit.py`; `locs` only drive recovery and taps).
    None,
    /// Keep ⌈kr·(n−1)⌉ tokens by CLS attention.
    TopK,
    /// Top-K plus one fused token.
    EVit,
    /// ToMe bipartite merging: r_j = T_{j−1} − T_j tokens merged, T_j = int(P·kr^{j+1})
    /// (T_{−1} = P), capped at ⌊(n−1)/2⌋ (SPEC §4.3). A multi-value keep-rate list is read as
    /// the absolute targets T_j, as the authors' tome.py does.
    ToMe,
}

/// Cross-layer cache switches (SPEC §2.1). Note the authors' `train.py` defaults:
/// `include_gap` and `recover_at_last` are **on** unless their flags are passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClcOptions {
    pub include_gap: bool,
    pub recover_at_last: bool,
    pub pool_cls: bool,
    pub pool_clr: bool,
}

impl Default for ClcOptions {
    /// The `train.py` defaults (`store_false` flags not passed).
    fn default() -> Self {
        ClcOptions {
            include_gap: true,
            recover_at_last: true,
            pool_cls: false,
            pool_clr: false,
        }
    }
}

/// What happens around one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    /// Tokens entering the block.
    pub len_in: usize,
    /// Tokens kept by an in-block pruning (k), if the block prunes (Top-K, EViT).
    pub keep: Option<usize>,
    /// Tokens merged away in the block (ToMe's r), if the block merges.
    pub merge: Option<usize>,
    /// Tokens leaving the block, before recovery.
    pub len_out: usize,
    /// Cached tokens appended after the block.
    pub recovered: usize,
    /// Tokens after recovery (the next block's input).
    pub len_after: usize,
    /// GAP range and first cache slot of the carriers taken after this block, if any.
    pub carriers: Option<(Range<usize>, usize)>,
    /// Whether the CLS token is tapped for the CLA head after this block.
    pub cls_tap: bool,
}

/// A whole forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqPlan {
    pub blocks: Vec<BlockPlan>,
    /// Largest sequence length at any point (the activation buffer's token capacity).
    pub max_len: usize,
    /// Largest number of cached tokens at any point (the cache's token capacity).
    pub cache_cap: usize,
    /// Number of CLS taps (the CLA head's f).
    pub taps: usize,
    /// Recovery layers R.
    pub recovery: Vec<usize>,
}

/// The inputs of a plan.
#[derive(Clone, Debug)]
pub struct PlanSpec<'a> {
    /// Number of patches P.
    pub patches: usize,
    /// Learned carrier tokens C (appended after the patches).
    pub num_clr: usize,
    pub depth: usize,
    pub reduction: Reduction,
    /// Reduction layers (0-based, strictly increasing).
    pub locs: &'a [usize],
    /// One keep rate for all layers, or one per layer of `locs`.
    pub keep_rates: &'a [f64],
    /// The cache, when on.
    pub clc: Option<ClcOptions>,
}

use crate::error::invalid as bad;

/// Plans a forward (SPEC §2.3's loop, with the lengths of §2.5).
pub fn plan(s: &PlanSpec<'_>) -> Result<SeqPlan> {
    if s.depth == 0 {
        return Err(bad("depth", 0, "must be positive"));
    }
    if s.patches == 0 {
        return Err(bad("patches", 0, "must be positive"));
    }
    for w in s.locs.windows(2) {
        if w[1] <= w[0] {
            return Err(bad(
                "reduction_loc",
                format!("{:?}", s.locs),
                "must be strictly increasing (no duplicates)",
            ));
        }
    }
    if let Some(&l) = s.locs.iter().find(|&&l| l >= s.depth) {
        return Err(bad(
            "reduction_loc",
            l,
            format!("layer >= depth {}", s.depth),
        ));
    }
    if s.reduction != Reduction::None {
        if s.keep_rates.is_empty()
            || (s.keep_rates.len() != 1 && s.keep_rates.len() != s.locs.len())
        {
            return Err(bad(
                "keep_rate",
                format!("{:?}", s.keep_rates),
                format!(
                    "give one value or one per reduction layer ({})",
                    s.locs.len()
                ),
            ));
        }
        let absolute = s.reduction == Reduction::ToMe && s.keep_rates.len() > 1;
        for &kr in s.keep_rates {
            if absolute {
                if !(kr >= 0.0 && kr.fract() == 0.0 && kr <= s.patches as f64) {
                    return Err(bad("keep_rate", kr, "a ToMe keep-rate list holds absolute token targets (whole numbers <= the patch count)"));
                }
            } else {
                crate::ops::check_keep_rate(kr)?;
            }
        }
    }
    let c = s.num_clr;
    let n0 = 1 + s.patches + c;
    let mut recovery: Vec<usize> = Vec::new();
    if let Some(o) = &s.clc {
        if !o.include_gap && c == 0 {
            return Err(bad(
                "clc",
                "gap off, num_clr 0",
                "the cache needs the GAP carrier or at least one clr token",
            ));
        }
        recovery.extend_from_slice(s.locs);
        if o.recover_at_last && s.depth >= 2 {
            recovery.push(s.depth - 2);
        }
        recovery.sort_unstable();
        recovery.dedup();
        match recovery.first() {
            None => {
                return Err(bad(
                    "reduction_loc",
                    "[]",
                    "the cache needs at least one recovery layer",
                ))
            }
            Some(0) => return Err(bad(
                "reduction_loc",
                0,
                "the first recovery layer must be >= 1 (the authors' code fails on an empty cache)",
            )),
            _ => {}
        }
    }
    let last_rec = recovery.last().copied();
    let mut n = n0;
    let mut pool_end = if c > 0 && !s.clc.map(|o| o.pool_clr).unwrap_or(false) {
        n0 - c
    } else {
        n0
    };
    let mut cache = 0usize;
    let mut cache_cap = 0usize;
    let mut max_len = n0;
    let mut blocks = Vec::with_capacity(s.depth);
    let mut taps = 0;
    for i in 0..s.depth {
        let len_in = n;
        let mut keep = None;
        let mut merge = None;
        match (s.locs.iter().position(|&l| l == i), s.reduction) {
            (None, _) | (_, Reduction::None) => {}
            (Some(j), Reduction::ToMe) => {
                let target = |j: usize| -> usize {
                    if s.keep_rates.len() > 1 {
                        s.keep_rates[j] as usize
                    } else {
                        // Python: int(P * kr ** (j + 1)).
                        (s.patches as f64 * s.keep_rates[0].powi(j as i32 + 1)) as usize
                    }
                };
                let prev = if j == 0 { s.patches } else { target(j - 1) };
                let r = prev.saturating_sub(target(j)).min((n - 1) / 2);
                if r > 0 {
                    merge = Some(r);
                    n -= r;
                }
            }
            (Some(j), Reduction::TopK | Reduction::EVit) => {
                let kr = s.keep_rates[if s.keep_rates.len() == 1 { 0 } else { j }];
                let k = keep_count(kr, n)?;
                // k == n-1 keeps everything: no pruning and no fused token (SPEC §4.2 item 6).
                if k < n - 1 {
                    keep = Some(k);
                    n = if s.reduction == Reduction::EVit {
                        2 + k
                    } else {
                        1 + k
                    };
                }
            }
        }
        let len_out = n;
        let mut recovered = 0;
        let mut carriers = None;
        if let Some(o) = &s.clc {
            if recovery.contains(&i) {
                pool_end = n;
                recovered = cache;
                n += cache;
                cache = 0;
            }
            if last_rec.is_some_and(|r| i < r) {
                let lo = if o.pool_cls { 0 } else { 1 };
                if o.include_gap && lo >= pool_end {
                    return Err(Error::Plan(format!(
                        "block {i}: the GAP carrier would average the empty range x[{lo}:{pool_end}] (the authors' code yields NaN logits here); lower the reduction or pass --clc_include_gap"
                    )));
                }
                if c > n {
                    return Err(Error::Plan(format!(
                        "block {i}: {c} clr carriers but only {n} tokens"
                    )));
                }
                carriers = Some((lo..pool_end, cache));
                cache += o.include_gap as usize + c;
                cache_cap = cache_cap.max(cache);
            }
        }
        let cls_tap = s.locs.contains(&i) || i + 1 == s.depth;
        taps += cls_tap as usize;
        max_len = max_len.max(n);
        blocks.push(BlockPlan {
            len_in,
            keep,
            merge,
            len_out,
            recovered,
            len_after: n,
            carriers,
            cls_tap,
        });
    }
    Ok(SeqPlan {
        blocks,
        max_len,
        cache_cap,
        taps,
        recovery,
    })
}
