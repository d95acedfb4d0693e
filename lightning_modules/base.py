"""Pieces every TalkField LightningModule shares: run metadata + RNG state in checkpoints, NaN guard, media logging."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from talkfield.runs import META_KEY

log = logging.getLogger(__name__)


class RunStateCallback(Callback):
    """Writes the run's metadata (stage, subject, fingerprint, format version, config) into every checkpoint and
    saves/restores the Python, NumPy and torch RNG states, so `ckpt_path=` resumes bit-for-bit on CPU."""

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = self.meta
        rng = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
               "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2]),
               "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = rng

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng_states")
        if not rng:
            return
        random.setstate((3, tuple(rng["python"]), rng["python_pos"]))
        np.random.set_state(("MT19937", np.asarray(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])


class TalkFieldModule(LightningModule):
    """Base module: a NaN guard that skips the optimizer step (and logs it) and media logging to files + loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long), persistent=True)

    # --- per-step logging -----------------------------------------------------------------------------------
    def logs_this_step(self) -> bool:
        """Whether the loggers write this training step's on-step values. Lightning writes them every
        `trainer.log_every_n_steps` optimizer steps (and on a step that ends with a stop request); a stage computes
        and `self.log`s its per-step terms only then: each `self.log` costs ~0.5 ms of host time and a few small
        device ops, which the other steps would pay for values no logger ever sees. Between those steps a callback
        that monitors a `train/` value sees the last logged one, and so does the logger when a callback requests the
        stop after training_step ran (e.g. a wall-time budget)."""
        trainer = self._trainer
        if trainer is None or trainer.fast_dev_run:
            return True
        n = trainer.log_every_n_steps
        return bool(n) and ((self.global_step + 1) % n == 0 or trainer.should_stop)

    def prog_bar(self) -> bool:
        """`prog_bar=` for the per-step values a stage shows: only with a progress bar, since Lightning turns every
        prog_bar value into a Python number after each step (a host sync on the GPU)."""
        return self._trainer is not None and self._trainer.progress_bar_callback is not None

    # --- NaN guard -----------------------------------------------------------------------------------------
    def guard_loss(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Return the loss, or None (Lightning then skips backward + step) when it is not finite.

        Under DDP every rank must agree, so the decision is all-reduced: one bad rank skips the step everywhere.
        """
        bad = not math.isfinite(loss.item())  # on the GPU this waits for the forward pass
        if self.trainer is not None and self.trainer.world_size > 1:
            flag = torch.tensor(float(bad), device=loss.device)
            bad = self.trainer.strategy.reduce(flag, reduce_op="max").item() > 0
        if bad:
            self.skipped_steps += 1
            self.log("train/skipped_nonfinite", self.skipped_steps.float(), on_step=True, sync_dist=False)
            log.warning("step %d: non-finite loss; optimizer step skipped (%d so far)", self.global_step,
                        int(self.skipped_steps))
            return None
        return loss

    # --- media ---------------------------------------------------------------------------------------------
    @property
    def media_dir(self) -> Path | None:
        if self.trainer is None or self.trainer.default_root_dir is None:
            return None
        return Path(self.trainer.default_root_dir) / "media"

    def log_images(self, key: str, images: list[np.ndarray], captions: list[str] | None = None) -> list[Path]:
        """Write uint8 [H,W,3] images as PNG under <run>/media/ and send them to W&B when it is the logger."""
        import cv2

        paths = []
        if not self.trainer.is_global_zero or self.media_dir is None:
            return paths
        out = self.media_dir / key.replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            p = out / f"step{self.global_step:07d}_{i}.png"
            cv2.imwrite(str(p), np.ascontiguousarray(img[..., ::-1]))
            paths.append(p)
        for lg in self.loggers:
            if type(lg).__name__ == "WandbLogger":
                lg.log_image(key=key, images=list(images), caption=captions, step=self.global_step)
        return paths

    def log_video(self, key: str, frames: list[np.ndarray], fps: int = 25) -> Path | None:
        """Write uint8 [H,W,3] frames as an MP4 under <run>/media/ and send it to W&B when it is the logger."""
        if not self.trainer.is_global_zero or self.media_dir is None or not frames:
            return None
        from talkfield.media import VideoWriter

        out = self.media_dir / key.replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        p = out / f"step{self.global_step:07d}.mp4"
        h, w = frames[0].shape[:2]
        with VideoWriter(p, fps=fps, size=(w, h)) as vw:
            for f in frames:
                vw.write(f)
        for lg in self.loggers:
            if type(lg).__name__ == "WandbLogger":
                import wandb

                lg.experiment.log({key: wandb.Video(str(p), format="mp4")}, step=self.global_step)
        return p
