"""Where a streaming step's time goes (issue 9: streaming latency p95 534-538 ms on the H100 against < 500 ms).

    python bench/diag_stream.py --data-dir <data> --subject katie --ckpt-dir <dir with torso.ckpt, a2m.ckpt> \
        [--seconds 12] [--variants "8:4,8:2,2:4"]

For each variant "batch_frames:lookahead" it streams `--seconds` of speech at real-time pace (as bm_infer does)
and prints the latency percentiles with the time per call of each part of a step (CUDA-synchronized, so the
parts add up to the step): motion (features + Audio2Motion + post-processing), render (head + torso + SR),
finish (download to the host), sink (hand-off to the encoder thread). A warm-up stream runs first, so one-off
costs (cudnn autotuning per new batch size, allocator growth) are not in the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--subject", default="katie")
    ap.add_argument("--ckpt-dir", required=True)
    ap.add_argument("--out", default="diag_stream_out")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--variants", default="8:4")
    ap.add_argument("--cpu-threads", type=int, default=4, help="as infer.py's infer.cpu_threads (0: one per core)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import talkfield.inference as inf
    from talkfield.threads import cap_cpu_threads

    cap_cpu_threads(args.cpu_threads)
    from bm_infer import mel_filters_shim, speech, write_wav

    ck = Path(args.ckpt_dir)
    pipe = inf.TalkingHeadPipeline.from_subject(args.subject, data_dir=args.data_dir, runs_dir=ck / "runs",
                                                torso=str(ck / "torso.ckpt"), a2m=str(ck / "a2m.ckpt"))
    mel_filters_shim()  # without librosa (the GPU machine) log-mel uses torchaudio's identical filterbank
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = write_wav(out / "speech.wav", speech(pipe.ds, None, args.seconds)[: int(args.seconds * 16000)])
    cuda = pipe.device.type == "cuda"
    times: dict[str, list[float]] = defaultdict(list)

    def timed(name, fn, sync=False):
        def wrapper(*a, **k):
            if sync and cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            r = fn(*a, **k)
            if sync and cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
            return r
        return wrapper

    inf.StreamingMotion.push = timed("motion", inf.StreamingMotion.push, sync=True)
    inf.FrameRenderer.render = timed("render", inf.FrameRenderer.render, sync=True)
    inf.TalkingHeadPipeline._finish_frames = timed("finish", inf.TalkingHeadPipeline._finish_frames)
    inf.FrameSink.put = timed("sink", inf.FrameSink.put)

    report = {}
    for v in args.variants.split(","):
        bf, la = (int(x) for x in v.split(":"))
        knobs = inf.Knobs(batch_frames=bf, lookahead=la)
        pipe.render_stream(clip, out / "warm.mp4", knobs, realtime=False)  # warm-up, as fast as possible
        times.clear()
        t0 = time.perf_counter()
        _, st = pipe.render_stream(clip, out / "stream.mp4", knobs, realtime=True)
        wall = time.perf_counter() - t0
        parts = {k: {"calls": len(x), "mean_ms": 1000 * float(np.mean(x)), "total_s": float(np.sum(x))}
                 for k, x in times.items()}
        sizes = np.asarray(st.batches)
        report[v] = {"p50_ms": 1000 * st.percentile(50), "p95_ms": 1000 * st.percentile(95),
                     "max_ms": 1000 * max(st.latencies), "lookahead_frames": st.lookahead_frames,
                     "steps": len(st.pushes), "wall_s": wall, "frames_per_render": float(sizes.mean()), "parts": parts}
        print(f"variant batch_frames={bf} lookahead={la}: {st.summary()}; {len(st.pushes)} steps in {wall:.1f} s, "
              f"{sizes.mean():.2f} frames per render call")
        for k, p in parts.items():
            print(f"  {k:7s} {p['calls']:5d} calls  {p['mean_ms']:7.2f} ms/call  {p['total_s']:6.2f} s")
    (out / "diag_stream.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
