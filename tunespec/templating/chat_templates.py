"""Hugging Face chat templates (``template: tokenizer``, or a template file in their form): rendering a
conversation with ``apply_chat_template`` and finding its trained assistant text, bounded in time, and the
static check of their syntax.

Assistant turns are found by rendering growing prefixes of the conversation; a chat template with
``{% generation %}`` blocks (TRL's ``assistant_only_loss``) has exactly its blocks trained
(``render_generation_blocks``), as transformers' ``return_assistant_tokens_mask`` marks them.
"""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import threading

import jinja2
import jinja2.ext
from jinja2 import nodes

from ..errors import Problem, TemplateError
from ..records import openai_messages
from .segments import Segment


def to_hf_messages(messages: list[dict[str, str]]) -> tuple[list[dict], list[bool]]:
    """Canonical messages in the shape HF chat templates (and TRL, reading ``data/<split>.jsonl``) take: the
    OpenAI schema of ``records.openai_messages`` (a ``tool_call`` message is an assistant message with
    ``tool_calls``), and whether each message is trained (its per-turn flag)."""
    hf = openai_messages(messages)
    return [{k: v for k, v in m.items() if k != "train"} for m in hf], [m.get("train", True) for m in hf]


def own_chat_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else None


GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_blocks(chat_template: str | None) -> bool:
    """Whether a Hugging Face chat template marks assistant text with ``{% generation %}`` blocks (TRL's
    ``assistant_only_loss``, transformers' ``return_assistant_tokens_mask``)."""
    return bool(chat_template) and GENERATION_TAG.search(chat_template) is not None


def apply_chat_template(tokenizer, messages: list[dict], *, add_generation_prompt: bool,
                    tools: list[dict] | None, chat_template: str | None = None) -> str:
    """The chat template's text (the tokenizer's own, or `chat_template`: a chat template file's text);
    ``tools`` (the OpenAI list ``[{"type": "function", "function": F}]``) is passed as ``tools=``, as
    ``apply_chat_template`` takes it."""
    if tokenizer is None or not (chat_template or getattr(tokenizer, "chat_template", None)):
        raise TemplateError("template `tokenizer` needs a tokenizer with a chat template",
                            hint="choose a library template such as chatml, or a model that ships a chat template")
    kwargs = {"tools": tools} if tools else {}
    if chat_template:
        kwargs["chat_template"] = chat_template
    try:
        with time_limit(CHAT_TEMPLATE_SECONDS):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                 **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever the template's own code raises
        raise chat_template_error(e, "chat template" if chat_template else "model's chat template") from None


CHAT_TEMPLATE_SECONDS = 10.0  # longest one rendering of a Hugging Face chat template may take


class TemplateTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """A Hugging Face chat template runs in transformers' sandbox, which bounds no loop: one rendering that runs
    longer than `seconds` (``range(10**5)`` inside ``range(10**5)``) is stopped by SIGALRM (main thread only;
    elsewhere, and where an alarm is already set, it runs unbounded)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer") \
            or signal.getitimer(signal.ITIMER_REAL)[0]:
        yield
        return

    def expired(signum, frame):
        raise TemplateTimeout(f"it ran for more than {seconds:g} s on one row")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def chat_template_error(e: Exception, who: str) -> TemplateError:
    """What a Hugging Face chat template raised (rendered by transformers' sandbox), as a TemplateError: its
    ``raise_exception`` message as it is, anything else with the exception's type."""
    if isinstance(e, TemplateTimeout):
        return TemplateError(f"the {who} takes too long: {e}", hint="a loop in the template runs away (nested "
                             "range() loops?): bound it")
    if isinstance(e, RecursionError):
        return TemplateError(f"the {who} recurses too deeply", hint="a macro that calls itself needs a condition "
                             "that ends it")
    if isinstance(e, jinja2.exceptions.SecurityError):
        return TemplateError(f"the {who} failed: unsafe template operation: {e}", hint="templates may only read "
                             "the conversation")
    if isinstance(e, jinja2.TemplateError):
        return TemplateError(f"the {who} failed: {e}", hint="check the conversation's roles")
    text = f"{type(e).__name__}: {e}".split("\n")[0][:300]
    return TemplateError(f"the {who} failed: {text}", hint="fix the template's expression (it fails on this row)")


def render_with_tokenizer(messages: list[dict[str, str]], tokenizer, tools: list[dict] | None,
                           chat_template: str | None = None) -> list[Segment]:
    """Split the model's rendering of a conversation into trained assistant turns and the rest."""
    hf, trained = to_hf_messages(messages)
    segments: list[Segment] = []
    done = ""
    apply = functools.partial(apply_chat_template, tokenizer, tools=tools, chat_template=chat_template)
    for i, m in enumerate(hf):
        if m["role"] != "assistant":
            continue
        before = apply(hf[:i], add_generation_prompt=True) if i else ""
        through = apply(hf[: i + 1], add_generation_prompt=False)
        if not before.startswith(done) or not through.startswith(before):
            raise TemplateError("the model's chat template does not render conversations as growing prefixes",
                                hint="use a library chat template such as chatml, or mark the assistant text "
                                "with {% generation %} blocks")
        segments.append(Segment(before[len(done):], False))
        segments.append(Segment(through[len(before):], trained[i]))
        done = through
    full = apply(hf, add_generation_prompt=False)
    if full.startswith(done) and len(full) > len(done):
        segments.append(Segment(full[len(done):], False))
    return [s for s in segments if s.text]


def render_generation_blocks(messages: list[dict[str, str]], tokenizer, tools: list[dict] | None,
                              chat_template: str | None = None, *, add_eos: bool = True) -> list[Segment]:
    """Split a conversation rendered by a chat template with ``{% generation %}`` blocks: the text of each
    block is trained (as transformers' ``return_assistant_tokens_mask`` marks it), everything else not.

    The spans come from transformers' own renderer (``render_jinja_template``, what
    ``apply_chat_template`` calls), and its text is checked to equal ``apply_chat_template``'s. The k-th
    block is the k-th assistant turn for per-turn training flags. EOS, with `add_eos`: the EOS token the
    template writes right after a block joins the block (trained, as with every template each trained turn
    ends in a trained EOS); a block followed by no EOS gets one appended by tokenization. Without
    `add_eos`, exactly the blocks are trained."""
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # pragma: no cover - an older transformers
        raise TemplateError("{% generation %} blocks need transformers' render_jinja_template, missing in this version",
                            hint="upgrade transformers, or remove the {% generation %} blocks") from None

    hf, trained = to_hf_messages(messages)
    source = chat_template or tokenizer.get_chat_template(None, tools)
    try:
        with time_limit(CHAT_TEMPLATE_SECONDS):
            texts, spans = render_jinja_template(conversations=[hf], tools=tools, chat_template=source,
                                                 return_assistant_tokens_mask=True, add_generation_prompt=False,
                                                 **tokenizer.special_tokens_map)
    except Exception as e:  # noqa: BLE001 - whatever the template's own code raises
        raise chat_template_error(e, "chat template") from None
    text, spans = texts[0], [(a, b) for a, b in spans[0] if b > a]
    if text != apply_chat_template(tokenizer, hf, add_generation_prompt=False, tools=tools, chat_template=chat_template):
        raise TemplateError("the chat template renders differently with {% generation %} tracking",
                            hint="report this with the template; or remove the {% generation %} blocks")
    turns = [t for m, t in zip(hf, trained) if m["role"] == "assistant"]
    if len(spans) > len(turns):
        raise TemplateError(f"the chat template's {{% generation %}} blocks ({len(spans)}) are more than the row's "
                            f"{len(turns)} assistant turn(s): text that is not the assistant's would be trained",
                            hint="put {% generation %} ... {% endgeneration %} around the assistant's text only")
    said = [m["content"].strip() for m in hf if m["role"] == "assistant" and isinstance(m.get("content"), str)]
    others = [m["content"].strip() for m in hf if m["role"] != "assistant" and isinstance(m.get("content"), str)
              and m["content"].strip()]
    if spans and len(said) == len(turns) and all(said):
        for a, b in spans:  # a block with no assistant text but another turn's: it marks the wrong turn (a
            # template may rewrite an assistant turn, e.g. drop its reasoning: a block holding neither is left be)
            if not any(c in text[a:b] for c in said) and any(c in text[a:b] for c in others):
                raise TemplateError(f"a {{% generation %}} block holds no assistant turn's text (it holds "
                                    f"{text[a:b][:60]!r}): it would train text that is not the assistant's",
                                    hint="put {% generation %} ... {% endgeneration %} around the assistant's text")
    flagged = any("weight" in m for m in messages if m["role"] in ("assistant", "tool_call"))
    if flagged and len(spans) != len(turns):
        raise TemplateError(f"the chat template's {{% generation %}} blocks ({len(spans)}) do not match the row's "
                            f"{len(turns)} assistant turns, so per-turn training flags cannot be applied",
                            hint="wrap each assistant turn's text in exactly one {% generation %} block")
    eos = getattr(tokenizer, "eos_token", None)
    segments: list[Segment] = []
    done = 0
    for k, (a, b) in enumerate(spans):
        if a < done:
            raise TemplateError("the chat template's {% generation %} blocks overlap",
                                hint="close each {% generation %} block before the next one opens")
        if add_eos and eos and text.startswith(eos, b):
            b += len(eos)
        segments.append(Segment(text[done:a], False))
        segments.append(Segment(text[a:b], turns[k] if flagged else True))
        done = b
    segments.append(Segment(text[done:], False))
    return [s for s in segments if s.text]


_BLOCK_TAG = re.compile(r"\{%-?\s*block\b")


def is_hf_chat_template(source: str) -> bool:
    """A template file in Hugging Face's chat template form (a loop over ``messages``, no tunespec blocks):
    used as the model's chat template would be (``template: tokenizer``), ``{% generation %}`` blocks included."""
    return _BLOCK_TAG.search(source) is None and re.search(r"\bmessages\b", source) is not None


class _GenerationBlocks(jinja2.ext.Extension):
    """Parses ``{% generation %}...{% endgeneration %}`` (transformers' chat template tag), for syntax checks."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def check_chat_template(source: str, label: str) -> None:
    """A Hugging Face chat template's syntax (``{% generation %}`` blocks included), as a TemplateError with
    its line: ``{% generation %}`` without ``{% endgeneration %}``, an unclosed ``{{``, ..."""
    env = jinja2.Environment(extensions=[_GenerationBlocks, "jinja2.ext.loopcontrols"])
    try:
        env.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(Problem(f"chat template syntax error: {e.message}", file=label, line=e.lineno,
                                    hint="close every {% generation %} with {% endgeneration %} and check the "
                                    "{{ }} / {% %} pairs")) from None
