// ATS token sampling (SPEC §4.7; the reference is src/cpu/ats.rs): significance, CDF, the
// nearest-CDF token of every sample point, and the sorted unique token ids, all on the device.
//
// Exactness: every step rounds as the reference does (no FMA contraction, sequential sums in
// the reference's order), so the picks are identical, not merely close. That matters here:
// with cdist's matmul form `√max(p² + c² − 2pc, 0)` every CDF value within ~3e-4 of a point
// lands on the same few representable distances, so a CDF that differs in its last bit (e.g.
// from a parallel scan's different association) picks a different token. The CDF is
// therefore cumulated by one thread in token order: ~n dependent adds, a few µs at n = 786.
#include "common.cuh"

namespace clca {

#if defined(CLCA_DEVICE_BUILD)
__device__ __forceinline__ double dmul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double dadd_rn(double a, double b) { return __dadd_rn(a, b); }
#else
inline double dmul_rn(double a, double b) {
  volatile double r = a * b;
  return r;
}
inline double dadd_rn(double a, double b) { return a + b; }
#endif

// Sample point i of `crate::plan::ats_steps(k)`: (f32)(1/(2k) + (2/(2k))·i), in f64.
__device__ __forceinline__ float ats_point(u32 k, u32 i) {
  const double k2 = 2.0 * (double)k;
  return (float)dadd_rn(1.0 / k2, dmul_rn(2.0 / k2, (double)i));
}

// s[b, t−1] = Σ_h probs[b, h, t]·‖v[b, t, h]‖ for t = 1..n−1; v = qkv[b, t, 2d + h·hd ..].
// grid (ceil((n−1)/blockDim.x), batch); one thread per token, sums in the reference's order.
template <class T>
__device__ void ats_significance(const float* __restrict__ probs, const T* __restrict__ qkv, u32 heads,
                                 u32 n, u32 d, float* __restrict__ sig) {
  const u32 b = blockIdx.y;
  const u32 t = 1 + blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const u32 hd = d / heads;
  const T* v = qkv + ((i64)b * n + t) * 3 * d + 2 * d;
  const float* p = probs + (i64)b * heads * n + t;
  float acc = 0.0f;
  for (u32 h = 0; h < heads; ++h) {
    float s = 0.0f;
    for (u32 i = 0; i < hd; ++i) {
      const float x = to_f32(v[h * hd + i]);
      s = fadd_rn(s, fmul_rn(x, x));
    }
    acc = fadd_rn(acc, fmul_rn(p[(i64)h * n], sqrtf(s)));
  }
  sig[(i64)b * (n - 1) + t - 1] = acc;
}

// torch.cdist between one point and one CDF value (see the module comment of src/cpu/ats.rs).
__device__ __forceinline__ float ats_dist(float p, float c, bool matmul) {
  if (matmul) {
    const float v = fadd_rn(fadd_rn(fmul_rn(-2.0f * p, c), fmul_rn(p, p)), fmul_rn(c, c));
    return sqrtf(fmaxf(v, 0.0f));
  }
  return fabsf(p - c);
}

// One block per sample (grid-stride): CDF into cdf[b, n1], the nearest token of each of the
// `points` sample points, then ids[b, 0..count) = the sorted unique picks (1-based token
// ids), ids[b, count..points) = 0 (cls, the forward's padding), count[b] = count.
// Dynamic shared memory: one flag byte per token.
__device__ void ats_sample(const float* __restrict__ sig, const float* __restrict__ mask, u32 batch,
                           u32 n1, u32 k, u32 points, float* __restrict__ cdf, u32* __restrict__ ids,
                           u32* __restrict__ count) {
  CLCA_DYN_SMEM(unsigned char, picked);
  __shared__ float s_total;
  __shared__ u32 scan_scratch[32];
  const u32 tid = threadIdx.x, nt = blockDim.x;
  for (u32 b = blockIdx.x; b < batch; b += gridDim.x) {
    const float* s = sig + (i64)b * n1;
    float* c = cdf + (i64)b * n1;
    u32* out = ids + (i64)b * points;
    if (tid == 0) {
      float total = 0.0f;
      for (u32 t = 0; t < n1; ++t) total = fadd_rn(total, s[t]);
      s_total = fadd_rn(total, 1e-6f);
    }
    __syncthreads();
    const float total = s_total;
    for (u32 t = tid; t < n1; t += nt) {
      c[t] = s[t] / total;
      picked[t] = 0;
    }
    __syncthreads();
    if (tid == 0) {
      // The mask row is aligned with the tokens: entry 0 is cls, token t+1 is mask[t+1].
      const float* mrow = mask ? mask + (i64)b * (n1 + 1) + 1 : nullptr;
      float acc = 0.0f;
      for (u32 t = 0; t < n1; ++t) {
        acc = fadd_rn(acc, c[t]);
        const bool real = !mrow || mrow[t] != 0.0f;
        c[t] = real ? acc : fadd_rn(acc, 0.1f);
      }
    }
    __syncthreads();
    const bool matmul = points > 25 || n1 > 25;
    if (n1 > 0) {
      for (u32 j = tid; j < points; j += nt) {
        const float p = ats_point(k, j);
        u32 best = 0;
        float bd = ats_dist(p, c[0], matmul);
        for (u32 t = 1; t < n1; ++t) {
          const float dt = ats_dist(p, c[t], matmul);
          if (dt < bd) {
            best = t;
            bd = dt;
          }
        }
        picked[best] = 1;  // every writer stores the same value
      }
    }
    __syncthreads();
    u32 base = 0;
    for (u32 t0 = 0; t0 < n1; t0 += nt) {
      const u32 t = t0 + tid;
      const bool take = t < n1 && picked[t];
      u32 total_taken;
      const u32 excl = block_exclusive_scan(take ? 1u : 0u, scan_scratch, &total_taken);
      if (take) out[base + excl] = t + 1;
      base += total_taken;
    }
    for (u32 j = base + tid; j < points; j += nt) out[j] = 0;
    if (tid == 0) count[b] = base;
    __syncthreads();  // picked and s_total are reused by the next sample
  }
}

}  // namespace clca

#define ATS_ENTRIES(T, sfx)                                                                       \
  /* grid (ceil((n-1)/blockDim.x), batch) */                                                      \
  extern "C" __global__ void ats_significance_##sfx(const float* __restrict__ probs,              \
                                                    const T* __restrict__ qkv, unsigned batch,    \
                                                    unsigned heads, unsigned n, unsigned d,       \
                                                    float* __restrict__ sig) {                    \
    if (blockIdx.y >= batch) return;                                                              \
    clca::ats_significance<T>(probs, qkv, heads, n, d, sig);                                      \
  }                                                                                               \
  CLCA_HOST_ENTRY(ats_significance_##sfx)
CLCA_FOR_EACH_FLOAT(ATS_ENTRIES)

// grid (min(batch, cap)), blockDim.x a multiple of 32, dynamic smem n1 bytes. mask may be null.
extern "C" __global__ void ats_sample_f32(const float* __restrict__ sig, const float* __restrict__ mask,
                                          unsigned batch, unsigned n1, unsigned k, unsigned points,
                                          float* __restrict__ cdf, unsigned* __restrict__ ids,
                                          unsigned* __restrict__ count) {
  clca::ats_sample(sig, mask, batch, n1, k, points, cdf, ids, count);
}
CLCA_HOST_ENTRY(ats_sample_f32)
