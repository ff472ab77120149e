"""A build's model loaded to generate with (``Session``), for `tunespec generate`, `chat` and `demo`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..build_reader import Build
from ..errors import BuildError, Problem
from .evaluate import generate
from .modeling import load_variant
from .prompt_template import Renderer, build_format, load_build_template


def default_model(build: Build) -> str:
    if (build.merged_dir / "config.json").is_file():
        return "merged"
    if (build.adapter_dir / "adapter_config.json").is_file():
        return "adapter"
    return "base"


def check_model_choice(build: Build, which: str) -> None:
    """Fail fast (before loading anything) on a --model that cannot load."""
    if which == "adapter":
        if not (build.adapter_dir / "adapter_config.json").is_file():
            raise BuildError(Problem("the build has no trained adapter", file=str(build.adapter_dir), path="--model",
                                     hint=f"train first (tunespec train {build.path}), or pass --model base"))
        build.output("adapter")  # checked whole before anything loads
        return
    if which == "base":
        return
    path = build.merged_dir if which == "merged" else Path(which)
    if not (path / "config.json").is_file():
        hint = (f"merge first (tunespec merge {build.path}), or choose base or adapter" if which == "merged"
                else "--model is base, adapter, merged or a model directory (with config.json)")
        raise BuildError(Problem(f"no model at {path}", path="--model", hint=hint))
    if which == "merged":
        build.output("merged")


@dataclass
class Session:
    """A build, its template and a loaded model, ready to generate."""

    build: Build
    renderer: Renderer
    model: object
    which: str
    log: Callable[[str], None] = field(default=lambda s: None)

    def complete(self, prompts: list[str], streamer=None) -> list[str]:
        return generate(self.model, self.renderer.tokenizer, self.build, prompts, log=lambda s: None,
                        streamer=streamer).predictions

    def prompt_tokens(self, prompt: str) -> int:
        tok = self.renderer.tokenizer
        return len(self.build.prompt_ids(tok, [prompt])[0])


def open_build(build_path: str | Path, which: str | None) -> tuple[Build, str]:
    path = Path(build_path)
    if not path.exists():
        raise BuildError(Problem("no such build directory", file=str(path),
                                 hint="compile one first: tunespec compile SPEC -o BUILD"))
    build = Build(path)
    which = which or default_model(build)
    check_model_choice(build, which)
    return build, which


def make_renderer(build: Build, *, system: str | None = None) -> Renderer:
    template = load_build_template(build)
    tokenizer = build.load_tokenizer()
    tokenizer.padding_side = "left"
    return Renderer(build, template, build_format(build), tokenizer, system=system)


def load_session(build: Build, which: str, renderer: Renderer, log: Callable[[str], None]) -> Session:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    log(f"loading the {which} model of {build.path}")
    model, _ = load_variant(build, which)
    return Session(build, renderer, model, which, log)
