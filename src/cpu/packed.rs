//! The CPU forward's f32 GEMM on AVX-512: weights packed once into column panels, an
//! AVX-512 register-tile microkernel, and the bias / GELU / residual applied to each tile while
//! it is in L1. Used by [`crate::vit::cpu`] when the CPU has AVX-512F; elsewhere the forward
//! uses the `gemm` crate ([`crate::cpu::dense::linear`]).
//!
//! Why: the `gemm` crate packs both operands on every call. At the 785-token shapes of a
//! 448 px ViT-B/16 that costs little, but after EViT's pruning (87, 17, 12 tokens) packing the
//! weights dominates: 23 GFLOP/s at M = 17 against 85 here on one core (`benches/dense.rs`).
//!
//! Determinism: every output element is one FMA chain over k = 0..K in order, computed by
//! one task; tasks split rows and columns, never K. Results are bit-identical whatever the
//! thread count.
use crate::Result;

/// Columns of a packed panel (two 16-lane vectors).
pub const NR: usize = 32;
/// Rows of a register tile (12 × 2 accumulators + 2 B vectors + 1 broadcast ≤ 32 registers).
pub const MR: usize = 12;

/// Whether this CPU runs the packed path (AVX-512F, detected at run time).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight `w [n, k]` (nn.Linear layout) packed into ⌈n/32⌉ panels `[k][32]` (zero-padded
/// columns), with the address and length of the slice it was packed from.
#[derive(Debug)]
pub struct PackedMat {
    pub n: usize,
    pub k: usize,
    data: Vec<f32>,
    src: (usize, usize),
}

impl PackedMat {
    /// Packs `w` [n, k].
    pub fn new(w: &[f32], n: usize, k: usize) -> Result<Self> {
        crate::error::check_len("packed weight", w.len(), crate::error::mul("w", &[n, k])?)?;
        let np = n.div_ceil(NR);
        let mut data =
            crate::error::try_zeroed("packed weight", crate::error::mul("w", &[np, k, NR])?)?;
        for (p, panel) in data.chunks_exact_mut(k * NR).enumerate() {
            for j in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + j) * k..][..k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + j] = v;
                }
            }
        }
        Ok(PackedMat {
            n,
            k,
            data,
            src: (w.as_ptr() as usize, w.len()),
        })
    }

    /// Whether this was packed from `w` (same slice: address and length).
    pub fn is_for(&self, w: &[f32]) -> bool {
        self.src == (w.as_ptr() as usize, w.len())
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }
}

/// What a tile's sums become.
#[derive(Clone, Copy)]
pub enum Epi<'a> {
    /// y = acc (+ bias)
    Store,
    /// y = GELU(acc + bias) (the forward's vectorizable GELU, [`crate::cpu::dense::gelu_inplace`])
    Gelu,
    /// y += ls ⊙ (acc + bias), or y += acc + bias: the residual branch added into the stream.
    AddTo(Option<&'a [f32]>),
}

/// A raw pointer that may cross threads; tasks write disjoint tiles (see each SAFETY note).
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: only used for writes to disjoint regions by different tasks.
unsafe impl Send for Ptr {}
// SAFETY: as above.
unsafe impl Sync for Ptr {}

impl Ptr {
    /// The pointer (a method, so that closures capture the whole `Ptr`, which is Send).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Rows per task chunk: the chunk's rows of x (× KC) stay in L2 while the task's panels pass.
const MC: usize = 8 * MR;
/// Panels per task.
const NP: usize = 4;
/// The K block: a task walks K in blocks of KC, keeping its partial sums in a buffer of
/// MC × 32·NP, so that with K = 3072 (fc2) the rows of x it rereads still fit L2. The sums are
/// stored and reloaded exactly: each element is still one FMA chain over k in order.
const KC: usize = 768;

/// y[m, n] (row stride `y_rs`) = epi(x[m, k] (row stride `x_rs`) · wᵀ + bias), on AVX-512.
/// Tasks are (row chunk, panel group) tiles, spread over rayon when the product is large.
///
/// Panics when a buffer is too short or AVX-512F is missing (callers check [`available`]).
#[allow(clippy::too_many_arguments)]
pub fn linear(
    x: &[f32],
    x_rs: usize,
    m: usize,
    w: &PackedMat,
    bias: Option<&[f32]>,
    y: &mut [f32],
    y_rs: usize,
    epi: Epi<'_>,
) {
    let (n, k) = (w.n, w.k);
    assert!(available(), "packed::linear needs AVX-512F");
    assert!(
        x_rs >= k
            && y_rs >= n
            && (m == 0 || (x.len() >= (m - 1) * x_rs + k && y.len() >= (m - 1) * y_rs + n))
            && bias.is_none_or(|b| b.len() >= n)
            && match epi {
                Epi::AddTo(Some(g)) => g.len() >= n,
                _ => true,
            },
        "packed::linear: buffer sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    let chunks = m.div_ceil(MC);
    let groups = w.panels().div_ceil(NP);
    let yp = Ptr(y.as_mut_ptr());
    let task = |t: usize| {
        let (c, g) = (t / groups, t % groups);
        let rows = c * MC..(m).min((c + 1) * MC);
        let panels = g * NP..w.panels().min((g + 1) * NP);
        // SAFETY: AVX-512F is present (asserted); the task reads rows `rows` of x and panels
        // `panels` of w (inside their buffers by the assert) and writes only y's tile
        // rows × [32·panels.start, min(n, 32·panels.end)), disjoint from every other task's.
        unsafe {
            tile_task(
                x.as_ptr(),
                x_rs,
                rows,
                w.data.as_ptr(),
                n,
                k,
                panels,
                bias,
                yp.get(),
                y_rs,
                epi,
            )
        }
    };
    let tasks = chunks * groups;
    if m * n * k >= 1 << 20 && tasks > 1 {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// c[m, n] (row stride `ldc`) = a[m, k] (row stride `lda`) · b, where b holds ⌈n/32⌉ packed
/// panels `[k][32]` (columns past n are read and ignored); one thread.
///
/// # Safety
/// AVX-512F ([`available`]); a's m rows of k, b's ⌈n/32⌉·k·32 values and c's m rows of n are
/// inside their buffers.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
pub unsafe fn gemm_serial(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    n: usize,
    c: *mut f32,
    ldc: usize,
) {
    let np = n.div_ceil(NR);
    for r0 in (0..m).step_by(MC) {
        for p0 in (0..np).step_by(NP) {
            tile_task(
                a,
                lda,
                r0..m.min(r0 + MC),
                b,
                n,
                k,
                p0..np.min(p0 + NP),
                None,
                c,
                ldc,
                Epi::Store,
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn tile_task(
    x: *const f32,
    x_rs: usize,
    rows: std::ops::Range<usize>,
    bdata: *const f32,
    n: usize,
    k: usize,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    y: *mut f32,
    y_rs: usize,
    epi: Epi<'_>,
) {
    const LDC: usize = NP * NR;
    debug_assert!(rows.len() <= MC && panels.len() <= NP);
    // Partial sums of the task's rows × panels, uninitialized (zeroing 48 KB per call cost
    // more than the attention's small GEMMs): the first K block writes every value read later.
    let mut cbuf = std::mem::MaybeUninit::<[f32; MC * LDC]>::uninit();
    let cb = cbuf.as_mut_ptr().cast::<f32>();
    let mut k0 = 0;
    while k0 < k {
        let kl = KC.min(k - k0);
        for (pi, p) in panels.clone().enumerate() {
            let b = bdata.add((p * k + k0) * NR);
            let mut i0 = rows.start;
            while i0 < rows.end {
                let r = MR.min(rows.end - i0);
                let c = cb.add((i0 - rows.start) * LDC + pi * NR);
                micro(r, kl, x.add(i0 * x_rs + k0), x_rs, b, c, LDC, k0 > 0);
                i0 += r;
            }
        }
        k0 += kl;
    }
    for (pi, p) in panels.enumerate() {
        let n0 = p * NR;
        let cols = NR.min(n - n0);
        for i in 0..rows.len() {
            // SAFETY: row i, columns pi·32 .. pi·32 + cols of the buffer were written by the
            // first K block (k ≥ 1; with k = 0 nothing was, and the sums are 0).
            if k == 0 {
                std::ptr::write_bytes(cb.add(i * LDC + pi * NR), 0, cols);
            }
            let t = std::slice::from_raw_parts_mut(cb.add(i * LDC + pi * NR), cols);
            // SAFETY (caller): row rows.start + i < m and columns n0 .. n0 + cols ≤ n are
            // inside y.
            let out = std::slice::from_raw_parts_mut(y.add((rows.start + i) * y_rs + n0), cols);
            epilogue(t, out, bias.map(|b| &b[n0..n0 + cols]), epi, n0);
        }
    }
}

/// Applies `epi` to one tile row `t` (the sums) into `out`.
#[inline(always)]
fn epilogue(t: &mut [f32], out: &mut [f32], bias: Option<&[f32]>, epi: Epi<'_>, n0: usize) {
    if let Some(b) = bias {
        for (v, bv) in t.iter_mut().zip(b) {
            *v += bv;
        }
    }
    match epi {
        Epi::Store => out.copy_from_slice(t),
        Epi::Gelu => {
            for (o, &v) in out.iter_mut().zip(t.iter()) {
                *o = super::dense::gelu_fast(v);
            }
        }
        Epi::AddTo(None) => {
            for (o, v) in out.iter_mut().zip(t.iter()) {
                *o += v;
            }
        }
        Epi::AddTo(Some(g)) => {
            for ((o, v), gv) in out.iter_mut().zip(t.iter()).zip(&g[n0..]) {
                *o += gv * v;
            }
        }
    }
}

/// c[r × 32] (row stride `ldc`) (+)= a[r rows, row stride `lda`, k contiguous] · b[k][32];
/// with `load` the sums go on from c's values (stored and reloaded exactly: still one FMA
/// chain per element over k in order).
///
/// # Safety
/// AVX-512F; r ≤ MR; a's r rows of k, b's k·32 and c's r rows of 32 are readable/writable.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
pub unsafe fn micro(
    r: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    #[cfg(target_arch = "x86_64")]
    match r {
        12 => kern::<12>(k, a, lda, b, c, ldc, load),
        11 => kern::<11>(k, a, lda, b, c, ldc, load),
        10 => kern::<10>(k, a, lda, b, c, ldc, load),
        9 => kern::<9>(k, a, lda, b, c, ldc, load),
        8 => kern::<8>(k, a, lda, b, c, ldc, load),
        7 => kern::<7>(k, a, lda, b, c, ldc, load),
        6 => kern::<6>(k, a, lda, b, c, ldc, load),
        5 => kern::<5>(k, a, lda, b, c, ldc, load),
        4 => kern::<4>(k, a, lda, b, c, ldc, load),
        3 => kern::<3>(k, a, lda, b, c, ldc, load),
        2 => kern::<2>(k, a, lda, b, c, ldc, load),
        1 => kern::<1>(k, a, lda, b, c, ldc, load),
        _ => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (r, k, a, lda, b, c, ldc, load);
}

/// The register tile: R rows × 32 columns in 2R zmm accumulators, one FMA chain per element
/// over k in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kern<const R: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if load {
        for (i, row) in acc.iter_mut().enumerate() {
            row[0] = _mm512_loadu_ps(c.add(i * ldc));
            row[1] = _mm512_loadu_ps(c.add(i * ldc + 16));
        }
    }
    let (mut ap, mut bp) = (a, b);
    for _ in 0..k {
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(*ap.add(i * lda));
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
        }
        ap = ap.add(1);
        bp = bp.add(NR);
    }
    for (i, row) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(i * ldc), row[0]);
        _mm512_storeu_ps(c.add(i * ldc + 16), row[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 product, every shape class: tails in m (1..=13) and n (not a multiple
    /// of 32), k = 1, strides wider than the data, each epilogue.
    #[test]
    fn matches_f64_reference() {
        if !available() {
            return;
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 33),
            (25, 64, 200),
            (97, 40, 64),
            (5, 300, 31),
        ] {
            let x_rs = k + 3;
            let y_rs = n + 5;
            let x: Vec<f32> = (0..m * x_rs)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.1)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 19) as f32 - 9.0) * 0.07)
                .collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let ls: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.003).collect();
            let Ok(pw) = PackedMat::new(&w, n, k) else {
                panic!("pack")
            };
            assert!(pw.is_for(&w));
            let exact = |i: usize, j: usize| {
                let s: f64 = (0..k)
                    .map(|t| x[i * x_rs + t] as f64 * w[j * k + t] as f64)
                    .sum();
                s + bias[j] as f64
            };
            let tol = |e: f64| 1e-5 * (1.0 + e.abs()) * (k as f64).sqrt();
            let mut y = vec![7f32; m * y_rs];
            linear(&x, x_rs, m, &pw, Some(&bias), &mut y, y_rs, Epi::Store);
            let mut z = vec![0.5f32; m * y_rs];
            linear(
                &x,
                x_rs,
                m,
                &pw,
                Some(&bias),
                &mut z,
                y_rs,
                Epi::AddTo(Some(&ls)),
            );
            let mut g = vec![0f32; m * y_rs];
            linear(&x, x_rs, m, &pw, Some(&bias), &mut g, y_rs, Epi::Gelu);
            for i in 0..m {
                for j in 0..n {
                    let e = exact(i, j);
                    let v = y[i * y_rs + j] as f64;
                    assert!(
                        (v - e).abs() <= tol(e),
                        "({m},{k},{n}) y[{i},{j}] {v} vs {e}"
                    );
                    let ez = 0.5 + ls[j] as f64 * e;
                    let vz = z[i * y_rs + j] as f64;
                    assert!((vz - ez).abs() <= tol(ez), "AddTo {vz} vs {ez}");
                    let eg = super::super::dense::gelu(e as f32) as f64;
                    let vg = g[i * y_rs + j] as f64;
                    assert!((vg - eg).abs() <= tol(eg), "Gelu {vg} vs {eg}");
                }
                // Padding columns are untouched.
                for j in n..y_rs {
                    assert_eq!(y[i * y_rs + j], 7.0);
                }
            }
        }
    }
}
