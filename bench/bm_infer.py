"""Benchmark of inference (issue 9) on one GPU (never a test).

    python bench/bm_infer.py --data-dir data --runs-dir outputs --subject katie --out OUTDIR [--audio speech.wav]

In one warm process (the models loaded once, a short warm-up render first: cuda_ext build, allocator, cuDNN):
  1. wall time from the audio file to the closed mp4 for `--seconds` (60) of speech: audio decode, mel + f0,
     Audio2Motion, post-processing, head + torso render, super-resolution, H.264 + AAC; frames/s over that time;
  2. time per stage: the same render again with CUDA synchronized around every stage (`profile`);
  3. PSNR of the renderer at exactly those settings (the checkpoints' renderers, the same bf16 choice and batch)
     on the subject's held-out frames, ground-truth motion and poses, against the real frame (torso run) or the
     head-stage target (head-only), on the rendered tensors (never on the decoded video);
  4. streaming: `--stream-seconds` (30) of the speech fed in 40 ms chunks at real-time pace; latency from the last
     sample of chunk t to frame t ready (look-ahead included), p50 / p95.
The speech is `--audio` or, by default, the subject's own recording (audio.npy), repeated to the length needed.

Writes OUTDIR/results.json, OUTDIR/results_rows.md (rows for bench/RESULTS.md), OUTDIR/talk.mp4 (the 60 s render).
Needs on the GPU machine: hydra-core + omegaconf + antlr4 (checkpoints rebuild their modules with
hydra.utils.instantiate), av (encoding) and pyworld (f0) wheels. librosa is not needed: when it is missing, the one
function log-mel uses (librosa.filters.mel) is provided from torchaudio's identical Slaney filterbank
(`mel_filters_shim`; tests/test_infer.py checks it equals librosa's).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATE = "2026-11-25"
log = logging.getLogger("bm_infer")


def mel_filters(sr: int, n_fft: int, n_mels: int = 128, fmin: float = 0.0, fmax: float | None = None,
                **_) -> np.ndarray:
    """librosa.filters.mel (Slaney mel scale, Slaney area normalisation) from torchaudio: [n_mels, 1 + n_fft // 2]."""
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(1 + n_fft // 2, float(fmin), float(fmax or sr / 2), int(n_mels), int(sr),
                                               norm="slaney", mel_scale="slaney")
    return fb.T.numpy().astype(np.float32)


def mel_filters_shim() -> bool:
    """Make `import librosa; librosa.filters.mel(...)` work without librosa (GPU machine). True if installed."""
    try:
        import librosa  # noqa: F401

        return False
    except ImportError:
        pass
    import importlib.machinery

    lib = types.ModuleType("librosa")
    filters = types.ModuleType("librosa.filters")
    # a spec, so importlib.util.find_spec("librosa") (transformers probes it) does not raise
    lib.__spec__ = importlib.machinery.ModuleSpec("librosa", None)
    filters.__spec__ = importlib.machinery.ModuleSpec("librosa.filters", None)
    filters.mel = mel_filters
    lib.filters = filters
    sys.modules["librosa"], sys.modules["librosa.filters"] = lib, filters
    return True


def speech(ds, audio: str | None, seconds: float) -> np.ndarray:
    """`seconds` of speech at 16 kHz: the given file or the subject's own track, repeated as needed."""
    from talkfield.inference import load_speech

    wav = load_speech(audio) if audio else np.asarray(ds.array("audio"), np.float32)
    n = int(round(seconds * 16000))
    return np.resize(wav, n).astype(np.float32)


def write_wav(path: Path, wav: np.ndarray, sr: int = 16000) -> Path:
    import wave

    pcm = (np.clip(wav, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


@torch.no_grad()
def psnr_at_render_settings(pipe, knobs, max_frames: int) -> dict:
    """PSNR of pipe.renderer (its exact settings) on held-out frames with ground-truth motion, eye and pose."""
    from talkfield.inference import condition_window

    ds, r = pipe.ds, pipe.renderer
    val = ds.split("val")
    if max_frames and len(val) > max_frames:
        val = val[np.round(np.linspace(0, len(val) - 1, max_frames)).astype(int)]
    off = np.asarray(ds.array("offsets"), np.float32)
    eye = np.asarray(ds.array("eye_open"), np.float32)
    c2w = np.asarray(ds.array("c2w"), np.float32)
    full = r.torso is not None
    vals = []
    for a in range(0, len(val), knobs.batch_frames):
        ts = val[a:a + knobs.batch_frames]
        win = condition_window(ts, r.window, ds.T)
        imgs = r.render(c2w[ts], off[win], eye[win], ts, knobs.bf16).float().cpu().numpy() / 255.0
        for t, img in zip(ts, imgs):
            tgt = ds.frame(int(t)) if full else ds.head_target(int(t))
            import cv2

            tgt = cv2.resize(tgt, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
            # PSNR of the uint8 frame that goes to the encoder (quantisation included)
            vals.append(-10 * math.log10(max(float(np.mean((img - tgt) ** 2)), 1e-12)))
    return {"psnr": float(np.mean(vals)), "frames": int(len(vals)),
            "target": "real frame" if full else "head-stage target (plate + real torso)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--runs-dir", required=True)
    ap.add_argument("--subject", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--audio", default=None, help="speech file (default: the subject's own recording)")
    ap.add_argument("--head", default=None)
    ap.add_argument("--torso", default=None)
    ap.add_argument("--a2m", default=None)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--stream-seconds", type=float, default=30.0)
    ap.add_argument("--batch-frames", type=int, default=8)
    ap.add_argument("--lookahead", type=int, default=4)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--psnr-frames", type=int, default=100)
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--skip-stream", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from talkfield.inference import Knobs, TalkingHeadPipeline

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    t = time.perf_counter()
    pipe = TalkingHeadPipeline.from_subject(args.subject, data_dir=args.data_dir, runs_dir=args.runs_dir,
                                            device="auto", head=args.head, torso=args.torso, a2m=args.a2m)
    load_s = time.perf_counter() - t
    if mel_filters_shim():  # after lightning/transformers are imported: they probe for librosa
        log.info("librosa missing: log-mel uses torchaudio's Slaney mel filterbank (identical)")
    knobs = Knobs(batch_frames=args.batch_frames, bf16=not args.no_bf16, lookahead=args.lookahead)
    wav = speech(pipe.ds, args.audio, max(args.seconds, args.stream_seconds))
    clip = write_wav(out / "speech_bench.wav", wav[: int(args.seconds * 16000)])
    warm = write_wav(out / "speech_warmup.wav", wav[: 3 * 16000])
    res = {"card": card, "date": DATE, "subject": args.subject, "checkpoints": pipe.checkpoints,
           "render_size": pipe.renderer.size, "out_size": pipe.renderer.out_size, "torso": pipe.torso is not None,
           "knobs": {k: v for k, v in vars(knobs).items()}, "load_s": load_s,
           "renderer": {"max_steps": pipe.head.renderer.max_steps, "T_thresh": pipe.head.renderer.T_thresh,
                        "dt": pipe.head.renderer.dt}}

    t = time.perf_counter()
    pipe.render_result(warm, out / "warmup.mp4", knobs, show_progress=False)
    res["warmup_s"] = time.perf_counter() - t
    log.info("warm-up done in %.1f s", res["warmup_s"])

    r = pipe.render_result(clip, out / "talk.mp4", knobs, show_progress=True)
    res["wall"] = {"frames": r.frames, "audio_s": r.audio_seconds, "wall_s": r.wall_seconds, "fps": r.fps,
                   "realtime_x": r.audio_seconds / r.wall_seconds, "stages_unsynced_s": r.timings}
    log.info("%d frames in %.2f s: %.1f frames/s (%.2fx real time)", r.frames, r.wall_seconds, r.fps,
             r.audio_seconds / r.wall_seconds)
    if torch.cuda.is_available():
        res["wall"]["max_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30

    if not args.skip_profile:
        p = pipe.render_result(clip, out / "talk_profile.mp4", knobs, show_progress=False, profile=True)
        res["profile"] = {"wall_s": p.wall_seconds, "fps": p.fps, "stages_s": p.timings,
                          "stages_ms_per_frame": {k: 1000 * v / p.frames for k, v in p.timings.items()}}
        (out / "talk_profile.mp4").unlink(missing_ok=True)
        log.info("per stage (synchronized):\n%s", "\n".join(f"  {k:<20} {v:8.3f} s {1000 * v / p.frames:8.2f} ms/frame"
                                                            for k, v in p.timings.items()))

    res["psnr"] = psnr_at_render_settings(pipe, knobs, args.psnr_frames)
    log.info("PSNR %.2f dB on %d held-out frames vs %s", res["psnr"]["psnr"], res["psnr"]["frames"], res["psnr"]["target"])

    if not args.skip_stream:
        sclip = write_wav(out / "speech_stream.wav", wav[: int(args.stream_seconds * 16000)])
        _, st = pipe.render_stream(sclip, out / "stream.mp4", knobs, realtime=True)
        res["stream"] = {"frames": len(st.latencies), "p50_ms": 1000 * st.percentile(50),
                         "p95_ms": 1000 * st.percentile(95), "max_ms": 1000 * max(st.latencies),
                         "lookahead_frames": st.lookahead_frames}
        log.info("stream %s", st.summary())
        (out / "stream.mp4").unlink(missing_ok=True)
    for f in ("warmup.mp4", "speech_warmup.wav", "speech_bench.wav", "speech_stream.wav"):
        (out / f).unlink(missing_ok=True)

    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    cmd = "python bench/bm_infer.py " + " ".join(sys.argv[1:])
    what = "head+torso+SR" if res["torso"] else "head+SR (no torso run)"
    rows = [
        ("inference fps, %g s audio file -> closed mp4 (warm), %s, %d px, A2M %s, batch %d, %s" %
         (args.seconds, what, res["out_size"], pipe.a2m.features, knobs.batch_frames, "bf16" if knobs.bf16 else "fp32"),
         f"{r.fps:.1f}", "frames/s"),
        ("inference wall time, %g s audio -> mp4 (same run)" % args.seconds, f"{r.wall_seconds:.2f}", "s"),
        ("inference PSNR at these render settings (%s, %d val frames)" % (res["psnr"]["target"], res["psnr"]["frames"]),
         f"{res['psnr']['psnr']:.2f}", "dB"),
    ]
    if "profile" in res:
        for k, v in res["profile"]["stages_ms_per_frame"].items():
            rows.append((f"inference stage {k} (synchronized profile run)", f"{v:.2f}", "ms/frame"))
    if "stream" in res:
        for q in ("p50", "p95"):
            rows.append((f"streaming latency {q}, {args.stream_seconds:g} s real-time stream, 40 ms chunks, look-ahead "
                         f"{knobs.lookahead} (+2) frames", f"{res['stream'][q + '_ms']:.0f}", "ms"))
    md = "\n".join(f"| {a} | {b} | {c} | {card} | {DATE} | `{cmd}` |" for a, b, c in rows)
    (out / "results_rows.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
