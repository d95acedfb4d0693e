"""The dataset schema: round trip, atomic writes, clear errors for missing/incompatible datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from talkfield.dataset import (ARRAYS, FORMAT_VERSION, DatasetError, Manifest, SubjectDataset, SubjectWriter,
                               audio_rows, split_indices)


def _random_subject(root, T=22):
    rng = np.random.default_rng(0)
    w = SubjectWriter(root, "bob")
    shapes = {"T": T, "A": 2 * T, "S": 640 * T, "K": 4}
    for name, spec in ARRAYS.items():
        if not spec.required:
            continue
        dims = [shapes.get(d, None) or int(d) for d in spec.shape.strip("[]").split(",")]
        w.save(name, rng.standard_normal(dims))
    w.finish(Manifest(subject="bob", fingerprint="f" * 16, T=T, size=64, crop={"x0": 0, "y0": 0, "size": 64}))


def test_round_trip(tmp_path):
    _random_subject(tmp_path / "bob")
    ds = SubjectDataset(tmp_path / "bob")
    assert ds.T == 22 and ds.manifest.format_version == FORMAT_VERSION
    assert ds.array("c2w").shape == (22, 4, 4) and ds.array("c2w").dtype == np.float32
    assert ds.array("detected").dtype == np.bool_
    assert list(ds.split("train")) == list(range(20)) and list(ds.split("val")) == [20, 21]
    meta = json.loads((tmp_path / "bob" / "manifest.json").read_text())
    assert meta["arrays"]["mel"]["unit"] == "log10 power"


def test_errors_name_subject_and_command(tmp_path):
    with pytest.raises(DatasetError, match=r"subject 'nobody'.*python preprocess.py video=.*subject.name=nobody"):
        SubjectDataset(tmp_path / "nobody")
    _random_subject(tmp_path / "bob")
    (tmp_path / "bob" / "c2w.npy").unlink()
    with pytest.raises(DatasetError, match=r"arrays missing.*c2w"):
        SubjectDataset(tmp_path / "bob")
    m = json.loads((tmp_path / "bob" / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "bob" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="format_version 99"):
        SubjectDataset(tmp_path / "bob")


def test_no_pickles(tmp_path):
    w = SubjectWriter(tmp_path / "x", "x")
    with pytest.raises(KeyError):
        w.save("not_in_schema", np.zeros(3))
    w.save("f0", np.arange(5.0))
    arr = np.load(tmp_path / "x" / "f0.npy", allow_pickle=False)
    assert arr.dtype == np.float32
    assert not list((tmp_path / "x").glob("*.tmp")), "no temporary files left behind"


def test_split_and_audio_rows():
    tr, va = split_indices(200)
    assert len(tr) == 181 and len(va) == 19
    assert audio_rows(3).tolist() == [6, 7]
