"""The canonical record every dataset format is converted into.

A record is either *fields* (named text fields, for instruction/summarization/QA-style data that a
prompt template turns into a prompt and a completion) or *messages* (a chat conversation).

Message roles are canonical: ``system``, ``user``, ``assistant``, ``tool_call`` (the assistant calling
a tool; content is the call as JSON text) and ``tool`` (a tool's result).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant", "tool_call", "tool")


@dataclass(frozen=True)
class Record:
    id: str  # stable id: the row's own id column when it has one, else "<source>:<row index>"
    source: str  # where the row came from: "<source name>#<row index>" (0-based row index)
    fields: dict[str, str] | None = None
    messages: list[dict[str, str]] | None = None  # [{"role": ROLE, "content": str}, ...]
    tools: str | None = None  # tool definitions as JSON text (ShareGPT "tools")
    meta: dict[str, str] = field(default_factory=dict)  # extra, untrained columns kept for reference

    @property
    def is_chat(self) -> bool:
        return self.messages is not None
