"""Markdown tables from `train_throughput.py` result files (the training section of BENCHMARKS.md).

    python benchmarks/throughput_table.py RESULT.json [RESULT.json ...]

Systems from several files are merged in the order given (a later file's system replaces an earlier
one of the same name: a re-run after a fix). Loss at equal tokens, for TRL and tunespec run alike (both
padded, both packed): each one's mean step loss over the steps that end in the last quarter of the
smaller of the two token counts they reached (random weights: the loss only shows that both learn alike).
"""

from __future__ import annotations

import json
import sys

LABELS = {
    "seed_qlora": "seed recipe, QLoRA (HF Trainer, batch 2 x 5, GC, paged_adamw_8bit)",
    "seed_lora": "seed recipe, bf16 LoRA (batch 2 x 5, GC, paged_adamw_8bit)",
    "trl": "TRL SFTTrainer, batch 16 (its defaults: GC on)",
    "trl_packing": "TRL SFTTrainer, batch 16, packing",
    "trl_qlora_packing": "TRL SFTTrainer, QLoRA, batch 16, packing",
    "tunespec": "tunespec defaults (micro batch 16 rows)",
    "tunespec_packing": "tunespec defaults + packing (16 bins of 1,024)",
    "tunespec_qlora_packing": "tunespec defaults + packing, QLoRA",
}


def loss_at(curve: list, tokens: int) -> float | None:
    window = [loss for seen, loss in curve if 0.75 * tokens < seen <= tokens]
    return round(sum(window) / len(window), 3) if window else None


def table(results: list[dict]) -> str:
    systems: dict[str, dict] = {}
    for r in results:
        systems.update(r["systems"])
    lines = ["| system | real tokens/s | positions/s | padding | peak memory | MFU (6N) | tokens seen | final loss |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in systems.items():
        label = LABELS.get(name, name)
        if "error" in v:
            lines.append(f"| {label} | {v['error'].splitlines()[0][:80]} | | | | | |")
            continue
        lines.append(f"| {label} | {v['real_tokens_per_s']:,.0f} | {v['positions_per_s']:,.0f} | "
                     f"{v['padding_fraction']:.1%} | {v['peak_memory_gib']:.2f} GiB | {v['mfu_6N']:.1%} | "
                     f"{v.get('tokens_seen', 0):,} | {v['final_loss']} |")
    lines.append("")
    for trl, ours in PAIRS:
        a, b = systems.get(trl, {}), systems.get(ours, {})
        if "loss_curve" in a and "loss_curve" in b:
            n = min(a["tokens_seen"], b["tokens_seen"])
            lines.append(f"Loss at equal tokens ({n:,}): {LABELS[trl]} {loss_at(a['loss_curve'], n)}, "
                         f"{LABELS[ours]} {loss_at(b['loss_curve'], n)}.")
    return "\n".join(lines)


PAIRS = [("trl", "tunespec"), ("trl_packing", "tunespec_packing"), ("trl_qlora_packing", "tunespec_qlora_packing")]


if __name__ == "__main__":
    print(table([json.load(open(p)) for p in sys.argv[1:]]))
