"""The `fnspool` command: argument parsing, errors for people, the one place the loop is made.

A command's module is imported only when it runs: every `events get` or `events list` starts a
Python process, and the modules of the other commands (the install's subprocess and shutil, the
control requests' ids, the definitions' TOML parser) would cost it a fifth of its time."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from daemon.cli.parser import build_parser
from daemon.errors import FnspoolError


def _complete(words: list[str]) -> None:
    """Print what may follow: `__complete INDEX WORD...` (the shell's words, the program first)."""
    from daemon.cli.completion import candidates

    try:
        current = int(words[0])
    except (IndexError, ValueError):
        sys.exit(2)
    for word in candidates(build_parser(), words[1:], current):
        print(word)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `fnspool` console script."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["__complete"]:  # asked by the shell's completion script
        _complete(words[1:])
        return
    args = build_parser().parse_args(words)
    if args.utc:  # one switch for every time shown, the dashboard's too
        os.environ["TZ"] = "UTC"
        time.tzset()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        code = run(args)
    except FnspoolError as exc:
        print(
            f"fnspool: {exc.title}: {exc.msg}" if exc.title else f"fnspool: {exc.msg}",
            file=sys.stderr,
        )
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
