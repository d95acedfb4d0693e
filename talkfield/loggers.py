"""Logger construction: W&B offline unless the user is logged in, never blocking without a network."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    """True when a W&B API key is available (env var or ~/.netrc entry for api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.path.expanduser("~/.netrc"))
        return any("wandb" in host for host in rc.hosts)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str = "auto") -> str:
    """WANDB_MODE wins; 'auto' means online when logged in, else offline."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if mode == "auto":
        return "online" if wandb_logged_in() else "offline"
    return mode


def make_wandb_logger(project: str, name: str, save_dir: str, group: str | None = None,
                      tags: list[str] | None = None, mode: str = "auto", **kwargs: Any):
    """A Lightning WandbLogger whose mode follows `resolve_wandb_mode`; falls back to offline if init fails."""
    from lightning.pytorch.loggers import WandbLogger

    resolved = resolve_wandb_mode(mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    log.info("W&B logging: mode=%s (set WANDB_MODE or `wandb login` to change)", resolved)
    import wandb

    settings = wandb.Settings(init_timeout=60, _disable_stats=True)
    logger = WandbLogger(project=project, name=name, save_dir=save_dir, group=group, tags=list(tags or []),
                         offline=(resolved == "offline"), mode=resolved, settings=settings, **kwargs)
    if resolved == "online":
        try:
            _ = logger.experiment  # connect now, not in the middle of training
        except Exception as err:  # network trouble must never stop training
            log.warning("W&B online init failed (%s); logging offline instead", err)
            logger = WandbLogger(project=project, name=name, save_dir=save_dir, group=group,
                                 tags=list(tags or []), offline=True, mode="offline", settings=settings, **kwargs)
    return logger


def finish_wandb() -> None:
    """Close a W&B run if one is open (called in a `finally`)."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception as err:  # closing must not mask the real error
        log.warning("W&B finish failed: %s", err)
