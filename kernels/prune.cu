// Top-K and EViT pruning (SPEC §4.2): gather [cls, kept...] and, for EViT, append the fused
// token sum over dropped t of score[t] * x[1 + t] (raw scores, not renormalized).
// Index convention: idx/compl index the non-cls tokens, i.e. token 1 + idx of x.
// Indices are trusted (they come from the selection kernels); one out of range leaves its
// output row unwritten (gather) or its term out of the sum (fuse) instead of reading out of
// bounds.
//
// Summation order of the fused row (the contract; src/cpu/prune.rs follows it exactly): the
// m dropped tokens, in their ascending order, are cut into CLCA_PRUNE_SEGS runs of
// ceil(m / CLCA_PRUNE_SEGS) (the last ones shorter or empty); each run is an f32 sum in token
// order starting from 0, and the run sums are added in run order starting from 0. One
// sequential chain per channel left a B256 layer latency-bound (one block per 256 channels
// walking all 706 dropped rows); eight runs per channel are eight warps streaming at once.
#include "common.cuh"

#define CLCA_PRUNE_THREADS 256
#define CLCA_PRUNE_SEGS 8
// Rows each lane loads ahead of their adds (four channels each): the bytes in flight that let
// the sum stream at copy bandwidth.
#define CLCA_PRUNE_AHEAD 8

namespace clca {

// Four channels of T: what one lane of the fused sum moves per row (16 bytes in f32, 8 in the
// 16-bit types). With 16 bytes a lane in every dtype, a bf16 slice was 256 channels, half the
// f32 kernel's warps, 114 registers a thread and two blocks an SM: at B256 the bf16 gather +
// fuse took 196 µs (1.6 TB/s) where f32 took 167 µs (3.8 TB/s) on an H200.
template <class T>
struct alignas(4 * sizeof(T)) Vec4T {
  T v[4];
};

// One row of c elements, copied by one warp. Rows whose bytes are a multiple of 16 go 16 bytes
// per lane (the buffers start 256-byte aligned, so every such row is 16-byte aligned too).
template <class T>
__device__ __forceinline__ void copy_row_warp(const T* __restrict__ src, T* __restrict__ dst, u32 c) {
  const u32 lane = threadIdx.x & 31;
  if ((c * sizeof(T)) % 16 == 0) {
    const u32 nv = (u32)(c * sizeof(T) / 16);
    const unsigned char* s = reinterpret_cast<const unsigned char*>(src);
    unsigned char* d = reinterpret_cast<unsigned char*>(dst);
    // Four loads in flight per lane before the first store (a 768-channel f32 row is 192
    // vectors, six a lane).
    for (u32 i0 = 0; i0 < nv; i0 += 128) {
      v16 r[4];
      CLCA_UNROLL
      for (u32 u = 0; u < 4; ++u) {
        const u32 i = i0 + 32 * u + lane;
        if (i < nv) r[u] = ld_v16(s + 16 * (i64)i);
      }
      CLCA_UNROLL
      for (u32 u = 0; u < 4; ++u) {
        const u32 i = i0 + 32 * u + lane;
        if (i < nv) st_v16(d + 16 * (i64)i, r[u]);
      }
    }
  } else {
    for (u32 i = lane; i < c; i += 32) dst[i] = src[i];
  }
}

// Output rows [cls, kept...] of sample blockIdx.y: warp w of gather block g copies row
// g * warps + w.
template <class T>
__device__ void gather_tokens(const T* __restrict__ x, u32 n, u32 c, const u32* __restrict__ idx,
                              u32 k, T* __restrict__ out, u32 out_tokens, u32 g) {
  const u32 b = blockIdx.y;
  const u32 j = g * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (j > k) return;
  u32 src = 0;
  if (j > 0) {
    src = 1 + idx[(i64)b * k + j - 1];
    if (src >= n) return;
  }
  copy_row_warp(x + ((i64)b * n + src) * c, out + ((i64)b * out_tokens + j) * c, c);
}

// This lane's channels [ch, ch + 4) of a row; zeros past c. `vec`: c is a multiple of 4, so
// the channels are one aligned vector.
template <class T>
__device__ __forceinline__ Vec4T<T> load_lane(const T* __restrict__ row, u32 ch, u32 c, bool vec) {
  constexpr u32 V = 4;
  Vec4T<T> r;
  if (vec) {
    if (ch < c) {
#if defined(CLCA_DEVICE_BUILD)
      r = *reinterpret_cast<const Vec4T<T>*>(row + ch);
#else
      std::memcpy(&r, row + ch, sizeof r);  // a test's Vec makes no alignment promise
#endif
    } else {
      CLCA_UNROLL
      for (u32 v = 0; v < V; ++v) r.v[v] = from_f32<T>(0.0f);
    }
  } else {
    CLCA_UNROLL
    for (u32 v = 0; v < V; ++v) r.v[v] = ch + v < c ? row[ch + v] : from_f32<T>(0.0f);
  }
  return r;
}

// The fused row's channels [slice * 128, (slice + 1) * 128) of sample blockIdx.y: warp s sums
// run s (lane l owns channels 4l .. 4l+3 of the slice), the block adds the run sums.
template <class T>
__device__ void evit_fuse(const T* __restrict__ x, u32 n, u32 c, const u32* __restrict__ compl_idx,
                          u32 m, const float* __restrict__ scores, T* __restrict__ fused, u32 slice) {
  constexpr u32 V = 4;
  constexpr u32 AHEAD = CLCA_PRUNE_AHEAD;
  __shared__ float part[CLCA_PRUNE_SEGS][32 * V];
  const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const u32 b = blockIdx.y;
  const u32 ch0 = slice * 32 * V, ch = ch0 + lane * V;
  const bool vec = c % V == 0;
  const u32* cb = compl_idx + (i64)b * m;
  const float* sb = scores + (i64)b * (n - 1);
  const T* xb = x + (i64)b * n * c;
  const u32 seg = (m + CLCA_PRUNE_SEGS - 1) / CLCA_PRUNE_SEGS;
  for (u32 s = warp; s < CLCA_PRUNE_SEGS; s += nwarps) {
    float acc[V];
    CLCA_UNROLL
    for (u32 v = 0; v < V; ++v) acc[v] = 0.0f;
    const u32 lo = min(m, s * seg), hi = min(m, lo + seg);
    // 32 tokens' indices and weights, one per lane, handed out by shuffles, so the row loads
    // wait on no other load: the next 32 indices load while this chunk's rows stream, and the
    // weights are first needed after the rows' loads are issued.
    u32 t_next = lo + lane < hi ? cb[lo + lane] : 0xffffffffu;
    for (u32 base = lo; base < hi; base += 32) {
      const u32 cnt = min(32u, hi - base);
      const u32 t_l = t_next;
      const int ok_l = t_l < n - 1;
      const float w_l = ok_l ? sb[t_l] : 0.0f;
      t_next = base + 32 + lane < hi ? cb[base + 32 + lane] : 0xffffffffu;
      for (u32 u = 0; u < cnt; u += AHEAD) {
        Vec4T<T> row[AHEAD];
        bool ok[AHEAD];
        CLCA_UNROLL
        for (u32 a = 0; a < AHEAD; ++a) {
          const u32 j = (u + a) & 31;
          const u32 t = __shfl_sync(0xffffffffu, t_l, j);
          ok[a] = (__shfl_sync(0xffffffffu, ok_l, j) != 0) && u + a < cnt;
          if (ok[a]) row[a] = load_lane(xb + (i64)(t + 1) * c, ch, c, vec);
        }
        CLCA_UNROLL
        for (u32 a = 0; a < AHEAD; ++a) {
          const float w = __shfl_sync(0xffffffffu, w_l, (u + a) & 31);
          if (!ok[a]) continue;
          CLCA_UNROLL
          for (u32 v = 0; v < V; ++v) acc[v] += w * to_f32(row[a].v[v]);
        }
      }
    }
    CLCA_UNROLL
    for (u32 v = 0; v < V; ++v) part[s][lane * V + v] = acc[v];
  }
  __syncthreads();
  for (u32 q = threadIdx.x; q < 32 * V; q += blockDim.x) {
    if (ch0 + q >= c) continue;
    float acc = 0.0f;
    for (u32 s = 0; s < CLCA_PRUNE_SEGS; ++s) acc += part[s][q];
    fused[ch0 + q] = from_f32<T>(acc);
  }
}

}  // namespace clca

// Grid (gather blocks [+ fuse blocks], batch), block CLCA_PRUNE_THREADS: gather block g copies
// output rows g*warps .. g*warps+warps-1 (ceil((1 + k) / warps) of them); EViT's fuse blocks,
// ceil(c / 128) per sample, come first so the long ones start early.
#define PRUNE_ENTRIES(T, sfx)                                                                     \
  extern "C" __global__ void __launch_bounds__(CLCA_PRUNE_THREADS) topk_prune_##sfx(              \
      const T* __restrict__ x, unsigned batch, unsigned n, unsigned c,                            \
      const unsigned* __restrict__ idx, unsigned k, T* __restrict__ out) {                        \
    if (blockIdx.y >= batch) return;                                                              \
    clca::gather_tokens<T>(x, n, c, idx, k, out, 1 + k, blockIdx.x);                              \
  }                                                                                               \
  CLCA_HOST_ENTRY(topk_prune_##sfx)                                                               \
  extern "C" __global__ void __launch_bounds__(CLCA_PRUNE_THREADS) evit_prune_##sfx(              \
      const T* __restrict__ x, unsigned batch, unsigned n, unsigned c,                            \
      const unsigned* __restrict__ idx, unsigned k, const unsigned* __restrict__ compl_idx,       \
      const float* __restrict__ scores, T* __restrict__ out) {                                    \
    if (blockIdx.y >= batch) return;                                                              \
    const unsigned slices = (c + 127) / 128;                                                      \
    if (blockIdx.x < slices) {                                                                    \
      T* fused = out + ((long long)blockIdx.y * (2 + k) + 1 + k) * c;                             \
      clca::evit_fuse<T>(x, n, c, compl_idx, n - 1 - k, scores, fused, blockIdx.x);               \
    } else {                                                                                      \
      clca::gather_tokens<T>(x, n, c, idx, k, out, 2 + k, blockIdx.x - slices);                   \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(evit_prune_##sfx)
CLCA_FOR_EACH_FLOAT(PRUNE_ENTRIES)

// The projection's bias factor for each output row [cls, kept..., fused] of an EViT layer whose
// projection runs on the pruned rows (src/vit/device.rs: proj(Σ s_t a_t) stands for Σ s_t
// proj(a_t), so the fused row's bias is S·b): 1 for cls and the kept rows, and for the fused row
// S = Σ_{t ∈ compl} scores[t] in the fused token's order (the CLCA_PRUNE_SEGS runs, each from 0
// in token order, then the run sums in run order): exactly the fused token of a channel of ones.
// out [batch, 2 + k]. Grid (≤ batch), one warp a block: lane r sums run r.
extern "C" __global__ void __launch_bounds__(32) evit_bias_scale_f32(
    const unsigned* __restrict__ compl_idx, const float* __restrict__ scores, unsigned batch,
    unsigned n, unsigned k, float* __restrict__ out) {
  const unsigned lane = threadIdx.x & 31;
  const unsigned m = n - 1 - k, seg = (m + CLCA_PRUNE_SEGS - 1) / CLCA_PRUNE_SEGS;
  for (unsigned b = blockIdx.x; b < batch; b += gridDim.x) {
    float part = 0.0f;
    if (lane < CLCA_PRUNE_SEGS) {
      const unsigned lo = min(m, lane * seg), hi = min(m, lo + seg);
      for (unsigned t = lo; t < hi; ++t) {
        const unsigned i = compl_idx[(long long)b * m + t];
        if (i < n - 1) part += scores[(long long)b * (n - 1) + i];
      }
    }
    float s = 0.0f;
    for (unsigned r = 0; r < CLCA_PRUNE_SEGS; ++r) s += __shfl_sync(0xffffffffu, part, r);
    float* o = out + (long long)b * (2 + k);
    for (unsigned j = lane; j <= k; j += 32) o[j] = 1.0f;
    if (lane == 0) o[k + 1] = s;
  }
}
CLCA_HOST_ENTRY(evit_bias_scale_f32)
