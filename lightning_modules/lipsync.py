"""lipsync: train our own lip-sync expert (audio window vs mouth-landmark window, contrastive) on train splits.

Logs train/loss_nce, train/acc (the aligned window ranks first in its batch), val/auc (aligned vs time-shifted
pairs on the val splits). The checkpoint metadata names the data it was trained on (`trained_on`: subjects,
fingerprints, train frame ranges); `load_lipsync` refuses a checkpoint without it, and every score the expert
gives (`networks.audio2motion.syncnet.sync_auc`) carries it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from lightning_modules.base import TalkFieldModule
from networks.audio2motion.syncnet import LipSyncExpert, contrastive_loss, sync_auc
from talkfield.runs import META_KEY, CheckpointError, load_checkpoint

STAGE = "lipsync"


class LipSyncModule(TalkFieldModule):
    """expert: LipSyncExpert; optimizer: partial optimizer; min_shift / max_shift: frames of the shifted
    negatives (training); val_shifts: shifts scored by val/auc; audio_features: the feature kind."""

    def __init__(self, expert: LipSyncExpert, optimizer: Callable[..., torch.optim.Optimizer], min_shift: int = 3,
                 max_shift: int = 12, val_shifts: tuple[int, ...] = (-8, -5, -3, 3, 5, 8), audio_features: str = "mel"):
        super().__init__()
        self.save_hyperparameters(ignore=["expert", "optimizer"])
        self.expert = expert
        self.optimizer_factory = optimizer
        self._trained_on: list[dict] = []

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None:
            return
        dm.setup(stage)
        self._trained_on = dm.trained_on()
        self.expert.trained_on = self._trained_on
        self._val_names = [c.name for c in dm.clips]
        mean, std = dm.feature_stats()
        self.expert.set_feature_stats(mean, std)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        g = torch.Generator().manual_seed(int(self.global_step))
        out = contrastive_loss(self.expert, batch["features"], batch["motion"], generator=g,
                               min_shift=self.hparams.min_shift, max_shift=self.hparams.max_shift)
        self.log("train/loss_nce", out["loss"], prog_bar=True)
        self.log("train/lambda_nce", 1.0)
        self.log("train/acc", out["acc"], prog_bar=True)
        self.log("train/cos_pos", out["cos_pos"])
        self.log("train/cos_neg", out["cos_neg"])
        return self.guard_loss(out["loss"])

    def on_validation_epoch_start(self) -> None:
        self._val_seqs = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        self._val_seqs.append((batch["features"][0], batch["motion"][0]))

    def on_validation_epoch_end(self) -> None:
        res = sync_auc(self.expert, self._val_seqs, tuple(self.hparams.val_shifts), data="val splits")
        self.log("val/auc", res["auc"], prog_bar=True)  # NaN when the val splits are shorter than a window

    def configure_optimizers(self):
        return self.optimizer_factory(params=self.expert.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = dict(checkpoint.get(META_KEY) or {})
        meta["trained_on"] = self._trained_on
        meta["audio_features"] = self.hparams.audio_features
        checkpoint[META_KEY] = meta


def load_lipsync(path: str | Path, map_location: str | torch.device = "cpu") -> LipSyncExpert:
    """Load a lip-sync expert (eval mode) with `.trained_on` from its checkpoint metadata (refused if absent)."""
    from lightning_modules.audio2motion import build_network

    ck = load_checkpoint(path, stage=STAGE, subject=None, fingerprint_=None, allow_generic=True,
                         map_location=map_location)
    meta = ck[META_KEY]
    if not meta.get("trained_on"):
        raise CheckpointError(f"{path}: the lip-sync checkpoint does not name the data it was trained on")
    cfg = {"config": {"model": {"network": meta["config"]["model"]["expert"]}}}
    expert = build_network(cfg)
    expert.load_state_dict({k[len("expert."):]: v for k, v in ck["state_dict"].items() if k.startswith("expert.")})
    expert.trained_on = meta["trained_on"]
    return expert.eval()
