// Soft merge of SiT and PatchMerger (SPEC §4.5-§4.6), one launch:
//   w[b, kk, t]    = softmax over t of (scale * s[b, t, kk])   (max subtracted, exp, sum, divide)
//   out[b, kk, :] = sum over t of w[b, kk, t] * v[b, t, :]     (f32, ascending t)
// as cpu::merge::softmax_merge (which divides each weight before the sum; here the sum of
// exp(x - max) * v is divided once: the same up to rounding). A block owns MERGE_SLOTS slots x MERGE_CHANNELS channels of one
// sample: it first reduces the max and the sum of its slots' columns over all n tokens (a warp's
// lanes are 32 consecutive slots, so the reads of s are coalesced; the warps split the tokens),
// then walks the tokens in chunks, staging exp(x - max) in shared memory. Every block
// of a slot tile recomputes the same column statistics in the same order, so the weights agree
// bit for bit across channel tiles; blocks with blockIdx.x == 0 write them when w is non-null.
// NaN policy (as the reference and torch): the max ignores NaN (fmaxf), so a NaN score makes
// its whole column NaN through the sum; +inf makes inf - inf = NaN; an all -inf column is NaN.
#include "common.cuh"

#define MERGE_THREADS 256
#define MERGE_SLOTS 32
#define MERGE_CHANNELS 64
#define MERGE_TOKENS 64

namespace clca {

// blockDim.x == MERGE_THREADS: warp w, lane l. Column stats of slot k0 + l over tokens t = w mod 8.
template <class T>
__device__ void softmax_merge_tile(const T* __restrict__ s, const T* __restrict__ v, u32 n, u32 k,
                                   u32 d, float scale, T* __restrict__ out, float* __restrict__ w) {
  constexpr u32 WARPS = MERGE_THREADS / 32;
  constexpr u32 GROUPS = MERGE_THREADS / MERGE_CHANNELS;  // slot groups per block
  constexpr u32 PER = MERGE_SLOTS / GROUPS;                // slots per thread
  __shared__ float part[WARPS][MERGE_SLOTS];
  __shared__ float col_max[MERGE_SLOTS];
  __shared__ float col_sum[MERGE_SLOTS];
  __shared__ float ws[MERGE_TOKENS][MERGE_SLOTS];

  const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const u32 k0 = blockIdx.y * MERGE_SLOTS;
  const u32 c = blockIdx.x * MERGE_CHANNELS + (threadIdx.x % MERGE_CHANNELS);
  const u32 g = threadIdx.x / MERGE_CHANNELS;
  const u32 kk = k0 + lane;
  const bool slot_ok = kk < k;

  // 1. column max, then sum of exp(x - max), each as 8 strided partials combined in warp order.
  float m = -__int_as_float(0x7f800000);
  if (slot_ok)
    for (u32 t = warp; t < n; t += WARPS) m = fmaxf(m, to_f32(s[(i64)t * k + kk]) * scale);
  part[warp][lane] = m;
  __syncthreads();
  if (warp == 0) {
    float mm = part[0][lane];
    for (u32 i = 1; i < WARPS; ++i) mm = fmaxf(mm, part[i][lane]);
    col_max[lane] = mm;
  }
  __syncthreads();
  m = col_max[lane];
  float sum = 0.0f;
  if (slot_ok)
    for (u32 t = warp; t < n; t += WARPS) sum += expf(to_f32(s[(i64)t * k + kk]) * scale - m);
  part[warp][lane] = sum;
  __syncthreads();
  if (warp == 0) {
    float ss = part[0][lane];
    for (u32 i = 1; i < WARPS; ++i) ss += part[i][lane];
    col_sum[lane] = ss;
  }
  __syncthreads();
  const float den = col_sum[lane];

  // 2. token chunks: exp(x - max) into shared memory, then the weighted sum of v's channel c;
  // the division by the column sum comes once per output, after the loop. (Dividing each weight
  // first, as the reference, differs by rounding only; an IEEE division inside the loop makes
  // ptxas spill around its slow-path call on sm_80.)
  float acc[PER];
  for (u32 j = 0; j < PER; ++j) acc[j] = 0.0f;
  for (u32 t0 = 0; t0 < n; t0 += MERGE_TOKENS) {
    const u32 tn = min((u32)MERGE_TOKENS, n - t0);
    __syncthreads();  // the previous chunk's weights may still be read
    for (u32 tt = warp; tt < MERGE_TOKENS; tt += WARPS) {
      float e = 0.0f;
      if (slot_ok && tt < tn) e = expf(to_f32(s[(i64)(t0 + tt) * k + kk]) * scale - m);
      ws[tt][lane] = e;
    }
    __syncthreads();
    if (c < d) {
      for (u32 tt = 0; tt < tn; ++tt) {
        const float x = to_f32(v[(i64)(t0 + tt) * d + c]);
        for (u32 j = 0; j < PER; ++j) acc[j] += ws[tt][g * PER + j] * x;
      }
    }
  }
  if (c < d) {
    for (u32 j = 0; j < PER; ++j) {
      const u32 ko = k0 + g * PER + j;
      if (ko < k) out[(i64)ko * d + c] = from_f32<T>(acc[j] / col_sum[g * PER + j]);
    }
  }

  // 3. the normalized weights, from the first channel tile only.
  if (w != nullptr && blockIdx.x == 0 && slot_ok)
    for (u32 t = warp; t < n; t += WARPS)
      w[(i64)kk * n + t] = expf(to_f32(s[(i64)t * k + kk]) * scale - m) / den;
}

}  // namespace clca

#define MERGE_ENTRIES(T, sfx)                                                                     \
  /* grid (ceil(d / 64), ceil(k / 32), batch), block 256; w may be null */                        \
  extern "C" __global__ void __launch_bounds__(MERGE_THREADS) softmax_merge_##sfx(                \
      const T* __restrict__ s, const T* __restrict__ v, unsigned batch, unsigned n, unsigned k,  \
      unsigned d, float scale, T* __restrict__ out, float* __restrict__ w) {                      \
    const unsigned b = blockIdx.z;                                                                \
    if (b >= batch || blockDim.x != MERGE_THREADS) return;                                        \
    clca::softmax_merge_tile<T>(s + (long long)b * n * k, v + (long long)b * n * d, n, k, d,      \
                                scale, out + (long long)b * k * d,                                \
                                w ? w + (long long)b * k * n : nullptr);                          \
  }                                                                                               \
  CLCA_HOST_ENTRY(softmax_merge_##sfx)
CLCA_FOR_EACH_FLOAT(MERGE_ENTRIES)
