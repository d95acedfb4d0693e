"""TalkField Studio: a web page that turns text or speech into a talking-head video of a trained subject.

    python app.py                                  # http://127.0.0.1:7860 (this machine only)
    python app.py --port 8000 tts.backend=edge     # any configs/studio.yaml key as key=value
    python app.py --host 0.0.0.0                   # reachable from the network: only where you mean it

Settings: configs/studio.yaml (TTS backend and voices, limits, queue, knob defaults); docs/studio.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("TALKFIELD_ROOT", str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="overrides: key=value pairs for configs/studio.yaml, e.g. "
                                       "tts.backend=piper tts.piper.voices.en=voices/en_US-lessac-medium.onnx "
                                       "paths.runs_dir=/data/outputs device=cuda")
    p.add_argument("--host", default=None, help="address to bind (default: studio.yaml host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: studio.yaml port, 7860)")
    p.add_argument("overrides", nargs="*", help="configs/studio.yaml overrides (key=value)")
    return p.parse_args(argv)


def load_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("studio", overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    cfg = load_config(args.overrides)
    from talkfield.studio import Studio, StudioSettings
    from talkfield.studio.ui import build_app, launch_kwargs

    host = args.host or cfg.host
    port = args.port or int(cfg.port)
    studio = Studio(StudioSettings.from_cfg(cfg))
    log = logging.getLogger("studio")
    subs = studio.subjects()
    log.info("subjects under %s: %s", studio.settings.runs_dir,
             ", ".join(i.label for i in subs) or "none yet (the page says how to train one)")
    log.info("text-to-speech: %s; files served only from %s", studio.tts.name, studio.settings.studio_dir)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the studio is reachable from other machines", host)
    demo = build_app(studio)
    try:
        demo.queue(default_concurrency_limit=None).launch(server_name=host, server_port=port,
                                                          **launch_kwargs(studio))
    finally:
        studio.shutdown()


if __name__ == "__main__":
    sys.exit(main())
