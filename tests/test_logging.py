"""W&B logs offline with no network and no login, never blocks; the resolved config is logged once."""

from __future__ import annotations

import socket
import time

import pytest

from talkfield.loggers import resolve_wandb_mode
from tests.helpers import run_stage


def test_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"


def test_wandb_offline_run_without_network(monkeypatch, tmp_path):
    """A fit_image run with logger=wandb while every network connection fails: finishes, writes the run."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    real_connect = socket.socket.connect
    blocked = []

    def loopback_only(sock, address):
        # W&B talks to its own local service over loopback; everything else is "the network" and fails
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host in ("localhost", "::1") or host.startswith("127.")):
            return real_connect(sock, address)
        blocked.append(address)
        raise OSError(f"network disabled in this test: {address}")

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    t0 = time.time()
    metrics, run_dir = run_stage(["experiment=fit_image", "logger=wandb", "data.size=32", "data.batch_size=256",
                                  "trainer.max_steps=10", "trainer.val_check_interval=10"], tmp_path)
    assert time.time() - t0 < 120
    assert "val/psnr" in metrics
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, "expected an offline W&B run directory"
    assert list(offline_runs[0].glob("*.wandb")), "the offline run must hold its log file"
    assert list((run_dir / "media").rglob("*.png")), "images are also files in the run directory"
    import wandb

    assert wandb.run is None, "W&B must be closed after the run"


def test_requires_gpu_helper_calls_cuda_check():
    import torch

    from tests.conftest import requires_gpu

    mark = requires_gpu()
    assert mark.args[0] is (not torch.cuda.is_available())


@pytest.mark.gpu
def test_gpu_marker_runs_only_with_cuda():
    import torch

    assert torch.cuda.is_available()
    x = torch.randn(1024, device="cuda")
    assert torch.isfinite((x @ x).cpu())
