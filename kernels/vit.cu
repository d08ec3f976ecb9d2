// The ViT primitives of the device forward. Precision policy (the authors' autocast): the
// residual stream x is f32; GEMM inputs/outputs, attention and the CLA head run in T
// (f32/f16/bf16) with f32 accumulation.
#include "common.cuh"

namespace clca {

// The rest of a LayerNorm of one f32 row once each thread holds `s`, its share of the row's sum
// over its thread-strided columns: mean, variance, and y = (x - mean) * rstd * g + b in T.
template <class T>
__device__ __forceinline__ void ln_finish(const float* __restrict__ xr, float s, unsigned d,
                                          const float* __restrict__ g, const float* __restrict__ b,
                                          float eps, T* __restrict__ y, float* red) {
  const float mean = block_sum(s, red) / (float)d;
  float q = 0.0f;
  for (unsigned c = threadIdx.x; c < d; c += blockDim.x) {
    const float e = xr[c] - mean;
    q += e * e;
  }
  const float rstd = rsqrtf(block_sum(q, red) / (float)d + eps);
  for (unsigned c = threadIdx.x; c < d; c += blockDim.x)
    y[c] = from_f32<T>((xr[c] - mean) * rstd * g[c] + b[c]);
}

// LayerNorm runs one warp per row, eight rows a block: a block per row (256 threads, three
// columns each at D = 768, two block-wide reductions of four barriers) waited on barriers.
// Measured on an H200, plain ViT-B B64 bf16 (50 304 rows): 120 µs a LayerNorm against 172 µs
// with a block per row. Columns are lane-strided (c = lane + 32 i), so a warp's loads are one
// coalesced 128-byte line; rows up to LN_REG * 32 columns stay in registers between the passes.
constexpr unsigned LN_REG = 32;

// The rest of a LayerNorm of one f32 row by one warp once each lane holds `s`, its share of the
// row's sum (columns lane + 32 i in ascending i), and, when `in_regs`, the row itself in v:
// mean, variance, y = (x - mean) * rstd * g + b in T. Without `in_regs` the row is re-read
// from xr.
template <class T>
__device__ __forceinline__ void ln_finish_warp(const float* __restrict__ xr, const float (&v)[LN_REG],
                                               bool in_regs, float s, unsigned d,
                                               const float* __restrict__ g,
                                               const float* __restrict__ b, float eps,
                                               T* __restrict__ y) {
  const unsigned lane = threadIdx.x & 31;
  const float mean = warp_sum(s) / (float)d;
  float q = 0.0f;
  if (in_regs) {
    CLCA_UNROLL
    for (unsigned i = 0; i < LN_REG; ++i) {
      const unsigned c = lane + 32 * i;
      const float e = c < d ? v[i] - mean : 0.0f;
      q += e * e;
    }
  } else {
    for (unsigned c = lane; c < d; c += 32) {
      const float e = xr[c] - mean;
      q += e * e;
    }
  }
  const float rstd = rsqrtf(warp_sum(q) / (float)d + eps);
  if (in_regs) {
    CLCA_UNROLL
    for (unsigned i = 0; i < LN_REG; ++i) {
      const unsigned c = lane + 32 * i;
      if (c < d) y[c] = from_f32<T>((v[i] - mean) * rstd * g[c] + b[c]);
    }
  } else {
    for (unsigned c = lane; c < d; c += 32) y[c] = from_f32<T>((xr[c] - mean) * rstd * g[c] + b[c]);
  }
}

// LayerNorm of row r of x (f32, row stride xs) into y[r] (T, compact). One warp per row.
template <class T>
__device__ void layernorm_rows(const float* __restrict__ x, unsigned rows, unsigned d, i64 xs,
                               const float* __restrict__ g, const float* __restrict__ b, float eps,
                               T* __restrict__ y) {
  const unsigned lane = threadIdx.x & 31;
  const bool in_regs = d <= 32 * LN_REG;
  const unsigned warps = blockDim.x >> 5;  // rows a block; grid-stride over the rest
  for (unsigned r = blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += gridDim.x * warps) {
    const float* xr = x + (i64)r * xs;
    float v[LN_REG];
    float s = 0.0f;
    if (in_regs) {
      CLCA_UNROLL
      for (unsigned i = 0; i < LN_REG; ++i) {
        const unsigned c = lane + 32 * i;
        v[i] = 0.0f;
        if (c < d) {
          v[i] = xr[c];
          s += v[i];
        }
      }
    } else {
      for (unsigned c = lane; c < d; c += 32) s += xr[c];
    }
    ln_finish_warp<T>(xr, v, in_regs, s, d, g, b, eps, y + (i64)r * d);
  }
}

// The column e % n of a grid-stride walk over a row-major [rows, n] tensor, kept by addition:
// one 64-bit division per thread instead of one per element (the per-element `%` made the
// bias/GELU and residual passes compute-bound: 1.9 ms of a 17.9 ms B64 forward on an H200).
struct ColumnWalk {
  unsigned c, step, n;
  __device__ explicit ColumnWalk(unsigned n_) : n(n_) {
    c = (unsigned)(first() % n_);
    step = (unsigned)(stride() % n_);
  }
  __device__ long long first() const { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
  __device__ long long stride() const { return (long long)gridDim.x * blockDim.x; }
  __device__ void next() {
    c += step;  // both < n, so one subtraction wraps it
    if (c >= n) c -= n;
  }
};

// Four consecutive T, one vector access (8 bytes for 16-bit types, 16 for f32): one 2-byte
// access per thread left the bias/GELU and residual passes at about a third of the copy
// bandwidth on an H200 even without the per-element modulo.
template <class T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};
template <class V>
__device__ __forceinline__ V ld_vec(const void* p) {
#if defined(CLCA_DEVICE_BUILD)
  return *reinterpret_cast<const V*>(p);
#else
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
#endif
}
template <class V>
__device__ __forceinline__ void st_vec(void* p, const V& v) {
#if defined(CLCA_DEVICE_BUILD)
  *reinterpret_cast<V*>(p) = v;
#else
  std::memcpy(p, &v, sizeof v);
#endif
}
// True when every pointer is aligned for 4-wide vectors of its own type (null counts as aligned).
__device__ __forceinline__ bool vec4_ok(const void* p, unsigned elem) {
  return ((unsigned long long)p % (4ull * elem)) == 0;
}

// act: 0 none, 1 exact GELU, 2 exp (DPC-KNN's token weights).
__device__ __forceinline__ float apply_act(float v, unsigned act) {
  if (act == 1) return gelu_erf(v);
  if (act == 2) return expf(v);
  return v;
}

// y[r, c] = act(y[r, c] + bias[c]), four at a time when the row width and pointers allow.
template <class T>
__device__ void bias_act_all(T* __restrict__ y, long long rows, unsigned n,
                             const float* __restrict__ bias, unsigned act) {
  const long long total = rows * (long long)n;
  if ((n & 3u) == 0 && vec4_ok(y, sizeof(T)) && vec4_ok(bias, 4)) {
    ColumnWalk col(n / 4);
    for (long long q = col.first(); q < total / 4; q += col.stride(), col.next()) {
      Vec4<T> a = ld_vec<Vec4<T>>(y + 4 * q);
      CLCA_UNROLL
      for (int i = 0; i < 4; ++i)
        a.v[i] = from_f32<T>(apply_act(to_f32(a.v[i]) + (bias ? bias[4 * col.c + i] : 0.0f), act));
      st_vec(y + 4 * q, a);
    }
    return;
  }
  ColumnWalk col(n);
  for (long long e = col.first(); e < total; e += col.stride(), col.next())
    y[e] = from_f32<T>(apply_act(to_f32(y[e]) + (bias ? bias[col.c] : 0.0f), act));
}

// x[r, c] += gamma[c] * round_T(y[r, c] + bias[c]), four at a time when possible.
template <class T>
__device__ void residual_all(float* __restrict__ x, const T* __restrict__ y, long long rows,
                             unsigned d, const float* __restrict__ gamma,
                             const float* __restrict__ bias) {
  const long long total = rows * (long long)d;
  if ((d & 3u) == 0 && vec4_ok(x, 4) && vec4_ok(y, sizeof(T)) && vec4_ok(gamma, 4) &&
      vec4_ok(bias, 4)) {
    ColumnWalk col(d / 4);
    for (long long q = col.first(); q < total / 4; q += col.stride(), col.next()) {
      const Vec4<T> a = ld_vec<Vec4<T>>(y + 4 * q);
      Vec4<float> xv = ld_vec<Vec4<float>>(x + 4 * q);
      CLCA_UNROLL
      for (int i = 0; i < 4; ++i) {
        const unsigned c = 4 * col.c + i;
        float v = to_f32(a.v[i]);
        if (bias) v = to_f32(from_f32<T>(v + bias[c]));
        xv.v[i] += gamma ? gamma[c] * v : v;
      }
      st_vec(x + 4 * q, xv);
    }
    return;
  }
  ColumnWalk col(d);
  for (long long e = col.first(); e < total; e += col.stride(), col.next()) {
    float v = to_f32(y[e]);
    if (bias) v = to_f32(from_f32<T>(v + bias[col.c]));
    x[e] += gamma ? gamma[col.c] * v : v;
  }
}

// x[r] += gamma * round_T(y[r] + bias) (the projection's bias, rounded to T as a separate
// bias pass would, then the residual add), then y_out[r] = LayerNorm(x[r]) in T: the residual and
// the next LayerNorm in one pass over the row. One block per row: the same pass one warp per
// row measured 359 µs a call on an H200 (plain B64 bf16), where this one is about 210 µs by an
// earlier run's profile (docs/gpu-runs/2026-11-27-h200.md, runs 7 and 8). Its sums
// run thread-strided over 256 threads, layernorm_'s lane-strided over 32, so the fused and the
// unfused paths round differently (both well inside the tests' tolerances).
// `bscale` [rows] (or null: 1) scales row r's bias: an EViT layer's fused row, projected after
// the pruning, carries S·b (see evit_bias_scale_f32).
template <class T>
__device__ void residual_ln_rows(float* __restrict__ x, const T* __restrict__ y, unsigned rows,
                                 unsigned d, const float* __restrict__ gamma,
                                 const float* __restrict__ bias, const float* __restrict__ bscale,
                                 const float* __restrict__ g, const float* __restrict__ b,
                                 float eps, T* __restrict__ out) {
  __shared__ float red[32];
  for (unsigned r = blockIdx.x; r < rows; r += gridDim.x) {
    float* xr = x + (i64)r * d;
    const T* yr = y + (i64)r * d;
    const float bs = bscale ? bscale[r] : 1.0f;
    float s = 0.0f;
    for (unsigned c = threadIdx.x; c < d; c += blockDim.x) {
      float v = to_f32(yr[c]);
      if (bias) v = to_f32(from_f32<T>(v + (bscale ? bias[c] * bs : bias[c])));
      const float nx = xr[c] + (gamma ? gamma[c] * v : v);
      xr[c] = nx;  // read back in ln_finish by this thread only
      s += nx;
    }
    ln_finish<T>(xr, s, d, g, b, eps, out + (i64)r * d, red);
  }
}

// Attention runs as batched GEMMs (cuBLAS on a GPU, bgemm_nt on the shim) around three small
// kernels: split the heads, softmax the score rows, merge the heads. The naive one-block-per-
// query kernel this replaces re-read K and V for every query (measured on an H200: 524 ms for
// the B64 EViT forward, against 19.5 ms for PyTorch).

// One row r of the scores S [rows, n] (f32; r = ((b * heads + h) * n + i)): p = softmax(s + log
// size) into P (T); the cls query's row (i = 0) also goes to cls_probs [B, heads, n] in f32.
// `sizes` [B, n] (ToMe's token sizes) or null. One block per row, grid-stride over rows.
template <class T>
__device__ void softmax_rows(const float* __restrict__ s, unsigned rows, unsigned n,
                             unsigned heads, T* __restrict__ p, float* __restrict__ cls_probs,
                             const float* __restrict__ sizes) {
  __shared__ float red[32];
  for (unsigned r = blockIdx.x; r < rows; r += gridDim.x) {
    const unsigned bh = r / n, i = r % n, b = bh / heads;
    const float* sr = s + (i64)r * n;
    const float* lz = sizes ? sizes + (i64)b * n : nullptr;
    float m = -__int_as_float(0x7f800000);
    for (unsigned t = threadIdx.x; t < n; t += blockDim.x)
      m = fmaxf(m, sr[t] + (lz ? logf(lz[t]) : 0.0f));
    m = block_max(m, red);
    float sum = 0.0f;
    for (unsigned t = threadIdx.x; t < n; t += blockDim.x)
      sum += expf(sr[t] + (lz ? logf(lz[t]) : 0.0f) - m);
    const float inv = 1.0f / block_sum(sum, red);
    for (unsigned t = threadIdx.x; t < n; t += blockDim.x) {
      const float v = expf(sr[t] + (lz ? logf(lz[t]) : 0.0f) - m) * inv;
      p[(i64)r * n + t] = from_f32<T>(v);
      if (i == 0 && cls_probs) cls_probs[(i64)bh * n + t] = v;
    }
  }
}

// y_z [m, n] = x_z [m, k] . w_z [n, k]^T for z = blockIdx.z (strides sx, sw, sy in elements),
// f32 accumulation, 16x16 tiles: the shim's (and a cuBLAS-less GPU's) batched GEMM.
template <class T, class O>
__device__ void bgemm_nt_tile(const T* __restrict__ x, unsigned m, unsigned k, i64 sx,
                              const T* __restrict__ w, unsigned n, i64 sw, O* __restrict__ y,
                              i64 sy) {
  __shared__ float xs[16][17];
  __shared__ float ws[16][17];
  const unsigned tx = threadIdx.x, ty = threadIdx.y;
  x += (i64)blockIdx.z * sx;
  w += (i64)blockIdx.z * sw;
  y += (i64)blockIdx.z * sy;
  const unsigned row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
  const unsigned wrow = blockIdx.x * 16 + ty;
  float acc = 0.0f;
  for (unsigned k0 = 0; k0 < k; k0 += 16) {
    xs[ty][tx] = (row < m && k0 + tx < k) ? to_f32(x[(i64)row * k + k0 + tx]) : 0.0f;
    ws[ty][tx] = (wrow < n && k0 + tx < k) ? to_f32(w[(i64)wrow * k + k0 + tx]) : 0.0f;
    __syncthreads();
    for (unsigned j = 0; j < 16; ++j) acc += xs[ty][j] * ws[tx][j];
    __syncthreads();
  }
  if (row < m && col < n) y[(i64)row * n + col] = from_f32<O>(acc);
}

}  // namespace clca

#define VIT_ENTRIES(T, sfx)                                                                       \
  extern "C" __global__ void layernorm_##sfx(const float* __restrict__ x, unsigned rows,          \
                                             unsigned d, long long xs, const float* __restrict__ g, \
                                             const float* __restrict__ b, float eps,              \
                                             T* __restrict__ y) {                                 \
    clca::layernorm_rows<T>(x, rows, d, xs, g, b, eps, y);                                        \
  }                                                                                               \
  CLCA_HOST_ENTRY(layernorm_##sfx)                                                                \
  /* y[r, c] = act(y[r, c] + bias[c]); act = GELU(erf) when gelu != 0. Grid-stride. */            \
  extern "C" __global__ void bias_act_##sfx(T* __restrict__ y, long long rows, unsigned n,        \
                                            const float* __restrict__ bias, unsigned act) {       \
    clca::bias_act_all<T>(y, rows, n, bias, act);                                                 \
  }                                                                                               \
  CLCA_HOST_ENTRY(bias_act_##sfx)                                                                 \
  /* x[r, c] += gamma[c] * round_T(y[r, c] + bias[c]) (gamma null: 1; bias null: none, else   \
     rounded to T as bias_act would have stored it). x is the f32 residual stream. */             \
  extern "C" __global__ void residual_##sfx(float* __restrict__ x, const T* __restrict__ y,       \
                                            long long rows, unsigned d,                           \
                                            const float* __restrict__ gamma,                      \
                                            const float* __restrict__ bias) {                     \
    clca::residual_all<T>(x, y, rows, d, gamma, bias);                                            \
  }                                                                                               \
  CLCA_HOST_ENTRY(residual_##sfx)                                                                 \
  /* residual_ then layernorm_ of the same rows in one pass (see residual_ln_rows). */            \
  extern "C" __global__ void residual_ln_##sfx(                                                   \
      float* __restrict__ x, const T* __restrict__ y, unsigned rows, unsigned d,                  \
      const float* __restrict__ gamma, const float* __restrict__ bias,                            \
      const float* __restrict__ bscale, const float* __restrict__ g, const float* __restrict__ b, \
      float eps, T* __restrict__ out) {                                                           \
    clca::residual_ln_rows<T>(x, y, rows, d, gamma, bias, bscale, g, b, eps, out);                \
  }                                                                                               \
  CLCA_HOST_ENTRY(residual_ln_##sfx)                                                              \
  /* qkv [B, n, 3, H, hd] -> q (times scale), k [B, H, n, hd] and vt [B, H, hd, n]: the     \
     operands of the batched score and output GEMMs. Grid-stride over qkv. */                   \
  extern "C" __global__ void attn_split_##sfx(const T* __restrict__ qkv, unsigned batch,          \
                                              unsigned n, unsigned heads, unsigned hd,            \
                                              float scale, T* __restrict__ q, T* __restrict__ k,  \
                                              T* __restrict__ vt) {                               \
    const unsigned d = heads * hd;                                                                \
    const long long total = (long long)batch * n * 3 * d;                                         \
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;               \
         e += (long long)gridDim.x * blockDim.x) {                                                \
      const unsigned c = (unsigned)(e % (3 * d));                                                 \
      const long long bt = e / (3 * d);                                                           \
      const unsigned t = (unsigned)(bt % n), b = (unsigned)(bt / n);                              \
      const unsigned which = c / d, h = (c % d) / hd, j = c % hd;                                 \
      const long long bh = (long long)b * heads + h;                                              \
      if (which == 0)                                                                             \
        q[(bh * n + t) * hd + j] = clca::from_f32<T>(clca::to_f32(qkv[e]) * scale);               \
      else if (which == 1)                                                                        \
        k[(bh * n + t) * hd + j] = qkv[e];                                                        \
      else                                                                                        \
        vt[(bh * hd + j) * n + t] = qkv[e];                                                       \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(attn_split_##sfx)                                                               \
  /* P = softmax(S + log sizes) by rows, cls rows to cls_probs (see softmax_rows). */             \
  extern "C" __global__ void attn_softmax_##sfx(const float* __restrict__ s, unsigned rows,       \
                                                unsigned n, unsigned heads, T* __restrict__ p,    \
                                                float* __restrict__ cls_probs,                    \
                                                const float* __restrict__ sizes) {                \
    clca::softmax_rows<T>(s, rows, n, heads, p, cls_probs, sizes);                                \
  }                                                                                               \
  CLCA_HOST_ENTRY(attn_softmax_##sfx)                                                             \
  /* o [B, H, n, hd] -> out [B, n, H * hd] (heads concatenated in order). Grid-stride. */         \
  extern "C" __global__ void attn_merge_##sfx(const T* __restrict__ o, unsigned batch,            \
                                              unsigned n, unsigned heads, unsigned hd,            \
                                              T* __restrict__ out) {                              \
    const unsigned d = heads * hd;                                                                \
    const long long total = (long long)batch * n * d;                                             \
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;               \
         e += (long long)gridDim.x * blockDim.x) {                                                \
      const unsigned c = (unsigned)(e % d);                                                       \
      const long long bt = e / d;                                                                 \
      const unsigned t = (unsigned)(bt % n), b = (unsigned)(bt / n);                              \
      out[e] = o[(((long long)b * heads + c / hd) * n + t) * hd + c % hd];                        \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(attn_merge_##sfx)                                                               \
  /* Batched y = x . w^T (see bgemm_nt_tile); grid (ceil(n/16), ceil(m/16), batch), block       \
     (16, 16). The _f32out form writes f32 (the attention scores). */                             \
  extern "C" __global__ void __launch_bounds__(256) bgemm_nt_##sfx(                               \
      const T* __restrict__ x, unsigned m, unsigned k, long long sx, const T* __restrict__ w,     \
      unsigned n, long long sw, T* __restrict__ y, long long sy) {                                \
    clca::bgemm_nt_tile<T, T>(x, m, k, sx, w, n, sw, y, sy);                                      \
  }                                                                                               \
  CLCA_HOST_ENTRY(bgemm_nt_##sfx)                                                                 \
  extern "C" __global__ void __launch_bounds__(256) bgemm_nt_f32out_##sfx(                        \
      const T* __restrict__ x, unsigned m, unsigned k, long long sx, const T* __restrict__ w,     \
      unsigned n, long long sw, float* __restrict__ y, long long sy) {                            \
    clca::bgemm_nt_tile<T, float>(x, m, k, sx, w, n, sw, y, sy);                                  \
  }                                                                                               \
  CLCA_HOST_ENTRY(bgemm_nt_f32out_##sfx)                                                          \
  /* im2col of img [B, C, S, S] (f32) into out [B*P, C*p*p] (T), (c, ky, kx) order. */            \
  /* One block per patch row (grid-stride), threads over its chans*p*p columns. */                \
  extern "C" __global__ void patch_im2col_##sfx(const float* __restrict__ img, unsigned batch,    \
                                                unsigned chans, unsigned size, unsigned p,        \
                                                T* __restrict__ out) {                            \
    const unsigned gw = size / p, np = gw * gw, kp = chans * p * p;                               \
    const long long rows = (long long)batch * np;                                                 \
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {                              \
      const unsigned b = (unsigned)(row / np), t = (unsigned)(row % np);                          \
      const unsigned y0 = (t / gw) * p, x0 = (t % gw) * p;                                        \
      for (unsigned col = threadIdx.x; col < kp; col += blockDim.x) {                             \
        const unsigned c = col / (p * p), ky = (col / p) % p, kx = col % p;                       \
        out[row * kp + col] = clca::from_f32<T>(                                                  \
            img[(((long long)b * chans + c) * size + y0 + ky) * size + x0 + kx]);                 \
      }                                                                                           \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(patch_im2col_##sfx)                                                             \
  /* x [B, 1+P+C, D] (f32) = [cls, patch tokens, clr] + pos (pos over all rows, or over the      \
     patches only with no_embed_class). Grid-stride. */                                           \
  extern "C" __global__ void embed_##sfx(const T* __restrict__ patches, const float* __restrict__ cls, \
                                         const float* __restrict__ clr, const float* __restrict__ pos, \
                                         unsigned no_embed_class, unsigned batch, unsigned np,    \
                                         unsigned nclr, unsigned d, float* __restrict__ x) {      \
    const unsigned n0 = 1 + np + nclr;                                                            \
    const long long total = (long long)batch * n0 * d;                                            \
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;               \
         e += (long long)gridDim.x * blockDim.x) {                                                \
      const unsigned c = (unsigned)(e % d);                                                       \
      const unsigned t = (unsigned)((e / d) % n0);                                                \
      const unsigned b = (unsigned)(e / ((long long)d * n0));                                     \
      float v;                                                                                    \
      if (t == 0) v = cls[c];                                                                     \
      else if (t <= np) v = clca::to_f32(patches[((long long)b * np + t - 1) * d + c]);           \
      else v = clr[(long long)(t - 1 - np) * d + c];                                              \
      if (!no_embed_class) v += pos[(long long)t * d + c];                                        \
      else if (t >= 1 && t <= np) v += pos[(long long)(t - 1) * d + c];                           \
      x[e] = v;                                                                                   \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(embed_##sfx)                                                                    \
  /* taps[b, c, f] = x[b, 0, c] for the tap index f of F. */                                      \
  extern "C" __global__ void tap_cls_##sfx(const float* __restrict__ x, unsigned batch,           \
                                           unsigned n, unsigned d, unsigned f, unsigned nf,       \
                                           T* __restrict__ taps) {                                \
    const unsigned b = blockIdx.y;                                                                \
    for (unsigned c = blockIdx.x * blockDim.x + threadIdx.x; c < d; c += gridDim.x * blockDim.x) \
      if (b < batch) taps[((long long)b * d + c) * nf + f] = clca::from_f32<T>(x[(long long)b * n * d + c]); \
  }                                                                                               \
  CLCA_HOST_ENTRY(tap_cls_##sfx)
CLCA_FOR_EACH_FLOAT(VIT_ENTRIES)
