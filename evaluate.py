"""Evaluate a trained subject on its held-out frames: python evaluate.py subject.name=<name> head=<ckpt> [key=value]

    python evaluate.py subject.name=katie head=latest [torso=...] [a2m=...] [syncnet=<path>] [out=<dir>]
    python evaluate.py run=outputs/katie/head/<run_id>     # writes <run>/eval.json (experiments/collect.py reads it)
    python evaluate.py landmarks=<eval dir>                 # add LMD & co. from saved renders (needs mediapipe)

Options: configs/evaluate.yaml. Protocol and metrics: talkfield/evaluation.py, docs/evaluation.md.
"""

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TALKFIELD_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("talkfield.evaluate")

OFF = ("none", "off", "false")


def _off(v) -> bool:
    return v is not None and str(v).lower() in OFF


def _run_info(run: Path) -> tuple[str, str, str | None]:
    """(stage, subject, data_dir recorded by the run) of a training run directory."""
    summary, config = run / "run_summary.json", run / "config.yaml"
    if config.is_file():
        c = OmegaConf.load(config)
        return str(c.stage), str(c.subject.name), OmegaConf.select(c, "paths.data_dir")
    if summary.is_file():
        s = json.loads(summary.read_text())
        return s["stage"], s["subject"], None
    raise FileNotFoundError(f"run={run}: neither config.yaml nor run_summary.json found; is it a finished run "
                            "directory (outputs/<subject>/<stage>/<run_id>)?")


def _open(data_dir: str, name: str, recorded: str | None):
    from talkfield.dataset import open_subject

    if recorded and not (Path(data_dir) / name / "manifest.json").is_file():
        return open_subject(recorded, name)
    return open_subject(data_dir, name)


def _expert(spec, a2m_model):
    """Our lip-sync expert: the given checkpoint, else the one the A2M model was trained with (if it exists)."""
    from lightning_modules.lipsync import load_lipsync

    if _off(spec):
        return None
    if spec is None:
        path = (((a2m_model.meta if a2m_model is not None else {}).get("config") or {}).get("model") or {}).get(
            "sync_expert")
        if not path or not Path(path).is_file():
            return None
        spec = path
    log.info("lip-sync expert: %s", spec)
    return load_lipsync(spec)


def _log_wandb(cfg: DictConfig, result: dict, out: Path) -> None:
    if "wandb" not in (cfg.get("logger") or {}):
        return
    try:
        import wandb
    except ImportError:
        log.warning("logger=wandb but wandb is not installed here: nothing logged to W&B (logger=none silences this)")
        return
    from talkfield.loggers import finish_wandb, make_wandb_logger

    try:
        lg = make_wandb_logger("talkfield", f"{result['subject']}-eval-{out.name}", str(out), group="eval",
                               mode=str(OmegaConf.select(cfg, "logger.wandb.mode", default="auto")))
        lg.log_metrics({f"eval/{k}": v for k, v in result["metrics"].items() if isinstance(v, (int, float))})
        lg.experiment.summary.update({"eval/lpips_variant": result.get("lpips_variant"),
                                      "eval/audio_features": result.get("audio_features"),
                                      "eval/ground_truth": result["ground_truth"]})
        if result.get("video") and Path(result["video"]).is_file():
            lg.experiment.log({"eval/side_by_side": wandb.Video(result["video"], format="mp4")})
    except Exception as err:  # logging must never lose the evaluation
        log.warning("W&B logging failed (%s); results are in %s", err, out)
    finally:
        finish_wandb()


def _landmarks(cfg: DictConfig, root: Path) -> None:
    """The CPU pass: add the landmark metrics to root/eval.json, or to every eval.json under root that lacks them."""
    from talkfield.evaluation import add_landmark_metrics, mediapipe_available

    if not mediapipe_available():
        raise FileNotFoundError("landmarks=: mediapipe is not installed here; run this pass on a machine with it")
    if (root / "eval.json").is_file():
        todo = [root]
    else:
        todo = [p.parent for p in sorted(root.rglob("eval.json"))
                if any(n.startswith("landmark metrics skipped") for n in json.loads(p.read_text()).get("notes", []))]
        if not todo:
            raise FileNotFoundError(f"landmarks={root}: no eval.json there, nor any below it that lacks the "
                                    "landmark metrics (run evaluate.py first)")
    for out in todo:
        res = json.loads((out / "eval.json").read_text())
        ds = _open(cfg.paths.data_dir, res["subject"], res.get("data_dir"))
        a2m_ck, a2m = res["checkpoints"].get("audio2motion"), None
        if a2m_ck and cfg.lipsync is None and Path(a2m_ck).is_file():
            from lightning_modules.audio2motion import load_audio2motion

            a2m = load_audio2motion(a2m_ck, ds.name, ds.fingerprint)
        add_landmark_metrics(out, ds, _expert(cfg.lipsync, a2m))
        log.info("landmark metrics added to %s\n%s", out / "eval.json", (out / "eval.md").read_text())


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from talkfield.dataset import DatasetError
    from talkfield.inference import InferenceError, _resolve_a2m, pick_device
    from talkfield.runs import CheckpointError, find_checkpoint, latest_run, resolve_checkpoint

    try:
        if cfg.landmarks:
            _landmarks(cfg, Path(cfg.landmarks))
            return

        from talkfield.evaluation import evaluate, load_models

        name, recorded = cfg.subject.name, None
        head, torso, a2m = cfg.head, cfg.torso, cfg.a2m
        out = Path(cfg.out) if cfg.out else None
        if cfg.run:
            run = Path(cfg.run)
            stage, name, recorded = _run_info(run)
            ck = find_checkpoint(run)
            if ck is None:
                raise CheckpointError(f"run={run} holds no checkpoint (looked in {run / 'checkpoints'})")
            if stage == "head":
                head = str(ck)
            elif stage == "torso":
                torso = str(ck)
            elif stage == "audio2motion":
                a2m = str(ck)
            else:
                raise CheckpointError(f"run={run} is a {stage!r} run; evaluate.py scores head, torso and "
                                      "audio2motion runs")
            out = out or run
        if not name:
            raise ValueError("which subject? pass subject.name=<name> (or run=<run dir>)")
        ds = _open(cfg.paths.data_dir, name, recorded)
        runs = Path(cfg.paths.runs_dir)
        torso_ck = None if torso is None or _off(torso) else resolve_checkpoint(str(torso), runs, name, "torso")
        head_ck = None
        if torso_ck is None:
            head_ck = resolve_checkpoint(str(head or "latest"), runs, name, "head")
        a2m_ck = None
        if a2m is None:
            if latest_run(runs, name, "audio2motion") is not None:
                a2m_ck = _resolve_a2m(None, runs, name)
            else:
                log.info("no audio2motion run for %r under %s: motion-oracle only", name, runs)
        elif not _off(a2m):
            a2m_ck = _resolve_a2m(str(a2m), runs, name)
        device = pick_device(cfg.device)
        models = load_models(ds, head=head_ck, torso=torso_ck, a2m=a2m_ck, device=device)
        syncnet = None
        if cfg.syncnet and not _off(cfg.syncnet):
            from networks.syncnet_lse import load_syncnet

            syncnet = load_syncnet(cfg.syncnet, device)
        out = out or runs / name / "eval" / str(cfg.run_id)
        log.info("evaluating subject %r (%s) into %s", name, models.checkpoints, out)
        result = evaluate(ds, models, out, device=device, lpips_variant=str(cfg.lpips), lpips_net=str(cfg.lpips_net),
                          face_dilate=int(cfg.face_dilate), batch_frames=int(cfg.batch_frames),
                          landmarks=bool(cfg.compute_landmarks), expert=_expert(cfg.lipsync, models.a2m),
                          syncnet=syncnet, video=bool(cfg.video))
        _log_wandb(cfg, result, out)
    except (CheckpointError, DatasetError, InferenceError, FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)
    log.info("wrote %s and %s\n%s", out / "eval.json", out / "eval.md", (out / "eval.md").read_text())


if __name__ == "__main__":
    main()
