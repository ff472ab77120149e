"""The launch files: accelerate reads them back as we meant, the scripts parse and find their build."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

from tunespec.compiler.launch_files import write_launch_files
from tunespec.spec import Spec

BASE = {
    "name": "t",
    "model": {"packaged": "smollm2-135m-instruct"},
    "data": {"format": "alpaca", "sources": [{"path": "/x.jsonl"}]},
}

TOPOLOGIES = {
    "single": {"topology": "single"},
    "multi_gpu": {"topology": "multi_gpu", "num_processes": 2},
    "fsdp": {"topology": "fsdp", "num_processes": 4, "activation_checkpointing": True, "cpu_offload": True},
    "deepspeed2": {"topology": "deepspeed", "num_processes": 2, "zero_stage": 2},
    "deepspeed3": {
        "topology": "deepspeed",
        "num_processes": 8,
        "zero_stage": 3,
        "offload_optimizer": True,
        "offload_params": True,
    },
    "two_machines": {
        "topology": "multi_gpu",
        "num_processes": 4,
        "num_machines": 2,
        "machine_rank": 1,
        "main_process_ip": "10.0.0.1",
        "main_process_port": 29123,
    },
}


def make_spec(launch: dict, training: dict | None = None) -> Spec:
    data = dict(BASE, launch=launch)
    if training is not None:
        data["training"] = training
    return Spec.model_validate(data)


def write(tmp_path: Path, launch: dict, training: dict | None = None) -> tuple[Path, list[str]]:
    build = tmp_path / "build"
    names = write_launch_files(make_spec(launch, training), build)
    return build, names


def load(build: Path) -> ClusterConfig:
    config = load_config_from_file(str(build / "accelerate.yaml"))
    assert isinstance(config, ClusterConfig)
    assert config == ClusterConfig.from_yaml_file(str(build / "accelerate.yaml"))
    return config


# --------------------------------------------------------------------------- accelerate.yaml


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_files_written_and_parse(tmp_path, name):
    build, names = write(tmp_path, TOPOLOGIES[name])
    expected = {"accelerate.yaml", "launch.sh", "launch.slurm"}
    if name.startswith("deepspeed"):
        expected.add("deepspeed.json")
    assert set(names) == expected
    assert {p.name for p in build.iterdir()} == expected
    for script in ("launch.sh", "launch.slurm"):
        mode = (build / script).stat().st_mode
        assert stat.S_IMODE(mode) == 0o755
        subprocess.run(["bash", "-n", str(build / script)], check=True)
    config = load(build)
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.use_cpu is False
    for text in (build / n for n in names):
        assert str(tmp_path) not in text.read_text()


def test_single(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["single"])
    c = load(build)
    assert c.distributed_type == DistributedType.NO
    assert (c.num_processes, c.num_machines, c.machine_rank) == (1, 1, 0)
    assert c.mixed_precision == "no"  # bf16: auto is resolved by the runtime
    assert c.main_process_ip is None
    assert c.fsdp_config == {} and c.deepspeed_config == {}


def test_multi_gpu(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["multi_gpu"], {"bf16": True})
    c = load(build)
    assert c.distributed_type == DistributedType.MULTI_GPU
    assert (c.num_processes, c.num_machines) == (2, 1)
    assert c.mixed_precision == "bf16"


def test_fp16(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["multi_gpu"], {"fp16": True, "bf16": False})
    assert load(build).mixed_precision == "fp16"


def test_two_machines(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["two_machines"])
    c = load(build)
    assert (c.num_processes, c.num_machines, c.machine_rank) == (8, 2, 1)
    assert (c.main_process_ip, c.main_process_port) == ("10.0.0.1", 29123)
    slurm = (build / "launch.slurm").read_text()
    assert "#SBATCH --nodes=2" in slurm
    assert "#SBATCH --ntasks-per-node=1" in slurm
    assert "#SBATCH --gpus-per-node=4" in slurm
    assert "MAIN_PORT=29123" in slurm


def test_fsdp(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["fsdp"])
    c = load(build)
    assert c.distributed_type == DistributedType.FSDP
    assert c.num_processes == 4
    f = c.fsdp_config
    assert f["fsdp_version"] == 2
    assert f["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in f  # taken from model._no_split_modules
    assert f["fsdp_reshard_after_forward"] is True  # full_shard
    assert f["fsdp_cpu_ram_efficient_loading"] is True and f["fsdp_sync_module_states"] is True
    assert f["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert f["fsdp_activation_checkpointing"] is True
    assert f["fsdp_offload_params"] is True
    assert c.parallelism_config == {}


def test_fsdp_sharding_variants(tmp_path):
    build, _ = write(tmp_path / "a", {"topology": "fsdp", "num_processes": 2, "sharding": "shard_grad_op"})
    assert load(build).fsdp_config["fsdp_reshard_after_forward"] is False
    hybrid = {
        "topology": "fsdp",
        "num_processes": 4,
        "num_machines": 2,
        "main_process_ip": "h0",
        "sharding": "hybrid_shard",
    }
    build, _ = write(tmp_path / "b", hybrid)
    c = load(build)
    assert c.fsdp_config["fsdp_reshard_after_forward"] is True
    assert c.parallelism_config == {
        "parallelism_config_dp_replicate_size": 2,
        "parallelism_config_dp_shard_size": 4,
    }


def test_deepspeed_stage2(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["deepspeed2"], {"micro_batch_size": 4, "gradient_accumulation_steps": 3})
    c = load(build)
    assert c.distributed_type == DistributedType.DEEPSPEED
    assert c.num_processes == 2
    assert c.mixed_precision is None  # accelerate rejects it next to a deepspeed_config_file
    assert c.deepspeed_config == {
        "deepspeed_config_file": "deepspeed.json",
        "deepspeed_multinode_launcher": "standard",
        "zero3_init_flag": False,
    }
    ds = json.loads((build / "deepspeed.json").read_text())
    z = ds["zero_optimization"]
    assert z["stage"] == 2
    assert "offload_optimizer" not in z and "offload_param" not in z
    assert z["overlap_comm"] is True and z["contiguous_gradients"] is True
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 1.0
    assert ds["bf16"] == {"enabled": "auto"} and ds["fp16"] == {"enabled": "auto"}
    assert "train_batch_size" not in ds


def test_deepspeed_stage3_offload(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["deepspeed3"], {"max_grad_norm": None})
    c = load(build)
    assert c.num_processes == 8
    assert c.deepspeed_config["zero3_init_flag"] is True
    ds = json.loads((build / "deepspeed.json").read_text())
    z = ds["zero_optimization"]
    assert z["stage"] == 3
    assert z["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert z["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert z["stage3_gather_16bit_weights_on_model_save"] is True
    assert z["stage3_prefetch_bucket_size"] == "auto"
    assert ds["gradient_clipping"] == 0.0


def test_deepspeed_plugin_reads_config(tmp_path):
    """accelerate's DeepSpeedPlugin builds from deepspeed.json without deepspeed installed."""
    from accelerate.utils import DeepSpeedPlugin

    build, _ = write(tmp_path, TOPOLOGIES["deepspeed3"], {"micro_batch_size": 2, "gradient_accumulation_steps": 4})
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        plugin = DeepSpeedPlugin(hf_ds_config=str(build / "deepspeed.json"))
    assert plugin.zero_stage == 3
    assert plugin.offload_optimizer_device == "cpu"
    assert plugin.offload_param_device == "cpu"
    assert plugin.gradient_accumulation_steps == 4
    assert plugin.zero3_init_flag is True
    plugin.set_mixed_precision("bf16")  # what the Accelerator does with its mixed_precision
    assert plugin.deepspeed_config["bf16"] == {"enabled": True}
    assert plugin.deepspeed_config["fp16"] == {"enabled": False}


# --------------------------------------------------------------------------- through accelerate launch


def _launch_env(build: Path, extra: list[str] | None = None) -> tuple[object, dict]:
    """What `accelerate launch --config_file build/accelerate.yaml ...` would export (no process started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", str(build / "accelerate.yaml"), *(extra or []), "-m", "tunespec.runtime.train", str(build)]
    args = launch_command_parser().parse_args(argv)
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    keep = ("ACCELERATE_", "FSDP_", "PARALLELISM_CONFIG_")
    return args, {k: v for k, v in env.items() if k.startswith(keep)}


def _accelerate_env_only(env: dict):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_", "PARALLELISM_"))}
    clean.update(env)
    return mock.patch.dict(os.environ, clean, clear=True)


def test_accelerate_launch_fsdp_plugin(tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    build, _ = write(tmp_path, TOPOLOGIES["fsdp"], {"bf16": True})
    args, env = _launch_env(build)
    assert args.nproc_per_node == "4"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with _accelerate_env_only(env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.transformer_cls_names_to_wrap is None  # -> model._no_split_modules at prepare time
    assert plugin.cpu_ram_efficient_loading is True
    assert plugin.activation_checkpointing is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"


@pytest.mark.parametrize("name", ["multi_gpu", "fsdp", "two_machines"])
def test_accelerate_launch_starts_every_process_without_gpus(tmp_path, name):
    """launch.sh on a machine without GPUs (CI): the config's MULTI_GPU/FSDP make accelerate start its
    processes through torchrun (a MULTI_CPU config or use_cpu would start one process); the runtime's
    Accelerator(cpu=True) then joins them into a gloo group (tests/test_distributed.py runs it)."""
    build, _ = write(tmp_path, TOPOLOGIES[name])
    args, _ = _launch_env(build)
    assert (args.multi_gpu or args.use_fsdp) and not args.cpu  # -> multi_gpu_launcher, not simple_launcher
    ln = TOPOLOGIES[name]
    assert args.nproc_per_node == str(ln["num_processes"])
    assert args.num_machines == ln.get("num_machines", 1)


def test_accelerate_launch_hybrid_parallelism(tmp_path):
    from accelerate.parallelism_config import ParallelismConfig

    hybrid = {"topology": "fsdp", "num_processes": 2, "num_machines": 2, "main_process_ip": "h0", "sharding": "hybrid_shard"}
    build, _ = write(tmp_path, hybrid)
    args, env = _launch_env(build)
    assert (args.nproc_per_node, args.nnodes) == ("2", "2")
    assert args.rdzv_endpoint == "h0:29500"
    with _accelerate_env_only(env):
        pc = ParallelismConfig()
    assert (pc.dp_replicate_size, pc.dp_shard_size) == (2, 2)


def test_accelerate_launch_deepspeed_plugin(tmp_path, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    build, _ = write(tmp_path, TOPOLOGIES["deepspeed3"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # launch.sh passes the absolute path: works from any directory
    _, env = _launch_env(build, ["--deepspeed_config_file", str(build / "deepspeed.json")])
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(build / "deepspeed.json")
    with _accelerate_env_only(env):
        plugin = DeepSpeedPlugin()  # would raise if the accelerate config carried mixed_precision
    assert plugin.zero_stage == 3 and plugin.offload_param_device == "cpu"


# --------------------------------------------------------------------------- scripts


def _fake_bin(tmp_path: Path, name: str, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text("#!/usr/bin/env bash\n" + body)
    tool.chmod(0o755)
    return bin_dir


def test_launch_sh_finds_moved_build(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["deepspeed2"])
    moved = tmp_path / "moved here"
    shutil.move(str(build), str(moved))
    bin_dir = _fake_bin(tmp_path, "python3", 'printf "%s\\n" "$@"\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    out = subprocess.run(
        ["bash", str(moved / "launch.sh"), "--extra", "x y"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    real = str(moved.resolve())
    assert out == [
        "-m",
        "tunespec.runtime.launcher",
        "--config_file",
        f"{real}/accelerate.yaml",
        "--deepspeed_config_file",
        f"{real}/deepspeed.json",
        "-m",
        "tunespec.runtime.train",
        real,
        "--extra",
        "x y",
    ]


def test_launch_sh_machine_rank_override(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["two_machines"])
    bin_dir = _fake_bin(tmp_path, "python3", 'printf "%s\\n" "$@"\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TUNESPEC_MACHINE_RANK="0")
    out = subprocess.run(["bash", str(build / "launch.sh")], env=env, capture_output=True, text=True, check=True)
    assert "--machine_rank\n0\n" in out.stdout


def test_launch_slurm_with_fake_slurm(tmp_path):
    build, _ = write(tmp_path, TOPOLOGIES["two_machines"])
    _fake_bin(
        tmp_path,
        "scontrol",
        'if [[ "$1 $2" == "show hostnames" ]]; then printf "node7\\nnode8\\n"; '
        f'else printf "   Command={build}/launch.slurm\\n   WorkDir=/\\n"; fi\n',
    )
    _fake_bin(tmp_path, "srun", 'SLURM_NODEID=1 exec "${@:3}"\n')  # drop srun's own two options
    bin_dir = _fake_bin(tmp_path, "python3", 'printf "%s\\n" "$@"\n')
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="42",
        SLURM_JOB_NODELIST="node[7-8]",
        SLURM_NNODES="2",
    )
    out = subprocess.run(
        ["bash", str(build / "launch.slurm"), "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    real = str(build.resolve())
    assert out == [
        "-m",
        "tunespec.runtime.launcher",
        "--config_file",
        f"{real}/accelerate.yaml",
        "--num_machines",
        "2",
        "--num_processes",
        "8",
        "--machine_rank",
        "1",
        "--main_process_ip",
        "node7",
        "--main_process_port",
        "29123",
        "-m",
        "tunespec.runtime.train",
        real,
        "--resume",
    ]


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_deterministic(tmp_path, name):
    a, names = write(tmp_path / "a", TOPOLOGIES[name])
    b, _ = write(tmp_path / "b", TOPOLOGIES[name])
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()


# --------------------------------------------------------------------------- the FSDP example spec

def test_the_70b_fsdp_qlora_example_fits_its_cards_and_compiles_to_what_accelerate_reads(tmp_path, tiny_model_dir):
    """specs/llama3-70b-qlora-fsdp.yaml: its memory estimate on Llama-3-70B's shape fits the 80 GB it names, and
    compiled (the tiny model and local rows in place of the gated hub ones) it gives accelerate an FSDP2 launch of
    8 processes and the runtime a 4-bit config whose storage dtype FSDP can shard."""
    import torch
    from helpers import DATA
    from transformers import LlamaConfig

    from tunespec.compiler.memory import estimate_memory
    from tunespec.runtime.modeling import quantization_config
    from tunespec.spec.loader import load_spec

    example = Path(__file__).resolve().parents[1] / "specs" / "llama3-70b-qlora-fsdp.yaml"
    spec = load_spec(example).spec
    llama3_70b = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                             num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
    est = estimate_memory(spec, llama3_70b, seq_len=16384, micro_batch_rows=1)  # the auto budget's 16k tokens
    assert est.world_size == 8 and 60e9 < est.total_params < 75e9
    assert est.per_gpu < spec.launch.gpu_memory_gib * 2**30, est.render()

    q = quantization_config(spec)
    assert q.bnb_4bit_quant_storage == torch.bfloat16 == q.bnb_4bit_compute_dtype

    local = tmp_path / "local.yaml"
    local.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
    loaded = load_spec(local, ["model.hub=null", f"model.path={tiny_model_dir}", "data.template=instruct_output_end", "data.tokenization.max_length=256",
                               f"data.sources=[{{path: {DATA / 'dialogues_train.jsonl'}}}, "
                               f"{{path: {DATA / 'dialogues_test.jsonl'}, split: test}}]"])
    from tunespec.compiler.build_writer import compile_build

    compile_build(loaded, tmp_path / "build", log=lambda s: None)
    config = load(tmp_path / "build")
    assert config.distributed_type == DistributedType.FSDP and config.num_processes == 8
    assert config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_reshard_after_forward"] is True
    assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True
