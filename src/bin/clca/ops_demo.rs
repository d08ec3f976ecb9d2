//! `clca ops [--batch N] [--seed S]`: a tour of the crate's ops at the paper's configuration
//! (EViT + CLCA, ViT-B/16 at 448 px). This was the first `cargo run --release`; the whole
//! forward is `clca run`.
//!
//! 1. Prints the sequence plan ([`clca::plan::plan`]) next to the lengths given in the SPEC.
//! 2. Runs every reduction layer with the CPU reference on seeded random inputs: CLS-attention
//!    scores from attention probabilities → top-k → EViT prune, then the cache recovery and the
//!    carrier take that follow it, and the CLA head (conv and linear variants).
//! 3. Runs the same ops once through the host shim (the CUDA sources on the CPU) on the smallest
//!    layer and checks them against the reference.
//! 4. With `--features cuda` and a GPU, runs them on the GPU in f32, f16 and bf16 and prints
//!    timings and whether they match the reference; otherwise says why CUDA was skipped.
//!
//! Exit code 0 when every check passes, 1 on a mismatch or an error.

use clca::ops::attn_score::{select, ScoreSource, Selection};
use clca::ops::cla_head::{BatchNorm, ClaBody, ClaConv, ClaHead, ClaLinear, DeviceClaHead};
use clca::ops::prune::{evit_prune, prune, PruneMode};
use clca::ops::token_cache::{cache_take, recover, tokens_copy, TakeArgs};
use clca::plan::{plan, ClcOptions, PlanSpec, Reduction, SeqPlan};
use clca::{cpu, Device, Element, HostShim};
use std::ops::Range;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::table::{fmt_time, section, shape, Table};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Patches of a 448 px image with 16 px patches.
const PATCHES: usize = 784;
/// Learned carrier (clr) tokens.
const NUM_CLR: usize = 1;
/// ViT-B/16 width, heads and depth.
const D: usize = 768;
const HEADS: usize = 12;
const DEPTH: usize = 12;
/// EViT reduction layers and keep rate.
const LOCS: [usize; 3] = [3, 6, 9];
const KEEP_RATE: f64 = 0.1;
/// CLA head: grouped conv width factor and classes (CUB-200-sized).
const GROUPS: usize = 2;
const CLASSES: usize = 200;
/// SPEC: EViT + CLCA sequence lengths out of blocks 0..11.
const SPEC_LEN_OUT: [usize; DEPTH] = [786, 786, 786, 81, 87, 87, 11, 17, 17, 4, 10, 12];
pub const MAX_BATCH: usize = 64;
/// Runs per op on the CPU (the best time is reported).
const CPU_REPS: u32 = 3;
/// Timed repetitions per op on the GPU (the mean is reported).
#[cfg(feature = "cuda")]
const GPU_REPS: u32 = 20;

/// Runs the demo; exit code 0 when every check passes, 1 on a mismatch or an error.
pub fn main(batch: usize, seed: u64) -> ExitCode {
    match run(batch, seed) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("clca: some checks failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PRNG, formatting

/// The library's seeded generator, with the demo's helpers on top.
struct Rng(clca::vit::random::Rng);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        Rng(clca::vit::random::Rng::new(seed, stream))
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        2.0 * self.unit() - 1.0
    }
    fn vec_sym(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| scale * self.sym()).collect()
    }
    /// `rows` softmax rows of length n over random logits in [-3, 3).
    fn softmax_rows(&mut self, rows: usize, n: usize) -> Vec<f32> {
        let mut p = vec![0f32; rows * n];
        for row in p.chunks_mut(n.max(1)) {
            let mut s = 0f32;
            for v in row.iter_mut() {
                *v = (3.0 * self.sym()).exp();
                s += *v;
            }
            for v in row.iter_mut() {
                *v /= s;
            }
        }
        p
    }
}

use clca::dtype::from_f32_slice as cvt;

fn max_abs_diff<T: Element>(a: &[T], b: &[T]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.to_f32() - y.to_f32()).abs())
        .fold(0f32, |m, d| if d.is_nan() || d > m { d } else { m })
}

fn fmt_diff(d: f32) -> String {
    if d == 0.0 {
        "0 (exact)".into()
    } else {
        format!("{d:.2e}")
    }
}

/// "GAP x[1..81) + x[86] → slots 0–1": the carriers taken from a sequence of `len` tokens.
fn carriers_text(pool: &Range<usize>, slot: usize, len: usize) -> String {
    let last = if NUM_CLR == 1 {
        format!("x[{}]", len - 1)
    } else {
        format!("x[{}..{len})", len - NUM_CLR)
    };
    format!(
        "GAP x[{}..{}) + {last} → slots {slot}–{}",
        pool.start,
        pool.end,
        slot + NUM_CLR
    )
}

// ---------------------------------------------------------------------------------------------
// The configuration and its plan

fn build_plan() -> Res<SeqPlan> {
    Ok(plan(&PlanSpec {
        k_neighbors: 5,
        patches: PATCHES,
        num_clr: NUM_CLR,
        depth: DEPTH,
        reduction: Reduction::EVit,
        locs: &LOCS,
        keep_rates: &[KEEP_RATE],
        clc: Some(ClcOptions::default()),
    })?)
}

/// Prints the plan table; returns whether the lengths out of every block match the SPEC.
fn print_plan(p: &SeqPlan) -> bool {
    section("Plan: clca::plan::plan (tokens per block; cls + 784 patches + 1 clr enter block 0)");
    let mut t = Table::new(&[
        ("block", true),
        ("in", true),
        ("keep k", true),
        ("out", true),
        ("SPEC out", true),
        ("recovered", true),
        ("after", true),
        (
            "carriers taken after the block (GAP range + last token)",
            false,
        ),
        ("CLS tap", false),
    ]);
    let mut all = true;
    for (i, b) in p.blocks.iter().enumerate() {
        let spec = SPEC_LEN_OUT.get(i).copied();
        let ok = spec == Some(b.len_out);
        all &= ok;
        let carriers = match &b.carriers {
            Some((r, slot)) => carriers_text(r, *slot, b.len_after),
            None => "-".into(),
        };
        t.row(vec![
            i.to_string(),
            b.len_in.to_string(),
            b.keep.map_or("-".into(), |k| k.to_string()),
            b.len_out.to_string(),
            format!(
                "{}{}",
                spec.map_or("?".into(), |s| s.to_string()),
                if ok { " ✓" } else { " ✗" }
            ),
            if b.recovered > 0 {
                format!("+{}", b.recovered)
            } else {
                "-".into()
            },
            b.len_after.to_string(),
            carriers,
            if b.cls_tap { "yes".into() } else { "".into() },
        ]);
    }
    t.print();
    let rec: Vec<String> = p.recovery.iter().map(usize::to_string).collect();
    println!(
        "  max sequence length {}, cache capacity {} tokens, CLS taps (CLA head f) {}, recovery after blocks {}",
        p.max_len,
        p.cache_cap,
        p.taps,
        rec.join(" ")
    );
    println!(
        "  lengths out of blocks 0..11 match the SPEC: {}",
        if all { "yes" } else { "NO" }
    );
    all
}

// ---------------------------------------------------------------------------------------------
// One reduction layer: prune → recover → take

/// A reduction layer of the plan with its seeded random inputs (f32; converted per dtype).
struct LayerCase {
    block: usize,
    /// Tokens in, kept, out of the prune (2 + k), recovered after it, and after recovery.
    n: usize,
    k: usize,
    out: usize,
    recovered: usize,
    after: usize,
    /// Carriers taken after the block (GAP range, first slot).
    take: Option<(Range<usize>, usize)>,
    cache_cap: usize,
    batch: usize,
    /// x [B, n, D] ~ U(-1, 1).
    x: Vec<f32>,
    /// Attention probabilities [B, H, n, n], every row a softmax.
    probs: Vec<f32>,
    /// The cache before recovery [B, cache_cap, D] (carriers of the earlier blocks).
    cache: Vec<f32>,
}

fn layer_cases(p: &SeqPlan, batch: usize, seed: u64) -> Vec<LayerCase> {
    let mut v = Vec::new();
    for (i, b) in p.blocks.iter().enumerate() {
        let Some(k) = b.keep else { continue };
        let mut rng = Rng::new(seed, i as u64 + 1);
        let n = b.len_in;
        v.push(LayerCase {
            block: i,
            n,
            k,
            out: b.len_out,
            recovered: b.recovered,
            after: b.len_after,
            take: b.carriers.clone(),
            cache_cap: p.cache_cap.max(1),
            batch,
            x: rng.vec_sym(batch * n * D, 1.0),
            probs: rng.softmax_rows(batch * HEADS * n, n),
            cache: rng.vec_sym(batch * p.cache_cap.max(1) * D, 1.0),
        });
    }
    v
}

impl LayerCase {
    fn take_args(&self) -> Option<TakeArgs> {
        self.take.as_ref().map(|(pool, slot)| TakeArgs {
            batch: self.batch,
            x_cap: self.after,
            n: self.after,
            d: D,
            pool: pool.clone(),
            gap: true,
            num_clr: NUM_CLR,
            cache_cap: self.cache_cap,
            slot: *slot,
        })
    }
}

/// What one layer produced.
struct LayerOut<T> {
    scores: Vec<f32>,
    idx: Vec<u32>,
    compl: Vec<u32>,
    /// [B, out, D] = [cls, kept, fused].
    pruned: Vec<T>,
    /// [B, after, D]: pruned tokens then the recovered cache tokens.
    x_after: Vec<T>,
    /// [B, cache_cap, D] after the take.
    cache: Vec<T>,
}

/// Per-op times of a layer.
#[derive(Default, Clone, Copy)]
struct LayerTimes {
    /// CLS-attention scores alone (CPU only).
    scores: Duration,
    /// Scores + top-k.
    select: Duration,
    /// The EViT gather alone.
    gather: Duration,
    /// Scores + top-k + gather.
    prune: Duration,
    recover: Duration,
    take: Duration,
}

/// Runs `f` [`CPU_REPS`] times; its last result and the best time (a single run is noisy).
fn timed<R>(mut f: impl FnMut() -> clca::Result<R>) -> Res<(R, Duration)> {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..CPU_REPS {
        let t = Instant::now();
        let r = f()?;
        best = best.min(t.elapsed());
        last = Some(r);
    }
    Ok((last.ok_or("no run")?, best))
}

/// The CPU reference of a layer in dtype T. Times are cumulative along the chain for
/// `select` (scores + top-k) and `prune` (scores + top-k + EViT).
fn cpu_layer<T: Element>(c: &LayerCase) -> Res<(LayerOut<T>, LayerTimes)> {
    let (b, n, k) = (c.batch, c.n, c.k);
    let x: Vec<T> = cvt(&c.x);
    let probs: Vec<T> = cvt(&c.probs);
    let (scores, t_scores) = timed(|| cpu::attn_score::cls_attn_from_probs(&probs, b, HEADS, n))?;
    let ((idx, compl), t_topk) = timed(|| cpu::topk::topk_select(&scores, b, n - 1, k))?;
    let (pruned, t_evit) = timed(|| cpu::prune::evit_prune(&x, b, n, D, &idx, k, &compl, &scores))?;
    let mut x_after = vec![T::from_f32(0.0); b * c.after * D];
    cpu::token_cache::tokens_copy(&pruned, c.out, 0, &mut x_after, c.after, 0, b, c.out, D)?;
    let cache_in: Vec<T> = cvt(&c.cache);
    let (_, t_rec) = timed(|| {
        cpu::token_cache::tokens_copy(
            &cache_in,
            c.cache_cap,
            0,
            &mut x_after,
            c.after,
            c.out,
            b,
            c.recovered,
            D,
        )
    })?;
    let mut cache = cache_in.clone();
    let t_take = match c.take_args() {
        Some(a) => timed(|| cpu::token_cache::cache_take(&x_after, &mut cache, &a))?.1,
        None => Duration::ZERO,
    };
    let times = LayerTimes {
        scores: t_scores,
        select: t_scores + t_topk,
        gather: t_evit,
        prune: t_scores + t_topk + t_evit,
        recover: t_rec,
        take: t_take,
    };
    Ok((
        LayerOut {
            scores,
            idx,
            compl,
            pruned,
            x_after,
            cache,
        },
        times,
    ))
}

/// Mean time of `reps` calls of `f` on `dev` (one synchronize before and after).
fn time_dev<D: Device>(
    dev: &D,
    reps: u32,
    mut f: impl FnMut() -> clca::Result<()>,
) -> Res<Duration> {
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed() / reps.max(1))
}

/// The same layer through the kernels on `dev`: one checked run with `ops::prune::prune`, then
/// `reps` timed calls of each op.
fn dev_layer<D: Device, T: Element>(
    dev: &D,
    c: &LayerCase,
    reps: u32,
) -> Res<(LayerOut<T>, LayerTimes)> {
    let (b, n, k) = (c.batch, c.n, c.k);
    let x = dev.upload(&cvt::<T>(&c.x))?;
    let probs = dev.upload(&cvt::<T>(&c.probs))?;
    let cache_in = dev.upload(&cvt::<T>(&c.cache))?;
    let mut cache = dev.upload(&cvt::<T>(&c.cache))?;
    let mut sel = Selection::new(dev, b, n, k)?;
    let mut pruned = dev.zeros::<T>(b * c.out * D)?;
    let mut x_after = dev.zeros::<T>(b * c.after * D)?;
    let src: ScoreSource<'_, D, T> = ScoreSource::Probs {
        probs: &probs,
        heads: HEADS,
    };
    let take = c.take_args();

    prune(dev, &src, &x, D, PruneMode::EVit, &mut sel, &mut pruned)?;
    // The prune writes a dense [B, 2+k, D]; the sequence buffer has room for the recovered tokens.
    tokens_copy(
        dev,
        &pruned,
        c.out,
        0,
        &mut x_after,
        c.after,
        0,
        b,
        c.out,
        D,
    )?;
    recover(
        dev,
        &cache_in,
        c.cache_cap,
        c.recovered,
        &mut x_after,
        c.after,
        c.out,
        b,
        D,
    )?;
    if let Some(a) = &take {
        cache_take(dev, &x_after, &mut cache, a)?;
    }
    dev.synchronize()?;
    let out = LayerOut {
        scores: dev.download(&sel.scores)?,
        idx: dev.download(&sel.idx)?,
        compl: dev.download(&sel.compl)?,
        pruned: dev.download(&pruned)?,
        x_after: dev.download(&x_after)?,
        cache: dev.download(&cache)?,
    };

    // Every op is idempotent on these buffers, so re-running it for timing changes nothing.
    let mut t = LayerTimes {
        select: time_dev(dev, reps, || select(dev, &src, &mut sel))?,
        gather: time_dev(dev, reps, || {
            evit_prune(
                dev,
                &x,
                b,
                n,
                D,
                &sel.idx,
                k,
                &sel.compl,
                &sel.scores,
                &mut pruned,
            )
        })?,
        prune: time_dev(dev, reps, || {
            prune(dev, &src, &x, D, PruneMode::EVit, &mut sel, &mut pruned)
        })?,
        recover: time_dev(dev, reps, || {
            recover(
                dev,
                &cache_in,
                c.cache_cap,
                c.recovered,
                &mut x_after,
                c.after,
                c.out,
                b,
                D,
            )
            .map(|_| ())
        })?,
        ..LayerTimes::default()
    };
    if let Some(a) = &take {
        t.take = time_dev(dev, reps, || cache_take(dev, &x_after, &mut cache, a))?;
    }
    Ok((out, t))
}

// ---------------------------------------------------------------------------------------------
// The CLA head

fn bn_params(rng: &mut Rng, c: usize) -> [Vec<f32>; 4] {
    [
        (0..c).map(|_| 1.0 + 0.1 * rng.sym()).collect(),
        rng.vec_sym(c, 0.1),
        rng.vec_sym(c, 0.1),
        (0..c).map(|_| 1.0 + 0.5 * rng.unit()).collect(),
    ]
}

/// The default head (BN1 + grouped conv + BN2 folded, GELU, Linear) and the linear variant,
/// on random parameters; f = the plan's number of CLS taps.
fn heads(f: usize, seed: u64) -> Res<[(&'static str, ClaHead); 2]> {
    let mut rng = Rng::new(seed, 100);
    let [w1, b1, m1, v1] = bn_params(&mut rng, D);
    let [w2, b2, m2, v2] = bn_params(&mut rng, GROUPS * D);
    let bn1 = BatchNorm {
        weight: &w1,
        bias: &b1,
        running_mean: &m1,
        running_var: &v1,
        eps: 1e-5,
    };
    let bn2 = BatchNorm {
        weight: &w2,
        bias: &b2,
        running_mean: &m2,
        running_var: &v2,
        eps: 1e-5,
    };
    let conv_w = rng.vec_sym(GROUPS * D * f, 0.5);
    let conv_b = rng.vec_sym(GROUPS * D, 0.1);
    let conv = ClaHead {
        body: ClaBody::Conv(ClaConv::fold(&bn1, &conv_w, &conv_b, &bn2, D, f, GROUPS)?),
        classes: CLASSES,
        fc_w: rng.vec_sym(CLASSES * GROUPS * D, 0.05),
        fc_b: rng.vec_sym(CLASSES, 0.1),
    };
    let linear = ClaHead {
        body: ClaBody::Linear(ClaLinear {
            d: D,
            f,
            w: rng.vec_sym(f, 0.5),
            b0: 0.1,
            gamma: (0..D).map(|_| 1.0 + 0.1 * rng.sym()).collect(),
            beta: rng.vec_sym(D, 0.1),
            eps: 1e-6,
        }),
        classes: CLASSES,
        fc_w: rng.vec_sym(CLASSES * D, 0.05),
        fc_b: rng.vec_sym(CLASSES, 0.1),
    };
    Ok([("CLA head (conv)", conv), ("CLA head (linear)", linear)])
}

fn argmax<T: Element>(row: &[T]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if v.to_f32() > row.get(best).map_or(f32::NEG_INFINITY, |b| b.to_f32()) {
            best = i;
        }
    }
    best
}

fn dev_head<D: Device, T: Element>(
    dev: &D,
    head: &ClaHead,
    z: &[T],
    batch: usize,
    reps: u32,
) -> Res<(Vec<T>, Duration)> {
    let h = DeviceClaHead::<D, T>::new(dev, head)?;
    let zb = dev.upload(z)?;
    let mut hidden = dev.zeros::<T>(batch * h.hidden())?;
    let mut logits = dev.zeros::<T>(batch * head.classes)?;
    h.forward(dev, &zb, batch, &mut hidden, &mut logits)?;
    let out = dev.download(&logits)?;
    let t = time_dev(dev, reps, || {
        h.forward(dev, &zb, batch, &mut hidden, &mut logits)
    })?;
    Ok((out, t))
}

// ---------------------------------------------------------------------------------------------
// Sections

fn first_kept(idx: &[u32], k: usize, show: usize) -> String {
    let v: Vec<String> = idx.iter().take(k.min(show)).map(u32::to_string).collect();
    format!("{}{}", v.join(" "), if k > show { " …" } else { "" })
}

fn cpu_section(
    cases: &[LayerCase],
    hs: &[(&'static str, ClaHead)],
    z: &[f32],
    batch: usize,
) -> Res<()> {
    section(&format!(
        "CPU reference (clca::cpu), f32, batch {batch}: one pass of each reduction layer"
    ));
    println!("  inputs: x [B, n, 768] ~ U(-1, 1); attention probabilities [B, 12, n, n] (random softmax rows);");
    println!("  cache [B, 6, 768] ~ U(-1, 1) (carriers of earlier blocks); kept indices count non-cls tokens (i = token 1 + i);");
    println!("  times: best of {CPU_REPS} runs.");
    let mut t = Table::new(&[
        ("block", true),
        ("op", false),
        ("input", false),
        ("output", false),
        ("what it produced", false),
        ("time", true),
    ]);
    for c in cases {
        let (o, tm) = cpu_layer::<f32>(c)?;
        let (b, n, k) = (c.batch, c.n, c.k);
        let s0: f32 = o.scores.iter().take(n - 1).sum();
        t.row(vec![
            c.block.to_string(),
            "cls-attn scores".into(),
            format!("probs {}", shape(&[b, HEADS, n, n])),
            format!("scores {}", shape(&[b, n - 1])),
            format!("head-mean of cls row; sample 0 sums to {s0:.4}"),
            fmt_time(tm.scores),
        ]);
        t.row(vec![
            c.block.to_string(),
            "top-k".into(),
            format!("scores {}", shape(&[b, n - 1])),
            format!("idx {}, compl {}", shape(&[b, k]), shape(&[b, n - 1 - k])),
            format!(
                "k = ⌈0.1·{}⌉ = {k}; sample 0 keeps {}",
                n - 1,
                first_kept(&o.idx, k, 6)
            ),
            fmt_time(tm.select - tm.scores),
        ]);
        t.row(vec![
            c.block.to_string(),
            "EViT prune".into(),
            format!("x {}", shape(&[b, n, D])),
            format!("x {}", shape(&[b, c.out, D])),
            format!("[cls, {k} kept, fused of {} dropped]", n - 1 - k),
            fmt_time(tm.gather),
        ]);
        if c.recovered > 0 {
            t.row(vec![
                c.block.to_string(),
                "recover".into(),
                format!("cache {}", shape(&[b, c.cache_cap, D])),
                format!("x {}", shape(&[b, c.after, D])),
                format!("{} cached tokens → x[{}..{})", c.recovered, c.out, c.after),
                fmt_time(tm.recover),
            ]);
        }
        if let Some((pool, slot)) = &c.take {
            t.row(vec![
                c.block.to_string(),
                "cache take".into(),
                format!("x {}", shape(&[b, c.after, D])),
                format!("cache {}", shape(&[b, c.cache_cap, D])),
                carriers_text(pool, *slot, c.after),
                fmt_time(tm.take),
            ]);
        }
    }
    for (name, head) in hs {
        let (d, f) = head.input_dims();
        let (logits, tm) = timed(|| head.forward_cpu(z, batch))?;
        t.row(vec![
            "head".into(),
            (*name).into(),
            format!("z {}", shape(&[batch, d, f])),
            format!("logits {}", shape(&[batch, head.classes])),
            format!(
                "{}; sample 0 → class {}",
                match head.body {
                    ClaBody::Conv(_) => "BN + grouped conv (g = 2) folded, GELU, fc",
                    ClaBody::Linear(_) => "fc over taps, ReLU, LayerNorm, fc",
                },
                argmax(&logits[..head.classes.min(logits.len())])
            ),
            fmt_time(tm),
        ]);
    }
    t.print();
    Ok(())
}

/// Tolerance on values per dtype (selections must be equal).
fn tol<T: Element>() -> f32 {
    match T::DTYPE {
        clca::DType::F32 => 1e-4,
        clca::DType::F16 => 1e-2,
        clca::DType::BF16 => 6e-2,
    }
}

/// Runs the layers and heads on `dev` in dtype T and appends rows comparing them with the CPU
/// reference in the same dtype. Returns whether everything matched.
fn check_device<D: Device, T: Element>(
    dev: &D,
    cases: &[&LayerCase],
    hs: &[(&'static str, ClaHead)],
    z: &[f32],
    batch: usize,
    reps: u32,
    t: &mut Table,
) -> Res<bool> {
    let dt = T::DTYPE.to_string();
    let tol = tol::<T>();
    let mut all = true;
    let mut push = |t: &mut Table,
                    block: String,
                    op: &str,
                    dev_t: Duration,
                    cpu_t: Duration,
                    sel: Option<bool>,
                    diff: f32| {
        let ok = sel != Some(false) && diff <= tol;
        all &= ok;
        t.row(vec![
            dt.clone(),
            block,
            op.into(),
            fmt_time(dev_t),
            fmt_time(cpu_t),
            match sel {
                Some(true) => "equal".into(),
                Some(false) => "DIFFERENT".into(),
                None => "-".into(),
            },
            fmt_diff(diff),
            if ok {
                "ok".into()
            } else {
                format!("MISMATCH (tol {tol:.0e})")
            },
        ]);
    };
    for c in cases {
        let (r, rt) = cpu_layer::<T>(c)?;
        let (g, gt) = dev_layer::<D, T>(dev, c, reps)?;
        let same_sel = r.idx == g.idx && r.compl == g.compl;
        let blk = c.block.to_string();
        push(
            t,
            blk.clone(),
            "select (scores → top-k)",
            gt.select,
            rt.select,
            Some(same_sel),
            max_abs_diff(&r.scores, &g.scores),
        );
        push(
            t,
            blk.clone(),
            "EViT gather",
            gt.gather,
            rt.gather,
            None,
            max_abs_diff(&r.pruned, &g.pruned),
        );
        push(
            t,
            blk.clone(),
            "prune (fused: select + gather)",
            gt.prune,
            rt.prune,
            Some(same_sel),
            max_abs_diff(&r.pruned, &g.pruned),
        );
        if c.recovered > 0 {
            push(
                t,
                blk.clone(),
                "recover",
                gt.recover,
                rt.recover,
                None,
                max_abs_diff(&r.x_after, &g.x_after),
            );
        }
        if c.take.is_some() {
            push(
                t,
                blk,
                "cache take",
                gt.take,
                rt.take,
                None,
                max_abs_diff(&r.cache, &g.cache),
            );
        }
    }
    let zt: Vec<T> = cvt(z);
    for (name, head) in hs {
        let (r, rt) = timed(|| head.forward_cpu(&zt, batch))?;
        let (g, gt) = dev_head::<D, T>(dev, head, &zt, batch, reps)?;
        push(t, "head".into(), name, gt, rt, None, max_abs_diff(&r, &g));
    }
    Ok(all)
}

fn check_table() -> Table {
    Table::new(&[
        ("dtype", false),
        ("block", true),
        ("op", false),
        ("device", true),
        ("CPU ref", true),
        ("selection", false),
        ("max |diff|", true),
        ("check", false),
    ])
}

fn shim_section(
    cases: &[LayerCase],
    hs: &[(&'static str, ClaHead)],
    z: &[f32],
    batch: usize,
) -> Res<bool> {
    let Some(small) = cases.iter().min_by_key(|c| c.n) else {
        return Ok(true);
    };
    section(&format!(
        "Host shim (CUDA sources on the CPU), f32, batch {batch}: smallest layer (block {}, n = {}) and the heads, once",
        small.block, small.n
    ));
    let mut t = check_table();
    let ok = check_device::<HostShim, f32>(&HostShim, &[small], hs, z, batch, 1, &mut t)?;
    t.print();
    println!(
        "{}",
        if ok {
            "host shim: ok"
        } else {
            "host shim: MISMATCH against the CPU reference"
        }
    );
    Ok(ok)
}

#[cfg(feature = "cuda")]
fn cuda_section(
    cases: &[LayerCase],
    hs: &[(&'static str, ClaHead)],
    z: &[f32],
    batch: usize,
) -> Res<bool> {
    let dev = match clca::cuda::try_default() {
        Ok(d) => d,
        Err(why) => {
            section("CUDA");
            println!("CUDA: skipped ({why})");
            return Ok(true);
        }
    };
    section(&format!(
        "CUDA: {} — batch {batch}, mean of {GPU_REPS} runs per op",
        dev.name()
    ));
    let all: Vec<&LayerCase> = cases.iter().collect();
    let mut t = check_table();
    let mut ok = check_device::<_, f32>(&dev, &all, hs, z, batch, GPU_REPS, &mut t)?;
    ok &= check_device::<_, clca::f16>(&dev, &all, hs, z, batch, GPU_REPS, &mut t)?;
    ok &= check_device::<_, clca::bf16>(&dev, &all, hs, z, batch, GPU_REPS, &mut t)?;
    t.print();
    println!("  (CPU ref = the clca::cpu reference in the same dtype, one run; device times exclude transfers)");
    println!(
        "{}",
        if ok {
            "cuda: ok"
        } else {
            "cuda: MISMATCH against the CPU reference"
        }
    );
    Ok(ok)
}

#[cfg(not(feature = "cuda"))]
fn cuda_section(_: &[LayerCase], _: &[(&'static str, ClaHead)], _: &[f32], _: usize) -> Res<bool> {
    section("CUDA");
    println!("CUDA: skipped (built without the `cuda` feature; run `cargo run --release --features cuda`)");
    Ok(true)
}

fn run(batch: usize, seed: u64) -> Res<bool> {
    println!("clca demo: EViT + CLCA on ViT-B/16 at 448 px (the paper's configuration)");
    println!(
        "  P = {PATCHES} patches, C = {NUM_CLR} clr token, D = {D}, H = {HEADS} heads, depth {DEPTH}; \
         EViT at blocks 3 6 9, keep rate {KEEP_RATE}"
    );
    println!("  cache: GAP carrier on, recover at the last layer on (train.py defaults); batch {batch}, seed {}", seed);

    let p = build_plan()?;
    let plan_ok = print_plan(&p);

    let t0 = Instant::now();
    let cases = layer_cases(&p, batch, seed);
    let hs = heads(p.taps, seed)?;
    let z = Rng::new(seed, 200).vec_sym(batch * D * p.taps, 1.0);
    println!();
    println!("(random inputs generated in {})", fmt_time(t0.elapsed()));

    cpu_section(&cases, &hs, &z, batch)?;
    let shim_ok = shim_section(&cases, &hs, &z, batch)?;
    let cuda_ok = cuda_section(&cases, &hs, &z, batch)?;
    Ok(plan_ok && shim_ok && cuda_ok)
}
