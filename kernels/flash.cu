// Fused multi-head attention for the 16-bit storage types, after FlashAttention-2 (Dao, 2023):
// one block per (tile of 64 queries, head, image). K and V stream through shared memory in tiles
// of 64 keys; S = q.k^T and the output stay in registers (mma.sync m16n8k16, f32 accumulation)
// with an online softmax. q, k and v are read in place from the qkv GEMM's output
// [B, n, 3, H, hd] and O is written straight into [B, n, H*hd]: no head split, no n x n scores
// in memory, no merge (the GEMM path of vit.cu moves about 5.7 GB per full-length ViT-B layer
// at batch 64; this moves the 0.3 GB of q, k, v and O).
//
// Semantics match the GEMM path (attn_split/attn_softmax/attn_merge): q is scaled and rounded
// to T before the product (timm's `q * scale` under autocast), the logits get ToMe's log-size
// bias when `sizes` is given, and the cls query's probabilities (row 0) go to `cls_probs`
// [B, H, n] in f32 for the token selection. Differences: P is rounded to T before P.V while
// unnormalized (normalized after, in f32), and sums run in another order: within the 16-bit
// tolerance the tests allow.
#include "mma.cuh"

namespace clca {

constexpr int FA_BK = 64;   // keys per tile
constexpr int FA_PAD = 8;   // halves of padding per shared row: conflict-free fragment loads
constexpr int FA_THREADS = 128;
constexpr float FA_LOG2E = 1.4426950408889634f;

__device__ __forceinline__ u32 ld32(const unsigned short* p) {
  return *reinterpret_cast<const u32*>(p);
}

// Rows r0..r0+63 of one of q/k/v (`src` points at token 0's slice, `tok` elements per token)
// into `dst` [64][HD + FA_PAD] halves; rows at or past n are zero.
template <int HD>
__device__ __forceinline__ void fa_load_tile(const unsigned short* src, u32 n, i64 tok, u32 r0,
                                             unsigned short* dst) {
  constexpr int CH = HD / 8;  // 16-byte chunks per row
  constexpr int LD = HD + FA_PAD;
  for (int c = threadIdx.x; c < FA_BK * CH; c += blockDim.x) {
    const int r = c / CH, j = c % CH;
    v16 v = {0u, 0u, 0u, 0u};
    if (r0 + (u32)r < n) v = ld_v16(src + (i64)(r0 + r) * tok + j * 8);
    *reinterpret_cast<v16*>(dst + r * LD + j * 8) = v;
  }
}

// Query rows r0..r0+63 of the launch (`nq` of them; with `qmap`, row 0 is token 0 and row r > 0
// token 1 + qmap[r - 1], else row r is token r) into `dst` as fa_load_tile does; rows past nq
// zero, and so is a mapped token past n (indices are trusted, as the selection writes them, but
// one out of range reads nothing).
template <int HD>
__device__ __forceinline__ void fa_load_q(const unsigned short* src, u32 n, i64 tok, u32 r0,
                                          u32 nq, const u32* __restrict__ qmap,
                                          unsigned short* dst) {
  constexpr int CH = HD / 8;
  constexpr int LD = HD + FA_PAD;
  for (int c = threadIdx.x; c < FA_BK * CH; c += blockDim.x) {
    const int r = c / CH, j = c % CH;
    const u32 q = r0 + (u32)r;
    v16 v = {0u, 0u, 0u, 0u};
    if (q < nq) {
      const u32 t = (qmap && q > 0) ? 1 + qmap[q - 1] : q;
      if (t < n) v = ld_v16(src + (i64)t * tok + j * 8);
    }
    *reinterpret_cast<v16*>(dst + r * LD + j * 8) = v;
  }
}

// MT m-tiles of 16 query rows per warp (4 warps, 64·MT queries per block): each K and V fragment
// read from shared memory feeds MT mma instructions. Measured on an H200 at B64 × 786 tokens
// (EViT + CLCA forward, attention summed over blocks): MT = 1 5.64 ms (93 TFLOP/s in the first
// block), MT = 2 6.18 ms: 255 registers leave 8 warps an SM to hide the synchronous tile loads,
// against 16. So MT = 1, and the loads overlap the math instead: STAGES = 2 streams tile t+1 in
// by cp.async while tile t is computed.
// K and V rows r0..r0+63 into `dst` (K) and `dst + FA_BK*LD` (V) by cp.async, zero past n.
template <int HD>
__device__ __forceinline__ void fa_issue_kv(const unsigned short* kb, const unsigned short* vb,
                                            u32 n, i64 tok, u32 r0, unsigned short* dst) {
  constexpr int CH = HD / 8;
  constexpr int LD = HD + FA_PAD;
  for (int c = threadIdx.x; c < 2 * FA_BK * CH; c += blockDim.x) {
    const int which = c / (FA_BK * CH), r = (c / CH) % FA_BK, j = c % CH;
    const bool ok = r0 + (u32)r < n;
    const unsigned short* src = (which ? vb : kb) + (ok ? (i64)(r0 + r) * tok : 0) + j * 8;
    cp_async16(dst + (which * FA_BK + r) * LD + j * 8, src, ok);
  }
}

// QMAP: the query-map entries (`q`): nq queries [cls, 1 + qmap...] into compact rows. Without
// it nq = n and qmap is null at compile time, so the every-query entries compile to the code
// (and the 128 registers at HD 64) they had before the map existed; the map's two live values
// cost sm_90 five registers, past the 128 that let four blocks share an SM.
template <class T, int HD, int MT, int STAGES, bool QMAP>
__device__ void flash_attention(const T* __restrict__ qkv_t, u32 n, u32 heads, float scale,
                                const float* __restrict__ sizes, u32 nq_arg,
                                const u32* __restrict__ qmap_all, T* __restrict__ out_t,
                                float* __restrict__ cls_probs) {
  const u32 nq = QMAP ? nq_arg : n;
  constexpr int KS = HD / 16;  // k steps of q.k^T
  constexpr int NT = HD / 8;   // 8-wide column tiles of O
  constexpr int LD = HD + FA_PAD;
  constexpr int ST = FA_BK / 8;  // 8-wide key tiles of S
  constexpr int BQ = 64 * MT;
  static_assert(BQ <= 2 * FA_BK, "the Q staging uses the K and V tiles' space");
  static_assert(STAGES == 1 || STAGES == 2, "one or two K/V stages");
  // STAGES K|V tiles: with two, tile t+1 streams in (cp.async) while tile t is computed.
  __align__(16) __shared__ unsigned short kv[STAGES * 2 * FA_BK * LD];
  __shared__ float lz[STAGES * FA_BK];  // log2(size) of the tile's keys (ToMe), else 0

  const unsigned short* qkv = reinterpret_cast<const unsigned short*>(qkv_t);
  const u32 b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BQ;
  const u32 d = heads * HD;
  const i64 tok = 3 * (i64)d;
  const unsigned short* qb = qkv + (i64)b * n * tok + (i64)h * HD;  // q of token t: qb + t*tok
  const unsigned short* kb = qb + d;
  const unsigned short* vb = qb + 2 * (i64)d;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const float neg_inf = -__int_as_float(0x7f800000);

  // The warp's 16·MT query rows as A fragments, scaled and rounded to T. Staged in the last
  // stage's space: the first K|V tile goes to stage 0 meanwhile.
  unsigned short* qst = kv + (STAGES - 1) * 2 * FA_BK * LD;
  if (STAGES == 2) {
    fa_issue_kv<HD>(kb, vb, n, tok, 0, kv);
    cp_async_commit();
  }
  CLCA_UNROLL
  const u32* qmap = QMAP ? qmap_all + (i64)b * (nq - 1) : nullptr;
  for (int i = 0; i < MT; ++i) fa_load_q<HD>(qb, n, tok, q0 + 64 * i, nq, qmap, qst + 64 * i * LD);
  __syncthreads();
  u32 qa[MT][KS][4];
  CLCA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    const unsigned short* r0 = qst + (warp * 16 * MT + mt * 16 + g) * LD + 2 * t4;
    const unsigned short* r1 = r0 + 8 * LD;
    CLCA_UNROLL
    for (int kk = 0; kk < KS; ++kk) {
      const u32 w[4] = {ld32(r0 + kk * 16), ld32(r1 + kk * 16), ld32(r0 + kk * 16 + 8),
                        ld32(r1 + kk * 16 + 8)};
      CLCA_UNROLL
      for (int i = 0; i < 4; ++i)
        qa[mt][kk][i] = pack2<T>(lo_half<T>(w[i]) * scale, hi_half<T>(w[i]) * scale);
    }
  }

  float o[MT][NT][4];
  // Rows g and g+8 of each m-tile: running max (log2 units) and this lane's share of the sum.
  float m[MT][2], l[MT][2];
  CLCA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    CLCA_UNROLL
    for (int j = 0; j < NT; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
    m[mt][0] = m[mt][1] = neg_inf;
    l[mt][0] = l[mt][1] = 0.0f;
  }
  // ldmatrix addressing: lane l points at row l % 8 of matrix l / 8.
  const int mi = lane >> 3, mrow = lane & 7;

  int stage = 0;
  for (u32 k0 = 0; k0 < n; k0 += FA_BK, stage = (stage + 1) % STAGES) {
    unsigned short* ks = kv + stage * 2 * FA_BK * LD;
    unsigned short* vs = ks + FA_BK * LD;
    float* lzs = lz + stage * FA_BK;
    __syncthreads();  // every warp is done with the stage about to be refilled (or with Q)
    if (STAGES == 2) {
      // Tile t+1 into the other stage, then wait for tile t (all but the newest group).
      if (k0 + FA_BK < n) fa_issue_kv<HD>(kb, vb, n, tok, k0 + FA_BK, kv + (1 - stage) * 2 * FA_BK * LD);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      fa_load_tile<HD>(kb, n, tok, k0, ks);
      fa_load_tile<HD>(vb, n, tok, k0, vs);
    }
    if (threadIdx.x < FA_BK)
      lzs[threadIdx.x] = (sizes && k0 + threadIdx.x < n) ? log2f(sizes[(i64)b * n + k0 + threadIdx.x])
                                                        : 0.0f;
    __syncthreads();

    // S = q.k^T. K's B fragments for key tiles 2jp and 2jp+1 at k step kk in one ldmatrix:
    // matrices (keys +0, dims +0), (keys +0, dims +8), (keys +8, dims +0), (keys +8, dims +8).
    float s[MT][ST][4];
    CLCA_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
      CLCA_UNROLL
      for (int j = 0; j < ST; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
    }
    CLCA_UNROLL
    for (int kk = 0; kk < KS; ++kk) {
      CLCA_UNROLL
      for (int jp = 0; jp < ST / 2; ++jp) {
        u32 r[4];
        ldmatrix_x4(r, ks + (jp * 16 + mrow + 8 * (mi >> 1)) * LD + kk * 16 + 8 * (mi & 1));
        const u32 b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
        CLCA_UNROLL
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(s[mt][2 * jp], qa[mt][kk], b0);
          mma_16816<T>(s[mt][2 * jp + 1], qa[mt][kk], b1);
        }
      }
    }
    CLCA_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
      // Logits in log2 units (exp(x) = 2^(x log2 e)); keys past n are -inf.
      float mx[2] = {m[mt][0], m[mt][1]};
      CLCA_UNROLL
      for (int j = 0; j < ST; ++j) {
        CLCA_UNROLL
        for (int i = 0; i < 4; ++i) {
          const int c = j * 8 + 2 * t4 + (i & 1);
          const float v = (k0 + (u32)c < n) ? s[mt][j][i] * FA_LOG2E + lzs[c] : neg_inf;
          s[mt][j][i] = v;
          mx[i >> 1] = fmaxf(mx[i >> 1], v);
        }
      }
      float alpha[2];
      CLCA_UNROLL
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        alpha[r] = exp2f(m[mt][r] - mx[r]);  // 0 on the first tile (m = -inf)
        m[mt][r] = mx[r];
        l[mt][r] *= alpha[r];
      }
      CLCA_UNROLL
      for (int j = 0; j < NT; ++j) {
        o[mt][j][0] *= alpha[0];
        o[mt][j][1] *= alpha[0];
        o[mt][j][2] *= alpha[1];
        o[mt][j][3] *= alpha[1];
      }
      CLCA_UNROLL
      for (int j = 0; j < ST; ++j) {
        CLCA_UNROLL
        for (int i = 0; i < 4; ++i) {
          const float p = exp2f(s[mt][j][i] - m[mt][i >> 1]);
          s[mt][j][i] = p;
          l[mt][i >> 1] += p;
        }
      }
    }
    // O += P.V: the C fragments of key tiles 2kk and 2kk+1 are the A fragment of k step kk; V's
    // B fragments come transposed out of shared memory.
    CLCA_UNROLL
    for (int kk = 0; kk < FA_BK / 16; ++kk) {
      u32 pa[MT][4];
      CLCA_UNROLL
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
      const unsigned short* vr = vs + (kk * 16 + mrow + 8 * (mi & 1)) * LD + 8 * (mi >> 1);
      CLCA_UNROLL
      for (int np = 0; np < HD / 16; ++np) {
        u32 r[4];
        ldmatrix_x4_trans(r, vr + np * 16);
        const u32 b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
        CLCA_UNROLL
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(o[mt][2 * np], pa[mt], b0);
          mma_16816<T>(o[mt][2 * np + 1], pa[mt], b1);
        }
      }
    }
  }

  T* out = out_t;
  CLCA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    CLCA_UNROLL
    for (int r = 0; r < 2; ++r) {
      l[mt][r] += __shfl_xor_sync(0xffffffffu, l[mt][r], 1);
      l[mt][r] += __shfl_xor_sync(0xffffffffu, l[mt][r], 2);
      const u32 q = q0 + warp * 16 * MT + mt * 16 + g + 8 * r;
      if (q < nq) {
        const float inv = 1.0f / l[mt][r];
        // Compact rows [B, nq, d] with a query map, else the token's own row of [B, n, d].
        const i64 row = (i64)b * nq + q;
        u32* orow = reinterpret_cast<u32*>(out + row * d + (i64)h * HD + 2 * t4);
        CLCA_UNROLL
        for (int j = 0; j < NT; ++j)
          orow[j * 4] = pack2<T>(o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
      }
    }
  }

  // The cls query's probabilities: warp 0 of the first query tile holds row 0 (m-tile 0, lanes
  // with g = 0) and its final max and sum; one more pass over K, straight from global memory.
  if (cls_probs && blockIdx.x == 0 && warp == 0) {
    float* cp = cls_probs + ((i64)b * heads + h) * n;
    for (u32 k0 = 0; k0 < n; k0 += 8) {
      float s4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const u32 key = min(k0 + (u32)g, n - 1);  // past n: any valid row, not written
      const unsigned short* kr = kb + (i64)key * tok + 2 * t4;
      CLCA_UNROLL
      for (int kk = 0; kk < KS; ++kk) {
        const u32 bf[2] = {ld32(kr + kk * 16), ld32(kr + kk * 16 + 8)};
        mma_16816<T>(s4, qa[0][kk], bf);
      }
      if (g == 0) {
        CLCA_UNROLL
        for (int i = 0; i < 2; ++i) {
          const u32 c = k0 + 2 * t4 + i;
          if (c < n) {
            const float bias = sizes ? log2f(sizes[(i64)b * n + c]) : 0.0f;
            cp[c] = exp2f(s4[i] * FA_LOG2E + bias - m[0][0]) / l[0][0];
          }
        }
      }
    }
  }
}

}  // namespace clca

// grid (ceil(n / (64 MT)), heads, batch), block 128: 64 queries per block (MT = 1), 128 for
// the `w` entries (MT = 2). qkv [B, n, 3, H, HD], out [B, n, H*HD] (T), sizes [B, n] f32 or
// null, cls_probs [B, H, n] f32 or null (written by the block of query tile 0: a grid of one
// tile in x gives the cls row for that tile's cost). 16-byte aligned rows: HD % 16 == 0 and
// 16-byte aligned qkv.
#define FLASH_ENTRIES(T, sfx, NAME, HD, MT, STAGES)                                               \
  extern "C" __global__ void __launch_bounds__(clca::FA_THREADS) NAME##_##sfx(                    \
      const T* __restrict__ qkv, unsigned n, unsigned heads, float scale,                         \
      const float* __restrict__ sizes, T* __restrict__ out, float* __restrict__ cls_probs) {      \
    clca::flash_attention<T, HD, MT, STAGES, false>(qkv, n, heads, scale, sizes, n, nullptr, out, \
                                                    cls_probs);                                   \
  }                                                                                               \
  CLCA_HOST_ENTRY(NAME##_##sfx)
// The query-map entries: grid (ceil(nq / 64), heads, batch), block 128; the nq queries cls and
// 1 + qmap[b, j] (qmap [B, nq - 1], non-cls token indices as the selection writes them) into
// compact rows out [B, nq, H*HD], each query's arithmetic as in the entries above (the same
// bits). A Top-K layer attends only the tokens it keeps with these.
#define FLASH_QMAP_ENTRIES(T, sfx, NAME, HD)                                                      \
  extern "C" __global__ void __launch_bounds__(clca::FA_THREADS) NAME##_##sfx(                    \
      const T* __restrict__ qkv, unsigned n, unsigned heads, float scale,                         \
      const float* __restrict__ sizes, unsigned nq, const unsigned* __restrict__ qmap,           \
      T* __restrict__ out, float* __restrict__ cls_probs) {                                       \
    clca::flash_attention<T, HD, 1, (HD < 128 ? 2 : 1), true>(qkv, n, heads, scale, sizes, nq,    \
                                                              qmap, out, cls_probs);              \
  }                                                                                               \
  CLCA_HOST_ENTRY(NAME##_##sfx)
// HD 128 stays single-stage: two stages would pass the 48 KiB of static shared memory.
// The `w` entries (MT = 2, 128 queries a block) are the wide variant, for A/B timing on a GPU
// now that the K/V tiles stream in by cp.async: twice the math per shared-memory fragment, at
// 243 registers (sm_90, HD 64) against 128, so half the resident warps. HD 128 has none (its
// MT = 2 would not fit the registers).
#define FLASH_DTYPE(T, sfx)                                                                         \
  FLASH_ENTRIES(T, sfx, attn_flash32, 32, 1, 2) FLASH_ENTRIES(T, sfx, attn_flash64, 64, 1, 2)       \
  FLASH_ENTRIES(T, sfx, attn_flash128, 128, 1, 1) FLASH_ENTRIES(T, sfx, attn_flash32w, 32, 2, 2)    \
  FLASH_ENTRIES(T, sfx, attn_flash64w, 64, 2, 2) FLASH_QMAP_ENTRIES(T, sfx, attn_flash32q, 32)      \
  FLASH_QMAP_ENTRIES(T, sfx, attn_flash64q, 64) FLASH_QMAP_ENTRIES(T, sfx, attn_flash128q, 128)
FLASH_DTYPE(clca::f16, f16)
FLASH_DTYPE(clca::bf16, bf16)
