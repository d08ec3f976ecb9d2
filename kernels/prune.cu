// Top-K and EViT pruning (SPEC §4.2): gather [cls, kept...] and, for EViT, append the fused
// token sum over dropped t of score[t] * x[1 + t] (raw scores, not renormalized).
// Index convention: idx/compl index the non-cls tokens, i.e. token 1 + idx of x.
// Indices are trusted (they come from the selection kernels); one out of range leaves its
// output row unwritten instead of reading out of bounds.
#include "common.cuh"

namespace clca {

// One row of c elements. Rows whose bytes are a multiple of 16 go 16 bytes per thread (the
// buffers start 256-byte aligned, so every such row is 16-byte aligned too).
template <class T>
__device__ __forceinline__ void copy_row(const T* __restrict__ src, T* __restrict__ dst, u32 c) {
  if ((c * sizeof(T)) % 16 == 0) {
    const u32 nv = (u32)(c * sizeof(T) / 16);
    for (u32 i = threadIdx.x; i < nv; i += blockDim.x)
      st_v16(reinterpret_cast<unsigned char*>(dst) + 16 * (i64)i,
             ld_v16(reinterpret_cast<const unsigned char*>(src) + 16 * (i64)i));
  } else {
    for (u32 i = threadIdx.x; i < c; i += blockDim.x) dst[i] = src[i];
  }
}

// grid (1 + k, batch): output token j of sample b.
template <class T>
__device__ void gather_tokens(const T* __restrict__ x, u32 n, u32 c, const u32* __restrict__ idx,
                              u32 k, T* __restrict__ out, u32 out_tokens) {
  const u32 b = blockIdx.y, j = blockIdx.x;
  if (j > k) return;
  u32 src = 0;
  if (j > 0) {
    src = 1 + idx[(i64)b * k + j - 1];
    if (src >= n) return;
  }
  copy_row(x + ((i64)b * n + src) * c, out + ((i64)b * out_tokens + j) * c, c);
}

// The fused row of EViT for channels [c0, c0 + blockDim.x): f32 sum in ascending token order.
// The sum is a chain of m adds; loading eight terms ahead keeps eight memory latencies in
// flight per thread instead of one (the one-at-a-time loop measured 237 GiB/s at B64 on an
// H200), and the adds still happen in token order.
template <class T>
__device__ void evit_fuse(const T* __restrict__ x, u32 n, u32 c, const u32* __restrict__ compl_idx,
                          u32 m, const float* __restrict__ scores, T* __restrict__ fused, u32 c0) {
  constexpr u32 AHEAD = 8;
  const u32 b = blockIdx.y;
  const u32 ch = c0 + threadIdx.x;
  if (ch >= c) return;
  const u32* cb = compl_idx + (i64)b * m;
  const float* sb = scores + (i64)b * (n - 1);
  const T* xb = x + (i64)b * n * c;
  float acc = 0.0f;
  u32 j = 0;
  for (; j + AHEAD <= m; j += AHEAD) {
    float s[AHEAD], v[AHEAD];
    bool ok[AHEAD];
    CLCA_UNROLL
    for (u32 u = 0; u < AHEAD; ++u) {
      const u32 t = cb[j + u];
      ok[u] = t + 1 < n;
      s[u] = ok[u] ? sb[t] : 0.0f;
      v[u] = ok[u] ? to_f32(xb[(i64)(t + 1) * c + ch]) : 0.0f;
    }
    CLCA_UNROLL
    for (u32 u = 0; u < AHEAD; ++u)
      if (ok[u]) acc += s[u] * v[u];
  }
  for (; j < m; ++j) {
    const u32 t = cb[j];
    if (t + 1 >= n) continue;
    acc += sb[t] * to_f32(xb[(i64)(t + 1) * c + ch]);
  }
  fused[ch] = from_f32<T>(acc);
}

}  // namespace clca

#define PRUNE_ENTRIES(T, sfx)                                                                     \
  /* grid (1 + k, batch) */                                                                       \
  extern "C" __global__ void topk_prune_##sfx(const T* __restrict__ x, unsigned batch, unsigned n, \
                                              unsigned c, const unsigned* __restrict__ idx,       \
                                              unsigned k, T* __restrict__ out) {                  \
    if (blockIdx.y >= batch) return;                                                              \
    clca::gather_tokens<T>(x, n, c, idx, k, out, 1 + k);                                          \
  }                                                                                               \
  CLCA_HOST_ENTRY(topk_prune_##sfx)                                                               \
  /* grid (1 + k + ceil(c / blockDim.x), batch): gathers, then the fused row in channel chunks */ \
  extern "C" __global__ void evit_prune_##sfx(                                                    \
      const T* __restrict__ x, unsigned batch, unsigned n, unsigned c,                            \
      const unsigned* __restrict__ idx, unsigned k, const unsigned* __restrict__ compl_idx,       \
      const float* __restrict__ scores, T* __restrict__ out) {                                    \
    if (blockIdx.y >= batch) return;                                                              \
    if (blockIdx.x <= k) {                                                                        \
      clca::gather_tokens<T>(x, n, c, idx, k, out, 2 + k);                                        \
    } else {                                                                                      \
      const unsigned c0 = (blockIdx.x - (k + 1)) * blockDim.x;                                    \
      T* fused = out + ((long long)blockIdx.y * (2 + k) + 1 + k) * c;                             \
      clca::evit_fuse<T>(x, n, c, compl_idx, n - 1 - k, scores, fused, c0);                      \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(evit_prune_##sfx)
CLCA_FOR_EACH_FLOAT(PRUNE_ENTRIES)
