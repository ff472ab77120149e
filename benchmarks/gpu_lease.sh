#!/usr/bin/env bash
# One GPU lease, in calls back to back (each under 10 minutes):
#   bash benchmarks/gpu_lease.sh quality      # defaults vs packing vs TRL on DialogSum (ROUGE), Alpaca and
#                                             # glaive (eval loss), real weights; and the quickstart on 2 of
#                                             # the host's CPU cores with the GPU hidden (its CPU has AVX512-BF16)
#   bash benchmarks/gpu_lease.sh selection    # benchmarks/selection.py on DialogSum
#   bash benchmarks/gpu_lease.sh throughput   # train_throughput.py, one system at a time: 135M, 1B, 8B, 8B QLoRA
#                                             # (SHAPES= picks some; Unsloth's wheels at /tmp/site-uns)
#   bash benchmarks/gpu_lease.sh profile      # torch.profiler tables: RUNS="8b:tunespec_defaults 8b-qlora:..."
#   bash benchmarks/gpu_lease.sh memory       # what is alive at the peak, by allocating line: RUNS as for profile
#   bash benchmarks/gpu_lease.sh all          # quality and selection at once, fewer runs (one call's time)
# Expects: the wheels installed (PYTHONPATH=/tmp/site:$PWD), the GGUF joined at $GGUF_DIR, ../shared/data's
# files at $DATA (dev.jsonl, alpaca_en_demo.json, glaive_toolcall_en_demo.json). Writes JSON and logs to $OUT.
set -uo pipefail
PART=${1:?usage: gpu_lease.sh quality|selection|throughput|all}
OUT=${OUT:-/tmp/out}; DATA=${DATA:-$PWD/.gpu/data}; GGUF_DIR=${GGUF_DIR:-/tmp/gguf}
GGUF=$(ls "$GGUF_DIR"/*.gguf 2>/dev/null | head -1)
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TUNESPEC_CACHE=${TUNESPEC_CACHE:-/tmp/tscache}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  lscpu | grep -E 'Model name|^CPU\(s\)'; grep -o -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo | sort | uniq -c
  python3 -c "import torch, transformers, peft, accelerate, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'trl', trl.__version__)"
  python3 -c "from importlib.metadata import version as v; print(*(f'{p} {v(p)}' for p in ('bitsandbytes', 'liger-kernel')))"
  PYTHONPATH=/tmp/site-uns python3 -c "from importlib.metadata import version as v; print('for unsloth:', *(f'{p} {v(p)}' for p in ('unsloth', 'unsloth_zoo', 'trl', 'datasets')))"
  date -u +%Y-%m-%dT%H:%M:%SZ; } > "$OUT/gpu-$PART.txt" 2>&1
LAST=$(( $(nproc) - 1 ))
GPU_CPUS="0-$(( LAST - 2 ))"  # the GPU runs keep off the two cores the quickstart is timed on
# the GGUF converted once, before runs in parallel read the cache (the throughput part has random weights)
[ "$PART" = throughput ] || [ "$PART" = profile ] || taskset -c "$GPU_CPUS" python3 -c "from tunespec.model_resolver import ModelRef, resolve; resolve(ModelRef(path='$GGUF_DIR', gguf_file='$(basename "$GGUF")'))"
q() { taskset -c "$GPU_CPUS" python3 benchmarks/quality_defaults.py --gguf-dir "$GGUF_DIR" --work /tmp/q --converted "$@"; }
# one workload: NAME DATA-FILE RUNS PARALLEL, JSON and log to $OUT
workload() { q --workload "$1" --data "$DATA/$2" --runs "$3" --parallel "$4" --out "$OUT/quality-$1.json" > "$OUT/quality-$1.log" 2>&1; }
# the quickstart on the two cores the GPU runs keep off, CUDA hidden, an empty cache; its wall time to the log
quickstart_timed() {
  local start=$(date +%s)
  CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 TUNESPEC_CACHE=/tmp/qs-cache taskset -c "$(( LAST - 1 )),$LAST" \
    python3 -m tunespec.cli run specs/quickstart.yaml -o /tmp/qs-build --set model.packaged=null \
    --set model.path="$GGUF_DIR" --set model.gguf_file="$(basename "$GGUF")" > "$OUT/quickstart.log" 2>&1
  echo "quickstart rc=$? wall_s=$(( $(date +%s) - start ))" >> "$OUT/quickstart.log"
}
# one train_throughput.py process per RUNS entry ("SHAPE:SYSTEM", SHAPE as in throughput) with VAR=$OUT/PREFIX-SHAPE
# in its environment (TS_PROFILE, TS_MEMORY): single_runs VAR PREFIX STEPS TIMEOUT DEFAULT_RUNS
single_runs() {
  local var=$1 prefix=$2 run s sys shape
  for run in ${RUNS:-$5}; do
    s=${run%%:*}; sys=${run#*:}; shape=(--shape "${s%-qlora}"); [ "$s" = 135m ] && shape=(--random-weights)
    env UNSLOTH_SITE=/tmp/site-uns "$var=$OUT/$prefix-$s" python3 benchmarks/train_throughput.py \
      --data "$DATA/dev.jsonl" --model-dir "$DATA/../smol-config" --repeat 10 --steps "${STEPS:-$3}" \
      --timeout "${TIMEOUT:-$4}" "${shape[@]}" --systems "$sys" --out "$OUT/$prefix-$s-$sys.json" \
      > "$OUT/$prefix-$s-$sys.log" 2>&1
  done
}
case $PART in
  quality)
    quickstart_timed &
    workload dialogsum dev.jsonl ts-defaults,ts-packing,trl,ts-defaults-seed1 3 &
    workload alpaca alpaca_en_demo.json ts-defaults,ts-packing,trl 2 &
    workload glaive glaive_toolcall_en_demo.json ts-defaults,ts-packing,trl 2 &
    wait
    cp /tmp/qs-build/eval/rouge.json "$OUT/quickstart-rouge.json" 2>/dev/null
    tail -n 5 "$OUT"/quality-*.log; tail -n 25 "$OUT/quickstart.log" ;;
  all)  # quality and selection at once, fewer runs each: for a lease with time for one long call
    quickstart_timed &
    workload dialogsum dev.jsonl "${DS_RUNS:-ts-defaults,trl}" 2 &
    [ -n "${NO_ALPACA:-}" ] || workload alpaca alpaca_en_demo.json ts-defaults,trl 2 &
    workload glaive glaive_toolcall_en_demo.json ts-defaults,trl 2 &
    taskset -c "$GPU_CPUS" python3 benchmarks/selection.py --gguf-dir "$GGUF_DIR" --data "$DATA/dev.jsonl" \
      --runs ${SEL_RUNS:-all,ifd,kcenter,random0} --parallel 4 --out "$OUT/selection-dialogsum.json" \
      > "$OUT/selection.log" 2>&1 &
    wait
    tail -n 5 "$OUT"/quality-*.log "$OUT/selection.log"; tail -n 25 "$OUT/quickstart.log" ;;
  selection)
    taskset -c "$GPU_CPUS" python3 benchmarks/selection.py --gguf-dir "$GGUF_DIR" --data "$DATA/dev.jsonl" \
      --parallel 5 --out "$OUT/selection-dialogsum.json" > "$OUT/selection.log" 2>&1
    tail -n 8 "$OUT/selection.log" ;;
  throughput*)  # train_throughput.py, one system at a time, on DialogSum dev x 10 (so the defaults take the
    # full 16k-token budget); SHAPES="135m 1b 8b 8b-qlora" picks the workloads (all by default)
    T=(python3 benchmarks/train_throughput.py --data "$DATA/dev.jsonl" --model-dir "$DATA/../smol-config"
       --repeat 10 --steps "${STEPS:-10}" --timeout "${TIMEOUT:-240}")
    LORA=${LORA_SYSTEMS:-seed_lora,trl_packing,trl_liger_packing,unsloth_packing,tunespec_defaults}
    QLORA=${QLORA_SYSTEMS:-seed_qlora,trl_qlora_packing,trl_liger_qlora_packing,unsloth_qlora_packing,tunespec_qlora_defaults}
    for s in ${SHAPES:-135m 1b 8b 8b-qlora}; do
      case $s in
        135m) args=(--random-weights --systems "$LORA") ;;
        1b|8b) args=(--shape "$s" --systems "$LORA") ;;
        8b-qlora) args=(--shape 8b --systems "$QLORA") ;;
      esac
      UNSLOTH_SITE=/tmp/site-uns "${T[@]}" "${args[@]}" --out "$OUT/throughput-$s.json" > "$OUT/throughput-$s.log" 2>&1
    done
    tail -n 8 "$OUT"/throughput-*.log ;;
  profile)  # torch.profiler tables of single systems: RUNS="SHAPE:SYSTEM ..." (SHAPE as in throughput)
    single_runs TS_PROFILE profile 6 400 "8b:tunespec_defaults 8b-qlora:tunespec_qlora_defaults"
    tail -n 4 "$OUT"/profile-*.log ;;
  memory)  # what is alive at each system's peak, by allocating line (memory_peak.py): RUNS as for profile
    single_runs TS_MEMORY memory 5 300 "8b:tunespec_defaults 8b:unsloth_packing"
    head -c 1500 "$OUT"/memory-*-peak.json ;;
  *) echo "unknown part $PART" >&2; exit 2 ;;
esac
