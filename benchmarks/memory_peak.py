"""What is alive at a run's peak GPU memory, by the code that allocated it (for the memory gaps in #19).

    python benchmarks/memory_peak.py SNAPSHOT.pickle [--top 15]

SNAPSHOT is what ``torch.cuda.memory._dump_snapshot`` writes after
``torch.cuda.memory._record_memory_history(stacks="python")``; ``train_throughput.py`` records one per system
with ``TS_MEMORY=PATH`` and writes this summary to PATH-SYSTEM-peak.json (the snapshot itself, hundreds of MB at 8B,
stays on the GPU machine).

The device trace is replayed in order: an ``alloc`` makes a block live, its ``free_requested`` ends it (the
moment ``memory_allocated`` drops; with ``record_stream`` the memory returns to the pool later, at
``free_completed``). Bytes alive before recording began and freed during it come out of ``baseline``, the
allocated memory the caller passes (``memory_allocated()`` when recording started). At the event where the
live total is largest the blocks are grouped by their *site*: the innermost frame outside torch itself
(``file:line function``), or the innermost frame where every frame is torch's. Reported: the peak, the site
and stack of the allocation that reached it (what was running), and the largest sites with bytes and count.
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections import defaultdict

GIB = 2**30


def _frame(f: dict) -> str:
    """One stack frame as file:line function (the file's last two path parts)."""
    return f"{'/'.join(f.get('filename', '?').split('/')[-2:])}:{f.get('line', '?')} {f.get('name', '?')}"


def _site(frames: list[dict]) -> str:
    """The innermost frame outside torch's own files (the innermost one where all are torch's)."""
    if not frames:
        return "(no stack)"
    return _frame(([f for f in frames if "/torch/" not in f.get("filename", "")] or frames)[0])


def _replay(trace: list[dict], baseline: int):
    """Replay `trace`: after each alloc yields (index, live total, live blocks {addr: (size, frames)}, bytes still
    alive from before the trace); the blocks are one dict, updated as the replay goes on."""
    live: dict[int, tuple[int, list]] = {}
    before, total = baseline, baseline
    for i, e in enumerate(trace):
        action, addr, size = e.get("action"), e.get("addr"), e.get("size", 0)
        if action == "alloc":
            live[addr] = (size, e.get("frames") or [])
            total += size
            yield i, total, live, before
        elif action == "free_requested":
            if addr in live:
                total -= live.pop(addr)[0]
            else:  # allocated before recording began
                before -= size
                total -= size


def summarize(snapshot: dict, *, baseline: int = 0, device: int = 0, top: int = 15) -> dict:
    """The peak of `snapshot`'s device trace and what was alive then (see the module docstring)."""
    trace = snapshot["device_traces"][device]
    peak, peak_at = baseline, -1
    for i, total, _, _ in _replay(trace, baseline):
        if total > peak:
            peak, peak_at = total, i
    live: dict = {}
    before = baseline
    if peak_at >= 0:  # a second replay, stopped at the peak (copying the blocks at every new peak is slow)
        _, _, live, before = next(step for step in _replay(trace, baseline) if step[0] == peak_at)
    sites: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, frames in live.values():
        site = sites[_site(frames)]
        site[0] += size
        site[1] += 1
    largest = sorted(sites.items(), key=lambda kv: -kv[1][0])[:top]
    event = trace[peak_at] if peak_at >= 0 else None
    return {
        "peak_gib": round(peak / GIB, 3),
        "alive_from_before_gib": round(before / GIB, 3),
        "peak_event": peak_at,
        "events": len(trace),
        "reached_by": None if event is None else {
            "site": _site(event.get("frames") or []), "size_mib": round(event.get("size", 0) / 2**20, 1),
            "stack": [_frame(f) for f in (event.get("frames") or [])[:12]]},
        "sites": [{"site": k, "gib": round(v[0] / GIB, 3), "blocks": v[1]} for k, v in largest],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("snapshot")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--baseline", type=int, default=0, help="Bytes allocated when recording began.")
    args = ap.parse_args()
    with open(args.snapshot, "rb") as f:
        snapshot = pickle.load(f)
    print(json.dumps(summarize(snapshot, baseline=args.baseline, top=args.top), indent=2))


if __name__ == "__main__":
    main()
