"""Format conversion into Record: each format, every drop reason, spec mistakes, real data, fuzzing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunespec.compiler.files import read_rows
from tunespec.compiler.row_conversion import chat_problem, convert_rows, drop_summary
from tunespec.errors import DataError
from tunespec.format_table import FORMATS, get_format

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def convert(fmt, rows, **kwargs):
    records, drops = convert_rows(fmt, rows, source="t", **kwargs)
    assert len(records) + sum(drops.values()) == len(rows)
    return records, drops


def one(fmt, row, **kwargs):
    """The record of a single row that converts."""
    records, drops = convert(fmt, [row], **kwargs)
    assert not drops, drops
    return records[0]


def reason(fmt, rows, **kwargs):
    """The single drop reason of the last row (earlier rows make the columns present)."""
    records, drops = convert(fmt, rows, **kwargs)
    assert sum(drops.values()) == 1, drops
    return next(iter(drops))


# ---------------------------------------------------------------------------- registry


def test_registry():
    assert set(FORMATS) == {
        "alpaca",
        "summarization",
        "qa",
        "input_output",
        "text",
        "prompt_completion",
        "sharegpt",
        "messages",
    }
    references = {name: info.reference for name, info in FORMATS.items()}
    assert references == {
        "alpaca": "output",
        "summarization": "summary",
        "qa": "answer",
        "input_output": "output",
        "text": None,
        "prompt_completion": "completion",
        "sharegpt": None,
        "messages": None,
    }
    templates = {name: info.template for name, info in FORMATS.items()}
    assert templates["alpaca"] == "alpaca" and templates["summarization"] == "instruct_output_end"
    assert templates["qa"] == "question_answer" and templates["input_output"] == "input_output"
    assert templates["text"] == "text" and templates["prompt_completion"] == "prompt_completion"
    assert templates["sharegpt"] == templates["messages"] == "tokenizer"
    assert FORMATS["alpaca"].required == ("instruction", "output") and FORMATS["alpaca"].text_fields == (
        "instruction",
        "output",
        "input",
    )
    assert FORMATS["summarization"].kind == "fields" and FORMATS["messages"].kind == "chat"


def test_unknown_format_suggests():
    with pytest.raises(DataError, match="did you mean 'sharegpt'"):
        get_format("sharegtp")
    with pytest.raises(DataError):
        convert_rows("nope", [{}], source="t")


# ---------------------------------------------------------------------------- field formats


def test_alpaca_fields_ids_and_meta():
    record = one("alpaca", {"instruction": " Do it \n", "output": "done  ", "category": "x", "score": 3, "tags": ["a"]})
    assert record.fields == {"instruction": " Do it \n", "output": "done  ", "input": ""}
    assert not record.is_chat and record.messages is None and record.tools is None
    assert record.id == "t:0" and record.source == "t#0"
    assert record.meta == {"category": "x", "score": "3"}  # lists are not kept


@pytest.mark.parametrize(
    "row,expected",
    [
        ({"instruction": "i"}, "missing field 'output'"),
        ({"instruction": "i", "output": ""}, "empty field 'output'"),
        ({"instruction": "i", "output": " \n\t"}, "empty field 'output'"),
        ({"instruction": "i", "output": ["a"]}, "field 'output' is not text (got list)"),
        ({"instruction": "i", "output": {"a": 1}}, "field 'output' is not text (got dict)"),
        ({"instruction": "i", "output": True}, "field 'output' is not text (got bool)"),
        ({"instruction": "i", "output": None}, "field 'output' is not text (got null)"),
        ({"instruction": "i", "output": float("nan")}, "field 'output' is not text (got null)"),
        ({"instruction": "i", "input": ["x"], "output": "o"}, "field 'input' is not text (got list)"),
    ],
)
def test_alpaca_drop_reasons(row, expected):
    assert reason("alpaca", [{"instruction": "i", "output": "o"}, row]) == expected


def test_optional_fields_may_be_missing_empty_or_null():
    rows = [
        {"instruction": "a", "output": "b"},
        {"instruction": "a", "input": None, "output": "b"},
        {"instruction": "a", "input": "  ", "output": "b"},
    ]
    records, _ = convert("alpaca", rows)
    assert [r.fields["input"] for r in records] == ["", "", "  "]


def test_numbers_become_text():
    record = one("qa", {"question": 12, "answer": 3.5})
    assert record.fields == {"question": "12", "answer": "3.5"}


@pytest.mark.parametrize(
    "fmt,row,fields",
    [
        (
            "summarization",
            {"dialogue": "#P1#: hi", "summary": "greeting"},
            {"dialogue": "#P1#: hi", "summary": "greeting", "topic": ""},
        ),
        (
            "summarization",
            {"dialogue": "d", "summary": "s", "topic": "t"},
            {"dialogue": "d", "summary": "s", "topic": "t"},
        ),
        ("qa", {"question": "q?", "answer": "a"}, {"question": "q?", "answer": "a"}),
        ("input_output", {"input": "in", "output": "out"}, {"input": "in", "output": "out"}),
        ("text", {"text": "some text"}, {"text": "some text"}),
        ("prompt_completion", {"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "c"}),
    ],
)
def test_field_formats(fmt, row, fields):
    assert one(fmt, row).fields == fields


def test_ids():
    assert one("text", {"text": "a", "id": 7}).id == "7"
    assert one("text", {"text": "a", "fname": "dev_3"}).id == "dev_3"
    record = one("text", {"text": "a", "uid": "u1", "id": "x"}, id_column="uid")
    assert record.id == "u1" and record.meta == {"id": "x"}
    assert one("text", {"text": "a", "id": ""}).id == "t:0"  # an empty id is no id
    assert reason("text", [{"text": "a", "uid": "u"}, {"text": "b"}], id_column="uid") == "missing id column 'uid'"


def test_column_map_renames_fields():
    record = one("qa", {"q": "why?", "a": "because"}, column_map={"question": "q", "answer": "a"})
    assert record.fields == {"question": "why?", "answer": "because"} and record.meta == {}
    assert (
        reason("qa", [{"q": "x", "a": "y"}, {"q": "x"}], column_map={"question": "q", "answer": "a"})
        == "missing field 'answer' (column 'a')"
    )


def test_alpaca_history_becomes_chat():
    column_map = {"instruction": "prompt", "output": "response", "history": "history"}
    row = {"prompt": "And 3+3?", "response": "6", "history": [["1+1?", "2"], ["2+2?", "4"]]}
    record = one("alpaca", row, column_map=column_map)
    assert record.is_chat and record.fields is None
    assert [(m["role"], m["content"]) for m in record.messages] == [
        ("user", "1+1?"),
        ("assistant", "2"),
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "And 3+3?"),
        ("assistant", "6"),
    ]
    with_input = one("alpaca", {"instruction": "Sum", "input": "1 2", "output": "3", "history": [["a", "b"]]})
    assert with_input.messages[-2]["content"] == "Sum\n\n1 2" and with_input.meta == {"input": "1 2"}
    assert one("alpaca", {"instruction": "i", "output": "o", "history": []}).fields is not None


@pytest.mark.parametrize(
    "history,expected",
    [
        ("a,b", "history is not a list (got str)"),
        ([["only one"]], "history item is not a [user, assistant] pair"),
        ([["u", None]], "history turn is not text (got null)"),
        ([["u", " "]], "empty assistant turn"),
    ],
)
def test_alpaca_bad_history(history, expected):
    assert reason("alpaca", [{"instruction": "i", "output": "o", "history": history}]) == expected


def test_column_map_unknown_key_is_a_spec_error():
    with pytest.raises(DataError) as info:
        convert_rows("alpaca", [{"prompt": "p", "output": "o"}], source="t", column_map={"instructoin": "prompt"})
    text = info.value.render()
    assert "column_map.instructoin" in text and "did you mean 'instruction'" in text


def test_column_map_reversed_hints_the_direction():
    with pytest.raises(DataError, match=r"\{field: column\}"):
        convert_rows("alpaca", [{"prompt": "p", "output": "o"}], source="t", column_map={"prompt": "instruction"})


def test_mapped_column_in_no_row_is_a_spec_error():
    rows = [{"prompt": "p", "response": "r"}, {"prompt": "p2", "response": "r2"}]
    with pytest.raises(DataError) as info:
        convert_rows("alpaca", rows, source="t", column_map={"instruction": "prompt", "output": "respones"})
    text = info.value.render()
    assert (
        "column_map.output" in text
        and "'respones'" in text
        and "did you mean 'response'" in text
        and "prompt, response" in text
    )


def test_required_column_in_no_row_suggests_the_format():
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    with pytest.raises(DataError) as info:
        convert_rows("alpaca", rows, source="t")
    text = info.value.render()
    assert "needs a column 'instruction'" in text and "'sharegpt'" in text and "column_map" in text


def test_id_column_in_no_row_is_a_spec_error():
    with pytest.raises(DataError, match="id column 'uid' is in no row"):
        convert_rows("text", [{"text": "a"}], source="t", id_column="uid")


def test_drop_summary():
    assert drop_summary(Counter()) == "no rows dropped"
    assert drop_summary(Counter({"b": 1, "a": 2})) == "3 rows dropped: 2 × a; 1 × b"
    assert drop_summary(Counter({"x": 1})) == "1 row dropped: 1 × x"


# ---------------------------------------------------------------------------- sharegpt


def turns(*pairs):
    return [{"from": role, "value": text} for role, text in pairs]


def test_sharegpt_roles_system_and_tools():
    row = {
        "conversations": turns(
            ("human", "weather?"),
            ("function_call", '{"name": "w", "arguments": {}}'),
            ("observation", "sunny"),
            ("gpt", "Sunny."),
        ),
        "system": "Be brief.",
        "tools": '[{"name": "w"}]',
    }
    record = one("sharegpt", row)
    assert [m["role"] for m in record.messages] == ["system", "user", "tool_call", "tool", "assistant"]
    assert record.messages[0]["content"] == "Be brief." and record.tools == '[{"name": "w"}]'
    assert one("sharegpt", {**row, "tools": [{"name": "w"}]}).tools == '[{"name": "w"}]'
    assert one("sharegpt", {**row, "system": ""}).messages[0]["role"] == "user"


def test_sharegpt_system_turn_at_start_is_allowed():
    record = one("sharegpt", {"conversations": turns(("system", "sys"), ("human", "q"), ("gpt", "a"))})
    assert [m["role"] for m in record.messages] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    "conversation,expected",
    [
        (turns(("human", "q"), ("bot", "a")), "unknown role 'bot'"),
        (turns(("human", "q"), ("human", "q2"), ("gpt", "a")), "conversation does not alternate user/assistant"),
        (turns(("human", "q"), ("gpt", "a"), ("gpt", "a2")), "conversation does not alternate user/assistant"),
        (turns(("gpt", "hello"), ("human", "q"), ("gpt", "a")), "conversation does not start with a user turn"),
        (turns(("human", "q")), "no assistant turn"),
        (turns(("human", "q"), ("gpt", "a"), ("human", "q2")), "conversation does not end with an assistant turn"),
        (turns(("human", "q"), ("observation", "r"), ("gpt", "a")), "tool result without a preceding tool call"),
        (turns(("human", "q"), ("function_call", '{"name": "f", "arguments": {}}'), ("gpt", "a")), "tool call not followed by a tool result"),
            (turns(("human", "q"), ("function_call", "{}"), ("observation", "r"), ("gpt", "a")), "tool call is not a JSON object {name, arguments}"),
        (
            turns(("human", "q"), ("gpt", "a"), ("system", "s"), ("human", "q"), ("gpt", "a")),
            "system message not at the start",
        ),
        (turns(("human", "q"), ("gpt", "  ")), "empty assistant turn"),
        (turns(("human", "q"), ("gpt", ["a"])), "non-text content part"),
        ([{"from": "human"}], "turn without 'value'"),
        ([{"value": "x"}], "turn without 'from'"),
        (["hi"], "turn is not an object (got str)"),
        ([], "empty conversation"),
        ("hi", "field 'conversations' is not a list (got str)"),
    ],
)
def test_sharegpt_drop_reasons(conversation, expected):
    assert reason("sharegpt", [{"conversations": conversation}]) == expected


def test_sharegpt_other_drop_reasons():
    ok = turns(("human", "q"), ("gpt", "a"))
    assert reason("sharegpt", [{"conversations": ok}, {"chat": ok}]) == "missing field 'conversations'"
    assert reason("sharegpt", [{"conversations": ok, "tools": "{not json"}]) == "field 'tools' is not valid JSON"
    assert (
        reason("sharegpt", [{"conversations": [{"from": "system", "value": "s"}] + ok, "system": "s"}])
        == "system prompt given twice (column and turn)"
    )


def test_sharegpt_custom_tags():
    column_map = {
        "conversations": "dialog",
        "role_tag": "role",
        "content_tag": "text",
        "user_tag": "user",
        "assistant_tag": "bot",
    }
    record = one(
        "sharegpt", {"dialog": [{"role": "user", "text": "q"}, {"role": "bot", "text": "a"}]}, column_map=column_map
    )
    assert record.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_tool_results_may_follow_each_other_and_be_empty():
    conversation = turns(
        ("human", "q"), ("function_call", '[{"name": "f", "arguments": {}}, {"name": "g"}]'), ("observation", ""), ("observation", "r"), ("gpt", "a")
    )
    assert one("sharegpt", {"conversations": conversation}).messages[3]["content"] == "r"


def test_chat_problem_directly():
    assert (
        chat_problem([{"role": "user", "content": "q"}, {"role": "tool_call", "content": "{}"}]) is None
    )  # may end with a call
    assert chat_problem([{"role": "system", "content": "s"}]) == "no assistant turn"
    assert chat_problem([]) == "no assistant turn"


# ---------------------------------------------------------------------------- OpenAI messages


def test_messages_parts_tool_calls_and_tools():
    row = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "18C"},
            {"role": "assistant", "content": "18 °C."},
        ],
        "tools": [{"type": "function", "function": {"name": "weather"}}],
    }
    record = one("messages", row)
    assert [m["role"] for m in record.messages] == ["system", "user", "assistant", "tool_call", "tool", "assistant"]
    assert record.messages[1]["content"] == "Weather in Paris?"
    assert json.loads(record.messages[3]["content"]) == {"name": "weather", "arguments": {"city": "Paris"}}
    assert record.tools == '[{"name": "weather"}]'


def test_messages_several_calls_and_no_content():
    calls = [{"type": "function", "function": {"name": n, "arguments": '{"x": 1}'}} for n in ("a", "b")]
    row = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
            {"role": "assistant", "content": "done"},
        ]
    }
    record = one("messages", row)
    assert [m["role"] for m in record.messages] == ["user", "tool_call", "tool", "tool", "assistant"]
    assert json.loads(record.messages[1]["content"]) == [
        {"name": "a", "arguments": {"x": 1}},
        {"name": "b", "arguments": {"x": 1}},
    ]
    bad = [{"type": "function", "function": {"name": "a", "arguments": "not json"}}]
    row["messages"][1]["tool_calls"] = bad
    assert reason("messages", [row]) == "tool call arguments are not JSON"


@pytest.mark.parametrize(
    "messages,expected",
    [
        (
            [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": "a"},
            ],
            "image content part (only text is trained)",
        ),
        ([{"role": "user", "content": "q"}, {"role": "xyz", "content": "a"}], "unknown role 'xyz'"),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}],
            "turn content is not text (got null)",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}],
            "tool call without a function name",
        ),
        ([{"role": "user", "content": "q"}], "no assistant turn"),
    ],
)
def test_messages_drop_reasons(messages, expected):
    assert reason("messages", [{"messages": messages}]) == expected


# ---------------------------------------------------------------------------- real data


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"../shared/data not present: {path} is missing")
    return path


def test_real_dialogsum():
    rows = read_rows(shared("dialogsum/dev.jsonl"))
    records, drops = convert("summarization", rows)
    assert len(records) == 500 and not drops
    assert (
        records[0].id == "dev_0"
        and records[0].fields["topic"]
        and records[0].fields["dialogue"].startswith("#Person1#:")
    )
    assert records[0].meta == {}  # fname became the id; topic is a field


def test_real_alpaca():
    rows = read_rows(shared("alpaca/alpaca_en_demo.json"))
    records, drops = convert("alpaca", rows)
    assert len(records) == 999 and not drops
    assert sum(1 for r in records if r.fields["input"] == "") == 587
    assert [r.fields for r in records] == [
        {"instruction": r["instruction"], "output": r["output"], "input": r["input"]} for r in rows
    ]


def test_real_glaive_toolcall():
    rows = read_rows(shared("sharegpt/glaive_toolcall_en_demo.json"))
    records, drops = convert("sharegpt", rows)
    assert len(records) == 300 and not drops
    roles = Counter(m["role"] for r in records for m in r.messages)
    assert set(roles) == {"user", "assistant", "tool_call", "tool"} and roles["tool_call"] == roles["tool"] > 0
    assert all(r.tools == row["tools"] for r, row in zip(records, rows))
    assert sum(len(r.messages) for r in records) == sum(len(row["conversations"]) for row in rows)


# ---------------------------------------------------------------------------- fuzzing

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
_keys = st.sampled_from(
    [
        "instruction",
        "input",
        "output",
        "history",
        "dialogue",
        "summary",
        "topic",
        "question",
        "answer",
        "text",
        "prompt",
        "completion",
        "conversations",
        "messages",
        "system",
        "tools",
        "id",
        "fname",
        "from",
        "value",
        "role",
        "content",
    ]
) | st.text(max_size=6)
_turn = st.fixed_dictionaries(
    {},
    optional={
        "from": st.sampled_from(["human", "gpt", "system", "function_call", "observation", "bot"]) | _values,
        "value": st.text(max_size=5) | _values,
        "role": st.sampled_from(["user", "assistant", "system", "tool", "x"]) | _values,
        "content": st.text(max_size=5) | _values,
        "tool_calls": _values,
    },
)
_rows = st.lists(
    st.dictionaries(
        _keys,
        _values | st.lists(_turn, max_size=5) | st.lists(st.lists(st.text(max_size=3), max_size=3), max_size=3),
        max_size=6,
    ),
    max_size=5,
)


_text = st.text(max_size=5) | st.sampled_from(["", " ", "a", "ü 世", "7"])
_sometimes_bad = _text | _text | _text | _values  # mostly text, sometimes anything


def _sharegpt_turn():
    roles = st.sampled_from(["human", "gpt", "system", "function_call", "observation", "bot"])
    content = st.sampled_from(['{"name": "f", "arguments": {}}', "[1]"]) | _sometimes_bad
    return st.fixed_dictionaries({"from": roles | roles | _values, "value": content}) | _values


def _messages_turn():
    roles = st.sampled_from(["user", "assistant", "system", "tool", "developer"])
    part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": _sometimes_bad})
    call = st.fixed_dictionaries(
        {
            "function": st.fixed_dictionaries(
                {"name": _sometimes_bad, "arguments": st.sampled_from(["{}", '{"a": 1}', "oops"]) | _values}
            )
        }
    )
    return (
        st.fixed_dictionaries(
            {"role": roles | roles | _values, "content": _sometimes_bad | st.lists(part, max_size=2) | st.none()},
            optional={"tool_calls": st.lists(call, max_size=2) | _values},
        )
        | _values
    )


def _exchanges(role_key: str, content_key: str, user: str, assistant: str):
    """Well-formed user/assistant conversations (so that chat rows do convert), with plausible texts."""
    content = st.sampled_from(["a", "ü 世", " b\n"]) | _text
    turn = lambda role: st.fixed_dictionaries({role_key: st.just(role), content_key: content})  # noqa: E731
    return st.lists(st.tuples(turn(user), turn(assistant)), min_size=1, max_size=3).map(
        lambda pairs: [t for pair in pairs for t in pair]
    )


def _row(fmt: str):
    """Rows shaped like ``fmt``'s (its columns, with mostly plausible values) plus random extra columns."""
    info = FORMATS[fmt]
    columns = {}
    for column in info.required + info.optional:
        if column == "history":
            columns[column] = st.lists(st.lists(_sometimes_bad, min_size=2, max_size=2), max_size=2) | _values
        elif column == "conversations":
            columns[column] = (
                _exchanges("from", "value", "human", "gpt") | st.lists(_sharegpt_turn(), max_size=6) | _values
            )
        elif column == "messages":
            columns[column] = (
                _exchanges("role", "content", "user", "assistant") | st.lists(_messages_turn(), max_size=6) | _values
            )
        elif column == "tools":
            columns[column] = st.sampled_from(['[{"name": "f"}]', "[]", "", "{bad"]) | _values
        else:
            columns[column] = _sometimes_bad
    shaped = st.fixed_dictionaries({}, optional=columns)
    return st.builds(lambda extra, row: {**extra, **row}, st.dictionaries(_keys, _values, max_size=3), shaped)


def check_conversion(fmt: str, rows: list) -> None:
    """Each row converts into a well-formed record or is counted as dropped; only DataError may escape."""
    try:
        records, drops = convert_rows(fmt, rows, source="fuzz")
    except DataError:
        return
    assert len(records) + sum(drops.values()) == len(rows)
    for record in records:
        assert (record.fields is None) != (record.messages is None)
        if record.messages is not None:
            assert chat_problem(record.messages) is None
            assert all(isinstance(m["content"], str) for m in record.messages)
        else:
            assert all(isinstance(v, str) for v in record.fields.values())
        if record.tools is not None:
            json.loads(record.tools)
        assert all(isinstance(v, str) for v in record.meta.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_rows)
def test_fuzz_random_rows(rows):
    for fmt in FORMATS:
        check_conversion(fmt, rows)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_format_shaped_rows(fmt, data):
    check_conversion(fmt, data.draw(st.lists(_row(fmt), min_size=1, max_size=4)))
