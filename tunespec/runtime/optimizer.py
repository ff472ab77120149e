"""The optimizer and its learning-rate schedule, as ``training.*`` describes them."""

from __future__ import annotations

import math


def make_optimizer(spec, params):
    """``training.optimizer`` over `params`; weight decay on matrices only (not on biases and norms)."""
    import torch

    t = spec.training
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    name, lr = t.optimizer, t.learning_rate
    if name in ("adamw_torch", "adamw_torch_fused"):
        fused = torch.cuda.is_available() and all(p.is_cuda for p in params)
        return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
    if name in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
        import bitsandbytes as bnb

        cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
               "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}[name]
        return cls(groups, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


def make_scheduler(spec, optimizer, total_steps: int):
    """``training.lr_scheduler`` over `total_steps`, warming up for ``warmup_steps`` (else ``warmup_ratio``)."""
    from transformers import get_scheduler

    t = spec.training
    warmup = t.warmup_steps or math.ceil(t.warmup_ratio * total_steps)
    return get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
