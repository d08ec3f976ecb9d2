//! Access to the authors' reference outputs in ../shared/golden (see its README).
#![allow(dead_code)]
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

/// The golden directory: $CLCA_GOLDEN_DIR, or ../shared/golden beside the crate.
pub fn dir() -> Option<PathBuf> {
    let d = std::env::var_os("CLCA_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"));
    d.is_dir().then_some(d)
}

/// Every case directory, sorted; prints why and returns nothing when the fixtures are absent.
pub fn cases() -> Vec<PathBuf> {
    let Some(d) = dir() else {
        eprintln!("skipping golden tests: ../shared/golden not found (set CLCA_GOLDEN_DIR)");
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .expect("read golden dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    v.sort();
    v
}

pub struct Case {
    pub name: String,
    pub config: serde_json::Value,
    out: Vec<u8>,
    weights: Vec<u8>,
}

impl Case {
    pub fn load(p: &std::path::Path) -> Case {
        let config = serde_json::from_slice(&std::fs::read(p.join("config.json")).expect("config"))
            .expect("config json");
        Case {
            name: p.file_name().expect("name").to_string_lossy().into_owned(),
            config,
            out: std::fs::read(p.join("output.safetensors")).expect("output"),
            weights: std::fs::read(p.join("weights.safetensors")).expect("weights"),
        }
    }
    pub fn model_class(&self) -> &str {
        self.config["model"]["model_class"]
            .as_str()
            .unwrap_or_default()
    }
    pub fn output(&self, name: &str) -> Option<(Vec<usize>, Vec<f64>)> {
        tensor(&self.out, name)
    }
    pub fn weight(&self, name: &str) -> Option<(Vec<usize>, Vec<f64>)> {
        tensor(&self.weights, name)
    }
    pub fn weight_f32(&self, name: &str) -> Vec<f32> {
        self.weight(name)
            .unwrap_or_else(|| panic!("{}: missing weight {name}", self.name))
            .1
            .iter()
            .map(|&v| v as f32)
            .collect()
    }
    pub fn usizes(&self, path: &[&str]) -> Vec<usize> {
        let mut v = &self.config;
        for p in path {
            v = &v[*p];
        }
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A tensor as (shape, values widened to f64); integer tensors are exact in f64 here.
pub fn tensor(bytes: &[u8], name: &str) -> Option<(Vec<usize>, Vec<f64>)> {
    let st = SafeTensors::deserialize(bytes).expect("safetensors");
    let t = st.tensor(name).ok()?;
    let d = t.data();
    let vals: Vec<f64> = match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::I64 => d
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
            .collect(),
        Dtype::U8 => d.iter().map(|&b| b as f64).collect(),
        other => panic!("unexpected dtype {other:?} for {name}"),
    };
    Some((t.shape().to_vec(), vals))
}
