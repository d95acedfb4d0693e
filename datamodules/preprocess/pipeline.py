"""The preprocessing pipeline: video -> one binarized subject dataset (talkfield.dataset schema), stage by stage.

Stages (each cached in `<work>/.stages/<stage>.json` with a key over its inputs and its part of the config;
re-running skips finished stages unless forced, and an interrupted run resumes after the last finished one):

    decode      probe the video, check duration, decode the speech aligned to frame 0      -> .cache/audio_full.npy
    crop        scan faces, choose one square crop, write the cropped 25 fps frames       -> frames/*.jpg
    landmarks   478-point face mesh, tracked, interpolated where missing                  -> lms2d, detected
    fit         pose, focal length, mean shape, expression basis, motion, eye openness    -> c2w, offsets, ...
    segment     label maps and torso-only RGBA images                                     -> masks/*.png, torso/*.webp
    background  clean plate and its never-uncovered mask                                  -> bg.png, bg_known.png
    audio       50 Hz features (mel, f0, Whisper, HuBERT)                                 -> audio, mel, f0, ...
    binarize    manifest (written last) and the debug video                               -> manifest.json, debug.mp4

The work happens in `<data_dir>/_work/<name>/`, which is moved onto `<data_dir>/<name>/` only when complete;
bad input raises PreprocessError before anything is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from talkfield import dataset as ds
from talkfield.runs import file_hash, fingerprint

from . import audio_features, background, crop, debug, decode, fit, landmarks, segment
from .common import (PreprocessError, Work, format_ranges, frame_ranges, log, merge_cfg, progress, remove_tree,
                     replace_dir, stable_hash)

STAGES = ["decode", "crop", "landmarks", "fit", "segment", "background", "audio", "binarize"]
FIT_ARRAYS = ["intrinsics", "c2w", "mean_shape", "lms3d", "offsets", "motion_stats", "exp_basis", "exp_coeffs",
              "eye_ratio", "eye_open", "face_rect", "lip_rect"]
PLATE_FILL_POLICY = ("never-uncovered pixels (bg_known.png == 0) take the colour of the nearest known background "
                     "pixel, then a Gaussian blur inside that area")


def _save(root: Path, name: str, arr: np.ndarray) -> None:
    spec = ds.ARRAYS[name]
    ds.atomic_save_npy(root / f"{name}.npy", np.asarray(arr).astype(spec.dtype, copy=False))


def _imwrite(path: Path, img_rgb: np.ndarray, params=()) -> None:
    import cv2

    if img_rgb.ndim == 3 and img_rgb.shape[2] == 3:
        img = img_rgb[:, :, ::-1]
    elif img_rgb.ndim == 3 and img_rgb.shape[2] == 4:
        img = img_rgb[:, :, [2, 1, 0, 3]]
    else:
        img = img_rgb
    ok, buf = cv2.imencode(path.suffix, np.ascontiguousarray(img), list(params))
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())


def _read_label(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


class Pipeline:
    """One preprocessing run; see the module docstring. Use `preprocess_video` rather than this class."""

    def __init__(self, video: Path, name: str, data_dir: Path, audio: Path | None, cfg: dict, show: bool):
        self.video, self.name, self.data_dir, self.audio = Path(video), name, Path(data_dir), audio
        self.cfg, self.show = cfg, show
        self.final = self.data_dir / name
        self.work = Work(self.data_dir / "_work" / name)
        self.root = self.work.root
        self.keys: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = []

    # ---------------------------------------------------------------------------------------------- stages
    def run_stage(self, stage: str, key: str, fn, force: bool = False) -> dict:
        self.keys[stage] = key
        info = None if force else self.work.done(stage, key)
        if info is not None:
            log.info("stage %s: up to date, skipped", stage)
            for w in info.get("warnings", []):
                self._warn(w)
            return info
        t = time.perf_counter()
        n_warn = len(self.warnings)
        info = fn() or {}
        info["warnings"] = self.warnings[n_warn:]
        self.timings[stage] = time.perf_counter() - t
        self.work.finish(stage, key, info)
        log.info("stage %s: done in %.1f s", stage, self.timings[stage])
        return self.work.info(stage)

    def stage_decode(self) -> dict:
        cfg = self.cfg
        info = decode.probe(self.video, cfg["fps"])
        wav, rec = decode.aligned_audio(self.video, info, self.audio)
        n_audio = len(wav) // ds.SAMPLES_PER_FRAME
        if n_audio < info.n_frames - cfg["max_audio_short_frames"]:
            src = rec["source"]
            raise PreprocessError(f"{src}: the audio ({len(wav) / ds.SAMPLE_RATE:.2f} s) is shorter than the video "
                                  f"{self.video} ({info.duration:.2f} s): frames {n_audio}-{info.n_frames - 1} "
                                  f"have no sound; trim the video to {n_audio / cfg['fps']:.2f} s or pass the "
                                  "complete speech track with audio=<path>")
        T = min(info.n_frames, n_audio)
        dur = T / cfg["fps"]
        if dur < cfg["min_duration_s"]:
            raise PreprocessError(f"{self.video}: only {dur:.2f} s (frames 0-{T - 1}); at least "
                                  f"{cfg['min_duration_s']:.0f} s of talking is needed (3-5 minutes is best): "
                                  "record or pick a longer video")
        if dur < cfg["warn_duration_s"]:
            self._warn(f"{self.video}: only {dur:.1f} s of video; quality will suffer (3-5 minutes is best)")
        self.work.save("audio_full", wav)
        return {"video": info.to_dict(), "audio": rec, "T": T}

    def stage_crop(self, dec: dict) -> dict:
        info = decode.VideoInfo(**dec["video"])
        info.n_frames = dec["T"]
        c = self.cfg["crop"]
        scan = crop.scan_faces(self.video, info, c["scan_every"], c["scan_side"], self.show)
        rec = crop.choose_crop(scan, info, self.cfg, self.cfg["size"])
        if (scan["multi"] > 1).any():
            ranges = frame_ranges(scan["idx"][scan["multi"] > 1], c["scan_every"], info.n_frames - 1)
            # choose_crop already logged it
            self.warnings.append(f"{self.video}: several faces in frames {format_ranges(ranges)}; tracked the largest")
        # a thumbnail of the first frame for the debug video
        for _, img in decode.iter_frames(self.video, info=info):
            import cv2

            sc = 160 / max(img.shape[:2])
            self.work.save("thumb", cv2.resize(img, None, fx=sc, fy=sc, interpolation=cv2.INTER_AREA))
            break
        remove_tree(self.root / "frames")
        crop.write_frames(self.video, info, rec, self.root / "frames", self.cfg["output"]["jpeg_quality"], self.show)
        return {"crop": rec}

    def stage_landmarks(self, T: int, size: int) -> dict:
        res = landmarks.track(self.root / "frames", T, size, self.cfg["landmarks"], str(self.video), self.show)
        self.work.save("lms_raw", res["raw"])
        _save(self.root, "lms2d", res["lms2d"])
        _save(self.root, "detected", res["detected"])
        if res["missing_ranges"]:
            self._warn(f"{self.video}: no face in frames {format_ranges(res['missing_ranges'])}; interpolated")
        return {"missing_ranges": res["missing_ranges"], "multi_face_frames": res["multi_face_frames"],
                "detected_fraction": float(res["detected"].mean())}

    def stage_fit(self, size: int) -> dict:
        lms2d = np.load(self.root / "lms2d.npy")
        res = fit.fit_camera(lms2d, size, self.cfg["fit"])
        for k in FIT_ARRAYS:
            _save(self.root, k, res[k])
        return res["info"]

    def stage_segment(self, T: int) -> dict:
        for d in ("masks", "torso"):
            remove_tree(self.root / d)
            (self.root / d).mkdir(parents=True)
        c = self.cfg["segment"]
        args = (str(self.root), c["threshold"], self.cfg["output"]["torso_quality"])
        workers = int(c["workers"]) if T >= int(c["parallel_min_frames"]) else 1
        if workers <= 1:
            counts = _segment_range(*args, 0, T, self.show)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            bounds = np.linspace(0, T, workers + 1).round().astype(int)
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
                futs = [ex.submit(_segment_range, *args, int(a), int(b), self.show and k == 0)
                        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
                counts = sum(f.result() for f in futs)
        frac = counts / counts.sum()
        return {"label_fractions": {k: float(frac[v]) for k, v in ds.LABELS.items()}}

    def stage_background(self, T: int) -> dict:
        b = self.cfg["background"]
        idx = np.unique(np.linspace(0, T - 1, min(T, b["samples"])).round().astype(int))
        frames = [crop.read_frame(self.root / "frames", t) for t in idx]
        labels = [_read_label(self.root / "masks" / f"{t:06d}.png") for t in idx]
        plate, known = background.plate(frames, labels, b["margin_px"], b["fill_blur_px"])
        _imwrite(self.root / "bg.png", plate)
        _imwrite(self.root / "bg_known.png", known.astype(np.uint8) * 255)
        return {"never_uncovered_fraction": float(1.0 - known.mean()), "fill_policy": PLATE_FILL_POLICY,
                "frames_sampled": int(len(idx))}

    def stage_audio(self, T: int) -> dict:
        wav = self.work.load("audio_full")
        feats, rec = audio_features.extract(wav, T, self.cfg["audio"])
        for k in ("whisper", "hubert"):
            (self.root / f"{k}.npy").unlink(missing_ok=True)
        for k, v in feats.items():
            _save(self.root, k, v)
        return rec

    def stage_binarize(self, fp: str, dec: dict, stages: dict) -> dict:
        T = dec["T"]
        size = self.cfg["size"]
        if self.cfg["output"]["debug_video"]:
            lms2d = np.load(self.root / "lms2d.npy")
            fitted = {k: np.load(self.root / f"{k}.npy") for k in ("c2w", "intrinsics", "lms3d", "eye_open")}
            frames = (crop.read_frame(self.root / "frames", t) for t in range(T))
            labels = (_read_label(self.root / "masks" / f"{t:06d}.png") for t in range(T))
            debug.write_debug_video(self.root / "debug.mp4", progress(frames, T, "debug video", self.show), labels,
                                    lms2d, np.load(self.root / "detected.npy"), fitted, self.work.load("thumb"),
                                    stages["crop"]["crop"], self.cfg["fps"], np.load(self.root / "audio.npy"))
        return {}

    # ---------------------------------------------------------------------------------------------- run
    def _warn(self, msg: str) -> None:
        log.warning(msg)
        self.warnings.append(msg)

    def manifest(self, fp: str, src_hash: str, stages: dict) -> ds.Manifest:
        import av
        import mediapipe

        dec = stages["decode"]
        T = dec["T"]
        arrays = {}
        for name, spec in ds.ARRAYS.items():
            f = self.root / f"{name}.npy"
            if f.is_file():
                a = np.load(f, mmap_mode="r", allow_pickle=False)
                arrays[name] = {"file": f.name, "shape": list(a.shape), "dtype": spec.dtype, "unit": spec.unit,
                                "meaning": spec.meaning}
        crop_rec = {k: stages["crop"]["crop"][k] for k in ("source_width", "source_height", "rotation", "x0", "y0",
                                                          "size", "out_size")}
        fit_info = stages["fit"]
        extra = {
            "source": {"video": str(self.video), "audio": str(self.audio) if self.audio else None, "hash": src_hash,
                       "duration_s": dec["video"]["duration"], "src_fps": dec["video"]["src_fps"],
                       "audio_offset_s": dec["audio"]["offset_s"]},
            "landmarks": {k: stages["landmarks"][k] for k in ("missing_ranges", "multi_face_frames",
                                                               "detected_fraction")},
            "fit": {k: v for k, v in fit_info.items() if k not in ("key", "warnings")},
            "segment": {k: v for k, v in stages["segment"].items() if k not in ("key", "warnings")},
            "background": {k: v for k, v in stages["background"].items() if k not in ("key", "warnings")},
            "audio": {k: v for k, v in stages["audio"].items() if k not in ("key", "warnings")},
            "config": self.cfg,
            "versions": {"mediapipe": mediapipe.__version__, "av": av.__version__, "numpy": np.__version__},
            "stage_keys": self.keys,
            "warnings": self.warnings,
            "debug_video": "debug.mp4" if (self.root / "debug.mp4").is_file() else None,
        }
        tr, va = ds.split_indices(T)
        return ds.Manifest(subject=self.name, fingerprint=fp, T=T, size=self.cfg["size"], crop=crop_rec,
                           split={"train": [0, int(len(tr))], "val": [int(len(tr)), T]}, arrays=arrays,
                           images={"frames": "jpg", "masks": "png", "torso": "webp"},
                           eye_quantiles=list(fit_info["eye_quantiles"]), audio_features=stages["audio"]["made"],
                           extra=extra)

    def run(self, force: bool) -> Path:
        cfg = self.cfg
        if not self.video.is_file():
            raise PreprocessError(f"{self.video}: no such file; check the video= path")
        if self.audio is not None and not Path(self.audio).is_file():
            raise PreprocessError(f"{self.audio}: no such file; check the audio= path")
        src_hash = stable_hash(file_hash(self.video), file_hash(self.audio) if self.audio else None)
        fp = fingerprint(src_hash, cfg)
        mpath = self.final / "manifest.json"
        if not force and mpath.is_file():
            try:
                if json.loads(mpath.read_text()).get("fingerprint") == fp:
                    log.info("subject %r is up to date (%s); pass preprocess.force=true to rebuild", self.name, mpath)
                    return self.final
            except json.JSONDecodeError:
                pass
        if force:
            remove_tree(self.root)
        elif self.final.is_dir() and not self.root.exists():
            # an older preprocessing of this subject: reuse its finished stages where their keys still match
            self.root.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.final, self.root)
            (self.root / "manifest.json").unlink(missing_ok=True)
        fresh = not self.root.exists()
        self.work.create()
        try:
            return self._run(fp, src_hash, force)
        except PreprocessError:
            if fresh:
                remove_tree(self.root)
                _rmdir_if_empty(self.root.parent)
            raise

    def _run(self, fp: str, src_hash: str, force: bool) -> Path:
        cfg = self.cfg
        audio_key = str(self.audio) if self.audio else None
        k = {}
        k["decode"] = stable_hash("decode", src_hash, audio_key, cfg["fps"], cfg["min_duration_s"],
                                  cfg["warn_duration_s"], cfg["max_audio_short_frames"])
        st = {}
        st["decode"] = self.run_stage("decode", k["decode"], self.stage_decode)
        T, size = st["decode"]["T"], cfg["size"]
        k["crop"] = stable_hash(k["decode"], size, cfg["crop"], cfg["landmarks"]["max_missing"],
                                cfg["output"]["jpeg_quality"])
        st["crop"] = self.run_stage("crop", k["crop"], lambda: self.stage_crop(st["decode"]))
        k["landmarks"] = stable_hash(k["crop"], cfg["landmarks"])
        st["landmarks"] = self.run_stage("landmarks", k["landmarks"], lambda: self.stage_landmarks(T, size))
        k["fit"] = stable_hash(k["landmarks"], cfg["fit"])
        st["fit"] = self.run_stage("fit", k["fit"], lambda: self.stage_fit(size))
        k["segment"] = stable_hash(k["landmarks"], cfg["segment"], cfg["output"]["torso_quality"])
        st["segment"] = self.run_stage("segment", k["segment"], lambda: self.stage_segment(T))
        k["background"] = stable_hash(k["segment"], cfg["background"])
        st["background"] = self.run_stage("background", k["background"], lambda: self.stage_background(T))
        k["audio"] = stable_hash(k["decode"], cfg["audio"])
        st["audio"] = self.run_stage("audio", k["audio"], lambda: self.stage_audio(T))
        k["binarize"] = stable_hash(*(k[s] for s in STAGES[:-1]), cfg["output"]["debug_video"])
        st["binarize"] = self.run_stage("binarize", k["binarize"], lambda: self.stage_binarize(fp, st["decode"], st))
        man = self.manifest(fp, src_hash, st)
        man.extra["timings_s"] = self.timings
        ds.atomic_write_text(self.root / "manifest.json", man.to_json())
        replace_dir(self.root, self.final)
        _rmdir_if_empty(self.root.parent)
        log.info("subject %r written to %s (T=%d frames, features: %s)", self.name, self.final, T,
                 ", ".join(man.audio_features))
        return self.final


def _segment_range(root: str, thr: float, quality: int, a: int, b: int, show: bool) -> np.ndarray:
    """Label maps and torso images of frames a..b-1 (a worker of the segment stage). Returns label counts."""
    import cv2

    root = Path(root)
    lms2d = np.load(root / "lms2d.npy", mmap_mode="r")
    seg = segment.PersonSegmenter()
    counts = np.zeros(len(ds.LABELS), np.int64)
    try:
        for t in progress(range(a, b), total=b - a, desc="segment", enable=show):
            img = crop.read_frame(root / "frames", t)
            pts = np.asarray(lms2d[t])
            lab = segment.label_map(seg(img) > thr, pts)
            counts += np.bincount(lab.reshape(-1), minlength=len(ds.LABELS))
            _imwrite(root / "masks" / f"{t:06d}.png", lab, [cv2.IMWRITE_PNG_COMPRESSION, 3])
            rgba = background.torso_rgba(img, lab, pts)
            _imwrite(root / "torso" / f"{t:06d}.webp", rgba, [cv2.IMWRITE_WEBP_QUALITY, int(quality)])
    finally:
        seg.close()
    return counts


def _rmdir_if_empty(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


def preprocess_video(video: Path, name: str, data_dir: Path, *, audio: Path | None = None, cfg: dict | None = None,
                     force: bool = False, show_progress: bool = True) -> Path:
    """Preprocess one talking-person video into the subject dataset `data_dir/name` and return its path.

    video: any container PyAV reads; audio: a separate speech file (else the video's audio track); cfg: overrides
    of `common.DEFAULTS` (the `preprocess` config group); force: redo every stage. Finished stages are reused.
    Raises PreprocessError (naming the file, frames and fix) for unusable input, leaving nothing half-written.
    """
    if not name or "/" in name or name.startswith(("_", ".")):
        raise PreprocessError(f"subject name {name!r} is not usable as a folder name; pass subject.name=<name>")
    cfg = merge_cfg(cfg)
    pipe = Pipeline(Path(video), name, Path(data_dir), Path(audio) if audio else None, cfg, show_progress)
    return pipe.run(force)
