"""Does data selection help? Train on the half the selection keeps, on random halves, and on all rows, for the
same number of steps, and score each on the same held-out rows.

    python benchmarks/selection.py --gguf-dir DIR --data DEV.jsonl --out OUT.json \
        [--workload dialogsum|alpaca] [--steps 150] [--runs all,ifd,kcenter,random0,random1] [--parallel 5]

Workload: quality_defaults.py's (SmolLM2-135M-Instruct from the GGUF, its chat template, LoRA r16 on every
linear layer, the workload's held-out rows), with micro-batches fixed at 8 rows and `--steps` optimizer steps
for every run, so each run takes the same number of steps of the same size: 150 steps of 8 rows are 3 epochs
of DialogSum's 400 train rows, or 6 of a half.

1. `tunespec score-data` scores the train rows with the base model (IFD and embeddings) into one file.
2. Runs (`data.selection` as the spec's user would write it):
   * `all`: every train row.
   * `ifd`: `ifd: {file, keep: 0.5}`: the half whose instruction helps the answer most.
   * `kcenter`: `kcenter: {file, keep: 0.5}`: the half k-center greedy spreads widest.
   * `randomN`: a random half: the same IFD rule over a copy of the scores file whose IFD values are replaced
     by uniform random numbers in [0, 1) drawn with seed N (so the half is picked by the same code path,
     and the held-out rows are the same).
3. Each run is trained and scored by `tunespec evaluate` (ROUGE for dialogsum, eval loss for alpaca).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_defaults as q  # noqa: E402  (the workloads, compile and evaluate steps are shared)


def score(args, work: Path, env: dict) -> Path:
    out = work / "scores.jsonl"
    cmd = [sys.executable, "-m", "tunespec.cli", "score-data", str(q.WORKLOADS[args.workload][0]), "-o", str(out),
           "--embeddings"]
    for s in q.model_sets(args.gguf_dir) + [f"data.sources.0.path={args.data}"]:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    q.sh(cmd, work / "score.log", env)
    print(f"score-data: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def randomized(scores: Path, seed: int) -> Path:
    """The scores file with every IFD replaced by a seeded uniform draw in [0, 1) (embeddings dropped)."""
    rng = random.Random(seed)
    lines = scores.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    header.pop("embedding_dim", None)
    out = [json.dumps(header)]
    for line in lines[1:]:
        row = json.loads(line)
        out.append(json.dumps({"id": row["id"], "ifd": rng.random()}))
    path = scores.with_name(f"scores-random{seed}.jsonl")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def runs(scores: Path, names: list[str]) -> dict[str, list[str]]:
    table = {"all": [], "ifd": [f"data.selection.ifd={{file: {scores}, keep: 0.5}}"],
             "kcenter": [f"data.selection.kcenter={{file: {scores}, keep: 0.5}}"]}
    for name in names:
        if name.startswith("random"):
            table[name] = [f"data.selection.ifd={{file: {randomized(scores, int(name[6:]))}, keep: 0.5}}"]
    return {n: table[n] for n in names}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf-dir", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--workload", choices=["dialogsum", "alpaca"], default="dialogsum")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--runs", default="all,ifd,kcenter,random0,random1")
    ap.add_argument("--parallel", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/selection"))
    args = ap.parse_args()
    work = args.work / args.workload
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    scores = score(args, work, env)
    fixed = ["training.micro_batch_size=8", f"training.max_steps={args.steps}"]
    table = runs(scores, args.runs.split(","))
    results: dict[str, dict] = {}

    def one(name: str) -> tuple[str, dict]:
        try:
            return name, q.run_tunespec(f"sel-{name}", fixed + table[name], args, work, env)
        except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
            return name, {"error": str(e)}

    with ThreadPoolExecutor(args.parallel) as pool:
        for name, r in pool.map(one, table):
            results[name] = r
            if args.out:
                args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name}: {r.get('error') or (str(r.get('train_rows')) + ' rows, ' + q.headline(r))}")


if __name__ == "__main__":
    main()
