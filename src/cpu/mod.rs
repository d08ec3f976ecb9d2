//! CPU reference of every op: plain Rust, f32 accumulation in the same order as the kernels
//! where the order matters, the oracle of every kernel test. Same module names as kernels/.
pub mod ats;
pub mod attn_score;
pub mod cla_head;
pub mod dense;
pub mod dpcknn;
pub mod dyvit;
pub mod merge;
pub mod packed;
pub mod prune;
pub mod token_cache;
pub mod tome;
pub mod topk;
pub(crate) mod wide;
