"""Values and keys that look like a Hugging Face access token: refused before anything reads the spec.

A spec is copied into lock.yaml and the manifest, shown by ``tunespec show`` and in error messages, so a
token written in it would leak; the messages never repeat it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from ..errors import Problem
from .origins import Loc, Origins, dotted, locate

_TOKEN = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")


def token_problems(doc: dict[str, Any], origins: Origins, root: str) -> list[Problem]:
    """Every value (and key) in `doc` that looks like a Hugging Face access token, located, with what to do."""
    found: list[Problem] = []

    def walk(node: Any, loc: Loc) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and _TOKEN.search(k):
                    found.append(Problem("a key looks like a Hugging Face access token", path=dotted(loc)))
                walk(v, loc + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, loc + (i,))
        elif isinstance(node, str) and _TOKEN.search(node):
            found.append(Problem("looks like a Hugging Face access token (hf_…)", path=dotted(loc)))

    walk(doc, ())
    out = []
    for p in found:
        p = locate(p, origins, root)
        if p.file and p.file.startswith("--set "):  # the --set argument holds the token itself
            p = dataclasses.replace(p, file="--set " + (p.path or "") + "=…")
        out.append(dataclasses.replace(p, hint="never put a token in a spec: set HF_TOKEN in the environment "
                                       "(or `hf auth login`); then revoke this token, it has been written down"))
    return out
