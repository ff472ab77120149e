"""Vocabulary extension (``model.added_tokens`` / ``model.added_special_tokens``) on the tiny random Llama.

The spec's rules (located errors), the compile (the tokens become one id each in the extended tokenizer,
the rows and masks hold them, the manifest and lock record ids and the embedding size; a template marker
missing from the vocabulary is a located error that says where to add it; a token already in the
vocabulary is a warning), and the runtime: LoRA trains the new rows (trainable tokens, tied and untied LM
heads, a head with a bias whole), a resumed run ends with the same weights, the merge saves a resized
model that reloads with ``from_pretrained`` and encodes the tokens to their ids, full fine-tuning trains
the rows too, and the memory estimate counts the rows peft trains.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import helpers
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TrainingStopped, load_tensors, max_tensor_diff, reset_accelerate, train_in_process

pytestmark = pytest.mark.usefixtures("tunespec_env")

MARKERS = ["<|user|>", "<|assistant|>", "<|end|>"]
TEMPLATE = {  # a fields template whose role markers the tiny tokenizer lacks
    "prompt": "<|user|>\n{{ instruction }}\n\n{{ input }}<|end|>\n<|assistant|>\n",
    "completion": "{{ output }}<|end|>",
    "stop": "<|end|>",
}
FAST = {"training.max_steps": 4, "training.save_steps": 2, "training.bf16": False, "data.sources.0.limit": 24,
        "evaluation.max_new_tokens": 4, "data.template": TEMPLATE, "model.added_special_tokens": MARKERS}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    reset_accelerate()


def _cli(*args):
    from tunespec.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _errors(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]


def _base_rows(model_dir: Path):
    """The tiny model's input embedding and LM head weights, as saved."""
    from safetensors.torch import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    emb = weights["model.embed_tokens.weight"]
    return emb, weights.get("lm_head.weight", emb)


# --------------------------------------------------------------------------- the spec


BASE_SPEC = """\
name: vocab
model:
  hub: org/model
  {line}
data:
  format: alpaca
  sources:
    - path: rows.jsonl
"""

BAD = {
    "empty": ('added_tokens: ["<|a|>", ""]', "4:27: model.added_tokens.1: is an empty token"),
    "twice-in-one-list": ('added_tokens: ["<|a|>", "<|b|>", "<|a|>"]', "4:36: model.added_tokens.2: `<|a|>` is listed twice (also at model.added_tokens.0)"),
    "twice-across-lists": ('added_tokens: ["<|a|>"]\n  added_special_tokens: ["<|a|>"]',
                           "5:26: model.added_special_tokens.0: `<|a|>` is listed twice (also at model.added_tokens.0)"),
    "not-a-list": ('added_special_tokens: "<|a|>"', "4:3: model.added_special_tokens: expected a list"),
    "not-text": ("added_special_tokens: [5]", "4:26: model.added_special_tokens.0: expected text, got 5"),
    "unknown-key": ("added_token: [x]", "4:3: model.added_token: "),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_added_tokens_are_located_errors(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line, expected = BAD[case]
    (tmp_path / "spec.yaml").write_text(BASE_SPEC.format(line=line), encoding="utf-8")
    r = _cli("validate", "spec.yaml")
    lines = _errors(r)
    assert r.exit_code == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: spec.yaml:" + expected), lines[0]
    assert " — " in lines[0] and "Traceback" not in r.output + r.stderr


def test_good_added_tokens_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(BASE_SPEC.format(
        line='added_tokens: ["<code>", " indent"]\n  added_special_tokens: ["<|user|>", "<|end|>"]'), encoding="utf-8")
    r = _cli("validate", "spec.yaml")
    assert r.exit_code == 0, r.stderr


# --------------------------------------------------------------------------- the compile


def test_compile_adds_tokens_records_them_and_tokenizes_each_as_one_id(make_spec, compile, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    spec = make_spec(tmp_path, **FAST, **{"model.added_tokens": ["summary:"]})
    result = compile(spec, tmp_path / "build")
    build = result.path
    base = AutoTokenizer.from_pretrained(tiny_model_dir)
    n = len(base)
    vocab = result.manifest["vocabulary"]
    ids = {a["token"]: a["id"] for a in vocab["added"]}
    assert list(ids) == ["summary:", *MARKERS]  # added_tokens first, then the special ones
    assert sorted(ids.values()) == list(range(n, n + 4)) and all(a["new"] for a in vocab["added"])
    assert [a["special"] for a in vocab["added"]] == [False, True, True, True]
    assert vocab["base_tokens"] == n and vocab["tokens"] == n + 4
    assert vocab["embedding_rows"] == -(-(n + 4) // 64) * 64 and vocab["resized"] is True
    assert any(m.startswith("  vocabulary: 4 token(s) added") for m in result.messages), result.messages
    lock = (build / "lock.yaml").read_text(encoding="utf-8")
    assert "vocabulary:" in lock and "embedding_rows: %d" % vocab["embedding_rows"] in lock

    # the build's tokenizer is the extended one: every token is one id, also inside text
    tok = AutoTokenizer.from_pretrained(build / "tokenizer")
    for token, token_id in ids.items():
        assert tok(token, add_special_tokens=False)["input_ids"] == [token_id]
    assert tok.decode([ids["<|assistant|>"], ids["summary:"]], skip_special_tokens=True) == "summary:"

    # every row: <|user|> once, untrained, first after BOS; <|assistant|> untrained right before the completion;
    # the completion's <|end|> trained, then EOS
    all_ids = np.load(build / "tokens" / "train.ids.npy")
    trained = np.load(build / "tokens" / "train.trained.npy").astype(bool)
    offsets = np.load(build / "tokens" / "train.offsets.npy")
    assert len(offsets) > 5
    for a, b in zip(offsets[:-1], offsets[1:]):
        row, mask = all_ids[a:b].tolist(), trained[a:b].tolist()
        assert row[1] == ids["<|user|>"] and row.count(ids["<|user|>"]) == 1 and not mask[1]
        start = mask.index(True)
        assert row[start - 2 : start] == [ids["<|assistant|>"], tok("\n", add_special_tokens=False)["input_ids"][0]]
        assert not mask[start - 2]
        assert row[-2:] == [ids["<|end|>"], tok.eos_token_id] and mask[-2] and mask[-1]
        assert row.count(ids["<|end|>"]) == 2  # the prompt's (untrained) and the completion's (trained)
    rows = [json.loads(line) for line in (build / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0]["prompt"].startswith("<|user|>\n") and rows[0]["completion"].endswith("<|end|>")

    # the extension is deterministic: a rerun from the lock reproduces every file, the tokenizer's included
    r = _cli("rerun", build / "lock.yaml", "-o", tmp_path / "again")
    assert r.exit_code == 0 and "reproduced:" in r.output + r.stderr, r.output + r.stderr


def test_token_already_in_the_vocabulary_is_a_located_warning(make_spec, compile, tmp_path):
    from tunespec.build_reader import Build

    spec = make_spec(tmp_path, **{"model.added_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    result = compile(spec, tmp_path / "build")
    vocab = result.manifest["vocabulary"]
    assert vocab["added"] == [] and vocab["resized"] is False and vocab["tokens"] == vocab["base_tokens"]
    assert [u["token"] for u in vocab["unchanged"]] == ["<|im_start|>", "<|im_end|>"]
    warnings = [m for m in result.messages if m.startswith("  warning: ")]
    assert len(warnings) == 2, result.messages
    assert f"{spec}:" in warnings[0] and "model.added_special_tokens.0: `<|im_start|>` is already one token" in warnings[0]
    assert "nothing to add — " in warnings[0]
    assert Build(result.path).vocabulary is None  # the runtime has nothing to do


def _compile_cli(spec: Path, out: Path):
    return _cli("compile", spec, "-o", out)


def test_template_marker_missing_from_the_vocabulary_fails_the_compile(make_spec, tmp_path):
    # a template file: the error names the file and the line that writes the marker
    tpl = tmp_path / "roles.jinja"
    tpl.write_text("{% block prompt %}\n<|user|>\n{{ instruction }}\n{{ input }}\n<|assistant|>\n{% endblock %}\n"
                   "{% block completion %}{{ output }}<|im_end|>{% endblock %}\n", encoding="utf-8")
    spec = make_spec(tmp_path / "file", **{"data.template": {"file": str(tpl)}})
    r = _compile_cli(spec, tmp_path / "out1")
    errors = _errors(r)
    assert r.exit_code == 2 and len(errors) == 2, r.stderr
    assert "roles.jinja:2: data.template: the marker `<|user|>` is not one token of this model's vocabulary" in errors[0]
    assert "roles.jinja:5: data.template: the marker `<|assistant|>`" in errors[1]
    assert all(e.endswith("— add it under model.added_special_tokens, or use the model's own chat template "
                          "(template: tokenizer)") for e in errors), errors
    assert not (tmp_path / "out1").exists() and "Traceback" not in r.output + r.stderr
    # adding one of them leaves the other
    spec = make_spec(tmp_path / "file2", **{"data.template": {"file": str(tpl)},
                                            "model.added_special_tokens": ["<|user|>"]})
    r = _compile_cli(spec, tmp_path / "out2")
    assert r.exit_code == 2 and len(_errors(r)) == 1 and "`<|assistant|>`" in r.stderr, r.stderr
    spec = make_spec(tmp_path / "file3", **{"data.template": {"file": str(tpl)},
                                            "model.added_special_tokens": ["<|user|>", "<|assistant|>"]})
    assert _compile_cli(spec, tmp_path / "out3").exit_code == 0

    # an inline template: located at the spec field that writes it (the stop marker too)
    spec = make_spec(tmp_path / "inline", **{"data.template": TEMPLATE})
    r = _compile_cli(spec, tmp_path / "out4")
    errors = _errors(r)
    assert r.exit_code == 2 and len(errors) == 3, r.stderr
    assert all(e.startswith(f"error: {spec}:") for e in errors), errors
    assert ": data.template.prompt: the marker `<|user|>`" in errors[0] and "the inline template writes it" in errors[0]
    assert "`<|end|>`" in errors[1] and "`<|assistant|>`" in errors[2]
    # a stop marker shaped like a tag must be one token too (generation stops at it)
    eot = {"prompt": "Q: {{ instruction }} {{ input }}\nA: ", "completion": "{{ output }}<eot>", "stop": "<eot>"}
    spec = make_spec(tmp_path / "tag", **{"data.template": eot})
    r = _compile_cli(spec, tmp_path / "out6")
    errors = _errors(r)
    assert r.exit_code == 2 and len(errors) == 1 and ": data.template.stop: the marker `<eot>`" in errors[0], r.stderr
    spec = make_spec(tmp_path / "tag2", **{"data.template": eot, "model.added_special_tokens": ["<eot>"]})
    assert _compile_cli(spec, tmp_path / "out7").exit_code == 0
    # the library's chatml on this model: fine (its markers are special tokens of the tiny tokenizer)
    spec = make_spec(tmp_path / "chatml", **{"data.template": "chatml"})
    assert _compile_cli(spec, tmp_path / "out5").exit_code == 0


def test_the_models_chat_template_markers_are_checked(tmp_path, tiny_model_dir, make_spec, compile):
    """template: tokenizer renders the model's own chat template; its markers must be tokens too."""
    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok.save_pretrained(model)
    spec = helpers.write_spec(tmp_path / "a" / "spec.yaml", model, {"data.template": "tokenizer"})
    r = _compile_cli(spec, tmp_path / "out")
    errors = _errors(r)
    assert r.exit_code == 2, r.stderr
    assert {e.split("`")[1] for e in errors} == {"<|system|>", "<|user|>", "<|end|>", "<|assistant|>"}, errors
    assert all("data.template: the marker" in e and "the model's chat template writes it" in e
               and e.endswith("— add it under model.added_special_tokens") for e in errors), errors
    spec = helpers.write_spec(tmp_path / "b" / "spec.yaml", model, {
        "data.template": "tokenizer", "model.added_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]})
    result = compile(spec, tmp_path / "build")
    ids = {a["token"]: a["id"] for a in result.manifest["vocabulary"]["added"]}
    first = np.load(result.path / "tokens" / "train.ids.npy")[: int(np.load(result.path / "tokens" / "train.offsets.npy")[1])]
    assert first[1] == ids["<|user|>"] and ids["<|assistant|>"] in first.tolist()


def test_a_method_that_cannot_train_the_rows_is_refused(make_spec, tmp_path):
    spec = make_spec(tmp_path, **{**FAST, "adapter": {"method": "prompt_tuning", "num_virtual_tokens": 4}})
    r = _compile_cli(spec, tmp_path / "out")
    errors = _errors(r)
    assert r.exit_code == 2 and len(errors) == 1, r.stderr
    assert errors[0].startswith(f"error: {spec}:")
    assert ": adapter.method: prompt_tuning cannot train the embedding rows of the added tokens (`<|user|>`" in errors[0]
    # tokens that are already in the vocabulary add no rows: nothing to refuse
    spec = make_spec(tmp_path / "ok", **{"adapter": {"method": "prompt_tuning", "num_virtual_tokens": 4},
                                         "model.added_special_tokens": ["<|im_start|>"]})
    assert _compile_cli(spec, tmp_path / "out2").exit_code == 0


def test_validate_deep_checks_markers_against_the_extended_vocabulary(make_spec, tmp_path):
    spec = make_spec(tmp_path / "no", **{"data.template": TEMPLATE})
    r = _cli("validate", "--deep", spec)
    assert r.exit_code == 2 and "the marker `<|user|>` is not one token" in r.stderr
    assert "add it under model.added_special_tokens" in r.stderr
    spec = make_spec(tmp_path / "yes", **{"data.template": TEMPLATE, "model.added_special_tokens": MARKERS})
    r = _cli("validate", "--deep", spec)
    assert r.exit_code == 0, r.stderr
    spec = make_spec(tmp_path / "ia3", **{"data.template": TEMPLATE, "model.added_special_tokens": MARKERS,
                                          "adapter": {"method": "ia3"}})
    r = _cli("validate", "--deep", spec)
    assert r.exit_code == 2 and "adapter.method: ia3 cannot train the embedding rows" in r.stderr, r.stderr


# --------------------------------------------------------------------------- the runtime


def _mean_row(weight):
    return weight.float().mean(dim=0)


def test_lora_trains_the_new_rows_resumes_merges_and_reloads(build_from, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunespec.build_reader import Build
    from tunespec.runtime.evaluate import evaluate

    whole = build_from(**FAST)
    vocab = Build(whole).vocabulary
    ids = [a["id"] for a in vocab["added"]]
    rows = vocab["embedding_rows"]
    logs = train_in_process(whole)
    assert any(line.startswith("step 4/4") for line in logs), logs

    # the adapter: LoRA matrices and the added tokens' rows only (no copy of the embedding matrix)
    adapter = load_tensors(whole / "adapter" / "adapter_model.safetensors")
    config = json.loads((whole / "adapter" / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"model.embed_tokens": ids}
    deltas = [k for k in adapter if "trainable_tokens_delta" in k]
    assert len(deltas) == 1 and adapter[deltas[0]].shape == (3, 64), sorted(adapter)[:5]
    assert not any(k.endswith("embed_tokens.weight") or k.endswith("lm_head.weight") for k in adapter)
    assert len(AutoTokenizer.from_pretrained(whole / "adapter")) == vocab["tokens"]

    # the rows started as the mean of the original rows, and training moved them
    base_emb, _ = _base_rows(tiny_model_dir)
    mean = _mean_row(base_emb)
    trained = adapter[deltas[0]].float()
    assert all(float((trained[i] - mean).abs().max()) > 1e-4 for i in range(3)), "a new row was not trained"

    # resume: stop after step 2, continue to 4: the same trainable weights as the uninterrupted run
    resumed = build_from(**FAST)
    with pytest.raises(TrainingStopped):
        train_in_process(resumed, stop_before=3)
    at_2 = load_tensors(resumed / "train" / "checkpoint-2" / "trainable.safetensors")
    assert any("trainable_tokens_delta" in k for k in at_2)
    logs = train_in_process(resumed)
    assert any("resuming from checkpoint-2" in line for line in logs), logs
    a = load_tensors(whole / "train" / "checkpoint-4" / "trainable.safetensors")
    b = load_tensors(resumed / "train" / "checkpoint-4" / "trainable.safetensors")
    assert max_tensor_diff(a, b) < 1e-6 and max_tensor_diff(a, at_2) > 0

    # merge: a resized model with the trained rows; it reloads with the plain transformers classes
    r = _cli("merge", whole)
    assert r.exit_code == 0, r.output + r.stderr
    assert json.loads((whole / "merged" / "tunespec.json").read_text())["max_logit_diff"] < 1e-4
    merged = AutoModelForCausalLM.from_pretrained(whole / "merged", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(whole / "merged")
    assert merged.config.vocab_size == rows and merged.get_input_embeddings().weight.shape[0] == rows
    for token, token_id in zip(MARKERS, ids):
        assert tok(token, add_special_tokens=False)["input_ids"] == [token_id]
    emb = merged.get_input_embeddings().weight.detach()
    assert torch.allclose(emb[ids], trained, atol=1e-6)
    assert torch.allclose(emb[: len(base_emb)], base_emb.float())  # the original rows are untouched (tied head)
    assert torch.allclose(emb[vocab["tokens"]:], mean.expand(rows - vocab["tokens"], -1), atol=1e-6)  # padding rows
    assert merged.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # still tied
    row = torch.tensor([[tok.bos_token_id, ids[0], *tok("Hi", add_special_tokens=False)["input_ids"], ids[2], ids[1]]])
    with torch.no_grad():
        assert merged(row).logits.shape[-1] == rows

    # evaluate (base and tuned): the prompts hold the new ids; both models have the rows
    summary = evaluate(Build(whole), limit=2, log=lambda s: None)
    assert summary["tuned"]["new_tokens"] > 0 and "base" in summary


def test_full_finetune_trains_the_new_rows(build_from, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunespec.build_reader import Build

    build = build_from(**{**FAST, "training.max_steps": 2, "adapter": {"method": "none"}})
    vocab = Build(build).vocabulary
    ids = [a["id"] for a in vocab["added"]]
    train_in_process(build)
    model = AutoModelForCausalLM.from_pretrained(build / "merged", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(build / "merged")
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] == vocab["embedding_rows"] and tok.convert_tokens_to_ids(MARKERS) == ids
    mean = _mean_row(_base_rows(tiny_model_dir)[0])
    assert all(float((emb[i] - mean).abs().max()) > 1e-4 for i in ids)
    # the padding rows are no token's input; as rows of the tied head they all get the same gradient
    padding = emb[vocab["tokens"]:]
    assert len(padding) == vocab["embedding_rows"] - vocab["tokens"] > 0
    assert torch.equal(padding, padding[:1].expand_as(padding))


def _untied_model(src: Path, out: Path, kind: str) -> Path:
    """The tiny tokenizer with an untied LM head: a Llama (no bias) or a Phi (the head has a bias)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PhiConfig, PhiForCausalLM

    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(1)
    if kind == "llama":
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.02)
    else:
        model = PhiForCausalLM(PhiConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
        assert model.lm_head.bias is not None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["llama", "phi"], ids=["untied-head", "untied-head-with-bias"])
def test_untied_lm_head_rows_are_trained(kind, tmp_path, tiny_model_dir, compile):
    import torch
    from transformers import AutoModelForCausalLM

    from tunespec.build_reader import Build

    model_dir = _untied_model(tiny_model_dir, tmp_path / "model", kind)
    spec = helpers.write_spec(tmp_path / "spec.yaml", model_dir, {**FAST, "training.max_steps": 2})
    build = compile(spec, tmp_path / "build").path
    vocab = Build(build).vocabulary
    ids = [a["id"] for a in vocab["added"]]
    train_in_process(build)
    config = json.loads((build / "adapter" / "adapter_config.json").read_text())
    adapter = load_tensors(build / "adapter" / "adapter_model.safetensors")
    if kind == "llama":  # trainable tokens in both (peft's cheap path)
        assert config["trainable_token_indices"] == {"model.embed_tokens": ids, "lm_head": ids}
        assert sum("trainable_tokens_delta" in k for k in adapter) == 2
    else:  # peft's trainable-token layer would drop the head's bias: the head is trained whole
        assert config["trainable_token_indices"] == {"model.embed_tokens": ids}
        assert config["modules_to_save"] == ["lm_head"]
        assert {"base_model.model.lm_head.weight", "base_model.model.lm_head.bias"} <= set(adapter), sorted(adapter)
        assert adapter["base_model.model.lm_head.weight"].shape[0] == vocab["embedding_rows"]
    assert _cli("merge", build).exit_code == 0
    assert json.loads((build / "merged" / "tunespec.json").read_text())["max_logit_diff"] < 1e-4
    merged = AutoModelForCausalLM.from_pretrained(build / "merged", dtype=torch.float32)
    head = merged.get_output_embeddings()
    assert head.weight.shape[0] == vocab["embedding_rows"]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).get_output_embeddings().weight.detach()
    mean = base.mean(dim=0)
    assert all(float((head.weight[i].detach() - mean).abs().max()) > 1e-4 for i in ids), "the head's new rows did not train"
    if kind == "phi":
        assert head.bias.shape[0] == vocab["embedding_rows"]


def test_memory_estimate_counts_the_rows_peft_trains(build_from, tiny_model_dir):
    """The compile's trainable count equals what peft trains on the extended model (tied head: one row each)."""
    from tunespec.build_reader import Build
    from tunespec.runtime.added_token_embeddings import extend_embeddings
    from tunespec.runtime.modeling import load_base_model, prepare_for_training

    # padded batches: every position's logits (padding-free ones scale with each build's trained fraction)
    plain = build_from(**{**{k: v for k, v in FAST.items() if k != "model.added_special_tokens"},
                          "data.template": "instruct_output_end", "training.padding_free": False})
    extended = build_from(**FAST, **{"training.padding_free": False})
    est = {b: json.loads((b / "manifest.json").read_text())["memory_estimate"] for b in (plain, extended)}
    assert est[extended]["trainable_params"] - est[plain]["trainable_params"] == 3 * 64
    per_position = {b: e["logits"] / e["seq_len"] for b, e in est.items()}  # the logits span the resized vocabulary
    vocab = Build(extended).vocabulary
    assert per_position[extended] / per_position[plain] == pytest.approx(vocab["embedding_rows"] / vocab["base_embedding_rows"])
    b = Build(extended)
    model = load_base_model(b.spec, device_map=None)
    extend_embeddings(model, b)
    model = prepare_for_training(model, b.spec, vocabulary=b.vocabulary)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == est[extended]["trainable_params"]


def test_generate_sees_the_added_tokens(build_from):
    """`tunespec generate` renders with the build's template and tokenizer: the markers are single ids."""
    import io

    from tunespec.build_reader import Build
    from tunespec.runtime.generate import run_generate
    from tunespec.runtime.session import make_renderer

    build = build_from(**{**FAST, "training.max_steps": 1})
    train_in_process(build)
    renderer = make_renderer(Build(build))
    ids = [a["id"] for a in Build(build).vocabulary["added"]]
    out = io.StringIO()
    results = run_generate(build, prompt="Say hi", model="adapter", out=out, log=lambda s: None)
    assert len(results) == 1
    rendered = results[0]["prompt"]
    assert rendered.startswith("<|user|>\n") and rendered.endswith("<|assistant|>\n")
    encoded = renderer.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert encoded[0] == ids[0] and encoded[-2] == ids[1]


def test_quantized_base_with_added_tokens_trains_and_merges(build_from):
    """QLoRA: the 4-bit base is resized (the embedding and head stay unquantized) and merges into fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunespec.build_reader import Build

    build = build_from(**{**FAST, "training.max_steps": 2, "quantization.load_in_4bit": True,
                          "quantization.compute_dtype": "float32"})
    logs = train_in_process(build)
    assert any(line.startswith("step 2/2") for line in logs), logs
    r = _cli("merge", build)
    assert r.exit_code == 0, r.output + r.stderr
    vocab = Build(build).vocabulary
    merged = AutoModelForCausalLM.from_pretrained(build / "merged", dtype=torch.float32)
    assert merged.get_input_embeddings().weight.shape[0] == vocab["embedding_rows"]
