"""``tunespec convert``: rewrite a data file from one format into another, through ``Record``.

``convert_file(in_path, from_fmt, to_fmt, out_path, *, strict=False, column_map=None) -> ConvertReport``
converts between ``alpaca``, ``sharegpt``, ``messages`` (OpenAI) and ``prompt_completion``. The input
is any file ``files.read_table`` reads (JSON array, JSONL, ...); the output is JSONL, or a JSON array
(one row per line) when ``out_path`` ends in ``.json``: UTF-8, non-ASCII characters as they are.
The output is written atomically (``atomic.write_text``), so a failure never leaves a half-written file;
an output that is the input (also through a link) or has another suffix than ``.jsonl``/``.json`` is refused.

Rows that cannot be represented in the target format are dropped and counted by reason in the
report; with ``strict=True`` any drop is a ``DataError`` naming the first such row's line (and
nothing is written). No row is lost silently: ``report.read == report.written + sum(report.dropped.values())``.

Every row is first turned into a conversation (alpaca: the user turn is ``join_instruction(instruction,
input)``, the assistant turn ``output``; prompt_completion: ``prompt`` then ``completion``), then
written in the target format:

* ``messages``: ``{"messages": [...], "tools": [{"type": "function", "function": F}, ...]}``; a
  tool_call turn becomes an assistant message with ``tool_calls`` (merged into the assistant message
  just before it, if any, else with ``"content": null``), whose ``arguments`` is the JSON text of
  the call's arguments.
* ``sharegpt``: ``{"conversations": [{"from", "value"}...], "system": ..., "tools": "<JSON text>"}``
  with the roles ``human``, ``gpt``, ``function_call``, ``observation``; a system message becomes
  the ``system`` column.
* ``alpaca``: only user/assistant conversations (no system prompt, tool definitions or tool calls;
  an empty tool list is let go): the last exchange gives ``instruction``/``input``/``output``,
  earlier exchanges become ``history`` (``[[user, assistant], ...]``, written only when non-empty).
* ``prompt_completion``: single-turn user/assistant conversations only.

Lossless convention (the ``input`` key)
---------------------------------------
Alpaca's instruction/input split would be lost in a single user turn, so rows converted from alpaca
into another format carry the alpaca ``input`` as an extra top-level ``"input"`` key, when it is not
empty. Converting back into alpaca uses it: the user turn must end with ``"\\n\\n" + input`` (or,
for a whitespace-only input, be the instruction itself), and what precedes is the instruction. A
row without the key gets ``input: ""`` and its whole user turn as the instruction; a key that does
not match its user turn drops the row. So alpaca -> {messages, sharegpt, prompt_completion} ->
alpaca is exact (a missing ``input`` comes back as ``""``).

Other columns that the source format does not use (ids, metadata, an empty ``system`` or ``tools``
column, ...) are copied unchanged into each output row, after the format's own keys; one whose name
clashes with a key the target format writes drops the row. Hence sharegpt -> messages -> sharegpt
is exact too, provided tool definitions are given as JSON text and tool calls / definitions are in
the standard ``json.dumps`` layout (as in LLaMA-Factory and glaive data); otherwise they come back
as the same JSON values re-serialised. Tool-call ids and other per-message keys of OpenAI messages
are not kept (see ``row_conversion.py``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..atomic import refuse_overlap, write_text
from ..errors import DataError, Problem
from ..records import NotOpenAI, Record, openai_messages, openai_tools
from .files import read_table
from .row_conversion import Dropped, RowConverter, drop_summary, join_instruction

CONVERT_FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion")

_SHAREGPT_ROLES = {
    "user": "human",
    "assistant": "gpt",
    "system": "system",
    "tool_call": "function_call",
    "tool": "observation",
}


@dataclass
class ConvertReport:
    """What ``convert_file`` did: rows read, written, and dropped by reason."""

    in_path: Path
    out_path: Path
    from_fmt: str
    to_fmt: str
    read: int = 0
    written: int = 0
    dropped: Counter = field(default_factory=Counter)
    first_dropped: dict[str, int] = field(default_factory=dict)  # reason -> index of the first row dropped for it

    def summary(self) -> str:
        """``"read 999 rows (alpaca) from A; wrote 999 (messages) to B; no rows dropped"``."""
        return (
            f"read {self.read} rows ({self.from_fmt}) from {self.in_path}; "
            f"wrote {self.written} ({self.to_fmt}) to {self.out_path}; {drop_summary(self.dropped)}"
        )


def convert_file(
    in_path: Path,
    from_fmt: str,
    to_fmt: str,
    out_path: Path,
    *,
    strict: bool = False,
    column_map: dict[str, str] | None = None,
) -> ConvertReport:
    """Convert the rows of ``in_path`` from ``from_fmt`` to ``to_fmt`` and write them to ``out_path``."""
    in_path, out_path = Path(in_path), Path(out_path)
    for name, fmt in (("--from", from_fmt), ("--to", to_fmt)):
        if fmt not in CONVERT_FORMATS:
            raise DataError(
                Problem(
                    f"cannot convert {'from' if name == '--from' else 'to'} format {fmt!r}",
                    path=name,
                    hint=f"use one of: {', '.join(CONVERT_FORMATS)}",
                )
            )
    check_output(in_path, out_path)
    table = read_table(in_path)
    converter = RowConverter(from_fmt, source=in_path.name, column_map=column_map)
    try:
        converter.check_columns(table.rows)
    except DataError as exc:  # name the file these columns are missing from
        raise DataError([p if p.file else replace(p, file=str(in_path)) for p in exc.problems]) from None
    report = ConvertReport(in_path, out_path, from_fmt, to_fmt, read=len(table.rows))
    lines = []
    for index, row in enumerate(table.rows):
        try:
            lines.append(_json_line(convert_row(converter, row, index, to_fmt)))
        except Dropped as drop:
            report.dropped[drop.reason] += 1
            report.first_dropped.setdefault(drop.reason, index)
    if report.dropped and strict:
        raise DataError(
            [
                table.problem(
                    report.first_dropped[reason],
                    f"cannot convert to {to_fmt}: {reason}",
                    hint=f"{_rows_have(count)} this problem; fix them, or convert without --strict to skip them",
                )
                for reason, count in report.dropped.most_common()
            ]
        )
    if not lines:
        raise DataError(
            Problem(f"no row could be converted to {to_fmt}", file=str(in_path), hint=drop_summary(report.dropped))
        )
    if out_path.suffix.lower() == ".json":
        text = "[\n" + ",\n".join(lines) + "\n]\n"
    else:
        text = "\n".join(lines) + "\n"
    write_text_atomically(out_path, text)
    report.written = len(lines)
    return report


def convert_row(converter: RowConverter, row: dict, index: int, to_fmt: str) -> dict:
    """Row ``index`` of the converter's format as a row of ``to_fmt`` (``Dropped`` when it cannot be)."""
    record, used = converter.convert_with_columns(row, index)
    extras = {k: v for k, v in row.items() if k not in used}
    return convert_record(record, converter.info.name, to_fmt, extras)


def _rows_have(count: int) -> str:
    return "1 row has" if count == 1 else f"{count} rows have"


@dataclass
class _Chat:
    """A record as a conversation, plus the alpaca ``input`` key (None: no key)."""

    messages: list[dict[str, str]]
    tools: str | None
    input: object


def convert_record(record: Record, from_fmt: str, to_fmt: str, extras: dict) -> dict:
    """One output row of format ``to_fmt``; ``extras`` are the source row's unused columns.

    Raises ``Dropped`` when the record cannot be represented in ``to_fmt``.
    """
    extras = dict(extras)
    chat = _as_chat(record, from_fmt, extras)
    if to_fmt == "messages":
        row = _messages_row(chat)
    elif to_fmt == "sharegpt":
        row = _sharegpt_row(chat)
    elif to_fmt == "alpaca":
        row = _alpaca_row(chat)
    else:
        row = _prompt_completion_row(chat)
    if to_fmt != "alpaca" and chat.input is not None:
        row["input"] = chat.input
    for key, value in extras.items():
        if key in row:
            raise Dropped(f"column {key!r} clashes with a {to_fmt} key of that name")
        row[key] = value
    return row


def _as_chat(record: Record, from_fmt: str, extras: dict) -> _Chat:
    """The record as a conversation; takes the ``input`` key out of ``extras`` (non-alpaca sources)."""
    if from_fmt != "alpaca":
        marker = extras.pop("input", None)
    elif "input" in extras:  # an unused raw "input" column: alpaca's input is mapped from another column
        raise Dropped("column 'input' clashes with the alpaca input key")
    elif record.fields is not None:
        marker = record.fields["input"] or None
    else:  # alpaca with history: row_conversion.py keeps the input in meta
        marker = record.meta.get("input")
    if record.fields is None:
        return _Chat(list(record.messages or []), record.tools, marker)
    fields = record.fields
    if from_fmt == "alpaca":
        user, assistant = join_instruction(fields["instruction"], fields["input"]), fields["output"]
    else:
        user, assistant = fields["prompt"], fields["completion"]
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return _Chat(messages, None, marker)


# ---------------------------------------------------------------------------- chat targets


def _messages_row(chat: _Chat) -> dict:
    try:
        row: dict = {"messages": openai_messages(chat.messages)}
        tools = openai_tools(chat.tools)
    except NotOpenAI as e:
        raise Dropped(str(e)) from None
    if tools is not None:
        row["tools"] = tools
    return row


def _sharegpt_row(chat: _Chat) -> dict:
    messages = chat.messages
    system = None
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    row: dict = {"conversations": [{"from": _SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in messages]}
    if system is not None:
        row["system"] = system
    if chat.tools is not None:
        row["tools"] = chat.tools
    return row


# ---------------------------------------------------------------------------- single-exchange targets


def _exchanges(chat: _Chat, to_fmt: str) -> list[tuple[str, str]]:
    """The conversation as (user, assistant) pairs; drops what alpaca / prompt_completion cannot hold."""
    roles = {m["role"] for m in chat.messages}
    if "system" in roles:
        raise Dropped(f"system prompt cannot be represented in {to_fmt}")
    if chat.tools is not None and json.loads(chat.tools) not in ([], {}):
        raise Dropped(f"tool definitions cannot be represented in {to_fmt}")
    if roles & {"tool_call", "tool"}:
        raise Dropped(f"tool calls cannot be represented in {to_fmt}")
    contents = [m["content"] for m in chat.messages]  # valid chats alternate user, assistant, ...
    return list(zip(contents[0::2], contents[1::2]))


def _alpaca_row(chat: _Chat) -> dict:
    pairs = _exchanges(chat, "alpaca")
    user, output = pairs[-1]
    instruction, input_text = _split_instruction(user, chat.input)
    row: dict = {"instruction": instruction, "input": input_text, "output": output}
    if len(pairs) > 1:
        row["history"] = [list(pair) for pair in pairs[:-1]]
    return row


def _split_instruction(user: str, marker: object) -> tuple[str, str]:
    """Undo ``join_instruction`` using the ``input`` key (see the module docstring)."""
    if marker is None:
        return user, ""
    if not isinstance(marker, str):
        raise Dropped("column 'input' is not text")
    if not marker.strip():
        return user, marker
    suffix = "\n\n" + marker
    if user.endswith(suffix) and user[: -len(suffix)].strip():
        return user[: -len(suffix)], marker
    raise Dropped("column 'input' does not match the end of the user turn")


def _prompt_completion_row(chat: _Chat) -> dict:
    pairs = _exchanges(chat, "prompt_completion")
    if len(pairs) > 1:
        raise Dropped("multi-turn conversation cannot be represented in prompt_completion")
    return {"prompt": pairs[0][0], "completion": pairs[0][1]}


# ---------------------------------------------------------------------------- writing


def _json_line(row: dict) -> str:
    """One row as one line of JSON (non-ASCII kept as is; values JSON cannot hold, e.g. dates, as text)."""
    line = json.dumps(row, ensure_ascii=False, default=str)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise Dropped("text is not valid Unicode (a lone surrogate)") from None
    return line


OUTPUT_SUFFIXES = (".jsonl", ".json")


def check_output(in_path: Path, out_path: Path) -> None:
    """Refuse an output that is a directory, is (or resolves to) the input, or whose suffix names a format
    convert does not write."""
    if out_path.is_dir():
        raise DataError(Problem("is a directory", file=str(out_path), hint="name an output file, e.g. OUT.jsonl"))
    if out_path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(Problem(f"convert writes JSON Lines (.jsonl) or a JSON array (.json), not {out_path.suffix or 'a file without a suffix'!r}",
                                file=str(out_path), hint="name the output OUT.jsonl or OUT.json"))
    refuse_overlap(out_path, [in_path], is_dir=False)


def write_text_atomically(path: Path, text: str) -> None:
    """Write UTF-8 text to ``path`` whole or not at all (``atomic.write_text``)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(Problem("is a directory", file=str(path), hint="name an output file, e.g. OUT.jsonl"))
    if not path.parent.is_dir():
        raise DataError(
            Problem("the output directory does not exist", file=str(path), hint=f"create {str(path.parent)!r} first")
        )
    try:
        write_text(path, text)
    except OSError as exc:
        raise DataError(Problem(f"cannot write the file: {exc.strerror or exc}", file=str(path),
                                hint="free some space, or write to another directory with -o")) from None
