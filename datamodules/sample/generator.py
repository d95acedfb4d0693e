"""Generate the sample subject: video + audio + ground truth, deterministically from a seed.

Output layout (`out_dir`):
    sample.mp4              H.264 yuv420p size x size at fps, AAC mono audio at sample_rate, both from t = 0
    ground_truth/*.npy      per-frame ground truth (np.save, no pickles); described in the manifest
    ground_truth/phones.json  the phone timeline: [{phone, start, end, class, stress, viseme}], seconds
    ground_truth.json       the manifest, written last: settings, conventions, and every array's file, shape,
                            dtype, unit and meaning. Its presence (with matching settings) marks a complete sample.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from talkfield.camera import rotation_matrix
from talkfield.landmarks import lip_width, mouth_opening
from talkfield.media import VideoWriter

from .face_model import FACE_VARIATION_MAX, REF_SIZE, build_face_model, vary_face
from .motion import blink_track, head_motion, torso_motion
from .render import FrameState, Renderer
from .speech import DEFAULT_PITCH_HZ, phone_timeline, synthesize
from .visemes import ARTICULATORS, VISEMES, frame_articulation, viseme_of

log = logging.getLogger(__name__)

GENERATOR_VERSION = 3
"""Bump when the output changes for the same settings (a complete older sample is then regenerated)."""
VISUAL_LEAD_S = 0.06
"""The face shows the articulation of the audio this many seconds later (within the natural 40-80 ms)."""
VIDEO_NAME, GT_DIR, MANIFEST = "sample.mp4", "ground_truth", "ground_truth.json"


def _check_settings(duration, size, fps, sample_rate, face_variation=0.0, voice_pitch=None) -> None:
    def bad(x):
        return not isinstance(x, (int, float, np.integer, np.floating)) or not math.isfinite(float(x)) or x <= 0

    if bad(duration):
        raise ValueError(f"sample generator: duration must be a positive number of seconds, got {duration!r}")
    if bad(size) or int(size) != size:
        raise ValueError(f"sample generator: size must be a positive whole number of pixels, got {size!r}")
    if int(size) % 2 or size < 64:
        raise ValueError(f"sample generator: size must be even and at least 64 px (H.264 4:2:0 and a visible "
                         f"face), got {size!r}")
    if bad(fps):
        raise ValueError(f"sample generator: fps must be a positive frame rate, got {fps!r}")
    if bad(sample_rate) or int(sample_rate) != sample_rate or sample_rate < 8000:
        raise ValueError(f"sample generator: sample_rate must be a whole number of Hz >= 8000, got {sample_rate!r}")
    number = isinstance(face_variation, (int, float, np.integer, np.floating))
    if not number or not 0 <= face_variation <= FACE_VARIATION_MAX:
        raise ValueError(f"sample generator: face_variation must be in [0, {FACE_VARIATION_MAX}] (0: the photo's own "
                         f"face), got {face_variation!r}")
    if voice_pitch is not None and (bad(voice_pitch) or not 60 <= voice_pitch <= 400):
        raise ValueError(f"sample generator: voice_pitch must be a pitch level in Hz within [60, 400] (None: the "
                         f"default {DEFAULT_PITCH_HZ:g} Hz voice), got {voice_pitch!r}")
    if round(duration * fps) < 1:
        raise ValueError(f"sample generator: duration {duration!r} s at fps {fps!r} gives no frame; "
                         "use a longer duration")


def _settings(seed, duration, size, fps, sample_rate, face_variation=0.0, voice_pitch=None) -> dict:
    out = {"seed": int(seed), "requested_duration": float(duration), "size": int(size), "fps": float(fps),
           "sample_rate": int(sample_rate), "version": GENERATOR_VERSION}
    # only when they differ from the default face and voice (so samples made before these options stay complete)
    if face_variation:
        out["face_variation"] = float(face_variation)
    if voice_pitch is not None:
        out["voice_pitch"] = float(voice_pitch)
    return out


def sample_is_complete(out_dir: Path, *, seed=0, duration=30.0, size=512, fps=25, sample_rate=16000,
                       face_variation=0.0, voice_pitch=None) -> bool:
    """True when `out_dir` holds a complete sample made with exactly these settings."""
    out_dir = Path(out_dir)
    try:
        man = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if man.get("settings") != _settings(seed, duration, size, fps, sample_rate, face_variation, voice_pitch):
        return False
    files = [out_dir / man.get("video", VIDEO_NAME), out_dir / GT_DIR / "phones.json"]
    files += [out_dir / a["file"] for a in man.get("arrays", {}).values()]
    return all(f.is_file() for f in files)


def generate_sample(out_dir: Path, *, seed: int = 0, duration: float = 30.0, size: int = 512, fps: float = 25,
                    sample_rate: int = 16000, face_variation: float = 0.0, voice_pitch: float | None = None,
                    force: bool = False) -> Path:
    """Write the synthetic sample subject into `out_dir` and return the path of its mp4.

    face_variation: 0 = the photo's own face geometry; > 0 (at most FACE_VARIATION_MAX) another face drawn from
    `seed`: mouth width and height change by up to +-face_variation, the chin lengthens by up to face_variation
    (`face_model.vary_face`). voice_pitch: the voice's pitch level in Hz (None: the default voice, about
    DEFAULT_PITCH_HZ = 195 Hz; e.g. 110 for a low voice); the intonation keeps its shape.
    Deterministic from `seed` (and these two options); skipped when a complete sample with the same settings
    exists (unless `force`); atomic: everything is written into a temporary folder inside `out_dir` and moved into
    place, the manifest last, so a failure leaves either the previous complete sample or no manifest.
    T = round(duration * fps) frames; the audio has exactly round(T * sample_rate / fps) samples.
    """
    _check_settings(duration, size, fps, sample_rate, face_variation, voice_pitch)
    out_dir = Path(out_dir)
    video_path = out_dir / VIDEO_NAME
    if not force and sample_is_complete(out_dir, seed=seed, duration=duration, size=size, fps=fps,
                                        sample_rate=sample_rate, face_variation=face_variation,
                                        voice_pitch=voice_pitch):
        log.debug("sample subject already complete in %s", out_dir)
        return video_path
    log.info("generating the synthetic sample subject in %s (seed %d, %.1f s, %dx%d px, %g fps, %d Hz)",
             out_dir, seed, duration, size, size, fps, sample_rate)
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".sample-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / GT_DIR).mkdir(parents=True)
    try:
        manifest = _generate_into(tmp, seed=int(seed), duration=float(duration), size=int(size), fps=float(fps),
                                  sample_rate=int(sample_rate), face_variation=float(face_variation),
                                  voice_pitch=voice_pitch)
        manifest["elapsed_s"] = round(time.perf_counter() - t_start, 2)
        # move into place: the old manifest goes first (so a crash leaves an incomplete, regenerated sample)
        (out_dir / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(out_dir / GT_DIR, ignore_errors=True)
        os.replace(tmp / VIDEO_NAME, video_path)
        os.replace(tmp / GT_DIR, out_dir / GT_DIR)
        man_tmp = tmp / MANIFEST
        man_tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(man_tmp, out_dir / MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("sample subject written: %s (%d frames in %.1f s)", video_path, manifest["frames"],
             manifest["elapsed_s"])
    return video_path


def _generate_into(tmp: Path, *, seed: int, duration: float, size: int, fps: float, sample_rate: int,
                   face_variation: float = 0.0, voice_pitch: float | None = None) -> dict:
    T = int(round(duration * fps))
    n_audio = int(round(T * sample_rate / fps))
    dur = T / fps
    ss = np.random.SeedSequence(seed)
    # a fifth child for the face: the first four (and so the default face's output) are what they always were
    rng_speech, rng_voice, rng_head, rng_blink, rng_face = (np.random.default_rng(s) for s in ss.spawn(5))
    pitch_hz = DEFAULT_PITCH_HZ if voice_pitch is None else float(voice_pitch)

    phones = phone_timeline(rng_speech, dur)
    audio, tracks = synthesize(phones, n_audio / sample_rate, sample_rate, rng_voice, return_tracks=True,
                               pitch_hz=pitch_hz)
    audio = np.pad(audio[:n_audio], (0, max(0, n_audio - len(audio))))
    t50 = np.arange(2 * T) * 0.02  # the contract's 50 Hz feature grid: row i centred at 20 ms * i
    f0 = np.interp(t50, tracks["t"], tracks["f0"])
    voiced = np.interp(t50, tracks["t"], tracks["voicing"]) > 0.2
    art, vis = frame_articulation(phones, T, fps, VISUAL_LEAD_S)
    head_ang, head_tr = head_motion(rng_head, T, fps)
    torso_ang, torso_tr = torso_motion(head_ang, head_tr, fps)
    blink, blink_times = blink_track(rng_blink, T, fps)

    model = build_face_model()
    face = {"mouth_width": 1.0, "mouth_height": 1.0, "chin_length": 1.0}
    if face_variation > 0:
        model, face = vary_face(model, rng_face, face_variation)
    ren = Renderer(model, size)
    R_head = rotation_matrix(*np.radians(head_ang).T)
    R_torso = rotation_matrix(*np.radians(torso_ang).T)
    lm2d = np.zeros((T, 478, 2), np.float32)
    lm3d = np.zeros((T, 478, 3), np.float32)
    c2w = np.zeros((T, 4, 4))
    with VideoWriter(tmp / VIDEO_NAME, fps, (size, size), audio, sample_rate) as writer:
        for i in range(T):
            st = FrameState(head_R=R_head[i], head_t=head_tr[i], torso_R=R_torso[i], torso_t=torso_tr[i],
                            jaw=art[i, 0], close=art[i, 1], wide=art[i, 2], round=art[i, 3], blink=blink[i])
            rgb, uv, X = ren.render(st)
            writer.write(rgb)
            lm2d[i], lm3d[i] = uv, X
            c2w[i] = ren.c2w(st)

    arrays = {
        "c2w": (c2w, "head units", "camera-to-world pose per frame in the head's canonical frame "
                "(talkfield.camera: OpenCV camera, head still, camera moves) [T,4,4]"),
        "K": (ren.K, "px", "intrinsics at the video size, pixel centres at +0.5 [3,3]"),
        "head_pose_deg": (head_ang.astype(np.float32), "degrees", "head yaw, pitch, roll; the head-to-camera "
                          "rotation is talkfield.camera.rotation_matrix(*radians) = inverse of c2w[:3,:3] [T,3]"),
        "head_translation": (head_tr.astype(np.float32), "head units",
                             "head offset in the camera frame added to its rest placement [T,3]"),
        "torso_pose_deg": (torso_ang.astype(np.float32), "degrees",
                           "torso yaw, pitch, roll in the camera frame (follows the head a little, 0.25 s late) [T,3]"),
        "torso_translation": (torso_tr.astype(np.float32), "head units", "torso offset in the camera frame [T,3]"),
        "landmarks_2d": (lm2d, "px",
                         "projected 478 face-mesh points (MediaPipe order), pixel centres at +0.5 [T,478,2]"),
        "landmarks_3d": (lm3d, "head units", "478 face-mesh points in the head's canonical frame (outer eye "
                         "corners 1.0 apart at rest, origin at the centroid of talkfield.landmarks.RIGID) [T,478,3]"),
        "rest_landmarks_3d": (model.rest.astype(np.float32), "head units",
                              "the neutral (photo) shape in the canonical frame [478,3]"),
        "triangles": (model.triangles.astype(np.int32), "index",
                      "face-mesh triangles rebuilt from FACEMESH_TESSELATION, normals towards the camera [F,3]"),
        "articulators": (art.astype(np.float32), "1", f"mouth articulators {list(ARTICULATORS)} per frame [T,4]"),
        "viseme": (vis.astype(np.int64), "index", "viseme per frame, index into the manifest's `visemes` [T]"),
        "mouth_opening": (mouth_opening(lm3d).astype(np.float32), "head units",
                          "talkfield.landmarks.mouth_opening of landmarks_3d [T]"),
        "lip_width": (lip_width(lm3d).astype(np.float32), "head units",
                      "talkfield.landmarks.lip_width of landmarks_3d [T]"),
        "blink": (blink.astype(np.float32), "1", "eyelid closure, 0 open .. 1 closed [T]"),
        "audio": (audio.astype(np.float32), "1", "the exact synthesised waveform muxed into the video [N]"),
        "f0": (f0.astype(np.float32), "Hz", "the pitch contour at 50 Hz (row i at 0.02 * i s; frame t owns rows "
               "2t, 2t+1), defined everywhere; meaningful where `voiced` [2T]"),
        "voiced": (voiced, "bool", "voicing (vowels, nasals, approximants, voiced consonants) at 50 Hz [2T]"),
    }
    gt = tmp / GT_DIR
    meta = {}
    for name, (arr, unit, meaning) in arrays.items():
        arr = np.ascontiguousarray(arr)
        np.save(gt / f"{name}.npy", arr, allow_pickle=False)
        meta[name] = {"file": f"{GT_DIR}/{name}.npy", "shape": list(arr.shape), "dtype": str(arr.dtype),
                      "unit": unit, "meaning": meaning}
    phone_list = [dict(p.to_dict(), viseme=viseme_of(p.label)) for p in phones]
    (gt / "phones.json").write_text(json.dumps(phone_list, indent=0))
    return {
        "generator": "datamodules.sample",
        "settings": _settings(seed, duration, size, fps, sample_rate, face_variation, voice_pitch),
        "face_geometry": {k: round(v, 6) for k, v in face.items()}, "voice_pitch_hz": pitch_hz,
        "video": VIDEO_NAME, "frames": T, "duration": dur, "fps": fps, "size": size, "sample_rate": sample_rate,
        "audio_samples": n_audio, "visual_lead_s": VISUAL_LEAD_S,
        "timing": "frame i is the picture at i / fps; audio sample 0 plays with frame 0; the face shows the "
                  "articulation of the audio at i / fps + visual_lead_s",
        "conventions": "talkfield.camera (OpenCV camera, c2w in the head's canonical frame, head units) and "
                       "talkfield.landmarks (MediaPipe 478-point order)",
        "reference_size": REF_SIZE, "visemes": list(VISEMES), "articulators": list(ARTICULATORS),
        "phones": f"{GT_DIR}/phones.json", "blink_times_s": [round(float(b), 4) for b in blink_times],
        "blinks_per_minute": round(len(blink_times) / dur * 60, 2), "arrays": meta,
    }
