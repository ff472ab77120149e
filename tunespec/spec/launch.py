"""``launch``: the topology training runs on (compiled into an accelerate config)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .base import Section


class _Launch(Section):
    num_processes: int = Field(1, ge=1, description="Processes (GPUs) per machine.")
    num_machines: int = Field(1, ge=1)
    machine_rank: int = Field(0, ge=0)
    main_process_ip: str | None = Field(None, description="Address of machine 0 (several machines).")
    main_process_port: int = Field(29500, ge=1, le=65535)
    gpu_memory_gib: float | None = Field(None, gt=0, description="Per-GPU memory; compile fails if the estimate exceeds it.")


class SingleLaunch(_Launch):
    topology: Literal["single"] = "single"


class MultiGpuLaunch(_Launch):
    topology: Literal["multi_gpu"]


class FsdpLaunch(_Launch):
    topology: Literal["fsdp"]
    sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard"] = "full_shard"
    cpu_offload: bool = False
    activation_checkpointing: bool = False


class DeepSpeedLaunch(_Launch):
    topology: Literal["deepspeed"]
    zero_stage: Literal[1, 2, 3] = 2
    offload_optimizer: bool = Field(False, description="ZeRO: keep optimizer states in CPU memory.")
    offload_params: bool = Field(False, description="ZeRO-3: keep parameters in CPU memory.")


LaunchSpec = Annotated[
    Union[SingleLaunch, MultiGpuLaunch, FsdpLaunch, DeepSpeedLaunch], Field(discriminator="topology")
]
