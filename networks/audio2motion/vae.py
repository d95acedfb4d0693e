"""The pitch-aware variational Audio2Motion model (after GeneFace++ `PitchContourVAEModel`, section 2.1 of the
reference), predicting TalkField's motion representation instead of BFM coefficients.

    features [B,2T,C] (50 Hz) --+
    f0 [B,2T] Hz -> coarse -----+-- CondEncoder --> g [B,H,T] (25 Hz) --- Conv(k2s, stride s) --> g_lo [B,H,T/s]
    blink [B,T] 0/1 ------------+                                                                    |
    mouth_amp [B] -------------+                                                                      |
    x [B,204,T] (person-normalised offsets) -> Encoder(stride s, WaveNet | g_lo) -> (mu, logs) at T/s |
    z -> Decoder(ConvTranspose stride s, WaveNet | g) -> x_hat [B,204,T]                              |
    prior: z = flow^-1(eps * temperature | g_lo), eps ~ N(0, I)  (mean-only couplings + flips) <------+

Motion in and out is "person-normalised": (offsets - mean) / scale with the person's statistics
(`normalize_motion`), so one network serves any person whose [4,204] statistics are known.
Convolutions are non-causal with a bounded receptive field (`receptive_field`), so chunked inference with that
much context on each side gives the same result as a whole-sequence pass (`predict_motion` in this package).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from networks.audio2motion.features import PITCH_BINS, coarse_pitch

MOTION_DIM = 204
SCALE_FLOOR = 0.2
"""A coordinate's normalising scale is at least this fraction of the person's median std (no noise blow-up)."""


def person_norm(stats: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [204], scale [204]) from the person's motion statistics [4,204] (rows mean, std, q03, q97)."""
    s = torch.as_tensor(np.array(stats, np.float32) if not isinstance(stats, torch.Tensor) else stats).float()
    std = s[1]
    scale = torch.maximum(std, SCALE_FLOOR * std.median().clamp_min(1e-6))
    return s[0], scale


def normalize_motion(offsets: torch.Tensor, stats) -> torch.Tensor:
    """Offsets [...,68,3] or [...,204] head units -> person-normalised [...,204]."""
    mean, scale = person_norm(stats)
    x = offsets.reshape(*offsets.shape[:-2], MOTION_DIM) if offsets.shape[-2:] == (68, 3) else offsets
    return (x - mean.to(x)) / scale.to(x)


def denormalize_motion(z: torch.Tensor, stats) -> torch.Tensor:
    """Person-normalised [...,204] -> offsets [...,68,3] head units."""
    mean, scale = person_norm(stats)
    return (z * scale.to(z) + mean.to(z)).reshape(*z.shape[:-1], 68, 3)


class ChannelNorm(nn.Module):
    """LayerNorm over channels of [B,C,T] (per time step: chunk-independent, unlike BatchNorm/GroupNorm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class WaveNet(nn.Module):
    """Non-causal gated WaveNet (VITS `WN`): x [B,H,T], g [B,G,T] -> [B,H,T]. Weight-normed convolutions,
    tanh * sigmoid gates, the condition injected through a 1x1 convolution, skip sum as output."""

    def __init__(self, hidden: int, kernel: int, layers: int, cond: int, dilation_rate: int = 1, dropout: float = 0.0):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.cond = weight_norm(nn.Conv1d(cond, 2 * hidden * layers, 1)) if cond > 0 else None
        self.ins = nn.ModuleList()
        self.res_skip = nn.ModuleList()
        self.drop = nn.Dropout(dropout)
        self.dilations = [dilation_rate ** i for i in range(layers)]
        self.kernel = kernel
        for i, d in enumerate(self.dilations):
            pad = d * (kernel - 1) // 2
            self.ins.append(weight_norm(nn.Conv1d(hidden, 2 * hidden, kernel, dilation=d, padding=pad)))
            out = 2 * hidden if i < layers - 1 else hidden
            self.res_skip.append(weight_norm(nn.Conv1d(hidden, out, 1)))

    def receptive_field(self) -> int:
        """Frames of context on each side."""
        return sum(d * (self.kernel - 1) // 2 for d in self.dilations)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.zeros_like(x)
        gs = self.cond(g) if (g is not None and self.cond is not None) else None
        h = self.hidden
        for i in range(self.layers):
            a = self.ins[i](x)
            if gs is not None:
                a = a + gs[:, 2 * h * i: 2 * h * (i + 1)]
            acts = self.drop(torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:]))
            rs = self.res_skip[i](acts)
            if i < self.layers - 1:
                x = x + rs[:, :h]
                out = out + rs[:, h:]
            else:
                out = out + rs
        return out


class CondEncoder(nn.Module):
    """Audio + coarse pitch + blink flag + mouth amplitude -> condition g [B,H,T] at 25 Hz.

    features [B,2T,C] (prepared by `features.prepare_features`, standardised here with the training statistics in
    the buffers feat_mean/feat_std), f0 [B,2T] Hz, blink [B,T] in {0,1}, mouth_amp [B] (1 = the person's usual
    amplitude; it enters as (mouth_amp - 1) x a learned vector).
    """

    def __init__(self, feat_dim: int, hidden: int, layers: int = 3, kernel: int = 5, dropout: float = 0.1):
        super().__init__()
        self.register_buffer("feat_mean", torch.zeros(feat_dim))
        self.register_buffer("feat_std", torch.ones(feat_dim))
        self.audio_in = nn.Sequential(
            nn.Conv1d(2 * feat_dim, hidden, 3, padding=1, bias=False), ChannelNorm(hidden), nn.GELU(),
            nn.Dropout(dropout), nn.Conv1d(hidden, hidden, 3, padding=1))
        self.pitch_emb = nn.Embedding(PITCH_BINS, hidden)
        self.pitch_in = nn.Sequential(
            nn.Conv1d(2 * hidden, hidden, 3, padding=1, bias=False), ChannelNorm(hidden), nn.GELU(),
            nn.Conv1d(hidden, hidden, 3, padding=1))
        self.blink_emb = nn.Embedding(2, hidden)
        self.mouth_amp_vec = nn.Parameter(torch.randn(hidden) * 0.1)
        self.fuse = nn.Conv1d(3 * hidden, hidden, 1)
        self.context = nn.ModuleList()
        self.context_pad = []
        for i in range(layers):
            d = 2 ** i
            self.context.append(nn.Sequential(
                ChannelNorm(hidden), nn.Conv1d(hidden, hidden, kernel, dilation=d, padding=d * (kernel - 1) // 2),
                nn.GELU(), nn.Dropout(dropout), nn.Conv1d(hidden, hidden, 1)))
            self.context_pad.append(d * (kernel - 1) // 2)

    def receptive_field(self) -> int:
        return 2 + 2 + sum(self.context_pad)

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel statistics [C] of the prepared training features."""
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std.clamp_min(1e-3))

    def forward(self, features: torch.Tensor, f0: torch.Tensor, blink: torch.Tensor | None,
                mouth_amp: torch.Tensor | None, f0_ref: torch.Tensor | float | None = None) -> torch.Tensor:
        B, A, C = features.shape
        if A % 2:
            raise ValueError(f"features must have 2T rows (50 Hz, two per 25 fps frame); got {A}")
        T = A // 2
        x = (features - self.feat_mean) / self.feat_std
        x = x.reshape(B, T, 2 * C).transpose(1, 2)
        a = self.audio_in(x)
        p = self.pitch_emb(coarse_pitch(f0, f0_ref)).reshape(B, T, -1).transpose(1, 2)
        p = self.pitch_in(p)
        if blink is None:
            blink = torch.zeros(B, T, dtype=torch.long, device=features.device)
        b = self.blink_emb(blink.long().clamp(0, 1)).transpose(1, 2)
        g = self.fuse(torch.cat([a, p, b], 1))
        if mouth_amp is not None:
            amp = torch.as_tensor(mouth_amp, dtype=g.dtype, device=g.device).reshape(-1, 1, 1)
            g = g + (amp - 1.0) * self.mouth_amp_vec[None, :, None]
        for layer in self.context:
            g = g + layer(g)
        return g


class CouplingFlow(nn.Module):
    """VITS mean-only residual coupling flow with channel flips (volume preserving: no log-determinant).
    forward: z -> eps (data to noise); reverse: eps -> z."""

    def __init__(self, channels: int, hidden: int, kernel: int, wn_layers: int, n_flows: int, cond: int):
        super().__init__()
        self.half = channels // 2
        self.pre = nn.ModuleList()
        self.wn = nn.ModuleList()
        self.post = nn.ModuleList()
        for _ in range(n_flows):
            self.pre.append(nn.Conv1d(self.half, hidden, 1))
            self.wn.append(WaveNet(hidden, kernel, wn_layers, cond))
            post = nn.Conv1d(hidden, channels - self.half, 1)
            nn.init.zeros_(post.weight)
            nn.init.zeros_(post.bias)
            self.post.append(post)

    def receptive_field(self) -> int:
        return sum(w.receptive_field() for w in self.wn)

    def _shift(self, i: int, x0: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.post[i](self.wn[i](self.pre[i](x0), g))

    def forward(self, z: torch.Tensor, g: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        n = len(self.pre)
        if not reverse:
            for i in range(n):
                x0, x1 = z[:, :self.half], z[:, self.half:]
                z = torch.cat([x0, x1 + self._shift(i, x0, g)], 1).flip(1)
        else:
            for i in reversed(range(n)):
                z = z.flip(1)
                x0, x1 = z[:, :self.half], z[:, self.half:]
                z = torch.cat([x0, x1 - self._shift(i, x0, g)], 1)
        return z


class Audio2MotionVAE(nn.Module):
    """Pitch-aware VAE with a flow prior: audio features + pitch + blink -> person-normalised motion [B,T,204].

    feat_dim: channels of the audio feature kind (80 mel, 384 whisper, 1024 hubert); hidden: width of the
    condition and WaveNets; latent: channels of z; stride: temporal stride of the latent (T must be a multiple);
    enc_layers / dec_layers: WaveNet depths; flow_*: the prior's couplings; mel_norm: how mel features are
    made comparable across recordings ('band' or 'level', `features.prepare_features`; part of the model).
    """

    def __init__(self, feat_dim: int = 80, hidden: int = 192, latent: int = 16, stride: int = 4, kernel: int = 5,
                 cond_layers: int = 3, enc_layers: int = 8, dec_layers: int = 4, dec_dilation: int = 1,
                 flow_hidden: int = 64, flow_layers: int = 4, n_flows: int = 4, dropout: float = 0.1,
                 motion_dim: int = MOTION_DIM, mel_norm: str = "level"):
        super().__init__()
        self.feat_dim, self.hidden, self.latent, self.stride = feat_dim, hidden, latent, stride
        self.motion_dim = motion_dim
        self.mel_norm = mel_norm
        s = stride
        self.cond = CondEncoder(feat_dim, hidden, layers=cond_layers, kernel=kernel, dropout=dropout)
        self.g_down = nn.Conv1d(hidden, hidden, 2 * s, stride=s, padding=s // 2)
        self.enc_in = nn.Conv1d(motion_dim, hidden, 2 * s, stride=s, padding=s // 2)
        self.enc = WaveNet(hidden, kernel, enc_layers, hidden, dropout=dropout)
        self.enc_out = nn.Conv1d(hidden, 2 * latent, 1)
        self.dec_in = nn.ConvTranspose1d(latent, hidden, s, stride=s)
        self.dec = WaveNet(hidden, kernel, dec_layers, hidden, dilation_rate=dec_dilation, dropout=dropout)
        self.dec_out = nn.Conv1d(hidden, motion_dim, 1)
        self.prior = CouplingFlow(latent, flow_hidden, 3, flow_layers, n_flows, hidden)

    # ---------------------------------------------------------------------------------------------------------
    def receptive_field(self) -> int:
        """Context (25 fps frames, each side) that determines one output frame; chunked inference needs this much."""
        lo = self.prior.receptive_field() + 2  # latent-rate context of the prior (+ g_down)
        return self.cond.receptive_field() + self.stride * (lo + 1) + self.dec.receptive_field()

    def condition(self, features, f0, blink=None, mouth_amp=None, f0_ref=None) -> torch.Tensor:
        """g [B,H,T] from features [B,2T,C], f0 [B,2T], blink [B,T], mouth_amp [B] or float."""
        g = self.cond(features, f0, blink, mouth_amp, f0_ref)
        if g.shape[-1] % self.stride:
            raise ValueError(f"frame count {g.shape[-1]} is not a multiple of the temporal stride {self.stride}; "
                             "pad it (predict_motion does)")
        return g

    def decode(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """z [B,latent,T/s], g [B,H,T] -> motion [B,T,204]."""
        h = self.dec_in(z)
        return self.dec_out(self.dec(h, g)).transpose(1, 2)

    def sample_prior(self, g: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None):
        """z [B,latent,T/s] from the flow prior at `temperature` (0: eps = 0)."""
        g_lo = self.g_down(g)
        eps = torch.zeros(g.shape[0], self.latent, g_lo.shape[-1], device=g.device, dtype=g.dtype)
        if temperature > 0:
            eps = torch.randn(eps.shape, generator=generator, dtype=g.dtype).to(g.device) * temperature
        return self.prior(eps, g_lo, reverse=True)

    def forward(self, x: torch.Tensor, features: torch.Tensor, f0: torch.Tensor, blink: torch.Tensor | None = None,
                mouth_amp: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training pass. x: person-normalised motion [B,T,204] (T a multiple of stride).

        Returns x_rec (through the posterior) and x_prior (through the prior at temperature 0), both [B,T,204],
        and kl [] (Monte-Carlo KL(q(z|x,g) || p(z|g)) per latent element).
        """
        g = self.condition(features, f0, blink, mouth_amp)
        g_lo = self.g_down(g)
        h = self.enc(self.enc_in(x.transpose(1, 2)), g_lo)
        mu, logs = self.enc_out(h).chunk(2, 1)
        logs = logs.clamp(-7.0, 5.0)
        z = mu + torch.randn_like(mu) * logs.exp()
        eps = self.prior(z, g_lo)
        logq = -0.5 * ((z - mu) * torch.exp(-logs)) ** 2 - logs
        logp = -0.5 * eps ** 2
        kl = (logq - logp).mean()
        eps0 = torch.zeros_like(mu)
        z0 = self.prior(eps0, g_lo, reverse=True)
        return {"x_rec": self.decode(z, g), "x_prior": self.decode(z0, g), "kl": kl, "mu": mu, "logs": logs}

    @torch.no_grad()
    def infer(self, features: torch.Tensor, f0: torch.Tensor, blink: torch.Tensor | None = None,
              mouth_amp: torch.Tensor | float | None = None, temperature: float = 0.0,
              generator: torch.Generator | None = None, f0_ref=None) -> torch.Tensor:
        """Sample motion [B,T,204] (person-normalised) for features [B,2T,C], T a multiple of stride."""
        g = self.condition(features, f0, blink, mouth_amp, f0_ref)
        return self.decode(self.sample_prior(g, temperature, generator), g)


def kl_weight(step: int, max_weight: float, period: int, ramp: int) -> float:
    """Cyclic KL annealing (GeneFace++): in each `period` steps, a linear ramp over `ramp` steps to max_weight,
    then hold. period <= 0: constant max_weight."""
    if period <= 0:
        return max_weight
    return max_weight * min(1.0, (step % period) / max(ramp, 1))


def num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


