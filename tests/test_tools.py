"""Tool definitions reach the tokens (data.tools), checked on the real glaive tool-call rows.

Oracles: the tool definitions are read from the data file by the test itself (``json.loads``) and wrapped in
the OpenAI form ``{"type": "function", "function": F}`` written with ``json.dumps``; the row's decoded tokens
before its first trained token must hold each of them (so they are in the tokens and never trained). The
real SmolLM2 tokenizer's chat template ignores ``tools``; the library's chatml renders them.
"""

from __future__ import annotations

import json
from pathlib import Path

from compile_fixtures import (
    build_tokenizer,
    check_build,
    compile_spec,
    load_split,
    shared,
    smollm2,
    smollm2_with_chat_template,
    write_spec,
)

GLAIVE = "sharegpt/glaive_toolcall_en_demo.json"


def _source_tools() -> dict[int, list[str]]:
    """Row index -> each tool definition of the row as OpenAI-form JSON text (rows with at least one)."""
    rows = json.loads(shared(GLAIVE).read_text(encoding="utf-8"))
    out = {}
    for i, row in enumerate(rows):
        tools = json.loads(row["tools"]) if row.get("tools") else []
        if tools:
            out[i] = [json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in tools]
    return out


def _compile(tmp_path: Path, template, model=None, **data):
    spec = write_spec(tmp_path, data={"format": "sharegpt", "sources": [{"path": str(shared(GLAIVE))}],
                                      "template": template, "tokenization": {"max_length": 4096}, **data},
                      model=model or smollm2())
    return compile_spec(spec, tmp_path / "build")


def _untrained_prefix_texts(build: Path) -> dict[int, tuple[str, str]]:
    """Row index -> (decoded text before the row's first trained token, the whole decoded row)."""
    tok = build_tokenizer(str(build / "tokenizer"))
    _, rows, toks = load_split(build, "train")
    out = {}
    for row, (ids, trained) in zip(rows, toks):
        first = trained.index(1)
        out[int(row["source"].rsplit("#", 1)[1])] = (tok.decode(ids[:first], skip_special_tokens=False),
                                                     tok.decode(ids, skip_special_tokens=False))
    return out


def _warnings(result) -> list[str]:
    return [m.strip() for m in result.messages if "warning:" in m and "data.tools" in m]


def test_chatml_renders_every_rows_tools_untrained_smollm2(tmp_path):
    tools = _source_tools()
    result = _compile(tmp_path, "chatml")
    texts = _untrained_prefix_texts(result.path)
    with_tools = [i for i in texts if i in tools]
    assert len(with_tools) == len(tools) == 191  # every row kept at max_length 4096
    for i in with_tools:
        prefix, _ = texts[i]
        for definition in tools[i]:
            assert definition in prefix, (i, definition)
    for i in set(texts) - set(tools):  # rows with "[]": no tools section
        assert "<tools>" not in texts[i][1], i
    assert result.manifest["tools"] == {"mode": "auto", "rows_with_tools": 191, "rendered_by_template": 191,
                                        "in_system_turn": 0, "template_ignores_tools": 0, "dropped": 0}
    assert not _warnings(result)
    assert check_build(result.path, turn_end="<|im_end|>") == 299  # row 243 (no tools) is over 4096 tokens


def test_template_ignoring_tools_warns_and_writes_them_into_the_system_turn(tmp_path):
    """SmolLM2's own chat template never reads `tools`: auto puts them in the system turn, with a warning
    and the count; the rendered JSONL says so too (a system message holding them, no `tools`)."""
    tools = _source_tools()
    result = _compile(tmp_path, "tokenizer")
    (warning,) = _warnings(result)
    assert "the chat template ignores tool definitions: 191 of 191 rows with tools" in warning and " — " in warning
    assert result.manifest["tools"]["template_ignores_tools"] == 191
    texts = _untrained_prefix_texts(result.path)
    for i in tools:
        for definition in tools[i]:
            assert definition in texts[i][0], i
    _, rows, _ = load_split(result.path, "train")
    row = next(r for r in rows if r["source"].endswith("#0"))
    assert "tools" not in row and row["messages"][0]["role"] == "system"
    assert tools[0][0] in row["messages"][0]["content"]
    # the same rows with data.tools: system: the same tokens, and no warning (the spec chose it)
    chosen = _compile(tmp_path / "system", "tokenizer", tools="system")
    assert not _warnings(chosen) and chosen.manifest["tools"]["in_system_turn"] == 191
    assert (chosen.path / "tokens" / "train.ids.npy").read_bytes() == (result.path / "tokens" / "train.ids.npy").read_bytes()


def test_chatml_tools_block_is_the_documented_system_form(tmp_path):
    """chatml's `tools` block and data.tools: system (tools.system_text) write the same text."""
    native = _compile(tmp_path / "native", "chatml")
    system = _compile(tmp_path / "system", "chatml", tools="system")
    for name in ("ids", "trained", "offsets"):
        assert (native.path / "tokens" / f"train.{name}.npy").read_bytes() == \
            (system.path / "tokens" / f"train.{name}.npy").read_bytes(), name


def test_drop_leaves_tools_out_counted_and_warned(tmp_path):
    tools = _source_tools()
    result = _compile(tmp_path, "chatml", tools="drop")
    (warning,) = _warnings(result)
    assert "191 of 191 rows with tools: their tool definitions were dropped" in warning
    assert result.manifest["tools"]["dropped"] == 191
    texts = _untrained_prefix_texts(result.path)
    assert not any(d in texts[i][1] for i in tools for d in tools[i])
    _, rows, _ = load_split(result.path, "train")
    assert not any("tools" in r for r in rows)


TOOLS_TEMPLATE = (  # a Hugging Face chat template that renders tools only when the conversation has a system turn
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if loop.first and m['role'] == 'system' and tools %}\nTOOLS:{% for t in tools %} {{ t.type }}:{{ t.function.name }}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_tokenizer_template_gets_tools_in_openai_form_and_is_judged_per_row(tmp_path):
    """A chat template given `tools=` as apply_chat_template gives them ([{"type": "function", "function": F}]):
    it renders `function:<name>`. It renders them only in conversations with a system turn, so rows without
    one get them in a system turn of their own, counted per row."""
    data = shared(GLAIVE)
    rows = json.loads(data.read_text(encoding="utf-8"))[:40]
    for row in rows[:10]:  # ten conversations with a system prompt
        row["system"] = "You are a helpful assistant."
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with_tools = [i for i, r in enumerate(rows) if json.loads(r["tools"])]
    model = smollm2_with_chat_template(tmp_path, TOOLS_TEMPLATE)
    spec = write_spec(tmp_path / "spec", data={"format": "sharegpt", "sources": [{"path": str(path)}],
                                               "template": "tokenizer", "tokenization": {"max_length": 4096}},
                      model=model)
    result = compile_spec(spec, tmp_path / "spec" / "build")
    by_template = [i for i in with_tools if i < 10]
    counts = result.manifest["tools"]
    assert counts["rendered_by_template"] == len(by_template) > 0
    assert counts["template_ignores_tools"] == len(with_tools) - len(by_template) > 0
    texts = _untrained_prefix_texts(result.path)
    for i in with_tools:
        names = [t["name"] for t in json.loads(rows[i]["tools"])]
        if i < 10:
            assert all(f"function:{n}" in texts[i][0] for n in names), i
        else:
            assert all(json.dumps({"type": "function", "function": t}, ensure_ascii=False) in texts[i][0]
                       for t in json.loads(rows[i]["tools"])), i
    (warning,) = _warnings(result)
    assert f"{counts['template_ignores_tools']} of {len(with_tools)} rows with tools" in warning


def test_system_turn_form_keeps_the_templates_system_prompt(tmp_path):
    """data.template.system is the system prompt of rows without one; the tools follow it (tools.system_text)."""
    from tunespec.compiler.tools import TOOLS_FOOTER, TOOLS_HEADER

    tools = _source_tools()
    result = _compile(tmp_path, {"name": "tokenizer", "system": "You are a booking assistant."})
    _, rows, _ = load_split(result.path, "train")
    row = next(r for r in rows if r["source"].endswith("#0"))
    assert row["messages"][0] == {"role": "system", "content": "You are a booking assistant.\n\n" + TOOLS_HEADER
                                  + "\n".join(tools[0]) + TOOLS_FOOTER}
