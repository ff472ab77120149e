"""`tunespec report BUILD [OTHER] [-o FILE]`: one self-contained HTML page of a build (or two side by side).

The page needs no network: the data is embedded as JSON, the charts are SVG drawn by the page's own
script, and its CSS and script are inlined from ``report_page/``. It reads only the build directory,
through the same checks as the runtime: ``Build`` (the lock's seal, every file's sha256), and
``Build.output`` for the trained model and ``eval/`` (their seals, made from this compile). A damaged input
is an error (exit 2, nothing written); an output that is not there yet (not trained, not evaluated) leaves
its section saying which command makes it, and is listed in ``Report.missing``.

Sections of one run:

- training: ``train/metrics.jsonl`` per logged step (loss raw and smoothed on the page, eval loss, learning
  rate, tokens/s, peak GPU memory where CUDA recorded it); lines a kill cut short are skipped and counted;
- evaluation: ``eval/rouge.json`` (ROUGE F1 with its 95% bootstrap interval, base vs tuned, eval loss) and
  ``eval/predictions.jsonl`` (each row's prompt, references, outputs and per-row scores);
- data: the manifest's rows, tokens and trained fraction per split, the compile's dropped rows by reason,
  a token-length histogram per split, and the loss mask of the first train rows;
- lock: what reproduces the build (the command, the inputs' sha256, the versions).

Two builds: the spec difference (the locks' portable specs, key by key), every curve of both runs on one
chart, both ROUGE tables, and per-row scores of the two tuned models matched by row id.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from .. import build_layout as layout
from ..atomic import recover, write_text
from ..build_reader import Build, trained_spans
from ..errors import BuildError, Problem
from ..spec.adapter import is_peft
from .train_metrics import read_metrics

PAGE_DIR = Path(__file__).with_name("report_page")
PREVIEW_ROWS = 3  # train rows whose loss mask the data section shows
HISTOGRAM_BINS = 30
ROUGE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass
class Report:
    html: str
    missing: list[str] = field(default_factory=list)  # "what is not there yet — the command that makes it"
    notes: list[str] = field(default_factory=list)  # other things a reader should know (cut metric lines, ...)


# --------------------------------------------------------------------------- reading one build


def _finite(x):
    """JSON has no NaN or infinity: such a value becomes None (a gap in a chart)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _training(build: Build, missing: list[str], notes: list[str]) -> dict:
    """The logged metrics and the trained model's state (its output checked through its seal)."""
    final_name = "adapter" if is_peft(build.spec.adapter) else "merged"
    out: dict = {"model_output": final_name, "finished": False, "final": None, "train": [], "eval": [],
                 "cut_lines": 0, "total_steps": build.spec.training.max_steps}
    if (build.path / final_name).exists():
        stamp = build.output(final_name)  # damaged or from another compile: exit 2
        out["finished"] = True
        out["final"] = stamp.get("final")
    metrics = build.train_dir / "metrics.jsonl"
    if not metrics.is_file():
        missing.append(f"training metrics (train/metrics.jsonl) — train: tunespec train {build.path}")
        return out
    try:
        log = read_metrics(metrics)
    except (OSError, UnicodeDecodeError) as e:
        raise BuildError(Problem(f"cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})",
                                 file=str(metrics), hint=f"train again: tunespec train {build.path} --restart")) from None
    out["cut_lines"] = log.cut_lines
    for rec in log.records:
        if "loss" in rec:
            out["train"].append({k: rec.get(k) for k in ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s",
                                                         "step_time_s", "trained_tokens", "padding_fraction",
                                                         "peak_memory_gib")})
        if "eval_loss" in rec:
            out["eval"].append({"step": rec["step"], "eval_loss": rec["eval_loss"]})
    if out["cut_lines"]:
        notes.append(f"{metrics}: {out['cut_lines']} line(s) that are not whole metric records were skipped")
    if not out["finished"]:
        missing.append(f"the trained model ({final_name}/) — training has not finished: tunespec train {build.path} "
                       "resumes it")
    return out


def _evaluation(build: Build, final_name: str, missing: list[str], notes: list[str]) -> dict | None:
    """eval/rouge.json and eval/predictions.jsonl, read through eval/'s seal; None when not evaluated yet."""
    if not build.eval_dir.exists():
        recover(build.eval_dir)
    if not build.eval_dir.exists():
        missing.append(f"the evaluation (eval/) — evaluate: tunespec evaluate {build.path}")
        return None
    summary = build.output("eval")  # its seal and input key; damaged: exit 2
    model_stamp = build.path / final_name / layout.STAMP
    if model_stamp.is_file() and (build.eval_dir / "rouge.json").stat().st_mtime < model_stamp.stat().st_mtime:
        notes.append(f"eval/ is older than {final_name}/ (trained again since): its scores are of the earlier model; "
                     f"evaluate again: tunespec evaluate {build.path}")
    labels = [k for k, v in summary.items() if isinstance(v, dict) and "model" in v]
    file = build.eval_dir / "predictions.jsonl"
    rows = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except ValueError as e:  # the seal checked its bytes: only a tunespec bug gets here
                raise BuildError(Problem(f"not valid JSON: {e}", file=str(file), line=n,
                                         hint=f"evaluate again: tunespec evaluate {build.path}")) from None
            preds, scores = {}, {}
            for label in labels:
                single = len(labels) == 1
                p = rec.get("prediction" if single else f"prediction_{label}")
                if p is not None:
                    preds[label] = p
                    scores[label] = rec.get("scores" if single else f"scores_{label}") or {}
            rows.append({"id": rec.get("id"), "prompt": rec.get("prompt"), "references": rec.get("references") or [],
                         "predictions": preds, "scores": scores})
    return {"summary": summary, "labels": labels, "rows": rows}


def _histogram(lengths: np.ndarray, max_length: int) -> dict:
    """Rows per token-length bin, over the split's own range of lengths (at most HISTOGRAM_BINS bins)."""
    if len(lengths) == 0:
        return {"edges": [], "counts": [], "max_length": max_length}
    lo, hi = int(lengths.min()), int(lengths.max()) + 1
    counts, edges = np.histogram(lengths, bins=min(HISTOGRAM_BINS, hi - lo), range=(lo, hi))
    return {"edges": [round(float(e), 2) for e in edges], "counts": [int(c) for c in counts], "max_length": max_length}


def _first_rows(build: Build, split: str, n: int) -> list[dict]:
    """The first `n` records of data/<split>.jsonl (its bytes were checked against the manifest by Build)."""
    rows = []
    with open(build.path / layout.data_file(split), encoding="utf-8") as f:
        for line in f:
            if len(rows) == n:
                break
            rows.append(json.loads(line))
    return rows


def _data(build: Build) -> dict:
    """Rows per split, drops by reason, token lengths, the trained fraction and the loss mask of a few rows."""
    splits = {}
    for name, stats in build.splits.items():
        tokens = build.tokens(name)
        splits[name] = {**stats, "histogram": _histogram(np.asarray(tokens.lengths), build.max_length)}
    preview = []
    if build.has_split("train") and build.splits["train"]["rows"]:
        tokenizer = build.load_tokenizer()
        tokens = build.tokens("train")
        rows = _first_rows(build, "train", PREVIEW_ROWS)
        for i in range(min(PREVIEW_ROWS, len(tokens))):
            ids, mask = tokens.row(i)
            spans = [[bool(t), tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)]
                     for t, part in trained_spans(ids.tolist(), mask.astype(bool).tolist())]
            preview.append({"id": rows[i].get("id"), "source": rows[i].get("source"), "tokens": int(len(ids)),
                            "trained": int(mask.sum()), "spans": spans})
    return {"splits": splits, "dropped": build.manifest.get("dropped") or {}, "preview": preview,
            "max_length": build.max_length, "template": build.template, "batching": build.batching}


def _lock(build: Build) -> dict:
    lock = build.lock
    keep = ("tunespec_lock", "created", "reproduce", "spec_file", "extends", "overrides", "input_key",
            "manifest_sha256", "inputs", "versions", "vocabulary")
    out = {k: lock.get(k) for k in keep if k in lock}
    out["command"] = (lock.get("hints") or {}).get("command")
    out["spec"] = lock["spec"]
    return out


def collect(path: str | Path, missing: list[str], notes: list[str]) -> dict:
    """Everything the page shows of one build (JSON-ready)."""
    path = Path(path)
    if not path.exists():
        raise BuildError(Problem("no such build directory", file=str(path),
                                 hint="compile one first: tunespec compile SPEC -o BUILD"))
    build = Build(path)
    spec = build.spec
    training = _training(build, missing, notes)
    evaluation = _evaluation(build, training["model_output"], missing, notes)
    run = {"name": spec.name, "path": str(path), "description": spec.description,
           "model": build.lock["spec"].get("model"), "adapter": spec.adapter.method,
           "training": training, "evaluation": evaluation, "data": _data(build), "lock": _lock(build),
           "generation": spec.evaluation.model_dump(include={"max_new_tokens", "num_beams", "do_sample",
                                                               "temperature", "top_p", "seed"})}
    return _finite(run)


# --------------------------------------------------------------------------- two builds


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(node, list) and node and any(isinstance(v, (dict, list)) for v in node):
        out = {}
        for i, v in enumerate(node):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: node}


def spec_diff(a: dict, b: dict) -> list[dict]:
    """The keys (dotted) where two portable specs differ, with both values (None where a key is absent)."""
    fa, fb = _flatten(a), _flatten(b)
    return [{"key": k, "a": fa.get(k), "b": fb.get(k), "only": "a" if k not in fb else "b" if k not in fa else None}
            for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k) or (k in fa) != (k in fb)]


# --------------------------------------------------------------------------- the page


def _script_json(data) -> str:
    """JSON safe inside <script type="application/json">: no `</script>`, `<!--` or `]]>` can appear."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e") \
               .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render(paths: list[str | Path]) -> Report:
    """The page for one build, or two compared (the first is A, the second B)."""
    missing: list[str] = []
    notes: list[str] = []
    runs = []
    for p in paths:
        before = len(missing)
        runs.append(collect(p, missing, notes))
        if len(paths) > 1:  # say which build each line is about
            missing[before:] = [f"{'AB'[len(runs) - 1]}: {m}" for m in missing[before:]]
    data = {"tunespec": __version__, "runs": runs, "missing": missing, "notes": notes}
    if len(runs) == 2:
        data["spec_diff"] = spec_diff(runs[0]["lock"]["spec"], runs[1]["lock"]["spec"])
    page = (PAGE_DIR / "report.html").read_text(encoding="utf-8")
    css = (PAGE_DIR / "report.css").read_text(encoding="utf-8")
    js = (PAGE_DIR / "report.js").read_text(encoding="utf-8")
    title = " vs ".join(r["name"] for r in runs)
    import html as _html

    for marker, value in (("/*REPORT_CSS*/", css), ("/*REPORT_JS*/", js.replace("</script", "<\\/script")),
                          ("REPORT_DATA", _script_json(data)), ("REPORT_TITLE", _html.escape(f"tunespec report: {title}"))):
        page = page.replace(marker, value, 1)
    return Report(page, missing, notes)


def write_report(paths: list[str | Path], output: Path | None = None, *, log=print) -> Path:
    """Render and write the page (whole or not at all); default ``BUILD/report.html`` of the first build."""
    report = render(paths)
    out = Path(output) if output else Path(paths[0]) / layout.REPORT
    if out.is_dir():
        raise BuildError(Problem("is a directory", file=str(out), hint="pass a file name, e.g. -o report.html"))
    try:
        write_text(out, report.html)
    except OSError as e:
        raise BuildError(Problem(f"cannot write: {e.strerror}", file=str(out),
                                 hint="check that the directory exists and is writable")) from None
    for m in report.missing:
        log(f"not in the report yet: {m}")
    for n in report.notes:
        log(f"note: {n}")
    log(f"wrote {out} ({len(report.html.encode('utf-8')) / 1024:.0f} KiB)")
    return out
