"""`tunespec train BUILD`: train from a build directory, resuming from its newest checkpoint.

Run directly (``python -m tunespec.runtime.train BUILD``) or under ``accelerate launch`` (the build's
``launch.sh``). ``Trainer.run`` reads top to bottom: ``setup`` (accelerator, data, model, optimizer),
``resume`` (the newest intact checkpoint), ``train`` (the loop), ``cleanup``, ``save_checkpoint`` and
``save_final``. The loop is small and explicit:

* micro-batches come from ``batching.epoch_batches`` (deterministic per seed and epoch); the
  epochs form one stream and an optimizer step takes the next ``processes x accumulation``
  micro-batches of it (``plan.Plan``), so the rows of a step depend on that product only: 2 processes
  x accumulation 1 train the same rows per step as 1 process x accumulation 2;
* the loss of an optimizer step is the sum of token losses over all its micro-batches (and all
  processes) divided by the number of trained tokens in them, so gradient accumulation and data
  parallelism give the same gradient as one big batch;
* checkpoints are atomic (``checkpoint.write_checkpoint``) and hold optimizer, scheduler and RNG
  state (the RNG state of every process); a resumed run continues at the exact data position and
  gives the same weights. It may run on another number of processes when processes x accumulation
  (micro-batches per step) stays the checkpoint's (``_check_batch_per_step``; the accumulation is the
  spec's, per process, so that takes a spec with another ``gradient_accumulation_steps``); a process
  the checkpoint did not have seeds its random numbers with ``checkpoint.derived_seed``;
* SIGINT/SIGTERM finish the current step, save a checkpoint and exit with the resume command
  (``stop_signal``; with several processes, every process stops after the same step).

Several processes (``launch.sh``: ``accelerate launch``, which starts them through torchrun):

* DDP (``multi_gpu``; also what ``fsdp`` becomes on a machine without GPUs, where accelerate
  runs CPU processes over gloo and ignores the FSDP settings): the main process writes the
  checkpoint; the gradient is averaged over processes, so each process's loss is multiplied
  by the number of processes;
* FSDP and DeepSpeed: every process writes its shards with ``accelerator.save_state`` into one
  temporary directory that the main process renames; the build directory must be on a file system
  every machine sees;
* DeepSpeed: the engine owns the optimizer step, clipping and zeroing the gradients: the loop
  marks the last micro-batch of a step (``sync_gradients``), ``accelerator.backward`` then steps the
  engine; the engine divides the loss by its ``gradient_accumulation_steps``, which the loop undoes.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import math
import sys
from pathlib import Path
from typing import Callable

import click

from .. import micro_batches, padding_free
from ..atomic import check_replaceable, install, remove_dir, temp_dir
from ..build_layout import LOCK, MANIFEST, STAMP, stamp_text
from ..build_reader import Build, TokenSet
from ..errors import BuildError, Problem, TunespecError
from ..micro_batches import DEFAULT_ROWS
from ..progress import Progress, duration
from ..spec.adapter import is_peft
from . import checkpoint as ckpt
from . import varlen
from .added_token_embeddings import adapter_save_kwargs, extend_embeddings
from .batching import collate_packed, collate_padded, count_positions, epoch_batches, trained_tokens
from .fused_head import FusedHead
from .modeling import load_base_model, prepare_for_training, use_bf16
from .optimizer import make_optimizer, make_scheduler
from .plan import Plan
from .plots import plot_loss
from .stop_signal import EXIT_CODES, StopRequest, agreed_stop, signal_name
from .torch_compile import compile_layers, decoder_layers
from .train_metrics import METRICS, MetricWriters, StepWindow, truncate_metrics


class Trainer:
    """One training run of a build.

    Hooks, for measuring a run without changing it (``benchmarks/train_throughput.py``):

    * ``load_model(spec, device_map=...)``: loads the base model (default ``modeling.load_base_model``);
    * ``on_batch(batch)``: sees every collated training micro-batch (on the CPU, before it moves to the
      device), e.g. ``{"input_ids": [B, T], "attention_mask": [B, T], "labels": [B, T]}`` for padded batches;
    * ``on_metrics(record)``: sees every record logged to ``train/metrics.jsonl`` (``train_metrics``).
    """

    def __init__(self, build: Build, *, restart: bool = False, log=None,
                 load_model: Callable = load_base_model, on_batch: Callable[[dict], None] | None = None,
                 on_metrics: Callable[[dict], None] | None = None):
        self.build = build
        self.spec = build.spec
        self.restart = restart
        self.log = log or (lambda s: click.echo(s, err=True))
        self.load_model = load_model
        self.on_batch = on_batch
        self.on_metrics = on_metrics
        self.best: dict | None = None
        self.resumed_metrics: dict = {}
        self.writers: MetricWriters | None = None
        self.progress: Progress | None = None
        self._plain_log = None
        self.offload = None  # an ActivationOffload when training.activation_offload runs (setup)

    def run(self) -> dict:
        """Set up, resume, train to the last step and save the final model; returns the last step's metrics."""
        self.setup()
        start = self.resume()
        with StopRequest() as stop:
            self.writers = MetricWriters(self.build, main=self.acc.is_main_process)
            try:
                self._start_log(start)
                step, last = self.train(start, stop)
            finally:
                self.cleanup()
        self.save_checkpoint(step, last)
        self.save_final(last)
        return last

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """The accelerator, the token sets, the model (extended, wrapped for training), optimizer and scheduler."""
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed

        t = self.spec.training
        mp = "bf16" if use_bf16(self.spec) else "fp16" if t.fp16 else "no"
        self.acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
        if not self.acc.is_main_process:
            self.log = lambda s: None  # one copy of every message; errors still reach every process's stderr
        self.deepspeed = self.acc.distributed_type == DistributedType.DEEPSPEED
        self._check_topology()
        set_seed(t.seed)
        self.tokenizer = self.build.load_tokenizer()
        self.train_set = self.build.tokens("train")
        self.eval_set = self.build.tokens("validation") if self.build.has_split("validation") else None
        sharded = self.spec.launch.topology in ("fsdp", "deepspeed")
        model = self.load_model(self.spec, device_map=None if sharded else "default")
        self._choose_batching(model)
        self.plan = self._make_plan()
        extend_embeddings(model, self.build)  # model.added_tokens: the new rows start as the mean row
        model = prepare_for_training(model, self.spec, vocabulary=self.build.vocabulary)
        self.compiled = self._torch_compile(model)
        self.offload = self._activation_offload(model)  # after compiling: it wraps the compiled layers
        self.head = None  # the LM head fused with the loss (fused_head.py), where the model and topology allow
        output = model.get_output_embeddings()
        if self.trained_logits and output is not None and padding_free.fused_head_why_not(self.spec, model.config) is None:
            self.head = FusedHead(model, padding_free.head_chunk(output.weight.shape[0]))
        if not any(p.requires_grad for p in model.parameters()):
            raise BuildError("nothing to train: the model has no trainable parameters", hint="check adapter settings")
        optimizer = make_optimizer(self.spec, [p for p in model.parameters() if p.requires_grad])
        scheduler = make_scheduler(self.spec, optimizer, self.plan.total_steps)
        self.model, self.optimizer, self.scheduler = self.acc.prepare(model, optimizer, scheduler)
        # accelerate wraps forward to cast every output to fp32: a full fp32 copy of the logits. The loop runs
        # the forward inside its own autocast, and the loss is fp32 either way: take the wrapper off.
        self.acc.unwrap_model(self.model, keep_fp32_wrapper=False)
        # After prepare: FSDP2 replaces the parameters by sharded ones (clipping must see those).
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # accelerate's prepared scheduler steps once per process unless told otherwise: we step it ourselves,
        # once per optimizer step. Under DeepSpeed too: accelerate hands the engine only DeepSpeed's own
        # schedulers, and wraps a torch one (LambdaLR here) in an AcceleratedScheduler like elsewhere. The
        # scheduler sets the lr in the param groups the engine's optimizer shares (accelerate builds its CPU
        # Adam for offload from the same param-group dicts).
        self.scheduler = scheduler if not hasattr(self.scheduler, "scheduler") else self.scheduler.scheduler
        if self.deepspeed:
            engine_accum = self.model.gradient_accumulation_steps()
            if engine_accum != t.gradient_accumulation_steps:
                raise BuildError(Problem(
                    f"deepspeed.json has gradient_accumulation_steps {engine_accum}, the spec "
                    f"{t.gradient_accumulation_steps}",
                    file=str(self.build.path / "deepspeed.json"), hint="recompile the build instead of editing it"))
        self.pad_id = int(self.tokenizer.pad_token_id)

    def _check_topology(self) -> None:
        """Say when this run is not what the spec's launch section describes."""
        ln = self.spec.launch
        want = ln.num_processes * ln.num_machines
        world = self.acc.num_processes
        kind = self.acc.distributed_type.value
        if world != want:
            self.log(f"warning: the spec launches {want} process(es), this run has {world}: each optimizer step "
                     f"trains {world} x {self.spec.training.gradient_accumulation_steps} micro-batches"
                     + (f"; start it with: bash {self.build.path / 'launch.sh'}" if world < want else ""))
        if ln.topology == "fsdp" and kind != "FSDP":
            self.log(f"warning: topology fsdp, but accelerate runs {kind} here (it applies FSDP on GPUs only): "
                     "the model is replicated, not sharded")
        if ln.topology == "deepspeed" and kind != "DEEPSPEED":
            self.log(f"warning: topology deepspeed, but accelerate runs {kind} here (DeepSpeed needs a GPU and "
                     "`accelerate launch` with the build's config, i.e. launch.sh)")

    def _choose_batching(self, model) -> None:
        """Padded or padding-free micro-batches, the attention kernel, and where the logits are computed."""
        t = self.spec.training
        why_not = padding_free.why_not(model.config, getattr(self.spec.adapter, "method", "none"))
        if t.padding_free is True and why_not:
            raise BuildError(Problem(f"training.padding_free is true, but {why_not}", file=str(self.build.path / LOCK),
                                     hint="set training.padding_free: auto (or false) and recompile"))
        self.batching = micro_batches.resolve(self.spec, model.config, max_length=self.build.max_length,
                                              train_tokens=int(self.train_set.lengths.sum()))
        # concatenated rows: padding-free batching, or bins (which the spec allows for any model with packing)
        self.flat = self.batching.packed or (t.padding_free is not False and why_not is None)
        # logits only at trained positions: the HF forward must take an index tensor as logits_to_keep,
        # and no virtual tokens may shift the positions (prefix/prompt tuning)
        self.trained_logits = (self.flat and why_not is None
                               and "logits_to_keep" in inspect.signature(model.forward).parameters)
        self.attention = model.config._attn_implementation
        if self.flat and why_not is None and self.attention == "sdpa" and model._can_set_attn_implementation():
            varlen.register()
            model.set_attn_implementation(varlen.ATTENTION)
            self.attention = model.config._attn_implementation

    def _make_plan(self) -> Plan:
        t = self.spec.training
        world = self.acc.num_processes
        n_batches = len(self._batches(0))
        if n_batches == 0:
            raise BuildError(Problem(
                f"the train split has {len(self.train_set)} rows: not one micro-batch",
                file=str(self.build.path / MANIFEST),
                hint="check the compile report's drop counts (rows longer than max_length are dropped) and recompile"))
        accum = t.gradient_accumulation_steps
        return Plan(batches_per_epoch=n_batches, world=world, rank=self.acc.process_index, accum=accum,
                    total_steps=t.max_steps or max(1, math.ceil(t.epochs * n_batches / (world * accum))))

    def _torch_compile(self, model) -> int:
        """torch.compile the decoder layers where the spec (or `auto`: CUDA, one GPU or DDP) says so."""
        import torch

        want = self.spec.training.torch_compile
        if want == "auto":
            # measured with bitsandbytes' 4-bit layers (BENCHMARKS.md), not with its 8-bit ones nor under
            # FSDP/DeepSpeed wrapping: left eager there
            want = (torch.cuda.is_available() and self.spec.launch.topology in ("single", "multi_gpu")
                    and not self.spec.quantization.load_in_8bit)
        return compile_layers(model) if want else 0

    def _activation_offload(self, model):
        """The checkpointed layers' saved inputs to pinned CPU memory where the spec says so (None: not here)."""
        import torch

        from ..spec.training import offload_ignored, offload_on

        on_gpu = torch.cuda.is_available()
        if self.spec.training.activation_offload is True and (why := offload_ignored(self.spec, on_gpu=on_gpu)):
            self.log(f"warning: training.activation_offload is ignored: {why}")
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if not offload_on(self.spec, on_gpu=on_gpu, hidden_size=hidden):
            return None
        if self.spec.training.activation_offload == "auto":
            self.log(f"activation_offload (auto): on, hidden size {hidden}: the checkpointed layers' inputs go to "
                     "pinned CPU memory (training.activation_offload: false keeps them on the GPU)")
        from .activation_offload import ActivationOffload

        offload = ActivationOffload()
        if not offload.install(decoder_layers(model)):
            self.log("warning: training.activation_offload is ignored: the model marks no decoder layers "
                     "(transformers' GradientCheckpointingLayer)")
            return None
        return offload

    def _batches(self, epoch: int) -> list[list[int]]:
        t = self.spec.training
        # The whole epoch (world_size 1): processes share the stream position by position (see Plan).
        return epoch_batches(self.train_set, batching=self.batching, seed=t.seed, epoch=epoch,
                             group_by_length=t.group_by_length)

    def _collate(self, tokens: TokenSet, rows: list[int]) -> dict:
        """The micro-batch of `rows`, on the CPU."""
        return collate_packed(tokens, rows) if self.flat else collate_padded(tokens, rows, self.pad_id)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.acc.device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}

    def _loss(self, batch: dict, n_items):
        """The micro-batch's loss: summed token cross-entropy over `n_items` (the step's trained tokens)."""
        if self.trained_logits:
            loss = varlen.trained_loss(self.model, batch, n_items, head=self.head)
            if self.head is not None and not self.head.ok:
                self.log(f"notice: this model's logits are not its LM head's output (they differ by "
                         f"{self.head.difference:.3g} at the first trained positions): the head and the loss "
                         "are not fused, the trained positions' logits are held whole")
                self.head = None
            return loss
        return self.model(**batch, num_items_in_batch=n_items).loss

    # ------------------------------------------------------------------ checkpoints

    def _trainable_state(self) -> dict:
        model = self.acc.unwrap_model(self.model)
        return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, step: int, metrics: dict) -> Path:
        """Write train/checkpoint-<step> (every process calls this; see checkpoint.py for the layout)."""
        import torch
        from accelerate.utils import gather_object
        from safetensors.torch import save_file

        state = {
            "step": step,
            "total_steps": self.plan.total_steps,
            "input_key": self.build.input_key,
            "world_size": self.acc.num_processes,
            "accumulation": self.plan.accum,
            "spec": self.build.spec_data,
            "metrics": metrics,
            "best": self.best,
        }
        train_dir = self.build.train_dir
        self.acc.wait_for_everyone()
        if self._sharded():
            # Every process writes its shards (and its RNG state) into one temporary directory; the main
            # process then moves them into the atomically renamed checkpoint. The directory must be one
            # that every process sees (one file system for all machines).
            tmp = train_dir / f".checkpoint-{step}.tmp-sharded"
            self.acc.save_state(str(tmp / "accelerate"))
            self.acc.wait_for_everyone()
            if self.acc.is_main_process:
                ckpt.write_checkpoint(train_dir, step, lambda d: ckpt.adopt(tmp, d), state)
        else:
            # The weights and the optimizer are the same on every process; the RNG states are not (dropout
            # draws as many numbers as its input has elements), so the main process saves each process's.
            rng = gather_object([ckpt.rng_state()])
            if self.acc.is_main_process:
                def write(tmp: Path) -> None:
                    save_file(self._trainable_state(), str(tmp / "trainable.safetensors"))
                    torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                    torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                    torch.save({"processes": rng}, tmp / "rng.pt")

                ckpt.write_checkpoint(train_dir, step, write, state)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            best = Path(self.best["path"]) if self.best else None
            ckpt.prune(train_dir, self.spec.training.save_total_limit, best)
        return self.build.train_dir / f"checkpoint-{step}"

    def _sharded(self) -> bool:
        """Whether checkpoints hold accelerate's per-process state (FSDP, DeepSpeed) instead of our files."""
        return self.acc.distributed_type.value in ("FSDP", "DEEPSPEED")

    def _check_batch_per_step(self, latest: Path, state: dict) -> None:
        """A checkpoint resumes on any number of processes whose micro-batches per optimizer step (processes x
        accumulation, ``Plan.per_step``) are the checkpoint's: then step s trains the same stream positions
        (``plan.Plan``), and the optimizer and scheduler states (the same on every process) carry over."""
        saved_world = ckpt.saved_world(state, self.acc.num_processes)
        saved_accum = ckpt.saved_accumulation(state, self.plan.accum)
        saved = saved_world * saved_accum
        world, accum = self.acc.num_processes, self.plan.accum
        if saved_world != world and (latest / "accelerate").is_dir():
            # accelerate's load_state reads FSDP's model and optimizer through torch.distributed.checkpoint, which
            # can reshard, but it restores random_states_<rank>.pkl only where that file exists (silently), and
            # DeepSpeed's ZeRO partitions belong to the world that wrote them; neither is tested here (FSDP on a
            # CPU needs 2 gloo processes on each side, DeepSpeed a GPU), so it stays refused
            raise BuildError(Problem(
                f"{latest.name} holds sharded (FSDP/DeepSpeed) state of {saved_world} process(es), this run has "
                f"{world}; tunespec resumes sharded state on the number of processes that wrote it only",
                file=str(latest), hint=f"resume on {saved_world} process(es) ({self._launch_hint(saved_world)}), "
                "or start over with --restart"))
        if saved == self.plan.per_step:
            return
        fits = (f"training.gradient_accumulation_steps: {saved // world} on {world} process(es)"
                if saved % world == 0 else f"{saved} micro-batches a step cannot be split over {world} process(es)")
        raise BuildError(Problem(
            f"{latest.name} trained {saved} micro-batch(es) per optimizer step ({saved_world} process(es) x "
            f"accumulation {saved_accum}), this run trains {self.plan.per_step} ({world} x {accum}): the batch "
            "and the data order would change", file=str(latest),
            hint=f"resume on {saved_world} process(es) ({self._launch_hint(saved_world)}); or keep {saved} per "
            f"step ({fits}): compile that spec to a new directory and move this build's train/ into it; "
            "or start over with --restart"))

    def _launch_hint(self, world: int) -> str:
        ln = self.spec.launch
        if world == 1:
            return "tunespec train BUILD"
        return "bash BUILD/launch.sh" if world == ln.num_processes * ln.num_machines else "a launch.sh for that many"

    def _resize_rng_note(self, saved_world: int) -> str:
        world = self.acc.num_processes
        if world < saved_world:
            return f"the random states of process(es) {world}..{saved_world - 1} are not used"
        return (f"process(es) {saved_world}..{world - 1} draw from seeds derived from training.seed, "
                "the step and the process index")

    def resume(self) -> int:
        """Restore the newest complete checkpoint; returns the step to continue from (0 for a fresh run)."""
        import torch
        from safetensors.torch import load_file

        train_dir = self.build.train_dir
        if self.acc.is_local_main_process:  # one per machine: a machine may have its own file system
            ckpt.clean_partial(train_dir)
        self.acc.wait_for_everyone()
        if self.restart:
            if self.acc.is_main_process and train_dir.exists():
                # what training wrote, newest checkpoint first (a kill midway leaves older, complete ones);
                # anything else a user put in train/ is kept
                for _, path in reversed(ckpt.list_checkpoints(train_dir)):
                    remove_dir(path)
                remove_dir(train_dir / "tensorboard")  # the old run's curves (report_to: tensorboard)
                for name in (METRICS, "loss.png"):
                    (train_dir / name).unlink(missing_ok=True)
            self.acc.wait_for_everyone()
            return 0
        latest = ckpt.newest_intact(train_dir, log=self.log)
        self._agree_on(latest)
        if latest is None:
            if ckpt.list_checkpoints(train_dir):
                raise BuildError(Problem("no checkpoint in it is intact (each is listed above with why)",
                                         file=str(train_dir),
                                         hint=f"start over: tunespec train {self.build.path} --restart"))
            return 0
        state = ckpt.read_state(latest)
        if state.get("input_key") != self.build.input_key:
            # processes and accumulation may change together (checked next: the batch per step must not)
            diffs = [d for d in ckpt.spec_differences(state.get("spec", {}), self.build.spec_data)
                     if not d.startswith(ckpt.RESIZE)]
            if diffs or not state.get("spec"):
                raise BuildError(Problem(
                    f"{latest.name} was trained from a different build; changed: {', '.join(diffs[:12]) or 'the data'}",
                    file=str(latest), hint=f"restore the old spec/data, or start over: tunespec train {self.build.path} --restart"))
        self._check_batch_per_step(latest, state)
        saved_world = ckpt.saved_world(state, self.acc.num_processes)
        self.log(f"resuming from {latest.name}" + ("" if saved_world == self.acc.num_processes else
                 f" (written by {saved_world} process(es), resumed on {self.acc.num_processes}; "
                 f"{self._resize_rng_note(saved_world)})"))
        if (latest / "accelerate").is_dir():
            if not self._sharded():
                raise BuildError(Problem(
                    f"{latest.name} holds sharded (FSDP/DeepSpeed) state, this run is {self.acc.distributed_type.value}",
                    file=str(latest), hint="resume on the machines that wrote it (GPUs), or start over with --restart"))
            self.acc.load_state(str(latest / "accelerate"))
        else:
            if self._sharded():
                raise BuildError(Problem(
                    f"{latest.name} holds unsharded state, this run is {self.acc.distributed_type.value}",
                    file=str(latest), hint="resume where it was written, or start over with --restart"))
            self._copy_weights(load_file(str(latest / "trainable.safetensors")))
            self.optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=True))
            self.scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=True))
            rng = torch.load(latest / "rng.pt", weights_only=True)
            saved = rng["processes"] if "processes" in rng else [rng]
            rank = self.acc.process_index
            if rank < len(saved):
                ckpt.set_rng_state(saved[rank])
            else:  # a process the checkpoint did not have (a resume on more processes)
                from accelerate.utils import set_seed

                set_seed(ckpt.derived_seed(self.spec.training.seed, int(state["step"]), rank))
        self.best = state.get("best")
        if self.best:  # train/ may have moved (another build, for another number of processes)
            self.best["path"] = str(train_dir / Path(self.best["path"]).name)
        self.resumed_metrics = dict(state.get("metrics") or {})
        return int(state["step"])

    def _copy_weights(self, weights: dict) -> None:
        """Copy saved trainable weights (name -> tensor) into the model."""
        import torch

        named = dict(self.acc.unwrap_model(self.model).named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                named[n].copy_(w.to(named[n].device))

    def _agree_on(self, latest: Path | None) -> None:
        """Every process must resume from the same step (machines without a shared file system would not)."""
        import torch

        if self.acc.num_processes == 1:
            return
        mine = torch.tensor([-1 if latest is None else int(ckpt.CHECKPOINT.match(latest.name).group(1))],
                            device=self.acc.device)
        steps = [int(x) for x in self.acc.gather(mine).tolist()]
        if len(set(steps)) > 1:
            seen = ", ".join(f"process {i}: {'none' if s < 0 else f'checkpoint-{s}'}" for i, s in enumerate(steps))
            raise BuildError(Problem(
                f"the processes see different newest checkpoints in {self.build.train_dir} ({seen})",
                hint="put the build directory on a file system every machine sees, or start over with --restart"))

    # ------------------------------------------------------------------ evaluation

    def evaluate_loss(self) -> float | None:
        import torch

        if self.eval_set is None or len(self.eval_set) == 0:
            return None
        t = self.spec.training
        bs = t.eval_batch_size or t.micro_batch_size or DEFAULT_ROWS
        order = sorted(range(len(self.eval_set)), key=lambda i: -int(self.eval_set.lengths[i]))
        world = self.acc.num_processes
        mine = order[self.acc.process_index :: world]
        # Every process runs the same number of forward passes (under FSDP a forward is a collective): a
        # process out of rows repeats its first batch and does not count it.
        n_batches = math.ceil(math.ceil(len(order) / world) / bs)
        total = torch.zeros(2, device=self.acc.device, dtype=torch.float64)
        self.model.eval()
        with torch.no_grad():
            for i in range(0, n_batches * bs, bs):
                rows = mine[i : i + bs]
                counted = bool(rows)
                batch = self._to_device(self._collate(self.eval_set, rows or order[:1]))
                n = trained_tokens(batch)
                with self.acc.autocast():
                    loss = self._loss(batch, torch.tensor(max(n, 1), device=self.acc.device))
                if counted:
                    total += torch.tensor([loss.item() * max(n, 1), n], device=self.acc.device, dtype=torch.float64)
        self.model.train()
        total = self.acc.reduce(total, reduction="sum")
        return float(total[0] / total[1]) if total[1] else None

    # ------------------------------------------------------------------ the loop

    def _start_log(self, start: int) -> None:
        """metrics.jsonl from `start` on (cut back on resume), the progress bar, and the run's first line."""
        plan = self.plan
        metrics_path = self.build.train_dir / METRICS
        if self.acc.is_main_process:
            self.build.train_dir.mkdir(parents=True, exist_ok=True)
            if start == 0 and metrics_path.exists():
                metrics_path.unlink()
            elif metrics_path.exists():
                truncate_metrics(metrics_path, start)
        # a redrawn bar on a terminal; elsewhere the step lines say the time left
        self.progress = Progress("training", plan.total_steps, "step", self.log, initial=start, every=math.inf,
                                 tty=self.acc.is_main_process and sys.stderr.isatty())
        self._plain_log = self.log
        self.log = self.progress.write
        self.log(f"training {plan.total_steps} steps × {plan.accum} {self.batching.describe()} "
                 f"on {self.acc.num_processes} process(es), {self.acc.device}; "
                 f"{len(self.train_set)} train rows in {plan.batches_per_epoch} micro-batches an epoch; "
                 + (f"padding-free ({self.attention} attention, logits only where trained"
                    + (f", LM head fused with the loss in chunks of {self.head.chunk:,}" if self.head else "") + ")"
                    if self.trained_logits
                    else "padding-free" if self.flat else "padded batches")
                 + (f"; {self.compiled} layers compiled" if self.compiled else "")
                 + ("; the checkpointed layers' inputs offloaded to CPU memory" if self.offload else ""))

    def train(self, start: int, stop: StopRequest) -> tuple[int, dict]:
        """Optimizer steps from `start` to the plan's last; returns (the last step, its metrics). Logs, evaluates,
        saves checkpoints as the spec says; on SIGINT/SIGTERM saves and exits (``SystemExit``)."""
        import torch

        t, plan = self.spec.training, self.plan
        self.model.train()
        last: dict = dict(self.resumed_metrics)  # a resume at the last step only finishes
        window = StepWindow()
        epoch_cache: dict[int, list[list[int]]] = {}
        step = start
        while step < plan.total_steps:
            micro = self._step_batches(step, epoch_cache)
            n_local = sum(trained_tokens(b) for b in micro)  # counted on the CPU: no sync
            counts = [count_positions(b) for b in micro]  # (real tokens, padded positions)
            positions = [sum(c[0] for c in counts), sum(c[1] for c in counts)]
            micro = [self._to_device(b) for b in micro]
            n_global = self._sum_over_processes(n_local)
            step_loss, grad_norm = self._optimizer_step(micro, n_global)
            step += 1
            self.progress.advance()
            if step == start + 1 and self.offload is not None and not self.offload.packed_tensors:
                self.log("warning: training.activation_offload moved nothing in the first step: the checkpointed "
                         f"layers saved no input of {self.offload.min_bytes} bytes or more on the GPU")
            stats = torch.cat([step_loss.reshape(1), torch.tensor(positions, dtype=torch.float64).to(self.acc.device)])
            stats = self.acc.reduce(stats, reduction="sum").tolist()
            step_loss = float(stats[0])
            window.add(step_loss, n_global, int(stats[1]), int(stats[2]))
            last = {"step": step, "loss": round(step_loss, 6)}
            if step % t.logging_steps == 0 or step == plan.total_steps:
                record = window.record(step, plan.epochs_done(step), self.scheduler.get_last_lr()[0], grad_norm)
                if torch.cuda.is_available():
                    record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                self.log_metrics(record)
                window = StepWindow()
            if self._evaluates_at(step):
                self._evaluate(step, last)
            self._stop_if_asked(stop, step, last)
            if self._saves_at(step) and step < plan.total_steps:
                self.save_checkpoint(step, last)
        return step, last

    def _step_batches(self, step: int, epoch_cache: dict[int, list[list[int]]]) -> list[dict]:
        """This process's micro-batches of optimizer step `step` (0-based), collated on the CPU; `epoch_cache`
        keeps the batch lists of the last two epochs a step took from."""
        micro = []
        for k in range(self.plan.accum):
            epoch, pos = self.plan.position(step, k)
            if epoch not in epoch_cache:
                if len(epoch_cache) > 1:
                    epoch_cache.pop(min(epoch_cache))
                epoch_cache[epoch] = self._batches(epoch)
            batch = self._collate(self.train_set, epoch_cache[epoch][pos])
            if self.on_batch is not None:
                self.on_batch(batch)
            micro.append(batch)
        return micro

    def _sum_over_processes(self, n: int) -> int:
        import torch

        if self.acc.num_processes == 1:
            return n
        return int(self.acc.reduce(torch.tensor(n, device=self.acc.device), reduction="sum"))

    def _optimizer_step(self, micro: list[dict], n_global: int):
        """Forward and backward over this process's micro-batches, then one optimizer and scheduler step.
        Returns (the summed loss of this process's micro-batches, a float64 tensor; the gradient norm or None)."""
        import torch

        t = self.spec.training
        world = self.acc.num_processes
        # DDP and FSDP average the gradient over processes and the loss is already normalised by the tokens
        # of all processes, so each process's loss is scaled by their number; DeepSpeed averages too, and
        # its engine also divides the loss by its gradient_accumulation_steps (= plan.accum).
        loss_scale = world * (self.plan.accum if self.deepspeed else 1)
        n_items = torch.tensor(max(n_global, 1), device=self.acc.device)
        step_loss = torch.zeros((), device=self.acc.device, dtype=torch.float64)
        for k, batch in enumerate(micro):
            sync = k == len(micro) - 1
            if self.deepspeed:
                # accelerate tells the engine whether this micro-batch ends the step; at the end,
                # acc.backward runs engine.step(): reduce, clip, optimizer step, zero the gradients.
                self.acc.gradient_state._set_sync_gradients(sync)
                ctx = contextlib.nullcontext()
            else:
                ctx = self.acc.no_sync(self.model) if not sync and world > 1 else contextlib.nullcontext()
            with ctx:
                with self.acc.autocast():
                    loss = self._loss(batch, n_items)
                self.acc.backward(loss * loss_scale)
            step_loss += loss.detach().double()  # no sync per micro-batch: read once per step
        grad_norm = None
        if self.deepspeed:
            # the engine clipped (deepspeed.json's gradient_clipping) and stepped; its norm may be None
            grad_norm = _as_float(self.acc.clip_grad_norm_(self.params, t.max_grad_norm or 0.0))
        else:
            if t.max_grad_norm:
                grad_norm = _as_float(self.acc.clip_grad_norm_(self.params, t.max_grad_norm))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return step_loss, grad_norm

    def _evaluates_at(self, step: int) -> bool:
        t = self.spec.training
        return (t.eval_strategy == "steps" and step % (t.eval_steps or t.save_steps) == 0) or (
            t.eval_strategy == "epoch" and self.plan.ends_epoch(step))

    def _saves_at(self, step: int) -> bool:
        t = self.spec.training
        return t.save_strategy == "steps" and step % t.save_steps == 0 or (
            t.save_strategy == "epoch" and self.plan.ends_epoch(step))

    def _evaluate(self, step: int, last: dict) -> None:
        """The eval loss after `step`: into `last`, the metrics log, and the best-checkpoint tracking."""
        eval_loss = self.evaluate_loss()
        if eval_loss is not None:
            last["eval_loss"] = round(eval_loss, 6)
            self.log_metrics({"step": step, "eval_loss": round(eval_loss, 6)})
            self._track_best(step, last)

    def _stop_if_asked(self, stop: StopRequest, step: int, last: dict) -> None:
        """After a SIGINT/SIGTERM (on any process): save this step and exit with the resume command."""
        stop_signal = agreed_stop(self.acc, stop)
        if stop_signal is None:
            return
        path = self.save_checkpoint(step, last)
        # several processes must be started again by accelerate, not by `tunespec train` (one process)
        again = (f"tunespec train {self.build.path}" if self.acc.num_processes == 1
                 else f"bash {self.build.path / 'launch.sh'}")
        self.log(f"{signal_name(stop_signal)}: saved {path.name}; resume with: {again}")
        if self.acc.num_processes > 1:
            stop.hold_until_exit()
        raise SystemExit(EXIT_CODES[stop_signal])

    def _track_best(self, step: int, metrics: dict) -> None:
        t = self.spec.training
        value = metrics.get(t.metric_for_best_model)
        if value is None:
            return
        better = self.best is None or (value > self.best["value"] if t.greater_is_better else value < self.best["value"])
        if better:
            self.best = {"step": step, "value": value, "metric": t.metric_for_best_model,
                         "path": str(self.build.train_dir / f"checkpoint-{step}")}
            if t.save_strategy != "no":
                self.save_checkpoint(step, metrics)

    def log_metrics(self, record: dict) -> None:
        """Write `record` to the metrics log (main process) and say it; the ``on_metrics`` hook sees it first."""
        if self.on_metrics is not None:
            self.on_metrics(record)
        if not self.acc.is_main_process:
            return
        self.writers.write(record)
        parts = [f"{k} {v}" for k, v in record.items() if k != "step"]
        left = self.progress.left() if self.progress.bar is None and record["step"] < self.plan.total_steps else None
        self.log(f"step {record['step']}/{self.plan.total_steps}: " + ", ".join(parts)
                 + ("" if left is None else f"; about {duration(left)} left"))

    def cleanup(self) -> None:
        """Close the metric writers and the progress bar; messages go to the plain log again."""
        if self.writers is not None:
            self.writers.close()
        if self.progress is not None:
            self.progress.close()
        if self._plain_log is not None:
            self.log = self._plain_log

    # ------------------------------------------------------------------ the trained model

    def save_final(self, last: dict) -> None:
        """Save the final adapter (or full model) and the loss curve."""
        self.acc.wait_for_everyone()
        model = self.acc.unwrap_model(self.model)
        if self.spec.training.load_best_model_at_end and self.best:
            self._load_trainable(Path(self.best["path"]))
        has_adapter = is_peft(self.spec.adapter)  # any peft method (LoRA, IA3, prefix/prompt tuning)
        target = self.build.adapter_dir if has_adapter else self.build.merged_dir
        tmp = None
        if self.acc.is_main_process:
            check_replaceable(target, also=(STAMP,), what="trained model")
            tmp = temp_dir(target)
        state_dict = self.acc.get_state_dict(self.model)
        if self.acc.is_main_process:
            _drop_checkpoint_wrappers(model)
            model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True, **adapter_save_kwargs(self.build))
            if has_adapter and not _safetensors_keys(tmp / "adapter_model.safetensors"):
                raise BuildError(Problem(f"the adapter saved from this {self.acc.distributed_type.value} run is empty",
                                         file=str(tmp), hint="the last checkpoint is in train/; please report this"))
            self.tokenizer.save_pretrained(tmp)
            (tmp / STAMP).write_text(stamp_text({"input_key": self.build.input_key, "final": last}))
            install(tmp, target)
            plot_loss(self.build.train_dir / METRICS, self.build.train_dir / "loss.png")
            self.log(f"saved {target}")
        self.acc.wait_for_everyone()

    def _load_trainable(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        problem = ckpt.check(checkpoint)  # read back only what checks out against its files.json
        if problem is not None:
            self.log(f"warning: the best checkpoint {checkpoint.name} cannot be loaded: {problem} — keeping the "
                     "last weights")
            return
        if (checkpoint / "accelerate").is_dir() and self._sharded():
            self.acc.load_state(str(checkpoint / "accelerate"))  # every process loads its shards
            self.log(f"loaded the best checkpoint, {checkpoint.name}")
            return
        if not (checkpoint / "trainable.safetensors").is_file():
            self.log(f"warning: {checkpoint.name} has no weights this run can load; keeping the last weights")
            return
        self._copy_weights(load_file(str(checkpoint / "trainable.safetensors")))
        self.log(f"loaded the best checkpoint, {checkpoint.name}")


def _drop_checkpoint_wrappers(model) -> None:
    """Put back the layers accelerate wrapped for FSDP activation checkpointing (``launch.activation_checkpointing``).

    The wrapper adds ``_checkpoint_wrapped_module.`` to module names, and peft finds the adapter's weights in
    a state dict by module name; the gathered state dict has the clean names, so peft would save nothing.
    Done once training is over, on the process that saves.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

    while True:
        wrapped = next(((n, m) for n, m in model.named_modules() if isinstance(m, ActivationWrapper)), None)
        if wrapped is None:
            return
        name, module = wrapped
        model.set_submodule(name, module._checkpoint_wrapped_module)


def _safetensors_keys(path: Path) -> list[str]:
    if not path.is_file():
        return []
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _as_float(value) -> float | None:
    """A gradient norm as a float (clip_grad_norm_ gives a tensor, a float, or None under DeepSpeed)."""
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


def train(build_path: str | Path, *, restart: bool = False) -> dict:
    try:
        return Trainer(Build(build_path), restart=restart).run()
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            raise BuildError(Problem(f"cannot write to the build: {e.strerror}", file=str(e.filename or build_path),
                                     hint="free some space, or train a writable copy of the build")) from None
        raise


@click.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--restart", is_flag=True, help="Start over instead of resuming from the newest checkpoint.")
def main(build: Path, restart: bool) -> None:
    """Train from BUILD (what `accelerate launch -m tunespec.runtime.train BUILD` runs)."""
    try:
        train(build, restart=restart)
    except TunespecError as e:
        click.echo("error: " + e.render().replace("\n", "\nerror: "), err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
