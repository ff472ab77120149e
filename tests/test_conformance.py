"""Conformance: a build's tokens equal each model family's own reference encoding, on real data.

For every family the compiled rows (``tokens/train.*.npy``) are held against an implementation tunespec
does not contain:

* Llama-3: Meta's ``ChatFormat`` (``llama-models``) on Meta's ``tokenizer.model``;
* Mistral v1 (7B v0.1) and v3 (control tokens): ``mistral-common``'s ``encode_instruct`` on its own
  SentencePiece files, the model directory using the chat template ``mistral-common`` generates;
* ChatML (SmolLM2-135M-Instruct, packaged): transformers' ``apply_chat_template`` on the tokenizer read
  straight from the GGUF file (not from tunespec's cache), trained spans from rendering the conversation
  turn by turn;
* the seed recipes' field templates: Llama-2-chat's ``[INST]`` (``llama2_inst``) as Meta's
  ``chat_completion`` writes it, encoded in one piece by ``sentencepiece`` itself; phi-2's
  ``Instruct:/Output:`` (``phi2_instruct``) encoded in one piece by the byte-level BPE tokenizer.

For each row: ids equal, trained positions equal (assistant content and its end of turn), and the prompt
generation sees (``Build.prompt_ids`` of the row's eval prompt) equals the reference's generation prompt.
Data: DialogSum dev (single turn, with and without a system prompt) and the glaive rows that are plain
multi-turn chats (no tools), from ``../shared/data``; the tests skip where it is absent.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from compile_fixtures import compile_spec, load_split, shared, smollm2, write_jsonl, write_spec
from families import llama3_dir, mistral_dir, mistral_tokenizer_file, reference_llama3, reference_mistral

SYSTEM = "You write one-sentence summaries of dialogues."
ROWS = 100


@pytest.fixture(autouse=True)
def _cache(tunespec_env):
    yield


# --------------------------------------------------------------------------- real data


@functools.lru_cache(maxsize=None)
def _dialogsum() -> list[dict]:
    lines = shared("dialogsum/dev.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:ROWS]]


@functools.lru_cache(maxsize=None)
def _glaive_chats() -> list[dict]:
    """The glaive rows that are plain chats: no tools, only human/gpt turns, several of them."""
    rows = json.loads(shared("sharegpt/glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    chats = [{"conversations": r["conversations"]} for r in rows
             if r.get("tools") in (None, "", "[]") and {c["from"] for c in r["conversations"]} == {"human", "gpt"}]
    assert len(chats) >= 40, len(chats)
    return chats


def _data(kind: str, root: Path, template, max_length: int) -> dict:
    if kind == "multi-turn":
        path = write_jsonl(root / "chats.jsonl", _glaive_chats())
        return {"format": "sharegpt", "template": template, "sources": [{"path": str(path)}],
                "tokenization": {"max_length": max_length}}
    path = write_jsonl(root / "dialogsum.jsonl", _dialogsum())
    if kind == "system":
        template = {"name": template, "system": SYSTEM} if isinstance(template, str) else {**template, "system": SYSTEM}
    return {"format": "summarization", "template": template, "sources": [{"path": str(path)}],
            "tokenization": {"max_length": max_length}}


def _compiled(root: Path, model: dict, kind: str, template="tokenizer", max_length: int = 16384):
    """Compile `kind` rows for `model`; the families' tiny configs allow 32768 positions (Mistral v1's
    SentencePiece needs ~12k tokens for the longest glaive chat, which is code)."""
    from tunespec.build_reader import Build

    spec = write_spec(root, data=_data(kind, root, template, max_length), model=model)
    build = compile_spec(spec, root / "build").path
    manifest, rows, toks = load_split(build, "train")
    b = Build(build)
    tok = b.load_tokenizer()
    prompts = b.prompt_ids(tok, [r.get("eval_prompt", r.get("prompt")) for r in rows])
    expected = len(_glaive_chats()) if kind == "multi-turn" else ROWS
    dropped = manifest.get("dropped", {}).get("split:train", {})
    assert set(dropped) <= {f"longer than max_length {max_length}"}, dropped  # only rows the context cannot hold
    assert len(rows) + sum(dropped.values()) == expected and len(rows) >= expected - 1, (len(rows), dropped)
    return rows, toks, prompts


def _first_difference(a: list[int], b: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first difference at {i}: {a[max(0, i - 3):i + 3]} vs {b[max(0, i - 3):i + 3]} (lengths {len(a)}, {len(b)})"


def _compare(rows, toks, prompts, reference, kind: str) -> int:
    """Every row against the reference; returns the number of rows compared."""
    for row, (ids, trained), prompt in zip(rows, toks, prompts):
        messages = row["messages"]
        if kind == "system":
            assert messages[0] == {"role": "system", "content": SYSTEM}, messages[0]
        ref_ids, ref_trained, ref_prompt = reference(messages)
        where = f"row {row['id']}"
        assert ids == ref_ids, f"{where}: ids differ, {_first_difference(ids, ref_ids)}"
        assert trained == ref_trained, f"{where}: trained positions differ, {_first_difference(trained, ref_trained)}"
        assert prompt == ref_prompt, f"{where}: generation prompt differs, {_first_difference(prompt, ref_prompt)}"
    return len(rows)


KINDS = ["single-turn", "system", "multi-turn"]


# --------------------------------------------------------------------------- Llama-3 and Mistral


@pytest.mark.parametrize("kind", KINDS)
def test_llama3_equals_meta_chat_format(kind, tmp_path):
    rows, toks, prompts = _compiled(tmp_path, {"path": str(llama3_dir())}, kind)
    assert all(ids[:2].count(128000) == 1 for ids, _ in toks)  # one <|begin_of_text|>
    assert _compare(rows, toks, prompts, reference_llama3, kind) == len(rows)


@pytest.mark.parametrize("version", ["v1", "v3"])
@pytest.mark.parametrize("kind", KINDS)
def test_mistral_equals_mistral_common_encode_instruct(version, kind, tmp_path):
    rows, toks, prompts = _compiled(tmp_path, {"path": str(mistral_dir(version))}, kind)
    assert all(ids[0] == 1 and ids[1] != 1 for ids, _ in toks)  # one <s>
    reference = functools.partial(reference_mistral, version)
    assert _compare(rows, toks, prompts, reference, kind) == len(rows)


# --------------------------------------------------------------------------- ChatML (SmolLM2)


@functools.lru_cache(maxsize=None)
def _smollm2_reference_tokenizer():
    """SmolLM2's tokenizer as transformers reads it from the packaged GGUF file itself."""
    from transformers import AutoTokenizer

    from tunespec.model_resolver import packaged_gguf

    gguf = packaged_gguf(smollm2()["packaged"])
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _apply(tok, messages, **kwargs) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def reference_chat_template(messages: list[dict]):
    """apply_chat_template's ids; trained = each assistant turn's tokens after the generation prompt up
    to and including its end of turn (``<|im_end|>``, the tokenizer's EOS), found by rendering turn by turn."""
    tok = _smollm2_reference_tokenizer()
    ids = _apply(tok, messages)
    trained = [0] * len(ids)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_apply(tok, messages[:k], add_generation_prompt=True))
        end = _apply(tok, messages[:k + 1])
        assert ids[:len(end)] == end  # turn by turn renders a prefix of the whole
        stop = max(i for i in range(start, len(end)) if end[i] == tok.eos_token_id) + 1
        trained[start:stop] = [1] * (stop - start)
    return ids, trained, _apply(tok, messages[:-1], add_generation_prompt=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_chatml_equals_apply_chat_template(kind, tmp_path):
    rows, toks, prompts = _compiled(tmp_path, smollm2(), kind, max_length=8192)
    assert _compare(rows, toks, prompts, reference_chat_template, kind) == len(rows)


# --------------------------------------------------------------------------- the seed recipes' field templates


def _user_text(row: dict, system: str | None) -> str:
    """The user turn of a summarization row as the summarization format defines it."""
    text = "Summarize the following conversation.\n\n" + row["dialogue"]
    return f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}" if system else text


def _trained_after(ids: list[int], n_prompt: int) -> list[int]:
    return [0] * n_prompt + [1] * (len(ids) - n_prompt)


@pytest.mark.parametrize("kind", ["single-turn", "system"])
def test_llama2_inst_equals_metas_chat_completion(kind, tmp_path):
    """Meta's llama ``chat_completion``: ``encode(f"[INST] {user} [/INST] {answer} ", bos=True, eos=True)``,
    the system prompt as ``<<SYS>>\\n…\\n<</SYS>>\\n\\n`` at the start of the user turn, on a real Llama-2-style
    SentencePiece tokenizer (Mistral 7B v0.1's, same scheme: BOS ``<s>``, EOS ``</s>``, dummy prefix), encoded
    by ``sentencepiece`` itself. Trained: what follows ``[/INST]`` (the answer and ``</s>``)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(mistral_tokenizer_file("v1")))
    template = {"name": "llama2_inst", "system": SYSTEM} if kind == "system" else "llama2_inst"
    path = write_jsonl(tmp_path / "dialogsum.jsonl", _dialogsum())
    spec = write_spec(tmp_path, model={"path": str(mistral_dir("v1"))},
                      data={"format": "summarization", "template": template, "sources": [{"path": str(path)}],
                            "tokenization": {"max_length": 16384}})
    from tunespec.build_reader import Build

    build = compile_spec(spec, tmp_path / "build").path
    _, rows, toks = load_split(build, "train")
    b = Build(build)
    prompts = b.prompt_ids(b.load_tokenizer(), [r["prompt"] for r in rows])
    raw = {str(r["fname"]): r for r in _dialogsum()}
    for row, (ids, trained), prompt in zip(rows, toks, prompts):
        source = raw[row["id"].rsplit(":", 1)[-1]] if row["id"].rsplit(":", 1)[-1] in raw else None
        assert source is not None, row["id"]
        user = _user_text(source, SYSTEM if kind == "system" else None).strip()
        head = [sp.bos_id()] + sp.encode(f"[INST] {user} [/INST]")
        ref = [sp.bos_id()] + sp.encode(f"[INST] {user} [/INST] {source['summary'].strip()} ") + [sp.eos_id()]
        assert ref[:len(head)] == head
        assert ids == ref, f"row {row['id']}: {_first_difference(ids, ref)}"
        assert trained == _trained_after(ref, len(head)), row["id"]
        assert prompt == head, f"row {row['id']}: {_first_difference(prompt, head)}"
    assert len(rows) == ROWS


@pytest.mark.slow
def test_phi2_instruct_equals_the_model_cards_format(tmp_path):
    """phi-2's model card: ``Instruct: <prompt>\\nOutput:`` and the answer after a space, on real Alpaca rows
    (with and without an input), encoded in one piece by a byte-level BPE tokenizer without BOS (SmolLM2's,
    read from its GGUF by transformers) and ended by its EOS. Trained: the answer and the EOS."""
    rows_in = json.loads(shared("alpaca/alpaca_en_demo.json").read_text(encoding="utf-8"))[:ROWS]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows_in, ensure_ascii=False), encoding="utf-8")
    spec = write_spec(tmp_path, model=smollm2(), data={"format": "alpaca", "template": "phi2_instruct",
                                                        "sources": [{"path": str(path)}]})
    from tunespec.build_reader import Build

    build = compile_spec(spec, tmp_path / "build").path
    _, rows, toks = load_split(build, "train")
    b = Build(build)
    prompts = b.prompt_ids(b.load_tokenizer(), [r["prompt"] for r in rows])
    tok = _smollm2_reference_tokenizer()
    assert len(rows) == ROWS
    with_input = 0
    for row, (ids, trained), prompt, source in zip(rows, toks, prompts, rows_in):
        question = source["instruction"] + (f"\n{source['input']}" if source["input"] else "")
        with_input += bool(source["input"])
        head = tok(f"Instruct: {question}\nOutput:", add_special_tokens=False)["input_ids"]
        ref = tok(f"Instruct: {question}\nOutput: {source['output']}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ref[:len(head)] == head
        assert ids == ref, f"row {row['id']}: {_first_difference(ids, ref)}"
        assert trained == _trained_after(ref, len(head)), row["id"]
        assert prompt == head, f"row {row['id']}: {_first_difference(prompt, head)}"
    assert 0 < with_input < ROWS


# --------------------------------------------------------------------------- train and generate, one BOS


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama3", "mistral-v3"])
def test_train_two_steps_and_generate_with_one_bos(family, tmp_path, monkeypatch):
    """A Llama-3 and a Mistral build (tokenizer chat template that writes its own BOS) train 2 LoRA steps and
    generate; the ids the model is given start with exactly one BOS and equal the family's own generation
    prompt (Meta's ``encode_dialog_prompt``, mistral-common's ``encode_instruct``)."""
    import torch
    from click.testing import CliRunner
    from transformers.generation.utils import GenerationMixin

    from tunespec.cli import main

    model_dir = llama3_dir() if family == "llama3" else mistral_dir("v3")
    bos = 128000 if family == "llama3" else 1
    reference = reference_llama3 if family == "llama3" else functools.partial(reference_mistral, "v3")
    path = write_jsonl(tmp_path / "dialogsum.jsonl", _dialogsum()[:24])
    spec = write_spec(tmp_path, model={"path": str(model_dir)},
                      data={"format": "summarization", "template": "tokenizer", "sources": [{"path": str(path)}],
                            "tokenization": {"max_length": 1024}},
                      adapter={"method": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"},
                      training={"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                                "bf16": False, "save_steps": 2})
    build = tmp_path / "build"
    runner = CliRunner()
    r = runner.invoke(main, ["compile", str(spec), "-o", str(build)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["train", str(build)])
    assert r.exit_code == 0, r.output
    steps = [json.loads(line) for line in (build / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in steps if "loss" in m]
    assert losses and all(torch.isfinite(torch.tensor(losses))), steps

    seen: list[list[int]] = []
    original = GenerationMixin.generate

    def recording(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        for row, m in zip(ids.tolist(), mask.tolist() if mask is not None else [[1] * ids.shape[1]] * ids.shape[0]):
            seen.append([t for t, keep in zip(row, m) if keep])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", recording)
    dialogue = _dialogsum()[30]["dialogue"]
    r = runner.invoke(main, ["generate", str(build), "--model", "adapter", "--json", "--prompt", dialogue])
    assert r.exit_code == 0, r.output
    assert len(seen) == 1 and seen[0][:2].count(bos) == 1 and seen[0][0] == bos, seen[0][:4]
    user = json.loads(r.stdout.splitlines()[-1])
    assert dialogue in user["prompt"]
    _, _, expected = reference([{"role": "user", "content": "Summarize the following conversation.\n\n" + dialogue},
                                {"role": "assistant", "content": "x"}])  # (not part of the prompt)
    assert seen[0] == expected, _first_difference(seen[0], expected)
