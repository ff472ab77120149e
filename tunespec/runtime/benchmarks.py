"""The build's lm-evaluation-harness benchmarks (``evaluation.benchmarks``) scored on one loaded model.

Each task is loaded as the compile recorded it (manifest ``benchmarks``): a file task from the build's own
copies (``benchmarks/<task>/task.yaml`` and its data files, whose sha256 the build check verified), a harness
task by its name from lm-eval; the documents are hashed again and must be the ones the compile saw. The model
(base, base + adapter, or merged: what evaluate.py loaded) and the build's tokenizer are wrapped in lm-eval's
``HFLM`` and run through ``lm_eval.simple_evaluate`` offline, with the recorded num_fewshot, limit, chat
template choice and seeds. Results keep the harness's own values and standard errors.
"""

from __future__ import annotations

from ruamel.yaml import YAML

from .. import harness
from ..build_reader import Build
from ..errors import BuildError, Problem


def _absolute(build: Build, files):
    if files is None:
        return None
    if isinstance(files, dict):
        return {k: _absolute(build, v) for k, v in files.items()}
    if isinstance(files, list):
        return [str(build.path / f) for f in files]
    return str(build.path / files)


def _task(build: Build, record: dict, managers: dict):
    """The lm-eval Task of one manifest record, its documents checked against the compile's hash."""
    where = f"manifest.json benchmarks ({record['task']})"
    if record["source"] == "lm-eval":
        if "index" not in managers:
            managers["index"] = harness.task_manager(defaults=True)
        manager, spec, file = managers["index"], record["task"], None
    else:
        if "plain" not in managers:
            managers["plain"] = harness.task_manager(defaults=False)
        file = build.path / record["config"]
        cfg = YAML(typ="safe", pure=True).load(file.read_text(encoding="utf-8"))
        manager, spec = managers["plain"], harness.with_data_files(cfg, _absolute(build, record["data_files"]))
    task = harness.load_task(manager, spec, record["task"], where, file=str(file) if file else None)
    found = harness.docs_sha256(harness.eval_docs(task))
    if found != record["docs_sha256"]:
        raise BuildError(Problem(
            f"the documents of the task `{record['task']}` are not the ones the compile measured (sha256 {found[:12]}…, "
            f"the build recorded {record['docs_sha256'][:12]}…): its dataset or lm-eval changed since",
            path=where, hint=f"recompile to evaluate the task as it is now: tunespec compile SPEC -o {build.path} --force"))
    return task


def run(build: Build, model, tokenizer, label: str, log=print) -> dict[str, dict]:
    """{task: {"scores": {metric: {value, stderr}}, "samples": [{doc_id, target, response, metric: value}], ...}}
    for `model` (``response``: the harness's filtered responses, e.g. (log-likelihood, is-greedy) per choice)."""
    records = build.manifest.get("benchmarks") or []
    if not records:
        return {}
    harness.require("manifest.json benchmarks")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    managers: dict = {}
    out: dict[str, dict] = {}
    with harness.offline():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=build.spec.evaluation.batch_size)
        for record in records:
            name = record["task"]
            log(f"benchmark {name} ({label}): {record['evaluated']} documents, {record['num_fewshot']}-shot")
            task = _task(build, record, managers)
            seeds = record["seeds"]
            result = simple_evaluate(
                model=lm, tasks=[task], task_manager=managers.get("plain") or managers.get("index"),
                num_fewshot=record["num_fewshot"], limit=record["limit"], bootstrap_iters=record["bootstrap_iters"],
                apply_chat_template=record["apply_chat_template"], fewshot_as_multiturn=record["fewshot_as_multiturn"],
                random_seed=seeds["random"], numpy_random_seed=seeds["numpy"], torch_random_seed=seeds["torch"],
                fewshot_random_seed=seeds["fewshot"], log_samples=True)
            scores = harness.scores(result, name)
            samples = [{"doc_id": s["doc_id"], "target": s["target"], "response": s["filtered_resps"],
                        **{m: s[m] for m in record["metrics"] if m in s}}
                       for s in sorted(result["samples"][name], key=lambda s: s["doc_id"])]
            n = result["n-samples"][name]["effective"]
            if n != record["evaluated"]:
                raise BuildError(Problem(f"lm-eval evaluated {n} documents of `{name}`, the build expected "
                                         f"{record['evaluated']}", path=f"manifest.json benchmarks ({name})",
                                         hint="recompile with this lm-eval"))
            out[name] = {"scores": scores, "metrics": list(scores), "documents": n,
                         "num_fewshot": result["n-shot"].get(name, record["num_fewshot"]), "samples": samples}
    return out
