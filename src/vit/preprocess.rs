//! Eval preprocessing of the authors' `datasets.py` (SPEC §1.4): resize to (s, s) with PIL's
//! bicubic filter, s = int(size / 0.875); center crop to size; ToTensor; ImageNet mean/std.
//!
//! The resize is Pillow's `Resample.c` re-done in integer arithmetic: separable two-pass
//! convolution (horizontal first, into an 8-bit image, then vertical), the bicubic kernel with
//! a = −0.5 widened by the scale when downsampling (PIL's antialiasing), coefficients
//! normalized and quantized to 22 fractional bits, round-half-up and clipping to 0..255.
//! It gives Pillow's bytes exactly (tests/preprocess.rs compares with Pillow when installed).
//! JPEG decoding may differ from libjpeg by ±1 per pixel (another IDCT).
use crate::{Error, Result};
use std::path::Path;

/// ImageNet mean and std (used for every backbone, CLIP included, as the authors do).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The largest output side [`resize_bicubic_rgb8`] makes.
pub const MAX_RESIZE: usize = 1 << 20;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's precompute_coeffs + normalize_coeffs_8bpc: (ksize, bounds (xmin, count), kk).
fn coeffs(in_size: usize, out_size: usize) -> (usize, Vec<(usize, usize)>, Vec<i32>) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for x in 0..xmax {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for x in 0..ksize {
            let v = if x < xmax && ww != 0.0 {
                k[x] / ww
            } else if x < xmax {
                k[x]
            } else {
                0.0
            };
            let scaled = v * (1u64 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    (ksize, bounds, kk)
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS) << 8 {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes an RGB8 image (w×h, interleaved) to (ow, oh) exactly as Pillow's
/// `Image.resize((ow, oh), Image.BICUBIC)`. Every size must be positive, the output sides at
/// most [`MAX_RESIZE`], and `src` hold w·h·3 bytes (an [`Error::InvalidArgument`] otherwise).
pub fn resize_bicubic_rgb8(
    src: &[u8],
    w: usize,
    h: usize,
    ow: usize,
    oh: usize,
) -> Result<Vec<u8>> {
    let len = |a: usize, b: usize| a.checked_mul(b).and_then(|n| n.checked_mul(3));
    if w == 0 || h == 0 || ow == 0 || oh == 0 || len(w, h) != Some(src.len()) {
        return Err(Error::InvalidArgument {
            arg: "image",
            value: format!("{w}x{h} -> {ow}x{oh}"),
            why: format!(
                "sizes must be positive and the buffer hold w·h·3 bytes (got {})",
                src.len()
            ),
        });
    }
    if ow.max(oh) > MAX_RESIZE {
        return Err(Error::InvalidArgument {
            arg: "image",
            value: format!("{ow}x{oh}"),
            why: format!("an output side above {MAX_RESIZE} pixels"),
        });
    }
    let out_len = len(ow, oh).ok_or(Error::Overflow {
        what: "resized image",
    })?;
    let (kh, bh, kkh) = coeffs(w, ow);
    let (kv, bv, kkv) = coeffs(h, oh);
    let need_h = ow != w;
    let need_v = oh != h;
    let half = 1i64 << (PRECISION_BITS - 1);
    // Rows of the source the vertical pass reads.
    let first = bv[0].0;
    let last = bv[oh - 1].0 + bv[oh - 1].1;
    let (tmp, tw, row0) = if need_h {
        let rows = last - first;
        let mut t = vec![0u8; ow * rows * 3];
        for y in 0..rows {
            let sr = &src[(first + y) * w * 3..];
            for xx in 0..ow {
                let (xmin, cnt) = bh[xx];
                let k = &kkh[xx * kh..];
                for c in 0..3 {
                    let mut ss = half;
                    for x in 0..cnt {
                        ss += sr[(xmin + x) * 3 + c] as i64 * k[x] as i64;
                    }
                    t[(y * ow + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        (t, ow, first)
    } else {
        (src.to_vec(), w, 0)
    };
    if !need_v {
        return Ok(if need_h { tmp } else { src.to_vec() });
    }
    let mut out = crate::error::try_zeroed("resized image", out_len)?;
    for yy in 0..oh {
        let (ymin, cnt) = bv[yy];
        let ymin = ymin - row0;
        let k = &kkv[yy * kv..];
        for xx in 0..tw {
            for c in 0..3 {
                let mut ss = half;
                for y in 0..cnt {
                    ss += tmp[((ymin + y) * tw + xx) * 3 + c] as i64 * k[y] as i64;
                }
                out[(yy * ow + xx) * 3 + c] = clip8(ss);
            }
        }
    }
    Ok(out)
}

/// Resize to int(size/0.875) square, center crop `size`, ToTensor, normalize: [3, size, size].
pub fn preprocess_rgb8(src: &[u8], w: usize, h: usize, size: usize) -> Result<Vec<f32>> {
    if w == 0 || h == 0 || w.checked_mul(h).and_then(|n| n.checked_mul(3)) != Some(src.len()) {
        return Err(Error::InvalidArgument {
            arg: "image",
            value: format!("{w}x{h}"),
            why: "empty image or wrong buffer size".into(),
        });
    }
    if size == 0 || size > crate::vit::config::LIMITS.img_size {
        return Err(Error::InvalidArgument {
            arg: "input_size",
            value: size.to_string(),
            why: format!(
                "must be positive and at most {}",
                crate::vit::config::LIMITS.img_size
            ),
        });
    }
    let s = (size as f64 / 0.875) as usize;
    let r = resize_bicubic_rgb8(src, w, h, s, s)?;
    // torchvision CenterCrop: top = int(round((h - th) / 2)).
    let off = ((s - size) as f64 / 2.0).round() as usize;
    let mut out = vec![0f32; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                let v = r[((y + off) * s + x + off) * 3 + c] as f32 / 255.0;
                out[(c * size + y) * size + x] = (v - MEAN[c]) / STD[c];
            }
        }
    }
    Ok(out)
}

/// Loads a PNG or JPEG, converts it to RGB (alpha dropped, as PIL's `convert('RGB')`), and
/// preprocesses it: [3, size, size] f32.
pub fn load_image(path: &Path, input_size: usize) -> Result<Vec<f32>> {
    if !path.is_file() {
        return Err(Error::InvalidArgument {
            arg: "image",
            value: path.display().to_string(),
            why: "no such file".into(),
        });
    }
    let img = image::open(path).map_err(|e| Error::InvalidArgument {
        arg: "image",
        value: path.display().to_string(),
        why: format!("cannot decode: {e}"),
    })?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    preprocess_rgb8(rgb.as_raw(), w, h, input_size)
}
