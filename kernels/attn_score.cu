// CLS-attention scores: s[b, t-1] = mean over heads of softmax(q_cls . k^T * scale)[t], t >= 1
// (SPEC §4.2 step 2), from materialized probabilities or fused from q_cls and K, and the fused
// "scores -> top-k" selection that the pruning layers use (one launch, one block per sample).
#include "topk.cuh"

namespace clca {

// Mean over heads of probs[b, h, 0, t] for t = 1..n-1, summed in head order then divided by H
// (torch's mean). Thread-strided over t; `out` is one f32 row of n-1.
template <class T>
__device__ __forceinline__ void scores_from_probs_row(const T* __restrict__ probs, u32 heads, u32 n,
                                                      i64 head_stride, float* __restrict__ out) {
  for (u32 t = 1 + threadIdx.x; t < n; t += blockDim.x) {
    float acc = 0.0f;
    for (u32 h = 0; h < heads; ++h) acc += to_f32(probs[h * head_stride + t]);
    out[t - 1] = acc / (float)heads;
  }
}

// The same scores without forming N x N: per head, logits over all n keys (cls included),
// softmax, and the mean over heads. q is scaled before the dot product, as the reference does.
// Each thread owns a fixed set of keys, so the per-key accumulation needs no atomics.
template <class T>
__device__ void scores_from_qk_row(const T* __restrict__ q, const T* __restrict__ k, u32 heads, u32 n,
                                   u32 hd, float scale, float* __restrict__ out) {
  __shared__ float qs[CLCA_MAX_HEAD_DIM];
  __shared__ float red[32];
  for (u32 t = 1 + threadIdx.x; t < n; t += blockDim.x) out[t - 1] = 0.0f;
  for (u32 h = 0; h < heads; ++h) {
    __syncthreads();
    for (u32 d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = to_f32(q[(i64)h * hd + d]) * scale;
    __syncthreads();
    const T* kh = k + (i64)h * n * hd;
    float m = -__int_as_float(0x7f800000);
    for (u32 t = threadIdx.x; t < n; t += blockDim.x) {
      float l = 0.0f;
      for (u32 d = 0; d < hd; ++d) l += qs[d] * to_f32(kh[(i64)t * hd + d]);
      m = fmaxf(m, l);
    }
    m = block_max(m, red);
    float s = 0.0f;
    for (u32 t = threadIdx.x; t < n; t += blockDim.x) {
      float l = 0.0f;
      for (u32 d = 0; d < hd; ++d) l += qs[d] * to_f32(kh[(i64)t * hd + d]);
      s += expf(l - m);
    }
    s = block_sum(s, red);
    for (u32 t = 1 + threadIdx.x; t < n; t += blockDim.x) {
      float l = 0.0f;
      for (u32 d = 0; d < hd; ++d) l += qs[d] * to_f32(kh[(i64)t * hd + d]);
      out[t - 1] += expf(l - m) / s;
    }
  }
  for (u32 t = 1 + threadIdx.x; t < n; t += blockDim.x) out[t - 1] /= (float)heads;
}

}  // namespace clca

#define ATTN_SCORE_ENTRIES(T, sfx)                                                                \
  /* grid (ceil((n-1)/threads), batch): one thread per key */                                     \
  extern "C" __global__ void cls_attn_probs_##sfx(const T* __restrict__ probs, unsigned batch,     \
                                                  unsigned heads, unsigned n,                     \
                                                  float* __restrict__ scores) {                   \
    const unsigned b = blockIdx.y;                                                                \
    const unsigned t = 1 + blockIdx.x * blockDim.x + threadIdx.x;                                 \
    if (b >= batch || t >= n) return;                                                             \
    const long long hs = (long long)n * n;                                                        \
    const T* p = probs + (long long)b * heads * hs;                                               \
    float acc = 0.0f;                                                                             \
    for (unsigned h = 0; h < heads; ++h) acc += clca::to_f32(p[h * hs + t]);                      \
    scores[(long long)b * (n - 1) + t - 1] = acc / (float)heads;                                  \
  }                                                                                               \
  CLCA_HOST_ENTRY(cls_attn_probs_##sfx)                                                           \
  /* grid (batch): one block per sample */                                                        \
  extern "C" __global__ void __launch_bounds__(CLCA_TOPK_THREADS, 4) cls_attn_qk_##sfx(            \
      const T* __restrict__ q, const T* __restrict__ k, unsigned batch, unsigned heads,           \
      unsigned n, unsigned hd, float scale, float* __restrict__ scores) {                         \
    for (unsigned b = blockIdx.x; b < batch; b += gridDim.x)                                      \
      clca::scores_from_qk_row<T>(q + (long long)b * heads * hd, k + (long long)b * heads * n * hd, \
                                  heads, n, hd, scale, scores + (long long)b * (n - 1));          \
  }                                                                                               \
  CLCA_HOST_ENTRY(cls_attn_qk_##sfx)                                                              \
  /* fused: scores -> top-k of n-1 keys, grid (batch) */                                          \
  extern "C" __global__ void __launch_bounds__(CLCA_TOPK_THREADS) select_from_probs_##sfx(        \
      const T* __restrict__ probs, unsigned batch, unsigned heads, unsigned n, unsigned k,        \
      float* __restrict__ scores, unsigned* __restrict__ idx, unsigned* __restrict__ compl_idx) { \
    for (unsigned b = blockIdx.x; b < batch; b += gridDim.x) {                                    \
      float* s = scores + (long long)b * (n - 1);                                                 \
      clca::scores_from_probs_row<T>(probs + (long long)b * heads * n * n, heads, n, (long long)n * n, s);          \
      __syncthreads();                                                                            \
      clca::topk_row<float>(s, n - 1, k, idx + (long long)b * k,                                  \
                            compl_idx + (long long)b * (n - 1 - k));                              \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(select_from_probs_##sfx)                                                        \
  extern "C" __global__ void __launch_bounds__(CLCA_TOPK_THREADS) select_from_qk_##sfx(           \
      const T* __restrict__ q, const T* __restrict__ kk, unsigned batch, unsigned heads,          \
      unsigned n, unsigned hd, float scale, unsigned k, float* __restrict__ scores,               \
      unsigned* __restrict__ idx, unsigned* __restrict__ compl_idx) {                             \
    for (unsigned b = blockIdx.x; b < batch; b += gridDim.x) {                                    \
      float* s = scores + (long long)b * (n - 1);                                                 \
      clca::scores_from_qk_row<T>(q + (long long)b * heads * hd,                                  \
                                  kk + (long long)b * heads * n * hd, heads, n, hd, scale, s);    \
      __syncthreads();                                                                            \
      clca::topk_row<float>(s, n - 1, k, idx + (long long)b * k,                                  \
                            compl_idx + (long long)b * (n - 1 - k));                              \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(select_from_qk_##sfx)
CLCA_FOR_EACH_FLOAT(ATTN_SCORE_ENTRIES)

// The forward's selection: cls-query probabilities [B, H, n] (f32, written by the attention
// kernel) -> scores -> top-k, one block per sample. f32 only.
extern "C" __global__ void __launch_bounds__(CLCA_TOPK_THREADS) select_from_cls_rows_f32(
    const float* __restrict__ cls_probs, unsigned batch, unsigned heads, unsigned n, unsigned k,
    float* __restrict__ scores, unsigned* __restrict__ idx, unsigned* __restrict__ compl_idx) {
  for (unsigned b = blockIdx.x; b < batch; b += gridDim.x) {
    float* s = scores + (long long)b * (n - 1);
    clca::scores_from_probs_row<float>(cls_probs + (long long)b * heads * n, heads, n, n, s);
    __syncthreads();
    clca::topk_row<float>(s, n - 1, k, idx + (long long)b * k, compl_idx + (long long)b * (n - 1 - k));
  }
}
CLCA_HOST_ENTRY(select_from_cls_rows_f32)
