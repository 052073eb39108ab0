"""The node's side of an instance placed on Ray, without a cluster: the actor's body running a real
python worker, and the relay of its log writes (each written once, in order, however the answers
that carry them arrive)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import msgspec
from conftest import REPO

from daemon.functions import load_function
from daemon.runtimes.ray_host import InstanceHost
from daemon.runtimes.ray_wire import LogChunk, LogRelay, RelaySink, decode_reply

CODE = REPO / "tests" / "functions" / "ray_runtime"


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


async def test_the_actors_body_runs_the_python_runtime_and_answers_with_its_output(tmp_path):
    shutil.copytree(CODE, tmp_path / "where")
    toml = tmp_path / "where.toml"
    toml.write_text('handler = "index.where"\n[lifecycle]\ninitializer = "index.init"\n')
    function = load_function(toml)
    host = InstanceHost(msgspec.json.encode(function), "ray-where-1", shipped=False, node="n1")
    log = tmp_path / "logs" / "e1.log"
    started = decode_reply(await host.start("e1", str(log)))
    assert started.start_error is None and started.node == "n1" and started.state == "idle"
    hook = decode_reply(await host.run_hook("initializer", "e1", str(log)))
    assert hook.hook is not None and hook.hook.ok
    answer = decode_reply(await host.invoke("e1", b'{"n": 1}', 1, 30.0, str(log)))
    assert answer.outcome is not None and answer.outcome.ok
    result = msgspec.json.decode(answer.outcome.result or b"null")
    assert result["inits"] == 1 and result["pid"] == answer.pid
    assert answer.events_served == 1
    text = b"".join(c.data for c in answer.chunks).decode()
    assert "initializing e1" in text and f"running {{'n': 1}} in {tmp_path / 'where'}" in text
    assert text.index("FC Invoke Start") < text.index("running") < text.index("FC Invoke End")
    # the daemon acknowledges what it wrote: a pull then waits for news (here: the stop's)
    pull = asyncio.ensure_future(host.pull(answer.chunks[-1].seq))
    await asyncio.sleep(0.05)
    assert not pull.done()
    stopped = decode_reply(await host.stop())
    assert stopped.state == "dead"
    assert decode_reply(await pull).chunks == []
