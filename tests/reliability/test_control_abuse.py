"""Control abuse: thousands of malformed, duplicate, wrong-owner and illegal requests. Each one is
answered exactly once (applied at most once, or refused with a reason), nothing is applied twice,
the journal holds only legal transitions, and events dropped meanwhile keep being taken and run
(issue 7; their latency before and during is printed)."""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import wait_for

from daemon.model import State, Transition
from reliability.hostile_helpers import Journal, Probe, drop_envelope, reasons

ROOT = os.geteuid() == 0


def _put(spool: Path, name: str, data: bytes, uid: int | None = None) -> None:
    """A request file renamed into control/ whole (as `fnspool events stop` writes them)."""
    temp = spool / "tmp" / f".{name}.tmp"
    temp.write_bytes(data)
    if uid is not None:
        os.chown(temp, uid, uid)
    os.rename(temp, spool / "control" / name)


def _request_kinds(rng: random.Random, ended: list[str], running: str) -> list[tuple[str, bytes]]:
    """(kind, content) of every abusive request, shuffled."""
    stop = lambda rid: json.dumps({"action": "stop", "id": rid}).encode()  # noqa: E731
    kinds: list[tuple[str, bytes]] = []
    for _ in range(150):
        kinds.append(("garbage", rng.randbytes(rng.randrange(1, 200))))
        kinds.append(("truncated", b'{"action": "stop", "id": "' + rng.randbytes(4).hex().encode()))
        kinds.append(("wrong_action", b'{"action": "delete", "id": "x"}'))
        kinds.append(("missing_id", b'{"action": "stop"}'))
        kinds.append(("wrong_type", b'{"action": "stop", "id": 12, "graceful": "yes"}'))
        kinds.append(("deep", b'{"action": "stop", "id": ' + b"[" * 5000 + b"]" * 5000 + b"}"))
        kinds.append(("empty", b""))
        kinds.append(("duplicate_key", stop(rng.choice(ended))[:-1] + b', "id": "other"}'))
        kinds.append(("unknown_id", stop(f"nosuch-{rng.randrange(1 << 30)}")))
        kinds.append(("stop_ended", stop(rng.choice(ended))))
        kinds.append(
            (
                "reinvoke_running",
                json.dumps({"action": "reinvoke", "id": running, "new_id": "never"}).encode(),
            )
        )
    # the same re-invoke (same new id) 200 times: applied once, refused 199 times
    same = json.dumps({"action": "reinvoke", "id": ended[0], "new_id": "again-1"}).encode()
    kinds += [("dup_reinvoke", same)] * 200
    # the same stop of a running event 100 times: it stops once
    kinds += [("dup_stop_running", stop(running))] * 100
    kinds += [("huge", b'{"action": "stop", "id": "' + b"x" * (2 << 20) + b'"}')] * 3
    if ROOT:
        kinds += [("wrong_owner", stop(ended[1]))] * 100
    rng.shuffle(kinds)
    return kinds


@pytest.mark.parametrize(
    "scale",
    [
        pytest.param(1, id="2k", marks=pytest.mark.reliability),
        pytest.param(10, id="20k", marks=pytest.mark.slow),
    ],
)
def test_thousands_of_abusive_requests_are_each_answered_once_and_ingest_goes_on(
    spool, daemon, scale
):
    seed = int(os.environ.get("FNSPOOL_TEST_SEED", time.time_ns() % 1_000_000))
    print(f"\nseed {seed} (FNSPOOL_TEST_SEED={seed} to repeat)")
    rng = random.Random(seed)
    d = daemon.start()
    journal = Journal(spool)
    ended = []
    for n in range(3):
        rid = f"done-{n}"
        drop_envelope(spool, f"{rid}.json", {"function": "echo", "payload": n, "id": rid})
        journal.wait_state(rid, State.SUCCEEDED)
        ended.append(rid)
    running = "busy-1"
    drop_envelope(
        spool, "busy.json", {"function": "sleeper", "payload": {"sleep": 300}, "id": running}
    )
    journal.wait_state(running, State.RUNNING)

    with Probe(spool, every=0.05) as baseline:
        wait_for(lambda: len(baseline.latencies) >= 20, 30, "a baseline")
    kinds = [k for _ in range(scale) for k in _request_kinds(rng, ended, running)]
    names = {}
    started = time.monotonic()
    with Probe(spool, every=0.05) as probe:
        for n, (kind, data) in enumerate(kinds):
            name = f"abuse-{n:06d}.json"
            names[name] = kind
            _put(spool, name, data, uid=54321 if kind == "wrong_owner" else None)
        # and a few that are not even files
        os.symlink("/etc/passwd", spool / "control" / "link.json")
        os.mkfifo(spool / "control" / "fifo.json")
        names |= {"link.json": "symlink", "fifo.json": "fifo"}

        def answered():
            return Counter(r.name for r in journal.requests() if r.name in names)

        wait_for(lambda: len(answered()) == len(names), 120, "every request to be answered")
        took = time.monotonic() - started
    answers = answered()
    twice = [n for n, c in answers.items() if c > 1]
    assert not twice, twice[:10]
    by_name = {r.name: r for r in journal.requests() if r.name in names}
    outcomes: Counter[tuple[str, str]] = Counter(
        (kind, by_name[name].outcome) for name, kind in names.items()
    )
    print(f"{len(names)} requests answered in {took:.2f} s")
    print(f"outcomes: {dict(sorted(outcomes.items()))}")

    # once the stop has ended the busy event, re-invoking it is legal (once: its new id is fixed)
    journal.wait_state(running, State.STOPPED, timeout=30)
    stopped_seq = next(
        r.seq
        for r in journal.records
        if isinstance(r, Transition) and r.id == running and r.state is State.STOPPED
    )
    applied_ok = {"dup_reinvoke", "dup_stop_running", "reinvoke_running"}
    for name, kind in names.items():
        answer = by_name[name]
        if kind not in applied_ok:
            assert answer.outcome == "refused", (name, kind, answer)
            assert answer.message, (name, kind, answer)
        if kind == "stop_ended":
            assert "already ended: Succeeded" in answer.message, answer
        if kind == "reinvoke_running" and answer.seq < stopped_seq:
            assert answer.outcome == "refused" and "has not ended" in answer.message, answer
        if kind == "wrong_owner":
            assert answer.uid == 54321 and "not in the spool's group" in answer.message
    assert outcomes[("dup_reinvoke", "applied")] == 1
    assert outcomes[("dup_stop_running", "applied")] == 1
    # set aside with a reason: everything that was not a well-formed request from the group
    found = reasons(spool)
    malformed = {"garbage", "truncated", "wrong_action", "missing_id", "wrong_type", "deep"}
    malformed |= {"empty", "huge", "wrong_owner", "symlink", "fifo", "duplicate_key"}
    for name, kind in names.items():
        if kind in malformed:
            assert f"control/{name}" in found, (name, kind)
        if kind == "duplicate_key":
            assert found[f"control/{name}"]["reason"] == "duplicate_key", found[f"control/{name}"]
    wait_for(lambda: not os.listdir(spool / "control"), what="control/ to be empty")

    # applied at most once: one re-invoked event, one stop; the journal is all legal
    journal.wait_state("again-1", State.SUCCEEDED)
    journal.wait_state(running, State.STOPPED, timeout=30)
    transitions = [r for r in journal.records if isinstance(r, Transition)]
    assert sum(1 for r in transitions if r.id == "again-1" and r.state is State.ENQUEUED) == 1
    busy = [r.state for r in transitions if r.id == running]
    assert busy.count(State.STOPPING) == 1 and busy.count(State.STOPPED) == 1, busy
    assert outcomes[("reinvoke_running", "applied")] <= 1
    never = sum(1 for r in transitions if r.id == "never" and r.state is State.ENQUEUED)
    assert never == outcomes[("reinvoke_running", "applied")]
    assert not journal.follower.state.illegal, journal.follower.state.illegal
    journal.close()
    assert d.proc.poll() is None

    print(f"ingest latency before: {baseline.figures()}")
    print(f"ingest latency during: {probe.figures()}")
    # every event dropped before and during the abuse ran, each within the deadline (the daemon
    # is busier, so a little slower: the figures above)
    baseline.check()
    probe.check()
