"""The evaluation protocol (issue 10, docs/evaluation.md): a trained subject scored on its held-out frames.

Frames: the held-out last 1/11 of the video (the dataset's `val` split). Two modes:
- motion-oracle: the tracked canonical offsets and eye openness of the real frames drive the render;
- self-driven: the held-out frames' own audio -> Audio2Motion -> post-processing drives it (needs an A2M model).
Both use the real frames' head poses and the mean of the training per-frame codes (CONTRACTS.md section 5), and
render at the output size (2 x the render size, after super-resolution) as uint8, exactly what inference ships.

Ground truth (CONTRACTS.md section 6): head-only (no torso model) -> the frame with its background replaced by the
plate and its own torso (`SubjectDataset.head_target`); with a torso model -> the real frame. Metrics are computed
on the rendered tensors, never on a decoded video:

    psnr, psnr_face   PSNR (0-1 range) on the whole frame / inside the landmark hull dilated by `face_dilate` px
    ssim              torchmetrics SSIM (gaussian 11, data range 1)
    lpips             networks.perceptual (standard LPIPS alex when torchvision's backbone is cached, else the
                      shift-tolerant LPIPS); its name is in `lpips_variant`
    lmd               the 20 mouth points (68-layout 48-67 taken from the 478-point face mesh) detected with the
                      preprocessing detector on the rendered and the real frame, each set mean-centred per frame,
                      mean L2 in pixels scaled to 512 x 512
    sync_auc          our lip-sync expert (networks.audio2motion.syncnet): AUC of aligned vs time-shifted
                      audio/mouth windows; motion = offsets of the detected landmarks (canonicalised on the rigid
                      points) or the driving motion; names the data the expert was trained on
    sample_*          on the synthetic sample: |mouth opening| and |lip width| of the detected landmarks (head
                      units) against the sample's ground truth, and their correlation
    lse_d, lse_c      SyncNet (user-given weights), face crops from our landmark boxes

The landmark metrics need mediapipe. Without it (e.g. on a GPU machine) they are skipped with a note, and
`add_landmark_metrics` adds them later from the saved PNG renders (`python evaluate.py landmarks=<eval dir>`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkfield import landmarks as lmk
from talkfield.dataset import SAMPLES_PER_FRAME, SubjectDataset, atomic_write_text

log = logging.getLogger(__name__)

MODES = {"oracle": "motion-oracle", "self": "self-driven"}
"""Mode keys (metric prefixes) and their names in tables."""
LMD_SIZE = 512
"""LMD is reported in pixels of a 512 x 512 frame (the field's convention)."""
LPIPS_SKIPPED = "LPIPS skipped: its package is not installed here"
RENDERS = "eval_renders"
"""Folder (in the eval output) of the rendered held-out frames: <mode>/<frame:06d>.png, lossless."""


# ----------------------------------------------------------------------------------------------------------------
# metrics: pure functions
# ----------------------------------------------------------------------------------------------------------------
def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 in [0, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def image_metrics(pred: torch.Tensor, target: torch.Tensor, face: torch.Tensor,
                  lpips_net: torch.nn.Module | None = None, batch: int = 8) -> dict[str, np.ndarray]:
    """Per-frame image metrics. pred / target: [N,H,W,3] in [0,1]; face: [N,H,W] bool.
    Returns {'psnr', 'psnr_face', 'ssim'[, 'lpips']}: each [N] float64."""
    from torchmetrics.functional import structural_similarity_index_measure as ssim

    from networks.losses import psnr

    n = len(pred)
    out = {"psnr": np.empty(n), "psnr_face": np.empty(n), "ssim": np.empty(n)}
    for i in range(n):
        out["psnr"][i] = float(psnr(pred[i], target[i]))
        out["psnr_face"][i] = float(psnr(pred[i], target[i], face[i])) if bool(face[i].any()) else np.nan
    for s in range(0, n, batch):
        p = pred[s:s + batch].permute(0, 3, 1, 2).float()
        t = target[s:s + batch].permute(0, 3, 1, 2).float()
        out["ssim"][s:s + batch] = ssim(p, t, data_range=1.0, reduction="none").double().numpy()
    if lpips_net is not None:
        dev = next(lpips_net.parameters()).device
        vals = []
        with torch.no_grad():
            for s in range(0, n, batch):
                p = pred[s:s + batch].permute(0, 3, 1, 2).to(dev)
                t = target[s:s + batch].permute(0, 3, 1, 2).to(dev)
                vals.append(lpips_net(p, t, normalize=True).reshape(-1).double().cpu().numpy())
        out["lpips"] = np.concatenate(vals)
    return out


def mouth_points(points: np.ndarray) -> np.ndarray:
    """The field's 20 mouth points (68-layout 48-67) of 478-point detections [..., 478, D] -> [..., 20, 2]."""
    points = np.asarray(points)
    if points.shape[-2] != lmk.NUM_MESH:
        raise ValueError(f"expected {lmk.NUM_MESH} landmarks on axis -2, got shape {points.shape}")
    return points[..., lmk.LIPS, :2]


def lmd(pred: np.ndarray, real: np.ndarray, size: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Mouth landmark distance per frame, in pixels at LMD_SIZE.

    pred, real: [N,478,2+] detections (px in a size x size frame). Each frame's 20 mouth points are mean-centred
    (so head placement does not count, only the mouth's shape), then the mean L2 distance between corresponding
    points is taken and scaled by LMD_SIZE / size. valid: [N] bool (frames where both were detected); others NaN.
    """
    p, r = mouth_points(pred).astype(np.float64), mouth_points(real).astype(np.float64)
    p = p - p.mean(-2, keepdims=True)
    r = r - r.mean(-2, keepdims=True)
    d = np.linalg.norm(p - r, axis=-1).mean(-1) * (LMD_SIZE / float(size))
    if valid is not None:
        d = np.where(np.asarray(valid, bool), d, np.nan)
    return d


def detected_canonical(points: np.ndarray, mean_shape: np.ndarray) -> np.ndarray:
    """Detections [N,478,3] (px, z scaled like x) -> canonical points [N,478,3] in head units, aligned on the
    rigid subset to the person's mean shape (talkfield.motion.canonicalize)."""
    from talkfield.motion import canonicalize

    return canonicalize(np.asarray(points, np.float64), mean_shape=np.asarray(mean_shape, np.float64)).canonical


def truth_errors(canonical: np.ndarray, gt_opening: np.ndarray, gt_width: np.ndarray) -> dict[str, float]:
    """Mouth opening / lip width of canonical points [N,478,3] against the sample's ground truth [N] (head units):
    mean absolute errors and the Pearson correlation of the opening. NaN frames are ignored."""
    op, wd = lmk.mouth_opening(canonical), lmk.lip_width(canonical)
    ok = np.isfinite(op) & np.isfinite(wd)
    if ok.sum() == 0:
        return {"mouth_mae": float("nan"), "width_mae": float("nan"), "mouth_corr": float("nan")}
    op, wd, go, gw = op[ok], wd[ok], np.asarray(gt_opening)[ok], np.asarray(gt_width)[ok]
    corr = float(np.corrcoef(op, go)[0, 1]) if ok.sum() > 2 and op.std() > 0 and go.std() > 0 else float("nan")
    return {"mouth_mae": float(np.abs(op - go).mean()), "width_mae": float(np.abs(wd - gw).mean()),
            "mouth_corr": corr}


def nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# the held-out frames: targets, renders
# ----------------------------------------------------------------------------------------------------------------
def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def targets(ds: SubjectDataset, frames: np.ndarray, size: int, real_frame: bool,
            face_dilate: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of `frames` at size x size: uint8 [N,size,size,3] (real frame, or the head-stage target:
    background replaced by the plate, own torso) and the face region bool [N,size,size] (landmark hull dilated
    by face_dilate px at the dataset resolution, as the head stage's validation uses)."""
    from datamodules.nerf_video import face_hull_mask

    lms = np.asarray(ds.array("lms2d"), np.float32)
    imgs, faces = [], []
    for t in frames:
        img = ds.frame(int(t)) if real_frame else ds.head_target(int(t))
        imgs.append(_resize(img, size))
        face = face_hull_mask(lms[int(t)], ds.size, face_dilate).astype(np.float32)
        faces.append(_resize(face, size) > 0)
    return np.stack(imgs), np.stack(faces)


def save_renders(out_dir: Path, mode: str, frames: np.ndarray, images: np.ndarray) -> Path:
    """Write uint8 [N,H,W,3] RGB renders as lossless PNG: out_dir/eval_renders/<mode>/<frame:06d>.png."""
    import cv2

    d = Path(out_dir) / RENDERS / mode
    d.mkdir(parents=True, exist_ok=True)
    for t, img in zip(frames, images):
        if not cv2.imwrite(str(d / f"{int(t):06d}.png"), np.ascontiguousarray(img[..., ::-1])):
            raise OSError(f"cannot write {d / f'{int(t):06d}.png'}")
    return d


def load_renders(out_dir: Path, mode: str, frames: np.ndarray) -> np.ndarray:
    """Read back the PNG renders of `mode` -> uint8 [N,H,W,3] RGB."""
    import cv2

    d = Path(out_dir) / RENDERS / mode
    out = []
    for t in frames:
        img = cv2.imread(str(d / f"{int(t):06d}.png"), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"{d / f'{int(t):06d}.png'} missing: the eval output is incomplete; re-run "
                                    "evaluate.py for it")
        out.append(img[..., ::-1])
    return np.stack(out)


@dataclass
class Models:
    """What is evaluated: head (HeadNeRFModule) or torso (TorsoNeRFModule, with its frozen head); a2m
    (networks.audio2motion.Audio2Motion) or None; checkpoints: stage -> path (for the record)."""

    head: Any
    torso: Any = None
    a2m: Any = None
    checkpoints: dict[str, str | None] = field(default_factory=dict)


def load_models(ds: SubjectDataset, *, head: Path | None, torso: Path | None, a2m: Path | None,
                device: torch.device) -> Models:
    """Load the checkpoints for subject `ds` (each refused when it belongs to another subject/preprocessing)."""
    from lightning_modules.head_nerf import load_head

    used: dict[str, str | None] = {"head": None, "torso": None, "audio2motion": None}
    torso_m = None
    if torso is not None:
        from talkfield.inference import _load_torso

        torso_m = _load_torso(Path(torso), ds.name, ds.fingerprint, device)
        head_m = torso_m.head
        used["torso"], used["head"] = str(torso), f"frozen head inside {torso}"
        if head is not None:
            log.warning("head=%s ignored: the torso checkpoint renders with the head it was trained on", head)
    else:
        if head is None:
            raise ValueError("evaluation needs a head checkpoint (head=...) or a torso checkpoint (torso=...)")
        head_m = load_head(head, subject=ds.name, fingerprint=ds.fingerprint, map_location=device)
        used["head"] = str(head)
    a2m_m = None
    if a2m is not None:
        from lightning_modules.audio2motion import load_audio2motion

        # loaded on the CPU (its person statistics become numpy arrays), the network then moved to the device
        a2m_m = load_audio2motion(a2m, ds.name, ds.fingerprint, allow_generic=True, map_location="cpu")
        a2m_m.network.to(device)
        used["audio2motion"] = str(a2m)
    return Models(head_m, torso_m, a2m_m, used)


class HeldOut:
    """Renders a subject's held-out frames with trained models (motion-oracle and self-driven)."""

    def __init__(self, ds: SubjectDataset, models: Models, device: torch.device, batch_frames: int = 4,
                 frames: np.ndarray | None = None):
        from talkfield.inference import FrameRenderer

        self.ds, self.models, self.device, self.batch = ds, models, device, int(batch_frames)
        self.frames = ds.split("val") if frames is None else np.asarray(frames)
        self.renderer = FrameRenderer(models.head, models.torso, ds, device)
        self.size = self.renderer.out_size
        self.window = self.renderer.window
        self.c2w = np.asarray(ds.array("c2w"), np.float32)

    def _person(self):
        from networks.audio2motion import PersonMotion

        a2m = self.models.a2m
        if a2m is not None and a2m.person is not None:
            return a2m.person
        ds = self.ds
        off = np.asarray(ds.array("offsets"), np.float32)
        tr = ds.split("train")
        return PersonMotion.from_arrays(off[tr], ds.array("motion_stats"), ds.array("mean_shape"),
                                        tuple(ds.manifest.eye_quantiles), np.asarray(ds.array("eye_open"))[tr])

    def render(self, motion: np.ndarray, eye: np.ndarray) -> np.ndarray:
        """Held-out frames driven by motion windows [N,W,68,3] and eye windows [N,W] -> uint8 [N,S,S,3]."""
        out = []
        for s in range(0, len(self.frames), self.batch):
            ts = self.frames[s:s + self.batch]
            img = self.renderer.render(self.c2w[ts], motion[s:s + self.batch], eye[s:s + self.batch], ts, bf16=False)
            out.append(img.cpu().numpy())
        return np.concatenate(out)

    def oracle_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tracked offsets and eye openness of the real frames: (windows [N,W,68,3], eye [N,W], centre [N,68,3])."""
        from talkfield.inference import condition_window

        off = np.asarray(self.ds.array("offsets"), np.float32)
        eye = np.asarray(self.ds.array("eye_open"), np.float32)
        win = condition_window(self.frames, self.window, self.ds.T)
        return off[win], eye[win], off[self.frames]

    def self_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The held-out frames' own audio -> Audio2Motion -> post-processing, as inference does (temperature 0,
        mouth_amp 1, inference's default LLE blend and pause closing, no synthetic blinks), from the audio features
        preprocessing stored for these frames (the model's kind; no feature extractor needed).
        Returns (windows [N,W,68,3], eye [N,W], motion [N,68,3])."""
        from networks.audio2motion import postprocess, predict_motion
        from talkfield.inference import Knobs, condition_window

        a2m = self.models.a2m
        if a2m is None:
            raise ValueError("self-driven evaluation needs an Audio2Motion model")
        a, n = int(self.frames[0]), len(self.frames)
        if not np.array_equal(self.frames, np.arange(a, a + n)):
            raise ValueError("self-driven evaluation needs consecutive frames")
        if not self.ds.has(a2m.features):
            raise ValueError(f"the Audio2Motion model reads {a2m.features!r} features; subject {self.ds.name!r} has "
                             f"{self.ds.manifest.audio_features} (re-run preprocessing with them)")
        rows = slice(2 * a, 2 * (a + n))
        feats = np.asarray(self.ds.array(a2m.features), np.float32)[rows]
        f0 = np.asarray(self.ds.array("f0"), np.float32)[rows]
        stats = np.asarray(self.ds.array("motion_stats"), np.float32)
        person = self._person()
        off = predict_motion(a2m, feats, f0, temperature=0.0, mouth_amp=1.0, stats=stats, seed=0)[:n]
        knobs = Knobs()  # inference's defaults: pause closing from these frames' own audio, same look-ahead
        audio = np.asarray(self.ds.array("audio"), np.float32)[SAMPLES_PER_FRAME * a: SAMPLES_PER_FRAME * (a + n)]
        off = postprocess(off, person, lle_blend=knobs.lle_blend, blink="none", seed=0, audio=audio,
                          pause_close=knobs.pause_close, lookahead=knobs.lookahead)
        win = condition_window(np.arange(n), self.window, n)
        motion = off[win]
        return motion, person.eye_openness(motion), off


# ----------------------------------------------------------------------------------------------------------------
# the landmark pass (mediapipe; CPU): LMD, the sample's ground truth, our lip-sync expert
# ----------------------------------------------------------------------------------------------------------------
def mediapipe_available() -> bool:
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        return False
    return True


def detect_frames(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """478-point face mesh of uint8 [N,S,S,3] frames with the preprocessing detector (tracking mode).
    Returns (points [N,478,3] px at S, detected [N] bool)."""
    from datamodules.preprocess.landmarks import detect

    pts, found, _ = detect(None, len(images), images.shape[1], show=False, read=lambda t: images[t])
    return pts, found


def sample_truth(ds: SubjectDataset, frames: np.ndarray) -> dict[str, np.ndarray] | None:
    """The synthetic sample's ground truth mouth opening / lip width [N] (head units) for `frames`, or None
    when the subject is not a generated sample (no ground_truth/ beside its source video)."""
    src = (ds.manifest.extra.get("source") or {}).get("video")
    if not src:
        return None
    gt = Path(src).parent / "ground_truth"
    if not (gt / "mouth_opening.npy").is_file() or not (gt / "lip_width.npy").is_file():
        return None
    op, wd = np.load(gt / "mouth_opening.npy"), np.load(gt / "lip_width.npy")
    if len(op) <= int(frames[-1]):
        return None
    return {"mouth_opening": op[frames], "lip_width": wd[frames], "dir": str(gt)}


def expert_features(ds: SubjectDataset, expert, frames: np.ndarray) -> tuple[torch.Tensor, str]:
    """The expert's audio features for `frames`, prepared over the whole recording like its training data:
    ([2N,C], kind)."""
    from networks.audio2motion.features import FEATURE_DIMS, prepare_features

    kinds = [k for k, d in FEATURE_DIMS.items() if d == expert.feat_dim]
    kind = next((k for k in kinds if ds.has(k)), None)
    if kind is None:
        raise ValueError(f"the lip-sync expert reads {expert.feat_dim}-channel features ({kinds}); subject "
                         f"{ds.name!r} has {ds.manifest.audio_features}")
    feats = torch.from_numpy(np.asarray(ds.array(kind), np.float32)[: 2 * ds.T].copy())
    prep = prepare_features(feats, kind)
    a = int(frames[0])
    return prep[2 * a: 2 * (a + len(frames))], kind


def expert_score(expert, ds: SubjectDataset, frames: np.ndarray, offsets: np.ndarray, data: str) -> dict:
    """Our lip-sync expert's AUC on motion offsets [N,68,3] of the held-out frames against their audio."""
    from networks.audio2motion.syncnet import sync_auc
    from networks.audio2motion.vae import normalize_motion

    feats, kind = expert_features(ds, expert, frames)
    stats = np.asarray(ds.array("motion_stats"), np.float32)
    m = normalize_motion(torch.from_numpy(np.asarray(offsets, np.float32)), stats).float()
    shifts = tuple(s for s in (-8, -5, -3, 3, 5, 8) if abs(s) + expert.window <= len(frames)) or (-1, 1)
    with torch.no_grad():
        res = sync_auc(expert, [(feats, m)], shifts, data=data)
    res["audio_features"] = kind
    return res


def landmark_metrics(ds: SubjectDataset, frames: np.ndarray, renders: dict[str, np.ndarray], real: np.ndarray,
                     expert=None, driving: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """LMD, sample ground-truth errors and lip-sync expert scores from detections on renders and real frames.

    renders: mode -> uint8 [N,S,S,3]; real: the ground-truth frames [N,S,S,3]. driving: mode -> the offsets
    [N,68,3] that drove each mode's render (scored by the expert too). Returns (flat metrics, details)."""
    from talkfield.motion import offsets as to_offsets

    size = real.shape[1]
    mean_shape = np.asarray(ds.array("mean_shape"), np.float64)
    truth = sample_truth(ds, frames)
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"detector": "mediapipe face mesh (datamodules.preprocess.landmarks.detect)",
                               "lmd_points": "68-layout 48-67 from the 478-point mesh (talkfield.landmarks.LIPS)"}
    pts_real, ok_real = detect_frames(real)
    details["real_detected"] = int(ok_real.sum())
    canon_real = detected_canonical(pts_real, mean_shape)
    canon_real[~ok_real] = np.nan
    if truth is not None:
        details["sample_truth"] = truth["dir"]
        for k, v in truth_errors(canon_real, truth["mouth_opening"], truth["lip_width"]).items():
            metrics[f"real/sample_{k}"] = v
    if expert is not None:
        r = expert_score(expert, ds, frames, to_offsets(canon_real, mean_shape), "landmarks detected on the real frames")
        metrics["real/sync_auc"] = r["auc"]
        details["lipsync"] = {"trained_on": r["expert_trained_on"], "audio_features": r["audio_features"],
                              "shifts": r["shifts"]}
    for mode, imgs in renders.items():
        pts, ok = detect_frames(imgs)
        both = ok & ok_real
        d = lmd(pts, pts_real, size, both)
        metrics[f"{mode}/lmd"] = nanmean(d)
        metrics[f"{mode}/lmd_frames"] = int(both.sum())
        if not both.all():
            details.setdefault("notes", []).append(
                f"{MODES[mode]}: LMD over {int(both.sum())} of {len(both)} frames (face found in {int(ok.sum())} "
                f"renders and {int(ok_real.sum())} real frames)")
        canon = detected_canonical(pts, mean_shape)
        canon[~ok] = np.nan
        if truth is not None:
            for k, v in truth_errors(canon, truth["mouth_opening"], truth["lip_width"]).items():
                metrics[f"{mode}/sample_{k}"] = v
        if expert is not None and ok.all():
            r = expert_score(expert, ds, frames, to_offsets(canon, mean_shape), f"landmarks detected on {MODES[mode]} renders")
            metrics[f"{mode}/sync_auc"] = r["auc"]
        elif expert is not None:
            details.setdefault("notes", []).append(
                f"{MODES[mode]}: lip-sync expert not scored on detections (face found in {int(ok.sum())} of "
                f"{len(ok)} renders)")
    if expert is not None:
        for mode, off in (driving or {}).items():
            r = expert_score(expert, ds, frames, off, f"the motion driving the {MODES[mode]} renders")
            metrics[f"{mode}/sync_auc_driving"] = r["auc"]
    return metrics, details


def add_landmark_metrics(out_dir: Path | str, ds: SubjectDataset, expert=None) -> dict:
    """The CPU pass: read `out_dir`/eval.json and its PNG renders, add LMD / sample ground truth / lip-sync
    expert scores, rewrite eval.json and eval.md. Returns the updated result."""
    out_dir = Path(out_dir)
    result = json.loads((out_dir / "eval.json").read_text())
    frames = np.arange(*result["frames"])
    real, _ = targets(ds, frames, int(result["resolution"]), result["ground_truth"] == "real frame",
                      int(result.get("face_dilate", 8)))
    renders = {m: load_renders(out_dir, m, frames) for m in result["modes"]}
    driving = {m: np.load(out_dir / RENDERS / m / "motion.npy") for m in result["modes"]
               if (out_dir / RENDERS / m / "motion.npy").is_file()}
    metrics, details = landmark_metrics(ds, frames, renders, real, expert, driving)
    if any(n.startswith(LPIPS_SKIPPED) for n in result.get("notes", [])):
        from networks.perceptual import build_perceptual

        net, result["lpips_variant"] = build_perceptual(result.get("lpips_net", "alex"), "auto")
        for mode, imgs in renders.items():
            metrics[f"{mode}/lpips"] = nanmean(image_metrics(to_float(imgs), to_float(real), torch.ones(
                real.shape[:3], dtype=torch.bool), net)["lpips"])
        result["notes"] = [n for n in result["notes"] if not n.startswith(LPIPS_SKIPPED)]
    result["metrics"].update(metrics)
    result["landmarks"] = details
    result["notes"] = [n for n in result.get("notes", []) if not n.startswith("landmark metrics skipped")]
    write_report(out_dir, result)
    return result


# ----------------------------------------------------------------------------------------------------------------
# SyncNet (optional, user-given weights)
# ----------------------------------------------------------------------------------------------------------------
def face_crops(images: np.ndarray, rects: np.ndarray, out: int = 224, scale: float = 0.4) -> np.ndarray:
    """Square face crops for SyncNet: uint8 RGB [N,S,S,3], boxes [N,4] (x0,y0,x1,y1 px at S) enlarged by
    `scale` (syncnet_python's crop_scale) -> uint8 BGR [N,out,out,3]. Outside the frame is padded with 110."""
    import cv2

    crops = []
    for img, (x0, y0, x1, y1) in zip(images, np.asarray(rects, np.float64)):
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * (1 + scale) / 2
        pad = int(np.ceil(half)) + 1
        padded = cv2.copyMakeBorder(np.ascontiguousarray(img), pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                                    value=(110, 110, 110))
        a, b = int(round(cy - half)) + pad, int(round(cy + half)) + pad
        c, d = int(round(cx - half)) + pad, int(round(cx + half)) + pad
        crop = padded[max(a, 0):max(b, a + 1), max(c, 0):max(d, c + 1)]
        crops.append(cv2.resize(crop, (out, out), interpolation=cv2.INTER_LINEAR)[..., ::-1])
    return np.ascontiguousarray(np.stack(crops))


def syncnet_metrics(model, ds: SubjectDataset, frames: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """LSE-D / LSE-C / offset of renders uint8 [N,S,S,3] of consecutive `frames` with their audio."""
    from networks.syncnet_lse import lse_scores

    rects = np.asarray(ds.array("face_rect"), np.float64)[frames] * (images.shape[1] / ds.size)
    a, n = int(frames[0]), len(frames)
    audio = np.asarray(ds.array("audio"), np.float32)[a * SAMPLES_PER_FRAME:(a + n) * SAMPLES_PER_FRAME]
    return lse_scores(model, face_crops(images, rects), audio, vshift=min(15, max(1, n // 4)))


# ----------------------------------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------------------------------
COLUMNS = [("psnr", "PSNR"), ("psnr_face", "face PSNR"), ("ssim", "SSIM"), ("lpips", "LPIPS"), ("lmd", "LMD"),
           ("sync_auc", "sync AUC"), ("sync_auc_driving", "sync AUC (driving motion)"), ("lse_d", "LSE-D"),
           ("lse_c", "LSE-C"), ("sample_mouth_mae", "mouth opening MAE"), ("sample_width_mae", "lip width MAE"),
           ("sample_mouth_corr", "mouth opening corr")]
"""Table columns: metric key (after the mode prefix) and its header."""


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"


def markdown(result: dict) -> str:
    """The eval.md report: what was scored, against what, with which LPIPS and audio features, and the table."""
    m = result["metrics"]
    rows = [k for k in ("real", *MODES) if any(key.startswith(f"{k}/") for key in m)]
    cols = [(k, h) for k, h in COLUMNS if any(f"{r}/{k}" in m for r in rows)]
    header = [h if k != "lpips" else f"LPIPS ({result.get('lpips_variant') or 'off'})" for k, h in cols]
    lines = [f"# Evaluation: subject `{result['subject']}`, {result['system']}", "",
             f"- frames {result['frames'][0]}..{result['frames'][1] - 1} (the held-out last 1/11, "
             f"{result['n_frames']} frames) at {result['resolution']} x {result['resolution']} px",
             f"- ground truth: {result['ground_truth']}; face PSNR inside the landmark hull dilated by "
             f"{result['face_dilate']} px",
             f"- LPIPS: {result.get('lpips_variant') or 'not computed'}; audio features: "
             f"{result.get('audio_features') or 'n/a (no self-driven mode)'}",
             f"- LMD: 20 mouth points (68-layout 48-67 of the 478-point mesh), mean-centred, px at {LMD_SIZE}"
             + ("" if not (result.get("landmarks") or {}).get("lipsync") else
                f"; sync AUC: our lip-sync expert (trained on {_trained_on(result)}), motion from the detected "
                "landmarks"),
             f"- device {result['device']}, {result['wall_s']:.1f} s; checkpoints: "
             + ", ".join(f"{k} `{v}`" for k, v in result["checkpoints"].items() if v), "",
             "| mode | " + " | ".join(header) + " |", "|---|" + "---|" * len(cols)]
    names = {"real": "real frames (detector reference)", **MODES}
    for r in rows:
        lines.append(f"| {names[r]} | " + " | ".join(_fmt(m.get(f"{r}/{k}")) for k, _ in cols) + " |")
    notes = [*result.get("notes", []), *(result.get("landmarks") or {}).get("notes", [])]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _trained_on(result: dict) -> str:
    t = (result.get("landmarks") or {}).get("lipsync", {}).get("trained_on")
    if not t:
        return "-"
    return "; ".join(f"{d.get('subject', d.get('name', '?'))} {d.get('frames', d.get('train', ''))}".strip()
                     if isinstance(d, dict) else str(d) for d in t)


def write_report(out_dir: Path | str, result: dict) -> tuple[Path, Path]:
    """Write eval.json (atomically) and eval.md into out_dir."""
    out_dir = Path(out_dir)
    j = out_dir / "eval.json"
    atomic_write_text(j, json.dumps(result, indent=2, default=_json_default))
    md = out_dir / "eval.md"
    atomic_write_text(md, markdown(result))
    return j, md


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def side_by_side(path: Path, real: np.ndarray, renders: dict[str, np.ndarray], audio: np.ndarray) -> Path:
    """real | motion-oracle | self-driven, with the held-out audio (for looking, never for scoring)."""
    from talkfield.media import VideoWriter

    panels = [real, *renders.values()]
    h, w = real.shape[1], real.shape[2] * len(panels)
    with VideoWriter(path, 25, (w, h), audio=audio) as vw:
        for i in range(len(real)):
            vw.write(np.concatenate([p[i] for p in panels], 1))
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# the whole protocol
# ----------------------------------------------------------------------------------------------------------------
def evaluate(ds: SubjectDataset, models: Models, out_dir: Path | str, *, device: torch.device,
             lpips_variant: str = "auto", lpips_net: str = "alex", face_dilate: int = 8, batch_frames: int = 4,
             landmarks: bool = True, expert=None, syncnet=None, video: bool = True,
             frames: np.ndarray | None = None) -> dict:
    """Render the held-out frames (motion-oracle; self-driven when models.a2m is set), score them, save the
    renders (PNG) and the driving motion, write eval.json + eval.md (+ the side-by-side video). Returns the result.

    lpips_variant: auto | lpips | stlpips | off. landmarks: run the landmark metrics now (needs mediapipe; else
    a note says how to add them later). expert: a loaded lip-sync expert or None. syncnet: a loaded SyncNetS or None.
    """
    from talkfield.training import device_name

    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    held = HeldOut(ds, models, device, batch_frames, frames)
    ts = held.frames
    real_frame = models.torso is not None
    notes: list[str] = []
    result: dict[str, Any] = {
        "subject": ds.name, "fingerprint": ds.fingerprint, "data_dir": str(ds.root.parent),
        "system": "head + torso" if real_frame else "head only",
        "frames": [int(ts[0]), int(ts[-1]) + 1], "n_frames": int(len(ts)), "resolution": int(held.size),
        "ground_truth": "real frame" if real_frame else
        "head-stage target (background replaced by the plate, the frame's own torso)",
        "face_dilate": int(face_dilate), "checkpoints": models.checkpoints, "device": device_name(),
        "modes": [], "metrics": {}, "notes": notes,
        "audio_features": None if models.a2m is None else models.a2m.features,
        "lpips_variant": None, "lpips_net": lpips_net,
    }
    net = None
    if lpips_variant != "off":
        from networks.perceptual import build_perceptual

        try:
            net, result["lpips_variant"] = build_perceptual(lpips_net, lpips_variant)
            net = net.to(device)
        except ImportError as err:  # a bare GPU machine: the CPU pass adds it from the saved renders
            notes.append(f"{LPIPS_SKIPPED} ({err}); the landmarks= pass adds it from the saved renders")
    real, face = targets(ds, ts, held.size, real_frame, face_dilate)
    inputs = {"oracle": held.oracle_inputs}
    if models.a2m is not None:
        inputs["self"] = held.self_inputs
    else:
        notes.append("self-driven mode skipped: no Audio2Motion checkpoint (pass a2m=<ckpt|run dir|latest>)")
    renders, driving = {}, {}
    tgt = to_float(real)
    face_t = torch.from_numpy(face)
    for mode, make in inputs.items():
        motion, eye, centre = make()
        with torch.no_grad():
            imgs = held.render(motion, eye)
        renders[mode], driving[mode] = imgs, centre
        d = save_renders(out_dir, mode, ts, imgs)
        np.save(d / "motion.npy", centre.astype(np.float32), allow_pickle=False)
        per = image_metrics(to_float(imgs), tgt, face_t, net)
        for k, v in per.items():
            result["metrics"][f"{mode}/{k}"] = nanmean(v)
        result["modes"].append(mode)
        if syncnet is not None:
            for k, v in syncnet_metrics(syncnet, ds, ts, imgs).items():
                result["metrics"][f"{mode}/{k}"] = v
    if syncnet is not None:
        notes.append("LSE-C/LSE-D: SyncNet with user-given weights; face crops from our landmark boxes, not S3FD")
    result["wall_s"] = time.time() - t0
    write_report(out_dir, result)
    if landmarks and mediapipe_available():
        result = add_landmark_metrics(out_dir, ds, expert)
    else:
        why = "compute_landmarks=false" if not landmarks else "mediapipe is not installed here"
        notes.append(f"landmark metrics skipped ({why}): LMD, sample ground truth and lip-sync expert scores; add "
                     f"them on a machine with mediapipe: python evaluate.py landmarks={out_dir}")
        write_report(out_dir, result)
    if video:
        audio = np.asarray(ds.array("audio"), np.float32)[ts[0] * SAMPLES_PER_FRAME:(ts[-1] + 1) * SAMPLES_PER_FRAME]
        result["video"] = str(side_by_side(out_dir / "eval_side_by_side.mp4", real, renders, audio))
    result["wall_s"] = time.time() - t0
    write_report(out_dir, result)
    return result
