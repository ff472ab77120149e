"""Resolve a model reference (hub id, local directory, GGUF file, packaged model) to something
``from_pretrained`` loads, and load tokenizers and models from it.

GGUF weights are de-quantized once and cached as a safetensors directory under
``$TUNESPEC_CACHE`` (default ``~/.cache/tunespec``), keyed by the GGUF file's sha256, so later
loads take seconds instead of half a minute. Used by the compiler (tokenizer) and the runtime
(model), which passes the reference it finds in the build's lock file.

The compiler's own cache of tokenizers and configs is ``compiler/model_cache.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .atomic import temp_dir
from .cache import cache_root, save_cache_json
from .errors import ModelError, Problem
from .hashing import sha256_file
from .packaged_models import PACKAGED_MODELS


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from, as written in the lock file."""

    hub: str | None = None
    path: str | None = None
    packaged: str | None = None
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_spec(cls, m) -> "ModelRef":
        return cls(hub=m.hub, path=m.path, packaged=m.packaged, gguf_file=m.gguf_file, revision=m.revision,
                   trust_remote_code=m.trust_remote_code)

    @property
    def label(self) -> str:
        return self.hub or self.packaged or self.path or "?"


def packaged_gguf(name: str) -> Path:
    model = PACKAGED_MODELS[name]  # type: ignore[index]
    package, filename, install = model.package, model.file, model.install
    spec = importlib.util.find_spec(package)  # located without importing it (its __init__ needs other packages)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(Problem(f"the packaged model `{name}` needs the `{package}` package", path="model.packaged",
                                 hint=f"install it: {install}"))
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelError(Problem(f"{path} is missing from the installed package", path="model.packaged",
                                 hint=f"reinstall it: {install}"))
    return path


def gguf_path(ref: ModelRef) -> Path | None:
    """The GGUF file a reference points at, downloading it from the hub if needed; None when not GGUF."""
    if ref.packaged:
        return packaged_gguf(ref.packaged)
    if not ref.gguf_file:
        return None
    if ref.path:
        p = Path(ref.path) / ref.gguf_file
        if not p.is_file():
            raise ModelError(Problem(f"GGUF file not found: {p}", path="model.gguf_file", hint="check model.path and gguf_file"))
        return p
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ref.hub, ref.gguf_file, revision=ref.revision))
    except Exception as e:  # network, auth, missing file: all user-facing
        raise ModelError(Problem(f"cannot fetch {ref.gguf_file} from {ref.hub}: {type(e).__name__}: {e}",
                                 path="model.gguf_file", hint="check the hub id and file name, or download it and use model.path")) from None


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
    except Exception as e:
        raise ModelError(Problem(f"cannot read GGUF file {gguf}: {type(e).__name__}: {e}", path="model",
                                 hint="check that it is a GGUF model file (and that the `gguf` package is installed)")) from None
    repair_special_tokens(tok, gguf_special_ids(gguf))
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


# Bumped when a conversion's output changes, so that an older conversion in the cache is made again. 2: the
# tokenizer's BOS/EOS/PAD taken from the GGUF's own metadata (transformers 5.17 read SmolLM2's EOS as BOS).
CONVERSION = "2"
_MARKER = ".tunespec-conversion"


def gguf_special_ids(gguf: Path) -> dict[str, int]:
    """The special-token ids the GGUF file's own metadata names: {"bos_token": id, "eos_token": id, "pad_token": id},
    from `tokenizer.ggml.{bos,eos,padding}_token_id`, read with the `gguf` package (those present only)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    out = {}
    for name, key in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id"),
                      ("pad_token", "tokenizer.ggml.padding_token_id")):
        f = fields.get(key)
        if f is not None and f.data:
            out[name] = int(f.parts[f.data[0]][0])
    return out


def repair_special_tokens(tok, ids: dict[str, int]) -> list[str]:
    """Set the tokenizer's BOS/EOS/PAD to the tokens the GGUF names where transformers read others (seen:
    transformers 5.17 gave SmolLM2's GGUF `eos_token` <|im_start|>, id 1, where the file says 2, <|im_end|>,
    and no pad token). Returns what it changed, as "name: old -> new"."""
    changed = []
    for name, i in ids.items():
        if not 0 <= i < len(tok) or getattr(tok, f"{name}_id", None) == i:
            continue
        token = tok.convert_ids_to_tokens(i)
        changed.append(f"{name}: {getattr(tok, name, None)} -> {token}")
        setattr(tok, name, token)
    return changed


def resolve(ref: ModelRef) -> str:
    """A name or directory `from_pretrained` accepts; GGUF models are converted (once) first."""
    gguf = gguf_path(ref)
    if gguf is None:
        if ref.path:
            if not Path(ref.path).is_dir():
                raise ModelError(Problem(f"model directory not found: {ref.path}", path="model.path",
                                         hint="point model.path at a directory with config.json"))
            if not (Path(ref.path) / "config.json").is_file():
                raise ModelError(Problem(f"{ref.path} has no config.json", path="model.path",
                                         hint="point model.path at a saved transformers model"))
            return ref.path
        return ref.hub  # type: ignore[return-value]
    key = sha256_file(gguf)[:16]
    target = cache_root() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file() and _current(target):
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target, marker=False)  # .NAME.tmp-<pid>-<hex>: a killed conversion's leftovers are removed
    try:
        _dequantize_gguf(gguf, tmp)
        (tmp / _MARKER).write_text(CONVERSION + "\n", encoding="utf-8")
        if target.exists() and not _current(target):  # an older conversion (our cache, never a user's files)
            old = temp_dir(target, marker=False)
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _current(converted: Path) -> bool:
    """Whether a cached conversion was made by this CONVERSION."""
    try:
        return (converted / _MARKER).read_text(encoding="utf-8").strip() == CONVERSION
    except OSError:
        return False


def load_tokenizer(ref: ModelRef, where: str | None = None):
    from transformers import AutoTokenizer

    source = where or resolve(ref)
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=None if where else ref.revision,
                                            trust_remote_code=ref.trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:  # missing/unreadable files, no tokenizer in the directory
        raise ModelError(Problem(f"cannot load the tokenizer of {ref.label}: {e}".split("\n")[0], path="model",
                                 hint="check the model reference; offline, use a local model.path or model.packaged")) from None
    return tok


def load_config(ref: ModelRef, model_dir: str):
    """The model's transformers config (``AutoConfig``; `model_dir` as ``resolve`` gives it)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, revision=None if model_dir != ref.hub else ref.revision,
                                      trust_remote_code=ref.trust_remote_code)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def _hash_cached(path: Path) -> str:
    """sha256 of a (large) file, remembered by (size, mtime_ns, inode) in $TUNESPEC_CACHE/hashes.json so that
    a weight file is hashed once, not on every compile."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    cache = cache_root() / "hashes.json"
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    key = str(path.resolve())
    hit = known.get(key)
    if isinstance(hit, list) and hit[:3] == stamp and len(hit) == 4:
        return hit[3]
    sha = sha256_file(path)
    known[key] = stamp + [sha]
    save_cache_json(cache, known)
    return sha


def model_pins(ref: ModelRef, model_dir: str) -> dict:
    """What pins the model's bytes: the sha256 of every weight file (and config.json) the runtime reads, the
    GGUF file a packaged or GGUF model is converted from, and a hub model's resolved commit (its snapshot in
    the local hub cache). Files are named relative to the model directory."""
    out: dict = {}
    gguf = None
    try:
        gguf = gguf_path(ref)
    except Exception:  # noqa: BLE001 - resolve() reported it already
        gguf = None
    if gguf is not None:
        out["gguf"] = {"file": gguf.name, "sha256": _hash_cached(gguf), "size": gguf.stat().st_size}
        return out
    root = Path(model_dir)
    if not root.is_dir() and ref.hub:
        try:
            from huggingface_hub import snapshot_download

            root = Path(snapshot_download(ref.hub, revision=ref.revision, local_files_only=True))
            out["commit"] = root.name
        except Exception:  # noqa: BLE001 - not downloaded yet: nothing local to pin
            out["files"] = None
            out["note"] = "the hub model is not in the local cache: its weights are not pinned"
            return out
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"))
    out["files"] = [{"file": str(p.relative_to(root)).replace(os.sep, "/"), "sha256": _hash_cached(p),
                     "size": p.stat().st_size} for p in files]
    return out
