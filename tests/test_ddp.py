"""Data-parallel training on CPU (gloo): identical occupancy grids across ranks after an update, a 2-process
head run, and its checkpoint resumed in 1 process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cuda_ext import OccupancyGrid
from tests.helpers import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grid_worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from lightning_modules.head_nerf import all_reduce_max

        centre = torch.tensor([0.4 * (rank - 0.5), 0.0, 0.1 * rank])  # each rank sees a different "frame"

        def density(x):
            return 50.0 * torch.exp(-((x - centre) ** 2).sum(-1) / 0.05)

        for sync in (True, False):
            grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=16)
            g = torch.Generator().manual_seed(1234)  # the jitter is seeded by the step, the same on every rank
            grid.update(density, generator=g, reduce_fn=all_reduce_max if sync else None)
            grids = [torch.zeros_like(grid.density_grid) for _ in range(world)]
            dist.all_gather(grids, grid.density_grid)
            bits = [torch.zeros_like(grid.bitfield) for _ in range(world)]
            dist.all_gather(bits, grid.bitfield)
            if rank == 0:
                out[sync] = (all(torch.equal(grids[0], g_) for g_ in grids), all(torch.equal(bits[0], b) for b in bits))
    finally:
        dist.destroy_process_group()


def test_grids_identical_across_ranks_only_when_synced():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_grid_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        assert out[True] == (True, True), "synced updates must leave identical grids and bitfields"
        assert out[False] == (False, False), "without the all-reduce the ranks' grids differ (the test can fail)"


@pytest.mark.slow
def test_two_process_head_run_resumes_in_one_process(tiny_subject, tmp_path):
    data_dir, name = tiny_subject
    env = {**os.environ, "TALKFIELD_OUTPUTS": str(tmp_path), "WANDB_MODE": "offline"}
    common = ["experiment=head_nerf", f"subject.name={name}", f"paths.data_dir={data_dir}", "logger=csv",
              "trainer.accelerator=cpu", "trainer.val_check_interval=10", "model.grid_warmup_steps=2",
              "model.grid_update_interval=2", "model.val_video=false"]
    ddp = subprocess.run([sys.executable, str(ROOT / "train.py"), *common, "trainer=ddp", "trainer.devices=2",
                          "trainer.max_steps=10", "run_id=ddp"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    ckpt = tmp_path / name / "head" / "ddp" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 10
    one = subprocess.run([sys.executable, str(ROOT / "train.py"), *common, "trainer.max_steps=14",
                          "run_id=single", f"ckpt_path={ckpt}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert one.returncode == 0, one.stderr[-4000:]
    resumed = torch.load(tmp_path / name / "head" / "single" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 14
    key = next(k for k in state["state_dict"] if k.endswith("grid.density_grid"))
    assert torch.isfinite(resumed["state_dict"][key]).all()
