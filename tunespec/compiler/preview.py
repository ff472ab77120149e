"""`tunespec preview TARGET`: one rendered row of a build, with its trained tokens highlighted.

TARGET is a build directory (it has lock.yaml), or a spec file, which is compiled into a temporary
directory first (``--set`` overrides apply). The text view shows the rendered row (prompt and
completion, or the conversation), then the row's tokens as the model sees them, with the trained ones
(the tokens that carry loss) in bold green on a terminal, or between ``[[`` and ``]]`` otherwise, and the
counts. ``--json`` prints ``input_ids``, ``labels`` (-100 where not trained), ``tokens``, and ``prompt``
and ``completion`` (chat rows: ``messages``, and the ``eval_prompt`` generation is given).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .. import build_layout as layout
from ..build_reader import Build, trained_spans
from ..constants import IGNORE_INDEX
from ..errors import BuildError, Problem
from ..spec.loader import load_spec
from ..verify import RECOMPILE
from .build_writer import compile_build

GREEN_BOLD = "\x1b[1;32m"
DIM = "\x1b[2m"
RESET = "\x1b[0m"
OPEN, CLOSE = "[[", "]]"


def _load_row(build: Path, split: str, index: int):
    b = Build(build)  # checks every file against the manifest's sha256s, and the token files' contents
    manifest = b.manifest
    splits = manifest.get("splits") or {}
    if split not in splits:
        raise BuildError(Problem(f"the build has no `{split}` split", path="--split",
                                 hint="it has: " + (", ".join(splits) or "no splits")))
    n = int(splits[split]["rows"])
    if not -n <= index < n:
        raise BuildError(Problem(f"index {index} is out of range: the {split} split has {n} row{'s' if n != 1 else ''}"
                                 f" (0..{n - 1})", path="--index", hint=f"pick an index from 0 to {n - 1}"))
    index %= n
    tokens = b.tokens(split)
    if len(tokens) != n:
        raise BuildError(Problem(f"tokens/{split}.offsets.npy holds {len(tokens)} rows, the manifest says {n}",
                                 file=str(build), hint=RECOMPILE))
    ids, mask = tokens.row(index)
    ids, trained = ids.tolist(), mask.astype(bool).tolist()
    row, count = None, 0
    with open(build / layout.data_file(split), encoding="utf-8") as f:
        for count, line in enumerate(f, start=1):
            if count == index + 1:
                row = json.loads(line)
                break
    if row is None:
        raise BuildError(Problem(f"data/{split}.jsonl has {count} rows, the manifest says {n}", file=str(build),
                                 hint=RECOMPILE))
    return b, manifest, row, ids, trained, index, n


def render_row(build: Path, *, split: str = "train", index: int = 0, as_json: bool = False, color: bool = False) -> str:
    build = Path(build)
    b, manifest, row, ids, trained, index, n = _load_row(build, split, index)
    tokenizer = b.load_tokenizer()
    labels = [t if m else IGNORE_INDEX for t, m in zip(ids, trained)]
    if as_json:
        out: dict = {"id": row.get("id"), "split": split, "index": index}
        if "messages" in row:
            out["messages"] = row["messages"]
            out["eval_prompt"] = row.get("eval_prompt")
        else:
            out["prompt"] = row["prompt"]
            out["completion"] = row["completion"]
        out.update(input_ids=ids, labels=labels, tokens=tokenizer.convert_ids_to_tokens(ids))
        return json.dumps(out, ensure_ascii=False)

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def head(text: str) -> str:
        return f"{DIM}── {text}{RESET}" if color else f"── {text}"

    lines = [head(f"{split} row {index} of {n}: id {row.get('id')} (from {row.get('source')})")]
    if "messages" in row:
        for m in row["messages"]:
            lines.append(head(m["role"]))
            lines.append(m["content"])
    else:
        lines += [head("prompt"), row["prompt"], head("completion"), row["completion"]]
    n_trained = sum(trained)
    lines.append(head(f"tokens: {len(ids)}, trained: {n_trained} "
                      + ("(trained in bold green)" if color else f"(trained between {OPEN} and {CLOSE})")))
    view = []
    for is_trained, part in trained_spans(ids, trained):
        text = decode(part)
        if is_trained:
            view.append(f"{GREEN_BOLD}{text}{RESET}" if color else f"{OPEN}{text}{CLOSE}")
        else:
            view.append(text)
    lines.append("".join(view))
    eos = manifest.get("eos_token_id")
    ends = [i for i in range(len(ids)) if trained[i] and ids[i] == eos]
    lines.append(head(f"{len(ids)} tokens, {n_trained} trained ({n_trained / max(1, len(ids)):.0%}), "
                      f"{len(ids) - n_trained} masked (-100); EOS id {eos} trained {len(ends)}×"))
    dropped = manifest.get("dropped") or {}  # the compile's one accounting of rows not in the build
    if dropped:
        lines.append(head(f"rows the compile left out: {sum(sum(r.values()) for r in dropped.values())}"))
        for stage, reasons in dropped.items():
            lines += [f"  {stage}: {n} {reason}" for reason, n in reasons.items()]
    return "\n".join(lines)


def preview_row(target, *, split: str = "train", index: int = 0, as_json: bool = False, overrides=(),
                color: bool = False) -> str:
    """The preview of one row of `target` (a build directory, or a spec file compiled first)."""
    target = Path(target)
    if target.is_dir():
        if not (target / layout.LOCK).is_file():
            raise BuildError(Problem(f"{target} is not a build (it has no lock.yaml)",
                                     hint="pass a build directory or a spec file"))
        if overrides:
            raise BuildError(Problem("--set applies to a spec file, not to a compiled build", path="--set",
                                     hint="preview the spec file instead, or recompile with --set"))
        return render_row(target, split=split, index=index, as_json=as_json, color=color)

    loaded = load_spec(target, list(overrides))
    with tempfile.TemporaryDirectory(prefix="tunespec-preview-") as tmp:
        build = Path(tmp) / loaded.spec.name
        compile_build(loaded, build, log=lambda s: None, command=f"tunespec preview {target}")
        return render_row(build, split=split, index=index, as_json=as_json, color=color)
