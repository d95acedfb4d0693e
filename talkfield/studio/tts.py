"""Text-to-speech backends for the Studio. Each turns (text, language) into an audio file in a given folder.

- `EspeakNG`  offline, no download: the `espeak-ng` program (voices en-us and cmn). Subprocess boundary.
- `Piper`     local neural voices: `python -m piper` (piper-tts) with a user-given voice .onnx per language.
              Subprocess boundary.
- `EdgeTTS`   Microsoft's online voices through the `edge-tts` client (websocket). Needs network.

`make_tts(settings)` picks one from configs/studio.yaml (`tts.backend`). Every failure raises TTSError with a
message for the page; a set `cancel` event stops synthesis and raises TTSCancelled. Output files are written
under a temporary name and renamed, so a failed synthesis leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from talkfield.studio.settings import TTSSettings


class TTSError(RuntimeError):
    """Speech could not be synthesized; str(e) says why and what to do."""


class TTSCancelled(RuntimeError):
    """The request was cancelled while speech was being synthesized."""


class TTSBackend(Protocol):
    name: str

    def synthesize(self, text: str, language: str, out_dir: Path,
                   cancel: threading.Event | None = None) -> Path: ...


def _voice(voices: dict[str, Any], language: str, backend: str, key: str) -> str:
    v = (voices or {}).get(language)
    if not v:
        raise TTSError(f"{backend} has no voice for language {language!r}: set {key}.{language}=<voice> "
                       "in configs/studio.yaml (or on the app.py command line)")
    return str(v)


def _run_process(cmd: list[str], *, stdin: bytes | None, timeout: float, cancel: threading.Event | None,
                 what: str) -> subprocess.CompletedProcess:
    """Run a command to completion, killing it on timeout or when `cancel` is set."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as e:
        raise TTSError(f"{what}: program {cmd[0]!r} not found") from e
    # feed stdin and collect output on a helper thread so this one can watch the clock and the cancel flag
    result: dict[str, Any] = {}

    def communicate():
        result["out"], result["err"] = proc.communicate(stdin)

    t = threading.Thread(target=communicate, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while t.is_alive():
        t.join(0.05)
        if cancel is not None and cancel.is_set():
            proc.kill()
            t.join()
            raise TTSCancelled(f"{what}: cancelled")
        if time.monotonic() > deadline:
            proc.kill()
            t.join()
            raise TTSError(f"{what}: gave no result within {timeout:g} s (killed)")
    return subprocess.CompletedProcess(cmd, proc.returncode, result.get("out", b""), result.get("err", b""))


def _finish(tmp: Path, out: Path, what: str) -> Path:
    """Check the temporary output holds audio and move it into place."""
    if not tmp.is_file() or tmp.stat().st_size <= 44:  # a bare WAV header is 44 bytes
        tmp.unlink(missing_ok=True)
        raise TTSError(f"{what}: produced no audio for this text")
    os.replace(tmp, out)
    return out


def _tail(b: bytes, n: int = 400) -> str:
    return b.decode("utf-8", "replace").strip()[-n:]


class EspeakNG:
    """espeak-ng (offline, formant synthesis). Text goes in on stdin (never on the command line)."""

    name = "espeak"

    def __init__(self, binary: str = "espeak-ng", voices: dict[str, str] | None = None, speed: int = 165,
                 timeout: float = 120.0):
        self.binary = binary
        self.voices = voices or {"en": "en-us", "zh": "cmn"}
        self.speed = int(speed)
        self.timeout = timeout

    def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise TTSError(f"espeak-ng is not installed (no {self.binary!r} on PATH): install it with "
                           "`apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS), "
                           "or choose another backend: tts.backend=piper|edge, or upload an audio file instead")

    def synthesize(self, text: str, language: str, out_dir: Path, cancel: threading.Event | None = None) -> Path:
        self.check()
        voice = _voice(self.voices, language, "espeak-ng", "tts.espeak.voices")
        out = Path(out_dir) / "speech.wav"
        tmp = out.with_name(".speech.tmp.wav")
        cmd = [self.binary, "-v", voice, "-s", str(self.speed), "-w", str(tmp), "--stdin"]
        r = _run_process(cmd, stdin=text.encode("utf-8"), timeout=self.timeout, cancel=cancel, what="espeak-ng")
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise TTSError(f"espeak-ng failed (exit {r.returncode}, voice {voice}): {_tail(r.stderr)}")
        return _finish(tmp, out, f"espeak-ng (voice {voice})")


class Piper:
    """piper-tts: `python -m piper -m <voice.onnx> -f <out.wav> -i <text file>` (one voice file per language;
    the voice's .onnx.json config must lie beside it). `command` replaces `python -m piper` (e.g. ["piper"])."""

    name = "piper"

    def __init__(self, voices: dict[str, str | None] | None = None, command: list[str] | str | None = None,
                 length_scale: float | None = None, timeout: float = 120.0):
        self.voices = voices or {}
        if isinstance(command, str):
            command = command.split()
        self.command = list(command) if command else [sys.executable, "-m", "piper"]
        self.default_command = command is None
        self.length_scale = length_scale
        self.timeout = timeout

    def check(self, language: str) -> Path:
        if self.default_command and importlib.util.find_spec("piper") is None:
            raise TTSError("piper-tts is not installed: `pip install 'talkfield[piper]'` (piper-tts 1.8.0), "
                           "or choose tts.backend=espeak|edge")
        voice = Path(_voice(self.voices, language, "piper", "tts.piper.voices")).expanduser()
        if not voice.is_file():
            raise TTSError(f"piper voice file {voice} does not exist; download one (docs/studio.md: "
                           "`python -m piper.download_voices en_US-lessac-medium`) and set "
                           f"tts.piper.voices.{language}=<path to .onnx>")
        if not Path(str(voice) + ".json").is_file():
            raise TTSError(f"piper voice {voice.name} has no config {voice.name}.json beside it; "
                           "download both files of the voice")
        return voice

    def synthesize(self, text: str, language: str, out_dir: Path, cancel: threading.Event | None = None) -> Path:
        voice = self.check(language)
        out_dir = Path(out_dir)
        out = out_dir / "speech.wav"
        tmp = out.with_name(".speech.tmp.wav")
        text_file = out_dir / "speech.txt"
        text_file.write_text(text.replace("\r", "") + "\n", encoding="utf-8")
        cmd = [*self.command, "-m", str(voice), "-f", str(tmp), "-i", str(text_file)]
        if self.length_scale:
            cmd += ["--length-scale", str(self.length_scale)]
        r = _run_process(cmd, stdin=None, timeout=self.timeout, cancel=cancel, what="piper")
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise TTSError(f"piper failed (exit {r.returncode}, voice {voice.name}): {_tail(r.stderr)}")
        return _finish(tmp, out, f"piper (voice {voice.name})")


class EdgeTTS:
    """edge-tts: Microsoft Edge's online voices over a websocket. Writes speech.mp3. Needs network access.

    `communicate` is the client class (edge_tts.Communicate by default; injected in tests)."""

    name = "edge"

    def __init__(self, voices: dict[str, str] | None = None, rate: str = "+0%", proxy: str | None = None,
                 timeout: float = 120.0, communicate: Callable[..., Any] | None = None):
        self.voices = voices or {"en": "en-US-AriaNeural", "zh": "zh-CN-XiaoxiaoNeural"}
        self.rate = rate
        self.proxy = proxy
        self.timeout = timeout
        self._communicate = communicate

    def _client(self):
        if self._communicate is not None:
            return self._communicate
        try:
            import edge_tts
        except ImportError as e:
            raise TTSError("edge-tts is not installed: `pip install edge-tts==7.3.1`, "
                           "or choose tts.backend=espeak") from e
        return edge_tts.Communicate

    async def _stream(self, client, text: str, voice: str, tmp: Path, cancel: threading.Event | None) -> int:
        comm = client(text, voice, rate=self.rate, proxy=self.proxy)
        n = 0
        with open(tmp, "wb") as f:
            async for chunk in comm.stream():
                if cancel is not None and cancel.is_set():
                    raise TTSCancelled("edge-tts: cancelled")
                if chunk.get("type") == "audio" and chunk.get("data"):
                    f.write(chunk["data"])
                    n += len(chunk["data"])
        return n

    def synthesize(self, text: str, language: str, out_dir: Path, cancel: threading.Event | None = None) -> Path:
        client = self._client()
        voice = _voice(self.voices, language, "edge-tts", "tts.edge.voices")
        out = Path(out_dir) / "speech.mp3"
        tmp = out.with_name(".speech.tmp.mp3")
        try:
            asyncio.run(asyncio.wait_for(self._stream(client, text, voice, tmp, cancel), self.timeout))
        except TTSCancelled:
            tmp.unlink(missing_ok=True)
            raise
        except asyncio.TimeoutError as e:
            tmp.unlink(missing_ok=True)
            raise TTSError(f"edge-tts: no complete answer from the speech service within {self.timeout:g} s") from e
        except Exception as e:
            tmp.unlink(missing_ok=True)
            kind = type(e).__name__
            if kind == "NoAudioReceived":
                raise TTSError(f"edge-tts: the service returned no audio (voice {voice}); "
                               "check the voice name matches the text's language") from e
            if kind in ("UnknownResponse", "UnexpectedResponse", "SkewAdjustmentError"):
                raise TTSError(f"edge-tts: the speech service answered unexpectedly ({kind}: {e}); "
                               "update edge-tts or use tts.backend=espeak") from e
            # aiohttp.ClientError, WebSocketError, OSError (DNS, refused): no network
            raise TTSError(f"edge-tts could not reach Microsoft's speech service ({kind}: {e}); it needs network "
                           "access. Offline, use tts.backend=espeak (or piper with a local voice)") from e
        return _finish(tmp, out, f"edge-tts (voice {voice})")


def make_tts(tts: TTSSettings) -> TTSBackend:
    """The backend named by tts.backend, configured from its section."""
    if tts.backend == "espeak":
        e = tts.espeak
        return EspeakNG(binary=e.get("binary", "espeak-ng"), voices=e.get("voices"), speed=e.get("speed", 165),
                        timeout=tts.timeout_s)
    if tts.backend == "piper":
        p = tts.piper
        return Piper(voices=p.get("voices"), command=p.get("command"), length_scale=p.get("length_scale"),
                     timeout=tts.timeout_s)
    if tts.backend == "edge":
        e = tts.edge
        return EdgeTTS(voices=e.get("voices"), rate=e.get("rate", "+0%"), proxy=e.get("proxy"),
                       timeout=tts.timeout_s)
    raise ValueError(f"tts.backend={tts.backend!r}: one of espeak, piper, edge")
