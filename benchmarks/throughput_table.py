"""Markdown tables from `train_throughput.py` result files (the training section of BENCHMARKS.md).

    python benchmarks/throughput_table.py [--params N] RESULT.json [RESULT.json ...]
    python benchmarks/throughput_table.py --summary NAME=RESULT.json [NAME=RESULT.json ...]

`--params N` recomputes MFU with N parameters (results written before train_throughput.py counted a 4-bit
model's parameters by their real shapes: numel() counts the packed bytes). `--summary` gives one row per
workload: each system's tokens/s and peak memory, and tunespec's defaults against the fastest peer (the
issue's target: >= 1.3x its tokens/s at <= its peak memory).

Systems from several files are merged in the order given (a later file's system replaces an earlier
one of the same name: a re-run after a fix). Loss at equal tokens, for TRL and tunespec run alike (both
padded, both packed): each one's mean step loss over the steps that end in the last quarter of the
smaller of the two token counts they reached (random weights: the loss only shows that both learn alike).

Tokens/s is what the timed training forwards took (`trained_rate`): the collator's real-token count scaled by
the positions counted at the input embedding over the positions collated, where the result has both (a data
loader that reads ahead collates more than the steps train). Older results have the collator's count only.
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
    "trl_liger": "TRL SFTTrainer + Liger kernels, batch 16",
    "trl_liger_packing": "TRL SFTTrainer + Liger kernels, batch 16, packing",
    "trl_liger_qlora_packing": "TRL SFTTrainer + Liger kernels, QLoRA, batch 16, packing",
    "unsloth": "Unsloth (FastLanguageModel + TRL SFTTrainer), batch 16",
    "unsloth_packing": "Unsloth (FastLanguageModel + TRL SFTTrainer), batch 16, packing",
    "unsloth_qlora_packing": "Unsloth, QLoRA, batch 16, packing",
    "tunespec_defaults": "tunespec defaults (no training section: 16k-token padding-free micro-batches)",
    "tunespec_qlora_defaults": "tunespec defaults, QLoRA",
    "tunespec_offload": "tunespec defaults + activation_offload",
    "tunespec_no_offload": "tunespec defaults, activation_offload: false",
    "tunespec_qlora_offload": "tunespec defaults + activation_offload, QLoRA",
}
PEERS = ("trl_packing", "trl_liger_packing", "unsloth_packing", "trl_qlora_packing", "trl_liger_qlora_packing",
         "unsloth_qlora_packing")
OURS = ("tunespec_defaults", "tunespec_qlora_defaults")
OFFLOAD = ("tunespec_offload", "tunespec_qlora_offload")


def trained_rate(v: dict) -> float:
    """Real tokens/s the timed forwards trained: the collated count times forwarded/collated positions."""
    if v.get("forward_positions_per_s") and v.get("positions_per_s"):
        return v["real_tokens_per_s"] * v["forward_positions_per_s"] / v["positions_per_s"]
    return v["real_tokens_per_s"]


def collated_per_trained(v: dict) -> float | None:
    """Positions collated per position a timed forward took (1.0: the loader read no further than trained)."""
    if v.get("forward_positions_per_s") and v.get("positions_per_s"):
        return v["positions_per_s"] / v["forward_positions_per_s"]
    return None


def loss_at(curve: list, tokens: int) -> float | None:
    window = [loss for seen, loss in curve if 0.75 * tokens < seen <= tokens]
    return round(sum(window) / len(window), 3) if window else None


def table(results: list[dict], params: int | None = None) -> str:
    systems: dict[str, dict] = {}
    for r in results:
        systems.update(r["systems"])
    if params:
        for r in results:
            for v in r["systems"].values():
                if "real_tokens_per_s" in v:
                    v["mfu_6N"] = 6 * params * v["real_tokens_per_s"] / (r["bf16_matmul_peak_tflops"] * 1e12)
    peak = {name: r["bf16_matmul_peak_tflops"] for r in results for name in r["systems"]}
    lines = ["| system | real tokens/s trained | collated / trained | padding | peak memory | MFU (6N) | tokens seen "
             "| final loss |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, v in systems.items():
        label = LABELS.get(name, name)
        if "error" in v:
            lines.append(f"| {label} | {v['error'].splitlines()[0][:80]} | | | | | |")
            continue
        ratio = collated_per_trained(v)
        mfu = v["mfu_6N"] * trained_rate(v) / v["real_tokens_per_s"] if peak.get(name) else v["mfu_6N"]
        lines.append(f"| {label} | {trained_rate(v):,.0f} | {f'{ratio:.2f}' if ratio else 'n/a'} | "
                     f"{v['padding_fraction']:.1%} | {v['peak_memory_gib']:.2f} GiB | {mfu:.1%} | "
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


FAMILIES = [("seed recipe", ("seed_lora", "seed_qlora")), ("TRL, packing", ("trl_packing", "trl_qlora_packing")),
            ("TRL + Liger, packing", ("trl_liger_packing", "trl_liger_qlora_packing")),
            ("Unsloth, packing", ("unsloth_packing", "unsloth_qlora_packing")),
            ("tunespec defaults", OURS), ("tunespec + activation_offload", OFFLOAD)]


def summary(named: list[tuple[str, dict]]) -> str:
    """One row per workload; columns for the families any workload has; `ours` is the defaults' system."""
    families = [(f, m) for f, m in FAMILIES if any(x in r["systems"] for _, r in named for x in m)]
    lines = ["| workload | " + " | ".join(f for f, _ in families) + " | tunespec defaults / fastest peer |",
             "| --- | " + " | ".join("---:" for _ in families) + " | --- |"]
    for workload, r in named:
        sy = {k: v for k, v in r["systems"].items() if "real_tokens_per_s" in v}
        cells = []
        for _, members in families:
            n = next((m for m in members if m in sy), None)
            cells.append(f"{trained_rate(sy[n]):,.0f} / {sy[n]['peak_memory_gib']:.2f} GiB" if n else "")
        peers = [n for n in PEERS if n in sy]
        ours = next((n for n in OURS if n in sy), None)
        verdict = ""
        if peers and ours:
            best = max(peers, key=lambda n: trained_rate(sy[n]))
            speed = trained_rate(sy[ours]) / trained_rate(sy[best])
            memory = sy[ours]["peak_memory_gib"] - sy[best]["peak_memory_gib"]
            met = speed >= 1.3 and memory <= 0
            family = next(f for f, members in FAMILIES if best in members)
            verdict = f"{speed:.2f}x {family}, {memory:+.2f} GiB: {'met' if met else 'not met'}"
        lines.append(f"| {workload} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] == "--summary":
        print(summary([(a.split("=", 1)[0], json.load(open(a.split("=", 1)[1]))) for a in argv[1:]]))
    else:
        n = None
        if argv and argv[0] == "--params":
            n, argv = int(argv[1]), argv[2:]
        print(table([json.load(open(p)) for p in argv], n))
