"""Naive reference implementations and random-input factories shared by the CPU and GPU cuda_ext tests and
the benchmark. Deliberately simple: Python loops per ray / per point, dense lattices, plain cumprod."""

from __future__ import annotations

import math

import numpy as np
import torch

AABB = (-1.0, -0.5, -1.0, 1.0, 0.5, 1.0)  # the head box of GeneFace++ (flat in y)


def random_rays(n: int, gen: torch.Generator, radius: float = 2.5, device="cpu"):
    """Rays from a sphere around the box aimed near its centre (a few miss), unit directions."""
    o = torch.randn(n, 3, generator=gen)
    o = o / o.norm(dim=1, keepdim=True) * radius
    target = (torch.rand(n, 3, generator=gen) * 2 - 1) * torch.tensor([1.2, 0.7, 1.2])
    d = target - o
    d = d / d.norm(dim=1, keepdim=True)
    return o.to(device), d.to(device)


def random_bitfield(res: int, frac: float, gen: torch.Generator, device="cpu") -> torch.Tensor:
    occ = (torch.rand(res ** 3, generator=gen) < frac).to(torch.uint8)
    w = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (occ.view(-1, 8) * w).sum(1, dtype=torch.uint8).to(device)


# ----------------------------------------------------------------------------------------------------
def morton_py(x: int, y: int, z: int) -> int:
    code = 0
    for b in range(10):
        code |= ((x >> b) & 1) << (3 * b) | ((y >> b) & 1) << (3 * b + 1) | ((z >> b) & 1) << (3 * b + 2)
    return code


def near_far_naive(o, d, aabb, min_near):
    """Per-ray slab test in float64 Python."""
    nears, fars = [], []
    for i in range(o.shape[0]):
        lo, hi = -math.inf, math.inf
        for ax in range(3):
            oa, da = float(o[i, ax]), float(d[i, ax])
            if abs(da) < 1e-15:
                if not (aabb[ax] <= oa <= aabb[ax + 3]):
                    lo, hi = math.inf, -math.inf
                continue
            t0, t1 = (aabb[ax] - oa) / da, (aabb[ax + 3] - oa) / da
            lo, hi = max(lo, min(t0, t1)), min(hi, max(t0, t1))
        lo = max(lo, min_near)
        if hi <= lo:
            lo = hi = math.inf
        nears.append(lo)
        fars.append(hi)
    return torch.tensor(nears, dtype=torch.float64), torch.tensor(fars, dtype=torch.float64)


def march_naive(o, d, bitfield, aabb, nears, fars, res, dt, max_steps, t0=None):
    """Dense lattice t0 + k dt (float64) over [near, far): keep the points whose cell is occupied, first
    ``max_steps`` of them. Returns a list (per ray) of sample t's."""
    bits = np.unpackbits(bitfield.cpu().numpy(), bitorder="little")
    lo = np.array(aabb[:3], dtype=np.float64)
    size = (np.array(aabb[3:], dtype=np.float64) - lo) / res
    out = []
    for i in range(o.shape[0]):
        near, far = float(nears[i]), float(fars[i])
        start = near if t0 is None else float(t0[i])
        ts = []
        if math.isfinite(near):
            k = 0
            while len(ts) < max_steps:
                t = start + k * dt
                if t >= far:
                    break
                x = o[i].double().numpy() + t * d[i].double().numpy()
                c = np.clip(np.floor((x - lo) / size), 0, res - 1).astype(int)
                if bits[morton_py(*c)]:
                    ts.append(t)
                k += 1
        out.append(ts)
    return out


def composite_naive(sig, col, amb, dl, counts, T_thresh):
    """Dense [N, S] inputs (padded); plain cumulative product of (1 - alpha)."""
    s = sig.shape[1]
    valid = torch.arange(s)[None, :] < counts[:, None]
    alpha = torch.where(valid, 1 - torch.exp(-sig * dl[..., 0]), torch.zeros_like(sig))
    ones = torch.ones_like(alpha[:, :1])
    trans = torch.cumprod(torch.cat([ones, 1 - alpha], 1), 1)[:, :-1]
    used = valid & (trans.detach() >= T_thresh)
    w = torch.where(used, alpha * trans, torch.zeros_like(alpha))
    return (w.sum(1), torch.where(used[..., None], amb, torch.zeros_like(amb)).sum(1), (w * dl[..., 1]).sum(1),
            (w[..., None] * col).sum(1))


def grid_encode_naive(x, emb, offsets, resolutions, scales, hashed, bound):
    """Per point, per level, per corner in Python integers (indices) and float64 (weights)."""
    primes = (1, 2654435761, 805459861)
    b, dim = x.shape
    c = emb.shape[1]
    out = torch.zeros(b, len(resolutions) * c, dtype=torch.float64)
    e = emb.double()
    for i in range(b):
        x01 = [(float(x[i, a]) + bound) / (2 * bound) for a in range(dim)]
        if any(v < 0 or v > 1 for v in x01):
            continue
        for lvl, res in enumerate(resolutions):
            size = offsets[lvl + 1] - offsets[lvl]
            s32 = float(np.float32(scales[lvl]))
            pos = [v * s32 + 0.5 for v in x01]
            pg = [math.floor(p) for p in pos]
            fr = [p - g for p, g in zip(pos, pg)]
            for corner in range(1 << dim):
                w, idx = 1.0, 0
                for a in range(dim):
                    bit = (corner >> a) & 1
                    w *= fr[a] if bit else 1 - fr[a]
                    cg = pg[a] + bit
                    if hashed[lvl]:
                        idx ^= (cg * primes[a]) & 0xFFFFFFFF
                    else:
                        idx = (idx + cg * (res + 1) ** a) & 0xFFFFFFFF
                out[i, lvl * c:(lvl + 1) * c] += w * e[offsets[lvl] + idx % size]
    return out


def per_ray_samples(deltas, rays):
    """List (per ray index) of that ray's sample t's, read through (index, offset, count)."""
    d = deltas.detach().cpu()
    r = rays.cpu().long()
    out = [None] * r.shape[0]
    for idx, off, cnt in r.tolist():
        out[idx] = d[off:off + cnt, 1].tolist()
    return out
