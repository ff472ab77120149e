"""The `tunespec` command line.

Every user mistake surfaces as a ``TunespecError``: printed as ``FILE:LINE:COL: path: message — hint``
on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import TunespecError

SET_HELP = "Override a spec value: dotted.path=value (YAML syntax). Repeatable."


def user_errors(fn):
    """Turn TunespecError into a clean message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunespecError as e:
            click.echo(click.style("error: ", fg="red", bold=True) + e.render().replace("\n", "\nerror: "), err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (SystemExit, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence: one line, the traceback in a file
            report = _write_crash(e)
            where = f"the traceback is in {report}" if report else "the traceback could not be written"
            click.echo(click.style("internal error: ", fg="red", bold=True)
                       + f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} — this is a bug in tunespec; "
                       + where, err=True)
            sys.exit(1)

    return wrapper


def _write_crash(e: BaseException) -> str | None:
    """Write the traceback of an internal error to $TUNESPEC_CACHE/crashes/<UTC time>-<pid>.txt; its path."""
    import os
    import time
    import traceback

    from .cache import cache_root

    try:
        folder = cache_root() / "crashes"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.txt"
        text = f"tunespec {__version__}\ncommand: {_command_line()}\n\n" + "".join(traceback.format_exception(e))
        from .atomic import write_bytes

        write_bytes(path, text.encode("utf-8", "backslashreplace"))
        return str(path)
    except Exception:  # noqa: BLE001 - nowhere to write it: say so on the one line
        return None


def set_option(fn):
    return click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=SET_HELP)(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tunespec")
def main() -> None:
    """Compile a fine-tuning spec into a reproducible build, then train, merge and evaluate from it."""
    # a path from the command line may hold bytes that are not UTF-8 (decoded as surrogates): printed back as
    # the same bytes, not an encoding error after the work is done
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", None) == "strict":
            stream.reconfigure(errors="surrogateescape")


# --------------------------------------------------------------------------- spec commands


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(path_type=Path))
@set_option
@click.option("--deep", is_flag=True, help="Also load the tokenizer and model config to check targets, lengths, tokens.")
@user_errors
def validate(specs: tuple[Path, ...], overrides: tuple[str, ...], deep: bool) -> None:
    """Check spec files. Exit 0 when all are valid, 2 otherwise (every problem is listed)."""
    from .errors import SpecError
    from .spec.loader import load_spec

    failed: list[TunespecError] = []
    for path in specs:
        try:
            loaded = load_spec(path, overrides)
            for w in loaded.warnings:
                click.echo("warning: " + w.render(), err=True)
            if deep:
                from .compiler.deepcheck import deep_check

                deep_check(loaded)
            click.echo(f"{path}: ok")
        except TunespecError as e:
            failed.append(e)
    if failed:
        raise SpecError([p for e in failed for p in e.problems])


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@user_errors
def show(spec: Path, overrides: tuple[str, ...], as_json: bool) -> None:
    """Print the fully resolved spec: defaults filled, `extends` and `--set` applied."""
    from .spec.loader import load_spec
    from .spec.render import resolved_dict, to_yaml

    loaded = load_spec(spec, overrides)
    data = resolved_dict(loaded)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    header = [f"# resolved from {loaded.file}"]
    header += [f"# extends {p}" for p in loaded.extends]
    header += [f"# --set {o}" for o in loaded.overrides]
    click.echo("\n".join(header) + "\n" + to_yaml(data), nl=False)


@main.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write to this file instead of stdout.")
@user_errors
def schema(output: Path | None) -> None:
    """Print the JSON Schema of spec files (for editors: `# yaml-language-server: $schema=FILE`)."""
    from .spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output:
        try:
            from .atomic import write_text

            write_text(output, text)
        except OSError as e:
            from .errors import Problem

            raise TunespecError(Problem(f"cannot write: {e.strerror}", file=str(output),
                                        hint="check that the directory exists and is writable")) from None
    else:
        click.echo(text, nl=False)


# --------------------------------------------------------------------------- compiler commands


def _command_line() -> str:
    return "tunespec " + " ".join(sys.argv[1:])


@main.command(name="compile")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Build directory (default: output.dir or runs/NAME beside the spec).")
@set_option
@click.option("--strict", is_flag=True, help="Make any dropped row an error.")
@click.option("--force", is_flag=True, help="Replace an existing build of a different spec, with its runtime outputs.")
@user_errors
def compile_cmd(spec: Path, output: Path | None, overrides: tuple[str, ...], strict: bool, force: bool) -> None:
    """Compile SPEC into a build directory (data, tokens, launch configs, lock file)."""
    from .compiler.build_writer import compile_build
    from .spec.loader import load_spec

    if strict:
        overrides = overrides + ("data.strict=true",)
    loaded = load_spec(spec, overrides)
    import gc

    # the compile makes millions of short-lived objects, all freed by reference counting: the cyclic
    # collector would only scan them again and again (about a tenth of the compile's time)
    collecting = gc.isenabled()
    gc.disable()
    try:
        result = compile_build(loaded, output or loaded.build_dir, force=force, command=_command_line())
    finally:
        if collecting:
            gc.enable()
    for line in result.messages:
        click.echo(line, err=True)
    click.echo(str(result.path))


@main.command()
@click.argument("lock", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="New build directory.")
@click.option("--root", type=click.Path(path_type=Path),
              help="Where the inputs are now: the directory the lock's relative paths start from (where the spec "
                   "file was). Default: found from the lock's place, then where it was compiled.")
@click.option("--train", "retrain", is_flag=True,
              help="Also train the new build and compare its loss curve and final adapter with the old build's.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --train: relative tolerance of losses and weights (0: exact, as on the CPU; GPUs need ~1e-3).")
@user_errors
def rerun(lock: Path, output: Path, root: Path | None, retrain: bool, tolerance: float) -> None:
    """Rebuild from a lock file and verify every hash; report exactly which input changed.

    Exit 0: reproduced (every file identical); 1: not reproduced (the differences are listed);
    2: bad input (no lock, an input not found, a build of another format)."""
    from .rerun_training import rerun_lock

    ok = rerun_lock(lock, output, log=lambda s: click.echo(s, err=True), root=root, train=retrain, tolerance=tolerance)
    click.echo(str(output))
    if not ok:
        sys.exit(1)


@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--split", default="train", show_default=True)
@click.option("--index", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print input_ids, labels, tokens, prompt and completion as JSON.")
@set_option
@user_errors
def preview(target: Path, split: str, index: int, as_json: bool, overrides: tuple[str, ...]) -> None:
    """Show one rendered row of a build (or of a spec, compiled first) with its trained tokens highlighted."""
    from .compiler.preview import preview_row

    click.echo(preview_row(target, split=split, index=index, as_json=as_json, overrides=overrides,
                           color=sys.stdout.isatty()))


@main.command(name="score-data")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The scores file to write (JSONL), for data.selection.ifd.file and data.selection.kcenter.")
@click.option("--embeddings", is_flag=True,
              help="Also write each row's embedding, for data.selection.kcenter (on when the spec sets it).")
@set_option
@user_errors
def score_data(spec: Path, output: Path, embeddings: bool, overrides: tuple[str, ...]) -> None:
    """Score each train row of SPEC by its instruction-following difficulty (IFD), with the spec's model."""
    from .score_data import score_spec
    from .spec.loader import load_spec

    score_spec(load_spec(spec, overrides), output, embeddings=embeddings, log=lambda s: click.echo(s, err=True))


@main.command()
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path))
@click.option("--from", "from_fmt", required=True, help="alpaca, sharegpt, messages or prompt_completion.")
@click.option("--to", "to_fmt", required=True, help="alpaca, sharegpt, messages or prompt_completion.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="OUT.jsonl, or OUT.json for an array.")
@click.option("--strict", is_flag=True, help="Fail instead of dropping rows that cannot be converted.")
@user_errors
def convert(input_path: Path, from_fmt: str, to_fmt: str, output: Path, strict: bool) -> None:
    """Convert a dataset file between formats (no model needed)."""
    from .compiler.convert import convert_file

    report = convert_file(input_path, from_fmt, to_fmt, output, strict=strict)
    click.echo(report.summary(), err=True)


@main.command()
@click.option("--predictions", required=True, type=click.Path(path_type=Path), help='JSONL of {"id", "prediction"}.')
@click.option("--references", required=True, type=click.Path(path_type=Path),
              help='JSONL of {"id", "references": [...]} or {"id", "reference"}.')
@click.option("--reference-field", "fields", multiple=True, help="Read references from these fields instead.")
@click.option("--multi-ref", type=click.Choice(["mean", "max"]), default="mean", show_default=True)
@click.option("--rouge-tokenizer", "rouge_tokenizer", default="auto", show_default=True,
              help="auto (by script), default (rouge_score's, English), jieba, characters or words.")
@user_errors
def score(predictions: Path, references: Path, fields: tuple[str, ...], multi_ref: str, rouge_tokenizer: str) -> None:
    """ROUGE-1/2/L/Lsum of any predictions file against references, matched by id."""
    from .runtime.scorefiles import score_files

    click.echo(json.dumps(score_files(predictions, references, list(fields) or None, multi_ref,
                                       tokenizer=rouge_tokenizer), indent=2))


# --------------------------------------------------------------------------- runtime commands


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--restart", is_flag=True, help="Start over instead of resuming from the newest checkpoint.")
@user_errors
def train(build: Path, restart: bool) -> None:
    """Train from BUILD; reruns resume from the newest complete checkpoint."""
    from .runtime.train import train as run_training

    run_training(build, restart=restart)


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), help="Merged weights' dtype.")
@user_errors
def merge(build: Path, dtype: str | None) -> None:
    """Merge the trained LoRA adapter into the base model (BUILD/merged)."""
    from .build_reader import Build
    from .runtime.merge import merge as run_merge

    run_merge(Build(build), dtype=dtype, log=lambda s: click.echo(s, err=True))


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--model", "which", help="base, adapter, merged or a model directory (default: base and tuned).")
@click.option("--split", help="Split to evaluate (default: evaluation.split).")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate at most N rows.")
@click.option("--multi-ref", type=click.Choice(["mean", "max"]), help="Combine several references by mean or max.")
@user_errors
def evaluate(build: Path, which: str | None, split: str | None, limit: int | None, multi_ref: str | None) -> None:
    """Generate on a split and score ROUGE (and eval loss); base vs fine-tuned side by side."""
    from .build_reader import Build
    from .runtime.evaluate import evaluate as run_eval

    b = Build(build)
    if split and not b.has_split(split):
        from .errors import BuildError, Problem

        raise BuildError(Problem(f"the build has no `{split}` split (it has {', '.join(b.splits)})",
                                 path="--split", file=str(build), hint="choose one of the build's splits"))
    run_eval(b, model=which, split=split, limit=limit, multi_ref=multi_ref,
                       log=lambda s: click.echo(s, err=True))
    b.output("eval")  # read back through the seal, like every output
    click.echo((b.eval_dir / "report.md").read_text(encoding="utf-8").split("## Best")[0].rstrip())


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--to-folder", type=click.Path(path_type=Path), help="Write the folder here and upload nothing.")
@click.option("--dry-run", is_flag=True, help="Write the folder (BUILD/publish) and say where it would go; upload nothing.")
@click.option("--repo-id", metavar="OWNER/NAME", help="Hub repository (default: output.push_to_hub.repo_id).")
@click.option("--what", type=click.Choice(["adapter", "merged"]), help="What to publish (default: output.push_to_hub.what).")
@user_errors
def publish(build: Path, to_folder: Path | None, dry_run: bool, repo_id: str | None, what: str | None) -> None:
    """Write the folder a Hugging Face model repository gets (weights, tokenizer, model card) and upload it."""
    from .build_reader import Build
    from .runtime.publish import publish as run_publish

    result = run_publish(Build(build), to_folder=to_folder, dry_run=dry_run, repo_id=repo_id, what=what,
                         log=lambda s: click.echo(s, err=True))
    click.echo(result.url or str(result.folder))


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Build directory.")
@set_option
@click.option("--force", is_flag=True, help="Replace an existing build of a different spec.")
@user_errors
def run(spec: Path, output: Path | None, overrides: tuple[str, ...], force: bool) -> None:
    """Compile, train, merge and evaluate SPEC in one go; stages whose outputs are valid are skipped."""
    from .pipeline import run_all

    run_all(spec, output, overrides, force=force, log=lambda s: click.echo(s, err=True))


@main.command()
@click.argument("builds", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUILD [OTHER]")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="The HTML file (default: BUILD/report.html).")
@user_errors
def report(builds: tuple[Path, ...], output: Path | None) -> None:
    """One self-contained HTML page of BUILD: curves, ROUGE, predictions, data, lock; with OTHER, both compared.

    It opens offline. A section whose input is not there yet (not trained, not evaluated) says which command
    makes it; a damaged input is an error (exit 2) and nothing is written."""
    from .errors import BuildError, Problem
    from .runtime.report import write_report

    if len(builds) > 2:
        raise BuildError(Problem(f"{len(builds)} builds given; a report shows one build, or compares two",
                                 path="BUILD", hint="tunespec report BUILD, or tunespec report A B"))
    click.echo(str(write_report(list(builds), output, log=lambda s: click.echo(s, err=True))))


MODEL_HELP = "base, adapter, merged or a model directory (default: merged if it exists, else adapter, else base)."


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--prompt", "prompt", metavar="TEXT",
              help="The input: the format's main field (dialogue, instruction, question, ...) or the user message.")
@click.option("--input", "input_file", type=click.Path(path_type=Path),
              help="One prompt per line, or JSON lines with `prompt` or the format's fields (and an optional id).")
@click.option("--field", "fields", multiple=True, metavar="NAME=VALUE", help="Set one of the format's fields. Repeatable.")
@click.option("--raw", is_flag=True, help="The text is the already-rendered prompt (no template).")
@click.option("--model", "which", metavar="WHICH", help=MODEL_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per prompt: prompt (as rendered), completion, input, model.")
@user_errors
def generate(build: Path, prompt: str | None, input_file: Path | None, fields: tuple[str, ...], raw: bool,
             which: str | None, as_json: bool) -> None:
    """Render new input with BUILD's training template and print the model's completion.

    With several prompts, each completion is printed on one line (newlines as \\n); use --json for exact text.
    """
    from .runtime.generate import run_generate

    run_generate(build, prompt=prompt, input_file=input_file, fields=fields, raw=raw, model=which, as_json=as_json,
                 log=lambda s: click.echo(s, err=True))


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--model", "which", metavar="WHICH", help=MODEL_HELP)
@click.option("--system", metavar="TEXT", help="System prompt (chat templates), replacing the template's.")
@user_errors
def chat(build: Path, which: str | None, system: str | None) -> None:
    """Chat with BUILD's model in the terminal: /reset clears the history, /exit or end of input quits."""
    from .runtime.chat import run_chat

    run_chat(build, model=which, system=system, log=lambda s: click.echo(s, err=True))


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--model", "which", metavar="WHICH", help=MODEL_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; anything but loopback lets other machines use the models.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: gradio's, 7860 or the next free one).")
@click.option("--share", is_flag=True, help="Also make a public gradio link (off unless asked).")
@click.option("--no-base", is_flag=True, help="Only the tuned model (half the memory).")
@user_errors
def demo(build: Path, which: str | None, host: str, port: int | None, share: bool, no_base: bool) -> None:
    """A local web page to chat with BUILD's tuned model beside the base (needs tunespec[demo]).

    Messages are rendered with the build's template and generated with its evaluation settings, streaming."""
    from .runtime.demo import run_demo

    run_demo(build, which=which, host=host, port=port, share=share, with_base=not no_base,
             log=lambda s: click.echo(s, err=True))


@main.command()
def templates() -> None:
    """List the template library."""
    from .templating.templates import TOKENIZER, library_dir, library_names

    for name in library_names():
        if name == TOKENIZER:
            click.echo(f"{name:22s} the model's own chat template")
            continue
        first = (library_dir() / f"{name}.jinja").read_text(encoding="utf-8").splitlines()[0]
        click.echo(f"{name:22s} {first.strip('{#-} ').strip()}")


if __name__ == "__main__":  # pragma: no cover
    main()
