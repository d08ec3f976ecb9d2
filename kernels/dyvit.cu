// The data-dependent pieces of DynamicViT's score predictor (SPEC §4.8, cpu::dyvit::predict);
// its LayerNorm, Linears and GELUs are the vit kernels and the GEMMs.
//   dyvit_pool:  h [b, n, d] in place: channels [d/2, d) of every token become
//                (sum_u delta_u h_u[c]) / (sum_u delta_u) + 1e-6, the epsilon after the division
//                as the authors add it; sum delta = 0 gives 0/0 = NaN, as the reference.
//   log_softmax2: rows of 2 logits in place -> torch's log_softmax (x - max - log sum exp(x - max));
//                the keep score (channel 0) also goes to an f32 [rows] buffer for the top-k.
#include "common.cuh"

namespace clca {

// One thread per upper-half channel of one sample (grid (ceil((d - d/2) / blockDim.x), batch)):
// the sums run over u in ascending order, as the reference, so the thread owns its column and
// the in-place write races with nothing.
template <class T>
__device__ void dyvit_pool_col(T* __restrict__ h, const float* __restrict__ delta, u32 n, u32 d) {
  const u32 half = d / 2;
  const u32 c = half + blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= d) return;
  float acc = 0.0f, den = 0.0f;
  for (u32 u = 0; u < n; ++u) {
    const float du = delta[u];
    acc += to_f32(h[(i64)u * d + c]) * du;
    den += du;
  }
  const T g = from_f32<T>(acc / den + 1e-6f);
  for (u32 u = 0; u < n; ++u) h[(i64)u * d + c] = g;
}

template <class T>
__device__ __forceinline__ void log_softmax2_row(T* __restrict__ x, float* __restrict__ score) {
  const float a = to_f32(x[0]), b = to_f32(x[1]);
  const float m = fmaxf(a, b);
  const float lse = logf(expf(a - m) + expf(b - m));
  const float la = a - m - lse;
  x[0] = from_f32<T>(la);
  x[1] = from_f32<T>(b - m - lse);
  *score = la;
}

}  // namespace clca

#define DYVIT_ENTRIES(T, sfx)                                                                     \
  /* grid (ceil((d - d/2) / blockDim.x), batch) */                                                \
  extern "C" __global__ void dyvit_pool_##sfx(T* __restrict__ h, const float* __restrict__ delta,  \
                                              unsigned batch, unsigned n, unsigned d) {           \
    const unsigned b = blockIdx.y;                                                                \
    if (b >= batch) return;                                                                       \
    clca::dyvit_pool_col<T>(h + (long long)b * n * d, delta + (long long)b * n, n, d);            \
  }                                                                                               \
  CLCA_HOST_ENTRY(dyvit_pool_##sfx)                                                               \
  /* grid-stride over rows, any grid */                                                           \
  extern "C" __global__ void log_softmax2_##sfx(T* __restrict__ x, unsigned rows,                 \
                                                float* __restrict__ score) {                      \
    const long long stride = (long long)gridDim.x * blockDim.x;                                   \
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride)   \
      clca::log_softmax2_row<T>(x + 2 * r, score + r);                                            \
  }                                                                                               \
  CLCA_HOST_ENTRY(log_softmax2_##sfx)
CLCA_FOR_EACH_FLOAT(DYVIT_ENTRIES)
