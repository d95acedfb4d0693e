"""Our own lip-sync expert (SyncNet on landmarks): an audio window and a mouth-landmark window are embedded by two
1-D conv towers; the cosine of the L2-normalised embeddings says whether they belong together.

Trained contrastively on train splits only (`lightning_modules.lipsync`): for a batch of aligned pairs, the other
pairs of the batch and time-shifted windows of the same clip are the negatives (InfoNCE, both directions).
Used as an optional Audio2Motion loss (`sync_loss`) and as an offline lip-sync metric (`sync_auc`). Every number
it produces carries `trained_on` (set from its checkpoint metadata by `lightning_modules.lipsync.load_lipsync`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from talkfield import landmarks as lmk

MOUTH68 = np.concatenate([lmk.LIPS68, np.arange(5, 12)])
"""The points the expert sees: 20 lip points + 7 jaw points (68 layout) -> 81 numbers per frame."""
MOUTH_DIMS = torch.from_numpy(np.stack([3 * MOUTH68 + i for i in range(3)], 1).reshape(-1))
"""Indices of the expert's 81 numbers inside the 204 of a frame."""


def _tower(cin: int, hidden: int, embed: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv1d(cin, hidden, 3, padding=1), nn.GELU()]
    for _ in range(layers - 1):
        mods += [nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU()]
    mods += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(hidden, embed)]
    return nn.Sequential(*mods)


class LipSyncExpert(nn.Module):
    """feat_dim: audio feature channels; window: frames per window (audio gets 2 x window rows at 50 Hz);
    hidden / embed: tower width and embedding size; mel_norm: the mel preparation it was trained with.
    Inputs: audio [B,2W,C] prepared features (standardised here
    with the buffers feat_mean/feat_std), motion [B,W,204] person-normalised (only MOUTH_DIMS are used)."""

    def __init__(self, feat_dim: int = 80, window: int = 9, hidden: int = 128, embed: int = 64, layers: int = 3,
                 mel_norm: str = "level"):
        super().__init__()
        self.feat_dim, self.window, self.mel_norm = feat_dim, window, mel_norm
        self.register_buffer("feat_mean", torch.zeros(feat_dim))
        self.register_buffer("feat_std", torch.ones(feat_dim))
        self.audio = _tower(feat_dim, hidden, embed, layers + 1)
        self.motion = _tower(len(MOUTH_DIMS) * 2, hidden, embed, layers)
        self.logit_scale = nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))
        self.trained_on: list[dict] | None = None

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp_min(1e-3))

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """[B,2W,C] -> [B,E] unit vectors."""
        x = ((audio - self.feat_mean) / self.feat_std).transpose(1, 2)
        return F.normalize(self.audio(x), dim=-1)

    def embed_motion(self, motion: torch.Tensor) -> torch.Tensor:
        """[B,W,204] -> [B,E] unit vectors (mouth numbers and their frame-to-frame velocity)."""
        m = motion[..., MOUTH_DIMS.to(motion.device)]
        vel = torch.cat([torch.zeros_like(m[:, :1]), m[:, 1:] - m[:, :-1]], 1)
        return F.normalize(self.motion(torch.cat([m, vel], -1).transpose(1, 2)), dim=-1)

    def forward(self, audio: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [B] of aligned (audio[i], motion[i]) pairs."""
        return (self.embed_audio(audio) * self.embed_motion(motion)).sum(-1)


def windows(features: torch.Tensor, motion: torch.Tensor, starts: torch.Tensor, window: int,
            shifts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut windows from sequences. features [B,2T,C], motion [B,T,D], starts [B] audio start frames, shifts [B]
    (motion start = start + shift; None: aligned). Returns audio [B,2W,C], motion [B,W,D]."""
    B = features.shape[0]
    shifts = torch.zeros_like(starts) if shifts is None else shifts
    t = torch.arange(window, device=features.device)
    fi = (2 * starts[:, None] + torch.arange(2 * window, device=features.device)[None])  # [B,2W]
    mi = (starts + shifts)[:, None] + t[None]
    a = features[torch.arange(B)[:, None], fi]
    m = motion[torch.arange(B)[:, None], mi]
    return a, m


def contrastive_loss(expert: LipSyncExpert, features: torch.Tensor, motion: torch.Tensor, *, generator: torch.Generator,
                     min_shift: int = 3, max_shift: int = 12) -> dict[str, torch.Tensor]:
    """InfoNCE over a batch of crops: features [B,2L,C], motion [B,L,D] (L >= window + 2 max_shift).

    Anchors: one audio window per crop; candidates: every crop's aligned motion window plus one motion window of the
    same crop shifted by +-[min_shift, max_shift] frames (hard negatives). Returns loss, accuracy (the aligned
    window scores highest) and the mean cosine of aligned and shifted pairs.
    """
    B, L = motion.shape[:2]
    W = expert.window
    if L < W + 2 * max_shift:
        raise ValueError(f"crops of {L} frames are too short for window {W} and shifts up to {max_shift}")
    starts = torch.randint(max_shift, L - W - max_shift + 1, (B,), generator=generator)
    mag = torch.randint(min_shift, max_shift + 1, (B,), generator=generator)
    sign = torch.where(torch.rand(B, generator=generator) < 0.5, -1, 1)
    a, m_pos = windows(features, motion, starts, W)
    _, m_neg = windows(features, motion, starts, W, sign * mag)
    ea = expert.embed_audio(a)
    em = expert.embed_motion(torch.cat([m_pos, m_neg]))
    sim = ea @ em.T  # [B, 2B]
    scale = expert.logit_scale.exp().clamp(max=100.0)
    target = torch.arange(B, device=sim.device)
    loss_a = F.cross_entropy(scale * sim, target)
    loss_m = F.cross_entropy(scale * sim[:, :B].T, target)
    acc = (sim.argmax(1) == target).float().mean()
    pos = sim[target, target]
    neg = sim[target, target + B]
    return {"loss": 0.5 * (loss_a + loss_m), "acc": acc, "cos_pos": pos.mean(), "cos_neg": neg.mean()}


def sync_loss(expert: LipSyncExpert, features: torch.Tensor, motion: torch.Tensor, *, generator: torch.Generator,
              per_crop: int = 4) -> torch.Tensor:
    """GeneFace++'s sync loss: BCE((cos + 1) / 2, 1) on random aligned windows of predicted motion [B,T,D] vs the
    audio features [B,2T,C] (prepared). The expert should be frozen (requires_grad False, eval mode)."""
    B, T = motion.shape[:2]
    W = expert.window
    if T < W:
        return motion.sum() * 0
    starts = torch.randint(0, T - W + 1, (B * per_crop,), generator=generator)
    idx = torch.arange(B).repeat_interleave(per_crop)
    a, m = windows(features[idx], motion[idx], starts, W)
    p = ((expert(a, m) + 1) / 2).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(p, torch.ones_like(p))


@torch.no_grad()
def sync_scores(expert: LipSyncExpert, features: torch.Tensor, motion: torch.Tensor, shifts=(-10, -6, -4, 4, 6, 10),
                stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Scores of aligned and time-shifted pairs along one sequence: features [2T,C] (prepared), motion [T,D].

    Positives: every aligned window start t (step `stride`); negatives: for each shift s, the audio window at t
    against the motion window at t + s, wherever that fits. Returns (pos [N], neg [M])."""
    W = expert.window
    T = motion.shape[0]
    if T < W:
        return np.zeros(0), np.zeros(0)
    starts = torch.arange(0, T - W + 1, stride)
    f, m = features[None].expand(len(starts), *features.shape), motion[None].expand(len(starts), *motion.shape)
    a, mp = windows(f, m, starts, W)
    ea = expert.embed_audio(a)
    pos = (ea * expert.embed_motion(mp)).sum(-1)
    negs = []
    for s in shifts:
        ok = (starts + s >= 0) & (starts + s <= T - W)
        if ok.any():
            _, mn = windows(f[ok], m[ok], starts[ok], W, torch.full_like(starts[ok], s))
            negs.append((ea[ok] * expert.embed_motion(mn)).sum(-1))
    return pos.numpy(), (torch.cat(negs).numpy() if negs else np.zeros(0))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):  # average ranks over ties
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def sync_auc(expert: LipSyncExpert, sequences: list[tuple[torch.Tensor, torch.Tensor]], shifts=(-10, -6, -4, 4, 6, 10),
             data: str = "") -> dict:
    """Lip-sync AUC (aligned vs time-shifted pairs) over sequences [(features [2T,C] prepared, motion [T,204])].

    Returns {'auc', 'n_pos', 'n_neg', 'shifts', 'scored_on': data, 'expert_trained_on': expert.trained_on};
    refuses an expert that does not say what it was trained on."""
    if not expert.trained_on:
        raise ValueError("this lip-sync expert does not name the data it was trained on; load it with "
                         "lightning_modules.lipsync.load_lipsync (its checkpoint metadata) or set .trained_on")
    P, N = [], []
    for f, m in sequences:
        p, n = sync_scores(expert, f, m, shifts)
        P.append(p)
        N.append(n)
    P, N = np.concatenate(P) if P else np.zeros(0), np.concatenate(N) if N else np.zeros(0)
    return {"auc": auc(P, N), "n_pos": int(len(P)), "n_neg": int(len(N)), "shifts": list(shifts),
            "scored_on": data, "expert_trained_on": expert.trained_on}
