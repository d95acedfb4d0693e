// Ray/box intersection, occupancy-grid helpers, training and inference ray marching, alpha compositing.
//
// The marcher performs exactly the float32 operations of cuda_ext._torch_impl._march_core, in the same order,
// with explicit round-to-nearest intrinsics so that nvcc cannot fuse a multiply and an add: occupancy is a
// discrete function of the sample position, and a one-ulp difference at a cell face would change which samples
// a ray gets. One thread marches one ray.

#include "common.h"

#include <cmath>
#include <limits>

namespace tf {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// ------------------------------------------------------------------------------------------------ near / far
__global__ void near_far_kernel(const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                const float* __restrict__ aabb, float min_near, int64_t n,
                                float* __restrict__ nears, float* __restrict__ fars) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  float near = -kInf, far = kInf;
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    const float o = rays_o[i * 3 + a];
    float d = rays_d[i * 3 + a];
    if (fabsf(d) < 1e-15f) d = copysignf(1e-15f, d);
    const float inv = __fdiv_rn(1.0f, d);
    const float t0 = __fmul_rn(__fsub_rn(aabb[a], o), inv);
    const float t1 = __fmul_rn(__fsub_rn(aabb[a + 3], o), inv);
    near = fmaxf(near, fminf(t0, t1));
    far = fminf(far, fmaxf(t0, t1));
  }
  near = fmaxf(near, min_near);
  if (far <= near) near = far = kInf;
  nears[i] = near;
  fars[i] = far;
}

// ------------------------------------------------------------------------------------------------ grid helpers
__global__ void packbits_kernel(const float* __restrict__ grid, const float* __restrict__ thresh, int64_t n_bytes,
                                uint8_t* __restrict__ bits) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n_bytes) return;
  const float th = thresh[0];
  uint8_t b = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) b |= (grid[i * 8 + k] > th ? 1u : 0u) << k;
  bits[i] = b;
}

__global__ void dilation_kernel(const float* __restrict__ grid, int res, int64_t n, float* __restrict__ out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint32_t code = static_cast<uint32_t>(i);
  const int c[3] = {(int)compact_bits(code), (int)compact_bits(code >> 1), (int)compact_bits(code >> 2)};
  float v = grid[i];
#pragma unroll
  for (int a = 0; a < 3; ++a) {
#pragma unroll
    for (int s = -1; s <= 1; s += 2) {
      int nb[3] = {c[0], c[1], c[2]};
      nb[a] += s;
      if (nb[a] < 0 || nb[a] >= res) continue;
      v = fmaxf(v, grid[morton3d(nb[0], nb[1], nb[2])]);
    }
  }
  out[i] = v;
}

// ------------------------------------------------------------------------------------------------ marching core
struct Grid {
  const uint8_t* bits;
  float amin[3];
  float scale[3];  // cells per unit length
  int res;
};

__device__ inline Grid make_grid(const uint8_t* bits, const float* aabb, int res) {
  Grid g;
  g.bits = bits;
  g.res = res;
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    g.amin[a] = aabb[a];
    g.scale[a] = __fdiv_rn((float)res, __fsub_rn(aabb[a + 3], aabb[a]));
  }
  return g;
}

// March one ray from t while t < far and fewer than `budget` samples were emitted. emit(k, t) receives each
// occupied sample. Returns the t after the last lattice step.
template <typename Emit>
__device__ inline float march_ray(const float o[3], const float d[3], float t, float far, int budget, float dt,
                                  const Grid& g, int& count, Emit emit) {
  float gd[3];
#pragma unroll
  for (int a = 0; a < 3; ++a) gd[a] = __fmul_rn(d[a], g.scale[a]);
  const float top = (float)(g.res - 1);
  int n = 0;
  while (t < far && n < budget) {
    float gp[3], cell[3];
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const float x = __fadd_rn(o[a], __fmul_rn(t, d[a]));
      gp[a] = __fmul_rn(__fsub_rn(x, g.amin[a]), g.scale[a]);
      cell[a] = fminf(fmaxf(floorf(gp[a]), 0.0f), top);
    }
    const uint32_t code = morton3d((uint32_t)cell[0], (uint32_t)cell[1], (uint32_t)cell[2]);
    const bool occ = (__ldg(g.bits + (code >> 3)) >> (code & 7u)) & 1u;
    if (occ) {
      emit(n, t);
      ++n;
      t = __fadd_rn(t, dt);
    } else {
      float q = kInf;
#pragma unroll
      for (int a = 0; a < 3; ++a) {
        if (d[a] != 0.0f) {
          const float bnd = cell[a] + (d[a] > 0.0f ? 1.0f : 0.0f);
          q = fminf(q, __fdiv_rn(__fsub_rn(bnd, gp[a]), gd[a]));
        }
      }
      const float tt = __fadd_rn(t, q);
      do {
        t = __fadd_rn(t, dt);
      } while (t < tt);
    }
  }
  count = n;
  return t;
}

__device__ inline void load3(const float* p, int64_t i, float v[3]) {
  v[0] = p[i * 3];
  v[1] = p[i * 3 + 1];
  v[2] = p[i * 3 + 2];
}

__device__ inline float start_t(const float* nears, const float* noise, bool perturb, int64_t i, float dt) {
  const float near = nears[i];
  return perturb ? __fadd_rn(near, __fmul_rn(noise[i], dt)) : near;
}

__global__ void march_train_count_kernel(const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                         const uint8_t* __restrict__ bits, const float* __restrict__ aabb,
                                         const float* __restrict__ nears, const float* __restrict__ fars,
                                         const float* __restrict__ noise, bool perturb, int res, float dt,
                                         int max_steps, int64_t n_rays, int* __restrict__ counts) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n_rays) return;
  const Grid g = make_grid(bits, aabb, res);
  float o[3], d[3];
  load3(rays_o, i, o);
  load3(rays_d, i, d);
  int n = 0;
  march_ray(o, d, start_t(nears, noise, perturb, i, dt), fars[i], max_steps, dt, g, n, [](int, float) {});
  counts[i] = n;
}

__global__ void march_train_write_kernel(const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                         const uint8_t* __restrict__ bits, const float* __restrict__ aabb,
                                         const float* __restrict__ nears, const float* __restrict__ fars,
                                         const float* __restrict__ noise, bool perturb,
                                         const int* __restrict__ offsets, const int* __restrict__ counts, int res,
                                         float dt, int64_t n_rays, float* __restrict__ xyzs,
                                         float* __restrict__ dirs, float* __restrict__ deltas) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n_rays) return;
  const int cnt = counts[i];
  if (cnt == 0) return;
  const Grid g = make_grid(bits, aabb, res);
  float o[3], d[3];
  load3(rays_o, i, o);
  load3(rays_d, i, d);
  const int64_t base = offsets[i];
  int n = 0;
  // budget = the counted samples: the same arithmetic re-emits them, and never writes past this ray's slots
  march_ray(o, d, start_t(nears, noise, perturb, i, dt), fars[i], cnt, dt, g, n, [&](int k, float t) {
    const int64_t s = base + k;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      xyzs[s * 3 + a] = __fadd_rn(o[a], __fmul_rn(t, d[a]));
      dirs[s * 3 + a] = d[a];
    }
    deltas[s * 2] = dt;
    deltas[s * 2 + 1] = t;
  });
}

__global__ void march_infer_kernel(const float* __restrict__ rays_o, const float* __restrict__ rays_d,
                                   float* __restrict__ rays_t, int* __restrict__ rays_n,
                                   const float* __restrict__ fars, const int* __restrict__ alive,
                                   const uint8_t* __restrict__ bits, const float* __restrict__ aabb, int res,
                                   float dt, int n_step, int max_steps, int64_t n_alive, float* __restrict__ xyzs,
                                   float* __restrict__ dirs, float* __restrict__ deltas) {
  const int64_t a = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (a >= n_alive) return;
  const int64_t r = alive[a];
  const Grid g = make_grid(bits, aabb, res);
  float o[3], d[3];
  load3(rays_o, r, o);
  load3(rays_d, r, d);
  const int n0 = rays_n[r];
  const int budget = max(0, min(n_step, max_steps - n0));
  const float far = fars[r];
  const int64_t base = a * n_step;
  int n = 0;
  const float t_end = march_ray(o, d, rays_t[r], far, budget, dt, g, n, [&](int k, float t) {
    const int64_t s = base + k;
#pragma unroll
    for (int c = 0; c < 3; ++c) xyzs[s * 3 + c] = __fadd_rn(o[c], __fmul_rn(t, d[c]));
    deltas[s * 2] = dt;
    deltas[s * 2 + 1] = t;
  });
  for (int k = 0; k < n_step; ++k) {
    const int64_t s = base + k;
#pragma unroll
    for (int c = 0; c < 3; ++c) dirs[s * 3 + c] = d[c];
    if (k >= n) {
#pragma unroll
      for (int c = 0; c < 3; ++c) xyzs[s * 3 + c] = 0.0f;
      deltas[s * 2] = 0.0f;
      deltas[s * 2 + 1] = 0.0f;
    }
  }
  const int new_n = n0 + n;
  rays_t[r] = (t_end >= far || new_n >= max_steps) ? kInf : t_end;
  rays_n[r] = new_n;
}

// ------------------------------------------------------------------------------------------------ compositing
template <typename scalar_t>
__global__ void composite_train_fwd_kernel(const scalar_t* __restrict__ sigmas, const scalar_t* __restrict__ rgbs,
                                           const scalar_t* __restrict__ amb, int k_amb,
                                           const scalar_t* __restrict__ deltas, const int* __restrict__ rays,
                                           int64_t n_rays, scalar_t T_thresh, scalar_t* __restrict__ ws_out,
                                           scalar_t* __restrict__ amb_out, scalar_t* __restrict__ depth_out,
                                           scalar_t* __restrict__ image_out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n_rays) return;
  const int64_t idx = rays[i * 3], off = rays[i * 3 + 1];
  const int cnt = rays[i * 3 + 2];
  scalar_t T = 1, ws = 0, dep = 0, r = 0, g = 0, b = 0;
  for (int c = 0; c < k_amb; ++c) amb_out[idx * k_amb + c] = 0;
  for (int j = 0; j < cnt; ++j) {
    const int64_t s = off + j;
    const scalar_t dt = deltas[s * 2], t = deltas[s * 2 + 1];
    const scalar_t e = exp(-sigmas[s] * dt);
    const scalar_t w = (scalar_t(1) - e) * T;
    ws += w;
    dep += w * t;
    r += w * rgbs[s * 3];
    g += w * rgbs[s * 3 + 1];
    b += w * rgbs[s * 3 + 2];
    for (int c = 0; c < k_amb; ++c) amb_out[idx * k_amb + c] += amb[s * k_amb + c];
    T *= e;
    if (T < T_thresh) break;
  }
  ws_out[idx] = ws;
  depth_out[idx] = dep;
  image_out[idx * 3] = r;
  image_out[idx * 3 + 1] = g;
  image_out[idx * 3 + 2] = b;
}

template <typename scalar_t>
__global__ void composite_train_bwd_kernel(
    const scalar_t* __restrict__ g_ws, const scalar_t* __restrict__ g_amb, const scalar_t* __restrict__ g_depth,
    const scalar_t* __restrict__ g_image, const scalar_t* __restrict__ sigmas, const scalar_t* __restrict__ rgbs,
    const scalar_t* __restrict__ deltas, const int* __restrict__ rays, const scalar_t* __restrict__ ws_fin,
    const scalar_t* __restrict__ depth_fin, const scalar_t* __restrict__ image_fin, int64_t n_rays, int k_amb,
    scalar_t T_thresh, scalar_t* __restrict__ v_sigmas, scalar_t* __restrict__ v_rgbs, scalar_t* __restrict__ v_amb) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n_rays) return;
  const int64_t idx = rays[i * 3], off = rays[i * 3 + 1];
  const int cnt = rays[i * 3 + 2];
  const scalar_t gw = g_ws[idx], gd = g_depth[idx];
  const scalar_t gr = g_image[idx * 3], gg = g_image[idx * 3 + 1], gb = g_image[idx * 3 + 2];
  const scalar_t WS = ws_fin[idx], D = depth_fin[idx];
  const scalar_t R = image_fin[idx * 3], G = image_fin[idx * 3 + 1], B = image_fin[idx * 3 + 2];
  scalar_t T = 1, ws = 0, dep = 0, r = 0, g = 0, b = 0;
  for (int j = 0; j < cnt; ++j) {
    const int64_t s = off + j;
    const scalar_t dt = deltas[s * 2], t = deltas[s * 2 + 1];
    const scalar_t cr = rgbs[s * 3], cg = rgbs[s * 3 + 1], cb = rgbs[s * 3 + 2];
    const scalar_t e = exp(-sigmas[s] * dt);
    const scalar_t w = (scalar_t(1) - e) * T;
    ws += w;
    dep += w * t;
    r += w * cr;
    g += w * cg;
    b += w * cb;
    const scalar_t Tn = T * e;
    // d(sum_j w_j c_j)/d sigma_s = dt_s * (T_{s+1} c_s - sum_{j>s} w_j c_j)
    v_sigmas[s] = dt * (gw * (Tn - (WS - ws)) + gd * (Tn * t - (D - dep)) + gr * (Tn * cr - (R - r)) +
                        gg * (Tn * cg - (G - g)) + gb * (Tn * cb - (B - b)));
    v_rgbs[s * 3] = w * gr;
    v_rgbs[s * 3 + 1] = w * gg;
    v_rgbs[s * 3 + 2] = w * gb;
    for (int c = 0; c < k_amb; ++c) v_amb[s * k_amb + c] = g_amb[idx * k_amb + c];
    T = Tn;
    if (T < T_thresh) break;
  }
}

__global__ void composite_infer_kernel(const float* __restrict__ sigmas, const float* __restrict__ rgbs,
                                       const float* __restrict__ deltas, const int* __restrict__ alive,
                                       const float* __restrict__ rays_t, int n_step, int64_t n_alive, float T_thresh,
                                       float* __restrict__ ws_io, float* __restrict__ depth_io,
                                       float* __restrict__ image_io, bool* __restrict__ keep) {
  const int64_t a = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (a >= n_alive) return;
  const int64_t r = alive[a];
  float ws = ws_io[r], dep = depth_io[r];
  float cr = image_io[r * 3], cg = image_io[r * 3 + 1], cb = image_io[r * 3 + 2];
  for (int j = 0; j < n_step; ++j) {
    const int64_t s = a * n_step + j;
    const float dt = deltas[s * 2];
    if (!(dt > 0.0f)) break;
    const float T = 1.0f - ws;
    const float w = (1.0f - expf(-sigmas[s] * dt)) * T;
    ws += w;
    dep += w * deltas[s * 2 + 1];
    cr += w * rgbs[s * 3];
    cg += w * rgbs[s * 3 + 1];
    cb += w * rgbs[s * 3 + 2];
    if (1.0f - ws < T_thresh) break;
  }
  ws_io[r] = ws;
  depth_io[r] = dep;
  image_io[r * 3] = cr;
  image_io[r * 3 + 1] = cg;
  image_io[r * 3 + 2] = cb;
  keep[a] = (1.0f - ws >= T_thresh) && isfinite(rays_t[r]);
}

void check_rays(const at::Tensor& rays_o, const at::Tensor& rays_d) {
  TF_CHECK_INPUT(rays_o);
  TF_CHECK_INPUT(rays_d);
  TF_CHECK_DTYPE(rays_o, at::kFloat);
  TF_CHECK_DTYPE(rays_d, at::kFloat);
  TORCH_CHECK(rays_o.dim() == 2 && rays_o.size(1) == 3, "rays_o must be [N, 3]");
  TORCH_CHECK(rays_d.sizes() == rays_o.sizes(), "rays_d must have the shape of rays_o");
}

void check_grid(const at::Tensor& bits, const at::Tensor& aabb, int res) {
  TF_CHECK_INPUT(bits);
  TF_CHECK_INPUT(aabb);
  TF_CHECK_DTYPE(bits, at::kByte);
  TF_CHECK_DTYPE(aabb, at::kFloat);
  TORCH_CHECK(aabb.numel() == 6, "aabb must have 6 values");
  TORCH_CHECK(res > 0 && res <= 1024 && (res & (res - 1)) == 0, "resolution must be a power of two <= 1024");
  TORCH_CHECK(bits.numel() * 8 == (int64_t)res * res * res, "bitfield must have resolution^3/8 bytes");
}

}  // namespace

// ================================================================================================ host entry points
std::vector<at::Tensor> near_far_from_aabb(at::Tensor rays_o, at::Tensor rays_d, at::Tensor aabb, double min_near) {
  check_rays(rays_o, rays_d);
  TF_CHECK_INPUT(aabb);
  const at::cuda::CUDAGuard guard(rays_o.device());
  const int64_t n = rays_o.size(0);
  auto nears = at::empty({n}, rays_o.options());
  auto fars = at::empty({n}, rays_o.options());
  if (n > 0) {
    near_far_kernel<<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), aabb.data_ptr<float>(), (float)min_near, n,
        nears.data_ptr<float>(), fars.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {nears, fars};
}

at::Tensor packbits(at::Tensor grid, at::Tensor thresh) {
  TF_CHECK_INPUT(grid);
  TF_CHECK_INPUT(thresh);
  TF_CHECK_DTYPE(grid, at::kFloat);
  TF_CHECK_DTYPE(thresh, at::kFloat);
  TORCH_CHECK(grid.numel() % 8 == 0, "grid size must be a multiple of 8");
  const at::cuda::CUDAGuard guard(grid.device());
  const int64_t nb = grid.numel() / 8;
  auto bits = at::empty({nb}, grid.options().dtype(at::kByte));
  if (nb > 0) {
    packbits_kernel<<<blocks_for(nb), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        grid.data_ptr<float>(), thresh.data_ptr<float>(), nb, bits.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return bits;
}

at::Tensor morton3d_dilation(at::Tensor grid, int64_t res) {
  TF_CHECK_INPUT(grid);
  TF_CHECK_DTYPE(grid, at::kFloat);
  TORCH_CHECK(grid.numel() == res * res * res && res <= 1024 && (res & (res - 1)) == 0,
              "grid must hold res^3 cells, res a power of two <= 1024");
  const at::cuda::CUDAGuard guard(grid.device());
  auto out = at::empty_like(grid);
  const int64_t n = grid.numel();
  dilation_kernel<<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(grid.data_ptr<float>(), (int)res, n,
                                                                                     out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor march_rays_train_count(at::Tensor rays_o, at::Tensor rays_d, at::Tensor bits, at::Tensor aabb,
                                  at::Tensor nears, at::Tensor fars, at::Tensor noise, int64_t res, double dt,
                                  int64_t max_steps) {
  check_rays(rays_o, rays_d);
  check_grid(bits, aabb, (int)res);
  TF_CHECK_INPUT(nears);
  TF_CHECK_INPUT(fars);
  const int64_t n = rays_o.size(0);
  const bool perturb = noise.numel() > 0;
  if (perturb) {
    TF_CHECK_INPUT(noise);
    TORCH_CHECK(noise.numel() == n, "noise must have one value per ray");
  }
  const at::cuda::CUDAGuard guard(rays_o.device());
  auto counts = at::empty({n}, rays_o.options().dtype(at::kInt));
  if (n > 0) {
    march_train_count_kernel<<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), bits.data_ptr<uint8_t>(), aabb.data_ptr<float>(),
        nears.data_ptr<float>(), fars.data_ptr<float>(), perturb ? noise.data_ptr<float>() : nullptr, perturb,
        (int)res, (float)dt, (int)max_steps, n, counts.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return counts;
}

void march_rays_train_write(at::Tensor rays_o, at::Tensor rays_d, at::Tensor bits, at::Tensor aabb, at::Tensor nears,
                            at::Tensor fars, at::Tensor noise, at::Tensor offsets, at::Tensor counts, at::Tensor xyzs,
                            at::Tensor dirs, at::Tensor deltas, int64_t res, double dt) {
  check_rays(rays_o, rays_d);
  check_grid(bits, aabb, (int)res);
  TF_CHECK_INPUT(offsets);
  TF_CHECK_INPUT(counts);
  TF_CHECK_INPUT(xyzs);
  TF_CHECK_INPUT(dirs);
  TF_CHECK_INPUT(deltas);
  TF_CHECK_DTYPE(offsets, at::kInt);
  TF_CHECK_DTYPE(counts, at::kInt);
  const int64_t n = rays_o.size(0);
  const bool perturb = noise.numel() > 0;
  const at::cuda::CUDAGuard guard(rays_o.device());
  if (n > 0) {
    march_train_write_kernel<<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), bits.data_ptr<uint8_t>(), aabb.data_ptr<float>(),
        nears.data_ptr<float>(), fars.data_ptr<float>(), perturb ? noise.data_ptr<float>() : nullptr, perturb,
        offsets.data_ptr<int>(), counts.data_ptr<int>(), (int)res, (float)dt, n, xyzs.data_ptr<float>(),
        dirs.data_ptr<float>(), deltas.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void march_rays(at::Tensor rays_o, at::Tensor rays_d, at::Tensor rays_t, at::Tensor rays_n, at::Tensor fars,
                at::Tensor alive, at::Tensor bits, at::Tensor aabb, int64_t res, double dt, int64_t n_step,
                int64_t max_steps, at::Tensor xyzs, at::Tensor dirs, at::Tensor deltas) {
  check_rays(rays_o, rays_d);
  check_grid(bits, aabb, (int)res);
  TF_CHECK_INPUT(rays_t);
  TF_CHECK_INPUT(rays_n);
  TF_CHECK_INPUT(fars);
  TF_CHECK_INPUT(alive);
  TF_CHECK_DTYPE(rays_t, at::kFloat);
  TF_CHECK_DTYPE(rays_n, at::kInt);
  TF_CHECK_DTYPE(alive, at::kInt);
  const int64_t a = alive.numel();
  TORCH_CHECK(xyzs.numel() == a * n_step * 3 && deltas.numel() == a * n_step * 2, "output blocks have wrong sizes");
  const at::cuda::CUDAGuard guard(rays_o.device());
  if (a > 0) {
    march_infer_kernel<<<blocks_for(a), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), rays_t.data_ptr<float>(), rays_n.data_ptr<int>(),
        fars.data_ptr<float>(), alive.data_ptr<int>(), bits.data_ptr<uint8_t>(), aabb.data_ptr<float>(), (int)res,
        (float)dt, (int)n_step, (int)max_steps, a, xyzs.data_ptr<float>(), dirs.data_ptr<float>(),
        deltas.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::vector<at::Tensor> composite_rays_train_forward(at::Tensor sigmas, at::Tensor rgbs, at::Tensor ambient,
                                                     at::Tensor deltas, at::Tensor rays, double T_thresh) {
  TF_CHECK_INPUT(sigmas);
  TF_CHECK_INPUT(rgbs);
  TF_CHECK_INPUT(ambient);
  TF_CHECK_INPUT(deltas);
  TF_CHECK_INPUT(rays);
  TF_CHECK_DTYPE(rays, at::kInt);
  TORCH_CHECK(rgbs.scalar_type() == sigmas.scalar_type() && ambient.scalar_type() == sigmas.scalar_type() &&
                  deltas.scalar_type() == sigmas.scalar_type(),
              "sigmas, rgbs, ambient and deltas must share one dtype");
  const int64_t m = sigmas.numel(), n = rays.size(0), k = ambient.size(1);
  TORCH_CHECK(rgbs.size(0) == m && ambient.size(0) == m && deltas.size(0) == m, "per-sample inputs disagree on M");
  const at::cuda::CUDAGuard guard(sigmas.device());
  auto ws = at::zeros({n}, sigmas.options());
  auto amb = at::zeros({n, k}, sigmas.options());
  auto depth = at::zeros({n}, sigmas.options());
  auto image = at::zeros({n, 3}, sigmas.options());
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_rays_train_forward", [&] {
      composite_train_fwd_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          sigmas.data_ptr<scalar_t>(), rgbs.data_ptr<scalar_t>(), ambient.data_ptr<scalar_t>(), (int)k,
          deltas.data_ptr<scalar_t>(), rays.data_ptr<int>(), n, (scalar_t)T_thresh, ws.data_ptr<scalar_t>(),
          amb.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(), image.data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {ws, amb, depth, image};
}

std::vector<at::Tensor> composite_rays_train_backward(at::Tensor g_ws, at::Tensor g_amb, at::Tensor g_depth,
                                                      at::Tensor g_image, at::Tensor sigmas, at::Tensor rgbs,
                                                      at::Tensor deltas, at::Tensor rays, at::Tensor ws,
                                                      at::Tensor depth, at::Tensor image, double T_thresh,
                                                      int64_t k_amb) {
  for (auto* t : {&g_ws, &g_amb, &g_depth, &g_image, &sigmas, &rgbs, &deltas, &rays, &ws, &depth, &image}) {
    TF_CHECK_INPUT(*t);
  }
  const int64_t m = sigmas.numel(), n = rays.size(0);
  const at::cuda::CUDAGuard guard(sigmas.device());
  auto v_sigmas = at::zeros({m}, sigmas.options());
  auto v_rgbs = at::zeros({m, 3}, sigmas.options());
  auto v_amb = at::zeros({m, k_amb}, sigmas.options());
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_rays_train_backward", [&] {
      composite_train_bwd_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          g_ws.data_ptr<scalar_t>(), g_amb.data_ptr<scalar_t>(), g_depth.data_ptr<scalar_t>(),
          g_image.data_ptr<scalar_t>(), sigmas.data_ptr<scalar_t>(), rgbs.data_ptr<scalar_t>(),
          deltas.data_ptr<scalar_t>(), rays.data_ptr<int>(), ws.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(),
          image.data_ptr<scalar_t>(), n, (int)k_amb, (scalar_t)T_thresh, v_sigmas.data_ptr<scalar_t>(),
          v_rgbs.data_ptr<scalar_t>(), v_amb.data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {v_sigmas, v_rgbs, v_amb};
}

void composite_rays(at::Tensor sigmas, at::Tensor rgbs, at::Tensor deltas, at::Tensor alive, at::Tensor rays_t,
                    at::Tensor ws, at::Tensor depth, at::Tensor image, double T_thresh, at::Tensor keep) {
  for (auto* t : {&sigmas, &rgbs, &deltas, &alive, &rays_t, &ws, &depth, &image, &keep}) {
    TF_CHECK_INPUT(*t);
  }
  TF_CHECK_DTYPE(alive, at::kInt);
  TF_CHECK_DTYPE(keep, at::kBool);
  const int64_t a = alive.numel();
  const int64_t n_step = a > 0 ? sigmas.numel() / a : 0;
  TORCH_CHECK(a == 0 || (n_step * a == sigmas.numel() && deltas.numel() == 2 * sigmas.numel()),
              "sigmas/deltas must hold n_step samples per alive ray");
  const at::cuda::CUDAGuard guard(sigmas.device());
  if (a > 0) {
    composite_infer_kernel<<<blocks_for(a), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        sigmas.data_ptr<float>(), rgbs.data_ptr<float>(), deltas.data_ptr<float>(), alive.data_ptr<int>(),
        rays_t.data_ptr<float>(), (int)n_step, a, (float)T_thresh, ws.data_ptr<float>(), depth.data_ptr<float>(),
        image.data_ptr<float>(), keep.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace tf
