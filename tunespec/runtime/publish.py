"""`tunespec publish BUILD`: the folder a Hugging Face model repository gets, and its upload.

``write_folder`` assembles exactly the files that are uploaded:

* ``what: adapter`` (peft adapters): ``adapter_model.safetensors``, ``adapter_config.json`` (its
  ``base_model_name_or_path`` set to the base's hub id where the build names one, instead of a local path)
  and the tokenizer files saved beside the adapter;
* ``what: merged``: every file of ``BUILD/merged`` (what ``tunespec merge`` wrote, or a full fine-tune's
  model): config, weights, generation config, tokenizer;
* and in both, ``README.md``: a model card with YAML front matter (library_name, base_model, pipeline_tag,
  tags, and license and datasets where known), the training summary (from ``train/metrics.jsonl``), the
  ROUGE table of ``eval/rouge.json`` when evaluation ran, how to load the model, and the build's lock file
  verbatim. Internal stamps (``tunespec.json``) and peft's generated card are left out.

Only the build directory is read: the lock file holds the resolved spec. The one function that talks to the
hub is ``upload_folder`` (``create_repo`` + ``upload_folder`` of huggingface_hub); the folder it uploads
replaces what the repository held on that branch (``.gitattributes`` excepted).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..atomic import MARKER as ATOMIC_MARKER
from ..atomic import install, is_tunespec_made, mark, marker_files, refuse_overlap, temp_dir, write_text
from ..build_layout import LOCK, STAMP
from ..build_reader import Build
from ..errors import BuildError, Problem
from ..packaged_models import PACKAGED_HUB_IDS
from ..spec.adapter import FullSpec, IA3Spec, LoraSpec, PrefixTuningSpec, PromptTuningSpec, is_peft
from ..spec.output import HUB_REPO_ID
from ..spec.render import to_yaml
from ..spec.rules import HUB_BUILDERS
from .train_metrics import METRICS, read_metrics

LEFT_OUT = {STAMP, "README.md", ".tunespec"}  # tunespec's stamps and marker; peft's generated card (ours replaces it)
MARKER = "<!-- written by tunespec publish -->"
ROUGE_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass
class Published:
    folder: Path
    what: str
    files: list[str]
    repo_id: str | None
    url: str | None = None


# --------------------------------------------------------------------------- what is published


def resolve_what(build: Build, what: str | None, *, origin: str = "output.push_to_hub.what") -> str:
    """``adapter`` or ``merged``: ``auto`` (or None) is the adapter, or a full fine-tune's model."""
    adapter = build.spec.adapter
    if what in (None, "auto"):
        return "adapter" if is_peft(adapter) else "merged"
    if what == "adapter" and isinstance(adapter, FullSpec):
        raise BuildError(Problem("a full fine-tune has no adapter to publish", path=origin,
                                 file=str(build.path), hint="publish the model: merged (or auto)"))
    if what == "merged" and isinstance(adapter, (PrefixTuningSpec, PromptTuningSpec)):
        raise BuildError(Problem(f"{adapter.method.replace('_', ' ')} cannot be merged into the base (it adds "
                                 "virtual tokens)", path=origin, file=str(build.path),
                                 hint="publish the adapter: adapter (or auto)"))
    return what


def source_dir(build: Build, what: str) -> Path:
    """The directory whose files are published, checked whole (``Build.output``: every file its install wrote,
    with the sha256) and made from this build."""
    train = f"tunespec train {build.path}"
    if what == "adapter":
        d = build.adapter_dir
        if not (d / "adapter_config.json").is_file():
            raise BuildError(Problem("the build has no trained adapter yet (no training output)", file=str(d),
                                     hint=f"train first: {train}"))
        build.output("adapter")
        return d
    d = build.merged_dir
    if not is_peft(build.spec.adapter):  # a full fine-tune: training writes merged/
        if not (d / "config.json").is_file():
            raise BuildError(Problem("the build has no trained model yet (no training output)", file=str(d),
                                     hint=f"train first: {train}"))
        build.output("merged")
        return d
    source_dir(build, "adapter")  # the adapter must exist before a merge of it can
    if not (d / "config.json").is_file():
        raise BuildError(Problem("the merged model was asked for, but the build has none", file=str(d),
                                 hint=f"merge first: tunespec merge {build.path}, or publish the adapter"))
    build.output("merged")
    if (d / STAMP).stat().st_mtime < (build.adapter_dir / STAMP).stat().st_mtime:
        raise BuildError(Problem("the merged model is older than the adapter (trained again since the merge)",
                                 file=str(d), hint=f"merge again: tunespec merge {build.path}"))
    return d


def base_model_id(build: Build) -> str | None:
    """The base model's hub id, where the build names one (a local directory has none)."""
    m = build.spec.model
    if m.hub:
        return m.hub
    if m.packaged:
        return PACKAGED_HUB_IDS.get(m.packaged)
    return None


def fresh_rouge(build: Build) -> dict | None:
    """``eval/rouge.json`` when evaluation ran on this build after its training finished (else None)."""
    path = build.eval_dir / "rouge.json"
    trained = (build.adapter_dir if is_peft(build.spec.adapter) else build.merged_dir) / STAMP
    if not build.eval_dir.is_dir():
        return None
    try:
        data = build.output("eval")  # checked whole: rouge.json and report.md of one evaluation
    except BuildError as e:
        if "another compile" in e.problems[0].message:
            return None  # it scored an earlier compile
        raise
    try:
        if path.stat().st_mtime < trained.stat().st_mtime:
            return None  # it scored an earlier training
    except OSError:
        return None
    return data


def training_records(build: Build) -> list[dict]:
    """The whole records of train/metrics.jsonl ([] when it cannot be read)."""
    try:
        return read_metrics(build.train_dir / METRICS).records
    except OSError:
        return []


# --------------------------------------------------------------------------- the model card


def _front_matter(build: Build, what: str) -> dict:
    spec = build.spec
    push = spec.output.push_to_hub
    meta: dict = {"library_name": "peft" if what == "adapter" else "transformers"}
    base = base_model_id(build)
    if base:
        meta["base_model"] = base
    if push is not None and push.license:
        meta["license"] = push.license
    datasets = sorted({s.hub for s in spec.data.sources if s.hub and s.hub not in HUB_BUILDERS})
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-generation"
    tags = ["tunespec", _method_tag(spec.adapter)]
    if isinstance(spec.adapter, LoraSpec) and spec.adapter.use_dora:
        tags.append("dora")
    if spec.quantization.enabled and isinstance(spec.adapter, LoraSpec):
        tags.append("qlora")
    if what == "adapter":
        tags.append("peft")
    meta["tags"] = tags
    return meta


def _method_tag(adapter) -> str:
    return {"lora": "lora", "prefix_tuning": "prefix-tuning", "prompt_tuning": "prompt-tuning", "ia3": "ia3",
            "none": "full-fine-tune"}[adapter.method]


def _method_text(build: Build) -> str:
    a, q = build.spec.adapter, build.spec.quantization
    if isinstance(a, LoraSpec):
        targets = a.target_modules if isinstance(a.target_modules, str) else ", ".join(a.target_modules)
        text = f"LoRA, r {a.r}, alpha {a.alpha:g}, dropout {a.dropout:g}, targets {targets}"
        text += "".join(f", {flag}" for flag, on in (("DoRA", a.use_dora), ("rsLoRA", a.use_rslora)) if on)
    elif isinstance(a, PrefixTuningSpec):
        text = f"prefix tuning, {a.num_virtual_tokens} virtual tokens"
    elif isinstance(a, PromptTuningSpec):
        text = f"prompt tuning, {a.num_virtual_tokens} virtual tokens"
    elif isinstance(a, IA3Spec):
        text = "IA³"
    else:
        text = "full fine-tune (every weight)"
    if q.load_in_4bit:
        text += f", on a 4-bit ({q.quant_type}) base"
    elif q.load_in_8bit:
        text += ", on an 8-bit base"
    return text


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run in ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _batch_text(b: dict | None, t, ln) -> str:
    world = ln.num_processes * ln.num_machines
    if not b:  # a build from before micro-batches were recorded
        return f"{t.micro_batch_size} rows x {t.gradient_accumulation_steps} accumulation x {world} process(es) per step"
    unit = (f"up to {b['bin_tokens']:,} tokens" if b["mode"] == "tokens" else
            f"{b['per_micro_batch']} bins of {b['bin_tokens']:,} tokens" if b["mode"] == "bins" else f"{b['per_micro_batch']} rows")
    return (f"micro-batches of {unit} x {t.gradient_accumulation_steps} accumulation x {world} process(es) per step "
            f"({b['step_rows']:g} rows, {b['step_tokens']:,} tokens a step on average)")


def _training_lines(build: Build) -> list[str]:
    spec = build.spec
    t, ln = spec.training, spec.launch
    metrics = training_records(build)
    losses = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    train = build.splits["train"]
    rows = [
        ("method", _method_text(build)),
        ("data", f"{train['rows']:,} train rows, {train['tokens']:,} tokens ({train['trained_fraction']:.0%} trained); "
                 f"format `{spec.data.format}`, template `{build.template['name']}`"),
        ("batch", _batch_text(build.batching, t, ln)),
        ("optimizer", f"{t.optimizer}, learning rate {t.learning_rate:g} ({t.lr_scheduler}), weight decay "
                      f"{t.weight_decay:g}"),
    ]
    if losses:
        first, last = losses[0], losses[-1]
        rows.append(("steps", f"{last['step']}"))
        rows.append(("training loss", f"{first['loss']:.4f} at step {first['step']}, {last['loss']:.4f} at step "
                                      f"{last['step']} (final)"))
    if evals:
        rows.append(("validation loss", f"{evals[-1]['eval_loss']:.4f} at step {evals[-1]['step']}"))
    lines = ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows]
    if not losses:
        lines += ["", "No training metrics were found in the build (train/metrics.jsonl)."]
    return lines


def _rouge_lines(rouge: dict) -> list[str]:
    labels = [label for label in ("base", "tuned") if isinstance(rouge.get(label), dict)
              and all(m in rouge[label] for m in ROUGE_METRICS)]
    if not labels:
        return []
    s = rouge.get("settings", {})
    delta = rouge.get("delta") if len(labels) == 2 else None
    head = "| metric | " + " | ".join(f"{label} F1" for label in labels) + (" | Δ tuned − base |" if delta else " |")
    lines = [f"On the `{s.get('split')}` split, {s.get('rows')} rows: ROUGE F1 x 100 (rouge_score with the Porter "
             f"stemmer; the mean over samples; several references combined by {s.get('multi_ref')}).", "",
             head, "|---|" + "---:|" * (len(labels) + (1 if delta else 0))]
    for m in ROUGE_METRICS:
        cells = [f"{rouge[label][m]['f1'] * 100:.4f}" for label in labels]
        if delta:
            cells.append(f"{delta[m] * 100:+.4f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    losses = [f"{label}: eval loss {rouge[label]['eval_loss']:.4f}, perplexity {rouge[label]['perplexity']:.2f}"
              for label in labels if rouge[label].get("eval_loss") is not None]
    if losses:
        lines += [""] + [f"- {x}" for x in losses]
    return lines


def _usage_lines(build: Build, what: str, repo_id: str | None) -> list[str]:
    repo = repo_id or "PATH/TO/THIS/FOLDER"
    base = base_model_id(build) or build.model_ref.label
    lines = []
    if what == "adapter":
        code = ["import torch", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'base = AutoModelForCausalLM.from_pretrained("{base}", dtype=torch.bfloat16)',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
        if build.vocabulary:
            code.append("base.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)"
                        "  # tokens were added")
        code.append(f'model = PeftModel.from_pretrained(base, "{repo}")')
        if isinstance(build.spec.adapter, (LoraSpec, IA3Spec)):
            code.append("model = model.merge_and_unload()  # optional: fold the adapter into the weights")
    else:
        code = ["import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'model = AutoModelForCausalLM.from_pretrained("{repo}", dtype=torch.bfloat16)',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
    lines += ["```python", *code, "```", ""]
    m = build.spec.model
    if what == "adapter" and m.packaged:
        lines += [f"The adapter was trained on {m.packaged}, the weights de-quantized from the GGUF file of the "
                  f"tunespec-packaged model; `{base}` is the model that file was converted from.", ""]
    elif what == "adapter" and not base_model_id(build):
        lines += [f"The base is a local model (`{base}`); load the same weights.", ""]
    if what == "adapter" and build.vocabulary:
        lines += ["Tokens were added to the vocabulary: the embeddings grow to the tokenizer's length (rounded up to "
                  "a multiple of 64) before the adapter is loaded; tunespec starts new rows at the mean of the "
                  "original rows, and the added tokens' trained rows are in the adapter.", ""]
    template = build.template
    stop = f"; generation stops at `{template['stop']}`" if template.get("stop") else ""
    lines.append(f"Prompts are written with the training template `{template['name']}`{stop} "
                 "(`tunespec generate BUILD` renders new inputs with it).")
    return lines


def model_card(build: Build, what: str, *, repo_id: str | None = None, rouge: dict | None = None) -> str:
    """README.md of the published folder: front matter, training summary, ROUGE, usage and the lock file."""
    spec = build.spec
    lock = (build.path / LOCK).read_text(encoding="utf-8")
    base = base_model_id(build) or build.model_ref.label
    out = ["---", to_yaml(_front_matter(build, what)).rstrip("\n"), "---", MARKER, "", f"# {spec.name}", ""]
    if spec.description:
        out += [spec.description.strip(), ""]
    if what == "adapter":
        intro = f"An adapter for `{base}` ({_method_text(build)})"
    else:
        merged = ", the adapter merged into the weights" if is_peft(spec.adapter) else ""
        intro = f"`{base}` fine-tuned ({_method_text(build)}{merged})"
    out += [f"{intro}, trained with tunespec from a declarative spec: the lock file at the end holds the resolved "
            "spec and the sha256 of every input.", "",
            "## Training", "", *_training_lines(build), ""]
    out += ["## Evaluation", ""]
    table = _rouge_lines(rouge) if rouge else []
    out += (table or ["No evaluation was run on this build (`tunespec evaluate BUILD` scores ROUGE, base vs tuned)."])
    out += ["", "## Usage", "", *_usage_lines(build, what, repo_id), ""]
    fence = _fence(lock)
    lock_text = lock if lock.endswith("\n") else lock + "\n"
    out += ["## Reproduce", "",
            "The build's lock file (`lock.yaml`): `tunespec rerun lock.yaml -o BUILD` compiles the same build again "
            "and checks every input's hash.", "", f"{fence}yaml"]
    return "\n".join(out) + "\n" + lock_text + fence + "\n"


# --------------------------------------------------------------------------- the folder


def _place(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (weights can be large), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _adapter_config(build: Build, src: Path) -> bytes | None:
    """adapter_config.json with the base's hub id in place of a local path (None: keep the file as it is)."""
    base = base_model_id(build)
    config = json.loads(src.read_text(encoding="utf-8"))
    if not base or config.get("base_model_name_or_path") == base:
        return None
    config["base_model_name_or_path"] = base
    if build.spec.model.hub and build.spec.model.revision:
        config["revision"] = build.spec.model.revision
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _check_target(folder: Path) -> bool:
    """True when ``folder`` holds an earlier publish (its files are updated in place, the rest kept);
    False for a new or empty folder; a folder with other content is refused."""
    if folder.exists() and not folder.is_dir():
        raise BuildError(Problem(f"{folder} exists and is not a directory", hint="choose another --to-folder"))
    if folder.is_dir() and any(folder.iterdir()):
        readme = folder / "README.md"
        ours = is_tunespec_made(folder) or (readme.is_file()
                                            and MARKER in readme.read_text(encoding="utf-8", errors="replace"))
        if not ours:
            raise BuildError(Problem(f"{folder} is not empty and is not a folder tunespec publish wrote",
                                     hint="choose a new or empty directory with --to-folder"))
        return True
    return False


def _keep_user_files(folder: Path, tmp: Path, ours: set[str]) -> None:
    """Give ``tmp`` everything of ``folder`` that is not tunespec's (``ours``: the files an earlier publish
    wrote, per its marker, and those this one writes): hard links where the file system allows (so the same
    files, at no cost), copies elsewhere; directories and symlinks recreated. ``folder`` itself is untouched
    until ``install`` swaps the two in one step."""
    def walk(src: Path, dst: Path, rel: str) -> None:
        for entry in sorted(src.iterdir()):
            r = f"{rel}{entry.name}"
            if r in ours or r == ATOMIC_MARKER:
                continue
            target = dst / entry.name
            if entry.is_symlink():
                os.symlink(os.readlink(entry), target)
            elif entry.is_dir():
                target.mkdir(exist_ok=True)
                walk(entry, target, r + "/")
                shutil.copystat(entry, target)
            elif entry.is_file():
                _place(entry, target)
            else:
                raise BuildError(Problem(f"{entry} is not a file, directory or symlink: publish cannot keep it",
                                         hint="move it out of the folder, or choose another --to-folder"))

    walk(folder, tmp, "")
    shutil.copystat(folder, tmp)


def write_folder(build: Build, folder: Path, what: str, *, repo_id: str | None = None) -> list[str]:
    """Write the publishable folder and return the files tunespec wrote there, sorted.

    The folder is built whole in a temporary sibling and put in place in one step (``atomic.install``), so
    at every instant it is the earlier publish or the new one. Over a folder an earlier publish wrote,
    everything that is not tunespec's (``.git/``, a user's notes) is carried into the new folder first (hard
    links, else copies); files the earlier marker (``.tunespec``) lists that this publish no longer writes are
    left out; the new marker lists this publish's files with their sha256."""
    source = source_dir(build, what)
    folder = Path(folder)
    refuse_overlap(folder, [p for p in build.path.iterdir() if p.name != "publish"], is_dir=True)
    update = _check_target(folder)
    rouge = fresh_rouge(build)
    card = model_card(build, what, repo_id=repo_id, rouge=rouge)
    try:
        tmp = temp_dir(folder, marker=False)
    except OSError as e:
        raise BuildError(Problem(f"cannot write {folder}: {e.strerror or e}", hint="choose a writable --to-folder")) from None
    try:
        for src in sorted(p for p in source.rglob("*") if p.is_file()):
            rel = src.relative_to(source)
            if len(rel.parts) == 1 and rel.name in LEFT_OUT:
                continue
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            rewritten = _adapter_config(build, src) if what == "adapter" and str(rel) == "adapter_config.json" else None
            if rewritten is not None:
                dst.write_bytes(rewritten)
            else:
                _place(src, dst)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        if update:
            _keep_user_files(folder, tmp, set(marker_files(folder) or []) | set(files))
        mark(tmp, files)
        install(tmp, folder, files=files)  # sealed: this publish's files with their sha256
        return files
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(Problem(f"cannot write {folder}: {e.strerror or e}", hint="free some space, or choose "
                                 "another --to-folder")) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- the hub


def hub_token() -> str:
    """The Hugging Face token uploads use; a clean error when offline or when there is none."""
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        raise BuildError(Problem("the Hugging Face hub is offline here (HF_HUB_OFFLINE is set)",
                                 hint="unset HF_HUB_OFFLINE to upload, or write the folder only with --to-folder DIR"))
    token = huggingface_hub.get_token()
    if not token:
        raise BuildError(Problem("no Hugging Face token: uploading needs one with write access",
                                 hint="set HF_TOKEN or run `hf auth login`; or write the folder only with --to-folder DIR"))
    return token


def upload_folder(folder: Path, repo_id: str, *, private: bool, token: str, revision: str | None = None,
                  commit_message: str = "Upload with tunespec publish") -> str:
    """Create the repository (if missing) and upload ``folder`` as its new content; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                             commit_message=commit_message, delete_patterns="*",
                             ignore_patterns=[ATOMIC_MARKER])
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")


def publish(build: Build, *, to_folder: Path | None = None, dry_run: bool = False, repo_id: str | None = None,
            what: str | None = None, log=print) -> Published:
    """Write the folder (``--to-folder DIR``, else ``BUILD/publish``) and, unless told not to, upload it."""
    push = build.spec.output.push_to_hub
    if repo_id is not None and not re.match(HUB_REPO_ID, repo_id):
        raise BuildError(Problem(f"{repo_id!r} is not a hub repository id", path="--repo-id",
                                 hint="write it as OWNER/NAME, e.g. my-org/my-model"))
    repo_id = repo_id or (push.repo_id if push else None)
    what = resolve_what(build, what, origin="--what") if what else resolve_what(build, push.what if push else None)
    upload = to_folder is None and not dry_run
    source_dir(build, what)  # no training (or merge) output: say so before anything else
    token = None
    if upload:
        if repo_id is None:
            raise BuildError(Problem("nowhere to publish: the spec has no output.push_to_hub", file=str(build.path),
                                     hint="pass --repo-id OWNER/NAME (or set output.push_to_hub.repo_id), or write "
                                          "the folder only with --to-folder DIR"))
        token = hub_token()
    folder = Path(to_folder) if to_folder is not None else build.path / "publish"
    files = write_folder(build, folder, what, repo_id=repo_id)
    result = Published(folder=folder, what=what, files=files, repo_id=repo_id)
    log(f"wrote {folder}: {what}, {len(files)} files ({', '.join(files)})")
    if not upload:
        if dry_run and repo_id:
            private = push.private if push else True
            branch = push.revision if push and push.revision else "main"
            log(f"dry run: would upload it to {repo_id} ({'private' if private else 'public'}, branch {branch})")
        return result
    private = push.private if push else True
    revision = push.revision if push else None
    log(f"uploading to {repo_id} ({'private' if private else 'public'}{', branch ' + revision if revision else ''})")
    try:
        result.url = upload_folder(folder, repo_id, private=private, token=token, revision=revision,
                                   commit_message=f"tunespec publish: {build.spec.name} ({what})")
    except Exception as e:  # network, authentication, permissions: all user-facing
        text = str(e).split("\n")[0].replace(token, "***") if token else str(e).split("\n")[0]
        raise BuildError(Problem(f"uploading to {repo_id} failed: {type(e).__name__}: {text}", file=str(folder),
                                 hint="check the network and that the token may write to the repository's owner; "
                                      f"then run tunespec publish {build.path} again")) from None
    write_text(build.path / "publish.json", json.dumps(
        {"input_key": build.input_key, "repo_id": repo_id, "revision": revision, "what": what, "url": result.url,
         "files": files}, indent=2) + "\n")
    log(f"published {result.url}")
    return result
