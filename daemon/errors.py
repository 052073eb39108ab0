"""The errors fnspool names: the one error type shown to people, the one refusal, and the
catalogue of error types an attempt or an event ends with (part of the outside contract: they
are journaled, written into destination records and matched by users). Light: imports only the
model."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from daemon.model import ErrorInfo

if TYPE_CHECKING:
    from daemon.supervise.child import ExitStatus


class FnspoolError(Exception):
    """A user-facing error: the CLI prints it on stderr and exits non-zero."""

    def __init__(self, msg: str, *, title: str = "", exit_code: int = 1) -> None:
        super().__init__(msg)
        self.title = title
        self.msg = msg
        self.exit_code = exit_code


class Refused(Exception):
    """A request that cannot be applied to its event as the event is: answered `refused`."""


class ErrorType(StrEnum):
    """The `type` of an error fnspool itself gives an attempt or an event (a handler's own
    errors carry its exception's class name)."""

    #: the attempt (or a hook) ran past its timeout; its instance is killed
    FUNCTION_TIMEOUT = "FunctionTimeout"
    #: the instance's process died while it served the attempt or the hook
    PROCESS_EXITED = "ProcessExited"
    #: the instance went over `memory_mb` and was killed
    MEMORY_LIMIT_EXCEEDED = "MemoryLimitExceeded"
    #: the instance's process could not be started
    SPAWN_ERROR = "SpawnError"
    #: the instance did not become ready within its start timeout
    START_TIMEOUT = "StartTimeout"
    #: the instance was asked to run while it could not (stopped, full)
    INSTANCE_UNAVAILABLE = "InstanceUnavailable"
    #: an http instance could not be reached or hung up
    INSTANCE_UNREACHABLE = "InstanceUnreachable"
    #: a python worker sent something the protocol does not allow
    PROTOCOL_ERROR = "ProtocolError"
    #: a python hook failed without saying why
    HOOK_ERROR = "HookError"
    #: a python handler failed without saying why
    UNKNOWN_ERROR = "UnknownError"
    #: an exec command ended with a non-zero status
    EXEC_ERROR = "ExecError"
    #: an http server answered with a status that is not 2xx
    HTTP_ERROR = "HTTPError"
    #: an http server reported a function error (`x-fc-status`), as FC's custom runtime does
    UNHANDLED_INVOCATION_ERROR = "UnhandledInvocationError"
    #: the result is over the limit of a journaled value
    RESULT_TOO_LARGE = "ResultTooLarge"
    #: FC's error of an attempt cut off by its instance's end (code 439)
    USER_PROCESS_EXIT = "UserProcessExit"
    #: the event was stopped by request
    STOPPED = "Stopped"
    #: the Ray node of the attempt's instance was lost while it ran (the attempt is Interrupted)
    NODE_LOST = "NodeLost"
    #: the event's attempts were interrupted by too many daemon restarts or lost Ray nodes
    TOO_MANY_INTERRUPTIONS = "TooManyInterruptions"
    #: the event waited past its maximum age
    EVENT_EXPIRED = "EventExpired"
    #: the event's function is not defined (any more)
    FUNCTION_NOT_FOUND = "FunctionNotFound"
    #: the event's id breaks the id rule (only a journal older than the rule can hold one)
    INVALID_REQUEST_ID = "InvalidRequestId"


def error(kind: ErrorType, message: str, code: int | None = None) -> ErrorInfo:
    """An error of one of fnspool's own types."""
    return ErrorInfo(type=kind.value, message=message, code=code)


def describe(err: ErrorInfo) -> str:
    """An error in one line, as logs and exceptions show it: `Type: message`."""
    return f"{err.type}: {err.message}"


def describe_exit(status: ExitStatus) -> str:
    """How a process ended, in words: `exit code N` or `signal N`."""
    return f"exit code {status.exit_code}" if status.signal is None else f"signal {status.signal}"


def timed_out(timeout: float, what: str = "Function") -> ErrorInfo:
    """FC's error of an attempt (or of the hook `what`) that ran past `timeout` seconds."""
    return error(ErrorType.FUNCTION_TIMEOUT, f"{what} timed out after {timeout:.2f} seconds")


def process_exited(duration_ms: float, status: ExitStatus) -> ErrorInfo:
    """FC's error of an instance that died mid-event (or mid-hook: `duration_ms` 0)."""
    message = (
        "Process exited unexpectedly before completing request "
        f"(duration: {duration_ms:.2f}ms, maxMemoryUsage: {status.max_memory_mb:.2f}MB)"
    )
    return error(ErrorType.PROCESS_EXITED, message)


def exited_early(what: str, status: ExitStatus, tail: str) -> ErrorInfo:
    """The error of a process that ended before it was ready: `what` says before what, `tail`
    is the end of its output."""
    message = f"the {what} ({describe_exit(status)})" + (f": {tail}" if tail else "")
    return error(ErrorType.PROCESS_EXITED, message)


def memory_exceeded(used_mb: float, limit_mb: int) -> ErrorInfo:
    """The error of an attempt whose instance went over `memory_mb` and was killed."""
    message = f"Memory limit exceeded: {used_mb:.0f}MB used, the limit is {limit_mb}MB"
    return error(ErrorType.MEMORY_LIMIT_EXCEEDED, message)


def spawn_failed(message: str) -> ErrorInfo:
    """The error of an instance whose process cannot be started."""
    return error(ErrorType.SPAWN_ERROR, message)


def cannot_start(program: str, exc: OSError) -> ErrorInfo:
    """The error of a `program` the kernel would not start."""
    return spawn_failed(f"cannot start {program}: {exc.strerror or exc}")


def actor_died(duration_ms: float, message: str) -> ErrorInfo:
    """FC's error of an instance that died mid-event, for one on Ray whose actor died (no exit
    status comes back from the node)."""
    text = f"Process exited unexpectedly before completing request (duration: {duration_ms:.2f}ms)"
    return error(ErrorType.PROCESS_EXITED, f"{text}: {message}")


def node_lost(message: str) -> ErrorInfo:
    """The error of an attempt cut off by the loss of its instance's Ray node."""
    return error(ErrorType.NODE_LOST, message)


def start_timeout(message: str) -> ErrorInfo:
    """The error of an instance that was not ready in time."""
    return error(ErrorType.START_TIMEOUT, message)


def unavailable(message: str) -> ErrorInfo:
    """The error of an attempt given to an instance that cannot take it."""
    return error(ErrorType.INSTANCE_UNAVAILABLE, message)


def unreachable(message: str) -> ErrorInfo:
    """The error of a call an http instance never answered."""
    return error(ErrorType.INSTANCE_UNREACHABLE, message)


def protocol_error(message: str) -> ErrorInfo:
    """The error of a worker that broke the frame protocol."""
    return error(ErrorType.PROTOCOL_ERROR, message)
