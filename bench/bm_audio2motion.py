"""Audio2Motion numbers: synthetic sample (ground truth known), the real clip, Mandarin cross-driving.

    python bench/bm_audio2motion.py [--parts synthetic,real,mandarin] [--work DIR] [--steps 1500] [--record]

synthetic: generate + preprocess a 90 s sample (seed 11) and a 20 s sample of another seed (12), train
  `experiment=audio2motion` on the 90 s one (train.py, CPU), predict the held-out val split (the last 1/11, audio the
  model never saw) and the other-seed sample from audio alone, default knobs + post-processing (pause closing
  included: the audio of the predicted frames is passed, look-ahead 4 as at inference). Scores against
  the generator's ground truth: Pearson r of mouth opening and lip width, the same r of a linear regressor on frame
  loudness (log RMS of the frame and +-2 neighbours, fitted on the train frames), recall of lip closures on p/b/m
  (the predicted opening drops, within the phone +- 1 frame after the generator's 60 ms visual lead, below the
  level the tracker reports for closed lips on this person: the 90th percentile of the tracked opening over the
  training frames inside p/b/m phones). The tracked landmarks' own scores are printed as the ceiling. Also trains
  the lip-sync expert (`experiment=lipsync`) and reports its AUC on the val split (aligned vs shifted by +-3..8
  frames).
real: the real clip (preprocessed once into <work>/data/katie): two models, one trained on its 181 train frames
  ('scratch'), one fine-tuned on them from a generic model trained on every subject in <work>/data (the two samples,
  a third 20 s sample with another face geometry and a low voice (seed 13, face_variation 0.25, voice_pitch 115 Hz)
  and the clip: 'corpus_ft'); predict the 19 held-out frames from their audio: mean lip-point distance to the
  tracked landmarks (head units) beside the mean-pose baseline, mouth-opening r; the lip-sync expert's AUC on the
  val split. Reported, not gated (8 s is little data).
mandarin: drive each real-clip model with ../shared/data/chinese_news.wav (48 kHz stereo; loaded and resampled by
  talkfield.audio.load_audio), default knobs: std of the predicted mouth opening over the training video's, r with
  the audio envelope (frame RMS), and the share of pauses > 200 ms (frames 6 dB or more under the loud-frame
  level, the 95th percentile frame RMS: the clip has a steady background about 7 dB under the speech, and f0
  finds voicing only sporadically in it) whose median predicted opening is below the training 10th percentile.
  Each figure also with pause closing off ('no_pause_close_*' in the JSON).

Results are printed as JSON and written to <work>/results.json; --record writes rows to bench/RESULTS.md (a
figure already there is replaced in place).
Training runs with one intra-op thread (OMP_NUM_THREADS=1): on a shared 2-core machine two threads thrash.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADER = "| figure | value | unit | card | date | command |\n|---|---|---|---|---|---|\n"
SHARED = ROOT.parent / "shared" / "data"
DATE = "2026-11-25"
SAMPLES = {"syn90": (11, 90.0), "syn20b": (12, 20.0)}
CORPUS_SAMPLES = {"syn20c": (13, 20.0, 0.25, 115.0)}
"""Extra corpus subjects: (seed, seconds, face_variation, voice_pitch Hz): another face and voice than syn90's."""
SAMPLE_SIZE = 384


def sh(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "TALKFIELD_ROOT": str(ROOT)}
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (log: {log})")


def ensure_sample(work: Path, name: str) -> Path:
    from datamodules.preprocess import preprocess_video
    from datamodules.sample import generate_sample

    seed, dur, face, pitch = (*SAMPLES[name], 0.0, None) if name in SAMPLES else CORPUS_SAMPLES[name]
    src = work / "_sources" / name
    video = generate_sample(src, seed=seed, duration=dur, size=SAMPLE_SIZE, fps=25, face_variation=face,
                            voice_pitch=pitch)
    if not (work / "data" / name / "manifest.json").is_file():
        preprocess_video(Path(video), name, work / "data", show_progress=False)
    return src


def ensure_real(work: Path) -> None:
    from datamodules.preprocess import preprocess_video

    if not (work / "data" / "katie" / "manifest.json").is_file():
        preprocess_video(SHARED / "WDA_KatieHill_000.mp4", "katie", work / "data", show_progress=False)


def train(work: Path, stage: str, subject: str, steps: int, extra: list[str] = (), run_id: str | None = None) -> Path:
    """Train a stage with train.py (CSV logger) unless a finished run exists; return its last.ckpt."""
    run_id = run_id or f"bench{steps}"
    run_dir = work / "runs" / subject / stage / run_id
    ck = run_dir / "checkpoints" / "last.ckpt"
    if ck.is_file() and (run_dir / "config.yaml").is_file():
        return ck
    exp = {"audio2motion": "audio2motion", "lipsync": "lipsync"}[stage]
    t = time.time()
    sh([sys.executable, "train.py", f"experiment={exp}", f"subject.name={subject}", "subject.synthetic=null",
        f"paths.data_dir={work / 'data'}", f"paths.runs_dir={work / 'runs'}", f"run_id={run_id}", "logger=csv",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(50, steps // 5)}",
        "trainer.enable_progress_bar=false", *extra], work / f"train_{stage}_{subject}.log")
    print(f"trained {stage} on {subject}: {steps} steps in {time.time() - t:.0f} s", flush=True)
    return ck


# ----------------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------------
def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def frame_loudness(wav: np.ndarray, T: int) -> np.ndarray:
    """log10 RMS of each 640-sample frame [T]."""
    w = np.asarray(wav[: T * 640], np.float64)
    w = np.pad(w, (0, T * 640 - len(w))).reshape(T, 640)
    return np.log10(np.sqrt((w ** 2).mean(1)) + 1e-5)


def lagged(x: np.ndarray, lags=(-2, -1, 0, 1, 2)) -> np.ndarray:
    cols = [np.roll(x, -k) for k in lags]
    return np.stack(cols + [np.ones_like(x)], 1)


def predict(model, feats, f0, audio, person=None, pause_close: float = 1.0):
    """(raw, post-processed) motion at the inference defaults; audio: the 16 kHz samples of the same frames (the
    post-processing finds pauses in it, with the inference default look-ahead of 4 frames)."""
    from networks.audio2motion import postprocess, predict_motion

    raw = predict_motion(model, feats, f0, temperature=0.0, mouth_amp=1.0)
    return raw, postprocess(raw, person or model.person, audio=audio, pause_close=pause_close, lookahead=4)


def opening_width(off: np.ndarray, mean_shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from networks.audio2motion import lip_width68, mouth_opening68
    from talkfield.motion import from_offsets

    p = from_offsets(off, mean_shape)
    return mouth_opening68(p), lip_width68(p)


def closure_recall(opening: np.ndarray, phones: list[dict], t0: int, thr: float, lead: float) -> tuple[float, int]:
    """Share of p/b/m phones (viseme PP) inside frames [t0, t0+len) whose predicted opening drops below thr."""
    T = len(opening)
    hits = n = 0
    for ph in phones:
        if ph["viseme"] != "PP":
            continue
        a = int(np.floor((ph["start"] - lead) * 25)) - t0 - 1
        b = int(np.ceil((ph["end"] - lead) * 25)) - t0 + 1
        if a < 0 or b > T:
            continue
        n += 1
        hits += bool(opening[a:b].min() < thr)
    return (hits / n if n else float("nan")), n


def closure_threshold(train_open: np.ndarray, phones: list[dict], lead: float) -> float:
    """The opening up to which this person's tracked landmarks still show a p/b/m closure: the 90th percentile of the
    tracked opening over training frames inside p/b/m phones (ground-truth labels, after the visual lead)."""
    t = (np.arange(len(train_open)) + 0.5) / 25 + lead
    inside = np.zeros(len(train_open), bool)
    for ph in phones:
        if ph["viseme"] == "PP":
            inside |= (t >= ph["start"]) & (t < ph["end"])
    return float(np.quantile(train_open[inside], 0.9))


def sync_eval(expert_ck: Path, ds, frames: tuple[int, int], label: str) -> dict:
    import torch

    from lightning_modules.lipsync import load_lipsync
    from networks.audio2motion import normalize_motion, prepare_features
    from networks.audio2motion.syncnet import sync_auc

    expert = load_lipsync(expert_ck)
    a, b = frames
    f = prepare_features(torch.from_numpy(np.asarray(ds.array("mel"))[2 * a:2 * b].copy()), "mel", mode=expert.mel_norm)
    m = normalize_motion(torch.from_numpy(np.asarray(ds.array("offsets"))[a:b].copy()),
                         np.asarray(ds.array("motion_stats")))
    return sync_auc(expert, [(f, m)], shifts=(-8, -5, -3, 3, 5, 8), data=label)


# ----------------------------------------------------------------------------------------------------------------
def part_synthetic(work: Path, steps: int, sync_steps: int, ck: Path | None = None) -> dict:
    from lightning_modules.audio2motion import load_audio2motion
    from talkfield.dataset import open_subject

    srcs = {n: ensure_sample(work, n) for n in SAMPLES}
    ck = ck or train(work, "audio2motion", "syn90", steps)
    ds = open_subject(work / "data", "syn90")
    model = load_audio2motion(ck, "syn90", ds.fingerprint)
    gt_dir = srcs["syn90"] / "ground_truth"
    gt_open, gt_width = np.load(gt_dir / "mouth_opening.npy"), np.load(gt_dir / "lip_width.npy")
    lead = json.loads((srcs["syn90"] / "ground_truth.json").read_text())["visual_lead_s"]
    T = ds.T
    a, b = ds.manifest.split["val"]
    mel, f0 = np.asarray(ds.array("mel")), np.asarray(ds.array("f0"))
    wav = np.asarray(ds.array("audio"), np.float32)
    raw, post = predict(model, mel[2 * a:2 * b], f0[2 * a:2 * b], wav[640 * a:640 * b])
    ms = model.person.mean_shape
    tracked_open, _ = opening_width(np.asarray(ds.array("offsets")), ms)
    phones = json.loads((gt_dir / "phones.json").read_text())
    thr = closure_threshold(tracked_open[:a], phones, lead)
    out = {"held_out_frames": [a, b], "train_steps": steps, "closure_threshold": thr}
    loud = frame_loudness(np.load(gt_dir / "audio.npy"), T)
    X = lagged(loud)
    w, *_ = np.linalg.lstsq(X[:a], gt_open[:a], rcond=None)
    out["loudness_regressor_r"] = pearson(X[a:b] @ w, gt_open[a:b])
    out["loudness_regressor_train_r"] = pearson(X[:a] @ w, gt_open[:a])
    for tag, off in (("raw", raw), ("post", post)):
        op, wd = opening_width(off, ms)
        out[f"{tag}_mouth_r"] = pearson(op, gt_open[a:b])
        out[f"{tag}_lip_width_r"] = pearson(wd, gt_width[a:b])
        out[f"{tag}_pbm_recall"], out["pbm_count"] = closure_recall(op, phones, a, thr, lead)
    out["tracked_mouth_r"] = pearson(tracked_open[a:b], gt_open[a:b])  # the preprocessing ceiling
    out["tracked_pbm_recall"], _ = closure_recall(tracked_open[a:b], phones, a, thr, lead)
    # another seed: other phone sequence and voice, same synthetic face, predicted with syn90's person
    ds2 = open_subject(work / "data", "syn20b")
    g2 = srcs["syn20b"] / "ground_truth"
    _, post2 = predict(model, np.asarray(ds2.array("mel")), np.asarray(ds2.array("f0")),
                       np.asarray(ds2.array("audio"), np.float32))
    op2, wd2 = opening_width(post2, ms)
    T2 = len(op2)
    out["other_seed_mouth_r"] = pearson(op2, np.load(g2 / "mouth_opening.npy")[:T2])
    out["other_seed_lip_width_r"] = pearson(wd2, np.load(g2 / "lip_width.npy")[:T2])
    X2 = lagged(frame_loudness(np.load(g2 / "audio.npy"), T2))
    out["other_seed_loudness_regressor_r"] = pearson(X2 @ w, np.load(g2 / "mouth_opening.npy")[:T2])
    out["other_seed_pbm_recall"], out["other_seed_pbm_count"] = closure_recall(
        op2, json.loads((g2 / "phones.json").read_text()), 0, thr, lead)
    if sync_steps:
        eck = train(work, "lipsync", "syn90", sync_steps)
        out["lipsync"] = sync_eval(eck, ds, (a, b), "syn90 val split")
    return out


def katie_models(work: Path, steps: int, corpus_steps: int, ft_steps: int) -> dict[str, Path]:
    """The real-clip models: trained on its 181 frames alone ('scratch'), and fine-tuned for ft_steps from a
    generic model trained on the corpus of every subject in <work>/data ('corpus_ft')."""
    models = {"scratch": train(work, "audio2motion", "katie", steps)}
    if corpus_steps:
        for name in (*SAMPLES, *CORPUS_SAMPLES):
            ensure_sample(work, name)
        generic = train(work, "audio2motion", "corpus", corpus_steps,
                        ["data=audio2motion_corpus", f"data.data_dir={work / 'data'}"])
        models["corpus_ft"] = train(work, "audio2motion", "katie", ft_steps, [f"model.init_from={generic}"],
                                    run_id=f"ft{ft_steps}")
    return models


def part_real(work: Path, steps: int, sync_steps: int, models: dict[str, Path] | None = None) -> dict:
    from lightning_modules.audio2motion import load_audio2motion
    from talkfield import landmarks as lmk
    from talkfield.dataset import open_subject

    ensure_real(work)
    ds = open_subject(work / "data", "katie")
    a, b = ds.manifest.split["val"]
    mel, f0 = np.asarray(ds.array("mel")), np.asarray(ds.array("f0"))
    wav = np.asarray(ds.array("audio"), np.float32)
    off = np.asarray(ds.array("offsets"))
    out = {"held_out_frames": [a, b], "train_steps": steps}
    mean_pose = off[: ds.manifest.split["train"][1]].mean(0)
    out["mean_pose_baseline_lip_lmd"] = float(np.linalg.norm(mean_pose[None, lmk.LIPS68] - off[a:b, lmk.LIPS68],
                                                             axis=-1).mean())
    for name, ck in (models or {"scratch": train(work, "audio2motion", "katie", steps)}).items():
        model = load_audio2motion(ck, "katie", ds.fingerprint)
        ms = model.person.mean_shape
        gt_open, _ = opening_width(off[a:b], ms)
        raw, post = predict(model, mel[2 * a:2 * b], f0[2 * a:2 * b], wav[640 * a:640 * b])
        for tag, pred in (("raw", raw), ("post", post)):
            out[f"{name}_{tag}_lip_lmd"] = float(np.linalg.norm(pred[:, lmk.LIPS68] - off[a:b, lmk.LIPS68],
                                                                axis=-1).mean())
            out[f"{name}_{tag}_mouth_r"] = pearson(opening_width(pred, ms)[0], gt_open)
    if sync_steps:
        eck = train(work, "lipsync", "katie", sync_steps)
        out["lipsync"] = sync_eval(eck, ds, (a, b), "katie val split")
    return out


def part_mandarin(work: Path, steps: int, ck: Path | None = None, models: dict[str, Path] | None = None) -> dict:
    """Mandarin cross-driving figures for each real-clip model."""
    models = models or {"scratch": ck or train(work, "audio2motion", "katie", steps)}
    return {name: mandarin_figures(work, path) for name, path in models.items()}


def mandarin_figures(work: Path, ck: Path) -> dict:
    from lightning_modules.audio2motion import load_audio2motion
    from networks.audio2motion import extract_conditions
    from talkfield.audio import load_audio
    from talkfield.dataset import open_subject

    ensure_real(work)
    ds = open_subject(work / "data", "katie")
    model = load_audio2motion(ck, "katie", ds.fingerprint)
    wav = load_audio(SHARED / "chinese_news.wav")
    feats, f0 = extract_conditions(wav, "mel")
    ms = model.person.mean_shape
    tr = ds.manifest.split["train"][1]
    train_open, _ = opening_width(np.asarray(ds.array("offsets"))[:tr], ms)
    thr = float(np.quantile(train_open, 0.10))
    out = {"checkpoint": str(ck), "closed_threshold_q10": thr}
    for tag, close in (("", 1.0), ("no_pause_close_", 0.0)):  # the default, and pause closing off (for comparison)
        _, post = predict(model, feats, f0, wav, pause_close=close)
        op, _ = opening_width(post, ms)
        T = len(op)
        loud = frame_loudness(wav, T)
        env = 10 ** loud
        silent = loud < np.quantile(loud, 0.95) - 0.6  # 6 dB under the loud-frame level
        pauses, t = [], 0
        while t < T:
            if silent[t]:
                e = t
                while e < T and silent[e]:
                    e += 1
                if e - t > 5:  # longer than 200 ms
                    pauses.append((t, e))
                t = e
            else:
                t += 1
        closed = [float(np.median(op[s + 1:e - 1])) < thr for s, e in pauses]
        out.update({f"{tag}opening_std_ratio": float(op.std() / train_open.std()),
                    f"{tag}envelope_r": pearson(op, env), f"{tag}envelope_r_log": pearson(op, loud),
                    f"{tag}pauses_closed_share": float(np.mean(closed)) if closed else float("nan")})
        out["frames"], out["pauses"] = T, [list(x) for x in pauses]
    return out


def record(res: dict, card: str) -> None:
    rows = []
    cmd = "`python bench/bm_audio2motion.py " + " ".join(sys.argv[1:]) + "`"
    s = res.get("synthetic")
    if s:
        rows += [("a2m synthetic held-out mouth-opening r (post-processed)", s["post_mouth_r"], "r"),
                 ("a2m synthetic held-out mouth-opening r, loudness linear regressor", s["loudness_regressor_r"], "r"),
                 ("a2m synthetic held-out lip-width r (post-processed)", s["post_lip_width_r"], "r"),
                 ("a2m synthetic held-out p/b/m closure recall", s["post_pbm_recall"], "fraction"),
                 ("a2m synthetic other-seed mouth-opening r", s["other_seed_mouth_r"], "r"),
                 ("a2m synthetic other-seed lip-width r", s["other_seed_lip_width_r"], "r")]
        if "lipsync" in s:
            rows.append(("lip-sync expert AUC, synthetic val split (trained on its train split)",
                         s["lipsync"]["auc"], "AUC"))
    r = res.get("real")
    if r:
        rows.append(("a2m real clip held-out lip LMD, mean-pose baseline", r["mean_pose_baseline_lip_lmd"],
                     "head units"))
        for name, label in (("scratch", "trained on the clip"), ("corpus_ft", "corpus model fine-tuned on the clip")):
            if f"{name}_post_lip_lmd" in r:
                rows += [(f"a2m real clip held-out lip LMD, {label}", r[f"{name}_post_lip_lmd"], "head units"),
                         (f"a2m real clip held-out mouth-opening r, {label}", r[f"{name}_post_mouth_r"], "r")]
        if "lipsync" in r:
            rows.append(("lip-sync expert AUC, real clip val split (trained on its train split)",
                         r["lipsync"]["auc"], "AUC"))
    for name, label in (("scratch", "trained on the clip"), ("corpus_ft", "corpus model fine-tuned on the clip")):
        m = (res.get("mandarin") or {}).get(name)
        if m:
            rows += [(f"a2m Mandarin-driven mouth-opening std / training video's, {label}", m["opening_std_ratio"],
                      "ratio"),
                     (f"a2m Mandarin-driven mouth opening vs audio envelope r, {label}", m["envelope_r"], "r"),
                     (f"a2m Mandarin-driven pauses > 200 ms with mouth closed, {label}", m["pauses_closed_share"],
                      "fraction")]
    if not RESULTS.exists() or not RESULTS.read_text().strip():
        RESULTS.write_text(HEADER)
    # a figure already in the table is replaced where it stands; new figures are appended
    lines = RESULTS.read_text().splitlines()
    for name, value, unit in rows:
        row = f"| {name} | {value:.3f} | {unit} | {card} | {DATE} | {cmd} |"
        at = [i for i, ln in enumerate(lines) if ln.startswith(f"| {name} |")]
        if at:
            lines[at[0]] = row
            lines = [ln for i, ln in enumerate(lines) if i not in at[1:]]
        else:
            lines.append(row)
    RESULTS.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="synthetic,real,mandarin")
    ap.add_argument("--work", default=str(ROOT / "outputs" / "_bench_a2m"))
    ap.add_argument("--steps", type=int, default=1500, help="audio2motion training steps (synthetic)")
    ap.add_argument("--real-steps", type=int, default=600, help="audio2motion training steps (real clip)")
    ap.add_argument("--sync-steps", type=int, default=600, help="lip-sync expert steps (0: skip)")
    ap.add_argument("--corpus-steps", type=int, default=1000, help="generic corpus model steps (0: skip)")
    ap.add_argument("--ft-steps", type=int, default=300, help="real-clip fine-tune steps from the corpus model")
    ap.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    ap.add_argument("--card", default="CPU 2 cores", help="where the models were trained (RESULTS.md 'card')")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = {"load_average": os.getloadavg()[0]}
    parts = args.parts.split(",")
    if "synthetic" in parts:
        res["synthetic"] = part_synthetic(work, args.steps, args.sync_steps)
    models = None
    if "real" in parts or "mandarin" in parts:
        ensure_real(work)
        models = katie_models(work, args.real_steps, args.corpus_steps, args.ft_steps)
    if "real" in parts:
        res["real"] = part_real(work, args.real_steps, args.sync_steps, models)
    if "mandarin" in parts:
        res["mandarin"] = part_mandarin(work, args.real_steps, models=models)
    text = json.dumps(res, indent=1, default=str)
    print(text)
    (work / "results.json").write_text(text)
    if args.record:
        record(res, args.card)


if __name__ == "__main__":
    main()
