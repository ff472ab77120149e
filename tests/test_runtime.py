"""The runtime on a tiny random Llama: batching, packing isolation, loss normalisation, exact resume after
SIGKILL under ``accelerate launch`` (fp32 and 4-bit), SIGTERM, resume refusal, half-written checkpoints,
evaluate, merge and a full fine-tune.

Everything runs offline on a CPU: the model (hidden 64, 2 layers) and its tokenizer are built by the
``tiny_model_dir`` fixture. Runs that must be exact set ``training.bf16: false``: on CPUs with native bf16
``auto`` turns bf16 autocast on, and these tests compare weights to 1e-6.

Runs that are killed are paused at an exact log line by a ``sitecustomize`` hook (``helpers.PAUSE_HOOK``):
a tiny model trains a step in milliseconds, so without it the kill would race the run.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import helpers
import numpy as np
import pytest
from helpers import Run, launch_cmd, load_tensors, max_tensor_diff, read_metrics, run_to_end, tunespec_cmd

pytestmark = pytest.mark.usefixtures("tunespec_env")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run creates its own Accelerator (mixed precision differs between tests)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def train_inprocess(build: Path, *, restart: bool = False) -> tuple[dict, list[str]]:
    from tunespec.build_reader import Build
    from tunespec.runtime.train import Trainer

    logs: list[str] = []
    last = Trainer(Build(build), restart=restart, log=logs.append).run()
    return last, logs


def env_context(cache: Path):
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNESPEC_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    return mp


# =========================================================================== 1. batching


def token_set(lengths, *, seed: int = 0, eos: int = 2):
    """A TokenSet whose rows end in `eos`, with the second half of every row trained (EOS included)."""
    from tunespec.build_reader import TokenSet

    rng = np.random.default_rng(seed)
    ids, trained, offsets = [], [], [0]
    for n in lengths:
        row = rng.integers(10, 1000, n)
        row[-1] = eos
        mask = np.zeros(n, dtype=np.uint8)
        mask[n // 2 :] = 1
        ids.append(row)
        trained.append(mask)
        offsets.append(offsets[-1] + n)
    return TokenSet(np.concatenate(ids).astype(np.int32), np.concatenate(trained), np.array(offsets, dtype=np.int64))


def batches(ts, micro_batch_size=4, packing=False, tokens=None, max_length=256, **kw):
    from tunespec.micro_batches import MicroBatching
    from tunespec.runtime.batching import epoch_batches

    if tokens:
        batching = MicroBatching("tokens", 1, tokens, "test")
    elif packing:
        batching = MicroBatching("bins", micro_batch_size, max_length, "test")
    else:
        batching = MicroBatching("rows", micro_batch_size, 0, "test")
    args = dict(seed=7, epoch=0, group_by_length=True)
    args.update(kw)
    return epoch_batches(ts, batching=batching, **args)


MODES = [dict(group_by_length=False, packing=False), dict(group_by_length=True, packing=False),
         dict(group_by_length=False, packing=True), dict(group_by_length=False, tokens=1000)]


@pytest.mark.parametrize("mode", MODES, ids=["plain", "grouped", "packed", "tokens"])
@pytest.mark.parametrize("n_rows", [103, 457])  # 457 > 50 * micro batch: several group-by-length chunks
def test_epoch_batches_deterministic_and_complete(mode, n_rows):
    lengths = np.random.default_rng(1).integers(5, 250, n_rows)
    ts = token_set(lengths)
    a = batches(ts, **mode)
    assert a == batches(ts, **mode), "the same (seed, epoch) must give the same batches"
    assert a != batches(ts, **mode, epoch=1), "another epoch must give another order"
    assert a != batches(ts, **mode, seed=8), "another seed must give another order"
    for epoch in (0, 1, 2):
        got = batches(ts, **mode, epoch=epoch)
        flat = [i for b in got for i in b]
        assert sorted(flat) == list(range(n_rows)), "every row exactly once per epoch"
        assert len(got) == len(a), "every epoch has as many micro-batches (the step plan counts on it)"
    if mode.get("tokens"):
        assert all(sum(int(lengths[i]) for i in b) <= 1000 for b in a), "a micro-batch stays within its token budget"
        assert len(a) <= int(lengths.sum()) // 1000 + 2, "first fit fills the micro-batches nearly full"
    elif not mode.get("packing"):
        assert all(1 <= len(b) <= 4 for b in a)


def test_epoch_batches_world_size_split_evenly():
    ts = token_set([20] * 10)  # 3 micro-batches of 4
    for world in (1, 2, 3):
        got = batches(ts, world_size=world, group_by_length=False)
        assert len(got) % world == 0 and got
        flat = [i for b in got for i in b]
        assert len(flat) == len(set(flat)), "no row twice"


def test_group_by_length_groups_similar_lengths():
    lengths = np.random.default_rng(3).integers(5, 250, 120)  # one chunk of 50 * 4 rows
    ts = token_set(lengths)
    grouped = batches(ts, group_by_length=True)
    for b in grouped:
        ls = [lengths[i] for i in b]
        assert ls == sorted(ls, reverse=True)
    # within a chunk the batches are consecutive slices of the length-sorted rows
    by_max = sorted(grouped, key=lambda b: -max(lengths[i] for i in b))
    for prev, nxt in zip(by_max, by_max[1:]):
        assert min(lengths[i] for i in prev) >= max(lengths[i] for i in nxt)
    # and the batch order is shuffled, not longest-first
    assert grouped != by_max

    def padded(bs):
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)

    assert padded(grouped) < 0.8 * padded(batches(ts, group_by_length=False))


def test_packing_bins_never_exceed_max_length():
    from tunespec.micro_batches import pack as _pack

    rng = np.random.default_rng(5)
    lengths = rng.integers(5, 256, 300)
    order = rng.permutation(300)
    bins = _pack(order, lengths, 256)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 256 for b in bins)
    assert any(len(b) > 1 for b in bins), "short rows must share bins"
    # first fit: a bin is opened only for a row that fits in no bin opened before it
    placed: set[int] = set()
    for i in order.tolist():
        if any(b[0] == i for b in bins):
            for b in bins:
                if b[0] in placed:
                    used = sum(lengths[j] for j in b if j in placed)
                    assert lengths[i] > 256 - used, "a new bin was opened although an earlier one had room"
        placed.add(i)
    ts = token_set(lengths)
    for b in batches(ts, packing=True, max_length=256, micro_batch_size=2):
        assert sum(lengths[i] for i in b) <= 2 * 256  # a micro-batch is at most micro_batch_size bins


def test_collate_padded_masks_pad_positions_and_keeps_eos():
    from tunespec.runtime.batching import collate_padded

    eos = 2
    ts = token_set([5, 13, 9, 16], eos=eos)
    batch = collate_padded(ts, [0, 1, 2], pad_id=eos)  # pad id == eos id, as with tokenizers without a pad token
    ids, labels, mask = batch["input_ids"].numpy(), batch["labels"].numpy(), batch["attention_mask"].numpy()
    assert ids.shape == (3, 16) and ids.shape[1] % 8 == 0
    for r, i in enumerate([0, 1, 2]):
        row, trained = ts.row(i)
        n = len(row)
        assert (ids[r, :n] == row).all() and (ids[r, n:] == eos).all()
        assert (mask[r, :n] == 1).all() and (mask[r, n:] == 0).all()
        assert (labels[r, n:] == -100).all(), "padding positions are never labels"
        assert (labels[r, :n] == np.where(trained == 1, row, -100)).all()
        assert labels[r, n - 1] == eos, "the real EOS label survives although pad id == eos id"
    # a longest row that is already a multiple of 8 is not padded further; one token more pads to the next 8
    assert collate_padded(ts, [3], pad_id=0)["input_ids"].shape == (1, 16)
    assert collate_padded(token_set([17]), [0], pad_id=0)["input_ids"].shape == (1, 24)


def test_collate_packed_positions_restart_and_first_labels_masked():
    from tunespec.runtime.batching import collate_packed, count_positions

    ts = token_set([6, 4, 9])
    ts.trained[:] = 1  # every position trained, so that the first-label rule is visible
    batch = collate_packed(ts, [2, 0, 1])
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                          "max_length_k"}, "no attention mask: position_ids and the row bounds carry the rows"
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 9, 15, 19]
    assert batch["cu_seq_lens_q"].dtype.is_floating_point is False and batch["cu_seq_lens_q"].element_size() == 4
    assert batch["max_length_q"] == batch["max_length_k"] == 9
    pos, labels, ids = batch["position_ids"][0].tolist(), batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
    assert pos == list(range(9)) + list(range(6)) + list(range(4))
    starts = [0, 9, 15]
    for s in starts:
        assert labels[s] == -100
    assert all(lab == tok for k, (lab, tok) in enumerate(zip(labels, ids)) if k not in starts)
    assert count_positions(batch) == (19, 19)


# =========================================================================== 2. packing isolation


@pytest.mark.parametrize("attn", ["eager", "sdpa", "tunespec_varlen"])
def test_packed_rows_do_not_attend_to_each_other(attn, tiny_model_dir, tiny_build_template):
    """Packed logits (position_ids, no attention mask) equal each row's logits alone, and the packed loss is
    the token-weighted loss of the rows alone (the first label of every row is masked)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunespec.build_reader import Build
    from tunespec.runtime import varlen
    from tunespec.runtime.batching import collate_packed
    from tunespec.runtime.modeling import prepare_for_training

    varlen.register()
    build = Build(tiny_build_template)
    ts = build.tokens("train")
    rows = [0, 1, 2, 3]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    model = prepare_for_training(model, build.spec)
    # transformers only detects packed rows when no KV cache is made; prepare_for_training turns the cache off
    assert model.config.use_cache is False
    model.eval()
    batch = collate_packed(ts, rows)
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        out = model(**batch, num_items_in_batch=torch.tensor(n_items))
        packed = out.logits[0]
        offset, worst, loss_sum, items = 0, 0.0, 0.0, 0
        for i in rows:
            ids, trained = ts.row(i)
            n = len(ids)
            ids_t = torch.as_tensor(ids.astype(np.int64))[None]
            labels = torch.as_tensor(np.where(trained.astype(bool), ids, -100).astype(np.int64))[None]
            alone = model(input_ids=ids_t, labels=labels)
            worst = max(worst, float((alone.logits[0] - packed[offset : offset + n]).abs().max()))
            k = int((labels[:, 1:] != -100).sum())
            loss_sum += float(alone.loss) * k
            items += k
            offset += n
    assert worst < 1e-4, f"packed rows attend across row boundaries ({attn}): max logit diff {worst}"
    assert items == n_items
    assert abs(float(out.loss) - loss_sum / items) < 1e-5
    # the padding-free loss (logits only at trained positions, chunked fp32 cross-entropy) is the same loss
    with torch.no_grad():
        assert abs(float(varlen.trained_loss(model, batch, torch.tensor(n_items))) - loss_sum / items) < 1e-5


def test_trained_loss_gradients_equal_the_full_logits_loss(tiny_model_dir, tiny_build_template, monkeypatch):
    """Same gradients as the standard loss, with cross-entropy chunks smaller than the trained positions."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunespec.build_reader import Build
    from tunespec.runtime import varlen
    from tunespec.runtime.batching import collate_packed
    from tunespec.runtime.modeling import prepare_for_training

    varlen.register()
    from tunespec import padding_free

    monkeypatch.setattr(padding_free, "CE_CHUNK", 7)
    build = Build(tiny_build_template)
    ts = build.tokens("train")
    batch = collate_packed(ts, [0, 1, 2, 3])
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    assert n_items > 7 * 2, "several chunks"
    grads = []
    for attn, fn in (("sdpa", lambda m: m(**batch, num_items_in_batch=n_items).loss),
                     (varlen.ATTENTION, lambda m: varlen.trained_loss(m, batch, n_items))):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
        model = prepare_for_training(model, build.spec)
        fn(model).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4), name


def test_fused_head_gives_the_full_logits_loss_and_gradients(tiny_model_dir, tiny_build_template):
    """The LM head fused with the cross-entropy, in chunks smaller than the trained positions: the loss and
    every LoRA gradient of the model's own full-logits loss (HF's cross-entropy; fp32, so to 1e-6)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunespec.build_reader import Build
    from tunespec.runtime import varlen
    from tunespec.runtime.batching import collate_packed
    from tunespec.runtime.fused_head import FusedHead
    from tunespec.runtime.modeling import prepare_for_training

    varlen.register()
    build = Build(tiny_build_template)
    batch = collate_packed(build.tokens("train"), [0, 1, 2, 3])
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    assert n_items > 5 * 2, "several chunks"
    results = []
    for attn, fused in (("sdpa", False), (varlen.ATTENTION, True)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
        model = prepare_for_training(model, build.spec)
        model.eval()  # no dropout: the two forwards see the same activations
        if fused:
            head = FusedHead(model, chunk=5)
            loss = varlen.trained_loss(model, batch, n_items, head=head)
            assert head.ok and head.difference == 0.0
            assert head.hidden is None, "the recorded hidden states are let go after the loss"
        else:
            loss = model(**batch, num_items_in_batch=n_items).loss
        loss.backward()
        results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (reference, ref_grads), (fused_loss, grads) = results
    assert abs(reference - fused_loss) < 1e-6
    assert ref_grads.keys() == grads.keys() and grads
    for name in grads:
        assert torch.allclose(ref_grads[name], grads[name], atol=1e-6, rtol=1e-4), name


def halve_logits_after_the_head(model) -> None:
    """Make `model`'s forward return its logits halved (as a logit scale would): they are no longer head(hidden)."""
    forward = model.forward

    def scaled(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled


def test_fused_head_check_refuses_a_model_that_transforms_its_logits(tiny_model_dir, tiny_build_template):
    """A forward whose logits are not head(hidden) (here: halved after the head, as a logit scale would) fails the
    first-batch check; the hook is removed and the loss is the model's own."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunespec.build_reader import Build
    from tunespec.runtime import varlen
    from tunespec.runtime.batching import collate_packed
    from tunespec.runtime.fused_head import FusedHead

    varlen.register()
    build = Build(tiny_build_template)
    batch = collate_packed(build.tokens("train"), [0, 1])
    n_items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=varlen.ATTENTION)
    halve_logits_after_the_head(model)
    head = FusedHead(model, chunk=5)
    with torch.no_grad():
        loss = varlen.trained_loss(model, batch, n_items, head=head)
        expected = varlen.trained_loss(model, batch, n_items)
    assert head.ok is False and head.difference > 0.1
    assert float(loss) == float(expected)
    assert not model.get_output_embeddings()._forward_pre_hooks, "the hook is removed"


def test_eval_loss_is_transformers_own_loss_with_the_head_fused(tiny_model_dir, tiny_build_template):
    """evaluate.eval_loss runs the LM head at the trained positions only once the first batch confirmed it gives the
    model's own logits: the mean loss per trained token equals transformers' causal-LM loss over padded batches (its
    own shift and fp32 cross-entropy, summed), for a plain and a PEFT-wrapped model; a model that halves its logits
    after the head keeps its own loss (the check fails, the hook is gone).
    The prompt-tuning case (virtual tokens: logits longer than the input) is test_adapters' evaluate run."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunespec.build_reader import Build
    from tunespec.runtime.batching import collate_padded
    from tunespec.runtime.evaluate import eval_loss
    from tunespec.runtime.modeling import prepare_for_training, use_bf16

    build = Build(tiny_build_template)
    tokens = build.tokens("train")
    n = len(tokens)
    bs = build.spec.training.eval_batch_size or build.spec.training.micro_batch_size or 8
    assert n > bs, "several batches: the later ones take the fused path"

    # under the precision eval_loss runs at (bf16 autocast where the spec's `auto` finds a bf16 CPU)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(build.spec))

    def mean_loss(summed) -> float:  # mean per trained token over the padded batches eval_loss forms
        total = count = 0
        with torch.no_grad(), autocast:
            for start in range(0, n, bs):
                batch = collate_padded(tokens, list(range(start, min(n, start + bs))), build.pad_token_id)
                k = int((batch["labels"][:, 1:] != -100).sum())
                total += summed(batch, k)
                count += k
        return total / count

    def hf_loss(model):  # transformers' causal-LM loss (shift, fp32 cross-entropy) on the logits the model returns
        from transformers.loss.loss_utils import ForCausalLMLoss

        def summed(batch, k):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return float(ForCausalLMLoss(logits, batch["labels"], logits.shape[-1], num_items_in_batch=torch.tensor(k))) * k

        return mean_loss(summed)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft = prepare_for_training(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), build.spec)
    for m in (model, peft):
        expected = hf_loss(m)
        got = eval_loss(m, build, "train", None)
        assert abs(got - expected) < 1e-5 * expected, (got, expected)
        assert not m.get_output_embeddings()._forward_pre_hooks, "the hook is removed after the loss"

    halve_logits_after_the_head(model)
    # the model's own loss (out.loss), what eval_loss gives once the head is refused
    own = mean_loss(lambda batch, k: float(model(**batch, num_items_in_batch=torch.tensor(k)).loss) * k)
    assert abs(eval_loss(model, build, "train", None) - own) < 1e-6 * own
    assert not model.get_output_embeddings()._forward_pre_hooks


def test_fused_head_is_left_out_where_it_cannot_hold():
    from types import SimpleNamespace

    from tunespec.padding_free import fused_head_why_not, head_chunk

    spec = SimpleNamespace(training=SimpleNamespace(packing=False, padding_free="auto"),
                           adapter=SimpleNamespace(method="lora"), launch=SimpleNamespace(topology="single"))
    assert fused_head_why_not(spec, SimpleNamespace()) is None
    assert "final_logit_softcapping" in fused_head_why_not(spec, SimpleNamespace(final_logit_softcapping=30.0))
    assert "logits_scaling" in fused_head_why_not(spec, SimpleNamespace(logits_scaling=8.0))
    assert fused_head_why_not(spec, SimpleNamespace(logit_scale=1.0)) is None, "a scale of 1 changes nothing"
    spec.launch.topology = "fsdp"
    assert "fsdp" in fused_head_why_not(spec, SimpleNamespace())
    # 128 MiB of fp32 logits a chunk
    assert head_chunk(49152) == 2**27 // (4 * 49152) == 682 and head_chunk(128256) == 261
    assert head_chunk(10**7) == 128


# =========================================================================== 3. loss normalisation

SGD_ONE_STEP = {
    "training.max_steps": 1, "training.packing": False, "training.group_by_length": False, "training.bf16": False,
    "training.optimizer": "sgd", "training.learning_rate": 1.0, "training.lr_scheduler": "constant",
    "training.warmup_steps": 0, "training.warmup_ratio": 0.0, "training.max_grad_norm": None,
    "adapter.dropout": 0.0,
}


def test_gradient_accumulation_matches_one_big_batch(build_from):
    """accum 2 x micro 2 == accum 1 x micro 4 on the same rows (SGD, lr 1, no clipping: weights = -gradient)."""
    import torch

    from tunespec.build_reader import Build
    from tunespec.runtime.batching import collate_padded
    from tunespec.runtime.train import Trainer

    big = build_from(**SGD_ONE_STEP, **{"training.micro_batch_size": 4, "training.gradient_accumulation_steps": 1})
    small = build_from(**SGD_ONE_STEP, **{"training.micro_batch_size": 2, "training.gradient_accumulation_steps": 2})
    train_inprocess(big)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    train_inprocess(small)
    a = load_tensors(big / "adapter" / "adapter_model.safetensors")
    b = load_tensors(small / "adapter" / "adapter_model.safetensors")
    moved = max(float(t.abs().max()) for k, t in a.items() if "lora_B" in k)
    assert moved > 1e-3, "the step must move the weights"
    assert max_tensor_diff(a, b) < 1e-5

    # The check has teeth: the two micro-batches carry different numbers of trained tokens, so averaging
    # per micro-batch (the usual accumulation bug) gives a gradient far outside the tolerance.
    AcceleratorState._reset_state(True)
    trainer = Trainer(Build(small), log=lambda s: None)
    trainer.setup()
    rows = trainer._batches(0)[:2]
    micro = [collate_padded(trainer.train_set, r, trainer.pad_id) for r in rows]
    counts = [int((m["labels"][:, 1:] != -100).sum()) for m in micro]
    assert counts[0] != counts[1]
    params = dict(trainer.model.named_parameters())

    def grads(normalise_globally: bool) -> dict:
        trainer.model.zero_grad(set_to_none=True)
        for m in micro:
            if normalise_globally:
                loss = trainer.model(**m, num_items_in_batch=torch.tensor(sum(counts))).loss
            else:
                loss = trainer.model(**m).loss / len(micro)
            loss.backward()
        return {n: p.grad.clone() for n, p in params.items() if p.grad is not None}

    right, wrong = grads(True), grads(False)
    assert max(float((right[n] - wrong[n]).abs().max()) for n in right) > 10 * 1e-5


# =========================================================================== 4. kill, resume, merge (fp32)


@pytest.fixture(scope="module")
def fp32_runs(tmp_path_factory, tiny_model_dir, _session_cache):
    """The default spec with bf16 off, compiled once, and one uninterrupted run of it under accelerate launch."""
    mp = env_context(_session_cache)
    try:
        root = tmp_path_factory.mktemp("fp32")
        spec = helpers.write_spec(root / "spec.yaml", tiny_model_dir, {"training.bf16": False})
        helpers.compile_spec(spec, root / "untrained")
        reference = root / "reference"
        shutil.copytree(root / "untrained", reference)
        run_to_end(launch_cmd(reference), root / "reference-run")
    finally:
        mp.undo()
    return SimpleNamespace(untrained=root / "untrained", reference=reference)


def assert_same_training(build: Path, reference: Path, steps: int) -> None:
    """Same adapter (1e-6), same final loss, the same metrics for every step, each step logged once."""
    got, want = read_metrics(build), read_metrics(reference)
    assert [m["step"] for m in got] == list(range(1, steps + 1)), "each step is in metrics.jsonl exactly once"
    for g, w in zip(got, want):
        for key in ("loss", "lr", "trained_tokens"):
            assert g[key] == pytest.approx(w[key], abs=1e-6), (g["step"], key)
        # the norm is logged to 6 digits and sums many terms: a last-digit flip between a run started directly
        # and one under accelerate launch (thread settings) is not a different training
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5, abs=2e-6), (g["step"], "grad_norm")
    final_got = json.loads((build / "adapter" / "tunespec.json").read_text())["final"]
    final_want = json.loads((reference / "adapter" / "tunespec.json").read_text())["final"]
    assert final_got["step"] == final_want["step"] == steps
    assert final_got["loss"] == pytest.approx(final_want["loss"], abs=1e-6)
    diff = max_tensor_diff(load_tensors(build / "adapter" / "adapter_model.safetensors"),
                           load_tensors(reference / "adapter" / "adapter_model.safetensors"))
    assert diff <= 1e-6, f"resumed adapter differs from the uninterrupted one by {diff}"


def kill_at(build: Path, workdir: Path, step: int) -> Run:
    """Start training under `accelerate launch`, SIGKILL the process group right after it logs `step`."""
    run = Run(launch_cmd(build), workdir, pause_at=f"step {step}/")
    run.wait_paused()
    run.kill(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    run.wait_group_gone()
    return run


def check_merge(build: Path, base_dir: Path, workdir: Path) -> float:
    """`tunespec merge BUILD`; merged/ loads with from_pretrained and gives base+adapter's logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = run_to_end(tunespec_cmd("merge", build), workdir)
    m = re.search(r"vs base\+adapter on (\d+) rows: largest logit difference (\S+), same next token at ([\d.]+)%",
                  run.stderr)
    assert m, run.stderr[-3000:]
    assert int(m.group(1)) > 0 and float(m.group(2)) < 1e-4 and float(m.group(3)) == 100.0
    report = json.loads((build / "merged" / "tunespec.json").read_text())
    assert report["max_logit_diff"] < 1e-4

    from tunespec.build_reader import Build

    ids, _ = Build(build).tokens("test").row(0)
    x = torch.as_tensor(ids.astype(np.int64))[None]
    merged = AutoModelForCausalLM.from_pretrained(build / "merged", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(x).logits
        peft = PeftModel.from_pretrained(base, str(build / "adapter")).eval()
        want = peft(x).logits
        got = merged(x).logits
    assert float((got - want).abs().max()) < 1e-4
    moved = float((want - base_logits).abs().max())
    assert moved > 1e-3, f"the adapter barely changes the logits ({moved}); the merge check would be vacuous"
    return moved


@pytest.mark.slow
def test_sigkill_resume_is_exact_then_merge(fp32_runs, tmp_path, tiny_model_dir):
    build = tmp_path / "build"
    shutil.copytree(fp32_runs.untrained, build)
    kill_at(build, tmp_path / "killed", step=7)
    from tunespec.runtime.checkpoint import latest_checkpoint

    assert latest_checkpoint(build / "train") == build / "train" / "checkpoint-6"
    assert not (build / "adapter").exists()
    assert [m["step"] for m in read_metrics(build)] == list(range(1, 8))

    resumed = run_to_end(launch_cmd(build), tmp_path / "resumed")
    assert "resuming from checkpoint-6" in resumed.stderr
    assert_same_training(build, fp32_runs.reference, 12)
    check_merge(build, tiny_model_dir, tmp_path / "merge")


# =========================================================================== 5. the same with 4-bit


@pytest.mark.slow
def test_4bit_sigkill_resume_is_exact_then_merge(tmp_path, make_spec, tiny_model_dir):
    import torch

    from tunespec.build_reader import Build
    from tunespec.runtime.modeling import load_base_model

    overrides = {"quantization": {"load_in_4bit": True, "compute_dtype": "float32"}, "training.bf16": False,
                 "training.max_steps": 4, "training.save_steps": 2}
    untrained = tmp_path / "untrained"
    helpers.compile_spec(make_spec(tmp_path, **overrides), untrained)

    import bitsandbytes as bnb

    model = load_base_model(Build(untrained).spec)
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert n4 == 2 * 7, "every linear layer of the 2 decoder layers is 4-bit"
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8
    del model

    reference = tmp_path / "reference"
    shutil.copytree(untrained, reference)
    run_to_end(launch_cmd(reference), tmp_path / "reference-run")

    build = tmp_path / "build"
    shutil.copytree(untrained, build)
    kill_at(build, tmp_path / "killed", step=3)
    resumed = run_to_end(launch_cmd(build), tmp_path / "resumed")
    assert "resuming from checkpoint-2" in resumed.stderr
    assert_same_training(build, reference, 4)
    check_merge(build, tiny_model_dir, tmp_path / "merge")
    assert "reloaded unquantized" in (tmp_path / "merge" / "stderr.txt").read_text()



@pytest.mark.parametrize("compute, storage, kept", [
    ("bfloat16", None, "bfloat16"), ("bfloat16", "float16", "bfloat16"), ("float16", None, "float32")])
def test_4bit_base_keeps_bf16_weights_and_upcasts_fp16_ones(tmp_path, make_spec, compute, storage, kept):
    """A 4-bit base's other weights (embeddings, norms) stay bf16 as TRL keeps them; fp16 ones, which
    overflow, are upcast to fp32 (peft's k-bit preparation); an fp16 storage dtype of the packed 4-bit
    weights does not count. The memory estimate assumes the same."""
    import torch

    from tunespec.build_reader import Build
    from tunespec.compiler.memory import precision_of
    from tunespec.runtime.modeling import load_base_model, prepare_for_training

    build = tmp_path / "build"
    helpers.compile_spec(make_spec(tmp_path, quantization={"load_in_4bit": True, "compute_dtype": compute,
                                                        "quant_storage": storage}), build)
    spec = Build(build).spec
    model = prepare_for_training(load_base_model(spec), spec)
    dtype = getattr(torch, kept)
    others = {n: p.dtype for n, p in model.named_parameters()
              if not p.requires_grad and type(p).__name__ != "Params4bit"}
    assert others and set(others.values()) == {dtype}, others
    assert precision_of(spec).other == dtype.itemsize
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

# =========================================================================== 6. SIGTERM


@pytest.mark.slow
def test_sigterm_saves_current_step_exits_143_and_resumes(fp32_runs, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(fp32_runs.untrained, build)
    run = Run([sys.executable, "-m", "tunespec.runtime.train", str(build)], tmp_path / "term", pause_at="step 4/")
    pid = run.wait_paused()
    assert pid == run.proc.pid
    run.proc.send_signal(signal.SIGTERM)  # arrives in the middle of step 4's bookkeeping
    run.release()
    assert run.wait() == 143, run.stderr[-3000:]
    assert f"SIGTERM: saved checkpoint-4; resume with: tunespec train {build}" in run.stderr
    state = json.loads((build / "train" / "checkpoint-4" / "state.json").read_text())
    assert state["step"] == 4
    assert not (build / "adapter").exists()

    resumed = run_to_end(tunespec_cmd("train", build), tmp_path / "resumed")
    assert "resuming from checkpoint-4" in resumed.stderr
    assert_same_training(build, fp32_runs.reference, 12)


@pytest.mark.slow
def test_sigterm_to_the_launch_group(fp32_runs, tmp_path):
    """SIGTERM to the whole group (Slurm, `kill -- -PGID`): accelerate's launcher dies at once, the training
    process still saves its step and prints the resume command."""
    build = tmp_path / "build"
    shutil.copytree(fp32_runs.untrained, build)
    run = Run(launch_cmd(build), tmp_path / "term", pause_at="step 5/")
    trainer_pid = run.wait_paused()
    assert trainer_pid != run.proc.pid  # the training process is the launcher's child
    run.kill(signal.SIGTERM)
    run.release()
    run.wait()
    run.wait_group_gone()
    assert f"SIGTERM: saved checkpoint-5; resume with: tunespec train {build}" in run.stderr
    assert json.loads((build / "train" / "checkpoint-5" / "state.json").read_text())["step"] == 5


# =========================================================================== 7-9. in-process runs of the default spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, _session_cache):
    """The default spec (bf16: auto) keeping every checkpoint, trained in-process for 12 steps."""
    mp = env_context(_session_cache)
    try:
        root = tmp_path_factory.mktemp("trained")
        spec = helpers.write_spec(root / "spec.yaml", tiny_model_dir, {"training.save_total_limit": None})
        helpers.compile_spec(spec, root / "build")
        last, logs = train_inprocess(root / "build")
    finally:
        mp.undo()
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
    assert last["step"] == 12
    # off a terminal every step line but the last says the time left at the pace so far
    lines = [line for line in logs if line.startswith("step ") and "step_time_s" in line]
    assert lines and all(("; about " in line and line.endswith(" left")) == (not line.startswith("step 12/"))
                         for line in lines)
    return root / "build"


def test_changed_spec_refuses_to_resume_and_restart_starts_over(trained, tmp_path, make_spec):
    from click.testing import CliRunner

    from tunespec.cli import main
    from tunespec.errors import BuildError

    build = tmp_path / "build"
    shutil.copytree(trained, build)
    # recompiling a changed spec over a build with runtime outputs is refused (only --force replaces it, train/ too),
    # so the changed build is simulated by editing what the checkpoint recorded
    changed = make_spec(tmp_path, **{"training.learning_rate": 5.0e-4, "training.save_total_limit": None})
    with pytest.raises(BuildError, match="runtime outputs"):
        helpers.compile_spec(changed, build)
    state_file = build / "train" / "checkpoint-12" / "state.json"
    state = json.loads(state_file.read_text())
    state["input_key"] = "0" * 64
    state["spec"]["training"]["learning_rate"] = 5.0e-4
    state_file.write_text(json.dumps(state))

    result = CliRunner().invoke(main, ["train", str(build)])
    assert result.exit_code == 2, result.output
    assert "checkpoint-12 was trained from a different build; changed: training.learning_rate" in result.output
    assert f"tunespec train {build} --restart" in result.output
    assert (build / "train" / "checkpoint-12").is_dir(), "a refused resume deletes nothing"

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    result = CliRunner().invoke(main, ["train", str(build), "--restart"])
    assert result.exit_code == 0, result.output
    assert "resuming" not in result.output
    assert [m["step"] for m in read_metrics(build)] == list(range(1, 13))
    assert json.loads((build / "train" / "checkpoint-12" / "state.json").read_text())["input_key"] != "0" * 64


def test_resume_neutral_change_is_accepted(trained, tmp_path):
    """A checkpoint whose spec differs only in logging/saving settings still resumes."""
    build = tmp_path / "build"
    shutil.copytree(trained, build)
    shutil.rmtree(build / "train" / "checkpoint-12")
    state_file = build / "train" / "checkpoint-9" / "state.json"
    state = json.loads(state_file.read_text())
    state["input_key"] = "1" * 64
    state["spec"]["training"]["logging_steps"] = 5
    state["spec"]["training"]["save_total_limit"] = 7
    state_file.write_text(json.dumps(state))
    last, logs = train_inprocess(build)
    assert "resuming from checkpoint-9" in logs
    assert last["step"] == 12


def test_half_written_checkpoints_are_never_chosen(trained, tmp_path):
    from tunespec.runtime.checkpoint import latest_checkpoint, list_checkpoints

    build = tmp_path / "build"
    shutil.copytree(trained, build)
    train_dir = build / "train"
    shutil.rmtree(build / "adapter")
    shutil.rmtree(train_dir / "checkpoint-12")
    # a killed write: the temporary directory is complete but was never renamed ...
    shutil.copytree(train_dir / "checkpoint-9", train_dir / ".checkpoint-9.tmp-123")
    # ... and a directory with the final name but without state.json
    (train_dir / "checkpoint-9" / "state.json").unlink()
    assert [s for s, _ in list_checkpoints(train_dir)] == [3, 6]
    assert latest_checkpoint(train_dir) == train_dir / "checkpoint-6"

    last, logs = train_inprocess(build)
    assert "resuming from checkpoint-6" in logs
    assert not (train_dir / ".checkpoint-9.tmp-123").exists(), "leftovers are cleaned up"
    assert json.loads((train_dir / "checkpoint-9" / "state.json").read_text())["step"] == 9
    assert [m["step"] for m in read_metrics(build)] == list(range(1, 13))
    # the resumed run (bf16 autocast, in-process) ends where the uninterrupted one did
    diff = max_tensor_diff(load_tensors(build / "adapter" / "adapter_model.safetensors"),
                           load_tensors(trained / "adapter" / "adapter_model.safetensors"))
    assert diff <= 1e-6


def test_resume_at_the_last_step_keeps_the_final_metrics(trained, tmp_path):
    """Killed after the last checkpoint but before the adapter was written: the rerun only finishes."""
    build = tmp_path / "build"
    shutil.copytree(trained, build)
    shutil.rmtree(build / "adapter")
    last, logs = train_inprocess(build)
    assert "resuming from checkpoint-12" in logs
    final = json.loads((build / "adapter" / "tunespec.json").read_text())["final"]
    want = json.loads((trained / "adapter" / "tunespec.json").read_text())["final"]
    assert final == want and final["loss"] > 0


def test_empty_train_split_is_a_clean_error(tiny_build, build_from):
    """A spec whose rows are all dropped (too long) is refused by the compiler; a build whose token files were
    emptied afterwards is refused on read (its hashes no longer match), not a ZeroDivisionError."""
    from tunespec.errors import DataError, TunespecError

    with pytest.raises(DataError, match="no training rows are left"):
        build_from(**{"data.tokenization.max_length": 16})
    tokens = tiny_build / "tokens"
    np.save(tokens / "train.ids.npy", np.zeros(0, dtype=np.int32))
    np.save(tokens / "train.trained.npy", np.zeros(0, dtype=np.uint8))
    np.save(tokens / "train.offsets.npy", np.zeros(1, dtype=np.int64))
    with pytest.raises(TunespecError, match="train.ids.npy: changed since it was compiled"):
        train_inprocess(tiny_build)


# =========================================================================== 9. evaluate


def test_evaluate_writes_rouge_and_predictions(trained, tmp_path):
    from tunespec.build_reader import Build
    from tunespec.runtime.evaluate import evaluate

    build = tmp_path / "build"
    shutil.copytree(trained, build)
    summary = evaluate(Build(build), log=lambda s: None)
    rouge = json.loads((build / "eval" / "rouge.json").read_text())
    assert {"base", "tuned", "delta", "settings"} <= set(rouge)
    assert set(rouge["delta"]) >= {"rouge1", "rouge2", "rougeL"}
    for label in ("base", "tuned"):
        assert {"rouge1", "rouge2", "rougeL", "rougeLsum"} <= set(rouge[label]) and "f1" in rouge[label]["rouge1"] and rouge[label]["eval_loss"] > 0
    assert summary["settings"]["rows"] == 8
    lines = (build / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(Build(build).rows("test")) == 8
    for line in lines:
        row = json.loads(line)
        assert isinstance(row["prediction_base"], str) and isinstance(row["prediction_tuned"], str)
        assert "### End" not in row["prediction_tuned"] and row["references"]
    assert (build / "eval" / "report.md").is_file()


def test_evaluate_scores_the_merged_model_where_one_is_current(trained, tmp_path):
    """The tuned model evaluated by default is what a user ships: merged/ when it is current (with how far it
    agrees with base+adapter, measured at the merge), base+adapter before a merge or after training again."""
    import os

    from tunespec.build_reader import Build
    from tunespec.runtime.evaluate import evaluate
    from tunespec.runtime.merge import merge

    build = tmp_path / "build"
    shutil.copytree(trained, build)
    assert evaluate(Build(build), log=lambda s: None)["tuned"]["model"] == "adapter"
    merge(Build(build), log=lambda s: None)
    stamp = json.loads((build / "merged" / "tunespec.json").read_text())
    assert stamp["positions_checked"] > 0 and stamp["top1_agreement"] >= 0.99  # fp32 on the CPU
    tuned = evaluate(Build(build), log=lambda s: None)["tuned"]
    assert tuned["model"] == "merged"
    assert tuned["merged_vs_adapter"]["top1_agreement"] == stamp["top1_agreement"]
    assert "merged model (what you would ship)" in (build / "eval" / "report.md").read_text()
    later = (build / "merged" / "tunespec.json").stat().st_mtime + 10
    os.utime(build / "adapter" / "tunespec.json", (later, later))  # trained again after the merge
    said = []
    assert evaluate(Build(build), log=said.append)["tuned"]["model"] == "adapter"
    assert any("merged/ is older than adapter/" in line for line in said)


def test_generation_reports_the_time_left_and_counts_every_token_step(trained, monkeypatch):
    """evaluate's generation moves its progress once per new token and makes up the steps a batch that stopped
    early (at EOS) did not take, so the bar ends full; off a terminal it writes a line with the time left."""
    from tunespec.build_reader import Build
    from tunespec.progress import Progress
    from tunespec.runtime import evaluate as ev_mod

    build = Build(trained)
    seen: list[Progress] = []
    real_init = Progress.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(Progress, "__init__", spy)
    tokenizer = build.load_tokenizer()
    tokenizer.padding_side = "left"
    model, _ = ev_mod.load_variant(build, "base")
    rows = build.rows("test")
    said: list[str] = []
    ev_mod.generate(model, tokenizer, build, [r["prompt"] for r in rows], log=said.append, every=0.0)
    (p,) = seen
    batch, new = build.spec.evaluation.batch_size, build.spec.evaluation.max_new_tokens
    assert p.total == -(-len(rows) // batch) * new and p.done == p.total and p.upper
    lines = [line for line in said if line.startswith("  generating: ")]
    assert lines and all("token steps" in line and "at most" in line for line in lines)
    assert len(lines) > -(-len(rows) // batch)  # moved token by token, not only once a batch


def test_cut_strips_at_the_stop_marker():
    from tunespec.runtime.evaluate import cut_at_stop

    assert cut_at_stop(" A summary.\n### End\n### Instruct: more", "### End") == "A summary."
    assert cut_at_stop("no marker here ", "### End") == "no marker here"
    assert cut_at_stop("### End", "### End") == ""
    assert cut_at_stop(" text ### End", None) == "text ### End"


def test_generate_stops_at_eos_and_stop_marker(tiny_build):
    """generate() cuts the text at the template's stop marker and the tokens at EOS (a scripted model)."""
    import torch

    from tunespec.build_reader import Build
    from tunespec.runtime.evaluate import generate

    build = Build(tiny_build)
    tok = build.load_tokenizer()
    eos = build.manifest["eos_token_id"]
    assert build.stop == "### End"
    tails = [
        tok("The jacket is returned.\n### End\n### Instruct: again", add_special_tokens=False)["input_ids"] + [eos],
        tok("A meeting moves", add_special_tokens=False)["input_ids"] + [eos] + tok(" junk", add_special_tokens=False)["input_ids"],
    ]

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = {}

        def generate(self, input_ids, attention_mask, **kw):
            self.seen.update(kw)
            width = max(len(t) for t in tails)
            out = torch.full((input_ids.shape[0], width), eos, dtype=torch.long)
            for r in range(input_ids.shape[0]):
                out[r, : len(tails[r])] = torch.tensor(tails[r])
            return torch.cat([input_ids, out], dim=1)

    model = Scripted()
    got = generate(model, tok, build, ["### Instruct: x\n\n### Output:\n", "### Instruct: y y y\n\n### Output:\n"],
                   log=lambda s: None)
    assert got.predictions == ["The jacket is returned.", "A meeting moves"]
    assert model.seen["stop_strings"] == ["### End"] and eos in model.seen["eos_token_id"]


# =========================================================================== 10. full fine-tune


def test_full_finetune_writes_a_loadable_model(build_from, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from tunespec.build_reader import Build
    from tunespec.errors import BuildError
    from tunespec.runtime.merge import merge

    build = build_from(**{"adapter": {"method": "none"}, "training.max_steps": 3, "training.save_steps": 3})
    last, logs = train_inprocess(build)
    assert last["step"] == 3
    merged = build / "merged"
    assert (merged / "config.json").is_file() and (merged / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    weights = load_tensors(build / "train" / "checkpoint-3" / "trainable.safetensors")
    state = model.state_dict()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "embeddings stay tied"
    changed = 0
    for name, want in weights.items():
        assert torch.equal(state[name], want.float()), name
        changed += not torch.equal(want.float(), base.state_dict()[name])
    assert changed == len(weights), "every weight was trained"
    with pytest.raises(BuildError, match="full fine-tune has no adapter"):
        merge(Build(build), log=lambda s: None)
