"""SyncNet lip-sync scores (LSE-D, LSE-C) with user-given weights.

The network is the 'S' model of Chung & Zisserman's SyncNet in the layout of the public `syncnet_v2.model` state
dict (keys `netcnnaud.*`, `netfcaud.*`, `netcnnlip.*`, `netfclip.*`), so those weights load with strict key checks.
Nothing ships or downloads here: pass the file's path (`evaluate.py syncnet=<path>`). Audio features are 13 MFCCs at
100 Hz computed like python_speech_features' defaults (re-implemented below), video inputs are 224x224 BGR face crops,
5 frames per window; LSE-D is the mean distance at the best offset, LSE-C its margin to the median (as in Wav2Lip's
evaluation of syncnet_python). Face crops come from our own landmark boxes, not S3FD: say so next to any number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _bn_relu(conv: nn.Module, ch: int, dims: int) -> list[nn.Module]:
    bn = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](ch)
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNetS(nn.Module):
    """Audio tower on MFCC [B,1,13,20] and lip tower on faces [B,3,5,224,224] -> 1024-d embeddings each."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_bn_relu(nn.Conv2d(1, 64, (3, 3), padding=(1, 1)), 64, 2), nn.MaxPool2d((1, 1), (1, 1)),
            *_bn_relu(nn.Conv2d(64, 192, (3, 3), padding=(1, 1)), 192, 2), nn.MaxPool2d((3, 3), (1, 2)),
            *_bn_relu(nn.Conv2d(192, 384, (3, 3), padding=(1, 1)), 384, 2),
            *_bn_relu(nn.Conv2d(384, 256, (3, 3), padding=(1, 1)), 256, 2),
            *_bn_relu(nn.Conv2d(256, 256, (3, 3), padding=(1, 1)), 256, 2), nn.MaxPool2d((3, 3), (2, 2)),
            *_bn_relu(nn.Conv2d(256, 512, (5, 4)), 512, 2),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            *_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, 3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, 3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, 3),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, 3),
            *_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, 3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), 512, 3),
        )
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """mfcc [B,1,13,20] -> [B,1024]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [B,3,5,224,224] (BGR, 0-255) -> [B,1024]."""
        return self.netfclip(self.netcnnlip(faces).flatten(1))


def load_syncnet(path: Path | str, device: str | torch.device = "cpu") -> SyncNetS:
    """Load user-given SyncNet weights (a state dict; torch.load weights_only=True), strict on keys and shapes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet weights {path} not found: pass the path of syncnet_v2.model "
                                "(from the syncnet_python project) to evaluate.py syncnet=<path>, or leave it unset")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = SyncNetS()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} is not a SyncNet 'S' state dict: missing keys {missing[:5]}..., "
                         f"unexpected keys {unexpected[:5]}...")
    return model.to(device).eval()


def mfcc_psf(signal: np.ndarray, sample_rate: int = 16000, numcep: int = 13, nfilt: int = 26, nfft: int = 512,
             winlen: float = 0.025, winstep: float = 0.01, preemph: float = 0.97, ceplifter: int = 22) -> np.ndarray:
    """MFCCs as python_speech_features.mfcc computes them with its defaults. signal: int16-scaled samples [S].
    Returns [frames, 13] at 100 Hz (c0 replaced by log frame energy)."""
    from scipy.fft import dct

    x = np.asarray(signal, dtype=np.float64)
    x = np.append(x[0], x[1:] - preemph * x[:-1])
    flen, fstep = int(round(winlen * sample_rate)), int(round(winstep * sample_rate))
    n = 1 if len(x) <= flen else 1 + int(np.ceil((len(x) - flen) / fstep))
    x = np.concatenate([x, np.zeros((n - 1) * fstep + flen - len(x))])
    idx = np.arange(flen)[None, :] + fstep * np.arange(n)[:, None]
    frames = x[idx]
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = pspec.sum(1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    mel = lambda hz: 2595 * np.log10(1 + hz / 700.0)  # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595.0) - 1)  # noqa: E731
    bins = np.floor((nfft + 1) * imel(np.linspace(mel(0), mel(sample_rate / 2), nfilt + 2)) / sample_rate)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        a, b, c = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(a, b):
            fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(b, c):
            fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    feat = pspec @ fb.T
    feat = np.log(np.where(feat == 0, np.finfo(float).eps, feat))
    feat = dct(feat, type=2, axis=1, norm="ortho")[:, :numcep]
    lift = 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
    feat = feat * lift
    feat[:, 0] = np.log(energy)
    return feat


@torch.no_grad()
def lse_scores(model: SyncNetS, faces_bgr: np.ndarray, audio16k: np.ndarray, vshift: int = 15,
               batch: int = 20) -> dict[str, float]:
    """LSE-D / LSE-C of one clip. faces_bgr: uint8 [T,224,224,3] at 25 fps; audio16k: float [-1,1] at 16 kHz.

    Returns {"lse_d", "lse_c", "offset"} (offset in frames, positive = audio late)."""
    dev = next(model.parameters()).device
    mf = mfcc_psf(np.clip(audio16k, -1, 1) * 32767.0).T.astype(np.float32)  # [13, N]
    T = min(len(faces_bgr), mf.shape[1] // 4) - 5
    if T < 1:
        raise ValueError("clip too short for SyncNet (needs > 5 frames of video with audio)")
    vid = torch.from_numpy(np.ascontiguousarray(faces_bgr)).float().permute(3, 0, 1, 2)  # [3,T,224,224]
    cc = torch.from_numpy(mf)
    vfeat, afeat = [], []
    for s in range(0, T, batch):
        ids = range(s, min(s + batch, T))
        v = torch.stack([vid[:, i:i + 5] for i in ids]).to(dev)
        a = torch.stack([cc[:, 4 * i:4 * i + 20] for i in ids])[:, None].to(dev)
        vfeat.append(model.forward_lip(v).cpu())
        afeat.append(model.forward_aud(a).cpu())
    return offset_scores(torch.cat(vfeat), torch.cat(afeat), vshift)


def offset_scores(vf: torch.Tensor, af: torch.Tensor, vshift: int = 15) -> dict[str, float]:
    """Mean embedding distance per audio offset in [-vshift, vshift]: vf, af [T,D] -> LSE-D, LSE-C, offset."""
    win = 2 * vshift + 1
    afp = F.pad(af, (0, 0, vshift, vshift))
    dists = torch.stack([F.pairwise_distance(vf[[i]].repeat(win, 1), afp[i:i + win]) for i in range(len(vf))])
    mdist = dists.mean(0)
    minval, minidx = mdist.min(0)
    return {"lse_d": float(minval), "lse_c": float(mdist.median() - minval), "offset": int(vshift - minidx)}
