"""Speech -> talking-head video: python infer.py subject.name=<name> audio=speech.mp3 out=talk.mp4 [key=value ...]

Options: configs/infer.yaml (knobs.*, checkpoints.*, infer.stream=true for the live mode). docs/inference.md.
"""

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TALKFIELD_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("talkfield.infer")


@hydra.main(version_base="1.3", config_path="configs", config_name="infer")
def main(cfg: DictConfig) -> None:
    from talkfield.audio import AudioError
    from talkfield.dataset import DatasetError
    from talkfield.inference import InferenceError, Knobs, TalkingHeadPipeline
    from talkfield.poses import PoseError
    from talkfield.runs import CheckpointError
    from talkfield.threads import cap_cpu_threads

    cap_cpu_threads(cfg.infer.get("cpu_threads", 0))
    try:
        knobs = Knobs.from_dict(OmegaConf.to_container(cfg.knobs, resolve=True))
        ck = cfg.checkpoints
        pipe = TalkingHeadPipeline.from_subject(str(cfg.subject.name), data_dir=cfg.paths.data_dir,
                                                runs_dir=cfg.paths.runs_dir, device=cfg.device, head=ck.head,
                                                torso=ck.torso, a2m=ck.a2m, compile=cfg.infer.get("compile"),
                                                compile_bucket=int(cfg.infer.get("compile_bucket", 16384)),
                                                compact_every=int(cfg.infer.get("compact_every", 1)))
        out = Path(cfg.out)
        if cfg.infer.stream:
            path, stats = pipe.render_stream(cfg.audio, out, knobs, realtime=bool(cfg.infer.realtime))
            log.info("stream %s", stats.summary())
        else:
            res = pipe.render_result(cfg.audio, out, knobs, show_progress=bool(cfg.infer.progress),
                                     profile=bool(cfg.infer.profile))
            log.info("%d frames in %.2f s (%.1f frames/s, %.2fx real time); time per stage:\n%s", res.frames,
                     res.wall_seconds, res.fps, res.audio_seconds / res.wall_seconds, _table(res.timings, res.frames))
            path = res.path
    except (AudioError, CheckpointError, DatasetError, InferenceError, PoseError) as e:
        log.error("%s", e)
        sys.exit(2)
    log.info("wrote %s", path)


def _table(seconds: dict, frames: int) -> str:
    rows = [f"  {'stage':<20} {'s':>8} {'ms/frame':>9}"]
    rows += [f"  {k:<20} {v:8.3f} {1000 * v / max(frames, 1):9.2f}" for k, v in seconds.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
