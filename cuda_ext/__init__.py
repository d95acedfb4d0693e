"""TalkField's CUDA ops (ray marching, compositing, occupancy grid, grid encoder), each with a PyTorch twin.

Importing this package never compiles anything; the first op called on CUDA tensors loads the extension
(prebuilt, else a just-in-time build, see :mod:`cuda_ext._backend`). On CPU tensors, or with
``set_backend("torch")``, the twins in :mod:`cuda_ext._torch_impl` run (a one-line notice says so).

Ops (N rays, M packed samples, A alive rays):
    near_far_from_aabb(rays_o [N,3], rays_d [N,3], aabb [6], min_near) -> nears [N], fars [N]
    march_rays_train(rays_o, rays_d, bitfield, aabb, nears, fars, *, resolution, dt, max_steps, perturb,
                     generator, buffer_size) -> xyzs [M,3], dirs [M,3], deltas [M,2], rays [N,3] int32
    composite_rays_train(sigmas [M], rgbs [M,3], ambient [M] | [M,k], deltas [M,2], rays [N,3], T_thresh)
                     -> weights_sum [N], ambient_sum [N] | [N,k], depth [N], image [N,3]
    march_rays / composite_rays / render_inference: the inference loop
    OccupancyGrid, GridEncoder (nn.Modules); grid_encode, packbits, morton3d(_invert), morton3d_dilation

grid_encode and composite_rays_train are PyTorch custom operators (``torch.ops.talkfield.*``, see
:mod:`cuda_ext._ops`) with fake implementations and registered backwards, so ``torch.compile(fullgraph=True)``
traces a field through them; registering them at import compiles nothing.
"""

from ._backend import is_available
from ._wrapper import (
    BACKENDS,
    backend,
    composite_rays,
    composite_rays_train,
    get_backend,
    grid_encode,
    march_rays,
    march_rays_train,
    morton3d,
    morton3d_dilation,
    morton3d_invert,
    near_far_from_aabb,
    packbits,
    render_inference,
    set_backend,
)
from .grid_encoder import GridEncoder
from .occupancy import OccupancyGrid

__all__ = [
    "BACKENDS", "GridEncoder", "OccupancyGrid", "backend", "composite_rays", "composite_rays_train", "get_backend",
    "grid_encode", "is_available", "march_rays", "march_rays_train", "morton3d", "morton3d_dilation",
    "morton3d_invert", "near_far_from_aabb", "packbits", "render_inference", "set_backend",
]
