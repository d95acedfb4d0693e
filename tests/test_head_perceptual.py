"""The perceptual network: the shift-tolerant LPIPS from the stlpips-pytorch wheel loads (real weights), and the
standard-LPIPS path loads a torchvision backbone state_dict (built here with random values: no pretrained
weights are faked, the test checks the loading code)."""

from __future__ import annotations

import pytest
import torch

from networks.perceptual import build_perceptual, load_lpips


def test_stlpips_loads_and_measures():
    net, name = build_perceptual("alex", "stlpips")
    assert name == "stlpips-alex"
    assert not any(p.requires_grad for p in net.parameters())
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 64, 64, generator=g)
    b = (a + 0.2 * torch.rand(1, 3, 64, 64, generator=g)).clamp(0, 1)
    same = float(net(a, a, normalize=True).mean())
    near = float(net(a, b, normalize=True).mean())
    far = float(net(a, torch.rand(1, 3, 64, 64, generator=g), normalize=True).mean())
    assert same == pytest.approx(0.0, abs=1e-6) and 0 < near < far


def _save_backbone(path, drop=None):
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features
    state = {f"features.{k}": v for k, v in features.state_dict().items() if k != drop}
    torch.save(state, path)
    return state


def test_standard_lpips_loads_a_torchvision_backbone(tmp_path, monkeypatch):
    path = tmp_path / "alexnet-features.pth"
    state = _save_backbone(path)
    net = load_lpips("alex", path)
    assert torch.equal(getattr(net.net.slice1, "0").weight, state["features.0.weight"])
    assert torch.equal(getattr(net.net.slice5, "10").bias, state["features.10.bias"])
    x = torch.rand(1, 3, 64, 64)
    assert float(net(x, x, normalize=True).mean()) == pytest.approx(0.0, abs=1e-6)
    _, name = build_perceptual("alex", "auto", backbone_path=str(path))
    assert name == "lpips-alex"
    bad = tmp_path / "bad.pth"
    _save_backbone(bad, drop="3.weight")
    with pytest.raises(ValueError, match="features.3.weight"):
        load_lpips("alex", bad)
    # without cached torchvision weights: auto falls back to ST-LPIPS, an explicit 'lpips' says what is missing
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    assert build_perceptual("alex", "auto")[1] == "stlpips-alex"
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        build_perceptual("alex", "lpips")
