"""The exec runtime with real processes: shell one-liners and a script, on their own and through
the real daemon."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path

import pytest
from conftest import PATIENCE, drop, events, fnspool, fnspool_json, gone, wait_for, wait_for_async
from runtime_helpers import LINE_TIME, on_uvloop, raw, value

from daemon.functions import FunctionDef
from daemon.runtimes.base import InstanceStartError
from daemon.runtimes.exec import ExecInstance
from daemon.supervise.supervisor import Supervisor

CODE = Path(__file__).parent / "functions" / "exec_runtime"


def function(*command: str, **changes: object) -> FunctionDef:
    """An exec function running `command` in tests/functions/exec_runtime."""
    fields: dict[str, object] = {
        "name": "sh",
        "runtime": "exec",
        "command": list(command),
        "code_dir": str(CODE),
    }
    return FunctionDef(**{**fields, **changes})  # type: ignore[arg-type]


def sh(line: str, **changes: object) -> FunctionDef:
    return function("sh", "-c", line, **changes)


async def started(definition: FunctionDef) -> ExecInstance:
    instance = ExecInstance(definition, supervisor=Supervisor())
    await instance.start()
    return instance


@on_uvloop
async def test_stdin_to_stdout_json(tmp_path: Path) -> None:
    instance = await started(sh('cat; echo "ran $FNSPOOL_REQUEST_ID" >&2'))
    assert instance.state == "idle" and instance.pid is None
    log = tmp_path / "r1.log"
    outcome = await instance.invoke("r1", raw({"a": [1, "é"]}), 1, 10.0, log)
    assert outcome.ok and not outcome.instance_lost, outcome.error
    assert value(outcome.result) == {"a": [1, "é"]}
    assert outcome.usage.exit_code == 0 and outcome.usage.duration_ms > 0
    assert outcome.usage.cpu_ms is not None and outcome.usage.max_memory_mb
    lines = log.read_text().splitlines()
    assert re.fullmatch(f"{LINE_TIME} \\[PLATFORM\\] FC Invoke Start RequestId: r1", lines[0])
    assert lines[1] == "ran r1"
    assert re.fullmatch(f"{LINE_TIME} \\[PLATFORM\\] FC Invoke End RequestId: r1", lines[-1])
    assert instance.state == "idle" and instance.pid is None and instance.events_served == 1
    await instance.stop()


@on_uvloop
async def test_stdout_that_is_not_json_is_kept_as_a_string(tmp_path: Path) -> None:
    instance = await started(sh("echo hello $FNSPOOL_REQUEST_ID attempt $FNSPOOL_ATTEMPT"))
    outcome = await instance.invoke("r7", raw(None), 3, 10.0, tmp_path / "l")
    assert outcome.ok and value(outcome.result) == "hello r7 attempt 3"
    quiet = await started(sh("true"))
    assert value((await quiet.invoke("q", raw(None), 1, 10.0, tmp_path / "q")).result) is None


@on_uvloop
async def test_non_zero_exit_fails_with_the_end_of_stderr(tmp_path: Path) -> None:
    line = "seq 1 500 >&2; echo 'database unreachable' >&2; exit 3"
    instance = await started(sh(line))
    log = tmp_path / "r.log"
    outcome = await instance.invoke("r", raw(None), 1, 10.0, log)
    assert not outcome.ok and not outcome.instance_lost
    assert outcome.error is not None and outcome.error.type == "ExecError"
    assert outcome.error.code == 3 and outcome.usage.exit_code == 3
    assert outcome.error.message.startswith("the command ended with exit code 3: ")
    assert outcome.error.message.endswith("499\n500\ndatabase unreachable")
    assert len(outcome.error.message) < 1100  # the tail, not the whole of stderr
    text = log.read_text()
    assert "\n1\n2\n3\n" in text and "database unreachable" in text  # all of it in the log


@on_uvloop
async def test_timeout_kills_the_attempt_and_its_grandchildren(tmp_path: Path) -> None:
    instance = await started(sh("sleep 60 & echo grandchild $! >&2; wait"))
    log = tmp_path / "r.log"
    began = time.monotonic()
    outcome = await instance.invoke("r", raw(None), 1, 0.5, log)
    print(f"\na 0.5 s timeout returned after {time.monotonic() - began:.2f} s")
    assert not outcome.ok and not outcome.instance_lost  # the next attempt gets a new process
    assert outcome.error is not None and outcome.error.type == "FunctionTimeout"
    assert outcome.error.message == "Function timed out after 0.50 seconds"
    assert outcome.usage.signal == 9
    match = re.search(r"grandchild (\d+)", log.read_text())
    assert match, log.read_text()
    wait_for(lambda: gone(int(match.group(1))), what="the grandchild to be killed")
    assert instance.state == "idle"


@on_uvloop
async def test_memory_over_the_limit_kills_the_attempt(tmp_path: Path) -> None:
    hog = "import time; hog = b'x' * (200 << 20); time.sleep(10)"
    instance = await started(function(sys.executable, "-c", hog, memory_mb=60))
    began = time.monotonic()
    outcome = await instance.invoke("r", raw(None), 1, 30.0, tmp_path / "r.log")
    print(f"\nthe memory hog was killed after {time.monotonic() - began:.2f} s")
    assert not outcome.ok and not outcome.instance_lost
    assert outcome.error is not None and outcome.error.type == "MemoryLimitExceeded"
    assert outcome.usage.signal == 9


@on_uvloop
async def test_a_background_process_does_not_outlive_its_attempt(tmp_path: Path) -> None:
    instance = await started(sh("sleep 60 >/dev/null 2>&1 & echo $!"))
    outcome = await instance.invoke("r", raw(None), 1, 10.0, tmp_path / "r.log")
    assert outcome.ok
    pid = value(outcome.result)
    assert isinstance(pid, int)
    wait_for(lambda: gone(pid), what="the background process to be killed")


@on_uvloop
async def test_a_script_from_the_code_folder_and_a_large_payload(tmp_path: Path) -> None:
    instance = await started(function("./count.sh"))
    payload = raw({"blob": "z" * (3 << 20)})  # far more than a pipe holds
    outcome = await instance.invoke("r", payload, 2, 30.0, tmp_path / "r.log")
    assert outcome.ok, outcome.error
    assert value(outcome.result) == {"bytes": len(payload), "cwd": str(CODE), "attempt": 2}


@on_uvloop
async def test_commands_that_cannot_run(tmp_path: Path) -> None:
    for command, message in [
        ("./missing.sh", "the command './missing.sh' is not a file in"),
        ("./plain.txt", "is not executable (chmod +x it)"),
    ]:
        with pytest.raises(InstanceStartError) as caught:
            await started(function(command))
        assert caught.value.error.type == "SpawnError"
        assert message in caught.value.error.message
    with pytest.raises(InstanceStartError) as caught:  # a path inside a folder that is not there
        await started(function("./count.sh", code_dir=str(tmp_path / "nowhere")))
    assert "the code folder" in caught.value.error.message
    # a bare name needs no code folder: it runs, from /
    instance = await started(function("true", code_dir=str(tmp_path / "nowhere")))
    assert instance.state == "idle"
    await instance.stop()
    with pytest.raises(InstanceStartError) as caught:
        await started(function("no-such-program-fnspool"))
    assert "'no-such-program-fnspool' is not found in PATH" in caught.value.error.message


@on_uvloop
async def test_stop_kills_a_running_attempt(tmp_path: Path) -> None:
    instance = await started(sh("echo started >&2; sleep 60"))
    task = asyncio.ensure_future(instance.invoke("r", raw(None), 1, 60.0, tmp_path / "r.log"))
    log = tmp_path / "r.log"
    await wait_for_async(
        lambda: instance.pid is not None and log.exists() and "started" in log.read_text("utf-8"),
        what="the attempt to start",
    )
    pid = instance.pid
    assert instance.signal(15)
    outcome = await asyncio.wait_for(task, PATIENCE)
    assert not outcome.ok and outcome.usage.signal == 15
    assert outcome.error is not None and "signal 15" in outcome.error.message
    assert gone(pid)
    await instance.stop()
    assert instance.state == "dead" and not instance.signal(15)


# -- through the daemon ---------------------------------------------------------------------------


def test_through_the_daemon(spool: Path, placement) -> None:
    (spool / "functions" / "upper.toml").write_text(
        'runtime = "exec"\ncode = "."\ncommand = ["tr", "a-z", "A-Z"]\n'
    )
    line = json.dumps('echo "no luck on attempt $FNSPOOL_ATTEMPT" >&2; exit 2')
    (spool / "functions" / "flaky.toml").write_text(
        f'runtime = "exec"\ncode = "."\ncommand = ["sh", "-c", {line}]\n'
        "[async]\nmax_retries = 1\nbackoff = 0.1\n"
    )
    placement.start("upper", "flaky")
    drop(spool, "upper", "one.json", {"say": "hi"})
    drop(spool, "flaky", "two.json", {})
    done = wait_for(
        lambda: (
            (found := events(spool, "--status", "Succeeded,Failed")) and len(found) == 2 and found
        ),
        what="both exec events to end",
    )
    by_function = {e["function"]: e for e in done}
    upper = fnspool_json(spool, "events", "get", by_function["upper"]["id"])
    assert upper["state"] == "Succeeded" and upper["result"] == {"SAY": "HI"}
    assert placement.nodes_of(upper) <= placement.where
    flaky = fnspool_json(spool, "events", "get", by_function["flaky"]["id"])
    assert flaky["state"] == "Failed" and flaky["attempts"] == 2
    assert flaky["error"]["message"] == "the command ended with exit code 2: no luck on attempt 2"
    log = Path(flaky["log_path"]).read_text()
    assert "no luck on attempt 1" in log and "no luck on attempt 2" in log


def test_graceful_and_forced_stops(spool: Path, placement) -> None:
    line = json.dumps(
        'trap "echo stopped cleanly; exit 0" TERM; echo ready >&2; sleep 30 & wait; echo late'
    )
    (spool / "functions" / "polite.toml").write_text(
        f'runtime = "exec"\ncode = "."\ncommand = ["sh", "-c", {line}]\ntimeout = 60\n'
    )
    (spool / "functions" / "stuck.toml").write_text(
        'runtime = "exec"\ncode = "."\ncommand = ["sleep", "30"]\ntimeout = 60\n'
    )
    placement.start("polite", "stuck")
    drop(spool, "polite", "a.json", {})
    drop(spool, "stuck", "b.json", {})
    running = wait_for(
        lambda: (found := events(spool, "--status", "Running")) and len(found) == 2 and found,
        what="both events to run",
    )
    ids = {e["function"]: e["id"] for e in running}
    polite_log = spool / "logs" / "polite" / f"{ids['polite']}.log"
    wait_for(lambda: polite_log.exists() and "ready" in polite_log.read_text(), what="the trap")
    fnspool(spool, "events", "stop", ids["polite"], "--graceful")
    fnspool(spool, "events", "stop", ids["stuck"])
    done = wait_for(
        lambda: (found := events(spool, "--status", "Stopped")) and len(found) == 2 and found,
        what="both events to stop",
    )
    assert {e["function"] for e in done} == {"polite", "stuck"}
    polite = fnspool_json(spool, "events", "get", ids["polite"])
    assert polite["result"] == "stopped cleanly" and polite["error"] is None
    stuck = fnspool_json(spool, "events", "get", ids["stuck"])
    assert stuck["error"]["type"] == "Stopped"
    assert placement.nodes_of(polite) | placement.nodes_of(stuck) <= placement.where
