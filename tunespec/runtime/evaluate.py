"""`tunespec evaluate BUILD`: generate on a split, score ROUGE, compare base and fine-tuned.

Prompts are the build's rendered prompts (the training template's prompt part, tokenized exactly as in
training). Generation is batched: prompts sorted by length, left-padded, KV cache on, greedy unless the
spec asks for beams or sampling; it stops at EOS and at the template's end marker, and both are cut
from the prediction. ROUGE comes from ``rouge.score_pairs``; eval loss and perplexity from the split's
tokenized rows.

The build's lm-evaluation-harness benchmarks (``evaluation.benchmarks``, runtime/benchmarks.py) are run on the
same models: base and tuned, with their values, standard errors and the difference.

Outputs, in ``BUILD/eval/``: ``predictions.jsonl``, ``rouge.json`` and ``report.md``; with benchmarks also
``benchmarks.json`` and ``benchmark_samples.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass

from ..atomic import check_replaceable, install, temp_dir
from ..build_layout import STAMP
from ..build_reader import Build
from ..errors import BuildError, Problem
from ..micro_batches import DEFAULT_ROWS
from ..progress import Progress
from ..spec.adapter import is_peft
from . import benchmarks as bench
from . import rouge
from .batching import collate_padded, trained_tokens
from .modeling import load_variant, model_device, use_bf16


@dataclass
class Generated:
    predictions: list[str]
    seconds: float
    new_tokens: int


def _shipped(build: Build, log) -> tuple[str, dict | None]:
    """What the tuned model is by default: the merged model where a current one exists (what a user ships and
    serves; faster to generate with), else base + adapter. Returns (variant, merged stamp or None)."""
    if not is_peft(build.spec.adapter):
        return "merged", None
    if not (build.merged_dir / STAMP).is_file():
        return "adapter", None
    try:
        stamp = build.output("merged")
    except BuildError as e:
        log(f"warning: evaluating base + adapter, not merged/: {e.problems[0].message}")
        return "adapter", None
    if (build.merged_dir / STAMP).stat().st_mtime < (build.adapter_dir / STAMP).stat().st_mtime:
        log("warning: merged/ is older than adapter/ (trained again since the merge): evaluating base + adapter; "
            f"merge again (tunespec merge {build.path}) to evaluate what you would ship")
        return "adapter", None
    return "merged", stamp


def cut_at_stop(text: str, stop: str | None) -> str:
    if stop and stop in text:
        text = text[: text.index(stop)]
    return text.strip()


class _Counter:
    """A stopping criterion that stops nothing: it moves `progress` one new token per generation step."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.steps = progress, 0

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.steps += 1
        self.progress.advance()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def generate(model, tokenizer, build: Build, prompts: list[str], *, log=print, label: str = "generating",
             every: float = 30.0, streamer=None) -> Generated:
    """Batched generation for `prompts`, in their order, with the time left (an upper bound: a batch may stop
    before max_new_tokens) on a bar or a line every `every` seconds.

    ``streamer`` (one prompt, no beam search): a transformers streamer handed the prompt's ids, then each new
    token as it is chosen (``tunespec demo``); the returned prediction is the same as without it."""
    import torch
    from transformers import StoppingCriteriaList

    ev = build.spec.evaluation
    encoded = build.prompt_ids(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    eos = [build.eos_token_id]
    device = model_device(model)
    model.eval()
    kwargs = dict(max_new_tokens=ev.max_new_tokens, do_sample=ev.do_sample, num_beams=ev.num_beams,
                  eos_token_id=eos, pad_token_id=pad, use_cache=True)
    if ev.do_sample:
        kwargs.update(temperature=ev.temperature, top_p=ev.top_p)
        torch.manual_seed(ev.seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if build.stop:
        kwargs.update(stop_strings=[build.stop], tokenizer=tokenizer)
    if streamer is not None:
        if len(prompts) != 1 or ev.num_beams > 1:
            raise ValueError("a streamer needs one prompt and num_beams 1")
        kwargs.update(streamer=streamer)
    t0 = time.perf_counter()
    new_tokens = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(build.spec))
    batches = -(-len(order) // ev.batch_size)
    progress = Progress(label, batches * ev.max_new_tokens, "token step", log, upper=True, every=every)
    for start in range(0, len(order), ev.batch_size):
        counter = _Counter(progress)
        idx = order[start : start + ev.batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(encoded[i])
            ids[r, width - n :] = torch.tensor(encoded[i])
            mask[r, width - n :] = 1
        with torch.no_grad(), autocast:
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 stopping_criteria=StoppingCriteriaList([counter]), **kwargs)
        progress.advance(max(ev.max_new_tokens - counter.steps, 0))  # the steps a batch that stopped early did not take
        for r, i in enumerate(idx):
            new = gen[r, width:]
            keep = []
            for t in new.tolist():
                if t in eos:
                    break
                keep.append(t)
            new_tokens += len(keep)
            out[i] = cut_at_stop(tokenizer.decode(keep, skip_special_tokens=True), build.stop)
        progress.write(f"  generated {min(start + ev.batch_size, len(order))}/{len(order)}")
    progress.close()
    return Generated(out, time.perf_counter() - t0, new_tokens)


def eval_loss(model, build: Build, split: str, limit: int | None) -> float | None:
    """Mean loss per trained token on the split (the same masking as training), in padded batches.

    The LM head runs on the trained positions only, fused with the fp32 cross-entropy (``fused_head.FusedHead``)
    where the model's logits are head(hidden): the first batch computes the model's own logits and confirms the
    head on its recorded input gives them; later batches compute no logits elsewhere. A summary trains on
    10-30% of a row's tokens, and full logits at a 49k vocabulary cost a 135M model as much as its layers."""
    import torch

    tokens = build.tokens(split)
    n = min(len(tokens), limit or len(tokens))
    if n == 0:
        return None
    device = model_device(model)
    bs = build.spec.training.eval_batch_size or build.spec.training.micro_batch_size or DEFAULT_ROWS
    total, count = 0.0, 0
    model.eval()
    pad = build.pad_token_id
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(build.spec))
    head = _fused_head(model)
    try:
        with torch.no_grad(), autocast:
            for start in range(0, n, bs):
                batch = collate_padded(tokens, list(range(start, min(n, start + bs))), pad)
                batch = {k: v.to(device) for k, v in batch.items()}
                total += summed_loss(model, batch, head)
                count += trained_tokens(batch)
    finally:
        if head is not None:
            head.remove()
    return total / count if count else None


def _fused_head(model):
    """A FusedHead for `model`, or None where its logits are not head(hidden) or it has no output embedding."""
    from ..padding_free import head_chunk, post_head_transform
    from .fused_head import FusedHead

    config = getattr(model, "config", None)
    if config is None or post_head_transform(config) or model.get_output_embeddings() is None:
        return None
    return FusedHead(model, head_chunk(model.get_output_embeddings().weight.shape[0]))


def summed_loss(model, batch: dict, head=None) -> float:
    """Summed cross-entropy of one padded batch's trained tokens. `head`: a FusedHead; once confirmed, only its
    chunks at the trained positions (the label of position i + 1 predicted at i); until then, and without one, the
    model's own loss (transformers' shift and fp32 cross-entropy; PEFT's for virtual tokens), the first batch's
    logits compared with the head on its recorded input. Logits of another length than the input (prompt tuning's
    virtual tokens) refuse the head."""
    import torch

    from ..constants import IGNORE_INDEX

    targets = batch["labels"][:, 1:]
    where = targets != IGNORE_INDEX
    if head is not None and head.ok:
        with head.capturing():
            model(**{key: v for key, v in batch.items() if key != "labels"}, use_cache=False)
        return float(head.loss(targets[where], hidden=head.take()[:, :-1][where]))
    k = trained_tokens(batch)
    checking = head is not None and head.ok is None
    with head.recording() if checking else contextlib.nullcontext():
        out = model(**batch, num_items_in_batch=torch.tensor(max(k, 1), device=batch["labels"].device))
    if checking:
        hidden = head.take()
        same = hidden is not None and out.logits.shape[:2] == batch["input_ids"].shape == hidden.shape[:2]
        head.judge(head.difference_from(out.logits[:, :-1][where][:8], hidden[:, :-1][where][:8])
                   if same else float("inf"))
    return float(out.loss) * k


def evaluate(build: Build, *, model: str | None = None, split: str | None = None, limit: int | None = None,
             multi_ref: str | None = None, log=print) -> dict:
    ev = build.spec.evaluation
    split = split or ev.split
    limit = limit or ev.limit
    multi_ref = multi_ref or ev.multi_ref
    rows = build.rows(split)[:limit] if limit else build.rows(split)
    if not rows:
        raise BuildError(Problem(f"the {split} split is empty", hint="add rows to it and recompile"))
    prompts = [r.get("prompt", r.get("eval_prompt")) for r in rows]
    refs = [r.get("references") or [] for r in rows]
    want_rouge = "rouge" in ev.metrics
    if want_rouge and not all(refs):
        missing = sum(1 for r in refs if not r)
        raise BuildError(Problem(f"{missing} of {len(rows)} {split} rows have no reference text",
                                 hint="set evaluation.reference_fields, or drop rouge from evaluation.metrics"))
    tokenizer = build.load_tokenizer()
    tokenizer.padding_side = "left"

    merged_stamp = None
    if model is None:
        tuned, merged_stamp = _shipped(build, log)
        variants = ["base", tuned]
    else:
        variants = [model]
    results: dict[str, dict] = {}
    preds: dict[str, list[str]] = {}
    scores: dict[str, rouge.RougeResult] = {}
    base_model = None
    bench_results: dict[str, dict] = {}
    bench_tokenizer = build.load_tokenizer() if build.manifest.get("benchmarks") else None
    for which in variants:
        log(f"evaluating {which} on {len(rows)} {split} rows")
        m, label = load_variant(build, which, base=base_model)
        if which == "base":
            base_model = m
        info: dict = {"model": which}
        if which == "merged" and merged_stamp and "top1_agreement" in merged_stamp:
            # how far the merged weights (what is served) follow base+adapter (what was trained), from the merge
            info["merged_vs_adapter"] = {k: merged_stamp[k] for k in
                                         ("top1_agreement", "max_logit_diff", "positions_checked", "dtype")}
        if want_rouge:
            g = generate(m, tokenizer, build, prompts, log=log, label=f"generating ({which})")
            preds[label] = g.predictions
            scores[label] = rouge.score_pairs(g.predictions, refs, multi_ref=multi_ref,
                                              tokenizer=ev.rouge_tokenizer)
            for metric, agg in scores[label].aggregate.items():  # rouge1..rougeLsum: F1 with P, R and the CI beside it
                info[metric] = {"f1": _r(agg["fmeasure"]), "precision": _r(agg["precision"]),
                                "recall": _r(agg["recall"]), "ci_low": _r(agg["ci_low"]), "ci_high": _r(agg["ci_high"])}
            info.update(generation_seconds=round(g.seconds, 2), new_tokens=g.new_tokens,
                        tokens_per_second=round(g.new_tokens / max(g.seconds, 1e-9), 1))
        if "loss" in ev.metrics:
            loss = eval_loss(m, build, split, limit)
            info.update(eval_loss=None if loss is None else round(loss, 6),
                        perplexity=None if loss is None else round(math.exp(loss), 4))
        if bench_tokenizer is not None:
            bench_results[label] = bench.run(build, m, bench_tokenizer, label, log=log)
        results[label] = info
    target = build.eval_dir
    check_replaceable(target, also=("rouge.json",), what="evaluation")
    out_dir = temp_dir(target)  # written whole, then swapped in: rouge.json never beside an older report.md
    summary = {label: info for label, info in results.items()}
    if "base" in scores and "tuned" in scores:
        summary["delta"] = {m: round(v, 6) for m, v in rouge.delta(scores["base"], scores["tuned"]).items()}
    summary["settings"] = {"input_key": build.input_key, "split": split, "rows": len(rows), "multi_ref": multi_ref,
                           "rouge_tokenizer": next(iter(scores.values())).tokenizer if scores else None,
                           "rouge": "F1/precision/recall are plain means over samples (rouge_score; Porter stemmer "
                                    "with the default tokenizer, see rouge_tokenizer); "
                                    "ci_low/ci_high: 95% percentile bootstrap over samples, 1000 resamples",
                           "generation": ev.model_dump(include={"max_new_tokens", "num_beams", "do_sample",
                                                                "temperature", "top_p", "seed", "batch_size"}),
                           "stop": build.stop}
    (out_dir / "rouge.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            line = {"id": r["id"], "prompt": prompts[i], "references": refs[i]}
            for label in preds:
                line[f"prediction_{label}" if len(preds) > 1 else "prediction"] = preds[label][i]
                line[f"scores_{label}" if len(preds) > 1 else "scores"] = {
                    m: round(v["fmeasure"], 6) for m, v in scores[label].per_sample[i].items()}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    benchmarks = _benchmark_summary(build, bench_results) if bench_results else None
    if benchmarks:
        (out_dir / "benchmarks.json").write_text(json.dumps(benchmarks, indent=2) + "\n", encoding="utf-8")
        with open(out_dir / "benchmark_samples.jsonl", "w", encoding="utf-8") as f:
            for label, tasks in bench_results.items():
                for task, res in tasks.items():
                    for sample in res["samples"]:
                        f.write(json.dumps({"task": task, "model": label, **sample}, ensure_ascii=False,
                                           default=str) + "\n")
    (out_dir / "report.md").write_text(_report(build, summary, scores, preds, rows, refs, benchmarks),
                                       encoding="utf-8")
    install(out_dir, target)
    log(f"wrote {target}/rouge.json, predictions.jsonl, report.md"
        + (", benchmarks.json, benchmark_samples.jsonl" if benchmarks else ""))
    if benchmarks:
        summary["benchmarks"] = benchmarks
    return summary


def _benchmark_summary(build: Build, results: dict[str, dict]) -> dict:
    """benchmarks.json: per task, each model's harness values and standard errors, tuned - base, and how it ran."""
    from .. import harness

    tasks: dict[str, dict] = {}
    for record in build.manifest["benchmarks"]:
        name = record["task"]
        entry: dict = {label: res[name]["scores"] for label, res in results.items()}
        if "base" in results and "tuned" in results:
            b, t = results["base"][name]["scores"], results["tuned"][name]["scores"]
            entry["delta"] = {m: round(t[m]["value"] - b[m]["value"], 6) for m in t if m in b}
        entry["settings"] = {k: record[k] for k in ("source", "config_sha256", "docs", "evaluated", "docs_sha256",
                                                     "num_fewshot", "limit", "apply_chat_template",
                                                     "fewshot_as_multiturn", "seeds", "bootstrap_iters", "output_type")}
        entry["settings"]["data_sha256"] = [d["sha256"] for d in record["data"]]
        tasks[name] = entry
    return {"input_key": build.input_key, "lm_eval": harness.require("manifest.json benchmarks"),
            "stderr": "the harness's standard errors of each value (of the mean for acc/acc_norm; bootstrapped "
                      "for other metrics); delta = tuned - base on the same documents",
            "tasks": tasks}


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _benchmark_lines(benchmarks: dict) -> list[str]:
    lines = [f"## Benchmarks (lm-evaluation-harness {benchmarks['lm_eval']})", "",
             "Values ×100 ± the harness's standard error; Δ = tuned − base on the same documents.", "",
             "| task | metric | documents | shots | base | tuned | Δ |", "|---|---|---|---|---|---|---|"]

    def cell(x):
        if x is None:
            return "–"
        return f"{x['value'] * 100:.1f}" + (f" ± {x['stderr'] * 100:.1f}" if x["stderr"] is not None else "")

    for name, t in benchmarks["tasks"].items():
        s = t["settings"]
        metrics = list((t.get("tuned") or t.get("base") or {}).keys())
        for m in metrics:
            d = (t.get("delta") or {}).get(m)
            lines.append(f"| {name} | {m} | {s['evaluated']} of {s['docs']} | {s['num_fewshot']} | "
                         f"{cell((t.get('base') or {}).get(m))} | {cell((t.get('tuned') or {}).get(m))} | "
                         f"{'–' if d is None else f'{d * 100:+.1f}'} |")
    return lines + [""]


def _report(build: Build, summary: dict, scores: dict, preds: dict, rows: list[dict], refs: list,
            benchmarks: dict | None = None) -> str:
    s = summary["settings"]
    lines = [f"# Evaluation of {build.spec.name}", "",
             f"Split `{s['split']}`, {s['rows']} rows; references combined by **{s['multi_ref']}** per sample; "
             f"ROUGE F1 ×100 with a 95% bootstrap confidence interval (plain mean over samples, Porter stemmer).", ""]
    if scores:
        lines += [rouge.markdown_table(scores, baseline="base" if "base" in scores and len(scores) > 1 else None), ""]
    for label, info in summary.items():
        if isinstance(info, dict) and "eval_loss" in info and info["eval_loss"] is not None:
            lines.append(f"- {label}: eval loss {info['eval_loss']:.4f}, perplexity {info['perplexity']:.2f}")
        if isinstance(info, dict) and "generation_seconds" in info:
            lines.append(f"- {label}: generated {info['new_tokens']} tokens in {info['generation_seconds']} s")
        if isinstance(info, dict) and info.get("model") in ("merged", "adapter") and label == "tuned":
            agree = info.get("merged_vs_adapter")
            lines.append(f"- {label} is the {'merged model (what you would ship)' if info['model'] == 'merged' else 'base + adapter'}"
                         + (f"; at the merge it chose base+adapter's next token at {agree['top1_agreement']:.2%} of "
                            f"{agree['positions_checked']} positions (largest logit difference "
                            f"{agree['max_logit_diff']:.3g}, {agree['dtype']})" if agree else ""))
    g = s["generation"]
    if benchmarks:
        lines += [""] + _benchmark_lines(benchmarks)
    lines += ["", "Generation: " + ", ".join(f"{k}={v}" for k, v in sorted(g.items())) + f", stop={s['stop']!r}", ""]
    label = "tuned" if "tuned" in scores else next(iter(scores), None)
    if label:
        per = [x["rougeL"]["fmeasure"] for x in scores[label].per_sample]
        ranked = sorted(range(len(per)), key=lambda i: per[i])
        for title, picks in (("Best examples", ranked[::-1][:3]), ("Worst examples", ranked[:3])):
            lines += [f"## {title} ({label}, by ROUGE-L)", ""]
            for i in picks:
                lines += [f"**{rows[i]['id']}** (ROUGE-L {per[i] * 100:.1f})", "",
                          f"- reference: {refs[i][0]}", f"- prediction: {preds[label][i] or '(empty)'}", ""]
    return "\n".join(lines) + "\n"
