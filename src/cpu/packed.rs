//! The CPU forward's f32 GEMM on AVX-512 or AVX2 + FMA: weights packed once into column
//! panels, x packed per call into row tiles, a register-tile microkernel, and the bias /
//! GELU / residual applied to each tile while it is in L1. Used by [`crate::vit::cpu`] when
//! the CPU has either ISA ([`detect`]); elsewhere the forward uses the `gemm` crate
//! ([`crate::cpu::dense::linear`]).
//!
//! Why: the `gemm` crate packs both operands on every call. At the 785-token shapes of a
//! 448 px ViT-B/16 that costs little, but after EViT's pruning (87, 17, 12 tokens) packing the
//! weights dominates (at M = 17, 23 GFLOP/s against 85 here on one core, measured last session).
//!
//! Both ISAs share the packed layouts and compute every output element as one FMA chain over
//! k = 0..K in order, computed by one task; tasks split rows and columns, never K. Results
//! are bit-identical whatever the thread count, and between the two ISAs.
use crate::Result;

/// Columns of a packed panel (two 16-lane vectors).
pub const NR: usize = 32;
/// Rows of a register tile (12 × 2 accumulators + 2 B vectors + 1 broadcast ≤ 32 registers).
pub const MR: usize = 12;

/// The vector ISA the packed path runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: the 12 × 32 tile in 24 zmm accumulators.
    Avx512,
    /// AVX2 + FMA (the CPUs without AVX-512): the same tile as four 6 × 16 ymm tiles.
    Avx2,
}

impl Isa {
    /// Parses `avx512` / `avx2` (for overrides such as the CLI's `CLCA_CPU_ISA`).
    pub fn parse(s: &str) -> Option<Isa> {
        match s {
            "avx512" => Some(Isa::Avx512),
            "avx2" => Some(Isa::Avx2),
            _ => None,
        }
    }

    /// Whether this CPU has it (detected at run time).
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The best ISA of this CPU for the packed path, if any.
pub fn detect() -> Option<Isa> {
    [Isa::Avx512, Isa::Avx2].into_iter().find(|i| i.supported())
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
    /// The same, written packed ([tile][n][12], as [`linear`] packs its x) for the next
    /// GEMM ([`linear_prepacked`]): fc1's output is only fc2's input, and the 12 × 32 tile
    /// goes out as 32 contiguous runs of 12 instead of 12 rows 4n bytes apart.
    GeluPacked,
    /// y += ls ⊙ (acc + bias), or y += acc + bias: the residual branch added into the stream.
    AddTo(Option<&'a [f32]>),
}

/// A raw pointer that may cross threads; users write disjoint regions (see each SAFETY note).
/// Shared with [`crate::vit::cpu`]'s attention.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used for writes to disjoint regions by different tasks.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`, which is Send).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// f(0), …, f(count − 1): across rayon's threads when `parallel`, else in order here.
fn for_each_task(count: usize, parallel: bool, f: impl Fn(usize) + Sync + Send) {
    use rayon::prelude::*;
    if parallel && count > 1 {
        (0..count).into_par_iter().for_each(f);
    } else {
        (0..count).for_each(f);
    }
}

/// Whether a product of m × n × k is worth spreading over threads.
fn worth_parallel(m: usize, n: usize, k: usize) -> bool {
    m * n * k >= 1 << 20
}

/// Bytes of packed weights a task keeps in L2 (its panel group): 4 panels at K = 768, one at
/// K = 3072. Measured on one Cascade Lake core (1 MB L2): 384 KB groups beat 768 KB ones.
const GROUP_BYTES: usize = 384 << 10;
/// Row tiles per task, about: enough rows that a panel group, once in L2, serves many tiles
/// (chunks of 8–16 tiles, which read the weights more often, ran slower; see BENCHMARKS.md).
const CHUNK_TILES: usize = 32;

/// Length of the scratch [`linear`] packs x into: ⌈m/12⌉ tiles of k × 12.
pub fn pack_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k
}

/// y[m, n] (row stride `y_rs`) = epi(x[m, k] (row stride `x_rs`) · wᵀ + bias), on `isa`.
///
/// x is first packed into `ap` as tiles of 12 rows, k-major ([tile][k][12]), so that the
/// microkernel's broadcasts read one stream at fixed offsets (with x's 12 row streams the
/// loop needed an address computation per row and ran at 80–90 GFLOP/s on one core; packed,
/// 120–130, against MKL's 125–131 at these shapes). Then tasks of (row tiles × panel group)
/// run each tile against each panel over the whole K, the group's panels staying in L2 and
/// the tile in L1, and apply the epilogue to the 12 × 32 sums.
///
/// Panics when a buffer is too short or the CPU lacks `isa` (callers take it from
/// [`detect`] and size `ap` by [`pack_len`]).
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
    ap: &mut [f32],
    isa: Isa,
) {
    let k = w.k;
    assert!(isa.supported(), "packed::linear: this CPU lacks {isa:?}");
    assert!(
        x_rs >= k && (m == 0 || x.len() >= (m - 1) * x_rs + k) && ap.len() >= pack_len(m, k),
        "packed::linear: buffer sizes"
    );
    if m == 0 || w.n == 0 {
        return;
    }
    let tiles = m.div_ceil(MR);
    let app = SendPtr(ap.as_mut_ptr());
    let pack = |t: usize| {
        let r = MR.min(m - t * MR);
        // SAFETY: the CPU has `isa` (asserted); tile t's rows of x are inside x (assert); its
        // k·12 values at t·k·12 are inside ap (assert) and written by this call only.
        unsafe {
            pack_tile(
                isa,
                x.as_ptr().add(t * MR * x_rs),
                x_rs,
                r,
                k,
                app.get().add(t * k * MR),
            )
        }
    };
    for_each_task(tiles, worth_parallel(m, w.n, k), pack);
    linear_prepacked(ap, m, w, bias, y, y_rs, epi, isa);
}

/// [`linear`] on an x already packed (by [`Epi::GeluPacked`], or by [`linear`] itself):
/// `ap` holds [tile][k][12].
///
/// Panics as [`linear`].
#[allow(clippy::too_many_arguments)]
pub fn linear_prepacked(
    ap: &[f32],
    m: usize,
    w: &PackedMat,
    bias: Option<&[f32]>,
    y: &mut [f32],
    y_rs: usize,
    epi: Epi<'_>,
    isa: Isa,
) {
    let (n, k) = (w.n, w.k);
    assert!(isa.supported(), "packed::linear: this CPU lacks {isa:?}");
    assert!(
        ap.len() >= pack_len(m, k)
            && y_rs >= n
            && bias.is_none_or(|b| b.len() >= n)
            && match epi {
                Epi::GeluPacked => y.len() >= pack_len(m, n),
                Epi::AddTo(Some(g)) => g.len() >= n && (m == 0 || y.len() >= (m - 1) * y_rs + n),
                _ => m == 0 || y.len() >= (m - 1) * y_rs + n,
            },
        "packed::linear: buffer sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    let tiles = m.div_ceil(MR);
    let group = (GROUP_BYTES / (k.max(1) * NR * 4)).clamp(1, 8);
    let groups = w.panels().div_ceil(group);
    // Chunks of equal size, about CHUNK_TILES each (the nearest count): every chunk reads all
    // the weights once, so at M = 786 (66 tiles) 33 + 33 reads them twice where 32 + 32 + 2
    // read them three times (and the 2-tile chunk's tasks each brought a panel group into L2
    // for 2 tiles).
    let chunks = ((tiles + CHUNK_TILES / 2) / CHUNK_TILES).max(1);
    let per = tiles.div_ceil(chunks);
    let yp = SendPtr(y.as_mut_ptr());
    let task = |t: usize| {
        // Row chunk major: a thread keeps its chunk of x in L3 while the weights (≤ 9.4 MB
        // for ViT-B, shared by both threads) pass; group major re-read all of x from DRAM
        // once per group at batch 8 (fc2: 24 × 77 MB).
        let (c, g) = (t / groups, t % groups);
        let panels = g * group..w.panels().min((g + 1) * group);
        let rows = c * per * MR..m.min((c + 1) * per * MR);
        let args = TileTask {
            ap: ap.as_ptr(),
            k,
            rows,
            bdata: w.data.as_ptr(),
            n,
            panels,
            bias,
            y: yp.get(),
            y_rs,
            epi,
        };
        // SAFETY: the CPU has `isa` (asserted); ap holds the packed tiles of
        // x; the task reads panels `panels` of w and writes only y's tile rows × [32·
        // panels.start, min(n, 32·panels.end)) (packed: the same columns of its tiles),
        // disjoint from every other task's.
        unsafe {
            match isa {
                Isa::Avx512 => tile_task_avx512(args),
                Isa::Avx2 => tile_task_avx2(args),
            }
        }
    };
    for_each_task(chunks * groups, worth_parallel(m, n, k), task);
}

/// One task of [`linear_prepacked`]: rows `rows` (whole tiles of 12 but the last) of packed x against
/// panels `panels` of w, each 12 × 32 tile over the whole K, then the epilogue into y.
struct TileTask<'a> {
    ap: *const f32,
    k: usize,
    rows: std::ops::Range<usize>,
    bdata: *const f32,
    n: usize,
    panels: std::ops::Range<usize>,
    bias: Option<&'a [f32]>,
    y: *mut f32,
    y_rs: usize,
    epi: Epi<'a>,
}

/// [`tile_task`] compiled for AVX-512 (its epilogue vectorizes 16 wide).
///
/// # Safety
/// As [`tile_task`], on a CPU with AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn tile_task_avx512(t: TileTask<'_>) {
    tile_task(t, Isa::Avx512)
}

/// [`tile_task`] compiled for AVX2 + FMA.
///
/// # Safety
/// As [`tile_task`], on a CPU with AVX2 and FMA.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn tile_task_avx2(t: TileTask<'_>) {
    tile_task(t, Isa::Avx2)
}

/// # Safety
/// The CPU has `isa`; ap holds the packed rows `rows` (k each), bdata the packed panels,
/// and y (row stride y_rs, or packed for [`Epi::GeluPacked`]) the tile's outputs.
#[inline(always)]
unsafe fn tile_task(t: TileTask<'_>, isa: Isa) {
    let TileTask {
        ap,
        k,
        rows,
        bdata,
        n,
        panels,
        bias,
        y,
        y_rs,
        epi,
    } = t;
    let mut tmp = [0f32; MR * NR];
    // GeluPacked: the GELU rows, packed from here into y.
    let mut gelu = [0f32; MR * NR];
    let mut i0 = rows.start;
    while i0 < rows.end {
        let r = MR.min(rows.end - i0);
        let a = ap.add(i0 * k);
        for p in panels.clone() {
            micro_packed(isa, r, k, a, bdata.add(p * k * NR), tmp.as_mut_ptr());
            let (n0, cols) = (p * NR, NR.min(n - p * NR));
            let packed_out = matches!(epi, Epi::GeluPacked);
            for (i, t) in tmp.chunks_exact(NR).take(r).enumerate() {
                let out = if packed_out {
                    &mut gelu[i * NR..i * NR + cols]
                } else {
                    // SAFETY (caller): row i0 + i < m and columns n0 .. n0 + cols ≤ n are in y.
                    std::slice::from_raw_parts_mut(y.add((i0 + i) * y_rs + n0), cols)
                };
                epilogue(&t[..cols], out, bias.map(|b| &b[n0..n0 + cols]), epi, n0);
            }
            if packed_out {
                // The tile's columns as 12-row runs: tile i0/12's columns n0 .. n0 + cols,
                // inside y (caller).
                pack_tile(isa, gelu.as_ptr(), NR, r, cols, y.add(i0 * n + n0 * MR));
            }
        }
        i0 += r;
    }
}

/// Applies `epi` to one tile row `t` (the sums) into `out`, in one pass (`copy_from_slice`
/// was a memmove call per 32-value row: 1.4 % of a GEMM's samples): the bias is added first,
/// then the epilogue.
#[inline(always)]
fn epilogue(t: &[f32], out: &mut [f32], bias: Option<&[f32]>, epi: Epi<'_>, n0: usize) {
    #[inline(always)]
    fn each(t: &[f32], out: &mut [f32], bias: Option<&[f32]>, f: impl Fn(&mut f32, f32)) {
        match bias {
            Some(b) => {
                for ((o, &v), &bv) in out.iter_mut().zip(t).zip(b) {
                    f(o, v + bv);
                }
            }
            None => {
                for (o, &v) in out.iter_mut().zip(t) {
                    f(o, v);
                }
            }
        }
    }
    match epi {
        Epi::Store => each(t, out, bias, |o, v| *o = v),
        // (GeluPacked: into the rows the caller then packs.)
        Epi::Gelu | Epi::GeluPacked => {
            each(t, out, bias, |o, v| *o = super::dense::gelu_fast_fma(v))
        }
        Epi::AddTo(None) => each(t, out, bias, |o, v| *o += v),
        Epi::AddTo(Some(g)) => {
            let g = &g[n0..n0 + out.len()];
            match bias {
                Some(b) => {
                    for (((o, &v), &bv), &gv) in out.iter_mut().zip(t).zip(b).zip(g) {
                        *o += gv * (v + bv);
                    }
                }
                None => {
                    for ((o, &v), &gv) in out.iter_mut().zip(t).zip(g) {
                        *o += gv * v;
                    }
                }
            }
        }
    }
}

/// Packs r ≤ 12 rows of x (row stride `x_rs`) into `d` as [k][12] (rows r.. left as they are:
/// the microkernel for r rows reads only the first r of each 12). Also writes fc1's GELU tile
/// packed (x = the tile, x_rs = 32, k = its columns). Whole tiles on AVX-512 go
/// 16 values of k at a time through an in-register 16 × 16 transpose: the scalar copy (one
/// store per value, 48 bytes apart) took 4 % of the forward.
///
/// # Safety
/// The CPU has `isa`; r rows of k values at x (stride x_rs) readable, k·12 values at d
/// writable.
pub(crate) unsafe fn pack_tile(
    isa: Isa,
    x: *const f32,
    x_rs: usize,
    r: usize,
    k: usize,
    d: *mut f32,
) {
    let k0 = if isa == Isa::Avx512 && r == MR {
        avx512::pack_tile(x, x_rs, k, d)
    } else {
        0
    };
    for i in 0..r {
        let row = std::slice::from_raw_parts(x.add(i * x_rs), k);
        for (kk, &v) in row.iter().enumerate().skip(k0) {
            *d.add(kk * MR + i) = v;
        }
    }
}

/// The panel [k][32] of `c` ≤ 32 rows of x (row stride `x_rs`) times `scale`: d[kk·32 + i] =
/// x[i][kk]·scale, lanes c.. zero.
///
/// # Safety
/// The CPU has `isa`; c rows of k values at x readable, k·32 values at d writable.
pub(crate) unsafe fn pack_panel(
    isa: Isa,
    x: *const f32,
    x_rs: usize,
    c: usize,
    k: usize,
    scale: f32,
    d: *mut f32,
) {
    let k0 = if isa == Isa::Avx512 && c == NR {
        avx512::pack_panel(x, x_rs, k, scale, d)
    } else {
        0
    };
    for kk in k0..k {
        for i in 0..NR {
            *d.add(kk * NR + i) = if i < c {
                *x.add(i * x_rs + kk) * scale
            } else {
                0.0
            };
        }
    }
}

/// y[i][kk] (row stride `y_rs`) = o[kk·32 + i] / sums[i] for the first c ≤ 32 lanes of the
/// panel o [k][32]: the inverse of [`pack_panel`], with a division per row.
///
/// # Safety
/// The CPU has `isa`; k·32 values at o readable, c rows of k at y writable.
pub(crate) unsafe fn unpack_panel(
    isa: Isa,
    o: *const f32,
    c: usize,
    k: usize,
    sums: &[f32; NR],
    y: *mut f32,
    y_rs: usize,
) {
    let k0 = if isa == Isa::Avx512 {
        avx512::unpack_panel(o, c, k, sums, y, y_rs)
    } else {
        0
    };
    for i in 0..c {
        for kk in k0..k {
            *y.add(i * y_rs + kk) = *o.add(kk * NR + i) / sums[i];
        }
    }
}

/// c[r × 32] (contiguous) = a · b on one packed tile: a is [k][12] (the first r of each 12
/// used), b a panel [k][32]; one FMA chain per element over k in order.
///
/// # Safety
/// The CPU has `isa`; r ≤ 12; k·12 values at a, k·32 at b and r·32 at c.
#[inline(always)]
pub(crate) unsafe fn micro_packed(
    isa: Isa,
    r: usize,
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
) {
    match isa {
        Isa::Avx512 => avx512::micro(r, k, a, b, c),
        Isa::Avx2 => avx2::micro(r, k, a, b, c),
    }
}

/// Dispatches r ≤ 12 to the register tile of r rows (`$kern::<r>(args…)`).
macro_rules! by_rows {
    ($r:expr, $kern:ident, $($arg:expr),*) => {
        match $r {
            12 => $kern::<12>($($arg),*),
            11 => $kern::<11>($($arg),*),
            10 => $kern::<10>($($arg),*),
            9 => $kern::<9>($($arg),*),
            8 => $kern::<8>($($arg),*),
            7 => $kern::<7>($($arg),*),
            6 => $kern::<6>($($arg),*),
            5 => $kern::<5>($($arg),*),
            4 => $kern::<4>($($arg),*),
            3 => $kern::<3>($($arg),*),
            2 => $kern::<2>($($arg),*),
            1 => $kern::<1>($($arg),*),
            _ => {}
        }
    };
}

/// The AVX-512 kernels (no-ops off x86-64, where [`Isa::supported`] is false).
mod avx512 {
    use super::{MR, NR};
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// See [`super::micro_packed`].
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    pub(super) unsafe fn micro(r: usize, k: usize, a: *const f32, b: *const f32, c: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        by_rows!(r, kern, k, a, b, c);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (r, k, a, b, c);
    }

    /// The register tile: R rows × 32 columns in 2R zmm accumulators, one FMA chain per
    /// element over k in order. Row i's value at step t is a[t·12 + i]: a constant offset per
    /// broadcast, no address arithmetic in the loop. The panel is prefetched 8 steps (1 KB)
    /// ahead: it streams from L2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn kern<const R: usize>(k: usize, a: *const f32, b: *const f32, c: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (mut ap, mut bp) = (a, b);
        for _ in 0..k {
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            // A hint only: prefetching past the panel's end reads nothing and cannot fault.
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(8 * NR).cast());
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(8 * NR + 16).cast());
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                acc[0] = _mm512_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(ai, b1, acc[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * NR), acc[0]);
            _mm512_storeu_ps(c.add(i * NR + 16), acc[1]);
        }
    }

    /// The whole 16-blocks of k of [`super::pack_tile`] for a full tile; returns where the
    /// caller's scalar loop goes on.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    pub(super) unsafe fn pack_tile(x: *const f32, x_rs: usize, k: usize, d: *mut f32) -> usize {
        let mut k0 = 0;
        #[cfg(target_arch = "x86_64")]
        while k0 + 16 <= k {
            let mut v = [_mm512_setzero_ps(); 16];
            for (i, v) in v.iter_mut().take(MR).enumerate() {
                *v = _mm512_loadu_ps(x.add(i * x_rs + k0));
            }
            for (kk, t) in transpose16(v).iter().enumerate() {
                _mm512_mask_storeu_ps(d.add((k0 + kk) * MR), 0x0fff, *t);
            }
            k0 += 16;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (x, x_rs, k, d);
        k0
    }

    /// The 16-blocks of [`super::pack_panel`] for a full panel of 32 rows.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    pub(super) unsafe fn pack_panel(
        x: *const f32,
        x_rs: usize,
        k: usize,
        scale: f32,
        d: *mut f32,
    ) -> usize {
        let mut k0 = 0;
        #[cfg(target_arch = "x86_64")]
        {
            let s = _mm512_set1_ps(scale);
            while k0 + 16 <= k {
                for half in 0..2 {
                    let mut v = [_mm512_setzero_ps(); 16];
                    for (i, v) in v.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(x.add((half * 16 + i) * x_rs + k0));
                    }
                    for (kk, t) in transpose16(v).iter().enumerate() {
                        _mm512_storeu_ps(d.add((k0 + kk) * NR + half * 16), _mm512_mul_ps(*t, s));
                    }
                }
                k0 += 16;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (x, x_rs, k, scale, d);
        k0
    }

    /// The 16-blocks of [`super::unpack_panel`].
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    pub(super) unsafe fn unpack_panel(
        o: *const f32,
        c: usize,
        k: usize,
        sums: &[f32; NR],
        y: *mut f32,
        y_rs: usize,
    ) -> usize {
        let mut k0 = 0;
        #[cfg(target_arch = "x86_64")]
        while k0 + 16 <= k {
            for half in 0..c.div_ceil(16) {
                let mut v = [_mm512_setzero_ps(); 16];
                for (kk, v) in v.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(o.add((k0 + kk) * NR + half * 16));
                }
                for (i, t) in transpose16(v).iter().enumerate().take(c - half * 16) {
                    let q = half * 16 + i;
                    let out = _mm512_div_ps(*t, _mm512_set1_ps(sums[q]));
                    _mm512_storeu_ps(y.add(q * y_rs + k0), out);
                }
            }
            k0 += 16;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (o, c, k, sums, y, y_rs);
        k0
    }

    /// The 16 × 16 transpose of `r` (row i in r[i]): out[c] lane i = r[i] lane c. Four
    /// stages: pairs of floats, pairs of pairs (as f64), then 128-bit lanes twice.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        let mut t = [_mm512_setzero_ps(); 16];
        for j in 0..8 {
            t[2 * j] = _mm512_unpacklo_ps(r[2 * j], r[2 * j + 1]);
            t[2 * j + 1] = _mm512_unpackhi_ps(r[2 * j], r[2 * j + 1]);
        }
        // u[4j + c], 128-bit lane L: column 4L + c of rows 4j .. 4j + 3.
        let mut u = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            let pd = |v: __m512| _mm512_castps_pd(v);
            let (a0, a1, a2, a3) = (
                pd(t[4 * j]),
                pd(t[4 * j + 1]),
                pd(t[4 * j + 2]),
                pd(t[4 * j + 3]),
            );
            u[4 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
            u[4 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
            u[4 * j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
            u[4 * j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            let v0 = _mm512_shuffle_f32x4::<0b01_00_01_00>(u[c], u[4 + c]);
            let v1 = _mm512_shuffle_f32x4::<0b11_10_11_10>(u[c], u[4 + c]);
            let w0 = _mm512_shuffle_f32x4::<0b01_00_01_00>(u[8 + c], u[12 + c]);
            let w1 = _mm512_shuffle_f32x4::<0b11_10_11_10>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(v0, w0);
            out[4 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(v0, w0);
            out[8 + c] = _mm512_shuffle_f32x4::<0b10_00_10_00>(v1, w1);
            out[12 + c] = _mm512_shuffle_f32x4::<0b11_01_11_01>(v1, w1);
        }
        out
    }
}

/// The AVX2 + FMA kernels: 16 ymm registers hold a 6 × 16 tile (12 accumulators, 2 B
/// vectors, 1 broadcast), so the 12 × 32 tile is four of them over the same packed operands.
mod avx2 {
    use super::{MR, NR};
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// Steps of k per pass: each 12 × 32 tile is four passes over the same operands, so they
    /// go 128 steps at a time (A 6 KB, B 16 KB: in L1 for all four), the sums carried in c.
    /// Whole-K passes re-read both from L2 four times and ran at 60 % of this kernel's peak.
    const KB: usize = 128;

    /// See [`super::micro_packed`].
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    pub(super) unsafe fn micro(r: usize, k: usize, a: *const f32, b: *const f32, c: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        {
            let mut k0 = 0;
            // At least one pass, so that k = 0 stores zeros.
            loop {
                let kl = KB.min(k - k0);
                let load = k0 > 0;
                for h in 0..r.div_ceil(6) {
                    for half in 0..2 {
                        let a = a.add(k0 * MR + 6 * h);
                        let b = b.add(k0 * NR + 16 * half);
                        let c = c.add(6 * h * NR + 16 * half);
                        match 6.min(r - 6 * h) {
                            6 => kern::<6>(kl, a, b, c, load),
                            5 => kern::<5>(kl, a, b, c, load),
                            4 => kern::<4>(kl, a, b, c, load),
                            3 => kern::<3>(kl, a, b, c, load),
                            2 => kern::<2>(kl, a, b, c, load),
                            _ => kern::<1>(kl, a, b, c, load),
                        }
                    }
                }
                k0 += kl;
                if k0 >= k {
                    break;
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (r, k, a, b, c);
    }

    /// R ≤ 6 rows × 16 columns of the tile over k steps: a at the tile's row 6h (stride 12 per
    /// k), b at the panel's column 16·half (stride 32 per k), c's rows 32 apart; with `load`
    /// the sums go on from c's (stored and reloaded exactly). The same FMA chain per element
    /// as the AVX-512 kernel, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kern<const R: usize>(
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        load: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if load {
            for (i, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm256_loadu_ps(c.add(i * NR));
                acc[1] = _mm256_loadu_ps(c.add(i * NR + 8));
            }
        }
        // Four steps per iteration and one prefetch per two: at 20 uops per step the 4-wide
        // front end has no slack for loop and prefetch uops (77 % of peak without this).
        let step = |acc: &mut [[__m256; 2]; R], ap: *const f32, bp: *const f32| {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*ap.add(i));
                acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
            }
        };
        let (mut ap, mut bp) = (a, b);
        for _ in 0..k / 4 {
            // A hint only (see the AVX-512 kernel).
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(8 * NR).cast());
            step(&mut acc, ap, bp);
            step(&mut acc, ap.add(MR), bp.add(NR));
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(10 * NR).cast());
            step(&mut acc, ap.add(2 * MR), bp.add(2 * NR));
            step(&mut acc, ap.add(3 * MR), bp.add(3 * NR));
            ap = ap.add(4 * MR);
            bp = bp.add(4 * NR);
        }
        for _ in 0..k % 4 {
            step(&mut acc, ap, bp);
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(i * NR), acc[0]);
            _mm256_storeu_ps(c.add(i * NR + 8), acc[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed tile is x's rows k-major, whole tiles (the transpose) and partial ones,
    /// k below, at and past multiples of 16, a row stride wider than k.
    #[test]
    fn pack_tile_is_the_transpose() {
        for isa in [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|i| i.supported())
        {
            for r in [12, 11, 5, 1] {
                for k in [1, 15, 16, 17, 33, 64, 100] {
                    let x_rs = k + 3;
                    let x: Vec<f32> = (0..r * x_rs).map(|i| i as f32 * 0.5 - 7.0).collect();
                    let mut d = vec![f32::NAN; k * MR];
                    // SAFETY: the CPU has `isa` (checked); r rows of k at stride x_rs, k·12 values of d.
                    unsafe { pack_tile(isa, x.as_ptr(), x_rs, r, k, d.as_mut_ptr()) };
                    for kk in 0..k {
                        for i in 0..MR {
                            let got = d[kk * MR + i];
                            if i < r {
                                assert_eq!(got, x[i * x_rs + kk], "r {r} k {k}: [{kk}][{i}]");
                            } else {
                                assert!(got.is_nan(), "r {r} k {k}: lane {i} past r written");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Against an f64 product, every shape class: tails in m (1..=13) and n (not a multiple
    /// of 32), k = 1, strides wider than the data, each epilogue.
    #[test]
    fn matches_f64_reference() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|i| i.supported())
            .collect();
        let outs: Vec<Vec<f32>> = isas.iter().map(|&isa| check_isa(isa)).collect();
        // The ISAs run the same FMA chains: the same bits.
        for (o, isa) in outs.iter().zip(&isas).skip(1) {
            assert!(
                o.iter()
                    .zip(&outs[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{isa:?} differs from {:?}",
                isas[0]
            );
        }
    }

    /// [`matches_f64_reference`] on one ISA; returns every output.
    fn check_isa(isa: Isa) -> Vec<f32> {
        let mut all = Vec::new();
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
            let mut ap = vec![0f32; pack_len(m, k)];
            linear(
                &x,
                x_rs,
                m,
                &pw,
                Some(&bias),
                &mut y,
                y_rs,
                Epi::Store,
                &mut ap,
                isa,
            );
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
                &mut ap,
                isa,
            );
            let mut g = vec![0f32; m * y_rs];
            linear(
                &x,
                x_rs,
                m,
                &pw,
                Some(&bias),
                &mut g,
                y_rs,
                Epi::Gelu,
                &mut ap,
                isa,
            );
            // GeluPacked is Gelu's output packed as linear packs x, and a GEMM on it
            // (linear_prepacked) is the same GEMM on the unpacked rows, bit for bit.
            let mut gp = vec![f32::NAN; pack_len(m, n)];
            linear(
                &x,
                x_rs,
                m,
                &pw,
                Some(&bias),
                &mut gp,
                n,
                Epi::GeluPacked,
                &mut ap,
                isa,
            );
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(gp[(i / MR) * n * MR + j * MR + i % MR], g[i * y_rs + j]);
                }
            }
            let w2: Vec<f32> = (0..7 * n)
                .map(|i| ((i * 3 % 17) as f32 - 8.0) * 0.05)
                .collect();
            let Ok(pw2) = PackedMat::new(&w2, 7, n) else {
                panic!("pack")
            };
            let (mut u, mut v) = (vec![0f32; m * 7], vec![0f32; m * 7]);
            let mut ap2 = vec![0f32; pack_len(m, n)];
            linear(
                &g,
                y_rs,
                m,
                &pw2,
                None,
                &mut u,
                7,
                Epi::Store,
                &mut ap2,
                isa,
            );
            linear_prepacked(&gp, m, &pw2, None, &mut v, 7, Epi::Store, isa);
            assert_eq!(u, v, "({m},{k},{n}) prepacked");
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
            all.extend(y.iter().chain(&z).chain(&g).chain(&gp).chain(&u));
        }
        all
    }
}
