"""benchmarks/memory_peak.py: the peak of a CUDA memory snapshot's trace and what is alive there, on a trace written
here in the format ``torch.cuda.memory._snapshot()`` returns (no GPU needed), every figure hand-computed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from memory_peak import GIB, summarize  # noqa: E402

MIB = 2**20


def frame(filename, line, name):
    return {"filename": filename, "line": line, "name": name}


TORCH = frame("/site/torch/nn/modules/linear.py", 125, "forward")
MLP = frame("/site/transformers/models/llama/modeling_llama.py", 160, "forward")
HEAD = frame("/work/tunespec/runtime/fused_head.py", 140, "_head_ce")


def alloc(addr, mib, *frames):
    return {"action": "alloc", "addr": addr, "size": mib * MIB, "frames": list(frames)}


def free(addr, mib):
    return {"action": "free_requested", "addr": addr, "size": mib * MIB, "frames": []}


def test_the_peak_and_its_sites():
    """Baseline 1,024 MiB (weights loaded before recording). Live totals after each alloc: 1,024 + 512 = 1,536;
    + 256 = 1,792; (the 512 freed: 1,280) + 1,024 = 2,304, the peak; (a block from before the trace, 100 MiB,
    freed: 2,204) then (the 1,024 freed: 1,180) + 64 = 1,244. At the peak: 256 + 1,024 MiB from the MLP line
    (torch's own frame skipped), nothing from the head yet, and 1,024 MiB alive from before."""
    trace = [
        alloc(1, 512, TORCH, MLP),
        alloc(2, 256, TORCH, MLP),
        free(1, 512),
        alloc(3, 1024, MLP),
        free(99, 100),
        free(3, 1024),
        alloc(4, 64, TORCH, HEAD),
        {"action": "free_completed", "addr": 4, "size": 64 * MIB, "frames": []},  # not a second free
    ]
    s = summarize({"device_traces": [trace]}, baseline=1024 * MIB)
    assert s["peak_gib"] == round(2304 * MIB / GIB, 3) == 2.25
    assert s["peak_event"] == 3 and s["events"] == 8
    assert s["alive_from_before_gib"] == 1.0
    assert s["sites"] == [{"site": "llama/modeling_llama.py:160 forward", "gib": 1.25, "blocks": 2}]
    assert s["reached_by"]["site"] == "llama/modeling_llama.py:160 forward" and s["reached_by"]["size_mib"] == 1024


def test_a_trace_that_only_frees_peaks_at_its_baseline():
    s = summarize({"device_traces": [[free(7, 10)]]}, baseline=20 * MIB)
    assert s["peak_gib"] == round(20 * MIB / GIB, 3) and s["peak_event"] == -1 and s["reached_by"] is None
    assert s["sites"] == []


def test_a_stack_of_torch_frames_only_is_named_by_its_innermost():
    s = summarize({"device_traces": [[alloc(1, 8, TORCH)]]})
    assert s["sites"][0]["site"] == "modules/linear.py:125 forward"
