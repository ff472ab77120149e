"""Tests of the spec language through the real CLI: the bad-spec corpus, the example specs, `show`,
`--set`, `extends`, the JSON Schema and the generated README reference.

The bad-spec corpus lives in ``tests/bad_specs/``. Each ``NN-name.yaml`` states what `tunespec validate`
must report, in comment lines at its top (or in a sidecar ``NN-name.expect`` when the file cannot hold
them: an empty file, bytes that are not UTF-8)::

    # expect: [FILE:]LINE:COL: PATH: MESSAGE

* ``FILE`` defaults to the bad spec itself; a relative name is taken from ``tests/bad_specs/``
  (``bases/78-base-with-error.yaml``), ``--set ARG`` names an override, ``(none)`` means no file part;
* ``LINE``, ``COL`` and ``PATH`` may be ``-`` when the error has no such part;
* ``MESSAGE`` must occur in the rest of that error line (after ``PATH: ``).

Each expectation must match one ``error:`` line of stderr exactly at its start; the run must exit 2 with
as many error lines as expectations, every error line must carry a ``—`` hint, and nothing may print a
traceback. A ``# reject: TEXT`` line names text stderr must not contain. A sidecar ``NN-name.set`` holds
``--set`` overrides, one per line. A ``# known-issue:``
line marks a spec that shows a loader bug not fixed yet: the test is a strict xfail, so it flips to a
failure (remove the marker) once the bug is fixed. ``tests/bad_specs/bases/`` holds files that bad
specs extend; they are not run on their own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydantic
import pytest
from click.testing import CliRunner
from helpers import invoke_in_process

from tunespec.cli import main
from tunespec.errors import SpecError
from tunespec.spec.loader import load_spec
from tunespec.spec.reference import reference_markdown
from tunespec.spec.render import resolved_dict

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "bad_specs"
SPECS = REPO / "specs"
SCHEMA_FILE = REPO / "tunespec.schema.json"
README = REPO / "README.md"

EXPECT = re.compile(r"^#\s*expect:\s*(?:(?P<file>.+?):)?(?P<line>\d+|-):(?P<col>\d+|-): (?P<path>\S+): (?P<msg>.+)$")
HINT = " — "


# --------------------------------------------------------------------------- the bad-spec corpus


@dataclass(frozen=True)
class Expect:
    file: str | None
    line: str
    col: str
    path: str
    msg: str

    def prefix(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line != "-":
                where += f":{self.line}"
                if self.col != "-":
                    where += f":{self.col}"
            where += ": "
        return "error: " + where + (f"{self.path}: " if self.path != "-" else "")

    def __str__(self) -> str:
        return f"{self.prefix()}...{self.msg}..."


@dataclass(frozen=True)
class BadSpec:
    path: Path
    expects: tuple[Expect, ...]
    overrides: tuple[str, ...]
    known_issue: str | None
    rejects: tuple[str, ...] = ()

    @property
    def rel(self) -> str:
        return self.path.relative_to(REPO).as_posix()


def _parse_bad_spec(path: Path) -> BadSpec:
    sidecar = path.with_suffix(".expect")
    header = (sidecar if sidecar.exists() else path).read_text(encoding="utf-8").splitlines()
    expects, issue, rejects = [], None, []
    for text in header:
        if text.startswith("# known-issue:"):
            issue = text.split(":", 1)[1].strip()
            continue
        if text.startswith("# reject:"):
            rejects.append(text.split(":", 1)[1].strip())
            continue
        if not re.match(r"^#\s*expect:", text):
            continue
        m = EXPECT.match(text)
        assert m, f"{path.name}: malformed expectation {text!r}"
        file = m["file"]
        if file is None:
            file = path.relative_to(REPO).as_posix()
        elif file == "(none)":
            file = None
        elif not file.startswith("--set"):
            file = os.path.normpath((path.parent / file).relative_to(REPO)).replace(os.sep, "/")
        expects.append(Expect(file, m["line"], m["col"], m["path"], m["msg"]))
    sets = path.with_suffix(".set")
    overrides = tuple(ln for ln in sets.read_text(encoding="utf-8").splitlines() if ln) if sets.exists() else ()
    return BadSpec(path, tuple(expects), overrides, issue, tuple(rejects))


BAD_SPECS = [_parse_bad_spec(p) for p in sorted(BAD.glob("*.yaml"))]


def _validate_args(spec: BadSpec) -> list[str]:
    args = ["validate", spec.rel]
    for o in spec.overrides:
        args += ["--set", o]
    return args


# Run through a real `python -m tunespec.cli` process: one bad spec of each kind (the rest run in-process
# through click's CliRunner, which is ~50x faster). TUNESPEC_TEST_SUBPROCESS=1 runs every one as a process.
SUBPROCESS = {"01", "41", "47", "53", "60", "62", "66", "69", "71", "77", "78", "81", "84"}
ALL_SUBPROCESS = os.environ.get("TUNESPEC_TEST_SUBPROCESS") == "1"


@dataclass(frozen=True)
class Run:
    exit_code: int
    stdout: str
    stderr: str
    traceback: str  # a traceback the run printed, or an exception CliRunner caught; "" when none
    how: str


def _run_subprocess(spec: BadSpec) -> Run:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"}
    r = subprocess.run([sys.executable, "-m", "tunespec.cli", *_validate_args(spec)], cwd=REPO, capture_output=True,
                       text=True, encoding="utf-8", env=env, timeout=60)
    tb = r.stdout + r.stderr if "Traceback" in r.stdout + r.stderr else ""
    return Run(r.returncode, r.stdout, r.stderr, tb, "subprocess")


def _run_in_process(spec: BadSpec) -> Run:
    return Run(*invoke_in_process(_validate_args(spec)), "CliRunner")


@pytest.fixture(scope="module")
def bad_runs() -> dict[str, Run]:
    """Every bad spec through the CLI (`validate`), from the repo root so that files show as tests/bad_specs/..."""
    old = Path.cwd()
    os.chdir(REPO)
    try:
        procs = [s for s in BAD_SPECS if ALL_SUBPROCESS or s.path.name[:2] in SUBPROCESS]
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            runs = dict(zip((s.rel for s in procs), pool.map(_run_subprocess, procs)))
        for spec in BAD_SPECS:
            if spec.rel not in runs:
                runs[spec.rel] = _run_in_process(spec)
    finally:
        os.chdir(old)
    return runs


def test_corpus_size_and_shape():
    assert len(BAD_SPECS) >= 45
    numbers = [p.path.name.split("-", 1)[0] for p in BAD_SPECS]
    assert all(n.isdigit() and len(n) in (2, 3) for n in numbers), numbers  # 00-99, then 100-
    assert len(set(numbers)) == len(numbers), "two bad specs share a number"
    for spec in BAD_SPECS:
        assert spec.expects, f"{spec.rel}: no `# expect:` line"
    # the non-UTF-8 specimen must stay non-UTF-8 (an editor or a fixer may "repair" it)
    with pytest.raises(UnicodeDecodeError):
        (BAD / "71-not-utf8.yaml").read_bytes().decode("utf-8")
    assert (BAD / "69-empty-file.yaml").read_bytes() == b""


def test_every_rule_branch_has_a_bad_spec():
    """Each @rule in rules.py has at least one `NN-rule-...` spec expecting one of its messages."""
    from tunespec.spec import rules

    rule_specs = [s for s in BAD_SPECS if "-rule-" in s.path.name]
    messages = " ".join(e.msg for s in rule_specs for e in s.expects)
    sample = {
        "model_named_once": "names no model",
        "added_tokens_well_formed": "is listed twice",
        "sources_well_formed": "a source needs exactly one",
        "template_well_formed": "an inline completion needs",
        "holdout_in_range": "leave no train rows",
        "kcenter_has_embeddings": "nor data.selection.ifd.file names one",
        "tokenization_fits": "too short to train on",
        "quantization_consistent": "cannot be fully fine-tuned",
        "lora_in_range": "rank must be in",
        "precision_consistent": "fp16 and bf16 are both on",
        "length_given": "neither epochs nor max_steps",
        "best_model_consistent": "needs evaluation during training",
        "evaluation_has_references": "ROUGE needs reference answers",
        "launch_consistent": "parameter offload needs ZeRO stage 3",
        "publishing_consistent": "prompt tuning cannot be merged into the base",
        "one_micro_batch_size": "a token budget and training.micro_batch_size both size",
        "benchmarks_well_formed": "sets both `task` and `file`",
    }
    assert {r.__name__ for r in rules.RULES} == set(sample), "a rule was added: add bad specs for its branches"
    for name, text in sample.items():
        assert text in messages, f"no bad spec for rule {name}"


def _params():
    out = []
    for spec in BAD_SPECS:
        marks = [pytest.mark.xfail(strict=True, reason=spec.known_issue)] if spec.known_issue else []
        out.append(pytest.param(spec, id=spec.path.stem, marks=marks))
    return out


@pytest.mark.parametrize("spec", _params())
def test_bad_spec(spec: BadSpec, bad_runs):
    r = bad_runs[spec.rel]
    shown = f"$ tunespec {' '.join(_validate_args(spec))}   ({r.how})\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"
    assert not r.traceback, f"a traceback:\n{r.traceback}\n{shown}"
    assert r.exit_code == 2, shown
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines, shown
    for ln in lines:
        assert ln.startswith("error: "), f"stray stderr line {ln!r}\n{shown}"
        assert HINT in ln, f"error line without a `—` hint: {ln!r}\n{shown}"
    for e in spec.expects:
        hits = [ln for ln in lines if ln.startswith(e.prefix()) and e.msg in ln[len(e.prefix()):]]
        assert hits, f"expected {e}\n{shown}"
    for text in spec.rejects:
        assert text not in r.stderr, f"must not say {text!r}\n{shown}"
    assert len(lines) == len(spec.expects), f"{len(lines)} errors, {len(spec.expects)} expected\n{shown}"


YAML_MESSAGES = {
    # name: (spec text, expected error line after "error: s.yaml:")
    "unclosed-quote": ('name: "bad\nmodel: {hub: a}\n', "1:7: this quote is never closed"),
    "unclosed-bracket": ("name: x\ndata:\n  sources: [{path: a}\nmodel: {hub: a}\n",
                         "3:12: this `[` is never closed: expected ',' or ']' before line 4"),
    "unclosed-brace": ("name: x\nmodel: {hub: a\ndata: 1\n", "2:8: this `{` is never closed: expected ',' or '}' before line 3"),
    "missing-colon": ("name: x\nmodel\ndata: 1\n", "2:1: expected `key: value` here, found no ':'"),
    "indented-less": ("name: x\nmodel:\n    hub: a\n  dtype: auto\n",
                      "4:3: bad indentation: this line is indented less than the line above (column 5) but more than "
                      "its siblings (column 1)"),
    "indented-more": ('name: "x"\n  model: y\n', "2:3: bad indentation: this line is indented more than its siblings (column 1)"),
    "colon-in-value": ("name: x\nmodel:\n  hub: a\n    dtype: auto\n", "4:10: unexpected `:` inside a value"),
    "list-item-for-key": ("name: x\n- b\n", "2:1: a list item `-` where a `key:` was expected"),
    "stray-bracket": ("name: [x]]\n", "1:10: unexpected `]`: nothing here is open to close"),
    "tab-indent": ("name: x\nmodel:\n\thub: a\n", "3:1: a tab in the indentation — indent with spaces, not tabs"),
    "undefined-alias": ("name: *x\n", "1:7: `*x` refers to no anchor `&x` above it"),
    "two-documents": ("name: x\n---\nname: y\n", "2:1: a second YAML document (a `---` line)"),
    "reserved-character": ("name: @x\n", "1:7: `@` cannot start a plain value"),
    "duplicate-nested": ("name: x\nmodel:\n  hub: a\n  hub: b\n",
                         "4:3: duplicate key `hub` (first at line 3) — a key may appear once per mapping"),
    "top-level-text": ("just text\n", "1:1: the top level must be a mapping of sections, found text"),
    "top-level-number": ("42\n", "1:1: the top level must be a mapping of sections, found a number"),
    "document-marker-only": ("---\n", "the spec file is empty"),
    "null-document": ("~\n", "the spec file is empty"),
}


@pytest.mark.parametrize("name", YAML_MESSAGES)
def test_yaml_syntax_messages(name, tmp_path, monkeypatch):
    """YAML syntax errors in plain words (no `<block end>`, no ruamel class names), at the useful position."""
    text, expected = YAML_MESSAGES[name]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(text, encoding="utf-8")
    r = CliRunner().invoke(main, ["validate", "s.yaml"])
    assert r.exit_code == 2 and not (r.exception and not isinstance(r.exception, SystemExit)), r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and HINT in lines[0], r.stderr
    assert lines[0].startswith("error: s.yaml:" + expected) or lines[0].startswith("error: s.yaml: " + expected), r.stderr
    for jargon in ("<block", "token", "Commented", "NoneType", "while parsing", "while scanning", "constructing"):
        assert jargon not in r.stderr, r.stderr


def test_set_refuses_to_replace_a_scalar_but_creates_missing_mappings(monkeypatch):
    monkeypatch.chdir(REPO)
    # a mapping that is absent (quantization) or null (output.dir's parent is absent too) is created
    loaded = load_spec(SPECS / "pythia70m-qa-full.yaml", ["quantization.double_quant=true", "output.dir=/tmp/x"])
    assert loaded.spec.quantization.double_quant and loaded.spec.output.dir == "/tmp/x"
    for arg, expected in (("name.x=1", "--set name.x=1: name: is not a mapping (it holds text)"),
                          ("training.epochs.n=1", "training.epochs: is not a mapping (it holds a number)"),
                          ("data.sources.x.limit=1", "data.sources: has 1 item(s), no index x"),
                          ("training.max_steps=", "--set training.max_steps=: training.max_steps: no value after '='")):
        with pytest.raises(SpecError) as e:
            load_spec(SPECS / "pythia70m-qa-full.yaml", [arg])
        assert expected in e.value.render(), e.value.render()


def test_subprocess_and_in_process_agree(bad_runs):
    """The in-process runs stand for real ones: a sample run both ways prints the same."""
    for spec in BAD_SPECS:
        if spec.path.name[:2] in SUBPROCESS and not spec.known_issue:
            proc, inproc = bad_runs[spec.rel], _run_in_process_at_repo(spec)
            assert (proc.exit_code, proc.stdout, proc.stderr) == (inproc.exit_code, inproc.stdout, inproc.stderr), spec.rel


def _run_in_process_at_repo(spec: BadSpec) -> Run:
    old = Path.cwd()
    os.chdir(REPO)
    try:
        return _run_in_process(spec)
    finally:
        os.chdir(old)


# --------------------------------------------------------------------------- the example specs

EXAMPLES = sorted(p for p in SPECS.rglob("*.yaml") if "runs" not in p.relative_to(SPECS).parts)


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_examples_exist():
    names = {p.relative_to(SPECS).as_posix() for p in EXAMPLES}
    for expected in ("phi2-dialogsum-qlora.yaml", "llama2-chat-dialogsum-qlora.yaml", "pythia70m-qa-full.yaml",
                     "belle-chat-zero3.yaml", "phi2-instruct-output-resume.yaml", "examples/extends-demo.yaml"):
        assert expected in names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.relative_to(SPECS).as_posix() for p in EXAMPLES])
def test_example_validates(path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    r = _cli("validate", str(path.relative_to(REPO)))
    assert r.exit_code == 0, r.output + r.stderr
    assert r.output.strip().endswith(": ok")
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema="), "start with the schema modeline"
    schema_ref = first.split("$schema=", 1)[1].strip()
    assert (path.parent / schema_ref).resolve() == SCHEMA_FILE


def test_example_specs_say_what_they_are():
    """The example specs carry comment headers with what the recipe is and how to run it."""
    for path in EXAMPLES:
        head = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")]
        assert len(head) >= 4, f"{path.name}: explain the recipe in a comment block"
        assert any("tunespec " in ln for ln in head), f"{path.name}: say how to run it"


def test_phi2_recipe_values():
    s = load_spec(SPECS / "phi2-dialogsum-qlora.yaml").spec
    assert s.model.hub == "microsoft/phi-2"
    assert s.quantization.load_in_4bit and s.quantization.quant_type == "nf4" and s.quantization.double_quant
    assert s.adapter.r == 32 and s.adapter.alpha == 32 and s.adapter.target_modules == ["q_proj", "k_proj", "v_proj", "dense"]
    assert [(x.hub_split, x.split, x.limit) for x in s.data.sources] == [
        ("train", "train", 100), ("validation", "validation", 80), ("test", "test", 80)]
    assert s.data.template == "instruct_output_end" and s.data.tokenization.max_length == 1024
    t = s.training
    assert (t.micro_batch_size, t.gradient_accumulation_steps, t.max_steps, t.learning_rate, t.warmup_steps) == (
        1, 4, 1000, 2e-4, 1)
    assert t.optimizer == "paged_adamw_8bit" and t.gradient_checkpointing
    assert (t.logging_steps, t.save_steps, t.eval_strategy, t.eval_steps) == (25, 25, "steps", 25)
    assert s.evaluation.metrics == ["rouge"]


def test_inline_template_keeps_newlines():
    s = load_spec(SPECS / "phi2-instruct-output-resume.yaml").spec
    assert s.data.template.prompt == "Instruct: Summarize the following dialogue.\n{{ dialogue }}\nOutput:"
    assert s.data.template.completion == " {{ summary }}"
    assert (s.training.save_steps, s.training.save_total_limit) == (50, 3)


def test_sample_data_files():
    qa = [json.loads(ln) for ln in (SPECS / "data" / "qa_sample.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(qa) == 30 and all(r["question"].strip() and r["answer"].strip() for r in qa)
    chats = [json.loads(ln) for ln in (SPECS / "data" / "chat_sample.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(chats) == 20
    assert any(c["conversations"][0]["from"] == "system" for c in chats)
    for c in chats:
        turns = [t for t in c["conversations"] if t["from"] != "system"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns[-1]["from"] == "gpt"
    rows = json.loads((SPECS / "data" / "instructions_sample.json").read_text(encoding="utf-8"))
    assert len(rows) == 20 and sum(1 for r in rows if r["input"] == "") == 10
    s = load_spec(SPECS / "belle-chat-zero3.yaml").spec
    assert [x.format for x in s.data.sources] == [None, "alpaca"] and s.data.format == "sharegpt"
    assert s.launch.topology == "deepspeed" and s.launch.zero_stage == 3 and s.launch.offload_params


# --------------------------------------------------------------------------- show, --set, extends


def test_show_prints_defaults_and_set(monkeypatch):
    monkeypatch.chdir(REPO)
    r = _cli("show", "specs/pythia70m-qa-full.yaml", "--set", "training.max_steps=7", "--set", "data.sources.0.limit=5")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("# resolved from ") and lines[0].endswith("pythia70m-qa-full.yaml")
    assert "# --set training.max_steps=7" in lines and "# --set data.sources.0.limit=5" in lines
    assert "  max_steps: 7" in lines
    assert "  lr_scheduler: cosine" in lines  # a default the spec does not write
    assert any(ln.startswith("  learning_rate: 5") and float(ln.split(": ")[1]) == 5e-5 for ln in lines)
    assert "    limit: 5" in lines


def test_show_reflects_extends(monkeypatch):
    monkeypatch.chdir(REPO)
    r = _cli("show", "specs/examples/extends-demo.yaml", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["name"] == "quickstart-longer" and data["training"]["max_steps"] == 120
    base = load_spec(SPECS / "quickstart.yaml").spec
    assert data["model"] == base.model.model_dump(mode="json")  # taken from the base
    # paths written in the base stay relative to the base
    assert data["data"]["sources"][0]["path"] == str((SPECS / "data" / "dialogues_train.jsonl").resolve())
    r = _cli("show", "specs/examples/extends-demo.yaml")
    assert f"# extends {(SPECS / 'quickstart.yaml').resolve()}" in r.output.splitlines()


def test_set_list_index(monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = load_spec(SPECS / "phi2-dialogsum-qlora.yaml", ["data.sources.0.limit=5", "data.sources.2.split=validation"])
    assert [s.limit for s in loaded.spec.data.sources] == [5, 80, 80]
    assert loaded.spec.data.sources[2].split == "validation"
    r = _cli("show", "specs/phi2-dialogsum-qlora.yaml", "--json", "--set", "data.sources.0.limit=5")
    assert json.loads(r.output)["data"]["sources"][0]["limit"] == 5


def test_set_unknown_path_names_path_and_hint(monkeypatch):
    monkeypatch.chdir(REPO)
    r = CliRunner().invoke(main, ["validate", "specs/pythia70m-qa-full.yaml", "--set", "training.lerning_rate=1e-3"])
    assert r.exit_code == 2
    err = r.stderr
    assert "training.lerning_rate: unknown key `lerning_rate`" in err
    assert "did you mean `learning_rate`?" in err and HINT in err


def test_set_yaml_value_types(monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = load_spec(SPECS / "pythia70m-qa-full.yaml", [
        "training.learning_rate=1e-4", "training.packing=true", "adapter={method: lora, r: 4}",
        "training.report_to=[none]"])
    t = loaded.spec.training
    assert t.learning_rate == 1e-4 and t.packing is True and t.report_to == ["none"]
    assert loaded.spec.adapter.method == "lora" and loaded.spec.adapter.r == 4


def test_union_tag_defaults(tmp_path):
    """A tagged union's tag may be left out where one member is the default (launch -> single, adapter -> lora)."""
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmodel: {hub: a/b}\ndata: {format: alpaca, sources: [{path: x.jsonl}]}\n"
                    "launch: {num_processes: 1}\nadapter: {r: 8}\n", encoding="utf-8")
    loaded = load_spec(spec)
    assert loaded.spec.launch.topology == "single" and loaded.spec.adapter.method == "lora"
    assert loaded.spec.adapter.r == 8
    # the input is not changed (no tag is written into it), and the tag still counts as not set
    assert "topology" not in loaded.raw["launch"] and "method" not in loaded.raw["adapter"]
    assert "method" not in loaded.spec.adapter.model_fields_set
    from tunespec.spec import Spec

    raw = {"name": "s", "model": {"hub": "a/b"}, "data": {"format": "alpaca", "sources": [{"path": "x"}]},
           "adapter": {}, "launch": {"num_processes": 1}}
    before = json.dumps(raw, sort_keys=True)
    s = Spec.model_validate(raw)
    assert json.dumps(raw, sort_keys=True) == before
    assert s.adapter.method == "lora" and s.launch.topology == "single"
    # the other members still need their tag, and strictness is unchanged
    s = Spec.model_validate({**raw, "adapter": {"method": "none"}, "launch": {"topology": "fsdp", "num_processes": 2}})
    assert s.adapter.method == "none" and s.launch.sharding == "full_shard"
    for bad in ({"adapter": {"method": "none", "r": 8}}, {"adapter": "lora"}, {"adapter": {"r": "8"}},
                {"launch": {"topology": None}}, {"launch": {"num_processes": "2"}}):
        with pytest.raises(pydantic.ValidationError):
            Spec.model_validate({**raw, **bad})


def test_union_tag_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    head = "name: s\nmodel: {hub: a/b}\ndata: {format: alpaca, sources: [{path: x.jsonl}]}\n"
    cases = {
        "adapter: lora\n": "4:1: adapter: expected a mapping, got 'lora'",
        "adapter: {method: null}\n": "4:11: adapter.method: null is not a known method — use one of 'lora', 'prefix_tuning', 'prompt_tuning', 'ia3', 'none'",
        "launch:\n  topology: multi_gpu\n  sharding: full_shard\n":
            "6:3: launch.sharding: unknown key `sharding`: it is a FSDP option, not allowed with topology: multi_gpu"
            " — remove it, or use topology: fsdp",
        "launch: {topology: deepspeed, zero_stag: 3}\n": "launch.zero_stag: unknown key `zero_stag` — did you mean `zero_stage`?",
    }
    for body, expected in cases.items():
        (tmp_path / "s.yaml").write_text(head + body, encoding="utf-8")
        r = CliRunner().invoke(main, ["validate", "s.yaml"])
        assert r.exit_code == 2 and r.stderr.count("error: ") == 1, (body, r.stderr)
        assert expected in r.stderr, (body, r.stderr)


def test_loading_twice_is_identical(monkeypatch):
    monkeypatch.chdir(REPO)
    for path in EXAMPLES:
        a, b = load_spec(path), load_spec(path)
        assert resolved_dict(a) == resolved_dict(b)
        assert a.spec == b.spec
    r1, r2 = _cli("show", "specs/belle-chat-zero3.yaml"), _cli("show", "specs/belle-chat-zero3.yaml")
    assert r1.output == r2.output


def test_show_output_is_a_spec_that_resolves_the_same(tmp_path, monkeypatch):
    """`tunespec show` prints a complete spec: loading it again gives the same resolved spec."""
    monkeypatch.chdir(REPO)
    for path in EXAMPLES:
        r = _cli("show", str(path.relative_to(REPO)))
        assert r.exit_code == 0, r.output
        again = tmp_path / path.name
        again.write_text(r.output, encoding="utf-8")
        v = CliRunner().invoke(main, ["validate", str(again)])
        assert v.exit_code == 0, f"{path.name}: the output of `show` does not validate:\n{v.stderr}"
        assert resolved_dict(load_spec(again)) == resolved_dict(load_spec(path)), path.name
        body = [ln for ln in r.output.splitlines() if not ln.startswith("#")]  # the header names the files
        assert [ln for ln in _cli("show", str(again)).output.splitlines() if not ln.startswith("#")] == body, path.name


def test_show_writes_yaml11_safe_floats(monkeypatch):
    """`5e-05` is text to a YAML 1.1 reader (PyYAML); `show` writes `5.0e-05`."""
    yaml = pytest.importorskip("yaml")
    monkeypatch.chdir(REPO)
    out = _cli("show", "specs/pythia70m-qa-full.yaml").output
    assert "  learning_rate: 5.0e-05" in out.splitlines()
    data = yaml.safe_load(out)
    assert data["training"]["learning_rate"] == 5e-5 and isinstance(data["training"]["learning_rate"], float)
    from tunespec.spec.render import float_text

    for value in (5e-5, 1e20, 0.1, 3.0, 1.5e-7, 2e-4, 123456789.0, 1e-300):
        text = float_text(value)
        assert isinstance(yaml.safe_load(text), float) and yaml.safe_load(text) == value, text


def test_writing_a_default_explicitly_is_not_an_error(tmp_path):
    """Rules that object to an option being set do not fire on the option's default (what `show` writes)."""
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmodel: {hub: a/b}\ndata: {format: alpaca, sources: [{path: x.jsonl}]}\n"
                    "quantization: {quant_type: nf4, double_quant: true, compute_dtype: bfloat16, quant_storage: null}\n",
                    encoding="utf-8")
    assert load_spec(spec).spec.quantization.quant_type == "nf4"
    spec.write_text(spec.read_text(encoding="utf-8").replace("quant_type: nf4", "quant_type: fp4"), encoding="utf-8")
    with pytest.raises(SpecError, match="quantization.quant_type: is set but no quantization is enabled"):
        load_spec(spec)


# --------------------------------------------------------------------------- JSON Schema


def _plain_yaml(path: Path):
    from ruamel.yaml import YAML

    return json.loads(json.dumps(YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))))


@pytest.fixture(scope="module")
def schema() -> dict:
    r = _cli("schema")
    assert r.exit_code == 0
    return json.loads(r.output)


def test_schema_validates_examples(schema, monkeypatch):
    jsonschema = pytest.importorskip("jsonschema")
    monkeypatch.chdir(REPO)
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in EXAMPLES:
        # the resolved form of every spec (defaults filled, extends applied) fits the schema
        resolved = json.loads(_cli("show", str(path.relative_to(REPO)), "--json").output)
        errors = [e.message for e in validator.iter_errors(resolved)]
        assert not errors, f"{path.name} (resolved): {errors}"
        # the file as written fits too, also a spec that `extends` a base and leaves sections to it
        data = _plain_yaml(path)
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
        assert not errors, f"{path.name}: {errors}"


def test_schema_top_level_requires_nothing(schema):
    """The published schema requires no top-level key (a spec may `extends` a base); the model still does."""
    assert "required" not in schema
    assert {"name", "model", "data"} <= set(schema["properties"])
    from tunespec.spec import Spec

    assert {k for k, f in Spec.model_fields.items() if f.is_required()} == {"name", "model", "data"}
    assert set(schema["$defs"]["DataSpec"]["required"]) == {"sources", "format"}  # sections keep theirs
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"extends": "base.yaml", "training": {"max_steps": 10}})
    # the tag of adapter/launch may be left out, and picks one member
    assert schema["properties"]["adapter"]["discriminator"]["propertyName"] == "method"
    assert schema["properties"]["launch"]["discriminator"]["mapping"]["single"] == "#/$defs/SingleLaunch"
    assert validator.is_valid({"adapter": {"r": 8}, "launch": {"num_processes": 1}})
    assert validator.is_valid({"adapter": {}, "launch": {}})
    assert not validator.is_valid({"adapter": {"method": "none", "r": 8}})
    assert not validator.is_valid({"launch": {"zero_stage": 3}})


def test_schema_rejects_unknown_key(schema):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    data = _plain_yaml(SPECS / "pythia70m-qa-full.yaml")
    data["training"]["learning_rat"] = 1e-4
    errors = list(validator.iter_errors(data))
    assert errors and any("learning_rat" in e.message for e in errors)
    data = _plain_yaml(SPECS / "pythia70m-qa-full.yaml")
    data["trainig"] = {}
    assert not validator.is_valid(data)


def test_committed_schema_is_current(tmp_path):
    out = tmp_path / "schema.json"
    r = _cli("schema", "-o", str(out))
    assert r.exit_code == 0
    assert SCHEMA_FILE.exists(), "run `tunespec schema -o tunespec.schema.json` at the repo root"
    assert out.read_text(encoding="utf-8") == SCHEMA_FILE.read_text(encoding="utf-8"), (
        "tunespec.schema.json is stale: run `tunespec schema -o tunespec.schema.json`")


# --------------------------------------------------------------------------- the README reference


def test_reference_markdown_covers_every_section():
    text = reference_markdown()
    for heading in ("### `model`", "### `data`", "### `data.sources[]`", "### `data.template`",
                    "### `data.tokenization`", "### `data.holdout`", "### `quantization`",
                    "### `adapter` with `method: lora`", "### `adapter` with `method: none`", "### `training`",
                    "### `launch` with `topology: deepspeed`", "### `launch` with `topology: fsdp`",
                    "### `evaluation`", "### `output`"):
        assert heading in text
    assert "| `optimizer` | one of: `adamw_torch`," in text
    assert "| `learning_rate` | number > 0, ≤ 10 | `0.0002` | Peak learning rate. |" in text
    assert "| `name` | string matching" in text and "**required**" in text
    assert text == reference_markdown()  # deterministic


def test_every_field_is_described():
    """Every key has a description: they make the README's spec reference."""
    from tunespec.spec.reference import model_classes as _model_classes

    missing = [f"{name}.{key}" for name, cls in _model_classes().items()
               for key, f in cls.model_fields.items() if not (f.description or "").strip()]
    assert not missing, f"add a description to: {', '.join(missing)}"
    undocumented = [name for name, cls in _model_classes().items() if not cls.__doc__ or cls.__doc__.startswith(name + "(")]
    assert not undocumented, f"add a docstring to: {', '.join(undocumented)}"


def test_readme_reference_is_current():
    start, end = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"
    text = README.read_text(encoding="utf-8") if README.exists() else ""
    if start not in text or end not in text:
        pytest.skip(f"README.md has no {start} ... {end} markers yet")
    inside = text.split(start, 1)[1].split(end, 1)[0]
    assert inside.strip("\n") == reference_markdown().strip("\n"), (
        "the README spec reference is stale: paste `python -m tunespec.spec.reference` between the markers")
