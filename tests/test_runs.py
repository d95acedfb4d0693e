"""Runs, latest pointers and checkpoint refusal messages (CONTRACTS.md section 1)."""

from __future__ import annotations

import pytest
import torch

from talkfield.runs import (CheckpointError, check_meta, fingerprint, latest_run, make_meta, mark_latest,
                            resolve_checkpoint, save_weights_only)


def _ckpt(path, **meta_kwargs):
    meta = make_meta(**meta_kwargs)
    torch.save({"state_dict": {"w": torch.randn(3)}, "optimizer_states": [], "talkfield": meta}, path)
    return meta


def test_latest_pointer_and_resolution(tmp_path):
    run = tmp_path / "alice" / "head" / "20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    assert latest_run(tmp_path, "alice", "head") is None
    with pytest.raises(CheckpointError, match="python train.py experiment=head_nerf subject.name=alice"):
        resolve_checkpoint("latest", tmp_path, "alice", "head")
    mark_latest(run)
    assert latest_run(tmp_path, "alice", "head") == run
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        resolve_checkpoint("latest", tmp_path, "alice", "head")
    _ckpt(run / "checkpoints" / "last.ckpt", stage="head", subject="alice", fingerprint_="abc", config={})
    assert resolve_checkpoint("latest", tmp_path, "alice", "head") == run / "checkpoints" / "last.ckpt"
    assert resolve_checkpoint(str(run), tmp_path, "alice", "head") == run / "checkpoints" / "last.ckpt"
    assert resolve_checkpoint(None, tmp_path, "alice", "head") is None


def test_refusals_name_the_owner():
    meta = make_meta("head", "alice", "fp1", {"a": 1})
    check_meta(meta, path="x.ckpt", stage="head", subject="alice", fingerprint_="fp1")
    with pytest.raises(CheckpointError, match="belongs to subject 'alice', not 'bob'"):
        check_meta(meta, path="x.ckpt", stage="head", subject="bob", fingerprint_=None)
    with pytest.raises(CheckpointError, match="another preprocessing"):
        check_meta(meta, path="x.ckpt", stage="head", subject="alice", fingerprint_="fp2")
    with pytest.raises(CheckpointError, match="'head' checkpoint; a 'torso'"):
        check_meta(meta, path="x.ckpt", stage="torso", subject="alice", fingerprint_=None)
    old = {**meta, "format_version": 0}
    with pytest.raises(CheckpointError, match="format_version 0"):
        check_meta(old, path="x.ckpt", stage="head", subject="alice", fingerprint_=None)
    generic = make_meta("audio2motion", None, None, {})
    check_meta(generic, path="g.ckpt", stage="audio2motion", subject="alice", fingerprint_="fp1", allow_generic=True)
    with pytest.raises(CheckpointError, match="generic"):
        check_meta(generic, path="g.ckpt", stage="audio2motion", subject="alice", fingerprint_="fp1")


def test_weights_only_export(tmp_path):
    src = tmp_path / "full.ckpt"
    _ckpt(src, stage="torso", subject="a", fingerprint_="f", config={"k": [1, 2]})
    full = torch.load(src, weights_only=True)
    dst = save_weights_only(full, tmp_path / "slim" / "torso.ckpt")
    slim = torch.load(dst, weights_only=True)
    assert set(slim) == {"state_dict", "talkfield"}
    assert torch.equal(slim["state_dict"]["w"], full["state_dict"]["w"])


def test_fingerprint_depends_on_source_and_config():
    a = fingerprint("h1", {"size": 512})
    assert a == fingerprint("h1", {"size": 512})
    assert a != fingerprint("h2", {"size": 512})
    assert a != fingerprint("h1", {"size": 256})
