//! Fused multi-head attention for the 16-bit storage types (kernels/flash.cu).
//!
//! # Contract
//! `qkv` [batch, n, 3, heads, hd] in `T` (the qkv projection's output, bias included), 16-byte
//! aligned; `out` [batch, n, heads·hd] in `T` = softmax((q·scale)_T · kᵀ + log sizes) · v per
//! head, heads concatenated in order; `sizes` [batch, n] f32 (ToMe's token sizes) or none;
//! `cls_probs` [batch, heads, n] f32 = the cls query's probabilities, or none. q·scale is rounded
//! to `T` before the product (timm's `q * scale` under autocast); scores and the softmax are f32;
//! P is rounded to `T` before P·v, unnormalized, and O is divided by the f32 row sum after.
//! Rows of any length (keys stream in tiles of 64). NaN and ±inf in q/k/v propagate as in the
//! unfused softmax; a key of size 0 gets weight 0.
use crate::kernels::{Arg, Launch};
use crate::{error, DType, Error, Result};

/// Head dimensions the kernel is built for.
pub const HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// Queries a block of the fused kernel takes (4 warps of 16-row tiles). Same contract and the
/// same bits: a query's arithmetic does not depend on how many tiles its warp holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashTile {
    /// 64 queries a block, one tile per warp: the default (measured faster than two tiles
    /// with synchronous K/V loads; see kernels/flash.cu).
    Q64,
    /// 128 queries a block, two tiles per warp, head dimensions 32 and 64 only: twice the
    /// math per shared-memory fragment, half the resident warps. For A/B timing on a GPU.
    Q128,
}

impl FlashTile {
    /// Queries a block.
    pub fn queries(self) -> usize {
        match self {
            FlashTile::Q64 => 64,
            FlashTile::Q128 => 128,
        }
    }

    /// Head dimensions this tile is built for.
    pub fn head_dims(self) -> &'static [usize] {
        match self {
            FlashTile::Q64 => &HEAD_DIMS,
            FlashTile::Q128 => &HEAD_DIMS[..2],
        }
    }

    /// Whether this tile has a kernel for storage `dtype` (f16, bf16) at head dimension `hd`;
    /// the one check behind the launch, the model's default path and `set_attention`.
    pub fn check(self, dtype: DType, hd: usize) -> Result<()> {
        if dtype == DType::F32 || !self.head_dims().contains(&hd) {
            return Err(Error::Unsupported {
                what: format!("fused attention ({self:?}) in {dtype} at head dimension {hd}"),
                supported: format!(
                    "f16 and bf16 at head dimension {:?} ({self:?})",
                    self.head_dims()
                ),
            });
        }
        Ok(())
    }
}

/// Which queries a fused-attention launch computes; the keys are always all n tokens, and each
/// query's arithmetic (so its output and, for cls, its probabilities) is the same bits in every
/// mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashQueries {
    /// Every query: `out` [batch, n, heads·hd].
    All,
    /// The first query tile only (tokens 0 .. min(n, [`FlashTile::queries`])), written to their
    /// rows of `out` [batch, n, heads·hd]. With `cls_probs`, the cls row for the cost of one
    /// tile: what a Top-K selection needs before its attention.
    FirstTile,
    /// cls and the non-cls tokens `idx` [batch, k] (token 1 + idx[j], as the selection writes
    /// them, each < n − 1) into compact rows `out` [batch, 1 + k, heads·hd], in that order, by
    /// the query-map kernels (64-query tiles whatever the tile asked for: the same bits).
    Selected {
        /// Address of idx (u32).
        idx: u64,
        /// Selected tokens per image (k ≤ n − 1).
        k: usize,
    },
}

/// The launch of the fused attention (addresses as in the module contract; 0 = none).
#[allow(clippy::too_many_arguments)]
pub fn flash_launch(
    dtype: DType,
    tile: FlashTile,
    qkv: u64,
    batch: usize,
    n: usize,
    heads: usize,
    hd: usize,
    sizes: u64,
    out: u64,
    cls_probs: u64,
) -> Result<Launch> {
    flash_launch_queries(
        dtype,
        tile,
        qkv,
        batch,
        n,
        heads,
        hd,
        sizes,
        FlashQueries::All,
        out,
        cls_probs,
    )
}

/// [`flash_launch`] for the queries `queries` only (see [`FlashQueries`] for `out`'s layout).
#[allow(clippy::too_many_arguments)]
pub fn flash_launch_queries(
    dtype: DType,
    tile: FlashTile,
    qkv: u64,
    batch: usize,
    n: usize,
    heads: usize,
    hd: usize,
    sizes: u64,
    queries: FlashQueries,
    out: u64,
    cls_probs: u64,
) -> Result<Launch> {
    tile.check(dtype, hd)?;
    if n == 0 || heads == 0 || batch == 0 {
        return Err(error::invalid(
            "n, heads, batch",
            format!("{n}, {heads}, {batch}"),
            "must be positive",
        ));
    }
    let u = |what, v| error::to_u32(what, v);
    let mut args = vec![
        Arg::Ptr(qkv),
        Arg::U32(u("n", n)?),
        Arg::U32(u("heads", heads)?),
        Arg::F32((hd as f64).powf(-0.5) as f32),
        Arg::Ptr(sizes),
    ];
    let wide = if tile == FlashTile::Q128 { "w" } else { "" };
    let (name, tiles) = match queries {
        FlashQueries::All => (format!("attn_flash{hd}{wide}"), n.div_ceil(tile.queries())),
        FlashQueries::FirstTile => (format!("attn_flash{hd}{wide}"), 1),
        FlashQueries::Selected { idx, k } => {
            if k >= n {
                return Err(error::invalid(
                    "k",
                    k,
                    format!("must be at most n − 1 = {}", n - 1),
                ));
            }
            args.extend([Arg::U32(u("queries", k + 1)?), Arg::Ptr(idx)]);
            (format!("attn_flash{hd}q"), (k + 1).div_ceil(64))
        }
    };
    args.extend([Arg::Ptr(out), Arg::Ptr(cls_probs)]);
    Launch::new(
        "flash",
        &name,
        dtype,
        [
            u("query tiles", tiles)?,
            u("heads", heads)?,
            u("batch", batch)?,
        ],
        [128, 1, 1],
        args,
    )
}
