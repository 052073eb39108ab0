"""Function definitions: `functions/NAME.toml`, decoded strictly, reloaded when they change."""

from __future__ import annotations

import logging
import os
import sys
import tomllib
import urllib.parse
from pathlib import Path
from typing import Literal

import msgspec

from daemon import users
from daemon.ids import NAME_RE
from daemon.model import Event, State
from daemon.placement import Placement, check_placement, check_resources_table

log = logging.getLogger(__name__)


class AsyncConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[async]` table: retries, expiry and destinations."""

    max_retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 300.0
    max_event_age: float = 86400.0
    max_interruptions: int = 5  # attempts cut off by the daemon's end run again; then Failed
    on_success: str = ""
    on_failure: str = "destinations/dead-letter"
    #: seconds after the event's end during which a URL destination is tried again
    destination_max_age: float = 86400.0


class LifecycleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[lifecycle]` table: instance hooks and their timeouts."""

    initializer: str | bool = ""
    initializer_timeout: float = 30.0
    pre_freeze: str | bool = ""
    pre_freeze_timeout: float = 10.0
    pre_stop: str | bool = ""
    pre_stop_timeout: float = 10.0


class FunctionDef(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One function's definition, as written in its TOML file (paths resolved on load)."""

    runtime: Literal["python", "http", "exec"] = "python"
    handler: str = "index.handler"
    python: str = ""
    code: str = ""
    command: list[str] = msgspec.field(default_factory=list)
    timeout: float = 60.0
    memory_mb: int = 512
    concurrency: int = 1
    port: int = 0  # http: the server's fixed port (0: a free one, in FC_SERVER_PORT)
    invoke_path: str = "/invoke"  # http: the path each event is POSTed to (SCF: /event-invoke)
    max_instances: int = 4
    idle_timeout: float = 300.0
    min_instances: int = 0
    max_events_per_instance: int = 0
    freeze: bool = True
    stop_grace: float = 10.0  # seconds a graceful stop waits after SIGTERM before forcing
    environment: dict[str, str] = msgspec.field(default_factory=dict)
    user: str = ""  # the account instances run as ("": the daemon's --run-as, else its own)
    async_: AsyncConfig = msgspec.field(default_factory=AsyncConfig, name="async")
    lifecycle: LifecycleConfig = msgspec.field(default_factory=LifecycleConfig)
    placement: Placement = msgspec.field(default_factory=Placement)
    # filled in by load_function, never read from the file
    name: str = ""
    path: str = ""
    code_dir: str = ""
    interpreter: str = ""
    #: why a fixed-port server runs one instance at a time ("" when each gets a namespace)
    one_at_a_time: str = ""


class DefinitionError(msgspec.Struct, frozen=True, kw_only=True):
    """Why one definition file could not be loaded."""

    name: str
    path: str
    message: str


class Catalog(msgspec.Struct, kw_only=True):
    """Every definition in `functions/`: the good ones by name, and the errors."""

    functions: dict[str, FunctionDef] = msgspec.field(default_factory=dict)
    errors: dict[str, DefinitionError] = msgspec.field(default_factory=dict)
    #: functions whose file has an error, served with their last good definition
    kept: set[str] = msgspec.field(default_factory=set)


class Definitions:
    """The definitions in force, one object shared by every component: a reload replaces the
    catalog inside, so nobody holds an old one."""

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or Catalog()

    @property
    def functions(self) -> dict[str, FunctionDef]:
        """The good definitions by name."""
        return self.catalog.functions

    def get(self, name: str) -> FunctionDef | None:
        """The definition of `name`, or None."""
        return self.catalog.functions.get(name)

    def replace(self, catalog: Catalog) -> None:
        """Put a newly loaded catalog in force."""
        self.catalog = catalog


_POSITIVE = ("timeout", "memory_mb", "concurrency", "max_instances", "stop_grace")
_NOT_NEGATIVE = ("idle_timeout", "min_instances", "max_events_per_instance")


def _check_values(d: FunctionDef) -> None:
    """Range checks msgspec's types cannot express; ValueError naming the key."""
    for key in _POSITIVE:
        if getattr(d, key) <= 0:
            raise ValueError(f"`{key}` must be greater than 0, got {getattr(d, key)!r}")
    for key in _NOT_NEGATIVE:
        if getattr(d, key) < 0:
            raise ValueError(f"`{key}` must not be negative, got {getattr(d, key)!r}")
    if d.min_instances > d.max_instances:
        raise ValueError("`min_instances` must not exceed `max_instances`")
    for key in ("max_retries", "max_interruptions"):
        if getattr(d.async_, key) < 0:
            raise ValueError(f"`async.{key}` must not be negative")
    if not d.async_.destination_max_age > 0:
        raise ValueError("`async.destination_max_age` must be positive")
    if d.runtime in ("http", "exec") and not d.command:
        raise ValueError(f"`command` is required for the {d.runtime} runtime")
    if d.runtime == "python" and "." not in d.handler:
        raise ValueError(f"`handler` must be module.function, got {d.handler!r}")
    if d.runtime != "http" and d.concurrency != 1:
        raise ValueError(
            f"`concurrency` is for http servers: a {d.runtime} instance serves one event at a "
            f"time (raise `max_instances` instead), got {d.concurrency}"
        )
    for key in ("on_success", "on_failure"):
        _check_destination(f"async.{key}", getattr(d.async_, key))
    _check_http(d)
    check_placement(d.placement, port=d.port)


def _check_http(d: FunctionDef) -> None:
    """`port` and `invoke_path` are the http runtime's, and must make sense."""
    if d.runtime != "http" and (d.port or d.invoke_path != "/invoke"):
        key = "port" if d.port else "invoke_path"
        raise ValueError(f"`{key}` is for the http runtime, not {d.runtime}")
    if not 0 <= d.port <= 65535:
        raise ValueError(f"`port` must be from 1 to 65535 (0: a free one), got {d.port}")
    if not d.invoke_path.startswith("/") or any(c.isspace() for c in d.invoke_path):
        raise ValueError(f"`invoke_path` must be a path starting with /, got {d.invoke_path!r}")


FUNCTION_PREFIX = "function:"  # a destination that is another function

#: a destination starting so is a URL the record is POSTed to
URL_PREFIXES = ("http://", "https://")


def url_problem(url: str) -> str | None:
    """What is wrong with a URL destination, or None."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "it holds a space or a control character"
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return "it names no host"
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return "its port is not a number from 0 to 65535"
    if parts.fragment:
        return "a fragment (#...) is never sent"
    return None


#: folders the daemon reads or owns: a record written there would be taken as input
DAEMON_FOLDERS = frozenset({"incoming", "control", "tmp", "journal", "run", "functions"})


def _check_destination(key: str, value: str) -> None:
    """A destination is "", `function:NAME`, an http(s) URL or a relative folder inside the
    spool."""
    if value.startswith(URL_PREFIXES):
        if (why := url_problem(value)) is not None:
            raise ValueError(f"`{key}` is not a URL to POST to: {why}: {value!r}")
    elif value.startswith(FUNCTION_PREFIX):
        if not NAME_RE.match(value.removeprefix("function:")):
            raise ValueError(f"`{key}` names a bad function: {value!r}")
    elif value and (os.path.isabs(value) or ".." in Path(value).parts):
        raise ValueError(f"`{key}` must be a folder inside the spool, got {value!r}")
    elif value and set(Path(value).parts[:1]) & DAEMON_FOLDERS:
        # a record in incoming/ would be a new event, in control/ a request: a loop or worse
        raise ValueError(
            f"`{key}` must not be inside the daemon's {Path(value).parts[0]}/: {value!r}"
        )


def _check_user(name: str) -> None:
    """An unknown `user` is the definition's error, found when it is loaded."""
    if name:
        try:
            users.lookup(name)
        except ValueError as exc:
            raise ValueError(f"`user`: {exc}") from None


def load_function(path: Path) -> FunctionDef:
    """Decode one definition strictly; ValueError with a message naming the key on any fault."""
    name = path.stem
    if not NAME_RE.match(name):
        raise ValueError(f"bad function name {name!r}: use [A-Za-z0-9][A-Za-z0-9_-]{{0,63}}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    for key in ("name", "path", "code_dir", "interpreter", "one_at_a_time"):
        if key in data:
            raise ValueError(f"Object contains unknown field `{key}`")
    check_resources_table(data.get("placement"))
    try:
        d = msgspec.convert(data, FunctionDef)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    _check_values(d)
    _check_user(d.user)
    code_dir = (path.parent / (d.code or name)).resolve()
    interpreter = d.python or sys.executable
    if not os.path.isabs(interpreter):
        raise ValueError(f"`python` must be an absolute path, got {interpreter!r}")
    d = msgspec.structs.replace(
        d, name=name, path=str(path), code_dir=str(code_dir), interpreter=interpreter
    )
    return _shared_port_limit(d)


def _shared_port_limit(d: FunctionDef) -> FunctionDef:
    """A fixed-port server that cannot have a network namespace shares the host's port: one
    instance at a time, and `one_at_a_time` says why."""
    if not d.port:
        return d
    from daemon.isolation import one_at_a_time_reason  # runs a probe: only when it matters

    why = one_at_a_time_reason(d.port)
    if not why:
        return d
    return msgspec.structs.replace(
        d, max_instances=1, min_instances=min(d.min_instances, 1), one_at_a_time=why
    )


def needs_code_folder(d: FunctionDef) -> bool:
    """Whether the function cannot run without its code folder: a python handler's module, or a
    command given as a path inside it (a bare name comes from PATH, an absolute path stands
    alone)."""
    if d.runtime == "python":
        return True
    program = d.command[0] if d.command else ""
    return "/" in program and not os.path.isabs(program)


def run_folder(d: FunctionDef) -> str:
    """Where the function's processes start: its code folder, or `/` when it has none and needs
    none."""
    return d.code_dir if needs_code_folder(d) or os.path.isdir(d.code_dir) else "/"


def load_catalog(functions_dir: Path) -> Catalog:
    """Load every `*.toml` in `functions_dir`; a bad file is an error entry, never an exception
    (the daemon logs them, the CLI shows them)."""
    catalog = Catalog()
    try:
        paths = sorted(functions_dir.glob("*.toml"))
    except OSError as exc:
        log.error("cannot list %s: %s", functions_dir, exc)
        return catalog
    for path in paths:
        try:
            catalog.functions[path.stem] = load_function(path)
        except (ValueError, OSError) as exc:
            message = str(exc)
            catalog.errors[path.stem] = DefinitionError(
                name=path.stem, path=str(path), message=message
            )
    return catalog


def keep_last_good(catalog: Catalog, previous: Catalog) -> Catalog:
    """Serve each function whose file stopped loading with its previous definition: a typo saved
    while editing must not turn its queued events Invalid nor refuse its new files."""
    for name, error in catalog.errors.items():
        last = previous.functions.get(name)
        if last is not None:
            catalog.functions[name] = last
            catalog.kept.add(name)
            log.warning("function %s: %s has an error: its last good definition stays in use",
                        name, error.path)  # fmt: skip
    return catalog


# -- where an ended event's record goes (the daemon delivers it, `events get` says it) -------


def destination_of(config: AsyncConfig, event: Event) -> str:
    """Where the event's record goes: on_success or on_failure ("" for nowhere)."""
    return config.on_success if event.state is State.SUCCEEDED else config.on_failure


def owed_destination(definition: FunctionDef | None, event: Event) -> str:
    """Where an ended event's record is to go under its function's definition ("" for nowhere)."""
    config = definition.async_ if definition is not None else AsyncConfig()
    destination = destination_of(config, event)
    if (
        destination.startswith(FUNCTION_PREFIX)
        and event.source
        and event.source.via == "destination"
    ):
        return ""  # a destination event is never forwarded again: no loops between functions
    return destination
