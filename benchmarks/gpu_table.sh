#!/usr/bin/env bash
# The training-throughput table of BENCHMARKS.md in one run on the lent H100, in three parts that fit its
# 10-minute calls (run back to back on one lease: `bash benchmarks/gpu_table.sh qlora`, then `lora`, then
# `1b`). Random weights from SmolLM2's config (throughput and memory do not depend on their values).
# Expects: DialogSum dev at $DATA/dev.jsonl, SmolLM2's config + tokenizer at $CONFIG, tunespec, TRL,
# bitsandbytes importable. Writes throughput-*.json, logs and profiles to $OUT.
set -uo pipefail
PART=${1:?usage: gpu_table.sh qlora|lora|1b}
OUT=${OUT:-/tmp/out}; DATA=${DATA:-$PWD/.gpu/data}; CONFIG=${CONFIG:-$PWD/.gpu/smol-config}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TUNESPEC_CACHE=${TUNESPEC_CACHE:-/tmp/tscache}
B=(python3 benchmarks/train_throughput.py --data "$DATA/dev.jsonl" --model-dir "$CONFIG" --random-weights --timeout 280)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft, accelerate, trl, bitsandbytes as b; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'trl', trl.__version__, 'bitsandbytes', b.__version__)"
  date -u +%Y-%m-%dT%H:%M:%SZ; } > "$OUT/gpu-$PART.txt" 2>&1
case $PART in
  qlora)
    "${B[@]}" --steps 20 --systems seed_qlora,trl_qlora_packing,tunespec_qlora_packing --out "$OUT/throughput-135m-qlora.json" > "$OUT/qlora.log" 2>&1
    # where the time goes: 8 steps of each packed QLoRA system under torch.profiler (slower than the timed runs)
    TS_PROFILE="$OUT/profile-135m-qlora" "${B[@]}" --steps 8 --systems trl_qlora_packing,tunespec_qlora_packing > "$OUT/qlora-profile.log" 2>&1 ;;
  lora)
    "${B[@]}" --steps 20 --systems seed_lora,trl,trl_packing,tunespec,tunespec_packing --out "$OUT/throughput-135m-lora.json" > "$OUT/lora.log" 2>&1 ;;
  1b)
    "${B[@]}" --steps 16 --shape 1b --systems trl_packing,tunespec,tunespec_packing --out "$OUT/throughput-1b.json" > "$OUT/1b.log" 2>&1 ;;
  *) echo "unknown part $PART" >&2; exit 2 ;;
esac
tail -4 "$OUT"/*.log
