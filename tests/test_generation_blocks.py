"""TRL's `{% generation %}` blocks mark the trained spans, exactly as transformers marks them.

Oracle: transformers' own ``apply_chat_template(..., tokenize=True, return_dict=True,
return_assistant_tokens_mask=True)`` on the same chat template and the same conversations, which the test
builds from the source rows itself (DialogSum: the generic summarization user turn; glaive: ShareGPT roles,
``function_call`` as an assistant turn holding the call's JSON, ``observation`` as a ``tool`` turn).
Tokenizer: the real SmolLM2 one (EOS is ``<|im_end|>``, no BOS).

tunespec's EOS policy, stated in the README: the trained positions are the assistant mask, plus (with
``add_eos``, the default) the EOS token the template writes right after a block; a block followed by no EOS
gets one appended. With ``add_eos: false``: exactly the mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compile_fixtures import (
    build_tokenizer,
    compile_spec,
    load_split,
    shared,
    smollm2_with_chat_template,
    write_jsonl,
    write_spec,
)

from tunespec.errors import TemplateError

# EOS (<|im_end|>) inside the block, as TRL's training templates write it
EOS_INSIDE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# EOS after the block, and an untrained lead-in inside the assistant turn: only the content is masked
EOS_AFTER = EOS_INSIDE.replace("{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}",
                               "Answer:\n{% generation %}{{ m['content'] }}{% endgeneration %}<|im_end|>")

SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool",
                  "system": "system"}


def _dialogsum_conversations() -> tuple[Path, list[list[dict]]]:
    path = shared("dialogsum/dev.jsonl")
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    return path, [[{"role": "user", "content": "Summarize the following conversation.\n\n" + r["dialogue"]},
                   {"role": "assistant", "content": r["summary"]}] for r in rows]


def _glaive_conversations() -> tuple[Path, list[list[dict]]]:
    path = shared("sharegpt/glaive_toolcall_en_demo.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    return path, [[{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in r["conversations"]]
                  for r in rows]


def _compile(root: Path, path: Path, fmt: str, template, model=None, **tokenization):
    data = {"format": fmt, "sources": [{"path": str(path)}], "template": template, "tools": "drop",
            "tokenization": {"max_length": 8192, **tokenization}}
    spec = write_spec(root, data=data, **({"model": model} if model else {}))
    return compile_spec(spec, root / "build")


def _compare(build: Path, conversations: list[list[dict]], chat_template: str, *, eos_after: bool) -> int:
    """Rows whose ids equal the oracle's and whose trained positions equal its assistant mask (plus, with
    `eos_after`, the EOS right after each masked span); asserts every row does."""
    tok = build_tokenizer(str(build / "tokenizer"))
    eos = tok.eos_token_id
    _, rows, toks = load_split(build, "train")
    equal = 0
    for row, (ids, trained) in zip(rows, toks):
        messages = conversations[int(row["source"].rsplit("#", 1)[1])]
        oracle = tok.apply_chat_template(messages, chat_template=chat_template, tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=True)
        mask = list(oracle["assistant_masks"])
        if eos_after:
            mask = [1 if m or (i and mask[i - 1] and t == eos) else 0
                    for i, (m, t) in enumerate(zip(mask, oracle["input_ids"]))]
        assert list(oracle["input_ids"]) == ids, row["id"]
        assert mask == trained, (row["id"], [i for i, (a, b) in enumerate(zip(mask, trained)) if a != b][:10])
        equal += 1
    return equal


def test_dialogsum_template_file_with_generation_blocks_equals_the_assistant_mask(tmp_path):
    path, conversations = _dialogsum_conversations()
    template = tmp_path / "trl.jinja"
    template.write_text(EOS_INSIDE, encoding="utf-8")
    model = smollm2_with_chat_template(tmp_path / "m", "{{ raise_exception('the file template is used') }}")
    result = _compile(tmp_path, path, "summarization", {"file": str(template)}, model)
    assert result.manifest["template"]["kind"] == "tokenizer"
    assert _compare(result.path, conversations, EOS_INSIDE, eos_after=False) == 500


def test_glaive_tokenizer_template_eos_after_the_block_is_trained_too(tmp_path):
    """Multi-turn conversations with tool calls and results, the model's own chat template with blocks that
    stop before <|im_end|>: the mask, plus each block's following EOS (tunespec's EOS policy)."""
    path, conversations = _glaive_conversations()
    model = smollm2_with_chat_template(tmp_path / "m", EOS_AFTER)
    result = _compile(tmp_path, path, "sharegpt", "tokenizer", model)
    assert _compare(result.path, conversations, EOS_AFTER, eos_after=True) == 299  # row 243 is over 8192 tokens (dropped, counted)
    # add_eos: false trains exactly the blocks
    exact = _compile(tmp_path / "exact", path, "sharegpt", "tokenizer", model, add_eos=False)
    assert _compare(exact.path, conversations, EOS_AFTER, eos_after=False) == 299


def test_per_turn_flags_pick_blocks_and_a_block_count_mismatch_is_refused(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "train": False},
                          {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows * 3)
    model = smollm2_with_chat_template(tmp_path / "m", EOS_INSIDE)
    result = _compile(tmp_path, path, "messages", "tokenizer", model)
    tok = build_tokenizer(str(result.path / "tokenizer"))
    _, _, toks = load_split(result.path, "train")
    ids, trained = toks[0]
    assert tok.decode([t for t, m in zip(ids, trained) if m]) == "Goodbye.<|im_end|>"
    one_block = EOS_INSIDE.replace("{% if m['role'] == 'assistant' %}", "{% if m['role'] == 'assistant' and loop.last %}")
    template = tmp_path / "one.jinja"
    template.write_text(one_block, encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        _compile(tmp_path / "one", path, "messages", {"file": str(template)}, model)
    assert "blocks (1) do not match the row's 2 assistant turns" in info.value.render()


def test_unclosed_generation_block_is_a_template_error_with_its_line(tmp_path):
    template = tmp_path / "bad.jinja"
    template.write_text(EOS_INSIDE.replace("{% endgeneration %}", "").replace("{% for", "\n{% for", 1), encoding="utf-8")
    path, _ = _dialogsum_conversations()
    with pytest.raises(TemplateError) as info:
        _compile(tmp_path, path, "summarization", {"file": str(template)})
    text = info.value.render()
    assert "bad.jinja:" in text and "endgeneration" in text, text
