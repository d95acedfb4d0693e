"""CLI: python -m datamodules.sample out=<dir> [seed=0] [duration=30] [size=512] [fps=25] [sample_rate=16000]
[face_variation=0] [voice_pitch=<Hz>] [force=false]"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from .generator import generate_sample

USAGE = __doc__.strip()
KEYS = {"out": str, "seed": int, "duration": float, "size": int, "fps": float, "sample_rate": int,
        "face_variation": float, "voice_pitch": float, "force": str}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    kw: dict = {}
    for arg in argv:
        key, sep, value = arg.lstrip("-").partition("=")
        if not sep or key not in KEYS:
            print(f"unknown argument {arg!r}\n{USAGE}", file=sys.stderr)
            return 2
        try:
            kw[key] = KEYS[key](value)
        except ValueError:
            print(f"{key}: cannot read {value!r} as {KEYS[key].__name__}\n{USAGE}", file=sys.stderr)
            return 2
    if "out" not in kw:
        print(f"out=<dir> is required\n{USAGE}", file=sys.stderr)
        return 2
    out = Path(kw.pop("out"))
    force = kw.pop("force", "false").lower() in ("1", "true", "yes")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path = generate_sample(out, force=force, **kw)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
