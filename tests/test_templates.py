"""Templates and masks, checked at the token level on every format and library template.

For each build, ``check_build`` (compile_fixtures.py) decodes the trained tokens of every row and
checks they are exactly the completion (or each assistant turn) + EOS, that every prompt token is
-100, that EOS is trained at the end of each completion / assistant turn, and that the prompt
tokenized alone is exactly the untrained part before it (what generation sees).

Two tokenizers: a tiny Llama-like one (BOS before every text, EOS ``</s>`` distinct from ChatML's
``<|im_end|>``) on the project's samples, and the real SmolLM2 tokenizer (EOS is ``<|im_end|>``) on the
project's samples and on real data sets from ../shared/data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compile_fixtures import (
    SPECS_DATA,
    check_build,
    compile_spec,
    load_split,
    shared,
    smollm2,
    tiny,
    write_jsonl,
    write_spec,
)

from tunespec.errors import TemplateError

FIELD_TEMPLATES = ["alpaca", "phi2_instruct", "llama2_inst", "question_answer", "chatml", "tokenizer"]
CHAT_TEMPLATES = ["chatml", "tokenizer"]


def _messages_rows() -> list[dict]:
    """chat_sample.jsonl as OpenAI `messages` rows."""
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    rows = []
    for line in (SPECS_DATA / "chat_sample.jsonl").read_text(encoding="utf-8").splitlines():
        conv = json.loads(line)["conversations"]
        rows.append({"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in conv]})
    return rows


def sample_data(fmt: str, root: Path) -> dict:
    """The `data` section (less the template) reading the project's sample of format `fmt`."""
    if fmt == "alpaca":
        return {"format": "alpaca", "sources": [{"path": str(SPECS_DATA / "instructions_sample.json")}]}
    if fmt == "summarization":
        return {"format": "summarization", "sources": [{"path": str(SPECS_DATA / "dialogues_test.jsonl")}]}
    if fmt == "qa":
        return {"format": "qa", "sources": [{"path": str(SPECS_DATA / "qa_sample.jsonl")}]}
    if fmt == "qa_column_map":  # question/answer rows read as alpaca through column_map
        return {"format": "alpaca", "column_map": {"instruction": "question", "output": "answer"},
                "sources": [{"path": str(SPECS_DATA / "qa_sample.jsonl")}]}
    if fmt == "prompt_completion":
        rows = json.loads((SPECS_DATA / "instructions_sample.json").read_text(encoding="utf-8"))
        path = write_jsonl(root / "pc.jsonl", [{"prompt": r["instruction"], "completion": r["output"]} for r in rows])
        return {"format": "prompt_completion", "sources": [{"path": str(path)}]}
    if fmt == "text":
        rows = [json.loads(x) for x in (SPECS_DATA / "dialogues_test.jsonl").read_text(encoding="utf-8").splitlines()]
        path = write_jsonl(root / "text.jsonl", [{"text": r["dialogue"]} for r in rows])
        return {"format": "text", "sources": [{"path": str(path)}]}
    if fmt == "sharegpt":
        return {"format": "sharegpt", "sources": [{"path": str(SPECS_DATA / "chat_sample.jsonl")}]}
    if fmt == "messages":
        path = write_jsonl(root / "messages.jsonl", _messages_rows())
        return {"format": "messages", "sources": [{"path": str(path)}]}
    raise AssertionError(fmt)


def turn_end(template: str | None, fmt: str) -> str | None:
    """The text after an assistant turn's content that the template trains (both tokenizers' chat
    templates and chatml end a turn with <|im_end|>; the model's own adds a newline after it)."""
    if template == "chatml":
        return "<|im_end|>"
    if template == "tokenizer" or (template is None and fmt in ("sharegpt", "messages")):
        return "<|im_end|>\n"
    return None


def build_and_check(tmp_path: Path, data: dict, template: str | None, model: dict, *, fmt: str, **sections) -> int:
    data = dict(data, tokenization={"max_length": 1024})
    if template:
        data["template"] = template
    if fmt == "text":
        sections.setdefault("evaluation", {"metrics": ["loss"]})
    spec = write_spec(tmp_path, data=data, model=model, **sections)
    result = compile_spec(spec, tmp_path / "build")
    return check_build(result.path, turn_end=turn_end(template, fmt))


MATRIX = (
    [(f, t) for f in ("alpaca", "summarization", "qa", "qa_column_map", "prompt_completion") for t in FIELD_TEMPLATES]
    + [("summarization", "instruct_output_end"), ("text", None), ("text", "chatml")]
    + [(f, t) for f in ("sharegpt", "messages") for t in CHAT_TEMPLATES + [None]]
)


@pytest.mark.parametrize("fmt,template", MATRIX, ids=[f"{f}-{t}" for f, t in MATRIX])
def test_masks_exact_tiny_tokenizer(tmp_path, fmt, template):
    n = build_and_check(tmp_path, sample_data(fmt, tmp_path), template, tiny(), fmt=fmt)
    assert n >= 20


SMOL_SAMPLES = [("alpaca", "alpaca"), ("summarization", "instruct_output_end"), ("qa_column_map", "question_answer"),
                ("prompt_completion", "llama2_inst"), ("text", None), ("sharegpt", "chatml"), ("sharegpt", "tokenizer"),
                ("messages", "tokenizer"), ("summarization", "tokenizer"), ("qa", "phi2_instruct")]


@pytest.mark.parametrize("fmt,template", SMOL_SAMPLES, ids=[f"{f}-{t}" for f, t in SMOL_SAMPLES])
def test_masks_exact_smollm2_samples(tmp_path, fmt, template):
    n = build_and_check(tmp_path, sample_data(fmt, tmp_path), template, smollm2(), fmt=fmt)
    assert n >= 20


REAL = [
    ("dialogsum/dev.jsonl", "summarization", "instruct_output_end"),
    ("dialogsum/dev.jsonl", "summarization", "llama2_inst"),
    ("dialogsum/dev.jsonl", "summarization", "tokenizer"),
    ("alpaca/alpaca_en_demo.json", "alpaca", "alpaca"),
    ("alpaca/alpaca_en_demo.json", "alpaca", "phi2_instruct"),
    ("alpaca/alpaca_en_demo.json", "alpaca", "chatml"),
    ("sharegpt/glaive_toolcall_en_demo.json", "sharegpt", "chatml"),
    ("sharegpt/glaive_toolcall_en_demo.json", "sharegpt", "tokenizer"),
]


@pytest.mark.parametrize("rel,fmt,template", REAL, ids=[f"{r.split('/')[0]}-{t}" for r, _, t in REAL])
def test_masks_exact_real_data_smollm2(tmp_path, rel, fmt, template):
    data = {"format": fmt, "sources": [{"path": str(shared(rel))}]}
    n = build_and_check(tmp_path, data, template, smollm2(), fmt=fmt)
    assert n >= 250  # nearly every row kept (a few tool-call conversations exceed 1024 tokens)


@pytest.mark.parametrize("template", ["chatml", "tokenizer"])
def test_masks_exact_real_tool_calls_tiny_tokenizer(tmp_path, template):
    """Multi-turn tool-call conversations where EOS is not the end-of-turn marker: EOS follows every
    assistant turn, and the eval prompt carries those EOS too, so it tokenizes to the trained ids."""
    data = {"format": "sharegpt", "sources": [{"path": str(shared("sharegpt/glaive_toolcall_en_demo.json"))}]}
    n = build_and_check(tmp_path, data, template, tiny(), fmt="sharegpt")
    assert n >= 150
    _, rows, toks = load_split(tmp_path / "build", "train")
    multi = [r for r in rows if sum(m["role"] in ("assistant", "tool_call") for m in r["messages"]) > 1]
    assert multi and all("</s>" in r["eval_prompt"] for r in multi)


# --------------------------------------------------------------------------- data is data


def test_row_text_with_jinja_syntax_is_kept_literally(tmp_path):
    rows = [
        {"instruction": "Fill in {{ name }} and {% if x %}keep{% endif %}", "input": "{{ ''.__class__ }}",
         "output": "Hello {{ name }}! {# not a comment #}"},
        {"instruction": "Plain", "input": "", "output": "{{ 7*7 }}"},
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    for template in ("alpaca", "chatml"):
        spec = write_spec(tmp_path / template, data={"format": "alpaca", "sources": [{"path": str(path)}],
                                                     "template": template})
        result = compile_spec(spec, tmp_path / template / "build")
        check_build(result.path, turn_end="<|im_end|>")
        _, out, _ = load_split(result.path, "train")
        text = json.dumps(out, ensure_ascii=False)
        for literal in ("{{ name }}", "{% if x %}keep{% endif %}", "{{ ''.__class__ }}", "{# not a comment #}",
                        "{{ 7*7 }}"):
            assert literal in text, (template, literal)
        assert "49" not in text
        if template == "alpaca":
            assert out[0]["completion"] == "Hello {{ name }}! {# not a comment #}"
            assert "{{ ''.__class__ }}" in out[0]["prompt"]


def test_template_field_the_format_lacks_fails_at_compile_with_its_line(tmp_path):
    tpl = tmp_path / "mine.jinja"
    tpl.write_text("{% block prompt %}\nQ: {{ instruction }}\nCtx: {{ dialogue }}\n{% endblock %}\n"
                   "{% block completion %}{{ output }}{% endblock %}\n", encoding="utf-8")
    data = {"format": "alpaca", "sources": [{"path": str(SPECS_DATA / "instructions_sample.json")}],
            "template": {"file": str(tpl)}}
    spec = write_spec(tmp_path, data=data)
    with pytest.raises(TemplateError) as info:
        compile_spec(spec, tmp_path / "build")
    text = info.value.render()
    assert "mine.jinja:3:" in text and "`dialogue`" in text and "instruction" in text  # line 3, and the fields there are
    assert not (tmp_path / "build").exists()

    data["template"] = "instruct_output_end"  # a library template made for summarization data
    spec = write_spec(tmp_path, data=data)
    with pytest.raises(TemplateError) as info:
        compile_spec(spec, tmp_path / "build")
    assert "instruct_output_end:5:" in info.value.render() and "`dialogue`" in info.value.render()


@pytest.mark.parametrize("expr", ["{{ ''.__class__ }}", "{{ instruction.__class__.__mro__ }}",
                                  "{{ output.__init__.__globals__ }}"])
def test_sandbox_blocks_attribute_escapes(tmp_path, expr):
    data = {"format": "alpaca", "sources": [{"path": str(SPECS_DATA / "instructions_sample.json")}],
            "template": {"prompt": "Q: {{ instruction }} " + expr + "\n", "completion": "{{ output }}"}}
    spec = write_spec(tmp_path, data=data)
    with pytest.raises(TemplateError) as info:
        compile_spec(spec, tmp_path / "build")
    assert "unsafe" in info.value.render()
    assert not (tmp_path / "build").exists()
    assert not list(tmp_path.glob(".build.tmp-*"))  # the failed compile cleaned up after itself


def test_chatml_turn_segments_and_stop(tmp_path):
    """ChatML: prompt parts untrained, `content<|im_end|>` trained, the newline after it not; stop marker set."""
    spec = write_spec(tmp_path, data={**sample_data("sharegpt", tmp_path), "template": "chatml"})
    result = compile_spec(spec, tmp_path / "build")
    assert result.manifest["template"]["stop"] == "<|im_end|>"
    _, rows, toks = load_split(result.path, "train")
    from compile_fixtures import build_tokenizer

    tok = build_tokenizer(str(result.path / "tokenizer"))
    ids, trained = toks[0]
    untrained_text = tok.decode([t for t, m in zip(ids, trained) if not m], skip_special_tokens=False)
    assert untrained_text.startswith("<s><|im_start|>user\n") and "<|im_start|>assistant\n" in untrained_text
    assert rows[0]["messages"][1]["content"] not in untrained_text


def test_the_mask_check_itself_catches_a_wrong_mask(tmp_path):
    """check_build is the oracle of this file: a build with one prompt token trained must fail it."""
    import numpy as np

    spec = write_spec(tmp_path, data={**sample_data("alpaca", tmp_path), "template": "alpaca"})
    build = compile_spec(spec, tmp_path / "build").path
    check_build(build)
    trained = np.load(build / "tokens" / "train.trained.npy")
    trained[3] = 1  # a prompt token of row 0
    np.save(build / "tokens" / "train.trained.npy", trained)
    with pytest.raises(AssertionError):
        check_build(build)
