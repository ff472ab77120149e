"""``evaluation.benchmarks`` at compile time: each lm-evaluation-harness task checked offline and pinned.

Two steps. :func:`read_inputs` (before the input key) finds each benchmark's task: a local task YAML
(``file:``) or a sample tunespec ships (``task: tunespec_sample_mc``) is read with its local data files and
hashed; a harness task name is kept with lm-eval's version. :func:`check` (before anything is written)
builds every task with lm-eval, offline, so an unknown name, a config lm-eval refuses, data that is not on
this machine, or a num_fewshot the harness would ignore stops the compile (exit 2, the task named); it
hashes the documents evaluated. :func:`install_files` copies the YAML and its data files into
``BUILD/benchmarks/<task>/`` (the runtime loads the task from those copies only) and gives the manifest's
and the lock's records.

``config_sha256`` is the sha256 of the task YAML's bytes for a file task, and of the config as lm-eval
resolved it (``Task.dump_config``) for a harness task; ``docs_sha256`` is the sha256 of the documents
evaluated (harness.docs_sha256), checked again by the runtime before it scores anything.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import build_layout as layout
from .. import harness
from ..errors import BuildError, Problem
from ..hashing import sha256_bytes, sha256_file

BENCH_DIR = "benchmarks"


@dataclass
class BenchInput:
    """One benchmark as the spec gives it, with its files found and hashed."""

    index: int
    name: str  # the task's name (results are reported under it)
    source: str  # "file" | "tunespec" | "lm-eval"
    spec: Any  # spec.evaluation.BenchmarkSpec
    yaml: Path | None = None
    config: dict | None = None  # the YAML's mapping (file tasks)
    data_files: Any = None  # its data_files resolved (absolute), or None (hub data)
    config_sha256: str | None = None
    data: list[tuple[Path, str]] = field(default_factory=list)  # (absolute file, sha256), in data_files order
    checked: dict = field(default_factory=dict)  # what check() found: docs, docs_sha256, num_fewshot, ...

    @property
    def where(self) -> str:
        return f"evaluation.benchmarks.{self.index}." + ("file" if self.source == "file" else "task")


def _flat(files: Any) -> list[str]:
    if files is None:
        return []
    if isinstance(files, dict):
        return [f for v in files.values() for f in _flat(v)]
    if isinstance(files, list):
        return list(files)
    return [files]


def read_inputs(benchmarks) -> tuple[list[BenchInput], str | None]:
    """The spec's benchmarks with their task files read and hashed, and lm-eval's version (None: no benchmarks)."""
    if not benchmarks:
        return [], None
    version = harness.require()
    out: list[BenchInput] = []
    names: dict[str, str] = {}
    for i, b in enumerate(benchmarks):
        path = Path(b.file) if b.file else harness.packaged(b.task)
        if path is None:
            item = BenchInput(i, b.task, "lm-eval", b)
        else:
            item = BenchInput(i, "", "file" if b.file else "tunespec", b, yaml=path)
            item.config = harness.read_task_file(path, item.where)
            item.name = item.config["task"]
            item.data_files = harness.data_files_of(item.config, path, item.where)
            item.config_sha256 = sha256_bytes(path.read_bytes())
            item.data = [(Path(f), sha256_file(Path(f))) for f in _flat(item.data_files)]
        if item.name in names:
            raise BuildError(Problem(f"the task `{item.name}` is benchmarked twice (also at {names[item.name]})",
                                     path=item.where, hint="list each task once"))
        names[item.name] = item.where
        out.append(item)
    return out, version


def key_payload(items: list[BenchInput], version: str | None) -> list[dict] | None:
    """What the input key hashes of the benchmarks: each task's config and data hashes (harness tasks: lm-eval's
    version, which fixes their configs)."""
    if not items:
        return None
    return [{"task": b.name, "source": b.source, "config_sha256": b.config_sha256,
             "data": [s for _, s in b.data], **({"lm_eval": version} if b.source == "lm-eval" else {})} for b in items]


def check(items: list[BenchInput]) -> list[Problem]:
    """Build every task with lm-eval, offline; record its documents and settings in ``item.checked``. Returns
    warnings (few-shot examples drawn from the evaluated documents)."""
    if not items:
        return []
    warnings: list[Problem] = []
    plain = harness.task_manager(defaults=False)
    index = harness.task_manager(defaults=True) if any(b.source == "lm-eval" for b in items) else None
    for b in items:
        if b.source == "lm-eval":
            harness.check_harness_name(index, b.name, b.where)
            task = harness.load_task(index, b.name, b.name, b.where)
            b.config_sha256 = harness.config_sha256(task)
        else:
            task = harness.load_task(plain, harness.with_data_files(b.config, b.data_files), b.name, b.where,
                                     file=str(b.yaml))
        docs = harness.eval_docs(task)
        if not docs:
            raise BuildError(Problem(f"the task `{b.name}` has no documents to evaluate", path=b.where,
                                     file=str(b.yaml) if b.yaml else None, hint="check its data and test_split"))
        _render_first(task, docs[0], b)
        own = task.config.num_fewshot
        if b.spec.num_fewshot is not None and own == 0 and b.spec.num_fewshot != 0:
            raise BuildError(Problem(f"the task `{b.name}` fixes num_fewshot: 0 in its config, and lm-eval ignores "
                                     f"any other value (num_fewshot: {b.spec.num_fewshot} would not be used)",
                                     path=f"evaluation.benchmarks.{b.index}.num_fewshot",
                                     hint="remove num_fewshot, or change it in the task file"))
        shots = b.spec.num_fewshot if b.spec.num_fewshot is not None else (own or 0)
        if shots and not harness.has_fewshot_docs(task):
            warnings.append(Problem(f"the task `{b.name}` has no training or validation split: lm-eval draws its "
                                    f"{shots} few-shot examples from the evaluated documents (never the one asked)",
                                    path=f"evaluation.benchmarks.{b.index}.num_fewshot",
                                    hint="add a training_split or fewshot_split to the task, or use num_fewshot: 0"))
        b.checked = {"output_type": task.config.output_type, "docs": len(docs),
                     "evaluated": min(len(docs), b.spec.limit or len(docs)), "docs_sha256": harness.docs_sha256(docs),
                     "num_fewshot": shots,
                     "metrics": [m["metric"] if isinstance(m, dict) else str(m) for m in (task.config.metric_list or [])]}
    return warnings


def _render_first(task, doc: dict, b: BenchInput) -> None:
    """The task's prompt, target (and choices) rendered for its first document: a template that fails on the
    data (an unknown field, a choice list that is not a list) is an error of the compile, not of the run."""
    parts = [("doc_to_text", task.doc_to_text), ("doc_to_target", task.doc_to_target)]
    if task.config.output_type == "multiple_choice":
        parts.append(("doc_to_choice", task.doc_to_choice))
    for key, render in parts:
        try:
            render(doc)
        except Exception as e:  # noqa: BLE001 - Jinja, KeyError, TypeError, ... from the task's templates
            raise BuildError(Problem(f"the task `{b.name}`'s {key} fails on its first document: "
                                     f"{type(e).__name__}: {e}".split("\n")[0][:400],
                                     file=str(b.yaml) if b.yaml else None, path=b.where,
                                     hint=f"fix {key} in the task config (its fields: {', '.join(map(str, doc))})")) from None


def _dir_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def install_files(items: list[BenchInput], tmp: Path, loaded, version: str | None) -> tuple[list[dict], list[dict]]:
    """Copy each file task's YAML and data into ``tmp/benchmarks/<task>/``; (manifest records, lock records)."""
    manifest, lock = [], []
    for b in items:
        spec = b.spec
        record: dict = {"task": b.name, "source": b.source, "config": None, "config_sha256": b.config_sha256,
                        "data_files": None, "data": [], **b.checked, "limit": spec.limit,
                        "apply_chat_template": spec.apply_chat_template,
                        "fewshot_as_multiturn": spec.apply_chat_template,
                        "seeds": {"random": spec.seed, "numpy": spec.seed, "torch": spec.seed, "fewshot": spec.seed},
                        "bootstrap_iters": harness.BOOTSTRAP_ITERS, "lm_eval": version}
        if b.yaml is not None:
            d = tmp / BENCH_DIR / _dir_name(b.name)
            (d / "data").mkdir(parents=True)
            shutil.copyfile(b.yaml, d / "task.yaml")
            record["config"] = f"{BENCH_DIR}/{d.name}/task.yaml"
            placed: dict[str, str] = {}
            for j, (f, sha) in enumerate(b.data):
                if str(f) in placed:
                    continue
                target = f"{j}-{f.name}"
                shutil.copyfile(f, d / "data" / target)
                placed[str(f)] = f"{BENCH_DIR}/{d.name}/data/{target}"
                record["data"].append({"file": placed[str(f)], "sha256": sha})

            def relocate(v, placed=placed):
                if isinstance(v, dict):
                    return {k: relocate(x) for k, x in v.items()}
                if isinstance(v, list):
                    return [placed[x] for x in v]
                return placed[v]

            record["data_files"] = relocate(b.data_files) if b.data_files is not None else None
        manifest.append(record)
        entry = dict(record)
        if b.source == "file":
            entry["file"] = layout.portable_path(loaded, b.where, str(b.yaml.resolve()))
            entry["data_inputs"] = [{"file": layout.portable_path(loaded, b.where, str(f)), "sha256": s}
                                    for f, s in b.data]
        lock.append(entry)
    return manifest, lock
