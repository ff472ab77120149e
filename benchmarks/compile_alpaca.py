"""Benchmark: compile 52,000 Alpaca-style rows with the SmolLM2 tokenizer, versus the seed pipeline.

The rows are the 999 rows of ``../shared/data/alpaca/alpaca_en_demo.json`` repeated, each instruction
suffixed with its row number so that all 52,000 are distinct (as specified; each output then occurs
52 times). A second data set also suffixes the output, so that no text repeats at all: tunespec
tokenizes each distinct text once, which the first data set favours. Compared, on the CPU:

* ``tunespec compile`` (the CLI in a subprocess, end to end: start-up, imports, tokenizer loading,
  reading, templating, masked tokenization, writing and hashing the build; the packaged model's GGUF is
  converted once beforehand and cached, as it is after the first use). A model directory compiled once
  is in tunespec's compile cache (``compiler.model_cache.load_for_compile``): its tokenizer loads with the
  ``tokenizers`` library and neither transformers nor torch is imported;
* the same, the first time this model directory is compiled (compile cache emptied before: transformers
  and torch are imported to load the tokenizer and config, which are then stored in the cache);
* ``compile_build`` in-process (imports done, like the seed pipeline below; tokenizer loading included);
* the seed notebook's pipeline: ``datasets.Dataset.from_list(rows).map(fn)`` where ``fn`` formats the
  Alpaca prompt and tokenizes ``prompt + output`` one row at a time (``batched=False``), timed
  in-process from ``from_list`` to the end of ``map`` (imports and tokenizer loading not counted);
* the same with ``batched=True`` (1,000 rows per call), for fairness.

Usage: ``python benchmarks/compile_alpaca.py [--rows N] [--repeat K] [--no-write]``. Prints a markdown
table and replaces the section "## Compile: 52,000 Alpaca rows (CPU)" of BENCHMARKS.md at the
repository root (creating the file if needed; nothing else in it is touched).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "alpaca" / "alpaca_en_demo.json"
SECTION = "## Compile: 52,000 Alpaca rows (CPU)"

WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class Clock:
    """Wall time and CPU time (this process's threads and its finished children, user + system)."""

    def __enter__(self):
        self.wall0 = time.perf_counter()
        self.cpu0 = self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = self._cpu() - self.cpu0

    @staticmethod
    def _cpu() -> float:
        import resource

        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_rows(n: int, *, distinct_outputs: bool = False) -> list[dict]:
    """`n` rows: the demo rows repeated, the instruction (and with `distinct_outputs` the output too)
    suffixed with the row number."""
    base = json.loads(SHARED.read_text(encoding="utf-8"))
    rows = []
    for i in range(n):
        r = base[i % len(base)]
        output = f"{r['output']} (#{i})" if distinct_outputs else r["output"]
        rows.append({"instruction": f"{r['instruction']} (#{i})", "input": r["input"], "output": output})
    return rows


def seed_pipeline(rows: list[dict], tokenizer, *, batched: bool) -> tuple[Clock, int]:
    """The seed notebook's preprocessing; returns its clock and the total number of tokens."""
    import datasets

    datasets.disable_progress_bars()

    def prompt(instruction: str, input_text: str) -> str:
        if input_text:
            return WITH_INPUT.format(instruction=instruction, input=input_text)
        return NO_INPUT.format(instruction=instruction)

    def fn(row):
        return tokenizer(prompt(row["instruction"], row["input"]) + row["output"])

    def fn_batched(batch):
        texts = [prompt(i, x) + o for i, x, o in zip(batch["instruction"], batch["input"], batch["output"])]
        return tokenizer(texts)

    with Clock() as clock:
        ds = datasets.Dataset.from_list(rows)
        ds = ds.map(fn_batched if batched else fn, batched=batched, remove_columns=ds.column_names)
    return clock, sum(len(x) for x in ds["input_ids"])


def run_tunespec_cli(spec: Path, out: Path, env: dict, *, fresh: bool = True) -> tuple[Clock, dict]:
    """`tunespec compile` in a subprocess, end to end (`fresh`: into a new directory)."""
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    with Clock() as clock:
        proc = subprocess.run([sys.executable, "-m", "tunespec.cli", "compile", str(spec), "-o", str(out)],
                              env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"tunespec compile failed:\n{proc.stderr}")
    return clock, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def run_tunespec_inprocess(spec: Path, out: Path) -> Clock:
    """`compile_build` in this process (imports done, as for the seed pipeline; tokenizer loading included)."""
    from tunespec.compiler.build_writer import compile_build
    from tunespec.spec.loader import load_spec

    shutil.rmtree(out, ignore_errors=True)
    loaded = load_spec(spec)
    with Clock() as clock:
        compile_build(loaded, out, log=lambda s: None)
    return clock


def update_benchmarks_md(text: str) -> Path:
    path = REPO / "BENCHMARKS.md"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + text + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    path.write_text(new, encoding="utf-8")
    return path


def write_spec(work: Path, name: str, rows: list[dict]) -> Path:
    data = work / f"{name}.json"
    data.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    spec = work / f"{name}.yaml"
    spec.write_text(json.dumps({
        "name": name,
        "model": {"packaged": "smollm2-135m-instruct"},
        "data": {"format": "alpaca", "sources": [{"path": str(data)}], "template": "alpaca",
                 "tokenization": {"max_length": 2048}},
    }, indent=1), encoding="utf-8")
    return spec


def measure(rows: list[dict], spec: Path, work: Path, tokenizer, env: dict, repeat: int, entry: Path) -> dict:
    """The best wall and CPU time of `repeat` runs of each pipeline (on a shared machine the minimum is the
    least disturbed run; CPU time is what the work itself costs, whatever else runs)."""
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    info: dict = {}

    def keep(key: str, clock: Clock) -> None:
        wall[key] = min(wall.get(key, float("inf")), clock.wall)
        cpu[key] = min(cpu.get(key, float("inf")), clock.cpu)

    for _ in range(repeat):
        shutil.rmtree(entry, ignore_errors=True)  # the model's compile cache entry: loaded with transformers
        keep("cold", run_tunespec_cli(spec, work / "build-cold", env)[0])
        clock, info["manifest"] = run_tunespec_cli(spec, work / "build-cli", env)
        keep("cli", clock)
        keep("cached", run_tunespec_cli(spec, work / "build-cli", env, fresh=False)[0])
        keep("inprocess", run_tunespec_inprocess(spec, work / "build-inprocess"))
        clock, info["seed_tokens"] = seed_pipeline(rows, tokenizer, batched=False)
        keep("seed", clock)
        keep("seed_batched", seed_pipeline(rows, tokenizer, batched=True)[0])
    return {"wall": wall, "cpu": cpu, **info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=52_000)
    ap.add_argument("--repeat", type=int, default=1, help="Runs of each pipeline; the best is reported.")
    ap.add_argument("--no-write", action="store_true", help="Do not update BENCHMARKS.md.")
    args = ap.parse_args()
    if not SHARED.is_file():
        print(f"skipped: ../shared/data not present ({SHARED}); the benchmark needs the Alpaca demo rows")
        return

    env = dict(os.environ)
    env.setdefault("TUNESPEC_CACHE", str(Path(tempfile.gettempdir()) / "tunespec-test-cache"))
    os.environ["TUNESPEC_CACHE"] = env["TUNESPEC_CACHE"]
    env["PYTHONWARNINGS"] = "ignore"

    from transformers import AutoTokenizer

    from tunespec.compiler.model_cache import compile_cache_entry
    from tunespec.model_resolver import ModelRef, resolve

    ref = ModelRef(packaged="smollm2-135m-instruct")
    model_dir = resolve(ref)  # converted once, cached (as after first use)
    entry = compile_cache_entry(ref, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    work = Path(tempfile.mkdtemp(prefix="tunespec-bench-"))
    results = {}
    load_before = os.getloadavg()[0]
    try:
        for key, distinct in (("repeated", False), ("distinct", True)):
            rows = make_rows(args.rows, distinct_outputs=distinct)
            spec = write_spec(work, f"alpaca-{key}", rows)
            results[key] = measure(rows, spec, work, tokenizer, env, args.repeat, entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()[0]
    import tokenizers
    import transformers

    n = args.rows
    table = [
        "| data | pipeline | wall (s) | CPU (s) | rows/s (wall) | seed `batched=False` ÷ this, wall | ÷ this, CPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = {
        "cli": "`tunespec compile` CLI, end to end (start-up, imports, tokenizer loading included)",
        "cold": "the same, first compile of this model directory (compile cache empty: transformers and torch "
                "imported)",
        "inprocess": "tunespec `compile_build` in-process (imports done; tokenizer loading included)",
        "seed": "seed: `Dataset.from_list(rows).map(fn)`, `batched=False` (in-process)",
        "seed_batched": "seed, `batched=True` (in-process)",
        "cached": "`tunespec compile` again, unchanged (input key matches: nothing redone)",
    }
    what = {"repeated": "instruction suffixed (as specified): each output occurs 52×",
            "distinct": "instruction and output suffixed: no repeated text"}
    for key, r in results.items():
        w, c = r["wall"], r["cpu"]
        for p in ("cli", "cold", "inprocess", "seed", "seed_batched", "cached"):
            ratio = f"{w['seed'] / w[p]:.1f}× | {c['seed'] / c[p]:.1f}×" if p != "cached" else " | "
            rate = f"{n / w[p]:,.0f}" if p != "cached" else ""
            table.append(f"| {what[key]} | {labels[p]} | {w[p]:.1f} | {c[p]:.1f} | {rate} | {ratio} |")
    st = results["repeated"]["manifest"]["splits"]["train"]
    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    text = "\n".join([
        SECTION,
        "",
        f"{n:,} Alpaca rows made from the 999 rows of `alpaca_en_demo.json`, SmolLM2-135M-Instruct tokenizer, "
        f"template `alpaca`, on {cpu}; Python {platform.python_version()}, transformers {transformers.__version__}, "
        f"tokenizers {tokenizers.__version__}; best of {args.repeat} run(s) each. tunespec kept all {st['rows']:,} rows: "
        f"{st['tokens']:,} tokens ({st['trained_fraction']:.0%} trained), written with their masks, the rendered rows, "
        f"the tokenizer, launch files, manifest and lock, every file hashed. The seed pipeline only tokenizes "
        f"`prompt + output` ({results['repeated']['seed_tokens']:,} tokens: no EOS, no mask, nothing written). "
        "tunespec tokenizes each distinct text once, so the first data set (every output 52 times) favours it; "
        "the second has no repeated text. A model directory compiled before is in tunespec's compile cache: its "
        "tokenizer loads with the `tokenizers` library, without transformers or torch (the row 'first compile' "
        "empties the cache first). CPU time counts every thread and child process (user + system): on a "
        f"machine shared with other work it is the steadier measure (1-minute load average {load_before:.1f} at the "
        f"start, {load_after:.1f} at the end of this run).",
        "",
        *table,
        "",
        "Reproduce: `python benchmarks/compile_alpaca.py [--repeat 3]`.",
        "",
    ])
    print(text)
    if not args.no_write:
        print(f"(written to {update_benchmarks_md(text)})", file=sys.stderr)


if __name__ == "__main__":
    main()
