"""The compiler's model cache: per local model directory, what transformers made of it.

The tokenizer as ``save_pretrained`` writes it and the config's values (``load_for_compile``). A later
compile of the same directory (same file contents, same transformers and tokenizers versions) then
tokenizes with the ``tokenizers`` library directly and never imports transformers or torch (seconds of
start-up), with the same ids and the same files. Kept under ``$TUNESPEC_CACHE/compile/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .. import __version__
from ..atomic import temp_dir
from ..cache import cache_root
from ..hashing import sha256_file
from ..model_resolver import ModelRef, load_config, load_tokenizer

# --------------------------------------------------------------------------- the compiler's model cache
#
# Importing transformers' tokenizer and config classes imports torch: ~3 s of a compile's start-up, for a
# tokenizer whose work is done by the Rust `tokenizers` library and a config that is a handful of numbers.
# The first compile of a local model directory loads both with transformers, as always, and stores beside
# the other caches what it got: the tokenizer's files exactly as `save_pretrained` writes them into the
# build, the attributes the compiler reads (EOS, pad, ...), the config's values, and the ids the tokenizer
# gives a probe text. Later compiles of the same directory load the stored `tokenizer.json` with
# `tokenizers` (the backend's own serialization, so the same pipeline), check it against the probe and
# copy the stored files into the build. The key covers the contents of every non-weight file of the
# directory and the transformers, tokenizers and tunespec versions, so any change loads afresh.

COMPILE_CACHE_VERSION = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npz")
# What a cached tokenizer must behave like: transformers' generic fast tokenizer. A class that overrides
# any of these (or switches modes) encodes in Python too, so it is never cached.
_ENCODE_METHODS = ("__call__", "_encode_plus", "encode", "tokenize", "convert_ids_to_tokens", "_convert_id_to_token",
                   "convert_tokens_to_string", "set_truncation_and_padding", "_get_padding_truncation_strategies",
                   "save_pretrained", "_save_pretrained", "__len__")
_TOKENIZER_ATTRS = ("eos_token", "eos_token_id", "bos_token", "bos_token_id", "pad_token", "pad_token_id",
                    "unk_token", "unk_token_id", "chat_template", "split_special_tokens")
_PROBE = ("Hello, World! It's 2024-05-06: 3.14159 ×2 — naïve café, Übermaß, 日本語のテキスト, 😀👍🏽\n\n"
          "\tTabs,   spaces  \r\n trailing   \n### Instruction:\n<|im_start|>user\nx<|im_end|>\n</s><s> ")


def _json_value(value):
    """`value` when JSON stores it exactly (no tuples, int keys or NaN); else a marker to leave it out."""
    try:
        same = json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError, RecursionError):
        return _OMIT
    return value if same and not callable(value) else _OMIT


_OMIT = object()


def _model_files_key(model_dir: Path) -> str:
    """A hash of every non-weight file of the model directory (and `additional_chat_templates/`), the
    directory's path and the versions of what reads them."""
    from importlib.metadata import version

    import tokenizers

    files = {}
    for sub in ("", "additional_chat_templates"):
        folder = model_dir / sub if sub else model_dir
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_file() and not p.name.lower().endswith(_WEIGHT_SUFFIXES):
                files[str(p.relative_to(model_dir))] = sha256_file(p)
    payload = {"version": COMPILE_CACHE_VERSION, "tunespec": __version__, "transformers": version("transformers"),
               "tokenizers": tokenizers.__version__, "dir": str(model_dir.resolve()), "files": files}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def compile_cache_entry(ref: ModelRef, model_dir: str) -> Path | None:
    """Where the compile cache keeps this model's entry; None when it is not cached (hub models, which
    transformers resolves itself, and models with remote code)."""
    if model_dir == ref.hub or ref.trust_remote_code or not Path(model_dir).is_dir():
        return None
    try:
        key = _model_files_key(Path(model_dir))
    except (OSError, ImportError, ValueError):
        return None
    return cache_root() / "compile" / key[:40]


def load_for_compile(ref: ModelRef, model_dir: str, *, plain: bool = True):
    """The tokenizer and model config the compiler works with.

    With `plain` (the compile only encodes text and reads special tokens: no chat template to apply, no
    tokens to add) and the model directory in the compile cache, a ``CachedTokenizer`` and a
    ``CachedConfig``; otherwise transformers' own (``load_tokenizer``, ``load_config``), stored in the cache
    for the next compile where possible.
    """
    entry = compile_cache_entry(ref, model_dir)
    if plain and entry is not None:
        cached = _load_entry(entry)
        if cached is not None:
            return cached
    tokenizer = load_tokenizer(ref, model_dir if model_dir != ref.hub else None)
    config = load_config(ref, model_dir)
    if entry is not None and not entry.is_dir():
        _store_entry(entry, tokenizer, config, model_dir)
    return tokenizer, config


def _is_plain_fast(tokenizer) -> bool:
    """A transformers fast tokenizer of a class that encodes exactly as its Rust backend does."""
    try:
        from tokenizers import Tokenizer
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - an older transformers
        return False
    if not isinstance(tokenizer, TokenizersBackend) or not isinstance(tokenizer.backend_tokenizer, Tokenizer):
        return False
    cls = type(tokenizer)
    if any(hasattr(cls, name) for name in ("_switch_to_input_mode", "_switch_to_target_mode")):
        return False
    return all(getattr(cls, name, None) is getattr(TokenizersBackend, name, None) for name in _ENCODE_METHODS)


def _config_values(config) -> dict:
    """The config's JSON-exact attributes (fields, aliases and properties) and its `to_dict()`."""
    import warnings

    attrs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in dir(config):
            if name.startswith("_"):
                continue
            try:
                value = getattr(config, name)
            except Exception:  # a property that does not apply to this config
                continue
            value = _json_value(value)
            if value is not _OMIT:
                attrs[name] = value
    data = {k: v for k, v in config.to_dict().items() if _json_value(v) is not _OMIT}
    return {"class": type(config).__name__, "attrs": attrs, "dict": data}


def _probe_ids(tokenizer, probe: str) -> dict:
    return {"special": list(tokenizer(probe)["input_ids"]),
            "plain": list(tokenizer(probe, add_special_tokens=False)["input_ids"]),
            "batch": [list(x) for x in tokenizer([probe, "x", ""], add_special_tokens=False)["input_ids"]]}


def _store_entry(entry: Path, tokenizer, config, model_dir: str) -> None:
    """Put what transformers made of the model into the compile cache (silently skipped when it cannot be)."""
    tmp = None
    try:
        if not _is_plain_fast(tokenizer):
            return
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            # the state every compile puts the tokenizer in before it saves it: a first ordinary call turns
            # off the truncation and padding a tokenizer.json may carry
            tokenizer("x")
            attrs = {name: _json_value(getattr(tokenizer, name, None)) for name in _TOKENIZER_ATTRS}
            if any(v is _OMIT for v in attrs.values()):
                return
            probe = _PROBE + "".join(str(t) for t in tokenizer.all_special_tokens)
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            facts = {
                "version": COMPILE_CACHE_VERSION,
                "model_dir": str(Path(model_dir).resolve()),
                "tokenizer": {"attrs": attrs, "len": len(tokenizer), "probe": probe,
                              "ids": _probe_ids(tokenizer, probe)},
                "config": _config_values(config),
                "text_config": _config_values(text) if text is not config else None,
            }
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_dir(entry, marker=False)  # a killed compile's leftover temporaries are removed
            tokenizer.save_pretrained(tmp / "tokenizer")
        finally:
            hf_logging.set_verbosity(verbosity)
        facts["tokenizer"]["files"] = {p.name: sha256_file(p) for p in sorted((tmp / "tokenizer").iterdir())}
        (tmp / "facts.json").write_text(json.dumps(facts, indent=1, sort_keys=True), encoding="utf-8")
        tmp.rename(entry)
        tmp = None
        _prune(entry.parent)
    except Exception:  # a read-only cache, a full disk, another process first, an odd tokenizer: no cache
        pass
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _prune(folder: Path, keep: int = 32) -> None:
    """Remove the entries of model directories that no longer exist, and all but the `keep` newest."""
    entries = []
    for e in folder.iterdir():
        if e.name.startswith("."):
            continue
        try:
            model_dir = json.loads((e / "facts.json").read_text(encoding="utf-8"))["model_dir"]
            if Path(model_dir).is_dir():
                entries.append((e.stat().st_mtime, e))
                continue
        except (OSError, ValueError, KeyError, TypeError):
            pass
        shutil.rmtree(e, ignore_errors=True)
    for _, e in sorted(entries, reverse=True)[keep:]:
        shutil.rmtree(e, ignore_errors=True)


def _load_entry(entry: Path):
    """(CachedTokenizer, CachedConfig) from a cache entry; None when it is missing or does not check out
    (a damaged entry is removed, to be stored again)."""
    facts_path = entry / "facts.json"
    if not facts_path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        facts = json.loads(facts_path.read_text(encoding="utf-8"))
        if facts.get("version") != COMPILE_CACHE_VERSION:
            raise ValueError("another version")
        tok = facts["tokenizer"]
        folder = entry / "tokenizer"
        if {p.name for p in folder.iterdir()} != set(tok["files"]):
            raise ValueError("files missing")
        files = {name: (folder / name).read_bytes() for name in sorted(tok["files"])}
        if any(hashlib.sha256(data).hexdigest() != tok["files"][name] for name, data in files.items()):
            raise ValueError("files changed")
        backend = Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
        tokenizer = CachedTokenizer(backend, tok["attrs"], files)
        if len(tokenizer) != tok["len"] or _probe_ids(tokenizer, tok["probe"]) != tok["ids"]:
            raise ValueError("the tokenizer encodes differently")
        text = facts["text_config"]
        config = CachedConfig(facts["config"], CachedConfig(text, None) if text else None)
    except Exception:
        shutil.rmtree(entry, ignore_errors=True)
        return None
    try:
        os.utime(entry)  # recently used: kept by _prune
    except OSError:
        pass
    return tokenizer, config


class CachedTokenizer:
    """A tokenizer from the compile cache: the ``tokenizers`` backend transformers built, with the part of
    transformers' fast-tokenizer interface the compiler uses (calling it, special tokens and their ids,
    ``convert_ids_to_tokens``, ``convert_tokens_to_string``, ``len``, ``save_pretrained``). Calling it
    does what transformers' call does with its defaults: no truncation, no padding, ids only."""

    def __init__(self, backend, attrs: dict, files: dict[str, bytes]):
        self._tokenizer = backend
        self._files = files  # name -> contents, as transformers' save_pretrained wrote them
        for name, value in attrs.items():
            setattr(self, name, value)
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        backend.encode_special_tokens = bool(attrs.get("split_special_tokens"))

    @property
    def backend_tokenizer(self):
        return self._tokenizer

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, text, add_special_tokens: bool = True) -> dict:
        batched = isinstance(text, (list, tuple))
        encoded = self._tokenizer.encode_batch(list(text) if batched else [text], add_special_tokens=add_special_tokens)
        ids = [e.ids for e in encoded]
        return {"input_ids": ids if batched else ids[0]}

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def save_pretrained(self, directory) -> tuple[str, ...]:
        """The files transformers' ``save_pretrained`` wrote for this tokenizer, written again."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self._files.items():
            (directory / name).write_bytes(data)
        return tuple(str(directory / name) for name in self._files)


class CachedConfig:
    """A model config from the compile cache: its attributes (as ``getattr`` gave them on transformers'
    config, where JSON holds them exactly), ``to_dict()`` and ``get_text_config()``."""

    def __init__(self, values: dict, text: "CachedConfig | None"):
        self.__dict__.update(values["attrs"])
        self._class = values["class"]
        self._dict = values["dict"]
        self._text = text

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self._dict))

    def get_text_config(self, *args, **kwargs) -> "CachedConfig":
        return self._text if self._text is not None else self

    def __repr__(self) -> str:
        return f"CachedConfig({self._class})"
