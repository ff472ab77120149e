"""Shared fixtures: an isolated tunespec cache, a tiny random Llama, spec files and compiled builds.

The environment fixture is opt-in (``tunespec_env``) so other test modules keep their own cache
settings; every fixture here that builds or trains something uses it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import helpers
import pytest


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Every test starts and ends with accelerate's process-wide state forgotten.

    accelerate keeps one AcceleratorState per process; a test that trains in-process would
    otherwise fix the mixed precision (or device) of every later test's Accelerator.
    """
    import sys

    if "accelerate" in sys.modules:
        helpers.reset_accelerate()
    yield
    if "accelerate" in sys.modules:
        helpers.reset_accelerate()


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tunespec-cache")


@pytest.fixture
def tunespec_env(monkeypatch, _session_cache) -> Path:
    """TUNESPEC_CACHE in a temporary directory (nothing is written under $HOME) and the hub offline."""
    monkeypatch.setenv("TUNESPEC_CACHE", str(_session_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return _session_cache


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, _session_cache) -> Path:
    """A seeded tiny random Llama (hidden 64, 2 layers, tied embeddings) with a BPE tokenizer, saved once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNESPEC_CACHE", str(_session_cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        return helpers.build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def make_spec(tiny_model_dir):
    """make_spec(tmp_path, **{"training.max_steps": 3}) -> the path of a spec file for the tiny model."""

    def make(directory: Path, name: str = "spec.yaml", **overrides) -> Path:
        return helpers.write_spec(Path(directory) / name, tiny_model_dir, overrides)

    return make


@pytest.fixture
def compile(tunespec_env):  # noqa: A001 - the brief's name for it
    """compile(spec_path, out, force=False) -> BuildResult (compile_build in-process)."""
    return helpers.compile_spec


@pytest.fixture(scope="session")
def tiny_build_template(tmp_path_factory, tiny_model_dir, _session_cache) -> Path:
    """The default spec compiled once; tests get copies (``tiny_build``) since runtime outputs go inside."""
    return helpers.compiled_once(tmp_path_factory.mktemp("tiny-build"), tiny_model_dir, _session_cache)


@pytest.fixture
def tiny_build(tmp_path, tiny_build_template, tunespec_env) -> Path:
    """A private copy of the compiled default build (12 steps, save every 3, LoRA r 8)."""
    dst = tmp_path / "build"
    shutil.copytree(tiny_build_template, dst)
    return dst


@pytest.fixture
def build_from(tmp_path, make_spec, tunespec_env):
    """build_from(**overrides) -> a compiled build of the default spec with dotted overrides."""
    count = {"n": 0}

    def make(**overrides) -> Path:
        count["n"] += 1
        d = tmp_path / f"b{count['n']}"
        spec = make_spec(d, **overrides)
        helpers.compile_spec(spec, d / "build")
        return d / "build"

    return make
