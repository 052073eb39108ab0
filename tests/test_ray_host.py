"""The node's side of an instance placed on Ray, without a cluster: the actor's body running a real
python worker, and the relay of its log writes (each written once, in order, however the answers
that carry them arrive)."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import REPO, wait_for_async

from daemon.functions import load_function
from daemon.runtimes.ray_host import InstanceHost
from daemon.runtimes.ray_wire import (
    InvokeCall,
    LogChunk,
    LogRelay,
    RelaySink,
    decode_reply,
    encode_call,
)

CODE = REPO / "tests" / "functions" / "ray_runtime"


@pytest.fixture
def hosts() -> Iterator[Callable[..., InstanceHost]]:
    """Makes InstanceHosts, closed at the end (a host's loop would run on: its reaper of orphans
    would take the children of the next tests)."""
    made: list[InstanceHost] = []

    def make(*args: Any, **kwargs: Any) -> InstanceHost:
        made.append(InstanceHost(*args, **kwargs))
        return made[-1]

    yield make
    for host in made:
        host.close()


class Written:
    """A LogSink keeping what it was handed."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, bytes, bool]] = []

    def write_log(self, path: Path, data: bytes, *, journaled: bool = False) -> None:
        self.writes.append((str(path), data, journaled))


def test_relayed_writes_are_written_once_in_order_whichever_answer_comes_first():
    node = RelaySink()
    for n in range(1, 4):
        node.write_log(Path("/l"), f"{n}".encode(), journaled=n == 1)
    early = node.unacknowledged()  # a pull's answer, still on its way
    node.write_log(Path("/l"), b"4")
    late = node.unacknowledged()  # an attempt's answer, made later, arriving first
    daemon = Written()
    relay = LogRelay(daemon)
    relay.take(late)
    relay.take(early)
    assert daemon.writes == [
        ("/l", b"1", True),
        ("/l", b"2", False),
        ("/l", b"3", False),
        ("/l", b"4", False),
    ]
    node.acknowledge(relay.written)
    assert node.unacknowledged() == []
    node.write_log(Path("/m"), b"5")
    assert node.unacknowledged() == [LogChunk(seq=5, path="/m", data=b"5")]


async def test_the_actors_body_runs_the_python_runtime_and_answers_with_its_output(tmp_path, hosts):
    shutil.copytree(CODE, tmp_path / "where")
    toml = tmp_path / "where.toml"
    toml.write_text('handler = "index.where"\n[lifecycle]\ninitializer = "index.init"\n')
    function = load_function(toml)
    host = hosts(msgspec.json.encode(function), "ray-where-1", shipped=False, node="n1")
    log = tmp_path / "logs" / "e1.log"
    started = decode_reply(await asyncio.to_thread(host.start, "e1", str(log)))
    assert started.start_error is None and started.node == "n1" and started.state == "idle"
    hook = decode_reply(await asyncio.to_thread(host.run_hook, "initializer", "e1", str(log)))
    assert hook.hook is not None and hook.hook.ok
    call = InvokeCall(
        seq=2, request_id="e1", payload=msgspec.Raw(b'{"n": 1}'), attempt=1, timeout=30.0,
        log_path=str(log),
    )  # fmt: skip
    answer = decode_reply(await asyncio.to_thread(host.invoke, encode_call(call)))
    assert answer.outcome is not None and answer.outcome.ok
    result = msgspec.json.decode(answer.outcome.result or b"null")
    assert result["inits"] == 1 and result["pid"] == answer.pid
    assert answer.events_served == 1
    text = b"".join(c.data for c in answer.chunks).decode()
    assert "initializing e1" in text and f"running {{'n': 1}} in {tmp_path / 'where'}" in text
    assert text.index("FC Invoke Start") < text.index("running") < text.index("FC Invoke End")
    # the daemon acknowledges what it wrote: a pull then waits for news (here: the stop's)
    pull = asyncio.ensure_future(asyncio.to_thread(host.pull, answer.chunks[-1].seq))
    await wait_for_async(lambda: host.body.pulling, what="the pull waiting")
    assert not pull.done()
    stopped = decode_reply(await asyncio.to_thread(host.stop))
    assert stopped.state == "dead"
    assert decode_reply(await pull).chunks == []


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


async def test_a_freeze_overtaken_by_the_next_attempt_does_not_stop_it(tmp_path, hosts):
    # Ray does not keep the order of a threaded actor's calls: the freeze the daemon sent when the
    # instance went idle may arrive after the attempt it sent next has begun
    shutil.copytree(CODE, tmp_path / "held")
    toml = tmp_path / "held.toml"
    toml.write_text('handler = "index.held"\n')
    function = msgspec.json.encode(load_function(toml))
    host = hosts(function, "ray-held-1", shipped=False, node="n1")
    log = str(tmp_path / "e.log")
    pid = decode_reply(await asyncio.to_thread(host.start, None, None)).pid
    assert pid is not None
    gate = tmp_path / "gate"

    def attempt(seq: int, request_id: str) -> bytes:
        payload = msgspec.json.encode({"gate": str(gate)})
        return encode_call(
            InvokeCall(
                seq=seq,
                request_id=request_id,
                payload=msgspec.Raw(payload),
                attempt=1,
                timeout=20.0,
                log_path=log,
            )
        )

    running = asyncio.ensure_future(asyncio.to_thread(host.invoke, attempt(3, "e1")))
    seen = b""
    while b"holding" not in seen:  # the handler runs
        seen += b"".join(c.data for c in decode_reply(await asyncio.to_thread(host.pull, 0)).chunks)
    assert host.signal(signal.SIGSTOP, 2)  # sent before the attempt, arriving after it began
    gate.touch()
    answer = decode_reply(await running)
    assert answer.outcome is not None and answer.outcome.ok, answer.outcome
    # a freeze sent after every call begun here freezes; the next attempt thaws
    assert host.signal(signal.SIGSTOP, 4)
    await wait_for_async(lambda: _state(pid) == "T", what="the handler's process stopped")
    answer = decode_reply(await asyncio.to_thread(host.invoke, attempt(5, "e2")))
    assert answer.outcome is not None and answer.outcome.ok, answer.outcome
    decode_reply(await asyncio.to_thread(host.stop))


async def test_output_of_an_attempt_rides_with_its_answer_and_wakes_no_pull(tmp_path, hosts):
    # a pull per printing event would double the calls to the actor
    shutil.copytree(CODE, tmp_path / "where")
    toml = tmp_path / "where.toml"
    toml.write_text('handler = "index.where"\n')
    function = msgspec.json.encode(load_function(toml))
    host = hosts(function, "ray-where-2", shipped=False, node="n1")
    host.body.live_delay = 30.0  # output waits that long for the attempt's answer to carry it
    decode_reply(await asyncio.to_thread(host.start, None, None))
    pull = asyncio.ensure_future(asyncio.to_thread(host.pull, 0))
    await wait_for_async(lambda: host.body.pulling, what="the pull waiting")  # threads race
    call = InvokeCall(
        seq=1, request_id="e1", payload=msgspec.Raw(b'{"n": 1}'), attempt=1, timeout=30.0,
        log_path=str(tmp_path / "e1.log"),
    )  # fmt: skip
    answer = decode_reply(await asyncio.to_thread(host.invoke, encode_call(call)))
    assert b"running {'n': 1}" in b"".join(c.data for c in answer.chunks)
    assert not pull.done()
    decode_reply(await asyncio.to_thread(host.stop))
    assert decode_reply(await pull).chunks == answer.chunks  # woken by the death, nothing new


def _held_attempt(gate: Path, seq: int, log: Path) -> bytes:
    payload = msgspec.Raw(msgspec.json.encode({"gate": str(gate)}))
    return encode_call(
        InvokeCall(
            seq=seq, request_id=f"e{seq}", payload=payload, attempt=1, timeout=30.0,
            log_path=str(log),
        )
    )  # fmt: skip


async def test_a_cancelled_attempt_kills_its_process_and_one_cancelled_before_it_began_never_runs(
    tmp_path, hosts
):
    # Ray does not interrupt a threaded actor's call: the daemon cancels an attempt it gave up on
    # with a call of its own, which may even arrive before the attempt
    shutil.copytree(CODE, tmp_path / "held")
    toml = tmp_path / "held.toml"
    toml.write_text('handler = "index.held"\n')
    function = msgspec.json.encode(load_function(toml))
    host = hosts(function, "ray-held-2", shipped=False, node="n1")
    pid = decode_reply(await asyncio.to_thread(host.start, None, None)).pid
    assert pid is not None
    gate, log = tmp_path / "gate", tmp_path / "e.log"
    host.cancel(2)  # before its attempt
    with pytest.raises(asyncio.CancelledError):  # as to_thread passes it
        await asyncio.to_thread(host.invoke, _held_attempt(gate, 2, log))
    running = asyncio.ensure_future(asyncio.to_thread(host.invoke, _held_attempt(gate, 3, log)))
    seen = b""
    async with asyncio.timeout(30):
        while b"holding" not in seen:  # the next attempt runs, in the same process
            reply = decode_reply(await asyncio.to_thread(host.pull, 0))
            seen += b"".join(c.data for c in reply.chunks)
    assert reply.pid == pid and b"e2" not in seen
    host.cancel(3)
    with pytest.raises(asyncio.CancelledError):  # as to_thread passes it
        await running
    await wait_for_async(lambda: not Path(f"/proc/{pid}").exists(), what="the process killed")
    assert decode_reply(await asyncio.to_thread(host.stop)).state == "dead"
