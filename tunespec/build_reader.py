"""Read a build directory: the runtime's only input.

The runtime never reads the spec file. What it needs (the resolved spec, the tokenizer, the tokenized
rows, the rendered records) is in the build; where it writes is fixed inside the build:
``train/checkpoint-<step>/``, ``adapter/``, ``merged/``, ``eval/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML

from . import build_layout as layout
from .atomic import recover
from .errors import BuildError, Problem
from .model_resolver import ModelRef
from .spec.adapter import is_peft
from .spec.root import Spec
from .special_prefix import with_prefix
from .verify import RECOMPILE, check_lock_seal, check_manifest, verify_files, verify_output


@dataclass
class TokenSet:
    """One split's tokenized rows (memory-mapped)."""

    ids: np.ndarray
    trained: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[a:b], self.trained[a:b]


def trained_spans(ids: list[int], trained: list[bool]) -> list[tuple[bool, list[int]]]:
    """The row's ids in runs of equal mask: [(trained, ids), ...] (the preview's and the HTML report's view)."""
    out: list[tuple[bool, list[int]]] = []
    for t, m in zip(ids, trained):
        if out and out[-1][0] == m:
            out[-1][1].append(t)
        else:
            out.append((m, [t]))
    return out


class Build:
    def __init__(self, path: str | Path, *, verify: bool = True):
        """Read and check the build: the manifest's shape, the lock's seal, every listed file's sha256.

        ``verify=False`` skips the file hashes (only for code that reports on a damaged build)."""
        self.path = Path(path)
        for name in (layout.LOCK, layout.MANIFEST):
            if not (self.path / name).is_file():
                raise BuildError(Problem(f"{self.path} is not a complete build ({name} is missing)",
                                         hint="compile it first: tunespec compile SPEC -o BUILD"))
        manifest_file, lock_file = self.path / layout.MANIFEST, self.path / layout.LOCK
        try:
            manifest_bytes = manifest_file.read_bytes()
            lock_bytes = lock_file.read_bytes()
        except OSError as e:
            raise BuildError(Problem(f"cannot read the build: {e.strerror}", file=str(e.filename or self.path),
                                     hint="check the permissions, or recompile")) from None
        try:
            self.manifest = json.loads(manifest_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise BuildError(Problem(f"is not valid JSON ({e})".split("\n")[0], file=str(manifest_file),
                                     hint=RECOMPILE)) from None
        check_manifest(self.manifest, str(manifest_file))
        layout.check_format(self.manifest.get("format_version"), str(manifest_file), "build")
        check_lock_seal(lock_bytes, str(lock_file))
        try:
            self.lock = YAML(typ="safe", pure=True).load(lock_bytes.decode("utf-8"))
        except Exception as e:
            raise BuildError(Problem(f"cannot read the lock: {e}".split("\n")[0], file=str(lock_file),
                                     hint=RECOMPILE)) from None
        if not isinstance(self.lock, dict) or not isinstance(self.lock.get("spec"), dict):
            raise BuildError(Problem("is not a tunespec lock (no `spec` mapping)", file=str(lock_file), hint=RECOMPILE))
        manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
        if self.lock.get("manifest_sha256") != manifest_sha:
            raise BuildError(Problem(f"does not match the lock's `manifest_sha256` (sha256 {manifest_sha[:12]}…, the "
                                     f"lock says {str(self.lock.get('manifest_sha256'))[:12]}…): it was changed",
                                     file=str(manifest_file), hint=RECOMPILE))
        if self.lock.get("input_key") != self.manifest["input_key"]:
            raise BuildError(Problem("`input_key` differs between lock.yaml and manifest.json", file=str(lock_file),
                                     hint=RECOMPILE))
        self.hashed = verify_files(self.path, self.manifest["files"], manifest_sha=manifest_sha) if verify else 0
        try:
            self.spec = Spec.model_validate(self.resolved_spec)
        except Exception as e:
            raise BuildError(Problem(f"the lock file's spec does not validate with this tunespec: {e}".split("\n")[0],
                                     file=str(self.path / layout.LOCK),
                                     hint="recompile with this version of tunespec")) from None

    @cached_property
    def resolved_spec(self) -> dict:
        """The lock's spec with its relative paths (the base model's directory, mainly) found again: relative
        to the spec directory as seen from the build, else where the build was compiled."""
        return layout.locate_inputs(self.lock["spec"], layout.search_bases(self.lock, self.path / layout.LOCK, None))[0]

    @property
    def record(self) -> layout.Manifest:
        """The manifest as its typed model."""
        return layout.Manifest.model_validate(self.manifest)

    # ------------------------------------------------------------------ fixed layout

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.path / "merged"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def output(self, name: str) -> dict:
        """Read back one of the runtime's outputs (``adapter``, ``merged``, ``eval``) after checking it: its seal
        (every file its install wrote, with the sha256: ``verify.verify_output``) and its stamp's input key
        (made from this compile of the build). Returns the stamp (``tunespec.json``; ``rouge.json`` for eval)."""
        d = self.path / name
        peft = is_peft(self.spec.adapter)
        again = {"adapter": f"train again: tunespec train {self.path} (it rewrites adapter/ from the newest checkpoint)",
                 "merged": (f"merge again: tunespec merge {self.path}" if peft
                            else f"train again: tunespec train {self.path}"),
                 "eval": f"evaluate again: tunespec evaluate {self.path}"}.get(name, RECOMPILE)
        if not d.exists():
            recover(d)  # an install without RENAME_EXCHANGE killed between its two renames: the old one back
        if not d.is_dir():
            raise BuildError(Problem(f"the build has no {name}/ yet", file=str(d), hint=again))
        verify_output(d, hint=again)
        stamp_file = d / ("rouge.json" if name == "eval" else "tunespec.json")
        try:
            stamp = json.loads(stamp_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise BuildError(Problem(f"cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})",
                                     file=str(stamp_file), hint=again)) from None
        key = (stamp.get("settings") or {}).get("input_key") if name == "eval" and isinstance(stamp, dict) \
            else stamp.get("input_key") if isinstance(stamp, dict) else None
        if key != self.input_key:
            raise BuildError(Problem(f"{name}/ was made from another compile of this build (input key "
                                     f"{str(key)[:12]}…, the build's is {self.input_key[:12]}…)",
                                     file=str(stamp_file), hint=again))
        return stamp

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / layout.TOKENIZER_DIR

    @property
    def template(self) -> dict:
        """The manifest's record of the template: name, kind, sha256, stop, file (build_layout.TemplateInfo)."""
        return dict(self.manifest["template"])

    @property
    def batching(self) -> dict | None:
        """How the compiler formed the train micro-batches (``micro_batches``; None in builds before it)."""
        return self.manifest.get("batching")

    @property
    def splits(self) -> dict[str, dict]:
        """Rows, tokens and length statistics per split (build_layout.SplitStats)."""
        return dict(self.manifest["splits"])

    @property
    def spec_data(self) -> dict:
        """The lock's portable spec (paths relative to the spec file's directory): what checkpoints record."""
        return self.lock["spec"]

    @property
    def template_file(self) -> Path | None:
        """The build's copy of its template's source (None for `template: tokenizer`)."""
        name = self.manifest["template"].get("file")
        return self.path / name if name else None

    @property
    def eos_token_id(self) -> int:
        return int(self.manifest["eos_token_id"])

    @property
    def pad_token_id(self) -> int:
        """The padding id: the manifest's, else EOS (padding is masked by position, never by id)."""
        pad = self.manifest.get("pad_token_id")
        return int(pad) if pad is not None else self.eos_token_id

    @property
    def input_key(self) -> str:
        return self.manifest["input_key"]

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef.from_spec(self.spec.model)

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def stop(self) -> str | None:
        return self.manifest["template"].get("stop")

    @property
    def prefix_ids(self) -> list[int]:
        """Special ids the compiler put before every row (BOS for Llama-likes)."""
        return list(self.manifest.get("prefix_ids", []))

    def prompt_ids(self, tokenizer, prompts: list[str]) -> list[list[int]]:
        """The ids generation is given for each prompt: its text without special tokens, with the special
        prefix put before it exactly as the compiler put it before the rows (``with_prefix`` under the
        manifest's ``prefix_rule``; builds without one always got the prefix)."""
        if not prompts:
            return []
        prefix, rule = self.prefix_ids, self.manifest.get("prefix_rule")
        return [with_prefix(prefix, ids, rule) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]

    @property
    def vocabulary(self) -> dict | None:
        """The tokens the compiler added (``model.added_tokens``): ids, embedding rows; None when none was added."""
        vocab = self.manifest.get("vocabulary")
        return vocab if vocab and vocab.get("added") else None

    def has_split(self, split: str) -> bool:
        return split in self.manifest["splits"]

    def tokens(self, split: str) -> TokenSet:
        if not self.has_split(split):
            raise BuildError(Problem(f"the build has no `{split}` split (it has {', '.join(self.manifest['splits'])})",
                                     hint="add a source with that split or a data.holdout, and recompile"))
        base = self.path / layout.TOKENS_DIR
        parts = []
        for part in layout.TOKEN_PARTS:
            try:
                parts.append(np.load(self.path / layout.token_file(split, part), mmap_mode="r"))
            except (OSError, ValueError) as e:
                raise BuildError(Problem(f"cannot be read as a NumPy array: {e}".split("\n")[0],
                                         file=str(base / f"{split}.{part}.npy"), hint=RECOMPILE)) from None
        tokens = TokenSet(*parts)
        self._check_tokens(split, tokens)
        return tokens

    def _check_tokens(self, split: str, t: TokenSet) -> None:
        """Refuse token files that cannot come from the compiler: ids outside the vocabulary, offsets that go
        backwards or past the end, a mask that is not 0/1 (names the split and the first bad row)."""
        base = self.path / layout.TOKENS_DIR

        def bad(part: str, message: str, pos: int | None = None):
            where = ""
            if pos is not None and len(t.offsets) > 1:
                row = int(np.searchsorted(np.asarray(t.offsets[1:]), pos, side="right"))
                where = f"row {row}"
            return BuildError(Problem(message, file=str(base / f"{split}.{part}.npy"), path=where or None,
                                      hint=RECOMPILE))

        for part, arr, what in (("ids", t.ids, "token ids"), ("trained", t.trained, "the loss mask")):
            if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
                raise bad(part, f"{what} must be a 1-D integer array (it is {arr.ndim}-D {arr.dtype})")
        off = np.asarray(t.offsets)
        if off.ndim != 1 or len(off) < 1 or not np.issubdtype(off.dtype, np.integer) or int(off[0]) != 0:
            raise bad("offsets", "offsets must be a 1-D integer array starting at 0")
        steps = np.diff(off)
        if len(steps) and int(steps.min()) < 0:
            raise BuildError(Problem("offsets go backwards", file=str(base / f"{split}.offsets.npy"),
                                     path=f"row {int(np.argmax(steps < 0))}", hint=RECOMPILE))
        if int(off[-1]) != len(t.ids) or len(t.trained) != len(t.ids):
            raise bad("offsets", f"offsets end at {int(off[-1])} but there are {len(t.ids)} ids and "
                                 f"{len(t.trained)} mask values")
        if len(t.ids):
            vocab = self.vocab_size
            ids = np.asarray(t.ids)
            if int(ids.min()) < 0 or (vocab is not None and int(ids.max()) >= vocab):
                pos = int(np.argmax((ids < 0) | (ids >= (vocab or np.iinfo(np.int64).max))))
                raise bad("ids", f"token id {int(ids[pos])} is outside the vocabulary (size {vocab})", pos)
            mask = np.asarray(t.trained)
            if int(mask.min()) < 0 or int(mask.max()) > 1:
                pos = int(np.argmax((mask < 0) | (mask > 1)))
                raise bad("trained", f"loss mask value {int(mask[pos])} is not 0 or 1", pos)

    @cached_property
    def vocab_size(self) -> int | None:
        """The vocabulary size the token ids must stay under (the manifest's, else the tokenizer's)."""
        size = self.manifest.get("vocab_size")
        if isinstance(size, int) and size > 0:
            return size
        try:
            return len(self.load_tokenizer())
        except Exception:  # noqa: BLE001 - the tokenizer's own errors surface where it is loaded
            return None

    def rows(self, split: str) -> list[dict]:
        if not self.has_split(split):
            self.tokens(split)  # raises the explanatory error
        file = self.path / layout.data_file(split)
        rows = []
        with open(file, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise BuildError(Problem(f"not valid JSON: {e}", file=str(file), line=n, hint=RECOMPILE)) from None
        return rows

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ... for bad files
            raise BuildError(Problem(f"cannot load the build's tokenizer: {type(e).__name__}: {e}".split("\n")[0][:300],
                                     file=str(self.tokenizer_dir), hint=RECOMPILE)) from None
        if tok.pad_token_id is None:
            # Padding is masked by position, never by id, so sharing EOS's id cannot hide a real EOS label.
            tok.pad_token = tok.eos_token
        return tok
