//! # clca — token-reduced ViT kernels with Cross-Layer Cache Aggregation
//!
//! Hand-written CUDA kernels, each with a Rust CPU reference under one contract, for running
//! Vision Transformers with token reduction and Cross-Layer Cache Aggregation (Rios et al.,
//! ICASSP 2025; the authors' code is arkel23/CLCA).
//!
//! ## Support matrix
//!
//! | op family | ops | f32 | f16 | bf16 | CPU reference | host shim | CUDA |
//! |---|---|---|---|---|---|---|---|
//! | [`ops::attn_score`] | CLS-attention scores from probs / fused from q·K; fused score→top-k | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | [`ops::topk`] | per-row top-k + complement | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | [`ops::prune`] | Top-K prune, EViT prune, fused prune | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | [`ops::token_cache`] | take carriers (GAP + clr), recover, copy and gather tokens | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | [`ops::tome`] | ToMe metric, bipartite match, merge plan, size-weighted merge, recovered sizes | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | [`ops::cla_head`] | CLA head (folded BN + grouped conv + GELU; linear variant), linear | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | [`ops::merge`] | SiT / PatchMerger soft merge (token-axis softmax + weighted sum, one launch) | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | [`ops::dyvit`] | DynamicViT predictor: δ-weighted pooling of the upper half, 2-class log-softmax + keep score | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | [`ops::dpcknn`] | DPC-KNN distances, k-NN density, δ·ρ, centres, assignment, weighted merge | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | [`ops::ats`] | ATS significance, CDF, sampling, sorted unique ids (count on the device) | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
//!
//! Storage is f32, f16 or bf16; every kernel accumulates in f32. Scores are always f32,
//! indices u32.
//!
//! ## Contracts
//! - **Selection** ([`ops::topk`]): k largest in descending order, ties by lower index;
//!   complement ascending; −0 == +0; NaN ranks above +inf and NaNs tie; deterministic.
//! - **Pruning** ([`ops::prune`]): [cls, kept in selection order (, fused)] (SPEC §4.2).
//! - **ToMe** ([`ops::tome`]): best b token first index on ties; sources by descending best
//!   score, ties by lower index, cls never; [unmerged a ascending, b]; deterministic, bit-exact
//!   against the reference.
//! - **Cache** ([`ops::token_cache`]): GAP first, then the last C tokens; recovered at the tail.
//! - **Planning** ([`plan`]): every sequence length and buffer size is known before data moves.
//!
//! ## Backends
//! [`cpu`] is the reference (the test oracle). Kernels run through a [`Device`]:
//! [`HostShim`] runs the CUDA sources on the CPU (always available; used by the tests on
//! every CI run) and, with the `cuda` feature, `cuda::CudaDevice` runs them on a GPU.
#![deny(clippy::unwrap_used, clippy::expect_used)]
// No panics at the boundary (docs/reliability.md): outside tests, no `panic!`, `todo!`,
// `unimplemented!` or `unreachable!` either; internal invariants are `assert!`s guarding unsafe
// code, and sizes from users are checked products (the fuzz targets run with overflow checks).
#![cfg_attr(
    not(test),
    deny(
        clippy::panic,
        clippy::todo,
        clippy::unimplemented,
        clippy::unreachable
    )
)]
// Kernel-shaped code: explicit index loops and long argument lists mirror the CUDA signatures.
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

pub mod capi;
pub mod cpu;
pub mod device;
pub mod dtype;
pub mod error;
pub mod kernels;
pub mod ops;
pub mod plan;
pub mod vit;

#[cfg(feature = "cuda")]
pub mod cuda;

pub use device::{Buffer, Device, HostBuf, HostShim};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use half::{bf16, f16};
