"""The model: a hypothesis state machine drives a real daemon through drops, kill -9, restarts,
failing functions, stops, re-invokes and journal damage, and checks that the journal holds only
legal transitions and that every accepted payload ends exactly once (issue 7).

CI runs a couple of short examples; `-m slow` runs many longer ones."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, DaemonProcess, gone, wait_for
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from daemon import control
from daemon.journal import JournalFollower, decode_record, list_segments
from daemon.model import TERMINAL_STATES, State, Transition
from reliability.hostile_helpers import drop_envelope

E2E = Path(__file__).resolve().parent.parent / "e2e_functions"
#: what each function does: echo succeeds, fail fails twice (one retry), slow sleeps a while
FUNCTIONS = {"echo": {}, "fail": {}, "slow": {"sleep": 1.5}}


def replay(spool: Path) -> JournalFollower:
    """A fresh reader's view of the whole journal."""
    follower = JournalFollower(spool / "journal")
    follower.load()
    follower.close()
    return follower


class DaemonMachine(RuleBasedStateMachine):
    """One spool, one daemon that is sometimes killed, and what was asked of it."""

    events = Bundle("events")

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="fnspool-model-"))
        self.spool = self.root / "spool"
        shutil.copytree(EXAMPLES, self.spool / "functions")
        shutil.copytree(E2E, self.spool / "functions", dirs_exist_ok=True)
        self.daemon: DaemonProcess | None = None
        self.dropped: set[str] = set()
        self.reinvoked: set[str] = set()  # new ids asked for (applied only if the old one ended)
        self.damaged = False
        self.pids: set[tuple[int, str]] = set()  # instances seen: (pid, start time)
        self.n = 0
        self.steps: dict[str, int] = {}

    def _count(self, step: str) -> None:
        self.steps[step] = self.steps.get(step, 0) + 1

    # -- helpers --------------------------------------------------------------------------

    def _id(self, what: str) -> str:
        self.n += 1
        return f"{what}-{self.n}"

    def _running(self) -> bool:
        return (
            self.daemon is not None
            and self.daemon.proc is not None
            and (self.daemon.proc.poll() is None)
        )

    def _note_instances(self) -> None:
        try:
            status = json.loads((self.spool / "run" / "status.json").read_text())
        except (OSError, ValueError):
            return
        for instances in status.get("instances", {}).values():
            for pid in (i["pid"] for i in instances if i.get("pid")):
                started = _start_time(pid)
                if started is not None:
                    self.pids.add((pid, started))

    # -- rules ----------------------------------------------------------------------------

    @initialize(target=events)
    def start(self) -> MultipleResults[str]:
        self.restart()
        # one event of each kind from the start, so every run has work to cut off
        return multiple(*(self.drop(function) for function in sorted(FUNCTIONS)))

    @precondition(lambda self: not self._running())
    @rule()
    def restart(self) -> None:
        self._count("restart")
        if self.daemon is not None:
            self.daemon.close()
        self.daemon = DaemonProcess(self.spool).start()

    @precondition(lambda self: self._running())
    @rule(settle=st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    def kill9(self, settle: float) -> None:
        self._count("kill9")
        assert self.daemon is not None
        if settle:
            time.sleep(settle)  # let some work start: the point of the kill is random
        self._note_instances()
        self.daemon.kill()

    @rule(target=events, function=st.sampled_from(sorted(FUNCTIONS)))
    def drop(self, function: str) -> str:
        self._count("drop")
        rid = self._id(function)
        payload = FUNCTIONS[function]
        drop_envelope(
            self.spool, f"{rid}.json", {"function": function, "payload": payload, "id": rid}
        )
        self.dropped.add(rid)
        return rid

    @rule(rid=events, graceful=st.booleans())
    def stop(self, rid: str, graceful: bool) -> None:
        self._count("stop")
        control.submit(self.spool, control.StopRequest(id=rid, graceful=graceful))

    @rule(rid=consumes(events))
    def reinvoke(self, rid: str) -> None:
        self._count("reinvoke")
        new = self._id("again")
        control.submit(self.spool, control.ReinvokeRequest(id=rid, new_id=new))
        self.reinvoked.add(new)

    @precondition(lambda self: not self._running())
    @rule(where=st.floats(0, 1), how=st.sampled_from(["flip", "garbage", "truncate"]))
    def damage(self, where: float, how: str) -> None:
        self._count("damage")
        segments = [p for _, p in list_segments(self.spool / "journal") if p.stat().st_size]
        if not segments:
            return
        path = segments[-1]
        data = bytearray(path.read_bytes())
        at = int(where * (len(data) - 1))
        if how == "flip":
            data[at] ^= 0x10
        elif how == "garbage":
            data += b"\x00\xffnot a record"
        else:
            del data[at:]
        path.write_bytes(bytes(data))
        self.damaged = True

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def journal_is_legal(self) -> None:
        if not self.damaged:  # a lost record makes the next one look illegal: that is reported
            assert not replay(self.spool).state.illegal

    def teardown(self) -> None:
        try:
            self._final_checks()
        finally:
            if self.daemon is not None:
                self.daemon.close()
            # the kernel's parent-death signal is sent as the daemon dies: give it a moment
            wait_for(
                lambda: not [p for p, t in self.pids if not gone(p) and _start_time(p) == t],
                5,
                "no instance to outlive its daemon",
            )
            shutil.rmtree(self.root, ignore_errors=True)

    def _final_checks(self) -> None:
        if not self._running():
            self.restart()
        assert self.daemon is not None

        def ended() -> bool:
            state = replay(self.spool).state
            return all(
                state.events.get(rid) is not None and state.events[rid].state in TERMINAL_STATES
                for rid in self.dropped
            ) and not os.listdir(self.spool / "control")

        if not self.damaged:
            wait_for(ended, 60, "every dropped event to end")
            follower = replay(self.spool)
            state = follower.state
            assert not state.illegal, state.illegal
            enqueued: dict[str, int] = {}
            for path in (p for _, p in list_segments(self.spool / "journal")):
                for line in path.read_bytes().splitlines():
                    try:
                        rec = decode_record(line)
                    except ValueError:
                        continue
                    if isinstance(rec, Transition) and rec.state is State.ENQUEUED:
                        enqueued[rec.id] = enqueued.get(rec.id, 0) + 1
            for rid in self.dropped:
                assert enqueued.get(rid) == 1, (rid, enqueued.get(rid))
                event = state.events[rid]
                runs = [h for h in event.history if h.state is State.RUNNING]
                interrupted = [h for h in event.history if h.reason == "Interrupted"]
                # at most max_retries + 1 counted attempts, plus the ones a kill cut off
                assert len(runs) <= 2 + len(interrupted), event.history
            for new in self.reinvoked & set(state.events):
                assert enqueued.get(new) == 1
        else:
            # damaged: the daemon starts, says so, and keeps serving
            status = json.loads((self.spool / "run" / "status.json").read_text())
            assert self.daemon.ready()
            del status
        self._note_instances()
        final = replay(self.spool).state.events
        states = sorted(final[r].state.value for r in self.dropped if r in final)
        print(f"run: steps {self.steps}, damaged {self.damaged}, ended {states}")


def _start_time(pid: int) -> str | None:
    """The process's start time (its identity with the pid: pids are reused)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _run(max_examples: int, steps: int) -> None:
    DaemonMachine.TestCase.settings = settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=os.environ.get("FNSPOOL_MODEL_RANDOM") is None,
        print_blob=True,
    )
    DaemonMachine.TestCase().runTest()


@pytest.mark.reliability
def test_model_short() -> None:
    """CI: two short runs (derandomized; FNSPOOL_MODEL_RANDOM=1 explores)."""
    _run(max_examples=2, steps=8)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_model_long() -> None:
    """Many longer runs."""
    _run(max_examples=25, steps=25)
