"""The Studio's text-to-speech adapters at their boundaries: espeak-ng and piper as processes (a stand-in program
records its command line and input; the real espeak-ng runs when installed), edge-tts through its client."""

from __future__ import annotations

import json
import shutil
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from talkfield.studio.settings import TTSSettings
from talkfield.studio.tts import EdgeTTS, EspeakNG, Piper, TTSCancelled, TTSError, make_tts


def fake_program(path: Path, body: str) -> Path:
    """An executable Python script. It sees ARGS (argv[1:]), STDIN (bytes) and LOG (where to record them)."""
    log = path.with_suffix(".log.json")
    path.write_text(f"#!{sys.executable}\n"
                    "import json, sys, time, wave\n"
                    "ARGS = sys.argv[1:]\n"
                    "STDIN = sys.stdin.buffer.read() if not sys.stdin.isatty() else b''\n"
                    f"LOG = {str(log)!r}\n"
                    "json.dump({'args': ARGS, 'stdin': STDIN.decode('utf-8')}, open(LOG, 'w'))\n"
                    "def write_wav(p, n=8000):\n"
                    "    with wave.open(p, 'wb') as w:\n"
                    "        w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)\n"
                    "        w.writeframes(b'\\x10\\x00' * n)\n"
                    + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def logged(prog: Path) -> dict:
    return json.loads(prog.with_suffix(".log.json").read_text())


WRITES_W = "write_wav(ARGS[ARGS.index('-w') + 1])"
WRITES_F = "write_wav(ARGS[ARGS.index('-f') + 1])"


# ---------------------------------------------------------------------------------------------------------------
# espeak-ng (process boundary)
# ---------------------------------------------------------------------------------------------------------------
def test_espeak_command_line_voice_and_stdin(tmp_path):
    prog = fake_program(tmp_path / "espeak-ng", WRITES_W)
    out = EspeakNG(binary=str(prog), speed=150).synthesize("-v 你好 <b>", "zh", tmp_path)
    rec = logged(prog)
    assert rec["stdin"] == "-v 你好 <b>"  # text goes on stdin, never as arguments (no option injection)
    args = rec["args"]
    assert args[args.index("-v") + 1] == "cmn" and args[args.index("-s") + 1] == "150"
    assert "--stdin" in args and "-m" not in args  # no SSML interpretation
    assert out == tmp_path / "speech.wav" and out.stat().st_size > 44
    EspeakNG(binary=str(prog)).synthesize("hello", "en", tmp_path)
    assert logged(prog)["args"][1] == "en-us"


def test_espeak_failure_reports_stderr_and_leaves_nothing(tmp_path):
    prog = fake_program(tmp_path / "espeak-ng", "sys.stderr.write('unknown voice cmn'); sys.exit(1)")
    with pytest.raises(TTSError, match=r"espeak-ng failed \(exit 1, voice cmn\): unknown voice cmn"):
        EspeakNG(binary=str(prog)).synthesize("你好", "zh", tmp_path)
    assert not list(tmp_path.glob("*speech*"))


def test_espeak_empty_output_is_an_error(tmp_path):
    prog = fake_program(tmp_path / "espeak-ng", "open(ARGS[ARGS.index('-w') + 1], 'wb').write(b'RIFF')")
    with pytest.raises(TTSError, match="produced no audio"):
        EspeakNG(binary=str(prog)).synthesize("hi", "en", tmp_path)
    assert not list(tmp_path.glob("*speech*"))


def test_espeak_missing_says_how_to_install(tmp_path):
    with pytest.raises(TTSError, match=r"espeak-ng is not installed.*apt-get install espeak-ng.*tts.backend="):
        EspeakNG(binary=str(tmp_path / "no-such-espeak")).synthesize("hi", "en", tmp_path)


def test_espeak_timeout_and_cancel_kill_the_process(tmp_path):
    prog = fake_program(tmp_path / "espeak-ng", "time.sleep(30)")
    t0 = time.monotonic()
    with pytest.raises(TTSError, match="within 0.5 s"):
        EspeakNG(binary=str(prog), timeout=0.5).synthesize("hi", "en", tmp_path)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(TTSCancelled):
        EspeakNG(binary=str(prog)).synthesize("hi", "en", tmp_path, cancel=cancel)
    assert time.monotonic() - t0 < 10


def test_unknown_language_voice_is_a_config_error(tmp_path):
    prog = fake_program(tmp_path / "espeak-ng", WRITES_W)
    with pytest.raises(TTSError, match=r"no voice for language 'zh': set tts.espeak.voices.zh"):
        EspeakNG(binary=str(prog), voices={"en": "en-us"}).synthesize("你好", "zh", tmp_path)


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")


@needs_espeak
@pytest.mark.parametrize("text,language", [("Hello, this is the TalkField studio.", "en"),
                                           ("你好，这是一个会说话的头像。", "zh")])
def test_real_espeak_speaks_english_and_mandarin(tmp_path, text, language):
    from talkfield.audio import load_audio
    from talkfield.studio.validation import detect_language

    assert detect_language(text) == language
    out = EspeakNG().synthesize(text, language, tmp_path)
    wav = load_audio(out)  # decodes and is not silent
    assert len(wav) / 16000 > 1.0


# ---------------------------------------------------------------------------------------------------------------
# piper (process boundary)
# ---------------------------------------------------------------------------------------------------------------
def voice(tmp_path: Path, name="en_US-test-low.onnx", config=True) -> Path:
    v = tmp_path / "voices" / name
    v.parent.mkdir(parents=True, exist_ok=True)
    v.write_bytes(b"onnx")
    if config:
        Path(str(v) + ".json").write_text("{}")
    return v


def test_piper_command_line_and_text_file(tmp_path):
    prog = fake_program(tmp_path / "piper", WRITES_F)
    v = voice(tmp_path)
    p = Piper(voices={"en": str(v)}, command=[str(prog)], length_scale=1.2)
    out = p.synthesize("Hello there.\nSecond line.", "en", tmp_path)
    args = logged(prog)["args"]
    assert args[args.index("-m") + 1] == str(v)
    assert args[args.index("--length-scale") + 1] == "1.2"
    text_file = Path(args[args.index("-i") + 1])
    assert text_file.read_text(encoding="utf-8") == "Hello there.\nSecond line.\n"
    assert out == tmp_path / "speech.wav" and out.stat().st_size > 44


def test_piper_default_command_is_this_python(tmp_path):
    p = Piper(voices={"en": "x.onnx"})
    assert p.command == [sys.executable, "-m", "piper"]
    assert Piper(command="piper --cuda").command == ["piper", "--cuda"]


def test_piper_voice_problems(tmp_path):
    prog = fake_program(tmp_path / "piper", WRITES_F)
    with pytest.raises(TTSError, match=r"no voice for language 'zh': set tts.piper.voices.zh"):
        Piper(voices={"en": "x.onnx"}, command=[str(prog)]).synthesize("你好", "zh", tmp_path)
    with pytest.raises(TTSError, match="does not exist.*download_voices"):
        Piper(voices={"en": str(tmp_path / "gone.onnx")}, command=[str(prog)]).synthesize("hi", "en", tmp_path)
    v = voice(tmp_path, "zh_CN-test.onnx", config=False)
    with pytest.raises(TTSError, match=r"no config zh_CN-test.onnx.json"):
        Piper(voices={"zh": str(v)}, command=[str(prog)]).synthesize("你好", "zh", tmp_path)


def test_piper_not_installed_says_how(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "piper" else real(name, *a))
    with pytest.raises(TTSError, match=r"piper-tts is not installed: `pip install 'talkfield\[piper\]'`"):
        Piper(voices={"en": str(voice(tmp_path))}).synthesize("hi", "en", tmp_path)


def test_piper_failure_reports_stderr(tmp_path):
    prog = fake_program(tmp_path / "piper", "sys.stderr.write('onnxruntime: bad model'); sys.exit(2)")
    with pytest.raises(TTSError, match=r"piper failed \(exit 2.*onnxruntime: bad model"):
        Piper(voices={"en": str(voice(tmp_path))}, command=[str(prog)]).synthesize("hi", "en", tmp_path)
    assert not (tmp_path / "speech.wav").exists()


# ---------------------------------------------------------------------------------------------------------------
# edge-tts (client boundary)
# ---------------------------------------------------------------------------------------------------------------
class FakeCommunicate:
    """Stands in for edge_tts.Communicate: records its arguments; stream() yields what `script` says."""

    made: list["FakeCommunicate"] = []
    script: list = []

    def __init__(self, text, voice, *, rate="+0%", proxy=None, **kw):
        self.text, self.voice, self.rate, self.proxy = text, voice, rate, proxy
        FakeCommunicate.made.append(self)

    async def stream(self):
        import asyncio

        for item in FakeCommunicate.script:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            yield item


@pytest.fixture
def edge():
    FakeCommunicate.made = []
    FakeCommunicate.script = []
    return FakeCommunicate


def test_edge_streams_audio_chunks_to_an_mp3(tmp_path, edge):
    edge.script = [{"type": "SentenceBoundary", "offset": 0}, {"type": "audio", "data": b"ID3" + b"a" * 100},
                   {"type": "audio", "data": b"b" * 50}]
    out = EdgeTTS(communicate=edge, rate="+10%").synthesize("你好", "zh", tmp_path)
    (c,) = edge.made
    assert (c.text, c.voice, c.rate) == ("你好", "zh-CN-XiaoxiaoNeural", "+10%")
    assert out == tmp_path / "speech.mp3" and out.read_bytes() == b"ID3" + b"a" * 100 + b"b" * 50
    EdgeTTS(communicate=edge).synthesize("hello", "en", tmp_path)
    assert edge.made[-1].voice == "en-US-AriaNeural"


def test_edge_without_network_says_so(tmp_path, edge):
    import aiohttp

    edge.script = [aiohttp.ClientConnectionError("Cannot connect to host speech.platform.bing.com:443")]
    with pytest.raises(TTSError, match=r"could not reach Microsoft's speech service.*needs network.*espeak"):
        EdgeTTS(communicate=edge).synthesize("hello", "en", tmp_path)
    assert not list(tmp_path.glob("*speech*"))


def test_edge_no_audio_and_bad_answers(tmp_path, edge):
    from edge_tts.exceptions import NoAudioReceived, UnexpectedResponse

    edge.script = [NoAudioReceived("No audio was received")]
    with pytest.raises(TTSError, match="returned no audio.*voice en-US-AriaNeural"):
        EdgeTTS(communicate=edge).synthesize("hello", "en", tmp_path)
    edge.script = [UnexpectedResponse("bad header")]
    with pytest.raises(TTSError, match="answered unexpectedly"):
        EdgeTTS(communicate=edge).synthesize("hello", "en", tmp_path)
    edge.script = [{"type": "WordBoundary"}]  # a stream with no audio at all
    with pytest.raises(TTSError, match="produced no audio"):
        EdgeTTS(communicate=edge).synthesize("hello", "en", tmp_path)


def test_edge_timeout_and_cancel(tmp_path, edge):
    edge.script = [{"type": "audio", "data": b"x" * 100}, 5.0]
    with pytest.raises(TTSError, match="within 0.2 s"):
        EdgeTTS(communicate=edge, timeout=0.2).synthesize("hello", "en", tmp_path)
    cancel = threading.Event()
    cancel.set()
    edge.script = [{"type": "audio", "data": b"x" * 100}, {"type": "audio", "data": b"y"}]
    with pytest.raises(TTSCancelled):
        EdgeTTS(communicate=edge).synthesize("hello", "en", tmp_path, cancel=cancel)
    assert not list(tmp_path.glob("*speech*"))


def test_edge_default_client_is_edge_tts():
    import edge_tts

    assert EdgeTTS()._client() is edge_tts.Communicate


def test_make_tts_builds_the_configured_backend():
    s = TTSSettings()
    assert isinstance(make_tts(s), EspeakNG)
    s.backend = "piper"
    s.piper = {"voices": {"en": "/v/en.onnx"}, "command": ["piper"], "length_scale": None}
    p = make_tts(s)
    assert isinstance(p, Piper) and p.command == ["piper"] and p.voices["en"] == "/v/en.onnx"
    s.backend = "edge"
    assert isinstance(make_tts(s), EdgeTTS)
    s.backend = "festival"
    with pytest.raises(ValueError, match="one of espeak, piper, edge"):
        make_tts(s)
