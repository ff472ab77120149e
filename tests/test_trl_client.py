"""TRL as a real client of a build: ``data/train.jsonl`` read by ``datasets.load_dataset("json")`` and
prepared by TRL's own ``SFTTrainer`` with ``BUILD/tokenizer`` gives the build's token ids on every row, and
the build's trained positions wherever TRL can know them:

* prompt/completion rows (field templates): TRL's ``completion_only_loss`` (its default) trains what follows
  the prompt, plus the EOS it appends: equal to the build's trained positions;
* conversational rows under a chat template without ``{% generation %}`` blocks: ids equal (TRL then trains
  every token, so there is nothing to compare);
* conversational rows under a chat template whose ``{% generation %}`` blocks hold each assistant turn and
  its end of turn: ``assistant_only_loss=True`` trains the build's positions; tool rows too (``tools`` as a
  list, assistant ``tool_calls`` with ``function.arguments`` objects, ``tool`` turns), with a Hermes-style
  tool template.

Nothing here is tunespec code: the ids and masks are TRL's. Real tokenizers: SmolLM2 (packaged GGUF),
Meta's Llama-3 ``tokenizer.model`` and Mistral's SentencePiece files (``tests/families.py``); real rows from
``../shared/data`` (skipped where absent).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from compile_fixtures import (
    build_tokenizer,
    compile_spec,
    load_split,
    shared,
    smollm2,
    smollm2_with_chat_template,
    write_jsonl,
    write_spec,
)
from families import LLAMA3_CHAT_TEMPLATE, llama3_dir, mistral_dir

pytest.importorskip("trl", reason="the TRL client test needs trl (pip install '.[test]')")
pytest.importorskip("datasets", reason="the TRL client test reads the JSONL with datasets")

ROWS = 100

LLAMA3_BLOCKS = LLAMA3_CHAT_TEMPLATE.replace(
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}",
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|eot_id|>' }}{% endif %}")

# ChatML with tools the way Hermes/Qwen-style templates write them, each assistant turn in a generation block
CHATML_TOOLS_BLOCKS = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}"
    "{%- elif m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ m['content'] }}"
    "{%- for c in m['tool_calls'] or [] %}<tool_call>\n"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}\n</tool_call>{% endfor %}"
    "<|im_end|>{% endgeneration %}\n"
    "{%- elif m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _cache(tunespec_env):
    yield


def _dialogsum(root: Path) -> Path:
    lines = shared("dialogsum/dev.jsonl").read_text(encoding="utf-8").splitlines()[:ROWS]
    return write_jsonl(root / "dialogsum.jsonl", [json.loads(x) for x in lines])


def _alpaca(root: Path) -> Path:
    rows = json.loads(shared("alpaca/alpaca_en_demo.json").read_text(encoding="utf-8"))[:ROWS]
    return write_jsonl(root / "alpaca.jsonl", rows)


def _glaive(root: Path, *, tools: bool) -> Path:
    rows = json.loads(shared("sharegpt/glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    has_tools = [r for r in rows if r.get("tools") not in (None, "", "[]")]
    chats = [r for r in rows if r.get("tools") in (None, "", "[]")]
    return write_jsonl(root / "glaive.jsonl", (has_tools if tools else chats)[:ROWS])


def _with_chat_template(model_dir: Path, root: Path, chat_template: str) -> dict:
    """A copy of a family's model directory whose tokenizer carries `chat_template`."""
    out = root / "model"
    shutil.copytree(model_dir, out)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (out / "chat_template.jinja").unlink(missing_ok=True)
    assert build_tokenizer(str(out)).chat_template == chat_template
    return {"path": str(out)}


def _build(root: Path, model: dict, fmt: str, template, path: Path, max_length: int = 8192) -> Path:
    data = {"format": fmt, "template": template, "sources": [{"path": str(path)}],
            "tokenization": {"max_length": max_length}}
    return compile_spec(write_spec(root, data=data, model=model), root / "build").path


def trl_prepared(build: Path, **config) -> list[tuple[list[int], list[int]]]:
    """TRL's SFTTrainer data preparation of BUILD/data/train.jsonl with BUILD/tokenizer: (input_ids, trained)
    per row, trained = TRL's labels that are not -100."""
    from datasets import load_dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(build / "tokenizer"))
    dataset = load_dataset("json", data_files=str(build / "data" / "train.jsonl"), split="train",
                           cache_dir=str(build.parent / "hf-datasets"))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    args = SFTConfig(output_dir=str(build.parent / "trl"), max_length=None, report_to=[], use_cpu=True, **config)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)
    return [(list(r["input_ids"]), [int(label != -100) for label in r["labels"]]) for r in trainer.train_dataset]


def _equal_rows(build: Path, *, trained: bool, **config) -> int:
    """Asserts TRL's ids (and, with `trained`, trained positions) equal the build's on every row; returns
    the number of rows compared."""
    _, rows, toks = load_split(build, "train")
    theirs = trl_prepared(build, **config)
    assert len(theirs) == len(toks)
    for row, (ids, mask), (trl_ids, trl_mask) in zip(rows, toks, theirs):
        k = next((i for i, (a, b) in enumerate(zip(ids, trl_ids)) if a != b), min(len(ids), len(trl_ids)))
        assert ids == trl_ids, f"row {row['id']}: ids differ at {k}: {ids[k - 3:k + 3]} vs {trl_ids[k - 3:k + 3]}"
        if trained:
            diff = [i for i, (a, b) in enumerate(zip(mask, trl_mask)) if a != b]
            assert mask == trl_mask, f"row {row['id']}: trained positions differ at {diff[:8]}"
        else:
            assert all(trl_mask)  # TRL trains every token of a conversation without generation blocks
    return len(toks)


# --------------------------------------------------------------------------- prompt/completion rows


@pytest.mark.parametrize("family,template,data", [
    ("smollm2", "phi2_instruct", "alpaca"),
    ("smollm2", "instruct_output_end", "dialogsum"),
    ("llama3", "alpaca", "alpaca"),           # a BOS post-processor: TRL's tokenizer call adds it, as the build does
    ("mistral-v1", "llama2_inst", "dialogsum"),  # SentencePiece with a dummy prefix
])
def test_prompt_completion_rows_equal_trl_completion_only_loss(family, template, data, tmp_path):
    model = {"smollm2": smollm2, "llama3": lambda: {"path": str(llama3_dir())},
             "mistral-v1": lambda: {"path": str(mistral_dir("v1"))}}[family]()
    path = (_alpaca if data == "alpaca" else _dialogsum)(tmp_path)
    build = _build(tmp_path, model, "alpaca" if data == "alpaca" else "summarization", template, path)
    first = json.loads((build / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert {"prompt", "completion"} <= set(first) and "messages" not in first
    assert _equal_rows(build, trained=True) == ROWS


# --------------------------------------------------------------------------- conversational rows


@pytest.mark.parametrize("family", ["llama3", "mistral-v3"])
@pytest.mark.parametrize("data", ["dialogsum", "chats"])
def test_messages_rows_under_the_models_chat_template_equal_trl_ids(family, data, tmp_path):
    model = {"path": str(llama3_dir() if family == "llama3" else mistral_dir("v3"))}
    path = _dialogsum(tmp_path) if data == "dialogsum" else _glaive(tmp_path, tools=False)
    build = _build(tmp_path, model, "summarization" if data == "dialogsum" else "sharegpt", "tokenizer", path,
                   max_length=16384)
    first = json.loads((build / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert "messages" in first
    assert _equal_rows(build, trained=False) >= ROWS - 1


@pytest.mark.parametrize("family", ["llama3", "chatml"])
def test_generation_blocks_train_what_trl_assistant_only_loss_trains(family, tmp_path):
    if family == "llama3":
        model = _with_chat_template(llama3_dir(), tmp_path, LLAMA3_BLOCKS)
    else:
        from test_generation_blocks import EOS_INSIDE

        model = smollm2_with_chat_template(tmp_path / "m", EOS_INSIDE)
    build = _build(tmp_path, model, "sharegpt", "tokenizer", _glaive(tmp_path, tools=False))
    assert _equal_rows(build, trained=True, assistant_only_loss=True) >= ROWS - 1


def test_tool_rows_equal_trl_with_a_tool_template(tmp_path):
    """glaive rows with tools, a Hermes-style ChatML tool template: the JSONL carries `tools` as a list and
    `tool_calls` with argument objects, and TRL renders them into the build's very tokens."""
    model = smollm2_with_chat_template(tmp_path / "m", CHATML_TOOLS_BLOCKS)
    build = _build(tmp_path, model, "sharegpt", "tokenizer", _glaive(tmp_path, tools=True))
    rows = [json.loads(x) for x in (build / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(isinstance(r["tools"], list) and r["tools"] for r in rows)
    calls = [c for r in rows for m in r["messages"] for c in m.get("tool_calls") or []]
    assert calls and all(isinstance(c["function"]["arguments"], dict) for c in calls)
    assert any(m["role"] == "tool" for r in rows for m in r["messages"])
    assert _equal_rows(build, trained=True, assistant_only_loss=True) >= ROWS - 1


def test_tool_rows_under_a_template_without_tool_support_equal_trl_ids(tmp_path):
    """SmolLM2's own chat template renders neither `tools` nor `tool_calls`: the definitions go to the system
    turn and each call is an assistant turn with the call's JSON text, in the tokens and in the JSONL alike
    (so TRL renders the same ids); the manifest counts both."""
    build = _build(tmp_path, smollm2(), "sharegpt", "tokenizer", _glaive(tmp_path, tools=True))
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (build / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert manifest["tools"]["template_ignores_tools"] == len(rows) and not any("tools" in r for r in rows)
    with_calls = sum('"arguments"' in m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant")
    assert with_calls and manifest["tool_calls"] == {"tool_calls_as_text": sum(
        any('"arguments"' in m["content"] for m in r["messages"] if m["role"] == "assistant") for r in rows)}
    assert not any("tool_calls" in m for r in rows for m in r["messages"])
    assert _equal_rows(build, trained=False) == len(rows) >= ROWS - 1
