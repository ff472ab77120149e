"""Tool definitions and chat templates: where a row's ``tools`` end up in its tokens (``data.tools``).

A chat row may carry tool definitions (``Record.tools``). They are given to the chat template the way
``apply_chat_template`` gives them (``tools=``, the OpenAI list ``[{"type": "function", "function": F}]``);
the library's ``chatml`` renders them in its system turn. Templates that do not render them (SmolLM2's,
Llama-2's, a library template without a ``tools`` block) would train the row as if no tool existed, so
``data.tools`` decides, per row:

* ``auto`` (default): the template renders them when it does; a row whose template ignores them gets
  them in its system turn (``system``), counted and warned about.
* ``system``: always in the system turn, in the form of ``system_text`` (the template is not given them).
* ``drop``: never rendered; every row that had some is counted and warned about.

A template *renders* a row's tools when the row's full text with them differs from its text without
them and holds every tool's name. Deciding per row (not once per template) also covers templates that
render tools only in some conversations (e.g. only when there is a system message).

The system-turn form (``system_text``), after the row's system prompt and a blank line when it has one::

    # Tools

    You can call these functions (one JSON definition per line):
    <tools>
    {"type": "function", "function": {"name": "f", "parameters": {}}}
    </tools>

    To call a function, reply with only a JSON object: {"name": <function name>, "arguments": <arguments object>}.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

from ..records import NotOpenAI, Record, openai_calls, openai_tools

MODES = ("auto", "system", "drop")

# outcomes counted in the manifest's "tools" section
BY_TEMPLATE = "rendered_by_template"
IN_SYSTEM = "in_system_turn"
IGNORED = "template_ignores_tools"  # auto: the template ignored them (they went to the system turn)
DROPPED = "dropped"
# and what happened to the rows' tool calls under the model's chat template (place_calls)
CALLS_BY_TEMPLATE = "tool_calls_rendered_by_template"
CALLS_AS_TEXT = "tool_calls_as_text"

TOOLS_HEADER = "# Tools\n\nYou can call these functions (one JSON definition per line):\n<tools>\n"
TOOLS_FOOTER = ("\n</tools>\n\nTo call a function, reply with only a JSON object: "
                '{"name": <function name>, "arguments": <arguments object>}.')


def system_text(tools: list[dict], system: str = "") -> str:
    """The system turn's content with the tool definitions (the OpenAI list) after the system prompt::

        system_text([{"type": "function", "function": {"name": "f"}}], "Be brief.") == (
            'Be brief.\\n\\n# Tools\\n\\nYou can call these functions (one JSON definition per line):\\n<tools>\\n'
            '{"type": "function", "function": {"name": "f"}}\\n</tools>\\n\\nTo call a function, ...')
    """
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (system + "\n\n" if system else "") + TOOLS_HEADER + lines + TOOLS_FOOTER


def in_system_turn(record: Record, default_system: str = "") -> Record:
    """The record with its tool definitions moved into its system message; a row without one gets one
    (after `default_system`, the template's system prompt ``data.template.system``, when there is one)."""
    tools = openai_tools(record.tools) or []
    messages = list(record.messages or [])
    if messages and messages[0]["role"] == "system":
        messages[0] = {**messages[0], "content": system_text(tools, messages[0]["content"])}
    else:
        messages.insert(0, {"role": "system", "content": system_text(tools, default_system)})
    return replace(record, messages=messages, tools=None)


def renders_tools(template, record: Record, fmt: str, tokenizer) -> bool:
    """Whether `template` puts the record's tool definitions into its text (see the module docstring)."""
    with_tools = template.full_text(record, fmt, tokenizer)
    without = template.full_text(replace(record, tools=None), fmt, tokenizer)
    names = [t["function"].get("name", "") for t in openai_tools(record.tools) or []]
    return with_tools != without and all(n in with_tools for n in names)


def place_tools(template, record: Record, fmt: str, tokenizer, mode: str) -> tuple[Record, str | None]:
    """The record as it is rendered under ``data.tools: mode``, and what happened to its tools (one of
    the outcomes above; None when it has none). A template that is not a chat template never sees any."""
    if not record.is_chat or not openai_tools(record.tools):
        return (replace(record, tools=None) if record.tools else record), None
    if mode == "drop":
        return replace(record, tools=None), DROPPED
    default_system = template.system or ""
    if mode == "system":
        return in_system_turn(record, default_system), IN_SYSTEM
    if renders_tools(template, record, fmt, tokenizer):
        return record, BY_TEMPLATE
    return in_system_turn(record, default_system), IGNORED


def as_text_calls(record: Record) -> Record:
    """The record with each ``tool_call`` message as an assistant message whose content is the call's JSON
    text (``{"name": ..., "arguments": ...}``): how a chat template that has no ``tool_calls`` support sees
    a call, and how ``data/<split>.jsonl`` then writes it, so that the file renders to the build's tokens."""
    messages = [{**m, "role": "assistant"} if m["role"] == "tool_call" else m for m in record.messages]
    return replace(record, messages=messages)


def renders_calls(template, record: Record, fmt: str, tokenizer) -> bool:
    """Whether the model's chat template renders the row's assistant ``tool_calls`` (OpenAI schema, as TRL
    gives them): its text holds each call's name and differs from the text with the calls left out (an
    same messages without ``tool_calls``: a template that ignores them renders both alike)."""
    try:
        names = [c["function"]["name"] for m in record.messages if m["role"] == "tool_call"
                 for c in openai_calls(m["content"])]
        with_calls = template.full_text(record, fmt, tokenizer)
    except NotOpenAI:
        return False
    return all(n in with_calls for n in names) and with_calls != template.full_text(record, fmt, tokenizer,
                                                                                  without_calls=True)


def place_calls(template, record: Record, fmt: str, tokenizer) -> tuple[Record, str | None]:
    """The record as the model's chat template (``template: tokenizer`` or a Hugging Face template file)
    renders its tool calls: as ``tool_calls`` where the template renders them (Llama-3.1, Mistral, Qwen,
    Hermes-style templates write their own call syntax), else as the call's JSON text in an assistant turn
    (``as_text_calls``); and which (``CALLS_BY_TEMPLATE``, ``CALLS_AS_TEXT``, None without calls).
    Library templates render calls with their own ``assistant`` block and are left as they are."""
    if template.kind != "tokenizer" or not record.is_chat or not any(m["role"] == "tool_call" for m in record.messages):
        return record, None
    if renders_calls(template, record, fmt, tokenizer):
        return record, CALLS_BY_TEMPLATE
    return as_text_calls(record), CALLS_AS_TEXT


def manifest_tools(mode: str, counts: Counter) -> dict:
    """The manifest's ``tools`` section: the mode and the rows per outcome (all outcomes listed)::

        manifest_tools("auto", Counter({"rendered_by_template": 3})) == {"mode": "auto", "rows_with_tools": 3,
            "rendered_by_template": 3, "in_system_turn": 0, "template_ignores_tools": 0, "dropped": 0}
    """
    outcomes = (BY_TEMPLATE, IN_SYSTEM, IGNORED, DROPPED)
    return {"mode": mode, "rows_with_tools": sum(counts[o] for o in outcomes), **{o: counts[o] for o in outcomes}}
