"""Does a bf16 GEMM's speed on this GPU depend on the weights' values? (the 8B QLoRA-faster-than-LoRA question)

    python benchmarks/gemm_bits.py [--out gemm-bits.json]

The same matmul, x [16384, 4096] @ W.T with W [14336, 4096] (an 8B MLP projection at a 16k-token micro-batch),
all bf16, timed with W holding:

* `random_normal`: torch.randn * 0.02, the random-weight benchmark's bf16 base (and, bit for bit, about what
  trained bf16 weights look like: every mantissa bit in use);
* `nf4_dequantized`: the same W quantized to NF4 (bitsandbytes, blocks of 64) and de-quantized, what a
  QLoRA layer multiplies by: 16 distinct values per block times its scale;
* `zeros`: all zeros, the floor.

Each is run for --seconds seconds after a warm-up; reported: TFLOP/s, the mean SM clock (MHz) and power (W)
read through NVML during the run. A GPU held at its power limit lowers its clock for operands whose bits
toggle more, so TFLOP/s can differ with nothing but the values changed.
"""

from __future__ import annotations

import argparse
import json
import threading
import time


def sampler(stop: threading.Event, out: list):
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    while not stop.is_set():
        out.append((pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM), pynvml.nvmlDeviceGetPowerUsage(h) / 1000))
        time.sleep(0.02)


def timed(x, w, seconds: float) -> dict:
    import torch

    for _ in range(10):
        x @ w.T
    torch.cuda.synchronize()
    samples: list = []
    stop = threading.Event()
    t = threading.Thread(target=sampler, args=(stop, samples))
    t.start()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            x @ w.T
        torch.cuda.synchronize()
        n += 20
    elapsed = time.perf_counter() - start
    stop.set()
    t.join()
    flops = 2 * x.shape[0] * x.shape[1] * w.shape[0] * n
    clock = [c for c, _ in samples] or [0]
    power = [p for _, p in samples] or [0]
    return {"tflops": round(flops / elapsed / 1e12, 1), "sm_clock_mhz": round(sum(clock) / len(clock)),
            "power_w": round(sum(power) / len(power)), "matmuls": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    torch.manual_seed(0)
    x = torch.randn(16384, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
    weights = {"random_normal": w}
    try:
        import bitsandbytes.functional as F

        q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
        weights["nf4_dequantized"] = F.dequantize_4bit(q, state).to(torch.bfloat16)
    except ImportError as e:
        print(f"bitsandbytes missing ({e}): no NF4 row")
    weights["zeros"] = torch.zeros_like(w)
    result = {"device": torch.cuda.get_device_name(), "shape": "[16384, 4096] @ [4096, 14336] bf16",
              **{name: timed(x, v, args.seconds) for name, v in weights.items()}}
    # the random row again last, so a GPU that warmed up over the run shows as a drift between the two
    result["random_normal_again"] = timed(x, w, args.seconds)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
