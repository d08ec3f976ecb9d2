// Per-row top-k by radix select (the model is CUB's block top-k: a 256-bucket histogram per
// 8-bit digit, so shared memory does not grow with the row), then an index-ordered compaction
// and a sort of the k winners.
//
// Contract (the same in src/cpu/topk.rs):
//   - keys are order_key(f32 value): -0 == +0; NaN ranks above +inf and all NaNs tie;
//   - idx_out: the k largest, in descending key order, ties broken by lower index;
//   - compl_out: the other n-k indices in ascending order;
//   - deterministic: the result depends only on the row, never on scheduling.
#pragma once
#include "common.cuh"

#define CLCA_TOPK_THREADS 256
// Winners are sorted in shared memory (bitonic) up to this many; above it each winner's rank
// is counted over the row (O(k*n), still exact and deterministic).
#define CLCA_TOPK_SORT_CAP 2048

namespace clca {

__device__ __forceinline__ bool key_before(u32 ka, u32 ia, u32 kb, u32 ib) {
  return ka > kb || (ka == kb && ia < ib);
}

template <class T>
__device__ __forceinline__ u32 load_key(const T* row, u32 i) {
  return order_key(to_f32(row[i]));
}

// One block computes the selection of one row. All threads of the block must call it.
template <class T>
__device__ void topk_row(const T* __restrict__ row, u32 n, u32 k, u32* __restrict__ idx_out,
                         u32* __restrict__ compl_out) {
  __shared__ u32 hist[256];
  __shared__ u32 s_prefix, s_remaining;
  __shared__ u32 scan_scratch[32];
  __shared__ u32 sort_key[CLCA_TOPK_SORT_CAP];
  __shared__ u32 sort_idx[CLCA_TOPK_SORT_CAP];
  const u32 tid = threadIdx.x, nthreads = blockDim.x;

  // 1. Radix select of the k-th largest key, most significant digit first.
  u32 prefix = 0, mask = 0, remaining = k;
  if (k > 0) {
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 24 - 8 * pass;
      for (u32 b = tid; b < 256; b += nthreads) hist[b] = 0;
      __syncthreads();
      for (u32 i = tid; i < n; i += nthreads) {
        u32 key = load_key(row, i);
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        u32 cum = 0;
        for (int b = 255; b >= 0; --b) {
          u32 h = hist[b];
          if (cum + h >= remaining) {
            s_prefix = prefix | ((u32)b << shift);
            s_remaining = remaining - cum;
            break;
          }
          cum += h;
        }
      }
      __syncthreads();
      prefix = s_prefix;
      remaining = s_remaining;
      mask |= 255u << shift;
      __syncthreads();  // s_prefix is rewritten by the next pass
    }
  }
  // Now: every key > prefix is taken, and the first `remaining` keys == prefix by index.
  const u32 thresh = prefix;
  const bool sort_in_smem = k <= CLCA_TOPK_SORT_CAP;

  // 2. Index-ordered compaction: complement in ascending order, winners into the sort buffer
  //    (or ranked directly against the row when k is too large for shared memory).
  u32 eq_seen = 0, sel_base = 0, cmp_base = 0;
  for (u32 base = 0; base < n; base += nthreads) {
    const u32 i = base + tid;
    const bool valid = i < n;
    const u32 key = valid ? load_key(row, i) : 0u;
    const bool gt = valid && k > 0 && key > thresh;
    const bool eq = valid && k > 0 && key == thresh;
    u32 eq_total, sel_total;
    const u32 eq_excl = block_exclusive_scan(eq ? 1u : 0u, scan_scratch, &eq_total);
    const bool take = gt || (eq && eq_seen + eq_excl < remaining);
    const u32 sel_excl = block_exclusive_scan(take ? 1u : 0u, scan_scratch, &sel_total);
    if (valid && !take) compl_out[cmp_base + (tid - sel_excl)] = i;
    if (take) {
      if (sort_in_smem) {
        sort_key[sel_base + sel_excl] = key;
        sort_idx[sel_base + sel_excl] = i;
      } else {
        u32 rank;
        if (key == thresh) {
          rank = (k - remaining) + eq_seen + eq_excl;
        } else {
          rank = 0;
          for (u32 j = 0; j < n; ++j) {
            u32 kj = load_key(row, j);
            rank += (kj > key) || (kj == key && j < i);
          }
        }
        idx_out[rank] = i;
      }
    }
    const u32 chunk = min(nthreads, n - base);
    eq_seen += eq_total;
    sel_base += sel_total;
    cmp_base += chunk - sel_total;
  }
  if (!sort_in_smem) {
    __syncthreads();
    return;
  }

  // 3. Bitonic sort of the k winners (padded to a power of two with keys that sort last).
  u32 p = 1;
  while (p < k) p <<= 1;
  for (u32 i = k + tid; i < p; i += nthreads) {
    sort_key[i] = 0u;
    sort_idx[i] = 0xffffffffu;
  }
  __syncthreads();
  for (u32 size = 2; size <= p; size <<= 1) {
    for (u32 stride = size >> 1; stride > 0; stride >>= 1) {
      for (u32 t = tid; t < p / 2; t += nthreads) {
        const u32 i = 2 * t - (t & (stride - 1));
        const u32 j = i + stride;
        const bool forward = (i & size) == 0;
        const u32 ki = sort_key[i], ii = sort_idx[i], kj = sort_key[j], ij = sort_idx[j];
        const bool j_first = key_before(kj, ij, ki, ii);
        if (forward == j_first) {
          sort_key[i] = kj;
          sort_idx[i] = ij;
          sort_key[j] = ki;
          sort_idx[j] = ii;
        }
      }
      __syncthreads();
    }
  }
  for (u32 r = tid; r < k; r += nthreads) idx_out[r] = sort_idx[r];
  __syncthreads();
}

}  // namespace clca
