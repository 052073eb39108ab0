"""Fixtures of the policy tests: the dispatcher's and the pool's clocks, and the backoff jitter."""

from __future__ import annotations

import pytest

from policy.fakes import FakeClock, TopOfRange


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The dispatcher and the pools read this clock: it stands still until the test moves it."""
    fake = FakeClock()
    monkeypatch.setattr("daemon.dispatcher.time", fake)
    monkeypatch.setattr("daemon.pool.time", fake)
    return fake


@pytest.fixture
def jitter(monkeypatch: pytest.MonkeyPatch) -> TopOfRange:
    """Every backoff draws the top of its jitter range; the ranges are kept."""
    fake = TopOfRange()
    monkeypatch.setattr("daemon.dispatcher.random", fake)
    return fake
