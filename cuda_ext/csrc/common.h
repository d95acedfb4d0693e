// Shared helpers for the talkfield CUDA ops: argument checks and Morton codes.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstdint>

#define TF_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor (got ", (x).device(), ")")
#define TF_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define TF_CHECK_DTYPE(x, t) TORCH_CHECK((x).scalar_type() == (t), #x " must be ", (t), " (got ", (x).scalar_type(), ")")
#define TF_CHECK_INPUT(x) \
  TF_CHECK_CUDA(x);       \
  TF_CHECK_CONTIGUOUS(x)

namespace tf {

constexpr int kThreads = 128;

inline int blocks_for(int64_t n, int threads = kThreads) {
  return static_cast<int>((n + threads - 1) / threads);
}

// Spread the low 10 bits of v so that bit i lands on bit 3i.
__host__ __device__ inline uint32_t expand_bits(uint32_t v) {
  v = (v * 0x00010001u) & 0xFF0000FFu;
  v = (v * 0x00000101u) & 0x0F00F00Fu;
  v = (v * 0x00000011u) & 0xC30C30C3u;
  v = (v * 0x00000005u) & 0x49249249u;
  return v;
}

__host__ __device__ inline uint32_t compact_bits(uint32_t v) {
  v &= 0x49249249u;
  v = (v | (v >> 2)) & 0xC30C30C3u;
  v = (v | (v >> 4)) & 0x0F00F00Fu;
  v = (v | (v >> 8)) & 0xFF0000FFu;
  v = (v | (v >> 16)) & 0x0000FFFFu;
  return v;
}

__host__ __device__ inline uint32_t morton3d(uint32_t x, uint32_t y, uint32_t z) {
  return expand_bits(x) | (expand_bits(y) << 1) | (expand_bits(z) << 2);
}

}  // namespace tf
