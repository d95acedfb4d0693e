"""Lazy loading of the compiled extension ``talkfield_cuda_ext``.

Nothing here runs at import time. :func:`load` tries, in order:

1. a prebuilt shared object: ``$TALKFIELD_CUDA_EXT_SO`` (a path to the ``.so``), else
   ``<repo>/.carry/cuda_ext/talkfield_cuda_ext*.so``. It is used only when the ``.meta.json`` next to it
   names the running torch version and the hash of the current ``csrc/`` sources (a stale build is skipped);
2. a just-in-time build with ``torch.utils.cpp_extension.load`` when ``nvcc`` is found, cached in
   ``$TALKFIELD_CUDA_EXT_BUILD_DIR`` (default ``~/.cache/talkfield/cuda_ext/<torch>-<hash>``), so only the
   first call on a machine compiles (minutes); it writes the ``.meta.json`` beside the ``.so`` so the build
   can be copied and reused as a prebuilt module;
3. otherwise a ``RuntimeError`` that says what is missing.

Architectures: ``TORCH_CUDA_ARCH_LIST`` when set, else the visible GPU's own (e.g. ``9.0``) plus PTX.
Debug recipe: ``VERBOSE=1 python -c "import cuda_ext._backend as b; b.load()"``.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

EXT_NAME = "talkfield_cuda_ext"
_HERE = Path(__file__).resolve().parent
_CSRC = _HERE / "csrc"
_REPO = _HERE.parent
_NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
_CXX_FLAGS = ["-O3", "-std=c++17"]

_C = None
_error: Optional[str] = None
_source: Optional[str] = None  # "prebuilt:<path>" or "jit:<dir>"


def sources() -> list:
    return sorted(str(p) for p in _CSRC.iterdir() if p.suffix in (".cu", ".cpp"))


def source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(_CSRC.iterdir()):
        if p.suffix in (".cu", ".cpp", ".h", ".cuh"):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    h.update(" ".join(_NVCC_FLAGS + _CXX_FLAGS).encode())
    return h.hexdigest()[:16]


def _meta() -> dict:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "sources": source_hash()}


def _import_so(path: str):
    loader = importlib.machinery.ExtensionFileLoader(EXT_NAME, path)
    spec = importlib.util.spec_from_file_location(EXT_NAME, path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _prebuilt_candidates() -> list:
    env = os.environ.get("TALKFIELD_CUDA_EXT_SO")
    if env:
        return [env]
    return sorted(glob.glob(str(_REPO / ".carry" / "cuda_ext" / f"{EXT_NAME}*.so")))


def _try_prebuilt(notes: list):
    want = _meta()
    for path in _prebuilt_candidates():
        meta_path = Path(path).with_suffix(".meta.json")
        if not Path(path).is_file():
            notes.append(f"{path}: not a file")
            continue
        if meta_path.is_file():
            got = json.loads(meta_path.read_text())
            if got.get("torch") != want["torch"] or got.get("sources") != want["sources"]:
                notes.append(f"{path}: built for torch {got.get('torch')} / sources {got.get('sources')}, "
                             f"need {want['torch']} / {want['sources']}")
                continue
        elif not os.environ.get("TALKFIELD_CUDA_EXT_SO"):
            notes.append(f"{path}: no {meta_path.name} beside it")
            continue
        try:
            mod = _import_so(path)
        except ImportError as exc:  # ABI mismatch and the like
            notes.append(f"{path}: {exc}")
            continue
        return mod, path
    return None, None


def build_dir() -> str:
    d = os.environ.get("TALKFIELD_CUDA_EXT_BUILD_DIR")
    if not d:
        d = os.path.join(os.path.expanduser("~/.cache/talkfield/cuda_ext"), f"{torch.__version__}-{source_hash()}")
    os.makedirs(d, exist_ok=True)
    return d


def _jit(notes: list):
    from torch.utils import cpp_extension

    if shutil.which("nvcc") is None and cpp_extension.CUDA_HOME is None:
        notes.append("no nvcc on PATH and CUDA_HOME unset: cannot build just in time")
        return None, None
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}+PTX"
    d = build_dir()
    mod = cpp_extension.load(
        name=EXT_NAME, sources=sources(), extra_cflags=_CXX_FLAGS, extra_cuda_cflags=_NVCC_FLAGS,
        build_directory=d, verbose=bool(os.environ.get("VERBOSE")),
    )
    so = glob.glob(os.path.join(d, f"{EXT_NAME}*.so"))
    if so:
        Path(so[0]).with_suffix(".meta.json").write_text(json.dumps(_meta()))
    return mod, d


def load():
    """Return the compiled module, building it on first use; raise ``RuntimeError`` when that is impossible."""
    global _C, _error, _source
    if _C is not None:
        return _C
    if _error is not None:
        raise RuntimeError(_error)
    notes: list = []
    mod, path = _try_prebuilt(notes)
    if mod is not None:
        _C, _source = mod, f"prebuilt:{path}"
        return _C
    try:
        mod, d = _jit(notes)
    except Exception as exc:  # compiler errors: keep the message, do not retry on every call
        notes.append(f"JIT build failed: {exc}")
        mod = None
    if mod is None:
        _error = ("cuda_ext: the CUDA extension is not available (" + "; ".join(notes) + "). "
                  "Install nvcc matching torch's CUDA, set TALKFIELD_CUDA_EXT_SO to a prebuilt module, "
                  "or use cuda_ext.set_backend('torch').")
        raise RuntimeError(_error)
    _C, _source = mod, f"jit:{d}"
    return _C


def is_available() -> bool:
    """True when CUDA is usable and the extension loads (may trigger the one-off build)."""
    if not torch.cuda.is_available():
        return False
    try:
        load()
        return True
    except RuntimeError:
        return False


def loaded_from() -> Optional[str]:
    return _source
