"""A payload appended in place is one event or one rejection, never two; a function's child that
forks at once, before the daemon could have moved it, still dies with its instance."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import DaemonProcess, journal_records, wait_for, wait_for_async
from test_ingest import SETTLE, FakeSink, reason, rejected_names

from daemon.ingest import Ingestor
from daemon.model import State, Transition
from daemon.payload import Accepted
from daemon.spool import Spool

# writes each payload in place in incoming/echo/ in two or three write() calls, pausing between
APPENDER = r"""
import os, random, sys, time

folder, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(tag)
for n in range(count):
    digits = str(rng.randrange(10**8, 10**9))
    cut = rng.randrange(1, len(digits))
    chunks = [digits[:cut], digits[cut:]] + (["\n"] if n % 2 else [])
    path = os.path.join(folder, f"{tag}-{n}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    for chunk in chunks:
        os.write(fd, chunk.encode())
        time.sleep(rng.uniform(0.005, 0.05))
    os.close(fd)
    print(f"{tag}-{n}.json {digits}", flush=True)
"""


def _enqueued(spool: Path) -> list[tuple[str, str]]:
    """(file name, payload) of every event taken from incoming/echo/."""
    return [
        (rec.source.path.rsplit("/", 1)[1], bytes(rec.payload).decode())
        for rec in journal_records(spool, Transition)
        if rec.state == State.ENQUEUED
        and rec.source is not None
        and rec.source.path.startswith("incoming/echo/")
    ]


def _outcomes(spool: Path) -> Counter[str]:
    """Per file name, how many events and rejections it became."""
    seen: Counter[str] = Counter()
    for name, _ in _enqueued(spool):
        seen[name] += 1
    for why in (spool / "rejected").glob("*.reason.json"):
        seen[Path(json.loads(why.read_text())["file"]).name] += 1
    return seen


def test_payload_appended_in_place_is_one_event(spool: Path, daemon: DaemonProcess) -> None:
    daemon.start()
    folder = spool / "incoming" / "echo"
    wait_for(folder.is_dir, 20, "incoming/echo/")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(folder), f"w{i}", "40"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(5)
    ]
    written: dict[str, str] = {}
    for proc in writers:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        written.update(line.split() for line in out.splitlines())
    assert len(written) == 200
    wait_for(lambda: set(_outcomes(spool)) >= set(written), 60, "every payload handled")
    wait_for(lambda: not any(folder.iterdir()), 30, "incoming/echo/ emptied")
    outcomes = _outcomes(spool)
    assert {name: n for name, n in outcomes.items() if n != 1} == {}
    payloads = dict(_enqueued(spool))
    # each writer closed its file well within the settle time: taken whole
    assert {name: p for name, p in payloads.items() if p != written[name]} == {}


async def test_appended_after_it_was_taken_is_rejected_not_a_second_event(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "spool")
    sp.create()
    (sp.incoming / "echo").mkdir()
    path = sp.incoming / "echo" / "late.json"
    sink = FakeSink()

    def append(batch: list[Accepted]) -> None:  # the writer comes back while it is journaled
        if sink.calls == 1:
            with open(path, "a") as f:
                f.write("34")

    sink.before_accept = append
    ing = Ingestor(sp, sink, settle=SETTLE, scan_interval=60.0)
    await ing.start()
    try:
        with open(path, "w") as f:  # closed: taken once it parses
            f.write("12")
        await wait_for_async(lambda: rejected_names(sp), what="the rest set aside")
    finally:
        await ing.stop()
    assert [bytes(a.payload) for a in sink.accepted] == [b"12"]
    assert rejected_names(sp) == ["late.json"] and not path.exists()
    why = reason(sp, "late.json")
    assert why["reason"] == "changed_after_taken" and "req-0" in why["message"]
    assert (sp.rejected / "late.json").read_text() == "1234"
