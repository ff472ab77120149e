"""Adapter methods through peft on the tiny random Llama: LoRA with DoRA and rsLoRA, prefix tuning (P-tuning v2,
with and without the projection MLP), prompt tuning (random and text init) and IA³.

Each method trains 4 steps uninterrupted; a second build of the same spec trains to a checkpoint, stops (an
exception from the log callback after step 2 is saved), resumes and must end with the same trainable weights
(fp32, ``training.bf16: false``). The uninterrupted build is evaluated (ROUGE on 2 rows, through ``generate``)
and merged (LoRA, DoRA, rsLoRA, IA³: merged logits match base + adapter) or refused (prefix and prompt tuning:
``tunespec merge`` exits 2). The spec sections of the new methods are checked for located errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import TrainingStopped, load_tensors, max_tensor_diff, reset_accelerate, train_in_process

pytestmark = pytest.mark.usefixtures("tunespec_env")

METHODS = {
    "dora": {"method": "lora", "r": 4, "alpha": 8, "use_dora": True},
    "rslora": {"method": "lora", "r": 4, "alpha": 8, "use_rslora": True},
    "prefix": {"method": "prefix_tuning", "num_virtual_tokens": 4},
    "prefix-projection": {"method": "prefix_tuning", "num_virtual_tokens": 4, "prefix_projection": True,
                          "encoder_hidden_size": 32},
    "prompt-random": {"method": "prompt_tuning", "num_virtual_tokens": 4},
    "prompt-text": {"method": "prompt_tuning", "num_virtual_tokens": 6, "init": "text",
                    "init_text": "Summarize the dialogue:"},
    "ia3": {"method": "ia3"},
}
MERGEABLE = {"dora", "rslora", "ia3"}
FAST = {"training.max_steps": 4, "training.save_steps": 1, "training.bf16": False,
        "data.sources.0.limit": 24, "evaluation.max_new_tokens": 4}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run creates its own Accelerator."""
    yield
    reset_accelerate()


def _row(build: Path):
    import torch

    from tunespec.build_reader import Build

    tokens = Build(build).tokens("train")
    return torch.as_tensor(tokens.row(0)[0][:64].astype("int64"))[None]


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_resumes_evaluates_and_merges(name, build_from):
    from tunespec.build_reader import Build
    from tunespec.cli import main
    from tunespec.runtime.evaluate import evaluate

    overrides = {**FAST, "adapter": METHODS[name]}
    whole = build_from(**overrides)
    logs = train_in_process(whole)
    assert any(line.startswith("step 4/4") for line in logs), logs
    config = json.loads((whole / "adapter" / "adapter_config.json").read_text())
    expected = {"dora": "LORA", "rslora": "LORA", "ia3": "IA3"}.get(name, "PREFIX_TUNING" if "prefix" in name else "PROMPT_TUNING")
    assert config["peft_type"] == expected
    if name == "dora":
        assert config["use_dora"] is True
    if name == "rslora":
        assert config["use_rslora"] is True
    if name == "prefix-projection":
        assert config["prefix_projection"] is True and config["encoder_hidden_size"] == 32
    if name == "prompt-text":
        assert config["prompt_tuning_init"] == "TEXT"

    # resume: stop after step 2 (checkpoint-2 saved), continue to 4; the same weights as the uninterrupted run
    resumed = build_from(**overrides)
    with pytest.raises(TrainingStopped):
        train_in_process(resumed, stop_before=3)
    assert (resumed / "train" / "checkpoint-2").is_dir()
    assert not (resumed / "adapter").exists()
    at_2 = load_tensors(resumed / "train" / "checkpoint-2" / "trainable.safetensors")
    logs = train_in_process(resumed)
    assert any("resuming from checkpoint-2" in line for line in logs), logs
    a = load_tensors(whole / "train" / "checkpoint-4" / "trainable.safetensors")
    b = load_tensors(resumed / "train" / "checkpoint-4" / "trainable.safetensors")
    assert a, "no trainable weights saved"
    assert max_tensor_diff(a, b) < 1e-6
    # the trained weights are really the method's (and they moved away from the start)
    assert max_tensor_diff(a, at_2) > 0
    marker = {"dora": "lora_magnitude", "rslora": "lora_A", "ia3": "ia3_l"}.get(name, "prompt_encoder")
    assert all(marker in k or "lora_" in k for k in a) and any(marker in k for k in a), sorted(a)[:4]

    # evaluate: generation through the adapter (prefix/prompt tuning included)
    summary = evaluate(Build(whole), limit=2, log=lambda s: None)
    rouge = json.loads((whole / "eval" / "rouge.json").read_text())
    assert "tuned" in rouge and "base" in rouge
    assert rouge["settings"]["rows"] == 2
    assert summary["tuned"]["new_tokens"] > 0

    # merge: folded in where the method has weights, refused (exit 2) where it adds virtual tokens
    result = CliRunner().invoke(main, ["merge", str(whole)])
    if name in MERGEABLE:
        assert result.exit_code == 0, result.output
        report = json.loads((whole / "merged" / "tunespec.json").read_text())
        assert report["max_logit_diff"] < 1e-4
        _check_merged_matches(whole)
    else:
        assert result.exit_code == 2, result.output
        text = result.output
        assert "no weights to fold in" in text and "serve base + adapter" in text, text
        if "prefix" in name:
            assert "prefix tuning adds virtual key/value tokens at every layer" in text
        assert not (whole / "merged").exists()


def _check_merged_matches(build: Path) -> None:
    """The merged model, loaded from disk, against base + adapter loaded with peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunespec.build_reader import Build
    from tunespec.runtime.modeling import load_base_model

    b = Build(build)
    row = _row(build)
    tuned = PeftModel.from_pretrained(load_base_model(b.spec, dtype=torch.float32), str(b.adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(b.merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (tuned(row).logits - merged(row).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_gradient_checkpointing_works_for_prompt_tuning_and_ia3(build_from):
    for adapter in ({"method": "prompt_tuning", "num_virtual_tokens": 4}, {"method": "ia3"}):
        build = build_from(**{**FAST, "training.max_steps": 2, "training.gradient_checkpointing": True,
                              "adapter": adapter})
        logs = train_in_process(build)
        assert any(line.startswith("step 2/2") for line in logs), logs


def test_ia3_named_targets(build_from):
    build = build_from(**{**FAST, "training.max_steps": 1,
                          "adapter": {"method": "ia3", "target_modules": ["v_proj", "up_proj"],
                                      "feedforward_modules": ["up_proj"]}})
    train_in_process(build)
    config = json.loads((build / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"v_proj", "up_proj"}
    assert set(config["feedforward_modules"]) == {"up_proj"}


def test_ia3_unknown_target_is_a_located_error(build_from):
    from tunespec.errors import ModelError

    build = build_from(**{**FAST, "training.max_steps": 1,
                          "adapter": {"method": "ia3", "target_modules": ["v_proj", "nope_proj"]}})
    with pytest.raises(ModelError) as e:
        train_in_process(build)
    problem = e.value.problems[0] if hasattr(e.value, "problems") else e.value.problem
    assert problem.path == "adapter.target_modules"
    assert "nope_proj" in problem.message


# --------------------------------------------------------------------------- spec validation

BASE_SPEC = """\
name: bad-spec
model:
  hub: org/model
data:
  format: alpaca
  sources:
    - path: rows.jsonl
"""


def _validate(tmp_path: Path, text: str, *extra: str):
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE_SPEC + text, encoding="utf-8")
    r = CliRunner().invoke(__import__("tunespec.cli", fromlist=["main"]).main, ["validate", str(spec), *extra])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return r.exit_code, lines, spec


# (adapter section / other YAML, the error's LINE:COL: PATH: message start); line 8 is the first line after BASE_SPEC
BAD = {
    "prefix-tokens-zero": ("adapter:\n  method: prefix_tuning\n  num_virtual_tokens: 0\n",
                           "10:3: adapter.num_virtual_tokens: must be in 1..1024, got 0"),
    "prefix-tokens-string": ("adapter:\n  method: prefix_tuning\n  num_virtual_tokens: many\n",
                             "10:3: adapter.num_virtual_tokens: expected a whole number"),
    "prefix-projection-not-bool": ("adapter:\n  method: prefix_tuning\n  prefix_projection: 'yes'\n",
                                   "10:3: adapter.prefix_projection: expected true or false"),
    "prefix-encoder-without-projection": ("adapter:\n  method: prefix_tuning\n  encoder_hidden_size: 64\n",
                                          "10:3: adapter.encoder_hidden_size: applies to the prefix projection only"),
    "prefix-unknown-key": ("adapter:\n  method: prefix_tuning\n  pre_seq_len: 64\n",
                           "10:3: adapter.pre_seq_len:"),
    "prefix-lora-key": ("adapter:\n  method: prefix_tuning\n  r: 8\n", "10:3: adapter.r:"),
    "prefix-gradient-checkpointing": ("adapter:\n  method: prefix_tuning\ntraining:\n  gradient_checkpointing: true\n",
                                      "11:3: training.gradient_checkpointing: prefix tuning does not work with gradient checkpointing"),
    "prompt-tokens-too-many": ("adapter:\n  method: prompt_tuning\n  num_virtual_tokens: 5000\n",
                               "10:3: adapter.num_virtual_tokens: must be in 1..1024, got 5000"),
    "prompt-bad-init": ("adapter:\n  method: prompt_tuning\n  init: vocab\n", "10:3: adapter.init: 'vocab' is not one of 'random' or 'text'"),
    "prompt-text-without-text": ("adapter:\n  method: prompt_tuning\n  init: text\n",
                                 "-:-: adapter.init_text: init: text needs the text"),
    "prompt-text-without-init": ("adapter:\n  method: prompt_tuning\n  init_text: Summarize\n",
                                 "10:3: adapter.init_text: is set but init is `random`"),
    "ia3-targets-string": ("adapter:\n  method: ia3\n  target_modules: all-linear\n", "10:3: adapter.target_modules: expected a list"),
    "ia3-empty-targets": ("adapter:\n  method: ia3\n  target_modules: []\n",
                          "10:3: adapter.target_modules: is an empty list"),
    "ia3-ff-without-targets": ("adapter:\n  method: ia3\n  feedforward_modules: [down_proj]\n",
                               "10:3: adapter.feedforward_modules: needs target_modules"),
    "ia3-ff-not-a-target": ("adapter:\n  method: ia3\n  target_modules: [k_proj]\n  feedforward_modules: [down_proj]\n",
                            "11:3: adapter.feedforward_modules: down_proj not in target_modules"),
    "ia3-lora-key": ("adapter:\n  method: ia3\n  alpha: 16\n", "10:3: adapter.alpha:"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_adapter_section(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, expected = BAD[case]
    code, lines, spec = _validate(tmp_path, text)
    shown = "\n".join(lines)
    assert code == 2, shown
    assert len(lines) == 1, shown
    assert all(ln.startswith("error: ") and " — " in ln for ln in lines), shown
    where, rest = expected.split(": ", 1)
    line, col = where.split(":")
    prefix = f"error: {spec.name}:{line}" + ("" if col == "-" else f":{col}")
    if line != "-":
        assert lines[0].startswith(prefix + ": " + rest), shown
    else:
        assert (": " + rest) in lines[0], shown


@pytest.mark.parametrize("adapter", [
    "adapter:\n  method: prefix_tuning\n  num_virtual_tokens: 128\n  prefix_projection: true\n  encoder_hidden_size: 1024\n",
    "adapter:\n  method: prompt_tuning\n  init: text\n  init_text: Summarize the dialogue\n",
    "adapter:\n  method: ia3\n  target_modules: [k_proj, v_proj, down_proj]\n  feedforward_modules: [down_proj]\n",
    "adapter:\n  method: lora\n  use_dora: true\n  use_rslora: true\n",
    "adapter:\n  method: prompt_tuning\nquantization:\n  load_in_4bit: true\n",
    "adapter:\n  method: ia3\nquantization:\n  load_in_8bit: true\n",
])
def test_good_adapter_sections(adapter, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines, _ = _validate(tmp_path, adapter)
    assert code == 0, "\n".join(lines)


def test_resolved_spec_of_new_methods_round_trips(tmp_path):
    """`tunespec show` writes every default out; the written spec must validate the same (no rule on defaults)."""
    from tunespec.spec.loader import load_spec
    from tunespec.spec.render import resolved_dict

    for adapter in ("method: prefix_tuning", "method: prompt_tuning", "method: ia3"):
        spec = tmp_path / "s.yaml"
        spec.write_text(BASE_SPEC + "adapter:\n  " + adapter + "\ntraining:\n  epochs: 1\n", encoding="utf-8")
        first = resolved_dict(load_spec(spec))
        import yaml

        spec.write_text(yaml.safe_dump(first), encoding="utf-8")
        assert resolved_dict(load_spec(spec)) == first


@pytest.mark.parametrize("adapter", [
    {"method": "ia3"},
    {"method": "prefix_tuning", "num_virtual_tokens": 4},
    {"method": "prompt_tuning", "num_virtual_tokens": 4},
], ids=["ia3", "prefix", "prompt"])
def test_quantized_base(adapter, build_from):
    """4-bit base (QLoRA-style k-bit preparation) with each non-LoRA method: trains, and IA3 merges into fp32."""
    from tunespec.cli import main

    build = build_from(**{**FAST, "training.max_steps": 2, "quantization.load_in_4bit": True,
                          "quantization.compute_dtype": "float32", "adapter": adapter})
    logs = train_in_process(build)
    assert any(line.startswith("step 2/2") for line in logs), logs
    assert (build / "adapter" / "adapter_model.safetensors").is_file()
    if adapter["method"] == "ia3":
        result = CliRunner().invoke(main, ["merge", str(build)])
        assert result.exit_code == 0, result.output
