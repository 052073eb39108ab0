"""The vendor documents' sample servers, run unchanged by the http runtime through the real
daemon: FC's custom runtime program (seed 002) and SCF's GracefulKiller image sample (seed 000),
both Flask apps on 0.0.0.0:9000, with Flask in a venv of their own."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import drop, events, fnspool, fnspool_json, wait_for

from daemon import isolation

SAMPLES = Path(__file__).parent / "functions" / "fc_samples"

pytestmark = pytest.mark.skipif(
    bool(isolation.unavailable()),
    reason=f"no network namespace can be made here: {isolation.unavailable()}",
)


@pytest.fixture(scope="module")
def flask_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv's python with Flask (from the package registry), made once for these tests."""
    venv = tmp_path_factory.mktemp("flask-venv")
    python = venv / "bin" / "python"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "flask"],
            check=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        pytest.skip(f"Flask cannot be installed in a test venv: {detail}")
    return str(python)


@contextlib.contextmanager
def port_held_on_host(port: int) -> Iterator[bool]:
    """Listen on `port` of the host for the test's length (True), when nothing else does: the
    samples' servers must never need it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
            s.listen()
        except OSError:
            yield False  # someone else's 9000: as good a proof
            return
        yield True


def define(spool: Path, name: str, python: str, program: str, extra: str = "") -> None:
    """An http function running one of the samples as it is, with `python -u`."""
    command = json.dumps([python, "-u", program])
    (spool / "functions" / f"{name}.toml").write_text(
        f'runtime = "http"\ncode = "{SAMPLES}"\ncommand = {command}\nport = 9000\n'
        f"timeout = 120\nstop_grace = 30\n{extra}"
    )


def get(spool: Path, request_id: str) -> dict:
    return fnspool_json(spool, "events", "get", request_id)


def test_fc_sample_answers_with_its_hooks(spool: Path, daemon, flask_python: str) -> None:
    define(spool, "fcsample", flask_python, "fc_custom_runtime.py",
           "[lifecycle]\ninitializer = true\npre_stop = true\n")  # fmt: skip
    with port_held_on_host(9000):
        daemon.start()
        drop(spool, "fcsample", "a.json", {"hello": 1})
        done = wait_for(
            lambda: (found := events(spool, "--status", "Succeeded")) and found[0],
            60, "the FC sample's event",
        )  # fmt: skip
    event = get(spool, done["id"])
    assert event["result"] == "Hello, World!"
    log = Path(event["log_path"]).read_text()
    rid = event["id"]
    for line in (
        f"FC Initialize Start RequestId: {rid}",  # the server's own, from x-fc-request-id
        f"FC invoke Start RequestId: {rid}",
        f"FC invoke End RequestId: {rid}",
    ):
        assert line in log, log


def test_two_events_at_once_run_in_two_instances_then_stop_with_end(
    spool: Path, daemon, flask_python: str
) -> None:
    define(spool, "scfsample", flask_python, "scf_graceful.py",
           'invoke_path = "/event-invoke"\nmax_instances = 2\n')  # fmt: skip
    with port_held_on_host(9000):
        daemon.start()
        drop(spool, "scfsample", "a.json", {"key1": "a"})
        drop(spool, "scfsample", "b.json", {"key1": "b"})
        running = wait_for(
            lambda: (found := events(spool, "--status", "Running")) and len(found) == 2 and found,
            60, "both events to run at once",
        )  # fmt: skip
        instances = {get(spool, e["id"])["history"][-1]["instance"] for e in running}
        assert len(instances) == 2 and None not in instances
        for e in running:  # each server is in its loop: its log shows a `False` a second
            log = Path(get(spool, e["id"])["log_path"])
            wait_for(lambda log=log: log.exists() and "False" in log.read_text(), 60, "the loop")
        for e in running:
            fnspool(spool, "events", "stop", e["id"], "--graceful")
        for e in running:
            wait_for(lambda e=e: get(spool, e["id"])["state"] == "Stopped", 60, "the stop")
    for e in running:
        event = get(spool, e["id"])
        assert event["result"] == "END" and event["error"] is None, event
        log = Path(event["log_path"]).read_text()
        assert "do something before shutdown." in log and "Graceful shutdown." in log, log
