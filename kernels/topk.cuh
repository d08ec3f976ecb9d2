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
// Rows up to this long keep their keys in shared memory; winners are ordered in shared memory
// up to this many, and above it each winner's rank is counted over the row (O(k*n), still
// exact and deterministic).
#define CLCA_TOPK_SORT_CAP 2048

namespace clca {

__device__ __forceinline__ bool key_before(u32 ka, u32 ia, u32 kb, u32 ib) {
  return ka > kb || (ka == kb && ia < ib);
}

template <class T>
__device__ __forceinline__ u32 load_key(const T* row, u32 i) {
  return order_key(to_f32(row[i]));
}

// Winners are ordered by counting each one's rank among the others up to this many (k²/threads
// compares per thread, one barrier), and by the bitonic sort above it.
#define CLCA_TOPK_RANK_CAP 512

// The bucket of the radix select's current digit that holds the `remaining`-th largest key:
// buckets in descending order, the first whose running count reaches `remaining`. With 256 or
// more threads one exclusive scan finds it (a serial loop over 256 buckets by one thread was
// the selection's longest dependent chain, ~4 µs a pass on an H200); the serial loop stays
// for smaller blocks. Writes s_prefix / s_remaining; all threads must call it.
__device__ __forceinline__ void radix_pick(const u32* hist, u32 prefix, int shift, u32 remaining,
                                           u32* scan_scratch, u32* s_prefix, u32* s_remaining) {
  const u32 tid = threadIdx.x;
  if (blockDim.x >= 256) {
    const u32 b = 255u - tid;  // thread t holds the t-th bucket from the top
    const u32 h = tid < 256 ? hist[b] : 0u;
    u32 total;
    const u32 before = block_exclusive_scan(h, scan_scratch, &total);
    if (tid < 256 && before < remaining && before + h >= remaining) {
      *s_prefix = prefix | (b << shift);
      *s_remaining = remaining - before;
    }
  } else if (tid == 0) {
    u32 cum = 0;
    for (int b = 255; b >= 0; --b) {
      const u32 h = hist[b];
      if (cum + h >= remaining) {
        *s_prefix = prefix | ((u32)b << shift);
        *s_remaining = remaining - cum;
        break;
      }
      cum += h;
    }
  }
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
  // Rows that fit keep their keys in sort_key for the four passes and the compaction (one
  // global read per key instead of five). The compaction then writes winner j over slot j,
  // which is safe: j <= the winner's own index, and every thread of a chunk has read its key
  // before the chunk's scan (a barrier) lets anyone write.
  const bool cached = n <= CLCA_TOPK_SORT_CAP;
  if (cached) {
    for (u32 i = tid; i < n; i += nthreads) sort_key[i] = load_key(row, i);
    __syncthreads();
  }
  auto key_at = [&](u32 i) { return cached ? sort_key[i] : load_key(row, i); };

  // 1. Radix select of the k-th largest key, most significant digit first.
  u32 prefix = 0, mask = 0, remaining = k;
  if (k > 0) {
    for (int pass = 0; pass < 4; ++pass) {
      const int shift = 24 - 8 * pass;
      for (u32 b = tid; b < 256; b += nthreads) hist[b] = 0;
      __syncthreads();
      for (u32 i = tid; i < n; i += nthreads) {
        const u32 key = key_at(i);
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      radix_pick(hist, prefix, shift, remaining, scan_scratch, &s_prefix, &s_remaining);
      __syncthreads();
      prefix = s_prefix;
      remaining = s_remaining;
      mask |= 255u << shift;
      __syncthreads();  // s_prefix and hist are rewritten by the next pass
    }
  }
  // Now: every key > prefix is taken, and the first `remaining` keys == prefix by index.
  const u32 thresh = prefix;
  const bool sort_in_smem = k <= CLCA_TOPK_SORT_CAP;

  // 2. Index-ordered compaction: complement in ascending order, winners into the sort buffer
  //    (or ranked directly against the row when k is too large for shared memory). One scan
  //    per chunk counts both kinds: "greater" in the low 16 bits, "equal" in the high 16.
  u32 eq_seen = 0, sel_base = 0, cmp_base = 0;
  for (u32 base = 0; base < n; base += nthreads) {
    const u32 i = base + tid;
    const bool valid = i < n;
    const u32 key = valid ? key_at(i) : 0u;
    const bool gt = valid && k > 0 && key > thresh;
    const bool eq = valid && k > 0 && key == thresh;
    u32 both_total;
    const u32 both = block_exclusive_scan((gt ? 1u : 0u) | (eq ? 1u << 16 : 0u), scan_scratch,
                                         &both_total);
    const u32 eq_left = remaining > eq_seen ? remaining - eq_seen : 0u;  // equal keys still due
    const u32 eq_excl = both >> 16, eq_total = both_total >> 16;
    const bool take = gt || (eq && eq_excl < eq_left);
    const u32 sel_excl = (both & 0xffffu) + min(eq_excl, eq_left);
    const u32 sel_total = (both_total & 0xffffu) + min(eq_total, eq_left);
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
            rank += key_before(kj, j, key, i);
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
  __syncthreads();

  // 3. The k winners (in index order in shared memory) in descending key order.
  if (k <= CLCA_TOPK_RANK_CAP) {
    // Rank of winner r = winners before it in the contract's order; ranks are distinct.
    for (u32 r = tid; r < k; r += nthreads) {
      const u32 kr = sort_key[r];
      u32 rank = 0;
      for (u32 j = 0; j < k; ++j) {
        const u32 kj = sort_key[j];
        rank += key_before(kj, j, kr, r);  // slots are in index order
      }
      idx_out[rank] = sort_idx[r];
    }
    __syncthreads();
    return;
  }
  // Bitonic sort, padded to a power of two with keys that sort last.
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
