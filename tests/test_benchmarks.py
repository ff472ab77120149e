"""evaluation.benchmarks: lm-evaluation-harness tasks compiled into the build and scored by `tunespec evaluate`.

The oracle is lm-eval itself, called directly: its own model loading (``HFLM(pretrained=PATH)``, with
``peft=ADAPTER`` for the tuned model) and its own task loading from the YAML file, on the same tiny random
model; tunespec's recorded values, standard errors and per-choice log-likelihoods must equal what it reports.
Everything runs offline on the sample task tunespec ships (30 questions) and a small task written here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import helpers
import pytest

pytest.importorskip("lm_eval")

from tunespec import harness  # noqa: E402

SAMPLE = harness.PACKAGED_DIR / "tunespec_sample_mc.yaml"

LOCAL_TASK = """task: colours_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/colours.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{q}} Answer:"
doc_to_choice: "{{options}}"
doc_to_target: gold
metric_list:
  - metric: acc
"""
LOCAL_ROWS = [
    {"q": "The colour of fresh grass is", "options": [" green", " purple"], "gold": 0},
    {"q": "Snow is usually", "options": [" black", " white"], "gold": 1},
    {"q": "A ripe banana is", "options": [" yellow", " blue"], "gold": 0},
    {"q": "The clear daytime sky is", "options": [" orange", " blue"], "gold": 1},
    {"q": "Coal is", "options": [" black", " pink"], "gold": 0},
]


def write_local_task(d: Path, text: str = LOCAL_TASK, rows=LOCAL_ROWS) -> Path:
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "data" / "colours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (d / "task.yaml").write_text(text, encoding="utf-8")
    return d / "task.yaml"


BENCHES = [{"task": "tunespec_sample_mc"}, {"file": "tasks/task.yaml", "limit": 4}]
FAST = {"evaluation.metrics": ["loss"], "data.sources.1.limit": 2}


def oracle(model_dir: Path, task_yaml: Path, *, limit=None, peft: Path | None = None) -> dict:
    """lm-eval on its own: the model loaded from its directory, the task from its YAML (data relative to it)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    cwd = os.getcwd()
    os.chdir(task_yaml.parent)  # lm-eval reads a YAML's data_files relative to the working directory
    try:
        with harness.offline():
            lm = HFLM(pretrained=str(model_dir), peft=str(peft) if peft else None, device="cpu", batch_size=4)
            return simple_evaluate(model=lm, tasks=[str(task_yaml)], task_manager=TaskManager(include_defaults=False),
                                   limit=limit, log_samples=True)
    finally:
        os.chdir(cwd)


def assert_same(ours: dict, samples: list[dict], theirs: dict, name: str) -> None:
    row = theirs["results"][name]
    assert ours.keys() == {k.split(",")[0] for k in row if "," in k and "_stderr" not in k}
    for metric, got in ours.items():
        assert got["value"] == pytest.approx(row[f"{metric},none"], abs=1e-6)
        assert got["stderr"] == pytest.approx(row[f"{metric}_stderr,none"], abs=1e-6)
    theirs_samples = sorted(theirs["samples"][name], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == [s["doc_id"] for s in theirs_samples]
    for a, b in zip(samples, theirs_samples):
        assert a["target"] == b["target"]
        assert [x[0] for x in a["response"]] == pytest.approx([x[0] for x in b["filtered_resps"]], abs=1e-4)
        for metric in ours:
            assert a[metric] == b[metric]


@pytest.fixture
def bench_build(tmp_path, make_spec, tunespec_env):
    write_local_task(tmp_path / "tasks")
    spec = make_spec(tmp_path, **FAST, **{"evaluation.benchmarks": BENCHES})
    result = helpers.compile_spec(spec, tmp_path / "build")
    return tmp_path / "build", result


def test_compile_pins_the_tasks_and_copies_what_the_runtime_reads(bench_build, tmp_path):
    from importlib.metadata import version

    build, result = bench_build
    from ruamel.yaml import YAML

    lock = YAML(typ="safe", pure=True).load((build / "lock.yaml").read_text(encoding="utf-8"))
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    assert lock["versions"]["lm_eval"] == version("lm_eval")
    sample, local = lock["inputs"]["benchmarks"]
    sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert sample["config_sha256"] == sha(SAMPLE) and sample["source"] == "tunespec"
    assert [d["sha256"] for d in sample["data"]] == [sha(harness.PACKAGED_DIR / "tunespec_sample_mc.jsonl")]
    assert (sample["docs"], sample["evaluated"], sample["num_fewshot"], sample["limit"]) == (30, 30, 0, None)
    assert sample["apply_chat_template"] is False and sample["lm_eval"] == version("lm_eval")
    assert sample["seeds"] == {"random": 1234, "numpy": 1234, "torch": 1234, "fewshot": 1234}
    assert local["source"] == "file" and local["file"] == "tasks/task.yaml"
    assert local["config_sha256"] == sha(tmp_path / "tasks" / "task.yaml")
    assert local["data_inputs"] == [{"file": "tasks/data/colours.jsonl", "sha256": sha(tmp_path / "tasks/data/colours.jsonl")}]
    assert (local["docs"], local["evaluated"]) == (5, 4)
    # the build holds the copies (hashed like every build file) and the manifest names no machine path
    for rec in manifest["benchmarks"]:
        assert manifest["files"][rec["config"]] == rec["config_sha256"]
        for d in rec["data"]:
            assert manifest["files"][d["file"]] == d["sha256"]
    assert str(tmp_path) not in json.dumps(manifest)
    assert any("benchmark colours_local: 4 of 5 documents, 0-shot" in m for m in result.messages)
    # the data file is an input: changing it is a new build, never "up to date"
    rows = [dict(r, gold=1 - r["gold"]) for r in LOCAL_ROWS]
    write_local_task(tmp_path / "tasks", rows=rows)
    again = helpers.compile_spec(tmp_path / "spec.yaml", build, force=True)
    assert not again.reused
    assert json.loads((build / "manifest.json").read_text())["input_key"] != manifest["input_key"]


def test_evaluate_a_model_matches_lm_eval_on_its_own(bench_build, tiny_model_dir, tmp_path):
    from tunespec.build_reader import Build
    from tunespec.runtime.evaluate import evaluate

    build, _ = bench_build
    summary = evaluate(Build(build), model=str(tiny_model_dir), log=lambda s: None)
    written = json.loads((build / "eval" / "benchmarks.json").read_text(encoding="utf-8"))
    assert summary["benchmarks"] == written
    samples = [json.loads(line) for line in (build / "eval" / "benchmark_samples.jsonl").open(encoding="utf-8")]
    for name, yaml, limit in (("tunespec_sample_mc", SAMPLE, None), ("colours_local", tmp_path / "tasks/task.yaml", 4)):
        ours = written["tasks"][name]
        assert set(ours) == {"tuned", "settings"}  # one model given: nothing to compare it with
        assert_same(ours["tuned"], [s for s in samples if s["task"] == name], oracle(tiny_model_dir, yaml, limit=limit),
                    name)
    # the sample task is not degenerate on this model: some right, some wrong
    assert 0 < written["tasks"]["tunespec_sample_mc"]["tuned"]["acc"]["value"] < 1
    report = (build / "eval" / "report.md").read_text(encoding="utf-8")
    assert "## Benchmarks (lm-evaluation-harness" in report and "| colours_local | acc | 4 of 5 | 0 |" in report


@pytest.mark.slow
def test_base_and_tuned_with_delta_match_lm_eval(tmp_path, make_spec, tunespec_env, tiny_model_dir):
    """`evaluate` without --model: base and base + adapter, each equal to lm-eval's own (its peft loading)."""
    from tunespec.build_reader import Build
    from tunespec.runtime.evaluate import evaluate

    spec = make_spec(tmp_path, **FAST, **{"evaluation.benchmarks": [{"task": "tunespec_sample_mc", "limit": 20}],
                                          "training.max_steps": 2, "training.save_steps": 2})
    build = tmp_path / "build"
    helpers.compile_spec(spec, build)
    helpers.train_in_process(build)
    summary = evaluate(Build(build), log=lambda s: None)
    t = summary["benchmarks"]["tasks"]["tunespec_sample_mc"]
    assert summary["tuned"]["model"] == "adapter"
    samples = [json.loads(line) for line in (build / "eval" / "benchmark_samples.jsonl").open(encoding="utf-8")]
    for label, peft in (("base", None), ("tuned", build / "adapter")):
        assert_same(t[label], [s for s in samples if s["model"] == label],
                    oracle(tiny_model_dir, SAMPLE, limit=20, peft=peft), "tunespec_sample_mc")
    for metric in t["tuned"]:
        assert t["delta"][metric] == pytest.approx(t["tuned"][metric]["value"] - t["base"][metric]["value"], abs=1e-6)
    # training moved the model: the per-choice log-likelihoods differ between base and tuned
    base = [s["response"] for s in samples if s["model"] == "base"]
    tuned = [s["response"] for s in samples if s["model"] == "tuned"]
    assert base != tuned


# --------------------------------------------------------------------------- bad inputs: exit 2, located, nothing written


def compile_cli(tmp_path: Path, make_spec, benches: list[dict]) -> tuple[int, str]:
    spec = make_spec(tmp_path, **FAST, **{"evaluation.benchmarks": benches})
    code, _, err, tb = helpers.invoke_in_process(["compile", spec, "-o", tmp_path / "build"])
    assert not tb, tb
    assert not (tmp_path / "build").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    return code, err


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert " — " in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case, text, at, says", [
    ("missing data", LOCAL_TASK.replace("data/colours.jsonl", "data/gone.jsonl"), "task.yaml: evaluation.benchmarks.0.file: ",
     "the task's data file data/gone.jsonl does not exist"),
    ("yaml syntax", LOCAL_TASK.replace("test_split: test", "test_split: [test"), "task.yaml:7:", "is not valid YAML"),
    ("!function", LOCAL_TASK + "process_docs: !function utils.process\n", "task.yaml:13:", "uses `!function`"),
    ("standard tag misfit", LOCAL_TASK.replace("gold", "!!int gold", 1), "task.yaml:10:16: ",
     "is not valid YAML: YAML tag `!!int` cannot be applied to the value 'gold'"),
    ("include", "include: _default.yaml\n" + LOCAL_TASK, "task.yaml:1: ", "includes another YAML"),
    ("bad output_type", LOCAL_TASK.replace("multiple_choice", "multiple_choise"), "task.yaml: evaluation.benchmarks.0.file: ",
     "lm-eval cannot load the task `colours_local`: ValueError: Got invalid output_type 'multiple_choise'"),
    ("unknown field", LOCAL_TASK.replace("{{q}}", "{{question.text}}"), "task.yaml: evaluation.benchmarks.0.file: ",
     "lm-eval cannot load the task `colours_local`: UndefinedError: 'question' is undefined"),
    ("no task name", LOCAL_TASK.replace("task: colours_local\n", ""), "task.yaml: ", "has no `task:` name"),
    ("local dataset dir", LOCAL_TASK.replace("dataset_path: json", "dataset_path: ./data"), "task.yaml: ",
     "is a local directory, which is not copied"),
])
def test_bad_task_files_are_refused_with_the_file_named(tmp_path, make_spec, tunespec_env, case, text, at, says):
    yaml = write_local_task(tmp_path / "tasks", text=text)
    code, err = compile_cli(tmp_path, make_spec, [{"file": "tasks/task.yaml"}])
    assert code == 2, err
    line = _one_error(err)
    assert line.startswith(f"error: {yaml.parent}/"), line  # the task file, by its path
    assert at in line and says in line, line


def test_num_fewshot_the_harness_would_ignore_is_an_error(tmp_path, make_spec, tunespec_env):
    write_local_task(tmp_path / "tasks", text=LOCAL_TASK + "num_fewshot: 0\n")
    code, err = compile_cli(tmp_path, make_spec, [{"file": "tasks/task.yaml", "num_fewshot": 3}])
    line = _one_error(err)
    assert code == 2 and "spec.yaml:" in line and "evaluation.benchmarks.0.num_fewshot: " in line
    assert "fixes num_fewshot: 0" in line and "remove num_fewshot" in line


def test_fewshot_from_the_evaluated_documents_is_warned(tmp_path, make_spec, tunespec_env):
    write_local_task(tmp_path / "tasks")
    spec = make_spec(tmp_path, **FAST, **{"evaluation.benchmarks": [{"file": "tasks/task.yaml", "num_fewshot": 2}]})
    code, out, err, tb = helpers.invoke_in_process(["compile", spec, "-o", tmp_path / "build"])
    assert code == 0 and not tb, err
    assert "evaluation.benchmarks.0.num_fewshot: the task `colours_local` has no training or validation split" in err


def test_harness_names_unknown_or_not_offline(tmp_path, make_spec, tunespec_env, monkeypatch):
    """One test (lm-eval's task index takes seconds to build): a typo gets a did-you-mean; a real task whose data
    is not in the (empty) datasets cache is refused offline with the fix."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    code, err = compile_cli(tmp_path / "a", make_spec, [{"task": "arc_easyy"}])
    line = _one_error(err)
    assert code == 2 and "evaluation.benchmarks.0.task: `arc_easyy` is not an lm-evaluation-harness task" in line
    assert "did you mean arc_easy" in line and "spec.yaml:" in line
    code, err = compile_cli(tmp_path / "b", make_spec, [{"task": "mmlu"}])
    assert code == 2 and "`mmlu` is an lm-eval group of several tasks" in _one_error(err)
    code, err = compile_cli(tmp_path / "c", make_spec, [{"task": "arc_easy"}])
    line = _one_error(err)
    assert code == 2 and "lm-eval cannot load the task `arc_easy`" in line and "not on this machine" in line


def test_without_lm_eval_the_extra_is_named(tmp_path, make_spec, tunespec_env, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    code, err = compile_cli(tmp_path, make_spec, [{"task": "tunespec_sample_mc"}])
    line = _one_error(err)
    assert code == 2 and "evaluation.benchmarks: needs lm-evaluation-harness" in line
    assert "pip install 'tunespec[bench]'" in line
