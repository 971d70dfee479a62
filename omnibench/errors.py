"""How a command line ends when something goes wrong: one line on stderr and an exit code, no traceback
unless asked for with `--verbosity DEBUG`."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Callable

from omnibench.protocol import OmnibenchError

VERBOSITY = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_verbosity_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbosity", default="INFO", choices=VERBOSITY,
                        help="level of omnibench's log messages; DEBUG also prints the traceback of an error")


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def cli_main(run: Callable[[], int], verbosity: str = "INFO") -> int:
    """`run()`'s exit code. An OmnibenchError (a bad input: its message names the problem and the fix)
    becomes `error: <message>` and exit 2; any other exception one `error: <type>: <message>` line and
    exit 1. With DEBUG the traceback is printed first, and an unexpected exception propagates."""
    # Other libraries stay at WARNING: their INFO lines (HTTP requests, font caches) are not ours to show.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("omnibench").setLevel(verbosity)
    try:
        return run()
    except OmnibenchError as exc:
        if verbosity == "DEBUG":
            traceback.print_exc()
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        if verbosity == "DEBUG":
            raise
        print(f"error: {type(exc).__name__}: {_one_line(str(exc))} "
              "(unexpected; re-run with --verbosity DEBUG for the traceback)", file=sys.stderr)
        return 1


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or another framework's out-of-memory RuntimeError."""
    import torch
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_accelerator_memory() -> None:
    """What a failed call left allocated goes back before the next one runs."""
    import gc

    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

