"""The differentiable cuda_ext ops as PyTorch custom operators (namespace ``talkfield``), so ``torch.compile`` traces
through them (``fullgraph=True``) instead of breaking the graph at each call.

Each op has one implementation body that picks, when it runs, the CUDA kernel (CUDA tensors, the extension loads,
the backend allows it) or the PyTorch twin; the backend name is an argument, read by the public wrappers in
:mod:`cuda_ext._wrapper` from :func:`cuda_ext.get_backend` at call time and kept for the backward, so a forward
and its backward always use the same implementation. Fake (meta) implementations give the output shapes, so
nothing runs (and nothing builds) while tracing. Registering happens at import and compiles nothing.

    talkfield::grid_encode(inputs [B, D] f32|f64, embeddings [E, C], offsets, resolutions, scales, hashed,
                           bound, backend) -> [B, L*C] in the inputs' dtype
    talkfield::grid_encode_backward(grad [B, L*C], inputs, embeddings, ..., need_input_grad, backend)
                           -> grad_embeddings [E, C] (embeddings' dtype), grad_inputs [B, D] ([0, D] if not needed)
    talkfield::composite_rays_train(sigmas [M], rgbs [M, 3], ambient [M, k], deltas [M, 2], rays [N, 3] int32,
                           T_thresh, backend) -> weights_sum [N], ambient_sum [N, k], depth [N], image [N, 3]
    talkfield::composite_rays_train_backward(g_ws, g_amb, g_depth, g_image, sigmas, rgbs, deltas, rays, ws, depth,
                           image, T_thresh, backend) -> v_sigmas [M], v_rgbs [M, 3], v_ambient [M, k]
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backend
from . import _torch_impl as _ti


def _kernel(t: Tensor, backend: str) -> bool:
    """True when this call runs the CUDA kernel (the rule of :func:`cuda_ext._wrapper._use_cuda`)."""
    from ._wrapper import _use_cuda  # the wrappers import this module

    return _use_cuda(t, backend)


# ------------------------------------------------------------------------------------------------ grid encoder
@torch.library.custom_op("talkfield::grid_encode", mutates_args=())
def grid_encode(inputs: Tensor, embeddings: Tensor, offsets: list[int], resolutions: list[int], scales: list[float],
                hashed: list[bool], bound: float, backend: str) -> Tensor:
    if _kernel(inputs, backend):  # contiguous(): a compiled graph may hand over other strides than eager does
        return _backend.load().grid_encode_forward(inputs.contiguous(), embeddings.contiguous(), offsets, resolutions,
                                                   scales, hashed, bound)
    return _ti._grid_encode(inputs, embeddings, offsets, resolutions, scales, hashed, bound)


@grid_encode.register_fake
def _(inputs, embeddings, offsets, resolutions, scales, hashed, bound, backend):
    return inputs.new_empty(inputs.shape[0], len(resolutions) * embeddings.shape[1])


@torch.library.custom_op("talkfield::grid_encode_backward", mutates_args=())
def grid_encode_backward(grad: Tensor, inputs: Tensor, embeddings: Tensor, offsets: list[int],
                         resolutions: list[int], scales: list[float], hashed: list[bool], bound: float,
                         need_input_grad: bool, backend: str) -> tuple[Tensor, Tensor]:
    grad = grad.to(inputs.dtype).contiguous()
    if _kernel(inputs, backend):
        g_emb, g_x = _backend.load().grid_encode_backward(grad, inputs.contiguous(), embeddings.contiguous(),
                                                          offsets, resolutions, scales, hashed, bound,
                                                          need_input_grad)
    else:
        g_emb, g_x = _ti._grid_encode_backward(grad, inputs, embeddings, offsets, resolutions, scales, hashed, bound,
                                               need_input_grad)
    return g_emb, (g_x if need_input_grad else inputs.new_empty(0, inputs.shape[1]))


@grid_encode_backward.register_fake
def _(grad, inputs, embeddings, offsets, resolutions, scales, hashed, bound, need_input_grad, backend):
    g_x = inputs.new_empty(inputs.shape) if need_input_grad else inputs.new_empty(0, inputs.shape[1])
    return embeddings.new_empty(embeddings.shape), g_x


def _grid_setup(ctx, inputs, output):
    x, emb, *meta = inputs
    ctx.save_for_backward(x, emb)
    ctx.meta = meta  # offsets, resolutions, scales, hashed, bound, backend


def _grid_backward(ctx, grad):
    x, emb = ctx.saved_tensors
    offsets, resolutions, scales, hashed, bound, backend = ctx.meta
    need_x = ctx.needs_input_grad[0]
    g_emb, g_x = grid_encode_backward(grad, x, emb, offsets, resolutions, scales, hashed, bound, need_x, backend)
    return (g_x if need_x else None), g_emb, None, None, None, None, None, None


grid_encode.register_autograd(_grid_backward, setup_context=_grid_setup)


# ------------------------------------------------------------------------------------------------ compositing
@torch.library.custom_op("talkfield::composite_rays_train", mutates_args=())
def composite_rays_train(sigmas: Tensor, rgbs: Tensor, ambient: Tensor, deltas: Tensor, rays: Tensor,
                         T_thresh: float, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if _kernel(sigmas, backend):
        ws, amb, depth, image = _backend.load().composite_rays_train_forward(
            sigmas.contiguous(), rgbs.contiguous(), ambient.contiguous(), deltas.contiguous(), rays.contiguous(),
            T_thresh)
        return ws, amb, depth, image
    return _ti._composite_rays_train(sigmas, rgbs, ambient, deltas, rays, T_thresh)


@composite_rays_train.register_fake
def _(sigmas, rgbs, ambient, deltas, rays, T_thresh, backend):
    n = rays.shape[0]
    return (sigmas.new_empty(n), sigmas.new_empty(n, ambient.shape[1]), sigmas.new_empty(n),
            sigmas.new_empty(n, 3))


@torch.library.custom_op("talkfield::composite_rays_train_backward", mutates_args=())
def composite_rays_train_backward(g_ws: Tensor, g_amb: Tensor, g_depth: Tensor, g_image: Tensor, sigmas: Tensor,
                                  rgbs: Tensor, deltas: Tensor, rays: Tensor, ws: Tensor, depth: Tensor,
                                  image: Tensor, T_thresh: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    g_ws, g_amb, g_depth, g_image = (g.to(sigmas.dtype).contiguous() for g in (g_ws, g_amb, g_depth, g_image))
    if _kernel(sigmas, backend):
        v_sig, v_rgb, v_amb = _backend.load().composite_rays_train_backward(
            g_ws, g_amb, g_depth, g_image, *(t.contiguous() for t in (sigmas, rgbs, deltas, rays, ws, depth, image)),
            T_thresh, g_amb.shape[1])
        return v_sig, v_rgb, v_amb
    return _ti._composite_rays_train_backward(g_ws, g_amb, g_depth, g_image, sigmas, rgbs, deltas, rays, ws, depth,
                                              image, T_thresh)


@composite_rays_train_backward.register_fake
def _(g_ws, g_amb, g_depth, g_image, sigmas, rgbs, deltas, rays, ws, depth, image, T_thresh, backend):
    m = sigmas.shape[0]
    return sigmas.new_empty(m), sigmas.new_empty(m, 3), sigmas.new_empty(m, g_amb.shape[1])


def _composite_setup(ctx, inputs, output):
    sigmas, rgbs, _, deltas, rays, T_thresh, backend = inputs
    ws, _, depth, image = output
    ctx.save_for_backward(sigmas, rgbs, deltas, rays, ws, depth, image)
    ctx.T_thresh, ctx.backend = T_thresh, backend


def _composite_backward(ctx, g_ws, g_amb, g_depth, g_image):
    sigmas, rgbs, deltas, rays, ws, depth, image = ctx.saved_tensors
    v_sig, v_rgb, v_amb = composite_rays_train_backward(g_ws, g_amb, g_depth, g_image, sigmas, rgbs, deltas, rays,
                                                        ws, depth, image, ctx.T_thresh, ctx.backend)
    return v_sig, v_rgb, v_amb, None, None, None, None


composite_rays_train.register_autograd(_composite_backward, setup_context=_composite_setup)
