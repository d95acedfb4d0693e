"""Benchmark of inference (issue 9) on one GPU (never a test).

    python bench/bm_infer.py --data-dir data --runs-dir outputs --subject katie --out OUTDIR [--audio speech.wav]
    python bench/bm_infer.py --data-dir data --subject katie --out OUTDIR --ckpt-dir carry/katie   # copied weights
    python bench/bm_infer.py ... --head H.ckpt --torso T.ckpt --a2m A.ckpt        # explicit checkpoints

Checkpoints: --head / --torso / --a2m (a file or a run directory; --torso none renders head-only), else a file in
--ckpt-dir named head.ckpt / torso.ckpt / a2m.ckpt (or audio2motion.ckpt), else the subject's latest run of that
stage under --runs-dir. A torso checkpoint carries its own frozen head (then no head checkpoint is read).

In one warm process (the models loaded once, a short warm-up render first: cuda_ext build, allocator, cuDNN):
  1. wall time from the audio file to the closed mp4 for `--seconds` (60) of speech: audio decode, mel + f0,
     Audio2Motion, post-processing, head + torso render, super-resolution, H.264 + AAC; frames/s over that time;
  2. time per stage: a render of `--profile-seconds` (20) of the speech with CUDA synchronized around every stage;
  3. PSNR of the renderer at exactly those settings (the checkpoints' renderers, whose sample cap and termination
     threshold are checked against the training config saved in the checkpoint; the same bf16 choice and batch)
     on the subject's held-out frames, ground-truth motion and poses, against the real frame (torso run) or the
     head-stage target (head-only), on the rendered tensors (never on the decoded video);
  4. streaming: `--stream-seconds` (30) of the speech fed in 40 ms chunks at real-time pace; latency from the last
     sample of chunk t (its arrival on the live clock) to frame t ready (look-ahead included), p50 / p95.
The speech is `--audio` or, by default, the subject's own recording (audio.npy), repeated to the length needed.
Sections 2-4 are skipped (and say so) when they would run past `--deadline-s` seconds after the start; results
are written after every section, so a run stopped from outside keeps what it measured.

Writes OUTDIR/results.json, OUTDIR/results_rows.md (rows for bench/RESULTS.md, also printed at the end),
OUTDIR/talk.mp4 (the 60 s render).
Needs on the GPU machine: hydra-core + omegaconf + antlr4 (checkpoints rebuild their modules with
hydra.utils.instantiate), av (encoding) and pyworld (f0) wheels; `preflight` checks them in seconds before anything
is loaded. pyworld 0.3.5 imports pkg_resources, which setuptools >= 81 lacks: `pkg_resources_shim` stands in.
librosa is not needed: when it is missing, the one function log-mel uses (librosa.filters.mel) is provided from
torchaudio's identical Slaney filterbank (`mel_filters_shim`; tests/test_infer.py checks it equals librosa's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import sys
import time
import traceback
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
T_START = time.perf_counter()
log = logging.getLogger("bm_infer")
CKPT_NAMES = {"head": ("head.ckpt",), "torso": ("torso.ckpt",), "a2m": ("a2m.ckpt", "audio2motion.ckpt")}


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


def pkg_resources_shim() -> bool:
    """pyworld 0.3.5 reads its version with `pkg_resources`, which setuptools >= 81 no longer ships (Python 3.12
    environments such as the GPU machine's): provide get_distribution(name).version from importlib.metadata.
    True if the shim was installed."""
    try:
        import pkg_resources  # noqa: F401

        return False
    except ImportError:
        pass
    import importlib.machinery
    import importlib.metadata

    mod = types.ModuleType("pkg_resources")
    mod.__spec__ = importlib.machinery.ModuleSpec("pkg_resources", None)
    mod.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
    sys.modules["pkg_resources"] = mod
    return True


def preflight() -> None:
    """Fail in seconds, before any model is loaded, when a module the timed path needs is missing."""
    pkg_resources_shim()
    missing = []
    for mod, why in (("pyworld", "f0 of the speech (carry a wheel for this Python)"), ("av", "decode + mp4 encode"),
                     ("cv2", "resizing"), ("hydra", "checkpoints rebuild their modules"), ("omegaconf", "hydra"),
                     ("lightning.pytorch", "the stage modules"), ("tqdm", "progress bar"),
                     ("torchaudio", "the mel filterbank when librosa is missing")):
        try:
            __import__(mod)
        except Exception as e:  # noqa: BLE001  (an ImportError, or a broken extension)
            missing.append(f"{mod} ({why}): {type(e).__name__}: {e}")
    if missing:
        raise SystemExit("bm_infer: missing on this machine:\n  " + "\n  ".join(missing))


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


def checkpoint_args(args) -> dict[str, str | None]:
    """head / torso / a2m: the explicit flag, else the file of that stage in --ckpt-dir, else None (latest run)."""
    out = {}
    for stage, names in CKPT_NAMES.items():
        v = getattr(args, stage)
        if v is None and args.ckpt_dir:
            found = [Path(args.ckpt_dir) / n for n in names if (Path(args.ckpt_dir) / n).is_file()]
            v = str(found[0]) if found else None
        out[stage] = v
    if args.ckpt_dir and out["head"] is None and out["torso"] is None:
        raise SystemExit(f"--ckpt-dir {args.ckpt_dir} holds neither head.ckpt nor torso.ckpt")
    return out


def render_settings(pipe) -> dict:
    """The head renderer in use (sample cap, termination threshold, step, grid) and the values in the training config
    saved in the checkpoint (the torso checkpoint's head_config for a torso run); they must be equal (a difference
    is logged as an error and recorded as matches_training=False, not fatal: the other numbers still come back)."""
    r = pipe.head.renderer
    used = {"max_steps": int(r.max_steps), "T_thresh": float(r.T_thresh), "dt": float(r.dt),
            "grid_resolution": int(r.grid.resolution), "backend": r.backend}
    src = pipe.checkpoints["torso"] or pipe.checkpoints["head"]
    try:
        meta = torch.load(src, map_location="cpu", weights_only=True, mmap=True)["talkfield"]
        head_cfg = meta["head_config"] if pipe.checkpoints["torso"] else meta["config"]["model"]
        rc = head_cfg["renderer"]
        trained = {"max_steps": int(rc["max_steps"]), "T_thresh": float(rc["T_thresh"])}
    except (KeyError, TypeError, RuntimeError) as e:
        log.error("the training render settings of %s could not be read (%r)", src, e)
        return {**used, "trained": None, "matches_training": None, "from": str(src)}
    bad = {k: (used[k], v) for k, v in trained.items() if used[k] != v}
    if bad:
        log.error("render settings differ from the training config of %s: %s (used, trained)", src, bad)
    return {**used, "trained": trained, "matches_training": not bad, "from": str(src)}


class Results:
    """results.json and results_rows.md under OUTDIR, rewritten after every section."""

    def __init__(self, out: Path, card: str, date: str, cmd: str):
        self.out, self.card, self.date, self.cmd = out, card, date, cmd
        self.data: dict = {"card": card, "date": date, "command": cmd}
        self.rows: list[tuple[str, str, str]] = []

    def row(self, figure: str, value: str, unit: str) -> None:
        self.rows.append((figure, value, unit))

    def markdown(self) -> str:
        return "\n".join(f"| {a} | {b} | {c} | {self.card} | {self.date} | `{self.cmd}` |" for a, b, c in self.rows)

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "results_rows.md").write_text(self.markdown() + "\n")


def guarded(name: str, fn, res: "Results") -> None:
    """Run one optional section; an error is logged and recorded, and the other sections still run."""
    try:
        fn()
    except Exception:  # noqa: BLE001  (one attempt on the GPU: keep every number that can be measured)
        log.exception("section %s failed; going on with the others", name)
        res.data.setdefault("errors", {})[name] = traceback.format_exc()
    res.save()


def fits(name: str, cost_s: float, deadline_s: float) -> bool:
    left = deadline_s - (time.perf_counter() - T_START)
    if deadline_s > 0 and cost_s > left:
        log.warning("skipping %s: ~%.0f s needed, %.0f s left before --deadline-s %.0f", name, cost_s, left, deadline_s)
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--runs-dir", default="outputs", help="runs root for 'latest' (default: outputs)")
    ap.add_argument("--subject", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--audio", default=None, help="speech file (default: the subject's own recording)")
    ap.add_argument("--ckpt-dir", default=None, help="folder with head.ckpt / torso.ckpt / a2m.ckpt (weights-only ok)")
    ap.add_argument("--head", default=None, help="head checkpoint or run dir (default: --ckpt-dir, else latest)")
    ap.add_argument("--torso", default=None, help="torso checkpoint or run dir, or 'none' for head-only")
    ap.add_argument("--a2m", default=None, help="Audio2Motion checkpoint, run dir or corpus name")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--profile-seconds", type=float, default=20.0)
    ap.add_argument("--stream-seconds", type=float, default=30.0)
    ap.add_argument("--warmup-seconds", type=float, default=3.0)
    ap.add_argument("--batch-frames", type=int, default=8)
    ap.add_argument("--lookahead", type=int, default=4)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--compile", default="none",
                    help="head field under torch.compile for inference (infer.compile): none | default | "
                         "reduce-overhead | max-autotune-no-cudagraphs")
    ap.add_argument("--compile-bucket", type=int, default=16384)
    ap.add_argument("--compact-every", type=int, default=1,
                    help="infer.compact_every: drop finished rays from the march list every n passes")
    ap.add_argument("--psnr-frames", type=int, default=100)
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--skip-psnr", action="store_true")
    ap.add_argument("--skip-stream", action="store_true")
    ap.add_argument("--cpu-threads", type=int, default=4,
                    help="cap on the CPU thread pools, as infer.py's infer.cpu_threads (0: one per core)")
    ap.add_argument("--deadline-s", type=float, default=540.0,
                    help="skip sections that would end later than this many seconds after the start (0: never)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preflight()
    from talkfield.inference import Knobs, TalkingHeadPipeline
    from talkfield.threads import cap_cpu_threads

    cap_cpu_threads(args.cpu_threads)

    cuda = torch.cuda.is_available() and args.device != "cpu"
    card = torch.cuda.get_device_name() if cuda else f"CPU {torch.get_num_threads()} threads"
    res = Results(out, card, datetime.date.today().isoformat(), "python bench/bm_infer.py " + " ".join(sys.argv[1:]))
    R = res.data
    ck = checkpoint_args(args)
    t = time.perf_counter()
    pipe = TalkingHeadPipeline.from_subject(args.subject, data_dir=args.data_dir, runs_dir=args.runs_dir,
                                            device=args.device, head=ck["head"], torso=ck["torso"], a2m=ck["a2m"],
                                            compile=args.compile, compile_bucket=args.compile_bucket,
                                            compact_every=args.compact_every)
    R["load_s"] = time.perf_counter() - t
    if mel_filters_shim():  # after lightning/transformers are imported: they probe for librosa
        log.info("librosa missing: log-mel uses torchaudio's Slaney mel filterbank (identical)")
    knobs = Knobs(batch_frames=args.batch_frames, bf16=not args.no_bf16, lookahead=args.lookahead)
    rs = render_settings(pipe)
    prec = "bf16" if knobs.bf16 and pipe.device.type == "cuda" else "fp32"
    R.update(cpu_threads=args.cpu_threads, subject=args.subject, device=str(pipe.device), checkpoints=pipe.checkpoints,
             render_size=pipe.renderer.size, out_size=pipe.renderer.out_size, torso=pipe.torso is not None,
             a2m_features=pipe.a2m.features, a2m_mel_norm=getattr(pipe.a2m.network, "mel_norm", None),
             knobs=dict(vars(knobs)), precision=prec, renderer=rs)
    log.info("device %s (%s); render %d px -> SR %d px; renderer max_steps %d, T_thresh %g (training config: %s)",
             pipe.device, card, pipe.renderer.size, pipe.renderer.out_size, rs["max_steps"], rs["T_thresh"],
             rs["trained"])
    wav = speech(pipe.ds, args.audio, max(args.seconds, args.stream_seconds, args.profile_seconds))
    clip = write_wav(out / "speech_bench.wav", wav[: int(args.seconds * 16000)])
    warm = write_wav(out / "speech_warmup.wav", wav[: int(args.warmup_seconds * 16000)])
    try:
        t = time.perf_counter()
        pipe.render_result(warm, out / "warmup.mp4", knobs, show_progress=False)
        R["warmup_s"] = time.perf_counter() - t
        log.info("warm-up (%.0f s of audio) done in %.1f s", args.warmup_seconds, R["warmup_s"])
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        # 1. audio file -> closed mp4, warm
        r = pipe.render_result(clip, out / "talk.mp4", knobs, show_progress=True)
        fps = r.fps
        R["wall"] = {"frames": r.frames, "audio_s": r.audio_seconds, "wall_s": r.wall_seconds, "fps": r.fps,
                     "realtime_x": r.audio_seconds / r.wall_seconds, "stages_unsynced_s": r.timings}
        if cuda:
            R["wall"]["max_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
        log.info("%d frames in %.2f s: %.1f frames/s (%.2fx real time)", r.frames, r.wall_seconds, r.fps,
                 r.audio_seconds / r.wall_seconds)
        what = "head+torso+SR" if R["torso"] else "head+SR (no torso run)"
        setting = (f"{what}, {pipe.renderer.out_size} px, A2M {pipe.a2m.features}, batch {knobs.batch_frames}, {prec}, "
                   f"max_steps {rs['max_steps']}, T_thresh {rs['T_thresh']:g}"
                   + (f", head field compiled ({args.compile})" if args.compile != "none" else "")
                   + (f", ray list compacted every {args.compact_every} passes" if args.compact_every > 1 else "")
                   + {True: " (as trained)", False: " (NOT the training settings)", None: ""}[rs["matches_training"]])
        res.row(f"inference speed, {args.seconds:g} s audio file -> closed mp4 (warm process), {setting}",
                f"{r.fps:.1f}", "frames/s")
        res.row(f"inference wall time, {args.seconds:g} s audio file -> closed mp4 (same run, {r.frames} frames)",
                f"{r.wall_seconds:.2f}", "s")
        res.save()

        # 2. time per stage (CUDA synchronized around each stage)
        def profile() -> None:
            pclip = write_wav(out / "speech_profile.wav", wav[: int(args.profile_seconds * 16000)])
            p = pipe.render_result(pclip, out / "talk_profile.mp4", knobs, show_progress=False, profile=True)
            R["profile"] = {"audio_s": p.audio_seconds, "frames": p.frames, "wall_s": p.wall_seconds, "fps": p.fps,
                            "stages_s": p.timings,
                            "stages_ms_per_frame": {k: 1000 * v / p.frames for k, v in p.timings.items()}}
            (out / "talk_profile.mp4").unlink(missing_ok=True)
            log.info("per stage (synchronized, %g s of audio):\n%s", args.profile_seconds,
                     "\n".join(f"  {k:<20} {v:8.3f} s {1000 * v / p.frames:8.2f} ms/frame"
                               for k, v in p.timings.items()))
            for k, v in R["profile"]["stages_ms_per_frame"].items():
                res.row(f"inference stage {k} ({args.profile_seconds:g} s audio, CUDA-synchronized profile run)",
                        f"{v:.2f}", "ms/frame")

        if not args.skip_profile and fits("profile", 1.5 * args.profile_seconds * 25 / fps + 5, args.deadline_s):
            guarded("profile", profile, res)

        # 3. PSNR at exactly these render settings
        def psnr() -> None:
            R["psnr"] = psnr_at_render_settings(pipe, knobs, args.psnr_frames)
            log.info("PSNR %.2f dB on %d held-out frames vs %s", R["psnr"]["psnr"], R["psnr"]["frames"],
                     R["psnr"]["target"])
            res.row(f"inference PSNR at these render settings ({R['psnr']['target']}, {R['psnr']['frames']} val "
                    f"frames, {prec})", f"{R['psnr']['psnr']:.2f}", "dB")

        if not args.skip_psnr and fits("PSNR", 2 * args.psnr_frames / fps + 5, args.deadline_s):
            guarded("psnr", psnr, res)

        # 4. streaming latency
        def stream() -> None:
            sclip = write_wav(out / "speech_stream.wav", wav[: int(args.stream_seconds * 16000)])
            if args.compile != "none":  # streaming renders 1-4 frames per call: their sample buckets warm up first
                wclip = write_wav(out / "speech_warmup.wav", wav[: int(max(args.warmup_seconds, 5.0) * 16000)])
                pipe.render_stream(wclip, out / "stream.mp4", knobs, realtime=True)
            _, st = pipe.render_stream(sclip, out / "stream.mp4", knobs, realtime=True)
            R["stream"] = {"frames": len(st.latencies), "p50_ms": 1000 * st.percentile(50),
                           "p95_ms": 1000 * st.percentile(95), "max_ms": 1000 * max(st.latencies),
                           "lookahead_frames": st.lookahead_frames,
                           # chunks taken per step (> 1 while a backlog drains) and frames per render call
                           "steps": len(st.pushes), "max_chunks_per_step": max(st.pushes, default=0),
                           "render_calls": len(st.batches), "max_frames_per_render": max(st.batches, default=0)}
            log.info("stream %s; %d steps (at most %d chunks at once), %d render calls", st.summary(),
                     len(st.pushes), max(st.pushes, default=0), len(st.batches))
            (out / "stream.mp4").unlink(missing_ok=True)
            for q in ("p50", "p95"):
                res.row(f"streaming latency {q}, last sample of a 40 ms chunk -> its frame, {args.stream_seconds:g} s "
                        f"real-time stream, look-ahead {st.lookahead_frames} frames ({st.lookahead_frames * 40} ms) "
                        f"included, {what}, CPU pools {args.cpu_threads or 'all'} threads"
                        + (f", head field compiled ({args.compile})" if args.compile != "none" else "")
                        + (f", ray list compacted every {args.compact_every} passes" if args.compact_every > 1 else ""),
                        f"{R['stream'][q + '_ms']:.0f}", "ms")

        stream_cost = args.stream_seconds * max(1.0, 1.3 * 25 / fps) + 5
        if not args.skip_stream and fits("streaming", stream_cost, args.deadline_s):
            guarded("stream", stream, res)
    finally:
        R["total_s"] = time.perf_counter() - T_START
        res.save()
        for f in ("warmup.mp4", "speech_warmup.wav", "speech_bench.wav", "speech_profile.wav", "speech_stream.wav"):
            (out / f).unlink(missing_ok=True)
    print(res.markdown())


if __name__ == "__main__":
    main()
