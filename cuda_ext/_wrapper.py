"""Public ops: each dispatches to the CUDA extension for CUDA tensors (when the backend allows it) and to its
twin in :mod:`cuda_ext._torch_impl` otherwise. Shapes use N rays, M packed samples, A alive rays.
The differentiable ops (grid_encode, composite_rays_train) go through the custom operators of
:mod:`cuda_ext._ops`, which make that choice when they run."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _backend
from . import _ops
from . import _torch_impl as _ti

_log = logging.getLogger("cuda_ext")
BACKENDS = ("auto", "cuda", "torch")
_state = {"backend": "auto", "noted_cpu": False, "noted_fallback": False}


def set_backend(name: str) -> None:
    """Select the implementation of every op: ``auto`` (CUDA kernels for CUDA tensors when the extension
    loads, else the twins), ``cuda`` (kernels or an error) or ``torch`` (twins everywhere). The grid
    encoder can additionally use tiny-cuda-nn per module (``GridEncoder(backend="tinycudann")``)."""
    if name not in BACKENDS:
        raise ValueError(f"cuda_ext backend {name!r} is unknown; choose one of {BACKENDS}")
    _state["backend"] = name


def get_backend() -> str:
    return _state["backend"]


@contextlib.contextmanager
def backend(name: str):
    """Context manager: ``with cuda_ext.backend("torch"): ...`` selects a backend for a block."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        _state["backend"] = old


def _require(pkg: str):
    try:
        return __import__(pkg)
    except ImportError as exc:
        raise ImportError(f"cuda_ext backend {pkg!r} needs the package {pkg!r}, which does not import here "
                          f"({exc}); install it or choose backend 'auto'/'cuda'/'torch'") from exc


def _use_cuda(t: Tensor, name: Optional[str] = None) -> bool:
    """Whether an op on ``t`` runs the CUDA kernel under backend ``name`` (default: the current backend)."""
    name = _state["backend"] if name is None else name
    if name == "torch":
        return False
    if not t.is_cuda:
        if name == "cuda":
            raise ValueError("cuda_ext backend 'cuda' needs CUDA tensors; got a tensor on "
                             f"{t.device} (move the inputs to the GPU or use set_backend('auto'/'torch'))")
        if not _state["noted_cpu"]:
            _state["noted_cpu"] = True
            _log.warning("cuda_ext: inputs are not on a CUDA device; running the PyTorch twins")
        return False
    if name == "cuda":
        _backend.load()
        return True
    try:
        _backend.load()
        return True
    except RuntimeError as exc:
        if not _state["noted_fallback"]:
            _state["noted_fallback"] = True
            _log.warning("%s -- running the PyTorch twins", exc)
        return False


def _check(name: str, t: Tensor, device, dims: Optional[int] = None, last: Optional[int] = None) -> Tensor:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the rays are on {device}; move it with .to(rays_o.device)")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dims, got shape {tuple(t.shape)}")
    if last is not None and t.shape[-1] != last:
        raise ValueError(f"{name} must have last dim {last}, got shape {tuple(t.shape)}")
    return t.contiguous()


def _f32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


# --------------------------------------------------------------------------------------------------
def near_far_from_aabb(rays_o: Tensor, rays_d: Tensor, aabb: Tensor, min_near: float = 0.05) -> Tuple[Tensor, Tensor]:
    """Ray / box intersection (slab test).

    Args:
        rays_o: [N, 3] float32 origins. rays_d: [N, 3] float32 directions (need not be unit length; t is in
            units of ``rays_d``). aabb: [6] (xmin, ymin, zmin, xmax, ymax, zmax). min_near: nears are >= this.
    Returns:
        nears [N], fars [N] float32; rays that miss the box get ``near = far = +inf``.
    Not differentiable.
    """
    if not _use_cuda(rays_o):
        return _ti._near_far_from_aabb(rays_o, rays_d, aabb, min_near)
    dev = rays_o.device
    C = _backend.load()
    return tuple(C.near_far_from_aabb(
        _check("rays_o", rays_o.float(), dev, 2, 3), _check("rays_d", rays_d.float(), dev, 2, 3),
        aabb.to(device=dev, dtype=torch.float32).contiguous(), float(min_near)))


def packbits(grid: Tensor, thresh) -> Tensor:
    """grid: [R^3] float (Morton order), thresh: float or 0-dim tensor -> bitfield [R^3 / 8] uint8
    (bit k of byte i set iff ``grid[8 i + k] > thresh``)."""
    if grid.numel() % 8:
        raise ValueError(f"grid has {grid.numel()} cells; packbits needs a multiple of 8")
    if not _use_cuda(grid):
        return _ti._packbits(grid, thresh)
    C = _backend.load()
    th = thresh if torch.is_tensor(thresh) else torch.tensor(float(thresh))
    return C.packbits(grid.float().contiguous(), th.to(device=grid.device, dtype=torch.float32).reshape(1))


def morton3d_dilation(grid: Tensor) -> Tensor:
    """grid: [R^3] float (Morton order, R a power of two) -> [R^3], each cell the max over itself and its
    6 face neighbours inside the grid."""
    if not _use_cuda(grid):
        return _ti._morton3d_dilation(grid)
    C = _backend.load()
    res = round(grid.numel() ** (1.0 / 3.0))
    return C.morton3d_dilation(grid.float().contiguous(), res)


def morton3d(coords: Tensor) -> Tensor:
    """coords: [..., 3] integer cell indices (each < 1024) -> [...] int64 Morton codes. Pure tensor arithmetic:
    runs on any device without a kernel."""
    return _ti._morton3d(coords)


def morton3d_invert(codes: Tensor) -> Tensor:
    """codes: [...] Morton codes -> [..., 3] int64 cell indices. Pure tensor arithmetic (any device)."""
    return _ti._morton3d_invert(codes)


# --------------------------------------------------------------------------------------------------
def _check_grid_args(bitfield: Tensor, resolution: int, dt: float):
    if resolution < 1 or resolution & (resolution - 1) or resolution > 1024:
        raise ValueError(f"resolution {resolution}: must be a power of two <= 1024 (Morton order)")
    if bitfield.dtype != torch.uint8 or bitfield.numel() * 8 != resolution ** 3:
        raise ValueError(f"bitfield must be uint8 with resolution^3/8 = {resolution ** 3 // 8} entries, "
                         f"got {bitfield.dtype} with {bitfield.numel()}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")


def march_rays_train(
    rays_o: Tensor, rays_d: Tensor, bitfield: Tensor, aabb: Tensor, nears: Tensor, fars: Tensor, *,
    resolution: int, dt: float, max_steps: int, perturb: bool = False,
    generator: Optional[torch.Generator] = None, buffer_size: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training ray marcher: samples each ray at t0, t0+dt, ... in [near, far), keeping only samples whose
    cell is set in ``bitfield``; an empty cell is skipped to its exit point along the lattice. At most
    ``max_steps`` samples per ray. ``perturb`` jitters t0 = near + u*dt with u ~ U[0,1) per ray (drawn from
    ``generator``; both implementations consume the same draw).

    Args:
        rays_o, rays_d: [N, 3] float32. bitfield: [R^3/8] uint8 (Morton order, see :class:`OccupancyGrid`).
        aabb: [6] box the grid covers. nears, fars: [N] from :func:`near_far_from_aabb`.
        resolution: R (power of two). dt: step in t units. max_steps: per-ray sample cap.
        buffer_size: capacity hint (e.g. :meth:`OccupancyGrid.buffer_size`). The CUDA path counts the samples
            of every ray first, so the output is always sized exactly: when the count exceeds the hint the
            buffer regrows; no ray is ever dropped.
    Returns:
        xyzs [M, 3], dirs [M, 3], deltas [M, 2] = (dt, t) float32, rays [N, 3] int32 = (ray index, offset,
        count) into the packed samples. Not differentiable.
    """
    _check_grid_args(bitfield, resolution, dt)
    if not _use_cuda(rays_o):
        return _ti._march_rays_train(rays_o, rays_d, bitfield, aabb, nears, fars, resolution=resolution, dt=dt,
                                     max_steps=max_steps, perturb=perturb, generator=generator,
                                     buffer_size=buffer_size)
    C = _backend.load()
    dev = rays_o.device
    n = rays_o.shape[0]
    rays_o = _check("rays_o", rays_o.float(), dev, 2, 3)
    rays_d = _check("rays_d", rays_d.float(), dev, 2, 3)
    nears = _check("nears", nears.float(), dev, 1)
    fars = _check("fars", fars.float(), dev, 1)
    bitfield = _check("bitfield", bitfield, dev)
    aabb = aabb.to(device=dev, dtype=torch.float32).contiguous()
    noise = _ti._draw_noise(n, perturb, generator, dev)
    if noise is None:
        noise = torch.empty(0, device=dev, dtype=torch.float32)
    counts = C.march_rays_train_count(rays_o, rays_d, bitfield, aabb, nears, fars, noise, resolution, float(dt),
                                      int(max_steps))
    offsets64 = torch.cumsum(counts, 0, dtype=torch.int64) - counts
    total = int((offsets64[-1] + counts[-1]).item()) if n > 0 else 0  # the one host sync of the op
    if total >= 2 ** 31:
        raise RuntimeError(f"march_rays_train: {total} samples exceed int32 offsets; use fewer rays per batch")
    cap = max(total, int(buffer_size or 0))
    xyzs = torch.empty(cap, 3, device=dev, dtype=torch.float32)
    dirs = torch.empty(cap, 3, device=dev, dtype=torch.float32)
    deltas = torch.empty(cap, 2, device=dev, dtype=torch.float32)
    offsets = offsets64.to(torch.int32)
    C.march_rays_train_write(rays_o, rays_d, bitfield, aabb, nears, fars, noise, offsets, counts, xyzs, dirs,
                             deltas, resolution, float(dt))
    rays = torch.stack([torch.arange(n, device=dev, dtype=torch.int32), offsets, counts], dim=1)
    return xyzs[:total], dirs[:total], deltas[:total], rays


def composite_rays_train(
    sigmas: Tensor, rgbs: Tensor, ambient: Tensor, deltas: Tensor, rays: Tensor, T_thresh: float = 1e-4,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Front-to-back alpha compositing of packed samples: alpha = 1 - exp(-sigma*dt), weight = alpha*T;
    a ray stops after the sample that brings T below ``T_thresh``.

    Args:
        sigmas: [M]; rgbs: [M, 3]; ambient: [M] or [M, k]; deltas: [M, 2] = (dt, t); rays: [N, 3] int32
            (ray index, offset, count) as returned by :func:`march_rays_train`.
    Returns:
        weights_sum [N], ambient_sum [N] or [N, k] (UNWEIGHTED sum of ``ambient`` over the samples the ray
        used, as GeneFace++'s ambient regulariser wants), depth [N] = sum(weight * t), image [N, 3] (no
        background). Differentiable w.r.t. sigmas, rgbs and ambient (a closed-form backward, kernel or twin);
        the dtype is float32, or float64 when sigmas are float64. The custom op ``talkfield::composite_rays_train``
        (cuda_ext._ops): torch.compile traces it without a graph break.
    """
    dev = sigmas.device
    dtype = torch.float64 if sigmas.dtype == torch.float64 else torch.float32
    squeeze = ambient.dim() == 1
    amb = ambient[:, None] if squeeze else ambient
    if rays.dtype != torch.int32:
        raise ValueError(f"rays must be int32 (ray index, offset, count), got {rays.dtype}")
    ws, amb_sum, depth, image = _ops.composite_rays_train(
        _check("sigmas", sigmas.to(dtype), dev, 1), _check("rgbs", rgbs.to(dtype), dev, 2, 3),
        _check("ambient", amb.to(dtype), dev, 2), _check("deltas", deltas.to(dtype), dev, 2, 2),
        _check("rays", rays, dev, 2, 3), float(T_thresh), get_backend())
    return ws, (amb_sum[:, 0] if squeeze else amb_sum), depth, image


# --------------------------------------------------------------------------------------------------
def march_rays(
    rays_o: Tensor, rays_d: Tensor, rays_t: Tensor, rays_n: Tensor, fars: Tensor, alive: Tensor,
    bitfield: Tensor, aabb: Tensor, *, resolution: int, dt: float, n_step: int, max_steps: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Inference marcher: for each alive ray, the next ``n_step`` occupied samples from ``rays_t`` (same lattice
    and skipping as :func:`march_rays_train` without perturbation), never more than ``max_steps`` per ray in
    total.

    Args:
        rays_o, rays_d: [N, 3]; rays_t: [N] float32 next t to march from (in/out; set to +inf once the ray
            has no samples left); rays_n: [N] int32 samples taken so far (in/out); fars: [N];
        alive: [A] int32/int64 ray indices to march. bitfield, aabb, resolution, dt: as for training.
    Returns:
        xyzs [A, n_step, 3], dirs [A, n_step, 3], deltas [A, n_step, 2]; unused slots have dt = 0.
    """
    _check_grid_args(bitfield, resolution, dt)
    if not _use_cuda(rays_o):
        return _ti._march_rays(rays_o, rays_d, rays_t, rays_n, fars, alive, bitfield, aabb,
                               resolution=resolution, dt=dt, n_step=n_step, max_steps=max_steps)
    C = _backend.load()
    dev = rays_o.device
    for name, t, dt_ in (("rays_t", rays_t, torch.float32), ("rays_n", rays_n, torch.int32)):
        if t.dtype != dt_ or not t.is_contiguous() or t.device != dev:
            raise ValueError(f"{name} must be a contiguous {dt_} tensor on {dev} (it is updated in place)")
    a = alive.shape[0]
    xyzs = torch.empty(a, n_step, 3, device=dev, dtype=torch.float32)
    dirs = torch.empty(a, n_step, 3, device=dev, dtype=torch.float32)
    deltas = torch.empty(a, n_step, 2, device=dev, dtype=torch.float32)
    C.march_rays(_check("rays_o", rays_o.float(), dev, 2, 3), _check("rays_d", rays_d.float(), dev, 2, 3),
                 rays_t, rays_n, _check("fars", fars.float(), dev, 1), _check("alive", alive.int(), dev, 1),
                 _check("bitfield", bitfield, dev), aabb.to(device=dev, dtype=torch.float32).contiguous(),
                 resolution, float(dt), int(n_step), int(max_steps), xyzs, dirs, deltas)
    return xyzs, dirs, deltas


def composite_rays(
    sigmas: Tensor, rgbs: Tensor, deltas: Tensor, alive: Tensor, rays_t: Tensor,
    weights_sum: Tensor, depth: Tensor, image: Tensor, T_thresh: float = 1e-2,
) -> Tensor:
    """Inference compositing of one :func:`march_rays` block, accumulating in place.

    Args:
        sigmas: [A*n_step] or [A, n_step]; rgbs: [A*n_step, 3] or [A, n_step, 3]; deltas: [A, n_step, 2];
        alive: [A] ray indices; rays_t: [N] (from :func:`march_rays`; +inf = no samples left);
        weights_sum [N], depth [N], image [N, 3] float32 accumulators (in/out); transmittance is
        1 - weights_sum.
    Returns:
        keep [A] bool: the ray still has samples and transmittance >= ``T_thresh``.
    Not differentiable (inference only).
    """
    if not _use_cuda(sigmas):
        return _ti._composite_rays(sigmas, rgbs, deltas, alive, rays_t, weights_sum, depth, image, T_thresh)
    C = _backend.load()
    dev = sigmas.device
    for name, t in (("weights_sum", weights_sum), ("depth", depth), ("image", image)):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device != dev:
            raise ValueError(f"{name} must be a contiguous float32 tensor on {dev} (it is updated in place)")
    a = alive.shape[0]
    keep = torch.empty(a, dtype=torch.bool, device=dev)
    C.composite_rays(sigmas.detach().float().reshape(-1).contiguous(), rgbs.detach().float().reshape(-1, 3).contiguous(),
                     deltas.float().reshape(-1, 2).contiguous(), _check("alive", alive.int(), dev, 1),
                     rays_t.float().contiguous(), weights_sum, depth, image, float(T_thresh), keep)
    return keep


def render_inference(
    field_fn: Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]], rays_o: Tensor, rays_d: Tensor, grid, *,
    dt: float, max_steps: int, T_thresh: float = 1e-2, min_near: float = 0.05, max_step_per_pass: int = 8,
    ray_index: bool = False, stats: Optional[dict] = None, compact_every: int = 1,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Render rays at inference with the march/composite loop (only alive rays are marched each pass).

    Args:
        field_fn: (xyzs [K, 3], dirs [K, 3]) -> (sigmas [K], rgbs [K, 3]); called on padded blocks too
            (their dt is 0 so they add nothing). With ``ray_index``, field_fn(xyzs, dirs, rays [K] int64) also gets
            the ray each sample belongs to (e.g. to pick a per-image condition when the rays of several images
            are rendered together). rays_o, rays_d: [N, 3]. grid: :class:`OccupancyGrid`.
        dt, max_steps: as for :func:`march_rays_train`. T_thresh: stop a ray when T < T_thresh.
        max_step_per_pass: samples per alive ray per pass are clamp(N / A, 1, this).
        stats: if given, ``stats["samples"]`` is set to the sample slots evaluated (padding included),
            ``stats["passes"]`` and ``stats["compactions"]`` to the loop's passes and list compactions.
        compact_every: drop finished rays from the list every this many passes (1: every pass). Each compaction
            waits for the GPU (its size is read on the host); in between, finished rays stay in the list retired in
            place (``rays_t`` = +inf: marching them again gives no samples), so the host queues passes ahead of the
            GPU at the cost of their padded samples. Same samples, same results.
    Returns:
        weights_sum [N], depth [N], image [N, 3] (no background; add ``(1 - weights_sum) * bg``).
    """
    n = rays_o.shape[0]
    dev = rays_o.device
    nears, fars = near_far_from_aabb(rays_o, rays_d, grid.aabb, min_near)
    rays_t = nears.float().contiguous().clone()
    rays_n = torch.zeros(n, dtype=torch.int32, device=dev)
    weights_sum = torch.zeros(n, dtype=torch.float32, device=dev)
    depth = torch.zeros(n, dtype=torch.float32, device=dev)
    image = torch.zeros(n, 3, dtype=torch.float32, device=dev)
    alive = torch.nonzero(torch.isfinite(rays_t)).squeeze(1).int()
    if int(compact_every) < 1:
        raise ValueError(f"compact_every={compact_every}: must be >= 1")
    every = int(compact_every)
    passes = evaluated = compactions = 0
    while alive.numel() > 0 and passes <= max_steps:  # every pass samples or retires each alive ray
        a = alive.numel()
        n_step = int(max(1, min(max_step_per_pass, n // a)))
        xyzs, dirs, deltas = march_rays(rays_o, rays_d, rays_t, rays_n, fars, alive, grid.bitfield, grid.aabb,
                                        resolution=grid.resolution, dt=dt, n_step=n_step, max_steps=max_steps)
        args = (xyzs.reshape(-1, 3), dirs.reshape(-1, 3))
        if ray_index:
            args += (alive.long()[:, None].expand(a, n_step).reshape(-1),)
        with torch.no_grad():
            sigmas, rgbs = field_fn(*args)
        keep = composite_rays(sigmas, rgbs, deltas, alive, rays_t, weights_sum, depth, image, T_thresh)
        evaluated += a * n_step
        passes += 1
        if passes % every == 0:
            alive = alive[keep]  # the host learns the list's size: waits for the GPU
            compactions += 1
        else:  # rays that stopped (opaque or out of samples) get rays_t = +inf: no samples again, no host sync
            idx = alive.long()
            rays_t.index_put_((idx,), rays_t[idx].masked_fill(~keep, math.inf))
    if stats is not None:
        stats.update(samples=evaluated, passes=passes, compactions=compactions)
    return weights_sum, depth, image


# --------------------------------------------------------------------------------------------------
def grid_encode(
    inputs: Tensor, embeddings: Tensor, offsets: Sequence[int], resolutions: Sequence[int],
    scales: Sequence[float], hashed: Sequence[bool], bound: float = 1.0,
) -> Tensor:
    """Multi-resolution grid encoding (see :class:`GridEncoder`, which computes the level tables).

    Args:
        inputs: [B, D] float32/float64 in [-bound, bound], D in {2, 3}; embeddings: [E, C] float32, float16,
            bfloat16 (or float64); offsets: L+1 level starts in ``embeddings``; resolutions: L grid sizes;
            scales: L float scales; hashed: L flags (XOR-prime hash instead of the row-major index).
    Returns:
        [B, L*C] in the inputs' dtype (float32 for float32 inputs). Differentiable w.r.t. embeddings and
        inputs (points outside the box give zeros and zero gradients). The custom op ``talkfield::grid_encode``
        (cuda_ext._ops): torch.compile traces it without a graph break.
    """
    if inputs.dim() != 2 or inputs.shape[1] not in (2, 3):
        raise ValueError(f"inputs must be [B, 2] or [B, 3], got {tuple(inputs.shape)}")
    dev = inputs.device
    x = inputs if inputs.dtype in (torch.float32, torch.float64) else inputs.float()
    return _ops.grid_encode(_check("inputs", x, dev, 2), _check("embeddings", embeddings, dev, 2),
                            [int(o) for o in offsets], [int(r) for r in resolutions], [float(s) for s in scales],
                            [bool(h) for h in hashed], float(bound), get_backend())
