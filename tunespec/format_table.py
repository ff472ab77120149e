"""The dataset formats: their names, columns, reference answers and default templates.

The one table of them. The spec's choice of format, the compiler's row converters
(``compiler/row_conversion.py``) and the runtime's prompts all read it.

Formats (``FORMATS``):

====================  ======  ==============================================  ===================
name                  kind    columns (required; *optional*)                  reference answer
====================  ======  ==============================================  ===================
``alpaca``            fields  instruction, *input*, output, *history*         output
``summarization``     fields  dialogue, summary, *topic*                      summary
``qa``                fields  question, answer                                answer
``input_output``      fields  input, output                                   output
``text``              fields  text                                            (none)
``prompt_completion`` fields  prompt, completion                              completion
``sharegpt``          chat    conversations, *system*, *tools*                last assistant turn
``messages``          chat    messages, *tools*                               last assistant turn
====================  ======  ==============================================  ===================
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from .errors import DataError, Problem

FormatName = Literal[
    "alpaca", "summarization", "qa", "input_output", "text", "prompt_completion", "sharegpt", "messages"
]
"""The names ``data.format`` accepts: the keys of ``FORMATS``."""

TAG_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag", "tool_call_tag", "tool_tag")


@dataclass(frozen=True)
class FormatInfo:
    """What a format's rows look like, and how a spec uses it by default."""

    name: FormatName
    kind: str  # "fields" (named text fields) or "chat" (a conversation)
    required: tuple[str, ...]  # required columns
    optional: tuple[str, ...]  # optional columns
    reference: str | None  # field holding the reference answer (ROUGE); None: text, or chat (last assistant turn)
    template: str  # default prompt template name
    tags: tuple[tuple[str, str | None], ...] = ()  # chat: default role/content keys and role names

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The keys of ``Record.fields`` for this format (empty for chat formats)."""
        if self.kind != "fields":
            return ()
        return tuple(c for c in self.required + self.optional if c != "history")

    @property
    def map_keys(self) -> tuple[str, ...]:
        """The keys a ``column_map`` may use for this format."""
        return self.required + self.optional + (TAG_KEYS if self.kind == "chat" else ())


_SHAREGPT_TAGS = (
    ("role_tag", "from"),
    ("content_tag", "value"),
    ("user_tag", "human"),
    ("assistant_tag", "gpt"),
    ("system_tag", "system"),
    ("tool_call_tag", "function_call"),
    ("tool_tag", "observation"),
)
_MESSAGES_TAGS = (
    ("role_tag", "role"),
    ("content_tag", "content"),
    ("user_tag", "user"),
    ("assistant_tag", "assistant"),
    ("system_tag", "system"),
    ("tool_call_tag", None),  # OpenAI tool calls come from an assistant message's ``tool_calls``
    ("tool_tag", "tool"),
)

FORMATS: dict[str, FormatInfo] = {
    f.name: f
    for f in (
        FormatInfo("alpaca", "fields", ("instruction", "output"), ("input", "history"), "output", "alpaca"),
        FormatInfo("summarization", "fields", ("dialogue", "summary"), ("topic",), "summary", "instruct_output_end"),
        FormatInfo("qa", "fields", ("question", "answer"), (), "answer", "question_answer"),
        FormatInfo("input_output", "fields", ("input", "output"), (), "output", "input_output"),
        FormatInfo("text", "fields", ("text",), (), None, "text"),
        FormatInfo("prompt_completion", "fields", ("prompt", "completion"), (), "completion", "prompt_completion"),
        FormatInfo("sharegpt", "chat", ("conversations",), ("system", "tools"), None, "tokenizer", _SHAREGPT_TAGS),
        FormatInfo("messages", "chat", ("messages",), ("tools",), None, "tokenizer", _MESSAGES_TAGS),
    )
}
CHAT_FORMATS = {name for name, f in FORMATS.items() if f.kind == "chat"}
FORMATS_WITHOUT_REFERENCE = {name for name, f in FORMATS.items() if f.kind == "fields" and f.reference is None}
"""Formats with no reference answer for ROUGE (chat formats have one: the last assistant turn)."""


def get_format(name: str) -> FormatInfo:
    """The ``FormatInfo`` of a format name; an unknown name is a ``DataError`` with a did-you-mean."""
    info = FORMATS.get(name)
    if info is None:
        raise DataError(Problem(f"unknown data format {name!r}", path="format", hint=did_you_mean(name, FORMATS)))
    return info


def column_map_problems(info: FormatInfo, column_map: dict) -> list[Problem]:
    """What is wrong with a column_map for this format (paths ``column_map.KEY``); run at validate time too."""
    problems = []
    for key, value in column_map.items():
        if key not in info.map_keys:
            hint = did_you_mean(str(key), info.map_keys, what=f"format {info.name!r} has")
            hint += "; column_map maps a field of the format to a column of the data: {field: column}"
            problems.append(
                Problem(f"{key!r} is not a field of format {info.name!r}", path=f"column_map.{key}", hint=hint)
            )
        elif not isinstance(value, str) or not value:
            problems.append(Problem(f"must be a column name (got {value!r})", path=f"column_map.{key}",
                                    hint="write the data's column name, e.g. {summary: abstract}"))
    return problems


def did_you_mean(word: str, choices, *, what: str = "choose from") -> str:
    """``"did you mean 'x'? choose from: a, b, c"`` (the did-you-mean part only when something is close)."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    listed = ", ".join(choices[:20]) + (", …" if len(choices) > 20 else "")
    return (f"did you mean {close[0]!r}? " if close else "") + f"{what}: {listed}"
