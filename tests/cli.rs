//! The `clca` binary end to end: `forward` on a golden case (CPU and host shim) against the
//! authors' logits, its `--json` line, `classify` on a PNG with a seeded checkpoint, and the
//! errors (exit code 2, `error:` on stderr, never a panic).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn clca(args: &[&str]) -> Output {
    clca_env(args, &[])
}

fn clca_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clca"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the clca binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The golden directory ($CLCA_GOLDEN_DIR or ../shared/golden), or None (the test then skips).
fn golden() -> Option<PathBuf> {
    let d = std::env::var_os("CLCA_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"));
    if d.join("A_evit_clc_ifa/config.json").is_file() {
        Some(d)
    } else {
        eprintln!("skipping: golden case A not found (set CLCA_GOLDEN_DIR)");
        None
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("clca-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d.join(name)
}

/// A float tensor of a safetensors file as f64.
fn tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let v = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
            .collect(),
        d => panic!("{name}: dtype {d:?}"),
    };
    (t.shape().to_vec(), v)
}

/// `forward` on the golden case in `dir` (its config, weights and input), writing `out`.
fn golden_forward_args(dir: &Path, out: &str) -> Vec<String> {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let mut args = vec!["forward".to_string()];
    for (flag, file) in [
        ("--config", "config.json"),
        ("--weights", "weights.safetensors"),
        ("--input", "input.safetensors"),
    ] {
        args.extend([flag.to_string(), p(file)]);
    }
    args.extend(["--output".to_string(), out.to_string()]);
    args
}

/// Runs `clca forward` on golden case `case` and checks `logits` within 1e-4·max|ref|.
fn forward_case(case: &str, extra: &[&str]) {
    forward_case_env(case, extra, &[]);
}

/// [`forward_case`] with environment variables set for the binary; returns its stdout.
fn forward_case_env(case: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let Some(g) = golden() else {
        return String::new();
    };
    let dir = g.join(case);
    let tag: String = env.iter().map(|(k, v)| format!("{k}{v}")).collect();
    let out = tmp(&format!("{case}-{}{tag}.safetensors", extra.join("_")));
    let mut args = golden_forward_args(&dir, &out.to_string_lossy());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = clca_env(&args, env);
    assert!(
        r.status.success(),
        "clca {args:?}: {}\n{}",
        text(&r.stdout),
        text(&r.stderr)
    );
    let (s, got) = tensor(&out, "logits");
    let (ws, want) = tensor(&dir.join("output.safetensors"), "logits");
    assert_eq!(s, ws, "{case}: logits shape");
    let m = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let d = got
        .iter()
        .zip(&want)
        .fold(0f64, |a, (x, y)| a.max((x - y).abs()));
    assert!(d <= 1e-4 * m, "{case} {extra:?}: max|Δ| {d:e} > 1e-4·{m}");
    if extra.contains(&"--trace") {
        // Selections index for index.
        for name in ["keep_idx.1", "keep_idx.3"] {
            assert_eq!(
                tensor(&out, name).1,
                tensor(&dir.join("output.safetensors"), name).1,
                "{case}: {name}"
            );
        }
    }
    let _ = std::fs::remove_file(&out);
    text(&r.stdout)
}

#[test]
fn forward_cpu_matches_the_authors() {
    forward_case("A_evit_clc_ifa", &[]);
    forward_case("A_evit_clc_ifa", &["--trace"]);
}

/// Every CPU path this machine has (`CLCA_CPU_ISA`) reproduces the authors' logits and says
/// which path it took; an unknown value is a clear error.
#[test]
fn forward_cpu_paths_match_the_authors() {
    use clca::cpu::packed::Isa;
    for (isa, label) in [
        ("portable", "portable"),
        ("avx2", "packed AVX2+FMA"),
        ("avx512", "packed AVX-512"),
    ] {
        if Isa::parse(isa).is_some_and(|i| !i.supported()) {
            eprintln!("skipping CLCA_CPU_ISA={isa}: this CPU lacks it");
            continue;
        }
        let out = forward_case_env("A_evit_clc_ifa", &[], &[("CLCA_CPU_ISA", isa)]);
        assert!(
            out.is_empty() || out.contains(label),
            "CLCA_CPU_ISA={isa}: backend line should name {label}: {out}"
        );
    }
    let Some(g) = golden() else { return };
    let args = golden_forward_args(
        &g.join("A_evit_clc_ifa"),
        &tmp("bad-isa.safetensors").to_string_lossy(),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = clca_env(&args, &[("CLCA_CPU_ISA", "sse9")]);
    assert_bad_input(&r, "CLCA_CPU_ISA");
}

#[test]
fn forward_host_shim_matches_the_authors() {
    forward_case("A_evit_clc_ifa", &["--device", "shim", "--dtype", "f32"]);
}

#[test]
fn forward_json_line() {
    let Some(g) = golden() else { return };
    let out = tmp("json.safetensors").to_string_lossy().into_owned();
    let mut args = golden_forward_args(&g.join("A_evit_clc_ifa"), &out);
    args.extend(["--threads", "1", "--warmup", "1", "--runs", "3", "--json"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = clca(&args);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let stdout = text(&r.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    for k in [
        "forward_median_s",
        "forward_min_s",
        "forward_max_s",
        "batch",
        "macs",
        "device",
        "dtype",
        "threads",
    ] {
        assert!(v.get(k).is_some(), "key {k} missing in {v}");
    }
    let (lo, med, hi) = (
        v["forward_min_s"].as_f64().expect("min"),
        v["forward_median_s"].as_f64().expect("median"),
        v["forward_max_s"].as_f64().expect("max"),
    );
    assert!(0.0 < lo && lo <= med && med <= hi, "{v}");
    assert_eq!(v["batch"], 2);
    assert_eq!(v["threads"], 1);
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["dtype"], "f32");
    assert!(v["macs"].as_u64().expect("macs") > 0);
    let _ = std::fs::remove_file(&out);
}

/// Bad input: exit code 2, `error:` and a hint on stderr, no panic.
fn assert_bad_input(r: &Output, needle: &str) {
    let err = text(&r.stderr);
    // `--nocapture` lists every message (docs/reliability.md quotes them).
    eprintln!("{}", err.lines().next().unwrap_or_default());
    assert_eq!(r.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("error: "), "stderr: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn every_method_runs_on_the_cpu_and_the_shim() {
    let Some(g) = golden() else { return };
    let out = tmp("refused.safetensors").to_string_lossy().into_owned();
    for (case, class) in [
        ("E_dpcknn_clc_ifa", "DPCKNN"),
        ("L_sit_clc_ifa", "SiT"),
        ("M_patchmerger_clc_ifa", "PatchMerger"),
        ("N_ats_clc_ifa", "ATS"),
        ("O_dyvit_clc_ifa", "DyViT"),
    ] {
        let dir = g.join(case);
        if !dir.is_dir() {
            continue;
        }
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let args = [
            "forward",
            "--config",
            &p("config.json"),
            "--weights",
            &p("weights.safetensors"),
            "--input",
            &p("input.safetensors"),
            "--output",
            &out,
        ];
        let r = clca(&args);
        assert!(r.status.success(), "{case} ({class}): {}", text(&r.stderr));
        let mut dev = args.to_vec();
        dev.extend(["--device", "shim"]);
        let r = clca(&dev);
        assert!(
            r.status.success(),
            "{case} on the shim: {}",
            text(&r.stderr)
        );
        if class == "ATS" {
            // The authors' batch padding runs on the CPU forward only.
            dev.push("--ats-batch-padding");
            let r = clca(&dev);
            assert_bad_input(&r, "batch padding on the device forward");
            assert!(text(&r.stderr).contains("hint: "), "{case}");
        }
    }
}

#[test]
fn bad_input_exits_2() {
    let missing = tmp("missing.json").to_string_lossy().into_owned();
    let r = clca(&[
        "forward",
        "--config",
        &missing,
        "--weights",
        "w",
        "--input",
        "i",
        "--output",
        "o",
    ]);
    assert_bad_input(&r, "cannot read");
    // Usage errors (clap) use the same code.
    assert_bad_input(&clca(&["forward", "--device", "gpu"]), "--device");
    assert_bad_input(&clca(&["--batch", "0"]), "--batch");
    if let Some(g) = golden() {
        let dir = g.join("A_evit_clc_ifa");
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let out = tmp("bad.safetensors").to_string_lossy().into_owned();
        // f16 on the CPU reference.
        let r = clca(&[
            "forward",
            "--config",
            &p("config.json"),
            "--weights",
            &p("weights.safetensors"),
            "--input",
            &p("input.safetensors"),
            "--output",
            &out,
            "--dtype",
            "f16",
        ]);
        assert_bad_input(&r, "f32 only");
        // Weights of another configuration.
        let plain = g.join("G_vit_plain/config.json");
        let r = clca(&[
            "forward",
            "--config",
            &plain.to_string_lossy(),
            "--weights",
            &p("weights.safetensors"),
            "--input",
            &p("input.safetensors"),
            "--output",
            &out,
        ]);
        assert_bad_input(&r, "pos_embed");
    }
}

/// The train.py flags of the small EViT + CLC + CLA model the classify tests build.
const TINY_CLASSIFY_MODEL: [&str; 13] = [
    "--model",
    "evit_deit_tiny_patch16_224",
    "--input-size",
    "64",
    "--reduction_loc",
    "1",
    "3",
    "--keep_rate",
    "0.5",
    "--clc",
    "--num_clr",
    "1",
    "--ifa_head",
];

#[test]
fn classify_a_png() {
    let w = tmp("tiny.safetensors").to_string_lossy().into_owned();
    let model = TINY_CLASSIFY_MODEL;
    let mut args = vec!["random-weights", "--num_classes", "7", "--output", &w];
    args.extend_from_slice(&model);
    let r = clca(&args);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let png = tmp("leaf.png");
    let img = image::RgbImage::from_fn(90, 70, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 77])
    });
    img.save(&png).expect("write png");
    let png = png.to_string_lossy().into_owned();
    let mut args = vec!["classify", "--weights", &w, "--image", &png, "--topk", "3"];
    args.extend_from_slice(&model);
    let r = clca(&args);
    let out = text(&r.stdout);
    assert!(r.status.success(), "{out}\n{}", text(&r.stderr));
    assert!(out.contains("7 classes"), "{out}");
    let ranks = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(ranks, 3, "{out}");
    // Without --num_clr the checkpoint does not fit: exit 2 with a hint naming the flag.
    let mut args = vec!["classify", "--weights", &w, "--image", &png];
    args.extend_from_slice(&model[..10]); // everything up to --clc: no --num_clr
    args.push("--ifa_head");
    let r = clca(&args);
    assert_bad_input(&r, "--num_clr 1");
}

/// A folder of PNGs in batches (the last one padded), with labels and JSON / CSV output: each
/// image's result is the one it gets alone.
#[test]
fn classify_a_folder_in_batches_with_output() {
    let w = tmp("tiny_folder.safetensors")
        .to_string_lossy()
        .into_owned();
    let model = TINY_CLASSIFY_MODEL;
    let mut args = vec!["random-weights", "--num_classes", "5", "--output", &w];
    args.extend_from_slice(&model);
    assert!(clca(&args).status.success());
    let dir = tmp("folder");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for i in 0..5u32 {
        let img = image::RgbImage::from_fn(80, 60, |x, y| {
            image::Rgb([
                (x * 3 + i * 40) as u8,
                (y * 2 + i * 13) as u8,
                (i * 50) as u8,
            ])
        });
        img.save(dir.join(format!("im{i}.png"))).expect("write png");
    }
    std::fs::write(dir.join("readme.txt"), "not an image").expect("write");
    let labels = tmp("labels.txt");
    std::fs::write(&labels, "a\nb\nc\nd\ne\n").expect("write");
    let (d, l) = (
        dir.to_string_lossy().into_owned(),
        labels.to_string_lossy().into_owned(),
    );
    let json = tmp("out.json").to_string_lossy().into_owned();
    let mut args = vec![
        "classify",
        "--weights",
        &w,
        "--image",
        &d,
        "--batch",
        "2",
        "--labels",
        &l,
        "--topk",
        "2",
        "--output",
        &json,
    ];
    args.extend_from_slice(&model);
    let r = clca(&args);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("valid JSON");
    let imgs = v["images"].as_array().expect("images");
    assert_eq!(imgs.len(), 5, "{v}");
    for (i, e) in imgs.iter().enumerate() {
        assert!(e["image"]
            .as_str()
            .expect("path")
            .ends_with(&format!("im{i}.png")));
        let top = e["top"].as_array().expect("top");
        assert_eq!(top.len(), 2);
        let ci = top[0]["class"].as_u64().expect("class") as usize;
        assert_eq!(top[0]["name"], ["a", "b", "c", "d", "e"][ci]);
        // The same image alone (batch 1) gets the same logit.
        let csv = tmp(&format!("one{i}.csv")).to_string_lossy().into_owned();
        let p = dir
            .join(format!("im{i}.png"))
            .to_string_lossy()
            .into_owned();
        let mut args = vec!["classify", "--weights", &w, "--image", &p, "--output", &csv];
        args.extend_from_slice(&model);
        assert!(clca(&args).status.success());
        let c = std::fs::read_to_string(&csv).expect("csv");
        let row: Vec<&str> = c.lines().nth(1).expect("row").split(',').collect();
        assert_eq!(row[2], ci.to_string(), "{c}");
        let (a, b) = (
            row[5].parse::<f64>().expect("logit"),
            top[0]["logit"].as_f64().expect("logit"),
        );
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "image {i}: {a} alone, {b} in a batch"
        );
    }
    // A folder without images, and an unknown output format: exit 2 with the reason.
    let empty = tmp("empty_folder");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let e = empty.to_string_lossy().into_owned();
    let mut args = vec!["classify", "--weights", &w, "--image", &e];
    args.extend_from_slice(&model);
    assert_bad_input(&clca(&args), "holds no .png");
    let mut args = vec![
        "classify",
        "--weights",
        &w,
        "--image",
        &d,
        "--output",
        "x.txt",
    ];
    args.extend_from_slice(&model);
    assert_bad_input(&clca(&args), "unknown format");
}

#[test]
fn help_lists_the_authors_flags() {
    let r = clca(&["classify", "--help"]);
    assert!(r.status.success());
    let h = text(&r.stdout);
    for f in [
        "--reduction_loc",
        "--keep_rate",
        "--clc",
        "--num_clr",
        "--ifa_head",
        "--clc_include_gap",
        "--clc_recover_at_last",
        "--clc_pool_cls",
        "--clc_pool_clr",
        "--ifa_dws_conv_groups",
        "--input-size",
        "store_false",
    ] {
        assert!(h.contains(f), "`{f}` missing from classify --help");
    }
    let r = clca(&["--help"]);
    let h = text(&r.stdout);
    for c in ["run", "forward", "classify", "ops"] {
        assert!(h.contains(c), "`{c}` missing from --help");
    }
}

#[test]
fn info_reads_method_cache_and_head_from_a_checkpoint() {
    let Some(g) = golden() else { return };
    for (case, method) in [
        (
            "L_sit_clc_ifa",
            "SiT (learned modules at 2 layers, widths [16, 4])",
        ),
        ("M_patchmerger_clc_ifa", "PatchMerger"),
        ("E_dpcknn_clc_ifa", "DPC-KNN"),
        ("O_dyvit_clc_ifa", "DynamicViT"),
        ("A_evit_clc_ifa", "parameter-free"),
    ] {
        let w = g.join(case).join("weights.safetensors");
        if !w.is_file() {
            continue;
        }
        let r = clca(&["info", &w.to_string_lossy()]);
        let out = text(&r.stdout);
        assert!(r.status.success(), "{case}: {}", text(&r.stderr));
        for needle in [
            method,
            "1 clr token",
            "CLA (conv, groups 2), 3 CLS taps, 10 classes",
            "loads           yes",
        ] {
            assert!(out.contains(needle), "{case}: `{needle}` in\n{out}");
        }
    }
    let bad = tmp("not_a_vit.safetensors");
    std::fs::write(&bad, b"garbage").expect("write");
    let r = clca(&["info", &bad.to_string_lossy()]);
    assert_bad_input(&r, "not_a_vit.safetensors");
}

/// `clca bench` of `methods` at `keep_rates` on a tiny DeiT at 64 px, one run a point.
fn small_bench(methods: &str, keep_rates: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "bench",
        "--methods",
        methods,
        "--keep-rates",
        keep_rates,
        "--backbone",
        "deit_tiny_patch16_224",
        "--input-size",
        "64",
        "--reduction_loc",
        "1",
        "3",
        "--runs",
        "1",
        "--warmup",
        "0",
    ];
    args.extend_from_slice(extra);
    clca(&args)
}

#[test]
fn bench_sweeps_methods_and_keep_rates_into_a_table_and_csv() {
    let csv = tmp("bench.csv");
    let r = small_bench(
        "evit,dyvit,sit",
        "0.25,0.5",
        &["--csv", &csv.to_string_lossy()],
    );
    let out = text(&r.stdout);
    assert!(r.status.success(), "{}", text(&r.stderr));
    for needle in ["EViT", "DynamicViT", "SiT", "GMACs/img", "vs unreduced"] {
        assert!(out.contains(needle), "`{needle}` in\n{out}");
    }
    let rows = std::fs::read_to_string(&csv).expect("csv");
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines.len(), 1 + 3 * 2, "{rows}");
    assert!(lines[0].starts_with("method,keep_rate,batch,gmacs_per_image"));
    // Smaller keep rates cost fewer MACs.
    let macs = |l: &str| {
        l.split(',')
            .nth(3)
            .and_then(|v| v.parse::<f64>().ok())
            .expect("macs")
    };
    assert!(macs(lines[1]) < macs(lines[2]), "{rows}");
    let r = clca(&["bench", "--methods", "nope"]);
    assert_bad_input(&r, "unknown method `nope`");
}

// ---- the bad-input matrix (docs/reliability.md) -------------------------------------------

/// A small EViT + CLC + CLA model in the golden format (config.json, weights, input), written
/// with the library; `name` keeps parallel tests apart.
struct Case {
    dir: PathBuf,
}

impl Case {
    const CONFIG: &'static str = r#"{"timm_entrypoint": "evit_deit_tiny_patch16_224", "num_classes": 5,
        "args": {"keep_rate": [0.5], "reduction_loc": [1, 3], "clc": true, "num_clr": 1,
                 "clc_include_gap": true, "clc_recover_at_last": true, "ifa_head": true,
                 "ifa_dws_conv_groups": 2},
        "model": {"model_class": "models.evit.EViT", "embed_dim": 24, "depth": 6, "num_heads": 3,
                  "mlp_hidden": 48, "qkv_bias": true, "layer_norm_eps": 1e-6, "patch_size": [4, 4],
                  "img_size": [32, 32], "patch_embed_bias": true, "norm_pre": "Identity"}}"#;

    fn new(name: &str) -> Case {
        let dir = tmp(&format!("case-{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("config.json"), Self::CONFIG).expect("config");
        let v: serde_json::Value = serde_json::from_str(Self::CONFIG).expect("json");
        let cfg = clca::vit::VitConfig::from_golden_json(&v).expect("config");
        let taps = cfg.plan().expect("plan").taps;
        clca::vit::random::random_weights(&cfg, taps, 3)
            .save(&dir.join("weights.safetensors"))
            .expect("weights");
        Self::images(&dir.join("input.safetensors"), &[2, 3, 32, 32], None);
        Case { dir }
    }

    /// Writes `images` of `shape`, with `poison` at element 10 when given.
    fn images(path: &Path, shape: &[usize], poison: Option<f32>) {
        let n = shape.iter().product();
        let mut v = clca::vit::random::random_images(1, 1, 1, 0);
        v.resize(n, 0.25);
        if let Some(p) = poison {
            v[10] = p;
        }
        let mut m = clca::vit::TensorMap::default();
        m.tensors.insert("images".into(), (shape.to_vec(), v));
        m.save(path).expect("images");
    }

    fn p(&self, f: &str) -> String {
        self.dir.join(f).to_string_lossy().into_owned()
    }

    /// `clca forward` on this case with `config`, `weights`, `input` (file names in the case
    /// folder) and extra arguments.
    fn forward(&self, config: &str, weights: &str, input: &str, extra: &[&str]) -> Output {
        let (c, w, i, o) = (
            self.p(config),
            self.p(weights),
            self.p(input),
            self.p("out.safetensors"),
        );
        let mut args = vec![
            "forward",
            "--config",
            &c,
            "--weights",
            &w,
            "--input",
            &i,
            "--output",
            &o,
        ];
        args.extend_from_slice(extra);
        clca(&args)
    }

    /// A copy of a file of the case, changed by `f`, under `name`.
    fn variant(&self, from: &str, name: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> String {
        let bytes = std::fs::read(self.dir.join(from)).expect("read");
        std::fs::write(self.dir.join(name), f(bytes)).expect("write");
        name.to_string()
    }
}

#[test]
fn forward_bad_input_matrix() {
    let c = Case::new("forward");
    // The case itself runs.
    let r = c.forward(
        "config.json",
        "weights.safetensors",
        "input.safetensors",
        &[],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let cfg = |name: &str, from: &str, to: &str| {
        c.variant("config.json", name, |b| {
            let s = String::from_utf8(b).expect("utf8");
            assert!(s.contains(from), "{from}");
            s.replace(from, to).into_bytes()
        })
    };
    let not_json = c.variant("config.json", "not.json", |b| b[..b.len() / 2].to_vec());
    let deep = cfg("deep.json", r#""depth": 6"#, r#""depth": 1000000000000"#);
    let kr0 = cfg("kr0.json", "[0.5]", "[0.0]");
    let kr15 = cfg("kr15.json", "[0.5]", "[1.5]");
    let dup = cfg("dup.json", "[1, 3]", "[3, 3]");
    let past = cfg("past.json", "[1, 3]", "[1, 6]");
    let zero = cfg("zero.json", "[1, 3]", "[0, 3]");
    let nan = c.variant("config.json", "nan.json", |b| {
        String::from_utf8(b)
            .expect("utf8")
            .replace("models.evit.EViT", "models.sit.SiT")
            .replace("[0.5]", "[0.1]")
            .into_bytes()
    });
    let tome = cfg("tome.json", "models.evit.EViT", "models.nope.Nope");
    let eps = cfg("eps.json", "1e-6", "0.0");
    let w_trunc = c.variant("weights.safetensors", "trunc.safetensors", |b| {
        b[..b.len() - 100].to_vec()
    });
    let w_junk = c.variant("weights.safetensors", "junk.safetensors", |_| {
        b"junk".to_vec()
    });
    let w_hostile = c.variant("weights.safetensors", "hostile.safetensors", |_| {
        let h = br#"{"cls_token":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4]}}"#;
        [&(h.len() as u64).to_le_bytes()[..], h, &[0u8; 4]].concat()
    });
    Case::images(&c.dir.join("small.safetensors"), &[1, 3, 16, 16], None);
    Case::images(&c.dir.join("rank3.safetensors"), &[3, 32, 32], None);
    Case::images(&c.dir.join("empty.safetensors"), &[0, 3, 32, 32], None);
    let mut other = clca::vit::TensorMap::default();
    other.tensors.insert("pixels".into(), (vec![1], vec![0.0]));
    other
        .save(&c.dir.join("noimages.safetensors"))
        .expect("save");
    let int_images = c.variant("input.safetensors", "int.safetensors", |_| {
        let h = br#"{"images":{"dtype":"I64","shape":[1,3,32,32],"data_offsets":[0,24576]}}"#;
        [
            &(h.len() as u64).to_le_bytes()[..],
            h,
            &vec![0u8; 24576][..],
        ]
        .concat()
    });
    let (w, i) = ("weights.safetensors", "input.safetensors");
    let rows: Vec<(String, String, String, Vec<&str>, &str)> = vec![
        (not_json, w.into(), i.into(), vec![], "not valid JSON"),
        (
            deep,
            w.into(),
            i.into(),
            vec![],
            "invalid `depth` = 1000000000000",
        ),
        (kr0, w.into(), i.into(), vec![], "invalid `keep_rate` = 0"),
        (
            kr15,
            w.into(),
            i.into(),
            vec![],
            "invalid `keep_rate` = 1.5",
        ),
        (dup, w.into(), i.into(), vec![], "strictly increasing"),
        (past, w.into(), i.into(), vec![], "layer >= depth 6"),
        (
            zero,
            w.into(),
            i.into(),
            vec![],
            "first recovery layer must be >= 1",
        ),
        (nan, w.into(), i.into(), vec![], "NaN logits"),
        (tome, w.into(), i.into(), vec![], "models.nope.Nope"),
        (eps, w.into(), i.into(), vec![], "layer_norm_eps"),
        (
            "config.json".into(),
            w_trunc,
            i.into(),
            vec![],
            "do not end at the end of the file",
        ),
        (
            "config.json".into(),
            w_junk,
            i.into(),
            vec![],
            "shorter than the 8-byte header",
        ),
        (
            "config.json".into(),
            w_hostile,
            i.into(),
            vec![],
            "does not hold shape × dtype size bytes",
        ),
        (
            "config.json".into(),
            w.into(),
            "small.safetensors".into(),
            vec![],
            "the model expects [B, 3, 32, 32]",
        ),
        (
            "config.json".into(),
            w.into(),
            "rank3.safetensors".into(),
            vec![],
            "the model expects [B, 3, 32, 32]",
        ),
        (
            "config.json".into(),
            w.into(),
            "empty.safetensors".into(),
            vec![],
            "B ≥ 1",
        ),
        (
            "config.json".into(),
            w.into(),
            "noimages.safetensors".into(),
            vec![],
            "no `images` tensor (it holds: pixels)",
        ),
        (
            "config.json".into(),
            w.into(),
            int_images,
            vec![],
            "not a float tensor",
        ),
        (
            "config.json".into(),
            w.into(),
            i.into(),
            vec!["--threads", "0"],
            "--threads 0",
        ),
        (
            "config.json".into(),
            w.into(),
            i.into(),
            vec!["--threads", "100000"],
            "at most 1024",
        ),
        (
            "config.json".into(),
            w.into(),
            i.into(),
            vec!["--dtype", "bf16"],
            "f32 only",
        ),
        (
            "config.json".into(),
            w.into(),
            i.into(),
            vec!["--device", "tpu"],
            "--device",
        ),
    ];
    for (config, weights, input, extra, needle) in rows {
        let r = c.forward(&config, &weights, &input, &extra);
        assert_bad_input(&r, needle);
        // Ours say what to do; clap's usage errors end with its own `For more information`.
        let err = text(&r.stderr);
        assert!(
            err.contains("hint: ") || err.contains("For more information"),
            "{config} {weights} {input} {extra:?}: no hint in {err}"
        );
    }
}

#[test]
fn forward_nan_input_runs_and_warns() {
    let c = Case::new("nan");
    for (name, v) in [
        ("nan.safetensors", f32::NAN),
        ("inf.safetensors", f32::INFINITY),
    ] {
        Case::images(&c.dir.join(name), &[2, 3, 32, 32], Some(v));
        let r = c.forward("config.json", "weights.safetensors", name, &[]);
        assert!(r.status.success(), "{}", text(&r.stderr));
        let err = text(&r.stderr);
        // Image 0 holds the NaN: its 5 logits are not finite, image 1's are.
        assert!(err.contains("warning: 5 logits are not finite"), "{err}");
        let (_, logits) = tensor(&c.dir.join("out.safetensors"), "logits");
        assert!(
            logits[..5].iter().all(|v| !v.is_finite()) && logits[5..].iter().all(|v| v.is_finite())
        );
    }
}

#[test]
fn missing_cuda_is_a_clear_error_or_a_cpu_fallback_by_option() {
    let c = Case::new("cuda");
    let (w, i) = ("weights.safetensors", "input.safetensors");
    let r = c.forward("config.json", w, i, &["--device", "cuda"]);
    if r.status.success() {
        eprintln!("skipping the no-GPU checks: --device cuda ran (a GPU is present)");
        return;
    }
    assert_bad_input(&r, "CUDA");
    let err = text(&r.stderr);
    assert!(
        err.contains("--device cpu"),
        "the hint names the fallback: {err}"
    );
    // --device auto falls back to the CPU with a note, and the JSON line names the CPU.
    let r = c.forward("config.json", w, i, &["--device", "auto", "--json"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(
        text(&r.stderr).contains("note: --device auto: no GPU"),
        "{}",
        text(&r.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text(&r.stdout).trim()).expect("json");
    assert_eq!(v["device"], "cpu");
    // ... but not for a storage type only the kernels have.
    let r = c.forward("config.json", w, i, &["--device", "auto", "--dtype", "f16"]);
    assert_bad_input(&r, "--device auto found no GPU");
}

/// `CLCA_ATTENTION` picks the device forward's attention path for side-by-side timing: the
/// fused kernel's 128-query tile gives the default tile's bits; an unknown value is bad input.
#[test]
fn attention_path_override() {
    let Some(g) = golden() else {
        return;
    };
    for case in ["A_evit_clc_ifa", "D_tome_clc_ifa"] {
        let dir = g.join(case);
        let mut logits = Vec::new();
        for path in ["fused", "fused-wide"] {
            let out = tmp(&format!("{case}-attention-{path}.safetensors"));
            let mut args = golden_forward_args(&dir, &out.to_string_lossy());
            args.extend(["--device", "shim", "--dtype", "bf16"].map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = clca_env(&args, &[("CLCA_ATTENTION", path)]);
            assert!(r.status.success(), "{case} {path}: {}", text(&r.stderr));
            let want = if path == "fused" {
                "fused attention"
            } else {
                "128-query tiles"
            };
            assert!(text(&r.stdout).contains(want), "{}", text(&r.stdout));
            logits.push(tensor(&out, "logits").1);
            let _ = std::fs::remove_file(&out);
        }
        assert_eq!(logits[0], logits[1], "{case}: the two tiles' logits");
    }
    let dir = g.join("A_evit_clc_ifa");
    let out = tmp("attention-bogus.safetensors");
    let mut args = golden_forward_args(&dir, &out.to_string_lossy());
    args.extend(["--device", "shim", "--dtype", "bf16"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = clca_env(&args, &[("CLCA_ATTENTION", "bogus")]);
    assert_bad_input(&r, "CLCA_ATTENTION");
}

/// `CLCA_PRUNE_FIRST` switches Top-K / EViT blocks between selecting before the projection
/// (1, the default) and the authors' order (0), for side-by-side timing: both reproduce the
/// authors' logits, selections included, on the CPU and on the host shim (EViT and Top-K); an
/// unknown value is bad input.
#[test]
fn prune_first_switch() {
    for case in ["A_evit_clc_ifa", "C_topk_clc_ifa"] {
        for v in ["0", "1"] {
            forward_case_env(case, &["--trace"], &[("CLCA_PRUNE_FIRST", v)]);
            forward_case_env(
                case,
                &["--device", "shim", "--dtype", "f32"],
                &[("CLCA_PRUNE_FIRST", v)],
            );
        }
    }
    let Some(g) = golden() else { return };
    let args = golden_forward_args(
        &g.join("A_evit_clc_ifa"),
        &tmp("bad-prune-first.safetensors").to_string_lossy(),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = clca_env(&args, &[("CLCA_PRUNE_FIRST", "yes")]);
    assert_bad_input(&r, "CLCA_PRUNE_FIRST");
}

/// `--cuda-graph`: a GPU-only flag. Without a GPU every misuse is a clear error; with one, the
/// replayed graph gives the authors' logits like the eager forward.
#[test]
fn cuda_graph_flag() {
    let c = Case::new("graph");
    let (cf, w, i) = ("config.json", "weights.safetensors", "input.safetensors");
    for d in ["cpu", "shim"] {
        let r = c.forward(cf, w, i, &["--device", d, "--cuda-graph"]);
        assert_bad_input(&r, "--cuda-graph runs on a GPU only");
    }
    for other in ["--trace", "--profile"] {
        let r = c.forward(cf, w, i, &["--device", "cuda", "--cuda-graph", other]);
        assert_bad_input(&r, "cannot be used with");
    }
    // ATS sizes each layer from a count read back to the host: refused before any GPU is
    // opened, so the message is the same on every machine.
    let ats = c.variant(cf, "ats.json", |b| {
        String::from_utf8(b)
            .expect("utf8")
            .replace("models.evit.EViT", "models.ats.ATSViT")
            .into_bytes()
    });
    let r = c.forward(&ats, w, i, &["--device", "cuda", "--cuda-graph"]);
    assert_bad_input(&r, "ATS");
    // `clca bench --cuda-graph` takes the same path.
    let bench = |device: &str| {
        small_bench(
            "evit,ats",
            "0.5",
            &["--device", device, "--dtype", "bf16", "--cuda-graph"],
        )
    };
    assert_bad_input(&bench("shim"), "--cuda-graph runs on a GPU only");
    let r = c.forward(cf, w, i, &["--device", "cuda", "--cuda-graph"]);
    if !r.status.success() {
        // No GPU here, or a build without the `cuda` feature.
        assert_bad_input(&r, "CUDA");
        eprintln!(
            "skipping the GPU half: {}",
            text(&r.stderr).lines().next().unwrap_or("")
        );
        return;
    }
    for case in ["A_evit_clc_ifa", "D_tome_clc_ifa", "G_vit_plain"] {
        forward_case(case, &["--device", "cuda", "--cuda-graph", "--runs", "3"]);
    }
    // ATS runs without a graph in the sweep; EViT with one.
    let r = bench("cuda");
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(
        text(&r.stdout).contains("CUDA graph of"),
        "{}",
        text(&r.stdout)
    );
    let json = forward_case_env(
        "A_evit_clc_ifa",
        &["--device", "cuda", "--cuda-graph", "--runs", "2", "--json"],
        &[],
    );
    if !json.is_empty() {
        let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
        assert_eq!(v["cuda_graph"], true);
        assert!(
            v["backend"]
                .as_str()
                .unwrap_or("")
                .contains("CUDA graph of"),
            "{v}"
        );
    }
}

#[test]
fn classify_bad_input_matrix() {
    let w = tmp("classify-bad.safetensors")
        .to_string_lossy()
        .into_owned();
    let model = [
        "--model",
        "evit_deit_tiny_patch16_224",
        "--input-size",
        "32",
        "--reduction_loc",
        "1",
        "3",
        "--keep_rate",
        "0.5",
        "--clc",
        "--num_clr",
        "1",
        "--ifa_head",
    ];
    let mut args = vec!["random-weights", "--num_classes", "4", "--output", &w];
    args.extend_from_slice(&model);
    let r = clca(&args);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let png = tmp("classify-bad.png");
    image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 9]))
        .save(&png)
        .expect("png");
    let png = png.to_string_lossy().into_owned();
    let junk = tmp("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnope").expect("write");
    let junk = junk.to_string_lossy().into_owned();
    let short_labels = tmp("labels.txt");
    std::fs::write(&short_labels, "a\nb\n").expect("write");
    let short_labels = short_labels.to_string_lossy().into_owned();
    let trunc = tmp("classify-trunc.safetensors");
    let bytes = std::fs::read(&w).expect("read");
    std::fs::write(&trunc, &bytes[..bytes.len() / 3]).expect("write");
    let trunc = trunc.to_string_lossy().into_owned();
    // The model flags with some flags replaced (or added).
    let withs = |repl: &[(&str, &[&str])]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut done = vec![false; repl.len()];
        let mut i = 0;
        while i < model.len() {
            match repl.iter().position(|(f, _)| *f == model[i]) {
                Some(j) => {
                    out.push(model[i].into());
                    out.extend(repl[j].1.iter().map(|s| s.to_string()));
                    done[j] = true;
                    i += 1;
                    while i < model.len() && !model[i].starts_with("--") {
                        i += 1;
                    }
                }
                None => {
                    out.push(model[i].into());
                    i += 1;
                }
            }
        }
        for (j, (f, vals)) in repl.iter().enumerate() {
            if !done[j] {
                out.push(f.to_string());
                out.extend(vals.iter().map(|s| s.to_string()));
            }
        }
        out
    };
    let with = |flag: &str, vals: &[&str]| withs(&[(flag, vals)]);
    let rows: Vec<(Vec<String>, &str, &str)> = vec![
        (with("--keep_rate", &["0"]), &png, "invalid `keep_rate` = 0"),
        (with("--keep_rate", &["-1"]), &png, "keep_rate"),
        (
            with("--keep_rate", &["NaN"]),
            &png,
            "invalid `keep_rate` = NaN",
        ),
        (
            with("--keep_rate", &["0.5", "0.5", "0.5"]),
            &png,
            "one per reduction layer",
        ),
        (
            with("--reduction_loc", &["3", "3"]),
            &png,
            "strictly increasing",
        ),
        (
            with("--reduction_loc", &["1", "12"]),
            &png,
            "layer >= depth 12",
        ),
        (
            with("--reduction_loc", &["0", "3"]),
            &png,
            "first recovery layer must be >= 1",
        ),
        (
            withs(&[
                ("--model", &["sit_deit_tiny_patch16_224"]),
                ("--keep_rate", &["0.1"]),
            ]),
            &png,
            "NaN logits",
        ),
        (with("--input-size", &["1000000"]), &png, "img_size"),
        (
            with("--input-size", &["30"]),
            &png,
            "multiple of the patch size 16",
        ),
        (
            with("--model", &["resnet50"]),
            &png,
            "vit_/deit_/deit3_ backbone",
        ),
        (
            with("--model", &["sit_deit_tiny_patch16_224"]),
            &png,
            "missing tensor `cluster_layers.0",
        ),
        (
            with("--model", &["dpcknn_deit_tiny_patch16_224"]),
            &png,
            "5 neighbours from 4 clusterable tokens",
        ),
        (
            with("--ifa_dws_conv_groups", &["5"]),
            &png,
            "ifa_head.0.1.weight",
        ),
        (with("--num_clr", &["2"]), &png, "--num_clr 1"),
        (
            model.iter().map(|s| s.to_string()).collect(),
            &junk,
            "cannot decode",
        ),
        (
            model.iter().map(|s| s.to_string()).collect(),
            "/nonexistent/x.png",
            "no such file",
        ),
        (
            with("--labels", &[&short_labels]),
            &png,
            "2 lines, the model has 4 classes",
        ),
        (with("--threads", &["0"]), &png, "--threads 0"),
    ];
    for (flags, image, needle) in rows {
        let mut args = vec!["classify", "--weights", &w, "--image", image];
        args.extend(flags.iter().map(String::as_str));
        let r = clca(&args);
        assert_bad_input(&r, needle);
    }
    // Weights: truncated, or of another configuration.
    let mut args = vec!["classify", "--weights", &trunc, "--image", &png];
    args.extend_from_slice(&model);
    assert_bad_input(&clca(&args), "truncated");
    let mut args = vec!["classify", "--weights", &w, "--image", &png];
    args.extend_from_slice(&model);
    // The good case runs (and images of any size are resized, as datasets.py does).
    let r = clca(&args);
    assert!(r.status.success(), "{}", text(&r.stderr));
}

#[test]
fn run_bench_and_info_bad_input() {
    let junk = tmp("run-junk.safetensors");
    std::fs::write(&junk, [0u8; 3]).expect("write");
    let junk = junk.to_string_lossy().into_owned();
    assert_bad_input(
        &clca(&["run", "--weights", &junk]),
        "shorter than the 8-byte header",
    );
    assert_bad_input(&clca(&["run", "--batch", "65"]), "--batch");
    assert_bad_input(&clca(&["run", "--threads", "0"]), "--threads 0");
    assert_bad_input(&clca(&["info", &junk]), "run-junk.safetensors");
    assert_bad_input(&clca(&["info", "/nonexistent.safetensors"]), "nonexistent");
    let bench = |extra: &[&str]| {
        let mut a = vec![
            "bench",
            "--methods",
            "evit",
            "--backbone",
            "deit_tiny_patch16_224",
            "--reduction_loc",
            "1",
            "3",
            "--runs",
            "1",
            "--warmup",
            "0",
        ];
        if !extra.contains(&"--input-size") {
            a.extend(["--input-size", "32"]);
        }
        a.extend_from_slice(extra);
        clca(&a)
    };
    assert_bad_input(&bench(&["--batch", "0"]), "batch");
    assert_bad_input(&bench(&["--keep-rates", "1.5"]), "keep_rate");
    assert_bad_input(
        &bench(&["--input-size", "33"]),
        "multiple of the patch size",
    );
    // A batch whose workspace no machine has: an allocation error (exit 1), not an abort.
    let r = bench(&["--batch", "1099511627776"]);
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot allocate") && !err.contains("panicked"),
        "{err}"
    );
}
