"""The perceptual network behind the perceptual loss and the LPIPS metric. Nothing is downloaded:

- standard LPIPS (`lpips` package, AlexNet or VGG16 backbone) when the torchvision ImageNet backbone weights are
  in the torch hub cache (`$TORCH_HOME/hub/checkpoints/`, e.g. alexnet-owt-7be5be79.pth) or passed as a file;
- otherwise the shift-tolerant LPIPS of the `stlpips-pytorch` package, whose complete weights ship in its wheel.

`build_perceptual` logs which one it built; tables must name the variant (`describe` returns it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
"""torchvision's ImageNet backbone files, as `torch.hub` caches them."""


def torchvision_weights(net: str) -> Path | None:
    """Path of the cached torchvision backbone for `net` ('alex' | 'vgg'), or None when it is not there."""
    p = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[net]
    return p if p.is_file() else None


def _freeze(m: nn.Module) -> nn.Module:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def load_lpips(net: str, backbone_path: Path | str) -> nn.Module:
    """Standard LPIPS: the `lpips` package's linear heads (shipped in its wheel) on a torchvision backbone whose
    state_dict (at least its `features.*` keys) is read from `backbone_path`. Every backbone parameter must be
    found with the right shape, else ValueError."""
    import lpips

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)  # random backbone: no download
    state = torch.load(backbone_path, map_location="cpu", weights_only=True)
    loaded = 0
    for sl in (getattr(model.net, f"slice{k}") for k in range(1, model.net.N_slices + 1)):
        for idx, module in sl.named_children():
            for pname, param in module.named_parameters(recurse=False):
                key = f"features.{idx}.{pname}"
                if key not in state:
                    raise ValueError(f"{backbone_path}: no {key} for the LPIPS {net} backbone (is it torchvision's {net}?)")
                if tuple(state[key].shape) != tuple(param.shape):
                    raise ValueError(f"{backbone_path}: {key} has shape {tuple(state[key].shape)}, "
                                     f"LPIPS {net} needs {tuple(param.shape)}")
                with torch.no_grad():
                    param.copy_(state[key])
                loaded += 1
    if loaded == 0:
        raise ValueError(f"{backbone_path}: nothing loaded into the LPIPS {net} backbone")
    return _freeze(model)


def load_stlpips(net: str) -> nn.Module:
    """Shift-tolerant LPIPS (`stlpips-pytorch`, weights in the wheel). Its module imports IPython and torchsummary."""
    from stlpips_pytorch import stlpips

    model = stlpips.LPIPS(net=net, variant="shift_tolerant", pretrained=False, verbose=False)
    path = Path(stlpips.__file__).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    res = model.load_state_dict(state, strict=False)
    # `lins.k.*` are aliases of `link.*` (the same modules listed twice); anything else missing is an error
    missing = [k for k in res.missing_keys if not (k.startswith("lins.") and f"lin{k.split('.')[1]}." +
                                                   ".".join(k.split(".")[2:]) in state)]
    if missing or res.unexpected_keys:
        raise ValueError(f"{path}: shift-tolerant LPIPS {net} weights do not match (missing {missing[:5]}, "
                         f"unexpected {res.unexpected_keys[:5]})")
    return _freeze(model)


def build_perceptual(net: str = "alex", variant: str = "auto",
                     backbone_path: str | None = None) -> tuple[nn.Module, str]:
    """The perceptual network and its name for tables.

    net: 'alex' | 'vgg'. variant: 'auto' (standard LPIPS when the torchvision backbone is available, else
    shift-tolerant), 'lpips' (standard, error without the backbone) or 'stlpips'. backbone_path: a torchvision
    backbone file (default: the torch hub cache). Returns (frozen module in eval mode, e.g. 'lpips-alex').
    """
    if net not in TORCHVISION_FILES:
        raise ValueError(f"perceptual net {net!r}: use 'alex' or 'vgg'")
    if variant not in ("auto", "lpips", "stlpips"):
        raise ValueError(f"perceptual variant {variant!r}: use auto, lpips or stlpips")
    path = Path(backbone_path) if backbone_path else torchvision_weights(net)
    if variant == "lpips" or (variant == "auto" and path is not None):
        if path is None or not path.is_file():
            raise FileNotFoundError(f"standard LPIPS ({net}) needs torchvision's {TORCHVISION_FILES[net]} in "
                                    f"{Path(torch.hub.get_dir()) / 'checkpoints'} (or pass its path); nothing is "
                                    "downloaded. Use variant=stlpips for the shift-tolerant LPIPS that ships its weights")
        model, name = load_lpips(net, path), f"lpips-{net}"
    else:
        model, name = load_stlpips(net), f"stlpips-{net}"
    log.info("perceptual network: %s (%s)", name, "torchvision backbone " + str(path) if name.startswith("lpips")
             else "shift-tolerant LPIPS, weights from the stlpips-pytorch wheel")
    return model, name
