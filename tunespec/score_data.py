"""`tunespec score-data SPEC -o FILE`: each train row's instruction-following difficulty (IFD), for
``data.selection.ifd``; the scores are computed by runtime/scoring.py (``score_build``).

The spec is compiled first, without ``data.selection.ifd`` (the rows
it would choose from, nor ``data.selection.kcenter``), into a temporary directory; the file lists every train row of that build:

    {"kind": "tunespec ifd scores", "version": 1, "input_key": "...", "model": "...", "rows": 240}
    {"id": "train-0001", "ifd": 0.6134, "loss": 1.9021, "loss_alone": 3.1009}
    ...

With ``embeddings`` (``--embeddings``, or a spec that sets ``data.selection.kcenter``) the header also says
``"embedding_dim": D`` and each row carries ``"embedding": [D numbers]`` (runtime/scoring.py).

The file is written whole or not at all (``atomic.write_text``). The compile reads it (``selection.read_scores``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .atomic import refuse_overlap, write_text
from .build_reader import Build
from .compiler.build_writer import compile_build
from .compiler.selection import SCORES_KIND
from .compiler.sources import sources_inputs
from .model_resolver import ModelRef
from .runtime.scoring import score_build
from .spec.loader import load_spec


def score_spec(loaded, output: Path, *, embeddings: bool = False, log=print) -> dict:
    """Compile `loaded` without its IFD and k-center selection, score its train rows (with ``embeddings``, or
    when the spec sets data.selection.kcenter, each row's embedding too), write `output`. The header."""
    output = Path(output)
    data_files = [Path(f["file"]) for i in sources_inputs(loaded.spec.data.sources) for e in i
                  for f in ([e] if "file" in e else e.get("files", []))]
    refuse_overlap(output, [loaded.file, *loaded.extends, *data_files], is_dir=False)
    sel = loaded.spec.data.selection
    embeddings = embeddings or sel.kcenter is not None
    if sel.ifd is not None or sel.kcenter is not None:  # scored: the rows before the IFD and k-center choices
        loaded = load_spec(loaded.file, list(loaded.overrides) + [f"data.selection.{k}=null" for k in ("ifd", "kcenter")
                                                                  if getattr(sel, k) is not None])
    with tempfile.TemporaryDirectory(prefix="tunespec-score-") as tmp:
        result = compile_build(loaded, Path(tmp) / "build", log=lambda s: None,
                               command=f"tunespec score-data {loaded.file}")
        for line in result.messages[1:]:
            if "warning" in line or "dropped" in line:
                log(line)
        build = Build(result.path)
        scored = score_build(build, embeddings=embeddings, log=log)
        header = {"kind": SCORES_KIND, "version": 1, "input_key": build.input_key,
                  "model": ModelRef.from_spec(loaded.spec.model).label, "rows": len(scored)}
        if embeddings:
            header["embedding_dim"] = len(scored[0]["embedding"]) if scored else 0
    write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [header, *scored]))
    helped = sum(r["ifd"] < 1 for r in scored)
    log(f"wrote {output}: {len(scored)} train rows scored{' (with embeddings)' if embeddings else ''}, {helped} with IFD under 1 "
        f"(median IFD {sorted(r['ifd'] for r in scored)[len(scored) // 2]:.3f})")
    return header
