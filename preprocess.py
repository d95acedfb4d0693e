"""Preprocess a talking-person video into a subject dataset:

    python preprocess.py video=path/to/talk.mp4 subject.name=alice [audio=speech.wav] [preprocess.force=true]

Writes data/<name>/ (manifest.json last); `python preprocess.py --cfg job video=x subject.name=y` prints the
config. Options: configs/preprocess/default.yaml.
"""

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TALKFIELD_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("talkfield.preprocess")


@hydra.main(version_base="1.3", config_path="configs", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    from datamodules.preprocess import PreprocessError, preprocess_video

    opts = OmegaConf.to_container(cfg.preprocess, resolve=True)
    force = bool(opts.pop("force", False))
    try:
        out = preprocess_video(Path(cfg.video), str(cfg.subject.name), Path(cfg.paths.data_dir),
                               audio=Path(cfg.audio) if cfg.audio else None, cfg=opts, force=force,
                               show_progress=bool(cfg.progress))
    except PreprocessError as e:
        log.error("%s", e)
        sys.exit(2)
    log.info("done: %s", out)


if __name__ == "__main__":
    main()
