"""Vocabulary extension: ``model.added_tokens`` and ``model.added_special_tokens``.

The compiler adds the spec's tokens to the tokenizer before anything is tokenized, so every row sees each
of them as one id; ``BUILD/tokenizer/`` is the extended tokenizer. What the runtime needs is recorded
under ``vocabulary`` in the manifest (and the lock): every added token with its id, the tokenizer's
length before and after, and the embedding rows the model must have.

* A token that already encodes to one id is left alone and reported as a warning (adding it would change
  nothing); so one spec fits both a model that has, say, ``<|im_start|>`` and one that lacks it.
* A token whose text is a vocabulary entry that the pre-tokenizer splits keeps that entry's id (it is
  now matched whole); every other token gets a new id after the last one.
* When the tokenizer outgrows the model's embedding matrix (``config.vocab_size``), the matrix grows
  to ``len(tokenizer)`` rounded up to a multiple of 64; otherwise the new ids use spare rows.
* Every ``<|...|>`` marker a template writes (its text and its stop marker; for ``template: tokenizer``,
  the model's chat template rendered on a short conversation) must be one token of the extended
  vocabulary, or the model would learn it as several pieces of text: the error names the template
  (file and line where it has them) and says to add the marker under ``model.added_special_tokens``.
* The rows of added tokens are trained by LoRA (beside the adapter) and by full fine-tuning; the
  other methods leave the embeddings frozen, so they are refused when a token gets a row to train.

The runtime side (resizing, initialising and training the rows) is ``tunespec.runtime.vocabulary``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from dataclasses import dataclass, field

from ..errors import ModelError, Problem, SpecError, TemplateError
from ..spec.adapter import FullSpec, LoraSpec
from ..templating.chat_templates import CHAT_TEMPLATE_SECONDS, TemplateTimeout, chat_template_error, time_limit
from ..templating.templates import Template, library_dir
from .spec_locations import locate_in_spec

SPECIAL_MARKER = re.compile(r"<\|[^|<>\s]{1,40}\|>")
TAG = re.compile(r"</?[A-Za-z_][^<>\s]{0,40}>")  # a stop marker shaped like a tag: <end_of_turn>, </s>
PAD_TO = 64  # the embedding rows grow to a multiple of this
SPECIAL_FIELD = "model.added_special_tokens"
INLINE = "data.template (inline)"


@dataclass(frozen=True)
class AddedToken:
    token: str
    id: int
    special: bool
    new: bool  # a new id (its embedding row starts as the mean of the existing rows); else an existing entry's id


@dataclass
class Vocabulary:
    """The tokens a build added, and the embedding size the model needs for them."""

    base_tokens: int  # len(tokenizer) before
    tokens: int  # len(tokenizer) after
    base_embedding_rows: int  # the model config's vocab_size
    added: list[AddedToken] = field(default_factory=list)
    unchanged: list[tuple[str, int, str]] = field(default_factory=list)  # (token, its id, spec path): no-ops

    @property
    def embedding_rows(self) -> int:
        """Rows of the embedding (and LM head) after the extension: resized only when the tokenizer outgrew them."""
        if self.tokens <= self.base_embedding_rows:
            return self.base_embedding_rows
        return -(-self.tokens // PAD_TO) * PAD_TO

    @property
    def resized(self) -> bool:
        return self.embedding_rows != self.base_embedding_rows

    def to_dict(self) -> dict:
        return {
            "added": [{"token": a.token, "id": a.id, "special": a.special, "new": a.new} for a in self.added],
            "unchanged": [{"token": t, "id": i, "field": f} for t, i, f in self.unchanged],
            "base_tokens": self.base_tokens,
            "tokens": self.tokens,
            "base_embedding_rows": self.base_embedding_rows,
            "embedding_rows": self.embedding_rows,
            "resized": self.resized,
        }

    def sized_config(self, config):
        """A copy of the model config with the extended vocabulary size (for the memory estimate)."""
        if not self.resized:
            return config
        out = copy.deepcopy(config)
        text = out.get_text_config() if hasattr(out, "get_text_config") else out
        text.vocab_size = self.embedding_rows
        if text is not out and hasattr(out, "vocab_size"):
            out.vocab_size = self.embedding_rows
        return out

    def summary(self) -> str:
        if not self.added:
            return "vocabulary: nothing added (every listed token is already one token)"
        new = sum(a.new for a in self.added)
        rows = (f"embeddings resized {self.base_embedding_rows} -> {self.embedding_rows} rows" if self.resized
                else f"embeddings keep their {self.base_embedding_rows} rows")
        return (f"vocabulary: {len(self.added)} token(s) added ({new} new ids, "
                + ", ".join(f"{a.token}={a.id}" for a in self.added[:8]) + (", …" if len(self.added) > 8 else "")
                + f"); {rows}")


def _vocab_size(config) -> int:
    for cfg in (config, config.get_text_config() if hasattr(config, "get_text_config") else None):
        value = getattr(cfg, "vocab_size", None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelError(Problem("the model config has no vocab_size, so its embeddings cannot be extended",
                             path="model.added_tokens", hint="remove model.added_tokens and added_special_tokens"))


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _add_special(tokenizer, tokens: list[str]) -> None:
    """Add special tokens without dropping the tokenizer's other additional special tokens."""
    params = inspect.signature(tokenizer.add_special_tokens).parameters
    keep = next(({name: False} for name in ("replace_extra_special_tokens", "replace_additional_special_tokens")
                 if name in params), {})
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, **keep)


def add_tokens(spec, tokenizer, config) -> Vocabulary | None:
    """Add the spec's tokens to `tokenizer` (in place); None when the spec lists none.

    Raises ``ModelError`` when an added token does not encode to its own id afterwards.
    """
    m = spec.model
    listed = [(t, False, f"model.added_tokens.{i}") for i, t in enumerate(m.added_tokens)]
    listed += [(t, True, f"{SPECIAL_FIELD}.{i}") for i, t in enumerate(m.added_special_tokens)]
    if not listed:
        return None
    vocab = Vocabulary(base_tokens=len(tokenizer), tokens=len(tokenizer), base_embedding_rows=_vocab_size(config))
    todo: list[tuple[str, bool, str]] = []
    for token, special, path in listed:
        ids = _encode(tokenizer, token)
        if len(ids) == 1:
            vocab.unchanged.append((token, int(ids[0]), path))
        else:
            todo.append((token, special, path))
    normal = [t for t, special, _ in todo if not special]
    specials = [t for t, special, _ in todo if special]
    if normal:
        tokenizer.add_tokens(normal)
    if specials:
        _add_special(tokenizer, specials)
    problems = []
    for token, special, path in todo:
        token_id = tokenizer.convert_tokens_to_ids(token)
        ids = _encode(tokenizer, token)
        if token_id is None or ids != [token_id]:
            problems.append(Problem(
                f"`{token}` does not encode to one id after being added (it becomes {len(ids)} ids: {ids[:8]})",
                path=path, hint="list it under model.added_special_tokens (special tokens are matched before the "
                "tokenizer's normalizer runs)" if not special else "check the token's text"))
            continue
        vocab.added.append(AddedToken(token, int(token_id), special, int(token_id) >= vocab.base_tokens))
    if problems:
        raise ModelError(problems)
    vocab.tokens = len(tokenizer)
    return vocab


# --------------------------------------------------------------------------- checks


def _blank_comments(source: str) -> str:
    """The template source with Jinja comments blanked out (same length and lines, so positions still hold)."""
    return re.sub(r"\{#.*?#\}", lambda mt: re.sub(r"[^\n]", " ", mt.group()), source, flags=re.S)


def _library_file(template: Template):
    path = library_dir() / f"{template.name}.jinja"
    try:
        if path.is_file() and path.read_text(encoding="utf-8") == template.source:
            return path
    except OSError:
        pass
    return None


def _chat_template_probe(tokenizer, chat_template: str | None = None, label: str | None = None) -> str:
    """The model's chat template (or `chat_template`, a chat template file's text) rendered on a short
    conversation (with a system turn when it takes one)."""
    conversations = (
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}],
        [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}],
    )
    for messages in conversations:
        try:
            kwargs = {"chat_template": chat_template} if chat_template else {}
            with time_limit(CHAT_TEMPLATE_SECONDS):  # as every rendering of a chat template (templates.py)
                return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        except TemplateTimeout as e:
            error = chat_template_error(e, "chat template" if chat_template else "model's chat template")
            raise TemplateError([dataclasses.replace(p, file=label) for p in error.problems]) from None
        except Exception:  # a template that refuses a system turn, or any other role: try the next
            continue
    return ""


def marker_problems(template: Template, tokenizer, spec=None) -> list[Problem]:
    """Every special-looking marker (``<|...|>``) the template writes that is not one token of `tokenizer`."""
    hint = f"add it under {SPECIAL_FIELD}, or use the model's own chat template (template: tokenizer)"
    if template.kind == "tokenizer":
        if not (template.source or getattr(tokenizer, "chat_template", None)):
            return []
        probe = _chat_template_probe(tokenizer, template.source or None,
                                     template.name if template.source else "the tokenizer's chat template")
        found = [(mk, None, "data.template") for mk in dict.fromkeys(SPECIAL_MARKER.findall(probe))]
        what, file = ("the chat template file", template.name) if template.source else ("the model's chat template", None)
        hint = f"add it under {SPECIAL_FIELD}"
    elif template.name == INLINE:
        t = spec.data.template if spec is not None else None
        found = []
        for key in ("prompt", "completion", "stop"):
            for mk in SPECIAL_MARKER.findall(_blank_comments(getattr(t, key, None) or "")):
                if all(mk != f[0] for f in found):
                    found.append((mk, None, f"data.template.{key}"))
        what, file = "the inline template", None
    else:
        library = _library_file(template)
        source = _blank_comments(template.source)
        found = []
        for mt in SPECIAL_MARKER.finditer(source):
            if all(mt.group() != f[0] for f in found):
                found.append((mt.group(), source.count("\n", 0, mt.start()) + 1, "data.template"))
        if library is not None:
            what, file = f"library template `{template.name}`", str(library)
        else:  # a template file: the location names it
            what, file = "the template file", template.name
    # the stop marker (the template's or the spec's): its <|...|> markers, or the whole of it when it is shaped
    # like a tag (`<end_of_turn>`): generation stops at it, so it must be one token the model learns to emit
    stop = template.stop or ""
    stop_path = "data.template.stop" if template.name == INLINE else "data.template"
    for mk in SPECIAL_MARKER.findall(stop) + ([stop] if TAG.fullmatch(stop) else []):
        if all(mk != f[0] for f in found):
            found.append((mk, None, stop_path))
    problems = []
    for marker, line, path in found:
        n = len(_encode(tokenizer, marker))
        if n == 1:
            continue
        problems.append(Problem(
            f"the marker `{marker}` is not one token of this model's vocabulary (it becomes {n} pieces of text), "
            f"and {what} writes it", file=file if line is not None else None, line=line, path=path, hint=hint))
    return problems


def adapter_problems(spec, vocab: Vocabulary | None) -> list[Problem]:
    """Added tokens get embedding rows to train: only LoRA (beside the adapter) and full fine-tuning train them."""

    if vocab is None or not vocab.added or isinstance(spec.adapter, (LoraSpec, FullSpec)):
        return []
    shown = ", ".join(f"`{a.token}`" for a in vocab.added[:5]) + (", …" if len(vocab.added) > 5 else "")
    return [Problem(f"{spec.adapter.method} cannot train the embedding rows of the added tokens ({shown}); "
                    "they would keep their initial value", path="adapter.method",
                    hint="use adapter.method: lora (the rows train beside the adapter) or none, or remove the tokens "
                    "from model.added_tokens / added_special_tokens")]


def unchanged_warnings(vocab: Vocabulary | None) -> list[Problem]:
    if vocab is None:
        return []
    return [Problem(f"`{token}` is already one token of this model's vocabulary (id {token_id}): nothing to add",
                    path=path, hint="remove it, or keep it for models that lack it")
            for token, token_id, path in vocab.unchanged]


def extend_vocabulary(loaded, tokenizer, config, template: Template) -> tuple[Vocabulary | None, list[Problem]]:
    """Add the spec's tokens and check the template against the extended tokenizer (the compiler's entry).

    Returns the record (None when the spec adds nothing) and the located warnings; raises ``SpecError``
    listing every marker the vocabulary lacks and a method that cannot train the new rows.
    """
    try:
        vocab = add_tokens(loaded.spec, tokenizer, config)
    except ModelError as e:
        raise ModelError([locate_in_spec(loaded, p) for p in e.problems]) from None
    problems = marker_problems(template, tokenizer, loaded.spec) + adapter_problems(loaded.spec, vocab)
    if problems:
        raise SpecError([locate_in_spec(loaded, p) for p in problems])
    return vocab, [locate_in_spec(loaded, p) for p in unchanged_warnings(vocab)]
