"""The canonical record every dataset format is converted into.

A record is either *fields* (named text fields, for instruction/summarization/QA-style data that a
prompt template turns into a prompt and a completion) or *messages* (a chat conversation).

Message roles are canonical: ``system``, ``user``, ``assistant``, ``tool_call`` (the assistant calling
a tool; content is the call as JSON text) and ``tool`` (a tool's result).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Record:
    id: str  # stable id: the row's own id column when it has one, else "<source>:<row index>"
    source: str  # where the row came from: "<source name>#<row index>" (0-based row index)
    fields: dict[str, str] | None = None
    # [{"role": ROLE, "content": str}, ...]; a message may also carry "weight": 0.0 or 1.0, a per-turn
    # training flag from the data (LLaMA-Factory ``loss_weight``, ``train``, ``weight``): 0 = not trained,
    # 1 = trained, also for turns that are not the assistant's. Without it, assistant turns are trained.
    messages: list[dict] | None = None
    tools: str | None = None  # tool definitions as JSON text (ShareGPT "tools")
    meta: dict[str, str] = field(default_factory=dict)  # extra, untrained columns kept for reference
    # evaluation references read from the row's columns (evaluation.reference_fields; references.py);
    # None when the spec names none
    references: tuple[str, ...] | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


# ---------------------------------------------------------------------------- the OpenAI/TRL message schema


class NotOpenAI(ValueError):
    """A canonical record that cannot be written in the OpenAI message schema (its reason is short)."""


def openai_calls(content: str) -> list[dict]:
    """Canonical ``tool_call`` content as OpenAI ``tool_calls``, arguments as an *object* (what TRL and
    chat templates that ``tojson`` the arguments expect)::

        '{"name": "f", "arguments": {"x": 1}}' -> [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]

    Arguments that are JSON text of an object are decoded; ``NotOpenAI`` when a call has no name."""
    try:
        parsed = json.loads(content)
    except (ValueError, RecursionError):
        raise NotOpenAI("tool call is not JSON") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise NotOpenAI("tool call is not a JSON object {name, arguments}")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                raise NotOpenAI("tool call arguments are not JSON") from None
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def openai_tools(tools: str | None) -> list[dict] | None:
    """``Record.tools`` (JSON text) as an OpenAI ``tools`` list: each definition wrapped as
    ``{"type": "function", "function": F}``; None when there are none."""
    if tools is None:
        return None
    parsed = json.loads(tools)
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise NotOpenAI("tools is not a JSON list")
    return [t if _is_openai_tool(t) else {"type": "function", "function": t} for t in parsed]


def _is_openai_tool(tool: object) -> bool:
    return isinstance(tool, dict) and tool.get("type") == "function" and "function" in tool


def openai_messages(messages: list[dict]) -> list[dict]:
    """Canonical messages in the OpenAI/TRL schema: a ``tool_call`` message becomes an assistant message
    with ``tool_calls`` (merged into the assistant message right before it, if any, else with
    ``content: ""``); ``tool`` stays ``tool``. A message's ``weight`` (see ``Record``) is written back as
    ``train: false`` when it is 0, so a per-turn flag survives the round trip."""
    out: list[dict] = []
    previous = None
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "tool_call":
            calls = openai_calls(content)
            if previous == "assistant" and "tool_calls" not in out[-1]:
                out[-1]["tool_calls"] = calls
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
        else:
            out.append({"role": role, "content": content})
        if "weight" in message:
            out[-1]["train"] = message["weight"] > 0
        previous = role
    return out
