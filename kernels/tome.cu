// ToMe bipartite soft matching (SPEC §4.3), in four launches plus a sizes helper:
//   tome_metric  qkv [B, n, 3, H, hd] (T)       -> unit metric [B, n, hd] (f32): k averaged
//                                                  over heads, divided by its L2 norm;
//   tome_match   metric                         -> node_max, node_idx [B, na]: best odd-position
//                                                  (b) token of every even-position (a) token;
//   tome_order   node_max, node_idx, r          -> src [B, r] (merge order), unm [B, na - r]
//                                                  (ascending), grouped [B, r] and offsets
//                                                  [B, nb + 1]: the sources of each b token;
//   tome_merge   x (T), sizes, unm, grouped,    -> out [B, n - r, C] (T), out_sizes [B, n - r]:
//                offsets                           [unmerged a, all b], size-weighted means;
//   tome_sizes   sizes [B, n] (or null = ones)  -> [B, n + r] with the r appended sizes 1
//                                                  (the cache's recovered tokens).
// na = ceil(n / 2), nb = floor(n / 2); a token i is token 2i, b token j is token 2j + 1.
//
// Every product and sum that feeds a selection or an output uses __fmul_rn / __fadd_rn, so NVRTC
// cannot contract it into an FMA: the GPU then rounds exactly as the CPU reference
// (src/cpu/tome.rs), term by term in the same order, and the selections agree bit for bit.
// No float atomics; each output is written by one thread, in a fixed order.
#include "topk.cuh"

// Even-position tokens per block of tome_match; the block reads each odd token once per tile.
#define CLCA_TOME_TILE 8
#define CLCA_TOME_THREADS 256

namespace clca {

// Keeps the better of two (value, index) candidates: the larger value, the lower index on equal
// values (-0 == +0). Values are never NaN here (a NaN similarity is never a candidate).
__device__ __forceinline__ void best_of(float& v, u32& i, float v2, u32 i2) {
  if (v2 > v || (v2 == v && i2 < i)) {
    v = v2;
    i = i2;
  }
}

// Unit metric of rows [r] of qkv: m = (sum_h k_h) / H, then m / sqrt(sum_j m_j^2) (the sums in
// head and channel order). One block per row, grid-stride.
template <class T>
__device__ void metric_rows(const T* __restrict__ qkv, u32 rows, u32 heads, u32 hd,
                            float* __restrict__ metric) {
  __shared__ float m[CLCA_MAX_HEAD_DIM];
  __shared__ float s_norm;
  const i64 d = (i64)heads * hd;
  for (u32 r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* k = qkv + (i64)r * 3 * d + d;
    for (u32 j = threadIdx.x; j < hd; j += blockDim.x) {
      float acc = 0.0f;
      for (u32 h = 0; h < heads; ++h) acc = __fadd_rn(acc, to_f32(k[(i64)h * hd + j]));
      m[j] = acc / (float)heads;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float q = 0.0f;
      for (u32 j = 0; j < hd; ++j) q = __fadd_rn(q, __fmul_rn(m[j], m[j]));
      s_norm = sqrtf(q);
    }
    __syncthreads();
    const float norm = s_norm;
    for (u32 j = threadIdx.x; j < hd; j += blockDim.x) metric[(i64)r * hd + j] = m[j] / norm;
    __syncthreads();  // m and s_norm are rewritten for the next row
  }
}

// Best b token of a tokens [a0, a0 + TILE) of one sample. The cosine similarity is the dot
// product of the unit metrics in channel order; the best is the largest (first index on ties);
// NaN never wins; a token with no candidate above -inf (and a[0] = cls) gets (-inf, 0).
__device__ void match_tile(const float* __restrict__ metric, u32 n, u32 hd, u32 a0,
                           float* __restrict__ node_max, u32* __restrict__ node_idx) {
  __shared__ float as[CLCA_TOME_TILE][CLCA_MAX_HEAD_DIM];
  __shared__ float red_v[CLCA_TOME_TILE][32];
  __shared__ u32 red_i[CLCA_TOME_TILE][32];
  const u32 na = (n + 1) / 2, nb = n / 2;
  const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (u32 e = tid; e < CLCA_TOME_TILE * hd; e += blockDim.x) {
    const u32 t = e / hd, d = e % hd, i = a0 + t;
    as[t][d] = i < na ? metric[(i64)2 * i * hd + d] : 0.0f;
  }
  __syncthreads();
  const float ninf = -__int_as_float(0x7f800000);
  float bv[CLCA_TOME_TILE];
  u32 bi[CLCA_TOME_TILE];
CLCA_UNROLL
  for (u32 t = 0; t < CLCA_TOME_TILE; ++t) {
    bv[t] = ninf;
    bi[t] = 0xffffffffu;
  }
  for (u32 j = tid; j < nb; j += blockDim.x) {
    const float* bj = metric + (i64)(2 * j + 1) * hd;
    float s[CLCA_TOME_TILE];
CLCA_UNROLL
    for (u32 t = 0; t < CLCA_TOME_TILE; ++t) s[t] = 0.0f;
    for (u32 d = 0; d < hd; ++d) {
      const float q = bj[d];
CLCA_UNROLL
      for (u32 t = 0; t < CLCA_TOME_TILE; ++t) s[t] = __fadd_rn(s[t], __fmul_rn(as[t][d], q));
    }
    // j ascending within a thread: a strict > keeps the first of equal values.
CLCA_UNROLL
    for (u32 t = 0; t < CLCA_TOME_TILE; ++t)
      if (s[t] > bv[t]) {
        bv[t] = s[t];
        bi[t] = j;
      }
  }
CLCA_UNROLL
  for (u32 t = 0; t < CLCA_TOME_TILE; ++t) {
    for (int o = 16; o > 0; o >>= 1) {
      const float v2 = __shfl_xor_sync(0xffffffffu, bv[t], o);
      const u32 i2 = __shfl_xor_sync(0xffffffffu, bi[t], o);
      best_of(bv[t], bi[t], v2, i2);
    }
    if (lane == 0) {
      red_v[t][warp] = bv[t];
      red_i[t][warp] = bi[t];
    }
  }
  __syncthreads();
  if (warp == 0) {
    const u32 nw = blockDim.x >> 5;
    for (u32 t = 0; t < CLCA_TOME_TILE; ++t) {
      float v = lane < nw ? red_v[t][lane] : ninf;
      u32 i = lane < nw ? red_i[t][lane] : 0xffffffffu;
      for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        const u32 i2 = __shfl_xor_sync(0xffffffffu, i, o);
        best_of(v, i, v2, i2);
      }
      const u32 a = a0 + t;
      if (lane == 0 && a < na) {
        const bool none = a == 0 || i == 0xffffffffu;
        node_max[a] = none ? ninf : v;
        node_idx[a] = none ? 0u : i;
      }
    }
  }
}

// The merge plan of one sample (one block): the r a tokens with the largest node_max are the
// sources, in descending node_max with ties by lower index (the top-k contract of topk.cuh, over
// a[1..na) so cls is never a source); the rest (cls first) unmerged, ascending. Then the sources
// grouped by destination b token (ascending), merge order kept within a group (a stable counting
// sort by rank), and offsets[j] = the first source of b token j (offsets[nb] = r).
__device__ void order_row(const float* __restrict__ node_max, const u32* __restrict__ node_idx,
                          u32 n, u32 r, u32* __restrict__ src, u32* __restrict__ unm,
                          u32* __restrict__ grouped, u32* __restrict__ offsets) {
  const u32 na = (n + 1) / 2, nb = n / 2, tid = threadIdx.x;
  topk_row<float>(node_max + 1, na - 1, r, src, unm + 1);  // ends with a barrier
  for (u32 k = tid; k < r; k += blockDim.x) src[k] += 1;
  for (u32 u = 1 + tid; u < na - r; u += blockDim.x) unm[u] += 1;
  if (tid == 0) unm[0] = 0;
  __syncthreads();
  for (u32 k = tid; k < r; k += blockDim.x) {
    const u32 s = src[k], d = node_idx[s];
    u32 pos = 0;
    for (u32 k2 = 0; k2 < r; ++k2) {
      const u32 d2 = node_idx[src[k2]];
      pos += (d2 < d) || (d2 == d && k2 < k);
    }
    grouped[pos] = s;
  }
  __syncthreads();
  // offsets[j] = #sources whose destination is < j: a lower bound over the grouped order.
  for (u32 j = tid; j <= nb; j += blockDim.x) {
    u32 lo = 0, hi = r;
    while (lo < hi) {
      const u32 mid = (lo + hi) / 2;
      if (node_idx[grouped[mid]] < j) lo = mid + 1;
      else hi = mid;
    }
    offsets[j] = lo;
  }
  __syncthreads();
}

// Output tokens of one sample, one block per token, threads over channels:
//   o < nu:  token 2*unm[o]                 -> (x*s) / s
//   o >= nu: b token j = o - nu (token 2j+1) -> (x*s + sum over its sources in merge order of
//            x_i*s_i) / (s + sum s_i).
// `sizes` null means every size is 1. An index out of range leaves its row unwritten.
template <class T>
__device__ void merge_rows(const T* __restrict__ x, const float* __restrict__ sizes, u32 n, u32 c,
                           u32 r, const u32* __restrict__ unm, const u32* __restrict__ grouped,
                           const u32* __restrict__ offsets, T* __restrict__ out,
                           float* __restrict__ out_sizes) {
  const u32 na = (n + 1) / 2, nu = na - r, out_n = n - r;
  for (u32 o = blockIdx.x; o < out_n; o += gridDim.x) {
    u32 t, q0 = 0, q1 = 0;
    if (o < nu) {
      t = 2 * unm[o];
    } else {
      const u32 j = o - nu;
      t = 2 * j + 1;
      q0 = offsets[j];
      q1 = offsets[j + 1];
    }
    if (t >= n || q0 > q1 || q1 > r) continue;
    const float st = sizes ? sizes[t] : 1.0f;
    float sz = st;
    for (u32 q = q0; q < q1; ++q) {
      const u32 i = 2 * grouped[q];
      if (i >= n) continue;
      sz = __fadd_rn(sz, sizes ? sizes[i] : 1.0f);
    }
    for (u32 ch = threadIdx.x; ch < c; ch += blockDim.x) {
      float acc = __fmul_rn(to_f32(x[(i64)t * c + ch]), st);
      for (u32 q = q0; q < q1; ++q) {
        const u32 i = 2 * grouped[q];
        if (i >= n) continue;
        acc = __fadd_rn(acc, __fmul_rn(to_f32(x[(i64)i * c + ch]), sizes ? sizes[i] : 1.0f));
      }
      out[(i64)o * c + ch] = from_f32<T>(acc / sz);
    }
    if (threadIdx.x == 0) out_sizes[o] = sz;
  }
}

}  // namespace clca

#define TOME_ENTRIES(T, sfx)                                                                      \
  /* grid (min(batch*n, cap)), any block: one block per token row */                             \
  extern "C" __global__ void tome_metric_##sfx(const T* __restrict__ qkv, unsigned rows,          \
                                               unsigned heads, unsigned hd,                      \
                                               float* __restrict__ metric) {                     \
    clca::metric_rows<T>(qkv, rows, heads, hd, metric);                                           \
  }                                                                                               \
  CLCA_HOST_ENTRY(tome_metric_##sfx)                                                              \
  /* grid (min(n - r, cap), batch), any block: one block per output token */                      \
  extern "C" __global__ void tome_merge_##sfx(                                                    \
      const T* __restrict__ x, const float* __restrict__ sizes, unsigned batch, unsigned n,       \
      unsigned c, unsigned r, const unsigned* __restrict__ unm,                                   \
      const unsigned* __restrict__ grouped, const unsigned* __restrict__ offsets,                 \
      T* __restrict__ out, float* __restrict__ out_sizes) {                                       \
    const unsigned b = blockIdx.y;                                                                \
    if (b >= batch) return;                                                                       \
    const unsigned na = (n + 1) / 2, nb = n / 2;                                                  \
    clca::merge_rows<T>(x + (long long)b * n * c, sizes ? sizes + (long long)b * n : nullptr, n,  \
                        c, r, unm + (long long)b * (na - r), grouped + (long long)b * r,          \
                        offsets + (long long)b * (nb + 1), out + (long long)b * (n - r) * c,      \
                        out_sizes + (long long)b * (n - r));                                      \
  }                                                                                               \
  CLCA_HOST_ENTRY(tome_merge_##sfx)
CLCA_FOR_EACH_FLOAT(TOME_ENTRIES)

// grid (ceil(na / CLCA_TOME_TILE), batch), block CLCA_TOME_THREADS (a multiple of 32). The min-blocks
// hint of 2 lets ptxas use 72 registers: with the default it capped at 64 and spilled on sm_90.
extern "C" __global__ void __launch_bounds__(CLCA_TOME_THREADS, 2) tome_match_f32(
    const float* __restrict__ metric, unsigned batch, unsigned n, unsigned hd,
    float* __restrict__ node_max, unsigned* __restrict__ node_idx) {
  const unsigned b = blockIdx.y;
  if (b >= batch) return;
  const unsigned na = (n + 1) / 2;
  clca::match_tile(metric + (long long)b * n * hd, n, hd, blockIdx.x * CLCA_TOME_TILE,
                   node_max + (long long)b * na, node_idx + (long long)b * na);
}
CLCA_HOST_ENTRY(tome_match_f32)

// grid (min(batch, cap)), block CLCA_TOPK_THREADS: one block per sample (grid-stride).
extern "C" __global__ void __launch_bounds__(CLCA_TOPK_THREADS) tome_order_f32(
    const float* __restrict__ node_max, const unsigned* __restrict__ node_idx, unsigned batch,
    unsigned n, unsigned r, unsigned* __restrict__ src, unsigned* __restrict__ unm,
    unsigned* __restrict__ grouped, unsigned* __restrict__ offsets) {
  const unsigned na = (n + 1) / 2, nb = n / 2;
  for (unsigned b = blockIdx.x; b < batch; b += gridDim.x)
    clca::order_row(node_max + (long long)b * na, node_idx + (long long)b * na, n, r,
                    src + (long long)b * r, unm + (long long)b * (na - r),
                    grouped + (long long)b * r, offsets + (long long)b * (nb + 1));
}
CLCA_HOST_ENTRY(tome_order_f32)

// out [b, t] = t < n ? (sizes ? sizes[b, t] : 1) : 1 for t < n + r; grid-stride.
extern "C" __global__ void tome_sizes_f32(const float* __restrict__ sizes, unsigned batch,
                                          unsigned n, unsigned r, float* __restrict__ out) {
  const unsigned m = n + r;
  const long long total = (long long)batch * m;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (long long)gridDim.x * blockDim.x) {
    const unsigned t = (unsigned)(e % m);
    const long long b = e / m;
    out[e] = (t < n && sizes) ? sizes[b * n + t] : 1.0f;
  }
}
CLCA_HOST_ENTRY(tome_sizes_f32)
