"""`tunespec convert` backend: format-to-format conversion, lossless round trips, drops, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunespec.compiler.convert import convert_file, convert_row
from tunespec.compiler.row_conversion import RowConverter
from tunespec.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"../shared/data not present: {path} is missing")
    return path


def write_json(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def load(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def round_trip(tmp_path: Path, source: Path, fmt: str, via: str, suffix: str = ".jsonl") -> list[dict]:
    middle = tmp_path / f"middle.{via}{suffix}"
    back = tmp_path / f"back.{fmt}.json"
    first = convert_file(source, fmt, via, middle)
    second = convert_file(middle, via, fmt, back)
    assert first.written == first.read and second.written == second.read, (first.summary(), second.summary())
    return load(back)


UNICODE_ALPACA = [
    {"instruction": "Traduis en français :", "input": "Good morning, 世界 🌍", "output": "Bonjour, 世界 🌍"},
    {"instruction": "  Leading and trailing spaces  ", "input": "", "output": "kept\n\n"},
    {"instruction": "Whitespace-only input", "input": "   ", "output": "still there"},
    {"instruction": "Ends like an input\n\nX", "input": "X", "output": "only one suffix is split off"},
    {"instruction": "Extra columns", "input": "in", "output": "out", "id": 7, "tags": ["a", "b"], "meta": {"k": None}},
    {
        "instruction": "Now 3+3?",
        "input": "quick",
        "output": "6",
        "history": [["1+1?", "2"], ["Привет", "Здравствуйте"]],
    },
    {"instruction": "No history", "input": "", "output": "o", "history": []},
]


# ---------------------------------------------------------------------------- lossless round trips


@pytest.mark.parametrize("via", ["messages", "sharegpt"])
def test_unicode_alpaca_round_trip_is_exact(tmp_path, via):
    source = write_json(tmp_path / "alpaca.json", UNICODE_ALPACA)
    assert round_trip(tmp_path, source, "alpaca", via) == UNICODE_ALPACA


def test_alpaca_prompt_completion_round_trip(tmp_path):
    rows = [row for row in UNICODE_ALPACA if not row.get("history")]
    source = write_json(tmp_path / "alpaca.json", rows)
    assert round_trip(tmp_path, source, "alpaca", "prompt_completion") == rows


@pytest.mark.parametrize("via", ["messages", "sharegpt", "prompt_completion"])
def test_real_alpaca_round_trip_is_exact(tmp_path, via):
    source = shared("alpaca/alpaca_en_demo.json")
    assert round_trip(tmp_path, source, "alpaca", via) == json.loads(source.read_text(encoding="utf-8"))


def test_real_glaive_sharegpt_messages_round_trip_is_exact(tmp_path):
    source = shared("sharegpt/glaive_toolcall_en_demo.json")
    assert round_trip(tmp_path, source, "sharegpt", "messages", suffix=".json") == json.loads(
        source.read_text(encoding="utf-8")
    )


def test_sharegpt_round_trip_with_system_and_extra_columns(tmp_path):
    rows = [
        {
            "conversations": [{"from": "human", "value": "Hi ü"}, {"from": "gpt", "value": "Hello"}],
            "system": "Be kind.",
            "lang": "en",
        },
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "", "tools": ""},
        {
            "conversations": [
                {"from": "human", "value": "Weather?"},
                {"from": "gpt", "value": "Let me look."},
                {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Zürich"}}'},
                {"from": "observation", "value": '{"t": 18}'},
                {"from": "gpt", "value": "18 °C"},
            ],
            "tools": '[{"name": "weather", "parameters": {"type": "object"}}]',
        },
    ]
    source = write_json(tmp_path / "sharegpt.json", rows)
    assert round_trip(tmp_path, source, "sharegpt", "messages") == rows


# ---------------------------------------------------------------------------- output shapes


def test_alpaca_to_messages_shape_and_input_key(tmp_path):
    source = write_json(tmp_path / "a.json", UNICODE_ALPACA[:2])
    out = tmp_path / "m.jsonl"
    convert_file(source, "alpaca", "messages", out)
    first, second = load(out)
    assert first == {
        "messages": [
            {"role": "user", "content": "Traduis en français :\n\nGood morning, 世界 🌍"},
            {"role": "assistant", "content": "Bonjour, 世界 🌍"},
        ],
        "input": "Good morning, 世界 🌍",
    }
    assert "input" not in second  # an empty input needs no key
    assert "世界" in out.read_text(encoding="utf-8")  # not \\u-escaped


def test_sharegpt_to_messages_openai_tool_calls(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "Weather?"},
                {"from": "gpt", "value": "Checking."},
                {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "Sunny."},
            ],
            "tools": '[{"name": "weather"}]',
        }
    ]
    out = tmp_path / "m.jsonl"
    convert_file(write_json(tmp_path / "s.json", rows), "sharegpt", "messages", out)
    (row,) = load(out)
    assert row["messages"][1] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}],
    }
    assert row["messages"][2] == {"role": "tool", "content": "sunny"}
    assert row["tools"] == [{"type": "function", "function": {"name": "weather"}}]


def test_messages_to_sharegpt_moves_system_to_its_column(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ]
        }
    ]
    out = tmp_path / "s.json"
    convert_file(write_json(tmp_path / "m.json", rows), "messages", "sharegpt", out)
    assert load(out) == [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "S"}
    ]


def test_json_output_is_an_array_jsonl_otherwise(tmp_path):
    source = write_json(tmp_path / "a.json", UNICODE_ALPACA[:3])
    convert_file(source, "alpaca", "prompt_completion", tmp_path / "out.json")
    convert_file(source, "alpaca", "prompt_completion", tmp_path / "out.jsonl")
    assert isinstance(json.loads((tmp_path / "out.json").read_text(encoding="utf-8")), list)
    assert len((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    assert load(tmp_path / "out.json") == load(tmp_path / "out.jsonl")


def test_jsonl_input_and_column_map(tmp_path):
    source = tmp_path / "glm.jsonl"
    source.write_text(
        json.dumps({"prompt": "2+2?", "response": "4", "history": [["hi", "hello"]]}) + "\n", encoding="utf-8"
    )
    out = tmp_path / "out.jsonl"
    convert_file(source, "alpaca", "messages", out, column_map={"instruction": "prompt", "output": "response"})
    assert [m["content"] for m in load(out)[0]["messages"]] == ["hi", "hello", "2+2?", "4"]


# ---------------------------------------------------------------------------- drops


def test_chat_to_alpaca_drops_what_it_cannot_hold(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "q1"},
                {"from": "gpt", "value": "a1"},
                {"from": "human", "value": "q2"},
                {"from": "gpt", "value": "a2"},
            ]
        },
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "S"},
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
                {"from": "observation", "value": "r"},
                {"from": "gpt", "value": "a"},
            ]
        },
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": '[{"name": "f"}]'},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[]"},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
    ]
    source = write_json(tmp_path / "s.json", rows)
    report = convert_file(source, "sharegpt", "alpaca", tmp_path / "a.jsonl")
    assert report.read == 6 and report.written == 2
    assert report.written + sum(report.dropped.values()) == report.read
    assert dict(report.dropped) == {
        "system prompt cannot be represented in alpaca": 1,
        "tool calls cannot be represented in alpaca": 1,
        "tool definitions cannot be represented in alpaca": 1,
        "unknown role 'bot'": 1,
    }
    assert report.first_dropped["unknown role 'bot'"] == 5
    assert load(tmp_path / "a.jsonl") == [
        {"instruction": "q2", "input": "", "output": "a2", "history": [["q1", "a1"]]},
        {"instruction": "q", "input": "", "output": "a"},
    ]
    assert "4 rows dropped" in report.summary()

    report = convert_file(source, "sharegpt", "prompt_completion", tmp_path / "pc.jsonl")
    assert report.dropped["multi-turn conversation cannot be represented in prompt_completion"] == 1
    assert report.written == 1


def test_real_glaive_to_alpaca_counts(tmp_path):
    report = convert_file(shared("sharegpt/glaive_toolcall_en_demo.json"), "sharegpt", "alpaca", tmp_path / "a.jsonl")
    assert report.read == 300 and report.written + sum(report.dropped.values()) == 300
    assert set(report.dropped) <= {
        "tool definitions cannot be represented in alpaca",
        "tool calls cannot be represented in alpaca",
    }
    assert report.written == len(load(tmp_path / "a.jsonl")) > 0


def test_input_key_that_does_not_match_drops(tmp_path):
    rows = [
        {
            "messages": [{"role": "user", "content": "Do X\n\nwith Y"}, {"role": "assistant", "content": "ok"}],
            "input": "with Z",
        }
    ]
    report = convert_file(
        write_json(tmp_path / "m.json", rows + [{**rows[0], "input": "with Y"}]),
        "messages",
        "alpaca",
        tmp_path / "a.json",
    )
    assert report.dropped == {"column 'input' does not match the end of the user turn": 1}
    assert load(tmp_path / "a.json") == [{"instruction": "Do X", "input": "with Y", "output": "ok"}]


def test_extra_column_clashing_with_target_key_drops(tmp_path):
    rows = [
        {"instruction": "i", "input": "", "output": "o", "messages": "a column named like the target's key"},
        {"instruction": "i", "input": "", "output": "o"},
    ]
    report = convert_file(write_json(tmp_path / "a.json", rows), "alpaca", "messages", tmp_path / "m.json")
    assert report.dropped == {"column 'messages' clashes with a messages key of that name": 1} and report.written == 1


def test_lone_surrogate_is_dropped_not_crashed(tmp_path):
    source = tmp_path / "a.json"
    source.write_text(
        '[{"instruction": "bad \\ud800", "output": "o"}, {"instruction": "ok", "output": "o"}]', encoding="utf-8"
    )
    report = convert_file(source, "alpaca", "messages", tmp_path / "m.jsonl")
    assert report.dropped == {"text is not valid Unicode (a lone surrogate)": 1} and report.written == 1


# ---------------------------------------------------------------------------- property: round trips are exact

_some_text = st.text(max_size=12) | st.sampled_from(["", " ", "\n\n", "x\n\n", "\n\ny"])
_kept_text = _some_text.filter(str.strip)  # required texts must not be blank
_alpaca_rows = st.builds(
    lambda instruction, input_text, output, history, extra: {
        "instruction": instruction,
        "input": input_text,
        "output": output,
        **history,
        **extra,
    },
    _kept_text,
    _some_text,
    _kept_text,
    st.one_of(
        st.just({}),
        st.lists(st.tuples(_kept_text, _kept_text).map(list), min_size=1, max_size=2).map(lambda h: {"history": h}),
    ),
    st.dictionaries(
        st.sampled_from(["id", "source", "score", "tags"]),
        st.none() | st.integers() | st.text(max_size=4) | st.lists(st.integers(), max_size=2),
        max_size=2,
    ),
)


def through(rows: list[dict], fmt: str, via: str) -> list[dict]:
    """fmt -> via -> fmt in memory, through JSON text as a file would be."""

    def step(rows, source_fmt, target_fmt):
        converter = RowConverter(source_fmt, source="mem")
        return [
            json.loads(json.dumps(convert_row(converter, row, i, target_fmt), ensure_ascii=False))
            for i, row in enumerate(rows)
        ]

    return step(step(rows, fmt, via), via, fmt)


@pytest.mark.parametrize("via", ["messages", "sharegpt", "prompt_completion"])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_alpaca_rows, min_size=1, max_size=4))
def test_property_alpaca_round_trip(via, rows):
    if via == "prompt_completion":
        rows = [{k: v for k, v in row.items() if k != "history"} for row in rows]
    assert through(rows, "alpaca", via) == rows


_roles = st.sampled_from(["human", "gpt"])
_sharegpt_rows = st.builds(
    lambda pairs, system, tools: {
        "conversations": [
            {"from": role, "value": text} for pair in pairs for role, text in zip(("human", "gpt"), pair)
        ],
        **system,
        **tools,
    },
    st.lists(st.tuples(_kept_text, _kept_text), min_size=1, max_size=3),
    st.one_of(st.just({}), _kept_text.map(lambda s: {"system": s}), st.just({"system": ""})),
    st.one_of(
        st.just({}),
        st.just({"tools": "[]"}),
        st.just({"tools": ""}),
        _kept_text.map(lambda d: {"tools": json.dumps([{"name": "f", "description": d}], ensure_ascii=False)}),
    ),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_sharegpt_rows, min_size=1, max_size=4))
def test_property_sharegpt_messages_round_trip(rows):
    assert through(rows, "sharegpt", "messages") == rows


# ---------------------------------------------------------------------------- errors and atomicity


def test_strict_names_the_row_and_writes_nothing(tmp_path):
    source = tmp_path / "s.jsonl"
    source.write_text(
        json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
        + "\n\n"
        + json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "S"})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    out.write_text("previous content\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        convert_file(source, "sharegpt", "alpaca", out, strict=True)
    text = info.value.render()
    assert f"{source}:3: row 1: cannot convert to alpaca: system prompt cannot be represented in alpaca" in text
    assert out.read_text(encoding="utf-8") == "previous content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "s.jsonl"]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    source = write_json(tmp_path / "a.json", UNICODE_ALPACA[:2])
    out = tmp_path / "out.jsonl"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tunespec.atomic.os.replace", broken_replace)
    with pytest.raises(DataError, match="No space left"):
        convert_file(source, "alpaca", "messages", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_everything_dropped_is_an_error(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "S"}]
    with pytest.raises(DataError, match="no row could be converted to alpaca"):
        convert_file(write_json(tmp_path / "s.json", rows), "sharegpt", "alpaca", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_arguments(tmp_path):
    source = write_json(tmp_path / "a.json", UNICODE_ALPACA[:1])
    with pytest.raises(DataError, match="cannot convert to format 'qa'"):
        convert_file(source, "alpaca", "qa", tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="cannot convert from format 'summarization'"):
        convert_file(source, "summarization", "alpaca", tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="output directory does not exist"):
        convert_file(source, "alpaca", "messages", tmp_path / "nope" / "o.jsonl")
    with pytest.raises(DataError, match="file not found"):
        convert_file(tmp_path / "missing.json", "alpaca", "messages", tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="needs a column 'conversations'"):
        convert_file(source, "sharegpt", "alpaca", tmp_path / "o.jsonl")
