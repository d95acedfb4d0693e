"""audio2motion: train the pitch-aware VAE (speech -> person-normalised motion) on one subject or a corpus.

Losses (each logged as train/loss_<name>, weight as train/lambda_<name>): motion (region-weighted MSE through the
posterior), prior (the same through the prior at temperature 0: what inference outputs), lms (lip/eye landmark error
in head units), vel (velocity match), mouth (L1 on mouth opening and lip width), smooth (temporal Laplacian), kl
(cyclic annealing), sync (a frozen lip-sync expert, optional). The network that validation, checkpoints and inference
use is an exponential moving average of the trained weights (`network_ema`, decay `ema_decay`): with a constant
learning rate the iterates wander around a minimum, and their average generalises better than the last of them.
Validation decodes each val sequence at temperature 0 with eyes open and mouth amplitude 1 (the inference defaults)
and reports val/lmd (mean lip-point distance, head units), val/mouth_r and val/lip_width_r (Pearson r with the
tracked mouth opening / width).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lightning_modules.base import TalkFieldModule
from networks.audio2motion import Audio2Motion, PersonMotion
from networks.audio2motion import losses as L
from networks.audio2motion.postprocess import lip_width68, mouth_opening68
from networks.audio2motion.syncnet import sync_loss
from networks.audio2motion.vae import Audio2MotionVAE, denormalize_motion, kl_weight
from talkfield import landmarks as lmk
from talkfield.motion import from_offsets
from talkfield.runs import META_KEY, load_checkpoint

log = logging.getLogger(__name__)
STAGE = "audio2motion"


class Audio2MotionModule(TalkFieldModule):
    """network: Audio2MotionVAE; optimizer: partial optimizer; audio_features: the feature kind (reported and
    stored); lambda_*: loss weights; kl_max/kl_period/kl_ramp: cyclic KL annealing; region_*: landmark region
    weights; warmup_steps / lr_decay_steps: lr ramps up linearly, then lr * 0.1^(step / lr_decay_steps);
    sync_expert: a lip-sync checkpoint (experiment=lipsync) for the sync loss, or None; init_from: an
    audio2motion checkpoint whose network weights start this run (e.g. a generic corpus model); ema_decay: decay
    of the weight average `network_ema` (per step, reached after a warm-up of (1 + step) / (10 + step); 0: the
    average is the trained network itself)."""

    def __init__(self, network: Audio2MotionVAE, optimizer: Callable[..., torch.optim.Optimizer],
                 audio_features: str = "mel", lambda_motion: float = 1.0, lambda_prior: float = 1.0,
                 lambda_lms: float = 0.5, lambda_vel: float = 0.5, lambda_mouth: float = 1.0,
                 lambda_smooth: float = 0.05,
                 lambda_sync: float = 0.2, kl_max: float = 0.02, kl_period: int = 4000, kl_ramp: int = 2000,
                 region_lips: float = 5.0, region_eyes: float = 3.0, region_jaw: float = 1.0,
                 region_other: float = 1.0, warmup_steps: int = 200, lr_decay_steps: int = 100000,
                 sync_expert: str | None = None, init_from: str | None = None, ema_decay: float = 0.998):
        super().__init__()
        self.save_hyperparameters(ignore=["network", "optimizer"])
        self.network = network
        self.optimizer_factory = optimizer
        self.register_buffer("weights", L.region_weights(region_lips, region_eyes, region_jaw, region_other),
                             persistent=False)
        lm = torch.zeros(204)
        lm[torch.from_numpy(np.concatenate([3 * lmk.LIPS68 + i for i in range(3)]))] = region_lips
        lm[torch.from_numpy(np.concatenate([3 * lmk.EYES68 + i for i in range(3)]))] = region_eyes
        self.register_buffer("lms_weights", lm, persistent=False)
        self.expert = None
        self.expert_trained_on = None
        if sync_expert:
            from lightning_modules.lipsync import load_lipsync

            self.expert = load_lipsync(sync_expert)
            if self.expert.feat_dim != network.feat_dim:
                raise ValueError(f"model.sync_expert={sync_expert} uses {self.expert.feat_dim}-channel features, "
                                 f"this model {network.feat_dim}: train the expert with the same audio_features")
            if getattr(self.expert, "mel_norm", "level") != getattr(network, "mel_norm", "level"):
                raise ValueError(f"model.sync_expert={sync_expert} was trained on mel_norm={self.expert.mel_norm}, "
                                 f"this model uses {network.mel_norm}: train the expert with the same setting")
            self.expert_trained_on = self.expert.trained_on
            for p in self.expert.parameters():
                p.requires_grad_(False)
            self.expert.eval()
        if init_from:
            ck = load_checkpoint(init_from, stage=STAGE, subject=None, fingerprint_=None, allow_generic=True)
            self.network.load_state_dict(network_weights(ck["state_dict"]))
            log.info("network weights from %s (%s)", init_from, ck[META_KEY].get("subject") or "generic model")
        self.network_ema = copy.deepcopy(self.network).requires_grad_(False)
        self._trained_on: list[dict] = []
        self._person: PersonMotion | None = None

    # ---------------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is None:
            return
        dm.setup(stage)
        self._clips = dm.clips
        self._trained_on = dm.trained_on()
        self._corpus = bool(dm.corpus)
        self._person = None if (dm.corpus or len(dm.clips) != 1) else dm.clips[0].person
        if dm.features != self.hparams.audio_features:
            raise ValueError(f"data.features={dm.features} but model.audio_features={self.hparams.audio_features}")
        if not self.hparams.init_from:
            mean, std = dm.feature_stats()
            self.network.cond.set_feature_stats(mean, std)
            self.network_ema.cond.set_feature_stats(mean, std)
        log.info("audio2motion: audio features %s (%d channels), %d subject(s)%s", self.hparams.audio_features,
                 self.network.feat_dim, len(dm.clips), ", generic corpus model" if dm.corpus else "")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        x = batch["motion"]
        out = self.network(x, batch["features"], batch["f0"], batch["blink"], batch["mouth_amp"])
        w = self.weights
        terms = {
            "motion": L.weighted_mse(out["x_rec"], x, w),
            "prior": L.weighted_mse(out["x_prior"], x, w),
            "lms": 0.5 * (L.landmark_loss(out["x_rec"], x, batch["scale"], self.lms_weights)
                          + L.landmark_loss(out["x_prior"], x, batch["scale"], self.lms_weights)),
            "vel": L.velocity_loss(out["x_prior"], x, w),
            "mouth": 0.5 * sum(L.mouth_loss(out[k], x, batch["scale"], batch["mean"], batch["gap_base"],
                                            batch["width_base"], batch["amp_std"]) for k in ("x_rec", "x_prior")),
            "smooth": L.laplacian_loss(out["x_rec"]),
            "kl": out["kl"],
        }
        lambdas = {"motion": self.hparams.lambda_motion, "prior": self.hparams.lambda_prior,
                   "lms": self.hparams.lambda_lms, "vel": self.hparams.lambda_vel, "mouth": self.hparams.lambda_mouth,
                   "smooth": self.hparams.lambda_smooth,
                   "kl": kl_weight(self.global_step, self.hparams.kl_max, self.hparams.kl_period, self.hparams.kl_ramp)}
        if self.expert is not None:
            g = torch.Generator().manual_seed(int(self.global_step))
            terms["sync"] = sync_loss(self.expert, batch["features"], out["x_prior"], generator=g)
            lambdas["sync"] = self.hparams.lambda_sync
        loss = sum(lambdas[k] * v for k, v in terms.items())
        for k, v in terms.items():
            self.log(f"train/loss_{k}", v, prog_bar=k in ("motion", "prior"))
            self.log(f"train/lambda_{k}", float(lambdas[k]))
        self.log("train/loss", loss)
        return self.guard_loss(loss)

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """network_ema <- d * network_ema + (1 - d) * network, d = min(ema_decay, (1 + step) / (10 + step))."""
        step = self.global_step
        d = min(float(self.hparams.ema_decay), (1.0 + step) / (10.0 + step))
        for e, p in zip(self.network_ema.parameters(), self.network.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.network_ema.buffers(), self.network.buffers()):
            e.copy_(b)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        clip = self._clips[int(batch["subject_idx"][0])]
        x = batch["motion"]
        self.network_ema.eval()
        pred = self.network_ema.infer(batch["features"], batch["f0"], None, 1.0, 0.0)
        self.log("val/loss_prior", L.weighted_mse(pred, x, self.weights), batch_size=1)
        po = denormalize_motion(pred[0], clip.stats).cpu().numpy()
        go = denormalize_motion(x[0], clip.stats).cpu().numpy()
        lips = lmk.LIPS68
        self.log("val/lmd", float(np.linalg.norm(po[:, lips] - go[:, lips], axis=-1).mean()), batch_size=1)
        ms = clip.person.mean_shape
        pp, gp = from_offsets(po, ms), from_offsets(go, ms)
        r_open = L.pearson(torch.from_numpy(mouth_opening68(pp)), torch.from_numpy(mouth_opening68(gp)))
        r_width = L.pearson(torch.from_numpy(lip_width68(pp)), torch.from_numpy(lip_width68(gp)))
        self.log("val/mouth_r", r_open, batch_size=1, prog_bar=True)
        self.log("val/lip_width_r", r_width, batch_size=1)

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=[p for p in self.network.parameters() if p.requires_grad])
        warm, decay = max(1, self.hparams.warmup_steps), float(self.hparams.lr_decay_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.1 ** (s / decay))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add to the run metadata what this model was trained on and with, and the person's statistics."""
        meta = dict(checkpoint.get(META_KEY) or {})
        meta["audio_features"] = self.hparams.audio_features
        meta["trained_on"] = self._trained_on
        meta["sync_expert_trained_on"] = self.expert_trained_on
        checkpoint[META_KEY] = meta
        p = self._person
        checkpoint["audio2motion_person"] = None if p is None else {
            "stats": torch.from_numpy(p.stats), "mean_shape": torch.from_numpy(p.mean_shape),
            "eye_quantiles": torch.tensor(p.eye_quantiles, dtype=torch.float64),
            "database": torch.from_numpy(p.database), "closed_eyes": torch.from_numpy(p.closed_eyes)}

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        return {k: v for k, v in sd.items() if not k.startswith("expert.")}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.expert is not None:
            state_dict = {**state_dict, **{f"expert.{k}": v for k, v in self.expert.state_dict().items()}}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def network_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights inference uses from an audio2motion checkpoint's state_dict: the weight average (network_ema.*),
    or network.* in checkpoints written before it existed."""
    prefix = "network_ema." if any(k.startswith("network_ema.") for k in state_dict) else "network."
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def build_network(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the network a checkpoint was trained with from its resolved config (meta['config'])."""
    from hydra.utils import instantiate

    net_cfg = ((meta.get("config") or {}).get("model") or {}).get("network")
    if not net_cfg:
        raise ValueError("checkpoint metadata holds no model.network config")
    return instantiate(net_cfg)


def load_audio2motion(path: str | Path, subject: str | None, fingerprint: str | None, allow_generic: bool = True,
                      map_location: str | torch.device = "cpu") -> Audio2Motion:
    """Load an Audio2Motion checkpoint for `subject` (with that dataset's fingerprint) or a generic corpus model
    (allow_generic). Refuses another subject's model, another preprocessing of the subject, another stage or
    format version (talkfield.runs.check_meta). Returns Audio2Motion(network in eval mode on `map_location`, features,
    person, meta).

    The file is always read onto the CPU (the person's statistics become numpy arrays; a network built on the CPU
    and filled by load_state_dict would stay there), then the network is moved to `map_location`."""
    ck = load_checkpoint(path, stage=STAGE, subject=subject, fingerprint_=fingerprint, allow_generic=allow_generic,
                         map_location="cpu")
    meta = ck[META_KEY]
    net = build_network(meta)
    net.load_state_dict(network_weights(ck["state_dict"]))
    net.to(torch.device(map_location)).eval()
    p = ck.get("audio2motion_person")
    person = None
    if p is not None:
        person = PersonMotion(p["stats"].numpy(), p["mean_shape"].numpy(), tuple(p["eye_quantiles"].tolist()),
                              p["database"].numpy(), p["closed_eyes"].numpy())
    return Audio2Motion(network=net, features=meta.get("audio_features", "mel"), person=person, meta=meta)
