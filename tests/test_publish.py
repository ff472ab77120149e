"""`tunespec publish` on the tiny random Llama: the folder's exact files, the adapter and the merged model loading
back with the trained logits, the model card (front matter, training summary, ROUGE table, the lock verbatim),
clean errors, the upload's arguments (through a fake huggingface_hub API: nothing goes to the network) and the
publish stage of `tunespec run`.

One build is trained for 4 steps and evaluated once (module fixture); tests work on copies of it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import helpers
import pytest
import yaml
from click.testing import CliRunner

pytestmark = pytest.mark.usefixtures("tunespec_env")

REPO_ID = "someone/tiny-tunespec"
PUSH = {"repo_id": REPO_ID, "private": False, "revision": "v1", "license": "apache-2.0"}


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, _session_cache) -> Path:
    """A LoRA build with output.push_to_hub, trained 4 steps and evaluated (base and tuned ROUGE); returns its root."""
    from tunespec.build_reader import Build
    from tunespec.runtime.evaluate import evaluate
    from tunespec.runtime.train import Trainer

    mp = pytest.MonkeyPatch()
    mp.setenv("TUNESPEC_CACHE", str(_session_cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        root = tmp_path_factory.mktemp("publish")
        spec = helpers.write_spec(root / "spec.yaml", tiny_model_dir, {
            "training.max_steps": 4, "training.save_steps": 2, "data.sources.0.limit": 24,
            "evaluation.max_new_tokens": 4, "output.push_to_hub": dict(PUSH)})
        helpers.compile_spec(spec, root / "build")
        try:
            Trainer(Build(root / "build"), log=lambda s: None).run()
        finally:
            _reset_accelerate()
        evaluate(Build(root / "build"), log=lambda s: None)
    finally:
        mp.undo()
    return root


@pytest.fixture
def build(trained, tmp_path) -> Path:
    """A private copy of the trained build (mtimes kept: freshness checks compare them)."""
    dst = tmp_path / "trained-build"
    shutil.copytree(trained / "build", dst)
    return dst


def _cli(*args):
    from tunespec.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _error(result, *texts: str) -> str:
    """The one clean error line of a failed command (exit 2, no traceback), checked to contain `texts`."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and " — " in lines[0], result.stderr
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def _edit_lock(build: Path, change) -> None:
    """Change the resolved spec in the build's lock file (YAML 1.2, as tunespec reads and writes it)."""
    from ruamel.yaml import YAML

    from tunespec.spec.render import to_yaml

    lock = YAML(typ="safe", pure=True).load((build / "lock.yaml").read_text(encoding="utf-8"))
    change(lock["spec"])
    lock.pop("lock_sha256", None)
    from tunespec.verify import seal_lock

    (build / "lock.yaml").write_text(seal_lock(to_yaml(lock)), encoding="utf-8")  # re-sealed: a deliberate edit


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def _tokenizer_files(build: Path, tmp_path: Path) -> set[str]:
    """The files the build's tokenizer saves (what the folder must carry), written independently."""
    from tunespec.build_reader import Build

    out = tmp_path / "tokenizer-files"
    Build(build).load_tokenizer().save_pretrained(out)
    return {p.name for p in out.iterdir()}


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


def _row(build: Path):
    import torch

    from tunespec.build_reader import Build

    return torch.as_tensor(Build(build).tokens("test").row(0)[0][:64].astype("int64"))[None]


# --------------------------------------------------------------------------- the adapter folder


def test_adapter_folder_has_exactly_the_files_and_loads_back(build, tmp_path, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunespec.build_reader import Build
    from tunespec.runtime.publish import publish

    out = tmp_path / "out"
    logs: list[str] = []
    result = publish(Build(build), to_folder=out, log=logs.append)
    expected = {"README.md", "adapter_config.json", "adapter_model.safetensors"} | _tokenizer_files(build, tmp_path)
    assert result.what == "adapter" and result.url is None
    assert result.files == sorted(expected)
    # nothing else: no stamps, no subfolders; only the marker listing tunespec's files (not uploaded)
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, ".tunespec"])
    assert any(line.startswith(f"wrote {out}: adapter, {len(expected)} files") for line in logs)
    assert not (build / "publish.json").exists(), "--to-folder uploads nothing"
    # the base is a local directory (no hub id): adapter_config.json is the trained one, byte for byte
    assert (out / "adapter_config.json").read_bytes() == (build / "adapter" / "adapter_config.json").read_bytes()

    # the published adapter on the base gives the trained build's logits (and they differ from the base's)
    ids = _row(build)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    base_logits = _logits(base, ids)
    published = _logits(PeftModel.from_pretrained(base, str(out)).eval(), ids)
    again = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    trained = _logits(PeftModel.from_pretrained(again, str(build / "adapter")).eval(), ids)
    assert torch.equal(published, trained)
    assert float((published - base_logits).abs().max()) > 1e-4, "the adapter changes nothing: the check is vacuous"
    # and the published tokenizer tokenizes as the build's
    text = "#Person1#: Hello there. ### End"
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == Build(build).load_tokenizer()(text)["input_ids"]

    # publishing again replaces the folder it wrote before
    assert publish(Build(build), to_folder=out, log=logs.append).files == sorted(expected)


def test_model_card(build, tmp_path):
    from tunespec.build_reader import Build
    from tunespec.runtime.publish import MARKER, publish

    # a tiny random model scores ROUGE 0 everywhere: give the scores distinct values (F1 apart from P and R), so
    # that the table can only match by reading the right numbers
    path = build / "eval" / "rouge.json"
    rouge = json.loads(path.read_text())
    for i, metric in enumerate(("rouge1", "rouge2", "rougeL", "rougeLsum")):
        for j, label in enumerate(("base", "tuned")):
            rouge[label][metric].update(f1=round(0.1 + 0.1 * i + 0.05 * j + 0.001234, 6), precision=0.9, recall=0.8)
        rouge["delta"][metric] = round(rouge["tuned"][metric]["f1"] - rouge["base"][metric]["f1"], 6)
    path.write_text(json.dumps(rouge, indent=2) + "\n")
    from tunespec.atomic import seal

    seal(build / "eval")  # as if evaluate had written these scores (an edit without it is refused)

    out = tmp_path / "out"
    publish(Build(build), to_folder=out, log=lambda s: None)
    meta, body = _card(out)
    # front matter: valid YAML with the hub's model-card keys; no base_model: the base is a local directory
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"tunespec", "lora", "peft"} <= set(meta["tags"])
    assert "base_model" not in meta and "datasets" not in meta  # local model and local files
    assert MARKER in body

    # the lock file, verbatim, in the fence after "## Reproduce"
    reproduce = body.split("## Reproduce\n", 1)[1]
    fence_line = next(line for line in reproduce.splitlines() if line.startswith("```"))
    assert fence_line.endswith("yaml")
    fence = fence_line[: -len("yaml")]
    embedded = reproduce.split(fence_line + "\n", 1)[1]
    assert embedded.endswith("\n" + fence + "\n")
    embedded = embedded[: -len(fence) - 1]
    assert embedded.encode("utf-8") == (build / "lock.yaml").read_bytes()

    # the ROUGE table: F1 x 100 of base and tuned and their difference, the numbers of eval/rouge.json
    evaluation = body.split("## Evaluation\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in evaluation.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    assert set(rows) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    for metric, (base, tuned, delta) in rows.items():
        assert base / 100 == pytest.approx(rouge["base"][metric]["f1"], abs=1e-9)
        assert tuned / 100 == pytest.approx(rouge["tuned"][metric]["f1"], abs=1e-9)
        assert delta / 100 == pytest.approx(rouge["delta"][metric], abs=1e-9)
    assert f"tuned: eval loss {rouge['tuned']['eval_loss']:.4f}" in evaluation

    # the training summary: steps and the final loss of train/metrics.jsonl
    metrics = helpers.read_metrics(build)
    last = [m for m in metrics if "loss" in m][-1]
    assert last["step"] == 4
    assert "| steps | 4 |" in body
    assert f"{last['loss']:.4f} at step 4 (final)" in body
    # how to load it, from the repository the spec names
    assert f'model = PeftModel.from_pretrained(base, "{REPO_ID}")' in body
    assert f'AutoTokenizer.from_pretrained("{REPO_ID}")' in body


def test_card_leaves_out_an_evaluation_of_an_earlier_training(build, tmp_path):
    from tunespec.build_reader import Build
    from tunespec.runtime.publish import write_folder

    stamp = build / "adapter" / "tunespec.json"
    later = (build / "eval" / "rouge.json").stat().st_mtime + 10
    os.utime(stamp, (later, later))  # trained again after the evaluation
    write_folder(Build(build), tmp_path / "stale", "adapter")
    _, body = _card(tmp_path / "stale")
    assert "| rouge1 |" not in body and "No evaluation was run on this build" in body
    shutil.rmtree(build / "eval")
    write_folder(Build(build), tmp_path / "none", "adapter")
    assert "No evaluation was run on this build" in _card(tmp_path / "none")[1]


def test_hub_base_and_datasets_fill_the_card_and_adapter_config(build, tmp_path):
    """A base from the hub: base_model in the front matter, and adapter_config.json names it instead of a path."""
    from tunespec.build_reader import Build
    from tunespec.runtime.publish import write_folder

    def to_hub(spec):
        spec["model"].update(hub="org/base-model", path=None, revision="abc123")
        spec["data"]["sources"][0].update(hub="knkarthick/dialogsum", path=None)

    _edit_lock(build, to_hub)
    out = tmp_path / "out"
    write_folder(Build(build), out, "adapter")
    meta, body = _card(out)
    assert meta["base_model"] == "org/base-model" and meta["datasets"] == ["knkarthick/dialogsum"]
    assert 'AutoModelForCausalLM.from_pretrained("org/base-model"' in body
    config = json.loads((out / "adapter_config.json").read_text())
    original = json.loads((build / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/base-model" and config["revision"] == "abc123"
    assert {k: v for k, v in config.items() if k not in ("base_model_name_or_path", "revision")} == \
        {k: v for k, v in original.items() if k not in ("base_model_name_or_path", "revision")}


# --------------------------------------------------------------------------- the merged model


def test_merged_folder_loads_and_a_stale_merge_is_refused(build, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    result = _cli("merge", build)
    assert result.exit_code == 0, result.output
    out = tmp_path / "merged-out"
    result = _cli("publish", build, "--what", "merged", "--to-folder", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    files = {p.name for p in out.iterdir()}
    merged = {p.name for p in (build / "merged").iterdir()} - {"tunespec.json"}
    assert files == merged | {"README.md"}
    assert {"config.json", "model.safetensors", "README.md"} <= files and "tunespec.json" not in files
    meta, body = _card(out)
    assert meta["library_name"] == "transformers" and "peft" not in meta["tags"]
    assert f'AutoModelForCausalLM.from_pretrained("{REPO_ID}", dtype=torch.bfloat16)' in body
    ids = _row(build)
    got = _logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), ids)
    want = _logits(AutoModelForCausalLM.from_pretrained(build / "merged", dtype=torch.float32).eval(), ids)
    assert torch.equal(got, want)

    # the adapter trained again after the merge: publishing the old merged model is refused
    stamp = build / "adapter" / "tunespec.json"
    later = (build / "merged" / "tunespec.json").stat().st_mtime + 10
    os.utime(stamp, (later, later))
    _error(_cli("publish", build, "--what", "merged", "--to-folder", tmp_path / "again"),
           "older than the adapter", f"merge again: tunespec merge {build}")


# --------------------------------------------------------------------------- errors


def test_clean_errors(build, tiny_build, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    # a compiled build that was never trained
    _error(_cli("publish", tiny_build, "--to-folder", tmp_path / "a"), "no training output", "train first: tunespec train")
    # the merged model asked for, but never merged
    _error(_cli("publish", build, "--what", "merged", "--dry-run"), "has none", f"merge first: tunespec merge {build}")
    # a folder that holds something else
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    _error(_cli("publish", build, "--to-folder", tmp_path / "taken"), "is not empty")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    _error(_cli("publish", build, "--repo-id", "no-owner", "--dry-run"), "--repo-id: 'no-owner' is not a hub repository id")
    # uploading while offline (the test environment sets HF_HUB_OFFLINE)
    _error(_cli("publish", build), "hub is offline", "--to-folder DIR")
    # online, without a token
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    _error(_cli("publish", build), "no Hugging Face token", "HF_TOKEN")
    # a spec without output.push_to_hub and no --repo-id
    _edit_lock(build, lambda spec: spec["output"].update(push_to_hub=None))
    _error(_cli("publish", build), "nowhere to publish", "--repo-id OWNER/NAME")
    assert not (build / "publish").exists(), "a refused upload writes nothing"


# --------------------------------------------------------------------------- the upload, with a fake hub


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records every call; nothing goes to the network."""

    calls: list = []
    fail: Exception | None = None

    def __init__(self, token=None, **kwargs):
        FakeHub.calls.append(("HfApi", {"token": token, **kwargs}))

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        if FakeHub.fail is not None:
            raise FakeHub.fail
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        FakeHub.calls.append(("upload_folder", {**kwargs, "files": files}))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    FakeHub.calls, FakeHub.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_0123456789")
    return FakeHub


def test_upload_arguments(build, fake_hub):
    result = _cli("publish", build)
    assert result.exit_code == 0, result.output
    url = f"https://huggingface.co/{REPO_ID}/commit/abc"
    assert result.stdout.strip() == url
    names = [name for name, _ in fake_hub.calls]
    assert names == ["HfApi", "create_repo", "create_branch", "upload_folder"]
    calls = dict(fake_hub.calls)
    assert calls["HfApi"] == {"token": "hf_fake_token_0123456789"}
    assert calls["create_repo"] == {"repo_id": REPO_ID, "private": False, "repo_type": "model", "exist_ok": True}
    assert calls["create_branch"] == {"repo_id": REPO_ID, "branch": "v1", "repo_type": "model", "exist_ok": True}
    upload = calls["upload_folder"]
    assert upload["repo_id"] == REPO_ID and upload["repo_type"] == "model" and upload["revision"] == "v1"
    assert Path(upload["folder_path"]) == build / "publish"
    assert upload["delete_patterns"] == "*"  # the branch ends up holding exactly the folder
    assert upload["files"] == sorted(p.name for p in (build / "publish").iterdir())
    assert "adapter_model.safetensors" in upload["files"] and "README.md" in upload["files"]
    stamp = json.loads((build / "publish.json").read_text())
    assert stamp["url"] == url and stamp["repo_id"] == REPO_ID and stamp["what"] == "adapter"
    assert "hf_fake_token" not in (build / "publish.json").read_text()

    # --repo-id overrides the spec's; --dry-run and --to-folder never reach the hub
    fake_hub.calls.clear()
    assert _cli("publish", build, "--repo-id", "other/name").exit_code == 0
    assert dict(fake_hub.calls)["create_repo"]["repo_id"] == "other/name"
    fake_hub.calls.clear()
    dry = _cli("publish", build, "--dry-run")
    assert dry.exit_code == 0 and fake_hub.calls == []
    assert f"dry run: would upload it to {REPO_ID} (public, branch v1)" in dry.stderr


def test_failed_upload_is_a_clean_error_without_the_token(build, fake_hub):
    fake_hub.fail = ConnectionError("cannot reach https://huggingface.co with token hf_fake_token_0123456789")
    result = _cli("publish", build)
    line = _error(result, f"uploading to {REPO_ID} failed: ConnectionError", f"tunespec publish {build} again")
    assert "hf_fake_token_0123456789" not in result.output and "***" in line


def test_run_publishes_last_and_skips_when_up_to_date(trained, build, fake_hub):
    from tunespec.pipeline import run_all

    logs: list[str] = []
    run_all(trained / "spec.yaml", build, (), log=logs.append)
    assert "[1/5] compile" in logs and "[5/5] publish" in logs
    assert [name for name, _ in fake_hub.calls].count("upload_folder") == 1
    assert any(line.startswith("  published: https://huggingface.co/") for line in logs)
    fake_hub.calls.clear()
    logs.clear()
    run_all(trained / "spec.yaml", build, (), log=logs.append)
    assert any("is up to date: skipped" in line and "published" in line for line in logs), logs
    assert fake_hub.calls == []
