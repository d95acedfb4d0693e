#!/usr/bin/env bash
# The head-stage GPU benchmark in device calls of at most 10 minutes each (the benchmark itself trains for 10).
# Run from the repo root on the GPU machine with carry [".carry/head"], where
#   .carry/head/whl/        hydra-core 1.3.2, omegaconf 2.3.0, antlr4-python3-runtime 4.9.3 wheels
#   .carry/head/data/katie  the preprocessed subject (python preprocess.py video=../shared/data/WDA_KatieHill_000.mp4
#                           subject.name=katie; debug.mp4 left out)
#   bash bench/gpu_head_nerf.sh start     # install, build cuda_ext, start the benchmark detached, wait ~9 min
#   bash bench/gpu_head_nerf.sh collect   # (next call, within 30 s) wait for the end, copy the results to $OUT
set -uo pipefail
OUT=${OUT:-/tmp/head_out}
WORK=/tmp/head_bench
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX}
export TALKFIELD_CUDA_EXT_BUILD_DIR=/tmp/tf_cuda_ext_build
export PYTHONPATH=$PWD:/tmp/site
case "${1:-start}" in
start)
  t0=$(date +%s)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry/head/whl/*.whl \
    >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; exit 1; }
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import cuda_ext._backend as b; b.load(); print('cuda_ext from', b.loaded_from())" >"$WORK/build.log" 2>&1
  echo "build: $(( $(date +%s) - t0 )) s"; tail -3 "$WORK/build.log"
  setsid nohup python3 bench/bm_head_nerf.py --data-dir .carry/head/data --subject katie --minutes 10 \
    --out "$WORK/out" "${@:2}" >"$WORK/bench.log" 2>&1 < /dev/null &
  while [ $(( $(date +%s) - t0 )) -lt 560 ] && ! grep -q "^| head_nerf" "$WORK/bench.log"; do sleep 10; done
  grep -a "curve:\|Error\|error" "$WORK/bench.log" | tail -20
  cp "$WORK"/*.log "$OUT"/ ;;
collect)
  t0=$(date +%s)
  while [ $(( $(date +%s) - t0 )) -lt 570 ] && ! [ -f "$WORK/out/results_rows.md" ] && pgrep -f bm_head_nerf >/dev/null; do
    sleep 10; done
  tail -30 "$WORK/bench.log"
  cp "$WORK/bench.log" "$WORK/out/curve.json" "$WORK/out/results_rows.md" "$OUT"/ 2>/dev/null
  cp "$WORK/out/run/csv/metrics.csv" "$OUT"/ 2>/dev/null
  ls "$WORK"/out/run/media/*/ 2>/dev/null | tail -3
  f=$(ls "$WORK"/out/run/media/val_frame0/*.png 2>/dev/null | tail -1); [ -n "$f" ] && cp "$f" "$OUT/val_frame0.png"
  f=$(ls "$WORK"/out/run/media/val_frame1/*.png 2>/dev/null | tail -1); [ -n "$f" ] && cp "$f" "$OUT/val_frame1.png"
  true ;;
esac
