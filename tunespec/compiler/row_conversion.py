"""The conversion of a dataset format's rows into canonical ``Record``s (the formats themselves are
``tunespec/format_table.py``'s).

Rows and records
----------------
``convert_rows(fmt, rows, source=..., column_map=..., id_column=...)`` turns each row (a dict) into a
``Record`` or *drops* it, counting the reason (``"missing field 'output'"``, ``"unknown role 'xyz'"``,
...). Nothing is silently lost: ``len(records) + sum(drops.values()) == len(rows)``.

* Text values are kept exactly as written (nothing is stripped); a value that is empty or only
  whitespace counts as empty. Integers and floats in text fields become their ``str`` (CSV-free QA
  data often has numeric answers); ``null``/NaN, booleans, lists and objects are not text: the row
  is dropped (``"field 'answer' is not text (got list)"``). An optional field that is missing or
  ``null`` becomes ``""``.
* ``Record.fields`` holds the format's text fields under their canonical names, optional ones
  included (``""`` when absent).
* ``Record.id`` is ``str(row[id_column])``; without ``id_column`` a row's own ``id`` or ``fname``
  column is used when it holds a non-empty string or number; otherwise ``"<source>:<index>"``.
  ``Record.source`` is ``"<source>#<index>"`` (0-based).
* Columns the format does not use are kept in ``Record.meta`` when they hold a string or a number
  (stringified); they are kept for reference, not trained. Other unused columns are ignored.

Column maps
-----------
``column_map`` maps a canonical name to the data's column name, e.g. ChatGLM-style data:
``{"instruction": "prompt", "output": "response", "history": "history"}``. For chat formats it may
also rename the conversation column (``conversations`` / ``messages``), ``system`` and ``tools``, the
keys inside a turn (``role_tag``, ``content_tag``; ShareGPT defaults ``from``/``value``) and the role
names (``user_tag``, ``assistant_tag``, ``system_tag``, ``tool_call_tag``, ``tool_tag``; ShareGPT
defaults ``human``, ``gpt``, ``system``, ``function_call``, ``observation``). A role tag map replaces
the default tag for that role. A key that is not one of these, or a mapped (or required) column that
no row has, is a spec mistake and raises ``DataError`` with a did-you-mean hint.

Alpaca history
--------------
An alpaca row with a non-empty ``history`` column (a list of ``[user, assistant]`` pairs) becomes a
*chat* record: the history turns, then ``instruction`` (joined with ``input`` by ``join_instruction``)
as the user turn and ``output`` as the assistant turn. Its ``meta["input"]`` keeps a non-empty
``input`` so that the instruction/input split stays recoverable (see ``convert.py``).

Chat records
------------
ShareGPT roles ``human``/``gpt``/``system``/``function_call``/``observation`` become ``user``,
``assistant``, ``system``, ``tool_call``, ``tool``. A non-empty top-level ``system`` column becomes a
leading system message. ``tools`` (JSON text or a list) is kept as JSON text in ``Record.tools``:
JSON text exactly as written, a list serialised with ``json.dumps(..., ensure_ascii=False)``;
OpenAI-style ``{"type": "function", "function": F}`` entries are unwrapped to ``F``. A ``tools``
value that is not JSON, a JSON object rather than a list, or a list holding a definition without a
``name`` drops the row (``"field 'tools' is a JSON object, not a list of tool definitions"``).

OpenAI ``messages``: ``content`` is a string or a list of parts; text parts are joined with no
separator, any other part drops the row. An assistant message with ``tool_calls`` becomes (after an
assistant message for its text, when it has any) one ``tool_call`` message whose content is the
JSON of the call ``{"name": ..., "arguments": ...}`` (``arguments`` decoded from its JSON string when
it is valid JSON), or a JSON list of such calls when there are several. Call ids, ``tool_call_id``,
``name`` and other per-message keys are not kept.

A conversation is valid (``chat_problem`` returns ``None``) when:

1. a system message, if any, comes first, and no message is empty (tool results may be empty);
2. then it starts with a user turn, and every turn follows one it may follow:
   user -> assistant | tool_call; assistant -> user | tool_call; tool_call -> tool;
   tool -> tool | assistant | tool_call (several results may answer a multi-call);
3. it has an assistant (or tool_call) turn and ends with one;
4. a per-turn training flag of 1 is only on assistant turns, and at least one assistant turn is trained.

Per-turn training flags: a turn's ``loss_weight`` (LLaMA-Factory v1) or ``weight`` (0 or 1) or ``train``
(true/false) becomes the message's ``"weight"`` (0.0 or 1.0): 0 = the turn is not trained, 1 = it is.
A fractional weight drops the row (``"turn 'loss_weight' is 0.5: only 0 (not trained) or 1 (trained) is
supported"``), as does a flag of the wrong type. Content parts may be OpenAI's ``{"type": "text", "text": …}``
or LLaMA-Factory v1's ``{"type": "text", "value": …}`` (in ``messages`` and ``sharegpt``); an image, audio
or video part drops the row (``"image content part (only text is trained)"``).
"""

from __future__ import annotations

import json
import math
from collections import Counter

from ..errors import DataError, Problem
from ..format_table import FORMATS, TAG_KEYS, FormatInfo, column_map_problems, did_you_mean, get_format
from ..records import NotOpenAI, Record, openai_calls


def join_instruction(instruction: str, input_text: str) -> str:
    """Alpaca's instruction and input as one user turn: ``instruction + "\\n\\n" + input``, or just
    the instruction when the input is empty or only whitespace."""
    return instruction + "\n\n" + input_text if input_text.strip() else instruction


def drop_summary(counter: Counter) -> str:
    """One line: ``"3 rows dropped: 2 × missing field 'output'; 1 × empty field 'input'"``."""
    total = sum(counter.values())
    if not total:
        return "no rows dropped"
    parts = [f"{n} × {reason}" for reason, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]
    return f"{total} row{'s' if total != 1 else ''} dropped: " + "; ".join(parts)


def convert_rows(
    fmt: str,
    rows: list[dict],
    *,
    source: str,
    column_map: dict[str, str] | None = None,
    id_column: str | None = None,
    first_dropped: dict[str, int] | None = None,
) -> tuple[list[Record], Counter]:
    """Convert rows of format ``fmt`` into records; rows that cannot be converted are counted by reason.

    Raises ``DataError`` only for spec mistakes (unknown format, bad ``column_map``, a required or
    mapped column that no row has), never for a single bad row. ``first_dropped``, when given, is
    filled with the index of the first row dropped for each reason (to point at it in messages).
    """
    converter = RowConverter(fmt, source=source, column_map=column_map, id_column=id_column)
    converter.check_columns(rows)
    records: list[Record] = []
    drops: Counter = Counter()
    for index, row in enumerate(rows):
        try:
            records.append(converter.convert(row, index))
        except Dropped as drop:
            drops[drop.reason] += 1
            if first_dropped is not None:
                first_dropped.setdefault(drop.reason, index)
    return records, drops


class Dropped(Exception):
    """A row cannot be converted; ``reason`` is short and stable enough to be counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def chat_problem(messages: list[dict[str, str]]) -> str | None:
    """Why a canonical conversation is not valid (see the module docstring), or None when it is."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    for position, message in enumerate(messages):
        if message["role"] == "system" and position > 0:
            return "system message not at the start"
        if message["role"] != "tool" and not message["content"].strip():
            return f"empty {message['role']} turn"
        if message.get("weight", 0) > 0 and message["role"] not in ("assistant", "tool_call"):
            return f"training flag on a {message['role']} turn (only assistant turns are trained)"
    turns = messages[start:]
    if not any(m["role"] in ("assistant", "tool_call") for m in turns):
        return "no assistant turn"
    if not any(m["role"] in ("assistant", "tool_call") and m.get("weight", 1) > 0 for m in turns):
        return "no trained turn (every assistant turn has a training flag of 0)"
    if turns[0]["role"] != "user":
        return "conversation does not start with a user turn"
    for before, after in zip(turns, turns[1:]):
        if after["role"] not in _MAY_FOLLOW.get(before["role"], ()):
            if after["role"] == "tool":
                return "tool result without a preceding tool call"
            if before["role"] == "tool_call":
                return "tool call not followed by a tool result"
            return "conversation does not alternate user/assistant"
    if turns[-1]["role"] not in ("assistant", "tool_call"):
        return "conversation does not end with an assistant turn"
    return None


_MAY_FOLLOW = {
    "user": ("assistant", "tool_call"),
    "assistant": ("user", "tool_call"),
    "tool_call": ("tool",),
    "tool": ("tool", "assistant", "tool_call"),
}


class RowConverter:
    """Converts the rows of one format, one at a time (``convert_rows`` is the usual entry point).

    ``convert_with_columns`` also says which columns a row's record was built from, so that a
    format converter can carry the *other* columns along unchanged.
    """

    def __init__(
        self, fmt: str, *, source: str, column_map: dict[str, str] | None = None, id_column: str | None = None
    ):
        self.info = get_format(fmt)
        self.source = source
        self.id_column = id_column
        self.mapped = dict(column_map or {})
        _check_column_map(self.info, self.mapped)
        # canonical column name -> the data's column name
        self.columns = {c: self.mapped.get(c, c) for c in self.info.required + self.info.optional}
        tags = dict(self.info.tags)
        tags.update({k: v for k, v in self.mapped.items() if k in TAG_KEYS})
        self.role_key = tags.get("role_tag")
        self.content_key = tags.get("content_tag")
        # the data's role name -> canonical role
        self.roles = {
            tags[f"{role}_tag"]: role
            for role in ("user", "assistant", "system", "tool_call", "tool")
            if tags.get(f"{role}_tag")
        }

    # ------------------------------------------------------------------ whole-table checks

    def check_columns(self, rows: list[dict]) -> None:
        """``DataError`` when a required or mapped column (or ``id_column``) is in no row at all."""
        present: dict[str, None] = {}
        for row in rows:
            if isinstance(row, dict):
                present.update(dict.fromkeys(k for k in row if isinstance(k, str)))
        if not present:
            return
        problems = []
        for name, column in self.columns.items():
            if column in present or (name not in self.info.required and name not in self.mapped):
                continue
            problems.append(self._absent_column_problem(name, column, list(present)))
        if self.id_column is not None and self.id_column not in present:
            problems.append(
                Problem(
                    f"id column {self.id_column!r} is in no row",
                    path="id_column",
                    hint=did_you_mean(self.id_column, present, what="the rows have columns"),
                )
            )
        if problems:
            raise DataError(problems)

    def _absent_column_problem(self, name: str, column: str, present: list[str]) -> Problem:
        hint = did_you_mean(column, present, what="the rows have columns")
        fits = [f for f, info in FORMATS.items() if f != self.info.name and all(c in present for c in info.required)]
        if fits and name not in self.mapped:
            hint += f"; the columns fit format {' or '.join(repr(f) for f in fits)}"
        if name in self.mapped:
            return Problem(
                f"column {column!r} (mapped from {name!r}) is in no row", path=f"column_map.{name}", hint=hint
            )
        hint += f"; or name the column with column_map: {{{name}: <column>}}"
        return Problem(f"format {self.info.name!r} needs a column {column!r}, which no row has", hint=hint)

    # ------------------------------------------------------------------ one row

    def convert(self, row: dict, index: int) -> Record:
        """The record of one row; raises ``Dropped`` when the row cannot be converted."""
        return self.convert_with_columns(row, index)[0]

    def convert_with_columns(self, row: dict, index: int) -> tuple[Record, frozenset[str]]:
        """The record of one row, and the columns it was built from (``Dropped`` when it cannot be)."""
        if not isinstance(row, dict):
            raise Dropped(f"row is not an object (got {_kind(row)})")
        record_id, id_column = self._row_id(row, index)
        if self.info.kind == "fields":
            fields, messages, used, meta = self._fields(row)
            tools = None
        else:
            messages, tools, used = self._chat(row)
            fields, meta = None, {}
        for key, value in row.items():
            if key in used or key == id_column or not isinstance(key, str) or key in meta:
                continue
            text = _scalar_text(value)
            if text is not None:
                meta[key] = text
        record = Record(
            id=record_id, source=f"{self.source}#{index}", fields=fields, messages=messages, tools=tools, meta=meta
        )
        return record, frozenset(used)

    def _row_id(self, row: dict, index: int) -> tuple[str, str | None]:
        """The record id, and the column it came from (None for the default id)."""
        if self.id_column is not None:
            if self.id_column not in row:
                raise Dropped(f"missing id column {self.id_column!r}")
            text = _scalar_text(row[self.id_column])
            if text is None or not text.strip():
                raise Dropped(f"id column {self.id_column!r} is empty or not a string/number")
            return text, self.id_column
        for column in ("id", "fname"):
            text = _scalar_text(row.get(column))
            if text is not None and text.strip():
                return text, column
        return f"{self.source}:{index}", None

    def _label(self, name: str) -> str:
        column = self.columns[name]
        return f"field {name!r}" if column == name else f"field {name!r} (column {column!r})"

    def _fields(self, row: dict) -> tuple[dict | None, list | None, set[str], dict[str, str]]:
        """Field formats: (fields, None, used, meta), or (None, messages, used, meta) for alpaca history."""
        fields: dict[str, str] = {}
        used: set[str] = set()
        for name in self.info.text_fields:
            column = self.columns[name]
            label = self._label(name)
            required = name in self.info.required
            if column not in row:
                if required:
                    raise Dropped(f"missing {label}")
                fields[name] = ""
                continue
            used.add(column)
            value = row[column]
            if _is_null(value) and not required:
                fields[name] = ""
                continue
            text = _text(value, label)
            if required and not text.strip():
                raise Dropped(f"empty {label}")
            fields[name] = text
        history = self._history(row) if "history" in self.columns else []
        if not history:
            return fields, None, used, {}
        used.add(self.columns["history"])
        messages = [
            {"role": role, "content": text} for pair in history for role, text in zip(("user", "assistant"), pair)
        ]
        messages.append({"role": "user", "content": join_instruction(fields["instruction"], fields["input"])})
        messages.append({"role": "assistant", "content": fields["output"]})
        reason = chat_problem(messages)
        if reason:
            raise Dropped(reason)
        meta = {"input": fields["input"]} if fields["input"] else {}
        return None, messages, used, meta

    def _history(self, row: dict) -> list[tuple[str, str]]:
        """Alpaca ``history``: a list of [user, assistant] pairs ([] when absent, null or empty)."""
        value = row.get(self.columns["history"])
        if _is_null(value):
            return []
        if not isinstance(value, list):
            raise Dropped(f"history is not a list (got {_kind(value)})")
        pairs = []
        for pair in value:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise Dropped("history item is not a [user, assistant] pair")
            pairs.append((_text(pair[0], "history turn"), _text(pair[1], "history turn")))
        return pairs

    def _chat(self, row: dict) -> tuple[list[dict[str, str]], str | None, set[str]]:
        """Chat formats: (messages, tools JSON text, used columns)."""
        container = self.columns[self.info.required[0]]
        if container not in row:
            raise Dropped(f"missing field {container!r}")
        turns = row[container]
        if not isinstance(turns, list):
            raise Dropped(f"field {container!r} is not a list (got {_kind(turns)})")
        if not turns:
            raise Dropped("empty conversation")
        used = {container}
        messages: list[dict[str, str]] = []
        system_column = self.columns.get("system")
        if system_column is not None and not _is_null(row.get(system_column)):
            system = _text(row[system_column], "field 'system'")
            if system.strip():
                messages.append({"role": "system", "content": system})
                used.add(system_column)
                if (
                    turns
                    and isinstance(turns[0], dict)
                    and self.roles.get(_hashable(turns[0].get(self.role_key))) == "system"
                ):
                    raise Dropped("system prompt given twice (column and turn)")
        for turn in turns:
            messages.extend(self._turn(turn))
        reason = chat_problem(messages)
        if reason:
            raise Dropped(reason)
        tools = None
        tools_column = self.columns.get("tools")
        if tools_column in row:
            tools = _tools_text(row[tools_column])
            if tools is not None:
                used.add(tools_column)
        return messages, tools, used

    def _turn(self, turn: object) -> list[dict[str, str]]:
        """The canonical message(s) of one turn (an OpenAI assistant turn with tool calls may give two)."""
        if not isinstance(turn, dict):
            raise Dropped(f"turn is not an object (got {_kind(turn)})")
        if self.role_key not in turn:
            raise Dropped(f"turn without {self.role_key!r}")
        tag = turn[self.role_key]
        if not isinstance(tag, str):
            raise Dropped(f"turn {self.role_key!r} is not text (got {_kind(tag)})")
        role = self.roles.get(tag)
        if role is None:
            raise Dropped(f"unknown role {_short(tag)!r}")
        calls = turn.get("tool_calls") if self.info.name == "messages" and role == "assistant" else None
        weight = _turn_weight(turn)
        flag = {} if weight is None else {"weight": weight}
        if calls:  # OpenAI: text (optional) then the calls
            content = turn.get(self.content_key)
            text = "" if _is_null(content) else _content_text(content, parts=True)
            messages = [{"role": "assistant", "content": text, **flag}] if text.strip() else []
            return messages + [{"role": "tool_call", "content": _calls_json(calls), **flag}]
        if self.content_key not in turn:
            raise Dropped(f"turn without {self.content_key!r}")
        content = _content_text(turn[self.content_key], parts=True)
        if role == "tool_call":  # ShareGPT function_call: the call as JSON {name, arguments}
            try:
                openai_calls(content)
            except NotOpenAI as e:
                raise Dropped(str(e)) from None
        return [{"role": role, "content": content, **flag}]


# ---------------------------------------------------------------------------- values


def _kind(value: object) -> str:
    """A short type name for drop reasons: null, bool, list, dict, ..."""
    if value is None:
        return "null"
    return type(value).__name__


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _hashable(value: object) -> object:
    return value if isinstance(value, (str, int, float, type(None))) else None


def _is_null(value: object) -> bool:
    """None, or a float NaN (how pandas and Parquet mark a missing value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: object, what: str) -> str:
    """A text value: strings as they are, numbers as ``str``; anything else drops the row."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not _is_null(value):
        try:
            return str(value)
        except ValueError:  # an integer with more digits than Python will print
            raise Dropped(f"{what} is a number too large to print") from None
    raise Dropped(f"{what} is not text (got {'null' if _is_null(value) else _kind(value)})")


def _scalar_text(value: object) -> str | None:
    """A string or a number as text (for ids and meta); None for anything else."""
    try:
        return _text(value, "value")
    except Dropped:
        return None


def _content_text(content: object, *, parts: bool) -> str:
    """A turn's content: text, a number, or (``parts``: OpenAI) a list of parts whose text parts are joined."""
    if parts and isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                if isinstance(kind, str) and kind.split("_")[0] in _MEDIA:
                    raise Dropped(f"{kind.split('_')[0]} content part (only text is trained)")
                raise Dropped("non-text content part")
            # OpenAI: {"type": "text", "text": ...}; LLaMA-Factory v1: {"type": "text", "value": ...}
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise Dropped("text content part without text")
            texts.append(text)
        return "".join(texts)
    return _text(content, "turn content")


_MEDIA = ("image", "audio", "video", "input")  # input_audio, input_image (OpenAI)

# per-turn training flags, in the order they are read: (key, bool-valued)
TURN_FLAGS = (("loss_weight", False), ("weight", False), ("train", True))


def _turn_weight(turn: dict) -> float | None:
    """A turn's training flag as 0.0 (not trained) or 1.0 (trained); None when it has none.

    ``loss_weight`` (LLaMA-Factory v1) and ``weight``: a number, 0 = not trained, 1 = trained (a
    fractional weight is refused: tunespec trains a token or does not); ``train``: true/false."""
    found = None
    for key, boolean in TURN_FLAGS:
        if key not in turn or _is_null(turn[key]):
            continue
        value = turn[key]
        if boolean:
            if not isinstance(value, bool):
                raise Dropped(f"turn {key!r} is not true/false (got {_kind(value)})")
            weight = 1.0 if value else 0.0
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise Dropped(f"turn {key!r} is not a number (got {_kind(value)})")
            if value not in (0, 1):
                raise Dropped(f"turn {key!r} is {value!r}: only 0 (not trained) or 1 (trained) is supported")
            weight = float(value)
        if found is not None and weight != found:
            raise Dropped("turn training flags disagree")
        found = weight
    return found


def _calls_json(calls: object) -> str:
    """OpenAI ``tool_calls`` as canonical tool_call content: ``{"name", "arguments"}`` JSON, or a list of them."""
    if not isinstance(calls, list):
        raise Dropped(f"tool_calls is not a list (got {_kind(calls)})")
    out = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise Dropped("tool call without a function name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                raise Dropped("tool call arguments are not JSON") from None
        out.append({"name": function["name"], "arguments": arguments})
    return json.dumps(out[0] if len(out) == 1 else out, ensure_ascii=False)


def _tools_text(value: object) -> str | None:
    """Tool definitions as JSON text (``"[]"`` included); None when absent, null or an empty string.

    The value is a JSON list (or JSON text of one) of definitions, each an object with a non-empty
    ``name`` (OpenAI ``{"type": "function", "function": F}`` entries are unwrapped to ``F``). Raises
    ``Dropped`` when it is not JSON, not a list (a single definition as an object included), or a
    definition has no name."""
    if _is_null(value) or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            raise Dropped("field 'tools' is not valid JSON") from None
    elif isinstance(value, (list, dict)):
        parsed = value
    else:
        raise Dropped(f"field 'tools' is not JSON text or a list (got {_kind(value)})")
    if isinstance(parsed, dict):
        raise Dropped("field 'tools' is a JSON object, not a list of tool definitions")
    if not isinstance(parsed, list):
        raise Dropped(f"field 'tools' is not a list of definitions (got {_kind(parsed)})")
    unwrapped = _unwrap_tools(parsed)
    for tool in unwrapped:
        if not isinstance(tool, dict):
            raise Dropped(f"tool definition is not an object (got {_kind(tool)})")
        if not isinstance(tool.get("name"), str) or not tool["name"].strip():
            raise Dropped("tool definition without a name")
    if isinstance(value, str) and unwrapped is parsed:
        return value
    try:
        return json.dumps(unwrapped, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        raise Dropped("field 'tools' cannot be written as JSON") from None


def _unwrap_tools(tools: object) -> object:
    """OpenAI ``[{"type": "function", "function": F}]`` -> ``[F]``; returns ``tools`` itself when nothing changes."""
    if not isinstance(tools, list) or not any(_is_wrapped_tool(t) for t in tools):
        return tools
    return [t["function"] if _is_wrapped_tool(t) else t for t in tools]


def _is_wrapped_tool(tool: object) -> bool:
    return isinstance(tool, dict) and set(tool) == {"type", "function"} and tool["type"] == "function"


# ---------------------------------------------------------------------------- spec checks


def _check_column_map(info: FormatInfo, column_map: dict) -> None:
    problems = column_map_problems(info, column_map)
    if problems:
        raise DataError(problems)
