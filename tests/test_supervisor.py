"""The supervisor as an object: several in one process keep to their own children, and the
package holds no module-level state and imports in one direction only."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import sys
from pathlib import Path

from conftest import PATIENCE
from runtime_helpers import on_uvloop

from daemon.supervise.supervisor import Supervisor

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "supervise"
#: the package's modules in the order its docstring gives: each imports only those before it
ORDER = ["tokens", "procfs", "kill", "memory", "child", "spawn", "reaper", "sweep", "supervisor"]


ECHO_ONE_LINE = "import sys; sys.stdout.write(sys.stdin.readline())"


@on_uvloop
async def test_two_supervisors_in_one_process_leave_each_others_children_alone() -> None:
    first, second = Supervisor(), Supervisor()
    to_child, from_child = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
    fds = {0: to_child[0], 1: from_child[1]}
    echo = first.spawn([sys.executable, "-c", ECHO_ONE_LINE], os.environ, fds)
    os.close(to_child[0])
    os.close(from_child[1])
    try:
        # a child that ends has its orphans killed: the other supervisor's child is none of them
        quick = second.spawn([sys.executable, "-c", "pass"], os.environ, {})
        assert (await asyncio.wait_for(quick.wait(), PATIENCE)).returncode == 0
        os.write(to_child[1], b"still here\n")
        answer = await asyncio.wait_for(asyncio.to_thread(os.read, from_child[0], 64), PATIENCE)
        assert answer == b"still here\n"
        assert first.tokens.is_own(echo.token) and not second.tokens.is_own(echo.token)
    finally:
        echo.kill_group(signal.SIGKILL)
        await asyncio.wait_for(echo.wait(), PATIENCE)
        os.close(to_child[1])
        os.close(from_child[0])


def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")


def _package_imports(tree: ast.Module) -> set[str]:
    """The modules of daemon.supervise that `tree` imports."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        if node.module == "daemon.supervise":
            found.update(alias.name for alias in node.names)
        elif node.module.startswith("daemon.supervise."):
            found.add(node.module.rsplit(".", 1)[1])
    return found


def test_every_module_of_the_package_is_in_the_order() -> None:
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(ORDER)


def test_each_module_imports_only_the_ones_before_it() -> None:
    for i, module in enumerate(ORDER):
        later = _package_imports(_tree(module)) - set(ORDER[:i])
        assert not later, f"{module} imports {later}, which come after it"


def test_no_module_imports_a_private_name() -> None:
    for module in ORDER:
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("daemon."):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{module} imports {private} from {node.module}"


def test_no_module_keeps_state_of_its_own() -> None:
    """Module-level names are constants (UPPER_CASE) or the logger; nothing rebinds them."""
    for module in ORDER:
        tree = _tree(module)
        for node in ast.walk(tree):
            assert not isinstance(node, ast.Global), f"{module} uses `global`"
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                assert isinstance(target, ast.Name), f"{module}: {ast.dump(target)}"
                name = target.id
                assert name == "log" or name.lstrip("_").isupper(), f"{module}.{name} is state"
