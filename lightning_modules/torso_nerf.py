"""Torso RadNeRF stage: a frozen head (initialized from a head run, weights only) and a deformable 2D torso field,
composited head over torso over the background plate, then the head's super-resolution. Wiring, loss weighting,
validation and media only; the field is `networks.nerf.torso_field`, the head is `lightning_modules.head_nerf`.

Two different keys (CONTRACTS.md section 1): `model.init_from=<head .ckpt | head run dir | latest>` builds the frozen
head from a head checkpoint (weights only; its optimizer is not resumed); `ckpt_path=` resumes a torso run fully.
Inference calls `load_torso(path, subject, fingerprint)` and `render_frame(...)` (pre-SR) then `super_resolve`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.streams import step_generator
from lightning_modules.head_nerf import all_reduce_max
from lightning_modules.base import TalkFieldModule
from networks import losses as L
from networks.nerf.torso_field import ImageOccupancy, POSE_DIM, TorsoField, pixel_coords, pose_features
from talkfield import landmarks as lmk
from talkfield.camera import project
from talkfield.runs import META_KEY, CheckpointError

log = logging.getLogger(__name__)

JAW_IN_68 = np.array([int(np.flatnonzero(lmk.LM68_FROM_478 == i)[0]) for i in lmk.JAW])
"""Positions of the torso's 7 jaw points (`talkfield.landmarks.JAW`) inside the 68-point layout (5..11)."""

INIT_FROM_HELP = ("model.init_from takes the head to build on: a head checkpoint (.ckpt), a head run directory, or "
                  "`latest` (the subject's newest head run), e.g. `python train.py experiment=torso_nerf "
                  "model.init_from=latest`")

LOSS_DEFAULTS: dict[str, Any] = {
    "photometric": "mse",      # mse | l1 | huber
    "lambda_torso": 1.0,       # torso over the plate vs the frame's own torso over the plate, render size
    "lambda_composite": 1.0,   # head over torso over plate vs the real frame, render size
    "lambda_composite_sr": 1.0,  # SR(composite) vs the real frame at 2 x render size (through the SR, frozen or not)
    "lambda_entropy": 1.0e-4,  # torso alpha entropy
    "lambda_deform": 0.0,      # mean |dx| of the deformation
}


def _merge(base: dict, over: dict | None) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        if k not in base:
            raise KeyError(f"model.loss.{k} is not a torso loss option; known: {sorted(base)}")
        out[k] = v
    return out


def build_head(init_from: str | None, subject: str | None, data_dir: str | None, runs_dir: str | None,
               map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], Path]:
    """Load the frozen head for a torso run: resolve `init_from` (file, run dir or `latest`), check the checkpoint is
    a head of this subject and preprocessing (fingerprint of `data_dir/subject`), rebuild it from the config saved
    in it and load its weights strictly. Returns (head module, its model config, checkpoint path)."""
    from lightning_modules.head_nerf import load_head
    from talkfield.dataset import open_subject
    from talkfield.runs import resolve_checkpoint

    if init_from in (None, "", "???", "null"):
        raise CheckpointError(f"the torso stage needs a trained head: {INIT_FROM_HELP}")
    try:
        path = resolve_checkpoint(str(init_from), runs_dir or "outputs", subject or "", "head")
    except CheckpointError as e:
        raise CheckpointError(f"model.init_from={init_from}: {e}. {INIT_FROM_HELP}") from e
    fingerprint = open_subject(data_dir, subject).fingerprint if (data_dir and subject) else None
    try:
        head = load_head(path, subject=subject, fingerprint=fingerprint, map_location=map_location)
    except CheckpointError as e:
        hint = " (to resume a torso run, pass ckpt_path=<torso run> instead)" if "'torso'" in str(e) else ""
        raise CheckpointError(f"model.init_from={init_from}: {e}{hint}") from e
    except RuntimeError as e:
        raise CheckpointError(f"model.init_from={init_from}: the head checkpoint {path} does not match its own saved "
                              f"config ({e}); it was written by incompatible code: retrain the head") from e
    meta = torch.load(path, map_location="cpu", weights_only=True)[META_KEY]
    return head, meta["config"]["model"], path


class TorsoNeRFModule(TalkFieldModule):
    """The torso stage.

    Args:
        network: the torso field (`networks.nerf.torso_field.TorsoField`, kept as `self.field`).
        init_from: the head to build on (see INIT_FROM_HELP); subject, data_dir, runs_dir: where to resolve and
            check it. head_config: the head's model config (set by `load_torso`: the head is rebuilt from it and
            its weights come from the torso checkpoint; init_from is then not read).
        optimizer / scheduler: partial factories (kept out of the checkpoint); lr_multipliers: {grid, mlp, sr}.
        loss: overrides of LOSS_DEFAULTS. train_sr: fine-tune a copy of the head's super-resolution (else the
            head's SR stays frozen and losses only flow through it).
        occupancy: `ImageOccupancy` args {resolution, decay, threshold, dilation}; grid_update_interval /
            grid_warmup_steps: updates every n steps after the warm-up (every pixel is evaluated before).
        pose_std_min: floor of the pose features' std when normalising them.
        head_cache: keep each frame's frozen head render (rgb + alpha, fp16) on the device after the first time.
        val_images, val_video: media each validation. seed: per-step randomness from (seed, step).
    """

    def __init__(self, network: TorsoField, init_from: str | None = None, subject: str | None = None,
                 data_dir: str | None = None, runs_dir: str | None = None, head_config: dict | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None, lr_multipliers: dict[str, float] | None = None,
                 loss: dict[str, Any] | None = None, train_sr: bool = False, occupancy: dict[str, Any] | None = None,
                 render_size: int = 256, grid_update_interval: int = 16, grid_warmup_steps: int = 0,
                 pose_std_min: float = 0.02, head_cache: bool = True, val_images: int = 3, val_video: bool = True,
                 seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["network", "optimizer", "scheduler", "head_config"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        if head_config is not None:
            from hydra.utils import instantiate

            self.head = instantiate(head_config, _convert_="partial")
            self.head_config, self.head_source = dict(head_config), None
        else:
            self.head, self.head_config, self.head_source = build_head(init_from, subject, data_dir, runs_dir)
            log.info("torso: frozen head from %s", self.head_source)
        self.head.requires_grad_(False)
        self.head.eval()
        self.field = network
        self.sr_finetune = copy.deepcopy(self.head.sr).requires_grad_(True) if train_sr else None
        self.occupancy = ImageOccupancy(**(occupancy or {}))
        self.loss_cfg = _merge(LOSS_DEFAULTS, loss)
        self.lr_multipliers = {"grid": 10.0, "mlp": 1.0, "sr": 1.0, **(lr_multipliers or {})}
        self.render_size = int(render_size)
        if int(self.head.render_size) != self.render_size:
            raise ValueError(f"the head was trained at render_size {int(self.head.render_size)}, this torso run uses "
                             f"data.render_size={self.render_size}: pass data.render_size={int(self.head.render_size)}")
        self.register_buffer("jaw_mean", torch.zeros(len(JAW_IN_68), 3))
        self.register_buffer("pose_stats", torch.stack([torch.zeros(POSE_DIM), torch.ones(POSE_DIM)]))
        self.register_buffer("plate", torch.zeros(self.render_size, self.render_size, 3), persistent=False)
        self._head_cache: dict[int, torch.Tensor] = {}
        self._pixels_cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}  # eval mode only
        self._val_frames: list[np.ndarray] = []

    # --- frozen head ----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "TorsoNeRFModule":
        super().train(mode)
        self.head.eval()  # frozen: always in eval mode
        self._pixels_cache = {}  # the occupancy may change while training: re-read it after any mode switch
        return self

    @property
    def sr(self) -> nn.Module:
        """The super-resolution network used: the fine-tuned copy (train_sr) or the head's own."""
        return self.sr_finetune if self.sr_finetune is not None else self.head.sr

    def super_resolve(self, image: torch.Tensor) -> torch.Tensor:
        """image [H, W, 3] or [B, H, W, 3] -> 2x the size, in [0, 1] (with `sr`)."""
        x = image if image.dim() == 4 else image[None]
        out = self.sr(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return out if image.dim() == 4 else out[0]

    @torch.no_grad()
    def head_rgba(self, c2w: torch.Tensor, K: torch.Tensor, motion: torch.Tensor, eye: torch.Tensor,
                  frame: int | torch.Tensor, size: int, cache: bool = False) -> torch.Tensor:
        """The frozen head's render of one frame: [size, size, 4] float32 (premultiplied rgb, alpha). With `cache`
        (training and validation frames of this subject at the render size), kept on the device in fp16."""
        key = int(frame)
        if cache and self.hparams.head_cache and key >= 0 and key in self._head_cache:
            return self._head_cache[key].float()
        out = self.head.render_head(c2w, K, motion, eye, frame, None, size)
        rgba = torch.cat([out["rgb"].float(), out["alpha"].float()[..., None]], dim=-1)
        if cache and self.hparams.head_cache and key >= 0:
            self._head_cache[key] = rgba.half()
        return rgba

    # --- conditions (the same at training and inference: nothing detected) ----------------------------------------
    def jaw_points(self, motion: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, size: int) -> torch.Tensor:
        """The torso's jaw condition: raw canonical offsets motion [B, 204] (or [B, 68, 3]) of the target frame +
        the person's mean jaw, projected with c2w [B, 4, 4] and K [3, 3] (at `size`) -> [B, 7, 2] in [-1, 1]."""
        off = motion.float().reshape(motion.shape[0], 68, 3)[:, torch.as_tensor(JAW_IN_68, device=motion.device)]
        uv, _ = project(self.jaw_mean + off, c2w.float(), K.float())
        return uv / size * 2.0 - 1.0

    def torso_condition(self, c2w: torch.Tensor, K: torch.Tensor, motion: torch.Tensor, frame: torch.Tensor,
                        size: int) -> torch.Tensor:
        """One image's torso condition [1, C]: c2w [4, 4], K [3, 3] at `size`, motion [W, 204] raw offsets (the
        window's centre frame is used), frame index (-1: not a training frame -> mean code)."""
        return self.torso_conditions(c2w[None], K, motion[None], torch.as_tensor(frame).reshape(1), size)

    def torso_conditions(self, c2w: torch.Tensor, K: torch.Tensor, motion: torch.Tensor, frame: torch.Tensor,
                         size: int) -> torch.Tensor:
        """The torso conditions of B images [B, C]: c2w [B, 4, 4], K [3, 3] at `size`, motion [B, W, 204] raw
        offsets (each window's centre frame is used), frame [B] indices (-1: not a training frame -> mean code)."""
        centre = motion[:, motion.shape[1] // 2]
        jaw = self.jaw_points(centre, c2w, K, size)
        pose = (pose_features(c2w.float()) - self.pose_stats[0]) / self.pose_stats[1]
        code = self.field.codes(torch.as_tensor(frame, device=self.device).reshape(c2w.shape[0]))
        return self.field.encode_condition(jaw, pose.clamp(-4.0, 4.0), code)

    def render_torso(self, cond: torch.Tensor, head: torch.Tensor, size: int,
                     use_mask: bool = True) -> dict[str, torch.Tensor]:
        """Torso alpha [size*size], rgb [size*size, 3], dx [M, 2] at the evaluated pixels and their mask [size*size]
        (pixels the occupancy grid rules out are not evaluated: alpha 0)."""
        xy = pixel_coords(size, self.device)
        head = head.reshape(-1, 4)
        mask = self.occupancy.mask(xy) if use_mask else torch.ones(xy.shape[0], dtype=torch.bool, device=self.device)
        alpha = torch.zeros(xy.shape[0], device=self.device)
        rgb = torch.zeros(xy.shape[0], 3, device=self.device)
        idx = mask.nonzero()[:, 0]
        a, c, dx = self.field(xy[idx], cond, head[idx])
        alpha = alpha.index_put((idx,), a.float())
        rgb = rgb.index_put((idx,), c.float())
        return {"alpha": alpha, "rgb": rgb, "dx": dx, "mask": mask}

    @torch.no_grad()
    def render_torsos(self, cond: torch.Tensor, head: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
        """B images at once (inference): cond [B, C], head [B, size, size, 4] -> torso alpha [B, size*size], rgb
        [B, size*size, 3]; per image what `render_torso` gives. The pixels the occupancy grid allows are found
        once per size while the module stays in eval mode (no host sync per call); every sample takes its image's
        condition."""
        B = cond.shape[0]
        xy, idx = self._pixels(size)
        n = idx.shape[0]
        image = torch.arange(B, device=self.device).repeat_interleave(n)
        c = cond if B == 1 else cond[image]
        a, rgb_, _ = self.field(xy[idx].repeat(B, 1), c, head.reshape(B, -1, 4)[:, idx].reshape(-1, 4))
        alpha = torch.zeros(B, xy.shape[0], device=self.device)
        rgb = torch.zeros(B, xy.shape[0], 3, device=self.device)
        alpha[:, idx] = a.float().reshape(B, n)
        rgb[:, idx] = rgb_.float().reshape(B, n, 3)
        return {"alpha": alpha, "rgb": rgb}

    def _pixels(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel coordinates [size*size, 2], indices [n] of the pixels the occupancy grid lets through)."""
        key = (int(size), str(self.device))
        if self.training or key not in self._pixels_cache:
            xy = pixel_coords(size, self.device)
            idx = self.occupancy.mask(xy).nonzero()[:, 0]
            if self.training:
                return xy, idx
            self._pixels_cache[key] = (xy, idx)
        return self._pixels_cache[key]

    @staticmethod
    def composite(head: torch.Tensor, torso: dict[str, torch.Tensor],
                  plate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """head [..., H, W, 4] (premultiplied rgb + alpha; one image or a batch), torso alpha/rgb, plate [H, W, 3]
        (or one per image) -> (torso over plate [..., H, W, 3], head over that [..., H, W, 3])."""
        lead = head.shape[:-1]
        a = torso["alpha"].reshape(*lead, 1)
        torso_img = torso["rgb"].reshape(*lead, 3) * a + plate * (1.0 - a)
        return torso_img, head[..., :3] + (1.0 - head[..., 3:]) * torso_img

    def render_frame(self, c2w: torch.Tensor, K: torch.Tensor, motion: torch.Tensor, eye: torch.Tensor,
                     frame: int | torch.Tensor, bg: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Inference: one composited frame (head over torso over bg) before super-resolution.

        c2w [4, 4]; K [3, 3] at `size`; motion [W, 204] raw offsets (the head's condition window; the torso uses its
        centre frame); eye [W]; frame: -1 (any frame not seen in training: mean codes); bg [size, size, 3] in [0, 1]
        (the background plate). Returns [size, size, 3] float in [0, 1]; follow with `super_resolve`.
        """
        size = int(size or self.render_size)
        dev = self.device
        c2w, K, motion, eye = c2w.to(dev).float(), K.to(dev).float(), motion.to(dev).float(), eye.to(dev).float()
        head = self.head_rgba(c2w, K, motion, eye, frame, size)
        with torch.no_grad():
            cond = self.torso_condition(c2w, K, motion, torch.as_tensor(frame), size)
            torso = self.render_torso(cond, head, size)
            return self.composite(head, torso, bg.to(dev).float())[1].clamp(0, 1)

    @torch.no_grad()
    def render_frames(self, c2w: torch.Tensor, K: torch.Tensor, motion: torch.Tensor, eye: torch.Tensor,
                      frame: torch.Tensor, bg: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Inference, B frames at once: `render_frame` of each (up to float rounding), with the head's rays of all
        B images in one march/composite loop (`render_heads`) and the torso's pixels of all B in one field call.

        c2w [B, 4, 4]; K [3, 3] at `size`; motion [B, W, 204] raw offsets; eye [B, W]; frame [B] (-1: mean codes);
        bg [size, size, 3] or [B, size, size, 3] in [0, 1]. Returns [B, size, size, 3] float in [0, 1].
        """
        size = int(size or self.render_size)
        dev = self.device
        c2w, K, motion, eye = c2w.to(dev).float(), K.to(dev).float(), motion.to(dev).float(), eye.to(dev).float()
        frame = torch.as_tensor(frame, device=dev).reshape(c2w.shape[0])
        h = self.head.render_heads(c2w, K, motion, eye, frame, None, size)
        head = torch.cat([h["rgb"].float(), h["alpha"].float()[..., None]], dim=-1)
        cond = self.torso_conditions(c2w, K, motion, frame, size)
        torso = self.render_torsos(cond, head, size)
        return self.composite(head, torso, bg.to(dev).float())[1].clamp(0, 1)

    # --- setup ----------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        dm.setup(stage)
        if not getattr(dm, "torso", False):
            raise ValueError("the torso stage needs the datamodule's torso mode (data=nerf_torso, data.torso=true)")
        if dm.render_size != self.render_size:
            raise ValueError(f"data.render_size={dm.render_size} but model.render_size={self.render_size}")
        window = int(self.head.field.condition.window)
        if dm.window != window:
            raise ValueError(f"the head was trained with a {window}-frame condition window; pass data.window={window}")
        # rtol: a head carried with float16 tables (bench/bm_torso_nerf.py --export-head) may hold rounded statistics
        if not torch.allclose(self.head.motion_stats.cpu().float(), dm.motion_stats, rtol=2e-3, atol=1e-5):
            raise CheckpointError("the head's motion statistics differ from the dataset's: the head was trained on "
                                  "another preprocessing of this subject; retrain the head")
        self.field.codes.set_num_train(dm.num_train)
        self.jaw_mean.copy_(dm.mean_jaw)
        feats = pose_features(dm.c2w[torch.as_tensor(dm.train_idx)])
        self.pose_stats.copy_(torch.stack([feats.mean(0), feats.std(0).clamp_min(float(self.hparams.pose_std_min))]))
        self.plate.copy_(dm.plate)

    # --- training -------------------------------------------------------------------------------------------------
    def loss_weights(self, step: int) -> dict[str, float]:
        """Every loss weight at `step`: the one place they are decided."""
        c = self.loss_cfg
        return {"torso": float(c["lambda_torso"]), "composite": float(c["lambda_composite"]),
                "composite_sr": float(c["lambda_composite_sr"]), "entropy": float(c["lambda_entropy"]),
                "deform": float(c["lambda_deform"])}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        step, hp, r = self.global_step, self.hparams, self.render_size
        head = self.head_rgba(batch["c2w"], batch["K"], batch["motion"], batch["eye"], batch["frame"], r, cache=True)
        cond = self.torso_condition(batch["c2w"], batch["K"], batch["motion"], batch["frame"], r)
        if step >= hp.grid_warmup_steps and (step - hp.grid_warmup_steps) % hp.grid_update_interval == 0:
            c = cond.detach()
            gen = step_generator(int(hp.seed) + 1, step, self.device)
            self.occupancy.update(lambda xy: self.field.alpha(xy, c), gen,
                                  reduce_fn=all_reduce_max if self.trainer.world_size > 1 else None)
        torso = self.render_torso(cond, head, r, use_mask=step >= hp.grid_warmup_steps)
        torso_img, final = self.composite(head, torso, self.plate)
        lam = self.loss_weights(step)
        kind = self.loss_cfg["photometric"]
        terms: dict[str, torch.Tensor] = {}
        if lam["torso"] > 0:
            terms["torso"] = L.photometric(torso_img, batch["bg"], kind)
        if lam["composite"] > 0:
            terms["composite"] = L.photometric(final, batch["real"], kind)
        if lam["composite_sr"] > 0:
            terms["composite_sr"] = L.photometric(self.super_resolve(final), batch["real_sr"], kind)
        if lam["entropy"] > 0:
            terms["entropy"] = L.alpha_entropy(torso["alpha"][torso["mask"]])
        if lam["deform"] > 0:
            terms["deform"] = torso["dx"].float().abs().mean()
        total = sum(lam[k] * v for k, v in terms.items())
        if self.logs_this_step():
            for k, v in terms.items():
                self.log(f"train/loss_{k}", v.detach(), on_step=True)
                self.log(f"train/lambda_{k}", lam[k], on_step=True)
            self.log("train/loss", total.detach(), prog_bar=self.prog_bar())
            self.log("train/psnr", L.psnr(final.detach(), batch["real"]), prog_bar=self.prog_bar())
            self.log("train/psnr_torso", L.psnr(torso_img.detach(), batch["bg"]))
            self.log("train/torso_evaluated", torso["mask"].float().mean())
        return self.guard_loss(total)

    # --- validation -----------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_frames = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        from torchmetrics.functional import structural_similarity_index_measure as ssim

        r = self.render_size
        head = self.head_rgba(batch["c2w"], batch["K"], batch["motion"], batch["eye"], batch["frame"], r, cache=True)
        cond = self.torso_condition(batch["c2w"], batch["K"], batch["motion"], batch["frame"], r)
        torso = self.render_torso(cond, head, r)
        torso_img, final = self.composite(head, torso, self.plate)
        final = final.clamp(0, 1)
        sr = self.super_resolve(final)
        real, real_sr, neck, neck_sr = batch["real"], batch["real_sr"], batch["neck"], batch["neck_sr"]
        # references with the same head: no torso (head over the plate) and the frame's own torso (the head stage)
        over_plate = self.super_resolve(head[..., :3] + (1 - head[..., 3:]) * self.plate)
        over_real_torso = self.super_resolve(head[..., :3] + (1 - head[..., 3:]) * batch["bg"])
        m = {
            "psnr": L.psnr(sr, real_sr), "psnr_neck": L.psnr(sr, real_sr, neck_sr),
            "psnr_render": L.psnr(final, real), "psnr_neck_render": L.psnr(final, real, neck),
            "psnr_torso": L.psnr(torso_img, batch["bg"]),
            "psnr_head_over_plate": L.psnr(over_plate, real_sr),
            "psnr_neck_head_over_plate": L.psnr(over_plate, real_sr, neck_sr),
            "psnr_head_over_real_torso": L.psnr(over_real_torso, real_sr),
            "psnr_neck_head_over_real_torso": L.psnr(over_real_torso, real_sr, neck_sr),
            "ssim": ssim(sr.permute(2, 0, 1)[None].float(), real_sr.permute(2, 0, 1)[None].float(), data_range=1.0),
            "torso_evaluated": torso["mask"].float().mean(),
        }
        for k, v in m.items():
            self.log(f"val/{k}", v.float(), on_epoch=True, prog_bar=k in ("psnr", "psnr_neck"), batch_size=1)
        to8 = lambda x: (x.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()  # noqa: E731
        if batch_idx < int(self.hparams.val_images):
            a = F.interpolate(torso["alpha"].reshape(1, 1, r, r), scale_factor=2, mode="nearest")[0, 0]
            band = real_sr * (0.35 + 0.65 * neck_sr[..., None].float())
            self.log_images(f"val/frame{batch_idx}",
                            [np.concatenate([to8(real_sr), to8(sr), to8(a[..., None].expand(-1, -1, 3)), to8(band)],
                                            1)],
                            captions=[f"frame {int(batch['frame'])}: real | ours (SR) | torso alpha | neck band"])
        if self.hparams.val_video:
            self._val_frames.append(np.concatenate([to8(real_sr), to8(sr)], 1))

    def on_validation_epoch_end(self) -> None:
        if self.hparams.val_video and self._val_frames and not self.trainer.sanity_checking:
            import importlib.util

            if importlib.util.find_spec("av") is None:
                log.warning("PyAV is not installed: the side-by-side val video is not written (pip install av); "
                            "the val images are")
            else:
                frames = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in self._val_frames]
                self.log_video("val/video", frames, fps=25)
        self._val_frames = []

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The head's model config travels in the metadata (also in weights-only copies), so `load_torso` needs no
        head checkpoint."""
        meta = dict(checkpoint.get(META_KEY) or {})
        meta["head_config"] = self.head_config
        meta["head_checkpoint"] = None if self.head_source is None else str(self.head_source)
        checkpoint[META_KEY] = meta

    # --- optimisation ---------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Torso field groups (grid x10 by default) and, with train_sr, the SR copy. The head has none."""
        if self.optimizer_factory is None:
            raise ValueError("TorsoNeRFModule was built without an optimizer (load_torso modules are for inference)")
        base = float(self.optimizer_factory.keywords.get("lr", 1e-3))
        groups = dict(self.field.param_groups())
        if self.sr_finetune is not None:
            groups["sr"] = list(self.sr_finetune.parameters())
        return [{"params": ps, "lr": base * float(self.lr_multipliers[name]), "name": name}
                for name, ps in groups.items() if ps]

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.param_groups())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=opt),
                                                   "interval": "step"}}


def load_torso(path: str | Path, subject: str | None = None, fingerprint: str | None = None,
               map_location: str | torch.device = "cpu") -> TorsoNeRFModule:
    """Rebuild a trained torso stage (frozen head, torso field, occupancy grid, SR) from a torso checkpoint alone.

    The metadata is checked (stage 'torso', subject, fingerprint, format version; talkfield.runs); the module is
    built from the configs saved inside (the torso's and its head's) and its weights loaded strictly. Returns it in
    eval mode on `map_location`. Render with `render_frame(c2w, K, motion, eye, frame, bg, size)` then
    `super_resolve`.
    """
    from hydra.utils import get_class, instantiate

    from talkfield.runs import load_checkpoint

    ckpt = load_checkpoint(path, stage="torso", subject=subject, fingerprint_=fingerprint, map_location="cpu")
    meta = ckpt[META_KEY]
    if not meta.get("head_config"):
        raise CheckpointError(f"{path}: torso checkpoint without the head's config (written by older code); retrain")
    cfg = dict(meta["config"]["model"])
    cls = get_class(cfg.pop("_target_"))
    network = instantiate(cfg.pop("network"), _convert_="partial")
    cfg.update(optimizer=None, scheduler=None, init_from=None, head_config=meta["head_config"])
    model = cls(network=network, **cfg)  # not through instantiate: head_config stays a config, built inside
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: torso checkpoint does not match its saved config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(map_location).eval()
