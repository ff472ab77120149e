"""lm-evaluation-harness tasks (``evaluation.benchmarks``): found, loaded offline, and pinned by hash.

The one module that knows lm-eval's task configs; the compiler (compiler/benchmarks.py) and the runtime
(runtime/benchmarks.py) both load tasks through it. A task is either

* a **file**: a local task YAML (``file:``, or a sample tunespec ships in ``tunespec/tasks/``, named by
  ``task:``). Its local data files (``dataset_path: json|csv|parquet|text|arrow`` with
  ``dataset_kwargs.data_files``, relative to the YAML) are copied into the build with it; or
* a **harness task**: a name in lm-eval's own task index; its data comes from the Hugging Face datasets cache.

Everything runs with ``HF_DATASETS_OFFLINE`` and ``HF_HUB_OFFLINE`` set (:func:`offline`): a task whose data
is not on this machine fails to load, and is reported with the task named.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BuildError, Problem
from .hashing import sha256_bytes
from .spec.yaml_positions import CONSTRUCTOR_ERRORS, tag_problem

PACKAGED_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # datasets' builders that read data_files
INSTALL = "install the benchmark extra: pip install 'tunespec[bench]' (lm-eval)"
BOOTSTRAP_ITERS = 100000  # lm-eval's default: standard errors of metrics that are not plain means are bootstrapped


def require(where: str = "evaluation.benchmarks") -> str:
    """lm-eval's version; a BuildError saying which extra to install when it is missing."""
    try:
        from importlib.metadata import version

        import lm_eval  # noqa: F401

        return version("lm_eval")
    except ImportError:
        raise BuildError(Problem("needs lm-evaluation-harness (the lm_eval package), which is not installed",
                                 path=where, hint=INSTALL)) from None


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """HF_DATASETS_OFFLINE and HF_HUB_OFFLINE set (and lm-eval's info lines quiet) for the block, then restored.

    datasets and huggingface_hub read those variables when they are imported, so their module flags are set
    too (a process that imported them earlier would otherwise still try the network)."""
    import datasets.config
    import huggingface_hub.constants

    saved = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    old_flags = [getattr(m, k) for m, k in flags]
    os.environ.update({k: "1" for k in saved})
    for m, k in flags:
        setattr(m, k, True)
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        for (m, k), v in zip(flags, old_flags):
            setattr(m, k, v)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def packaged(name: str) -> Path | None:
    """The YAML of a task tunespec ships (``tunespec/tasks/NAME.yaml``), or None."""
    f = PACKAGED_DIR / f"{name}.yaml"
    return f if f.is_file() else None


def packaged_names() -> list[str]:
    return sorted(p.stem for p in PACKAGED_DIR.glob("*.yaml"))


# --------------------------------------------------------------------------- local task files


def read_task_file(path: Path, where: str) -> dict:
    """A local task YAML as a plain mapping; anything the build could not carry (``!function``, ``include``,
    a group) or that is not a task config is a BuildError at the file's line."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError

    carry = ("tunespec copies only the task YAML and its data files into the build: write the config out in full "
             "(Jinja templates for doc_to_text/doc_to_target/doc_to_choice), or register the task with lm-eval and "
             "name it with task:")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BuildError(Problem(f"cannot read the task file: {getattr(e, 'strerror', None) or e}", file=str(path),
                                 path=where, hint="check the path (relative to the spec file)")) from None
    try:
        cfg = YAML(typ="safe", pure=True).load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        tag = "!function" in str(e.problem or "")
        raise BuildError(Problem("uses `!function` (Python code beside the YAML)" if tag else
                                 f"is not valid YAML: {e.problem or e}",
                                 file=str(path), line=mark.line + 1 if mark else None,
                                 column=mark.column + 1 if mark else None, path=where,
                                 hint=carry if tag else "fix the YAML syntax")) from None
    except CONSTRUCTOR_ERRORS as e:
        found = tag_problem(text, str(path), e)
        raise BuildError(Problem(f"is not valid YAML: {found.message}", file=str(path), line=found.line,
                                 column=found.column, path=where, hint=found.hint)) from None
    if not isinstance(cfg, dict):
        raise BuildError(Problem("is not an lm-evaluation-harness task config (a YAML mapping with a `task` key)",
                                 file=str(path), path=where, hint="see the sample: " + str(PACKAGED_DIR)))
    for key, what in (("include", "includes another YAML (`include:`)"), ("group", "is a group config (`group:`)"),
                      ("class", "names a Python task class (`class:`)")):
        if key in cfg:
            raise BuildError(Problem(what, file=str(path), line=_line_of(text, key), path=where,
                                     hint=carry if key != "group" else "give each of its tasks as its own benchmark"))
    if not isinstance(cfg.get("task"), str) or not cfg["task"]:
        raise BuildError(Problem("has no `task:` name", file=str(path), path=where,
                                 hint="add `task: NAME` (the name results are reported under)"))
    return cfg


def _line_of(text: str, key: str) -> int | None:
    return next((n for n, line in enumerate(text.splitlines(), 1) if line.startswith(f"{key}:")), None)


def data_files_of(cfg: dict, path: Path, where: str) -> Any:
    """The local data files of a task config (its ``dataset_kwargs.data_files``: a path, a list of paths, or a
    mapping split -> path(s)), each resolved against the YAML's directory and checked to exist; None for a task
    that reads a hub dataset. A local dataset directory as ``dataset_path`` is refused (it is not copied)."""
    ds = cfg.get("dataset_path")
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if ds not in LOCAL_BUILDERS:
        if isinstance(ds, str) and (ds.startswith((".", "/", "~")) or (path.parent / ds).exists()):
            raise BuildError(Problem(f"dataset_path {ds!r} is a local directory, which is not copied into the build",
                                     file=str(path), path=where,
                                     hint="use dataset_path: json (or csv, parquet) with dataset_kwargs: "
                                          "{data_files: {test: FILE}}"))
        return None
    if not files:
        raise BuildError(Problem(f"dataset_path: {ds} needs dataset_kwargs.data_files", file=str(path), path=where,
                                 hint="e.g. dataset_kwargs: {data_files: {test: questions.jsonl}} (relative to the YAML)"))

    def one(f: Any) -> str:
        if not isinstance(f, str) or any(c in f for c in "*?["):
            raise BuildError(Problem(f"data_files entry {f!r} is not a file path", file=str(path), path=where,
                                     hint="name each data file (no globs), relative to the task YAML"))
        p = Path(f).expanduser()
        p = p if p.is_absolute() else (path.parent / p)
        if not p.is_file():
            raise BuildError(Problem(f"the task's data file {f} does not exist (looked for {p})", file=str(path),
                                     path=where, hint="fix dataset_kwargs.data_files (paths are relative to the task YAML)"))
        return str(p.resolve())

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [one(x) for x in v]
        return one(v)

    return walk(files)


def with_data_files(cfg: dict, files: Any) -> dict:
    """`cfg` with its dataset_kwargs.data_files replaced by `files` (a copy)."""
    cfg = json.loads(json.dumps(cfg))
    if files is not None:
        cfg.setdefault("dataset_kwargs", {})["data_files"] = files
    return cfg


# --------------------------------------------------------------------------- loading


def task_manager(defaults: bool):
    """lm-eval's TaskManager: with its own task index (``defaults``: indexing its ~15,000 task files takes seconds,
    so one is kept for the process) or without."""
    from lm_eval.tasks import TaskManager

    return _indexed() if defaults else TaskManager(include_defaults=False)


@functools.lru_cache(maxsize=1)
def _indexed():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=True)


def check_harness_name(manager, name: str, where: str) -> None:
    """A name lm-eval's index holds as a single task; a group, tag or unknown name is a BuildError."""
    if name in manager.all_subtasks:
        return
    if name in manager.all_groups or name in manager.all_tags:
        raise BuildError(Problem(f"`{name}` is an lm-eval {'group' if name in manager.all_groups else 'tag'} of "
                                 "several tasks", path=where, hint="give each task you want as its own benchmark "
                                 "(their names: lm-eval ls tasks)"))
    close = difflib.get_close_matches(name, manager.all_subtasks + packaged_names(), n=3)
    raise BuildError(Problem(f"`{name}` is not an lm-evaluation-harness task", path=where,
                             hint=(f"did you mean {', '.join(close)}? " if close else "")
                             + "name a task lm-eval knows, tunespec_sample_mc, or give a local task YAML with file:"))


def load_task(manager, spec: str | dict, name: str, where: str, file: str | None = None):
    """One lm-eval Task, built offline (its dataset loaded); any failure is a BuildError naming the task."""
    with offline():
        try:
            loaded = manager.load([spec])
        except Exception as e:  # noqa: BLE001 - lm-eval and datasets raise anything from a bad config or missing data
            text = f"{type(e).__name__}: {e}".split("\n")[0][:400]
            missing = any(w in text for w in ("offline", "Offline", "FileNotFound", "ConnectionError",
                                              "couldn't be found", "not found", "Couldn't reach"))
            raise BuildError(Problem(
                f"lm-eval cannot load the task `{name}`: {text}", file=file, path=where,
                hint=("its data is not on this machine (evaluation runs offline): load the dataset once where the "
                      "hub is reachable (python -c \"import datasets; datasets.load_dataset(...)\") so it is in the "
                      "datasets cache, or use a local task YAML with its data files (file:)") if missing else
                     "fix the task config (lm-eval's task guide: docs/task_guide.md)")) from None
    tasks = loaded["tasks"]
    if len(tasks) != 1:
        raise BuildError(Problem(f"`{name}` loads {len(tasks)} tasks ({', '.join(sorted(tasks))})", path=where,
                                 file=file, hint="give each task as its own benchmark"))
    return next(iter(tasks.values()))


def config_sha256(task) -> str:
    """sha256 of the task's config as lm-eval resolved it (functions by their serialized form)."""
    return sha256_bytes(json.dumps(task.dump_config(), sort_keys=True, default=str).encode("utf-8"))


def eval_docs(task) -> list:
    """The documents lm-eval evaluates (the test split, else validation), in order."""
    with offline():
        try:
            return list(task.eval_docs)
        except ValueError as e:
            raise BuildError(Problem(f"the task `{task.config.task}` has no test or validation documents: {e}"[:400],
                                     hint="set test_split (or validation_split) in the task config")) from None


def docs_sha256(docs: list) -> str:
    """sha256 of the evaluated documents (each as JSON, keys sorted): what the results were measured on."""
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps(d, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
    return h.hexdigest()


def has_fewshot_docs(task) -> bool:
    fs = getattr(task, "fewshot_cfg", None)
    return bool(getattr(fs, "split", None)) or task.has_training_docs() or task.has_validation_docs()


def scores(result: dict, name: str) -> dict[str, dict]:
    """``simple_evaluate``'s results for one task as {metric (with its filter unless 'none'): {value, stderr}}."""
    row = result["results"][name]
    out: dict[str, dict] = {}
    for key, value in row.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, filt = key.split(",", 1)
        se = row.get(f"{metric}_stderr,{filt}")
        label = metric if filt == "none" else f"{metric} ({filt})"
        out[label] = {"value": round(float(value), 6),
                      "stderr": round(float(se), 6) if isinstance(se, (int, float)) and not isinstance(se, bool) else None}
    return out
