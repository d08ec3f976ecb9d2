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

/// Queries per block (one 16-row tile per warp, 4 warps; see kernels/flash.cu for why not two).
pub const QUERIES_PER_BLOCK: usize = 64;

/// The launch of the fused attention (addresses as in the module contract; 0 = none).
#[allow(clippy::too_many_arguments)]
pub fn flash_launch(
    dtype: DType,
    qkv: u64,
    batch: usize,
    n: usize,
    heads: usize,
    hd: usize,
    sizes: u64,
    out: u64,
    cls_probs: u64,
) -> Result<Launch> {
    if dtype == DType::F32 || !HEAD_DIMS.contains(&hd) {
        return Err(Error::Unsupported {
            what: format!("fused attention in {dtype} at head dimension {hd}"),
            supported: format!("f16 and bf16 at head dimension {HEAD_DIMS:?}"),
        });
    }
    if n == 0 || heads == 0 || batch == 0 {
        return Err(error::invalid(
            "n, heads, batch",
            format!("{n}, {heads}, {batch}"),
            "must be positive",
        ));
    }
    let u = |what, v| error::to_u32(what, v);
    Launch::new(
        "flash",
        &format!("attn_flash{hd}"),
        dtype,
        [
            u("query tiles", n.div_ceil(QUERIES_PER_BLOCK))?,
            u("heads", heads)?,
            u("batch", batch)?,
        ],
        [128, 1, 1],
        vec![
            Arg::Ptr(qkv),
            Arg::U32(u("n", n)?),
            Arg::U32(u("heads", heads)?),
            Arg::F32((hd as f64).powf(-0.5) as f32),
            Arg::Ptr(sizes),
            Arg::Ptr(out),
            Arg::Ptr(cls_probs),
        ],
    )
}
