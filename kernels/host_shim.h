// Host execution shim: the same kernel sources, compiled by the host C++ compiler, run on the
// CPU with every CUDA thread of a block as a cooperatively scheduled fiber.
//
// What it models (and checks):
//   - threadIdx / blockIdx / blockDim / gridDim, one block at a time per worker OS thread;
//   - __syncthreads(): every live thread of the block must arrive; a barrier reached by only
//     part of the block (some threads already returned) is reported as an error, so is a
//     deadlock (threads waiting at different barriers);
//   - warp collectives (__shfl*_sync, __ballot_sync, __any_sync, __all_sync, __syncwarp): every
//     existing lane of the warp must take part (we only use full masks; a partial mask is an
//     error rather than a silent approximation);
//   - static __shared__ (one copy per worker OS thread == per running block) and dynamic shared
//     memory (CLCA_DYN_SMEM, poisoned with 0xFF bytes before every block so a read of an
//     unwritten slot shows up as NaN);
//   - atomics (real atomics, since blocks run in parallel on several OS threads).
// It is a test harness, not a fast path: a context switch per barrier per thread.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__ inline
#define __host__
#define __forceinline__
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// `static thread_local`: all fibers of a block run on one OS thread and so share it, while
// blocks that run in parallel on other worker threads get their own copy.
#define __shared__ static thread_local
#define CLCA_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(::clca_shim::dynamic_smem())

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
};

namespace clca_shim {

struct ThreadCtx {
  uint3 tid;
  uint3 bid;
  dim3 bdim;
  dim3 gdim;
};

extern thread_local ThreadCtx* g_ctx;
inline ThreadCtx& ctx() { return *g_ctx; }

void syncthreads();
void syncwarp(unsigned mask);
// Two-phase exchange among the lanes of the calling warp: publishes `v`, returns the value
// published by `src_lane` (a lane index within the warp).
uint64_t warp_exchange(unsigned mask, uint64_t v, int src_lane);
unsigned ballot(unsigned mask, bool pred);
// Every lane of the calling warp publishes `bytes` (<= 64) bytes at `mine`; each gets all 32
// lanes' bytes, lane order, at `all` (32 * bytes). The building block of the tensor-core
// instruction models (mma.sync, ldmatrix) in common.cuh.
void warp_gather(unsigned mask, const void* mine, unsigned bytes, void* all);
template <class F>
inline void warp_gather_all(const F& mine, F* all) {
  static_assert(sizeof(F) <= 64, "warp_gather carries at most 64 bytes per lane");
  warp_gather(0xffffffffu, &mine, sizeof(F), all);
}
void* dynamic_smem();
int lane_id();

template <class T>
inline T shfl_generic(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  uint64_t got = warp_exchange(mask, bits, src);
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}

template <class T, class F>
inline T atomic_rmw(T* addr, F op) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic on an unsupported width");
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  U* p = reinterpret_cast<U*>(addr);
  U old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (true) {
    T old_v;
    std::memcpy(&old_v, &old_bits, sizeof(T));
    T new_v = op(old_v);
    U new_bits;
    std::memcpy(&new_bits, &new_v, sizeof(T));
    if (__atomic_compare_exchange_n(p, &old_bits, new_bits, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_RELAXED)) {
      return old_v;
    }
  }
}

}  // namespace clca_shim

#define threadIdx (::clca_shim::ctx().tid)
#define blockIdx (::clca_shim::ctx().bid)
#define blockDim (::clca_shim::ctx().bdim)
#define gridDim (::clca_shim::ctx().gdim)
#define warpSize 32

inline void __syncthreads() { clca_shim::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { clca_shim::syncwarp(mask); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  int lane = clca_shim::lane_id();
  int base = lane & ~(width - 1);
  return clca_shim::shfl_generic(mask, v, base + (src & (width - 1)));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  int lane = clca_shim::lane_id();
  int src = lane ^ lane_mask;
  int seg_end = (lane & ~(width - 1)) + width;
  if (src >= seg_end) src = lane;
  return clca_shim::shfl_generic(mask, v, src);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int lane = clca_shim::lane_id();
  int src = lane + static_cast<int>(delta);
  int seg_end = (lane & ~(width - 1)) + width;
  if (src >= seg_end) src = lane;
  return clca_shim::shfl_generic(mask, v, src);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int lane = clca_shim::lane_id();
  int src = lane - static_cast<int>(delta);
  int seg_start = lane & ~(width - 1);
  if (src < seg_start) src = lane;
  return clca_shim::shfl_generic(mask, v, src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return clca_shim::ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return clca_shim::ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  return clca_shim::ballot(mask, pred != 0) == clca_shim::ballot(mask, true);
}

inline float atomicAdd(float* p, float v) {
  return clca_shim::atomic_rmw(p, [v](float o) { return o + v; });
}
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline int atomicMax(int* p, int v) {
  return clca_shim::atomic_rmw(p, [v](int o) { return o > v ? o : v; });
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  return clca_shim::atomic_rmw(p, [v](unsigned o) { return o > v ? o : v; });
}
inline int atomicMin(int* p, int v) {
  return clca_shim::atomic_rmw(p, [v](int o) { return o < v ? o : v; });
}
inline unsigned atomicMin(unsigned* p, unsigned v) {
  return clca_shim::atomic_rmw(p, [v](unsigned o) { return o < v ? o : v; });
}
inline unsigned atomicExch(unsigned* p, unsigned v) {
  return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return cmp;
}

inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, 4);
  return i;
}
inline float __uint_as_float(unsigned i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned i;
  std::memcpy(&i, &f, 4);
  return i;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
// Round-to-nearest products and sums that the device compiler may not contract into an FMA
// (build.rs compiles the shim with -ffp-contract=off, so plain operators round the same way).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(unsigned x) { return x == 0 ? 32 : __builtin_clz(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }

// CUDA's global min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// The host launch ABI: cuLaunchKernel's `void** args` convention, so Rust marshals arguments
// once for both the GPU and the shim.
extern "C" {
struct clca_launch_cfg {
  unsigned grid[3];
  unsigned block[3];
  unsigned smem;
};
}

namespace clca_shim {
typedef void (*Trampoline)(void* fn, void** args);
int run(void* fn, Trampoline tr, const clca_launch_cfg* cfg, void** args);

template <class... A, size_t... I>
inline void invoke_impl(void* fn, void** args, std::index_sequence<I...>) {
  reinterpret_cast<void (*)(A...)>(fn)(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}
template <class... A>
inline void invoke(void* fn, void** args) {
  invoke_impl<A...>(fn, args, std::index_sequence_for<A...>{});
}
template <class... A>
inline int launch(void (*fn)(A...), const clca_launch_cfg* cfg, void** args) {
  return run(reinterpret_cast<void*>(fn), &invoke<A...>, cfg, args);
}
}  // namespace clca_shim

// Emits `clca_host_launch__NAME`, the entry the Rust side calls for kernel NAME.
#define CLCA_HOST_ENTRY(name)                                                               \
  extern "C" int clca_host_launch__##name(const clca_launch_cfg* cfg, void** args) {        \
    return ::clca_shim::launch(&name, cfg, args);                                           \
  }
