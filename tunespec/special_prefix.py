"""The special prefix (BOS for Llama-likes) put before every row and prompt: found from the tokenizer,
recorded in the manifest by the compiler, put before a prompt by the runtime exactly as before the rows."""

from __future__ import annotations


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before text (BOS for Llama-likes, nothing for GPT-2/SmolLM)."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    for i in range(len(with_special) - len(without) + 1):
        if with_special[i : i + len(without)] == without:
            return list(with_special[:i])
    return []


PREFIX_RULE = "unless_present"  # the manifest's ``prefix_rule``: how ``prefix_ids`` is put before a row


def manifest_prefix(prefix: list[int], prefixed: int, rows: int) -> dict:
    """The manifest's record of the prefix the rows got, so the runtime puts the same before a prompt.

    Every row got it (a field template, a chat template that does not write BOS): ``{"prefix_ids": prefix}``,
    always put before a prompt. No row got it (a chat template writing ``{{ bos_token }}``: the text holds
    it): ``{"prefix_ids": [], "prefix_in_text": prefix}``. Some did: ``prefix_rule: unless_present``::

        manifest_prefix([1], 5, 5) == {"prefix_ids": [1]}
        manifest_prefix([1], 0, 5) == {"prefix_ids": [], "prefix_in_text": [1]}
        manifest_prefix([], 0, 5) == {"prefix_ids": []}
    """
    if not prefix or prefixed == rows:
        return {"prefix_ids": list(prefix)}
    if prefixed == 0:
        return {"prefix_ids": [], "prefix_in_text": list(prefix)}
    return {"prefix_ids": list(prefix), "prefix_rule": PREFIX_RULE}


def with_prefix(prefix: list[int], ids: list[int], rule: str | None = PREFIX_RULE) -> list[int]:
    """A row's or prompt's ids with the special prefix before them, unless they already start with it.

    The one place the prefix is applied: training rows, generation and evaluation prompts. Text rendered
    by a chat template that writes ``{{ bos_token }}`` is encoded without special tokens (as
    ``apply_chat_template`` does) and keeps its one BOS; text that does not start with it (a field
    template, or a chat template that does not write it) gets the BOS the tokenizer puts before text::

        with_prefix([1], [1, 733]) == [1, 733]; with_prefix([1], [733]) == [1, 733]; with_prefix([], [5]) == [5]

    ``rule=None`` is the rule of builds made before ``prefix_rule`` existed: the prefix always.
    """
    if not prefix or (rule == PREFIX_RULE and list(ids[: len(prefix)]) == list(prefix)):
        return list(ids)
    return list(prefix) + list(ids)
