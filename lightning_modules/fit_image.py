"""fit_image: a coordinate network fitted to a real photograph. The frame's own small real experiment."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.base import TalkFieldModule
from networks.losses import psnr


class FitImageModule(TalkFieldModule):
    """Fits `network` (xy [N,2] -> rgb [N,3]) with MSE; logs train/loss_mse, val/psnr and the reconstruction."""

    def __init__(self, network: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, image_size: int = 128):
        super().__init__()
        # optimizer/scheduler factories stay out of the checkpoint (it must load with weights_only=True);
        # the resolved config travels in checkpoint["talkfield"]["config"]
        self.save_hyperparameters(ignore=["network", "optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.network = network
        self.image_size = image_size

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        pred = self.network(batch["xy"])
        loss = F.mse_loss(pred, batch["rgb"])
        self.log("train/loss_mse", loss, prog_bar=True)
        self.log("train/lambda_mse", 1.0)
        return self.guard_loss(loss)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        pred = torch.cat([self.network(xy) for xy in batch["xy"].split(16384)])
        value = psnr(pred, batch["rgb"])
        self.log("val/psnr", value, prog_bar=True)
        s = self.image_size
        img = (pred.reshape(s, s, 3).clamp(0, 1) * 255).byte().cpu().numpy()
        gt = (batch["rgb"].reshape(s, s, 3) * 255).byte().cpu().numpy()
        self.log_images("val/reconstruction", [torch.cat([torch.from_numpy(gt), torch.from_numpy(img)], 1).numpy()],
                        captions=["ground truth | fit"])

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=opt),
                                                   "interval": "step"}}
