#!/usr/bin/env bash
# The GPU runs behind BENCHMARKS.md and the issues' GPU figures, run on the lent H100 (no network).
# Expects: the SmolLM2 GGUF at $GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf, DialogSum dev at $DATA/dev.jsonl,
# tunespec importable (PYTHONPATH) with its dependencies. Writes logs and JSON results to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; GGUF_DIR=${GGUF_DIR:-/tmp/gguf}; DATA=${DATA:-$PWD/.gpu/data}
B=/tmp/builds; mkdir -p "$OUT" "$B"
export TUNESPEC_CACHE=/tmp/tscache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
TS="python3 -m tunespec.cli"
MODEL=(--set model.packaged=null --set "model.path=$GGUF_DIR" --set model.gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__)" | tee -a "$OUT/gpu.txt"

train_kill_resume() {  # BUILD STEP: train, SIGTERM once checkpoint-STEP exists, resume to the end
  local build=$1 step=$2
  $TS train "$build" & local pid=$!
  while [ ! -d "$build/train/checkpoint-$step" ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
  kill -TERM $pid 2>/dev/null; wait $pid; echo "first run exit code: $?"
  $TS train "$build"
}

echo "=== quickstart on the GPU: compile, train (SIGTERM after checkpoint-20, resume), merge, evaluate"
$TS compile specs/quickstart.yaml -o $B/qs "${MODEL[@]}" 2>&1 | tee "$OUT/quickstart.log"
{ time train_kill_resume $B/qs 20; } 2>&1 | tee -a "$OUT/quickstart.log"
$TS merge $B/qs 2>&1 | tee -a "$OUT/quickstart.log"
$TS evaluate $B/qs 2>&1 | tee -a "$OUT/quickstart.log"
cp $B/qs/train/metrics.jsonl "$OUT/quickstart-metrics.jsonl"

for v in lora qlora; do
  echo "=== DialogSum dev $v: 400 train / 100 test"
  $TS compile benchmarks/specs/dialogsum-dev-$v.yaml -o $B/$v "${MODEL[@]}" --set "data.sources.0.path=$DATA/dev.jsonl" 2>&1 | tee "$OUT/dialogsum-$v.log"
  { time train_kill_resume $B/$v 25; } 2>&1 | tee -a "$OUT/dialogsum-$v.log"
  $TS merge $B/$v 2>&1 | tee -a "$OUT/dialogsum-$v.log"
  $TS evaluate $B/$v 2>&1 | tee -a "$OUT/dialogsum-$v.log"
  cp $B/$v/eval/rouge.json "$OUT/rouge-$v.json"
  cp $B/$v/train/metrics.jsonl "$OUT/metrics-$v.jsonl"
done

echo "=== batched generation vs the seed loop, 64 DialogSum dev dialogues"
python3 benchmarks/generation.py $B/lora --n 64 --model base --json "$OUT/generation.json" 2>&1 | tail -20
