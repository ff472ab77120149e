"""`tunespec rerun BUILD/lock.yaml -o NEW_BUILD [--root DIR] [--train]`: rebuild from a lock and check it reproduces.

1. Read the lock file. A missing or garbled lock, or one of another build format, is a ``BuildError``
   located in it (file, line, field): exit 2.
2. Find the inputs again. The lock's paths are relative to the spec file's directory (build_layout); each
   is looked for under ``--root``, the spec directory as seen from the lock (``hints.spec_dir_from_build``:
   a moved checkout, or a copy holding the build), then where it was compiled (``hints.spec_dir``). One found
   nowhere is exit 2, naming where it looked.
3. Compare every input the lock recorded with what is there now and say exactly which changed: each
   source file's sha256 (a file gone, a glob matching new files), hub coordinates, the template's sha256,
   tunespec's version (a change of the build's inputs) and every pinned package's (warnings).
4. Compile the lock's spec into the new directory (validated as it is, with ``Spec.model_validate``: the
   loader's rules about which fields a spec file wrote do not apply to it).
5. Compare the new build's file hashes with the old build's manifest (beside the lock) and print
   ``reproduced: N files identical``, or every file that differs and the rows that changed, by id
   (``row_changes``). The tokenizer, the model's weight files / GGUF / hub commit and a ``template:
   tokenizer`` chat template are compared between the two locks (``model_changes``).
6. With ``--train``: train the new build and compare the loss curve and the final adapter with the old
   build's training (``tunespec.rerun_training``, which runs both steps: ``rerun_lock``).

``rerun_build`` returns True iff the build reproduced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .. import build_layout as layout
from ..errors import BuildError, Problem, TunespecError
from ..hashing import sha256_bytes, sha256_file
from .build_writer import compile_build
from .lock_reading import loaded_from_lock, read_lock
from .pinned_versions import pinned_versions
from .sources import source_inputs, source_names
from .spec_template import template_of

Log = Callable[[str], None]
TOKENIZING = ("transformers", "tokenizers", "sentencepiece", "jinja2")  # a new version may tokenize differently


def _short(sha: str | None) -> str:
    return (sha[:12] + "…") if sha else "none"


# --------------------------------------------------------------------------- comparing inputs


def _compare_files(label: str, old: list[dict], new: list[dict], pattern: str | None) -> list[str]:
    before = {e["file"]: e.get("sha256") for e in old if isinstance(e, dict) and "file" in e}
    after = {e["file"]: e.get("sha256") for e in new}
    out = []
    for f, sha in before.items():
        if f not in after:
            out.append(f"{label}: {f} is gone")
        elif after[f] != sha:
            out.append(f"{label}: {f} sha256 changed (was {_short(sha)}, now {_short(after[f])})")
    for f in after:
        if f not in before:
            out.append(f"{label}: {f} is new" + (f" (it matches {pattern})" if pattern else ""))
    return out


def input_changes(loaded, lock: dict) -> tuple[list[str], list[str]]:
    """(changes of the build's inputs, warnings about the environment) since the lock was written."""

    changes: list[str] = []
    warnings: list[str] = []
    spec = loaded.spec
    recorded = lock["inputs"].get("sources") or []
    names = source_names(spec.data.sources)
    if len(recorded) != len(spec.data.sources):
        changes.append(f"the lock records {len(recorded)} sources but its spec has {len(spec.data.sources)}")
    for i, src in enumerate(spec.data.sources):
        rec = recorded[i] if i < len(recorded) and isinstance(recorded[i], dict) else {}
        label = f"source {rec.get('name') or names[i]}"
        old_entries = rec.get("entries") or []
        try:
            now = layout.portable_inputs_of(loaded, i, source_inputs(src))
        except TunespecError as e:
            p = e.problems[0]
            changes.append(f"{label}: {(p.file + ': ') if p.file else ''}{p.message}")
            continue
        if src.path:
            changes += _compare_files(label, old_entries, now, src.path)
            continue
        old = old_entries[0] if old_entries and isinstance(old_entries[0], dict) else {}
        new = now[0]
        for key in ("hub", "config", "revision", "split", "data_files"):
            if old.get(key) != new.get(key):
                changes.append(f"{label}: hub {key} changed (was {old.get(key)!r}, now {new.get(key)!r})")
        if "files" in new or "files" in old:
            changes += _compare_files(label, old.get("files") or [], new.get("files") or [], None)
        elif not new.get("revision"):
            warnings.append(f"{label}: hub dataset {new.get('hub')} is not pinned to a revision, so its rows may have "
                            f"changed without the lock noticing (set data.sources.{i}.revision)")
    old_t = lock["inputs"].get("template") or {}
    try:
        template = template_of(loaded)
        # `template: tokenizer`: the model's chat template, compared after the compile (model_changes)
        if template.source and template.sha256 != old_t.get("sha256"):
            changes.append(f"template {template.name} changed (sha256 was {_short(old_t.get('sha256'))}, "
                           f"now {_short(template.sha256)})")
    except TunespecError as e:
        changes.append(f"template: {e.problems[0].render()}")
    old_v = lock.get("versions") or {}
    now_v = pinned_versions(spec.model.packaged)
    if old_v.get("tunespec") != now_v.get("tunespec"):
        changes.append(f"tunespec version {old_v.get('tunespec')} → {now_v.get('tunespec')}")
    for lib in sorted(set(old_v) | set(now_v)):
        if lib != "tunespec" and old_v.get(lib) != now_v.get(lib):
            warnings.append(f"{lib} {old_v.get(lib) or 'not installed'} → {now_v.get(lib) or 'not installed'}"
                            + (" (tokenization may differ)" if lib in TOKENIZING else ""))
    return changes, warnings


def model_changes(old: dict, new: dict) -> list[str]:
    """What changed between two locks' ``inputs`` that the old build's files cannot show: the model's weight
    files (sha256 of each), the GGUF file it was converted from, a hub model's commit, a hub dataset's commit
    and rows, and the chat template of ``template: tokenizer``."""
    out = []
    om, nm = old.get("model") or {}, new.get("model") or {}
    if om.get("reference") != nm.get("reference"):
        out.append(f"model: {om.get('reference')} → {nm.get('reference')}")
    if om.get("commit") != nm.get("commit") and (om.get("commit") or nm.get("commit")):
        out.append(f"model: hub commit {om.get('commit')} → {nm.get('commit')}")
    og, ng = om.get("gguf") or {}, nm.get("gguf") or {}
    if og.get("sha256") != ng.get("sha256"):
        out.append(f"model: GGUF file {ng.get('file') or og.get('file')} sha256 changed (was {_short(og.get('sha256'))}, "
                   f"now {_short(ng.get('sha256'))})")
    if isinstance(om.get("files"), list) and isinstance(nm.get("files"), list):
        out += _compare_files("model weights", om["files"], nm["files"], None)
    for i, (os_, ns) in enumerate(zip(old.get("sources") or [], new.get("sources") or [])):
        oh = os_.get("hub") if isinstance(os_, dict) and isinstance(os_.get("hub"), dict) else {}
        nh = ns.get("hub") if isinstance(ns, dict) and isinstance(ns.get("hub"), dict) else {}
        label = f"source {ns.get('name') or i}"
        if oh.get("commit") != nh.get("commit") and (oh.get("commit") or nh.get("commit")):
            out.append(f"{label}: hub dataset commit {oh.get('commit')} → {nh.get('commit')}")
        if oh.get("rows_sha256") and oh.get("rows_sha256") != nh.get("rows_sha256"):
            out.append(f"{label}: the hub dataset's rows changed ({oh.get('rows')} rows, sha256 "
                       f"{_short(oh.get('rows_sha256'))} → {nh.get('rows')} rows, {_short(nh.get('rows_sha256'))})")
    ot, nt = old.get("template") or {}, new.get("template") or {}
    if ot.get("sha256") != nt.get("sha256") and ot.get("name") == "tokenizer":
        out.append(f"the model's chat template changed (sha256 was {_short(ot.get('sha256'))}, "
                   f"now {_short(nt.get('sha256'))})")
    return out


# --------------------------------------------------------------------------- which rows changed

SHOWN_ROWS = 5  # changed rows named per split


def _split_rows(build: Path, split: str) -> tuple[list[dict], list[int]] | None:
    """A split's records and each one's token count; None when the build has no such split or it is unreadable."""
    import numpy as np

    try:
        with open(build / layout.data_file(split), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        offsets = np.load(build / layout.token_file(split, "offsets"))
        lengths = [int(x) for x in np.diff(offsets)]
    except (OSError, ValueError):
        return None
    return rows, lengths if len(lengths) == len(rows) else [0] * len(rows)


def _excerpt(a: str, b: str, width: int = 24) -> str:
    """Where two texts first differ: ``"…before…" → "…after…"``."""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    j = 0  # common suffix, not overlapping the prefix
    while j < min(len(a), len(b)) - i and a[len(a) - 1 - j] == b[len(b) - 1 - j]:
        j += 1
    lo = max(0, i - width)

    def cut(t: str) -> str:
        mid = t[lo:len(t) - j + width if j > width else len(t)]
        return ("…" if lo else "") + mid[:3 * width + (i - lo)] + ("…" if len(t) - lo > len(mid[:3 * width + (i - lo)]) else "")

    return f"{json.dumps(cut(a), ensure_ascii=False)} → {json.dumps(cut(b), ensure_ascii=False)}"


def _where(row: dict) -> str:
    name, _, index = str(row.get("source", "")).rpartition("#")
    return f"id {row.get('id')}" + (f" (source {name} row {index})" if name and index.isdigit() else "")


def row_changes(old_build: Path, new_build: Path, splits: list[str]) -> list[str]:
    """What changed in the rows between two builds, by row id over all `splits`: each split's row count,
    rows removed and added, rows whose text or tokens differ (the first field that differs and where,
    the token counts) and rows that went to another split (a holdout re-drawn)."""
    old: dict[str, tuple] = {}
    new: dict[str, tuple] = {}
    counts = []
    for split in splits:
        o, n = _split_rows(old_build, split), _split_rows(new_build, split)
        counts.append(f"{split} {len(o[0]) if o else 0} → {len(n[0]) if n else 0}")
        for table, got in ((old, o), (new, n)):
            if got is None:
                continue
            for i, (row, length) in enumerate(zip(*got)):
                table.setdefault(str(row.get("id")), (split, i, row, length))
    removed = [k for k in old if k not in new]
    added = [k for k in new if k not in old]
    changed, moved = [], []
    for k, (split, _i, a, la) in old.items():
        if k not in new:
            continue
        nsplit, j, b, lb = new[k]
        strip = lambda r: {f: v for f, v in r.items() if f != "source"}  # noqa: E731 - the row's place is not its content
        if strip(a) != strip(b) or la != lb:
            changed.append(k)
        elif nsplit != split:
            moved.append(k)
    if not (removed or added or changed or moved):
        return []
    out = [f"rows: {', '.join(counts)}; {len(changed)} changed, {len(added)} added, {len(removed)} removed"
           + (f", {len(moved)} moved to another split" if moved else "")]
    for k in removed[:SHOWN_ROWS]:
        split, i, row, _ = old[k]
        out.append(f"  removed: {_where(row)}, was {split} row {i}")
    for k in added[:SHOWN_ROWS]:
        split, j, row, _ = new[k]
        out.append(f"  added: {_where(row)}, {split} row {j}")
    for k in changed[:SHOWN_ROWS]:
        split, i, a, la = old[k]
        nsplit, j, b, lb = new[k]
        what = []
        for field in sorted((set(a) | set(b)) - {"source"}):
            if a.get(field) != b.get(field):
                ta = a.get(field) if isinstance(a.get(field), str) else json.dumps(a.get(field), ensure_ascii=False)
                tb = b.get(field) if isinstance(b.get(field), str) else json.dumps(b.get(field), ensure_ascii=False)
                what.append(f"{field}: {_excerpt(ta or '', tb or '')}")
                break  # the first field that differs, with its text
        tokens = f"tokens {la} → {lb}" if la != lb else ("" if what else "same text and token count, other token ids")
        place = f"{nsplit} row {j}" + (f" (was {split} row {i})" if (split, i) != (nsplit, j) else "")
        out.append(f"  changed: {_where(b)}, {place}: " + "; ".join(x for x in (*what, tokens) if x))
    for k in moved[:SHOWN_ROWS]:
        split, i, _, _ = old[k]
        nsplit, j, row, _ = new[k]
        out.append(f"  moved: {_where(row)}: {split} row {i} → {nsplit} row {j} (unchanged)")
    for label, n in (("removed", len(removed)), ("added", len(added)), ("changed", len(changed)),
                     ("moved", len(moved))):
        if n > SHOWN_ROWS:
            out.append(f"  … and {n - SHOWN_ROWS} more {label}")
    return out


# --------------------------------------------------------------------------- the rerun


def _check_old_files(build: Path, files: dict) -> list[str]:
    """Files of the old build that no longer match its manifest."""

    out = []
    for f, sha in sorted(files.items()):
        p = build / f
        if not p.is_file():
            out.append(f"{f} is missing from the old build")
        elif sha256_file(p) != sha:
            out.append(f"{f} was modified after the old build was compiled (sha256 no longer matches its manifest)")
    return out


def rerun_build(lock_path: Path, output: Path, log: Log, root: Path | None, check_trained: bool) -> bool:

    lock, doc, lock_path = read_lock(Path(lock_path))
    old_build = lock_path.parent
    output = Path(output)
    if output.exists() and output.resolve() == old_build.resolve():
        raise BuildError(Problem(f"{output} is the build the lock belongs to", path="-o",
                                 hint="rerun into a new directory, e.g. -o " + str(old_build) + "-rerun"))
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise BuildError(Problem(f"{output} already exists", path="-o",
                                 hint="rerun writes a new build: choose a directory that does not exist yet"))
    loaded = loaded_from_lock(lock, doc, lock_path, root)
    if check_trained and not (old_build / layout.RUNTIME_DIRS[0] / "metrics.jsonl").is_file():
        raise BuildError(Problem(f"{old_build} was not trained (no train/metrics.jsonl)", path="--train",
                                 hint="train the old build first (tunespec train BUILD), or rerun without --train"))

    log(f"rerun of {lock_path} (compiled {lock.get('created', '?')}, input key {lock['input_key'][:12]})")
    changes, warnings = input_changes(loaded, lock)
    for c in changes:
        log(f"  changed: {c}")
    for w in warnings:
        log(f"  warning: {w}")
    if not changes:
        log("  inputs: unchanged (source files, template and tunespec version match the lock)")

    command = f"tunespec rerun {lock_path} -o {output}" + (f" --root {root}" if root is not None else "")
    result = compile_build(loaded, output, command=command, log=log)
    for line in result.messages:
        log(line)
    new_manifest = result.manifest

    old_manifest_path = old_build / layout.MANIFEST
    try:
        old_bytes = old_manifest_path.read_bytes()
        old_manifest = json.loads(old_bytes)
    except (OSError, ValueError):
        log(f"not reproduced: {old_manifest_path} is missing or unreadable, so there is nothing to compare with")
        return False
    if lock.get("manifest_sha256") and sha256_bytes(old_bytes) != lock["manifest_sha256"]:
        log("  warning: the manifest beside the lock is not the one the lock recorded (its sha256 differs)")
    for problem in _check_old_files(old_build, old_manifest.get("files") or {}):
        log(f"  warning: old build: {problem}")

    new_key = new_manifest.get("input_key")
    if new_key != lock["input_key"]:
        log(f"  input key: was {lock['input_key'][:12]}, now {str(new_key)[:12]}")
    new_lock = _read_new_lock(output)
    old_tok = (lock["inputs"].get("tokenizer") or {}).get("sha256")
    new_tok = ((new_lock.get("inputs") or {}).get("tokenizer") or {}).get("sha256")
    if old_tok and new_tok and old_tok != new_tok:
        log(f"  changed: tokenizer (sha256 was {_short(old_tok)}, now {_short(new_tok)})")
    for entry, field in (("selection_scores", "data.selection.ifd.file"),
                         ("selection_embeddings", "data.selection.kcenter's scores file")):
        old_scores = (lock["inputs"].get(entry) or {}).get("sha256")
        new_scores = ((new_lock.get("inputs") or {}).get(entry) or {}).get("sha256")
        if old_scores != new_scores:
            log(f"  changed: {field} (sha256 was {_short(old_scores)}, now {_short(new_scores)})")
    pins = model_changes(lock["inputs"], new_lock.get("inputs") or {})
    for c in pins:
        log(f"  changed: {c}")

    old_files: dict = old_manifest.get("files") or {}
    new_files: dict = new_manifest.get("files") or {}
    differ = []
    for f in sorted(set(old_files) | set(new_files)):
        if f not in new_files:
            differ.append(f"{f}: only in the old build")
        elif f not in old_files:
            differ.append(f"{f}: only in the new build")
        elif old_files[f] != new_files[f]:
            differ.append(f"{f}: sha256 was {_short(old_files[f])}, now {_short(new_files[f])}")
    if not differ and old_files and not pins:
        log(f"reproduced: {len(new_files)} files identical")
        return True
    if not differ and old_files:
        log(f"not reproduced: the build's {len(new_files)} files are identical, but an input they cannot show changed "
            "(see above)")
        return False
    log(f"not reproduced: {len(differ)} of {len(set(old_files) | set(new_files))} files differ")
    for d in differ:
        log(f"  {d}")
    splits = sorted({f.split("/", 1)[1].split(".", 1)[0] for f in set(old_files) | set(new_files)
                     if f.startswith((layout.DATA_DIR + "/", layout.TOKENS_DIR + "/"))
                     and old_files.get(f) != new_files.get(f)})
    for line in row_changes(old_build, output, splits):
        log(f"  {line}")
    if changes:
        log("  (the inputs changed: see above)")
    return False


def _read_new_lock(build: Path) -> dict:
    from ruamel.yaml import YAML

    try:
        data = YAML(typ="safe", pure=True).load((build / layout.LOCK).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except Exception:
        return {}
