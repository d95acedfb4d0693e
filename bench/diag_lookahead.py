"""What the streaming look-ahead costs in motion: streamed mouth motion against the whole-file motion (CPU).

    python bench/diag_lookahead.py --data-dir <data> --subject katie --a2m <a2m.ckpt> [--audio speech.wav]
        [--seconds 30] [--lookaheads 0,1,2,4,8]

The streaming path (`StreamingMotion`) fixes frame t's motion from audio up to t + lookahead; the file path sees the
whole recording. For each look-ahead this prints the correlation and the relative RMS difference of the mouth
opening (the 68-point inner-lip gap, canonical space) between the two, and the pause decisions' agreement; the
latency a look-ahead adds is (lookahead + 2) x 40 ms. Temperature 0 (deterministic), default knobs otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--subject", default="katie")
    ap.add_argument("--a2m", required=True)
    ap.add_argument("--audio", default=None, help="speech file (default: the subject's own track, repeated)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--lookaheads", default="0,1,2,4,8")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    from types import SimpleNamespace

    from bm_infer import speech
    from lightning_modules.audio2motion import load_audio2motion
    from networks.audio2motion.postprocess import mouth_opening68
    from talkfield.dataset import open_subject
    from talkfield.inference import Knobs, StreamingMotion, TalkingHeadPipeline, chunk_source

    ds = open_subject(args.data_dir, args.subject)
    a2m = load_audio2motion(args.a2m, args.subject, ds.fingerprint, allow_generic=True)
    wav = speech(ds, args.audio, args.seconds)[: int(args.seconds * 16000)]
    person = a2m.person
    pipe = SimpleNamespace(a2m=a2m, person=person, stats=np.asarray(ds.array("motion_stats")), ds=ds,
                           renderer=SimpleNamespace(window=3))
    full = TalkingHeadPipeline.motion(pipe, wav, Knobs(temperature=0.0).check())
    m_full = mouth_opening68(full)
    report = {}
    for la in (int(x) for x in args.lookaheads.split(",")):
        sm = StreamingMotion(pipe, Knobs(temperature=0.0, lookahead=la).check())
        got = {}
        for chunk, _ in chunk_source(wav):
            r = sm.push(chunk)
            if r is not None:
                got.update({int(t): m[len(m) // 2] for t, m in zip(r[0], r[1])})
        r = sm.finish()
        if r is not None:
            got.update({int(t): m[len(m) // 2] for t, m in zip(r[0], r[1])})
        n = min(len(got), len(full))
        m_str = mouth_opening68(np.stack([got[t] for t in range(n)]))
        a, b = m_full[:n], m_str
        r_corr = float(np.corrcoef(a, b)[0, 1])
        rel = float(np.sqrt(np.mean((a - b) ** 2)) / (a.std() + 1e-12))
        report[la] = {"latency_ms": (la + 2) * 40, "mouth_r": r_corr, "mouth_rel_rms": rel, "frames": n}
        print(f"lookahead {la:2d} ({(la + 2) * 40:3d} ms + compute): mouth opening vs whole file r={r_corr:.3f}, "
              f"RMS diff / std = {rel:.3f} over {n} frames", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
