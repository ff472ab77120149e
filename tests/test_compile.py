"""`tunespec compile` and its companions: byte-identical builds, the input-key cache, atomic installs
under SIGKILL, drops and --strict, holdout/limit/fraction, mixed sources, duplicates, `rerun`,
`preview` and `validate --deep`.

Fast by design: the tiny tokenizer (compile_fixtures.py) for most builds, the CLI in-process through
click's runner, and real subprocesses only where a process must be killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from compile_fixtures import (
    SPECS_DATA,
    build_tokenizer,
    check_build,
    cli,
    compile_spec,
    load_split,
    smollm2,
    tiny,
    write_jsonl,
    write_spec,
)

from tunespec.build_layout import FORMAT_VERSION
from tunespec.compiler.build_writer import compile_build
from tunespec.errors import BuildError, DataError
from tunespec.spec.loader import load_spec

QA = SPECS_DATA / "qa_sample.jsonl"
INSTRUCTIONS = SPECS_DATA / "instructions_sample.json"
CHAT = SPECS_DATA / "chat_sample.jsonl"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(build: Path) -> dict[str, bytes]:
    return {str(p.relative_to(build)): p.read_bytes() for p in sorted(build.rglob("*")) if p.is_file()}


def assert_valid_build(build: Path) -> None:
    """A complete build: manifest and lock present, every file listed with its sha256, nothing else."""
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    assert (build / "lock.yaml").is_file()
    listed = manifest["files"]
    for f, digest in listed.items():
        assert sha(build / f) == digest, f
    present = {str(p.relative_to(build)) for p in build.rglob("*") if p.is_file()}
    assert present == set(listed) | {"manifest.json", "lock.yaml"}
    assert "train" in manifest["splits"]


def qa_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "data" / "qa.jsonl"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(QA, dst)
    return dst


# --------------------------------------------------------------------------- reproducibility and the cache


@pytest.mark.parametrize("which", ["tiny-chat", "smollm2-fields"])
def test_same_spec_compiles_to_byte_identical_files_anywhere(tmp_path, which):
    if which == "tiny-chat":
        data = {"format": "sharegpt", "sources": [{"path": str(CHAT)}], "template": "tokenizer",
                "holdout": {"validation": 0.2}}
        model = tiny()
    else:
        data = {"format": "alpaca", "sources": [{"path": str(INSTRUCTIONS)}], "template": "alpaca",
                "holdout": {"test": 0.25}}
        model = smollm2()
    spec = write_spec(tmp_path / "spec", data=data, model=model)
    one = compile_spec(spec, tmp_path / "a" / "first-build").path
    two = compile_spec(spec, tmp_path / "b" / "c" / "second").path
    a, b = files_of(one), files_of(two)
    assert set(a) == set(b) and len(a) > 10
    different = [f for f in a if a[f] != b[f]]
    assert set(different) <= {"lock.yaml"}  # only the lock records when (and by which command) it was made
    for build in (one, two):
        assert_valid_build(build)
        for f, content in files_of(build).items():
            if f != "lock.yaml":
                assert str(tmp_path).encode() not in content, f"{f} holds an absolute path of the build"
    manifest = (one / "manifest.json").read_text(encoding="utf-8")
    assert "first-build" not in manifest and str(tmp_path) not in manifest


def test_unchanged_recompile_reuses_the_build_fast(tmp_path):
    data_file = qa_copy(tmp_path)
    spec = write_spec(tmp_path, data={"format": "qa", "sources": [{"path": str(data_file)}]})
    first = compile_spec(spec, tmp_path / "build")
    assert not first.reused
    mtime = (tmp_path / "build" / "manifest.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    second = compile_build(load_spec(spec), tmp_path / "build", log=lambda s: None)
    elapsed = time.perf_counter() - t0
    assert second.reused and elapsed < 2.0, elapsed
    assert "up to date" in second.messages[0]
    assert (tmp_path / "build" / "manifest.json").stat().st_mtime_ns == mtime
    # a changed data file is noticed: the input key covers the files' content
    data_file.write_text(data_file.read_text(encoding="utf-8").replace("eight legs", "8 legs"), encoding="utf-8")
    third = compile_spec(spec, tmp_path / "build")
    assert not third.reused and third.manifest["input_key"] != first.manifest["input_key"]
    # a build with runtime outputs is not replaced by a different spec's without --force
    (tmp_path / "build" / "adapter").mkdir()
    data_file.write_text(data_file.read_text(encoding="utf-8").replace("8 legs", "eight legs"), encoding="utf-8")
    with pytest.raises(BuildError, match="runtime outputs"):
        compile_spec(spec, tmp_path / "build")
    assert compile_spec(spec, tmp_path / "build", force=True).manifest["input_key"] == first.manifest["input_key"]


# --------------------------------------------------------------------------- atomic install under SIGKILL


def _compile_cmd(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tunespec.cli", "compile", str(spec), "-o", str(out), *extra]


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def test_sigkill_at_random_moments_never_leaves_a_half_build(tmp_path):
    rows = json.loads(INSTRUCTIONS.read_text(encoding="utf-8"))
    big = [{"instruction": f"{r['instruction']} (row {i})", "input": r["input"], "output": r["output"] * 3}
           for i, r in ((i, rows[i % len(rows)]) for i in range(4000))]
    data = write_jsonl(tmp_path / "data" / "big.jsonl", big)
    spec = write_spec(tmp_path, data={"format": "alpaca", "sources": [{"path": str(data)}],
                                      "holdout": {"validation": 0.05}})
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "keep.txt").write_text("not ours\n")
    (runs / "other-build").mkdir()
    (runs / "other-build" / "file.bin").write_bytes(b"x" * 10)
    env = _subprocess_env()

    t0 = time.perf_counter()
    subprocess.run(_compile_cmd(spec, runs / "reference"), env=env, check=True, capture_output=True)
    typical = time.perf_counter() - t0
    assert_valid_build(runs / "reference")

    out = runs / "build"
    subprocess.run(_compile_cmd(spec, out, "--set", "data.seed=100"), env=env, check=True, capture_output=True)
    assert_valid_build(out)  # every killed run below replaces a complete build
    assert (out.stat().st_mode & 0o777) == ((runs / "other-build").stat().st_mode & 0o777)  # not private
    rng = random.Random(20240229)
    delays = [rng.uniform(0.2, typical) for _ in range(2)] + [rng.uniform(0.5 * typical, 1.05 * typical) for _ in range(3)]
    outcomes = []
    for k, delay in enumerate(delays):
        # a different seed each time: a new input key, so every run recompiles and replaces the last build
        proc = subprocess.Popen(_compile_cmd(spec, out, "--set", f"data.seed={k}"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        outcomes.append("finished" if finished else f"killed after {delay:.1f}s")
        if out.exists():  # never a half build: the old one, the new one, or none (killed between two renames)
            assert_valid_build(out)
            outcomes[-1] += " (a build in place)"
    # leftover temporary directories are allowed; the next compile succeeds and touches nothing else
    done = subprocess.run(_compile_cmd(spec, out), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_valid_build(out)
    assert (runs / "keep.txt").read_text() == "not ours\n"
    assert (runs / "other-build" / "file.bin").read_bytes() == b"x" * 10
    assert_valid_build(runs / "reference")
    leftovers = sorted(p.name for p in runs.iterdir())
    assert set(leftovers) - {"keep.txt", "other-build", "reference", "build"} <= {
        n for n in leftovers if n.startswith((".build.tmp-", ".build.old-"))}, leftovers
    assert files_of(out).keys() == files_of(runs / "reference").keys()
    assert any(o.startswith("killed") for o in outcomes), outcomes
    print(f"compile takes {typical:.1f}s; runs: {outcomes}")


# --------------------------------------------------------------------------- drops, strict, splits, subsets


def _rows_with_drops(tmp_path: Path) -> Path:
    good = [{"id": f"g{i}", "instruction": f"Say {i}.", "output": f"{i}"} for i in range(6)]
    bad = [
        {"id": "b1", "instruction": "No output here."},
        {"id": "b2", "instruction": "Also none."},
        {"id": "b3", "instruction": "Empty.", "output": "   "},
        {"id": "b4", "instruction": "A list.", "output": ["a", "b"]},
        {"id": "b5", "instruction": "Far too long. " * 400, "output": "ok"},
    ]
    return write_jsonl(tmp_path / "data" / "rows.jsonl", good + bad)


def test_drops_are_counted_by_reason(tmp_path):
    path = _rows_with_drops(tmp_path)
    spec = write_spec(tmp_path, data={"format": "alpaca", "sources": [{"path": str(path)}],
                                      "tokenization": {"max_length": 512}})
    result = compile_spec(spec, tmp_path / "build")
    assert result.manifest["dropped"] == {
        "source:rows": {"empty field 'output'": 1, "field 'output' is not text (got list)": 1,
                        "missing field 'output'": 2},
        "split:train": {"longer than max_length 512": 1},
    }
    assert result.manifest["splits"]["train"]["rows"] == 6
    assert sum("warning:" in m for m in result.messages) == 4
    check_build(result.path)


def test_strict_makes_drops_an_error_without_traceback(tmp_path):
    path = _rows_with_drops(tmp_path)
    spec = write_spec(tmp_path, data={"format": "alpaca", "sources": [{"path": str(path)}]})
    result = cli("compile", spec, "-o", tmp_path / "build", "--strict")
    assert result.exit_code == 2
    assert "2 row(s) dropped: missing field 'output'" in result.stderr
    assert "data.sources.0 (rows)" in result.stderr
    assert not (tmp_path / "build").exists() and not list(tmp_path.glob(".build.tmp-*"))
    ok = cli("compile", spec, "-o", tmp_path / "build")  # without --strict: a build, with warnings
    assert ok.exit_code == 0 and "warning:" in ok.stderr


def test_overlong_truncate_prompt_keeps_the_completion_and_cuts_the_prompt_from_the_left(tmp_path):
    rows = [{"id": "long", "instruction": "word " * 300 + "END", "output": "The answer."},
            {"id": "huge", "instruction": "Short.", "output": "answer " * 300},
            {"id": "short", "instruction": "Hi.", "output": "Hello."}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    spec = write_spec(tmp_path, data={"format": "alpaca", "sources": [{"path": str(path)}],
                                      "tokenization": {"max_length": 128, "overlong": "truncate_prompt"}})
    result = compile_spec(spec, tmp_path / "build")
    st = result.manifest["splits"]["train"]
    assert st["rows"] == 2 and st["truncated"] == 1
    assert result.manifest["dropped"] == {"split:train": {"completion alone longer than max_length 128": 1}}
    manifest, out, toks = load_split(result.path, "train")
    tok = build_tokenizer(str(result.path / "tokenizer"))
    (ids, trained), row = toks[0], out[0]
    assert row["id"] == "long" and len(ids) == 128
    prefix = manifest["prefix_ids"]
    body = tok(row["completion"], add_special_tokens=False)["input_ids"] + [manifest["eos_token_id"]]
    assert ids[: len(prefix)] == prefix and ids[-len(body):] == body  # BOS kept, completion whole
    assert trained == [0] * (128 - len(body)) + [1] * len(body)
    prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
    assert ids[len(prefix) : 128 - len(body)] == prompt[len(prompt) - (128 - len(body) - len(prefix)):]  # its end


def _split_ids(build: Path) -> dict[str, list[str]]:
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    return {s: [r["id"] for r in load_split(build, s)[1]] for s in manifest["splits"]}


def test_holdout_90_10_is_seeded_and_deterministic(tmp_path):
    data = {"format": "qa", "sources": [{"path": str(QA)}], "holdout": {"test": 0.1}}
    spec = write_spec(tmp_path, data=data)
    a = _split_ids(compile_spec(spec, tmp_path / "a").path)
    b = _split_ids(compile_spec(spec, tmp_path / "b").path)
    assert a == b
    assert len(a["train"]) == 27 and len(a["test"]) == 3
    assert sorted(a["train"] + a["test"]) == [f"qa-{i:03d}" for i in range(30)]
    assert a["train"] == sorted(a["train"])  # train keeps the file's order
    other = _split_ids(compile_spec(spec, tmp_path / "c", overrides=["data.seed=7"]).path)
    assert other["test"] != a["test"] and len(other["test"]) == 3
    both = _split_ids(compile_spec(spec, tmp_path / "d", overrides=["data.holdout.validation=0.1"]).path)
    assert both["test"] == a["test"]  # carving validation too leaves test as it was
    assert len(both["validation"]) == 3 and not set(both["validation"]) & set(both["test"])


def test_limit_and_fraction(tmp_path):
    spec = write_spec(tmp_path, data={"format": "qa", "sources": [{"path": str(QA)}]})
    limited = _split_ids(compile_spec(spec, tmp_path / "l", overrides=["data.sources.0.limit=7"]).path)
    assert limited["train"] == [f"qa-{i:03d}" for i in range(7)]
    half = _split_ids(compile_spec(spec, tmp_path / "f", overrides=["data.sources.0.fraction=0.5"]).path)
    assert half["train"] == [f"qa-{i:03d}" for i in range(15)]
    shuffled = ["data.sources.0.limit=7", "data.sources.0.shuffle=true"]
    s1 = _split_ids(compile_spec(spec, tmp_path / "s1", overrides=shuffled).path)
    s2 = _split_ids(compile_spec(spec, tmp_path / "s2", overrides=shuffled).path)
    assert s1 == s2 and len(s1["train"]) == 7 and s1["train"] != limited["train"]


def test_mixed_sources_sharegpt_and_alpaca_with_chatml(tmp_path):
    data = {"format": "sharegpt", "template": "chatml",
            "sources": [{"path": str(CHAT), "name": "chat"}, {"path": str(INSTRUCTIONS), "name": "inst", "format": "alpaca"}]}
    spec = write_spec(tmp_path, data=data)
    result = compile_spec(spec, tmp_path / "build")
    _, rows, _ = load_split(result.path, "train")
    assert len(rows) == 40
    assert {r["source"].split("#")[0] for r in rows} == {"chat", "inst"}
    assert check_build(result.path, turn_end="<|im_end|>") == 40
    inst = next(r for r in rows if r["source"] == "inst#1")  # an alpaca row with an input: one user turn
    assert [m["role"] for m in inst["messages"]] == ["user", "assistant"]
    assert "\n\n" in inst["messages"][0]["content"]


def test_duplicate_ids_are_counted(tmp_path):
    again = tmp_path / "qa_again.jsonl"
    shutil.copyfile(QA, again)  # the same file listed twice is refused; a copy carries the same ids
    data = {"format": "qa", "sources": [{"path": str(QA), "name": "first"}, {"path": str(again), "name": "again"},
                                        {"path": str(INSTRUCTIONS), "format": "alpaca", "name": "inst"}],
            "template": "alpaca"}
    spec = write_spec(tmp_path, data=data)
    result = compile_spec(spec, tmp_path / "build")
    assert result.manifest["dropped"] == {"duplicates": {"duplicate id (first seen in source first)": 30}}
    assert result.manifest["splits"]["train"]["rows"] == 50
    with pytest.raises(DataError, match="30 row.s. dropped: duplicate id"):
        compile_spec(spec, tmp_path / "strict", overrides=["data.strict=true"])


# --------------------------------------------------------------------------- rerun


def test_rerun_reproduces_byte_identically_and_names_a_changed_file(tmp_path):
    data_file = qa_copy(tmp_path)
    spec = write_spec(tmp_path, data={"format": "qa", "sources": [{"path": str(data_file)}], "holdout": {"test": 0.1}})
    old = compile_spec(spec, tmp_path / "build").path
    spec.rename(tmp_path / "moved.yaml")  # the lock alone is enough

    result = cli("rerun", old / "lock.yaml", "-o", tmp_path / "again")
    assert result.exit_code == 0, result.stderr
    n = len(json.loads((old / "manifest.json").read_text())["files"])
    assert f"reproduced: {n} files identical" in result.stderr
    assert "inputs: unchanged" in result.stderr
    a, b = files_of(old), files_of(tmp_path / "again")
    assert [f for f in a if a[f] != b[f]] == ["lock.yaml"]  # the command differs

    data_file.write_text(data_file.read_text(encoding="utf-8").replace("eight legs", "8 legs"), encoding="utf-8")
    changed = cli("rerun", old / "lock.yaml", "-o", tmp_path / "changed")
    assert changed.exit_code == 1
    assert "changed: source qa: data/qa.jsonl sha256 changed (was " in changed.stderr  # its portable path
    assert "not reproduced:" in changed.stderr
    split = "test" if "qa-000" in _split_ids(old)["test"] else "train"  # the row that changed
    other = {"train": "test", "test": "train"}[split]
    assert f"data/{split}.jsonl: sha256 was" in changed.stderr and f"data/{other}.jsonl" not in changed.stderr

    refused = cli("rerun", old / "lock.yaml", "-o", tmp_path / "changed")  # never overwrites
    assert refused.exit_code == 2 and "already exists" in refused.stderr


def test_rerun_reports_a_changed_template_and_library_versions(tmp_path):
    tpl = tmp_path / "qa.jinja"
    tpl.write_text("{% block prompt %}Q: {{ question }}\nA:{% endblock %}{% block completion %} {{ answer }}{% endblock %}",
                   encoding="utf-8")
    spec = write_spec(tmp_path, data={"format": "qa", "sources": [{"path": str(QA)}], "template": {"file": str(tpl)}})
    old = compile_spec(spec, tmp_path / "build").path
    lock = (old / "lock.yaml").read_text(encoding="utf-8")
    import transformers

    (old / "lock.yaml").write_text(lock.replace(f"transformers: {transformers.__version__}", "transformers: 0.0.1"),
                                   encoding="utf-8")
    tpl.write_text(tpl.read_text(encoding="utf-8").replace("Q:", "Question:"), encoding="utf-8")
    result = cli("rerun", old, "-o", tmp_path / "new")  # a build directory names its lock.yaml
    assert result.exit_code == 1
    assert "changed: template " in result.stderr and "qa.jinja changed (sha256 was " in result.stderr
    assert f"warning: transformers 0.0.1 → {transformers.__version__} (tokenization may differ)" in result.stderr
    assert "data/train.jsonl: sha256 was" in result.stderr


def test_rerun_missing_or_garbled_lock_is_located(tmp_path):
    missing = cli("rerun", tmp_path / "nope" / "lock.yaml", "-o", tmp_path / "x")
    assert missing.exit_code == 2 and "no such lock file" in missing.stderr
    bad = tmp_path / "lock.yaml"
    bad.write_text("tunespec_lock: 1\nspec:\n  name: [unclosed\n", encoding="utf-8")
    garbled = cli("rerun", bad, "-o", tmp_path / "x")
    assert garbled.exit_code == 2 and f"{bad}:" in garbled.stderr and "not valid YAML" in garbled.stderr
    bad.write_text(f"tunespec_lock: {FORMAT_VERSION}\ninput_key: abc\ninputs: {{}}\nspec:\n  name: t\n  data: {{format: qa}}\n",
                   encoding="utf-8")
    invalid = cli("rerun", bad, "-o", tmp_path / "x")
    assert invalid.exit_code == 2 and f"{bad}:" in invalid.stderr and "spec." in invalid.stderr
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- preview


def test_preview_text_and_json(tmp_path):
    spec = write_spec(tmp_path, data={"format": "qa", "sources": [{"path": str(QA)}], "template": "question_answer"})
    build = compile_spec(spec, tmp_path / "build").path
    _, rows, toks = load_split(build, "train")
    text = cli("preview", build, "--index", 2)
    assert text.exit_code == 0
    out = text.stdout
    assert rows[2]["prompt"] in out and f"[[{rows[2]['completion']}</s>]]" in out
    ids, trained = toks[2]
    assert f"tokens: {len(ids)}, trained: {sum(trained)}" in out
    assert "\x1b[" not in out  # no colour when not on a terminal

    js = cli("preview", build, "--index", 2, "--json")
    d = json.loads(js.stdout)
    assert d["prompt"] == rows[2]["prompt"] and d["completion"] == rows[2]["completion"]
    assert d["input_ids"] == ids and len(d["tokens"]) == len(ids)
    assert d["labels"] == [t if m else -100 for t, m in zip(ids, trained)]
    tok = build_tokenizer(str(build / "tokenizer"))
    assert tok.decode([x for x in d["labels"] if x != -100]) == rows[2]["completion"] + "</s>"

    chat = cli("preview", spec, "--json", "--set", "data.template=chatml", "--index", -1)  # a spec: compiled first
    c = json.loads(chat.stdout)
    assert "messages" in c and "prompt" not in c and c["id"] == "qa-029"
    assert c["messages"][-1]["content"] == rows[-1]["completion"]

    from tunespec.compiler.preview import render_row

    colored = render_row(build, index=0, color=True)
    assert f"\x1b[1;32m{rows[0]['completion']}</s>\x1b[0m" in colored

    far = cli("preview", build, "--index", 30)
    assert far.exit_code == 2 and "index 30 is out of range: the train split has 30 rows (0..29)" in far.stderr
    nosplit = cli("preview", build, "--split", "test")
    assert nosplit.exit_code == 2 and "no `test` split" in nosplit.stderr


# --------------------------------------------------------------------------- validate --deep


def test_validate_deep_checks_targets_lengths_and_markers(tmp_path):
    base = {"format": "qa", "sources": [{"path": str(QA)}]}
    good = write_spec(tmp_path / "good", data=base, adapter={"target_modules": ["q_proj", "v_proj"]})
    ok = cli("validate", "--deep", good)
    assert ok.exit_code == 0 and "ok" in ok.stdout

    bad = write_spec(tmp_path / "bad", data=dict(base, tokenization={"max_length": 4096}),
                     adapter={"target_modules": ["q_proj", "query_key_value"], "modules_to_save": ["embed_tokens"]})
    result = cli("validate", "--deep", bad)
    assert result.exit_code == 2
    err = result.stderr
    assert "adapter.target_modules.1: no module named `query_key_value`" in err
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in err  # the real names, as a hint
    assert "data.tokenization.max_length: max_length 4096 exceeds the model's context length 1024" in err
    assert "bad/t.yaml:14:" in err  # located in the spec file (the line of max_length)
    assert "embed_tokens" not in err  # it exists

    norm = cli("validate", "--deep", good, "--set", "adapter.target_modules=[input_layernorm]")
    assert norm.exit_code == 2 and "LoRA cannot adapt" in norm.stderr

    tpl = tmp_path / "marker.jinja"
    tpl.write_text("{% block prompt %}<|user|>{{ instruction }}<|assistant|>{% endblock %}"
                   "{% block completion %}{{ output }}{% endblock %}", encoding="utf-8")
    marker = write_spec(tmp_path / "marker", data=dict(base, template={"file": str(tpl)}))
    m = cli("validate", "--deep", marker)
    assert m.exit_code == 2 and "`<|user|>` is not one token" in m.stderr and "data.template" in m.stderr
    chatml = cli("validate", "--deep", good, "--set", "data.template=chatml")  # <|im_start|> is one token here
    assert chatml.exit_code == 0, chatml.stderr
    tpl.write_text("{% block prompt %}\n{{ question }}\n{{ dialogue }}{% endblock %}"
                   "{% block completion %}{{ output }}{% endblock %}", encoding="utf-8")
    field = cli("validate", "--deep", marker)
    assert field.exit_code == 2 and "marker.jinja:3:" in field.stderr and "`dialogue`" in field.stderr


# --------------------------------------------------------------------------- tokenization helpers


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_encode_texts_equals_the_tokenizer_call(which):
    """The deduplicating, backend-direct encoding gives exactly what tokenizer(texts) gives."""
    from tunespec.compiler.tokenization import encode_texts
    from tunespec.model_resolver import ModelRef, load_tokenizer

    model = tiny() if which == "tiny" else smollm2()
    tok = load_tokenizer(ModelRef(path=model.get("path"), packaged=model.get("packaged")))
    rows = [json.loads(x) for x in QA.read_text(encoding="utf-8").splitlines()]
    texts = [r["question"] for r in rows] + [r["answer"] for r in rows] * 2 + [
        "<|im_start|>assistant\n", "", " ", "\n\n", "caf\u00e9 \u20ac14.50 Z\u00fcrich", "<|im_end|>\n", "<|im_start|>assistant\n"]
    assert encode_texts(tok, texts) == tok(texts, add_special_tokens=False)["input_ids"]
    assert encode_texts(tok, []) == []
