"""``launch``: the topology training runs on (compiled into an accelerate config)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, Tag

from .base import Section, tag_with_default

GpuName = Literal["h100", "h100_pcie", "h100_nvl", "h200", "a100", "a10", "a10g", "l4", "l40s", "rtx4090", "v100", "t4"]
"""GPU models whose peak throughput tunespec knows (tunespec/compiler/flops.py holds the numbers)."""


class _Launch(Section):
    num_processes: int = Field(1, ge=1, le=4096, description="Processes (GPUs) per machine.")
    num_machines: int = Field(1, ge=1, le=100_000, description="Machines taking part; more than 1 needs main_process_ip.")
    machine_rank: int = Field(0, ge=0, description="This machine's index, 0 .. num_machines - 1 (0 runs the main process).")
    main_process_ip: str | None = Field(None, description="Address of machine 0 (several machines).")
    main_process_port: int = Field(29500, ge=1, le=65535, description="Port machine 0 listens on for the others.")
    gpu_memory_gib: float | None = Field(None, gt=0, le=1e5, description="Per-GPU memory; compile fails if the estimate exceeds it.")
    gpu: GpuName | None = Field(
        None, description="The GPU model trained on, for the compile report's expected wall time (h100 is the SXM "
        "card); left out: the report gives the training FLOPs only."
    )


class SingleLaunch(_Launch):
    """One process on one device (the default when `topology` is left out)."""

    topology: Literal["single"] = Field("single", description="One process (the default when left out).")


class MultiGpuLaunch(_Launch):
    """Data parallel (DDP): one process per GPU, each holding a full copy of the model."""

    topology: Literal["multi_gpu"] = Field(description="Data parallel across processes (DDP).")


class FsdpLaunch(_Launch):
    """PyTorch FSDP: parameters, gradients and optimizer states sharded across processes."""

    topology: Literal["fsdp"] = Field(description="Fully Sharded Data Parallel.")
    sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard"] = Field(
        "full_shard",
        description="full_shard: shard everything; shard_grad_op: only gradients and optimizer states; "
        "hybrid_shard: full shard within a machine, replicate across machines.",
    )
    cpu_offload: bool = Field(False, description="Keep parameters and gradients in CPU memory between uses.")
    activation_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")


class DeepSpeedLaunch(_Launch):
    """DeepSpeed ZeRO: optimizer states (stage 1), + gradients (2), + parameters (3) sharded."""

    topology: Literal["deepspeed"] = Field(description="DeepSpeed ZeRO.")
    zero_stage: Literal[1, 2, 3] = Field(
        2, description="1: shard optimizer states; 2: also gradients; 3: also parameters."
    )
    offload_optimizer: bool = Field(False, description="ZeRO: keep optimizer states in CPU memory.")
    offload_params: bool = Field(False, description="ZeRO-3: keep parameters in CPU memory.")


# Tagged by `topology`; a mapping without `topology` is a single-process launch.
LaunchSpec = Annotated[
    Union[
        Annotated[SingleLaunch, Tag("single")],
        Annotated[MultiGpuLaunch, Tag("multi_gpu")],
        Annotated[FsdpLaunch, Tag("fsdp")],
        Annotated[DeepSpeedLaunch, Tag("deepspeed")],
    ],
    tag_with_default("topology", "single"),
]
