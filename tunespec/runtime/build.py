"""Read a build directory: the runtime's only input.

The runtime never reads the spec file. What it needs (the resolved spec, the tokenizer, the tokenized
rows, the rendered records) is in the build; where it writes is fixed inside the build:
``train/checkpoint-<step>/``, ``adapter/``, ``merged/``, ``eval/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML

from ..errors import BuildError, Problem
from ..models import ModelRef
from ..spec.root import Spec


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


class Build:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        for name in ("lock.yaml", "manifest.json"):
            if not (self.path / name).is_file():
                raise BuildError(Problem(f"{self.path} is not a complete build ({name} is missing)",
                                         hint="compile it first: tunespec compile SPEC -o BUILD"))
        try:
            self.lock = YAML(typ="safe", pure=True).load((self.path / "lock.yaml").read_text(encoding="utf-8"))
            self.manifest = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        except Exception as e:
            raise BuildError(Problem(f"cannot read the build's lock or manifest: {e}", file=str(self.path),
                                     hint="recompile the build")) from None
        try:
            self.spec = Spec.model_validate(self.lock["spec"])
        except Exception as e:
            raise BuildError(Problem(f"the lock file's spec does not validate with this tunespec: {e}".split("\n")[0],
                                     file=str(self.path / "lock.yaml"),
                                     hint="recompile with this version of tunespec")) from None

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

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

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
        from ..compiler.tokenize import with_prefix

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
        base = self.path / "tokens"
        return TokenSet(*(np.load(base / f"{split}.{part}.npy", mmap_mode="r") for part in ("ids", "trained", "offsets")))

    def rows(self, split: str) -> list[dict]:
        if not self.has_split(split):
            self.tokens(split)  # raises the explanatory error
        with open(self.path / "data" / f"{split}.jsonl", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        if tok.pad_token_id is None:
            # Padding is masked by position, never by id, so sharing EOS's id cannot hide a real EOS label.
            tok.pad_token = tok.eos_token
        return tok
