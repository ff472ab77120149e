"""The bounded Jinja2 sandbox every tunespec template renders in: no render may exhaust memory or time.

Jinja's own sandbox stops a template reaching Python's internals; this one also bounds what a template
can build (``*``, ``**``, ``+``, ``~``, widths and counts), how often it may loop and how much text one
render may write (the ``MAX_*`` limits).
"""

from __future__ import annotations

import functools
import json
import re
import traceback

import jinja2
import jinja2.visitor
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

MAX_REPEAT = 1_000_000  # longest string or list `*` may build in a template, widest field a format may pad to
MAX_EXPONENT = 10_000  # largest exponent `**` may raise a number (other than 0, 1, -1) to
MAX_TEXT = 100_000_000  # most characters one render may write, or `~` / `+` may build
MAX_STEPS = 1_000_000  # most loop iterations one render may take (all loops together)
WIDTH_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map"}
WIDTH_FILTERS = ("center", "indent", "wordwrap", "truncate", "slice", "batch", "format")
_WIDTHS = re.compile(r"\d+")


class TemplateRaised(Exception):
    """``raise_exception(message)`` called by a template: its own message for the user."""


def _raise_exception(message) -> None:
    raise TemplateRaised(str(message))


def _check_widths(*values) -> None:
    """A width, precision or count (an int argument, or digits in a format string's %-specs or {}-fields) a
    template asks for: refused above MAX_REPEAT, before the string is built (`'%0999999999d' % 1`)."""
    for v in values:
        if isinstance(v, str):  # %-specs (with a (name)), and {}-fields' specs
            specs = re.findall(r"%(?:\([^)]*\))?[-+ #0]*[0-9*]*(?:\.[0-9*]*)?", v) + re.findall(r"\{[^{}]*:([^{}]*)\}", v)
            numbers = [int(n) for spec in specs for n in _WIDTHS.findall(spec)]
        elif isinstance(v, bool) or not isinstance(v, int):
            continue
        else:
            numbers = [v]
        for n in numbers:
            if n > MAX_REPEAT:
                raise jinja2.exceptions.SecurityError(f"a width or precision of {n} is too large")


class _Bounded(jinja2.visitor.NodeTransformer):
    """Rewrites a parsed template so that one render is bounded: every ``for`` loop's items are counted
    (``_ts_steps``) and every ``~`` concatenation's length is checked before it is built (``_ts_concat``)."""

    def visit_For(self, node):
        node = self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_ts_steps", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node):
        node = self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), "_ts_concat", [], [], None, None,
                            lineno=node.lineno)


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, with every way for a template to exhaust memory or time bounded: `*`, `**` and `+`
    (intercepting them also stops Jinja folding them at compile time), `~`, widths and counts
    (`'%0999999999d'`, `center(10**9)`, `'{:>999999999}'.format`), the loop iterations and the text
    written by one render (``Template._blocks`` resets the budget)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    steps = 0

    def _parse(self, source, name, filename):
        return _Bounded().visit(super()._parse(source, name, filename))

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if abs(right) > MAX_EXPONENT and abs(left) not in (0, 1):
                raise jinja2.exceptions.SecurityError(f"the exponent {right} is too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_REPEAT:
                    raise jinja2.exceptions.SecurityError(f"the repetition would make {len(seq) * times} items")
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _check_length(len(left) + len(right))
        if operator == "%" and isinstance(left, str):
            _check_widths(left, *(right if isinstance(right, tuple) and "*" in left else ()))
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str) and getattr(target, "__name__", None) in WIDTH_METHODS:
            _check_widths(owner if target.__name__.startswith("format") else 0, *args, *kwargs.values())
        return super().call(__context, __obj, *args, **kwargs)


def _check_length(n: int) -> None:
    if n > MAX_TEXT:
        raise jinja2.exceptions.SecurityError(f"the text would be {n} characters (at most {MAX_TEXT})")


@jinja2.pass_environment
def _steps(env, iterable):
    """A loop's items, counted against the render's MAX_STEPS."""
    for item in iterable:
        env.steps += 1
        if env.steps > MAX_STEPS:
            raise jinja2.exceptions.SecurityError(f"the template loops more than {MAX_STEPS} times in one row")
        yield item


def _concat(parts) -> str:
    parts = [str(p) for p in parts]
    _check_length(sum(map(len, parts)))
    return "".join(parts)


def _width_checked(fn):
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        _check_widths(*args[1:], *kwargs.values())
        return fn(*args, **kwargs)
    return checked


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    """``tojson`` as chat templates expect it: plain ``json.dumps`` (Jinja's own escapes ``<``, ``>``, ``&``
    and ``'`` for HTML), non-ASCII kept: ``{"q": "<é>"} | tojson`` -> ``{"q": "<é>"}``."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def sandbox_environment() -> SandboxedEnvironment:
    env = _Sandbox(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["tojson"] = _tojson
    env.filters["_ts_steps"] = _steps
    env.filters["_ts_concat"] = _concat
    for name in WIDTH_FILTERS:
        env.filters[name] = _width_checked(env.filters[name])
    env.globals["raise_exception"] = _raise_exception
    return env


def template_line(compiled: jinja2.Template, tb, first: bool = False) -> int | None:
    """The template line an exception raised while rendering came from (the innermost template frame; `first`:
    the outermost, for a recursion)."""
    frames = [f.lineno for f in traceback.extract_tb(tb, limit=None if not first else 200)
              if f.filename == compiled.filename and f.lineno]
    return compiled.get_corresponding_lineno(frames[0 if first else -1]) if frames else None


def bounded_join(pieces, written: list[int]) -> str:
    """A block's rendered pieces joined, refused once the render has written more than MAX_TEXT characters."""
    out = []
    for piece in pieces:
        written[0] += len(piece)
        if written[0] > MAX_TEXT:
            raise jinja2.exceptions.SecurityError(f"the template's text would exceed {MAX_TEXT} characters in one row")
        out.append(piece)
    return "".join(out)
