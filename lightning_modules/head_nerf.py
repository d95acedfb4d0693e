"""Head RadNeRF stage: wiring of the head field, renderer and super-resolution; loss weighting; validation and
media. The math lives in networks/ (fields, renderer, losses); this module only connects and logs it."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.streams import step_generator
from lightning_modules.base import TalkFieldModule
from networks import losses as L
from networks.nerf import HeadField, SuperResolution, VolumeRenderer
from talkfield.camera import get_rays
from talkfield.motion import zscore

log = logging.getLogger(__name__)

LOSS_DEFAULTS: dict[str, Any] = {
    "photometric": "mse",     # mse | l1 | huber, at the render size and the super-resolved size
    "lambda_rgb": 1.0,
    "lambda_rgb_sr": 1.0,
    "lambda_entropy": 1.0e-4,  # alpha entropy
    "lambda_mask": 0.0,        # opacity vs the head segmentation (0: off, GeneFace++'s choice)
    "ambient": {"mode": "adaptive", "reg": "mae", "value": 1.0, "ramp_steps": 0,
                "target": 1.0e-8, "rate": 3.0e-5, "min": 1.0e-4, "max": 1.0e3},
    "lambda_lpips": 0.0,       # perceptual loss on the render and the SR image (0: off)
    "lpips_lip": 0.5,          # extra perceptual term on the lip crop of the SR image, relative to lambda_lpips
    "lpips_start_step": 0,
    "lpips_ramp_steps": 0,
    "lip_crop_size": 64,
}


def _merge(base: dict, over: dict | None) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        if k not in base:
            raise KeyError(f"model.loss.{k} is not a loss option; known: {sorted(base)}")
        out[k] = _merge(base[k], v) if isinstance(base[k], dict) else v
    return out


INFER_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile modes of `HeadNeRFModule.compile_for_inference` (infer.compile)."""


def infer_compile_mode(mode: str | None) -> str | None:
    """infer.compile as a torch.compile mode, or None for eager (None, "none", "off", "false"); an unknown mode is
    a ValueError naming the key."""
    if not mode or str(mode).lower() in ("none", "off", "false"):
        return None
    if mode not in INFER_COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} (infer.compile): use none or one of {', '.join(INFER_COMPILE_MODES)}")
    return str(mode)


class HeadNeRFModule(TalkFieldModule):
    """The head stage.

    Args:
        network: the head field, `networks.nerf.HeadField` (kept as `self.field`). renderer: `networks.nerf.VolumeRenderer`. sr: `SuperResolution`.
        optimizer: partial optimizer (its lr is the base lr); lr_multipliers: per group {grid, attention, mlp, sr}.
        scheduler: partial LR scheduler stepped every optimizer step (or None).
        loss: overrides of LOSS_DEFAULTS (see configs/model/head_nerf.yaml).
        perceptual: {enabled, net, variant} of the perceptual network (loss and val/lpips).
        grid_update_interval / grid_warmup_steps / grid_update_stop: occupancy updates every n steps, starting
            after the warm-up (the grid is all-occupied before it), stopping after `grid_update_stop` (None: never).
        val_images: frames shown as images each validation; val_video: write the val video.
        seed: per-step randomness (ray jitter, grid jitter) is drawn from (seed, step), so resume is exact.
    """

    def __init__(self, network: HeadField, renderer: VolumeRenderer, sr: SuperResolution,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: Callable[..., Any] | None = None,
                 lr_multipliers: dict[str, float] | None = None, loss: dict[str, Any] | None = None,
                 perceptual: dict[str, Any] | None = None, render_size: int = 256, grid_update_interval: int = 16,
                 grid_warmup_steps: int = 0, grid_update_stop: int | None = None, val_images: int = 3,
                 val_video: bool = True, seed: int = 0, compile_field: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["network", "renderer", "sr"])
        self.field, self.renderer, self.sr = network, renderer, sr
        self.loss_cfg = _merge(LOSS_DEFAULTS, loss)
        self.lr_multipliers = {"grid": 10.0, "attention": 5.0, "mlp": 1.0, "sr": 1.0, **(lr_multipliers or {})}
        self.perceptual_cfg = {"enabled": True, "net": "alex", "variant": "auto", **(perceptual or {})}
        self.render_size = int(render_size)
        amb = self.loss_cfg["ambient"]
        if amb["mode"] not in ("fixed", "scheduled", "adaptive"):
            raise ValueError(f"model.loss.ambient.mode={amb['mode']!r}: use fixed, scheduled or adaptive")
        self.register_buffer("motion_stats", torch.zeros(4, 204))
        self.register_buffer("log10_lambda_ambient", torch.tensor(math.log10(max(float(amb["value"]), 1e-30))))
        self._lpips: tuple[nn.Module, str] | None = None
        self._val_frames: list[np.ndarray] = []
        # training-time field under torch.compile (networks/nerf/compiled.py); a plain attribute, so checkpoint keys
        # do not change; validation and inference stay eager
        self._compiled_field = None
        self._compiled_frames = None  # compile_for_inference
        cf = dict(compile_field or {})
        if cf.get("enabled"):
            from networks.nerf.compiled import BucketedCompile

            self._compiled_field = BucketedCompile(self._field_call, mode=cf.get("mode"), bucket=int(cf.get("bucket", 0)),
                                                   backend=cf.get("backend", "inductor"))

    # --- setup ------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        dm.setup(stage)
        self.field.codes.set_num_train(dm.num_train)
        if dm.render_size != self.render_size:
            raise ValueError(f"data.render_size={dm.render_size} but model.render_size={self.render_size}")
        self.motion_stats.copy_(dm.motion_stats)
        self._train_poses = dm.c2w[torch.as_tensor(dm.train_idx)]
        self._K = dm.K

    def on_fit_start(self) -> None:
        if self.global_step == 0 and int(self.renderer.grid.step) == 0 and hasattr(self, "_train_poses"):
            self.renderer.mark_unseen(self._train_poses.to(self.device), self._K.to(self.device), self.render_size)
            log.info("occupancy grid: %.1f%% of cells are seen by a training camera",
                     100 * float((self.renderer.grid.density_grid >= 0).float().mean()))

    def perceptual_net(self) -> tuple[nn.Module, str] | None:
        """(frozen perceptual network on this module's device, its name), or None when disabled. Not part of
        the state_dict (its weights come from the lpips/stlpips packages or torchvision's cache)."""
        if not self.perceptual_cfg["enabled"]:
            return None
        if self._lpips is None:
            from networks.perceptual import build_perceptual

            self._lpips = build_perceptual(self.perceptual_cfg["net"], self.perceptual_cfg["variant"],
                                           self.perceptual_cfg.get("backbone_path"))
        net, name = self._lpips
        return net.to(self.device), name

    # --- the public rendering API (torso stage, inference) ------------------------------------------------------
    def condition(self, motion: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
        """Raw canonical offsets motion [B, W, 204] (or [B, W, 68, 3]) and eye openness [B, W] -> cond [B, C].
        Offsets are z-scored with the subject's statistics stored in this checkpoint."""
        # the statistics stay where the buffer lives (a host copy would wait for all queued GPU work on every call)
        return self.field.encode_condition(zscore(motion.float(), self.motion_stats), eye.float())[0]

    def _field_call(self, xyzs: torch.Tensor, dirs: torch.Tensor, cond: torch.Tensor, code: torch.Tensor,
                    image: torch.Tensor | None = None):
        sigma, rgb, ambient = self.field(xyzs, dirs, cond, code, image)
        return sigma, rgb, ambient.float().abs().sum(-1)

    def _frames_call(self, xyzs: torch.Tensor, dirs: torch.Tensor, image: torch.Tensor, cond: torch.Tensor,
                     code: torch.Tensor):
        # _field_call with the per-sample arguments first (BucketedCompile pads those)
        return self._field_call(xyzs, dirs, cond, code, image)

    def compile_for_inference(self, mode: str | None = "reduce-overhead", bucket: int = 16384,
                              backend: str = "inductor") -> bool:
        """Run the grad-free several-image field (`frames_field_fn`: render_heads, the torso stage's render_frames)
        under torch.compile(fullgraph=True), the sample count padded to a multiple of `bucket` (one CUDA graph per
        bucket in the "reduce-overhead" mode; networks/nerf/compiled.py). mode: see `infer_compile_mode`; eager
        for none. The first renders of each new bucket compile / record (seconds). Returns whether it compiles."""
        mode = infer_compile_mode(mode)
        self._compiled_frames = None
        if mode is not None:
            from networks.nerf.compiled import BucketedCompile

            self._compiled_frames = BucketedCompile(self._frames_call, mode=mode, bucket=int(bucket), n_per_sample=3,
                                                    backend=backend)
        return self._compiled_frames is not None

    def field_fn(self, cond: torch.Tensor, code: torch.Tensor):
        """The renderer's field function for one image: (xyzs, dirs) -> (sigma, rgb, |ambient| per sample).
        While training with `compile_field.enabled`, the compiled field (fixed-size sample buckets) runs instead."""
        if self._compiled_field is not None and torch.is_grad_enabled() and self.training:
            compiled = self._compiled_field
            return lambda xyzs, dirs: compiled(xyzs, dirs, cond, code)
        return lambda xyzs, dirs: self._field_call(xyzs, dirs, cond, code)

    def frames_field_fn(self, cond: torch.Tensor, code: torch.Tensor):
        """The renderer's field function for several images (`VolumeRenderer.render_frames`): cond [B, C], code
        [B, D]; each sample takes the condition and code of its image: (xyzs, dirs, image [M]) -> (sigma, rgb,
        |ambient|). The condition and code projections are computed per image and gathered per sample. Without
        gradients after `compile_for_inference`, the compiled field runs instead."""
        compiled = self._compiled_frames

        def fn(xyzs, dirs, image):
            if compiled is not None and not torch.is_grad_enabled():
                return compiled(xyzs, dirs, image, cond, code)
            if cond.shape[0] == 1:
                return self._field_call(xyzs, dirs, cond, code)
            return self._field_call(xyzs, dirs, cond, code, image)
        return fn

    @torch.no_grad()
    def render_heads(self, c2w: torch.Tensor, K: torch.Tensor, motion: torch.Tensor, eye: torch.Tensor,
                     frame: torch.Tensor, bg: torch.Tensor | None = None,
                     size: int | None = None) -> dict[str, torch.Tensor]:
        """Render B frames of the head at once (inference, no gradients): the rays of all B images in one
        march/composite loop, each sample with its frame's condition and per-frame code.

        c2w [B,4,4]; K [3,3] (or [B,3,3]) at `size`; motion [B, W, 204] raw offsets; eye [B, W]; frame [B] subject
        frame indices (-1: not a training frame, the mean code); bg [B, size, size, 3] or None. Returns image,
        rgb [B,H,W,3], alpha, depth [B,H,W], num_samples: per frame what `render_head` gives (up to float rounding;
        no ambient map).
        """
        size = size or self.render_size
        dev = self.device
        B = c2w.shape[0]
        rays_o, rays_d = get_rays(c2w.to(dev), K.to(dev), size, size)
        cond = self.condition(motion.to(dev), eye.to(dev))
        code = self.field.codes(torch.as_tensor(frame, device=dev).reshape(B))
        flat_bg = None if bg is None else bg.to(dev).reshape(B, -1, 3).float()
        out = self.renderer.render_frames(self.frames_field_fn(cond, code), rays_o, rays_d, flat_bg)
        return {"image": out["image"].reshape(B, size, size, 3), "rgb": out["rgb"].reshape(B, size, size, 3),
                "alpha": out["weights_sum"].reshape(B, size, size), "depth": out["depth"].reshape(B, size, size),
                "num_samples": out["num_samples"]}

    def render_head(self, c2w: torch.Tensor, K: torch.Tensor, motion: torch.Tensor, eye: torch.Tensor,
                    frame: int | torch.Tensor, bg: torch.Tensor | None = None, size: int | None = None,
                    perturb: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Render one frame of the head at `size` px (default: the training render size).

        c2w [4,4]; K [3,3] at `size`; motion [W, 204] raw offsets; eye [W]; frame: subject frame index, or -1 for a
        frame not seen in training (mean per-frame code, CONTRACTS.md section 5); bg [size, size, 3] or None.
        Returns image [H,W,3] (over bg), rgb [H,W,3] (head only, premultiplied), alpha [H,W], depth [H,W],
        ambient [H,W]. Differentiable when grad is enabled (chunked and grad-free otherwise).
        """
        size = size or self.render_size
        dev = self.device
        rays_o, rays_d = get_rays(c2w.to(dev), K.to(dev), size, size)
        cond = self.condition(motion.to(dev)[None], eye.to(dev)[None])
        code = self.field.codes(torch.as_tensor(frame, device=dev).reshape(1))
        fn = self.field_fn(cond, code)
        flat_bg = None if bg is None else bg.to(dev).reshape(-1, 3).float()
        if torch.is_grad_enabled():
            out = self.renderer.render(fn, rays_o, rays_d, flat_bg, perturb=perturb, generator=generator)
        else:
            out = self.renderer.render_chunked(fn, rays_o, rays_d, flat_bg)
        return {"image": out["image"].reshape(size, size, 3), "rgb": out["rgb"].reshape(size, size, 3),
                "alpha": out["weights_sum"].reshape(size, size), "depth": out["depth"].reshape(size, size),
                "ambient": out["ambient_sum"].reshape(size, size), "num_samples": out["num_samples"]}

    def super_resolve(self, image: torch.Tensor) -> torch.Tensor:
        """image [H, W, 3] -> [2H, 2W, 3] in [0, 1]."""
        return self.sr(image.permute(2, 0, 1)[None])[0].permute(1, 2, 0)

    # --- losses -------------------------------------------------------------------------------------------------
    def loss_weights(self, step: int) -> dict[str, float | torch.Tensor]:
        """Every loss weight at `step`: the one place they are decided. Floats, except the adaptive ambient weight:
        a 0-dim tensor on the module's device (reading it as a float would wait for the GPU every step)."""
        c = self.loss_cfg
        amb = c["ambient"]
        if amb["mode"] == "fixed":
            lam_amb = float(amb["value"])
        elif amb["mode"] == "scheduled":
            lam_amb = float(amb["value"]) * L.ramp(step, 0, int(amb["ramp_steps"]))
        else:
            lam_amb = 10.0 ** self.log10_lambda_ambient
        lp = float(c["lambda_lpips"]) * L.ramp(step, int(c["lpips_start_step"]), int(c["lpips_ramp_steps"]))
        if not self.perceptual_cfg["enabled"]:
            lp = 0.0
        return {"rgb": float(c["lambda_rgb"]), "rgb_sr": float(c["lambda_rgb_sr"]),
                "entropy": float(c["lambda_entropy"]), "mask": float(c["lambda_mask"]), "ambient": lam_amb,
                "lpips": lp, "lpips_sr": lp, "lpips_lip": lp * float(c["lpips_lip"])}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        step = self.global_step
        seed = int(self.hparams.seed)
        cond = self.condition(batch["motion"][None], batch["eye"][None])
        hp = self.hparams
        if (step >= hp.grid_warmup_steps and (step - hp.grid_warmup_steps) % hp.grid_update_interval == 0
                and (hp.grid_update_stop is None or step <= hp.grid_update_stop)):
            c = cond.detach()
            self.renderer.update_grid(lambda x: self.field.density(x, c),
                                      generator=step_generator(seed + 1, step, self.device),
                                      reduce_fn=all_reduce_max if self.trainer.world_size > 1 else None)
            self.log("train/occupied", self.renderer.grid.occupied_fraction())
        r = self.render_size
        code = self.field.codes(batch["frame"].reshape(1))
        rays_o, rays_d = get_rays(batch["c2w"], batch["K"], r, r)
        gen = step_generator(seed, step, self.device)
        out = self.renderer.render(self.field_fn(cond, code), rays_o, rays_d, batch["bg"].reshape(-1, 3),
                                   perturb=True, generator=gen)
        img = out["image"].reshape(1, r, r, 3).permute(0, 3, 1, 2)
        target = batch["target"].permute(2, 0, 1)[None]
        target_sr = batch["target_sr"].permute(2, 0, 1)[None]
        sr = self.sr(img)
        lam = self.loss_weights(step)
        c = self.loss_cfg
        terms = {
            "rgb": L.photometric(img, target, c["photometric"]),
            "rgb_sr": L.photometric(sr, target_sr, c["photometric"]),
            "entropy": L.alpha_entropy(out["weights_sum"]),
            "ambient": L.ambient_regularizer(out["ambient_sum"], ~batch["face"].reshape(-1), c["ambient"]["reg"]),
        }
        if lam["mask"] > 0:
            terms["mask"] = L.alpha_mask_loss(out["weights_sum"], batch["head_mask"])
        if lam["lpips"] > 0:
            net, _ = self.perceptual_net()
            terms["lpips"] = L.perceptual(net, img, target)
            terms["lpips_sr"] = L.perceptual(net, sr, target_sr)
            size = int(c["lip_crop_size"])
            rect = batch["lip_rect"][None]
            terms["lpips_lip"] = L.perceptual(net, L.crop_box(sr, rect, size), L.crop_box(target_sr, rect, size))
        total = sum(lam[k] * v for k, v in terms.items())
        if self.logs_this_step():
            for k, v in terms.items():
                self.log(f"train/loss_{k}", v.detach(), on_step=True)
                self.log(f"train/lambda_{k}", lam[k], on_step=True)
            self.log("train/loss", total.detach(), prog_bar=self.prog_bar())
            self.log("train/psnr", L.psnr(img.detach(), target), prog_bar=self.prog_bar())
            self.log("train/samples_per_ray", out["num_samples"] / rays_o.shape[0])
        if c["ambient"]["mode"] == "adaptive":
            a = c["ambient"]
            self.log10_lambda_ambient.copy_(L.adaptive_log_weight(
                self.log10_lambda_ambient, terms["ambient"], float(a["target"]), float(a["rate"]),
                math.log10(float(a["min"])), math.log10(float(a["max"]))))
        return self.guard_loss(total)

    # --- validation ---------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_frames = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        from torchmetrics.functional import structural_similarity_index_measure as ssim

        r = self.render_size
        out = self.render_head(batch["c2w"], batch["K"], batch["motion"], batch["eye"], batch["frame"], batch["bg"])
        img = out["image"].clamp(0, 1)
        sr = self.super_resolve(img)
        tgt, tgt_sr = batch["target"], batch["target_sr"]
        face, face_sr = batch["face"], batch["face_sr"]
        m = {
            "psnr": L.psnr(sr, tgt_sr), "psnr_face": L.psnr(sr, tgt_sr, face_sr),
            "psnr_render": L.psnr(img, tgt), "psnr_face_render": L.psnr(img, tgt, face),
            # the same compositing with zero density (the background alone): the floor any head must beat
            "psnr_face_zero_density": L.psnr(batch["bg"], tgt, face),
            "ssim": ssim(sr.permute(2, 0, 1)[None].float(), tgt_sr.permute(2, 0, 1)[None].float(), data_range=1.0),
            "samples_per_ray": torch.tensor(out["num_samples"] / (r * r)),
        }
        pn = self.perceptual_net()
        if pn is not None:
            m["lpips"] = L.perceptual(pn[0], sr.permute(2, 0, 1)[None], tgt_sr.permute(2, 0, 1)[None])
        for k, v in m.items():
            self.log(f"val/{k}", v.float(), on_epoch=True, prog_bar=k in ("psnr", "psnr_face"), batch_size=1)
        to8 = lambda x: (x.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()  # noqa: E731
        up = F.interpolate(img.permute(2, 0, 1)[None], scale_factor=2, mode="nearest")[0].permute(1, 2, 0)
        alpha = out["alpha"][..., None].expand(r, r, 3)
        alpha = F.interpolate(alpha.permute(2, 0, 1)[None], scale_factor=2, mode="nearest")[0].permute(1, 2, 0)
        if batch_idx < int(self.hparams.val_images):
            self.log_images(f"val/frame{batch_idx}", [np.concatenate([to8(tgt_sr), to8(sr), to8(up), to8(alpha)], 1)],
                            captions=[f"frame {int(batch['frame'])}: real | ours (SR) | render | alpha"])
        if self.hparams.val_video:
            self._val_frames.append(np.concatenate([to8(tgt_sr), to8(sr)], 1))

    def on_validation_epoch_end(self) -> None:
        if self.hparams.val_video and self._val_frames and not self.trainer.sanity_checking:
            frames = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in self._val_frames]
            self.log_video("val/video", frames, fps=25)
        self._val_frames = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep checkpoints loadable with torch.load(weights_only=True) (load_head): the optimizer / scheduler
        factories are functools.partial objects; the module is rebuilt from the saved config, not from these."""
        hp = checkpoint.get("hyper_parameters")
        if hp is not None:
            for key in ("optimizer", "scheduler"):
                hp.pop(key, None)

    # --- optimisation -------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups with their lr multipliers (grids x10, window attention x5 by default)."""
        base = float(self.hparams.optimizer.keywords.get("lr", 1e-3))
        groups = {**self.field.param_groups(), "sr": list(self.sr.parameters())}
        return [{"params": ps, "lr": base * float(self.lr_multipliers[name]), "name": name}
                for name, ps in groups.items() if ps]

    def configure_optimizers(self):
        opt = self.hparams.optimizer(params=self.param_groups())
        if self.hparams.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.hparams.scheduler(optimizer=opt),
                                                   "interval": "step"}}


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise max over data-parallel ranks (in place; every rank gets the same tensor)."""
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def load_head(path: str | Path, subject: str | None = None, fingerprint: str | None = None,
              map_location: str | torch.device = "cpu") -> HeadNeRFModule:
    """Rebuild a trained head (field, renderer with its occupancy grid, SR, motion statistics) from a checkpoint.

    The checkpoint's metadata is checked (stage 'head', subject, fingerprint, format version; see talkfield.runs)
    and the module is built from the config saved inside it, so no config files are needed. Returns the module
    in eval mode on `map_location`; perceptual network not loaded.
    """
    from hydra.utils import instantiate

    from talkfield.runs import load_checkpoint

    ckpt = load_checkpoint(path, stage="head", subject=subject, fingerprint_=fingerprint, map_location=map_location)
    cfg = ckpt["talkfield"]["config"]["model"]
    model = instantiate(cfg, _convert_="partial")
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path}: head checkpoint does not match its saved config "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(map_location).eval()
