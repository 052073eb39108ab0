"""The shared modules stay light: the TUI and the CLI read the journal without the daemon."""

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
