"""Shell completion for bash, zsh and fish. Each shell's script asks `fnspool __complete` for
the words that may follow; the answer is computed here from the CLI's own parser, so it never
falls out of step with the options, and from the spool for function names and event ids."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from daemon.errors import FnspoolError

SCRIPTS = {
    "bash": """_fnspool() {
    local IFS=$'\\n'
    COMPREPLY=($(fnspool __complete "$COMP_CWORD" "${COMP_WORDS[@]}" 2>/dev/null))
}
complete -o default -F _fnspool fnspool
""",
    "zsh": """(( $+functions[compdef] )) || { autoload -U +X compinit && compinit -u }
autoload -U +X bashcompinit && bashcompinit
_fnspool() {
    local IFS=$'\\n'
    COMPREPLY=($(fnspool __complete "$COMP_CWORD" "${COMP_WORDS[@]}" 2>/dev/null))
}
complete -o default -F _fnspool fnspool
""",
    "fish": """function __fnspool_complete
    set -l words (commandline -opc) (commandline -ct)
    fnspool __complete (math (count $words) - 1) $words 2>/dev/null
end
complete -c fnspool -f -a '(__fnspool_complete)'
""",
}

IDS_SHOWN = 50  # ids offered at most for a prefix


def script(shell: str) -> str:
    """The completion script for `shell`."""
    if shell not in SCRIPTS:
        raise FnspoolError(f"no completion for {shell!r}: bash, zsh or fish", exit_code=2)
    return SCRIPTS[shell]


def candidates(parser: argparse.ArgumentParser, words: list[str], current: int) -> list[str]:
    """What may stand at `words[current]` (words[0] is the program's name)."""
    typed = words[current] if current < len(words) else ""
    before = words[1:current]
    parser, spool = _innermost(parser, before)
    if before and (action := _option(parser, before[-1])) is not None and action.nargs != 0:
        return [v for v in _values(action, spool, typed) if v.startswith(typed)]
    if typed.startswith("-"):
        return sorted(o for a in parser._actions for o in a.option_strings if o.startswith(typed))
    return [w for w in _positionals(parser, spool, typed) if w.startswith(typed)]


def _innermost(
    parser: argparse.ArgumentParser, before: list[str]
) -> tuple[argparse.ArgumentParser, str | None]:
    """The (sub)parser the words lead to, and the spool they name, if any."""
    spool = None
    for i, word in enumerate(before):
        if i and before[i - 1] == "--spool":
            spool = word
        subparsers = _subparsers(parser)
        if subparsers is not None and word in subparsers.choices:
            parser = subparsers.choices[word]
    return parser, spool


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return found[0] if found else None


def _option(parser: argparse.ArgumentParser, word: str) -> argparse.Action | None:
    return next((a for a in parser._actions if word in a.option_strings), None)


def _positionals(parser: argparse.ArgumentParser, spool: str | None, typed: str) -> Iterator[str]:
    subparsers = _subparsers(parser)
    if subparsers is not None:
        yield from sorted(c for c in subparsers.choices if not c.startswith("_"))
        return
    for action in parser._actions:
        if not action.option_strings:
            yield from _values(action, spool, typed)


def _values(action: argparse.Action, spool: str | None, typed: str) -> list[str]:
    """The values an option or argument may take."""
    if action.choices is not None:
        return [str(c) for c in action.choices]
    if action.dest in ("function", "function_name") or action.metavar == "NAME":
        return _functions(spool)
    if action.dest == "status":
        from daemon.model import State

        return [s.value for s in State] + ["RUNNING", "FINISHED", "FAILED", "TERMINATED"]
    if action.dest in ("id", "ids"):
        return _ids(spool, typed)
    return []


def _functions(spool: str | None) -> list[str]:
    from daemon.spool import Spool

    functions = Spool.resolve(spool).functions
    return sorted(p.stem for p in functions.glob("*.toml")) if functions.is_dir() else []


def _ids(spool: str | None, typed: str) -> list[str]:
    from daemon.reads import EventReads
    from daemon.spool import Spool

    journal = Spool.resolve(spool).journal
    if not journal.is_dir():
        return []
    return EventReads(journal).ids_with_prefix(typed, IDS_SHOWN)


def completion(args: argparse.Namespace) -> int:
    """Print the completion script for a shell (see the README for where it goes)."""
    print(script(args.shell), end="")
    return 0
