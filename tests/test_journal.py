"""Journal framing, replay, damage handling, group commit, rotation, snapshots and followers."""

import asyncio
import os

import msgspec
import pytest
from conftest import commit
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.journal import (
    Cursor,
    JournalFollower,
    JournalTail,
    decode_record,
    encode_record,
    list_archives,
    list_segments,
    list_snapshots,
    unframe,
)
from daemon.journal_writer import JournalFailed, JournalWriter, recover
from daemon.model import HookRun, State, Transition, raw_json
from daemon.store import Store

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def enqueued(i, payload=None):
    return Transition(
        id=f"e{i:05d}",
        function="f",
        state=State.ENQUEUED,
        payload=raw_json(payload if payload is not None else {"n": i}),
    )


@given(payload=json_values, seq=st.integers(min_value=1, max_value=2**53), rid=st.text(min_size=1))
def test_framing_round_trips_any_record(payload, seq, rid):
    rec = Transition(
        id=rid, function="f", state=State.ENQUEUED, payload=raw_json(payload), seq=seq, at=1.5
    )
    line = encode_record(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = decode_record(line[:-1])
    assert back.seq == seq and back.id == rid
    assert msgspec.json.decode(back.payload) == msgspec.json.decode(rec.payload)


@given(data=st.data())
def test_any_single_bit_flip_is_detected(data):
    line = encode_record(enqueued(1, {"text": "hello"}))[:-1]
    bit = data.draw(st.integers(min_value=0, max_value=len(line) * 8 - 1))
    flipped = bytearray(line)
    flipped[bit // 8] ^= 1 << (bit % 8)
    if b"\n" in flipped:
        return  # a flip that makes a newline splits the line: both halves fail, tested below
    with pytest.raises(ValueError):
        decode_record(bytes(flipped))


def test_unframe_rejects_garbage():
    for bad in (b"", b"zzzzzzzz {}", b"00000000{}", b"\x00" * 40):
        with pytest.raises(ValueError):
            unframe(bad)


async def write_records(directory, records, **kw):
    writer = JournalWriter(directory, 1, **kw)
    for rec in records:
        writer.append(rec)
    await writer.sync()
    await writer.close()


async def test_replay_after_torn_tail_keeps_every_whole_record(tmp_path):
    await write_records(tmp_path, [enqueued(i) for i in range(100)])
    ((_, seg),) = list_segments(tmp_path)
    whole = seg.read_bytes()
    lines = whole.split(b"\n")[:-1]
    for cut in range(len(whole) - len(lines[-1]) - 1, len(whole)):
        seg.write_bytes(whole[:cut])
        state = recover(tmp_path)
        assert len(state.events) == 99
        assert seg.read_bytes() == whole[: whole.rfind(b"\n", 0, cut) + 1]
        assert any(d.reason == "torn tail cut" for d in state.damages) == (
            cut % len(whole) != 0 and not whole[:cut].endswith(b"\n")
        )
        assert (tmp_path / f"{seg.name}.broken").exists() or whole[:cut].endswith(b"\n")


async def test_garbage_and_zeros_after_the_last_record_are_cut(tmp_path):
    await write_records(tmp_path, [enqueued(i) for i in range(10)])
    ((_, seg),) = list_segments(tmp_path)
    good = seg.read_bytes()
    seg.write_bytes(good + b"\x00" * 4096)
    state = recover(tmp_path)
    assert len(state.events) == 10 and seg.read_bytes() == good
    seg.write_bytes(
        good
        + os.urandom(3000).replace(b"\n", b"x")
        + b"\n"
        + encode_record(msgspec.structs.replace(enqueued(99), seq=11))
    )
    state = recover(tmp_path)
    assert len(state.events) == 11, "the record after the damage is kept"
    assert any(
        "checksum" in d.reason or "hex" in d.reason or "prefix" in d.reason for d in state.damages
    )


async def test_a_flipped_bit_loses_only_that_record(tmp_path):
    await write_records(tmp_path, [enqueued(i) for i in range(50)])
    ((_, seg),) = list_segments(tmp_path)
    data = bytearray(seg.read_bytes())
    starts = [0, *[i + 1 for i, b in enumerate(data) if b == 10][:-1]]
    data[starts[20] + 30] ^= 0x10
    seg.write_bytes(bytes(data))
    state = recover(tmp_path)
    assert sorted(state.events) == [f"e{i:05d}" for i in range(50) if i != 20]
    assert len(state.damages) == 1 and state.damages[0].offset == starts[20]
    assert b"offset" in (tmp_path / f"{seg.name}.broken").read_bytes()


async def test_group_commit_batches_fsyncs(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    writer = JournalWriter(tmp_path, 1)
    await asyncio.gather(*(commit(writer, enqueued(i)) for i in range(2000)))
    await writer.close()
    assert len(recover(tmp_path).events) == 2000
    assert len(calls) < 100, f"{len(calls)} fsyncs for 2000 commits"


async def test_an_fsync_error_is_fatal_and_never_acknowledged(tmp_path, monkeypatch):
    failures = []
    writer = JournalWriter(tmp_path, 1, on_fatal=failures.append)
    await commit(writer, enqueued(0))

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(JournalFailed):
        await commit(writer, enqueued(1))
    assert failures and isinstance(failures[0], OSError)
    with pytest.raises(JournalFailed):
        writer.append(enqueued(2))


async def test_rotation_and_follower_across_rotation_and_compaction(tmp_path):
    writer = JournalWriter(tmp_path, 1, segment_bytes=4096)
    follower = JournalFollower(tmp_path)
    follower.load()
    store = Store(writer, recover(tmp_path), tmp_path / "logs")
    seen = []
    for i in range(300):
        event = store.enqueue("f", raw_json({"n": i}))
        store.transition(event, State.DEQUEUED)
        if i % 25 == 0:
            await store.sync()
            seen += follower.poll()
    await store.sync()
    assert len(list_segments(tmp_path)) > 5
    await store.compact()
    for i in range(10):
        store.enqueue("f", raw_json({"m": i}))
    await store.compact()
    await store.sync()
    seen += follower.poll()
    assert len(list_snapshots(tmp_path)) == 2
    assert len(follower.state.events) == 310
    assert all(e.state is State.DEQUEUED for e in list(follower.state.events.values())[:300])
    fresh = JournalFollower(tmp_path).load()
    assert len(fresh.events) == 310 and not fresh.damages
    await writer.close()
    assert len(recover(tmp_path).events) == 310


async def test_compaction_drops_events_past_retention(tmp_path):
    writer = JournalWriter(tmp_path, 1)
    store = Store(writer, recover(tmp_path), tmp_path / "logs")
    old = store.enqueue("f", raw_json(1))
    store.transition(old, State.STOPPED)
    (tmp_path / "logs" / "f").mkdir(parents=True)
    log = tmp_path / "logs" / "f" / f"{old.id}.log"
    log.write_text("x")
    old.ended_at -= 10
    live = store.enqueue("f", raw_json(2))
    await store.compact(retention=5)  # the ended event goes to an archive, out of memory
    assert list(store.events) == [live.id]
    assert [p.name for _, p in list_archives(tmp_path)] == ["archive-0000000000000003.jsonl"]
    assert log.exists()
    store.transition(live, State.STOPPED)
    await store.compact(retention=5)  # that archive is past retention: gone, with its logs
    await writer.close()
    state = recover(tmp_path)
    assert list(state.events) == []
    assert state.archived == {"Stopped": 1}  # the live one, archived now
    assert not log.exists()
    assert [p.name for _, p in list_archives(tmp_path)] == ["archive-0000000000000004.jsonl"]
    assert store.retained_counts() == {State.STOPPED: 1}


async def test_a_reader_finds_archived_events_and_the_live_ones(tmp_path):
    writer = JournalWriter(tmp_path, 1)
    store = Store(writer, recover(tmp_path), tmp_path / "logs")
    done = store.enqueue("f", raw_json(1))
    store.transition(done, State.STOPPED)
    waiting = store.enqueue("f", raw_json(2))
    await store.compact()
    later = store.enqueue("g", raw_json(3))
    await writer.close()
    state = JournalFollower(tmp_path).load()
    assert set(state.events) == {done.id, waiting.id, later.id}
    assert state.events[done.id].state is State.STOPPED
    assert list(recover(tmp_path).events) == [waiting.id, later.id]  # the daemon's memory


async def test_non_transition_records_round_trip(tmp_path):
    hook = HookRun(
        instance="i1", function="f", hook="PreStop", started=1.0, duration_ms=3.5, ok=True
    )
    await write_records(tmp_path, [enqueued(0), hook])
    follower = JournalFollower(tmp_path)
    follower.load()
    assert follower.state.last_seq == 2


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=400))
def test_follower_never_crashes_on_arbitrary_segment_bytes(tmp_path_factory, blob):
    directory = tmp_path_factory.mktemp("j")
    (directory / "segment-0000000000000001.jsonl").write_bytes(
        encode_record(msgspec.structs.replace(enqueued(1), seq=1)) + blob
    )
    state = JournalFollower(directory).load()
    assert "e00001" in state.events


async def test_a_tail_read_left_early_goes_on_after_the_last_record_it_gave(tmp_path):
    writer = JournalWriter(tmp_path, 1)
    store = Store(writer, recover(tmp_path), tmp_path / "logs")
    ids = [store.enqueue("f", raw_json(i)).id for i in range(5000)]
    await writer.close()
    tail = JournalTail(tmp_path, Cursor(), [])
    seen = []
    for _batch in range(1000):
        for n, rec in enumerate(tail.read()):
            seen.append(rec.id)
            if n == 36:  # the reader has read ahead far more than this
                break
        if len(seen) == len(ids):
            break
    assert seen == ids


async def _small_journal(directory, count: int) -> list[str]:
    writer = JournalWriter(directory, 1, segment_bytes=4096)  # several segments
    store = Store(writer, recover(directory), directory / "logs")
    ids = [store.enqueue("f", raw_json(i)).id for i in range(count)]
    await writer.close()
    return ids


async def test_a_stray_segment_named_past_the_end_neither_loops_nor_leads_readers_away(tmp_path):
    ids = await _small_journal(tmp_path, 200)
    assert len(list_segments(tmp_path)) >= 2
    (tmp_path / "segment-9999999999999999.jsonl").touch()  # `touch` by a member, once
    follower = JournalFollower(tmp_path)
    assert set(follower.load().events) == set(ids)  # no recursion, nothing lost
    # the daemon's writer goes on in its own segment, and a follower follows it there
    state = recover(tmp_path)
    assert not (tmp_path / "segment-9999999999999999.jsonl").exists()
    assert any("set aside" in d.reason for d in state.damages)
    writer = JournalWriter(tmp_path, state.last_seq + 1)
    store = Store(writer, state, tmp_path / "logs")
    later = store.enqueue("f", raw_json("later")).id
    await writer.close()
    follower.poll()
    assert later in follower.state.events


async def test_a_flipped_byte_at_the_end_of_an_older_segment_loses_one_record_only(tmp_path):
    ids = await _small_journal(tmp_path, 200)
    (_, first), *_ = list_segments(tmp_path)
    data = bytearray(first.read_bytes())
    data[-3] ^= 0x01  # inside the checksummed body of its last record
    first.write_bytes(bytes(data))
    state = JournalFollower(tmp_path).load()
    assert len(set(ids) - set(state.events)) == 1 and state.damages
