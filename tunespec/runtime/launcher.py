"""``python3 -m tunespec.runtime.launcher ARGS``: ``accelerate launch ARGS`` (what ``launch.sh`` and ``launch.slurm``
run), where a clean stop ends with its exit code and no launcher traceback.

A worker stopped by SIGINT/SIGTERM saves a checkpoint and exits 130/143 (``stop_signal.EXIT_CODES``), as
``tunespec train`` does on one process. When the signal reaches the workers and not the launcher (Slurm signals
every process of a job; a ``kill`` of the workers), accelerate's launcher sees a non-zero exit: torch elastic
logs "failed (exitcode: 143)" and raises ``ChildFailedError`` (several processes), or accelerate raises
``CalledProcessError`` (one process); ``accelerate launch`` prints its traceback and exits 1. Here, when every
process that failed exited with one of those codes, the launch exits with that code instead; every other failure
is reported as accelerate reports it. (A signal to the launcher itself was already quiet: torch elastic passes it
on to the workers and accelerate exits 128 + the signal.)
"""

from __future__ import annotations

import logging
import subprocess
import sys

from .stop_signal import EXIT_CODES

CLEAN_STOP = frozenset(EXIT_CODES.values())
ELASTIC_LOGGER = "torch.distributed.elastic.multiprocessing.api"


def clean_stop_code(exit_codes) -> int | None:
    """The exit code of a clean stop when every failed worker exited with the same one of 130/143, else None."""
    codes = set(exit_codes)
    return next(iter(codes)) if len(codes) == 1 and codes <= CLEAN_STOP else None


class _NoCleanStopReport(logging.Filter):
    """Drops torch elastic's 'failed (exitcode: 143) local_rank: 0 ...' record of a clean stop."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("failed (exitcode: ") and record.args and record.args[0] in CLEAN_STOP)


def main(argv: list[str] | None = None) -> None:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.getLogger(ELASTIC_LOGGER).addFilter(_NoCleanStopReport())
    try:
        launch_command(args)
    except ChildFailedError as e:
        code = clean_stop_code(f.exitcode for f in e.failures.values())
        if code is None:
            raise
        sys.exit(code)
    except subprocess.CalledProcessError as e:
        if e.returncode not in CLEAN_STOP:
            raise
        sys.exit(e.returncode)


if __name__ == "__main__":
    main()
