"""`tunespec compile`: spec -> build directory.

The layout of a build and the schema of its records (lock.yaml, manifest.json, template.jinja, data/,
tokens/, tokenizer/, launch files) are tunespec/build_layout.py's; this module writes them.

The build is written to a temporary sibling directory and renamed into place, so a failed or killed
compile leaves no build (and never a half one). The same spec and inputs give byte-identical files
wherever the build goes and in whichever checkout (paths enter the records relative to the spec file's
directory); lock.yaml differs only in `created` and `hints`. An unchanged recompile notices the same input
key in the manifest and returns at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__, micro_batches
from .. import build_layout as layout
from ..atomic import clean_stale, install, refuse_overlap, temp_dir
from ..build_reader import Build
from ..errors import BuildError, DataError, Problem, TemplateError, TunespecError
from ..format_table import FORMATS
from ..hashing import sha256_bytes, sha256_file
from ..model_resolver import ModelRef, model_pins, resolve
from ..records import Record, openai_messages, openai_tools
from ..spec.loader import LoadedSpec
from ..spec.render import to_yaml
from ..spec.resolve import ignored_by_template
from ..special_prefix import manifest_prefix, special_prefix
from ..templating.chat_templates import check_chat_template
from ..templating.templates import Template, chat_generation_prompt
from ..verify import seal_lock
from . import benchmarks as bench
from .added_tokens import extend_vocabulary
from .deepcheck import check_saved_modules
from .flops import estimate_compute
from .launch_files import write_launch_files
from .memory import check_budget, estimate_memory
from .model_cache import load_for_compile
from .pinned_versions import pinned_versions
from .references import check_reference_fields, short_of_references
from .selection import Scores, read_scores, select
from .sources import SPLITS, Drops, drop_problems, form_splits, load_source, source_names, sources_inputs
from .spec_template import template_label, template_of
from .tokenization import (
    RENDER_REASONS,
    context_length,
    first_doubled,
    tokenize_examples,
)
from .tools import DROPPED, IGNORED, manifest_tools, place_calls, place_tools

Log = Callable[[str], None]


@dataclass
class BuildResult:
    path: Path
    reused: bool
    manifest: dict
    messages: list[str] = field(default_factory=list)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def input_key(loaded: LoadedSpec, template: Template, sources: list[list[dict]], scores_sha: str | None = None,
              kcenter_sha: str | None = None, benchmarks: list[dict] | None = None) -> str:
    """A hash of everything the build depends on (spec, data files, template, model reference, version).

    Paths enter it in their portable form (build_layout): the same files in another checkout, or compiled
    into another output directory, give the same key."""
    payload = {
        "format_version": layout.FORMAT_VERSION,
        "tunespec": __version__,
        "spec": layout.portable_spec(loaded),
        "sources": layout.portable_inputs(loaded, sources),
        "template": template.sha256,
    }
    if scores_sha:  # data.selection.ifd: the scores decide which rows are in, so their content is an input
        payload["ifd_scores"] = scores_sha
    if kcenter_sha:  # data.selection.kcenter: likewise its embeddings
        payload["kcenter_scores"] = kcenter_sha
    if benchmarks:  # evaluation.benchmarks: the task files' and their data's hashes (compiler/benchmarks.py)
        payload["benchmarks"] = benchmarks
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode("utf-8"))


def _runtime_outputs(path: Path) -> list[str]:
    return [d for d in layout.RUNTIME_DIRS if (path / d).exists()]


def _check_target(path: Path, key: str, force: bool) -> dict | None:
    """The existing build's manifest when it is up to date; otherwise check it may be replaced."""
    if not path.exists():
        return None
    manifest_path = path / layout.MANIFEST
    if not manifest_path.is_file():
        if path.is_dir() and not any(path.iterdir()):
            return None
        raise BuildError(Problem(f"{path} exists and is not a tunespec build", hint="choose another output directory with -o"))
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError:
        manifest = {}
    outputs = _runtime_outputs(path)
    if manifest.get("input_key") == key:
        try:
            Build(path)  # the runtime's reader: the lock's seal, the manifest's hash, every file's sha256
            return manifest
        except BuildError as e:  # same spec and data, but damaged: never "up to date"
            if outputs and not force:
                raise BuildError(Problem(
                    f"{path} is this spec's build, damaged ({e.problems[0].file or path}: {e.problems[0].message}), "
                    f"and holds runtime outputs "
                    f"({', '.join(outputs)}/)", hint="pass --force to compile it again (its runtime outputs go too), "
                    "or compile to a new directory with -o")) from None
            return None
    if outputs and not force:
        raise BuildError(Problem(
            f"{path} holds a build of a different spec or data, with runtime outputs ({', '.join(outputs)}/)",
            hint="compile to a new directory with -o, or pass --force to replace it and its outputs"))
    return None


def _record_row(rec: Record, template: Template, fmt: str, segments, tokenizer, ref_fields: list[str],
                add_eos: bool = True) -> dict:
    row: dict = {"id": rec.id, "source": rec.source}
    if template.kind == "fields":
        row["prompt"] = segments[0].text
        row["completion"] = segments[1].text
        refs = [rec.fields.get(f, "") for f in ref_fields] if rec.fields else []
        if rec.references is not None:
            refs = list(rec.references)
    else:
        messages = template.messages_of(rec, fmt)
        # the OpenAI/TRL schema (tool_calls with arguments as objects, tool results, a tools list):
        # what TRL and chat templates read; the canonical tool_call role stays internal
        row["messages"] = openai_messages(messages)
        tools = openai_tools(rec.tools)
        if tools:
            row["tools"] = tools
        row["eval_prompt"] = chat_generation_prompt(segments, tokenizer.eos_token, add_eos)
        last = [m["content"] for m in messages if m["role"] in ("assistant", "tool_call")]
        refs = list(rec.references) if rec.references is not None else last[-1:]
    row["references"] = [r for r in refs if r]
    return row


def _length_stats(lengths: np.ndarray) -> dict:
    if len(lengths) == 0:
        return {"min": 0, "median": 0, "p95": 0, "max": 0, "mean": 0}
    return {
        "min": int(lengths.min()),
        "median": float(np.median(lengths)),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
    }


def _model_label(ref: ModelRef, portable: dict) -> str:
    return (portable.get("model") or {}).get("path") or ref.label if ref.path else ref.label


def chat_template_sha(tokenizer) -> str:
    """sha256 of the tokenizer's chat template (templates by name: of their JSON, keys sorted); of "" without one."""
    chat = getattr(tokenizer, "chat_template", None)
    if isinstance(chat, dict):
        chat = json.dumps(chat, sort_keys=True, ensure_ascii=False)
    return sha256_bytes((chat or "").encode("utf-8"))


def compile_build(
    loaded: LoadedSpec, out: Path, *, force: bool = False, log: Log = lambda s: print(s, file=sys.stderr),
    command: str | None = None,
) -> BuildResult:
    """Compile `loaded` into the build directory `out`. A problem that names a spec field (the model's modules,
    a source's id_column, ...) is shown at the position that field was written at."""
    try:
        return _compile(loaded, out, force=force, log=log, command=command)
    except TunespecError as e:
        e.problems = [loaded.locate_spec_field(p) for p in e.problems]
        e.args = (e.render(),)
        raise


def _selection_scores(sel) -> tuple[Scores | None, Scores | None]:
    """The scores files of data.selection.ifd and .kcenter, read and checked (one file read once)."""
    kc = sel.kcenter
    shared = kc is not None and sel.ifd is not None and (
        kc.file is None or Path(kc.file).resolve() == Path(sel.ifd.file).resolve())
    ifd = read_scores(sel.ifd.file, "data.selection.ifd.file", embeddings=shared) if sel.ifd else None
    if kc is None:
        return ifd, None
    return ifd, ifd if shared else read_scores(kc.file, "data.selection.kcenter.file", embeddings=True)


def _compile(loaded: LoadedSpec, out: Path, *, force: bool, log: Log, command: str | None) -> BuildResult:
    spec = loaded.spec
    data = spec.data
    template = template_of(loaded)
    spec_warnings = loaded.warnings + [loaded.locate(p) for p in ignored_by_template(spec, template)]
    inputs = sources_inputs(data.sources)
    ifd_scores, kcenter_scores = _selection_scores(data.selection)
    benches, lm_eval_version = bench.read_inputs(spec.evaluation.benchmarks)
    key = input_key(loaded, template, inputs, ifd_scores and ifd_scores.sha256, kcenter_scores and kcenter_scores.sha256,
                    bench.key_payload(benches, lm_eval_version))
    out = Path(out)
    refuse_overlap(out, [loaded.file, *loaded.extends, *(Path(f["file"]) for i in inputs for e in i
                                                         for f in ([e] if "file" in e else e.get("files", []))),
                         *(s.path for s in (ifd_scores, kcenter_scores) if s),
                         *(p for b in benches for p in ([b.yaml] if b.yaml else []) + [f for f, _ in b.data])],
                   is_dir=True)
    clean_stale(out)  # a killed earlier compile's temporaries (or its old build, moved aside)
    existing = _check_target(out, key, force)
    if existing is not None:
        return BuildResult(out, True, existing, [f"{out}: up to date (input key {key[:12]})"]
                           + ["  warning: " + p.render() for p in spec_warnings])

    t0 = time.perf_counter()
    # every benchmark task built by lm-eval, offline, before anything is written
    bench_warnings = [loaded.locate_spec_field(p) for p in bench.check(benches)]
    ref = ModelRef.from_spec(spec.model)
    model_dir = resolve(ref)
    if Path(model_dir).is_dir():  # the model directory is an input too (its files are hashed into the key)
        refuse_overlap(out, [Path(model_dir)], is_dir=True)
    # without a chat template to apply or tokens to add, a model seen before loads without transformers
    plain = template.kind != "tokenizer" and not (getattr(spec.model, "added_tokens", None)
                                                  or getattr(spec.model, "added_special_tokens", None))
    tokenizer, config = load_for_compile(ref, model_dir, plain=plain)
    check_saved_modules(spec, ref, model_dir)  # names peft would skip silently
    custom_code = _custom_code_problem(config, ref)
    if template.kind == "tokenizer" and not template.source and isinstance(getattr(tokenizer, "chat_template", None), str):
        check_chat_template(tokenizer.chat_template, "the tokenizer's chat template")
    for b in benches:
        if b.spec.apply_chat_template and not getattr(tokenizer, "chat_template", None):
            raise BuildError(Problem("apply_chat_template needs the tokenizer's chat template, and it has none",
                                     path=f"evaluation.benchmarks.{b.index}.apply_chat_template",
                                     hint="set apply_chat_template: false, or use a model whose tokenizer has one"))
    vocab, vocab_warnings = extend_vocabulary(loaded, tokenizer, config, template)  # model.added_tokens; template markers
    ctx = context_length(config)
    max_length = data.tokenization.max_length or ctx or 2048
    if ctx and max_length > ctx:
        raise DataError(Problem(f"max_length {max_length} exceeds the model's context length {ctx}",
                                path="data.tokenization.max_length", hint=f"use at most {ctx}"))

    names = source_names(data.sources)
    ref_fields = spec.evaluation.reference_fields
    results = [load_source(s, i, data, names[i], inputs[i], ref_fields) for i, s in enumerate(data.sources)]
    if ref_fields:
        check_reference_fields(ref_fields, [(r.format, r.columns) for r in results], loaded.locate)
    splits, dup_drops = form_splits(results, data)
    all_drops: dict[str, dict[str, int]] = {}
    problems: list[Problem] = []
    for i, res in enumerate(results):
        if res.dropped:
            all_drops[f"source:{res.name}"] = dict(sorted(res.dropped.items()))
            problems += drop_problems(res.dropped, f"data.sources.{i} ({res.name})")
    if dup_drops:
        all_drops["duplicates"] = dict(sorted(dup_drops.items()))
        problems += drop_problems(dup_drops, "data")

    fmt_of = {res.name: res.format for res in results}
    by_name = {res.name: res for res in results}
    splits["train"], chosen_out, first_out = select(splits, lambda r: fmt_of[r.source.rsplit("#", 1)[0]],
                                                    data.selection, ifd_scores, kcenter_scores)
    if chosen_out:  # the same accounting as every drop: manifest counts, a warning located at the first row
        located = Drops(chosen_out)
        for reason, rec in first_out.items():
            name, _, index = rec.source.rpartition("#")
            located.where[reason] = by_name[name].location(int(index))
        all_drops["selection"] = dict(sorted(chosen_out.items()))
        problems += drop_problems(located, "data.selection")
    kc = data.selection.kcenter
    if kc is not None and isinstance(kc.keep, int) and len(splits["train"]) < kc.keep:  # a count over the rows
        problems.append(loaded.locate_spec_field(Problem(
            f"k-center keeps {kc.keep} rows, but only {len(splits['train'])} train rows reach it: all of them are "
            "kept", path="data.selection.kcenter.keep",
            hint="lower the count, or write a fraction (e.g. 0.5) to keep a share of the rows")))
    ref_fields_of = {
        f: (spec.evaluation.reference_fields or ([FORMATS[f].reference] if FORMATS[f].reference else []))
        for f in set(fmt_of.values())
    }
    train_on = data.tokenization.train_on
    if train_on == "auto":
        train_on = "completion"
    if train_on == "assistant_turns":
        train_on = "completion"

    try:
        tmp = temp_dir(out, marker=False)  # manifest.json marks a build
    except OSError as e:
        raise _write_error(e, out.parent) from None
    try:
        (tmp / layout.DATA_DIR).mkdir()
        (tmp / layout.TOKENS_DIR).mkdir()
        split_stats: dict[str, dict] = {}
        prefixed = 0  # rows that got the special prefix put before them (special_prefix.manifest_prefix)
        short_refs: dict[str, int] = {}  # rows per split with fewer references than evaluation.reference_fields
        tool_counts: Counter = Counter()  # rows kept with tool definitions, by what happened to them (tools.py)
        call_counts: Counter = Counter()  # rows kept with tool calls, by how the model's chat template renders them
        first_tool_row: dict[str, Record] = {}
        special_text = _special_text_problem(splits, tokenizer, by_name)
        for split in SPLITS:
            records = splits[split]
            if not records:
                continue
            fmts = [fmt_of[r.source.rsplit("#", 1)[0]] for r in records]
            records, outcomes, call_outcomes = _placed_tools(records, fmts, template, tokenizer, data.tools, by_name)
            rendering = (_render_row(template, r, f, tokenizer, data.tokenization.add_eos, by_name)
                         for r, f in zip(records, fmts))  # encoded as rendered
            tok = tokenize_examples(rendering, tokenizer, max_length=max_length, overlong=data.tokenization.overlong,
                                    train_on=train_on, add_eos=data.tokenization.add_eos)
            rendered = tok.examples
            for i in tok.kept:  # what happened to the tool definitions of the rows kept (tools.place_tools)
                if outcomes[i]:
                    tool_counts[outcomes[i]] += 1
                    first_tool_row.setdefault(outcomes[i], records[i])
                if call_outcomes[i]:
                    call_counts[call_outcomes[i]] += 1
            if ref_fields:
                short_refs[split] = short_of_references([records[i] for i in tok.kept], ref_fields)
            prefixed += tok.prefixed
            _check_specials(tok, special_prefix(tokenizer), tokenizer.eos_token_id, template, records, by_name, split)
            if tok.dropped:  # one accounting: the manifest's counts, and a warning per reason at its first row
                all_drops[f"split:{split}"] = dict(sorted(tok.dropped.items()))
                for stage, reasons in (("data.template", RENDER_REASONS),
                                       ("data.tokenization", set(tok.dropped) - RENDER_REASONS)):
                    located = Drops({r: n for r, n in tok.dropped.items() if r in reasons})
                    for reason in located:
                        name, _, index = records[tok.first_dropped[reason]].source.rpartition("#")
                        located.where[reason] = by_name[name].location(int(index))
                    problems += drop_problems(located, f"{stage} ({split})")
            with open(tmp / layout.data_file(split), "w", encoding="utf-8", newline="\n") as f:
                for i in tok.kept:
                    row = _record_row(records[i], template, fmts[i], rendered[i], tokenizer, ref_fields_of[fmts[i]],
                                      add_eos=data.tokenization.add_eos)
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            np.save(tmp / layout.token_file(split, "ids"), tok.ids)
            np.save(tmp / layout.token_file(split, "trained"), tok.trained)
            np.save(tmp / layout.token_file(split, "offsets"), tok.offsets)
            lengths = tok.lengths()
            trained = int(tok.trained.sum())
            split_stats[split] = {
                "rows": len(tok),
                "tokens": int(len(tok.ids)),
                "trained_tokens": trained,
                "trained_fraction": round(trained / max(1, len(tok.ids)), 4),
                "truncated": tok.truncated,
                "length": _length_stats(lengths),
            }
        if "train" not in split_stats or split_stats["train"]["rows"] == 0:
            raise DataError(problems + [Problem("no training rows are left", path="data.sources",
                                                hint="fix the dropped rows listed above, or check the sources' split names")])
        if data.strict and problems:
            raise DataError(problems)
        train_lengths = np.diff(np.load(tmp / layout.token_file("train", "offsets")))
        batching = micro_batches.resolve(spec, config, max_length=max_length, train_tokens=int(train_lengths.sum()))
        per_epoch = micro_batches.per_epoch(batching, train_lengths, spec.training.seed)
        longest = split_stats["train"]["length"]["max"]
        if batching.packed:  # one concatenated sequence of (up to) the bins' tokens
            seq_len, rows = batching.bin_tokens * batching.per_micro, 1
        else:
            seq_len, rows = -(-longest // 8) * 8, batching.per_micro
        memory = estimate_memory(spec, vocab.sized_config(config) if vocab else config, seq_len=seq_len,
                                 trained_fraction=split_stats["train"]["trained_fraction"], micro_batch_rows=rows)
        check_budget(memory, spec.launch.gpu_memory_gib)
        compute = estimate_compute(spec, config, lengths=train_lengths, batches_per_epoch=per_epoch,
                                   loss_tokens=split_stats["train"]["trained_tokens"], max_length=max_length)
        step_micro = spec.training.gradient_accumulation_steps * spec.launch.num_processes * spec.launch.num_machines
        batching_record = {
            "mode": batching.mode, "per_micro_batch": batching.per_micro, "bin_tokens": batching.bin_tokens,
            "why": batching.why, "micro_batches_per_epoch": per_epoch,
            # the mean optimizer step, in rows and tokens (every process, every accumulated micro-batch)
            "step_rows": round(len(train_lengths) / per_epoch * step_micro, 1),
            "step_tokens": round(int(train_lengths.sum()) / per_epoch * step_micro),
        }

        tokenizer.save_pretrained(tmp / layout.TOKENIZER_DIR)
        if template.source:  # the runtime renders new prompts from this copy, never from the original file
            (tmp / layout.TEMPLATE).write_bytes(template.source.encode("utf-8"))
        write_launch_files(spec, tmp)
        bench_manifest, bench_lock = bench.install_files(benches, tmp, loaded, lm_eval_version)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        file_hashes = {f: sha256_file(tmp / f) for f in files}
        # `template: tokenizer`: the template is the model's chat template (its own hash, not the empty source's)
        template_sha = template.sha256 if template.source else chat_template_sha(tokenizer)
        tokenizer_sha = sha256_bytes(b"".join(bytes.fromhex(file_hashes[f]) for f in files if f.startswith("tokenizer/")))
        manifest = {
            "format_version": layout.FORMAT_VERSION,
            "input_key": key,
            "name": spec.name,
            "max_length": max_length,
            "eos_token_id": int(tokenizer.eos_token_id),
            "vocab_size": len(tokenizer),
            **manifest_prefix(special_prefix(tokenizer), prefixed, sum(s["rows"] for s in split_stats.values())),
            "pad_token_id": int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else None,
            "template": {"name": template_label(loaded, template), "kind": template.kind, "sha256": template_sha,
                         "stop": template.stop, **({"file": layout.TEMPLATE} if template.source else {})},
            **({"vocabulary": vocab.to_dict()} if vocab else {}),
            "splits": split_stats,
            "batching": batching_record,
            "memory_estimate": memory.to_dict(),
            "compute_estimate": compute.to_dict(),
            "dropped": all_drops,
            **({"tools": manifest_tools(data.tools, tool_counts)} if tool_counts else {}),
            **({"tool_calls": dict(sorted(call_counts.items()))} if call_counts else {}),
            **({"references": {"fields": list(ref_fields), "rows_with_fewer": short_refs}} if ref_fields else {}),
            **({"benchmarks": bench_manifest} if benches else {}),
            "files": file_hashes,
        }
        layout.Manifest.model_validate(manifest)  # the schema the runtime reads it with
        (tmp / layout.MANIFEST).write_bytes(_json_bytes(manifest))
        sdir = layout.spec_dir(loaded)
        portable = layout.portable_spec(loaded)
        lock = layout.Lock(
            tunespec_lock=layout.FORMAT_VERSION,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            reproduce="tunespec rerun BUILD/lock.yaml -o NEW_BUILD",
            spec_file=layout.portable_path(loaded, "spec_file", str(Path(loaded.file).resolve())),
            extends=[layout.portable_path(loaded, "extends", str(Path(p).resolve())) for p in loaded.extends],
            overrides=list(loaded.overrides),
            input_key=key,
            spec=portable,
            inputs={
                "sources": [{"name": r.name, "split": r.split, "format": r.format, "rows_read": r.read, "entries": e,
                             **({"hub": r.pins} if r.pins else {})}
                            for r, e in zip(results, layout.portable_inputs(loaded, inputs))],
                "template": {"name": template_label(loaded, template), "sha256": template_sha, "stop": template.stop},
                "tokenizer": {"sha256": tokenizer_sha},
                **({"selection_scores": {
                    "file": layout.portable_path(loaded, ifd_scores.where, str(ifd_scores.path)),
                    "sha256": ifd_scores.sha256}} if ifd_scores else {}),
                **({"selection_embeddings": {
                    "file": layout.portable_path(loaded, kcenter_scores.where, str(kcenter_scores.path)),
                    "sha256": kcenter_scores.sha256}} if kcenter_scores else {}),
                **({"benchmarks": bench_lock} if benches else {}),
                "model": {"reference": _model_label(ref, portable), "revision": ref.revision,
                          "trust_remote_code": ref.trust_remote_code, **model_pins(ref, model_dir)},
            },
            vocabulary=vocab.to_dict() if vocab else None,
            versions={**pinned_versions(ref.packaged),
                      **({"lm_eval": lm_eval_version} if benches else {})},
            manifest_sha256=sha256_bytes((tmp / layout.MANIFEST).read_bytes()),
            hints=layout.Hints(spec_dir=str(sdir), build=str(out.resolve()), command=command, model_dir=str(model_dir),
                               spec_dir_from_build=layout.posix_path(os.path.relpath(sdir, out.resolve()))),
        ).to_data()
        if lock["vocabulary"] is None:
            del lock["vocabulary"]
        (tmp / layout.LOCK).write_text(seal_lock("# tunespec lock file: the portable resolved spec (paths relative to "
                                                 "the spec file's directory) and the hashes of its inputs.\n"
                                                 + to_yaml(lock)), encoding="utf-8")
        install(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    messages = [f"{out}: compiled in {time.perf_counter() - t0:.1f}s"]
    for split, st in split_stats.items():
        messages.append(f"  {split}: {st['rows']} rows, {st['tokens']} tokens ({st['trained_fraction']:.0%} trained), "
                        f"length median {st['length']['median']:.0f} max {st['length']['max']}")
    b = manifest["batching"]
    messages.append(f"  batching: {micro_batches.MicroBatching(b['mode'], b['per_micro_batch'], b['bin_tokens'], b['why']).describe()}; "
                    f"{b['micro_batches_per_epoch']} an epoch; a step takes {b['step_rows']:g} rows, {b['step_tokens']:,} tokens on average")
    messages += ["  " + line for line in memory.render().splitlines()]
    if vocab:
        messages += ["  " + vocab.summary()] + ["  warning: " + p.render() for p in vocab_warnings]
    messages += ["  " + line for line in compute.render().splitlines()]
    for split, n in short_refs.items():
        if n:
            problems.append(loaded.locate(Problem(
                f"{n} of {split_stats.get(split, {}).get('rows', n)} {split} rows have fewer references than the "
                f"{len(ref_fields)} fields named", path="evaluation.reference_fields",
                hint="those rows are scored against the references they have; fill the empty columns")))
    for b in bench_manifest:
        messages.append(f"  benchmark {b['task']}: {b['evaluated']} of {b['docs']} documents, {b['num_fewshot']}-shot "
                        f"({b['output_type']}; {'chat template' if b['apply_chat_template'] else 'plain prompts'})")
    for p in spec_warnings + problems + bench_warnings + custom_code + special_text + _tool_problems(data.tools, tool_counts, first_tool_row, by_name):
        messages.append("  warning: " + p.render())
    return BuildResult(out, False, manifest, messages)


@contextlib.contextmanager
def _rendering(template: Template, rec: Record, by_name):
    """Any template error raised while rendering `rec` (its tools, calls or segments) names the template and the
    row it failed on: the one place a rendering error gets its row."""
    try:
        yield
    except TemplateError as e:
        name, _, index = rec.source.rpartition("#")
        data_file, data_line, row = by_name[name].location(int(index))
        where = f"{data_file}:{data_line}" if data_file and data_line else f"{name} row {row}"
        label = template.name if template.source else "the tokenizer's chat template"
        raise TemplateError([dataclasses.replace(p, file=p.file or label, message=f"{p.message} (rendering row {row}, "
                                                 f"{where})") for p in e.problems]) from None


def _render_row(template: Template, rec: Record, fmt: str, tokenizer, add_eos: bool, by_name) -> list:
    """``template.render`` of one record; a template error names the template and the row it failed on."""
    with _rendering(template, rec, by_name):
        return template.render(rec, fmt, tokenizer, add_eos=add_eos)


def _placed_tools(records: list[Record], fmts: list[str], template: Template, tokenizer,
                  mode: str, by_name) -> tuple[list[Record], list[str | None], list[str | None]]:
    """The records as rendered under ``data.tools`` (tools.place_tools) with their tool calls as the chat
    template renders them (tools.place_calls), and what happened to each one's tool definitions and calls
    (None: it had none)."""
    out, outcomes, call_outcomes = [], [], []
    for rec, fmt in zip(records, fmts):
        with _rendering(template, rec, by_name):
            placed, outcome = place_tools(template, rec, fmt, tokenizer, mode)
            called, call_outcome = place_calls(template, placed, fmt, tokenizer)
        out.append(called)
        outcomes.append(outcome)
        call_outcomes.append(call_outcome)
    return out, outcomes, call_outcomes


def _custom_code_problem(config, ref: ModelRef) -> list[Problem]:
    """A model directory whose config names its own code (``auto_map``: modeling_*.py beside the weights): that
    code is never run unless model.trust_remote_code is set; say so, since the model then loads as transformers'
    built-in class for its model_type (or not at all)."""
    auto_map = getattr(config, "auto_map", None)
    if not isinstance(auto_map, dict) or not auto_map or ref.trust_remote_code:
        return []
    names = ", ".join(sorted({str(v if isinstance(v, str) else (v[0] if v else "")) for v in auto_map.values()}))
    return [Problem(f"the model directory has custom code (auto_map: {names}) that is not run: the model loads as "
                    f"transformers' own {getattr(config, 'model_type', '?')} classes", path="model",
                    hint="to run the model's code, read it and set model.trust_remote_code: true")]


def _special_text_problem(splits: dict[str, list[Record]], tokenizer, by_name) -> list[Problem]:
    """Rows whose data (not the template's text) holds the text of one of the tokenizer's special tokens
    (``</s>``, ``<|im_start|>``): it tokenizes as that control token, as TRL and ``apply_chat_template`` would
    tokenize it. The rows are kept (the data may mean it: a chat log with markup) and counted, the first located."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(backend, "encode_special_tokens", False):  # split_special_tokens: plain text
        return []
    specials = sorted({t.content for t in backend.get_added_tokens_decoder().values() if t.special and len(t.content) > 1},
                      key=len, reverse=True)
    if not specials:
        return []
    pattern = re.compile("|".join(map(re.escape, specials)))
    count, first, seen = 0, None, set()
    for records in splits.values():
        for rec in records:
            values = list((rec.fields or {}).values()) + [m.get("content") for m in rec.messages or ()]
            found = {m for v in values if isinstance(v, str) for m in pattern.findall(v)}
            if found:
                count += 1
                first = first or rec
                seen |= found
    if not count:
        return []
    name, _, index = first.source.rpartition("#")
    data_file, data_line, row = by_name[name].location(int(index))
    listed = ", ".join(f"`{t}`" for t in sorted(seen))
    return [Problem(f"{count} row{'s' if count != 1 else ''} hold the text of a special token ({listed}) in their "
                    f"data (first: row {row}): it is encoded as the control token, not as text",
                    file=data_file or name, line=data_line,
                    hint="the rows are kept as they are; remove the token text from the data if it is not meant")]


def _tool_problems(mode: str, counts: Counter, first: dict[str, Record], by_name) -> list[Problem]:
    """Warnings for tool definitions the chat template ignored (auto) or that were dropped (drop)."""
    out = []
    total = sum(counts.values())
    for outcome, says, hint in (
        (IGNORED, "the chat template ignores tool definitions: {n} of {total} rows with tools got them in "
                  "their system turn instead (data.tools: auto)",
         "choose a template that renders `tools` (e.g. chatml), or set data.tools: system (no warning) or drop"),
        (DROPPED, "{n} of {total} rows with tools: their tool definitions were dropped (data.tools: drop)",
         "set data.tools: auto to render them"),
    ):
        n = counts[outcome]
        if not n:
            continue
        rec = first[outcome]
        name, _, index = rec.source.rpartition("#")
        data_file, data_line, row = by_name[name].location(int(index))
        out.append(Problem(says.format(n=n, total=total) + f" (first: row {row})", path="data.tools",
                           file=data_file, line=data_line, hint=hint))
    return out


def _check_specials(tok, prefix: list[int], eos: int | None, template: Template, records, by_name, split: str) -> None:
    """A row whose ids start with the BOS twice, or hold two EOS in a row, is a template error: name the
    template (its line that writes the token, where one does) and the row."""
    found = first_doubled(tok, prefix, eos)
    if found is None:
        return
    i, what = found
    rec = records[tok.kept[i]]
    name, _, index = rec.source.rpartition("#")
    data_file, data_line, row = by_name[name].location(int(index))
    where = f"{data_file}:{data_line}" if data_file and data_line else f"{name} row {row}"
    source, file = template.source, template.name
    if template.kind == "tokenizer":
        source, file = "", "the tokenizer's chat template"
    marker = "bos_token" if "start" in what else "eos_token"
    line = next((n for n, text in enumerate(source.splitlines(), 1) if marker in text), None)
    raise TemplateError(Problem(
        f"{what} of every row it renders ({split} row {i}, from {where}): the template writes the token "
        "and it is added again", file=file, line=line, path="data.template",
        hint="write BOS/EOS once: leave {{ bos_token }} to the chat template, or drop it from the template"))


def _write_error(e: OSError, where: Path) -> BuildError:
    """A failed write (full disk, read-only or missing directory) as a user-facing error; nothing is left behind."""
    return BuildError(Problem(f"cannot write the build: {e.strerror or e}", file=str(e.filename or where),
                              hint="free some space, or choose a writable output directory with -o"))
