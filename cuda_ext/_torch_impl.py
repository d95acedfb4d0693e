"""Pure-PyTorch twins of every op in :mod:`cuda_ext`.

Each ``_name`` here has the same signature as the public ``cuda_ext.name`` and computes the same function on
any device. They are the reference the CUDA kernels are tested against, and the ``torch`` backend
(``model/renderer=torch``) that runs the whole pipeline on CPU.

The ray marcher is written to perform exactly the float32 operations the kernel performs, in the same order
(separate multiply and add, no fused multiply-add), so both emit the same samples per ray: occupancy is
discrete and a one-ulp difference at a cell boundary would otherwise change which samples exist.
"""

from __future__ import annotations

import math
import struct
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "_near_far_from_aabb",
    "_morton3d",
    "_morton3d_invert",
    "_packbits",
    "_morton3d_dilation",
    "_march_rays_train",
    "_composite_rays_train",
    "_composite_rays_train_backward",
    "_march_rays",
    "_composite_rays",
    "_grid_encode",
    "_grid_encode_backward",
]

HASH_PRIMES = (1, 2654435761, 805459861)
_U32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# ray / box
# --------------------------------------------------------------------------------------------------
def _near_far_from_aabb(rays_o: Tensor, rays_d: Tensor, aabb: Tensor, min_near: float = 0.05) -> Tuple[Tensor, Tensor]:
    """PyTorch implementation of :func:`cuda_ext.near_far_from_aabb`.

    rays_o, rays_d: [N, 3]; aabb: [6] (xmin, ymin, zmin, xmax, ymax, zmax).
    Returns nears [N], fars [N]; rays that miss the box (or meet it only closer than ``min_near``) get
    ``near = far = +inf``.
    """
    aabb = aabb.to(rays_o)
    inv = 1.0 / torch.where(rays_d.abs() < 1e-15, torch.full_like(rays_d, 1e-15).copysign(rays_d), rays_d)
    t0 = (aabb[:3] - rays_o) * inv
    t1 = (aabb[3:] - rays_o) * inv
    near = torch.minimum(t0, t1).amax(dim=-1)
    far = torch.maximum(t0, t1).amin(dim=-1)
    near = near.clamp(min=min_near)
    miss = far <= near
    inf = torch.full_like(near, math.inf)
    return torch.where(miss, inf, near), torch.where(miss, inf, far)


# --------------------------------------------------------------------------------------------------
# Morton order, dilation, bit packing
# --------------------------------------------------------------------------------------------------
def _expand_bits(v: Tensor) -> Tensor:
    v = (v * 0x00010001) & 0xFF0000FF
    v = (v * 0x00000101) & 0x0F00F00F
    v = (v * 0x00000011) & 0xC30C30C3
    v = (v * 0x00000005) & 0x49249249
    return v


def _compact_bits(v: Tensor) -> Tensor:
    v = v & 0x49249249
    v = (v | (v >> 2)) & 0xC30C30C3
    v = (v | (v >> 4)) & 0x0F00F00F
    v = (v | (v >> 8)) & 0xFF0000FF
    v = (v | (v >> 16)) & 0x0000FFFF
    return v


def _morton3d(coords: Tensor) -> Tensor:
    """coords: [..., 3] integer cell indices in [0, 1024) -> [...] int64 Morton codes (x in bit 0, y in 1, z in 2)."""
    c = coords.long()
    return _expand_bits(c[..., 0]) | (_expand_bits(c[..., 1]) << 1) | (_expand_bits(c[..., 2]) << 2)


def _morton3d_invert(codes: Tensor) -> Tensor:
    """codes: [...] Morton codes -> [..., 3] int64 cell indices (inverse of :func:`_morton3d`)."""
    c = codes.long()
    return torch.stack([_compact_bits(c), _compact_bits(c >> 1), _compact_bits(c >> 2)], dim=-1)


def _packbits(grid: Tensor, thresh) -> Tensor:
    """grid: [R^3] float (Morton order) -> [R^3 / 8] uint8; bit k of byte i is ``grid[8 i + k] > thresh``."""
    occ = (grid > thresh).view(-1, 8).to(torch.uint8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=grid.device)
    return (occ * weights).sum(dim=1, dtype=torch.uint8)


def _morton3d_dilation(grid: Tensor) -> Tensor:
    """grid: [R^3] float (Morton order) -> [R^3]: each cell becomes the max of itself and its 6 face neighbours
    (neighbours outside the grid are ignored)."""
    n = grid.numel()
    res = round(n ** (1.0 / 3.0))
    codes = torch.arange(n, device=grid.device)
    ijk = _morton3d_invert(codes)
    out = grid.clone()
    for axis in range(3):
        for step in (-1, 1):
            nb = ijk.clone()
            nb[:, axis] += step
            valid = (nb[:, axis] >= 0) & (nb[:, axis] < res)
            vals = grid[_morton3d(nb.clamp(0, res - 1))]
            out = torch.where(valid, torch.maximum(out, vals), out)
    return out


# --------------------------------------------------------------------------------------------------
# ray marching (shared core of the training and the inference marcher)
# --------------------------------------------------------------------------------------------------
def _occupied(bitfield: Tensor, cells: Tensor) -> Tensor:
    code = _morton3d(cells)
    return ((bitfield[code >> 3].long() >> (code & 7)) & 1).bool()


def _march_core(
    rays_o: Tensor, rays_d: Tensor, t: Tensor, fars: Tensor, budget: Tensor,
    bitfield: Tensor, aabb: Tensor, resolution: int, dt: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """March every ray from ``t`` along the lattice t, t+dt, t+2dt, ... (repeated float32 addition, as the
    kernel does) while ``t < far`` and fewer than ``budget`` samples were taken. Samples are emitted only in
    occupied cells; in an empty cell the lattice is advanced past the cell's exit point.

    Returns sample_t [N, S] (nan padded), counts [N] int64, t_end [N] (t after the last step taken).
    """
    n = rays_o.shape[0]
    dev = rays_o.device
    f32 = torch.float32
    o, d = rays_o.to(f32), rays_d.to(f32)
    t = t.to(f32).clone()
    fars = fars.to(f32)
    aabb = aabb.to(device=dev, dtype=f32)
    amin = aabb[:3]
    scale = torch.tensor(float(resolution), dtype=f32, device=dev) / (aabb[3:] - aabb[:3])  # [3]
    dts = torch.tensor(dt, dtype=f32, device=dev)
    gd = d * scale  # [N, 3], direction in grid units
    pos_dir = d > 0
    zero_dir = d == 0
    max_budget = int(budget.max().item()) if n > 0 else 0
    sample_t = torch.full((n, max(max_budget, 1)), math.nan, dtype=f32, device=dev)
    counts = torch.zeros(n, dtype=torch.long, device=dev)
    skip_until = torch.full((n,), -math.inf, dtype=f32, device=dev)
    rows = torch.arange(n, device=dev)
    while True:
        active = (t < fars) & (counts < budget)
        if not bool(active.any()):
            break
        check = active & ~(t < skip_until)
        idx = rows[check]
        if idx.numel() > 0:
            ti = t[idx]
            x = o[idx] + ti[:, None] * d[idx]
            g = (x - amin) * scale
            cell = torch.floor(g).clamp(0, resolution - 1)
            occ = _occupied(bitfield, cell.long())
            e = idx[occ]
            sample_t[e, counts[e]] = t[e]
            counts[e] += 1
            # empty cell: the exit point is the smallest per-axis distance to the far face of the cell
            s_mask = ~occ
            s = idx[s_mask]
            if s.numel() > 0:
                bnd = cell[s_mask] + pos_dir[s].to(f32)
                q = (bnd - g[s_mask]) / gd[s]
                q = torch.where(zero_dir[s], torch.full_like(q, math.inf), q)
                skip_until[s] = t[s] + q.amin(dim=1)
        t = torch.where(active, t + dts, t)
    return sample_t, counts, t


def _draw_noise(n: int, perturb: bool, generator: Optional[torch.Generator], device) -> Optional[Tensor]:
    if not perturb:
        return None
    return torch.rand(n, generator=generator, device=device, dtype=torch.float32)


def _pack_samples(rays_o, rays_d, sample_t, counts, dt):
    n = rays_o.shape[0]
    dev = rays_o.device
    offsets = torch.cumsum(counts, 0) - counts
    valid = ~torch.isnan(sample_t)
    ray_of = torch.arange(n, device=dev)[:, None].expand_as(sample_t)[valid]
    ts = sample_t[valid]  # row-major: per ray, in marching order
    xyzs = rays_o[ray_of].float() + ts[:, None] * rays_d[ray_of].float()
    dirs = rays_d[ray_of].float()
    deltas = torch.stack([torch.full_like(ts, dt), ts], dim=-1)
    rays = torch.stack([torch.arange(n, device=dev), offsets, counts], dim=-1).to(torch.int32)
    return xyzs, dirs, deltas, rays


def _march_rays_train(
    rays_o: Tensor, rays_d: Tensor, bitfield: Tensor, aabb: Tensor, nears: Tensor, fars: Tensor, *,
    resolution: int, dt: float, max_steps: int, perturb: bool = False,
    generator: Optional[torch.Generator] = None, buffer_size: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """PyTorch implementation of :func:`cuda_ext.march_rays_train` (same arguments, same samples per ray;
    samples are packed ray after ray)."""
    n = rays_o.shape[0]
    noise = _draw_noise(n, perturb, generator, rays_o.device)
    t0 = nears.float()
    if noise is not None:
        t0 = t0 + noise * torch.tensor(dt, dtype=torch.float32, device=rays_o.device)
    budget = torch.full((n,), int(max_steps), dtype=torch.long, device=rays_o.device)
    sample_t, counts, _ = _march_core(rays_o, rays_d, t0, fars, budget, bitfield, aabb, resolution, dt)
    # the exact sample count is known here, so the twin never needs ``buffer_size`` (it is a capacity hint)
    return _pack_samples(rays_o, rays_d, sample_t, counts, dt)


def _march_rays(
    rays_o: Tensor, rays_d: Tensor, rays_t: Tensor, rays_n: Tensor, fars: Tensor, alive: Tensor,
    bitfield: Tensor, aabb: Tensor, *, resolution: int, dt: float, n_step: int, max_steps: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    """PyTorch implementation of :func:`cuda_ext.march_rays` (updates ``rays_t`` and ``rays_n`` in place)."""
    a = alive.shape[0]
    dev = rays_o.device
    ids = alive.long()
    budget = torch.clamp(int(max_steps) - rays_n[ids].long(), min=0, max=int(n_step))
    sample_t, counts, t_end = _march_core(rays_o[ids], rays_d[ids], rays_t[ids], fars[ids], budget,
                                          bitfield, aabb, resolution, dt)
    sample_t = sample_t[:, :n_step]
    if sample_t.shape[1] < n_step:
        pad = torch.full((a, n_step - sample_t.shape[1]), math.nan, dtype=sample_t.dtype, device=dev)
        sample_t = torch.cat([sample_t, pad], 1)
    valid = ~torch.isnan(sample_t)
    ts = torch.where(valid, sample_t, torch.zeros_like(sample_t))
    o, d = rays_o[ids].float(), rays_d[ids].float()
    xyzs = o[:, None, :] + ts[..., None] * d[:, None, :]
    xyzs = torch.where(valid[..., None], xyzs, torch.zeros_like(xyzs))
    dirs = d[:, None, :].expand(a, n_step, 3).contiguous()
    deltas = torch.stack([torch.where(valid, torch.full_like(ts, dt), torch.zeros_like(ts)), ts], dim=-1)
    new_n = rays_n[ids].long() + counts
    exhausted = (t_end >= fars[ids].float()) | (new_n >= int(max_steps))
    rays_t[ids] = torch.where(exhausted, torch.full_like(t_end, math.inf), t_end).to(rays_t.dtype)
    rays_n[ids] = new_n.to(rays_n.dtype)
    return xyzs, dirs, deltas


# --------------------------------------------------------------------------------------------------
# compositing
# --------------------------------------------------------------------------------------------------
def _to_padded(values: Tensor, rays: Tensor, width: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Scatter packed per-sample rows into [N, width, ...]; returns (padded, valid [N, width], sample index [N, width])."""
    n = rays.shape[0]
    offsets = rays[:, 1].long()
    counts = rays[:, 2].long()
    col = torch.arange(width, device=values.device)
    valid = col[None, :] < counts[:, None]
    src = (offsets[:, None] + col[None, :]).clamp(max=max(values.shape[0] - 1, 0))
    src = torch.where(valid, src, torch.zeros_like(src))
    return values[src], valid, src


def _composite_rays_train(
    sigmas: Tensor, rgbs: Tensor, ambient: Tensor, deltas: Tensor, rays: Tensor, T_thresh: float = 1e-4,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """PyTorch implementation of :func:`cuda_ext.composite_rays_train` (differentiable by autograd)."""
    n = rays.shape[0]
    squeeze = ambient.dim() == 1
    amb = ambient[:, None] if squeeze else ambient
    width = int(rays[:, 2].max().item()) if n > 0 else 0
    width = max(width, 1)
    if sigmas.shape[0] == 0:
        sigmas = sigmas.new_zeros(1)
        rgbs = rgbs.new_zeros(1, 3)
        amb = amb.new_zeros(1, amb.shape[1])
        deltas = deltas.new_zeros(1, 2)
    sig, valid, _ = _to_padded(sigmas, rays, width)
    col, _, _ = _to_padded(rgbs, rays, width)
    am, _, _ = _to_padded(amb, rays, width)
    dl, _, _ = _to_padded(deltas, rays, width)
    tau = torch.where(valid, sig * dl[..., 0], torch.zeros_like(sig))
    excl = torch.cumsum(tau, dim=1) - tau
    trans = torch.exp(-excl)  # T before each sample
    alpha = 1.0 - torch.exp(-tau)
    # the kernel processes a sample iff the transmittance before it is still >= T_thresh
    used = valid & (trans.detach() >= T_thresh)
    w = torch.where(used, alpha * trans, torch.zeros_like(alpha))
    weights_sum = w.sum(1)
    depth = (w * dl[..., 1]).sum(1)
    image = (w[..., None] * col).sum(1)
    ambient_sum = torch.where(used[..., None], am, torch.zeros_like(am)).sum(1)
    out_idx = rays[:, 0].long()

    def place(v):
        out = v.new_zeros((n,) + v.shape[1:])
        return out.index_copy(0, out_idx, v)

    ambient_sum = place(ambient_sum)
    return place(weights_sum), (ambient_sum[:, 0] if squeeze else ambient_sum), place(depth), place(image)


def _composite_rays_train_backward(
    g_ws: Tensor, g_amb: Tensor, g_depth: Tensor, g_image: Tensor, sigmas: Tensor, rgbs: Tensor, deltas: Tensor,
    rays: Tensor, ws: Tensor, depth: Tensor, image: Tensor, T_thresh: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """PyTorch implementation of the CUDA backward of :func:`cuda_ext.composite_rays_train` (no autograd: the
    kernel's closed form, using the forward's outputs ws [N], depth [N], image [N, 3]).

    g_ws [N], g_amb [N, k], g_depth [N], g_image [N, 3]: gradients of the outputs; sigmas [M], rgbs [M, 3],
    deltas [M, 2], rays [N, 3] int32: the forward's inputs. Returns v_sigmas [M], v_rgbs [M, 3], v_ambient [M, k]
    (zero for samples after a ray's early termination).
    """
    m, n, k = sigmas.shape[0], rays.shape[0], g_amb.shape[1]
    v_sig, v_rgb, v_amb = sigmas.new_zeros(m), sigmas.new_zeros(m, 3), sigmas.new_zeros(m, k)
    if m == 0 or n == 0:
        return v_sig, v_rgb, v_amb
    width = max(int(rays[:, 2].max().item()), 1)
    sig, valid, src = _to_padded(sigmas, rays, width)
    col, _, _ = _to_padded(rgbs, rays, width)
    dl, _, _ = _to_padded(deltas, rays, width)
    tau = torch.where(valid, sig * dl[..., 0], torch.zeros_like(sig))
    t_before = torch.exp(-(torch.cumsum(tau, dim=1) - tau))  # as the forward twin computes it (same `used`)
    e = torch.exp(-tau)
    t_after = t_before * e
    used = valid & (t_before >= T_thresh)
    w = torch.where(used, (1.0 - e) * t_before, torch.zeros_like(tau))
    ray = rays[:, 0].long()
    gw, gd, gc = g_ws[ray][:, None], g_depth[ray][:, None], g_image[ray][:, None, :]  # [N, 1], [N, 1], [N, 1, 3]
    # d(sum_j w_j c_j)/d sigma_s = dt_s * (T_{s+1} c_s - sum_{j>s} w_j c_j); the tail sums from the final outputs
    tail_ws = ws[ray][:, None] - torch.cumsum(w, dim=1)
    tail_d = depth[ray][:, None] - torch.cumsum(w * dl[..., 1], dim=1)
    tail_c = image[ray][:, None, :] - torch.cumsum(w[..., None] * col, dim=1)
    v = dl[..., 0] * (gw * (t_after - tail_ws) + gd * (t_after * dl[..., 1] - tail_d)
                      + (gc * (t_after[..., None] * col - tail_c)).sum(-1))
    zero = torch.zeros_like(v)
    flat = src.reshape(-1)
    v_sig.index_add_(0, flat, torch.where(used, v, zero).reshape(-1))
    v_rgb.index_add_(0, flat, torch.where(used[..., None], w[..., None] * gc, zero[..., None]).reshape(-1, 3))
    g_a = g_amb[ray][:, None, :].expand(n, width, k)
    v_amb.index_add_(0, flat, torch.where(used[..., None], g_a, torch.zeros_like(g_a)).reshape(-1, k))
    return v_sig, v_rgb, v_amb


def _composite_rays(
    sigmas: Tensor, rgbs: Tensor, deltas: Tensor, alive: Tensor, rays_t: Tensor,
    weights_sum: Tensor, depth: Tensor, image: Tensor, T_thresh: float = 1e-2,
) -> Tensor:
    """PyTorch implementation of :func:`cuda_ext.composite_rays` (accumulates in place, returns keep [A] bool)."""
    a = alive.shape[0]
    ids = alive.long()
    if a == 0:
        return torch.zeros(0, dtype=torch.bool, device=alive.device)
    sig = sigmas.reshape(a, -1).float()
    col = rgbs.reshape(a, -1, 3).float()
    dl = deltas.reshape(a, -1, 2).float()
    ws = weights_sum[ids].float().clone()
    dp = depth[ids].float().clone()
    im = image[ids].float().clone()
    running = torch.ones(a, dtype=torch.bool, device=alive.device)
    for j in range(sig.shape[1]):
        step_dt = dl[:, j, 0]
        m = running & (step_dt > 0)
        trans = 1.0 - ws
        alpha = 1.0 - torch.exp(-sig[:, j] * step_dt)
        w = alpha * trans
        ws = torch.where(m, ws + w, ws)
        dp = torch.where(m, dp + w * dl[:, j, 1], dp)
        im = torch.where(m[:, None], im + w[:, None] * col[:, j], im)
        running = running & ~(m & (1.0 - ws < T_thresh))
        running = running & (step_dt > 0)
    weights_sum[ids] = ws.to(weights_sum.dtype)
    depth[ids] = dp.to(depth.dtype)
    image[ids] = im.to(image.dtype)
    keep = (1.0 - ws >= T_thresh) & torch.isfinite(rays_t[ids])
    return keep


# --------------------------------------------------------------------------------------------------
# multi-resolution grid encoding
# --------------------------------------------------------------------------------------------------
def _corner_index(pgl: Tensor, corner: int, res: int, size: int, hashed: bool) -> Tensor:
    """Table row (within its level) of one corner of each point's cell: pgl [B, D] int64 lower grid coords,
    corner: bit ax set = upper neighbour along axis ax. Row-major (uint32 arithmetic) or XOR-prime hash, mod size."""
    idx = torch.zeros(pgl.shape[0], dtype=torch.long, device=pgl.device)
    stride = 1
    for ax in range(pgl.shape[1]):
        cg = pgl[:, ax] + ((corner >> ax) & 1)
        if hashed:
            idx = idx ^ ((cg * HASH_PRIMES[ax]) & _U32)
        else:
            idx = (idx + ((cg * stride) & _U32)) & _U32
            stride = (stride * (res + 1)) & _U32
    return (idx & _U32) % size


def _level_position(x01: Tensor, scale: float) -> Tuple[Tensor, Tensor, float]:
    """x01 [B, D] in [0, 1] -> (frac [B, D], lower grid coords [B, D] int64, the float32 scale the kernel reads)."""
    s32 = struct.unpack("f", struct.pack("f", scale))[0]
    pos = x01 * s32 + 0.5
    pg = torch.floor(pos)
    return pos - pg, pg.detach().long(), s32


def _grid_encode(
    inputs: Tensor, embeddings: Tensor, offsets: Sequence[int], resolutions: Sequence[int],
    scales: Sequence[float], hashed: Sequence[bool], bound: float = 1.0,
) -> Tensor:
    """PyTorch implementation of :func:`cuda_ext.grid_encode`.

    inputs: [B, D] in [-bound, bound] (D = 2 or 3); embeddings: [E, C]; offsets: L+1 table starts;
    resolutions, scales, hashed: per level. Returns [B, L*C] in the inputs' dtype (float32 or float64).
    Points outside the box give zeros (and zero gradients).
    """
    b, dim = inputs.shape
    c = embeddings.shape[1]
    dtype = inputs.dtype if inputs.dtype == torch.float64 else torch.float32
    x = inputs.to(dtype)
    x01 = (x + bound) * (0.5 / bound)  # multiply by the reciprocal, as the kernel does
    inside = ((x01 >= 0) & (x01 <= 1)).all(dim=1)
    emb = embeddings.to(dtype)
    feats = []
    for lvl in range(len(resolutions)):
        size = int(offsets[lvl + 1] - offsets[lvl])
        frac, pgl, _ = _level_position(x01, scales[lvl])
        acc = x.new_zeros(b, c)
        for corner in range(1 << dim):
            w = torch.ones_like(frac[:, 0])
            for ax in range(dim):
                w = w * (frac[:, ax] if (corner >> ax) & 1 else 1.0 - frac[:, ax])
            idx = _corner_index(pgl, corner, int(resolutions[lvl]), size, bool(hashed[lvl]))
            acc = acc + w[:, None] * emb[int(offsets[lvl]) + idx]
        feats.append(acc)
    out = torch.cat(feats, dim=1)
    return torch.where(inside[:, None], out, torch.zeros_like(out))


def _grid_encode_backward(
    grad_out: Tensor, inputs: Tensor, embeddings: Tensor, offsets: Sequence[int], resolutions: Sequence[int],
    scales: Sequence[float], hashed: Sequence[bool], bound: float = 1.0, need_input_grad: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """PyTorch implementation of the CUDA backward of :func:`cuda_ext.grid_encode` (closed form, no autograd).

    grad_out: [B, L*C]; the other arguments as for :func:`_grid_encode`. Returns (grad_embeddings [E, C] in the
    embeddings' dtype, accumulated in float32/float64; grad_inputs [B, D] in the inputs' dtype or None unless
    ``need_input_grad``). Points outside the box get zero gradients and add nothing to the table.
    """
    b, dim = inputs.shape
    c = embeddings.shape[1]
    dtype = inputs.dtype if inputs.dtype == torch.float64 else torch.float32
    x = inputs.to(dtype)
    x01 = (x + bound) * (0.5 / bound)
    inside = ((x01 >= 0) & (x01 <= 1)).all(dim=1)
    gy = torch.where(inside[:, None], grad_out.to(dtype), torch.zeros((), dtype=dtype, device=x.device))
    emb = embeddings.to(dtype) if need_input_grad else None
    g_emb = torch.zeros(embeddings.shape, dtype=dtype, device=x.device)
    g_x = x.new_zeros(b, dim) if need_input_grad else None
    for lvl in range(len(resolutions)):
        size = int(offsets[lvl + 1] - offsets[lvl])
        frac, pgl, s32 = _level_position(x01, scales[lvl])
        gy_l = gy[:, lvl * c:(lvl + 1) * c]
        for corner in range(1 << dim):
            bits = [(corner >> ax) & 1 for ax in range(dim)]
            factors = [frac[:, ax] if bits[ax] else 1.0 - frac[:, ax] for ax in range(dim)]
            w = factors[0]
            for f in factors[1:]:
                w = w * f
            rows = int(offsets[lvl]) + _corner_index(pgl, corner, int(resolutions[lvl]), size, bool(hashed[lvl]))
            g_emb.index_add_(0, rows, w[:, None] * gy_l)
            if g_x is not None:
                dot = (gy_l * emb[rows]).sum(1) * s32  # d out / d frac_ax = (+-1) * prod of the other factors
                for ax in range(dim):
                    others = torch.ones_like(w)
                    for j in range(dim):
                        if j != ax:
                            others = others * factors[j]
                    g_x[:, ax] += (dot * others) if bits[ax] else -(dot * others)
    if g_x is not None:
        g_x = (g_x * (0.5 / bound)).to(inputs.dtype)
    return g_emb.to(embeddings.dtype), g_x
