//! `clca`: the command-line interface of the crate.
//!
//! - `clca` / `clca run`: the paper's configuration (EViT + CLCA, ViT-B/16 CLIP at 448 px) with
//!   random or given weights: tokens and MACs per block, CPU (and GPU) latency, top-5.
//! - `clca forward`: one forward of a golden-format case, logits (+ trace) to safetensors.
//! - `clca classify`: images through a checkpoint, with the authors' `train.py` flag names.
//! - `clca ops`: the op-level tour (every reduction op on the CPU, the host shim and the GPU).
//!
//! Errors go to stderr as `error: …` with a `hint: …`; exit code 2 for bad input, 1 for a
//! failure while computing.
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

mod backend;
mod bench;
mod classify;
mod error;
mod forward;
mod info;
mod ops_demo;
mod random_weights;
mod run;
mod table;

use backend::{DeviceArg, DtypeArg};
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "clca",
    version,
    about = "Token-reduced ViTs with Cross-Layer Cache Aggregation (CLCA): CUDA kernels and CPU references",
    long_about = "Token-reduced ViTs with Cross-Layer Cache Aggregation (Rios et al., ICASSP 2025; the authors' code is arkel23/CLCA).\n\nWithout a subcommand, runs `clca run`: the paper's configuration (EViT + CLCA on ViT-B/16 CLIP at 448 px) with seeded random weights.",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  clca                                   the paper's configuration, random weights, CPU latency\n  clca forward --config ../shared/golden/A_evit_clc_ifa/config.json --weights W --input I --output O.safetensors\n  clca classify --weights ckpt.safetensors --image leaf.jpg --reduction_loc 3 6 9 --keep_rate 0.1 --clc --num_clr 1 --ifa_head"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The paper's configuration (the default): tokens and MACs per block vs the unreduced model, latency, top-5.
    Run(RunArgs),
    /// One forward of a golden-format case (config.json, weights, `images`) written to safetensors.
    Forward(ForwardArgs),
    /// Classify images with a checkpoint, built from the authors' train.py flags.
    Classify(ClassifyArgs),
    /// The op-level tour: each reduction op of the paper's configuration on the CPU reference, the host shim and the GPU.
    Ops(OpsArgs),
    /// What a checkpoint holds (backbone, method, cache, head, parameters) and whether it loads.
    Info(InfoArgs),
    /// MACs and forward time against keep rate, for methods and batch sizes (random weights).
    Bench(BenchArgs),
    /// Write seeded random weights for a model (train.py flags) to safetensors.
    #[command(hide = true)]
    RandomWeights(RandomWeightsArgs),
}

/// `clca run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Images per forward.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub batch: usize,
    /// Seed of the random weights and images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Timed forwards per backend (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// A safetensors checkpoint of this configuration in the authors' names, instead of random
    /// weights (classes from `ifa_head.0.4.weight`).
    #[arg(long, value_name = "FILE.safetensors")]
    pub weights: Option<PathBuf>,
    /// Storage types of the GPU forward (with `--features cuda` and a GPU), comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "f32,f16,bf16"
    )]
    pub dtype: Vec<DtypeArg>,
    /// Rayon threads of the CPU forward (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also time the unreduced model (vit_base_patch16_clip_224.laion2b at 448) on the CPU.
    #[arg(long)]
    pub baseline: bool,
}

/// `clca forward`.
#[derive(Args, Debug, Clone)]
pub struct ForwardArgs {
    /// A golden case's config.json (or its directory). Without it, the model is built from the
    /// train.py flags below (as `clca classify` does).
    #[arg(long, value_name = "DIR/config.json")]
    pub config: Option<PathBuf>,
    /// The weights, safetensors in the authors' parameter names.
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// Safetensors with `images` [B, 3, S, S] f32 (normalized).
    #[arg(long, value_name = "I.safetensors")]
    pub input: PathBuf,
    /// Where to write `logits` [B, classes] (and with --trace the per-block tensors).
    #[arg(long, value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// cpu: the f32 reference; shim: the CUDA kernels on the CPU (slow, exact); cuda: a GPU
    /// (an error without one); auto: the GPU if one opens, else the CPU with a note.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Storage type of the device forward (the CPU forward is f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Also write every per-block tensor, under the golden files' names (block_in.i, cls_attn.i, keep_idx.i, …).
    #[arg(long)]
    pub trace: bool,
    /// Rayon threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Untimed forwards before the timed ones (with --runs).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed forwards (weights loaded and buffers allocated first); 0 = time the one forward that writes the output.
    #[arg(long, default_value_t = 0)]
    pub runs: usize,
    /// Print one JSON line (forward_median_s, forward_min_s, forward_max_s, batch, macs, device, dtype, threads, …) and nothing else on stdout.
    #[arg(long)]
    pub json: bool,
    /// Time every phase of every block (patch embed, ln1, qkv, attention, proj, residual, ln2,
    /// fc1, gelu, fc2, reduction, cache, head) over the timed runs and print the table on
    /// stderr (with --json also as a `profile` field). On a device every phase ends with a
    /// synchronize, so the profiled forward runs a little slower than an unprofiled one.
    #[arg(long)]
    pub profile: bool,
    /// Capture the GPU forward once as a CUDA graph and replay it at every run (one launch
    /// instead of one per kernel; not for ATS, which reads sample counts back to the host).
    #[arg(long = "cuda-graph", conflicts_with_all = ["trace", "profile"])]
    pub cuda_graph: bool,
    /// The model, when no --config is given (train.py names; --dpc-noise-seed and
    /// --ats-batch-padding apply with --config too).
    #[command(flatten)]
    pub flags: ModelFlags,
}

/// The model flags, with the authors' `train.py` names and defaults.
#[derive(Args, Debug, Clone)]
pub struct ModelFlags {
    /// train.py --model: [method_]backbone[.tag], method evit_ or topk_ (or none).
    #[arg(long, default_value = "evit_vit_base_patch16_clip_224.laion2b")]
    pub model: String,
    /// train.py --input-size (default: the checkpoint's pos_embed grid, else 448).
    #[arg(long = "input-size", value_name = "N")]
    pub input_size: Option<usize>,
    /// train.py --reduction_loc: reduction layers, 0-based.
    #[arg(long = "reduction_loc", num_args = 1.., default_values_t = [3usize, 6, 9])]
    pub reduction_loc: Vec<usize>,
    /// train.py --keep_rate: one value, or one per reduction layer.
    #[arg(long = "keep_rate", num_args = 1.., default_values_t = [1.0f64], allow_negative_numbers = true)]
    pub keep_rate: Vec<f64>,
    /// train.py --clc: the cross-layer cache.
    #[arg(long)]
    pub clc: bool,
    /// train.py --num_clr: learned carrier tokens.
    #[arg(long = "num_clr", default_value_t = 0)]
    pub num_clr: usize,
    /// train.py --ifa_head: the cross-layer aggregation (CLA) head.
    #[arg(long = "ifa_head")]
    pub ifa_head: bool,
    /// train.py --clc_include_gap (store_false): passing it turns the GAP carrier OFF.
    #[arg(long = "clc_include_gap", action = ArgAction::SetFalse)]
    pub clc_include_gap: bool,
    /// train.py --clc_recover_at_last (store_false): passing it turns the recovery after block depth-2 OFF.
    #[arg(long = "clc_recover_at_last", action = ArgAction::SetFalse)]
    pub clc_recover_at_last: bool,
    /// train.py --clc_pool_cls: the GAP also averages the cls token.
    #[arg(long = "clc_pool_cls")]
    pub clc_pool_cls: bool,
    /// train.py --clc_pool_clr: the first GAP also averages the clr tokens.
    #[arg(long = "clc_pool_clr")]
    pub clc_pool_clr: bool,
    /// train.py --ifa_dws_conv_groups: the CLA conv's depth multiplier (0 = the linear variant).
    #[arg(long = "ifa_dws_conv_groups", default_value_t = 2)]
    pub ifa_dws_conv_groups: usize,
    /// train.py --k_neighbors (DPC-KNN): neighbours for the density.
    #[arg(long = "k_neighbors", default_value_t = 5)]
    pub k_neighbors: usize,
    /// train.py --equal_weight (DPC-KNN): merge clusters with equal weights.
    #[arg(long = "equal_weight")]
    pub equal_weight: bool,
    /// Ours (DPC-KNN): add seeded U(0,1)·1e-6 noise to the densities, as the authors do
    /// with torch.rand (off by default: deterministic, ties broken by lower index).
    #[arg(long = "dpc-noise-seed", value_name = "SEED")]
    pub dpc_noise_seed: Option<u64>,
    /// Ours (ATS): pad each batch like the authors' code (padded cls copies enter the GAP
    /// carrier, so an image's result depends on its batch). Off: each image runs alone.
    #[arg(long = "ats-batch-padding")]
    pub ats_batch_padding: bool,
}

impl ModelFlags {
    /// The `train.py` flags with `num_classes`.
    pub fn train_flags(&self, num_classes: usize) -> clca::vit::TrainFlags {
        clca::vit::TrainFlags {
            input_size: self.input_size,
            reduction_loc: self.reduction_loc.clone(),
            keep_rate: self.keep_rate.clone(),
            clc: self.clc,
            num_clr: self.num_clr,
            ifa_head: self.ifa_head,
            ifa_dws_conv_groups: self.ifa_dws_conv_groups,
            clc_include_gap: self.clc_include_gap,
            clc_recover_at_last: self.clc_recover_at_last,
            clc_pool_cls: self.clc_pool_cls,
            clc_pool_clr: self.clc_pool_clr,
            num_classes,
            k_neighbors: self.k_neighbors,
            equal_weight: self.equal_weight,
        }
    }

    /// The method options that are ours, not train.py's.
    pub fn apply_ours(&self, cfg: &mut clca::vit::VitConfig) {
        cfg.method.dpc_noise_seed = self.dpc_noise_seed;
        cfg.method.ats_batch_padding = self.ats_batch_padding;
    }
}

const TRAIN_PY_NOTE: &str = "The model flags keep train.py's names and meanings. Mind the two store_false flags: GAP carriers and\nrecover-at-last are ON unless --clc_include_gap / --clc_recover_at_last are passed (passing them turns them OFF).\n\nThe README's checkpoint: --model evit_vit_base_patch16_clip_224.laion2b --input-size 448 --reduction_loc 3 6 9\n  --keep_rate 0.1 --clc --num_clr 1 --ifa_head";

/// `clca classify`: the model flags are the authors' `train.py` names.
#[derive(Args, Debug, Clone)]
#[command(after_help = TRAIN_PY_NOTE)]
pub struct ClassifyArgs {
    /// The checkpoint: safetensors in the authors' parameter names (classes from its head).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// Images (PNG or JPEG) or folders of them (their .png/.jpg/.jpeg files, sorted by name);
    /// several may follow one --image.
    #[arg(long, value_name = "PATH", required = true, num_args = 1..)]
    pub image: Vec<PathBuf>,
    /// Images per forward (the last batch is padded with its last image).
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub batch: usize,
    /// Also write every image's top-k classes to FILE: JSON (.json) or CSV (.csv).
    #[arg(long, value_name = "FILE.json|FILE.csv")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ModelFlags,
    /// cpu: the f32 reference; cuda: a GPU (an error without one); auto: the GPU if one
    /// opens, else the CPU with a note; shim: the CUDA kernels on the CPU (slow).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Storage type of the device forward (the CPU forward is f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Classes shown per image.
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Class names, one per line in class-index order.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Rayon threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `clca random-weights` (hidden; for tests and demos): a seeded random checkpoint.
#[derive(Args, Debug, Clone)]
#[command(after_help = TRAIN_PY_NOTE)]
pub struct RandomWeightsArgs {
    #[command(flatten)]
    pub flags: ModelFlags,
    /// Classes of the head.
    #[arg(long = "num_classes", default_value_t = 1000)]
    pub num_classes: usize,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the safetensors file.
    #[arg(long, value_name = "OUT.safetensors")]
    pub output: PathBuf,
}

/// `clca bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Methods, comma-separated: vit, topk, evit, tome, dpcknn, sit, patchmerger, ats, dyvit.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "evit,tome,dpcknn,sit,patchmerger,ats,dyvit"
    )]
    pub methods: Vec<String>,
    /// Keep rates, comma-separated (train.py's --keep_rate, one value per point).
    #[arg(
        long = "keep-rates",
        value_delimiter = ',',
        default_value = "0.1,0.25,0.5,0.7"
    )]
    pub keep_rates: Vec<f64>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// The backbone (the authors' model name without the method prefix).
    #[arg(long, default_value = "vit_base_patch16_224")]
    pub backbone: String,
    /// train.py --input-size.
    #[arg(long = "input-size", default_value_t = 448)]
    pub input_size: usize,
    /// train.py --reduction_loc.
    #[arg(long = "reduction_loc", num_args = 1.., default_values_t = vec![3usize, 6, 9])]
    pub reduction_loc: Vec<usize>,
    /// The methods alone: no cache, no clr, linear head (default: the paper's CLCA).
    #[arg(long = "no-clca")]
    pub no_clca: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Timed forwards per point (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Untimed forwards per point first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// With --device cuda: time each point's forward captured as a CUDA graph (ATS, which
    /// reads sample counts back to the host, runs without one).
    #[arg(long = "cuda-graph")]
    pub cuda_graph: bool,
    /// Rayon threads of the CPU forward (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the random weights and images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the rows as CSV.
    #[arg(long, value_name = "FILE.csv")]
    pub csv: Option<PathBuf>,
}

/// `clca info`.
#[derive(Args, Debug, Clone)]
pub struct InfoArgs {
    /// A safetensors checkpoint in the authors' parameter names.
    #[arg(value_name = "WEIGHTS.safetensors")]
    pub weights: PathBuf,
}

/// `clca ops`.
#[derive(Args, Debug, Clone)]
pub struct OpsArgs {
    /// Images per op.
    #[arg(long, short, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=ops_demo::MAX_BATCH as u64))]
    pub batch: usize,
    /// Seed of the random inputs.
    #[arg(long, short, default_value_t = 0)]
    pub seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        None => run::main(&cli.run),
        Some(Cmd::Run(a)) => run::main(&a),
        Some(Cmd::Forward(a)) => forward::main(&a),
        Some(Cmd::Classify(a)) => classify::main(&a),
        Some(Cmd::Ops(a)) => return ops_demo::main(a.batch, a.seed),
        Some(Cmd::RandomWeights(a)) => random_weights::main(&a),
        Some(Cmd::Info(a)) => info::main(&a),
        Some(Cmd::Bench(a)) => bench::main(&a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            ExitCode::from(e.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn store_false_flags() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["clca", "classify", "--weights", "w", "--image", "i.png"];
            v.extend_from_slice(extra);
            match Cli::try_parse_from(v) {
                Ok(Cli {
                    cmd: Some(Cmd::Classify(a)),
                    ..
                }) => a,
                other => panic!("{other:?}"),
            }
        };
        let a = parse(&[]);
        let a = a.flags;
        assert!(a.clc_include_gap && a.clc_recover_at_last && !a.clc);
        assert_eq!(a.reduction_loc, vec![3, 6, 9]);
        let a = parse(&[
            "--clc_include_gap",
            "--clc_recover_at_last",
            "--reduction_loc",
            "1",
            "3",
            "--keep_rate",
            "0.25",
        ])
        .flags;
        assert!(!a.clc_include_gap && !a.clc_recover_at_last);
        assert_eq!(a.reduction_loc, vec![1, 3]);
        assert_eq!(a.keep_rate, vec![0.25]);
    }

    #[test]
    fn run_is_the_default() {
        let c = match Cli::try_parse_from(["clca", "--batch", "2"]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(c.cmd.is_none());
        assert_eq!(c.run.batch, 2);
        assert!(Cli::try_parse_from(["clca", "--batch", "0"]).is_err());
    }
}
