#!/usr/bin/env bash
# One device run for cuda_ext: build (or load the carried prebuilt module), the gpu tests, the benchmark.
# Run from the repo root on the GPU machine with `carry: [".carry"]`:
#   bash bench/gpu_cuda_ext.sh [bench parts, default a,b,c,d]     (extra bench options in $BENCH_ARGS)
# .carry/whl/      wheels the GPU machine lacks (nerfacc 0.5.3 + rich and its deps, pytest if missing)
# .carry/cuda_ext/ talkfield_cuda_ext*.so + .meta.json from an earlier run (used when torch and sources match)
#                  nerfacc_cuda.so (nerfacc's JIT build, preloaded by the benchmark through NERFACC_SO)
# Everything worth keeping lands in $OUT (at most 8 files come back).
set -uo pipefail
OUT=${OUT:-/tmp/cuda_ext_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=/tmp/torch_ext
export TALKFIELD_CUDA_EXT_BUILD_DIR=/tmp/tf_cuda_ext_build
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX}
log="$OUT/build.log"
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
} >"$log" 2>&1

mkdir -p /tmp/site
whl=(.carry/whl/nerfacc-*.whl .carry/whl/rich-*.whl .carry/whl/markdown_it_py-*.whl .carry/whl/mdurl-*.whl .carry/whl/pygments-*.whl)
python3 -c "import pytest" 2>/dev/null || whl+=(.carry/whl/pytest-*.whl .carry/whl/pluggy-*.whl .carry/whl/iniconfig-*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${whl[@]}" >>"$log" 2>&1
export PYTHONPATH=$PWD:${PYTHONPATH:-}:/tmp/site   # preinstalled packages win over the carried ones

# nerfacc's own JIT build runs in the background while ours builds (unless a carried build is there)
if [ -f .carry/cuda_ext/nerfacc_cuda.so ]; then
  export NERFACC_SO=$PWD/.carry/cuda_ext/nerfacc_cuda.so
else
  (python3 -c "import nerfacc.cuda._backend as b; print('nerfacc _C', b._C)" >"$OUT/nerfacc_build.log" 2>&1) &
  nerfacc_pid=$!
fi

t0=$(date +%s)
python3 -c "import cuda_ext._backend as b; b.load(); print('cuda_ext loaded from', b.loaded_from())" >>"$log" 2>&1
echo "cuda_ext load/build seconds: $(( $(date +%s) - t0 ))" >>"$log"
cp "$TALKFIELD_CUDA_EXT_BUILD_DIR"/talkfield_cuda_ext*.so "$TALKFIELD_CUDA_EXT_BUILD_DIR"/talkfield_cuda_ext.meta.json "$OUT"/ 2>/dev/null
if [ -n "${nerfacc_pid:-}" ]; then
  wait "$nerfacc_pid"
  cat "$OUT/nerfacc_build.log" >>"$log"; rm -f "$OUT/nerfacc_build.log"
  cp "$TORCH_EXTENSIONS_DIR"/nerfacc_cuda/nerfacc_cuda.so "$OUT"/ 2>/dev/null
  export NERFACC_SO=$TORCH_EXTENSIONS_DIR/nerfacc_cuda/nerfacc_cuda.so
fi
echo "build phase done after $(( $(date +%s) - t0 )) s" >>"$log"
tail -5 "$log"

python3 -m pytest --noconftest -p no:cacheprovider -m gpu tests/cuda_ext -q -rA --durations=10 >"$OUT/gpu_tests.log" 2>&1
tail -25 "$OUT/gpu_tests.log"

# BENCH_ARGS: extra bench options, e.g. BENCH_ARGS="--compile field:reduce-overhead --deadline-s 300"
python3 bench/bm_cuda_ext.py --out "$OUT" --only "${1:-a,b,c,d}" ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
tail -40 "$OUT/bench.log"
