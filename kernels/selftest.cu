// Self-tests of the execution model (warp collectives, block reductions, scans, atomics) and a
// deliberately broken kernel whose partial barrier the host shim must report. The broken one is
// undefined behaviour on a GPU and is only ever launched under the shim.
#include "common.cuh"

#define SELFTEST_ENTRIES(T, sfx)                                                                 \
  /* one block of n threads (n a multiple of 32); out is [6, n] */                              \
  extern "C" __global__ void selftest_collectives_##sfx(const T* __restrict__ in, unsigned n,    \
                                                        float* __restrict__ out) {               \
    __shared__ float red[32];                                                                    \
    __shared__ unsigned scan[32];                                                                \
    __shared__ unsigned counter;                                                                 \
    const unsigned t = threadIdx.x;                                                              \
    if (t == 0) counter = 0;                                                                     \
    __syncthreads();                                                                             \
    const float v = clca::to_f32(in[t]);                                                         \
    out[0 * n + t] = clca::warp_sum(v);                                                          \
    out[1 * n + t] = __shfl_down_sync(0xffffffffu, v, 1);                                        \
    out[2 * n + t] = (float)__popc(__ballot_sync(0xffffffffu, v > 0.0f));                        \
    out[3 * n + t] = clca::block_sum(v, red);                                                    \
    unsigned total;                                                                              \
    out[4 * n + t] = (float)clca::block_exclusive_scan(v > 0.0f ? 1u : 0u, scan, &total);         \
    atomicAdd(&counter, v > 0.0f ? 1u : 0u);                                                     \
    __syncthreads();                                                                             \
    out[5 * n + t] = (float)counter - (float)total;                                              \
  }                                                                                              \
  CLCA_HOST_ENTRY(selftest_collectives_##sfx)                                                    \
  /* threads >= live return before the barrier: a bug the shim must report */                   \
  extern "C" __global__ void selftest_partial_barrier_##sfx(const T* __restrict__ in,            \
                                                            unsigned live, float* __restrict__ out) { \
    if (threadIdx.x >= live) return;                                                             \
    __syncthreads();                                                                             \
    out[threadIdx.x] = clca::to_f32(in[threadIdx.x]);                                            \
  }                                                                                              \
  CLCA_HOST_ENTRY(selftest_partial_barrier_##sfx)
CLCA_FOR_EACH_FLOAT(SELFTEST_ENTRIES)
