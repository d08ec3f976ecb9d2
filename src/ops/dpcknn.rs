//! DPC-KNN clustering and the weighted merge (SPEC §4.4), per sample, on any [`Device`].
//!
//! # Contract
//! The rules of [`crate::cpu::dpcknn`] (the oracle), for `x` [batch, m, d] in any float dtype:
//! - distances `d_uv = ‖x_u − x_v‖/√d`, torch's matmul form `√max(|u|²+|v|²−2u·v, 0)` for
//!   m > 25 (so the self-distance can be slightly above 0), the direct form for m ≤ 25;
//! - density `ρ_u = exp(−mean of the squared knn smallest distances of row u)` (itself
//!   included) `+ noise[u]` when a noise vector is given; 1 ≤ knn ≤ 16;
//! - `δ_u = min {d_uv : ρ_v > ρ_u}`, or the largest distance of the sample;
//! - centres `[batch, k]`: the k largest `δ·ρ` in **descending** order, ties by **lower
//!   index** (the [`crate::ops::topk`] kernel); cluster j is the j-th centre;
//! - `idx_cluster` [batch, m]: the nearest centre, the **first centre on ties**; every centre
//!   is forced into its own cluster;
//! - [`merge`]: `out[j] = Σ_{u ∈ j, ascending} x_u·(w_u / (Σ_{u∈j} w_u + 1e-6))`, f32
//!   accumulation, one thread per output channel: deterministic, no atomics.
//!
//! **Precision.** The kernels accumulate the dot products in f32; the reference accumulates
//! them in f64 and rounds once. Distances therefore agree to rounding (of order
//! `√(ε·(|u|²+|v|²))/√d` near 0, where the matmul form cancels), and a selection that hinges on
//! a tie within rounding can differ. The density uses the device `expf` (≤ 2 ulp). On inputs
//! whose products are exact in f32 (e.g. small integers) every step agrees bit for bit, ties
//! included; the property tests use such inputs for the selections.
//!
//! **NaN policy.** NaN tokens give NaN (direct form) or 0 (matmul form, as `max(NaN, 0)`)
//! distances; comparisons with NaN are false, so NaN is never denser or nearer. The result
//! is then unspecified, but every index stays in range.
use super::check_buf;
use crate::kernels::{Arg, Launch, ROW_GRID_CAP};
use crate::{error, Buffer, Device, Element, Result};

/// Largest number of neighbours of the density (`CLCA_DPC_MAX_KNN` in kernels/dpcknn.cu).
pub const MAX_KNN: usize = 16;
const TILE: u32 = 16;
const THREADS: u32 = 128;

/// The per-sample intermediates of [`cluster`], preallocated for (batch, m, k).
pub struct DpcWorkspace<D: Device> {
    batch: usize,
    m: usize,
    k: usize,
    /// Distances [batch, m, m].
    pub dist: D::Buf<f32>,
    /// Squared row norms [batch, m] (matmul form only).
    pub norms: D::Buf<f32>,
    /// Densities ρ [batch, m].
    pub density: D::Buf<f32>,
    /// Row maxima of the distances [batch, m].
    pub rowmax: D::Buf<f32>,
    /// Scores δ·ρ [batch, m].
    pub score: D::Buf<f32>,
    /// The non-centres [batch, m − k] (ascending), a by-product of the selection.
    pub rest: D::Buf<u32>,
}

impl<D: Device> DpcWorkspace<D> {
    /// Buffers for `batch` samples of `m` tokens clustered into `k`.
    pub fn new(dev: &D, batch: usize, m: usize, k: usize) -> Result<Self> {
        if k > m {
            return Err(error::invalid(
                "k",
                k,
                format!("more clusters than tokens ({m})"),
            ));
        }
        let bm = error::mul("batch*m", &[batch, m])?;
        Ok(DpcWorkspace {
            batch,
            m,
            k,
            dist: dev.zeros(error::mul("batch*m*m", &[batch, m, m])?)?,
            norms: dev.zeros(bm)?,
            density: dev.zeros(bm)?,
            rowmax: dev.zeros(bm)?,
            score: dev.zeros(bm)?,
            rest: dev.zeros(error::mul("batch*(m-k)", &[batch, m - k])?)?,
        })
    }
}

fn check_x(x_len: usize, batch: usize, m: usize, d: usize) -> Result<()> {
    error::to_u32("batch", batch)?;
    error::to_u32("m", m)?;
    error::to_u32("d", d)?;
    error::check_len("x", x_len, error::mul("batch*m*d", &[batch, m, d])?)
}

/// Clusters every sample of `x` [batch, m, d] into `k` clusters with `knn` neighbours:
/// `centers` [batch, k] and `idx_cluster` [batch, m]; `noise` [batch, m] is added to the
/// densities when given. Six launches, whatever the batch.
#[allow(clippy::too_many_arguments)]
pub fn cluster<D: Device, T: Element>(
    dev: &D,
    x: &D::Buf<T>,
    batch: usize,
    m: usize,
    d: usize,
    k: usize,
    knn: usize,
    noise: Option<&D::Buf<f32>>,
    ws: &mut DpcWorkspace<D>,
    idx_cluster: &mut D::Buf<u32>,
    centers: &mut D::Buf<u32>,
) -> Result<()> {
    check_x(x.len(), batch, m, d)?;
    if k == 0 || k > m || knn == 0 || knn > m {
        return Err(error::invalid(
            "clusters",
            format!("k {k}, neighbours {knn}, tokens {m}"),
            "need 1 <= k <= m and 1 <= neighbours <= m",
        ));
    }
    if knn > MAX_KNN {
        return Err(crate::Error::LaunchLimit {
            what: "DPC-KNN neighbours",
            value: knn as u64,
            limit: MAX_KNN as u64,
        });
    }
    if (ws.batch, ws.m, ws.k) != (batch, m, k) {
        return Err(crate::Error::Shape {
            arg: "ws",
            expected: format!("a workspace for batch {batch}, m {m}, k {k}"),
            got: format!("batch {}, m {}, k {}", ws.batch, ws.m, ws.k),
        });
    }
    let bm = error::mul("batch*m", &[batch, m])?;
    if let Some(z) = noise {
        check_buf("noise", z, bm)?;
    }
    check_buf("idx_cluster", idx_cluster, bm)?;
    check_buf("centers", centers, error::mul("batch*k", &[batch, k])?)?;
    if batch == 0 {
        return Ok(());
    }
    let (b32, m32, d32) = (
        error::to_u32("batch", batch)?,
        error::to_u32("m", m)?,
        error::to_u32("d", d)?,
    );
    let matmul = m > 25;
    let sqrt_d = (d as f64).sqrt() as f32;
    let tiles = error::to_u32("m tiles", m.div_ceil(TILE as usize))?;
    let rows = error::to_u32("m blocks", m.div_ceil(THREADS as usize))?;
    let mut launches = Vec::with_capacity(6);
    if matmul {
        let warps = THREADS / 32;
        launches.push(Launch::new(
            "dpcknn",
            "dpc_sqnorms",
            T::DTYPE,
            [error::to_u32("m", m.div_ceil(warps as usize))?, b32, 1],
            [THREADS, 1, 1],
            vec![
                Arg::Ptr(x.addr()),
                Arg::U32(b32),
                Arg::U32(m32),
                Arg::U32(d32),
                Arg::Ptr(ws.norms.addr_mut()),
            ],
        )?);
    }
    launches.push(Launch::new(
        "dpcknn",
        "dpc_distances",
        T::DTYPE,
        [tiles, tiles, b32],
        [TILE, TILE, 1],
        vec![
            Arg::Ptr(x.addr()),
            Arg::Ptr(ws.norms.addr()),
            Arg::U32(b32),
            Arg::U32(m32),
            Arg::U32(d32),
            Arg::U32(matmul as u32),
            Arg::F32(sqrt_d),
            Arg::Ptr(ws.dist.addr_mut()),
        ],
    )?);
    launches.push(Launch::new(
        "dpcknn",
        "dpc_density",
        crate::DType::F32,
        [rows, b32, 1],
        [THREADS, 1, 1],
        vec![
            Arg::Ptr(ws.dist.addr()),
            Arg::Ptr(noise.map_or(0, |z| z.addr())),
            Arg::U32(b32),
            Arg::U32(m32),
            Arg::U32(error::to_u32("knn", knn)?),
            Arg::Ptr(ws.density.addr_mut()),
            Arg::Ptr(ws.rowmax.addr_mut()),
        ],
    )?);
    launches.push(Launch::new(
        "dpcknn",
        "dpc_score",
        crate::DType::F32,
        [rows, b32, 1],
        [THREADS, 1, 1],
        vec![
            Arg::Ptr(ws.dist.addr()),
            Arg::Ptr(ws.density.addr()),
            Arg::Ptr(ws.rowmax.addr()),
            Arg::U32(b32),
            Arg::U32(m32),
            Arg::Ptr(ws.score.addr_mut()),
        ],
    )?);
    launches.push(super::topk::launch_topk(
        crate::DType::F32,
        ws.score.addr(),
        batch,
        m,
        k,
        centers.addr_mut(),
        ws.rest.addr_mut(),
    )?);
    launches.push(Launch::new(
        "dpcknn",
        "dpc_assign",
        crate::DType::F32,
        [
            error::to_u32("batch", batch.min(ROW_GRID_CAP as usize))?,
            1,
            1,
        ],
        [256, 1, 1],
        vec![
            Arg::Ptr(ws.dist.addr()),
            Arg::Ptr(centers.addr()),
            Arg::U32(b32),
            Arg::U32(m32),
            Arg::U32(error::to_u32("k", k)?),
            Arg::Ptr(idx_cluster.addr_mut()),
        ],
    )?);
    for l in &launches {
        // SAFETY: x holds batch*m*d elements, noise (when given) and idx_cluster batch*m,
        // centers batch*k (checked above); the workspace was built for (batch, m, k), so dist
        // holds batch*m*m, norms/density/rowmax/score batch*m and rest batch*(m-k): exactly
        // what the kernels read and write. A null noise pointer is allowed by dpc_density.
        unsafe { dev.launch(l)? };
    }
    Ok(())
}

/// Merges `x` [batch, m, d] into `out` [batch, k, d] by `idx_cluster` [batch, m] (values < k;
/// trusted, as produced by [`cluster`]: a token with an index ≥ k joins no cluster) with
/// `weight` [batch, m] (None = all 1).
#[allow(clippy::too_many_arguments)]
pub fn merge<D: Device, T: Element>(
    dev: &D,
    x: &D::Buf<T>,
    batch: usize,
    m: usize,
    d: usize,
    idx_cluster: &D::Buf<u32>,
    k: usize,
    weight: Option<&D::Buf<f32>>,
    out: &mut D::Buf<T>,
) -> Result<()> {
    check_x(x.len(), batch, m, d)?;
    let bm = error::mul("batch*m", &[batch, m])?;
    check_buf("idx_cluster", idx_cluster, bm)?;
    if let Some(w) = weight {
        check_buf("weight", w, bm)?;
    }
    check_buf("out", out, error::mul("batch*k*d", &[batch, k, d])?)?;
    if batch == 0 || k == 0 || d == 0 {
        return Ok(());
    }
    let l = Launch::new(
        "dpcknn",
        "dpc_merge",
        T::DTYPE,
        [error::to_u32("k", k)?, error::to_u32("batch", batch)?, 1],
        [256, 1, 1],
        vec![
            Arg::Ptr(x.addr()),
            Arg::Ptr(idx_cluster.addr()),
            Arg::Ptr(weight.map_or(0, |w| w.addr())),
            Arg::U32(error::to_u32("batch", batch)?),
            Arg::U32(error::to_u32("m", m)?),
            Arg::U32(error::to_u32("d", d)?),
            Arg::U32(error::to_u32("k", k)?),
            Arg::Ptr(out.addr_mut()),
        ],
    )?;
    // SAFETY: x holds batch*m*d, idx_cluster and weight (when given) batch*m, out batch*k*d
    // elements (checked above); dpc_merge reads and writes exactly those, null weight allowed.
    unsafe { dev.launch(&l) }
}
