//! Shared test helpers: tolerances, deterministic random data, and running one test body on
//! every available device (the host shim always, the GPU when one is present).
#![allow(dead_code)]
pub mod golden;

use clca::{Device, Element};

/// Two-sided closeness: |a − b| ≤ atol + rtol·|b|, with NaN only equal to NaN and infinities
/// only equal to the same infinity.
pub fn close(a: f64, b: f64, atol: f64, rtol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= atol + rtol * b.abs()
}

/// Asserts element-wise closeness, naming the first offending index.
pub fn assert_close<T: Element>(what: &str, got: &[T], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g = g.to_f32() as f64;
        assert!(
            close(g, *w, atol, rtol),
            "{what}[{i}]: got {g}, want {w} (atol {atol}, rtol {rtol})"
        );
    }
}

/// Per-dtype tolerance of a single rounding to the storage type (plus f32 accumulation slack).
pub fn tol<T: Element>() -> (f64, f64) {
    match T::DTYPE {
        clca::DType::F32 => (1e-5, 1e-5),
        clca::DType::F16 => (2e-3, 2e-3),
        clca::DType::BF16 => (1.6e-2, 1.6e-2),
    }
}

/// Every reduction method's train.py model prefix ("" = no reduction first): the library's
/// list (`clca::vit::config::METHOD_PREFIXES`).
pub fn method_prefixes() -> impl Iterator<Item = &'static str> {
    std::iter::once("").chain(
        clca::vit::config::METHOD_PREFIXES
            .iter()
            .map(|r| r.prefix()),
    )
}

/// splitmix64: deterministic test data without extra crates.
pub struct TRng(pub u64);
impl TRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn normals<T: Element>(&mut self, n: usize) -> Vec<T> {
        (0..n).map(|_| T::from_f32(self.normal() as f32)).collect()
    }
}

/// Softmax rows of random logits: attention probabilities [rows, n].
pub fn random_probs(rng: &mut TRng, rows: usize, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * n);
    for _ in 0..rows {
        let l: Vec<f64> = (0..n).map(|_| 2.0 * rng.normal()).collect();
        let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = l.iter().map(|x| (x - m).exp()).sum();
        out.extend(l.iter().map(|x| (x - m).exp() / s));
    }
    out
}

/// Runs `$body(&device)` on the host shim and, with the `cuda` feature and a GPU, on the GPU;
/// without a GPU it prints why and passes.
#[macro_export]
macro_rules! on_devices {
    ($body:ident) => {{
        // CLCA_GPU_ONLY=1 (the GPU script) leaves the host-shim bodies to CI.
        if std::env::var_os("CLCA_GPU_ONLY").is_none() {
            $body(&clca::HostShim);
        }
        #[cfg(feature = "cuda")]
        match $crate::common::gpu() {
            Some(d) => $body(d),
            // CLCA_REQUIRE_GPU=1 (the GPU script) turns the skip into a failure.
            None if std::env::var_os("CLCA_REQUIRE_GPU").is_some() => panic!(
                "CLCA_REQUIRE_GPU is set but the GPU run of {} cannot start: {}",
                stringify!($body),
                $crate::common::gpu_reason()
            ),
            None => eprintln!(
                "skipping the GPU run of {}: {}",
                stringify!($body),
                $crate::common::gpu_reason()
            ),
        }
    }};
}

#[cfg(feature = "cuda")]
static GPU: std::sync::OnceLock<Result<clca::cuda::CudaDevice, String>> =
    std::sync::OnceLock::new();

/// The GPU, if there is one.
#[cfg(feature = "cuda")]
pub fn gpu() -> Option<&'static clca::cuda::CudaDevice> {
    GPU.get_or_init(clca::cuda::try_default).as_ref().ok()
}

/// Why there is no GPU.
#[cfg(feature = "cuda")]
pub fn gpu_reason() -> String {
    match GPU.get_or_init(clca::cuda::try_default) {
        Ok(_) => "a GPU is present".into(),
        Err(e) => e.clone(),
    }
}

/// Upload, or fail the test.
pub fn up<D: Device, T: bytemuck::Pod>(dev: &D, v: &[T]) -> D::Buf<T> {
    dev.upload(v).expect("upload")
}

/// A buffer pre-filled with a sentinel, so unwritten elements show up.
pub fn sentinel<D: Device, T: bytemuck::Pod>(dev: &D, n: usize, s: T) -> D::Buf<T> {
    dev.upload(&vec![s; n]).expect("upload")
}

/// Download, or fail the test.
pub fn down<D: Device, T: bytemuck::Pod>(dev: &D, b: &D::Buf<T>) -> Vec<T> {
    dev.download(b).expect("download")
}

/// Seeded random weights (see `clca::vit::random::random_weights`).
pub fn random_weights(cfg: &clca::vit::VitConfig, taps: usize, seed: u64) -> clca::vit::TensorMap {
    clca::vit::random::random_weights(cfg, taps, seed)
}

/// A small model of `prefix` (a train.py method prefix, e.g. "evit_") with the paper's CLCA
/// options (reductions at blocks 1 and 3, keep 0.5, CLC with one clr token, the CLA head),
/// 3 heads, 10 classes, seeded random weights; `edit` adjusts the configuration first.
pub fn clca_model(
    prefix: &str,
    img: usize,
    patch: usize,
    d: usize,
    depth: usize,
    edit: impl FnOnce(&mut clca::vit::VitConfig),
) -> clca::vit::Vit {
    let f = clca::vit::TrainFlags {
        reduction_loc: vec![1, 3],
        keep_rate: vec![0.5],
        clc: true,
        num_clr: 1,
        ifa_head: true,
        ..clca::vit::TrainFlags::default()
    };
    let mut cfg =
        clca::vit::VitConfig::from_model_name(&format!("{prefix}deit_tiny_patch16_224"), &f)
            .expect("cfg");
    cfg.img_size = img;
    cfg.patch_size = patch;
    cfg.embed_dim = d;
    cfg.mlp_hidden = 4 * d;
    cfg.depth = depth;
    cfg.num_heads = 3;
    cfg.num_classes = 10;
    edit(&mut cfg);
    let taps = cfg.plan().expect("plan").taps;
    clca::vit::Vit::new(cfg.clone(), random_weights(&cfg, taps, 1)).expect("weights")
}

/// The packed CPU paths this CPU can run (AVX-512, AVX2 + FMA), each one it lacks skipped
/// with a note.
pub fn packed_isas() -> Vec<clca::cpu::packed::Isa> {
    use clca::cpu::packed::Isa;
    [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| {
            let ok = i.supported();
            if !ok {
                eprintln!("skipping {i:?}: this CPU lacks it");
            }
            ok
        })
        .collect()
}
