"""The training driver behind `train.py`: profile, subject, objects from config, fit, metadata, cleanup."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from talkfield.dataset import DatasetError, atomic_write_text, open_subject
from talkfield.runs import make_meta, mark_latest, resolve_checkpoint

log = logging.getLogger("talkfield")

SUBJECT_STAGES = ("head", "torso", "audio2motion")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key and what to pass."""


def check_required(cfg: DictConfig) -> None:
    """Fail at start, naming every missing `???` value and how to pass it."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        # an experiment may say what a required key takes: `required_hints: {model.init_from: "a head checkpoint"}`
        hints = cfg.get("required_hints") or {}
        examples = " ".join(f"{k}=<{hints.get(k, 'value')}>" for k in missing)
        raise ConfigError(f"missing required config value(s): {', '.join(missing)}. "
                          f"Pass them on the command line, e.g. `python train.py ... {examples}` "
                          "(see the comment above each key in configs/ for what it takes)")


def cli_overrides() -> list[str]:
    """The key=value overrides given on the command line (they always win over a profile)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not running under Hydra (tests compose configs directly)
        return []


def apply_cpu_profile(cfg: DictConfig, keep: set[str] | None = None) -> list[str]:
    """On a machine without a GPU, apply the experiment's `cpu_profile` overrides, except keys in `keep`
    (default: those given on the command line); return what changed."""
    if torch.cuda.is_available() or not cfg.get("auto_profile", True):
        return []
    keep = {o.split("=", 1)[0].lstrip("+~") for o in cli_overrides()} if keep is None else keep
    changes = []
    with open_dict(cfg):
        items = dict(cfg.get("cpu_profile") or {})
        items.setdefault("trainer.accelerator", "cpu")
        items.setdefault("trainer.precision", "32-true")
        for key, value in items.items():
            if key in keep:
                continue
            old = OmegaConf.select(cfg, key, default=None)
            if old != value:
                OmegaConf.update(cfg, key, value, force_add=True)
                changes.append(f"{key}: {old} -> {value}")
    log.info("no GPU found: using the CPU profile (%s)", "; ".join(changes) or "no changes")
    return changes


def ensure_subject(cfg: DictConfig) -> str | None:
    """Make sure the subject's dataset exists (generating + preprocessing the synthetic sample if needed).

    Returns the dataset fingerprint, or None for stages that need no subject.
    """
    if cfg.stage not in SUBJECT_STAGES or cfg.get("data") is None or not cfg.data.get("needs_subject", True):
        return None
    name = cfg.subject.name
    data_dir = Path(cfg.paths.data_dir)
    if not (data_dir / name / "manifest.json").is_file():
        syn = cfg.subject.get("synthetic")
        if syn is None or syn.get("name") != name:
            raise DatasetError(f"subject {name!r}: no dataset at {data_dir / name}; run "
                               f"`python preprocess.py video=<path/to/video.mp4> subject.name={name}` first")
        from datamodules.preprocess import preprocess_video
        from datamodules.sample import generate_sample

        log.info("subject %r is missing: generating the synthetic sample (seed %s, %ss, %spx) and preprocessing it",
                 name, syn.seed, syn.duration, syn.size)
        pitch = syn.get("voice_pitch")
        video = generate_sample(Path(cfg.paths.sources_dir) / name, seed=int(syn.seed), duration=float(syn.duration),
                                size=int(syn.size), fps=int(syn.get("fps", 25)),
                                face_variation=float(syn.get("face_variation") or 0.0),
                                voice_pitch=None if pitch is None else float(pitch))
        preprocess_video(Path(video), name, data_dir)
    return open_subject(data_dir, name).fingerprint


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params/total": total, "params/trainable": trainable, "params/frozen": total - trainable}


def device_name() -> str:
    """The card a run used ('NVIDIA H100 80GB HBM3'), or 'CPU <n> cores'."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {os.cpu_count()} cores"


def write_summary(run_dir: Path, cfg: DictConfig, overrides: list[str], metrics: dict[str, float],
                  wall_s: float) -> Path:
    """run_summary.json: what experiments/collect.py tabulates (no hand-typed numbers anywhere)."""
    summary = {"stage": cfg.stage, "subject": cfg.subject.name, "run_id": run_dir.name, "seed": int(cfg.seed),
               "overrides": list(overrides), "tags": list(cfg.get("tags") or []), "device": device_name(),
               "study": cfg.get("study"), "row": cfg.get("row"),
               "wall_s": round(wall_s, 2), "max_steps": int(cfg.trainer.get("max_steps", -1)), "metrics": metrics}
    path = run_dir / "run_summary.json"
    atomic_write_text(path, json.dumps(summary, indent=2))
    return path


def save_final_checkpoint(trainer) -> Path | None:
    """Make `checkpoints/last.ckpt` the state at the end of training (ModelCheckpoint writes it only when it
    saves after a validation, which need not be the last step)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.save_last), None)
    if cb is None or cb.dirpath is None or trainer.fast_dev_run:
        return None
    path = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    trainer.save_checkpoint(path)
    return path


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train one stage as configured. `overrides` (when not run by Hydra's CLI) are the user's key=value
    strings, which a CPU profile never changes. Returns the final callback metrics (floats)."""
    from lightning.pytorch import seed_everything

    from lightning_modules.base import RunStateCallback
    from talkfield.loggers import finish_wandb

    check_required(cfg)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if overrides is None:
        overrides = cli_overrides()
    keep = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    profile_changes = apply_cpu_profile(cfg, keep)
    seed_everything(int(cfg.seed), workers=True)
    fingerprint = ensure_subject(cfg)
    subject = cfg.subject.name if cfg.stage in SUBJECT_STAGES else None
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), cfg.paths.runs_dir, cfg.subject.name, cfg.stage)
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data, _convert_="partial")
    model = instantiate(cfg.model, _convert_="partial")
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    meta = make_meta(cfg.stage, subject if cfg.stage != "audio2motion" or not cfg.data.get("corpus") else None,
                     fingerprint, resolved, extra={"run_dir": str(run_dir), "cpu_profile": profile_changes})
    callbacks.append(RunStateCallback(meta))
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None and "_target_" in lg]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="partial")
    try:
        counts = count_parameters(model)
        log.info("parameters: %s", counts)
        for lg in trainer.loggers:
            lg.log_hyperparams({"config": resolved, **counts})
        t0 = time.time()
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
        except torch.cuda.OutOfMemoryError as err:
            hint = cfg.get("oom_hint") or "trainer.precision=bf16-mixed or a smaller data/model size"
            raise RuntimeError(f"GPU out of memory in stage {cfg.stage}: lower {hint}") from err
        save_final_checkpoint(trainer)
        vci = cfg.trainer.get("val_check_interval")
        validated_last = isinstance(vci, int) and vci > 0 and trainer.global_step % vci == 0
        if cfg.get("validate_at_end", True) and not validated_last and not trainer.fast_dev_run:
            trainer.validate(model, datamodule=datamodule, verbose=False)
        mark_latest(run_dir)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        write_summary(run_dir, cfg, overrides, metrics, time.time() - t0)
        log.info("run finished: %s; metrics %s", run_dir, {k: round(v, 4) for k, v in metrics.items()})
        return metrics
    finally:
        finish_wandb()
