// Cross-layer token cache (SPEC §2.3): take the carriers of one block into a preallocated cache
// and recover the cache into the tail of the sequence.
// Layouts: x is [batch, x_cap, d] with the first `n` tokens live; the cache is
// [batch, cache_cap, d]. Capacities are planned up front (src/ops/token_cache.rs).
#include "common.cuh"

#define CACHE_ENTRIES(T, sfx)                                                                     \
  /* grid (ceil(d / blockDim.x), batch). Writes [GAP (if gap), x[n-num_clr .. n)] at `slot`.      \
     GAP = mean of x[pool_lo .. pool_hi), an f32 sum in token order divided by the count. */      \
  extern "C" __global__ void cache_take_##sfx(                                                    \
      const T* __restrict__ x, unsigned batch, unsigned x_cap, unsigned n, unsigned d,            \
      unsigned pool_lo, unsigned pool_hi, unsigned gap, unsigned num_clr, T* __restrict__ cache,  \
      unsigned cache_cap, unsigned slot) {                                                        \
    const unsigned b = blockIdx.y, ch = blockIdx.x * blockDim.x + threadIdx.x;                    \
    if (b >= batch || ch >= d) return;                                                            \
    const T* xb = x + (long long)b * x_cap * d;                                                   \
    T* cb = cache + (long long)b * cache_cap * d;                                                 \
    unsigned s = slot;                                                                            \
    if (gap) {                                                                                    \
      float acc = 0.0f;                                                                           \
      for (unsigned t = pool_lo; t < pool_hi; ++t) acc += clca::to_f32(xb[(long long)t * d + ch]); \
      cb[(long long)s * d + ch] = clca::from_f32<T>(acc / (float)(pool_hi - pool_lo));            \
      ++s;                                                                                        \
    }                                                                                             \
    for (unsigned j = 0; j < num_clr; ++j)                                                        \
      cb[(long long)(s + j) * d + ch] = xb[(long long)(n - num_clr + j) * d + ch];                \
  }                                                                                               \
  CLCA_HOST_ENTRY(cache_take_##sfx)                                                               \
  /* grid (count, batch): dst[b, dst_off + t] = src[b, src_off + t] for t < count. */             \
  extern "C" __global__ void tokens_copy_##sfx(                                                   \
      const T* __restrict__ src, unsigned src_cap, unsigned src_off, T* __restrict__ dst,         \
      unsigned dst_cap, unsigned dst_off, unsigned batch, unsigned count, unsigned d) {           \
    const unsigned b = blockIdx.y, t = blockIdx.x;                                                \
    if (b >= batch || t >= count) return;                                                         \
    const T* s = src + ((long long)b * src_cap + src_off + t) * d;                                \
    T* o = dst + ((long long)b * dst_cap + dst_off + t) * d;                                      \
    for (unsigned i = threadIdx.x; i < d; i += blockDim.x) o[i] = s[i];                           \
  }                                                                                               \
  CLCA_HOST_ENTRY(tokens_copy_##sfx)                                                              \
  /* grid (count, batch): dst[b, dst_off + t] = src[b, idx[b * idx_stride + t]] for t < count;   \
     an index ≥ src_cap writes nothing (ATS's sampled ids are gathered with it). */               \
  extern "C" __global__ void tokens_gather_##sfx(                                                 \
      const T* __restrict__ src, unsigned src_cap, const unsigned* __restrict__ idx,              \
      unsigned idx_stride, T* __restrict__ dst, unsigned dst_cap, unsigned dst_off,               \
      unsigned batch, unsigned count, unsigned d) {                                               \
    const unsigned b = blockIdx.y, t = blockIdx.x;                                                \
    if (b >= batch || t >= count) return;                                                         \
    const unsigned from = idx[(long long)b * idx_stride + t];                                     \
    if (from >= src_cap) return;                                                                  \
    const T* s = src + ((long long)b * src_cap + from) * d;                                       \
    T* o = dst + ((long long)b * dst_cap + dst_off + t) * d;                                      \
    for (unsigned i = threadIdx.x; i < d; i += blockDim.x) o[i] = s[i];                           \
  }                                                                                               \
  CLCA_HOST_ENTRY(tokens_gather_##sfx)
CLCA_FOR_EACH_FLOAT(CACHE_ENTRIES)
