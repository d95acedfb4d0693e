// Python bindings of the talkfield CUDA ops (one module, every op; see cuda_ext/_wrapper.py for the Python API).
#include <torch/extension.h>

#include <vector>

namespace tf {
std::vector<at::Tensor> near_far_from_aabb(at::Tensor rays_o, at::Tensor rays_d, at::Tensor aabb, double min_near);
at::Tensor packbits(at::Tensor grid, at::Tensor thresh);
at::Tensor morton3d_dilation(at::Tensor grid, int64_t res);
at::Tensor march_rays_train_count(at::Tensor rays_o, at::Tensor rays_d, at::Tensor bits, at::Tensor aabb,
                                  at::Tensor nears, at::Tensor fars, at::Tensor noise, int64_t res, double dt,
                                  int64_t max_steps);
void march_rays_train_write(at::Tensor rays_o, at::Tensor rays_d, at::Tensor bits, at::Tensor aabb, at::Tensor nears,
                            at::Tensor fars, at::Tensor noise, at::Tensor offsets, at::Tensor counts, at::Tensor xyzs,
                            at::Tensor dirs, at::Tensor deltas, int64_t res, double dt);
void march_rays(at::Tensor rays_o, at::Tensor rays_d, at::Tensor rays_t, at::Tensor rays_n, at::Tensor fars,
                at::Tensor alive, at::Tensor bits, at::Tensor aabb, int64_t res, double dt, int64_t n_step,
                int64_t max_steps, at::Tensor xyzs, at::Tensor dirs, at::Tensor deltas);
std::vector<at::Tensor> composite_rays_train_forward(at::Tensor sigmas, at::Tensor rgbs, at::Tensor ambient,
                                                     at::Tensor deltas, at::Tensor rays, double T_thresh);
std::vector<at::Tensor> composite_rays_train_backward(at::Tensor g_ws, at::Tensor g_amb, at::Tensor g_depth,
                                                      at::Tensor g_image, at::Tensor sigmas, at::Tensor rgbs,
                                                      at::Tensor deltas, at::Tensor rays, at::Tensor ws,
                                                      at::Tensor depth, at::Tensor image, double T_thresh,
                                                      int64_t k_amb);
void composite_rays(at::Tensor sigmas, at::Tensor rgbs, at::Tensor deltas, at::Tensor alive, at::Tensor rays_t,
                    at::Tensor ws, at::Tensor depth, at::Tensor image, double T_thresh, at::Tensor keep);
at::Tensor grid_encode_forward(at::Tensor x, at::Tensor emb, std::vector<int64_t> offsets, std::vector<int64_t> res,
                               std::vector<double> scales, std::vector<bool> hashed, double bound);
std::vector<at::Tensor> grid_encode_backward(at::Tensor gy, at::Tensor x, at::Tensor emb, std::vector<int64_t> offsets,
                                             std::vector<int64_t> res, std::vector<double> scales,
                                             std::vector<bool> hashed, double bound, bool need_input_grad);
}  // namespace tf

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("near_far_from_aabb", &tf::near_far_from_aabb);
  m.def("packbits", &tf::packbits);
  m.def("morton3d_dilation", &tf::morton3d_dilation);
  m.def("march_rays_train_count", &tf::march_rays_train_count);
  m.def("march_rays_train_write", &tf::march_rays_train_write);
  m.def("march_rays", &tf::march_rays);
  m.def("composite_rays_train_forward", &tf::composite_rays_train_forward);
  m.def("composite_rays_train_backward", &tf::composite_rays_train_backward);
  m.def("composite_rays", &tf::composite_rays);
  m.def("grid_encode_forward", &tf::grid_encode_forward);
  m.def("grid_encode_backward", &tf::grid_encode_backward);
}
