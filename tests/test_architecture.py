"""The package's shape, read from its source (issue #22): data flows spec -> compiler -> build -> runtime, so the
compiler never imports the runtime nor the runtime the compiler (function-local imports included), the spec
package imports neither, the shared top-level modules import neither; no module-level import cycle; no private
name imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tunespec"
# the commands: they join both sides (compile then train, compile then score), and only they may
COMMANDS = {"tunespec.cli", "tunespec.pipeline", "tunespec.rerun_training", "tunespec.score_data"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, *, top_only: bool) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) of every import in module `name` (only those at module level with
    `top_only`), relative imports resolved."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    nodes = tree.body if top_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            # `from . import x` names a module x when there is one
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            found += [(node.lineno, s, []) for s in subs] or [(node.lineno, target, names)]
    return found


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("spec", "compiler", "runtime") else "shared"


FORBIDDEN = {"spec": {"compiler", "runtime"}, "compiler": {"runtime"}, "runtime": {"compiler"},
             "shared": {"compiler", "runtime"}}


def test_the_tree_is_what_these_checks_read():
    assert "tunespec.compiler.build_writer" in MODULES and "tunespec.runtime.train" in MODULES
    assert "tunespec.spec.loader" in MODULES and len(MODULES) > 80
    assert all(c in MODULES for c in COMMANDS)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_the_side_it_must_not(layer):
    bad = []
    for name in MODULES:
        if _layer(name) != layer or name in COMMANDS:
            continue
        for line, target, _ in _imports(name, top_only=False):
            if target.startswith("tunespec.") and _layer(target) in FORBIDDEN[layer]:
                bad.append(f"{MODULES[name].relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_module_level_import_cycle():
    graph = {m: {t for _, t, _ in _imports(m, top_only=True) if t in MODULES and t != m} for m in MODULES}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for name in MODULES:
        for line, target, names in _imports(name, top_only=False):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and target.startswith("tunespec"):
                    bad.append(f"{MODULES[name].relative_to(PACKAGE.parent)}:{line} imports {target}.{n}")
    assert not bad, "\n".join(bad)


def test_a_seeded_violation_is_caught(tmp_path, monkeypatch):
    """The checks above can fail: a compiler module that imports the runtime and a private name of it."""
    fake = tmp_path / "tunespec" / "compiler" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..runtime.train import _private\n", encoding="utf-8")
    monkeypatch.setitem(MODULES, "tunespec.compiler.fake", fake)
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "tunespec")  # where the reported paths are relative to
    with pytest.raises(AssertionError, match="fake.py:2 imports tunespec.runtime.train"):
        test_no_layer_imports_the_side_it_must_not("compiler")
    with pytest.raises(AssertionError, match="fake.py:2 imports tunespec.runtime.train._private"):
        test_no_private_name_is_imported_from_another_module()


def test_a_seeded_cycle_is_caught(tmp_path, monkeypatch):
    for a, b in (("one", "two"), ("two", "one")):
        path = tmp_path / "tunespec" / f"cycle_{a}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"from .cycle_{b} import x\n", encoding="utf-8")
        monkeypatch.setitem(MODULES, f"tunespec.cycle_{a}", path)
    with pytest.raises(AssertionError, match="tunespec.cycle_one -> tunespec.cycle_two -> tunespec.cycle_one"):
        test_no_module_level_import_cycle()
