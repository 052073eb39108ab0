"""The state machine allows exactly DESIGN.md's transitions."""

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.model import (
    TERMINAL_STATES,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    Transition,
    apply,
    check_transition,
)

DESIGN_EDGES = {  # DESIGN.md: a stop always passes through Stopping, queued or running (seed 001)
    ("Enqueued", "Dequeued"),
    ("Enqueued", "Stopping"),
    ("Dequeued", "Running"),
    ("Dequeued", "Expired"),
    ("Dequeued", "Invalid"),
    ("Dequeued", "Stopping"),
    ("Running", "Succeeded"),
    ("Running", "Failed"),
    ("Running", "Retrying"),
    ("Running", "Stopping"),
    ("Retrying", "Running"),
    ("Retrying", "Expired"),
    ("Retrying", "Stopping"),
    ("Stopping", "Stopped"),
}
#: what journals written before that say of a queued event stopped: still read, never written
LEGACY_EDGES = {("Enqueued", "Stopped"), ("Dequeued", "Stopped"), ("Retrying", "Stopped")}


def test_transition_table_is_exactly_the_design():
    edges = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert edges == DESIGN_EDGES | LEGACY_EDGES
    assert {s.value for s in TERMINAL_STATES} == {
        "Succeeded",
        "Failed",
        "Expired",
        "Invalid",
        "Stopped",
    }


@pytest.mark.parametrize("old", list(State))
@pytest.mark.parametrize("new", list(State))
def test_every_pair_is_allowed_or_refused_loudly(old, new):
    if (old.value, new.value) in DESIGN_EDGES | LEGACY_EDGES:
        check_transition("x", old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
            check_transition("x", old, new)


def test_an_event_starts_only_as_enqueued():
    with pytest.raises(IllegalTransition):
        check_transition("x", None, State.RUNNING)


@given(st.lists(st.sampled_from(list(State)), max_size=30))
def test_folding_any_sequence_never_holds_an_illegal_state(sequence):
    events: dict[str, Event] = {}
    apply(events, Transition(id="e", function="f", state=State.ENQUEUED, payload=msgspec.Raw(b"1")))
    history = [State.ENQUEUED]
    for state in sequence:
        try:
            apply(events, Transition(id="e", function="f", state=state))
            history.append(state)
        except IllegalTransition:
            assert state not in TRANSITIONS[history[-1]]
    event = events["e"]
    assert [h.state for h in event.history] == history
    assert event.state is history[-1]
    for a, b in itertools.pairwise(history):
        assert b in TRANSITIONS[a]
    assert (event.ended_at is not None) == (event.state in TERMINAL_STATES)


def test_scf_view():
    assert State.RETRYING.scf_view == "running"
    assert State.SUCCEEDED.scf_view == "finished"
    assert State.EXPIRED.scf_view == "failed"
    assert State.STOPPED.scf_view == "terminated"
