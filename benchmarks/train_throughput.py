"""Training throughput side by side on one GPU: the seed recipe, TRL's SFTTrainer, and tunespec.

    python benchmarks/train_throughput.py --data DEV.jsonl --model-dir DIR [--shape smollm2|1b] \
        [--random-weights] [--steps 30] [--systems seed_qlora,seed_lora,trl,trl_packing,tunespec,tunespec_packing,...] \
        --out results.json

Workload (the performance issue's): DialogSum dev (first 400 rows), the `### Instruct / ### Output /
### End` summarization prompt, LoRA r=16 alpha=32 on every linear layer, bf16, max length 1024, a fixed
number of optimizer steps per system. Each system runs in its own process (clean peak memory).

* seed_qlora / seed_lora: HF `Trainer` with `DataCollatorForLanguageModeling(mlm=False)`, pad = EOS,
  batch 2 x accumulation 5, gradient checkpointing, `paged_adamw_8bit`, prompt+completion tokenized as
  one text (the loss covers the prompt; EOS is never a label). qlora: 4-bit NF4 double-quant base.
* trl / trl_packing: TRL `SFTTrainer` on prompt/completion rows (completion-only loss), LoRA, batch 16,
  TRL's own defaults otherwise (gradient checkpointing on), with and without `packing=True`.
* trl_liger / trl_liger_packing: the same with `use_liger_kernel=True` (liger-kernel's Triton kernels).
* trl_qlora_packing: the same as trl_packing on a 4-bit NF4 double-quant base.
* unsloth / unsloth_packing / unsloth_qlora_packing: Unsloth as its notebooks run it:
  `FastLanguageModel.from_pretrained` (bf16, or `load_in_4bit=True`) and `FastLanguageModel.get_peft_model`
  (r 16, alpha 32 on the seven projections, dropout 0 as Unsloth recommends for its fast path, its
  `use_gradient_checkpointing="unsloth"`), then the same TRL `SFTTrainer` and `SFTConfig` as the trl rows.
  Unsloth pins trl <= 1.15 and datasets < 5: with `UNSLOTH_SITE=DIR` these systems' processes put DIR (a
  `pip install --target` of Unsloth's wheels) first on PYTHONPATH.
* tunespec / tunespec_packing: compiled from `benchmarks/specs/dialogsum-dev-lora.yaml` with the same
  template and its defaults (padding-free micro-batches of 16 rows, logits only at trained positions,
  torch.compile of the decoder layers, gradient checkpointing: auto = on with a GPU), and with
  `training.packing: true` (16 bins of up to 1,024 tokens, as TRL packs). tunespec_qlora_packing: the
  latter from `dialogsum-dev-qlora.yaml` (torch.compile: auto = off with a 4-bit base).
  `--set KEY=VALUE` changes the tunespec spec (e.g. training.gradient_checkpointing=false).
* TS_CHILD_LOGS=DIR keeps each system's stdout and stderr in DIR/SHAPE-SYSTEM.log.
* TS_MEMORY=PATH records the CUDA allocator's history and writes what was alive at each system's peak memory,
  by allocating line, to PATH-SYSTEM-peak.json (`benchmarks/memory_peak.py`); the timed figures then include the
  recording's cost.
* TS_PROFILE=PATH writes each system's torch.profiler table (top kernels by GPU time, over 2 optimizer steps
  after the warm-up and one more step) to PATH-SYSTEM.txt; the timed figures then include the profiler's cost.

`--repeat K` trains on DialogSum dev repeated K times (rows of copy k > 0 tagged `(copy k)`, their ids
(`fname`) `-copyk`, so no two are equal): the peers read their first 400 rows either way, and tunespec's defaults size micro-batches by the
train split (`micro_batches.py`: at least 64 an epoch), so only above ~1.05M train tokens (K = 10) do they
take the full 16k-token budget that a dataset of the size people train would get.

Reported per system: real (non-pad) tokens/s and padded positions/s over the timed steps (after 3
warm-up steps), peak GPU memory (`max_memory_allocated`), the train loss averaged over the last 5
steps, and MFU = 6 * N * real tokens/s / measured bf16 matmul peak (PaLM's convention with N the model's
parameters; it counts the weight-gradient matmuls a LoRA run skips, so LoRA's hardware utilisation is
about 2/3 of that figure, plus attention FLOPs it leaves out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WARMUP = 3
PROMPT = "### Instruct: Summarize the below conversation.\n\n{dialogue}\n\n### Output:\n"
COMPLETION = "{summary}\n### End"
ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    # Llama-3.2-1B-like shape with SmolLM2's vocabulary (the tokenizer is SmolLM2's)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    # Llama-3-8B's shape (32 layers, hidden 4096, GQA with 8 KV heads, vocabulary 128,256); the tokenizer
    # is still SmolLM2's, whose ids all lie inside that vocabulary
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
               rope_parameters={"rope_theta": 500000.0, "rope_type": "default"}, max_position_embeddings=8192),
}


def rows(path: Path, n: int | None = 400) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f][:n]


def model_dir(args) -> str:
    """A directory with config.json and the tokenizer: `--model-dir` as given, or its GGUF de-quantized."""
    from tunespec.model_resolver import ModelRef, resolve

    ggufs = sorted(Path(args.model_dir).glob("*.gguf"))
    if ggufs:
        return resolve(ModelRef(path=str(args.model_dir), gguf_file=ggufs[0].name))
    return str(args.model_dir)


def random_config(args):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir(args))
    for k, v in SHAPES.get(args.shape, {}).items():
        setattr(config, k, v)
    return config


def random_checkpoint(args) -> str:
    """A saved copy of the random-weight model (with the tokenizer), for loaders that read a checkpoint (a
    4-bit load, Unsloth): made once per shape on the GPU and reused by later systems' processes."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    path = Path(f"/tmp/bench-random-{args.shape}")
    if (path / "complete").exists():
        return str(path)
    torch.manual_seed(0)
    with torch.device("cuda"):  # an 8B model's random init on the CPU takes minutes
        model = AutoModelForCausalLM.from_config(random_config(args), dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    for f in Path(model_dir(args)).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, path / f.name)
    (path / "complete").touch()
    return str(path)


def random_weights(args) -> bool:
    return args.random_weights or args.shape != "smollm2"


def load_model(args, quantized: bool):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                            bnb_4bit_compute_dtype=torch.bfloat16) if quantized else None
    if random_weights(args) and not quantized:
        torch.manual_seed(0)
        with torch.device("cuda"):  # initialised on the GPU: an 8B model's random init on the CPU takes minutes
            return AutoModelForCausalLM.from_config(random_config(args), dtype=torch.bfloat16)
    src = random_checkpoint(args) if random_weights(args) else model_dir(args)
    return AutoModelForCausalLM.from_pretrained(src, quantization_config=qc, dtype=torch.bfloat16,
                                                device_map={"": 0})


def lora():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")


class Meter:
    """Counts real and padded positions of every batch and times optimizer steps after the warm-up."""

    def __init__(self):
        self.real = self.padded = 0
        self.seen = 0  # real tokens of every step, warm-up included (for the loss-per-token curve)
        self.step = 0
        self.t0 = None
        self.losses: list[float] = []
        self.curve: list[tuple[int, float]] = []  # (real tokens seen, loss of that step)
        self.first_batch: dict = {}  # the first batch's tensor shapes (how each system forms its micro-batches)
        self.forward_positions = 0  # input positions the model's training forwards took, after the warm-up
        self.forwards = 0

    def watch(self, model):
        """Count the input positions of every training forward at the input embedding (`model` returned).

        The collator counts what was collated, and a data loader may read ahead of the steps: this count is
        what the timed steps trained (the embedding runs once per forward; checkpointing recomputes only the
        decoder layers)."""
        def count(module, inputs, output):
            if module.training and self.step >= WARMUP:
                self.forward_positions += inputs[0].numel()
                self.forwards += 1

        model.get_input_embeddings().register_forward_hook(count)
        return model

    def batch(self, batch: dict) -> None:
        ids = batch["input_ids"]
        if not self.first_batch:
            self.first_batch = {k: list(v.shape) for k, v in batch.items() if hasattr(v, "shape")}
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else ids.numel()
        self.seen += real
        if self.step >= WARMUP:
            self.padded += ids.numel()
            self.real += real

    def step_end(self) -> None:
        import torch

        self.step += 1
        if PROFILER is not None:
            PROFILER.step()
        if self.step == WARMUP:
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()

    def result(self, model) -> dict:
        import torch

        torch.cuda.synchronize()
        elapsed = time.perf_counter() - self.t0
        # a 4-bit weight's numel() counts its packed bytes; its quant_state has the real shape
        n = sum(p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None else p.numel()
                for p in model.parameters())
        return {"timed_steps": self.step - WARMUP, "seconds": round(elapsed, 3),
                "real_tokens_per_s": round(self.real / elapsed, 1), "positions_per_s": round(self.padded / elapsed, 1),
                "padding_fraction": round(1 - self.real / max(1, self.padded), 4),
                "forward_positions_per_s": round(self.forward_positions / elapsed, 1),
                "forwards_per_step": round(self.forwards / max(1, self.step - WARMUP), 2),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "final_loss": round(sum(self.losses[-5:]) / max(1, len(self.losses[-5:])), 4), "params": n,
                "tokens_seen": self.seen, "first_batch": self.first_batch, "loss_curve": self.curve}


def hf_callback(meter: Meter):
    from transformers import TrainerCallback

    class CB(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            meter.step_end()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                meter.losses.append(float(logs["loss"]))
                meter.curve.append((meter.seen, round(float(logs["loss"]), 4)))

    return CB()


def counting(collator, meter: Meter):
    def wrapped(features):
        batch = collator(features)
        meter.batch(batch)
        return batch

    return wrapped


def run_seed(args, quantized: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(model_dir(args))
    tok.pad_token = tok.eos_token
    data = Dataset.from_list([{"text": PROMPT.format(**r) + COMPLETION.format(**r)} for r in rows(args.data)])
    data = data.map(lambda b: tok(b["text"], truncation=True, max_length=1024), batched=True, remove_columns=["text"])
    model = load_model(args, quantized)
    model.gradient_checkpointing_enable()
    model = prepare_model_for_kbit_training(model) if quantized else model
    model.enable_input_require_grads()
    model = get_peft_model(model, lora())
    meter = Meter()
    targs = TrainingArguments(output_dir="/tmp/bench-seed", per_device_train_batch_size=2, gradient_accumulation_steps=5,
                              max_steps=args.steps, learning_rate=2e-4, optim="paged_adamw_8bit", logging_steps=1,
                              gradient_checkpointing=True, bf16=True, report_to=[], save_strategy="no", warmup_steps=1)
    meter.watch(model)
    collator = counting(DataCollatorForLanguageModeling(tok, mlm=False), meter)
    torch.cuda.reset_peak_memory_stats()
    Trainer(model=model, args=targs, train_dataset=data, data_collator=collator, callbacks=[hf_callback(meter)]).train()
    return meter.result(model)


def sft_setup(args, packing: bool, output_dir: str, liger: bool = False):
    """What the TRL-based systems share: DialogSum as prompt/completion rows, the SFTConfig (batch 16, lr 2e-4,
    bf16, max length 1024, `packing`), and a Meter. Imports TRL here: Unsloth's runner imports unsloth first."""
    from datasets import Dataset
    from trl import SFTConfig

    data = Dataset.from_list([{"prompt": PROMPT.format(**r), "completion": COMPLETION.format(**r)} for r in rows(args.data)])
    cfg = SFTConfig(output_dir=output_dir, per_device_train_batch_size=16, max_steps=args.steps, learning_rate=2e-4,
                    logging_steps=1, bf16=True, report_to=[], save_strategy="no", packing=packing, max_length=1024,
                    warmup_steps=1, use_liger_kernel=liger)
    return data, cfg, Meter()


def train_measured(trainer, meter: Meter) -> dict:
    """Train an SFTTrainer with `meter` counting its collated batches and its forwards, from a reset peak."""
    import torch

    trainer.data_collator = counting(trainer.data_collator, meter)
    meter.watch(trainer.model)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return meter.result(trainer.model)


def run_trl(args, packing: bool, quantized: bool = False, liger: bool = False) -> dict:
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir(args))
    data, cfg, meter = sft_setup(args, packing, "/tmp/bench-trl", liger=liger)
    model = load_model(args, quantized)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora(),
                         callbacks=[hf_callback(meter)])
    return train_measured(trainer, meter)


def run_unsloth(args, packing: bool, quantized: bool = False) -> dict:
    from unsloth import FastLanguageModel  # first: it patches transformers and TRL on import

    # isort: split
    import torch
    from trl import SFTTrainer

    src = random_checkpoint(args) if random_weights(args) else model_dir(args)
    model, tok = FastLanguageModel.from_pretrained(model_name=src, max_seq_length=1024, dtype=torch.bfloat16,
                                                   load_in_4bit=quantized, local_files_only=True)
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=32, lora_dropout=0, bias="none", use_gradient_checkpointing="unsloth",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        random_state=0)
    data, cfg, meter = sft_setup(args, packing, "/tmp/bench-unsloth")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[hf_callback(meter)])
    return train_measured(trainer, meter)


def run_tunespec(args, packing: bool, quantized: bool = False, extra: list[str] = ()) -> dict:
    import torch

    from tunespec.build_reader import Build
    from tunespec.compiler.build_writer import compile_build
    from tunespec.runtime.train import Trainer
    from tunespec.spec.loader import load_spec

    sets = ["model.packaged=null", f"model.path={model_dir(args)}",
            f"data.sources.0.path={args.data}", "data.template=instruct_output_end", f"training.max_steps={args.steps}",
            "training.logging_steps=1", "training.save_strategy=no", "training.learning_rate=2.0e-4",
            "training.warmup_steps=1", f"training.packing={'true' if packing else 'false'}", "evaluation.metrics=[loss]",
            *extra, *args.set]
    out = Path(f"/tmp/bench-tunespec-{'packing' if packing else 'padded'}-{'qlora' if quantized else 'lora'}-{len(extra)}")
    spec = ROOT / f"benchmarks/specs/dialogsum-dev-{'qlora' if quantized else 'lora'}.yaml"
    compile_build(load_spec(spec, sets), out, force=True)
    meter = Meter()

    def on_metrics(record):
        if "loss" in record:
            meter.losses.append(record["loss"])
            meter.curve.append((meter.seen, round(record["loss"], 4)))
            meter.step_end()

    hooks = {"on_batch": meter.batch, "on_metrics": on_metrics}
    if random_weights(args):
        hooks["load_model"] = lambda spec, **kw: meter.watch(load_model(args, quantized))
    # tunespec's own log lines to stdout (kept by TS_CHILD_LOGS): what ran (LM head fused, layers compiled, offload)
    trainer = Trainer(Build(out), restart=True, log=lambda s: print(s, flush=True), **hooks)
    torch.cuda.reset_peak_memory_stats()
    trainer.run()
    return meter.result(trainer.model)


PROFILER = None  # the running torch.profiler (TS_PROFILE): Meter.step_end steps its schedule
PROFILED_STEPS = 2


def profiled(fn, path: str):
    """Run `fn` with torch.profiler recording optimizer steps WARMUP + 2 .. WARMUP + 1 + PROFILED_STEPS (after
    the compile and one more step), and write the top kernels by GPU time to `path` (TS_PROFILE=path)."""
    global PROFILER
    from torch.profiler import ProfilerActivity, profile, schedule

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 schedule=schedule(wait=WARMUP, warmup=1, active=PROFILED_STEPS, repeat=1)) as prof:
        PROFILER = prof
        result = fn()
    PROFILER = None
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
    Path(path).write_text(f"{PROFILED_STEPS} optimizer steps (after {WARMUP + 1})\n{table}")
    return result


def memory_traced(fn, path: str):
    """Run `fn` with the CUDA allocator's history recorded (Python stacks), and write to `path` what was alive at
    the peak, by allocating line (`memory_peak.summarize`; TS_MEMORY=path). The snapshot stays in /tmp."""
    import pickle

    import torch
    from memory_peak import summarize

    baseline = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    result = fn()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    with open(f"/tmp/{Path(path).stem}.pickle", "wb") as f:
        pickle.dump(snapshot, f)
    summary = summarize(snapshot, baseline=baseline, top=25)
    summary["max_memory_allocated_gib"] = result.get("peak_memory_gib")
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")
    return result


def matmul_peak() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - t)


SYSTEMS = {
    "seed_qlora": lambda a: run_seed(a, True),
    "seed_lora": lambda a: run_seed(a, False),
    "trl": lambda a: run_trl(a, False),
    "trl_packing": lambda a: run_trl(a, True),
    # TRL as its speed-minded users run it: Liger's fused kernels (RMSNorm, RoPE, SwiGLU, fused linear +
    # cross-entropy) through `use_liger_kernel=True` (the liger-kernel package)
    "trl_liger": lambda a: run_trl(a, False, liger=True),
    "trl_liger_packing": lambda a: run_trl(a, True, liger=True),
    "tunespec": lambda a: run_tunespec(a, False),
    "tunespec_packing": lambda a: run_tunespec(a, True),
    # the defaults: micro-batches sized by tokens (micro_batch_tokens auto), and a 16k-token budget
    "tunespec_defaults": lambda a: run_tunespec(a, False, extra=["training.micro_batch_size=null"]),
    "tunespec_defaults_eager": lambda a: run_tunespec(a, False, extra=["training.micro_batch_size=null",
                                                                       "training.torch_compile=false"]),
    "tunespec_16k": lambda a: run_tunespec(a, False, extra=["training.micro_batch_size=null",
                                                            "training.micro_batch_tokens=16384"]),
    "trl_qlora_packing": lambda a: run_trl(a, True, quantized=True),
    "trl_liger_qlora_packing": lambda a: run_trl(a, True, quantized=True, liger=True),
    "tunespec_qlora_packing": lambda a: run_tunespec(a, True, quantized=True),
    # tunespec's defaults (micro_batch_tokens auto) on a 4-bit base
    "tunespec_qlora_defaults": lambda a: run_tunespec(a, False, quantized=True, extra=["training.micro_batch_size=null"]),
    # the defaults with the checkpointed layers' inputs in pinned CPU memory (training.activation_offload; auto
    # turns it on at hidden size >= 4096 on an unquantized base, so at 8B LoRA this is the defaults) and without
    "tunespec_offload": lambda a: run_tunespec(a, False, extra=["training.micro_batch_size=null",
                                                                "training.activation_offload=true"]),
    "tunespec_no_offload": lambda a: run_tunespec(a, False, extra=["training.micro_batch_size=null",
                                                                   "training.activation_offload=false"]),
    "tunespec_qlora_offload": lambda a: run_tunespec(a, False, quantized=True, extra=[
        "training.micro_batch_size=null", "training.activation_offload=true"]),
    "unsloth": lambda a: run_unsloth(a, False),
    "unsloth_packing": lambda a: run_unsloth(a, True),
    "unsloth_qlora_packing": lambda a: run_unsloth(a, True, quantized=True),
}


def repeated(path: Path, k: int) -> Path:
    """`path`'s rows `k` times over, each copy's dialogues tagged so that no two rows are equal."""
    out = Path(f"/tmp/bench-data-x{k}.jsonl")
    lines = []
    for copy in range(k):
        for r in rows(path, n=None):
            if copy:
                r = {**r, "dialogue": f"{r['dialogue']} (copy {copy})"}
                for key in ("id", "fname"):  # DialogSum's row id is its fname
                    if key in r:
                        r[key] = f"{r[key]}-copy{copy}"
            lines.append(json.dumps(r, ensure_ascii=False))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def child_env(system: str) -> dict:
    """The environment of one system's process: Unsloth's own site directory first for its systems."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "UNSLOTH_DISABLE_STATISTICS": "1"}
    if system.startswith("unsloth") and env.get("UNSLOTH_SITE"):
        env["PYTHONPATH"] = os.pathsep.join([env["UNSLOTH_SITE"], env.get("PYTHONPATH", "")])
    return env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, required=True,
                    help="SmolLM2's GGUF directory, or a directory with its config.json and tokenizer (--random-weights)")
    ap.add_argument("--shape", default="smollm2", choices=["smollm2", *SHAPES])
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=1, help="Train on the data repeated this many times (see above).")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="Extra spec settings for the tunespec systems (repeatable), e.g. training.micro_batch_size=32.")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--timeout", type=int, default=150, help="Seconds per system.")
    args = ap.parse_args()
    if args.system:  # child process: one system
        if os.environ.get("TS_PROFILE"):
            result = profiled(lambda: SYSTEMS[args.system](args), f"{os.environ['TS_PROFILE']}-{args.system}.txt")
        elif os.environ.get("TS_MEMORY"):
            result = memory_traced(lambda: SYSTEMS[args.system](args),
                                   f"{os.environ['TS_MEMORY']}-{args.system}-peak.json")
        else:
            result = SYSTEMS[args.system](args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    import torch

    if args.repeat > 1:
        args.data = repeated(args.data, args.repeat)
    peak = matmul_peak()
    results = {"device": torch.cuda.get_device_name(), "bf16_matmul_peak_tflops": round(peak / 1e12, 1),
               "shape": args.shape, "weights": "random" if random_weights(args) else "real",
               "steps": args.steps, "data": str(args.data), "systems": {}}
    for name in args.systems.split(","):
        cmd = [sys.executable, __file__, "--system", name, "--data", str(args.data), "--model-dir", str(args.model_dir),
               "--shape", args.shape, "--steps", str(args.steps)] + (["--random-weights"] if args.random_weights else [])
        cmd += [f"--set={kv}" for kv in args.set]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(name), timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results["systems"][name] = {"error": f"timed out after {args.timeout} s"}
            continue
        if os.environ.get("TS_CHILD_LOGS"):  # each system's own output (e.g. TORCH_LOGS=recompiles) kept
            Path(os.environ["TS_CHILD_LOGS"], f"{args.shape}-{name}.log").write_text(proc.stdout + proc.stderr)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            results["systems"][name] = {"error": (proc.stderr or proc.stdout)[-1500:]}
        else:
            r = json.loads(line[-1][7:])
            r["mfu_6N"] = round(6 * r["params"] * r["real_tokens_per_s"] / peak, 4)
            r["wall_s"] = round(time.perf_counter() - t, 1)
            results["systems"][name] = r
        print(name, json.dumps(results["systems"][name])[:600], flush=True)
        if args.out:  # after every system, so a cut-off run keeps what it measured
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
