"""Damaged journals: cuts at every byte, zero and garbage tails of any size, every single bit
flipped, damaged snapshots, and hypothesis fuzzing of the journal reader and the payload parser.

tests/test_journal.py has the basic cases; these sweep them exhaustively and print how long the
slowest case took (timing thresholds belong in benchmarks/).
"""

from __future__ import annotations

import contextlib
import json
import time
import tracemalloc
from pathlib import Path

import msgspec
import pytest
from conftest import commit, fnspool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.errors import FnspoolError
from daemon.journal import (
    MAX_RECORD_BYTES,
    JournalState,
    decode_record,
    encode_record,
    frame,
    list_segments,
    list_snapshots,
)
from daemon.journal_writer import JournalWriter, recover
from daemon.model import Source, State, Transition, raw_json
from daemon.payload import decode
from daemon.spool import Rejection
from daemon.store import Store


def enqueued(i: int, seq: int = 0) -> Transition:
    return Transition(
        id=f"e{i:05d}",
        function="f",
        state=State.ENQUEUED,
        payload=raw_json({"n": i, "text": 'héllo\n[{"quoted"}]'}),
        seq=seq,
        at=1.0 + i if seq else 0.0,
    )


def segment_of(records: int) -> bytes:
    """The bytes of a segment holding `records` Enqueued records, numbered from 1."""
    return b"".join(encode_record(enqueued(i, seq=i + 1)) for i in range(records))


def line_starts(data: bytes) -> list[int]:
    return [0, *[i + 1 for i, b in enumerate(data) if b == 10][:-1]]


def timed_recover(directory: Path) -> tuple[JournalState, float]:
    t0 = time.monotonic()
    state = recover(directory)
    return state, time.monotonic() - t0


def reset(directory: Path, data: bytes) -> Path:
    for path in directory.iterdir():
        path.unlink()
    segment = directory / "segment-0000000000000001.jsonl"
    segment.write_bytes(data)
    return segment


async def append_one(directory: Path, state: JournalState, i: int) -> None:
    writer = JournalWriter(directory, state.last_seq + 1)
    await commit(writer, enqueued(i))
    await writer.close()


@pytest.mark.reliability
async def test_a_cut_at_every_byte_of_the_last_records_keeps_every_whole_one(tmp_path):
    whole = segment_of(40)
    starts = line_starts(whole)
    first_cut = starts[-3]  # every byte of the last three records
    worst = 0.0
    for cut in range(first_cut, len(whole) + 1):
        segment = reset(tmp_path, whole[:cut])
        state, elapsed = timed_recover(tmp_path)
        worst = max(worst, elapsed)
        kept_bytes = whole[: whole.rfind(b"\n", 0, cut) + 1]
        assert len(state.events) == kept_bytes.count(b"\n"), f"cut at {cut}"
        assert segment.read_bytes() == kept_bytes, f"cut at {cut}: not cut back to a record"
        torn = whole[len(kept_bytes) : cut]
        broken = tmp_path / f"{segment.name}.broken"
        if torn:
            assert broken.read_bytes() == b"# torn tail cut at offset %d\n%b\n" % (
                len(kept_bytes),
                torn,
            ), f"cut at {cut}: the cut bytes are not kept"
            assert [d.reason for d in state.damages] == ["torn tail cut"]
        else:
            assert not broken.exists() and not state.damages
        # the daemon goes on appending after the cut: the new record is whole and read back
        await append_one(tmp_path, state, 999)
        again = recover(tmp_path)
        assert "e00999" in again.events and not again.damages, f"cut at {cut}"
    print(
        f"torn tail: {len(whole) + 1 - first_cut} cuts over the last 3 records, "
        f"slowest recovery {worst * 1000:.1f} ms"
    )


@pytest.mark.parametrize(
    "tail",
    [
        b"\x00",
        b"\x00" * 4096,
        b"\x00" * (MAX_RECORD_BYTES + 1),  # a size extended past the data: zeros beyond the limit
        b"garbage without a newline",
        b"\xff\xfe" * 5000,
        b"12345678 {not json}\n\x00\x00",
        b"00000000 \n" * 3 + b"\x00" * 100,
    ],
    ids=["1 zero", "4 KiB zeros", "zeros past the limit", "text", "binary", "bad line", "lines"],
)
@pytest.mark.reliability
async def test_zeros_and_garbage_after_the_last_record(tmp_path, tail):
    good = segment_of(20)
    segment = reset(tmp_path, good + tail)
    tracemalloc.start()
    try:
        state, elapsed = timed_recover(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(state.events) == 20
    assert peak < 2.5 * MAX_RECORD_BYTES, f"recovery allocated {peak >> 20} MiB"
    assert segment.read_bytes()[: len(good)] == good
    assert segment.read_bytes().endswith(b"\n"), "the torn part is cut"
    await append_one(tmp_path, state, 500)
    after = recover(tmp_path)
    assert "e00500" in after.events, "a record appended after the damage is lost"
    assert len(after.events) == 21
    print(
        f"tail of {len(tail)} bytes: recovered in {elapsed * 1000:.1f} ms, "
        f"peak {peak / (1 << 20):.1f} MiB"
    )


@pytest.mark.reliability
def test_an_overlong_line_is_never_buffered_whole(tmp_path):
    big = 3 * MAX_RECORD_BYTES
    data = segment_of(5) + b"x" * big + b"\n" + encode_record(enqueued(7, seq=8))
    reset(tmp_path, data)
    tracemalloc.start()
    try:
        state, elapsed = timed_recover(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(state.events) == [f"e{i:05d}" for i in (0, 1, 2, 3, 4, 7)]
    assert [d.reason for d in state.damages] == ["record longer than the limit"]
    assert peak < 2.5 * MAX_RECORD_BYTES, f"a {big >> 20} MiB line made {peak >> 20} MiB"
    print(f"{big >> 20} MiB line: {elapsed * 1000:.0f} ms, peak {peak / (1 << 20):.1f} MiB")


@pytest.mark.reliability
def test_every_single_bit_flip_loses_at_most_the_record_it_hits(tmp_path):
    whole = segment_of(7)
    starts = line_starts(whole)
    victim, end = starts[3], starts[4]  # a record in the middle, its newline included
    ids = [f"e{i:05d}" for i in range(7)]
    worst, joined = 0.0, 0
    for bit in range(victim * 8, end * 8):
        data = bytearray(whole)
        data[bit // 8] ^= 1 << (bit % 8)
        reset(tmp_path, bytes(data))
        state, elapsed = timed_recover(tmp_path)
        worst = max(worst, elapsed)
        lost = [i for i in ids if i not in state.events]
        where = f"bit {bit - victim * 8} of the record"
        if bit // 8 == end - 1:  # the newline: two good records joined, both kept
            joined += 1
            assert lost == [], f"{where}: {lost} lost"
            assert state.damages, f"{where}: the joined line is not reported"
        else:
            assert lost == ["e00003"], f"{where}: {lost} lost"
            assert len(state.damages) >= 1
    print(
        f"bit flips: {(end - victim) * 8} flips in one record, each lost that record only "
        f"({joined} newline flips lost nothing); slowest recovery {worst * 1000:.1f} ms"
    )


@pytest.mark.reliability
async def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one(tmp_path):
    writer = JournalWriter(tmp_path, 1)
    store = Store(writer, recover(tmp_path), tmp_path / "logs")
    for round_ in range(2):
        for i in range(50):
            store.enqueue("f", raw_json({"round": round_, "i": i}))
        await store.compact()
    store.enqueue("f", raw_json({"after": True}))
    await store.sync()
    await writer.close()
    (_, older), (_, newest) = list_snapshots(tmp_path)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x04
    newest.write_bytes(bytes(data))
    state, _ = timed_recover(tmp_path)
    assert len(state.events) == 101, "the previous snapshot and the segments after it hold all"
    assert any("damaged snapshot" in d.reason for d in state.damages)
    assert len(list_segments(tmp_path)) >= 1 and older.exists()


# -- hypothesis ---------------------------------------------------------------------------


@pytest.mark.reliability
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_the_record_decoder_only_ever_says_valueerror(blob):
    for line in (blob, frame(blob)[:-1]):  # raw bytes, and bytes with a valid checksum
        with contextlib.suppress(ValueError):
            decode_record(line)


@pytest.mark.reliability
@settings(max_examples=50, deadline=None)
@given(depth=st.integers(min_value=500, max_value=200_000))
def test_a_deeply_nested_record_with_a_valid_checksum_is_damage(depth):
    body = (
        b'{"kind":"state","seq":1,"at":1,"id":"x","function":"f","state":"Enqueued","payload":'
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )
    with contextlib.suppress(ValueError):  # a record, or damage: never RecursionError
        decode_record(frame(body)[:-1])


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(min_value=0), st.integers(min_value=0, max_value=7)),
    st.tuples(st.just("insert"), st.integers(min_value=0), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("delete"), st.integers(min_value=0), st.integers(min_value=1, max_value=60)),
    st.tuples(st.just("zero"), st.integers(min_value=0), st.integers(min_value=1, max_value=300)),
    st.tuples(st.just("truncate"), st.integers(min_value=0), st.just(0)),
)


def mutate(data: bytes, ops: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for op, at, arg in ops:
        at = at % (len(buf) + 1)
        if op == "flip" and at < len(buf):
            buf[at] ^= 1 << int(arg)  # type: ignore[call-overload]
        elif op == "insert":
            buf[at:at] = arg  # type: ignore[assignment]
        elif op == "delete":
            del buf[at : at + int(arg)]  # type: ignore[call-overload]
        elif op == "zero":
            buf[at : at + int(arg)] = b"\x00" * len(buf[at : at + int(arg)])  # type: ignore[call-overload]
        elif op == "truncate":
            del buf[at:]
    return bytes(buf)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.reliability
@given(ops=st.lists(mutation, min_size=1, max_size=4))
def test_replay_keeps_every_record_left_whole_by_any_damage(tmp_path_factory, ops):
    directory = tmp_path_factory.mktemp("j")
    original = segment_of(12)
    damaged = mutate(original, ops)
    reset(directory, damaged)
    state, _ = timed_recover(directory)
    padded = b"\n" + damaged
    for i, line in enumerate(original.splitlines(keepends=True)):
        if b"\n" + line in padded:  # this record's line is still whole, newline included
            assert f"e{i:05d}" in state.events, f"an intact record was lost after {ops}"
    assert set(state.events) <= {f"e{i:05d}" for i in range(12)}
    assert set(recover(directory).events) == set(state.events), "a second replay differs"


# -- the payload parser -------------------------------------------------------------------

SOURCE = Source(path="incoming/f/x.json", device=1, inode=2, size=3, mtime_ns=4, uid=0)
MAX_DEPTH = 8

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
    | st.sampled_from(['"', "\\", "[", "{", "]", "}", '\\"[', "\\\\", '\\\\"{{']),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=30,
)


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@pytest.mark.reliability
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_the_payload_parser_accepts_or_rejects_any_bytes(blob):
    for function in ("f", None):
        try:
            item = decode(blob, function, SOURCE, MAX_DEPTH)
        except Rejection as why:
            assert why.code in {
                "bad_encoding",
                "not_json",
                "too_deep",
                "bad_shape",
                "unknown_function",
            }
            continue
        raw = bytes(item.payload)
        assert b"\n" not in raw, "a payload must fit on one journal line"
        assert depth(msgspec.json.decode(raw)) <= MAX_DEPTH


@pytest.mark.reliability
@settings(max_examples=400, deadline=None)
@given(value=json_values, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_the_payload_parser_judges_depth_exactly(value, ensure_ascii, indent):
    data = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    for function, wrapped in (("f", value), (None, {"function": "f", "payload": value})):
        blob = data if function else json.dumps(wrapped, ensure_ascii=ensure_ascii).encode()
        try:
            item = decode(blob, function, SOURCE, MAX_DEPTH)
        except Rejection as why:
            assert why.code == "too_deep" and depth(wrapped) > MAX_DEPTH, why
            continue
        assert depth(wrapped) <= MAX_DEPTH
        assert msgspec.json.decode(bytes(item.payload)) == msgspec.json.decode(
            msgspec.json.encode(value)
        )


@pytest.mark.reliability
@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_very_deep_payloads_are_rejected_quickly(levels):
    took = []
    for blob in (b"[" * levels + b"]" * levels, b"[" * levels, b'{"a":' * levels + b"1"):
        t0 = time.monotonic()
        with pytest.raises(Rejection) as why:
            decode(blob, "f", SOURCE, 64)
        assert why.value.code in {"too_deep", "not_json"}
        took.append(time.monotonic() - t0)
    print(f"{levels} levels: rejected in {', '.join(f'{t * 1000:.1f}' for t in took)} ms")


@pytest.mark.reliability
def test_damage_is_set_aside_once_however_often_the_daemon_restarts(tmp_path):
    data = bytearray(segment_of(10))
    data[line_starts(bytes(data))[4] + 20] ^= 0x01
    segment = reset(tmp_path, bytes(data))
    broken = tmp_path / f"{segment.name}.broken"
    for _ in range(3):
        state = recover(tmp_path)
        assert len(state.events) == 9 and len(state.damages) == 1
    assert broken.read_bytes().count(b"# offset") == 1


@pytest.mark.reliability
def test_a_torn_tail_that_cannot_be_kept_is_not_cut_and_the_daemon_says_why(tmp_path):
    spool = tmp_path / "spool"
    (spool / "journal").mkdir(parents=True)
    good = segment_of(5)
    segment = spool / "journal" / "segment-0000000000000001.jsonl"
    segment.write_bytes(good + b"0123abcd {torn")
    (spool / "journal" / f"{segment.name}.broken").mkdir()  # where the cut bytes would go
    with pytest.raises(FnspoolError, match="cannot cut the torn tail"):
        recover(spool / "journal")
    assert segment.read_bytes() == good + b"0123abcd {torn", "cut without keeping the bytes"
    proc = fnspool(spool, "daemon", check=False)
    assert proc.returncode == 1
    assert "fnspool: journal: cannot cut the torn tail" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
