#!/usr/bin/env bash
# One device lease for the head, torso and Audio2Motion stages on the real clip, in calls of at most 10 minutes
# (the machine stays warm 30 s between calls, so run the phases back to back). Run from the repo root on the GPU
# machine. Everything lives under /tmp/tf on the machine; what is worth keeping is copied to $OUT.
#
#   phase 1, carry [".carry/gpu", ".carry/cuda_ext"]:
#       .carry/gpu/whl    hydra-core/omegaconf/antlr, IPython + deps and torchsummary (stlpips imports them)
#       .carry/gpu/site   stlpips_pytorch without its vgg weights (the shift-tolerant LPIPS, alex)
#       .carry/gpu/data   data/katie without debug.mp4
#     bash bench/gpu_session.sh head       # install, head benchmark (10 min, alone on the GPU) + A2M training after it
#     bash bench/gpu_session.sh setup      # install only (then e.g. `screen`)
#   phase 2, carry [".carry/av"] (the PyAV wheel: val videos, mp4 output):
#     bash bench/gpu_session.sh torso      # wait for the head, export it, torso benchmark (started detached)
#   phase 3, no carry needed:
#     bash bench/gpu_session.sh collect    # wait for the torso, export weights-only checkpoints to $OUT
set -uo pipefail
OUT=${OUT:-/tmp/tf_out}
TF=/tmp/tf
mkdir -p "$OUT" "$TF"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX}
export TALKFIELD_CUDA_EXT_BUILD_DIR=$TF/cuda_ext_build
export TALKFIELD_DATA=$TF/data TALKFIELD_OUTPUTS=$TF/outputs WANDB_MODE=disabled
export PYTHONPATH=$PWD:$TF/site
HEAD_MIN=${HEAD_MIN:-10}
TORSO_MIN=${TORSO_MIN:-9}
A2M_STEPS=${A2M_STEPS:-3000}
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }

wait_for() {  # wait_for <file> <pattern of the process> <max seconds>
  while [ "$(elapsed)" -lt "$3" ] && ! [ -f "$1" ] && pgrep -f "$2" >/dev/null; do sleep 5; done
}

case "${1:-head}" in
setup|head)
  mkdir -p $TF/site $TF/data
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $TF/site .carry/gpu/whl/*.whl \
    >"$TF/install.log" 2>&1 || { cat "$TF/install.log"; exit 1; }
  cp -r .carry/gpu/site/* $TF/site/ && cp -r .carry/gpu/data/* $TF/data/
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, cuda_ext._backend as b; b.load(); print('torch', torch.__version__, '| cuda_ext from', b.loaded_from())" 2>&1 | tail -2
  python3 -c "from networks.perceptual import build_perceptual as b; print('perceptual:', b('alex', 'auto')[1])" 2>&1 | tail -1
  echo "setup: $(elapsed) s"
  [ "${1:-head}" = setup ] && exit 0
  # the head benchmark alone on the GPU (the A2M model trains later, after the torso, in phase torso)
  setsid nohup bash -c "python3 bench/bm_head_nerf.py --data-dir $TF/data --subject katie --minutes $HEAD_MIN \
      --out $TF/head trainer.val_check_interval=1000 trainer.log_every_n_steps=50 ${HEAD_ARGS:-} >$TF/head.log 2>&1" \
      </dev/null >/dev/null 2>&1 &
  wait_for $TF/head/results_rows.md bm_head_nerf 575
  grep -a "curve:\|Error\|error\|Traceback" $TF/head.log | tail -15
  echo "phase head: $(elapsed) s" ;;
screen)
  # head variants side by side on the one GPU (a screening: they share it, so each runs slower than alone and its
  # curve is pessimistic; re-run the winner alone with `head` for the headline numbers). Needs phase head's setup
  # (or run `head` with HEAD_MIN=0.1 first). VARIANTS: "name:override override;name2:override ..."
  #   VARIANTS="base:;dt2:model.renderer.dt=0.0216 model.renderer.max_steps=64;hash19:model.network.grid.log2_hashmap_size=19" \
  #     SCREEN_MIN=8 bash bench/gpu_session.sh screen
  IFS=';' read -ra vs <<<"${VARIANTS:?set VARIANTS}"
  for v in "${vs[@]}"; do
    name=${v%%:*}; args=${v#*:}
    setsid nohup bash -c "python3 bench/bm_head_nerf.py --data-dir $TF/data --subject katie --minutes ${SCREEN_MIN:-8} \
        --out $TF/screen_$name trainer.val_check_interval=1000 trainer.log_every_n_steps=50 $args \
        >$TF/screen_$name.log 2>&1" </dev/null >/dev/null 2>&1 &
  done
  sleep 30
  while [ "$(elapsed)" -lt 570 ] && pgrep -f bm_head_nerf >/dev/null; do sleep 10; done
  for v in "${vs[@]}"; do
    name=${v%%:*}; echo "== $name: ${v#*:}"; grep -a "curve:" $TF/screen_$name.log | tail -2
    grep -a "Error\|Traceback" $TF/screen_$name.log | tail -2
    cp $TF/screen_$name/curve.json $OUT/screen_$name.json 2>/dev/null
  done
  echo "phase screen: $(elapsed) s" ;;
torso)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $TF/site .carry/av/*.whl \
    >>"$TF/install.log" 2>&1 || echo "PyAV install failed (no val videos)"
  wait_for $TF/head/results_rows.md bm_head_nerf 300
  tail -25 $TF/head.log
  cp $TF/head/results_rows.md $OUT/head_rows.md; cp $TF/head/curve.json $OUT/head_curve.json
  cp $TF/head/run/csv/metrics.csv $OUT/head_metrics.csv 2>/dev/null
  for i in 0 1 2; do f=$(ls $TF/head/run/media/val_frame$i/*.png 2>/dev/null | tail -1); [ -n "$f" ] && cp "$f" $OUT/head_val$i.png; done
  python3 bench/bm_torso_nerf.py --export-head $TF/head/run --to $TF/head_katie.ckpt 2>&1 | tail -2
  cp $TF/head_katie.ckpt $OUT/
  setsid nohup bash -c "python3 bench/bm_torso_nerf.py --data-dir $TF/data --subject katie --head $TF/head_katie.ckpt \
      --minutes $TORSO_MIN --out $TF/torso trainer.log_every_n_steps=50 ${TORSO_ARGS:-} >$TF/torso.log 2>&1; \
      python3 train.py experiment=audio2motion subject.name=katie logger=csv trainer.max_steps=$A2M_STEPS \
      trainer.enable_progress_bar=false >$TF/a2m.log 2>&1" </dev/null >/dev/null 2>&1 &
  sleep 60; grep -a "Error\|Traceback\|error" $TF/torso.log | tail -5
  wait_for $TF/torso/results_rows.md bm_torso_nerf 575
  grep -a "curve:\|Error\|Traceback" $TF/torso.log | tail -12
  echo "phase torso: $(elapsed) s" ;;
collect)
  wait_for $TF/torso/results_rows.md bm_torso_nerf 400
  tail -20 $TF/torso.log
  cp $TF/torso/results_rows.md $OUT/torso_rows.md; cp $TF/torso/curve.json $OUT/torso_curve.json
  cp $TF/torso/val_video.mp4 $OUT/torso_val_video.mp4 2>/dev/null
  while [ "$(elapsed)" -lt 500 ] && pgrep -f "experiment=audio2motion" >/dev/null; do sleep 5; done
  tail -5 $TF/a2m.log
  python3 - <<'EOF'
# weights-only copies for later leases (float16 where float32 would exceed what a returned file may hold)
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from bm_torso_nerf import export_weights
out = Path(__import__("os").environ.get("OUT", "/tmp/tf_out"))
export_weights(Path("/tmp/tf/torso/run"), out / "torso_katie.ckpt")
runs = sorted(Path("/tmp/tf/outputs/katie/audio2motion").glob("*/checkpoints/last.ckpt"))
if runs:
    export_weights(runs[-1], out / "a2m_katie.ckpt")
EOF
  ls -la $OUT
  echo "phase collect: $(elapsed) s" ;;
esac
