"""The build directory's layout and the schema of its records: the one module that names a build's files.

A build (``tunespec compile SPEC -o BUILD``) holds everything the runtime reads::

    BUILD/lock.yaml            how to reproduce it: the portable resolved spec, input hashes, versions, hints
    BUILD/manifest.json        sha256 of every other file, rows, drops, token statistics (no machine paths)
    BUILD/template.jinja       the resolved template's source (absent for `template: tokenizer`)
    BUILD/data/<split>.jsonl   one rendered record per row
    BUILD/tokens/<split>.{ids,trained,offsets}.npy
    BUILD/tokenizer/           the tokenizer the rows were tokenized with
    BUILD/accelerate.yaml, launch.sh, launch.slurm (+ deepspeed.json)

and the runtime writes only under ``train/``, ``adapter/``, ``merged/``, ``eval/`` (their stamp files are
``tunespec.json``), and ``report.html`` (``tunespec report``: made from the others, written whole).

**Portable paths.** Every input path the lock records (the spec file, each data file, the template file,
a local model directory) is relative to the spec file's directory, unless the spec wrote it absolute
*and* it lies outside that directory (a shared dataset at /data/...: a place on that machine, kept as
written). Where the inputs were on the compiling machine is kept under ``hints:`` only, which a rerun
uses to find them when they are not found relative to the lock. So ``manifest.json`` (its ``input_key``
included) is the same bytes in every checkout of the same files, and ``lock.yaml`` differs only in
``created`` and ``hints``.

**Format version.** ``FORMAT_VERSION`` is written into both records (``manifest.json``'s
``format_version``, ``lock.yaml``'s ``tunespec_lock``); a build of another version is refused with exit 2
and what to do (:func:`check_format`).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import pydantic

from .errors import BuildError, Problem

if TYPE_CHECKING:
    from .spec.loader import LoadedSpec

Loc = tuple[Union[str, int], ...]
"""A path into a spec: ("data", "sources", 0, "path")."""

FORMAT_VERSION = 2

LOCK = "lock.yaml"
MANIFEST = "manifest.json"
TEMPLATE = "template.jinja"
DATA_DIR = "data"
TOKENS_DIR = "tokens"
TOKENIZER_DIR = "tokenizer"
RUNTIME_DIRS = ("train", "adapter", "merged", "eval")
REPORT = "report.html"  # tunespec report BUILD's default output (tunespec run writes it)
STAMP = "tunespec.json"  # the stamp file of adapter/, merged/, train/checkpoint-*/
TOKEN_PARTS = ("ids", "trained", "offsets")


def data_file(split: str) -> str:
    return f"{DATA_DIR}/{split}.jsonl"


def token_file(split: str, part: str) -> str:
    return f"{TOKENS_DIR}/{split}.{part}.npy"


def recompile_hint() -> str:
    return "recompile: tunespec compile SPEC -o BUILD --force"


def check_format(found: Any, file: str, what: str) -> None:
    """Refuse a build written under another format version (exit 2, what to do)."""
    if found == FORMAT_VERSION:
        return
    if isinstance(found, int) and not isinstance(found, bool):
        older = found < FORMAT_VERSION
        raise BuildError(Problem(
            f"this {what} is build format {found}; this tunespec reads format {FORMAT_VERSION}",
            file=file, hint=("recompile the spec with this tunespec (tunespec compile SPEC -o BUILD --force), or use "
                             "the tunespec version recorded in the lock's `versions`") if older else
            "upgrade tunespec to the version recorded in the lock's `versions.tunespec`, or recompile the spec"))
    raise BuildError(Problem(f"this {what} has no valid format version (found {found!r})", file=file,
                             hint="the build was edited or not written by tunespec; " + recompile_hint()))


# --------------------------------------------------------------------------- portable paths

# the spec's path fields, as in spec.path_fields.PATH_FIELDS ("*": any key or index)
PATH_FIELDS: tuple[Loc, ...] = (
    ("model", "path"),
    ("data", "sources", "*", "path"),
    ("data", "sources", "*", "data_files", "*"),
    ("data", "template", "file"),
    ("data", "selection", "ifd", "file"),
    ("data", "selection", "kcenter", "file"),
    ("evaluation", "benchmarks", "*", "file"),
    ("output", "dir"),
)
_GLOB = "*?["


def _matches(loc: Loc, pattern: Loc) -> bool:
    return len(loc) == len(pattern) and all(p == "*" or p == q for p, q in zip(pattern, loc))


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


def path_fields(spec: dict[str, Any]) -> list[tuple[Loc, str]]:
    """(location, value) of every file-system path in a spec dict (hub data_files, which name files inside
    a hub repository, are not paths here)."""
    from .spec.rules import HUB_BUILDERS

    out: list[tuple[Loc, str]] = []

    def walk(node: Any, loc: Loc) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, loc + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, loc + (i,))
        elif isinstance(node, str) and any(_matches(loc, p) for p in PATH_FIELDS):
            if "data_files" in loc:
                src = spec["data"]["sources"][loc[2]]
                if not isinstance(src, dict) or src.get("hub") not in HUB_BUILDERS:
                    return
            out.append((loc, node))

    walk(spec, ())
    return out


def _set(doc: dict[str, Any], loc: Loc, value: Any) -> None:
    node: Any = doc
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value


def posix_path(rel: str) -> str:
    return rel.replace(os.sep, "/")


def spec_dir(loaded: LoadedSpec) -> Path:
    return Path(loaded.file).resolve().parent


def portable_path(loaded: LoadedSpec, loc: Loc | str, value: str) -> str:
    """The lock's form of the path `value` at spec location `loc`: relative to the spec file's directory
    (or the directory a rerun found it under), unless written absolute outside the spec's directory."""
    dotted = loc if isinstance(loc, str) else _dotted(loc)
    base = Path(loaded.bases.get(dotted) or spec_dir(loaded))
    rel = os.path.relpath(value, base)
    if dotted in loaded.written_absolute and rel.split(os.sep)[0] == "..":
        return value
    return posix_path(rel)


def portable_spec(loaded: LoadedSpec) -> dict[str, Any]:
    """The resolved spec with every path in its portable form (what the lock records and the input key hashes)."""
    from .spec.render import resolved_dict

    doc = resolved_dict(loaded)
    for loc, value in path_fields(doc):
        _set(doc, loc, portable_path(loaded, loc, value))
    return doc


def portable_inputs_of(loaded: LoadedSpec, i: int, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One source's ``source_inputs`` with each file named by its portable path."""
    new = []
    for e in entries:
        e = dict(e)
        if "file" in e:
            e["file"] = portable_path(loaded, f"data.sources.{i}.path", e["file"])
        if "files" in e:
            e["files"] = [{**f, "file": portable_path(loaded, f"data.sources.{i}.data_files.{j}", f["file"])}
                          for j, f in enumerate(e["files"])]
        new.append(e)
    return new


def portable_inputs(loaded: LoadedSpec, inputs: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """``sources.sources_inputs`` with each file named by its portable path (relative to its source's base)."""
    return [portable_inputs_of(loaded, i, entries) for i, entries in enumerate(inputs)]


def _exists(p: Path, pattern: str) -> bool:
    if any(c in pattern for c in _GLOB):
        return bool(glob.glob(str(p), recursive=True))
    return p.exists()


def locate_inputs(spec: dict[str, Any], bases: list[Path]) -> tuple[dict[str, Any], dict[str, Path], list[str],
                                                                   list[tuple[str, str, list[Path]]]]:
    """The lock's portable spec with every relative path found again: each is looked for under `bases` in
    order (--root, the spec directory as seen from the lock, the compiling machine's spec directory).

    Returns (spec with absolute paths, dotted location -> the base it was found under, dotted locations kept
    absolute, [(dotted location, relative path, bases tried)] of paths found under none)."""
    import copy

    doc = copy.deepcopy(spec)
    found: dict[str, Path] = {}
    absolute: list[str] = []
    missing: list[tuple[str, str, list[Path]]] = []
    for loc, value in path_fields(doc):
        dotted = _dotted(loc)
        p = Path(value).expanduser()
        if p.is_absolute():
            absolute.append(dotted)
            continue
        hit = next((b for b in bases if _exists(b / p, value)), None)
        if hit is None:
            if loc[0] != "output":  # output.dir is not an input
                missing.append((dotted, value, list(bases)))
            hit = bases[0] if bases else Path.cwd()
        found[dotted] = hit.resolve()
        _set(doc, loc, str((hit.resolve() / p).resolve()) if not any(c in value for c in _GLOB)
             else str(hit.resolve() / p))
    return doc, found, absolute, missing


def search_bases(lock: dict[str, Any], lock_path: Path, root: Path | None) -> list[Path]:
    """Where the lock's relative paths are looked for, in order: --root, the spec directory as seen from the
    lock (a moved or copied checkout that holds the build), the spec directory on the compiling machine."""
    given = lock.get("hints")
    hints: dict[str, Any] = given if isinstance(given, dict) else {}
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    if isinstance(hints.get("spec_dir_from_build"), str):
        bases.append(lock_path.parent / hints["spec_dir_from_build"])
    if isinstance(hints.get("spec_dir"), str):
        bases.append(Path(hints["spec_dir"]))
    out: list[Path] = []
    for b in bases:
        if b.is_dir() and all(b.resolve() != o.resolve() for o in out):
            out.append(b)
    return out


# --------------------------------------------------------------------------- the records' schema


class _Record(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")


class TemplateInfo(_Record):
    name: str
    kind: str
    sha256: str
    stop: Optional[str] = None
    file: Optional[str] = None  # the copy inside the build (TEMPLATE), when the template has a source


class SplitStats(_Record):
    rows: int
    tokens: int
    trained_tokens: int
    trained_fraction: float
    truncated: int
    length: dict[Any, Any]


class Manifest(_Record):
    """``manifest.json``: what the build holds. Nothing in it names a place on the compiling machine."""

    format_version: int
    input_key: str
    name: str
    max_length: int
    eos_token_id: int
    vocab_size: int
    pad_token_id: Optional[int] = None
    prefix_ids: list[int] = []
    prefix_rule: Optional[str] = None
    template: TemplateInfo
    vocabulary: Optional[dict[Any, Any]] = None
    splits: dict[str, SplitStats]
    batching: Optional[dict[Any, Any]] = None  # micro_batches: how the train rows form micro-batches
    dropped: dict[Any, Any] = {}
    files: dict[str, str]


class Hints(_Record):
    """Where the build was made: used only to find inputs again, never compared."""

    spec_dir: Optional[str] = None  # absolute, on the compiling machine
    spec_dir_from_build: Optional[str] = None  # the spec directory relative to the build directory
    build: Optional[str] = None
    command: Optional[str] = None
    model_dir: Optional[str] = None  # what the model reference resolved to (a cache directory, a converted GGUF)


class Lock(_Record):
    """``lock.yaml``: how to reproduce the build. Differs between checkouts only in ``created`` and ``hints``."""

    tunespec_lock: int
    created: str
    reproduce: str
    spec_file: str  # relative to the spec file's directory: its name
    extends: list[str] = []
    overrides: list[str] = []
    input_key: str
    spec: dict[Any, Any]
    inputs: dict[Any, Any]
    vocabulary: Optional[dict[Any, Any]] = None
    versions: dict[Any, Any]
    manifest_sha256: str
    hints: Hints = Hints()

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


class Stamp(_Record):
    """``adapter/tunespec.json``, ``merged/tunespec.json``: which build a runtime output belongs to."""

    input_key: str


def stamp_text(data: dict[str, Any]) -> str:
    """A runtime stamp's text (checked against the schema before it is written)."""
    import json

    Stamp.model_validate(data)
    return json.dumps(data, indent=2)
