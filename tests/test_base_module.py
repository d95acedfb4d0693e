"""TalkFieldModule's shared pieces on a toy module and a plain CPU Trainer: the NaN guard skips the optimizer step and
counts it, and `logs_this_step` names exactly the steps whose on-step values Lightning writes to the loggers."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_modules.base import TalkFieldModule


class _Toy(TalkFieldModule):
    def __init__(self, nan_at: int = -1):
        super().__init__()
        self.net = torch.nn.Linear(2, 1)
        self.nan_at = nan_at
        self.weights: list[torch.Tensor] = []
        self.decisions: list[tuple[int, bool, bool]] = []  # (step, ours, Lightning's)

    def training_step(self, batch, batch_idx):
        self.weights.append(self.net.weight.detach().clone())
        self.decisions.append((self.global_step, self.logs_this_step(),
                               self.trainer._logger_connector.should_update_logs))
        loss = (self.net(batch) ** 2).mean()
        if self.global_step == self.nan_at:
            loss = loss * math.nan
        if self.logs_this_step():
            self.log("train/loss", loss.detach())
        return self.guard_loss(loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module: _Toy, steps: int, tmp_path, **kwargs) -> Trainer:
    data = DataLoader(torch.randn(64, 2), batch_size=4)
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs)
    trainer.fit(module, data)
    return trainer


def test_guard_skips_non_finite_step(tmp_path):
    m = _Toy(nan_at=2)
    _fit(m, 5, tmp_path)
    w = m.weights
    assert torch.equal(w[2], w[3]), "the non-finite step must not change the weights"
    assert not torch.equal(w[1], w[2]) and not torch.equal(w[3], w[4])
    assert int(m.skipped_steps) == 1


@pytest.mark.parametrize("every", [1, 3, 10])
def test_logs_this_step_matches_lightning(tmp_path, every):
    m = _Toy()
    _fit(m, 12, tmp_path, log_every_n_steps=every)
    assert len(m.decisions) == 12
    for step, ours, theirs in m.decisions:
        assert ours == theirs, (step, ours, theirs)
    assert sum(d[1] for d in m.decisions) == 12 // every
