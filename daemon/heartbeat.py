"""run/status.json, the daemon's heartbeat: one typed record, written by the daemon and read by
the CLI (`status`, `functions list`), the dashboard and `systemctl reload`. Fields a reader does
not know are ignored and missing ones take their defaults, so a reader and a daemon of
neighbouring versions still understand each other."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from daemon import lock
from daemon.instances import InstanceState
from daemon.journal import Damage

STATUS_NAME = "status.json"


class InstanceView(msgspec.Struct, frozen=True, kw_only=True):
    """One instance of a function."""

    id: str
    pid: int | None = None
    #: an InstanceState, as shown (a str: a reader takes a state a newer daemon adds)
    state: str = InstanceState.STARTING
    started_at: float = 0.0
    events_served: int = 0
    running: int = 0  # events it serves now
    node: str | None = None  # the Ray node it runs on (its whole id); None: this machine


class HelperView(msgspec.Struct, frozen=True, kw_only=True):
    """A helper process of the daemon (the file helper, the indexer)."""

    pid: int | None = None
    running: bool = True  # the file helper: False when the daemon does its work itself


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """What the daemon says about itself, every heartbeat."""

    pid: int
    started_at: float = 0.0
    updated_at: float = 0.0
    ready: bool = False
    stopping: bool = False  # draining on its way out
    stopped: bool = False  # its last word
    queue_depth: int = 0
    running: int = 0  # events running
    events: dict[str, int] = {}  # retained events by state
    instances: dict[str, list[InstanceView]] = {}
    definition_errors: dict[str, str] = {}
    last_good_definitions: list[str] = []  # of those with errors
    user: str = ""  # who the daemon runs as
    run_as: str = ""  # who runs the functions that name no user ("": the daemon's user)
    implicit_root: list[str] = []  # functions run as root only because none says who
    journal_damage: list[Damage] = []
    reloads: int = 0
    paused: list[str] = []  # functions whose dispatch is held by name
    paused_all: bool = False  # dispatch of every function is held
    #: functions whose events wait for now, with why (their Ray cluster cannot be reached)
    held: dict[str, str] = {}
    file_helper: HelperView = HelperView()
    indexer: HelperView = HelperView()

    @property
    def age(self) -> float:
        """Seconds since it was written."""
        return round(time.time() - self.updated_at, 1)


_decoder = msgspec.json.Decoder(Heartbeat)
_encoder = msgspec.json.Encoder()


def encode(heartbeat: Heartbeat) -> bytes:
    """The file's content."""
    return _encoder.encode(heartbeat)


def read(run_dir: Path) -> Heartbeat | None:
    """The heartbeat on file, whoever wrote it; None when there is none or it cannot be read."""
    try:
        return _decoder.decode((run_dir / STATUS_NAME).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None


def of_running_daemon(run_dir: Path) -> tuple[int | None, Heartbeat | None]:
    """The pid holding the spool's lock, and its heartbeat (None when the one on file was left
    by an earlier daemon, or there is none)."""
    pid = lock.holder(run_dir)
    if pid is None:
        return None, None
    heartbeat = read(run_dir)
    return pid, heartbeat if heartbeat is not None and heartbeat.pid == pid else None
