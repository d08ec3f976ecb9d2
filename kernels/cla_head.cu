// Cross-layer aggregation head (SPEC §3). z is the stack of CLS taps, [batch, d, f] (the
// authors' layout). The final Linear/1x1 conv is a GEMM (cuBLAS on the GPU, `linear_*` here
// for the shim and for small problems).
#include "common.cuh"

#define CLA_ENTRIES(T, sfx)                                                                       \
  /* Default head with both BatchNorms folded into the grouped conv (host-side fold in f64):     \
     u[b, o] = GELU(bias[o] + sum_l w[o, l] * z[b, o / g, l]), o < g*d. grid (ceil(g*d/bd), B) */ \
  extern "C" __global__ void cla_grouped_gelu_##sfx(                                              \
      const T* __restrict__ z, unsigned batch, unsigned d, unsigned f, unsigned g,                \
      const float* __restrict__ w, const float* __restrict__ bias, T* __restrict__ u) {           \
    const unsigned b = blockIdx.y, o = blockIdx.x * blockDim.x + threadIdx.x;                     \
    if (b >= batch || o >= g * d) return;                                                         \
    const T* zc = z + ((long long)b * d + o / g) * f;                                             \
    float acc = bias[o];                                                                          \
    for (unsigned l = 0; l < f; ++l) acc += w[(long long)o * f + l] * clca::to_f32(zc[l]);        \
    u[(long long)b * g * d + o] = clca::from_f32<T>(clca::gelu_erf(acc));                         \
  }                                                                                               \
  CLCA_HOST_ENTRY(cla_grouped_gelu_##sfx)                                                         \
  /* Linear variant: v[c] = relu(sum_l w[l] z[b,c,l] + b0), then LayerNorm over d.               \
     grid (batch), blockDim a multiple of 32; v doubles as the staging buffer. */                 \
  extern "C" __global__ void cla_linear_ln_##sfx(                                                 \
      const T* __restrict__ z, unsigned batch, unsigned d, unsigned f,                            \
      const float* __restrict__ w, float b0, const float* __restrict__ gamma,                     \
      const float* __restrict__ beta, float eps, T* __restrict__ v) {                             \
    __shared__ float red[32];                                                                     \
    for (unsigned b = blockIdx.x; b < batch; b += gridDim.x) {                                    \
      const T* zb = z + (long long)b * d * f;                                                     \
      float s = 0.0f;                                                                             \
      for (unsigned c = threadIdx.x; c < d; c += blockDim.x) {                                    \
        float a = b0;                                                                             \
        for (unsigned l = 0; l < f; ++l) a += w[l] * clca::to_f32(zb[(long long)c * f + l]);      \
        s += fmaxf(a, 0.0f);                                                                      \
      }                                                                                           \
      const float mean = clca::block_sum(s, red) / (float)d;                                      \
      float q = 0.0f;                                                                             \
      for (unsigned c = threadIdx.x; c < d; c += blockDim.x) {                                    \
        float a = b0;                                                                             \
        for (unsigned l = 0; l < f; ++l) a += w[l] * clca::to_f32(zb[(long long)c * f + l]);      \
        const float e = fmaxf(a, 0.0f) - mean;                                                    \
        q += e * e;                                                                               \
      }                                                                                           \
      const float rstd = rsqrtf(clca::block_sum(q, red) / (float)d + eps);                        \
      for (unsigned c = threadIdx.x; c < d; c += blockDim.x) {                                    \
        float a = b0;                                                                             \
        for (unsigned l = 0; l < f; ++l) a += w[l] * clca::to_f32(zb[(long long)c * f + l]);      \
        const float y = (fmaxf(a, 0.0f) - mean) * rstd * gamma[c] + beta[c];                      \
        v[(long long)b * d + c] = clca::from_f32<T>(y);                                           \
      }                                                                                           \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(cla_linear_ln_##sfx)                                                            \
  /* y[m, o] = bias[o] + sum_i x[m, i] * w[o, i] (nn.Linear layout), 16x16 tiles, f32 acc.       \
     grid (ceil(n_out/16), ceil(m/16)), block (16, 16). bias may be null. */                      \
  extern "C" __global__ void __launch_bounds__(256) linear_##sfx(                                 \
      const T* __restrict__ x, unsigned m, unsigned k, const T* __restrict__ w,                   \
      const T* __restrict__ bias, unsigned n_out, T* __restrict__ y) {                            \
    __shared__ float xs[16][17];                                                                  \
    __shared__ float ws[16][17];                                                                  \
    const unsigned tx = threadIdx.x, ty = threadIdx.y;                                            \
    const unsigned row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;                        \
    float acc = 0.0f;                                                                             \
    for (unsigned k0 = 0; k0 < k; k0 += 16) {                                                     \
      const unsigned xr = blockIdx.y * 16 + ty, wr = blockIdx.x * 16 + ty;                        \
      xs[ty][tx] = (xr < m && k0 + tx < k) ? clca::to_f32(x[(long long)xr * k + k0 + tx]) : 0.0f; \
      ws[ty][tx] = (wr < n_out && k0 + tx < k) ? clca::to_f32(w[(long long)wr * k + k0 + tx]) : 0.0f; \
      __syncthreads();                                                                            \
      for (unsigned i = 0; i < 16; ++i) acc += xs[ty][i] * ws[tx][i];                             \
      __syncthreads();                                                                            \
    }                                                                                             \
    if (row < m && col < n_out) {                                                                 \
      if (bias) acc += clca::to_f32(bias[col]);                                                   \
      y[(long long)row * n_out + col] = clca::from_f32<T>(acc);                                   \
    }                                                                                             \
  }                                                                                               \
  CLCA_HOST_ENTRY(linear_##sfx)
CLCA_FOR_EACH_FLOAT(CLA_ENTRIES)
