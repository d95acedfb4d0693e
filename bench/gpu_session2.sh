#!/usr/bin/env bash
# Second device lease: the inference benchmark (issue 9) and the lambda_lpips sweep + ambient ablation on the real
# clip (issue 10), in two back-to-back calls (what travels per call is capped at 64 MiB):
#   call 1, carry [".carry/s2a"]  (PyAV, pyworld, hydra wheels; data/katie without debug.mp4)
#     bash bench/gpu_session2.sh setup
#   call 2, carry [".carry/s2b"]  (torso.ckpt + a2m.ckpt weights-only from bench/gpu_session.sh, the prebuilt cuda_ext,
#                                  stlpips_pytorch without vgg weights, IPython wheels that stlpips imports)
#     bash bench/gpu_session2.sh run                 # the inference benchmark, alone on the GPU
#     variants on one machine, one call: INFER_TAG=_eager bash bench/gpu_session2.sh run; \
#       INFER_TAG=_k3 INFER_ARGS="--compact-every 3" bash bench/gpu_session2.sh run   (bm_infer options)
#   calls 3 and 4, no carry needed (everything is under /tmp/tf by then):
#     bash bench/gpu_session2.sh studies lambda      # the lambda_lpips grid, one process per row
#     bash bench/gpu_session2.sh studies ambient     # the ambient ablation
# Study runs use short schedules (STUDY_STEPS); their renders come back as JPEG (q95) in $OUT/study.tar for the
# CPU landmark pass (python evaluate.py landmarks=<run>), then python -m experiments.collect writes the tables.
set -uo pipefail
OUT=${OUT:-/tmp/tf_out}
TF=/tmp/tf
mkdir -p "$OUT" "$TF/site" "$TF/data"
export PYTHONUNBUFFERED=1 TALKFIELD_DATA=$TF/data TALKFIELD_OUTPUTS=$TF/outputs WANDB_MODE=disabled
export TALKFIELD_CUDA_EXT_SO=${TALKFIELD_CUDA_EXT_SO:-$PWD/.carry/s2b/cuda_ext/talkfield_cuda_ext.so} TALKFIELD_CUDA_EXT_BUILD_DIR=$TF/cuda_ext_build
export PYTHONPATH=$PWD:$TF/site
STUDY_STEPS=${STUDY_STEPS:-600}
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }

case "${1:-setup}" in
setup)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $TF/site .carry/s2a/*.whl \
    >"$TF/install.log" 2>&1 || { cat "$TF/install.log"; exit 1; }
  cp -r .carry/s2a/data/* $TF/data/
  python3 -c "import av, pyworld, hydra; print('av', av.__version__, 'pyworld ok')" 2>&1 | tail -1
  echo "setup: $(elapsed) s" ;;
run)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $TF/site .carry/s2b/whl/*.whl \
    >>"$TF/install.log" 2>&1 || echo "IPython wheels failed to install (LPIPS falls back / skipped)"
  cp -r .carry/s2b/site/* $TF/site/
  mkdir -p $TF/ckpt && cp .carry/s2b/torso.ckpt .carry/s2b/a2m.ckpt $TF/ckpt/
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  # 1) inference benchmark, alone on the GPU (INFER_ARGS: more bm_infer options, e.g. "--compile reduce-overhead";
  #    INFER_TAG: a suffix for its output names, so variants in one call keep their results apart)
  tag=${INFER_TAG:-}
  python3 bench/bm_infer.py --data-dir $TF/data --subject katie --out $TF/infer$tag --ckpt-dir $TF/ckpt \
    --deadline-s ${INFER_DEADLINE:-230} ${INFER_ARGS:-} >$TF/infer$tag.log 2>&1
  echo "infer rc $? at $(elapsed) s"; grep -a "^| \|Error\|Traceback" $TF/infer$tag.log | cut -c1-220 | tail -30
  cp $TF/infer$tag/results_rows.md $OUT/infer${tag}_rows.md 2>/dev/null
  cp $TF/infer$tag/results.json $OUT/infer${tag}_results.json 2>/dev/null
  cp $TF/infer$tag.log $OUT/infer$tag.log
  ls -la $OUT; echo "run: $(elapsed) s" ;;
studies)
  # one study per call (what fits 10 minutes): one process per row (2 seeds each), short schedules, then the pack;
  #   bash bench/gpu_session2.sh studies lambda     # then, in the next call:
  #   bash bench/gpu_session2.sh studies ambient
  export OMP_NUM_THREADS=4
  common="subject.name=katie logger=csv trainer.max_steps=$STUDY_STEPS trainer.val_check_interval=$STUDY_STEPS \
    model.loss.lpips_start_step=0 model.val_video=false trainer.enable_progress_bar=false"
  if [ "${2:-lambda}" = lambda ]; then
    file=experiments/sweeps/lambda_lpips_multirun.yaml; rows=("lambda_lpips 0.0" "lambda_lpips 0.001" "lambda_lpips 0.01")
  else
    file=experiments/ablations/ambient.yaml; rows=(adaptive fixed off)
  fi
  i=0
  for row in "${rows[@]}"; do
    setsid nohup python3 -m experiments.run_study $file $common --rows "$row" --no-collect \
      >$TF/study_${2:-lambda}_$i.log 2>&1 </dev/null & i=$((i+1))
  done
  sleep 20
  while [ "$(elapsed)" -lt ${STUDY_DEADLINE:-540} ] && pgrep -f experiments.run_study >/dev/null; do sleep 5; done
  echo "study ${2:-lambda} done or stopped at $(elapsed) s"
  pgrep -f experiments.run_study >/dev/null && echo "STILL RUNNING: some rows are incomplete (pack again later)"
  for f in $TF/study_*.log; do echo "== $f"; grep -a "Error\|Traceback\|wrote" "$f" | tail -n 3 | cut -c1-200; done
  bash "$0" pack ;;
pack)
  python3 - <<'PY'
# every study run's summary, config, eval.json and renders (PNG -> JPEG q95, to fit what may come back)
import io, os, tarfile
from pathlib import Path
import cv2
root, out = Path("/tmp/tf/outputs"), Path(os.environ.get("OUT", "/tmp/tf_out"))
with tarfile.open(out / "study.tar", "w") as tar:
    for summary in root.rglob("run_summary.json"):
        run = summary.parent
        for name in ("run_summary.json", "config.yaml", "eval.json", "eval.md"):
            if (run / name).is_file():
                tar.add(run / name, arcname=str((run / name).relative_to(root)))
        for png in sorted(run.glob("eval_renders/*/*.png")):
            ok, buf = cv2.imencode(".jpg", cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 95])
            info = tarfile.TarInfo(str(png.relative_to(root).with_suffix(".jpg")))
            info.size = len(buf)
            tar.addfile(info, io.BytesIO(buf.tobytes()))
print("study.tar", round((out / "study.tar").stat().st_size / 2**20, 1), "MiB")
PY
  ls -la $OUT ;;
esac
