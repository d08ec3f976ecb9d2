// The ViT primitives of the device forward. Precision policy (the authors' autocast): the
// residual stream x is f32; GEMM inputs/outputs, attention and the CLA head run in T
// (f32/f16/bf16) with f32 accumulation.
#include "common.cuh"

namespace clca {

// LayerNorm of row r of x (f32, row stride xs) into y[r] (T, compact). One block per row.
template <class T>
__device__ void layernorm_rows(const float* __restrict__ x, unsigned rows, unsigned d, i64 xs,
                               const float* __restrict__ g, const float* __restrict__ b, float eps,
                               T* __restrict__ y) {
  __shared__ float red[32];
  for (unsigned r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + (i64)r * xs;
    float s = 0.0f;
    for (unsigned c = threadIdx.x; c < d; c += blockDim.x) s += xr[c];
    const float mean = block_sum(s, red) / (float)d;
    float q = 0.0f;
    for (unsigned c = threadIdx.x; c < d; c += blockDim.x) {
      const float e = xr[c] - mean;
      q += e * e;
    }
    const float rstd = rsqrtf(block_sum(q, red) / (float)d + eps);
    for (unsigned c = threadIdx.x; c < d; c += blockDim.x)
      y[(i64)r * d + c] = from_f32<T>((xr[c] - mean) * rstd * g[c] + b[c]);
  }
}

// softmax((q_i * scale) . k_t + log size_t) over the n keys of head h, then out_i = sum_t p_t v_t.
// The log-size term is ToMe's proportional attention (SPEC §4.3), added after the scaled product
// and before the softmax; `sizes` [B, n] f32, or null for none.
// One block per (query i, head h, sample b); the probabilities live in dynamic shared memory.
template <class T>
__device__ void attention_row(const T* __restrict__ qkv, unsigned n, unsigned heads, unsigned hd,
                              float scale, T* __restrict__ out, float* __restrict__ cls_probs,
                              const float* __restrict__ sizes) {
  CLCA_DYN_SMEM(float, smem);
  float* qs = smem;        // hd
  float* p = smem + hd;    // n
  __shared__ float red[32];
  const unsigned i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const unsigned d = heads * hd;
  const T* base = qkv + (i64)b * n * 3 * d;
  for (unsigned j = threadIdx.x; j < hd; j += blockDim.x)
    qs[j] = to_f32(base[(i64)i * 3 * d + h * hd + j]) * scale;
  __syncthreads();
  float m = -__int_as_float(0x7f800000);
  for (unsigned t = threadIdx.x; t < n; t += blockDim.x) {
    const T* kt = base + (i64)t * 3 * d + d + h * hd;
    float l = 0.0f;
    for (unsigned j = 0; j < hd; ++j) l += qs[j] * to_f32(kt[j]);
    if (sizes) l += logf(sizes[(i64)b * n + t]);
    p[t] = l;
    m = fmaxf(m, l);
  }
  m = block_max(m, red);
  float s = 0.0f;
  for (unsigned t = threadIdx.x; t < n; t += blockDim.x) {
    const float e = expf(p[t] - m);
    p[t] = e;
    s += e;
  }
  s = block_sum(s, red);
  const float inv = 1.0f / s;
  for (unsigned t = threadIdx.x; t < n; t += blockDim.x) {
    p[t] *= inv;
    if (i == 0 && cls_probs) cls_probs[((i64)b * heads + h) * n + t] = p[t];
  }
  __syncthreads();
  for (unsigned j = threadIdx.x; j < hd; j += blockDim.x) {
    float acc = 0.0f;
    for (unsigned t = 0; t < n; ++t) acc += p[t] * to_f32(base[(i64)t * 3 * d + 2 * d + h * hd + j]);
    out[((i64)b * n + i) * d + h * hd + j] = from_f32<T>(acc);
  }
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
    /* act: 0 none, 1 exact GELU, 2 exp (DPC-KNN's token weights). */                             \
    const long long total = rows * (long long)n;                                                  \
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;               \
         e += (long long)gridDim.x * blockDim.x) {                                                \
      float v = clca::to_f32(y[e]) + (bias ? bias[e % n] : 0.0f);                                 \
      if (act == 1) v = clca::gelu_erf(v);                                                        \
      else if (act == 2) v = expf(v);                                                             \
      y[e] = clca::from_f32<T>(v);                                                                \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(bias_act_##sfx)                                                                 \
  /* x[r, c] += gamma[c] * y[r, c] (gamma null: 1). x is the f32 residual stream. */              \
  extern "C" __global__ void residual_##sfx(float* __restrict__ x, const T* __restrict__ y,       \
                                            long long rows, unsigned d,                           \
                                            const float* __restrict__ gamma) {                    \
    const long long total = rows * (long long)d;                                                  \
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;               \
         e += (long long)gridDim.x * blockDim.x) {                                                \
      const float v = clca::to_f32(y[e]);                                                         \
      x[e] += gamma ? gamma[e % d] * v : v;                                                       \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(residual_##sfx)                                                                 \
  /* grid (n, heads, batch); dynamic smem (hd + n) floats; qkv [B, n, 3, H, hd]; sizes [B, n]   \
     (ToMe's token sizes) or null */                                                              \
  extern "C" __global__ void attention_##sfx(const T* __restrict__ qkv, unsigned n,               \
                                             unsigned heads, unsigned hd, float scale,            \
                                             T* __restrict__ out, float* __restrict__ cls_probs,  \
                                             const float* __restrict__ sizes) {                   \
    clca::attention_row<T>(qkv, n, heads, hd, scale, out, cls_probs, sizes);                      \
  }                                                                                               \
  CLCA_HOST_ENTRY(attention_##sfx)                                                                \
  /* im2col of img [B, C, S, S] (f32) into out [B*P, C*p*p] (T), (c, ky, kx) order. */            \
  extern "C" __global__ void patch_im2col_##sfx(const float* __restrict__ img, unsigned batch,    \
                                                unsigned chans, unsigned size, unsigned p,        \
                                                T* __restrict__ out) {                            \
    const unsigned gw = size / p, np = gw * gw, kp = chans * p * p;                               \
    const long long total = (long long)batch * np * kp;                                           \
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;               \
         e += (long long)gridDim.x * blockDim.x) {                                                \
      const unsigned col = (unsigned)(e % kp);                                                    \
      const long long row = e / kp;                                                               \
      const unsigned b = (unsigned)(row / np), t = (unsigned)(row % np);                          \
      const unsigned c = col / (p * p), ky = (col / p) % p, kx = col % p;                         \
      const unsigned y = (t / gw) * p + ky, x = (t % gw) * p + kx;                                \
      out[e] = clca::from_f32<T>(img[(((long long)b * chans + c) * size + y) * size + x]);        \
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
