#!/usr/bin/env bash
# The "Defaults" section of BENCHMARKS.md on the lent GPU, in two calls back to back on one lease
# (each under 10 minutes): `bash benchmarks/gpu_defaults.sh throughput`, then `... quality`.
# throughput: random weights from SmolLM2's config at $CONFIG, DialogSum dev at $DATA/dev.jsonl, 20 steps each:
#   TRL with packing, tunespec rows of 16, packing, the defaults (micro_batch_tokens auto), a 16k-token budget.
# quality: real SmolLM2 weights (the GGUF at $GGUF_DIR), benchmarks/quality_defaults.py (its docstring).
# Expects wheels installed (PYTHONPATH) as ../shared/gpu/README.md says. Writes JSON and logs to $OUT.
set -uo pipefail
PART=${1:?usage: gpu_defaults.sh throughput|quality}
OUT=${OUT:-/tmp/out}; DATA=${DATA:-$PWD/.gpu/data}; CONFIG=${CONFIG:-$PWD/.gpu/smol-config}; GGUF_DIR=${GGUF_DIR:-/tmp/gguf}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TUNESPEC_CACHE=${TUNESPEC_CACHE:-/tmp/tscache}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft, accelerate, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'trl', trl.__version__)"
  date -u +%Y-%m-%dT%H:%M:%SZ; } > "$OUT/gpu-$PART.txt" 2>&1
case $PART in
  throughput)
    python3 benchmarks/train_throughput.py --data "$DATA/dev.jsonl" --model-dir "$CONFIG" --random-weights --timeout ${TIMEOUT:-200} \
      --steps ${STEPS:-20} --systems ${SYSTEMS:-trl_packing,tunespec,tunespec_packing,tunespec_defaults,tunespec_16k} \
      --out "$OUT/throughput-defaults.json" > "$OUT/throughput.log" 2>&1
    tail -5 "$OUT/throughput.log" ;;
  quality)
    python3 benchmarks/quality_defaults.py --gguf-dir "$GGUF_DIR" --data "$DATA/dev.jsonl" --parallel 5 \
      --out "$OUT/quality-defaults.json" > "$OUT/quality.log" 2>&1
    tail -20 "$OUT/quality.log" ;;
  *) echo "unknown part $PART" >&2; exit 2 ;;
esac
