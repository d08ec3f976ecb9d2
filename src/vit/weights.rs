//! Weights in the authors' parameter names (SPEC §1.3), from safetensors, with every shape
//! checked against the configuration. Unknown and missing tensors are errors, except the dead
//! `head.*` of CLA checkpoints and BatchNorm `num_batches_tracked` counters.
use super::config::{HeadKind, VitConfig};
use crate::ops::cla_head::{BatchNorm, ClaBody, ClaConv, ClaHead, ClaLinear};
use crate::plan::Reduction;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Named f32 tensors (any float dtype in the file is widened to f32).
#[derive(Clone, Debug, Default)]
pub struct TensorMap {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TensorMap {
    /// Reads a safetensors file. The header's length is checked against the file's size before
    /// the file is read, and every tensor's byte range against the file (by `safetensors`)
    /// before any tensor is converted: a header cannot make this allocate more than the file's
    /// size (plus the f32 copies of its float tensors).
    pub fn load(path: &Path) -> Result<Self> {
        let ctx = |m: String| Error::Weights(format!("{}: {m}", path.display()));
        let mut f = std::fs::File::open(path).map_err(|e| ctx(e.to_string()))?;
        let size = f.metadata().map_err(|e| ctx(e.to_string()))?.len();
        let mut head = [0u8; 8];
        let got = read_up_to(&mut f, &mut head).map_err(|e| ctx(e.to_string()))?;
        check_header_len(&head[..got], size).map_err(ctx)?;
        let len = usize::try_from(size)
            .map_err(|_| ctx(format!("{size} bytes do not fit in this machine's memory")))?;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len).map_err(|_| Error::Alloc {
            what: "the weights file",
            bytes: size,
        })?;
        bytes.extend_from_slice(&head);
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, size - 8), &mut bytes)
            .map_err(|e| ctx(e.to_string()))?;
        if bytes.len() != len {
            return Err(ctx(format!(
                "read {} of {size} bytes (the file changed while reading?)",
                bytes.len()
            )));
        }
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Weights(m) => ctx(m),
            other => other,
        })
    }

    /// Parses safetensors bytes. Integer tensors are kept only as their shape (they are the
    /// BatchNorm counters, which inference ignores). Every malformed file is an
    /// [`Error::Weights`] that says what is wrong (never a panic).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        use safetensors::{Dtype, SafeTensorError as E, SafeTensors};
        let size = bytes.len() as u64;
        check_header_len(&bytes[..bytes.len().min(8)], size).map_err(Error::Weights)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
            let why = match e {
                E::InvalidHeader => "the header is not UTF-8".to_string(),
                E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
                    let header = bytes.get(8..8 + n as usize).unwrap_or_default();
                    match serde_json::from_slice::<serde_json::Value>(header) {
                        Err(j) => format!("the header is not JSON: {j}"),
                        Ok(_) => "the header is JSON but not a safetensors table (each entry needs dtype, shape and data_offsets)".to_string(),
                    }
                }
                E::InvalidOffset(t) => format!(
                    "tensor `{t}` has data offsets that do not follow the previous tensor's"
                ),
                E::TensorInvalidInfo => {
                    "a tensor's byte range does not hold shape × dtype size bytes".to_string()
                }
                E::ValidationOverflow => {
                    "a tensor's shape has more elements than fit in memory".to_string()
                }
                E::MetadataIncompleteBuffer => format!(
                    "the tensors' byte ranges do not end at the end of the file ({size} bytes): truncated or extra bytes"
                ),
                other => other.to_string(),
            };
            Error::Weights(format!("not a valid safetensors file: {why}"))
        })?;
        let mut tensors = BTreeMap::new();
        for (name, t) in st.tensors() {
            let d = t.data();
            let vals: Vec<f32> = match t.dtype() {
                Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => d
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => d
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::F64 => d
                    .chunks_exact(8)
                    .map(|c| {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect(),
                Dtype::I64 | Dtype::I32 | Dtype::U8 | Dtype::I8 | Dtype::BOOL => Vec::new(),
                other => {
                    return Err(Error::Weights(format!(
                        "tensor `{name}` has unsupported dtype {other:?}"
                    )))
                }
            };
            tensors.insert(name, (t.shape().to_vec(), vals));
        }
        Ok(TensorMap { tensors })
    }

    /// Writes every tensor (f32) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        super::write_safetensors(
            path,
            self.tensors.iter().map(|(n, (s, v))| {
                (
                    n.as_str(),
                    s.as_slice(),
                    safetensors::Dtype::F32,
                    bytemuck::cast_slice(v),
                )
            }),
        )
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (s, v) = self.tensors.remove(name).ok_or_else(|| {
            Error::Weights(format!(
                "missing tensor `{name}` (expected shape {shape:?})"
            ))
        })?;
        if s != shape {
            return Err(Error::Weights(format!(
                "tensor `{name}` has shape {s:?}, expected {shape:?}"
            )));
        }
        if v.len() != shape.iter().product::<usize>() {
            return Err(Error::Weights(format!(
                "tensor `{name}` is not a float tensor"
            )));
        }
        Ok(v)
    }

    fn take_opt(&mut self, present: bool, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        if present {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Reads into `buf` until it is full or the reader ends; returns the bytes read.
fn read_up_to(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The largest header `safetensors` reads (its MAX_HEADER_SIZE).
const MAX_HEADER: u64 = 100_000_000;

/// Checks the 8-byte header length of a safetensors file of `size` bytes whose first bytes are
/// `head`, before anything else is read.
fn check_header_len(head: &[u8], size: u64) -> std::result::Result<(), String> {
    let Ok(head) = <[u8; 8]>::try_from(head) else {
        return Err(format!(
            "not a valid safetensors file: {size} bytes, shorter than the 8-byte header length (empty or truncated)"
        ));
    };
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER {
        return Err(format!(
            "not a valid safetensors file: the header claims {n} bytes (the limit is {MAX_HEADER})"
        ));
    }
    if n + 8 > size {
        return Err(format!(
            "not a valid safetensors file: the header claims {n} bytes but the file has {size} (truncated?)"
        ));
    }
    Ok(())
}

/// One block's parameters.
#[derive(Clone, Debug)]
pub struct BlockWeights {
    pub norm1: (Vec<f32>, Vec<f32>),
    pub qkv_w: Vec<f32>,
    pub qkv_b: Option<Vec<f32>>,
    pub proj_w: Vec<f32>,
    pub proj_b: Vec<f32>,
    pub norm2: (Vec<f32>, Vec<f32>),
    pub fc1_w: Vec<f32>,
    pub fc1_b: Vec<f32>,
    pub fc2_w: Vec<f32>,
    pub fc2_b: Vec<f32>,
    pub ls1: Option<Vec<f32>>,
    pub ls2: Option<Vec<f32>>,
}

/// The final LayerNorm + Linear, or the CLA head.
#[derive(Clone, Debug)]
pub enum HeadWeights {
    Linear {
        norm: (Vec<f32>, Vec<f32>),
        w: Vec<f32>,
        b: Vec<f32>,
    },
    Cla(ClaHead),
}

/// A Linear layer: `w` [out, inp] (PyTorch layout), `b` [out].
#[derive(Clone, Debug)]
pub struct Lin {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub out: usize,
    pub inp: usize,
}

impl Lin {
    fn take(map: &mut TensorMap, pre: &str, out: usize, inp: usize) -> Result<Self> {
        Ok(Lin {
            w: map.take(&format!("{pre}.weight"), &[out, inp])?,
            b: map.take(&format!("{pre}.bias"), &[out])?,
            out,
            inp,
        })
    }
}

/// SiT's token-slimming module (`cluster_layers.j`): LN → Linear(D→D/2) → GELU →
/// Linear(D/2→K), times the learned `scale`.
#[derive(Clone, Debug)]
pub struct SitWeights {
    pub norm: (Vec<f32>, Vec<f32>),
    pub fc1: Lin,
    pub fc2: Lin,
    pub scale: f32,
}

/// PatchMerger (`cluster_layers.j`): LN and the learned queries [K, D].
#[derive(Clone, Debug)]
pub struct PatchMergerWeights {
    pub norm: (Vec<f32>, Vec<f32>),
    pub queries: Vec<f32>,
    pub k: usize,
}

/// DynamicViT's score predictor (`score_predictor.j`): `in_conv` = LN, Linear(D→D), GELU;
/// `out_conv` = Linear(D→D/2), GELU, Linear(→D/4), GELU, Linear(→2), log-softmax.
#[derive(Clone, Debug)]
pub struct PredictorWeights {
    pub norm: (Vec<f32>, Vec<f32>),
    pub fc_in: Lin,
    pub fc0: Lin,
    pub fc2: Lin,
    pub fc4: Lin,
}

/// The learned parameters of the reduction method, one entry per reduction layer.
#[derive(Clone, Debug)]
pub enum MethodWeights {
    /// Top-K, EViT, ToMe, ATS and the plain ViT learn nothing.
    None,
    /// DPC-KNN's token score `cluster_layers.j.score` Linear(D, 1) (absent with equal_weight).
    DpcKnn(Vec<Option<Lin>>),
    Sit(Vec<SitWeights>),
    PatchMerger(Vec<PatchMergerWeights>),
    DynamicVit(Vec<PredictorWeights>),
}

impl MethodWeights {
    fn take(cfg: &VitConfig, map: &mut TensorMap) -> Result<Self> {
        let d = cfg.embed_dim;
        let widths = cfg.method_widths()?;
        let ln = |map: &mut TensorMap, pre: &str| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((
                map.take(&format!("{pre}.weight"), &[d])?,
                map.take(&format!("{pre}.bias"), &[d])?,
            ))
        };
        Ok(match cfg.reduction {
            Reduction::DpcKnn => MethodWeights::DpcKnn(
                (0..widths.len())
                    .map(|j| {
                        if cfg.method.equal_weight {
                            Ok(None)
                        } else {
                            Lin::take(map, &format!("cluster_layers.{j}.score"), 1, d).map(Some)
                        }
                    })
                    .collect::<Result<_>>()?,
            ),
            Reduction::Sit => MethodWeights::Sit(
                widths
                    .iter()
                    .enumerate()
                    .map(|(j, &k)| {
                        let pre = format!("cluster_layers.{j}");
                        let h = sit_hidden(d);
                        Ok(SitWeights {
                            norm: ln(map, &format!("{pre}.weight.0"))?,
                            fc1: Lin::take(map, &format!("{pre}.weight.1"), h, d)?,
                            fc2: Lin::take(map, &format!("{pre}.weight.3"), k, h)?,
                            scale: map.take(&format!("{pre}.scale"), &[1, 1, 1])?[0],
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            Reduction::PatchMerger => MethodWeights::PatchMerger(
                widths
                    .iter()
                    .enumerate()
                    .map(|(j, &k)| {
                        let pre = format!("cluster_layers.{j}");
                        Ok(PatchMergerWeights {
                            norm: ln(map, &format!("{pre}.norm"))?,
                            queries: map.take(&format!("{pre}.queries"), &[k, d])?,
                            k,
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            Reduction::DynamicVit => MethodWeights::DynamicVit(
                (0..widths.len())
                    .map(|j| {
                        let pre = format!("score_predictor.{j}");
                        Ok(PredictorWeights {
                            norm: ln(map, &format!("{pre}.in_conv.0"))?,
                            fc_in: Lin::take(map, &format!("{pre}.in_conv.1"), d, d)?,
                            fc0: Lin::take(map, &format!("{pre}.out_conv.0"), d / 2, d)?,
                            fc2: Lin::take(map, &format!("{pre}.out_conv.2"), d / 4, d / 2)?,
                            fc4: Lin::take(map, &format!("{pre}.out_conv.4"), 2, d / 4)?,
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            _ => MethodWeights::None,
        })
    }
}

/// SiT's hidden width: `int(embed_dim * 0.5)`.
pub fn sit_hidden(d: usize) -> usize {
    d / 2
}

/// Every parameter of a model, checked against its configuration.
#[derive(Clone, Debug)]
pub struct VitWeights {
    pub cls_token: Vec<f32>,
    /// [rows, D]: 1 + P + C rows, or P rows with no_embed_class.
    pub pos_embed: Vec<f32>,
    pub clr: Vec<f32>,
    /// [D, 3·p·p] (the conv weight flattened in (c, ky, kx) order).
    pub patch_w: Vec<f32>,
    pub patch_b: Option<Vec<f32>>,
    pub norm_pre: Option<(Vec<f32>, Vec<f32>)>,
    pub blocks: Vec<BlockWeights>,
    pub method: MethodWeights,
    pub head: HeadWeights,
}

impl VitWeights {
    /// Takes every expected tensor out of `map`; anything left over is an error unless it is
    /// one of the tensors the spec lists as dead.
    pub fn from_map(cfg: &VitConfig, taps: usize, mut map: TensorMap) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.embed_dim;
        let (p, c) = (cfg.num_patches(), cfg.num_clr);
        let hm = cfg.mlp_hidden;
        let k = cfg.num_classes;
        let pos_rows = if cfg.no_embed_class { p } else { 1 + p + c };
        let cls_token = map.take("cls_token", &[1, 1, d])?;
        let pos_embed = map.take("pos_embed", &[1, pos_rows, d])?;
        let clr = if c > 0 {
            map.take("clr", &[1, c, d])?
        } else {
            Vec::new()
        };
        let ps = cfg.patch_size;
        let patch_w = map.take("patch_embed.proj.weight", &[d, cfg.in_chans, ps, ps])?;
        let patch_b = map.take_opt(cfg.patch_bias, "patch_embed.proj.bias", &[d])?;
        let norm_pre = if cfg.norm_pre {
            Some((
                map.take("norm_pre.weight", &[d])?,
                map.take("norm_pre.bias", &[d])?,
            ))
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let n = |s: &str| format!("blocks.{i}.{s}");
            blocks.push(BlockWeights {
                norm1: (
                    map.take(&n("norm1.weight"), &[d])?,
                    map.take(&n("norm1.bias"), &[d])?,
                ),
                qkv_w: map.take(&n("attn.qkv.weight"), &[3 * d, d])?,
                qkv_b: map.take_opt(cfg.qkv_bias, &n("attn.qkv.bias"), &[3 * d])?,
                proj_w: map.take(&n("attn.proj.weight"), &[d, d])?,
                proj_b: map.take(&n("attn.proj.bias"), &[d])?,
                norm2: (
                    map.take(&n("norm2.weight"), &[d])?,
                    map.take(&n("norm2.bias"), &[d])?,
                ),
                fc1_w: map.take(&n("mlp.fc1.weight"), &[hm, d])?,
                fc1_b: map.take(&n("mlp.fc1.bias"), &[hm])?,
                fc2_w: map.take(&n("mlp.fc2.weight"), &[d, hm])?,
                fc2_b: map.take(&n("mlp.fc2.bias"), &[d])?,
                ls1: map.take_opt(cfg.layerscale, &n("ls1.gamma"), &[d])?,
                ls2: map.take_opt(cfg.layerscale, &n("ls2.gamma"), &[d])?,
            });
        }
        let method = MethodWeights::take(cfg, &mut map)?;
        let head = match cfg.head {
            HeadKind::Linear => HeadWeights::Linear {
                norm: (map.take("norm.weight", &[d])?, map.take("norm.bias", &[d])?),
                w: map.take("head.weight", &[k, d])?,
                b: map.take("head.bias", &[k])?,
            },
            HeadKind::Cla { groups: g } if g > 0 => {
                let bn = |map: &mut TensorMap, pre: &str, ch: usize| -> Result<[Vec<f32>; 4]> {
                    Ok([
                        map.take(&format!("{pre}.weight"), &[ch])?,
                        map.take(&format!("{pre}.bias"), &[ch])?,
                        map.take(&format!("{pre}.running_mean"), &[ch])?,
                        map.take(&format!("{pre}.running_var"), &[ch])?,
                    ])
                };
                let b1 = bn(&mut map, "ifa_head.0.0", d)?;
                let w = map.take("ifa_head.0.1.weight", &[g * d, 1, taps])?;
                let b = map.take("ifa_head.0.1.bias", &[g * d])?;
                let b2 = bn(&mut map, "ifa_head.0.2", g * d)?;
                let fc_w = map.take("ifa_head.0.4.weight", &[k, g * d, 1])?;
                let fc_b = map.take("ifa_head.0.4.bias", &[k])?;
                let mk = |q: &[Vec<f32>; 4]| -> [Vec<f32>; 4] { q.clone() };
                let (b1, b2) = (mk(&b1), mk(&b2));
                let bn1 = BatchNorm {
                    weight: &b1[0],
                    bias: &b1[1],
                    running_mean: &b1[2],
                    running_var: &b1[3],
                    eps: 1e-5,
                };
                let bn2 = BatchNorm {
                    weight: &b2[0],
                    bias: &b2[1],
                    running_mean: &b2[2],
                    running_var: &b2[3],
                    eps: 1e-5,
                };
                let conv = ClaConv::fold(&bn1, &w, &b, &bn2, d, taps, g)?;
                HeadWeights::Cla(ClaHead {
                    body: ClaBody::Conv(conv),
                    classes: k,
                    fc_w,
                    fc_b,
                })
            }
            HeadKind::Cla { .. } => {
                let w = map.take("ifa_head.0.0.weight", &[1, taps])?;
                let b = map.take("ifa_head.0.0.bias", &[1])?;
                let gamma = map.take("ifa_head.0.3.weight", &[d])?;
                let beta = map.take("ifa_head.0.3.bias", &[d])?;
                let fc_w = map.take("ifa_head.0.4.weight", &[k, d])?;
                let fc_b = map.take("ifa_head.0.4.bias", &[k])?;
                let lin = ClaLinear {
                    d,
                    f: taps,
                    w,
                    b0: b[0],
                    gamma,
                    beta,
                    eps: 1e-5,
                };
                HeadWeights::Cla(ClaHead {
                    body: ClaBody::Linear(lin),
                    classes: k,
                    fc_w,
                    fc_b,
                })
            }
        };
        let cla = matches!(cfg.head, HeadKind::Cla { .. });
        let leftover: Vec<String> = map
            .tensors
            .keys()
            .filter(|n| {
                !n.ends_with("num_batches_tracked")
                    && !(cla && (n.as_str() == "head.weight" || n.as_str() == "head.bias"))
            })
            .cloned()
            .collect();
        if !leftover.is_empty() {
            return Err(Error::Weights(format!(
                "unexpected tensors for this configuration: {}",
                leftover.join(", ")
            )));
        }
        Ok(VitWeights {
            cls_token,
            pos_embed,
            clr,
            patch_w,
            patch_b,
            norm_pre,
            blocks,
            method,
            head,
        })
    }

    /// Loads and checks a safetensors file.
    pub fn load(cfg: &VitConfig, taps: usize, path: &Path) -> Result<Self> {
        Self::from_map(cfg, taps, TensorMap::load(path)?)
    }
}
