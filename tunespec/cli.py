"""The `tunespec` command line.

Every user mistake surfaces as a ``TunespecError``: printed as ``FILE:LINE:COL: path: message — hint``
on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import functools
import io
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

    return wrapper


def set_option(fn):
    return click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=SET_HELP)(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tunespec")
def main() -> None:
    """Compile a fine-tuning spec into a reproducible build, then train, merge and evaluate from it."""


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
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
