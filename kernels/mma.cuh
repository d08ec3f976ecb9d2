// Tensor-core building blocks for the 16-bit storage types: mma.sync m16n8k16 (f16/bf16 in,
// f32 accumulate) and ldmatrix .x4 (plain and .trans), as inline PTX on the device (sm_80+) and, on the host
// shim, as models that follow the PTX ISA's fragment layouts lane by lane. The models move each
// operand through the lanes that hold it on a GPU, so the host tests check our fragment
// bookkeeping, not just the arithmetic.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and
// t = lane % 4, two 16-bit elements per 32-bit register, the lower index in the low half:
//   A 16x16 row-major, 4 registers: {(g, 2t..2t+1), (g+8, 2t..), (g, 8+2t..), (g+8, 8+2t..)}
//   B 16x8 (k x n), 2 registers:    {(2t..2t+1, g), (8+2t..8+2t+1, g)}
//   C/D 16x8 f32, 4 floats:         {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}
// so the C fragments of two adjacent 8-column tiles are, element for element, the A fragment of
// one 16-wide k step (what lets attention feed P from registers straight into P.V).
#pragma once

#include "common.cuh"

namespace clca {

// Two T values in one register, `lo` in the low half.
template <class T>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  return (u32)from_f32<T>(lo).bits | ((u32)from_f32<T>(hi).bits << 16);
}
template <class T>
__device__ __forceinline__ float lo_half(u32 w) {
  T h;
  h.bits = (unsigned short)(w & 0xffffu);
  return to_f32(h);
}
template <class T>
__device__ __forceinline__ float hi_half(u32 w) {
  T h;
  h.bits = (unsigned short)(w >> 16);
  return to_f32(h);
}

#if defined(CLCA_DEVICE_BUILD)
template <class T>
__device__ __forceinline__ void mma_16816(float d[4], const u32 a[4], const u32 b[2]);
template <>
__device__ __forceinline__ void mma_16816<bf16>(float d[4], const u32 a[4], const u32 b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_16816<f16>(float d[4], const u32 a[4], const u32 b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ u32 smem_u32(const void* p) {
  u32 a;
  asm("{ .reg .u64 p; cvta.to.shared.u64 p, %1; cvt.u32.u64 %0, p; }" : "=r"(a) : "l"(p));
  return a;
}
// Four 8x8 16-bit matrices from shared memory: lane l gives the address of row l%8 of matrix
// l/8 (16-byte aligned); register i gets matrix i's elements (g, 2t) and (g, 2t+1).
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row)));
}
// 16 bytes global -> shared without passing through registers (cp.async, sm_80+); `valid` false
// zero-fills the destination instead (a row past the sequence). Completes at cp_async_wait.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// Four 8x8 16-bit matrices from shared memory, transposed: lane l gives the address of row l%8
// of matrix l/8 (16-byte aligned); register i gets matrix i's elements (2t, g) and (2t+1, g).
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row)));
}
#else
template <class T>
inline void mma_16816(float d[4], const u32 a[4], const u32 b[2]) {
  struct Frag {
    u32 a[4];
    u32 b[2];
  };
  const Frag mine = {{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  Frag all[32];
  clca_shim::warp_gather_all(mine, all);
  const int lane = clca_shim::lane_id(), g = lane >> 2, t = lane & 3;
  auto A = [&](int r, int k) {
    const u32 w = all[(r & 7) * 4 + ((k & 7) >> 1)].a[(r >> 3) + 2 * (k >> 3)];
    return (k & 1) ? hi_half<T>(w) : lo_half<T>(w);
  };
  auto B = [&](int k, int n) {
    const u32 w = all[n * 4 + ((k & 7) >> 1)].b[k >> 3];
    return (k & 1) ? hi_half<T>(w) : lo_half<T>(w);
  };
  for (int i = 0; i < 4; ++i) {
    const int r = g + 8 * (i >> 1), c = 2 * t + (i & 1);
    float acc = d[i];
    // Products of 16-bit floats are exact in f32; only the summation order is ours.
    for (int k = 0; k < 16; ++k) acc += A(r, k) * B(k, c);
    d[i] = acc;
  }
}
// The shim completes each copy at once: a legal schedule of the asynchronous copy.
inline void cp_async16(void* smem, const void* gmem, bool valid) {
  if (valid) std::memcpy(smem, gmem, 16);
  else std::memset(smem, 0, 16);
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}
inline void ldmatrix_x4(u32 r[4], const void* row) {
  const void* rows[32];
  clca_shim::warp_gather_all(row, rows);
  const int lane = clca_shim::lane_id(), g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const unsigned short* rp = static_cast<const unsigned short*>(rows[i * 8 + g]);
    r[i] = (u32)rp[2 * t] | ((u32)rp[2 * t + 1] << 16);
  }
}
inline void ldmatrix_x4_trans(u32 r[4], const void* row) {
  const void* rows[32];
  clca_shim::warp_gather_all(row, rows);
  const int lane = clca_shim::lane_id(), g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const unsigned short* r0 = static_cast<const unsigned short*>(rows[i * 8 + 2 * t]);
    const unsigned short* r1 = static_cast<const unsigned short*>(rows[i * 8 + 2 * t + 1]);
    r[i] = (u32)r0[g] | ((u32)r1[g] << 16);
  }
}
#endif

}  // namespace clca
