"""Bytes autograd saves for the backward of one decoder layer, per token, by kind (no GPU needed).

    python benchmarks/layer_saved_bytes.py [--shape 8b] [--tokens 256] [--dropout 0.05] [--compiled]

One Llama-3-8B-shaped decoder layer (hidden 4096, MLP 14336, 32 heads and 8 KV heads of 128; a 512-token
vocabulary, the head is not counted) in bf16 with peft's fp32 LoRA r16 on every linear layer, eager, under bf16
autocast on the CPU: what a checkpointed layer holds while it is recomputed in the backward pass. The saved
tensors are seen through saved-tensor hooks around the layer and counted once per storage; the parameters
(and views of them) are left out. Printed with peft's input cast (its default) and with
``runtime/lora_autocast.py``'s pass-through, and whether loss and gradients agree bit for bit.

``--compiled`` compiles the layer as the runtime does (``Module.compile``, dynamic shapes) with AOTAutograd and
the min-cut partitioner inductor uses, which decides what the compiled layer saves (recomputing cheap
pointwise ops in the backward instead), but with eager kernels: no code is generated.
"""

from __future__ import annotations

import argparse
import collections

SHAPES = {"8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128)}


def measure(shape: str, tokens: int, dropout: float, passthrough: bool, compiled: bool = False):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunespec.runtime.lora_autocast import pass_inputs_under_autocast

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], num_hidden_layers=1, vocab_size=512, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear",
                                             init_lora_weights=False)).train()
    if passthrough:
        pass_inputs_under_autocast(model)
    layer = model.base_model.model.model.layers[0]
    if compiled:
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.partitioners import min_cut_rematerialization_partition

        eager = lambda gm, _: make_boxed_func(gm)  # noqa: E731
        layer.compile(backend=aot_autograd(fw_compiler=eager, bw_compiler=eager,
                                           partition_fn=min_cut_rematerialization_partition), dynamic=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = (tuple(t.shape), str(t.dtype).replace("torch.", ""), t.untyped_storage().nbytes())
        return t

    forward = layer.forward

    def hooked(*args, **kwargs):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return forward(*args, **kwargs)

    layer.forward = hooked
    torch.manual_seed(1)
    ids = torch.randint(0, 512, (1, tokens))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    kinds: collections.Counter = collections.Counter()
    for shape_, dtype, nbytes in seen.values():
        if nbytes >= tokens:  # per-token tensors (autocast's copies of the small adapter weights are not)
            kinds[f"[T, {shape_[-1]}] {dtype}"] += nbytes
    return out.loss.detach(), grads, {k: v / tokens for k, v in kinds.items()}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8b", choices=list(SHAPES))
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--compiled", action="store_true")
    args = ap.parse_args()
    results = {}
    for name, passthrough in (("peft's cast", False), ("pass-through", True)):
        loss, grads, kinds = measure(args.shape, args.tokens, args.dropout, passthrough, args.compiled)
        total = sum(kinds.values())
        results[name] = (loss, grads)
        print(f"{name}: {total:,.0f} B per token and layer = {total * 16384 / 2**30:.2f} GiB at 16k tokens")
        for kind, b in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"    {kind:<22} {b:>10,.0f}")
    (l0, g0), (l1, g1) = results.values()
    same = torch.equal(l0, l1) and all(torch.equal(g0[n], g1[n]) for n in g0)
    print(f"loss and gradients bit-identical: {same} (loss {float(l0):.6f} / {float(l1):.6f}; dropout {args.dropout})")


if __name__ == "__main__":
    main()
