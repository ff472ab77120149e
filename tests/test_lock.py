"""The portable lock and the build's schema (issue 17): a build compiled in one checkout reruns byte-identically
from a moved checkout, a fresh copy, or with its inputs elsewhere (--root); two checkouts of the same files
compile the same bytes (manifest.json included; lock.yaml differs only in `created` and `hints`); a build of
another format version is refused with exit 2.

Every comparison is of every file's bytes. The tiny tokenizer (compile_fixtures.py) is the model, copied
into the checkout so that its path is relative too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from compile_fixtures import SPECS_DATA, cli, compile_spec, tiny_model_path
from ruamel.yaml import YAML

from tunespec import build_layout as layout

TEMPLATE = "{% block prompt %}Q: {{ question }}\nA:{% endblock %}{% block completion %} {{ answer }}{% endblock %}"


def files_of(build: Path) -> dict[str, bytes]:
    return {str(p.relative_to(build)): p.read_bytes() for p in sorted(build.rglob("*")) if p.is_file()}


def differing(a: Path, b: Path) -> list[str]:
    fa, fb = files_of(a), files_of(b)
    return sorted(f for f in set(fa) | set(fb) if fa.get(f) != fb.get(f))


def lock_of(build: Path) -> dict:
    return YAML(typ="safe", pure=True).load((build / "lock.yaml").read_text(encoding="utf-8"))


def lock_fields_differing(a: Path, b: Path) -> list[str]:
    """The lock's fields that differ, besides its seal (the sha256 of its own bytes)."""
    la, lb = lock_of(a), lock_of(b)
    return sorted(k for k in set(la) | set(lb) if la.get(k) != lb.get(k) and k != "lock_sha256")


def checkout(root: Path) -> Path:
    """repro/specs/t.yaml with relative paths to its data, template and model (repro/model)."""
    (root / "specs" / "data").mkdir(parents=True)
    shutil.copy(SPECS_DATA / "qa_sample.jsonl", root / "specs" / "data" / "qa.jsonl")
    (root / "specs" / "qa.jinja").write_text(TEMPLATE, encoding="utf-8")
    shutil.copytree(tiny_model_path(), root / "model")
    spec = {"name": "t", "model": {"path": "../model"},
            "data": {"format": "qa", "sources": [{"path": "data/*.jsonl"}], "template": {"file": "qa.jinja"},
                     "holdout": {"test": 0.1}}}
    (root / "specs" / "t.yaml").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return root / "specs" / "t.yaml"


def test_two_checkouts_compile_byte_identical_builds(tmp_path, monkeypatch):
    a, b = tmp_path / "repro-a", tmp_path / "elsewhere" / "deeper" / "repro-b"
    spec_a = checkout(a)
    shutil.copytree(a, b)
    monkeypatch.chdir(a)
    compile_spec(spec_a, a / "build")
    monkeypatch.chdir(tmp_path)  # another working directory too
    compile_spec(b / "specs" / "t.yaml", b / "build")
    compile_spec(spec_a, tmp_path / "out" / "other-name")  # another output directory
    for other in (b / "build", tmp_path / "out" / "other-name"):
        assert differing(a / "build", other) == ["lock.yaml"]
        assert set(lock_fields_differing(a / "build", other)) in ({"created", "hints"}, {"hints"})
    for f, data in files_of(a / "build").items():
        if f != "lock.yaml":
            assert str(a).encode() not in data and str(tmp_path).encode() not in data, f
    lock = lock_of(a / "build")
    assert lock["spec_file"] == "t.yaml" and lock["spec"]["model"]["path"] == "../model"
    assert lock["spec"]["data"]["sources"][0]["path"] == "data/*.jsonl"
    assert lock["spec"]["data"]["template"]["file"] == "qa.jinja"
    assert lock["inputs"]["sources"][0]["entries"][0]["file"] == "data/qa.jsonl"
    assert lock["hints"]["spec_dir"] == str(a / "specs") and lock["hints"]["spec_dir_from_build"] == "../specs"
    # outside the lock's hints, no absolute path at all
    lock.pop("hints")
    assert str(tmp_path) not in json.dumps(lock)


def test_rerun_from_a_moved_checkout_and_a_fresh_copy(tmp_path):
    a = tmp_path / "repro-a"
    checkout(a)
    compile_spec(a / "specs" / "t.yaml", a / "build")
    copy = tmp_path / "copy" / "repro"
    shutil.copytree(a, copy)
    moved = tmp_path / "repro-b"
    shutil.move(a, moved)  # mv repro-a repro-b: the lock's absolute hints now name nothing

    r = cli("rerun", moved / "build" / "lock.yaml", "-o", moved / "again")
    assert r.exit_code == 0, r.stderr
    assert f"reproduced: {len(json.loads((moved / 'build' / 'manifest.json').read_text())['files'])} files" in r.stderr
    assert differing(moved / "build", moved / "again") == ["lock.yaml"]
    assert set(lock_fields_differing(moved / "build", moved / "again")) <= {"created", "hints"}

    # the fresh copy reads its own files even while the original's exist: a changed row in the original
    # checkout does not leak into the copy's rerun
    q = moved / "specs" / "data" / "qa.jsonl"
    q.write_text(q.read_text(encoding="utf-8").replace("eight legs", "8 legs"), encoding="utf-8")
    r = cli("rerun", copy / "build", "-o", copy / "again")
    assert r.exit_code == 0, r.stderr
    assert differing(copy / "build", copy / "again") == ["lock.yaml"]
    # and the moved checkout's changed row is noticed there
    r = cli("rerun", moved / "build", "-o", moved / "changed")
    assert r.exit_code == 1 and "changed: source all: data/qa.jsonl sha256 changed" in r.stderr


def test_rerun_root_finds_inputs_that_moved_elsewhere(tmp_path):
    a = tmp_path / "repro-a"
    checkout(a)
    compile_spec(a / "specs" / "t.yaml", a / "build")
    build = tmp_path / "builds" / "t"  # the build alone, away from any checkout
    build.parent.mkdir()
    shutil.move(a / "build", build)
    inputs = tmp_path / "new-home"
    shutil.move(a, inputs)

    r = cli("rerun", build, "-o", tmp_path / "x")
    assert r.exit_code == 2
    assert "input `data/*.jsonl` (data.sources.0.path) not found" in r.stderr and "--root DIR" in r.stderr
    assert not (tmp_path / "x").exists()
    r = cli("rerun", build, "-o", tmp_path / "x", "--root", tmp_path / "nowhere")
    assert r.exit_code == 2 and "--root" in r.stderr and "is not a directory" in r.stderr

    r = cli("rerun", build, "-o", tmp_path / "again", "--root", inputs / "specs")
    assert r.exit_code == 0, r.stderr
    assert differing(build, tmp_path / "again") == ["lock.yaml"]
    assert lock_of(tmp_path / "again")["hints"]["command"].endswith(f"--root {inputs / 'specs'}")


def test_a_build_of_another_format_version_is_refused(tmp_path):
    a = tmp_path / "repro"
    checkout(a)
    build = compile_spec(a / "specs" / "t.yaml", a / "build").path
    assert json.loads((build / "manifest.json").read_text())["format_version"] == layout.FORMAT_VERSION
    old = tmp_path / "old"
    shutil.copytree(build, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = layout.FORMAT_VERSION - 1
    (old / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    r = cli("evaluate", old)
    assert r.exit_code == 2
    assert f"this build is build format {layout.FORMAT_VERSION - 1}; this tunespec reads format " \
           f"{layout.FORMAT_VERSION}" in r.stderr and "recompile" in r.stderr
    lock = (old / "lock.yaml").read_text(encoding="utf-8")
    (old / "lock.yaml").write_text(lock.replace(f"tunespec_lock: {layout.FORMAT_VERSION}\n",
                                                f"tunespec_lock: {layout.FORMAT_VERSION + 1}\n"), encoding="utf-8")
    r = cli("rerun", old, "-o", tmp_path / "x")
    assert r.exit_code == 2 and f"this lock is build format {layout.FORMAT_VERSION + 1}" in r.stderr
    assert "upgrade tunespec" in r.stderr


@pytest.mark.parametrize("field", ["model.path", "data.sources.0.path", "data.template.file"])
def test_a_path_written_absolute_outside_the_spec_directory_stays_absolute(tmp_path, field):
    a = tmp_path / "repro"
    spec = checkout(a)
    doc = json.loads(spec.read_text())
    shared = tmp_path / "shared"
    shared.mkdir()
    if field == "model.path":
        shutil.move(a / "model", shared / "model")
        doc["model"]["path"] = str(shared / "model")
    elif field == "data.sources.0.path":
        shutil.move(a / "specs" / "data", shared / "data")
        doc["data"]["sources"][0]["path"] = str(shared / "data" / "*.jsonl")
    else:
        shutil.move(a / "specs" / "qa.jinja", shared / "qa.jinja")
        doc["data"]["template"]["file"] = str(shared / "qa.jinja")
    spec.write_text(json.dumps(doc), encoding="utf-8")
    build = compile_spec(spec, a / "build").path
    lock = lock_of(build)
    node = lock["spec"]
    for part in field.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    assert node.startswith(str(shared))
    moved = tmp_path / "moved"
    shutil.move(a, moved)
    r = cli("rerun", moved / "build", "-o", moved / "again")
    assert r.exit_code == 0, r.stderr
    assert differing(moved / "build", moved / "again") == ["lock.yaml"]


# --------------------------------------------------------------------------- everything pinned


def test_weights_and_config_are_pinned_and_a_changed_weight_file_is_named(tmp_path):
    a = tmp_path / "repro"
    checkout(a)
    (a / "model" / "model.safetensors").write_bytes(b"weights v1" * 1000)
    build = compile_spec(a / "specs" / "t.yaml", a / "build").path
    files = {f["file"]: f for f in lock_of(build)["inputs"]["model"]["files"]}
    assert set(files) == {"config.json", "model.safetensors"}
    import hashlib

    assert files["model.safetensors"]["sha256"] == hashlib.sha256(b"weights v1" * 1000).hexdigest()
    assert files["model.safetensors"]["size"] == 10000

    r = cli("rerun", build, "-o", tmp_path / "same")
    assert r.exit_code == 0, r.stderr
    (a / "model" / "model.safetensors").write_bytes(b"weights v2" * 1000)  # same size, other bytes
    r = cli("rerun", build, "-o", tmp_path / "new-weights")
    assert r.exit_code == 1
    assert "changed: model weights: model.safetensors sha256 changed (was " in r.stderr
    assert "not reproduced: the build's" in r.stderr and "files are identical, but an input they cannot show changed" in r.stderr
    assert differing(build, tmp_path / "new-weights") == ["lock.yaml"]  # the compile itself reads no weights


def test_package_versions_that_change_bytes_are_pinned_and_named(tmp_path):
    a = tmp_path / "repro"
    checkout(a)
    build = compile_spec(a / "specs" / "t.yaml", a / "build").path
    versions = lock_of(build)["versions"]
    import jinja2
    import numpy
    import tokenizers
    import transformers

    for name, module in (("numpy", numpy), ("jinja2", jinja2), ("tokenizers", tokenizers),
                         ("transformers", transformers)):
        assert versions[name] == module.__version__, name
    for name in ("torch", "huggingface_hub", "safetensors", "gguf", "python", "tunespec"):
        assert name in versions
    lock = (build / "lock.yaml").read_text(encoding="utf-8")
    (build / "lock.yaml").write_text(lock.replace(f"numpy: {numpy.__version__}\n", "numpy: 0.0.1\n")
                                     .replace(f"jinja2: {jinja2.__version__}\n", "jinja2: 0.0.2\n"), encoding="utf-8")
    r = cli("rerun", build, "-o", tmp_path / "new")
    assert f"warning: numpy 0.0.1 → {numpy.__version__}\n" in r.stderr
    assert f"warning: jinja2 0.0.2 → {jinja2.__version__} (tokenization may differ)" in r.stderr


def _tokenizer_template_checkout(root: Path) -> Path:
    spec = checkout(root)
    doc = json.loads(spec.read_text())
    shutil.copy(SPECS_DATA / "chat_sample.jsonl", root / "specs" / "data" / "chat.jsonl")
    (root / "specs" / "data" / "qa.jsonl").unlink()
    doc["data"] = {"format": "sharegpt", "sources": [{"path": "data/chat.jsonl"}], "template": "tokenizer"}
    spec.write_text(json.dumps(doc), encoding="utf-8")
    return spec


def _set_chat_template(model: Path, text: str) -> None:
    if (model / "chat_template.jinja").is_file():
        (model / "chat_template.jinja").write_text(text, encoding="utf-8")
    config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    if "chat_template" in config:
        config["chat_template"] = text
        (model / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def test_template_tokenizer_records_the_chat_templates_own_hash(tmp_path):
    import hashlib

    from compile_fixtures import TINY_CHAT_TEMPLATE, build_tokenizer

    a = tmp_path / "repro"
    spec = _tokenizer_template_checkout(a)
    build = compile_spec(spec, a / "build").path
    chat = build_tokenizer(str(a / "model")).chat_template
    assert chat == TINY_CHAT_TEMPLATE
    want = hashlib.sha256(chat.encode("utf-8")).hexdigest()
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["template"]["sha256"] == want != hashlib.sha256(b"").hexdigest()
    assert lock_of(build)["inputs"]["template"]["sha256"] == want
    assert "file" not in manifest["template"] and not (build / "template.jinja").exists()

    _set_chat_template(a / "model", TINY_CHAT_TEMPLATE.replace("<|im_start|>", "<|im_start|> "))
    r = cli("rerun", build, "-o", tmp_path / "new")
    assert r.exit_code == 1
    assert "changed: the model's chat template changed (sha256 was " in r.stderr


# --------------------------------------------------------------------------- a rerun that explains


def _rows_file(root: Path) -> Path:
    return root / "specs" / "data" / "qa.jsonl"


def test_rerun_names_the_changed_row_by_id_with_its_text_and_tokens(tmp_path):
    import re

    a = tmp_path / "repro"
    checkout(a)
    build = compile_spec(a / "specs" / "t.yaml", a / "build").path
    q = _rows_file(a)
    q.write_text(q.read_text(encoding="utf-8").replace("eight legs", "eight long hairy legs"), encoding="utf-8")
    r = cli("rerun", build, "-o", tmp_path / "new")
    assert r.exit_code == 1
    assert "changed: source all: data/qa.jsonl sha256 changed (was " in r.stderr
    assert re.search(r"rows: train 27 → 27; 1 changed, 0 added, 0 removed\n", r.stderr), r.stderr  # the split that differs
    line = next(x for x in r.stderr.splitlines() if "changed: id " in x)
    assert re.fullmatch(r'    changed: id qa-000 \(source all row 0\), (train|test) row \d+: completion: '
                        r'" A spider has eight legs\." → " A spider has eight long hairy legs\."; tokens (\d+) → (\d+)',
                        line), line
    before, after = map(int, re.search(r"tokens (\d+) → (\d+)", line).groups())
    assert after > before
    assert "moved:" not in r.stderr and "removed:" not in r.stderr


def test_rerun_names_removed_and_added_rows(tmp_path):
    a = tmp_path / "repro"
    spec = checkout(a)
    doc = json.loads(spec.read_text())
    doc["data"].pop("holdout")  # one split: no row is re-drawn into another
    spec.write_text(json.dumps(doc), encoding="utf-8")
    build = compile_spec(spec, a / "build").path
    q = _rows_file(a)
    lines = q.read_text(encoding="utf-8").splitlines()
    gone = json.loads(lines[4])["id"]
    extra = dict(json.loads(lines[0]), id="qa-new", question="How many wheels has a bicycle?", answer="Two.")
    q.write_text("\n".join(lines[:4] + lines[5:] + [json.dumps(extra)]) + "\n", encoding="utf-8")
    r = cli("rerun", build, "-o", tmp_path / "new")
    assert r.exit_code == 1
    assert "rows: train 30 → 30; 0 changed, 1 added, 1 removed\n" in r.stderr, r.stderr
    assert f"    removed: id {gone} (source all row 4), was train row 4\n" in r.stderr
    assert "    added: id qa-new (source all row 29), train row 29\n" in r.stderr


def test_rerun_exit_codes(tmp_path):
    """0 reproduced, 1 not reproduced, 2 bad input (README: `tunespec rerun`)."""
    a = tmp_path / "repro"
    checkout(a)
    build = compile_spec(a / "specs" / "t.yaml", a / "build").path
    assert cli("rerun", build, "-o", tmp_path / "ok").exit_code == 0
    q = _rows_file(a)
    q.write_text(q.read_text(encoding="utf-8").replace("eight legs", "8 legs"), encoding="utf-8")
    assert cli("rerun", build, "-o", tmp_path / "changed").exit_code == 1
    q.unlink()
    r = cli("rerun", build, "-o", tmp_path / "gone")
    assert r.exit_code == 2 and "not found" in r.stderr and not (tmp_path / "gone").exists()
    assert cli("rerun", tmp_path / "no-such", "-o", tmp_path / "x").exit_code == 2


# --------------------------------------------------------------------------- rerun --train


def test_rerun_train_reproduces_the_loss_curve_and_adapter_exactly_on_the_cpu(tmp_path):
    import helpers

    a = tmp_path / "repro"
    (a / "specs" / "data").mkdir(parents=True)
    shutil.copy(SPECS_DATA / "dialogues_train.jsonl", a / "specs" / "data" / "train.jsonl")
    helpers.build_tiny_model(a / "model")
    doc = helpers.base_spec(a / "model")
    doc["model"]["path"] = "../model"
    doc["data"]["sources"] = [{"path": "data/train.jsonl", "split": "train", "limit": 24}]
    doc["training"].update(max_steps=4, save_steps=2, logging_steps=1)
    (a / "specs" / "t.yaml").write_text(json.dumps(doc), encoding="utf-8")
    build = compile_spec(a / "specs" / "t.yaml", a / "build").path
    helpers.train_in_process(build)
    moved = tmp_path / "moved"
    shutil.move(a, moved)  # trained in one place, retrained from the moved checkout
    build = moved / "build"

    # the moved build still finds its base model (relative to the spec directory seen from the build)
    g = cli("generate", build, "--model", "adapter", "--prompt", "#Person1#: Hi.", "--json")
    assert g.exit_code == 0, g.stderr
    assert json.loads(g.stdout)["model"] == "adapter"

    r = cli("rerun", build, "-o", moved / "again", "--train")
    assert r.exit_code == 0, r.stderr
    assert "reproduced: " in r.stderr
    assert "training reproduced: 4 logged steps with the same losses, adapter/ identical" in r.stderr
    old, new = helpers.read_metrics(build), helpers.read_metrics(moved / "again")
    assert [m["loss"] for m in old if "loss" in m] == [m["loss"] for m in new if "loss" in m]
    assert helpers.max_tensor_diff(helpers.load_tensors(build / "adapter" / "adapter_model.safetensors"),
                                   helpers.load_tensors(moved / "again" / "adapter" / "adapter_model.safetensors")) == 0

    # a different curve is named by its step
    metrics = (build / "train" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    second = json.loads(metrics[1])
    assert second["step"] == 2
    second["loss"] = round(second["loss"] + 0.5, 6)
    metrics[1] = json.dumps(second)
    (build / "train" / "metrics.jsonl").write_text("\n".join(metrics) + "\n", encoding="utf-8")
    r = cli("rerun", build, "-o", moved / "other", "--train")
    assert r.exit_code == 1
    assert f"training not reproduced: 1 difference(s)\n  step 2: loss was {second['loss']}, now " in r.stderr


def test_rerun_train_of_an_untrained_build_is_refused(tmp_path):
    a = tmp_path / "repro"
    checkout(a)
    build = compile_spec(a / "specs" / "t.yaml", a / "build").path
    r = cli("rerun", build, "-o", tmp_path / "x", "--train")
    assert r.exit_code == 2 and "was not trained" in r.stderr and "tunespec train BUILD" in r.stderr
    assert not (tmp_path / "x").exists()


def test_adapter_comparison_names_a_changed_tensor_and_ignores_the_base_models_path(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from tunespec.rerun_training import adapter_differences

    old, new = tmp_path / "old", tmp_path / "new"
    for d, base in ((old, "/machine-a/model"), (new, "/machine-b/model")):
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 8}), encoding="utf-8")
        (d / "tunespec.json").write_text(json.dumps({"input_key": d.name}), encoding="utf-8")
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_file({"lora_A": w, "lora_B": w * 2}, str(old / "adapter_model.safetensors"))
    save_file({"lora_A": w, "lora_B": w * 2}, str(new / "adapter_model.safetensors"))
    assert adapter_differences(old, new, 0.0) == ([], 0.0)
    w2 = w.copy()
    w2[1, 2] += 1e-6
    save_file({"lora_A": w2, "lora_B": w * 2}, str(new / "adapter_model.safetensors"))
    diffs, largest = adapter_differences(old, new, 0.0)
    assert len(diffs) == 1 and diffs[0].startswith("adapter_model.safetensors: tensor lora_A differs") and largest > 0
    assert adapter_differences(old, new, 1e-3)[0] == []  # within a GPU tolerance
    (new / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x", "r": 16}), encoding="utf-8")
    assert "adapter_config.json: differs" in adapter_differences(old, new, 1e-3)[0]


def test_a_hub_source_pins_the_rows_it_read(tmp_path):
    """`hub: json` with data_files (read by `datasets`, offline): the lock pins the sha256 of the rows read,
    the data files by their portable paths; a changed row is named."""
    a = tmp_path / "repro"
    spec = checkout(a)
    doc = json.loads(spec.read_text())
    doc["data"]["sources"] = [{"hub": "json", "data_files": ["data/qa.jsonl"], "split": "train"}]
    doc["data"].pop("holdout")
    spec.write_text(json.dumps(doc), encoding="utf-8")
    build = compile_spec(spec, a / "build").path
    source = lock_of(build)["inputs"]["sources"][0]
    assert source["hub"]["rows"] == 30 and len(source["hub"]["rows_sha256"]) == 64
    assert source["entries"][0]["files"][0]["file"] == "data/qa.jsonl"
    moved = tmp_path / "moved"
    shutil.move(a, moved)
    r = cli("rerun", moved / "build", "-o", moved / "again")
    assert r.exit_code == 0, r.stderr
    assert differing(moved / "build", moved / "again") == ["lock.yaml"]
    q = moved / "specs" / "data" / "qa.jsonl"
    q.write_text(q.read_text(encoding="utf-8").replace("eight legs", "8 legs"), encoding="utf-8")
    r = cli("rerun", moved / "build", "-o", moved / "changed")
    assert r.exit_code == 1
    assert "the hub dataset's rows changed (30 rows, sha256 " in r.stderr
    assert "changed: id qa-000" in r.stderr
