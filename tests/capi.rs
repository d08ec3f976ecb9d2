//! The C ABI called as C would call it: models from flags strings and files, shapes, plan,
//! MACs, workspace sizes, forwards on every backend here, the core ops on the host shim (and
//! on a GPU when one is present), and every error path: null pointers, wrong lengths, bad
//! configurations, missing and corrupt files, an unknown backend — each a distinct status with
//! a message, never a panic.
mod common;
use clca::capi::ops::*;
use clca::capi::*;
use clca::vit::{ModelFlags, Vit};
use std::ffi::{c_int, CStr, CString};
use std::ptr::{null, null_mut};

/// A tiny EViT + CLCA model that runs in milliseconds on the CPU.
const TINY: &str = "--model evit_vit_tiny_patch16_224 --input-size 64 --reduction_loc 3 6 9 \
                    --keep_rate 0.5 --clc --num_clr 1 --ifa_head --num_classes 10";
const SEED: u64 = 7;

const CPU: c_int = ClcaBackend::Cpu as c_int;
const SHIM: c_int = ClcaBackend::HostShim as c_int;
const CUDA: c_int = ClcaBackend::Cuda as c_int;
const F32: c_int = ClcaDtype::F32 as c_int;

fn st(s: ClcaStatus) -> c_int {
    s as c_int
}

fn last() -> String {
    // SAFETY: the library returns a NUL-terminated string valid until the next call.
    unsafe { CStr::from_ptr(clca_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn random_model(cfg: &str, backend: c_int, dtype: c_int) -> (c_int, *mut ClcaModel) {
    let c = CString::new(cfg).expect("cstring");
    let mut m = null_mut();
    // SAFETY: valid string and out-pointer.
    let rc = unsafe { clca_model_create_random(c.as_ptr(), SEED, backend, dtype, 0, &mut m) };
    (rc, m)
}

fn ok_model(cfg: &str, backend: c_int) -> *mut ClcaModel {
    let (rc, m) = random_model(cfg, backend, F32);
    assert_eq!(rc, 0, "{}", last());
    assert!(!m.is_null());
    m
}

fn info(m: *const ClcaModel) -> ClcaModelInfo {
    let mut i = ClcaModelInfo::default();
    // SAFETY: live model, writable out.
    assert_eq!(unsafe { clca_model_info(m, &mut i) }, 0, "{}", last());
    i
}

/// The same model built in Rust.
fn rust_model(cfg: &str) -> Vit {
    let cfg = ModelFlags::parse(cfg)
        .and_then(|f| f.config(None))
        .expect("config");
    let taps = cfg.plan().expect("plan").taps;
    let map = clca::vit::random::random_weights(&cfg, taps, SEED);
    Vit::new(cfg, map).expect("model")
}

fn images(i: &ClcaModelInfo, batch: usize) -> Vec<f32> {
    clca::vit::random::random_images(batch, i.in_chans, i.img_size, 3)
}

fn forward(m: *mut ClcaModel, img: &[f32], batch: usize, classes: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; batch * classes];
    // SAFETY: buffers of the lengths passed.
    let rc = unsafe {
        clca_model_forward(
            m,
            img.as_ptr(),
            img.len(),
            batch,
            out.as_mut_ptr(),
            out.len(),
        )
    };
    assert_eq!(rc, 0, "{}", last());
    out
}

#[test]
fn version_and_status_names() {
    // SAFETY: static strings.
    let v = unsafe { CStr::from_ptr(clca_version()) };
    assert_eq!(v.to_str().expect("utf8"), env!("CARGO_PKG_VERSION"));
    assert_eq!(clca_abi_version(), CLCA_ABI_VERSION);
    for (code, name) in [
        (0, "CLCA_STATUS_OK"),
        (2, "CLCA_STATUS_SHAPE"),
        (11, "CLCA_STATUS_PANIC"),
        (99, "CLCA_STATUS_UNKNOWN"),
    ] {
        // SAFETY: static strings.
        let s = unsafe { CStr::from_ptr(clca_status_name(code)) };
        assert_eq!(s.to_str().expect("utf8"), name);
    }
    assert_eq!(clca_backend_available(CPU), 1);
    assert_eq!(clca_backend_available(SHIM), 1);
    assert_eq!(clca_backend_available(42), 0);
}

/// The committed header declares this library's ABI version and every entry point (whether
/// it is fresh against the sources is `scripts/cheader.sh --check`, in CI).
#[test]
fn header_matches_the_library() {
    let h = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/clca.h"))
        .expect("include/clca.h");
    assert!(h.contains(&format!("#define CLCA_ABI_VERSION {CLCA_ABI_VERSION}\n")));
    for f in [
        "clca_model_create(",
        "clca_model_create_random(",
        "clca_model_forward_device(",
        "clca_model_workspace_size(",
        "clca_topk_select(",
        "clca_prune_fused(",
        "clca_last_error_message(",
    ] {
        assert!(h.contains(f), "{f}");
    }
}

#[test]
fn cpu_model_matches_the_rust_forward() {
    let m = ok_model(TINY, CPU);
    let i = info(m);
    let vit = rust_model(TINY);
    let c = &vit.cfg;
    assert_eq!(
        (i.in_chans, i.img_size, i.patch_size, i.embed_dim, i.depth),
        (3, 64, 16, 192, 12)
    );
    assert_eq!((i.num_heads, i.num_classes), (3, 10));
    assert_eq!(i.num_reduction_blocks, 3);
    assert_eq!(i.initial_len, 1 + 16 + 1);
    assert_eq!(
        (i.max_len, i.cache_cap, i.taps),
        (vit.plan.max_len, vit.plan.cache_cap, vit.plan.taps)
    );
    assert_eq!((i.backend, i.dtype), (CPU, F32));
    let macs = vit.macs();
    assert_eq!((i.macs, i.macs_backbone), (macs.total(), macs.backbone()));
    assert!(i.macs_backbone < i.macs_unreduced, "{i:?}");

    // Per-block plan: ask the count, then fill.
    let mut count = 0usize;
    // SAFETY: live model; null `out` asks the count only.
    assert_eq!(
        unsafe { clca_model_blocks(m, null_mut(), 0, &mut count) },
        0
    );
    assert_eq!(count, c.depth);
    let mut blocks = vec![ClcaBlockInfo::default(); count];
    // SAFETY: `blocks` holds `count` entries.
    let rc = unsafe { clca_model_blocks(m, blocks.as_mut_ptr(), blocks.len(), &mut count) };
    assert_eq!(rc, 0, "{}", last());
    for (b, p) in blocks.iter().zip(&vit.plan.blocks) {
        assert_eq!(
            (b.len_in, b.len_out, b.recovered, b.len_after),
            (p.len_in, p.len_out, p.recovered, p.len_after)
        );
        assert_eq!(b.cls_tap != 0, p.cls_tap);
    }
    // (a block may cost more than its unreduced twin: the clr and recovered tokens)
    assert!(
        blocks.iter().map(|b| b.macs).sum::<u64>() < blocks.iter().map(|b| b.macs_unreduced).sum()
    );
    assert_eq!(
        blocks.iter().map(|b| b.macs).sum::<u64>() + macs.patch,
        i.macs_backbone
    );
    assert_eq!(blocks.iter().filter(|b| b.reduces != 0).count(), 3);

    // The forward through the ABI is the Rust CPU forward, bit for bit, at two batch sizes.
    for batch in [2, 1] {
        let img = images(&i, batch);
        let got = forward(m, &img, batch, i.num_classes);
        let mut ws = clca::vit::cpu::CpuWorkspace::new(&vit, batch).expect("ws");
        let want = clca::vit::cpu::forward(&vit, &mut ws, &img, None).expect("forward");
        assert_eq!(got, want);
    }
    // SAFETY: a live handle, destroyed once; null is a no-op.
    unsafe {
        clca_model_destroy(m);
        clca_model_destroy(null_mut());
    }
}

#[test]
fn shim_model_matches_the_cpu() {
    let cpu = ok_model(TINY, CPU);
    let shim = ok_model(TINY, SHIM);
    let i = info(shim);
    assert_eq!(i.backend, SHIM);
    let img = images(&i, 1);
    let want = forward(cpu, &img, 1, i.num_classes);
    let got = forward(shim, &img, 1, i.num_classes);
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
    for (g, w) in got.iter().zip(&want) {
        assert!(
            common::close(*g as f64, *w as f64, 1e-4 * scale, 0.0),
            "{got:?} vs {want:?}"
        );
    }
    // SAFETY: live handles, destroyed once.
    unsafe {
        clca_model_destroy(cpu);
        clca_model_destroy(shim);
    }
}

#[test]
fn workspace_size_is_the_device_paths() {
    let m = ok_model(TINY, CPU);
    let vit = rust_model(TINY);
    let mut prev = 0;
    for batch in [1usize, 2, 8] {
        let mut bytes = 0usize;
        // SAFETY: live model, writable out.
        let rc = unsafe { clca_model_workspace_size(m, batch, &mut bytes) };
        assert_eq!(rc, 0, "{}", last());
        let want = clca::vit::device::workspace_bytes(&vit, clca::DType::F32, batch).expect("ws");
        assert_eq!(bytes, want);
        assert_eq!(bytes % clca::device::WORKSPACE_ALIGN, 0);
        assert!(bytes > prev, "grows with the batch");
        prev = bytes;
    }
    // Half-precision storage needs less.
    let f32_bytes = clca::vit::device::workspace_bytes(&vit, clca::DType::F32, 8).expect("ws");
    let f16_bytes = clca::vit::device::workspace_bytes(&vit, clca::DType::F16, 8).expect("ws");
    assert!(f16_bytes < f32_bytes);
    // SAFETY: live handle.
    unsafe { clca_model_destroy(m) };
}

#[test]
fn from_a_file_infers_size_and_classes() {
    let vit = rust_model(TINY);
    let dir = std::env::temp_dir().join(format!("clca-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("tiny.safetensors");
    let taps = vit.plan.taps;
    clca::vit::random::random_weights(&vit.cfg, taps, SEED)
        .save(&path)
        .expect("save");
    let p = CString::new(path.to_string_lossy().as_bytes()).expect("path");
    // No --input-size and no --num_classes: read from pos_embed and the CLA head.
    let flags = CString::new(
        "--model evit_vit_tiny_patch16_224 --reduction_loc 3 6 9 --keep_rate 0.5 --clc \
         --num_clr 1 --ifa_head",
    )
    .expect("cstring");
    let mut m = null_mut();
    // SAFETY: valid strings and out-pointer.
    let rc = unsafe { clca_model_create(p.as_ptr(), flags.as_ptr(), CPU, F32, 0, &mut m) };
    assert_eq!(rc, 0, "{}", last());
    let i = info(m);
    assert_eq!((i.img_size, i.num_classes), (64, 10));
    let img = images(&i, 1);
    let r = ok_model(TINY, CPU);
    assert_eq!(forward(m, &img, 1, 10), forward(r, &img, 1, 10));

    // A corrupt file and a missing one: CLCA_STATUS_WEIGHTS naming the file.
    let bad = dir.join("corrupt.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").expect("write");
    for (file, what) in [
        (bad.clone(), "not a valid safetensors file"),
        (dir.join("missing.safetensors"), "missing.safetensors"),
    ] {
        let fp = CString::new(file.to_string_lossy().as_bytes()).expect("path");
        let mut h = null_mut();
        // SAFETY: valid strings and out-pointer.
        let rc = unsafe { clca_model_create(fp.as_ptr(), flags.as_ptr(), CPU, F32, 0, &mut h) };
        assert_eq!(rc, st(ClcaStatus::Weights), "{}", last());
        assert!(h.is_null());
        assert!(last().contains(what), "{}", last());
    }
    // Weights that do not fit the configuration (a different backbone).
    let other =
        CString::new("--model evit_vit_small_patch16_224 --reduction_loc 3 6 9").expect("cstring");
    // SAFETY: valid strings and out-pointer.
    let rc = unsafe { clca_model_create(p.as_ptr(), other.as_ptr(), CPU, F32, 0, &mut m) };
    assert_ne!(rc, 0);
    assert!(!last().is_empty());
    // SAFETY: live handles (the failed create wrote null, which destroy ignores).
    unsafe {
        clca_model_destroy(m);
        clca_model_destroy(r);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A golden case's config.json text and weights file through `clca_model_create`.
fn golden_model(dir: &std::path::Path, backend: c_int, dtype: c_int) -> *mut ClcaModel {
    let cfg = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let cfg = CString::new(cfg).expect("cstring");
    let w =
        CString::new(dir.join("weights.safetensors").to_string_lossy().as_bytes()).expect("path");
    let mut m = null_mut();
    // SAFETY: valid strings and out-pointer.
    let rc = unsafe { clca_model_create(w.as_ptr(), cfg.as_ptr(), backend, dtype, 0, &mut m) };
    assert_eq!(rc, 0, "{}: {}", dir.display(), last());
    m
}

fn golden_images(dir: &std::path::Path) -> (usize, Vec<f32>) {
    let input = std::fs::read(dir.join("input.safetensors")).expect("input");
    let (shape, v) = common::golden::tensor(&input, "images").expect("images");
    (shape[0], v.iter().map(|&x| x as f32).collect())
}

/// Every golden case (config.json text + weights file) through the C ABI on the CPU
/// reproduces the authors' logits (the bound of tests/golden_vit.rs).
#[test]
fn golden_cases_through_the_abi() {
    for dir in common::golden::cases() {
        let case = common::golden::Case::load(&dir);
        let m = golden_model(&dir, CPU, F32);
        let i = info(m);
        let (batch, img) = golden_images(&dir);
        let got = forward(m, &img, batch, i.num_classes);
        let (_, want) = case.output("logits").expect("logits");
        let max_ref = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f64, |a, (g, w)| a.max((*g as f64 - w).abs()));
        assert!(err <= 1e-4 * max_ref, "{}: max|d| {err:e}", case.name);
        // SAFETY: live handle.
        unsafe { clca_model_destroy(m) };
    }
}

#[test]
fn golden_json_config() {
    let json = r#"{"model": {"model_class": "models.vit.ViT", "img_size": [32, 32],
        "patch_size": [16, 16], "embed_dim": 64, "depth": 2, "num_heads": 2,
        "mlp_hidden": 128}, "args": {}, "num_classes": 5}"#;
    let m = ok_model(json, CPU);
    let i = info(m);
    assert_eq!(
        (i.img_size, i.depth, i.num_classes, i.num_reduction_blocks),
        (32, 2, 5, 0)
    );
    assert_eq!(i.macs_backbone, i.macs_unreduced);
    // SAFETY: live handle.
    unsafe { clca_model_destroy(m) };
}

#[test]
fn bad_configurations() {
    for (cfg, status, needle) in [
        ("--keep_rate 0", ClcaStatus::InvalidArgument, "keep_rate"),
        ("--keep_rate 1.5", ClcaStatus::InvalidArgument, "keep_rate"),
        ("--bogus 1", ClcaStatus::InvalidArgument, "--bogus"),
        ("--num_clr one", ClcaStatus::InvalidArgument, "num_clr"),
        ("tiny please", ClcaStatus::InvalidArgument, "tiny"),
        ("--model resnet50", ClcaStatus::InvalidArgument, "resnet50"),
        ("{ not json", ClcaStatus::InvalidArgument, "JSON"),
        (
            r#"{"model": {"model_class": "models.foo.Foo"}}"#,
            ClcaStatus::Unsupported,
            "models.foo.Foo",
        ),
        (
            "--model evit_vit_tiny_patch16_224 --input-size 60",
            ClcaStatus::InvalidArgument,
            "img_size",
        ),
    ] {
        let (rc, m) = random_model(cfg, CPU, F32);
        assert_eq!(rc, st(status), "{cfg}: {}", last());
        assert!(m.is_null(), "{cfg}");
        assert!(last().contains(needle), "{cfg}: {}", last());
    }
    // A keep rate the plan refuses: a CLA head with a cls-only sequence at SiT kr 0.1 is NaN.
    let (rc, _) = random_model(
        "--model sit_vit_tiny_patch16_224 --input-size 64 --reduction_loc 3 6 9 --keep_rate 0.1 \
         --clc --num_clr 1 --ifa_head --num_classes 10",
        CPU,
        F32,
    );
    assert_eq!(rc, st(ClcaStatus::Plan), "{}", last());
}

#[test]
fn bad_arguments() {
    let c = CString::new(TINY).expect("cstring");
    let mut m = null_mut();
    // SAFETY (whole test): every pointer is valid or deliberately null.
    unsafe {
        assert_eq!(
            clca_model_create_random(null(), 0, CPU, F32, 0, &mut m),
            st(ClcaStatus::InvalidArgument)
        );
        assert!(last().contains("config"), "{}", last());
        assert_eq!(
            clca_model_create_random(c.as_ptr(), 0, CPU, F32, 0, null_mut()),
            st(ClcaStatus::InvalidArgument)
        );
        assert_eq!(
            clca_model_create(null(), c.as_ptr(), CPU, F32, 0, &mut m),
            st(ClcaStatus::InvalidArgument)
        );
        assert!(last().contains("weights_path"), "{}", last());
        assert_eq!(
            clca_model_create_random(c.as_ptr(), 0, 9, F32, 0, &mut m),
            st(ClcaStatus::InvalidArgument)
        );
        assert!(last().contains("backend"), "{}", last());
        assert_eq!(
            clca_model_create_random(c.as_ptr(), 0, CPU, 7, 0, &mut m),
            st(ClcaStatus::InvalidArgument)
        );
        assert_eq!(
            clca_model_create_random(c.as_ptr(), 0, CPU, ClcaDtype::F16 as c_int, 0, &mut m),
            st(ClcaStatus::Dtype)
        );
        assert_eq!(
            clca_model_create_random(c.as_ptr(), 0, CUDA, F32, -1, &mut m),
            st(ClcaStatus::InvalidArgument)
        );
        #[cfg(not(feature = "cuda"))]
        {
            assert_eq!(
                clca_model_create_random(c.as_ptr(), 0, CUDA, F32, 0, &mut m),
                st(ClcaStatus::Unsupported)
            );
            assert!(last().contains("cuda"), "{}", last());
            assert_eq!(clca_backend_available(CUDA), 0);
        }
        assert!(m.is_null());

        // Null handles.
        let mut i = ClcaModelInfo::default();
        assert_eq!(
            clca_model_info(null(), &mut i),
            st(ClcaStatus::InvalidArgument)
        );
        assert!(last().contains("model"), "{}", last());
        let mut bytes = 0;
        assert_eq!(
            clca_model_workspace_size(null(), 1, &mut bytes),
            st(ClcaStatus::InvalidArgument)
        );

        let m = ok_model(TINY, CPU);
        assert_eq!(last(), "", "success clears the message");
        let i = info(m);
        assert_eq!(
            clca_model_info(m, null_mut()),
            st(ClcaStatus::InvalidArgument)
        );
        let img = images(&i, 2);
        let mut out = vec![0f32; 2 * i.num_classes];
        // Wrong lengths: one image short, one logit short, batch 0.
        let rc = clca_model_forward(
            m,
            img.as_ptr(),
            img.len() - 1,
            2,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(rc, st(ClcaStatus::Shape));
        assert!(last().contains("images_len"), "{}", last());
        let rc = clca_model_forward(
            m,
            img.as_ptr(),
            img.len(),
            2,
            out.as_mut_ptr(),
            out.len() - 1,
        );
        assert_eq!(rc, st(ClcaStatus::Shape));
        assert!(last().contains("logits_len"), "{}", last());
        let rc = clca_model_forward(m, img.as_ptr(), 0, 0, out.as_mut_ptr(), 0);
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        let rc = clca_model_forward(m, null(), img.len(), 2, out.as_mut_ptr(), out.len());
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        assert!(last().contains("images"), "{}", last());
        let rc = clca_model_forward(m, img.as_ptr(), img.len(), 2, null_mut(), out.len());
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        // An absurd batch overflows instead of allocating.
        let rc = clca_model_forward(
            m,
            img.as_ptr(),
            img.len(),
            usize::MAX / 2,
            out.as_mut_ptr(),
            1,
        );
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        assert!(last().contains("overflow"), "{}", last());

        // Too small a block array: SHAPE, with the count written.
        let mut blocks = [ClcaBlockInfo::default(); 3];
        let mut count = 0;
        let rc = clca_model_blocks(m, blocks.as_mut_ptr(), blocks.len(), &mut count);
        assert_eq!(rc, st(ClcaStatus::Shape));
        assert_eq!(count, 12);
        assert_eq!(
            clca_model_blocks(m, blocks.as_mut_ptr(), 3, null_mut()),
            st(ClcaStatus::InvalidArgument)
        );

        // The device entry on the CPU backend, and with null pointers.
        let mut dummy = [0u8; 256];
        let p = dummy.as_mut_ptr() as *mut std::ffi::c_void;
        assert_eq!(
            clca_model_forward_device(m, 1, p, p, p, 256, null_mut()),
            st(ClcaStatus::Unsupported)
        );
        assert_eq!(
            clca_model_forward_device(m, 1, null(), p, p, 256, null_mut()),
            st(ClcaStatus::InvalidArgument)
        );
        // The message is per thread.
        let other = std::thread::spawn(last).join().expect("thread");
        assert_eq!(other, "");
        assert!(last().contains("images"), "{}", last());
        clca_model_destroy(m);
    }
}

fn shim_device() -> *mut ClcaDevice {
    let mut d = null_mut();
    // SAFETY: writable out.
    assert_eq!(
        unsafe { clca_device_create(SHIM, 0, &mut d) },
        0,
        "{}",
        last()
    );
    d
}

#[test]
fn ops_on_the_host_shim() {
    let d = shim_device();
    let mut rng = common::TRng(5);
    let (rows, n, k) = (3usize, 37usize, 5usize);
    let x: Vec<f32> = rng.normals(rows * n);
    let (want_i, want_c) = clca::cpu::topk::topk_select(&x, rows, n, k).expect("ref");
    let mut idx = vec![u32::MAX; rows * k];
    let mut compl = vec![u32::MAX; rows * (n - k)];
    // SAFETY: buffers of the extents passed.
    let rc = unsafe {
        clca_topk_select(
            d,
            F32,
            x.as_ptr() as *const _,
            rows,
            n,
            k,
            idx.as_mut_ptr(),
            compl.as_mut_ptr(),
            null_mut(),
        )
    };
    assert_eq!(rc, 0, "{}", last());
    assert_eq!((idx, compl), (want_i, want_c));

    // The fused EViT layer against the composition of the references.
    let (b, h, n, c, k) = (2usize, 3usize, 17usize, 8usize, 4usize);
    let xs: Vec<f32> = rng.normals(b * n * c);
    let probs: Vec<f32> = common::random_probs(&mut rng, b * h * n, n)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let sc = clca::cpu::attn_score::cls_attn_from_probs(&probs, b, h, n).expect("ref");
    let (ri, rc_) = clca::cpu::topk::topk_select(&sc, b, n - 1, k).expect("ref");
    let want = clca::cpu::prune::evit_prune(&xs, b, n, c, &ri, k, &rc_, &sc).expect("ref");
    let mut out = vec![f32::NAN; b * (2 + k) * c];
    let mut scores = vec![f32::NAN; b * (n - 1)];
    let mut idx = vec![u32::MAX; b * k];
    let mut compl = vec![u32::MAX; b * (n - 1 - k)];
    // SAFETY: buffers of the extents passed.
    let rc = unsafe {
        clca_prune_fused(
            d,
            F32,
            ClcaPruneMode::Evit as c_int,
            probs.as_ptr() as *const _,
            xs.as_ptr() as *const _,
            b,
            h,
            n,
            c,
            k,
            out.as_mut_ptr() as *mut _,
            scores.as_mut_ptr(),
            idx.as_mut_ptr(),
            compl.as_mut_ptr(),
            null_mut(),
        )
    };
    assert_eq!(rc, 0, "{}", last());
    assert_eq!((&idx, &compl), (&ri, &rc_));
    assert_eq!(scores, sc);
    for (g, w) in out.iter().zip(&want) {
        assert!(
            common::close(*g as f64, *w as f64, 1e-6, 1e-5),
            "{g} vs {w}"
        );
    }

    // Errors: k > n, a null non-empty pointer, a bad mode, a null device; k = n with a null
    // (empty) complement is fine.
    // SAFETY: pointers valid or deliberately null.
    unsafe {
        let mut one = [0u32; 64];
        let rc = clca_topk_select(
            d,
            F32,
            x.as_ptr() as *const _,
            1,
            4,
            5,
            one.as_mut_ptr(),
            one.as_mut_ptr(),
            null_mut(),
        );
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        assert!(last().contains("k > n"), "{}", last());
        let rc = clca_topk_select(
            d,
            F32,
            null(),
            1,
            4,
            2,
            one.as_mut_ptr(),
            one.as_mut_ptr(),
            null_mut(),
        );
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        let rc = clca_topk_select(
            d,
            F32,
            x.as_ptr() as *const _,
            1,
            4,
            4,
            one.as_mut_ptr(),
            null_mut(),
            null_mut(),
        );
        assert_eq!(rc, 0, "{}", last());
        let rc = clca_topk_select(
            null(),
            F32,
            x.as_ptr() as *const _,
            1,
            4,
            2,
            one.as_mut_ptr(),
            one.as_mut_ptr(),
            null_mut(),
        );
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        assert!(last().contains("device"), "{}", last());
        let rc = clca_prune_fused(
            d,
            F32,
            5,
            probs.as_ptr() as *const _,
            xs.as_ptr() as *const _,
            b,
            h,
            n,
            c,
            k,
            out.as_mut_ptr() as *mut _,
            scores.as_mut_ptr(),
            idx.as_mut_ptr(),
            compl.as_mut_ptr(),
            null_mut(),
        );
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        assert!(last().contains("mode"), "{}", last());
        let mut none = null_mut();
        assert_eq!(
            clca_device_create(CPU, 0, &mut none),
            st(ClcaStatus::Unsupported)
        );
        assert!(none.is_null());
        clca_device_destroy(d);
        clca_device_destroy(null_mut());
    }
}

/// With the `cuda` feature and a GPU: the engine entry on caller memory and stream equals the
/// host-buffer forward, and the ops on device pointers equal the references.
#[cfg(feature = "cuda")]
#[test]
fn cuda_engine_entry() {
    use clca::{Buffer, Device};
    let Some(g) = common::gpu() else {
        eprintln!("skipping the CUDA C-ABI test: {}", common::gpu_reason());
        return;
    };
    let m = ok_model(TINY, CUDA);
    let i = info(m);
    let batch = 2;
    let img = images(&i, batch);
    let host = forward(m, &img, batch, i.num_classes);
    let cpu = ok_model(TINY, CPU);
    let want = forward(cpu, &img, batch, i.num_classes);
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
    for (a, b) in host.iter().zip(&want) {
        assert!(
            common::close(*a as f64, *b as f64, 1e-3 * scale, 0.0),
            "{host:?} vs {want:?}"
        );
    }
    let mut bytes = 0;
    // SAFETY: live model, writable out.
    assert_eq!(
        unsafe { clca_model_workspace_size(m, batch, &mut bytes) },
        0
    );
    let dimg = g.upload(&img).expect("upload");
    let mut dlog = g.zeros::<f32>(batch * i.num_classes).expect("zeros");
    let mut dws = g.zeros::<u8>(bytes).expect("zeros");
    let vp = |a: u64| a as *mut std::ffi::c_void;
    // SAFETY: device buffers of the sizes the call needs, on the primary context's default
    // stream (null).
    unsafe {
        let rc = clca_model_forward_device(
            m,
            batch,
            vp(dimg.addr()),
            vp(dlog.addr_mut()),
            vp(dws.addr_mut()),
            bytes,
            null_mut(),
        );
        assert_eq!(rc, 0, "{}", last());
        g.synchronize().expect("sync");
        assert_eq!(
            g.download(&dlog).expect("download"),
            host,
            "device entry = host entry"
        );
        // Too small, and misaligned.
        let rc = clca_model_forward_device(
            m,
            batch,
            vp(dimg.addr()),
            vp(dlog.addr_mut()),
            vp(dws.addr_mut()),
            bytes - 1,
            null_mut(),
        );
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        assert!(last().contains("needs"), "{}", last());
        let rc = clca_model_forward_device(
            m,
            batch,
            vp(dimg.addr()),
            vp(dlog.addr_mut()),
            vp(dws.addr_mut() + 8),
            bytes - 8,
            null_mut(),
        );
        assert_eq!(rc, st(ClcaStatus::InvalidArgument));
        assert!(last().contains("aligned"), "{}", last());
        clca_model_destroy(m);
        clca_model_destroy(cpu);

        // Every golden case (every method, ATS's per-image path and its read-backs included),
        // f32 and f16, on a stream of our own: the device entry equals the host entry.
        let ctx = cudarc::driver::CudaContext::new(0).expect("context");
        let stream = ctx.new_stream().expect("stream");
        let raw = stream.cu_stream() as *mut std::ffi::c_void;
        for dir in common::golden::cases() {
            for (dtype, elem) in [(F32, 4usize), (ClcaDtype::F16 as c_int, 2)] {
                let m = golden_model(&dir, CUDA, dtype);
                let i = info(m);
                let (batch, img) = golden_images(&dir);
                let host = forward(m, &img, batch, i.num_classes);
                let mut bytes = 0;
                assert_eq!(clca_model_workspace_size(m, batch, &mut bytes), 0);
                let dimg = g.upload(&img).expect("upload");
                let mut dlog = g.zeros::<u8>(batch * i.num_classes * elem).expect("zeros");
                // Garbage in the workspace: the entry must not depend on its contents.
                let mut dws = g.upload(&vec![0xa5u8; bytes]).expect("upload");
                let rc = clca_model_forward_device(
                    m,
                    batch,
                    vp(dimg.addr()),
                    vp(dlog.addr_mut()),
                    vp(dws.addr_mut()),
                    bytes,
                    raw,
                );
                assert_eq!(rc, 0, "{}: {}", dir.display(), last());
                stream.synchronize().expect("sync");
                let raw_logits = g.download(&dlog).expect("download");
                let dev: Vec<f32> = if elem == 4 {
                    bytemuck::pod_collect_to_vec(&raw_logits)
                } else {
                    bytemuck::pod_collect_to_vec::<u8, clca::f16>(&raw_logits)
                        .iter()
                        .map(|v| v.to_f32())
                        .collect()
                };
                let max = host.iter().fold(0f32, |a, v| a.max(v.abs()));
                let err = dev
                    .iter()
                    .zip(&host)
                    .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                eprintln!(
                    "{} dtype {dtype}: device entry vs host entry max|d| {err:e} (max {max})",
                    dir.display()
                );
                assert!(err <= 1e-5 * max, "{}: {err}", dir.display());
                clca_model_destroy(m);
            }
        }

        // Top-k on device pointers.
        let mut d = null_mut();
        assert_eq!(clca_device_create(CUDA, 0, &mut d), 0, "{}", last());
        let mut rng = common::TRng(9);
        let (rows, n, k) = (4usize, 1025usize, 17usize);
        let x: Vec<f32> = rng.normals(rows * n);
        let (wi, wc) = clca::cpu::topk::topk_select(&x, rows, n, k).expect("ref");
        let dx = g.upload(&x).expect("upload");
        let mut di = g.zeros::<u32>(rows * k).expect("zeros");
        let mut dc = g.zeros::<u32>(rows * (n - k)).expect("zeros");
        let rc = clca_topk_select(
            d,
            F32,
            dx.addr() as *const _,
            rows,
            n,
            k,
            di.addr_mut() as *mut u32,
            dc.addr_mut() as *mut u32,
            null_mut(),
        );
        assert_eq!(rc, 0, "{}", last());
        g.synchronize().expect("sync");
        assert_eq!(g.download(&di).expect("down"), wi);
        assert_eq!(g.download(&dc).expect("down"), wc);
        clca_device_destroy(d);
    }
}

/// With the `cuda` feature and a GPU: an engine captures `clca_model_forward_device` into a
/// CUDA graph of its own (its stream capturing, relaxed mode, after one uncaptured call) and
/// replays it; the replays equal the host entry, for the first images and for new ones
/// written to the same address.
#[cfg(feature = "cuda")]
#[test]
fn cuda_engine_entry_captured_in_a_caller_graph() {
    use clca::{Buffer, Device};
    use cudarc::driver::sys;
    let Some(g) = common::gpu() else {
        eprintln!(
            "skipping the CUDA graph C-ABI test: {}",
            common::gpu_reason()
        );
        return;
    };
    let Some(gd) = common::golden::dir() else {
        return;
    };
    let dir = gd.join("A_evit_clc_ifa");
    let m = golden_model(&dir, CUDA, F32);
    let i = info(m);
    let (batch, img) = golden_images(&dir);
    let img2: Vec<f32> = img.iter().map(|v| -0.5 * v).collect();
    let want = forward(m, &img, batch, i.num_classes);
    let want2 = forward(m, &img2, batch, i.num_classes);
    let mut bytes = 0;
    // SAFETY: live model, writable out.
    assert_eq!(
        unsafe { clca_model_workspace_size(m, batch, &mut bytes) },
        0
    );
    let mut dimg = g.upload(&img).expect("upload");
    let mut dlog = g.zeros::<f32>(batch * i.num_classes).expect("zeros");
    let mut dws = g.zeros::<u8>(bytes).expect("zeros");
    let ctx = cudarc::driver::CudaContext::new(0).expect("context");
    let stream = ctx.new_stream().expect("stream");
    let raw = stream.cu_stream() as *mut std::ffi::c_void;
    let vp = |a: u64| a as *mut std::ffi::c_void;
    let call = |dimg: u64, dlog: u64, dws: u64| {
        // SAFETY: device buffers of the sizes the call needs, alive to the end of the test;
        // `raw` is a live stream of the primary context.
        let rc =
            unsafe { clca_model_forward_device(m, batch, vp(dimg), vp(dlog), vp(dws), bytes, raw) };
        assert_eq!(rc, 0, "{}", last());
    };
    let (a_img, a_log, a_ws) = (dimg.addr_mut(), dlog.addr_mut(), dws.addr_mut());
    call(a_img, a_log, a_ws);
    stream.synchronize().expect("sync");
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .expect("begin capture");
    call(a_img, a_log, a_ws);
    let graph = stream
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .expect("end capture")
        .expect("a graph");
    for (data, w) in [(&img, &want), (&img2, &want2), (&img, &want)] {
        g.write(&mut dimg, data).expect("write");
        g.synchronize().expect("sync");
        graph.launch().expect("launch");
        stream.synchronize().expect("sync");
        let got = g.download(&dlog).expect("download");
        let max = w.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = got
            .iter()
            .zip(w.iter())
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        eprintln!("caller graph vs host entry: max|d| {err:e} (max {max})");
        assert!(err <= 1e-5 * max, "{err} > 1e-5·{max}");
    }
    drop(graph);
    // SAFETY: live handle.
    unsafe { clca_model_destroy(m) };
}
