"""The ingestor against a fake in-memory sink: acceptance, every rejection, settling, batching."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import PATIENCE, wait_for_async

from daemon.ingest import Accepted, Ingestor
from daemon.model import Source
from daemon.spool import Rejection, Spool, reject, safe_read
from daemon.strictjson import duplicate_key, too_deep

SETTLE = 0.3


class FakeSink:
    """Journals in memory; counts accept() calls."""

    def __init__(self, functions: tuple[str, ...] = ("echo", "other")) -> None:
        self.functions = set(functions)
        self.accepted: list[Accepted] = []
        self.ids: set[str] = set()
        self.journaled: set[tuple[Any, ...]] = set()
        self.calls = 0
        self.fail: BaseException | None = None
        self.before_accept: Callable[[list[Accepted]], None] | None = None

    def function_exists(self, name: str) -> bool:
        if name == "boom":
            raise RuntimeError("boom")
        return name in self.functions

    def already_journaled(self, source: Source) -> bool:
        return _identity(source) in self.journaled

    async def accept(self, batch: list[Accepted]) -> list[str | None]:
        self.calls += 1
        if self.before_accept is not None:
            self.before_accept(batch)
        if self.fail is not None:
            raise self.fail
        out: list[str | None] = []
        for item in batch:
            if item.id is not None and item.id in self.ids:
                out.append(None)
                continue
            request_id = item.id or f"req-{len(self.accepted)}"
            self.ids.add(request_id)
            self.accepted.append(item)
            self.journaled.add(_identity(item.source))
            out.append(request_id)
        return out


def _identity(s: Source) -> tuple[Any, ...]:
    return (s.path, s.device, s.inode, s.size, s.mtime_ns)


def drop(sp: Spool, rel: str, data: bytes | str) -> Path:
    """Write into tmp/, then rename into incoming/ (the maildir protocol)."""
    raw = data.encode() if isinstance(data, str) else data
    temp = sp.tmp / f".{rel.replace('/', '_')}.tmp"
    temp.write_bytes(raw)
    target = sp.incoming / rel
    os.rename(temp, target)
    return target


def reason(sp: Spool, name: str) -> dict[str, Any]:
    return json.loads((sp.rejected / f"{name}.reason.json").read_text())


def rejected_names(sp: Spool) -> list[str]:
    return sorted(n for n in os.listdir(sp.rejected) if not n.endswith(".reason.json"))


@pytest.fixture
def sp(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    spool.create()
    (spool.incoming / "echo").mkdir()
    (spool.incoming / "other").mkdir()
    return spool


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
async def ingestor(sp: Spool, sink: FakeSink) -> AsyncIterator[Ingestor]:
    ing = Ingestor(sp, sink, max_bytes=4096, settle=SETTLE, scan_interval=60.0)
    await ing.start()
    yield ing
    await ing.stop()


# -- spool ---------------------------------------------------------------------------------


def test_spool_resolve_and_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FNSPOOL_SPOOL", raising=False)
    assert Spool.resolve(None).root == tmp_path / "spool"
    monkeypatch.setenv("FNSPOOL_SPOOL", str(tmp_path / "env"))
    assert Spool.resolve(None).root == tmp_path / "env"
    assert Spool.resolve(str(tmp_path / "arg")).root == tmp_path / "arg"
    sp = Spool.resolve(None)
    sp.create()
    sp.create()  # idempotent
    for d in (sp.root, sp.functions, sp.journal, sp.rejected, sp.run):
        assert stat.S_IMODE(d.stat().st_mode) == 0o2750
    for d in (sp.incoming, sp.control, sp.tmp):
        assert stat.S_IMODE(d.stat().st_mode) == 0o3770


def test_safe_read_checks_before_reading(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b"x" * 100)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        data, st = safe_read(fd, "a.json", 100, None)
        assert data == b"x" * 100 and st.st_size == 100
        with pytest.raises(Rejection, match="too_large"):
            safe_read(fd, "a.json", 99, None)
        with pytest.raises(Rejection, match="owner"):
            safe_read(fd, "a.json", 100, {os.getuid() + 1})
    finally:
        os.close(fd)


def test_depth_scan_ignores_brackets_in_strings() -> None:
    assert not too_deep(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[", "b": [1]}', 3)
    assert not too_deep(b'["\\"[[[[[[[[[[", 1]', 2)
    assert too_deep(b"[[[[1]]]]", 3)
    assert not too_deep(b"[[[1]]]", 3)
    assert not too_deep(b"[]" * 1000, 1)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b'{"a": 1, "b": 2}', None),
        (b'{"a": ":", "b": "\\":"}', None),  # colons inside strings, escaped quotes
        (b'[{"a": 1}, {"a": 1}]', None),  # the same key in two objects
        (b'{"a": {"a": 1}}', None),
        (b'{"a": 1, "a": 2}', "a"),
        (b'[1, {"x": {"y": 1, "z": [{"q": 1, "q": 1}]}}]', "q"),
        (rb'{"\u0061": 1, "a": 2}', "a"),  # the same key, spelled two ways
    ],
)
def test_duplicate_keys_are_found_in_any_object(data: bytes, key: str | None) -> None:
    assert duplicate_key(data, msgspec.json.decode(data)) == key


# -- accepting -----------------------------------------------------------------------------


async def test_accepts_a_function_file(sp: Spool, sink: FakeSink, ingestor: Ingestor) -> None:
    path = drop(sp, "echo/a.json", '{ "x" : [1, 2],\n "y": "é" }\n')
    await wait_for_async(lambda: sink.accepted, what="accept")
    [item] = sink.accepted
    assert item.function == "echo" and item.id is None and item.delay == 0
    assert bytes(item.payload) == '{"x":[1,2],"y":"é"}'.encode()
    assert item.source.path == "incoming/echo/a.json"
    assert item.source.uid == os.getuid() and item.source.size == len(
        '{ "x" : [1, 2],\n "y": "é" }\n'.encode()
    )
    await wait_for_async(lambda: not path.exists(), what="unlink")
    assert rejected_names(sp) == []


async def test_accepts_envelopes_with_id_and_delay(
    sp: Spool, sink: FakeSink, ingestor: Ingestor
) -> None:
    drop(
        sp, "e1.json", '{"function": "echo", "payload": {"k": 1}, "id": "job:1-a.b", "delay": 2.5}'
    )
    drop(sp, "e2.json", '{"function": "other", "payload": null}')
    await wait_for_async(lambda: len(sink.accepted) == 2, what="two accepted")
    by_fn = {a.function: a for a in sink.accepted}
    assert by_fn["echo"].id == "job:1-a.b" and by_fn["echo"].delay == 2.5
    assert bytes(by_fn["echo"].payload) == b'{"k":1}'
    assert by_fn["other"].id is None and bytes(by_fn["other"].payload) == b"null"
    assert by_fn["echo"].source.path == "incoming/e1.json"


async def test_ignores_dotfiles_and_tmp(sp: Spool, sink: FakeSink, ingestor: Ingestor) -> None:
    (sp.incoming / ".hidden.json").write_text("{}")
    (sp.incoming / "echo" / "x.json.tmp").write_text("{}")
    (sp.incoming / "y.tmp").write_text("nope")
    await ingestor.scan()
    assert sink.accepted == [] and rejected_names(sp) == []
    assert (sp.incoming / ".hidden.json").exists() and (sp.incoming / "y.tmp").exists()


# -- rejecting -----------------------------------------------------------------------------

REJECTS = [
    ("echo/nj.json", b"{nope", "not_json"),
    ("nj2.json", b"", "not_json"),
    ("shape1.json", b"[1, 2]", "bad_shape"),
    ("shape2.json", b'{"function": "echo"}', "bad_shape"),
    ("shape3.json", b'{"function": "echo", "payload": 1, "extra": 1}', "bad_shape"),
    ("id1.json", b'{"function": "echo", "payload": 1, "id": "a b"}', "bad_id"),
    ("id2.json", b'{"function": "echo", "payload": 1, "id": ""}', "bad_id"),
    ("shape6.json", b'{"function": "echo", "payload": 1, "delay": -1}', "bad_shape"),
    ("fn1.json", b'{"function": "nope", "payload": 1}', "unknown_function"),
    ("fn2.json", b'{"function": "../etc", "payload": 1}', "unknown_function"),
    ("nope/fn3.json", b"{}", "unknown_function"),
    ("echo/big.json", b'"' + b"x" * 5000 + b'"', "too_large"),
    ("echo/deep1k.json", b"[" * 1000 + b"]" * 1000, "too_deep"),
    (
        "deep1k.json",
        b'{"function": "echo", "payload": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        "too_deep",
    ),
    ("echo/dup.json", b'{"a": 1, "b": {"c": 2, "c": 3}}', "duplicate_key"),
    ("dup.json", b'{"function": "echo", "payload": 1, "function": "other"}', "duplicate_key"),
    ("dup2.json", b'{"function": "echo", "payload": [{"k": 1, "k": 1}]}', "duplicate_key"),
    ("echo/utf8.json", b'{"a": "\xff\xfe"}', "bad_encoding"),
    ("echo/name.txt", b"{}", "bad_name"),
    ("echo/new\nline.json", b"{}", "bad_name"),
]


@pytest.mark.parametrize(("rel", "data", "code"), REJECTS, ids=[r[2] + ":" + r[0] for r in REJECTS])
async def test_rejects(
    sp: Spool, sink: FakeSink, ingestor: Ingestor, rel: str, data: bytes, code: str
) -> None:
    (sp.incoming / "nope").mkdir(exist_ok=True)
    path = drop(sp, rel, data)
    name = os.path.basename(rel)
    safe = name.replace("\n", "_")
    await wait_for_async(lambda: (sp.rejected / f"{safe}.reason.json").exists(), what=code)
    why = reason(sp, safe)
    assert why["reason"] == code, why
    assert why["file"] == f"incoming/{rel}" and why["rejected_as"] == safe
    assert why["message"] and why["at"].endswith("Z")
    assert (sp.rejected / safe).read_bytes() == data
    assert not path.exists() and sink.accepted == []
    assert (sp.incoming / "nope").is_dir()  # an unknown function's directory stays


async def test_rejects_100k_levels(tmp_path: Path, sp: Spool, sink: FakeSink) -> None:
    ing = Ingestor(sp, sink, max_bytes=1 << 20, settle=SETTLE, scan_interval=60.0)
    await ing.start()
    try:
        drop(sp, "echo/deep.json", b"[" * 100_000 + b"]" * 100_000)
        drop(sp, "echo/deepobj.json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
        await wait_for_async(lambda: len(rejected_names(sp)) == 2, what="two rejected")
        assert reason(sp, "deep.json")["reason"] == "too_deep"
        assert reason(sp, "deepobj.json")["reason"] == "too_deep"
    finally:
        await ing.stop()


async def test_rejects_invalid_utf8_name(sp: Spool, sink: FakeSink, ingestor: Ingestor) -> None:
    bad = os.fsencode(sp.incoming) + b"/\xff\xfe.json"
    with open(bad, "wb") as f:
        f.write(b"{}")
    await ingestor.scan()
    [name] = rejected_names(sp)
    assert name == "_xff_xfe.json"
    why = reason(sp, name)
    assert why["reason"] == "bad_name" and why["file"] == "incoming/\\xff\\xfe.json"


async def test_rejects_symlink_leaving_target(
    tmp_path: Path, sp: Spool, sink: FakeSink, ingestor: Ingestor
) -> None:
    target = tmp_path / "secret.json"
    target.write_text('{"secret": 1}')
    os.symlink(target, sp.incoming / "echo" / "link.json")
    await wait_for_async(lambda: rejected_names(sp) == ["link.json"], what="symlink rejected")
    assert reason(sp, "link.json")["reason"] == "symlink"
    assert (sp.rejected / "link.json").is_symlink()
    assert target.read_text() == '{"secret": 1}' and sink.accepted == []


async def test_rejects_fifo_hard_link_and_subdirectory(
    tmp_path: Path, sp: Spool, sink: FakeSink, ingestor: Ingestor
) -> None:
    os.mkfifo(sp.incoming / "echo" / "fifo.json")
    orig = tmp_path / "orig.json"
    orig.write_text("{}")
    os.link(orig, sp.incoming / "echo" / "hard.json")
    (sp.incoming / "echo" / "sub").mkdir()
    (sp.incoming / "echo" / "sub" / "inner.json").write_text("{}")
    await wait_for_async(lambda: len(rejected_names(sp)) == 3, what="three rejected")
    assert reason(sp, "fifo.json")["reason"] == "not_regular"
    assert stat.S_ISFIFO(os.lstat(sp.rejected / "fifo.json").st_mode)
    assert reason(sp, "hard.json")["reason"] == "hard_link"
    assert orig.read_text() == "{}" and os.stat(orig).st_nlink == 2
    assert reason(sp, "sub")["reason"] == "not_regular"
    assert (sp.rejected / "sub" / "inner.json").exists()
    assert sink.accepted == []


async def test_duplicate_id_and_name_collisions(
    sp: Spool, sink: FakeSink, ingestor: Ingestor
) -> None:
    env = '{"function": "echo", "payload": 1, "id": "same"}'
    drop(sp, "a.json", env)
    await wait_for_async(lambda: sink.accepted, what="first accepted")
    drop(sp, "a.json", env)
    await wait_for_async(lambda: rejected_names(sp) == ["a.json"], what="duplicate rejected")
    assert reason(sp, "a.json")["reason"] == "duplicate_id"
    drop(sp, "a.json", env)
    await wait_for_async(lambda: rejected_names(sp) == ["a.json", "a.json.1"], what="suffixed")
    assert reason(sp, "a.json.1")["rejected_as"] == "a.json.1"
    assert len(sink.accepted) == 1


async def test_internal_error_rejects_only_that_file(
    sp: Spool, sink: FakeSink, ingestor: Ingestor, caplog: pytest.LogCaptureFixture
) -> None:
    drop(sp, "b.json", '{"function": "boom", "payload": 1}')
    drop(sp, "echo/ok.json", "1")
    await wait_for_async(lambda: sink.accepted and rejected_names(sp), what="both handled")
    assert reason(sp, "b.json")["reason"] == "internal"
    assert "RuntimeError: boom" in caplog.text


# -- files written in place ----------------------------------------------------------------


async def test_in_place_two_chunks_accepted_once_complete(
    sp: Spool, sink: FakeSink, ingestor: Ingestor
) -> None:
    path = sp.incoming / "echo" / "inplace.json"
    with open(path, "w") as f:
        f.write('{"part": ')
    await ingestor.scan()  # seen incomplete: waiting, neither accepted nor rejected
    assert sink.accepted == [] and rejected_names(sp) == [] and path.exists()
    with open(path, "a") as f:
        f.write("2}")
    await wait_for_async(lambda: sink.accepted, what="accept once complete")
    assert bytes(sink.accepted[0].payload) == b'{"part":2}'
    await asyncio.sleep(SETTLE * 1.5)  # give a wrong settle timer the chance to fire
    assert len(sink.accepted) == 1 and rejected_names(sp) == []


async def test_in_place_never_complete_rejected_after_settle(
    sp: Spool, sink: FakeSink, ingestor: Ingestor
) -> None:
    path = sp.incoming / "echo" / "stuck.json"
    start = time.monotonic()
    with open(path, "w") as f:
        f.write('{"part": ')
    await wait_for_async(lambda: rejected_names(sp), what="settled reject")
    assert time.monotonic() - start >= SETTLE
    assert reason(sp, "stuck.json")["reason"] == "not_json"


# -- crash recovery and durability ---------------------------------------------------------


async def test_already_journaled_file_is_unlinked_not_accepted(sp: Spool, sink: FakeSink) -> None:
    path = drop(sp, "echo/j.json", "{}")
    st = os.stat(path)
    rel = "incoming/echo/j.json"
    sink.journaled.add((rel, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    ing = Ingestor(sp, sink, settle=SETTLE, scan_interval=60.0)
    await ing.start()
    await ing.stop()
    assert not path.exists() and sink.accepted == [] and ing.stats.recovered == 1


async def test_a_journaled_file_left_aside_by_a_crash_is_removed(sp: Spool, sink: FakeSink) -> None:
    aside = sp.incoming / "echo" / ".fnspool-removing.7.1.1"
    aside.parent.mkdir(parents=True, exist_ok=True)
    aside.write_text("{}")
    st = os.stat(aside)
    sink.journaled.add((None, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))  # at any path
    other = sp.incoming / ".fnspool-removing.8.1.1"
    other.write_text('{"function": "echo", "payload": 2}')
    ing = Ingestor(sp, sink, settle=SETTLE, scan_interval=60.0)
    await ing.start()
    await ing.stop()
    assert not aside.exists() and not other.exists()
    assert [bytes(a.payload) for a in sink.accepted] == [b"2"]  # the other one is taken


async def test_journal_failure_unlinks_nothing(sp: Spool, sink: FakeSink) -> None:
    fatal: list[BaseException] = []
    sink.fail = OSError(5, "EIO")
    path = drop(sp, "echo/f.json", "{}")
    ing = Ingestor(sp, sink, settle=SETTLE, scan_interval=60.0, on_fatal=fatal.append)
    await ing.start()
    await ing.stop()
    assert path.exists() and fatal == [sink.fail] and ing.failed is sink.fail


async def test_file_replaced_during_accept_is_not_unlinked(sp: Spool, sink: FakeSink) -> None:
    def replace(batch: list[Accepted]) -> None:
        if sink.calls == 1:
            drop(sp, "echo/r.json", '"second"')

    sink.before_accept = replace
    drop(sp, "echo/r.json", '"first"')
    ing = Ingestor(sp, sink, settle=SETTLE, scan_interval=60.0)
    await ing.start()
    try:
        await wait_for_async(lambda: len(sink.accepted) == 2, what="both versions")
        assert [bytes(a.payload) for a in sink.accepted] == [b'"first"', b'"second"']
        await wait_for_async(lambda: not (sp.incoming / "echo" / "r.json").exists(), what="unlink")
    finally:
        await ing.stop()


# -- throughput and bursts -----------------------------------------------------------------


def _stage(sp: Spool, n: int) -> list[tuple[Path, Path]]:
    moves = []
    for i in range(n):
        temp = sp.tmp / f".{i}.tmp"
        temp.write_bytes(b'{"function": "echo", "payload": {"i": %d}}' % i)
        moves.append((temp, sp.incoming / f"{i:06d}.json"))
    return moves


async def test_batches_2000_files(sp: Spool, sink: FakeSink, ingestor: Ingestor) -> None:
    moves = _stage(sp, 2000)
    start = time.perf_counter()
    for i, (temp, target) in enumerate(moves):
        os.rename(temp, target)
        if i % 100 == 99:
            await asyncio.sleep(0)  # a writer in another process would not hold our loop
    await wait_for_async(lambda: len(sink.accepted) == 2000, what="2000 accepted")
    await wait_for_async(
        lambda: not os.listdir(sp.incoming / "echo") and len(os.listdir(sp.incoming)) == 2
    )
    elapsed = time.perf_counter() - start
    print(f"\n2000 files: {2000 / elapsed:,.0f} files/s, {sink.calls} accept calls")
    paths = [a.source.path for a in sink.accepted]
    assert len(set(paths)) == 2000
    assert sink.calls <= 200
    assert rejected_names(sp) == []


async def test_latency_rename_to_accept(sp: Spool, sink: FakeSink, ingestor: Ingestor) -> None:
    """Each renamed-in file is taken on its inotify event: the ingestor's scan comes every 60 s,
    later than each wait's deadline (how soon it came is printed)."""
    assert ingestor.scan_interval > PATIENCE
    seen: list[float] = []
    sink.before_accept = lambda batch: seen.append(time.perf_counter())
    lat = []
    for i in range(200):
        temp = sp.tmp / ".l.tmp"
        temp.write_bytes(b"%d" % i)
        t0 = time.perf_counter()
        os.rename(temp, sp.incoming / "echo" / f"l{i}.json")
        await wait_for_async(lambda i=i: len(seen) > i, what="accept call")
        lat.append(seen[i] - t0)
    p50, p99 = statistics.median(lat), statistics.quantiles(lat, n=100)[98]
    print(f"\nrename -> accept(): p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us")


async def test_overflowing_inotify_burst_ingests_all(
    sp: Spool, sink: FakeSink, ingestor: Ingestor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="daemon.ingest")
    n = 20_000
    moves = _stage(sp, n)
    start = time.perf_counter()
    for temp, target in moves:  # without yielding: the kernel queue (16384) overflows
        os.rename(temp, target)
    await wait_for_async(lambda: len(sink.accepted) == n, timeout=60, what=f"{n} accepted")
    elapsed = time.perf_counter() - start
    print(f"\n{n} files with overflow: {n / elapsed:,.0f} files/s, {sink.calls} accept calls")
    assert len({a.source.path for a in sink.accepted}) == n
    assert "overflowed" in caplog.text
    await wait_for_async(lambda: len(os.listdir(sp.incoming)) == 2, what="incoming emptied")


async def test_simulated_overflow_rescans(sp: Spool, sink: FakeSink, ingestor: Ingestor) -> None:
    from inotify_simple import flags

    loop = asyncio.get_running_loop()
    assert ingestor._inotify is not None
    loop.remove_reader(ingestor._inotify.fileno())  # events are lost from here on
    for i in range(50):
        drop(sp, f"echo/o{i}.json", "1")
    ingestor._on_event(-1, flags.Q_OVERFLOW, "")
    ingestor._kick()
    await wait_for_async(lambda: len(sink.accepted) == 50, what="rescan after overflow")


async def test_new_function_directory_is_watched(
    sp: Spool, sink: FakeSink, ingestor: Ingestor
) -> None:
    sink.functions.add("late")
    (sp.incoming / "late").mkdir()
    (sp.incoming / "late" / "early.json").write_text("1")  # before the watch may exist
    await wait_for_async(lambda: len(sink.accepted) == 1, what="early file")
    drop(sp, "late/x.json", "2")
    await wait_for_async(lambda: len(sink.accepted) == 2, what="file in new directory")
    assert {a.function for a in sink.accepted} == {"late"}


async def test_periodic_scan_finds_missed_files(sp: Spool, sink: FakeSink) -> None:
    ing = Ingestor(sp, sink, settle=SETTLE, scan_interval=0.05)
    await ing.start()
    try:
        assert ing._inotify is not None
        asyncio.get_running_loop().remove_reader(ing._inotify.fileno())  # inotify goes quiet
        drop(sp, "echo/missed.json", "1")
        await wait_for_async(lambda: sink.accepted, what="periodic scan")
    finally:
        await ing.stop()


async def test_no_descriptor_leaks(sp: Spool, sink: FakeSink) -> None:
    before = len(os.listdir("/proc/self/fd"))
    ing = Ingestor(sp, sink, settle=SETTLE, scan_interval=60.0)
    await ing.start()
    drop(sp, "echo/ok.json", "1")
    drop(sp, "echo/bad.json", "{")
    await wait_for_async(lambda: sink.accepted and rejected_names(sp), what="handled")
    await ing.scan()
    await ing.stop()
    assert len(os.listdir("/proc/self/fd")) == before


def test_reject_from_a_path_never_replaces(tmp_path: Path, sp: Spool) -> None:
    for i in range(3):
        (sp.control / "x.json").write_text(str(i))
        new = reject(sp, str(sp.control), "x.json", Rejection("bad_shape", "no"), "control/x.json")
        assert new == ("x.json" if i == 0 else f"x.json.{i}")
    assert [(sp.rejected / n).read_text() for n in ("x.json", "x.json.1", "x.json.2")] == [
        "0",
        "1",
        "2",
    ]
    assert reason(sp, "x.json.2")["file"] == "control/x.json"


async def test_a_root_name_that_became_a_directory_is_watched_not_rejected(
    sp: Spool, sink: FakeSink, ingestor: Ingestor
) -> None:
    sink.functions.add("fresh")
    (sp.incoming / "fresh").mkdir()
    (sp.incoming / "fresh" / "a.json").write_text("1")
    ingestor._add(("", "fresh"), complete=True)  # as if an event named it when it was a file
    await ingestor.scan()
    # written in place before the folder was watched: taken once unchanged for the settle time
    await wait_for_async(lambda: sink.accepted, what="the file in the new folder")
    assert (sp.incoming / "fresh").is_dir() and rejected_names(sp) == []
    assert [a.function for a in sink.accepted] == ["fresh"]
