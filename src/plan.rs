//! Sequence lengths, cache sizes and CLS taps of a whole forward, computed before any data
//! moves (SPEC §2.3–§2.5), so every buffer is allocated once.
//!
//! Every method of the paper has its count rule here (SPEC §4.1). ATS is the one method whose
//! lengths depend on the data: its plan holds upper bounds ([`SeqPlan::data_dependent`]).
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
    /// DPC-KNN clustering before the block: K_j = int(P·kr^{j+1}) clusters (non-last K ≤ 5 → 5,
    /// last 0 → 1) of the tokens between cls and the protected suffix (clr and every recovered
    /// token, SPEC §4.4). A keep-rate list holds the absolute counts.
    DpcKnn,
    /// SiT token slimming before the block: all non-cls tokens → K_j = int(P·kr^{j+1}) slots.
    Sit,
    /// PatchMerger before the block: all non-cls tokens → K_j = int(P·kr^{j+1}) queries.
    PatchMerger,
    /// ATS inside the attention: at most K_j − 1 unique samples (SPEC §4.7; the sample count
    /// depends on the data), K_j = int(kr^{j+1}·P) + 1. A keep-rate list holds K_j directly.
    Ats,
    /// DynamicViT before the block: keep int((n−1)·kr₀) of the n non-cls tokens with the cache,
    /// int(n₀·kr_j) without it (kr_j = kr^{j+1} for a single value), by predicted score.
    DynamicVit,
}

impl Reduction {
    /// The authors' model-name prefix (`""` for the plain ViT).
    pub fn prefix(self) -> &'static str {
        match self {
            Reduction::None => "",
            Reduction::TopK => "topk_",
            Reduction::EVit => "evit_",
            Reduction::ToMe => "tome_",
            Reduction::DpcKnn => "dpcknn_",
            Reduction::Sit => "sit_",
            Reduction::PatchMerger => "patchmerger_",
            Reduction::Ats => "ats_",
            Reduction::DynamicVit => "dyvit_",
        }
    }
    /// A human name.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::None => "no reduction",
            Reduction::TopK => "Top-K",
            Reduction::EVit => "EViT",
            Reduction::ToMe => "ToMe",
            Reduction::DpcKnn => "DPC-KNN",
            Reduction::Sit => "SiT",
            Reduction::PatchMerger => "PatchMerger",
            Reduction::Ats => "ATS",
            Reduction::DynamicVit => "DynamicViT",
        }
    }
    /// Whether the method reduces before the block (on its input) rather than inside it.
    pub fn before_block(self) -> bool {
        matches!(
            self,
            Reduction::DpcKnn | Reduction::Sit | Reduction::PatchMerger | Reduction::DynamicVit
        )
    }
    /// Whether a keep-rate list (more than one value) holds absolute counts rather than rates.
    fn absolute_list(self) -> bool {
        matches!(
            self,
            Reduction::ToMe
                | Reduction::DpcKnn
                | Reduction::Sit
                | Reduction::PatchMerger
                | Reduction::Ats
        )
    }
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
    /// A reduction applied to the block's input before the block (DPC-KNN, SiT, PatchMerger,
    /// DynamicViT).
    pub pre: Option<PreReduce>,
    /// Tokens entering the block (after `pre`).
    pub len_in: usize,
    /// ATS: the sample count K_j of this block (at most K_j − 1 tokens besides cls survive).
    pub sample: Option<usize>,
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

/// A reduction before the block: `[cls, middle…, suffix…]` of `len_before` tokens becomes
/// `[cls, out tokens…, suffix…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreReduce {
    /// Tokens before the reduction.
    pub len_before: usize,
    /// Clusters (DPC-KNN), slots (SiT, PatchMerger) or kept tokens (DynamicViT).
    pub out: usize,
    /// Protected tail tokens passed through unchanged (DPC-KNN only; 0 otherwise).
    pub suffix: usize,
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
    /// ATS: lengths depend on the data; every length above is an upper bound.
    pub data_dependent: bool,
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
    /// DPC-KNN's neighbours for the density (the authors' `k_neighbors`, 5).
    pub k_neighbors: usize,
}

use crate::error::invalid as bad;

/// Most blocks a plan accepts (the paper's deepest backbone has 24).
pub const MAX_DEPTH: usize = 1024;
/// Most tokens of an input sequence, 1 + patches + clr tokens (ViT-B/16 at 448 px has 785).
pub const MAX_TOKENS: usize = 1 << 16;

/// Plans a forward (SPEC §2.3's loop, with the lengths of §2.5).
pub fn plan(s: &PlanSpec<'_>) -> Result<SeqPlan> {
    if s.depth == 0 {
        return Err(bad("depth", 0, "must be positive"));
    }
    if s.depth > MAX_DEPTH {
        return Err(bad(
            "depth",
            s.depth,
            format!("larger than the limit {MAX_DEPTH}"),
        ));
    }
    if s.patches == 0 {
        return Err(bad("patches", 0, "must be positive"));
    }
    match s.patches.checked_add(s.num_clr) {
        Some(t) if t < MAX_TOKENS => {}
        _ => {
            return Err(bad(
                "patches",
                format!("{} + {} clr", s.patches, s.num_clr),
                format!("1 + patches + clr tokens must not exceed {MAX_TOKENS}"),
            ))
        }
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
        let absolute = s.reduction.absolute_list() && s.keep_rates.len() > 1;
        for &kr in s.keep_rates {
            if absolute {
                if !(kr >= 0.0 && kr.fract() == 0.0 && kr <= s.patches as f64 + 1.0) {
                    return Err(bad(
                        "keep_rate",
                        kr,
                        format!(
                            "a {} keep-rate list holds absolute token counts (whole numbers <= the patch count)",
                            s.reduction.name()
                        ),
                    ));
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
    // DPC-KNN's protected suffix: the clr tokens, then every recovered token (SPEC §4.4).
    let mut suffix = c;
    let single = s.keep_rates.len() == 1;
    // Python: kr ** (j + 1) (C pow, not repeated multiplication).
    let rate = |j: usize| -> f64 {
        if single {
            s.keep_rates[0].powf(j as f64 + 1.0)
        } else {
            s.keep_rates[j]
        }
    };
    // Python: int(P * kr ** (j + 1)), or the list's absolute count.
    let absolute = |j: usize| -> usize {
        if single {
            (s.patches as f64 * rate(j)) as usize
        } else {
            s.keep_rates[j] as usize
        }
    };
    let method = s.reduction.name();
    let kr_text = format!("{:?}", s.keep_rates);
    for i in 0..s.depth {
        let mut keep = None;
        let mut merge = None;
        let mut pre = None;
        let mut sample = None;
        let j = s.locs.iter().position(|&l| l == i);
        if let Some(j) = j.filter(|_| s.reduction.before_block()) {
            let fail = |why: String| {
                Error::Plan(format!(
                    "{method} before block {i} (keep_rate {kr_text}, reduction_loc {:?}): {why}",
                    s.locs
                ))
            };
            let (out, sfx) = match s.reduction {
                Reduction::DpcKnn => {
                    let mut k = absolute(j);
                    if single {
                        // dpcknn.py: k-NN with k = 5 needs 5 clusters downstream; the last
                        // layer may go down to 1.
                        if j + 1 != s.locs.len() && k <= 5 {
                            k = 5;
                        } else if j + 1 == s.locs.len() && k == 0 {
                            k = 1;
                        }
                    }
                    let m = n - 1 - suffix.min(n - 1);
                    if k > m || s.k_neighbors > m || s.k_neighbors == 0 {
                        return Err(fail(format!(
                            "{k} clusters with {} neighbours from {m} clusterable tokens (the authors' torch.topk fails here)",
                            s.k_neighbors
                        )));
                    }
                    (k, suffix)
                }
                Reduction::Sit | Reduction::PatchMerger => {
                    if n < 2 {
                        return Err(fail("no tokens besides cls to merge".into()));
                    }
                    (absolute(j), 0)
                }
                _ => {
                    // DynamicViT: dyvit.py's two keep formulas.
                    let k = if s.clc.is_some() {
                        if n < 2 {
                            return Err(fail("no tokens besides cls to rank".into()));
                        }
                        ((n - 2) as f64 * s.keep_rates[0]) as usize
                    } else {
                        ((n0 - 1) as f64 * rate(j)) as usize
                    };
                    if k > n - 1 {
                        return Err(fail(format!(
                            "keeps {k} of only {} tokens (the keep rates must decrease)",
                            n - 1
                        )));
                    }
                    (k, 0)
                }
            };
            pre = Some(PreReduce {
                len_before: n,
                out,
                suffix: sfx,
            });
            n = 1 + out + sfx;
        }
        let len_in = n;
        max_len = max_len.max(n);
        match (j, s.reduction) {
            (None, _) | (_, Reduction::None) => {}
            (_, r) if r.before_block() => {}
            (Some(j), Reduction::Ats) => {
                let k = if single {
                    (rate(j) * s.patches as f64) as usize + 1
                } else {
                    s.keep_rates[j] as usize
                };
                if k > 0 {
                    sample = Some(k);
                    n = 1 + ats_points(k).min(n - 1);
                }
            }
            (Some(j), Reduction::ToMe) => {
                let prev = if j == 0 { s.patches } else { absolute(j - 1) };
                let r = prev.saturating_sub(absolute(j)).min((n - 1) / 2);
                if r > 0 {
                    merge = Some(r);
                    n -= r;
                }
            }
            (Some(j), _) => {
                // Top-K and EViT.
                let kr = s.keep_rates[if single { 0 } else { j }];
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
                suffix += cache;
                cache = 0;
            }
            if last_rec.is_some_and(|r| i < r) {
                let lo = if o.pool_cls { 0 } else { 1 };
                if o.include_gap && lo >= pool_end {
                    return Err(Error::Plan(format!(
                        "{method} with keep_rate {kr_text} at reduction_loc {:?}, block {i}: the GAP carrier would average the empty range x[{lo}:{pool_end}] (the authors' code yields NaN logits here); raise the keep rate or pass --clc_include_gap",
                        s.locs
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
            pre,
            len_in,
            sample,
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
        data_dependent: s.reduction == Reduction::Ats,
    })
}

/// Number of ATS sample points for a sample count `k`: the length of
/// `torch.arange(1/(2k), (2k−1)/(2k), 1/k)`, i.e. ⌈(end − start)/step⌉ in double precision.
/// That is k − 1 for most k, but k for some (3, 7, 12, …) where the rounding of the quotient
/// lands just above k − 1; the authors' code then samples k points.
pub fn ats_points(k: usize) -> usize {
    ats_steps(k).count()
}

/// The ATS sample points for a sample count `k`, as torch's CPU arange makes them: start +
/// i·step in double precision, rounded to f32.
pub fn ats_steps(k: usize) -> impl Iterator<Item = f32> {
    let (start, end, step) = if k == 0 {
        (0.0, 0.0, 1.0)
    } else {
        let k2 = 2.0 * k as f64;
        (1.0 / k2, (k2 - 1.0) / k2, 2.0 / k2)
    };
    let count = ((end - start) / step).ceil().max(0.0) as usize;
    (0..count).map(move |i| (start + step * i as f64) as f32)
}
