"""`tunespec run SPEC`: compile -> train -> merge -> evaluate, skipping stages whose outputs are valid.

A stage's output is valid when it records the build's input key (and, for later stages, is newer than
what it was made from). Interrupt it at any point and run it again: it picks up where it stopped
(training resumes from its newest checkpoint).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from .build_layout import STAMP
from .errors import BuildError, Problem
from .spec.adapter import MERGEABLE_SPECS, is_peft


def _stamp(path: Path) -> dict | None:
    """A JSON record the pipeline wrote (a stamp, eval/rouge.json, publish.json); None when unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fresh_output(build, name: str, after: Path | None = None) -> bool:
    """BUILD/<name> is whole (its seal checks out), made from this build, and newer than ``after``."""
    try:
        build.output(name)
    except BuildError:
        return False
    stamp_file = build.path / name / ("rouge.json" if name == "eval" else "tunespec.json")
    return after is None or not after.exists() or stamp_file.stat().st_mtime >= after.stat().st_mtime


def _fresh(stamp_file: Path, key: str, after: Path | None = None) -> bool:
    stamp = _stamp(stamp_file)
    if not stamp or stamp.get("input_key") != key:
        return False
    return after is None or not after.exists() or stamp_file.stat().st_mtime >= after.stat().st_mtime


def run_all(spec_path: Path, output: Path | None, overrides: tuple[str, ...], *, force: bool = False, log=print) -> dict:
    from .compiler.build_writer import compile_build
    from .spec.loader import load_spec

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    loaded = load_spec(spec_path, overrides)
    out = Path(output) if output else loaded.build_dir
    cmd = "tunespec run " + " ".join([str(spec_path)] + [f"--set {o}" for o in overrides] + (["-o", str(output)] if output else []))

    stages = 5 if loaded.spec.output.push_to_hub is not None else 4  # publishing is a stage when asked for
    log(f"[1/{stages}] compile")
    t = time.perf_counter()
    result = compile_build(loaded, out, force=force, command=cmd)
    for line in result.messages:
        log("  " + line)
    timings["compile"] = time.perf_counter() - t

    from .build_reader import Build

    build = Build(out)
    has_adapter = is_peft(build.spec.adapter)  # any peft method (BUILD/adapter), not a full fine-tune
    final = build.adapter_dir if has_adapter else build.merged_dir
    log(f"[2/{stages}] train")
    t = time.perf_counter()
    if _fresh_output(build, final.name):
        log(f"  {final.name}/ is up to date: skipped")
    elif build.spec.launch.topology == "single":
        from .runtime.train import train

        train(out)
    else:
        rc = subprocess.call(["bash", str(out / "launch.sh")])
        if rc:
            raise BuildError(Problem(f"training under accelerate exited with code {rc}", file=str(out / "launch.sh"),
                                     hint="see the log above; rerun to resume from the newest checkpoint"))
    timings["train"] = time.perf_counter() - t

    log(f"[3/{stages}] merge")
    t = time.perf_counter()
    if not has_adapter:
        log("  full fine-tune: the model is already complete in merged/")
    elif not isinstance(build.spec.adapter, MERGEABLE_SPECS):
        log(f"  {build.spec.adapter.method}: adds virtual tokens, nothing to merge; serve base + adapter")
    elif _fresh_output(build, "merged", after=build.adapter_dir / STAMP):
        log("  merged/ is up to date: skipped")
    else:
        from .runtime.merge import merge

        merge(build, log=lambda s: log("  " + s))
    timings["merge"] = time.perf_counter() - t

    log(f"[4/{stages}] evaluate")
    t = time.perf_counter()
    rouge_file = build.eval_dir / "rouge.json"
    if _fresh_output(build, "eval", after=final / STAMP):
        log("  eval/ is up to date: skipped")
        summary = _stamp(rouge_file)
    else:
        from .runtime.evaluate import evaluate

        summary = evaluate(build, log=lambda s: log("  " + s))
    timings["evaluate"] = time.perf_counter() - t

    published = None
    if stages == 5:
        log("[5/5] publish")
        t = time.perf_counter()
        stamp_file = out / "publish.json"
        stamp = _stamp(stamp_file)
        if stamp and _fresh(stamp_file, build.input_key, after=final / STAMP) and \
                _fresh(stamp_file, build.input_key, after=build.merged_dir / STAMP) and \
                _fresh(stamp_file, build.input_key, after=rouge_file):
            log(f"  published {stamp.get('url')} is up to date: skipped")
            published = stamp.get("url")
        else:
            from .runtime.publish import publish

            published = publish(build, log=lambda s: log("  " + s)).url
        timings["publish"] = time.perf_counter() - t

    from .runtime.report import write_report

    html = write_report([out], log=lambda s: log("  " + s))  # BUILD/report.html: made from the outputs above
    report = (build.eval_dir / "report.md").read_text(encoding="utf-8").split("## Best")[0].rstrip()
    total = time.perf_counter() - t_start
    log("")
    log(report)
    log("")
    log(f"done in {total:.0f}s (" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + ")")
    log(f"  build:     {out}")
    log(f"  adapter:   {build.adapter_dir if has_adapter else '(full fine-tune)'}")
    log(f"  merged:    {build.merged_dir}")
    log(f"  report:    {build.eval_dir / 'report.md'}")
    log(f"  html:      {html}   (tunespec report BUILD [OTHER] writes it again)")
    if published:
        log(f"  published: {published}")
    log(f"  loss plot: {build.train_dir / 'loss.png'}")
    log(f"  rerun:     {cmd}   (finished stages are skipped)")
    return summary
