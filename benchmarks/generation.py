"""Batched generation (tunespec evaluate) against the seed recipe's loop (one `generate` call per prompt).

    python benchmarks/generation.py BUILD [--n 64] [--model base|adapter] [--json OUT.json]

Both use the same model, prompts (the build's evaluation split, tokenized exactly as in training),
greedy decoding and `max_new_tokens` from the build's spec. Reports wall time, generated tokens per
second, the speed-up, and how many greedy outputs are identical (batched bf16 kernels with left
padding may pick a different token where two logits tie closely).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def seed_loop(model, tokenizer, build, prompts: list[str]) -> tuple[list[str], float, int]:
    """The seed notebook's evaluation: one prompt at a time, no batching."""
    import torch

    from tunespec.runtime.evaluate import _cut

    ev = build.spec.evaluation
    eos = build.manifest["eos_token_id"]
    out, new_tokens = [], 0
    device = next(model.parameters()).device
    from tunespec.runtime.modeling import use_bf16

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(build.spec))  # as batched
    t0 = time.perf_counter()
    for prompt in prompts:
        ids = torch.tensor([build.prefix_ids + tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
        with torch.no_grad(), autocast:
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=ev.max_new_tokens,
                                 do_sample=False, eos_token_id=[eos], pad_token_id=tokenizer.pad_token_id,
                                 temperature=None, top_p=None, top_k=None)
        new = gen[0, ids.shape[1]:].tolist()
        if eos in new:
            new = new[: new.index(eos)]
        new_tokens += len(new)
        out.append(_cut(tokenizer.decode(new, skip_special_tokens=True), build.stop))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0, new_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--model", default="base", choices=["base", "adapter"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from tunespec.build_reader import Build
    from tunespec.runtime.evaluate import generate
    from tunespec.runtime.modeling import load_variant

    build = Build(args.build)
    rows = build.rows(build.spec.evaluation.split)[: args.n]
    prompts = [r.get("prompt", r.get("eval_prompt")) for r in rows]
    tokenizer = build.load_tokenizer()
    tokenizer.padding_side = "left"
    model, _ = load_variant(build, args.model)
    model.eval()
    # warm-up (kernels, cache allocator) for both paths
    generate(model, tokenizer, build, prompts[:2], log=lambda s: None)
    seed_out, seed_s, seed_tokens = seed_loop(model, tokenizer, build, prompts)
    g = generate(model, tokenizer, build, prompts, log=lambda s: None)
    same = sum(a == b for a, b in zip(seed_out, g.predictions))
    result = {
        "prompts": len(prompts),
        "model": args.model,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "max_new_tokens": build.spec.evaluation.max_new_tokens,
        "batch_size": build.spec.evaluation.batch_size,
        "seed_loop_s": round(seed_s, 3),
        "seed_loop_tokens_per_s": round(seed_tokens / seed_s, 1),
        "batched_s": round(g.seconds, 3),
        "batched_tokens_per_s": round(g.new_tokens / g.seconds, 1),
        "speedup": round(seed_s / g.seconds, 2),
        "identical_outputs": same,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
