// Multi-resolution grid encoder: forward, and backward to the embeddings and to the input coordinates.
//
// One thread per (point, level); the level is the fastest index, so a warp covers 32/Lg points x Lg levels, its
// output writes and gradient reads are contiguous, and the input gradient of a point is a shuffle reduction
// over the Lg lanes that hold its levels (when Lg divides 32; otherwise an atomic add).
// Large tables are processed a group of levels at a time (one launch per group, Lg levels each): every block in
// flight then gathers from / scatters into the same few levels, whose rows stay in L2, instead of all L levels'
// tables at once (16 levels of up to 2^19 entries x 8 B: 49 MB, the H100's whole L2, beside the streamed
// output / grad_output).
// Level metadata (table offsets, resolutions, scales, hash flags, the group) travels by value in the kernel
// parameters.

#include "common.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

namespace tf {
namespace {

constexpr int kMaxLevels = 32;

struct Levels {
  int L;       // all levels: the output row holds L x C values
  int l0, Lg;  // the group this launch processes: levels l0 .. l0 + Lg - 1
  uint32_t hashed;  // bit l set: level l uses the XOR-prime hash
  uint32_t offset[kMaxLevels + 1];
  uint32_t res[kMaxLevels];
  float scale[kMaxLevels];
};

template <typename T, int C>
struct alignas(sizeof(T) * C) Vec {
  T v[C];
};

// Separate round-to-nearest multiply and add (no fused multiply-add), as the PyTorch twin computes them, so both
// put a point in the same cell and the piecewise gradient d/dx agrees even next to a cell face.
__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ inline float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ inline double add_rn(double a, double b) { return __dadd_rn(a, b); }

// Read-only (non-coherent cache) load of one table row.
template <typename T, int C>
__device__ inline Vec<T, C> load_row(const Vec<T, C>* p) {
  Vec<T, C> out;
  if constexpr (sizeof(Vec<T, C>) == 4) {
    const unsigned int v = __ldg(reinterpret_cast<const unsigned int*>(p));
    memcpy(&out, &v, 4);
  } else if constexpr (sizeof(Vec<T, C>) == 8) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    memcpy(&out, &v, 8);
  } else if constexpr (sizeof(Vec<T, C>) == 16) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    memcpy(&out, &v, 16);
  } else {
    out = *p;
  }
  return out;
}

template <int D>
__device__ inline uint32_t grid_index(const uint32_t cg[D], uint32_t res, uint32_t size, bool hashed) {
  uint32_t idx = 0;
  if (hashed) {
    constexpr uint32_t primes[3] = {1u, 2654435761u, 805459861u};
#pragma unroll
    for (int d = 0; d < D; ++d) idx ^= cg[d] * primes[d];
  } else {
    uint32_t stride = 1;
#pragma unroll
    for (int d = 0; d < D; ++d) {
      idx += cg[d] * stride;
      stride *= res + 1;
    }
  }
  return idx % size;
}

// Position of point b inside level l. Returns false when the point lies outside [-bound, bound]^D.
template <typename pos_t, int D>
__device__ inline bool locate(const pos_t* __restrict__ x, int64_t b, pos_t bound, pos_t inv2b, pos_t scale,
                              uint32_t pg[D], pos_t frac[D]) {
  bool inside = true;
#pragma unroll
  for (int d = 0; d < D; ++d) {
    const pos_t x01 = mul_rn(add_rn(x[b * D + d], bound), inv2b);  // (x + bound) * (0.5 / bound)
    inside &= (x01 >= pos_t(0)) && (x01 <= pos_t(1));
    const pos_t p = add_rn(mul_rn(x01, scale), pos_t(0.5));
    const pos_t f = floor(p);
    pg[d] = static_cast<uint32_t>(f);
    frac[d] = p - f;
  }
  return inside;
}

template <typename pos_t, typename emb_t, int D, int C>
__global__ void grid_fwd_kernel(const pos_t* __restrict__ x, const emb_t* __restrict__ emb, int64_t B,
                                const Levels lv, pos_t bound, pos_t inv2b, pos_t* __restrict__ out) {
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int L = lv.L, Lg = lv.Lg;
  const int64_t b = tid / Lg;
  const int l = lv.l0 + (int)(tid - b * Lg);
  if (b >= B) return;
  pos_t* o = out + (b * L + l) * C;
  uint32_t pg[D];
  pos_t frac[D];
  if (!locate<pos_t, D>(x, b, bound, inv2b, (pos_t)lv.scale[l], pg, frac)) {
#pragma unroll
    for (int c = 0; c < C; ++c) o[c] = pos_t(0);
    return;
  }
  const uint32_t size = lv.offset[l + 1] - lv.offset[l];
  const bool hashed = (lv.hashed >> l) & 1u;
  const Vec<emb_t, C>* table = reinterpret_cast<const Vec<emb_t, C>*>(emb) + lv.offset[l];
  pos_t acc[C];
#pragma unroll
  for (int c = 0; c < C; ++c) acc[c] = pos_t(0);
#pragma unroll
  for (int corner = 0; corner < (1 << D); ++corner) {
    pos_t w = pos_t(1);
    uint32_t cg[D];
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const bool bit = (corner >> d) & 1;
      w *= bit ? frac[d] : pos_t(1) - frac[d];
      cg[d] = pg[d] + (bit ? 1u : 0u);
    }
    const Vec<emb_t, C> v = load_row<emb_t, C>(table + grid_index<D>(cg, lv.res[l], size, hashed));
#pragma unroll
    for (int c = 0; c < C; ++c) acc[c] += w * static_cast<pos_t>(v.v[c]);
  }
#pragma unroll
  for (int c = 0; c < C; ++c) o[c] = acc[c];
}

template <typename acc_t, int C>
__device__ inline void atomic_add_scalar(acc_t* dst, const acc_t (&g)[C], acc_t w) {
#pragma unroll
  for (int c = 0; c < C; ++c) atomicAdd(dst + c, w * g[c]);
}

template <typename acc_t, int C>
__device__ inline void atomic_add_vec(acc_t* dst, const acc_t (&g)[C], acc_t w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // sm_90 has 8- and 16-byte float atomics: one instruction per corner instead of C
  if constexpr (std::is_same<acc_t, float>::value && C == 2) {
    atomicAdd(reinterpret_cast<float2*>(dst), make_float2(w * g[0], w * g[1]));
  } else if constexpr (std::is_same<acc_t, float>::value && C == 4) {
    atomicAdd(reinterpret_cast<float4*>(dst), make_float4(w * g[0], w * g[1], w * g[2], w * g[3]));
  } else {
    atomic_add_scalar<acc_t, C>(dst, g, w);
  }
#else
  atomic_add_scalar<acc_t, C>(dst, g, w);
#endif
}

// One 16-byte atomic for an x-neighbour corner pair whose two rows share an aligned 16-byte block (rows a and b with
// a ^ 1 == b: half of the pairs on dense levels, and on hashed levels every pair whose lower x is even, since the
// hash's x prime is 1); otherwise one 8-byte atomic per row. Returns false where the GPU or the types lack them.
template <typename acc_t, int C>
__device__ inline bool atomic_add_pair(acc_t* gtable, uint32_t ia, uint32_t ib, const acc_t (&g)[C], acc_t wa,
                                       acc_t wb) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same<acc_t, float>::value && C == 2) {
    if ((ia ^ 1u) == ib) {
      const uint32_t lo = ia < ib ? ia : ib;
      const acc_t w0 = ia < ib ? wa : wb, w1 = ia < ib ? wb : wa;
      atomicAdd(reinterpret_cast<float4*>(gtable + (int64_t)lo * 2),
                make_float4(w0 * g[0], w0 * g[1], w1 * g[0], w1 * g[1]));
    } else {
      atomicAdd(reinterpret_cast<float2*>(gtable + (int64_t)ia * 2), make_float2(wa * g[0], wa * g[1]));
      atomicAdd(reinterpret_cast<float2*>(gtable + (int64_t)ib * 2), make_float2(wb * g[0], wb * g[1]));
    }
    return true;
  }
#endif
  return false;
}

template <typename pos_t, typename emb_t, typename acc_t, int D, int C>
__global__ void grid_bwd_kernel(const pos_t* __restrict__ gy, const pos_t* __restrict__ x,
                                const emb_t* __restrict__ emb, int64_t B, const Levels lv, pos_t bound,
                                pos_t inv2b, bool shfl_reduce, bool vec_atomics, bool pair_atomics, bool gx_accum,
                                acc_t* __restrict__ gemb, pos_t* __restrict__ gx) {
  const int64_t tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int L = lv.L, Lg = lv.Lg;
  const int64_t b = tid / Lg;
  const int l = lv.l0 + (int)(tid - b * Lg);
  const bool valid = b < B;
  pos_t gxp[D];
#pragma unroll
  for (int d = 0; d < D; ++d) gxp[d] = pos_t(0);
  if (valid) {
    uint32_t pg[D];
    pos_t frac[D];
    const pos_t scale = (pos_t)lv.scale[l];
    if (locate<pos_t, D>(x, b, bound, inv2b, scale, pg, frac)) {
      const uint32_t size = lv.offset[l + 1] - lv.offset[l];
      const bool hashed = (lv.hashed >> l) & 1u;
      const Vec<emb_t, C>* table = reinterpret_cast<const Vec<emb_t, C>*>(emb) + lv.offset[l];
      acc_t* gtable = gemb + (int64_t)lv.offset[l] * C;
      acc_t g[C];
      const pos_t* gyp = gy + (b * L + l) * C;
#pragma unroll
      for (int c = 0; c < C; ++c) g[c] = static_cast<acc_t>(gyp[c]);
      uint32_t idx_prev = 0;
      pos_t w_prev = pos_t(0);
#pragma unroll
      for (int corner = 0; corner < (1 << D); ++corner) {
        pos_t w = pos_t(1);
        uint32_t cg[D];
#pragma unroll
        for (int d = 0; d < D; ++d) {
          const bool bit = (corner >> d) & 1;
          w *= bit ? frac[d] : pos_t(1) - frac[d];
          cg[d] = pg[d] + (bit ? 1u : 0u);
        }
        const uint32_t idx = grid_index<D>(cg, lv.res[l], size, hashed);
        // corners 2k and 2k+1 differ in x only: with pair_atomics their updates go out together at the odd one
        const bool paired = pair_atomics && (corner & 1) &&
                            atomic_add_pair<acc_t, C>(gtable, idx_prev, idx, g, static_cast<acc_t>(w_prev),
                                                      static_cast<acc_t>(w));
        if (pair_atomics && !(corner & 1)) {  // the even corner waits for its odd partner
          idx_prev = idx;
          w_prev = w;
        } else if (!paired) {
          if (pair_atomics) {  // types without the 16-byte path: the held even corner, then this one
            if (vec_atomics) atomic_add_vec<acc_t, C>(gtable + (int64_t)idx_prev * C, g, static_cast<acc_t>(w_prev));
            else atomic_add_scalar<acc_t, C>(gtable + (int64_t)idx_prev * C, g, static_cast<acc_t>(w_prev));
          }
          if (vec_atomics) {
            atomic_add_vec<acc_t, C>(gtable + (int64_t)idx * C, g, static_cast<acc_t>(w));
          } else {
            atomic_add_scalar<acc_t, C>(gtable + (int64_t)idx * C, g, static_cast<acc_t>(w));
          }
        }
        if (gx != nullptr) {
          const Vec<emb_t, C> v = load_row<emb_t, C>(table + idx);
          pos_t dot = pos_t(0);
#pragma unroll
          for (int c = 0; c < C; ++c) dot += static_cast<pos_t>(g[c]) * static_cast<pos_t>(v.v[c]);
#pragma unroll
          for (int d = 0; d < D; ++d) {
            pos_t dw = ((corner >> d) & 1) ? pos_t(1) : pos_t(-1);
#pragma unroll
            for (int e = 0; e < D; ++e) {
              if (e != d) dw *= ((corner >> e) & 1) ? frac[e] : pos_t(1) - frac[e];
            }
            gxp[d] += dw * dot;
          }
        }
      }
      const pos_t dpdx = scale * inv2b;
#pragma unroll
      for (int d = 0; d < D; ++d) gxp[d] *= dpdx;
    }
  }
  if (gx == nullptr) return;
  if (shfl_reduce) {  // Lg is a power of two <= 32: the Lg lanes of a point are aligned inside one warp
#pragma unroll
    for (int d = 0; d < D; ++d) {
      pos_t v = gxp[d];
      for (int off = Lg / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      gxp[d] = v;
    }
    if (valid && l == lv.l0) {  // earlier groups' launches wrote their part already (same stream, in order)
#pragma unroll
      for (int d = 0; d < D; ++d) gx[b * D + d] = gx_accum ? gx[b * D + d] + gxp[d] : gxp[d];
    }
  } else if (valid) {
#pragma unroll
    for (int d = 0; d < D; ++d) atomicAdd(gx + b * D + d, gxp[d]);
  }
}

constexpr uint32_t kNoRow = 0xFFFFFFFFu;   // inactive lanes' key
constexpr uint32_t kPairKey = 0x80000000u;  // high bit: the key names an aligned 2-row block

// Lanes of the warp with equal `key` form a group; every lane of a group gets the group's sum of `v`. Returns the
// group's lane mask (its leader is the lowest lane).
template <typename acc_t, int N>
__device__ inline unsigned group_sum(uint32_t key, acc_t (&v)[N]) {
  const unsigned peers = __match_any_sync(0xffffffffu, key);
  if (__popc(peers) > 1) {  // every lane of a group takes this branch together and loops the same number of times
    acc_t sum[N];
#pragma unroll
    for (int c = 0; c < N; ++c) sum[c] = acc_t(0);
    unsigned m = peers;
    while (m) {
      const int src = __ffs(m) - 1;
      m &= m - 1;
#pragma unroll
      for (int c = 0; c < N; ++c) sum[c] += __shfl_sync(peers, v[c], src);
    }
#pragma unroll
    for (int c = 0; c < N; ++c) v[c] = sum[c];
  }
  return peers;
}

// Two consecutive rows (2 x C values, 16-byte aligned) in one 16-byte atomic where the GPU has them (C == 2 float,
// sm_90), else per row.
template <typename acc_t, int C>
__device__ inline void atomic_add_block(acc_t* dst, const acc_t (&v)[2 * C]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same<acc_t, float>::value && C == 2) {
    atomicAdd(reinterpret_cast<float4*>(dst), make_float4(v[0], v[1], v[2], v[3]));
  } else
#endif
  {
#pragma unroll
    for (int c = 0; c < 2 * C; ++c) atomicAdd(dst + c, v[c]);
  }
}

// Backward, point-major variant: a block is 32 points (threadIdx.x) x Lg levels (threadIdx.y), so a warp holds one
// level of 32 consecutive points. Samples marched along rays are spatially coherent, so at coarse levels many
// lanes update the same table row: __match_any_sync groups them, the group sums its values with shuffles and one
// leader issues the atomic (instead of up to 32 serialised atomics on one address). grad_output is staged through
// shared memory so its reads stay coalesced, and d/dx is reduced over the levels in shared memory.
template <typename pos_t, typename emb_t, typename acc_t, int D, int C>
__global__ void grid_bwd_agg_kernel(const pos_t* __restrict__ gy, const pos_t* __restrict__ x,
                                    const emb_t* __restrict__ emb, int64_t B, const Levels lv, pos_t bound,
                                    pos_t inv2b, bool vec_atomics, bool pair_atomics, bool gx_accum,
                                    acc_t* __restrict__ gemb, pos_t* __restrict__ gx) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int Lg = lv.Lg;
  const int row = lv.L * C, rowg = Lg * C;  // grad_output row; this group's slice of it
  pos_t* s_gy = reinterpret_cast<pos_t*>(smem_raw);  // [32][Lg*C]
  pos_t* s_gx = s_gy + 32 * rowg;                    // [Lg][32][D]
  const int lane = threadIdx.x, lg = threadIdx.y, l = lv.l0 + lg;
  const int tid = lg * 32 + lane, nthreads = 32 * Lg;
  const int64_t b0 = (int64_t)blockIdx.x * 32;
  for (int i = tid; i < 32 * rowg; i += nthreads) {
    const int p = i / rowg;
    s_gy[i] = (b0 + p) < B ? gy[(b0 + p) * row + lv.l0 * C + (i - p * rowg)] : pos_t(0);
  }
  __syncthreads();
  const int64_t b = b0 + lane;
  uint32_t pg[D];
  pos_t frac[D];
  const pos_t scale = (pos_t)lv.scale[l];
  const bool active = (b < B) && locate<pos_t, D>(x, b, bound, inv2b, scale, pg, frac);
  const uint32_t size = lv.offset[l + 1] - lv.offset[l];
  const bool hashed = (lv.hashed >> l) & 1u;
  const Vec<emb_t, C>* table = reinterpret_cast<const Vec<emb_t, C>*>(emb) + lv.offset[l];
  acc_t* gtable = gemb + (int64_t)lv.offset[l] * C;
  acc_t g[C];
#pragma unroll
  for (int c = 0; c < C; ++c) g[c] = active ? static_cast<acc_t>(s_gy[lane * rowg + lg * C + c]) : acc_t(0);
  pos_t gxp[D];
#pragma unroll
  for (int d = 0; d < D; ++d) gxp[d] = pos_t(0);
#pragma unroll
  for (int corner = 0; corner < (1 << D); corner += 2) {  // corners 2k, 2k+1: x and x+1 of one cell row
    pos_t w[2];
    uint32_t idx[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      w[k] = pos_t(1);
      uint32_t cg[D];
#pragma unroll
      for (int d = 0; d < D; ++d) {
        const bool bit = ((corner + k) >> d) & 1;
        w[k] *= bit ? frac[d] : pos_t(1) - frac[d];
        cg[d] = pg[d] + (bit ? 1u : 0u);
      }
      idx[k] = active ? grid_index<D>(cg, lv.res[l], size, hashed) : kNoRow;  // idx < size < 2^31
    }
    // Round A: a pair whose rows share an aligned 16-byte block (idx0 ^ 1 == idx1) as one 4-float update keyed by
    // the block (high bit set), any other lane its first row. Round B: the second row of the unpaired lanes.
    // Lanes with equal keys (same rows, as marched samples often are at coarse levels) sum first; one leader adds.
    const bool merged = pair_atomics && active && (idx[0] ^ 1u) == idx[1];
    {
      const uint32_t key = merged ? (kPairKey | (idx[0] >> 1)) : idx[0];
      acc_t v[2 * C];
      const int lo = idx[0] < idx[1] ? 0 : 1;
#pragma unroll
      for (int c = 0; c < C; ++c) {
        v[c] = active ? static_cast<acc_t>(merged ? w[lo] : w[0]) * g[c] : acc_t(0);
        v[C + c] = merged ? static_cast<acc_t>(w[1 - lo]) * g[c] : acc_t(0);
      }
      const unsigned peers = group_sum<acc_t, 2 * C>(key, v);
      if (active && lane == __ffs(peers) - 1) {
        acc_t v0[C];
#pragma unroll
        for (int c = 0; c < C; ++c) v0[c] = v[c];
        if (merged) {
          atomic_add_block<acc_t, C>(gtable + (int64_t)(idx[0] & ~1u) * C, v);
        } else if (vec_atomics) {
          atomic_add_vec<acc_t, C>(gtable + (int64_t)idx[0] * C, v0, acc_t(1));
        } else {
          atomic_add_scalar<acc_t, C>(gtable + (int64_t)idx[0] * C, v0, acc_t(1));
        }
      }
    }
    {
      const bool single = active && !merged;
      const uint32_t key = single ? idx[1] : kNoRow;
      acc_t v[C];
#pragma unroll
      for (int c = 0; c < C; ++c) v[c] = single ? static_cast<acc_t>(w[1]) * g[c] : acc_t(0);
      const unsigned peers = group_sum<acc_t, C>(key, v);
      if (single && lane == __ffs(peers) - 1) {
        if (vec_atomics) {
          atomic_add_vec<acc_t, C>(gtable + (int64_t)idx[1] * C, v, acc_t(1));
        } else {
          atomic_add_scalar<acc_t, C>(gtable + (int64_t)idx[1] * C, v, acc_t(1));
        }
      }
    }
    if (gx != nullptr && active) {
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const Vec<emb_t, C> e = load_row<emb_t, C>(table + idx[k]);
        pos_t dot = pos_t(0);
#pragma unroll
        for (int c = 0; c < C; ++c) dot += static_cast<pos_t>(g[c]) * static_cast<pos_t>(e.v[c]);
#pragma unroll
        for (int d = 0; d < D; ++d) {
          pos_t dw = (((corner + k) >> d) & 1) ? pos_t(1) : pos_t(-1);
#pragma unroll
          for (int f = 0; f < D; ++f) {
            if (f != d) dw *= (((corner + k) >> f) & 1) ? frac[f] : pos_t(1) - frac[f];
          }
          gxp[d] += dw * dot;
        }
      }
    }
  }
  if (gx == nullptr) return;  // uniform over the block: no barrier is skipped by part of it
  const pos_t dpdx = scale * inv2b;
#pragma unroll
  for (int d = 0; d < D; ++d) s_gx[(lg * 32 + lane) * D + d] = gxp[d] * dpdx;
  __syncthreads();
  if (lg == 0 && b < B) {  // earlier groups' launches wrote their part already (same stream, in order)
#pragma unroll
    for (int d = 0; d < D; ++d) {
      pos_t acc = pos_t(0);
      for (int ll = 0; ll < Lg; ++ll) acc += s_gx[(ll * 32 + lane) * D + d];
      gx[b * D + d] = gx_accum ? gx[b * D + d] + acc : acc;
    }
  }
}

Levels make_levels(const std::vector<int64_t>& offsets, const std::vector<int64_t>& res,
                   const std::vector<double>& scales, const std::vector<bool>& hashed) {
  const int L = (int)res.size();
  TORCH_CHECK(L >= 1 && L <= kMaxLevels, "grid encoder supports 1..", kMaxLevels, " levels, got ", L);
  TORCH_CHECK((int)offsets.size() == L + 1 && (int)scales.size() == L && (int)hashed.size() == L,
              "offsets must have L+1 entries and resolutions/scales/hashed L");
  TORCH_CHECK(offsets[L] < (int64_t(1) << 32), "grid encoder tables exceed 2^32 entries");
  Levels lv;
  lv.L = L;
  lv.l0 = 0;
  lv.Lg = L;
  lv.hashed = 0;
  for (int l = 0; l <= L; ++l) lv.offset[l] = (uint32_t)offsets[l];
  for (int l = 0; l < L; ++l) {
    TORCH_CHECK(offsets[l + 1] > offsets[l], "level ", l, " has an empty table");
    TORCH_CHECK(offsets[l + 1] - offsets[l] < (int64_t(1) << 31), "level ", l, " holds 2^31 entries or more");
    lv.res[l] = (uint32_t)res[l];
    lv.scale[l] = (float)scales[l];
    if (hashed[l]) lv.hashed |= 1u << l;
  }
  return lv;
}

// Level groups for one pass: runs of whole chunks of `chunk` levels (chunk x C output values fill one 32-byte
// sector, so no output sector is written by two launches), a run growing while its tables (`row_bytes` per entry)
// stay within the budget (TALKFIELD_GRID_GROUP_MB, default 16; 0 = all levels in one launch). Small tables, such as
// the head field's 2^16-entry levels (8 MB in all), stay one launch.
std::vector<std::pair<int, int>> level_groups(const Levels& lv, int C, size_t out_elem, size_t row_bytes) {
  const char* env = std::getenv("TALKFIELD_GRID_GROUP_MB");
  const double budget = (env != nullptr ? std::atof(env) : 16.0) * 1024.0 * 1024.0;
  std::vector<std::pair<int, int>> groups;
  if (budget <= 0.0) {
    groups.emplace_back(0, lv.L);
    return groups;
  }
  const int chunk = std::max(1, std::min(lv.L, (int)(32 / (C * out_elem))));
  auto bytes = [&](int a, int b) { return double(lv.offset[std::min(b, lv.L)] - lv.offset[a]) * row_bytes; };
  int l = 0;
  while (l < lv.L) {
    const int start = l;
    l = std::min(l + chunk, lv.L);
    while (l < lv.L && bytes(start, l + chunk) <= budget) l = std::min(l + chunk, lv.L);
    groups.emplace_back(start, l - start);
  }
  return groups;
}

Levels with_group(const Levels& lv, const std::pair<int, int>& g) {
  Levels out = lv;
  out.l0 = g.first;
  out.Lg = g.second;
  return out;
}

template <typename pos_t, typename emb_t>
void launch_fwd(const at::Tensor& x, const at::Tensor& emb, const Levels& lv, double bound, int D, int C,
                at::Tensor& out) {
  TORCH_CHECK((D == 2 || D == 3) && (C == 1 || C == 2 || C == 4),
              "grid encoder: input_dim must be 2 or 3 and level_dim 1, 2 or 4 (got ", D, ", ", C, ")");
  const int64_t B = x.size(0);
  auto stream = at::cuda::getCurrentCUDAStream();
  const pos_t* xp = x.data_ptr<pos_t>();
  const emb_t* ep = reinterpret_cast<const emb_t*>(emb.data_ptr());
  pos_t* op = out.data_ptr<pos_t>();
  for (const auto& grp : level_groups(lv, C, sizeof(pos_t), sizeof(emb_t) * C)) {
    const Levels lg = with_group(lv, grp);
    const int64_t threads = B * lg.Lg;
#define TF_FWD(D_, C_)                                                                                     \
  grid_fwd_kernel<pos_t, emb_t, D_, C_><<<blocks_for(threads), kThreads, 0, stream>>>(xp, ep, B, lg, (pos_t)bound, \
                                                                                   (pos_t)(0.5 / bound), op)
    if (D == 2 && C == 1) TF_FWD(2, 1);
    else if (D == 2 && C == 2) TF_FWD(2, 2);
    else if (D == 2 && C == 4) TF_FWD(2, 4);
    else if (D == 3 && C == 1) TF_FWD(3, 1);
    else if (D == 3 && C == 2) TF_FWD(3, 2);
    else TF_FWD(3, 4);
#undef TF_FWD
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename pos_t, typename emb_t, typename acc_t>
void launch_bwd(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& emb, const Levels& lv, double bound, int D,
                int C, at::Tensor& gemb, pos_t* gx) {
  TORCH_CHECK((D == 2 || D == 3) && (C == 1 || C == 2 || C == 4),
              "grid encoder: input_dim must be 2 or 3 and level_dim 1, 2 or 4 (got ", D, ", ", C, ")");
  const int64_t B = x.size(0);
  auto stream = at::cuda::getCurrentCUDAStream();
  // sm_90 vector atomics by default; TALKFIELD_GRID_SCALAR_ATOMICS=1 selects one atomic per feature (benchmarking)
  const char* scalar_env = std::getenv("TALKFIELD_GRID_SCALAR_ATOMICS");
  const bool vec = !(scalar_env != nullptr && scalar_env[0] == '1');
  // TALKFIELD_GRID_BWD (benchmarking): agg (default) = the point-major aggregating kernel, one atomic per row;
  // aggpair = the same with one 16-byte atomic per aligned x-neighbour row pair; lane = the level-fastest kernel;
  // lanepair = lane with the pair atomics. On the H100 (bench/notes_cuda_ext.md, run 6): uniformly random points in
  // 2^19-entry tables 2.54 (agg) / 2.54 (aggpair) / 2.51 (lane) / 2.11 ms (lanepair); the same points Morton-sorted,
  // as marched samples are, 2.35 (agg) / 2.53 (aggpair) / 2.59 ms (lanepair): agg stays the default.
  const auto groups = level_groups(lv, C, sizeof(pos_t), sizeof(acc_t) * C + (gx != nullptr ? sizeof(emb_t) * C : 0));
  const char* variant = std::getenv("TALKFIELD_GRID_BWD");
  const std::string kernel = variant != nullptr ? variant : "agg";
  const bool lane = kernel == "lane" || kernel == "lanepair";
  const bool pair = kernel == "lanepair" || kernel == "aggpair";
  const pos_t* gp = gy.data_ptr<pos_t>();
  const pos_t* xp = x.data_ptr<pos_t>();
  const emb_t* ep = reinterpret_cast<const emb_t*>(emb.data_ptr());
  acc_t* ap = gemb.data_ptr<acc_t>();
  const pos_t pb = (pos_t)bound, inv = (pos_t)(0.5 / bound);
  bool first = true;
  for (const auto& grp : groups) {  // a group's working set: its gradient rows (+ embedding rows when d/dx reads them)
    const Levels lg = with_group(lv, grp);
    const bool accum = !first;
    first = false;
    const size_t smem = sizeof(pos_t) * 32 * lg.Lg * (C + D);
    const bool agg = !lane && smem <= 48 * 1024;
    const bool shfl = (32 % lg.Lg) == 0;
    const int64_t threads = B * lg.Lg;
    const dim3 agg_block(32, lg.Lg);
    const int agg_grid = static_cast<int>((B + 31) / 32);
#define TF_BWD(D_, C_)                                                                                           \
  if (agg) {                                                                                                     \
    grid_bwd_agg_kernel<pos_t, emb_t, acc_t, D_, C_><<<agg_grid, agg_block, smem, stream>>>(gp, xp, ep, B, lg, pb, \
                                                                                        inv, vec, pair, accum, ap, gx); \
  } else {                                                                                                       \
    grid_bwd_kernel<pos_t, emb_t, acc_t, D_, C_><<<blocks_for(threads), kThreads, 0, stream>>>(                  \
        gp, xp, ep, B, lg, pb, inv, shfl, vec, pair, accum, ap, gx);                                             \
  }
    if (D == 2 && C == 1) {
      TF_BWD(2, 1)
    } else if (D == 2 && C == 2) {
      TF_BWD(2, 2)
    } else if (D == 2 && C == 4) {
      TF_BWD(2, 4)
    } else if (D == 3 && C == 1) {
      TF_BWD(3, 1)
    } else if (D == 3 && C == 2) {
      TF_BWD(3, 2)
    } else {
      TF_BWD(3, 4)
    }
#undef TF_BWD
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void check_encode_args(const at::Tensor& x, const at::Tensor& emb) {
  TF_CHECK_INPUT(x);
  TF_CHECK_INPUT(emb);
  TORCH_CHECK(x.dim() == 2 && (x.size(1) == 2 || x.size(1) == 3), "inputs must be [B, 2] or [B, 3]");
  TORCH_CHECK(emb.dim() == 2, "embeddings must be [E, C]");
  TORCH_CHECK(x.device() == emb.device(), "inputs and embeddings must be on one device");
  const auto xt = x.scalar_type(), et = emb.scalar_type();
  TORCH_CHECK((xt == at::kFloat && (et == at::kFloat || et == at::kHalf || et == at::kBFloat16)) ||
                  (xt == at::kDouble && et == at::kDouble),
              "grid encoder: float32 inputs need float32/float16/bfloat16 embeddings, float64 inputs float64 "
              "embeddings (got ", xt, " / ", et, ")");
  const int64_t row = emb.size(1) * emb.element_size();
  TORCH_CHECK(reinterpret_cast<uintptr_t>(emb.data_ptr()) % row == 0, "embeddings must be aligned to one row");
}

}  // namespace

at::Tensor grid_encode_forward(at::Tensor x, at::Tensor emb, std::vector<int64_t> offsets, std::vector<int64_t> res,
                               std::vector<double> scales, std::vector<bool> hashed, double bound) {
  check_encode_args(x, emb);
  const Levels lv = make_levels(offsets, res, scales, hashed);
  TORCH_CHECK(emb.size(0) >= offsets.back(), "embeddings hold ", emb.size(0), " rows, the levels need ", offsets.back());
  const at::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0);
  const int D = (int)x.size(1), C = (int)emb.size(1);
  auto out = at::empty({B, (int64_t)lv.L * C}, x.options());
  if (B == 0) return out;
  if (x.scalar_type() == at::kDouble) {
    launch_fwd<double, double>(x, emb, lv, bound, D, C, out);
  } else if (emb.scalar_type() == at::kFloat) {
    launch_fwd<float, float>(x, emb, lv, bound, D, C, out);
  } else if (emb.scalar_type() == at::kHalf) {
    launch_fwd<float, at::Half>(x, emb, lv, bound, D, C, out);
  } else {
    launch_fwd<float, at::BFloat16>(x, emb, lv, bound, D, C, out);
  }
  return out;
}

std::vector<at::Tensor> grid_encode_backward(at::Tensor gy, at::Tensor x, at::Tensor emb, std::vector<int64_t> offsets,
                                             std::vector<int64_t> res, std::vector<double> scales,
                                             std::vector<bool> hashed, double bound, bool need_input_grad) {
  check_encode_args(x, emb);
  TF_CHECK_INPUT(gy);
  TORCH_CHECK(gy.scalar_type() == x.scalar_type(), "grad_output must have the inputs' dtype");
  const Levels lv = make_levels(offsets, res, scales, hashed);
  TORCH_CHECK(gy.dim() == 2 && gy.size(0) == x.size(0) && gy.size(1) == lv.L * emb.size(1), "grad_output shape");
  const at::cuda::CUDAGuard guard(x.device());
  const int D = (int)x.size(1), C = (int)emb.size(1);
  const bool is_double = x.scalar_type() == at::kDouble;
  auto gemb = at::zeros(emb.sizes(), emb.options().dtype(is_double ? at::kDouble : at::kFloat));
  at::Tensor gx;
  if (need_input_grad) gx = at::zeros(x.sizes(), x.options());
  if (x.size(0) > 0) {
    if (is_double) {
      launch_bwd<double, double, double>(gy, x, emb, lv, bound, D, C, gemb,
                                         need_input_grad ? gx.data_ptr<double>() : nullptr);
    } else {
      float* gxp = need_input_grad ? gx.data_ptr<float>() : nullptr;
      if (emb.scalar_type() == at::kFloat) launch_bwd<float, float, float>(gy, x, emb, lv, bound, D, C, gemb, gxp);
      else if (emb.scalar_type() == at::kHalf) launch_bwd<float, at::Half, float>(gy, x, emb, lv, bound, D, C, gemb, gxp);
      else launch_bwd<float, at::BFloat16, float>(gy, x, emb, lv, bound, D, C, gemb, gxp);
    }
  }
  if (gemb.scalar_type() != emb.scalar_type()) gemb = gemb.to(emb.scalar_type());
  return {gemb, gx};
}

}  // namespace tf
