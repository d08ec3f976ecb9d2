// Per-row top-k selection: see topk.cuh for the algorithm and the contract.
#include "topk.cuh"

namespace clca {
template <class T>
__device__ void topk_rows(const T* __restrict__ x, i64 rows, u32 n, u32 k, u32* __restrict__ idx,
                          u32* __restrict__ compl_idx) {
  // Grid-stride over rows: the grid is capped on the host, rows are not.
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    topk_row<T>(x + r * (i64)n, n, k, idx + r * (i64)k, compl_idx + r * (i64)(n - k));
  }
}
}  // namespace clca

#define TOPK_ENTRY(T, sfx)                                                                       \
  extern "C" __global__ void __launch_bounds__(CLCA_TOPK_THREADS)                                \
      topk_select_##sfx(const T* __restrict__ x, long long rows, unsigned n, unsigned k,          \
                        unsigned* __restrict__ idx, unsigned* __restrict__ compl_idx) {           \
    clca::topk_rows<T>(x, rows, n, k, idx, compl_idx);                                           \
  }                                                                                              \
  CLCA_HOST_ENTRY(topk_select_##sfx)
CLCA_FOR_EACH_FLOAT(TOPK_ENTRY)
