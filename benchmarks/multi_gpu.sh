#!/usr/bin/env bash
# Issue #9 on a host with two GPUs (the lent nvidia-h200-x2): one spec, four launch sections (single,
# multi_gpu = DDP, fsdp, deepspeed = ZeRO-3 with CPU offload), the same global batch of 16 rows; and
# QLoRA (4-bit NF4 base, quant storage bf16) on one GPU and under FSDP (single_qlora, fsdp_qlora).
# For each: the loss of every step (train/metrics.jsonl) and tokens/s; the sharded runs are sent
# SIGTERM once checkpoint-8 exists, resumed through launch.sh, then merged.
# TOPOS="single deepspeed" runs a subset (default: all six).
# Expects: DialogSum dev at $DATA/dev.jsonl, SmolLM2's config + tokenizer at $CONFIG (random weights are
# made from it: losses agree between topologies, they say nothing of quality), tunespec and its
# dependencies importable. Writes $OUT/multi_gpu.json and logs.
set -uo pipefail
OUT=${OUT:-/tmp/out}; DATA=${DATA:-$PWD/.gpu/data}; CONFIG=${CONFIG:-$PWD/.gpu/smol-config}
STEPS=${STEPS:-16}; TOPOS=${TOPOS:-single multi_gpu fsdp deepspeed single_qlora fsdp_qlora}; B=/tmp/mg; mkdir -p "$OUT" "$B"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TUNESPEC_CACHE=/tmp/tscache
TS="python3 -m tunespec.cli"
MODEL=$B/model
python3 - "$CONFIG" "$MODEL" <<'PY'
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
config = AutoConfig.from_pretrained(sys.argv[1]); torch.manual_seed(0)
AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(sys.argv[2])
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
PY
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
COMMON=(--set model.packaged=null --set "model.path=$MODEL" --set "data.sources.0.path=$DATA/dev.jsonl"
        --set training.max_steps=$STEPS --set training.save_steps=8 --set training.logging_steps=1
        --set training.warmup_steps=2 --set training.torch_compile=false --set "evaluation.metrics=[loss]"
        --set training.micro_batch_size=8)
declare -A LAUNCH=(
  [single]="{topology: single}"
  [multi_gpu]="{topology: multi_gpu, num_processes: 2}"
  [fsdp]="{topology: fsdp, num_processes: 2}"
  [deepspeed]="{topology: deepspeed, num_processes: 2, zero_stage: 3, offload_optimizer: true, offload_params: true}"
  [single_qlora]="{topology: single}"
  [fsdp_qlora]="{topology: fsdp, num_processes: 2}"
)
QLORA=(--set quantization.quant_storage=bfloat16)
for topo in $TOPOS; do
  accum=$(case $topo in single*) echo 2;; *) echo 1;; esac)  # 16 rows per optimizer step everywhere
  spec=benchmarks/specs/dialogsum-dev-lora.yaml; extra=()
  case $topo in *_qlora) spec=benchmarks/specs/dialogsum-dev-qlora.yaml; extra=("${QLORA[@]}");; esac
  echo "=== $topo"
  $TS compile $spec -o $B/$topo --force "${COMMON[@]}" "${extra[@]}" \
      --set "launch=${LAUNCH[$topo]}" --set training.gradient_accumulation_steps=$accum > "$OUT/$topo.log" 2>&1 || { tail -5 "$OUT/$topo.log"; continue; }
  start=$(python3 -c "import time; print(time.time())")
  if [[ $topo == single* || $topo == multi_gpu ]]; then
    timeout ${RUN_TIMEOUT:-300} bash $B/$topo/launch.sh >> "$OUT/$topo.log" 2>&1; echo "exit $?" >> "$OUT/$topo.log"
  else
    timeout ${RUN_TIMEOUT:-300} bash $B/$topo/launch.sh >> "$OUT/$topo.log" 2>&1 & pid=$!
    while [ ! -d $B/$topo/train/checkpoint-8 ] && kill -0 $pid 2>/dev/null; do sleep 0.5; done
    pkill -TERM -f "tunespec.*train" ; wait $pid; echo "first run exit $?" >> "$OUT/$topo.log"
    timeout ${RUN_TIMEOUT:-300} bash $B/$topo/launch.sh >> "$OUT/$topo.log" 2>&1; echo "resumed run exit $?" >> "$OUT/$topo.log"
    timeout 200 $TS merge $B/$topo >> "$OUT/$topo.log" 2>&1; echo "merge exit $?" >> "$OUT/$topo.log"
  fi
  python3 -c "import time; print(\"wall\", round(time.time() - $start, 1))" >> "$OUT/$topo.log"
  cp $B/$topo/train/metrics.jsonl "$OUT/metrics-$topo.jsonl" 2>/dev/null
  grep -E "resuming|saved|exit|wall|merged|logit" "$OUT/$topo.log" | tail -8
done
python3 - "$OUT" $TOPOS <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); res = {}
for topo in sys.argv[2:]:
    p = out / f"metrics-{topo}.jsonl"
    if not p.exists():
        continue
    recs = [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
    steps = {r["step"]: r for r in recs if "loss" in r}
    res[topo] = {"loss": {s: steps[s]["loss"] for s in sorted(steps)},
                 "tokens_per_s": [steps[s].get("tokens_per_s") for s in sorted(steps)],
                 "peak_memory_gib": max((r.get("peak_memory_gib") or 0) for r in steps.values())}
for topo, r in res.items():
    base = res.get("single_qlora" if topo.endswith("_qlora") else "single", {}).get("loss", {})
    common = [s for s in r["loss"] if s in base]
    r["max_abs_loss_diff_vs_single"] = max((abs(r["loss"][s] - base[s]) for s in common), default=None)
    tps = [t for t in r["tokens_per_s"][3:] if t]
    r["median_tokens_per_s_after_3"] = sorted(tps)[len(tps) // 2] if tps else None
(out / "multi_gpu.json").write_text(json.dumps(res, indent=1))
for topo, r in res.items():
    print(topo, "max |loss - single(_qlora)|:", r["max_abs_loss_diff_vs_single"], "tokens/s:", r["median_tokens_per_s_after_3"], "peak GiB:", r["peak_memory_gib"])
PY
