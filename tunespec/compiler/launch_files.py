"""Launch files: how a build directory is started on one GPU, several GPUs, or several machines.

``write_launch_files(spec, build_dir)`` writes, from ``spec.launch`` and ``spec.training``:

``accelerate.yaml``
    An ``accelerate launch --config_file`` configuration (read back by accelerate's own
    ``ClusterConfig``): ``distributed_type`` NO | MULTI_GPU | FSDP | DEEPSPEED, ``num_processes``
    (all processes of all machines: ``launch.num_processes * launch.num_machines``),
    ``num_machines``, ``machine_rank``, ``main_process_ip``/``main_process_port`` (several machines).
``deepspeed.json`` (deepspeed topology only)
    The DeepSpeed configuration the accelerate config points at.
``launch.sh``
    ``./launch.sh [runtime args...]``: runs ``accelerate launch`` with the build's config on this
    machine. It finds the build directory from its own location at launch time, so the directory
    may be moved or copied to another machine.
``launch.slurm``
    An ``sbatch`` script for ``launch.num_machines`` nodes with ``launch.num_processes`` GPUs each.

Every file is the same bytes for the same spec (fixed key order, no timestamps, no absolute paths).

Decisions
---------
Mixed precision.
    ``training.bf16: true`` writes ``mixed_precision: bf16`` and ``training.fp16: true`` writes
    ``fp16``; ``training.bf16: auto`` and ``false`` write ``no``. ``auto`` depends on the GPU the run
    lands on, which the compiler cannot know, so the runtime resolves it: it passes the resolved
    value as ``Accelerator(mixed_precision=...)``, which takes precedence over what
    ``accelerate launch`` exports from this file. For the deepspeed topology the key is left out
    entirely: accelerate refuses ``mixed_precision`` in the accelerate config next to a
    ``deepspeed_config_file``; ``deepspeed.json`` says ``{"enabled": "auto"}`` for bf16 and fp16,
    and accelerate fills both from the ``Accelerator``'s mixed precision.
FSDP.
    FSDP2 (``fsdp_version: 2``), auto-wrap ``TRANSFORMER_BASED_WRAP`` with no
    ``fsdp_transformer_layer_cls_to_wrap``: accelerate 1.x then wraps the classes the model lists in
    ``model._no_split_modules`` (its decoder layer class), so the build does not name a class.
    ``sharding``: ``full_shard`` -> ``fsdp_reshard_after_forward: true``; ``shard_grad_op`` ->
    ``false``; ``hybrid_shard`` -> full sharding within a machine and replication across machines,
    written as accelerate's ``parallelism_config`` (``dp_shard_size = num_processes``,
    ``dp_replicate_size = num_machines``). ``fsdp_cpu_ram_efficient_loading: true`` (rank 0 reads the
    weights, the others receive them) needs ``fsdp_sync_module_states: true`` for
    ``accelerate launch`` to accept it; FSDP2 itself ignores that flag.
    ``fsdp_state_dict_type: SHARDED_STATE_DICT`` (checkpoints are saved per rank).
DeepSpeed config path.
    ``accelerate.yaml`` names ``deepspeed_config_file: deepspeed.json``, a path accelerate resolves
    against the current directory (so a hand-typed ``accelerate launch --config_file accelerate.yaml``
    works from inside the build directory). ``launch.sh`` and ``launch.slurm`` also pass
    ``--deepspeed_config_file "$BUILD/deepspeed.json"``, an absolute path computed at launch time,
    which overrides the file's relative one: they work from any directory.
DeepSpeed "auto" values.
    The runtime drives accelerate directly (not the HF Trainer), so only what accelerate fills
    may stay ``"auto"``: ``bf16.enabled``/``fp16.enabled`` (from the mixed precision) and the
    hidden-size based bucket sizes (``reduce_bucket_size``, ``stage3_prefetch_bucket_size``,
    ``stage3_param_persistence_threshold``, filled from ``model.config.hidden_size`` when the model is
    prepared). ``train_micro_batch_size_per_gpu`` and ``gradient_accumulation_steps`` are written
    from ``spec.training`` (accelerate would read the micro batch from the prepared dataloader's
    ``batch_size``, which is ``None`` with a batch sampler), ``gradient_clipping`` from
    ``training.max_grad_norm`` (0 = off). ``train_batch_size`` is left out: DeepSpeed derives it
    from the micro batch, the accumulation and the world size it finds at run time.
Several machines.
    accelerate starts torchrun with its static rendezvous at ``main_process_ip:main_process_port``
    (``--main_process_ip`` on the command line overrides the file's). For DeepSpeed,
    ``deepspeed_multinode_launcher: standard``: one ``accelerate launch`` per machine (no
    pdsh/hostfile), which is what ``launch.slurm`` and running ``launch.sh`` on every machine do.
    The build directory must be on a file system every machine sees: the main process writes the
    checkpoints (under FSDP/DeepSpeed every process writes its shards into them), and a resume
    refuses to start when the processes see different newest checkpoints.
Machines without GPUs (CI, a laptop).
    ``launch.sh`` is the same ``accelerate launch``, and the config stays ``MULTI_GPU``/``FSDP``:
    for those accelerate starts ``num_processes`` workers through torchrun whether or not there
    are GPUs, and the runtime's ``Accelerator(cpu=True)`` joins them into a gloo group (MULTI_CPU),
    so ``bash launch.sh`` runs real data-parallel processes on a CPU, on one machine or several.
    (``distributed_type: MULTI_CPU`` would not: accelerate then starts one process and expects
    ``mpirun`` to start the others; ``use_cpu: true`` likewise.) accelerate applies FSDP on GPUs
    only: on a CPU an FSDP build trains as plain data parallel with unsharded checkpoints, and the
    runtime says so. DeepSpeed needs deepspeed and GPUs.
Stopping several processes.
    torchrun starts every worker in a session of its own, so a signal to ``launch.sh``'s process
    group (``kill -- -PGID``, Ctrl-C) reaches the launcher only; it passes SIGTERM/SIGINT on to the
    workers, which finish the step, save and exit, and SIGKILLs those left after 30 s. SIGKILL of
    the launcher alone leaves the workers running: kill them too (Slurm kills the whole job).
    The scripts run ``accelerate launch`` through ``tunespec.runtime.launcher`` (``python3`` on
    PATH must be the environment tunespec is installed in): when the workers get the signal and
    stop cleanly (each saved and exited 130/143) the launch exits with that code, where
    ``accelerate launch`` would print torch elastic's ChildFailedError traceback and exit 1.

Running on several machines
---------------------------
By hand: copy (or share) the build directory to every machine and run on each
``TUNESPEC_MACHINE_RANK=<rank> ./launch.sh``; ``TUNESPEC_MAIN_PROCESS_IP`` overrides the address of
machine 0 written in the spec (``launch.main_process_ip``).

With Slurm:

1. Put the build directory on a file system every node sees, and install tunespec in the
   environment the job runs in (activate it in the script's header, or before ``sbatch``:
   ``sbatch`` passes the environment on).
2. Submit: ``sbatch path/to/build/launch.slurm [runtime args...]``. The script asks for
   ``launch.num_machines`` nodes, one task per node and ``launch.num_processes`` GPUs per node;
   add partition/account/time options on the ``sbatch`` command line or in the header.
3. The script finds the build directory from the job's command (``scontrol show job``), or from
   ``TUNESPEC_BUILD`` when set; it takes the first node of the allocation as machine 0
   (``scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p``; ``head -n1`` would make the
   listing die of SIGPIPE, which ``set -o pipefail`` turns into a failed job) and starts, with ``srun``,
   one ``accelerate launch`` per node with ``--machine_rank $SLURM_NODEID``,
   ``--num_machines $SLURM_NNODES`` and ``--num_processes`` = nodes x GPUs per node.
4. Logs go to Slurm's output file (``slurm-<jobid>.out`` in the submission directory).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..spec import Spec
from ..spec.launch import DeepSpeedLaunch, FsdpLaunch

RUNTIME_MODULE = "tunespec.runtime.train"
# `accelerate launch` whose clean stop (every worker saved and exited 130/143) exits quietly with that code
LAUNCHER = "python3 -m tunespec.runtime.launcher"
ACCELERATE_CONFIG = "accelerate.yaml"
DEEPSPEED_CONFIG = "deepspeed.json"
LAUNCH_SCRIPT = "launch.sh"
SLURM_SCRIPT = "launch.slurm"

_DISTRIBUTED_TYPE = {"single": "NO", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}


def write_launch_files(spec: Spec, build_dir: Path) -> list[str]:
    """Write the launch files for ``spec`` into ``build_dir``; return their names (relative)."""
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[str, int]] = {ACCELERATE_CONFIG: (accelerate_yaml(spec), 0o644)}
    if isinstance(spec.launch, DeepSpeedLaunch):
        files[DEEPSPEED_CONFIG] = (deepspeed_json(spec), 0o644)
    files[LAUNCH_SCRIPT] = (launch_script(spec), 0o755)
    files[SLURM_SCRIPT] = (slurm_script(spec), 0o755)
    for name, (text, mode) in files.items():
        path = build_dir / name
        path.write_bytes(text.encode("utf-8"))
        path.chmod(mode)
    return list(files)


# --------------------------------------------------------------------------- accelerate.yaml


def mixed_precision(spec: Spec) -> str:
    """The ``mixed_precision`` the accelerate config carries: bf16 | fp16 | no (``auto`` -> no, see above)."""
    if spec.training.fp16:
        return "fp16"
    if spec.training.bf16 is True:
        return "bf16"
    return "no"


def world_size(spec: Spec) -> int:
    """Processes over all machines."""
    return spec.launch.num_processes * spec.launch.num_machines


def accelerate_config(spec: Spec) -> dict:
    """The accelerate config as a dict (the keys ``ClusterConfig`` reads)."""
    ln = spec.launch
    config: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": _DISTRIBUTED_TYPE[ln.topology],
        "downcast_bf16": False,
        "enable_cpu_affinity": False,
        "machine_rank": ln.machine_rank,
        "num_machines": ln.num_machines,
        "num_processes": world_size(spec),
        "use_cpu": False,
    }
    if not isinstance(ln, DeepSpeedLaunch):
        config["mixed_precision"] = mixed_precision(spec)
    if ln.num_machines > 1:
        config["main_process_ip"] = ln.main_process_ip
        config["main_process_port"] = ln.main_process_port
    elif ln.main_process_port != 29500:
        config["main_process_port"] = ln.main_process_port
    if isinstance(ln, FsdpLaunch):
        config["fsdp_config"] = _fsdp_config(ln)
        if ln.sharding == "hybrid_shard":
            config["parallelism_config"] = {
                "parallelism_config_dp_replicate_size": ln.num_machines,
                "parallelism_config_dp_shard_size": ln.num_processes,
            }
    if isinstance(ln, DeepSpeedLaunch):
        config["deepspeed_config"] = {
            "deepspeed_config_file": DEEPSPEED_CONFIG,
            "deepspeed_multinode_launcher": "standard",
            "zero3_init_flag": ln.zero_stage == 3,
        }
    return config


def _fsdp_config(ln: FsdpLaunch) -> dict:
    return {
        "fsdp_activation_checkpointing": ln.activation_checkpointing,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_offload_params": ln.cpu_offload,
        "fsdp_reshard_after_forward": ln.sharding != "shard_grad_op",
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_sync_module_states": True,
        "fsdp_version": 2,
    }


def accelerate_yaml(spec: Spec) -> str:
    """``accelerate.yaml``'s text: sorted keys, block style."""
    return yaml.safe_dump(accelerate_config(spec), sort_keys=True, default_flow_style=False)


# --------------------------------------------------------------------------- deepspeed.json


def deepspeed_config(spec: Spec) -> dict:
    """The DeepSpeed config for a deepspeed-topology spec (see the module docstring for "auto")."""
    ln = spec.launch
    if not isinstance(ln, DeepSpeedLaunch):
        raise ValueError(f"topology {ln.topology!r} has no DeepSpeed config")
    t = spec.training
    zero: dict = {"stage": ln.zero_stage, "reduce_bucket_size": "auto"}
    if ln.zero_stage >= 2:
        zero.update(
            {
                "allgather_partitions": True,
                "contiguous_gradients": True,
                "overlap_comm": True,
                "reduce_scatter": True,
            }
        )
    if ln.zero_stage == 3:
        zero.update(
            {
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                "stage3_param_persistence_threshold": "auto",
                "stage3_prefetch_bucket_size": "auto",
                "sub_group_size": 1_000_000_000,
            }
        )
    if ln.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ln.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_clipping": float(t.max_grad_norm) if t.max_grad_norm is not None else 0.0,
        # rows per micro-batch where set; sized by tokens, a micro-batch is one concatenated sequence
        "train_micro_batch_size_per_gpu": t.micro_batch_size or 1,
        "wall_clock_breakdown": False,
        "zero_optimization": zero,
    }


def deepspeed_json(spec: Spec) -> str:
    return json.dumps(deepspeed_config(spec), indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- scripts

_FIND_BUILD = 'BUILD="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"'


def _deepspeed_flag(spec: Spec) -> str:
    return ' --deepspeed_config_file "$BUILD/deepspeed.json"' if isinstance(spec.launch, DeepSpeedLaunch) else ""


def launch_script(spec: Spec) -> str:
    """``launch.sh``: ``accelerate launch`` with this build's config, from any directory."""
    ln = spec.launch
    lines = [
        "#!/usr/bin/env bash",
        f"# Train {spec.name} ({ln.topology}, {world_size(spec)} process(es)): ./launch.sh [runtime args...]",
        "set -euo pipefail",
        _FIND_BUILD,
        f'ARGS=(--config_file "$BUILD/{ACCELERATE_CONFIG}"{_deepspeed_flag(spec)})',
    ]
    if ln.num_machines > 1:
        lines += [
            "# On machine N of several: TUNESPEC_MACHINE_RANK=N ./launch.sh",
            'if [[ -n "${TUNESPEC_MACHINE_RANK:-}" ]]; then ARGS+=(--machine_rank "$TUNESPEC_MACHINE_RANK"); fi',
            'if [[ -n "${TUNESPEC_MAIN_PROCESS_IP:-}" ]]; then ARGS+=(--main_process_ip "$TUNESPEC_MAIN_PROCESS_IP"); fi',
        ]
    lines.append(f'exec {LAUNCHER} "${{ARGS[@]}}" -m {RUNTIME_MODULE} "$BUILD" "$@"')
    return "\n".join(lines) + "\n"


def slurm_script(spec: Spec) -> str:
    """``launch.slurm``: an sbatch script, one ``accelerate launch`` per node (see the module docstring)."""
    ln = spec.launch
    gpus = ln.num_processes
    return "\n".join(
        [
            "#!/usr/bin/env bash",
            f"#SBATCH --job-name={spec.name}",
            f"#SBATCH --nodes={ln.num_machines}",
            "#SBATCH --ntasks-per-node=1",
            f"#SBATCH --gpus-per-node={gpus}",
            f"# Train {spec.name} on {ln.num_machines} node(s) x {gpus} GPU(s): sbatch launch.slurm [runtime args...]",
            "# The build directory: $TUNESPEC_BUILD, else the directory of the submitted script.",
            "set -euo pipefail",
            'if [[ -n "${TUNESPEC_BUILD:-}" ]]; then',
            '  BUILD="$(cd "$TUNESPEC_BUILD" && pwd)"',
            "else",
            '  SCRIPT="$(scontrol show job "$SLURM_JOB_ID" | sed -n \'s/^ *Command=\\([^ ]*\\).*/\\1/p\')"',
            '  BUILD="$(cd "$(dirname "$SCRIPT")" && pwd)"',
            "fi",
            f'if [[ ! -f "$BUILD/{ACCELERATE_CONFIG}" ]]; then',
            f'  echo "launch.slurm: no {ACCELERATE_CONFIG} in $BUILD; set TUNESPEC_BUILD to the build directory" >&2',
            "  exit 2",
            "fi",
            "# The first node is machine 0 (sed -n 1p, not head -n1: head's early exit fails under pipefail).",
            'MAIN_IP="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)"',
            f"MAIN_PORT={ln.main_process_port}",
            f"GPUS_PER_NODE={gpus}",
            "export BUILD MAIN_IP MAIN_PORT GPUS_PER_NODE",
            "srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c '"
            f'exec {LAUNCHER} --config_file "$BUILD/{ACCELERATE_CONFIG}"{_deepspeed_flag(spec)}'
            ' --num_machines "$SLURM_NNODES" --num_processes "$((SLURM_NNODES * GPUS_PER_NODE))"'
            ' --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_IP" --main_process_port "$MAIN_PORT"'
            f' -m {RUNTIME_MODULE} "$BUILD" "$@"\' _ "$@"',
        ]
    ) + "\n"


__all__ = [
    "write_launch_files",
    "accelerate_config",
    "accelerate_yaml",
    "deepspeed_config",
    "deepspeed_json",
    "launch_script",
    "slurm_script",
    "mixed_precision",
    "world_size",
]
