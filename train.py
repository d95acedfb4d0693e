"""Train a TalkField stage: python train.py experiment=<head_nerf|torso_nerf|audio2motion|fit_image> [key=value ...]

`python train.py --help` lists the config groups; `python train.py --cfg job experiment=<name>` prints the config.
"""

import logging
import os
from pathlib import Path

os.environ.setdefault("TALKFIELD_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from talkfield.training import run

    # Lightning prints through its own handler; Hydra's root handler already shows (and files) its records
    import lightning.pytorch  # noqa: F401  (adds its own console handler on import)

    logging.getLogger("lightning.pytorch").handlers.clear()
    metrics = run(cfg)
    # a value Hydra sweepers can optimise
    return metrics.get(cfg.get("optimized_metric", "val/psnr"))


if __name__ == "__main__":
    main()
