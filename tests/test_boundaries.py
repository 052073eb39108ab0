"""The shared modules stay light: the TUI and the CLI read the journal without the daemon; no
module reaches into another's private names."""

import ast
import json
import subprocess
import sys

from conftest import REPO

HEAVY = [
    "uvloop",
    "textual",
    "asyncio.subprocess",
    "daemon.service",
    "daemon.dispatcher",
    "inotify_simple",
]


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    return set(json.loads(out.stdout))


def test_journal_model_and_query_load_nothing_heavy():
    modules = loaded_after("import daemon.journal, daemon.model, daemon.query")
    assert not modules & set(HEAVY), modules & set(HEAVY)


def test_the_worker_bootstrap_needs_only_the_standard_library():
    source = (REPO / "daemon" / "worker" / "bootstrap.py").read_text()
    assert "import daemon" not in source and "from daemon" not in source


def test_a_cli_read_loads_none_of_the_other_commands(tmp_path):
    """Every `fnspool events get` starts a process: what the other commands import (the
    install's subprocess, the control requests' ids, the definitions' TOML) stays out of it."""
    modules = loaded_after(
        "from daemon import cli\n"
        "try:\n"
        f"    cli.main(['events', 'get', 'x', '--spool', {str(tmp_path)!r}])\n"
        "except SystemExit:\n"
        "    pass"
    )
    others = {"daemon.cli.systemd", "daemon.cli.requests", "daemon.control", "tomllib"}
    others.add("subprocess")
    assert not modules & others, modules & others


#: private names of the standard library the code relies on, where it has no public way: the
#: completion walks argparse's actions (as argcomplete does); os._exit is documented
STDLIB_PRIVATE = {
    ("daemon/cli/completion.py", "argparse._SubParsersAction"),
    ("daemon/cli/completion.py", "parser._actions"),
    ("daemon/cli/parser.py", "argparse._SubParsersAction"),
    ("daemon/worker/bootstrap.py", "os._exit"),
    ("daemon/worker/netns.py", "os._exit"),
}


def private_reaches(path: str, source: str) -> set[tuple[str, str]]:
    """`from M import _x` and `obj._x` (obj neither self, cls nor super()) in one module."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found |= {(path, f"{node.module}.{a.name}") for a in node.names if a.name[0] == "_"}
        elif isinstance(node, ast.Attribute) and node.attr[0] == "_" and node.attr[:2] != "__":
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
                continue  # a runtime's base class: its hooks for the subclasses
            found.add((path, ast.unparse(node)))
    return found


def test_no_module_reaches_into_another_modules_private_names():
    found = set()
    for path in sorted([*(REPO / "daemon").rglob("*.py"), *(REPO / "tui").rglob("*.py")]):
        found |= private_reaches(str(path.relative_to(REPO)), path.read_text())
    assert found <= STDLIB_PRIVATE, sorted(found - STDLIB_PRIVATE)
    assert private_reaches("x.py", "from daemon.spool import _join\npool._free.pop()\n") == {
        ("x.py", "daemon.spool._join"),
        ("x.py", "pool._free"),
    }
