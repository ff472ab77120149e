"""`tunespec train BUILD`: train from a build directory, resuming from its newest checkpoint.

Run directly (``python -m tunespec.runtime.train BUILD``) or under ``accelerate launch`` (the build's
``launch.sh``). The loop is small and explicit:

* micro-batches come from ``batching.epoch_batches`` (deterministic per seed and epoch);
* the loss of an optimizer step is the sum of token losses over all its micro-batches (and all
  processes) divided by the number of trained tokens in them, so gradient accumulation and data
  parallelism give the same gradient as one big batch;
* checkpoints are atomic (``checkpoint.write_checkpoint``) and hold optimizer, scheduler and RNG
  state; a resumed run continues at the exact data position and gives the same weights;
* SIGINT/SIGTERM finish the current step, save a checkpoint and exit with the resume command.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import BuildError, Problem, TunespecError
from ..spec.adapter import LoraSpec
from . import checkpoint as ckpt
from .batching import collate_packed, collate_padded, count_positions, epoch_batches
from .build import Build, TokenSet

# Fields that may change between a checkpoint and its resume: they do not change the training math.
RESUME_NEUTRAL = (
    "description", "evaluation.", "output.", "training.logging_steps", "training.save_steps",
    "training.save_total_limit", "training.save_strategy", "training.report_to", "training.eval_",
    "launch.gpu_memory_gib", "launch.main_process_", "launch.machine_rank",
)


def _flatten(d, prefix=""):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def spec_differences(old: dict, new: dict) -> list[str]:
    """Dotted fields that differ between two resolved specs and matter for training."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(set(a) | set(b))
    diffs = [k for k in keys if a.get(k) != b.get(k)]
    return [k for k in diffs if not k.startswith(RESUME_NEUTRAL)]


class _Stop:
    """Set by SIGINT/SIGTERM; the loop saves and exits at the end of the current step."""

    def __init__(self):
        self.signal: int | None = None

    def __call__(self, signum, frame):
        if self.signal is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.signal = signum


@dataclass
class Plan:
    micro_per_epoch: int  # micro-batches per epoch for this process
    accum: int
    total_steps: int

    def position(self, micro_index: int) -> tuple[int, int]:
        return divmod(micro_index, self.micro_per_epoch)


def make_optimizer(spec, params):
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
    from transformers import get_scheduler

    t = spec.training
    warmup = t.warmup_steps or math.ceil(t.warmup_ratio * total_steps)
    return get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


class Trainer:
    def __init__(self, build: Build, *, restart: bool = False, log=None):
        self.build = build
        self.spec = build.spec
        self.restart = restart
        self.log = log or (lambda s: click.echo(s, err=True))

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from .modeling import load_base_model, prepare_for_training, use_bf16

        t = self.spec.training
        mp = "bf16" if use_bf16(self.spec) else "fp16" if t.fp16 else "no"
        self.acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
        set_seed(t.seed)
        self.tokenizer = self.build.load_tokenizer()
        self.train_set = self.build.tokens("train")
        self.eval_set = self.build.tokens("validation") if self.build.has_split("validation") else None
        world = self.acc.num_processes
        n_batches = len(self._batches(0))
        self.plan = Plan(micro_per_epoch=n_batches // world, accum=t.gradient_accumulation_steps,
                         total_steps=t.max_steps or max(1, math.ceil(t.epochs * n_batches / world / t.gradient_accumulation_steps)))
        if self.plan.micro_per_epoch == 0:
            raise BuildError(Problem(
                f"the train split has {len(self.train_set)} rows: not one micro-batch for each of {world} process(es)",
                file=str(self.build.path / "manifest.json"),
                hint="check the compile report's drop counts (rows longer than max_length are dropped) and recompile"))
        sharded = self.spec.launch.topology in ("fsdp", "deepspeed")
        model = load_base_model(self.spec, device_map=None if sharded else "default")
        model = prepare_for_training(model, self.spec)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise BuildError("nothing to train: the model has no trainable parameters", hint="check adapter settings")
        optimizer = make_optimizer(self.spec, self.params)
        scheduler = make_scheduler(self.spec, optimizer, self.plan.total_steps)
        self.model, self.optimizer, self.scheduler = self.acc.prepare(model, optimizer, scheduler)
        # accelerate's prepared scheduler steps once per process unless told otherwise: we step it ourselves.
        self.scheduler = scheduler if not hasattr(self.scheduler, "scheduler") else self.scheduler.scheduler
        self.pad_id = int(self.tokenizer.pad_token_id)

    def _batches(self, epoch: int) -> list[list[int]]:
        t = self.spec.training
        return epoch_batches(self.train_set, micro_batch_size=t.micro_batch_size, seed=t.seed, epoch=epoch,
                             group_by_length=t.group_by_length, packing=t.packing, max_length=self.build.max_length,
                             world_size=self.acc.num_processes)

    def _collate(self, tokens: TokenSet, rows: list[int]) -> dict:
        batch = collate_packed(tokens, rows) if self.spec.training.packing else collate_padded(tokens, rows, self.pad_id)
        return {k: v.to(self.acc.device) for k, v in batch.items()}

    # ------------------------------------------------------------------ checkpoints

    def _trainable_state(self) -> dict:
        model = self.acc.unwrap_model(self.model)
        return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}

    def save(self, step: int, metrics: dict) -> Path:
        import torch
        from safetensors.torch import save_file

        state = {
            "step": step,
            "total_steps": self.plan.total_steps,
            "input_key": self.build.input_key,
            "world_size": self.acc.num_processes,
            "spec": self.build.lock["spec"],
            "metrics": metrics,
            "best": self.best,
        }
        sharded = self.acc.distributed_type.value in ("FSDP", "DEEPSPEED")
        train_dir = self.build.train_dir
        self.acc.wait_for_everyone()
        if sharded:
            # every process writes its shard into one temporary directory; the main process then renames it
            tmp = train_dir / f".checkpoint-{step}.tmp-sharded"
            self.acc.save_state(str(tmp / "accelerate"))
            self.acc.wait_for_everyone()
            if self.acc.is_main_process:
                ckpt.write_checkpoint(train_dir, step, lambda d: ckpt.adopt(tmp, d), state)
        elif self.acc.is_main_process:
            def write(tmp: Path) -> None:
                save_file(self._trainable_state(), str(tmp / "trainable.safetensors"))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                torch.save(ckpt.rng_state(), tmp / "rng.pt")

            ckpt.write_checkpoint(train_dir, step, write, state)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            best = Path(self.best["path"]) if self.best else None
            ckpt.prune(train_dir, self.spec.training.save_total_limit, best)
        return self.build.train_dir / f"checkpoint-{step}"

    def resume(self) -> int:
        """Restore the newest complete checkpoint; returns the step to continue from (0 for a fresh run)."""
        import torch
        from safetensors.torch import load_file

        train_dir = self.build.train_dir
        if self.acc.is_main_process:
            ckpt.clean_partial(train_dir)
        self.acc.wait_for_everyone()
        if self.restart:
            if self.acc.is_main_process and train_dir.exists():
                import shutil

                shutil.rmtree(train_dir)
            self.acc.wait_for_everyone()
            return 0
        latest = ckpt.latest_checkpoint(train_dir)
        if latest is None:
            return 0
        state = ckpt.read_state(latest)
        if state.get("input_key") != self.build.input_key:
            diffs = spec_differences(state.get("spec", {}), self.build.lock["spec"])
            if diffs or not state.get("spec"):
                raise BuildError(Problem(
                    f"{latest.name} was trained from a different build; changed: {', '.join(diffs[:12]) or 'the data'}",
                    file=str(latest), hint=f"restore the old spec/data, or start over: tunespec train {self.build.path} --restart"))
        saved_world = state.get("world_size", self.acc.num_processes)
        if saved_world != self.acc.num_processes:
            raise BuildError(Problem(
                f"{latest.name} was written by {saved_world} process(es), this run has {self.acc.num_processes}; "
                "the data order depends on the number of processes", file=str(latest),
                hint=f"resume with the same launch ({'bash BUILD/launch.sh' if saved_world > 1 else 'tunespec train BUILD'}), "
                "or start over with --restart"))
        self.log(f"resuming from {latest.name}")
        if (latest / "accelerate").is_dir():
            self.acc.load_state(str(latest / "accelerate"))
        else:
            weights = load_file(str(latest / "trainable.safetensors"))
            model = self.acc.unwrap_model(self.model)
            named = dict(model.named_parameters())
            with torch.no_grad():
                for n, w in weights.items():
                    named[n].copy_(w.to(named[n].device))
            self.optimizer.load_state_dict(torch.load(latest / "optimizer.pt", weights_only=False))
            self.scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=False))
            ckpt.set_rng_state(torch.load(latest / "rng.pt", weights_only=False))
        self.best = state.get("best")
        self.resumed_metrics = dict(state.get("metrics") or {})
        return int(state["step"])

    # ------------------------------------------------------------------ evaluation

    def evaluate_loss(self) -> float | None:
        import torch

        if self.eval_set is None or len(self.eval_set) == 0:
            return None
        t = self.spec.training
        bs = t.eval_batch_size or t.micro_batch_size
        order = sorted(range(len(self.eval_set)), key=lambda i: -int(self.eval_set.lengths[i]))
        mine = order[self.acc.process_index :: self.acc.num_processes]
        total = torch.zeros(2, device=self.acc.device, dtype=torch.float64)
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(mine), bs):
                batch = collate_padded(self.eval_set, mine[i : i + bs], self.pad_id)
                batch = {k: v.to(self.acc.device) for k, v in batch.items()}
                n = int((batch["labels"][:, 1:] != -100).sum())
                with self.acc.autocast():
                    out = self.model(**batch, num_items_in_batch=torch.tensor(max(n, 1), device=self.acc.device))
                total += torch.tensor([out.loss.item() * max(n, 1), n], device=self.acc.device, dtype=torch.float64)
        self.model.train()
        total = self.acc.reduce(total, reduction="sum")
        return float(total[0] / total[1]) if total[1] else None

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        import torch

        self.setup()
        self.best = None
        self.resumed_metrics: dict = {}
        start = self.resume()
        t = self.spec.training
        plan = self.plan
        stop = _Stop()
        old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        writer = self._writer()
        metrics_path = self.build.train_dir / "metrics.jsonl"
        if self.acc.is_main_process:
            self.build.train_dir.mkdir(parents=True, exist_ok=True)
            if start == 0 and metrics_path.exists():
                metrics_path.unlink()
            elif metrics_path.exists():
                _truncate_metrics(metrics_path, start)
        self.log(f"training {plan.total_steps} steps × {plan.accum} micro-batches of {t.micro_batch_size} "
                 f"on {self.acc.num_processes} process(es), {self.acc.device}; {len(self.train_set)} train rows")
        self.model.train()
        last: dict = dict(self.resumed_metrics)  # a resume at the last step only finishes
        window = {"loss": 0.0, "tokens": 0, "real": 0, "padded": 0, "t0": time.perf_counter(), "steps": 0}
        epoch_cache: dict[int, list[list[int]]] = {}
        step = start
        try:
            while step < plan.total_steps:
                micro = []
                for k in range(plan.accum):
                    epoch, pos = plan.position(step * plan.accum + k)
                    if epoch not in epoch_cache:
                        epoch_cache.clear()
                        epoch_cache[epoch] = self._batches(epoch)
                    batches = epoch_cache[epoch]
                    micro.append(self._collate(self.train_set, batches[pos * self.acc.num_processes + self.acc.process_index]))
                n_local = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
                n_global = int(self.acc.reduce(torch.tensor(n_local, device=self.acc.device), reduction="sum"))
                n_items = torch.tensor(max(n_global, 1), device=self.acc.device)
                step_loss = 0.0
                for k, batch in enumerate(micro):
                    sync = k == len(micro) - 1
                    ctx = self.acc.no_sync(self.model) if not sync and self.acc.num_processes > 1 else _null()
                    with ctx:
                        with self.acc.autocast():
                            out = self.model(**batch, num_items_in_batch=n_items)
                        # DDP averages gradients over processes; the loss is already normalised globally.
                        loss = out.loss * self.acc.num_processes
                        self.acc.backward(loss)
                    step_loss += out.loss.item()
                    real, padded = count_positions(batch)
                    window["real"] += real
                    window["padded"] += padded
                grad_norm = None
                if t.max_grad_norm:
                    grad_norm = float(self.acc.clip_grad_norm_(self.params, t.max_grad_norm))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                step_loss = float(self.acc.reduce(torch.tensor(step_loss, device=self.acc.device), reduction="sum"))
                window["loss"] += step_loss
                window["tokens"] += n_global
                window["steps"] += 1
                last = {"step": step, "loss": round(step_loss, 6)}
                if step % t.logging_steps == 0 or step == plan.total_steps:
                    elapsed = time.perf_counter() - window["t0"]
                    epoch = (step * plan.accum) / max(1, plan.micro_per_epoch)
                    record = {
                        "step": step, "epoch": round(epoch, 4),
                        "loss": round(window["loss"] / window["steps"], 6),
                        "lr": self.scheduler.get_last_lr()[0],
                        "grad_norm": None if grad_norm is None else round(grad_norm, 6),
                        "trained_tokens": window["tokens"],
                        "tokens_per_s": round(window["real"] * self.acc.num_processes / elapsed, 1),
                        "step_time_s": round(elapsed / window["steps"], 4),
                        "padding_fraction": round(1 - window["real"] / max(1, window["padded"]), 4),
                    }
                    if torch.cuda.is_available():
                        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                    self._log_metrics(record, metrics_path, writer)
                    window = {"loss": 0.0, "tokens": 0, "real": 0, "padded": 0, "t0": time.perf_counter(), "steps": 0}
                do_eval = (t.eval_strategy == "steps" and step % (t.eval_steps or t.save_steps) == 0) or (
                    t.eval_strategy == "epoch" and (step * plan.accum) % plan.micro_per_epoch < plan.accum)
                if do_eval:
                    eval_loss = self.evaluate_loss()
                    if eval_loss is not None:
                        last["eval_loss"] = round(eval_loss, 6)
                        self._log_metrics({"step": step, "eval_loss": round(eval_loss, 6)}, metrics_path, writer)
                        self._track_best(step, last)
                do_save = t.save_strategy == "steps" and step % t.save_steps == 0 or (
                    t.save_strategy == "epoch" and (step * plan.accum) % plan.micro_per_epoch < plan.accum)
                if stop.signal is not None:
                    path = self.save(step, last)
                    name = "SIGINT" if stop.signal == signal.SIGINT else "SIGTERM"
                    # several processes must be started again by accelerate, not by `tunespec train` (one process)
                    again = (f"tunespec train {self.build.path}" if self.spec.launch.topology == "single"
                             else f"bash {self.build.path / 'launch.sh'}")
                    self.log(f"{name}: saved {path.name}; resume with: {again}")
                    raise SystemExit(130 if stop.signal == signal.SIGINT else 143)
                if do_save and step < plan.total_steps:
                    self.save(step, last)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if writer is not None:
                writer.close()
        self.save(step, last)
        self.finish(last)
        return last

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
                self.save(step, metrics)

    def _writer(self):
        if "tensorboard" not in self.spec.training.report_to or not self.acc.is_main_process:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("warning: tensorboard is not installed; metrics go to metrics.jsonl only")
            return None
        return SummaryWriter(str(self.build.train_dir / "tensorboard"))

    def _log_metrics(self, record: dict, path: Path, writer) -> None:
        if not self.acc.is_main_process:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(f"train/{k}", v, record["step"])
        parts = [f"{k} {v}" for k, v in record.items() if k != "step"]
        self.log(f"step {record['step']}/{self.plan.total_steps}: " + ", ".join(parts))

    def finish(self, last: dict) -> None:
        """Save the final adapter (or full model) and the loss curve."""
        self.acc.wait_for_everyone()
        model = self.acc.unwrap_model(self.model)
        if self.spec.training.load_best_model_at_end and self.best:
            self._load_trainable(Path(self.best["path"]))
        target = self.build.adapter_dir if isinstance(self.spec.adapter, LoraSpec) else self.build.merged_dir
        tmp = target.with_name(f".{target.name}.tmp")
        if self.acc.is_main_process:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        state_dict = self.acc.get_state_dict(self.model)
        if self.acc.is_main_process:
            import shutil

            model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "tunespec.json").write_text(json.dumps({"input_key": self.build.input_key, "final": last}, indent=2))
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            from .plots import plot_loss

            plot_loss(self.build.train_dir / "metrics.jsonl", self.build.train_dir / "loss.png")
            self.log(f"saved {target}")
        self.acc.wait_for_everyone()

    def _load_trainable(self, checkpoint: Path) -> None:
        import torch
        from safetensors.torch import load_file

        if not (checkpoint / "trainable.safetensors").is_file():
            return
        weights = load_file(str(checkpoint / "trainable.safetensors"))
        named = dict(self.acc.unwrap_model(self.model).named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                named[n].copy_(w.to(named[n].device))
        self.log(f"loaded the best checkpoint, {checkpoint.name}")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the records of steps after `step`: a killed run logged them, and the resumed run trains them again."""
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if record.get("step", 0) <= step:
            keep.append(line + "\n")
    path.write_text("".join(keep), encoding="utf-8")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def train(build_path: str | Path, *, restart: bool = False) -> dict:
    return Trainer(Build(build_path), restart=restart).run()


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
