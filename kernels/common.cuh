// Shared by every kernel family: dtypes, conversions, ordered keys, block reductions, and the
// macros that stamp one extern "C" entry per dtype (and, on the host, its shim launcher).
//
// Compiled two ways: by NVRTC for compute_80 (no headers at all: NVRTC's builtins only), and by
// the host C++ compiler under host_shim.h for the CPU tests.
#pragma once

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define CLCA_DEVICE_BUILD 1
#define CLCA_HOST_ENTRY(name)
#define CLCA_DYN_SMEM(T, name) \
  extern __shared__ __align__(16) unsigned char clca_dyn_smem_raw[]; \
  T* name = reinterpret_cast<T*>(clca_dyn_smem_raw)
#else
#include "host_shim.h"
#endif

// `#pragma unroll` for NVRTC; nothing for the host compiler (which does not know the pragma).
#if defined(CLCA_DEVICE_BUILD)
#define CLCA_UNROLL _Pragma("unroll")
#else
#define CLCA_UNROLL
#endif

// Largest head dimension the fused q.K score kernels stage in shared memory.
#define CLCA_MAX_HEAD_DIM 256

namespace clca {

typedef unsigned int u32;
typedef long long i64;

// Storage-only 16-bit types with the same bits as half::f16 / half::bf16 on the Rust side.
// Our own (not cuda_fp16.h) so NVRTC needs no include path and the host build needs no CUDA
// headers; arithmetic always happens in f32.
struct __align__(2) f16 {
  unsigned short bits;
};
struct __align__(2) bf16 {
  unsigned short bits;
};

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 h) { return __uint_as_float(((u32)h.bits) << 16); }

#if defined(CLCA_DEVICE_BUILD)
__device__ __forceinline__ float to_f32(f16 h) {
  float r;
  asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(h.bits));
  return r;
}
__device__ __forceinline__ f16 f16_from_f32(float x) {
  f16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
  return h;
}
__device__ __forceinline__ bf16 bf16_from_f32(float x) {
  bf16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
  return h;
}
#else
// Software conversions, round-to-nearest-even, as the cvt.rn instructions do.
inline float to_f32(f16 h) {
  u32 sign = (u32)(h.bits & 0x8000u) << 16;
  u32 exp = (h.bits >> 10) & 0x1f;
  u32 man = h.bits & 0x3ffu;
  u32 out;
  if (exp == 0x1f) {
    out = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0);
  } else if (exp == 0) {
    if (man == 0) {
      out = sign;
    } else {  // subnormal: value = man * 2^-24
      float v = (float)man * 5.9604644775390625e-8f;
      out = sign | __float_as_uint(v);
    }
  } else {
    out = sign | ((exp + 112) << 23) | (man << 13);
  }
  return __uint_as_float(out);
}
inline f16 f16_from_f32(float x) {
  u32 u = __float_as_uint(x);
  u32 sign = (u >> 16) & 0x8000u;
  u32 a = u & 0x7fffffffu;
  f16 h;
  if (a >= 0x7f800000u) {  // inf or NaN
    h.bits = (unsigned short)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0));
    return h;
  }
  if (a >= 0x477ff000u) {  // rounds to >= 65520 -> inf
    h.bits = (unsigned short)(sign | 0x7c00u);
    return h;
  }
  if (a < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // value / 2^-24, rounded to nearest even as an integer count of 2^-24 units
    float v = __uint_as_float(a) * 16777216.0f;
    float r = std::nearbyint(v);  // default rounding mode: to nearest even
    h.bits = (unsigned short)(sign | (u32)r);
    return h;
  }
  u32 exp = (a >> 23) - 112;
  u32 man = a & 0x7fffffu;
  u32 half_bits = (exp << 10) | (man >> 13);
  u32 rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half_bits & 1u))) half_bits += 1;
  h.bits = (unsigned short)(sign | half_bits);
  return h;
}
inline bf16 bf16_from_f32(float x) {
  u32 u = __float_as_uint(x);
  bf16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    h.bits = (unsigned short)((u >> 16) | 0x40u);  // quiet NaN
    return h;
  }
  u32 lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  h.bits = (unsigned short)(u >> 16);
  return h;
}
#endif

template <class T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ f16 from_f32<f16>(float x) {
  return f16_from_f32(x);
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) {
  return bf16_from_f32(x);
}

// Order-preserving map of an f32 to u32, with the selection contract's NaN and zero policy:
// -0 == +0, and every NaN maps to the largest key (NaN ranks above +inf, all NaNs tie).
__device__ __forceinline__ u32 order_key(float v) {
  u32 u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffffffffu;
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum; every thread gets the result. blockDim.x must be a multiple of 32.
// The fixed shuffle tree makes it deterministic run to run.
__device__ __forceinline__ float block_sum(float v, float* scratch32) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch32[warp] = v;
  __syncthreads();
  int nw = (int)(blockDim.x >> 5);
  float t = lane < nw ? scratch32[lane] : 0.0f;
  return warp_sum(t);
}
__device__ __forceinline__ float block_max(float v, float* scratch32) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch32[warp] = v;
  __syncthreads();
  int nw = (int)(blockDim.x >> 5);
  float t = lane < nw ? scratch32[lane] : -__int_as_float(0x7f800000);
  return warp_max(t);
}

// Exclusive prefix sum of a 0/1-or-small count over the block, in thread order; returns the
// exclusive prefix and writes the block total. blockDim.x must be a multiple of 32.
__device__ __forceinline__ u32 block_exclusive_scan(u32 v, u32* scratch32, u32* total) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  u32 inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    u32 n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  __syncthreads();
  if (lane == 31) scratch32[warp] = inc;
  __syncthreads();
  int nw = (int)(blockDim.x >> 5);
  u32 before = 0, all = 0;
  for (int w = 0; w < nw; ++w) {
    u32 s = scratch32[w];
    if (w < warp) before += s;
    all += s;
  }
  *total = all;
  return before + inc - v;
}

// Round-to-nearest f32 multiply/add that NVRTC never contracts into an FMA (--fmad=true is
// our default): for kernels that must reproduce a CPU reference's rounding step by step.
#if defined(CLCA_DEVICE_BUILD)
__device__ __forceinline__ float fmul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float fadd_rn(float a, float b) { return __fadd_rn(a, b); }
#else
inline float fmul_rn(float a, float b) {
  volatile float r = a * b;  // a separate rounding, whatever -ffp-contract says
  return r;
}
inline float fadd_rn(float a, float b) { return a + b; }
#endif

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// A 16-byte vector for wide copies (global <-> shared, row gathers).
struct __align__(16) v16 {
  u32 x, y, z, w;
};

// 16 bytes at p: one vector access on the device (the caller guarantees 16-byte alignment
// there); on the host shim a memcpy, since a test's Vec carries no such promise.
__device__ __forceinline__ v16 ld_v16(const void* p) {
#if defined(CLCA_DEVICE_BUILD)
  return *reinterpret_cast<const v16*>(p);
#else
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
#endif
}
__device__ __forceinline__ void st_v16(void* p, v16 v) {
#if defined(CLCA_DEVICE_BUILD)
  *reinterpret_cast<v16*>(p) = v;
#else
  std::memcpy(p, &v, sizeof v);
#endif
}

}  // namespace clca

// Stamps MACRO(T, suffix) for every floating dtype we ship.
#define CLCA_FOR_EACH_FLOAT(MACRO) \
  MACRO(float, f32)                \
  MACRO(clca::f16, f16)            \
  MACRO(clca::bf16, bf16)
